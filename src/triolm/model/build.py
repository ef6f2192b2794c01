"""The model class of an architecture: one place for the loaders and the engine to ask."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from triolm.model.config import MOE_ARCHITECTURES, ModelConfig
from triolm.model.gemma import GemmaModel
from triolm.model.llama import LlamaModel
from triolm.model.moe import MoeModel

Model = LlamaModel | GemmaModel | MoeModel

_GEMMA = ("gemma2", "gemma3")


def build_model(config: ModelConfig, weights: Mapping[str, Any], dtype: torch.dtype = torch.float32,
                max_positions: int | None = None) -> Model:
    """The decoder for `config.architecture`, built from HF-named `weights`."""
    if config.architecture in MOE_ARCHITECTURES:
        return MoeModel(config, weights, dtype=dtype, max_positions=max_positions)
    cls = GemmaModel if config.architecture in _GEMMA else LlamaModel
    return cls(config, weights, dtype=dtype, max_positions=max_positions)
