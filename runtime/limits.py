"""Per-server limits and the errors that name them.

Each limit has a name a person can find in `agentkv serve --help` and in `Limits`; a call over a
limit fails with RESOURCE_EXHAUSTED (a quota: retry later, or close something) or
INVALID_ARGUMENT (this request can never pass: make it smaller), and the message names the
limit, its value and what was asked.

    max_sessions_per_tenant  open sessions a tenant may hold      RESOURCE_EXHAUSTED (manager)
    max_concurrent_turns     turns generating at once, per tenant RESOURCE_EXHAUSTED
    max_prompt_tokens        a turn's whole prompt (log + input)  INVALID_ARGUMENT
    max_output_tokens        max_tokens of one turn               INVALID_ARGUMENT
    max_message_bytes        one request message, serialized      RESOURCE_EXHAUSTED
    max_tools                tool schemas in one session          INVALID_ARGUMENT

`max_message_bytes` is checked twice: gRPC refuses anything over twice the limit before it is
read (its own "larger than max" error), and the server refuses anything over the limit itself
with a message that names it.
"""
from __future__ import annotations

from dataclasses import dataclass

import grpc


@dataclass
class Limits:
    max_sessions_per_tenant: int | None = 1000
    max_concurrent_turns: int = 64
    max_prompt_tokens: int = 32768
    max_output_tokens: int = 4096
    max_message_bytes: int = 4 * 2**20
    max_tools: int = 128

    def __post_init__(self) -> None:
        for name in ("max_concurrent_turns", "max_prompt_tokens", "max_output_tokens",
                     "max_message_bytes", "max_tools"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_sessions_per_tenant is not None and self.max_sessions_per_tenant <= 0:
            raise ValueError("max_sessions_per_tenant must be positive (or None: no limit)")

    @property
    def grpc_receive_bytes(self) -> int:
        """gRPC's own hard cap: room above the named limit so the server can refuse by name."""
        return 2 * self.max_message_bytes + 2**16


class LimitExceeded(Exception):
    """A call over a limit; `code` is its gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def check_message_size(limits: Limits, nbytes: int) -> None:
    if nbytes > limits.max_message_bytes:
        raise LimitExceeded(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"the request is {nbytes} bytes; the limit is max_message_bytes="
                            f"{limits.max_message_bytes}: send less per call (for example "
                            f"fewer or shorter messages per Generate)")


def check_concurrent_turns(limits: Limits, tenant: str, running: int) -> None:
    if running >= limits.max_concurrent_turns:
        raise LimitExceeded(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"tenant {tenant!r} has {running} turns generating; the limit is "
                            f"max_concurrent_turns={limits.max_concurrent_turns}: wait for one "
                            f"to finish (or Cancel one) and retry")


def check_prompt_tokens(limits: Limits, n: int) -> None:
    if n > limits.max_prompt_tokens:
        raise LimitExceeded(grpc.StatusCode.INVALID_ARGUMENT,
                            f"the turn's prompt (the session's token log plus the new input) "
                            f"has {n} tokens; the limit is max_prompt_tokens="
                            f"{limits.max_prompt_tokens}: start a new session with a shorter "
                            f"history, or send less input")


def check_output_tokens(limits: Limits, n: int) -> None:
    if n > limits.max_output_tokens:
        raise LimitExceeded(grpc.StatusCode.INVALID_ARGUMENT,
                            f"max_tokens={n} is over the limit max_output_tokens="
                            f"{limits.max_output_tokens}: ask for at most that many")


def check_tools(limits: Limits, n: int) -> None:
    if n > limits.max_tools:
        raise LimitExceeded(grpc.StatusCode.INVALID_ARGUMENT,
                            f"{n} tool schemas given; the limit is max_tools={limits.max_tools}")
