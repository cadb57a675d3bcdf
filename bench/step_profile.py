"""A torch profiler summary of decode steps: where one step's time goes on the GPU and the host.

`profile_decode(engine, batch, context, steps)` runs `steps` decode steps of `batch` sequences at
`context` tokens under the profiler and returns, per step: the wall time between step returns,
the GPU's busy time (union of kernel and copy intervals) and idle time, the idle gaps between
consecutive GPU operations (the host not keeping up shows as gaps), the kernels by time, and the
host-side operations by time.
"""
from __future__ import annotations

import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from runtime import Engine


def _gpu_intervals(prof) -> list[tuple[float, float, str]]:
    """(start_us, end_us, name) of every kernel, copy and memset run on the device."""
    out = []
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            out.append((ev.time_range.start, ev.time_range.end, ev.name))
    return sorted(out)


def _short(name: str, n: int = 90) -> str:
    return name if len(name) <= n else name[:n - 3] + "..."


def summarize(prof, steps: int, wall_s: float, top: int = 25) -> dict:
    iv = _gpu_intervals(prof)
    busy, gaps, end = 0.0, [], None
    for s, e, _ in iv:
        if end is None or s > end:
            if end is not None:
                gaps.append(s - end)
            busy += e - s
            end = e
        elif e > end:
            busy += e - end
            end = e
    span = (iv[-1][1] - iv[0][0]) if iv else 0.0
    kern = defaultdict(lambda: [0, 0.0])
    for s, e, name in iv:
        kern[name][0] += 1
        kern[name][1] += e - s
    kernels = sorted(kern.items(), key=lambda kv: -kv[1][1])
    host = defaultdict(lambda: [0, 0.0])
    for ev in prof.key_averages():
        if ev.device_type == torch.autograd.DeviceType.CPU:
            host[ev.key] = [ev.count, ev.cpu_time_total]
    hosts = sorted(host.items(), key=lambda kv: -kv[1][1])
    gaps.sort(reverse=True)
    return {
        "steps": steps,
        "wall_ms_per_step": 1e3 * wall_s / steps,
        "gpu_span_ms_per_step": span / 1e3 / steps,
        "gpu_busy_ms_per_step": busy / 1e3 / steps,
        "gpu_idle_ms_per_step": (span - busy) / 1e3 / steps,
        "gpu_ops_per_step": len(iv) / steps,
        "gaps_over_5us_per_step": sum(1 for g in gaps if g > 5) / steps,
        "largest_gaps_us": [round(g, 1) for g in gaps[:12]],
        "kernels": [{"name": _short(k), "calls_per_step": c / steps, "ms_per_step": t / 1e3 / steps,
                     "share_of_busy": t / busy if busy else 0.0} for k, (c, t) in kernels[:top]],
        "host_ops": [{"name": _short(k), "calls_per_step": c / steps,
                      "ms_per_step": t / 1e3 / steps} for k, (c, t) in hosts[:top]],
    }


def profile_decode(eng: Engine, batch: int, context: int, steps: int, vocab: int) -> dict:
    from engine_requests import start_decode_batch
    running = start_decode_batch(eng, batch, context, steps, seed=batch * 31 + context)
    if eng.device.type == "cuda":
        torch.cuda.synchronize(eng.device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if eng.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            eng.step()
        wall = time.perf_counter() - t
    while eng.has_unfinished():
        eng.step()
    out = summarize(prof, steps, wall)
    out.update(batch=batch, running=running, context=context, graph_steps=eng.stats.graph_steps,
               async_scheduling=eng.async_scheduling)
    return out
