"""Llama-family decoder (Llama 2/3/3.1, Mistral, Qwen2/2.5, Qwen3) over a paged KV cache.

One forward runs over the flattened tokens of every sequence in the step. Attention writes this
step's K/V into the paged cache, then reads the whole context back from it through the kernel
backend (`kernels.KernelOps`): decode-only steps take the split-K decode kernel, any step with a
prefill or extend chunk takes the variable-length prefill kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels import KernelOps
from kernels.rotary import build_cos_sin_cache
from runtime.models.arch import ModelArch


@dataclass
class AttentionMetadata:
    """Per-step description of the flattened batch, built once and shared by every layer."""
    slot_mapping: torch.Tensor       # [num_tokens] int64: where each new token's K/V goes
    query_start_loc: torch.Tensor    # [num_seqs + 1] int32
    seq_lens: torch.Tensor           # [num_seqs] int32, context length incl. this step's tokens
    block_tables: torch.Tensor       # [num_seqs, max_blocks_per_seq] int32
    max_query_len: int
    decode_only: bool                # every sequence has exactly one query token


class Attention(nn.Module):
    def __init__(self, arch: ModelArch, layer: int):
        super().__init__()
        self.arch, self.layer = arch, layer
        self.qkv_proj = nn.Linear(arch.hidden_size, arch.q_size + 2 * arch.kv_size,
                                  bias=arch.qkv_bias)
        self.o_proj = nn.Linear(arch.q_size, arch.hidden_size, bias=False)
        if arch.qk_norm:
            self.q_norm = nn.Parameter(torch.ones(arch.head_dim))
            self.k_norm = nn.Parameter(torch.ones(arch.head_dim))
        self.scale = arch.head_dim ** -0.5

    def forward(self, x: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                meta: AttentionMetadata, ops: KernelOps, cos_sin: torch.Tensor) -> torch.Tensor:
        a = self.arch
        n = x.shape[0]
        qkv = self.qkv_proj(x)                                    # [n, q + 2 kv]
        q, k, v = qkv.split([a.q_size, a.kv_size, a.kv_size], dim=-1)
        q = q.reshape(n, a.num_heads, a.head_dim)                  # [n, Hq, D]
        k = k.reshape(n, a.num_kv_heads, a.head_dim)               # [n, Hkv, D]
        v = v.reshape(n, a.num_kv_heads, a.head_dim)               # [n, Hkv, D]
        if a.qk_norm:
            q = ops.rms_norm(q.reshape(-1, a.head_dim), self.q_norm, a.rms_norm_eps).view_as(q)
            k = ops.rms_norm(k.reshape(-1, a.head_dim), self.k_norm, a.rms_norm_eps).view_as(k)
        # q, k, v stay strided views of qkv (rows of q + 2 kv): every kernel takes the strides
        q, k = ops.apply_rotary(q, k, positions, cos_sin)
        kv_layer = kv_cache[:, self.layer]                         # [blocks, 2, bs, Hkv, D]
        ops.write_kv(k, v, kv_layer, meta.slot_mapping)
        if meta.decode_only:
            o = ops.paged_decode_attention(q, kv_layer, meta.seq_lens, meta.block_tables,
                                           self.scale)
        else:
            o = ops.paged_prefill_attention(q, kv_layer, meta.query_start_loc, meta.seq_lens,
                                            meta.block_tables, self.scale, meta.max_query_len)
        return self.o_proj(o.reshape(n, a.q_size))


class MLP(nn.Module):
    def __init__(self, arch: ModelArch):
        super().__init__()
        self.gate_up_proj = nn.Linear(arch.hidden_size, 2 * arch.intermediate_size, bias=False)
        self.down_proj = nn.Linear(arch.intermediate_size, arch.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, ops: KernelOps) -> torch.Tensor:
        # x: [num_tokens, hidden] -> gate_up [num_tokens, 2 * intermediate] -> [num_tokens, hidden]
        return self.down_proj(ops.silu_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, arch: ModelArch, layer: int):
        super().__init__()
        self.self_attn = Attention(arch, layer)
        self.mlp = MLP(arch)
        self.input_layernorm = nn.Parameter(torch.ones(arch.hidden_size))
        self.post_attention_layernorm = nn.Parameter(torch.ones(arch.hidden_size))
        self.eps = arch.rms_norm_eps


class LlamaFamilyModel(nn.Module):
    def __init__(self, arch: ModelArch):
        super().__init__()
        self.arch = arch
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(arch, i) for i in range(arch.num_layers))
        self.norm = nn.Parameter(torch.ones(arch.hidden_size))
        if not arch.tie_word_embeddings:
            self.lm_head = nn.Linear(arch.hidden_size, arch.vocab_size, bias=False)
        inv_freq, scaling = arch.inv_freq()
        self.register_buffer("cos_sin", build_cos_sin_cache(
            inv_freq, arch.max_position_embeddings, scaling), persistent=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                meta: AttentionMetadata, ops: KernelOps) -> torch.Tensor:
        """input_ids, positions: [num_tokens] -> hidden states [num_tokens, hidden]."""
        eps = self.arch.rms_norm_eps
        h = self.embed_tokens(input_ids)
        residual = None
        for layer in self.layers:
            if residual is None:
                residual = h
                x = ops.rms_norm(h, layer.input_layernorm, eps)
            else:
                x, residual = ops.rms_norm(h, layer.input_layernorm, eps, residual)
            h = layer.self_attn(x, positions, kv_cache, meta, ops, self.cos_sin)
            x, residual = ops.rms_norm(h, layer.post_attention_layernorm, eps, residual)
            h = layer.mlp(x, ops)
        out, _ = ops.rms_norm(h, self.norm, eps, residual)
        return out

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [n, hidden] -> logits [n, vocab] in float32."""
        w = self.embed_tokens.weight if self.arch.tie_word_embeddings else self.lm_head.weight
        return F.linear(hidden, w).float()
