"""The session state machine: every (state, event) pair, legal or not, against the spec table."""
from dataclasses import dataclass

import pytest

from sessions.errors import IllegalTransition
from sessions.state import (TRANSITIONS, SessionEvent, SessionState, legal_events, next_state,
                            transition)

A, W, P, C, X = (SessionState.ACTIVE, SessionState.WAITING, SessionState.PAUSED,
                 SessionState.CLOSED, SessionState.EXPIRED)
E = SessionEvent

# The specification, written out: (state, event) -> resulting state; absent pairs are illegal.
LEGAL = {
    (W, E.START_TURN): A, (W, E.PAUSE): P, (W, E.CLOSE): C, (W, E.EXPIRE): X,
    (A, E.END_TURN): W, (A, E.END_TURN_IN_TOOL): P, (A, E.ABORT_TURN): W, (A, E.CLOSE): C,
    (P, E.START_TURN): A, (P, E.PAUSE): P, (P, E.RESUME): W, (P, E.CLOSE): C, (P, E.EXPIRE): X,
}

# What an error message lists as legal, per state (events in declaration order).
LEGAL_TEXT = {
    W: "start a turn, pause, close, expire",
    A: "end a turn, end a turn in a tool call, abort a turn, close",
    P: "start a turn, pause, resume, close, expire",
    C: "none",
    X: "none",
}

VERB = {E.START_TURN: "start a turn", E.END_TURN: "end a turn",
        E.END_TURN_IN_TOOL: "end a turn in a tool call", E.ABORT_TURN: "abort a turn",
        E.PAUSE: "pause", E.RESUME: "resume", E.CLOSE: "close", E.EXPIRE: "expire"}

ALL_PAIRS = [(s, e) for s in SessionState for e in SessionEvent]
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in LEGAL]


@dataclass
class _S:
    session_id: str
    state: SessionState


def test_table_covers_exactly_the_spec():
    got = {(s, e): t for s, row in TRANSITIONS.items() for e, t in row.items()}
    assert got == LEGAL
    assert len(ALL_PAIRS) == 40 and len(ILLEGAL) == 27


@pytest.mark.parametrize("state,event", sorted(LEGAL, key=str), ids=lambda v: v.name)
def test_legal_transition(state, event):
    s = _S("s_abc", state)
    assert transition(s, event) is LEGAL[(state, event)]
    assert s.state is LEGAL[(state, event)]
    assert next_state(state, event) is LEGAL[(state, event)]


@pytest.mark.parametrize("state,event", ILLEGAL, ids=lambda v: v.name)
def test_illegal_transition(state, event):
    s = _S("s_abc", state)
    with pytest.raises(IllegalTransition) as info:
        transition(s, event)
    assert str(info.value) == (f"session s_abc is {state.name}; cannot {VERB[event]} "
                               f"(legal: {LEGAL_TEXT[state]})")
    assert s.state is state                         # unchanged
    err = info.value
    assert (err.session_id, err.state, err.event) == ("s_abc", state, event)
    assert {e.description for e in err.legal} == (
        set() if LEGAL_TEXT[state] == "none" else set(LEGAL_TEXT[state].split(", ")))


def test_closed_message_matches_the_documented_example():
    with pytest.raises(IllegalTransition, match=r"^session abc is CLOSED; cannot start a turn "
                                                r"\(legal: none\)$"):
        transition(_S("abc", C), E.START_TURN)


def test_second_turn_is_refused_while_active():
    with pytest.raises(IllegalTransition, match="is ACTIVE; cannot start a turn"):
        next_state(A, E.START_TURN, "s_x")


@pytest.mark.parametrize("state", list(SessionState), ids=lambda v: v.name)
def test_legal_events_and_state_properties(state):
    assert legal_events(state) == tuple(e for e in SessionEvent if (state, e) in LEGAL)
    assert state.is_open is (state not in (C, X))
    assert state.is_resting is (state in (W, P))
    if not state.is_open:
        assert legal_events(state) == ()


def test_active_never_expires_and_final_states_stay_final():
    for state in (A, C, X):
        with pytest.raises(IllegalTransition):
            next_state(state, E.EXPIRE)
    for event in SessionEvent:
        for state in (C, X):
            with pytest.raises(IllegalTransition):
                next_state(state, event)
