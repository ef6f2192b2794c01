"""GGUF metadata of phi3, granite and smollm3, both directions, as llama.cpp keeps it.

Each family's llama-style keys are written and read by `gguf_writer` / `gguf_reader`;
this module adds what differs (see each family's module doc for llama.cpp's sources):
- phi3: `rope.dimension_count` (the rotated dims), longrope's original context and
  attention factor keys, and its two factor tensors;
- granite: `embedding_scale`, `residual_scale`, `attention.scale`, `logit_scale`;
- smollm3: nothing; llama.cpp fixes RoPE-less layers to every fourth one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np

from triolm.formats import gguf_layout as layout
from triolm.formats import phi3, smollm3
from triolm.model.config import ModelConfig

FAMILY_ARCHS = ("phi3", "granite", "smollm3")

#: GGUF tensors that are not weights of a layer: read with the metadata.
EXTRA_TENSORS = (layout.PHI3_ROPE_LONG, layout.PHI3_ROPE_SHORT)


def _f32(value: Any) -> float:
    """The shortest decimal that rounds to the same float32 (what was written)."""
    return float(str(np.float32(value)))


#: Phi-3's end of turn: llama.cpp ends generation on it (its vocabulary's eos is
#: <|endoftext|>), as Phi's generation_config.json does.
PHI3_END_OF_TURN = "<|end|>"


def config_from_metadata(base: ModelConfig, arch: str, key: Callable[..., Any],
                         tensors: Mapping[str, Any], tokens: list[str] | None = None) -> ModelConfig:
    """Complete the llama-style `base` config; `key(name, default)` reads `{arch}.{name}`;
    `tensors` holds the file's EXTRA_TENSORS as float32 arrays; `tokens` the vocabulary."""
    if arch == "phi3":
        config = phi3.config_from_metadata(attrs.evolve(base, architecture="phi3"), key, tensors)
        if tokens is not None and PHI3_END_OF_TURN in tokens:
            end = tokens.index(PHI3_END_OF_TURN)
            if end not in config.eos_token_ids:
                config = attrs.evolve(config, eos_token_ids=config.eos_token_ids + (end,))
        return config
    if arch == "granite":
        attention = key("attention.scale", 0.0)
        return attrs.evolve(
            base, architecture="granite",
            embedding_multiplier=_f32(key("embedding_scale", 1.0) or 1.0),
            residual_multiplier=_f32(key("residual_scale", 1.0) or 1.0),
            attention_multiplier=_f32(attention) if attention else None,
            logits_scaling=_f32(key("logit_scale")))
    if arch == "smollm3":
        return attrs.evolve(base, architecture="smollm3",
                            rope_layers=smollm3.rope_layers_every(smollm3.LLAMA_CPP_NO_ROPE_STEP,
                                                                  base.num_hidden_layers))
    return base


def check_writable(config: ModelConfig) -> None:
    """Refuse configs llama.cpp would run as another model."""
    if config.architecture == "phi3":
        phi3.check_writable(config)
    elif config.architecture == "smollm3":
        smollm3.check_writable(config.rope_layers, config.num_hidden_layers)


def write_metadata(w: Any, config: ModelConfig) -> None:
    """The family's keys (`w`: a gguf.GGUFWriter), after the llama-style ones."""
    c = config
    if c.architecture == "phi3":
        phi3.write_metadata(w, c)
    elif c.architecture == "granite":
        w.add_embedding_scale(c.embedding_multiplier)
        w.add_residual_scale(c.residual_multiplier)
        if c.attention_multiplier is not None:
            w.add_attention_scale(c.attention_multiplier)
        w.add_logit_scale(c.logits_scaling)


def extra_tensors(config: ModelConfig) -> dict[str, np.ndarray]:
    return phi3.extra_tensors(config) if config.architecture == "phi3" else {}
