"""Load a llama-family GGUF file (llama.cpp's format) into HF-named torch tensors.

The `gguf` package's GGUFReader memory-maps the file and parses it; a thin subclass
bounds-checks every read against the file size first, so a truncated or corrupt file
raises `ModelLoadError` instead of reading garbage, hanging, or crashing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType

from triolm.errors import ModelLoadError
from triolm.models import gguf_layout as layout
from triolm.models import gguf_quants
from triolm.models.config import ModelConfig

GGUF_MAGIC = b"GGUF"


@attrs.frozen
class QuantizedTensor:
    """Raw GGML blocks of one weight, rows already in HF order (see `keep_quantized`).

    `data` is uint8 (rows, row_bytes); each row holds cols // block_size blocks."""

    qtype: str
    shape: tuple[int, int]
    data: torch.Tensor

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        t = GGMLQuantizationType[self.qtype]
        return gguf_quants.dequantize(self.data.numpy(), t, self.shape[0], self.shape[1], dtype)


@attrs.define
class GGUFModel:
    """Everything a GGUF file holds that triolm uses.

    tensors: HF names and layout. With `keep_quantized=True`, quantized weights are in
    `quantized` instead (and absent from `tensors`).
    metadata: every key/value field as plain Python values (tokenizer.ggml.*, general.* ...).
    tensor_types: HF name -> GGML type name ("F32", "Q8_0", ...)."""

    config: ModelConfig
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    tensor_types: dict[str, str]
    quantized: dict[str, QuantizedTensor] = attrs.field(factory=dict)
    path: Path | None = None


class _Corrupt(Exception):
    """Raised inside the reader; turned into ModelLoadError naming the file."""


class _CheckedReader(GGUFReader):
    """GGUFReader whose every read is bounds-checked and whose array lengths are
    sanity-checked against the bytes left, so garbage cannot make it loop for ages."""

    def _get(self, offset, dtype, count=1, override_order=None):  # type: ignore[override]
        count = int(count)
        end = int(offset) + np.dtype(dtype).itemsize * count
        if offset < 0 or count < 0 or end > len(self.data):
            raise _Corrupt(f"truncated file: needs byte {end}, file has {len(self.data)}")
        return super()._get(offset, dtype, count, override_order)

    def _get_field_parts(self, orig_offs, raw_type):  # type: ignore[override]
        if raw_type == GGUFValueType.ARRAY:
            item_type = int(self._get(orig_offs, np.uint32)[0])
            length = int(self._get(orig_offs + 4, np.uint64)[0])
            scalar = self.gguf_scalar_to_np.get(GGUFValueType(item_type)) if item_type in (
                v.value for v in GGUFValueType) else None
            min_item = np.dtype(scalar).itemsize if scalar is not None else 8
            if length * min_item > len(self.data) - orig_offs:
                raise _Corrupt(f"truncated or corrupt metadata: array of {length} items at byte {orig_offs}")
        return super()._get_field_parts(orig_offs, raw_type)

    def _build_tensors(self, start_offs, fields):  # type: ignore[override]
        size = len(self.data)
        for field in fields:
            _, name_data, _, dims, raw_dtype, offset = field.parts
            name = bytes(name_data).decode("utf-8", "replace")
            try:
                qtype = GGMLQuantizationType(int(raw_dtype[0]))
            except ValueError:
                raise _Corrupt(f"tensor {name!r} has unknown GGML type id {int(raw_dtype[0])}") from None
            shape = [int(d) for d in dims]
            if any(d <= 0 or d > 1 << 40 for d in shape):
                raise _Corrupt(f"tensor {name!r} has invalid shape {shape}")
            block, type_size = GGML_QUANT_SIZES[qtype]
            n_elems = int(np.prod(shape, dtype=object))
            if shape[0] % block:
                raise _Corrupt(f"tensor {name!r}: row of {shape[0]} is not a multiple of "
                               f"the {qtype.name} block size {block}")
            begin = start_offs + int(offset[0])
            end = begin + n_elems // block * type_size
            if end > size:
                raise _Corrupt(f"truncated file: tensor {name!r} needs bytes {begin}..{end}, "
                               f"file has {size}")
        super()._build_tensors(start_offs, fields)


def _open(path: Path) -> GGUFReader:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot open GGUF file: {exc.strerror or exc}") from None
    if head[:4] != GGUF_MAGIC:
        raise ModelLoadError(f"{path}: not a GGUF file (magic {head[:4]!r}, expected {GGUF_MAGIC!r})")
    if size < 24:
        raise ModelLoadError(f"{path}: truncated file: {size} bytes is shorter than a GGUF header")
    version = int.from_bytes(head[4:8], "little")
    if version not in (2, 3):
        raise ModelLoadError(f"{path}: unsupported GGUF version {version} (supported: 2, 3)")
    try:
        return _CheckedReader(path, "r")
    except _Corrupt as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    except (ValueError, KeyError, IndexError, OverflowError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: corrupt GGUF file: {exc}") from None


def read_metadata(reader: GGUFReader) -> dict[str, Any]:
    """All key/value fields as Python values (GGUF.* pseudo-fields left out)."""
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        out[key] = field.contents()
    return out


def _config_from_metadata(path: Path, meta: dict[str, Any], tensor_names: set[str],
                          factors: torch.Tensor | None) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in layout.SUPPORTED_GGUF_ARCHS:
        raise ModelLoadError(
            f"{path}: unsupported architecture {arch!r} "
            f"(supported: {', '.join(layout.SUPPORTED_GGUF_ARCHS)})")

    def key(name: str, default: Any = ...) -> Any:
        value = meta.get(f"{arch}.{name}", default)
        if value is ...:
            raise ModelLoadError(f"{path}: missing metadata key {arch}.{name!s}")
        return value

    ours = arch
    if arch == "llama" and "mistral" in str(meta.get("general.name", "")).lower():
        ours = "mistral"  # llama.cpp stores mistral as llama; its name tells them apart
    def f32(value: Any) -> float:
        # GGUF stores float32: 1e-6 comes back as 9.99999997e-07; take the shortest
        # decimal that rounds to the same float32, which is what was written.
        return float(str(np.float32(value)))

    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    head_dim = int(key("attention.key_length", 0) or hidden // heads)
    theta = f32(key("rope.freq_base", 10000.0))
    scaling = None
    if factors is not None:
        try:
            scaling = layout.rope_scaling_from_factors(factors, head_dim, theta)
        except ValueError as exc:
            raise ModelLoadError(f"{path}: {exc}") from None
    vocab = meta.get(f"{arch}.vocab_size")
    if vocab is None:
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = len(tokens) if tokens else None
    eos_ids: tuple[int, ...] = ()
    for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
        if meta.get(k) is not None and int(meta[k]) not in eos_ids:
            eos_ids += (int(meta[k]),)
    bos = meta.get("tokenizer.ggml.bos_token_id")
    return ModelConfig(
        architecture=ours,
        vocab_size=int(vocab) if vocab is not None else -1,
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        num_hidden_layers=int(key("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(key("attention.head_count_kv", heads)),
        head_dim=head_dim,
        max_position_embeddings=int(key("context_length", 2048)),
        rms_norm_eps=f32(key("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        qk_norm="blk.0.attn_q_norm.weight" in tensor_names,
        bos_token_id=int(bos) if bos is not None else None,
        eos_token_ids=eos_ids,
    )


def read_gguf(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
              keep_quantized: bool = False) -> GGUFModel:
    """Read a llama/mistral/qwen2/qwen3 GGUF file into HF-named tensors of `dtype`.

    keep_quantized: leave block-quantized weights (Q8_0, Q4_K ...) as raw blocks in
    `GGUFModel.quantized` (rows in HF order) instead of dequantizing them."""
    path = Path(path)
    reader = _open(path)
    try:
        meta = read_metadata(reader)
    except (ValueError, UnicodeDecodeError, IndexError) as exc:
        raise ModelLoadError(f"{path}: corrupt metadata: {exc}") from None
    by_name = {t.name: t for t in reader.tensors}
    factors = None
    if layout.ROPE_FREQS in by_name:
        rf = by_name[layout.ROPE_FREQS]
        if rf.tensor_type != GGMLQuantizationType.F32:
            raise ModelLoadError(f"{path}: tensor {layout.ROPE_FREQS} must be F32, "
                                 f"got {rf.tensor_type.name}")
        factors = torch.from_numpy(np.array(rf.data, dtype=np.float32)).reshape(-1)
    config = _config_from_metadata(path, meta, set(by_name), factors)
    if config.vocab_size < 0:
        embd = by_name.get("token_embd.weight")
        if embd is None:
            raise ModelLoadError(f"{path}: missing tensor token_embd.weight")
        config = attrs.evolve(config, vocab_size=int(embd.shape[1]))

    model = GGUFModel(config=config, tensors={}, metadata=meta, tensor_types={}, path=path)
    for hf, shape in layout.expected_shapes(config).items():
        name = layout.gguf_name(hf)
        t = by_name.get(name)
        if t is None:
            raise ModelLoadError(f"{path}: missing tensor {name} ({hf})")
        got = tuple(int(d) for d in reversed(t.shape.tolist()))
        if got != shape:
            raise ModelLoadError(f"{path}: tensor {name} has shape {list(got)}, expected "
                                 f"{list(shape)} for this config")
        qname = t.tensor_type.name
        if qname not in gguf_quants.SUPPORTED_TYPES:
            raise ModelLoadError(
                f"{path}: tensor {name} has unsupported type {qname} "
                f"(supported: {', '.join(gguf_quants.SUPPORTED_TYPES)})")
        model.tensor_types[hf] = qname
        rows = shape[0]
        cols = shape[1] if len(shape) == 2 else 1
        heads = layout.permuted_heads(config, hf)
        if keep_quantized and qname not in gguf_quants.FLOAT_TYPES:
            raw = gguf_quants.torch_view(t.data.view(np.uint8)).reshape(rows, -1)
            raw = layout.unpermute_rows(raw, heads) if heads else raw.clone()
            model.quantized[hf] = QuantizedTensor(qname, (rows, cols), raw.contiguous())
            continue
        w = gguf_quants.dequantize(t.data, t.tensor_type, rows, cols, dtype).reshape(shape)
        if heads:
            w = layout.unpermute_rows(w, heads).contiguous()
        model.tensors[hf] = w
    return model
