"""A periodic line on the engine's progress: what the steps did since the last line.

One INFO line every `EngineConfig.stats_log_interval_s` while the engine works (nothing when
idle): steps, prompt tokens computed and tokens generated per second, the longest step (the
whole `Engine.step` call, waits for tokens included), the longest host-side scheduling pass (and
its part polling the tiers: copies that landed handled, queued ones started),
the longest gap between steps with the longest run of commands and of hooks in it, running and
waiting requests, preemptions (by growth, or to make room for a request that outranks the
victims), free GPU blocks. A stalled loop or a preemption storm shows up here before it shows up as
slow turns.

A step of `SLOW_STEP_S` or longer (at real sizes a step is tens of ms: a second means the host
waited on something, such as a kernel compile) is logged at WARNING on its own and counted in
`slow_steps` / `slow_step_s` (exported as `agentkv:engine_slow_steps_total`), whatever the
interval.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger("runtime.engine")

SLOW_STEP_S = 0.5


@dataclass
class StepWindow:
    """What the steps of one interval did (host wall times, not GPU times)."""
    started: float = field(default_factory=time.perf_counter)
    steps: int = 0
    prompt_tokens: int = 0
    decode_tokens: int = 0
    schedule_max_s: float = 0.0
    schedule_max_poll_s: float = 0.0   # of that longest pass, the tiers' poll (copies landed)
    step_max_s: float = 0.0
    gap_max_s: float = 0.0       # longest time between two steps (hooks, commands, idle)
    commands_max_s: float = 0.0  # longest run of commands (submits, session events) between steps
    hooks_max_s: float = 0.0     # longest run of the between-step hooks (the KV controller's tick)
    in_flight_commands: int = 0  # commands served while a prefill step ran on the device
    in_flight_s: float = 0.0     # and their host time (overlapped with the GPU's)

    def add(self, prompt_tokens: int, decode_tokens: int, schedule_s: float,
            step_s: float, gap_s: float, poll_s: float = 0.0) -> None:
        self.steps += 1
        self.prompt_tokens += prompt_tokens
        self.decode_tokens += decode_tokens
        if schedule_s >= self.schedule_max_s:
            self.schedule_max_s, self.schedule_max_poll_s = schedule_s, poll_s
        self.step_max_s = max(self.step_max_s, step_s)
        self.gap_max_s = max(self.gap_max_s, gap_s)


class StepLog:
    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.window = StepWindow()
        self._preempted = (0, 0, 0)   # growth, room, context tokens the preempted held
        self._last_end: float | None = None
        self._schedule_s = 0.0
        self._poll_s = 0.0
        self.slow_steps = 0          # steps of SLOW_STEP_S or longer, since start
        self.slow_step_s = 0.0       # their time in all
        # the engine thread's commands since start, [count, host seconds], by when they ran
        self.commands = {"between_steps": [0, 0.0], "during_steps": [0, 0.0]}

    def record(self, prompt_tokens: int, decode_tokens: int, started: float) -> None:
        """A step that ran from `started` (perf_counter) until now."""
        now = time.perf_counter()
        gap = started - self._last_end if self._last_end is not None else 0.0
        self._last_end = now
        if now - started >= SLOW_STEP_S:
            self.slow_steps += 1
            self.slow_step_s += now - started
            log.warning("slow engine step: %.0f ms for %d prompt and %d decode tokens "
                        "(scheduling %.0f ms, %.0f of them polling the tiers); %d such steps "
                        "so far", (now - started) * 1e3, prompt_tokens, decode_tokens,
                        self._schedule_s * 1e3, self._poll_s * 1e3, self.slow_steps)
        if self.interval_s > 0:
            self.window.add(prompt_tokens, decode_tokens, self._schedule_s, now - started, gap,
                            self._poll_s)

    def between_steps(self, commands_s: float, hooks_s: float, commands: int = 0) -> None:
        """Host time the engine thread spent on `commands` commands and on hooks before a
        step."""
        c = self.commands["between_steps"]
        c[0] += commands
        c[1] += commands_s
        w = self.window
        w.commands_max_s = max(w.commands_max_s, commands_s)
        w.hooks_max_s = max(w.hooks_max_s, hooks_s)

    def served_in_flight(self, seconds: float) -> None:
        """One command handled while a step ran on the device, taking `seconds`."""
        self.window.in_flight_commands += 1
        self.window.in_flight_s += seconds
        c = self.commands["during_steps"]
        c[0] += 1
        c[1] += seconds

    def scheduled(self, seconds: float, poll_s: float = 0.0) -> None:
        """The host time of this step's scheduling pass (loads started and waited for), and
        the part of it spent polling the tiers (finished copies handled, the next started)."""
        self._schedule_s, self._poll_s = seconds, poll_s

    def maybe_log(self, running: int, waiting: int, preempted_growth: int,
                  preempted_room: int, free_blocks: int, num_blocks: int,
                  preempted_tokens: int = 0) -> bool:
        """Log the interval's line when it is over and had steps; True when one was logged."""
        w = self.window
        now = time.perf_counter()
        if self.interval_s <= 0 or now - w.started < self.interval_s:
            return False
        growth, room = preempted_growth - self._preempted[0], preempted_room - self._preempted[1]
        lost = preempted_tokens - self._preempted[2]
        self._preempted = (preempted_growth, preempted_room, preempted_tokens)
        self.window = StepWindow(now)
        if not w.steps:
            return False
        dt = now - w.started
        log.info("steps: %d in %.1f s, prompt %.0f tok/s, generated %.0f tok/s, longest step "
                 "%.0f ms (scheduling %.0f ms, %.0f polling the tiers), longest gap between "
                 "steps %.0f ms (commands "
                 "%.0f ms, hooks %.0f ms); %d commands in %.0f ms while steps ran; "
                 "%d running, %d waiting; preempted %d (growth) + %d "
                 "(room for a higher-ranked turn) holding %d tokens to redo; %d of %d GPU "
                 "blocks free", w.steps, dt,
                 w.prompt_tokens / dt, w.decode_tokens / dt, w.step_max_s * 1e3,
                 w.schedule_max_s * 1e3, w.schedule_max_poll_s * 1e3, w.gap_max_s * 1e3,
                 w.commands_max_s * 1e3, w.hooks_max_s * 1e3, w.in_flight_commands,
                 w.in_flight_s * 1e3, running, waiting, growth, room,
                 lost, free_blocks, num_blocks)
        return True
