"""API keys and tenants: which tenant a call belongs to, from its metadata.

Keys come from a config file (JSON or TOML) and/or the environment variable
``AGENTKV_API_KEYS="key1:tenant1,key2:tenant2"``. A file holds either a table of key -> tenant or a
list of {key, tenant} entries, at the top level or under ``keys``:

    {"keys": {"k-123": "acme", "k-456": "globex"}}          # JSON
    [[keys]]                                                 # TOML
    key = "k-123"
    tenant = "acme"

A call carries its key as ``authorization: Bearer <key>`` or ``x-api-key: <key>``. Keys are
compared in constant time (``hmac.compare_digest`` over SHA-256 digests, every key tried), so
neither the time taken nor an early exit tells how much of a guess was right. With no keys
configured the server runs open: every call is tenant ``default`` (the server logs a warning).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

ENV_VAR = "AGENTKV_API_KEYS"
OPEN_TENANT = "default"


class AuthConfigError(ValueError):
    """The key file or the environment variable cannot be read; the message says why."""


class AuthError(Exception):
    """The call has no key, or a key that is not configured (gRPC UNAUTHENTICATED)."""


def _entries(obj, source: str) -> list[tuple[str, str]]:
    if isinstance(obj, dict) and "keys" in obj and len(obj) == 1:
        obj = obj["keys"]
    if isinstance(obj, dict):
        pairs = list(obj.items())
    elif isinstance(obj, list):
        pairs = []
        for i, e in enumerate(obj):
            if not isinstance(e, dict) or "key" not in e or "tenant" not in e:
                raise AuthConfigError(f"{source}: entry {i} must be a table with 'key' and "
                                      f"'tenant', got {e!r}")
            pairs.append((e["key"], e["tenant"]))
    else:
        raise AuthConfigError(f"{source}: expected a table of key -> tenant or a list of "
                              f"{{key, tenant}} entries, got {type(obj).__name__}")
    for k, t in pairs:
        if not isinstance(k, str) or not k or not isinstance(t, str) or not t:
            raise AuthConfigError(f"{source}: keys and tenants must be non-empty strings "
                                  f"(got key {str(k)[:4]!r}..., tenant {t!r})")
    return pairs


def parse_key_file(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(key, tenant) pairs from a JSON or TOML file (TOML when it ends in .toml)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise AuthConfigError(f"cannot read the API key file {str(p)!r}: {e}") from e
    try:
        if p.suffix.lower() == ".toml":
            import tomllib
            obj = tomllib.loads(text)
        else:
            obj = json.loads(text)
    except ValueError as e:
        kind = "TOML" if p.suffix.lower() == ".toml" else "JSON"
        raise AuthConfigError(f"the API key file {str(p)!r} is not valid {kind}: {e}") from e
    return _entries(obj, str(p))


def parse_key_env(value: str) -> list[tuple[str, str]]:
    """(key, tenant) pairs from ``key1:tenant1,key2:tenant2``."""
    pairs = []
    for item in (x.strip() for x in value.split(",")):
        if not item:
            continue
        key, sep, tenant = item.rpartition(":")
        if not sep or not key or not tenant:
            raise AuthConfigError(f"{ENV_VAR}: entry {item[:4]!r}... is not key:tenant "
                                  f"(the form is key1:tenant1,key2:tenant2)")
        pairs.append((key, tenant))
    return pairs


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass
class Authenticator:
    """Maps API keys to tenants; open (one tenant) when it holds no keys."""
    pairs: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._digests = [(_digest(k), t) for k, t in self.pairs]

    @classmethod
    def from_sources(cls, key_file: str | None = None,
                     environ: dict | None = None) -> "Authenticator":
        env = os.environ if environ is None else environ
        pairs: list[tuple[str, str]] = []
        if key_file:
            pairs += parse_key_file(key_file)
        if env.get(ENV_VAR):
            pairs += parse_key_env(env[ENV_VAR])
        return cls(pairs)

    @property
    def is_open(self) -> bool:
        return not self._digests

    @property
    def tenants(self) -> list[str]:
        return sorted({t for _, t in self.pairs}) if self.pairs else [OPEN_TENANT]

    def tenant_for_key(self, key: str | None) -> str:
        if self.is_open:
            return OPEN_TENANT
        if not key:
            raise AuthError("this server needs an API key: send it as 'authorization: Bearer "
                            "<key>' or 'x-api-key: <key>' metadata")
        d = _digest(key)
        found = None
        for digest, tenant in self._digests:   # no early exit: every key is compared
            if hmac.compare_digest(d, digest) and found is None:
                found = tenant
        if found is None:
            raise AuthError("the API key is not valid for this server: check the key the "
                            "server was configured with (--api-keys or AGENTKV_API_KEYS)")
        return found

    def tenant_for(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
        """The tenant of a call from its invocation metadata; raises AuthError."""
        return self.tenant_for_key(key_from_metadata(metadata))


def key_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for k, v in metadata or ():
        if isinstance(v, bytes):
            continue
        k = k.lower()
        if k == "authorization":
            scheme, _, rest = v.strip().partition(" ")
            if scheme.lower() == "bearer" and rest.strip():
                return rest.strip()
        elif k == "x-api-key" and v.strip():
            return v.strip()
    return None
