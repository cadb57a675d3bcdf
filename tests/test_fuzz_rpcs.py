"""Every RPC with generated messages (built from the protobuf descriptors, so new fields are
fuzzed too): each call ends with OK or a proper error status (never UNKNOWN or INTERNAL), the
server keeps serving (health SERVING, a normal turn works), and no session changes unless the
call was accepted (the session as the manager and as LMDB hold it, before and after each call)."""
from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentkv_proto.agentkv.v1 import session_service_pb2 as api
from fuzz_messages import messages
from grpc_server_fixture import (Client, generate_request, key_file, running_server,
                                 server_config, with_limits)
from sessions.errors import SessionNotFound

KEYS = {"key-acme": "acme", "key-globex": "globex"}
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
           grpc.StatusCode.UNAUTHENTICATED}
SERVICE = api.DESCRIPTOR.services_by_name["SessionService"]
METHODS = {m.name: m for m in SERVICE.methods}
# placeholders the session_id strategy draws; replaced by the real ids of the moment
OWN, OTHER, CLOSED, MISSING = "@own", "@other", "@closed", "@missing"
SESSION_IDS = st.sampled_from([OWN, OWN, OWN, OTHER, CLOSED, MISSING])
KEY_CHOICES = st.sampled_from(["key-acme"] * 6 + ["key-globex", None, "key-wrong"])
SEEN: dict[str, Counter] = defaultdict(Counter)     # method -> status name -> calls
SETTINGS = settings(max_examples=40, deadline=None, derandomize=False,
                    suppress_health_check=list(HealthCheck))


class World:
    """The server and the sessions the fuzzed calls aim at."""

    def __init__(self, st_):
        self.st = st_
        self.acme = Client(st_.target, "key-acme")
        self.globex = Client(st_.target, "key-globex")
        self.other = self.globex.create(system_prompt="globex only").session_id
        self.globex.generate(self.other, "globex's turn", max_tokens=2)
        closed = self.acme.create().session_id
        self.acme.CloseSession(api.CloseSessionRequest(session_id=closed))
        self.closed = closed
        self.own = self.acme.create(system_prompt="You are terse.").session_id
        self.acme.generate(self.own, "first", max_tokens=2)

    def renew_closed(self) -> None:
        """Sessions a valid call closed are replaced, so the next calls aim at open ones."""
        m = self.st.server.manager
        for tenant, attr in (("acme", "own"), ("globex", "other")):
            try:
                alive = m.get(tenant, getattr(self, attr)).is_open
            except SessionNotFound:
                alive = False
            if not alive:
                c = self.acme if tenant == "acme" else self.globex
                sid = c.create(system_prompt="You are terse.").session_id
                c.generate(sid, "first", max_tokens=2)
                setattr(self, attr, sid)

    def ids(self) -> dict[str, str]:
        return {OWN: self.own, OTHER: self.other, CLOSED: self.closed,
                MISSING: "s_" + "Q" * 32}

    def snapshot(self) -> dict:
        m, store = self.st.server.manager, self.st.server.store
        out = {}
        for tenant, sid in (("acme", self.own), ("globex", self.other),
                            ("acme", self.closed)):
            try:
                s = dataclasses.asdict(m.get(tenant, sid))
            except SessionNotFound:
                s = None
            stored = store.load(sid)
            stored = dataclasses.asdict(stored) if stored is not None else None
            for d in (s, stored):
                if d is not None:
                    d.pop("updated_at")
            out[sid] = (s, stored)
        return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    cfg = server_config(d / "data", api_key_file=key_file(d, KEYS), default_max_tokens=4,
                        limits=with_limits(max_output_tokens=8, max_prompt_tokens=1024,
                                           max_message_bytes=1 << 20))
    with running_server(cfg) as st_:
        w = World(st_)
        yield w
        w.acme.close()
        w.globex.close()


def call(world: World, method: str, request, key):
    """(status code, response or None) of one call; the stream is read to its end."""
    stub = world.acme.stub                      # the key travels in the metadata
    md = (("authorization", f"Bearer {key}"),) if key else ()
    fn = getattr(stub, method)
    try:
        if METHODS[method].server_streaming:
            return grpc.StatusCode.OK, list(fn(request, metadata=md, timeout=120))
        return grpc.StatusCode.OK, fn(request, metadata=md, timeout=120)
    except grpc.RpcError as e:
        return e.code(), e.details()


def assert_still_serving(world: World) -> None:
    ch = grpc.insecure_channel(world.st.target)
    h = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""),
                                             timeout=10)
    assert h.status == health_pb2.HealthCheckResponse.SERVING
    ch.close()
    sid = world.acme.create().session_id
    _, r = world.acme.generate(sid, "are you still there?", max_tokens=3, timeout=60)
    assert r.session.turns == 1 and r.usage.completion_tokens >= 1
    world.acme.CloseSession(api.CloseSessionRequest(session_id=sid))


def fuzz_one(world: World, method: str, request, key) -> None:
    ids = world.ids()
    if request.DESCRIPTOR.fields_by_name.get("session_id") is not None:
        target = request.session_id
        if target in ids:
            request.session_id = ids[target]
    before = world.snapshot()
    code, out = call(world, method, request, key)
    after = world.snapshot()
    SEEN[method][code.name] += 1
    assert code in ALLOWED, (method, code, out)
    caller = KEYS.get(key)
    owners = {world.own: "acme", world.other: "globex", world.closed: "acme"}
    for sid, owner in owners.items():                 # nobody else's session ever changes
        if owner != caller:
            assert before[sid] == after[sid], f"{method} as {caller} changed {owner}'s session"
    assert before[world.closed] == after[world.closed], f"{method} changed a closed session"
    if code != grpc.StatusCode.OK:
        assert before == after, (method, code, out)
        if key not in KEYS:                     # (gRPC's size cap may answer first)
            assert code in (grpc.StatusCode.UNAUTHENTICATED,
                            grpc.StatusCode.RESOURCE_EXHAUSTED), (code, out)
    world.renew_closed()


def _fuzz_test(method: str):
    req_cls = getattr(api, METHODS[method].input_type.name)

    @SETTINGS
    @given(request=messages(req_cls, SESSION_IDS), key=KEY_CHOICES)
    def run(world, request, key):
        fuzz_one(world, method, request, key)

    def test(world):
        run(world)
        assert_still_serving(world)
        print(method, dict(SEEN[method]))
        assert sum(SEEN[method].values()) >= 40
    test.__name__ = f"test_fuzz_{method}"
    return test


for _m in METHODS:
    globals()[f"test_fuzz_{_m}"] = _fuzz_test(_m)


def test_every_rpc_of_the_service_is_fuzzed():
    assert {n for n in globals() if n.startswith("test_fuzz_")} == \
        {f"test_fuzz_{m}" for m in METHODS}


def test_fuzzed_generate_of_own_session_is_a_normal_turn_afterwards(world):
    """Raw token ids at the edges of the vocabulary, after all the fuzzing."""
    sid = world.acme.create().session_id
    for ids in ([0], [1, 2, 3]):
        _, r = world.acme.generate(sid, token_ids=ids, max_tokens=2)
        assert r.usage.completion_tokens >= 1
    for bad in ([2**32 - 1], [10**9]):
        code, _ = call(world, "Generate", generate_request(sid, token_ids=bad, max_tokens=2),
                       "key-acme")
        assert code == grpc.StatusCode.INVALID_ARGUMENT, bad
    assert world.acme.get(sid).turns == 2
