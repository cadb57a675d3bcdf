"""Kill the server with SIGKILL at random points of a multi-session workload, three times: no
completed turn is lost and every session's token log equals an uninterrupted run's."""
import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "bench_faults", Path(__file__).resolve().parent.parent / "bench" / "faults.py")
faults = importlib.util.module_from_spec(_spec)
sys.modules["bench_faults"] = faults
_spec.loader.exec_module(faults)


def test_three_random_kills_lose_nothing():
    r = faults.measure(kills=3, sessions=2, turns=4, seed=1)
    assert r["crashes_injected"] == 3
    assert r["turns_lost"] == 0
    assert r["errors"] == 0
    assert r["wrong_tokens"] == 0
    assert r["turns_checked"] == 8
