"""RMSNorm with optional fused residual add, matching Hugging Face's LlamaRMSNorm bit for bit.

HF: out = weight * (x.float() * rsqrt(mean(x.float()^2) + eps)).to(x.dtype). With a residual
the input is first replaced by x + residual, added in x's dtype, and that sum is returned too.
"""
from __future__ import annotations

import torch

from kernels._triton import check_device, kernel, next_power_of_2

tl = None  # triton.language, bound on the first launch (see kernels/_triton.py)


def _check(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None) -> None:
    if x.dim() != 2 or weight.shape != (x.shape[1],):
        raise ValueError(f"x must be [num_tokens, hidden] and weight [hidden]; got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must have x's shape {tuple(x.shape)}; "
                         f"got {tuple(residual.shape)}")


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None):
    """x: [num_tokens, hidden]; weight: [hidden]. Returns out, or (out, x + residual)."""
    _check(x, weight, residual)
    h = x if residual is None else x + residual.to(x.dtype)   # [num_tokens, hidden]
    hf = h.float()
    normed = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * normed.to(x.dtype)
    return out if residual is None else (out, h)
