"""Readers for real traces: TraceLab session CSVs and the Mooncake conversation trace.

TraceLab (uw-syfi/TraceLab, CC BY 4.0): one row per round,
`session_id,arrival_time,round_idx,prefix_len,input_len,output_len,tool_wait_after_ms`.
`prefix_len` is the prior context kept, `input_len` the tokens appended this round and
`tool_wait_after_ms` the pause before the session's next round. `arrival_time` (the session's
first arrival) is read in milliseconds like the pause column; files without that column start
every session at 0. Rows may come in any order; a session's rounds are sorted by `round_idx`.
TraceLab does not name the tools, so every pause is a tool pause named "tool".

Mooncake (kvcache-ai/Mooncake FAST'25 conversation trace, Apache-2.0): one JSON object a line,
`timestamp` (ms), `input_length`, `output_length`, `hash_ids` (one id per 512-token prompt block;
equal ids mean equal prefix blocks). It has no session ids; sessions are derived as follows.
Requests are taken in timestamp order. For each request, find the longest prefix of its
hash_ids that an earlier request also had, and the latest earlier request `p` that had it. If
that common prefix covers every full block of `p` (all of p's hash_ids but its last, which may
be a partial block whose id changes when the prompt grows) and is longer than the prefix common
to the whole trace (the shared system block), and `p` has no next round yet, the request is the
next round of p's session; otherwise it starts a new session. The pause is the gap between the
two requests' timestamps; in replay the round arrives at its own timestamp (or when p's turn
ends, if later). The reused context of a next round is p's prompt plus p's output when the new
prompt is at least that long (the usual case: the conversation so far plus a new message),
else the matched blocks. The blocks common to every request are the shared prefix. Requests
that share only part of an earlier conversation (forks) start new sessions, so their partial
reuse is not credited. The trace never says when a conversation ends: sessions never close, and
the last round pauses forever on a human ("user").
"""
from __future__ import annotations

import csv
import json
import math
import random
from collections import defaultdict

from sessions.sim.rounds import SimRound, SimSession

TRACELAB_COLUMNS = ("session_id", "round_idx", "prefix_len", "input_len", "output_len",
                    "tool_wait_after_ms")


def read_tracelab_csv(path: str, time_unit_s: float = 1e-3) -> list[SimSession]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in TRACELAB_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a TraceLab session CSV, missing columns {missing}; "
                             f"expected {', '.join(TRACELAB_COLUMNS)} (and arrival_time)")
        rows: dict[str, list[dict]] = defaultdict(list)
        for row in reader:
            rows[row["session_id"]].append(row)
    sessions = []
    for sid, rs in rows.items():
        rs.sort(key=lambda r: int(r["round_idx"]))
        arrival = float(rs[0].get("arrival_time") or 0.0) * time_unit_s
        rounds = tuple(
            SimRound(round_idx=i, prefix_tokens=int(r["prefix_len"]),
                     input_tokens=int(r["input_len"]), output_tokens=int(r["output_len"]),
                     pause_after_s=float(r["tool_wait_after_ms"]) * 1e-3 if i < len(rs) - 1
                     else 0.0,
                     tool_after="tool" if i < len(rs) - 1 else None)
            for i, r in enumerate(rs))
        sessions.append(SimSession(f"tracelab-{sid}", arrival, rounds, 0, True, "tracelab"))
    sessions.sort(key=lambda s: (s.arrival_s, s.session_id))
    return sessions


def read_mooncake_jsonl(path: str, limit: int | None = None, fraction: float = 1.0,
                        seed: int = 0, block_tokens: int = 512) -> list[SimSession]:
    """Sessions derived from a Mooncake trace (first `limit` lines; keep a seeded `fraction`
    of the sessions, whole, so a single simulated GPU can carry the load)."""
    reqs = []
    with open(path) as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                break
            if line.strip():
                o = json.loads(line)
                reqs.append((float(o["timestamp"]) / 1000.0, int(o["input_length"]),
                             int(o["output_length"]), tuple(o["hash_ids"])))
    reqs.sort(key=lambda r: r[0])
    if not reqs:
        return []
    common = len(reqs[0][3])
    for r in reqs:
        while common and r[3][:common] != reqs[0][3][:common]:
            common -= 1
    shared = min(common * block_tokens, min(r[1] for r in reqs))

    holder: dict[tuple, int] = {}        # hash prefix -> latest request having it
    parent: list[int | None] = []
    continued: set[int] = set()
    for i, (_, _, _, h) in enumerate(reqs):
        k = len(h)
        while k > 0 and h[:k] not in holder:
            k -= 1
        p = holder.get(h[:k]) if k > 0 else None
        if p is not None and k > common and k >= len(reqs[p][3]) - 1 and p not in continued:
            parent.append(p)
            continued.add(p)
        else:
            parent.append(None)
        for m in range(1, len(h) + 1):
            holder[h[:m]] = i

    chains: dict[int, list[int]] = {}
    root_of: list[int] = []
    for i, p in enumerate(parent):
        root = i if p is None else root_of[p]
        root_of.append(root)
        chains.setdefault(root, []).append(i)

    rng = random.Random(seed)
    sessions = []
    for root in sorted(chains):
        if rng.random() >= fraction:
            continue
        idx = chains[root]
        rounds = []
        for n, i in enumerate(idx):
            ts, inp, out, h = reqs[i]
            if n == 0:
                prefix = shared
            else:
                pts, pin, pout, ph = reqs[idx[n - 1]]
                matched = min(len(ph) - 1, len(h)) * block_tokens
                prefix = pin + pout if inp >= pin + pout else max(shared, min(matched, inp))
            last = n == len(idx) - 1
            pause = math.inf if last else reqs[idx[n + 1]][0] - ts
            rounds.append(SimRound(round_idx=n, prefix_tokens=prefix,
                                   input_tokens=inp - prefix,
                                   output_tokens=out, pause_after_s=pause, tool_after="user",
                                   human_after=True, arrival_s=ts))
        sessions.append(SimSession(f"mooncake-{root}", reqs[root][0], tuple(rounds), shared,
                                   False, "mooncake"))
    return sessions
