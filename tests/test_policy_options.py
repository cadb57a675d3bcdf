"""`--policy-option KEY=VALUE`: an operator's settings of the cache policy, parsed by the field's
type, checked before anything starts, and carried into the running server's policy."""
import argparse
import math

import pytest

from runtime import cli_serve
from sessions.costs import CostModel
from sessions.estimator import PauseEstimator
from sessions.policies.agent import AgentConfig
from sessions.policies.options import check_policy_options, parse_policy_options
from sessions.policy import make_policy

COST = CostModel.from_measurements(kv_bytes_per_token=131072, prefill_tokens_per_s=20000,
                                   h2d_GBps=25.0, d2h_GBps=25.0, disk_read_GBps=5.0,
                                   disk_write_GBps=3.0, gpu_kv_bytes=8 * 2**30,
                                   cpu_kv_bytes=32 * 2**30, disk_kv_bytes=64 * 2**30)


def serve_config(*argv):
    p = argparse.ArgumentParser()
    cli_serve.add_parser(p.add_subparsers(dest="command"))
    return cli_serve.config_from_args(p.parse_args(["serve", *argv]))


def test_values_are_parsed_by_the_fields_type():
    got = parse_policy_options("agent", ["resume_step_tokens=768", "resume_step_probability=0.3",
                                         "session_fcfs=false", "max_prefetches=3",
                                         "disk_after_s=inf"])
    assert got == {"resume_step_tokens": 768, "resume_step_probability": 0.3,
                   "session_fcfs": False, "max_prefetches": 3, "disk_after_s": math.inf}
    assert type(got["resume_step_tokens"]) is int and type(got["max_prefetches"]) is int
    assert parse_policy_options("agent", ["resume_step_tokens=None"]) == {
        "resume_step_tokens": None}
    assert parse_policy_options("ttl", ["max_ttl_s=30"]) == {"max_ttl_s": 30.0}
    assert parse_policy_options("lru", []) == {}


@pytest.mark.parametrize("policy,items,match", [
    ("agent", ["resume_step_tokenz=5"], "no option 'resume_step_tokenz'; its options: .*resume_step_tokens"),
    ("agent", ["resume_step_tokens"], "expected KEY=VALUE"),
    ("agent", ["=3"], "expected KEY=VALUE"),
    ("agent", ["resume_step_tokens=12.5"], "must be an integer or none"),
    ("agent", ["max_prefetches=none"], "must be an integer$"),
    ("agent", ["session_fcfs=maybe"], "must be true or false"),
    ("agent", ["keep_min_s=nan"], "not nan"),
    ("agent", ["keep_min_s=inf"], "AgentConfig.keep_min_s must be a finite number"),
    ("agent", ["keep_min_s=1", "keep_min_s=2"], "given twice"),
    ("agent", ["resume_step_probability=1.5"], r"AgentConfig.resume_step_probability .*\(0, 1\]"),
    ("agent", ["resume_step_tokens=0"], "AgentConfig.resume_step_tokens must be a positive"),
    ("agent", ["prefetch_q=1"], r"AgentConfig.prefetch_q must be a quantile in \(0, 1\)"),
    ("agent", ["keep_min_s=-1"], "AgentConfig.keep_min_s must be a finite number >= 0"),
    ("agent", ["gpu_release_pressure=1.2"], r"AgentConfig.gpu_release_pressure .*\[0, 1\]"),
    ("agent", ["max_prefetches=-1"], "AgentConfig.max_prefetches must be a count >= 0"),
    ("ttl", ["min_ttl_s=50", "max_ttl_s=30"], "min_ttl_s <= max_ttl_s"),
    ("lru", ["keep_min_s=1"], "the lru policy takes no options"),
    ("recompute", ["x=1"], "the recompute policy takes no options"),
])
def test_a_bad_setting_is_refused_with_what_to_change(policy, items, match):
    with pytest.raises(ValueError, match=match):
        parse_policy_options(policy, items)


def test_the_settings_reach_the_policy_it_builds():
    p = make_policy("agent", COST, PauseEstimator(),
                    {"resume_step_tokens": 512, "session_fcfs": False})
    assert p.config == AgentConfig(resume_step_tokens=512, session_fcfs=False)
    # the step cap it gives is the configured one
    from sessions.estimator import PauseForecast
    soon = PauseForecast(0.03, 0.1, "learned")
    assert p.step_token_cap([(0.0, soon)] * 4) == 512
    ttl = make_policy("ttl", COST, PauseEstimator(), {"min_ttl_s": 2.0, "max_ttl_s": 5.0})
    assert (ttl.min_ttl_s, ttl.max_ttl_s) == (2.0, 5.0)
    assert make_policy("agent", COST, PauseEstimator()).config == AgentConfig()
    with pytest.raises(ValueError, match="takes no options"):
        make_policy("lru_cpu", COST, PauseEstimator(), {"min_ttl_s": 1.0})


def test_serve_flags_become_the_configs_settings_and_are_checked():
    assert serve_config().policy_options == {}
    cfg = serve_config("--policy-option", "resume_step_tokens=768",
                       "--policy-option", "resume_horizon_s=0.05")
    assert cfg.policy_options == {"resume_step_tokens": 768, "resume_horizon_s": 0.05}
    with pytest.raises(ValueError, match="the lru policy takes no options"):
        serve_config("--policy", "lru", "--policy-option", "resume_step_tokens=768")
    from runtime.server_config import ServerConfig
    with pytest.raises(ValueError, match="no option 'bogus'"):
        ServerConfig(policy="agent", policy_options={"bogus": 1})
    check_policy_options("agent", {})


def test_cli_reports_a_bad_setting_as_a_usage_error(capsys):
    from runtime.cli import main
    assert main(["serve", "--policy-option", "resume_step_probability=0"]) == 2
    err = capsys.readouterr().err
    assert "AgentConfig.resume_step_probability must be in (0, 1]" in err


def test_a_running_server_uses_the_settings(tmp_path):
    from runtime.config import EngineConfig
    from runtime.server import ServerThread
    from runtime.server_config import ServerConfig
    cfg = ServerConfig(engine=EngineConfig(model="tiny", device="cpu", num_gpu_blocks=64),
                       port=0, data_dir=str(tmp_path), api_keys_from_env=False, grace_s=1.0,
                       policy_options={"resume_step_tokens": 256, "prefetch_q": 0.4})
    st = ServerThread(cfg).start()
    try:
        policy = st.server.kv_hook.ctl.policy
        assert policy.name == "agent"
        assert policy.config == AgentConfig(resume_step_tokens=256, prefetch_q=0.4)
    finally:
        st.stop()


def test_replay_passes_each_policys_settings_to_its_server_only(tmp_path):
    import sys
    from pathlib import Path
    sys.path.append(str(Path(__file__).resolve().parent.parent / "bench"))
    from agent_server import ServerSpec, split_policy_options
    pairs, doc = split_policy_options(["agent:resume_step_tokens=768", "ttl:max_ttl_s=9"],
                                      ["lru", "ttl", "agent"])
    assert doc == {"agent": {"resume_step_tokens": 768}, "ttl": {"max_ttl_s": 9.0}}
    spec = ServerSpec(policy="agent", policy_options=pairs)
    args = spec.args(tmp_path)
    i = args.index("--policy-option")
    assert args[i:i + 2] == ["--policy-option", "resume_step_tokens=768"]
    assert args.count("--policy-option") == 1
    from dataclasses import replace
    assert "--policy-option" not in replace(spec, policy="lru").args(tmp_path)
    with pytest.raises(SystemExit, match="POLICY:KEY=VALUE"):
        split_policy_options(["resume_step_tokens=768"], ["agent"])
    with pytest.raises(SystemExit, match="one of this run's policies"):
        split_policy_options(["agent:resume_step_tokens=768"], ["lru"])
    with pytest.raises(SystemExit, match="no option 'x'"):
        split_policy_options(["agent:x=1"], ["agent"])
