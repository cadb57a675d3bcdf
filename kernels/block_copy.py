"""Gather whole cache blocks into one contiguous buffer, and scatter them back.

With the block-major layout each block (all layers, K and V) is one contiguous run of bytes, so
both directions are a wide copy of `n` runs: one program copies one CHUNK of one block.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels._triton import check_device, kernel

tl = None  # triton.language, bound on the first launch (see kernels/_triton.py)


def _check(kv: torch.Tensor, block_ids: torch.Tensor) -> None:
    if kv.dim() != 6 or kv.shape[2] != 2:
        raise ValueError("kv must be [num_blocks, num_layers, 2, block_size, num_kv_heads, "
                         f"head_dim]; got {tuple(kv.shape)}")
    if not kv.is_contiguous():
        raise ValueError("kv must be contiguous (block-major cache)")
    if block_ids.dim() != 1:
        raise ValueError(f"block_ids must be [n]; got {tuple(block_ids.shape)}")


def _check_buffer(kv: torch.Tensor, block_ids: torch.Tensor, buf: torch.Tensor, name: str
                  ) -> None:
    want = (block_ids.shape[0], *kv.shape[1:])
    if tuple(buf.shape) != want or buf.dtype != kv.dtype or not buf.is_contiguous():
        raise ValueError(f"{name} must be a contiguous {kv.dtype} tensor of shape {want}; got "
                         f"{buf.dtype} {tuple(buf.shape)} contiguous={buf.is_contiguous()}")


def pack_blocks_ref(kv: torch.Tensor, block_ids: torch.Tensor,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """kv: [num_blocks, L, 2, bs, Hkv, D]; block_ids: int64 [n] -> out [n, L, 2, bs, Hkv, D]."""
    _check(kv, block_ids)
    if out is None:
        out = torch.empty((block_ids.shape[0], *kv.shape[1:]), dtype=kv.dtype, device=kv.device)
    torch.index_select(kv, 0, block_ids.long(), out=out)
    return out


def unpack_blocks_ref(kv: torch.Tensor, block_ids: torch.Tensor, src: torch.Tensor) -> None:
    """Write src [n, L, 2, bs, Hkv, D] into kv[block_ids] in place."""
    _check(kv, block_ids)
    kv.index_copy_(0, block_ids.long(), src.to(kv.dtype))


@kernel
def _block_copy_kernel(
    src_ptr, dst_ptr, ids_ptr, block_numel,
    PACK: tl.constexpr, CHUNK: tl.constexpr,
):
    # Program (i, c) copies chunk c of the i-th listed block; one block = one contiguous run.
    i = tl.program_id(0)
    c = tl.program_id(1)
    block = tl.load(ids_ptr + i).to(tl.int64)
    offs = c.to(tl.int64) * CHUNK + tl.arange(0, CHUNK)
    mask = offs < block_numel
    packed = i.to(tl.int64) * block_numel
    cache = block * block_numel
    if PACK:
        x = tl.load(src_ptr + cache + offs, mask=mask, eviction_policy="evict_first")
        tl.store(dst_ptr + packed + offs, x, mask=mask)
    else:
        x = tl.load(src_ptr + packed + offs, mask=mask, eviction_policy="evict_first")
        tl.store(dst_ptr + cache + offs, x, mask=mask)


@dataclass(frozen=True)
class CopyConfig:
    chunk: int        # elements per program
    num_warps: int


def _default_config(device: torch.device) -> CopyConfig:
    # best of the H200 sweep (bench/kernels_notes.md)
    return CopyConfig(2048, 4) if device.type == "cuda" else CopyConfig(1024, 4)


def _launch(src: torch.Tensor, dst: torch.Tensor, block_ids: torch.Tensor, block_numel: int,
            pack: bool, config: CopyConfig | None) -> None:
    n = block_ids.shape[0]
    if n == 0:
        return
    cfg = config or _default_config(src.device)
    chunks = (block_numel + cfg.chunk - 1) // cfg.chunk
    _block_copy_kernel[(n, chunks)](src, dst, block_ids, block_numel,
                                    PACK=pack, CHUNK=cfg.chunk, num_warps=cfg.num_warps)


def pack_blocks(kv: torch.Tensor, block_ids: torch.Tensor, out: torch.Tensor | None = None,
                config: CopyConfig | None = None) -> torch.Tensor:
    """Triton version of `pack_blocks_ref`."""
    _check(kv, block_ids)
    check_device(kv, block_ids)
    if out is None:
        out = torch.empty((block_ids.shape[0], *kv.shape[1:]), dtype=kv.dtype, device=kv.device)
    _check_buffer(kv, block_ids, out, "out")
    _launch(kv, out, block_ids, kv[0].numel(), True, config)
    return out


def unpack_blocks(kv: torch.Tensor, block_ids: torch.Tensor, src: torch.Tensor,
                  config: CopyConfig | None = None) -> None:
    """Triton version of `unpack_blocks_ref` (block_ids must not repeat)."""
    _check(kv, block_ids)
    check_device(kv, block_ids, src)
    _check_buffer(kv, block_ids, src, "src")
    _launch(src, kv, block_ids, kv[0].numel(), False, config)
