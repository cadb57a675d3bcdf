"""Where every KV block is, across GPU, pinned CPU and disk, and the moves between them.

The GPU tier is the block pool (`kvstore/block_pool.py`): its hash index says which GPU block
holds a hash. This class indexes the CPU tier (hash -> host slot) and asks the disk store about
the disk tier; a block may be on several tiers at once. The sessions layer calls `offload`,
`prefetch`, `evict`, `pin`/`unpin` and `lookup`; the eviction order of the CPU and disk tiers
comes from `EvictionPolicy` objects (LRU unless given).

Threading: call everything, `poll()` included, from the engine thread; the index is updated when
a batch is seen complete (`poll()` or a handle's `ready()`/`wait()`), never before the data is in
place.

Copies in flight are indexed too (hash -> the batch copying it, per target tier), so a block
being copied down is never copied again: a second offload of the same blocks (a turn end's
automatic pause followed by the client's Pause) starts copies only for the blocks no batch
covers, and its handle completes when those and the covering batches have. An entry goes when
its batch completes, failed or not; a failed block is still where it was copied from.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

import torch

from kvstore.block_pool import BlockPool
from kvstore.config import TierConfig
from kvstore.disk import DiskStore
from kvstore.eviction import EvictionPolicy, LRUPolicy, pick_victims
from kvstore.host_pool import HostPool
from kvstore.spec import KVCacheSpec
from kvstore.transfer import TransferEngine
from kvstore.transfer_handle import TransferGroup, TransferHandle

Tier = Literal["gpu", "cpu", "disk"]
TIERS: tuple[str, ...] = ("gpu", "cpu", "disk")


@dataclass
class Location:
    """Where one block is; `tiers` lists them fastest first."""
    hash: bytes
    gpu_block: int | None = None
    cpu_slot: int | None = None
    on_disk: bool = False

    @property
    def tiers(self) -> list[str]:
        return [t for t, here in (("gpu", self.gpu_block is not None),
                                  ("cpu", self.cpu_slot is not None),
                                  ("disk", self.on_disk)) if here]


@dataclass
class TierUsage:
    capacity_blocks: int
    used_blocks: int
    pinned_blocks: int
    bytes_in: int = 0      # bytes moved into this tier
    bytes_out: int = 0     # bytes moved out of this tier


@dataclass
class _Moved:
    bytes_in: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
    bytes_out: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))

    def add(self, src: str, dst: str, n: int) -> None:
        self.bytes_out[src] += n
        self.bytes_in[dst] += n


class TieredKVStore:
    """The GPU block pool plus the CPU and disk tiers that `config` turns on.

    `disk` may be a DiskStore opened by the caller (e.g. one whose environment also holds the
    sessions' databases); it then replaces the one `config` describes.
    """

    def __init__(self, spec: KVCacheSpec, config: TierConfig, model_fingerprint: bytes,
                 gpu_kv: torch.Tensor, block_pool: BlockPool,
                 cpu_policy: EvictionPolicy | None = None,
                 disk_policy: EvictionPolicy | None = None, pin_memory: bool | None = None,
                 transfer_mode: str = "auto", clock: Callable[[], float] = time.monotonic,
                 disk: DiskStore | None = None) -> None:
        self.spec, self.config, self.pool, self.clock = spec, config, block_pool, clock
        self.cpu_policy = cpu_policy if cpu_policy is not None else LRUPolicy()
        self.host = HostPool(spec, config.cpu_bytes, pin_memory) if config.cpu_enabled else None
        self.disk = disk
        staging = None
        if disk is None and config.disk_enabled:
            self.disk = DiskStore(config.disk_cache_path, spec, model_fingerprint,
                                  config.disk_bytes, policy=disk_policy, clock=clock)
        if self.disk is not None:
            staging = HostPool(spec, max(config.staging_bytes, 2 * spec.block_bytes), pin_memory)
        self._staging = staging
        host = self.host or staging
        self.transfer = None if host is None else TransferEngine(
            gpu_kv, host, self.disk, gpu_incref=block_pool.incref, gpu_decref=block_pool.free,
            staging_pool=staging, mode=transfer_mode)
        self._cpu: dict[bytes, int] = {}          # hash -> host slot (data in place)
        self._to_cpu: dict[bytes, TransferHandle] = {}    # hash -> batch copying it to CPU
        self._to_disk: dict[bytes, TransferHandle] = {}   # hash -> batch writing it to disk
        self._cpu_pinned: set[bytes] = set()
        self._gpu_pins: dict[bytes, int] = {}     # hash -> GPU block we hold a reference on
        self.moved = _Moved()
        self.gpu_evictions = 0
        block_pool.on_evict(self._on_gpu_evict)

    # -- queries -----------------------------------------------------------------------------
    def locate(self, h: bytes) -> Location:
        return Location(h, self.pool.lookup_hash(h), self._cpu.get(h),
                        self.disk is not None and self.disk.contains(h))

    def below_gpu(self, h: bytes) -> bool:
        """Whether the CPU or disk tier holds a copy of block `h` (a landed one)."""
        return h in self._cpu or (self.disk is not None and self.disk.contains(h))

    def lookup(self, hashes: Iterable[bytes]) -> list[Location]:
        """Locations of the longest prefix of `hashes` present on some tier."""
        out: list[Location] = []
        for h in hashes:
            loc = self.locate(h)
            if not loc.tiers:
                break
            out.append(loc)
        return out

    def usage(self) -> dict[str, TierUsage]:
        p = self.pool
        out = {"gpu": TierUsage(p.num_blocks, p.num_blocks - p.num_free_blocks,
                                len(self._gpu_pins))}
        cap = self.host.capacity if self.host else 0
        out["cpu"] = TierUsage(cap, len(self._cpu), len(self._cpu_pinned))
        d = self.disk
        out["disk"] = TierUsage(d.capacity_bytes // self.spec.block_bytes if d else 0,
                                d.num_blocks if d else 0, d.num_pinned if d else 0)
        for t in TIERS:
            out[t].bytes_in, out[t].bytes_out = self.moved.bytes_in[t], self.moved.bytes_out[t]
        return out

    # -- moves down --------------------------------------------------------------------------
    def offload(self, hashes: Iterable[bytes], to: Tier = "cpu",
                evict: bool = True) -> TransferHandle:
        """Copy blocks down to `to` ("cpu" or "disk"); blocks already there or not found are
        skipped, and the CPU tier takes the longest prefix it can make room for (`evict=False`:
        in its free slots only, displacing nothing it holds)."""
        hashes = list(dict.fromkeys(hashes))
        if to == "cpu":
            return self._offload_cpu(hashes, evict)
        if to == "disk":
            return self._offload_disk(hashes)
        raise ValueError(f"offload target must be 'cpu' or 'disk', got {to!r}")

    def _offload_cpu(self, hashes: list[bytes], evict: bool = True) -> TransferHandle:
        if self.host is None:
            raise RuntimeError("the CPU tier is off (cpu_cache_gb = 0)")
        covering = self._covering(hashes, self._to_cpu)
        todo = [(h, b) for h in hashes if h not in self._cpu and h not in self._to_cpu
                and (b := self.pool.lookup_hash(h)) is not None]
        slots = (self._alloc_cpu(len(todo)) if evict
                 else self.host.allocate(min(len(todo), self.host.num_free)))
        todo = todo[:len(slots)]
        handle = self.transfer.gpu_to_host([b for _, b in todo], slots)
        self._track_in_flight(self._to_cpu, [h for h, _ in todo], handle)

        def done(hd: TransferHandle) -> None:
            if hd.error is not None:              # nothing landed: give the slots back
                self.host.free(slots)
                return
            now = self.clock()
            for (h, _), s in zip(todo, slots):
                if h in self._cpu:            # raced with another offload of the same block
                    self.host.free([s])
                    continue
                self._cpu[h] = s
                self.cpu_policy.touch(h, now)
            self.moved.add("gpu", "cpu", len(todo) * self.spec.block_bytes)
        handle.add_done_callback(done)
        return TransferGroup("offload_cpu", [handle, *covering]) if covering else handle

    @staticmethod
    def _covering(hashes: list[bytes], in_flight: dict[bytes, TransferHandle]
                  ) -> list[TransferHandle]:
        """The batches in flight that already copy some of `hashes` (each once)."""
        return list({id(hd): hd for h in hashes if (hd := in_flight.get(h)) is not None}
                    .values())

    @staticmethod
    def _track_in_flight(in_flight: dict[bytes, TransferHandle], hashes: list[bytes],
                         handle: TransferHandle) -> None:
        """Index `hashes` as copied by `handle` until it completes (failed or not). Runs before
        the caller's own completion callback, which may start copies of the same blocks."""
        for h in hashes:
            in_flight[h] = handle

        def release(hd: TransferHandle) -> None:
            for h in hashes:
                if in_flight.get(h) is hd:
                    del in_flight[h]
        handle.add_done_callback(release)

    def _copies_to(self, to: Tier) -> dict[bytes, TransferHandle]:
        if to == "cpu":
            return self._to_cpu
        if to == "disk":
            return self._to_disk
        raise ValueError(f"in-flight copies go to 'cpu' or 'disk', got {to!r}")

    def in_flight(self, to: Tier) -> set[bytes]:
        """Hashes whose copy down to `to` ("cpu" or "disk") is in flight."""
        return set(self._copies_to(to))

    def in_flight_blocks(self, to: Tier) -> int:
        """How many blocks are being copied down to `to` ("cpu" or "disk") now."""
        return len(self._copies_to(to))

    def _offload_disk(self, hashes: list[bytes]) -> TransferHandle:
        if self.disk is None:
            raise RuntimeError("the disk tier is off (disk_cache_gb = 0 or no disk_cache_path)")
        from_cpu: list[tuple[bytes, int]] = []
        from_gpu: list[tuple[bytes, int]] = []
        covering = self._covering(hashes, self._to_disk)
        for h in hashes:
            if self.disk.contains(h) or h in self._to_disk:
                continue
            if h in self._cpu:
                from_cpu.append((h, self._cpu[h]))
            elif (b := self.pool.lookup_hash(h)) is not None:
                from_gpu.append((h, b))
        parts: list[TransferHandle] = []
        for src, items, start in (("cpu", from_cpu, self.transfer.host_to_disk),
                                  ("gpu", from_gpu, self.transfer.gpu_to_disk)):
            if items:
                hd = start([h for h, _ in items], [x for _, x in items])
                self._track_in_flight(self._to_disk, [h for h, _ in items], hd)
                hd.add_done_callback(self._count_written(src, len(items)))
                parts.append(hd)
        return TransferGroup("offload_disk", parts + covering)

    def _count_written(self, src: str, n: int) -> Callable[[TransferHandle], None]:
        def done(hd: TransferHandle) -> None:
            if hd.error is None:
                ok = n - len(hd.result.refused)
                self.moved.add(src, "disk", ok * self.spec.block_bytes)
        return done

    def _alloc_cpu(self, n: int) -> list[int]:
        """Up to `n` host slots, evicting unpinned, idle CPU blocks in policy order."""
        short = n - self.host.num_free
        if short > 0:
            victims = pick_victims(self.cpu_policy, short, self._cpu_evictable, len(self._cpu))
            self._drop_cpu(victims)
        return self.host.allocate(min(n, self.host.num_free))

    def _cpu_evictable(self, h: bytes) -> bool:
        s = self._cpu.get(h)
        return s is not None and h not in self._cpu_pinned and self.host.ref_count(s) == 1

    def _drop_cpu(self, hashes: Iterable[bytes]) -> int:
        n = 0
        for h in hashes:
            s = self._cpu.pop(h, None)
            if s is None:
                continue
            self.cpu_policy.remove(h)
            self.host.free([s])               # an in-flight copy keeps the slot until it ends
            n += 1
        return n

    # -- moves up ----------------------------------------------------------------------------
    def prefetch(self, hashes: Iterable[bytes], hold: bool = False,
                 whole: bool = False,
                 on_landed: Callable[[list[bytes]], None] | None = None
                 ) -> TransferHandle | None:
        """Bring blocks to the GPU from the fastest tier that has them.

        When complete, each block is registered in the block pool under its hash (so prefix
        matching finds it) and `handle.gpu_blocks` maps hash -> GPU block. With `hold=False` the
        tier's reference is dropped then (the block stays cached until the pool needs it); with
        `hold=True` the caller owns one reference per block and frees it. Blocks that do not fit
        in the pool or miss on disk are listed in `handle.result.missing`. With `whole=True`
        (and `hold=True`) nothing starts and None comes back unless every block fits now.
        `on_landed(hashes)` runs as each part lands, after its blocks are registered and before
        the tier's references go (`hold=False`), so the caller can take its own (a pin) with
        no moment in which the pool could evict them.
        """
        hashes = list(dict.fromkeys(hashes))
        present = {h: b for h in hashes if (b := self.pool.lookup_hash(h)) is not None}
        want = [h for h in hashes if h not in present]
        src_cpu = [h for h in want if h in self._cpu]
        src_disk = [h for h in want if h not in self._cpu and self.disk is not None
                    and self.disk.contains(h)]
        gpu_blocks: dict[bytes, int] = {}
        if hold:     # first: held blocks are no longer free, so they must not count as room
            self.pool.incref(present.values())
            gpu_blocks.update(present)
            # a waiting turn's prefix: sessions' optional pins yield to it
            if not self.pool.ensure_free(len(src_cpu) + len(src_disk)) and whole:
                self.pool.free(present.values())
                return None
        fit = min(len(src_cpu) + len(src_disk), self.pool.num_free_blocks)
        src_cpu, src_disk = src_cpu[:fit], src_disk[:max(0, fit - len(src_cpu))]
        parts: list[TransferHandle] = []
        now = self.clock()
        for src, hs in (("cpu", src_cpu), ("disk", src_disk)):
            if not hs:
                continue
            bids = self.pool.allocate(len(hs))
            if src == "cpu":
                for h in hs:
                    self.cpu_policy.touch(h, now)
                # blocks no launched step can touch need not wait for the step in flight
                hd = self.transfer.host_to_gpu([self._cpu[h] for h in hs], bids,
                                               after_compute=not self._idle(bids))
            else:
                hd = self.transfer.disk_to_gpu(hs, bids)
            hd.add_done_callback(self._register(src, hs, bids, hold, gpu_blocks, on_landed))
            parts.append(hd)
        group = TransferGroup("prefetch", parts)
        group.gpu_blocks = gpu_blocks
        chosen = set(src_cpu) | set(src_disk)
        group.not_started = [h for h in want if h not in chosen]
        return group

    def _idle(self, block_ids: list[int]) -> bool:
        """A load into these just-allocated blocks may start before the work queued on the
        compute stream: no launched step can still touch them (AGENTKV_LOAD_AFTER_STEPS=1
        makes every load wait for the steps queued, as before)."""
        if os.environ.get("AGENTKV_LOAD_AFTER_STEPS", "0") == "1":
            return False
        return self.pool.idle(block_ids)

    def _register(self, src: str, hs: list[bytes], bids: list[int], hold: bool,
                  gpu_blocks: dict[bytes, int],
                  on_landed: Callable[[list[bytes]], None] | None = None
                  ) -> Callable[[TransferHandle], None]:
        def done(hd: TransferHandle) -> None:
            missing = set(hd.result.missing) if hd.error is None else set(hs)
            drop: list[int] = []
            landed: list[bytes] = []
            for h, b in zip(hs, bids):
                if h in missing:
                    drop.append(b)
                    continue
                self.pool.cache_full_block(b, h)
                gpu_blocks[h] = b
                landed.append(h)
                if not hold:
                    drop.append(b)
            if on_landed is not None and landed:
                on_landed(landed)
            self.pool.free(drop)
            self.moved.add(src, "gpu", (len(hs) - len(missing)) * self.spec.block_bytes)
        return done

    # -- eviction, pinning -------------------------------------------------------------------
    def evict(self, hashes: Iterable[bytes], tier: Tier) -> int:
        """Drop blocks from one tier (pinned or in-use ones stay); returns how many went."""
        hashes = list(hashes)
        if tier == "gpu":
            return sum(1 for h in hashes if h not in self._gpu_pins and
                       (b := self.pool.lookup_hash(h)) is not None and self.pool.evict_cached(b))
        if tier == "cpu":
            return self._drop_cpu([h for h in hashes if h not in self._cpu_pinned])
        if tier == "disk":
            if self.disk is None:
                return 0
            doomed = [h for h in hashes if self.disk.contains(h) and not self.disk.is_pinned(h)]
            self.disk.delete(doomed)
            return len(doomed)
        raise ValueError(f"tier must be gpu, cpu or disk, got {tier!r}")

    def pin(self, hashes: Iterable[bytes]) -> None:
        """Keep blocks on every tier they are on now (GPU: a reference is held)."""
        for h in hashes:
            b = self.pool.lookup_hash(h)
            if b is not None and h not in self._gpu_pins:
                self.pool.incref([b])
                self._gpu_pins[h] = b
            if h in self._cpu:
                self._cpu_pinned.add(h)
            if self.disk is not None and self.disk.contains(h):
                self.disk.pin([h])

    def unpin(self, hashes: Iterable[bytes]) -> None:
        for h in hashes:
            b = self._gpu_pins.pop(h, None)
            if b is not None:
                self.pool.free([b])
            self._cpu_pinned.discard(h)
            if self.disk is not None:
                self.disk.unpin([h])

    def _on_gpu_evict(self, block_id: int, h: bytes) -> None:
        self.gpu_evictions += 1

    # -- lifetime ----------------------------------------------------------------------------
    def poll(self) -> int:
        """Complete finished batches (index updates happen here); returns batches in flight."""
        return self.transfer.poll() if self.transfer is not None else 0

    def close(self) -> None:
        if self.transfer is not None:
            self.transfer.close()        # every copy done: the host memory can be unregistered
        for pool in (self.host, self._staging):
            if pool is not None:
                pool.close()
        if self.disk is not None:
            self.disk.close()
