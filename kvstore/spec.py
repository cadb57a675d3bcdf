"""The shape of the paged KV cache, shared by every tier and every kernel.

Layout is block-major: all layers of one block sit together, so a block moves between tiers as
one contiguous run of bytes (one DMA, one LMDB value), and a layer's view of the cache is a strided
slice that the attention kernels read with explicit strides.

    kv: [num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim]   (2 = K, V)
    kv[:, layer]: [num_blocks, 2, block_size, num_kv_heads, head_dim]     (a strided view)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dtype_from_name(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16",
               "float": "float32"}
    key = aliases.get(name, name)
    if key not in _DTYPES:
        raise ValueError(f"unsupported dtype {name!r}; choose one of float32, float16, bfloat16")
    return _DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    for k, v in _DTYPES.items():
        if v == dtype:
            return k
    raise ValueError(f"unsupported dtype {dtype}")


@dataclass(frozen=True)
class KVCacheSpec:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Shape of one block: [num_layers, 2, block_size, num_kv_heads, head_dim]."""
        return (self.num_layers, 2, self.block_size, self.num_kv_heads, self.head_dim)

    @property
    def block_numel(self) -> int:
        n = 1
        for d in self.block_shape:
            n *= d
        return n

    @property
    def block_bytes(self) -> int:
        return self.block_numel * torch.empty((), dtype=self.dtype).element_size()

    @property
    def bytes_per_token(self) -> int:
        return self.block_bytes // self.block_size

    def allocate(self, num_blocks: int, device: str | torch.device, pin_memory: bool = False
                 ) -> torch.Tensor:
        """One tensor holding `num_blocks` blocks: [num_blocks, *block_shape].

        Pageable CPU memory is zero-filled here so that its pages are committed at start-up:
        the process's resident size then shows the whole pool from the first moment (a later
        growth means a leak, not a first touch), and no step pays page faults on a fresh block.
        Device and pinned memory are committed by their allocators already."""
        t = torch.empty((num_blocks, *self.block_shape), dtype=self.dtype, device=device,
                        pin_memory=pin_memory)
        if t.device.type == "cpu" and not pin_memory:
            t.zero_()
        return t
