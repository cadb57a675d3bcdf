"""Split-K (flash-decoding) attention for one query token per sequence over a paged KV cache.

The context of each sequence is cut into `num_splits` ranges; one program per (sequence, kv head,
split) reads its range of K/V once for all the query heads of its group, and writes a partial
output with its running max and sum. A second small kernel merges the splits (log-sum-exp).
"""
from __future__ import annotations

import torch

from kernels._triton import check_device, kernel, next_power_of_2
from kernels.attention_prefill import attend_one_sequence, check_attention_args, gather_context

tl = None  # triton.language, bound on the first launch (see kernels/_triton.py)

NUM_SMS_DEFAULT = 132  # H200


def paged_decode_attention_ref(q: torch.Tensor, kv_layer: torch.Tensor, seq_lens: torch.Tensor,
                               block_tables: torch.Tensor, scale: float,
                               num_splits: int | None = None,
                               out: torch.Tensor | None = None) -> torch.Tensor:
    """q: [num_seqs, Hq, D] (the token at position seq_lens[i] - 1); kv_layer: [num_blocks, 2,
    block_size, Hkv, D]; seq_lens: int32 [num_seqs]; block_tables: int32 [num_seqs, max_blocks]
    -> out [num_seqs, Hq, D] in q's dtype. `num_splits` only matters to the Triton version."""
    check_attention_args(q, kv_layer, seq_lens, block_tables)
    if q.shape[0] != seq_lens.shape[0]:
        raise ValueError(f"q has {q.shape[0]} sequences but seq_lens has {seq_lens.shape[0]}")
    if out is None:
        out = torch.empty_like(q)
    for i, seq_len in enumerate(seq_lens.tolist()):
        if seq_len < 1:
            raise ValueError(f"sequence {i} has seq_len {seq_len}; decode needs at least 1")
        k, v = gather_context(kv_layer, block_tables[i], seq_len)
        out[i:i + 1] = attend_one_sequence(q[i:i + 1], k, v, scale).to(out.dtype)
    return out
