"""Decode steps through the graph runner give the tokens of eager steps.

On the CPU the graph runner runs its forward eagerly on its static buffers (`capture=False`):
padding to buckets, the static inputs, the placeholder ids filled from the previous step and the
logits view are all exercised; only capture and replay need CUDA, which the GPU tests cover
(greedy tokens with graphs equal those without, in float32 and, up to near-ties, bfloat16).
"""
import pytest
import torch

from hf_models import rand_tokens, save_model
from runtime import Engine, EngineConfig, SamplingParams
from runtime.cuda_graphs import DecodeGraphs, default_batch_sizes, width_buckets
from runtime.step_inputs import HostBatch, pad_batch

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_model("llama", tmp_path_factory.mktemp("graphs") / "model", max_pos=2048)


def test_buckets():
    assert default_batch_sizes(256) == (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112,
                                        128, 160, 192, 224, 256)
    assert default_batch_sizes(5) == (1, 2, 4, 5)
    assert default_batch_sizes(100) == (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 100)
    assert width_buckets(513) == (64, 256, 513) and width_buckets(40) == (40,)
    g = DecodeGraphs.__new__(DecodeGraphs)
    g.batch_sizes, g.widths = (1, 2, 4, 8), (4, 16)
    assert g.bucket(1, 1) == (1, 4) and g.bucket(3, 5) == (4, 16) and g.bucket(8, 16) == (8, 16)
    assert g.bucket(9, 1) is None and g.bucket(2, 17) is None


def test_pad_batch_rows_write_nothing_and_read_one_token():
    t = torch.tensor
    b = HostBatch(input_ids=t([5, 6]), positions=t([3, 17]), slot_mapping=t([3, 33]),
                  query_start_loc=t([0, 1, 2], dtype=torch.int32),
                  seq_lens=t([4, 18], dtype=torch.int32),
                  block_tables=t([[0, 0], [1, 2]], dtype=torch.int32),
                  logits_indices=t([0, 1]), ph_dst=t([1]), ph_src=t([0]), sampling_rows=[0, 1],
                  max_query_len=1, num_seqs=2, num_tokens=2)
    p = pad_batch(b, 4, 3)
    assert p.slot_mapping.tolist() == [3, 33, -1, -1] and p.seq_lens.tolist() == [4, 18, 1, 1]
    assert p.block_tables.tolist() == [[0, 0, 0], [1, 2, 0], [0, 0, 0], [0, 0, 0]]
    assert p.query_start_loc.tolist() == [0, 1, 2, 3, 4] and p.input_ids.tolist() == [5, 6, 0, 0]
    assert p.ph_dst.tolist() == [1] and p.num_seqs == 2
    with pytest.raises(ValueError, match="cannot pad"):
        pad_batch(b, 1, 3)


def cpu_engine(folder, graphs: bool, async_scheduling: bool):
    eng = Engine(EngineConfig(model=str(folder), device="cpu", dtype="float32",
                              kernel_backend="torch", num_gpu_blocks=160,
                              max_num_batched_tokens=96, max_num_seqs=8,
                              async_scheduling=async_scheduling))
    if graphs:   # the graph runner without capture: same buffers, padding and inputs
        eng.runner.graphs = DecodeGraphs(eng.model, eng.kv_cache, eng.ops, eng.device,
                                         (1, 2, 4, 8), (2, 8, 128), capture=False)
    return eng


WORKLOAD = [rand_tokens(n, n) for n in (3, 20, 33, 70, 5, 130, 9)]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_graph_runner_tokens_equal_eager_on_cpu(folder, async_scheduling):
    params = [SamplingParams(max_tokens=10 + 3 * i, ignore_eos=True, logprobs=i == 2)
              for i in range(len(WORKLOAD))]
    ref = cpu_engine(folder, False, False).generate(WORKLOAD, params)
    eng = cpu_engine(folder, True, async_scheduling)
    outs = eng.generate(WORKLOAD, params)
    assert [o.token_ids for o in outs] == [r.token_ids for r in ref]
    assert outs[2].logprobs == pytest.approx(ref[2].logprobs, abs=1e-5)
    assert eng.stats.graph_steps > 20
    assert (eng.stats.device_fed_tokens > 0) == async_scheduling


def test_cuda_graphs_need_cuda(folder):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        Engine(EngineConfig(model=str(folder), device="cpu", cuda_graphs=True))


# -- on the GPU -----------------------------------------------------------------------------
def gpu_engine(folder, dtype, graphs, **kw):
    # 16-token pages (not CUDA's default 64): the model's 2,048 positions then take two
    # block-table widths, 64 and 128, so replays cross a width bucket
    cfg = dict(model=str(folder), device="cuda", dtype=dtype, num_gpu_blocks=1024, block_size=16,
               max_num_batched_tokens=512, max_num_seqs=16, cuda_graphs=graphs,
               async_scheduling=graphs)
    cfg.update(kw)
    return Engine(EngineConfig(**cfg))


GPU_PROMPTS = [rand_tokens(n, 100 + n) for n in (1, 4, 17, 33, 64, 100, 250, 1100, 7)]


def run_batches(eng, params):
    """Batches of 1, 3, 5 and 9 sequences (buckets 1, 4, 8 and 16, so padding is used), then
    all at once with staggered lengths so the batch shrinks through every bucket."""
    outs = []
    for lo, hi in ((0, 1), (1, 4), (4, 9)):
        outs += eng.generate(GPU_PROMPTS[lo:hi], params)
    staggered = [SamplingParams(max_tokens=8 + 5 * i, ignore_eos=True)
                 for i in range(len(GPU_PROMPTS))]
    return outs + eng.generate(GPU_PROMPTS, staggered)


@cuda
def test_graph_greedy_tokens_equal_eager_fp32(folder):
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    eager = run_batches(gpu_engine(folder, "float32", False), params)
    eng = gpu_engine(folder, "float32", True)
    graph = run_batches(eng, params)
    assert [o.token_ids for o in graph] == [o.token_ids for o in eager]
    assert eng.stats.graph_steps > 100 and eng.stats.device_fed_tokens > 100
    assert eng.graph_stats.widths == (64, 128) and eng.graph_stats.num_graphs == 10


@cuda
def test_graph_greedy_tokens_equal_eager_bf16_up_to_near_ties(folder):
    params = SamplingParams(max_tokens=40, ignore_eos=True, top_logprobs=2)
    eager = run_batches(gpu_engine(folder, "bfloat16", False), params)
    graph = run_batches(gpu_engine(folder, "bfloat16", True), params)
    for e, g in zip(eager, graph):
        if e.token_ids == g.token_ids:
            continue
        i = next(k for k, (a, b) in enumerate(zip(e.token_ids, g.token_ids)) if a != b)
        (t1, lp1), (t2, lp2) = e.top_logprobs[i]
        assert g.token_ids[i] == t2 and lp1 - lp2 < 0.05, f"not a near-tie at token {i}"


@cuda
def test_kv_budget_counts_graph_memory(folder):
    eng = gpu_engine(folder, "bfloat16", True, num_gpu_blocks=None, gpu_memory_fraction=0.3)
    b = eng.kv_budget
    assert b.graph_estimate_bytes > 16 * 512 * 4 and b.prefill_peak_bytes > 0
    assert b.kv_bytes == eng.pool.num_blocks * eng.kv_spec.block_bytes
    free, total = torch.cuda.mem_get_info()
    assert total - free <= 0.3 * total + (1 << 30)     # the fraction holds, graphs included
    out = eng.generate([GPU_PROMPTS[2]], SamplingParams(max_tokens=5, ignore_eos=True))[0]
    assert len(out.token_ids) == 5
