"""Operator settings of a cache policy: `agentkv serve --policy-option KEY=VALUE`.

The agent policy takes any field of `AgentConfig` (its step cap, prefetch quantile, keep
rules...), `ttl` its two clip bounds; the other baselines have none. Values are parsed by the
field's type (an `int | None` field takes `none`), then checked by building the policy's config,
so a bad setting fails at start with the field's own message, never mid-run.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from sessions.policies.agent import AgentConfig
from sessions.policies.baselines import TTLConfig

PolicyOptions = Mapping[str, Any]


# policy name -> the dataclass whose fields are its options
OPTION_TYPES: dict[str, type] = {"agent": AgentConfig, "ttl": TTLConfig}


def option_fields(policy: str) -> dict[str, Any]:
    """Option name -> its type annotation (resolved), for `policy`; {} if it takes none."""
    cls = OPTION_TYPES.get(policy)
    if cls is None:
        return {}
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _base_types(annotation) -> tuple[type, bool]:
    """(the value type, whether None is allowed) of a field annotation such as `int | None`."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        kinds = [a for a in args if a is not type(None)]
        return kinds[0], len(kinds) < len(args)
    return annotation, False


def _parse_value(policy: str, name: str, annotation, text: str) -> Any:
    kind, nullable = _base_types(annotation)
    t = text.strip()
    if nullable and t.lower() == "none":
        return None
    try:
        if kind is bool:
            if t.lower() in ("1", "true", "yes", "on"):
                return True
            if t.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        value = kind(t)
    except ValueError:
        what = {bool: "true or false", int: "an integer",
                float: "a number"}.get(kind, kind.__name__)
        raise ValueError(f"--policy-option {name}={text}: the {policy} policy's {name} must be "
                         f"{what}{' or none' if nullable else ''}") from None
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"--policy-option {name}={text}: must be a number, not nan")
    return value


def parse_policy_options(policy: str, items: Iterable[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings -> typed options of `policy`, checked as `check_policy_options`."""
    fields = option_fields(policy)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--policy-option {item!r}: expected KEY=VALUE")
        if key not in fields:
            raise ValueError(_unknown(policy, key))
        if key in out:
            raise ValueError(f"--policy-option {key} is given twice")
        out[key] = _parse_value(policy, key, fields[key], text)
    check_policy_options(policy, out)
    return out


def _unknown(policy: str, key: str) -> str:
    names = sorted(option_fields(policy))
    if not names:
        return f"the {policy} policy takes no options (got {key!r})"
    return f"the {policy} policy has no option {key!r}; its options: {', '.join(names)}"


def check_policy_options(policy: str, options: PolicyOptions):
    """`policy`'s config built from `options` (None for a policy without options); raises
    ValueError unless they are valid, typed settings of it."""
    fields = option_fields(policy)
    for key in options:
        if key not in fields:
            raise ValueError(_unknown(policy, key))
    return OPTION_TYPES[policy](**options) if fields else None


def policy_kwargs(policy: str, options: PolicyOptions | None) -> dict[str, Any]:
    """The constructor arguments that carry `options` into `policy`'s class."""
    if not options:
        return {}
    config = check_policy_options(policy, options)
    return {"config": config} if policy == "agent" else dict(options)
