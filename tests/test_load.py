"""200 concurrent sessions over loopback on the CPU `tiny` model (bench/load.py's workload, at a
size CI affords): no errors, GetSession p99 under 50 ms while generation runs, and once every
session closed no GPU block, no pinned host slot and no memory is left behind."""
import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_load", Path(__file__).resolve().parent.parent / "bench" / "load.py")
load = importlib.util.module_from_spec(_spec)
sys.modules["bench_load"] = load
_spec.loader.exec_module(load)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    return load.measure(sessions=200, turns=2, max_tokens=4, time_limit_s=90.0,
                        data_dir=str(tmp_path_factory.mktemp("load") / "data"))


def test_200_sessions_no_errors(measured):
    r = measured["result"]
    assert not measured["warmup_errors"], measured["warmup_errors"][:5]
    assert not r.errors, r.errors[:5]
    assert r.turns == 200 * 2
    assert measured["open_sessions"] == 0


def test_200_sessions_nothing_left_behind(measured):
    m = measured
    pools = m["pools"]
    # every block free (never used or cached with no reference), every pinned slot free
    assert pools["requests"] == 0
    assert pools["gpu_free"] == pools["gpu_blocks"], pools
    assert pools["host_slots"] > 0 and pools["host_free"] == pools["host_slots"], pools
    assert m["open_sessions"] == 0
    growth = m["rss_after_mib"] - m["rss_before_mib"]
    assert growth < load.RSS_BOUND_MIB, (m["rss_before_mib"], m["rss_after_mib"])


def test_getsession_p99_under_50ms_while_generation_runs(measured):
    r = measured["result"]
    assert len(r.get_latencies_s) >= 40                  # probed while turns ran
    assert r.p99_ms() < 50.0, (r.p99_ms(), sorted(r.get_latencies_s)[-10:])
    # the server's own part (agentkv:rpc_duration_seconds, by bucket) is a fraction of that
    assert measured["getsession_handler_p99_le_ms"] <= 25.0
