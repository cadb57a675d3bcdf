"""Rotary position embedding (Neox / Hugging Face "rotate_half" convention) and its cos/sin table.

cos_sin_cache: [max_positions, head_dim] float32 = cat(cos(pos * inv_freq), sin(pos * inv_freq)),
head_dim // 2 frequencies each, times the attention scaling. Applying it follows HF exactly:
cos and sin are duplicated over both halves and cast to x's dtype, then
x * cos + rotate_half(x) * sin, each product rounded to x's dtype.
"""
from __future__ import annotations

import math

import torch

from kernels._triton import check_device, kernel, next_power_of_2

tl = None  # triton.language, bound on the first launch (see kernels/_triton.py)


def default_inv_freq(base: float, head_dim: int) -> torch.Tensor:
    """[head_dim // 2] float32: base ** (-2i / head_dim), as transformers' "default" rope."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def llama3_inv_freq(base: float, head_dim: int, factor: float, low_freq_factor: float,
                    high_freq_factor: float, original_max_position_embeddings: int
                    ) -> torch.Tensor:
    """[head_dim // 2] float32: Llama 3.1 frequency scaling, as transformers' "llama3" rope."""
    inv_freq = default_inv_freq(base, head_dim)
    old_context_len = original_max_position_embeddings
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # long wavelengths are divided by factor, short ones kept, the middle band interpolated
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def build_cos_sin_cache(inv_freq: torch.Tensor, max_positions: int,
                        attention_scaling: float = 1.0) -> torch.Tensor:
    """inv_freq: [head_dim // 2] -> [max_positions, head_dim] float32 = cat(cos, sin)."""
    pos = torch.arange(max_positions, dtype=torch.int64, device=inv_freq.device).float()
    freqs = pos[:, None] * inv_freq.float()[None, :]        # [max_positions, head_dim // 2]
    return torch.cat((freqs.cos() * attention_scaling, freqs.sin() * attention_scaling), dim=-1)


def _check(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
           cos_sin_cache: torch.Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"q must be [tokens, Hq, D] and k [tokens, Hkv, D]; got "
                         f"{tuple(q.shape)} and {tuple(k.shape)}")
    if positions.shape != (q.shape[0],):
        raise ValueError(f"positions must be [num_tokens={q.shape[0]}]; "
                         f"got {tuple(positions.shape)}")
    if cos_sin_cache.dim() != 2 or cos_sin_cache.shape[1] != q.shape[2]:
        raise ValueError(f"cos_sin_cache must be [max_positions, head_dim={q.shape[2]}]; "
                         f"got {tuple(cos_sin_cache.shape)}")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_ref(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                     cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [tokens, Hq, D]; k: [tokens, Hkv, D]; positions: int64 [tokens] -> rotated (q, k)."""
    _check(q, k, positions, cos_sin_cache)
    cos, sin = cos_sin_cache[positions.long()].float().chunk(2, dim=-1)  # [tokens, D/2] each
    cos = torch.cat((cos, cos), dim=-1)[:, None, :]                      # [tokens, 1, D]
    sin = torch.cat((sin, sin), dim=-1)[:, None, :]
    rotated = []
    for x in (q, k):
        c, s = cos.to(x.dtype), sin.to(x.dtype)
        rotated.append((x * c) + (_rotate_half(x) * s))
    return rotated[0], rotated[1]


@kernel
def _rotary_kernel(
    q_ptr, k_ptr, pos_ptr, cs_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_cs,
    NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    # One program per token: all q and k heads, in place.
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    j = tl.arange(0, BLOCK_HALF)
    j_ok = j < HALF
    cos = tl.load(cs_ptr + pos * stride_cs + j, mask=j_ok, other=0.0)          # [BLOCK_HALF]
    sin = tl.load(cs_ptr + pos * stride_cs + HALF + j, mask=j_ok, other=0.0)
    for which in tl.static_range(2):
        if which == 0:
            ptr, stride_t, stride_h = q_ptr, stride_qt, stride_qh
            heads = tl.arange(0, BLOCK_HQ)
            h_ok = heads < NUM_Q_HEADS
        else:
            ptr, stride_t, stride_h = k_ptr, stride_kt, stride_kh
            heads = tl.arange(0, BLOCK_HK)
            h_ok = heads < NUM_KV_HEADS
        dt = ptr.dtype.element_ty
        c = cos.to(dt).to(tl.float32)[None, :]                  # HF casts cos/sin to x's dtype
        s = sin.to(dt).to(tl.float32)[None, :]
        mask = h_ok[:, None] & j_ok[None, :]
        p1 = ptr + t * stride_t + heads[:, None] * stride_h + j[None, :]    # first half
        x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(p1 + HALF, mask=mask, other=0.0).to(tl.float32)
        # x * cos + rotate_half(x) * sin, each product rounded to x's dtype as in HF
        o1 = (x1 * c).to(dt).to(tl.float32) + (-x2 * s).to(dt).to(tl.float32)
        o2 = (x2 * c).to(dt).to(tl.float32) + (x1 * s).to(dt).to(tl.float32)
        tl.store(p1, o1.to(dt), mask=mask)
        tl.store(p1 + HALF, o2.to(dt), mask=mask)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                 cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of `apply_rotary_ref`; rotates q and k in place and returns them."""
    _check(q, k, positions, cos_sin_cache)
    check_device(q, k, positions, cos_sin_cache)
    if q.stride(2) != 1 or k.stride(2) != 1 or cos_sin_cache.stride(1) != 1:
        raise ValueError("q, k and cos_sin_cache need a contiguous last dim")
    num_tokens, num_q_heads, head_dim = q.shape
    if head_dim % 2:
        raise ValueError(f"head_dim must be even; got {head_dim}")
    if num_tokens == 0:
        return q, k
    half = head_dim // 2
    block_hq = next_power_of_2(num_q_heads)
    _rotary_kernel[(num_tokens,)](
        q, k, positions, cos_sin_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos_sin_cache.stride(0),
        NUM_Q_HEADS=num_q_heads, NUM_KV_HEADS=k.shape[1], HALF=half,
        BLOCK_HQ=block_hq, BLOCK_HK=next_power_of_2(k.shape[1]),
        BLOCK_HALF=next_power_of_2(half),
        num_warps=4 if block_hq * half >= 1024 else 2,
    )
    return q, k
