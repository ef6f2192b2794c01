"""SmolLM3: the llama decoder with RoPE left out on some layers (`no_rope_layers`).

config.json's `no_rope_layers` holds 1 for a layer that applies RoPE and 0 for one
that does not (by default every fourth: layer i skips RoPE when (i + 1) % 4 == 0); its
keys then carry no position at all. GGUF (llama.cpp: arch `smollm3`, llama's tensor
names and Q/K permutation) has no key for it: llama.cpp fixes the every-fourth pattern
(`n_no_rope_layer_step = 4` in `src/models/smollm3.cpp`), so we read that pattern from
GGUF and refuse to write any other.

Decode runs the per-layer torch path: the native decode step rotates every layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from triolm.model.attention import AttentionMetadata
from triolm.model.llama import CacheState, LlamaModel

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


class NoRope:
    """The rotation of a layer without RoPE: none."""

    @staticmethod
    def apply(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x


class SmolLM3Model(LlamaModel):
    """`LlamaModel` whose RoPE-less layers leave q and k as they are."""

    @property
    def native_decode(self) -> bool:
        return False

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                meta: AttentionMetadata, state: CacheState | None = None,
                before_layers: Callable[[], None] | None = None) -> torch.Tensor:
        x = self.embed.rows(input_ids).to(self.dtype)
        if state is None or state.kv_cache is not kv_cache:
            state = CacheState(self, kv_cache)
        if before_layers is not None:
            before_layers()
        flags = self.config.rope_layers or (True,) * len(self.layers)
        for layer, (k, v), rotate in zip(self.layers, state.layers, flags, strict=False):
            layer.forward(x, positions, self.rope if rotate else NoRope, k, v, meta)
        return x
