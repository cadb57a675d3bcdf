"""A launched step whose sampled tokens have not been read back yet.

With async scheduling the engine launches step N+1 before it reads step N's tokens: the scheduler
already counts each token step N samples (its request holds a placeholder id, see
runtime/step_inputs.py), step N+1 takes those ids from `device_tokens` on the device, and the
host learns them when `host` completes, while the GPU runs step N+1.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from runtime.request import Request
from runtime.sampler import HostCopy
from runtime.scheduler import SchedulerOutput


@dataclass
class StepTimer:
    """Device time of a step (CUDA events), or host time where the device is the CPU."""
    start: "torch.cuda.Event | float"
    end: "torch.cuda.Event | float | None" = None

    @classmethod
    def begin(cls, device: torch.device) -> "StepTimer":
        if device.type != "cuda":
            return cls(time.perf_counter())
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return cls(ev)

    def stop(self) -> None:
        if isinstance(self.start, float):
            self.end = time.perf_counter()
        else:
            self.end = torch.cuda.Event(enable_timing=True)
            self.end.record()

    def seconds(self) -> float:
        if isinstance(self.start, float):
            return self.end - self.start
        self.end.synchronize()
        return self.start.elapsed_time(self.end) / 1e3


@dataclass
class InflightStep:
    sched: SchedulerOutput
    requests: list[Request]                   # the request of each sampled row
    device_tokens: torch.Tensor | None        # [num_sampled] int64, on the device
    host: HostCopy | None                     # the same tokens (and logprobs) on their way back
    graph: bool                               # replayed from a CUDA graph
    launched_at: float = 0.0                  # time.monotonic() at launch
    timer: StepTimer | None = None    # set when all its tokens were prefill, or none were
    prefill_tokens: int = 0
    pending_rows: dict[str, int] = field(default_factory=dict)   # request id -> sampled row
    seq: int = 0                              # the pool's launched_steps once it was launched
