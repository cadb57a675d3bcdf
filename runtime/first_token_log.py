"""Where a slow first token's time went, one INFO line per request (opt-in).

A resumed agent turn's time to first token is its queue (runtime/wait_reasons.py: behind a
step, a slot, its prefix load, GPU room) and then the steps it ran in. In an H100 replay,
resumed turns that queued 1-2 ms with their KV on the GPU still took 35-65 ms to their first
token, while a small extend step replayed from a graph takes about 12 ms: this line names the
step that produced the token (its tokens, prefill tokens, sequences, graph or eager), how long
after admission it was launched and how long it ran to the token's read-back, and how many
steps the request ran in before it.

`EngineConfig.first_token_log_s` (`agentkv serve --first-token-log-s`): the time to first token
from which a request is logged; None (the default) logs nothing. The server logs its own line
for the same request (`describe_server`: preparation, then submission to the token).
`read_lines` turns a log's lines of both kinds back into one `FirstTokenRecord` per request (the
agent replay attaches them to its turns).
"""
from __future__ import annotations

import logging
import re
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


def reached(threshold_s: float | None, seconds: float | None) -> bool:
    """Whether a first token that took `seconds` is logged under `threshold_s` (None: never)."""
    return threshold_s is not None and seconds is not None and seconds >= threshold_s


def maybe_log(threshold_s: float | None, request_id: str, arrival: float,
              admitted_at: float | None, now: float, steps: int, step: FirstTokenStep,
              cached_tokens: int, prompt_tokens: int) -> bool:
    """Log the line when the time to first token reached `threshold_s`; True when logged."""
    if not reached(threshold_s, now - arrival):
        return False
    log.info(describe(request_id, arrival, admitted_at, now, steps, step, cached_tokens,
                      prompt_tokens))
    return True


def describe_server(request_id: str, session_id: str, turn_index: int, ttft_s: float,
                    prepared_s: float, to_token_s: float) -> str:
    """The server's line for the same request: the time to first token it measured, split into
    the turn's preparation and the wait from submission to the engine until the token."""
    return (f"request {request_id} (session {session_id} turn {turn_index}) first token after "
            f"{1e3 * ttft_s:.1f} ms: prepared in {1e3 * prepared_s:.1f} ms, then "
            f"{1e3 * to_token_s:.1f} ms from submission to the engine to the token here")


@dataclass
class FirstTokenRecord:
    """Both lines of one request, read back (milliseconds; None where a line is missing)."""
    request_id: str
    session_id: str | None = None
    turn_index: int | None = None
    server_ms: float | None = None           # the server's time to first token
    prepared_ms: float | None = None
    to_token_ms: float | None = None         # submission to the engine -> the token
    engine_ms: float | None = None           # the engine's: submission -> read-back
    queued_ms: float | None = None           # None: never queued
    steps: int | None = None
    cached_tokens: int | None = None
    prompt_tokens: int | None = None
    step_tokens: int | None = None           # the producing step's
    step_prefill_tokens: int | None = None
    step_seqs: int | None = None
    graph: bool | None = None
    launched_after_admission_ms: float | None = None
    read_back_ms: float | None = None        # launch -> the token read back

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "request_id"}


_NUM = r"(-?[\d.]+)"
_SERVER = re.compile(rf"request (\S+) \(session (\S+) turn (\d+)\) first token after {_NUM} ms: "
                     rf"prepared in {_NUM} ms, then {_NUM} ms from submission")
_ENGINE = re.compile(
    rf"request (\S+) first token after {_NUM} ms: (?:never queued|queued {_NUM} ms), (\d+) steps? "
    rf"\((\d+) of (\d+) prompt tokens cached\); its last step: (\d+) tokens \((\d+) prefill\) "
    rf"of (\d+) sequences, (graph|eager)(?:, launched {_NUM} ms after admission)?, token read "
    rf"back {_NUM} ms after launch")


def _f(x: str | None) -> float | None:
    return None if x is None else float(x)


def read_lines(text: str) -> dict[str, FirstTokenRecord]:
    """Every request named by a server or engine first-token line in `text` (a log, any prefix
    before each line's message), by request id."""
    out: dict[str, FirstTokenRecord] = {}
    for m in _SERVER.finditer(text):
        r = out.setdefault(m[1], FirstTokenRecord(m[1]))
        r.session_id, r.turn_index = m[2], int(m[3])
        r.server_ms, r.prepared_ms, r.to_token_ms = float(m[4]), float(m[5]), float(m[6])
    for m in _ENGINE.finditer(text):
        r = out.setdefault(m[1], FirstTokenRecord(m[1]))
        r.engine_ms, r.queued_ms, r.steps = float(m[2]), _f(m[3]), int(m[4])
        r.cached_tokens, r.prompt_tokens = int(m[5]), int(m[6])
        r.step_tokens, r.step_prefill_tokens, r.step_seqs = int(m[7]), int(m[8]), int(m[9])
        r.graph, r.launched_after_admission_ms, r.read_back_ms = m[10] == "graph", _f(m[11]), \
            float(m[12])
    return out
