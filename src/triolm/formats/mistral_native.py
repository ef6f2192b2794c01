"""Mistral's native layout: `params.json` + `consolidated.safetensors` (+ a mistral-common
tokenizer file). Names and the rotary layout differ from Hugging Face's: native q/k rows
interleave the two halves of each rotary pair, HF keeps them in two blocks, so q/k are
permuted on load (and back by `to_native`, used to write test models)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from triolm.errors import ModelLoadError
from triolm.formats.safetensors_loader import read_safetensors
from triolm.model.config import ModelConfig

_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
}
_TOP_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}


def interleaved_to_halves(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head: (pair0.a, pair0.b, pair1.a, …) -> (all a …, all b …)."""
    rows, cols = w.shape
    d = rows // heads
    return w.view(heads, d // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def halves_to_interleaved(w: torch.Tensor, heads: int) -> torch.Tensor:
    rows, cols = w.shape
    d = rows // heads
    return w.view(heads, 2, d // 2, cols).transpose(1, 2).reshape(rows, cols)


def config_from_params(params: dict, source: str) -> ModelConfig:
    try:
        heads = int(params["n_heads"])
        dim = int(params["dim"])
        return ModelConfig(
            architecture="mistral",
            vocab_size=int(params["vocab_size"]),
            hidden_size=dim,
            intermediate_size=int(params["hidden_dim"]),
            num_hidden_layers=int(params["n_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(params.get("n_kv_heads", heads)),
            head_dim=int(params.get("head_dim") or dim // heads),
            max_position_embeddings=int(params.get("max_seq_len") or params.get("max_position_embeddings") or 32768),
            rms_norm_eps=float(params.get("norm_eps", 1e-5)),
            rope_theta=float(params.get("rope_theta", 1000000.0)),
            tie_word_embeddings=bool(params.get("tied_embeddings", False)),
            bos_token_id=1,
            eos_token_ids=(2,),
        )
    except KeyError as exc:
        raise ModelLoadError(f"{source}: missing key {exc.args[0]!r}") from None


def read_mistral_native(model_dir: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    model_dir = Path(model_dir)
    path = model_dir / "params.json"
    try:
        params = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: invalid JSON: {exc}") from None
    config = config_from_params(params, str(path))
    native = read_safetensors(model_dir)
    tensors: dict[str, torch.Tensor] = {}
    for name, t in native.items():
        if name in _TOP_NAMES:
            tensors[_TOP_NAMES[name]] = t
            continue
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[0] == "layers" and parts[2] in _LAYER_NAMES:
            hf = _LAYER_NAMES[parts[2]]
            if hf == "self_attn.q_proj.weight":
                t = interleaved_to_halves(t, config.num_attention_heads)
            elif hf == "self_attn.k_proj.weight":
                t = interleaved_to_halves(t, config.num_key_value_heads)
            tensors[f"model.layers.{parts[1]}.{hf}"] = t
    return config, tensors


def to_native(config: ModelConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF-named tensors -> native names and rotary layout (the inverse of the loader)."""
    top = {v: k for k, v in _TOP_NAMES.items()}
    layer = {v: k for k, v in _LAYER_NAMES.items()}
    out = {}
    for name, t in tensors.items():
        if name in top:
            out[top[name]] = t
            continue
        _, _, index, rest = name.split(".", 3)
        if rest == "self_attn.q_proj.weight":
            t = halves_to_interleaved(t, config.num_attention_heads)
        elif rest == "self_attn.k_proj.weight":
            t = halves_to_interleaved(t, config.num_key_value_heads)
        out[f"layers.{index}.{layer[rest]}"] = t.contiguous()
    return out


def params_json(config: ModelConfig) -> dict:
    return {"dim": config.hidden_size, "n_layers": config.num_hidden_layers,
            "head_dim": config.head_dim, "hidden_dim": config.intermediate_size,
            "n_heads": config.num_attention_heads, "n_kv_heads": config.num_key_value_heads,
            "norm_eps": config.rms_norm_eps, "vocab_size": config.vocab_size,
            "rope_theta": config.rope_theta, "max_seq_len": config.max_position_embeddings,
            "tied_embeddings": config.tie_word_embeddings}
