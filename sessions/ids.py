"""Session ids: `s_` followed by 32 URL-safe base64 characters (192 random bits).

Ids come from `secrets`, so they cannot be guessed; they are still not credentials: every lookup
also checks the caller's tenant.
"""
from __future__ import annotations

import re
import secrets

from sessions.errors import InvalidSessionId

PREFIX = "s_"
RANDOM_BYTES = 24                      # 192 bits; token_urlsafe gives 32 characters
ID_LENGTH = len(PREFIX) + 32
_PATTERN = re.compile(r"s_[A-Za-z0-9_-]{32}")


def new_session_id() -> str:
    """A fresh, unguessable session id."""
    return PREFIX + secrets.token_urlsafe(RANDOM_BYTES)


def is_valid_session_id(value: object) -> bool:
    return isinstance(value, str) and _PATTERN.fullmatch(value) is not None


def check_session_id(value: object) -> str:
    """`value` if it is a well-formed session id, else InvalidSessionId saying what one is."""
    if is_valid_session_id(value):
        return value  # type: ignore[return-value]
    shown = repr(value) if len(repr(value)) <= 48 else repr(value)[:45] + "..."
    raise InvalidSessionId(f"session id {shown} is malformed: a session id is {PREFIX!r} "
                           f"followed by 32 URL-safe base64 characters (A-Z a-z 0-9 _ -), as "
                           f"CreateSession returns it")
