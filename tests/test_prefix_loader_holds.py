"""The prefix loader's holds: what a waiting request keeps on the GPU while it waits for room
to load the rest of its prefix, and which of those holds are dropped for whom."""
import math

from runtime.config import SamplingParams
from runtime.prefix_loader import LoadState, PrefixLoader, Rates
from runtime.request import Request
from test_tiers import FP, SPEC, fill, make


def waiting_for_room(tmp_path):
    """Two requests whose 6-block prefixes have their first two blocks cached on the GPU and
    the other four on the CPU only, with only those cached blocks free: neither load fits, so
    both wait, each holding its two GPU blocks."""
    kv, pool, tiers = make(tmp_path, gpu_blocks=16, cpu_blocks=16, disk_blocks=0)
    loader = PrefixLoader(tiers, pool, SPEC.block_size, FP, Rates(1000.0, 1.0, 1.0))
    loader.max_wait_factor = math.inf
    chains = [fill(pool, kv, 6, start=start, seed=i + 1) for i, start in enumerate((0, 1000))]
    for hs, ids in chains:
        tiers.offload(hs, "cpu").wait()
        tiers.poll()
        pool.free(ids)
        assert tiers.evict(hs[2:], "gpu") == 4
    held = pool.allocate(pool.num_free_blocks - 4)       # all but the four cached blocks
    reqs = []
    for i, (start, (hs, _)) in enumerate(zip((0, 1000), chains)):
        prompt = list(range(start, start + 6 * SPEC.block_size)) + [7]
        r = Request(f"r{i}", prompt, SamplingParams(max_tokens=1), 0.0)
        assert loader.ready(r) is LoadState.NO_ROOM
        reqs.append((r, [pool.lookup_hash(h) for h in hs[:2]]))
    for _, gpu in reqs:
        assert [pool.ref_count(b) for b in gpu] == [1, 1]
    return pool, tiers, loader, reqs, held


def test_release_others_keeps_the_hold_of_the_request_it_serves(tmp_path):
    pool, tiers, loader, reqs, held = waiting_for_room(tmp_path)
    (keep, keep_gpu), (other, other_gpu) = reqs
    assert loader.release_others(keep) == 2
    assert [pool.ref_count(b) for b in keep_gpu] == [1, 1]
    assert [pool.ref_count(b) for b in other_gpu] == [0, 0]
    assert loader.room_wanted(keep) == 4 and loader.room_wanted(other) == 0
    pool.free(held)
    tiers.close()


def test_release_holds_drops_only_the_requests_named(tmp_path):
    pool, tiers, loader, reqs, held = waiting_for_room(tmp_path)
    (first, first_gpu), (second, second_gpu) = reqs
    assert loader.release_holds([second.request_id]) == 2
    assert loader.release_holds([second.request_id]) == 0
    assert [pool.ref_count(b) for b in first_gpu] == [1, 1]
    assert [pool.ref_count(b) for b in second_gpu] == [0, 0]
    pool.free(held)
    tiers.close()


def test_a_released_load_no_longer_counts_as_where_the_prefix_came_from(tmp_path):
    """A request's finished load is dropped for another (`release_holds`) and its blocks are
    evicted before it is admitted: its next look finds nothing to load, and the tokens its
    dropped load brought are not reported as loaded (they are recomputed)."""
    kv, pool, tiers = make(tmp_path, gpu_blocks=16, cpu_blocks=16, disk_blocks=0)
    loader = PrefixLoader(tiers, pool, SPEC.block_size, FP, Rates(1000.0, 1.0, 1.0))
    hs, ids = fill(pool, kv, 4, start=0, seed=5)
    tiers.offload(hs, "cpu").wait()
    tiers.poll()
    pool.free(ids)
    assert tiers.evict(hs, "gpu") == 4
    r = Request("r0", list(range(4 * SPEC.block_size)) + [7], SamplingParams(max_tokens=1), 0.0)
    state = loader.ready(r)
    while state is LoadState.LOADING:
        state = loader.ready(r)
    assert state is LoadState.READY and r.loaded_from == {"cpu": 4 * SPEC.block_size}
    assert loader.release_holds([r.request_id]) == 4       # dropped for another request
    assert tiers.evict(hs, "gpu") == 4 and tiers.evict(hs, "cpu") == 4
    assert loader.ready(r) is LoadState.READY               # nothing left to load
    assert r.loaded_from == {}
    tiers.close()
