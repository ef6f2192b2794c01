"""The architecture description every loader produces and the model module consumes."""

from __future__ import annotations

import math

import attrs

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "mixtral", "qwen3_moe",
                           "phi3", "granite", "smollm3")

#: Mixture-of-experts architectures (model/moe.py): a routed set of experts replaces the MLP.
MOE_ARCHITECTURES = ("mixtral", "qwen3_moe")
#: More experts than any published model has (Qwen3-Next: 512); a file claiming more is
#: refused before anything is sized from the count.
MAX_EXPERTS = 4096

#: Per-layer attention kinds (`layer_types`), as Hugging Face names them.
SLIDING = "sliding_attention"
FULL = "full_attention"


@attrs.frozen
class RopeScaling:
    """Rope scaling: `llama3` (Llama 3.1's wavelength bands), `linear` (positions
    divided by `factor`, the only field it uses) or `longrope` (Phi-3: per-frequency
    divisors, `short_factor` within original_max_position_embeddings and `long_factor`
    beyond it, cos/sin scaled by `attention_factor`). None of it means plain RoPE."""

    rope_type: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    short_factor: tuple[float, ...] = ()  # longrope
    long_factor: tuple[float, ...] = ()  # longrope
    attention_factor: float = 1.0  # longrope


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
    # mixture of experts (MOE_ARCHITECTURES): each token runs `num_experts_per_tok` of
    # `num_experts` MLPs of width `moe_intermediate_size`, weighted by the router
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True  # renormalise the top-k router probabilities to sum to 1
    dense_mlp_layers: tuple[int, ...] = ()  # layers with a plain MLP (`intermediate_size`) instead
    # phi3 (Phi-4-mini): RoPE rotates the first head_dim * factor dims of each head only
    partial_rotary_factor: float = 1.0
    # granite: x = embed * m; x += r * branch; attention scale; logits / s
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float | None = None  # attention scale (else head_dim^-1/2)
    logits_scaling: float = 1.0
    # smollm3: False where a layer leaves RoPE out; empty: every layer uses it
    rope_layers: tuple[bool, ...] = ()

    def is_sliding(self, layer: int) -> bool:
        return bool(self.layer_types) and self.layer_types[layer] == SLIDING

    def rotates(self, layer: int) -> bool:
        """Whether the layer applies RoPE (smollm3 leaves it out on some)."""
        return not self.rope_layers or self.rope_layers[layer]

    @property
    def rotary_dim(self) -> int:
        """How many dims of each head RoPE rotates (the rest pass through)."""
        return int(self.head_dim * self.partial_rotary_factor)


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
    if config.sliding_window is not None and config.sliding_window < 1:
        bad["sliding_window"] = f"must be at least 1, got {config.sliding_window}"
    if config.layer_types and len(config.layer_types) != config.num_hidden_layers:
        bad["layer_types"] = f"names {len(config.layer_types)} layers, the model has {config.num_hidden_layers}"
    if not (math.isfinite(config.rope_local_theta) and config.rope_local_theta > 1):
        bad["rope_local_theta"] = f"must be a finite number above 1, got {config.rope_local_theta}"
    for name in ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping"):
        value = getattr(config, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            bad[name] = f"must be a finite positive number, got {value}"
    if config.architecture in MOE_ARCHITECTURES:
        if not 1 <= config.num_experts <= MAX_EXPERTS:
            bad["num_experts"] = f"must be between 1 and {MAX_EXPERTS}, got {config.num_experts}"
        if not 1 <= config.num_experts_per_tok <= max(config.num_experts, 1):
            bad["num_experts_per_tok"] = (f"must be between 1 and the {config.num_experts} experts, "
                                          f"got {config.num_experts_per_tok}")
        if config.moe_intermediate_size < 1:
            bad["moe_intermediate_size"] = f"must be at least 1, got {config.moe_intermediate_size}"
        if any(not 0 <= i < config.num_hidden_layers for i in config.dense_mlp_layers):
            bad["dense_mlp_layers"] = (f"names layers outside 0..{config.num_hidden_layers - 1}: "
                                       f"{list(config.dense_mlp_layers)}")
    bad.update(_family_invalid_fields(config))
    return bad


def _family_invalid_fields(config: ModelConfig) -> dict[str, str]:
    """The phi3 / granite / smollm3 fields (see `invalid_fields`)."""
    bad: dict[str, str] = {}
    c = config
    if not (math.isfinite(c.partial_rotary_factor) and 0 < c.partial_rotary_factor <= 1):
        bad["partial_rotary_factor"] = f"must be a number in (0, 1], got {c.partial_rotary_factor}"
    elif c.rotary_dim < 2 or c.rotary_dim % 2:
        bad["partial_rotary_factor"] = (f"rotates {c.rotary_dim} of {c.head_dim} dims; "
                                        f"RoPE needs an even number, at least 2")
    for name in ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling"):
        value = getattr(c, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            bad[name] = f"must be a finite positive number, got {value}"
    if c.rope_layers and len(c.rope_layers) != c.num_hidden_layers:
        bad["rope_layers"] = f"names {len(c.rope_layers)} layers, the model has {c.num_hidden_layers}"
    s = c.rope_scaling
    if s is not None and s.rope_type == "longrope" and "partial_rotary_factor" not in bad:
        half = c.rotary_dim // 2
        for name in ("short_factor", "long_factor"):
            values = getattr(s, name)
            if len(values) != half:
                bad[f"rope_scaling.{name}"] = f"has {len(values)} values, expected rotary_dim/2 = {half}"
            elif not all(math.isfinite(v) and v > 0 for v in values):
                bad[f"rope_scaling.{name}"] = "must hold finite positive numbers"
        if not (math.isfinite(s.attention_factor) and s.attention_factor > 0):
            bad["rope_scaling.attention_factor"] = f"must be a finite positive number, got {s.attention_factor}"
    return bad
