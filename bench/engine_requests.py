"""The requests of the engine bench, shared with its transformers peer so both run the same ones."""
from __future__ import annotations

import torch


def rand_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """`n` prompts of `length` token ids drawn away from the vocabulary's ends."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab - 10, (n, length), generator=g).tolist()


def throughput_prompts(n: int, input_len: int, output_len: int, vocab: int) -> list[list[int]]:
    """The prompts of one throughput shape: a prefix of this list is a subset of the same
    requests, whatever n is."""
    return rand_prompts(n, input_len, vocab, seed=input_len * 7 + output_len)


def start_decode_batch(eng, batch: int, ctx: int, steps: int, seed: int) -> int:
    """Add `batch` requests of `ctx`-token prompts, run until every prompt is in and a few decode
    steps have passed; max_tokens outlasts the prefill steps (the first requests decode while
    the last ones prefill) plus `steps`, so the next `steps` steps decode the whole batch.
    Returns how many requests are running."""
    from runtime import SamplingParams
    prefill_steps = -(-batch * ctx // eng.config.max_num_batched_tokens) + 1
    params = SamplingParams(max_tokens=steps + 8 + prefill_steps, ignore_eos=True)
    for p in rand_prompts(batch, ctx, eng.arch.vocab_size, seed=seed):
        eng.add_request(p, params)
    while any(r.num_computed_tokens < r.num_prompt_tokens for r in eng.requests.values()):
        eng.step()
    for _ in range(3):
        eng.step()
    return len(eng.scheduler.running)
