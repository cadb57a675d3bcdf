"""Cache policies: where each session's KV lives between turns (see base.py for the hooks)."""
from __future__ import annotations

from sessions.costs import CostModel
from sessions.estimator import PauseEstimator
from sessions.policies.agent import AgentConfig, AgentPolicy
from sessions.policies.base import (CachePolicy, Placement, PlacementPlan, SessionKVView,
                                    TierUsage)
from sessions.policies.baselines import LRUCPUPolicy, LRUPolicy, RecomputePolicy, TTLPolicy
from sessions.policies.options import PolicyOptions, policy_kwargs

POLICIES: dict[str, type[CachePolicy]] = {
    "recompute": RecomputePolicy,
    "lru": LRUPolicy,
    "lru_cpu": LRUCPUPolicy,
    "ttl": TTLPolicy,
    "agent": AgentPolicy,
}
POLICY_NAMES = tuple(POLICIES)


def make_policy(name: str, cost_model: CostModel, estimator: PauseEstimator | None = None,
                options: PolicyOptions | None = None) -> CachePolicy:
    """A fresh policy by name: recompute, lru, lru_cpu, ttl or agent (the default), with the
    operator's `options` (options.py: fields of its config; ValueError if not valid)."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown cache policy {name!r}; valid policies: "
                         f"{', '.join(POLICY_NAMES)}") from None
    return cls(cost_model, estimator, **policy_kwargs(name, options))


__all__ = ["AgentConfig", "AgentPolicy", "CachePolicy", "LRUCPUPolicy", "LRUPolicy",
           "POLICIES", "POLICY_NAMES", "Placement", "PlacementPlan", "RecomputePolicy",
           "SessionKVView", "TTLPolicy", "TierUsage", "make_policy"]
