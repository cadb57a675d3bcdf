"""The host side of a CUDA graph's inputs: pinned buffers that feed one static device buffer.

A step packs its inputs into the next of a ring of pinned int32 buffers and moves them with one
non-blocking copy into the static staging buffer its graph reads. A host buffer is rewritten
only after the copy that last read it has run (its event), so the host never waits for the
step in flight, only for one two steps back. On a CPU device the buffers are plain memory and
the copy is synchronous.
"""
from __future__ import annotations

import torch


class StagingRing:
    def __init__(self, words: int, device: torch.device, size: int = 3):
        self.pinned = device.type == "cuda"
        self.stage = torch.zeros(words, dtype=torch.int32, device=device)       # [words]
        self._host = [torch.zeros(words, dtype=torch.int32, pin_memory=self.pinned)
                      for _ in range(size)]
        self._events: list = [None] * size
        self._next = 0
        self._current = 0

    def host(self) -> torch.Tensor:
        """The next host buffer [words] int32, free to fill (its last copy has run)."""
        k = self._current = self._next
        self._next = (k + 1) % len(self._host)
        if self._events[k] is not None:
            self._events[k].synchronize()
        return self._host[k]

    def send(self, words: int) -> None:
        """Copy the first `words` of the buffer `host()` last gave into the stage."""
        k = self._current
        self.stage[:words].copy_(self._host[k][:words], non_blocking=self.pinned)
        if self.pinned:
            self._events[k] = torch.cuda.Event()
            self._events[k].record()
