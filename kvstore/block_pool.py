"""GPU KV blocks: a free list, refcounts and prefix caching by chained block hashes.

A block holds `block_size` tokens of K and V for every layer (see `kvstore/spec.py`). A *full*
block is identified by a hash chained over every token before it and the model's fingerprint, so a
prefix shared by two requests maps to the same block and is computed once. Blocks whose refcount
falls to zero keep their contents ("cached") until their memory is needed; the order in which cached
blocks are reused comes from an `EvictionOrder` (LRU by default; the sessions layer plugs in a
pause-aware order).
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

BlockHash = bytes


def hash_block_tokens(parent: BlockHash, token_ids: Iterable[int]) -> BlockHash:
    """Chained hash of one full block: blake2b(parent || int32 token ids)."""
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(array("i", token_ids).tobytes())
    return h.digest()


def root_hash(model_fingerprint: bytes) -> BlockHash:
    """The parent of a sequence's first block: ties every hash to one model."""
    return hashlib.blake2b(b"agentkv-root" + model_fingerprint, digest_size=16).digest()


def chain_hashes(token_ids: list[int], block_size: int, model_fingerprint: bytes,
                 start: int = 0, parent: BlockHash | None = None) -> list[BlockHash]:
    """Hashes of the full blocks of `token_ids`, from block index `start` (with its `parent`)."""
    parent = root_hash(model_fingerprint) if parent is None else parent
    out: list[BlockHash] = []
    for b in range(start, len(token_ids) // block_size):
        parent = hash_block_tokens(parent, token_ids[b * block_size:(b + 1) * block_size])
        out.append(parent)
    return out


class EvictionOrder(Protocol):
    """Chooses which cached (refcount-zero) block to reuse next."""

    def add(self, block_id: int) -> None: ...
    def remove(self, block_id: int) -> None: ...
    def pop_victim(self) -> int: ...
    def __len__(self) -> int: ...


class LRUOrder:
    """Least recently freed first."""

    def __init__(self) -> None:
        self._od: OrderedDict[int, None] = OrderedDict()

    def add(self, block_id: int) -> None:
        self._od[block_id] = None
        self._od.move_to_end(block_id)

    def remove(self, block_id: int) -> None:
        self._od.pop(block_id, None)

    def pop_victim(self) -> int:
        block_id, _ = self._od.popitem(last=False)
        return block_id

    def __len__(self) -> int:
        return len(self._od)


class OutOfBlocks(RuntimeError):
    pass


@dataclass
class BlockPoolStats:
    hits: int = 0            # blocks found by prefix hash
    queries: int = 0         # blocks looked up by prefix hash
    evictions: int = 0       # cached blocks reused for new data


@dataclass
class BlockPool:
    """Bookkeeping for `num_blocks` GPU blocks (the KV tensor itself lives in the model runner)."""

    num_blocks: int
    block_size: int = 16
    enable_prefix_caching: bool = True
    order: EvictionOrder = field(default_factory=LRUOrder)
    stats: BlockPoolStats = field(default_factory=BlockPoolStats)
    # called with the number of blocks missing when `ensure_free` falls short; drops optional
    # references (a paused session's pins) so the blocks become evictable
    reclaim: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        if self.num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {self.num_blocks}")
        self._free: deque[int] = deque(range(self.num_blocks))
        self._ref = [0] * self.num_blocks
        # Steps the engine has launched and seen finish on the device (it sets both); each
        # block keeps the count launched when it was last released, so a copy into it need not
        # wait for the step in flight unless that step may still read or write it (`idle`).
        self.launched_steps = 0
        self.finished_steps = 0
        self._released_at = [0] * self.num_blocks
        self._hash: list[BlockHash | None] = [None] * self.num_blocks
        self._by_hash: dict[BlockHash, int] = {}
        self._evict_hooks: list[Callable[[int, BlockHash], None]] = []

    # -- queries -----------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks that `allocate` can hand out now: never used plus cached (refcount zero)."""
        return len(self._free) + len(self.order)

    @property
    def num_cached_blocks(self) -> int:
        return len(self.order)

    def ref_count(self, block_id: int) -> int:
        return self._ref[block_id]

    def block_hash(self, block_id: int) -> BlockHash | None:
        return self._hash[block_id]

    def lookup_hash(self, h: BlockHash) -> int | None:
        return self._by_hash.get(h)

    def ensure_free(self, n: int) -> bool:
        """True when `allocate(n)` would succeed, after asking `reclaim` for what is missing."""
        short = n - self.num_free_blocks
        if short > 0 and self.reclaim is not None:
            self.reclaim(short)
        return n <= self.num_free_blocks

    def usage(self) -> float:
        """Fraction of blocks held by running requests (cached blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    # -- prefix cache ------------------------------------------------------------------------
    def match_prefix(self, hashes: list[BlockHash]) -> list[int]:
        """Longest run of leading hashes present on the GPU; takes a reference on each."""
        if not self.enable_prefix_caching:
            return []
        found: list[int] = []
        for h in hashes:
            bid = self._by_hash.get(h)
            if bid is None:
                break
            found.append(bid)
        self.stats.queries += len(hashes)
        self.stats.hits += len(found)
        self.incref(found)
        return found

    def cache_full_block(self, block_id: int, h: BlockHash) -> None:
        """Register a block that has just been filled, so later prompts can share it."""
        if not self.enable_prefix_caching or self._hash[block_id] is not None:
            return
        if h in self._by_hash:  # the same content was computed twice (raced): keep the first
            return
        self._hash[block_id] = h
        self._by_hash[h] = block_id

    # -- allocation --------------------------------------------------------------------------
    def allocate(self, n: int) -> list[int]:
        if n > self.num_free_blocks:
            raise OutOfBlocks(f"asked for {n} KV blocks, {self.num_free_blocks} free of "
                              f"{self.num_blocks}")
        out: list[int] = []
        for _ in range(n):
            if self._free:
                bid = self._free.popleft()
            else:
                bid = self.order.pop_victim()
                self._drop_hash(bid)
                self.stats.evictions += 1
            self._ref[bid] = 1
            out.append(bid)
        return out

    def incref(self, block_ids: Iterable[int]) -> None:
        for bid in block_ids:
            if self._ref[bid] == 0:
                if self._hash[bid] is None:
                    raise RuntimeError(f"block {bid} is free: allocate it before referencing it")
                self.order.remove(bid)  # a cached block comes back into use
            self._ref[bid] += 1

    def free(self, block_ids: Iterable[int]) -> None:
        """Drop one reference from each block; a block at zero is cached (hashed) or freed."""
        for bid in block_ids:
            if self._ref[bid] <= 0:
                raise RuntimeError(f"block {bid} freed more often than referenced")
            self._ref[bid] -= 1
            if self._ref[bid] == 0:
                self._released_at[bid] = self.launched_steps
                if self._hash[bid] is not None:
                    self.order.add(bid)
                else:
                    self._free.append(bid)

    def free_chain(self, block_ids: list[int]) -> None:
        """`free` a sequence's blocks (given in chain order) tail first: on equal rank the
        eviction order takes the least recently freed first, so a log's tail goes before its
        head (prefix matching stops at the first missing block)."""
        self.free(reversed(block_ids))

    def idle(self, block_ids: Iterable[int]) -> bool:
        """For blocks just allocated (to copy into): True when no launched step can still read
        or write them, i.e. every step launched before each was last released has finished on
        the device. A block never used is idle."""
        done = self.finished_steps
        return all(self._released_at[b] <= done for b in block_ids)

    def evict_cached(self, block_id: int) -> bool:
        """Forget a cached (refcount-zero) block now; False if it is in use or not cached."""
        if self._ref[block_id] != 0 or self._hash[block_id] is None:
            return False
        self.order.remove(block_id)
        self._drop_hash(block_id)
        self._free.append(block_id)
        return True

    def reset_prefix_cache(self) -> int:
        """Forget every cached block; returns how many."""
        n = 0
        for bid in range(self.num_blocks):
            if self.evict_cached(bid):
                n += 1
        return n

    def on_evict(self, hook: Callable[[int, BlockHash], None]) -> None:
        """Call `hook(block_id, hash)` just before a cached block's contents are forgotten."""
        self._evict_hooks.append(hook)

    def _drop_hash(self, bid: int) -> None:
        h = self._hash[bid]
        if h is None:
            return
        for hook in self._evict_hooks:
            hook(bid, h)
        self._hash[bid] = None
        if self._by_hash.get(h) == bid:
            del self._by_hash[h]

    def check_invariants(self) -> None:
        """Every block is exactly one of: free, cached (ref 0, hashed), or in use (ref > 0)."""
        free = set(self._free)
        assert len(free) == len(self._free), "duplicate block in free list"
        for bid in range(self.num_blocks):
            r = self._ref[bid]
            assert r >= 0
            in_free = bid in free
            if r > 0:
                assert not in_free, f"block {bid} in use and free"
            elif self._hash[bid] is not None:
                assert not in_free, f"cached block {bid} also on the free list"
            else:
                assert in_free, f"block {bid} leaked (ref 0, unhashed, not free)"
        assert len(free) + len(self.order) + sum(1 for r in self._ref if r > 0) == self.num_blocks
