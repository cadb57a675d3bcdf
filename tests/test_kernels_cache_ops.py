"""KV write and block pack/unpack: Triton kernels against their references (exact copies)."""
from kernels._triton import use_interpreter_without_cuda

use_interpreter_without_cuda()  # before the first Triton launch in this process

import pytest  # noqa: E402
import torch  # noqa: E402

from kernels.block_copy import (pack_blocks, pack_blocks_ref, unpack_blocks,  # noqa: E402
                                unpack_blocks_ref)
from kernels.kv_write import write_kv, write_kv_ref  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def rand(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(device=DEVICE, dtype=dtype)


# (num_blocks, num_layers, block_size, num_kv_heads, head_dim, num_tokens)
WRITE_SHAPES = [(9, 3, 16, 2, 64, 40), (6, 2, 32, 8, 128, 70), (5, 1, 16, 1, 32, 3)]
GPU_WRITE_SHAPES = [(2048, 4, 16, 8, 128, 8192)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", WRITE_SHAPES + (GPU_WRITE_SHAPES if CUDA else []))
def test_write_kv_matches_reference(shape, dtype):
    num_blocks, num_layers, bs, hkv, d, n = shape
    cache = rand(num_blocks, num_layers, 2, bs, hkv, d, dtype=dtype, seed=1)
    layer = num_layers - 1
    # k, v as strided slices of one fused projection, like the model produces them
    fused = rand(n, 3, hkv, d, dtype=dtype, seed=2)
    k, v = fused[:, 1], fused[:, 2]
    g = torch.Generator().manual_seed(3)
    slots = torch.randperm(num_blocks * bs, generator=g)[:n].to(DEVICE)
    slots[:: 7] = -1                                       # skipped tokens
    got, want = cache.clone(), cache.clone()
    write_kv(k, v, got[:, layer], slots)
    write_kv_ref(k, v, want[:, layer], slots)
    assert torch.equal(got, want)
    # the written rows really hold k and v; the other layers are untouched
    keep = slots >= 0
    blocks, offs = slots[keep] // bs, slots[keep] % bs
    assert torch.equal(got[blocks, layer, 0, offs], k[keep])
    assert torch.equal(got[blocks, layer, 1, offs], v[keep])
    assert torch.equal(got[:, :layer], cache[:, :layer])


def test_write_kv_rejects_wrong_head_shape():
    cache = rand(4, 1, 2, 16, 2, 64, dtype=torch.float32, seed=0)
    k = rand(3, 4, 64, dtype=torch.float32, seed=1)
    with pytest.raises(ValueError, match="kv_layer must be"):
        write_kv_ref(k, k, cache[:, 0], torch.arange(3, device=DEVICE))


# (num_blocks, num_layers, block_size, num_kv_heads, head_dim, n)
COPY_SHAPES = [(12, 2, 16, 2, 32, 5), (9, 3, 32, 1, 64, 9), (7, 1, 16, 3, 24, 1)]
GPU_COPY_SHAPES = [(600, 32, 16, 8, 128, 256)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", COPY_SHAPES + (GPU_COPY_SHAPES if CUDA else []))
def test_pack_unpack_match_reference(shape, dtype):
    num_blocks, num_layers, bs, hkv, d, n = shape
    kv = rand(num_blocks, num_layers, 2, bs, hkv, d, dtype=dtype, seed=4)
    g = torch.Generator().manual_seed(5)
    ids = torch.randperm(num_blocks, generator=g)[:n].to(DEVICE)
    out = torch.full((n, *kv.shape[1:]), float("nan"), dtype=dtype, device=DEVICE)
    res = pack_blocks(kv, ids, out=out)
    assert res is out
    assert torch.equal(out, pack_blocks_ref(kv, ids))
    assert torch.equal(pack_blocks(kv, ids), kv[ids])

    src = rand(n, *kv.shape[1:], dtype=dtype, seed=6)
    got, want = kv.clone(), kv.clone()
    unpack_blocks(got, ids, src)
    unpack_blocks_ref(want, ids, src)
    assert torch.equal(got, want)
    assert torch.equal(got[ids], src)


def test_pack_then_unpack_round_trips():
    kv = rand(10, 2, 2, 16, 2, 64, dtype=torch.bfloat16, seed=7)
    ids = torch.tensor([7, 0, 3, 9], device=DEVICE)
    packed = pack_blocks(kv, ids)
    other = rand(10, 2, 2, 16, 2, 64, dtype=torch.bfloat16, seed=8)
    dest = torch.tensor([1, 2, 5, 8], device=DEVICE)
    unpack_blocks(other, dest, packed)
    assert torch.equal(other[dest], kv[ids])


def test_pack_rejects_non_contiguous_cache():
    kv = rand(4, 2, 2, 16, 2, 64, dtype=torch.float32, seed=9)[:, :1]
    with pytest.raises(ValueError, match="contiguous"):
        pack_blocks_ref(kv, torch.tensor([0], device=DEVICE))
