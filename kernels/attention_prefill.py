"""Causal attention over a paged KV cache for a flattened batch of variable-length query chunks.

One launch serves a mixed step: sequences with one new token (decode), long prompt chunks
(prefill) and chunks extending an existing context (extend). The queries of sequence i sit at
positions seq_lens[i] - q_len_i ... seq_lens[i] - 1; their own K/V are already in the cache.
"""
from __future__ import annotations

import torch

from kernels._triton import check_device, interpreter_needs_f32_dot, kernel, next_power_of_2
from kernels.prefill_config import (WS_HEAD_DIMS, WS_MAX_GROUP, PrefillConfig,  # noqa: F401
                                    PrefillWSConfig, default_prefill_config,
                                    triton_prefill_config, ws_strides_ok, ws_supported)

tl = None  # triton.language, bound on the first launch (see kernels/_triton.py)

LOG2E = 1.4426950408889634


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
    if head_dim not in (16, 32, 64, 128, 256):
        raise ValueError(f"head_dim must be a power of two from 16 to 256; got {head_dim}")
    if block_tables.dim() != 2 or block_tables.shape[0] != seq_lens.shape[0]:
        raise ValueError(f"block_tables must be [num_seqs={seq_lens.shape[0]}, max_blocks]; "
                         f"got {tuple(block_tables.shape)}")


def check_kv_layer_strides(kv_layer: torch.Tensor) -> None:
    """The kernels take stride(0) and stride(1) as given and assume [block_size, Hkv, D] dense."""
    _, _, block_size, num_kv_heads, head_dim = kv_layer.shape
    inner = (num_kv_heads * head_dim, head_dim, 1)
    if tuple(kv_layer.stride()[2:]) != inner:
        raise ValueError(f"kv_layer's [block_size, Hkv, D] dims must be contiguous (strides "
                         f"{inner}); got strides {tuple(kv_layer.stride())}")


def kernel_io(q: torch.Tensor, kv_layer: torch.Tensor, out: torch.Tensor | None,
              seq_lens: torch.Tensor, block_tables: torch.Tensor,
              *more: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The checks every attention kernel's wrapper makes; returns q with a unit last stride
    and `out` (allocated like q when None), whose last dim must be contiguous."""
    check_attention_args(q, kv_layer, seq_lens, block_tables)
    check_device(q, kv_layer, *more, seq_lens, block_tables)
    check_kv_layer_strides(kv_layer)
    if out is None:
        out = torch.empty_like(q)
    if out.stride(2) != 1:
        raise ValueError("out's last dim must be contiguous")
    return (q if q.stride(2) == 1 else q.contiguous()), out


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


@kernel
def _attend_range(
    acc, l_i, m_i, q, q_pos, kv_ptr, bt_row, lo, hi, kv_end, qk_scale,
    stride_kv_block, stride_kv_kv, kv_head_off,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
    POS_SCALE: tl.constexpr, PRECISION: tl.constexpr, F32_DOT: tl.constexpr,
):
    # Online softmax over cached keys [lo, hi) of one sequence and kv head. MASKED: apply the
    # causal mask (q_pos) and the end of the context (kv_end); else every key is visible.
    n_cols = tl.arange(0, BLOCK_N)
    d = tl.arange(0, HEAD_DIM)
    kv_head_ptr = kv_ptr + kv_head_off
    # Page ids run one step ahead (loop-carried): a step's K/V addresses never wait on a load of
    # the same step, so the pipeliner keeps the next tiles' K/V copies (cp.async into
    # multi-buffered shared memory) in flight while the tensor cores work on this one.
    first = lo + n_cols
    page = tl.load(bt_row + first // BLOCK_SIZE, mask=first < hi, other=0)
    for n0 in range(lo, hi, BLOCK_N):
        k_pos = n0 + n_cols                                              # [BLOCK_N]
        nxt = k_pos + BLOCK_N
        page_next = tl.load(bt_row + nxt // BLOCK_SIZE, mask=nxt < hi, other=0)
        base = (page.to(tl.int64) * stride_kv_block
                + (k_pos % BLOCK_SIZE) * (NUM_KV_HEADS * HEAD_DIM))
        kv_off = base[:, None] + d[None, :]                              # [BLOCK_N, HEAD_DIM]
        if MASKED:
            k_ok = k_pos < kv_end
            k = tl.load(kv_head_ptr + kv_off, mask=k_ok[:, None], other=0.0)
            v = tl.load(kv_head_ptr + stride_kv_kv + kv_off, mask=k_ok[:, None], other=0.0)
        else:
            k = tl.load(kv_head_ptr + kv_off)
            v = tl.load(kv_head_ptr + stride_kv_kv + kv_off)
        if F32_DOT:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)          # [BLOCK_M, BLOCK_N]
        if not POS_SCALE:
            s = s * qk_scale
        if MASKED:
            causal = (k_pos[None, :] <= q_pos[:, None]) & k_ok[None, :]
            s = tl.where(causal, s, float("-inf"))
        if POS_SCALE:
            # max(s) * scale == max(s * scale) for scale > 0: the scaling folds into one FMA
            # per score inside exp2 (scale already carries log2(e))
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
        if MASKED:
            m_new = tl.where(m_new == float("-inf"), 0.0, m_new)         # rows with no key yet
        if POS_SCALE:
            p = tl.exp2(s * qk_scale - m_new[:, None])
        else:
            p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        p = p.to(kv_ptr.dtype.element_ty).to(v.dtype)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=PRECISION)
        m_i = m_new
        page = page_next
    return acc, l_i, m_i


@kernel
def _item_span(qsl_ptr, seq_lens_ptr, seq, pid_m, TOKENS: tl.constexpr):
    # Query tile pid_m of sequence seq's chunk: the chunk's first row in q and its length, the
    # tile's first token within it, the cached tokens before the chunk, and the keys the tile
    # sees: [0, diag_start) by every row, the rest up to kv_end under the causal mask.
    q_start = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)                 # issued with the two loads above
    tile0 = pid_m * TOKENS
    ctx_before = seq_len - q_len
    diag_start = ctx_before + tile0
    kv_end = tl.minimum(seq_len, diag_start + TOKENS)
    return q_start, q_len, tile0, ctx_before, diag_start, kv_end


@kernel
def _online_softmax_start(BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    # The online softmax's running max and sum [BLOCK_M] and output accumulator [BLOCK_M, D].
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    return m_i, l_i, acc


@kernel
def _query_tile(q_ptr, q_start, q_len, ctx_before, tile0, kvh, stride_qt, stride_qh,
                GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                BLOCK_M: tl.constexpr, F32_DOT: tl.constexpr):
    # A work item's query rows: tokens tile0 ... of the chunk x GROUP_PAD query heads of kv
    # head kvh, so every K/V tile loaded from the cache serves the whole GQA group. Returns q
    # [BLOCK_M, HEAD_DIM] (rows past the chunk or the group zero), each row's absolute
    # position, global token index (int64), query head and validity ([BLOCK_M] each).
    rows = tl.arange(0, BLOCK_M)
    tok = tile0 + rows // GROUP_PAD                   # [BLOCK_M] token within the chunk
    head = kvh * GROUP + rows % GROUP_PAD             # [BLOCK_M] query head
    row_ok = (tok < q_len) & (rows % GROUP_PAD < GROUP)
    d = tl.arange(0, HEAD_DIM)
    tok64 = (q_start + tok).to(tl.int64)
    q = tl.load(q_ptr + tok64[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
                mask=row_ok[:, None], other=0.0)   # [BLOCK_M, HEAD_DIM]
    if F32_DOT:
        q = q.to(tl.float32)
    return q, ctx_before + tok, tok64, head, row_ok


@kernel(do_not_specialize=("num_m_tiles", "num_seqs", "stride_bt"))
def _prefill_kernel(
    q_ptr, kv_ptr, out_ptr, qsl_ptr, seq_lens_ptr, bt_ptr,
    qk_scale, num_m_tiles, num_seqs,            # softmax scale * log2(e); query tiles per seq
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kv_block, stride_kv_kv, stride_bt,
    NUM_KV_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_N_DIAG: tl.constexpr,
    POS_SCALE: tl.constexpr,
    PRECISION: tl.constexpr, F32_DOT: tl.constexpr,
):
    # Rows of a tile: TOKENS query tokens x GROUP_PAD query heads of one kv head, so every
    # K/V tile loaded from the cache serves the whole GQA group.
    TOKENS: tl.constexpr = BLOCK_M // GROUP_PAD
    # Launch order: the latest (heaviest) query tiles of every (sequence, kv head) first, so the
    # causal triangle's short tiles fill the tail of the grid.
    pid = tl.program_id(0)
    pid_m = num_m_tiles - 1 - pid // (num_seqs * NUM_KV_HEADS)
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
        # keys [0, diag_start) are visible to every row of the tile; the rest need the mask.
        # Whole BLOCK_N tiles of them go unmasked, then (with a smaller BLOCK_N_DIAG) whole
        # BLOCK_N_DIAG tiles, and the rest up to the diagonal's end in masked BLOCK_N_DIAG tiles.
        full_end = (diag_start // BLOCK_N) * BLOCK_N
        acc, l_i, m_i = _attend_range(
            acc, l_i, m_i, q, q_pos, kv_ptr, bt_row, 0, full_end, kv_end, qk_scale,
            stride_kv_block, stride_kv_kv, kvh * HEAD_DIM,
            NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, BLOCK_N, False, POS_SCALE, PRECISION, F32_DOT)
        if BLOCK_N_DIAG < BLOCK_N:
            mid_end = (diag_start // BLOCK_N_DIAG) * BLOCK_N_DIAG
            acc, l_i, m_i = _attend_range(
                acc, l_i, m_i, q, q_pos, kv_ptr, bt_row, full_end, mid_end, kv_end, qk_scale,
                stride_kv_block, stride_kv_kv, kvh * HEAD_DIM,
                NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, BLOCK_N_DIAG, False, POS_SCALE, PRECISION,
                F32_DOT)
        else:
            mid_end = full_end
        acc, l_i, m_i = _attend_range(
            acc, l_i, m_i, q, q_pos, kv_ptr, bt_row, mid_end, kv_end, kv_end, qk_scale,
            stride_kv_block, stride_kv_kv, kvh * HEAD_DIM,
            NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, BLOCK_N_DIAG, True, POS_SCALE, PRECISION,
            F32_DOT)
        l_safe = tl.where(l_i > 0.0, l_i, 1.0)
        o = acc / l_safe[:, None]
        tl.store(out_ptr + tok64[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


def paged_prefill_attention(q: torch.Tensor, kv_layer: torch.Tensor,
                            query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                            block_tables: torch.Tensor, scale: float, max_query_len: int,
                            out: torch.Tensor | None = None,
                            config: PrefillConfig | PrefillWSConfig | None = None
                            ) -> torch.Tensor:
    """Triton version of `paged_prefill_attention_ref` (same arguments and result)."""
    q, out = kernel_io(q, kv_layer, out, seq_lens, block_tables, query_start_loc)
    num_tokens, num_q_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, _ = kv_layer.shape
    if num_tokens == 0 or max_query_len == 0:
        return out
    group = num_q_heads // num_kv_heads
    if config is None and q.device.type == "cuda":
        from kernels import attention_extend_split as split
        splits = split.auto_splits(q, kv_layer, seq_lens, block_tables, max_query_len)
        if splits > 1:     # a few short chunks on long contexts: most SMs would sit idle
            return split.paged_extend_split_attention(q, kv_layer, query_start_loc, seq_lens,
                                                      block_tables, scale, max_query_len,
                                                      splits, out)
    cfg = config or default_prefill_config(head_dim, q.dtype, q.device, max_query_len, group,
                                           scale, block_size)
    ws_inputs_ok = kv_layer.dtype == q.dtype and ws_strides_ok(q, out, kv_layer)
    if config is None and not ws_inputs_ok:
        cfg = triton_prefill_config(head_dim, q.dtype, q.device, max_query_len)
    if isinstance(cfg, PrefillWSConfig):
        cfg.check()
        if (scale <= 0 or not ws_inputs_ok
                or not ws_supported(head_dim, q.dtype, q.device, group)):
            raise ValueError(f"{cfg} needs an sm_90 GPU, q and kv of one 16-bit dtype, head_dim "
                             f"in {WS_HEAD_DIMS}, at most {WS_MAX_GROUP} query heads per kv head, "
                             "outer strides of q, out and the cache in multiples of 16 "
                             "and scale > 0")
        from kernels import attention_prefill_ws
        attention_prefill_ws.launch(q, kv_layer, out, query_start_loc, seq_lens, block_tables,
                                    scale, max_query_len, cfg)
        return out
    group_pad = next_power_of_2(group)
    block_m = max(cfg.block_m, group_pad, 16)
    block_n_diag = cfg.block_n_diag or cfg.block_n
    if cfg.block_n % block_n_diag or block_n_diag < 16:
        raise ValueError(f"block_n_diag ({block_n_diag}) must divide block_n ({cfg.block_n}) "
                         "and be at least 16")
    tokens_per_tile = block_m // group_pad
    num_m_tiles = (max_query_len + tokens_per_tile - 1) // tokens_per_tile
    num_seqs = seq_lens.shape[0]
    grid = (num_m_tiles * num_seqs * num_kv_heads,)
    _prefill_kernel[grid](
        q, kv_layer, out, query_start_loc, seq_lens, block_tables,
        scale * LOG2E, num_m_tiles, num_seqs,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        kv_layer.stride(0), kv_layer.stride(1), block_tables.stride(0),
        NUM_KV_HEADS=num_kv_heads, GROUP=group, GROUP_PAD=group_pad,
        HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_M=block_m, BLOCK_N=cfg.block_n, BLOCK_N_DIAG=block_n_diag, POS_SCALE=scale > 0,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        F32_DOT=interpreter_needs_f32_dot(q.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out
