"""TieredKVStore: the block index across GPU, CPU and disk, and the moves the sessions layer
asks for."""
import pytest
import torch

from kvstore.block_pool import BlockPool, chain_hashes
from kvstore.config import TierConfig
from kvstore.eviction import LRUPolicy
from kvstore.spec import KVCacheSpec
from kvstore.tiers import TieredKVStore

SPEC = KVCacheSpec(num_layers=2, num_kv_heads=2, head_dim=16, block_size=4, dtype=torch.bfloat16)
FP = b"tiers-test-model"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GiB = 1 << 30


def blocks_gb(n):
    return n * SPEC.block_bytes / GiB


def same_bytes(a, b):
    return torch.equal(a.cpu().contiguous().view(torch.uint8),
                       b.cpu().contiguous().view(torch.uint8))


def make(tmp_path, gpu_blocks=16, cpu_blocks=8, disk_blocks=64, **kw):
    g = torch.Generator().manual_seed(0)
    kv = torch.randn((gpu_blocks, *SPEC.block_shape), generator=g).to(SPEC.dtype).to(DEVICE)
    pool = BlockPool(gpu_blocks, SPEC.block_size)
    cfg = TierConfig(cpu_cache_gb=blocks_gb(cpu_blocks),
                     disk_cache_path=str(tmp_path / "kv") if disk_blocks else None,
                     disk_cache_gb=blocks_gb(disk_blocks * 1.2), staging_mb=1)
    return kv, pool, TieredKVStore(SPEC, cfg, FP, kv, pool, **kw)


def fill(pool, kv, n, start=0, seed=1):
    """A request computes `n` full blocks: they are allocated, written and registered."""
    hs = chain_hashes(list(range(start, start + n * SPEC.block_size)), SPEC.block_size, FP)
    ids = pool.allocate(n)
    g = torch.Generator().manual_seed(seed)
    kv[ids] = torch.randn((n, *SPEC.block_shape), generator=g).to(SPEC.dtype).to(kv.device)
    for b, h in zip(ids, hs):
        pool.cache_full_block(b, h)
    return hs, ids


def test_round_trip_gpu_cpu_disk_cpu_gpu_is_byte_exact(tmp_path):
    kv, pool, t = make(tmp_path)
    hs, ids = fill(pool, kv, 6)
    want = kv[ids].clone()
    t.offload(hs, to="cpu").wait()
    assert [loc.tiers for loc in t.lookup(hs)] == [["gpu", "cpu"]] * 6
    t.offload(hs, to="disk").wait()                   # from the CPU copies
    assert [loc.tiers for loc in t.lookup(hs)] == [["gpu", "cpu", "disk"]] * 6
    pool.free(ids)                                    # the request ends; blocks stay cached
    assert t.evict(hs, "gpu") == 6 and t.evict(hs, "cpu") == 6
    kv.zero_()
    assert [loc.tiers for loc in t.lookup(hs)] == [["disk"]] * 6
    h = t.prefetch(hs).wait()                         # disk -> pinned staging -> GPU
    assert h.result.missing == [] and set(h.gpu_blocks) == set(hs)
    for i, x in enumerate(hs):
        assert same_bytes(kv[h.gpu_blocks[x]], want[i])
        assert pool.lookup_hash(x) == h.gpu_blocks[x] and pool.ref_count(h.gpu_blocks[x]) == 0
    assert pool.match_prefix(hs) == [h.gpu_blocks[x] for x in hs]   # prefix caching finds them
    # and the CPU leg back up: offload, drop from the GPU, prefetch from the CPU
    pool.free([h.gpu_blocks[x] for x in hs])
    t.offload(hs, to="cpu").wait()
    t.evict(hs, "gpu")
    kv.zero_()
    h2 = t.prefetch(hs, hold=True).wait()
    for i, x in enumerate(hs):
        assert same_bytes(kv[h2.gpu_blocks[x]], want[i]) and pool.ref_count(h2.gpu_blocks[x]) == 1
    u = t.usage()
    bb = SPEC.block_bytes
    assert u["gpu"].bytes_out == 12 * bb and u["disk"].bytes_in == 6 * bb
    assert u["disk"].bytes_out == 6 * bb and u["cpu"].bytes_out == 12 * bb
    pool.check_invariants()
    t.close()


def test_gpu_to_disk_directly_and_lookup_gives_the_longest_available_prefix(tmp_path):
    kv, pool, t = make(tmp_path, cpu_blocks=0)        # no CPU tier: disk through staging only
    assert t.host is None
    hs, ids = fill(pool, kv, 5)
    t.offload(hs[:3], to="disk").wait()
    pool.free(ids)
    t.evict(hs[1:], "gpu")
    locs = t.lookup(hs)
    assert [loc.tiers for loc in locs] == [["gpu", "disk"], ["disk"], ["disk"]]
    assert locs[0].gpu_block == ids[0] and locs[1].on_disk and locs[1].cpu_slot is None
    with pytest.raises(RuntimeError, match="CPU tier is off"):
        t.offload(hs, to="cpu")
    t.close()


def test_cpu_tier_evicts_in_policy_order_and_never_pinned_blocks(tmp_path):
    clock = iter(range(10**6))
    kv, pool, t = make(tmp_path, gpu_blocks=16, cpu_blocks=4, disk_blocks=0,
                       clock=lambda: float(next(clock)))
    hs, ids = fill(pool, kv, 8)
    t.offload(hs[:4], to="cpu").wait()
    t.pin([hs[0]])
    t.prefetch([hs[1]])                               # on the GPU already: not moved
    t.offload(hs[4:6], to="cpu").wait()               # full: evicts LRU unpinned hs[1], hs[2]
    on_cpu = {loc.hash for loc in map(t.locate, hs) if loc.cpu_slot is not None}
    assert on_cpu == {hs[0], hs[3], hs[4], hs[5]}
    t.offload(hs[6:], to="cpu").wait()
    on_cpu = {loc.hash for loc in map(t.locate, hs) if loc.cpu_slot is not None}
    assert on_cpu == {hs[0], hs[5], hs[6], hs[7]} and t.usage()["cpu"].pinned_blocks == 1
    assert t.evict([hs[0]], "cpu") == 0               # pinned
    t.unpin([hs[0]])
    assert t.evict([hs[0]], "cpu") == 1
    t.close()


def test_an_offload_without_eviction_fills_free_cpu_slots_only(tmp_path):
    """evict=False (a running turn written through): of six blocks, the two that fit in the
    free slots are copied, the longest prefix; the four held already stay."""
    kv, pool, t = make(tmp_path, gpu_blocks=16, cpu_blocks=6, disk_blocks=0)
    hs, _ = fill(pool, kv, 10)
    t.offload(hs[:4], to="cpu").wait()
    t.offload(hs[4:], to="cpu", evict=False).wait()
    t.poll()
    on_cpu = [loc.cpu_slot is not None for loc in map(t.locate, hs)]
    assert on_cpu == [True] * 6 + [False] * 4
    t.offload(hs[6:], to="cpu", evict=False).wait()       # full: nothing copied, none lost
    t.poll()
    assert [loc.cpu_slot is not None for loc in map(t.locate, hs)] == on_cpu
    t.close()


class NewestFirst(LRUPolicy):
    """A plugged-in policy: evicts the most recently touched block first."""

    def victims(self, n):
        return list(reversed(list(self._od)))[:n]


def test_a_plugged_in_policy_decides_the_victims(tmp_path):
    kv, pool, t = make(tmp_path, cpu_blocks=3, disk_blocks=0, cpu_policy=NewestFirst())
    hs, _ = fill(pool, kv, 4)
    t.offload(hs[:3], to="cpu").wait()
    t.offload(hs[3:], to="cpu").wait()
    assert t.locate(hs[2]).cpu_slot is None and t.locate(hs[0]).cpu_slot is not None
    t.close()


def test_pins_hold_gpu_blocks_and_prefetch_reports_what_does_not_fit(tmp_path):
    kv, pool, t = make(tmp_path, gpu_blocks=6, cpu_blocks=6, disk_blocks=0)
    hs, ids = fill(pool, kv, 4)
    t.offload(hs, to="cpu").wait()
    t.pin(hs[:1])
    pool.free(ids)
    assert t.evict(hs, "gpu") == 3                    # the pinned one stays
    busy = pool.allocate(4)                           # leaves 2 - 1 = 1 free... and 1 cached
    assert pool.num_free_blocks == 1
    h = t.prefetch(hs).wait()
    assert len(h.result.missing) == 2 and set(h.gpu_blocks) == {hs[1]}
    t.unpin(hs[:1])
    pool.free(busy)
    pool.check_invariants()
    t.close()


def test_unwritable_disk_path_leaves_a_degraded_tier_and_a_working_cpu_tier(tmp_path):
    (tmp_path / "file").write_text("x")
    kv = torch.zeros((8, *SPEC.block_shape), dtype=SPEC.dtype, device=DEVICE)
    pool = BlockPool(8, SPEC.block_size)
    cfg = TierConfig(cpu_cache_gb=blocks_gb(4), disk_cache_path=str(tmp_path / "file" / "kv"),
                     disk_cache_gb=0.01, staging_mb=1)
    t = TieredKVStore(SPEC, cfg, FP, kv, pool)
    assert not t.disk.healthy and "cannot be opened" in t.disk.last_error
    hs, _ = fill(pool, kv, 2)
    r = t.offload(hs, to="disk").wait()
    assert r.result.refused == hs and not t.lookup(hs)[0].on_disk
    t.offload(hs, to="cpu").wait()
    assert all(loc.cpu_slot is not None for loc in t.lookup(hs))
    t.close()


def test_full_disk_tier_evicts_then_refuses_with_a_counter_while_the_rest_keeps_working(
        tmp_path):
    from kvstore.disk import DiskStore
    tiny = DiskStore(str(tmp_path / "tiny"), SPEC, FP, capacity_bytes=GiB, map_size=64 << 10)
    kv, pool, t = make(tmp_path, gpu_blocks=96, cpu_blocks=8, disk_blocks=0, disk=tiny)
    hs, ids = fill(pool, kv, 80)
    res = t.offload(hs[:64], to="disk").wait().result   # more than the map holds
    assert tiny.stats.evictions > 0 and tiny.healthy and res.refused == []
    on_disk = [h for h in hs[:64] if t.locate(h).on_disk]
    assert on_disk and hs[63] in on_disk and hs[0] not in on_disk
    t.pin(hs[:64])                                       # nothing left that may be evicted
    res = t.offload(hs[64:], to="disk").wait().result
    assert res.refused and tiny.stats.full_refusals == len(res.refused)
    assert all(t.locate(h).on_disk for h in on_disk)     # pinned blocks survived
    t.offload(hs[72:], to="cpu").wait()                 # other tiers keep serving
    assert all(loc.cpu_slot is not None for loc in t.lookup(hs[72:]))
    got = tiny.get_many(on_disk[-2:])
    assert same_bytes(got[on_disk[-1]], kv[ids[hs.index(on_disk[-1])]])
    t.close()
