"""Page-locked CPU memory for the host KV tier, committed by every core at once.

`torch.empty(..., pin_memory=True)` asks the CUDA driver for the whole buffer in one call, and the
driver faults in and zeroes its pages on one thread: about 2.7 GB/s on an H100 host, so a 32 GiB
CPU tier held a server's start for 11-13 s, longer than loading the model and capturing its
graphs together. Here the buffer is allocated pageable, aligned to 2 MiB (so that the kernel can
back it with huge pages), committed by a multi-threaded zero fill (torch's intra-op threads),
and then registered with the driver (`cudaHostRegister`), which only has to lock pages that are
already there. Copies treat registered memory as pinned: asynchronous DMA, no staging.

If registration fails (an old driver, a locked-memory limit), the buffer falls back to the
driver's own pinned allocation, as before.

The registration ends with the memory: `release()` unregisters it, and so does the buffer's
owner being freed (a pool dropped without `close`), before its pages go back to the system. A
range freed while still registered can come back from a later allocation, whose registration
the driver then refuses as "already mapped".
"""
from __future__ import annotations

import logging
import math
import time
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

log = logging.getLogger(__name__)

ALIGN = 2 * 2**20               # huge-page size: where the buffer starts
REGISTER_PORTABLE = 1           # cudaHostRegisterPortable: pinned for every CUDA context


@dataclass
class PinnedBuffer:
    tensor: torch.Tensor                    # [*shape] of dtype, page-locked
    release: Callable[[], None]             # unregisters (a no-op for the driver's allocation)
    registered: bool                        # True: committed here and registered
    seconds: float                          # time taken to commit and lock it


def _register(ptr: int, nbytes: int) -> int:
    err = int(torch.cuda.cudart().cudaHostRegister(ptr, nbytes, REGISTER_PORTABLE))
    if err:
        _clear_last_error()
    return err


def _clear_last_error() -> None:
    """A failed runtime call stays the runtime's last error until something reads it, and
    torch reads it after its next kernel launch and raises it there, far from its cause: read
    it here (a launch whose check raises it once)."""
    try:
        torch.empty(1, device="cuda").fill_(0)
    except RuntimeError:
        pass


def _unregister(ptr: int) -> int:
    return int(torch.cuda.cudart().cudaHostUnregister(ptr))


def _driver_pinned(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, pin_memory=True)


def aligned_empty(shape: tuple[int, ...], dtype: torch.dtype, align: int = ALIGN
                  ) -> torch.Tensor:
    """A pageable CPU tensor of `shape` whose first byte is `align`-aligned (a view into a
    slightly larger byte buffer, which its storage keeps alive)."""
    return _aligned(shape, dtype, align)[0]


def _aligned(shape: tuple[int, ...], dtype: torch.dtype, align: int
             ) -> tuple[torch.Tensor, np.ndarray]:
    """(the tensor, the array that owns its memory: freed only when no tensor uses it)."""
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + align, dtype=np.uint8)
    offset = (-raw.ctypes.data) % align
    return torch.from_numpy(raw[offset:offset + nbytes]).view(dtype).view(shape), raw


def pinned_empty(shape: tuple[int, ...], dtype: torch.dtype,
                 register: Callable[[int, int], int] = _register,
                 unregister: Callable[[int], int] = _unregister,
                 fallback: Callable[[tuple[int, ...], torch.dtype], torch.Tensor] = _driver_pinned
                 ) -> PinnedBuffer:
    """A page-locked CPU tensor of `shape` (see the module docstring); zero-filled unless the
    registration failed and `fallback` made it."""
    t0 = time.perf_counter()
    view, owner = _aligned(shape, dtype, ALIGN)
    view.view(torch.uint8).view(-1).zero_()          # commits every page, on every core
    nbytes, ptr = view.numel() * dtype.itemsize, view.data_ptr()
    try:
        err = register(ptr, nbytes)
    except Exception as e:                 # noqa: BLE001 - no CUDA runtime to ask: fall back
        err = f"{type(e).__name__}: {e}"
    if err != 0:
        log.warning("registering %.2f GiB of host memory with the CUDA driver failed (%s): "
                    "the driver allocates it pinned instead, on one thread (a slower start)",
                    nbytes / 2**30, err if isinstance(err, str) else f"cudaError {err}")
        del view, owner
        t = fallback(shape, dtype)
        return PinnedBuffer(t, lambda: None, False, time.perf_counter() - t0)
    done = [False]

    def release() -> None:
        if done[0]:
            return
        done[0] = True
        e = unregister(ptr)
        if e != 0:
            log.warning("unregistering host KV memory failed (cudaError %d)", e)

    # unregistered before the owner's memory is freed, when nothing called release() first
    weakref.finalize(owner, release).atexit = False
    return PinnedBuffer(view, release, True, time.perf_counter() - t0)
