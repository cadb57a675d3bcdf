"""The units of a simulated workload: sessions and their rounds.

A round's context is `prefix_tokens` (what the session carries from before, shared prefix
included) plus `input_tokens` appended now; it then generates `output_tokens` and pauses
`pause_after_s` on `tool_after` (a tool, or a human when `human_after`). A round with `arrival_s`
set arrives at that absolute time (trace replay) or when the previous turn ends, whichever is
later; otherwise it arrives `pause_after_s` after the previous turn ends (closed loop).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SimRound:
    round_idx: int
    prefix_tokens: int
    input_tokens: int
    output_tokens: int
    pause_after_s: float = 0.0          # math.inf: never resumes (a session left open)
    tool_after: str | None = None
    human_after: bool = False
    hint_after_s: float | None = None
    arrival_s: float | None = None

    @property
    def context_tokens(self) -> int:
        return self.prefix_tokens + self.input_tokens


@dataclass(frozen=True)
class SimSession:
    session_id: str
    arrival_s: float
    rounds: tuple[SimRound, ...]
    shared_prefix_tokens: int = 0
    closes: bool = True                 # False: the client never says Close (trace replay)
    source: str = ""

    def __post_init__(self) -> None:
        if not self.rounds:
            raise ValueError(f"session {self.session_id!r} has no rounds")
        for r in self.rounds:
            if r.prefix_tokens < 0 or r.input_tokens < 0 or r.output_tokens < 0:
                raise ValueError(f"session {self.session_id!r} round {r.round_idx}: token "
                                 "counts must be >= 0")
            if r.prefix_tokens < self.shared_prefix_tokens:
                raise ValueError(f"session {self.session_id!r} round {r.round_idx}: prefix "
                                 f"{r.prefix_tokens} is shorter than the shared prefix")
