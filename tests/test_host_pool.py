"""HostPool: slots, refcounts, errors, and the block copy helpers beside it."""
import random
import threading

import pytest
import torch

from kvstore.host_pool import (HostPool, OutOfSlots, contiguous_runs, copy_blocks_in,
                               copy_blocks_out, paired_runs)
from kvstore.spec import KVCacheSpec

SPEC = KVCacheSpec(num_layers=3, num_kv_heads=2, head_dim=8, block_size=4, dtype=torch.bfloat16)


def rand_blocks(n, seed, spec=SPEC):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *spec.block_shape), generator=g).to(spec.dtype)


def same_bytes(a, b):
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def test_capacity_shape_and_pinning():
    pool = HostPool(SPEC, 10 * SPEC.block_bytes + 7)
    assert pool.capacity == 10 and pool.num_free == 10
    assert pool.buffer.shape == (10, *SPEC.block_shape) and pool.buffer.dtype == SPEC.dtype
    assert pool.pinned == torch.cuda.is_available()
    assert pool.slot_view(3).shape == SPEC.block_shape
    assert pool.slot_view(3).data_ptr() == pool.buffer.data_ptr() + 3 * SPEC.block_bytes


def test_too_small_capacity_is_a_clear_error():
    with pytest.raises(ValueError, match="holds no block"):
        HostPool(SPEC, SPEC.block_bytes - 1)


def test_allocate_lowest_first_gives_contiguous_runs_and_out_of_slots_names_capacity():
    pool = HostPool(SPEC, 8 * SPEC.block_bytes)
    a = pool.allocate(3)
    assert a == [0, 1, 2]
    b = pool.allocate(5)
    assert b == [3, 4, 5, 6, 7] and pool.num_free == 0
    with pytest.raises(OutOfSlots, match=r"1 slots, 0 free of 8 .*capacity"):
        pool.allocate(1)
    pool.free([1, 2])
    assert pool.allocate(2) == [1, 2]


def test_refcounts_keep_a_freed_slot_until_the_last_reference():
    pool = HostPool(SPEC, 2 * SPEC.block_bytes)
    s = pool.allocate(2)
    pool.incref([s[0]])              # a copy in flight reads slot 0
    pool.free(s)                     # the owner lets go of both
    assert pool.ref_count(s[0]) == 1 and pool.num_free == 1
    with pytest.raises(OutOfSlots):
        pool.allocate(2)             # slot 0 is not handed out while the copy holds it
    pool.decref([s[0]])
    assert pool.num_free == 2
    with pytest.raises(RuntimeError, match="more often than referenced"):
        pool.free([s[0]])
    with pytest.raises(RuntimeError, match="is free"):
        pool.incref([s[0]])
    with pytest.raises(IndexError):
        pool.slot_view(2)


def test_slot_data_round_trips_byte_exact():
    pool = HostPool(SPEC, 4 * SPEC.block_bytes)
    blocks = rand_blocks(4, seed=1)
    slots = pool.allocate(4)
    for s, b in zip(slots, blocks):
        pool.slot_view(s).copy_(b)
    assert same_bytes(pool.buffer, blocks)


def test_concurrent_allocate_and_free_keep_counts_consistent():
    pool = HostPool(SPEC, 64 * SPEC.block_bytes)
    errors = []

    def worker(seed):
        rng = random.Random(seed)
        try:
            for _ in range(300):
                n = rng.randint(1, 4)
                try:
                    got = pool.allocate(n)
                except OutOfSlots:
                    continue
                pool.incref(got)
                pool.decref(got)
                pool.free(got)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert pool.num_free == 64 and all(pool.ref_count(s) == 0 for s in range(64))


def test_runs():
    assert contiguous_runs([4, 5, 6, 9, 2, 3]) == [(0, 4, 3), (3, 9, 1), (4, 2, 2)]
    assert paired_runs([1, 2, 3, 7], [5, 6, 8, 9]) == [(0, 1, 5, 2), (2, 3, 8, 1), (3, 7, 9, 1)]


@pytest.mark.parametrize("mode", ["direct", "staged", "auto"])
def test_copy_helpers_scatter_and_gather_random_blocks(mode):
    kv = rand_blocks(32, seed=2)
    pool = HostPool(SPEC, 32 * SPEC.block_bytes)
    pool.buffer.copy_(rand_blocks(32, seed=3))
    rng = random.Random(4)
    ids = rng.sample(range(32), 20)
    slots = rng.sample(range(32), 20)
    copy_blocks_out(kv, ids, pool.buffer, slots, mode=mode, chunk_blocks=6)
    for g, s in zip(ids, slots):
        assert same_bytes(pool.buffer[s], kv[g])
    dst = rand_blocks(32, seed=5)
    back = rng.sample(range(32), 20)
    copy_blocks_in(dst, back, pool.buffer, slots, mode=mode, chunk_blocks=6)
    for g, s in zip(back, slots):
        assert same_bytes(dst[g], pool.buffer[s])


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_pageable_pool_is_committed_when_allocated():
    # a 96 MiB pool shows in the resident size at once, not block by block as steps touch it,
    # so a later RSS growth of the server means a leak, not the first use of a block
    spec = KVCacheSpec(num_layers=4, num_kv_heads=4, head_dim=64, block_size=16,
                       dtype=torch.float32)
    n = (96 << 20) // spec.block_bytes
    before = _rss_mib()
    pool = spec.allocate(n, "cpu")
    grown = _rss_mib() - before
    assert pool.shape == (n, *spec.block_shape)
    assert grown >= 0.9 * 96, grown
    assert torch.count_nonzero(pool[:: max(1, n // 7)]) == 0
