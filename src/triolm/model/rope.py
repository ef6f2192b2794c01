"""Rotary position embeddings (the HF "rotate half" convention), with llama3, linear or
longrope scaling and partial rotation.

Partial rotation (Phi-4-mini rotates the first `rotary_dim` of each head's dims) is
expressed in the full-width tables: the dims a head does not rotate get frequency 0
(cos 1, sin 0), and `partial_rotary_order` says how to reorder q/k rows at load so HF's
pairs (i, i + rotary_dim/2) become the tables' pairs (j, j + head_dim/2). Attention
scores do not change under a permutation applied to both q and k, so every attention
path (torch and native) runs partial rotation unchanged.
"""

from __future__ import annotations

import math

import torch

from triolm.model.config import ModelConfig, RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """Per-pair inverse frequencies in float64 (precision matters past 8k positions)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling is not None and scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    if scaling is None or scaling.rope_type != "llama3":
        return inv_freq
    # Llama 3.1: long wavelengths are slowed down by `factor`, short ones kept, the band
    # in between blended smoothly.
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    out = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    in_band = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    return torch.where(in_band, blended, out)


def longrope_inverse_frequencies(rotary_dim: int, theta: float, scaling: RopeScaling,
                                 max_positions: int) -> torch.Tensor:
    """Phi-3's longrope: the base frequencies divided per pair by `long_factor` when the
    model is built to reach positions beyond original_max_position_embeddings (as
    llama.cpp picks by its context size, and transformers for a sequence that long),
    else by `short_factor`. Float32 like transformers."""
    long = max_positions > scaling.original_max_position_embeddings
    factors = torch.tensor(scaling.long_factor if long else scaling.short_factor, dtype=torch.float32)
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    return (1.0 / (factors * theta ** exponent)).double()


def partial_rotary_order(head_dim: int, rotary_dim: int) -> torch.Tensor:
    """Row order within one head taking HF's partial-rotary layout (rotated dims first,
    paired i <-> i + rotary_dim/2) to the full-width tables' (pairs j <-> j + head_dim/2,
    unrotated dims in the slots whose frequency is 0): new row r holds old row order[r]."""
    half, rot_half = head_dim // 2, rotary_dim // 2
    passing = list(range(rotary_dim, head_dim))
    first = list(range(rot_half)) + passing[:half - rot_half]
    second = list(range(rot_half, rotary_dim)) + passing[half - rot_half:]
    return torch.tensor(first + second)


class RotaryEmbedding:
    """Precomputed cos/sin tables indexed by absolute position."""

    def __init__(self, config: ModelConfig, max_positions: int, dtype: torch.dtype):
        scaling, rotary_dim = config.rope_scaling, config.rotary_dim
        scale = 1.0
        if scaling is not None and scaling.rope_type == "longrope":
            inv_freq = longrope_inverse_frequencies(rotary_dim, config.rope_theta, scaling, max_positions)
            scale = scaling.attention_factor
        else:
            inv_freq = inverse_frequencies(rotary_dim, config.rope_theta, scaling)
        rotated = torch.ones(config.head_dim // 2, dtype=torch.bool)
        if rotary_dim < config.head_dim:  # the unrotated dims: frequency 0, never scaled
            inv_freq = torch.cat([inv_freq, torch.zeros((config.head_dim - rotary_dim) // 2, dtype=inv_freq.dtype)])
            rotated[rotary_dim // 2:] = False
        t = torch.arange(max_positions, dtype=torch.float64)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        scales = torch.where(torch.cat([rotated, rotated]), scale, 1.0).double()
        self.cos = (emb.cos() * scales).to(dtype)
        self.sin = (emb.sin() * scales).to(dtype)
        self.half = config.head_dim // 2

    def ensure(self, max_positions: int) -> None:
        if max_positions > self.cos.shape[0]:
            raise ValueError(f"position {max_positions} beyond the rotary table {self.cos.shape[0]}")

    def apply(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: [T, heads, head_dim]; positions: [T]."""
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        x1, x2 = x[..., : self.half], x[..., self.half :]
        rotated = torch.cat([-x2, x1], dim=-1)
        return x * cos + rotated * sin
