"""The pause-aware eviction order on its own: exact victims for given predicted next uses."""
import math

import pytest

from runtime.next_use_order import STALE_S, NextUseOrder


class Predictions:
    """Each block's predicted next use and depth in its log, changed by the test at will."""

    def __init__(self, next_use: dict[int, float], depth: dict[int, int] | None = None):
        self.next_use, self.depth = dict(next_use), dict(depth or {})
        self.asked: list[int] = []

    def order(self) -> NextUseOrder:
        return NextUseOrder(self._next_use, lambda b: self.depth.get(b, 0))

    def _next_use(self, block_id: int) -> float:
        self.asked.append(block_id)
        return self.next_use[block_id]


def ranked(next_use: dict[int, float], depth: dict[int, int] | None = None
           ) -> tuple[Predictions, NextUseOrder]:
    """An order holding the blocks of `next_use`, added in its order."""
    p = Predictions(next_use, depth)
    order = p.order()
    for b in next_use:
        order.add(b)
    return p, order


def drain(order: NextUseOrder) -> list[int]:
    out = []
    while len(order):
        out.append(order.pop_victim())
    return out


def test_needed_last_goes_first_then_deepest_then_least_recently_added():
    _, order = ranked({1: 10.0, 2: 50.0, 3: 30.0, 4: 30.0, 5: 30.0, 6: math.inf},
                      depth={3: 0, 4: 2, 5: 2})
    # nobody's (6) first; then by next use, latest first; at 30: depth 2 (4, 5: 4 added first)
    # before depth 0 (3)
    assert drain(order) == [6, 2, 4, 5, 3, 1]
    with pytest.raises(IndexError):
        order.pop_victim()


def test_a_block_needed_sooner_than_ranked_is_ranked_again_not_evicted():
    # a session resumes: its blocks' next use comes earlier with no refresh
    p, order = ranked({1: 100.0, 2: 100.0, 3: 40.0})
    p.next_use[1] = p.next_use[2] = 5.0
    p.asked.clear()
    assert order.pop_victim() == 3
    assert p.asked == [1, 1, 2, 2, 3]                 # 1 and 2 checked, then ranked again
    assert drain(order) == [1, 2]


def test_a_block_needed_later_than_ranked_moves_only_when_refreshed():
    # a session pauses: its blocks' next use moves later, which the order is told of
    for refreshed, victims in ((False, [2, 1]), (True, [1, 2])):
        p, order = ranked({1: 10.0, 2: 20.0})
        p.next_use[1] = 90.0
        if refreshed:
            order.refresh([1, 7])                     # 7 is not cached: not ranked
        assert 7 not in order and len(order) == 2
        assert drain(order) == victims


def test_a_block_gaining_an_owner_is_no_longer_nobodys():
    p, order = ranked({1: math.inf, 2: 30.0})
    p.next_use[1] = 5.0                               # a live session's log now holds it
    assert drain(order) == [2, 1]


def test_rounding_of_a_prediction_does_not_re_rank():
    p, order = ranked({1: 30.0, 2: 30.0})
    p.next_use[1] = 30.0 - STALE_S / 2
    assert drain(order) == [1, 2]                     # still least recently added first


def test_removed_blocks_are_never_victims_and_the_heap_stays_bounded():
    _, order = ranked({b: float(b) for b in range(100)})
    for _ in range(9):                                # re-ranked many times over
        for b in range(100):
            order.add(b)
    for b in range(0, 100, 2):
        order.remove(b)
    assert len(order) == 50 and 4 not in order and 5 in order
    assert len(order._heap) <= 4 * 100 + 64
    assert drain(order) == list(range(99, 0, -2))
