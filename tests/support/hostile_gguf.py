"""Hostile GGUF files for tests: a real file copied with some metadata changed.

The tensors are copied byte for byte and the metadata keeps each key's GGUF value type,
so the copy differs from a file llama.cpp would load only where a test says so (a block
count of 2**32-1, a NaN epsilon, a 100 KB vocabulary token ...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFValueType, GGUFWriter

from triolm.formats.gguf_reader import _CheckedReader, _KVParser

# Written by GGUFWriter itself, never copied.
_HEADER_KEYS = ("general.architecture",)
_ITEM_TYPES = {str: GGUFValueType.STRING, float: GGUFValueType.FLOAT32, int: GGUFValueType.INT32,
               bool: GGUFValueType.BOOL}


def rewrite_gguf(src: str | os.PathLike, dst: str | os.PathLike, changes: Mapping[str, Any] = {},
                 drop: tuple[str, ...] = (), types: Mapping[str, GGUFValueType] = {},
                 drop_tensors: tuple[str, ...] = ()) -> Path:
    """Copy `src` to `dst` with metadata `changes` (key -> new value) and keys in `drop`
    left out, and the tensors named in `drop_tensors`. A changed scalar keeps its type; a
    new one needs its type in `types` or is a string; array items are typed by their
    Python type (str, float32, int32, bool)."""
    reader = _CheckedReader(src, "r")
    kv_count = int(np.frombuffer(reader.data, "<u8", count=1, offset=16)[0])
    values, vtypes, _ = _KVParser(reader.data).fields(24, kv_count)
    writer = GGUFWriter(Path(dst), values["general.architecture"])
    try:
        merged = {k: v for k, v in values.items() if k not in drop and k not in _HEADER_KEYS}
        merged.update(changes)
        for name, value in merged.items():
            if isinstance(value, list):
                sub = _ITEM_TYPES[type(value[0])] if value else GGUFValueType.STRING
                writer.add_key_value(name, value, GGUFValueType.ARRAY, sub_type=sub)
            else:
                vtype = GGUFValueType(vtypes[name]) if name in vtypes else types.get(name, GGUFValueType.STRING)
                writer.add_key_value(name, value, vtype)
        for t in reader.tensors:
            if t.name in drop_tensors:
                continue
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return Path(dst)
