"""Loads a waiting request's prefix blocks from the CPU or disk tier instead of recomputing them.

Before a waiting request is admitted, the loader looks past its GPU prefix-cache hit: if the next
blocks of its prompt sit on the CPU or disk tier and loading them is faster than recomputing them
(by the measured transfer bandwidths and the measured prefill speed), it starts a prefetch and
keeps that request waiting — others are scheduled meanwhile — until the blocks are on the GPU.
A load starts only when all of it fits (sessions' pins yield first); until then the
request waits in line, so a partial load never leaves a gap that turns the rest into a recompute.
The wait is bounded: once a request has waited `max_wait_factor` times as long as recomputing
its missing prefix would take, it loads the longest front part that fits now (leaving room for
one step's chunk) and recomputes the rest, chunk by chunk, like any prompt (whose growth takes
part in the scheduler's priority and preemption order, which a wait for room does not).
A CPU load expected to be short is waited for in place, since the scheduler looks again only at
the next step: up to `inline_wait_long_s` when the step being built carries prefill work (the
next look is a whole long step away), up to `inline_wait_s` when it does not (a decode step).
The prefetched blocks, and the GPU prefix before them, are held for the request until its
admission matches them as ordinary prefix-cache hits, so they cannot be evicted in between.
A request found with nothing to load that then waits for GPU room anyway is looked at again
(`not_admitted`): while it waits, others' growth may evict its GPU prefix, whose copy the tiers
often hold (a turn's end starts one under `agent`); loading it back beats recomputing it.
"""
from __future__ import annotations

import enum
import logging
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from kvstore.block_pool import BlockPool
from kvstore.tiers import TieredKVStore
from runtime.request import Request

log = logging.getLogger(__name__)


@dataclass
class Rates:
    """Measured speeds (exponential moving averages), seeded with conservative defaults."""
    prefill_tok_s: float
    h2d_GBps: float
    disk_read_GBps: float
    decode_step_s: float = 0.0     # a decode-only step's device time (0: none seen yet)
    alpha: float = 0.2

    def observe_prefill(self, tokens: int, seconds: float) -> None:
        if tokens >= 64 and seconds > 0:
            self.prefill_tok_s += self.alpha * (tokens / seconds - self.prefill_tok_s)

    def observe_decode_step(self, seconds: float) -> None:
        if seconds > 0:
            self.decode_step_s += (self.alpha * (seconds - self.decode_step_s)
                                   if self.decode_step_s else seconds)

    def observe_load(self, tier: str, nbytes: int, seconds: float) -> None:
        if nbytes < (1 << 20) or seconds <= 0:
            return
        gbps = nbytes / seconds / 1e9
        if tier == "cpu":
            self.h2d_GBps += self.alpha * (gbps - self.h2d_GBps)
        else:
            self.disk_read_GBps += self.alpha * (gbps - self.disk_read_GBps)


class LoadState(enum.Enum):
    READY = "ready"        # admit it now (its prefix is on the GPU, or will be recomputed)
    LOADING = "loading"    # its prefix is on the way: schedule others meanwhile
    NO_ROOM = "no_room"    # its prefix could be loaded but the GPU has no room yet: wait in line


@dataclass
class _Load:
    handle: object
    started: float
    order: list[tuple[bytes, str]]  # (hash, source tier) of each block, in prefix order
    nbytes: dict[str, int]
    held: list[int] = field(default_factory=list)
    finished: bool = False


@dataclass
class _Wait:
    since: float
    held: list[int]          # the request's GPU prefix, held so that the wait cannot evict it
    blocks: int = 0          # GPU blocks the load it waits for needs
    bound_s: float = 0.0     # how long it may wait: max_wait_factor x recomputing the load
    futile: bool = False     # the room cannot come within the bound: load the front next look
    checked_at: float = float("-inf")   # when the scheduler last asked whether room can come


class PrefixLoader:
    def __init__(self, tiers: TieredKVStore, pool: BlockPool, block_size: int,
                 fingerprint: bytes, rates: Rates, reserve_blocks: int = 0):
        self.tiers, self.pool, self.bs, self.fp, self.rates = tiers, pool, block_size, fingerprint, rates
        self.max_wait_factor = 1.0     # wait for whole-load room at most this x recompute time
        self.reserve_blocks = reserve_blocks   # blocks a partial load leaves free
        self.inline_wait_s = 0.005     # CPU loads this short are waited for in place ...
        self.inline_wait_long_s = 0.04  # ... or this short when the step carries prefill work
        self._loads: dict[str, _Load] = {}
        self._checked: set[str] = set()
        self._waiting: dict[str, _Wait] = {}     # requests waiting for room to load, GPU prefix held
        self.loaded_tokens = {"cpu": 0, "disk": 0}

    def ready(self, req: Request, long_step: bool = False) -> LoadState:
        """Whether `req` can be admitted now, starting a load of its prefix when that pays.
        `long_step`: the step being built carries prefill work (a short load is then worth
        waiting for in place; see `_wait_briefly`).

        A finished load stays held for the request until it is admitted (`after_admit`), also
        across steps where admission then finds no room for the rest of its prompt."""
        rid = req.request_id
        load = self._loads.get(rid)
        if load is not None:
            if not load.handle.ready():
                return LoadState.LOADING
            self._finish(req, load)
            return LoadState.READY
        # A preempted request looks again like any other: what it computed before and the
        # tiers below still hold comes back by a load (an H100 replay redid 65K tokens of
        # preempted turns, most of them resumed turns whose context the CPU tier held).
        if rid in self._checked or req.num_computed_tokens:
            return LoadState.READY
        # A fresh look: what an earlier load brought (dropped since, `release_holds`) is no
        # longer where this admission's prefix comes from.
        req.loaded_from = {}
        wait = self._waiting.get(rid)
        hashes = req.prefix_hashes(self.bs, self.fp)
        g = 0
        while g < len(hashes) and self.pool.lookup_hash(hashes[g]) is not None:
            g += 1
        below = self.tiers.lookup(hashes[g:])
        if not below:
            return self._settled(rid)
        nbytes = self._bytes_by_tier(below)
        load_s = nbytes["cpu"] / (self.rates.h2d_GBps * 1e9) + \
            nbytes["disk"] / (self.rates.disk_read_GBps * 1e9)
        recompute_s = len(below) * self.bs / self.rates.prefill_tok_s
        bound_s = self.max_wait_factor * recompute_s      # the longest wait for whole-load room
        if load_s >= recompute_s:
            log.debug("request %s: recomputing %d tokens (%.3fs) beats loading (%.3fs)", rid,
                      len(below) * self.bs, recompute_s, load_s)
            return self._settled(rid)
        # The GPU prefix is held with the loaded blocks, so making room cannot evict it; a load
        # that does not fit whole would leave a gap the prefix match stops at: wait for room.
        hashes_to_hold = hashes[:g] + [loc.hash for loc in below]
        handle = self.tiers.prefetch(hashes_to_hold, hold=True, whole=True)
        if (handle is None and wait is not None
                and (wait.futile or time.perf_counter() - wait.since >= bound_s)):
            handle, below = self._load_front(rid, hashes[:g], below, recompute_s)
            if handle is None:
                return self._settled(rid)      # nothing fits: recompute it all, chunk by chunk
            nbytes = self._bytes_by_tier(below)
        if handle is None:
            if wait is None:
                # Hold the GPU prefix while waiting: others' work would evict it otherwise,
                # turning cheap hits into a longer load.
                held = [self.pool.lookup_hash(h) for h in hashes[:g]]
                self.pool.incref(held)
                self._waiting[rid] = _Wait(time.perf_counter(), held)
                log.info("request %s waits for GPU room to load %d prefix blocks (%d free of %d, "
                         "%d of its prefix held)", rid, len(below), self.pool.num_free_blocks,
                         self.pool.num_blocks, g)
            self._waiting[rid].blocks = len(below)
            self._waiting[rid].bound_s = bound_s
            return LoadState.NO_ROOM
        since = self._unwait(rid)          # the load holds the GPU prefix now
        if since is not None:
            log.info("request %s: loading %d prefix blocks after %.3f s waiting for room", rid,
                     len(below), time.perf_counter() - since)
        self._checked.add(rid)
        order = [(loc.hash, "cpu" if loc.cpu_slot is not None else "disk") for loc in below]
        self._loads[rid] = load = _Load(handle, time.perf_counter(), order, nbytes)
        if not handle.ready() and not self._wait_briefly(handle, nbytes, long_step):
            return LoadState.LOADING
        self._finish(req, load)
        return LoadState.READY

    def not_admitted(self, req: Request) -> None:
        """`req` was ready but found no GPU room this step: look at its prefix again next time.
        Its GPU hit is not held meanwhile (a hold would stall the running turns' growth), so
        that growth may evict part of it, and the tiers may hold copies by then that they did
        not at the first look (a copy started at the turn's end lands a few ms later). An H100
        replay saw a resumed turn wait 224 ms for room, then recompute 3,946 context tokens its
        CPU tier held: its TTFT, 0.45 s, was the p99."""
        if req.request_id not in self._loads:
            self._checked.discard(req.request_id)

    def wait_left_s(self, req: Request) -> float:
        """How much longer `req` may wait for room to load its prefix whole (0 when it waits
        for none)."""
        w = self._waiting.get(req.request_id)
        if w is None:
            return 0.0
        return max(0.0, w.bound_s - (time.perf_counter() - w.since))

    def room_check_due(self, req: Request, every_s: float = 0.05) -> bool:
        """Whether the scheduler should estimate again when room for `req`'s load can come
        (at most every `every_s`: the estimate walks running requests' blocks)."""
        w = self._waiting.get(req.request_id)
        now = time.perf_counter()
        if w is None or now - w.checked_at < every_s:
            return False
        w.checked_at = now
        return True

    def end_wait(self, req: Request) -> None:
        """The room `req` waits for cannot come within its bound: its next look loads the front
        of the prefix that fits and recomputes the rest, as a wait that ran out does."""
        w = self._waiting.get(req.request_id)
        if w is not None:
            w.futile = True

    def kept_tokens(self, req: Request) -> int:
        """Of the tokens `req` computed, how many a preemption would not lose: its leading
        full blocks that another request also holds (they stay on the GPU) or that the CPU or
        disk tier has a copy of (its next admission loads them back). What follows the first
        block with neither is recomputed."""
        kept = 0
        ref_count, below = self.pool.ref_count, self.tiers.below_gpu
        for h, b in zip(req.block_hashes, req.block_ids):
            if ref_count(b) <= 1 and not below(h):
                break
            kept += 1
        return min(kept * self.bs, req.num_computed_tokens)

    def room_wanted(self, req: Request) -> int:
        """GPU blocks the load that `req` waits for (`NO_ROOM`) needs; 0 when it waits for none."""
        w = self._waiting.get(req.request_id)
        return w.blocks if w is not None else 0

    def _bytes_by_tier(self, below: list) -> dict[str, int]:
        """Bytes of the blocks `below` (tier locations) that a load reads from CPU and disk."""
        nbytes = {"cpu": 0, "disk": 0}
        for loc in below:
            nbytes["cpu" if loc.cpu_slot is not None else "disk"] += self.tiers.spec.block_bytes
        return nbytes

    def _wait_briefly(self, handle, nbytes: dict[str, int], long_step: bool) -> bool:
        """A CPU load expected to take at most the step's inline limit is waited for here: the
        next look comes one engine step later, so the turn would start a step late for a copy
        of a few ms (a long step when it carries prefill work). Disk loads never block the
        step loop. True when done."""
        limit = self.inline_wait_long_s if long_step else self.inline_wait_s
        expected = nbytes["cpu"] / (self.rates.h2d_GBps * 1e9)
        if nbytes["disk"] or expected > limit:
            return False
        try:
            handle.wait(timeout=4 * limit + 0.01)
        except (TimeoutError, FutureTimeout):
            return False                  # not issued yet: look again next step
        except Exception:                 # noqa: BLE001 - a failed batch: _finish counts
            pass                          # its blocks as not loaded (recomputed)
        return True

    def _load_front(self, rid: str, prefix: list[bytes], below: list, recompute_s: float):
        """After a bounded wait: load the longest front part of `below` that fits now, leaving
        `reserve_blocks` free. Returns (handle, the part loading) or (None, [])."""
        self.pool.ensure_free(len(below) + self.reserve_blocks)     # pins yield first
        k = min(len(below), self.pool.num_free_blocks - self.reserve_blocks)
        handle = None
        if k > 0:
            handle = self.tiers.prefetch(prefix + [loc.hash for loc in below[:k]], hold=True,
                                         whole=True)
        log.info("request %s waited %.3f s (recomputing would take %.3f s) for room to load %d "
                 "prefix blocks: loading %d, recomputing the rest", rid,
                 time.perf_counter() - self._waiting[rid].since, recompute_s, len(below),
                 k if handle is not None else 0)
        return (handle, below[:k]) if handle is not None else (None, [])

    def _settled(self, rid: str) -> LoadState:
        """Nothing to load for `rid`: admit it as it is, once."""
        self._unwait(rid)
        self._checked.add(rid)
        return LoadState.READY

    def _unwait(self, rid: str) -> float | None:
        """Drop the hold of a request's wait for room; returns when the wait began."""
        w = self._waiting.pop(rid, None)
        if w is None:
            return None
        self.pool.free_chain(w.held)
        return w.since

    def _finish(self, req: Request, load: _Load) -> None:
        if load.finished:
            return
        load.finished = True
        secs = time.perf_counter() - load.started
        got = getattr(load.handle, "gpu_blocks", {})
        load.held = list(got.values())
        loaded = {"cpu": 0, "disk": 0}
        for h, tier in load.order:           # only an unbroken prefix is usable
            if h not in got:
                log.warning("request %s: %d prefix blocks could not be loaded; recomputing them",
                            req.request_id, len(load.order) - sum(loaded.values()) // self.bs)
                break
            loaded[tier] += self.bs
        if load.handle.error is None:
            for tier in ("cpu", "disk"):
                self.rates.observe_load(tier, load.nbytes[tier], secs)
        req.loaded_from = {t: n for t, n in loaded.items() if n}

    def after_admit(self, req: Request) -> None:
        """The request was admitted and holds its own references: drop the loader's."""
        self._checked.discard(req.request_id)
        self._unwait(req.request_id)
        load = self._loads.pop(req.request_id, None)
        if load is not None:
            self.pool.free_chain(load.held)
            for t, n in req.loaded_from.items():
                self.loaded_tokens[t] += n

    def release_others(self, keep: Request) -> int:
        """Nothing runs and `keep` cannot be admitted: drop the finished loads and the waits'
        held prefixes of the other waiting requests (they check again when their turn comes),
        so that held prefixes never wait on each other. Returns the blocks released."""
        freed = self.release_holds((self._waiting.keys() | self._loads.keys()) - {keep.request_id})
        if freed:
            log.info("released %d blocks loaded for other waiting requests so that request %s "
                     "can be admitted", freed, keep.request_id)
        return freed

    def release_holds(self, rids) -> int:
        """Drop what the waits and the finished loads of requests `rids` hold on the GPU (they
        check again when their turn comes); a load still in flight keeps its blocks. Returns
        the blocks released."""
        freed = 0
        for rid in rids:
            w = self._waiting.get(rid)
            if w is not None:
                self._unwait(rid)
                freed += len(w.held)
            load = self._loads.get(rid)
            if load is not None and load.finished:
                del self._loads[rid]
                self._checked.discard(rid)
                self.pool.free_chain(load.held)
                freed += len(load.held)
        return freed

    def forget(self, req: Request) -> None:
        """The request left before admission (aborted): release whatever was loaded for it."""
        self._checked.discard(req.request_id)
        self._unwait(req.request_id)
        load = self._loads.pop(req.request_id, None)
        if load is not None:
            if not load.handle.ready():
                load.handle.wait()
            self._finish(req, load)
            self.pool.free_chain(load.held)
