"""The overlapped step loop (async scheduling) gives the tokens of the plain loop, on the CPU.

With async scheduling the engine launches step N+1 before it reads step N's tokens: each sampling
request holds a placeholder id, step N+1 takes that id from step N's sampled tokens on the device,
and stops are seen one step late. These tests run the same workloads both ways and compare every
token, finish reason and logprob; they also check that placeholders really were fed on the device.
"""
import random

import pytest

from hf_models import hf_greedy, rand_tokens, save_model
from runtime import Engine, EngineConfig, FinishReason, SamplingParams
from runtime.engine_thread import EngineThread
from runtime.step_inputs import PLACEHOLDER


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_model("llama", tmp_path_factory.mktemp("overlap") / "model", max_pos=1024)


def make_engine(folder, async_scheduling, **kw):
    cfg = dict(model=str(folder), device="cpu", dtype="float32", num_gpu_blocks=128,
               max_num_batched_tokens=64, max_num_seqs=6, kernel_backend="torch",
               async_scheduling=async_scheduling)
    cfg.update(kw)
    return Engine(EngineConfig(**cfg))


def workload(stop_token: int | None = None):
    """Ten requests: a shared prefix (prefix-cache hits), prompts longer than the step budget
    (chunked prefill), mixed lengths, logprobs, top logprobs, a seeded draw, a stop token."""
    prefix = rand_tokens(40, 99)
    prompts, params = [], []
    for i in range(10):
        prompts.append((prefix if i % 3 == 0 else []) + rand_tokens(5 + 17 * i % 90, i))
        sp = SamplingParams(max_tokens=6 + (i * 7) % 20, ignore_eos=True)
        if i == 1:
            sp.logprobs = True
        if i == 2:
            sp.top_logprobs = 3
        if i == 4:
            sp.temperature, sp.seed, sp.top_k = 0.8, 11, 50
        if i == 5 and stop_token is not None:
            sp.stop_token_ids = [stop_token]
        params.append(sp)
    return prompts, params


def check_same(plain, overlapped):
    for a, b in zip(plain, overlapped):
        assert b.token_ids == a.token_ids
        assert b.finish_reason == a.finish_reason
        if a.logprobs is not None:
            assert b.logprobs == pytest.approx(a.logprobs, abs=1e-5)
        if a.top_logprobs is not None:
            assert [[t for t, _ in row] for row in b.top_logprobs] == \
                [[t for t, _ in row] for row in a.top_logprobs]


@pytest.mark.parametrize("blocks", [128, 14])   # 14 blocks of 16 tokens: preemption
def test_overlapped_tokens_equal_plain_loop(folder, blocks):
    prompts, params = workload()
    # stop request 5 at the token it would emit fourth, so a stop lands mid-stream
    stop = make_engine(folder, False).generate([prompts[5]], params[5])[0].token_ids[3]
    prompts, params = workload(stop_token=stop)
    plain = make_engine(folder, False, num_gpu_blocks=blocks).generate(prompts, params)
    assert plain[5].finish_reason == FinishReason.STOP and plain[5].token_ids[-1] == stop
    eng = make_engine(folder, True, num_gpu_blocks=blocks)
    over = eng.generate(prompts, params)
    check_same(plain, over)
    assert eng.stats.device_fed_tokens > 50          # decode inputs came from the device
    assert eng.stats.generated_tokens == sum(len(o.token_ids) for o in over)
    if blocks == 14:
        assert eng.stats.preemptions > 0
    eng.pool.check_invariants()
    assert eng.pool.num_free_blocks == blocks and not eng.has_unfinished()


def test_overlapped_greedy_equals_transformers(folder):
    prompts = [rand_tokens(n, 7 + n) for n in (3, 16, 17, 77, 150)]
    ref = hf_greedy(folder, prompts, 12)
    eng = make_engine(folder, True, max_num_batched_tokens=48)
    outs = eng.generate(prompts, SamplingParams(max_tokens=12, ignore_eos=True))
    assert [o.token_ids for o in outs] == ref
    assert eng.stats.device_fed_tokens > 0


def test_abort_while_a_token_is_in_flight(folder):
    prompts = [rand_tokens(20 + i, 40 + i) for i in range(3)]
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    ref = make_engine(folder, False).generate(prompts, params)
    eng = make_engine(folder, True)
    ids = [eng.add_request(p, params) for p in prompts]
    victim = eng.requests[ids[1]]
    got = {rid: [] for rid in ids}
    while len(victim.output_token_ids) < 3:
        for o in eng.step():
            got[o.request_id] += o.new_token_ids
    assert victim.all_token_ids[-1] == PLACEHOLDER       # its next token is being sampled
    final = eng.abort(ids[1])
    assert final.finished and final.finish_reason == FinishReason.ABORT
    assert PLACEHOLDER not in victim.all_token_ids
    while eng.has_unfinished():
        for o in eng.step():
            got[o.request_id] += o.new_token_ids
    assert got[ids[0]] == ref[0].token_ids and got[ids[2]] == ref[2].token_ids
    assert got[ids[1]] == ref[1].token_ids[:len(got[ids[1]])]
    eng.pool.check_invariants()
    assert eng.pool.num_free_blocks == 128


def test_engine_thread_streams_overlapped_tokens(folder):
    prompts = [rand_tokens(9 + 5 * i, 70 + i) for i in range(4)]
    params = SamplingParams(max_tokens=9, ignore_eos=True)
    ref = make_engine(folder, False).generate(prompts, params)
    thread = EngineThread(make_engine(folder, True)).start()
    try:
        streams = [thread.submit(p, params, f"r{i}") for i, p in enumerate(prompts)]
        for s, r in zip(streams, ref):
            toks = [t for out in s for t in out.new_token_ids]
            assert toks == r.token_ids
    finally:
        thread.shutdown()


@pytest.mark.parametrize("seed", range(6))
def test_no_leaks_when_aborts_hit_pending_tokens(folder, seed):
    """Random arrivals into a tiny cache (preemption), aborts aimed at requests whose token is
    still being sampled, stops by max_tokens: every block comes back."""
    rng = random.Random(seed)
    eng = make_engine(folder, True, num_gpu_blocks=20, block_size=8, max_num_batched_tokens=40,
                      max_num_seqs=4)
    aborted = 0
    for tick in range(60):
        if rng.random() < 0.3:
            eng.add_request(rand_tokens(8, rng.randrange(3)) + rand_tokens(rng.randrange(1, 60), tick),
                            SamplingParams(max_tokens=rng.randrange(1, 12), ignore_eos=True))
        pending = [r for r in eng.requests.values()
                   if r.all_token_ids and r.all_token_ids[-1] == PLACEHOLDER]
        if pending and rng.random() < 0.15:
            eng.abort(rng.choice(pending).request_id)
            aborted += 1
        eng.step()
        eng.pool.check_invariants()
    while eng.has_unfinished():
        eng.step()
    eng.pool.check_invariants()
    assert eng.pool.num_free_blocks == 20 and not eng.requests and aborted > 0
    assert all(eng.pool.ref_count(b) == 0 for b in range(20))


def test_a_step_with_prefill_is_read_back_before_the_next_is_scheduled(folder):
    """Online, prefill steps are long: their tokens come back in the same step() call, so a
    turn that arrives meanwhile is not queued behind a second step. Decode-only steps stay
    overlapped, and offline (every request in at once) prefill steps too."""
    eng = make_engine(folder, True)
    eng.online = True                     # as EngineThread sets it
    a = eng.add_request(rand_tokens(30, 1), SamplingParams(max_tokens=5, ignore_eos=True))
    outs = eng.step()                     # a's whole prompt: its first token is read back now
    assert [o.request_id for o in outs] == [a] and eng._inflight is None
    assert eng.step() == []               # decode only: launched, read back one step later
    assert eng._inflight is not None
    b = eng.add_request(rand_tokens(20, 2), SamplingParams(max_tokens=5, ignore_eos=True))
    outs = eng.step()                     # b's prefill beside a's decode: both read back now
    assert sorted(o.request_id for o in outs) == sorted([a, a, b]) and eng._inflight is None
    off = make_engine(folder, True)       # offline: generate() adds everything up front
    off.add_request(rand_tokens(30, 1), SamplingParams(max_tokens=5, ignore_eos=True))
    assert off.step() == [] and off._inflight is not None
