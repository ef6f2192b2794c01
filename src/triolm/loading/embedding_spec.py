"""Whether a model is served for embeddings, and how its hidden states become one vector:
the pooling (last token, mean, first token) and whether the vector is L2-normalized.

Decoder embedding models (the Qwen3-Embedding family: the qwen3 architecture, last-token
pooling, normalized) say so in their files: a sentence-transformers `modules.json` with
its Pooling module's config (and a Normalize module), or GGUF `<arch>.pooling_type`
metadata (llama.cpp normalizes such embeddings). `--task embed` serves any llama-family
model this way; with nothing in the files it pools the last token and normalizes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import attrs

from triolm.errors import ModelLoadError

Pooling = Literal["last", "mean", "cls"]
TASKS = ("auto", "generate", "embed")
_ST_POOLING = {"pooling_mode_lasttoken": "last", "pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
# llama.cpp's enum llama_pooling_type: 0 none, 1 mean, 2 cls, 3 last, 4 rank
_GGUF_POOLING = {1: "mean", 2: "cls", 3: "last"}
_GGUF_RANK = 4


@attrs.frozen
class EmbeddingSpec:
    pooling: Pooling = "last"
    normalize: bool = True


def spec_from_model_dir(model_dir: Path) -> EmbeddingSpec | None:
    """The sentence-transformers pipeline of a HF directory, if it has one."""
    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        return None
    try:
        modules = json.loads(modules_path.read_text())
        pooling_module = next((m for m in modules if str(m.get("type", "")).endswith("models.Pooling")), None)
        if pooling_module is None:
            return None
        pooling_config = json.loads((model_dir / pooling_module.get("path", "") / "config.json").read_text())
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise ModelLoadError(f"{model_dir}: cannot read its sentence-transformers modules: {exc}") from None
    modes = [ours for key, ours in _ST_POOLING.items() if pooling_config.get(key)]
    if len(modes) != 1:
        enabled = sorted(k for k, v in pooling_config.items() if v is True)
        raise ModelLoadError(f"{model_dir}: pooling config must enable exactly one of last-token, mean or "
                             f"cls pooling (supported), got {enabled}")
    normalize = any(str(m.get("type", "")).endswith("models.Normalize") for m in modules)
    return EmbeddingSpec(pooling=modes[0], normalize=normalize)


def spec_from_gguf_metadata(metadata: dict[str, Any]) -> EmbeddingSpec | None:
    """`<arch>.pooling_type` of a GGUF file, if it declares one."""
    arch = metadata.get("general.architecture")
    value = metadata.get(f"{arch}.pooling_type")
    if value is None or value == 0:
        return None
    if value == _GGUF_RANK:
        raise ModelLoadError("a reranker GGUF (pooling_type rank) is not supported")
    if value not in _GGUF_POOLING:
        raise ModelLoadError(f"unknown GGUF pooling_type {value!r}")
    return EmbeddingSpec(pooling=_GGUF_POOLING[value], normalize=True)


def resolve_task(task: str, detected: EmbeddingSpec | None, architecture: str) -> EmbeddingSpec | None:
    """The embedding spec to serve with, or None to serve generation."""
    if task not in TASKS:
        raise ModelLoadError(f"unknown task {task!r} (choose one of {', '.join(TASKS)})")
    if task == "generate" or (task == "auto" and detected is None):
        return None
    if architecture in ("gemma2", "gemma3"):
        raise ModelLoadError(f"--task embed: the {architecture} architecture is not served for embeddings "
                             "(llama-family decoders are)")
    return detected or EmbeddingSpec()
