"""New weights for the served model, read from disk while the old ones keep serving.

Only weights that compute the same function shapes over the same vocabulary may replace
the served ones: the KV cache, every session's token ids and every prompt the server
tokenized stay valid across the swap only then. Anything else is a `WeightMismatch`
naming the first difference, found before the new model is built.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import attrs

from triolm.errors import ModelLoadError
from triolm.loading.served_model import ServedModel, read_model_files, torch_dtype
from triolm.model.build import Model, build_model
from triolm.model.config import ModelConfig
from triolm.settings import ServerSettings
from triolm.tokenizers.base import Tokenizer

#: Config fields that must be equal: they fix the tensors' shapes, the KV cache layout or
#: which layer computes what.
ARCHITECTURE_FIELDS = ("architecture", "vocab_size", "hidden_size", "intermediate_size",
                       "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                       "attention_bias", "qk_norm", "sliding_window", "layer_types")


class WeightMismatch(Exception):
    """The new weights cannot replace the served ones (architecture, shape or tokenizer)."""


@attrs.frozen
class LoadedWeights:
    path: Path
    weight_version: str
    model: Model


def config_mismatch(served: ModelConfig, new: ModelConfig) -> str | None:
    for name in ARCHITECTURE_FIELDS:
        old_value, new_value = getattr(served, name), getattr(new, name)
        if old_value != new_value:
            return f"{name}: the served model has {old_value!r}, the new weights have {new_value!r}"
    return None


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """A digest of every token's bytes and the end-of-sequence ids."""
    h = hashlib.sha256(repr((tokenizer.vocab_size, sorted(tokenizer.eos_token_ids))).encode())
    for token_id in range(tokenizer.vocab_size):
        try:
            data = tokenizer.token_bytes(token_id)
        except IndexError:
            data = b"\xff<unused>"
        h.update(len(data).to_bytes(4, "little"))
        h.update(data)
    return h.hexdigest()


def tokenizer_mismatch(served: Tokenizer, new: Tokenizer) -> str | None:
    if served.vocab_size != new.vocab_size:
        return (f"tokenizer: the served tokenizer has {served.vocab_size} tokens, the new one "
                f"{new.vocab_size}")
    if set(served.eos_token_ids) != set(new.eos_token_ids):
        return (f"tokenizer: end-of-sequence ids differ (served {sorted(served.eos_token_ids)}, "
                f"new {sorted(new.eos_token_ids)})")
    if tokenizer_fingerprint(served) != tokenizer_fingerprint(new):
        return "tokenizer: the vocabularies differ (some token ids stand for other text)"
    return None


def load_weights(served: ServedModel, path: Path, weight_version: str,
                 settings: ServerSettings) -> LoadedWeights:
    """Read and build the weights at `path` for `served`'s architecture (slow, CPU-bound:
    run it in a worker thread). WeightMismatch or ModelLoadError when they cannot serve."""
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or directory")
    config, tensors, tokenizer, _ = read_model_files(path, settings)
    problem = config_mismatch(served.config, config) or tokenizer_mismatch(served.tokenizer, tokenizer)
    if problem is not None:
        raise WeightMismatch(f"{path} cannot replace the served weights: {problem}")
    model = build_model(config, tensors, dtype=torch_dtype(settings.dtype),
                        max_positions=served.max_model_len + 1)
    return LoadedWeights(path, weight_version, model)
