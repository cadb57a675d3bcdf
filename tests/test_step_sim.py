"""The step simulator: the real scheduler on a virtual clock, with exact step times."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT / "bench"))

from agent_workload import ReplaySession, ReplayTurn  # noqa: E402
from sessions.costs import CostModel  # noqa: E402
from sessions.estimator import PauseEstimator  # noqa: E402
from sessions.policy import make_policy  # noqa: E402
from step_sim import main, parse_variant  # noqa: E402
from step_sim_engine import SimEngineConfig, StepSim, StepTimeModel  # noqa: E402

MODEL = StepTimeModel()    # 4.7 ms + 18 us a token + 1.9 ns a pair, eager at least 13.9 ms


def ids(n, start):
    return tuple(range(start, start + n))


def policy(name, **opts):
    return make_policy(name, CostModel.h200_llama3_8b(), PauseEstimator(), opts)


def test_step_time_model_has_a_host_floor_past_the_largest_graph():
    assert MODEL.step_s(512, 64) == pytest.approx((4.7 + 0.018 * 512) / 1e3)
    assert MODEL.step_s(100, 64) == pytest.approx((4.7 + 0.018 * 100) / 1e3)
    assert MODEL.step_s(100, 65) == pytest.approx(13.9 / 1e3)     # eager: launch-bound
    # a 2,048-token chunk at 8K of context: its attention pairs cost 1.9 ns each
    pairs = 2048 * (8192 + 2049 / 2)
    assert MODEL.step_s(2048, 8, pairs) == pytest.approx(
        (4.7 + 0.018 * 2048 + 1.9e-6 * pairs) / 1e3)


def test_one_session_two_turns_exact_times():
    """Turn 0: 100 tokens, one prefill step (its first token) and one decode step. Turn 1
    arrives 1 s + two messages later and computes what the cache lacks: 102 tokens of log hold
    one full 64-token page (the simulated H200's), so 152 - 64 = 88 tokens."""
    s = ReplaySession("a", (ReplayTurn(0, ids(100, 10), 2, pause_after_s=1.0, tool_after="bash"),
                            ReplayTurn(1, ids(50, 500), 2)))
    rpc = 0.002
    res = StepSim([s], policy("lru_cpu"), SimEngineConfig(rpc_s=rpc), MODEL).run()
    t0, t1 = res.turns
    # pairs: each new token attends to everything before it and itself
    step0, dec1 = MODEL.step_s(100, 1, 100 * 50.5), MODEL.step_s(1, 1, 101)
    assert (t0.resume, t0.computed_tokens, t0.queue_s) == (False, 100, 0.0)
    ft = MODEL.first_token_ms / 1e3                 # read-back and stream, after the step
    assert t0.ttft_s == pytest.approx(step0 + ft + 2 * rpc)
    assert (t1.resume, t1.pause_s, t1.tool, t1.computed_tokens) == (True, 1.0, "bash", 88)
    step1, dec2 = MODEL.step_s(88, 1, 88 * (64 + 44.5)), MODEL.step_s(1, 1, 153)
    assert t1.ttft_s == pytest.approx(step1 + ft + 2 * rpc) and t1.queue_s == pytest.approx(0.0)
    end0 = rpc + step0 + dec1
    assert t1.sent_s == pytest.approx(end0 + rpc + 1.0)
    assert res.jct_s["a"] == pytest.approx(end0 + 2 * rpc + 1.0 + step1 + dec2 + rpc)
    assert res.steps == 4 and res.short_steps == 0


def two_sessions():
    """`quick` pauses 50 ms between two short turns while `long` prefills 8,000 tokens."""
    quick = ReplaySession("quick", (
        ReplayTurn(0, ids(16, 10), 1, pause_after_s=0.05, tool_after="bash"),
        ReplayTurn(1, ids(16, 100), 1)))
    long = ReplaySession("long", (ReplayTurn(0, ids(8000, 1000), 1),))
    return [quick, long]


def test_the_step_cap_shortens_a_resumed_turns_wait_behind_a_long_prefill():
    """Without a cap the resumed turn waits for a 2,048-token step (~60 ms); with the agent's
    cap while a resume is likely (any chance here), steps carry 256 tokens and it waits at most
    one such step (each of its tokens attending to at most the whole 8,016-token context)."""
    full = StepSim(two_sessions(), policy("lru_cpu")).run()
    capped = StepSim(two_sessions(), policy("agent", resume_step_tokens=256,
                                            resume_step_probability=0.01)).run()
    wait = {name: next(t for t in r.turns if t.resume).queue_s
            for name, r in (("full", full), ("capped", capped))}
    assert wait["full"] > 0.02
    assert wait["capped"] < MODEL.step_s(256 + 1, 2, 257 * 8016) <= wait["full"]
    assert capped.short_steps > 0 and full.short_steps == 0
    # the long prefill pays for the short steps: more of them
    assert capped.steps > full.steps


def test_variants_parse_with_the_policy_options_checks():
    assert parse_variant("x=agent:resume_step_tokens=512,session_fcfs=false") == (
        "x", "agent", {"resume_step_tokens": 512, "session_fcfs": False})
    assert parse_variant("base=lru_cpu") == ("base", "lru_cpu", {})
    for bad in ("agent", "x=", "x=agent:nope=1", "x=agent:resume_step_tokens=-1"):
        with pytest.raises(ValueError):
            parse_variant(bad)


def test_the_command_writes_the_bench_json(tmp_path, capsys):
    assert main(["--variant", "fcfs=lru_cpu", "--variant", "agent=agent", "--seeds", "0",
                 "--sessions", "3", "--concurrency", "2", "--max-turns", "2",
                 "--out", str(tmp_path), "--date", "20260101"]) == 0
    doc = json.loads((tmp_path / "step_sim-cpu-20260101.json").read_text())
    assert doc["bench"] == "step_sim" and [r["variant"] for r in doc["rows"]] == ["fcfs", "agent"]
    for v in ("fcfs", "agent"):
        assert doc["metrics"][f"{v}.resume_ttft_p50_s"]["value"] > 0
        assert doc["metrics"][f"{v}.jct_mean_s"]["value"] > 0
    assert doc["rows"][0]["turns"] == doc["rows"][1]["turns"] > 3
    assert "resume TTFT p50" in capsys.readouterr().out
    md = (tmp_path / "step_sim-cpu-20260101.md").read_text()
    assert md.count("\n| fcfs | lru_cpu: - |") == 1 and "| agent | agent: - |" in md
