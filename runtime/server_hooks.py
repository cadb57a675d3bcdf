"""The session manager's hook, as the server installs it: a log line and metrics per session
event, then the KV policy's hook (when one is wired).

`SessionManager` takes one `policy_hook`; the server gives it a `HookChain` of
`SessionEventLog` and, when the server was built with a policy hook factory, the KV policy's
hook (`sessions.hooks.KVPolicyHook`: on_turn_end / on_pause / on_resume / on_close, called after
each change is committed). A hook that raises is logged and the next one still runs.
"""
from __future__ import annotations

import logging
from typing import Sequence

from runtime.metrics import Metrics
from sessions.hooks import HOOK_METHODS, KVPolicyHook
from sessions.model import Session
from sessions.state import SessionState

log = logging.getLogger("agentkv.sessions")


class HookChain:
    """Calls each hook in order; one failing does not stop the others."""

    def __init__(self, hooks: Sequence[KVPolicyHook]):
        self.hooks = list(hooks)

    def _call(self, method: str, session: Session) -> None:
        for h in self.hooks:
            try:
                getattr(h, method)(session)
            except Exception:
                log.exception("hook %s.%s failed for session %s", type(h).__name__, method,
                              session.session_id)

    def on_turn_end(self, session: Session) -> None:
        self._call("on_turn_end", session)

    def on_pause(self, session: Session) -> None:
        self._call("on_pause", session)

    def on_resume(self, session: Session) -> None:
        self._call("on_resume", session)

    def on_close(self, session: Session) -> None:
        self._call("on_close", session)


assert all(hasattr(HookChain, m) for m in HOOK_METHODS)


def _auto_paused(s: Session) -> bool:
    """The pause began when the last turn ended in a tool call (the manager's auto-pause)."""
    return (s.pause is not None and bool(s.turns) and s.turns[-1].finish_reason == "tool_call"
            and s.pause.started_at == s.turns[-1].ended_at)


class SessionEventLog:
    """One info log line and the event counters per session event."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def created(self, s: Session) -> None:
        self.metrics.events.labels("create").inc()
        log.info("session %s created (tenant %s, model %s, %d messages, %d tools)",
                 s.session_id, s.tenant, s.model, len(s.messages), len(s.tools))

    def on_turn_end(self, s: Session) -> None:
        self.metrics.events.labels("turn_end").inc()
        t = s.turns[-1]
        kv = " ".join(f"{k}={v}" for k, v in t.kv_source.items() if v)
        ttft = f"{t.ttft_s * 1e3:.1f} ms" if t.ttft_s is not None else "n/a"
        log.info("session %s turn %d ended: %s, %d input + %d output tokens, ttft %s, kv %s%s; "
                 "%d tokens in the log, %s", s.session_id, t.index, t.finish_reason,
                 t.input_tokens, t.output_tokens, ttft, kv or "none",
                 f", {t.rewritten_tokens} log tokens rewritten" if t.rewritten_tokens else "",
                 len(s.token_log), s.state.value)

    def on_pause(self, s: Session) -> None:
        self.metrics.events.labels("pause").inc()
        trigger = "tool_call" if _auto_paused(s) else "client"
        self.metrics.pauses.labels(trigger).inc()
        p = s.pause
        forecast = f", forecast p50 {p.forecast_p50_s:.3g} s ({p.forecast_source})" \
            if p.forecast_p50_s is not None else ""
        log.info("session %s paused on %s (%s; expected %s, human %s%s)", s.session_id, p.tool,
                 "tool call" if trigger == "tool_call" else "Pause",
                 f"{p.expected_s:g} s" if p.expected_s else "unknown", p.human, forecast)

    def on_resume(self, s: Session) -> None:
        self.metrics.events.labels("resume").inc()
        trigger = "turn" if s.state is SessionState.ACTIVE else "client"
        self.metrics.resumes.labels(trigger).inc()
        log.info("session %s resumed (%s)", s.session_id,
                 "next turn started" if trigger == "turn" else "Resume")

    def on_close(self, s: Session) -> None:
        self.metrics.events.labels("close").inc()
        log.info("session %s %s after %d turns (%d tokens in the log)", s.session_id,
                 s.state.value, s.num_turns, len(s.token_log))
