"""Mixture-of-experts models in GGUF, as llama.cpp's converter writes them and its loader reads them.

- qwen3_moe is architecture `qwen3moe`: `expert_count`, `expert_used_count`,
  `expert_feed_forward_length` (the experts' width). llama.cpp always renormalises the
  top-k router weights of this architecture and makes every layer sparse, so a file
  cannot say `norm_topk_prob: false` or name dense layers (`check_writable` refuses them).
- mixtral is architecture `llama` with `expert_count` > 0; `feed_forward_length` is the
  experts' width; Q/K rows are permuted as for llama (`gguf_layout.permuted_heads`).
- The experts of a layer are one 3-D tensor per projection (`moe_layout`); reading
  hands each expert a 2-D view of its slice, so block-quantized experts stay the
  file's bytes and are indexed in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import torch

from triolm.formats import gguf_quants, moe_layout
from triolm.model.config import ModelConfig

#: GGUF `general.architecture` values that are MoE models whatever their metadata says.
MOE_GGUF_ARCHS = ("qwen3moe",)


def is_moe_file(arch: str, key: Callable[..., Any]) -> bool:
    """qwen3moe files, and llama files with experts (mixtral)."""
    if arch in MOE_GGUF_ARCHS:
        return True
    experts = key("expert_count", 0) if arch == "llama" else 0
    if isinstance(experts, bool) or not isinstance(experts, int):
        raise ValueError(f"metadata {arch}.expert_count: expected an integer, got {experts!r:.80}")
    return experts > 0


def config_from_metadata(base: ModelConfig, arch: str, key: Callable[..., Any]) -> ModelConfig:
    """Complete the llama-style `base` with the experts. `key(name, default)` reads
    `{arch}.{name}`; values are checked by `config.invalid_fields` afterwards."""
    experts = key("expert_count")
    used = key("expert_used_count")
    for name, value in (("expert_count", experts), ("expert_used_count", used)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"metadata {arch}.{name}: expected an integer, got {value!r:.80}")
    if arch == "llama":
        return attrs.evolve(base, architecture="mixtral", num_experts=experts, num_experts_per_tok=used,
                            moe_intermediate_size=base.intermediate_size, norm_topk_prob=True)
    width = key("expert_feed_forward_length", 0)
    if isinstance(width, bool) or not isinstance(width, int):
        raise ValueError(f"metadata {arch}.expert_feed_forward_length: expected an integer, got {width!r:.80}")
    if not width and used > 0:
        width = base.intermediate_size // used  # llama.cpp's fallback
    return attrs.evolve(base, architecture="qwen3_moe", num_experts=experts, num_experts_per_tok=used,
                        moe_intermediate_size=width, norm_topk_prob=True, qk_norm=True)


def check_writable(config: ModelConfig) -> None:
    """Refuse MoE configs llama.cpp would run as another model."""
    if not config.norm_topk_prob:
        raise ValueError("llama.cpp renormalises the top-k router weights: norm_topk_prob false "
                         "cannot be stored in GGUF")
    if config.dense_mlp_layers:
        raise ValueError("llama.cpp's qwen3moe has experts in every layer: dense_mlp_layers "
                         "cannot be stored in GGUF")
    if config.architecture == "mixtral" and config.moe_intermediate_size != config.intermediate_size:
        raise ValueError("mixtral's experts are intermediate_size wide in GGUF")


def write_metadata(w: Any, config: ModelConfig) -> None:
    """The expert keys of a GGUF file (`w`: a gguf.GGUFWriter)."""
    w.add_expert_count(config.num_experts)
    w.add_expert_used_count(config.num_experts_per_tok)
    if config.architecture == "qwen3_moe":
        w.add_expert_feed_forward_length(config.moe_intermediate_size)


def read_stacked(t: Any, names: list[str], shape: tuple[int, int, int], keep_quantized: bool,
                 dtype: torch.dtype, keep_float16: bool) -> tuple[str, dict[str, Any]]:
    """One stacked expert tensor (a gguf ReaderTensor of numpy shape [experts, rows, cols])
    -> (its GGML type name, {HF name of each expert: its 2-D weight}). Block types stay
    the file's bytes (uint8 [rows, row_bytes] views of the mapped file); float types
    become tensors of `dtype` (float16 for F16 with keep_float16), views of one copy."""
    experts, rows, cols = shape
    qname = t.tensor_type.name
    if keep_quantized and qname in gguf_quants.RAW_MATRIX_TYPES:
        raw = gguf_quants.torch_view(t.data.view(np.uint8)).reshape(experts, rows, -1)
        return qname, {name: raw[e] for e, name in enumerate(names)}
    as_dtype = torch.float16 if keep_float16 and qname == "F16" else dtype
    whole = gguf_quants.dequantize(t.data, t.tensor_type, experts * rows, cols, as_dtype)
    whole = whole.reshape(experts, rows, cols)
    return qname, {name: whole[e] for e, name in enumerate(names)}


def stacked_shape_in_file(t: Any) -> tuple[int, ...]:
    """A GGUF tensor's shape in numpy order ([experts, rows, cols] for stacked experts)."""
    return tuple(int(d) for d in reversed(t.shape.tolist()))


def expert_source(config: ModelConfig) -> dict[str, str]:
    """HF name of every expert tensor -> the GGUF stacked tensor holding it."""
    return {name: stacked for stacked, (names, _) in moe_layout.stacked_gguf_tensors(config).items()
            for name in names}
