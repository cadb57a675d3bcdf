"""The consumer partitions of the warp-specialised prefill kernel (attention_prefill_ws.py).

Each consumer warpgroup owns 64 query rows of every work item (consumer c: rows 64c..64c+63)
and runs the online softmax over the item's K/V steps on the tensor cores (wgmma). Within an
item it issues a step's QK^T before it waits for the previous step's P @ V, so its softmax
overlaps its own matrix products. Two options change the order of issue:

- PINGPONG: each issue of matrix products takes this consumer's turn and passes it on (an
  mbarrier handshake), so the consumers' products reach the tensor cores in turn while the
  others run their softmax;
- OVERLAP: items flow into each other. The item's last P @ V is not waited for at the item's
  end: the next item's first QK^T goes out beside it, and the finished item's rows are
  normalised and stored while that QK^T runs (the loader fills two Q buffers a consumer, so the
  next item's rows are in place). Without it every item ends with the tensor cores idle while
  all consumers wait for their last P @ V and store, then wait for their first QK^T.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (mbarrier, warpgroup_mma,
                                                              warpgroup_mma_wait)


@gluon.constexpr_function
def _mma_layout(n):
    # The wgmma accumulator of a consumer: 64 rows on 4 warps, n columns ([64, n] fp32).
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, n, 16])


@gluon.constexpr_function
def _operand_a(parent):
    # A 16-bit A operand of a wgmma held in registers, for the accumulator layout `parent`.
    return gl.DotOperandLayout(operand_index=0, parent=parent, k_width=2)


@gluon.jit
def _work_item(r, total, num_m_tiles, num_seqs, qsl_ptr, seq_lens_ptr,
               NUM_KV_HEADS: gl.constexpr, TOKENS: gl.constexpr, BLOCK_N: gl.constexpr):
    # This program's work item in round r: program b of G takes item r * G + b, every other
    # round backwards. Items count the latest (heaviest) query tiles of every (sequence, kv
    # head) first. n_tiles = 0: nothing to do (past the last item, or past the chunk's end).
    b = gl.program_id(0)
    G = gl.num_programs(0)
    w = r * G + gl.where(r % 2 == 0, b, G - 1 - b)
    valid = w < total
    w = gl.minimum(w, total - 1)
    pid_m = num_m_tiles - 1 - w // (num_seqs * NUM_KV_HEADS)
    seq = (w // NUM_KV_HEADS) % num_seqs
    kvh = w % NUM_KV_HEADS
    q_start = gl.load(qsl_ptr + seq)
    q_len = gl.load(qsl_ptr + seq + 1) - q_start
    seq_len = gl.load(seq_lens_ptr + seq)
    tile0 = pid_m * TOKENS                       # the item's first token within its chunk
    diag_start = seq_len - q_len + tile0         # keys below are visible to every row
    kv_end = gl.minimum(seq_len, diag_start + TOKENS)
    n_tiles = gl.where(valid & (tile0 < q_len), gl.cdiv(kv_end, BLOCK_N), 0)
    return seq, kvh, q_start, q_len, tile0, diag_start, kv_end, n_tiles


@gluon.jit
def _softmax_step(s, m_i, l_i, q_pos, k_pos, qk_scale, MASKED: gl.constexpr):
    # s: raw scores [64, BLOCK_N]; qk_scale = softmax scale * log2(e) > 0, so the scaling
    # folds into one FMA per score inside exp2. Key 0 sits in an item's first tile, so m_i is
    # finite from then on and a row whose keys in a later tile are all masked gets p = 0.
    if MASKED:
        s = gl.where(gl.expand_dims(k_pos, 0) <= gl.expand_dims(q_pos, 1), s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, 1)
    return p, alpha, m_new, l_i


@gluon.jit
def _take_turn(turn, c: gl.constexpr, g, CONSUMERS: gl.constexpr, PINGPONG: gl.constexpr):
    # Wait for this consumer's g-th turn (g counts its issues): consumer 0's first needs no
    # one (a fresh barrier passes a wait on parity 1), every other turn follows one arrival of
    # the consumer before it in the cycle 0 -> 1 -> .. -> CONSUMERS - 1 -> 0.
    if PINGPONG:
        if c == 0:
            mbarrier.wait(turn.index(0), (g & 1) ^ 1)
        else:
            mbarrier.wait(turn.index(c), g & 1)


@gluon.jit
def _pass_turn(turn, c: gl.constexpr, CONSUMERS: gl.constexpr, PINGPONG: gl.constexpr):
    if PINGPONG:
        mbarrier.arrive(turn.index((c + 1) % CONSUMERS))


@gluon.jit
def _first_softmax(s, q_pos, diag_start, qk_scale, BLOCK_N: gl.constexpr,
                   HEAD_DIM: gl.constexpr, dtype: gl.constexpr):
    # The item's first tile (keys 0 .. BLOCK_N - 1): softmax from empty running sums; the
    # returned P is in the operand layout of the next P @ V.
    s_layout: gl.constexpr = s.type.layout
    o_layout: gl.constexpr = _mma_layout(HEAD_DIM)
    p_layout: gl.constexpr = _operand_a(o_layout)
    cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    m_i = gl.full([64], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
    l_i = gl.full([64], 0.0, gl.float32, layout=gl.SliceLayout(1, s_layout))
    if diag_start < BLOCK_N:
        p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, q_pos, cols, qk_scale, True)
    else:
        p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, q_pos, cols, qk_scale, False)
    return gl.convert_layout(p.to(dtype), p_layout), m_i, l_i


@gluon.jit
def _middle_tiles(c: gl.constexpr, q_pos, diag_start, n_tiles, t0, g, qk_scale, p_op, m_i, l_i,
                  q_buf, k_smem, v_smem, q_empty_bar, k_ready, v_ready, k_empty, v_empty, turn,
                  BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, NUM_BUF: gl.constexpr,
                  CONSUMERS: gl.constexpr, PINGPONG: gl.constexpr, Q_REGS: gl.constexpr):
    # Tiles 1 .. n_tiles - 1 of an item whose first tile's P is p_op: QK^T(j) and P @ V(j-1)
    # go out together, then QK^T(j)'s softmax runs under P @ V(j-1). Returns the output so far
    # (rescaled to the running max, its last P @ V not yet added) and the last tile's P.
    # Issue j of the item is this consumer's turn g + j. q_buf: the item's rows in shared
    # memory, released after the last QK^T, or (Q_REGS) in registers, released already.
    s_layout: gl.constexpr = _mma_layout(BLOCK_N)
    o_layout: gl.constexpr = _mma_layout(HEAD_DIM)
    dtype: gl.constexpr = k_smem.dtype
    p_layout: gl.constexpr = _operand_a(o_layout)
    cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    s_zero = gl.full([64, BLOCK_N], 0.0, gl.float32, layout=s_layout)
    acc = gl.full([64, HEAD_DIM], 0.0, gl.float32, layout=o_layout)
    j_mask = diag_start // BLOCK_N                                  # first tile with a mask
    for j in range(1, n_tiles):
        t = t0 + j
        buf = t % NUM_BUF
        prev = (t - 1) % NUM_BUF
        mbarrier.wait(k_ready.index(buf), (t // NUM_BUF) & 1)
        if PINGPONG:     # both operands in place before the turn: a turn is never held waiting
            mbarrier.wait(v_ready.index(prev), ((t - 1) // NUM_BUF) & 1)
            _take_turn(turn, c, g + j, CONSUMERS, PINGPONG)
        s_tok = warpgroup_mma(q_buf, k_smem.index(buf).permute((1, 0)), s_zero,
                              use_acc=False, is_async=True)
        if not PINGPONG:
            mbarrier.wait(v_ready.index(prev), ((t - 1) // NUM_BUF) & 1)
        o_tok = warpgroup_mma(p_op, v_smem.index(prev), acc, is_async=True)
        _pass_turn(turn, c, CONSUMERS, PINGPONG)
        s = warpgroup_mma_wait(1, deps=[s_tok])                  # this tile's QK^T
        mbarrier.arrive(k_empty.index(buf))
        if not Q_REGS and j == n_tiles - 1:
            mbarrier.arrive(q_empty_bar)                         # the loader may fetch next Q
        k_pos = j * BLOCK_N + cols
        if j >= j_mask:
            p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, q_pos, k_pos, qk_scale, True)
        else:
            p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, q_pos, k_pos, qk_scale, False)
        acc, p_op = warpgroup_mma_wait(0, deps=[o_tok, p_op])    # the previous tile's P @ V
        mbarrier.arrive(v_empty.index(prev))
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
        p_op = gl.convert_layout(p.to(dtype), p_layout)
    return acc, p_op, m_i, l_i


@gluon.jit
def _store_rows(c: gl.constexpr, out_ptr, acc, l_i, q_start, q_len, tile0, kvh, stride_ot,
                stride_oh, GROUP: gl.constexpr, GROUP_PAD: gl.constexpr, HEAD_DIM: gl.constexpr):
    # Normalise this consumer's 64 rows of an item (acc [64, D] / row sums) and store the
    # rows that are real (token in the chunk, head in the group).
    o_layout: gl.constexpr = acc.type.layout
    C_TOKENS: gl.constexpr = 64 // GROUP_PAD
    l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))
    o = acc / gl.expand_dims(gl.where(l_o > 0.0, l_o, 1.0), 1)
    row_o = gl.arange(0, 64, layout=gl.SliceLayout(1, o_layout))
    d_o = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
    tok = tile0 + c * C_TOKENS + row_o // GROUP_PAD
    ok = (tok < q_len) & (row_o % GROUP_PAD < GROUP)
    off = (q_start + tok).to(gl.int64) * stride_ot + (kvh * GROUP + row_o % GROUP_PAD) * stride_oh
    gl.store(out_ptr + gl.expand_dims(off, 1) + gl.expand_dims(d_o, 0),
             o.to(out_ptr.dtype.element_ty), mask=gl.expand_dims(ok, 1))


@gluon.jit
def _last_pv_and_store(c: gl.constexpr, out_ptr, acc, p_op, l_i, q_start, q_len, tile0, kvh,
                       stride_ot, stride_oh, t_end, g, v_smem, v_ready, v_empty, turn,
                       GROUP: gl.constexpr, GROUP_PAD: gl.constexpr, HEAD_DIM: gl.constexpr,
                       NUM_BUF: gl.constexpr, CONSUMERS: gl.constexpr, PINGPONG: gl.constexpr):
    # An item's last P @ V (its last tile is t_end - 1; this consumer's turn g), alone, then
    # its rows stored.
    last = (t_end - 1) % NUM_BUF
    mbarrier.wait(v_ready.index(last), ((t_end - 1) // NUM_BUF) & 1)
    _take_turn(turn, c, g, CONSUMERS, PINGPONG)
    o_tok = warpgroup_mma(p_op, v_smem.index(last), acc, is_async=True)
    _pass_turn(turn, c, CONSUMERS, PINGPONG)
    acc, p_op = warpgroup_mma_wait(0, deps=[o_tok, p_op])
    mbarrier.arrive(v_empty.index(last))
    _store_rows(c, out_ptr, acc, l_i, q_start, q_len, tile0, kvh, stride_ot, stride_oh,
                GROUP, GROUP_PAD, HEAD_DIM)


@gluon.jit
def _consume_item(c: gl.constexpr, out_ptr, q_start, q_len, tile0, diag_start, kvh, n_tiles,
                  t0, n_items, qk_scale, stride_ot, stride_oh,
                  q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty,
                  turn, GROUP: gl.constexpr, GROUP_PAD: gl.constexpr, HEAD_DIM: gl.constexpr,
                  BLOCK_N: gl.constexpr, NUM_BUF: gl.constexpr, CONSUMERS: gl.constexpr,
                  PINGPONG: gl.constexpr, Q_REGS: gl.constexpr):
    # One work item from its first QK^T to its stored rows (tiles t0 .. t0 + n_tiles - 1; one
    # Q buffer a consumer). n_tiles + 1 issues: the first QK^T, the middle tiles, the last
    # P @ V; issues so far: t0 + n_items (every earlier item had one more than its tiles).
    # Q_REGS: the rows are read into registers (the QK^T's A operand) and their buffer is
    # released at once, so the loader fetches the next item's rows while this one runs and
    # no QK^T reads Q from shared memory.
    g = t0 + n_items
    s_layout: gl.constexpr = _mma_layout(BLOCK_N)
    o_layout: gl.constexpr = _mma_layout(HEAD_DIM)
    row_s = gl.arange(0, 64, layout=gl.SliceLayout(1, s_layout))
    q_pos = diag_start + c * (64 // GROUP_PAD) + row_s // GROUP_PAD  # [64] absolute positions
    s_zero = gl.full([64, BLOCK_N], 0.0, gl.float32, layout=s_layout)
    mbarrier.wait(q_ready.index(c), n_items & 1)
    if Q_REGS:
        q_op_layout: gl.constexpr = _operand_a(s_layout)
        q_a = q_smem.index(c).load(q_op_layout)                    # [64, D]
        mbarrier.arrive(q_empty.index(c))
    else:
        q_a = q_smem.index(c)
    buf = t0 % NUM_BUF
    mbarrier.wait(k_ready.index(buf), (t0 // NUM_BUF) & 1)
    _take_turn(turn, c, g, CONSUMERS, PINGPONG)
    s_tok = warpgroup_mma(q_a, k_smem.index(buf).permute((1, 0)), s_zero,
                          use_acc=False, is_async=True)
    _pass_turn(turn, c, CONSUMERS, PINGPONG)
    s = warpgroup_mma_wait(0, deps=[s_tok])
    mbarrier.arrive(k_empty.index(buf))
    if not Q_REGS and n_tiles == 1:
        mbarrier.arrive(q_empty.index(c))
    p_op, m_i, l_i = _first_softmax(s, q_pos, diag_start, qk_scale, BLOCK_N, HEAD_DIM,
                                    k_smem.dtype)
    acc, p_op, m_i, l_i = _middle_tiles(c, q_pos, diag_start, n_tiles, t0, g, qk_scale, p_op,
                                        m_i, l_i, q_a, k_smem, v_smem,
                                        q_empty.index(c), k_ready, v_ready, k_empty, v_empty,
                                        turn, BLOCK_N, HEAD_DIM, NUM_BUF, CONSUMERS, PINGPONG,
                                        Q_REGS)
    _last_pv_and_store(c, out_ptr, acc, p_op, l_i, q_start, q_len, tile0, kvh, stride_ot,
                       stride_oh, t0 + n_tiles, g + n_tiles, v_smem, v_ready, v_empty, turn,
                       GROUP, GROUP_PAD, HEAD_DIM, NUM_BUF, CONSUMERS, PINGPONG)


@gluon.jit
def _consumer(c: gl.constexpr, out_ptr, qsl_ptr, seq_lens_ptr, total, num_m_tiles, num_seqs,
              qk_scale, stride_ot, stride_oh,
              q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty,
              turn, NUM_KV_HEADS: gl.constexpr, GROUP: gl.constexpr, GROUP_PAD: gl.constexpr,
              HEAD_DIM: gl.constexpr, TOKENS: gl.constexpr, BLOCK_N: gl.constexpr,
              NUM_BUF: gl.constexpr, CONSUMERS: gl.constexpr, PINGPONG: gl.constexpr,
              OVERLAP: gl.constexpr, Q_REGS: gl.constexpr):
    # Rows 64c .. 64c + 63 of each of this program's items, in the loader's order.
    if OVERLAP:
        _consumer_overlap(c, out_ptr, qsl_ptr, seq_lens_ptr, total, num_m_tiles, num_seqs,
                          qk_scale, stride_ot, stride_oh, q_smem, k_smem, v_smem, q_ready,
                          q_empty, k_ready, v_ready, k_empty, v_empty, turn, NUM_KV_HEADS,
                          GROUP, GROUP_PAD, HEAD_DIM, TOKENS, BLOCK_N, NUM_BUF, CONSUMERS,
                          PINGPONG)
    else:
        t = 0
        n_items = 0
        for r in range(gl.cdiv(total, gl.num_programs(0))):
            seq, kvh, q_start, q_len, tile0, diag_start, kv_end, n_tiles = _work_item(
                r, total, num_m_tiles, num_seqs, qsl_ptr, seq_lens_ptr, NUM_KV_HEADS, TOKENS,
                BLOCK_N)
            if n_tiles > 0:
                _consume_item(c, out_ptr, q_start, q_len, tile0, diag_start, kvh, n_tiles, t,
                              n_items, qk_scale, stride_ot, stride_oh, q_smem, k_smem, v_smem,
                              q_ready, q_empty, k_ready, v_ready, k_empty, v_empty, turn,
                              GROUP, GROUP_PAD, HEAD_DIM, BLOCK_N, NUM_BUF, CONSUMERS, PINGPONG,
                              Q_REGS)
                t += n_tiles
                n_items += 1


@gluon.jit
def _consumer_overlap(c: gl.constexpr, out_ptr, qsl_ptr, seq_lens_ptr, total, num_m_tiles,
                      num_seqs, qk_scale, stride_ot, stride_oh, q_smem, k_smem, v_smem, q_ready,
                      q_empty, k_ready, v_ready, k_empty, v_empty, turn,
                      NUM_KV_HEADS: gl.constexpr, GROUP: gl.constexpr, GROUP_PAD: gl.constexpr,
                      HEAD_DIM: gl.constexpr, TOKENS: gl.constexpr, BLOCK_N: gl.constexpr,
                      NUM_BUF: gl.constexpr, CONSUMERS: gl.constexpr, PINGPONG: gl.constexpr):
    # OVERLAP: item n's rows are in Q buffer 2c + n % 2. The previous item (its output
    # without its last P @ V, that tile's P, its row sums and where its rows go) is carried
    # into the next item's first issue: P @ V(last) and then QK^T(first) go out together, the
    # first is waited for and the rows stored while the second runs. Issues: one per tile
    # (the first tile's carries the previous item's last P @ V) and one at the very end.
    s_layout: gl.constexpr = _mma_layout(BLOCK_N)
    o_layout: gl.constexpr = _mma_layout(HEAD_DIM)
    dtype: gl.constexpr = k_smem.dtype
    p_layout: gl.constexpr = _operand_a(o_layout)
    row_s = gl.arange(0, 64, layout=gl.SliceLayout(1, s_layout))
    s_zero = gl.full([64, BLOCK_N], 0.0, gl.float32, layout=s_layout)
    acc = gl.full([64, HEAD_DIM], 0.0, gl.float32, layout=o_layout)
    p_op = gl.full([64, BLOCK_N], 0.0, dtype, layout=p_layout)
    l_i = gl.full([64], 0.0, gl.float32, layout=gl.SliceLayout(1, s_layout))
    prev_q_start = 0
    prev_q_len = 0
    prev_tile0 = 0
    prev_kvh = 0
    t = 0
    n_items = 0
    for r in range(gl.cdiv(total, gl.num_programs(0))):
        seq, kvh, q_start, q_len, tile0, diag_start, kv_end, n_tiles = _work_item(
            r, total, num_m_tiles, num_seqs, qsl_ptr, seq_lens_ptr, NUM_KV_HEADS, TOKENS,
            BLOCK_N)
        if n_tiles > 0:
            qb = 2 * c + n_items % 2
            buf = t % NUM_BUF
            q_pos = diag_start + c * (64 // GROUP_PAD) + row_s // GROUP_PAD
            mbarrier.wait(q_ready.index(qb), (n_items // 2) & 1)
            mbarrier.wait(k_ready.index(buf), (t // NUM_BUF) & 1)
            if n_items > 0:
                last = (t - 1) % NUM_BUF
                mbarrier.wait(v_ready.index(last), ((t - 1) // NUM_BUF) & 1)
                _take_turn(turn, c, t, CONSUMERS, PINGPONG)
                o_tok = warpgroup_mma(p_op, v_smem.index(last), acc, is_async=True)
                s_tok = warpgroup_mma(q_smem.index(qb), k_smem.index(buf).permute((1, 0)),
                                      s_zero, use_acc=False, is_async=True)
                _pass_turn(turn, c, CONSUMERS, PINGPONG)
                acc, p_op = warpgroup_mma_wait(1, deps=[o_tok, p_op])  # the last P @ V
                mbarrier.arrive(v_empty.index(last))
                _store_rows(c, out_ptr, acc, l_i, prev_q_start, prev_q_len, prev_tile0,
                            prev_kvh, stride_ot, stride_oh, GROUP, GROUP_PAD, HEAD_DIM)
                s = warpgroup_mma_wait(0, deps=[s_tok])
            else:
                _take_turn(turn, c, t, CONSUMERS, PINGPONG)
                s_tok = warpgroup_mma(q_smem.index(qb), k_smem.index(buf).permute((1, 0)),
                                      s_zero, use_acc=False, is_async=True)
                _pass_turn(turn, c, CONSUMERS, PINGPONG)
                s = warpgroup_mma_wait(0, deps=[s_tok])
            mbarrier.arrive(k_empty.index(buf))
            if n_tiles == 1:
                mbarrier.arrive(q_empty.index(qb))
            p_op, m_i, l_i = _first_softmax(s, q_pos, diag_start, qk_scale, BLOCK_N, HEAD_DIM,
                                            dtype)
            acc, p_op, m_i, l_i = _middle_tiles(c, q_pos, diag_start, n_tiles, t, t, qk_scale,
                                                p_op, m_i, l_i, q_smem.index(qb), k_smem,
                                                v_smem, q_empty.index(qb), k_ready, v_ready,
                                                k_empty, v_empty, turn, BLOCK_N, HEAD_DIM,
                                                NUM_BUF, CONSUMERS, PINGPONG, False)
            prev_q_start = q_start
            prev_q_len = q_len
            prev_tile0 = tile0
            prev_kvh = kvh
            t += n_tiles
            n_items += 1
    if n_items > 0:                      # the last item's last P @ V, alone
        _last_pv_and_store(c, out_ptr, acc, p_op, l_i, prev_q_start, prev_q_len, prev_tile0,
                           prev_kvh, stride_ot, stride_oh, t, t, v_smem, v_ready, v_empty,
                           turn, GROUP, GROUP_PAD, HEAD_DIM, NUM_BUF, CONSUMERS, PINGPONG)
