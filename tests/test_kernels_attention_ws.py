"""Which prefill kernel runs (CPU and GPU), and the warp-specialised Hopper prefill kernel against
the torch reference (sm_90 GPUs only: Gluon has no interpreter). Causal-diagonal boundaries,
chunks with and without earlier context, GQA groups 1 to 8 (and 7, padded), head_dim 64 and 128,
bf16 and fp16, every loader/buffer variant, and more work items than SMs (persistent rounds)."""
from kernels._triton import use_interpreter_without_cuda

use_interpreter_without_cuda()  # before the first Triton launch in this process

import pytest  # noqa: E402
import torch  # noqa: E402

from kernels.attention_prefill import (PrefillConfig, PrefillWSConfig,  # noqa: E402
                                       default_prefill_config, paged_prefill_attention,
                                       paged_prefill_attention_ref, ws_supported)
from kernels.prefill_config import (prefill_kernel_choice, tma_layout_ok,  # noqa: E402
                                    ws_strides_ok)
from test_kernels_attention import (CUDA, MIXED, assert_close, check_prefill_kernel,  # noqa: E402
                                    make_batch)

WS = CUDA and ws_supported(128, torch.bfloat16, torch.device("cuda"), 4)
needs_ws = pytest.mark.skipif(not WS, reason="the warp-specialised kernel needs an sm_90 GPU")

# (q_len, seq_len): chunks from position 0 whose causal diagonal starts on a 64/128-token step
# boundary and just past one, chunks after earlier context (diagonal at, before and after a step
# boundary), single tokens, and a chunk shorter than one work item
BOUNDARY = [(128, 128), (256, 256), (32, 160), (33, 161), (127, 255), (64, 192), (1, 129),
            (1, 128), (96, 96), (200, 1000), (5, 5), (300, 301)]

LLAMA3_8B = (32, 8, 128, 16, torch.bfloat16)


# ---- selection (CPU too) ------------------------------------------------------------------------

def test_default_config_off_hopper_is_the_triton_kernel():
    cpu = torch.device("cpu")
    assert isinstance(default_prefill_config(128, torch.bfloat16, cpu, 2048, 4), PrefillConfig)
    assert not ws_supported(128, torch.bfloat16, cpu, 4)
    if CUDA:
        dev = torch.device("cuda")
        # float32, head_dim 256, a negative scale and huge groups stay on the Triton kernel
        for args in [(128, torch.float32, dev, 64, 4), (256, torch.bfloat16, dev, 64, 4),
                     (128, torch.bfloat16, dev, 64, 128)]:
            assert isinstance(default_prefill_config(*args), PrefillConfig), args
        assert isinstance(default_prefill_config(128, torch.bfloat16, dev, 64, 4, scale=-1.0),
                          PrefillConfig)


def test_the_ws_kernel_loads_by_tma_from_64_token_pages(monkeypatch):
    """Where the warp-specialised kernel runs (taken as given here), pages of 64 tokens or more
    select its TMA loader and smaller pages its cp.async gather."""
    import kernels.prefill_config as pc
    monkeypatch.setattr(pc, "ws_supported", lambda *a: True)
    cpu = torch.device("cpu")
    got = {bs: pc.default_prefill_config(128, torch.bfloat16, cpu, 2048, 4, 1.0, bs)
           for bs in (16, 32, 64, 128)}
    assert all(isinstance(c, PrefillWSConfig) for c in got.values())
    assert {bs: c.tma for bs, c in got.items()} == {16: False, 32: False, 64: True, 128: True}


@needs_ws
def test_default_config_on_hopper_is_the_ws_kernel(monkeypatch):
    for d, dtype in [(128, torch.bfloat16), (64, torch.float16)]:
        cfg = default_prefill_config(d, dtype, torch.device("cuda"), 2048, 4)
        assert isinstance(cfg, PrefillWSConfig)
    monkeypatch.setenv("AGENTKV_PREFILL_KERNEL", "triton")     # the operator's way back
    cfg = default_prefill_config(128, torch.bfloat16, torch.device("cuda"), 2048, 4)
    assert isinstance(cfg, PrefillConfig)


def test_prefill_kernel_choice_rejects_unknown_values(monkeypatch):
    monkeypatch.setenv("AGENTKV_PREFILL_KERNEL", "fast")
    with pytest.raises(ValueError, match="AGENTKV_PREFILL_KERNEL"):
        prefill_kernel_choice()


def padded_layer(kv_layer: torch.Tensor, pad: int) -> torch.Tensor:
    """A copy of kv_layer whose block stride is `pad` elements longer than the block."""
    nb, _, bs, hkv, d = kv_layer.shape
    block = 2 * bs * hkv * d
    flat = torch.zeros(nb * (block + pad), dtype=kv_layer.dtype, device=kv_layer.device)
    out = flat.as_strided(kv_layer.shape, (block + pad, bs * hkv * d, hkv * d, d, 1))
    out.copy_(kv_layer)
    return out


def test_cache_strides_decide_tma_and_the_ws_kernel():
    b = make_batch([(4, 40)], 8, 2, 64, 16, torch.bfloat16)
    assert tma_layout_ok(b.kv_layer) and ws_strides_ok(b.kv_layer)   # [blocks, 3 layers, 2..]
    rows = padded_layer(b.kv_layer, 2 * 64)                  # pad of whole rows: both
    assert tma_layout_ok(rows) and ws_strides_ok(rows)
    vectors = padded_layer(b.kv_layer, 16)                   # 16 elements: cp.async, no TMA
    assert not tma_layout_ok(vectors) and ws_strides_ok(vectors)
    odd = padded_layer(b.kv_layer, 8)                        # 8 elements: the Triton kernel
    assert not ws_strides_ok(odd)


@needs_ws
@pytest.mark.parametrize("pad,cfg", [(16, PrefillWSConfig(tma=True)), (8, None)])
def test_ws_kernel_falls_back_by_cache_strides(pad, cfg):
    """TMA asked for on a cache without a row grid: cp.async; a cache whose block stride is
    not a multiple of 16 elements: the Triton kernel (default config). Same results."""
    b = make_batch(MIXED + BOUNDARY, 32, 8, 128, 16, torch.bfloat16, seed=26)
    kv = padded_layer(b.kv_layer, pad)
    args = (b.q, kv, b.query_start_loc, b.seq_lens, b.block_tables, 128 ** -0.5, max(b.q_lens))
    out = torch.full_like(b.q, float("nan"))
    paged_prefill_attention(*args, out=out, config=cfg)
    assert_close(out, paged_prefill_attention_ref(*args), torch.bfloat16)


@pytest.mark.parametrize("cfg,match", [
    (PrefillWSConfig(block_n=96), "block_n 64 or 128"),
    (PrefillWSConfig(num_buf=1), "num_buf >= 2"),
    (PrefillWSConfig(block_n=64, chunk=128), "chunk must be"),
    (PrefillWSConfig(loader_warps=3), "loader_warps"),
    (PrefillWSConfig(loader_warps=16), "loader_warps"),
    (PrefillWSConfig(consumers=4), "consumers"),
    (PrefillWSConfig(q_regs=True, overlap_items=True), "q_regs and overlap_items"),
])
def test_ws_config_checks(cfg, match):
    b = make_batch([(4, 4)], 4, 2, 64, 16, torch.bfloat16)
    with pytest.raises(ValueError, match=match):
        paged_prefill_attention(b.q, b.kv_layer, b.query_start_loc, b.seq_lens, b.block_tables,
                                0.1, 4, config=cfg)


def test_ws_config_refused_where_it_cannot_run():
    """float32 (and, off Hopper, everything) is refused with a clear error, never run wrongly."""
    b = make_batch([(4, 4)], 4, 2, 64, 16, torch.float32)
    with pytest.raises(ValueError, match="sm_90"):
        paged_prefill_attention(b.q, b.kv_layer, b.query_start_loc, b.seq_lens, b.block_tables,
                                0.1, 4, config=PrefillWSConfig())


# ---- the kernel (sm_90) -------------------------------------------------------------------------

# (num_q_heads, num_kv_heads, head_dim, block_size, dtype): GQA 4 (Llama-3-8B), 1, 8, 7 -> 8
WS_SHAPES = [LLAMA3_8B, (32, 8, 128, 16, torch.float16),
             (8, 8, 128, 16, torch.bfloat16), (64, 8, 64, 32, torch.bfloat16),
             (28, 4, 128, 16, torch.bfloat16), (16, 4, 64, 16, torch.float16)]


@needs_ws
@pytest.mark.parametrize("shape", WS_SHAPES)
def test_ws_kernel_boundaries_and_mixed_batch(shape):
    check_prefill_kernel(MIXED + BOUNDARY, shape, None, seed=21)


# the default (three consumers, 64-token steps, cp.async) runs in every test above; the others:
TWO = dict(consumers=2, block_n=128, consumer_regs=208, loader_regs=96)
Q_IN_REGS = dict(consumers=2, block_n=64, num_buf=4, consumer_regs=232, loader_regs=48,
                 q_regs=True)
WS_CONFIGS = [PrefillWSConfig(num_buf=4), PrefillWSConfig(tma=True),
              PrefillWSConfig(**TWO), PrefillWSConfig(**dict(TWO, num_buf=2)),
              PrefillWSConfig(**dict(TWO, tma=True)),
              PrefillWSConfig(**dict(TWO, block_n=64, num_buf=4)),
              PrefillWSConfig(**dict(TWO, loader_warps=1, chunk=16)),
              PrefillWSConfig(**dict(TWO, loader_warps=2, chunk=16)),
              PrefillWSConfig(**dict(TWO, loader_warps=8, chunk=64, loader_regs=56)),
              # consumers issuing their products in turn: three, two, two with TMA
              PrefillWSConfig(pingpong=True), PrefillWSConfig(**dict(TWO, pingpong=True)),
              PrefillWSConfig(**dict(TWO, tma=True, pingpong=True)),
              # items flowing into each other: three, with TMA, with turns; two (two buffers
              # of 128-token steps: two Q buffers a consumer leave no room for a third)
              PrefillWSConfig(overlap_items=True), PrefillWSConfig(tma=True, overlap_items=True),
              PrefillWSConfig(pingpong=True, overlap_items=True),
              PrefillWSConfig(**dict(TWO, num_buf=2, overlap_items=True)),
              # query rows in registers: two consumers on 64-token steps (no spills), with
              # TMA, with turns; three (they spill: still right)
              PrefillWSConfig(**Q_IN_REGS), PrefillWSConfig(**dict(Q_IN_REGS, tma=True)),
              PrefillWSConfig(**dict(Q_IN_REGS, pingpong=True)), PrefillWSConfig(q_regs=True)]


@needs_ws
@pytest.mark.parametrize("shape", [(64, 8, 64, 32, torch.bfloat16),
                                   (28, 4, 128, 16, torch.float16)])
def test_ws_kernel_two_consumers(shape):
    """Two consumer warpgroups: 32 (GQA 4) or 16 (GQA 8) tokens per work item."""
    check_prefill_kernel(MIXED + BOUNDARY, shape, PrefillWSConfig(**TWO), seed=25)


@needs_ws
@pytest.mark.parametrize("cfg", WS_CONFIGS)
def test_ws_kernel_configs(cfg):
    check_prefill_kernel(MIXED + BOUNDARY, LLAMA3_8B, cfg, seed=22)


@needs_ws
@pytest.mark.parametrize("block_size", [32, 64, 128])
@pytest.mark.parametrize("cfg", [None, PrefillWSConfig(tma=True), PrefillWSConfig(**TWO),
                                 PrefillWSConfig(**dict(TWO, tma=True))])
def test_ws_kernel_large_pages(block_size, cfg):
    """Pages of 32 to 128 tokens: a K/V step is one page, part of one, or two (TMA boxes of
    min(page, step) rows), over the same boundaries and a long context."""
    shape = (32, 8, 128, block_size, torch.bfloat16)
    check_prefill_kernel(MIXED + BOUNDARY + [(700, 3000)], shape, cfg, seed=27 + block_size)


@needs_ws
@pytest.mark.parametrize("seqs", [
    [(2048, 2048)] * 4,                          # the benchmark's 4 x 2K: 16 rounds per program
    [(4096, 6000), (100, 300), (1, 5000)],       # extends after long context, a decode token
    [(512, 8192), (2048, 4096)],
])
def test_ws_kernel_long_context(seqs):
    check_prefill_kernel(seqs, LLAMA3_8B, None, seed=23)


@needs_ws
@pytest.mark.parametrize("cfg", [PrefillWSConfig(pingpong=True),
                                 PrefillWSConfig(**dict(TWO, pingpong=True)),
                                 PrefillWSConfig(overlap_items=True),
                                 PrefillWSConfig(pingpong=True, overlap_items=True),
                                 PrefillWSConfig(**dict(TWO, num_buf=2, overlap_items=True))])
def test_ws_kernel_over_many_items(cfg):
    """The consumers' turns, and with overlap_items the item carried into the next (its
    rows, its Q buffer), cross items of different lengths and persistent rounds: a count off
    by one would hang, mix up tiles or store rows to the wrong item here."""
    check_prefill_kernel([(2048, 2048)] * 2 + [(1, 5000), (700, 3000)] + MIXED, LLAMA3_8B, cfg,
                         seed=28)


@needs_ws
def test_ws_kernel_matches_triton_kernel():
    """Both kernels on one batch agree to bf16 rounding (they share no code past the wrapper)."""
    b = make_batch(MIXED + BOUNDARY, 32, 8, 128, 16, torch.bfloat16, seed=24)
    args = (b.q, b.kv_layer, b.query_start_loc, b.seq_lens, b.block_tables, 128 ** -0.5,
            max(b.q_lens))
    ws = paged_prefill_attention(*args, config=PrefillWSConfig())
    tr = paged_prefill_attention(*args, config=PrefillConfig(128, 64, 8, 3))
    assert_close(ws, tr, torch.bfloat16)
