"""Split-K (flash-decoding) attention for one query token per sequence over a paged KV cache.

The context of each sequence is cut into `num_splits` ranges; one program per (sequence, kv head,
split) reads its range of K/V once for all the query heads of its group, and writes a partial
output with its running max and sum. A second small kernel merges the splits (log-sum-exp).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from kernels._triton import interpreter_needs_f32_dot, kernel, next_power_of_2
from kernels.attention_prefill import (LOG2E, attend_one_sequence, check_attention_args,
                                      gather_context, kernel_io)

tl = None  # triton.language, bound on the first launch (see kernels/_triton.py)

NUM_SMS_DEFAULT = 132  # H200


def paged_decode_attention_ref(q: torch.Tensor, kv_layer: torch.Tensor, seq_lens: torch.Tensor,
                               block_tables: torch.Tensor, scale: float,
                               num_splits: int | None = None,
                               out: torch.Tensor | None = None) -> torch.Tensor:
    """q: [num_seqs, Hq, D] (the token at position seq_lens[i] - 1); kv_layer: [num_blocks, 2,
    block_size, Hkv, D]; seq_lens: int32 [num_seqs]; block_tables: int32 [num_seqs, max_blocks]
    -> out [num_seqs, Hq, D] in q's dtype; a seq_len of 0 (padding) gives zeros.
    `num_splits` only matters to the Triton version."""
    check_attention_args(q, kv_layer, seq_lens, block_tables)
    if q.shape[0] != seq_lens.shape[0]:
        raise ValueError(f"q has {q.shape[0]} sequences but seq_lens has {seq_lens.shape[0]}")
    if out is None:
        out = torch.empty_like(q)
    for i, seq_len in enumerate(seq_lens.tolist()):
        if seq_len < 0:
            raise ValueError(f"sequence {i} has seq_len {seq_len}; it must be >= 0")
        if seq_len == 0:  # a padding slot: no context, zeros out
            out[i] = 0
            continue
        k, v = gather_context(kv_layer, block_tables[i], seq_len)
        out[i:i + 1] = attend_one_sequence(q[i:i + 1], k, v, scale).to(out.dtype)
    return out


@kernel(do_not_specialize=("num_splits", "stride_bt"))
def _decode_split_kernel(
    q_ptr, kv_ptr, seq_lens_ptr, bt_ptr, out_ptr, mid_o_ptr, mid_lse_ptr, counter_ptr,
    qk_scale, num_splits,                       # softmax scale * log2(e); splits per context
    stride_qs, stride_qh, stride_os, stride_oh,
    stride_kv_block, stride_kv_kv, stride_bt,
    NUM_KV_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_H: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr, DIRECT: tl.constexpr, FUSED_MERGE: tl.constexpr,
    GROUP_PAD: tl.constexpr, BLOCK_S: tl.constexpr, CHUNK_S: tl.constexpr,
    PRECISION: tl.constexpr, F32_DOT: tl.constexpr,
):
    # One program: one sequence, one kv head (all GROUP query heads), one range of the context.
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    split_len = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    h = tl.arange(0, BLOCK_H)
    h_ok = h < GROUP
    head = kvh * GROUP + h                                   # [BLOCK_H] query heads
    d = tl.arange(0, HEAD_DIM)
    seq64 = seq.to(tl.int64)
    q = tl.load(q_ptr + seq64 * stride_qs + head[:, None] * stride_qh + d[None, :],
                mask=h_ok[:, None], other=0.0)   # [BLOCK_H, HEAD_DIM]
    if F32_DOT:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
    n_cols = tl.arange(0, BLOCK_N)
    bt_row = bt_ptr + seq64 * stride_bt
    kv_head_ptr = kv_ptr + kvh * HEAD_DIM
    # Page ids run one step ahead (loop-carried): a step's K/V addresses never wait on a load of
    # the same step, so the pipeliner keeps num_stages - 1 K/V tiles in flight (cp.async into
    # multi-buffered shared memory) while the current tile is being used.
    first = start + n_cols
    page = tl.load(bt_row + first // BLOCK_SIZE, mask=first < end, other=0)
    for n0 in range(start, end, BLOCK_N):
        k_pos = n0 + n_cols                                              # [BLOCK_N]
        k_ok = k_pos < end
        nxt = k_pos + BLOCK_N
        page_next = tl.load(bt_row + nxt // BLOCK_SIZE, mask=nxt < end, other=0)
        base = (page.to(tl.int64) * stride_kv_block
                + (k_pos % BLOCK_SIZE) * (NUM_KV_HEADS * HEAD_DIM))
        kv_off = base[:, None] + d[None, :]                             # [BLOCK_N, HEAD_DIM]
        k = tl.load(kv_head_ptr + kv_off, mask=k_ok[:, None], other=0.0)
        v = tl.load(kv_head_ptr + stride_kv_kv + kv_off, mask=k_ok[:, None], other=0.0)
        if F32_DOT:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale   # [BLOCK_H, BLOCK_N]
        s = tl.where(k_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        p = p.to(kv_ptr.dtype.element_ty).to(v.dtype)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=PRECISION)
        m_i = m_new
        page = page_next

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    o = acc / l_safe[:, None]                                # [BLOCK_H, HEAD_DIM]
    o_mask = h_ok[:, None]
    if DIRECT:  # a single split: normalized output straight to out
        tl.store(out_ptr + seq64 * stride_os + head[:, None] * stride_oh + d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=o_mask)
    else:
        # partials: mid_o [num_seqs, Hq, num_splits, HEAD_DIM], mid_lse [num_seqs, Hq, num_splits]
        row = (seq64 * (NUM_KV_HEADS * GROUP) + head) * num_splits + split   # [BLOCK_H]
        tl.store(mid_o_ptr + row[:, None] * HEAD_DIM + d[None, :], o, mask=o_mask)
        lse = tl.where(l_i > 0.0, m_i + tl.log2(l_safe), float("-inf"))
        tl.store(mid_lse_ptr + row, lse, mask=h_ok)
        if FUSED_MERGE:
            # The last split program of this (sequence, kv head) to finish merges all splits,
            # which saves the second launch. Every thread's partial stores precede the barrier;
            # the counter's acq_rel atomic (one thread) then publishes them at gpu scope (the
            # pattern of a cooperative grid sync), and the merging program reads them from L2.
            tl.debug_barrier()
            cnt = counter_ptr + seq64 * NUM_KV_HEADS + kvh
            ticket = tl.atomic_add(cnt, 1, sem="acq_rel", scope="gpu")
            if ticket == num_splits - 1:
                tl.store(cnt, 0)            # all splits have counted: reset for the next launch
                _merge_splits(mid_o_ptr, mid_lse_ptr, out_ptr, seq64, kvh, num_splits,
                              stride_os, stride_oh, NUM_KV_HEADS, GROUP, GROUP_PAD, HEAD_DIM,
                              BLOCK_S, CHUNK_S)


@kernel
def _merge_splits(mid_o_ptr, mid_lse_ptr, out_ptr, seq64, kvh, num_splits, stride_os, stride_oh,
                  NUM_KV_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
                  HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, CHUNK_S: tl.constexpr):
    # Log-sum-exp merge of the partials of the GROUP query heads of one kv head, CHUNK_S splits
    # at a time (a [GROUP_PAD, CHUNK_S, HEAD_DIM] float32 tile).
    g = tl.arange(0, GROUP_PAD)
    g_ok = g < GROUP
    head = kvh * GROUP + g                                          # [GROUP_PAD]
    row0 = (seq64 * (NUM_KV_HEADS * GROUP) + head) * num_splits      # [GROUP_PAD]
    sp = tl.arange(0, BLOCK_S)
    lse = tl.load(mid_lse_ptr + row0[:, None] + sp[None, :],
                  mask=g_ok[:, None] & (sp < num_splits)[None, :], other=float("-inf"),
                  cache_modifier=".cg")                              # [GROUP_PAD, BLOCK_S]
    mx = tl.max(lse, 1)
    mx = tl.where(mx > float("-inf"), mx, 0.0)                       # seq_len 0: all empty
    w_sum = tl.sum(tl.exp2(lse - mx[:, None]), 1)                   # empty splits weigh 0
    c = tl.arange(0, CHUNK_S)
    d = tl.arange(0, HEAD_DIM)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    for s0 in tl.static_range(0, BLOCK_S, CHUNK_S):
        sc = s0 + c
        ok = g_ok[:, None] & (sc < num_splits)[None, :]                # [GROUP_PAD, CHUNK_S]
        rows = row0[:, None] + sc[None, :]
        lse_c = tl.load(mid_lse_ptr + rows, mask=ok, other=float("-inf"), cache_modifier=".cg")
        w = tl.exp2(lse_c - mx[:, None])
        o = tl.load(mid_o_ptr + rows[:, :, None] * HEAD_DIM + d[None, None, :],
                    mask=ok[:, :, None], other=0.0, cache_modifier=".cg")   # [G, CHUNK_S, D]
        acc += tl.sum(w[:, :, None] * o, 1)
    res = acc / tl.where(w_sum > 0.0, w_sum, 1.0)[:, None]          # seq_len 0 -> zeros
    tl.store(out_ptr + seq64 * stride_os + head[:, None] * stride_oh + d[None, :],
             res.to(out_ptr.dtype.element_ty), mask=g_ok[:, None])


@kernel(do_not_specialize=("num_splits",))
def _decode_reduce_kernel(
    mid_o_ptr, mid_lse_ptr, out_ptr, num_splits, stride_os, stride_oh,
    NUM_Q_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    # One program per (sequence, query head): merge the splits' partials by log-sum-exp.
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    sp = tl.arange(0, BLOCK_S)
    sp_ok = sp < num_splits
    d = tl.arange(0, HEAD_DIM)
    row0 = (seq * NUM_Q_HEADS + head) * num_splits
    lse = tl.load(mid_lse_ptr + row0 + sp, mask=sp_ok, other=float("-inf"))   # [BLOCK_S]
    mx = tl.max(lse, 0)
    mx = tl.where(mx > float("-inf"), mx, 0.0)                # every split empty: seq_len 0
    w = tl.exp2(lse - mx)                                    # empty splits weigh 0
    o = tl.load(mid_o_ptr + (row0 + sp[:, None]) * HEAD_DIM + d[None, :],
                mask=sp_ok[:, None], other=0.0)                  # [BLOCK_S, HEAD_DIM]
    w_sum = tl.sum(w, 0)
    res = tl.sum(w[:, None] * o, 0) / tl.where(w_sum > 0.0, w_sum, 1.0)  # seq_len 0 -> zeros
    tl.store(out_ptr + seq * stride_os + head * stride_oh + d, res.to(out_ptr.dtype.element_ty))


@dataclass(frozen=True)
class DecodeConfig:
    block_n: int      # cached tokens per inner step
    num_warps: int
    num_stages: int
    fused_merge: bool = False   # the last split program merges (no second launch)


# Split programs per SM that the few-sequence regime aims at: two 64-token programs an SM, each
# with a K/V tile pair in flight while it works on another (H200 sweep, bench/kernels_notes.md).
PROGRAMS_PER_SM = 2


def default_decode_config(head_dim: int, dtype: torch.dtype, device: torch.device,
                          num_programs: int | None = None) -> DecodeConfig:
    """`num_programs`: sequences x kv heads of the launch, when known. Enough of them to give
    every SM PROGRAMS_PER_SM run one split each with 32-token tiles, three buffers deep (four
    programs fit an SM); fewer are split (choose_num_splits) with 64-token tiles, two buffers,
    and the last split program of each (sequence, kv head) merging the splits."""
    if device.type != "cuda":
        return DecodeConfig(32, 4, 1)
    if dtype == torch.float32:
        return DecodeConfig(32, 4, 2)
    if num_programs is not None and num_programs >= PROGRAMS_PER_SM * _num_sms(device):
        return DecodeConfig(32, 4, 4)
    return DecodeConfig(64, 4, 3, fused_merge=True)


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_context: int, cfg: DecodeConfig,
                      num_sms: int = NUM_SMS_DEFAULT, min_tiles_per_split: int = 16,
                      max_splits: int = 128) -> int:
    """Splits per context so that the (sequence, kv head, split) programs give every SM about
    PROGRAMS_PER_SM of them (rounded down: SMs evenly loaded beat a part-filled extra round),
    each split at least `min_tiles_per_split` K/V tiles long so that the pipeline's prologue
    and the merge stay small against the streaming (at batch 1 x 32K, 32 splits of 16 tiles
    beat 43 of 12 and 64 of 8). Contexts too short to give every SM a program that way are
    cut into splits of down to 4 tiles instead: there, latency matters more than balance."""
    programs = max(1, num_seqs * num_kv_heads)
    want = (PROGRAMS_PER_SM * num_sms) // programs
    by_length = max_context // (min_tiles_per_split * cfg.block_n)
    if by_length * programs < num_sms:
        by_length = max_context // (4 * cfg.block_n)
    return max(1, min(want, by_length, max_splits))


_COUNTERS: dict = {}


def _split_counters(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 counters, one per (sequence, kv head), for the fused merge. Every launch
    leaves them zero again (the merging program resets its counter), so one buffer per device
    is kept and reused, also by CUDA graphs captured after it exists. Inside a capture with no
    buffer yet, a fresh one is made and not kept: its zeroing is part of that graph only.
    Fused launches that could run at the same time on two streams of one device would share the
    buffer; decode is issued from one stream (pass a config without fused_merge otherwise)."""
    if device.type != "cuda":
        return torch.zeros(max(n, 1), dtype=torch.int32, device=device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    buf = _COUNTERS.get(index)
    if buf is None or buf.numel() < n:
        fresh = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
        if torch.cuda.is_current_stream_capturing():
            return fresh
        _COUNTERS[index] = buf = fresh
    return buf


@functools.lru_cache(maxsize=None)
def _num_sms_cached(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return _num_sms_cached(device.index if device.index is not None
                               else torch.cuda.current_device())
    return NUM_SMS_DEFAULT


def paged_decode_attention(q: torch.Tensor, kv_layer: torch.Tensor, seq_lens: torch.Tensor,
                           block_tables: torch.Tensor, scale: float,
                           num_splits: int | None = None, out: torch.Tensor | None = None,
                           config: DecodeConfig | None = None) -> torch.Tensor:
    """Triton version of `paged_decode_attention_ref`. With num_splits None, the split count
    comes from the batch size, the kv heads and the block table's width (an upper bound on the
    context, known without reading seq_lens back from the device)."""
    q, out = kernel_io(q, kv_layer, out, seq_lens, block_tables)
    num_seqs, num_q_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, _ = kv_layer.shape
    if q.shape[0] != seq_lens.shape[0]:
        raise ValueError(f"q has {q.shape[0]} sequences but seq_lens has {seq_lens.shape[0]}")
    if num_seqs == 0:
        return out
    cfg = config or default_decode_config(head_dim, q.dtype, q.device, num_seqs * num_kv_heads)
    if num_splits is None:
        num_splits = choose_num_splits(num_seqs, num_kv_heads, block_tables.shape[1] * block_size,
                                       cfg, _num_sms(q.device))
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1; got {num_splits}")
    group = num_q_heads // num_kv_heads
    if num_splits > 1:
        mid_o = torch.empty((num_seqs, num_q_heads, num_splits, head_dim), dtype=torch.float32,
                            device=q.device)
        mid_lse = torch.empty((num_seqs, num_q_heads, num_splits), dtype=torch.float32,
                              device=q.device)
    else:
        mid_o = mid_lse = out  # unused
    fused = cfg.fused_merge and num_splits > 1
    counters = _split_counters(q.device, num_seqs * num_kv_heads) if fused else out
    group_pad = next_power_of_2(group)
    block_s = next_power_of_2(num_splits)
    _decode_split_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, kv_layer, seq_lens, block_tables, out, mid_o, mid_lse, counters,
        scale * LOG2E, num_splits,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        kv_layer.stride(0), kv_layer.stride(1), block_tables.stride(0),
        NUM_KV_HEADS=num_kv_heads, GROUP=group, BLOCK_H=max(16, next_power_of_2(group)),
        HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_N=cfg.block_n, DIRECT=num_splits == 1, FUSED_MERGE=fused,
        GROUP_PAD=group_pad, BLOCK_S=block_s,
        CHUNK_S=max(1, min(block_s, 8192 // (group_pad * head_dim))),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        F32_DOT=interpreter_needs_f32_dot(q.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if num_splits > 1 and not fused:
        _decode_reduce_kernel[(num_seqs, num_q_heads)](
            mid_o, mid_lse, out, num_splits, out.stride(0), out.stride(1),
            NUM_Q_HEADS=num_q_heads, HEAD_DIM=head_dim,
            BLOCK_S=next_power_of_2(num_splits),
            num_warps=4 if head_dim >= 128 else 2,
        )
    return out
