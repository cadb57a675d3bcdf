"""Quick GPU check of the default prefill attention kernel before the full kernel benchmark:
the benchmark's two prefill shapes and one mixed batch, each checked against the torch reference
(poisoned output, relative error) and the two shapes timed against SDPA the way
bench/kernels.py times them. Exit status 1 on a wrong result, so a device script can fall back
(AGENTKV_PREFILL_KERNEL=triton) before it spends time on the full run.

    timeout 150 python bench/prefill_smoke.py
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels.attention_prefill import (  # noqa: E402
    default_prefill_config, paged_prefill_attention, paged_prefill_attention_ref)

HQ, HKV, D, BS = 32, 8, 128, 16
CASES = {"4x2k": [(2048, 2048)] * 4, "1x8k": [(8192, 8192)],
         "mixed": [(1, 1), (1, 45), (37, 37), (10, 70), (130, 260), (1, 129), (33, 161),
                   (300, 1030), (200, 1000), (96, 96)]}


def paged_case(seqs: list[tuple[int, int]], gen: torch.Generator):
    """Random q and a paged cache with blocks in random order (as bench/kernels.py builds it)."""
    blocks = [math.ceil(L / BS) for _, L in seqs]
    num_blocks = sum(blocks) + 8
    cache = torch.randn((num_blocks, 2, 2, BS, HKV, D), generator=gen).to("cuda", torch.bfloat16)
    kv_layer = cache[:, 1]
    perm = torch.randperm(num_blocks, generator=gen)
    table = torch.zeros((len(seqs), max(blocks)), dtype=torch.int32)
    used = 0
    for i, nb in enumerate(blocks):
        table[i, :nb] = perm[used:used + nb]
        used += nb
    q_lens = [q for q, _ in seqs]
    q = torch.randn((sum(q_lens), HQ, D), generator=gen).to("cuda", torch.bfloat16)
    qsl = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32)
    lens = torch.tensor([L for _, L in seqs], dtype=torch.int32)
    return q, kv_layer, qsl.cuda(), lens.cuda(), table.cuda(), max(q_lens)


def main() -> int:
    import triton.testing
    gen = torch.Generator().manual_seed(0)
    scale = D ** -0.5
    cfg = default_prefill_config(D, torch.bfloat16, torch.device("cuda"), 8192, HQ // HKV, scale)
    print(f"{torch.cuda.get_device_name()}: default prefill config {cfg}", flush=True)
    ok = True
    for name, seqs in CASES.items():
        q, kv_layer, qsl, lens, table, max_q = paged_case(seqs, gen)
        out = torch.full_like(q, float("nan"))
        paged_prefill_attention(q, kv_layer, qsl, lens, table, scale, max_q, out=out)
        ref = paged_prefill_attention_ref(q, kv_layer, qsl, lens, table, scale, max_q)
        err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
        good = not torch.isnan(out).any().item() and err < 2e-2
        ok &= good
        line = f"  {name}: rel err {err:.2e} {'ok' if good else 'WRONG'}"
        if good and name != "mixed":
            batch, length = len(seqs), seqs[0][0]
            ms = triton.testing.do_bench(lambda: paged_prefill_attention(
                q, kv_layer, qsl, lens, table, scale, max_q, out=out),
                warmup=25, rep=100, return_mode="median")
            nb = math.ceil(length / BS)
            kv = kv_layer[table[:, :nb].long()]
            k = kv[:, :, 0].flatten(1, 2)[:, :length].transpose(1, 2).contiguous()
            v = kv[:, :, 1].flatten(1, 2)[:, :length].transpose(1, 2).contiguous()
            q4 = q.view(batch, length, HQ, D).transpose(1, 2).contiguous()
            sdpa = triton.testing.do_bench(lambda: F.scaled_dot_product_attention(
                q4, k, v, is_causal=True, scale=scale, enable_gqa=True),
                warmup=25, rep=100, return_mode="median")
            flops = 4 * batch * HQ * D * length * (length + 1) // 2
            line += (f"; {ms:.4f} ms ({flops / ms / 1e9:.0f} TFLOP/s), SDPA {sdpa:.4f} ms: "
                     f"{sdpa / ms:.3f}x")
        print(line, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
