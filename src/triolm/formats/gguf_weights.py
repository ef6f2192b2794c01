"""GGUF weights in the form the engine computes with.

`read_gguf` dequantizes to one dtype; the engine would rather keep what the file
stores: F16 matrices as float16 and every block type (BF16, Q4_0 ... Q6_K, IQ4_NL, IQ4_XS) as its
blocks, read-only views of the memory-mapped file (see `linear.py` and
docs/quantized-weights.md). A decode step then streams the file's bytes, not float32.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch

from triolm.formats.gguf_reader import GGUFModel, read_gguf
from triolm.kernels import native


def read_gguf_for_engine(path: str | os.PathLike) -> tuple[GGUFModel, dict[str, Any]]:
    """The parsed file and its weights: float32 vectors, float16 F16 matrices, block
    matrices as `QuantizedTensor`s over the mapped file."""
    native.prepare_async()  # compile the kernels (first run only) while the file is read
    params = inspect.signature(read_gguf).parameters
    if "keep_float16" in params:  # the reader can hand F16 over without a float32 detour
        gguf = read_gguf(path, torch.float32, keep_quantized=True, keep_float16=True)
    else:
        gguf = read_gguf(path, torch.float32, keep_quantized=True)
    tensors: dict[str, Any] = {}
    for name in list(gguf.tensors):
        t = gguf.tensors.pop(name)
        if gguf.tensor_types.get(name) == "F16" and t.dim() == 2 and t.dtype != torch.float16:
            t = t.half()  # exact: these values were float16 in the file
        tensors[name] = t
    tensors.update(gguf.quantized)
    gguf.tensors = tensors
    return gguf, tensors
