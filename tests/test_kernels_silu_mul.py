"""Fused SiLU-gated product: the reference against Hugging Face's Llama MLP activation, the
Triton kernel against the reference (CPU through the interpreter at small sizes, real sizes on
a GPU), and the engine's MLP through each backend."""
from kernels._triton import use_interpreter_without_cuda

use_interpreter_without_cuda()  # before the first Triton launch in this process

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers.activations import ACT2FN  # noqa: E402

from kernels.backend import get_kernel_ops  # noqa: E402
from kernels.silu_mul import BLOCK, silu_mul, silu_mul_ref  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# float32 differs only in exp's last bits; 16-bit results may differ by one unit in the last
# place (the CPU interpreter truncates bf16 casts instead of rounding): 2**-10 and 2**-7 relative
TOL = {torch.float32: 1e-6, torch.float16: 1.1e-3, torch.bfloat16: 1.6e-2}


def rand(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(shape, generator=g)).to(device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_is_hf_llama_mlp_activation(dtype):
    x = rand(5, 2 * 96, dtype=dtype, seed=1)
    gate, up = x[:, :96], x[:, 96:]
    want = ACT2FN["silu"](gate) * up                       # LlamaMLP: act_fn(gate) * up
    assert torch.equal(silu_mul_ref(x), want)


SHAPES = [(1, 2 * 7), (3, 2 * (BLOCK - 1)), (4, 2 * (BLOCK + 5)), (2, 2 * 1536)] \
    + ([(1, 2 * 14336), (256, 2 * 14336), (8192, 2 * 14336)] if CUDA else [])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_reference(shape, dtype):
    x = rand(*shape, dtype=dtype, seed=shape[0] * 31 + shape[1])
    got, want = silu_mul(x), silu_mul_ref(x)
    assert got.shape == (shape[0], shape[1] // 2) and got.dtype == dtype
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got.float(), want.float(), rtol=TOL[dtype], atol=TOL[dtype])


def test_kernel_strided_rows_and_empty_batch():
    full = rand(6, 3, 2 * 40, dtype=torch.float32, seed=9)
    x = full[:, 1]                                          # row stride 240
    torch.testing.assert_close(silu_mul(x), silu_mul_ref(x), rtol=1e-6, atol=1e-6)
    assert silu_mul(x[:0]).shape == (0, 40)


def test_bad_shapes_are_refused():
    for fn in (silu_mul, silu_mul_ref):
        with pytest.raises(ValueError, match="gate_up must be"):
            fn(rand(3, 7, dtype=torch.float32, seed=2))
        with pytest.raises(ValueError, match="gate_up must be"):
            fn(rand(6, dtype=torch.float32, seed=3))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_backends_expose_the_op(backend):
    ops = get_kernel_ops(backend, DEVICE)
    x = rand(2, 2 * 64, dtype=torch.float32, seed=4)
    torch.testing.assert_close(ops.silu_mul(x), silu_mul_ref(x), rtol=1e-6, atol=1e-6)
