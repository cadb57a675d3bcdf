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

from typing import Protocol, runtime_checkable

from sessions.model import Session

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
