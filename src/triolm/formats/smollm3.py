"""SmolLM3's config: the llama decoder (model/llama.py) with RoPE left out on some
layers (`no_rope_layers`, `ModelConfig.rope_layers`).

config.json's `no_rope_layers` holds 1 for a layer that applies RoPE and 0 for one
that does not (by default every fourth: layer i skips RoPE when (i + 1) % 4 == 0); its
keys then carry no position at all. GGUF (llama.cpp: arch `smollm3`, llama's tensor
names and Q/K permutation) has no key for it: llama.cpp fixes the every-fourth pattern
(`n_no_rope_layer_step = 4` in `src/models/smollm3.cpp`), so we read that pattern from
GGUF and refuse to write any other.
"""

from __future__ import annotations

#: llama.cpp's fixed period of RoPE-less layers.
LLAMA_CPP_NO_ROPE_STEP = 4


def rope_layers_every(step: int, layers: int) -> tuple[bool, ...]:
    """True for the layers that apply RoPE: all but every `step`-th."""
    return tuple((i + 1) % step != 0 for i in range(layers))


def rope_layers_from_hf(cfg: dict, layers: int) -> tuple[bool, ...]:
    flags = cfg.get("no_rope_layers")
    if flags is None:
        return rope_layers_every(int(cfg.get("no_rope_layer_interval", 4)), layers)
    if len(flags) != layers or any(f not in (0, 1, True, False) for f in flags):
        raise ValueError(f"no_rope_layers must hold 0 or 1 for each of the {layers} layers")
    return tuple(bool(f) for f in flags)


def check_writable(rope_layers: tuple[bool, ...], layers: int) -> None:
    if rope_layers and rope_layers != rope_layers_every(LLAMA_CPP_NO_ROPE_STEP, layers):
        raise ValueError("llama.cpp's smollm3 leaves RoPE out on every fourth layer only; "
                         "other no_rope_layers cannot be stored in GGUF")
