"""A turn that ends in a tool call pauses its session by itself, under the tool's name.

The server runs the scripted model (tests/scripted_model.py): the tiny model after weight surgery,
whose greedy assistant turn is always `<tool_call>{"name": "current_time"}</tool_call><|im_end|>`.
"""
import json

import pytest

from agentkv_proto.agentkv.v1 import session_pb2 as pb
from agentkv_proto.agentkv.v1 import session_service_pb2 as api
from grpc_server_fixture import Client, running_server, server_config
from scripted_model import SCRIPT, TOOL_NAME, scripted_model_dir

TOOL = {"type": "function", "function": {"name": TOOL_NAME, "description": "the time now",
                                         "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = scripted_model_dir()
    cfg = server_config(tmp_path_factory.mktemp("autopause") / "data", model=str(model))
    with running_server(cfg) as st:
        yield st


@pytest.fixture
def client(server):
    c = Client(server.target)
    yield c
    c.close()


def test_tool_call_turn_pauses_the_session_on_the_tool(client):
    s = client.create(system_prompt="You can tell the time.", tools_json=[json.dumps(TOOL)])
    deltas, r = client.generate(s.session_id, "What time is it?", max_tokens=64)
    assert "".join(d.text for d in deltas) == SCRIPT.replace("<|im_end|>", "")
    assert r.finish_reason == pb.FINISH_REASON_TOOL_CALL
    assert [(c.name, json.loads(c.arguments_json)) for c in r.tool_calls] == [(TOOL_NAME, {})]
    assert r.tool_calls[0].id and r.content == ""
    assert r.session.state == pb.SESSION_STATE_PAUSED and r.session.paused_tool == TOOL_NAME
    got = client.get(s.session_id)
    assert got.state == pb.SESSION_STATE_PAUSED and got.paused_tool == TOOL_NAME

    # the tool's result resumes the session and reuses the whole log (no re-render rewrite)
    tool_msg = pb.ChatMessage(role="tool", content="12:34", name=TOOL_NAME,
                              tool_call_id=r.tool_calls[0].id)
    req = api.GenerateRequest(session_id=s.session_id, messages=api.MessagesInput(
        messages=[tool_msg]), sampling=pb.SamplingParams(max_tokens=64))
    r2 = [e.result for e in client.Generate(req) if e.HasField("result")][0]
    assert not r2.rewrite.rewritten
    assert r2.rewrite.reused_prefix_tokens == r.usage.context_tokens
    assert r2.kv_source.gpu_tokens == (r.usage.context_tokens - 1) // 16 * 16
    assert r2.finish_reason == pb.FINISH_REASON_TOOL_CALL      # this model always calls it
    assert r2.session.state == pb.SESSION_STATE_PAUSED and r2.session.turns == 2

    # an explicit Resume ends the pause without a turn
    res = client.Resume(api.ResumeRequest(session_id=s.session_id)).session
    assert res.state == pb.SESSION_STATE_WAITING and res.paused_tool == ""


def test_a_turn_cut_inside_its_tool_call_does_not_pause(client):
    s = client.create(tools_json=[json.dumps(TOOL)])
    deltas, r = client.generate(s.session_id, "time?", max_tokens=3)
    assert r.finish_reason == pb.FINISH_REASON_LENGTH and not r.tool_calls
    assert r.session.state == pb.SESSION_STATE_WAITING


def test_auto_pauses_are_counted_by_trigger(client, server):
    reg = server.server.metrics.registry
    before = reg.get_sample_value("agentkv:session_pauses_total", {"trigger": "tool_call"}) or 0
    s = client.create()
    client.generate(s.session_id, "go", max_tokens=64)
    client.Resume(api.ResumeRequest(session_id=s.session_id))
    client.Pause(api.PauseRequest(session_id=s.session_id, tool_name="human",
                                  human_in_the_loop=True))
    assert reg.get_sample_value("agentkv:session_pauses_total", {"trigger": "tool_call"}) \
        == before + 1
    assert reg.get_sample_value("agentkv:session_pauses_total", {"trigger": "client"}) >= 1
    assert reg.get_sample_value("agentkv:session_resumes_total", {"trigger": "client"}) >= 1
    assert reg.get_sample_value("agentkv:turns_total", {"finish_reason": "tool_call"}) >= 1
