"""The llama-family decoder (llama, mistral, qwen2, qwen3) as plain tensors and functions.

Weights are fused where that saves kernel launches (q|k|v, gate|up); the forward pass
takes a flat batch of tokens, so prefill and batched decode share one code path.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from triolm.errors import ModelLoadError
from triolm.models.attention import AttentionMetadata, paged_attention
from triolm.models.config import ModelConfig
from triolm.models.rope import RotaryEmbedding


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.pow(2).mean(-1, keepdim=True)
    return x * torch.rsqrt(variance + eps) * weight


class DecoderLayer:
    def __init__(self, config: ModelConfig, w: dict[str, torch.Tensor]):
        self.config = config
        self.input_norm = w["input_layernorm"]
        self.post_attn_norm = w["post_attention_layernorm"]
        self.qkv = w["qkv"]
        self.qkv_bias = w.get("qkv_bias")
        self.o_proj = w["o_proj"]
        self.gate_up = w["gate_up"]
        self.down = w["down"]
        self.q_norm = w.get("q_norm")
        self.k_norm = w.get("k_norm")
        h, kvh, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.q_size, self.kv_size = h * d, kvh * d
        self.scale = d ** -0.5

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rope: RotaryEmbedding,
                cache_k: torch.Tensor, cache_v: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        c = self.config
        h = rms_norm(x, self.input_norm, c.rms_norm_eps)
        qkv = F.linear(h, self.qkv, self.qkv_bias)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, c.num_attention_heads, c.head_dim)
        k = k.view(-1, c.num_key_value_heads, c.head_dim)
        v = v.view(-1, c.num_key_value_heads, c.head_dim)
        if self.q_norm is not None:
            q = rms_norm(q, self.q_norm, c.rms_norm_eps)
            k = rms_norm(k, self.k_norm, c.rms_norm_eps)
        q = rope.apply(q, positions)
        k = rope.apply(k, positions)
        attn = paged_attention(q, k, v, cache_k, cache_v, meta, self.scale)
        x = x + F.linear(attn.reshape(-1, self.q_size), self.o_proj)
        h = rms_norm(x, self.post_attn_norm, c.rms_norm_eps)
        gate, up = F.linear(h, self.gate_up).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, self.down)


class LlamaModel:
    """Forward pass of a llama-family causal LM over a paged KV cache."""

    def __init__(self, config: ModelConfig, weights: Mapping[str, torch.Tensor],
                 dtype: torch.dtype = torch.float32, max_positions: int | None = None):
        self.config = config
        self.dtype = dtype
        fused = fuse_weights(config, weights, dtype)
        self.embed = fused["embed"]
        self.norm = fused["norm"]
        self.lm_head = fused["lm_head"]
        self.layers = [DecoderLayer(config, fused["layers"][i]) for i in range(config.num_hidden_layers)]
        self.rope = RotaryEmbedding(config, max_positions or config.max_position_embeddings, dtype)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states [T, hidden] for a flat batch. kv_cache: [layers, 2, slots, kvh, d]."""
        x = F.embedding(input_ids, self.embed)
        for i, layer in enumerate(self.layers):
            x = layer.forward(x, positions, self.rope, kv_cache[i, 0], kv_cache[i, 1], meta)
        return x

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits for the given rows of hidden states."""
        h = rms_norm(hidden, self.norm, self.config.rms_norm_eps)
        return F.linear(h, self.lm_head).float()


def _take(weights: Mapping[str, torch.Tensor], name: str, shape: tuple[int, ...],
          dtype: torch.dtype) -> torch.Tensor:
    if name not in weights:
        raise ModelLoadError(f"missing tensor {name!r}")
    t = weights[name]
    if tuple(t.shape) != shape:
        raise ModelLoadError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
    return t.to(dtype).contiguous()


def fuse_weights(config: ModelConfig, weights: Mapping[str, torch.Tensor],
                 dtype: torch.dtype) -> dict:
    """Check every tensor's presence and shape, then fuse q|k|v and gate|up."""
    c = config
    hid, inter = c.hidden_size, c.intermediate_size
    qd, kvd = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    embed = _take(weights, "model.embed_tokens.weight", (c.vocab_size, hid), dtype)
    if "lm_head.weight" in weights and not c.tie_word_embeddings:
        lm_head = _take(weights, "lm_head.weight", (c.vocab_size, hid), dtype)
    elif c.tie_word_embeddings or "lm_head.weight" not in weights:
        lm_head = embed
    layers = []
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        q = _take(weights, p + "self_attn.q_proj.weight", (qd, hid), dtype)
        k = _take(weights, p + "self_attn.k_proj.weight", (kvd, hid), dtype)
        v = _take(weights, p + "self_attn.v_proj.weight", (kvd, hid), dtype)
        layer = {
            "input_layernorm": _take(weights, p + "input_layernorm.weight", (hid,), dtype),
            "post_attention_layernorm": _take(weights, p + "post_attention_layernorm.weight", (hid,), dtype),
            "qkv": torch.cat([q, k, v], dim=0),
            "o_proj": _take(weights, p + "self_attn.o_proj.weight", (hid, qd), dtype),
            "gate_up": torch.cat([
                _take(weights, p + "mlp.gate_proj.weight", (inter, hid), dtype),
                _take(weights, p + "mlp.up_proj.weight", (inter, hid), dtype)], dim=0),
            "down": _take(weights, p + "mlp.down_proj.weight", (hid, inter), dtype),
        }
        if c.attention_bias:
            layer["qkv_bias"] = torch.cat([
                _take(weights, p + "self_attn.q_proj.bias", (qd,), dtype),
                _take(weights, p + "self_attn.k_proj.bias", (kvd,), dtype),
                _take(weights, p + "self_attn.v_proj.bias", (kvd,), dtype)])
        if c.qk_norm:
            layer["q_norm"] = _take(weights, p + "self_attn.q_norm.weight", (c.head_dim,), dtype)
            layer["k_norm"] = _take(weights, p + "self_attn.k_norm.weight", (c.head_dim,), dtype)
        layers.append(layer)
    norm = _take(weights, "model.norm.weight", (hid,), dtype)
    return {"embed": embed, "lm_head": lm_head, "norm": norm, "layers": layers}
