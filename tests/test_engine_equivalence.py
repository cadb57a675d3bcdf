"""Greedy tokens of the engine equal transformers' generate(), token for token, in float32.

Random weights are drawn with a large init scale (std 0.2, see hf_models.save_model) so that the
top two logits are far apart and greedy choices are stable; the check itself is exact identity.
"""
import pytest
import torch

from hf_models import FAMILIES, hf_greedy, save_model
from runtime import Engine, EngineConfig, SamplingParams

NEW_TOKENS = 32
LENGTHS = [3, 9, 16, 17, 40, 77, 150, 300]


def _prompts(seed: int, shared_prefix: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(3, 512, (shared_prefix,), generator=g).tolist()
    return [prefix + torch.randint(3, 512, (n,), generator=g).tolist() for n in LENGTHS]


@pytest.fixture(scope="module", params=FAMILIES)
def family_case(request, tmp_path_factory):
    folder = save_model(request.param, tmp_path_factory.mktemp(request.param) / "model")
    prompts = _prompts(1)
    shared = _prompts(2, shared_prefix=160)
    return folder, prompts, hf_greedy(folder, prompts, NEW_TOKENS), shared, \
        hf_greedy(folder, shared, NEW_TOKENS)


def _engine(folder, **kw) -> Engine:
    cfg = dict(model=str(folder), device="cpu", dtype="float32", kernel_backend="torch")
    cfg.update(kw)
    return Engine(EngineConfig(**cfg))


PARAMS = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)


def _assert_same(expected, outs):
    for i, (ref, out) in enumerate(zip(expected, outs)):
        assert out.token_ids == ref, f"prompt {i} ({LENGTHS[i]} tokens) differs"


def test_batch_matches_transformers(family_case):
    folder, prompts, ref, _, _ = family_case
    eng = _engine(folder, num_gpu_blocks=256, max_num_batched_tokens=4096)
    _assert_same(ref, eng.generate(prompts, PARAMS))


def test_small_prefill_chunks_match(family_case):
    folder, prompts, ref, _, _ = family_case
    eng = _engine(folder, num_gpu_blocks=256, max_num_batched_tokens=32)
    _assert_same(ref, eng.generate(prompts, PARAMS))
    assert eng.stats.steps > NEW_TOKENS + sum(LENGTHS) // 32 - 1   # prompts really were chunked


def test_prefix_cache_hits_match(family_case):
    folder, _, _, shared, ref = family_case
    eng = _engine(folder, num_gpu_blocks=256, max_num_batched_tokens=512)
    _assert_same(ref, eng.generate(shared, PARAMS))
    first_cached = eng.stats.prompt_tokens_cached
    _assert_same(ref, eng.generate(shared, PARAMS))   # again: now prompts come from the cache
    assert eng.stats.prompt_tokens_cached - first_cached >= 8 * 160


def test_preemption_matches(family_case):
    folder, prompts, ref, _, _ = family_case
    eng = _engine(folder, num_gpu_blocks=24, max_num_batched_tokens=256, block_size=16)
    _assert_same(ref, eng.generate(prompts, PARAMS))
    assert eng.stats.preemptions > 0
    eng.pool.check_invariants()
    assert eng.pool.num_free_blocks == 24
