"""Loading a Hugging Face folder: sharded weights load as one (with progress per shard), a
missing or misshapen weight is named, and the fingerprint follows the weights, not the path."""
import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_models import save_model
from runtime.models.loader import ModelLoadError, load_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same random llama saved whole and in shards of at most 200 KB."""
    from transformers import AutoModelForCausalLM
    whole = save_model("llama", tmp_path_factory.mktemp("whole"))
    sharded = tmp_path_factory.mktemp("sharded")
    AutoModelForCausalLM.from_pretrained(whole).save_pretrained(
        sharded, safe_serialization=True, max_shard_size="200KB")
    return whole, sharded


def params(loaded) -> dict[str, torch.Tensor]:
    return dict(loaded.model.named_parameters())


def test_sharded_weights_load_as_the_whole_file_does(folders, caplog):
    whole, sharded = folders
    shards = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    n = len(set(shards.values()))
    assert n >= 3
    a = load_model(str(whole), torch.float32, CPU)
    with caplog.at_level(logging.INFO, logger="runtime.models.loader"):
        b = load_model(str(sharded), torch.float32, CPU)
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("read weights")]
    assert [m.split(" (")[0] for m in progress] == [f"read weights {i}/{n}" for i in
                                                    range(1, n + 1)]


def test_the_fingerprint_follows_the_weights_not_the_folder(folders, tmp_path):
    whole, _ = folders
    moved = shutil.copytree(whole, tmp_path / "moved")
    fp = load_model(str(whole), torch.float32, CPU).fingerprint
    assert load_model(str(moved), torch.float32, CPU).fingerprint == fp
    assert load_model(str(whole), torch.bfloat16, CPU).fingerprint != fp
    w = load_file(moved / "model.safetensors")
    name = next(k for k in w if k.endswith("mlp.up_proj.weight"))
    w[name] = w[name] + 1.0                   # other weights, same shapes and sizes
    save_file(w, moved / "model.safetensors", metadata={"format": "pt"})
    assert load_model(str(moved), torch.float32, CPU).fingerprint != fp


def test_a_missing_or_misshapen_weight_is_named(folders, tmp_path):
    whole, _ = folders
    w = load_file(whole / "model.safetensors")
    name = next(k for k in w if k.endswith("layers.1.self_attn.o_proj.weight"))
    bad = shutil.copytree(whole, tmp_path / "missing")
    save_file({k: v for k, v in w.items() if k != name}, bad / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="weights missing from .*layers.1.self_attn.o_proj"):
        load_model(str(bad), torch.float32, CPU)
    bad = shutil.copytree(whole, tmp_path / "misshapen")
    save_file({**w, name: w[name][:, :-1].contiguous()}, bad / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=f"weight '{name}' has shape"):
        load_model(str(bad), torch.float32, CPU)
