"""The engine: requests in, tokens out, one continuous-batching step at a time.

`Engine.step()` schedules, runs one forward over every scheduled token, samples, checks stop
conditions and returns the deltas. `generate()` drives steps until a batch is done; `start()` runs
the step loop on a background thread and `submit()` streams a request's tokens to its caller.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

import torch

from kernels import get_kernel_ops
from kvstore.block_pool import BlockPool
from kvstore.spec import KVCacheSpec, dtype_from_name
from runtime.config import EngineConfig, SamplingParams
from runtime.errors import InvalidRequestError
from runtime.model_runner import ModelRunner
from runtime.models.loader import load_model, model_max_len
from runtime.prefix_loader import PrefixLoader
from runtime.tier_setup import build_tiers
from runtime.request import FinishReason, Output, Request, RequestOutput
from runtime.sampler import sample
from runtime.scheduler import Scheduler, SchedulerConfig

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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA device is available")
    return dev


class Engine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.device = resolve_device(config.device)
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
        num_blocks = self._num_blocks()
        self.kv_cache = self.kv_spec.allocate(num_blocks, self.device)
        self.pool = BlockPool(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(SchedulerConfig(config.max_num_batched_tokens,
                                                   config.max_num_seqs, config.block_size,
                                                   self.max_model_len), self.pool, self.fingerprint)
        self.ops = get_kernel_ops(config.kernel_backend, self.device)
        self.runner = ModelRunner(self.model, self.kv_spec, self.kv_cache, self.ops, self.device)
        self.tiers, self.rates = build_tiers(self)
        if self.tiers is not None:
            self.scheduler.loader = PrefixLoader(self.tiers, self.pool, config.block_size,
                                                 self.fingerprint, self.rates)
        self.requests: dict[str, Request] = {}
        self.stats = EngineStats()
        log.info("engine ready: %d KV blocks of %d tokens (%.1f MiB), max_model_len %d, %s kernels",
                 num_blocks, config.block_size, num_blocks * self.kv_spec.block_bytes / 2**20,
                 self.max_model_len, config.kernel_backend)

    def _num_blocks(self) -> int:
        if self.config.num_gpu_blocks is not None:
            return self.config.num_gpu_blocks
        if self.device.type != "cuda":
            return self.config.cpu_kv_blocks_default
        free, total = torch.cuda.mem_get_info(self.device)
        used = total - free
        headroom = 2 * 2**30          # activations, graphs and the allocator's slack
        budget = int(total * self.config.gpu_memory_fraction) - used - headroom
        n = budget // self.kv_spec.block_bytes
        if n <= 0:
            raise ValueError("no GPU memory left for the KV cache: raise gpu_memory_fraction")
        return int(n)

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
                    priority: float | None = None) -> str:
        prompt = [int(t) for t in prompt]
        self.validate(prompt, params)
        rid = request_id or uuid.uuid4().hex
        if rid in self.requests:
            raise InvalidRequestError(f"request id {rid!r} is already in use")
        gen = None
        if params.seed is not None and params.temperature > 0:
            gen = torch.Generator(device="cpu").manual_seed(params.seed)
        req = Request(rid, prompt, params, time.monotonic(), priority,
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
        return self._final(req, [], None)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    # -- the step ---------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        if self.tiers is not None:
            self.tiers.poll()
        sched = self.scheduler.schedule()
        self.stats.preemptions += len(sched.preempted)
        if sched.is_empty:
            return []
        self.stats.steps += 1
        t0 = time.perf_counter()
        try:
            logits, rows = self.runner.execute(sched)
            picks = [sched.scheduled[r].request for r in rows]
            result = sample(logits, [r.params for r in picks], [r.generator for r in picks]) \
                if rows else None
        except Exception as e:  # a failed step fails its requests, never the engine
            log.exception("step failed")
            self.stats.step_errors += 1
            outs = []
            for s in sched.scheduled:
                req = s.request
                self.scheduler.finish(req, FinishReason.ERROR)
                self.requests.pop(req.request_id, None)
                outs.append(self._final(req, [], None, error=f"engine step failed: {e}"))
            return outs
        prefill_tokens = 0
        for s in sched.scheduled:
            before = s.request.num_prompt_tokens_computed
            self.scheduler.commit_computed(s)
            self.stats.prompt_tokens_computed += s.request.num_prompt_tokens_computed - before
            if s.num_new_tokens > 1:
                prefill_tokens += s.num_new_tokens
        if prefill_tokens == sched.num_tokens:   # tokens were synced by sampling: time is real
            self.rates.observe_prefill(prefill_tokens, time.perf_counter() - t0)
        outs: list[RequestOutput] = []
        now = time.monotonic()
        for j, r in enumerate(rows):
            req = sched.scheduled[r].request
            tok = result.token_ids[j]
            lp = result.logprobs[j] if result.logprobs is not None else None
            if req.first_token_time is None:
                req.first_token_time = now
                self.stats.prompt_tokens_cached += req.num_cached_tokens
            req.append_output(tok, lp if req.params.logprobs else None)
            if req.params.top_logprobs and result.top is not None:
                req.output_top_logprobs.append(result.top[j])
            self.stats.generated_tokens += 1
            reason = self._check_stop(req, tok)
            lps = [lp] if req.params.logprobs and lp is not None else None
            if reason is None:
                outs.append(RequestOutput(req.request_id, [tok], lps, False))
            else:
                self.scheduler.finish(req, reason)
                self.requests.pop(req.request_id, None)
                outs.append(self._final(req, [tok], lps))
        return outs

    def _check_stop(self, req: Request, tok: int) -> FinishReason | None:
        if tok in req.eos_token_ids or tok in req.params.stop_token_ids:
            return FinishReason.STOP
        if req.params.stop:
            req.stop_text += self.tokenizer.decode([tok])
            if any(s in req.stop_text for s in req.params.stop):
                return FinishReason.STOP
        if len(req.output_token_ids) >= req.params.max_tokens or req.num_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return None

    def _final(self, req: Request, new: list[int], lps: list[float] | None,
               error: str | None = None) -> RequestOutput:
        return RequestOutput(req.request_id, new, lps, True, req.finish_reason,
                             req.num_prompt_tokens, req.num_cached_tokens,
                             len(req.output_token_ids), error, dict(req.kv_source))

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
