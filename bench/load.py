"""Load: many concurrent sessions over loopback on the CPU `tiny` model.

Each of N sessions (one client thread each) runs a bounded number of short turns and closes; a
probe thread calls GetSession on random open sessions the whole time and records its latency.
The clients run in a process of their own (bench/load_client.py), as a server's clients do.
After every session closed, the engine's GPU block pool must be all free (never used, or cached
with no reference), the pinned host pool's slots all free, and the process RSS no more than a
stated bound above what it was after a warm-up round. The engine commits its KV pool's pages when
it allocates them (kvstore/spec.py), so the bound catches leaks rather than the first touch of a
preallocated pool; closed sessions stay listed for `retain_closed_s` by design (a few KiB each).

    python bench/load.py --sessions 200 --turns 4 --max-tokens 8 --time-limit 300

writes bench/results/load-cpu-YYYYMMDD.json (bench/README.md): metrics `errors` (<= 0),
`getsession_p99_ms` (<= 50), `leaked_gpu_blocks` (<= 0), `leaked_host_slots` (<= 0),
`rss_growth_mib` (<= the bound), `turns`, `tokens_per_s`; its row gives the server's own part of
GetSession's p99 (`getsession_handler_p99_le_ms`: the smallest bucket bound of
`agentkv:rpc_duration_seconds` that holds 99% of the measured round's calls).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))

from bench_common import git_commit  # noqa: E402
from load_client import LoadResult  # noqa: E402

from runtime.config import EngineConfig  # noqa: E402
from runtime.limits import Limits  # noqa: E402
from runtime.server import ServerThread  # noqa: E402
from runtime.server_config import ServerConfig  # noqa: E402

RSS_BOUND_MIB = 64.0


def load_config(data_dir: str, sessions: int, num_gpu_blocks: int = 2048,
                cpu_cache_gb: float = 0.02) -> ServerConfig:
    engine = EngineConfig(model="tiny", device="cpu", num_gpu_blocks=num_gpu_blocks,
                          max_num_batched_tokens=256, cpu_cache_gb=cpu_cache_gb)
    limits = Limits(max_sessions_per_tenant=sessions * 2, max_concurrent_turns=sessions * 2)
    return ServerConfig(engine=engine, port=0, data_dir=data_dir, grace_s=2.0, policy="agent",
                        api_keys_from_env=False, limits=limits, default_max_tokens=8)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_clients(target: str, sessions: int, turns: int, max_tokens: int, time_limit_s: float,
                seed: int = 0) -> LoadResult:
    """bench/load_client.py against `target` in a process of its own; its LoadResult. A client
    that dies or prints no result is an error of the run, not a crash of the bench."""
    cmd = [sys.executable, str(REPO / "bench" / "load_client.py"), "--target", target,
           "--sessions", str(sessions), "--turns", str(turns), "--max-tokens", str(max_tokens),
           "--time-limit", str(time_limit_s), "--seed", str(seed)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=time_limit_s + 300)
    except subprocess.TimeoutExpired:
        return LoadResult(errors=["the load client did not finish in time"])
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        return LoadResult(errors=[f"the load client exited with {out.returncode}: "
                                  f"{out.stderr.strip()[-2000:]}"])
    return LoadResult(**json.loads(lines[-1]))


def pool_state(st: ServerThread) -> dict:
    """Blocks and slots still held, read on the engine thread."""
    def read(e):
        pool = e.pool
        host = e.tiers.host if e.tiers is not None else None
        return {"gpu_blocks": pool.num_blocks, "gpu_free": pool.num_free_blocks,
                "gpu_cached": pool.num_cached_blocks,
                "host_slots": host.capacity if host is not None else 0,
                "host_free": host.num_free if host is not None else 0,
                "requests": len(e.requests)}
    return st.server.engine_thread.call(read, timeout=30)


def settled(st: ServerThread, timeout: float = 30.0) -> dict:
    """The pool state once every closed session's blocks were released (or at timeout)."""
    end = time.monotonic() + timeout
    while True:
        s = pool_state(st)
        if (s["gpu_free"] == s["gpu_blocks"] and s["host_free"] == s["host_slots"]
                and s["requests"] == 0) or time.monotonic() > end:
            return s
        time.sleep(0.1)


def handler_buckets(st: ServerThread, method: str = "GetSession") -> dict[float, float]:
    """Cumulative counts of agentkv:rpc_duration_seconds{method} by bucket bound (seconds)."""
    out: dict[float, float] = {}
    for fam in st.server.metrics.registry.collect():
        for smp in fam.samples:
            if smp.name == "agentkv:rpc_duration_seconds_bucket" and \
                    smp.labels.get("method") == method:
                out[float(smp.labels["le"])] = smp.value
    return out


def bucket_p99_ms(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The smallest bucket bound holding 99% of the calls made between two readings (ms)."""
    counts = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return None
    return next(1000 * le for le, n in counts if n >= 0.99 * total)


def measure(sessions: int, turns: int, max_tokens: int, time_limit_s: float,
            data_dir: str) -> dict:
    """Warm-up round, then the measured round; everything the metrics need."""
    st = ServerThread(load_config(data_dir, sessions)).start()
    try:
        warm = run_clients(st.target, min(sessions, 50), 1, max_tokens, time_limit_s, seed=1)
        settled(st)
        rss0 = rss_mib()
        b0 = handler_buckets(st)
        res = run_clients(st.target, sessions, turns, max_tokens, time_limit_s, seed=2)
        handler_p99 = bucket_p99_ms(b0, handler_buckets(st))
        after = settled(st)
        rss1 = rss_mib()
        open_sessions = sum(n for k, n in st.server.manager.count_by_state().items()
                            if k in ("waiting", "active", "paused"))
    finally:
        st.stop()
    return {"result": res, "warmup_errors": warm.errors, "pools": after, "rss_before_mib": rss0,
            "rss_after_mib": rss1, "open_sessions": open_sessions,
            "getsession_handler_p99_le_ms": handler_p99}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--time-limit", type=float, default=300.0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="agentkv-load-") as d:
        m = measure(a.sessions, a.turns, a.max_tokens, a.time_limit, d)
    r, p = m["result"], m["pools"]
    growth = m["rss_after_mib"] - m["rss_before_mib"]
    commit = git_commit()
    today = datetime.date.today()
    out = {
        "bench": "load", "hardware": "cpu", "commit": commit, "date": today.isoformat(),
        "command": "python bench/load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "ceilings": {"cpu_cores": os.cpu_count()},
        "metrics": {
            "errors": {"value": len(r.errors) + len(m["warmup_errors"]), "goal": "<= 0"},
            "getsession_p99_ms": {"value": round(r.p99_ms(), 2), "goal": "<= 50"},
            "leaked_gpu_blocks": {"value": p["gpu_blocks"] - p["gpu_free"], "goal": "<= 0"},
            "leaked_host_slots": {"value": p["host_slots"] - p["host_free"], "goal": "<= 0"},
            "open_sessions_after": {"value": m["open_sessions"], "goal": "<= 0"},
            "rss_growth_mib": {"value": round(growth, 1), "goal": f"<= {RSS_BOUND_MIB}"},
            "turns": {"value": r.turns, "goal": f">= {a.sessions * a.turns}"},
            "tokens_per_s": {"value": round(r.tokens / r.wall_s, 1) if r.wall_s else 0.0,
                             "goal": ">= 0"},
        },
        "rows": [{"sessions": a.sessions, "turns_per_session": a.turns,
                  "max_tokens": a.max_tokens, "wall_s": round(r.wall_s, 2),
                  "requests": r.requests, "getsession_calls": len(r.get_latencies_s),
                  "getsession_p50_ms": round(1000 * sorted(r.get_latencies_s)[
                      len(r.get_latencies_s) // 2], 2) if r.get_latencies_s else None,
                  "getsession_handler_p99_le_ms": m["getsession_handler_p99_le_ms"],
                  "pools_after": p, "rss_before_mib": round(m["rss_before_mib"], 1),
                  "rss_after_mib": round(m["rss_after_mib"], 1),
                  "errors_sample": (r.errors + m["warmup_errors"])[:20]}],
    }
    path = Path(a.out) if a.out else REPO / "bench" / "results" / \
        f"load-cpu-{today.strftime('%Y%m%d')}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["metrics"], indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
