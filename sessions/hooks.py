"""What the session manager tells the outside world: the KV-policy hook and the pause estimator.

`KVPolicyHook` is implemented by whoever moves a session's KV between tiers (the runtime's KV
controller). The manager calls it after each state change has been committed to LMDB, outside
its locks, with a snapshot of the session after the change; for any one session the calls come
in the order of the changes (two threads changing one session never reorder its hook calls).
A hook that raises is logged and ignored: the session's state is already committed.

    on_turn_end(session)   a turn was committed (session.token_log is the new log; state is
                           WAITING, or PAUSED when the turn ended in a tool call, in which case
                           on_pause follows at once)
    on_pause(session)      session.pause says on what, since when, and the forecast; also
                           called again when a PAUSED session's pause is refined
    on_resume(session)     the pause ended: by `resume` (state WAITING; resume_expected_at may
                           say when the input will come, for a prefetch) or by the next turn
                           starting (state ACTIVE)
    on_close(session)      the session ended: state CLOSED (closed by the client) or EXPIRED
                           (idle past its TTL); forget its KV

Hooks run on the caller's thread. If a hook must touch the engine, post the work to the
engine thread (`EngineThread.call(..., wait=False)`) rather than waiting for it: the manager may
be called from the event loop.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Protocol, runtime_checkable

from sessions.model import PauseInfo, Session

log = logging.getLogger("agentkv.sessions")

HOOK_METHODS = ("on_turn_end", "on_pause", "on_resume", "on_close")


@runtime_checkable
class KVPolicyHook(Protocol):
    def on_turn_end(self, session: Session) -> None: ...

    def on_pause(self, session: Session) -> None: ...

    def on_resume(self, session: Session) -> None: ...

    def on_close(self, session: Session) -> None: ...


class PauseForecastLike(Protocol):
    """What the manager reads from a forecast (sessions.estimator.PauseForecast fits)."""
    p50_s: float
    source: str


@runtime_checkable
class PauseEstimatorLike(Protocol):
    """A pause-duration model (sessions.estimator.PauseEstimator fits).

    `expected` is called when a pause starts (its p50 and source fill PauseInfo.forecast_*);
    `observe` when it ends with the measured duration, but not when the session is closed or
    expires while paused (that duration is unknown, only bounded below).
    """

    def observe(self, tool: str, human: bool, duration_s: float) -> None: ...

    def expected(self, tool: str, human: bool = False,
                 hint_s: float | None = None) -> PauseForecastLike: ...


class HookQueue:
    """One session's pending hook calls, run in order by one thread at a time.

    Calls are queued while the session's lock is held (so the queue order is the commit order)
    and run after it is released by whichever thread drains first; a thread that finds another
    one draining leaves its calls to it.
    """

    def __init__(self) -> None:
        self._calls: deque = deque()
        self._lock = threading.Lock()
        self._draining = False

    def put(self, method: str, session: Session) -> None:
        with self._lock:
            self._calls.append((method, session))

    def drain(self, hook: KVPolicyHook) -> None:
        while True:
            with self._lock:
                if self._draining or not self._calls:
                    return
                self._draining = True
                method, session = self._calls.popleft()
            try:
                getattr(hook, method)(session.snapshot())
            except Exception:
                log.exception("policy hook %s failed for session %s", method,
                              session.session_id)
            finally:
                with self._lock:
                    self._draining = False


def new_pause(estimator: PauseEstimatorLike | None, tool: str, expected_s: float | None,
              human: bool, started_at: float) -> PauseInfo:
    """A PauseInfo with the estimator's forecast (or the client's hint without an estimator)."""
    p50 = source = None
    if estimator is not None:
        try:
            f = estimator.expected(tool, human, expected_s)
            p50, source = float(f.p50_s), str(f.source)
        except Exception:                           # a forecast is advice, not state
            log.exception("pause estimator failed for tool %r", tool)
    elif expected_s is not None:
        p50, source = expected_s, "hint"
    return PauseInfo(tool, expected_s, human, started_at, p50, source)


def observe_pause(estimator: PauseEstimatorLike | None, pause: PauseInfo,
                  duration_s: float) -> None:
    """Report a finished pause to the estimator (errors are logged, never raised)."""
    if estimator is not None:
        try:
            estimator.observe(pause.tool, pause.human, max(0.0, duration_s))
        except Exception:
            log.exception("pause estimator failed to observe tool %r", pause.tool)
