"""Mixture-of-experts hyper-parameters in Hugging Face `config.json`, as transformers reads them.

- qwen3_moe: `num_experts`, `num_experts_per_tok`, `moe_intermediate_size` (the experts'
  width; `intermediate_size` is the width of any dense layer), `norm_topk_prob`
  (transformers' default: False), and the layers that keep a dense MLP: those in
  `mlp_only_layers`, and all but every `decoder_sparse_step`-th; per-head q/k norms as
  in qwen3. A sliding window counts only with `use_sliding_window`.
- mixtral: `num_local_experts`, `num_experts_per_tok`, experts `intermediate_size` wide,
  top-k probabilities always renormalised, every layer sparse.

Shared experts (qwen2_moe's `shared_expert_intermediate_size`) and sliding-window
attention are not part of these models as served here and are refused by name.
"""

from __future__ import annotations

import attrs

from triolm.errors import ModelLoadError
from triolm.model.config import ModelConfig


def from_hf_dict(cfg: dict, base: ModelConfig) -> ModelConfig:
    """Complete the llama-style `base` (attention, RoPE, norms) with the MoE fields."""
    arch = base.architecture
    if cfg.get("shared_expert_intermediate_size"):
        raise ModelLoadError(f"{arch}: shared experts (shared_expert_intermediate_size) are not supported")
    window = cfg.get("sliding_window")
    if arch == "qwen3_moe" and not cfg.get("use_sliding_window", False):
        window = None
    if window is not None and int(window) < base.max_position_embeddings:
        raise ModelLoadError(f"{arch}: sliding-window attention (sliding_window {window}) is not supported")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ModelLoadError(f"{arch}: unsupported hidden_act {act!r} (supported: silu)")
    layers = base.num_hidden_layers
    if arch == "mixtral":
        experts = int(cfg["num_local_experts"])
        width = base.intermediate_size
        norm_topk = True
        dense: tuple[int, ...] = ()
    else:
        experts = int(cfg.get("num_experts", cfg.get("num_local_experts", 0)))
        width = int(cfg["moe_intermediate_size"])
        norm_topk = bool(cfg.get("norm_topk_prob", False))
        step = int(cfg.get("decoder_sparse_step", 1))
        if step < 1:
            raise ModelLoadError(f"{arch}: decoder_sparse_step must be at least 1, got {step}")
        only_mlp = {int(i) for i in cfg.get("mlp_only_layers") or ()}
        dense = tuple(i for i in range(layers)
                      if i in only_mlp or experts == 0 or (i + 1) % step != 0)
    return attrs.evolve(
        base,
        num_experts=experts,
        num_experts_per_tok=int(cfg["num_experts_per_tok"]),
        moe_intermediate_size=width,
        norm_topk_prob=norm_topk,
        dense_mlp_layers=dense,
        qk_norm=arch == "qwen3_moe",
    )


def hf_config_keys(config: ModelConfig) -> dict:
    """The config.json keys that describe `config`'s experts (the inverse of `from_hf_dict`)."""
    c = config
    if c.architecture == "mixtral":
        return {"num_local_experts": c.num_experts, "num_experts_per_tok": c.num_experts_per_tok,
                "sliding_window": None, "router_jitter_noise": 0.0}
    return {"num_experts": c.num_experts, "num_experts_per_tok": c.num_experts_per_tok,
            "moe_intermediate_size": c.moe_intermediate_size, "norm_topk_prob": c.norm_topk_prob,
            "decoder_sparse_step": 1, "mlp_only_layers": list(c.dense_mlp_layers),
            "use_sliding_window": False, "sliding_window": None, "attention_bias": c.attention_bias}
