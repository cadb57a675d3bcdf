"""Where resumed turns' first-token time went, from the servers' first-token log lines.

With `--server-first-token-log-s S` each server logs, for every request whose first token took
at least S, a server line (preparation, then submission to the token) and an engine line (queue,
steps, the producing step). `attach` reads them back from a server's log onto the replay's turn
records (`TurnRecord.first_token`); `summary` gives per policy the medians over the resumed
turns that were logged, for the report's table.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from runtime.first_token_log import read_lines

# (summary key, record field): medians of these over the logged resumed turns
MEDIANS = (("server_ms", "server_ms"), ("prepared_ms", "prepared_ms"),
           ("queued_ms", "queued_ms"), ("launch_ms", "launched_after_admission_ms"),
           ("read_back_ms", "read_back_ms"), ("step_tokens", "step_tokens"),
           ("step_seqs", "step_seqs"))


def attach(turns: list, log_path: Path) -> int:
    """Set `first_token` on each turn whose request a line of the log names (by the server's
    session id and the turn's index); returns how many turns got one."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return 0
    by_turn = {(r.session_id, r.turn_index): r for r in read_lines(text).values()
               if r.session_id is not None}
    n = 0
    for t in turns:
        r = by_turn.get((t.server_session, t.turn))
        if r is not None:
            t.first_token = {k: v for k, v in r.as_dict().items()
                             if k not in ("session_id", "turn_index")}
            n += 1
    return n


def summary(turn_rows: list[dict]) -> dict | None:
    """Medians over the resumed turns with a first-token record (turn rows as the report writes
    them); None when no resumed turn was logged."""
    logged = [t["first_token"] for t in turn_rows if t.get("resume") and t.get("first_token")]
    if not logged:
        return None
    out: dict = {"resumed_logged": len(logged),
                 "resumed": sum(1 for t in turn_rows if t.get("resume"))}
    for key, field in MEDIANS:
        xs = [r[field] for r in logged if r.get(field) is not None]
        out[f"{key}_p50"] = round(statistics.median(xs), 1) if xs else None
    out["never_queued"] = sum(1 for r in logged if r.get("queued_ms") is None)
    out["graph_share"] = round(sum(1 for r in logged if r.get("graph")) / len(logged), 3)
    out["one_step"] = sum(1 for r in logged if r.get("steps") == 1)
    return out


def markdown(summaries: dict[str, dict | None], threshold_s: float | None) -> list[str]:
    """The report's section: one row per policy with logged resumed turns."""
    rows = {k: v for k, v in summaries.items() if v}
    if not rows:
        return []
    out = ["## Where resumed turns' first-token time went", "",
           f"Resumed turns whose first token took at least {1e3 * (threshold_s or 0):.0f} ms "
           "at the server, from the servers' first-token lines; medians in ms. Server: time to "
           "first token at the server; prepared: the turn's preparation before submission; "
           "queued: submission to admission (the step in flight, a slot, room, a prefix load); "
           "launch: admission to the launch of the step that produced the token; read-back: "
           "that launch to the token on the host; step tokens and sequences: that step's.", "",
           "| policy | logged / resumed | server | prepared | queued | launch | read-back | "
           "step tokens | step seqs | one step | graph |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in rows.items():
        out.append(f"| {name} | {s['resumed_logged']} / {s['resumed']} | {s['server_ms_p50']} | "
                   f"{s['prepared_ms_p50']} | {s['queued_ms_p50']} | {s['launch_ms_p50']} | "
                   f"{s['read_back_ms_p50']} | {s['step_tokens_p50']} | {s['step_seqs_p50']} | "
                   f"{s['one_step']} | {s['graph_share']:.0%} |")
    return out + [""]
