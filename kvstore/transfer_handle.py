"""The handles of asynchronous block copies: one batch (`TransferHandle`), several seen as one
(`TransferGroup`), what a batch did (`TransferResult`) and the bytes moved (`TransferStats`).

A handle is complete when its future (the background thread's work, if any) is done and its CUDA
event (if any) has fired; `ready()` polls, `wait()` blocks, and completion drops the references
the batch held and runs its callbacks, on the thread that saw it complete.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class TransferStats:
    """Bytes moved by completed batches, per direction."""
    d2h_bytes: int = 0
    h2d_bytes: int = 0
    disk_write_bytes: int = 0
    disk_read_bytes: int = 0
    batches: int = 0


@dataclass
class TransferResult:
    """What a batch did: blocks (by hash) that a disk read missed or a disk write refused."""
    missing: list[bytes] = field(default_factory=list)
    refused: list[bytes] = field(default_factory=list)


class TransferHandle:
    """One batch of copies. Complete when its future (if any) is done and its event fired."""

    def __init__(self, kind: str, nbytes: int, future: Future | None = None,
                 event: "torch.cuda.Event | None" = None,
                 release: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self.nbytes = nbytes
        self._future = future
        self._event = event
        self._release = release
        self._callbacks: list[Callable[["TransferHandle"], None]] = []
        self._done = False
        self._lock = threading.Lock()

    def ready(self) -> bool:
        """True once the data is in place (releases the batch's references then)."""
        if self._done:
            return True
        if self._future is not None and not self._future.done():
            return False
        if self._event is not None and not self._event.query():
            return False
        self._finish()
        return True

    def wait(self, timeout: float | None = None) -> "TransferHandle":
        """Block until the batch is complete; raises what the batch raised (after releasing
        its references)."""
        if self._future is not None:
            self._future.exception(timeout)          # waits; TimeoutError if it runs over
        if self._event is not None and self.error is None:
            self._event.synchronize()
        self._finish()
        if self.error is not None:
            raise self.error
        return self

    def wait_stream(self, stream: "torch.cuda.Stream | None" = None) -> None:
        """Make a CUDA stream (default: current) wait for the copy, without blocking the host
        beyond the few microseconds the background thread takes to issue it."""
        if self._event is None:
            self.wait()
            return
        if self._future is not None:
            self._future.result()
        (stream or torch.cuda.current_stream(self._event.device)).wait_event(self._event)

    def add_done_callback(self, fn: Callable[["TransferHandle"], None]) -> None:
        """Run `fn(handle)` on the thread that first sees the batch complete."""
        with self._lock:
            if not self._done:
                self._callbacks.append(fn)
                return
        fn(self)

    @property
    def result(self) -> TransferResult:
        """What the batch did; empty when it had no result or failed (see `error`)."""
        if self._future is None or self.error is not None:
            return TransferResult()
        r = self._future.result()
        return r if isinstance(r, TransferResult) else TransferResult()

    @property
    def error(self) -> BaseException | None:
        return self._future.exception() if self._future is not None and \
            self._future.done() else None

    def _finish(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            cbs, self._callbacks = self._callbacks, []
        if self._release is not None:
            self._release()
        for fn in cbs:
            fn(self)


class TransferGroup(TransferHandle):
    """Several batches seen as one: complete when all are; results are merged."""

    def __init__(self, kind: str, handles: list[TransferHandle]) -> None:
        super().__init__(kind, sum(h.nbytes for h in handles))
        self.handles = handles
        self.not_started: list[bytes] = []     # blocks the caller could not schedule
        self.gpu_blocks: dict[bytes, int] = {}  # filled by prefetch as blocks land
        # The group completes (and runs its callbacks) when its last part is seen complete,
        # whoever sees it: the parts are polled by the engine, the group itself need not be.
        for h in handles:
            h.add_done_callback(lambda _h: self._part_done())
        if not handles:
            self._finish()

    def _part_done(self) -> None:
        if not self._done and all(h._done for h in self.handles):
            self._finish()

    def ready(self) -> bool:
        if self._done:
            return True
        if not all(h.ready() for h in self.handles):
            return False
        self._finish()
        return True

    def wait(self, timeout: float | None = None) -> "TransferGroup":
        for h in self.handles:
            h.wait(timeout)
        self._finish()
        return self

    def wait_stream(self, stream: "torch.cuda.Stream | None" = None) -> None:
        for h in self.handles:
            h.wait_stream(stream)

    @property
    def result(self) -> TransferResult:
        out = TransferResult(missing=list(self.not_started))
        for h in self.handles:
            r = h.result
            out.missing += r.missing
            out.refused += r.refused
        return out

    @property
    def error(self) -> BaseException | None:
        return next((e for e in (h.error for h in self.handles) if e is not None), None)
