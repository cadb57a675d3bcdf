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
