"""Where a slow first token's time went, one INFO line per request (opt-in).

A resumed agent turn's time to first token is its queue (runtime/wait_reasons.py: behind a
step, a slot, its prefix load, GPU room) and then the steps it ran in. In an H100 replay,
resumed turns that queued 1-2 ms with their KV on the GPU still took 35-65 ms to their first
token, while a small extend step replayed from a graph takes about 12 ms: this line names the
step that produced the token (its tokens, prefill tokens, sequences, graph or eager), how long
after admission it was launched and how long it ran to the token's read-back, and how many
steps the request ran in before it.

`EngineConfig.first_token_log_s` (`agentkv serve --first-token-log-s`): the time to first token
from which a request is logged; None (the default) logs nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FirstTokenStep:
    """The step that produced a request's first token, as launched."""
    tokens: int             # tokens the step computed (every sequence's)
    prefill_tokens: int     # of those, in chunks of more than one token
    seqs: int               # sequences scheduled
    graph: bool             # replayed from a CUDA graph
    launched_at: float      # time.monotonic() at launch


def describe(request_id: str, arrival: float, admitted_at: float | None, now: float,
             steps: int, step: FirstTokenStep, cached_tokens: int, prompt_tokens: int) -> str:
    """The log line for a request whose first token was read back at `now` (monotonic)."""
    queue = "never queued" if admitted_at is None else \
        f"queued {1e3 * (admitted_at - arrival):.1f} ms"
    after = "" if admitted_at is None else \
        f", launched {1e3 * (step.launched_at - admitted_at):.1f} ms after admission"
    return (f"request {request_id} first token after {1e3 * (now - arrival):.1f} ms: {queue}, "
            f"{steps} step{'s' if steps != 1 else ''} ({cached_tokens} of {prompt_tokens} "
            f"prompt tokens cached); its last step: {step.tokens} tokens ({step.prefill_tokens} "
            f"prefill) of {step.seqs} sequences, {'graph' if step.graph else 'eager'}{after}, "
            f"token read back {1e3 * (now - step.launched_at):.1f} ms after launch")


def maybe_log(threshold_s: float | None, request_id: str, arrival: float,
              admitted_at: float | None, now: float, steps: int, step: FirstTokenStep,
              cached_tokens: int, prompt_tokens: int) -> bool:
    """Log the line when the time to first token reached `threshold_s`; True when logged."""
    if threshold_s is None or now - arrival < threshold_s:
        return False
    log.info(describe(request_id, arrival, admitted_at, now, steps, step, cached_tokens,
                      prompt_tokens))
    return True
