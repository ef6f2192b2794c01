"""Hostile GGUF files for tests: a real file copied with some metadata changed.

The tensors are copied byte for byte and the metadata keeps each key's GGUF value type,
so the copy differs from a file llama.cpp would load only where a test says so (a block
count of 2**32-1, a NaN epsilon, a 100 KB vocabulary token ...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from gguf import GGUFReader, GGUFValueType, GGUFWriter

# Written by GGUFWriter itself, never copied.
_HEADER_KEYS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture")


def rewrite_gguf(src: str | os.PathLike, dst: str | os.PathLike, changes: Mapping[str, Any] = {},
                 drop: tuple[str, ...] = (), types: Mapping[str, GGUFValueType] = {}) -> Path:
    """Copy `src` to `dst` with metadata `changes` (key -> new value) and keys in `drop`
    left out. A changed key keeps its type; a new key needs its type in `types` (scalars)
    or is a string / list of strings."""
    reader = GGUFReader(src, "r")
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(Path(dst), arch)
    try:
        for name, field in reader.fields.items():
            if name in _HEADER_KEYS or name in drop:
                continue
            value = changes[name] if name in changes else field.contents()
            vtype = field.types[0]
            sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
            writer.add_key_value(name, value, vtype, sub_type=sub)
        for name, value in changes.items():
            if name in reader.fields:
                continue
            if isinstance(value, list):
                writer.add_key_value(name, value, GGUFValueType.ARRAY, sub_type=GGUFValueType.STRING)
            else:
                writer.add_key_value(name, value, types.get(name, GGUFValueType.STRING))
        for t in reader.tensors:
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return Path(dst)
