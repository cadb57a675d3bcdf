"""GPU eviction order by predicted next use: the cached block needed last is reused first.

A cached (refcount-zero) block belongs to the sessions whose token logs contain it. Its next use
is the earliest predicted resume among them; blocks of no live session are needed never and go
first. Ties (the same prediction: one session's blocks) go deepest in the log first, as prefix
matching stops at the first missing block and a cached tail behind an evicted head is of no
use; then least recently freed. A heap with lazy invalidation keeps `pop_victim` logarithmic.

A rank is the block's next use when it was ranked. The next use moves earlier when a session
resumes or a live session's log comes to hold the block: `pop_victim` checks its candidate's
next use and, where it came earlier than ranked, ranks it again instead of evicting it, so a
resume (which comes with the session's next turn) costs nothing per block on that turn's path
(a 13K-token log at 16-token pages was ~4 ms of re-ranking). It moves later when a session
pauses (the controller `refresh`es its blocks) and as a pause goes on: a paused session's
predicted resume is its pause's start plus a quantile of the pause conditioned on its length so
far, which never falls. That drift is not re-ranked: a session paused past its prediction keeps
the rank of its prediction until its state changes, so its blocks go later than they could
(likewise a shared block whose earliest owner closed).
"""
from __future__ import annotations

import heapq
import itertools
import math
from typing import Callable, Iterable

# a candidate's next use must have come this much earlier than its rank for `pop_victim` to rank
# it again (rounding of the predicted times is not a change)
STALE_S = 1e-6


class NextUseOrder:
    """An `EvictionOrder` for `BlockPool`: `next_use(block_id)` gives a time, larger = later;
    `depth(block_id)` the block's index in its token log (0 where unknown)."""

    def __init__(self, next_use: Callable[[int], float],
                 depth: Callable[[int], int] = lambda block_id: 0):
        self.next_use, self.depth = next_use, depth
        self._heap: list[tuple[float, int, int, int]] = []   # (-next use, -depth, version, id)
        self._version: dict[int, int] = {}
        self._seq = itertools.count()

    def add(self, block_id: int) -> None:
        self._push(block_id)

    def _push(self, block_id: int) -> None:
        v = next(self._seq)
        self._version[block_id] = v
        t = self.next_use(block_id)
        if math.isinf(t):
            heapq.heappush(self._heap, (-math.inf, 0, v, block_id))
        else:
            heapq.heappush(self._heap, (-t, -self.depth(block_id), v, block_id))
        if len(self._heap) > 4 * len(self._version) + 64:
            self._compact()

    def remove(self, block_id: int) -> None:
        self._version.pop(block_id, None)

    def refresh(self, block_ids: Iterable[int]) -> None:
        """Re-rank blocks whose predicted next use changed (only those cached now)."""
        for b in block_ids:
            if b in self._version:
                self._push(b)

    def pop_victim(self) -> int:
        while self._heap:
            key, _, v, b = heapq.heappop(self._heap)
            if self._version.get(b) != v:
                continue                                # re-ranked or removed since
            if self.next_use(b) < -key - STALE_S:       # needed sooner than ranked: rank again
                self._push(b)
                continue
            del self._version[b]
            return b
        raise IndexError("no cached block to evict")

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if self._version.get(e[3]) == e[2]]
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._version)

    def __contains__(self, block_id: int) -> bool:
        return block_id in self._version
