"""Configuration dataclasses of the engine and of one request's sampling."""
from __future__ import annotations

from dataclasses import dataclass, field

# Tokens per KV page where `EngineConfig.block_size` is None. On CUDA 64: the paged prefill
# kernel loads a page per TMA box (an H100 ran it at 0.888x SDPA against 0.837x at 16-token
# pages; decode and the tier copies held their bandwidth), and the host's per-block work
# (prefix hashes, tier indexes, the KV controller's commands) falls fourfold: an H100 agent
# replay's longest command pass between steps went from 14 to 5 ms (median over its progress
# lines) and its resumed-turn TTFT p50 from 72 to 62 ms, one run each (bench/kernels_notes.md).
# A resumed turn recomputes its last partial page: 32 tokens on average instead of 8. Elsewhere
# 16: no TMA, and the small models a CPU serves see short prompts, which 64-token pages would
# leave mostly uncached.
CUDA_BLOCK_SIZE = 64
CPU_BLOCK_SIZE = 16

# The largest step replayed from an extend graph by default: the agent policy's step cap
# (resume_step_tokens), so a capped step is a graph. On an H100 agent replay (one run each,
# 2026-12-07) the steps carrying resumed turns' first tokens had a median of 535-662 tokens:
# with graphs up to 512, 38% of them ran from a graph and read back 39 ms after launch; up to
# 1024, 68% and 27 ms. Padding a 600-token step to 1024 costs less than an eager launch.
EXTEND_GRAPH_MAX_TOKENS = 1024


def default_block_size(device_type: str) -> int:
    """The page size an engine on a device of this type ("cuda", "cpu", ...) gets by default."""
    return CUDA_BLOCK_SIZE if device_type == "cuda" else CPU_BLOCK_SIZE


@dataclass
class EngineConfig:
    model: str = "tiny"                   # a Hugging Face model folder, or "tiny"
    device: str = "auto"                  # "auto" (cuda if present), "cpu", "cuda", "cuda:1"
    dtype: str = "auto"                   # "auto" (bf16 on cuda, fp32 on cpu), fp32, fp16, bf16
    block_size: int | None = None         # tokens per KV page; None: default_block_size()
    num_gpu_blocks: int | None = None     # overrides the memory fraction when set
    gpu_memory_fraction: float = 0.85     # of total device memory, for weights + KV
    cpu_kv_blocks_default: int = 2048     # KV blocks on a CPU "device" when num_gpu_blocks unset
    max_num_batched_tokens: int = 2048    # token budget per step
    max_num_seqs: int = 64                # sequences per step
    max_model_len: int | None = None      # defaults to the model's max_position_embeddings
    enable_prefix_caching: bool = True
    kernel_backend: str = "auto"          # "auto" (triton on cuda), "triton", "torch"
    seed: int = 0
    # The step loop (see runtime/cuda_graphs.py and docs/design.md); None = on for CUDA devices
    cuda_graphs: bool | None = None       # decode steps replayed from CUDA graphs
    cuda_graph_batch_sizes: tuple[int, ...] | None = None   # capture buckets; None = default
    async_scheduling: bool | None = None  # launch step N+1 before step N's tokens are read
    # small prefill / extend / mixed steps replayed from CUDA graphs (runtime/extend_graphs.py);
    # None = on wherever the decode graphs are (a 32-token extend on a 4K context of an 8B
    # model: 16.9 ms eager, 11.4 ms from a graph on an H100)
    extend_graphs: bool | None = None
    # the largest of those steps, in tokens (a power of two >= 16; buckets 16, 32, ... up to it
    # and the step budget): each bucket is one more graph per sequence bucket
    extend_graph_max_tokens: int = EXTEND_GRAPH_MAX_TOKENS
    stats_log_interval_s: float = 10.0    # a progress line this often while busy (0: none)
    # log where the time went for requests whose first token took this long (None: never;
    # runtime/first_token_log.py)
    first_token_log_s: float | None = None
    # KV tiers below the GPU (see kvstore/config.py)
    cpu_cache_gb: float = 0.0
    disk_cache_path: str | None = None
    disk_cache_gb: float = 0.0

    def __post_init__(self) -> None:
        if self.block_size is not None and (self.block_size <= 0
                                            or self.block_size & (self.block_size - 1)):
            raise ValueError(f"block_size must be a positive power of two, got {self.block_size}")
        if self.max_num_batched_tokens <= 0:
            raise ValueError("max_num_batched_tokens must be positive")
        if self.max_num_seqs <= 0:
            raise ValueError("max_num_seqs must be positive")
        if self.stats_log_interval_s < 0:
            raise ValueError("stats_log_interval_s must be >= 0 (0 turns the progress line off)")
        if self.first_token_log_s is not None and self.first_token_log_s < 0:
            raise ValueError("first_token_log_s must be >= 0 (None logs no first tokens)")
        if not 0.0 < self.gpu_memory_fraction <= 1.0:
            raise ValueError("gpu_memory_fraction must be in (0, 1]")
        if self.num_gpu_blocks is not None and self.num_gpu_blocks <= 0:
            raise ValueError("num_gpu_blocks must be positive")
        if self.extend_graph_max_tokens < 16 or \
                self.extend_graph_max_tokens & (self.extend_graph_max_tokens - 1):
            raise ValueError("extend_graph_max_tokens must be a power of two >= 16, got "
                             f"{self.extend_graph_max_tokens!r}")
        if self.cuda_graph_batch_sizes is not None:
            sizes = tuple(self.cuda_graph_batch_sizes)
            if not sizes or any(not isinstance(b, int) or b <= 0 for b in sizes):
                raise ValueError("cuda_graph_batch_sizes must be positive integers, got "
                                 f"{self.cuda_graph_batch_sizes!r}")
            self.cuda_graph_batch_sizes = tuple(sorted(set(sizes)))


@dataclass
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 0.0              # 0 = greedy
    top_k: int = 0                        # 0 = off
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)   # stop strings (need a tokenizer)
    ignore_eos: bool = False
    logprobs: bool = False                # return the logprob of each chosen token
    top_logprobs: int = 0                 # also the k most likely tokens at each position

    def validate(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 <= self.top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be in [0, 20], got {self.top_logprobs}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
