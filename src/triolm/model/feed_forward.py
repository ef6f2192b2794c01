"""The dense feed-forward of a llama-family layer, and how a branch joins the residual stream.

A layer's feed-forward is a `DenseMlp` or a `SparseMoe` (moe.py); both add their output
for the normalised hidden states `h` into the residual stream `out`, scaled by the
layer's residual multiplier (granite; 1 elsewhere), and both describe themselves to the
native decode step by plan slots (kernels/decode_plan.h)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from triolm.kernels import native
from triolm.model import linear as lin
from triolm.model.weights import native_slots


def add_projection(proj: lin.Linear, inp: torch.Tensor, out: torch.Tensor, multiplier: float) -> None:
    """out += multiplier * proj(inp); with a multiplier of 1 the projection accumulates
    into `out` itself (no temporary)."""
    if multiplier == 1.0:
        proj(inp, out=out)
    else:
        out.add_(proj(inp), alpha=multiplier)


class DenseMlp:
    """down(silu(gate(h)) * up(h)), gate|up fused into one projection."""

    def __init__(self, gate_up: lin.Linear, down: lin.Linear):
        self.gate_up = gate_up
        self.down = down
        self.width = down.in_features

    def add_into(self, h: torch.Tensor, out: torch.Tensor, multiplier: float = 1.0) -> None:
        gate_up = self.gate_up(h)
        lib = native.lib()
        if lib is not None and gate_up.dtype == torch.float32:
            act = torch.empty(h.shape[0], self.width)
            lib.tl_silu_mul(gate_up.data_ptr(), act.data_ptr(), h.shape[0], self.width)
        else:
            gate, up = gate_up.chunk(2, dim=-1)
            act = F.silu(gate) * up
        add_projection(self.down, act, out, multiplier)

    def projections(self) -> list[lin.Linear]:
        return [self.gate_up, self.down]

    def weight_kinds(self) -> list[str]:
        return [self.gate_up.kind, self.down.kind]

    @property
    def native_ready(self) -> bool:
        return all(p.native_ref() is not None for p in self.projections())

    def plan_slots(self) -> dict[str, int]:
        return {**native_slots("gate_up", self.gate_up), **native_slots("down", self.down), "moe": 0}
