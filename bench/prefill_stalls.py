"""Where the paged prefill kernel's warps wait: PC sampling of one prefill case.

The warp-specialised prefill kernel stays under torch SDPA (bench/kernels_notes.md) though its
consumers are not bound by instruction issue, so the time is lost waiting: on a K/V tile, on a
matrix product, on a barrier. This bench runs the kernel the engine would pick for one case of
bench/kernels.py (Llama-3-8B head shape, bf16, the same paged inputs) under Triton's profiler in
CUPTI PC-sampling mode, and reports per source line of the kernel the share of the samples and
its main stall reasons (bench/stall_tree.py reads the profile):

    python bench/prefill_stalls.py                      # cases 4x2k and 1x8k, 16-token pages
    python bench/prefill_stalls.py --cases 1x8k --block-size 64

Each case runs in its own process (the profile must see the kernel's module load). Writes
bench/results/prefill_stalls-<hardware>-<date>.json (bench/README.md): per case the kernel's
time unprofiled (`prefill_<case>_ms`) and SDPA's on the same work (`prefill_<case>_sdpa_ms`);
rows: one per source line (most-sampled first) and one per stall reason. The raw profiles go
beside the JSON (`--out-dir`). Needs a CUDA GPU and CUPTI's PC sampling (torch's wheel ships
CUPTI); where the driver refuses it, the case's row says so.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.append(str(Path(__file__).resolve().parent))

from bench_common import git_commit, hardware_tag  # noqa: E402
from runtime.config import CUDA_BLOCK_SIZE  # noqa: E402
from stall_tree import line_stalls, reason_totals  # noqa: E402


def one_case(case: str, block_size: int, interval: int, launches: int, top: int,
             raw_dir: Path) -> dict:
    """Profile `case` in this process; returns its result (a dict for the JSON)."""
    import torch.nn.functional as F
    import triton.profiler as proton

    from kernel_timing import time_ms
    from kernels.attention_prefill import (default_prefill_config, paged_prefill_attention,
                                           paged_prefill_attention_ref)
    from kernels_cases import Bench
    from kernels_config import Sizes

    sizes = dataclasses.replace(Sizes(), block_size=block_size)
    batch, length = sizes.prefill[case]
    b = Bench(sizes, "cuda", torch.bfloat16, variants=False)
    kv_layer, table, lens = b.paged([length] * batch)
    q = b.rand(batch * length, sizes.num_q_heads, sizes.head_dim)       # [T, Hq, D]
    qsl = torch.arange(0, batch * length + 1, length, dtype=torch.int32, device="cuda")
    scale = sizes.head_dim ** -0.5
    cfg = default_prefill_config(sizes.head_dim, torch.bfloat16, q.device, length,
                                 sizes.num_q_heads // sizes.num_kv_heads, scale, block_size)
    out = torch.empty_like(q)

    def run():
        paged_prefill_attention(q, kv_layer, qsl, lens, table, scale, length, out=out,
                                config=cfg)

    stem = raw_dir / f"prefill_pc_{case}_bs{block_size}"
    result = {"case": case, "block_size": block_size, "config": str(cfg),
              "interval": interval, "launches": launches}
    try:
        mode = f"pcsampling:interval={interval}" if interval > 0 else "pcsampling"
        proton.start(str(stem), backend="cupti", mode=mode)
        for _ in range(launches):            # the first compiles and loads the module
            run()
        torch.cuda.synchronize()
        proton.finalize()
    except Exception as e:  # noqa: BLE001 - reported in the JSON, the timing still runs
        result["error"] = f"{type(e).__name__}: {e}"[:500]
    ref = paged_prefill_attention_ref(q, kv_layer, qsl, lens, table, scale, length)
    run()
    result["rel_err"] = float(((out.float() - ref.float()).norm() / ref.float().norm()).item())
    result["ms"] = round(time_ms(run, True), 4)
    k, v = b.dense_kv(kv_layer, table, [length] * batch)
    q4 = q.view(batch, length, sizes.num_q_heads, sizes.head_dim).transpose(1, 2).contiguous()
    result["sdpa_ms"] = round(time_ms(lambda: F.scaled_dot_product_attention(
        q4, k, v, is_causal=True, scale=scale, enable_gqa=True), True), 4)
    written = sorted(raw_dir.glob(stem.name + "*"))
    if "error" not in result:
        if not written:
            result["error"] = f"the profiler wrote no {stem.name}.* in {raw_dir}"
        else:
            tree = json.loads(written[0].read_text())
            lines = line_stalls(tree, "attention_prefill")
            total = sum(r.samples for r in lines)
            result["samples"] = total
            result["lines"] = [r.row(total) for r in lines[:top]]
            result["reasons"] = reason_totals(lines)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="4x2k,1x8k", help="cases of bench/kernels.py's prefill")
    ap.add_argument("--block-size", type=int, default=CUDA_BLOCK_SIZE,
                    help=f"KV page size in tokens (default {CUDA_BLOCK_SIZE}, the engine's on "
                         "CUDA)")
    ap.add_argument("--interval", type=int, default=0,
                    help="the profiler's PC-sampling interval (0: its default)")
    ap.add_argument("--launches", type=int, default=20)
    ap.add_argument("--top", type=int, default=40, help="source lines kept per case")
    ap.add_argument("--out-dir", default=None, help="default: bench/results")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)     # a child's single case
    ap.add_argument("--raw-dir", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("prefill_stalls needs a CUDA GPU (PC sampling runs on the device)")
    if a.block_size <= 0 or a.block_size & (a.block_size - 1):
        sys.exit(f"--block-size must be a positive power of two, got {a.block_size}")
    if a.one:                                               # the child: print one JSON line
        res = one_case(a.one, a.block_size, a.interval, a.launches, a.top, Path(a.raw_dir))
        print("RESULT " + json.dumps(res), flush=True)
        return
    out_dir = Path(a.out_dir) if a.out_dir else Path(__file__).resolve().parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = Path(tempfile.mkdtemp(prefix="prefill-stalls-", dir=out_dir))
    results = []
    for case in a.cases.split(","):
        print(f"[{case}] profiling ({a.launches} launches, interval {a.interval})", flush=True)
        cmd = [sys.executable, __file__, "--one", case, "--block-size", str(a.block_size),
               "--interval", str(a.interval), "--launches", str(a.launches),
               "--top", str(a.top), "--raw-dir", str(raw)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        got = [ln[7:] for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        res = json.loads(got[-1]) if got else {
            "case": case, "error": f"exit {p.returncode}: {p.stderr.strip()[-500:]}"}
        results.append(res)
        print(f"[{case}] {res.get('ms')} ms (SDPA {res.get('sdpa_ms')}), "
              f"{res.get('samples', 0):.0f} samples {res.get('error', '')}", flush=True)
        for r in res.get("lines", [])[:12]:
            print(f"    {r['share']:.3f}  {r['frame'][-70:]}  {r['stalls']}", flush=True)
    name = torch.cuda.get_device_name()
    doc = {"bench": "prefill_stalls", "hardware": name, "commit": git_commit(),
           "date": dt.date.today().isoformat(), "command": "python " + " ".join(sys.argv),
           "ceilings": {}, "metrics": {}, "rows": []}
    for res in results:
        c = res["case"]
        for key, field_ in (("ms", f"prefill_{c}_ms"), ("sdpa_ms", f"prefill_{c}_sdpa_ms")):
            if res.get(key) is not None:
                doc["metrics"][field_] = {"value": res[key], "goal": None}
        base = {k: res.get(k) for k in ("case", "block_size", "config", "ms", "sdpa_ms",
                                        "rel_err", "samples", "error") if k in res}
        doc["rows"] += [{**base, "kind": "line", **r} for r in res.get("lines", [])]
        doc["rows"] += [{**base, "kind": "reason", "reason": k, "samples": v}
                        for k, v in res.get("reasons", {}).items()]
        if not res.get("lines"):
            doc["rows"].append({**base, "kind": "case"})
    stem = out_dir / f"prefill_stalls-{hardware_tag(name)}-{doc['date'].replace('-', '')}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {stem}.json (raw profiles in {raw})")


if __name__ == "__main__":
    main()
