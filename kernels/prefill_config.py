"""Which prefill attention kernel runs, with which tiles.

`PrefillConfig` holds the tiles of the Triton kernel in `attention_prefill` (any CUDA GPU, and
the CPU interpreter); `PrefillWSConfig` selects the warp-specialised Gluon kernel in
`attention_prefill_ws` (Hopper only). `default_prefill_config` picks per device and shape.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from kernels._triton import interpreter_enabled, next_power_of_2


@dataclass(frozen=True)
class PrefillConfig:
    """Tiles of the Triton kernel `_prefill_kernel` (any CUDA GPU, and the CPU interpreter)."""
    block_m: int      # query rows per program: tokens x padded GQA group
    block_n: int      # cached tokens per inner step
    num_warps: int
    num_stages: int
    block_n_diag: int | None = None   # tokens per step near the diagonal (None: block_n)


@dataclass(frozen=True)
class PrefillWSConfig:
    """The warp-specialised Hopper kernel (kernels/attention_prefill_ws.py): 128 query rows per
    work item on two consumer warpgroups, one loader partition, persistent programs."""
    # Defaults: the best of the H200 sweeps (bench/kernels_notes.md, v7): three consumer
    # warpgroups (192 query rows per K/V step) on 64-token steps, three in flight, cp.async.
    consumers: int = 3         # consumer warpgroups: 64 query rows each per work item
    tma: bool = False          # whole pages by TMA where the cache allows (the default from
                               # 64-token pages up; slower at 16: default_prefill_config)
    block_n: int = 64          # cached tokens per step
    num_buf: int = 3           # K/V steps in flight (shared memory: 32 KiB a 64-token step)
    loader_warps: int = 4
    chunk: int = 32            # rows per Q gather of the loader (its live address registers)
    consumer_regs: int = 152   # registers per thread of each worker consumer (setmaxnreg); the
    loader_regs: int = 48      # default consumer gets the rest of the 64K (160 here; no
                               # spills). Two consumers on 128-token steps: 208 / 96
    pingpong: bool = False     # consumers issue their matrix products in turn (an mbarrier
                               # handshake), so one's softmax runs under another's products
    overlap_items: bool = False  # an item's first QK^T goes out beside the previous item's
                               # last P @ V, whose rows are stored while it runs (two Q buffers
                               # a consumer: 16 KiB more shared memory per consumer at D 128)
    q_regs: bool = False       # each consumer reads its query rows into registers (the QK^T's
                               # A operand) and frees their buffer at the item's start: the
                               # next item's rows load under this one, and QK^T reads only K
                               # from shared memory (32 more registers a thread at D 128)

    def check(self) -> None:
        if (self.consumers not in (2, 3) or self.block_n not in (64, 128) or self.num_buf < 2
                or self.loader_warps not in (1, 2, 4, 8)):
            raise ValueError(f"{self}: consumers must be 2 or 3, block_n 64 or 128, num_buf >= 2 "
                             "and loader_warps 1, 2, 4 or 8")
        if self.chunk not in (16, 32, 64) or self.block_n % self.chunk:
            raise ValueError(f"{self}: chunk must be 16, 32 or 64 and divide block_n")
        if self.q_regs and self.overlap_items:
            raise ValueError(f"{self}: q_regs and overlap_items do not combine")


WS_HEAD_DIMS = (64, 128)
WS_MAX_GROUP = 64              # query heads per kv head: one work item holds >= 1 token each


@functools.lru_cache(maxsize=None)
def _ws_device_ok(device_index: int) -> bool:
    """An sm_90 GPU and a Triton with Gluon's Hopper ops."""
    if torch.cuda.get_device_capability(device_index)[0] != 9:
        return False
    try:
        import triton.experimental.gluon.language.nvidia.hopper  # noqa: F401
    except ImportError:
        return False
    return True


def prefill_kernel_choice() -> str:
    """AGENTKV_PREFILL_KERNEL: "auto" (default), "triton" (the Triton kernel everywhere) or
    "gather" (the warp-specialised kernel never uses TMA: every K/V row by cp.async)."""
    choice = os.environ.get("AGENTKV_PREFILL_KERNEL", "auto")
    if choice not in ("auto", "triton", "gather"):
        raise ValueError(f"AGENTKV_PREFILL_KERNEL must be auto, triton or gather; got {choice!r}")
    return choice


def tma_layout_ok(kv_layer: torch.Tensor) -> bool:
    """The TMA loader views a layer of the cache as rows of Hkv * D elements: the block and K/V
    strides must be whole rows, the base 16-byte aligned, and the view under 2^31 rows."""
    num_blocks, _, block_size, num_kv_heads, head_dim = kv_layer.shape
    row = num_kv_heads * head_dim
    s0, s1 = kv_layer.stride(0), kv_layer.stride(1)
    return (s0 % row == 0 and s1 % row == 0 and kv_layer.data_ptr() % 16 == 0
            and (num_blocks - 1) * (s0 // row) + s1 // row + block_size < 2 ** 31)


def ws_strides_ok(*tensors: torch.Tensor) -> bool:
    """The warp-specialised kernel copies 16-byte vectors: the two outer strides of q, out and
    the cache layer must be multiples of 16 elements (the kernel is specialised on that)."""
    return all(t.stride(0) % 16 == 0 and t.stride(1) % 16 == 0 for t in tensors)


def ws_supported(head_dim: int, dtype: torch.dtype, device: torch.device, group: int) -> bool:
    """Whether the warp-specialised kernel serves this shape on this device
    (AGENTKV_PREFILL_KERNEL=triton turns it off: the Triton kernel everywhere)."""
    return (device.type == "cuda" and not interpreter_enabled()
            and prefill_kernel_choice() != "triton"
            and dtype in (torch.bfloat16, torch.float16) and head_dim in WS_HEAD_DIMS
            and next_power_of_2(group) <= WS_MAX_GROUP and _ws_device_ok(device.index or 0))


def default_prefill_config(head_dim: int, dtype: torch.dtype, device: torch.device,
                           max_query_len: int | None = None, group: int = 1,
                           scale: float = 1.0, block_size: int = 16
                           ) -> PrefillConfig | PrefillWSConfig:
    """The warp-specialised kernel where it runs (Hopper, 16-bit, positive softmax scale), else
    the Triton kernel's tiles for this device and shape. With pages of 64 tokens or more the
    warp-specialised kernel loads K/V by TMA, a page (or a step of one) per box: faster there
    in both H100 runs (bench/kernels_notes.md: 1 x 8K 0.956x / 0.959x SDPA against cp.async's
    0.866x / 0.881x, 4 x 2K 0.854x / 0.843x against 0.835x / 0.789x); slower at 16-token
    pages, where a step is four boxes."""
    if scale > 0 and ws_supported(head_dim, dtype, device, group):
        return PrefillWSConfig(tma=block_size >= 64)
    return triton_prefill_config(head_dim, dtype, device, max_query_len)


def triton_prefill_config(head_dim: int, dtype: torch.dtype, device: torch.device,
                          max_query_len: int | None = None) -> PrefillConfig:
    if device.type != "cuda":
        return PrefillConfig(32, 32, 4, 1)
    if dtype == torch.float32:
        return PrefillConfig(64, 32, 4, 2)
    if head_dim >= 256:
        return PrefillConfig(64, 32, 4, 2)          # K/V/Q tiles within shared memory
    if head_dim >= 128:
        # best of the H200 sweeps for head_dim 128 (bench/kernels_notes.md): 128 rows on two
        # warpgroups, three K/V buffers, no spills; 128-token steps pay off on long chunks
        # (1 x 8K: 3-4% faster), 64-token steps on shorter ones (4 x 2K: 5-6% faster)
        if max_query_len is not None and max_query_len >= 4096:
            return PrefillConfig(128, 128, 8, 3)
        return PrefillConfig(128, 64, 8, 3)
    return PrefillConfig(128, 64, 4, 3)
