"""The thread that issues GPU<->CPU copies: loads first, write-throughs a chunk at a time.

A job is a list of steps (callables) run in order on one background thread. Two queues feed
the thread: `load` (host->GPU: prefix loads a waiting turn needs, prefetches) and `store`
(GPU->host write-throughs and offloads). Before each step the thread takes the head of the load
queue if there is one, so a load submitted while a long write-through is being issued runs after
at most the one store step already running. Store jobs are split by their submitter into
bounded chunks (one step per chunk), and `store_wait()` (e.g. "wait for the last chunk's CUDA
event") runs before each store step, outside the lock, so at most one store chunk is on the copy
hardware at a time: a load that arrives meanwhile is issued as soon as that chunk is done, ahead
of the next one.

A job's future gets the last step's return value, or the first exception (the remaining steps
are skipped).
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

Step = Callable[[], Any]
PRIORITIES = ("load", "store")


@dataclass
class _Job:
    steps: list[Step]
    future: Future = field(default_factory=Future)
    next: int = 0


@dataclass
class IssuerCounts:
    """Steps run per queue (progress and tests)."""
    load_steps: int = 0
    store_steps: int = 0


class CopyIssuer:
    def __init__(self, name: str = "kv-copy-issuer",
                 store_wait: Callable[[], None] | None = None) -> None:
        self._queues: dict[str, deque[_Job]] = {p: deque() for p in PRIORITIES}
        self._cv = threading.Condition()
        self._store_wait = store_wait or (lambda: None)
        self._closed = False
        self.counts = IssuerCounts()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, priority: str = "load") -> Future:
        """Run `fn(*args)` as a one-step job (default: load priority, ahead of stores)."""
        return self.submit_steps([lambda: fn(*args)], priority)

    def submit_steps(self, steps: list[Step], priority: str) -> Future:
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
        if not steps:
            raise ValueError("a copy job needs at least one step")
        job = _Job(list(steps))
        with self._cv:
            if self._closed:
                raise RuntimeError("the copy issuer is shut down")
            self._queues[priority].append(job)
            self._cv.notify()
        return job.future

    def pending(self, priority: str) -> int:
        """Jobs queued or running in one queue."""
        with self._cv:
            return len(self._queues[priority])

    def _take(self) -> tuple[str, _Job] | None:
        while True:
            with self._cv:
                while not (self._queues["load"] or self._queues["store"] or self._closed):
                    self._cv.wait()
                if self._queues["load"]:
                    return "load", self._queues["load"][0]
                if not self._queues["store"]:
                    return None                   # closed, nothing left
            self._store_wait()                    # the last store chunk is done (lock free)
            with self._cv:
                if not self._queues["load"]:      # else a load came meanwhile: it goes first
                    return "store", self._queues["store"][0]

    def _run(self) -> None:
        while (item := self._take()) is not None:
            prio, job = item
            step = job.steps[job.next]
            job.next += 1
            try:
                out = step()
                err = None
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits
                out, err = None, e
            with self._cv:
                if prio == "load":
                    self.counts.load_steps += 1
                else:
                    self.counts.store_steps += 1
                if err is not None or job.next == len(job.steps):
                    self._queues[prio].popleft()
            if err is not None:
                job.future.set_exception(err)
            elif job.next == len(job.steps):
                job.future.set_result(out)

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking jobs; the queued ones still run."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if wait:
            self._thread.join()
