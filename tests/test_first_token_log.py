"""The slow-first-token log line (runtime/first_token_log.py): its fields, and the engine's
count of the steps a chunked prompt ran in."""
import logging

import pytest

from hf_models import save_model
from runtime import Engine, EngineConfig, SamplingParams
from runtime.first_token_log import (FirstTokenStep, describe, describe_server,
                                     maybe_log, read_lines)


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


def test_both_lines_read_back_into_one_record_per_request():
    """`read_lines` is the inverse of the two formats, whatever precedes each message."""
    step = FirstTokenStep(tokens=130, prefill_tokens=128, seqs=3, graph=True, launched_at=10.020)
    text = "\n".join([
        "12:00:01 INFO runtime.first_token_log: "
        + describe("s-1/4/ab12", 10.0, 10.005, 10.032, 2, step, 4096, 4224),
        "12:00:01 INFO agentkv.server: "
        + describe_server("s-1/4/ab12", "s-1", 4, 0.0345, 0.0021, 0.0324),
        "12:00:02 INFO runtime.first_token_log: "
        + describe("r2", 5.0, None, 5.25, 1, FirstTokenStep(7, 0, 7, False, 5.2), 0, 9),
        "12:00:02 INFO agentkv.server: request r3 first token after 1.0 ms: something else"])
    got = read_lines(text)
    assert set(got) == {"s-1/4/ab12", "r2"}
    r = got["s-1/4/ab12"]
    assert (r.session_id, r.turn_index, r.server_ms, r.prepared_ms, r.to_token_ms) == \
        ("s-1", 4, 34.5, 2.1, 32.4)
    assert (r.engine_ms, r.queued_ms, r.steps, r.cached_tokens, r.prompt_tokens) == \
        (32.0, 5.0, 2, 4096, 4224)
    assert (r.step_tokens, r.step_prefill_tokens, r.step_seqs, r.graph) == (130, 128, 3, True)
    assert (r.launched_after_admission_ms, r.read_back_ms) == (15.0, 12.0)
    r2 = got["r2"]                        # never queued: no admission figures, no server line
    assert r2.queued_ms is None and r2.launched_after_admission_ms is None
    assert (r2.engine_ms, r2.read_back_ms, r2.graph, r2.session_id) == (250.0, 50.0, False, None)


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
