"""Write a llama-family model as a GGUF file llama.cpp (and `read_gguf`) can load.

Follows llama.cpp's converter: its tensor names, Q/K rows permuted for the `llama`
architecture (llama, mistral), 1-D tensors (norms, biases) kept F32, llama3 rope
scaling stored as the `rope_freqs.weight` factors tensor (llama.cpp has no metadata
key for it), mistral written as architecture `llama` with "mistral" in its name,
gemma's norms stored as w + 1 with its own keys (`gemma_gguf`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_VERSION, GGMLQuantizationType, GGUFValueType, GGUFWriter, LlamaFileType

from triolm.formats import family_gguf, gemma_gguf, gguf_quants, moe_gguf, moe_layout
from triolm.formats import gguf_layout as layout
from triolm.model.config import ModelConfig

T = GGMLQuantizationType

# file_type -> (type of most 2-D tensors, {tensor-name suffix: type} for llama.cpp-like mixes,
#               general.file_type)
_FILE_TYPES: dict[str, tuple[T, dict[str, T], LlamaFileType]] = {
    "F32": (T.F32, {}, LlamaFileType.ALL_F32),
    "F16": (T.F16, {}, LlamaFileType.MOSTLY_F16),
    "BF16": (T.BF16, {}, LlamaFileType.MOSTLY_BF16),
    "Q8_0": (T.Q8_0, {}, LlamaFileType.MOSTLY_Q8_0),
    "Q4_0": (T.Q4_0, {}, LlamaFileType.MOSTLY_Q4_0),
    "Q4_1": (T.Q4_1, {}, LlamaFileType.MOSTLY_Q4_1),
    "Q5_0": (T.Q5_0, {}, LlamaFileType.MOSTLY_Q5_0),
    "Q5_1": (T.Q5_1, {}, LlamaFileType.MOSTLY_Q5_1),
    "Q2_K": (T.Q2_K, {}, LlamaFileType.MOSTLY_Q2_K),
    "Q3_K": (T.Q3_K, {}, LlamaFileType.MOSTLY_Q3_K_S),
    "Q4_K": (T.Q4_K, {}, LlamaFileType.MOSTLY_Q4_K_S),
    "Q5_K": (T.Q5_K, {}, LlamaFileType.MOSTLY_Q5_K_S),
    "Q6_K": (T.Q6_K, {}, LlamaFileType.MOSTLY_Q6_K),
    "IQ4_NL": (T.IQ4_NL, {}, LlamaFileType.MOSTLY_IQ4_NL),
    "IQ4_XS": (T.IQ4_XS, {}, LlamaFileType.MOSTLY_IQ4_XS),
    # Like llama-quantize's *_M recipes (simplified): more bits where errors hurt most.
    "Q4_K_M": (T.Q4_K, {"attn_v.weight": T.Q6_K, "ffn_down.weight": T.Q6_K, "output.weight": T.Q6_K},
               LlamaFileType.MOSTLY_Q4_K_M),
    "Q5_K_M": (T.Q5_K, {"attn_v.weight": T.Q6_K, "ffn_down.weight": T.Q6_K, "output.weight": T.Q6_K},
               LlamaFileType.MOSTLY_Q5_K_M),
}
FILE_TYPES = tuple(_FILE_TYPES)

# When a row is not a whole number of blocks, llama-quantize falls back to another type.
_FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0,
             T.IQ4_XS: T.IQ4_NL}

# GGUF value types of the tokenizer keys llama.cpp reads (Python ints are ambiguous).
_KEY_TYPES: dict[str, tuple[GGUFValueType, GGUFValueType | None]] = {
    "tokenizer.ggml.tokens": (GGUFValueType.ARRAY, GGUFValueType.STRING),
    "tokenizer.ggml.merges": (GGUFValueType.ARRAY, GGUFValueType.STRING),
    "tokenizer.ggml.scores": (GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
    "tokenizer.ggml.token_type": (GGUFValueType.ARRAY, GGUFValueType.INT32),
    "tokenizer.ggml.precompiled_charsmap": (GGUFValueType.ARRAY, GGUFValueType.UINT8),
}


def _value_type(key: str, value: Any) -> tuple[GGUFValueType, GGUFValueType | None]:
    if key in _KEY_TYPES:
        return _KEY_TYPES[key]
    if isinstance(value, bool):
        return GGUFValueType.BOOL, None
    if isinstance(value, (int, np.integer)):
        if key.endswith("_token_id") or value >= 0:
            return GGUFValueType.UINT32, None
        return GGUFValueType.INT32, None
    if isinstance(value, (float, np.floating)):
        return GGUFValueType.FLOAT32, None
    if isinstance(value, (str, bytes)):
        return GGUFValueType.STRING, None
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"metadata {key!r}: empty arrays cannot be written to GGUF")
        sub, _ = _value_type("", value[0])
        return GGUFValueType.ARRAY, sub
    raise ValueError(f"metadata {key!r}: cannot write a {type(value).__name__} to GGUF")


def tensor_type(config: ModelConfig, hf: str, shape: tuple[int, ...], file_type: str,
                overrides: Mapping[str, str] | None = None) -> T:
    """The GGML type llama.cpp would give this tensor in a `file_type` file (`hf`: an HF
    name, or the GGUF name of a stacked expert tensor, which has no HF name)."""
    if len(shape) == 1:
        return T.F32
    base, mix, _ = _FILE_TYPES[file_type]
    name = hf if hf.startswith("blk.") else layout.gguf_name(hf, config.architecture)
    if name.endswith(moe_layout.GGUF_ROUTER):
        return T.F32  # llama.cpp keeps the router in float32 in every file type
    explicit = None
    if overrides:
        explicit = overrides.get(hf) or overrides.get(name)
    if explicit is not None:
        qtype = T.__members__[explicit]
    else:
        qtype = next((t for suffix, t in mix.items() if name.endswith(suffix)), base)
        if name == "token_embd.weight" and config.tie_word_embeddings and "output.weight" in mix:
            qtype = mix["output.weight"]  # the embedding doubles as the output matrix
    cols = shape[-1]
    while cols % gguf_quants.block_size(qtype):
        if explicit is not None:
            raise ValueError(f"{hf}: rows of {cols} cannot be stored as {explicit}")
        qtype = _FALLBACK.get(qtype, T.F16)
    return qtype


def write_gguf(path: str | os.PathLike, config: ModelConfig, tensors: Mapping[str, torch.Tensor],
               tokenizer_metadata: Mapping[str, Any] | None = None, file_type: str = "F16",
               name: str = "triolm-model", *, type_overrides: Mapping[str, str] | None = None,
               progress: Callable[[int, int], None] | None = None) -> Path:
    """Write `tensors` (HF names and layout) as one GGUF file and return its path.

    file_type: one of FILE_TYPES; type_overrides maps HF or GGUF tensor names to a GGML
    type name for hand-made mixes. tokenizer_metadata: `tokenizer.*` keys (e.g. from
    `gguf_metadata_from_tokenizer`). progress(done, total) is called per tensor."""
    if file_type not in _FILE_TYPES:
        raise ValueError(f"unknown file_type {file_type!r} (known: {', '.join(FILE_TYPES)})")
    arch = layout.GGUF_ARCH.get(config.architecture)
    if arch is None:
        raise ValueError(f"cannot write architecture {config.architecture!r} to GGUF")
    llama3 = config.rope_scaling is not None and config.rope_scaling.rope_type == "llama3"
    if llama3 and arch not in layout.PERMUTED_ARCHS:
        raise ValueError(f"llama.cpp's {arch} architecture has no llama3 rope scaling")
    if config.rope_scaling is not None and not llama3 and arch not in gemma_gguf.GEMMA_ARCHS + ("phi3",):
        raise ValueError(f"cannot write {config.rope_scaling.rope_type} rope scaling for {arch}")
    if arch in gemma_gguf.GEMMA_ARCHS:
        gemma_gguf.check_writable(config)
    if config.num_experts:
        moe_gguf.check_writable(config)
    family_gguf.check_writable(config)
    if config.architecture == "mistral" and "mistral" not in name.lower():
        name = f"mistral-{name}"  # how llama.cpp-land tells mistral from llama
    shapes = layout.expected_shapes(config)
    missing = [hf for hf in shapes if hf not in tensors]
    if missing:
        raise ValueError(f"missing tensors: {', '.join(missing[:5])}")
    for hf, shape in shapes.items():
        if tuple(tensors[hf].shape) != shape:
            raise ValueError(f"{hf}: shape {tuple(tensors[hf].shape)}, expected {shape}")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    w = GGUFWriter(tmp, arch)
    try:
        _write_metadata(w, config, arch, file_type, name, tokenizer_metadata or {})
        extra = family_gguf.extra_tensors(config)
        total = len(shapes) + llama3 + len(extra)
        done = 0
        if config.rope_scaling is not None and llama3:
            factors = layout.llama3_rope_factors(config.head_dim, config.rope_theta, config.rope_scaling)
            w.add_tensor(layout.ROPE_FREQS, factors.numpy())
            done += 1
        for extra_name, values in extra.items():
            w.add_tensor(extra_name, values)
            done += 1
        stacked = moe_layout.stacked_gguf_tensors(config)
        experts = moe_gguf.expert_source(config)
        for hf, shape in shapes.items():
            if hf in experts:  # written with the other experts of its stacked tensor
                name = experts[hf]
                names, stacked_shape = stacked.pop(name, (None, None))
                if names is not None and stacked_shape is not None:
                    qtype = tensor_type(config, name, stacked_shape, file_type, type_overrides)
                    w.add_tensor(name, _encode_stacked([tensors[n] for n in names], qtype),
                                 raw_dtype=None if qtype in (T.F32, T.F16) else qtype)
                done += 1
                if progress:
                    progress(done, total)
                continue
            qtype = tensor_type(config, hf, shape, file_type, type_overrides)
            data = _encode(config, hf, tensors[hf], qtype)
            w.add_tensor(layout.gguf_name(hf, config.architecture), data,
                         raw_dtype=None if qtype in (T.F32, T.F16) else qtype)
            done += 1
            if progress:
                progress(done, total)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return path


def _encode(config: ModelConfig, hf: str, t: torch.Tensor, qtype: T) -> np.ndarray:
    x = t.detach().to(torch.float32).cpu()
    heads = layout.permuted_heads(config, hf)
    if heads:
        x = layout.permute_rows(x, heads)
    x = x + layout.norm_offset(config, hf)
    values = x.contiguous().numpy()
    return values if values.ndim == 1 else gguf_quants.quantize(values, qtype)


def _encode_stacked(experts: list[torch.Tensor], qtype: T) -> np.ndarray:
    """Experts' 2-D weights -> one [experts, rows, cols] GGUF tensor, as the converter stacks them."""
    x = torch.stack([t.detach().to(torch.float32).cpu() for t in experts])
    n, rows, cols = x.shape
    data = gguf_quants.quantize(x.reshape(n * rows, cols).contiguous().numpy(), qtype)
    return data.reshape(n, rows, -1)


def _write_metadata(w: GGUFWriter, c: ModelConfig, arch: str, file_type: str, name: str,
                    tokenizer_metadata: Mapping[str, Any]) -> None:
    w.add_type("model")
    w.add_name(name)
    w.add_vocab_size(c.vocab_size)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_theta)
    w.add_rope_dimension_count(c.rotary_dim)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    if arch in gemma_gguf.GEMMA_ARCHS:
        gemma_gguf.write_metadata(w, c)
    if c.num_experts:
        moe_gguf.write_metadata(w, c)
    family_gguf.write_metadata(w, c)
    w.add_file_type(int(_FILE_TYPES[file_type][2]))
    w.add_quantization_version(GGML_QUANT_VERSION)
    for key, value in tokenizer_metadata.items():
        if key == "general.architecture":
            continue
        vtype, sub = _value_type(key, value)
        if vtype == GGUFValueType.ARRAY:
            value = list(value)  # also bytes -> ints for uint8 arrays
        w.add_key_value(key, value, vtype, sub_type=sub)
