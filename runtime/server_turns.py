"""One turn of a session: render the input, start it in the manager, stream it from the engine.

`prepare_turn` runs on the server's session thread (it reads the session, renders the chat and
calls `SessionManager.begin_turn`, which writes to LMDB), so two turns of one session are
rendered against the log each of them will extend. The prompt the engine gets is the session's
whole token log (cut back to the longest common prefix when the chat template re-rendered
earlier tokens) plus the appended tokens; the engine's prefix cache finds the log's blocks from
earlier turns, which shows up as `kv_source` in the final output.

Input is either chat messages (rendered with `runtime.chat`: the first turn renders the whole
conversation, later turns `render_appended_messages` so that generated tokens stay as generated)
or raw token ids appended as given (the first such turn starts with the rendered history, when
the session was created with a system prompt or messages). Raw-token turns are not chat
messages: a later message turn re-renders the chat and reports the tokens it cut as a rewrite.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from runtime.chat import render_appended_messages, render_turn
from runtime.config import SamplingParams
from runtime.limits import Limits, check_output_tokens, check_prompt_tokens
from runtime.server_convert import RequestError, sampling_params
from runtime.tool_calls import ParsedOutput, parse_tool_calls
from sessions.manager import SessionManager
from sessions.model import Session, TurnHandle
from sessions.state import SessionEvent, next_state


@dataclass
class TurnInput:
    """What one Generate call asks for (already converted from protobuf)."""
    tenant: str
    session_id: str
    messages: list[dict] | None = None     # chat messages, or
    token_ids: list[int] | None = None     # raw token ids
    sampling: dict = field(default_factory=dict)


@dataclass
class PreparedTurn:
    handle: TurnHandle
    params: SamplingParams
    reused_prefix_tokens: int
    dropped_tokens: int
    request_id: str

    @property
    def prompt(self) -> list[int]:
        return self.handle.prompt_token_ids

    @property
    def rewritten(self) -> bool:
        return self.dropped_tokens > 0


def history_of(s: Session) -> list[dict]:
    """The conversation the session's token log was rendered from."""
    system = [{"role": "system", "content": s.system_prompt}] if s.system_prompt else []
    return system + [dict(m) for m in s.messages]


def render_input(tokenizer, s: Session, inp: TurnInput) -> tuple[list[int], int]:
    """(tokens to append, log tokens kept) for the turn's input against session `s`."""
    history, log = history_of(s), list(s.token_log)
    tools = s.tools or None
    if inp.token_ids is not None:
        if not inp.token_ids:
            raise RequestError("tokens.token_ids is empty: give at least one token id")
        if not log and history and tokenizer is not None:
            base = tokenizer.apply_chat_template(history, tools, add_generation_prompt=False)
            return base + list(inp.token_ids), 0
        return list(inp.token_ids), len(log)
    if tokenizer is None:
        raise RequestError("this model folder has no tokenizer, so chat messages cannot be "
                           "rendered: send raw token ids (GenerateRequest.tokens) instead")
    new = inp.messages or []
    if not log:
        if not history and not new:
            raise RequestError("the session has no messages yet: give at least one message "
                               "(GenerateRequest.messages) or token ids")
        rt = render_turn(tokenizer, history + new, tools, prev_token_ids=())
    else:
        rt = render_appended_messages(tokenizer, history, new, tools, prev_token_ids=log)
    return list(rt.appended_ids), rt.reused_prefix_len


def prepare_turn(manager: SessionManager, tokenizer, limits: Limits, default_max_tokens: int,
                 inp: TurnInput) -> PreparedTurn:
    """Render and begin the turn (blocking: LMDB write). Raises before any state changes when
    the input, a limit or the session's state refuses it."""
    s = manager.get(inp.tenant, inp.session_id)
    next_state(s.state, SessionEvent.START_TURN, s.session_id)   # ACTIVE: refuse before rendering
    params = sampling_params(s.sampling_defaults, inp.sampling, default_max_tokens)
    check_output_tokens(limits, params.max_tokens)
    appended, keep = render_input(tokenizer, s, inp)
    check_prompt_tokens(limits, keep + len(appended))
    handle = manager.begin_turn(inp.tenant, inp.session_id, appended, inp.messages or (),
                                keep_log_tokens=keep)
    rid = f"{inp.session_id}/{handle.turn_index}/{uuid.uuid4().hex[:8]}"
    return PreparedTurn(handle, params, keep, handle.dropped_tokens, rid)


@dataclass
class TurnText:
    """The turn's output read as chat: content, tool calls, and the assistant message to keep."""
    parsed: ParsedOutput
    tool_calls: list[dict]          # {"id", "name", "arguments"}
    assistant_message: dict


def read_output(text: str, turn_index: int) -> TurnText:
    parsed = parse_tool_calls(text)
    calls = [{"id": f"call_{turn_index}_{i}", "name": c.name, "arguments": c.arguments}
             for i, c in enumerate(parsed.tool_calls)]
    msg: dict = {"role": "assistant", "content": parsed.content}
    if calls:
        msg["tool_calls"] = [{"id": c["id"], "type": "function",
                              "function": {"name": c["name"], "arguments": c["arguments"]}}
                             for c in calls]
    return TurnText(parsed, calls, msg)
