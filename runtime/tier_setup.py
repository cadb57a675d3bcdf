"""Builds the KV tiers below the GPU (pinned CPU memory, LMDB disk) that an EngineConfig asks for."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kvstore.config import TierConfig
from kvstore.tiers import TieredKVStore
from runtime.prefix_loader import Rates

if TYPE_CHECKING:
    from runtime.engine import Engine

log = logging.getLogger(__name__)


def initial_rates(engine: "Engine") -> Rates:
    """Starting guesses until measurements arrive: on a GPU the H200's measured ceilings and a
    prefill rate from the weights' size; on a CPU loading always beats recomputing by far."""
    params = sum(p.numel() for p in engine.model.parameters())
    if engine.device.type == "cuda":
        return Rates(prefill_tok_s=max(2e3, 3e14 / (2 * params)), h2d_GBps=40.0,
                     disk_read_GBps=1.0)
    return Rates(prefill_tok_s=max(50.0, 2e10 / (2 * params)), h2d_GBps=5.0, disk_read_GBps=0.5)


def build_tiers(engine: "Engine") -> tuple[TieredKVStore | None, Rates]:
    cfg = engine.config
    rates = initial_rates(engine)
    tier_cfg = TierConfig(cpu_cache_gb=cfg.cpu_cache_gb, disk_cache_path=cfg.disk_cache_path,
                          disk_cache_gb=cfg.disk_cache_gb)
    if not (tier_cfg.cpu_enabled or tier_cfg.disk_enabled):
        return None, rates
    tiers = TieredKVStore(engine.kv_spec, tier_cfg, engine.fingerprint, engine.kv_cache,
                          engine.pool)
    log.info("KV tiers: cpu %.2f GiB, disk %s (%.2f GiB)", cfg.cpu_cache_gb,
             cfg.disk_cache_path or "off", cfg.disk_cache_gb)
    return tiers, rates
