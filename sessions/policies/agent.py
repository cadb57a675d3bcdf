"""agentkv's own policy: place each paused session's KV by what its pause will cost.

Per paused session, with T private tokens and a pause forecast (p50, p90, ...):

- the reload times come from the measured bandwidths: CPU `T*bytes/h2d`, disk
  `T*bytes/disk_read + T*bytes/h2d`; recompute costs `T/prefill_speed` of GPU time on the turn's
  critical path, and delays every turn queued behind it, so a copy on some tier is nearly
  always worth keeping;
- keep on the GPU (no copies) when the pause is short next to a CPU reload: p90 below
  `keep_s = max(keep_min_s, keep_factor * load_cpu)`; nothing could be moved out and back in
  time, and the GPU-memory-time is small; pinned for p90, with a CPU copy written through
  as insurance (`insure_cpu`): the pin yields to the first turn short of room (the
  controller's reclaim) and the pool reuses an evicted block at once, too soon to copy it, and
  the pool's use counts only running turns and pins, so a burst of first turns can find it
  near empty at the pause and evict the session a moment later; the CPU copy, a duplicate, is
  the first the CPU tier drops. Once the GPU is `keep_insure_pressure` used, the blocks are
  not pinned at all (WRITE_CPU), protected by the eviction order alone;
- a pause likely short but with a long tail (p50 below keep_s, p90 above): stay (ttl keep_s,
  advisory: the eviction order below already keeps sessions due back soon) and write through
  to CPU as insurance (only into room the eviction order gives it);
- a medium pause: write through to CPU (the GPU copy stays until evicted, so evicting it later
  is free at the moment the GPU needs room) with a disk copy written behind it (so a later CPU
  eviction is free too) once the CPU tier is `write_back_cpu_pressure` full: below that no CPU
  eviction is near, and the disk write would only take disk bandwidth, staging memory and host
  time from the turns running now; never when the disk is full or its write queue is long
  (`disk_backlog_limit_s`);
- a long pause (p50 above `disk_after_s`): spill to disk (through the CPU) and free the GPU;
- free the GPU copy at once (OFFLOAD_CPU) only when the GPU is nearly full;
- blocks evicted from the GPU with no copy below go to CPU now and on to disk behind it
  (SPILL_DISK); CPU evictions spill to disk (a scheduled prefetch then starts earlier by the
  disk-CPU load-time difference);
- prefetch: start loading at the forecast's `prefetch_q` quantile minus the load time, so the
  KV is on the GPU when the session is most likely back; if the prefetched copy is evicted
  again, retry at the same quantile of the remaining-time distribution (at most
  `max_prefetches` times per pause);
- eviction (cost-aware Belady): the session whose next use is predicted latest goes first (the
  median of the time still to wait given how long it has waited; heavy tails make old pauses
  look longer), that time divided by what reloading costs per token (1 when the CPU holds a
  copy, the disk/CPU load-time ratio when only the disk does, 2 when nothing below does and
  the eviction must copy first). In CPU memory, duplicates of GPU copies go first, those of
  sessions due back soonest first (their GPU copy is the least likely to be evicted); a CPU
  copy with nothing on disk counts `uncovered_cpu_weight` times nearer (evicting it writes to
  disk on the path of whoever needs the room);
- every placement above writes a CPU copy (or passes through CPU), so the controller starts it
  as the turn ends, while the turn still holds its blocks (`copies_cpu_at_turn_end`): the pause
  reaches the controller a step or more later, when turns short of room may have reused them;
- admission: a resumed session's turn ranks as if it had arrived when its session's first turn
  did (sessions in order of opening, as Continuum's program-level FCFS: a session under way
  finishes before a newer one starts its long first prefill, whose wait is bounded by the
  resumed turns of older sessions only), and at least `resume_boost_s` before its own arrival
  (a session whose opening this process did not see, as after a restart); `session_fcfs=False`
  keeps only the boost, under which a first turn that has waited longer than it goes first;
- step length: a turn that arrives while an engine step runs waits for the step to end (a full
  prefill chunk is tens of ms on a GPU), so while the paused sessions' forecasts give a chance
  of at least `resume_step_probability` that one of them is back within `resume_horizon_s`,
  steps carry at most `resume_step_tokens`; with only long pauses (humans) open, prefill runs
  in full chunks. A session whose turn has just ended counts from the turn's end, with its last
  pause's forecast (`resume_step_after_turn_end`): its pause reaches the engine only after the
  step planned at the turn's end, the step a quick tool's next turn arrives in.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from sessions.costs import CostModel
from sessions.estimator import PauseEstimator, PauseForecast
from sessions.policies.base import (CachePolicy, Placement, PlacementPlan, SessionKVView,
                                    TierUsage)


@dataclass(frozen=True)
class AgentConfig:
    keep_min_s: float = 1.0
    keep_factor: float = 20.0
    disk_after_s: float = 600.0
    gpu_release_pressure: float = 0.97
    keep_insure_pressure: float = 0.75
    disk_backlog_limit_s: float = 30.0
    write_back_cpu_pressure: float = 0.5
    prefetch_q: float = 0.25
    prefetch_margin_s: float = 0.05
    max_prefetches: int = 2
    uncovered_cpu_weight: float = 8.0
    resume_boost_s: float = 2.0
    session_fcfs: bool = True                  # a resumed turn ranks as of its session's opening
    resume_step_tokens: int | None = 1024      # None: never shorten steps
    resume_horizon_s: float = 0.1              # about one full prefill step
    resume_step_probability: float = 0.5
    # count a session whose turn just ended as paused from that moment (with its last pause's
    # forecast) until its pause or next turn arrives: the client is then between turns, and
    # the pause reaches the engine only after the step planned at the turn's end
    resume_step_after_turn_end: bool = True

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"AgentConfig.{name} must be {what}, got "
                                 f"{getattr(self, name)!r}")

        for name in ("keep_min_s", "keep_factor", "prefetch_margin_s", "resume_boost_s",
                     "disk_backlog_limit_s"):
            v = getattr(self, name)
            need(math.isfinite(v) and v >= 0, name, "a finite number >= 0")
        need(self.disk_after_s >= 0 and not math.isnan(self.disk_after_s), "disk_after_s",
             ">= 0 s (inf: never spill to disk on a pause)")
        for name in ("gpu_release_pressure", "keep_insure_pressure", "write_back_cpu_pressure"):
            need(0.0 <= getattr(self, name) <= 1.0, name, "a used fraction in [0, 1]")
        need(0.0 < self.prefetch_q < 1.0, "prefetch_q", "a quantile in (0, 1)")
        need(self.max_prefetches >= 0, "max_prefetches", "a count >= 0")
        need(math.isfinite(self.uncovered_cpu_weight) and self.uncovered_cpu_weight > 0,
             "uncovered_cpu_weight", "a finite weight > 0")
        if self.resume_step_tokens is not None and self.resume_step_tokens <= 0:
            raise ValueError("AgentConfig.resume_step_tokens must be a positive token count "
                             f"or None (never shorten steps), got {self.resume_step_tokens!r}")
        if not self.resume_horizon_s > 0:
            raise ValueError("AgentConfig.resume_horizon_s must be > 0 s, got "
                             f"{self.resume_horizon_s!r}")
        if not 0.0 < self.resume_step_probability <= 1.0:
            raise ValueError("AgentConfig.resume_step_probability must be in (0, 1], got "
                             f"{self.resume_step_probability!r}")


class AgentPolicy(CachePolicy):
    name = "agent"
    copies_cpu_at_turn_end = True      # every placement above writes (or passes through) CPU
    copies_cpu_while_computing = True  # and earlier: a preempted turn loads, not recomputes

    def __init__(self, cost: CostModel, estimator: PauseEstimator | None = None,
                 config: AgentConfig | None = None) -> None:
        super().__init__(cost, estimator)
        self.config = config or AgentConfig()
        self._heap: list[tuple[float, int, str]] = []
        self._scheduled: dict[str, float] = {}    # session -> its live prefetch time
        self._attempts: dict[str, int] = {}
        self._seq = 0
        self._opened: dict[str, float] = {}       # session -> when its first turn was enqueued

    # -- placement -----------------------------------------------------------------------------
    def keep_s(self, tokens: int) -> float:
        """Pauses shorter than this stay on the GPU without copies."""
        c = self.config
        return max(c.keep_min_s, c.keep_factor * self.cost.load_s(tokens, "cpu"))

    def on_pause(self, view: SessionKVView, forecast: PauseForecast, now: float,
                 tiers: TierUsage | None = None) -> PlacementPlan:
        c, sid, t = self.config, view.session_id, view.private_tokens
        self._cancel(sid)
        self._attempts[sid] = 0
        keep = self.keep_s(t)
        if t <= 0 or forecast.p90_s <= keep:
            used = tiers.pressure("gpu") if tiers is not None and tiers.cpu_capacity > 0 else 0.0
            if t > 0 and used >= c.keep_insure_pressure:
                # a busy GPU: the pin would yield to the next turn short of room, and the pool
                # reuses an evicted block at once, so write the copy through while it can be
                return PlacementPlan(sid, Placement.WRITE_CPU, ttl_s=forecast.p90_s,
                                     reason=f"short, GPU {used:.0%} used: stay, with a CPU copy")
            return PlacementPlan(sid, Placement.KEEP_GPU, ttl_s=forecast.p90_s,
                                 insure_cpu=t > 0 and tiers is not None and tiers.cpu_capacity > 0,
                                 reason=f"p90 {forecast.p90_s:.3g}s <= keep {keep:.3g}s")
        if forecast.p50_s <= keep:
            return PlacementPlan(sid, Placement.WRITE_CPU, ttl_s=keep,
                                 reason="likely short: stay, with a CPU copy for the tail")
        release = tiers is not None and tiers.pressure("gpu") >= c.gpu_release_pressure
        disk_ok = tiers is None or (tiers.free("disk") >= t
                                    and tiers.disk_backlog_s <= c.disk_backlog_limit_s)
        back = False
        if disk_ok and forecast.p50_s > c.disk_after_s:
            placement, src, why = Placement.SPILL_DISK, "disk", "long pause"
            release = True
        else:
            placement = Placement.OFFLOAD_CPU if release else Placement.WRITE_CPU
            cpu_used = tiers.pressure("cpu") if tiers is not None else 1.0   # no CPU tier: 1.0
            src, why = "cpu", "medium pause"
            back = disk_ok and cpu_used >= c.write_back_cpu_pressure
        at = now + max(0.0, forecast.quantile(c.prefetch_q) - self.cost.load_s(t, src)
                       - c.prefetch_margin_s)
        self._schedule(sid, at)
        return PlacementPlan(sid, placement, prefetch_at=at, release_gpu=release,
                             write_back_disk=back, reason=f"{why}: p50 {forecast.p50_s:.3g}s")

    def on_evict(self, view: SessionKVView, tier: str, now: float) -> Placement:
        if tier == "gpu":
            self._retry_prefetch(view, now)
            return Placement.SPILL_DISK
        if tier == "cpu":
            at = self._scheduled.get(view.session_id)
            if at is not None:         # it will load from disk now: start that much earlier
                lead = (self.cost.load_s(view.cpu_tokens, "disk")
                        - self.cost.load_s(view.cpu_tokens, "cpu"))
                self._schedule(view.session_id, max(now, at - lead))
            return Placement.SPILL_DISK
        return Placement.DROP

    # -- eviction ------------------------------------------------------------------------------
    def remaining_s(self, view: SessionKVView, now: float) -> float:
        """Predicted time until the session needs its KV again (median, given the wait)."""
        if view.paused_at is None:
            return 0.0
        if view.forecast is None:
            return now - view.paused_at
        return view.forecast.remaining_s(max(0.0, now - view.paused_at), 0.5)

    def reload_weight(self, view: SessionKVView, tier: str, now: float) -> float:
        """Relative cost, per token, of bringing back what an eviction from `tier` loses: 1 for
        blocks the CPU also holds, the disk/CPU load-time ratio for blocks only the disk holds,
        2 for blocks held nowhere below yet (copied down now, on the waiting turn's path)."""
        if tier == "gpu":
            if view.copies_done_at > now:
                return 2.0
            if view.cpu_tokens >= view.gpu_tokens:
                return 1.0
            if view.disk_tokens >= view.gpu_tokens:
                return self.cost.load_s(1 << 20, "disk") / self.cost.load_s(1 << 20, "cpu")
            return 2.0
        if view.covered_below(tier):
            return 1.0
        # nothing below: the eviction writes to disk now, on the path of whoever needs room
        return self.config.uncovered_cpu_weight

    def eviction_order(self, candidates: list[SessionKVView], now: float,
                       tier: str = "gpu") -> list[str]:
        """Evict first the blocks whose next use is predicted latest, per unit of what
        bringing them back would cost (a cost-aware Belady order)."""
        def key(v: SessionKVView) -> tuple[int, float, float, str]:
            far = self.remaining_s(v, now)
            held = v.cpu_tokens if tier == "cpu" else v.disk_tokens
            if tier != "gpu" and v.gpu_tokens >= held:
                # a duplicate of a GPU copy is insurance against that copy's eviction, worth
                # most for the sessions the GPU will evict first: drop the others' first
                return (0, far, v.last_used_at, v.session_id)
            return (1, -far / self.reload_weight(v, tier, now), v.last_used_at, v.session_id)
        return [v.session_id for v in sorted(candidates, key=key)]

    # -- prefetch ------------------------------------------------------------------------------
    def _schedule(self, sid: str, at: float) -> None:
        self._scheduled[sid] = at
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, sid))

    def _cancel(self, sid: str) -> None:
        self._scheduled.pop(sid, None)     # heap entries are skipped lazily

    def _retry_prefetch(self, view: SessionKVView, now: float) -> None:
        sid, f = view.session_id, view.forecast
        if view.paused_at is None or f is None or sid in self._scheduled:
            return
        n = self._attempts.get(sid, 0)
        if n >= self.config.max_prefetches:
            return
        elapsed = max(0.0, now - view.paused_at)
        back = view.paused_at + f.conditional_quantile(self.config.prefetch_q, elapsed)
        load = self.cost.load_s(view.gpu_tokens, "cpu")
        at = back - load - self.config.prefetch_margin_s
        if at > now and math.isfinite(at):
            self._schedule(sid, at)

    def due_prefetches(self, now: float) -> list[str]:
        due = []
        while self._heap and self._heap[0][0] <= now:
            at, _, sid = heapq.heappop(self._heap)
            if self._scheduled.get(sid) == at:
                del self._scheduled[sid]
                self._attempts[sid] = self._attempts.get(sid, 0) + 1
                due.append(sid)
        return due

    def on_resume(self, session_id: str, now: float) -> None:
        self._cancel(session_id)
        self._attempts.pop(session_id, None)

    def on_close(self, session_id: str) -> None:
        self.on_resume(session_id, 0.0)
        self._opened.pop(session_id, None)

    def admission_priority(self, session_id: str, is_resume: bool, enqueued_at: float,
                           now: float) -> float:
        opened = self._opened.setdefault(session_id, enqueued_at)
        if not is_resume:
            return enqueued_at
        boosted = enqueued_at - self.config.resume_boost_s
        return min(boosted, opened) if self.config.session_fcfs else boosted

    @property
    def step_cap_counts_turn_ends(self) -> bool:
        return self.config.resume_step_after_turn_end

    def step_token_cap(self, pauses: list[tuple[float, PauseForecast]]) -> int | None:
        c = self.config
        if c.resume_step_tokens is None:
            return None
        p = resume_probability(pauses, c.resume_horizon_s, stop_at=c.resume_step_probability)
        return c.resume_step_tokens if p >= c.resume_step_probability else None


def resume_probability(pauses: list[tuple[float, PauseForecast]], horizon_s: float,
                       stop_at: float = 1.0) -> float:
    """P(at least one of the pauses ends within `horizon_s`), each given (seconds it has
    lasted, its forecast) and taken as independent. Stops adding once it reaches `stop_at`."""
    stay = 1.0
    for elapsed, f in pauses:
        survive = 1.0 - f.cdf(elapsed)
        if survive <= 1e-9:        # far past its forecast: no basis for a near end
            continue
        stay *= 1.0 - min(1.0, (f.cdf(elapsed + horizon_s) - f.cdf(elapsed)) / survive)
        if 1.0 - stay >= stop_at:
            break
    return 1.0 - stay
