"""TransferEngine: byte-exact moves between "GPU", host slots and disk; references held in flight.

On a machine without CUDA the "GPU" cache is a CPU tensor (same API); with CUDA every test also
runs on the device.
"""
import hashlib
import random
import threading

import pytest
import torch

from kvstore.block_pool import BlockPool, OutOfBlocks
from kvstore.disk import DiskStore
from kvstore.host_pool import HostPool, OutOfSlots
from kvstore.spec import KVCacheSpec
from kvstore.transfer import TransferEngine

SPEC = KVCacheSpec(num_layers=2, num_kv_heads=2, head_dim=32, block_size=4, dtype=torch.bfloat16)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FP = b"transfer-test-model"


def rand_blocks(n, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *SPEC.block_shape), generator=g).to(SPEC.dtype).to(device)


def same_bytes(a, b):
    return torch.equal(a.cpu().contiguous().view(torch.uint8),
                       b.cpu().contiguous().view(torch.uint8))


def hashes(n, tag):
    return [hashlib.blake2b(f"{tag}-{i}".encode(), digest_size=16).digest() for i in range(n)]


def make(device, num_blocks=16, slots=16, disk=None, staging=None, mode="auto", own=True):
    """A "GPU" cache with its block pool; with `own`, every block is allocated (as a running
    request would hold them) so any block id may be copied."""
    kv = rand_blocks(num_blocks, 100, device)
    pool = BlockPool(num_blocks, SPEC.block_size)
    if own:
        pool.allocate(num_blocks)
    host = HostPool(SPEC, slots * SPEC.block_bytes)
    eng = TransferEngine(kv, host, disk, gpu_incref=pool.incref, gpu_decref=pool.free,
                         staging_pool=staging, mode=mode)
    return kv, pool, host, eng


def hold_copies(eng):
    """Keep the next batches in flight: block the issuing thread (and, on CUDA, the stream)."""
    gate = threading.Event()
    eng._issuer.submit(gate.wait)
    if eng.is_cuda:
        with torch.cuda.stream(eng.stream):
            torch.cuda._sleep(200_000_000)
    return gate


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["direct", "staged", "auto"])
def test_gpu_host_round_trip_of_scattered_blocks(device, mode):
    kv, pool, host, eng = make(device, num_blocks=32, slots=32, mode=mode)
    rng = random.Random(1)
    ids = rng.sample(range(32), 20)
    slots = host.allocate(20)
    eng.gpu_to_host(ids, slots).wait()
    for g, s in zip(ids, slots):
        assert same_bytes(host.slot_view(s), kv[g])
    before = kv.clone()
    dst = rng.sample(range(32), 20)
    eng.host_to_gpu(slots, dst).wait()
    for g, s in zip(dst, slots):
        assert same_bytes(kv[g], host.slot_view(s))
    untouched = [b for b in range(32) if b not in dst]
    assert same_bytes(kv[untouched], before[untouched])
    assert eng.stats.d2h_bytes == eng.stats.h2d_bytes == 20 * SPEC.block_bytes
    assert all(host.ref_count(s) == 1 for s in slots) and all(pool.ref_count(b) == 1 for b in ids)
    pool.check_invariants()
    eng.close()


@pytest.mark.parametrize("device", DEVICES)
def test_freeing_during_a_copy_cannot_corrupt_it(device):
    kv, pool, host, eng = make(device, num_blocks=8, slots=4, own=False)
    ids = pool.allocate(4)
    want = kv[ids].clone()
    slots = host.allocate(4)
    gate = hold_copies(eng)
    handle = eng.gpu_to_host(ids, slots)
    assert not handle.ready() and eng.poll() == 1
    assert eng.in_flight_bytes == 4 * SPEC.block_bytes
    # the owners let go while the copy is in flight, and the engine tries to reuse the memory
    pool.free(ids)
    host.free(slots)
    with pytest.raises(OutOfBlocks):
        pool.allocate(8)
    with pytest.raises(OutOfSlots):
        host.allocate(1)
    reused = pool.allocate(pool.num_free_blocks)
    assert not set(reused) & set(ids)
    kv[reused] = rand_blocks(len(reused), 7, device)   # new data lands in the reused blocks only
    gate.set()
    handle.wait()
    assert same_bytes(host.buffer[slots], want)          # the copy saw the data it was given
    assert eng.poll() == 0 and host.num_free == 4 and all(pool.ref_count(b) == 0 for b in ids)
    pool.check_invariants()
    eng.close()


def test_without_references_the_same_free_does_corrupt_the_copy():
    """The hazard the references prevent is real: the test above would see it."""
    kv = rand_blocks(8, 100)
    pool = BlockPool(8, SPEC.block_size)
    host = HostPool(SPEC, 4 * SPEC.block_bytes)
    eng = TransferEngine(kv, host)                       # no GPU refcount callbacks
    ids = pool.allocate(4)
    want = kv[ids].clone()
    slots = host.allocate(4)
    gate = hold_copies(eng)
    handle = eng.gpu_to_host(ids, slots)
    pool.free(ids)
    reused = pool.allocate(8)                            # the copy's source blocks come back
    kv[reused] = rand_blocks(8, 7)
    gate.set()
    handle.wait()
    assert not same_bytes(host.buffer[slots], want)
    eng.close()


@pytest.mark.parametrize("device", DEVICES)
def test_host_slots_freed_during_an_upload_are_not_reused_before_it_ends(device):
    kv, pool, host, eng = make(device, num_blocks=8, slots=4, own=False)
    slots = host.allocate(4)
    host.buffer[slots] = rand_blocks(4, 3)
    want = host.buffer[slots].clone()
    ids = pool.allocate(4)
    gate = hold_copies(eng)
    handle = eng.host_to_gpu(slots, ids)
    host.free(slots)
    with pytest.raises(OutOfSlots):
        host.allocate(1)
    gate.set()
    handle.wait_stream() if device == "cuda" else handle.wait()
    assert same_bytes(kv[ids], want)
    handle.wait()
    assert host.num_free == 4
    eng.close()


@pytest.mark.parametrize("device", DEVICES)
def test_host_disk_round_trip_and_misses(device, tmp_path):
    with DiskStore(str(tmp_path / "kv"), SPEC, FP, capacity_bytes=16 << 20) as disk:
        kv, pool, host, eng = make(device, disk=disk)
        hs = hashes(6, "hd")
        slots = host.allocate(6)
        host.buffer[slots] = rand_blocks(6, 4)
        want = host.buffer[slots].clone()
        put = eng.host_to_disk(hs, slots).wait()
        assert put.result.refused == [] and all(disk.contains(h) for h in hs)
        host.buffer[slots] = 0
        back = eng.disk_to_host(hs + hashes(1, "never"), slots + host.allocate(1)).wait()
        assert back.result.missing == hashes(1, "never")
        assert same_bytes(host.buffer[slots], want)
        assert eng.stats.disk_write_bytes == eng.stats.disk_read_bytes == 6 * SPEC.block_bytes
        eng.close()


@pytest.mark.parametrize("device", DEVICES)
def test_gpu_disk_through_a_small_staging_pool(device, tmp_path):
    with DiskStore(str(tmp_path / "kv"), SPEC, FP, capacity_bytes=16 << 20) as disk:
        staging = HostPool(SPEC, 4 * SPEC.block_bytes)
        kv, pool, host, eng = make(device, num_blocks=32, disk=disk, staging=staging)
        ids = random.Random(5).sample(range(32), 11)     # 11 blocks through 4 staging slots
        hs = hashes(11, "gd")
        want = kv[ids].clone()
        assert eng.gpu_to_disk(hs, ids).wait().result.refused == []
        assert staging.num_free == 4 and all(disk.contains(h) for h in hs)
        # corrupt one block on disk: it must come back as a miss and leave its GPU block alone
        db = disk.open_db("kv_blocks")
        key = bytes([len(FP)]) + FP + hs[3]
        with disk.env.begin(write=True, db=db) as txn:
            val = bytearray(txn.get(key))
            val[-5] ^= 0x01
            txn.put(key, bytes(val))
        dst = random.Random(6).sample(range(32), 11)
        kv[dst] = 0
        back = eng.disk_to_gpu(hs, dst).wait()
        assert back.result.missing == [hs[3]] and disk.stats.checksum_failures == 1
        for i, (g, h) in enumerate(zip(dst, hs)):
            if h == hs[3]:
                assert not kv[g].any()
            else:
                assert same_bytes(kv[g], want[i])
        assert staging.num_free == 4 and all(pool.ref_count(b) == 1 for b in dst)
        pool.check_invariants()
        eng.close()


def test_a_failed_batch_raises_on_wait_and_still_releases_its_references(tmp_path):
    other = KVCacheSpec(num_layers=1, num_kv_heads=2, head_dim=32, block_size=4,
                        dtype=torch.bfloat16)                   # the store holds other blocks
    with DiskStore(str(tmp_path / "kv"), other, FP, capacity_bytes=1 << 20) as disk:
        kv, pool, host, eng = make("cpu", disk=disk)
        slots = host.allocate(2)
        handle = eng.host_to_disk(hashes(2, "bad-shape"), slots)
        with pytest.raises(ValueError, match="store holds"):
            handle.wait()
        assert handle.ready() and isinstance(handle.error, ValueError)
        assert handle.result.refused == [] and eng.stats.disk_write_bytes == 0
        assert all(host.ref_count(s) == 1 for s in slots) and eng.poll() == 0
        eng.close()
