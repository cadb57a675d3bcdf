"""CUDA graphs for decode steps: one graph per (batch size, block-table width) bucket.

A decode step of the Llama-3-8B shape launches ~430 kernels; replaying them from a graph removes
the host's launch work from the step. A step pads its batch up to the next bucket (`pad_batch`:
padding rows write no K/V and attend to one token of block 0), packs its inputs (ids, positions,
slots, placeholder source rows, sequence lengths, block table) into one pinned int32 buffer
(`StagingLayout`), moves them with one non-blocking copy into the static staging buffer the
graphs read, copies the previous step's sampled tokens into a static buffer when some ids are
placeholders, and replays. The graph itself takes each placeholder's id from those tokens, runs
the model and writes the logits of every row into one static buffer. Per step the stream holds
one host-to-device copy, at most one small device copy and the graph.

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

import numpy as np
import torch

from kernels import KernelOps
from runtime.models.llama import AttentionMetadata, LlamaFamilyModel
from runtime.staging_ring import StagingRing
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


def require_capturable(option: str, device: torch.device, backend: str) -> None:
    """Raise unless graphs can be captured here: a CUDA device and the Triton kernels (the torch
    references read tensors back, which a capture forbids). `option` names the switch."""
    if device.type != "cuda":
        raise ValueError(f"{option} needs a CUDA device; the engine runs on {device}")
    if backend != "triton":
        raise ValueError(f"{option} needs the triton kernel backend (the torch references "
                         "synchronize with the host, which a graph capture forbids)")


class GraphCapture:
    """A graph runner's warm-up and capture: each forward runs once eagerly (compiling kernels,
    sizing workspaces), then is captured into one memory pool shared by the runner's graphs.
    Without capture (a CPU device, `enabled=False`) only the eager run happens."""

    def __init__(self, device: torch.device, enabled: bool):
        self.device, self.enabled = device, enabled
        self._reserved = torch.cuda.memory_reserved(device) if enabled else 0
        self.pool = torch.cuda.graph_pool_handle() if enabled else None

    def record(self, forward: Callable[[], None]) -> "torch.cuda.CUDAGraph | None":
        forward()
        if not self.enabled:
            return None
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            forward()
        return graph

    def pool_bytes(self) -> int:
        """Growth of the allocator's reserved device memory since this capture began: the pool's
        size, or less where the allocator gave cached memory back meanwhile (an H100 log showed
        -14.56 GiB before this floor at 0); 0 without capture."""
        if not self.enabled:
            return 0
        torch.cuda.synchronize(self.device)
        return max(0, torch.cuda.memory_reserved(self.device) - self._reserved)


@dataclass
class GraphStats:
    num_graphs: int
    batch_sizes: tuple[int, ...]
    widths: tuple[int, ...]
    capture_s: float
    pool_bytes: int           # device memory the graphs' pool holds after capture


@dataclass(frozen=True)
class StagingLayout:
    """Where a (batch, width) bucket's inputs lie in the int32 staging buffer (offsets in int32
    words; int64 fields take two): ids, positions, slots and placeholder source rows (int64),
    then sequence lengths and the block table (int32). One copy moves a step's inputs."""
    batch: int
    width: int

    @property
    def size(self) -> int:
        return 9 * self.batch + self.batch * self.width

    def split(self, buf):
        """Views of `buf` (a torch tensor or numpy array of int32): ids, positions, slots, src
        [B] int64; seq_lens [B] int32; block table [B, W] int32."""
        b = self.batch
        as64 = (lambda x: x.view(torch.int64)) if isinstance(buf, torch.Tensor) \
            else (lambda x: x.view(np.int64))
        return (as64(buf[0:2 * b]), as64(buf[2 * b:4 * b]), as64(buf[4 * b:6 * b]),
                as64(buf[6 * b:8 * b]), buf[8 * b:9 * b],
                buf[9 * b:9 * b + b * self.width].reshape(b, self.width))


class DecodeGraphs:
    def __init__(self, model: LlamaFamilyModel, kv_cache: torch.Tensor, ops: KernelOps,
                 device: torch.device, batch_sizes: tuple[int, ...], widths: tuple[int, ...],
                 capture: bool = True, max_prev_rows: int | None = None):
        if capture and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.model, self.kv_cache, self.ops, self.device = model, kv_cache, ops, device
        self.batch_sizes, self.widths = tuple(sorted(batch_sizes)), tuple(sorted(widths))
        self.capture_enabled = capture
        bmax, vocab = self.batch_sizes[-1], model.arch.vocab_size
        self.ring = StagingRing(StagingLayout(bmax, self.widths[-1]).size, device)
        self.stage = self.ring.stage                                             # [words]
        self.prev = torch.zeros(max(bmax, max_prev_rows or 0), dtype=torch.int64,
                                device=device)                                   # [rows]
        self.query_start_loc = torch.arange(bmax + 1, dtype=torch.int32, device=device)
        self.logits = torch.zeros((bmax, vocab), dtype=torch.float32, device=device)  # [B, V]
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
        ids, pos, slots, src, seq_lens, table = StagingLayout(batch, width).split(self.stage)
        # placeholder ids come from the previous step's tokens on the device
        ids = torch.where(src >= 0, self.prev.index_select(0, src.clamp(min=0)), ids)  # [B]
        meta = AttentionMetadata(slot_mapping=slots, query_start_loc=self.query_start_loc[:batch + 1],
                                 seq_lens=seq_lens, block_tables=table, max_query_len=1,
                                 decode_only=True)
        hidden = self.model(ids, pos, self.kv_cache, meta, self.ops)          # [B, hidden]
        self.logits[:batch].copy_(self.model.compute_logits(hidden))         # [B, V]

    def _fill_padding(self, batch: int, width: int) -> None:
        """Inputs that write no K/V and read one token of block 0 (for warm-up and capture)."""
        ids, pos, slots, src, seq_lens, table = StagingLayout(batch, width).split(self.stage)
        for x, v in ((ids, 0), (pos, 0), (slots, -1), (src, -1), (seq_lens, 1), (table, 0)):
            x.fill_(v)

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
        cap = GraphCapture(self.device, self.capture_enabled)
        for width in reversed(self.widths):
            for batch in reversed(self.batch_sizes):
                self._fill_padding(batch, width)
                graph = cap.record(lambda: self._forward(batch, width))
                if graph is not None:
                    self._graphs[(batch, width)] = graph
            if progress is not None:
                progress(f"captured width {width}: {len(self.batch_sizes)} batch sizes")
        self.stats = GraphStats(len(self._graphs), self.batch_sizes, self.widths,
                                time.perf_counter() - t0, cap.pool_bytes())
        return self.stats

    def run(self, b: HostBatch, prev_tokens: torch.Tensor | None) -> torch.Tensor:
        """Run a decode batch; returns logits [b.num_seqs, vocab] float32, a view of the static
        output that the next step overwrites (sample from it before then)."""
        bucket = self.bucket(b.num_seqs, b.width)
        if bucket is None or not b.decode_only:
            raise ValueError(f"no graph bucket for {b.num_seqs} sequences x {b.width} blocks")
        batch, width = bucket
        p = pad_batch(b, batch, width)
        layout = StagingLayout(batch, width)
        host = self.ring.host()
        ids, pos, slots, src, seq_lens, table = layout.split(host.numpy())
        ids[:], pos[:], slots[:] = p.input_ids.numpy(), p.positions.numpy(), p.slot_mapping.numpy()
        seq_lens[:], table[:] = p.seq_lens.numpy(), p.block_tables.numpy()
        src[:] = -1
        src[p.ph_dst.numpy()] = p.ph_src.numpy()
        self.ring.send(layout.size)
        if len(p.ph_dst):
            self.prev[:prev_tokens.shape[0]].copy_(prev_tokens)
        graph = self._graphs.get((batch, width))
        if graph is not None:
            graph.replay()
        else:
            self._forward(batch, width)
        return self.logits[:b.num_seqs]
