from agentkv_proto.agentkv.v1 import session_pb2 as _session_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateSessionRequest(_message.Message):
    __slots__ = ("model", "system_prompt", "messages", "tools_json", "sampling")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TOOLS_JSON_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    model: str
    system_prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[_session_pb2.ChatMessage]
    tools_json: _containers.RepeatedScalarFieldContainer[str]
    sampling: _session_pb2.SamplingParams
    def __init__(self, model: _Optional[str] = ..., system_prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_session_pb2.ChatMessage, _Mapping]]] = ..., tools_json: _Optional[_Iterable[str]] = ..., sampling: _Optional[_Union[_session_pb2.SamplingParams, _Mapping]] = ...) -> None: ...

class CreateSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: _session_pb2.Session
    def __init__(self, session: _Optional[_Union[_session_pb2.Session, _Mapping]] = ...) -> None: ...

class TokenInput(_message.Message):
    __slots__ = ("token_ids",)
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class MessagesInput(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_session_pb2.ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[_session_pb2.ChatMessage, _Mapping]]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("session_id", "messages", "tokens", "sampling")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    messages: MessagesInput
    tokens: TokenInput
    sampling: _session_pb2.SamplingParams
    def __init__(self, session_id: _Optional[str] = ..., messages: _Optional[_Union[MessagesInput, _Mapping]] = ..., tokens: _Optional[_Union[TokenInput, _Mapping]] = ..., sampling: _Optional[_Union[_session_pb2.SamplingParams, _Mapping]] = ...) -> None: ...

class TokenDelta(_message.Message):
    __slots__ = ("token_ids", "text")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ...) -> None: ...

class TurnResult(_message.Message):
    __slots__ = ("finish_reason", "content", "tool_calls", "invalid_tool_calls", "usage", "time_to_first_token_seconds", "kv_source", "rewrite", "session", "queue_seconds", "queue_reasons")
    class QueueReasonsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    INVALID_TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    KV_SOURCE_FIELD_NUMBER: _ClassVar[int]
    REWRITE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_REASONS_FIELD_NUMBER: _ClassVar[int]
    finish_reason: _session_pb2.FinishReason
    content: str
    tool_calls: _containers.RepeatedCompositeFieldContainer[_session_pb2.ToolCall]
    invalid_tool_calls: _containers.RepeatedScalarFieldContainer[str]
    usage: _session_pb2.Usage
    time_to_first_token_seconds: float
    kv_source: _session_pb2.KvSource
    rewrite: _session_pb2.ContextRewrite
    session: _session_pb2.Session
    queue_seconds: float
    queue_reasons: _containers.ScalarMap[str, float]
    def __init__(self, finish_reason: _Optional[_Union[_session_pb2.FinishReason, str]] = ..., content: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[_session_pb2.ToolCall, _Mapping]]] = ..., invalid_tool_calls: _Optional[_Iterable[str]] = ..., usage: _Optional[_Union[_session_pb2.Usage, _Mapping]] = ..., time_to_first_token_seconds: _Optional[float] = ..., kv_source: _Optional[_Union[_session_pb2.KvSource, _Mapping]] = ..., rewrite: _Optional[_Union[_session_pb2.ContextRewrite, _Mapping]] = ..., session: _Optional[_Union[_session_pb2.Session, _Mapping]] = ..., queue_seconds: _Optional[float] = ..., queue_reasons: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("delta", "result")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    delta: TokenDelta
    result: TurnResult
    def __init__(self, delta: _Optional[_Union[TokenDelta, _Mapping]] = ..., result: _Optional[_Union[TurnResult, _Mapping]] = ...) -> None: ...

class PauseRequest(_message.Message):
    __slots__ = ("session_id", "tool_name", "expected_seconds", "human_in_the_loop")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HUMAN_IN_THE_LOOP_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    tool_name: str
    expected_seconds: float
    human_in_the_loop: bool
    def __init__(self, session_id: _Optional[str] = ..., tool_name: _Optional[str] = ..., expected_seconds: _Optional[float] = ..., human_in_the_loop: _Optional[bool] = ...) -> None: ...

class PauseResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: _session_pb2.Session
    def __init__(self, session: _Optional[_Union[_session_pb2.Session, _Mapping]] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("session_id", "input_expected_in_seconds")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_EXPECTED_IN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    input_expected_in_seconds: float
    def __init__(self, session_id: _Optional[str] = ..., input_expected_in_seconds: _Optional[float] = ...) -> None: ...

class ResumeResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: _session_pb2.Session
    def __init__(self, session: _Optional[_Union[_session_pb2.Session, _Mapping]] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class GetSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: _session_pb2.Session
    def __init__(self, session: _Optional[_Union[_session_pb2.Session, _Mapping]] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: _session_pb2.SessionState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[_session_pb2.SessionState, str]] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions", "next_page_token")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[_session_pb2.Session]
    next_page_token: str
    def __init__(self, sessions: _Optional[_Iterable[_Union[_session_pb2.Session, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: _session_pb2.Session
    def __init__(self, session: _Optional[_Union[_session_pb2.Session, _Mapping]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("cancelled", "session")
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    session: _session_pb2.Session
    def __init__(self, cancelled: _Optional[bool] = ..., session: _Optional[_Union[_session_pb2.Session, _Mapping]] = ...) -> None: ...
