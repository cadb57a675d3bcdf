"""A generator of coding-agent sessions from the published TraceLab figures.

Figures from TraceLab (uw-syfi/TraceLab, CC BY 4.0: 357k model calls and 432k tool calls of 43
developers using Claude Code and Codex; see shared/workloads/README.md) and the Mooncake
tool-and-agent trace (kvcache-ai/Mooncake, Apache-2.0) for sizes.

A session arrives (Poisson), prefills a shared system prompt plus its task, then runs rounds of
generate -> tool call -> pause -> append the tool's result. Now and then a round ends on the
human instead (the agent is done or asks; the user answers after a human wait). Pauses per tool
are a log-normal body plus, for some tools, a Pareto tail:

| tool       | share | body p50 / p90     | tail                    | result tokens (p50) |
| read       | 22%   | 36 ms / 0.5 s      |                         | 900                 |
| edit       | 18%   | 95 ms / 1 s        |                         | 250                 |
| bash       | 47%   | 409 ms / 5 s       | 9%: Pareto(25 s, 0.75)  | 600                 |
| web_search | 10%   | 10 s / 25 s        |                         | 2000                |
| ask_user   | 3%    | human wait         |                         | 120                 |

Medians of read/edit/bash are the published ones; shares and tails are fitted so that the
non-human tool pauses together give (200k draws) p50 0.27 s, p90 12.8 s, mean 17.5 s, 68% under
1 s, 2.6% over 1 min holding 82% of tool time (published: p50 0.3 s, p90 13.6 s, mean 16.8 s,
~70% under 1 s, 3.1-4.9% over 1 min holding 61-92% of the time). Human waits: a log-normal body
(p50 78 s, p90 880 s) plus a 3% Pareto(3600 s, 0.43) tail, capped at `human_cap_s`, gives p50
84 s, p90 1226 s, p99 14.0 h, 74% ended by 5 min and 95% by 1 h (published: p50 1.4 min, p90
20.6 min, p99 13.9 h, 70-80% by 5 min, ~95% by 1 h). `time_compression` divides every pause.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from sessions.estimator import Z90
from sessions.sim.rounds import SimRound, SimSession


@dataclass(frozen=True)
class PauseDist:
    """Log-normal body (p50, p90) with probability 1 - tail_prob, else Pareto(tail_min, alpha)."""
    p50_s: float
    p90_s: float
    tail_prob: float = 0.0
    tail_min_s: float = 0.0
    tail_alpha: float = 1.0
    cap_s: float = 86_400.0

    def sample(self, rng: random.Random) -> float:
        if self.tail_prob and rng.random() < self.tail_prob:
            x = self.tail_min_s / (1.0 - rng.random()) ** (1.0 / self.tail_alpha)
        else:
            sigma = math.log(self.p90_s / self.p50_s) / Z90
            x = rng.lognormvariate(math.log(self.p50_s), sigma)
        return min(x, self.cap_s)


HUMAN_WAIT = PauseDist(78.0, 880.0, tail_prob=0.03, tail_min_s=3600.0, tail_alpha=0.43)


@dataclass(frozen=True)
class ToolSpec:
    name: str
    share: float
    pause: PauseDist
    result_tokens_p50: int
    human: bool = False


DEFAULT_TOOLS = (
    ToolSpec("read", 0.22, PauseDist(0.036, 0.5), 900),
    ToolSpec("edit", 0.18, PauseDist(0.095, 1.0), 250),
    ToolSpec("bash", 0.47, PauseDist(0.409, 5.0, 0.09, 25.0, 0.75, 7200.0), 600),
    ToolSpec("web_search", 0.10, PauseDist(10.0, 25.0), 2000),
    ToolSpec("ask_user", 0.03, HUMAN_WAIT, 120, human=True),
)


@dataclass(frozen=True)
class GeneratorConfig:
    n_sessions: int = 2000
    arrival_rate_per_s: float = 0.1
    seed: int = 0
    time_compression: float = 1.0
    system_prompt_tokens: int = 8000        # shared by every session, counted once
    task_tokens_p50: int = 1500
    output_tokens_p50: int = 150
    rounds_mean: float = 20.0
    max_rounds: int = 80
    max_context_tokens: int = 100_000
    human_turn_prob: float = 0.05           # a round ends on the user instead of a tool
    user_message_tokens_p50: int = 200
    human_cap_s: float = 86_400.0
    tools: tuple[ToolSpec, ...] = field(default=DEFAULT_TOOLS)

    def __post_init__(self) -> None:
        if self.time_compression <= 0:
            raise ValueError(f"time_compression must be > 0, got {self.time_compression}")
        if self.n_sessions < 0 or self.arrival_rate_per_s <= 0:
            raise ValueError("n_sessions must be >= 0 and arrival_rate_per_s > 0")


def _size(rng: random.Random, p50: int, sigma: float = 0.8, lo: int = 1,
          hi: int = 50_000) -> int:
    return int(min(hi, max(lo, rng.lognormvariate(math.log(p50), sigma))))


def _pick(rng: random.Random, tools: tuple[ToolSpec, ...]) -> ToolSpec:
    x = rng.random() * sum(t.share for t in tools)
    for t in tools:
        x -= t.share
        if x <= 0:
            return t
    return tools[-1]


def generate_agent_sessions(cfg: GeneratorConfig = GeneratorConfig()) -> list[SimSession]:
    """Seeded: the same config gives the same sessions."""
    rng = random.Random(cfg.seed)
    user = ToolSpec("user", 0.0, PauseDist(HUMAN_WAIT.p50_s, HUMAN_WAIT.p90_s,
                                           HUMAN_WAIT.tail_prob, HUMAN_WAIT.tail_min_s,
                                           HUMAN_WAIT.tail_alpha, cfg.human_cap_s),
                    cfg.user_message_tokens_p50, human=True)
    sessions, t = [], 0.0
    for n in range(cfg.n_sessions):
        t += rng.expovariate(cfg.arrival_rate_per_s)
        n_rounds = min(cfg.max_rounds, 1 + int(rng.expovariate(1.0 / max(cfg.rounds_mean - 1,
                                                                         1e-9))))
        context = cfg.system_prompt_tokens
        appended = _size(rng, cfg.task_tokens_p50)
        rounds = []
        for i in range(n_rounds):
            out = _size(rng, cfg.output_tokens_p50, 0.9, 1, 4000)
            last = i == n_rounds - 1 or context + appended + out >= cfg.max_context_tokens
            tool = user if rng.random() < cfg.human_turn_prob else _pick(rng, cfg.tools)
            pause = 0.0
            if not last:
                dist = tool.pause
                if tool.human and dist.cap_s > cfg.human_cap_s:
                    dist = PauseDist(dist.p50_s, dist.p90_s, dist.tail_prob, dist.tail_min_s,
                                     dist.tail_alpha, cfg.human_cap_s)
                pause = dist.sample(rng) / cfg.time_compression
            rounds.append(SimRound(round_idx=i, prefix_tokens=context, input_tokens=appended,
                                   output_tokens=out, pause_after_s=pause,
                                   tool_after=None if last else tool.name,
                                   human_after=(not last) and tool.human))
            if last:
                break
            context += appended + out
            appended = _size(rng, tool.result_tokens_p50, 1.0, 1, 20_000)
        sessions.append(SimSession(f"gen-{cfg.seed}-{n}", t, tuple(rounds),
                                   cfg.system_prompt_tokens, True, "generated"))
    return sessions
