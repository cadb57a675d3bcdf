"""Small prefill, extend and mixed steps through the extend graph runner give the tokens of
eager steps.

On the CPU the runner runs its forward eagerly on its static buffers (`capture=False`): the
bucket padding (tokens of no sequence, sequences of no tokens), the packed inputs, the
placeholder ids and the logits rows are all exercised; capture and replay need CUDA, which the
GPU tests below cover (greedy tokens with extend graphs equal those without in float32).
"""
import pytest
import torch

from hf_models import rand_tokens, save_model
from runtime import Engine, EngineConfig, SamplingParams
from runtime.extend_graphs import (ExtendGraphs, ExtendLayout, default_buckets,
                                   extend_graph_buckets)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_model("llama", tmp_path_factory.mktemp("extend") / "model", max_pos=2048)


def test_buckets_and_layout():
    assert default_buckets(2048, 64) == ((16, 32, 64, 128, 256, 512, 1024),
                                         (1, 2, 4, 8, 16, 32, 64))
    assert default_buckets(100, 5) == ((16, 32, 64), (1, 2, 4))
    g = ExtendGraphs.__new__(ExtendGraphs)
    g.token_buckets, g.seq_buckets, g.width = (16, 32, 64), (1, 2, 4, 8), 40
    assert g.bucket(1, 1, 3) == (16, 1) and g.bucket(17, 3, 40) == (32, 4)
    assert g.bucket(64, 8, 1) == (64, 8)
    assert g.bucket(65, 1, 1) is None and g.bucket(10, 9, 1) is None
    assert g.bucket(10, 1, 41) is None                  # wider than the static table
    assert g.bucket(8, 8, 1) == (16, 8)                 # eight one-token sequences
    assert len(g.buckets()) == 12 and (16, 8) in g.buckets()
    lay = ExtendLayout(4, 2, 3)
    buf = torch.arange(lay.size, dtype=torch.int32)
    ids, pos, slots, src, rows, qsl, seq_lens, table = lay.split(buf)
    assert [x.numel() for x in (ids, pos, slots, src, rows)] == [4, 4, 4, 4, 2]
    assert qsl.tolist() == [36, 37, 38] and seq_lens.tolist() == [39, 40]
    assert table.tolist() == [[41, 42, 43], [44, 45, 46]] and lay.size == 47


def test_the_largest_extend_graph_is_set_by_its_token_count():
    """`EngineConfig.extend_graph_max_tokens`: buckets double from 16 up to it and the step
    budget; anything but a power of two >= 16 is refused with the setting's name."""
    assert default_buckets(2048, 64, 2048)[0] == (16, 32, 64, 128, 256, 512, 1024, 2048)
    assert default_buckets(1024, 8, 4096) == ((16, 32, 64, 128, 256, 512, 1024), (1, 2, 4, 8))
    assert default_buckets(2048, 64, 16)[0] == (16,)
    assert extend_graph_buckets(True, torch.device("cuda"), "triton", 2048, 64,
                                max_tokens=1024)[0][-1] == 1024
    for bad in (0, 8, 24, 1000):
        with pytest.raises(ValueError, match="power of two >= 16"):
            default_buckets(2048, 64, bad)
        with pytest.raises(ValueError, match="extend_graph_max_tokens must be a power of two"):
            EngineConfig(model="tiny", extend_graph_max_tokens=bad)
    assert EngineConfig(model="tiny", extend_graph_max_tokens=2048).extend_graph_max_tokens \
        == 2048


def test_extend_graphs_are_refused_where_they_cannot_be_captured():
    assert extend_graph_buckets(False, torch.device("cpu"), "torch", 2048, 64) is None
    with pytest.raises(ValueError, match="extend_graphs needs a CUDA device"):
        extend_graph_buckets(True, torch.device("cpu"), "triton", 2048, 64)
    with pytest.raises(ValueError, match="triton kernel backend"):
        extend_graph_buckets(True, torch.device("cuda"), "torch", 2048, 64)
    with pytest.raises(ValueError, match="max_num_batched_tokens >= 16"):
        extend_graph_buckets(True, torch.device("cuda"), "triton", 8, 64)


def test_extend_graphs_follow_the_decode_graphs_by_default(folder):
    """Unset, extend graphs are on wherever decode graphs are (CUDA and the Triton kernels) and
    a bucket fits the step budget; never an error."""
    on = extend_graph_buckets(None, torch.device("cuda"), "triton", 2048, 64, decode_graphs=True)
    assert on == default_buckets(2048, 64)
    assert extend_graph_buckets(None, torch.device("cuda"), "triton", 2048, 64,
                                decode_graphs=False) is None
    assert extend_graph_buckets(None, torch.device("cpu"), "torch", 2048, 64,
                                decode_graphs=False) is None
    assert extend_graph_buckets(None, torch.device("cuda"), "triton", 8, 64) is None
    eng = Engine(EngineConfig(model=str(folder), device="cpu", dtype="float32",
                              kernel_backend="torch", num_gpu_blocks=64))
    assert eng.config.extend_graphs is None and eng.runner.extend_graphs is None


def test_the_serve_flag_switches_extend_graphs_both_ways():
    import argparse

    from runtime import cli_serve
    sub = argparse.ArgumentParser().add_subparsers()
    cli_serve.add_parser(sub)
    parse = sub.choices["serve"].parse_args
    assert parse([]).extend_graphs is None
    assert parse(["--extend-graphs"]).extend_graphs is True
    assert parse(["--no-extend-graphs"]).extend_graphs is False


def cpu_engine(folder, extend: bool, async_scheduling: bool):
    eng = Engine(EngineConfig(model=str(folder), device="cpu", dtype="float32",
                              kernel_backend="torch", num_gpu_blocks=200,
                              max_num_batched_tokens=48, max_num_seqs=8,
                              async_scheduling=async_scheduling))
    if extend:   # the runner without capture: same buffers, padding and inputs
        width = -(-eng.max_model_len // eng.config.block_size)
        eng.runner.extend_graphs = ExtendGraphs(eng.model, eng.kv_cache, eng.ops, eng.device,
                                                (16, 32, 48), (1, 2, 4, 8), width,
                                                capture=False, max_prev_rows=8)
    return eng


# shared prefixes (extends on cached blocks), long prompts (chunks over the 48-token budget:
# steps too large for a graph, then graph-sized tails), and short ones
BASE = rand_tokens(40, 1)
WORKLOAD = [BASE + rand_tokens(n, n) for n in (3, 20, 33)] + \
    [rand_tokens(n, 100 + n) for n in (5, 70, 9, 130)]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_extend_graph_runner_tokens_equal_eager_on_cpu(folder, async_scheduling):
    params = [SamplingParams(max_tokens=6 + 2 * i, ignore_eos=True, logprobs=i == 1)
              for i in range(len(WORKLOAD))]
    ref = cpu_engine(folder, False, False).generate(WORKLOAD, params)
    eng = cpu_engine(folder, True, async_scheduling)
    outs = eng.generate(WORKLOAD, params)
    assert [o.token_ids for o in outs] == [r.token_ids for r in ref]
    assert outs[1].logprobs == pytest.approx(ref[1].logprobs, abs=1e-5)
    assert eng.stats.graph_steps >= 5           # the prefill and mixed steps of 48 or fewer
    assert (eng.stats.device_fed_tokens > 0) == async_scheduling


# -- on the GPU -----------------------------------------------------------------------------
def gpu_engine(folder, extend):
    return Engine(EngineConfig(model=str(folder), device="cuda", dtype="float32",
                               num_gpu_blocks=1024, max_num_batched_tokens=256, max_num_seqs=16,
                               extend_graphs=extend))


@cuda
def test_extend_graph_greedy_tokens_equal_eager_fp32(folder):
    prompts = [BASE + rand_tokens(n, 200 + n) for n in (1, 7, 60, 300)] + \
        [rand_tokens(n, 300 + n) for n in (2, 17, 100, 900)]
    params = [SamplingParams(max_tokens=12 + 3 * i, ignore_eos=True) for i in range(len(prompts))]
    eager = gpu_engine(folder, False).generate(prompts, params)
    eng = gpu_engine(folder, True)
    graph = eng.generate(prompts, params)
    assert [o.token_ids for o in graph] == [o.token_ids for o in eager]
    assert eng.runner.extend_graphs.stats.num_graphs == len(eng.runner.extend_graphs.buckets())
    assert eng.stats.graph_steps > 0


def test_an_engine_on_the_cpu_refuses_extend_graphs(folder):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="extend_graphs needs a CUDA device"):
        Engine(EngineConfig(model=str(folder), device="cpu", extend_graphs=True))
