"""What moving, holding and recomputing KV costs: the numbers every placement decision compares.

A `CostModel` is measured once per machine (or taken from a preset) and shared by the cache
policies and the simulator. Bandwidths are in GB/s (10^9 bytes per second, as the transfer
benchmarks measure them); capacities are in tokens of KV (bytes / `kv_bytes_per_token`), not
counting memory kept for weights and activations.

Transfer paths: GPU <-> pinned CPU over PCIe (`h2d_GBps`, `d2h_GBps`, full duplex); disk is read
into a pinned bounce buffer and then copied to the GPU, and written from the GPU through the same
buffer, so a disk load costs disk read + H2D and a disk store costs D2H + disk write. Recompute
is linear in tokens at the measured prefill speed (attention's quadratic part is folded into the
measured average at the context lengths of interest).
"""
from __future__ import annotations

from dataclasses import dataclass

TIERS = ("gpu", "cpu", "disk")
_GB = 1e9


def _check_tier(tier: str) -> None:
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; valid tiers: {', '.join(TIERS)}")


@dataclass(frozen=True)
class CostModel:
    kv_bytes_per_token: int
    prefill_tokens_per_s: float
    h2d_GBps: float
    d2h_GBps: float
    disk_read_GBps: float
    disk_write_GBps: float
    gpu_capacity_tokens: int
    cpu_capacity_tokens: int
    disk_capacity_tokens: int

    def __post_init__(self) -> None:
        for name in ("kv_bytes_per_token", "prefill_tokens_per_s", "h2d_GBps", "d2h_GBps",
                     "disk_read_GBps", "disk_write_GBps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"CostModel.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("gpu_capacity_tokens", "cpu_capacity_tokens", "disk_capacity_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"CostModel.{name} must be >= 0, got {getattr(self, name)!r}")

    # -- sizes -------------------------------------------------------------------------------
    def bytes_of(self, tokens: int) -> int:
        return int(tokens) * self.kv_bytes_per_token

    def capacity_tokens(self, tier: str) -> int:
        _check_tier(tier)
        return {"gpu": self.gpu_capacity_tokens, "cpu": self.cpu_capacity_tokens,
                "disk": self.disk_capacity_tokens}[tier]

    # -- times ---------------------------------------------------------------------------------
    def recompute_s(self, tokens: int) -> float:
        """GPU time to rebuild `tokens` of KV by prefill (on the critical path of the turn)."""
        return max(0, tokens) / self.prefill_tokens_per_s

    def h2d_s(self, tokens: int) -> float:
        return self.bytes_of(max(0, tokens)) / (self.h2d_GBps * _GB)

    def d2h_s(self, tokens: int) -> float:
        return self.bytes_of(max(0, tokens)) / (self.d2h_GBps * _GB)

    def disk_read_s(self, tokens: int) -> float:
        return self.bytes_of(max(0, tokens)) / (self.disk_read_GBps * _GB)

    def disk_write_s(self, tokens: int) -> float:
        return self.bytes_of(max(0, tokens)) / (self.disk_write_GBps * _GB)

    def load_s(self, tokens: int, tier: str) -> float:
        """Time to bring `tokens` of KV from `tier` onto the GPU on an idle path."""
        _check_tier(tier)
        if tier == "gpu":
            return 0.0
        if tier == "cpu":
            return self.h2d_s(tokens)
        return self.disk_read_s(tokens) + self.h2d_s(tokens)

    def store_s(self, tokens: int, tier: str) -> float:
        """Time to copy `tokens` of KV from the GPU to `tier` on an idle path."""
        _check_tier(tier)
        if tier == "gpu":
            return 0.0
        if tier == "cpu":
            return self.d2h_s(tokens)
        return self.d2h_s(tokens) + self.disk_write_s(tokens)

    # -- presets -------------------------------------------------------------------------------
    @classmethod
    def h200_llama3_8b(cls, gpu_kv_GiB: float = 100.0, cpu_kv_GiB: float = 96.0,
                       disk_kv_GiB: float = 2048.0,
                       prefill_tokens_per_s: float = 10_000.0) -> "CostModel":
        """Llama-3-8B on one H200, from the ceilings measured on that machine (ARCHITECTURE.md).

        KV: 32 layers x 8 KV heads x 128 dims x 2 (K, V) x 2 bytes (bf16) = 128 KiB per token.
        PCIe pinned: 55 GB/s each way. Disk: write + fsync 1.1 GB/s, read 1.6 GB/s.
        Prefill speed (an assumption until the engine bench measures it): an 8B model costs about
        16 GFLOP per token in its weights plus attention over the context (about 3 GFLOP per token
        at 12K tokens of context, more beyond); at 15-25% of the 790 TFLOP/s bf16 ceiling that is
        on the order of 10,000 tokens/s for prompts of tens of thousands of tokens.
        Capacities: 141 GB of HBM less 16 GB of weights and activations leaves about 100 GiB for
        KV; 96 GiB of pinned host memory; 2 TiB of local disk for the LMDB block store.
        """
        per_token = 32 * 8 * 128 * 2 * 2
        gib = 1 << 30
        return cls(
            kv_bytes_per_token=per_token,
            prefill_tokens_per_s=prefill_tokens_per_s,
            h2d_GBps=55.0, d2h_GBps=55.0,
            disk_read_GBps=1.6, disk_write_GBps=1.1,
            gpu_capacity_tokens=int(gpu_kv_GiB * gib) // per_token,
            cpu_capacity_tokens=int(cpu_kv_GiB * gib) // per_token,
            disk_capacity_tokens=int(disk_kv_GiB * gib) // per_token,
        )

    @classmethod
    def from_measurements(cls, *, kv_bytes_per_token: int, prefill_tokens_per_s: float,
                          h2d_GBps: float, d2h_GBps: float, disk_read_GBps: float,
                          disk_write_GBps: float, gpu_kv_bytes: int, cpu_kv_bytes: int,
                          disk_kv_bytes: int) -> "CostModel":
        """Build from what the runtime measured at start-up (bandwidth probes, a timed prefill)
        and the byte budgets it gave each tier; capacities are converted to whole tokens."""
        if kv_bytes_per_token <= 0:
            raise ValueError(f"kv_bytes_per_token must be > 0, got {kv_bytes_per_token!r}")
        return cls(
            kv_bytes_per_token=int(kv_bytes_per_token),
            prefill_tokens_per_s=float(prefill_tokens_per_s),
            h2d_GBps=float(h2d_GBps), d2h_GBps=float(d2h_GBps),
            disk_read_GBps=float(disk_read_GBps), disk_write_GBps=float(disk_write_GBps),
            gpu_capacity_tokens=int(gpu_kv_bytes) // int(kv_bytes_per_token),
            cpu_capacity_tokens=int(cpu_kv_bytes) // int(kv_bytes_per_token),
            disk_capacity_tokens=int(disk_kv_bytes) // int(kv_bytes_per_token),
        )

    def with_capacities(self, *, gpu_tokens: int | None = None, cpu_tokens: int | None = None,
                        disk_tokens: int | None = None) -> "CostModel":
        """The same machine with other tier budgets (the simulator limits memory this way)."""
        from dataclasses import replace
        return replace(
            self,
            gpu_capacity_tokens=self.gpu_capacity_tokens if gpu_tokens is None else gpu_tokens,
            cpu_capacity_tokens=self.cpu_capacity_tokens if cpu_tokens is None else cpu_tokens,
            disk_capacity_tokens=self.disk_capacity_tokens if disk_tokens is None else disk_tokens)
