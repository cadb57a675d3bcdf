"""Causal attention over a paged KV cache for a flattened batch of variable-length query chunks.

One launch serves a mixed step: sequences with one new token (decode), long prompt chunks
(prefill) and chunks extending an existing context (extend). The queries of sequence i sit at
positions seq_lens[i] - q_len_i ... seq_lens[i] - 1; their own K/V are already in the cache.
"""
from __future__ import annotations

import torch

from kernels._triton import check_device, kernel, next_power_of_2

tl = None  # triton.language, bound on the first launch (see kernels/_triton.py)


def check_attention_args(q: torch.Tensor, kv_layer: torch.Tensor, seq_lens: torch.Tensor,
                         block_tables: torch.Tensor) -> None:
    """Shape checks shared by the prefill and decode entry points."""
    if q.dim() != 3:
        raise ValueError(f"q must be [tokens, num_q_heads, head_dim]; got {tuple(q.shape)}")
    if kv_layer.dim() != 5 or kv_layer.shape[1] != 2:
        raise ValueError("kv_layer must be [num_blocks, 2, block_size, num_kv_heads, head_dim]; "
                         f"got {tuple(kv_layer.shape)}")
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = kv_layer.shape[3]
    if kv_layer.shape[4] != head_dim:
        raise ValueError(f"head_dim of q ({head_dim}) and kv_layer ({kv_layer.shape[4]}) differ")
    if num_q_heads % num_kv_heads != 0:
        raise ValueError(f"num_q_heads ({num_q_heads}) must be a multiple of num_kv_heads "
                         f"({num_kv_heads})")
    if block_tables.dim() != 2 or block_tables.shape[0] != seq_lens.shape[0]:
        raise ValueError(f"block_tables must be [num_seqs={seq_lens.shape[0]}, max_blocks]; "
                         f"got {tuple(block_tables.shape)}")


def gather_context(kv_layer: torch.Tensor, block_table: torch.Tensor, seq_len: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `seq_len` cached K and V rows of one sequence: two [seq_len, Hkv, D] tensors."""
    block_size = kv_layer.shape[2]
    num_blocks = (seq_len + block_size - 1) // block_size
    blocks = block_table[:num_blocks].long()                # [nb]
    kv = kv_layer[blocks]                                   # [nb, 2, bs, Hkv, D]
    k = kv[:, 0].reshape(-1, *kv.shape[-2:])[:seq_len]      # [seq_len, Hkv, D]
    v = kv[:, 1].reshape(-1, *kv.shape[-2:])[:seq_len]
    return k, v


def attend_one_sequence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
                        ) -> torch.Tensor:
    """Causal attention in float32 for the last q_len positions of one context.

    q: [q_len, Hq, D]; k, v: [seq_len, Hkv, D] -> [q_len, Hq, D] float32.
    """
    q_len, num_q_heads, _ = q.shape
    seq_len, num_kv_heads, _ = k.shape
    group = num_q_heads // num_kv_heads
    kf = k.float().repeat_interleave(group, dim=1)           # [seq_len, Hq, D]
    vf = v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), kf) * scale  # [Hq, q_len, seq_len]
    q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)
    k_pos = torch.arange(seq_len, device=q.device)
    future = k_pos[None, :] > q_pos[:, None]                 # [q_len, seq_len]
    scores = scores.masked_fill(future[None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, vf)           # [q_len, Hq, D]


def paged_prefill_attention_ref(q: torch.Tensor, kv_layer: torch.Tensor,
                                query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                                block_tables: torch.Tensor, scale: float, max_query_len: int,
                                out: torch.Tensor | None = None) -> torch.Tensor:
    """q: [num_tokens, Hq, D]; kv_layer: [num_blocks, 2, block_size, Hkv, D];
    query_start_loc: int32 [num_seqs + 1]; seq_lens: int32 [num_seqs] (context incl. new tokens);
    block_tables: int32 [num_seqs, max_blocks] -> out [num_tokens, Hq, D] in q's dtype."""
    check_attention_args(q, kv_layer, seq_lens, block_tables)
    if out is None:
        out = torch.empty_like(q)
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    for i, seq_len in enumerate(lens):
        s, e = starts[i], starts[i + 1]
        if e == s:
            continue
        if e - s > seq_len:
            raise ValueError(f"sequence {i} has {e - s} query tokens but seq_len {seq_len}")
        k, v = gather_context(kv_layer, block_tables[i], seq_len)
        out[s:e] = attend_one_sequence(q[s:e], k, v, scale).to(out.dtype)
    return out
