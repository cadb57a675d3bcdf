"""The engine loads a prompt's prefix from the CPU or disk tier, and the tokens do not change."""
import math

import pytest
import torch

from hf_models import save_model
from kvstore.block_pool import chain_hashes
from runtime import Engine, EngineConfig, SamplingParams

PARAMS = SamplingParams(max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_model("qwen2", tmp_path_factory.mktemp("qwen2") / "model")


def test_tokens_identical_computed_gpu_cpu_disk(folder, tmp_path):
    eng = Engine(EngineConfig(model=str(folder), device="cpu", dtype="float32",
                              num_gpu_blocks=64, kernel_backend="torch", cpu_cache_gb=0.01,
                              disk_cache_path=str(tmp_path / "kv"), disk_cache_gb=0.05))
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(3, 512, (150,), generator=g).tolist()
    hashes = chain_hashes(prompt, 16, eng.fingerprint)          # 9 full blocks

    computed = eng.generate([prompt], PARAMS)[0]
    assert computed.num_cached_tokens == 0

    gpu = eng.generate([prompt], PARAMS)[0]
    assert gpu.num_cached_tokens == 144

    eng.tiers.offload(hashes, "cpu").wait()
    eng.tiers.poll()
    assert eng.tiers.evict(hashes, "gpu") == 9
    before = eng.stats.prompt_tokens_computed
    rid = eng.add_request(prompt, PARAMS)
    req = eng.requests[rid]
    while eng.has_unfinished():
        eng.step()
    cpu_tokens = req.output_token_ids
    assert req.kv_source == {"gpu": 0, "cpu": 144, "recomputed": 6}
    assert eng.stats.prompt_tokens_computed - before == 6

    eng.tiers.offload(hashes, "disk").wait()
    eng.tiers.poll()
    assert eng.tiers.evict(hashes, "cpu") == 9
    assert eng.tiers.evict(hashes, "gpu") == 9
    rid = eng.add_request(prompt, PARAMS)
    req = eng.requests[rid]
    while eng.has_unfinished():
        eng.step()
    assert req.kv_source == {"gpu": 0, "disk": 144, "recomputed": 6}
    disk_tokens = req.output_token_ids

    assert computed.token_ids == gpu.token_ids == cpu_tokens == disk_tokens
    eng.pool.check_invariants()
    eng.tiers.close()


def small_engine_with_a_prompt_on_cpu(folder, seed, **config):
    """24 GPU blocks; a 150-token prompt (9 full blocks) run once, its KV on the CPU only.
    Returns the engine, its generator, the prompt and the prompt's output."""
    eng = Engine(EngineConfig(model=str(folder), device="cpu", dtype="float32",
                              num_gpu_blocks=24, kernel_backend="torch", cpu_cache_gb=0.01,
                              **config))
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, 512, (150,), generator=g).tolist()
    hashes = chain_hashes(prompt, 16, eng.fingerprint)
    alone = eng.generate([prompt], PARAMS)[0]
    eng.tiers.offload(hashes, "cpu").wait()
    eng.tiers.poll()
    assert eng.tiers.evict(hashes, "gpu") == 9
    eng.scheduler.loader.max_wait_factor = math.inf   # these tests wait for whole loads
    return eng, g, prompt, alone


def run_behind_a_big_prompt(eng, g, prompt):
    """A 250-token prompt runs (16 blocks, 18 at its end: 8 free, 9 wanted), then `prompt`
    arrives; both run to the end. Returns the prompt's request."""
    big = torch.randint(3, 512, (250,), generator=g).tolist()
    eng.add_request(big, SamplingParams(max_tokens=40, ignore_eos=True))
    eng.step()
    rid = eng.add_request(prompt, PARAMS)
    req = eng.requests[rid]
    while eng.has_unfinished():
        eng.step()
        eng.pool.check_invariants()
    return req


def steps_while_waiting(eng, req) -> int:
    """Step the engine until `req` is admitted (pool invariants checked); returns the steps."""
    steps = 0
    while req.status.name == "WAITING":
        eng.step()
        steps += 1
        eng.pool.check_invariants()
    return steps


def test_a_prefix_load_waits_for_room_and_starts_once(folder):
    """A waiting prompt whose prefix sits on the CPU, while a running request holds most of the
    GPU: it waits in line without starting a load (a partial one would leave a gap and make the
    rest a recompute), then loads its whole prefix once, when the running request's blocks free."""
    eng, g, prompt, alone = small_engine_with_a_prompt_on_cpu(folder, 11)

    starts, refused = [], []
    prefetch = eng.tiers.prefetch

    def counting(hs, hold=False, **kw):
        handle = prefetch(hs, hold=hold, **kw)
        (refused if handle is None else starts).append(len(list(hs)))
        return handle
    eng.tiers.prefetch = counting

    req = run_behind_a_big_prompt(eng, g, prompt)
    assert refused, "the load should have waited for room at least once"
    assert len(starts) == 1
    assert req.num_preemptions == 0
    assert req.kv_source == {"gpu": 0, "cpu": 144, "recomputed": 6}
    assert req.output_token_ids == alone.token_ids
    eng.tiers.close()


@pytest.mark.timeout(120)     # before the release, the first request waited forever
def test_a_prefix_held_for_a_later_request_yields_when_nothing_runs(folder):
    """A prefix loaded for a waiting request must not keep the request ahead of it waiting:
    with nothing running, no other blocks free up, so the later request's load is released
    (and loaded again when its turn comes)."""
    from runtime.prefix_loader import LoadState
    eng, g, later, alone = small_engine_with_a_prompt_on_cpu(folder, 12)

    rid_later = eng.add_request(later, PARAMS, priority=10.0)
    req_later = eng.requests[rid_later]
    loader = eng.scheduler.loader
    while loader.ready(req_later) is not LoadState.READY:     # its 9 blocks are loaded, held
        eng.tiers.poll()
    assert eng.pool.num_free_blocks == 15
    first = torch.randint(3, 512, (290,), generator=g).tolist()     # needs 19 blocks
    rid_first = eng.add_request(first, PARAMS, priority=0.0)
    while eng.has_unfinished():
        eng.step()
        eng.pool.check_invariants()
    req_first = eng.requests.get(rid_first)
    assert eng.stats.preemptions == 0
    assert req_later.output_token_ids == alone.token_ids
    # its held blocks were released tail first, so the first request's allocation evicted
    # the tail: the head was still cached on the GPU and only the tail was loaded again
    assert req_later.kv_source == {"gpu": 80, "cpu": 64, "recomputed": 6}
    assert req_first is None or req_first.num_preemptions == 0
    eng.tiers.close()


def test_a_wait_for_room_holds_the_gpu_part_of_the_prefix(folder):
    """While a prompt waits for room to load the CPU part of its prefix, the part already on the
    GPU is held for it, so the running request's growth cannot evict it."""
    from runtime.prefix_loader import LoadState
    eng, g, prompt, alone = small_engine_with_a_prompt_on_cpu(folder, 13)
    hashes = chain_hashes(prompt, 16, eng.fingerprint)
    eng.tiers.prefetch(hashes[:5]).wait()              # the first 5 blocks back on the GPU
    eng.tiers.poll()
    front = [eng.pool.lookup_hash(h) for h in hashes[:5]]
    assert None not in front
    big = torch.randint(3, 512, (250,), generator=g).tolist()     # 16 blocks, 19 at its end
    eng.add_request(big, SamplingParams(max_tokens=50, ignore_eos=True))
    eng.step()
    rid = eng.add_request(prompt, PARAMS)
    req = eng.requests[rid]
    waited = False
    while eng.has_unfinished():
        if req.status.name == "WAITING" and eng.scheduler.loader.ready(req) is LoadState.NO_ROOM:
            waited = True
            assert all(eng.pool.ref_count(b) >= 1 for b in front)
        eng.step()
        eng.pool.check_invariants()
    assert waited
    assert req.kv_source == {"gpu": 80, "cpu": 64, "recomputed": 6}
    assert req.output_token_ids == alone.token_ids
    eng.tiers.close()


def test_a_bounded_wait_loads_the_front_that_fits_and_recomputes_the_rest(folder):
    """Once a prompt has waited for room as long as recomputing its CPU prefix would take (here
    at once), it loads the front of the prefix that fits, leaving one chunk's blocks free, and
    recomputes the rest like any prompt: it never waits on room for the whole load again."""
    eng, g, prompt, alone = small_engine_with_a_prompt_on_cpu(folder, 11)
    loader = eng.scheduler.loader
    loader.max_wait_factor = 0.0
    assert loader.reserve_blocks == 3                 # 24 blocks // 8, under one 2048 chunk
    req = run_behind_a_big_prompt(eng, g, prompt)
    assert req.kv_source == {"gpu": 0, "cpu": 80, "recomputed": 70}   # 8 free - 3 kept: 5
    assert req.output_token_ids == alone.token_ids
    eng.tiers.close()


def test_a_resumed_turn_takes_the_room_of_a_request_it_outranks(folder):
    """A prompt whose prefix sits on the CPU outranks the running request (a resumed turn
    under agent's boost) but finds no room to load it: the running request is preempted for it
    instead of the prompt waiting for it to finish, the whole prefix is loaded, and both
    produce the tokens they produce alone."""
    eng, g, prompt, alone = small_engine_with_a_prompt_on_cpu(folder, 11)
    big = torch.randint(3, 512, (250,), generator=g).tolist()
    big_alone = eng.generate([big], SamplingParams(max_tokens=40, ignore_eos=True))[0]
    eng.pool.reset_prefix_cache()
    rid_big = eng.add_request(big, SamplingParams(max_tokens=40, ignore_eos=True), priority=5.0)
    big_req = eng.requests[rid_big]
    eng.step()                            # big: 16 blocks of 24, 8 free; prompt wants 9 + 1
    rid = eng.add_request(prompt, PARAMS, priority=1.0)
    req = eng.requests[rid]
    steps = steps_while_waiting(eng, req)
    assert steps <= 2                     # not behind big's 40 decode steps
    assert big_req.num_preemptions == 1
    while eng.has_unfinished():
        eng.step()
    assert req.kv_source == {"gpu": 0, "cpu": 144, "recomputed": 6}
    assert req.output_token_ids == alone.token_ids
    assert big_req.output_token_ids == big_alone.token_ids
    eng.pool.check_invariants()
    eng.tiers.close()


def test_a_preempted_turn_whose_context_the_cpu_keeps_is_the_victim_and_loads_it_back(folder):
    """A prompt whose prefix sits on the CPU runs, ranked last; a request ranked first needs
    its room. The prompt has computed past the loss cap, but the CPU keeps 144 of its tokens,
    so it loses only its last few: it is preempted (no recompute of its context), and once
    readmitted it loads what the other request's room took from the CPU, not recomputing it.
    While it waits to load, the GPU prefix it holds yields to the growth of the request ranked
    first (which would otherwise preempt itself). Both produce the tokens they produce alone."""
    eng, g, prompt, alone = small_engine_with_a_prompt_on_cpu(folder, 21)
    big = torch.randint(3, 512, (250,), generator=g).tolist()
    big_alone = eng.generate([big], SamplingParams(max_tokens=8, ignore_eos=True))[0]
    eng.pool.reset_prefix_cache()
    loader = eng.scheduler.loader
    rid = eng.add_request(prompt, PARAMS, priority=5.0)
    req = eng.requests[rid]
    while req.num_computed_tokens < len(prompt) + 2:
        eng.step()                        # loaded (144 from the CPU), decoding
    assert req.kv_source == {"gpu": 0, "cpu": 144, "recomputed": 6}
    assert req.num_computed_tokens - loader.kept_tokens(req) < eng.scheduler.config.room_loss_cap
    loaded = loader.loaded_tokens["cpu"]
    rid_big = eng.add_request(big, SamplingParams(max_tokens=8, ignore_eos=True), priority=1.0)
    big_req = eng.requests[rid_big]
    eng.step()
    assert req.num_preemptions == 1 and big_req.status.name == "RUNNING"
    while eng.has_unfinished():
        eng.step()
        eng.pool.check_invariants()
    # the room the other request took held the last two of its nine cached prefix blocks
    # (evicted tail first): they came back from the CPU, and only its last 8 tokens were redone
    assert loader.loaded_tokens["cpu"] == loaded + 32
    assert eng.scheduler.preempted_tokens == len(prompt) + 2 and big_req.num_preemptions == 0
    assert req.output_token_ids == alone.token_ids
    assert big_req.output_token_ids == big_alone.token_ids
    eng.tiers.close()


def test_a_short_cpu_load_is_waited_for_in_the_step_that_starts_it(folder):
    """A CPU load expected to take a few ms is waited for where it starts, so the turn runs in
    that step, not one step later; a load expected to take longer is left in flight."""
    eng, g, prompt, alone = small_engine_with_a_prompt_on_cpu(folder, 14)
    loader = eng.scheduler.loader
    loader.max_wait_factor = 1.0                       # a bounded wait (the default)
    loader.inline_wait_s = 10.0                   # any CPU load counts as short here
    loader.inline_wait_long_s = 0.0               # (this step carries no other prefill)
    rid = eng.add_request(prompt, PARAMS)
    req = eng.requests[rid]
    eng.step()
    assert req.status.name == "RUNNING" and req.kv_source["cpu"] == 144
    while eng.has_unfinished():
        eng.step()
    assert req.output_token_ids == alone.token_ids

    hashes = chain_hashes(prompt, 16, eng.fingerprint)
    assert eng.tiers.evict(hashes, "gpu") == 9           # its KV is on the CPU only again
    loader.inline_wait_s = 0.0                    # nothing is short: no waiting in place
    loader.inline_wait_long_s = 0.0
    waited = []
    real = loader._wait_briefly
    loader._wait_briefly = lambda *a: waited.append(real(*a)) or waited[-1]
    rid = eng.add_request(prompt, PARAMS)
    req = eng.requests[rid]
    while eng.has_unfinished():
        eng.step()
    assert not any(waited) and req.kv_source["cpu"] == 144   # never waited for in place
    assert req.output_token_ids == alone.token_ids
    eng.tiers.close()


def test_a_step_carrying_prefill_waits_longer_for_a_cpu_load(folder):
    """The step being built carries a prefill chunk (one the loading turn outranks): the next
    look would be a long step away, so the longer inline limit applies."""
    eng, g, prompt, alone = small_engine_with_a_prompt_on_cpu(folder, 15,
                                                              max_num_batched_tokens=32)
    loader = eng.scheduler.loader
    loader.inline_wait_s, loader.inline_wait_long_s = 0.0, 10.0
    big = torch.randint(3, 512, (120,), generator=g).tolist()
    eng.add_request(big, SamplingParams(max_tokens=2, ignore_eos=True), priority=10.0)
    eng.step()                                    # big's first 32-token chunk
    rid = eng.add_request(prompt, PARAMS, priority=0.0)
    req = eng.requests[rid]
    eng.step()                                    # big yields; the load is waited for in place
    assert req.status.name == "RUNNING" and req.kv_source["cpu"] == 144
    while eng.has_unfinished():
        eng.step()
    assert req.output_token_ids == alone.token_ids
    eng.tiers.close()


def test_a_turn_waiting_for_room_loads_what_it_lost_meanwhile_from_the_cpu(folder):
    """A prompt whose whole prefix is on the GPU (and on the CPU) finds no room for the rest
    and waits behind a running request; that request's growth evicts part of the prefix in the
    meantime. Once admitted, the prompt loads the evicted part from the CPU instead of
    recomputing it, and its tokens do not change."""
    eng, g, prompt, alone = small_engine_with_a_prompt_on_cpu(folder, 16)
    hashes = chain_hashes(prompt, 16, eng.fingerprint)
    eng.tiers.prefetch(hashes).wait()                  # back on the GPU, cached, and on the CPU
    eng.tiers.poll()
    assert all(eng.pool.lookup_hash(h) is not None for h in hashes)
    big = torch.randint(3, 512, (232,), generator=g).tolist()     # 15 blocks, 18 at its end
    eng.add_request(big, SamplingParams(max_tokens=50, ignore_eos=True))
    eng.step()
    rid = eng.add_request(prompt, PARAMS)
    req = eng.requests[rid]
    waited = steps_while_waiting(eng, req)
    assert waited >= 49                    # behind big's 49 decode steps, then its load
    while eng.has_unfinished():
        eng.step()
    # big grew by 3 blocks meanwhile, evicting the prefix's last 3 (tail first): 48 tokens
    # loaded back from the CPU, not recomputed
    assert req.kv_source == {"gpu": 96, "cpu": 48, "recomputed": 6}
    assert req.output_token_ids == alone.token_ids
    eng.pool.check_invariants()
    eng.tiers.close()


def test_the_estimate_of_room_for_a_waiting_load_is_rate_limited(folder):
    """The scheduler's look at whether room can come for a load walks the running requests'
    blocks: the loader lets it look at most every 50 ms per waiting request, and only while
    that request waits for room."""
    from runtime.prefix_loader import LoadState
    eng, g, prompt, alone = small_engine_with_a_prompt_on_cpu(folder, 14)
    loader = eng.scheduler.loader
    loader.max_wait_factor = 1.0                       # a bounded wait (the default)
    big = torch.randint(3, 512, (250,), generator=g).tolist()
    eng.add_request(big, SamplingParams(max_tokens=40, ignore_eos=True))
    eng.step()
    rid = eng.add_request(prompt, PARAMS)
    req = eng.requests[rid]
    assert not loader.room_check_due(req)              # not waiting for room yet
    assert loader.ready(req) is LoadState.NO_ROOM
    assert loader.room_check_due(req)
    assert not loader.room_check_due(req)              # again within 50 ms
    assert loader.room_check_due(req, every_s=0.0)
    assert 0.0 < loader.wait_left_s(req) < math.inf
    while eng.has_unfinished():
        eng.step()
    assert req.output_token_ids == alone.token_ids
    eng.tiers.close()


def test_a_load_into_idle_blocks_does_not_wait_for_the_steps_queued(folder, monkeypatch):
    """The engine counts the steps it launched and the ones it saw finish; a CPU load into
    blocks that no unfinished step can touch is issued without waiting for the compute
    stream's queued work (a step in flight), one into blocks released since is not, and
    AGENTKV_LOAD_AFTER_STEPS=1 makes every load wait."""
    eng, g, prompt, alone = small_engine_with_a_prompt_on_cpu(folder, 15)
    pool, tiers = eng.pool, eng.tiers
    assert pool.finished_steps == pool.launched_steps > 0     # every step was read back
    calls = []
    orig = tiers.transfer.host_to_gpu

    def spy(slots, ids, after_compute=True):
        calls.append(after_compute)
        return orig(slots, ids, after_compute)
    tiers.transfer.host_to_gpu = spy
    never_used = [b for b in pool._free if pool._released_at[b] == 0]
    held = pool.allocate(len(never_used))          # loads now go into blocks used before
    hashes = chain_hashes(prompt, 16, eng.fingerprint)

    def load_and_drop(n):
        tiers.prefetch(hashes[:n]).wait()
        tiers.poll()
        assert tiers.evict(hashes[:n], "gpu") == n
    load_and_drop(2)
    pool.finished_steps -= 1                       # as if the last step were still in flight
    load_and_drop(2)
    pool.finished_steps += 1
    monkeypatch.setenv("AGENTKV_LOAD_AFTER_STEPS", "1")
    load_and_drop(2)
    assert calls == [False, True, True]
    pool.free(held)
    monkeypatch.delenv("AGENTKV_LOAD_AFTER_STEPS")
    assert eng.generate([prompt], PARAMS)[0].token_ids == alone.token_ids
    eng.tiers.close()


def test_the_engine_measures_decode_steps_for_the_room_estimate(folder):
    """Decode-only steps are timed (the scheduler's estimate of when running turns free their
    room uses them); a prefill-only step is not taken for one."""
    eng, g, prompt, alone = small_engine_with_a_prompt_on_cpu(folder, 16)
    rates = eng.rates
    assert rates.decode_step_s > 0                   # 11 decode-only steps of one request
    seen = []
    eng.rates.observe_decode_step = seen.append
    eng.add_request(torch.randint(3, 512, (100,), generator=g).tolist(),
                    SamplingParams(max_tokens=3, ignore_eos=True))
    eng.step()                                       # the prefill: no decode step timed
    assert seen == []
    while eng.has_unfinished():
        eng.step()
    assert len(seen) == 2 and all(s > 0 for s in seen)  # tokens 2 and 3
    eng.tiers.close()
