"""The GPU block pool: free list order, refcounts, prefix hashes and LRU reuse, with exact ids."""
import pytest

from kvstore.block_pool import BlockPool, OutOfBlocks, chain_hashes, root_hash

FP = b"model-A"


def test_allocate_takes_lowest_free_ids_in_order():
    pool = BlockPool(num_blocks=6, block_size=4)
    assert pool.allocate(2) == [0, 1]
    assert pool.allocate(3) == [2, 3, 4]
    assert pool.num_free_blocks == 1
    with pytest.raises(OutOfBlocks, match="asked for 2 KV blocks, 1 free of 6"):
        pool.allocate(2)
    pool.check_invariants()


def test_unhashed_block_returns_to_the_back_of_the_free_list():
    pool = BlockPool(num_blocks=4, block_size=4)
    a = pool.allocate(2)                  # [0, 1]
    pool.free([a[0]])
    assert pool.allocate(3) == [2, 3, 0]
    pool.check_invariants()


def test_chained_hash_depends_on_every_earlier_token_and_the_model():
    toks = list(range(12))
    h = chain_hashes(toks, 4, FP)
    assert len(h) == 3
    other = list(toks)
    other[1] = 99                         # change a token of block 0
    h2 = chain_hashes(other, 4, FP)
    assert h2[0] != h[0] and h2[1] != h[1] and h2[2] != h[2]
    assert chain_hashes(toks, 4, b"model-B")[0] != h[0]
    # incremental hashing from a parent equals hashing from scratch
    assert chain_hashes(toks, 4, FP, start=1, parent=h[0]) == h[1:]
    assert root_hash(FP) != root_hash(b"model-B")
    assert chain_hashes(toks[:7], 4, FP) == h[:1]   # only full blocks are hashed


def test_cached_blocks_are_found_by_prefix_and_reused_in_lru_order():
    pool = BlockPool(num_blocks=4, block_size=2)
    seq = [5, 6, 7, 8]
    hashes = chain_hashes(seq, 2, FP)
    blocks = pool.allocate(2)             # [0, 1]
    for b, h in zip(blocks, hashes):
        pool.cache_full_block(b, h)
    pool.free(reversed(blocks))           # tail first: 1 then 0 become cached
    assert pool.num_cached_blocks == 2 and pool.num_free_blocks == 4
    assert pool.match_prefix(hashes) == [0, 1]
    assert pool.ref_count(0) == 1 and pool.num_cached_blocks == 0
    assert pool.stats.hits == 2 and pool.stats.queries == 2
    pool.free([1, 0])
    # Free list first ([2, 3]), then cached blocks least recently freed first: 1, then 0.
    assert pool.allocate(3) == [2, 3, 1]
    assert pool.lookup_hash(hashes[1]) is None and pool.lookup_hash(hashes[0]) == 0
    assert pool.stats.evictions == 1
    # the prefix now stops after block 0
    assert pool.match_prefix(hashes) == [0]
    pool.check_invariants()


def test_prefix_caching_off_never_matches():
    pool = BlockPool(num_blocks=2, block_size=2, enable_prefix_caching=False)
    h = chain_hashes([1, 2], 2, FP)
    b = pool.allocate(1)
    pool.cache_full_block(b[0], h[0])
    pool.free(b)
    assert pool.match_prefix(h) == []
    assert pool.allocate(2) == [1, 0]


def test_shared_block_survives_until_last_reference_and_double_free_is_caught():
    pool = BlockPool(num_blocks=3, block_size=2)
    h = chain_hashes([1, 2], 2, FP)
    [b] = pool.allocate(1)
    pool.cache_full_block(b, h[0])
    assert pool.match_prefix(h) == [b]    # second user
    pool.free([b])
    assert pool.ref_count(b) == 1 and pool.num_cached_blocks == 0
    pool.free([b])
    assert pool.num_cached_blocks == 1
    with pytest.raises(RuntimeError, match="freed more often"):
        pool.free([b])


def test_evict_hook_sees_hash_before_reuse():
    pool = BlockPool(num_blocks=1, block_size=2)
    seen = []
    pool.on_evict(lambda bid, h: seen.append((bid, h)))
    h = chain_hashes([3, 4], 2, FP)
    [b] = pool.allocate(1)
    pool.cache_full_block(b, h[0])
    pool.free([b])
    assert pool.allocate(1) == [0]
    assert seen == [(0, h[0])]


def test_ensure_free_asks_reclaim_for_exactly_what_is_missing():
    pool = BlockPool(num_blocks=6, block_size=4)
    held = pool.allocate(5)                  # [0..4]; block 5 free
    asked = []

    def reclaim(n):
        asked.append(n)
        pool.free(held[:1])                  # gives back one block only
    pool.reclaim = reclaim
    assert pool.ensure_free(1) and asked == []
    assert not pool.ensure_free(4) and asked == [3]
    assert pool.num_free_blocks == 2
    assert pool.allocate(2) == [5, 0]
    pool.check_invariants()


def test_a_block_is_idle_once_every_step_launched_before_its_release_has_finished():
    pool = BlockPool(num_blocks=6, block_size=4)
    a = pool.allocate(2)                          # [0, 1]
    pool.launched_steps = 3                       # steps 1-3 launched, none seen finished
    pool.free([a[0]])                             # released while step 3 may still read it
    assert pool.idle([5])                         # never used
    assert not pool.idle([a[0]])
    pool.finished_steps = 2
    assert not pool.idle([a[0], 5])
    pool.finished_steps = 3
    assert pool.idle([a[0], 5])
    pool.launched_steps = 4
    pool.free([a[1]])                             # released with step 4 in flight
    assert pool.idle([a[0]]) and not pool.idle([a[1]])
    assert pool.allocate(6)[-2:] == [0, 1]        # reuse keeps the stamp
    assert not pool.idle([1])
