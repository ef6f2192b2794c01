"""The model class of an architecture: one place for the loaders and the engine to ask."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from triolm.model.config import ModelConfig
from triolm.model.gemma import GemmaModel
from triolm.model.llama import LlamaModel

Model = LlamaModel | GemmaModel

_GEMMA = ("gemma2", "gemma3")


def build_model(config: ModelConfig, weights: Mapping[str, Any], dtype: torch.dtype = torch.float32,
                max_positions: int | None = None) -> Model:
    """The decoder for `config.architecture`, built from HF-named `weights`."""
    cls = GemmaModel if config.architecture in _GEMMA else LlamaModel
    return cls(config, weights, dtype=dtype, max_positions=max_positions)
