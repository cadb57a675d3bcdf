"""The engine's side of a step's results: tokens read back, stop checks, final outputs.

Mixed into `runtime.engine.Engine` (uses its scheduler, requests, stats, tokenizer, config and
the step in flight). `_complete_inflight` turns the launched step's sampled tokens into deltas;
a step that failed on the device fails its requests (`_fail`), never the engine.
"""
from __future__ import annotations

import logging
import time

from runtime.first_token_log import FirstTokenStep, maybe_log
from runtime.request import FinishReason, Request, RequestOutput
from runtime.step_inputs import PLACEHOLDER

log = logging.getLogger("runtime.engine")


class StepOutputs:
    def _complete_inflight(self) -> list[RequestOutput]:
        """Wait for the launched step's tokens, put them in place of the placeholders, check
        stop conditions and return the deltas."""
        step, self._inflight = self._inflight, None
        if step is None:
            return []
        try:
            result = step.host.result() if step.host is not None else None
            if step.host is not None:
                # its tokens' copy was queued after the step: the step, and every one launched
                # before it, has finished on the device
                self.pool.finished_steps = max(self.pool.finished_steps, step.seq)
            if step.timer is not None:
                if step.prefill_tokens:
                    self.rates.observe_prefill(step.prefill_tokens, step.timer.seconds())
                else:
                    self.rates.observe_decode_step(step.timer.seconds())
        except Exception as e:
            log.exception("step failed on the device")
            return self._fail([s.request for s in step.sched.scheduled], e)
        outs: list[RequestOutput] = []
        now = time.monotonic()
        for j, req in enumerate(step.requests):
            if req.is_finished or step.pending_rows.get(req.request_id) != j:
                continue              # aborted, or finished, while its token was sampled
            tok = result.token_ids[j]
            lp = result.logprobs[j] if result.logprobs is not None else None
            if req.first_token_time is None:
                req.first_token_time = now
                self.stats.prompt_tokens_cached += req.num_cached_tokens
                maybe_log(self.config.first_token_log_s, req.request_id, req.arrival,
                          req.admitted_at, now, req.steps_before_first_token,
                          FirstTokenStep(step.sched.num_tokens, step.prefill_tokens,
                                         len(step.sched.scheduled), step.graph,
                                         step.launched_at),
                          req.num_cached_tokens, req.num_prompt_tokens)
            if req.all_token_ids[-1] != PLACEHOLDER:
                raise RuntimeError(f"request {req.request_id} lost the placeholder of its token")
            req.all_token_ids.pop()
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

    def fail_all(self, e: Exception) -> list[RequestOutput]:
        """After an error outside a step's own guard (scheduling, tier bookkeeping): end every
        unfinished request with an error, releasing its blocks, and drop the step in flight, so
        the engine starts clean from the next request on."""
        self._inflight = None
        return self._fail(list(self.requests.values()), e)

    def _fail(self, reqs: list[Request], e: Exception) -> list[RequestOutput]:
        self.stats.step_errors += 1
        outs = []
        for req in reqs:
            if req.is_finished:
                continue
            self.scheduler.finish(req, FinishReason.ERROR)
            self.requests.pop(req.request_id, None)
            if req.all_token_ids and req.all_token_ids[-1] == PLACEHOLDER:
                req.all_token_ids.pop()
            outs.append(self._final(req, [], None, error=f"engine step failed: {e}"))
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
        queue_s = None if req.admitted_at is None else req.admitted_at - req.arrival
        return RequestOutput(req.request_id, new, lps, True, req.finish_reason,
                             req.num_prompt_tokens, req.num_cached_tokens,
                             len(req.output_token_ids), error, dict(req.kv_source), queue_s,
                             dict(req.wait_reasons))
