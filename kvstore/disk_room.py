"""The disk tier's room keeping: deletes, eviction to the block budget, the map space kept
for sessions, and purging other models' blocks (writer thread; see `kvstore.disk`).

`DiskRoom` is a part of `kvstore.disk.DiskStore`, which sets up the state it uses.
"""
from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Iterable

import lmdb
import msgpack

from kvstore.block_codec import FORMAT_VERSION
from kvstore.eviction import pick_victims
from kvstore.lmdb_env import live_pages

log = logging.getLogger("agentkv.kvstore.disk")

_TICK = b"\x00tick"                   # a kv_meta key rewritten after deletes (see _delete)


class _ReserveReached(Exception):
    """A block transaction would take map space kept for sessions (handled like a full map)."""


@dataclass
class PutResult:
    """What one `put_many` batch did; never raises for a full or degraded tier."""
    written: list[bytes] = field(default_factory=list)
    refused: list[bytes] = field(default_factory=list)
    evicted: list[bytes] = field(default_factory=list)
    error: str | None = None


class DiskRoom:
    """Deletes and eviction of `DiskStore`."""

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
