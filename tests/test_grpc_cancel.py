"""Stopping a turn: Cancel, a client that goes away, deadlines, closing a session mid-turn.

Each case stops a long turn (ignore_eos, many tokens) after its first token and checks that the
engine dropped the request, the session kept its state from before the turn, and it still works.
"""
import threading
import time

import grpc
import pytest

from agentkv_proto.agentkv.v1 import session_pb2 as pb
from agentkv_proto.agentkv.v1 import session_service_pb2 as api
from grpc_server_fixture import (Client, engine_requests, generate_request, running_server,
                                 server_config, wait_for)

LONG = 400        # tokens a long turn asks for; every test stops it long before


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(server_config(tmp_path_factory.mktemp("cancel") / "data")) as st:
        yield st


@pytest.fixture
def client(server):
    c = Client(server.target)
    yield c
    c.close()


def long_turn(client, sid, **kw):
    return client.Generate(generate_request(sid, "Tell me a long story.", max_tokens=LONG,
                                            ignore_eos=True), **kw)


def session_with_one_turn(client):
    s = client.create(system_prompt="You tell stories.")
    _, r = client.generate(s.session_id, "hello", max_tokens=3)
    return s.session_id, r.usage.context_tokens


def test_cancel_rpc_ends_the_stream_with_cancelled_and_keeps_the_session(client, server):
    sid, ctx = session_with_one_turn(client)
    call = long_turn(client, sid)
    first = next(call)
    assert first.HasField("delta")
    res = client.Cancel(api.CancelRequest(session_id=sid))
    assert res.cancelled
    rest = list(call)
    assert rest[-1].HasField("result")
    result = rest[-1].result
    assert result.finish_reason == pb.FINISH_REASON_CANCELLED
    assert 1 <= result.usage.completion_tokens < LONG
    assert result.session.state == pb.SESSION_STATE_WAITING
    assert result.session.turns == 1 and result.session.context_tokens == ctx
    assert engine_requests(server) == 0
    assert not client.Cancel(api.CancelRequest(session_id=sid)).cancelled   # nothing running
    _, r = client.generate(sid, "shorter please", max_tokens=2)
    assert r.session.turns == 2
    # the cancelled turn left nothing in the log: this turn reuses the first turn's blocks
    assert r.rewrite.reused_prefix_tokens == ctx and not r.rewrite.rewritten


def test_client_disconnect_cancels_the_turn_and_keeps_the_session(client, server):
    sid, ctx = session_with_one_turn(client)
    call = long_turn(client, sid)
    assert next(call).HasField("delta")
    assert client.get(sid).state == pb.SESSION_STATE_ACTIVE
    call.cancel()                                   # the client goes away mid-stream
    with pytest.raises(grpc.RpcError) as e:
        list(call)
    assert e.value.code() == grpc.StatusCode.CANCELLED
    s = wait_for(lambda: (x := client.get(sid)).state == pb.SESSION_STATE_WAITING and x)
    assert s.turns == 1 and s.context_tokens == ctx
    wait_for(lambda: engine_requests(server) == 0)
    _, r = client.generate(sid, "again", max_tokens=2)
    assert r.session.turns == 2


def test_deadline_exceeded_drops_the_turn_and_the_session_stays_usable(client, server):
    sid, ctx = session_with_one_turn(client)
    with pytest.raises(grpc.RpcError) as e:
        list(long_turn(client, sid, timeout=0.3))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    s = wait_for(lambda: (x := client.get(sid)).state == pb.SESSION_STATE_WAITING and x)
    assert s.turns == 1 and s.context_tokens == ctx
    wait_for(lambda: engine_requests(server) == 0)
    _, r = client.generate(sid, "quick one", max_tokens=2, timeout=60)
    assert r.session.turns == 2


def test_close_session_during_a_turn_stops_it(client, server):
    sid, _ = session_with_one_turn(client)
    call = long_turn(client, sid)
    assert next(call).HasField("delta")
    closed = client.CloseSession(api.CloseSessionRequest(session_id=sid)).session
    assert closed.state == pb.SESSION_STATE_CLOSED
    result = list(call)[-1].result
    assert result.finish_reason == pb.FINISH_REASON_CANCELLED
    assert result.session.state == pb.SESSION_STATE_CLOSED
    wait_for(lambda: engine_requests(server) == 0)


def test_a_second_turn_while_one_runs_is_failed_precondition(client, server):
    sid, _ = session_with_one_turn(client)
    call = long_turn(client, sid)
    assert next(call).HasField("delta")
    with pytest.raises(grpc.RpcError) as e:
        client.generate(sid, "me too")
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ACTIVE" in e.value.details()
    client.Cancel(api.CancelRequest(session_id=sid))
    assert list(call)[-1].result.finish_reason == pb.FINISH_REASON_CANCELLED


def test_turns_of_different_sessions_run_concurrently(client):
    sids = [session_with_one_turn(client)[0] for _ in range(3)]
    results = {}

    def run(sid):
        results[sid] = client.generate(sid, "go", max_tokens=6, ignore_eos=True)[1]
    threads = [threading.Thread(target=run, args=(sid,)) for sid in sids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == sorted(sids)
    assert all(r.usage.completion_tokens == 6 and r.session.turns == 2 for r in results.values())


@pytest.mark.parametrize("deadline", [0.001, 0.005, 0.02, 0.05])
def test_tiny_deadlines_never_leave_a_session_active(client, server, deadline):
    """However early the deadline hits (before, during or after the turn begins), the session
    ends up WAITING with its log unchanged, and the engine holds nothing."""
    sid, ctx = session_with_one_turn(client)
    with pytest.raises(grpc.RpcError) as e:
        list(long_turn(client, sid, timeout=deadline))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.5)                 # a call the server saw late has begun and ended by now
    s = wait_for(lambda: (x := client.get(sid)).state == pb.SESSION_STATE_WAITING and x)
    assert s.turns == 1 and s.context_tokens == ctx
    wait_for(lambda: engine_requests(server) == 0)
