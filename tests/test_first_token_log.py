"""The slow-first-token log line (runtime/first_token_log.py): its fields, and the engine's
count of the steps a chunked prompt ran in."""
import logging

import pytest

from hf_models import save_model
from runtime import Engine, EngineConfig, SamplingParams
from runtime.first_token_log import FirstTokenStep, describe, maybe_log


def test_the_line_names_the_queue_and_the_last_step(caplog):
    step = FirstTokenStep(tokens=130, prefill_tokens=128, seqs=3, graph=True, launched_at=10.020)
    line = describe("r1", 10.0, 10.005, 10.032, 1, step, 4096, 4224)
    assert line == ("request r1 first token after 32.0 ms: queued 5.0 ms, 1 step (4096 of 4224 "
                    "prompt tokens cached); its last step: 130 tokens (128 prefill) of 3 "
                    "sequences, graph, launched 15.0 ms after admission, token read back "
                    "12.0 ms after launch")
    with caplog.at_level(logging.INFO, logger="runtime.first_token_log"):
        assert not maybe_log(None, "r1", 10.0, 10.005, 10.032, 1, step, 4096, 4224)
        assert not maybe_log(0.05, "r1", 10.0, 10.005, 10.032, 1, step, 4096, 4224)
        assert maybe_log(0.03, "r1", 10.0, 10.005, 10.032, 1, step, 4096, 4224)
    assert caplog.text.count("request r1 first token") == 1


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_model("llama", tmp_path_factory.mktemp("ftl") / "model", max_pos=1024)


def test_the_engine_logs_a_chunked_prompt_after_its_three_steps(folder, caplog):
    eng = Engine(EngineConfig(model=str(folder), device="cpu", dtype="float32",
                              kernel_backend="torch", num_gpu_blocks=64,
                              max_num_batched_tokens=16, first_token_log_s=0.0))
    with caplog.at_level(logging.INFO, logger="runtime.first_token_log"):
        out = eng.generate([list(range(3, 43))], SamplingParams(max_tokens=3, ignore_eos=True))
    assert len(out[0].token_ids) == 3
    lines = [r.getMessage() for r in caplog.records if r.name == "runtime.first_token_log"]
    assert len(lines) == 1                        # its first token only
    assert "3 steps (0 of 40 prompt tokens cached); its last step: 8 tokens (8 prefill) of 1 " \
           "sequences, eager" in lines[0]


def test_a_negative_threshold_is_refused():
    with pytest.raises(ValueError, match="first_token_log_s must be >= 0"):
        EngineConfig(model="x", first_token_log_s=-1.0)


def test_serve_takes_the_threshold():
    import argparse

    from runtime import cli_serve
    sub = argparse.ArgumentParser().add_subparsers()
    cli_serve.add_parser(sub)
    parse = sub.choices["serve"].parse_args
    assert cli_serve.config_from_args(parse([])).engine.first_token_log_s is None
    cfg = cli_serve.config_from_args(parse(["--first-token-log-s", "0.05"]))
    assert cfg.engine.first_token_log_s == 0.05


def test_a_served_turn_gets_both_lines_under_one_request_id(tmp_path, caplog):
    """Through gRPC: the server's line (preparation, then submission to the token) and the
    engine's (queue and steps) name the same request."""
    import re
    from dataclasses import replace

    from grpc_server_fixture import running_server, server_config
    from runtime.client import AgentKVClient
    cfg = server_config(tmp_path / "data")
    cfg = replace(cfg, engine=replace(cfg.engine, first_token_log_s=0.0))
    with caplog.at_level(logging.INFO), running_server(cfg) as st, \
            AgentKVClient(st.target, timeout=60) as c:
        c.wait_ready()
        with c.session(max_tokens=3) as s:
            s.run([{"role": "user", "content": "hello"}], max_tokens=3)
    server = [r.getMessage() for r in caplog.records if r.name == "agentkv.server"
              and "first token after" in r.getMessage()]
    engine = [r.getMessage() for r in caplog.records if r.name == "runtime.first_token_log"]
    assert len(server) == 1 and len(engine) == 1
    rid = re.match(r"request (\S+) \(session \S+ turn 0\) first token after [\d.]+ ms: "
                   r"prepared in [\d.]+ ms, then [\d.]+ ms from submission", server[0]).group(1)
    assert engine[0].startswith(f"request {rid} first token after ")
