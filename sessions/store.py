"""Sessions in LMDB: metadata, token logs in chunks, and a per-tenant index.

The environment is the data directory's LMDB environment (`kvstore.disk.open_environment`
keeps one per path and process). The server's disk KV tier has its own environment in
`<data_dir>/kv`, so a turn's commit never waits for LMDB's writer lock behind a block batch;
a store given the disk tier's path shares its environment. Named databases:

    sessions            session_id                          -> msgpack record (no token log)
    token_logs          session_id "/" chunk_index (u32 BE) -> token ids, u32 little-endian
    sessions_by_tenant  tenant 0x00 created_us (u64 BE) id  -> b""   (listing, stable order)

A turn appends its tokens as new chunk(s) (at most CHUNK_TOKENS each) and rewrites the small
metadata record, both in one write transaction: LMDB's commit is atomic and, with sync=True
(the default, required here), durable when it returns. After a crash either the whole turn is
there or none of it. A turn that cut the log back (a chat re-render changed earlier tokens)
rewrites the chunks from the cut onwards, in the same transaction.

Every method is a short transaction of its own; any thread may call any method.
"""
from __future__ import annotations

import base64
import binascii
import os
import sys
from array import array

import lmdb

from sessions.errors import InvalidArgument, SessionStoreError
from sessions.ids import ID_LENGTH, check_session_id, is_valid_session_id
from sessions.model import Session, pack_record, session_from_record, session_to_record, \
    unpack_record

SESSIONS_DB = "sessions"
TOKEN_LOGS_DB = "token_logs"
TENANT_INDEX_DB = "sessions_by_tenant"
CHUNK_TOKENS = 8192                  # tokens per token-log value at most (32 KiB)
DEFAULT_MAP_SIZE = 1 << 30
_MAX_TENANT_BYTES = 256


def open_env(path: str, map_size: int = DEFAULT_MAP_SIZE) -> lmdb.Environment:
    """The process's environment for `path` from the disk tier's registry (opened once per
    path and process; sync=True). Release it with `release_env(path)`."""
    # imported here: kvstore.disk pulls in torch, which tools reading sessions do not need
    from kvstore.disk import open_environment
    return open_environment(path, map_size)


def release_env(path: str) -> None:
    from kvstore.disk import release_environment
    release_environment(path)


def check_tenant(tenant: object) -> str:
    if not isinstance(tenant, str) or not tenant or "\x00" in tenant \
            or len(tenant.encode()) > _MAX_TENANT_BYTES:
        raise InvalidArgument(f"tenant {tenant!r} is not valid: a tenant is a non-empty string "
                              f"of at most {_MAX_TENANT_BYTES} UTF-8 bytes without NUL")
    return tenant


def encode_tokens(tokens) -> bytes:
    a = array("I", tokens)           # OverflowError outside [0, 2**32)
    if sys.byteorder == "big":
        a.byteswap()
    return a.tobytes()


def decode_tokens(data: bytes) -> list[int]:
    a = array("I")
    a.frombytes(bytes(data))
    if sys.byteorder == "big":
        a.byteswap()
    return a.tolist()


assert array("I").itemsize == 4, "token logs are stored as 4-byte unsigned ints"


def _chunk_key(sid: bytes, index: int) -> bytes:
    return sid + b"/" + index.to_bytes(4, "big")


def _index_key(tenant: str, created_at: float, sid: str) -> bytes:
    us = max(0, int(round(created_at * 1e6)))
    return tenant.encode() + b"\x00" + us.to_bytes(8, "big") + sid.encode()


def encode_page_token(cursor: bytes) -> str:
    return base64.urlsafe_b64encode(cursor).decode().rstrip("=")


def decode_page_token(token: str) -> bytes:
    """The cursor (created_us || session id) a page token carries; InvalidArgument if foreign."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        ok = len(raw) == 8 + ID_LENGTH and is_valid_session_id(raw[8:].decode())
    except (binascii.Error, ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise InvalidArgument(f"page_token {token[:40]!r} was not issued by this server: pass "
                              f"the next_page_token of the previous page, or '' for the first")
    return raw


class SessionStore:
    """Persistence of sessions in an LMDB environment (an open one, or a path to open)."""

    def __init__(self, env_or_path: lmdb.Environment | str | os.PathLike,
                 map_size: int = DEFAULT_MAP_SIZE) -> None:
        if isinstance(env_or_path, lmdb.Environment):
            self.env, self._path = env_or_path, None
        else:
            self._path = os.path.realpath(env_or_path)
            self.env = open_env(self._path, map_size)
        flags = self.env.flags()
        if not flags["sync"] or flags["readonly"]:
            self._release()
            raise SessionStoreError("the LMDB environment must be writable and opened with "
                                    "sync=True (the default): turn commits must be durable")
        try:
            self._meta = self.env.open_db(SESSIONS_DB.encode())
            self._logs = self.env.open_db(TOKEN_LOGS_DB.encode())
            self._tenants = self.env.open_db(TENANT_INDEX_DB.encode())
        except lmdb.Error as e:
            self._release()
            raise SessionStoreError(f"cannot open the session databases ({type(e).__name__}: "
                                    f"{e}); open the environment with max_dbs >= 8") from e

    # -- writes ------------------------------------------------------------------------------
    def create(self, session: Session) -> None:
        """Store a new session (metadata, index entry and any initial token log) atomically."""
        sid = check_session_id(session.session_id).encode()
        check_tenant(session.tenant)
        with self._write() as txn:
            if txn.get(sid, db=self._meta) is not None:
                raise SessionStoreError(f"session {session.session_id} already exists")
            n = self._put_chunks(txn, sid, 0, session.token_log)
            self._put_meta(txn, session, n)
            txn.put(_index_key(session.tenant, session.created_at, session.session_id), b"",
                    db=self._tenants)

    def save_turn(self, session: Session, new_tokens: list[int]) -> None:
        """Commit a turn: the metadata and the chunk(s) of `new_tokens`, in one transaction.

        `session.token_log` ends with `new_tokens`; what precedes them must be the stored log or
        a prefix of it (a rewrite), else SessionStoreError and nothing is written.
        """
        sid = session.session_id.encode()
        log, n_new = session.token_log, len(new_tokens)
        if n_new and list(log[len(log) - n_new:]) != list(new_tokens):
            raise SessionStoreError(f"session {session.session_id}: the token log does not end "
                                    f"with the turn's new tokens")
        kept = len(log) - n_new
        with self._write() as txn:
            old = self._get_meta(txn, session.session_id)
            stored_len, n_chunks = old["log_len"], old["n_chunks"]
            if kept > stored_len:
                raise SessionStoreError(f"session {session.session_id}: the turn keeps {kept} "
                                        f"tokens of a stored log of {stored_len}")
            if kept == stored_len:          # the usual case: append new chunk(s)
                n_chunks += self._put_chunks(txn, sid, n_chunks, new_tokens)
            else:                           # cut back: rewrite from the chunk holding the cut
                first, start = self._chunk_at(txn, sid, kept)
                for i in range(first, n_chunks):
                    txn.delete(_chunk_key(sid, i), db=self._logs)
                n_chunks = first + self._put_chunks(txn, sid, first, log[start:])
            self._put_meta(txn, session, n_chunks)

    def save(self, session: Session) -> None:
        """Commit a change of metadata only (state, pause, ...); the token log must not change."""
        with self._write() as txn:
            old = self._get_meta(txn, session.session_id)
            if old["log_len"] != len(session.token_log):
                raise SessionStoreError(f"session {session.session_id}: save() got a log of "
                                        f"{len(session.token_log)} tokens, the store has "
                                        f"{old['log_len']}; commit turns with save_turn()")
            self._put_meta(txn, session, old["n_chunks"])

    def delete(self, session_id: str) -> bool:
        """Remove a session, its token log and its index entry; False if it was not there."""
        sid = session_id.encode()
        with self._write() as txn:
            raw = txn.get(sid, db=self._meta)
            if raw is None:
                return False
            rec = unpack_record(raw)
            txn.delete(_index_key(rec["tenant"], rec["created_at"], session_id),
                       db=self._tenants)
            for i in range(rec["n_chunks"]):
                txn.delete(_chunk_key(sid, i), db=self._logs)
            txn.delete(sid, db=self._meta)
        return True

    # -- reads -------------------------------------------------------------------------------
    def load(self, session_id: str) -> Session | None:
        with self.env.begin() as txn:
            raw = txn.get(session_id.encode(), db=self._meta)
            return None if raw is None else self._decode(txn, raw)

    def load_all_open(self) -> list[Session]:
        """Every session not CLOSED or EXPIRED, oldest first (ties by id)."""
        out = []
        with self.env.begin() as txn:
            for _, raw in txn.cursor(db=self._meta):
                s = self._decode(txn, raw)
                if s.is_open:
                    out.append(s)
        out.sort(key=lambda s: (s.created_at, s.session_id))
        return out

    def list_ids(self, tenant: str, limit: int, after: bytes = b"") -> list[tuple[bytes, str]]:
        """Up to `limit` (cursor, session id) of `tenant` after `after`, oldest first.

        The order is (created_at, id) and never changes for a session, so paging with the last
        cursor neither repeats nor skips a session that exists for the whole walk.
        """
        prefix = check_tenant(tenant).encode() + b"\x00"
        out: list[tuple[bytes, str]] = []
        with self.env.begin(db=self._tenants) as txn:
            cur = txn.cursor()
            if not cur.set_range(prefix + after):
                return out
            for key in cur.iternext(keys=True, values=False):
                if not key.startswith(prefix) or len(out) >= limit:
                    break
                cursor = key[len(prefix):]
                if cursor == after:
                    continue
                out.append((cursor, cursor[8:].decode()))
        return out

    def count(self) -> int:
        with self.env.begin(db=self._meta) as txn:
            return txn.stat(self._meta)["entries"]

    def token_chunks(self, session_id: str) -> list[int]:
        """Token count of each stored chunk of the log, in order (inspection, tests)."""
        sid = session_id.encode()
        with self.env.begin(db=self._logs) as txn:
            cur = txn.cursor()
            out = []
            if cur.set_range(sid + b"/"):
                for key, val in cur:
                    if not key.startswith(sid + b"/"):
                        break
                    out.append(len(val) // 4)
            return out

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Release the environment if this store opened it (a given one stays open)."""
        self._release()

    def _release(self) -> None:
        if self._path is not None:
            release_env(self._path)
            self._path = None

    # -- helpers -----------------------------------------------------------------------------
    def _write(self):
        return _WriteTxn(self.env, self._path)

    def _get_meta(self, txn, session_id: str) -> dict:
        raw = txn.get(session_id.encode(), db=self._meta)
        if raw is None:
            raise SessionStoreError(f"session {session_id} is not in the store")
        return unpack_record(raw)

    def _put_meta(self, txn, session: Session, n_chunks: int) -> None:
        rec = session_to_record(session)
        rec["log_len"], rec["n_chunks"] = len(session.token_log), n_chunks
        txn.put(session.session_id.encode(), pack_record(rec), db=self._meta)

    def _put_chunks(self, txn, sid: bytes, first: int, tokens) -> int:
        n = 0
        for start in range(0, len(tokens), CHUNK_TOKENS):
            txn.put(_chunk_key(sid, first + n), encode_tokens(tokens[start:start + CHUNK_TOKENS]),
                    db=self._logs)
            n += 1
        return n

    def _chunk_at(self, txn, sid: bytes, position: int) -> tuple[int, int]:
        """(index, first token position) of the chunk holding log position `position`."""
        start, i = 0, 0
        while True:
            val = txn.get(_chunk_key(sid, i), db=self._logs)
            if val is None or start + len(val) // 4 > position:
                return i, start
            start += len(val) // 4
            i += 1

    def _decode(self, txn, raw: bytes) -> Session:
        rec = unpack_record(raw)
        sid = str(rec.get("id", "")).encode()
        log: list[int] = []
        for i in range(rec.get("n_chunks", 0)):
            val = txn.get(_chunk_key(sid, i), db=self._logs)
            if val is None:
                raise SessionStoreError(f"session {rec.get('id')}: token log chunk {i} is missing")
            log += decode_tokens(val)
        if len(log) != rec.get("log_len"):
            raise SessionStoreError(f"session {rec.get('id')}: token log has {len(log)} tokens, "
                                    f"its record says {rec.get('log_len')}")
        return session_from_record(rec, log)


class _WriteTxn:
    """A write transaction whose LMDB errors become SessionStoreError (commit on success)."""

    def __init__(self, env: lmdb.Environment, path: str | None):
        self.env, self.path = env, path
        self.txn = None

    def __enter__(self):
        try:
            self.txn = self.env.begin(write=True)
        except lmdb.Error as e:
            raise self._error(e) from e
        return self.txn

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.txn.abort()
            if issubclass(exc_type, lmdb.Error):
                raise self._error(exc) from exc
            return False
        try:
            self.txn.commit()          # atomic; fsync'd before it returns (sync=True)
        except lmdb.Error as e:
            raise self._error(e) from e
        return False

    def _error(self, e: Exception) -> SessionStoreError:
        where = self.path or self.env.path()
        if isinstance(e, lmdb.MapFullError):
            return SessionStoreError(f"the LMDB map of {where} is full "
                                     f"({self.env.info()['map_size']} bytes); nothing of this "
                                     f"change was written; raise the map size")
        return SessionStoreError(f"LMDB write at {where} failed ({type(e).__name__}: {e}); "
                                 f"nothing of this change was written")
