"""transformers' own continuous batching (`generate_batch`) on the engine bench's requests.

    python bench/hf_batch_peer.py --requests 32 --input-len 1000 --output-len 1000 \
        --impls "paged|sdpa,sdpa" --out /tmp/hf.json

Builds a LlamaForCausalLM of the `llama3-8b` shape (bf16, random weights, no EOS id) on the GPU and
runs the first `--requests` prompts of the engine bench's throughput shape (bench/engine_requests.py)
through `model.generate_batch`, once per attention implementation, greedy, `max_new_tokens` =
output length. Two rates are written per run: over the whole call (its cache allocation and
warm-up included) and over the span transformers itself records between the first request
leaving the queue and the last one finishing (`GenerationOutput.lifespan`), the one the engine
bench compares against. The API differs between transformers versions: the arguments passed are
filtered by each function's signature, and the JSON records the version, the implementation the
model ended with, and which arguments were used.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.append(str(Path(__file__).resolve().parent))

from engine_requests import throughput_prompts  # noqa: E402
from runtime.models.shapes import init_random_, shape_config  # noqa: E402


def log(msg: str) -> None:
    print(f"[hf-peer] {msg}", file=sys.stderr, flush=True)


def accepted(fn, kwargs: dict) -> dict:
    """The kwargs `fn` takes (all of them when it has **kwargs)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def cb_config(**wanted):
    """A ContinuousBatchingConfig with the fields this version has, or None (older versions keep
    these settings on GenerationConfig)."""
    try:
        from transformers import ContinuousBatchingConfig
    except ImportError:
        try:
            from transformers.generation.configuration_utils import ContinuousBatchingConfig
        except ImportError:
            return None, {}
    names = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)} \
        if dataclasses.is_dataclass(ContinuousBatchingConfig) \
        else set(inspect.signature(ContinuousBatchingConfig).parameters)
    kept = {k: v for k, v in wanted.items() if k in names}
    return ContinuousBatchingConfig(**kept), kept


def build_model(impl: str, shape: str, device: str):
    from transformers import AutoModelForCausalLM
    cfg = shape_config(shape)
    t = time.perf_counter()
    with torch.device(device):
        kw = accepted(AutoModelForCausalLM.from_config,
                      {"dtype": torch.bfloat16, "torch_dtype": torch.bfloat16,
                       "attn_implementation": impl})
        if "dtype" in kw and "torch_dtype" in kw:
            kw.pop("torch_dtype")
        model = AutoModelForCausalLM.from_config(cfg, **kw)
    model = model.to(torch.bfloat16).eval()
    init_random_(model, seed=0)        # the engine bench's weight distribution (std 0.02)
    log(f"model built in {time.perf_counter() - t:.1f}s: "
        f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f}B params, "
        f"attn {model.config._attn_implementation}")
    return model


def run_impl(impl: str, prompts: list[list[int]], output_len: int, shape: str = "llama3-8b",
             device: str = "cuda") -> dict:
    import transformers
    from transformers import GenerationConfig
    row = {"impl": impl, "requests": len(prompts), "input_len": len(prompts[0]),
           "output_len": output_len, "transformers": transformers.__version__}
    model = build_model(impl, shape, device)
    gen = GenerationConfig(max_new_tokens=output_len, do_sample=False, eos_token_id=None,
                           pad_token_id=0)
    cbc, kept = cb_config(auto_switch_to_flash=False)
    kwargs = accepted(model.generate_batch, {"generation_config": gen,
                                             "continuous_batching_config": cbc,
                                             "max_new_tokens": output_len,
                                             "progress_bar": False})
    if cbc is None:
        kwargs.pop("continuous_batching_config", None)
    row["generate_batch_args"] = sorted(kwargs)
    row["continuous_batching_config"] = kept
    log(f"{impl}: warm-up (2 requests x 16 tokens)")
    warm = dict(kwargs)
    if "generation_config" in warm:
        warm["generation_config"] = GenerationConfig(max_new_tokens=16, do_sample=False,
                                                     eos_token_id=None, pad_token_id=0)
    if "max_new_tokens" in warm:
        warm["max_new_tokens"] = 16
    model.generate_batch(inputs=[p[:64] for p in prompts[:2]], **warm)
    sync(device)
    log(f"{impl}: {len(prompts)} requests, {len(prompts[0])} in / {output_len} out")
    t = time.perf_counter()
    out = model.generate_batch(inputs=prompts, **kwargs)
    sync(device)
    wall = time.perf_counter() - t
    results = list(out.values())
    tokens = sum(len(r.generated_tokens) for r in results)
    spans = [r.lifespan for r in results if getattr(r, "lifespan", (-1, -1))[0] > 0]
    row.update(seconds=wall, output_tokens=tokens, output_tok_s=tokens / wall,
               finished=len(results), errors=sum(1 for r in results if getattr(r, "error", None)),
               attn_implementation_used=model.config._attn_implementation)
    if spans:
        span = max(e for _, e in spans) - min(s for s, _ in spans)
        row.update(steady_seconds=span, steady_output_tok_s=tokens / span)
    log(f"{impl}: {tokens} tokens in {wall:.1f}s ({row['output_tok_s']:.0f} tok/s; "
        f"steady {row.get('steady_output_tok_s', float('nan')):.0f} tok/s)")
    del model, out
    if device != "cpu":
        torch.cuda.empty_cache()
    return row


def sync(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=1000)
    ap.add_argument("--output-len", type=int, default=1000)
    ap.add_argument("--impls", default="paged|sdpa,sdpa")
    ap.add_argument("--out", required=True)
    ap.add_argument("--shape", default="llama3-8b", help="a shape of runtime/models/shapes.py")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    if args.device != "cpu" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: the peer's timings are for the GPU (--device cpu to "
                         "try it at a small --shape)")
    vocab = shape_config(args.shape).vocab_size
    prompts = throughput_prompts(args.requests, args.input_len, args.output_len, vocab)
    rows = []
    for impl in args.impls.split(","):
        try:
            rows.append(run_impl(impl, prompts, args.output_len, args.shape, args.device))
        except Exception as e:  # a version without this implementation: recorded, not fatal
            log(f"{impl} failed: {type(e).__name__}: {e}")
            rows.append({"impl": impl, "error": f"{type(e).__name__}: {e}"})
            if args.device != "cpu":
                torch.cuda.empty_cache()
        Path(args.out).write_text(json.dumps({"peer": "transformers generate_batch",
                                              "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
