"""Read the tensors of a Hugging Face model directory (single or sharded safetensors)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from triolm.errors import ModelLoadError


def safetensors_files(model_dir: Path) -> list[Path]:
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise ModelLoadError(f"{index}: invalid index: {exc}") from None
        files = sorted({model_dir / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise ModelLoadError(f"{index}: shard(s) missing: {', '.join(missing)}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{model_dir}: no *.safetensors files")
    return files


def read_safetensors(model_dir: Path, progress: Callable[[int, int], None] | None = None
                     ) -> dict[str, torch.Tensor]:
    """All tensors by HF name. A corrupt or truncated file raises ModelLoadError."""
    tensors: dict[str, torch.Tensor] = {}
    files = safetensors_files(model_dir)
    for n, path in enumerate(files):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    tensors[name] = f.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"{path}: cannot read safetensors: {exc}") from None
        if progress:
            progress(n + 1, len(files))
    return tensors
