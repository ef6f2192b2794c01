"""The embedded default model: what `triolm serve` runs with no MODEL argument.

It is generated deterministically on first use (seeded random weights, the real tekken
tokenizer that mistral-common ships, a ChatML template with hermes tool calls) and
cached on disk. Its weights are random: it exercises the whole server, and its text is
gibberish. Real use passes a .gguf file or a Hugging Face directory.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_NAME = "triolm-default"
DEFAULT_MODEL_CARD = (
    "triolm-default: a tiny qwen2-architecture model with RANDOM weights (seed 0) and a real "
    "tokenizer (mistral-common's tekken vocabulary), for trying the server out. Its output "
    "is gibberish; serve a .gguf file or a Hugging Face model directory for real use.")


def default_model_dir() -> Path:
    env = os.environ.get("TRIOLM_DEFAULT_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "triolm" / "default-model"


def make_default_model() -> Path:
    from triolm.testing.model_factory import make_test_model

    return make_test_model(out_dir=default_model_dir(), arch="qwen2", size="tiny", seed=0,
                           gguf_types=()).hf_dir
