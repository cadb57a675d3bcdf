"""LogHashCache: the hashes it returns are always those of the whole log, and after a turn only
the blocks past what the turn kept are hashed again (logs made by a real SessionManager)."""
import random

import pytest

from kvstore.block_pool import chain_hashes
from runtime.log_hashes import LogHashCache
from sessions.manager import SessionManager
from sessions.store import SessionStore

BS, FP = 16, b"model-fingerprint"


@pytest.fixture
def mgr(tmp_path):
    m = SessionManager(SessionStore(str(tmp_path / "db")))
    yield m
    m.store.close()


def turn(mgr, sid, n_in, n_out, keep=None, seed=0):
    rnd = random.Random(seed)
    h = mgr.begin_turn("t", sid, [rnd.randrange(1, 30000) for _ in range(n_in)],
                       keep_log_tokens=keep)
    return mgr.end_turn(h, [rnd.randrange(1, 30000) for _ in range(n_out)], "stop")


def full(s):
    return chain_hashes(s.token_log, BS, FP)


def test_a_session_is_hashed_once_per_log(mgr):
    cache = LogHashCache(BS, FP)
    sid = mgr.create("t", "m").session_id
    s = turn(mgr, sid, 100, 20)                                  # 120 tokens: 7 full blocks
    assert cache.tokens_to_hash(s) == 112
    assert cache.hashes(s) == full(s) and len(full(s)) == 7
    assert cache.tokens_to_hash(s) == 0 and cache.hashes(s) == full(s)
    assert cache.num_blocks == 7 and len(cache) == 1


def test_after_a_turn_only_the_new_blocks_are_hashed(mgr):
    cache = LogHashCache(BS, FP)
    sid = mgr.create("t", "m").session_id
    cache.hashes(turn(mgr, sid, 100, 20, seed=1))                # 120 tokens, 7 blocks kept
    s = turn(mgr, sid, 30, 15, seed=2)                           # 165 tokens: 10 full blocks
    assert cache.tokens_to_hash(s) == 160 - 7 * BS
    assert cache.hashes(s) == full(s)


def test_a_turn_that_cut_the_log_rehashes_from_the_cut(mgr):
    cache = LogHashCache(BS, FP)
    sid = mgr.create("t", "m").session_id
    cache.hashes(turn(mgr, sid, 100, 20, seed=1))                # 120 tokens
    s = turn(mgr, sid, 40, 10, keep=50, seed=3)                  # kept 50: blocks 0-2 hold
    assert len(s.token_log) == 100
    assert cache.tokens_to_hash(s) == 96 - 3 * BS
    assert cache.hashes(s) == full(s)


def test_two_turns_later_everything_is_hashed_again(mgr):
    cache = LogHashCache(BS, FP)
    sid = mgr.create("t", "m").session_id
    cache.hashes(turn(mgr, sid, 100, 20, seed=1))
    turn(mgr, sid, 10, 10, seed=2)
    s = turn(mgr, sid, 10, 10, keep=30, seed=3)       # the kept part is not known from here
    assert cache.tokens_to_hash(s) == len(s.token_log) // BS * BS
    assert cache.hashes(s) == full(s)


def test_the_least_recently_used_sessions_go_first(mgr):
    cache = LogHashCache(BS, FP, max_blocks=20)
    a, b, c = (mgr.create("t", "m").session_id for _ in range(3))
    sa, sb = turn(mgr, a, 150, 10), turn(mgr, b, 150, 10)        # 10 blocks each
    cache.hashes(sa)
    cache.hashes(sb)
    cache.hashes(sa)                                             # a used last
    cache.hashes(turn(mgr, c, 70, 10))                           # 5 blocks: b goes
    assert cache.num_blocks == 15 and len(cache) == 2
    assert cache.tokens_to_hash(sa) == 0 and cache.tokens_to_hash(sb) == 160
    long = turn(mgr, b, 400, 0)                                  # 35 blocks: never kept
    assert cache.hashes(long) == full(long) and cache.num_blocks == 15
    cache.forget(a)
    assert cache.num_blocks == 5 and len(cache) == 1
