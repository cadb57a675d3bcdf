"""The engine bench's ceilings (copy bandwidth, matmul rate), measured in the run, and what a
Llama-family step must move and compute, from which its floors follow."""
from __future__ import annotations

import time

import torch


def timed(fn, reps: int, dev: torch.device) -> list[float]:
    """Seconds of each of `reps` calls (CUDA events on a GPU, host clock on a CPU)."""
    for _ in range(3):
        fn()
    out = []
    for _ in range(reps):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return sorted(out)


def copy_bandwidth(dev: torch.device) -> float:
    """GB/s of a large device copy (median of 20), counting bytes read plus bytes written."""
    n = (1 << 31) if dev.type == "cuda" else (1 << 27)
    a = torch.randn(n // 4, device=dev)
    b = torch.empty_like(a)
    times = timed(lambda: b.copy_(a), 20 if dev.type == "cuda" else 5, dev)
    return 2 * n / times[len(times) // 2] / 1e9


def matmul_tflops(dev: torch.device, dtype: torch.dtype) -> float:
    """TFLOP/s of an 8192^3 product on random data (median of 10; 1024^3 on a CPU)."""
    n = 8192 if dev.type == "cuda" else 1024
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    times = timed(lambda: a @ b, 10 if dev.type == "cuda" else 3, dev)
    return 2 * n ** 3 / times[len(times) // 2] / 1e12


def model_costs(eng) -> dict:
    """Bytes and FLOPs of the engine's model: every weight, the weights a decode step reads
    (all but the embedding table, unless it doubles as the output head), FLOPs per decoded
    token and per prefill, K/V bytes per token of context."""
    a = eng.arch
    params = sum(p.numel() for p in eng.model.parameters())
    elt = next(eng.model.parameters()).element_size()
    embed = eng.model.embed_tokens.weight.numel()
    head = 0 if a.tie_word_embeddings else eng.model.lm_head.weight.numel()
    non_embedding = params - embed - head
    logits_row = 2 * a.hidden_size * a.vocab_size

    def prefill_flops(tokens: int) -> float:
        attn = 2 * tokens * tokens * a.head_dim * a.num_heads * a.num_layers   # causal
        return 2 * non_embedding * tokens + logits_row + attn

    return {"weight_bytes": params * elt,
            "decode_weight_bytes": (params - (0 if a.tie_word_embeddings else embed)) * elt,
            "decode_flops_per_token": 2 * non_embedding + logits_row,
            "kv_bytes_per_token": eng.kv_spec.block_bytes // eng.kv_spec.block_size,
            "prefill_flops": prefill_flops}


def ideal_out_tok_s(costs: dict, ceilings: dict, inp: int, out: int, batch: int) -> float:
    """Output tok/s if every kernel ran at a ceiling: `batch` sequences decode together (K/V
    read at the copy rate at the mean context inp + out / 2; weights read or multiplied,
    whichever is slower), plus each request's prefill at the matmul rate."""
    copy = ceilings["copy_GBps"] * 1e9
    mm = ceilings["matmul_TFLOPs"] * 1e12
    kv = batch * (inp + out / 2) * costs["kv_bytes_per_token"] / copy
    step = kv + max(costs["decode_weight_bytes"] / copy, batch * costs["decode_flops_per_token"] / mm)
    per_token = step / batch + costs["prefill_flops"](inp) / mm / out
    return 1.0 / per_token
