"""How a KV block is laid out as an LMDB value: a self-describing header, then the raw bytes.

    key   = len(fingerprint) (1 byte) || model fingerprint || chained block hash
    value = msgpack header {v, fp, layers, dtype, shape, ck, sum, n} || raw block bytes
            (the block is [num_layers, 2, block_size, num_kv_heads, head_dim] in `dtype`)

The checksum is xxh3-64 when the `xxhash` package is present (tens of GB/s, far above any disk),
else CRC-32 from zlib (about 3 GB/s on one core, still above the disk, and zlib releases the GIL
on large buffers); blake2b/md5 run under 1 GB/s and would slow the tier. The header names the
algorithm, so each value is verified with the one that wrote it. A mismatch is a miss.
"""
from __future__ import annotations

import zlib

import msgpack
import numpy as np
import torch

from kvstore.spec import KVCacheSpec, dtype_name

try:
    import xxhash
except ImportError:  # pragma: no cover - depends on the machine
    xxhash = None

FORMAT_VERSION = 1
CHECKSUM = "xxh3_64" if xxhash is not None else "crc32"
HEADER_MAX = 1024                     # a header is read from at most this many leading bytes


def checksum(alg: str, data) -> int | None:
    """Checksum of a bytes-like object; None when `alg` is not available in this process."""
    if alg == "xxh3_64" and xxhash is not None:
        return xxhash.xxh3_64_intdigest(data)
    if alg == "crc32":
        return zlib.crc32(data)
    return None


def tensor_bytes(t: torch.Tensor) -> np.ndarray:
    """The raw bytes of a CPU tensor as a flat uint8 array (no copy when contiguous)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()


def block_key(prefix: bytes, h: bytes) -> bytes:
    return prefix + h


def key_prefix(fingerprint: bytes) -> bytes:
    return bytes([len(fingerprint)]) + fingerprint


def encode_block(spec: KVCacheSpec, fingerprint: bytes, h: bytes, t: torch.Tensor, alg: str,
                 buf: bytearray | None = None) -> bytes | memoryview:
    """header + raw bytes of block `t`, in `buf` when it is large enough (reused across
    batches: no fresh pages), else in new bytes."""
    if tuple(t.shape) != spec.block_shape or t.dtype != spec.dtype:
        raise ValueError(f"block {h.hex()} has shape {tuple(t.shape)} {t.dtype}; the store "
                         f"holds {spec.block_shape} {spec.dtype}")
    data = tensor_bytes(t)
    hdr = msgpack.packb({"v": FORMAT_VERSION, "fp": fingerprint, "layers": spec.num_layers,
                         "dtype": dtype_name(t.dtype), "shape": list(spec.block_shape),
                         "ck": alg, "sum": checksum(alg, data), "n": data.nbytes})
    n = len(hdr) + data.nbytes
    if buf is None or len(buf) < n:
        buf = bytearray(n)
    mv = memoryview(buf)
    mv[:len(hdr)] = hdr
    # numpy copies without the GIL; a memoryview or bytes copy of megabytes holds it, and the
    # engine thread, which takes the GIL back after each of the hundreds of ops of a step,
    # then waits a switch interval (5 ms) each time: steps of seconds while the disk tier
    # writes (an H100 agent replay had no turn finish for 5 s during a 6 GB spill).
    np.frombuffer(buf, dtype=np.uint8, count=data.nbytes, offset=len(hdr))[:] = data
    return mv[:n]


def max_header(spec: KVCacheSpec, fingerprint: bytes) -> bytes:
    """A header as long as any this module writes for `spec` (the widest checksum value)."""
    return msgpack.packb({"v": FORMAT_VERSION, "fp": fingerprint, "layers": spec.num_layers,
                          "dtype": dtype_name(spec.dtype), "shape": list(spec.block_shape),
                          "ck": "xxh3_64", "sum": (1 << 64) - 1, "n": spec.block_bytes})


def decode_header(val) -> tuple[dict | None, int]:
    """(header, offset of the raw bytes) of a stored value; (None, 0) if the header is damaged."""
    try:
        unpacker = msgpack.Unpacker()
        unpacker.feed(val[:HEADER_MAX])
        hdr = unpacker.unpack()
        return hdr, unpacker.tell()
    except (ValueError, msgpack.UnpackException):
        return None, 0


def header_matches(spec: KVCacheSpec, fingerprint: bytes, hdr, payload: int, want: int) -> bool:
    """Whether `hdr` describes a block of this store's format, model and shape whose `payload`
    bytes follow it and fill a `want`-byte destination."""
    return (isinstance(hdr, dict) and "sum" in hdr and "ck" in hdr
            and hdr.get("v") == FORMAT_VERSION
            and hdr.get("fp") == fingerprint and hdr.get("n") == payload == want
            and hdr.get("layers") == spec.num_layers
            and hdr.get("dtype") == dtype_name(spec.dtype)
            and tuple(hdr.get("shape", ())) == spec.block_shape)


def meta_record(seq: int, n: int) -> bytes:
    """The small `kv_meta` record that rebuilds the index on open."""
    return msgpack.packb({"v": FORMAT_VERSION, "seq": seq, "n": n})
