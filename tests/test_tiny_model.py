"""The embedded tiny model: where it is made, what it holds, determinism and concurrent first use."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import runtime.tiny as tiny
from runtime.tiny import TINY_VERSION, default_cache_dir, ensure_tiny_model, is_complete
from runtime.tiny.build import IM_END, EOS, MARKER_FILE

from runtime.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
EXPECTED_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                  "tokenizer_config.json", "special_tokens_map.json", MARKER_FILE}


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return load_tokenizer(ensure_tiny_model())


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """One build found through XDG_CACHE_HOME, one through the cache_dir argument, and their times."""
    xdg = tmp_path_factory.mktemp("xdg")
    other = tmp_path_factory.mktemp("other")
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(xdg))
    try:
        t0 = time.perf_counter()
        a = ensure_tiny_model()
        t1 = time.perf_counter()
    finally:
        mp.undo()
    b = ensure_tiny_model(other)
    return {"xdg": xdg, "a": a, "b": b, "other": other, "seconds": t1 - t0}


def test_made_under_xdg_cache_home_with_expected_files(two_builds):
    a = two_builds["a"]
    assert a == two_builds["xdg"] / "agentkv" / "models" / TINY_VERSION
    assert {p.name for p in a.iterdir()} == EXPECTED_FILES
    assert two_builds["b"] == two_builds["other"] / TINY_VERSION
    assert two_builds["seconds"] < 30, f"tiny build took {two_builds['seconds']:.1f}s"
    # no temporary folders left beside the target
    assert not [p for p in a.parent.iterdir() if p.is_dir() and p.name != TINY_VERSION]


def test_default_cache_dir_without_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "agentkv" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "agentkv" / "models"


def test_two_builds_are_byte_identical(two_builds):
    a, b = two_builds["a"], two_builds["b"]
    for name in sorted(EXPECTED_FILES):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_parameter_count_and_config(two_builds):
    folder = two_builds["a"]
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    n = sum(torch.Size(s).numel() for s in shapes.values())
    assert 8_000_000 <= n <= 14_000_000, n
    assert "lm_head.weight" not in shapes  # tied to the embeddings

    cfg = json.loads((folder / "config.json").read_text())
    expected = {"vocab_size": 4096, "hidden_size": 512, "num_attention_heads": 8, "num_key_value_heads": 4,
                "head_dim": 64, "num_hidden_layers": 4, "intermediate_size": 1024, "rms_norm_eps": 1e-5,
                "rope_theta": 10000.0, "max_position_embeddings": 4096, "tie_word_embeddings": True}
    assert {k: cfg[k] for k in expected} == expected
    assert cfg["architectures"] == ["LlamaForCausalLM"]

    tok = json.loads((folder / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    gen = json.loads((folder / "generation_config.json").read_text())
    assert sorted(cfg["eos_token_id"]) == sorted(gen["eos_token_id"]) == sorted([ids[EOS], ids[IM_END]])
    assert cfg["bos_token_id"] == ids["<|bos|>"] and cfg["pad_token_id"] == ids["<|pad|>"]


def test_loads_with_transformers_auto_classes(two_builds):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = two_builds["a"]
    cfg = AutoConfig.from_pretrained(folder)
    assert cfg.model_type == "llama" and cfg.num_key_value_heads == 4
    tok = AutoTokenizer.from_pretrained(folder)
    assert len(tok) == 4096
    assert set(tok.all_special_tokens) >= {"<|bos|>", "<|eos|>", "<|pad|>", "<|im_start|>", "<|im_end|>"}
    for tag in ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"):
        assert len(tok.encode(tag, add_special_tokens=False)) == 1
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert 8_000_000 <= sum(p.numel() for p in model.parameters()) <= 14_000_000
    ids = torch.tensor([tok.encode("The lighthouse keeper waited", add_special_tokens=True)])
    assert ids[0, 0].item() == tok.bos_token_id
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 4096)
    assert torch.isfinite(logits).all()
    # weights are the wide init: greedy choices are not near-ties
    top2 = logits[0].topk(2, dim=-1).values
    assert (top2[:, 0] - top2[:, 1]).max() > 0.1


def test_unicode_round_trip(tiny_tokenizer):
    text = "Grüße aus Köln! 東京は大きな都市です。 你好，世界 🚀🎉 naïve café — “quotes” ∑xᵢ\n\tdef f(x): return {'a': [1, 2]}"
    ids = tiny_tokenizer.encode(text)
    assert tiny_tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges learned from the corpus


def _run_builder(cache: Path) -> subprocess.Popen:
    code = "import sys; from runtime.tiny import ensure_tiny_model; print(ensure_tiny_model(sys.argv[1]))"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", code, str(cache)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_first_use_gives_one_valid_folder(tmp_path, two_builds):
    procs = [_run_builder(tmp_path), _run_builder(tmp_path)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    paths = {out.strip() for out, _ in outs}
    assert paths == {str(tmp_path / TINY_VERSION)}
    target = tmp_path / TINY_VERSION
    assert is_complete(target)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [TINY_VERSION]
    for name in ("model.safetensors", "tokenizer.json"):  # other processes build the same bytes
        assert (target / name).read_bytes() == (two_builds["a"] / name).read_bytes(), name


def _copying_builder(source: Path, also_place_at: Path | None = None):
    """A stand-in for build_tiny_model that copies a finished build (and can simulate a racer)."""
    def build(folder, spec=None):
        for f in source.iterdir():
            shutil.copy2(f, Path(folder) / f.name)
        if also_place_at is not None:  # another process finished first
            shutil.copytree(source, also_place_at)
        return Path(folder)
    return build


def test_losing_the_rename_race_discards_own_copy(tmp_path, monkeypatch, two_builds):
    target = tmp_path / TINY_VERSION
    monkeypatch.setattr(tiny, "build_tiny_model", _copying_builder(two_builds["a"], also_place_at=target))
    assert ensure_tiny_model(tmp_path) == target
    assert is_complete(target)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [TINY_VERSION]


def test_unfinished_folder_is_replaced(tmp_path, monkeypatch, two_builds):
    target = tmp_path / TINY_VERSION
    target.mkdir()
    (target / "config.json").write_text("{}")  # a copy interrupted halfway: no version marker
    monkeypatch.setattr(tiny, "build_tiny_model", _copying_builder(two_builds["a"]))
    assert ensure_tiny_model(tmp_path) == target
    assert is_complete(target)
    assert {p.name for p in target.iterdir()} == EXPECTED_FILES
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [TINY_VERSION]


def test_chat_template_renders_tools_calls_and_results(tiny_tokenizer):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now.",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "Checking.",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
                        {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Bergen"}'}}]},
        {"role": "tool", "content": '{"temp_c": 3}'},
        {"role": "tool", "content": '{"temp_c": 5}'},
    ]
    text = tiny_tokenizer.hf.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|bos|><|im_start|>system\nBe brief.\n\n# Tools\n")
    assert "<tools>\n" + json.dumps(tools[0], ensure_ascii=False) + "\n</tools>" in text
    assert ("<|im_start|>assistant\nChecking.\n<tool_call>\n"
            '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n<tool_call>\n'
            '{"name": "get_weather", "arguments": {"city": "Bergen"}}\n</tool_call><|im_end|>\n') in text
    assert ("<|im_start|>tool\n<tool_response>\n{\"temp_c\": 3}\n</tool_response><|im_end|>\n"
            "<|im_start|>tool\n<tool_response>\n{\"temp_c\": 5}\n</tool_response><|im_end|>\n") in text
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    no_tools = tiny_tokenizer.hf.apply_chat_template(messages[1:2], tokenize=False, add_generation_prompt=False)
    assert no_tools == "<|bos|><|im_start|>user\nWeather in Oslo?<|im_end|>\n"
    # prefix-stable: each shorter conversation renders as a prefix of the longer one
    renders = [tiny_tokenizer.hf.apply_chat_template(messages[:k], tools=tools, tokenize=False)
               for k in range(1, len(messages) + 1)]
    assert all(b.startswith(a) for a, b in zip(renders, renders[1:]))
