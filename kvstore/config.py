"""Configuration of the KV tiers below the GPU block pool (pinned CPU memory and disk)."""
from __future__ import annotations

from dataclasses import dataclass

GiB = 1 << 30


@dataclass
class TierConfig:
    """Sizes of the CPU and disk tiers; a size of 0 turns that tier off.

    `staging_mb` is a small pinned buffer that carries blocks between the GPU and the disk when
    they do not stay on the CPU tier (GPU->disk offload, disk->GPU prefetch).
    """

    cpu_cache_gb: float = 0
    disk_cache_path: str | None = None
    disk_cache_gb: float = 0
    staging_mb: int = 256

    def __post_init__(self) -> None:
        if self.cpu_cache_gb < 0:
            raise ValueError(f"cpu_cache_gb must be >= 0 (0 turns the CPU tier off), "
                             f"got {self.cpu_cache_gb}")
        if self.disk_cache_gb < 0:
            raise ValueError(f"disk_cache_gb must be >= 0 (0 turns the disk tier off), "
                             f"got {self.disk_cache_gb}")
        if self.disk_cache_gb > 0 and not self.disk_cache_path:
            raise ValueError("disk_cache_gb > 0 needs disk_cache_path (a directory for LMDB)")
        if self.staging_mb <= 0:
            raise ValueError(f"staging_mb must be positive, got {self.staging_mb}")

    @property
    def cpu_bytes(self) -> int:
        return int(self.cpu_cache_gb * GiB)

    @property
    def disk_bytes(self) -> int:
        return int(self.disk_cache_gb * GiB)

    @property
    def staging_bytes(self) -> int:
        return self.staging_mb << 20

    @property
    def cpu_enabled(self) -> bool:
        return self.cpu_bytes > 0

    @property
    def disk_enabled(self) -> bool:
        return self.disk_bytes > 0 and bool(self.disk_cache_path)
