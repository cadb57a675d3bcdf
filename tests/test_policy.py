"""Cache policies as pure decision logic, driven on a fake clock (plain floats)."""
import pytest

from sessions.costs import CostModel
from sessions.estimator import PauseEstimator, PauseForecast
from sessions.policy import (POLICY_NAMES, AgentConfig, AgentPolicy, Placement, SessionKVView,
                             TierUsage, make_policy)

COST = CostModel.h200_llama3_8b()
SHORT = PauseForecast(0.04, 0.3, "learned")              # read: back in a blink
MEDIUM = PauseForecast(10.0, 25.0, "learned")            # web_search
HOURS = PauseForecast(3 * 3600.0, 8 * 3600.0, "hint")    # a long job the client announced
HUMAN = PauseForecast(84.0, 1236.0, "prior", 50_040.0)
BASH = PauseForecast(0.4, 5.0, "learned", 60.0)


def view(sid, tokens=30_000, paused_at=0.0, forecast=None, gpu=None, cpu=0, disk=0,
         shared=4000, human=False, pinned_until=0.0):
    private = tokens - shared
    return SessionKVView(sid, tokens, private if gpu is None else gpu, cpu, disk, shared,
                         paused_at, forecast, human, None, paused_at, pinned_until)


def usage(gpu_frac=0.5, cpu_frac=0.2):
    return TierUsage(int(gpu_frac * COST.gpu_capacity_tokens), COST.gpu_capacity_tokens,
                     int(cpu_frac * COST.cpu_capacity_tokens), COST.cpu_capacity_tokens,
                     0, COST.disk_capacity_tokens)


def agent():
    return make_policy("agent", COST, PauseEstimator())


def test_cost_model_preset_from_ceilings():
    assert COST.kv_bytes_per_token == 128 * 1024
    tokens = 32 * 1024                                    # 4 GiB of KV
    assert COST.load_s(tokens, "cpu") == pytest.approx(4 * 2**30 / 55e9)        # ~78 ms
    assert COST.load_s(tokens, "disk") == pytest.approx(4 * 2**30 / 1.6e9 + 4 * 2**30 / 55e9)
    assert COST.store_s(tokens, "disk") == pytest.approx(4 * 2**30 / 55e9 + 4 * 2**30 / 1.1e9)
    assert COST.load_s(tokens, "gpu") == 0.0
    assert COST.recompute_s(10_000) == pytest.approx(1.0)
    m = CostModel.from_measurements(kv_bytes_per_token=1024, prefill_tokens_per_s=5000.0,
                                    h2d_GBps=20, d2h_GBps=20, disk_read_GBps=2,
                                    disk_write_GBps=1, gpu_kv_bytes=1 << 30,
                                    cpu_kv_bytes=1 << 31, disk_kv_bytes=1 << 32)
    assert (m.gpu_capacity_tokens, m.cpu_capacity_tokens) == (1 << 20, 1 << 21)
    with pytest.raises(ValueError, match="h2d_GBps"):
        CostModel.from_measurements(kv_bytes_per_token=1024, prefill_tokens_per_s=1.0,
                                    h2d_GBps=0, d2h_GBps=1, disk_read_GBps=1,
                                    disk_write_GBps=1, gpu_kv_bytes=1, cpu_kv_bytes=1,
                                    disk_kv_bytes=1)
    with pytest.raises(ValueError, match="valid tiers"):
        COST.load_s(10, "tape")


def test_short_pause_stays_on_gpu():
    plan = agent().on_pause(view("s"), SHORT, 100.0, usage())
    assert plan.placement is Placement.KEEP_GPU and plan.keeps_gpu
    assert not plan.writes_cpu and not plan.writes_disk and plan.prefetch_at is None
    assert plan.ttl_s == pytest.approx(SHORT.p90_s)
    assert plan.insure_cpu            # a CPU copy makes a yielded pin's eviction free


def test_short_pause_on_a_busy_gpu_is_written_through():
    # its pin would yield to the next turn short of room: a CPU copy makes that eviction free
    pol = agent()
    busy = pol.on_pause(view("s"), SHORT, 100.0, usage(gpu_frac=0.8))
    assert busy.placement is Placement.WRITE_CPU and busy.keeps_gpu and busy.writes_cpu
    assert busy.prefetch_at is None and not busy.writes_disk
    assert pol.on_pause(view("s"), SHORT, 100.0, usage(gpu_frac=0.7)).placement \
        is Placement.KEEP_GPU
    no_cpu = TierUsage(int(0.9 * COST.gpu_capacity_tokens), COST.gpu_capacity_tokens, 0, 0, 0,
                       COST.disk_capacity_tokens)
    bare = pol.on_pause(view("s"), SHORT, 100.0, no_cpu)
    assert bare.placement is Placement.KEEP_GPU and not bare.insure_cpu


def test_medium_pause_goes_to_cpu_and_is_prefetched():
    pol = agent()
    plan = pol.on_pause(view("s"), MEDIUM, 100.0, usage())
    assert plan.placement is Placement.WRITE_CPU and plan.writes_cpu
    assert plan.keeps_gpu                                 # write-through: eviction is free
    assert 100.0 <= plan.prefetch_at < 100.0 + MEDIUM.p50_s
    # the load finishes by the forecast's lower quantile
    load = COST.load_s(26_000, "cpu")
    assert plan.prefetch_at + load <= 100.0 + MEDIUM.quantile(pol.config.prefetch_q) + 1e-9


def test_medium_pause_writes_disk_behind_cpu_only_when_cpu_fills():
    pol = agent()
    # an emptyish CPU tier: no CPU eviction is near, a disk copy would only cost bandwidth
    assert not pol.on_pause(view("s"), MEDIUM, 100.0, usage(cpu_frac=0.2)).writes_disk
    full = pol.on_pause(view("t"), MEDIUM, 100.0, usage(cpu_frac=0.6))
    assert full.placement is Placement.WRITE_CPU and full.writes_cpu and full.writes_disk
    # a long disk write queue holds the write-back back, however full the CPU is
    u = usage(cpu_frac=0.9)
    queued = TierUsage(u.gpu_used, u.gpu_capacity, u.cpu_used, u.cpu_capacity, 0,
                       u.disk_capacity, disk_backlog_s=pol.config.disk_backlog_limit_s + 1)
    plan = pol.on_pause(view("u"), MEDIUM, 100.0, queued)
    assert plan.writes_cpu and not plan.writes_disk


def test_medium_pause_under_gpu_pressure_is_moved_off_the_gpu():
    plan = agent().on_pause(view("s"), MEDIUM, 100.0, usage(gpu_frac=0.99))
    assert plan.placement is Placement.OFFLOAD_CPU and plan.releases_gpu


def test_hours_go_to_disk():
    pol = agent()
    plan = pol.on_pause(view("s"), HOURS, 100.0, usage())
    assert plan.placement is Placement.SPILL_DISK and plan.writes_disk and plan.releases_gpu
    load = COST.load_s(26_000, "disk")
    assert plan.prefetch_at == pytest.approx(
        100.0 + HOURS.quantile(pol.config.prefetch_q) - load - pol.config.prefetch_margin_s)
    assert plan.prefetch_at < 100.0 + HOURS.p50_s


def test_no_disk_room_keeps_a_long_pause_in_cpu():
    full = TierUsage(0, COST.gpu_capacity_tokens, 0, COST.cpu_capacity_tokens,
                     COST.disk_capacity_tokens, COST.disk_capacity_tokens)
    plan = agent().on_pause(view("s"), HOURS, 100.0, full)
    assert plan.placement is Placement.WRITE_CPU and not plan.writes_disk


def test_under_pressure_the_session_predicted_back_last_is_evicted_first():
    # a: least recently used, but paused on bash (back in a second or so);
    # b: paused just now, on a human (back in minutes). Both have CPU copies.
    a = view("a", paused_at=0.0, forecast=BASH, cpu=26_000)
    b = view("b", paused_at=50.0, forecast=HUMAN, cpu=26_000, human=True)
    now = 50.5
    assert agent().eviction_order([a, b], now) == ["b", "a"]
    assert make_policy("lru", COST).eviction_order([a, b], now) == ["a", "b"]
    assert make_policy("lru_cpu", COST).eviction_order([a, b], now) == ["a", "b"]


def test_eviction_counts_what_reloading_costs():
    # same pause and age; c's blocks are also on CPU, d's only on disk: c goes first
    c = view("c", paused_at=0.0, forecast=HUMAN, cpu=26_000, disk=26_000)
    d = view("d", paused_at=0.0, forecast=HUMAN, disk=26_000)
    assert agent().eviction_order([d, c], 10.0) == ["c", "d"]


def test_prefetch_is_due_before_the_predicted_resume_and_cancelled_by_resume():
    pol = agent()
    plan = pol.on_pause(view("h", human=True), HUMAN, 1000.0, usage())
    assert 1000.0 < plan.prefetch_at < 1000.0 + HUMAN.p50_s
    assert pol.due_prefetches(plan.prefetch_at - 1e-6) == []
    assert pol.due_prefetches(plan.prefetch_at) == ["h"]
    assert pol.due_prefetches(plan.prefetch_at + 10) == []          # once
    plan2 = pol.on_pause(view("h2", human=True), HUMAN, 2000.0, usage())
    pol.on_resume("h2", 2001.0)                                     # came back early
    assert pol.due_prefetches(plan2.prefetch_at + 1.0) == []


def test_evicted_prefetch_is_retried_later_in_the_pause():
    pol = agent()
    v = view("h", paused_at=0.0, forecast=HUMAN, cpu=26_000, human=True)
    plan = pol.on_pause(v, HUMAN, 0.0, usage())
    assert pol.due_prefetches(plan.prefetch_at) == ["h"]
    t = plan.prefetch_at + 5.0                                      # evicted again later
    assert pol.on_evict(v, "gpu", t) is Placement.SPILL_DISK
    assert pol.due_prefetches(t) == []                              # not at once: later,
    back = HUMAN.conditional_quantile(pol.config.prefetch_q, t)     # ahead of the resume
    assert pol.due_prefetches(back) == ["h"]                        # the remaining time
    assert back > HUMAN.quantile(pol.config.prefetch_q)             # predicts, given t


def test_admission_puts_resumes_first_without_starving_new_sessions():
    pol = agent()
    boost = pol.config.resume_boost_s
    new_first = pol.admission_priority("new", False, 10.0, 10.5)
    resumed = pol.admission_priority("old", True, 10.4, 10.5)
    assert resumed < new_first                                      # resume goes ahead
    waited = pol.admission_priority("new2", False, 10.0, 20.0)
    late_resume = pol.admission_priority("old2", True, 10.0 + boost + 1.0, 20.0)
    assert waited < late_resume                                     # aging: no starvation
    fcfs = make_policy("lru", COST)
    assert fcfs.admission_priority("a", True, 5.0, 6.0) == 5.0


def test_admission_ranks_resumed_turns_by_their_sessions_opening():
    pol = agent()
    boost = pol.config.resume_boost_s
    a_first = pol.admission_priority("a", False, 0.0, 0.0)
    b_first = pol.admission_priority("b", False, 50.0, 50.0)
    assert (a_first, b_first) == (0.0, 50.0)                        # first turns: FCFS
    c_first = pol.admission_priority("c", False, 70.0, 70.0)
    a_resume = pol.admission_priority("a", True, 100.0, 100.0)
    b_resume = pol.admission_priority("b", True, 100.5, 100.5)
    assert a_resume == 0.0 and b_resume == 50.0                     # as of the session's opening
    assert a_resume < b_resume < c_first                            # older sessions first
    recent = pol.admission_priority("d", False, 99.9, 99.9)
    assert pol.admission_priority("d", True, 100.0, 100.0) == 100.0 - boost   # never later
    assert recent > 100.0 - boost                                   # than the boost gives
    pol.on_close("a")                                               # forgotten with the session
    assert pol.admission_priority("a", True, 200.0, 200.0) == 200.0 - boost
    only_boost = AgentPolicy(COST, PauseEstimator(), AgentConfig(session_fcfs=False))
    only_boost.admission_priority("a", False, 0.0, 0.0)
    late = only_boost.admission_priority("a", True, 100.0, 100.0)
    assert late == 100.0 - only_boost.config.resume_boost_s > c_first


def test_baselines():
    rec = make_policy("recompute", COST)
    assert rec.on_pause(view("s"), MEDIUM, 0.0).placement is Placement.DROP
    assert not rec.keeps_shared_prefix
    lru = make_policy("lru", COST)
    assert lru.on_pause(view("s"), HUMAN, 0.0).placement is Placement.KEEP_GPU
    assert lru.on_evict(view("s"), "gpu", 0.0) is Placement.DROP
    lru_cpu = make_policy("lru_cpu", COST)
    assert lru_cpu.on_evict(view("s"), "gpu", 0.0) is Placement.OFFLOAD_CPU
    assert lru_cpu.on_evict(view("s"), "cpu", 0.0) is Placement.DROP
    ttl = make_policy("ttl", COST)
    plan = ttl.on_pause(view("s"), MEDIUM, 0.0)
    assert plan.placement is Placement.KEEP_GPU and plan.ttl_s == pytest.approx(MEDIUM.p90_s)
    assert ttl.on_pause(view("s"), HUMAN, 0.0).ttl_s == 300.0                 # capped
    pinned = view("p", paused_at=5.0, pinned_until=100.0)
    expired = view("e", paused_at=8.0, pinned_until=9.0)
    assert ttl.eviction_order([pinned, expired], 10.0) == ["e", "p"]


def test_registry():
    assert POLICY_NAMES == ("recompute", "lru", "lru_cpu", "ttl", "agent")
    for name in POLICY_NAMES:
        assert make_policy(name, COST, PauseEstimator()).name == name
    assert isinstance(make_policy("agent", COST), AgentPolicy)
    with pytest.raises(ValueError) as e:
        make_policy("belady", COST, PauseEstimator())
    assert "recompute, lru, lru_cpu, ttl, agent" in str(e.value)


def test_steps_are_shortened_only_while_a_resume_is_likely():
    from sessions.policies.agent import resume_probability
    p = agent()
    cap = p.config.resume_step_tokens
    assert cap is not None
    # four tool calls a few tens of ms in, each likely to end within 0.1 s: shorten
    assert p.step_token_cap([(0.03, SHORT)] * 4) == cap
    # humans a minute in, hours of tool work: full steps
    assert p.step_token_cap([(60.0, HUMAN), (10.0, HOURS)]) is None
    assert p.step_token_cap([]) is None
    # one bash call: the chance it ends in the next 0.1 s, given it lasted 0.2 s
    one = resume_probability([(0.2, BASH)], 0.1)
    expected = (BASH.cdf(0.3) - BASH.cdf(0.2)) / (1 - BASH.cdf(0.2))
    assert one == pytest.approx(expected) and 0.0 < one < 0.5
    assert p.step_token_cap([(0.2, BASH)]) is None
    # independent pauses add up: enough of them make a resume likely
    n = 1
    while 1 - (1 - one) ** n < 0.5:
        n += 1
    assert p.step_token_cap([(0.2, BASH)] * (n - 1)) is None
    assert p.step_token_cap([(0.2, BASH)] * n) == cap
    assert resume_probability([(0.2, BASH)] * n, 0.1) == pytest.approx(1 - (1 - one) ** n)


def test_step_shortening_can_be_switched_off_and_is_validated():
    from sessions.policies.agent import AgentConfig
    off = AgentPolicy(COST, PauseEstimator(), AgentConfig(resume_step_tokens=None))
    assert off.step_token_cap([(0.03, SHORT)] * 4) is None
    for bad in (dict(resume_step_tokens=0), dict(resume_horizon_s=0.0),
                dict(resume_step_probability=1.5)):
        with pytest.raises(ValueError, match="AgentConfig.resume_"):
            AgentConfig(**bad)
    for name in POLICY_NAMES:
        if name != "agent":
            assert make_policy(name, COST, PauseEstimator()).step_token_cap(
                [(0.03, SHORT)] * 4) is None
