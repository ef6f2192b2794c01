"""The model class of an architecture: one place for the loaders and the engine to ask."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from triolm.formats import phi3
from triolm.model.config import ModelConfig
from triolm.model.gemma import GemmaModel
from triolm.model.llama import LlamaModel

Model = LlamaModel | GemmaModel

_GEMMA = ("gemma2", "gemma3")


def build_model(config: ModelConfig, weights: Mapping[str, Any], dtype: torch.dtype = torch.float32,
                max_positions: int | None = None) -> Model:
    """The decoder for `config.architecture`, built from HF-named `weights`: Gemma's, or
    llama's for every other family (their differences are config fields and layer parts)."""
    if config.architecture in _GEMMA:
        return GemmaModel(config, weights, dtype=dtype, max_positions=max_positions)
    if config.architecture == "phi3":
        weights = phi3.llama_weights(config, weights)
    return LlamaModel(config, weights, dtype=dtype, max_positions=max_positions)
