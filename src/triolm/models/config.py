"""The architecture description every loader produces and the model module consumes."""

from __future__ import annotations

import math

import attrs

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")


@attrs.frozen
class RopeScaling:
    """Llama 3 style rope scaling (`rope_type: llama3`); None of it means plain RoPE."""

    rope_type: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@attrs.frozen
class ModelConfig:
    """Hyper-parameters of a llama-family decoder, in Hugging Face terms."""

    architecture: str  # one of SUPPORTED_ARCHITECTURES
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # qwen2: bias on q/k/v projections
    qk_norm: bool = False  # qwen3: per-head RMSNorm on q and k
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()


_POSITIVE_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings")


def invalid_fields(config: ModelConfig) -> dict[str, str]:
    """Fields whose values no working model has, each with the reason.

    Every loader checks its config with this and names the offending key in its own
    terms: a model file is untrusted input, and a zero head count or a NaN epsilon must
    fail the load, not divide by zero at start-up or turn every logit into NaN later."""
    values = attrs.asdict(config, recurse=False)
    bad: dict[str, str] = {}
    for name in _POSITIVE_INTS:
        if values[name] < 1:
            bad[name] = f"must be at least 1, got {values[name]}"
    if "num_key_value_heads" not in bad and "num_attention_heads" not in bad and \
            config.num_attention_heads % config.num_key_value_heads:
        bad["num_key_value_heads"] = (f"{config.num_key_value_heads} does not divide the "
                                      f"{config.num_attention_heads} attention heads")
    if "head_dim" not in bad and config.head_dim % 2:
        bad["head_dim"] = f"must be even for rotary embeddings, got {config.head_dim}"
    if not (math.isfinite(config.rms_norm_eps) and 0 < config.rms_norm_eps <= 1):
        bad["rms_norm_eps"] = f"must be a finite number in (0, 1], got {config.rms_norm_eps}"
    if not (math.isfinite(config.rope_theta) and config.rope_theta > 1):
        bad["rope_theta"] = f"must be a finite number above 1, got {config.rope_theta}"
    s = config.rope_scaling
    if s is not None:
        if not (math.isfinite(s.factor) and s.factor > 0):
            bad["rope_scaling.factor"] = f"must be a finite positive number, got {s.factor}"
        if not (math.isfinite(s.low_freq_factor) and s.low_freq_factor > 0):
            bad["rope_scaling.low_freq_factor"] = f"must be a finite positive number, got {s.low_freq_factor}"
        if not (math.isfinite(s.high_freq_factor) and s.high_freq_factor > s.low_freq_factor):
            bad["rope_scaling.high_freq_factor"] = (f"must be finite and above low_freq_factor "
                                                    f"{s.low_freq_factor}, got {s.high_freq_factor}")
        if s.original_max_position_embeddings < 1:
            bad["rope_scaling.original_max_position_embeddings"] = (
                f"must be at least 1, got {s.original_max_position_embeddings}")
    return bad
