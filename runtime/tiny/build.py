"""Build the files of the embedded ``tiny`` model into a folder.

The tiny model is a 4-layer Llama with random weights and a byte-level BPE tokenizer trained on the
shipped ``corpus.txt``. Every step is deterministic (fixed corpus, fixed seeds; the BPE trainer
breaks ties between equally frequent pairs by the pair itself), so two builds give byte-identical
files. ``runtime.tiny.ensure_tiny_model`` calls :func:`build_tiny_model` into a temporary folder
and renames it into place.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

TINY_VERSION = "tiny-v1"
MARKER_FILE = "agentkv_tiny.json"
_HERE = Path(__file__).resolve().parent

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# Control tokens the chat template writes. The first five are "special" (dropped by
# decode(skip_special_tokens=True)); the tool tags are ordinary added tokens so they stay visible in
# streamed text, where the tool-call parser needs them.
SPECIAL_TOKENS = [BOS, EOS, PAD, IM_START, IM_END]
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]


@dataclass(frozen=True)
class TinySpec:
    """Shape of the tiny model (about 11.5M parameters with tied embeddings)."""

    vocab_size: int = 4096
    hidden_size: int = 512
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 64
    num_hidden_layers: int = 4
    intermediate_size: int = 1024
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    init_std: float = 0.05
    seed: int = 0


def corpus_text() -> str:
    """The shipped tokenizer training text."""
    return (_HERE / "corpus.txt").read_text(encoding="utf-8")


def chat_template_text() -> str:
    """The shipped Jinja chat template."""
    return (_HERE / "chat_template.jinja").read_text(encoding="utf-8")


def train_tokenizer(text: str, vocab_size: int):
    """Train the byte-level BPE on ``text``; returns a ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS + TOOL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    # The tool tags were reserved as special during training (so no merge spans them); make them
    # ordinary added tokens afterwards so they survive skip_special_tokens decoding.
    data = json.loads(tok.to_str())
    for added in data["added_tokens"]:
        if added["content"] in TOOL_TOKENS:
            added["special"] = False
    tok = Tokenizer.from_str(json.dumps(data))
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tok


def build_hf_tokenizer(backend):
    """Wrap a trained ``tokenizers.Tokenizer`` as a ``transformers`` fast tokenizer with the chat template."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=chat_template_text(),
        clean_up_tokenization_spaces=False,
        model_max_length=TinySpec.max_position_embeddings,
    )


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def build_model(spec: TinySpec, bos_id: int, eos_ids: list[int], pad_id: int):
    """A ``LlamaForCausalLM`` with seeded normal weights (std ``spec.init_std``, norms at 1)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        rms_norm_eps=spec.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        initializer_range=spec.init_std,
        dtype="float32",
        architectures=["LlamaForCausalLM"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        # Re-initialise in name order with an explicit generator: independent of the library's own
        # init order, and std 0.05 (not 0.02) so greedy decoding has clear logit margins.
        for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * spec.init_std)
            else:
                param.fill_(1.0)  # RMSNorm weights
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_ids, pad_token_id=pad_id)
    return model


def _save_quietly(model, folder: Path) -> None:
    """``model.save_pretrained(folder)`` without the progress bar on stderr."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _make_readable(folder: Path) -> None:
    """Give the folder and its files the usual permissions (the temporary folder starts private)."""
    os.chmod(folder, 0o755)
    for path in folder.iterdir():
        os.chmod(path, 0o644)


def build_tiny_model(folder: str | Path, spec: TinySpec = TinySpec()) -> Path:
    """Write config, weights, generation config, tokenizer files and the version marker into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backend = train_tokenizer(corpus_text(), spec.vocab_size)
    hf_tok = build_hf_tokenizer(backend)
    bos_id, pad_id = backend.token_to_id(BOS), backend.token_to_id(PAD)
    eos_ids = [backend.token_to_id(EOS), backend.token_to_id(IM_END)]

    model = build_model(spec, bos_id, eos_ids, pad_id)
    _save_quietly(model, folder)  # safetensors (the only format save_pretrained writes in transformers 5)
    # Top-level rope_theta as well, for loaders that read the older Llama config layout.
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["rope_theta"] = spec.rope_theta
    _write_json(folder / "config.json", config)

    hf_tok.save_pretrained(folder, save_jinja_files=False)
    tok_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    tok_config["chat_template"] = chat_template_text()
    # The names that transformers 4.x and 5.x both read.
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_config.pop("extra_special_tokens", None)
    tok_config["additional_special_tokens"] = [IM_START, IM_END]
    _write_json(folder / "tokenizer_config.json", tok_config)
    _write_json(
        folder / "special_tokens_map.json",
        {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "additional_special_tokens": [IM_START, IM_END]},
    )
    _write_json(folder / MARKER_FILE, {"version": TINY_VERSION, "spec": asdict(spec)})
    _make_readable(folder)
    return folder
