"""TLS for the gRPC server: `--tls-cert` and `--tls-key` (PEM files) turn TLS on;
`--tls-client-ca` (a PEM bundle) also asks every client for a certificate signed by it (mutual
TLS). With TLS on the server listens only with TLS: a plaintext client cannot connect.

The files are read once, at start; a missing or unreadable file fails the start with a message
that names the flag.
"""
from __future__ import annotations

from pathlib import Path

import grpc


class TLSConfigError(ValueError):
    """The TLS flags are incomplete or name files that cannot be read."""


def check_tls_flags(cert: str | None, key: str | None, client_ca: str | None) -> None:
    """Refuse a partial set of TLS flags (a certificate without its key, a client CA without
    server TLS)."""
    if bool(cert) != bool(key):
        raise TLSConfigError("TLS needs both --tls-cert and --tls-key (PEM files); got only "
                             f"{'--tls-cert' if cert else '--tls-key'}")
    if client_ca and not cert:
        raise TLSConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key too")


def _read(path: str, flag: str) -> bytes:
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as e:
        raise TLSConfigError(f"cannot read {flag} {path!r}: {e}") from e
    if b"-----BEGIN" not in data:
        raise TLSConfigError(f"{flag} {path!r} is not a PEM file")
    return data


def server_credentials(cert: str, key: str, client_ca: str | None = None
                       ) -> grpc.ServerCredentials:
    """grpc.ssl_server_credentials from PEM files; with client_ca, client certificates are
    required and checked against it."""
    check_tls_flags(cert, key, client_ca)
    pair = (_read(key, "--tls-key"), _read(cert, "--tls-cert"))
    if client_ca:
        return grpc.ssl_server_credentials([pair], root_certificates=_read(client_ca,
                                                                           "--tls-client-ca"),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials([pair])
