"""The engine: requests in, tokens out, one continuous-batching step at a time.

`Engine.step()` schedules, runs one forward over every scheduled token, samples, checks stop
conditions and returns the deltas. `generate()` drives steps until a batch is done; `start()` runs
the step loop on a background thread and `submit()` streams a request's tokens to its caller.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import Callable

import torch

from kernels import get_kernel_ops
from kvstore.block_pool import BlockPool
from kvstore.spec import KVCacheSpec, dtype_from_name
from runtime.config import EngineConfig, SamplingParams, default_block_size
from runtime.cuda_graphs import (DecodeGraphs, GraphStats, default_batch_sizes,
                                 require_capturable, width_buckets)
from runtime.extend_graphs import ExtendGraphs, extend_graph_buckets
from runtime.engine_outputs import StepOutputs
from runtime.errors import InvalidRequestError
from runtime.inflight import InflightStep, StepTimer
from runtime.memory_profile import KVBudget, kv_budget
from runtime.model_runner import ModelRunner
from runtime.models.loader import load_model, model_max_len
from runtime.prefix_loader import PrefixLoader
from runtime.tier_setup import build_tiers
from runtime.request import FinishReason, Output, Request, RequestOutput
from runtime.sampler import copy_to_host, sample_on_device
from runtime.scheduler import Scheduler, SchedulerConfig
from runtime.step_log import StepLog
from runtime.step_inputs import PLACEHOLDER

log = logging.getLogger(__name__)


@dataclass
class EngineStats:
    steps: int = 0
    prompt_tokens: int = 0                # prompt tokens of every request added
    prompt_tokens_computed: int = 0       # prompt tokens actually run through the model
    prompt_tokens_cached: int = 0         # prompt tokens found in the prefix cache
    generated_tokens: int = 0
    preemptions: int = 0
    step_errors: int = 0
    graph_steps: int = 0                  # steps replayed from a CUDA graph (decode or extend)
    device_fed_tokens: int = 0            # input ids taken on the device from the step before


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA device is available")
    return dev


class Engine(StepOutputs):
    def __init__(self, config: EngineConfig):
        self.device = resolve_device(config.device)
        if config.block_size is None:
            config = replace(config, block_size=default_block_size(self.device.type))
        self.config = config
        if config.dtype == "auto":
            self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            self.dtype = dtype_from_name(config.dtype)
        torch.manual_seed(config.seed)
        loaded = load_model(config.model, self.dtype, self.device, config.seed)
        self.model, self.arch, self.fingerprint = loaded.model, loaded.arch, loaded.fingerprint
        self.model_path = loaded.path
        self.tokenizer = _try_load_tokenizer(loaded.path) if loaded.path.exists() else None
        self.eos_token_ids = _eos_ids(loaded.hf_config, self.tokenizer)
        limit = model_max_len(self.arch)
        self.max_model_len = min(config.max_model_len or limit, limit)
        self.kv_spec = KVCacheSpec(self.arch.num_layers, self.arch.num_kv_heads, self.arch.head_dim,
                                   config.block_size, self.dtype)
        self.ops = get_kernel_ops(config.kernel_backend, self.device)
        self.online = False      # set by EngineThread: requests may arrive between steps
        # set by EngineThread: called with a `done()` predicate while an online prefill step
        # runs on the device, before its tokens are read back (it serves commands meanwhile)
        self.while_in_flight: Callable[[Callable[[], bool]], None] | None = None
        self.async_scheduling = (self.device.type == "cuda" if config.async_scheduling is None
                                 else config.async_scheduling)
        graph_sizes = self._graph_batch_sizes()
        max_blocks = -(-self.max_model_len // config.block_size)
        self.kv_budget: KVBudget | None = None
        ext = extend_graph_buckets(config.extend_graphs, self.device, self.ops.backend,
                                   config.max_num_batched_tokens, config.max_num_seqs,
                                   decode_graphs=bool(graph_sizes),
                                   max_tokens=config.extend_graph_max_tokens)
        num_blocks = self._num_blocks(graph_sizes[-1] if graph_sizes else 0, max_blocks,
                                      (ext[0][-1], ext[1][-1]) if ext else None)
        self.kv_cache = self.kv_spec.allocate(num_blocks, self.device)
        self.pool = BlockPool(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(SchedulerConfig(config.max_num_batched_tokens,
                                                   config.max_num_seqs, config.block_size,
                                                   self.max_model_len), self.pool, self.fingerprint)
        self.graph_stats: GraphStats | None = None
        graphs = None
        if graph_sizes:
            graphs = DecodeGraphs(self.model, self.kv_cache, self.ops, self.device, graph_sizes,
                                  width_buckets(max_blocks), max_prev_rows=config.max_num_seqs)
            self.graph_stats = graphs.capture(progress=log.info)
            log.info("captured %d decode graphs in %.1f s (pool %.2f GiB)",
                     self.graph_stats.num_graphs, self.graph_stats.capture_s,
                     self.graph_stats.pool_bytes / 2**30)
        extend = None
        if ext is not None:
            extend = ExtendGraphs(self.model, self.kv_cache, self.ops, self.device, *ext,
                                  max_blocks, max_prev_rows=config.max_num_seqs)
            extend.capture(progress=log.info)
        self.runner = ModelRunner(self.model, self.kv_spec, self.kv_cache, self.ops, self.device,
                                  graphs, extend)
        self._inflight: InflightStep | None = None
        self.tiers, self.rates = build_tiers(self)
        if self.tiers is not None:
            chunk = -(-config.max_num_batched_tokens // config.block_size)
            self.scheduler.loader = PrefixLoader(  # a partial load leaves a chunk's blocks free
                self.tiers, self.pool, config.block_size, self.fingerprint, self.rates,
                reserve_blocks=min(chunk, self.pool.num_blocks // 8))
        self.requests: dict[str, Request] = {}
        self.stats = EngineStats()
        self.step_log = StepLog(config.stats_log_interval_s)
        self.launched_last_step = False   # whether the last step() put work on the device
        log.info("engine ready: %d KV blocks of %d tokens (%.1f MiB), max_model_len %d, %s kernels",
                 num_blocks, config.block_size, num_blocks * self.kv_spec.block_bytes / 2**20,
                 self.max_model_len, config.kernel_backend)

    def _graph_batch_sizes(self) -> tuple[int, ...]:
        """The CUDA graph buckets, or () when graphs are off (they are on by default on CUDA with
        the Triton kernels; the torch references read tensors back and cannot be captured)."""
        cfg = self.config
        capturable = self.device.type == "cuda" and self.ops.backend == "triton"
        if cfg.cuda_graphs is False or (cfg.cuda_graphs is None and not capturable):
            return ()
        require_capturable("cuda_graphs", self.device, self.ops.backend)
        sizes = tuple(b for b in (cfg.cuda_graph_batch_sizes
                                  or default_batch_sizes(cfg.max_num_seqs)) if b <= cfg.max_num_seqs)
        if not sizes:
            raise ValueError(f"every cuda_graph_batch_sizes entry exceeds max_num_seqs "
                             f"({cfg.max_num_seqs})")
        return sizes

    def _num_blocks(self, graph_batch: int, max_blocks: int,
                    extend_graph: tuple[int, int] | None = None) -> int:
        if self.config.num_gpu_blocks is not None:
            return self.config.num_gpu_blocks
        if self.device.type != "cuda":
            return self.config.cpu_kv_blocks_default
        cfg = self.config
        self.kv_budget = kv_budget(self.model, self.kv_spec, self.ops, self.device,
                                   cfg.gpu_memory_fraction, cfg.max_num_batched_tokens,
                                   cfg.max_num_seqs, graph_batch, max_blocks, extend_graph)
        return self.kv_budget.num_blocks

    # -- requests ---------------------------------------------------------------------------
    def validate(self, prompt: list[int], params: SamplingParams) -> None:
        try:
            params.validate()
        except ValueError as e:
            raise InvalidRequestError(str(e)) from e
        if not prompt:
            raise InvalidRequestError("the prompt is empty: give at least one token")
        vocab = self.arch.vocab_size
        lo, hi = min(prompt), max(prompt)
        if lo < 0 or hi >= vocab:
            bad = lo if lo < 0 else hi
            raise InvalidRequestError(f"token id {bad} is outside the vocabulary [0, {vocab})")
        if len(prompt) >= self.max_model_len:
            raise InvalidRequestError(f"the prompt has {len(prompt)} tokens; the model's context "
                                      f"is {self.max_model_len} (prompt + output must fit)")
        bs = self.config.block_size
        need = -(-min(len(prompt) + params.max_tokens, self.max_model_len) // bs)
        if need > self.pool.num_blocks:
            cap = self.pool.num_blocks * bs
            raise InvalidRequestError(f"prompt + max_tokens need {need * bs} tokens of KV cache; "
                                      f"the cache holds {cap}: lower max_tokens or the prompt")
        if params.stop and self.tokenizer is None:
            raise InvalidRequestError("stop strings need a tokenizer; this model folder has none")

    def add_request(self, prompt: list[int], params: SamplingParams, request_id: str | None = None,
                    priority: float | None = None, arrival: float | None = None) -> str:
        """Queue a request. `arrival` (time.monotonic()): when it was submitted, if earlier than
        now (the engine thread adds requests between steps: the wait for the step in flight
        counts in its queue time, as `behind`); None: now."""
        prompt = [int(t) for t in prompt]
        self.validate(prompt, params)
        rid = request_id or uuid.uuid4().hex
        if rid in self.requests:
            raise InvalidRequestError(f"request id {rid!r} is already in use")
        gen = None
        if params.seed is not None and params.temperature > 0:
            gen = torch.Generator(device="cpu").manual_seed(params.seed)
        now = time.monotonic()
        req = Request(rid, prompt, params, now if arrival is None else min(arrival, now), priority,
                      eos_token_ids=() if params.ignore_eos else self.eos_token_ids, generator=gen)
        self.requests[rid] = req
        self.scheduler.add(req)
        self.stats.prompt_tokens += len(prompt)
        return rid

    def abort(self, request_id: str) -> RequestOutput | None:
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        self.scheduler.finish(req, FinishReason.ABORT)
        if req.all_token_ids and req.all_token_ids[-1] == PLACEHOLDER:
            req.all_token_ids.pop()       # its token was still being sampled: dropped
        return self._final(req, [], None)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work() or self._inflight is not None

    # -- the step ---------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule and launch one step, then report the tokens of the step before it (async
        scheduling: the GPU runs the new step meanwhile) or of this one (otherwise)."""
        t0 = time.perf_counter()
        self.launched_last_step = False
        if self.tiers is not None:
            self.tiers.poll()
        t_poll = time.perf_counter()
        sched = self.scheduler.schedule()
        self.step_log.scheduled(time.perf_counter() - t0, t_poll - t0)
        self.stats.preemptions += len(sched.preempted)
        launched, failure = None, None
        if not sched.is_empty:
            self.stats.steps += 1
            try:
                launched = self._launch(sched)
            except Exception as e:  # a failed step fails its requests, never the engine
                log.exception("step failed")
                failure = e
        outs = self._complete_inflight()
        if failure is not None:
            return outs + self._fail([s.request for s in sched.scheduled], failure)
        if launched is not None:
            self._commit(launched)
            self._inflight = launched
            if not self.async_scheduling or (launched.prefill_tokens and self.online):
                # Online, a step that carries prefill work is long (tens of ms at real sizes)
                # next to the host work the overlap hides (~1 ms): read it back before the next
                # step is scheduled, so a turn that arrives meanwhile runs in the very next step
                # rather than behind one already queued on the GPU. Decode-only steps, and every
                # step of a batch whose requests are all in (nothing can arrive), stay overlapped.
                # While it runs, the engine thread takes the commands that may (while_in_flight).
                if self.while_in_flight is not None and launched.host is not None:
                    self.while_in_flight(launched.host.ready)
                outs += self._complete_inflight()
        self.launched_last_step = launched is not None
        if launched is not None:       # host time of the whole call, the waits for tokens too
            self.step_log.record(launched.prefill_tokens,
                                 sched.num_tokens - launched.prefill_tokens, t0)
        self._log_progress()
        return outs

    def _log_progress(self) -> None:
        sc = self.scheduler
        self.step_log.maybe_log(len(sc.running), len(sc.waiting), sc.preempted_growth,
                                sc.preempted_room, self.pool.num_free_blocks,
                                self.pool.num_blocks, sc.preempted_tokens)

    def _launch(self, sched) -> InflightStep:
        prev = self._inflight
        prefill_tokens = sum(s.num_new_tokens for s in sched.scheduled if s.num_new_tokens > 1)
        launched_at = time.monotonic()
        # prefill-only steps give the prefill rate, decode-only ones the decode step time
        timer = (StepTimer.begin(self.device) if prefill_tokens in (0, sched.num_tokens)
                 else None)
        self.pool.launched_steps += 1       # blocks released from now on may be in this step
        seq = self.pool.launched_steps
        step = self.runner.execute(sched, prev.pending_rows if prev else None,
                                   prev.device_tokens if prev else None)
        self.stats.device_fed_tokens += step.num_device_fed
        picks = [sched.scheduled[r].request for r in step.sampling_rows]
        drawn = sample_on_device(step.logits, [r.params for r in picks],
                                 [r.generator for r in picks]) if picks else None
        if timer is not None:
            timer.stop()
        self.stats.graph_steps += step.graph
        return InflightStep(sched, picks, drawn.token_ids if drawn else None,
                            copy_to_host(drawn) if drawn else None, step.graph, launched_at,
                            timer, prefill_tokens, seq=seq)

    def _commit(self, step: InflightStep) -> None:
        """Count the launched step's tokens as computed (the scheduler plans the next step on
        them) and give each sampling request a placeholder for its token."""
        for s in step.sched.scheduled:
            req = s.request
            if req.is_finished:       # stopped by the previous step's token
                continue
            before = req.num_prompt_tokens_computed
            if req.first_token_time is None:
                req.steps_before_first_token += 1
            self.scheduler.commit_computed(s)
            self.stats.prompt_tokens_computed += req.num_prompt_tokens_computed - before
        for row, req in enumerate(step.requests):
            if req.is_finished:
                continue
            req.all_token_ids.append(PLACEHOLDER)
            step.pending_rows[req.request_id] = row
            if (len(req.output_token_ids) + 1 >= req.params.max_tokens
                    or req.num_tokens >= self.max_model_len) and req in self.scheduler.running:
                # this token is its last whatever it is: schedule it no more; it keeps its
                # blocks until the token is read back and `finish` releases them
                self.scheduler.running.remove(req)

    # -- blocking batch API -----------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
                 ) -> list[Output]:
        plist = params if isinstance(params, list) else [params] * len(prompts)
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, plist)]
        reqs = {rid: self.requests[rid] for rid in ids}
        done: dict[str, RequestOutput] = {}
        while len(done) < len(ids):
            for out in self.step():
                if out.finished and out.request_id in reqs:
                    done[out.request_id] = out
        while self._inflight is not None and not self.scheduler.has_work():
            self.step()       # a step launched for requests that have stopped since
        return [Output(rid, reqs[rid].prompt_token_ids, list(reqs[rid].output_token_ids),
                       list(reqs[rid].output_logprobs) if reqs[rid].params.logprobs else None,
                       reqs[rid].finish_reason, reqs[rid].num_cached_tokens,
                       list(reqs[rid].output_top_logprobs) or None) for rid in ids]


def _try_load_tokenizer(path):
    try:
        from runtime.tokenizer import load_tokenizer
        return load_tokenizer(path)
    except Exception as e:  # a folder without tokenizer files still serves token ids
        log.info("no tokenizer loaded from %s (%s): token ids only", path, e)
        return None


def _eos_ids(hf_config, tokenizer) -> tuple[int, ...]:
    ids: set[int] = set()
    if tokenizer is not None:
        ids.update(getattr(tokenizer, "eos_token_ids", []) or [])
    eos = getattr(hf_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(x) for x in eos)
    return tuple(sorted(ids))
