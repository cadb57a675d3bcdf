"""The session RPCs against a real server: create, stream turns, pause/resume, get, list, close."""
import json

import grpc
import pytest

from agentkv_proto.agentkv.v1 import session_pb2 as pb
from agentkv_proto.agentkv.v1 import session_service_pb2 as api
from grpc_server_fixture import Client, key_file, running_server, server_config

TOOLS = [{"type": "function", "function": {"name": "calculator", "description": "arithmetic",
                                           "parameters": {"type": "object", "properties": {
                                               "expression": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("sessions")
    with running_server(server_config(d / "data", api_key_file=key_file(d))) as st:
        yield st


@pytest.fixture
def client(server):
    c = Client(server.target, "key-acme")
    yield c
    c.close()


def test_create_session_reports_its_settings(client):
    s = client.create(system_prompt="You are terse.", tools_json=[json.dumps(t) for t in TOOLS],
                      sampling=pb.SamplingParams(max_tokens=7, temperature=0.0))
    assert s.session_id.startswith("s_") and s.model == "tiny"
    assert s.state == pb.SESSION_STATE_WAITING and s.context_tokens == 0 and s.turns == 0
    assert [json.loads(t) for t in s.tools_json] == TOOLS
    assert s.sampling.max_tokens == 7
    got = client.get(s.session_id)
    assert got.session_id == s.session_id and got.create_time == s.create_time


def test_turns_stream_deltas_and_reuse_the_log_through_the_prefix_cache(client, server):
    tok = server.server.engine_thread.engine.tokenizer
    s = client.create(system_prompt="You are a careful agent with a calculator.",
                      tools_json=[json.dumps(t) for t in TOOLS])
    deltas, r1 = client.generate(s.session_id, "What is 17 * 23? Use the calculator.",
                                 max_tokens=6)
    out1 = [t for d in deltas for t in d.token_ids]
    assert len(out1) == r1.usage.completion_tokens and 1 <= len(out1) <= 6
    assert "".join(d.text for d in deltas) == tok.decode(out1, skip_special_tokens=True)
    assert r1.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert r1.time_to_first_token_seconds > 0
    # first turn: nothing cached yet (a fresh system prompt), everything computed
    assert r1.kv_source.recomputed_tokens == r1.usage.prompt_tokens
    assert r1.usage.input_tokens == r1.usage.prompt_tokens
    assert r1.usage.context_tokens == r1.usage.prompt_tokens + len(out1)
    assert r1.session.state == pb.SESSION_STATE_WAITING and r1.session.turns == 1

    _, r2 = client.generate(s.session_id, "391", role="tool", max_tokens=5)
    log1 = r1.usage.context_tokens
    assert not r2.rewrite.rewritten and r2.rewrite.reused_prefix_tokens == log1
    assert r2.usage.prompt_tokens == log1 + r2.usage.input_tokens
    # the first turn's computed full blocks come from the GPU prefix cache (its last generated
    # token was never fed to the model, so the block holding it is recomputed)
    assert r2.kv_source.gpu_tokens == (log1 - 1) // 16 * 16 > 0
    assert r2.kv_source.gpu_tokens + r2.kv_source.recomputed_tokens == r2.usage.prompt_tokens
    got = client.get(s.session_id)
    assert got.turns == 2 and got.context_tokens == r2.usage.context_tokens
    assert 0 < got.kv_residency.gpu_tokens <= got.context_tokens



def test_residency_is_the_same_read_on_the_loop_or_on_the_pool(client, monkeypatch):
    """GetSession reads short logs' residency on the event loop, longer ones on the pool: same
    answer."""
    import runtime.service as service
    s = client.create(system_prompt="You are a careful agent with a calculator.")
    _, r = client.generate(s.session_id, "What is 17 * 23? " * 8, max_tokens=4)
    assert r.usage.context_tokens * 2 <= service.INLINE_RESIDENCY_WORK
    on_loop = client.get(s.session_id).kv_residency
    monkeypatch.setattr(service, "INLINE_RESIDENCY_WORK", 0)
    on_pool = client.get(s.session_id).kv_residency
    assert on_loop == on_pool
    assert on_pool.gpu_tokens == (r.usage.context_tokens - 1) // 16 * 16 > 0

def test_raw_token_input_is_appended_as_given(client):
    s = client.create()
    _, r1 = client.generate(s.session_id, token_ids=[5, 6, 7, 8, 9], max_tokens=3)
    assert r1.usage.prompt_tokens == 5 and r1.usage.input_tokens == 5
    _, r2 = client.generate(s.session_id, token_ids=list(range(100, 130)), max_tokens=3)
    assert r2.usage.prompt_tokens == r1.usage.context_tokens + 30
    assert r2.rewrite.reused_prefix_tokens == r1.usage.context_tokens


def test_pause_resume_and_generate_on_a_paused_session(client):
    s = client.create()
    client.generate(s.session_id, "hi", max_tokens=2)
    p = client.Pause(api.PauseRequest(session_id=s.session_id, tool_name="web_search",
                                      expected_seconds=12.5)).session
    assert p.state == pb.SESSION_STATE_PAUSED and p.paused_tool == "web_search"
    assert p.pause_expected_seconds == 12.5 and not p.human_in_the_loop
    r = client.Resume(api.ResumeRequest(session_id=s.session_id,
                                        input_expected_in_seconds=0.5)).session
    assert r.state == pb.SESSION_STATE_WAITING and r.paused_tool == ""
    h = client.Pause(api.PauseRequest(session_id=s.session_id, human_in_the_loop=True)).session
    assert h.paused_tool == "human" and h.human_in_the_loop
    _, res = client.generate(s.session_id, "the human said yes", role="user", max_tokens=2)
    assert res.session.state == pb.SESSION_STATE_WAITING and res.session.turns == 2


def test_illegal_transition_is_failed_precondition(client):
    s = client.create()
    with pytest.raises(grpc.RpcError) as e:
        client.Resume(api.ResumeRequest(session_id=s.session_id))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "WAITING" in e.value.details() and "cannot resume" in e.value.details()


def test_list_sessions_pages_through_every_session_once(server):
    c = Client(server.target, "key-globex")      # a tenant of its own: a known set
    made = [c.create().session_id for _ in range(5)]
    seen, token = [], ""
    while True:
        page = c.ListSessions(api.ListSessionsRequest(page_size=2, page_token=token))
        assert len(page.sessions) <= 2
        seen += [x.session_id for x in page.sessions]
        token = page.next_page_token
        if not token:
            break
    assert seen == made
    c.Pause(api.PauseRequest(session_id=made[1], tool_name="t"))
    paused = c.ListSessions(api.ListSessionsRequest(state=pb.SESSION_STATE_PAUSED)).sessions
    assert [x.session_id for x in paused] == [made[1]]
    with pytest.raises(grpc.RpcError) as e:
        c.ListSessions(api.ListSessionsRequest(page_token="not-a-token"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for sid in made:
        c.CloseSession(api.CloseSessionRequest(session_id=sid))
    c.close()


def test_close_session_then_every_call_is_not_found_or_closed(client):
    s = client.create()
    closed = client.CloseSession(api.CloseSessionRequest(session_id=s.session_id)).session
    assert closed.state == pb.SESSION_STATE_CLOSED
    with pytest.raises(grpc.RpcError) as e:
        client.generate(s.session_id, "still there?")
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as e:
        client.CloseSession(api.CloseSessionRequest(session_id=s.session_id))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("make, field", [
    (lambda sid: api.GenerateRequest(session_id=sid, messages=api.MessagesInput(
        messages=[pb.ChatMessage(role="robot", content="x")])), "role"),
    (lambda sid: api.GenerateRequest(session_id=sid, tokens=api.TokenInput(token_ids=[10**6])),
     "vocabulary"),
    (lambda sid: api.GenerateRequest(session_id=sid, tokens=api.TokenInput()), "token_ids"),
    (lambda sid: api.GenerateRequest(session_id=sid, messages=api.MessagesInput(messages=[
        pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(name="f", arguments_json="[1]")])
    ])), "arguments_json"),
    (lambda sid: api.GenerateRequest(session_id=sid, sampling=pb.SamplingParams(top_p=2.0),
                                     messages=api.MessagesInput(messages=[
                                         pb.ChatMessage(role="user", content="x")])), "top_p"),
    (lambda sid: api.GenerateRequest(session_id="nope"), "malformed"),
])
def test_bad_generate_input_is_invalid_argument_and_leaves_the_session_usable(client, make,
                                                                             field):
    s = client.create()
    with pytest.raises(grpc.RpcError) as e:
        list(client.Generate(make(s.session_id)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in e.value.details()
    assert client.get(s.session_id).state == pb.SESSION_STATE_WAITING
    _, r = client.generate(s.session_id, "fine now", max_tokens=2)
    assert r.session.turns == 1


def test_bad_create_input_is_invalid_argument(client):
    for kw, field in ((dict(model="llama-70b"), "model"), (dict(tools_json=["{"]), "tools_json"),
                      (dict(messages=[pb.ChatMessage(role="x")]), "role")):
        with pytest.raises(grpc.RpcError) as e:
            client.create(**kw)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in e.value.details()


def test_unknown_session_is_not_found(client):
    missing = "s_" + "A" * 32
    with pytest.raises(grpc.RpcError) as e:
        client.get(missing)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_chat_re_render_that_changes_the_log_is_reported_as_a_rewrite(client, server):
    """Raw-token turns are not chat messages: a later message turn renders the chat from the
    messages, keeps the longest common prefix of the log and recomputes the rest."""
    reg = server.server.metrics.registry
    before = reg.get_sample_value("agentkv:chat_rewrites_total")
    s = client.create()
    _, r1 = client.generate(s.session_id, token_ids=[40, 41, 42, 43] * 8, max_tokens=3)
    _, r2 = client.generate(s.session_id, "now in chat form", max_tokens=3)
    assert r2.rewrite.rewritten
    assert r2.rewrite.reused_prefix_tokens + r2.rewrite.dropped_tokens == r1.usage.context_tokens
    assert r2.usage.prompt_tokens == r2.rewrite.reused_prefix_tokens + r2.usage.input_tokens
    assert r2.kv_source.gpu_tokens <= r2.rewrite.reused_prefix_tokens
    assert reg.get_sample_value("agentkv:chat_rewrites_total") == before + 1
    # the log was cut and regrown: it is now the chat rendering plus this turn's output
    assert client.get(s.session_id).context_tokens == r2.usage.context_tokens


def test_each_unary_call_is_timed_by_method(client, server):
    """agentkv:rpc_duration_seconds{method} counts every unary call, answered or refused."""
    reg = server.server.metrics.registry

    def count(method):
        return reg.get_sample_value("agentkv:rpc_duration_seconds_count", {"method": method}) or 0
    before = {m: count(m) for m in ("CreateSession", "GetSession")}
    s = client.create()
    for _ in range(3):
        client.get(s.session_id)
    with pytest.raises(grpc.RpcError):
        client.get("s_no_such_session")
    assert count("CreateSession") == before["CreateSession"] + 1
    assert count("GetSession") == before["GetSession"] + 4
    assert reg.get_sample_value("agentkv:rpc_duration_seconds_sum", {"method": "GetSession"}) > 0
    assert reg.get_sample_value("agentkv:rpc_duration_seconds_bucket",
                                {"method": "GetSession", "le": "+Inf"}) == count("GetSession")
