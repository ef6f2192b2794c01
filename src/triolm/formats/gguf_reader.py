"""Load a llama- or gemma-family GGUF file (llama.cpp's format) into HF-named torch tensors.

The `gguf` package's GGUFReader memory-maps the file and parses the tensor table; a
subclass replaces its per-element metadata parsing with a fast one (a 128k vocabulary
took seconds) and bounds-checks every read against the file size first, so a truncated
or corrupt file raises `ModelLoadError` instead of reading garbage, hanging, or crashing.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.gguf_reader import ReaderField

from triolm.errors import ModelLoadError
from triolm.formats import family_gguf, gemma_gguf, gguf_quants, moe_gguf, moe_layout
from triolm.formats import gguf_layout as layout
from triolm.model.config import ModelConfig, RopeScaling, invalid_fields

GGUF_MAGIC = b"GGUF"


@attrs.frozen
class QuantizedTensor:
    """Raw GGML blocks of one weight, rows already in HF order (see `keep_quantized`).

    `data` is uint8 (rows, row_bytes); each row holds cols // block_size blocks. It is a
    read-only view of the memory-mapped file unless its rows had to be reordered."""

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


# GGUF metadata value type id -> (struct format, size) for scalars.
_SCALARS = {
    GGUFValueType.UINT8: ("<B", 1), GGUFValueType.INT8: ("<b", 1),
    GGUFValueType.UINT16: ("<H", 2), GGUFValueType.INT16: ("<h", 2),
    GGUFValueType.UINT32: ("<I", 4), GGUFValueType.INT32: ("<i", 4),
    GGUFValueType.FLOAT32: ("<f", 4), GGUFValueType.UINT64: ("<Q", 8),
    GGUFValueType.INT64: ("<q", 8), GGUFValueType.FLOAT64: ("<d", 8),
    GGUFValueType.BOOL: ("<?", 1),
}
_NP_SCALARS = {GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
               GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
               GGUFValueType.FLOAT32: "<f4", GGUFValueType.UINT64: "<u8", GGUFValueType.INT64: "<i8",
               GGUFValueType.FLOAT64: "<f8", GGUFValueType.BOOL: "?"}


class _KVParser:
    """Fast, bounds-checked reader of the key/value section.

    GGUFReader builds numpy views per array element: ~6 s for a 131k-token vocabulary
    with its 269k merges. Walking the same bytes with struct/np.frombuffer takes ~0.4 s
    (strings) and milliseconds (numeric arrays)."""

    def __init__(self, buf: np.ndarray):
        self.buf = memoryview(buf.data).cast("B")  # zero-copy; slicing it is cheap
        self.size = len(buf)

    def _need(self, offs: int, n: int) -> None:
        if n < 0 or offs + n > self.size:
            raise _Corrupt(f"truncated file: needs byte {offs + n}, file has {self.size}")

    def scalar(self, offs: int, fmt: str, n: int) -> Any:
        self._need(offs, n)
        return struct.unpack_from(fmt, self.buf, offs)[0]

    def string(self, offs: int) -> tuple[str, int]:
        n = self.scalar(offs, "<Q", 8)
        self._need(offs + 8, n)
        return str(self.buf[offs + 8:offs + 8 + n], "utf-8", "surrogateescape"), offs + 8 + n

    def strings(self, offs: int, count: int) -> tuple[list[str], int]:
        """`count` consecutive strings (the hot loop: vocabularies and merges)."""
        buf, size, unpack = self.buf, self.size, struct.unpack_from
        out: list[str] = []
        append = out.append
        for _ in range(count):
            if offs + 8 > size:
                self._need(offs, 8)
            (n,) = unpack("<Q", buf, offs)
            offs += 8
            if offs + n > size:
                self._need(offs, n)
            append(str(buf[offs:offs + n], "utf-8", "surrogateescape"))
            offs += n
        return out, offs

    def value(self, offs: int, vtype: int, depth: int = 0) -> tuple[Any, int]:
        try:
            t = GGUFValueType(vtype)
        except ValueError:
            raise _Corrupt(f"unknown metadata value type {vtype} at byte {offs}") from None
        if t == GGUFValueType.STRING:
            return self.string(offs)
        if t in _SCALARS:
            fmt, n = _SCALARS[t]
            return self.scalar(offs, fmt, n), offs + n
        if depth > 4:
            raise _Corrupt(f"metadata arrays nested too deep at byte {offs}")
        item = self.scalar(offs, "<I", 4)
        count = self.scalar(offs + 4, "<Q", 8)
        if count > self.size - offs - 12:  # every item takes at least one byte
            raise _Corrupt(f"corrupt metadata: array of {count} items at byte {offs} "
                           f"in a file of {self.size} bytes")
        offs += 12
        if item in _NP_SCALARS:
            width = np.dtype(_NP_SCALARS[item]).itemsize
            self._need(offs, count * width)
            arr = np.frombuffer(self.buf, dtype=_NP_SCALARS[item], count=count, offset=offs)
            return arr.tolist(), offs + count * width
        self._need(offs, count * 8)  # every string/array item takes at least 8 bytes
        if item == GGUFValueType.STRING:
            return self.strings(offs, count)
        out = []
        for _ in range(count):
            v, offs = self.value(offs, item, depth + 1)
            out.append(v)
        return out, offs

    def fields(self, offs: int, count: int) -> tuple[dict[str, Any], dict[str, int], int]:
        values: dict[str, Any] = {}
        types: dict[str, int] = {}
        for _ in range(count):
            key, offs = self.string(offs)
            vtype = self.scalar(offs, "<I", 4)
            value, offs = self.value(offs + 4, vtype)
            if key in values:
                raise _Corrupt(f"duplicate metadata key {key!r}")
            values[key], types[key] = value, vtype
        return values, types, offs


class _CheckedReader(GGUFReader):
    """GGUFReader with a fast key/value parser and every tensor's byte range checked
    against the file size before any of it is touched."""

    metadata: dict[str, Any]

    def _build_fields(self, offs, count):
        if int(count) > len(self.data) // 12:
            raise _Corrupt(f"corrupt header: {int(count)} metadata fields in {len(self.data)} bytes")
        self.metadata, types, end = _KVParser(self.data).fields(int(offs), int(count))
        if "general.alignment" in self.metadata:
            align = self.metadata["general.alignment"]
            if types["general.alignment"] != GGUFValueType.UINT32 or not 0 < align <= 1 << 16 \
                    or align & (align - 1):
                raise _Corrupt(f"metadata general.alignment must be a power of two up to 65536 "
                               f"stored as uint32, got {align!r:.80}")
            # The base class reads the alignment back from `fields`; give it just that.
            align_type = GGUFValueType(types["general.alignment"])
            self.fields["general.alignment"] = ReaderField(
                int(offs), "general.alignment",
                [np.array([self.metadata["general.alignment"]], dtype=np.uint32)], [0], [align_type])
        return end

    def _build_tensor_info(self, offs, count):
        if int(count) > len(self.data) // 24:
            raise _Corrupt(f"corrupt header: {int(count)} tensors in {len(self.data)} bytes")
        return super()._build_tensor_info(offs, count)

    def _get(self, offset, dtype, count=1, override_order=None):
        count = int(count)
        end = int(offset) + np.dtype(dtype).itemsize * count
        if offset < 0 or count < 0 or end > len(self.data):
            raise _Corrupt(f"truncated file: needs byte {end}, file has {len(self.data)}")
        return super()._get(offset, dtype, count, override_order)

    def _build_tensors(self, start_offs, fields):
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


def _open(path: Path) -> _CheckedReader:
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
    if version and not version & 0xFFFF:
        raise ModelLoadError(f"{path}: big-endian GGUF files are not supported")
    if version not in (2, 3):
        raise ModelLoadError(f"{path}: unsupported GGUF version {version} (supported: 2, 3)")
    try:
        return _CheckedReader(path, "r")
    except _Corrupt as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    except (ValueError, KeyError, IndexError, OverflowError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: corrupt GGUF file: {exc}") from None


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The file's metadata only (tokenizer, chat template, context length): for a process
    that renders and tokenizes prompts without the weights (triolm router)."""
    return _open(Path(path)).metadata


def _config_from_metadata(path: Path, meta: dict[str, Any], tensor_names: set[str],
                          factors: torch.Tensor | None,
                          extra_tensors: dict[str, np.ndarray] | None = None) -> ModelConfig:
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

    def int_key(name: str, default: Any = ...) -> int:
        value = key(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelLoadError(f"{path}: metadata {arch}.{name}: expected an integer, got {value!r:.80}")
        return value

    def float_key(name: str, default: Any = ...) -> float:
        value = key(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ModelLoadError(f"{path}: metadata {arch}.{name}: expected a number, got {value!r:.80}")
        return value

    ours = arch
    names = f"{meta.get('general.name', '')} {meta.get('general.basename', '')}".lower()
    if arch == "llama" and "mistral" in names:
        ours = "mistral"  # llama.cpp stores mistral as llama; its name tells them apart
    scaling_type = meta.get(f"{arch}.rope.scaling.type")
    scaling_factor = float(float_key("rope.scaling.factor", 1.0) or 1.0)
    if scaling_type not in (None, "none", "llama3", "linear"):
        raise ModelLoadError(
            f"{path}: unsupported rope scaling {scaling_type!r} (factor {scaling_factor}); "
            f"supported: llama3 (rope_freqs.weight), linear or none")
    def f32(value: Any) -> float:
        # GGUF stores float32: 1e-6 comes back as 9.99999997e-07; take the shortest
        # decimal that rounds to the same float32, which is what was written.
        return float(str(np.float32(value)))

    heads = int_key("attention.head_count")
    hidden = int_key("embedding_length")
    head_dim = int_key("attention.key_length", 0) or (hidden // heads if heads > 0 else 0)
    theta = f32(float_key("rope.freq_base", 10000.0))
    scaling = None
    if scaling_type == "linear" and scaling_factor != 1.0:
        scaling = RopeScaling("linear", scaling_factor)
    if scaling_type == "llama3" and factors is None:
        # Not written by llama.cpp (it stores the rope_freqs tensor) but unambiguous.
        scaling = RopeScaling(
            "llama3", scaling_factor,
            float(float_key("rope.scaling.low_freq_factor", 1.0)),
            float(float_key("rope.scaling.high_freq_factor", 4.0)),
            int_key("rope.scaling.original_context_length", 8192))
    if factors is not None:
        if head_dim < 2 or not 1 < theta < math.inf:
            raise ModelLoadError(f"{path}: metadata {arch}.attention.key_length / {arch}.rope.freq_base: "
                                 f"no rotary embedding with head_dim {head_dim} and base {theta}")
        if factors.numel() != head_dim // 2:
            raise ModelLoadError(f"{path}: tensor {layout.ROPE_FREQS} has {factors.numel()} "
                                 f"values, expected head_dim/2 = {head_dim // 2}")
        try:
            scaling = layout.rope_scaling_from_factors(factors, head_dim, theta)
        except ValueError as exc:
            raise ModelLoadError(f"{path}: {exc}") from None
    # Optional: when absent the embedding's rows give it (filled in by read_gguf).
    vocab = int_key("vocab_size") if f"{arch}.vocab_size" in meta else None
    eos_ids: tuple[int, ...] = ()
    for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
        if _is_int(meta.get(k)) and meta[k] not in eos_ids:
            eos_ids += (meta[k],)
    bos = meta.get("tokenizer.ggml.bos_token_id") if _is_int(meta.get("tokenizer.ggml.bos_token_id")) else None
    config = ModelConfig(
        architecture=ours,
        vocab_size=int(vocab) if vocab is not None else -1,
        hidden_size=hidden,
        intermediate_size=int_key("feed_forward_length"),
        num_hidden_layers=int_key("block_count"),
        num_attention_heads=heads,
        num_key_value_heads=int_key("attention.head_count_kv", heads),
        head_dim=head_dim,
        max_position_embeddings=int_key("context_length", 2048),
        rms_norm_eps=f32(float_key("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        qk_norm="blk.0.attn_q_norm.weight" in tensor_names,
        bos_token_id=int(bos) if bos is not None else None,
        eos_token_ids=eos_ids,
    )
    if arch in gemma_gguf.GEMMA_ARCHS:
        try:
            config = gemma_gguf.config_from_metadata(config, arch, key, meta.get("tokenizer.ggml.tokens"))
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"{path}: {exc}") from None
    if arch in family_gguf.FAMILY_ARCHS:
        try:
            config = family_gguf.config_from_metadata(config, arch, key, extra_tensors or {},
                                                      meta.get("tokenizer.ggml.tokens"))
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"{path}: {exc}") from None
    try:
        if moe_gguf.is_moe_file(arch, key):
            config = moe_gguf.config_from_metadata(config, arch, key)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    return config


# ModelConfig field -> the GGUF key (after "<arch>.") it comes from, for error messages.
_KEYS = {
    "vocab_size": "vocab_size", "hidden_size": "embedding_length",
    "intermediate_size": "feed_forward_length", "num_hidden_layers": "block_count",
    "num_attention_heads": "attention.head_count", "num_key_value_heads": "attention.head_count_kv",
    "head_dim": "attention.key_length", "max_position_embeddings": "context_length",
    "rms_norm_eps": "attention.layer_norm_rms_epsilon", "rope_theta": "rope.freq_base",
    "rope_scaling.factor": "rope.scaling.factor",
    "rope_scaling.low_freq_factor": "rope.scaling.low_freq_factor",
    "rope_scaling.high_freq_factor": "rope.scaling.high_freq_factor",
    "rope_scaling.original_max_position_embeddings": "rope.scaling.original_context_length",
    "sliding_window": "attention.sliding_window", "layer_types": "attention.sliding_window_pattern",
    "rope_local_theta": "rope.freq_base_swa", "query_pre_attn_scalar": "attention.key_length",
    "attn_logit_softcapping": "attn_logit_softcapping", "final_logit_softcapping": "final_logit_softcapping",
    "num_experts": "expert_count", "num_experts_per_tok": "expert_used_count",
    "moe_intermediate_size": "expert_feed_forward_length", "dense_mlp_layers": "block_count",
}
_KEYS.update({
    "partial_rotary_factor": "rope.dimension_count", "embedding_multiplier": "embedding_scale",
    "residual_multiplier": "residual_scale", "attention_multiplier": "attention.scale",
    "logits_scaling": "logit_scale", "rope_layers": "block_count",
    "rope_scaling.short_factor": "rope_factors_short.weight (tensor)",
    "rope_scaling.long_factor": "rope_factors_long.weight (tensor)",
    "rope_scaling.attention_factor": "rope.scaling.attn_factor",
})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_config(path: Path, arch: str, config: ModelConfig, tensor_names: set[str]) -> None:
    """Reject values no model can have, and a block count the file's tensors do not back:
    everything after this (the tensor table, the KV cache) is sized from these numbers."""
    for field, why in invalid_fields(config).items():
        raise ModelLoadError(f"{path}: metadata {arch}.{_KEYS[field]} {why}")
    blocks = {name.split(".")[1] for name in tensor_names if name.startswith("blk.")}
    if config.num_hidden_layers > len(blocks):
        raise ModelLoadError(f"{path}: metadata {arch}.block_count is {config.num_hidden_layers} "
                             f"but the file holds tensors for {len(blocks)} blocks")


def read_gguf(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
              keep_quantized: bool = False, keep_float16: bool = False) -> GGUFModel:
    """Read a llama/mistral/qwen2/qwen3/gemma2/gemma3 GGUF file into HF-named tensors of `dtype`.

    keep_quantized: leave block-quantized weights (Q8_0, Q4_K ...) as raw blocks in
    `GGUFModel.quantized` (rows in HF order) instead of dequantizing them.
    keep_float16: F16 matrices come back as float16 tensors whatever `dtype` is."""
    path = Path(path)
    reader = _open(path)
    meta = reader.metadata
    by_name = {t.name: t for t in reader.tensors}
    factors = None
    if layout.ROPE_FREQS in by_name:
        rf = by_name[layout.ROPE_FREQS]
        if rf.tensor_type != GGMLQuantizationType.F32:
            raise ModelLoadError(f"{path}: tensor {layout.ROPE_FREQS} must be F32, "
                                 f"got {rf.tensor_type.name}")
        factors = torch.from_numpy(np.array(rf.data, dtype=np.float32)).reshape(-1)
    extra = {}
    for name in family_gguf.EXTRA_TENSORS:
        if name in by_name:
            t = by_name[name]
            if t.tensor_type != GGMLQuantizationType.F32:
                raise ModelLoadError(f"{path}: tensor {name} must be F32, got {t.tensor_type.name}")
            extra[name] = np.array(t.data, dtype=np.float32).reshape(-1)
    config = _config_from_metadata(path, meta, set(by_name), factors, extra)
    if config.vocab_size < 0:
        embd = by_name.get("token_embd.weight")
        if embd is None:
            raise ModelLoadError(f"{path}: missing tensor token_embd.weight")
        config = attrs.evolve(config, vocab_size=int(embd.shape[1]))
    _check_config(path, meta["general.architecture"], config, set(by_name))

    model = GGUFModel(config=config, tensors={}, metadata=meta, tensor_types={}, path=path)
    with _one_torch_thread():
        _read_tensors(path, model, by_name, dtype, keep_quantized, keep_float16)
    return model


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run the (memory-bound) conversions on one intra-op thread.

    Measured on the 2-core dev machine loading the smollm-135m shape: one thread is
    2-3x faster than numpy and steady; two threads, with the other core busy, made
    OpenMP's barriers spin and loads took 3-10x longer and varied wildly."""
    global _threads_saved, _threads_users
    with _threads_lock:  # concurrent loads: the first saves the setting, the last restores it
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_saved)


_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 1


def _read_tensors(path: Path, model: GGUFModel, by_name: dict, dtype: torch.dtype,
                  keep_quantized: bool, keep_float16: bool) -> None:
    config = model.config
    stacked = moe_layout.stacked_gguf_tensors(config)
    source = moe_gguf.expert_source(config)
    for hf, shape in layout.expected_shapes(config).items():
        if hf in source:
            if hf not in model.tensor_types:  # its stacked tensor is not read yet
                _read_stacked_experts(path, model, by_name, source[hf], *stacked[source[hf]],
                                      dtype, keep_quantized, keep_float16)
            continue
        name = layout.gguf_name(hf, config.architecture)
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
        if keep_quantized and len(shape) == 2 and qname in gguf_quants.RAW_MATRIX_TYPES:
            # a read-only view of the mapped file; permuted rows (llama Q/K) are a copy
            raw = gguf_quants.torch_view(t.data.view(np.uint8)).reshape(rows, -1)
            raw = layout.unpermute_rows(raw, heads).contiguous() if heads else raw
            model.quantized[hf] = QuantizedTensor(qname, (rows, cols), raw)
            continue
        as_dtype = torch.float16 if keep_float16 and qname == "F16" and len(shape) == 2 else dtype
        w = gguf_quants.dequantize(t.data, t.tensor_type, rows, cols, as_dtype).reshape(shape)
        if heads:
            w = layout.unpermute_rows(w, heads).contiguous()
        offset = layout.norm_offset(config, hf)
        if offset:
            w = w - offset  # back to HF's value (gemma stores w + 1)
        model.tensors[hf] = w


def _read_stacked_experts(path: Path, model: GGUFModel, by_name: dict, name: str, names: list[str],
                          shape: tuple[int, int, int], dtype: torch.dtype, keep_quantized: bool,
                          keep_float16: bool) -> None:
    """Every expert of one stacked GGUF tensor (`blk.N.ffn_up_exps.weight`), each as a
    view of its slice (see moe_gguf)."""
    t = by_name.get(name)
    if t is None:
        raise ModelLoadError(f"{path}: missing tensor {name} (the stacked experts {names[0]} ...)")
    got = moe_gguf.stacked_shape_in_file(t)
    if got != shape:
        raise ModelLoadError(f"{path}: tensor {name} has shape {list(got)}, expected "
                             f"{list(shape)} for this config")
    qname = t.tensor_type.name
    if qname not in gguf_quants.SUPPORTED_TYPES:
        raise ModelLoadError(f"{path}: tensor {name} has unsupported type {qname} "
                             f"(supported: {', '.join(gguf_quants.SUPPORTED_TYPES)})")
    qname, experts = moe_gguf.read_stacked(t, names, shape, keep_quantized, dtype, keep_float16)
    for hf, w in experts.items():
        model.tensor_types[hf] = qname
        if w.dtype == torch.uint8:
            model.quantized[hf] = QuantizedTensor(qname, (shape[1], shape[2]), w)
        else:
            model.tensors[hf] = w
