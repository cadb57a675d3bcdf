"""Engine steps on a virtual clock: how step length and admission order set a resumed turn's wait.

A turn that arrives while an engine step runs waits for that step to end, and then rides in a
step with whatever else is admitted; the cache policy shortens steps while a paused session is
likely back (`step_token_cap`) and orders admissions (`admission_priority`). This simulator runs
the engine's own `Scheduler` and the policy's own `StepCap`, forecasts and estimator on the agent
replay's workload, with each step's duration taken from a model fitted to the H200 replays'
server logs and an extend profile (`StepTimeModel`), so that settings of those two mechanisms
can be compared in seconds on a CPU before a GPU run measures the chosen ones.

What it leaves out, on purpose: KV tiers (the block pool holds every session: every resumed turn
finds its context on the GPU, as most of `agent`'s do; no loads, no inline waits for them), the
scheduling pass's host time and the host's jitter. Its figures rank settings (its resumed
turns' TTFTs run 15-20 ms below the H200 replay's); the replay (`agent_replay.py`) measures
them.

The client is the replay's: a session sends a turn, and when the turn ends it announces the
tool pause, sleeps through it, resumes and sends the next turn; `concurrency` sessions at once.
Each message takes `rpc_s` one way, and the engine sees it at the first step boundary after it
arrives (the engine thread's command queue).
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from kvstore.block_pool import BlockPool
from runtime.config import CUDA_BLOCK_SIZE, SamplingParams
from runtime.request import FinishReason, Request
from runtime.scheduler import Scheduler, SchedulerConfig
from runtime.step_cap import WAITING_TOOL, StepCap
from sessions.estimator import PauseForecast
from sessions.policies.base import CachePolicy

from agent_workload import ReplaySession


@dataclass(frozen=True)
class StepTimeModel:
    """Seconds one engine step takes: a fixed cost, a cost per token and a cost per (query,
    key) pair of attention; a step too large for a CUDA graph (more than `graph_max_tokens`
    tokens or `graph_max_seqs` sequences) takes at least `eager_floor_ms`, the host's time to
    launch it.

    Defaults, Llama-3-8B bf16 on an H200. Attention: a 512-token extend took 4.0 ms longer at
    an 8K context than at 4K on an H100 (extend_profile-h100-20261206; the H200's tensor cores
    are the H100's): 1.9 ns a pair. Fixed and per-token costs: the H200 replays' progress lines
    of 2026-12-07 give the shortest period a step at each size in busy seconds, 16.7 ms at ~450
    tokens, 26.3 at ~830, 37.0 at ~1,290, 50.0 at ~1,700: 4.7 ms + 26.6 us a token, of which
    ~8.6 us is the attention at those prefills' ~4.5K mean context, so 18 us a token beside
    it (the weights' matmuls alone: 15 GFLOP a token). An eager decode step took 13.9 ms
    against its graph's 4.8 (engine-h200-20261122.json): the floor. A first token reaches its
    client `first_token_ms` after its step (the read-back and the stream): the median excess
    over this model of the same replays' resumed turns that waited for nothing and ran one step
    on a GPU hit, 4.7 ms over 54 turns (quartiles 2.5 / 6.6). (The first-token log's
    launch-to-read-back times are no step times: they include the tail of an overlapped decode
    step launched before.)"""
    base_ms: float = 4.7
    us_per_token: float = 18.0
    ns_per_pair: float = 1.9
    eager_floor_ms: float = 13.9
    first_token_ms: float = 4.7
    # the fitted runs' largest extend graph; the engine's default is 1024 since 2026-12-08 (a
    # graph's padding to its bucket is not modelled)
    graph_max_tokens: int = 512
    graph_max_seqs: int = 64

    def step_s(self, tokens: int, seqs: int, pairs: float = 0.0) -> float:
        """`pairs`: the step's (query, key) pairs, summed over its sequences."""
        ms = self.base_ms + self.us_per_token * 1e-3 * tokens + self.ns_per_pair * 1e-6 * pairs
        if tokens > self.graph_max_tokens or seqs > self.graph_max_seqs:
            ms = max(ms, self.eager_floor_ms)
        return ms / 1e3


@dataclass(frozen=True)
class SimEngineConfig:
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 64
    block_size: int = CUDA_BLOCK_SIZE
    concurrency: int = 11          # sessions under way at once (the replay's workers)
    rpc_s: float = 0.002           # one way, client <-> server
    max_model_len: int = 131072

    def __post_init__(self) -> None:
        if min(self.max_num_batched_tokens, self.max_num_seqs, self.block_size,
               self.concurrency) <= 0 or self.rpc_s < 0:
            raise ValueError("SimEngineConfig: token budget, sequences, block size and "
                             "concurrency must be positive and rpc_s >= 0")


@dataclass(frozen=True)
class SimTurn:
    """One simulated turn, as the replay's `TurnRecord` (times in seconds from the start)."""
    session: str
    turn: int
    resume: bool
    pause_s: float                 # the pause before this turn (0 on a first turn)
    tool: str | None
    input_tokens: int
    computed_tokens: int           # prompt tokens the engine ran (the rest: prefix cache)
    sent_s: float
    ttft_s: float                  # client send -> client receipt of the first token
    queue_s: float                 # engine arrival -> first step that carries it
    first_step_tokens: int         # tokens of the step that sampled its first token


@dataclass
class SimResult:
    turns: list[SimTurn] = field(default_factory=list)
    jct_s: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    short_steps: int = 0           # steps the cap held below the budget
    busy_s: float = 0.0            # the steps' time, summed


@dataclass
class _Session:
    """One session's sim state; `paused_at`, `ended_at` and `forecast` are what `StepCap` reads
    (as the KV controller's `SessionKV`)."""
    replay: ReplaySession
    opened_s: float = 0.0
    turn: int = 0
    log: list[int] = field(default_factory=list)
    paused_at: float | None = None
    ended_at: float | None = None
    forecast: PauseForecast | None = None
    sent_s: float = 0.0
    arrived_s: float = 0.0


class StepSim:
    """Plays `sessions` through the real scheduler on a virtual clock under `policy`'s step cap
    and admission order (the baselines': arrival order, no cap)."""

    def __init__(self, sessions: list[ReplaySession], policy: CachePolicy,
                 config: SimEngineConfig | None = None, model: StepTimeModel | None = None):
        self.cfg = c = config or SimEngineConfig()
        self.model = model or StepTimeModel()
        self.policy = policy
        need = sum(s.context_tokens // c.block_size + 2 for s in sessions)
        self.sched = Scheduler(SchedulerConfig(c.max_num_batched_tokens, c.max_num_seqs,
                                               c.block_size, c.max_model_len),
                               BlockPool(need + 64), b"step-sim")
        self.now = 0.0
        self.live: dict[str, _Session] = {}          # what StepCap weighs
        self.sched.step_cap = StepCap(policy, self.live, lambda: self.now)
        self._todo = list(sessions)
        self._events: list[tuple[float, int, str, _Session]] = []
        self._seq = itertools.count()
        self._ids = itertools.count(1 << 24)         # output token ids, unique to each turn
        self._reqs: dict[str, _Session] = {}         # request id -> its session
        self._first_step: dict[str, float] = {}     # request -> start of its first step
        self.result = SimResult()

    # -- the client --------------------------------------------------------------------------
    def _at(self, t: float, kind: str, s: _Session) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, s))

    def _open_next(self, t: float) -> None:
        if self._todo:
            s = _Session(self._todo.pop(0), opened_s=t)
            self._send(s, t)

    def _send(self, s: _Session, t: float) -> None:
        s.sent_s = t
        self._at(t + self.cfg.rpc_s, "turn", s)

    def _turn_ended(self, s: _Session, t: float) -> None:
        """The engine finished `s`'s turn at `t` (the end of the step that sampled its last
        token)."""
        rpc, sid = self.cfg.rpc_s, s.replay.session_id
        s.ended_at = t                                # the controller's `_request_released`
        done = s.replay.turns[s.turn]
        s.turn += 1
        if s.turn >= len(s.replay.turns):
            self.result.jct_s[sid] = t + rpc - s.opened_s
            self._at(t + rpc, "close", s)
            self._open_next(t + rpc)
            return
        self._at(t + rpc, "pause_waiting", s)         # the session commit's hook
        self._at(t + 2 * rpc, "pause", s)             # the client's Pause
        self._send(s, t + rpc + done.pause_after_s)   # Resume, then the next turn

    # -- the engine's command queue ----------------------------------------------------------
    def _apply(self, kind: str, s: _Session, at: float) -> None:
        """The engine thread takes the message that reached it at `at` (<= now)."""
        sid, pol = s.replay.session_id, self.policy
        if kind == "close":
            self.live.pop(sid, None)
            pol.on_close(sid)
            return
        if kind in ("pause_waiting", "pause"):
            if s.ended_at is None:                    # the next turn already started
                return
            prev = s.replay.turns[s.turn - 1]
            tool, human = (WAITING_TOOL, False) if kind == "pause_waiting" else \
                (prev.tool_after or "(none)", prev.human_after)
            s.paused_at = self.now
            s.forecast = pol.forecast(tool, human, None)
            return
        # a turn arrives: resume the session (learning the pause) and submit the request
        t = s.replay.turns[s.turn]
        resume = s.turn > 0
        self.live[sid] = s
        if resume:
            prev = s.replay.turns[s.turn - 1]
            if pol.estimator is not None:
                pol.estimator.observe(prev.tool_after or "(none)", prev.human_after,
                                      prev.pause_after_s)
            pol.on_resume(sid, self.now)
        s.paused_at = s.ended_at = None
        s.arrived_s = at
        prompt = s.log + list(t.input_ids)
        rid = f"{sid}/{s.turn}"
        prio = pol.admission_priority(sid, resume, self.now, self.now)
        req = Request(rid, prompt, SamplingParams(max_tokens=t.output_tokens, ignore_eos=True),
                      arrival=self.now, priority=prio)
        self._reqs[rid] = s
        self.sched.add(req)

    def _drain(self) -> None:
        while self._events and self._events[0][0] <= self.now:
            at, _, kind, s = heapq.heappop(self._events)
            self._apply(kind, s, at)

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> SimResult:
        for _ in range(min(self.cfg.concurrency, len(self._todo))):
            self._open_next(0.0)
        res = self.result
        while self._events or self.sched.has_work():
            self._drain()
            if not self.sched.has_work():
                if self._events:
                    self.now = max(self.now, self._events[0][0])
                continue
            out = self.sched.schedule()
            if out.is_empty:
                raise RuntimeError("the simulated engine planned an empty step with work "
                                   "waiting (the block pool is sized to hold every session)")
            pairs = sum(sr.num_new_tokens * (sr.num_computed_before + (sr.num_new_tokens + 1) / 2)
                        for sr in out.scheduled)
            dt = self.model.step_s(out.num_tokens, len(out.scheduled), pairs)
            start, self.now = self.now, self.now + dt
            res.steps += 1
            res.busy_s += dt
            for sr in out.scheduled:
                self._first_step.setdefault(sr.request.request_id, start)
                self.sched.commit_computed(sr)
                if sr.samples:
                    self._sampled(sr, out.num_tokens)
        res.short_steps = self.sched.short_steps
        return res

    def _sampled(self, sr, step_tokens: int) -> None:
        req = sr.request
        s = self._reqs[req.request_id]
        req.append_output(next(self._ids), None)
        if len(req.output_token_ids) == 1:
            t = s.replay.turns[s.turn]
            prev = s.replay.turns[s.turn - 1] if s.turn else None
            self.result.turns.append(SimTurn(
                s.replay.session_id, s.turn, s.turn > 0, prev.pause_after_s if prev else 0.0,
                prev.tool_after if prev else None, len(t.input_ids),
                req.num_prompt_tokens - req.num_cached_tokens, s.sent_s,
                self.now + self.model.first_token_ms / 1e3 + self.cfg.rpc_s - s.sent_s,
                self._first_step[req.request_id] - s.arrived_s, step_tokens))
        if len(req.output_token_ids) >= req.params.max_tokens:
            self.sched.finish(req, FinishReason.LENGTH)
            del self._reqs[req.request_id]
            del self._first_step[req.request_id]
            s.log = list(req.all_token_ids)
            self._turn_ended(s, self.now)
