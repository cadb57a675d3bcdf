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
