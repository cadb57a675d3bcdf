"""Attention of a resumed turn's extend: a few new tokens on a long cached context.

Times `paged_prefill_attention` as the engine calls it (no config) with the split-K path
(kernels/attention_extend_split.py, AGENTKV_EXTEND_SPLIT=auto) and without it (=off, the
default until this bench has run on a GPU: the prefill kernels, one program per query tile x
sequence x kv head), the split kernel at fixed split counts (`SWEEP`), and torch's
scaled_dot_product_attention on the same tokens with dense K/V as a peer, per case. A case is
groups of (sequences, new tokens, context): one group is a resumed turn alone; a turn's extend
beside other sessions' decodes (one new token each) is the mixed step an engine mostly runs,
where the split count `auto` picks sees the padded grid of every sequence (no SDPA peer there).
Llama-3-8B heads (32 query, 8 kv, head_dim 128) in bf16; the ceiling is the device copy
bandwidth measured in the same run, against which the K/V bytes read are set.

    python bench/extend_attention.py                  # a GPU
    python bench/extend_attention.py --smoke          # CPU (interpreter), tiny sizes

writes bench/results/extend_attention-<hardware>-<date>.json (bench/README.md); metrics
`extend_attn_<case>_split_speedup` (off / auto time) and `extend_attn_<case>_best_speedup`
(off / the fastest fixed split count) per case.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.append(str(Path(__file__).resolve().parent))

from kernels._triton import use_interpreter_without_cuda  # noqa: E402

use_interpreter_without_cuda()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench_common import git_commit, hardware_tag  # noqa: E402
from engine_ceilings import copy_bandwidth, timed  # noqa: E402
from kernels.attention_extend_split import (auto_splits,  # noqa: E402
                                            paged_extend_split_attention)
from kernels.attention_prefill import paged_prefill_attention  # noqa: E402

# name: groups of (sequences, new tokens, context)
CASES = {"1x32_ctx4k": [(1, 32, 4096)], "1x32_ctx8k": [(1, 32, 8192)],
         "1x128_ctx8k": [(1, 128, 8192)], "4x64_ctx8k": [(4, 64, 8192)],
         "1x512_ctx8k": [(1, 512, 8192)],
         "1x32_ctx8k+15dec_ctx4k": [(1, 32, 8192), (15, 1, 4096)],
         "1x128_ctx8k+31dec_ctx4k": [(1, 128, 8192), (31, 1, 4096)]}
SMOKE = {"1x8_ctx256": [(1, 8, 256)], "1x8_ctx256+2dec_ctx64": [(1, 8, 256), (2, 1, 64)]}
SWEEP = (2, 4, 8, 16)          # fixed split counts timed beside auto
SMOKE_SWEEP = (3,)


def time_ms(fn, device: str, reps: int = 50) -> float:
    """Median milliseconds of `reps` calls after three warm-up calls (engine_ceilings.timed)."""
    times = timed(fn, reps if device == "cuda" else 2, torch.device(device))
    return 1e3 * times[len(times) // 2]


def case_rows(name, groups, hq, hkv, d, device, dtype, sweep) -> list[dict]:
    bs = 16
    g = torch.Generator().manual_seed(0)
    news = [new for n, new, _ in groups for _ in range(n)]               # per sequence
    ctxs = [ctx for n, _, ctx in groups for _ in range(n)]
    seqs, width = len(news), max(ctxs) // bs
    total = sum(-(-c // bs) for c in ctxs)
    kv = torch.randn((total + 3, 2, bs, hkv, d), generator=g).to(device, dtype)
    perm = torch.randperm(total + 3, generator=g)
    table = torch.zeros((seqs, width), dtype=torch.int32)                # [seqs, width]
    used = 0
    for i, c in enumerate(ctxs):
        nb = -(-c // bs)
        table[i, :nb] = perm[used:used + nb]
        used += nb
    table = table.to(device)
    lens = torch.tensor(ctxs, dtype=torch.int32, device=device)
    qsl = torch.tensor([0] + news, dtype=torch.int32).cumsum(0).to(device, torch.int32)
    q = torch.randn((sum(news), hq, d), generator=g).to(device, dtype)  # [tokens, Hq, D]
    out = torch.empty_like(q)
    scale, longest = d ** -0.5, max(news)
    kv_bytes = sum(ctxs) * 2 * hkv * d * q.element_size()
    rows, first = [], []

    def row(variant, splits, fn):
        ms = time_ms(fn, device)
        if not first:                     # the prefill kernels' output: the others match it
            first.append(out.float().clone())
        err = ((out.float() - first[0]).norm() / first[0].norm()).item()
        rows.append({"op": "extend_attn", "case": name, "variant": variant, "splits": splits,
                     "ms": round(ms, 4), "kv_GBps": round(kv_bytes / ms / 1e6, 1),
                     "rel_err_vs_off": float(f"{err:.1e}")})

    before = os.environ.get("AGENTKV_EXTEND_SPLIT")
    try:
        for mode in ("off", "auto"):
            os.environ["AGENTKV_EXTEND_SPLIT"] = mode
            row(f"split_{mode}", auto_splits(q, kv, lens, table, longest),
                lambda: paged_prefill_attention(q, kv, qsl, lens, table, scale, longest,
                                                out=out))
    finally:
        if before is None:
            os.environ.pop("AGENTKV_EXTEND_SPLIT", None)
        else:
            os.environ["AGENTKV_EXTEND_SPLIT"] = before
    for n in sweep:
        row(f"split_{n}", n, lambda: paged_extend_split_attention(
            q, kv, qsl, lens, table, scale, longest, num_splits=n, out=out))
    if len(groups) == 1:
        # the peer: SDPA on dense K/V [seqs, Hq, ctx, D] with the extend's causal mask
        (n, new, ctx), = groups
        k = torch.randn((n, hq, ctx, d), generator=g).to(device, dtype)
        v = torch.randn_like(k)
        qd = q.view(n, new, hq, d).transpose(1, 2)                       # [seqs, Hq, new, D]
        mask = (torch.arange(ctx, device=device)[None, :]
                <= torch.arange(ctx - new, ctx, device=device)[:, None])  # [new, ctx]
        ms = time_ms(lambda: F.scaled_dot_product_attention(qd, k, v, attn_mask=mask,
                                                            scale=scale), device)
        rows.append({"op": "extend_attn", "case": name, "variant": "torch_sdpa_dense",
                     "ms": round(ms, 4)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, CPU allowed")
    ap.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    hw_name = torch.cuda.get_device_name() if cuda else "cpu"
    heads = (32, 8, 128) if not a.smoke else (8, 2, 64)
    dtype = torch.bfloat16 if cuda else torch.float32
    rows, metrics = [], {}
    for name, groups in (SMOKE if a.smoke else CASES).items():
        r = case_rows(name, groups, *heads, device, dtype, SMOKE_SWEEP if a.smoke else SWEEP)
        rows += r
        off, auto = r[0]["ms"], r[1]["ms"]
        fixed = [x for x in r if x["variant"] not in ("split_off", "split_auto",
                                                      "torch_sdpa_dense")]
        best = min(fixed, key=lambda x: x["ms"])
        metrics[f"extend_attn_{name}_split_speedup"] = {"value": round(off / auto, 3),
                                                       "goal": None}
        metrics[f"extend_attn_{name}_best_speedup"] = {"value": round(off / best["ms"], 3),
                                                      "goal": None}
        sdpa = [x["ms"] for x in r if x["variant"] == "torch_sdpa_dense"]
        print(f"{name}: off {off:.4f} ms, auto {auto:.4f} ms ({r[1]['splits']} splits), best "
              f"fixed {best['ms']:.4f} ms ({best['splits']} splits)"
              + (f", sdpa {sdpa[0]:.4f} ms" if sdpa else ""), flush=True)
    doc = {"bench": "extend_attention", "hardware": hw_name, "commit": git_commit(),
           "date": dt.date.today().isoformat(),
           "command": "python bench/extend_attention.py " + " ".join(
               sys.argv[1:] if argv is None else argv),
           "ceilings": {"copy_GBps": round(copy_bandwidth(torch.device(device)), 1)},
           "metrics": metrics, "rows": rows}
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"extend_attention-{hardware_tag(hw_name)}-{dt.date.today():%Y%m%d}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
