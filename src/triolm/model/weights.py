"""Taking a decoder's tensors by their Hugging Face names: presence and shape checked,
each matrix in the representation the file gives it (see `linear.py`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from triolm.errors import ModelLoadError
from triolm.model import linear as lin
from triolm.model.config import ModelConfig


def take(weights: Mapping[str, Any], name: str, shape: tuple[int, ...]) -> Any:
    if name not in weights:
        raise ModelLoadError(f"missing tensor {name!r}")
    t = weights[name]
    if tuple(t.shape) != shape:
        raise ModelLoadError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
    return t


def vector(weights: Mapping[str, Any], name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    t = take(weights, name, shape)
    if not isinstance(t, torch.Tensor):
        t = t.dequantize(torch.float32)
    return t.to(dtype).contiguous()


def make_linear(t: Any, dtype: torch.dtype) -> lin.Linear:
    """The representation of one weight matrix (see module `linear`)."""
    if not isinstance(t, torch.Tensor):  # a GGUF matrix as the file's bytes
        if dtype == torch.float32:
            return lin.from_blocks(t.qtype, t.data, *t.shape)
        return lin.DenseLinear(t.dequantize(torch.float32).to(dtype))
    if dtype == torch.float32 and t.dtype == torch.float16:
        return lin.Float16Linear(t)
    return lin.DenseLinear(t.to(dtype))


def matrix(weights: Mapping[str, Any], name: str, shape: tuple[int, int], dtype: torch.dtype) -> lin.Linear:
    return make_linear(take(weights, name, shape), dtype)


def embeddings(config: ModelConfig, weights: Mapping[str, Any],
               dtype: torch.dtype) -> tuple[lin.Linear, lin.Linear]:
    """(embedding, output projection): one matrix when the model ties them or the file
    has no lm_head."""
    c = config
    embed = matrix(weights, "model.embed_tokens.weight", (c.vocab_size, c.hidden_size), dtype)
    if "lm_head.weight" in weights and not c.tie_word_embeddings:
        return embed, matrix(weights, "lm_head.weight", (c.vocab_size, c.hidden_size), dtype)
    return embed, embed


def attention(config: ModelConfig, weights: Mapping[str, Any], prefix: str,
              dtype: torch.dtype) -> tuple[lin.Linear, torch.Tensor | None, lin.Linear]:
    """(q|k|v fused, its bias or None, o_proj) of layer `prefix` ("model.layers.N.")."""
    c = config
    hid, qd, kvd = c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    p = prefix + "self_attn."
    qkv = lin.concat([matrix(weights, p + "q_proj.weight", (qd, hid), dtype),
                      matrix(weights, p + "k_proj.weight", (kvd, hid), dtype),
                      matrix(weights, p + "v_proj.weight", (kvd, hid), dtype)])
    bias = None
    if c.attention_bias:
        bias = torch.cat([vector(weights, p + f"{n}_proj.bias", (size,), dtype)
                          for n, size in (("q", qd), ("k", kvd), ("v", kvd))])
    return qkv, bias, matrix(weights, p + "o_proj.weight", (hid, qd), dtype)


def gated_mlp(config: ModelConfig, weights: Mapping[str, Any], names: tuple[str, str, str], width: int,
              dtype: torch.dtype) -> tuple[lin.Linear, lin.Linear]:
    """(gate|up fused, down) of a gated MLP of `width` from its (gate, up, down) tensors."""
    hid = config.hidden_size
    gate, up, down = names
    return (lin.concat([matrix(weights, gate, (width, hid), dtype), matrix(weights, up, (width, hid), dtype)]),
            matrix(weights, down, (hid, width), dtype))


def native_slots(name: str, layer: lin.Linear) -> dict[str, int]:
    """A weight's (kind, w*, d*) plan slots, named `<name>_kind`, `_w`, `_d` (decode_plan.h)."""
    ref = layer.native_ref()
    if ref is None:
        raise ValueError(f"{name}: a {layer.kind} weight the native kernels cannot read")
    kind, w, d = ref
    return {f"{name}_kind": kind, f"{name}_w": w, f"{name}_d": d}


def ptr(t: torch.Tensor | None) -> int:
    """A tensor's address for a plan slot; 0 for none."""
    return 0 if t is None else t.data_ptr()
