"""Turns and pauses of `sessions.manager.SessionManager`: begin, end and abort a turn; pause and
resume a session. Each change is committed to LMDB under the session's lock before memory shows
it, then the KV-policy hook hears of it (see `sessions.manager` for the locking rules).

`SessionTurns` is a part of `SessionManager`, which holds the state these methods use.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import operator
from typing import Any, Iterable

from sessions.errors import InvalidArgument, SessionNotFound, SessionStoreError
from sessions.hooks import new_pause, observe_pause
from sessions.model import KV_SOURCES, Session, TurnHandle, TurnRecord, check_dicts, \
    check_tokens
from sessions.state import SessionEvent as Ev, SessionState as St, next_state

log = logging.getLogger("agentkv.sessions")
_replace = dataclasses.replace


class SessionTurns:
    """Turn and pause methods of `SessionManager`."""

    # -- turns -------------------------------------------------------------------------------
    def begin_turn(self, tenant: str, session_id: str, appended_token_ids: Iterable[int],
                   appended_messages: Iterable[dict] = (), now: float | None = None, *,
                   keep_log_tokens: int | None = None) -> TurnHandle:
        """Start a turn (WAITING or PAUSED -> ACTIVE). Nothing of it enters the token log until
        `end_turn`. The prompt is the log (cut to `keep_log_tokens` when a chat re-render
        changed earlier tokens) plus `appended_token_ids`."""
        toks = check_tokens("appended_token_ids", appended_token_ids)
        msgs = check_dicts("appended_messages", appended_messages)
        e = self._entry(tenant, session_id)
        with e.lock:
            s, now = e.session, self._now(now)
            next_state(s.state, Ev.START_TURN, session_id)
            n_log = len(s.token_log)
            keep = n_log if keep_log_tokens is None else operator.index(keep_log_tokens)
            if not 0 <= keep <= n_log:
                raise InvalidArgument(f"keep_log_tokens={keep} is outside [0, {n_log}] (the "
                                      f"session's token log has {n_log} tokens)")
            prompt = s.token_log[:keep] + toks
            if not prompt:
                raise InvalidArgument("the turn has no tokens: the session's log is empty, so "
                                      "appended_token_ids must hold the rendered prompt")
            paused = s.pause if s.state is St.PAUSED else None
            new = _replace(s, state=St.ACTIVE, pause=None, resume_expected_at=None,
                           updated_at=now)
            self.store.save(new)
            handle = TurnHandle(session_id, tenant, len(s.turns), prompt, tuple(toks),
                                tuple(msgs), keep, n_log - keep, now, next(self._nonces))
            self._publish(e, new, turn=handle)
            if paused is not None:
                observe_pause(self.estimator, paused, now - paused.started_at)
                self._queue(e, "on_resume", new)
        self._drain(e)
        return handle

    def end_turn(self, handle: TurnHandle, output_token_ids: Iterable[int], finish_reason: Any,
                 tool_calls: Iterable[dict] = (), kv_source: dict[str, int] | None = None,
                 ttft_s: float | None = None, first_token_at: float | None = None,
                 rewritten_tokens: int = 0, auto_pause_tool: str | None = None, *,
                 assistant_message: dict | None = None, now: float | None = None) -> Session:
        """Commit the turn: its input and output tokens join the log, its record and messages
        the session, all in one fsync'd LMDB transaction, before this returns. The session
        goes PAUSED on `auto_pause_tool` (the turn ended in a tool call) or WAITING.

        rewritten_tokens: log tokens the turn dropped; 0 takes what keep_log_tokens cut.
        assistant_message: the model's reply as a chat message, appended after the turn's input
        messages (so that the chat can be re-rendered)."""
        out = check_tokens("output_token_ids", output_token_ids)
        calls = check_dicts("tool_calls", tool_calls)
        try:
            kv = {str(k): int(v) for k, v in (kv_source or {}).items()}
        except (TypeError, ValueError, AttributeError):
            raise InvalidArgument(f"kv_source must map tier names ({', '.join(KV_SOURCES)}) to "
                                  f"token counts, got {kv_source!r}") from None
        reply = check_dicts("assistant_message", [assistant_message]) if assistant_message else []
        if auto_pause_tool is not None and (not isinstance(auto_pause_tool, str)
                                            or not auto_pause_tool):
            raise InvalidArgument("auto_pause_tool must be a non-empty tool name or None")
        sid = handle.session_id
        e = self._entry(handle.tenant, sid)
        with e.lock:
            s, now = e.session, self._now(now)
            event = Ev.END_TURN_IN_TOOL if auto_pause_tool else Ev.END_TURN
            state = next_state(s.state, event, sid)
            turn = self._current_turn(e, handle)
            new_tokens = list(turn.appended_token_ids) + out
            record = TurnRecord(
                turn.turn_index, len(turn.appended_token_ids), len(out), turn.started_at,
                first_token_at, now, ttft_s, str(getattr(finish_reason, "value", finish_reason)),
                calls, kv, int(rewritten_tokens) or turn.dropped_tokens)
            pause = None if not auto_pause_tool else \
                new_pause(self.estimator, auto_pause_tool, None, False, now)
            new = _replace(s, state=state, token_log=s.token_log[:turn.kept_log_tokens]
                           + new_tokens, turns=s.turns + [record], pause=pause, updated_at=now,
                           messages=s.messages + list(turn.appended_messages) + reply)
            self.store.save_turn(new, new_tokens)
            self._publish(e, new, turn=None)
            self._queue(e, "on_turn_end", new)
            if pause is not None:
                self._queue(e, "on_pause", new)
        self._drain(e)
        return new.snapshot()

    def abort_turn(self, handle: TurnHandle, reason: str = "") -> Session | None:
        """Drop the turn in flight (cancel, disconnect, engine error): nothing of it is kept
        and the session is WAITING again. None (and no change) when that turn is no longer in
        flight: it ended, was aborted, or the session was closed."""
        try:
            e = self._entry(handle.tenant, handle.session_id)
        except SessionNotFound:
            return None
        with e.lock:
            s = e.session
            if s.state is not St.ACTIVE or e.turn is None or e.turn.nonce != handle.nonce:
                return None
            new = _replace(s, state=next_state(s.state, Ev.ABORT_TURN, s.session_id),
                           updated_at=self.clock())
            try:
                self.store.save(new)
            except SessionStoreError as err:   # a restart restores ACTIVE as WAITING anyway
                log.error("session %s: abort of turn %d not persisted: %s", s.session_id,
                          handle.turn_index, err)
            self._publish(e, new, turn=None)
        log.info("session %s: turn %d aborted (%s)", s.session_id, handle.turn_index,
                 reason or "no reason given")
        return new.snapshot()

    # -- pauses ------------------------------------------------------------------------------
    def pause(self, tenant: str, session_id: str, tool: str, expected_s: float | None = None,
              human: bool = False, now: float | None = None) -> Session:
        """WAITING or PAUSED -> PAUSED on `tool`. expected_s: the client's estimate (None or 0:
        let the estimator forecast). Pausing a PAUSED session refines its pause, which keeps
        its start time."""
        if not isinstance(tool, str) or not tool:
            raise InvalidArgument("tool must be a non-empty name (the tool, or 'human')")
        if expected_s is not None and not (math.isfinite(expected_s) and expected_s >= 0):
            raise InvalidArgument(f"expected_s must be a finite number of seconds >= 0, "
                                  f"got {expected_s!r}")
        e = self._entry(tenant, session_id)
        with e.lock:
            s, now = e.session, self._now(now)
            next_state(s.state, Ev.PAUSE, session_id)
            started = s.pause.started_at if s.pause is not None else now
            pause = new_pause(self.estimator, tool, expected_s or None, bool(human), started)
            new = _replace(s, state=St.PAUSED, pause=pause, resume_expected_at=None,
                           updated_at=now)
            self.store.save(new)
            self._publish(e, new)
            self._queue(e, "on_pause", new)
        self._drain(e)
        return new.snapshot()

    def resume(self, tenant: str, session_id: str, hint_s: float | None = None,
               now: float | None = None) -> Session:
        """PAUSED -> WAITING. hint_s: the next input is expected in this many seconds (a
        policy may prefetch the KV for then); the pause's measured length (plus the hint) is
        reported to the estimator."""
        if hint_s is not None and not (math.isfinite(hint_s) and hint_s >= 0):
            raise InvalidArgument(f"hint_s must be a finite number of seconds >= 0, "
                                  f"got {hint_s!r}")
        e = self._entry(tenant, session_id)
        with e.lock:
            s, now = e.session, self._now(now)
            state = next_state(s.state, Ev.RESUME, session_id)
            wait = float(hint_s or 0.0)
            new = _replace(s, state=state, pause=None, resume_expected_at=now + wait,
                           updated_at=now)
            self.store.save(new)
            self._publish(e, new)
            observe_pause(self.estimator, s.pause, now - s.pause.started_at + wait)
            self._queue(e, "on_resume", new)
        self._drain(e)
        return new.snapshot()
