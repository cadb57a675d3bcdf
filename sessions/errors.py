"""Errors of the session layer; each message says what was wrong and what is allowed.

Suggested gRPC status for each (the server maps them):

    SessionNotFound        NOT_FOUND            unknown id, or another tenant's session
    InvalidSessionId       INVALID_ARGUMENT     not an id this runtime issues
    InvalidArgument        INVALID_ARGUMENT     bad tokens, tenant, page size or page token
    IllegalTransition      FAILED_PRECONDITION  the session's state does not allow the call
    StaleTurnHandle        FAILED_PRECONDITION  the turn handle is not the turn in flight
    SessionLimitExceeded   RESOURCE_EXHAUSTED   the tenant has its maximum of open sessions
    SessionFormatError     DATA_LOSS            a stored record this build cannot read
    SessionStoreError      UNAVAILABLE          LMDB refused a write (map full, I/O error)
"""
from __future__ import annotations

from typing import Iterable


class SessionError(Exception):
    """Base class of every error raised by `sessions` (state, store and manager)."""


class SessionNotFound(SessionError, LookupError):
    """No session with this id is visible to the caller's tenant.

    The message is the same whether the id never existed or belongs to another tenant, so a
    tenant cannot learn anything about another tenant's sessions.
    """

    def __init__(self, session_id: str):
        self.session_id = session_id
        super().__init__(f"no session {session_id} for this tenant (it never existed, was "
                         f"closed or expired, or belongs to another tenant)")


class InvalidArgument(SessionError, ValueError):
    """A caller-supplied value is malformed (the message names the value and the rule)."""


class InvalidSessionId(InvalidArgument):
    """A string that is not a session id this runtime issues."""


class IllegalTransition(SessionError):
    """The session's state does not allow the attempted event.

    Attributes: session_id, state (SessionState), event (SessionEvent), legal (the events the
    state allows, possibly empty).
    """

    def __init__(self, session_id: str, state, event, legal: Iterable):
        self.session_id = session_id
        self.state = state
        self.event = event
        self.legal = tuple(legal)
        names = ", ".join(e.description for e in self.legal) or "none"
        super().__init__(f"session {session_id} is {state.name}; cannot {event.description} "
                         f"(legal: {names})")


class StaleTurnHandle(SessionError):
    """A turn handle that is not (or no longer) the session's turn in flight."""

    def __init__(self, session_id: str, turn_index: int, current: int | None):
        self.session_id = session_id
        self.turn_index = turn_index
        self.current = current
        now = f"turn {current} is" if current is not None else "no turn is"
        super().__init__(f"turn {turn_index} of session {session_id} is no longer in flight "
                         f"({now}); end or abort a turn only with the handle begin_turn "
                         f"returned for it, once")


class SessionLimitExceeded(SessionError):
    """The tenant already has `limit` open sessions."""

    def __init__(self, tenant: str, limit: int, open_now: int):
        self.tenant = tenant
        self.limit = limit
        self.open_now = open_now
        super().__init__(f"tenant {tenant!r} has {open_now} open sessions and the limit is "
                         f"max_sessions_per_tenant={limit}; close sessions (or let idle ones "
                         f"expire) before creating more")


class SessionFormatError(SessionError):
    """A stored session record is corrupt or of a format version this build does not read."""


class SessionStoreError(SessionError):
    """LMDB could not do what was asked (full map, I/O error, inconsistent write)."""
