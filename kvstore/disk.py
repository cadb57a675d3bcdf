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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

import lmdb
import msgpack

from kvstore import block_codec as codec
from kvstore.block_codec import (  # noqa: F401 - re-exported
    FORMAT_VERSION, checksum, xxhash)
from kvstore.disk_read import DiskReader
from kvstore.disk_room import _TICK, DiskRoom, PutResult  # noqa: F401 - PutResult re-exported
from kvstore.disk_write import (  # noqa: F401 - re-exported
    CHECKSUM, EARLY_WRITEBACK, ENCODE_CHUNK_BYTES, WRITE_CHUNK_BYTES, WRITEBACK_KICK_BYTES,
    DiskWriter)
from kvstore.eviction import EvictionPolicy, LRUPolicy
from kvstore.lmdb_env import (  # noqa: F401 - re-exported
    _ENVS, _INHERITED, DATA_FILE, LMDB_WRITEMAP, MAX_DBS, DiskStoreError, _EnvEntry,
    DataFile, ForkedEnvironmentError, _forget_after_fork, forget_after_fork, live_pages,
    open_environment, release_environment)
from kvstore.lmdb_env import REG_LOCK as _REG_LOCK
from kvstore.spec import KVCacheSpec

log = logging.getLogger("agentkv.kvstore.disk")

BLOCKS_DB = "kv_blocks"
META_DB = "kv_meta"
MAP_HEADROOM_BYTES = 128 << 20       # LMDB b-tree, free pages, other modules' small databases
SESSION_RESERVE_BYTES = 1 << 30      # map space that blocks never take (sessions, token logs)

_STORES: dict[str, "DiskStore"] = {}
forget_after_fork(_STORES)


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


# -- the store ---------------------------------------------------------------------------------
class DiskStore(DiskWriter, DiskRoom, DiskReader):
    """KV blocks of one model in an LMDB directory, with an LRU (or plugged-in) eviction order.

    Writes, room keeping and reads live in `kvstore.disk_write`, `kvstore.disk_room` and
    `kvstore.disk_read`; this class holds the state they share and the store's lifetime."""

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


def drop_blocks(env: lmdb.Environment) -> int:
    """Delete the KV block databases from `env`, an environment no disk tier uses any more (a
    data directory that held its blocks before they moved to their own environment). Returns
    the values dropped; 0 when there were none."""
    dropped = 0
    with env.begin(write=True) as txn:
        for name in (BLOCKS_DB, META_DB):
            try:
                db = env.open_db(name.encode(), txn=txn, create=False)
            except lmdb.NotFoundError:
                continue
            dropped += txn.stat(db)["entries"] if name == BLOCKS_DB else 0
            txn.drop(db, delete=True)
    return dropped
