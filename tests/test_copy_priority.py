"""Loads go ahead of write-throughs: the copy issuer's two queues, store chunks, and the
transfer engine built on them (CPU: copies run on the issuer thread in issue order)."""
import threading

import pytest
import torch

from kvstore.block_pool import BlockPool
from kvstore.copy_issuer import CopyIssuer
from kvstore.host_pool import HostPool
from kvstore.spec import KVCacheSpec
from kvstore.transfer import TransferEngine

SPEC = KVCacheSpec(num_layers=2, num_kv_heads=2, head_dim=32, block_size=4, dtype=torch.bfloat16)


def same_bytes(a, b):
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def test_a_load_submitted_during_a_store_runs_after_only_the_running_chunk():
    iss = CopyIssuer()
    order, started, go = [], threading.Event(), threading.Event()

    def store_step(i):
        def run():
            if i == 0:
                started.set()
                go.wait(5)
            order.append(f"s{i}")
        return run
    store = iss.submit_steps([store_step(i) for i in range(5)], "store")
    assert started.wait(5)
    load = iss.submit(order.append, "L")
    go.set()
    assert store.result(5) is None and load.result(5) is None
    assert order == ["s0", "L", "s1", "s2", "s3", "s4"]
    assert (iss.counts.load_steps, iss.counts.store_steps) == (1, 5)
    iss.shutdown()


def test_loads_queued_behind_a_gate_all_run_before_any_store_and_in_order():
    iss = CopyIssuer()
    gate, order = threading.Event(), []
    iss.submit(gate.wait, 5)
    s1 = iss.submit_steps([lambda: order.append("a0"), lambda: order.append("a1")], "store")
    l1 = iss.submit(order.append, "L1")
    s2 = iss.submit(order.append, "b0", priority="store")
    l2 = iss.submit(order.append, "L2")
    gate.set()
    for f in (s1, l1, s2, l2):
        f.result(5)
    assert order == ["L1", "L2", "a0", "a1", "b0"]
    iss.shutdown()


def test_a_failing_step_fails_its_job_skips_its_rest_and_the_issuer_goes_on():
    iss = CopyIssuer()
    order = []

    def boom():
        raise OSError("copy failed")
    bad = iss.submit_steps([lambda: order.append(1), boom, lambda: order.append(3)], "store")
    with pytest.raises(OSError, match="copy failed"):
        bad.result(5)
    assert iss.submit(lambda: order.append(4), priority="store").result(5) is None
    assert order == [1, 4]
    with pytest.raises(ValueError, match="priority"):
        iss.submit(order.append, 1, priority="urgent")
    with pytest.raises(ValueError, match="at least one step"):
        iss.submit_steps([], "load")
    iss.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        iss.submit(order.append, 1)


def test_store_wait_runs_before_each_store_step_and_a_load_arriving_meanwhile_goes_first():
    waiting, done = threading.Event(), threading.Event()
    waits = []

    def store_wait():                      # "the last store chunk is still on the copy engine"
        waits.append(len(order))
        waiting.set()
        done.wait(5)
    iss = CopyIssuer(store_wait=store_wait)
    order = []
    store = iss.submit_steps([lambda: order.append("s0"), lambda: order.append("s1")], "store")
    assert waiting.wait(5)
    load = iss.submit(order.append, "L")
    assert not load.done() and order == []   # held for at most the chunk being waited on
    done.set()
    store.result(5)
    load.result(5)
    assert order == ["L", "s0", "s1"]
    assert iss.counts.load_steps == 1 and iss.counts.store_steps == 2
    assert waits == [0, 1, 2]    # before s0 (again after the load that came), and before s1
    iss.shutdown()


def test_transfer_engine_issues_a_write_through_in_chunks_behind_a_later_load():
    n = 40
    g = torch.Generator().manual_seed(3)
    kv = torch.randn((48, *SPEC.block_shape), generator=g).to(SPEC.dtype)
    pool = BlockPool(48, SPEC.block_size)
    pool.allocate(48)
    host = HostPool(SPEC, 48 * SPEC.block_bytes)
    eng = TransferEngine(kv, host, gpu_incref=pool.incref, gpu_decref=pool.free,
                         store_chunk_blocks=4)
    before = kv.clone()
    out_slots = host.allocate(n)
    in_slots = host.allocate(4)
    host.buffer[in_slots] = torch.randn((4, *SPEC.block_shape), generator=g).to(SPEC.dtype)
    gate = threading.Event()
    eng._issuer.submit(gate.wait, 5)
    store = eng.gpu_to_host(list(range(n)), out_slots)      # write-through: 10 chunks
    load = eng.host_to_gpu(in_slots, list(range(36, 40)))   # loads into the last chunk's blocks
    assert eng._issuer.pending("store") == 1 and eng._issuer.pending("load") >= 2
    gate.set()
    load.wait(5)
    store.wait(5)
    # the load ran first: the write-through's last chunk saw the loaded data, the rest the old
    assert same_bytes(host.buffer[out_slots[:36]], before[:36])
    assert same_bytes(host.buffer[out_slots[36:]], host.buffer[in_slots])
    assert eng._issuer.counts.store_steps == 10
    assert eng.stats.d2h_bytes == n * SPEC.block_bytes
    assert eng.stats.h2d_bytes == 4 * SPEC.block_bytes
    assert all(pool.ref_count(b) == 1 for b in range(48))
    assert all(host.ref_count(s) == 1 for s in out_slots + in_slots)
    eng.close()


def test_default_store_chunk_is_a_bounded_number_of_bytes():
    kv = torch.zeros((4, *SPEC.block_shape), dtype=SPEC.dtype)
    host = HostPool(SPEC, 4 * SPEC.block_bytes)
    eng = TransferEngine(kv, host)
    assert eng.store_chunk_blocks * SPEC.block_bytes <= 64 << 20
    assert (eng.store_chunk_blocks + 1) * SPEC.block_bytes > 64 << 20
    eng.close()
    with pytest.raises(ValueError, match="store_chunk_blocks"):
        TransferEngine(kv, host, store_chunk_blocks=0)
