"""Connects the session manager's hook calls to the KV controller on the engine thread.

The manager calls these from whatever thread changed the session (often the server's event
loop); each call is posted to the engine thread without waiting, and the engine thread's command
queue keeps them in order. They may run while a prefill step is on the device (`in_flight_ok`):
the controller's work then costs the GPU no time. A session that ended its turn without
announcing a pause (WAITING) is treated as paused on "(waiting)", a tool name the pause
estimator learns like any other.
"""
from __future__ import annotations

import logging
import time

from runtime.engine_thread import EngineThread
from runtime.kv_controller import KVController
from runtime.step_cap import WAITING_TOOL

log = logging.getLogger(__name__)

__all__ = ["SessionKVHook", "WAITING_TOOL"]


class SessionKVHook:
    def __init__(self, engine_thread: EngineThread, controller: KVController):
        self.thread, self.ctl = engine_thread, controller
        self._waiting_since: dict[str, float] = {}
        engine_thread.on_step.append(lambda _engine: controller.tick())

    def _post(self, fn) -> None:
        if self.thread.alive:
            self.thread.call(lambda _engine: fn(), wait=False, in_flight_ok=True)

    def on_turn_end(self, session) -> None:
        sid, log_ids = session.session_id, list(session.token_log)
        waiting = str(getattr(session.state, "value", session.state)).lower() == "waiting"

        def run() -> None:
            self.ctl.turn_end(sid, log_ids)
            if waiting:
                self.ctl.pause(sid, WAITING_TOOL, None, False)
        self._post(run)
        if waiting:
            self._waiting_since[sid] = time.time()

    def on_pause(self, session) -> None:
        p = session.pause
        if p is None:
            return
        sid = session.session_id
        self._waiting_since.pop(sid, None)
        self._post(lambda: self.ctl.pause(sid, p.tool, p.expected_s, p.human))

    def on_resume(self, session) -> None:
        sid = session.session_id
        self._post(lambda: self.ctl.resume(sid))

    def turn_started(self, session_id: str, request_id: str | None = None) -> None:
        """A session's next turn arrived (as engine request `request_id`, submitted right after
        this): learn how long a WAITING session waited, and resume it."""
        since = self._waiting_since.pop(session_id, None)
        if since is not None:
            self.ctl.policy.estimator.observe(WAITING_TOOL, False, time.time() - since)

        def run() -> None:
            if request_id is not None:
                self.ctl.track(request_id, session_id)
            self.ctl.resume(session_id)
        self._post(run)

    def on_close(self, session) -> None:
        sid = session.session_id
        self._waiting_since.pop(sid, None)
        self._post(lambda: self.ctl.close(sid))

    def admission_priority(self, session_id: str, is_resume: bool) -> float:
        """Engine priority of a turn: resumed sessions go ahead of first turns, with aging."""
        now = time.monotonic()
        return self.ctl.policy.admission_priority(session_id, is_resume, now, now)
