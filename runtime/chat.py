"""Incremental chat rendering: keep a session's token log growing instead of re-rendering it.

A session keeps one token log (the tokens whose KV cache it holds). When messages change, we render
the conversation with the model's chat template and work out how much of the log survives.

``render_turn`` renders the whole conversation. If the old log is a prefix of the new tokens, the
log only grows. Otherwise the longest common prefix is kept and the turn is marked ``rewritten``:
the caller recomputes the rest (and reports the rewrite).

``render_appended_messages`` is for the usual agent step: an assistant turn was just generated (its
tokens are in the log as sampled, ending with an end-of-turn token) and new messages (tool results,
a user reply) are appended. Re-tokenizing the history would not reproduce the sampled tokens (a
model may emit a non-canonical tokenization, or JSON spaced differently from the template), so we
work on text instead of tokens:

1. Render ``history`` (no generation prompt) and ``history + new`` (with it). Templates used with
   sessions are prefix-stable, so the second starts with the first; the difference is the text the
   new messages add. If it does not start with it, the template rewrote history: fall back to the
   longest common prefix as in ``render_turn``.
2. Align the log with the history rendering. (a) If the history's text starts with the log's text,
   the log is that history, possibly short of the template's glue after the end-of-turn token (the
   newline after ``<|im_end|>``): append the glue. (b) Otherwise, if the last history message is the
   assistant turn and the log ends with an end-of-turn token, check that the log's text starts with
   the prompt the turn was generated from; the turn then reads differently from the template's
   rendering of it but is what the model saw, so it is kept, and the glue is the history text after
   the last end-of-turn marker. (c) Anything else: longest common prefix, ``rewritten``.
3. Tokenize glue + difference and append it: the generated tokens stay exactly as generated.

Special tokens split tokenization, so text appended after an end-of-turn token tokenizes the same
alone as it would in the whole rendering.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime.tokenizer import _MARK_END, _MARK_START, Tokenizer, unmark
from runtime.tool_calls import ToolCall

_MARKER_RE = re.compile(f"[{_MARK_START}{_MARK_END}]")   # the render's control-token markers


@dataclass(frozen=True)
class ChatMessage:
    """One chat message; ``to_dict`` gives the form chat templates read."""

    role: str                              # "system" | "user" | "assistant" | "tool"
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = field(default_factory=tuple)
    tool_call_id: str | None = None        # for role "tool": the call this result answers
    name: str | None = None                # for role "tool": the tool's name

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"role": self.role}
        if self.content is not None:
            d["content"] = self.content
        if self.tool_calls:
            d["tool_calls"] = [tc.to_dict() for tc in self.tool_calls]
        if self.tool_call_id is not None:
            d["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            d["name"] = self.name
        return d


@dataclass(frozen=True)
class RenderedTurn:
    """The new token log and how it relates to the previous one.

    ``token_ids[:reused_prefix_len]`` equals the previous log's start, and
    ``token_ids == token_ids[:reused_prefix_len] + appended_ids``. ``rewritten`` is True when the
    previous log was not kept whole (its tokens past ``reused_prefix_len`` are dropped).
    """

    token_ids: list[int]
    reused_prefix_len: int
    appended_ids: list[int]
    rewritten: bool


def _role(message: Any) -> str | None:
    return message.get("role") if isinstance(message, Mapping) else getattr(message, "role", None)


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _against(prev: list[int], new_ids: list[int]) -> RenderedTurn:
    """The new log ``new_ids`` compared with ``prev``: pure growth, or a rewrite after their common prefix."""
    keep = _common_prefix_len(prev, new_ids)
    return RenderedTurn(new_ids, keep, new_ids[keep:], rewritten=keep < len(prev))


def render_turn(tokenizer: Tokenizer, messages: Sequence[Any], tools: Sequence[Mapping] | None = None,
                prev_token_ids: Sequence[int] = (), add_generation_prompt: bool = True) -> RenderedTurn:
    """Render the whole conversation and reuse as much of ``prev_token_ids`` as matches."""
    new_ids = tokenizer.apply_chat_template(messages, tools, add_generation_prompt)
    return _against(list(prev_token_ids), new_ids)


def _marked_suffix(marked: str, plain_len: int) -> str:
    """The part of a marked rendering after its first ``plain_len`` unmarked characters (the
    markers before the last of them skipped, those right after it kept). Steps from marker to
    marker, not character by character: the rendering is the whole conversation, and a loop
    over its characters cost milliseconds per turn at agent context lengths."""
    count = pos = 0
    for m in _MARKER_RE.finditer(marked):
        plain = m.start() - pos                    # unmarked characters before this marker
        if count + plain >= plain_len:
            break
        count, pos = count + plain, m.end()
    return marked[pos + plain_len - count:]


def _glue_after_log(tokenizer: Tokenizer, history: Sequence[Any], tools: Sequence[Mapping] | None,
                    prev: list[int], history_text: str) -> str | None:
    """Marked text that follows the log to complete the history rendering, or None if they disagree."""
    log_text = tokenizer.decode(prev)
    if unmark(history_text).startswith(log_text):                                 # case (a)
        return _marked_suffix(history_text, len(log_text))
    if len(history) < 2 or _role(history[-1]) != "assistant" or prev[-1] not in tokenizer.eos_token_ids:
        return None
    prompt_text = tokenizer.render_chat(history[:-1], tools, add_generation_prompt=True)  # case (b)
    if not history_text.startswith(prompt_text) or not log_text.startswith(unmark(prompt_text)):
        return None
    turn_text = history_text[len(prompt_text):]
    end_text = tokenizer.decode(prev[-1:])
    k = turn_text.rfind(end_text)
    return None if k == -1 else turn_text[k + len(end_text):]


def render_appended_messages(tokenizer: Tokenizer, history: Sequence[Any], new_messages: Sequence[Any],
                             tools: Sequence[Mapping] | None = None, prev_token_ids: Sequence[int] = (),
                             add_generation_prompt: bool = True) -> RenderedTurn:
    """Append ``new_messages`` to a log that holds ``history`` (generated tokens kept as generated).

    ``history`` is the conversation the log was built from, its last assistant message being the
    turn just generated; see the module docstring for how the log and the rendering are aligned.
    """
    prev = list(prev_token_ids)
    full_text = tokenizer.render_chat(list(history) + list(new_messages), tools, add_generation_prompt)

    def fallback() -> RenderedTurn:
        return _against(prev, tokenizer.encode_rendered(full_text))

    if not prev or not history:
        return fallback()
    history_text = tokenizer.render_chat(history, tools, add_generation_prompt=False)
    if not full_text.startswith(history_text):
        return fallback()  # the template re-renders history when messages are added
    glue = _glue_after_log(tokenizer, history, tools, prev, history_text)
    if glue is None:
        return fallback()
    appended = tokenizer.encode_rendered(glue + full_text[len(history_text):])
    return RenderedTurn(prev + appended, len(prev), appended, rewritten=False)
