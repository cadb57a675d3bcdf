"""A random-weight Llama whose greedy output is a chosen text: the tiny model after weight surgery.

The embedded ``tiny`` model has random weights and practically never writes a tool call, so tests of
what happens when a turn ends in one need a model that does. ``build_scripted_model`` copies the
tiny model (same tokenizer and chat template) and changes its weights so that greedy decoding after
the chat template's assistant prompt writes exactly ``SCRIPT``:

* every layer's attention output projection (``o_proj``) and MLP down projection (``down_proj``)
  is zero, so the residual stream never changes: the last hidden state at each position is its own
  token's embedding (then the final RMSNorm);
* the LM head is untied from the embeddings. For each step ``t -> s`` of a successor chain, row
  ``s`` of the LM head is the unit vector of token ``t``'s normalised embedding, so at a position
  holding ``t`` the logit of ``s`` is about ``sqrt(hidden_size)`` (22.6) while every other logit is
  a near-orthogonal dot product (about 1, at most ~5). The other rows stay random and small.

The chain starts at the assistant prompt's last token (the newline after
``<|im_start|>assistant``) and walks the tokens of ``SCRIPT``; it ends at ``<|im_end|>``, an
end-of-turn token, so the turn stops there. The output depends only on the last token, so each token
id may appear once in the chain; the chain uses a tokenization of ``SCRIPT`` with distinct ids (the
longest unused vocabulary piece first, backtracking when stuck; decoding byte-level BPE is
concatenation, so the streamed text is exactly ``SCRIPT``). That is why the call has no arguments:
with the tiny vocabulary only two tokens can close a JSON key (``"`` and ``":``) and only eight
contain a quote, so ``{"name": ..., "arguments": {...}}`` cannot be written with distinct ids, while
``{"name": "current_time"}`` can (the parser reads a missing ``arguments`` as ``{}``).

Every later assistant turn (after the tool's result) writes the same call again; tests use the
first turn, or a small ``max_tokens``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

SCRIPT = '<tool_call>{"name": "current_time"}</tool_call><|im_end|>'
TOOL_NAME = "current_time"
_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json")


def _pieces(tokenizer) -> dict[str, list[int]]:
    """Decoded text -> token ids that decode to it alone (longest texts are tried first later)."""
    out: dict[str, list[int]] = {}
    for i in range(tokenizer.vocab_size):
        text = tokenizer.decode([i])
        if text and "\ufffd" not in text:
            out.setdefault(text, []).append(i)
    return out


def distinct_tokenization(tokenizer, text: str, exclude: set[int]) -> list[int]:
    """Token ids decoding to ``text``, each id used once and none from ``exclude``."""
    pieces = _pieces(tokenizer)
    longest = max(len(p) for p in pieces)
    used = set(exclude)

    def walk(pos: int) -> list[int] | None:
        if pos == len(text):
            return []
        for n in range(min(longest, len(text) - pos), 0, -1):
            for tid in pieces.get(text[pos:pos + n], ()):
                if tid in used:
                    continue
                used.add(tid)
                rest = walk(pos + n)
                if rest is not None:
                    return [tid] + rest
                used.discard(tid)
        return None

    ids = walk(0)
    if ids is None:
        raise ValueError(f"no tokenization of {text!r} with distinct token ids")
    assert tokenizer.decode(ids) == text
    return ids


def script_chain(tokenizer) -> list[int]:
    """The successor chain: the assistant prompt's last token, then SCRIPT's tokens."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "x"}])
    start = prompt[-1]
    return [start] + distinct_tokenization(tokenizer, SCRIPT, {start})


def scripted_model_dir() -> Path:
    """The scripted model beside the tiny one in the model cache, built on first use."""
    from runtime.tiny import default_cache_dir, ensure_tiny_model
    return build_scripted_model(ensure_tiny_model(), default_cache_dir() / "scripted-tool-call-v1")


def build_scripted_model(tiny_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the scripted model (weights, config, tokenizer files) into ``out_dir``."""
    from safetensors.torch import load_file, save_file

    from runtime.tokenizer import load_tokenizer

    tiny_dir, out_dir = Path(tiny_dir), Path(out_dir)
    if (out_dir / "model.safetensors").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in _FILES:
        shutil.copy(tiny_dir / name, tmp / name)
    config = json.loads((tmp / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))

    weights = load_file(str(tiny_dir / "model.safetensors"))
    for name, w in weights.items():
        if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
            w.zero_()
    embed = weights["model.embed_tokens.weight"]                      # [vocab, hidden]
    gen = torch.Generator().manual_seed(1234)
    head = torch.randn(embed.shape, generator=gen, dtype=embed.dtype) * 0.05
    eps = config.get("rms_norm_eps", 1e-5)
    norm_w = weights["model.norm.weight"]
    chain = script_chain(load_tokenizer(tiny_dir))
    for t, s in zip(chain, chain[1:]):
        e = embed[t]
        h = e * torch.rsqrt(e.pow(2).mean() + eps) * norm_w           # the final norm's output
        head[s] = h / h.norm()
    weights["lm_head.weight"] = head.contiguous()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"),
              metadata={"format": "pt"})
    try:
        tmp.rename(out_dir)
    except OSError:               # built meanwhile by another process
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
