"""Warp-specialised paged prefill attention for Hopper (sm_90), written in Gluon.

Same arguments and result as `kernels.attention_prefill.paged_prefill_attention`, which
dispatches here (config `PrefillWSConfig`) on an sm_90 GPU for 16-bit q/kv with head_dim 64 or
128. A work item is 128 query rows, tokens x the query heads of one kv head as in the Triton
kernel, so each K/V tile serves the whole GQA group. Programs are persistent (one per SM) and
take the items heaviest first, in snake order across rounds so that every program gets a
similar share of the causal triangle. Each program has three partitions:

- a loader warp gathers, with cp.async, each item's query rows and then the K and V rows of each
  `BLOCK_N`-token step from the paged cache (rows past the causal end zero-filled, never read),
  up to `NUM_BUF` steps ahead of the math and across items. Every loader thread arrives on the
  tile's mbarrier once its own copies have landed;
- two or three consumer warpgroups of 64 rows each (the default partition and workers; their
  code is in attention_prefill_ws_consumer.py) run the online softmax on the tensor cores
  (wgmma). Each issues a tile's QK^T before it waits for the previous tile's P @ V, so its
  softmax overlaps its own matrix products; the warpgroups share the K/V buffers but never wait
  on each other (unless `pingpong` hands them turns), so one's softmax also overlaps the
  other's products. Each releases a buffer (one mbarrier arrival) as soon as it has read it.
  With `overlap_items` a consumer's items flow into each other (two Q buffers a consumer).

Importing this module imports Triton; `attention_prefill` imports it on the first launch only.
"""
from __future__ import annotations

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import async_copy, mbarrier, tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from kernels.attention_prefill_ws_consumer import _consumer, _work_item
from kernels.prefill_config import prefill_kernel_choice, tma_layout_ok

LOG2E = 1.4426950408889634
ROWS = 64           # query rows per consumer warpgroup (one wgmma M tile)


# ---- loader partition ---------------------------------------------------------------------------

@gluon.jit
def _gather_q(dst, q_ptr, q_start, q_len, tok0, kvh, stride_qt, stride_qh, rows, d,
              GROUP: gl.constexpr, GROUP_PAD: gl.constexpr, CHUNK: gl.constexpr):
    # cp.async of one consumer's 64 query rows (token tok0 + row // GROUP_PAD, query head
    # kvh * GROUP + row % GROUP_PAD) into dst [64, D]; rows past the chunk or the group are 0.
    for c in gl.static_range(64 // CHUNK):
        row = c * CHUNK + rows                                               # [CHUNK]
        tok = tok0 + row // GROUP_PAD
        ok = (tok < q_len) & (row % GROUP_PAD < GROUP)
        off = (q_start + tok).to(gl.int64) * stride_qt + (kvh * GROUP + row % GROUP_PAD) * stride_qh
        ptrs = q_ptr + (gl.expand_dims(off, 1) + gl.expand_dims(d, 0))      # [CHUNK, D]
        async_copy.async_copy_global_to_shared(dst.slice(c * CHUNK, CHUNK), ptrs,
                                               mask=gl.expand_dims(ok, 1))


@gluon.jit
def _page_ids(bt_row, n0, kv_end, rows, BLOCK_SIZE: gl.constexpr):
    # Block-table entries of cached rows n0 + rows [BLOCK_N]; 0 at or past kv_end (not read).
    k_pos = n0 + rows
    return gl.load(bt_row + k_pos // BLOCK_SIZE, mask=k_pos < kv_end, other=0)


@gluon.jit
def _kv_rows(head_ptr, page, n0, kv_end, rows, d, stride_kv_block,
             NUM_KV_HEADS: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_SIZE: gl.constexpr):
    # Addresses [BLOCK_N, D] of the K rows n0 + rows of one kv head (V: + stride_kv_kv) and
    # the mask of the rows before kv_end (the others are zero-filled, never read).
    k_pos = n0 + rows
    off = page.to(gl.int64) * stride_kv_block + (k_pos % BLOCK_SIZE) * (NUM_KV_HEADS * HEAD_DIM)
    ptrs = head_ptr + (gl.expand_dims(off, 1) + gl.expand_dims(d, 0))
    return ptrs, gl.expand_dims(k_pos < kv_end, 1)


@gluon.jit
def _tma_step(desc, dst, bar, ids, pidx, n0, kv_end, row0, rows_per_block, col, head_ptr,
              stride_kv_block, page_rows, page_offs,
              NUM_KV_HEADS: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_SIZE: gl.constexpr,
              BLOCK_N: gl.constexpr, PAGE_ROWS: gl.constexpr):
    # One K or V step into dst [BLOCK_N, D], a page (PAGE_ROWS rows) at a time: pages wholly
    # before kv_end by TMA (row page * rows_per_block + row0 + in-page row of the 2-D view of the
    # cache, column col), the page holding kv_end and any after it by cp.async with the rows at
    # or past kv_end zero-filled. ids [PAGES]: the step's page ids. bar gets one arrival per page
    # from one thread (with the page's bytes for TMA) and one per loader thread at the end.
    PAGES: gl.constexpr = BLOCK_N // PAGE_ROWS
    PAGE_BYTES: gl.constexpr = PAGE_ROWS * HEAD_DIM * dst.dtype.primitive_bitwidth // 8
    full = (kv_end - n0) // PAGE_ROWS                    # pages wholly before kv_end
    for p in gl.static_range(PAGES):
        start = n0 + p * PAGE_ROWS
        page = gl.sum(gl.where(pidx == p, ids, 0), 0)
        page_dst = dst.slice(p * PAGE_ROWS, PAGE_ROWS)
        if p < full:
            mbarrier.expect(bar, PAGE_BYTES)
            tma.async_copy_global_to_shared(
                desc, [page * rows_per_block + row0 + start % BLOCK_SIZE, col], bar, page_dst)
        else:
            mbarrier.arrive(bar)
            base = (head_ptr + page.to(gl.int64) * stride_kv_block
                    + (start % BLOCK_SIZE) * (NUM_KV_HEADS * HEAD_DIM))
            async_copy.async_copy_global_to_shared(
                page_dst, base + page_offs, mask=gl.expand_dims(start + page_rows < kv_end, 1))
    async_copy.mbarrier_arrive(bar, increment_count=False)


@gluon.jit
def _loader(q_ptr, kv_ptr, kv_desc, bt_ptr, qsl_ptr, seq_lens_ptr, total, num_m_tiles, num_seqs,
            stride_qt, stride_qh, stride_kv_block, stride_kv_kv, stride_bt, rows_per_block,
            rows_per_kv,
            q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty,
            NUM_KV_HEADS: gl.constexpr, GROUP: gl.constexpr, GROUP_PAD: gl.constexpr,
            HEAD_DIM: gl.constexpr, BLOCK_SIZE: gl.constexpr, TOKENS: gl.constexpr,
            BLOCK_N: gl.constexpr, NUM_BUF: gl.constexpr, LOADER_WARPS: gl.constexpr,
            CHUNK: gl.constexpr, CONSUMERS: gl.constexpr, USE_TMA: gl.constexpr,
            Q_BUFS: gl.constexpr):
    # Consumer c's query rows of item i go to q_smem[c * Q_BUFS + i % Q_BUFS] once it has
    # issued the last QK^T of the item that used that buffer before (item i - Q_BUFS); tile t
    # (counted over all of this program's items) goes to buffer t % NUM_BUF once every
    # consumer released its previous use. Fresh barriers pass a wait on parity 1.
    VEC: gl.constexpr = 8                                    # 16-byte copies
    TPW_D: gl.constexpr = HEAD_DIM // VEC
    THREADS_R: gl.constexpr = 32 // TPW_D
    layout: gl.constexpr = gl.BlockedLayout([1, VEC], [THREADS_R, TPW_D], [LOADER_WARPS, 1],
                                            [1, 0])
    rows = gl.arange(0, CHUNK, layout=gl.SliceLayout(1, layout))         # [CHUNK]
    d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, layout))         # [HEAD_DIM]
    kv_rows = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, layout))    # [BLOCK_N]
    # TMA: a step's page ids, all in every thread (scalars are picked out by a masked sum)
    PAGE_ROWS: gl.constexpr = BLOCK_SIZE if BLOCK_SIZE < BLOCK_N else BLOCK_N
    PAGES: gl.constexpr = BLOCK_N // PAGE_ROWS
    ids_layout: gl.constexpr = gl.BlockedLayout([PAGES], [32], [LOADER_WARPS], [0])
    pidx = gl.arange(0, PAGES, layout=ids_layout)
    page_rows = gl.arange(0, PAGE_ROWS, layout=gl.SliceLayout(1, layout))
    page_offs = (gl.expand_dims(page_rows * (NUM_KV_HEADS * HEAD_DIM), 1)
                 + gl.expand_dims(d, 0))                                 # [PAGE_ROWS, D]
    C_TOKENS: gl.constexpr = TOKENS // CONSUMERS
    t = 0                                                    # tiles so far
    n_items = 0                                              # non-empty items so far
    for r in range(gl.cdiv(total, gl.num_programs(0))):
        seq, kvh, q_start, q_len, tile0, diag_start, kv_end, n_tiles = _work_item(
            r, total, num_m_tiles, num_seqs, qsl_ptr, seq_lens_ptr, NUM_KV_HEADS, TOKENS, BLOCK_N)
        if n_tiles > 0:
            for c in gl.static_range(CONSUMERS):
                qb = c * Q_BUFS + n_items % Q_BUFS
                mbarrier.wait(q_empty.index(qb), ((n_items // Q_BUFS) & 1) ^ 1)
                _gather_q(q_smem.index(qb), q_ptr, q_start, q_len, tile0 + c * C_TOKENS, kvh,
                          stride_qt, stride_qh, rows, d, GROUP, GROUP_PAD, CHUNK)
                async_copy.mbarrier_arrive(q_ready.index(qb), increment_count=False)
            n_items += 1
            bt_row = bt_ptr + seq.to(gl.int64) * stride_bt
            head_ptr = kv_ptr + kvh * HEAD_DIM
            # page ids run one step ahead: a step's copies never wait on their own id loads
            if USE_TMA:
                ids = _page_ids(bt_row, 0, kv_end, pidx * PAGE_ROWS, BLOCK_SIZE)
            else:
                page = _page_ids(bt_row, 0, kv_end, kv_rows, BLOCK_SIZE)
            for j in range(n_tiles):
                buf = t % NUM_BUF
                empty_phase = ((t // NUM_BUF) & 1) ^ 1
                if USE_TMA:
                    ids_next = _page_ids(bt_row, (j + 1) * BLOCK_N, kv_end, pidx * PAGE_ROWS,
                                         BLOCK_SIZE)
                    mbarrier.wait(k_empty.index(buf), empty_phase)
                    _tma_step(kv_desc, k_smem.index(buf), k_ready.index(buf), ids, pidx,
                              j * BLOCK_N, kv_end, 0, rows_per_block, kvh * HEAD_DIM, head_ptr,
                              stride_kv_block, page_rows, page_offs, NUM_KV_HEADS, HEAD_DIM,
                              BLOCK_SIZE, BLOCK_N, PAGE_ROWS)
                    mbarrier.wait(v_empty.index(buf), empty_phase)
                    _tma_step(kv_desc, v_smem.index(buf), v_ready.index(buf), ids, pidx,
                              j * BLOCK_N, kv_end, rows_per_kv, rows_per_block, kvh * HEAD_DIM,
                              head_ptr + stride_kv_kv, stride_kv_block, page_rows, page_offs,
                              NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, BLOCK_N, PAGE_ROWS)
                    ids = ids_next
                else:
                    page_next = _page_ids(bt_row, (j + 1) * BLOCK_N, kv_end, kv_rows,
                                          BLOCK_SIZE)
                    ptrs, mask = _kv_rows(head_ptr, page, j * BLOCK_N, kv_end, kv_rows, d,
                                          stride_kv_block, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE)
                    # K first: its buffer frees a step earlier than V's (after QK^T)
                    mbarrier.wait(k_empty.index(buf), empty_phase)
                    async_copy.async_copy_global_to_shared(k_smem.index(buf), ptrs, mask=mask)
                    async_copy.mbarrier_arrive(k_ready.index(buf), increment_count=False)
                    mbarrier.wait(v_empty.index(buf), empty_phase)
                    async_copy.async_copy_global_to_shared(v_smem.index(buf),
                                                           ptrs + stride_kv_kv, mask=mask)
                    async_copy.mbarrier_arrive(v_ready.index(buf), increment_count=False)
                    page = page_next
                t += 1


# counts and the block-table width change every step: one compiled variant serves them all
@gluon.jit(do_not_specialize=("total", "num_m_tiles", "num_seqs", "stride_bt"))
def _prefill_ws_kernel(
    q_ptr, kv_ptr, kv_desc, out_ptr, qsl_ptr, seq_lens_ptr, bt_ptr,
    qk_scale, total, num_m_tiles, num_seqs,     # scale * log2(e); work items; query tiles/seq
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kv_block, stride_kv_kv, stride_bt, rows_per_block, rows_per_kv,
    NUM_KV_HEADS: gl.constexpr, GROUP: gl.constexpr, GROUP_PAD: gl.constexpr,
    HEAD_DIM: gl.constexpr, BLOCK_SIZE: gl.constexpr, BLOCK_N: gl.constexpr,
    NUM_BUF: gl.constexpr, LOADER_WARPS: gl.constexpr, CHUNK: gl.constexpr,
    CONSUMERS: gl.constexpr, CONSUMER_REGS: gl.constexpr, LOADER_REGS: gl.constexpr,
    USE_TMA: gl.constexpr, PINGPONG: gl.constexpr, OVERLAP: gl.constexpr,
    Q_REGS: gl.constexpr,
):
    TOKENS: gl.constexpr = CONSUMERS * 64 // GROUP_PAD        # query tokens per work item
    dtype: gl.constexpr = kv_ptr.dtype.element_ty
    kv_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], dtype)
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([64, HEAD_DIM], dtype)
    bar_layout: gl.constexpr = mbarrier.MBarrierLayout()
    k_smem = gl.allocate_shared_memory(dtype, [NUM_BUF, BLOCK_N, HEAD_DIM], kv_layout)
    v_smem = gl.allocate_shared_memory(dtype, [NUM_BUF, BLOCK_N, HEAD_DIM], kv_layout)
    Q_BUFS: gl.constexpr = 2 if OVERLAP else 1                 # query buffers a consumer
    q_smem = gl.allocate_shared_memory(dtype, [CONSUMERS * Q_BUFS, 64, HEAD_DIM], q_layout)
    q_ready = gl.allocate_shared_memory(gl.int64, [CONSUMERS * Q_BUFS, 1], bar_layout)
    q_empty = gl.allocate_shared_memory(gl.int64, [CONSUMERS * Q_BUFS, 1], bar_layout)
    k_ready = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], bar_layout)
    v_ready = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], bar_layout)
    k_empty = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], bar_layout)
    v_empty = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], bar_layout)
    turn = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], bar_layout)
    for i in gl.static_range(CONSUMERS * Q_BUFS):
        mbarrier.init(q_ready.index(i), count=LOADER_WARPS * 32)   # every loader thread
        mbarrier.init(q_empty.index(i), count=1)                   # its consumer
    for i in gl.static_range(CONSUMERS):
        mbarrier.init(turn.index(i), count=1)                      # the consumer before it
    PAGES: gl.constexpr = BLOCK_N // BLOCK_SIZE if BLOCK_SIZE < BLOCK_N else 1
    TMA_ARRIVALS: gl.constexpr = PAGES if USE_TMA else 0       # one per page (TMA or not)
    for i in gl.static_range(NUM_BUF):
        mbarrier.init(k_ready.index(i), count=LOADER_WARPS * 32 + TMA_ARRIVALS)
        mbarrier.init(v_ready.index(i), count=LOADER_WARPS * 32 + TMA_ARRIVALS)
        mbarrier.init(k_empty.index(i), count=CONSUMERS)           # every consumer
        mbarrier.init(v_empty.index(i), count=CONSUMERS)

    # (Gluon takes each partition's arguments as a literal tuple.)
    if CONSUMERS == 2:
        gl.warp_specialize([
            (_consumer, (0, out_ptr, qsl_ptr, seq_lens_ptr, total, num_m_tiles, num_seqs,
                         qk_scale, stride_ot, stride_oh, q_smem, k_smem, v_smem, q_ready,
                         q_empty, k_ready, v_ready, k_empty, v_empty, turn, NUM_KV_HEADS,
                         GROUP, GROUP_PAD, HEAD_DIM, TOKENS, BLOCK_N, NUM_BUF, CONSUMERS,
                         PINGPONG, OVERLAP, Q_REGS)),
            (_consumer, (1, out_ptr, qsl_ptr, seq_lens_ptr, total, num_m_tiles, num_seqs,
                         qk_scale, stride_ot, stride_oh, q_smem, k_smem, v_smem, q_ready,
                         q_empty, k_ready, v_ready, k_empty, v_empty, turn, NUM_KV_HEADS,
                         GROUP, GROUP_PAD, HEAD_DIM, TOKENS, BLOCK_N, NUM_BUF, CONSUMERS,
                         PINGPONG, OVERLAP, Q_REGS)),
            (_loader, (q_ptr, kv_ptr, kv_desc, bt_ptr, qsl_ptr, seq_lens_ptr, total,
                       num_m_tiles, num_seqs, stride_qt, stride_qh, stride_kv_block,
                       stride_kv_kv, stride_bt, rows_per_block, rows_per_kv, q_smem, k_smem,
                       v_smem, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty,
                       NUM_KV_HEADS, GROUP, GROUP_PAD, HEAD_DIM, BLOCK_SIZE, TOKENS, BLOCK_N,
                       NUM_BUF, LOADER_WARPS, CHUNK, CONSUMERS, USE_TMA, Q_BUFS)),
        ], [4, LOADER_WARPS], [CONSUMER_REGS, LOADER_REGS])
    else:
        gl.warp_specialize([
            (_consumer, (0, out_ptr, qsl_ptr, seq_lens_ptr, total, num_m_tiles, num_seqs,
                         qk_scale, stride_ot, stride_oh, q_smem, k_smem, v_smem, q_ready,
                         q_empty, k_ready, v_ready, k_empty, v_empty, turn, NUM_KV_HEADS,
                         GROUP, GROUP_PAD, HEAD_DIM, TOKENS, BLOCK_N, NUM_BUF, CONSUMERS,
                         PINGPONG, OVERLAP, Q_REGS)),
            (_consumer, (1, out_ptr, qsl_ptr, seq_lens_ptr, total, num_m_tiles, num_seqs,
                         qk_scale, stride_ot, stride_oh, q_smem, k_smem, v_smem, q_ready,
                         q_empty, k_ready, v_ready, k_empty, v_empty, turn, NUM_KV_HEADS,
                         GROUP, GROUP_PAD, HEAD_DIM, TOKENS, BLOCK_N, NUM_BUF, CONSUMERS,
                         PINGPONG, OVERLAP, Q_REGS)),
            (_consumer, (2, out_ptr, qsl_ptr, seq_lens_ptr, total, num_m_tiles, num_seqs,
                         qk_scale, stride_ot, stride_oh, q_smem, k_smem, v_smem, q_ready,
                         q_empty, k_ready, v_ready, k_empty, v_empty, turn, NUM_KV_HEADS,
                         GROUP, GROUP_PAD, HEAD_DIM, TOKENS, BLOCK_N, NUM_BUF, CONSUMERS,
                         PINGPONG, OVERLAP, Q_REGS)),
            (_loader, (q_ptr, kv_ptr, kv_desc, bt_ptr, qsl_ptr, seq_lens_ptr, total,
                       num_m_tiles, num_seqs, stride_qt, stride_qh, stride_kv_block,
                       stride_kv_kv, stride_bt, rows_per_block, rows_per_kv, q_smem, k_smem,
                       v_smem, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty,
                       NUM_KV_HEADS, GROUP, GROUP_PAD, HEAD_DIM, BLOCK_SIZE, TOKENS, BLOCK_N,
                       NUM_BUF, LOADER_WARPS, CHUNK, CONSUMERS, USE_TMA, Q_BUFS)),
        ], [4, 4, LOADER_WARPS], [CONSUMER_REGS, CONSUMER_REGS, LOADER_REGS])


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def launch(q: torch.Tensor, kv_layer: torch.Tensor, out: torch.Tensor,
           query_start_loc: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
           scale: float, max_query_len: int, cfg) -> None:
    """Run the kernel; arguments already checked by `paged_prefill_attention` (cfg: its
    `PrefillWSConfig`). q and out: [tokens, Hq, D] with a contiguous last dim."""
    _, num_q_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, _ = kv_layer.shape
    group = num_q_heads // num_kv_heads
    group_pad = 1 << (group - 1).bit_length()
    tokens = ROWS * cfg.consumers // group_pad
    num_m_tiles = (max_query_len + tokens - 1) // tokens
    num_seqs = seq_lens.shape[0]
    total = num_m_tiles * num_seqs * num_kv_heads
    grid = (min(total, _num_sms(q.device.index or 0)),)
    kv_desc, rows_per_block, rows_per_kv = None, 0, 0
    use_tma = cfg.tma and prefill_kernel_choice() != "gather" and tma_layout_ok(kv_layer)
    if use_tma:
        kv_desc, rows_per_block, rows_per_kv = cache_descriptor(kv_layer, cfg.block_n)
    _prefill_ws_kernel[grid](
        q, kv_layer, kv_desc, out, query_start_loc, seq_lens, block_tables,
        scale * LOG2E, total, num_m_tiles, num_seqs,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        kv_layer.stride(0), kv_layer.stride(1), block_tables.stride(0), rows_per_block,
        rows_per_kv,
        NUM_KV_HEADS=num_kv_heads, GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, BLOCK_N=cfg.block_n, NUM_BUF=cfg.num_buf,
        LOADER_WARPS=cfg.loader_warps, CHUNK=cfg.chunk, CONSUMERS=cfg.consumers,
        CONSUMER_REGS=cfg.consumer_regs, LOADER_REGS=cfg.loader_regs, USE_TMA=use_tma,
        PINGPONG=cfg.pingpong, OVERLAP=cfg.overlap_items, Q_REGS=cfg.q_regs,
        num_warps=4,
    )


def cache_descriptor(kv_layer: torch.Tensor, block_n: int):
    """TMA descriptor over the layer's cache as a 2-D tensor [rows, Hkv * D]: row
    block * rows_per_block + kv * rows_per_kv + slot; one box is one page (or one step) of one
    kv head. Returns (descriptor, rows_per_block, rows_per_kv)."""
    num_blocks, _, block_size, num_kv_heads, head_dim = kv_layer.shape
    row = num_kv_heads * head_dim
    rows_per_block, rows_per_kv = kv_layer.stride(0) // row, kv_layer.stride(1) // row
    num_rows = (num_blocks - 1) * rows_per_block + rows_per_kv + block_size
    flat = kv_layer.as_strided((num_rows, row), (row, 1))            # [rows, Hkv * D]
    layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    desc = TensorDescriptor(flat, [num_rows, row], [row, 1],
                            [min(block_size, block_n), head_dim], layout)
    return desc, rows_per_block, rows_per_kv
