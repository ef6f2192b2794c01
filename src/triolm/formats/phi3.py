"""Phi-3 / Phi-3.5-mini / Phi-4-mini: the llama decoder with three differences in the files.

- q|k|v and gate|up are stored fused (`qkv_proj`, `gate_up_proj`; GGUF `attn_qkv`,
  `ffn_up`): they are split into llama's names here, as row views (no copy), so the
  llama model, its native decode step and its weight representations run Phi unchanged;
- Phi-4-mini rotates only the first `partial_rotary_factor` of each head's dims: q/k
  rows are reordered once at load (`rope.partial_rotary_order`) so the full-width
  RoPE tables, whose extra dims have frequency 0, compute exactly HF's rotation;
- `longrope` scaling: per-frequency short/long divisors and an attention factor
  (`rope.longrope_inverse_frequencies`). The long factors apply when the model is
  built for a context beyond original_max_position_embeddings, llama.cpp's rule: every
  key in the cache is then rotated the same way, whatever length the request has.

GGUF (llama.cpp's converter, `conversion/phi.py`, and `src/models/phi3.cpp`): arch
`phi3`, RoPE in NEOX mode (q/k rows not permuted), `rope.dimension_count` = the
rotated dims, `rope.scaling.original_context_length`, `rope.scaling.attn_factor`, and
the factors as the `rope_factors_long/short.weight` tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np
import torch

from triolm.errors import ModelLoadError
from triolm.formats import gguf_layout as layout
from triolm.model.config import ModelConfig, RopeScaling
from triolm.model.rope import partial_rotary_order


def rope_scaling_from_hf(cfg: dict, rope: dict, rotary_dim: int) -> RopeScaling | None:
    """config.json's longrope (`rope_scaling`, or transformers 5's `rope_parameters`) ->
    RopeScaling; None without scaling. `attention_factor` defaults as transformers does."""
    kind = rope.get("rope_type") or rope.get("type")
    if kind in (None, "default"):
        return None
    if kind not in ("longrope", "su"):
        raise ModelLoadError(f"phi3: unsupported rope scaling {kind!r} (supported: longrope)")
    original = int(rope.get("original_max_position_embeddings")
                   or cfg.get("original_max_position_embeddings") or cfg["max_position_embeddings"])
    factor = rope.get("factor")
    if factor is None:
        factor = int(cfg.get("max_position_embeddings", original)) / original
    attention = rope.get("attention_factor")
    if attention is None:
        attention = math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1 else 1.0
    return RopeScaling(rope_type="longrope", factor=float(factor), original_max_position_embeddings=original,
                       short_factor=tuple(float(v) for v in rope["short_factor"]),
                       long_factor=tuple(float(v) for v in rope["long_factor"]),
                       attention_factor=float(attention))


def config_from_hf(cfg: dict) -> ModelConfig:
    """Phi3ForCausalLM's config.json (Phi-3/3.5 and Phi-4-mini)."""
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ModelLoadError(f"phi3: unsupported hidden activation {act!r} (supported: silu)")
    heads, hidden = int(cfg["num_attention_heads"]), int(cfg["hidden_size"])
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or (rope if rope.get("rope_type") not in (None, "default") else {})
    partial = float(cfg.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0)))
    head_dim = hidden // heads if heads > 0 else 0
    return ModelConfig(
        architecture="phi3",
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]),
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        rope_theta=float(cfg.get("rope_theta", rope.get("rope_theta", 10000.0))),
        rope_scaling=rope_scaling_from_hf(cfg, scaling, int(head_dim * partial)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=_eos_ids(cfg.get("eos_token_id")),
        partial_rotary_factor=partial,
    )


def _eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return (int(value),) if isinstance(value, int) else tuple(int(v) for v in value)


# ------------------------------------------------------------------------ weights

def _rows(t: Any, index: slice | torch.Tensor) -> Any:
    """Rows of a float tensor or of a GGUF block matrix (`QuantizedTensor`)."""
    if isinstance(t, torch.Tensor):
        return t[index]
    data = t.data[index]
    return attrs.evolve(t, shape=(data.shape[0], t.shape[1]), data=data)


def llama_weights(config: ModelConfig, weights: Mapping[str, Any]) -> dict[str, Any]:
    """Phi's tensors under llama's names: fused q|k|v and gate|up split into row views,
    q/k rows in the order the full-width RoPE tables expect (see module doc)."""
    c = config
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    out = dict(weights)
    order = None
    if c.rotary_dim < c.head_dim:
        order = partial_rotary_order(c.head_dim, c.rotary_dim)
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        qkv, gate_up = out.pop(p + layout.PHI3_QKV, None), out.pop(p + layout.PHI3_GATE_UP, None)
        if qkv is None or gate_up is None:
            missing = p + (layout.PHI3_QKV if qkv is None else layout.PHI3_GATE_UP)
            raise ModelLoadError(f"missing tensor {missing!r}")
        if tuple(qkv.shape) != (q + 2 * kv, c.hidden_size):
            raise ModelLoadError(f"tensor {p + layout.PHI3_QKV!r} has shape {tuple(qkv.shape)}, "
                                 f"expected {(q + 2 * kv, c.hidden_size)}")
        if tuple(gate_up.shape) != (2 * c.intermediate_size, c.hidden_size):
            raise ModelLoadError(f"tensor {p + layout.PHI3_GATE_UP!r} has shape {tuple(gate_up.shape)}, "
                                 f"expected {(2 * c.intermediate_size, c.hidden_size)}")
        for name, start, heads in (("q", 0, c.num_attention_heads), ("k", q, c.num_key_value_heads)):
            rows = torch.arange(start, start + heads * c.head_dim)
            if order is not None:
                rows = (rows.view(heads, c.head_dim)[:, order]).reshape(-1)
                out[p + f"self_attn.{name}_proj.weight"] = _rows(qkv, rows)
            else:
                out[p + f"self_attn.{name}_proj.weight"] = _rows(qkv, slice(start, start + heads * c.head_dim))
        out[p + "self_attn.v_proj.weight"] = _rows(qkv, slice(q + kv, q + 2 * kv))
        out[p + "mlp.gate_proj.weight"] = _rows(gate_up, slice(0, c.intermediate_size))
        out[p + "mlp.up_proj.weight"] = _rows(gate_up, slice(c.intermediate_size, 2 * c.intermediate_size))
    return out


# ------------------------------------------------------------------------ GGUF

def config_from_metadata(base: ModelConfig, key: Callable[..., Any],
                         tensors: Mapping[str, Any]) -> ModelConfig:
    """Complete the llama-style `base` with phi3's keys; `tensors` maps the file's tensor
    names to 1-D float32 arrays for the two rope factor tensors (when present)."""
    rot = int(key("rope.dimension_count", base.head_dim))
    partial = rot / base.head_dim if base.head_dim else 1.0
    scaling = None
    long, short = tensors.get(layout.PHI3_ROPE_LONG), tensors.get(layout.PHI3_ROPE_SHORT)
    if (long is None) != (short is None):
        raise ValueError(f"{layout.PHI3_ROPE_LONG} and {layout.PHI3_ROPE_SHORT} come as a pair")
    if long is not None:
        original = int(key("rope.scaling.original_context_length", base.max_position_embeddings))
        scaling = RopeScaling(
            rope_type="longrope", factor=base.max_position_embeddings / original,
            original_max_position_embeddings=original,
            short_factor=tuple(float(v) for v in np.asarray(short, dtype=np.float32).reshape(-1)),
            long_factor=tuple(float(v) for v in np.asarray(long, dtype=np.float32).reshape(-1)),
            attention_factor=float(np.float32(key("rope.scaling.attn_factor", 1.0))))
    return attrs.evolve(base, partial_rotary_factor=partial, rope_scaling=scaling)


def check_writable(config: ModelConfig) -> None:
    c = config
    if c.head_dim * c.num_attention_heads != c.hidden_size:
        raise ValueError("llama.cpp's phi3 takes head_dim = hidden_size / heads")
    if c.rope_scaling is not None and c.rope_scaling.rope_type != "longrope":
        raise ValueError(f"{c.rope_scaling.rope_type} rope scaling cannot be stored for phi3")


def write_metadata(w: Any, config: ModelConfig) -> None:
    """phi3's keys (`w`: a gguf.GGUFWriter), after the llama-style ones."""
    c = config
    w.add_sliding_window(0)  # the converter's marker of a model without a window
    s = c.rope_scaling
    if s is not None:
        w.add_rope_scaling_orig_ctx_len(s.original_max_position_embeddings)
        w.add_rope_scaling_attn_factors(s.attention_factor)


def extra_tensors(config: ModelConfig) -> dict[str, np.ndarray]:
    """The longrope factor tensors, as llama.cpp's converter writes them."""
    s = config.rope_scaling
    if s is None:
        return {}
    return {layout.PHI3_ROPE_LONG: np.array(s.long_factor, dtype=np.float32),
            layout.PHI3_ROPE_SHORT: np.array(s.short_factor, dtype=np.float32)}
