"""Gemma 2/3 hyper-parameters in GGUF metadata, as llama.cpp writes and reads them.

llama.cpp keeps less than config.json says and fills the rest in by convention; both
directions here follow its loader (`src/models/gemma2.cpp`, `gemma3.cpp`) so a file
we write runs the same in llama.cpp and a file it runs loads the same here:
- the global/local layer pattern: `attention.sliding_window_pattern` (a period, or
  one flag per layer), else every 6th layer global (gemma3) / every 2nd (gemma2);
- the local RoPE base: `rope.freq_base_swa`, else 10 000 (gemma3) or the global base
  (gemma2); only gemma3's global layers take the file's rope scaling;
- the attention scale: no key; head_dim^-1/2, or (hidden/heads)^-1/2 for the 27B shapes;
- soft-capping: gemma2 always caps attention (`attn_logit_softcapping`, default 50) and
  logits (`final_logit_softcapping`, default 30); gemma3 caps logits only if the key is set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from gguf import RopeScalingType

from triolm.model.config import FULL, SLIDING, ModelConfig

GEMMA_ARCHS = ("gemma2", "gemma3")

#: Layer counts llama.cpp treats as the 27B shapes (attention scaled by hidden/heads).
_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
_DEFAULT_PERIOD = {"gemma2": 2, "gemma3": 6}
END_OF_TURN = "<end_of_turn>"


def layer_types_from_period(period: int, layers: int) -> tuple[str, ...]:
    """llama.cpp's `set_swa_pattern`: layer i is local unless i % period == period - 1
    (period 0: all local). HF's default pattern is the same."""
    return tuple(SLIDING if period == 0 or i % period < period - 1 else FULL for i in range(layers))


def llama_cpp_attention_scalar(arch: str, layers: int, hidden: int, heads: int, head_dim: int) -> float:
    return float(hidden // heads) if _27B_LAYERS[arch] == layers else float(head_dim)


def config_from_metadata(base: ModelConfig, arch: str, key: Callable[..., Any],
                         tokens: list[str] | None) -> ModelConfig:
    """Complete the llama-style `base` config with gemma's fields. `key(name, default)`
    reads `{arch}.{name}`; `tokens` is the vocabulary (its <end_of_turn> ends turns)."""
    layers = base.num_hidden_layers
    window = key("attention.sliding_window", 4096 if arch == "gemma2" else 0)
    window = int(window or 0)
    if window > 0:
        pattern = key("attention.sliding_window_pattern", _DEFAULT_PERIOD[arch])
        if isinstance(pattern, (list, tuple)):
            if len(pattern) < layers:
                raise ValueError(f"{arch}.attention.sliding_window_pattern has {len(pattern)} "
                                 f"flags for {layers} layers")
            layer_types = tuple(SLIDING if flag else FULL for flag in pattern[:layers])
        else:
            layer_types = layer_types_from_period(int(pattern), layers)
    else:
        layer_types = (FULL,) * layers
    if arch == "gemma2":
        local_theta = float(key("rope.freq_base_swa", base.rope_theta))
        attn_cap = float(key("attn_logit_softcapping", 50.0)) or None
        final_cap = float(key("final_logit_softcapping", 30.0)) or None
    else:
        local_theta = float(key("rope.freq_base_swa", 10000.0))
        attn_cap = None
        final_cap = float(key("final_logit_softcapping", 0.0)) or None
    eos = base.eos_token_ids
    if tokens is not None and END_OF_TURN in tokens:
        # llama.cpp takes <end_of_turn> as the end-of-generation token of these vocabularies
        eot = tokens.index(END_OF_TURN)
        eos = eos if eot in eos else eos + (eot,)
    return attrs.evolve(
        base,
        sliding_window=window if window > 0 else None,
        layer_types=layer_types,
        rope_local_theta=local_theta,
        query_pre_attn_scalar=llama_cpp_attention_scalar(
            arch, layers, base.hidden_size, base.num_attention_heads, base.head_dim),
        attn_logit_softcapping=attn_cap,
        final_logit_softcapping=final_cap,
        tie_word_embeddings=True,
        eos_token_ids=eos,
    )


def check_writable(config: ModelConfig) -> None:
    """Refuse configs a GGUF file cannot express (llama.cpp would run another model)."""
    c = config
    expected = llama_cpp_attention_scalar(c.architecture, c.num_hidden_layers, c.hidden_size,
                                          c.num_attention_heads, c.head_dim)
    if c.query_pre_attn_scalar is not None and c.query_pre_attn_scalar != expected:
        raise ValueError(f"query_pre_attn_scalar {c.query_pre_attn_scalar} cannot be stored in GGUF "
                         f"(llama.cpp derives {expected} from the shape)")
    if not c.tie_word_embeddings:
        raise ValueError("gemma GGUF files tie the output matrix to the embedding")
    if c.architecture == "gemma3" and c.attn_logit_softcapping:
        raise ValueError("llama.cpp's gemma3 has no attention soft-capping")
    if c.architecture == "gemma2" and not (c.attn_logit_softcapping and c.final_logit_softcapping):
        raise ValueError("llama.cpp's gemma2 always soft-caps attention and logits")
    if c.rope_scaling is not None and c.rope_scaling.rope_type != "linear":
        raise ValueError(f"{c.rope_scaling.rope_type} rope scaling cannot be stored for gemma")


def write_metadata(w: Any, config: ModelConfig) -> None:
    """The gemma keys of a GGUF file (`w`: a gguf.GGUFWriter), after the llama-style ones."""
    c = config
    if c.sliding_window:
        w.add_sliding_window(c.sliding_window)
        flags = [t == SLIDING for t in c.layer_types]
        period = _DEFAULT_PERIOD[c.architecture]
        if c.layer_types != layer_types_from_period(period, c.num_hidden_layers):
            w.add_sliding_window_pattern(flags)
    default_local = c.rope_theta if c.architecture == "gemma2" else 10000.0
    if c.rope_local_theta != default_local:
        w.add_float32(f"{c.architecture}.rope.freq_base_swa", c.rope_local_theta)
    if c.attn_logit_softcapping:
        w.add_attn_logit_softcapping(c.attn_logit_softcapping)
    if c.final_logit_softcapping:
        w.add_final_logit_softcapping(c.final_logit_softcapping)
    if c.rope_scaling is not None:
        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(c.rope_scaling.factor)
