"""The model class of an architecture: one place for the loaders and the engine to ask."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from triolm.formats import phi3
from triolm.model.config import MOE_ARCHITECTURES, ModelConfig
from triolm.model.gemma import GemmaModel
from triolm.model.granite import GraniteModel
from triolm.model.llama import LlamaModel
from triolm.model.moe import MoeModel
from triolm.model.smollm3 import SmolLM3Model

Model = LlamaModel | GemmaModel | MoeModel

_GEMMA = ("gemma2", "gemma3")


def build_model(config: ModelConfig, weights: Mapping[str, Any], dtype: torch.dtype = torch.float32,
                max_positions: int | None = None) -> Model:
    """The decoder for `config.architecture`, built from HF-named `weights`."""
    if config.architecture in MOE_ARCHITECTURES:
        return MoeModel(config, weights, dtype=dtype, max_positions=max_positions)
    if config.architecture == "phi3":
        weights = phi3.llama_weights(config, weights)
    cls = GemmaModel if config.architecture in _GEMMA else _LLAMA_VARIANTS.get(config.architecture, LlamaModel)
    return cls(config, weights, dtype=dtype, max_positions=max_positions)


_LLAMA_VARIANTS: dict[str, type[LlamaModel]] = {"granite": GraniteModel, "smollm3": SmolLM3Model}
