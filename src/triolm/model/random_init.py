"""Deterministic random weights and the config.json that describes them.

Production code needs them for the `random-tiny` model (`triolm serve --model
random-tiny`), tests and benchmarks for their generated models, so they live here and
not in support.

Weights are scaled so a forward pass is informative: projections have std
1/sqrt(fan_in) (each sub-layer changes the residual stream by O(1), attention is far
from uniform), norms are ~1 with some spread, the output matrix gives logits with
std ~2. So a wrong permutation, a swapped tensor or a broken KV cache changes the
argmax, which a test can see.
"""

from __future__ import annotations

from typing import Any

import torch

from triolm.formats import moe_config
from triolm.formats.gguf_layout import expected_shapes
from triolm.model.config import FULL, MOE_ARCHITECTURES, SLIDING, ModelConfig


def random_weights(config: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic float32 weights (HF names/layout) for `config`; see module doc."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, shape in expected_shapes(config).items():
        if len(shape) == 1 and name.endswith("norm.weight"):
            # gemma's norms scale by 1 + w: centre its w on 0 so both families scale by ~1
            centre = 0.0 if config.architecture in ("gemma2", "gemma3") else 1.0
            t = centre + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:  # q/k/v biases
            t = 0.1 * torch.randn(shape, generator=gen)
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            std = 2.0 / config.hidden_size ** 0.5 if (
                name == "lm_head.weight" or config.tie_word_embeddings) else 1.0
            t = std * torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen) / shape[1] ** 0.5
        out[name] = t.contiguous()
    return out


def hf_config_dict(config: ModelConfig, cls: str, model_type: str) -> dict[str, Any]:
    """config.json content that transformers and `read_hf_config` both read as `config`
    (`cls`: the HF architecture class, e.g. Qwen2ForCausalLM)."""
    c = config
    eos: Any = list(c.eos_token_ids) if len(c.eos_token_ids) != 1 else c.eos_token_ids[0]
    d: dict[str, Any] = {
        "architectures": [cls],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": eos,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    if c.rope_scaling is not None:
        r = c.rope_scaling
        d["rope_scaling"] = {"rope_type": r.rope_type, "factor": r.factor,
                             "low_freq_factor": r.low_freq_factor,
                             "high_freq_factor": r.high_freq_factor,
                             "original_max_position_embeddings": r.original_max_position_embeddings}
    if model_type in ("llama", "qwen3"):
        d["attention_bias"] = c.attention_bias
    if model_type == "llama":
        d["mlp_bias"] = False
    if model_type in ("gemma2", "gemma3_text"):
        _gemma_config_keys(d, c)
    if model_type == "mistral":
        d["sliding_window"] = None
    if c.architecture in MOE_ARCHITECTURES:
        d.update(moe_config.hf_config_keys(c))
    if model_type in ("qwen2", "qwen3"):
        d["use_sliding_window"] = False
        d["sliding_window"] = None
        d["max_window_layers"] = c.num_hidden_layers
    if model_type in ("phi3", "granite", "smollm3"):
        _family_config_keys(d, c, model_type)
    return d


def _family_config_keys(d: dict[str, Any], c: ModelConfig, model_type: str) -> None:
    """phi3 / granite / smollm3 keys, in the form their hub config.json files have."""
    if model_type == "phi3":
        del d["head_dim"]  # Phi3Config derives it from hidden_size / heads, as llama.cpp does
        d.update(partial_rotary_factor=c.partial_rotary_factor, sliding_window=None,
                 original_max_position_embeddings=c.max_position_embeddings, pad_token_id=None)
        s = c.rope_scaling
        if s is not None:
            d["original_max_position_embeddings"] = s.original_max_position_embeddings
            d["rope_scaling"] = {"type": "longrope", "short_factor": list(s.short_factor),
                                 "long_factor": list(s.long_factor), "attention_factor": s.attention_factor,
                                 "original_max_position_embeddings": s.original_max_position_embeddings}
    elif model_type == "granite":
        d.update(embedding_multiplier=c.embedding_multiplier, residual_multiplier=c.residual_multiplier,
                 attention_multiplier=c.attention_multiplier, logits_scaling=c.logits_scaling,
                 attention_bias=False, mlp_bias=False)
    else:
        d.update(no_rope_layers=[int(f) for f in c.rope_layers], use_sliding_window=False,
                 sliding_window=None, attention_bias=False, mlp_bias=False)


def _gemma_config_keys(d: dict[str, Any], c: ModelConfig) -> None:
    """Gemma's config.json keys in transformers 5's form (RoPE nested per layer kind)."""
    for key in ("rope_theta", "rope_scaling", "hidden_act"):
        del d[key]
    global_rope: dict[str, Any] = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling is not None:
        global_rope.update(rope_type=c.rope_scaling.rope_type, factor=c.rope_scaling.factor)
    if c.architecture == "gemma3":
        d["rope_parameters"] = {FULL: global_rope,
                                SLIDING: {"rope_type": "default", "rope_theta": c.rope_local_theta}}
    else:
        d["rope_parameters"] = global_rope
    scalar = c.query_pre_attn_scalar
    d.update(hidden_activation="gelu_pytorch_tanh",
             query_pre_attn_scalar=int(scalar) if scalar is not None and scalar.is_integer() else scalar,
             sliding_window=c.sliding_window, layer_types=list(c.layer_types),
             attn_logit_softcapping=c.attn_logit_softcapping,
             final_logit_softcapping=c.final_logit_softcapping, attention_bias=False,
             pad_token_id=0)
