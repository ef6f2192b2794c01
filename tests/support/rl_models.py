"""Tiny models for weight-refresh tests: A and B share every shape and the tokenizer (two
seeds of the same architecture); the others differ from A in exactly one way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import attrs
from safetensors.torch import save_file

from support.model_factory import TestModelPaths, hf_config_dict, make_test_model
from triolm.model.random_init import random_weights


def model_b(seed: int = 1) -> TestModelPaths:
    """The qwen2 test model with other random weights (A is seed 0)."""
    return make_test_model(arch="qwen2", seed=seed, gguf_types=("F32",))


def wider_mlp_copy(a: TestModelPaths, out: Path) -> Path:
    """A's tokenizer and architecture with a wider MLP (intermediate_size 96, not 128)."""
    config = attrs.evolve(a.config, intermediate_size=96)
    _copy_tokenizer_files(a.hf_dir, out)
    (out / "config.json").write_text(json.dumps(hf_config_dict(config, "qwen2"), indent=2))
    save_file(random_weights(config, 7), str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def relabelled_vocab_copy(b: TestModelPaths, out: Path) -> Path:
    """B's weights and shapes, with two tokens of the tokenizer swapped (so ids mean other text)."""
    _copy_tokenizer_files(b.hf_dir, out)
    shutil.copy(b.hf_dir / "config.json", out / "config.json")
    shutil.copy(b.hf_dir / "model.safetensors", out / "model.safetensors")
    (out / "tekken.json").unlink(missing_ok=True)
    data = json.loads((out / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    first, second = sorted((t for t, i in vocab.items() if 1000 <= i < 1002), key=vocab.get)
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (out / "tokenizer.json").write_text(json.dumps(data))
    return out


def _copy_tokenizer_files(src: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, out / f.name)



