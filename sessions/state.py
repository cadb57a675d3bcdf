"""The session state machine: states, events, and the table of legal transitions.

    WAITING --start a turn--------------> ACTIVE
    ACTIVE  --end a turn----------------> WAITING
    ACTIVE  --end a turn in a tool call-> PAUSED     (auto-pause under the tool's name)
    ACTIVE  --abort a turn--------------> WAITING    (cancel, disconnect, engine error)
    WAITING --pause---------------------> PAUSED     (the client announces a tool or a human)
    PAUSED  --pause---------------------> PAUSED     (refines tool / estimate / human flag)
    PAUSED  --resume--------------------> WAITING    (input is on its way)
    PAUSED  --start a turn--------------> ACTIVE     (the tool's result arrives as the turn)
    WAITING, PAUSED, ACTIVE --close-----> CLOSED
    WAITING, PAUSED --expire------------> EXPIRED    (idle longer than the tenant's TTL)

CLOSED and EXPIRED are final. An ACTIVE session never expires (a turn is generating), and a
second turn cannot start while one is ACTIVE.
"""
from __future__ import annotations

import enum
from types import MappingProxyType
from typing import Mapping

from sessions.errors import IllegalTransition


class SessionState(str, enum.Enum):
    ACTIVE = "active"        # a turn is generating
    WAITING = "waiting"      # between turns, nothing announced
    PAUSED = "paused"        # a tool call (or a human) is in flight
    CLOSED = "closed"        # closed by the client; final
    EXPIRED = "expired"      # idle past its TTL; final

    @property
    def is_open(self) -> bool:
        return self not in (SessionState.CLOSED, SessionState.EXPIRED)

    @property
    def is_resting(self) -> bool:
        """Between turns: the states a session is persisted in and restored to."""
        return self in (SessionState.WAITING, SessionState.PAUSED)


class SessionEvent(str, enum.Enum):
    START_TURN = "start_turn"
    END_TURN = "end_turn"
    END_TURN_IN_TOOL = "end_turn_in_tool"
    ABORT_TURN = "abort_turn"
    PAUSE = "pause"
    RESUME = "resume"
    CLOSE = "close"
    EXPIRE = "expire"

    @property
    def description(self) -> str:
        """The event as a verb phrase, for error messages ("cannot start a turn")."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    SessionEvent.START_TURN: "start a turn",
    SessionEvent.END_TURN: "end a turn",
    SessionEvent.END_TURN_IN_TOOL: "end a turn in a tool call",
    SessionEvent.ABORT_TURN: "abort a turn",
    SessionEvent.PAUSE: "pause",
    SessionEvent.RESUME: "resume",
    SessionEvent.CLOSE: "close",
    SessionEvent.EXPIRE: "expire",
}

_S, _E = SessionState, SessionEvent

TRANSITIONS: Mapping[SessionState, Mapping[SessionEvent, SessionState]] = MappingProxyType({
    _S.WAITING: MappingProxyType({
        _E.START_TURN: _S.ACTIVE,
        _E.PAUSE: _S.PAUSED,
        _E.CLOSE: _S.CLOSED,
        _E.EXPIRE: _S.EXPIRED,
    }),
    _S.ACTIVE: MappingProxyType({
        _E.END_TURN: _S.WAITING,
        _E.END_TURN_IN_TOOL: _S.PAUSED,
        _E.ABORT_TURN: _S.WAITING,
        _E.CLOSE: _S.CLOSED,
    }),
    _S.PAUSED: MappingProxyType({
        _E.START_TURN: _S.ACTIVE,
        _E.PAUSE: _S.PAUSED,
        _E.RESUME: _S.WAITING,
        _E.CLOSE: _S.CLOSED,
        _E.EXPIRE: _S.EXPIRED,
    }),
    _S.CLOSED: MappingProxyType({}),
    _S.EXPIRED: MappingProxyType({}),
})


def legal_events(state: SessionState) -> tuple[SessionEvent, ...]:
    """The events `state` allows, in the order SessionEvent declares them."""
    allowed = TRANSITIONS[state]
    return tuple(e for e in SessionEvent if e in allowed)


def next_state(state: SessionState, event: SessionEvent, session_id: str = "?") -> SessionState:
    """The state after `event`; raises IllegalTransition (naming the legal events) if none."""
    nxt = TRANSITIONS[state].get(event)
    if nxt is None:
        raise IllegalTransition(session_id, state, event, legal_events(state))
    return nxt


def transition(session, event: SessionEvent) -> SessionState:
    """Apply `event` to `session` (anything with `session_id` and `state`) and return the new
    state; the session is left unchanged when the transition is illegal."""
    new = next_state(session.state, event, session.session_id)
    session.state = new
    return new
