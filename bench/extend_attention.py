"""Attention of a resumed turn's extend: a few new tokens on a long cached context.

Times `paged_prefill_attention` as the engine calls it (no config) with the split-K path
(kernels/attention_extend_split.py, AGENTKV_EXTEND_SPLIT=auto) and without it (=off, the
default until this bench has run on a GPU: the prefill kernels, one program per query tile x
sequence x kv head), and torch's
scaled_dot_product_attention on the same tokens with dense K/V as a peer, per (sequences x new
tokens, context). Llama-3-8B heads (32 query, 8 kv, head_dim 128) in bf16; the ceiling is the
device copy bandwidth measured in the same run, against which the K/V bytes read are set.

    python bench/extend_attention.py                  # a GPU
    python bench/extend_attention.py --smoke          # CPU (interpreter), tiny sizes

writes bench/results/extend_attention-<hardware>-<date>.json (bench/README.md); metrics
`extend_attn_<case>_split_speedup` (off / auto time) per case.
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
from kernels.attention_extend_split import auto_splits  # noqa: E402
from kernels.attention_prefill import paged_prefill_attention  # noqa: E402

CASES = {"1x32_ctx4k": (1, 32, 4096), "1x32_ctx8k": (1, 32, 8192),
         "1x128_ctx8k": (1, 128, 8192), "4x64_ctx8k": (4, 64, 8192), "1x512_ctx8k": (1, 512, 8192)}
SMOKE = {"1x8_ctx256": (1, 8, 256)}


def time_ms(fn, device: str, reps: int = 50) -> float:
    """Median milliseconds of `reps` calls after three warm-up calls (engine_ceilings.timed)."""
    times = timed(fn, reps if device == "cuda" else 2, torch.device(device))
    return 1e3 * times[len(times) // 2]


def case_rows(name, seqs, new, ctx, hq, hkv, d, device, dtype) -> list[dict]:
    bs = 16
    g = torch.Generator().manual_seed(0)
    nb = ctx // bs
    kv = torch.randn((seqs * nb + 3, 2, bs, hkv, d), generator=g).to(device, dtype)
    table = torch.randperm(seqs * nb + 3, generator=g)[:seqs * nb].view(seqs, nb)
    table = table.to(device=device, dtype=torch.int32)
    lens = torch.full((seqs,), ctx, dtype=torch.int32, device=device)
    qsl = torch.arange(0, seqs * new + 1, new, dtype=torch.int32, device=device)
    q = torch.randn((seqs * new, hq, d), generator=g).to(device, dtype)
    out = torch.empty_like(q)
    scale = d ** -0.5
    kv_bytes = seqs * ctx * 2 * hkv * d * q.element_size()
    rows = []
    before = os.environ.get("AGENTKV_EXTEND_SPLIT")
    try:
        for mode in ("off", "auto"):
            os.environ["AGENTKV_EXTEND_SPLIT"] = mode
            splits = auto_splits(q, kv, lens, table, new)
            ms = time_ms(lambda: paged_prefill_attention(q, kv, qsl, lens, table, scale, new,
                                                         out=out), device)
            rows.append({"op": "extend_attn", "case": name, "variant": f"split_{mode}",
                         "splits": splits, "ms": round(ms, 4),
                         "kv_GBps": round(kv_bytes / ms / 1e6, 1)})
    finally:
        if before is None:
            os.environ.pop("AGENTKV_EXTEND_SPLIT", None)
        else:
            os.environ["AGENTKV_EXTEND_SPLIT"] = before
    # the peer: SDPA on dense K/V [seqs, Hq, ctx, D] with the extend's causal mask
    k = torch.randn((seqs, hq, ctx, d), generator=g).to(device, dtype)
    v = torch.randn_like(k)
    qd = q.view(seqs, new, hq, d).transpose(1, 2)                       # [seqs, Hq, new, D]
    mask = (torch.arange(ctx, device=device)[None, :]
            <= torch.arange(ctx - new, ctx, device=device)[:, None])  # [new, ctx]
    ms = time_ms(lambda: F.scaled_dot_product_attention(qd, k, v, attn_mask=mask, scale=scale),
                 device)
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
    for name, (seqs, new, ctx) in (SMOKE if a.smoke else CASES).items():
        r = case_rows(name, seqs, new, ctx, *heads, device, dtype)
        rows += r
        off, auto = r[0]["ms"], r[1]["ms"]
        metrics[f"extend_attn_{name}_split_speedup"] = {"value": round(off / auto, 3),
                                                       "goal": None}
        print(f"{name}: off {off:.4f} ms, auto {auto:.4f} ms ({r[1]['splits']} splits), "
              f"sdpa {r[2]['ms']:.4f} ms", flush=True)
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
