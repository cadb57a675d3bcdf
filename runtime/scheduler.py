"""Continuous batching under a token budget, with chunked prefill and preemption by recompute.

Every request tracks `num_computed_tokens` against `num_tokens` (prompt + output). One step gives
each scheduled request `num_new_tokens = min(num_tokens - num_computed_tokens, budget left)`: a
long prompt is split into chunks over several steps, a decoding request takes one token, and both
kinds share a step. A request samples a token only in the step that brings it level with its
token count. When blocks run out, the running request that comes last in priority order is
preempted: its blocks are released (full ones stay cached) and it recomputes later.

Priority order is the request's `priority` (the policy's admission key) or else its arrival. A
waiting request that outranks a running one still in prefill goes first: the running prefill
yields its chunk for the step and runs on the budget the admissions leave. With arrival order
(FCFS) nothing waiting outranks what runs, so only a policy's boost (a resumed session's turn
under `agent`) makes a turn jump a long prefill that is under way. A waiting request short of
blocks takes them from running requests ranked after it that have computed at most one chunk
(`_take_room`): their work is lost, so a turn further on keeps its room and the waiting one
waits for it.

A turn that arrives while a step runs waits for that step; `step_cap` (the KV controller's,
from its policy) lowers the budget of the steps planned while a paused session is likely back.
"""
from __future__ import annotations

import heapq
import itertools
import time
from typing import Callable

from kvstore.block_pool import BlockPool, chain_hashes
from runtime.prefix_loader import LoadState
from runtime.request import FinishReason, Request, RequestStatus
from runtime.scheduler_room import RoomTaking
from runtime.scheduler_types import ScheduledRequest, SchedulerConfig, SchedulerOutput
from runtime.wait_reasons import WaitReasons

__all__ = ["ScheduledRequest", "Scheduler", "SchedulerConfig", "SchedulerOutput"]


class Scheduler(RoomTaking):
    def __init__(self, config: SchedulerConfig, pool: BlockPool, model_fingerprint: bytes):
        self.config = config
        self.pool = pool
        self.fingerprint = model_fingerprint
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self._order = itertools.count()
        self._seq: dict[str, int] = {}
        self.loader = None   # a PrefixLoader when KV tiers below the GPU are on
        self.preempted_growth = 0    # running requests preempted for a higher one's growth
        self.preempted_room = 0      # ... to make room for a waiting one ranked before them
        self.preempted_tokens = 0    # context tokens preempted requests held (to redo)
        # called with each finished (True) or preempted (False) request just before its blocks
        # are released (the KV controller learns whose they are before the eviction order
        # ranks them)
        self.on_release: Callable[[Request, bool], None] | None = None
        # the most tokens the next step may carry (None: the configured budget); the KV
        # controller sets it when its policy shortens steps while a resume is likely
        self.step_cap: Callable[[], int | None] | None = None
        self.short_steps = 0         # steps planned under a cap below the budget
        self._budget = config.max_num_batched_tokens
        self.waits = WaitReasons()   # why requests not yet admitted wait (logged when long)
        self._now = 0.0
        self._noted: set[str] = set()

    # -- queue management -----------------------------------------------------------------
    def add(self, req: Request) -> None:
        self._seq[req.request_id] = next(self._order)
        req.status = RequestStatus.WAITING
        self.waiting.append(req)

    def _key(self, req: Request) -> tuple[float, int]:
        p = req.arrival if req.priority is None else req.priority
        return (p, self._seq[req.request_id])

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, req: Request, reason: FinishReason) -> None:
        """Take a request out of the queues and release its blocks (full ones stay cached)."""
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
            self.waits.forget(req.request_id)
            if self.loader is not None:
                self.loader.forget(req)
        if self.on_release is not None:
            self.on_release(req, True)
        self._release(req)
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason
        self._seq.pop(req.request_id, None)

    def _release(self, req: Request) -> None:
        self.pool.free_chain(req.block_ids)
        req.block_ids = []

    # -- the step ---------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._budget = self._step_budget()
        self._now = time.monotonic()
        self._noted.clear()
        self.running.sort(key=self._key)
        self.waiting.sort(key=self._key)
        # A running prefill that the head of the queue outranks (a resumed session's turn,
        # under a policy that boosts those) yields its chunk to the queue (_queue_pass).
        head = self._key(self.waiting[0]) if self.waiting else None
        deferred: list[Request] = []
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if n > 1 and head is not None and head < self._key(req):
                deferred.append(req)
                i += 1
                continue
            while not self._grow(req, n):
                if self._release_holds_after(req):
                    continue
                victim = self.running[-1]
                self._preempt(victim)
                self.preempted_growth += 1
                out.preempted.append(victim.request_id)
                if victim is req:
                    break
            if req.status is not RequestStatus.RUNNING:
                break
            out.scheduled.append(ScheduledRequest(req, n, req.num_computed_tokens))
            budget -= n
            i += 1
        self._queue_pass(deferred, admit=not out.preempted, out=out)
        for req in self.waiting:              # not reached this pass: the step was full
            if req.admitted_at is None and req.request_id not in self._noted:
                self._wait(req, "behind")
        if self._budget < self.config.max_num_batched_tokens and out.num_tokens == self._budget:
            self.short_steps += 1          # the cap, not the work at hand, bounded the step
        return out

    def _release_holds_after(self, req: Request) -> bool:
        """`req` cannot grow: the GPU prefixes that requests ranked after it hold while they
        wait to load (or hold loaded) are dropped before anyone is preempted for it. Held, they
        made a turn ranked first preempt itself with nothing else running (a preempted turn
        waited to load its context back while the turn that took its room grew)."""
        if self.loader is None:
            return False
        key = self._key(req)
        return self.loader.release_holds([w.request_id for w in self.waiting
                                          if self._key(w) > key]) > 0

    def _step_budget(self) -> int:
        full = self.config.max_num_batched_tokens
        cap = self.step_cap() if self.step_cap is not None and self.has_work() else None
        return full if cap is None else max(1, min(full, cap))

    def _queue_pass(self, deferred: list[Request], admit: bool, out: SchedulerOutput) -> None:
        """The queue and the yielded prefills, merged in priority order, on the step's budget
        left. A yielded prefill that cannot grow waits for the next step with the blocks it
        holds (nothing that outranks it is preempted for it), unless the step would be empty:
        then the last of them is preempted, as the running loop would, so that its blocks can
        make room (nothing else runs to free any). A step in which a turn that jumped a
        prefill samples its first token carries nothing ranked after that prefill, so the step
        (that turn's time to first token) stays short."""
        stuck = self._merged_pass(deferred, admit, out)
        if stuck and not out.scheduled:
            victim = stuck[-1]
            self._preempt(victim)
            self.preempted_growth += 1
            out.preempted.append(victim.request_id)

    def _merged_pass(self, deferred: list[Request], admit: bool,
                     out: SchedulerOutput) -> list[Request]:
        """_queue_pass's loop; returns the yielded prefills that could not grow."""
        cap = self._budget
        jumped = self._key(deferred[0]) if deferred else None
        stuck: list[Request] = []
        short = False
        for req in heapq.merge(deferred, list(self.waiting) if admit else [], key=self._key):
            budget = cap - out.num_tokens
            if budget <= 0:
                break
            if short and self._key(req) >= jumped:
                break
            if req.status is RequestStatus.RUNNING:          # a yielded prefill
                n = min(req.num_tokens - req.num_computed_tokens, budget)
                if self._grow(req, n):
                    out.scheduled.append(ScheduledRequest(req, n, req.num_computed_tokens))
                else:
                    stuck.append(req)
                continue
            if req in deferred or not admit:
                continue                  # preempted above, as the last in priority
            if len(self.running) >= self.config.max_num_seqs:
                admit = False
                self._wait(req, "slot")
                continue
            state = self._load_state(req, deferred, out)
            if state is LoadState.LOADING:
                self._wait(req, "loading")
                continue                  # its prefix is still being loaded: let others go first
            ok = state is LoadState.READY and self._admit(req, budget, out)
            if not ok and (self._take_room(req, self._room_wanted(req, state, budget), out,
                                           self._loss_cap(req, state))
                           or self._room_too_late(req, state, budget, out)):
                # room was made, or the wait for it ended (the front that fits loads): again
                state = self._load_state(req, deferred, out)
                if state is LoadState.LOADING:
                    self._wait(req, "loading")
                    continue
                ok = state is LoadState.READY and self._admit(req, cap - out.num_tokens, out)
            if not ok:
                self._wait(req, "room")
                if self.loader is not None:
                    self.loader.not_admitted(req)     # its prefix may move meanwhile
                    if not self.running:
                        self.loader.release_others(req)   # nothing else will free blocks
                admit = False             # the queue waits behind it; yielded prefills go on
                continue
            if jumped is not None and self._key(req) < jumped and out.scheduled[-1].samples:
                short = True
        return stuck

    def _wait(self, req: Request, reason: str) -> None:
        """This pass leaves `req` waiting for `reason` (tracked until its first admission)."""
        if req.admitted_at is None and req.request_id not in self._noted:
            self._noted.add(req.request_id)
            self.waits.note(req.request_id, req.arrival, reason, self._now)

    def _load_state(self, req: Request, deferred: list[Request], out: SchedulerOutput
                    ) -> LoadState:
        """Whether `req`'s prefix is ready on the GPU (the loader may start or finish a load)."""
        if self.loader is None:
            return LoadState.READY
        # A long step makes a short load worth waiting for in place.
        long_step = bool(deferred) or any(s.num_new_tokens > 1 for s in out.scheduled)
        return self.loader.ready(req, long_step)

    def _admit(self, req: Request, budget: int, out: SchedulerOutput) -> bool:
        bs = self.config.block_size
        if req.num_computed_tokens == 0 and not req.block_ids:
            # Longest cached prefix; at least the last token is always recomputed (to sample).
            hashes = req.prefix_hashes(bs, self.fingerprint)
            hit = self.pool.match_prefix(hashes)
            req.block_ids = hit
            req.block_hashes = hashes[:len(hit)]
            req.num_computed_tokens = len(hit) * bs
            if req.num_preemptions == 0:
                cached = req.num_computed_tokens
                loaded = {t: min(n, cached) for t, n in req.loaded_from.items()}
                req.num_cached_tokens = cached
                req.kv_source = {"gpu": cached - sum(loaded.values()), **loaded,
                                 "recomputed": req.num_prompt_tokens - cached}
        n = min(req.num_tokens - req.num_computed_tokens, budget)
        if not self._grow(req, n):
            self._release(req)
            req.num_computed_tokens = 0
            req.block_hashes = []
            return False
        if self.loader is not None:
            self.loader.after_admit(req)   # only now: a failed admission keeps its loaded prefix
        self.waiting.remove(req)
        req.status = RequestStatus.RUNNING
        if req.admitted_at is None:
            req.admitted_at = time.monotonic()
            req.wait_reasons = self.waits.admitted(req.request_id, req.arrival, req.admitted_at)
        self.running.append(req)
        out.scheduled.append(ScheduledRequest(req, n, req.num_computed_tokens))
        return True

    def _grow(self, req: Request, num_new: int) -> bool:
        """Make sure `req` has blocks for `num_computed + num_new` tokens."""
        need = -(-(req.num_computed_tokens + num_new) // self.config.block_size)
        extra = need - len(req.block_ids)
        if extra <= 0:
            return True
        if not self.pool.ensure_free(extra):
            return False
        req.block_ids.extend(self.pool.allocate(extra))
        return True

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        if self.on_release is not None:
            self.on_release(req, False)
        self._release(req)
        self.preempted_tokens += req.num_computed_tokens
        req.num_computed_tokens = 0
        req.block_hashes = []
        req.num_preemptions += 1
        req.status = RequestStatus.WAITING
        self.waiting.insert(0, req)

    # -- after the forward ------------------------------------------------------------------
    def commit_computed(self, sched: ScheduledRequest) -> None:
        """Advance a request by the tokens just computed and cache blocks that became full."""
        req = sched.request
        req.num_computed_tokens += sched.num_new_tokens
        prompt_end = min(req.num_computed_tokens, req.num_prompt_tokens)
        req.num_prompt_tokens_computed += max(0, prompt_end - sched.num_computed_before)
        bs = self.config.block_size
        full = req.num_computed_tokens // bs
        if full > len(req.block_hashes):
            start = len(req.block_hashes)
            parent = req.block_hashes[-1] if req.block_hashes else None
            new = chain_hashes(req.all_token_ids[:full * bs], bs, self.fingerprint, start, parent)
            for j, h in enumerate(new, start):
                self.pool.cache_full_block(req.block_ids[j], h)
            req.block_hashes.extend(new)
