"""`agentkv.v1.SessionService` on grpc.aio: authentication, limits, and the session RPCs.

The event loop never blocks: session changes (LMDB commits) run on one session thread
(`ServiceDeps.db`), listings and engine queries on a small pool (`ServiceDeps.aux`), and tokens
arrive from the engine thread through `RequestStream` (see `Generate`). Every call is first
authenticated (the key's tenant owns what it creates; another tenant's session is NOT_FOUND) and
its message size checked against `max_message_bytes`.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from agentkv_proto.agentkv.v1 import session_service_pb2 as api
from agentkv_proto.agentkv.v1 import session_service_pb2_grpc as api_grpc
from kvstore.residency import prefix_residency
from runtime.auth import Authenticator
from runtime.engine_thread import EngineThread
from runtime.limits import (Limits, check_concurrent_turns, check_message_size,
                            check_output_tokens, check_tools)
from runtime.log_hashes import LogHashCache
from runtime.metrics import Metrics
from runtime.server_convert import (RequestError, STATE_FROM_PB, messages_from_pb,
                                    sampling_to_dict, session_to_pb, tools_from_pb)
from runtime.server_errors import status_for, unary
from runtime.server_generate import GenerateMixin
from runtime.server_hooks import SessionEventLog
from sessions.manager import SessionManager
from sessions.model import Session
from sessions.state import SessionEvent, next_state

log = logging.getLogger("agentkv.server")

# Residency work up to this (tokens to hash + 2 x blocks to look up) runs on the event loop
# (see residency()): about half a millisecond.
INLINE_RESIDENCY_WORK = 4096


@dataclass
class RunningTurn:
    """A turn the server is streaming (keyed by session id)."""
    tenant: str
    session_id: str
    request_id: str | None = None
    cancelled: bool = False


@dataclass
class ServiceDeps:
    """What the service works with; built and owned by `runtime.server.AgentKVServer`."""
    engine_thread: EngineThread
    manager: SessionManager
    auth: Authenticator
    limits: Limits
    metrics: Metrics
    events: SessionEventLog
    model_name: str
    default_max_tokens: int = 256
    kv_hook: object | None = None        # runtime.session_kv_hook.SessionKVHook, when wired
    db: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(
        1, thread_name_prefix="agentkv-sessions"))
    aux: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(
        2, thread_name_prefix="agentkv-aux"))


class SessionService(GenerateMixin, api_grpc.SessionServiceServicer):
    def __init__(self, deps: ServiceDeps):
        self.deps = deps
        self.manager = deps.manager
        self.engine_thread = deps.engine_thread
        self.metrics = deps.metrics
        self.limits = deps.limits
        engine = deps.engine_thread.engine
        self.tokenizer = engine.tokenizer
        self.log_hashes = LogHashCache(engine.config.block_size, engine.fingerprint)
        self.turns: dict[str, RunningTurn] = {}
        self.turns_by_tenant: dict[str, int] = {}

    # -- plumbing ----------------------------------------------------------------------------
    async def db(self, fn, *args, **kw):
        """Run a session change on the session thread (it writes to LMDB)."""
        return await asyncio.get_running_loop().run_in_executor(
            self.deps.db, lambda: fn(*args, **kw))

    async def aux(self, fn, *args, **kw):
        return await asyncio.get_running_loop().run_in_executor(
            self.deps.aux, lambda: fn(*args, **kw))

    def begin_call(self, request, context) -> str:
        """Authenticate the call and check its size; returns the caller's tenant."""
        tenant = self.deps.auth.tenant_for(context.invocation_metadata())
        check_message_size(self.limits, request.ByteSize())
        return tenant

    async def residency(self, sessions: list[Session]) -> list[dict[str, int]]:
        """Tokens of each session's log whose KV each tier holds now (a prefix of the log).

        Read without waiting for the engine thread (a step can take long under load): the
        lookups are single dictionary reads, safe beside the engine's writes, so the answer is
        a consistent-enough snapshot of a state that changes every step anyway. The logs' block
        hashes come from `log_hashes` (only what a turn added since the last call is hashed).
        Small work is done here on the event loop (well under a millisecond): a hop to the pool
        costs more than that while the engine computes, and it made most of GetSession's tail
        under load. Larger work goes to the pool so the loop stays free."""
        engine = self.engine_thread.engine
        bs, cache = engine.config.block_size, self.log_hashes

        def look(e) -> list[dict[str, int]]:
            return [prefix_residency(cache.hashes(s), bs, e.pool, e.tiers) for s in sessions]
        # one token hashed ~ one unit; one block looked up on the three tiers ~ two
        work = sum(cache.tokens_to_hash(s) + 2 * (len(s.token_log) // bs) for s in sessions)
        if work <= INLINE_RESIDENCY_WORK:
            return look(engine)
        return await self.aux(look, engine)

    def served_model(self, asked: str) -> str:
        name = self.deps.model_name
        if asked and asked not in (name, Path(name).name):
            raise RequestError(f"this server serves model {name!r}; leave model empty or give "
                               f"that name (got {asked!r})")
        return name

    # -- RPCs --------------------------------------------------------------------------------
    @unary
    async def CreateSession(self, request, context):
        tenant = self.begin_call(request, context)
        model = self.served_model(request.model)
        messages = messages_from_pb(request.messages, "messages")
        tools = tools_from_pb(request.tools_json)
        check_tools(self.limits, len(tools))
        sampling = sampling_to_dict(request.sampling)
        if "max_tokens" in sampling:
            check_output_tokens(self.limits, sampling["max_tokens"])
        s = await self.db(self.manager.create, tenant, model, request.system_prompt, messages,
                          tools, sampling)
        self.deps.events.created(s)
        return api.CreateSessionResponse(session=session_to_pb(s))

    @unary
    async def GetSession(self, request, context):
        tenant = self.begin_call(request, context)
        s = self.manager.get(tenant, request.session_id)
        (res,) = await self.residency([s])
        return api.GetSessionResponse(session=session_to_pb(s, res))

    @unary
    async def ListSessions(self, request, context):
        tenant = self.begin_call(request, context)
        state = STATE_FROM_PB.get(request.state) if request.state else None
        if request.state and state is None:
            raise RequestError(f"state {request.state} is not a SessionState value")
        page, nxt = await self.aux(self.manager.list, tenant, request.page_size,
                                   request.page_token, state)
        res = await self.residency(page)
        return api.ListSessionsResponse(sessions=[session_to_pb(s, r) for s, r in zip(page, res)],
                                        next_page_token=nxt)

    @unary
    async def Pause(self, request, context):
        tenant = self.begin_call(request, context)
        tool = request.tool_name or ("human" if request.human_in_the_loop else "")
        if not tool:
            raise RequestError("tool_name is empty: name the tool the session waits on (or set "
                               "human_in_the_loop for a person)")
        s = await self.db(self.manager.pause, tenant, request.session_id, tool,
                          request.expected_seconds or None, request.human_in_the_loop)
        return api.PauseResponse(session=session_to_pb(s))

    @unary
    async def Resume(self, request, context):
        tenant = self.begin_call(request, context)
        s = await self.db(self.manager.resume, tenant, request.session_id,
                          request.input_expected_in_seconds or None)
        return api.ResumeResponse(session=session_to_pb(s))

    @unary
    async def CloseSession(self, request, context):
        tenant = self.begin_call(request, context)
        s = await self.db(self.manager.close, tenant, request.session_id)
        self.stop_turn(request.session_id, tenant)
        self.log_hashes.forget(request.session_id)
        return api.CloseSessionResponse(session=session_to_pb(s))

    @unary
    async def Cancel(self, request, context):
        tenant = self.begin_call(request, context)
        s = self.manager.get(tenant, request.session_id)
        cancelled = self.stop_turn(request.session_id, tenant)
        return api.CancelResponse(cancelled=cancelled, session=session_to_pb(s))

    # -- turns (Generate is in server_generate.py) ---------------------------------------------
    def stop_turn(self, session_id: str, tenant: str) -> bool:
        """Stop the session's running turn, if any; its Generate ends with CANCELLED."""
        run = self.turns.get(session_id)
        if run is None or run.tenant != tenant or run.cancelled:
            return False
        run.cancelled = True
        if run.request_id is not None and self.engine_thread.alive:
            self.engine_thread.abort(run.request_id)
        return True

    def reserve_turn(self, tenant: str, session_id: str) -> RunningTurn:
        """Register a turn before it starts (limits counted, Cancel can find it)."""
        if session_id in self.turns:
            s = self.manager.get(tenant, session_id)              # NOT_FOUND for others
            next_state(s.state, SessionEvent.START_TURN, session_id)  # FAILED_PRECONDITION
        check_concurrent_turns(self.limits, tenant, self.turns_by_tenant.get(tenant, 0))
        run = RunningTurn(tenant, session_id)
        self.turns[session_id] = run
        self.turns_by_tenant[tenant] = self.turns_by_tenant.get(tenant, 0) + 1
        return run

    def release_turn(self, run: RunningTurn) -> None:
        if self.turns.get(run.session_id) is run:
            del self.turns[run.session_id]
        self.turns_by_tenant[run.tenant] -= 1

    async def abort_with(self, context, exc: BaseException):
        code, msg = status_for(exc)
        self.metrics.rpc_errors.labels("Generate", code.name).inc()
        await context.abort(code, msg)
