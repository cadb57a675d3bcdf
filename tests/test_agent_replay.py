"""The agent replay run for real on the CPU (`--smoke`): servers, replay records, checks, report.

Two policies on fresh `agentkv serve` processes with a tiny random model; the recorded turns must
show where each resumed turn's KV came from: nothing reused under `recompute`, the carried-over
context reused (GPU, CPU or disk) under `agent`, and the same greedy tokens under both.
"""
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.append(str(BENCH))

import agent_replay  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("replay")
    rc = agent_replay.main(["--smoke", "--policies", "recompute,agent", "--no-hf",
                            "--fp32-sessions", "0", "--out", str(out), "--date", "20261122",
                            "--server-log-level", "INFO", "--server-first-token-log-s", "0"])
    assert rc == 0
    stem = out / "agent-cpu-20261122"
    return json.loads(stem.with_suffix(".json").read_text()), stem


def test_report_files_and_fixed_metric_names(report):
    doc, stem = report
    assert stem.with_suffix(".md").read_text().startswith("# agent_replay")
    assert stem.with_suffix(".png").stat().st_size > 10_000
    assert doc["bench"] == "agent_replay" and doc["complete"]
    for p in ("recompute", "agent"):
        for k in ("resume_ttft_p50_s", "resume_ttft_p99_s", "jct_mean_s"):
            assert doc["metrics"][f"{p}.{k}"]["value"] > 0
    assert doc["metrics"]["wrong_tokens"] == {"value": 0, "goal": "<= 0"}
    assert doc["metrics"]["agent.resume_ttft_p50_s"]["goal"].startswith("<= ")


def test_each_turn_carries_its_first_token_lines_from_the_server_log(report):
    """Every turn's first token was logged (threshold 0): the server's and the engine's lines,
    matched to the turn by its server session and index, agree with what the client saw."""
    doc, stem = report
    for p in ("recompute", "agent"):
        rows = doc["turn_records"][p]
        assert rows and all(r["first_token"] is not None for r in rows)
        for r in rows:
            ft = r["first_token"]
            assert ft["server_ms"] == pytest.approx(1e3 * r["server_ttft_s"], abs=0.11)
            assert ft["prepared_ms"] + ft["to_token_ms"] == pytest.approx(ft["server_ms"],
                                                                         abs=0.2)
            assert ft["engine_ms"] <= ft["to_token_ms"] + 0.1
            assert ft["prompt_tokens"] == r["prompt_tokens"]
            assert ft["steps"] >= 1 and ft["step_seqs"] >= 1 and ft["step_tokens"] >= 1
        s = doc["first_tokens"]["resumed"][p]
        assert s["resumed_logged"] == s["resumed"] == sum(r["resume"] for r in rows) > 0
    assert doc["first_tokens"]["threshold_s"] == 0
    md = stem.with_suffix(".md").read_text()
    assert "## Where resumed turns' first-token time went" in md
    assert "| agent | " in md.split("first-token time went")[1]


def test_every_turn_played_and_sources_add_up(report):
    doc, _ = report
    for p in ("recompute", "agent"):
        s = doc["policies"][p]
        assert s["turns"] == s["turns_expected"] == doc["workload"]["turns"]
        assert s["errors"] == 0 and s["sessions_completed"] == doc["workload"]["sessions"]
        for t in doc["turn_records"][p]:
            assert sum(t["kv_source"].values()) == t["prompt_tokens"]
            assert 0 < t["ttft_s"] <= t["turn_s"]
            assert 0 < t["server_queue_s"] < t["server_ttft_s"]
            assert t["output_tokens"] >= 1
        assert 0 < s["resume_queue_p50_s"] < s["resume_ttft_p50_s"]
        for t in doc["turn_records"][p]:    # the reasons add up to the queue time
            assert sum(t["server_queue_reasons"].values()) == pytest.approx(
                t["server_queue_s"], abs=1e-3)
        assert set(s["resume_queue_by_reason_mean_s"]) <= {"behind", "slot", "loading", "room"}


def test_the_engine_threads_commands_are_counted_per_server(report):
    doc, stem = report
    for p in ("recompute", "agent"):
        c = doc["policies"][p]["engine_commands"]
        total = c["between_steps"]["count"] + c["during_steps"]["count"]
        # every turn's submission is one, and each session event under agent one more
        assert total >= doc["workload"]["turns"]
        assert c["between_steps"]["host_s"] + c["during_steps"]["host_s"] > 0
    md = stem.with_suffix(".md").read_text()
    assert "- agent: " in md.split("The engine thread's commands")[1]


def test_kv_after_resume_recomputed_under_recompute_reused_under_agent(report):
    doc, _ = report
    rec = [t for t in doc["turn_records"]["recompute"] if t["resume"]]
    agent = [t for t in doc["turn_records"]["agent"] if t["resume"]]
    assert rec and len(rec) == len(agent)
    assert all(t["kv_source"]["recomputed"] == t["prompt_tokens"] for t in rec)
    carried = sum(t["prompt_tokens"] - t["input_tokens"] for t in agent)
    reused = sum(t["kv_source"]["gpu"] + t["kv_source"].get("cpu", 0)
                 + t["kv_source"].get("disk", 0) for t in agent)
    assert reused >= 0.8 * carried
    assert doc["policies"]["agent"]["recomputed_tokens"] < \
        doc["policies"]["recompute"]["recomputed_tokens"]


def test_checks_compare_tokens_and_verify_kv_bytes(report):
    doc, _ = report
    cmp = doc["checks"]["token_comparisons"][0]
    assert cmp["sessions"] == doc["workload"]["sessions"]
    assert cmp["identical_sessions"] == cmp["sessions"] and cmp["divergences"] == 0
    assert cmp["tokens_compared"] == doc["workload"]["output_tokens"]
    rt = doc["checks"]["kv_roundtrip"]
    assert rt["blocks"] > 0 and rt["mismatches"] == 0
    assert rt["cpu_loads_verified"] == rt["disk_loads_verified"] == rt["blocks"]
