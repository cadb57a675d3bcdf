"""The host tier's page-locked buffer: aligned, committed in parallel, then registered with the
CUDA driver, falling back to the driver's own pinned allocation when registration fails. The
driver is replaced by recording fakes on CPU; the last test runs against a real GPU."""
import gc

import pytest
import torch

from kvstore.host_pool import HostPool
from kvstore.pinned import ALIGN, aligned_empty, pinned_empty
from kvstore.spec import KVCacheSpec

SHAPE = (5, 3, 2, 4, 2, 8)          # [slots, layers, 2, block_size, kv_heads, head_dim]


class FakeDriver:
    def __init__(self, register_result=0):
        self.result, self.registered, self.unregistered = register_result, [], []

    def register(self, ptr, nbytes):
        if isinstance(self.result, Exception):
            raise self.result
        self.registered.append((ptr, nbytes))
        return self.result

    def unregister(self, ptr):
        self.unregistered.append(ptr)
        return 0


def test_aligned_empty_starts_on_a_huge_page_and_spans_the_shape():
    for dtype in (torch.bfloat16, torch.float32):
        t = aligned_empty(SHAPE, dtype)
        assert t.shape == SHAPE and t.dtype == dtype and t.is_contiguous()
        assert t.data_ptr() % ALIGN == 0
        src = torch.randn(SHAPE).to(dtype)
        t.copy_(src)                                  # every byte of the range is writable
        assert torch.equal(t, src)


def test_the_buffer_is_registered_whole_and_unregistered_once():
    drv = FakeDriver()
    got = pinned_empty(SHAPE, torch.bfloat16, drv.register, drv.unregister,
                       fallback=lambda s, d: pytest.fail("no fallback when registration works"))
    nbytes = torch.Size(SHAPE).numel() * 2
    assert got.registered and got.tensor.shape == SHAPE
    assert drv.registered == [(got.tensor.data_ptr(), nbytes)]
    assert not got.tensor.view(torch.uint8).any()
    got.release()
    got.release()
    assert drv.unregistered == [got.tensor.data_ptr()]


def test_a_buffer_dropped_without_release_is_unregistered_once_its_last_view_dies():
    drv = FakeDriver()
    got = pinned_empty(SHAPE, torch.bfloat16, drv.register, drv.unregister)
    ptr = got.tensor.data_ptr()
    slot = got.tensor[1]                 # a view, as a pool's slot views are
    del got
    gc.collect()
    assert drv.unregistered == []        # the memory is still in use: still registered
    slot.fill_(2.0)
    del slot
    gc.collect()
    assert drv.unregistered == [ptr]     # before the memory went back


@pytest.mark.parametrize("failure", [2, RuntimeError("no CUDA runtime")])
def test_failed_registration_falls_back_to_the_driver_allocation(failure, caplog):
    drv = FakeDriver(failure)
    made = []

    def fallback(shape, dtype):
        made.append((shape, dtype))
        return torch.empty(shape, dtype=dtype)

    got = pinned_empty(SHAPE, torch.float32, drv.register, drv.unregister, fallback=fallback)
    assert not got.registered and made == [(SHAPE, torch.float32)]
    assert got.tensor.shape == SHAPE
    got.release()
    assert drv.unregistered == []
    assert "registering" in caplog.text and "failed" in caplog.text


def test_a_pageable_pool_closes_as_a_no_op_and_stays_usable():
    spec = KVCacheSpec(num_layers=3, num_kv_heads=2, head_dim=8, block_size=4,
                       dtype=torch.bfloat16)
    pool = HostPool(spec, 4 * spec.block_bytes, pin_memory=False)
    pool.close()
    s = pool.allocate(1)
    pool.slot_view(s[0]).fill_(1.5)
    assert pool.slot_view(s[0]).eq(1.5).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="registers memory with a CUDA driver")
def test_a_pinned_pool_is_registered_and_copies_asynchronously_byte_exact():
    spec = KVCacheSpec(num_layers=4, num_kv_heads=2, head_dim=64, block_size=16,
                       dtype=torch.bfloat16)
    pool = HostPool(spec, 64 * spec.block_bytes, pin_memory=True)
    # torch's is_pinned() knows only its own allocator's memory: it says False for memory
    # registered with cudaHostRegister, which the driver copies as pinned all the same
    assert pool.registered and pool.buffer.data_ptr() % ALIGN == 0
    src = torch.randn((64, *spec.block_shape), device="cuda").to(spec.dtype)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        pool.buffer.copy_(src, non_blocking=True)
        done = torch.cuda.Event()
        done.record(stream)
        back = torch.empty_like(src)
        back.copy_(pool.buffer, non_blocking=True)
    stream.synchronize()
    assert done.query()
    assert torch.equal(back.view(torch.uint8), src.view(torch.uint8))
    assert torch.equal(pool.buffer.view(torch.uint8), src.cpu().view(torch.uint8))
    pool.close()
    assert not pool.registered
