"""Cache policies side by side in the discrete-event simulator: recompute, lru, lru_cpu, ttl, agent.

Two workloads, each on the virtual clock of one simulated H200 serving Llama-3-8B (128 KiB of KV
a token, PCIe 55 GB/s each way, disk 1.6 GB/s read / 1.1 GB/s write, prefill 10k tokens/s):

- mooncake: the Mooncake FAST'25 conversation trace (kvcache-ai/Mooncake, Apache-2.0), read from
  --mooncake (nothing of it is copied here), sessions derived from prefix sharing of hash_ids
  (sessions/sim/traces.py says how); a seeded --mooncake-fraction of the sessions is kept so
  that one GPU can carry the load (the whole trace needs ~26k tokens/s of prefill);
- generated: coding-agent sessions drawn from the published TraceLab figures (uw-syfi/TraceLab,
  CC BY 4.0): Poisson arrivals, a shared system prompt, tool pauses per tool and human waits of
  minutes to hours (sessions/sim/generator.py).

Writes bench/results/policy_sim-cpu-YYYYMMDD.{json,md,png} (format: bench/README.md).
Run from the repository root:  python bench/policy_sim.py
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sessions.costs import CostModel                                   # noqa: E402
from sessions.estimator import PauseEstimator                          # noqa: E402
from sessions.policy import POLICY_NAMES, make_policy                  # noqa: E402
from sessions.sim.records import SimConfig                             # noqa: E402
from sessions.sim.report import (PolicySummary, agent_beats, markdown_table,  # noqa: E402
                                 summarize_result)
from sessions.sim.simulator import run_simulation                      # noqa: E402
from sessions.sim.workload import (GeneratorConfig, generate_agent_sessions,  # noqa: E402
                                   read_mooncake_jsonl, summarize)
from bench_common import git_commit  # noqa: E402


DEFAULT_MOONCAKE = REPO.parent / "shared" / "workloads" / "mooncake_conversation_trace.jsonl"
METRICS = ("resume_ttft_mean_s", "resume_ttft_p99_s", "recomputed_tokens")
_CACHE: dict = {}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mooncake", default=str(DEFAULT_MOONCAKE), help="Mooncake JSONL trace")
    p.add_argument("--mooncake-fraction", type=float, default=0.15)
    p.add_argument("--mooncake-seed", type=int, default=0)
    p.add_argument("--sessions", type=int, default=2000, help="generated agent sessions")
    p.add_argument("--rate", type=float, default=0.05, help="session arrivals per second")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-compression", type=float, default=1.0)
    p.add_argument("--gpu-kv-gib", type=float, default=100.0)
    p.add_argument("--cpu-kv-gib", type=float, default=96.0)
    p.add_argument("--disk-kv-gib", type=float, default=2048.0)
    p.add_argument("--prefill-tok-s", type=float, default=10_000.0)
    p.add_argument("--decode-s-per-token", type=float, default=0.015)
    p.add_argument("--policies", default=",".join(POLICY_NAMES))
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    p.add_argument("--date", default=dt.date.today().strftime("%Y%m%d"))
    return p.parse_args(argv)


def cost_of(a: argparse.Namespace) -> CostModel:
    return CostModel.h200_llama3_8b(gpu_kv_GiB=a.gpu_kv_gib, cpu_kv_GiB=a.cpu_kv_gib,
                                    disk_kv_GiB=a.disk_kv_gib,
                                    prefill_tokens_per_s=a.prefill_tok_s)


def workload(a: argparse.Namespace, name: str):
    if name not in _CACHE:
        if name == "mooncake":
            _CACHE[name] = read_mooncake_jsonl(a.mooncake, fraction=a.mooncake_fraction,
                                               seed=a.mooncake_seed)
        else:
            _CACHE[name] = generate_agent_sessions(GeneratorConfig(
                n_sessions=a.sessions, arrival_rate_per_s=a.rate, seed=a.seed,
                time_compression=a.time_compression))
    return _CACHE[name]


def run_one(a: argparse.Namespace, name: str, policy: str):
    cost = cost_of(a)
    sessions = workload(a, name)
    res = run_simulation(sessions, make_policy(policy, cost, PauseEstimator()), cost,
                         SimConfig(decode_s_per_token=a.decode_s_per_token))
    ttfts = sorted(t.ttft_s for t in res.turns if t.is_resume)
    return name, policy, summarize_result(res), res.counters, res.wall_s, ttfts


def metrics_of(results: dict) -> dict:
    """Headline metrics: generated workload under the fixed names, mooncake prefixed."""
    out = {}
    bests = []
    for wl, prefix in (("generated", ""), ("mooncake", "mooncake.")):
        if wl not in results:
            continue
        s: dict[str, PolicySummary] = results[wl]
        for m in METRICS:
            others = [getattr(v, m) for k, v in s.items() if k != "agent"]
            for p, v in s.items():
                val = getattr(v, m)
                if p == "agent" and others:
                    goal = f"<= {min(others):.6g}"
                elif "agent" in s:
                    goal = f">= {getattr(s['agent'], m):.6g}"
                else:
                    goal = None
                out[f"{prefix}{p}.{m}"] = {"value": val, "goal": goal}
        if "agent" in s and len(s) > 1:
            best = agent_beats(s)
            bests.append(best)
            out[f"{wl}.agent_best"] = {"value": int(best), "goal": ">= 1"}
    out["agent_best"] = {"value": int(bool(bests) and all(bests)), "goal": ">= 1"}
    return out


def plot(results: dict, ttfts: dict, path: Path, params: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [w for w in ("mooncake", "generated") if w in results]
    fig, axes = plt.subplots(2, len(names), figsize=(6.5 * len(names), 8.4), squeeze=False)
    for col, wl in enumerate(names):
        top, tail = axes[0][col], axes[1][col]
        for p in results[wl]:
            xs = [max(x, 1e-3) for x in ttfts[wl][p]]
            if not xs:
                continue
            n = len(xs)
            lw = 2.2 if p == "agent" else 1.3
            top.step(xs, [(i + 1) / n for i in range(n)], where="post", label=p, lw=lw)
            tail.step(xs, [max(1.0 - i / n, 0.5 / n) for i in range(n)], where="post",
                      label=p, lw=lw)
        top.set_title(f"{wl}: {params[wl]}", fontsize=9)
        top.set_ylabel("CDF: fraction of resumed turns")
        tail.set_ylabel("tail: fraction with TTFT >= x")
        tail.set_yscale("log")
        for ax in (top, tail):
            ax.set_xscale("log")
            ax.set_xlabel("resume TTFT (s, virtual clock)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(loc="lower right" if ax is top else "lower left", fontsize=8)
    fig.suptitle("Resume TTFT per cache policy: CDF (top) and its tail (bottom); simulated H200, "
                 "Llama-3-8B KV", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    a = parse_args(argv)
    t0 = time.perf_counter()
    policies = [p.strip() for p in a.policies.split(",") if p.strip()]
    for p in policies:
        if p not in POLICY_NAMES:
            print(f"unknown policy {p!r}; valid: {', '.join(POLICY_NAMES)}", file=sys.stderr)
            return 2
    wls = ["mooncake", "generated"]
    if not Path(a.mooncake).exists():
        print(f"Mooncake trace not found at {a.mooncake}; pass --mooncake PATH", file=sys.stderr)
        return 2
    cost = cost_of(a)
    info = {wl: summarize(workload(a, wl)) for wl in wls}
    for wl in wls:
        print(f"{wl}: {info[wl]['sessions']} sessions, {info[wl]['turns']} turns, "
              f"{info[wl]['resumes']} resumes", flush=True)
    jobs = [(wl, p) for wl in wls for p in policies]
    results: dict = {wl: {} for wl in wls}
    ttfts: dict = {wl: {} for wl in wls}
    counters: dict = {wl: {} for wl in wls}
    walls: dict = {wl: {} for wl in wls}
    done = 0
    with ProcessPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        futs = [pool.submit(run_one, a, wl, p) for wl, p in jobs]
        for fut in as_completed(futs):
            wl, p, s, c, wall, tt = fut.result()
            results[wl][p], counters[wl][p], walls[wl][p], ttfts[wl][p] = s, c, wall, tt
            done += 1
            print(f"[{done:2d}/{len(jobs)}] {wl:9s} {p:9s} {wall:5.1f}s  resume TTFT mean "
                  f"{s.resume_ttft_mean_s:8.3f}s p99 {s.resume_ttft_p99_s:8.3f}s  recomputed "
                  f"{s.recomputed_tokens:,} tok  ({time.perf_counter() - t0:.0f}s)", flush=True)
    for wl in wls:                                      # keep the registry's order
        results[wl] = {p: results[wl][p] for p in policies}
    peak = {wl: max(c["peak_open_kv_tokens"] for c in counters[wl].values()) for wl in wls}
    params = {
        "mooncake": f"{info['mooncake']['sessions']} sessions ({a.mooncake_fraction:g} of the "
                    f"trace, seed {a.mooncake_seed})",
        "generated": f"{a.sessions} sessions at {a.rate:g}/s, seed {a.seed}, time compression "
                     f"{a.time_compression:g}",
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"policy_sim-cpu-{a.date}"
    command = "python bench/policy_sim.py" + ("" if argv is None and len(sys.argv) == 1
                                              else " " + " ".join(argv or sys.argv[1:]))
    rows = []
    for wl in wls:
        for p, s in results[wl].items():
            rows.append({"workload": wl, **s.row(), **{f"n_{k}": v for k, v in
                                                       counters[wl][p].items()},
                         "sim_wall_s": round(walls[wl][p], 2)})
    doc = {
        "bench": "policy_sim",
        "hardware": f"cpu ({platform.processor() or platform.machine()}; simulating an NVIDIA "
                    "H200 with Llama-3-8B KV)",
        "commit": git_commit(),
        "date": dt.datetime.strptime(a.date, "%Y%m%d").date().isoformat(),
        "command": command,
        "ceilings": {"h2d_pinned_GBps": cost.h2d_GBps, "d2h_pinned_GBps": cost.d2h_GBps,
                     "disk_read_GBps": cost.disk_read_GBps,
                     "disk_write_GBps": cost.disk_write_GBps,
                     "prefill_tokens_per_s": cost.prefill_tokens_per_s,
                     "kv_bytes_per_token": cost.kv_bytes_per_token,
                     "gpu_kv_tokens": cost.gpu_capacity_tokens,
                     "cpu_kv_tokens": cost.cpu_capacity_tokens,
                     "disk_kv_tokens": cost.disk_capacity_tokens},
        "metrics": metrics_of(results),
        "rows": rows,
        "workloads": {wl: {**info[wl], "peak_open_kv_tokens": peak[wl]} for wl in wls},
    }
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(results, ttfts, stem.with_suffix(".png"), params)
    stem.with_suffix(".md").write_text(render_md(a, doc, results, info, peak, params, cost,
                                                 time.perf_counter() - t0))
    print(f"agent_best = {doc['metrics']['agent_best']['value']}; wrote {stem}.json/.md/.png "
          f"in {time.perf_counter() - t0:.0f}s", flush=True)
    return 0


def render_md(a, doc, results, info, peak, params, cost, wall_s) -> str:
    gib = 1 << 30
    m = doc["metrics"]
    lines = [
        f"# policy_sim, {doc['date']} (commit {doc['commit'][:12]})", "",
        f"`{doc['command']}` ran in {wall_s:.0f} s on {doc['hardware']}. All times are on the "
        "simulator's virtual clock.", "",
        f"**agent_best = {m['agent_best']['value']}** (goal >= 1): agent beats every baseline "
        "on resume TTFT mean and p99 (strictly) and on recomputed tokens (fewer, or both 0), on "
        "each workload: " + ", ".join(f"{wl} {m[wl + '.agent_best']['value']}"
                                       for wl in results if wl + ".agent_best" in m) + ".", "",
        "## Machine model (sessions/costs.py `CostModel.h200_llama3_8b`)", "",
        f"- KV {cost.kv_bytes_per_token // 1024} KiB/token (Llama-3-8B, bf16); PCIe pinned "
        f"{cost.h2d_GBps:g} GB/s H2D and {cost.d2h_GBps:g} GB/s D2H; disk {cost.disk_read_GBps:g}"
        f" GB/s read, {cost.disk_write_GBps:g} GB/s write (one device, reads ahead of background"
        " write-back): the ceilings measured on the H200 machine (shared/ARCHITECTURE.md).",
        f"- Prefill {cost.prefill_tokens_per_s:,.0f} tokens/s (assumed: ~16 GFLOP/token plus "
        "attention at 15-25% of 790 TFLOP/s), one prefill at a time; decode "
        f"{a.decode_s_per_token * 1e3:g} ms per output token, batched (not queued).",
        f"- **GPU KV limit: {a.gpu_kv_gib:g} GiB = {cost.gpu_capacity_tokens:,} tokens**; pinned "
        f"CPU {a.cpu_kv_gib:g} GiB = {cost.cpu_capacity_tokens:,} tokens; disk "
        f"{a.disk_kv_gib:g} GiB = {cost.disk_capacity_tokens:,} tokens. Not all sessions fit: "
        "the peak KV of sessions open at once was " + ", ".join(
            f"{peak[wl]:,} tokens ({peak[wl] * cost.kv_bytes_per_token / gib:,.0f} GiB, "
            f"{peak[wl] / cost.gpu_capacity_tokens:.1f}x the GPU) on {wl}" for wl in results)
        + ".", "",
        "## Workloads", "",
        f"- **mooncake**: {params['mooncake']}; {info['mooncake']['turns']:,} turns, "
        f"{info['mooncake']['resumes']:,} resumes, pause p50/p90/p99 "
        f"{info['mooncake']['pause_p50_s']:.0f}/{info['mooncake']['pause_p90_s']:.0f}/"
        f"{info['mooncake']['pause_p99_s']:.0f} s. Source: Mooncake FAST'25 conversation trace "
        "(kvcache-ai/Mooncake, Apache-2.0), read from `--mooncake`; sessions derived from "
        "prefix sharing of hash_ids (sessions/sim/traces.py); sessions never close.",
        f"- **generated**: {params['generated']}; {info['generated']['turns']:,} turns, "
        f"{info['generated']['resumes']:,} resumes ({info['generated']['human_pauses']:,} on a "
        f"human), pause p50/p90/p99 {info['generated']['pause_p50_s']:.2f}/"
        f"{info['generated']['pause_p90_s']:.1f}/{info['generated']['pause_p99_s']:.0f} s, "
        f"arrivals over {info['generated']['arrivals_span_s'] / 3600:.1f} h. Drawn from the "
        "published TraceLab figures (uw-syfi/TraceLab, CC BY 4.0; sessions/sim/generator.py).",
        "",
    ]
    for wl in results:
        lines += [f"## {wl}", "", markdown_table(results[wl]), ""]
    lines += [
        "## Reading the figures", "",
        "- Resume TTFT: arrival of a turn after a pause -> its first token (GPU room, loads, "
        "prefill queue, prefill). Recomputed tokens: prefix tokens of resumed turns rebuilt by "
        "prefill (for agent this includes the front of disk-held KV rebuilt while the rest "
        "loads). GPU hit: resumed turns' private prefix found on the GPU. Bytes: every copy, "
        "critical path or background.",
        "- recompute is a stateless server: this load needs far more prefill than one GPU has, "
        "so its queue grows for the whole run. First-turn TTFT shows what agent's admission "
        "priority (resumes first, with aging) costs new sessions.",
        "- Goals in the JSON: each agent figure `<=` the best baseline's; each baseline figure "
        "`>=` agent's; `agent_best >= 1`. Unprefixed metric names are the generated workload's, "
        "`mooncake.` ones the trace's.",
        "- The plot beside this file is the resume TTFT CDF per policy for each workload.", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
