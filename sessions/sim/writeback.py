"""Background disk writes (write-through and spills) that yield to foreground disk reads.

The runtime's disk writer is a low-priority thread: a turn waiting for KV from disk must not sit
behind gigabytes of write-back. Here each session's pending write is served in chunks, and a
chunk starts only when the disk channel is idle, so a foreground read waits for at most one
chunk. A write copies from the session's CPU copy, or from its GPU copy through a bounce buffer
(a PCIe D2H copy first); if neither holds the data any more when its turn comes, it is dropped.
Disk room for each chunk is taken the way background work takes it: only from sessions the
policy ranks before the writer's session.
"""
from __future__ import annotations

import math
from collections import deque

from sessions.sim.tiers import SessionKV


class DiskWriteBack:
    def __init__(self, sim, chunk_tokens: int = 2048) -> None:
        self.sim = sim
        self.chunk = chunk_tokens
        self.queue: deque[SessionKV] = deque()
        self.target: dict[str, int] = {}      # session -> write [0, target) to disk
        self.next_at = math.inf

    def request(self, kv: SessionKV, hi: int, now: float) -> None:
        """Make the disk hold the session's private tokens [0, hi), in the background."""
        if kv.sid in self.target:
            self.target[kv.sid] = max(self.target[kv.sid], hi)
        else:
            self.target[kv.sid] = hi
            self.queue.append(kv)
        self.pump(now)

    def pending(self, kv: SessionKV) -> bool:
        return kv.sid in self.target

    def queued_tokens(self) -> int:
        """Tokens still to be written."""
        total = 0
        for sid, hi in self.target.items():
            kv = self.sim.kv[sid]
            total += max(0, min(hi, kv.ctx) - (kv.disk_hi if kv.disk_lo == 0 else 0))
        return total

    def cancel(self, kv: SessionKV) -> None:
        self.target.pop(kv.sid, None)         # its queue entry is skipped when reached

    def _wake(self, t: float) -> None:
        if t < self.next_at:
            self.next_at = t
            self.sim._push(t, self.sim.PUMP)

    def on_event(self, now: float) -> None:
        if now >= self.next_at:
            self.next_at = math.inf
            self.pump(now)

    def pump(self, now: float) -> None:
        sim, tiers = self.sim, self.sim.tiers
        while self.queue and sim.disk.free_at <= now:
            kv = self.queue[0]
            hi = min(self.target.get(kv.sid, 0), kv.ctx)
            pos = kv.disk_hi if kv.disk_lo == 0 else 0
            if pos >= hi or kv.state == "closed":
                self.queue.popleft()
                self.target.pop(kv.sid, None)
                continue
            end = min(pos + self.chunk, hi)
            n = end - pos
            if kv.cpu_lo <= pos and kv.cpu_hi >= end:
                if kv.cpu_ready > now:        # the CPU copy is still arriving
                    self._wake(kv.cpu_ready)
                    return
                start = now
            elif kv.gpu >= end and kv.gpu_ready <= now:
                start = None
            else:                             # the data is gone from the tiers above
                self.queue.popleft()
                self.target.pop(kv.sid, None)
                sim.counters["copy_skipped"] += 1
                continue
            ok, _ = sim._room("disk", n, now, kv, critical=False)
            if not ok:
                self.queue.popleft()
                self.target.pop(kv.sid, None)
                sim.counters["copy_skipped"] += 1
                continue
            if start is None:                 # bounce through pinned CPU memory
                start = sim.d2h.submit(now, sim._bytes(n))
            done = sim._disk_io(start, n, write=True)
            tiers.add_interval(kv, "disk", 0, end, done)
        if self.queue:
            self._wake(max(now, sim.disk.free_at))
