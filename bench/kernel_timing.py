"""Timers for the kernel benches: do_bench medians (CPU: wall clock), CUDA-graph replays with an
L2 flush before each call, and the relative error every timed kernel is checked by first."""
from __future__ import annotations

import statistics
import time

import torch


def time_ms(fn, cuda: bool) -> float:
    if cuda:
        import triton.testing
        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t) * 1e3)
    return statistics.median(runs)


def time_graph_ms(fn, reps: int = 20, flush: str = "read") -> float:
    """Median time of one call replayed from a CUDA graph, with an L2 flush before each call
    (the flush's own time, measured in a second graph, is subtracted). This is the GPU time the
    engine sees when it replays decode steps from graphs: no Python or launch gaps.

    flush="read" sums a 256 MiB buffer: L2 is left holding clean lines, as after the weight
    reads that precede attention in a decode step. flush="write" zeroes it (what
    triton.testing.do_bench does): L2 is left full of dirty lines, which the timed call then
    has to write back to memory (up to L2's ~50 MB of extra traffic inside its window)."""
    if flush == "read":
        buf = torch.ones(64 << 20, dtype=torch.float32, device="cuda")

        def do_flush():
            buf.sum()
    elif flush == "write":
        buf = torch.empty(256 << 20, dtype=torch.int8, device="cuda")

        def do_flush():
            buf.zero_()
    else:
        raise ValueError(f"flush must be 'read' or 'write'; got {flush!r}")

    def graph_ms(with_fn: bool) -> float:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                do_flush()
                if with_fn:
                    fn()
        torch.cuda.current_stream().wait_stream(stream)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(reps):
                do_flush()
                if with_fn:
                    fn()
        times = []
        for _ in range(7):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            g.replay()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    return (graph_ms(True) - graph_ms(False)) / reps


def graph_timing(flush: str) -> str:
    return "cuda_graph" if flush == "read" else "cuda_graph_write_flush"


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    if torch.isnan(out).any():
        return float("nan")
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()
