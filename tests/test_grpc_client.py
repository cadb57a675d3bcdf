"""runtime.client against a real server: sessions as context managers, streaming, tool pauses."""
import pytest

from grpc_server_fixture import key_file, running_server, server_config
from runtime.client import AgentKVClient, AgentKVError, Delta, TurnResult


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("client")
    with running_server(server_config(d / "data", api_key_file=key_file(d))) as st:
        yield st


@pytest.fixture
def client(server):
    with AgentKVClient(server.target, api_key="key-acme", timeout=60) as c:
        c.wait_ready()
        yield c


def test_session_context_manager_streams_turns_and_closes(client):
    tools = [{"type": "function", "function": {"name": "web_search", "parameters": {}}}]
    with client.session(system_prompt="You search.", tools=tools, max_tokens=5) as s:
        events = list(s.generate(messages=[{"role": "user", "content": "find agentkv"}]))
        assert all(isinstance(e, Delta) for e in events[:-1]) and events[:-1]
        r = events[-1]
        assert isinstance(r, TurnResult) and r.session.state == "waiting"
        assert r.text == "".join(e.text for e in events[:-1])
        assert r.token_ids == [t for e in events[:-1] for t in e.token_ids]
        assert r.completion_tokens == len(r.token_ids) <= 5
        assert 0.0 < r.queue_s < r.ttft_s       # admission came before the first token
        assert set(r.queue_reasons) <= {"behind", "slot", "loading", "room"}
        assert sum(r.queue_reasons.values()) == pytest.approx(r.queue_s, abs=1e-6)
        with s.tool("web_search", expected_s=2.0):
            assert client.get_session(s.id).state == "paused"
            assert s.info.paused_tool == "web_search"
        assert s.info.state == "waiting"
        r2 = s.run([{"role": "tool", "content": "agentkv keeps KV across pauses",
                     "name": "web_search"}], max_tokens=3)
        assert r2.reused_tokens == r2.kv_source["gpu"] > 0 and not r2.rewritten
        sid = s.id
    assert client.get_session(sid).state == "closed"


def test_token_input_attach_and_listing(client):
    s = client.session()
    r = s.run(token_ids=[11, 12, 13], max_tokens=2)
    assert r.prompt_tokens == 3
    again = client.attach(s.id)
    assert again.info.turns == 1 and again.info.context_tokens == r.context_tokens
    assert s.id in [x.session_id for x in client.list_sessions(page_size=1)]
    assert s.id not in [x.session_id for x in client.list_sessions(state="paused")]
    s.close()


def test_errors_carry_the_status_and_the_message(client, server):
    with pytest.raises(AgentKVError) as e:
        client.get_session("s_" + "Z" * 32)
    assert e.value.code == "NOT_FOUND"
    with AgentKVClient(server.target, api_key="wrong") as other:
        with pytest.raises(AgentKVError) as e:
            other.session()
        assert e.value.code == "UNAUTHENTICATED" and "not valid" in e.value.message
    with client.session() as s:
        with pytest.raises(AgentKVError) as e:
            s.resume()
        assert e.value.code == "FAILED_PRECONDITION"


def test_stopping_early_cancels_the_turn(client, server):
    from grpc_server_fixture import engine_requests, wait_for
    with client.session() as s:
        gen = s.generate(messages=[{"role": "user", "content": "go on"}], max_tokens=300,
                         ignore_eos=True)
        assert isinstance(next(gen), Delta)
        gen.close()                                   # the caller stops reading
        wait_for(lambda: client.get_session(s.id).state == "waiting")
        wait_for(lambda: engine_requests(server) == 0)
        assert client.get_session(s.id).turns == 0
