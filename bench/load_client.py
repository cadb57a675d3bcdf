"""The load's clients, in a process of their own: N sessions and a GetSession probe.

bench/load.py runs the server and starts this as a subprocess, so that the latency it reports
is the server's as another process sees it, not that of a server sharing its interpreter (and
its lock) with 200 client threads. It needs only grpc and the generated protos.

    python bench/load_client.py --target 127.0.0.1:PORT --sessions 200 --turns 2

prints one JSON object (LoadResult's fields) as its last line of stdout.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from agentkv_proto.agentkv.v1 import session_pb2 as pb  # noqa: E402
from agentkv_proto.agentkv.v1 import session_service_pb2 as api  # noqa: E402
from agentkv_proto.agentkv.v1 import session_service_pb2_grpc as api_grpc  # noqa: E402

PROMPTS = ["Summarise the build log.", "Which test failed first?", "Plan the next refactor step.",
           "Read config.toml and list the keys.", "What does the error message mean?"]


@dataclass
class LoadResult:
    turns: int = 0
    tokens: int = 0
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    get_latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    def p99_ms(self) -> float:
        xs = sorted(self.get_latencies_s)
        return 1000 * xs[min(len(xs) - 1, int(0.99 * len(xs)))] if xs else float("nan")


def run_load(target: str, sessions: int, turns: int, max_tokens: int, time_limit_s: float,
             seed: int = 0) -> LoadResult:
    """N sessions, each `turns` turns of at most `max_tokens` (bounded by count and time), then
    closed; GetSession probed throughout. Every error is recorded, none is retried."""
    res = LoadResult()
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit_s
    open_ids: list[str] = []
    generating = threading.Event()
    done = threading.Event()
    channel = grpc.insecure_channel(target, options=[("grpc.max_concurrent_streams", 1000)])
    stub = api_grpc.SessionServiceStub(channel)
    start = threading.Barrier(sessions + 1)

    def fail(what: str, e: Exception) -> None:
        with lock:
            res.errors.append(f"{what}: {getattr(e, 'code', lambda: '')()} "
                              f"{getattr(e, 'details', lambda: str(e))()}")

    def worker(i: int) -> None:
        rnd = random.Random(seed * 100_003 + i)
        try:
            start.wait(60)
        except threading.BrokenBarrierError:
            return
        try:
            s = stub.CreateSession(api.CreateSessionRequest(
                system_prompt=f"You are agent {i}.",
                sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0)),
                timeout=60).session
        except grpc.RpcError as e:
            fail("CreateSession", e)
            return
        with lock:
            res.requests += 1
            open_ids.append(s.session_id)
        for t in range(turns):
            if time.monotonic() > deadline:
                break
            req = api.GenerateRequest(session_id=s.session_id,
                                      sampling=pb.SamplingParams(max_tokens=max_tokens,
                                                                 ignore_eos=True))
            req.messages.messages.append(pb.ChatMessage(role="user",
                                                        content=rnd.choice(PROMPTS)))
            try:
                generating.set()
                events = list(stub.Generate(req, timeout=max(10.0, deadline - time.monotonic()
                                                             + 30)))
                r = events[-1].result
                with lock:
                    res.requests += 1
                    res.turns += 1
                    res.tokens += r.usage.completion_tokens
                if r.session.turns != t + 1:
                    with lock:
                        res.errors.append(f"session {s.session_id}: {r.session.turns} turns "
                                          f"after turn {t + 1}")
            except grpc.RpcError as e:
                fail("Generate", e)
                break
        with lock:
            open_ids.remove(s.session_id)
        try:
            stub.CloseSession(api.CloseSessionRequest(session_id=s.session_id), timeout=60)
            with lock:
                res.requests += 1
        except grpc.RpcError as e:
            fail("CloseSession", e)

    def probe() -> None:
        rnd = random.Random(seed)
        generating.wait(60)
        n = 0
        while not done.is_set() and n < 100_000 and time.monotonic() < deadline + 30:
            with lock:
                sid = rnd.choice(open_ids) if open_ids else None
            if sid is None:
                time.sleep(0.005)
                continue
            t0 = time.perf_counter()
            try:
                stub.GetSession(api.GetSessionRequest(session_id=sid), timeout=10)
                dt = time.perf_counter() - t0
                with lock:
                    res.get_latencies_s.append(dt)
                    res.requests += 1
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.NOT_FOUND,):   # closed meanwhile: fine
                    fail("GetSession", e)
            n += 1
            time.sleep(0.005)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(sessions)]
    prober = threading.Thread(target=probe, daemon=True)
    for t in threads:
        t.start()
    prober.start()
    t0 = time.monotonic()
    start.wait(60)
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic() + 120))
    done.set()
    prober.join(30)
    res.wall_s = time.monotonic() - t0
    if any(t.is_alive() for t in threads):
        res.errors.append("some sessions did not finish in time")
    channel.close()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="host:port of a running agentkv server")
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--time-limit", type=float, default=90.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    r = run_load(a.target, a.sessions, a.turns, a.max_tokens, a.time_limit, a.seed)
    print(json.dumps(asdict(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
