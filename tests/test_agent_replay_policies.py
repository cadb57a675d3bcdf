"""The baselines the agent replay measures behave as they are described on the real engine.

lru: a paused session's KV stays on the GPU as plain prefix cache, evictable least recently used
first (never pinned: pinned blocks of paused sessions would fill the GPU and stall every turn).
lru_cpu: the same, and blocks evicted from the GPU can be brought back from CPU memory.
"""
import pytest
import torch

from hf_models import save_model
from kvstore.block_pool import chain_hashes
from runtime import Engine, EngineConfig, SamplingParams
from runtime.kv_controller import make_controller


def engine(tmp_path, blocks=24):
    folder = save_model("llama", tmp_path / "model")
    return Engine(EngineConfig(model=str(folder), device="cpu", dtype="float32",
                               num_gpu_blocks=blocks, kernel_backend="torch", block_size=16,
                               cpu_cache_gb=0.01, disk_cache_path=str(tmp_path / "kv"),
                               disk_cache_gb=0.05))


def prompt(seed, n=64):
    return torch.randint(3, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def settle(eng):
    for _ in range(3):
        eng.tiers.transfer.synchronize()
        eng.tiers.poll()


def run_turn(eng, ctl, sid, tokens):
    out = eng.generate([tokens], SamplingParams(max_tokens=1, ignore_eos=True))[0]
    ctl.turn_end(sid, tokens + out.token_ids)
    return tokens + out.token_ids


def test_lru_keeps_paused_kv_as_evictable_prefix_cache(tmp_path):
    eng = engine(tmp_path)
    ctl = make_controller(eng, "lru")
    logs = [run_turn(eng, ctl, s, prompt(i)) for i, s in enumerate("ab")]
    for s in "ab":
        assert ctl.pause(s, "bash", None, False).placement.value == "keep_gpu"
    for log in logs:
        blocks = [eng.pool.lookup_hash(h) for h in chain_hashes(log, 16, eng.fingerprint)]
        assert all(b is not None and eng.pool.ref_count(b) == 0 for b in blocks)
    # a third session needing the whole pool gets it: the paused ones are evicted, not pinned
    big = prompt(7, n=16 * eng.pool.num_blocks - 2)
    out = eng.generate([big], SamplingParams(max_tokens=1, ignore_eos=True))[0]
    assert len(out.token_ids) == 1
    assert not any(eng.pool.lookup_hash(h) is not None
                   for h in chain_hashes(logs[0], 16, eng.fingerprint))
    eng.pool.check_invariants()
    eng.tiers.close()


@pytest.mark.parametrize("policy", ["lru", "lru_cpu"])
def test_only_lru_cpu_brings_gpu_evicted_kv_back_from_cpu(tmp_path, policy):
    eng = engine(tmp_path)
    ctl = make_controller(eng, policy)
    log = run_turn(eng, ctl, "a", prompt(3))
    ctl.pause("a", "bash", None, False)
    settle(eng)
    hashes = chain_hashes(log, 16, eng.fingerprint)
    on_cpu = ["cpu" in eng.tiers.locate(h).tiers for h in hashes]
    assert on_cpu == [policy == "lru_cpu"] * len(hashes)       # plain lru makes no copies
    assert eng.tiers.evict(hashes, "gpu") == len(hashes)        # evicted by pressure
    nxt = log + prompt(4, n=20)
    rid = eng.add_request(nxt, SamplingParams(max_tokens=1, ignore_eos=True))
    req = eng.requests[rid]
    while eng.has_unfinished():
        eng.step()
    loaded = 16 * len(hashes) if policy == "lru_cpu" else 0
    assert (req.kv_source.get("cpu", 0), req.kv_source["gpu"]) == (loaded, 0)
    eng.tiers.close()


def test_prefetch_holding_present_blocks_counts_only_the_room_left(tmp_path):
    """A held prefetch when the only free blocks are cached ones of the same prefix: holding
    them uses that room up, so nothing more is loaded (it raised OutOfBlocks on the engine
    thread, which stopped the server)."""
    eng = engine(tmp_path, blocks=12)
    p = prompt(6, n=16 * 6 + 1)
    eng.generate([p], SamplingParams(max_tokens=1, ignore_eos=True))
    hashes = chain_hashes(p[:16 * 6], 16, eng.fingerprint)
    eng.tiers.offload(hashes, "cpu").wait()
    settle(eng)
    assert eng.tiers.evict(hashes[3:], "gpu") == 3
    held = eng.pool.allocate(eng.pool.num_free_blocks - 3)     # only the 3 cached ones free
    handle = eng.tiers.prefetch(hashes, hold=True)
    handle.wait()
    settle(eng)
    assert sorted(handle.gpu_blocks) == sorted(hashes[:3])
    assert handle.not_started == hashes[3:]
    eng.pool.free(held + list(handle.gpu_blocks.values()))
    eng.pool.check_invariants()
    eng.tiers.close()
