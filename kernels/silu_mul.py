"""SiLU-gated product of the MLP, fused: out = silu(gate) * up from the gate_up projection.

The gate_up projection writes [num_tokens, 2 * intermediate]: gate in the first half of each row,
up in the second. Unfused, torch reads that twice and writes two intermediates (silu(gate), then
the product); the kernel reads each element once and writes the product once. Rounding matches
Hugging Face's `act_fn(gate) * up` in the input dtype: silu is computed in float32 and rounded to
the dtype, then the product is computed in float32 and rounded once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._triton import check_device, kernel

tl = None  # triton.language, bound on the first launch (see kernels/_triton.py)

BLOCK = 1024


def _check(gate_up: torch.Tensor) -> None:
    if gate_up.dim() != 2 or gate_up.shape[1] % 2:
        raise ValueError(f"gate_up must be [num_tokens, 2 * intermediate]; got "
                         f"{tuple(gate_up.shape)}")


def silu_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up: [num_tokens, 2 * intermediate] -> [num_tokens, intermediate]."""
    _check(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@kernel
def _silu_mul_kernel(x_ptr, out_ptr, inter, stride_x, stride_out, BLOCK: tl.constexpr):
    # Program (row, j): columns [j * BLOCK, (j + 1) * BLOCK) of one token's row.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)           # [BLOCK]
    ok = cols < inter
    g = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + row * stride_x + inter + cols, mask=ok, other=0.0).to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (act * u).to(out_ptr.dtype.element_ty), mask=ok)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """Triton version of `silu_mul_ref` (same argument and result)."""
    _check(gate_up)
    check_device(gate_up)
    if gate_up.stride(1) != 1:
        gate_up = gate_up.contiguous()
    n, two_i = gate_up.shape
    inter = two_i // 2
    out = torch.empty((n, inter), dtype=gate_up.dtype, device=gate_up.device)
    if n > 0 and inter > 0:
        _silu_mul_kernel[(n, (inter + BLOCK - 1) // BLOCK)](
            gate_up, out, inter, gate_up.stride(0), out.stride(0), BLOCK=BLOCK,
            num_warps=4)
    return out
