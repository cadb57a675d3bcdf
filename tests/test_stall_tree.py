"""bench/stall_tree.py: a PC-sampling profile tree folded into per-line stall rows."""
import random
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))

from stall_tree import line_stalls, reason_totals  # noqa: E402


def leaf(name, samples, **reasons):
    return {"frame": {"name": name}, "metrics": {"num_samples": samples,
                                                 "num_stalled_samples": sum(reasons.values()),
                                                 **reasons}, "children": []}


def profile(launches):
    """Two launches of one kernel (the same lines sampled in each) and a torch kernel."""
    kernel = {"frame": {"name": "_prefill_ws_kernel"}, "metrics": {}, "children": launches}
    torch_op = {"frame": {"name": "elementwise_kernel"}, "metrics": {}, "children": [
        leaf("Loops.cuh:100@elementwise", 50, stall_long_scoreboard=40)]}
    root = {"frame": {"name": "ROOT"}, "metrics": {}, "children": [kernel, torch_op]}
    return [root, {"GPU": {}}]


def test_lines_fold_over_launches_and_sort_by_samples():
    rng = random.Random(7)
    a1, a2, b1, b2 = (rng.randint(10, 99) for _ in range(4))
    launch1 = {"frame": {"name": "launch"}, "metrics": {}, "children": [
        leaf("attention_prefill_ws_consumer.py:127@_middle_tiles", a1,
             stall_barrier=a1 - 3, stall_math_pipe_throttle=3),
        leaf("attention_prefill_ws.py:200@_loader", b1, stall_long_scoreboard=b1)]}
    launch2 = {"frame": {"name": "launch"}, "metrics": {}, "children": [
        leaf("attention_prefill_ws_consumer.py:127@_middle_tiles", a2,
             stall_barrier=a2 - 1, stall_math_pipe_throttle=1),
        leaf("attention_prefill_ws.py:200@_loader", 200 + b2, stall_long_scoreboard=b2,
             stall_wait=200)]}
    lines = line_stalls(profile([launch1, launch2]), "attention_prefill")

    # the torch kernel's line is filtered out; each kernel line is summed over both launches
    assert [r.frame for r in lines] == ["attention_prefill_ws.py:200@_loader",
                                        "attention_prefill_ws_consumer.py:127@_middle_tiles"]
    loader, consumer = lines
    assert loader.samples == b1 + b2 + 200 and consumer.samples == a1 + a2
    assert consumer.reasons == {"stall_barrier": a1 + a2 - 4, "stall_math_pipe_throttle": 4}
    assert loader.reasons == {"stall_long_scoreboard": b1 + b2, "stall_wait": 200}

    total = loader.samples + consumer.samples
    row = consumer.row(total, top=1)
    assert row["share"] == round((a1 + a2) / total, 4)
    assert row["stalls"] == {"stall_barrier": a1 + a2 - 4}       # the main reason only

    totals = reason_totals(lines)
    assert totals["stall_wait"] == 200
    assert totals["stall_barrier"] == a1 + a2 - 4
    assert list(totals.values()) == sorted(totals.values(), reverse=True)


def test_without_filter_every_sampled_leaf_counts_and_metricless_nodes_do_not():
    lines = line_stalls(profile([{"frame": {"name": "launch"}, "metrics": {}, "children": [
        leaf("attention_prefill_ws.py:1@k", 5, stall_wait=5),
        {"frame": {"name": "no samples here"}, "metrics": {"time (ns)": 3.0}, "children": []},
    ]}]))
    assert sorted((r.frame, r.samples) for r in lines) == [
        ("Loops.cuh:100@elementwise", 50), ("attention_prefill_ws.py:1@k", 5)]
