"""The data directory's one LMDB environment per process, and early write-out of its data file.

Every module that keeps data in the directory (the disk KV tier, sessions, the estimator) opens
the environment through `open_environment`, so all agree on its flags (LMDB asks for that) and
share one memory map.

Durability. Each write transaction is durable when its commit returns: the environment is
opened with sync=True and metasync=True. With writemap, LMDB's commit msyncs the data pages and
then writes and msyncs the meta page. LMDB keeps two meta pages and writes them in turn, and
never overwrites a page that the newest committed meta can reach, so a crash at any moment
leaves one intact meta page pointing at a complete tree: the last committed one.

Two flags that would look cheaper are not used:
  * metasync=False skips the meta page's msync. The tree stays consistent (the meta page is
    double-buffered, so a torn or lost write of it falls back to the previous one), but the
    last commit is then durable only once a later commit or the kernel writes the meta page
    out: an OS crash or power cut may undo a commit that had returned. A block whose write was
    reported done must survive a crash, so it stays on.
  * map_async=True turns both msyncs into MS_ASYNC, which on Linux does nothing: no commit
    would be durable.

`DataFile.kick` (used when the disk store is asked for early write-out) starts the kernel's
write-out of the data file's dirty pages while a transaction is still being filled, so that the
commit's msync finds more of the bytes already on disk. Writing pages of a transaction that has
not committed yet is safe: with writemap the kernel may do that at any time anyway, those pages
are unreachable from either meta page until the commit writes the meta, and the commit still
msyncs everything before the meta page.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time
from dataclasses import dataclass

import lmdb

log = logging.getLogger("agentkv.kvstore.lmdb_env")

MAX_DBS = 16
# Values go straight into the file's mapping and commit msyncs them. On the H200 machine this
# wrote 1 GiB of 2 MiB blocks at 0.84 GB/s against 0.60 GB/s with writemap off (values copied
# into malloc'd pages whose fresh-page faults dominate, then pwrite + fsync; 20261121), and 2 GiB
# at 1.31-1.42 against 0.89 GB/s with today's writer (transfer-h200-20261122.json); see the
# rows "disk_write_variant" in bench/results. Every process opens the environment through
# `open_environment`, so all agree on this flag (LMDB asks for that).
LMDB_WRITEMAP = True
DATA_FILE = "data.mdb"


@dataclass
class _EnvEntry:
    env: lmdb.Environment
    users: int = 0


_ENVS: dict[str, _EnvEntry] = {}
_INHERITED: set[str] = set()          # paths the parent process had open when it forked
REG_LOCK = threading.Lock()
_AFTER_FORK: list = []                # more registries to clear in a forked child


class DiskStoreError(RuntimeError):
    """The disk tier cannot do what was asked (unwritable path, store already open, ...)."""


class ForkedEnvironmentError(DiskStoreError):
    """The path is open in the parent of this forked process."""


def forget_after_fork(registry: dict) -> None:
    """Clear `registry` in a forked child, together with the environments."""
    _AFTER_FORK.append(registry)


def _forget_after_fork() -> None:
    """A child never touches its parent's environments: it forgets them without closing them
    (closing would clear the parent's reader slots in the shared lock file)."""
    _INHERITED.update(_ENVS)
    _ENVS.clear()
    for reg in _AFTER_FORK:
        reg.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def open_environment(path: str, map_size: int, max_dbs: int = MAX_DBS) -> lmdb.Environment:
    """The process's LMDB environment for `path`, opened on first use and shared afterwards.

    A later caller asking for a larger `map_size` grows the map. Release with
    `release_environment(path)`; the last release closes it.
    """
    key = os.path.realpath(path)
    with REG_LOCK:
        if key in _INHERITED:
            raise ForkedEnvironmentError(
                f"{key} was open in the parent of this forked process; an LMDB environment "
                f"cannot be carried across fork: open it in a spawned process instead")
        ent = _ENVS.get(key)
        if ent is None:
            os.makedirs(key, exist_ok=True)
            # sync and metasync stay on: see the module docstring
            env = lmdb.open(key, map_size=map_size, max_dbs=max_dbs, subdir=True,
                            readahead=True, writemap=LMDB_WRITEMAP, sync=True, metasync=True,
                            map_async=False, max_readers=256)
            ent = _EnvEntry(env)
            _ENVS[key] = ent
        elif ent.env.info()["map_size"] < map_size:
            ent.env.set_mapsize(map_size)
        ent.users += 1
        return ent.env


def release_environment(path: str) -> None:
    key = os.path.realpath(path)
    with REG_LOCK:
        ent = _ENVS.get(key)
        if ent is None:
            return
        ent.users -= 1
        if ent.users <= 0:
            del _ENVS[key]
            ent.env.close()


def live_pages(txn: lmdb.Transaction, dbs) -> int:
    """Pages that the databases `dbs` hold in `txn` (its own changes included)."""
    n = 0
    for db in dbs:
        st = txn.stat(db)
        n += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
    return n


# -- the data file beside LMDB: allocation ahead and early write-out --------------------------
_SYNC_FILE_RANGE_WRITE = 2            # <linux/fs.h>: start write-out, do not wait


def _libc_fn(name: str, argtypes: list):
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return fn


# Linux system calls, not their glibc emulations: posix_fallocate would fall back to writing
# bytes into the file where the file system cannot allocate, which must never race LMDB's own
# writes; fallocate(2) just fails there.
_sync_file_range = _libc_fn("sync_file_range",
                            [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint])
_fallocate = _libc_fn("fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64])


class DataFile:
    """The environment's data file, opened a second time for two hints that change no byte of
    it; either one turns itself off where the system lacks it.

    `allocate(start, length)`: fallocate(2) (mode 0: allocate, keep the size) where the next
    transaction's pages will go. With writemap LMDB sizes the file to the map, sparse; the first
    write to a page of a hole then also reserves its disk block (ext4's delayed allocation). On
    a 2-core CPU machine, copying into a mapped allocated range ran 20-30% faster than into a
    hole; on the H200 machine the store's writes were the same within noise with and without it
    (bench/results/transfer-h200-20261122.json, "no_allocate_ahead"). Reads of an allocated,
    never written range return zeros, as a hole's do, so LMDB cannot tell.

    `kick()`: sync_file_range(SYNC_FILE_RANGE_WRITE) on a thread of its own: queue the write of
    every dirty page and return without waiting, so the disk writes while the writer keeps
    copying. It syncs no metadata and makes nothing durable (the commit does that). Kicks that
    arrive while one runs are coalesced.
    """

    def __init__(self, path: str, allocate: bool = True, writeback: bool = True) -> None:
        self.path = path
        self.kicks = 0                 # write-outs started
        self.kick_s = 0.0              # time spent starting them (on the write-out thread)
        self.allocated = 0             # bytes passed to fallocate
        self.allocate_s = 0.0
        self._fd: int | None = None
        self._allocate = allocate and _fallocate is not None
        self._cond = threading.Condition()
        self._wanted = False
        self._closed = False
        self._thread: threading.Thread | None = None
        if not (self._allocate or (writeback and _sync_file_range is not None)):
            return
        try:
            self._fd = os.open(path, os.O_RDWR)   # fallocate needs a file open for writing
        except OSError as e:
            log.warning("allocation ahead and early write-out of %s are off (%s)", path, e)
            self._allocate = False
            return
        if writeback and _sync_file_range is not None:
            self._thread = threading.Thread(target=self._run, name="kv-disk-writeback",
                                            daemon=True)
            self._thread.start()

    @property
    def writeback(self) -> bool:
        return self._thread is not None and not self._closed

    def allocate(self, start: int, length: int) -> None:
        """Allocate [start, start + length), clipped to the file's size (never grows it)."""
        if not self._allocate or length <= 0:
            return
        t0 = time.perf_counter()
        end = min(start + length, os.fstat(self._fd).st_size)
        if end > start and _fallocate(self._fd, 0, start, end - start) != 0:
            log.warning("allocation ahead in %s is off (fallocate: %s)", self.path,
                        os.strerror(ctypes.get_errno()))
            self._allocate = False
        elif end > start:
            self.allocated += end - start
        self.allocate_s += time.perf_counter() - t0

    def kick(self) -> None:
        if not self.writeback:
            return
        with self._cond:
            self._wanted = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._wanted and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                self._wanted = False
            t0 = time.perf_counter()
            if _sync_file_range(self._fd, 0, 0, _SYNC_FILE_RANGE_WRITE) != 0:
                log.warning("early write-out of %s is off (sync_file_range: %s)", self.path,
                            os.strerror(ctypes.get_errno()))
                with self._cond:
                    self._closed = True
                return
            self.kicks += 1
            self.kick_s += time.perf_counter() - t0

    def close(self) -> None:
        if self._thread is not None:
            with self._cond:
                self._closed = True
                self._cond.notify()
            self._thread.join()
            self._thread = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
