"""The agent replay's parts: the workload it plays, the token comparison and tie rule, the peer."""
import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parent.parent / "bench"))

from agent_checks import Divergence, compare_outputs  # noqa: E402
from agent_ties import (TIE_GAP, check_ties, judge, reference_model, reference_tops,  # noqa: E402
                        run_tops)
from agent_driver import DriverConfig, ReplayResult, TurnRecord, replay  # noqa: E402
from agent_workload import WorkloadConfig, build_workload  # noqa: E402

CFG = WorkloadConfig(sessions=6, seed=3, system_prompt_tokens=300, task_tokens_p50=500,
                     output_tokens_p50=16, max_output_tokens=20, max_context_tokens=4000,
                     max_turns=5, time_compression=10.0, max_pause_s=2.0)


def test_generated_workload_is_seeded_shares_its_prefix_and_compresses_pauses():
    a, b = build_workload(CFG, 1000), build_workload(CFG, 1000)
    assert a.sessions == b.sessions
    other = build_workload(WorkloadConfig(**{**CFG.__dict__, "seed": 4}), 1000)
    assert other.sessions != a.sessions
    firsts = [s.turns[0].input_ids for s in a.sessions]
    assert all(f[:300] == firsts[0][:300] for f in firsts)       # the shared system prompt
    assert len({f[300:310] for f in firsts}) == len(firsts)       # then each its own task
    for s in a.sessions:
        assert s.shared_prefix_tokens == 300
        assert s.context_tokens <= CFG.max_context_tokens
        assert s.turns[-1].pause_after_s == 0 and s.turns[-1].tool_after is None
        for t in s.turns[:-1]:
            assert t.pause_after_s == min(2.0, t.pause_real_s / 10.0)
            assert t.tool_after
        assert all(3 <= x < 1000 for t in s.turns for x in t.input_ids)
        assert all(1 <= t.output_tokens <= 20 for t in s.turns)
    summary = a.summary(concurrency=3)
    assert summary["turns"] == sum(len(s.turns) for s in a.sessions)
    assert summary["working_set_tokens"] == sum(s.context_tokens for s in a.sessions)


def test_tracelab_csv_rounds_become_turns(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("session_id,arrival_time,round_idx,prefix_len,input_len,output_len,"
                 "tool_wait_after_ms\n7,0,1,300,50,10,0\n7,0,0,0,200,100,4000\n")
    w = build_workload(WorkloadConfig(source="tracelab", path=str(f), time_compression=2.0,
                                      max_output_tokens=64), 500)
    (s,) = w.sessions
    assert [len(t.input_ids) for t in s.turns] == [200, 50]
    assert [t.output_tokens for t in s.turns] == [64, 10]
    assert s.turns[0].pause_after_s == 2.0 and s.turns[0].tool_after == "tool"


def test_bad_workload_configs_are_refused():
    with pytest.raises(ValueError, match="unknown workload source"):
        WorkloadConfig(source="sharegpt")
    with pytest.raises(ValueError, match="needs a file"):
        WorkloadConfig(source="mooncake")
    with pytest.raises(ValueError, match="vocab_size"):
        build_workload(CFG, 4)


def _result(outputs: dict) -> ReplayResult:
    r = ReplayResult("x")
    for sid, turns in outputs.items():
        for i, ids in enumerate(turns):
            r.turns.append(TurnRecord(sid, i, i > 0, 0, 0, None, False, 0, 0, len(ids), 0, 0.1,
                                      0.2, 0, None, {}, ids))
    return r


def test_compare_outputs_stops_each_session_at_its_first_difference():
    w = build_workload(CFG, 1000)
    w.sessions = [s for s in w.sessions if len(s.turns) >= 2][:2]
    s0, s1 = w.sessions
    outs_a = {s.session_id: [[5, 6, 7]] * len(s.turns) for s in w.sessions}
    outs_b = {s0.session_id: [[5, 6, 7]] * len(s0.turns),
              s1.session_id: [[5, 6, 7]] + [[5, 9, 7]] * (len(s1.turns) - 1)}
    c = compare_outputs("t", w.sessions, _result(outs_a), _result(outs_b))
    assert c.sessions == 2 and c.identical_sessions == 1
    (d,) = c.divergences
    assert (d.session, d.turn, d.position, d.token_a, d.token_b) == (s1.session_id, 1, 1, 6, 9)
    assert d.context == (list(s1.turns[0].input_ids) + [5, 6, 7] + list(s1.turns[1].input_ids)
                         + [5])
    assert c.tokens_compared == 3 * len(s0.turns) + 3 + 2


def _one_turn_divergences(eng, tokens_b):
    """One session's first turn; run A picks the engine's top token, each run B another."""
    from runtime import SamplingParams
    w = build_workload(WorkloadConfig(**{**CFG.__dict__, "sessions": 1}), 4096)
    ctx = list(w.sessions[0].turns[0].input_ids)
    top = eng.generate([ctx], SamplingParams(max_tokens=1, ignore_eos=True, top_logprobs=20))[0]
    sid = w.sessions[0].session_id
    one = w.sessions[0].__class__(sid, w.sessions[0].turns[:1])
    a = _result({sid: [[top.top_logprobs[0][0][0]]]})
    cmps = [compare_outputs(f"b{i}", [one], a, _result({sid: [[top.top_logprobs[0][i][0]]]}))
            for i in tokens_b]
    for c in cmps:
        assert len(c.divergences) == 1 and c.divergences[0].context == ctx
    return cmps, top.top_logprobs[0]


def test_top2_rule_on_a_real_engine():
    from runtime import Engine, EngineConfig
    eng = Engine(EngineConfig(model="shape:tiny-random", device="cpu", dtype="fp32",
                              num_gpu_blocks=64))
    cmps, top = _one_turn_divergences(eng, (1, 2))
    (_, l1), (_, l2) = top[:2]
    check_ties(cmps, run_tops(cmps, eng), None, log=lambda m: None)
    top2, third = (c.divergences[0] for c in cmps)
    # both comparisons re-run the same context (in one batch: fp32 rounding may differ by ulps)
    assert top2.gap == pytest.approx(l1 - l2, abs=1e-4)
    assert third.gap == pytest.approx(top2.gap, abs=1e-5)
    assert top2.is_tie == (l1 - l2 <= TIE_GAP) and top2.rule == "top-2 gap <= 2^-4"
    assert third.is_tie is False                  # not among the two most likely tokens


def _div(a, b):
    return Divergence("s", 0, 0, a, b, [1, 2, 3])


def test_reference_rule_judges_the_fp32_margin_against_the_measured_band():
    ref = [(7, -1.00), (8, -1.05), (9, -1.30), (10, -2.0)]
    run = [(8, -0.98), (7, -1.02), (9, -1.31), (10, -1.99)]     # rounding moved 7 / 8 by 0.04
    d = _div(7, 8)
    judge(d, run, ref)                  # eps: 0.03, -0.02, 0.07, -0.01 -> band 0.09
    assert d.band == pytest.approx(0.09) and d.ref_margin == pytest.approx(0.05)
    assert d.is_tie and d.ref_top2 == [(7, -1.00), (8, -1.05)]
    assert d.gap == pytest.approx(0.04) and d.rule == "fp32 margin <= bf16 band"
    far = _div(7, 9)                    # 0.30 below the top in fp32: no rounding explains it
    judge(far, run, ref)
    assert far.ref_margin == pytest.approx(0.30) and far.is_tie is False
    absent = _div(7, 11)                # not in the fp32 top-20 at all
    judge(absent, run, ref)
    assert absent.ref_margin is None and absent.is_tie is False
    exact = _div(7, 8)                  # identical logprobs: no rounding, no tie
    judge(exact, ref, ref)
    assert exact.band == 0.0 and exact.is_tie is False


def test_reference_model_has_the_runs_weights_in_fp32():
    from runtime.models.loader import load_model
    assert reference_model("shape:llama3-8b", "bf16") == "shape:llama3-8b@bf16"
    assert reference_model("shape:llama3-8b@bf16", "bfloat16") == "shape:llama3-8b@bf16"
    assert reference_model("/models/llama", "fp16") == "/models/llama"
    assert reference_model("shape:llama3-8b", "fp32") is None
    import torch
    run = load_model("shape:tiny-random", torch.bfloat16, torch.device("cpu")).model
    ref = load_model("shape:tiny-random@bf16", torch.float32, torch.device("cpu")).model
    own = load_model("shape:tiny-random", torch.float32, torch.device("cpu")).model
    pr, pf, po = (dict(m.named_parameters()) for m in (run, ref, own))
    assert pr.keys() == pf.keys() and len(pr) > 5
    for name, p in pr.items():
        assert pf[name].dtype == torch.float32
        assert torch.equal(p.float(), pf[name]), name
    w = "layers.0.mlp.down_proj.weight" if "layers.0.mlp.down_proj.weight" in po else next(
        n for n, p in po.items() if p.dim() == 2)
    assert not torch.equal(po[w], pf[w])            # fp32-drawn weights are another model
    with pytest.raises(ValueError, match="unknown weight dtype"):
        load_model("shape:tiny-random@fp8", torch.float32, torch.device("cpu"))


def test_bf16_places_judged_on_the_fp32_reference_of_the_same_weights():
    from runtime import Engine, EngineConfig
    eng = Engine(EngineConfig(model="shape:tiny-random", device="cpu", dtype="bf16",
                              num_gpu_blocks=64))
    cmps, _ = _one_turn_divergences(eng, (1, 19))
    cmps[1].counted = False
    tops = run_tops(cmps, eng)
    ref_eng = Engine(EngineConfig(model=reference_model("shape:tiny-random", "bf16"),
                                  device="cpu", dtype="fp32", num_gpu_blocks=64))
    ref = reference_tops(cmps, ref_eng)
    assert list(ref) == [0]                         # only counted places get the reference
    lines = []
    check_ties(cmps, tops, ref, log=lines.append)
    near, far = (c.divergences[0] for c in cmps)
    exact = dict(ref[0])
    assert near.rule == "fp32 margin <= bf16 band" and far.rule == "top-2 gap <= 2^-4"
    assert near.band is not None and near.band > 0   # bf16 rounding moved the top tokens
    lo = min(exact[t] for t in (near.token_a, near.token_b) if t in exact)
    if {near.token_a, near.token_b} <= exact.keys():
        assert near.ref_margin == pytest.approx(ref[0][0][1] - lo)
        assert near.is_tie == (near.ref_margin <= near.band)
    else:
        assert near.ref_margin is None and near.is_tie is False
    assert far.is_tie is False and len(lines) == 2 and "vs band" in lines[0]


def test_transformers_peer_resends_history_and_streams(tmp_path):
    from hf_session_peer import HFPeerBackend, PeerConfig
    peer = HFPeerBackend(PeerConfig(shape="tiny-random", device="cpu", dtype="float32",
                                    kv_tokens=2048, page_size=32, max_batch_tokens=256,
                                    overrides=(("num_hidden_layers", 1), ("hidden_size", 128),
                                               ("intermediate_size", 256),
                                               ("num_attention_heads", 4),
                                               ("num_key_value_heads", 2))),
                         log=lambda m: None)
    try:
        w = build_workload(WorkloadConfig(sessions=2, system_prompt_tokens=40,
                                          task_tokens_p50=60, output_tokens_p50=6,
                                          max_output_tokens=6, max_context_tokens=600,
                                          max_turns=3, time_compression=1000.0,
                                          max_pause_s=0.05), 4096)
        r = replay(peer, w.sessions, DriverConfig(concurrency=2), log=lambda m: None)
    finally:
        peer.shutdown()
    assert not r.errors and len(r.turns) == sum(len(s.turns) for s in w.sessions)
    for s in w.sessions:
        turns = sorted((t for t in r.turns if t.session == s.session_id), key=lambda t: t.turn)
        context = 0
        for t, spec in zip(turns, s.turns):
            context += len(spec.input_ids)
            assert t.prompt_tokens == context          # the whole history, re-sent
            assert len(t.token_ids) == spec.output_tokens
            context += len(t.token_ids)
            assert 0 < t.ttft_s <= t.turn_s
    assert peer.info["attn_implementation"]


def test_wrong_tokens_counts_fp32_differences_16_bit_non_ties_and_checksums():
    import agent_replay
    cmp = lambda label, div, non_tie, counted=True: {  # noqa: E731
        "label": label, "counted": counted, "divergences": div, "non_tie_divergences": non_tie}
    doc = {"policies": {"agent": {"checksum_failures": 1}, "lru": {"checksum_failures": 0}},
           "checks": {"token_comparisons": [
               cmp("bf16: recompute vs agent (the run above), 11 sessions at once", 15, 7,
                   counted=False),
               cmp("bf16 sample (one session at a time): recompute vs agent", 3, 1),
               cmp("fp32 sample (3 sessions at once): recompute vs agent", 2, 0)],
               "kv_roundtrip": {"mismatches": 4}, "fp32_run": {"checksum_failures": 8},
               "sample_run": {"checksum_failures": 16}}}
    assert agent_replay.wrong_tokens(doc) == 1 + 1 + 2 + 4 + 8 + 16
    args = agent_replay.parse_args(["--dtype", "bf16"])
    assert agent_replay.own_sample(args)
    assert not agent_replay.own_sample(agent_replay.parse_args(["--dtype", "fp32"]))
    assert not agent_replay.own_sample(agent_replay.parse_args(["--sample-sessions", "0"]))


def test_engine_checks_judge_counted_16_bit_places_on_the_fp32_reference():
    from agent_phases import engine_checks
    from runtime import Engine, EngineConfig
    eng = Engine(EngineConfig(model="shape:tiny-random", device="cpu", dtype="bf16",
                              num_gpu_blocks=64))
    cmps, _ = _one_turn_divergences(eng, (1, 19))
    cmps[1].counted = False
    lines = []
    rt = engine_checks("shape:tiny-random", "bf16", "cpu", cmps, [], 0, 1024, lines.append)
    assert rt["tie_reference"]["model"] == "shape:tiny-random@bf16"
    assert rt["tie_reference"]["contexts"] == 1 and "error" not in rt["tie_reference"]
    assert cmps[0].divergences[0].rule == "fp32 margin <= bf16 band"
    assert cmps[1].divergences[0].rule == "top-2 gap <= 2^-4"
    assert any("fp32 reference shape:tiny-random@bf16: 1 places" in m for m in lines)
    # an fp32 run has no reference: its places are wrong tokens whatever their gap
    assert engine_checks("shape:tiny-random", "fp32", "cpu", cmps, [], 0, 1024,
                         lines.append)["tie_reference"] is None


def test_result_files_name_the_card_and_an_unchecked_run_is_not_judged():
    from agent_report import headline
    from bench_common import hardware_tag
    assert hardware_tag("NVIDIA H200") == "h200"
    assert hardware_tag("NVIDIA H100 80GB HBM3") == "h100"
    assert hardware_tag("NVIDIA A100-SXM4-40GB") == "a100-sxm4-40gb"
    pol = {"lru": {"resume_ttft_p50_s": 0.3, "resume_ttft_p99_s": 3.0, "jct_mean_s": 8.0},
           "agent": {"resume_ttft_p50_s": 0.2, "resume_ttft_p99_s": 2.0, "jct_mean_s": 7.0}}
    assert headline(pol, None, 0)["wrong_tokens"]["goal"] == "<= 0"
    assert headline(pol, None, 0, checked=False)["wrong_tokens"]["goal"] is None
    assert headline(pol, None, 0)["agent.resume_ttft_p50_s"]["goal"] == "<= 0.1"


def test_replay_shares_give_recompute_twice_the_time_after_every_server_start():
    from agent_replay import replay_share
    pols = ["recompute", "lru", "lru_cpu", "ttl", "agent"]
    # 400 s for five policies with 20 s starts: 300 s of replay, recompute weighs 2 of 6
    assert replay_share(400.0, pols, 20.0) == 100.0
    assert replay_share(200.0, pols[1:], 20.0) == 30.0          # (200 - 80) / 4
    assert replay_share(60.0, ["agent"], 50.0) == 10.0


def test_the_replay_servers_extend_graphs_and_first_token_flags():
    """Unset, a replay server keeps its own default; set, the flag says which way."""
    from agent_server import ServerSpec
    for value, flags in ((None, []), (True, ["--extend-graphs"]),
                         (False, ["--no-extend-graphs"])):
        args = ServerSpec("m", extend_graphs=value).args(Path("/tmp"))
        assert [a for a in args if a.endswith("extend-graphs")] == flags
    assert "--first-token-log-s" not in ServerSpec("m").args(Path("/tmp"))
    args = ServerSpec("m", first_token_log_s=0.03).args(Path("/tmp"))
    assert args[args.index("--first-token-log-s") + 1] == "0.03"
