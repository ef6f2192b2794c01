"""Hugging Face `config.json` -> ModelConfig."""

from __future__ import annotations

import json
from pathlib import Path

import attrs

from triolm.errors import ModelLoadError
from triolm.formats import granite, moe_config, phi3, smollm3
from triolm.model.config import (
    FULL,
    MOE_ARCHITECTURES,
    SLIDING,
    SUPPORTED_ARCHITECTURES,
    ModelConfig,
    RopeScaling,
    invalid_fields,
)

_MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3",
                "gemma2": "gemma2", "gemma3_text": "gemma3", "mixtral": "mixtral", "qwen3_moe": "qwen3_moe"}
_MODEL_TYPES.update(phi3="phi3", granite="granite", smollm3="smollm3")


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
    if kind == "linear":
        return RopeScaling(rope_type="linear", factor=float(raw.get("factor", 1.0)))
    if kind != "llama3":
        raise ModelLoadError(f"unsupported rope_scaling type {kind!r} (supported: llama3, linear)")
    return RopeScaling(
        rope_type="llama3",
        factor=float(raw.get("factor", 8.0)),
        low_freq_factor=float(raw.get("low_freq_factor", 1.0)),
        high_freq_factor=float(raw.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(raw.get("original_max_position_embeddings", 8192)),
    )


def config_from_hf_dict(cfg: dict, source: str = "config.json") -> ModelConfig:
    model_type = cfg.get("model_type")
    arch = _MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None
    if arch is None:
        raise ModelLoadError(
            f"{source}: unsupported architecture {model_type!r} "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    try:
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        if arch in ("gemma2", "gemma3"):
            config = _gemma_config(cfg, arch)
        elif arch in MOE_ARCHITECTURES:
            config = moe_config.from_hf_dict(cfg, _llama_config(cfg, arch, heads, hidden))
        elif arch in _FAMILY_CONFIGS:
            config = _FAMILY_CONFIGS[arch](cfg, heads, hidden)
        else:
            config = _llama_config(cfg, arch, heads, hidden)
    except KeyError as exc:
        raise ModelLoadError(f"{source}: missing key {exc.args[0]!r}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise ModelLoadError(f"{source}: invalid value: {exc}") from None
    for field, why in invalid_fields(config).items():
        raise ModelLoadError(f"{source}: {field} {why}")
    return config


def _llama_config(cfg: dict, arch: str, heads: int, hidden: int) -> ModelConfig:
    rope = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling")
    if scaling is None and rope.get("rope_type") not in (None, "default"):
        scaling = rope
    return ModelConfig(
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


def _granite_config(cfg: dict, heads: int, hidden: int) -> ModelConfig:
    return granite.with_multipliers_from_hf(_llama_config(cfg, "granite", heads, hidden), cfg)


def _smollm3_config(cfg: dict, heads: int, hidden: int) -> ModelConfig:
    config = _llama_config(cfg, "smollm3", heads, hidden)
    if cfg.get("use_sliding_window") and cfg.get("sliding_window"):
        raise ModelLoadError("smollm3: sliding-window attention is not supported")
    return attrs.evolve(config, rope_layers=smollm3.rope_layers_from_hf(cfg, config.num_hidden_layers))


_FAMILY_CONFIGS = {"phi3": lambda cfg, heads, hidden: phi3.config_from_hf(cfg),
                   "granite": _granite_config, "smollm3": _smollm3_config}


def _gemma_config(cfg: dict, arch: str) -> ModelConfig:
    """Gemma 2/3: local and global layers. Transformers 5 nests RoPE per layer kind in
    `rope_parameters`; older configs have rope_theta / rope_local_base_freq / rope_scaling."""
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ModelLoadError(f"{arch}: unsupported hidden activation {act!r} (supported: gelu_pytorch_tanh)")
    heads, hidden, layers = int(cfg["num_attention_heads"]), int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
    rope = cfg.get("rope_parameters") or {}
    if FULL in rope or SLIDING in rope:
        full, local = rope.get(FULL) or {}, rope.get(SLIDING) or {}
    else:
        full, local = rope, {}
    global_default = 1e6 if arch == "gemma3" else 10000.0
    theta = float(cfg.get("rope_theta", full.get("rope_theta", global_default)))
    local_theta = cfg.get("rope_local_base_freq", local.get("rope_theta"))
    if local_theta is None:
        local_theta = 10000.0 if arch == "gemma3" else theta
    scaling = cfg.get("rope_scaling")
    if scaling is None and full.get("rope_type") not in (None, "default"):
        scaling = full
    if local.get("rope_type") not in (None, "default"):
        raise ModelLoadError(f"{arch}: rope scaling on sliding-window layers is not supported")
    layer_types = cfg.get("layer_types")
    if layer_types is None:
        pattern = int(cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern")
                      or (6 if arch == "gemma3" else 2))
        layer_types = [SLIDING if (i + 1) % pattern else FULL for i in range(layers)]
    if len(layer_types) != layers or any(t not in (SLIDING, FULL) for t in layer_types):
        raise ModelLoadError(f"{arch}: layer_types must name {layers} layers as {SLIDING!r} or {FULL!r}")
    window = cfg.get("sliding_window")
    if window is None and SLIDING in layer_types:
        raise ModelLoadError(f"{arch}: sliding_attention layers without a sliding_window")
    if cfg.get("use_bidirectional_attention"):
        raise ModelLoadError(f"{arch}: bidirectional attention (embedding models) is not supported")

    def cap(name: str) -> float | None:
        value = cfg.get(name)
        return float(value) if value else None

    head_dim = int(cfg.get("head_dim") or hidden // heads)
    return ModelConfig(
        architecture=arch,
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        max_position_embeddings=int(cfg.get("max_position_embeddings", 8192)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=_rope_scaling(scaling),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        attention_bias=bool(cfg.get("attention_bias", False)),
        qk_norm=arch == "gemma3",
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=_eos_ids(cfg.get("eos_token_id")),
        sliding_window=int(window) if window is not None else None,
        layer_types=tuple(layer_types),
        rope_local_theta=float(local_theta),
        query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar") or head_dim),
        attn_logit_softcapping=cap("attn_logit_softcapping"),
        final_logit_softcapping=cap("final_logit_softcapping"),
    )


def read_hf_config(model_dir: Path) -> ModelConfig:
    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{model_dir}: no config.json (not a Hugging Face model directory)") from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: invalid JSON: {exc}") from None
    return config_from_hf_dict(cfg, str(path))
