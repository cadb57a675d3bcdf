"""A discrete-event simulator of one GPU serving many agent sessions under a cache policy.

Resources, all on a virtual clock: the GPU's KV memory (tokens), pinned CPU memory and disk
(each with a capacity), three serial copy channels (PCIe H2D, PCIe D2H, and the disk, whose
reads and writes share it) at the CostModel's bandwidths, and the prefill engine (serial, at
the measured prefill speed). Decode is a fixed time per output token (batched, not queued).

A turn: it arrives (the session's pause ends); it is admitted once the GPU has room for its
whole context and output (room made by evicting paused or waiting sessions' blocks in the
policy's order; an eviction waits for any copy it needs); the parts of its prefix held on CPU
or disk are loaded, queued on the channels behind whatever is already queued there (a part
held only on disk is split: its front is recomputed while its back loads, sized so both end
together); then it waits for the prefill engine, whose queue is ordered by the policy's
admission priority, and prefills the recomputed plus the new tokens: the first token is out.
TTFT = first token - arrival. Decode follows; at the end the session pauses and the policy
places its KV.

Honest costs: prefetches use the same channels and GPU room as everything else (disk
prefetches only while the disk is quiet); a session that comes back before its prefetch is
done waits for it, and one that comes back before its prefetch started loads on its critical
path. Copies down run while the session is paused (CPU copies at once over D2H; disk copies by
a background write-back that yields to reads, writeback.py); blocks can leave a tier only once
their copy below has left it. Every tier's capacity holds at every step.
"""
from __future__ import annotations

import heapq
import math
import time

from sessions.costs import CostModel
from sessions.policies.base import CachePolicy, Placement, PlacementPlan, TierUsage
from sessions.sim.evict import EvictionMixin
from sessions.sim.records import SimConfig, SimResult, TurnRecord
from sessions.sim.rounds import SimSession
from sessions.sim.tiers import Channel, SessionKV, TierBook
from sessions.sim.writeback import DiskWriteBack

ARRIVE, READY, PREFILL_DONE, TURN_END, RELEASE, PREFETCH, PUMP = range(7)


class _Turn:
    __slots__ = ("kv", "idx", "r", "arrival", "is_resume", "P", "need", "g", "c", "d", "rec",
                 "shared_hit", "load_bytes", "first", "prefetched", "admitted", "ready",
                 "started")


class Simulator(EvictionMixin):
    PUMP = PUMP
    def __init__(self, sessions: list[SimSession], policy: CachePolicy, cost: CostModel,
                 config: SimConfig = SimConfig()) -> None:
        """A turn's KV comes from the fastest tier holding it; a part held only on disk is
        split: its front is recomputed by the prefill engine while its back loads, sized so
        both end together (the disk queue counted)."""
        self.policy, self.cost, self.cfg = policy, cost, config
        self.sessions = sorted(sessions, key=lambda s: (s.arrival_s, s.session_id))
        shared = max((s.shared_prefix_tokens for s in sessions), default=0)
        self.tiers = TierBook(cost, shared if policy.keeps_shared_prefix else 0)
        room = self.tiers.free("gpu")
        for s in sessions:
            for r in s.rounds:
                need = r.context_tokens + r.output_tokens - (
                    s.shared_prefix_tokens if policy.keeps_shared_prefix else 0)
                if need > room:
                    raise ValueError(f"{s.session_id} round {r.round_idx} needs {need} tokens "
                                     f"of GPU KV; the GPU holds {room}")
        self.kv = {s.session_id: SessionKV(s) for s in sessions}
        self.h2d = Channel("h2d", cost.h2d_GBps)
        self.d2h = Channel("d2h", cost.d2h_GBps)
        self.disk = Channel("disk", cost.disk_read_GBps)
        self.disk_read = self.disk_write = 0
        self.writeback = DiskWriteBack(self)
        self.counters = {k: 0 for k in ("evict_gpu", "evict_cpu", "evict_disk", "prefetches",
                                        "prefetch_hits", "prefetch_skipped", "staged",
                                        "copy_skipped", "peak_open_kv_tokens")}
        self.open_tokens = 0                # private KV of sessions not closed
        self.events: list = []
        self.waiting: list = []
        self.ready: list = []
        self.busy = False
        self.seq = 0
        self.records: list[TurnRecord] = []
        self.jct: dict[str, float] = {}

    # -- plumbing ------------------------------------------------------------------------------
    def _push(self, t: float, kind: int, a=None, b=None) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, a, b))

    def _bytes(self, tokens: int) -> int:
        return tokens * self.cost.kv_bytes_per_token

    def _disk_io(self, start: float, tokens: int, write: bool) -> float:
        n = self._bytes(tokens)
        if write:
            self.disk_write += n
            return self.disk.submit(start, n, self.cost.disk_write_GBps * 1e9)
        self.disk_read += n
        return self.disk.submit(start, n, self.cost.disk_read_GBps * 1e9)

    def usage(self, now: float) -> TierUsage:
        t = self.tiers
        queued = self.writeback.queued_tokens() * self.cost.kv_bytes_per_token / (
            self.cost.disk_write_GBps * 1e9)
        return TierUsage(t.used["gpu"], t.cap["gpu"], t.used["cpu"], t.cap["cpu"],
                         t.used["disk"], t.cap["disk"], self.d2h.backlog_s(now),
                         self.disk.backlog_s(now) + queued)

    def run(self) -> SimResult:
        wall = time.perf_counter()
        for s in self.sessions:
            self._push(s.arrival_s, ARRIVE, self.kv[s.session_id], 0)
        now = 0.0
        handlers = (self._arrive, self._ready, self._prefill_done, self._turn_end,
                    self._release, lambda now, a, b: None,
                    lambda now, a, b: self.writeback.on_event(now))
        while self.events:
            now, _, kind, a, b = heapq.heappop(self.events)
            handlers[kind](now, a, b)
            if self.cfg.prefetch:
                for sid in self.policy.due_prefetches(now):
                    self._prefetch(self.kv[sid], now)
        unfinished = len(self.sessions) - len(self.jct)
        if self.waiting or unfinished:
            raise RuntimeError(f"simulation stalled at t={now:.1f}s: {len(self.waiting)} turns "
                               f"waiting for GPU room, {unfinished} sessions unfinished")
        moved = {"h2d": self.h2d.bytes, "d2h": self.d2h.bytes, "disk_read": self.disk_read,
                 "disk_write": self.disk_write}
        return SimResult(self.policy.name, tuple(self.records), dict(self.jct), moved,
                         dict(self.counters), now, time.perf_counter() - wall)

    # -- a turn's life -------------------------------------------------------------------------
    def _arrive(self, now: float, kv: SessionKV, idx: int) -> None:
        s, r = kv.sess, kv.sess.rounds[idx]
        t = _Turn()
        t.kv, t.idx, t.r, t.arrival, t.is_resume = kv, idx, r, now, idx > 0
        t.prefetched = kv.prefetched
        if t.is_resume:
            self.policy.estimator.observe(kv.tool, kv.human, now - kv.paused_at)
            self.policy.on_resume(kv.sid, now)
        kv.state, kv.paused_at = "waiting", None
        kv.touch()
        t.P = max(0, r.prefix_tokens - s.shared_prefix_tokens)
        if t.P < kv.ctx:                    # the context was cut: copies beyond it are stale
            self.open_tokens -= kv.ctx - t.P
            self.writeback.cancel(kv)
            self.tiers.truncate(kv, t.P)
        t.need = t.P + r.input_tokens + r.output_tokens + (
            0 if self.policy.keeps_shared_prefix else s.shared_prefix_tokens)
        key = self.policy.admission_priority(kv.sid, t.is_resume, now, now)
        self.seq += 1
        heapq.heappush(self.waiting, (key, self.seq, t))
        self._try_admit(now)

    def _try_admit(self, now: float) -> None:
        while self.waiting:
            t = self.waiting[0][2]
            extra = t.need - t.kv.gpu
            wait = now
            if extra > self.tiers.free("gpu"):
                ok, wait = self._make_room("gpu", extra - self.tiers.free("gpu"), now, t.kv,
                                           critical=True)
                if not ok:
                    return                  # wait for a running turn to end
            heapq.heappop(self.waiting)
            self._start(t, now, wait)

    def _start(self, t: _Turn, now: float, wait: float) -> None:
        kv, s = t.kv, t.kv.sess
        g, c, d = self.tiers.reuse(kv, t.P)
        t.g, t.c, t.d = g, c, d
        t.rec = t.P - g - c - d
        t.shared_hit = s.shared_prefix_tokens if self.policy.keeps_shared_prefix else 0
        if not self.policy.keeps_shared_prefix:
            t.rec += s.shared_prefix_tokens
        t.admitted = now
        ready = max(now, wait, kv.gpu_ready if g else now)
        t.load_bytes = self._bytes(c + d)
        if t.prefetched and c + d == 0 and g == t.P:
            self.counters["prefetch_hits"] += 1
        if c:
            ready = max(ready, self.h2d.submit(max(now, kv.cpu_ready), self._bytes(c)))
        head = 0.0
        if d:
            x = self._recompute_share(d, max(now, kv.disk_ready, self.disk.free_at) - now)
            t.d, t.rec = d - x, t.rec + x
            t.load_bytes = self._bytes(c + d - x)
            if d - x:
                e = self._disk_io(max(now, kv.disk_ready), d - x, write=False)
                ready = max(ready, self.h2d.submit(e, self._bytes(d - x)))
                head = self.cost.recompute_s(x)      # rebuilt while the rest loads
        self.tiers.set_gpu(kv, t.need)
        kv.gpu_ready, kv.state = ready, "active"
        t.ready = max(now, ready - head)
        self._push(t.ready, READY, t)

    def _recompute_share(self, d: int, disk_wait_s: float) -> int:
        """Of d missing tokens held on disk, how many to recompute (the front ones) while the
        rest loads (from the back), so both finish together: x / prefill = wait + (d - x) *
        (disk read + H2D time per token)."""
        per = self.cost.load_s(d, "disk") / d
        x = (disk_wait_s + d * per) / (1.0 / self.cost.prefill_tokens_per_s + per)
        return int(min(d, max(0.0, x)))

    def _ready(self, now: float, t: _Turn, _b) -> None:
        key = self.policy.admission_priority(t.kv.sid, t.is_resume, t.arrival, now)
        self.seq += 1
        heapq.heappush(self.ready, (key, self.seq, t))
        self._next_prefill(now)

    def _next_prefill(self, now: float) -> None:
        if self.busy or not self.ready:
            return
        t = heapq.heappop(self.ready)[2]
        t.started = now
        self.busy = True
        self._push(now + self.cost.recompute_s(t.rec + t.r.input_tokens), PREFILL_DONE, t)

    def _prefill_done(self, now: float, t: _Turn, _b) -> None:
        t.first = now
        self.busy = False
        self._push(now + t.r.output_tokens * self.cfg.decode_s_per_token, TURN_END, t)
        self._next_prefill(now)

    def _turn_end(self, now: float, t: _Turn, _b) -> None:
        kv, s, r = t.kv, t.kv.sess, t.r
        ctx_tokens = r.context_tokens
        self.records.append(TurnRecord(
            kv.sid, r.round_idx, t.is_resume, t.arrival, t.first, now, ctx_tokens,
            r.input_tokens, t.g + t.shared_hit, t.c, t.d, t.rec, s.shared_prefix_tokens,
            t.shared_hit, t.load_bytes, t.prefetched, t.admitted - t.arrival,
            t.ready - t.admitted, t.started - t.ready))
        self.open_tokens += t.P + r.input_tokens + r.output_tokens - kv.ctx
        self.counters["peak_open_kv_tokens"] = max(self.counters["peak_open_kv_tokens"],
                                                   self.open_tokens)
        kv.ctx = t.P + r.input_tokens + r.output_tokens
        self.tiers.set_gpu(kv, kv.ctx)
        kv.last_used, kv.prefetched = now, False
        last = t.idx == len(s.rounds) - 1
        if last:
            self.jct[kv.sid] = now - s.arrival_s
        if last and s.closes:
            self.open_tokens -= kv.ctx
            self.writeback.cancel(kv)
            self.tiers.drop_all(kv)
            kv.state = "closed"
            self.policy.on_close(kv.sid)
            self._try_admit(now)
            return
        self.policy.on_turn_end(kv.view(), now)
        kv.state, kv.paused_at, kv.epoch = "paused", now, kv.epoch + 1
        kv.tool, kv.human = r.tool_after or "user", r.human_after if r.tool_after else True
        kv.forecast = self.policy.forecast(kv.tool, kv.human, r.hint_after_s)
        kv.pinned_until = 0.0
        kv.touch()
        self._apply(kv, self.policy.on_pause(kv.view(), kv.forecast, now, self.usage(now)),
                    now)
        if not last and math.isfinite(r.pause_after_s):
            nxt = s.rounds[t.idx + 1]
            at = now + r.pause_after_s if nxt.arrival_s is None else max(now, nxt.arrival_s)
            self._push(at, ARRIVE, kv, t.idx + 1)
        self._try_admit(now)

    # -- placement -----------------------------------------------------------------------------
    def _apply(self, kv: SessionKV, plan: PlacementPlan, now: float) -> None:
        p = plan.placement
        if p is Placement.DROP:
            self.tiers.drop_all(kv)
            return
        if p is Placement.KEEP_GPU:
            kv.pinned_until = now + plan.ttl_s
            kv.touch()
            if plan.insure_cpu:           # a CPU copy behind the keep, as the runtime writes
                self._copy_down(kv, "cpu", now)
        elif p is Placement.WRITE_CPU or p is Placement.OFFLOAD_CPU:
            kv.pinned_until = now + plan.ttl_s
            done = self._copy_down(kv, "disk" if plan.writes_disk else "cpu", now)
            if done is not None and plan.releases_gpu:
                self._push(done, RELEASE, kv, kv.epoch)
        elif p is Placement.SPILL_DISK:
            done = self._copy_down(kv, "disk", now)
            if done is not None and plan.releases_gpu:
                self._push(done, RELEASE, kv, kv.epoch)
        if plan.prefetch_at is not None and self.cfg.prefetch:
            self._push(max(now, plan.prefetch_at), PREFETCH)

    def _room(self, tier: str, n: int, now: float, kv: SessionKV | None,
              critical: bool, exclude: frozenset = frozenset()) -> tuple[bool, float]:
        free = self.tiers.free(tier)
        if free >= n:
            return True, now
        return self._make_room(tier, n - free, now, kv, critical, exclude)

    def _copy_down(self, kv: SessionKV, tier: str, now: float) -> float | None:
        """Copy the session's context to `tier` in the background: to CPU over D2H now; to
        disk through a CPU copy (kept if the CPU has room the policy lets it take) by the
        write-back queue. Returns when the blocks have a copy off the GPU, or None when there
        is none yet (no CPU room: the disk write will bounce when its turn comes)."""
        n = kv.ctx
        if tier == "cpu":
            miss = self.tiers.missing(kv, "cpu", 0, n)
            if miss == 0:
                return max(now, kv.down_ready)
            ok, wait = self._room("cpu", miss, now, kv, critical=False)
            if not ok:
                self.counters["copy_skipped"] += 1
                return None
            end = self.d2h.submit(wait, self._bytes(miss))
            self.tiers.add_interval(kv, "cpu", 0, n, end)
            kv.down_ready = max(kv.down_ready, end)
            return end
        on_cpu = self._copy_down(kv, "cpu", now)
        if self.tiers.missing(kv, "disk", 0, n):
            self.writeback.request(kv, n, now)
        return on_cpu

    def _release(self, now: float, kv: SessionKV, epoch: int) -> None:
        if kv.epoch == epoch and kv.state == "paused" and kv.gpu:
            self.tiers.set_gpu(kv, 0)
            self._try_admit(now)


def run_simulation(sessions: list[SimSession], policy: CachePolicy, cost: CostModel,
                   config: SimConfig = SimConfig()) -> SimResult:
    return Simulator(sessions, policy, cost, config).run()
