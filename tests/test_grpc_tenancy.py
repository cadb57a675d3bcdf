"""API keys and tenants: UNAUTHENTICATED without or with a wrong key, sessions invisible to other
tenants on every RPC, and the open mode (no keys: one tenant "default")."""
import grpc
import pytest

from agentkv_proto.agentkv.v1 import session_pb2 as pb
from agentkv_proto.agentkv.v1 import session_service_pb2 as api
from grpc_server_fixture import Client, generate_request, key_file, running_server, server_config
from runtime.auth import AuthConfigError, Authenticator, parse_key_env


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("tenancy")
    with running_server(server_config(d / "data", api_key_file=key_file(d))) as st:
        yield st


def every_rpc(sid: str):
    """(name, callable(client)) for each RPC that takes a session id, and the list RPC."""
    return [
        ("GetSession", lambda c: c.GetSession(api.GetSessionRequest(session_id=sid))),
        ("Generate", lambda c: list(c.Generate(generate_request(sid, "hi", max_tokens=2)))),
        ("Pause", lambda c: c.Pause(api.PauseRequest(session_id=sid, tool_name="t"))),
        ("Resume", lambda c: c.Resume(api.ResumeRequest(session_id=sid))),
        ("Cancel", lambda c: c.Cancel(api.CancelRequest(session_id=sid))),
        ("CloseSession", lambda c: c.CloseSession(api.CloseSessionRequest(session_id=sid))),
    ]


def test_missing_or_wrong_key_is_unauthenticated(server):
    for key, hint in ((None, "needs an API key"), ("key-wrong", "not valid"),
                      ("key-acm", "not valid"), ("key-acme ", None)):
        c = Client(server.target, key)
        if hint is None:               # surrounding whitespace is not part of a key
            c.create()
            continue
        calls = every_rpc("s_" + "A" * 32) + [
            ("CreateSession", lambda c: c.create()),
            ("ListSessions", lambda c: c.ListSessions(api.ListSessionsRequest()))]
        for name, call in calls:
            with pytest.raises(grpc.RpcError) as e:
                call(c)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
            assert hint in e.value.details()
        c.close()


def test_x_api_key_header_works_too(server):
    ch = grpc.insecure_channel(server.target)
    from agentkv_proto.agentkv.v1 import session_service_pb2_grpc as g
    s = g.SessionServiceStub(ch).CreateSession(api.CreateSessionRequest(),
                                               metadata=(("x-api-key", "key-globex"),)).session
    assert s.session_id
    ch.close()


def test_another_tenants_session_is_not_found_on_every_rpc(server):
    acme, globex = Client(server.target, "key-acme"), Client(server.target, "key-globex")
    s = acme.create(system_prompt="acme only")
    acme.generate(s.session_id, "secret plans", max_tokens=2)
    for name, call in every_rpc(s.session_id):
        with pytest.raises(grpc.RpcError) as e:
            call(globex)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND, name
        assert s.session_id in e.value.details()
    listed = globex.ListSessions(api.ListSessionsRequest(page_size=500)).sessions
    assert s.session_id not in [x.session_id for x in listed]
    # untouched for its owner
    got = acme.get(s.session_id)
    assert got.state == pb.SESSION_STATE_WAITING and got.turns == 1
    assert s.session_id in [x.session_id for x in
                            acme.ListSessions(api.ListSessionsRequest(page_size=500)).sessions]
    acme.close()
    globex.close()


def test_open_server_serves_everyone_as_tenant_default(tmp_path, monkeypatch):
    monkeypatch.delenv("AGENTKV_API_KEYS", raising=False)
    with running_server(server_config(tmp_path / "data", api_keys_from_env=True)) as st:
        assert st.server.auth.is_open
        a, b = Client(st.target), Client(st.target, "any-key-at-all")
        s = a.create()
        assert b.get(s.session_id).session_id == s.session_id
        assert st.server.manager.get("default", s.session_id).tenant == "default"
        a.close()
        b.close()


def test_key_sources_file_and_environment(tmp_path):
    toml = tmp_path / "keys.toml"
    toml.write_text('[[keys]]\nkey = "k1"\ntenant = "t1"\n')
    auth = Authenticator.from_sources(str(toml), environ={"AGENTKV_API_KEYS": "k2:t2, k3:t3"})
    assert [auth.tenant_for_key(k) for k in ("k1", "k2", "k3")] == ["t1", "t2", "t3"]
    assert auth.tenant_for([("authorization", "Bearer k2")]) == "t2"
    assert auth.tenants == ["t1", "t2", "t3"]
    with pytest.raises(AuthConfigError, match="key1:tenant1"):
        parse_key_env("justakey")
    bad = tmp_path / "bad.json"
    bad.write_text('{"keys": [1, 2]}')
    with pytest.raises(AuthConfigError, match="entry 0"):
        Authenticator.from_sources(str(bad), environ={})


def test_keys_from_the_environment_protect_the_server(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTKV_API_KEYS", "env-key:envco")
    with running_server(server_config(tmp_path / "data", api_keys_from_env=True)) as st:
        with pytest.raises(grpc.RpcError) as e:
            Client(st.target).create()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        c = Client(st.target, "env-key")
        s = c.create()
        assert st.server.manager.get("envco", s.session_id).tenant == "envco"
        c.close()
