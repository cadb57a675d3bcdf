"""Settings of the step cap and the admission order compared on a virtual clock, on a CPU.

Runs the engine's scheduler and each variant's cache policy (step cap, admission order, pause
forecasts) over the agent replay's workload, on several workload seeds, with step times from an
H200 model (bench/step_sim_engine.py says what it models and what it leaves out). A variant is
`NAME=POLICY[:KEY=VALUE,...]`, the options as `agentkv serve --policy-option`. Reports, pooled
over the seeds, each variant's resumed-turn TTFT p50 / p99, mean job completion time and the sum
of first-turn TTFTs, and writes bench/results/step_sim-cpu-<date>.{json,md} (format:
bench/README.md).

    python bench/step_sim.py --seeds 0,1,2,3,4
    python bench/step_sim.py --variant base=lru_cpu --variant cap512=agent:resume_step_tokens=512
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))  # after the repo: bench/kernels.py is no package

from agent_workload import add_workload_args, build_workload, workload_config  # noqa: E402
from bench_common import git_commit  # noqa: E402
from sessions.costs import CostModel  # noqa: E402
from sessions.estimator import PauseEstimator  # noqa: E402
from sessions.policies.options import parse_policy_options  # noqa: E402
from sessions.policy import make_policy  # noqa: E402
from sessions.sim.report import quantile  # noqa: E402  (the replay's: interpolated)
from step_sim_engine import SimEngineConfig, SimResult, StepSim, StepTimeModel  # noqa: E402

VARIANTS = (
    "fcfs=lru_cpu",
    "agent=agent",
    "agent_no_turn_end=agent:resume_step_after_turn_end=false",
    "agent_no_cap=agent:resume_step_tokens=none",
    "agent_cap512=agent:resume_step_tokens=512",
    "agent_p25=agent:resume_step_probability=0.25",
    "agent_cap512_p25=agent:resume_step_tokens=512,resume_step_probability=0.25",
    "agent_no_session_fcfs=agent:session_fcfs=false",
)
VOCAB = 128_256


def parse_variant(text: str) -> tuple[str, str, dict]:
    """`NAME=POLICY[:KEY=VALUE,...]` -> (name, policy, typed options); ValueError if not."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise ValueError(f"--variant {text!r}: expected NAME=POLICY[:KEY=VALUE,...]")
    policy, _, opts = rest.partition(":")
    items = [x for x in opts.split(",") if x.strip()]
    return name.strip(), policy.strip(), parse_policy_options(policy.strip(), items)


def run_variant(a: argparse.Namespace, policy: str, options: dict, seed: int) -> SimResult:
    wl = build_workload(workload_config(a, seed=seed), VOCAB)
    est = PauseEstimator()
    est.scale_priors(1.0 / a.time_compression)      # as the replay's servers
    pol = make_policy(policy, CostModel.h200_llama3_8b(), est, options)
    cfg = SimEngineConfig(max_num_batched_tokens=a.max_num_batched_tokens,
                          concurrency=a.concurrency, rpc_s=a.rpc_ms / 1e3)
    return StepSim(wl.sessions, pol, cfg, step_model(a)).run()


def step_model(a: argparse.Namespace) -> StepTimeModel:
    return StepTimeModel(base_ms=a.base_ms, us_per_token=a.us_per_token,
                         ns_per_pair=a.ns_per_pair, eager_floor_ms=a.eager_floor_ms,
                         first_token_ms=a.first_token_ms, graph_max_tokens=a.graph_max_tokens)


def summarize(name: str, results: list[SimResult]) -> dict:
    resumed = [t.ttft_s for r in results for t in r.turns if t.resume]
    first = [t.ttft_s for r in results for t in r.turns if not t.resume]
    jct = [v for r in results for v in r.jct_s.values()]
    steps = sum(r.steps for r in results)
    return {"variant": name, "turns": sum(len(r.turns) for r in results),
            "resumed_turns": len(resumed),
            "resume_ttft_p50_s": round(quantile(resumed, 0.5), 4),
            "resume_ttft_p90_s": round(quantile(resumed, 0.9), 4),
            "resume_ttft_p99_s": round(quantile(resumed, 0.99), 4),
            "resume_ttft_mean_s": round(statistics.fmean(resumed), 4) if resumed else None,
            "resume_queue_mean_s": round(statistics.fmean(
                [t.queue_s for r in results for t in r.turns if t.resume] or [0.0]), 4),
            "first_turn_ttft_sum_s": round(sum(first), 3),
            "jct_mean_s": round(statistics.fmean(jct), 4) if jct else None,
            "steps": steps, "short_steps": sum(r.short_steps for r in results),
            "busy_s": round(sum(r.busy_s for r in results), 3),
            "per_seed": [{"resume_ttft_p50_s": round(quantile(
                [t.ttft_s for t in r.turns if t.resume], 0.5), 4),
                "jct_mean_s": round(statistics.fmean(r.jct_s.values()), 4) if r.jct_s else None}
                for r in results]}


def markdown(doc: dict) -> str:
    """The rows as a table, with what the figures are."""
    m = doc["step_time_model"]
    lines = [f"# Step simulator, {doc['date']} (commit {doc['commit'][:7]})", "",
             f"`{doc['command']}`: the engine's scheduler and each variant's policy on a virtual "
             f"clock, workload seeds {', '.join(map(str, doc['seeds']))} pooled; steps "
             f"{m['base_ms']} ms + {m['us_per_token']} us a token + {m['ns_per_pair']} ns an "
             f"attention pair, at least {m['eager_floor_ms']} ms past a graph's "
             f"{m['graph_max_tokens']} tokens, first tokens {m['first_token_ms']} ms after their "
             "step; no KV tiers (every context stays on the GPU). It ranks settings; "
             "`agent_replay.py` measures them.", "",
             "| variant | policy options | resume TTFT p50 | p90 | p99 | resume queue mean | "
             "JCT mean | first-turn TTFT sum | steps capped |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in doc["rows"]:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-"
        lines.append(f"| {r['variant']} | {r['policy']}: {opts} | "
                     f"{1e3 * r['resume_ttft_p50_s']:.1f} ms | "
                     f"{1e3 * r['resume_ttft_p90_s']:.1f} ms | "
                     f"{1e3 * r['resume_ttft_p99_s']:.1f} ms | "
                     f"{1e3 * r['resume_queue_mean_s']:.1f} ms | {r['jct_mean_s']:.3f} s | "
                     f"{r['first_turn_ttft_sum_s']:.1f} s | {r['short_steps']} / {r['steps']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", default=None, metavar="NAME=POLICY[:K=V,...]",
                   help=f"repeatable; default: {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0,1,2,3,4", help="workload seeds, pooled")
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    m = p.add_argument_group("step times (default: the H200 fit, StepTimeModel)")
    m.add_argument("--graph-max-tokens", type=int, default=StepTimeModel.graph_max_tokens,
                   help="the largest step replayed from a CUDA graph (the server's "
                        "--extend-graph-max-tokens)")
    for f in ("base_ms", "us_per_token", "ns_per_pair", "eager_floor_ms", "first_token_ms"):
        m.add_argument("--" + f.replace("_", "-"), type=float,
                       default=getattr(StepTimeModel, f))
    p.add_argument("--rpc-ms", type=float, default=2.0, help="client <-> server, one way")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    p.add_argument("--date", default=dt.date.today().strftime("%Y%m%d"))
    add_workload_args(p)
    a = p.parse_args(argv)
    try:
        variants = [parse_variant(v) for v in (a.variant or VARIANTS)]
        seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    except ValueError as e:
        p.error(str(e))
    if not seeds:
        p.error("--seeds: give at least one workload seed")
    t0 = time.perf_counter()
    rows = []
    for name, policy, opts in variants:
        res = [run_variant(a, policy, opts, s) for s in seeds]
        row = summarize(name, res)
        row.update(policy=policy, options=opts)
        rows.append(row)
        print(f"{time.perf_counter() - t0:6.1f}s {name:24s} resume TTFT p50 "
              f"{1e3 * row['resume_ttft_p50_s']:6.1f} ms p99 {1e3 * row['resume_ttft_p99_s']:6.1f}"
              f" ms, queue mean {1e3 * row['resume_queue_mean_s']:5.1f} ms, JCT mean "
              f"{row['jct_mean_s']:.3f} s, first turns {row['first_turn_ttft_sum_s']:.2f} s, "
              f"{row['short_steps']}/{row['steps']} steps capped", flush=True)
    metrics = {f"{r['variant']}.{k}": {"value": r[k], "goal": None}
               for r in rows for k in ("resume_ttft_p50_s", "resume_ttft_p99_s", "jct_mean_s")}
    doc = {"bench": "step_sim", "hardware": "cpu (simulated H200 steps)", "commit": git_commit(),
           "date": f"{a.date[:4]}-{a.date[4:6]}-{a.date[6:]}",
           "command": "python bench/step_sim.py " + " ".join(sys.argv[1:] if argv is None
                                                             else argv),
           "ceilings": {}, "metrics": metrics, "rows": rows,
           "step_time_model": asdict(step_model(a)),
           "seeds": seeds, "wall_s": round(time.perf_counter() - t0, 1)}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"step_sim-cpu-{a.date}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(doc))
    print(f"wrote {path} and its .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
