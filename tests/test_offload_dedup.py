"""A block whose copy down is in flight is not copied again: repeated offloads (a turn end's
automatic pause, then the client's Pause) copy each block once, and a failed copy gives the
blocks back to later offloads."""
import threading
from concurrent.futures import Future

import pytest
import torch

from kvstore.block_pool import BlockPool, chain_hashes
from kvstore.config import TierConfig
from kvstore.spec import KVCacheSpec
from kvstore.tiers import TieredKVStore
from runtime.session_kv_hook import WAITING_TOOL
from sessions.estimator import PauseForecast
from test_kv_controller import folder, settle, setup, turn  # noqa: F401 - a fixture

SPEC = KVCacheSpec(num_layers=2, num_kv_heads=2, head_dim=16, block_size=4, dtype=torch.bfloat16)
FP = b"dedup-test-model"
GiB = 1 << 30


def make(tmp_path, gpu_blocks=16, cpu_blocks=12, disk_blocks=64):
    g = torch.Generator().manual_seed(0)
    kv = torch.randn((gpu_blocks, *SPEC.block_shape), generator=g).to(SPEC.dtype)
    pool = BlockPool(gpu_blocks, SPEC.block_size)
    cfg = TierConfig(cpu_cache_gb=cpu_blocks * SPEC.block_bytes / GiB,
                     disk_cache_path=str(tmp_path / "kv"),
                     disk_cache_gb=disk_blocks * 1.2 * SPEC.block_bytes / GiB, staging_mb=1)
    return kv, pool, TieredKVStore(SPEC, cfg, FP, kv, pool)


def fill(pool, kv, n):
    hs = chain_hashes(list(range(n * SPEC.block_size)), SPEC.block_size, FP)
    ids = pool.allocate(n)
    for b, h in zip(ids, hs):
        pool.cache_full_block(b, h)
    return hs, ids


def hold(t):
    """Hold the copy issuer (and so every GPU<->CPU batch) until the event is set."""
    gate = threading.Event()
    t.transfer._issuer.submit(gate.wait, 10)
    return gate


def test_second_offload_of_blocks_in_flight_copies_only_the_uncovered_ones(tmp_path):
    kv, pool, t = make(tmp_path)
    hs, ids = fill(pool, kv, 6)
    gate = hold(t)
    first = t.offload(hs[:4], "cpu")
    assert t.in_flight("cpu") == set(hs[:4])
    second = t.offload(hs, "cpu")                  # the same session, paused again
    assert t.in_flight("cpu") == set(hs)
    assert (t.in_flight_blocks("cpu"), t.in_flight_blocks("disk")) == (6, 0)
    assert t.transfer.in_flight_bytes == 6 * SPEC.block_bytes   # 4 + 2, not 4 + 6
    assert t.host.num_free == 12 - 6
    gate.set()
    second.wait()
    assert first.ready()
    assert t.in_flight("cpu") == set()
    assert [loc.tiers for loc in t.lookup(hs)] == [["gpu", "cpu"]] * 6
    assert t.transfer.stats.d2h_bytes == 6 * SPEC.block_bytes
    assert t.usage()["cpu"].bytes_in == 6 * SPEC.block_bytes
    assert t.host.num_free == 12 - 6
    for h, b in zip(hs, ids):
        assert torch.equal(t.host.slot_view(t.locate(h).cpu_slot).view(torch.uint8),
                           kv[b].view(torch.uint8))
    # once on CPU, a third offload copies nothing
    t.offload(hs, "cpu").wait()
    assert t.transfer.stats.d2h_bytes == 6 * SPEC.block_bytes
    pool.check_invariants()
    t.close()


def test_a_second_offload_completes_only_when_the_covering_copy_has(tmp_path):
    kv, pool, t = make(tmp_path)
    hs, _ = fill(pool, kv, 3)
    gate = hold(t)
    first = t.offload(hs, "cpu")
    second = t.offload(hs, "cpu")
    seen = []
    second.add_done_callback(lambda _h: seen.append([t.locate(h).cpu_slot is not None
                                                     for h in hs]))
    assert not second.ready() and seen == []
    gate.set()
    first.wait()
    assert second.ready() and seen == [[True] * 3]   # the index was filled before
    t.close()


def test_a_failed_copy_releases_its_blocks_and_a_later_offload_copies_them(tmp_path):
    kv, pool, t = make(tmp_path)
    hs, ids = fill(pool, kv, 4)
    real = t.transfer._copy
    calls = []

    def failing(*a):
        calls.append(a)
        if len(calls) == 1:
            raise OSError("injected copy failure")
        return real(*a)
    t.transfer._copy = failing
    with pytest.raises(OSError, match="injected"):
        t.offload(hs, "cpu").wait()
    assert t.poll() == 0                                   # the failed batch is done with
    assert t.in_flight("cpu") == set()
    assert t.host.num_free == 12                           # the slots came back
    assert [loc.tiers for loc in t.lookup(hs)] == [["gpu"]] * 4   # not lost: still on GPU
    assert all(pool.ref_count(b) == 1 for b in ids)         # the copy's references dropped
    t.offload(hs, "cpu").wait()
    assert [loc.tiers for loc in t.lookup(hs)] == [["gpu", "cpu"]] * 4
    assert t.transfer.stats.d2h_bytes == 4 * SPEC.block_bytes
    t.close()


def test_disk_writes_in_flight_are_not_started_twice(tmp_path):
    kv, pool, t = make(tmp_path)
    hs, _ = fill(pool, kv, 5)
    t.offload(hs, "cpu").wait()
    release = threading.Event()
    put_many = t.disk.put_many

    def slow_put(items):          # the write completes only once `release` is set
        inner, out = put_many(items), Future()

        def finish():
            release.wait(10)
            try:
                out.set_result(inner.result())
            except BaseException as e:  # noqa: BLE001
                out.set_exception(e)
        threading.Thread(target=finish, daemon=True).start()
        return out
    t.disk.put_many = slow_put
    a = t.offload(hs[:3], "disk")
    b = t.offload(hs, "disk")                      # covers 3 in flight, writes 2
    assert t.in_flight("disk") == set(hs)
    assert (t.in_flight_blocks("disk"), t.in_flight_blocks("cpu")) == (5, 0)
    assert not a.ready() and not b.ready()
    release.set()
    b.wait()
    assert a.ready() and t.in_flight("disk") == set() and t.in_flight_blocks("disk") == 0
    assert all(t.disk.contains(h) for h in hs)
    assert t.transfer.stats.disk_write_bytes == 5 * SPEC.block_bytes
    assert t.usage()["disk"].bytes_in == 5 * SPEC.block_bytes
    t.close()


def test_turn_end_auto_pause_then_client_pause_copies_each_block_once(folder, tmp_path):
    eng, ctl, _clock = setup(folder, tmp_path)
    hs = chain_hashes(turn(eng, ctl, "s", 5, n=96), 16, eng.fingerprint)
    tiers = eng.tiers
    gate = hold(tiers)
    medium = PauseForecast(30.0, 60.0, "hint")
    p1 = ctl.pause("s", WAITING_TOOL, None, False, medium)      # the server's "(waiting)"
    p2 = ctl.pause("s", "web_search", 30.0, False, medium)      # the client's Pause RPC
    assert p1.placement.value in ("write_cpu", "offload_cpu") and p2.placement == p1.placement
    assert tiers.in_flight("cpu") == set(hs)
    assert tiers.transfer.in_flight_bytes == len(hs) * eng.kv_spec.block_bytes
    gate.set()
    settle(eng)
    assert all("cpu" in tiers.locate(h).tiers for h in hs)
    assert tiers.transfer.stats.d2h_bytes == len(hs) * eng.kv_spec.block_bytes
    tiers.close()


def test_two_spill_plans_in_a_row_write_each_block_to_cpu_and_disk_once(folder, tmp_path):
    eng, ctl, _clock = setup(folder, tmp_path)
    hs = chain_hashes(turn(eng, ctl, "s", 6, n=80), 16, eng.fingerprint)
    tiers = eng.tiers
    gate = hold(tiers)
    hours = PauseForecast(3 * 3600, 12 * 3600, "hint")
    assert ctl.pause("s", WAITING_TOOL, None, True, hours).placement.value == "spill_disk"
    assert ctl.pause("s", "ask_user", None, True, hours).placement.value == "spill_disk"
    gate.set()
    settle(eng)
    assert all(tiers.disk.contains(h) for h in hs)
    nbytes = len(hs) * eng.kv_spec.block_bytes
    assert tiers.transfer.stats.d2h_bytes == nbytes
    assert tiers.transfer.stats.disk_write_bytes == nbytes
    assert tiers.in_flight("cpu") == tiers.in_flight("disk") == set()
    tiers.close()
