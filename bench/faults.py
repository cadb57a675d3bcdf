"""Crash injection: SIGKILL the server at random points of a scripted multi-session workload.

A reference run plays the workload on a server that never stops. The faulty run plays the same
workload, killing the server (SIGKILL: no shutdown code runs) at random moments while a turn is
in flight — during generation, the spill to disk after a pause, an LMDB commit — then restarts it
on the same data directory and carries on. Checked after every restart: no turn the client saw
complete is missing (`turns_lost`); at the end every session's token log in LMDB equals the
reference's token for token (`wrong_tokens` counts differing positions).

    python bench/faults.py --kills 20          # writes bench/results/faults-cpu-<date>.json
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.append(str(ROOT / "bench"))

from bench_common import git_commit  # noqa: E402
from server_process import ServerProcess  # noqa: E402
from sessions.store import SessionStore  # noqa: E402

SYSTEM = "You are a careful coding agent."
GREEDY = dict(max_tokens=6, ignore_eos=True, temperature=0.0)


def message(session: int, turn: int) -> dict:
    return {"role": "user", "content": f"Session {session}, step {turn}: continue the task."}


def pause_for(turn: int) -> tuple[str, float, bool]:
    """Alternate long human pauses (spilled to disk) and short tool pauses (kept on the GPU)."""
    return ("ask_user", 3600.0, True) if turn % 2 == 0 else ("bash", 1.0, False)


def play_reference(work: Path, sessions: int, turns: int) -> dict[int, list[int]]:
    data = work / "reference"
    data.mkdir()
    server = ServerProcess(data)
    client = server.start()
    ids = {}
    for i in range(sessions):
        s = client.session(system_prompt=SYSTEM)
        ids[i] = s.id
        for t in range(turns):
            s.run([message(i, t)], **GREEDY)
            s.pause(*pause_for(t))
            s.resume()
    client.close()
    server.stop()
    store = SessionStore(str(data))
    return {i: list(store.load(sid).token_log) for i, sid in ids.items()}


def play_with_kills(work: Path, sessions: int, turns: int, kills: int, rng: random.Random,
                    log=print) -> dict:
    data = work / "faulty"
    data.mkdir()
    server = ServerProcess(data)
    client = server.start()
    ids = {i: client.session(system_prompt=SYSTEM).id for i in range(sessions)}
    confirmed = dict.fromkeys(ids, 0)        # turns the client saw complete
    steps = [(i, t) for t in range(turns) for i in range(sessions)]
    kill_at = set(rng.sample(range(len(steps)), min(kills, len(steps))))
    stats = {"crashes_injected": 0, "turns_lost": 0, "requests": 0, "errors": 0}
    for n, (i, t) in enumerate(steps):
        s = client.attach(ids[i])
        info = client.get_session(ids[i])
        stats["requests"] += 1
        if info.turns > t:                   # this turn completed before the last kill
            continue
        if n not in kill_at:
            try:
                s.run([message(i, t)], **GREEDY)
                confirmed[i] = t + 1
                s.pause(*pause_for(t))
                s.resume()
            except Exception as e:       # the server must answer every call between kills
                stats["errors"] += 1
                log(f"[faults] error at step {n}: {e}")
            stats["requests"] += 3
            continue
        done = threading.Event()

        def turn() -> None:
            try:
                s.run([message(i, t)], **GREEDY)
                confirmed[i] = t + 1
                s.pause(*pause_for(t))
            except Exception:
                pass
            finally:
                done.set()
        threading.Thread(target=turn, daemon=True).start()
        time.sleep(rng.uniform(0.0, 0.6))
        server.kill()
        done.wait(30)
        client.close()
        stats["crashes_injected"] += 1
        server = ServerProcess(data)
        client = server.start()
        for j, sid in ids.items():           # nothing the client saw complete may be gone
            got = client.get_session(sid)
            stats["requests"] += 1
            stats["turns_lost"] += max(0, confirmed[j] - got.turns)
            if got.state == "paused":
                client.attach(sid).resume()
        s = client.attach(ids[i])
        if client.get_session(ids[i]).turns <= t:   # the killed turn did not land: redo it
            s.run([message(i, t)], **GREEDY)
            s.pause(*pause_for(t))
            stats["requests"] += 2
        confirmed[i] = t + 1
        if client.get_session(ids[i]).state == "paused":
            s.resume()
        log(f"[faults] kill {stats['crashes_injected']}/{kills} at step {n}: restarted, "
            f"{stats['turns_lost']} turns lost so far")
    client.close()
    server.stop()
    store = SessionStore(str(data))
    stats["logs"] = {i: list(store.load(sid).token_log) for i, sid in ids.items()}
    stats["turns_checked"] = sessions * turns
    return stats


def measure(kills: int, sessions: int, turns: int, seed: int = 0, log=print) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="agentkv-faults-") as tmp:
        work = Path(tmp)
        log(f"[faults] reference run: {sessions} sessions x {turns} turns")
        ref = play_reference(work, sessions, turns)
        log(f"[faults] faulty run with {kills} kills")
        got = play_with_kills(work, sessions, turns, kills, rng, log)
    wrong = 0
    for i, log_ids in ref.items():
        mine = got["logs"][i]
        wrong += sum(a != b for a, b in zip(mine, log_ids)) + abs(len(mine) - len(log_ids))
    got["wrong_tokens"] = wrong
    got.pop("logs")
    return got


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    r = measure(args.kills, args.sessions, args.turns, args.seed)
    goals = {"crashes_injected": f">= {args.kills}", "turns_checked": f">= {args.sessions * args.turns}",
             "turns_lost": "<= 0", "wrong_tokens": "<= 0", "requests": ">= 1", "errors": "<= 0"}
    out = {"bench": "faults", "hardware": "cpu", "commit": git_commit(),
           "date": date.today().isoformat(), "command": "python bench/faults.py " +
           " ".join(sys.argv[1:]), "ceilings": {},
           "metrics": {k: {"value": r[k], "goal": g} for k, g in goals.items()},
           "rows": [{"sessions": args.sessions, "turns": args.turns, "seed": args.seed,
                     "model": "tiny", "policy": "agent"}]}
    path = Path(args.out_dir) / f"faults-cpu-{date.today().strftime('%Y%m%d')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["metrics"], indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
