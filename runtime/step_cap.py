"""The cache policy's cap on the next engine step's tokens, asked by the scheduler.

A turn that arrives while a step runs waits for that step to end, so a policy may shorten steps
while some paused session is likely back (`CachePolicy.step_token_cap`). `StepCap` gives the
policy what it weighs: each paused session's seconds paused and forecast, and, when the policy
asks (`step_cap_counts_turn_ends`), each session whose turn has ended and that started no other
(its pause reaches the engine a step later), both timed from the turn's end. One answer serves
`STEP_CAP_MEMO_S`; a failing policy leaves steps at the full budget.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

from sessions.estimator import PauseForecast

log = logging.getLogger("runtime.kv_controller")

# the tool name of a session that ended its turn without announcing a pause (WAITING): the
# pause estimator learns how long such sessions wait like any tool's
WAITING_TOOL = "(waiting)"
# how long one answer of the policy's step_token_cap serves the scheduler
STEP_CAP_MEMO_S = 0.01


class StepCap:
    """`scheduler.step_cap`: () -> the most tokens the next step should carry, or None."""

    def __init__(self, policy, sessions: dict, clock: Callable[[], float]):
        self.policy, self.sessions, self.clock = policy, sessions, clock
        self._memo: tuple[float, int | None] = (-math.inf, None)

    def __call__(self) -> int | None:
        now = self.clock()
        at, cap = self._memo
        if 0.0 <= now - at < STEP_CAP_MEMO_S:
            return cap
        pauses = self.pauses(now)
        try:
            cap = self.policy.step_token_cap(pauses) if pauses else None
        except Exception:                   # advice: a failing policy must not fail the step
            log.exception("the %s policy's step cap failed; steps keep the full budget",
                          self.policy.name)
            cap = None
        self._memo = (now, cap)
        return cap

    def pauses(self, now: float) -> list[tuple[float, PauseForecast]]:
        """(seconds paused, forecast) of the sessions (`SessionKV`s) the cap weighs."""
        ends = self.policy.step_cap_counts_turn_ends
        out = []
        between: PauseForecast | None = None
        for s in self.sessions.values():
            if s.paused_at is not None:
                if s.forecast is None:
                    continue
                since = min(s.paused_at, s.ended_at) if ends and s.ended_at is not None \
                    else s.paused_at
                out.append((max(0.0, now - since), s.forecast))
            elif ends and s.ended_at is not None:
                # its last pause's forecast; a session not paused before: how long sessions
                # wait between turns unannounced (the "(waiting)" pseudo-tool)
                f = s.forecast
                if f is None:
                    f = between = between or self.policy.forecast(WAITING_TOOL, False)
                out.append((max(0.0, now - s.ended_at), f))
        return out
