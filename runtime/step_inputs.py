"""One step's flattened batch on the host, built with array operations, and its upload.

`build_host_batch` turns a `SchedulerOutput` into index arrays (one Python iteration per request,
none per token). A token whose id is not known yet on the host (the one the previous step is
still sampling on the device, see runtime/inflight.py) is a placeholder: its input id is copied
on the device from the previous step's sampled tokens (`ph_dst` <- `ph_src`). `pad_batch` pads a
decode batch to a CUDA-graph bucket; `upload` copies everything to the device through pinned
memory without blocking the host.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from runtime.scheduler import SchedulerOutput

PLACEHOLDER = -1   # the id a request holds for a token that is still being sampled


@dataclass
class HostBatch:
    input_ids: torch.Tensor        # [T] int64; 0 at placeholders (patched on the device)
    positions: torch.Tensor        # [T] int64
    slot_mapping: torch.Tensor     # [T] int64: block * block_size + offset; -1 = write nothing
    query_start_loc: torch.Tensor  # [S + 1] int32
    seq_lens: torch.Tensor         # [S] int32: context length including this step's tokens
    block_tables: torch.Tensor     # [S, W] int32
    logits_indices: torch.Tensor   # [num_sampling] int64: last token of each sampling request
    ph_dst: torch.Tensor           # [P] int64: token index whose id the previous step samples
    ph_src: torch.Tensor           # [P] int64: its row in the previous step's sampled tokens
    sampling_rows: list[int]       # index into `scheduled` of each sampling request
    max_query_len: int
    num_seqs: int                  # real sequences (padding rows come after them)
    num_tokens: int                # real tokens

    @property
    def decode_only(self) -> bool:
        return self.max_query_len == 1

    @property
    def width(self) -> int:
        return int(self.block_tables.shape[1])


@dataclass
class DeviceBatch:
    """The tensors of a HostBatch on the device (same names, same shapes)."""
    input_ids: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    logits_indices: torch.Tensor
    ph_dst: torch.Tensor
    ph_src: torch.Tensor


def build_host_batch(out: SchedulerOutput, block_size: int,
                     pending_rows: dict[str, int] | None = None) -> HostBatch:
    """`pending_rows` maps a request id to its row in the previous step's sampled tokens, for
    requests whose last token id is still a placeholder."""
    pending_rows = pending_rows or {}
    ids: list[int] = []
    q_lens: list[int] = []
    ctx: list[int] = []
    tables: list[list[int]] = []
    rows: list[int] = []
    ph_dst: list[int] = []
    ph_src: list[int] = []
    for i, s in enumerate(out.scheduled):
        req = s.request
        start = len(ids)
        ids.extend(req.all_token_ids[s.num_computed_before:s.num_computed_before + s.num_new_tokens])
        q_lens.append(s.num_new_tokens)
        ctx.append(s.num_computed_before)
        tables.append(req.block_ids)
        if s.samples:
            rows.append(i)
        src = pending_rows.get(req.request_id)
        last = req.num_tokens - 1
        if src is not None and s.num_computed_before <= last < s.num_computed_before + s.num_new_tokens:
            ph_dst.append(start + last - s.num_computed_before)
            ph_src.append(src)
    ids_np = np.asarray(ids, dtype=np.int64)                                     # [T]
    holes = np.flatnonzero(ids_np == PLACEHOLDER)
    if len(holes) != len(ph_dst) or (len(holes) and not np.array_equal(holes, np.sort(ph_dst))):
        raise RuntimeError(f"step has {len(holes)} placeholder tokens but {len(ph_dst)} pending "
                           "samples to fill them")
    ids_np[holes] = 0
    num_seqs = len(q_lens)
    q_np = np.asarray(q_lens, dtype=np.int64)                                    # [S]
    ctx_np = np.asarray(ctx, dtype=np.int64)                                     # [S]
    lens = np.fromiter((len(t) for t in tables), dtype=np.int64, count=num_seqs)  # [S]
    width = int(lens.max())
    table = np.zeros((num_seqs, width), dtype=np.int32)                          # [S, W]
    table[np.arange(width)[None, :] < lens[:, None]] = np.fromiter(
        itertools.chain.from_iterable(tables), dtype=np.int32, count=int(lens.sum()))
    qsl = np.zeros(num_seqs + 1, dtype=np.int64)                                 # [S + 1]
    np.cumsum(q_np, out=qsl[1:])
    num_tokens = int(qsl[-1])
    seq_idx = np.repeat(np.arange(num_seqs), q_np)                               # [T]
    positions = np.arange(num_tokens) - qsl[seq_idx] + ctx_np[seq_idx]           # [T]
    slots = table[seq_idx, positions // block_size].astype(np.int64) * block_size \
        + positions % block_size                                                  # [T]
    logits_idx = (qsl[1:] - 1)[rows] if rows else np.zeros(0, dtype=np.int64)
    t = torch.from_numpy
    return HostBatch(
        input_ids=t(ids_np), positions=t(positions), slot_mapping=t(slots),
        query_start_loc=t(qsl.astype(np.int32)), seq_lens=t((ctx_np + q_np).astype(np.int32)),
        block_tables=t(table), logits_indices=t(np.asarray(logits_idx, dtype=np.int64)),
        ph_dst=t(np.asarray(ph_dst, dtype=np.int64)), ph_src=t(np.asarray(ph_src, dtype=np.int64)),
        sampling_rows=rows, max_query_len=int(q_np.max()), num_seqs=num_seqs,
        num_tokens=num_tokens)


def pad_batch(b: HostBatch, batch: int, width: int) -> HostBatch:
    """A decode batch padded to `batch` sequences and `width` block-table columns. Padding rows
    write no K/V (slot -1) and attend to one token of block 0; their outputs are never read."""
    if not b.decode_only:
        raise ValueError("only decode batches (one token per sequence) are padded")
    if batch < b.num_seqs or width < b.width:
        raise ValueError(f"cannot pad {b.num_seqs} x {b.width} to {batch} x {width}")
    extra = batch - b.num_seqs

    def grow(x: torch.Tensor, fill: int) -> torch.Tensor:
        return torch.cat([x, x.new_full((extra,), fill)]) if extra else x

    table = torch.zeros((batch, width), dtype=torch.int32)
    table[:b.num_seqs, :b.width] = b.block_tables
    return replace(b, input_ids=grow(b.input_ids, 0), positions=grow(b.positions, 0),
                   slot_mapping=grow(b.slot_mapping, -1),
                   query_start_loc=torch.arange(batch + 1, dtype=torch.int32),
                   seq_lens=grow(b.seq_lens, 1), block_tables=table)


def upload(b: HostBatch, device: torch.device) -> DeviceBatch:
    """Non-blocking copies through pinned memory (plain copies on a CPU device). The pinned
    buffers come from torch's caching host allocator, which reuses one only after its copy ran."""
    pin = device.type == "cuda"
    out = {}
    for f in fields(DeviceBatch):
        x = getattr(b, f.name)
        out[f.name] = x.pin_memory().to(device, non_blocking=True) if pin else x.to(device)
    return DeviceBatch(**out)
