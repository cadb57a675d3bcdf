"""Engine behaviour beyond greedy identity: prefix reuse counters, leaks, bad input, sampling."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_models import rand_tokens, save_model
from runtime import Engine, EngineConfig, FinishReason, InvalidRequestError, SamplingParams
from runtime.config import default_block_size
from runtime.engine_thread import EngineThread
from runtime.models.arch import UnsupportedModelError
from runtime.models.loader import ModelLoadError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_model("llama", tmp_path_factory.mktemp("llama") / "model", max_pos=1024)


def make_engine(folder, **kw):
    cfg = dict(model=str(folder), device="cpu", dtype="float32", num_gpu_blocks=64,
               max_num_batched_tokens=256, kernel_backend="torch")
    cfg.update(kw)
    return Engine(EngineConfig(**cfg))


def test_page_size_defaults_by_device_and_is_checked(folder):
    """No block size given: 64-token pages on CUDA (TMA loads of a page; a quarter of the host's
    per-block work), 16 on a CPU; the engine's own config holds the one it chose."""
    assert (default_block_size("cuda"), default_block_size("cpu")) == (64, 16)
    e = make_engine(folder)
    assert e.config.block_size == 16 == e.pool.block_size == e.kv_spec.block_size
    assert make_engine(folder, block_size=32).pool.block_size == 32
    for bad in (0, 48, -16):
        with pytest.raises(ValueError, match="block_size must be a positive power of two"):
            EngineConfig(block_size=bad)


def test_shared_256_token_prefix_is_computed_once(folder):
    eng = make_engine(folder)
    prefix = rand_tokens(256, 0)
    a, b = prefix + rand_tokens(10, 1), prefix + rand_tokens(7, 2)
    eng.generate([a], SamplingParams(max_tokens=4, ignore_eos=True))
    assert eng.stats.prompt_tokens_computed == 266
    out = eng.generate([b], SamplingParams(max_tokens=4, ignore_eos=True))[0]
    assert out.num_cached_tokens == 256
    assert eng.stats.prompt_tokens_computed == 266 + 7


ops = st.lists(st.tuples(st.sampled_from(["add", "abort", "step", "step"]),
                         st.integers(1, 90), st.integers(1, 12), st.integers(0, 3)),
               min_size=1, max_size=40)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=ops)
def test_no_block_leaks_under_random_add_abort_step(folder, script):
    eng = make_engine(folder, num_gpu_blocks=20, block_size=8, max_num_batched_tokens=48,
                      max_num_seqs=4)
    live: list[str] = []
    for op, n, max_tokens, pick in script:
        if op == "add":
            # a few shared prefixes so that cached blocks are shared and evicted
            live.append(eng.add_request(rand_tokens(8, pick) + rand_tokens(n, n),
                                        SamplingParams(max_tokens=max_tokens, ignore_eos=True)))
        elif op == "abort" and live:
            eng.abort(live.pop(pick % len(live)))
        else:
            for out in eng.step():
                if out.finished and out.request_id in live:
                    live.remove(out.request_id)
        eng.pool.check_invariants()
    while eng.has_unfinished():
        eng.step()
    eng.pool.check_invariants()
    assert eng.pool.num_free_blocks == 20          # every block is free or cached
    assert all(eng.pool.ref_count(b) == 0 for b in range(20))


@pytest.mark.parametrize("prompt, params, message", [
    ([], SamplingParams(), "prompt is empty"),
    ([5, 512], SamplingParams(), "token id 512 is outside the vocabulary [0, 512)"),
    ([-1, 5], SamplingParams(), "token id -1 is outside"),
    ([5, 6], SamplingParams(max_tokens=0), "max_tokens must be a positive integer"),
    ([5, 6], SamplingParams(max_tokens=-3), "max_tokens must be a positive integer"),
    ([5] * 1024, SamplingParams(), "the model's context is 1024"),
    ([5] * 600, SamplingParams(max_tokens=8), "the cache holds 512"),
    ([5, 6], SamplingParams(temperature=-1.0), "temperature must be >= 0"),
    ([5, 6], SamplingParams(top_p=0.0), "top_p must be in (0, 1]"),
])
def test_bad_requests_are_refused_and_the_engine_keeps_serving(folder, prompt, params, message):
    eng = make_engine(folder, num_gpu_blocks=32, block_size=16)
    good = eng.add_request(rand_tokens(5, 0), SamplingParams(max_tokens=3, ignore_eos=True))
    with pytest.raises(InvalidRequestError) as e:
        eng.add_request(prompt, params)
    assert message in str(e.value)
    done = []
    while eng.has_unfinished():
        done += [o for o in eng.step() if o.finished]
    assert [o.request_id for o in done] == [good] and done[0].num_output_tokens == 3


def test_missing_folder_and_unsupported_architecture(tmp_path, folder):
    with pytest.raises(ModelLoadError, match="does not exist"):
        make_engine(tmp_path / "nowhere")
    from transformers import GPT2Config
    bad = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64).save_pretrained(bad)
    with pytest.raises(UnsupportedModelError, match="supported: LlamaForCausalLM, "
                                                    "MistralForCausalLM, Qwen2ForCausalLM"):
        make_engine(bad)


def test_sampling_seed_top_k_top_p_stop_tokens_and_logprobs(folder):
    eng = make_engine(folder)
    p = rand_tokens(12, 3)
    sp = SamplingParams(max_tokens=16, temperature=1.0, top_k=20, top_p=0.9, seed=7,
                        ignore_eos=True, logprobs=True)
    a, b = eng.generate([p, p], [sp, sp])
    assert a.token_ids == b.token_ids and len(a.token_ids) == 16    # same seed, same draw
    assert len(a.logprobs) == 16 and all(lp <= 0.0 for lp in a.logprobs)
    c = eng.generate([p], SamplingParams(max_tokens=16, temperature=1.0, seed=8,
                                         ignore_eos=True))[0]
    assert c.token_ids != a.token_ids
    greedy = eng.generate([p], SamplingParams(max_tokens=8, ignore_eos=True, logprobs=True))[0]
    # top_k=1 sampling is greedy whatever the temperature
    k1 = eng.generate([p], SamplingParams(max_tokens=8, temperature=2.0, top_k=1,
                                          ignore_eos=True))[0]
    assert k1.token_ids == greedy.token_ids
    # greedy logprob is the row maximum, so it is the highest of any token
    assert all(lp > -20 for lp in greedy.logprobs)
    stop_at = greedy.token_ids[3]
    first = greedy.token_ids.index(stop_at)
    s = eng.generate([p], SamplingParams(max_tokens=8, ignore_eos=True,
                                         stop_token_ids=[stop_at]))[0]
    assert s.token_ids == greedy.token_ids[:first + 1] and s.finish_reason is FinishReason.STOP


def test_a_request_queued_behind_the_engine_thread_counts_that_wait(folder):
    """The engine thread adds requests between steps: a request submitted while the thread is
    busy (here, 0.3 s of other work) arrives when it was submitted, and that wait is its queue
    time, charged to `behind` (the step in flight)."""
    import time
    loop = EngineThread(make_engine(folder)).start()
    try:
        loop.call(lambda e: time.sleep(0.3), wait=False)
        outs = list(loop.submit(rand_tokens(12, 5), SamplingParams(max_tokens=2, ignore_eos=True),
                                "q1"))
        final = outs[-1]
        assert final.finished and 0.3 <= final.queue_s < 5.0
        assert final.queue_reasons == pytest.approx({"behind": final.queue_s})
    finally:
        loop.shutdown()


def test_thread_mode_streams_in_order_and_abort_ends_a_stream(folder):
    eng = make_engine(folder)
    loop = EngineThread(eng).start()
    try:
        p = rand_tokens(20, 4)
        outs = list(loop.submit(p, SamplingParams(max_tokens=10, ignore_eos=True), "r1"))
        streamed = [t for o in outs for t in o.new_token_ids]
        assert outs[-1].finished and outs[-1].finish_reason is FinishReason.LENGTH
        assert len(streamed) == 10
        expected = loop.call(lambda e: e.generate([p], SamplingParams(max_tokens=10,
                                                                      ignore_eos=True)))
        assert streamed == expected[0].token_ids
        long = loop.submit(p, SamplingParams(max_tokens=200, ignore_eos=True), "r2")
        it = iter(long)
        next(it)
        loop.abort("r2")
        rest = list(it)
        assert rest[-1].finished and rest[-1].finish_reason is FinishReason.ABORT
        with pytest.raises(InvalidRequestError):
            loop.submit([], SamplingParams(), "r3")
        assert loop.call(lambda e: e.pool.num_free_blocks) == 64
    finally:
        loop.shutdown()
    assert not loop.alive
