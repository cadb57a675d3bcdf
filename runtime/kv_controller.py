"""Carries out a cache policy's decisions on the engine's KV tiers, session by session.

The session manager reports turn ends, pauses, resumes and closes; this controller turns each
into the policy's hook call (`sessions/policies`) and executes the returned plan with the tier
operations of `kvstore/tiers.py`: pin on the GPU for a TTL, write through to CPU, offload, spill
to disk, drop, and prefetch back before the predicted resume. Every tier operation runs on the
engine thread (`EngineThread.call`), between steps; `tick` runs there after every step.

Blocks are identified by their chained hashes, so a prefix shared by many sessions (a system
prompt) is one set of blocks, counted once and never dropped while another session uses it.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any, Callable

from kvstore.block_pool import BlockHash, chain_hashes
from kvstore.residency import prefix_residency
from sessions.costs import CostModel
from sessions.estimator import PauseEstimator, PauseForecast
from sessions.policy import CachePolicy, PlacementPlan, SessionKVView, TierUsage
from runtime.engine import Engine
from runtime.kv_plans import PlanExecution, SessionKV
from runtime.next_use_order import NextUseOrder
from runtime.step_cap import StepCap

log = logging.getLogger(__name__)

# how long one computed prediction of a session's next use serves the eviction order's ranking
NEXT_USE_MEMO_S = 0.05
# a running turn's newly computed full blocks go to the CPU this many or more at a time (a
# prefill chunk of 2,048 tokens is 128 blocks at 16-token pages, 32 at 64, so every chunk
# goes); the turn's end copies what is left
WRITE_THROUGH_MIN_BLOCKS = 8


class KVController(PlanExecution):
    def __init__(self, engine: Engine, policy: CachePolicy, clock: Callable[[], float] = time.time):
        self.engine, self.policy, self.clock = engine, policy, clock
        self.sessions: dict[str, SessionKV] = {}
        self._owners: dict[BlockHash, set[str]] = {}     # hash -> live sessions holding it
        self._depth: dict[BlockHash, int] = {}           # hash -> its index in a token log
        self._pin_count: dict[BlockHash, int] = {}
        # private blocks of closed sessions whose copies to CPU/disk were still in flight at
        # close (the copy holds the GPU blocks too): evicted again once they land (tick), so no
        # tier keeps a closed session's KV
        self._closed_blocks: list[BlockHash] = []
        self.decisions: dict[str, int] = {}
        self.pins_reclaimed = 0                          # sessions whose pins yielded
        engine.pool.reclaim = self._reclaim
        self._requests: dict[str, str] = {}              # request id -> its session
        self._written: dict[str, int] = {}               # request id -> blocks sent to the CPU
        self._next_use: dict[str, float] = {}            # session -> predicted next use (memo)
        self._next_use_at = -math.inf
        engine.scheduler.on_release = self._request_released
        if policy.name == "agent":
            engine.pool.order = NextUseOrder(self._block_next_use, self._block_depth)
        if type(policy).step_token_cap is not CachePolicy.step_token_cap:
            engine.scheduler.step_cap = StepCap(policy, self.sessions, clock)
        if not policy.keeps_shared_prefix:      # stateless: every turn recomputes everything
            engine.pool.enable_prefix_caching = False
            engine.pool.reset_prefix_cache()

    # -- views -------------------------------------------------------------------------------
    def _block_next_use(self, block_id: int) -> float:
        """The earliest predicted resume among the block's sessions (inf: nobody's).

        Called for every block freed and every block re-ranked (a session's whole log at each
        pause and resume; a shared prefix has every session as owner), so each session's
        prediction is computed once per `NEXT_USE_MEMO_S` window, or when its state changes,
        not once per block and owner. Equal predictions go deepest in the log first
        (`_block_depth`)."""
        h = self.engine.pool.block_hash(block_id)
        owners = self._owners.get(h) if h is not None else None
        if not owners:
            return math.inf
        now = self.clock()
        memo = self._next_use
        if not now - NEXT_USE_MEMO_S <= self._next_use_at <= now:
            memo.clear()
            self._next_use_at = now
        best = math.inf
        for sid in owners:
            t = memo.get(sid)
            if t is None:
                s = self.sessions.get(sid)
                if s is None:
                    continue
                t = memo[sid] = now + self._remaining(s, now)
            best = min(best, t)
        return best

    def _block_depth(self, block_id: int) -> int:
        h = self.engine.pool.block_hash(block_id)
        return self._depth.get(h, 0) if h is not None else 0

    def _remaining(self, s: SessionKV, now: float) -> float:
        if s.paused_at is None or s.forecast is None:
            return 0.0
        return s.forecast.remaining_s(max(0.0, now - s.paused_at), 0.5)

    def view(self, s: SessionKV) -> SessionKVView:
        bs = self.engine.config.block_size
        shared = sum(1 for h in s.hashes if len(self._owners.get(h, ())) > 1)
        counts = prefix_residency(s.hashes[shared:], bs, self.engine.pool, self.engine.tiers)
        return SessionKVView(s.session_id, s.tokens, counts["gpu"], counts["cpu"], counts["disk"],
                             shared * bs, s.paused_at, s.forecast, s.human, s.tool,
                             s.last_used_at, s.pinned_until)

    def usage(self) -> TierUsage:
        bs, pool, tiers = self.engine.config.block_size, self.engine.pool, self.engine.tiers
        u = tiers.usage() if tiers is not None else None
        # the disk's write queue in seconds, at the cost model's disk write speed
        backlog = (self.policy.cost.disk_write_s(tiers.in_flight_blocks("disk") * bs)
                   if u and tiers.disk is not None else 0.0)
        return TierUsage((pool.num_blocks - pool.num_free_blocks) * bs, pool.num_blocks * bs,
                         u["cpu"].used_blocks * bs if u else 0,
                         u["cpu"].capacity_blocks * bs if u else 0,
                         u["disk"].used_blocks * bs if u else 0,
                         u["disk"].capacity_blocks * bs if u else 0,
                         disk_backlog_s=backlog)

    # -- session events (engine thread) --------------------------------------------------------
    def track(self, request_id: str, session_id: str) -> None:
        """`request_id` is a turn of `session_id` (posted before the request is submitted)."""
        self._requests[request_id] = session_id
        s = self.sessions.get(session_id)
        if s is not None:
            s.ended_at = None

    def _request_released(self, req, finished: bool) -> None:
        """A session's turn finished (or was preempted) in the engine: its blocks become the
        session's before they are released. The turn's end reaches the controller later
        (after the session's commit), and until then the eviction order took the turn's new
        blocks for nobody's and evicted them first: the next turn, a few ms later, recomputed
        them (and a preempted turn found nothing of its own left to reuse)."""
        self._written.pop(req.request_id, None)
        sid = (self._requests.pop(req.request_id, None) if finished
               else self._requests.get(req.request_id))
        if sid is None or not req.block_hashes:
            return
        s = self.sessions.setdefault(sid, SessionKV(sid))
        if len(req.block_hashes) > len(s.hashes):
            self._set_hashes(s, list(req.block_hashes))
        s.last_used_at, s.paused_at = self.clock(), None
        if finished:
            s.ended_at = s.last_used_at
        self._next_use.pop(sid, None)
        tiers = self.engine.tiers
        if finished and self.policy.copies_cpu_at_turn_end and tiers is not None \
                and tiers.host is not None:
            # The CPU copy the pause will ask for, started while the turn still holds its
            # blocks: the copy's references keep them until it lands. Started at the pause,
            # a step or more later, it came too late where other turns were short of room
            # (the pool had reused the blocks: the session's next turn recomputed them).
            tiers.offload(s.hashes, "cpu")

    def turn_end(self, session_id: str, token_log: list[int]) -> None:
        s = self.sessions.setdefault(session_id, SessionKV(session_id))
        self._set_hashes(s, chain_hashes(token_log, self.engine.config.block_size,
                                         self.engine.fingerprint))
        s.tokens, s.last_used_at, s.paused_at = len(token_log), self.clock(), None
        self._next_use.pop(session_id, None)
        self._unpin(s)
        self.policy.on_turn_end(self.view(s), s.last_used_at)
        if self.policy.name == "recompute":
            self._drop(s)

    def pause(self, session_id: str, tool: str | None, expected_s: float | None, human: bool,
              forecast: PauseForecast | None = None) -> PlacementPlan | None:
        s = self.sessions.get(session_id)
        if s is None:
            return None
        now = self.clock()
        s.paused_at, s.tool, s.human, s.prefetched_at = now, tool, human, None
        s.forecast = forecast or self.policy.forecast(tool or "(none)", human, expected_s)
        self._next_use.pop(session_id, None)
        plan = self.policy.on_pause(self.view(s), s.forecast, now, self.usage())
        s.plan = plan
        self.decisions[plan.placement.value] = self.decisions.get(plan.placement.value, 0) + 1
        log.info("session %s paused on %s (p50 %.3gs, %s): %s %s", session_id, tool,
                 s.forecast.p50_s, s.forecast.source, plan.placement.value, plan.reason)
        self._execute(s, plan)
        self._refresh(s)
        return plan

    def resume(self, session_id: str) -> None:
        s = self.sessions.get(session_id)
        if s is None:
            return
        self.policy.on_resume(session_id, self.clock())
        s.paused_at = s.ended_at = None
        # its blocks are needed now, sooner than ranked: the eviction order finds that out for
        # any it picks (NextUseOrder.pop_victim), so the turn's path re-ranks none of them
        self._next_use.pop(session_id, None)

    def close(self, session_id: str) -> None:
        s = self.sessions.pop(session_id, None)
        if s is None:
            return
        self.policy.on_close(session_id)
        self._next_use.pop(session_id, None)
        private = [h for h in s.hashes if self._owners.get(h) == {session_id}]
        self._set_hashes(s, [])          # first: blocks unpinned below rank as nobody's
        self._unpin(s)
        self._evict_everywhere(private)
        if self.engine.tiers is not None:
            self._closed_blocks += private

    def tick(self) -> None:
        """Expire TTL pins and start due prefetches (called between engine steps)."""
        now = self.clock()
        if self._closed_blocks:
            tiers = self.engine.tiers
            tiers.poll()
            gone = [h for h in self._closed_blocks if not self._owners.get(h)]
            self._evict_everywhere(gone)     # the GPU too: a copy's hold kept them at close
            if tiers.transfer is None or not tiers.transfer.in_flight_bytes:
                self._closed_blocks = []
        for s in self.sessions.values():
            if s.pinned and s.pinned_until and now >= s.pinned_until:
                self._unpin(s)           # the freed blocks are ranked as they join the order
        for sid in self.policy.due_prefetches(now):
            s = self.sessions.get(sid)
            if s is not None and s.paused_at is not None:
                self._prefetch(s)
        if self.policy.copies_cpu_while_computing:
            self._write_through()

    def _write_through(self) -> None:
        """The full blocks each running turn computed since the last copy go to the CPU, at
        least `WRITE_THROUGH_MIN_BLOCKS` at once (after the step that computed them, on the
        copy stream), into free CPU slots only: a running turn's copy never displaces a paused
        session's, which its resume needs (the turn's end copies it in full). Preempted, the
        turn then loses only what no copy holds: its next admission loads the rest
        (`PrefixLoader`), and room takers count it cheap
        (`PrefixLoader.kept_tokens`). Under `agent` first turns rank last, so they are the ones
        preempted, and until its end a first turn has no copy anywhere: H100 replays preempted
        turns holding 66K-96K tokens a run, each recomputed in full.

        The new blocks go all at once or wait for free slots: copied in part, the blocks left
        out would never follow (they count as sent), and every later copy would sit behind
        that gap, where no load can reach it (a load takes a prefix)."""
        tiers = self.engine.tiers
        if tiers is None or tiers.host is None:
            return
        for req in self.engine.scheduler.running:
            if req.request_id not in self._requests:
                continue
            done = self._written.get(req.request_id, 0)
            new = req.block_hashes[done:]
            if len(new) >= WRITE_THROUGH_MIN_BLOCKS and tiers.host.num_free >= len(new):
                tiers.offload(new, "cpu", evict=False)
                self._written[req.request_id] = len(req.block_hashes)

    def _reclaim(self, short: int) -> None:
        """A running or waiting turn needs `short` more GPU blocks than are free: sessions'
        pins (a TTL keep, a prefetch held for the turn) are a preference, never a reason to
        preempt a running turn, recompute a loaded prefix or keep a turn waiting, so they
        yield, in the policy's eviction order (the session it would evict first unpins first)."""
        pool = self.engine.pool
        pinned = [s for s in self.sessions.values() if s.pinned]
        if not pinned:
            return
        target = pool.num_free_blocks + short
        now = self.clock()
        # Paused sessions first; then those whose turn came (a prefetch pinned their KV for it):
        # a turn waiting for room must not wait on another waiting turn's pins, nor that one on
        # its. A running turn holds its own references, so its unpinning frees nothing.
        order = [sid for group in ([s for s in pinned if s.paused_at is not None],
                                   [s for s in pinned if s.paused_at is None]) if group
                 for sid in self.policy.eviction_order([self.view(s) for s in group], now)]
        for sid in order:
            s = self.sessions[sid]
            if s.paused_at is not None and s.prefetched_at is not None:
                log.info("session %s: its prefetched KV yields to a turn short of %d blocks, "
                         "%.3gs after the prefetch, %.3gs into the pause", sid, short,
                         now - s.prefetched_at, now - s.paused_at)
            self._unpin(s)
            self.pins_reclaimed += 1
            if pool.num_free_blocks >= target:
                return


def default_cost_model(engine: Engine) -> CostModel:
    """The policy's cost model from the engine's measured rates and its tier sizes."""
    spec, rates, cfg = engine.kv_spec, engine.rates, engine.config
    bpt = spec.bytes_per_token
    return CostModel.from_measurements(
        kv_bytes_per_token=bpt, prefill_tokens_per_s=rates.prefill_tok_s,
        h2d_GBps=rates.h2d_GBps, d2h_GBps=rates.h2d_GBps, disk_read_GBps=rates.disk_read_GBps,
        disk_write_GBps=rates.disk_read_GBps * 0.7,
        gpu_kv_bytes=engine.pool.num_blocks * spec.block_bytes,
        cpu_kv_bytes=int(cfg.cpu_cache_gb * 2**30), disk_kv_bytes=int(cfg.disk_cache_gb * 2**30))


def make_controller(engine: Engine, policy_name: str, estimator: PauseEstimator | None = None,
                    clock: Callable[[], float] = time.time,
                    options: Mapping[str, Any] | None = None) -> KVController:
    from sessions.policy import make_policy
    return KVController(engine, make_policy(policy_name, default_cost_model(engine), estimator,
                                            options), clock)
