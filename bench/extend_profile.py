"""A resumed turn's own step: an extend of N new tokens on a cached context of C tokens.

In agent-h100-20261206f/g a resumed turn that found its KV on the GPU waited a few ms in the
queue (median 4-6 ms) and still took 25-40 ms to its first token: its own step (a 100-token
extend on a 5-13K context, run eagerly; only decode steps replay CUDA graphs) is most of it,
where the GPU's work is a few ms (one read of the weights, a short attention). This bench
measures that step as the server runs it (online: read back before the next step) and splits
it, under the torch profiler, into the GPU's busy time, its idle gaps (the host not keeping
up) and the host operations, per (context, new tokens):

    python bench/extend_profile.py --model shape:llama3-8b          # GPU, random bf16 weights
    python bench/extend_profile.py --model shape:llama3-8b --extend-graphs   # eager, then graphs
    python bench/extend_profile.py --model tiny --device cpu --contexts 256 --new 16,64

writes bench/results/extend_profile-<hardware>-<date>.json (bench/README.md): per shape the
median wall time from adding the turn to its first token, and the profiled busy and idle GPU
time per step (metrics `extend_nN_ctxC_wall_ms`, `extend_nN_ctxC_gpu_busy_ms`; with
`--extend-graphs` a second engine replays the same steps from CUDA graphs, metrics `..._graphs`).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.append(str(Path(__file__).resolve().parent))     # after the repo: bench/kernels.py

from bench_common import git_commit, hardware_tag  # noqa: E402
from engine_requests import rand_prompts  # noqa: E402
from runtime import Engine, EngineConfig, SamplingParams  # noqa: E402
from step_profile import summarize  # noqa: E402


def _turn(eng: Engine, prompt: list[int]) -> float:
    """Seconds from adding `prompt` (one token to generate) to its first token."""
    t = time.perf_counter()
    eng.add_request(prompt, SamplingParams(max_tokens=1, ignore_eos=True))
    while eng.has_unfinished():
        eng.step()
    return time.perf_counter() - t


def profile_extend(eng: Engine, context: int, new: int, turns: int, seed: int = 0) -> dict:
    """`turns` extends of `new` fresh tokens on one cached `context`-token prefix: the median
    wall time of the timed ones, and a profiler summary of the same work."""
    vocab = eng.arch.vocab_size
    prefix = rand_prompts(1, context, vocab, seed=seed)[0]
    _turn(eng, prefix)                                   # the context, cached on the GPU
    tails = rand_prompts(2 * turns + 2, new, vocab, seed=seed + 1)
    for t in tails[:2]:
        _turn(eng, prefix + t)                           # warm: compiles, allocator
    walls = [_turn(eng, prefix + t) for t in tails[2:turns + 2]]
    if eng.device.type == "cuda":
        torch.cuda.synchronize(eng.device)
    acts = [torch.profiler.ProfilerActivity.CPU]
    if eng.device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    steps0 = eng.stats.steps
    with torch.profiler.profile(activities=acts) as prof:
        t = time.perf_counter()
        for tail in tails[turns + 2:]:
            _turn(eng, prefix + tail)
        wall = time.perf_counter() - t
    steps = max(1, eng.stats.steps - steps0)
    out = summarize(prof, steps, wall, top=15)
    out.update(context=context, new_tokens=new, turns=turns, steps_per_turn=steps / turns,
               wall_ms_median=1e3 * statistics.median(walls),
               wall_ms_min=1e3 * min(walls))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="shape:llama3-8b")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--contexts", default="4096,8192")
    ap.add_argument("--new", default="32,128,512")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--num-gpu-blocks", type=int, default=None)
    ap.add_argument("--extend-graphs", action="store_true",
                    help="then the same shapes again on an engine with extend graphs on")
    ap.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    contexts = [int(x) for x in args.contexts.split(",")]
    news = [int(x) for x in args.new.split(",")]
    if args.turns < 1 or min(contexts + news) < 1:
        ap.error("--turns, --contexts and --new must be positive")
    blocks = args.num_gpu_blocks
    if blocks is None and args.device == "cpu":
        blocks = -(-(max(contexts) + max(news)) // 16) * 2 + 16
    rows, metrics, hw, dtype = [], {}, "cpu", ""
    for graphs in [False] + ([True] if args.extend_graphs else []):
        eng = Engine(EngineConfig(model=args.model, device=args.device, dtype=args.dtype,
                                  num_gpu_blocks=blocks, extend_graphs=graphs,
                                  max_model_len=max(4096, max(contexts) + max(news) + 16)))
        eng.online = True                    # as served: a prefill step is read back at once
        hw = torch.cuda.get_device_name(eng.device) if eng.device.type == "cuda" else "cpu"
        dtype = str(eng.dtype).replace("torch.", "")
        tag = "_graphs" if graphs else ""
        for c in contexts:
            for n in news:
                print(f"extend of {n} tokens on a {c}-token context{tag} ...", flush=True)
                r = profile_extend(eng, c, n, args.turns, seed=c + n)
                r["extend_graphs"] = graphs
                rows.append(r)
                key = f"extend_n{n}_ctx{c // 1024}k" if c >= 1024 else f"extend_n{n}_ctx{c}"
                metrics[f"{key}_wall_ms{tag}"] = {"value": round(r["wall_ms_median"], 3),
                                                  "goal": None}
                metrics[f"{key}_gpu_busy_ms{tag}"] = {
                    "value": round(r["gpu_busy_ms_per_step"], 3), "goal": None}
                print(f"  wall {r['wall_ms_median']:.2f} ms per turn, {r['steps_per_turn']:.1f}"
                      f" steps, GPU busy {r['gpu_busy_ms_per_step']:.2f} ms and idle "
                      f"{r['gpu_idle_ms_per_step']:.2f} ms per step", flush=True)
        del eng
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    date = dt.date.today().isoformat()
    doc = {"bench": "extend_profile", "hardware": hw, "commit": git_commit(), "date": date,
           "command": "python bench/extend_profile.py " + " ".join(argv or sys.argv[1:]),
           "ceilings": {}, "metrics": metrics, "rows": rows,
           "model": args.model, "dtype": dtype}
    out = Path(args.out_dir) / f"extend_profile-{hardware_tag(hw)}-{date.replace('-', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
