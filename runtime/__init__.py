"""agentkv runtime: the continuous-batching engine, its models, and (later) the gRPC service."""
from runtime.config import EngineConfig, SamplingParams
from runtime.engine import Engine
from runtime.errors import EngineStoppedError, InvalidRequestError
from runtime.request import FinishReason, Output, RequestOutput

__all__ = ["Engine", "EngineConfig", "SamplingParams", "Output", "RequestOutput", "FinishReason",
           "InvalidRequestError", "EngineStoppedError"]
