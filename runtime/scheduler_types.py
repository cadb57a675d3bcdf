"""The scheduler's messages: its configuration, one request's share of a step, and a step."""
from __future__ import annotations

from dataclasses import dataclass, field

from runtime.request import Request


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_batched_tokens: int
    max_num_seqs: int
    block_size: int
    max_model_len: int
    # A running request is preempted for a higher-ranked waiting turn's room only while the
    # work it would lose (its computed tokens) is at most this; None: max_num_batched_tokens,
    # one step's chunk. Growth preemption (nothing else can run) is not bounded.
    max_room_loss_tokens: int | None = None

    @property
    def room_loss_cap(self) -> int:
        cap = self.max_room_loss_tokens
        return self.max_num_batched_tokens if cap is None else cap


@dataclass(frozen=True)
class ScheduledRequest:
    request: Request
    num_new_tokens: int          # tokens this step runs through the model
    num_computed_before: int     # its context length before this step

    @property
    def samples(self) -> bool:
        """True when this step completes everything known, so a new token is sampled."""
        return self.num_computed_before + self.num_new_tokens == self.request.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled
