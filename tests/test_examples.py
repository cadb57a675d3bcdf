"""The examples, run as programs against the embedded tiny model.

`agentkv demo` serves tiny in-process and runs examples/agent_loop.py against it as a separate
program; examples/human_in_the_loop.py starts and restarts its own server subprocess. Both must
show that a session's later turns reuse the earlier turns' KV instead of recomputing it.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TURN = re.compile(r"turn (\d+)[^:\n]*: ttft +([\d.]+) ms \| kv reused +(\d+) "
                  r"\(gpu (\d+), cpu (\d+), disk (\d+)\) recomputed +(\d+)")


def run(args, timeout=240) -> str:
    p = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def turns(out: str) -> dict[int, dict]:
    rows = {}
    for m in TURN.finditer(out):
        n, ttft, reused, gpu, cpu, disk, recomputed = (float(x) if i == 1 else int(x)
                                                       for i, x in enumerate(m.groups()))
        rows[n] = dict(ttft=ttft, reused=reused, gpu=gpu, cpu=cpu, disk=disk,
                       recomputed=recomputed)
    return rows


def test_demo_runs_the_agent_loop_and_later_turns_reuse_the_kv():
    out = run(["-m", "runtime.cli", "demo", "--device", "cpu", "--max-tokens", "8",
               "--search-latency", "0.2"])
    rows = turns(out)
    assert len(rows) >= 4, out
    assert rows[1]["reused"] == 0 and rows[1]["recomputed"] > 0          # a fresh server
    context = {int(m.group(1)): int(m.group(2)) for m in
               re.finditer(r"turn (\d+):.*?, (\d+) in the session", out)}
    for n in range(2, len(rows) + 1):
        r = rows[n]
        assert r["reused"] == r["gpu"] + r["cpu"] + r["disk"]
        # the earlier turns' log came from the cache, in whole blocks (the last generated token
        # was never fed to the model, so the block holding it is recomputed)
        assert r["reused"] >= (context[n - 1] - 1) // 16 * 16 > 0, out
        assert r["reused"] > r["recomputed"], out
        assert r["ttft"] > 0
    assert "following the task plan" in out and "random weights" in out
    assert "tool calculator -> '1157.625" in out
    assert "the tools computed 1157.625" in out
    assert "server stopped; the example exited with status 0" in out


def test_human_in_the_loop_session_survives_a_restart():
    out = run(["examples/human_in_the_loop.py", "--device", "cpu", "--max-tokens", "6"])
    rows = turns(out)
    assert sorted(rows) == [1, 2, 3], out
    assert rows[1]["reused"] == 0
    assert rows[2]["reused"] > rows[2]["recomputed"] and rows[2]["gpu"] > 0, out
    assert re.search(r"found session s_\S+ after the restart: state paused, tool human, "
                     r"human True, \d+ tokens in its log \(intact\)", out), out
    # after the restart the KV came from the disk tier, or was recomputed from the log
    third = rows[3]
    assert third["gpu"] == 0                      # a new process has an empty GPU cache
    if third["disk"] > 0:
        assert "came back from the disk tier" in out
    else:
        assert "recomputed from the restored token log" in out
    assert out.count("server stopped (exit status 0)") == 2


def test_the_agent_loop_says_when_no_server_answers():
    import socket
    with socket.socket() as s:            # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.run([sys.executable, "examples/agent_loop.py", "--target",
                        f"127.0.0.1:{port}", "--wait-s", "0.5"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip() == (f"agent_loop: UNAVAILABLE: no agentkv server answered at "
                                f"127.0.0.1:{port} within 0.5 s: start one (agentkv serve) or "
                                "check the address")
