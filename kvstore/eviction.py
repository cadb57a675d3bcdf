"""Eviction order of the CPU and disk tiers.

A policy only orders keys; the tier decides what may be evicted (pinned blocks and blocks that an
in-flight copy still reads are skipped). LRU is the default; the sessions layer plugs in a
pause-aware policy with the same three methods.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable, Protocol


class EvictionPolicy(Protocol):
    """Orders the keys of one tier for eviction."""

    def touch(self, key: Hashable, now: float) -> None:
        """`key` was stored or used at time `now` (seconds, monotonic)."""

    def remove(self, key: Hashable) -> None:
        """`key` left the tier (unknown keys are ignored)."""

    def victims(self, n: int) -> list:
        """Up to `n` keys, first to evict first; does not remove them."""


class LRUPolicy:
    """Least recently touched first. Thread-safe."""

    def __init__(self) -> None:
        self._od: OrderedDict[Hashable, float] = OrderedDict()
        self._lock = threading.Lock()

    def touch(self, key: Hashable, now: float) -> None:
        with self._lock:
            self._od[key] = now
            self._od.move_to_end(key)

    def remove(self, key: Hashable) -> None:
        with self._lock:
            self._od.pop(key, None)

    def victims(self, n: int) -> list:
        with self._lock:
            out = []
            for key in self._od:
                if len(out) >= n:
                    break
                out.append(key)
            return out

    def __len__(self) -> int:
        return len(self._od)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._od


def pick_victims(policy: EvictionPolicy, n: int, evictable: Callable[[Hashable], bool],
                 limit: int) -> list:
    """Up to `n` keys in the policy's order for which `evictable(key)` holds.

    Asks the policy for more keys (doubling) while some are skipped, up to `limit` keys in all
    (the number of keys the tier holds), so pinned or busy keys never block eviction behind them.
    """
    if n <= 0:
        return []
    ask = n
    while True:
        cand = policy.victims(ask)
        out = [k for k in cand if evictable(k)][:n]
        if len(out) >= n or len(cand) < ask or ask >= limit:
            return out
        ask = min(limit, ask * 2)
