"""The session manager: what the gRPC server calls to create, run, pause and close sessions.

Every change is committed to LMDB (fsync'd) before the call returns and before memory shows it:
memory is never ahead of the disk, so a failed write leaves the session as it was. Then the
KV-policy hook hears of it (sessions/hooks.py), outside every lock.

Locks: one manager lock guards the in-memory maps and is never held during disk I/O or hooks;
each session has its own lock that serialises the changes of that session (its disk writes
included), so two calls on one session commit in order and `begin_turn` refuses a second turn.
Reads (`get`, `list`, `count_by_state`) never wait for a disk write.

Methods that change a session write to disk: from an asyncio loop, run them in an executor
(`await loop.run_in_executor(None, manager.end_turn, ...)`). Sessions are returned as snapshots.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections import Counter
from typing import Callable, Iterable

from sessions.errors import InvalidArgument, SessionLimitExceeded, SessionNotFound, \
    SessionStoreError, StaleTurnHandle
from sessions.hooks import HookQueue, KVPolicyHook, PauseEstimatorLike
from sessions.ids import check_session_id, new_session_id
from sessions.manager_turns import SessionTurns
from sessions.model import Session, TurnHandle, check_dicts, check_plain
from sessions.state import SessionEvent as Ev, SessionState as St, next_state
from sessions.store import SessionStore, check_tenant, decode_page_token, encode_page_token

log = logging.getLogger("agentkv.sessions")

DEFAULT_TTL_S = 24 * 3600.0
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 500
_replace = dataclasses.replace


class _Entry:
    """One session in memory: its committed state, its turn in flight, its queued hook calls."""
    __slots__ = ("session", "lock", "turn", "hooks")

    def __init__(self, session: Session):
        self.session = session                  # committed; replaced, never changed in place
        self.lock = threading.Lock()            # serialises changes of this session
        self.turn: TurnHandle | None = None
        self.hooks = HookQueue()


class SessionManager(SessionTurns):
    """Sessions of every tenant: state machine, token log, persistence, TTLs, hooks.

    ttl_by_tenant: idle TTL (s) per tenant, default_ttl_s for the others (None: never expire).
    max_sessions_per_tenant: open sessions a tenant may hold (None: no limit).
    estimator: a pause-duration model (sessions.estimator.PauseEstimator) or None.
    retain_closed_s: how long a closed or expired session still answers `get` with its final
    state (its record is deleted from LMDB at once; a restart forgets it).
    """

    def __init__(self, store: SessionStore, clock: Callable[[], float] = time.time,
                 policy_hook: KVPolicyHook | None = None,
                 default_ttl_s: float | None = DEFAULT_TTL_S,
                 ttl_by_tenant: dict[str, float | None] | None = None,
                 max_sessions_per_tenant: int | None = None,
                 estimator: PauseEstimatorLike | None = None, retain_closed_s: float = 300.0):
        if max_sessions_per_tenant is not None and max_sessions_per_tenant < 1:
            raise ValueError(f"max_sessions_per_tenant must be >= 1 or None, "
                             f"got {max_sessions_per_tenant}")
        self.store, self.clock, self.policy_hook = store, clock, policy_hook
        self.default_ttl_s = default_ttl_s
        self.ttl_by_tenant = dict(ttl_by_tenant or {})
        self.max_sessions_per_tenant = max_sessions_per_tenant
        self.estimator = estimator
        self.retain_closed_s = retain_closed_s
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._counts: Counter = Counter()           # SessionState -> sessions in memory
        self._open: Counter = Counter()             # tenant -> open sessions (+ being created)
        self._nonces = itertools.count(1)

    def ttl_for(self, tenant: str) -> float | None:
        return self.ttl_by_tenant.get(tenant, self.default_ttl_s)

    # -- create / read -----------------------------------------------------------------------
    def create(self, tenant: str, model: str, system_prompt: str = "", messages: Iterable = (),
               tools: Iterable = (), sampling_defaults: dict | None = None) -> Session:
        """A new WAITING session with an empty token log; SessionLimitExceeded at the limit."""
        check_tenant(tenant)
        if not isinstance(model, str) or not isinstance(system_prompt, str):
            raise InvalidArgument("model and system_prompt must be strings")
        now = self.clock()
        defaults = check_plain("sampling_defaults", dict(sampling_defaults or {}))
        s = Session(new_session_id(), tenant, model, now, now, St.WAITING,
                    system_prompt=system_prompt, messages=check_dicts("messages", messages),
                    tools=check_dicts("tools", tools), sampling_defaults=defaults,
                    ttl_s=self.ttl_for(tenant))
        limit = self.max_sessions_per_tenant
        with self._lock:                            # reserve a slot before writing
            if limit is not None and self._open[tenant] >= limit:
                raise SessionLimitExceeded(tenant, limit, self._open[tenant])
            self._open[tenant] += 1
        try:
            self.store.create(s)
        except BaseException:
            with self._lock:
                self._open[tenant] -= 1
            raise
        with self._lock:
            self._entries[s.session_id] = _Entry(s)
            self._counts[s.state] += 1
        return s.snapshot()

    def get(self, tenant: str, session_id: str) -> Session:
        """The session; SessionNotFound for an unknown id and for another tenant's session."""
        return self._entry(tenant, session_id).session.snapshot()

    def list(self, tenant: str, page_size: int = DEFAULT_PAGE_SIZE, page_token: str = "",
             state: St | None = None) -> tuple[list[Session], str]:
        """One page of the tenant's open sessions, oldest first, and the next page's token
        ("" on the last page). page_size 0 means 50; more than 500 is cut to 500."""
        if page_size < 0:
            raise InvalidArgument(f"page_size must be >= 0 (0: {DEFAULT_PAGE_SIZE}), "
                                  f"got {page_size}")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        cursor = decode_page_token(page_token) if page_token else b""
        page: list[Session] = []
        while True:
            batch = self.store.list_ids(tenant, size + 1, cursor)
            for cur, sid in batch:
                with self._lock:
                    e = self._entries.get(sid)
                s = e.session if e is not None and e.session.tenant == tenant else None
                if s is None or (state is not None and s.state is not state):
                    cursor = cur
                    continue
                if len(page) == size:               # one more exists: this page is full
                    return page, encode_page_token(cursor)
                page.append(s.snapshot())
                cursor = cur
            if len(batch) < size + 1:
                return page, ""

    def count_by_state(self, tenant: str | None = None) -> dict[St, int]:
        """Sessions in memory per state (every state present, zeros included). Keys compare
        equal to the states' string values ("active", "waiting", ...)."""
        with self._lock:
            if tenant is None:
                counts = Counter(self._counts)
            else:
                counts = Counter(e.session.state for e in self._entries.values()
                                 if e.session.tenant == tenant)
        return {st: counts[st] for st in St}

    # -- ends --------------------------------------------------------------------------------
    def close(self, tenant: str, session_id: str, now: float | None = None) -> Session:
        """Close the session (from any open state; a turn in flight is dropped: abort its
        engine request too). Its records leave LMDB at once."""
        e = self._entry(tenant, session_id)
        with e.lock:
            s, now = e.session, self._now(now)
            state = next_state(s.state, Ev.CLOSE, session_id)
            new = _replace(s, state=state, closed_at=now, updated_at=now)
            self.store.delete(session_id)
            self._publish(e, new, turn=None)
            self._queue(e, "on_close", new)
        self._drain(e)
        return new.snapshot()

    def expire_idle(self, now: float | None = None) -> list[str]:
        """Expire WAITING and PAUSED sessions idle for their TTL or longer; forget closed and
        expired sessions older than retain_closed_s. Returns the ids expired now."""
        now = self._now(now)
        with self._lock:
            for sid in [sid for sid, e in self._entries.items() if not e.session.is_open
                        and now - e.session.closed_at >= self.retain_closed_s]:
                self._counts[self._entries.pop(sid).session.state] -= 1
            due = [e for e in self._entries.values() if self._idle_past_ttl(e.session, now)]
        expired = []
        for e in due:
            with e.lock:
                s = e.session
                if not self._idle_past_ttl(s, now):     # it changed meanwhile
                    continue
                new = _replace(s, state=next_state(s.state, Ev.EXPIRE, s.session_id),
                               closed_at=now)
                try:
                    self.store.delete(s.session_id)
                except SessionStoreError as err:        # try again on the next sweep
                    log.error("session %s: expiry not persisted: %s", s.session_id, err)
                    continue
                self._publish(e, new)
                self._queue(e, "on_close", new)
            self._drain(e)
            expired.append(s.session_id)
        return expired

    def restore(self, now: float | None = None) -> int:
        """Load every open session from LMDB (call once, before serving). A session that was
        ACTIVE when the process died comes back WAITING with the log of its last completed
        turn, its idle clock restarted. Returns the number of sessions restored."""
        now = self._now(now)
        restored = 0
        for s in self.store.load_all_open():
            with self._lock:
                if s.session_id in self._entries:
                    continue
            s.ttl_s = self.ttl_for(s.tenant)
            if s.state is St.ACTIVE:
                log.info("session %s: turn %d was in flight at shutdown; dropped",
                         s.session_id, len(s.turns))
                s.state, s.updated_at = St.WAITING, now
                self.store.save(s)
            with self._lock:
                self._entries[s.session_id] = _Entry(s)
                self._counts[s.state] += 1
                self._open[s.tenant] += 1
            restored += 1
        return restored

    # -- internals ---------------------------------------------------------------------------
    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else float(now)

    def _entry(self, tenant: str, session_id: str) -> _Entry:
        check_session_id(session_id)
        with self._lock:
            e = self._entries.get(session_id)
        if e is None or e.session.tenant != tenant:
            raise SessionNotFound(session_id)
        return e

    @staticmethod
    def _current_turn(e: _Entry, handle: TurnHandle) -> TurnHandle:
        if e.turn is None or e.turn.nonce != handle.nonce:
            raise StaleTurnHandle(handle.session_id, handle.turn_index,
                                  e.turn.turn_index if e.turn is not None else None)
        return e.turn

    def _publish(self, e: _Entry, new: Session, **kw) -> None:
        """Make a committed change visible (the caller holds e.lock)."""
        with self._lock:
            old = e.session
            if old.state is not new.state:
                self._counts[old.state] -= 1
                self._counts[new.state] += 1
                if old.is_open and not new.is_open:
                    self._open[new.tenant] -= 1
            e.session = new
            if "turn" in kw:
                e.turn = kw["turn"]

    @staticmethod
    def _idle_past_ttl(s: Session, now: float) -> bool:
        return s.state.is_resting and s.ttl_s is not None and now - s.updated_at >= s.ttl_s

    def _queue(self, e: _Entry, method: str, session: Session) -> None:
        if self.policy_hook is not None:
            e.hooks.put(method, session)

    def _drain(self, e: _Entry) -> None:
        if self.policy_hook is not None:
            e.hooks.drain(self.policy_hook)
