"""The messages between an engine and a cache policy, and the policy interface itself.

A policy is pure decision logic: it never touches memory or clocks. The engine (the real runtime
or the simulator) describes sessions with `SessionKVView` snapshots and the tiers with
`TierUsage`, calls the hooks below at the moments they name, and carries out what they return.

Hook protocol, in the order an engine calls them for one session:

    on_turn_end(view, now)                  a turn finished (its KV is all on the GPU)
    on_pause(view, forecast, now, tiers)    the session paused on a tool or a human
        -> PlacementPlan                    what to copy where, whether to free the GPU copy,
                                            how long to pin it, when to prefetch it back
    due_prefetches(now) -> [session_id]     poll (at plan.prefetch_at, or every loop): start
                                            loading these back (only into room that
                                            eviction_order gives up for them)
    eviction_order(candidates, now, tier)   the tier is short of room: evict in this order
    on_evict(view, tier, now) -> Placement  where blocks evicted from `tier` go when no lower
                                            tier holds them already
    on_resume(session_id, now)              the next turn arrived
    admission_priority(...)                 order of turns waiting for the prefill engine
    step_token_cap(pauses) -> int | None    before engine steps: shorten them while a paused
                                            session is likely back within one
    on_close(session_id)                    the session ended; forget it

Token counts in a view are of the session's *private* KV (context minus the shared prefix),
each tier's count being the length of the prefix of it that tier holds a copy of.
"""
from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from sessions.costs import CostModel
from sessions.estimator import PauseEstimator, PauseForecast


class Placement(enum.Enum):
    KEEP_GPU = "keep_gpu"        # stay on the GPU, pinned for ttl_s (a CPU copy if insure_cpu)
    WRITE_CPU = "write_cpu"      # copy to CPU now; the GPU copy stays until evicted (then free)
    OFFLOAD_CPU = "offload_cpu"  # copy to CPU, then free the GPU copy
    SPILL_DISK = "spill_disk"    # copy to CPU (kept if the CPU has room the policy's
                                 # eviction order gives) and on to disk, then free the GPU copy
    DROP = "drop"                # free every copy; the next turn recomputes from the token log


_RELEASES = {Placement.KEEP_GPU: False, Placement.WRITE_CPU: False,
             Placement.OFFLOAD_CPU: True, Placement.SPILL_DISK: True, Placement.DROP: True}


@dataclass(frozen=True)
class PlacementPlan:
    """A policy's decision for one paused session.

    release_gpu: None keeps the placement's default (OFFLOAD_CPU and SPILL_DISK free the GPU
    copy once the copy below is complete; WRITE_CPU and KEEP_GPU keep it). False on a
    SPILL_DISK makes it a write-through to disk. write_back_disk: with WRITE_CPU/OFFLOAD_CPU,
    also write a disk copy behind the CPU one, at low priority (a later CPU eviction is then
    free). prefetch_at: absolute time (the engine's clock) at which to start loading the KV
    back to the GPU, or None. insure_cpu: with KEEP_GPU, write a CPU copy through as well (a
    pin yields to a turn short of room and the pool reuses an evicted block at once, too soon
    to copy it; the copy makes that eviction free).
    """
    session_id: str
    placement: Placement
    ttl_s: float = 0.0
    prefetch_at: float | None = None
    release_gpu: bool | None = None
    write_back_disk: bool = False
    insure_cpu: bool = False
    reason: str = ""

    @property
    def releases_gpu(self) -> bool:
        return _RELEASES[self.placement] if self.release_gpu is None else self.release_gpu

    @property
    def writes_cpu(self) -> bool:
        return self.placement in (Placement.WRITE_CPU, Placement.OFFLOAD_CPU,
                                  Placement.SPILL_DISK)

    @property
    def writes_disk(self) -> bool:
        return self.placement is Placement.SPILL_DISK or (
            self.write_back_disk and self.placement is not Placement.DROP)

    @property
    def keeps_gpu(self) -> bool:
        """True when the GPU copy outlives the decision (until the TTL or an eviction)."""
        return self.placement is not Placement.DROP and not self.releases_gpu


@dataclass(frozen=True)
class SessionKVView:
    """A snapshot of one session's KV as the engine sees it.

    tokens: context length (shared prefix included). gpu/cpu/disk_tokens: private tokens with
    a copy on that tier. shared_prefix_tokens: tokens in blocks shared with other sessions (a
    system prompt), counted once by the engine, never evicted with the session.
    paused_at: when the current pause began (None while a turn runs). pinned_until: the end
    of a KEEP_GPU ttl (0 when none). copies_done_at: when the copies below will have left the
    GPU (evicting before then waits for them).
    """
    session_id: str
    tokens: int
    gpu_tokens: int = 0
    cpu_tokens: int = 0
    disk_tokens: int = 0
    shared_prefix_tokens: int = 0
    paused_at: float | None = None
    forecast: PauseForecast | None = None
    is_human: bool = False
    tool: str | None = None
    last_used_at: float = 0.0
    pinned_until: float = 0.0
    copies_done_at: float = 0.0

    @property
    def private_tokens(self) -> int:
        return max(0, self.tokens - self.shared_prefix_tokens)

    def covered_below(self, tier: str) -> bool:
        """Whether every block on `tier` also has a copy on a lower tier (eviction is free)."""
        if tier == "gpu":
            return max(self.cpu_tokens, self.disk_tokens) >= self.gpu_tokens
        if tier == "cpu":
            return self.disk_tokens >= self.cpu_tokens
        return False


@dataclass(frozen=True)
class TierUsage:
    """Occupancy of each tier in tokens, and queued transfer work in seconds."""
    gpu_used: int
    gpu_capacity: int
    cpu_used: int
    cpu_capacity: int
    disk_used: int
    disk_capacity: int
    d2h_backlog_s: float = 0.0
    disk_backlog_s: float = 0.0

    def pressure(self, tier: str) -> float:
        used, cap = {"gpu": (self.gpu_used, self.gpu_capacity),
                     "cpu": (self.cpu_used, self.cpu_capacity),
                     "disk": (self.disk_used, self.disk_capacity)}[tier]
        return 1.0 if cap <= 0 else used / cap

    def free(self, tier: str) -> int:
        used, cap = {"gpu": (self.gpu_used, self.gpu_capacity),
                     "cpu": (self.cpu_used, self.cpu_capacity),
                     "disk": (self.disk_used, self.disk_capacity)}[tier]
        return max(0, cap - used)


class CachePolicy(ABC):
    """Where each session's KV lives between turns. Subclasses set `name`."""
    name: ClassVar[str] = ""
    keeps_shared_prefix: ClassVar[bool] = True   # False: a stateless server recomputes it too
    # True: every pause's plan writes a CPU copy, so the controller starts it as the turn ends
    copies_cpu_at_turn_end: ClassVar[bool] = False
    # True: a running turn's full blocks are copied to the CPU as they are computed, so that a
    # preempted turn loads its work back instead of recomputing it
    copies_cpu_while_computing: ClassVar[bool] = False
    # True: step_token_cap also hears of sessions whose turn has just ended and whose pause
    # has not reached the engine yet (timed from the turn's end, with their last forecast)
    step_cap_counts_turn_ends: bool = False

    def __init__(self, cost: CostModel, estimator: PauseEstimator | None = None) -> None:
        self.cost = cost
        self.estimator = estimator if estimator is not None else PauseEstimator()

    def forecast(self, tool: str, human: bool, hint_s: float | None = None) -> PauseForecast:
        """The forecast an engine passes to on_pause (the estimator's, by default)."""
        return self.estimator.expected(tool, human, hint_s)

    def on_turn_end(self, view: SessionKVView, now: float) -> None:
        """A turn finished; its whole context is on the GPU."""

    @abstractmethod
    def on_pause(self, view: SessionKVView, forecast: PauseForecast, now: float,
                 tiers: TierUsage | None = None) -> PlacementPlan:
        """The session paused: decide where its KV spends the pause."""

    def on_resume(self, session_id: str, now: float) -> None:
        """The session's next turn arrived (cancel anything scheduled for the pause)."""

    def on_close(self, session_id: str) -> None:
        """The session ended; its KV is freed by the engine."""

    def on_evict(self, view: SessionKVView, tier: str, now: float) -> Placement:
        """Blocks are being evicted from `tier` and no lower tier has them: OFFLOAD_CPU
        (from the GPU), SPILL_DISK (from GPU or CPU) or DROP."""
        return Placement.DROP

    @abstractmethod
    def eviction_order(self, candidates: list[SessionKVView], now: float,
                       tier: str = "gpu") -> list[str]:
        """Session ids in the order they should lose their blocks on `tier`."""

    def due_prefetches(self, now: float) -> list[str]:
        """Sessions whose KV should start coming back to the GPU now."""
        return []

    def admission_priority(self, session_id: str, is_resume: bool, enqueued_at: float,
                           now: float) -> float:
        """Sort key (smaller runs first) for a turn waiting for prefill. Default: FCFS."""
        return enqueued_at

    def step_token_cap(self, pauses: list[tuple[float, PauseForecast]]) -> int | None:
        """The most tokens the next engine step should carry, given each paused session's
        (seconds paused so far, forecast); None: the engine's own budget. A turn that arrives
        while a step runs waits for that step, so a policy may shorten steps while a resume
        is likely. Called before each step (the engine may reuse an answer for a few ms).
        With `step_cap_counts_turn_ends`, a session whose turn ended and that has not started
        another is in the list too, its seconds counted from the turn's end."""
        return None


def lru_order(candidates: list[SessionKVView]) -> list[str]:
    """Least recently used first (the time the session last ran)."""
    return [v.session_id for v in sorted(candidates, key=lambda v: (v.last_used_at,
                                                                     v.session_id))]
