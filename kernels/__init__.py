"""Triton kernels for the paged KV cache, each beside its torch reference (`<op>_ref`).

Importing this package does not import Triton; the first Triton launch does (kernels/_triton.py).
"""
from kernels.attention_decode import paged_decode_attention, paged_decode_attention_ref
from kernels.attention_prefill import paged_prefill_attention, paged_prefill_attention_ref
from kernels.backend import KernelOps, get_kernel_ops
from kernels.block_copy import pack_blocks, pack_blocks_ref, unpack_blocks, unpack_blocks_ref
from kernels.kv_write import write_kv, write_kv_ref
from kernels.rms_norm import rms_norm, rms_norm_ref
from kernels.rotary import (apply_rotary, apply_rotary_ref, build_cos_sin_cache, default_inv_freq,
                            llama3_inv_freq)

__all__ = [
    "KernelOps", "get_kernel_ops",
    "write_kv", "write_kv_ref",
    "paged_prefill_attention", "paged_prefill_attention_ref",
    "paged_decode_attention", "paged_decode_attention_ref",
    "rms_norm", "rms_norm_ref",
    "apply_rotary", "apply_rotary_ref", "build_cos_sin_cache", "default_inv_freq",
    "llama3_inv_freq",
    "pack_blocks", "pack_blocks_ref", "unpack_blocks", "unpack_blocks_ref",
]
