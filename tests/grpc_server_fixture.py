"""Helpers for the gRPC tests: a real server on a free loopback port, and its generated stubs.

The server runs in-process (`runtime.server.ServerThread`: its own event loop on a background
thread) with the embedded `tiny` model on the CPU and a small KV cache. The tiny model is built
once per test run under the XDG_CACHE_HOME that conftest.py sets for the whole suite.
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from pathlib import Path

import grpc

from agentkv_proto.agentkv.v1 import session_pb2 as pb
from agentkv_proto.agentkv.v1 import session_service_pb2 as api
from agentkv_proto.agentkv.v1 import session_service_pb2_grpc as api_grpc
from runtime.config import EngineConfig
from runtime.limits import Limits
from runtime.server import ServerThread
from runtime.server_config import ServerConfig

KEYS = {"key-acme": "acme", "key-globex": "globex"}


def server_config(data_dir: Path, model: str = "tiny", **kw) -> ServerConfig:
    engine = EngineConfig(model=model, device="cpu", num_gpu_blocks=kw.pop("num_gpu_blocks", 256),
                          max_num_batched_tokens=512)
    kw.setdefault("api_keys_from_env", False)      # keys only from the test's own key file
    return ServerConfig(engine=engine, port=0, data_dir=str(data_dir), grace_s=2.0, **kw)


@contextmanager
def running_server(config: ServerConfig):
    """A started ServerThread, stopped at exit."""
    st = ServerThread(config).start()
    try:
        yield st
    finally:
        st.stop()


def key_file(folder: Path, keys: dict[str, str] = KEYS) -> str:
    """A JSON API key file mapping each key to its tenant."""
    import json
    path = folder / "keys.json"
    path.write_text(json.dumps({"keys": keys}))
    return str(path)


class Client:
    """Generated stubs on one channel, with a key sent on every call."""

    def __init__(self, target: str, key: str | None = None):
        self.channel = grpc.insecure_channel(target)
        self.stub = api_grpc.SessionServiceStub(self.channel)
        self.key = key

    @property
    def md(self):
        return (("authorization", f"Bearer {self.key}"),) if self.key else ()

    def __getattr__(self, rpc):
        method = getattr(self.stub, rpc)

        def call(request, **kw):
            return method(request, metadata=self.md, **kw)
        return call

    def create(self, **kw) -> pb.Session:
        return self.CreateSession(api.CreateSessionRequest(**kw)).session

    def generate(self, session_id: str, text: str | None = None, role: str = "user",
                 token_ids=None, max_tokens: int = 4, timeout: float | None = None, **sampling):
        """(deltas, result) of one whole turn; `sampling` sets SamplingParams fields."""
        events = list(self.Generate(generate_request(session_id, text, role, token_ids,
                                                     max_tokens, **sampling), timeout=timeout))
        deltas = [e.delta for e in events if e.HasField("delta")]
        results = [e.result for e in events if e.HasField("result")]
        assert len(results) == 1 and events[-1].HasField("result"), events
        return deltas, results[0]

    def get(self, session_id: str) -> pb.Session:
        return self.GetSession(api.GetSessionRequest(session_id=session_id)).session

    def close(self) -> None:
        self.channel.close()


def generate_request(session_id: str, text: str | None = None, role: str = "user",
                     token_ids=None, max_tokens: int = 4, **sampling) -> api.GenerateRequest:
    req = api.GenerateRequest(session_id=session_id,
                              sampling=pb.SamplingParams(max_tokens=max_tokens, **sampling))
    if token_ids is not None:
        req.tokens.token_ids.extend(token_ids)
    else:
        req.messages.messages.append(pb.ChatMessage(role=role, content=text or "hello"))
    return req


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):
    """Poll until predicate() is truthy; return its value (AssertionError on timeout)."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def engine_requests(st: ServerThread) -> int:
    """Requests the engine still holds (read on the engine thread)."""
    return st.server.engine_thread.call(lambda e: len(e.requests), timeout=10)


def with_limits(**kw) -> Limits:
    return dataclasses.replace(Limits(), **kw)
