"""Figures of an agent replay: per-policy summaries, the headline metrics with their goals, plots.

Metric names follow /work/shared/BENCH.md (`agent_replay`): for each policy P
`P.resume_ttft_p50_s`, `P.resume_ttft_p99_s`, `P.jct_mean_s`; `hf_cb.jct_mean_s`; `wrong_tokens`.
Goals: agent's resume TTFT p50 and p99 <= 1/3 of lru's and <= 1/10 of recompute's; agent's mean
job completion time <= every other server's; no wrong token.
"""
from __future__ import annotations

import math

from agent_driver import ReplayResult

SOURCES = ("gpu", "cpu", "disk", "recomputed")
# pause buckets, in the workload's own (uncompressed) seconds
PAUSE_BUCKETS = ((0.0, 1.0, "<1 s"), (1.0, 10.0, "1-10 s"), (10.0, 60.0, "10-60 s"),
                 (60.0, 600.0, "1-10 min"), (600.0, math.inf, ">10 min"))


def quantile(xs: list[float], q: float) -> float | None:
    """Linear-interpolated quantile (numpy's default); None for no data."""
    if not xs:
        return None
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def counter_delta(before: dict, after: dict, prefix: str) -> dict[str, float]:
    """after - before for every sample whose name starts with `prefix`."""
    return {k: after[k] - before.get(k, 0.0) for k in after if k.startswith(prefix)}


def tier_bytes(before: dict, after: dict) -> dict[str, int]:
    """Bytes moved during the replay, `<tier>_<in|out>`, from agentkv:kv_bytes_moved."""
    out = {}
    for k, v in counter_delta(before, after, "agentkv:kv_bytes_moved").items():
        if "{" not in k or k.endswith("_created"):
            continue
        labels = dict(x.split("=", 1) for x in k[k.index("{") + 1:-1].split(","))
        out[f"{labels['tier']}_{labels['direction']}"] = int(v)
    return out


def _by_reason(resumed: list) -> dict[str, float] | None:
    """Resumed turns' mean queue seconds per reason (None without the server's reasons)."""
    told = [t.server_queue_reasons for t in resumed if t.server_queue_reasons is not None]
    if not told:
        return None
    out: dict[str, float] = {}
    for reasons in told:
        for k, v in reasons.items():
            out[k] = out.get(k, 0.0) + v
    return {k: _r(v / len(told)) for k, v in sorted(out.items())}


def summarize(res: ReplayResult, expected_turns: int) -> dict:
    """Per-server figures from its replay records."""
    resumed = [t for t in res.turns if t.resume]
    ttft = [t.ttft_s for t in resumed]
    jct = [s.jct_s for s in res.sessions if s.error is None]
    src = {k: sum(t.kv_source.get(k, 0) for t in resumed) for k in SOURCES}
    # the context a resumed turn could reuse: its prompt less the input it appends
    reusable = sum(t.prompt_tokens - t.input_tokens for t in resumed)
    by_pause = {}
    for lo, hi, name in PAUSE_BUCKETS:
        xs = [t.ttft_s for t in resumed if lo <= t.pause_before_real_s < hi]
        by_pause[name] = {"turns": len(xs), "ttft_p50_s": _r(quantile(xs, 0.5)),
                          "ttft_p99_s": _r(quantile(xs, 0.99))}
    has_src = any(t.kv_source for t in resumed)
    queued = [t.server_queue_s for t in resumed if t.server_queue_s is not None]
    return {
        "turns": len(res.turns), "turns_expected": expected_turns,
        "resumed_turns": len(resumed), "sessions_completed": len(jct),
        "errors": len(res.errors), "error_samples": res.errors[:5],
        "wall_s": round(res.wall_s, 2),
        "resume_ttft_p50_s": _r(quantile(ttft, 0.5)), "resume_ttft_p90_s": _r(quantile(ttft, 0.9)),
        "resume_ttft_p99_s": _r(quantile(ttft, 0.99)),
        "resume_ttft_mean_s": _r(sum(ttft) / len(ttft)) if ttft else None,
        "first_turn_ttft_p50_s": _r(quantile([t.ttft_s for t in res.turns if not t.resume], 0.5)),
        # what part of a resumed turn's TTFT it waited in the engine's queue (the step in
        # flight, a slot, GPU room, its KV's load), from the server's TurnResult
        "resume_queue_p50_s": _r(quantile(queued, 0.5)),
        "resume_queue_mean_s": _r(sum(queued) / len(queued)) if queued else None,
        "resume_queue_by_reason_mean_s": _by_reason(resumed),
        "jct_mean_s": _r(sum(jct) / len(jct)) if jct else None,
        "jct_p50_s": _r(quantile(jct, 0.5)), "jct_p99_s": _r(quantile(jct, 0.99)),
        "decode_tok_s_p50": _r(quantile([t.decode_tok_s for t in res.turns if t.decode_tok_s],
                                        0.5), 1),
        "resume_kv_source_tokens": src if has_src else None,
        "resume_reusable_tokens": reusable,
        "gpu_hit_rate": _r(src["gpu"] / reusable) if has_src and reusable else None,
        "reused_rate": _r((src["gpu"] + src["cpu"] + src["disk"]) / reusable)
        if has_src and reusable else None,
        # context tokens computed again (a turn's own new input is not counted)
        "recomputed_tokens": sum(max(0, t.kv_source.get("recomputed", 0) - t.input_tokens)
                                 for t in res.turns) if has_src else None,
        "ttft_by_pause": by_pause,
    }


def headline(policies: dict[str, dict], peer: dict | None, wrong_tokens: int,
             checked: bool = True) -> dict:
    """The BENCH.md metrics with the goals the issue states (wrong_tokens judged only when
    the token and KV checks ran)."""
    m: dict = {}
    get = lambda p, k: (policies.get(p) or {}).get(k)            # noqa: E731
    for p, s in policies.items():
        for k in ("resume_ttft_p50_s", "resume_ttft_p99_s", "jct_mean_s"):
            m[f"{p}.{k}"] = {"value": s.get(k), "goal": None}
    for k in ("resume_ttft_p50_s", "resume_ttft_p99_s"):
        bounds = [x for x in ((get("lru", k) or 0) / 3 if get("lru", k) else None,
                              (get("recompute", k) or 0) / 10 if get("recompute", k) else None)
                  if x is not None]
        if "agent" in policies and bounds:
            m[f"agent.{k}"]["goal"] = f"<= {min(bounds):.4g}"
    others = [s.get("jct_mean_s") for p, s in policies.items() if p != "agent"]
    if peer is not None:
        m["hf_cb.jct_mean_s"] = {"value": peer.get("jct_mean_s"), "goal": None}
        others.append(peer.get("jct_mean_s"))
    others = [x for x in others if x is not None]
    if "agent" in policies and others:
        m["agent.jct_mean_s"]["goal"] = f"<= {min(others):.4g}"
    m["wrong_tokens"] = {"value": wrong_tokens, "goal": "<= 0" if checked else None}
    return m


def goal_met(entry: dict) -> bool | None:
    g, v = entry.get("goal"), entry.get("value")
    if not g or v is None:
        return None
    op, bound = g.split()
    return v <= float(bound) if op == "<=" else v >= float(bound)


def plot(path, policies: dict[str, dict], results: dict[str, ReplayResult], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results)
    fig, ax = plt.subplots(2, 4, figsize=(22, 9.5))
    ax = ax.ravel()
    for n in names:
        xs = sorted(max(t.ttft_s, 1e-4) for t in results[n].turns if t.resume)
        if xs:
            ax[0].step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=n,
                       lw=2.2 if n == "agent" else 1.2)
    ax[0].set(xscale="log", xlabel="TTFT of the first turn after a pause (s)",
              ylabel="fraction of resumed turns", title="Resume TTFT, CDF")
    buckets = [b[2] for b in PAUSE_BUCKETS]
    for n in names:
        ys = [policies[n]["ttft_by_pause"][b]["ttft_p50_s"] for b in buckets]
        ax[1].plot(range(len(buckets)), [y if y is not None else math.nan for y in ys], "o-",
                   label=n)
    ax[1].set(xticks=range(len(buckets)), xticklabels=buckets, yscale="log",
              xlabel="pause before the turn (workload time, uncompressed)",
              ylabel="median resume TTFT (s)", title="Resume TTFT by pause length")
    _bars(ax[2], names, [policies[n]["jct_mean_s"] for n in names], "mean job completion (s)",
          "Job completion time (pauses included)")
    _bars(ax[3], names, [policies[n].get("gpu_hit_rate") for n in names],
          "resumed prompt tokens found on the GPU", "GPU hit rate (resumed turns)")
    bottom = [0.0] * len(names)
    for src in SOURCES:
        vals = [((policies[n].get("resume_kv_source_tokens") or {}).get(src, 0)) / 1e6
                for n in names]
        ax[4].bar(names, vals, bottom=bottom, label=src)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax[4].set(ylabel="M tokens", title="Where resumed turns' KV came from")
    tiers = ("gpu_out", "cpu_in", "cpu_out", "disk_in", "disk_out")
    w = 0.8 / len(tiers)
    for j, k in enumerate(tiers):
        ax[5].bar([i + j * w for i in range(len(names))],
                  [(policies[n].get("tier_bytes") or {}).get(k, 0) / 2**30 for n in names], w,
                  label=k)
    ax[5].set(xticks=[i + 0.4 - w / 2 for i in range(len(names))], xticklabels=names,
              ylabel="GiB", title="KV bytes moved per tier (in/out)")
    _bars(ax[6], names, [(policies[n].get("recomputed_tokens") or 0) / 1e6 for n in names],
          "M tokens", "Prompt tokens recomputed")
    _bars(ax[7], names, [policies[n].get("gpu_util_mean_pct") for n in names], "%",
          "GPU utilisation (mean, NVML)")
    for a in ax:
        a.grid(True, alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(a, names, vals, ylabel, title) -> None:
    a.bar(names, [v if v is not None else 0 for v in vals])
    a.set(ylabel=ylabel, title=title)
    a.tick_params(axis="x", rotation=20)
