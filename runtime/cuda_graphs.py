"""CUDA graphs for decode steps: one graph per (batch size, block-table width) bucket.

A decode step of the Llama-3-8B shape launches ~450 kernels; replaying them from a graph removes
the host's launch work from the step. Every graph reads its inputs from static buffers (input
ids, positions, slot mapping, sequence lengths, one block table per width) and writes the logits
of every row into one static buffer; a step pads its batch up to the next bucket (`pad_batch`:
padding rows write no K/V and attend to one token of block 0), copies its inputs into the
buffers (non-blocking, from pinned memory), fills the placeholder ids from the previous step's
sampled tokens on the device, and replays.

Widths are bucketed as well as batch sizes because the decode kernel chooses its split count from
the block table's width (it never reads sequence lengths back): a graph captured only at the
model's full context would split a short context into mostly empty ranges. Graphs share one
memory pool and are captured largest first, so the pool holds about one step's activations.
Without capture (`capture=False`, and on a CPU device) `run` executes the same forward eagerly on
the same static buffers, which is what the CPU tests check.
"""
from __future__ import annotations

import bisect
import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch

from kernels import KernelOps
from runtime.models.llama import AttentionMetadata, LlamaFamilyModel
from runtime.step_inputs import HostBatch, pad_batch

log = logging.getLogger(__name__)


def default_batch_sizes(max_num_seqs: int) -> tuple[int, ...]:
    """1, 2, 4, 8, then every 8 to 64, every 16 to 128, every 32 beyond; max_num_seqs last."""
    sizes = [1, 2, 4] + list(range(8, 65, 8)) + list(range(80, 129, 16)) \
        + list(range(160, max_num_seqs + 1, 32))
    return tuple(sorted({b for b in sizes if b < max_num_seqs} | {max_num_seqs}))


def width_buckets(max_blocks: int, first: int = 64, ratio: int = 4) -> tuple[int, ...]:
    """Block-table widths: first, first * ratio, ... below max_blocks, then max_blocks."""
    widths, w = [], first
    while w < max_blocks:
        widths.append(w)
        w *= ratio
    return tuple(widths + [max_blocks])


@dataclass
class GraphStats:
    num_graphs: int
    batch_sizes: tuple[int, ...]
    widths: tuple[int, ...]
    capture_s: float
    pool_bytes: int           # device memory the graphs' pool holds after capture


class DecodeGraphs:
    def __init__(self, model: LlamaFamilyModel, kv_cache: torch.Tensor, ops: KernelOps,
                 device: torch.device, batch_sizes: tuple[int, ...], widths: tuple[int, ...],
                 capture: bool = True):
        if capture and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.model, self.kv_cache, self.ops, self.device = model, kv_cache, ops, device
        self.batch_sizes, self.widths = tuple(sorted(batch_sizes)), tuple(sorted(widths))
        self.capture_enabled = capture
        bmax, vocab = self.batch_sizes[-1], model.arch.vocab_size
        z = dict(device=device)
        self.input_ids = torch.zeros(bmax, dtype=torch.int64, **z)                  # [B]
        self.positions = torch.zeros(bmax, dtype=torch.int64, **z)                  # [B]
        self.slot_mapping = torch.full((bmax,), -1, dtype=torch.int64, **z)         # [B]
        self.seq_lens = torch.ones(bmax, dtype=torch.int32, **z)                    # [B]
        self.query_start_loc = torch.arange(bmax + 1, dtype=torch.int32, **z)       # [B + 1]
        self.tables = {w: torch.zeros((bmax, w), dtype=torch.int32, **z)            # [B, W]
                       for w in self.widths}
        self.logits = torch.zeros((bmax, vocab), dtype=torch.float32, **z)          # [B, V]
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.stats: GraphStats | None = None

    def bucket(self, num_seqs: int, width: int) -> tuple[int, int] | None:
        """The smallest (batch size, width) bucket holding this decode batch, or None."""
        i = bisect.bisect_left(self.batch_sizes, num_seqs)
        j = bisect.bisect_left(self.widths, width)
        if i == len(self.batch_sizes) or j == len(self.widths):
            return None
        return self.batch_sizes[i], self.widths[j]

    def _forward(self, batch: int, width: int) -> None:
        meta = AttentionMetadata(
            slot_mapping=self.slot_mapping[:batch], query_start_loc=self.query_start_loc[:batch + 1],
            seq_lens=self.seq_lens[:batch], block_tables=self.tables[width][:batch],
            max_query_len=1, decode_only=True)
        hidden = self.model(self.input_ids[:batch], self.positions[:batch], self.kv_cache, meta,
                            self.ops)                                         # [B, hidden]
        self.logits[:batch].copy_(self.model.compute_logits(hidden))         # [B, V]

    @torch.inference_mode()
    def capture(self, progress: Callable[[str], None] | None = None) -> GraphStats:
        """Warm up and capture every bucket, largest first, into one shared memory pool. The
        static inputs hold padding values meanwhile, so capture writes no K/V."""
        t0 = time.perf_counter()
        if self.capture_enabled and self.ops.backend == "triton":
            # the decode kernel's split-merge counters: one buffer per device that graphs bake
            # in, so it is made at its largest size before any capture and never replaced
            from kernels.attention_decode import _split_counters
            _split_counters(self.device, self.batch_sizes[-1] * self.model.arch.num_kv_heads)
        reserved = torch.cuda.memory_reserved(self.device) if self.capture_enabled else 0
        pool = torch.cuda.graph_pool_handle() if self.capture_enabled else None
        for width in reversed(self.widths):
            for batch in reversed(self.batch_sizes):
                self._forward(batch, width)          # compiles kernels, sizes workspaces
                if self.capture_enabled:
                    torch.cuda.synchronize(self.device)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        self._forward(batch, width)
                    self._graphs[(batch, width)] = graph
            if progress is not None:
                progress(f"captured width {width}: {len(self.batch_sizes)} batch sizes")
        if self.capture_enabled:
            torch.cuda.synchronize(self.device)
            reserved = torch.cuda.memory_reserved(self.device) - reserved
        self.stats = GraphStats(len(self._graphs), self.batch_sizes, self.widths,
                                time.perf_counter() - t0, reserved)
        return self.stats

    def run(self, b: HostBatch, prev_tokens: torch.Tensor | None) -> torch.Tensor:
        """Run a decode batch; returns logits [b.num_seqs, vocab] float32, a view of the static
        output that the next step overwrites (sample from it before then)."""
        bucket = self.bucket(b.num_seqs, b.width)
        if bucket is None or not b.decode_only:
            raise ValueError(f"no graph bucket for {b.num_seqs} sequences x {b.width} blocks")
        batch, width = bucket
        p = pad_batch(b, batch, width)
        pin = self.device.type == "cuda"
        for dst, src in ((self.input_ids, p.input_ids), (self.positions, p.positions),
                         (self.slot_mapping, p.slot_mapping), (self.seq_lens, p.seq_lens),
                         (self.tables[width], p.block_tables)):
            dst[:batch].copy_(src.pin_memory() if pin else src, non_blocking=pin)
        if len(p.ph_dst):
            dst_idx = p.ph_dst.pin_memory().to(self.device, non_blocking=True) if pin \
                else p.ph_dst
            src_idx = p.ph_src.pin_memory().to(self.device, non_blocking=True) if pin \
                else p.ph_src
            self.input_ids.index_copy_(0, dst_idx, prev_tokens.index_select(0, src_idx))
        graph = self._graphs.get((batch, width))
        if graph is not None:
            graph.replay()
        else:
            self._forward(batch, width)
        return self.logits[:b.num_seqs]
