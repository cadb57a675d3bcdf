"""Conversions between the API's protobuf messages and the runtime's Python values.

Input is checked here, with messages that say what was wrong and what is allowed
(`RequestError` becomes INVALID_ARGUMENT): roles, tool-call arguments and tool schemas that must be
JSON objects, sampling values.
"""
from __future__ import annotations

import json
import math

from google.protobuf.timestamp_pb2 import Timestamp

from agentkv_proto.agentkv.v1 import session_pb2 as pb
from runtime.config import SamplingParams
from sessions.model import Session
from sessions.state import SessionState

ROLES = ("system", "user", "assistant", "tool")
STATE_TO_PB = {
    SessionState.WAITING: pb.SESSION_STATE_WAITING,
    SessionState.ACTIVE: pb.SESSION_STATE_ACTIVE,
    SessionState.PAUSED: pb.SESSION_STATE_PAUSED,
    SessionState.CLOSED: pb.SESSION_STATE_CLOSED,
    SessionState.EXPIRED: pb.SESSION_STATE_EXPIRED,
}
STATE_FROM_PB = {v: k for k, v in STATE_TO_PB.items()}
FINISH_TO_PB = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "tool_call": pb.FINISH_REASON_TOOL_CALL,
    "cancelled": pb.FINISH_REASON_CANCELLED,
}


class RequestError(ValueError):
    """A request field is malformed (gRPC INVALID_ARGUMENT); the message names the field."""


def _json_object(text: str, what: str) -> dict:
    try:
        obj = json.loads(text) if text.strip() else {}
    except ValueError as e:
        raise RequestError(f"{what} is not valid JSON ({e}); give a JSON object") from None
    if not isinstance(obj, dict):
        raise RequestError(f"{what} must be a JSON object, got a JSON {type(obj).__name__}")
    return obj


def message_from_pb(m: pb.ChatMessage, where: str) -> dict:
    """A chat message as the chat template reads it (the form kept in `Session.messages`)."""
    if m.role not in ROLES:
        raise RequestError(f"{where}.role is {m.role!r}; a role is one of {', '.join(ROLES)}")
    d: dict = {"role": m.role, "content": m.content}
    if m.tool_calls:
        if m.role != "assistant":
            raise RequestError(f"{where} has tool_calls but role {m.role!r}: only assistant "
                               f"messages carry tool calls")
        calls = []
        for j, c in enumerate(m.tool_calls):
            if not c.name:
                raise RequestError(f"{where}.tool_calls[{j}].name is empty")
            args = _json_object(c.arguments_json, f"{where}.tool_calls[{j}].arguments_json")
            call = {"type": "function", "function": {"name": c.name, "arguments": args}}
            if c.id:
                call["id"] = c.id
            calls.append(call)
        d["tool_calls"] = calls
    if m.role == "tool":
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        if m.name:
            d["name"] = m.name
    return d


def messages_from_pb(messages, field: str) -> list[dict]:
    return [message_from_pb(m, f"{field}[{i}]") for i, m in enumerate(messages)]


def tools_from_pb(tools_json) -> list[dict]:
    return [_json_object(t, f"tools_json[{i}]") for i, t in enumerate(tools_json)]


def sampling_to_dict(p: pb.SamplingParams) -> dict:
    """The fields that are set, checked, as a plain dict (stored as a session's defaults)."""
    d: dict = {}
    for name in ("max_tokens", "temperature", "top_p", "top_k", "seed", "ignore_eos"):
        if p.HasField(name):
            d[name] = getattr(p, name)
    if p.stop:
        d["stop"] = list(p.stop)
    for name in ("temperature", "top_p"):
        if name in d and not math.isfinite(d[name]):
            raise RequestError(f"sampling.{name} must be a finite number, got {d[name]}")
    if d.get("max_tokens", 1) == 0:
        raise RequestError("sampling.max_tokens must be at least 1 (leave it unset for the "
                           "session's default)")
    if "temperature" in d and d["temperature"] < 0:
        raise RequestError(f"sampling.temperature must be >= 0 (0 is greedy), got "
                           f"{d['temperature']}")
    if "top_p" in d and not 0.0 < d["top_p"] <= 1.0:
        raise RequestError(f"sampling.top_p must be in (0, 1], got {d['top_p']}")
    return d


def sampling_params(defaults: dict, overrides: dict, default_max_tokens: int) -> SamplingParams:
    """The turn's SamplingParams: server default < session defaults < the turn's overrides."""
    d = {"max_tokens": default_max_tokens, **defaults, **overrides}
    return SamplingParams(max_tokens=int(d["max_tokens"]),
                          temperature=float(d.get("temperature", 0.0)),
                          top_p=float(d.get("top_p", 1.0)), top_k=int(d.get("top_k", 0)),
                          seed=d.get("seed"), stop=list(d.get("stop", [])),
                          ignore_eos=bool(d.get("ignore_eos", False)))


def sampling_to_pb(d: dict) -> pb.SamplingParams:
    return pb.SamplingParams(**{k: v for k, v in d.items()})


def _ts(t: float | None) -> Timestamp | None:
    if t is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def session_to_pb(s: Session, residency: dict[str, int] | None = None) -> pb.Session:
    out = pb.Session(session_id=s.session_id, model=s.model, state=STATE_TO_PB[s.state],
                     context_tokens=len(s.token_log), turns=s.num_turns,
                     create_time=_ts(s.created_at), update_time=_ts(s.updated_at),
                     sampling=sampling_to_pb(s.sampling_defaults),
                     tools_json=[json.dumps(t) for t in s.tools])
    if s.pause is not None:
        out.paused_tool = s.pause.tool
        out.pause_expected_seconds = s.pause.expected_s or s.pause.forecast_p50_s or 0.0
        out.human_in_the_loop = s.pause.human
    if residency is not None:
        out.kv_residency.CopyFrom(pb.KvResidency(gpu_tokens=residency.get("gpu", 0),
                                                 cpu_tokens=residency.get("cpu", 0),
                                                 disk_tokens=residency.get("disk", 0)))
    return out


def kv_source_to_pb(kv: dict[str, int]) -> pb.KvSource:
    return pb.KvSource(gpu_tokens=kv.get("gpu", 0), cpu_tokens=kv.get("cpu", 0),
                       disk_tokens=kv.get("disk", 0), recomputed_tokens=kv.get("recomputed", 0))


def tool_call_to_pb(call: dict) -> pb.ToolCall:
    return pb.ToolCall(id=call.get("id", ""), name=call["name"],
                       arguments_json=json.dumps(call.get("arguments", {})))
