"""Mistral's native checkpoint layout: interleaved rotary pairs are converted correctly.

Oracle independent of our own code: Mistral's reference rotary embedding treats rows
(2i, 2i+1) of each head as one complex number; after our permutation, the HF-style
"rotate half" rotation must give the same numbers (first half = real parts, second half
= imaginary parts)."""

import torch

from triolm.formats.mistral_native import (
    config_from_params,
    halves_to_interleaved,
    interleaved_to_halves,
    params_json,
    to_native,
)
from triolm.model.config import ModelConfig
from triolm.model.rope import RotaryEmbedding


def test_interleaved_rotary_equals_rotate_half_after_permutation():
    heads, d, dim, pos = 4, 16, 64, 37
    cfg = ModelConfig("mistral", 10, dim, 128, 1, heads, heads, d, 1024, rope_theta=10000.0)
    g = torch.Generator().manual_seed(0)
    wq_native = torch.randn(heads * d, dim, generator=g)
    x = torch.randn(1, dim, generator=g)
    # reference: complex rotation on interleaved pairs
    q = (x @ wq_native.T).view(heads, d // 2, 2)
    qc = torch.view_as_complex(q.contiguous())
    freqs = 1.0 / (10000.0 ** (torch.arange(0, d, 2).float() / d))
    ref = qc * torch.polar(torch.ones_like(freqs), pos * freqs)
    # ours: permute rows to halves, then rotate-half rope
    q_hf = (x @ interleaved_to_halves(wq_native, heads).T).view(1, heads, d)
    ours = RotaryEmbedding(cfg, 64, torch.float32).apply(q_hf, torch.tensor([pos]))[0]
    assert torch.allclose(ours[:, : d // 2], ref.real, atol=1e-4)
    assert torch.allclose(ours[:, d // 2:], ref.imag, atol=1e-4)


def test_permutations_are_inverse_and_config_round_trips():
    w = torch.randn(8 * 6, 10)
    assert torch.equal(halves_to_interleaved(interleaved_to_halves(w, 6), 6), w)
    cfg = ModelConfig("mistral", 32768, 64, 128, 2, 4, 2, 16, 4096, rms_norm_eps=1e-5,
                      rope_theta=1e6, bos_token_id=1, eos_token_ids=(2,))
    assert config_from_params(params_json(cfg), "params.json") == cfg
    tensors = {"model.layers.0.self_attn.q_proj.weight": torch.randn(64, 64),
               "model.norm.weight": torch.ones(64)}
    native = to_native(cfg, tensors)
    assert set(native) == {"layers.0.attention.wq.weight", "norm.weight"}
