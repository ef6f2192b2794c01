"""Rotary position embeddings (the HF "rotate half" convention), with llama3 or linear scaling."""

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


class RotaryEmbedding:
    """Precomputed cos/sin tables indexed by absolute position."""

    def __init__(self, config: ModelConfig, max_positions: int, dtype: torch.dtype):
        inv_freq = inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
        t = torch.arange(max_positions, dtype=torch.float64)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos = emb.cos().to(dtype)
        self.sin = emb.sin().to(dtype)
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
