"""The simulated memory: where each session's KV is, what each tier holds, the copy channels.

Each session's private KV is a token range [0, ctx). The GPU holds a prefix [0, gpu) of it; the
CPU and the disk each hold one interval [lo, hi) (a write-through copies from 0; an LRU offload
of an evicted tail copies [a, b)). Adding an interval that touches the existing one merges them;
one that does not replaces it (a later turn can only use the range right after the GPU prefix).
A copy is usable from its `*_ready` time on (copies in flight are real: they occupy a channel).

A channel is a serial FIFO resource: a job starts when both it is asked to and the channel is
free, so queuing delays behind prefetches and write-throughs are part of every load.
"""
from __future__ import annotations

from sessions.costs import CostModel
from sessions.estimator import PauseForecast
from sessions.policies.base import SessionKVView
from sessions.sim.rounds import SimSession

_GB = 1e9


class Channel:
    """One serial transfer path (PCIe H2D, PCIe D2H, the disk) at a fixed bandwidth."""

    def __init__(self, name: str, GBps: float) -> None:
        self.name = name
        self.bytes_per_s = GBps * _GB
        self.free_at = 0.0
        self.bytes = 0
        self.busy_s = 0.0

    def submit(self, start: float, nbytes: int, bytes_per_s: float | None = None) -> float:
        """Queue a copy that may begin at `start`; returns when it ends."""
        if nbytes <= 0:
            return start
        dur = nbytes / (bytes_per_s or self.bytes_per_s)
        begin = max(start, self.free_at)
        self.free_at = begin + dur
        self.bytes += nbytes
        self.busy_s += dur
        return self.free_at

    def backlog_s(self, now: float) -> float:
        return max(0.0, self.free_at - now)


class SessionKV:
    """Engine-side state of one session's KV (mutable; policies only see its view)."""
    __slots__ = ("sid", "sess", "ctx", "gpu", "gpu_ready", "cpu_lo", "cpu_hi", "cpu_ready",
                 "disk_lo", "disk_hi", "disk_ready", "state", "paused_at", "forecast", "tool",
                 "human", "pinned_until", "last_used", "epoch", "down_ready", "prefetched",
                 "_view")

    def __init__(self, sess: SimSession) -> None:
        self.sid, self.sess = sess.session_id, sess
        self.ctx = self.gpu = 0
        self.cpu_lo = self.cpu_hi = self.disk_lo = self.disk_hi = 0
        self.gpu_ready = self.cpu_ready = self.disk_ready = 0.0
        self.state = "new"            # new | waiting | active | paused | closed
        self.paused_at: float | None = None
        self.forecast: PauseForecast | None = None
        self.tool: str | None = None
        self.human = False
        self.pinned_until = 0.0
        self.last_used = 0.0
        self.epoch = 0                # bumps at every pause; stale events are ignored
        self.down_ready = 0.0         # when the GPU blocks' copies below have left the GPU
        self.prefetched = False       # a prefetch ran during the current pause
        self._view: SessionKVView | None = None

    def view(self) -> SessionKVView:
        if self._view is None:
            shared = self.sess.shared_prefix_tokens
            self._view = SessionKVView(
                session_id=self.sid, tokens=shared + self.ctx, gpu_tokens=self.gpu,
                cpu_tokens=self.cpu_hi - self.cpu_lo, disk_tokens=self.disk_hi - self.disk_lo,
                shared_prefix_tokens=shared,
                paused_at=self.paused_at if self.state == "paused" else None,
                forecast=self.forecast, is_human=self.human, tool=self.tool,
                last_used_at=self.last_used, pinned_until=self.pinned_until,
                copies_done_at=self.down_ready)
        return self._view

    def touch(self) -> None:
        self._view = None


class TierBook:
    """Occupancy of the three tiers and the sessions holding blocks on each."""

    def __init__(self, cost: CostModel, pinned_gpu_tokens: int) -> None:
        self.cap = {"gpu": cost.gpu_capacity_tokens, "cpu": cost.cpu_capacity_tokens,
                    "disk": cost.disk_capacity_tokens}
        self.used = {"gpu": pinned_gpu_tokens, "cpu": 0, "disk": 0}
        self.holders: dict[str, set[str]] = {"gpu": set(), "cpu": set(), "disk": set()}

    def free(self, tier: str) -> int:
        return self.cap[tier] - self.used[tier]

    def set_gpu(self, kv: SessionKV, n: int) -> None:
        self.used["gpu"] += n - kv.gpu
        kv.gpu = n
        (self.holders["gpu"].add if n > 0 else self.holders["gpu"].discard)(kv.sid)
        kv.touch()

    def set_interval(self, kv: SessionKV, tier: str, lo: int, hi: int, ready: float) -> None:
        old = (kv.cpu_hi - kv.cpu_lo) if tier == "cpu" else (kv.disk_hi - kv.disk_lo)
        hi = max(lo, hi)
        self.used[tier] += (hi - lo) - old
        if tier == "cpu":
            kv.cpu_lo, kv.cpu_hi, kv.cpu_ready = lo, hi, ready
        else:
            kv.disk_lo, kv.disk_hi, kv.disk_ready = lo, hi, ready
        (self.holders[tier].add if hi > lo else self.holders[tier].discard)(kv.sid)
        kv.touch()

    def interval(self, kv: SessionKV, tier: str) -> tuple[int, int, float]:
        if tier == "cpu":
            return kv.cpu_lo, kv.cpu_hi, kv.cpu_ready
        return kv.disk_lo, kv.disk_hi, kv.disk_ready

    def add_interval(self, kv: SessionKV, tier: str, lo: int, hi: int, ready: float) -> int:
        """Merge [lo, hi) into the tier's copy; returns how many tokens are new there."""
        olo, ohi, oready = self.interval(kv, tier)
        if ohi > olo and lo <= ohi and hi >= olo:           # overlapping or adjacent
            nlo, nhi = min(lo, olo), max(hi, ohi)
            added = (nhi - nlo) - (ohi - olo)
            self.set_interval(kv, tier, nlo, nhi, max(oready, ready) if added else oready)
            return added
        self.set_interval(kv, tier, lo, hi, ready)
        return hi - lo

    def missing(self, kv: SessionKV, tier: str, lo: int, hi: int) -> int:
        """Tokens of [lo, hi) the tier does not hold."""
        tlo, thi, _ = self.interval(kv, tier)
        return (hi - lo) - max(0, min(hi, thi) - max(lo, tlo))

    def truncate(self, kv: SessionKV, n: int) -> None:
        """The context was cut to n private tokens: copies beyond it are stale."""
        if kv.gpu > n:
            self.set_gpu(kv, n)
        for tier in ("cpu", "disk"):
            lo, hi, ready = self.interval(kv, tier)
            if hi > n:
                self.set_interval(kv, tier, lo, n if lo < n else lo, ready)
        kv.ctx = min(kv.ctx, n)

    def drop_all(self, kv: SessionKV) -> None:
        self.set_gpu(kv, 0)
        self.set_interval(kv, "cpu", 0, 0, 0.0)
        self.set_interval(kv, "disk", 0, 0, 0.0)

    def reuse(self, kv: SessionKV, n: int) -> tuple[int, int, int]:
        """(gpu, cpu, disk) tokens of the private prefix [0, n) that can be reused: the GPU
        prefix, then whichever lower copy continues it (CPU preferred), up to the first gap."""
        g = min(kv.gpu, n)
        pos, c, d = g, 0, 0
        while pos < n:
            if kv.cpu_lo <= pos < kv.cpu_hi:
                step = min(kv.cpu_hi, n) - pos
                c += step
            elif kv.disk_lo <= pos < kv.disk_hi:
                end = min(kv.disk_hi, n)
                if kv.cpu_hi > kv.cpu_lo and pos < kv.cpu_lo < end:
                    end = kv.cpu_lo                          # switch to CPU where it starts
                step = end - pos
                d += step
            else:
                break
            pos += step
        return g, c, d
