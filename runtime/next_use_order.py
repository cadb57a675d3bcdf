"""GPU eviction order by predicted next use: the cached block needed last is reused first.

A cached (refcount-zero) block belongs to the sessions whose token logs contain it. Its next use
is the earliest predicted resume among them; blocks of no live session are needed never and go
first. Ties (the same prediction) fall back to least recently freed. A heap with lazy
invalidation keeps `pop_victim` logarithmic; `refresh` re-ranks blocks whose sessions changed
state (paused, resumed, closed).
"""
from __future__ import annotations

import heapq
import itertools
import math
from typing import Callable, Iterable


class NextUseOrder:
    """An `EvictionOrder` for `BlockPool`: `next_use(block_id)` gives a time; larger = later."""

    def __init__(self, next_use: Callable[[int], float]):
        self.next_use = next_use
        self._heap: list[tuple[float, int, int]] = []
        self._version: dict[int, int] = {}
        self._seq = itertools.count()

    def add(self, block_id: int) -> None:
        self._push(block_id)

    def _push(self, block_id: int) -> None:
        v = next(self._seq)
        self._version[block_id] = v
        t = self.next_use(block_id)
        key = -t if not math.isinf(t) else -math.inf
        heapq.heappush(self._heap, (key, v, block_id))
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
            _, v, b = heapq.heappop(self._heap)
            if self._version.get(b) == v:
                del self._version[b]
                return b
        raise IndexError("no cached block to evict")

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if self._version.get(e[2]) == e[1]]
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._version)

    def __contains__(self, block_id: int) -> bool:
        return block_id in self._version
