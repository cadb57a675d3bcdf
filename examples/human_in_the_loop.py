"""A session that waits for a person across a restart of the server.

    python examples/human_in_the_loop.py [--model tiny] [--keep]

This example runs its own server: it starts ``agentkv serve`` as a subprocess with a data
directory (the sessions' LMDB environment) and a disk KV tier in a temporary folder, then:

1. opens a session and runs two turns in which the agent drafts an action (the second reuses
   the first turn's KV from the GPU prefix cache);
2. pauses the session for a human (``Pause(tool="human", expected_seconds=3600,
   human_in_the_loop=True)``): a long pause, for which the cache policy moves the session's KV
   off the GPU, down to the disk tier;
3. stops the server (SIGTERM: a graceful shutdown) and starts a new one on the same folders,
   as happens when a deployment restarts while a person takes their time;
4. finds the session again: still PAUSED on "human", its token log intact;
5. the human answers: the next turn runs on the restored session and reports where its
   context's KV came from: loaded from the disk tier when the tier holds the session's blocks,
   recomputed from the token log otherwise (KV is a cache of the log; the log is the truth).

Which of the two you see depends on what the cache policy (``--policy agent`` here) decided
for a one-hour human pause: on a CPU it spills the session's KV to disk, and the example waits
for that copy to land before restarting; where recomputing is cheaper it may drop the KV instead.
The output says which happened, and in either case that the session and its token log survived.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout

from runtime.client import AgentKVClient  # noqa: E402


def start_server(args, data: Path, kv: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "runtime.cli", "--log-level", "ERROR", "serve",
           "--model", args.model, "--device", args.device, "--port", "0",
           "--data-dir", str(data), "--disk-cache-path", str(kv), "--disk-cache-gb", "0.25",
           "--policy", "agent"]
    env = {k: v for k, v in os.environ.items() if k != "AGENTKV_API_KEYS"}   # open, loopback
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if not line.startswith("agentkv serving on "):
        proc.kill()
        raise SystemExit(f"the server did not start (exit status {proc.wait()})")
    return proc, line.split()[-1]


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(120)
    print(f"server stopped (exit status {code})")


def kv_line(r) -> str:
    kv = r.kv_source
    return (f"ttft {r.ttft_s * 1e3:.1f} ms | kv reused {r.reused_tokens} (gpu {kv['gpu']}, "
            f"cpu {kv['cpu']}, disk {kv['disk']}) recomputed {kv['recomputed']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-tokens", type=int, default=12)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="agentkv-hitl-"))
    data, kv = work / "data", work / "kv"
    print(f"data directory {data}, disk KV tier {kv}")
    try:
        proc, target = start_server(args, data, kv)
        print(f"server 1 on {target}")
        with AgentKVClient(target) as client:
            s = client.session(system_prompt="You are an operations agent. Ask before acting.",
                               max_tokens=args.max_tokens)
            r = s.run([{"role": "user", "content": "Plan the database migration and ask me "
                                                   "before you run it."}])
            print(f"turn 1: {kv_line(r)} | {r.context_tokens} tokens in the log")
            r = s.run([{"role": "user", "content": "List the steps, shortest first."}])
            print(f"turn 2: {kv_line(r)} | {r.context_tokens} tokens in the log")
            info = s.pause("human", expected_s=3600, human=True)
            print(f"paused for a human: state {info.state}, tool {info.paused_tool}, expected "
                  f"{info.pause_expected_s:.0f} s")
            # the policy's copy to disk runs in the background: give it a moment to land
            deadline = time.monotonic() + 10.0
            while True:
                where = client.get_session(s.id).kv_residency
                if where["disk"] > 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            print(f"the session's KV before the restart: gpu {where['gpu']}, cpu {where['cpu']},"
                  f" disk {where['disk']} tokens")
            log_tokens = r.context_tokens
        stop_server(proc)

        proc, target = start_server(args, data, kv)
        print(f"server 2 on {target} (restarted on the same data directory)")
        try:
            with AgentKVClient(target) as client:
                s = client.attach(s.id, close_on_exit=True)
                info = s.info
                where = info.kv_residency
                intact = "intact" if info.context_tokens == log_tokens else "CHANGED"
                print(f"found session {s.id} after the restart: state {info.state}, tool "
                      f"{info.paused_tool}, human {info.human_in_the_loop}, {info.context_tokens}"
                      f" tokens in its log ({intact}); KV now: gpu {where['gpu']}, cpu "
                      f"{where['cpu']}, disk {where['disk']}")
                with s:
                    r = s.run([{"role": "user", "content": "Approved. Go ahead."}])
                    print(f"turn 3 (the human answered): {kv_line(r)}")
                    if r.kv_source["disk"] > 0:
                        print(f"the session's KV came back from the disk tier: "
                              f"{r.kv_source['disk']} tokens loaded, not recomputed")
                    else:
                        print(f"no blocks of this session were on the disk tier, so its KV was "
                              f"recomputed from the restored token log "
                              f"({r.kv_source['recomputed']} tokens); the session and its log "
                              f"survived the restart")
        finally:
            stop_server(proc)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
