"""Lazy access to Triton.

Importing `kernels` never imports Triton: each kernel is a plain function wrapped in
`LazyKernel`, and it is handed to `triton.jit` on its first launch. That keeps the import cheap,
lets the references run where Triton is not installed (macOS), and means `TRITON_INTERPRET=1`
only has to be set before the first Triton launch, not before the first import.

CPU runs go through Triton's interpreter: call `use_interpreter_without_cuda()` before the first
launch (the kernel tests do so at their top; `tests/conftest.py` also sets it when CUDA is absent).
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable

import torch


@functools.lru_cache(maxsize=None)
def _modules() -> tuple[Any, Any] | None:
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None
    return triton, tl


def triton_available() -> bool:
    """True when Triton imports on this machine."""
    return _modules() is not None


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreter_needs_f32_dot(dtype: torch.dtype) -> bool:
    """Triton's interpreter multiplies bfloat16 `tl.dot` operands as raw 16-bit integers; kernels
    take this flag as a constexpr and upcast the operands to float32 there (never when compiled)."""
    return interpreter_enabled() and dtype == torch.bfloat16


def use_interpreter_without_cuda() -> None:
    """Run Triton kernels on the CPU through the interpreter when no CUDA device is present."""
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def triton_module() -> Any:
    mods = _modules()
    if mods is None:
        raise RuntimeError("Triton is not installed; use the torch backend "
                           "(get_kernel_ops('torch')) or install triton")
    return mods[0]


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def check_device(*tensors: torch.Tensor) -> None:
    """Triton kernels need CUDA tensors, or CPU tensors under the interpreter."""
    dev = tensors[0].device
    for t in tensors:
        if t.device != dev:
            raise ValueError(f"all tensors must be on one device; got {dev} and {t.device}")
    if dev.type == "cpu" and not interpreter_enabled():
        raise RuntimeError("Triton kernels on CPU tensors need TRITON_INTERPRET=1 set before the "
                           "first launch; on CPU use the torch backend instead")


class LazyKernel:
    """A Triton kernel compiled by `triton.jit` on first launch: `kernel[grid](*args)`."""

    def __init__(self, fn: Callable, do_not_specialize: tuple[str, ...] = ()):
        self._fn = fn
        self._jit = None
        self.do_not_specialize = do_not_specialize
        functools.update_wrapper(self, fn)

    def _compiled(self):
        if self._jit is None:
            triton = triton_module()
            import triton.language as tl
            # The kernel body names `tl`, which its module declares as None until now; Triton
            # resolves it from the function's module globals.
            g = self._fn.__globals__
            if g.get("tl") is None:
                g["tl"] = tl
            # helpers this kernel calls are LazyKernels too: Triton must see them compiled
            for name in self._fn.__code__.co_names:
                value = g.get(name)
                if isinstance(value, LazyKernel) and value is not self:
                    g[name] = value._compiled()
            self._jit = triton.jit(self._fn, do_not_specialize=list(self.do_not_specialize))
        return self._jit

    def __getitem__(self, grid):
        return self._compiled()[grid]


def kernel(fn: Callable | None = None, *, do_not_specialize: tuple[str, ...] = ()):
    """Decorator: mark `fn` as a Triton kernel (or a helper called from one), compiled lazily.

    Triton compiles one variant per value class of each integer argument (1, a multiple of 16,
    other). An argument that changes from step to step (sequence count, tiles, block-table
    width) would compile new variants mid-serving, a second or two each inside an engine step:
    name such arguments in `do_not_specialize` (`@kernel(do_not_specialize=("num_seqs",))`)."""
    if fn is None:
        return lambda f: LazyKernel(f, tuple(do_not_specialize))
    return LazyKernel(fn, tuple(do_not_specialize))
