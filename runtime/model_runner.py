"""Turns a scheduler step into one forward over the flattened batch and returns sampling logits.

Decode steps that fit a captured bucket replay a CUDA graph (runtime/cuda_graphs.py); with
extend graphs on, so do small prefill, extend and mixed steps (runtime/extend_graphs.py); every
other step runs the model eagerly. Nothing here reads from the device: the logits stay there for
the sampler.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels import KernelOps
from kvstore.spec import KVCacheSpec
from runtime.cuda_graphs import DecodeGraphs
from runtime.extend_graphs import ExtendGraphs
from runtime.models.llama import AttentionMetadata, LlamaFamilyModel
from runtime.scheduler import SchedulerOutput
from runtime.step_inputs import HostBatch, build_host_batch, upload


@dataclass
class StepLogits:
    logits: torch.Tensor          # [num_sampling, vocab] float32 on the device
    sampling_rows: list[int]      # index into `scheduled` of each row of `logits`
    graph: bool                   # replayed from a CUDA graph
    num_device_fed: int           # input ids copied on the device from the previous step


class ModelRunner:
    def __init__(self, model: LlamaFamilyModel, spec: KVCacheSpec, kv_cache: torch.Tensor,
                 ops: KernelOps, device: torch.device, graphs: DecodeGraphs | None = None,
                 extend_graphs: ExtendGraphs | None = None):
        self.model = model
        self.spec = spec
        self.kv_cache = kv_cache      # [num_blocks, num_layers, 2, block_size, Hkv, D]
        self.ops = ops
        self.device = device
        self.graphs = graphs
        self.extend_graphs = extend_graphs

    def prepare(self, out: SchedulerOutput, pending_rows: dict[str, int] | None = None
                ) -> HostBatch:
        return build_host_batch(out, self.spec.block_size, pending_rows)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput, pending_rows: dict[str, int] | None = None,
                prev_tokens: torch.Tensor | None = None) -> StepLogits:
        """Launch the step. `pending_rows` / `prev_tokens`: placeholder token ids of this step
        come from rows of the previous step's sampled tokens [n_prev] (still on the device)."""
        b = self.prepare(out, pending_rows)
        if len(b.ph_dst) and prev_tokens is None:
            raise ValueError("the step has placeholder tokens but no previous step's tokens")
        rows = b.sampling_rows
        if self.graphs is not None and b.decode_only and self.graphs.bucket(b.num_seqs, b.width):
            logits = self.graphs.run(b, prev_tokens)                      # [num_seqs, V]
            if len(rows) != b.num_seqs:   # a one-token prefill chunk that does not sample
                logits = logits[torch.tensor(rows, device=self.device)]
            return StepLogits(logits, rows, True, len(b.ph_dst))
        eg = self.extend_graphs
        if eg is not None and not b.decode_only and eg.bucket(b.num_tokens, b.num_seqs,
                                                              b.width):
            logits = eg.run(b, prev_tokens)                               # [num_seqs, V]
            if len(rows) != b.num_seqs:   # prefill chunks that do not sample yet
                logits = logits[torch.tensor(rows, dtype=torch.long, device=self.device)]
            return StepLogits(logits, rows, True, len(b.ph_dst))
        d = upload(b, self.device)
        if len(b.ph_dst):
            d.input_ids.index_copy_(0, d.ph_dst, prev_tokens.index_select(0, d.ph_src))
        meta = AttentionMetadata(slot_mapping=d.slot_mapping, query_start_loc=d.query_start_loc,
                                 seq_lens=d.seq_lens, block_tables=d.block_tables,
                                 max_query_len=b.max_query_len, decode_only=b.decode_only)
        hidden = self.model(d.input_ids, d.positions, self.kv_cache, meta, self.ops)  # [T, H]
        if not rows:
            return StepLogits(torch.empty(0, device=self.device), [], False, len(b.ph_dst))
        return StepLogits(self.model.compute_logits(hidden[d.logits_indices]), rows, False,
                          len(b.ph_dst))
