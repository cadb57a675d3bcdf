"""Kernel compiles while serving: how many variants the attention kernels compile over a sweep of
step shapes, and how long the first call of each shape takes, with the engine's kernels against
the same kernels compiled with Triton's default integer specialisation.

Triton compiles one variant per value class (1, a multiple of 16, other) of each integer
argument. Sequence counts, query tiles and the block table's width change from step to step, so
with the default a serving engine meets new variants mid-run: each compile (a second or two for
the attention kernels) lands inside one engine step and delays every request in it. The kernels
mark those arguments `do_not_specialize`; this bench shows the difference on a real GPU. Each
mode runs in its own process with an empty Triton cache, so every compile is a real one.

    python bench/compile_variants.py            # GPU: writes bench/results/compile_variants-*.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HQ, HKV, D, BS = 32, 8, 128, 16
# (query tokens, context) per sequence, one step each: decode batches, chunked prefills and mixes
STEPS = [[(1, 300)], [(1, 2000)] * 16, [(1, 900)] * 17, [(1, 5000)] * 3, [(1, 12000)] * 8,
         [(1, 100)] * 32, [(512, 512)], [(2048, 2048)], [(37, 937), (300, 4300)],
         [(512, 8000)] * 4, [(16, 13000)], [(7, 300)] * 5, [(1000, 10000)], [(1, 1), (33, 161)],
         [(2048, 6144)], [(64, 64)] * 16, [(100, 1700)] * 3]


def _jit_variants(fn) -> int:
    """Compiled variants a Triton JITFunction holds over all devices (0 for None, never
    compiled, or not inspectable)."""
    try:
        return sum(len(c[0]) for c in fn.device_caches.values())
    except AttributeError:
        return 0


def run_sweep(specialize: bool) -> dict:
    import torch
    from kernels import attention_decode, attention_prefill
    from kernels._triton import LazyKernel
    from kernels.attention_prefill import default_prefill_config
    if specialize:       # the same kernels, compiled with Triton's default specialisation
        for mod, name in ((attention_prefill, "_prefill_kernel"),
                          (attention_decode, "_decode_split_kernel"),
                          (attention_decode, "_decode_reduce_kernel")):
            setattr(mod, name, LazyKernel(getattr(mod, name)._fn))
    cfg = default_prefill_config(D, torch.bfloat16, torch.device("cuda"), 2048, HQ // HKV, 1.0)
    ws = type(cfg).__name__ == "PrefillWSConfig"
    if ws:
        from triton.experimental import gluon
        from kernels import attention_prefill_ws
        if specialize:
            attention_prefill_ws._prefill_ws_kernel = gluon.jit(
                attention_prefill_ws._prefill_ws_kernel.fn)
    gen = torch.Generator().manual_seed(0)
    cache = torch.randn((4096, 2, BS, HKV, D), generator=gen).to("cuda", torch.bfloat16)
    rows = []
    for seqs in STEPS:
        blocks = [math.ceil(ctx / BS) for _, ctx in seqs]
        table = torch.randint(0, cache.shape[0], (len(seqs), max(blocks)), generator=gen,
                              dtype=torch.int32).cuda()
        q_lens = [q for q, _ in seqs]
        q = torch.randn((sum(q_lens), HQ, D), generator=gen).to("cuda", torch.bfloat16)
        lens = torch.tensor([c for _, c in seqs], dtype=torch.int32).cuda()
        qsl = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32).cuda()
        if max(q_lens) == 1:
            call = lambda: attention_decode.paged_decode_attention(q, cache, lens, table, D ** -0.5)  # noqa: E731
        else:
            call = lambda: attention_prefill.paged_prefill_attention(  # noqa: E731
                q, cache, qsl, lens, table, D ** -0.5, max(q_lens))
        times = []
        for _ in range(2):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            call()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        rows.append({"seqs": len(seqs), "max_query": max(q_lens), "width": max(blocks),
                     "first_s": round(times[0], 4), "again_s": round(times[1], 4)})
        print(f"  {'default' if specialize else 'engine '} {len(seqs):>2} seqs, query "
              f"{max(q_lens):>4}, width {max(blocks):>4}: first {times[0] * 1e3:8.1f} ms, "
              f"again {times[1] * 1e3:6.2f} ms", flush=True)
    variants = {"prefill": _jit_variants(attention_prefill._prefill_kernel._jit),
                "decode": _jit_variants(attention_decode._decode_split_kernel._jit)}
    if ws:
        from kernels import attention_prefill_ws
        variants["prefill_ws"] = _jit_variants(attention_prefill_ws._prefill_ws_kernel)
    return {"rows": rows, "variants": variants, "prefill_kernel": type(cfg).__name__}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", choices=["engine", "default"], help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--date", default=dt.date.today().strftime("%Y%m%d"))
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(run_sweep(a.child == "default")))
        return 0
    import torch
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this bench measures compiles on a GPU")
    from bench_common import git_commit, hardware_tag
    modes = {}
    for mode in ("default", "engine"):
        env = {**os.environ, "TRITON_CACHE_DIR": tempfile.mkdtemp(prefix=f"triton-{mode}-")}
        print(f"{mode}: {len(STEPS)} step shapes, empty Triton cache", flush=True)
        p = subprocess.run([sys.executable, __file__, "--child", mode], env=env, text=True,
                           stdout=subprocess.PIPE, check=True)
        lines = p.stdout.strip().splitlines()
        print("\n".join(lines[:-1]), flush=True)
        modes[mode] = json.loads(lines[-1])
    name = torch.cuda.get_device_name()

    def compile_s(m):      # time the first calls spent beyond a warm call
        return round(sum(max(0.0, r["first_s"] - r["again_s"]) for r in modes[m]["rows"]), 3)

    def worst_after_first(m):   # the slowest first call after the sweep's first step
        return max(r["first_s"] for r in modes[m]["rows"][1:])
    doc = {"bench": "compile_variants", "hardware": name, "commit": git_commit(),
           "date": dt.date.today().isoformat(), "command": "python bench/compile_variants.py",
           "ceilings": {},
           "metrics": {
               "engine.variants": {"value": sum(modes["engine"]["variants"].values()),
                                   "goal": None},
               "default.variants": {"value": sum(modes["default"]["variants"].values()),
                                    "goal": None},
               "engine.compile_s": {"value": compile_s("engine"), "goal": None},
               "default.compile_s": {"value": compile_s("default"), "goal": None},
               "engine.worst_first_call_after_warmup_s": {
                   "value": worst_after_first("engine"), "goal": None},
               "default.worst_first_call_after_warmup_s": {
                   "value": worst_after_first("default"), "goal": None}},
           "rows": [{"mode": m, **r} for m in modes for r in modes[m]["rows"]],
           "variants": {m: modes[m]["variants"] for m in modes},
           "prefill_kernel": modes["engine"]["prefill_kernel"]}
    out = Path(a.out) / f"compile_variants-{hardware_tag(name)}-{a.date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    for k, v in doc["metrics"].items():
        print(f"{k:42s} {v['value']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
