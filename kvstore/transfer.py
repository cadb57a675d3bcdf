"""Asynchronous block copies between the GPU cache, the host pool and the disk store.

GPU<->CPU copies are issued by one background thread (`CopyIssuer`), so the engine thread spends
microseconds per batch whatever its size; a CUDA event per batch tells when the data is there.
Loads (host->GPU) and stores (GPU->host) have their own queue and their own CUDA stream: the
issuer serves loads first, and a store is issued in chunks of `store_chunk_blocks`, the next one
only once the last has completed, so a load waits behind at most one store chunk. CPU<->disk
moves run on threads too (the disk store's writer; a load chain for disk reads and a store chain
for GPU->disk spills, so a spill never holds up a disk->GPU prefix load).
Every handle holds references on what its copy reads or writes (GPU blocks through the
`gpu_incref`/`gpu_decref` callbacks, host slots through HostPool refcounts) and drops them once
the copy is seen complete (`ready()`, `wait()` or `TransferEngine.poll()`, on the engine thread),
so a block freed during a copy is not reused before the copy has finished.

On a CPU-only machine `gpu_kv` is a CPU tensor and the same API works: copies run on the
background thread and handles complete through futures.

    gpu_kv: [num_gpu_blocks, num_layers, 2, block_size, num_kv_heads, head_dim]
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence

import torch

from kvstore.copy_issuer import CopyIssuer
from kvstore.disk import DiskStore
from kvstore.host_pool import HostPool, copy_blocks_in, copy_blocks_out
from kvstore.transfer_handle import (TransferGroup, TransferHandle, TransferResult,  # noqa: F401
                                     TransferStats)

RefFn = Callable[[Sequence[int]], None]
STORE_CHUNK_BYTES = 64 << 20     # default size of one write-through chunk on the copy stream


def _done_bytes(fut: Future, nbytes: int, block_bytes: int) -> int:
    """Bytes a finished disk batch moved: all but its misses and refusals (none if it failed)."""
    if fut.exception() is not None:
        return 0
    r = fut.result()
    return nbytes - (len(r.missing) + len(r.refused)) * block_bytes


class TransferEngine:
    """Moves blocks between `gpu_kv`, `host_pool` and `disk` (may be None)."""

    def __init__(self, gpu_kv: torch.Tensor, host_pool: HostPool, disk: DiskStore | None = None,
                 *, gpu_incref: RefFn | None = None, gpu_decref: RefFn | None = None,
                 staging_pool: HostPool | None = None, mode: str = "auto",
                 chunk_blocks: int = 64, store_chunk_blocks: int | None = None) -> None:
        if mode not in ("auto", "direct", "staged"):
            raise ValueError(f"mode must be auto, direct or staged, got {mode!r}")
        if store_chunk_blocks is not None and store_chunk_blocks < 1:
            raise ValueError(f"store_chunk_blocks must be >= 1, got {store_chunk_blocks}")
        if tuple(gpu_kv.shape[1:]) != host_pool.spec.block_shape:
            raise ValueError(f"gpu_kv blocks {tuple(gpu_kv.shape[1:])} differ from the host "
                             f"pool's {host_pool.spec.block_shape}")
        self.kv = gpu_kv
        self.host = host_pool
        self.disk = disk
        self.staging = staging_pool if staging_pool is not None else host_pool
        self.mode = mode
        self.chunk_blocks = chunk_blocks
        self.block_bytes = host_pool.spec.block_bytes
        self.stats = TransferStats()
        self._incref = gpu_incref or (lambda ids: None)
        self._decref = gpu_decref or (lambda ids: None)
        # a store chunk: STORE_CHUNK_BYTES of blocks (~1-3 ms of PCIe/C2C), at least one block
        self.store_chunk_blocks = store_chunk_blocks or max(
            1, STORE_CHUNK_BYTES // self.block_bytes)
        self.is_cuda = gpu_kv.is_cuda
        # stores (GPU->host) on `stream`, loads (host->GPU) on `load_stream`: a load is never
        # queued on a stream behind a write-through
        self.stream = torch.cuda.Stream(gpu_kv.device) if self.is_cuda else None
        self.load_stream = torch.cuda.Stream(gpu_kv.device) if self.is_cuda else None
        self._last_store_event: "torch.cuda.Event | None" = None
        self._issuer = CopyIssuer(store_wait=self._store_wait)
        self._load_chain = ThreadPoolExecutor(1, thread_name_prefix="kv-disk-load")
        self._store_chain = ThreadPoolExecutor(1, thread_name_prefix="kv-disk-store")
        self._staging_cv = threading.Condition()
        self._pending: list[TransferHandle] = []
        self._stats_lock = threading.Lock()

    # -- GPU <-> CPU -------------------------------------------------------------------------
    def gpu_to_host(self, block_ids: Sequence[int], slots: Sequence[int]) -> TransferHandle:
        """Copy GPU blocks block_ids[i] into host slots slots[i] (after the work queued so far
        on the current stream)."""
        return self._gpu_host("d2h", list(block_ids), list(slots))

    def host_to_gpu(self, slots: Sequence[int], block_ids: Sequence[int],
                    after_compute: bool = True) -> TransferHandle:
        """Copy host slots slots[i] into GPU blocks block_ids[i]; call `wait_stream()` on the
        handle before a kernel reads them. `after_compute=False`: the blocks are idle (no
        launched kernel can still touch them), so the copy need not wait for the work queued so
        far on the current stream (a step in flight: tens of ms of prefill)."""
        return self._gpu_host("h2d", list(block_ids), list(slots), after_compute)

    def _gpu_host(self, kind: str, ids: list[int], slots: list[int],
                  after_compute: bool = True) -> TransferHandle:
        if len(ids) != len(slots):
            raise ValueError(f"{len(ids)} GPU blocks but {len(slots)} host slots")
        self.host.incref(slots)   # checks the slots are allocated before any reference is taken
        self._incref(ids)
        after = self._record_current() if after_compute else None
        event = torch.cuda.Event() if self.is_cuda else None
        if kind == "h2d":
            fut = self._issuer.submit(self._issue, kind, ids, slots, after, event)
        else:
            fut = self._issuer.submit_steps(self._store_steps(ids, slots, after, event), "store")
        nbytes = len(ids) * self.block_bytes

        def release() -> None:
            self.host.decref(slots)
            self._decref(ids)
            self._count(kind + "_bytes", nbytes if fut.exception() is None else 0)
        return self._track(TransferHandle(kind, nbytes, fut, event, release))

    def _store_steps(self, ids: list[int], slots: list[int], after, event) -> list:
        """One issuer step per chunk of `store_chunk_blocks`; the last records `event`."""
        step, n = self.store_chunk_blocks, len(ids)

        def chunk(i: int):
            ev = None
            if self.is_cuda:
                ev = event if i + step >= n else torch.cuda.Event()
            return lambda: self._issue("d2h", ids[i:i + step], slots[i:i + step], after, ev)
        return [chunk(i) for i in range(0, max(n, 1), step)]

    def _record_current(self) -> "torch.cuda.Event | None":
        if not self.is_cuda:
            return None
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(self.kv.device))
        return ev

    def _stream_for(self, kind: str) -> "torch.cuda.Stream":
        return self.load_stream if kind == "h2d" else self.stream

    def _store_wait(self) -> None:
        """Issuer thread, before a store chunk: wait for the last one to leave the copy stream
        (the GIL is released while waiting)."""
        ev, self._last_store_event = self._last_store_event, None
        if ev is not None:
            ev.synchronize()

    def _issue(self, kind: str, ids: list[int], slots: list[int], after, event) -> None:
        """On the issuer thread: queue the copies on the kind's copy stream (or do them, on
        CPU)."""
        if not self.is_cuda:
            self._copy(kind, self.host, ids, slots)
            return
        stream = self._stream_for(kind)
        with torch.cuda.device(self.kv.device), torch.cuda.stream(stream):
            if after is not None:
                stream.wait_event(after)
            self._copy(kind, self.host, ids, slots)
            event.record(stream)
        if kind == "d2h":
            self._last_store_event = event

    def _copy(self, kind: str, pool: HostPool, ids: list[int], slots: list[int]) -> None:
        fn = copy_blocks_out if kind == "d2h" else copy_blocks_in
        fn(self.kv, ids, pool.buffer, slots, mode=self.mode, chunk_blocks=self.chunk_blocks)

    # -- CPU <-> disk ------------------------------------------------------------------------
    def host_to_disk(self, hashes: Sequence[bytes], slots: Sequence[int]) -> TransferHandle:
        """Write host slots to disk under their block hashes (fsync'd when complete)."""
        disk = self._need_disk()
        hashes, slots = list(hashes), list(slots)
        self.host.incref(slots)
        put = disk.put_many([(h, self.host.slot_view(s)) for h, s in zip(hashes, slots)])
        fut = self._then(put, lambda r: TransferResult(refused=r.refused))
        nbytes = len(slots) * self.block_bytes

        def release() -> None:
            self.host.decref(slots)
            self._count("disk_write_bytes", _done_bytes(fut, nbytes, self.block_bytes))
        return self._track(TransferHandle("host_to_disk", nbytes, fut, None, release))

    def disk_to_host(self, hashes: Sequence[bytes], slots: Sequence[int]) -> TransferHandle:
        """Read blocks into host slots; `handle.result.missing` lists misses (absent or corrupt:
        their slots hold garbage)."""
        disk = self._need_disk()
        hashes, slots = list(hashes), list(slots)
        self.host.incref(slots)
        out = {h: self.host.slot_view(s) for h, s in zip(hashes, slots)}

        def read() -> TransferResult:
            found = disk.get_many(hashes, out=out)
            return TransferResult(missing=[h for h in hashes if h not in found])
        fut = self._load_chain.submit(read)
        nbytes = len(slots) * self.block_bytes

        def release() -> None:
            self.host.decref(slots)
            self._count("disk_read_bytes", _done_bytes(fut, nbytes, self.block_bytes))
        return self._track(TransferHandle("disk_to_host", nbytes, fut, None, release))

    # -- GPU <-> disk through the staging slots ----------------------------------------------
    def gpu_to_disk(self, hashes: Sequence[bytes], block_ids: Sequence[int]) -> TransferHandle:
        """Write GPU blocks to disk through pinned staging slots, a chunk at a time."""
        self._need_disk()
        hashes, ids = list(hashes), list(block_ids)
        self._incref(ids)
        after = self._record_current()
        fut = self._store_chain.submit(self._gpu_to_disk, hashes, ids, after)
        nbytes = len(ids) * self.block_bytes

        def release() -> None:
            self._decref(ids)
            self._count("d2h_bytes", nbytes if fut.exception() is None else 0)
            self._count("disk_write_bytes", _done_bytes(fut, nbytes, self.block_bytes))
        return self._track(TransferHandle("gpu_to_disk", nbytes, fut, None, release))

    def disk_to_gpu(self, hashes: Sequence[bytes], block_ids: Sequence[int]) -> TransferHandle:
        """Read blocks from disk into GPU blocks; `result.missing` lists the hashes whose GPU
        block was not written."""
        self._need_disk()
        hashes, ids = list(hashes), list(block_ids)
        self._incref(ids)
        after = self._record_current()  # earlier work on these blocks finishes first
        fut = self._load_chain.submit(self._disk_to_gpu, hashes, ids, after)
        nbytes = len(ids) * self.block_bytes

        def release() -> None:
            self._decref(ids)
            got = _done_bytes(fut, nbytes, self.block_bytes)
            self._count("disk_read_bytes", got)
            self._count("h2d_bytes", got)
        return self._track(TransferHandle("disk_to_gpu", nbytes, fut, None, release))

    def _staging_chunk(self, kind: str) -> int:
        """Staging slots per chunk: a load takes up to half the pool, a spill (two chunks in
        flight) up to a quarter each, so both fit at once."""
        share = 2 if kind == "h2d" else 4
        return max(1, min(self.chunk_blocks, self.staging.capacity // share))

    def _alloc_staging(self, n: int) -> list[int]:
        """Chain threads: `n` staging slots, waiting while the other chain holds them."""
        with self._staging_cv:
            self._staging_cv.wait_for(lambda: self.staging.num_free >= n)
            return self.staging.allocate(n)

    def _free_staging(self, slots: list[int]) -> None:
        with self._staging_cv:
            self.staging.free(slots)
            self._staging_cv.notify_all()

    def _gpu_to_disk(self, hashes: list[bytes], ids: list[int], after) -> TransferResult:
        """Chain thread: D2H a chunk into staging, queue its disk write, keep two in flight."""
        res = TransferResult()
        inflight: list[tuple[Future, list[int]]] = []
        step = self._staging_chunk("d2h")
        try:
            for i in range(0, len(ids), step):
                slots = self._alloc_staging(len(ids[i:i + step]))
                inflight.append((None, slots))  # freed below even if the copy fails
                self._copy_sync("d2h", ids[i:i + step], slots, after)
                put = self.disk.put_many([(h, self.staging.slot_view(s))
                                          for h, s in zip(hashes[i:i + step], slots)])
                inflight[-1] = (put, slots)
                while len(inflight) >= 2:
                    self._drain(inflight.pop(0), res)
        finally:
            while inflight:
                self._drain(inflight.pop(0), res)
        return res

    def _drain(self, item: tuple[Future | None, list[int]], res: TransferResult) -> None:
        put, slots = item
        try:
            if put is not None:
                res.refused += put.result().refused
        finally:
            self._free_staging(slots)

    def _disk_to_gpu(self, hashes: list[bytes], ids: list[int], after) -> TransferResult:
        res = TransferResult()
        step = self._staging_chunk("h2d")
        for i in range(0, len(ids), step):
            hs, gs = hashes[i:i + step], ids[i:i + step]
            slots = self._alloc_staging(len(gs))
            try:
                found = self.disk.get_many(hs, out={h: self.staging.slot_view(s)
                                                    for h, s in zip(hs, slots)})
                keep = [k for k, h in enumerate(hs) if h in found]
                res.missing += [h for h in hs if h not in found]
                if keep:
                    self._copy_sync("h2d", [gs[k] for k in keep], [slots[k] for k in keep],
                                    after)
            finally:
                self._free_staging(slots)
        return res

    def _copy_sync(self, kind: str, ids: list[int], slots: list[int], after) -> None:
        """On a background thread: copy through the staging pool and wait for it."""
        if not self.is_cuda:
            self._copy(kind, self.staging, ids, slots)
            return
        stream = self._stream_for(kind)
        with torch.cuda.device(self.kv.device), torch.cuda.stream(stream):
            if after is not None:
                stream.wait_event(after)
            self._copy(kind, self.staging, ids, slots)
            ev = torch.cuda.Event()
            ev.record(stream)
        ev.synchronize()

    # -- bookkeeping -------------------------------------------------------------------------
    def _need_disk(self) -> DiskStore:
        if self.disk is None:
            raise RuntimeError("this transfer engine has no disk store (disk tier is off)")
        return self.disk

    @staticmethod
    def _then(fut: Future, fn: Callable) -> Future:
        out: Future = Future()

        def done(f: Future) -> None:
            try:
                out.set_result(fn(f.result()))
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits
                out.set_exception(e)
        fut.add_done_callback(done)
        return out

    def _count(self, name: str, nbytes: int) -> None:
        with self._stats_lock:
            setattr(self.stats, name, getattr(self.stats, name) + nbytes)

    def _track(self, handle: TransferHandle) -> TransferHandle:
        self._pending.append(handle)
        with self._stats_lock:
            self.stats.batches += 1
        return handle

    @property
    def in_flight_bytes(self) -> int:
        """Bytes of the batches not yet seen complete (call `poll()` first for a fresh count)."""
        return sum(h.nbytes for h in self._pending)

    def poll(self) -> int:
        """Complete the batches that have finished (releasing their references); returns how
        many are still in flight. Call it from the engine thread every step."""
        self._pending = [h for h in self._pending if not h.ready()]
        return len(self._pending)

    def synchronize(self) -> None:
        """Wait for every batch in flight, including batches that completions start."""
        while self._pending:
            self._pending.pop(0).wait()

    def close(self) -> None:
        self.synchronize()
        self._issuer.shutdown(wait=True)
        self._load_chain.shutdown(wait=True)
        self._store_chain.shutdown(wait=True)
