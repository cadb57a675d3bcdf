"""Paged prefill/decode attention: references against dense SDPA, Triton kernels against the
references. On CPU the kernels run under TRITON_INTERPRET=1 (small shapes); with CUDA the same
tests also run Llama-3-8B head shapes at real context lengths."""
from kernels._triton import use_interpreter_without_cuda

use_interpreter_without_cuda()  # before the first Triton launch in this process

import math  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels.attention_decode import (DecodeConfig, default_decode_config,  # noqa: E402
                                      paged_decode_attention, paged_decode_attention_ref)
from kernels.attention_prefill import (PrefillConfig, paged_prefill_attention,  # noqa: E402
                                       paged_prefill_attention_ref, triton_prefill_config)
from kernels.kv_write import write_kv_ref  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}


@dataclass
class PagedBatch:
    """A batch laid out in a paged cache, plus the dense per-sequence K/V it was built from."""
    kv_layer: torch.Tensor        # [num_blocks, 2, block_size, Hkv, D], a strided layer view
    block_tables: torch.Tensor    # int32 [num_seqs, max_blocks]
    seq_lens: torch.Tensor        # int32 [num_seqs]
    query_start_loc: torch.Tensor  # int32 [num_seqs + 1]
    q: torch.Tensor               # [num_tokens, Hq, D]
    dense_k: list                 # per sequence [seq_len, Hkv, D]
    dense_v: list
    q_lens: list


def make_batch(seqs, num_q_heads, num_kv_heads, head_dim, block_size, dtype,
               seed=0, device=DEVICE) -> PagedBatch:
    """seqs: list of (q_len, seq_len). Blocks are a random permutation of the pool, the cache is
    random everywhere (unused blocks too), and unused block-table entries hold random ids."""
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [math.ceil(s / block_size) for _, s in seqs]
    max_blocks = max(blocks_per_seq) + 2
    num_blocks = sum(blocks_per_seq) + 7
    cache = torch.randn((num_blocks, 3, 2, block_size, num_kv_heads, head_dim), generator=g)
    cache = cache.to(device=device, dtype=dtype)
    kv_layer = cache[:, 1]                                     # strided: stride(0) = 3 layers
    perm = torch.randperm(num_blocks, generator=g)
    table = torch.randint(0, num_blocks, (len(seqs), max_blocks), generator=g)
    used = 0
    dense_k, dense_v, q_lens = [], [], []
    for i, ((q_len, seq_len), nb) in enumerate(zip(seqs, blocks_per_seq)):
        table[i, :nb] = perm[used:used + nb]
        used += nb
        k = torch.randn((seq_len, num_kv_heads, head_dim), generator=g).to(device=device,
                                                                          dtype=dtype)
        v = torch.randn((seq_len, num_kv_heads, head_dim), generator=g).to(device=device,
                                                                          dtype=dtype)
        pos = torch.arange(seq_len)
        slots = (table[i, pos // block_size] * block_size + pos % block_size).to(device)
        write_kv_ref(k, v, kv_layer, slots)
        dense_k.append(k)
        dense_v.append(v)
        q_lens.append(q_len)
    num_tokens = sum(q_lens)
    q = torch.randn((num_tokens, num_q_heads, head_dim), generator=g).to(device=device,
                                                                         dtype=dtype)
    qsl = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32)
    return PagedBatch(kv_layer, table.to(device=device, dtype=torch.int32),
                      torch.tensor([s for _, s in seqs], dtype=torch.int32, device=device),
                      qsl.to(device), q, dense_k, dense_v, q_lens)


def dense_attention(b: PagedBatch, scale: float) -> torch.Tensor:
    """Naive causal attention per sequence with SDPA on contiguous float64 K/V."""
    outs = []
    starts = b.query_start_loc.tolist()
    for i, (k, v) in enumerate(zip(b.dense_k, b.dense_v)):
        q = b.q[starts[i]:starts[i + 1]].double()              # [q_len, Hq, D]
        q_len, seq_len = q.shape[0], k.shape[0]
        group = q.shape[1] // k.shape[1]
        kk = k.double().repeat_interleave(group, 1).transpose(0, 1)   # [Hq, L, D]
        vv = v.double().repeat_interleave(group, 1).transpose(0, 1)
        allowed = (torch.arange(seq_len, device=q.device)[None, :]
                   <= torch.arange(seq_len - q_len, seq_len, device=q.device)[:, None])
        o = F.scaled_dot_product_attention(q.transpose(0, 1), kk, vv, attn_mask=allowed,
                                           scale=scale)
        outs.append(o.transpose(0, 1))
    return torch.cat(outs)


def assert_close(out, ref, dtype):
    assert not torch.isnan(out).any(), "output has unwritten (NaN) elements"
    tol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)
    rel = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert rel < tol, f"relative error {rel:.2e} over {tol:.0e}"


def check_prefill_kernel(seqs, shape, cfg=None, seed=0):
    """The prefill kernel (config cfg, None: the default) on a fresh paged batch of `seqs`
    ((q_len, seq_len) each) against the torch reference; the output starts as NaN."""
    hq, hkv, d, bs, dtype = shape
    b = make_batch(seqs, hq, hkv, d, bs, dtype, seed=seed)
    scale = d ** -0.5
    out = torch.full_like(b.q, float("nan"))
    res = paged_prefill_attention(b.q, b.kv_layer, b.query_start_loc, b.seq_lens,
                                  b.block_tables, scale, max(b.q_lens), out=out, config=cfg)
    assert res is out
    ref = paged_prefill_attention_ref(b.q, b.kv_layer, b.query_start_loc, b.seq_lens,
                                      b.block_tables, scale, max(b.q_lens))
    assert_close(out, ref, dtype)


MIXED = [(1, 1), (1, 45), (37, 37), (10, 70), (16, 16), (1, 33)]  # decode, prefill, extend

# (num_q_heads, num_kv_heads, head_dim, block_size, dtype)
SHAPES = [
    (4, 4, 64, 16, torch.float32),
    (8, 2, 128, 16, torch.bfloat16),
    (8, 1, 64, 32, torch.float16),
    (16, 2, 64, 16, torch.float32),
    (4, 2, 32, 16, torch.bfloat16),
]
GPU_SHAPES = [(32, 8, 128, 16, torch.bfloat16), (32, 8, 128, 16, torch.float16),
              (32, 8, 64, 32, torch.float32), (28, 4, 128, 16, torch.bfloat16)]


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_prefill_reference_matches_dense_sdpa(shape):
    hq, hkv, d, bs, dtype = shape
    b = make_batch(MIXED, hq, hkv, d, bs, torch.float32, seed=1)
    scale = d ** -0.5
    out = paged_prefill_attention_ref(b.q, b.kv_layer, b.query_start_loc, b.seq_lens,
                                      b.block_tables, scale, max(b.q_lens))
    assert_close(out, dense_attention(b, scale), torch.float32)


def test_decode_reference_matches_dense_sdpa():
    seqs = [(1, 1), (1, 16), (1, 17), (1, 90)]
    b = make_batch(seqs, 8, 2, 64, 16, torch.float32, seed=2)
    out = paged_decode_attention_ref(b.q, b.kv_layer, b.seq_lens, b.block_tables, 0.125)
    assert_close(out, dense_attention(b, 0.125), torch.float32)


# on a GPU the default may be the warp-specialised Hopper kernel; the Triton kernel runs too
TRITON_TOO = [False, True] if CUDA else [False]


@pytest.mark.parametrize("force_triton", TRITON_TOO)
@pytest.mark.parametrize("shape", SHAPES + (GPU_SHAPES if CUDA else []))
def test_prefill_kernel_mixed_batch(shape, force_triton):
    cfg = triton_prefill_config(shape[2], shape[4], torch.device(DEVICE)) if force_triton else None
    check_prefill_kernel(MIXED, shape, cfg, seed=3)


LONG_PREFILL = [(300, 1030), (1, 1100)]  # a chunk extending a long context, a long decode
GPU_LONG_PREFILL = [(2048, 2048), (2048, 4096), (1, 4000), (512, 8192), (1, 1), (77, 300)]


@pytest.mark.parametrize("seqs,shape", [(LONG_PREFILL, (4, 1, 64, 16, torch.float32))]
                         + ([(GPU_LONG_PREFILL, (32, 8, 128, 16, torch.bfloat16)),
                             ([(4096, 6000), (100, 300)], (32, 8, 128, 16, torch.bfloat16))]
                            if CUDA else []))
@pytest.mark.parametrize("force_triton", TRITON_TOO)
def test_prefill_kernel_long_context(seqs, shape, force_triton):
    max_q = max(q for q, _ in seqs)
    cfg = (triton_prefill_config(shape[2], shape[4], torch.device(DEVICE), max_q) if force_triton
           else None)
    check_prefill_kernel(seqs, shape, cfg, seed=4)


DIAG_CONFIGS = ([PrefillConfig(128, 128, 8, 3, 64), PrefillConfig(128, 64, 8, 3, 32)] if CUDA
                else [PrefillConfig(32, 64, 4, 1, 16), PrefillConfig(64, 32, 4, 1, 16)])


@pytest.mark.parametrize("cfg", DIAG_CONFIGS)
def test_prefill_kernel_smaller_steps_near_the_diagonal(cfg):
    """block_n_diag < block_n: unmasked block_n steps, unmasked and masked block_n_diag steps."""
    seqs = MIXED + [(130, 260), (64, 64)] + ([(1000, 3000)] if CUDA else [])
    shape = (32, 8, 128, 16, torch.bfloat16) if CUDA else (8, 2, 64, 16, torch.bfloat16)
    check_prefill_kernel(seqs, shape, cfg, seed=13)


def test_prefill_rejects_diag_steps_that_do_not_divide():
    b = make_batch([(4, 4)], 4, 2, 64, 16, torch.float32)
    with pytest.raises(ValueError, match="block_n_diag"):
        paged_prefill_attention(b.q, b.kv_layer, b.query_start_loc, b.seq_lens, b.block_tables,
                                0.1, 4, config=PrefillConfig(32, 64, 4, 1, 48))


DECODE_SEQS = [(1, 1), (1, 16), (1, 17), (1, 100), (1, 64)]


@pytest.mark.parametrize("shape", SHAPES + (GPU_SHAPES if CUDA else []))
@pytest.mark.parametrize("num_splits", [None, 1, 3])
def test_decode_kernel(shape, num_splits):
    hq, hkv, d, bs, dtype = shape
    b = make_batch(DECODE_SEQS, hq, hkv, d, bs, dtype, seed=5)
    scale = d ** -0.5
    out = torch.full_like(b.q, float("nan"))
    res = paged_decode_attention(b.q, b.kv_layer, b.seq_lens, b.block_tables, scale,
                                 num_splits=num_splits, out=out)
    assert res is out
    ref = paged_decode_attention_ref(b.q, b.kv_layer, b.seq_lens, b.block_tables, scale)
    assert_close(out, ref, dtype)


GPU_LONG_DECODE = [[(1, 32768)], [(1, 4096)] * 64, [(1, 1), (1, 5000), (1, 17), (1, 12000)]]


@pytest.mark.parametrize("seqs,shape", [([(1, 1100), (1, 3)], (8, 1, 64, 16, torch.bfloat16))]
                         + ([(s, (32, 8, 128, 16, torch.bfloat16)) for s in GPU_LONG_DECODE]
                            if CUDA else []))
def test_decode_kernel_long_context(seqs, shape):
    hq, hkv, d, bs, dtype = shape
    b = make_batch(seqs, hq, hkv, d, bs, dtype, seed=6)
    scale = d ** -0.5
    ref = paged_decode_attention_ref(b.q, b.kv_layer, b.seq_lens, b.block_tables, scale)
    for num_splits in (None, 1, 8):
        out = torch.full_like(b.q, float("nan"))
        paged_decode_attention(b.q, b.kv_layer, b.seq_lens, b.block_tables, scale,
                               num_splits=num_splits, out=out)
        assert_close(out, ref, dtype)


def fused_merge_config(head_dim, dtype) -> DecodeConfig:
    base = default_decode_config(head_dim, dtype, torch.device(DEVICE))
    return DecodeConfig(base.block_n, base.num_warps, base.num_stages, fused_merge=True)


@pytest.mark.parametrize("shape", SHAPES + (GPU_SHAPES if CUDA else []))
@pytest.mark.parametrize("num_splits", [2, 3, 8])
def test_decode_kernel_fused_merge(shape, num_splits):
    """The last split program of each (sequence, kv head) merges; a padding slot gives zeros."""
    hq, hkv, d, bs, dtype = shape
    b = make_batch(DECODE_SEQS + [(1, 300)], hq, hkv, d, bs, dtype, seed=10)
    seq_lens = b.seq_lens.clone()
    seq_lens[2] = 0
    scale = d ** -0.5
    ref = paged_decode_attention_ref(b.q, b.kv_layer, seq_lens, b.block_tables, scale)
    out = torch.full_like(b.q, float("nan"))
    paged_decode_attention(b.q, b.kv_layer, seq_lens, b.block_tables, scale,
                           num_splits=num_splits, out=out, config=fused_merge_config(d, dtype))
    assert torch.equal(out[2], torch.zeros_like(out[2]))
    assert_close(out, ref, dtype)


def test_decode_fused_merge_repeated_launches():
    """The merge counters return to zero after every launch: repeated launches (replays of one
    CUDA graph on a GPU, eager launches on the CPU) on fresh queries stay exact."""
    dtype = torch.bfloat16
    seqs = [(1, 5000), (1, 17), (1, 1), (1, 700)] if CUDA else [(1, 300), (1, 17), (1, 1)]
    hq, hkv, d = (32, 8, 128) if CUDA else (8, 2, 64)
    b = make_batch(seqs, hq, hkv, d, 16, dtype, seed=11)
    cfg = fused_merge_config(d, dtype)
    scale = d ** -0.5
    out = torch.full_like(b.q, float("nan"))

    def launch():
        paged_decode_attention(b.q, b.kv_layer, b.seq_lens, b.block_tables, scale,
                               num_splits=6, out=out, config=cfg)

    launch()  # compiles; on a GPU also makes the device's counter buffer before the capture
    replay = launch
    if CUDA:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            launch()
        replay = graph.replay
    g = torch.Generator().manual_seed(12)
    for _ in range(3):
        b.q.copy_(torch.randn(b.q.shape, generator=g).to(b.q.device, dtype))
        out.fill_(float("nan"))
        replay()
        ref = paged_decode_attention_ref(b.q, b.kv_layer, b.seq_lens, b.block_tables, scale)
        assert_close(out, ref, dtype)


def test_decode_kernel_matches_prefill_kernel_on_single_tokens():
    b = make_batch([(1, 40), (1, 7), (1, 129)], 8, 2, 64, 16, torch.float32, seed=7)
    dec = paged_decode_attention(b.q, b.kv_layer, b.seq_lens, b.block_tables, 0.1)
    pre = paged_prefill_attention(b.q, b.kv_layer, b.query_start_loc, b.seq_lens,
                                  b.block_tables, 0.1, 1)
    assert_close(dec, pre, torch.float32)


def test_decode_kernel_zero_length_padding_gives_zeros():
    b = make_batch([(1, 20), (1, 5)], 4, 2, 64, 16, torch.float32, seed=8)
    seq_lens = b.seq_lens.clone()
    seq_lens[1] = 0
    ref = paged_decode_attention_ref(b.q, b.kv_layer, seq_lens, b.block_tables, 0.125)
    for num_splits in (1, 2):
        out = paged_decode_attention(b.q, b.kv_layer, seq_lens, b.block_tables, 0.125,
                                     num_splits=num_splits)
        assert torch.equal(out[1], torch.zeros_like(out[1]))
        assert_close(out, ref, torch.float32)


def test_attention_rejects_bad_gqa_ratio():
    b = make_batch([(1, 5)], 4, 2, 64, 16, torch.float32)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        paged_decode_attention_ref(b.q[:, :3], b.kv_layer, b.seq_lens, b.block_tables, 0.1)
