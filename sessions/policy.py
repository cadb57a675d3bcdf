"""Where each session's KV lives: the cache policies' public face.

The implementation is split over `sessions/policies/` (base.py: messages and the hook protocol;
baselines.py: recompute, lru, lru_cpu, ttl; agent.py: agentkv's own). Import from here.
"""
from sessions.policies import (POLICIES, POLICY_NAMES, AgentConfig, AgentPolicy, CachePolicy,
                               LRUCPUPolicy, LRUPolicy, Placement, PlacementPlan,
                               RecomputePolicy, SessionKVView, TierUsage, TTLPolicy,
                               make_policy)

__all__ = ["AgentConfig", "AgentPolicy", "CachePolicy", "LRUCPUPolicy", "LRUPolicy",
           "POLICIES", "POLICY_NAMES", "Placement", "PlacementPlan", "RecomputePolicy",
           "SessionKVView", "TTLPolicy", "TierUsage", "make_policy"]
