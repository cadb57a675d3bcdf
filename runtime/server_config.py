"""The server's configuration: where it listens, its model and engine, tenants, limits, storage."""
from __future__ import annotations

import math

import os
from dataclasses import dataclass, field
from pathlib import Path

from runtime.config import EngineConfig
from runtime.limits import Limits

POLICIES = ("recompute", "lru", "lru_cpu", "ttl", "agent")


KV_SUBDIR = "kv"      # the default disk KV tier's environment, inside the data directory


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/agentkv``, or ``~/.local/share/agentkv`` when XDG_DATA_HOME is unset."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return Path(base) / "agentkv"


@dataclass
class ServerConfig:
    """Everything `agentkv serve` sets.

    data_dir: the LMDB environment holding the sessions; the disk KV tier, when
    engine.disk_cache_path is unset and engine.disk_cache_gb > 0, is its own environment in
    `data_dir/kv` (`KV_SUBDIR`), so a session's commit never waits behind a block batch's. policy: the KV cache policy
    (recompute | lru | lru_cpu | ttl | agent) the policy hook factory is built with;
    policy_options: its settings by name, typed (`agent`: AgentConfig's fields, `ttl`: min_ttl_s
    and max_ttl_s; `--policy-option KEY=VALUE` parses them).
    api_key_file: JSON or TOML key -> tenant file; AGENTKV_API_KEYS adds to it (unless
    api_keys_from_env is False); no keys at all: open, one tenant "default".
    port: 0 picks a free port (the bound one is `AgentKVServer.port`). metrics_port: None: no
    metrics endpoint, 0: a free port. grace_s: how long running turns may finish at shutdown
    before they are cancelled (their sessions persisted as WAITING).
    """
    engine: EngineConfig = field(default_factory=EngineConfig)
    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: str | None = None
    api_key_file: str | None = None
    api_keys_from_env: bool = True
    policy: str = "agent"
    # the policy's settings (sessions/policies/options.py: `agent` takes AgentConfig's fields)
    policy_options: dict = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    grace_s: float = 10.0
    session_ttl_s: float | None = 24 * 3600.0
    expire_interval_s: float = 30.0
    default_max_tokens: int = 256
    # the pause estimator's published priors x this (a replay with compressed pauses: < 1)
    pause_prior_scale: float = 1.0
    # TLS (runtime/server_tls.py): PEM certificate and key; client_ca: require client certs
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None

    def __post_init__(self) -> None:
        from runtime.server_tls import check_tls_flags
        check_tls_flags(self.tls_cert, self.tls_key, self.tls_client_ca)
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; valid policies: "
                             f"{', '.join(POLICIES)}")
        from sessions.policies.options import check_policy_options
        check_policy_options(self.policy, self.policy_options)
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.default_max_tokens <= 0:
            raise ValueError("default_max_tokens must be positive")
        if not (math.isfinite(self.pause_prior_scale) and self.pause_prior_scale > 0):
            raise ValueError(f"pause_prior_scale must be a finite number > 0, got "
                             f"{self.pause_prior_scale!r}")

    @property
    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir).expanduser() if self.data_dir else default_data_dir()

    def engine_config(self) -> EngineConfig:
        """The engine's config, with the disk tier in `data_dir/kv` when no path is given: LMDB
        has one writer per environment, and a KV batch's commit holds it for up to a few
        hundred ms (kvstore/disk_write.py), which a turn's commit must not wait for."""
        e = self.engine
        if e.disk_cache_gb > 0 and not e.disk_cache_path:
            from dataclasses import replace
            return replace(e, disk_cache_path=str(self.resolved_data_dir / KV_SUBDIR))
        return e
