"""Each limit answers with its status and a message that names it; the session stays usable."""
import json

import grpc
import pytest

from agentkv_proto.agentkv.v1 import session_pb2 as pb
from agentkv_proto.agentkv.v1 import session_service_pb2 as api
from grpc_server_fixture import (Client, generate_request, key_file, running_server,
                                 server_config, with_limits)

LIMITS = with_limits(max_sessions_per_tenant=3, max_concurrent_turns=1, max_prompt_tokens=200,
                     max_output_tokens=300, max_message_bytes=4000, max_tools=2)
TENANTS = {f"key-{t}": t for t in ("sessions", "turns", "prompt", "output", "bytes", "tools")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("limits")
    cfg = server_config(d / "data", api_key_file=key_file(d, TENANTS), limits=LIMITS)
    with running_server(cfg) as st:
        yield st


def client_for(server, tenant):
    return Client(server.target, f"key-{tenant}")


def refused(call, code, limit):
    with pytest.raises(grpc.RpcError) as e:
        call()
    assert e.value.code() == code, e.value.details()
    assert limit in e.value.details()
    return e.value.details()


def test_sessions_per_tenant(server):
    c = client_for(server, "sessions")
    made = [c.create().session_id for _ in range(3)]
    msg = refused(c.create, grpc.StatusCode.RESOURCE_EXHAUSTED, "max_sessions_per_tenant=3")
    assert "sessions" in msg                      # the tenant it counted
    client_for(server, "tools").create()           # other tenants have their own count
    c.CloseSession(api.CloseSessionRequest(session_id=made[0]))
    assert c.create().session_id


def test_concurrent_turns_per_tenant(server):
    c = client_for(server, "turns")
    a, b = c.create().session_id, c.create().session_id
    call = c.Generate(generate_request(a, "a long one", max_tokens=300, ignore_eos=True))
    assert next(call).HasField("delta")
    refused(lambda: c.generate(b, "me too"), grpc.StatusCode.RESOURCE_EXHAUSTED,
            "max_concurrent_turns=1")
    c.Cancel(api.CancelRequest(session_id=a))
    assert list(call)[-1].result.finish_reason == pb.FINISH_REASON_CANCELLED
    _, r = c.generate(b, "now it is my turn", max_tokens=2)
    assert r.session.turns == 1


def test_prompt_tokens(server):
    c = client_for(server, "prompt")
    sid = c.create().session_id
    long_text = " ".join(f"word{i}" for i in range(300))
    refused(lambda: c.generate(sid, long_text), grpc.StatusCode.INVALID_ARGUMENT,
            "max_prompt_tokens=200")
    assert c.get(sid).state == pb.SESSION_STATE_WAITING and c.get(sid).context_tokens == 0
    _, r = c.generate(sid, "short", max_tokens=2)
    assert r.session.turns == 1


def test_output_tokens(server):
    c = client_for(server, "output")
    sid = c.create().session_id
    refused(lambda: c.generate(sid, "hi", max_tokens=301), grpc.StatusCode.INVALID_ARGUMENT,
            "max_output_tokens=300")
    refused(lambda: c.create(sampling=pb.SamplingParams(max_tokens=1000)),
            grpc.StatusCode.INVALID_ARGUMENT, "max_output_tokens=300")
    call = c.Generate(generate_request(sid, "hi", max_tokens=300, ignore_eos=True))
    assert next(call).HasField("delta")             # exactly at the limit: accepted
    c.Cancel(api.CancelRequest(session_id=sid))
    assert list(call)[-1].result.finish_reason == pb.FINISH_REASON_CANCELLED


def test_message_bytes(server):
    c = client_for(server, "bytes")
    sid = c.create().session_id
    refused(lambda: c.generate(sid, "x" * 5000), grpc.StatusCode.RESOURCE_EXHAUSTED,
            "max_message_bytes=4000")
    refused(lambda: c.create(system_prompt="y" * 5000), grpc.StatusCode.RESOURCE_EXHAUSTED,
            "max_message_bytes=4000")
    with pytest.raises(grpc.RpcError) as e:     # far over: gRPC refuses it before it is read
        c.generate(sid, "z" * 200_000)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert c.get(sid).state == pb.SESSION_STATE_WAITING


def test_tools(server):
    c = client_for(server, "tools")
    tool = json.dumps({"type": "function", "function": {"name": "f", "parameters": {}}})
    refused(lambda: c.create(tools_json=[tool] * 3), grpc.StatusCode.INVALID_ARGUMENT,
            "max_tools=2")
    assert c.create(tools_json=[tool] * 2).session_id
