"""The agent workload the replay plays: sessions of token-id turns separated by tool or human
pauses.

Sessions come from the policy simulator's readers (sessions/sim/workload.py), so the replay and
the simulator read the same inputs the same way:

- `generated`: coding-agent sessions drawn from the published TraceLab pause distributions
  (sessions/sim/generator.py): a shared system prompt, a task, then rounds of generate -> tool
  pause -> tool result, and now and then a human turn;
- `tracelab`: a TraceLab session CSV (`session_id,arrival_time,round_idx,prefix_len,input_len,
  output_len,tool_wait_after_ms`);
- `mooncake`: the Mooncake conversation JSONL (sessions derived from prefix sharing).

Each round becomes one turn: `input_len` new token ids (the first turn also carries the shared
prefix and any prior context), `output_len` generated tokens (greedy, EOS ignored), then the
pause. Token ids are drawn from a seeded generator, so every policy and the peer server see the
same turns. Pauses are divided by `time_compression` and capped at `max_pause_s`; token counts
are multiplied by `token_scale`, and a session ends before a turn that would take its context
past `max_context_tokens`.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, replace

import numpy as np

from sessions.sim.workload import (GeneratorConfig, SimSession, generate_agent_sessions,
                                   read_mooncake_jsonl, read_tracelab_csv)

SOURCES = ("generated", "tracelab", "mooncake")


@dataclass(frozen=True)
class WorkloadConfig:
    source: str = "generated"
    path: str | None = None               # the CSV / JSONL for tracelab and mooncake
    sessions: int = 40                    # at most this many sessions (the first ones)
    seed: int = 0
    time_compression: float = 30.0        # every pause is divided by this
    max_pause_s: float = 8.0              # and capped at this (after compression)
    token_scale: float = 1.0              # every token count is multiplied by this
    max_turns: int = 8
    max_context_tokens: int = 20_000
    max_output_tokens: int = 64
    min_token_id: int = 3                 # ids are drawn from [min_token_id, vocab_size)
    # the generator's knobs (source "generated"); its pause distributions are the published ones
    system_prompt_tokens: int = 2048
    task_tokens_p50: int = 6000
    output_tokens_p50: int = 24
    rounds_mean: float = 6.0
    human_turn_prob: float = 0.1
    human_cap_s: float = 300.0
    mooncake_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown workload source {self.source!r}; valid: "
                             f"{', '.join(SOURCES)}")
        if self.source != "generated" and not self.path:
            raise ValueError(f"the {self.source} workload needs a file (--workload-file)")
        if self.time_compression <= 0 or self.max_pause_s < 0 or self.token_scale <= 0:
            raise ValueError("time_compression and token_scale must be > 0, max_pause_s >= 0")
        if self.sessions <= 0 or self.max_turns <= 0 or self.max_output_tokens <= 0:
            raise ValueError("sessions, max_turns and max_output_tokens must be positive")


@dataclass(frozen=True)
class ReplayTurn:
    index: int
    input_ids: tuple[int, ...]            # appended before this turn generates
    output_tokens: int                    # generated (max_tokens, EOS ignored)
    pause_after_s: float = 0.0            # replay seconds (compressed, capped); 0 on the last
    pause_real_s: float = 0.0             # the workload's own pause, before compression
    tool_after: str | None = None
    human_after: bool = False


@dataclass(frozen=True)
class ReplaySession:
    session_id: str
    turns: tuple[ReplayTurn, ...]
    shared_prefix_tokens: int = 0

    @property
    def context_tokens(self) -> int:
        """The context at the end of the last turn (inputs and outputs)."""
        return sum(len(t.input_ids) + t.output_tokens for t in self.turns)


@dataclass
class Workload:
    config: WorkloadConfig
    sessions: list[ReplaySession] = field(default_factory=list)

    def summary(self, concurrency: int) -> dict:
        ctx = sorted(s.context_tokens for s in self.sessions)
        pauses = sorted(t.pause_after_s for s in self.sessions for t in s.turns[:-1])
        human = sum(t.human_after for s in self.sessions for t in s.turns[:-1])
        mean_ctx = sum(ctx) / len(ctx) if ctx else 0.0
        return {
            "source": self.config.source, "sessions": len(self.sessions),
            "turns": sum(len(s.turns) for s in self.sessions), "resumes": len(pauses),
            "human_pauses": human, "concurrency": concurrency,
            "input_tokens": sum(len(t.input_ids) for s in self.sessions for t in s.turns),
            "output_tokens": sum(t.output_tokens for s in self.sessions for t in s.turns),
            "final_context_p50": _q(ctx, 0.5), "final_context_max": _q(ctx, 1.0),
            "working_set_tokens": sum(ctx),
            "concurrent_working_set_tokens": int(round(mean_ctx * concurrency)),
            "pause_p50_s": _q(pauses, 0.5), "pause_p90_s": _q(pauses, 0.9),
            "pause_max_s": _q(pauses, 1.0), "pause_total_s": round(sum(pauses), 3),
        }


def add_workload_args(p: argparse.ArgumentParser) -> None:
    """The replay's workload options (its defaults: the H200 runs' workload), shared by the
    benches that play it (`agent_replay.py`, `step_sim.py`)."""
    g = p.add_argument_group("workload")
    g.add_argument("--workload", choices=SOURCES, default="generated")
    g.add_argument("--workload-file", default=None, help="TraceLab CSV or Mooncake JSONL")
    g.add_argument("--sessions", type=int, default=22)
    g.add_argument("--concurrency", type=int, default=11)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--time-compression", type=float, default=4.0)
    g.add_argument("--max-pause-s", type=float, default=8.0)
    g.add_argument("--token-scale", type=float, default=1.0)
    g.add_argument("--max-turns", type=int, default=5)
    g.add_argument("--max-context-tokens", type=int, default=14_000)
    g.add_argument("--max-output-tokens", type=int, default=40)
    g.add_argument("--system-prompt-tokens", type=int, default=2048)
    g.add_argument("--task-tokens-p50", type=int, default=4000)
    g.add_argument("--output-tokens-p50", type=int, default=24)
    g.add_argument("--rounds-mean", type=float, default=6.0)
    g.add_argument("--human-turn-prob", type=float, default=0.1)


def workload_config(a: argparse.Namespace, **override) -> WorkloadConfig:
    """The `WorkloadConfig` of parsed `add_workload_args` options (`override`: fields to set
    otherwise, e.g. another seed)."""
    return replace(WorkloadConfig(
        source=a.workload, path=a.workload_file, sessions=a.sessions, seed=a.seed,
        time_compression=a.time_compression, max_pause_s=a.max_pause_s,
        token_scale=a.token_scale, max_turns=a.max_turns, max_context_tokens=a.max_context_tokens,
        max_output_tokens=a.max_output_tokens, system_prompt_tokens=a.system_prompt_tokens,
        task_tokens_p50=a.task_tokens_p50, output_tokens_p50=a.output_tokens_p50,
        rounds_mean=a.rounds_mean, human_turn_prob=a.human_turn_prob), **override)


def _q(xs: list, p: float) -> float:
    return float(xs[min(len(xs) - 1, int(p * len(xs)))]) if xs else 0.0


def sim_sessions(cfg: WorkloadConfig) -> list[SimSession]:
    """The workload's sessions as the simulator reads them (real pause lengths)."""
    if cfg.source == "tracelab":
        return read_tracelab_csv(cfg.path)[:cfg.sessions]
    if cfg.source == "mooncake":
        return read_mooncake_jsonl(cfg.path, fraction=cfg.mooncake_fraction,
                                   seed=cfg.seed)[:cfg.sessions]
    return generate_agent_sessions(GeneratorConfig(
        n_sessions=cfg.sessions, seed=cfg.seed, system_prompt_tokens=cfg.system_prompt_tokens,
        task_tokens_p50=cfg.task_tokens_p50, output_tokens_p50=cfg.output_tokens_p50,
        rounds_mean=cfg.rounds_mean, max_rounds=cfg.max_turns,
        max_context_tokens=int(cfg.max_context_tokens / cfg.token_scale),
        human_turn_prob=cfg.human_turn_prob,
        human_cap_s=cfg.human_cap_s))


def build_workload(cfg: WorkloadConfig, vocab_size: int) -> Workload:
    """Replay sessions with concrete token ids for a model of `vocab_size` tokens."""
    if vocab_size <= cfg.min_token_id + 1:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for token ids >= "
                         f"{cfg.min_token_id}")
    sims = sim_sessions(cfg)
    if not sims:
        raise ValueError(f"the {cfg.source} workload has no sessions")
    shared_len = max(s.shared_prefix_tokens for s in sims)
    shared_len = _scaled(shared_len, cfg.token_scale)
    shared = _ids(np.random.default_rng([cfg.seed, 0]), shared_len, cfg.min_token_id,
                  vocab_size)
    out = [_session(cfg, s, n, shared, vocab_size) for n, s in enumerate(sims)]
    return Workload(cfg, [s for s in out if s.turns])


def _scaled(n: int, scale: float) -> int:
    return max(0, int(round(n * scale)))


def _ids(rng: np.random.Generator, n: int, lo: int, hi: int) -> tuple[int, ...]:
    return tuple(int(x) for x in rng.integers(lo, hi, size=n))


def _session(cfg: WorkloadConfig, s: SimSession, n: int, shared: tuple[int, ...],
             vocab: int) -> ReplaySession:
    rng = np.random.default_rng([cfg.seed, 1, n])
    mine = shared[:_scaled(s.shared_prefix_tokens, cfg.token_scale)]
    turns: list[ReplayTurn] = []
    context = 0
    for i, r in enumerate(s.rounds[:cfg.max_turns]):
        if i == 0:   # the first turn carries the shared prefix and any prior context
            own = _scaled(r.prefix_tokens + r.input_tokens, cfg.token_scale) - len(mine)
            ids = mine + _ids(rng, max(1, own), cfg.min_token_id, vocab)
            ids = ids[:max(1, cfg.max_context_tokens - cfg.max_output_tokens)]
        else:
            ids = _ids(rng, max(1, _scaled(r.input_tokens, cfg.token_scale)), cfg.min_token_id,
                       vocab)
        out_n = max(1, min(cfg.max_output_tokens, _scaled(r.output_tokens, cfg.token_scale)))
        if turns and context + len(ids) + out_n > cfg.max_context_tokens:
            break
        real = r.pause_after_s if math.isfinite(r.pause_after_s) else 0.0
        turns.append(ReplayTurn(i, ids, out_n, min(cfg.max_pause_s, real / cfg.time_compression),
                                real, r.tool_after or "user", bool(r.human_after)))
        context += len(ids) + out_n
    if turns:   # the last turn ends the session: no pause after it
        turns[-1] = replace(turns[-1], pause_after_s=0.0, pause_real_s=0.0, tool_after=None,
                            human_after=False)
    return ReplaySession(s.session_id, tuple(turns), len(mine))
