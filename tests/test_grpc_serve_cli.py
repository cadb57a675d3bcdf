"""`agentkv serve` options become the server's configuration."""
import argparse

import pytest

from runtime import cli_serve
from runtime.server_config import default_data_dir


def parse(*argv):
    p = argparse.ArgumentParser()
    cli_serve.add_parser(p.add_subparsers(dest="command"))
    return cli_serve.config_from_args(p.parse_args(["serve", *argv]))


def test_defaults_bind_loopback_and_use_the_xdg_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    cfg = parse()
    assert cfg.host == "127.0.0.1" and cfg.port == 50051 and cfg.policy == "agent"
    assert cfg.engine.model == "tiny" and cfg.metrics_port is None
    assert cfg.resolved_data_dir == default_data_dir() == tmp_path / "agentkv"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert str(default_data_dir()).endswith(".local/share/agentkv")


def test_every_option_reaches_the_config(tmp_path):
    cfg = parse("--model", "/models/llama", "--host", "0.0.0.0", "--port", "0", "--device",
                "cuda:1", "--dtype", "bf16", "--gpu-memory-fraction", "0.5", "--cpu-cache-gb",
                "4", "--disk-cache-gb", "16", "--policy", "lru_cpu", "--api-keys", "k.toml",
                "--data-dir", str(tmp_path), "--metrics-port", "9100",
                "--max-concurrent-turns", "3", "--max-prompt-tokens", "1000",
                "--block-size", "64", "--max-num-batched-tokens", "1024",
                "--extend-graph-max-tokens", "1024")
    e = cfg.engine
    assert (e.block_size, e.max_num_batched_tokens) == (64, 1024)
    assert e.extend_graph_max_tokens == 1024 and parse().engine.extend_graph_max_tokens == 1024
    assert parse().engine.block_size is None          # the engine picks by device
    assert (e.model, e.device, e.dtype, e.gpu_memory_fraction) == ("/models/llama", "cuda:1",
                                                                   "bf16", 0.5)
    assert (e.cpu_cache_gb, e.disk_cache_gb, e.disk_cache_path) == (4, 16, None)
    # the disk tier is its own environment in the data directory unless --disk-cache-path
    # says otherwise
    assert cfg.engine_config().disk_cache_path == str(tmp_path / "kv")
    assert (cfg.host, cfg.port, cfg.policy, cfg.api_key_file) == ("0.0.0.0", 0, "lru_cpu",
                                                                  "k.toml")
    assert cfg.metrics_port == 9100
    assert cfg.limits.max_concurrent_turns == 3 and cfg.limits.max_prompt_tokens == 1000


def test_unknown_policy_is_refused():
    with pytest.raises(SystemExit):
        parse("--policy", "fifo")


def test_pause_prior_scale_reaches_the_config_and_is_checked():
    assert parse().pause_prior_scale == 1.0
    assert parse("--pause-prior-scale", "0.25").pause_prior_scale == 0.25
    with pytest.raises(ValueError, match="pause_prior_scale"):
        parse("--pause-prior-scale", "0")


def test_server_scales_its_estimators_priors(tmp_path):
    from runtime.config import EngineConfig
    from runtime.server import ServerThread
    from runtime.server_config import ServerConfig
    cfg = ServerConfig(engine=EngineConfig(model="tiny", device="cpu", num_gpu_blocks=64),
                       port=0, data_dir=str(tmp_path), api_keys_from_env=False,
                       pause_prior_scale=0.25, grace_s=1.0)
    st = ServerThread(cfg).start()
    try:
        f = st.server.estimator.expected("web_search", human=False)
        assert (f.source, f.p50_s, f.p90_s) == ("prior", pytest.approx(0.075), pytest.approx(3.4))
    finally:
        st.stop()


def test_engine_sizes_are_checked():
    with pytest.raises(ValueError, match="block_size"):
        parse("--block-size", "48")
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        parse("--max-num-batched-tokens", "0")
    with pytest.raises(ValueError, match="extend_graph_max_tokens"):
        parse("--extend-graph-max-tokens", "768")
