"""Broken Hugging Face model directories fail with a ModelLoadError that says what is wrong."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from triolm.errors import ModelLoadError
from triolm.formats.hf_config import read_hf_config
from triolm.formats.safetensors_loader import read_safetensors
from triolm.model.llama import LlamaModel


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    src = tiny_model("llama").hf_dir
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def load(path):
    return LlamaModel(read_hf_config(path), read_safetensors(path))


def test_unsupported_architecture_names_it_and_the_supported_ones(model_copy):
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (model_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"gpt_neox.*llama, mistral, qwen2, qwen3"):
        load(model_copy)


def test_missing_config(model_copy):
    (model_copy / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load(model_copy)


def test_missing_tensor_is_named(model_copy):
    tensors = load_file(model_copy / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, model_copy / "model.safetensors")
    with pytest.raises(ModelLoadError, match="model.layers.1.mlp.down_proj.weight"):
        load(model_copy)


def test_shape_mismatch_names_tensor_and_shapes(model_copy):
    tensors = load_file(model_copy / "model.safetensors")
    w = tensors["model.layers.0.self_attn.q_proj.weight"]
    tensors["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(w.shape[0] + 1, w.shape[1])
    save_file(tensors, model_copy / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"q_proj.weight.*shape"):
        load(model_copy)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(model_copy, damage):
    path = model_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x07" * 64)
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load(model_copy)
