"""The disk tier: KV blocks in LMDB, one writer thread, checksummed values.

One LMDB environment per data directory and process (`kvstore.lmdb_env.open_environment`); the
block store uses the named databases `kv_blocks` (key -> header + raw block bytes, laid out by
`kvstore.block_codec`) and `kv_meta` (key -> small record for rebuilding the index on open), and
other modules add theirs through `DiskStore.open_db(name)`.

Writes. A batch is committed `WRITE_CHUNK_BYTES` at a time, each one fsync'd transaction
(durable when it returns; see `kvstore.lmdb_env`). The encoder thread checksums and frames the
values `ENCODE_CHUNK_BYTES` ahead of the writer, which copies them into the map as they come, so
the encoder also works while a commit flushes. Before a transaction the writer allocates the
file range its pages will take (`kvstore.lmdb_env.DataFile`). Optionally (`early_writeback`) it
starts the kernel's write-out every `WRITEBACK_KICK_BYTES` while it copies. Measured in
bench/results/transfer-*.json, rows "disk_write_variant".

Room for sessions. Sessions and token logs share the environment. The map holds the block
budget (`capacity_bytes`, x 1.1 for LMDB's pages and free lists), two chunks in flight, some
headroom, and `session_reserve_bytes` that blocks never use: before a block transaction commits,
the pages the block databases hold are checked against the map less the reserve, and blocks are
evicted (or refused) rather than growing into it. A full KV tier therefore never makes a
session commit fail for lack of map space.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

import lmdb
import msgpack
import numpy as np
import torch

from kvstore import block_codec as codec
from kvstore.block_codec import (  # noqa: F401 - re-exported
    CHECKSUM, FORMAT_VERSION, checksum, xxhash)
from kvstore.block_codec import tensor_bytes as _tensor_bytes
from kvstore.eviction import EvictionPolicy, LRUPolicy, pick_victims
from kvstore.lmdb_env import (  # noqa: F401 - re-exported
    _ENVS, _INHERITED, DATA_FILE, LMDB_WRITEMAP, MAX_DBS, DiskStoreError, _EnvEntry,
    DataFile, ForkedEnvironmentError, _forget_after_fork, forget_after_fork, live_pages,
    open_environment, release_environment)
from kvstore.lmdb_env import REG_LOCK as _REG_LOCK
from kvstore.spec import KVCacheSpec

log = logging.getLogger("agentkv.kvstore.disk")

BLOCKS_DB = "kv_blocks"
META_DB = "kv_meta"
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
MAP_HEADROOM_BYTES = 128 << 20       # LMDB b-tree, free pages, other modules' small databases
SESSION_RESERVE_BYTES = 1 << 30      # map space that blocks never take (sessions, token logs)
_TICK = b"\x00tick"                   # a kv_meta key rewritten after deletes (see _delete)

_STORES: dict[str, "DiskStore"] = {}
forget_after_fork(_STORES)


class _ReserveReached(Exception):
    """A block transaction would take map space kept for sessions (handled like a full map)."""


# -- messages ----------------------------------------------------------------------------------
@dataclass
class DiskStats:
    puts: int = 0                # blocks written
    gets: int = 0                # blocks asked for
    hits: int = 0
    misses: int = 0
    checksum_failures: int = 0   # values whose bytes did not match their checksum
    header_mismatches: int = 0   # values of another format/model/shape (also misses)
    full_refusals: int = 0       # blocks refused because the map stayed full after eviction
    evictions: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    commits: int = 0
    encode_s: float = 0.0        # writer-side time: checksum + header (encoder thread)
    encode_wait_s: float = 0.0   # writer time spent waiting for the encoder (in put_s)
    put_s: float = 0.0           # copying values into the LMDB transaction
    commit_s: float = 0.0        # commit: write-out and fsync
    reserve_hits: int = 0        # block transactions stopped short of the session reserve


@dataclass
class PutResult:
    """What one `put_many` batch did; never raises for a full or degraded tier."""
    written: list[bytes] = field(default_factory=list)
    refused: list[bytes] = field(default_factory=list)
    evicted: list[bytes] = field(default_factory=list)
    error: str | None = None


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


# -- the store ---------------------------------------------------------------------------------
class DiskStore:
    """KV blocks of one model in an LMDB directory, with an LRU (or plugged-in) eviction order."""

    def __init__(self, path: str, spec: KVCacheSpec, model_fingerprint: bytes,
                 capacity_bytes: int, policy: EvictionPolicy | None = None,
                 map_size: int | None = None, read_threads: int = 8,
                 clock: Callable[[], float] = time.monotonic,
                 session_reserve_bytes: int | None = None,
                 write_chunk_bytes: int | None = None, early_writeback: bool | None = None,
                 allocate_ahead: bool = True, encode_chunk_bytes: int | None = None) -> None:
        """`capacity_bytes` is the block budget. The map is sized from it (see the module
        docstring) plus `session_reserve_bytes` (default SESSION_RESERVE_BYTES), which blocks
        never use. A `map_size` given here is the whole map; the reserve, 0 unless given, is
        then kept inside it. `write_chunk_bytes` (default WRITE_CHUNK_BYTES) is the size of one
        fsync'd commit, `encode_chunk_bytes` (default ENCODE_CHUNK_BYTES) the encoder's step;
        `early_writeback` (default EARLY_WRITEBACK) starts the disk's write-out while a commit's
        values are copied and `allocate_ahead` allocates the file range they will take first.
        """
        if not 0 < len(model_fingerprint) < 256:
            raise ValueError("model_fingerprint must be 1..255 bytes")
        if session_reserve_bytes is not None and session_reserve_bytes < 0:
            raise ValueError("session_reserve_bytes must be >= 0")
        self.path = os.path.realpath(path)
        self.spec = spec
        self.fingerprint = bytes(model_fingerprint)
        self.capacity_bytes = int(capacity_bytes)
        self.policy: EvictionPolicy = policy if policy is not None else LRUPolicy()
        self.stats = DiskStats()
        self.clock = clock
        self.healthy = False
        self.last_error: str | None = None
        self.env: lmdb.Environment | None = None
        self._prefix = codec.key_prefix(self.fingerprint)
        self.write_chunk_bytes = int(write_chunk_bytes or WRITE_CHUNK_BYTES)
        self.session_reserve_bytes = int(
            session_reserve_bytes if session_reserve_bytes is not None
            else (SESSION_RESERVE_BYTES if map_size is None else 0))
        self.encode_chunk_bytes = int(encode_chunk_bytes or ENCODE_CHUNK_BYTES)
        self._early_writeback = EARLY_WRITEBACK if early_writeback is None else early_writeback
        self._header_bytes = len(codec.max_header(spec, self.fingerprint))
        self._allocate_ahead = allocate_ahead
        self._datafile: DataFile | None = None
        self._psize = 4096
        self._bufs: list[list[bytearray]] = [[], []]   # the encoder's value buffers, reused
        self._index: dict[bytes, int] = {}     # hash -> value length, blocks of this model
        self._pinned: set[bytes] = set()
        self._used = 0                          # bytes of this model's values
        self._foreign = 0                       # bytes of other models' / formats' values
        self._seq = 0
        self._queued = 0                        # bytes accepted by put_many, not yet committed
        self._lock = threading.RLock()
        self._evict_hooks: list[Callable[[bytes], None]] = []
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="kv-disk-writer")
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="kv-disk-encoder")
        self._readers = ThreadPoolExecutor(max(1, read_threads),
                                           thread_name_prefix="kv-disk-reader")
        self._open(map_size if map_size is not None else
                   int(self.capacity_bytes * 1.1) + 2 * self.write_chunk_bytes
                   + MAP_HEADROOM_BYTES + self.session_reserve_bytes)

    def _open(self, map_size: int) -> None:
        with _REG_LOCK:
            other = _STORES.get(self.path)
            if other is not None and other is not self:
                raise DiskStoreError(f"a DiskStore is already open on {self.path} in this "
                                     f"process: reuse it (one LMDB environment per path)")
            _STORES[self.path] = self
        try:
            self.env = open_environment(self.path, map_size)
            self._blocks = self.env.open_db(BLOCKS_DB.encode())
            self._meta = self.env.open_db(META_DB.encode())
            self._rebuild_index()
            self._psize = self.env.stat()["psize"]
            # both hints only help when values are copied into the file's mapping (writemap)
            if (self._early_writeback or self._allocate_ahead) \
                    and self.env.flags().get("writemap"):
                self._datafile = DataFile(os.path.join(self.path, DATA_FILE),
                                          allocate=self._allocate_ahead,
                                          writeback=self._early_writeback)
            self.healthy = True
        except (OSError, lmdb.Error, ForkedEnvironmentError) as e:
            with _REG_LOCK:
                _STORES.pop(self.path, None)
            self.env = None
            self._degrade(f"disk tier at {self.path!r} cannot be opened for writing "
                          f"({type(e).__name__}: {e}); the tier is off, the engine keeps "
                          f"serving from GPU/CPU; fix the path or its permissions")

    def _degrade(self, msg: str) -> None:
        self.healthy = False
        self.last_error = msg
        log.error(msg)

    def _rebuild_index(self) -> None:
        """Index this model's blocks from `kv_meta`, oldest first; other models' are skipped."""
        order: list[tuple[int, bytes, int]] = []
        with self.env.begin(db=self._meta) as txn:
            for key, raw in txn.cursor():
                try:
                    rec = msgpack.unpackb(raw) if key != _TICK else None
                except (ValueError, msgpack.UnpackException):
                    rec = {}                 # unreadable record: its block is never used
                if not isinstance(rec, dict):
                    continue
                if key.startswith(self._prefix) and rec.get("v") == FORMAT_VERSION:
                    order.append((rec["seq"], key[len(self._prefix):], rec["n"]))
                else:
                    self._foreign += int(rec.get("n", 0))
                self._seq = max(self._seq, int(rec.get("seq", 0)))
        order.sort()
        for _, h, n in order:
            self._index[h] = n
            self._used += n
            self.policy.touch(h, self.clock())

    # -- sharing the environment -------------------------------------------------------------
    def open_db(self, name: str):
        """A named database in this store's environment (sessions, token logs, estimator)."""
        if self.env is None:
            raise DiskStoreError(f"disk tier is degraded: {self.last_error}")
        return self.env.open_db(name.encode())

    def on_evict(self, hook: Callable[[bytes], None]) -> None:
        """Call `hook(hash)` (on the writer thread) after a block was evicted to make room."""
        self._evict_hooks.append(hook)

    # -- queries -----------------------------------------------------------------------------
    @property
    def used_bytes(self) -> int:
        return self._used + self._foreign

    @property
    def num_blocks(self) -> int:
        return len(self._index)

    def contains(self, h: bytes) -> bool:
        return h in self._index

    def keys_for_model(self) -> list[bytes]:
        """Hashes of this model's blocks on disk, oldest first."""
        with self._lock:
            return list(self._index)

    def pin(self, hashes: Iterable[bytes]) -> None:
        with self._lock:
            self._pinned.update(hashes)

    def unpin(self, hashes: Iterable[bytes]) -> None:
        with self._lock:
            self._pinned.difference_update(hashes)

    def is_pinned(self, h: bytes) -> bool:
        return h in self._pinned

    @property
    def num_pinned(self) -> int:
        return len(self._pinned)

    @property
    def writeback_kicks(self) -> int:
        """Early write-outs of the data file started so far (0 when that is off)."""
        return self._datafile.kicks if self._datafile is not None else 0

    def _key(self, h: bytes) -> bytes:
        return codec.block_key(self._prefix, h)

    # -- writes (one thread) -----------------------------------------------------------------
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

    def delete(self, hashes: Iterable[bytes]) -> Future:
        """Forget blocks now (`contains` is False at once) and remove them from LMDB on the
        writer thread; the Future gives how many values were removed."""
        hashes = list(hashes)
        self._forget(hashes)
        if not self.healthy:
            fut: Future = Future()
            fut.set_result(0)
            return fut
        return self._writer.submit(self._delete, hashes, False)

    def _forget(self, hashes: list[bytes]) -> None:
        with self._lock:
            for h in hashes:
                n = self._index.pop(h, None)
                if n is not None:
                    self._used -= n
                self.policy.remove(h)

    def purge_foreign(self) -> Future:
        """Delete blocks of other model fingerprints or format versions; Future of the count."""
        return self._writer.submit(self._purge_foreign)

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

    def _check_reserve(self, txn: lmdb.Transaction) -> None:
        """Refuse a block transaction after which the block databases would hold more than the
        map less the session reserve."""
        if self.session_reserve_bytes <= 0:
            return
        limit = self.env.info()["map_size"] - self.session_reserve_bytes
        if live_pages(txn, (self._blocks, self._meta)) * self._psize > limit:
            self.stats.reserve_hits += 1
            raise _ReserveReached()

    def _make_room(self, need: int, keep: set[bytes], res: PutResult,
                   n_max: int | None = None) -> bool:
        """Evict this model's least wanted blocks until `need` more bytes fit the capacity."""
        with self._lock:
            over = self.used_bytes + need - self.capacity_bytes
            if over <= 0:
                return True
            per = max(1, self.spec.block_bytes)
            n = min(len(self._index), n_max or -(-over // per))
            victims = pick_victims(self.policy, n, lambda h: h not in keep and
                                   h not in self._pinned and h in self._index, len(self._index))
        if not victims:
            return False
        try:
            self._delete(victims, True)
        except lmdb.MapFullError:   # even a delete needs a few free pages: the map is wedged
            return False
        res.evicted += victims
        return True

    def _delete(self, hashes: list[bytes], evicting: bool) -> int:
        gone = []
        with self.env.begin(write=True) as txn:
            for h in hashes:
                key = self._key(h)
                txn.delete(key, db=self._meta)
                if txn.delete(key, db=self._blocks):
                    gone.append(h)
        self._forget(hashes)
        try:
            with self.env.begin(write=True) as txn:  # lets the next transaction reuse freed pages
                txn.put(_TICK, msgpack.packb({"seq": self._seq}), db=self._meta)
        except lmdb.MapFullError:
            pass
        if evicting:
            self.stats.evictions += len(gone)
            for h in gone:
                for hook in self._evict_hooks:
                    hook(h)
        return len(gone)

    def _purge_foreign(self) -> int:
        with self.env.begin(write=True) as txn:
            doomed = [k for k, raw in txn.cursor(db=self._meta) if k != _TICK and not (
                k.startswith(self._prefix) and msgpack.unpackb(raw).get("v") == FORMAT_VERSION)]
            for k in doomed:
                txn.delete(k, db=self._meta)
                txn.delete(k, db=self._blocks)
        with self._lock:
            self._foreign = 0
        return len(doomed)

    # -- reads (short transactions, a few threads) -------------------------------------------
    def get_many(self, hashes: list[bytes], out: dict[bytes, torch.Tensor] | None = None
                 ) -> dict[bytes, torch.Tensor]:
        """Blocks found and verified, by hash; a missing or corrupt block is left out (a miss).

        `out` optionally gives the destination of each block (e.g. a host slot view); bytes land
        there before they are checked, so a destination of a miss holds garbage: do not use it.
        """
        hashes = list(hashes)
        self.stats.gets += len(hashes)
        if not self.healthy:
            self.stats.misses += len(hashes)
            return {}
        if len(hashes) <= 2:
            got = [self._read_one(h, out) for h in hashes]
        else:
            got = list(self._readers.map(lambda h: self._read_one(h, out), hashes))
        found = {h: t for h, (t, _, _) in zip(hashes, got) if t is not None}
        with self._lock:
            for _, status, n in got:
                self.stats.bytes_read += n
                if status == "checksum":
                    self.stats.checksum_failures += 1
                elif status == "header":
                    self.stats.header_mismatches += 1
        self.stats.hits += len(found)
        self.stats.misses += len(hashes) - len(found)
        now = self.clock()
        with self._lock:
            for h in found:
                if h in self._index:
                    self.policy.touch(h, now)
        return found

    def _read_one(self, h: bytes, out: dict[bytes, torch.Tensor] | None
                  ) -> tuple[torch.Tensor | None, str, int]:
        """(block or None, "ok" | "absent" | "header" | "checksum", bytes read)."""
        if h not in self._index:
            return None, "absent", 0
        dst = out[h] if out is not None and h in out else self.spec.allocate(1, "cpu")[0]
        dst_bytes = _tensor_bytes(dst) if dst.is_contiguous() else None
        if dst_bytes is None:
            raise ValueError("get_many destinations must be contiguous CPU tensors")
        with self.env.begin(db=self._blocks, buffers=True) as txn:  # one block: a short read
            val = txn.get(self._key(h))
            if val is None:
                return None, "absent", 0
            hdr, start = codec.decode_header(val)    # (None, 0) if the header is damaged
            if not self._header_ok(h, hdr, len(val) - start, dst_bytes.nbytes):
                return None, "header", 0
            dst_bytes[:] = np.frombuffer(val, dtype=np.uint8, count=hdr["n"], offset=start)
            nbytes = len(val)
        if checksum(hdr["ck"], dst_bytes) != hdr["sum"]:
            log.warning("disk tier: block %s failed its %s checksum; treated as a miss "
                        "(it will be recomputed)", h.hex(), hdr["ck"])
            return None, "checksum", nbytes
        return dst, "ok", nbytes

    def _header_ok(self, h: bytes, hdr: dict, payload: int, want: int) -> bool:
        ok = codec.header_matches(self.spec, self.fingerprint, hdr, payload, want)
        if not ok:
            log.warning("disk tier: block %s has a header that does not match this store "
                        "(%r); treated as a miss", h.hex(), hdr)
        return ok

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Finish queued writes, then release the environment and the path."""
        self._writer.shutdown(wait=True)
        self._encoder.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        if self._datafile is not None:
            self._datafile.close()
            self._datafile = None
        self._bufs = [[], []]
        with _REG_LOCK:
            if _STORES.get(self.path) is self:
                del _STORES[self.path]
        if self.env is not None:
            release_environment(self.path)
            self.env = None
        self.healthy = False

    def __enter__(self) -> "DiskStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
