"""A Python client of the agentkv session service (the one place the generated stubs are wrapped).

    from runtime.client import AgentKVClient

    with AgentKVClient("127.0.0.1:50051", api_key="k-123") as client:
        with client.session(system_prompt="You are an agent.", tools=[calculator_schema]) as s:
            for event in s.generate(messages=[{"role": "user", "content": "2+3?"}], max_tokens=64):
                if isinstance(event, Delta):
                    print(event.text, end="")
            result = event                       # the last event is the TurnResult
            if result.tool_calls:
                with s.tool("calculator", expected_s=0.1):    # Pause ... Resume
                    answer = run_calculator(result.tool_calls[0].arguments)
                s.run(messages=[{"role": "tool", "content": answer, "name": "calculator"}])

A session used as a context manager is closed on exit. Failed calls raise `AgentKVError`
carrying the gRPC status name (`NOT_FOUND`, `INVALID_ARGUMENT`, ...) and the server's message.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import grpc

from agentkv_proto.agentkv.v1 import session_pb2 as pb
from agentkv_proto.agentkv.v1 import session_service_pb2 as api
from agentkv_proto.agentkv.v1 import session_service_pb2_grpc as api_grpc

_STATES = {v.number: v.name.removeprefix("SESSION_STATE_").lower()
           for v in pb.SessionState.DESCRIPTOR.values}
_FINISH = {v.number: v.name.removeprefix("FINISH_REASON_").lower()
           for v in pb.FinishReason.DESCRIPTOR.values}


class AgentKVError(Exception):
    """A call the server refused; `code` is the gRPC status name."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def _call(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except grpc.RpcError as e:
        raise AgentKVError(e.code().name, e.details() or "") from None


@dataclass
class SessionInfo:
    session_id: str
    model: str
    state: str                          # waiting | active | paused | closed | expired
    context_tokens: int
    turns: int
    paused_tool: str
    pause_expected_s: float
    human_in_the_loop: bool
    kv_residency: dict[str, int]        # tokens of the log held by gpu / cpu / disk

    @classmethod
    def from_pb(cls, s: pb.Session) -> "SessionInfo":
        r = s.kv_residency
        return cls(s.session_id, s.model, _STATES[s.state], s.context_tokens, s.turns,
                   s.paused_tool, s.pause_expected_seconds, s.human_in_the_loop,
                   {"gpu": r.gpu_tokens, "cpu": r.cpu_tokens, "disk": r.disk_tokens})


@dataclass
class Delta:
    token_ids: list[int]
    text: str


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: dict


@dataclass
class TurnResult:
    finish_reason: str                  # stop | length | tool_call | cancelled
    content: str
    tool_calls: list[ToolCall]
    invalid_tool_calls: list[str]
    prompt_tokens: int
    input_tokens: int
    completion_tokens: int
    context_tokens: int
    ttft_s: float
    kv_source: dict[str, int]           # gpu | cpu | disk | recomputed -> tokens
    rewritten: bool
    reused_prefix_tokens: int
    dropped_tokens: int
    session: SessionInfo
    text: str = ""                      # the streamed text (tool calls included)
    token_ids: list[int] = field(default_factory=list)
    queue_s: float = 0.0                # engine arrival -> admission (part of ttft_s)
    queue_reasons: dict[str, float] = field(default_factory=dict)   # queue_s by reason

    @property
    def reused_tokens(self) -> int:
        """Prompt tokens whose KV was loaded (GPU, CPU or disk) instead of recomputed."""
        return sum(self.kv_source[t] for t in ("gpu", "cpu", "disk"))

    @classmethod
    def from_pb(cls, r: api.TurnResult, text: str, ids: list[int]) -> "TurnResult":
        kv = r.kv_source
        return cls(_FINISH[r.finish_reason], r.content,
                   [ToolCall(c.id, c.name, json.loads(c.arguments_json or "{}"))
                    for c in r.tool_calls], list(r.invalid_tool_calls), r.usage.prompt_tokens,
                   r.usage.input_tokens, r.usage.completion_tokens, r.usage.context_tokens,
                   r.time_to_first_token_seconds,
                   {"gpu": kv.gpu_tokens, "cpu": kv.cpu_tokens, "disk": kv.disk_tokens,
                    "recomputed": kv.recomputed_tokens},
                   r.rewrite.rewritten, r.rewrite.reused_prefix_tokens, r.rewrite.dropped_tokens,
                   SessionInfo.from_pb(r.session), text, ids, r.queue_seconds,
                   dict(r.queue_reasons))


def _message(m) -> pb.ChatMessage:
    """A pb.ChatMessage from a dict ({"role", "content", "name", "tool_call_id", "tool_calls"})."""
    if isinstance(m, pb.ChatMessage):
        return m
    calls = []
    for c in m.get("tool_calls") or ():
        if isinstance(c, ToolCall):
            c = {"id": c.id, "name": c.name, "arguments": c.arguments}
        fn = c.get("function", c)
        args = fn.get("arguments", {})
        args = args if isinstance(args, str) else json.dumps(args)
        calls.append(pb.ToolCall(id=c.get("id", ""), name=fn["name"], arguments_json=args))
    return pb.ChatMessage(role=m["role"], content=m.get("content") or "", tool_calls=calls,
                          tool_call_id=m.get("tool_call_id", ""), name=m.get("name", ""))


def _sampling(**kw) -> pb.SamplingParams:
    return pb.SamplingParams(**{k: v for k, v in kw.items() if v is not None})


class Session:
    """One session on the server; `close()` (or leaving its `with` block) ends it."""

    def __init__(self, client: "AgentKVClient", info: SessionInfo, close_on_exit: bool = True):
        self.client, self.info, self.close_on_exit = client, info, close_on_exit

    @property
    def id(self) -> str:
        return self.info.session_id

    def generate(self, messages: list | None = None, token_ids: list[int] | None = None,
                 max_tokens: int | None = None, temperature: float | None = None,
                 top_p: float | None = None, top_k: int | None = None, seed: int | None = None,
                 stop: list[str] | None = None, ignore_eos: bool | None = None,
                 timeout: float | None = None) -> Iterator[Delta | TurnResult]:
        """Append input and generate one turn: yields Deltas, then one TurnResult."""
        req = api.GenerateRequest(session_id=self.id, sampling=_sampling(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
            stop=stop, ignore_eos=ignore_eos))
        if token_ids is not None:
            req.tokens.token_ids.extend(token_ids)
        else:
            req.messages.messages.extend(_message(m) for m in messages or ())
        stream = self.client.stub.Generate(req, metadata=self.client.metadata,
                                           timeout=timeout or self.client.timeout)
        texts, ids = [], []
        try:
            for event in stream:
                if event.HasField("delta"):
                    d = Delta(list(event.delta.token_ids), event.delta.text)
                    texts.append(d.text)
                    ids += d.token_ids
                    yield d
                else:
                    result = TurnResult.from_pb(event.result, "".join(texts), ids)
                    self.info = result.session
                    yield result
        except grpc.RpcError as e:
            raise AgentKVError(e.code().name, e.details() or "") from None
        finally:
            stream.cancel()          # a consumer that stops early cancels the turn

    def run(self, messages: list | None = None, **kw) -> TurnResult:
        """Generate one turn and return its TurnResult (the deltas are dropped)."""
        result = None
        for event in self.generate(messages, **kw):
            result = event
        return result

    def pause(self, tool: str, expected_s: float | None = None, human: bool = False) -> SessionInfo:
        r = _call(self.client.stub.Pause, api.PauseRequest(
            session_id=self.id, tool_name=tool, expected_seconds=expected_s or 0.0,
            human_in_the_loop=human), metadata=self.client.metadata, timeout=self.client.timeout)
        self.info = SessionInfo.from_pb(r.session)
        return self.info

    def resume(self, input_expected_in_s: float | None = None) -> SessionInfo:
        r = _call(self.client.stub.Resume, api.ResumeRequest(
            session_id=self.id, input_expected_in_seconds=input_expected_in_s or 0.0),
            metadata=self.client.metadata, timeout=self.client.timeout)
        self.info = SessionInfo.from_pb(r.session)
        return self.info

    @contextmanager
    def tool(self, name: str, expected_s: float | None = None, human: bool = False):
        """Pause the session while a tool runs (the block), resume it when the block ends."""
        self.pause(name, expected_s, human)
        try:
            yield self
        finally:
            try:
                self.resume()
            except AgentKVError as e:
                if e.code != "FAILED_PRECONDITION":     # resumed (or closed) meanwhile: fine
                    raise

    def cancel(self) -> bool:
        r = _call(self.client.stub.Cancel, api.CancelRequest(session_id=self.id),
                  metadata=self.client.metadata, timeout=self.client.timeout)
        return r.cancelled

    def refresh(self) -> SessionInfo:
        self.info = self.client.get_session(self.id)
        return self.info

    def close(self) -> SessionInfo:
        r = _call(self.client.stub.CloseSession, api.CloseSessionRequest(session_id=self.id),
                  metadata=self.client.metadata, timeout=self.client.timeout)
        self.info = SessionInfo.from_pb(r.session)
        return self.info

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        if self.close_on_exit and self.info.state not in ("closed", "expired"):
            try:
                self.close()
            except AgentKVError as e:
                if e.code not in ("NOT_FOUND", "FAILED_PRECONDITION", "UNAVAILABLE"):
                    raise


class AgentKVClient:
    """A channel to an agentkv server. api_key: sent as `authorization: Bearer <key>`."""

    def __init__(self, target: str, api_key: str | None = None, timeout: float | None = None):
        self.target = target
        self.channel = grpc.insecure_channel(target)
        self.stub = api_grpc.SessionServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout = timeout

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the channel connects (the server is up); AgentKVError (UNAVAILABLE)
        when no server answered within `timeout` seconds."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout)
        except grpc.FutureTimeoutError:
            raise AgentKVError("UNAVAILABLE", f"no agentkv server answered at {self.target} "
                               f"within {timeout:g} s: start one (agentkv serve) or check the "
                               "address") from None

    def session(self, model: str = "", system_prompt: str = "", messages: list | None = None,
                tools: list[dict] | None = None, max_tokens: int | None = None,
                temperature: float | None = None, **sampling) -> Session:
        """Create a session (model "" is the served model); use it as a context manager."""
        req = api.CreateSessionRequest(
            model=model, system_prompt=system_prompt,
            messages=[_message(m) for m in messages or ()],
            tools_json=[t if isinstance(t, str) else json.dumps(t) for t in tools or ()],
            sampling=_sampling(max_tokens=max_tokens, temperature=temperature, **sampling))
        r = _call(self.stub.CreateSession, req, metadata=self.metadata, timeout=self.timeout)
        return Session(self, SessionInfo.from_pb(r.session))

    def attach(self, session_id: str, close_on_exit: bool = False) -> Session:
        """An existing session (after a restart of this program, or of the server)."""
        return Session(self, self.get_session(session_id), close_on_exit)

    def get_session(self, session_id: str) -> SessionInfo:
        r = _call(self.stub.GetSession, api.GetSessionRequest(session_id=session_id),
                  metadata=self.metadata, timeout=self.timeout)
        return SessionInfo.from_pb(r.session)

    def list_sessions(self, state: str | None = None, page_size: int = 50
                      ) -> Iterator[SessionInfo]:
        """Every session of this key's tenant (state: "paused", ...), page by page."""
        want = 0 if state is None else pb.SessionState.Value(f"SESSION_STATE_{state.upper()}")
        token = ""
        while True:
            r = _call(self.stub.ListSessions, api.ListSessionsRequest(
                page_size=page_size, page_token=token, state=want), metadata=self.metadata,
                timeout=self.timeout)
            yield from (SessionInfo.from_pb(s) for s in r.sessions)
            token = r.next_page_token
            if not token:
                return

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "AgentKVClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
