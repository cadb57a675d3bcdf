"""CUDA graphs for small prefill, extend and mixed steps: one graph per (tokens, sequences) bucket.

A resumed agent turn appends a tool result of tens to hundreds of tokens to a long cached
context: its step (often with decoding turns beside it) runs a few ms of GPU work, but eagerly
the host launches ~400 kernels for it through Python, which took most of such a turn's 25-40 ms
to first token on an H100 (agent-h100-20261206f/g). A step of at most `max(token_buckets)`
tokens (`EngineConfig.extend_graph_max_tokens`, 1024 by default) and `max(seq_buckets)`
sequences is padded up to the next bucket and replayed instead.

Both prefill attention kernels take their launch shape from two host integers, the longest
query and the number of sequences; everything else (query starts, context lengths, block
tables) they read from device tensors. So a graph captured with the longest query equal to the
bucket's token count serves every step that fits it: tiles past a sequence's queries exit at
once. Padding tokens write no K/V (slot -1) and belong to no sequence; padding sequences have
no query tokens and one context token in block 0. Their rows are never read. The block table
has the model's full width (the prefill kernels do not size anything from it), so a bucket is
two numbers. The logits of every bucket sequence's last token land in one static buffer; the
runner keeps the rows that sample.

Inputs travel as in `runtime/cuda_graphs.py`: packed into one pinned int32 buffer of a ring
of three, one non-blocking copy into the static staging buffer, the placeholder ids taken on the
device from the previous step's tokens. Without capture (`capture=False`, and on a CPU device)
`run` executes the same forward eagerly on the same static buffers, which the CPU tests compare
with the plain eager step.
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
from runtime.config import EXTEND_GRAPH_MAX_TOKENS
from runtime.cuda_graphs import GraphCapture, require_capturable
from runtime.models.llama import AttentionMetadata, LlamaFamilyModel
from runtime.staging_ring import StagingRing
from runtime.step_inputs import HostBatch

log = logging.getLogger(__name__)

TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512)
SEQ_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# the largest token bucket by default (EngineConfig.extend_graph_max_tokens; why 1024: config.py)
DEFAULT_MAX_TOKENS = EXTEND_GRAPH_MAX_TOKENS


def token_buckets(max_tokens: int = DEFAULT_MAX_TOKENS) -> tuple[int, ...]:
    """Powers of two from 16 up to `max_tokens` (itself a power of two >= 16)."""
    if max_tokens < TOKEN_BUCKETS[0] or max_tokens & (max_tokens - 1):
        raise ValueError(f"the largest extend graph must be a power of two >= {TOKEN_BUCKETS[0]} "
                         f"tokens, got {max_tokens}")
    return tuple(1 << k for k in range(TOKEN_BUCKETS[0].bit_length() - 1,
                                       max_tokens.bit_length()))


def default_buckets(max_num_batched_tokens: int, max_num_seqs: int,
                    max_tokens: int = DEFAULT_MAX_TOKENS
                    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Token and sequence buckets within the engine's step limits (token buckets up to
    `max_tokens`)."""
    tokens = tuple(t for t in token_buckets(max_tokens) if t <= max_num_batched_tokens)
    seqs = tuple(s for s in SEQ_BUCKETS if s <= max_num_seqs)
    return tokens, seqs


def extend_graph_buckets(enabled: bool | None, device: torch.device, backend: str,
                         max_num_batched_tokens: int, max_num_seqs: int,
                         decode_graphs: bool = True, max_tokens: int = DEFAULT_MAX_TOKENS
                         ) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The engine's extend graph buckets, or None when they are off (EngineConfig.extend_graphs;
    None: on wherever the decode graphs are on and a bucket fits the step budget); raises when
    they are asked for where they cannot be captured."""
    if enabled is None:
        enabled = decode_graphs and max_num_batched_tokens >= TOKEN_BUCKETS[0]
    if not enabled:
        return None
    require_capturable("extend_graphs", device, backend)
    tokens, seqs = default_buckets(max_num_batched_tokens, max_num_seqs, max_tokens)
    if not tokens:
        raise ValueError(f"extend_graphs needs max_num_batched_tokens >= {TOKEN_BUCKETS[0]}, "
                         f"got {max_num_batched_tokens}")
    return tokens, seqs


@dataclass(frozen=True)
class ExtendLayout:
    """Where a (tokens, seqs) bucket's inputs lie in the int32 staging buffer, in int32 words:
    ids, positions, slots, placeholder sources [T] and logits rows [S] as int64 (two words
    each), then query starts [S + 1], context lengths [S] and the block table [S, W] as int32."""
    tokens: int
    seqs: int
    width: int

    @property
    def size(self) -> int:
        t, s = self.tokens, self.seqs
        return 8 * t + 2 * s + (s + 1) + s + s * self.width

    def split(self, buf):
        """Views of `buf` (torch tensor or numpy array of int32): ids, positions, slots, src [T]
        int64; logits rows [S] int64; query starts [S + 1], seq_lens [S], table [S, W] int32."""
        t, s, w = self.tokens, self.seqs, self.width
        as64 = (lambda x: x.view(torch.int64)) if isinstance(buf, torch.Tensor) \
            else (lambda x: x.view(np.int64))
        o = 8 * t + 2 * s
        return (as64(buf[0:2 * t]), as64(buf[2 * t:4 * t]), as64(buf[4 * t:6 * t]),
                as64(buf[6 * t:8 * t]), as64(buf[8 * t:o]), buf[o:o + s + 1],
                buf[o + s + 1:o + 2 * s + 1], buf[o + 2 * s + 1:o + 2 * s + 1 + s * w].reshape(s, w))


@dataclass
class ExtendGraphStats:
    num_graphs: int
    token_buckets: tuple[int, ...]
    seq_buckets: tuple[int, ...]
    capture_s: float
    pool_bytes: int


class ExtendGraphs:
    def __init__(self, model: LlamaFamilyModel, kv_cache: torch.Tensor, ops: KernelOps,
                 device: torch.device, token_buckets: tuple[int, ...],
                 seq_buckets: tuple[int, ...], width: int, capture: bool = True,
                 max_prev_rows: int | None = None):
        if capture and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        if not token_buckets or not seq_buckets:
            raise ValueError("extend graphs need at least one token and one sequence bucket")
        self.model, self.kv_cache, self.ops, self.device = model, kv_cache, ops, device
        self.token_buckets = tuple(sorted(token_buckets))
        self.seq_buckets = tuple(sorted(seq_buckets))
        self.width = width
        self.capture_enabled = capture
        tmax, smax = self.token_buckets[-1], self.seq_buckets[-1]
        self.ring = StagingRing(ExtendLayout(tmax, smax, width).size, device)
        self.stage = self.ring.stage                                             # [words]
        self.prev = torch.zeros(max(smax, max_prev_rows or 0), dtype=torch.int64,
                                device=device)                                   # [rows]
        self.logits = torch.zeros((smax, model.arch.vocab_size), dtype=torch.float32,
                                  device=device)                                 # [S, V]
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.stats: ExtendGraphStats | None = None

    def buckets(self) -> list[tuple[int, int]]:
        """Every (tokens, seqs) bucket: no more sequences than tokens."""
        return [(t, s) for t in self.token_buckets for s in self.seq_buckets if s <= t]

    def bucket(self, num_tokens: int, num_seqs: int, width: int) -> tuple[int, int] | None:
        """The smallest (tokens, seqs) bucket holding this step, or None."""
        i = bisect.bisect_left(self.token_buckets, num_tokens)
        j = bisect.bisect_left(self.seq_buckets, num_seqs)
        if i == len(self.token_buckets) or j == len(self.seq_buckets) or width > self.width:
            return None
        t, s = self.token_buckets[i], self.seq_buckets[j]
        return (t, s) if s <= t else None

    def _forward(self, tokens: int, seqs: int) -> None:
        ids, pos, slots, src, rows, qsl, seq_lens, table = \
            ExtendLayout(tokens, seqs, self.width).split(self.stage)
        ids = torch.where(src >= 0, self.prev.index_select(0, src.clamp(min=0)), ids)  # [T]
        meta = AttentionMetadata(slot_mapping=slots, query_start_loc=qsl, seq_lens=seq_lens,
                                 block_tables=table, max_query_len=tokens, decode_only=False)
        hidden = self.model(ids, pos, self.kv_cache, meta, self.ops)             # [T, hidden]
        self.logits[:seqs].copy_(self.model.compute_logits(hidden.index_select(0, rows)))

    def _fill_padding(self, tokens: int, seqs: int) -> None:
        """Inputs of sequences with no query tokens, writing no K/V (warm-up and capture)."""
        ids, pos, slots, src, rows, qsl, seq_lens, table = \
            ExtendLayout(tokens, seqs, self.width).split(self.stage)
        for x, v in ((ids, 0), (pos, 0), (slots, -1), (src, -1), (rows, 0), (qsl, 0),
                     (seq_lens, 1), (table, 0)):
            x.fill_(v)

    @torch.inference_mode()
    def capture(self, progress: Callable[[str], None] | None = None) -> ExtendGraphStats:
        """Warm up and capture every bucket, largest first, into one shared memory pool."""
        t0 = time.perf_counter()
        cap = GraphCapture(self.device, self.capture_enabled)
        for tokens, seqs in sorted(self.buckets(), reverse=True):
            self._fill_padding(tokens, seqs)
            graph = cap.record(lambda: self._forward(tokens, seqs))
            if graph is not None:
                self._graphs[(tokens, seqs)] = graph
        self.stats = ExtendGraphStats(len(self._graphs), self.token_buckets, self.seq_buckets,
                                      time.perf_counter() - t0, cap.pool_bytes())
        if progress is not None:
            progress(f"captured {self.stats.num_graphs} extend graphs in "
                     f"{self.stats.capture_s:.1f} s")
        return self.stats

    def run(self, b: HostBatch, prev_tokens: torch.Tensor | None) -> torch.Tensor:
        """Run a step that fits a bucket; returns the logits of each sequence's last token
        [b.num_seqs, vocab] float32, a view of the static output the next step overwrites."""
        bucket = self.bucket(b.num_tokens, b.num_seqs, b.width)
        if bucket is None:
            raise ValueError(f"no extend graph bucket for {b.num_tokens} tokens in "
                             f"{b.num_seqs} sequences x {b.width} blocks")
        tokens, seqs = bucket
        layout = ExtendLayout(tokens, seqs, self.width)
        _fill_host(b, *layout.split(self.ring.host().numpy()))
        self.ring.send(layout.size)
        if len(b.ph_dst):
            self.prev[:prev_tokens.shape[0]].copy_(prev_tokens)
        graph = self._graphs.get(bucket)
        if graph is not None:
            graph.replay()
        else:
            self._forward(tokens, seqs)
        return self.logits[:b.num_seqs]


def _fill_host(b: HostBatch, ids, pos, slots, src, rows, qsl, seq_lens, table) -> None:
    """A step's inputs into a bucket's host views (numpy), padding after the real ones."""
    t, s = b.num_tokens, b.num_seqs
    ids[:t], ids[t:] = b.input_ids.numpy(), 0
    pos[:t], pos[t:] = b.positions.numpy(), 0
    slots[:t], slots[t:] = b.slot_mapping.numpy(), -1
    src[:] = -1
    src[b.ph_dst.numpy()] = b.ph_src.numpy()
    starts = b.query_start_loc.numpy()
    qsl[:s + 1], qsl[s + 1:] = starts, t
    rows[:s], rows[s:] = starts[1:].astype(np.int64) - 1, 0
    seq_lens[:s], seq_lens[s:] = b.seq_lens.numpy(), 1
    # a row is read only up to its context's last block: older entries past that stay, and a
    # padding sequence reads its first entry alone
    table[:s, :b.width] = b.block_tables.numpy()
    table[s:, 0] = 0
