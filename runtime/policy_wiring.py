"""Builds the server's KV policy hook: the configured cache policy, its controller on the engine
thread, and the session hook that feeds it."""
from __future__ import annotations

from runtime.engine_thread import EngineThread
from runtime.kv_controller import make_controller
from runtime.session_kv_hook import SessionKVHook
from sessions.estimator import PauseEstimator


def kv_policy_hook_factory(estimator: PauseEstimator | None = None):
    """A `PolicyHookFactory` for `AgentKVServer`: (engine thread, server config) -> hook."""
    def build(engine_thread: EngineThread, config) -> SessionKVHook:
        ctl = engine_thread.call(lambda e: make_controller(
            e, config.policy, estimator, options=config.policy_options))
        return SessionKVHook(engine_thread, ctl)
    return build
