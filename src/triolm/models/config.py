"""The architecture description every loader produces and the model module consumes."""

from __future__ import annotations

import attrs

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3")

#: Per-layer attention kinds (`layer_types`), as Hugging Face names them.
SLIDING = "sliding_attention"
FULL = "full_attention"


@attrs.frozen
class RopeScaling:
    """Rope scaling: `llama3` (Llama 3.1's wavelength bands) or `linear` (positions
    divided by `factor`, the only field it uses). None of it means plain RoPE."""

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
    # gemma2 / gemma3: local (sliding-window) and global layers, their own RoPE bases
    sliding_window: int | None = None  # a token attends to the last `sliding_window` positions
    layer_types: tuple[str, ...] = ()  # SLIDING or FULL per layer; empty: every layer FULL
    rope_local_theta: float = 10000.0  # RoPE base of SLIDING layers (never scaled)
    query_pre_attn_scalar: float | None = None  # attention scale is its -1/2 power (else head_dim's)
    attn_logit_softcapping: float | None = None  # scores -> cap * tanh(scores / cap)
    final_logit_softcapping: float | None = None  # logits -> cap * tanh(logits / cap)

    def is_sliding(self, layer: int) -> bool:
        return bool(self.layer_types) and self.layer_types[layer] == SLIDING
