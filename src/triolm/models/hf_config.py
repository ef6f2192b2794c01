"""Hugging Face `config.json` -> ModelConfig."""

from __future__ import annotations

import json
from pathlib import Path

from triolm.errors import ModelLoadError
from triolm.models.config import SUPPORTED_ARCHITECTURES, ModelConfig, RopeScaling, invalid_fields

_MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3"}


def _eos_ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _rope_scaling(raw: dict | None) -> RopeScaling | None:
    if not raw:
        return None
    kind = raw.get("rope_type") or raw.get("type")
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise ModelLoadError(f"unsupported rope_scaling type {kind!r} (supported: llama3)")
    return RopeScaling(
        rope_type="llama3",
        factor=float(raw.get("factor", 8.0)),
        low_freq_factor=float(raw.get("low_freq_factor", 1.0)),
        high_freq_factor=float(raw.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(raw.get("original_max_position_embeddings", 8192)),
    )


def config_from_hf_dict(cfg: dict, source: str = "config.json") -> ModelConfig:
    model_type = cfg.get("model_type")
    arch = _MODEL_TYPES.get(model_type)
    if arch is None:
        raise ModelLoadError(
            f"{source}: unsupported architecture {model_type!r} "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    try:
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        rope = cfg.get("rope_parameters") or {}
        theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
        scaling = cfg.get("rope_scaling")
        if scaling is None and rope.get("rope_type") not in (None, "default"):
            scaling = rope
        config = ModelConfig(
            architecture=arch,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or (hidden // heads if heads > 0 else 0)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            rope_scaling=_rope_scaling(scaling),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", arch == "qwen2")),
            qk_norm=arch == "qwen3",
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=_eos_ids(cfg.get("eos_token_id")),
        )
    except KeyError as exc:
        raise ModelLoadError(f"{source}: missing key {exc.args[0]!r}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise ModelLoadError(f"{source}: invalid value: {exc}") from None
    for field, why in invalid_fields(config).items():
        raise ModelLoadError(f"{source}: {field} {why}")
    return config


def read_hf_config(model_dir: Path) -> ModelConfig:
    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{model_dir}: no config.json (not a Hugging Face model directory)") from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: invalid JSON: {exc}") from None
    return config_from_hf_dict(cfg, str(path))
