"""How far two schedules of the same tokens part in bf16: the noise floor of the tie check.

The same contexts are decoded greedily twice on one engine, with no KV reuse either time: one at
a time (batch 1), then all together (batched, different chunking). Nothing is restored from any
tier, so whatever differs is rounding from the order of the arithmetic. Reported: per context,
the largest difference of a next-token logprob present in both top-20 lists at the first step,
and every place where the two schedules chose different tokens, with the top-2 gap there.

    python bench/agent_noise.py --model shape:llama3-8b --dtype bf16   # writes JSON to stdout
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))          # before bench/ (bench/kernels.py is no package)
sys.path.append(str(REPO / "bench"))


def schedule_noise(engine, contexts: list[list[int]], new_tokens: int = 16) -> dict:
    from runtime import SamplingParams
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True, top_logprobs=20)
    t0 = time.perf_counter()
    engine.pool.enable_prefix_caching = False      # both schedules compute everything
    engine.pool.reset_prefix_cache()
    alone = [engine.generate([c], params)[0] for c in contexts]
    batched = engine.generate(contexts, params)
    rows = []
    for i, (a, b) in enumerate(zip(alone, batched)):
        la, lb = dict(a.top_logprobs[0]), dict(b.top_logprobs[0])
        common = set(la) & set(lb)
        row = {"context_tokens": len(contexts[i]),
               "first_step_max_logprob_diff": max((abs(la[t] - lb[t]) for t in common),
                                                  default=None),
               "common_top20": len(common), "part_at": None}
        for pos, (x, y) in enumerate(zip(a.token_ids, b.token_ids)):
            if x != y:
                (t1, l1), (t2, l2) = a.top_logprobs[pos][:2]
                row["part_at"] = {"position": pos, "tokens": [x, y],
                                  "top2_gap_alone": round(l1 - l2, 4)}
                break
        rows.append(row)
    diffs = [r["first_step_max_logprob_diff"] for r in rows
             if r["first_step_max_logprob_diff"] is not None]
    return {"contexts": len(contexts), "new_tokens": new_tokens,
            "max_first_step_logprob_diff": max(diffs, default=None),
            "schedules_parted": sum(1 for r in rows if r["part_at"]), "rows": rows,
            "seconds": round(time.perf_counter() - t0, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shape:llama3-8b")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--device", default="auto")
    p.add_argument("--contexts", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--max-context", type=int, default=8000)
    a = p.parse_args(argv)
    from agent_phases import model_info
    from agent_workload import WorkloadConfig, build_workload
    from runtime import Engine, EngineConfig
    wl = build_workload(WorkloadConfig(sessions=a.contexts, max_context_tokens=14_000),
                        model_info(a.model, a.dtype).vocab_size)
    contexts = [list(s.turns[0].input_ids[:a.max_context]) for s in wl.sessions]
    need = sum(len(c) + a.new_tokens for c in contexts) // 16 + 2 * len(contexts) + 16
    eng = Engine(EngineConfig(model=a.model, device=a.device, dtype=a.dtype,
                              num_gpu_blocks=need))
    out = {"model": a.model, "dtype": a.dtype, **schedule_noise(eng, contexts, a.new_tokens)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
