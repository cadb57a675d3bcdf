"""Choose the kernel implementation: Triton kernels on CUDA, torch references elsewhere."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch

from kernels._triton import triton_available

# op name -> module holding both `name` (Triton) and `name_ref` (torch)
_OPS = {
    "write_kv": "kernels.kv_write",
    "paged_prefill_attention": "kernels.attention_prefill",
    "paged_decode_attention": "kernels.attention_decode",
    "rms_norm": "kernels.rms_norm",
    "silu_mul": "kernels.silu_mul",
    "apply_rotary": "kernels.rotary",
    "pack_blocks": "kernels.block_copy",
    "unpack_blocks": "kernels.block_copy",
}

BACKENDS = ("auto", "triton", "torch")


@dataclass(frozen=True)
class KernelOps:
    """The kernels one model step uses; every field has the signature of its `kernels.*` op."""
    backend: str                        # "triton" or "torch"
    write_kv: Callable
    paged_prefill_attention: Callable
    paged_decode_attention: Callable
    rms_norm: Callable
    silu_mul: Callable
    apply_rotary: Callable
    pack_blocks: Callable
    unpack_blocks: Callable


def resolve_backend(backend: str = "auto", device: str | torch.device = "cpu") -> str:
    """"auto" -> "triton" on a CUDA device when Triton imports, else "torch"."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    on_cuda = torch.device(device).type == "cuda"
    return "triton" if on_cuda and triton_available() else "torch"


def get_kernel_ops(backend: str = "auto", device: str | torch.device = "cpu") -> KernelOps:
    chosen = resolve_backend(backend, device)
    if chosen == "triton" and not triton_available():
        raise RuntimeError("backend 'triton' asked for but Triton is not installed; "
                           "use 'torch' or 'auto'")
    suffix = "" if chosen == "triton" else "_ref"
    fns = {name: getattr(importlib.import_module(mod), name + suffix) for name, mod in _OPS.items()}
    return KernelOps(backend=chosen, **fns)
