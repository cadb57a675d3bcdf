"""RMSNorm and rotary embedding: references against Hugging Face's Llama code, Triton kernels
against the references, rotary frequency tables against transformers' ROPE_INIT_FUNCTIONS."""
from kernels._triton import use_interpreter_without_cuda

use_interpreter_without_cuda()  # before the first Triton launch in this process

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama import modeling_llama as hf_llama  # noqa: E402

from kernels.rms_norm import rms_norm, rms_norm_ref  # noqa: E402
from kernels.rotary import (apply_rotary, apply_rotary_ref, build_cos_sin_cache,  # noqa: E402
                            default_inv_freq, llama3_inv_freq)

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def rand(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(device=DEVICE, dtype=dtype)


def assert_kernel_close(got, want, dtype):
    """Within dtype tolerance: the kernel's float32 sum of squares runs in another order than
    torch's, and the CPU interpreter truncates bf16 casts, so the last bit may differ."""
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got.float(), want.float(), rtol=TOL[dtype], atol=TOL[dtype])


# ---- RMSNorm ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_reference_is_hf_llama_rms_norm(dtype):
    x = rand(5, 96, dtype=dtype, seed=1)
    res = rand(5, 96, dtype=dtype, seed=2)
    hf = hf_llama.LlamaRMSNorm(96, eps=1e-6).to(DEVICE, dtype)
    with torch.no_grad():
        hf.weight.copy_(rand(96, dtype=dtype, seed=3))
        assert torch.equal(rms_norm_ref(x, hf.weight, 1e-6), hf(x))
        out, new_res = rms_norm_ref(x, hf.weight, 1e-6, res)
        assert torch.equal(new_res, x + res)
        assert torch.equal(out, hf(x + res))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 200), (33, 128), (1, 4096)]
                         + ([(4096, 4096), (3, 8192)] if CUDA else []))
def test_rms_norm_kernel_matches_reference(shape, dtype):
    x = rand(*shape, dtype=dtype, seed=4)
    w = rand(shape[1], dtype=dtype, seed=5)
    res = rand(*shape, dtype=dtype, seed=6)
    assert_kernel_close(rms_norm(x, w, 1e-5), rms_norm_ref(x, w, 1e-5), dtype)
    out, new_res = rms_norm(x, w, 1e-5, res)
    ref_out, ref_res = rms_norm_ref(x, w, 1e-5, res)
    assert_kernel_close(new_res, ref_res, dtype)
    assert_kernel_close(out, ref_out, dtype)
    assert out.dtype == ref_out.dtype and new_res.dtype == dtype


def test_rms_norm_kernel_strided_rows():
    full = rand(6, 3, 64, dtype=torch.float32, seed=7)
    x = full[:, 1]                                          # row stride 192
    w = rand(64, dtype=torch.float32, seed=8)
    assert_kernel_close(rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6), torch.float32)


# ---- rotary frequencies ----------------------------------------------------------------------

def _hf_default(config):
    fn = ROPE_INIT_FUNCTIONS.get("default")
    if fn is None:  # transformers 5 keeps "default" on the model's rotary class
        fn = hf_llama.LlamaRotaryEmbedding.compute_default_rope_parameters
    return fn(config)


@pytest.mark.parametrize("head_dim,theta", [(128, 10000.0), (64, 500000.0), (32, 1e6)])
def test_default_inv_freq_matches_transformers(head_dim, theta):
    config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                         rope_theta=theta)
    want, scaling = _hf_default(config)
    assert scaling == 1.0
    assert torch.equal(default_inv_freq(theta, head_dim), want.float())


@pytest.mark.parametrize("head_dim", [128, 64])
def test_llama3_inv_freq_matches_transformers(head_dim):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = LlamaConfig(hidden_size=head_dim * 32, num_attention_heads=32, head_dim=head_dim,
                         rope_theta=500000.0, rope_scaling=scaling,
                         max_position_embeddings=131072)
    want, attn_scaling = ROPE_INIT_FUNCTIONS["llama3"](config, None)
    got = llama3_inv_freq(500000.0, head_dim, 8.0, 1.0, 4.0, 8192)
    assert attn_scaling == 1.0
    assert torch.equal(got, want.float())


def test_cos_sin_cache_matches_hf_rotary_embedding():
    config = LlamaConfig(hidden_size=512, num_attention_heads=4, head_dim=128,
                         rope_theta=10000.0, max_position_embeddings=2048)
    emb = hf_llama.LlamaRotaryEmbedding(config)
    positions = torch.tensor([[0, 1, 5, 1000, 2047]])
    cos, sin = emb(torch.zeros(1, dtype=torch.float32), positions)   # [1, 5, 128]
    cache = build_cos_sin_cache(emb.inv_freq, 2048, emb.attention_scaling)
    half = 64
    assert torch.equal(cache[positions[0], :half], cos[0, :, :half])
    assert torch.equal(cache[positions[0], half:], sin[0, :, :half])
    assert torch.equal(cos[0, :, :half], cos[0, :, half:])  # HF duplicates over both halves


# ---- rotary application ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_apply_rotary_reference_is_hf(dtype):
    config = LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=64,
                         rope_theta=500000.0, max_position_embeddings=4096)
    emb = hf_llama.LlamaRotaryEmbedding(config)
    q = rand(9, 4, 64, dtype=dtype, seed=10)
    k = rand(9, 2, 64, dtype=dtype, seed=11)
    positions = torch.randint(0, 4096, (9,), generator=torch.Generator().manual_seed(12))
    cos, sin = emb(q.cpu(), positions[None])                # [1, 9, 64] in q's dtype
    # HF layout [batch, heads, seq, dim]
    hq, hk = hf_llama.apply_rotary_pos_emb(q.cpu().transpose(0, 1)[None],
                                           k.cpu().transpose(0, 1)[None], cos, sin)
    cache = build_cos_sin_cache(emb.inv_freq, 4096, emb.attention_scaling).to(DEVICE)
    rq, rk = apply_rotary_ref(q, k, positions.to(DEVICE), cache)
    assert torch.equal(rq.cpu(), hq[0].transpose(0, 1))
    assert torch.equal(rk.cpu(), hk[0].transpose(0, 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,head_dim", [((8, 2), 64), ((4, 4), 128), ((3, 1), 32)]
                         + ([((32, 8), 128)] if CUDA else []))
def test_apply_rotary_kernel_matches_reference(heads, head_dim, dtype):
    hq, hkv = heads
    n = 2048 if CUDA and hq == 32 else 11
    inv = llama3_inv_freq(500000.0, head_dim, 8.0, 1.0, 4.0, 8192)
    cache = build_cos_sin_cache(inv, 8192).to(DEVICE)
    q = rand(n, hq, head_dim, dtype=dtype, seed=13)
    k = rand(n, hkv, head_dim, dtype=dtype, seed=14)
    positions = torch.randint(0, 8192, (n,), generator=torch.Generator().manual_seed(15))
    positions = positions.to(DEVICE)
    want_q, want_k = apply_rotary_ref(q, k, positions, cache)
    q_in, k_in = q.clone(), k.clone()
    got_q, got_k = apply_rotary(q_in, k_in, positions, cache)
    assert got_q.data_ptr() == q_in.data_ptr() and got_k.data_ptr() == k_in.data_ptr()
    assert_kernel_close(got_q, want_q, dtype)
    assert_kernel_close(got_k, want_k, dtype)
