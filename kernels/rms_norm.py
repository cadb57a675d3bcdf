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


@kernel(do_not_specialize=("num_rows",))
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, new_res_ptr,
    num_rows, hidden, eps,
    stride_x, stride_res, stride_out, stride_new_res,
    HAS_RESIDUAL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
):
    # One program: BLOCK_R rows of [hidden], reduced in float32.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)      # [BLOCK_R]
    cols = tl.arange(0, BLOCK_H)                                    # [BLOCK_H]
    row_ok = rows < num_rows
    col_ok = cols < hidden
    mask = row_ok[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + rows64[:, None] * stride_res + cols[None, :], mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)  # add in x's dtype
        tl.store(new_res_ptr + rows64[:, None] * stride_new_res + cols[None, :], x, mask=mask)
    xf = x.to(tl.float32)
    inv_rms = 1.0 / tl.sqrt(tl.sum(xf * xf, 1) / hidden + eps)      # [BLOCK_R]
    normed = (xf * inv_rms[:, None]).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = w[None, :] * normed
    tl.store(out_ptr + rows64[:, None] * stride_out + cols[None, :],
             y.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None):
    """Triton version of `rms_norm_ref` (same arguments and results)."""
    _check(x, weight, residual)
    check_device(x, weight, *([] if residual is None else [residual]))
    num_rows, hidden = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    if residual is not None and residual.stride(1) != 1:
        residual = residual.contiguous()
    out = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    new_res = torch.empty_like(x) if residual is not None else None
    if num_rows > 0:
        block_h = next_power_of_2(hidden)
        block_r = max(1, min(16, 2048 // block_h))
        num_warps = 8 if block_h >= 4096 else 4 if block_h >= 1024 else 2
        _rms_norm_kernel[((num_rows + block_r - 1) // block_r,)](
            x, residual if residual is not None else x, weight, out,
            new_res if new_res is not None else out,
            num_rows, hidden, eps,
            x.stride(0), residual.stride(0) if residual is not None else 0, out.stride(0),
            new_res.stride(0) if new_res is not None else 0,
            HAS_RESIDUAL=residual is not None, BLOCK_R=block_r, BLOCK_H=block_h,
            num_warps=num_warps,
        )
    return out if residual is None else (out, new_res)
