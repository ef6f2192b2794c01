"""Granite 3.x: the llama decoder with four scalars from config.json.

- the embedding is multiplied by `embedding_multiplier`;
- each branch (attention, MLP) is multiplied by `residual_multiplier` before it is
  added to the residual stream;
- attention scores are scaled by `attention_multiplier` (not head_dim^-1/2);
- logits are divided by `logits_scaling`.

GGUF (llama.cpp's converter, `conversion/granite.py`; `src/models/granite.cpp`): arch
`granite`, llama's tensor names and Q/K permutation, the scalars as
`embedding_scale`, `residual_scale`, `attention.scale`, `logit_scale`.

Decode runs the per-layer torch path: the native decode step folds the residual add
into the projections and has no branch multiplier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from triolm.model.attention import AttentionMetadata, paged_attention
from triolm.model.config import ModelConfig
from triolm.model.llama import CacheState, DecoderLayer, LlamaModel, rms_norm
from triolm.model.rope import RotaryEmbedding


def config_fields_from_hf(cfg: dict) -> dict[str, float]:
    """The four multipliers of a Granite config.json (transformers' defaults when absent)."""
    return {"embedding_multiplier": float(cfg.get("embedding_multiplier", 1.0)),
            "residual_multiplier": float(cfg.get("residual_multiplier", 1.0)),
            "attention_multiplier": float(cfg.get("attention_multiplier", 1.0)),
            "logits_scaling": float(cfg.get("logits_scaling", 1.0))}


class GraniteLayer(DecoderLayer):
    def __init__(self, config: ModelConfig, w: dict[str, Any]):
        super().__init__(config, w)
        self.scale = config.attention_multiplier if config.attention_multiplier is not None else self.scale
        self.residual = config.residual_multiplier

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rope: RotaryEmbedding,
                cache_k: torch.Tensor, cache_v: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        c = self.config
        q, k, v = self._qkv(x)
        q = rope.apply(q.reshape(-1, c.num_attention_heads, c.head_dim), positions)
        k = rope.apply(k.reshape(-1, c.num_key_value_heads, c.head_dim), positions)
        v = v.reshape(-1, c.num_key_value_heads, c.head_dim)
        attn = paged_attention(q, k, v, cache_k, cache_v, meta, self.scale)
        x.add_(self.o_proj(attn.reshape(-1, self.q_size)), alpha=self.residual)
        gate, up = self.gate_up(rms_norm(x, self.post_attn_norm, c.rms_norm_eps)).chunk(2, dim=-1)
        x.add_(self.down(F.silu(gate) * up), alpha=self.residual)
        return x


class GraniteModel(LlamaModel):
    """`LlamaModel` with Granite's multipliers (see module doc)."""

    layer_class = GraniteLayer

    @property
    def native_decode(self) -> bool:
        return False

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                meta: AttentionMetadata, state: CacheState | None = None,
                before_layers: Callable[[], None] | None = None) -> torch.Tensor:
        x = self.embed.rows(input_ids).to(self.dtype) * self.config.embedding_multiplier
        if state is None or state.kv_cache is not kv_cache:
            state = CacheState(self, kv_cache)
        if before_layers is not None:
            before_layers()
        for layer, (k, v) in zip(self.layers, state.layers, strict=False):
            layer.forward(x, positions, self.rope, k, v, meta)
        return x

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().logits(hidden) / self.config.logits_scaling
