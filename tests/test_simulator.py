"""Workload readers, the generator and the discrete-event simulator."""
import json
import math
import random
from pathlib import Path

import pytest

from sessions.costs import CostModel
from sessions.estimator import PauseEstimator
from sessions.policy import POLICY_NAMES, make_policy
from sessions.sim.records import SimConfig
from sessions.sim.report import agent_beats, summarize_result
from sessions.sim.simulator import Simulator, run_simulation
from sessions.sim.workload import (DEFAULT_TOOLS, HUMAN_WAIT, GeneratorConfig, SimRound,
                                   SimSession, generate_agent_sessions, read_mooncake_jsonl,
                                   read_tracelab_csv)

WORKLOADS = Path(__file__).resolve().parents[1].parent / "shared" / "workloads"
MOONCAKE = WORKLOADS / "mooncake_conversation_trace.jsonl"
SMALL = CostModel.h200_llama3_8b().with_capacities(gpu_tokens=150_000, cpu_tokens=150_000,
                                                   disk_tokens=10_000_000)


def small_workload(seed=0, n=150):
    return generate_agent_sessions(GeneratorConfig(
        n_sessions=n, arrival_rate_per_s=0.05, seed=seed, max_context_tokens=40_000,
        system_prompt_tokens=4000))


# -- readers ----------------------------------------------------------------------------------
def test_tracelab_csvs():
    multi = read_tracelab_csv(str(WORKLOADS / "tracelab_multi_session_example.csv"))
    assert [s.session_id for s in multi] == ["tracelab-0", "tracelab-1", "tracelab-2"]
    assert [s.arrival_s for s in multi] == pytest.approx([0.0, 0.2, 0.5])
    s0 = multi[0]
    assert [r.prefix_tokens for r in s0.rounds] == [0, 576, 768]
    assert [r.input_tokens for r in s0.rounds] == [512, 128, 128]
    assert [r.pause_after_s for r in s0.rounds] == pytest.approx([0.1, 0.1, 0.0])
    single = read_tracelab_csv(str(WORKLOADS / "tracelab_session_example.csv"))
    assert len(single) == 1 and len(single[0].rounds) == 11 and single[0].arrival_s == 0.0
    r9, r10 = single[0].rounds[9], single[0].rounds[10]
    assert r10.prefix_tokens == 48060 < r9.context_tokens          # context was cut
    assert [r.pause_after_s for r in single[0].rounds[7:10]] == pytest.approx([1.52, 1.523, 0.0])


def test_tracelab_rejects_other_csv(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_tracelab_csv(str(p))


def test_mooncake_sessions_from_prefix_sharing(tmp_path):
    lines = [
        (0, 1200, 100, [0, 1, 2]),            # r0: a new conversation
        (500, 900, 10, [0, 7]),               # another conversation
        (1000, 1400, 50, [0, 1, 5]),          # r0's full blocks [0, 1] + a new tail: next round
        (2000, 2100, 20, [0, 1, 5, 9]),       # extends the previous: third round
        (2500, 1500, 20, [0, 1, 6]),          # shares only part of that conversation: a fork
    ]
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(json.dumps({"timestamp": t, "input_length": i, "output_length": o,
                                       "hash_ids": h}) for t, i, o, h in lines))
    sessions = read_mooncake_jsonl(str(p))
    by_rounds = sorted(len(s.rounds) for s in sessions)
    assert by_rounds == [1, 1, 3]
    conv = next(s for s in sessions if len(s.rounds) == 3)
    assert conv.shared_prefix_tokens == 512 and not conv.closes
    r0, r1, r2 = conv.rounds
    assert r0.pause_after_s == pytest.approx(1.0) and r1.pause_after_s == pytest.approx(1.0)
    assert math.isinf(r2.pause_after_s) and r2.human_after
    assert (r1.prefix_tokens, r1.input_tokens) == (1300, 100)   # prompt + answer reused
    assert (r2.prefix_tokens, r2.input_tokens) == (1450, 650)
    assert [r.arrival_s for r in conv.rounds] == pytest.approx([0.0, 1.0, 2.0])


def test_mooncake_trace_first_lines():
    sessions = read_mooncake_jsonl(str(MOONCAKE), limit=2000)
    assert sum(len(s.rounds) for s in sessions) == 2000
    assert any(len(s.rounds) > 1 for s in sessions)
    for s in sessions:
        assert s.shared_prefix_tokens == 512
        times = [r.arrival_s for r in s.rounds]
        assert times == sorted(times)
        for r in s.rounds:
            assert r.prefix_tokens + r.input_tokens > 0
    half = read_mooncake_jsonl(str(MOONCAKE), limit=2000, fraction=0.5, seed=1)
    assert 0.3 * len(sessions) < len(half) < 0.7 * len(sessions)


# -- generator --------------------------------------------------------------------------------
def test_generator_is_seeded_and_compresses_time():
    a, b = small_workload(1, 40), small_workload(1, 40)
    assert a == b and small_workload(2, 40) != a
    cfg = GeneratorConfig(n_sessions=40, seed=1, arrival_rate_per_s=0.05,
                          max_context_tokens=40_000, system_prompt_tokens=4000)
    fast = generate_agent_sessions(GeneratorConfig(**{**cfg.__dict__, "time_compression": 10.0}))
    for s, f in zip(a, fast):
        for r, q in zip(s.rounds, f.rounds):
            assert q.pause_after_s == pytest.approx(r.pause_after_s / 10.0)


def test_generator_pauses_match_published_quantiles():
    rng = random.Random(0)
    tools = [t for t in DEFAULT_TOOLS if not t.human]
    total = sum(t.share for t in tools)
    xs = []
    for _ in range(40_000):
        u, pick = rng.random() * total, tools[-1]
        for t in tools:
            u -= t.share
            if u <= 0:
                pick = t
                break
        xs.append(pick.pause.sample(rng))
    xs.sort()
    assert 0.2 <= xs[len(xs) // 2] <= 0.45            # published p50 0.3 s
    assert 8.0 <= xs[int(0.9 * len(xs))] <= 20.0      # published p90 13.6 s
    hs = sorted(HUMAN_WAIT.sample(rng) for _ in range(40_000))
    assert 60 <= hs[len(hs) // 2] <= 110              # published p50 ~84 s
    assert 900 <= hs[int(0.9 * len(hs))] <= 1700      # published p90 ~1236 s
    assert 6 * 3600 <= hs[int(0.99 * len(hs))] <= 24 * 3600   # published p99 ~13.9 h


# -- simulator --------------------------------------------------------------------------------
def test_deterministic_and_conserves_tokens():
    sessions = small_workload(3, 60)
    for name in POLICY_NAMES:
        a = run_simulation(sessions, make_policy(name, SMALL, PauseEstimator()), SMALL)
        b = run_simulation(sessions, make_policy(name, SMALL, PauseEstimator()), SMALL)
        assert a.turns == b.turns and a.bytes_moved == b.bytes_moved
        assert len(a.turns) == sum(len(s.rounds) for s in sessions)
        for t in a.turns:
            assert t.context_tokens == t.reused + t.recomputed + t.new_tokens
            assert t.ttft_s >= 0 and t.end_s >= t.first_token_s
        if name == "recompute":
            assert all(t.reused == 0 for t in a.turns)


def test_capacity_limits_hold_on_every_tier():
    sessions = small_workload(4, 80)
    sim = Simulator(sessions, make_policy("agent", SMALL, PauseEstimator()), SMALL)
    tiers = sim.tiers
    peaks = {"gpu": 0, "cpu": 0, "disk": 0}
    for name in ("set_gpu", "set_interval"):
        orig = getattr(tiers, name)

        def checked(*args, _orig=orig):
            _orig(*args)
            for tier in peaks:
                assert tiers.used[tier] <= tiers.cap[tier], tier
                peaks[tier] = max(peaks[tier], tiers.used[tier])
        setattr(tiers, name, checked)
    res = sim.run()
    assert peaks["gpu"] > 0.9 * tiers.cap["gpu"]          # the GPU really was full
    assert peaks["cpu"] > 0.9 * tiers.cap["cpu"] and peaks["disk"] > 0
    assert res.counters["evict_gpu"] > 0


def _prefetch_case(pause_s, policy):
    """One 20k-token session pauses with a 100 s hint; a 50k-token job then evicts it."""
    cost = CostModel.h200_llama3_8b().with_capacities(gpu_tokens=60_000, cpu_tokens=200_000,
                                                       disk_tokens=1_000_000)
    s1 = SimSession("s1", 0.0, (
        SimRound(0, 0, 20_000, 10, pause_s, "long_job", False, hint_after_s=100.0),
        SimRound(1, 20_010, 100, 10)))
    big = SimSession("big", 2.5, (SimRound(0, 0, 50_000, 10),))
    res = run_simulation([s1, big], make_policy(policy, cost, PauseEstimator()), cost)
    return next(t for t in res.turns if t.session_id == "s1" and t.round_idx == 1), res


def test_prefetch_brings_kv_back_before_the_predicted_resume():
    turn, res = _prefetch_case(100.0, "agent")
    assert res.counters["evict_gpu"] >= 1 and res.counters["prefetches"] == 1
    assert turn.prefetched and turn.reused_gpu == 20_010 and turn.reused_cpu == 0
    assert turn.load_wait_s == pytest.approx(0.0, abs=1e-9)
    base, _ = _prefetch_case(100.0, "lru_cpu")            # no prefetch: loads on the path
    assert base.reused_gpu + base.reused_cpu == 20_010 and base.reused_cpu > 0
    assert base.load_wait_s >= SMALL.load_s(base.reused_cpu, "cpu") * 0.99
    assert turn.ttft_s < base.ttft_s


def test_early_resume_pays_the_load_on_its_critical_path():
    turn, res = _prefetch_case(3.0, "agent")              # back long before the forecast
    assert not turn.prefetched and res.counters["prefetches"] == 0
    # the big job took the tail of its GPU blocks; the tail comes back from CPU
    assert turn.reused_gpu + turn.reused_cpu == 20_010 and turn.reused_cpu > 0
    assert turn.recomputed == 0
    assert turn.load_wait_s >= SMALL.load_s(turn.reused_cpu, "cpu") * 0.99
    assert turn.admit_wait_s > 0                          # it also waited for GPU room


def test_round_larger_than_the_gpu_is_refused():
    s = SimSession("huge", 0.0, (SimRound(0, 0, 200_000, 10),))
    with pytest.raises(ValueError, match="GPU holds"):
        Simulator([s], make_policy("lru", SMALL), SMALL)


def test_agent_beats_the_baselines_on_a_small_agent_workload():
    sessions = small_workload(0)
    out = {name: summarize_result(run_simulation(
        sessions, make_policy(name, SMALL, PauseEstimator()), SMALL, SimConfig()))
        for name in POLICY_NAMES}
    assert agent_beats(out), {k: (v.resume_ttft_mean_s, v.resume_ttft_p99_s,
                                  v.recomputed_tokens) for k, v in out.items()}
    assert out["agent"].recomputed_tokens < out["lru_cpu"].recomputed_tokens
