"""Encoding a block for the disk tier lets the engine thread run.

The engine thread takes the GIL back after each of the hundreds of torch ops of a step. A
background thread that copies megabytes while holding the GIL makes each of those waits last a
switch interval, and a step then takes seconds (an H100 replay stalled for 5 s while the disk
tier wrote). The block's bytes must be copied with the GIL released.
"""
import statistics
import threading
import time

import numpy as np
import torch

from kvstore import block_codec as codec
from kvstore.spec import KVCacheSpec

SPEC = KVCacheSpec(32, 8, 128, 64, torch.bfloat16)     # 8 MiB blocks


def _step_ms(x: torch.Tensor) -> float:
    t = time.perf_counter()
    for _ in range(300):
        x = x + 1.0                       # each op releases the GIL and takes it back
    return (time.perf_counter() - t) * 1e3


def _median_step_ms(x: torch.Tensor, n: int = 15) -> float:
    return statistics.median(_step_ms(x) for _ in range(n))


def _step_ms_while_encoding(x: torch.Tensor, block: torch.Tensor, buf: bytearray) -> float:
    stop = threading.Event()
    encoded = [0]

    def encode_forever():
        while not stop.is_set():
            out = codec.encode_block(SPEC, b"fp", b"h" * 16, block, codec.CHECKSUM, buf)
            encoded[0] += 1
        assert len(out) > SPEC.block_bytes

    th = threading.Thread(target=encode_forever, daemon=True)
    th.start()
    time.sleep(0.05)
    try:
        return _median_step_ms(x)
    finally:
        stop.set()
        th.join()
        assert encoded[0] > 0


def test_encoding_blocks_does_not_stall_a_thread_running_torch_ops():
    block = torch.empty(SPEC.block_shape, dtype=SPEC.dtype).normal_()
    buf = bytearray(SPEC.block_bytes + codec.HEADER_MAX)
    x = torch.randn(8, 8)
    # Holding the GIL for each 8 MiB copy made a step 4x slower (1.4 -> 6.0 ms here), every
    # time; copied without it, 1.1-1.3x. A busy machine (2 cores, another process at work)
    # can slow one measurement as much, so the best of three (alone, during) pairs counts.
    tries = []
    for _ in range(3):
        alone = _median_step_ms(x)
        during = _step_ms_while_encoding(x, block, buf)
        tries.append((alone, during))
        if during < 2.5 * alone + 0.5:
            break
    assert during < 2.5 * alone + 0.5, \
        "; ".join(f"{a:.2f} ms alone, {d:.2f} ms while encoding" for a, d in tries)


def test_encoded_block_is_header_then_the_exact_bytes():
    block = torch.empty(SPEC.block_shape, dtype=SPEC.dtype).normal_()
    for buf in (None, bytearray(SPEC.block_bytes + codec.HEADER_MAX)):
        val = bytes(codec.encode_block(SPEC, b"fp", b"h" * 16, block, codec.CHECKSUM, buf))
        hdr, start = codec.decode_header(val)
        assert hdr["n"] == SPEC.block_bytes and len(val) == start + SPEC.block_bytes
        raw = np.frombuffer(val, dtype=np.uint8, offset=start)
        assert np.array_equal(raw, block.view(torch.uint8).reshape(-1).numpy())
        assert hdr["sum"] == codec.checksum(hdr["ck"], raw)
