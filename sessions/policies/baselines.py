"""The baselines agentkv is measured against, as policies of the same engine.

- recompute: a stateless server. Nothing survives a turn (not even the shared system prompt):
  every turn prefills its whole context.
- lru: prefix caching with LRU eviction and no other tier (vLLM / SGLang radix cache). Blocks
  stay on the GPU after a turn and are dropped, least recently used first, when room is needed.
- lru_cpu: the same, but blocks evicted from the GPU are offloaded to CPU memory, itself an LRU
  cache whose evictions are dropped (LMCache / SGLang HiCache style).
- ttl: on a tool call, pin the session's KV on the GPU for a TTL derived from the tool's expected
  duration; after the TTL it is ordinary LRU-evictable prefix cache, dropped when evicted
  (Continuum style).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from sessions.estimator import PauseForecast
from sessions.policies.base import (CachePolicy, Placement, PlacementPlan, SessionKVView,
                                    TierUsage, lru_order)


class RecomputePolicy(CachePolicy):
    name = "recompute"
    keeps_shared_prefix = False

    def on_pause(self, view: SessionKVView, forecast: PauseForecast, now: float,
                 tiers: TierUsage | None = None) -> PlacementPlan:
        return PlacementPlan(view.session_id, Placement.DROP, reason="stateless")

    def eviction_order(self, candidates: list[SessionKVView], now: float,
                       tier: str = "gpu") -> list[str]:
        return lru_order(candidates)


class LRUPolicy(CachePolicy):
    name = "lru"

    def on_pause(self, view: SessionKVView, forecast: PauseForecast, now: float,
                 tiers: TierUsage | None = None) -> PlacementPlan:
        return PlacementPlan(view.session_id, Placement.KEEP_GPU, reason="prefix cache")

    def eviction_order(self, candidates: list[SessionKVView], now: float,
                       tier: str = "gpu") -> list[str]:
        return lru_order(candidates)


class LRUCPUPolicy(LRUPolicy):
    """LRU on the GPU, whose evictions land in CPU memory: the copy is written through at the
    pause (the pool reuses an evicted block at once, too soon to copy it then)."""
    name = "lru_cpu"

    def on_pause(self, view: SessionKVView, forecast: PauseForecast, now: float,
                 tiers: TierUsage | None = None) -> PlacementPlan:
        return PlacementPlan(view.session_id, Placement.KEEP_GPU, insure_cpu=True,
                             reason="prefix cache, written through to CPU")

    def on_evict(self, view: SessionKVView, tier: str, now: float) -> Placement:
        return Placement.OFFLOAD_CPU if tier == "gpu" else Placement.DROP


@dataclass(frozen=True)
class TTLConfig:
    """The clip bounds of `TTLPolicy`'s pin."""
    min_ttl_s: float = 1.0
    max_ttl_s: float = 300.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_ttl_s) and 0 <= self.min_ttl_s <= self.max_ttl_s
                and math.isfinite(self.max_ttl_s)):
            raise ValueError("ttl policy: need 0 <= min_ttl_s <= max_ttl_s (finite), got "
                             f"min_ttl_s={self.min_ttl_s!r}, max_ttl_s={self.max_ttl_s!r}")


class TTLPolicy(CachePolicy):
    """ttl = the tool's forecast p90, clipped to [min_ttl_s, max_ttl_s]."""
    name = "ttl"

    def __init__(self, cost, estimator=None, min_ttl_s: float = TTLConfig.min_ttl_s,
                 max_ttl_s: float = TTLConfig.max_ttl_s) -> None:
        super().__init__(cost, estimator)
        self.min_ttl_s = min_ttl_s
        self.max_ttl_s = max_ttl_s

    def on_pause(self, view: SessionKVView, forecast: PauseForecast, now: float,
                 tiers: TierUsage | None = None) -> PlacementPlan:
        ttl = min(max(forecast.p90_s, self.min_ttl_s), self.max_ttl_s)
        return PlacementPlan(view.session_id, Placement.KEEP_GPU, ttl_s=ttl,
                             reason=f"pin for the tool's p90 ({forecast.source})")

    def eviction_order(self, candidates: list[SessionKVView], now: float,
                       tier: str = "gpu") -> list[str]:
        expired = [v for v in candidates if v.pinned_until <= now]
        pinned = sorted((v for v in candidates if v.pinned_until > now),
                        key=lambda v: (v.pinned_until, v.session_id))
        return lru_order(expired) + [v.session_id for v in pinned]
