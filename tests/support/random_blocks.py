"""Random but valid GGUF blocks of every type, for kernel tests (no quantizer needed).

Every byte of a block is a valid code except its float16 scale fields, which random bytes
could make inf/NaN or huge; those get small normal values. BF16 "blocks" are the top
halves of normal float32 values."""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

#: Byte offsets of the float16 fields (d, dmin/m) inside one block, per type.
F16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
              "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
              "IQ4_NL": (0,), "IQ4_XS": (0,)}


def random_blocks(qtype: str, rows: int, cols: int, rng: np.random.Generator,
                  scale: float = 0.05) -> np.ndarray:
    """uint8 [rows, row_bytes] holding a rows x cols matrix of type `qtype`."""
    if qtype == "BF16":
        bits = rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint32) >> 16
        return bits.astype(np.uint16).view(np.uint8).reshape(rows, -1)
    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    if cols % block:
        raise ValueError(f"{qtype} rows hold whole blocks of {block}; {cols} is not a multiple")
    b = rng.integers(0, 256, (rows * cols // block, type_size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        values = (rng.standard_normal(b.shape[0]) * scale).astype(np.float16)
        b[:, off:off + 2] = values.view(np.uint8).reshape(-1, 2)
    return b.reshape(rows, -1)
