"""Is a place where two 16-bit runs part a tie within rounding? The tie rule of the replay.

Two ways of computing the same KV (one prefill, or prefill plus the decode steps that reused it)
round differently in bf16, so greedy runs may part where the most likely tokens are too close
for bf16 to order. At each place (`Divergence`) the next token's top-20 log-probabilities are
computed from scratch twice: by the run's own model and dtype, and by a reference with the same
weights in fp32 (`reference_model`: a `shape:` model's weights drawn in the run's dtype and
upcast exactly; a checkpoint loaded in fp32). Then:

- `band`: how far bf16 rounding moved the gaps between the top tokens at this very place, the
  range of `logprob_run(t) - logprob_fp32(t)` over the tokens in both top-20 lists;
- `ref_margin`: how far below the fp32 top token the less likely of the two runs' tokens sits;
- a tie: both tokens in the fp32 top-20 and `ref_margin <= band`, i.e. the two tokens tie with
  the most likely one closer than rounding moves them. A wrong KV block gives a token far down
  the fp32 list, or a margin well beyond the band.

Without a reference (fp32 runs, or none could be built) the rule is the run's own top-2: both
tokens are its two most likely and their gap is <= 2**-4 (a few bf16 ulps of a logit).
"""
from __future__ import annotations

from agent_checks import Divergence, TokenComparison

TIE_GAP = 2.0 ** -4
TOP_K = 20                                 # the sampler's largest top_logprobs

Top = list[tuple[int, float]]              # (token id, logprob), most likely first


def reference_model(model: str, dtype: str) -> str | None:
    """The fp32 model with exactly the weights of `model` in `dtype`; None when `dtype` is fp32."""
    if dtype in ("fp32", "float32"):
        return None
    if model.startswith("shape:"):
        short = {"bfloat16": "bf16", "float16": "fp16"}.get(dtype, dtype)
        return f"{model.partition('@')[0]}@{short}"
    return model                           # a 16-bit checkpoint upcasts exactly


def top_logprobs(engine, contexts: list[list[int]], k: int = TOP_K) -> list[Top]:
    """The next token's top-k (id, logprob) after each context, every context from scratch."""
    from runtime import SamplingParams
    engine.pool.reset_prefix_cache()
    outs = engine.generate(contexts, SamplingParams(max_tokens=1, ignore_eos=True,
                                                    top_logprobs=k))
    return [[(int(t), float(lp)) for t, lp in o.top_logprobs[0]] for o in outs]


def judge(d: Divergence, run: Top, ref: Top | None) -> None:
    """Fill in the divergence's top2 / gap (the run's own), band / ref_margin and is_tie."""
    (t1, l1), (t2, l2) = run[:2]
    d.top2 = [(t1, l1), (t2, l2)]
    d.gap = float(l1 - l2)
    pair = {d.token_a, d.token_b}
    if ref is None:
        d.rule = "top-2 gap <= 2^-4"
        d.is_tie = pair <= {t1, t2} and d.gap <= TIE_GAP
        return
    d.rule = "fp32 margin <= bf16 band"
    own, exact = dict(run), dict(ref)
    eps = [own[t] - exact[t] for t in own.keys() & exact.keys()]
    d.band = float(max(eps) - min(eps)) if eps else 0.0
    d.ref_top2 = [ref[0], ref[1]]
    if pair <= exact.keys():
        d.ref_margin = float(ref[0][1] - min(exact[t] for t in pair))
    d.is_tie = d.ref_margin is not None and d.ref_margin <= d.band


def divergences(comparisons: list[TokenComparison], counted_only: bool = False
                ) -> list[Divergence]:
    return [d for c in comparisons if c.counted or not counted_only for d in c.divergences]


def run_tops(comparisons: list[TokenComparison], engine) -> list[Top]:
    divs = divergences(comparisons)
    return top_logprobs(engine, [d.context for d in divs]) if divs else []


def check_ties(comparisons: list[TokenComparison], run: list[Top],
               ref: dict[int, Top] | None = None, log=print) -> None:
    """Judge every divergence from the run's tops (`run_tops`, in `divergences` order) and the
    reference's, keyed by the divergence's index there (missing: judged by the top-2 rule)."""
    for i, (d, top) in enumerate(zip(divergences(comparisons), run)):
        judge(d, top, None if ref is None else ref.get(i))
        extra = (f", fp32 margin {d.ref_margin if d.ref_margin is None else round(d.ref_margin, 4)}"
                 f" vs band {d.band:.4f}" if d.band is not None else "")
        log(f"[check] {d.session} turn {d.turn} token {d.position}: {d.token_a} vs "
            f"{d.token_b}, top-2 gap {d.gap:.4f}{extra} -> {'tie' if d.is_tie else 'NOT A TIE'}")


def reference_tops(comparisons: list[TokenComparison], engine) -> dict[int, Top]:
    """The reference engine's tops of the counted divergences (the others keep the top-2 rule)."""
    divs = divergences(comparisons)
    want = [i for i, d in enumerate(divs) if _counted(comparisons, d)]
    if not want:
        return {}
    return dict(zip(want, top_logprobs(engine, [divs[i].context for i in want])))


def _counted(comparisons: list[TokenComparison], d: Divergence) -> bool:
    return any(c.counted and any(x is d for x in c.divergences) for c in comparisons)
