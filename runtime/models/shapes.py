"""Named model shapes with random weights, for benchmarks at real sizes without a download.

`EngineConfig(model="shape:llama3-8b")` builds the model directly on the device from a config,
with weights drawn from a fixed seed (std 0.02, norms 1), so no 16 GB folder is written or read.
"""
from __future__ import annotations

import hashlib

import torch

SHAPES: dict[str, dict] = {
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      max_position_embeddings=131072, rms_norm_eps=1e-5,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 8192},
                      rope_theta=500000.0, tie_word_embeddings=False),
    "llama3-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                      num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                      max_position_embeddings=131072, rms_norm_eps=1e-5, head_dim=64,
                      rope_scaling={"rope_type": "llama3", "factor": 32.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 8192},
                      rope_theta=500000.0, tie_word_embeddings=True),
    "tiny-random": dict(vocab_size=4096, hidden_size=512, intermediate_size=1024,
                        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                        max_position_embeddings=4096, rms_norm_eps=1e-5,
                        tie_word_embeddings=True),
}


WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_shape(name: str) -> tuple[str, torch.dtype | None]:
    """`llama3-8b` or `llama3-8b@bf16` (weights drawn in bf16, whatever dtype runs them)."""
    shape, at, wd = name.partition("@")
    if at and wd not in WEIGHT_DTYPES:
        raise ValueError(f"unknown weight dtype {wd!r} in shape {name!r}; known: "
                         f"{', '.join(WEIGHT_DTYPES)}")
    return shape, WEIGHT_DTYPES[wd] if at else None


def shape_config(name: str):
    from transformers import LlamaConfig
    name = parse_shape(name)[0]
    if name not in SHAPES:
        raise ValueError(f"unknown model shape {name!r}; known: {', '.join(SHAPES)}")
    return LlamaConfig(**SHAPES[name], architectures=["LlamaForCausalLM"], eos_token_id=None)


def init_random_(model: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std, generator=g)
            else:
                p.fill_(1.0) if "norm" in name else p.zero_()


def shape_fingerprint(name: str, seed: int, dtype: torch.dtype) -> bytes:
    return hashlib.blake2b(f"shape:{name}:{seed}:{dtype}".encode(), digest_size=16).digest()
