"""A client built from server reflection alone drives a whole session.

No project module and no generated code of the project is imported here: the server runs as a
subprocess (`agentkv serve`), and every message class comes from the descriptors the server's
reflection service sends (`ProtoReflectionDescriptorDatabase` -> `DescriptorPool` ->
`message_factory.GetMessageClass`), called through generic `unary_unary` / `unary_stream`.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import \
    ProtoReflectionDescriptorDatabase

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "agentkv.v1.SessionService"


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    data = tmp_path_factory.mktemp("reflection") / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "--log-level", "WARNING", "serve", "--model", "tiny",
         "--device", "cpu", "--num-gpu-blocks", "128", "--port", "0", "--data-dir", str(data)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != "AGENTKV_API_KEYS"})
    try:
        line = proc.stdout.readline()
        assert line.startswith("agentkv serving on "), line
        yield line.split()[-1]
    finally:
        proc.terminate()
        assert proc.wait(60) == 0          # SIGTERM: a graceful stop, exit status 0


class ReflectedService:
    """Methods of one service, with message classes made from reflected descriptors."""

    def __init__(self, channel: grpc.Channel, name: str):
        self.pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        self.service = self.pool.FindServiceByName(name)
        self.channel = channel

    def message(self, full_name: str, **fields):
        cls = message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))
        return json_format.ParseDict(fields, cls())

    def call(self, method: str, fields: dict, timeout: float = 60.0):
        m = self.service.methods_by_name[method]
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        path = f"/{self.service.full_name}/{method}"
        make = self.channel.unary_stream if m.server_streaming else self.channel.unary_unary
        rpc = make(path, request_serializer=req_cls.SerializeToString,
                   response_deserializer=resp_cls.FromString)
        result = rpc(json_format.ParseDict(fields, req_cls()), timeout=timeout)
        if m.server_streaming:
            return [json_format.MessageToDict(r) for r in result]
        return json_format.MessageToDict(result)


def test_reflection_alone_is_enough_for_a_session(target):
    with grpc.insecure_channel(target) as ch:
        svc = ReflectedService(ch, SERVICE)
        assert set(svc.service.methods_by_name) == {
            "CreateSession", "Generate", "Pause", "Resume", "GetSession", "ListSessions",
            "CloseSession", "Cancel"}
        tool = {"type": "function", "function": {"name": "calculator", "parameters": {}}}
        s = svc.call("CreateSession", {"systemPrompt": "You compute.",
                                       "toolsJson": [json.dumps(tool)]})["session"]
        sid = s["sessionId"]
        assert s["state"] == "SESSION_STATE_WAITING"

        turns = []
        for msg in ({"role": "user", "content": "What is 6*7?"},
                    {"role": "tool", "content": "42", "name": "calculator"}):
            events = svc.call("Generate", {"sessionId": sid, "messages": {"messages": [msg]},
                                           "sampling": {"maxTokens": 3}})
            assert all("delta" in e for e in events[:-1]) and "result" in events[-1]
            turns.append(events[-1]["result"])
        assert turns[0]["finishReason"] in ("FINISH_REASON_STOP", "FINISH_REASON_LENGTH")
        assert int(turns[1]["kvSource"]["gpuTokens"]) > 0      # the first turn's blocks reused

        p = svc.call("Pause", {"sessionId": sid, "toolName": "web_search",
                               "expectedSeconds": 3})["session"]
        assert p["state"] == "SESSION_STATE_PAUSED" and p["pausedTool"] == "web_search"
        assert svc.call("Resume", {"sessionId": sid})["session"]["state"] == \
            "SESSION_STATE_WAITING"
        assert svc.call("Cancel", {"sessionId": sid}).get("cancelled", False) is False
        got = svc.call("GetSession", {"sessionId": sid})["session"]
        assert got["turns"] == 2
        listed = svc.call("ListSessions", {"pageSize": 10})["sessions"]
        assert sid in [x["sessionId"] for x in listed]
        closed = svc.call("CloseSession", {"sessionId": sid})["session"]
        assert closed["state"] == "SESSION_STATE_CLOSED"

        with pytest.raises(grpc.RpcError) as e:
            svc.call("GetSession", {"sessionId": "s_" + "B" * 32})
        assert e.value.code() == grpc.StatusCode.NOT_FOUND

        health = ReflectedService(ch, "grpc.health.v1.Health")
        assert health.call("Check", {"service": SERVICE})["status"] == "SERVING"
