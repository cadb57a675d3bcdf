"""How much of a token sequence's prefix each tier holds, by chained block hashes."""
from __future__ import annotations

from kvstore.block_pool import BlockHash, BlockPool


def prefix_residency(hashes: list[BlockHash], block_size: int, pool: BlockPool,
                     tiers=None) -> dict[str, int]:
    """Tokens of the longest prefix of `hashes` present on each tier ("gpu", "cpu", "disk").

    `tiers` is a `kvstore.tiers.TieredKVStore` or None (GPU only). Each lookup is a single
    dictionary read, so this may run beside the engine thread and gives a recent snapshot.
    """
    counts = {"gpu": 0, "cpu": 0, "disk": 0}
    for tier in counts:
        for h in hashes:
            if tier == "gpu":
                here = pool.lookup_hash(h) is not None
            else:
                here = tiers is not None and tier in tiers.locate(h).tiers
            if not here:
                break
            counts[tier] += block_size
    return counts
