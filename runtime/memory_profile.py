"""How much device memory the KV cache may take, from forwards measured before it exists.

Two eager forwards run against a one-block scratch cache (no slot is written; every read lands
in block 0): the largest prefill step (`max_num_batched_tokens` tokens, logits for up to
`max_num_seqs` rows) and, with CUDA graphs on, a decode step at the largest graph bucket. Their
peak allocations are the activation memory of eager steps and the estimate of what the graphs'
shared pool will hold; the KV cache gets the rest of the memory fraction.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from kernels import KernelOps
from kvstore.spec import KVCacheSpec
from runtime.models.llama import AttentionMetadata, LlamaFamilyModel

log = logging.getLogger(__name__)

SLACK_BYTES = 512 * 2**20     # allocator fragmentation, per-stream library workspaces


@dataclass
class KVBudget:
    total_bytes: int             # device memory
    used_bytes: int              # in use before the cache (weights, workspaces)
    prefill_peak_bytes: int      # activations of the largest eager step
    graph_estimate_bytes: int    # activations of the largest decode graph + its logits buffer
    kv_bytes: int                # what the cache gets
    num_blocks: int


@torch.inference_mode()
def forward_peak_bytes(model: LlamaFamilyModel, spec: KVCacheSpec, ops: KernelOps,
                       device: torch.device, num_seqs: int, query_len: int, width: int,
                       logits_rows: int) -> int:
    """Peak bytes allocated by one forward of `num_seqs` sequences of `query_len` new tokens over
    a block table `width` wide, plus the logits of `logits_rows` rows."""
    scratch = spec.allocate(1, device)                 # [1, layers, 2, bs, Hkv, D]
    n = num_seqs * query_len
    z = dict(device=device)
    meta = AttentionMetadata(
        slot_mapping=torch.full((n,), -1, dtype=torch.int64, **z),
        query_start_loc=torch.arange(0, n + 1, query_len, dtype=torch.int32, **z),
        seq_lens=torch.full((num_seqs,), query_len, dtype=torch.int32, **z),
        block_tables=torch.zeros((num_seqs, width), dtype=torch.int32, **z),
        max_query_len=query_len, decode_only=query_len == 1)
    ids = torch.zeros(n, dtype=torch.int64, **z)
    positions = torch.arange(query_len, **z).repeat(num_seqs)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    hidden = model(ids, positions, scratch, meta, ops)                 # [n, hidden]
    logits = model.compute_logits(hidden[:logits_rows])                # [rows, V]
    del hidden, logits
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def kv_budget(model: LlamaFamilyModel, spec: KVCacheSpec, ops: KernelOps, device: torch.device,
              memory_fraction: float, max_num_batched_tokens: int, max_num_seqs: int,
              graph_batch: int, max_blocks_per_seq: int,
              extend_graph: tuple[int, int] | None = None) -> KVBudget:
    """Size the KV cache after measuring the eager and graph activations (graph_batch 0: no
    decode graphs; extend_graph: the largest (tokens, seqs) extend graph bucket, whose pool is
    apart from the decode graphs')."""
    vocab = model.arch.vocab_size
    width = -(-max_num_batched_tokens // spec.block_size)
    prefill = forward_peak_bytes(model, spec, ops, device, 1, max_num_batched_tokens, width,
                                 min(max_num_seqs, max_num_batched_tokens))
    graphs = 0
    if graph_batch:
        graphs = forward_peak_bytes(model, spec, ops, device, graph_batch, 1, max_blocks_per_seq,
                                    graph_batch) + graph_batch * vocab * 4
    if extend_graph is not None:
        tokens, seqs = extend_graph
        graphs += forward_peak_bytes(model, spec, ops, device, 1, tokens, max_blocks_per_seq,
                                     seqs) + seqs * vocab * 4
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    used = total - free
    kv = int(total * memory_fraction) - used - prefill - graphs - SLACK_BYTES
    n = kv // spec.block_bytes
    if n <= 0:
        raise ValueError(f"no GPU memory left for the KV cache ({used / 2**30:.1f} GiB in use, "
                         f"{prefill / 2**30:.2f} GiB for prefill activations, "
                         f"{graphs / 2**30:.2f} GiB for CUDA graphs, of {total / 2**30:.1f} GiB x "
                         f"{memory_fraction}): raise gpu_memory_fraction or lower "
                         "max_num_batched_tokens / max_num_seqs")
    log.info("KV budget: %.1f GiB (in use %.1f GiB, prefill activations %.2f GiB, graphs "
             "%.2f GiB)", n * spec.block_bytes / 2**30, used / 2**30, prefill / 2**30,
             graphs / 2**30)
    return KVBudget(total, used, prefill, graphs, int(n * spec.block_bytes), int(n))
