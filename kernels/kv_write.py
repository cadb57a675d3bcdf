"""Write this step's K/V into the paged cache: one program per token, K and V rows in one go."""
from __future__ import annotations

import torch

from kernels._triton import check_device, kernel, next_power_of_2

tl = None  # triton.language, bound on the first launch (see kernels/_triton.py)


def _check(k: torch.Tensor, v: torch.Tensor, kv_layer: torch.Tensor,
           slot_mapping: torch.Tensor) -> None:
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"k and v must be [num_tokens, num_kv_heads, head_dim] of one shape; "
                         f"got {tuple(k.shape)} and {tuple(v.shape)}")
    if kv_layer.dim() != 5 or kv_layer.shape[1] != 2 or kv_layer.shape[3:] != k.shape[1:]:
        raise ValueError(f"kv_layer must be [num_blocks, 2, block_size, {k.shape[1]}, "
                         f"{k.shape[2]}]; got {tuple(kv_layer.shape)}")
    if slot_mapping.shape != (k.shape[0],):
        raise ValueError(f"slot_mapping must be [num_tokens={k.shape[0]}]; "
                         f"got {tuple(slot_mapping.shape)}")


def write_kv_ref(k: torch.Tensor, v: torch.Tensor, kv_layer: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
    """k, v: [num_tokens, Hkv, D]; kv_layer: [num_blocks, 2, block_size, Hkv, D] (written in
    place); slot_mapping: int64 [num_tokens], slot = block * block_size + offset, -1 = skip."""
    _check(k, v, kv_layer, slot_mapping)
    block_size = kv_layer.shape[2]
    keep = slot_mapping >= 0                                   # [num_tokens]
    slots = slot_mapping[keep].long()                          # [n]
    blocks, offsets = slots // block_size, slots % block_size
    kv_layer[blocks, 0, offsets] = k[keep].to(kv_layer.dtype)  # [n, Hkv, D]
    kv_layer[blocks, 1, offsets] = v[keep].to(kv_layer.dtype)


@kernel
def _write_kv_kernel(
    k_ptr, v_ptr, kv_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kv_block, stride_kv_kv, block_size,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
):
    # One program per token: its [Hkv, D] row of K and of V, a contiguous run in the cache.
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        block = slot // block_size
        off = slot % block_size
        i = tl.arange(0, BLOCK)                       # flat index over [Hkv, D]
        mask = i < NUM_HEADS * HEAD_DIM
        h = i // HEAD_DIM
        d = i % HEAD_DIM
        t64 = t.to(tl.int64)
        kx = tl.load(k_ptr + t64 * stride_kt + h * stride_kh + d, mask=mask)
        vx = tl.load(v_ptr + t64 * stride_vt + h * stride_vh + d, mask=mask)
        dst = kv_ptr + block * stride_kv_block + off * (NUM_HEADS * HEAD_DIM) + i
        tl.store(dst, kx.to(kv_ptr.dtype.element_ty), mask=mask)
        tl.store(dst + stride_kv_kv, vx.to(kv_ptr.dtype.element_ty), mask=mask)


def write_kv(k: torch.Tensor, v: torch.Tensor, kv_layer: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Triton version of `write_kv_ref` (same arguments, writes kv_layer in place)."""
    _check(k, v, kv_layer, slot_mapping)
    check_device(k, v, kv_layer, slot_mapping)
    num_tokens, num_heads, head_dim = k.shape
    block_size = kv_layer.shape[2]
    if num_tokens == 0:
        return
    if k.stride(2) != 1:
        k = k.contiguous()
    if v.stride(2) != 1:
        v = v.contiguous()
    inner = (block_size * num_heads * head_dim, num_heads * head_dim, head_dim, 1)
    if tuple(kv_layer.stride()[1:]) != inner:
        raise ValueError("kv_layer's inner dims [2, block_size, Hkv, D] must be contiguous "
                         f"(strides {inner}); got strides {tuple(kv_layer.stride())}")
    block = next_power_of_2(num_heads * head_dim)
    _write_kv_kernel[(num_tokens,)](
        k, v, kv_layer, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        kv_layer.stride(0), kv_layer.stride(1), block_size,
        NUM_HEADS=num_heads, HEAD_DIM=head_dim, BLOCK=block,
        num_warps=4 if block >= 1024 else 2,
    )
