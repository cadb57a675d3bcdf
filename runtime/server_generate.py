"""The Generate RPC: one turn, streamed.

1. Authenticate, check size and the tenant's concurrent turns, register the turn (so Cancel and
   CloseSession can find it).
2. On the session thread: render the input and begin the turn (`server_turns.prepare_turn`).
3. Submit the prompt to the engine thread; its `RequestStream` hands outputs to the event loop.
   Each output becomes a `TokenDelta` (token ids and the text they complete); the text is also fed
   to a `ToolCallStreamDetector`.
4. At the engine's final output: parse the turn's tool calls; a turn whose text ends in complete
   tool calls finishes as TOOL_CALL and the manager pauses the session on the first call's tool.
   The manager commits the turn (token log, record, assistant message) and the last event is a
   `TurnResult` with usage, time to first token, kv_source and the session.

A turn stopped by Cancel or CloseSession ends with FINISH_REASON_CANCELLED and is dropped
(`abort_turn`). A client that goes away (disconnect, deadline) cancels the handler: the engine
request is aborted and the turn dropped, the session stays. An engine failure drops the turn
and answers INTERNAL.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from agentkv_proto.agentkv.v1 import session_pb2 as pb
from agentkv_proto.agentkv.v1 import session_service_pb2 as api
from runtime.first_token_log import describe_server, reached
from runtime.request import FinishReason
from runtime.server_convert import (FINISH_TO_PB, kv_source_to_pb, messages_from_pb,
                                    sampling_to_dict, session_to_pb, tool_call_to_pb)
from runtime.server_turns import TurnInput, prepare_turn, read_output
from runtime.tokenizer import IncrementalDetokenizer
from runtime.tool_calls import ToolCallStreamDetector

log = logging.getLogger("agentkv.server")


def log_failure(fut) -> None:
    """Done-callback of fire-and-forget session work (the abort of a turn whose call went away)."""
    if not fut.cancelled() and fut.exception() is not None:
        log.error("session work after a cancelled call failed: %s", fut.exception())


def drop_turn(service, handle, reason: str) -> None:
    """Abort a turn on the session thread without waiting (no await: callable while the call
    is being cancelled or closed). If the server is past accepting session work (shutdown), the
    session stays ACTIVE on disk and comes back WAITING at the next start (manager.restore)."""
    try:
        fut = asyncio.get_running_loop().run_in_executor(service.deps.db,
                                                         service.manager.abort_turn, handle,
                                                         reason)
    except RuntimeError:
        log.info("session %s: turn %d left to the next start to drop (shutting down)",
                 handle.session_id, handle.turn_index)
        return
    fut.add_done_callback(log_failure)


class _TurnError(Exception):
    """The engine failed the turn (gRPC INTERNAL)."""


def turn_input(tenant: str, request) -> TurnInput:
    inp = TurnInput(tenant, request.session_id, sampling=sampling_to_dict(request.sampling))
    if request.WhichOneof("input") == "tokens":
        inp.token_ids = list(request.tokens.token_ids)
    else:
        inp.messages = messages_from_pb(request.messages.messages, "messages.messages")
    return inp


class GenerateMixin:
    """Generate for `runtime.service.SessionService`."""

    async def Generate(self, request, context):
        arrival = time.monotonic()
        try:
            tenant = self.begin_call(request, context)
            inp = turn_input(tenant, request)
            run = self.reserve_turn(tenant, request.session_id)
        except Exception as exc:
            await self.abort_with(context, exc)
            return
        try:
            try:
                prep = await self._begin(inp)
            except Exception as exc:
                await self.abort_with(context, exc)
                return
            # closing the inner generator at once when this one is closed or cancelled (a
            # client that went away while a delta was being written) drops the turn now
            turn = self._stream_turn(prep, run, arrival, context)
            async with contextlib.aclosing(turn) as events:
                async for event in events:
                    yield event
        finally:
            self.release_turn(run)

    async def _begin(self, inp: TurnInput):
        """prepare_turn on the session thread. If the call goes away meanwhile (disconnect,
        deadline), the turn that begins anyway is dropped as soon as it has begun."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.deps.db, prepare_turn, self.manager, self.tokenizer,
                                   self.limits, self.deps.default_max_tokens, inp)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            def drop(f):
                if not f.cancelled() and f.exception() is None:
                    drop_turn(self, f.result().handle, "the client went away")
            fut.add_done_callback(drop)
            raise

    async def _stream_turn(self, prep, run, arrival: float, context):
        loop = asyncio.get_running_loop()
        handle = prep.handle
        if run.cancelled:             # Cancel (or close) arrived while the turn was starting
            s = await self.db(self.manager.abort_turn, handle, "cancelled before it started")
            yield self._result(pb.FINISH_REASON_CANCELLED, prep, [], "", None, {}, s)
            return
        try:
            priority = None
            hook = self.deps.kv_hook
            if hook is not None:      # a session's later turns go ahead of first turns (aged)
                priority = hook.admission_priority(handle.session_id, handle.turn_index > 0)
                hook.turn_started(handle.session_id, prep.request_id)
            submitted = time.monotonic()
            stream = self.engine_thread.submit(prep.prompt, prep.params, prep.request_id,
                                               priority=priority, loop=loop)
        except Exception as exc:
            await self.db(self.manager.abort_turn, handle, f"engine refused it: {exc}")
            await self.abort_with(context, exc)
            return
        run.request_id = prep.request_id
        tok = self.tokenizer
        detok = IncrementalDetokenizer(tok, prep.prompt) if tok is not None else None
        detector = ToolCallStreamDetector()
        out_ids: list[int] = []
        texts: list[str] = []
        first = first_wall = None
        final = None
        try:
            async for out in stream:
                if out.new_token_ids:
                    if first is None:
                        first, first_wall = time.monotonic(), time.time()
                    out_ids += out.new_token_ids
                    text = detok.push(out.new_token_ids) if detok is not None else ""
                    if out.finished and detok is not None:
                        text += detok.flush()
                    texts.append(text)
                    detector.feed(text)
                    yield api.GenerateResponse(delta=api.TokenDelta(
                        token_ids=out.new_token_ids, text=text))
                if out.finished:
                    final = out
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away (disconnect, deadline) or the server is stopping: stop the
            # engine request and drop the turn; the session stays (WAITING). No await here.
            if self.engine_thread.alive:
                self.engine_thread.abort(prep.request_id)
            drop_turn(self, handle, "the client went away")
            raise
        except Exception as exc:      # the engine stopped under the turn
            await self.db(self.manager.abort_turn, handle, f"engine failure: {exc}")
            await self.abort_with(context, exc)
            return
        ttft = first - arrival if first is not None else None
        if reached(self.engine_thread.engine.config.first_token_log_s, ttft):
            # the engine logs its own part (runtime/first_token_log.py) under the request id
            log.info(describe_server(prep.request_id, handle.session_id, handle.turn_index, ttft,
                                     submitted - arrival, first - submitted))
        reason = final.finish_reason
        if reason is FinishReason.ABORT or run.cancelled:
            s = await self.db(self.manager.abort_turn, handle, "cancelled")
            s = s or self.manager.get(run.tenant, run.session_id)
            yield self._result(pb.FINISH_REASON_CANCELLED, prep, out_ids, "".join(texts), ttft,
                               final.kv_source or {}, s)
            return
        if reason is FinishReason.ERROR:
            await self.db(self.manager.abort_turn, handle, f"engine error: {final.error}")
            await self.abort_with(context, _TurnError(final.error or "the engine failed"))
            return
        detector.finish()
        text = "".join(texts)
        turn = read_output(text, handle.turn_index)
        tool = turn.tool_calls[0]["name"] if detector.awaiting_tool_results and turn.tool_calls \
            else None
        finish = "tool_call" if tool else reason.value
        kv = dict(final.kv_source or {"gpu": final.num_cached_tokens,
                                      "recomputed": final.num_prompt_tokens
                                      - final.num_cached_tokens})
        try:
            s = await self.db(self.manager.end_turn, handle, out_ids, finish,
                              tool_calls=turn.tool_calls, kv_source=kv, ttft_s=ttft,
                              first_token_at=first_wall, rewritten_tokens=prep.dropped_tokens,
                              auto_pause_tool=tool, assistant_message=turn.assistant_message)
        except Exception as exc:
            await self.abort_with(context, exc)
            return
        self.metrics.observe_turn(finish, ttft, kv, prep.rewritten, final.queue_s)
        yield self._result(FINISH_TO_PB[finish], prep, out_ids, text, ttft, kv, s, turn,
                           final.queue_s, final.queue_reasons)

    def _result(self, finish, prep, out_ids, text, ttft, kv, session, turn=None, queue_s=None,
                queue_reasons=None):
        if finish == pb.FINISH_REASON_CANCELLED:
            self.metrics.turns.labels("cancelled").inc()
        handle = prep.handle
        res = api.TurnResult(
            finish_reason=finish,
            content=turn.parsed.content if turn is not None else text,
            tool_calls=[tool_call_to_pb(c) for c in turn.tool_calls] if turn else [],
            invalid_tool_calls=[f"{c.error}: {c.raw}" for c in turn.parsed.invalid_tool_calls]
            if turn else [],
            usage=pb.Usage(prompt_tokens=len(handle.prompt_token_ids),
                           input_tokens=len(handle.appended_token_ids),
                           completion_tokens=len(out_ids),
                           context_tokens=len(session.token_log) if session else 0),
            time_to_first_token_seconds=ttft or 0.0,
            kv_source=kv_source_to_pb(kv),
            rewrite=pb.ContextRewrite(rewritten=prep.rewritten,
                                      reused_prefix_tokens=prep.reused_prefix_tokens,
                                      dropped_tokens=prep.dropped_tokens),
            session=session_to_pb(session) if session is not None else None,
            queue_seconds=max(0.0, queue_s or 0.0),
            queue_reasons={k: v for k, v in (queue_reasons or {}).items() if v > 0})
        return api.GenerateResponse(result=res)
