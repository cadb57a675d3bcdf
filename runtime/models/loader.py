"""Build a Llama-family model from a Hugging Face folder: config, (sharded) safetensors, fingerprint."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from runtime.models.arch import ModelArch, UnsupportedModelError, arch_from_config
from runtime.models.llama import LlamaFamilyModel

log = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    pass


@dataclass
class LoadedModel:
    model: LlamaFamilyModel
    arch: ModelArch
    hf_config: object
    fingerprint: bytes       # identifies weights + dtype: KV computed by another model never matches
    path: Path


def resolve_model_path(model: str) -> Path:
    if model == "tiny":
        from runtime.tiny import ensure_tiny_model
        return Path(ensure_tiny_model())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"model folder {str(path)!r} does not exist; give a folder holding a "
                             "Hugging Face config.json and *.safetensors, or 'tiny'")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model folder {str(path)!r} has no config.json")
    return path


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"model folder {str(path)!r} has no *.safetensors weights")
    return files


def _fingerprint(path: Path, files: list[Path], dtype: torch.dtype) -> bytes:
    """Hash of config, dtype, and each weight file's header, size and sampled bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update((path / "config.json").read_bytes())
    h.update(str(dtype).encode())
    for f in files:
        size = f.stat().st_size
        h.update(f.name.encode() + size.to_bytes(8, "little"))
        with open(f, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            h.update(fh.read(header_len))
            for off in (8 + header_len, max(0, size // 2 - 32768), max(0, size - 65536)):
                fh.seek(off)
                h.update(fh.read(65536))
    return h.digest()


def _map_name(name: str) -> tuple[str, str | None]:
    """HF weight name -> (our parameter name, fused part or None)."""
    name = name.removeprefix("model.")
    for part in ("q_proj", "k_proj", "v_proj"):
        if f".self_attn.{part}." in name:
            return name.replace(f".{part}.", ".qkv_proj."), part
    for part in ("gate_proj", "up_proj"):
        if f".mlp.{part}." in name:
            return name.replace(f".{part}.", ".gate_up_proj."), part
    name = name.replace("input_layernorm.weight", "input_layernorm")
    name = name.replace("post_attention_layernorm.weight", "post_attention_layernorm")
    name = name.replace("self_attn.q_norm.weight", "self_attn.q_norm")
    name = name.replace("self_attn.k_norm.weight", "self_attn.k_norm")
    if name == "norm.weight":
        name = "norm"
    return name, None


def _fused_offset(arch: ModelArch, part: str) -> tuple[int, int]:
    q, kv, i = arch.q_size, arch.kv_size, arch.intermediate_size
    return {"q_proj": (0, q), "k_proj": (q, kv), "v_proj": (q + kv, kv),
            "gate_proj": (0, i), "up_proj": (i, i)}[part]


def load_random_shape(name: str, dtype: torch.dtype, device: torch.device, seed: int = 0
                      ) -> LoadedModel:
    """A named shape (runtime/models/shapes.py) with random weights built on the device.
    `NAME@bf16` draws the weights in bf16 and runs them in `dtype`: an fp32 model whose weights
    are exactly those of the bf16 one (the reference of the bf16 tie check)."""
    from runtime.models.shapes import init_random_, parse_shape, shape_config, shape_fingerprint
    shape, weight_dtype = parse_shape(name)
    cfg = shape_config(shape)
    arch = arch_from_config(cfg)
    with torch.device("meta"):
        net = LlamaFamilyModel(arch)
    net = net.to_empty(device=device).to(weight_dtype or dtype)
    init_random_(net, seed)
    net = net.to(dtype)
    net.eval().requires_grad_(False)
    _rebuild_rope(net, arch, device)
    return LoadedModel(net, arch, cfg, shape_fingerprint(name, seed, dtype), Path(f"shape:{name}"))


def _rebuild_rope(net: LlamaFamilyModel, arch: ModelArch, device: torch.device) -> None:
    """Buffers created on the meta device are rebuilt on the target device."""
    from kernels.rotary import build_cos_sin_cache
    inv_freq, scaling = arch.inv_freq()
    net.cos_sin = build_cos_sin_cache(inv_freq, arch.max_position_embeddings, scaling).to(device)


def load_model(model: str, dtype: torch.dtype, device: torch.device, seed: int = 0
               ) -> LoadedModel:
    from transformers import AutoConfig

    if model.startswith("shape:"):
        return load_random_shape(model.removeprefix("shape:"), dtype, device, seed)
    path = resolve_model_path(model)
    try:
        hf_config = AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, OSError) as e:
        raise UnsupportedModelError(f"cannot read the config of {str(path)!r}: {e}") from e
    arch = arch_from_config(hf_config)
    files = _weight_files(path)
    with torch.device("meta"):
        net = LlamaFamilyModel(arch)
    net = net.to_empty(device=device).to(dtype)     # the parameters in the engine dtype
    params = dict(net.named_parameters())
    seen: set[str] = set()
    sizes_gb = [f.stat().st_size / 1e9 for f in files]
    t0 = time.perf_counter()
    for i, f in enumerate(files, 1):
        with safe_open(str(f), framework="pt", device="cpu") as st:
            for hf_name in st.keys():
                if "rotary_emb" in hf_name:
                    continue
                ours, part = _map_name(hf_name)
                if ours == "lm_head.weight" and arch.tie_word_embeddings:
                    continue
                if ours not in params:
                    raise ModelLoadError(f"unexpected weight {hf_name!r} in {f.name}")
                t = st.get_tensor(hf_name).to(dtype)
                p = params[ours]
                with torch.no_grad():
                    if part is None:
                        if p.shape != t.shape:
                            raise ModelLoadError(f"weight {hf_name!r} has shape {tuple(t.shape)}, "
                                                 f"expected {tuple(p.shape)}")
                        p.copy_(t)
                    else:
                        start, size = _fused_offset(arch, part)
                        p.narrow(0, start, size).copy_(t)
                seen.add(f"{ours}:{part}")
        if len(files) > 1:                   # progress, shard by shard
            log.info("read weights %d/%d (%s): %.2f of %.2f GB in %.1f s", i, len(files),
                     f.name, sum(sizes_gb[:i]), sum(sizes_gb), time.perf_counter() - t0)
    missing = [n for n in params if not any(s.startswith(n + ":") for s in seen)]
    if missing:
        raise ModelLoadError(f"weights missing from {str(path)!r}: {', '.join(missing[:5])}"
                             + (" ..." if len(missing) > 5 else ""))
    net.eval().requires_grad_(False)
    _rebuild_rope(net, arch, device)
    log.info("loaded %s (%s, %d layers) from %s as %s on %s", arch.architecture,
             f"{sum(p.numel() for p in params.values()) / 1e6:.1f}M params", arch.num_layers, path,
             dtype, device)
    return LoadedModel(net, arch, hf_config, _fingerprint(path, files, dtype), path)


def model_max_len(arch: ModelArch) -> int:
    limit = arch.max_position_embeddings
    if arch.sliding_window:
        limit = min(limit, int(arch.sliding_window))
    return limit


__all__ = ["LoadedModel", "ModelLoadError", "load_model", "model_max_len", "resolve_model_path"]
