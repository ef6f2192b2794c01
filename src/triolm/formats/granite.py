"""Granite 3.x's config: the llama decoder (model/llama.py) with four scalars.

- the embedding is multiplied by `embedding_multiplier`;
- each branch (attention, MLP) is multiplied by `residual_multiplier` before it is
  added to the residual stream;
- attention scores are scaled by `attention_multiplier` (not head_dim^-1/2);
- logits are divided by `logits_scaling`.

GGUF (llama.cpp's converter, `conversion/granite.py`; `src/models/granite.cpp`): arch
`granite`, llama's tensor names and Q/K permutation, the scalars as
`embedding_scale`, `residual_scale`, `attention.scale`, `logit_scale`.
"""

from __future__ import annotations

import attrs

from triolm.model.config import ModelConfig


def with_multipliers_from_hf(config: ModelConfig, cfg: dict) -> ModelConfig:
    """`config` with the four multipliers of a Granite config.json (transformers'
    defaults when absent)."""
    return attrs.evolve(config, embedding_multiplier=float(cfg.get("embedding_multiplier", 1.0)),
                        residual_multiplier=float(cfg.get("residual_multiplier", 1.0)),
                        attention_multiplier=float(cfg.get("attention_multiplier", 1.0)),
                        logits_scaling=float(cfg.get("logits_scaling", 1.0)))
