"""The simulator's eviction and prefetch mechanics (the policy decides, this carries it out).

Eviction on a critical path (a turn needs GPU room; a GPU victim's offload needs CPU room) may
take any paused session's blocks; background work (write-through, prefetch) may only take
blocks from sessions the policy ranks before the one it works for. Evicting blocks that have a
copy below is free once that copy has left the tier; otherwise the policy's `on_evict` says
whether they go down a tier (a copy the waiting turn waits for) or are dropped. SPILL_DISK
from the GPU copies to CPU now and on to disk in the background (straight to disk when the CPU
has no room).
"""
from __future__ import annotations

from sessions.policies.base import Placement
from sessions.sim.tiers import SessionKV


_EVICTABLE = ("paused", "waiting")    # running turns' blocks are in use


def _overlap(a: int, b: int, lo: int, hi: int) -> tuple[int, int]:
    return max(a, lo), min(b, hi)


class EvictionMixin:
    """Mixed into Simulator; uses its tiers, channels, policy and counters."""

    def _make_room(self, tier: str, need: int, now: float, requester: SessionKV | None,
                   critical: bool, exclude: frozenset = frozenset()) -> tuple[bool, float]:
        """Free `need` tokens on `tier`; returns (done, when the freed room is usable)."""
        tiers = self.tiers
        skip = exclude | ({requester.sid} if requester is not None else set())
        cands = []
        for sid in tiers.holders[tier]:
            kv = self.kv[sid]
            if (sid in skip or kv.state not in _EVICTABLE
                    or (tier == "gpu" and kv.gpu_ready > now)):
                continue
            cands.append(kv)
        amount = (lambda kv: kv.gpu) if tier == "gpu" else (
            (lambda kv: kv.cpu_hi - kv.cpu_lo) if tier == "cpu" else
            (lambda kv: kv.disk_hi - kv.disk_lo))
        if sum(amount(kv) for kv in cands) < need:
            return False, now
        views = [kv.view() for kv in cands]
        if not critical and requester is not None:
            views.append(requester.view())
        order = self.policy.eviction_order(views, now, tier)
        if not critical and requester is not None:
            order = order[:order.index(requester.sid)]
            if sum(amount(self.kv[sid]) for sid in order) < need:
                return False, now
        freed, wait = 0, now
        for sid in order:
            if freed >= need:
                break
            kv = self.kv[sid]
            n = min(need - freed, kv.gpu) if tier == "gpu" else amount(kv)
            wait = max(wait, self._evict(kv, tier, n, now, skip | {sid}))
            freed += n
        return freed >= need, wait

    def _evict(self, kv: SessionKV, tier: str, n: int, now: float, exclude) -> float:
        """Evict n tokens of kv from `tier` (the GPU's tail, or a whole lower-tier copy)."""
        tiers = self.tiers
        dest = self.policy.on_evict(kv.view(), tier, now)
        self.counters["evict_" + tier] += 1
        exclude = frozenset(exclude)
        if tier == "gpu":
            a, b = kv.gpu - n, kv.gpu
            c0, c1 = _overlap(a, b, kv.cpu_lo, kv.cpu_hi)
            d0, d1 = _overlap(a, b, kv.disk_lo, kv.disk_hi)
            lc, ld = max(0, c1 - c0), max(0, d1 - d0)
            both = max(0, min(c1, d1) - max(c0, d0)) if lc and ld else 0
            uncovered = (b - a) - (lc + ld - both)
            wait = max(now, kv.down_ready) if (lc or ld) else now
            to_cpu = tiers.missing(kv, "cpu", a, b)   # what a CPU copy of [a, b) adds
            if uncovered > 0 and dest in (Placement.OFFLOAD_CPU, Placement.SPILL_DISK):
                ok, w = self._room("cpu", to_cpu, now, None, True, exclude)
                if ok:                      # to CPU now (SPILL_DISK: on to disk later)
                    end = self.d2h.submit(w, self._bytes(to_cpu))
                    tiers.add_interval(kv, "cpu", a, b, end)
                    wait = max(wait, end)
                    if dest is Placement.SPILL_DISK:
                        self.writeback.request(kv, b, now)
                elif dest is Placement.SPILL_DISK:
                    to_disk = tiers.missing(kv, "disk", a, b)
                    ok, w = self._room("disk", to_disk, now, None, True, exclude)
                    if ok:
                        left = self.d2h.submit(w, self._bytes(to_disk))
                        tiers.add_interval(kv, "disk", a, b,
                                           self._disk_io(left, to_disk, write=True))
                        wait = max(wait, left)
            if (dest is Placement.SPILL_DISK and uncovered == 0
                    and tiers.missing(kv, "disk", 0, b)):
                self.writeback.request(kv, b, now)      # keep the CPU copy clean
            tiers.set_gpu(kv, a)
            return wait
        if tier == "cpu":
            lo, hi, ready = kv.cpu_lo, kv.cpu_hi, kv.cpu_ready
            uncovered = tiers.missing(kv, "disk", lo, hi)
            wait = now
            if uncovered > 0 and dest is Placement.SPILL_DISK:
                ok, w = self._room("disk", uncovered, now, None, True, exclude)
                if ok:
                    wait = self._disk_io(max(w, ready), uncovered, write=True)
                    tiers.add_interval(kv, "disk", lo, hi, wait)
            tiers.set_interval(kv, "cpu", 0, 0, 0.0)
            return wait
        tiers.set_interval(kv, "disk", 0, 0, 0.0)
        return now

    def _prefetch(self, kv: SessionKV, now: float) -> None:
        """Bring a paused session's KV back to the GPU (or, from disk, at least to CPU)."""
        if kv.state != "paused":
            return
        tiers = self.tiers
        g, c, d = tiers.reuse(kv, kv.ctx)
        if c + d == 0:
            return
        if d and self.disk.backlog_s(now) > self.cfg.prefetch_disk_backlog_s:
            self.counters["prefetch_skipped"] += 1
            return
        ok, wait = self._room("gpu", c + d, now, kv, critical=False)
        if ok:
            ready = wait
            if c:
                ready = max(ready, self.h2d.submit(max(wait, kv.cpu_ready), self._bytes(c)))
            if d:
                e = self._disk_io(max(wait, kv.disk_ready), d, write=False)
                ready = max(ready, self.h2d.submit(e, self._bytes(d)))
            tiers.set_gpu(kv, g + c + d)
            kv.gpu_ready, kv.prefetched = ready, True
            self.counters["prefetches"] += 1
            return
        if d and c == 0:                    # stage the disk part in CPU memory
            ok, wait = self._room("cpu", d, now, kv, critical=False)
            if ok:
                e = self._disk_io(max(wait, kv.disk_ready), d, write=False)
                tiers.add_interval(kv, "cpu", g, g + d, e)
                kv.prefetched = True
                self.counters["staged"] += 1
