"""Health, reflection, the metrics endpoint, graceful shutdown and restart of the server."""
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agentkv_proto.agentkv.v1 import session_pb2 as pb
from agentkv_proto.agentkv.v1 import session_service_pb2 as api
from grpc_server_fixture import Client, generate_request, running_server, server_config
from runtime.server import ServerThread


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cfg = server_config(tmp_path_factory.mktemp("health") / "data", metrics_port=0)
    with running_server(cfg) as st:
        yield st


def test_health_serving_for_the_server_and_the_service(server):
    ch = grpc.insecure_channel(server.target)
    stub = health_pb2_grpc.HealthStub(ch)
    for name in ("", "agentkv.v1.SessionService"):
        r = stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert r.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as e:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    ch.close()


def test_reflection_lists_the_services(server):
    ch = grpc.insecure_channel(server.target)
    stub = reflection_pb2_grpc.ServerReflectionStub(ch)
    reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"agentkv.v1.SessionService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    ch.close()


def test_binds_to_loopback_by_default(server):
    assert server.server.config.host == "127.0.0.1"


def scrape(server) -> dict[str, float]:
    text = urllib.request.urlopen(
        f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("agentkv:"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_endpoint_reports_turns_ttft_kv_and_sessions(server):
    c = Client(server.target)
    s = c.create(system_prompt="metrics")
    c.generate(s.session_id, "one", max_tokens=3)
    _, r = c.generate(s.session_id, "two", max_tokens=3)
    c.Pause(api.PauseRequest(session_id=s.session_id, tool_name="web_search"))
    m = scrape(server)
    assert m["agentkv:time_to_first_token_seconds_count"] >= 2
    # admission waits: every turn observed, each no longer than its time to first token
    assert m["agentkv:turn_queue_seconds_count"] == m["agentkv:time_to_first_token_seconds_count"]
    assert 0 <= m["agentkv:turn_queue_seconds_sum"] <= m["agentkv:time_to_first_token_seconds_sum"]
    assert m['agentkv:kv_cache_capacity_blocks{tier="gpu"}'] == 256
    assert 0 <= m['agentkv:kv_cache_usage_perc{tier="gpu"}'] <= 1
    assert m["agentkv:prefix_cache_hits_total"] >= r.kv_source.gpu_tokens > 0
    assert m['agentkv:prompt_tokens_by_source_total{source="gpu"}'] >= r.kv_source.gpu_tokens
    assert m['agentkv:sessions{state="paused"}'] >= 1
    assert m['agentkv:session_pauses_total{trigger="client"}'] >= 1
    assert m['agentkv:kv_bytes_moved_total{direction="in",tier="gpu"}'] >= 0
    assert "agentkv:engine_slow_steps_total" in m          # stalls of the step loop, counted
    assert "agentkv:preempted_tokens_total" in m          # work preemptions threw away
    # the engine thread's commands: at least the two turns' submissions, timed
    assert m['agentkv:engine_commands_total{when="between_steps"}'] + \
        m['agentkv:engine_commands_total{when="during_steps"}'] >= 2
    assert m['agentkv:engine_command_seconds_total{when="between_steps"}'] > 0
    c.close()


def test_restart_restores_sessions_and_shutdown_drops_a_running_turn(tmp_path):
    cfg = server_config(tmp_path / "data")
    st = ServerThread(cfg).start()
    c = Client(st.target)
    s = c.create(system_prompt="I persist.")
    _, r = c.generate(s.session_id, "remember this", max_tokens=3)
    paused = c.create()
    c.Pause(api.PauseRequest(session_id=paused.session_id, tool_name="human",
                             expected_seconds=600, human_in_the_loop=True))
    call = c.Generate(generate_request(s.session_id, "long", max_tokens=400, ignore_eos=True))
    assert next(call).HasField("delta")
    st.stop(grace_s=0.2)                  # the running turn cannot finish in time
    with pytest.raises(grpc.RpcError):
        list(call)
    c.close()

    st2 = ServerThread(cfg).start()
    c2 = Client(st2.target)
    got = c2.get(s.session_id)
    assert got.state == pb.SESSION_STATE_WAITING and got.turns == 1
    assert got.context_tokens == r.usage.context_tokens
    hp = c2.get(paused.session_id)
    assert hp.state == pb.SESSION_STATE_PAUSED and hp.paused_tool == "human"
    assert hp.human_in_the_loop
    _, r2 = c2.generate(s.session_id, "what did I say?", max_tokens=3)
    assert r2.rewrite.reused_prefix_tokens == r.usage.context_tokens
    assert r2.session.turns == 2
    c2.close()
    st2.stop()
