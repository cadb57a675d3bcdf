"""Tool calls in generated text: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

This is the Hermes / Qwen form, and the tiny model's. The rules, shared by the one-shot parser and the
streaming detector (so both always agree):

* A block opens at the literal ``<tool_call>``. It closes at the first ``</tool_call>`` that is not
  inside a JSON string, so arguments may contain the tags as text. A ``<tool_call>`` outside JSON
  strings inside a block ends that block unclosed and opens the next one.
* If the text ends before such a close (broken quoting, truncation), the first literal
  ``</tool_call>`` (before any later literal ``<tool_call>``) closes the block instead.
* The body is one JSON object, optionally in a code fence: ``{"name": str, "arguments": object}``,
  where ``arguments`` may also be a JSON string holding an object, or be missing (``{}``);
  ``parameters`` is accepted for ``arguments`` and ``{"function": {...}}`` wrappers are unwrapped.
  A block missing its closing tag still counts when its body is a complete call.
* Anything else is an invalid call: its text stays in the content and the error is reported.
  Parsing never raises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

OPEN, CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class ToolCall:
    """One parsed call; ``raw`` is its text as generated, tags included."""

    name: str
    arguments: dict
    raw: str = ""

    def to_dict(self) -> dict:
        """The OpenAI-style form chat templates read: ``{"type": "function", "function": {...}}``."""
        return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class InvalidToolCall:
    """A ``<tool_call>`` block that could not be read as a call, and why."""

    raw: str
    error: str


@dataclass(frozen=True)
class ParsedOutput:
    """Generated text split into plain content and tool calls.

    ``content`` is the text outside valid calls (invalid blocks included), stripped of surrounding
    whitespace when at least one call was taken out; otherwise it is the text unchanged.
    """

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)


def _strip_fence(body: str) -> str:
    if body.startswith("```") and body.endswith("```") and len(body) >= 6:
        first_line_end = body.find("\n")
        if first_line_end != -1:
            return body[first_line_end + 1:-3].strip()
    return body


def parse_call_body(body: str) -> tuple[str, dict] | str:
    """``(name, arguments)`` from a block's body, or an error message."""
    text = _strip_fence(body.strip())
    try:
        obj, end = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as e:
        return f"invalid JSON: {e}"
    except RecursionError:
        return "invalid JSON: nested too deeply"
    if text[end:].strip():
        return f"unexpected text after the JSON object: {text[end:end + 40]!r}"
    if isinstance(obj, dict) and isinstance(obj.get("function"), dict) and "name" not in obj:
        obj = obj["function"]
    if not isinstance(obj, dict):
        return f'expected a JSON object {{"name": ..., "arguments": {{...}}}}, got {type(obj).__name__}'
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return 'the call has no "name" string'
    args = obj.get("arguments", obj.get("parameters", {}))
    if args is None:
        args = {}
    if isinstance(args, str):
        if not args.strip():
            args = {}
        else:
            try:
                args = json.loads(args)
            except (json.JSONDecodeError, RecursionError) as e:
                return f'"arguments" is a string that is not valid JSON: {e}'
    if not isinstance(args, dict):
        return f'"arguments" must be a JSON object, got {type(args).__name__}'
    return name, args


class JsonTagScanner:
    """Finds the first tool-call tag outside JSON strings, carrying its state across chunks."""

    def __init__(self) -> None:
        self.in_string = False
        self.escaped = False

    def scan(self, text: str, start: int, final: bool) -> tuple[int, str | None]:
        """Scan ``text`` from ``start``: ``(index, tag)`` of the first tag outside strings.

        Returns ``(i, None)`` when no tag was found; ``i`` is where to resume once more text has
        arrived (a possible partial tag at the end is left unscanned unless ``final``).
        """
        i, n = start, len(text)
        while i < n:
            c = text[i]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif c == "\\":
                    self.escaped = True
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c == "<":
                for tag in (CLOSE, OPEN):
                    if text.startswith(tag, i):
                        return i, tag
                    if not final and n - i < len(tag) and tag.startswith(text[i:]):
                        return i, None  # may become a tag: wait for more text
            i += 1
        return i, None


def _block_end(text: str, body_start: int) -> tuple[int, int, bool]:
    """``(body_end, block_end, closed)`` for the block whose body starts at ``body_start``."""
    i, tag = JsonTagScanner().scan(text, body_start, final=True)
    if tag == CLOSE:
        return i, i + len(CLOSE), True
    if tag == OPEN:
        return i, i, False
    close, nxt = text.find(CLOSE, body_start), text.find(OPEN, body_start)
    if close != -1 and (nxt == -1 or close < nxt):
        return close, close + len(CLOSE), True
    end = nxt if nxt != -1 else len(text)
    return end, end, False


def read_block(raw: str, body: str, closed: bool) -> ToolCall | InvalidToolCall:
    """A call from one block's text, or the reason it is not one."""
    result = parse_call_body(body)
    if isinstance(result, str):
        return InvalidToolCall(raw, result if closed else f"{result} (no closing {CLOSE})")
    return ToolCall(result[0], result[1], raw)


def _split(text: str) -> list[str | ToolCall | InvalidToolCall]:
    """``text`` as an ordered list of plain-text pieces, calls and invalid blocks."""
    items: list[str | ToolCall | InvalidToolCall] = []
    pos = 0
    while True:
        start = text.find(OPEN, pos)
        if start == -1:
            items.append(text[pos:])
            return items
        items.append(text[pos:start])
        body_start = start + len(OPEN)
        body_end, block_end, closed = _block_end(text, body_start)
        items.append(read_block(text[start:block_end], text[body_start:body_end], closed))
        pos = block_end


def parse_tool_calls(text: str) -> ParsedOutput:
    """Split generated text into content and tool calls; never raises (see the module rules)."""
    items = _split(text)
    calls = [x for x in items if isinstance(x, ToolCall)]
    invalid = [x for x in items if isinstance(x, InvalidToolCall)]
    content = "".join(x if isinstance(x, str) else x.raw for x in items if not isinstance(x, ToolCall))
    return ParsedOutput(content.strip() if calls else text, calls, invalid)


@dataclass(frozen=True)
class ToolCallUpdate:
    """What one streamed chunk changed.

    ``content`` is plain text now safe to show (text inside tool-call blocks is held until the block
    ends; an invalid block is then released as content); ``calls`` are the calls completed by this
    chunk; ``opened`` says a block started in it.
    """

    content: str = ""
    calls: tuple[ToolCall, ...] = ()
    invalid: tuple[InvalidToolCall, ...] = ()
    opened: bool = False


class ToolCallStreamDetector:
    """Follows streamed text and reports tool-call blocks as they open and complete.

    Feed text deltas with :meth:`feed`, then call :meth:`finish` at the end of the turn. The
    concatenated ``content`` and the calls equal what :func:`parse_tool_calls` gives for the whole
    text (before its final strip).
    """

    def __init__(self) -> None:
        self._buf = ""            # outside a block: unreleased text; inside: the block from its tag
        self._inside = False
        self._scanner = JsonTagScanner()
        self._scan_pos = 0
        self._after_last_call = ""
        self.calls: list[ToolCall] = []
        self.invalid_calls: list[InvalidToolCall] = []

    @property
    def in_tool_call(self) -> bool:
        """A block has opened and not ended yet."""
        return self._inside

    @property
    def awaiting_tool_results(self) -> bool:
        """At least one call is complete and nothing but whitespace followed the last one.

        When the turn ends in this state, it ends for the tools to run.
        """
        return bool(self.calls) and not self._inside and not (self._after_last_call + self._buf).strip()

    def feed(self, delta: str) -> ToolCallUpdate:
        """Take the next chunk of generated text."""
        self._buf += delta
        return self._process(final=False)

    def finish(self) -> ToolCallUpdate:
        """End of the turn: release held text and settle an unfinished block."""
        return self._process(final=True)

    def _process(self, final: bool) -> ToolCallUpdate:
        items: list[str | ToolCall | InvalidToolCall] = []
        opened = False
        while True:
            if not self._inside:
                k = self._buf.find(OPEN)
                if k == -1:
                    keep = 0 if final else _partial_tag_len(self._buf, OPEN)
                    items.append(self._buf[:len(self._buf) - keep])
                    self._buf = self._buf[len(self._buf) - keep:]
                    break
                items.append(self._buf[:k])
                self._buf = self._buf[k:]
                self._inside, opened = True, True
                self._scanner, self._scan_pos = JsonTagScanner(), len(OPEN)
                continue
            i, tag = self._scanner.scan(self._buf, self._scan_pos, final=False)
            if tag is None:
                self._scan_pos = i
                if final:  # the text ended inside a block: the parser's fallback rules settle it
                    items += _split(self._buf)
                    self._buf, self._inside = "", False
                break
            end = i + len(CLOSE) if tag == CLOSE else i
            items.append(read_block(self._buf[:end], self._buf[len(OPEN):i], tag == CLOSE))
            self._buf, self._inside = self._buf[end:], False
        content: list[str] = []
        for item in items:
            if isinstance(item, ToolCall):
                self.calls.append(item)
                self._after_last_call = ""
                continue
            if isinstance(item, InvalidToolCall):
                self.invalid_calls.append(item)
            text = item if isinstance(item, str) else item.raw
            content.append(text)
            self._after_last_call += text
        return ToolCallUpdate(
            "".join(content),
            tuple(x for x in items if isinstance(x, ToolCall)),
            tuple(x for x in items if isinstance(x, InvalidToolCall)),
            opened,
        )


def _partial_tag_len(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
