"""The short markdown report of an agent replay (bench/results/agent-<hw>-<date>.md)."""
from __future__ import annotations

from agent_first_tokens import markdown as first_token_md
from agent_report import goal_met


def _f(x, nd=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}g}" if abs(x) < 1e4 else f"{x:,.0f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _queue_reasons(servers: dict) -> list[str]:
    """What resumed turns queued for, per server (`TurnResult.queue_reasons`), when known."""
    rows = [(n, s["resume_queue_by_reason_mean_s"]) for n, s in servers.items()
            if s.get("resume_queue_by_reason_mean_s")]
    if not rows:
        return []
    return ["Where resumed turns queued (mean seconds per resumed turn, by reason: behind a full "
            "step or a turn that could not start, a running-sequence slot, their KV loading, "
            "GPU room):", ""] + [
        f"- {n}: " + ", ".join(f"{k} {v:.4f}" for k, v in reasons.items()) for n, reasons in rows
    ] + [""]


def _commands(servers: dict) -> list[str]:
    """Where the engine thread's commands ran, per server, when the servers count them."""
    rows = [(n, s["engine_commands"]) for n, s in servers.items() if s.get("engine_commands")]
    if not rows:
        return []
    out = ["The engine thread's commands (submissions, session events) and their host time: "
           "between steps (the GPU waits), or while a prefill step ran on the GPU:", ""]
    for n, c in rows:
        b, d = c["between_steps"], c["during_steps"]
        total = b["count"] + d["count"]
        share = f"{d['count'] / total:.0%}" if total else "-"
        out.append(f"- {n}: {total} commands, {share} while steps ran; host time between steps "
                   f"{b['host_s']:.3g} s, while steps ran {d['host_s']:.3g} s")
    return out + [""]


def _gib(b: int | None) -> str:
    return "-" if not b else f"{b / 2**30:.2f}"


def _preempted(s: dict) -> str:
    """Preemptions, with the computed tokens they discarded where the server counts them."""
    n = s.get("preemptions")
    if n is None:
        return "-"
    lost = s.get("preempted_tokens")
    return _f(n) if lost is None else f"{_f(n)} ({_f(lost)})"


def render_md(doc: dict) -> str:
    w, b, m = doc["workload"], doc["kv_budget"], doc["metrics"]
    cfg = w["config"]
    servers = {**doc["policies"], **({"hf_cb": doc["peer"]} if doc.get("peer") else {})}
    lines = [
        f"# agent_replay, {doc['date']} (commit {doc['commit'][:12]})", "",
        f"`{doc['command']}` on {doc['hardware']}, {doc.get('wall_s', '-')} s in all. Model "
        f"`{doc['model']['name']}` ({doc['model']['dtype']}, random weights built on the "
        "device). Every policy ran on a fresh `agentkv serve` process over gRPC"
        + ("; the peer is Hugging Face transformers' continuous batching, served statelessly."
           if doc.get("peer") else "; no peer in this run.")
        + ("" if doc["checks"].get("token_comparisons") or doc["checks"].get("kv_roundtrip")
           else " The wrong-token checks were not run: `wrong_tokens` counts only the servers' "
                "own checksum failures and is not judged."), "",
        "## Goals", "",
        "| metric | value | goal | met |", "| --- | --- | --- | --- |"]
    for k, v in m.items():
        met = goal_met(v)
        lines.append(f"| `{k}` | {_f(v['value'], 4)} | {v['goal'] or '-'} | "
                     f"{'-' if met is None else ('yes' if met else '**no**')} |")
    lines += [
        "", "## Set-up", "",
        f"- Workload `{w['source']}`: {w['sessions']} sessions, {w['turns']} turns "
        f"({w['resumes']} after a pause, {w['human_pauses']} of them on a human), at most "
        f"{w['concurrency']} sessions at once; final context p50 {_f(w['final_context_p50'])} "
        f"tokens, max {_f(w['final_context_max'])}; {_f(w['input_tokens'])} input and "
        f"{_f(w['output_tokens'])} output tokens in all.",
        f"- Pauses: the workload's own divided by {cfg['time_compression']:g} and capped at "
        f"{cfg['max_pause_s']:g} s: p50 {w['pause_p50_s']:.3f} s, p90 {w['pause_p90_s']:.2f} s, "
        f"max {w['pause_max_s']:.1f} s (tool pauses mostly under a second, human waits seconds).",
        f"- **GPU KV limit: {b['gpu_kv_blocks']:,} blocks = {b['gpu_kv_tokens']:,} tokens = "
        f"{b['gpu_kv_gib']} GiB**, {b['fraction_of_concurrent_working_set']:.0%} of the KV of "
        f"the sessions open at once ({_f(w['concurrent_working_set_tokens'])} tokens; all "
        f"sessions together {_f(w['working_set_tokens'])}), so they do not all fit. CPU tier "
        f"{b['cpu_cache_gib']} GiB pinned, disk tier {b['disk_cache_gib']} GiB (LMDB in a "
        "temporary folder). The peer got the same GPU KV budget in tokens.",
        *_options_line(b.get("policy_options") or {}), "",
        "## Per server", "",
        "| server | resume TTFT p50 / p99 (s) | JCT mean (s) | GPU hit | reused | recomputed "
        "tok | cpu in / out GiB | disk in / out GiB | GPU util % | decode tok/s | queue wait "
        "mean / resumed p50 (s) | preempted (tok redone) | slow / short steps | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n, s in servers.items():
        tb = s.get("tier_bytes") or {}
        lines.append(
            f"| {n} | {_f(s['resume_ttft_p50_s'])} / {_f(s['resume_ttft_p99_s'])} | "
            f"{_f(s['jct_mean_s'])} | {_f(s.get('gpu_hit_rate'))} | {_f(s.get('reused_rate'))} | "
            f"{_f(s.get('recomputed_tokens'))} | {_gib(tb.get('cpu_in'))} / "
            f"{_gib(tb.get('cpu_out'))} | {_gib(tb.get('disk_in'))} / {_gib(tb.get('disk_out'))}"
            f" | {_f(s.get('gpu_util_mean_pct'))} | {_f(s.get('decode_tok_s_p50'))} | "
            f"{_f(s.get('queue_wait_mean_s'))} / {_f(s.get('resume_queue_p50_s'))} | "
            f"{_preempted(s)} | "
            f"{_f(s.get('slow_engine_steps'))} / {_f(s.get('short_engine_steps'))} | "
            f"{s['errors']} |")
    lines += ["", "Resume TTFT: client-side, from sending the first turn after a pause to its "
              "first streamed token. JCT: a session's first request to its last token, pauses "
              "included (the same for every server). GPU hit / reused: share of the context "
              "resumed turns carried over (prompt less the new input) found on the GPU / on any "
              "tier. Recomputed tok: context tokens run through the model again (new input not "
              "counted). Tier bytes from "
              "`agentkv:kv_bytes_moved` over the replay. Queue wait: every turn's time from "
              "reaching the engine to its admission (a slot, GPU room, its prefix load), the "
              "mean of `agentkv:turn_queue_seconds`; resumed p50: the median of resumed turns' own "
              "(`TurnResult.queue_seconds`), the part of their TTFT before their first step. "
              "Preempted: turns preempted for KV room, "
              "with the context tokens they held, computed again unless still cached "
              "(`agentkv:preempted_tokens_total`; not in recomputed tok). Slow steps: engine "
              "steps of 0.5 s or longer (`agentkv:engine_slow_steps_total`), a stall that "
              "delays every turn in flight. Short steps: steps cut to the policy's cap while a "
              "paused session was likely back within one (`agentkv:engine_short_steps_total`; "
              "`agent` only), so that a turn arriving mid-step waits less.",
              ""]
    lines += _queue_reasons(servers)
    lines += _commands(servers)
    ft = doc.get("first_tokens") or {}
    lines += first_token_md(ft.get("resumed") or {}, ft.get("threshold_s"))
    lines += _checks(doc.get("checks") or {})
    if doc.get("peer"):
        p = doc["peer"]["peer"]
        lines += ["## The peer", "",
                  f"transformers {p['transformers']}, `{p.get('attn_implementation')}` attention "
                  f"through `init_continuous_batching()`, page size {p['page_size']}, "
                  f"{p['kv_tokens']:,} KV tokens, {p['max_batch_tokens']} tokens a batch, CUDA "
                  f"graphs {'on' if p['cuda_graphs'] else 'off'}; every turn re-sends the whole "
                  "history; TTFT from `add_request` to the first streamed token."]
        peer = doc["peer"]
        n_sessions = (doc.get("workload") or {}).get("sessions")
        if n_sessions and peer.get("sessions_completed", n_sessions) < n_sessions:
            lines += ["", f"It finished {peer['sessions_completed']} of {n_sessions} sessions "
                      f"({peer['turns']} of {peer['turns_expected']} turns) before the replay's "
                      "deadline: its JCT mean counts the finished sessions only, so it understates "
                      "the peer's mean: a lower bound."]
        lines += [""]
    errs = [f"{n}: {e}" for n, s in servers.items() for e in s.get("error_samples", [])[:3]]
    errs += [f"fp32 run: {e}" for e in ((doc.get("checks") or {}).get("fp32_run") or {}).get(
        "error_samples", [])[:3]]
    if errs:
        lines += ["## Errors (first of each server)", ""] + [f"- {e}" for e in errs] + [""]
    if doc.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in doc["notes"]] + [""]
    return "\n".join(lines)


def _checks(c: dict) -> list[str]:
    if not c:
        return ["## Wrong-token checks", "", "Not run (--no-checks).", ""]
    out = ["## Wrong-token checks", ""]
    for t in c.get("token_comparisons", []):
        out.append(f"- {t['label']}: {t['identical_sessions']}/{t['sessions']} sessions "
                   f"identical, {t['tokens_compared']:,} tokens compared, "
                   f"{t['divergences']} places where the runs part, {t['non_tie_divergences']} "
                   "of them not a tie"
                   + ("." if t.get("counted", True) else " (not counted in wrong tokens)."))
        for d in t["places"]:
            out.append(f"  - {d['session']} turn {d['turn']} token {d['position']}: "
                       f"{d['token_a']} vs {d['token_b']}, {_place(d)} "
                       f"({'tie' if d['is_tie'] else 'NOT a tie'})")
    for key, name in (("sample_run", "sample run"), ("fp32_run", "fp32 run")):
        f = c.get(key)
        if not f:
            continue
        kv = f["agent_resume_kv_source_tokens"]
        out.append(f"- {f.get('dtype', 'fp32')} {name}: `{f['model']}`, {f['sessions']} sessions"
                   f" ({f.get('concurrency', f['sessions'])} at a time) with {f['pause_s']:g}"
                   f"-s human pauses, GPU {f['gpu_blocks']} blocks, CPU {f['cpu_cache_gb']} "
                   f"GiB; the agent's resumed turns took their KV from {kv}; "
                   f"{f['checksum_failures']} checksum failures, {f['errors']} errors.")
    r = c.get("kv_roundtrip")
    ref = (r or {}).get("tie_reference")
    if ref:
        out.append(f"- Tie rule: a 16-bit place is a tie when both tokens sit within the bf16 "
                   f"band of the top token of `{ref['model']}` in fp32 (the same weights): the "
                   "band is how far rounding moved the gaps among the top-20 tokens at that "
                   "place; "
                   + (f"reference failed ({ref['error']}), so the top-2 <= 2^-4 rule was used."
                      if ref.get("error") else
                      f"{ref['contexts']} places recomputed in {ref['seconds']} s. Places not "
                      "counted keep the rule of the run's own top-2 gap <= 2^-4."))
    if r:
        out.append(f"- KV round trip ({r['checksum']}): {r['blocks']} blocks saved; "
                   f"{r['cpu_loads_verified']} loaded back from CPU and "
                   f"{r['disk_loads_verified']} from disk with checksums equal to the saved "
                   f"bytes; {r['mismatches']} mismatches.")
    out.append(f"- Wrong tokens in all: {c.get('wrong_tokens', '-')} (server checksum failures "
               "included).")
    return out + [""]


def _place(d: dict) -> str:
    own = f"top-2 gap {_f(d['gap'], 3)}"
    if d.get("band") is None:
        return own
    if d.get("ref_margin") is None:
        return f"{own}, a token not in the fp32 top-20 (band {_f(d['band'], 3)})"
    return f"{own}, fp32 margin {_f(d['ref_margin'], 3)} vs band {_f(d['band'], 3)}"


def _options_line(options: dict) -> list[str]:
    """The policies run with settings other than their defaults (`--policy-option`)."""
    if not options:
        return []
    parts = ["`{}`: {}".format(pol, ", ".join(f"{k}={v}" for k, v in sorted(kv.items())))
             for pol, kv in sorted(options.items())]
    return ["- Policy settings (all others at their defaults): " + "; ".join(parts) + "."]
