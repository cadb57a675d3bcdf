"""The disk tier's write path: batches encoded one sub-chunk ahead and committed in fsync'd
transactions on the store's single writer thread (see `kvstore.disk` for the whole design).

`DiskWriter` is a part of `kvstore.disk.DiskStore`: it uses the store's environment, index,
lock, stats and threads, which `DiskStore.__init__` sets up.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Iterable

import lmdb
import torch

from kvstore import block_codec as codec
from kvstore.disk_room import PutResult, _ReserveReached

if TYPE_CHECKING:
    from kvstore.disk import DiskStore

log = logging.getLogger("agentkv.kvstore.disk")

# checksum algorithm of new values; read at each encode, so a test can choose it per store
CHECKSUM = codec.CHECKSUM
# One fsync'd commit per this many bytes of a batch. On the H200 machine each commit costs about
# 30 ms beyond its bytes (the data msync and the meta page's msync, each a journal commit and a
# device cache flush). 2 GiB in commits of 128/256/512/1024 MiB: 1.14/1.26/1.31 and 1.42/1.38
# GB/s, and 0.99 GB/s as before this pipeline (128 MiB, encoded in one step each); see
# bench/results/transfer-h200-20261122.json, rows "disk_write_variant". 1 GiB gains nothing
# measurable and doubles how long a commit holds LMDB's write lock, which a session's commit may
# wait for: about 0.4 s for 512 MiB at that machine's rates.
WRITE_CHUNK_BYTES = 512 << 20
ENCODE_CHUNK_BYTES = 32 << 20        # the encoder's step (its two buffer sets: 2 x this)
# Early write-out (sync_file_range every WRITEBACK_KICK_BYTES) is off by default: on the H200
# machine it made 2 GiB writes in 128 MiB commits slower (0.96 against 1.07 GB/s; run at
# 937090a, numbers in the message of commit 4462cb8) and 512 MiB commits no faster (1.40
# against 1.31 and 1.42 GB/s): a commit there waits mostly for its two flushes, not for bytes.
EARLY_WRITEBACK = False
WRITEBACK_KICK_BYTES = 16 << 20


class _EncodePipeline:
    """Sub-chunks of a batch encoded in order on the store's encoder thread, one ahead of the
    writer, into two sets of reused value buffers: the encoder fills one set while the writer
    copies the other into LMDB (which copies at put time, so a set is free again once its
    values are put). The sets live on the store, so their pages are faulted in once."""

    def __init__(self, store: "DiskStore", subs: list[list[tuple[bytes, torch.Tensor]]]):
        self.store, self.subs = store, subs
        self.next_index = 0
        self._fut: Future | None = None
        self._start(0)

    def _start(self, i: int) -> None:
        self._fut = (self.store._encoder.submit(self.store._encode_chunk, self.subs[i],
                                                self.store._bufs[i % 2])
                     if i < len(self.subs) else None)

    def take(self, n: int):
        """Yield the next `n` encoded sub-chunks; each is valid until the next is asked for."""
        for _ in range(n):
            t0 = time.perf_counter()
            out = self._fut.result()
            self.store.stats.encode_wait_s += time.perf_counter() - t0
            self.next_index += 1
            self._start(self.next_index)
            yield out

    def skip_to(self, i: int) -> None:
        """Go on at sub-chunk `i` (those before it are written another way)."""
        if i == self.next_index:
            return                         # already there (its encoding is under way)
        if self._fut is not None:
            self._fut.exception()          # its buffer set must be free before the next fill
        self.next_index = i
        self._start(i)

    def close(self) -> None:
        if self._fut is not None:
            self._fut.exception()
            self._fut = None


class DiskWriter:
    """Writes of `DiskStore` (one writer thread, one encoder thread)."""

    def put_many(self, items: list[tuple[bytes, torch.Tensor]]) -> Future:
        """Write blocks on the writer thread; the Future gives a PutResult once fsync'd.

        Each tensor is a CPU block [num_layers, 2, block_size, num_kv_heads, head_dim]; the caller
        keeps it unchanged until the Future resolves (the transfer engine holds its host slot).
        """
        if not self.healthy:
            fut: Future = Future()
            fut.set_result(PutResult(refused=[h for h, _ in items], error=self.last_error))
            return fut
        nbytes = len(items) * self.spec.block_bytes
        with self._lock:
            self._queued += nbytes
        return self._writer.submit(self._put_counted, list(items), nbytes)

    @property
    def pending_write_bytes(self) -> int:
        """Bytes queued for the writer and not yet committed (the disk tier's backlog)."""
        return self._queued

    def _put_counted(self, items: list[tuple[bytes, torch.Tensor]], nbytes: int) -> PutResult:
        try:
            return self._put(items)
        finally:
            with self._lock:
                self._queued -= nbytes

    def flush(self) -> None:
        """Wait until every write queued so far is committed."""
        self._writer.submit(lambda: None).result()

    def _put(self, items: list[tuple[bytes, torch.Tensor]]) -> PutResult:
        """Writer thread: one transaction per WRITE_CHUNK_BYTES of the batch, its values put as
        the encoder thread delivers them, ENCODE_CHUNK_BYTES at a time."""
        res = PutResult()
        todo: list[tuple[bytes, torch.Tensor]] = []
        seen: set[bytes] = set()
        for h, t in items:
            if h in self._index or h in seen:
                res.written.append(h)
                continue
            seen.add(h)
            todo.append((h, t))
        if not todo:
            return res
        per = self.spec.block_bytes
        group_n = max(1, self.write_chunk_bytes // per)           # blocks per commit
        sub_n = max(1, min(group_n, self.encode_chunk_bytes // per))
        groups = [todo[i:i + group_n] for i in range(0, len(todo), group_n)]
        pipe = _EncodePipeline(self, [g[j:j + sub_n] for g in groups
                                      for j in range(0, len(g), sub_n)])
        try:
            for g in groups:
                first, n_subs = pipe.next_index, -(-len(g) // sub_n)
                need = len(g) * (per + self._header_bytes)
                self._make_room(need, {h for h, _ in g}, res)
                self._allocate_ahead_of(need)
                try:
                    self._commit(pipe.take(n_subs))
                    res.written += [h for h, _ in g]
                except (lmdb.MapFullError, _ReserveReached):
                    # the encoder's buffers have moved on: this group is encoded again, alone
                    pipe.skip_to(first + n_subs)
                    self._write_chunk([(h, self._encode_one(h, t)) for h, t in g], res,
                                      full=True)
        except (OSError, lmdb.Error) as e:
            self._degrade(f"disk tier write failed ({type(e).__name__}: {e}); tier is off")
            done = set(res.written) | set(res.refused)
            res.refused += [h for h, _ in items if h not in done]
            res.error = self.last_error
        finally:
            pipe.close()
        return res

    def _encode_one(self, h: bytes, t: torch.Tensor) -> bytes:
        return codec.encode_block(self.spec, self.fingerprint, h, t, CHECKSUM)

    def _encode_chunk(self, chunk: list[tuple[bytes, torch.Tensor]], bufs: list[bytearray]
                      ) -> list[tuple[bytes, memoryview]]:
        t0 = time.perf_counter()
        while len(bufs) < len(chunk):
            bufs.append(bytearray(self.spec.block_bytes + codec.HEADER_MAX))
        alg = CHECKSUM   # read here, not at import: tests choose the algorithm per store
        out = [(h, codec.encode_block(self.spec, self.fingerprint, h, t, alg, b))
               for (h, t), b in zip(chunk, bufs)]
        self.stats.encode_s += time.perf_counter() - t0
        return out

    def _allocate_ahead_of(self, need: int) -> None:
        """Allocate the file range where `need` more bytes of pages will go: after the last
        page in use, unless freed pages are reused (those are allocated already); a little
        more for the b-tree and other writers."""
        if self._datafile is not None:
            start = (self.env.info()["last_pgno"] + 1) * self._psize
            self._datafile.allocate(start, need + need // 64 + (1 << 20))

    def _write_chunk(self, chunk: list[tuple[bytes, bytes]], res: PutResult,
                     full: bool = False) -> None:
        """Commit encoded values, evicting more when the map (or the block share of it) is
        `full`; what does not fit even then is refused."""
        need = sum(len(v) for _, v in chunk)
        if not full:
            self._make_room(need, {h for h, _ in chunk}, res)
            self._allocate_ahead_of(need)
        while True:
            if not full:
                try:
                    self._commit([chunk])
                    res.written += [h for h, _ in chunk]
                    return
                except (lmdb.MapFullError, _ReserveReached):
                    pass
            full = False
            if self._make_room(self.capacity_bytes + 1, {h for h, _ in chunk}, res,
                               n_max=len(chunk)):
                continue
            if len(chunk) > 1:  # nothing left to evict: write what fits, one by one
                for item in chunk:
                    self._write_chunk([item], res)
                return
            res.refused.append(chunk[0][0])
            self.stats.full_refusals += 1
            res.error = (f"disk tier full: a {len(chunk[0][1])}-byte block does not fit in "
                         f"the LMDB map ({self.env.info()['map_size']} bytes, "
                         f"{self.session_reserve_bytes} of them kept for sessions) even after "
                         f"eviction; raise disk_cache_gb")
            log.warning(res.error)
            return

    def _commit(self, chunks: Iterable[list[tuple[bytes, bytes]]]) -> None:
        """One write transaction of the values `chunks` yields (it may wait for the encoder).
        LMDB's commit msyncs the data, then the meta page (sync=True, metasync=True): the values
        are durable when this returns. With early write-out on, the write-out of the copied
        pages is started every WRITEBACK_KICK_BYTES."""
        wb = self._datafile if self._early_writeback else None
        base = self._seq                  # only this (writer) thread moves it after open
        done: list[tuple[bytes, int]] = []
        t0 = time.perf_counter()
        with self.env.begin(write=True) as txn:
            copied = 0
            for chunk in chunks:
                for h, val in chunk:
                    key = self._key(h)
                    txn.put(key, val, db=self._blocks)
                    txn.put(key, codec.meta_record(base + len(done) + 1, len(val)),
                            db=self._meta)
                    done.append((h, len(val)))
                    copied += len(val)
                    if wb is not None and copied >= WRITEBACK_KICK_BYTES:
                        wb.kick()
                        copied = 0
            self._check_reserve(txn)      # raises (the transaction aborts) if over the limit
            t1 = time.perf_counter()
        t2 = time.perf_counter()
        self.stats.put_s += t1 - t0
        self.stats.commit_s += t2 - t1
        now = self.clock()
        with self._lock:
            self._seq = base + len(done)
            for h, n in done:
                self._used += n - self._index.get(h, 0)
                self._index[h] = n
                self.policy.touch(h, now)
        self.stats.puts += len(done)
        self.stats.bytes_written += sum(n for _, n in done)
        self.stats.commits += 1
