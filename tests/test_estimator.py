"""PauseEstimator: per-tool quantiles learned online, priors, hints, persistence, threads."""
import math
import random
import threading

import pytest

from sessions.estimator import (HUMAN_PRIOR, TOOL_PRIOR, PauseEstimator, PauseForecast)


def _lognormal(rng, p50, sigma, n):
    return [rng.lognormvariate(math.log(p50), sigma) for _ in range(n)]


def test_prior_by_kind_when_nothing_observed():
    est = PauseEstimator()
    tool = est.expected("grep", human=False)
    human = est.expected("ask_user", human=True)
    assert (tool.source, tool.p50_s, tool.p90_s) == ("prior", TOOL_PRIOR.p50_s, TOOL_PRIOR.p90_s)
    assert (human.source, human.p50_s, human.p90_s) == ("prior", 84.0, 1236.0)
    assert human.p99_s == HUMAN_PRIOR.p99_s == pytest.approx(13.9 * 3600)


def test_learns_per_tool_quantiles():
    rng = random.Random(3)
    est = PauseEstimator(window=512)
    for x in _lognormal(rng, 0.04, 0.8, 500):
        est.observe("read", False, x)
    for x in _lognormal(rng, 10.0, 0.5, 500):
        est.observe("web_search", False, x)
    read, web = est.expected("read"), est.expected("web_search")
    assert read.source == web.source == "learned"
    # true p50 / p90 of the generating log-normals
    assert read.p50_s == pytest.approx(0.04, rel=0.15)
    assert read.p90_s == pytest.approx(0.04 * math.exp(0.8 * 1.2816), rel=0.25)
    assert web.p50_s == pytest.approx(10.0, rel=0.15)
    assert web.p90_s == pytest.approx(10.0 * math.exp(0.5 * 1.2816), rel=0.25)
    assert est.tools() == ["read", "web_search"]


def test_few_observations_blend_with_prior():
    est = PauseEstimator(prior_strength=8)
    for _ in range(2):
        est.observe("bash", False, 100.0)
    f = est.expected("bash")
    assert f.source == "learned" and f.n_obs == 2
    assert TOOL_PRIOR.p50_s < f.p50_s < 100.0          # pulled towards the data, not there yet
    assert TOOL_PRIOR.p90_s < f.p90_s < 100.0
    for _ in range(200):
        est.observe("bash", False, 100.0)
    assert est.expected("bash").p50_s == pytest.approx(100.0, rel=0.05)


def test_ring_keeps_only_recent_pauses():
    est = PauseEstimator(window=50, prior_strength=0)
    for _ in range(50):
        est.observe("bash", False, 1.0)
    for _ in range(50):
        est.observe("bash", False, 30.0)
    assert est.count("bash") == 50
    assert est.expected("bash").p50_s == pytest.approx(30.0)


def test_hint_wins():
    est = PauseEstimator()
    for _ in range(100):
        est.observe("bash", False, 1.0)
    f = est.expected("bash", False, hint_s=42.0)
    assert f.source == "hint" and f.p50_s == 42.0 and f.p90_s > 42.0


def test_persistence_round_trips():
    rng = random.Random(5)
    est = PauseEstimator(window=64)
    for x in _lognormal(rng, 0.4, 1.2, 100):
        est.observe("bash", False, x)
    for x in _lognormal(rng, 80.0, 2.0, 30):
        est.observe("user", True, x)
    back = PauseEstimator.from_bytes(est.to_bytes())
    assert back.window == 64 and back.tools() == est.tools()
    for tool, human in (("bash", False), ("user", True), ("never_seen", False)):
        assert back.expected(tool, human) == est.expected(tool, human)
    with pytest.raises(ValueError):
        PauseEstimator.from_bytes(b"\x93not an estimator")


def test_bad_observation_rejected():
    est = PauseEstimator()
    with pytest.raises(ValueError):
        est.observe("bash", False, -1.0)
    with pytest.raises(ValueError):
        est.observe("bash", False, float("nan"))


def test_thread_safe_observe():
    est = PauseEstimator(window=100_000)

    def work(k):
        for i in range(2000):
            est.observe(f"t{k % 2}", False, 0.1 + i * 1e-3)
            est.expected(f"t{k % 2}")
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert est.count("t0") == est.count("t1") == 4000


def test_forecast_distribution():
    f = PauseForecast(84.0, 1236.0, "prior", 50_040.0)
    assert f.quantile(0.5) == pytest.approx(84.0)
    assert f.quantile(0.9) == pytest.approx(1236.0)
    assert f.quantile(0.99) == pytest.approx(50_040.0, rel=1e-6)
    assert f.cdf(f.quantile(0.3)) == pytest.approx(0.3, abs=1e-9)
    # heavy tail: the longer it has lasted, the longer it is still expected to last
    r1, r2 = f.remaining_s(10.0), f.remaining_s(600.0)
    assert r2 > r1 > 0
    assert f.conditional_quantile(0.5, 0.0) == pytest.approx(84.0)


def test_scaled_priors_for_a_compressed_clock():
    est = PauseEstimator()
    est.scale_priors(0.25)
    tool, human = est.expected("grep", human=False), est.expected("ask_user", human=True)
    assert (tool.p50_s, tool.p90_s, tool.p99_s) == pytest.approx((0.075, 3.4, 225.0))
    assert (human.p50_s, human.p90_s) == pytest.approx((21.0, 309.0))
    for d in [0.05] * 40:                   # what was observed stays as observed
        est.observe("grep", False, d)
    assert est.expected("grep", human=False).p50_s == pytest.approx(0.05)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="prior scale"):
            est.scale_priors(bad)


def test_a_new_tool_starts_from_this_deployments_other_tools():
    est = PauseEstimator()
    for _ in range(30):
        est.observe("bash", False, 2.0)
    grep = est.expected("grep")
    assert (grep.source, grep.n_obs) == ("learned", 0)
    assert grep.p50_s == pytest.approx(2.0)
    # humans pool apart from tools, and the server's "(waiting)" between turns stays out
    assert est.expected("ask_user", human=True).source == "prior"
    for _ in range(10):
        est.observe("user", True, 8.0)
    for _ in range(50):
        est.observe("(waiting)", False, 0.02)
    assert est.expected("ask_user", human=True).p50_s == pytest.approx(8.0)
    assert est.expected("grep").p50_s == pytest.approx(2.0)
    assert PauseEstimator(pool=False).expected("grep").source == "prior"


def test_few_observations_blend_with_the_pool_not_the_published_prior():
    pooled, plain = PauseEstimator(), PauseEstimator(pool=False)
    for est in (pooled, plain):
        for _ in range(50):
            est.observe("edit", False, 10.0)
        for _ in range(2):
            est.observe("bash", False, 100.0)
    a, b = pooled.expected("bash"), plain.expected("bash")
    assert a.n_obs == b.n_obs == 2
    assert TOOL_PRIOR.p50_s < b.p50_s < a.p50_s < 100.0
    assert a.p50_s > 10.0                      # the pool sits at ~10 s, the data at 100


def test_pools_persist_and_older_files_load_without_them():
    import msgpack
    est = PauseEstimator(window=64)
    for _ in range(20):
        est.observe("bash", False, 3.0)
        est.observe("user", True, 30.0)
    back = PauseEstimator.from_bytes(est.to_bytes())
    assert back.expected("new_tool") == est.expected("new_tool")
    assert back.expected("confirm", True) == est.expected("confirm", True)
    old = msgpack.packb({"version": 1, "window": 64, "tools": {"bash": [3.0] * 20}})
    legacy = PauseEstimator.from_bytes(old)
    assert legacy.expected("bash").p50_s == pytest.approx(3.0)
    assert legacy.expected("new_tool").source == "prior"     # no pool saved: fills from now on
