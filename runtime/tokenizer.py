"""Tokenizer wrapper: encode/decode, end-of-turn ids, chat templates, streaming detokenization.

``load_tokenizer(folder)`` wraps ``transformers.AutoTokenizer`` for a Hugging Face model folder.

Chat rendering keeps user data from forging control tokens: in ``user`` and ``tool`` messages and in
tool schemas, any text equal to an added token (``<|im_end|>``, ``<tool_call>``, ...) is wrapped in
private-use markers before the template runs, and :meth:`Tokenizer.encode_rendered` encodes marked
spans as ordinary text. Only tokens the template itself writes (and text the model produced, in
``system`` and ``assistant`` messages) become control tokens.

``IncrementalDetokenizer`` turns a stream of token ids into text deltas. It decodes only a small
window (a few tokens of context plus the unread tokens), and holds text back while the window's
decoded tail is U+FFFD, i.e. while a multi-byte UTF-8 character is still incomplete.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_MARK_START, _MARK_END = "\ue000", "\ue001"  # private-use characters bracketing user control tokens
_SANITIZED_ROLES = ("user", "tool")


def _message_dict(message: Any) -> dict:
    """A template-ready dict from a mapping or an object with ``to_dict()``; ``None`` values dropped."""
    raw = message.to_dict() if hasattr(message, "to_dict") else dict(message)
    return {k: v for k, v in raw.items() if v is not None}


class Tokenizer:
    """A model folder's tokenizer with the operations the runtime needs."""

    def __init__(self, hf_tokenizer: Any, eos_token_ids: Sequence[int]) -> None:
        self.hf = hf_tokenizer
        self._backend = getattr(hf_tokenizer, "backend_tokenizer", None)  # None for slow tokenizers
        self.eos_token_ids: list[int] = list(eos_token_ids)
        controls = [t.content for t in hf_tokenizer.added_tokens_decoder.values() if t.content.strip()]
        controls.sort(key=len, reverse=True)  # longer first: a token wins over the tokens it contains
        self._control_re = re.compile("|".join(map(re.escape, controls))) if controls else None
        self._marked_re = re.compile(f"{_MARK_START}(.*?){_MARK_END}", re.S)

    # -- basic operations ------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def bos_token_id(self) -> int | None:
        return self.hf.bos_token_id

    @property
    def pad_token_id(self) -> int | None:
        return self.hf.pad_token_id

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; control-token text in it becomes control tokens."""
        if self._backend is not None:
            return list(self._backend.encode(text, add_special_tokens=add_special_tokens).ids)
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (no clean-up of spaces, so decode is the exact inverse of encode)."""
        if self._backend is not None:
            return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens,
                              clean_up_tokenization_spaces=False)

    def encode_plain(self, text: str) -> list[int]:
        """Token ids of ``text`` as ordinary text: control-token strings are not matched."""
        if self._backend is None:
            return list(self.hf.encode(text, add_special_tokens=False, split_special_tokens=True))
        normalizer, pre, model = self._backend.normalizer, self._backend.pre_tokenizer, self._backend.model
        if normalizer is not None:
            text = normalizer.normalize_str(text)
        pieces = pre.pre_tokenize_str(text) if pre is not None else [(text, (0, len(text)))]
        return [tok.id for piece, _ in pieces for tok in model.tokenize(piece)]

    # -- chat templates -------------------------------------------------------------------------
    def _mark(self, obj: Any) -> Any:
        """Bracket control-token text in strings (recursively) with the private markers."""
        if isinstance(obj, str):
            obj = obj.replace(_MARK_START, "").replace(_MARK_END, "")
            if self._control_re is None:
                return obj
            return self._control_re.sub(lambda m: f"{_MARK_START}{m.group(0)}{_MARK_END}", obj)
        if isinstance(obj, Mapping):
            return {k: self._mark(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self._mark(v) for v in obj]
        return obj

    def render_chat(self, messages: Sequence[Any], tools: Sequence[Mapping] | None = None,
                    add_generation_prompt: bool = True) -> str:
        """The chat template's text for ``messages``, user control tokens bracketed by markers.

        Pass the result to :meth:`encode_rendered`; :func:`unmark` gives the plain text.
        """
        if not messages:
            raise ValueError("a chat needs at least one message; got an empty list")
        conversation = []
        for m in messages:
            d = _message_dict(m)
            conversation.append(self._mark(d) if d.get("role") in _SANITIZED_ROLES else d)
        return self.hf.apply_chat_template(
            conversation, tools=self._mark(list(tools)) if tools else None,
            add_generation_prompt=add_generation_prompt, tokenize=False)

    def encode_rendered(self, rendered: str) -> list[int]:
        """Encode text from :meth:`render_chat`: marked spans as plain text, the rest normally."""
        ids: list[int] = []
        pos = 0
        for m in self._marked_re.finditer(rendered):
            ids += self.encode(unmark(rendered[pos:m.start()]))  # stray markers are dropped
            ids += self.encode_plain(m.group(1))
            pos = m.end()
        return ids + self.encode(unmark(rendered[pos:]))

    def apply_chat_template(self, messages: Sequence[Any], tools: Sequence[Mapping] | None = None,
                            add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the conversation rendered with the model's chat template."""
        return self.encode_rendered(self.render_chat(messages, tools, add_generation_prompt))


def unmark(rendered: str) -> str:
    """Plain text of a :meth:`Tokenizer.render_chat` result (markers removed)."""
    return rendered.replace(_MARK_START, "").replace(_MARK_END, "")


def _ids_from(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if isinstance(v, int)]
    return []


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def load_tokenizer(model_dir: str | Path) -> Tokenizer:
    """Load the tokenizer of a Hugging Face model folder.

    End-of-turn ids are the union, in this order, of generation_config.json ``eos_token_id``,
    config.json ``eos_token_id`` and the tokenizer's eos token.
    """
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    hf = AutoTokenizer.from_pretrained(str(model_dir))
    eos: list[int] = []
    for source in (_read_json(model_dir / "generation_config.json").get("eos_token_id"),
                   _read_json(model_dir / "config.json").get("eos_token_id"),
                   hf.eos_token_id):
        eos += [i for i in _ids_from(source) if i not in eos]
    return Tokenizer(hf, eos)


class IncrementalDetokenizer:
    """Streaming text from generated token ids; deltas concatenate to the decoded output.

    Args:
        tokenizer: the model's :class:`Tokenizer`.
        prompt_ids: the prompt (the last few tokens give context to the first deltas).
        skip_special_tokens: drop special tokens (bos/eos/turn markers) from the text; the tool-call
            tags are ordinary added tokens and stay.
    """

    CONTEXT_TOKENS = 5

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int] = (),
                 skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        # The decode window: a few already-emitted tokens as context, then the unemitted ones.
        self._ids: list[int] = list(prompt_ids)[-self.CONTEXT_TOKENS:]
        self._context_text = self._decode(self._ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip)

    def _advance(self, window: str) -> str:
        """Emit ``window``'s text past the context; keep the last tokens as the next context."""
        delta = window[len(self._context_text):]
        self._ids = self._ids[-self.CONTEXT_TOKENS:]
        self._context_text = self._decode(self._ids)
        return delta

    def push(self, token_ids: Sequence[int]) -> str:
        """Add generated tokens; return the newly completed text (possibly empty)."""
        if not token_ids:
            return ""
        self._ids.extend(token_ids)
        window = self._decode(self._ids)
        if len(window) <= len(self._context_text) or window.endswith("\ufffd"):
            return ""  # nothing visible yet, or a character still waits for its next bytes
        return self._advance(window)

    def flush(self) -> str:
        """Emit whatever is held back (an incomplete character decodes as U+FFFD)."""
        return self._advance(self._decode(self._ids))
