"""Gather whole cache blocks into one contiguous buffer, and scatter them back.

With the block-major layout each block (all layers, K and V) is one contiguous run of bytes, so
both directions are a wide copy of `n` runs: one program copies one CHUNK of one block.
"""
from __future__ import annotations

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
