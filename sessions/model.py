"""The session model: a session, its turns, its pause, and their msgpack records.

A session's truth is its token log (every token the model has seen or produced, in order) plus
the chat messages it came from; KV on any tier is a cache of the log. The log only grows, except
when a turn cuts it back to a common prefix because re-rendering the chat changed earlier tokens
(`TurnRecord.rewritten_tokens` counts the tokens dropped).

Records are msgpack maps carrying `v` (SESSION_FORMAT_VERSION); the store keeps the token log
apart from the record (see sessions/store.py), so `session_to_record` leaves it out.
"""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from typing import Any, Iterable

import msgpack

from sessions.errors import InvalidArgument, SessionFormatError
from sessions.state import SessionState

SESSION_FORMAT_VERSION = 1
KV_SOURCES = ("gpu", "cpu", "disk", "recomputed")
TOKEN_ID_LIMIT = 1 << 32               # the log stores ids as 4-byte unsigned ints


@dataclass(frozen=True)
class PauseInfo:
    """Why a session is PAUSED.

    tool: the tool (or "human") it waits on. expected_s: the client's estimate, if any.
    human: a person is in the loop. started_at: when the pause began (the manager's clock).
    forecast_p50_s / forecast_source: the pause estimator's median and where it came from
    ("hint", "learned", "prior"); None without an estimator and without a hint.
    """
    tool: str
    expected_s: float | None
    human: bool
    started_at: float
    forecast_p50_s: float | None = None
    forecast_source: str | None = None


@dataclass(frozen=True)
class TurnRecord:
    """One completed turn.

    input_tokens: tokens the turn appended to the log before generating; output_tokens: tokens
    it generated. kv_source: prompt tokens whose KV came from "gpu", "cpu", "disk", or were
    "recomputed". rewritten_tokens: tokens of the previous log the turn dropped (0 normally).
    """
    index: int
    input_tokens: int
    output_tokens: int
    started_at: float
    first_token_at: float | None
    ended_at: float
    ttft_s: float | None
    finish_reason: str
    tool_calls: list[dict] = field(default_factory=list)
    kv_source: dict[str, int] = field(default_factory=dict)
    rewritten_tokens: int = 0


@dataclass
class Session:
    """One agent session. Instances handed out by the manager are snapshots: change nothing.

    ttl_s: idle time after which a WAITING or PAUSED session expires (the tenant's TTL at
    creation). resume_expected_at: set by a resume with a hint (absolute time the next input is
    expected), cleared when the next turn starts; a cache policy can prefetch for it.
    """
    session_id: str
    tenant: str
    model: str
    created_at: float
    updated_at: float
    state: SessionState = SessionState.WAITING
    token_log: list[int] = field(default_factory=list)
    turns: list[TurnRecord] = field(default_factory=list)
    pause: PauseInfo | None = None
    system_prompt: str = ""
    messages: list[dict] = field(default_factory=list)
    tools: list[dict] = field(default_factory=list)
    sampling_defaults: dict = field(default_factory=dict)
    closed_at: float | None = None
    ttl_s: float | None = None
    resume_expected_at: float | None = None

    @property
    def is_open(self) -> bool:
        return self.state.is_open

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    def snapshot(self) -> "Session":
        """A copy whose lists and dicts can be read (or changed) without touching this one."""
        return dataclasses.replace(
            self, token_log=list(self.token_log), turns=list(self.turns),
            messages=[dict(m) for m in self.messages], tools=[dict(t) for t in self.tools],
            sampling_defaults=dict(self.sampling_defaults))


@dataclass(frozen=True)
class TurnHandle:
    """A turn in flight, from `SessionManager.begin_turn` to `end_turn` or `abort_turn`.

    prompt_token_ids: what to give the engine, the kept log plus appended_token_ids.
    kept_log_tokens: tokens of the committed log the prompt starts with; dropped_tokens: tokens
    of the log it cut (both are the log's length and 0 unless the turn rewrote the log).
    """
    session_id: str
    tenant: str
    turn_index: int
    prompt_token_ids: list[int]
    appended_token_ids: list[int]
    appended_messages: list[dict]
    kept_log_tokens: int
    dropped_tokens: int
    started_at: float
    nonce: int


# -- records -----------------------------------------------------------------------------------
def _pause_to(p: PauseInfo | None) -> dict | None:
    return None if p is None else dataclasses.asdict(p)


def _turn_to(t: TurnRecord) -> list:
    return [t.index, t.input_tokens, t.output_tokens, t.started_at, t.first_token_at, t.ended_at,
            t.ttft_s, t.finish_reason, t.tool_calls, t.kv_source, t.rewritten_tokens]


def session_to_record(s: Session) -> dict[str, Any]:
    """The session as a msgpack-ready map, without its token log."""
    return {
        "v": SESSION_FORMAT_VERSION, "id": s.session_id, "tenant": s.tenant, "model": s.model,
        "created_at": s.created_at, "updated_at": s.updated_at, "state": s.state.value,
        "turns": [_turn_to(t) for t in s.turns], "pause": _pause_to(s.pause),
        "system_prompt": s.system_prompt, "messages": s.messages, "tools": s.tools,
        "sampling_defaults": s.sampling_defaults, "closed_at": s.closed_at, "ttl_s": s.ttl_s,
        "resume_expected_at": s.resume_expected_at,
    }


def session_from_record(rec: dict[str, Any], token_log: list[int]) -> Session:
    """Rebuild a session from `session_to_record`'s map and its token log."""
    if not isinstance(rec, dict):
        raise SessionFormatError(f"a session record must be a map, got {type(rec).__name__}")
    version = rec.get("v")
    if version != SESSION_FORMAT_VERSION:
        raise SessionFormatError(f"session record {rec.get('id')!r} has format version "
                                 f"{version!r}; this build reads version {SESSION_FORMAT_VERSION}")
    try:
        p = rec["pause"]
        return Session(
            session_id=rec["id"], tenant=rec["tenant"], model=rec["model"],
            created_at=rec["created_at"], updated_at=rec["updated_at"],
            state=SessionState(rec["state"]), token_log=list(token_log),
            turns=[TurnRecord(*t) for t in rec["turns"]],
            pause=None if p is None else PauseInfo(**p),
            system_prompt=rec["system_prompt"], messages=list(rec["messages"]),
            tools=list(rec["tools"]), sampling_defaults=dict(rec["sampling_defaults"]),
            closed_at=rec["closed_at"], ttl_s=rec["ttl_s"],
            resume_expected_at=rec.get("resume_expected_at"))
    except (KeyError, TypeError, ValueError) as e:
        raise SessionFormatError(f"session record {rec.get('id')!r} is corrupt: "
                                 f"{type(e).__name__}: {e}") from e


def pack_record(rec: dict[str, Any]) -> bytes:
    return msgpack.packb(rec, use_bin_type=True)


def unpack_record(data: bytes) -> dict[str, Any]:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise SessionFormatError(f"a session record is not valid msgpack: {e}") from e


def pack_session(s: Session) -> bytes:
    """The whole session, token log included, as one msgpack value (export, tests)."""
    rec = session_to_record(s)
    rec["token_log"] = list(s.token_log)
    return pack_record(rec)


def unpack_session(data: bytes) -> Session:
    rec = unpack_record(data)
    if not isinstance(rec, dict) or "token_log" not in rec:
        raise SessionFormatError("not a packed session: the token_log field is missing")
    return session_from_record(rec, rec["token_log"])


# -- checks of caller-supplied values -----------------------------------------------------------
def check_tokens(name: str, tokens: Iterable) -> list[int]:
    """`tokens` as a list of ints in [0, 2**32), else InvalidArgument naming the bad one."""
    try:
        out = [operator.index(t) for t in tokens]
    except TypeError as e:
        raise InvalidArgument(f"{name} must be a sequence of integer token ids ({e})") from None
    for i, t in enumerate(out):
        if not 0 <= t < TOKEN_ID_LIMIT:
            raise InvalidArgument(f"{name}[{i}] = {t} is not a token id: ids are in [0, 2**32)")
    return out


def check_plain(name: str, value: Any) -> Any:
    """`value` if msgpack can store it (JSON-like data), else InvalidArgument."""
    try:
        pack_record(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidArgument(f"{name} must be JSON-like data (maps, lists, strings, numbers, "
                              f"booleans, null): {e}") from None
    return value


def check_dicts(name: str, items: Iterable) -> list[dict]:
    """`items` as a list of (copied) JSON-like maps, else InvalidArgument."""
    out = []
    for i, m in enumerate(items):
        if not isinstance(m, dict):
            raise InvalidArgument(f"{name}[{i}] must be a map, got {type(m).__name__}")
        out.append(dict(m))
    return check_plain(name, out)
