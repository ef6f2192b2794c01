"""Weight representations of a linear layer: y = x @ W.T (+ y).

Activations are float32 everywhere; what varies is how W is stored:

- `DenseLinear`: a float tensor (float32 for safetensors / GGUF F32; the model dtype
  when the user asks for float16/bfloat16 compute). torch/MKL does the work: float32
  GEMV is memory-bound and MKL streams it at full speed.
- `Float16Linear`: GGUF F16 weights kept as float16 (half the bytes).
- `Q8Linear`: Q8_0 as int8 codes plus one float32 scale per 32 (for weights quantized
  at load; GGUF Q8_0 files take `BlockLinear`, as fast with the file's own bytes).
- `BlockLinear`: every GGUF block type (BF16, Q4_0 ... Q8_0, Q2_K ... Q6_K, IQ4_NL,
  IQ4_XS) as the file's own bytes, usually a read-only view of the memory-mapped file.
- `StackedLinear`: weights that read the same input (q|k|v, gate|up) stacked by output
  rows as a list of parts, each in its own representation: no concatenated copy.

The reduced-size kinds hold exactly the values the file stores and compute in float32:
a native kernel converts weights in registers for few rows (decode), and for many rows
(prefill) expands chunks of rows into a cache-resident float32 buffer for its float32
tiles. Without the native library (or with the opt-in lossy `PrefillPrecision`) the
weight is expanded into a reused scratch and handed to torch's GEMM (same results
without the library, slower). docs/quantized-weights.md has the
per-type details and measurements.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType

from triolm.formats import gguf_quants
from triolm.kernels import native

#: Reduced-size weights (F16, Q8_0, every GGUF block type) go through the native kernels
#: for every row count: in registers for decode, and for prompts by expanding chunks of
#: rows into an L2-resident float32 buffer multiplied in column slices (quant_linear.cpp,
#: triolm_kernels.cpp). Against expanding the whole matrix + torch's (MKL) GEMM, 512 rows,
#: same process interleaved, a loaded 2-core machine (ms, expand + MKL vs native): Q4_1
#: 1536x576 39.6 / 32.8, 576x1536 35.9 / 25.3; Q5_0 1536x576 41.3 / 30.7; Q4_K 8192x3072
#: 1260 / 1175; Q6_K 3072x8192 1206 / 1152 (two threads: 1.01x to 2.36x).
NATIVE_MAX_ROWS = sys.maxsize
#: Rows beyond which an opt-in lossy prefill precision (`PrefillPrecision`) applies.
PREFILL_MIN_ROWS = 64


class _Scratch:
    """One growable buffer shared by every layer (they run one at a time)."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self.buf = torch.empty(0, dtype=dtype)

    def get(self, rows: int, cols: int) -> torch.Tensor:
        n = rows * cols
        if self.buf.numel() < n:
            with torch.inference_mode(False):  # usable in and out of inference mode
                self.buf = torch.empty(n, dtype=self.dtype)
        return self.buf[:n].view(rows, cols)


_scratch = _Scratch()
_scratch_bf16 = _Scratch(torch.bfloat16)

#: `--prefill-precision`: the element type of prefill's GEMMs on reduced-size weights.
PREFILL_PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class PrefillPrecision:
    """float32 (default) keeps prefill exact. bfloat16 rounds the activations, the
    expanded weights and the GEMM's outputs to bfloat16, which this CPU multiplies
    several times faster (AVX512-BF16): lossy, so opt-in; docs/quantized-weights.md
    has its measured logprob drift. Decode (the native kernels) is exact either way."""

    dtype: torch.dtype = torch.float32

    @classmethod
    def set(cls, name: str) -> None:
        if name not in PREFILL_PRECISIONS:
            raise ValueError(f"prefill precision must be one of {sorted(PREFILL_PRECISIONS)}, not {name!r}")
        cls.dtype = PREFILL_PRECISIONS[name]


def _lossy_prefill(rows: int) -> bool:
    return rows > PREFILL_MIN_ROWS and PrefillPrecision.dtype != torch.float32


def _expanded_gemm(layer: _PackedLinear | StackedLinear, x: torch.Tensor,
                   out: torch.Tensor | None) -> torch.Tensor:
    """x @ W.T (+ out) through the weight expanded into scratch and torch's GEMM."""
    w = layer.expand_into(_scratch.get(layer.out_features, layer.in_features))
    if PrefillPrecision.dtype == torch.bfloat16 and x.dtype == torch.float32:
        wb = _scratch_bf16.get(layer.out_features, layer.in_features).copy_(w)
        y = F.linear(x.to(torch.bfloat16), wb).float()
        return y if out is None else out.add_(y)
    w = w.to(x.dtype)
    if out is None:
        return F.linear(x, w)
    return out.addmm_(x, w.t())


class DenseLinear:
    kind = "dense"
    native_max_rows = 64  # as a StackedLinear part (float32: MKL's GEMV is as fast)

    def __init__(self, weight: torch.Tensor):
        self.weight = weight.contiguous()
        self.out_features, self.in_features = self.weight.shape

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """x @ W.T; with `out`, adds into it in place (residual connections)."""
        if out is None:
            return F.linear(x, self.weight)
        return out.addmm_(x, self.weight.t())

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.weight.to(dtype)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)

    def native_ref(self) -> tuple[int, int, int] | None:
        """(format, weight pointer, scale pointer) for the native kernels, if they can."""
        if self.weight.dtype != torch.float32:
            return None
        return native.W_F32, self.weight.data_ptr(), 0

    def expand_into(self, buf: torch.Tensor) -> torch.Tensor:
        return buf.copy_(self.weight)

    @property
    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()


class _PackedLinear:
    """Shared logic of the reduced-size kinds: native kernel for few rows, else expand.
    Subclasses define `_native(x, y, accumulate)` (the kernel call) and
    `expand_into(buf) -> Tensor` (the float32 weight, for many rows)."""

    kind = "packed"
    native_max_rows = NATIVE_MAX_ROWS
    out_features: int
    in_features: int

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        rows = x.shape[0]
        lib = native.lib()
        if lib is not None and rows <= self.native_max_rows and x.dtype == torch.float32 \
                and not _lossy_prefill(rows):
            if x.stride(-1) != 1:
                x = x.contiguous()
            y = out if out is not None else torch.empty(rows, self.out_features)
            self._native(x, y, out is not None)
            return y
        return _expanded_gemm(self, x, out)

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.expand_into(torch.empty(self.out_features, self.in_features)).to(dtype)


class Float16Linear(_PackedLinear):
    kind = "f16"
    native_max_rows = NATIVE_MAX_ROWS

    def __init__(self, weight: torch.Tensor):
        self.weight = weight.to(torch.float16).contiguous()
        self.out_features, self.in_features = self.weight.shape
        self._w = self.weight.data_ptr()

    def _native(self, x, y, accumulate):
        native.lib().tl_linear(native.W_F16, self._w, None, x.data_ptr(), x.stride(0), y.data_ptr(),
                               y.stride(0), x.shape[0], self.out_features, self.in_features,
                               int(accumulate), native.num_threads())

    def native_ref(self) -> tuple[int, int, int]:
        return native.W_F16, self._w, 0

    def expand_into(self, buf: torch.Tensor) -> torch.Tensor:
        lib = native.lib()
        if lib is None:
            return buf.copy_(self.weight)
        lib.tl_f16_to_f32(self._w, buf.data_ptr(), self.weight.numel(), native.num_threads())
        return buf

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).float()

    @property
    def nbytes(self) -> int:
        return self.weight.numel() * 2


class Q8Linear(_PackedLinear):
    """Q8_0: int8 codes [out, in] and float32 scales [out, in/32] (value = code * scale)."""

    kind = "q8_0"
    native_max_rows = NATIVE_MAX_ROWS

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor):
        self.codes = codes.to(torch.int8).contiguous()
        self.scales = scales.to(torch.float32).contiguous()
        self.out_features, self.in_features = self.codes.shape
        if self.in_features % 32 or tuple(self.scales.shape) != (self.out_features, self.in_features // 32):
            raise ValueError(f"Q8_0 codes {tuple(self.codes.shape)} and scales "
                             f"{tuple(self.scales.shape)} do not match")
        self._w, self._d = self.codes.data_ptr(), self.scales.data_ptr()

    @classmethod
    def from_blocks(cls, blocks: torch.Tensor, rows: int, cols: int) -> Q8Linear:
        """From raw GGML Q8_0 bytes [rows, cols/32 * 34]: fp16 scale + 32 int8 per block."""
        b = blocks.reshape(rows * (cols // 32), 34)
        scales = b[:, :2].contiguous().view(torch.float16).float().reshape(rows, cols // 32)
        codes = b[:, 2:].contiguous().view(torch.int8).reshape(rows, cols)
        return cls(codes, scales)

    @classmethod
    def quantize(cls, weight: torch.Tensor) -> Q8Linear:
        """Q8_0-quantize a float weight like ggml does (scale = absmax/127 in float16)."""
        rows, cols = weight.shape
        b = weight.float().reshape(rows, cols // 32, 32)
        d = (b.abs().amax(-1) / 127.0).half().float()
        inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
        codes = torch.round(b * inv.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
        return cls(codes.reshape(rows, cols), d)

    def _native(self, x, y, accumulate):
        native.lib().tl_linear(native.W_Q8_0, self._w, self._d, x.data_ptr(), x.stride(0), y.data_ptr(),
                               y.stride(0), x.shape[0], self.out_features, self.in_features,
                               int(accumulate), native.num_threads())

    def native_ref(self) -> tuple[int, int, int]:
        return native.W_Q8_0, self._w, self._d

    def expand_into(self, buf: torch.Tensor) -> torch.Tensor:
        lib = native.lib()
        if lib is not None:
            lib.tl_dequant_q8_0(self._w, self._d, buf.data_ptr(), self.out_features,
                                self.in_features, native.num_threads())
            return buf
        view = buf.view(self.out_features, -1, 32)
        view.copy_(self.codes.view(self.out_features, -1, 32))
        return buf.mul_(self.scales.repeat_interleave(32, dim=1))

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        codes = self.codes[ids].float()
        return codes * self.scales[ids].repeat_interleave(32, dim=-1)

    @property
    def nbytes(self) -> int:
        return self.codes.numel() + self.scales.numel() * 4


class BlockLinear(_PackedLinear):
    """A GGUF block type kept as the file's bytes: uint8 [out, in / block * type_size].

    The native kernels decode 32 values at a time in registers (quant_blocks.h). `blocks`
    may be a read-only view of the memory-mapped file; nothing here writes to it."""

    native_max_rows = NATIVE_MAX_ROWS

    def __init__(self, qtype: str, blocks: torch.Tensor, rows: int, cols: int):
        self.qtype = GGMLQuantizationType[qtype]
        if qtype not in native.BLOCK_KINDS:
            raise ValueError(f"no block kernel for GGUF type {qtype}")
        self.kind = qtype.lower()
        self.code = native.BLOCK_KINDS[qtype]
        if blocks.dtype != torch.uint8 or not blocks.is_contiguous() \
                or tuple(blocks.shape) != (rows, gguf_quants.row_bytes(self.qtype, cols)):
            raise ValueError(f"{qtype} blocks {tuple(blocks.shape)} {blocks.dtype} do not hold a "
                             f"contiguous {rows}x{cols} matrix")
        self.blocks = blocks
        self.out_features, self.in_features = rows, cols
        self._w = blocks.data_ptr()

    def _native(self, x, y, accumulate):
        native.lib().tl_linear(self.code, self._w, None, x.data_ptr(), x.stride(0), y.data_ptr(),
                               y.stride(0), x.shape[0], self.out_features, self.in_features,
                               int(accumulate), native.num_threads())

    def native_ref(self) -> tuple[int, int, int]:
        return self.code, self._w, 0

    def expand_into(self, buf: torch.Tensor) -> torch.Tensor:
        return _expand_blocks(self.code, self.qtype, self.blocks, self.in_features, buf)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        picked = self.blocks[ids.reshape(-1)]
        out = torch.empty(picked.shape[0], self.in_features)
        return _expand_blocks(self.code, self.qtype, picked, self.in_features, out).reshape(
            *ids.shape, self.in_features)

    @property
    def nbytes(self) -> int:
        return self.blocks.numel()


def _expand_blocks(code: int, qtype: GGMLQuantizationType, blocks: torch.Tensor, cols: int,
                   out: torch.Tensor) -> torch.Tensor:
    """Contiguous block rows -> float32 `out` [rows, cols]: the native decoder, else the
    torch/`gguf` reference (gguf_quants.dequantize)."""
    rows = blocks.shape[0]
    lib = native.lib()
    if lib is not None:
        lib.tl_dequant_blocks(code, blocks.data_ptr(), out.data_ptr(), rows, cols, native.num_threads())
        return out
    data = blocks.numpy().view(np.uint8)
    return out.copy_(gguf_quants.dequantize(data, qtype, rows, cols))


class StackedLinear:
    """Linears reading the same input, stacked by output rows (q|k|v, gate|up), each part
    in its own representation. The native kernels walk the parts in one parallel loop
    (`W_PARTS` table); the torch path expands every part into one scratch and runs one
    GEMM. Nothing is concatenated, so memory-mapped parts stay mapped."""

    MAX_PARTS = 8  # tl_linear_ext's table limit (quant_linear.cpp)

    def __init__(self, parts: list[Linear]):
        if not 1 <= len(parts) <= self.MAX_PARTS:
            raise ValueError(f"a stacked linear has 1 to {self.MAX_PARTS} parts, got {len(parts)}")
        self.parts = parts
        self.in_features = parts[0].in_features
        if any(p.in_features != self.in_features for p in parts):
            raise ValueError("stacked linears must share their input size")
        self.out_features = sum(p.out_features for p in parts)
        kinds = {p.kind for p in parts}
        self.kind = kinds.pop() if len(kinds) == 1 else "+".join(p.kind for p in parts)
        self.native_max_rows = min(p.native_max_rows for p in parts)
        refs = [p.native_ref() for p in parts]
        self._table = None
        if all(r is not None for r in refs):
            flat = [len(parts)]
            for p, (code, w, d) in zip(parts, refs, strict=True):
                flat += [code, w, d, p.out_features]
            self._table = torch.tensor(flat, dtype=torch.int64)

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        rows = x.shape[0]
        lib = native.lib()
        if lib is not None and self._table is not None and rows <= self.native_max_rows \
                and x.dtype == torch.float32 and not _lossy_prefill(rows):
            if x.stride(-1) != 1:
                x = x.contiguous()
            y = out if out is not None else torch.empty(rows, self.out_features)
            lib.tl_linear(native.W_PARTS, self._table.data_ptr(), None, x.data_ptr(), x.stride(0),
                          y.data_ptr(), y.stride(0), rows, self.out_features, self.in_features,
                          int(out is not None), native.num_threads())
            return y
        return _expanded_gemm(self, x, out)

    def expand_into(self, buf: torch.Tensor) -> torch.Tensor:
        r0 = 0
        for p in self.parts:
            p.expand_into(buf[r0:r0 + p.out_features])
            r0 += p.out_features
        return buf

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.expand_into(torch.empty(self.out_features, self.in_features)).to(dtype)

    def native_ref(self) -> tuple[int, int, int] | None:
        return None if self._table is None else (native.W_PARTS, self._table.data_ptr(), 0)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)


Linear = DenseLinear | Float16Linear | Q8Linear | BlockLinear | StackedLinear


def from_blocks(qtype: str, data: torch.Tensor, rows: int, cols: int) -> Linear:
    """The float32-compute representation of one GGUF matrix from its raw bytes
    (uint8 [rows, row_bytes]), keeping them (no copy) wherever the kernels read them."""
    if qtype == "F32":
        return DenseLinear(data.view(torch.float32).reshape(rows, cols))
    if qtype == "F16":
        return Float16Linear(data.view(torch.float16).reshape(rows, cols))
    return BlockLinear(qtype, data, rows, cols)


def concat(parts: list[Linear]) -> Linear:
    """Fuse linears that read the same input (q|k|v, gate|up) by stacking output rows."""
    kinds = {p.kind for p in parts}
    if kinds == {"dense"}:
        return DenseLinear(torch.cat([p.weight for p in parts]))
    if kinds == {"f16"}:  # already a copy of the file's bytes: one matrix tiles best
        return Float16Linear(torch.cat([p.weight for p in parts]))
    return StackedLinear(parts)
