"""The architecture description every loader produces and the model module consumes."""

from __future__ import annotations

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
