"""How a llama-family model is laid out inside a GGUF file, shared by reader and writer.

Four facts live here so the two directions cannot drift apart:
- tensor names: Hugging Face names <-> llama.cpp names (`blk.N.attn_q.weight` ...);
- gemma's norm weights, stored with +1 (`norm_offset`);
- the Q/K row permutation llama.cpp applies to the `llama` architecture (its RoPE
  rotates adjacent pairs, HF's rotates halves), and its inverse;
- the llama3 rope-scaling factors llama.cpp stores as the `rope_freqs.weight` tensor.
"""

from __future__ import annotations

import math

import torch

from triolm.formats import moe_layout
from triolm.model.config import ModelConfig, RopeScaling

# Our architecture name -> GGUF `general.architecture`. Mistral is the llama graph in GGUF.
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
             "gemma2": "gemma2", "gemma3": "gemma3", "mixtral": "llama", "qwen3_moe": "qwen3moe"}
SUPPORTED_GGUF_ARCHS = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "qwen3moe")
# phi3, granite, smollm3: llama.cpp has an architecture of the same name for each
GGUF_ARCH.update(phi3="phi3", granite="granite", smollm3="smollm3")
SUPPORTED_GGUF_ARCHS += ("phi3", "granite", "smollm3")

#: Gemma's RMSNorm scales by (1 + w); llama.cpp's converter stores w + 1 for every
#: `*norm.weight` of these architectures, so its graph multiplies by the stored value.
NORM_PLUS_ONE_ARCHS = frozenset({"gemma2", "gemma3"})

# llama.cpp permutes Q/K rows only for archs whose RoPE it runs in "normal" (adjacent
# pairs) mode; qwen2/qwen3 use NEOX mode, which already matches HF's rotate-half.
PERMUTED_ARCHS = frozenset({"llama", "granite", "smollm3"})

ROPE_FREQS = "rope_freqs.weight"

_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_NAMES_BACK = {v: k for k, v in _GLOBAL_NAMES.items()}

# Gemma 2/3 have four norms per layer: HF's `post_attention_layernorm` is a norm on the
# attention output there, not the llama pre-MLP norm (which gemma calls pre_feedforward).
_GEMMA_LAYER_NAMES = {
    **_LAYER_NAMES,
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}


# Phi-3 stores q|k|v and gate|up fused, in HF files and (as attn_qkv / ffn_up) in GGUF.
PHI3_QKV = "self_attn.qkv_proj.weight"
PHI3_GATE_UP = "mlp.gate_up_proj.weight"
_PHI3_LAYER_NAMES = {
    **{k: v for k, v in _LAYER_NAMES.items() if not k.startswith(("self_attn.q_", "self_attn.k_",
                                                                   "self_attn.v_", "mlp.gate", "mlp.up"))},
    PHI3_QKV: "attn_qkv.weight",
    PHI3_GATE_UP: "ffn_up.weight",
}
#: Phi-3's longrope factors, one tensor each (llama.cpp's converter writes them so).
PHI3_ROPE_LONG = "rope_factors_long.weight"
PHI3_ROPE_SHORT = "rope_factors_short.weight"


def _layer_names(architecture: str) -> dict[str, str]:
    if architecture == "phi3":
        return _PHI3_LAYER_NAMES
    return _GEMMA_LAYER_NAMES if architecture in NORM_PLUS_ONE_ARCHS else _LAYER_NAMES


def gguf_name(hf_name: str, architecture: str = "llama") -> str:
    """`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight` (`architecture`
    is ours, e.g. "gemma3": a few names depend on it)."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    names = _layer_names(architecture)
    if hf_name.startswith("model.layers."):
        index, _, rest = hf_name[len("model.layers."):].partition(".")
        if index.isdigit() and rest in names:
            return f"blk.{index}.{names[rest]}"
    router = moe_layout.gguf_router_name(hf_name)
    if router is not None:
        return router
    raise KeyError(f"no GGUF name for tensor {hf_name!r}")


def hf_name(name: str, architecture: str = "llama") -> str | None:
    """The inverse of `gguf_name`; None for GGUF tensors without an HF counterpart."""
    if name in _GLOBAL_NAMES_BACK:
        return _GLOBAL_NAMES_BACK[name]
    back = {v: k for k, v in _layer_names(architecture).items()}
    if name.startswith("blk."):
        index, _, rest = name[len("blk."):].partition(".")
        if index.isdigit() and rest in back:
            return f"model.layers.{index}.{back[rest]}"
    return None


def norm_offset(config: ModelConfig, hf: str) -> float:
    """What llama.cpp's converter adds to this tensor (HF value + offset = GGUF value)."""
    if config.architecture in NORM_PLUS_ONE_ARCHS and hf.endswith("norm.weight"):
        return 1.0
    return 0.0


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the model needs, by HF name, with its HF (out, in) shape."""
    c = config
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (c.vocab_size, c.hidden_size),
        "model.norm.weight": (c.hidden_size,),
    }
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, c.hidden_size)
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (c.hidden_size,)
        shapes[p + "self_attn.q_proj.weight"] = (q, c.hidden_size)
        shapes[p + "self_attn.k_proj.weight"] = (kv, c.hidden_size)
        shapes[p + "self_attn.v_proj.weight"] = (kv, c.hidden_size)
        shapes[p + "self_attn.o_proj.weight"] = (c.hidden_size, q)
        if c.attention_bias:
            shapes[p + "self_attn.q_proj.bias"] = (q,)
            shapes[p + "self_attn.k_proj.bias"] = (kv,)
            shapes[p + "self_attn.v_proj.bias"] = (kv,)
        if c.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (c.head_dim,)
            shapes[p + "self_attn.k_norm.weight"] = (c.head_dim,)
        shapes[p + "post_attention_layernorm.weight"] = (c.hidden_size,)
        if c.architecture in NORM_PLUS_ONE_ARCHS:
            shapes[p + "pre_feedforward_layernorm.weight"] = (c.hidden_size,)
            shapes[p + "post_feedforward_layernorm.weight"] = (c.hidden_size,)
        if moe_layout.is_sparse(c, i):
            shapes.update(moe_layout.layer_shapes(c, i))
        else:
            shapes[p + "mlp.gate_proj.weight"] = (c.intermediate_size, c.hidden_size)
            shapes[p + "mlp.up_proj.weight"] = (c.intermediate_size, c.hidden_size)
            shapes[p + "mlp.down_proj.weight"] = (c.hidden_size, c.intermediate_size)
        if c.architecture == "phi3":
            _fuse_phi3_shapes(shapes, p, q + 2 * kv, c)
    return shapes


def _fuse_phi3_shapes(shapes: dict[str, tuple[int, ...]], p: str, qkv: int, c: ModelConfig) -> None:
    for part in ("q", "k", "v"):
        del shapes[p + f"self_attn.{part}_proj.weight"]
    del shapes[p + "mlp.gate_proj.weight"], shapes[p + "mlp.up_proj.weight"]
    shapes[p + PHI3_QKV] = (qkv, c.hidden_size)
    shapes[p + PHI3_GATE_UP] = (2 * c.intermediate_size, c.hidden_size)


def permuted_heads(config: ModelConfig, hf: str) -> int | None:
    """Heads to (un)permute this tensor's rows by, or None when llama.cpp leaves it alone."""
    if GGUF_ARCH[config.architecture] not in PERMUTED_ARCHS:
        return None
    if hf.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
        return config.num_attention_heads
    if hf.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
        return config.num_key_value_heads
    return None


def permute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF -> GGUF: within each head, interleave the two rotary halves row by row
    (rows [0..d/2) and [d/2..d) become pairs (0, d/2), (1, d/2+1), ...), as llama.cpp's
    converter does. Works on any tensor whose first dim is rows (also raw quant blocks)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """GGUF -> HF: the exact inverse of `permute_rows`."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def llama3_rope_factors(head_dim: int, theta: float, scaling: RopeScaling) -> torch.Tensor:
    """Per-frequency divisors (float32, head_dim/2) as llama.cpp stores in `rope_freqs.weight`:
    1 for short wavelengths, `factor` for long ones, a smooth blend in between."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    old = scaling.original_max_position_embeddings
    low_wavelen = old / scaling.low_freq_factor
    high_wavelen = old / scaling.high_freq_factor
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(scaling.factor)
        else:
            smooth = (old / wavelen - scaling.low_freq_factor) / (
                scaling.high_freq_factor - scaling.low_freq_factor)
            out.append(1.0 / ((1 - smooth) / scaling.factor + smooth))
    return torch.tensor(out, dtype=torch.float32)


def rope_scaling_from_factors(factors: torch.Tensor, head_dim: int, theta: float) -> RopeScaling | None:
    """Recover llama3 parameters that reproduce stored `rope_freqs` factors.

    Only `factor` and two combinations of the other three parameters are identifiable
    from the factors, so we fix low_freq_factor=1 (and high_freq_factor=4 when the
    blended band has fewer than 2 points): the engine computes the same frequencies
    from the parameters returned. Returns None when the factors are all 1 (no scaling) and raises
    ValueError when no llama3 parameters reproduce them."""
    f = factors.double()
    if bool(torch.all((f - 1).abs() < 1e-6)):
        return None
    factor = float(f.max())
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    wavelen = 2 * math.pi / freqs
    candidates: list[RopeScaling] = []
    band = ((f - 1).abs() > 1e-6) & ((f - factor).abs() > 1e-6 * factor)
    if int(band.sum()) >= 2:
        # smooth = a / wavelen - b is linear in 1/wavelen: fit a, b.
        inv = 1.0 / wavelen[band]
        smooth = (1.0 / f[band] - 1.0 / factor) / (1.0 - 1.0 / factor)
        design = torch.stack([inv, -torch.ones_like(inv)], dim=1)
        a, b = torch.linalg.lstsq(design, smooth.unsqueeze(1)).solution.squeeze(1).tolist()
        if b > 0:
            high = 1.0 + 1.0 / b
            old = a / b
            candidates.append(RopeScaling("llama3", factor, 1.0, _tidy(high), int(round(old))))
    elif int(band.sum()) == 1:
        # One point: assume the usual low/high factors (1, 4) and solve for the context.
        smooth_at_point = float((1.0 / f[band] - 1.0 / factor) / (1.0 - 1.0 / factor))
        old = float(wavelen[band]) * (3.0 * smooth_at_point + 1.0)
        candidates.append(RopeScaling("llama3", factor, 1.0, 4.0, int(round(old))))
    for old in (8192, 4096, 2048, 16384, 32768, 131072):
        candidates.append(RopeScaling("llama3", factor, 1.0, 4.0, old))
    if int(band.sum()) == 0:
        # No blended band: any context between the two groups' wavelengths reproduces it.
        short = wavelen[(f - 1).abs() <= 1e-6]
        low = 4.0 * float(short.max()) if len(short) else 1.0
        candidates.append(RopeScaling("llama3", factor, 1.0, 4.0, int(math.floor(low)) + 1))
    for cand in candidates:
        again = llama3_rope_factors(head_dim, theta, cand).double()
        if torch.allclose(again, f, rtol=1e-4, atol=1e-5):
            return cand
    raise ValueError("rope_freqs factors do not follow llama3 rope scaling")


def _tidy(x: float) -> float:
    """Snap a fitted value to a short decimal when it is one (4.0000001 -> 4.0)."""
    r = round(x, 3)
    return r if abs(r - x) < 1e-4 * max(1.0, abs(x)) else x
