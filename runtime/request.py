"""One generation request as the scheduler sees it, and what the engine reports back."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from kvstore.block_pool import chain_hashes

from runtime.config import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"          # an eos / stop token or stop string
    LENGTH = "length"      # max_tokens or the model's context
    ABORT = "abort"        # cancelled by the caller
    ERROR = "error"        # the engine failed this request


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival: float
    priority: float | None = None            # lower runs first; None = arrival time
    eos_token_ids: tuple[int, ...] = ()
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    num_computed_tokens: int = 0             # tokens whose K/V are in this request's blocks
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)   # hashes of its full blocks so far
    num_cached_tokens: int = 0               # prompt tokens found in the prefix cache at admission
    num_prompt_tokens_computed: int = 0      # prompt tokens this request ran through the model
    num_preemptions: int = 0
    finish_reason: FinishReason | None = None
    generator: torch.Generator | None = None
    first_token_time: float | None = None
    steps_before_first_token: int = 0        # steps it ran in up to its first token
    admitted_at: float | None = None         # monotonic time of its first admission
    # seconds it waited before that, per reason (runtime/wait_reasons.py)
    wait_reasons: dict[str, float] = field(default_factory=dict)
    stop_text: str = ""                      # output text so far (kept only for stop strings)
    kv_source: dict[str, int] = field(default_factory=dict)   # tokens per tier at admission
    loaded_from: dict[str, int] = field(default_factory=dict)  # prefix tokens loaded per tier

    def __post_init__(self) -> None:
        self.all_token_ids: list[int] = list(self.prompt_token_ids)
        self._prefix_hashes: tuple[int, list[bytes]] | None = None

    def prefix_hashes(self, block_size: int, fingerprint: bytes) -> list[bytes]:
        """Chain hashes of the full blocks a prefix-cache match may reuse (the last token is
        always computed, to sample from). Kept while the token count stays: the loader's looks
        and the admission, one pass each step while the request waits, hash the prompt once."""
        usable = (self.num_tokens - 1) // block_size
        if self._prefix_hashes is None or self._prefix_hashes[0] != usable:
            self._prefix_hashes = (usable, chain_hashes(self.all_token_ids[:usable * block_size],
                                                        block_size, fingerprint))
        return self._prefix_hashes[1]

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def append_output(self, token_id: int, logprob: float | None) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)
        if logprob is not None:
            self.output_logprobs.append(logprob)


@dataclass(frozen=True)
class RequestOutput:
    """What one step produced for one request (a delta), or its final state when `finished`."""
    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[float] | None
    finished: bool
    finish_reason: FinishReason | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_output_tokens: int = 0
    error: str | None = None
    kv_source: dict[str, int] | None = None
    queue_s: float | None = None    # arrival to admission (a slot, room, its prefix load)
    queue_reasons: dict[str, float] | None = None   # queue_s per reason (runtime/wait_reasons.py)


@dataclass
class Output:
    """The result of a whole request from the blocking `Engine.generate`."""
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: FinishReason | None
    num_cached_tokens: int
    top_logprobs: list[list[tuple[int, float]]] | None = None
