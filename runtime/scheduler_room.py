"""How a waiting turn gets GPU room that others hold: the scheduler's room taking.

A waiting request short of blocks first makes paused sessions' pins yield (the pool's reclaim
hook, through `ensure_free`), then takes the blocks of running requests ranked after it, those
that lose least first. Their blocks go to it at once, so what they computed is lost, except
what a lower tier keeps a copy of (their next admission loads that back, `_lost_tokens`): the
work a victim may lose is bounded (`_loss_cap`). A turn that can take no room and waits to load its
prefix whole stops waiting at once when the running requests cannot free the room before its
wait would run out anyway (`_room_eta_s`, `_room_too_late`): it takes the room from the
requests ranked after it regardless of their work (the recompute it would go on to makes the
same room by preemption, chunk by chunk), or else loads the front that fits.
"""
from __future__ import annotations

import logging
import math

from runtime.prefix_loader import LoadState
from runtime.request import Request
from runtime.scheduler_types import SchedulerOutput

log = logging.getLogger("runtime.scheduler")


class RoomTaking:
    """Mixed into `runtime.scheduler.Scheduler` (uses its config, pool, loader, running list,
    priority key and preemption)."""

    def _room_wanted(self, req: Request, state: LoadState, budget: int) -> int:
        """GPU blocks `req` needs to go on: its prefix load's, and its first chunk's."""
        chunk = -(-min(req.num_tokens, budget) // self.config.block_size)
        if state is LoadState.NO_ROOM and self.loader is not None:
            return self.loader.room_wanted(req) + chunk
        return chunk

    def _loss_cap(self, req: Request, state: LoadState) -> int:
        """The most computed work a victim may lose to make room for `req`: one chunk
        (`room_loss_cap`), or, for a turn waiting for room to load its prefix, as much as that
        load saves recomputing. Waiting instead, the turn recomputes that prefix once its wait
        runs out, and the recompute's growth preempts whoever runs last anyway: an H100 replay
        saw resumed turns wait 50-105 ms for room, then recompute 1,500-4,500 tokens (their
        TTFT 0.25-0.39 s, the p99)."""
        cap = self.config.room_loss_cap
        if state is LoadState.NO_ROOM and self.loader is not None:
            cap = max(cap, self.loader.room_wanted(req) * self.config.block_size)
        return cap

    def _lost_tokens(self, req: Request) -> int:
        """What preempting `req` throws away: its computed tokens less those it keeps (blocks
        others hold, or that the CPU or disk tier has a copy of: `PrefixLoader.kept_tokens`).
        Under `agent` a resumed turn's context was copied to the CPU as its last turn ended, so
        it loses its new tokens only; a first turn loses all it computed."""
        kept = self.loader.kept_tokens(req) if self.loader is not None else 0
        return req.num_computed_tokens - kept

    def _own_blocks(self, req: Request) -> int:
        """Blocks only `req` holds: what its preemption or its end frees."""
        return sum(1 for b in req.block_ids if self.pool.ref_count(b) == 1)

    def _room_eta_s(self, short: int) -> float:
        """The soonest `short` more blocks can free up as running requests finish: each one's
        time to finish (its prompt left at the measured prefill rate, then its output left, up
        to max_tokens, at one decode-only step a token), its own blocks (held by no one else)
        freed then. Steps carrying others' work are longer; a turn that stops early (an end of
        turn, a stop string) finishes sooner, and then a wait cut short could have been met:
        the cost is recomputing what the load would have brought back, never a later first
        token than the wait running out would give (it recomputes the same rest after it).
        inf when even all of them would not free that much."""
        rates = self.loader.rates
        per_tok = 1.0 / rates.prefill_tok_s if rates.prefill_tok_s > 0 else 0.0
        ends = sorted(
            (max(0, r.num_prompt_tokens - r.num_computed_tokens) * per_tok
             + max(0, r.params.max_tokens - len(r.output_token_ids)) * rates.decode_step_s, i)
            for i, r in enumerate(self.running))
        freed = 0
        for eta, i in ends:
            freed += self._own_blocks(self.running[i])
            if freed >= short:
                return eta
        return math.inf

    def _room_too_late(self, req: Request, state: LoadState, budget: int,
                       out: SchedulerOutput) -> bool:
        """`req` waits for room to load its prefix whole and could take none within the loss
        cap: when the running requests cannot free it before the wait would run out, waiting
        only delays the recompute the wait ends in (an H100 replay had a resumed turn wait
        234 ms behind three 13K-token first turns, then load 72 of 367 blocks and recompute
        6,288 tokens: its TTFT, 594 ms, was the p99). That recompute needs the same blocks,
        chunk by chunk, and nothing frees them in time, so its growth preempts whoever runs
        last: the room is taken now from the requests ranked after it, without the cap and
        those that lose least first, and the whole prefix loads. When those cannot cover it, the
        loader is told to load the front that fits now. True when either happened."""
        if (state is not LoadState.NO_ROOM or self.loader is None
                or not self.loader.room_check_due(req)):
            return False
        left = self.loader.wait_left_s(req)
        if not math.isfinite(left):
            return False
        wanted = self._room_wanted(req, state, budget)
        short = wanted - self.pool.num_free_blocks
        if short <= 0 or self._room_eta_s(short) <= left:
            return False
        if self._take_room(req, wanted, out, cap=math.inf):
            log.info("request %s: no room for its prefix load within its wait (%.3f s left): "
                     "took it from turns ranked after it", req.request_id, left)
            return True
        self.loader.end_wait(req)
        log.info("request %s: no room for its prefix load within its wait (%.3f s left): "
                 "loading what fits now", req.request_id, left)
        return True

    def _take_room(self, req: Request, need: int, out: SchedulerOutput,
                   cap: float | None = None) -> bool:
        """`req` cannot get the `need` blocks it waits for: paused sessions' pins yield first
        (`ensure_free`), then running requests ranked after it are preempted, those that lose
        the least work first (`_lost_tokens`), until what they alone hold covers the rest. Their
        blocks go to `req` at once, so what they computed and no lower tier keeps is recomputed
        later: a request that would lose more than `cap` tokens (default `room_loss_cap`: a
        prefill past its first chunk, a decoding turn) is no victim, and `req` waits for room
        instead. Nothing is preempted when even
        all the victims would not cover it. True when there is room now.

        Under arrival order this seldom acts: a request that cannot be admitted stops the
        queue, so nothing ranked after it is admitted meanwhile. Under `agent` a resumed turn
        takes the room of first turns and of turns that ranked after it, instead of waiting
        for them to finish."""
        if self.pool.ensure_free(need):
            return True
        key = self._key(req)
        cap = self.config.room_loss_cap if cap is None else cap
        lost = {r.request_id: self._lost_tokens(r) for r in self.running if self._key(r) > key}
        victims = sorted((r for r in self.running
                          if r.request_id in lost and lost[r.request_id] <= cap),
                         key=lambda r: (lost[r.request_id], [-x for x in self._key(r)]))
        own = [self._own_blocks(v) for v in victims]
        short = need - self.pool.num_free_blocks
        if sum(own) < short:
            return False
        for v, n in zip(victims, own):
            if short <= 0:
                break
            out.scheduled = [x for x in out.scheduled if x.request is not v]
            self._preempt(v)
            self.preempted_room += 1
            out.preempted.append(v.request_id)
            log.debug("request %s takes the room of %s (%d blocks of its own)", req.request_id,
                      v.request_id, n)
            short -= n
        return True
