"""What the simulator takes and gives back: its configuration and per-turn records."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SimConfig:
    """decode_s_per_token: time per output token of a turn. Decode is batched with every other
    running turn, so it is modelled as a fixed per-token time, not a shared resource (its KV
    stays reserved on the GPU meanwhile). prefetch: whether the engine honours due prefetches;
    those that read the disk wait for a quiet disk (they must not delay turns' own reads)."""
    decode_s_per_token: float = 0.015
    prefetch: bool = True
    prefetch_disk_backlog_s: float = 0.5    # skip disk prefetches while reads queue longer


@dataclass(frozen=True)
class TurnRecord:
    """One turn. context = reused_gpu + reused_cpu + reused_disk + recomputed + new_tokens.

    shared_tokens: the shared prefix's part of the context; shared_hit: how much of it was
    found on the GPU (part of reused_gpu; the rest is in recomputed).
    load_bytes: bytes loaded from CPU or disk on this turn's critical path.
    TTFT = admit_wait_s + load_wait_s + queue_wait_s + prefill time.
    """
    session_id: str
    round_idx: int
    is_resume: bool
    arrival_s: float
    first_token_s: float
    end_s: float
    context_tokens: int
    new_tokens: int
    reused_gpu: int
    reused_cpu: int
    reused_disk: int
    recomputed: int
    shared_tokens: int
    shared_hit: int
    load_bytes: int
    prefetched: bool = False
    admit_wait_s: float = 0.0       # arrival -> GPU room for the turn
    load_wait_s: float = 0.0        # admission -> its KV is on the GPU (loads, copies, evictions)
    queue_wait_s: float = 0.0       # KV ready -> the prefill engine takes it

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def reused(self) -> int:
        return self.reused_gpu + self.reused_cpu + self.reused_disk


@dataclass(frozen=True)
class SimResult:
    policy: str
    turns: tuple[TurnRecord, ...]
    jct_s: dict[str, float]                 # session -> last turn end - arrival
    bytes_moved: dict[str, int]             # h2d, d2h, disk_read, disk_write
    counters: dict[str, int] = field(default_factory=dict)
    end_s: float = 0.0
    wall_s: float = 0.0
