"""Split-K attention for short chunks on long contexts (kernels/attention_extend_split.py)
against the prefill reference, on fresh random paged batches; on CPU through the interpreter,
on a GPU also at Llama-3-8B head shapes and real context lengths through the prefill entry
point's dispatch."""
from kernels._triton import use_interpreter_without_cuda

use_interpreter_without_cuda()  # before the first Triton launch in this process

import pytest  # noqa: E402
import torch  # noqa: E402

from kernels.attention_extend_split import (SHORT_CHUNK_TOKENS, auto_splits,  # noqa: E402
                                            choose_extend_splits,
                                            paged_extend_split_attention,
                                            paged_extend_split_attention_ref)
from kernels.attention_prefill import paged_prefill_attention  # noqa: E402
from test_kernels_attention import CUDA, assert_close, make_batch  # noqa: E402

# (q_len, seq_len): decode, a fresh prompt, extends of a long context, one crossing blocks
EXTENDS = [(1, 1), (5, 5), (3, 130), (17, 200), (1, 77), (9, 41)]
# (num_q_heads, num_kv_heads, head_dim, block_size, dtype): GQA 1, 4, 8
SHAPES = [
    (4, 4, 64, 16, torch.float32),
    (8, 2, 64, 16, torch.bfloat16),
    (8, 1, 32, 32, torch.float16),
]


def run_split(seqs, shape, num_splits, seed, scale=None):
    hq, hkv, d, bs, dtype = shape
    b = make_batch(seqs, hq, hkv, d, bs, dtype, seed=seed)
    scale = d ** -0.5 if scale is None else scale
    out = torch.full_like(b.q, float("nan"))
    res = paged_extend_split_attention(b.q, b.kv_layer, b.query_start_loc, b.seq_lens,
                                       b.block_tables, scale, max(b.q_lens), num_splits, out)
    assert res is out
    ref = paged_extend_split_attention_ref(b.q, b.kv_layer, b.query_start_loc, b.seq_lens,
                                           b.block_tables, scale, max(b.q_lens))
    assert_close(out, ref, dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("num_splits", [1, 2, 7])
def test_split_kernel_matches_the_reference(shape, num_splits):
    """Every split count gives the prefill result: splits past a short context are empty and
    weigh nothing; a split ending inside the causal diagonal masks its keys."""
    run_split(EXTENDS, shape, num_splits, seed=21 + num_splits)


def test_split_kernel_with_a_negative_scale():
    """The scale is not folded into exp2 when it is not positive: the merge still agrees."""
    run_split([(4, 90), (1, 33)], (4, 2, 32, 16, torch.float32), 3, seed=5, scale=-0.2)


def test_choose_extend_splits():
    # 8 items (one 32-token tile, one sequence, 8 kv heads) on 132 SMs: 16 programs each fill
    # one wave (128 of 132 SMs), capped by the longest context at 4 tiles of 64 a split
    assert choose_extend_splits(8, 8192, 64, 132) == 16
    assert choose_extend_splits(8, 1024, 64, 132) == 4
    assert choose_extend_splits(8, 200, 64, 132) == 1         # under two splits of 4 tiles
    assert choose_extend_splits(32, 8192, 64, 132) == 4       # not 5: 160 programs, two waves
    assert choose_extend_splits(66, 8192, 64, 132) == 2
    assert choose_extend_splits(67, 8192, 64, 132) == 1       # two would not fit one wave
    assert choose_extend_splits(1, 1 << 20, 64, 132) == 32    # at most MAX_SPLITS
    assert choose_extend_splits(0, 8192, 64, 132) == 1
    # chunks of at most SHORT_CHUNK_TOKENS split in two whatever the item count (uneven items:
    # an extend beside decodes), when the context is long enough for two splits
    assert choose_extend_splits(128, 8192, 64, 132, max_query_len=32) == 2
    assert choose_extend_splits(1024, 8192, 64, 132, max_query_len=SHORT_CHUNK_TOKENS) == 2
    assert choose_extend_splits(1024, 8192, 64, 132, max_query_len=SHORT_CHUNK_TOKENS + 1) == 1
    assert choose_extend_splits(1024, 300, 64, 132, max_query_len=32) == 1
    assert choose_extend_splits(8, 8192, 64, 132, max_query_len=32) == 16   # more when room


def test_auto_splits_and_its_switch(monkeypatch):
    b = make_batch([(3, 130), (1, 77)], 8, 2, 64, 16, torch.float32, seed=3)
    wide = torch.zeros((2, 64), dtype=torch.int32)          # 1024 tokens wide
    monkeypatch.delenv("AGENTKV_EXTEND_SPLIT", raising=False)      # auto by default
    # the CPU tiles (32 rows: 8 tokens of the 4-head group), 2 sequences x 2 kv heads = 4
    # items; the table is 11 blocks = 176 tokens wide: 176 // (4 * 32) = 1 split
    assert auto_splits(b.q, b.kv_layer, b.seq_lens, b.block_tables, 3) == 1
    assert auto_splits(b.q, b.kv_layer, b.seq_lens, wide, 3) == 8   # 1024 // 128
    monkeypatch.setenv("AGENTKV_EXTEND_SPLIT", "off")
    assert auto_splits(b.q, b.kv_layer, b.seq_lens, wide, 3) == 1
    monkeypatch.setenv("AGENTKV_EXTEND_SPLIT", "sometimes")
    with pytest.raises(ValueError, match="AGENTKV_EXTEND_SPLIT must be auto or off"):
        auto_splits(b.q, b.kv_layer, b.seq_lens, wide, 3)


def test_split_kernel_rejects_zero_splits():
    b = make_batch([(2, 20)], 4, 2, 32, 16, torch.float32)
    with pytest.raises(ValueError, match="num_splits must be >= 1"):
        paged_extend_split_attention(b.q, b.kv_layer, b.query_start_loc, b.seq_lens,
                                     b.block_tables, 0.1, 2, num_splits=0)


@pytest.mark.skipif(not CUDA, reason="real sizes and the dispatch need a GPU")
@pytest.mark.parametrize("seqs", [[(32, 4096)], [(128, 8192)], [(1, 3000), (64, 6000)],
                                  [(100, 1030), (1, 1)]])
def test_prefill_entry_point_splits_short_chunks_on_long_contexts(seqs, monkeypatch):
    """Llama-3-8B heads in bf16: with AGENTKV_EXTEND_SPLIT=auto the entry point takes the split
    path for these (few items) and matches the reference."""
    monkeypatch.setenv("AGENTKV_EXTEND_SPLIT", "auto")
    hq, hkv, d, bs, dtype = 32, 8, 128, 16, torch.bfloat16
    b = make_batch(seqs, hq, hkv, d, bs, dtype, seed=11)
    max_q = max(b.q_lens)
    assert auto_splits(b.q, b.kv_layer, b.seq_lens, b.block_tables, max_q) > 1
    out = torch.full_like(b.q, float("nan"))
    paged_prefill_attention(b.q, b.kv_layer, b.query_start_loc, b.seq_lens, b.block_tables,
                            d ** -0.5, max_q, out=out)
    ref = paged_extend_split_attention_ref(b.q, b.kv_layer, b.query_start_loc, b.seq_lens,
                                           b.block_tables, d ** -0.5, max_q)
    assert_close(out, ref, dtype)
