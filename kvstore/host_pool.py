"""Pinned CPU memory for KV blocks: one preallocated tensor cut into block-sized slots.

    buffer: [num_slots, num_layers, 2, block_size, num_kv_heads, head_dim]

A slot holds one block, laid out exactly as on the GPU, so a block moves between the tiers as one
contiguous run of bytes. Slots are reference-counted: the tier that caches a block holds one
reference and every copy that reads or writes the slot holds another, so a slot freed while a copy
is in flight only returns to the free list when that copy has finished.
"""
from __future__ import annotations

import heapq
import logging
import threading
from typing import Iterable

import torch

from kvstore.pinned import pinned_empty
from kvstore.spec import KVCacheSpec

log = logging.getLogger(__name__)


class OutOfSlots(RuntimeError):
    """The host pool has fewer free slots than asked for."""


class HostPool:
    """`capacity_bytes // spec.block_bytes` block slots in one (pinned when possible) tensor.

    Thread-safe: copies finish on other threads and release their references there.
    Allocation hands out the lowest free slots first, so a batch of fresh slots is usually one
    contiguous run (one DMA).
    """

    def __init__(self, spec: KVCacheSpec, capacity_bytes: int, pin_memory: bool | None = None
                 ) -> None:
        self.spec = spec
        num_slots = int(capacity_bytes) // spec.block_bytes
        if num_slots <= 0:
            raise ValueError(f"host pool of {capacity_bytes} bytes holds no block: one block is "
                             f"{spec.block_bytes} bytes ({spec.block_shape} of {spec.dtype})")
        if pin_memory is None:
            pin_memory = torch.cuda.is_available()
        self.pinned = bool(pin_memory)
        # [num_slots, num_layers, 2, block_size, num_kv_heads, head_dim]
        self._release = lambda: None
        self.registered = False   # committed here and registered with the driver
        if self.pinned and torch.cuda.is_available():
            # committed on every core, then registered (kvstore/pinned.py): a 32 GiB tier
            # pinned by the driver alone held a server's start for 11-13 s
            got = pinned_empty((num_slots, *spec.block_shape), spec.dtype)
            self.buffer, self._release = got.tensor, got.release
            self.registered = got.registered
            log.info("host KV pool: %.2f GiB pinned in %.2f s (%s)",
                     num_slots * spec.block_bytes / 2**30, got.seconds,
                     "committed in parallel, registered" if got.registered else "by the driver")
        else:
            self.buffer = spec.allocate(num_slots, "cpu", pin_memory=self.pinned)
        self._num_slots = num_slots
        self._ref = [0] * num_slots
        self._free: list[int] = list(range(num_slots))  # a min-heap of free slot ids
        self._lock = threading.Lock()

    def close(self) -> None:
        """Unregister memory this pool registered with the CUDA driver (after the last copy
        that uses it; copies then run from pageable memory, synchronously)."""
        self._release()
        self.registered = False

    # -- queries -----------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """Number of slots."""
        return self._num_slots

    @property
    def capacity_bytes(self) -> int:
        return self._num_slots * self.spec.block_bytes

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self._num_slots - len(self._free)

    def ref_count(self, slot: int) -> int:
        return self._ref[slot]

    def slot_view(self, slot: int) -> torch.Tensor:
        """The slot's block: [num_layers, 2, block_size, num_kv_heads, head_dim] (a view)."""
        self._check(slot)
        return self.buffer[slot]

    def run_view(self, first: int, count: int) -> torch.Tensor:
        """Slots first..first+count-1: [count, *block_shape] (a contiguous view)."""
        self._check(first)
        self._check(first + count - 1)
        return self.buffer[first:first + count]

    # -- allocation --------------------------------------------------------------------------
    def allocate(self, n: int) -> list[int]:
        """`n` free slots, each with one reference; raises OutOfSlots if fewer are free."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} slots")
        with self._lock:
            if n > len(self._free):
                raise OutOfSlots(
                    f"host pool: asked for {n} slots, {len(self._free)} free of "
                    f"{self._num_slots} (capacity {self.capacity_bytes / 2**30:.3f} GiB, "
                    f"{self.spec.block_bytes} bytes per block); free slots or raise cpu_cache_gb")
            out = [heapq.heappop(self._free) for _ in range(n)]
            for s in out:
                self._ref[s] = 1
            return out

    def incref(self, slots: Iterable[int]) -> None:
        """Take one more reference on allocated slots (a copy that reads or writes them)."""
        with self._lock:
            slots = list(slots)
            for s in slots:
                self._check(s)
                if self._ref[s] <= 0:
                    raise RuntimeError(f"host slot {s} is free: allocate it before taking a "
                                       f"reference")
            for s in slots:
                self._ref[s] += 1

    def decref(self, slots: Iterable[int]) -> None:
        """Drop one reference; a slot whose count reaches zero returns to the free list."""
        with self._lock:
            slots = list(slots)
            for s in slots:
                self._check(s)
            for s in slots:
                if self._ref[s] <= 0:
                    raise RuntimeError(f"host slot {s} released more often than referenced")
                self._ref[s] -= 1
                if self._ref[s] == 0:
                    heapq.heappush(self._free, s)

    def free(self, slots: Iterable[int]) -> None:
        """The owner lets go of its slots (same as decref: in-flight copies keep them alive)."""
        self.decref(slots)

    def _check(self, slot: int) -> None:
        if not 0 <= slot < self._num_slots:
            raise IndexError(f"host slot {slot} out of range 0..{self._num_slots - 1}")


def contiguous_runs(ids: list[int]) -> list[tuple[int, int, int]]:
    """Runs of consecutive ids in `ids` (in the given order): (position, first id, length)."""
    runs: list[tuple[int, int, int]] = []
    i = 0
    while i < len(ids):
        j = i + 1
        while j < len(ids) and ids[j] == ids[j - 1] + 1:
            j += 1
        runs.append((i, ids[i], j - i))
        i = j
    return runs


def paired_runs(src: list[int], dst: list[int]) -> list[tuple[int, int, int, int]]:
    """Runs where both `src` and `dst` ids are consecutive: (position, src first, dst first, n)."""
    runs: list[tuple[int, int, int, int]] = []
    i = 0
    while i < len(src):
        j = i + 1
        while j < len(src) and src[j] == src[j - 1] + 1 and dst[j] == dst[j - 1] + 1:
            j += 1
        runs.append((i, src[i], dst[i], j - i))
        i = j
    return runs


def _by_slot(ids: list[int], slots: list[int]) -> tuple[list[int], list[int]]:
    order = sorted(range(len(slots)), key=slots.__getitem__)
    return [ids[i] for i in order], [slots[i] for i in order]


def _use_direct(kv: torch.Tensor, mode: str, n_runs: int, n: int) -> bool:
    """"direct": one DMA per contiguous run (a 2 MiB block is already one run) and no SM work;
    "staged": a gather into a GPU staging tensor, then few large DMAs. On an H200 both reach
    ~93% of the pinned ceiling for 2048 scattered 2 MiB blocks, but the staged gather slows a
    decode step beside it (3.5% D2H, 16% H2D) where direct copies barely do (0.5%, 6%), so
    "auto" is direct (bench/results/transfer-h200-*.json)."""
    return not kv.is_cuda or mode != "staged"


def _device_index(ids: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.long).pin_memory().to(device, non_blocking=True)


def copy_blocks_out(kv: torch.Tensor, ids: list[int], host: torch.Tensor, slots: list[int],
                    mode: str = "auto", chunk_blocks: int = 64) -> None:
    """host[slots[i]] <- kv[ids[i]] for all i, queued on the current stream (non-blocking).

    kv: [num_blocks, *block_shape] (GPU or CPU); host: [num_slots, *block_shape] (pinned).
    """
    ids, slots = _by_slot(ids, slots)
    for c in range(0, len(ids), chunk_blocks):
        g, h = ids[c:c + chunk_blocks], slots[c:c + chunk_blocks]
        runs = paired_runs(g, h)
        if _use_direct(kv, mode, len(runs), len(g)):
            for _, g0, h0, n in runs:
                host[h0:h0 + n].copy_(kv[g0:g0 + n], non_blocking=True)
            continue
        stage = torch.index_select(kv, 0, _device_index(g, kv.device))  # [n, *block_shape]
        for i, h0, n in contiguous_runs(h):
            host[h0:h0 + n].copy_(stage[i:i + n], non_blocking=True)


def copy_blocks_in(kv: torch.Tensor, ids: list[int], host: torch.Tensor, slots: list[int],
                   mode: str = "auto", chunk_blocks: int = 64) -> None:
    """kv[ids[i]] <- host[slots[i]] for all i, queued on the current stream (non-blocking)."""
    ids, slots = _by_slot(ids, slots)
    for c in range(0, len(ids), chunk_blocks):
        g, h = ids[c:c + chunk_blocks], slots[c:c + chunk_blocks]
        runs = paired_runs(g, h)
        if _use_direct(kv, mode, len(runs), len(g)):
            for _, g0, h0, n in runs:
                kv[g0:g0 + n].copy_(host[h0:h0 + n], non_blocking=True)
            continue
        stage = torch.empty((len(g), *kv.shape[1:]), dtype=kv.dtype, device=kv.device)
        for i, h0, n in contiguous_runs(h):
            stage[i:i + n].copy_(host[h0:h0 + n], non_blocking=True)
        kv.index_copy_(0, _device_index(g, kv.device), stage)
