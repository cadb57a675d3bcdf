"""Offline engine throughput, decode-step latency and prefill speed, against measured ceilings.

    python bench/engine_throughput.py                          # CPU, the embedded tiny model
    python bench/engine_throughput.py --model shape:llama3-8b  # GPU, random bf16 weights

Writes bench/results/engine-<hardware>-<date>.json in the format of bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime import Engine, EngineConfig, SamplingParams  # noqa: E402
from bench_common import git_commit  # noqa: E402


def log(msg: str) -> None:
    print(f"[engine-bench] {msg}", file=sys.stderr, flush=True)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def copy_bandwidth(dev: torch.device) -> float:
    """GB/s of a large copy, counting bytes read plus bytes written."""
    n = (1 << 30) if dev.type == "cuda" else (1 << 27)
    a = torch.randn(n // 4, device=dev)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    sync(dev)
    reps = 20 if dev.type == "cuda" else 5
    t = time.perf_counter()
    for _ in range(reps):
        b.copy_(a)
    sync(dev)
    return 2 * n * reps / (time.perf_counter() - t) / 1e9


def matmul_tflops(dev: torch.device, dtype: torch.dtype) -> float:
    n = 8192 if dev.type == "cuda" else 1024
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(dev)
    reps = 10 if dev.type == "cuda" else 3
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(dev)
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


def rand_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab - 10, (n, length), generator=g).tolist()


def throughput(eng: Engine, n: int, inp: int, out: int) -> dict:
    prompts = rand_prompts(n, inp, eng.arch.vocab_size, seed=inp * 7 + out)
    params = SamplingParams(max_tokens=out, ignore_eos=True)
    sync(eng.device)
    t = time.perf_counter()
    res = eng.generate(prompts, params)
    sync(eng.device)
    dt = time.perf_counter() - t
    toks = sum(len(r.token_ids) for r in res)
    return {"kind": "throughput", "requests": n, "input_len": inp, "output_len": out,
            "seconds": dt, "output_tok_s": toks / dt, "total_tok_s": (toks + n * inp) / dt}


def decode_step(eng: Engine, batch: int, ctx: int, steps: int) -> dict:
    """Median time of one decode step for `batch` sequences at context `ctx`."""
    prompts = rand_prompts(batch, ctx, eng.arch.vocab_size, seed=batch + ctx)
    params = SamplingParams(max_tokens=steps + 2, ignore_eos=True)
    for p in prompts:
        eng.add_request(p, params)
    while any(r.num_computed_tokens < r.num_prompt_tokens for r in eng.requests.values()):
        eng.step()
    times = []
    for _ in range(steps):
        sync(eng.device)
        t = time.perf_counter()
        eng.step()
        sync(eng.device)
        times.append(time.perf_counter() - t)
    while eng.has_unfinished():
        eng.step()
    times.sort()
    return {"kind": "decode", "batch": batch, "context": ctx, "steps": steps,
            "step_ms_median": 1e3 * times[len(times) // 2], "step_ms_min": 1e3 * times[0]}


def prefill(eng: Engine, length: int) -> dict:
    prompt = rand_prompts(1, length, eng.arch.vocab_size, seed=length)[0]
    eng.generate([prompt[:64]], SamplingParams(max_tokens=1, ignore_eos=True))  # warm
    eng.pool.reset_prefix_cache()
    sync(eng.device)
    t = time.perf_counter()
    eng.generate([prompt], SamplingParams(max_tokens=1, ignore_eos=True))
    sync(eng.device)
    dt = time.perf_counter() - t
    a = eng.arch
    params = sum(p.numel() for p in eng.model.parameters())
    attn = 2 * 2 * a.num_layers * a.num_heads * a.head_dim * length * length / 2
    flops = 2 * params * length + attn
    return {"kind": "prefill", "tokens": length, "seconds": dt, "tok_s": length / dt,
            "tflops": flops / dt / 1e12}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--num-requests", type=int, default=None)
    ap.add_argument("--shapes", default=None, help="in/out pairs, e.g. 1000x1000,128x128")
    ap.add_argument("--decode-batches", default="1,8")
    ap.add_argument("--decode-context", type=int, default=None)
    ap.add_argument("--prefill-len", type=int, default=None)
    ap.add_argument("--max-num-seqs", type=int, default=None)
    ap.add_argument("--max-num-batched-tokens", type=int, default=None)
    ap.add_argument("--num-gpu-blocks", type=int, default=None)
    ap.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)

    gpu = args.device != "cpu" and torch.cuda.is_available()
    n_req = args.num_requests or (256 if gpu else 16)
    shapes = args.shapes or ("1000x1000,128x128" if gpu else "128x64")
    ctx = args.decode_context or (1024 if gpu else 128)
    plen = args.prefill_len or (8192 if gpu else 512)
    cfg = EngineConfig(model=args.model, device=args.device, dtype=args.dtype,
                       max_num_seqs=args.max_num_seqs or (256 if gpu else 16),
                       max_num_batched_tokens=args.max_num_batched_tokens or (8192 if gpu
                                                                              else 1024),
                       num_gpu_blocks=args.num_gpu_blocks,
                       max_model_len=max(plen + 16, 4096) if gpu else None)
    log(f"loading {args.model}")
    eng = Engine(cfg)
    dev = eng.device
    hw = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    log("measuring ceilings")
    ceilings = {"copy_GBps": round(copy_bandwidth(dev), 1),
                "matmul_TFLOPs": round(matmul_tflops(dev, eng.dtype), 2)}
    weight_bytes = sum(p.numel() * p.element_size() for p in eng.model.parameters())
    floor_ms = weight_bytes / (ceilings["copy_GBps"] * 1e9 / 2) * 1e3  # weights are read once
    rows = []
    for b in [int(x) for x in args.decode_batches.split(",")]:
        log(f"decode step, batch {b}, context {ctx}")
        rows.append(decode_step(eng, b, ctx, steps=20 if gpu else 8))
    for pair in shapes.split(","):
        i, o = (int(x) for x in pair.split("x"))
        log(f"throughput {n_req} requests {i} in / {o} out")
        eng.pool.reset_prefix_cache()
        rows.append(throughput(eng, n_req, i, o))
    log(f"prefill of {plen} tokens")
    rows.append(prefill(eng, plen))
    by = {(r["kind"], r.get("batch"), r.get("input_len")): r for r in rows}
    metrics = {}
    if ("decode", 1, None) in by:
        metrics["decode_b1_vs_floor"] = {"value": round(by[("decode", 1, None)]["step_ms_median"]
                                                        / floor_ms, 3), "goal": "<= 1.25"}
    if ("decode", 8, None) in by:
        metrics["decode_b8_step_ms"] = {"value": round(by[("decode", 8, None)]["step_ms_median"],
                                                       3), "goal": "<= 5.5"}
    if ("throughput", None, 1000) in by:
        metrics["out_tok_s_1000_1000"] = {"value": round(by[("throughput", None, 1000)]
                                                         ["output_tok_s"], 1), "goal": ">= 12000"}
    pf = rows[-1]
    metrics["prefill_8k_mfu" if plen == 8192 else f"prefill_{plen}_mfu"] = {
        "value": round(pf["tflops"] / ceilings["matmul_TFLOPs"], 3), "goal": ">= 0.5"}
    result = {"bench": "engine", "hardware": hw, "commit": git_commit(),
              "date": date.today().isoformat(), "command": "python " + " ".join(sys.argv),
              "ceilings": ceilings, "metrics": metrics,
              "rows": rows + [{"kind": "model", "model": args.model, "dtype": str(eng.dtype),
                               "weight_bytes": weight_bytes, "weight_read_floor_ms": floor_ms,
                               "kv_blocks": eng.pool.num_blocks, "block_size": cfg.block_size,
                               "kernel_backend": eng.ops.backend}]}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = "cpu" if dev.type == "cpu" else hw.lower().replace("nvidia", "").strip().replace(" ", "")
    path = out / f"engine-{tag}-{date.today().strftime('%Y%m%d')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'metric':28s} {'value':>12s}  goal")
    for k, v in metrics.items():
        print(f"{k:28s} {v['value']:>12}  {v['goal']}")
    for r in rows:
        print(json.dumps(r))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
