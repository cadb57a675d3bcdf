"""Workloads for the policy simulator: trace readers and a generator of agent sessions.

A workload is a list of `SimSession`s, each a sequence of `SimRound`s (see rounds.py):
- `read_tracelab_csv(path)`: TraceLab session CSVs (uw-syfi/TraceLab, CC BY 4.0);
- `read_mooncake_jsonl(path, limit, fraction, seed)`: the Mooncake FAST'25 conversation trace
  (kvcache-ai/Mooncake, Apache-2.0), sessions derived from prefix sharing of hash_ids (traces.py
  says how);
- `generate_agent_sessions(GeneratorConfig(...))`: coding-agent sessions drawn from the
  published TraceLab pause figures (generator.py says how).
Keep the sources' attribution in any file derived from them.
"""
from __future__ import annotations

from sessions.sim.generator import (DEFAULT_TOOLS, HUMAN_WAIT, GeneratorConfig, PauseDist,
                                    ToolSpec, generate_agent_sessions)
from sessions.sim.rounds import SimRound, SimSession
from sessions.sim.traces import read_mooncake_jsonl, read_tracelab_csv


def summarize(sessions: list[SimSession]) -> dict:
    """Counts and sizes of a workload, for reports."""
    rounds = [r for s in sessions for r in s.rounds]
    pauses = sorted(r.pause_after_s for s in sessions for r in s.rounds[:-1])
    ctx = sorted(r.context_tokens for r in rounds)

    def q(xs: list, p: float) -> float:
        return float(xs[min(len(xs) - 1, int(p * len(xs)))]) if xs else 0.0
    return {
        "sessions": len(sessions),
        "turns": len(rounds),
        "resumes": len(pauses),
        "context_tokens_p50": q(ctx, 0.5), "context_tokens_max": q(ctx, 1.0),
        "pause_p50_s": q(pauses, 0.5), "pause_p90_s": q(pauses, 0.9),
        "pause_p99_s": q(pauses, 0.99),
        "human_pauses": sum(1 for s in sessions for r in s.rounds[:-1] if r.human_after),
        "arrivals_span_s": max((s.arrival_s for s in sessions), default=0.0),
    }


__all__ = ["DEFAULT_TOOLS", "HUMAN_WAIT", "GeneratorConfig", "PauseDist", "SimRound",
           "SimSession", "ToolSpec", "generate_agent_sessions", "read_mooncake_jsonl",
           "read_tracelab_csv", "summarize"]
