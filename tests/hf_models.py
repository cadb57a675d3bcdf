"""Small random-weight Hugging Face models of every supported family, saved to a folder."""
from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("llama", "llama31", "mistral", "qwen2", "qwen3")


def make_config(family: str, vocab: int = 512, hidden: int = 128, layers: int = 2,
                heads: int = 4, kv_heads: int = 2, max_pos: int = 2048):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, max_position_embeddings=max_pos,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1,
                  eos_token_id=2, pad_token_id=0)
    if family == "llama":
        return LlamaConfig(**common, architectures=["LlamaForCausalLM"])
    if family == "llama31":
        return LlamaConfig(**common, architectures=["LlamaForCausalLM"], rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
            rope_theta=500000.0)
    if family == "mistral":
        return MistralConfig(**common, architectures=["MistralForCausalLM"], sliding_window=None)
    if family == "qwen2":
        common["tie_word_embeddings"] = True
        return Qwen2Config(**common, architectures=["Qwen2ForCausalLM"])
    if family == "qwen3":
        return Qwen3Config(**common, head_dim=32, architectures=["Qwen3ForCausalLM"])
    raise ValueError(family)


def rand_tokens(n: int, seed: int) -> list[int]:
    """`n` random token ids of these models' 512-token vocabulary (ids 0-2 left out)."""
    return torch.randint(3, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def save_model(family: str, folder: Path, seed: int = 0, init_std: float = 0.2, **kw) -> Path:
    """Random weights with a large init scale, so greedy logits have clear margins."""
    from transformers import AutoModelForCausalLM
    cfg = make_config(family, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, init_std)
            elif "norm" in name:
                p.uniform_(0.8, 1.2)
            else:  # biases
                p.normal_(0.0, 0.1)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def hf_greedy(folder: Path, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Reference: transformers' own generate(), one prompt at a time, greedy, EOS ignored."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    outs = []
    for p in prompts:
        ids = torch.tensor([p])
        with torch.no_grad():
            g = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                               eos_token_id=None, pad_token_id=0)
        outs.append(g[0, len(p):].tolist())
    return outs
