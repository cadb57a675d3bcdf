"""Streaming detokenization: deltas add up to the full decode and never split a character."""
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.tiny import ensure_tiny_model
from runtime.tokenizer import IncrementalDetokenizer, load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(ensure_tiny_model())


def stream(tok, prompt, gen, rng, skip=True):
    """Push ``gen`` in random chunks of 1-4 tokens; return the deltas, flush last."""
    detok = IncrementalDetokenizer(tok, prompt, skip_special_tokens=skip)
    deltas, i = [], 0
    while i < len(gen):
        k = rng.randint(1, 4)
        deltas.append(detok.push(gen[i:i + k]))
        i += k
    deltas.append(detok.flush())
    return deltas


MULTIBYTE = [
    "Grüße aus Köln, naïve café.",
    "東京は大きな都市です。駅まで歩きます。",
    "你好，世界。今天天气很好。",
    "🚀🎉👩‍💻 emoji 🧪✅❌ mixed with text 😀",
    "한국어 텍스트와 English 섞기 ∑xᵢ ≈ π",
    "\u0000 control \t chars \r\n and combining e\u0301 marks",
]


def test_load_tokenizer_eos_ids(tok):
    ids = {tok.hf.convert_tokens_to_ids(t) for t in ("<|eos|>", "<|im_end|>")}
    assert set(tok.eos_token_ids) == ids and len(tok.eos_token_ids) == 2


@pytest.mark.parametrize("text", MULTIBYTE)
def test_multibyte_text_one_token_at_a_time(tok, text):
    prompt = tok.encode("Say it:")
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok, prompt)
    deltas = [detok.push([t]) for t in ids] + [detok.flush()]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)
    # some token ends inside a character, so something was held back at least once
    if any(ord(c) > 0x7FF for c in text):
        assert "" in deltas[:-1]


def test_random_token_streams_match_full_decode(tok):
    rng = random.Random(1234)
    for trial in range(300):
        prompt = tok.encode(rng.choice(MULTIBYTE + ["", "plain prompt", "<|im_start|>assistant\n"]))
        gen = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(0, 80))]
        skip = trial % 2 == 0
        deltas = stream(tok, prompt, gen, rng, skip)
        assert "".join(deltas) == tok.decode(gen, skip_special_tokens=skip)
        full_has_ffd = "\ufffd" in tok.decode(gen, skip_special_tokens=skip)
        if not full_has_ffd:
            assert not any("\ufffd" in d for d in deltas)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80), seed=st.integers(0, 2**16))
def test_any_text_streams_back_exactly(tok, text, seed):
    ids = tok.encode(text)
    deltas = stream(tok, tok.encode("Q: "), ids, random.Random(seed))
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True)
    if "\ufffd" not in text:
        assert not any("\ufffd" in d for d in deltas)


def test_special_tokens_skipped_tool_tags_kept(tok):
    text = 'ok<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    ids = tok.encode(text) + tok.encode("<|im_end|>")
    out = "".join(stream(tok, [], ids, random.Random(0)))
    assert out == text
    out_raw = "".join(stream(tok, [], ids, random.Random(0), skip=False))
    assert out_raw == text + "<|im_end|>"


def test_incomplete_character_held_until_flush(tok):
    clef = "\U0001d11e"  # not in the corpus: its 4 UTF-8 bytes are 4 byte tokens
    ids = tok.encode(clef)
    assert len(ids) == 4
    detok = IncrementalDetokenizer(tok, tok.encode("music: "))
    assert [detok.push([t]) for t in ids[:3]] == ["", "", ""]
    assert detok.push(ids[3:]) == clef
    assert detok.push(tok.encode("a") + ids[:2]) == ""  # held: the window ends mid-character
    assert detok.flush() == "a\ufffd"  # the stream ended there


def test_decode_window_stays_small(tok):
    """Per-token cost: each decode sees a few context tokens plus the pending ones, never the stream."""
    seen = []

    class Counting:
        def decode(self, ids, skip_special_tokens=False):
            seen.append(len(ids))
            return tok.decode(ids, skip_special_tokens)

    ids = tok.encode(" ".join(MULTIBYTE) * 30)
    assert len(ids) > 1000
    detok = IncrementalDetokenizer(Counting(), ids[:50])
    text = "".join(detok.push([t]) for t in ids) + detok.flush()
    assert text == tok.decode(ids)
    # context + the tokens of one held-back character run, however long the stream
    assert max(seen) <= IncrementalDetokenizer.CONTEXT_TOKENS + 8
