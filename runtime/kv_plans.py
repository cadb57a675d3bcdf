"""The KV controller's hands: a session's KV record, and the tier operations that carry out a
placement plan (pin for a TTL, write through, offload, spill, drop, prefetch back) with the
block bookkeeping they need (owners of each chained hash, pins)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from kvstore.block_pool import BlockHash
from runtime.next_use_order import NextUseOrder
from sessions.estimator import PauseForecast
from sessions.policy import Placement, PlacementPlan

log = logging.getLogger(__name__)


@dataclass
class SessionKV:
    session_id: str
    hashes: list[BlockHash] = field(default_factory=list)
    tokens: int = 0
    paused_at: float | None = None
    forecast: PauseForecast | None = None
    human: bool = False
    tool: str | None = None
    last_used_at: float = 0.0
    pinned: list[BlockHash] = field(default_factory=list)   # hashes this session pins on GPU
    pinned_until: float = 0.0
    plan: PlacementPlan | None = None
    prefetched_at: float | None = None     # when this pause's last prefetch started
    # when the engine released its last turn, finished, if no turn of it has started since
    # (the client is between turns: its pause, if any, reaches the controller later)
    ended_at: float | None = None


class PlanExecution:
    """Mixed into `runtime.kv_controller.KVController` (uses its engine, clock, sessions,
    owner, depth and pin maps, and next-use memo)."""

    # -- plan execution ----------------------------------------------------------------------
    def _execute(self, s: SessionKV, plan: PlacementPlan) -> None:
        tiers = self.engine.tiers
        private = s.hashes
        if plan.placement is Placement.DROP:
            self._drop(s)
            return
        if plan.placement is Placement.KEEP_GPU:
            if plan.ttl_s > 0:       # pinned for the TTL; 0: plain prefix cache, evictable
                self._pin(s, private)
                s.pinned_until = self.clock() + plan.ttl_s
            if plan.insure_cpu and tiers is not None and tiers.host is not None:
                # the pool reuses an evicted block at once and cannot copy it then, so a copy
                # that makes the eviction free is written through now
                tiers.offload(private, "cpu")
            return
        if tiers is None:
            return        # no tier below the GPU: the blocks stay cached on the GPU
        mine = [h for h in private if self._owners.get(h) == {s.session_id}]
        release = (lambda _: tiers.evict(mine, "gpu")) if plan.releases_gpu else None
        if plan.writes_disk and tiers.disk is not None:
            if tiers.host is not None:
                # Across PCIe once: to CPU, then from the CPU copy to disk.
                def to_disk(_):
                    h = tiers.offload(private, "disk")
                    if release is not None:
                        h.add_done_callback(release)
                tiers.offload(private, "cpu").add_done_callback(to_disk)
                return
            handle = tiers.offload(private, "disk")
        elif plan.writes_cpu and tiers.host is not None:
            handle = tiers.offload(private, "cpu")
        else:
            return
        if release is not None:
            handle.add_done_callback(release)

    def _prefetch(self, s: SessionKV) -> None:
        tiers = self.engine.tiers
        if tiers is None:
            return
        missing = [h for h in s.hashes if self.engine.pool.lookup_hash(h) is None]
        if missing:
            sid = s.session_id
            tiers.prefetch(missing, on_landed=lambda hs: self._prefetch_landed(sid, hs))
        s.prefetched_at = now = self.clock()
        log.info("session %s prefetch after %.3gs paused: %d of %d blocks to load",
                 s.session_id, now - (s.paused_at or now), len(missing), len(s.hashes))
        self._pin(s, s.hashes)   # hold them until the turn (pins drop at its end)

    def _prefetch_landed(self, session_id: str, hashes: list[BlockHash]) -> None:
        """A prefetch's blocks are on the GPU: pin them for the turn, as the blocks already
        there were pinned when it started. Unpinned, they were the first the pool evicted (the
        session is paused, its next use the furthest), often before the turn came, and the
        turn loaded them again on its own path."""
        s = self.sessions.get(session_id)
        if s is not None and s.paused_at is not None and s.prefetched_at is not None:
            self._pin(s, hashes)

    def _drop(self, s: SessionKV) -> None:
        self._unpin(s)
        self._evict_everywhere([h for h in s.hashes if self._owners.get(h) == {s.session_id}])

    def _evict_everywhere(self, hashes: list[BlockHash]) -> None:
        pool = self.engine.pool
        for h in hashes:
            b = pool.lookup_hash(h)
            if b is not None:
                pool.evict_cached(b)
        if self.engine.tiers is not None:
            self.engine.tiers.evict(hashes, "cpu")
            self.engine.tiers.evict(hashes, "disk")

    # -- bookkeeping ---------------------------------------------------------------------------
    def _set_hashes(self, s: SessionKV, hashes: list[BlockHash]) -> None:
        # Chained hashes: equal at an index means equal at every index before it, so the old
        # and new logs' common blocks are found by bisection and only the blocks after them
        # change hands (a turn's end adds the turn's blocks without walking the log's head).
        lo, hi = 0, min(len(s.hashes), len(hashes))      # lo blocks known equal; hi at most
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if s.hashes[mid - 1] == hashes[mid - 1]:
                lo = mid
            else:
                hi = mid - 1
        same = lo
        for h in s.hashes[same:]:
            owners = self._owners.get(h)
            if owners is not None:
                owners.discard(s.session_id)
                if not owners:
                    del self._owners[h]
                    del self._depth[h]
        s.hashes = hashes
        for i in range(same, len(hashes)):   # a chained hash is at one index in every log
            self._owners.setdefault(hashes[i], set()).add(s.session_id)
            self._depth[hashes[i]] = i

    def _pin(self, s: SessionKV, hashes: list[BlockHash]) -> None:
        pool = self.engine.pool
        for h in hashes:
            if h in s.pinned:
                continue
            b = pool.lookup_hash(h)
            if b is None:
                continue
            pool.incref([b])
            self._pin_count[h] = self._pin_count.get(h, 0) + 1
            s.pinned.append(h)

    def _unpin(self, s: SessionKV) -> None:
        pool = self.engine.pool
        held = []
        for h in s.pinned:
            b = pool.lookup_hash(h)
            self._pin_count[h] -= 1
            if not self._pin_count[h]:
                del self._pin_count[h]
            if b is not None:
                held.append(b)
        pool.free_chain(held)
        s.pinned, s.pinned_until = [], 0.0

    def _refresh(self, s: SessionKV) -> None:
        """Re-rank the session's cached blocks after its state changed."""
        self._next_use.pop(s.session_id, None)
        order = self.engine.pool.order
        if isinstance(order, NextUseOrder):
            pool = self.engine.pool
            order.refresh(b for h in s.hashes if (b := pool.lookup_hash(h)) is not None)
