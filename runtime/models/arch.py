"""Model shape read from a Hugging Face config: one dataclass for every supported family."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kernels.rotary import default_inv_freq, llama3_inv_freq

# architectures name -> (qkv bias, q/k norm)
SUPPORTED_ARCHITECTURES: dict[str, tuple[bool, bool]] = {
    "LlamaForCausalLM": (False, False),
    "MistralForCausalLM": (False, False),
    "Qwen2ForCausalLM": (True, False),
    "Qwen3ForCausalLM": (False, True),
}


class UnsupportedModelError(ValueError):
    pass


@dataclass(frozen=True)
class ModelArch:
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    rope_type: str
    rope_theta: float
    rope_params: tuple[tuple[str, float], ...]   # the scaling parameters, sorted
    sliding_window: int | None

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def inv_freq(self) -> tuple[torch.Tensor, float]:
        """Rotary frequencies [head_dim // 2] (float32) and the attention scaling factor."""
        p = dict(self.rope_params)
        if self.rope_type == "default":
            return default_inv_freq(self.rope_theta, self.head_dim), 1.0
        if self.rope_type == "llama3":
            return llama3_inv_freq(self.rope_theta, self.head_dim, p["factor"],
                                   p["low_freq_factor"], p["high_freq_factor"],
                                   int(p["original_max_position_embeddings"])), 1.0
        if self.rope_type == "linear":
            return default_inv_freq(self.rope_theta, self.head_dim) / p["factor"], 1.0
        raise UnsupportedModelError(f"rope type {self.rope_type!r} is not supported; supported: "
                                    "default, llama3, linear")


def _rope_settings(cfg) -> tuple[str, float, dict]:
    """Rope type, theta and scaling parameters, from transformers 4.x or 5.x configs."""
    params = getattr(cfg, "rope_parameters", None) or {}
    scaling = getattr(cfg, "rope_scaling", None) or {}
    merged = {**params, **scaling} if isinstance(scaling, dict) else dict(params)
    rope_type = merged.get("rope_type") or merged.get("type") or "default"
    theta = merged.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    extra = {k: float(v) for k, v in merged.items()
             if k not in ("rope_type", "type", "rope_theta") and isinstance(v, (int, float))}
    return rope_type, float(theta), extra


def arch_from_config(cfg) -> ModelArch:
    archs = list(getattr(cfg, "architectures", None) or [])
    name = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if name is None:
        raise UnsupportedModelError(
            f"model architecture {archs or cfg.model_type!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    qkv_bias, qk_norm = SUPPORTED_ARCHITECTURES[name]
    qkv_bias = bool(getattr(cfg, "attention_bias", qkv_bias)) or qkv_bias
    act = getattr(cfg, "hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(f"activation {act!r} is not supported (only silu)")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    num_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    rope_type, theta, extra = _rope_settings(cfg)
    window = getattr(cfg, "sliding_window", None)
    if name.startswith("Qwen") and not getattr(cfg, "use_sliding_window", False):
        window = None
    tie = bool(getattr(cfg, "tie_word_embeddings", False))
    if math.gcd(cfg.num_attention_heads, num_kv) != num_kv:
        raise UnsupportedModelError("num_attention_heads must be a multiple of num_key_value_heads")
    return ModelArch(
        architecture=name, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        num_layers=cfg.num_hidden_layers, num_heads=cfg.num_attention_heads, num_kv_heads=num_kv,
        head_dim=head_dim, intermediate_size=cfg.intermediate_size,
        rms_norm_eps=float(cfg.rms_norm_eps),
        max_position_embeddings=int(cfg.max_position_embeddings), tie_word_embeddings=tie,
        qkv_bias=qkv_bias, qk_norm=qk_norm, rope_type=rope_type, rope_theta=theta,
        rope_params=tuple(sorted(extra.items())), sliding_window=window)
