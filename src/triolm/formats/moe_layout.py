"""Where a mixture-of-experts layer's tensors live, in Hugging Face files and in GGUF.

Hugging Face checkpoints hold one 2-D tensor per expert and projection
(`mlp.experts.3.gate_proj.weight` in qwen3_moe, `block_sparse_moe.experts.3.w1.weight`
in mixtral, whose w1/w3/w2 are gate/up/down); llama.cpp's converter stacks the experts
of a layer into one 3-D tensor per projection (`blk.N.ffn_gate_exps.weight`, numpy shape
[experts, rows, cols]) and names the router `blk.N.ffn_gate_inp.weight`. Inside triolm
every expert keeps its HF name and its own 2-D tensor, which for GGUF files is a view of
its slice of the stacked tensor (no copy).
"""

from __future__ import annotations

from triolm.model.config import MOE_ARCHITECTURES, ModelConfig

#: Per architecture: the router's name and the (gate, up, down) expert name patterns,
#: after `model.layers.N.`.
_ROUTER = {"qwen3_moe": "mlp.gate.weight", "mixtral": "block_sparse_moe.gate.weight"}
_EXPERTS = {
    "qwen3_moe": ("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight",
                  "mlp.experts.{e}.down_proj.weight"),
    "mixtral": ("block_sparse_moe.experts.{e}.w1.weight", "block_sparse_moe.experts.{e}.w3.weight",
                "block_sparse_moe.experts.{e}.w2.weight"),
}
GGUF_ROUTER = "ffn_gate_inp.weight"
#: The stacked GGUF tensors of (gate, up, down), after `blk.N.`.
GGUF_STACKED = ("ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight")


def is_sparse(config: ModelConfig, layer: int) -> bool:
    """Whether this layer routes to experts (else it has the llama MLP)."""
    return config.architecture in MOE_ARCHITECTURES and layer not in config.dense_mlp_layers


def router_name(config: ModelConfig, layer: int) -> str:
    return f"model.layers.{layer}.{_ROUTER[config.architecture]}"


def expert_names(config: ModelConfig, layer: int, proj: int) -> list[str]:
    """HF names of every expert's `proj` (0 gate, 1 up, 2 down) in this layer, by expert."""
    pattern = _EXPERTS[config.architecture][proj]
    return [f"model.layers.{layer}.{pattern.format(e=e)}" for e in range(config.num_experts)]


def expert_shape(config: ModelConfig, proj: int) -> tuple[int, int]:
    """HF (out, in) shape of one expert's projection."""
    hid, ff = config.hidden_size, config.moe_intermediate_size
    return (hid, ff) if proj == 2 else (ff, hid)


def layer_shapes(config: ModelConfig, layer: int) -> dict[str, tuple[int, ...]]:
    """The router and every expert tensor of a sparse layer, by HF name."""
    shapes: dict[str, tuple[int, ...]] = {router_name(config, layer): (config.num_experts, config.hidden_size)}
    for proj in range(3):
        for name in expert_names(config, layer, proj):
            shapes[name] = expert_shape(config, proj)
    return shapes


def stacked_gguf_tensors(config: ModelConfig) -> dict[str, tuple[list[str], tuple[int, int, int]]]:
    """GGUF name of each stacked tensor -> (the HF names of its experts in order, its
    [experts, rows, cols] shape)."""
    out = {}
    for layer in range(config.num_hidden_layers):
        if not is_sparse(config, layer):
            continue
        for proj, stacked in enumerate(GGUF_STACKED):
            out[f"blk.{layer}.{stacked}"] = (expert_names(config, layer, proj),
                                             (config.num_experts, *expert_shape(config, proj)))
    return out


def gguf_router_name(hf_name: str) -> str | None:
    """`model.layers.N.mlp.gate.weight` (or mixtral's) -> `blk.N.ffn_gate_inp.weight`."""
    if not hf_name.startswith("model.layers."):
        return None
    index, _, rest = hf_name[len("model.layers."):].partition(".")
    if index.isdigit() and rest in _ROUTER.values():
        return f"blk.{index}.{GGUF_ROUTER}"
    return None
