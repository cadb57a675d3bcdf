"""Turns a scheduler step into one forward over the flattened batch and returns sampling logits."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels import KernelOps
from kvstore.spec import KVCacheSpec
from runtime.models.llama import AttentionMetadata, LlamaFamilyModel
from runtime.scheduler import SchedulerOutput


@dataclass
class ModelInputs:
    input_ids: torch.Tensor        # [num_tokens] int64
    positions: torch.Tensor        # [num_tokens] int64
    meta: AttentionMetadata
    logits_indices: torch.Tensor   # [num_sampling] int64: the last token of each sampling request
    sampling_rows: list[int]       # index into `scheduled` of each sampling request


class ModelRunner:
    def __init__(self, model: LlamaFamilyModel, spec: KVCacheSpec, kv_cache: torch.Tensor,
                 ops: KernelOps, device: torch.device):
        self.model = model
        self.spec = spec
        self.kv_cache = kv_cache      # [num_blocks, num_layers, 2, block_size, Hkv, D]
        self.ops = ops
        self.device = device

    def prepare(self, out: SchedulerOutput) -> ModelInputs:
        bs = self.spec.block_size
        ids: list[int] = []
        q_lens: list[int] = []
        ctx_before: list[int] = []
        tables: list[list[int]] = []
        rows: list[int] = []
        for i, s in enumerate(out.scheduled):
            req = s.request
            ids.extend(req.all_token_ids[s.num_computed_before:s.num_computed_before + s.num_new_tokens])
            q_lens.append(s.num_new_tokens)
            ctx_before.append(s.num_computed_before)
            tables.append(req.block_ids)
            if s.samples:
                rows.append(i)
        dev = self.device
        num_seqs = len(q_lens)
        width = max(len(t) for t in tables)
        table = torch.zeros((num_seqs, width), dtype=torch.int32)
        for i, t in enumerate(tables):
            table[i, :len(t)] = torch.tensor(t, dtype=torch.int32)
        q_lens_t = torch.tensor(q_lens, dtype=torch.int64)
        ctx_t = torch.tensor(ctx_before, dtype=torch.int64)
        qsl = torch.zeros(num_seqs + 1, dtype=torch.int64)
        torch.cumsum(q_lens_t, 0, out=qsl[1:])
        num_tokens = int(qsl[-1])
        seq_idx = torch.repeat_interleave(torch.arange(num_seqs), q_lens_t)          # [T]
        positions = torch.arange(num_tokens) - qsl[seq_idx] + ctx_t[seq_idx]         # [T]
        slots = table[seq_idx, positions // bs].to(torch.int64) * bs + positions % bs  # [T]
        seq_lens = (ctx_t + q_lens_t).to(torch.int32)
        logits_idx = (qsl[1:] - 1)[rows] if rows else torch.zeros(0, dtype=torch.int64)
        meta = AttentionMetadata(
            slot_mapping=slots.to(dev, non_blocking=True),
            query_start_loc=qsl.to(torch.int32).to(dev, non_blocking=True),
            seq_lens=seq_lens.to(dev, non_blocking=True),
            block_tables=table.to(dev, non_blocking=True),
            max_query_len=max(q_lens),
            decode_only=max(q_lens) == 1)
        return ModelInputs(
            input_ids=torch.tensor(ids, dtype=torch.int64).to(dev, non_blocking=True),
            positions=positions.to(dev, non_blocking=True), meta=meta,
            logits_indices=logits_idx.to(dev, non_blocking=True), sampling_rows=rows)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> tuple[torch.Tensor, list[int]]:
        """Run the step; returns logits [num_sampling, vocab] (float32) and their rows."""
        inp = self.prepare(out)
        hidden = self.model(inp.input_ids, inp.positions, self.kv_cache, inp.meta, self.ops)
        if not inp.sampling_rows:
            return torch.empty(0, device=self.device), []
        logits = self.model.compute_logits(hidden[inp.logits_indices])
        return logits, inp.sampling_rows
