"""What bench/kernels.py measures: the Llama-3-8B attention shape (and the smoke shape), the
sections, the goals, and the kernel configurations timed beside the defaults."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kernels.attention_decode import DecodeConfig
from kernels.attention_prefill import PrefillConfig, PrefillWSConfig, ws_supported
from kernels.prefill_config import prefill_kernel_choice
from runtime.config import CUDA_BLOCK_SIZE

SECTIONS = ("decode", "prefill", "block_copy", "small_ops")

GOALS = {
    "decode_attn_b64_ctx4k_bw_frac": ">= 0.8",
    "decode_attn_b1_ctx32k_bw_frac": ">= 0.8",
    "prefill_attn_speedup_vs_sdpa": ">= 1.0",
    "block_pack_bw_frac": ">= 0.8",
    "block_unpack_bw_frac": ">= 0.8",
}


@dataclass
class Sizes:
    """Llama-3-8B attention shape by default; --smoke shrinks everything."""
    num_q_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    block_size: int = CUDA_BLOCK_SIZE      # the engine's page size
    num_layers: int = 32
    decode: dict = field(default_factory=lambda: {"b64_ctx4k": (64, 4096),
                                                  "b1_ctx32k": (1, 32768)})
    prefill: dict = field(default_factory=lambda: {"4x2k": (4, 2048), "1x8k": (1, 8192)})
    copy_blocks: int = 256
    pool_blocks: int = 1024
    copy_ceiling_bytes: int = 4 << 30


# Variants timed beside the defaults (--no-variants skips them): (config, splits) for decode,
# by batch size; configs for prefill. The defaults' neighbours from the H200 sweeps
# (bench/kernels_notes.md), so that each run shows the choice still holds.
DECODE_VARIANTS = {
    1: [(DecodeConfig(64, 4, 3, fused_merge=True), 64), (DecodeConfig(64, 4, 3), 32),
        (DecodeConfig(64, 4, 4, fused_merge=True), 32), (DecodeConfig(32, 4, 4, fused_merge=True), 32),
        (DecodeConfig(64, 4, 2), 64)],
    64: [(DecodeConfig(64, 4, 2), 1), (DecodeConfig(64, 4, 4), 1), (DecodeConfig(32, 4, 4), 2),
         (DecodeConfig(64, 4, 3, fused_merge=True), 2)],
}
# Prefill: the warp-specialised Hopper kernel's variants (where it runs), then the Triton
# kernel's defaults and best neighbours from the earlier sweeps.
PREFILL_WS_TWO = dict(consumers=2, block_n=128, consumer_regs=208, loader_regs=96)
PREFILL_WS_QREGS = dict(consumers=2, block_n=64, num_buf=4, consumer_regs=232, loader_regs=48,
                        q_regs=True)
PREFILL_WS_CONFIGS = [PrefillWSConfig(), PrefillWSConfig(num_buf=4), PrefillWSConfig(tma=True),
                      PrefillWSConfig(**PREFILL_WS_TWO),
                      PrefillWSConfig(**dict(PREFILL_WS_TWO, loader_warps=8, chunk=64,
                                             loader_regs=56)),
                      PrefillWSConfig(**dict(PREFILL_WS_TWO, tma=True)),
                      PrefillWSConfig(pingpong=True), PrefillWSConfig(tma=True, pingpong=True),
                      PrefillWSConfig(**dict(PREFILL_WS_TWO, pingpong=True)),
                      PrefillWSConfig(**dict(PREFILL_WS_TWO, tma=True, pingpong=True)),
                      PrefillWSConfig(overlap_items=True),
                      PrefillWSConfig(tma=True, overlap_items=True),
                      # query rows in registers (two consumers, 64-token steps), beside the
                      # same tiles with the rows in shared memory
                      PrefillWSConfig(**PREFILL_WS_QREGS),
                      PrefillWSConfig(**dict(PREFILL_WS_QREGS, q_regs=False)),
                      PrefillWSConfig(**dict(PREFILL_WS_QREGS, num_buf=5)),
                      PrefillWSConfig(**dict(PREFILL_WS_QREGS, tma=True))]
PREFILL_CONFIGS = [PrefillConfig(128, 64, 8, 3), PrefillConfig(128, 128, 8, 3),
                   PrefillConfig(128, 128, 8, 3, 64), PrefillConfig(128, 64, 8, 3, 32),
                   PrefillConfig(128, 64, 8, 4)]


def prefill_variants(sizes: "Sizes", device: str, dtype: torch.dtype) -> list:
    ws = ws_supported(sizes.head_dim, dtype, torch.device(device),
                      sizes.num_q_heads // sizes.num_kv_heads)
    tma = prefill_kernel_choice() != "gather"      # AGENTKV_PREFILL_KERNEL=gather: no TMA
    return [c for c in PREFILL_WS_CONFIGS if ws and (tma or not c.tma)] + PREFILL_CONFIGS


def decode_variants(sizes: Sizes, batch: int, ctx: int) -> list[tuple[DecodeConfig, int]]:
    return DECODE_VARIANTS.get(batch, [])


SMOKE = Sizes(num_q_heads=4, num_kv_heads=2, head_dim=64, block_size=16, num_layers=2,
              decode={"b64_ctx4k": (3, 100), "b1_ctx32k": (1, 300)},
              prefill={"4x2k": (2, 40), "1x8k": (1, 70)},
              copy_blocks=4, pool_blocks=12, copy_ceiling_bytes=1 << 20)
