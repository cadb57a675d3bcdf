"""The gRPC status of every error the service can meet, and the decorator that applies it.

    AuthError                                   UNAUTHENTICATED
    SessionNotFound                             NOT_FOUND (also another tenant's session)
    InvalidArgument, InvalidSessionId,
    RequestError, InvalidRequestError (engine)  INVALID_ARGUMENT
    IllegalTransition, StaleTurnHandle          FAILED_PRECONDITION
    SessionLimitExceeded                        RESOURCE_EXHAUSTED
    LimitExceeded                               its own code (RESOURCE_EXHAUSTED / INVALID_ARGUMENT)
    SessionFormatError                          DATA_LOSS
    SessionStoreError, EngineStoppedError       UNAVAILABLE
    anything else                               INTERNAL (logged with its traceback)
"""
from __future__ import annotations

import functools
import logging
import time

import grpc

from runtime.auth import AuthError
from runtime.errors import EngineStoppedError, InvalidRequestError
from runtime.limits import LimitExceeded
from runtime.server_convert import RequestError
from sessions.errors import (IllegalTransition, InvalidArgument, SessionFormatError,
                             SessionLimitExceeded, SessionNotFound, SessionStoreError,
                             StaleTurnHandle)

log = logging.getLogger("agentkv.server")

_CODES: list[tuple[type, grpc.StatusCode]] = [
    (AuthError, grpc.StatusCode.UNAUTHENTICATED),
    (SessionNotFound, grpc.StatusCode.NOT_FOUND),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (RequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (IllegalTransition, grpc.StatusCode.FAILED_PRECONDITION),
    (StaleTurnHandle, grpc.StatusCode.FAILED_PRECONDITION),
    (SessionLimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (SessionFormatError, grpc.StatusCode.DATA_LOSS),
    (SessionStoreError, grpc.StatusCode.UNAVAILABLE),
    (EngineStoppedError, grpc.StatusCode.UNAVAILABLE),
]


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(code, message) for an exception raised while serving a call."""
    if isinstance(exc, LimitExceeded):
        return exc.code, str(exc)
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code, str(exc)
    log.error("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); the server log " \
                                     f"has the details"


def unary(method):
    """Run a unary RPC method, turning raised errors into gRPC statuses; its duration goes to
    `agentkv:rpc_duration_seconds{method}` whether it answered or failed (observed before the
    answer leaves, so a client that reads the metric next finds its call counted)."""
    @functools.wraps(method)
    async def wrapper(self, request, context):
        t0 = time.perf_counter()

        def timed() -> None:
            self.metrics.rpc_seconds.labels(method.__name__).observe(time.perf_counter() - t0)
        try:
            out = await method(self, request, context)
        except Exception as exc:
            timed()
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code, msg = status_for(exc)
            self.metrics.rpc_errors.labels(method.__name__, code.name).inc()
            await context.abort(code, msg)
        timed()
        return out
    return wrapper
