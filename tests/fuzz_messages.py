"""Hypothesis strategies that build any protobuf message from its descriptor.

Every field of the message type is walked generically (so fields added to the .proto later are
fuzzed too): each may be missing or set; scalars take edge values (negative, huge, NaN/inf, empty
and very long strings, control characters); enums take unknown values; repeated fields are short,
empty or (for numbers and strings) very long; oneofs pick one member or none; nested messages
recurse to a bounded depth. Fields named `session_id` draw from a pool the caller gives (valid
ids of its own and of another tenant, closed ones, malformed ones).
"""
from __future__ import annotations

import math

from google.protobuf.descriptor import FieldDescriptor as FD
from hypothesis import strategies as st

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)
_RANGES = {FD.TYPE_INT32: INT32, FD.TYPE_SINT32: INT32, FD.TYPE_SFIXED32: INT32,
           FD.TYPE_INT64: INT64, FD.TYPE_SINT64: INT64, FD.TYPE_SFIXED64: INT64,
           FD.TYPE_UINT32: UINT32, FD.TYPE_FIXED32: UINT32,
           FD.TYPE_UINT64: UINT64, FD.TYPE_FIXED64: UINT64}

# strings people and attackers send: empty, whitespace, JSON of the wrong shape, control
# characters, path traversal, template markers, very long
_SPECIAL_STRINGS = ["", " ", "\x00", "null", "[]", "{}", '{"a": 1}', "[1, 2]", "1e999", "NaN",
                    "../../etc/passwd", "<|im_end|>", "<tool_call>{}</tool_call>", "user",
                    "assistant", "tool", "system", "\ud7ff" * 3, "é" * 50, "Bearer x"]


def integers(lo: int, hi: int):
    edges = sorted({v for v in (lo, hi, 0, 1, 2, -1, 7, 255, 4096, hi // 2, lo // 2, 2**31 - 1,
                                2**32 - 1, -(2**31)) if lo <= v <= hi})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi),
                     st.integers(max(lo, 0), min(hi, 64)))


def floats():
    return st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 1e-9, 2.0, 1e30, -1e30,
                                      math.inf, -math.inf, math.nan]),
                     st.floats(allow_nan=True, allow_infinity=True, width=32))


def rarely(common, rare, one_in: int = 12):
    """`rare` about once in `one_in` draws (huge values: one per message is enough)."""
    return st.integers(0, one_in - 1).flatmap(lambda i: rare if i == 0 else common)


def strings():
    huge = st.tuples(st.sampled_from(["a", "é", "\U0001f600", "{", "<"]),
                     st.sampled_from([1_000, 70_000, 2_000_000])).map(lambda t: t[0] * t[1])
    return rarely(st.one_of(st.sampled_from(_SPECIAL_STRINGS), st.text(max_size=40)), huge)


def _scalar(f: FD, session_ids):
    if f.type == FD.TYPE_STRING:
        if f.name == "session_id" and session_ids is not None:
            return rarely(session_ids, strings(), 4)
        return strings()
    if f.type == FD.TYPE_BYTES:
        return st.binary(max_size=64)
    if f.type == FD.TYPE_BOOL:
        return st.booleans()
    if f.type in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        return floats()
    if f.type == FD.TYPE_ENUM:
        known = [v.number for v in f.enum_type.values]
        return st.one_of(st.sampled_from(known), integers(*INT32))   # unknown values too
    if f.type in _RANGES:
        return integers(*_RANGES[f.type])
    raise TypeError(f"no strategy for field {f.full_name} of type {f.type}")


def _repeated(f: FD, session_ids, depth: int):
    one = _value(f, session_ids, depth)
    short = st.lists(one, max_size=4)
    if f.type in _RANGES:                   # e.g. token ids: very long lists of small numbers
        huge = st.tuples(integers(*_RANGES[f.type]), st.sampled_from([5_000, 200_000])) \
            .map(lambda t: [t[0]] * t[1])
        return rarely(short, huge, 6)
    if f.type == FD.TYPE_STRING:
        return rarely(short, st.sampled_from([["{}"] * 300, ["x"] * 10_000]))
    if f.type == FD.TYPE_MESSAGE and depth <= 1:
        return rarely(short, st.lists(one, min_size=50, max_size=60))
    return short


def _value(f: FD, session_ids, depth: int):
    if f.type == FD.TYPE_MESSAGE:
        return message_dicts(f.message_type, session_ids, depth + 1)
    return _scalar(f, session_ids)


@st.composite
def message_dicts(draw, descriptor, session_ids=None, depth: int = 0):
    """{field name: value} for the message type (nested messages as dicts)."""
    out: dict = {}
    if depth > 3:
        return out
    oneof_pick = {o.name: draw(st.sampled_from([None] + [f.name for f in o.fields]))
                  for o in descriptor.oneofs if not o.name.startswith("_")}
    for f in descriptor.fields:
        o = f.containing_oneof
        if o is not None and not o.name.startswith("_"):     # a real oneof (not `optional`)
            if oneof_pick[o.name] != f.name:
                continue
        elif not draw(st.booleans()):                        # missing
            continue
        if f.is_repeated:
            out[f.name] = draw(_repeated(f, session_ids, depth))
        else:
            out[f.name] = draw(_value(f, session_ids, depth))
    return out


def build(cls, values: dict):
    """The message of class `cls` from a dict of message_dicts (recursively)."""
    msg = cls()
    fill(msg, values)
    return msg


def fill(msg, values: dict) -> None:
    fields = msg.DESCRIPTOR.fields_by_name
    for name, v in values.items():
        f = fields[name]
        if f.type == FD.TYPE_MESSAGE:
            if f.is_repeated:
                for item in v:
                    fill(getattr(msg, name).add(), item)
            else:
                getattr(msg, name).SetInParent()
                fill(getattr(msg, name), v)
        elif f.is_repeated:
            getattr(msg, name).extend(v)
        else:
            setattr(msg, name, v)


def messages(cls, session_ids=None):
    """A strategy of `cls` messages."""
    return message_dicts(cls.DESCRIPTOR, session_ids).map(lambda d: build(cls, d))
