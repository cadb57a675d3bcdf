"""Split-K attention for a few short query chunks on long contexts (a resumed turn's extend).

The prefill kernels give one program (or work item) per (query tile, sequence, kv head): a
32-token extend of one sequence with 8 kv heads is 8 programs, each walking the whole context,
on a GPU of 132 SMs. On an H100 an 8B model's extend of 32 tokens took 9.2 ms of GPU time on a
4K context and 12.1 ms on an 8K one: about 0.75 ms per 1K of context for 32 layers, where
reading that much K/V takes a twentieth of it. Here each (query tile, sequence, kv head) is cut
into `num_splits` key ranges, one program each, as flash-decoding does for one token; every
program writes its rows' partial output and log-sum-exp, and the decode kernels' merge
(`attention_decode._decode_reduce_kernel`, one program per token and query head) combines them.

Same arguments and result as `attention_prefill.paged_prefill_attention`, which dispatches here
with AGENTKV_EXTEND_SPLIT=auto when its launch would leave most SMs idle
(`choose_extend_splits`); the torch reference is the prefill one. AGENTKV_EXTEND_SPLIT=off
turns it off. On an H100 (`bench/extend_attention.py`, per layer, Llama-3-8B heads, bf16) it
took a 32-token extend on an 8K context from 0.25 to 0.08-0.09 ms, 128 tokens from 0.25 to
0.12 ms, and a 32-token extend beside 15 decodes from 0.25 to 0.20 ms. The split count comes
from host-known sizes only (query tiles, sequences, kv heads, the longest query and the block
table's width), so a CUDA graph captured for a step shape serves every step of it.
"""
from __future__ import annotations

import os

import torch

from kernels._triton import interpreter_needs_f32_dot, kernel, next_power_of_2
from kernels.attention_decode import _decode_reduce_kernel, _num_sms
from kernels.attention_prefill import (LOG2E, _attend_range, _item_span, _online_softmax_start,
                                      _query_tile, kernel_io, paged_prefill_attention_ref)
from kernels.prefill_config import PrefillConfig, triton_prefill_config

tl = None  # triton.language, bound on the first launch (see kernels/_triton.py)

MIN_TILES_PER_SPLIT = 4     # key tiles a split walks at least (its prologue and merge stay small)
MAX_SPLITS = 32
SHORT_CHUNK_TOKENS = 512    # longest query that is split in two even when the items fill the GPU


def paged_extend_split_attention_ref(q: torch.Tensor, kv_layer: torch.Tensor,
                                     query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                                     block_tables: torch.Tensor, scale: float,
                                     max_query_len: int, num_splits: int | None = None,
                                     out: torch.Tensor | None = None) -> torch.Tensor:
    """The split kernel's result is the prefill attention's: `paged_prefill_attention_ref`
    (`num_splits` only matters to the Triton version)."""
    return paged_prefill_attention_ref(q, kv_layer, query_start_loc, seq_lens, block_tables,
                                       scale, max_query_len, out)


def split_choice() -> str:
    """AGENTKV_EXTEND_SPLIT: "auto" (default: split launches that would leave SMs idle) or
    "off" (never split; the prefill kernels as they are)."""
    choice = os.environ.get("AGENTKV_EXTEND_SPLIT", "auto")
    if choice not in ("auto", "off"):
        raise ValueError(f"AGENTKV_EXTEND_SPLIT must be auto or off; got {choice!r}")
    return choice


def choose_extend_splits(num_items: int, max_context: int, block_n: int, num_sms: int,
                         max_query_len: int | None = None) -> int:
    """Key splits per (query tile, sequence, kv head): as many as keep the launch within one
    wave (`num_sms // num_items` programs per item: a second, partial wave costs as long as a
    full one), each split at least MIN_TILES_PER_SPLIT key tiles of the longest possible
    context (`max_context`, the block table's width in tokens: an upper bound known without
    reading seq_lens back). A batch of chunks of at most SHORT_CHUNK_TOKENS tokens
    (`max_query_len`) is split in two even when its items fill the GPU: its items are uneven
    (a resumed turn's extend on a long context beside decodes of shorter ones, query tiles
    of sequences shorter than the longest are empty), and halving the longest ones shortens
    the launch (H100, bench/extend_attention.py: 32 + 15 decodes 0.25 -> 0.20 ms, 128 + 31
    decodes 0.63 -> 0.35 ms, one 512-token chunk on 8K unchanged)."""
    if num_items <= 0:
        return 1
    want = num_sms // num_items
    if want < 2 and max_query_len is not None and max_query_len <= SHORT_CHUNK_TOKENS:
        want = 2
    by_length = max_context // (MIN_TILES_PER_SPLIT * block_n)
    return max(1, min(want, by_length, MAX_SPLITS))


@kernel(do_not_specialize=("num_m_tiles", "num_seqs", "num_splits", "stride_bt"))
def _extend_split_kernel(
    q_ptr, kv_ptr, mid_o_ptr, mid_lse_ptr, qsl_ptr, seq_lens_ptr, bt_ptr,
    qk_scale, num_m_tiles, num_seqs, num_splits,
    stride_qt, stride_qh, stride_kv_block, stride_kv_kv, stride_bt,
    NUM_KV_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, POS_SCALE: tl.constexpr,
    PRECISION: tl.constexpr, F32_DOT: tl.constexpr,
):
    # Program (item, split): item as in the prefill kernel (query tile x sequence x kv head;
    # rows are TOKENS tokens x GROUP_PAD query heads), split = its share of the tile's keys.
    TOKENS: tl.constexpr = BLOCK_M // GROUP_PAD
    pid = tl.program_id(0)
    split = tl.program_id(1)
    pid_m = pid // (num_seqs * NUM_KV_HEADS)
    seq = (pid // NUM_KV_HEADS) % num_seqs
    kvh = pid % NUM_KV_HEADS
    q_start, q_len, tile0, ctx_before, diag_start, kv_end = _item_span(
        qsl_ptr, seq_lens_ptr, seq, pid_m, TOKENS)
    if tile0 < q_len:
        q, q_pos, tok64, head, row_ok = _query_tile(
            q_ptr, q_start, q_len, ctx_before, tile0, kvh, stride_qt, stride_qh,
            GROUP, GROUP_PAD, HEAD_DIM, BLOCK_M, F32_DOT)
        d = tl.arange(0, HEAD_DIM)
        m_i, l_i, acc = _online_softmax_start(BLOCK_M, HEAD_DIM)
        bt_row = bt_ptr + seq.to(tl.int64) * stride_bt
        # this split's keys [lo, hi) of the tile's [0, kv_end), whole BLOCK_N tiles each; keys
        # below full_end are visible to every row, the rest take the causal mask
        split_len = tl.cdiv(tl.cdiv(kv_end, num_splits), BLOCK_N) * BLOCK_N
        lo = split * split_len
        hi = tl.minimum(lo + split_len, kv_end)
        full_end = (diag_start // BLOCK_N) * BLOCK_N
        mid = tl.maximum(lo, tl.minimum(hi, full_end))
        acc, l_i, m_i = _attend_range(
            acc, l_i, m_i, q, q_pos, kv_ptr, bt_row, lo, mid, kv_end, qk_scale,
            stride_kv_block, stride_kv_kv, kvh * HEAD_DIM,
            NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, BLOCK_N, False, POS_SCALE, PRECISION, F32_DOT)
        acc, l_i, m_i = _attend_range(
            acc, l_i, m_i, q, q_pos, kv_ptr, bt_row, mid, hi, hi, qk_scale,
            stride_kv_block, stride_kv_kv, kvh * HEAD_DIM,
            NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, BLOCK_N, True, POS_SCALE, PRECISION, F32_DOT)
        # partials: mid_o [num_tokens, Hq, num_splits, HEAD_DIM] (normalised by this split's
        # sum), mid_lse [num_tokens, Hq, num_splits] in log2 units; a split with no key for a
        # row (past its causal end, or past kv_end) weighs nothing in the merge
        has = l_i > 0.0
        o = acc / tl.where(has, l_i, 1.0)[:, None]
        lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
        row = (tok64 * (NUM_KV_HEADS * GROUP) + head) * num_splits + split
        tl.store(mid_o_ptr + row[:, None] * HEAD_DIM + d[None, :], o, mask=row_ok[:, None])
        tl.store(mid_lse_ptr + row, lse, mask=row_ok)


def paged_extend_split_attention(q: torch.Tensor, kv_layer: torch.Tensor,
                                 query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                                 block_tables: torch.Tensor, scale: float, max_query_len: int,
                                 num_splits: int | None = None, out: torch.Tensor | None = None,
                                 config: PrefillConfig | None = None) -> torch.Tensor:
    """Triton version of `paged_extend_split_attention_ref`. With num_splits None the count
    comes from `choose_extend_splits`; 1 still runs the split kernel (and the merge)."""
    q, out = kernel_io(q, kv_layer, out, seq_lens, block_tables, query_start_loc)
    num_tokens, num_q_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, _ = kv_layer.shape
    if num_tokens == 0 or max_query_len == 0:
        return out
    cfg = config or split_config(head_dim, q.dtype, q.device)
    group = num_q_heads // num_kv_heads
    group_pad = next_power_of_2(group)
    block_m = max(cfg.block_m, group_pad, 16)
    num_m_tiles = -(-max_query_len // (block_m // group_pad))
    num_seqs = seq_lens.shape[0]
    items = num_m_tiles * num_seqs * num_kv_heads
    if num_splits is None:
        num_splits = choose_extend_splits(items, block_tables.shape[1] * block_size,
                                          cfg.block_n, _num_sms(q.device))
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1; got {num_splits}")
    mid_o = torch.empty((num_tokens, num_q_heads, num_splits, head_dim), dtype=torch.float32,
                        device=q.device)
    mid_lse = torch.empty((num_tokens, num_q_heads, num_splits), dtype=torch.float32,
                          device=q.device)
    _extend_split_kernel[(items, num_splits)](
        q, kv_layer, mid_o, mid_lse, query_start_loc, seq_lens, block_tables,
        scale * LOG2E, num_m_tiles, num_seqs, num_splits,
        q.stride(0), q.stride(1), kv_layer.stride(0), kv_layer.stride(1),
        block_tables.stride(0),
        NUM_KV_HEADS=num_kv_heads, GROUP=group, GROUP_PAD=group_pad,
        HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_M=block_m, BLOCK_N=cfg.block_n, POS_SCALE=scale > 0,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        F32_DOT=interpreter_needs_f32_dot(q.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    _decode_reduce_kernel[(num_tokens, num_q_heads)](
        mid_o, mid_lse, out, num_splits, out.stride(0), out.stride(1),
        NUM_Q_HEADS=num_q_heads, HEAD_DIM=head_dim, BLOCK_S=next_power_of_2(num_splits),
        num_warps=4 if head_dim >= 128 else 2,
    )
    return out


def auto_splits(q: torch.Tensor, kv_layer: torch.Tensor, seq_lens: torch.Tensor,
                block_tables: torch.Tensor, max_query_len: int) -> int:
    """The split count `paged_prefill_attention` launches this kernel with when given no config
    (1: it runs the prefill kernels): by `choose_extend_splits` unless AGENTKV_EXTEND_SPLIT=off."""
    if split_choice() == "off":
        return 1
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    block_size, num_kv_heads = kv_layer.shape[2], kv_layer.shape[3]
    cfg = split_config(head_dim, q.dtype, q.device)
    group_pad = next_power_of_2(num_q_heads // num_kv_heads)
    tokens = max(cfg.block_m, group_pad, 16) // group_pad
    items = -(-max_query_len // tokens) * seq_lens.shape[0] * num_kv_heads
    return choose_extend_splits(items, block_tables.shape[1] * block_size, cfg.block_n,
                                _num_sms(q.device), max_query_len)


def split_config(head_dim: int, dtype: torch.dtype, device: torch.device) -> PrefillConfig:
    """The split kernel's tiles: the Triton prefill kernel's for short chunks."""
    return triton_prefill_config(head_dim, dtype, device, max_query_len=None)
