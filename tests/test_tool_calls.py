"""Tool-call parsing and the streaming detector."""
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.tiny import ensure_tiny_model
from runtime.tokenizer import load_tokenizer
from runtime.tool_calls import (CLOSE, OPEN, InvalidToolCall, ToolCall, ToolCallStreamDetector,
                                parse_tool_calls)


def block(name, arguments, pad="\n"):
    return f"{OPEN}{pad}{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}{pad}{CLOSE}"


def test_plain_text_is_content_unchanged():
    out = parse_tool_calls("  just words, no calls\n")
    assert out.content == "  just words, no calls\n"
    assert out.tool_calls == [] and out.invalid_tool_calls == []


def test_several_calls_with_content_and_whitespace():
    text = ("Let me check both.\n" + block("get_weather", {"city": "Oslo"}) + "\n"
            + f"{OPEN}  \n\t{{ \"name\" : \"get_time\" ,\n \"arguments\" : {{\"tz\": \"UTC\"}} }}\n\n  {CLOSE}  \n")
    out = parse_tool_calls(text)
    assert out.content == "Let me check both."
    assert [(c.name, c.arguments) for c in out.tool_calls] == [("get_weather", {"city": "Oslo"}),
                                                               ("get_time", {"tz": "UTC"})]
    assert out.tool_calls[0].raw == block("get_weather", {"city": "Oslo"})
    assert out.invalid_tool_calls == []


def test_arguments_as_json_string_and_variants():
    out = parse_tool_calls(
        f'{OPEN}{{"name": "f", "arguments": "{{\\"a\\": [1, 2]}}"}}{CLOSE}'
        f'{OPEN}{{"name": "g", "parameters": {{"b": true}}}}{CLOSE}'
        f'{OPEN}{{"name": "h"}}{CLOSE}'
        f'{OPEN}{{"type": "function", "function": {{"name": "i", "arguments": {{}}}}}}{CLOSE}'
        f'{OPEN}\n```json\n{{"name": "j", "arguments": {{"k": null}}}}\n```\n{CLOSE}')
    assert [(c.name, c.arguments) for c in out.tool_calls] == [
        ("f", {"a": [1, 2]}), ("g", {"b": True}), ("h", {}), ("i", {}), ("j", {"k": None})]
    assert out.content == ""


@pytest.mark.parametrize("body, error", [
    ('{"name": "f", "arguments": {"a": 1}', "invalid JSON"),
    ('{"arguments": {}}', '"name"'),
    ('{"name": "f", "arguments": [1]}', "must be a JSON object"),
    ('{"name": "f", "arguments": "not json"}', "not valid JSON"),
    ('{"name": "f"} trailing words', "unexpected text"),
    ('["f"]', "expected a JSON object"),
])
def test_malformed_calls_stay_in_content_with_their_error(body, error):
    text = f"before {OPEN}{body}{CLOSE} after"
    out = parse_tool_calls(text)
    assert out.tool_calls == []
    assert out.content == text
    assert len(out.invalid_tool_calls) == 1
    assert out.invalid_tool_calls[0].raw == f"{OPEN}{body}{CLOSE}"
    assert error in out.invalid_tool_calls[0].error


def test_valid_and_invalid_together():
    text = block("a", {}) + f"\n{OPEN}{{oops}}{CLOSE}\n" + block("b", {"x": 1})
    out = parse_tool_calls(text)
    assert [c.name for c in out.tool_calls] == ["a", "b"]
    assert out.content == f"{OPEN}{{oops}}{CLOSE}"
    assert out.invalid_tool_calls[0].raw == f"{OPEN}{{oops}}{CLOSE}"


def test_closing_tag_inside_a_json_string_does_not_end_the_call():
    args = {"text": f"write {OPEN} and {CLOSE} literally", "q": 'say "hi" \\ bye'}
    out = parse_tool_calls(block("write_file", args))
    assert [(c.name, c.arguments) for c in out.tool_calls] == [("write_file", args)]


def test_unclosed_blocks():
    out = parse_tool_calls('ok ' + f'{OPEN}{{"name": "f", "arguments": {{"a": 1}}}}')
    assert [(c.name, c.arguments) for c in out.tool_calls] == [("f", {"a": 1})]  # complete body, tag missing
    out = parse_tool_calls(f'ok {OPEN}{{"name": "f", "argu')
    assert out.tool_calls == [] and out.content == f'ok {OPEN}{{"name": "f", "argu'
    assert "no closing" in out.invalid_tool_calls[0].error
    # broken quoting: the literal closing tag ends the block, the next call still parses
    out = parse_tool_calls(f'{OPEN}{{"name": "x, "arguments": {{}}}}{CLOSE} {block("y", {})}')
    assert [c.name for c in out.tool_calls] == ["y"]
    assert len(out.invalid_tool_calls) == 1


FRAGMENTS = [OPEN, CLOSE, "{", "}", '"', "\\", ":", ",", "[", "]", '"name"', '"arguments"', '"f"',
             "<", "</", "tool", "_call>", " ", "\n", "x", "1", "null", "é", "```"]
soupy_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=5)), max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(st.text(), soupy_text))
def test_parser_never_raises_and_accounts_for_all_text(text):
    out = parse_tool_calls(text)
    assert isinstance(out.content, str)
    for c in out.tool_calls:
        assert isinstance(c.name, str) and c.name and isinstance(c.arguments, dict)
        assert c.raw.startswith(OPEN) and c.raw in text
    for bad in out.invalid_tool_calls:
        assert isinstance(bad, InvalidToolCall) and bad.raw in out.content and bad.error
    if not out.tool_calls:
        assert out.content == text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)
calls_strategy = st.lists(st.tuples(st.text(min_size=1, max_size=12),
                                    st.dictionaries(st.text(max_size=8), json_values, max_size=4)),
                          min_size=1, max_size=3)
plain_content = st.text(max_size=30).filter(lambda s: OPEN not in s)


@settings(max_examples=200, deadline=None)
@given(content=plain_content, calls=calls_strategy, pad=st.sampled_from(["", "\n", " \n "]))
def test_round_trip_of_generated_calls(content, calls, pad):
    text = content + "".join(("\n" if i or content else "") + block(n, a, pad) for i, (n, a) in enumerate(calls))
    out = parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in out.tool_calls] == calls
    assert out.content == content.strip()
    assert out.invalid_tool_calls == []


def run_detector(text, rng):
    det = ToolCallStreamDetector()
    updates, i = [], 0
    while i < len(text):
        k = rng.randint(1, 6)
        updates.append(det.feed(text[i:i + k]))
        i += k
    updates.append(det.finish())
    return det, updates


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(soupy_text, calls_strategy.map(lambda cs: "hi " + " ".join(block(n, a) for n, a in cs))),
       seed=st.integers(0, 1000))
def test_detector_agrees_with_parser(text, seed):
    det, updates = run_detector(text, random.Random(seed))
    out = parse_tool_calls(text)
    streamed = "".join(u.content for u in updates)
    assert (streamed.strip() if out.tool_calls else streamed) == out.content
    assert [c for u in updates for c in u.calls] == out.tool_calls == det.calls
    assert [c for u in updates for c in u.invalid] == out.invalid_tool_calls == det.invalid_calls
    assert not det.in_tool_call


def test_detector_reports_open_complete_and_end_of_calls():
    det = ToolCallStreamDetector()
    assert det.feed("Checking <tool").content == "Checking "  # a possible tag is held back
    u = det.feed('_call>\n{"name": "f", "arguments": {"s": "</tool_call>"}}')
    assert u.opened and det.in_tool_call and u.calls == ()
    u = det.feed("\n</tool")
    assert det.in_tool_call
    u = det.feed("_call>")
    assert not det.in_tool_call and u.calls == (ToolCall("f", {"s": CLOSE}, u.calls[0].raw),)
    assert det.awaiting_tool_results
    det.feed("\n  ")
    assert det.awaiting_tool_results
    det.feed("and more words")
    assert not det.awaiting_tool_results
    det.feed(block("g", {}))
    assert det.awaiting_tool_results and [c.name for c in det.calls] == ["f", "g"]
    assert det.finish().content == ""


def test_tiny_template_tool_calls_parse_back():
    tok = load_tokenizer(ensure_tiny_model())
    calls = [ToolCall("get_weather", {"city": "Zürich", "unit": "celsius"}), ToolCall("noop", {})]
    msgs = [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Looking.", "tool_calls": [c.to_dict() for c in calls]}]
    text = tok.hf.apply_chat_template(msgs, tokenize=False)
    turn = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    out = parse_tool_calls(turn)
    assert [(c.name, c.arguments) for c in out.tool_calls] == [(c.name, c.arguments) for c in calls]
    assert out.content == "Looking."
