"""Token sampling for a batch: greedy, temperature, top-k, top-p, per-request seeds, logprobs."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.config import SamplingParams


@dataclass
class SampleResult:
    token_ids: list[int]              # one per row
    logprobs: list[float] | None      # log p(chosen) under the model's raw distribution
    top: list[list[tuple[int, float]]] | None = None   # per row: the k most likely (id, logprob)


def _filter_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
                        ) -> torch.Tensor:
    """logits [n, V]; top_k [n] (0 = off); top_p [n] -> logits with the tail masked to -inf."""
    sorted_logits, idx = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[-1]
    ranks = torch.arange(vocab, device=logits.device).expand_as(sorted_logits)
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab)).unsqueeze(1)
    mask = ranks >= k
    probs = sorted_logits.masked_fill(mask, float("-inf")).softmax(dim=-1)
    cum = probs.cumsum(dim=-1) - probs          # mass strictly before each token
    mask |= cum >= top_p.unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(mask, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)


def sample(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None]) -> SampleResult:
    """logits [n, vocab] float32 -> one token per row."""
    n = logits.shape[0]
    temps = [p.temperature for p in params]
    greedy_tokens = logits.argmax(dim=-1)
    if all(t == 0.0 for t in temps):
        tokens = greedy_tokens
    else:
        dev = logits.device
        t = torch.tensor([x if x > 0 else 1.0 for x in temps], device=dev).unsqueeze(1)
        top_k = torch.tensor([p.top_k for p in params], device=dev)
        top_p = torch.tensor([p.top_p for p in params], device=dev)
        scaled = _filter_top_k_top_p(logits / t, top_k, top_p)
        probs = scaled.softmax(dim=-1)
        tokens = greedy_tokens.clone()
        unseeded = [i for i in range(n) if temps[i] > 0 and generators[i] is None]
        if unseeded:
            rows = torch.tensor(unseeded, device=dev)
            tokens[rows] = torch.multinomial(probs[rows], 1).squeeze(1)
        for i in range(n):
            if temps[i] > 0 and generators[i] is not None:
                g = generators[i]
                # Draw on the generator's device, then move: seeded output is device-independent.
                p = probs[i].to(g.device)
                tokens[i] = torch.multinomial(p, 1, generator=g).to(dev)[0]
    logprobs = top = None
    if any(p.logprobs or p.top_logprobs for p in params):
        all_lp = logits.log_softmax(dim=-1)
        logprobs = all_lp.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()
        k = max(p.top_logprobs for p in params)
        if k:
            vals, ids = all_lp.topk(k, dim=-1)
            top = [[(i, v) for i, v in zip(ir[:p.top_logprobs], vr[:p.top_logprobs])]
                   for ir, vr, p in zip(ids.tolist(), vals.tolist(), params)]
    return SampleResult(tokens.tolist(), logprobs, top)
