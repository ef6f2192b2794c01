"""The routed feed-forward of mixture-of-experts decoders (qwen3_moe, mixtral).

A sparse layer is llama's decoder layer whose MLP is a router (one linear to
`num_experts` logits) and experts that are llama MLPs of width `moe_intermediate_size`.
A token runs the top `num_experts_per_tok` experts by softmax probability, weighted by
those probabilities (renormalised to sum to 1 when `norm_topk_prob`; mixtral always),
as transformers' Qwen3MoeSparseMoeBlock / MixtralSparseMoeBlock compute it. qwen3_moe may
keep dense layers (`dense_mlp_layers`); attention is llama's with qwen3's q/k norms.

Tokens are grouped by expert, so an expert's weights are read once per call for every
token routed to it (`tl_moe_ffn`, kernels/moe_kernels.cpp). Experts keep the
representation the file gives them (`make_linear`: float32, float16, GGUF blocks as
views of their slice of the stacked tensor). A decode step is llama's one native call
for all layers (`tl_decode_step` runs `tl_moe_ffn` where a layer has a table); prefill
makes one native MoE call per layer. So the Python cost of a step does not depend on
the expert count. Without the native library (or with float16/bfloat16 compute) the
torch path loops over the experts hit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from triolm.formats import moe_layout
from triolm.kernels import native
from triolm.model import linear as lin
from triolm.model.config import ModelConfig
from triolm.model.weights import gated_mlp, matrix, native_slots


class SparseMoe:
    """The router and experts of one layer; `add_into(h, out)` adds the MoE output of
    the normalised hidden states `h` [T, hidden] to `out` [T, hidden]."""

    def __init__(self, config: ModelConfig, router: lin.Linear,
                 experts: list[tuple[lin.Linear, lin.Linear]]):
        self.router = router
        self.experts = experts  # per expert: (gate|up stacked, down)
        self.top_k = config.num_experts_per_tok
        self.renormalize = config.norm_topk_prob
        self.width = config.moe_intermediate_size
        self.table: torch.Tensor | None = None  # tl_moe_ffn's plan, when the kernels read every weight
        if all(p.native_ref() is not None for p in self.projections()):
            header = {"experts": len(experts), "top_k": self.top_k, "renormalize": int(self.renormalize),
                      "hidden": config.hidden_size, "width": self.width, **native_slots("router", router)}
            rows = [{**native_slots("gate_up", gate_up), **native_slots("down", down)} for gate_up, down in experts]
            self.table = native.MOE_PLAN.pack(header, rows)

    def add_into(self, h: torch.Tensor, out: torch.Tensor, multiplier: float = 1.0) -> None:
        if multiplier != 1.0:
            branch = torch.zeros_like(out)
            self.add_into(h, branch)
            out.add_(branch, alpha=multiplier)
            return
        lib = native.lib()
        if lib is not None and self.table is not None and h.dtype == torch.float32 and out.is_contiguous():
            if h.stride(-1) != 1:
                h = h.contiguous()
            lib.tl_moe_ffn(self.table.data_ptr(), h.data_ptr(), h.stride(0), out.data_ptr(), out.stride(0),
                           h.shape[0], native.num_threads())
            return
        self._torch_add_into(h, out)

    def _torch_add_into(self, h: torch.Tensor, out: torch.Tensor) -> None:
        """The same computation in torch, one iteration per expert hit."""
        probs = torch.softmax(self.router(h).float(), dim=-1)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(h.dtype)
        acc = torch.zeros_like(h)
        for e in torch.unique(ids).tolist():
            tokens, slot = torch.where(ids == e)
            gate_up, down = self.experts[e]
            gate, up = gate_up(h[tokens]).chunk(2, dim=-1)
            y = down(torch.nn.functional.silu(gate) * up)
            acc.index_add_(0, tokens, y * weights[tokens, slot].unsqueeze(-1))
        out += acc

    def projections(self) -> list[lin.Linear]:
        return [self.router] + [p for pair in self.experts for p in pair]

    def weight_kinds(self) -> list[str]:
        return ["router:" + self.router.kind] + ["expert:" + p.kind for pair in self.experts for p in pair]

    @property
    def native_ready(self) -> bool:
        return self.table is not None

    def plan_slots(self) -> dict[str, int]:
        assert self.table is not None, "native_ready is checked before a plan is made"
        unused = {f"{name}_{slot}": 0 for name in ("gate_up", "down") for slot in ("kind", "w", "d")}
        return {**unused, "moe": self.table.data_ptr()}


def sparse_moe(config: ModelConfig, weights: Mapping[str, Any], layer: int, dtype: torch.dtype) -> SparseMoe:
    """Layer `layer`'s router and experts, each expert's gate|up fused."""
    names = zip(*(moe_layout.expert_names(config, layer, proj) for proj in range(3)), strict=True)
    experts = [gated_mlp(config, weights, gate_up_down, config.moe_intermediate_size, dtype)
               for gate_up_down in names]
    router = matrix(weights, moe_layout.router_name(config, layer), (config.num_experts, config.hidden_size), dtype)
    return SparseMoe(config, router, experts)
