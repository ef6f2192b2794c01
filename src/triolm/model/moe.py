"""Mixture-of-experts decoders (qwen3_moe, mixtral): llama's attention, a routed MLP.

Each sparse layer's MLP is a router (one linear to `num_experts` logits) and experts
that are llama MLPs of width `moe_intermediate_size`. A token runs the top
`num_experts_per_tok` experts by softmax probability, weighted by those probabilities
(renormalised to sum to 1 when `norm_topk_prob`; mixtral always), as transformers'
Qwen3MoeSparseMoeBlock / MixtralSparseMoeBlock compute it. qwen3_moe may keep dense
layers (`dense_mlp_layers`); attention is llama's with qwen3's per-head q/k norms.

Tokens are grouped by expert, so an expert's weights are read once per call for every
token routed to it (`tl_moe_ffn`, kernels/moe_kernels.cpp). Experts keep the
representation the file gives them (`make_linear`: float32, float16, GGUF blocks as
views of their slice of the stacked tensor). A decode step is one native call for all
layers (`tl_moe_decode_step`); prefill makes one native MoE call per layer. So the
Python cost of a step does not depend on the expert count. Without the native
library (or with float16/bfloat16 compute) the torch path loops over the experts hit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from triolm.formats import moe_layout
from triolm.kernels import native
from triolm.model import linear as lin
from triolm.model.attention import AttentionMetadata
from triolm.model.config import ModelConfig
from triolm.model.llama import CacheState, DecoderLayer, _take, _vector, make_linear, rms_norm
from triolm.model.rope import RotaryEmbedding


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
        refs = [router.native_ref()] + [r for gu, down in experts for r in (gu.native_ref(), down.native_ref())]
        self.table: torch.Tensor | None = None
        if all(r is not None for r in refs):
            flat = [len(experts), self.top_k, int(self.renormalize), config.hidden_size, self.width, *refs[0]]
            for r in refs[1:]:
                flat += list(r)
            self.table = torch.tensor(flat, dtype=torch.int64)

    def add_into(self, h: torch.Tensor, out: torch.Tensor) -> None:
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


class MoeDecoderLayer(DecoderLayer):
    """Llama's decoder layer with the sparse MLP where the layer has one."""

    def __init__(self, config: ModelConfig, w: dict[str, Any], moe: SparseMoe | None):
        super().__init__(config, w)
        self.moe = moe

    def _mlp(self, x: torch.Tensor) -> None:
        if self.moe is None:
            super()._mlp(x)
            return
        self.moe.add_into(rms_norm(x, self.post_attn_norm, self.config.rms_norm_eps), x)

    def projections(self) -> list[lin.Linear]:
        dense = [self.gate_up, self.down] if self.moe is None else self.moe.projections()
        return [self.qkv, self.o_proj, *dense]


class MoeModel:
    """Forward pass of a qwen3_moe / mixtral causal LM over a paged KV cache; the
    interface of `LlamaModel` (weights by HF name, float or quantized, see `make_linear`)."""

    def __init__(self, config: ModelConfig, weights: Mapping[str, Any],
                 dtype: torch.dtype = torch.float32, max_positions: int | None = None):
        self.config = config
        self.dtype = dtype
        w = moe_weights(config, weights, dtype)
        self.embed: lin.Linear = w["embed"]
        self.lm_head: lin.Linear = w["lm_head"]
        self.norm = w["norm"]
        self.layers = [MoeDecoderLayer(config, layer, moe) for layer, moe in zip(w["layers"], w["moe"], strict=True)]
        self.rope = RotaryEmbedding(config, max_positions or config.max_position_embeddings, dtype)
        self._native_ok: bool | None = None
        if dtype == torch.float32:
            native.lib()  # build/load the kernels at start-up, not in the first request

    @property
    def native_decode(self) -> bool:
        """Decode steps run as one native call (float32, library built, every weight
        in a format the kernels read)."""
        if self._native_ok is None:
            ok = self.dtype == torch.float32
            for layer in self.layers:
                if layer.moe is not None:
                    ok = ok and layer.moe.table is not None
                    parts = [layer.qkv, layer.o_proj]
                else:
                    parts = [layer.qkv, layer.o_proj, layer.gate_up, layer.down]
                ok = ok and all(p.native_ref() is not None for p in parts)
            self._native_ok = ok
        return self._native_ok and native.available()

    @property
    def weights_bytes(self) -> int:
        """Bytes of weights as held in memory (tied embeddings counted once)."""
        parts = {id(p): p for p in [self.embed, self.lm_head]
                 + [p for layer in self.layers for p in layer.projections()]}
        return sum(p.nbytes for p in parts.values())

    def weight_kinds(self) -> dict[str, int]:
        """How many matrices use each representation (routers and experts counted apart)."""
        kinds: dict[str, int] = {}

        def count(key: str) -> None:
            kinds[key] = kinds.get(key, 0) + 1

        for layer in self.layers:
            for p in (layer.qkv, layer.o_proj):
                count(p.kind)
            if layer.moe is None:
                count(layer.gate_up.kind)
                count(layer.down.kind)
                continue
            count("router:" + layer.moe.router.kind)
            for gate_up, down in layer.moe.experts:
                count("expert:" + gate_up.kind)
                count("expert:" + down.kind)
        count("lm_head:" + self.lm_head.kind)
        return kinds

    def cache_state(self, kv_cache: torch.Tensor) -> MoeCacheState:
        return MoeCacheState(self, kv_cache)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_cache: torch.Tensor, meta: AttentionMetadata,
                state: MoeCacheState | None = None,
                before_layers: Callable[[], None] | None = None) -> torch.Tensor:
        """Hidden states [T, hidden] for a flat batch. kv_cache: [layers, 2, slots, kvh, d]."""
        x = self.embed.rows(input_ids).to(self.dtype)
        if state is None or state.kv_cache is not kv_cache:
            state = MoeCacheState(self, kv_cache)
        if not meta.is_prefill and meta.block_tables is not None and self.native_decode:
            c = self.config
            x = x.contiguous()
            plan = state.decode_plan()
            if before_layers is not None:
                before_layers()
            native.lib().tl_moe_decode_step(
                plan.data_ptr(), x.data_ptr(), x.shape[0],
                meta.block_tables.data_ptr(), meta.block_tables.shape[1], meta.seq_lens.data_ptr(),
                meta.block_size, c.rms_norm_eps, c.head_dim ** -0.5, native.num_threads())
            return x
        if before_layers is not None:
            before_layers()
        for layer, (k, v) in zip(self.layers, state.layers, strict=True):
            layer.forward(x, positions, self.rope, k, v, meta)
        return x

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits for the given rows of hidden states."""
        h = rms_norm(hidden, self.norm, self.config.rms_norm_eps)
        return self.lm_head(h).float()


class MoeCacheState(CacheState):
    """`CacheState` whose decode plan has a MoE table slot per layer (layout in
    kernels/moe_kernels.cpp, `tl_moe_decode_step`)."""

    model: MoeModel

    def decode_plan(self) -> torch.Tensor:
        if self._plan is None:
            m, c = self.model, self.model.config

            def ptr(t: torch.Tensor | None) -> int:
                return 0 if t is None else t.data_ptr()

            if self.kv_cache.dtype not in native.KV_KINDS:
                raise ValueError(f"native decode cannot read a {self.kv_cache.dtype} KV cache")
            plan = [c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads,
                    c.num_key_value_heads, c.head_dim, m.rope.cos.data_ptr(), m.rope.sin.data_ptr(),
                    native.KV_KINDS[self.kv_cache.dtype]]
            for layer, (k, v) in zip(m.layers, self.layers, strict=True):
                if layer.moe is None:
                    mlp = [*layer.gate_up.native_ref(), *layer.down.native_ref()]
                    table = 0
                else:
                    mlp = [0] * 6
                    table = layer.moe.table.data_ptr()
                plan += [ptr(layer.input_norm), ptr(layer.post_attn_norm), *layer.qkv.native_ref(),
                         ptr(layer.qkv_bias), ptr(layer.q_norm), ptr(layer.k_norm),
                         *layer.o_proj.native_ref(), *mlp, k.data_ptr(), v.data_ptr(), table]
            self._plan = torch.tensor(plan, dtype=torch.int64)
        return self._plan


# ------------------------------------------------------------------------ weights

def moe_weights(config: ModelConfig, weights: Mapping[str, Any], dtype: torch.dtype) -> dict:
    """Check every tensor's presence and shape; fuse q|k|v and each expert's gate|up."""
    c = config
    hid = c.hidden_size
    qd, kvd = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim

    def mat(name: str, shape: tuple[int, int]) -> lin.Linear:
        return make_linear(_take(weights, name, shape), dtype)

    embed = mat("model.embed_tokens.weight", (c.vocab_size, hid))
    lm_head = embed
    if "lm_head.weight" in weights and not c.tie_word_embeddings:
        lm_head = mat("lm_head.weight", (c.vocab_size, hid))
    layers, moes = [], []
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        layer: dict[str, Any] = {
            "input_layernorm": _vector(weights, p + "input_layernorm.weight", (hid,), dtype),
            "post_attention_layernorm": _vector(weights, p + "post_attention_layernorm.weight", (hid,), dtype),
            "qkv": lin.concat([mat(p + "self_attn.q_proj.weight", (qd, hid)),
                               mat(p + "self_attn.k_proj.weight", (kvd, hid)),
                               mat(p + "self_attn.v_proj.weight", (kvd, hid))]),
            "o_proj": mat(p + "self_attn.o_proj.weight", (hid, qd)),
            "gate_up": None,
            "down": None,
        }
        if c.attention_bias:
            layer["qkv_bias"] = torch.cat([
                _vector(weights, p + f"self_attn.{n}_proj.bias", (size,), dtype)
                for n, size in (("q", qd), ("k", kvd), ("v", kvd))])
        if c.qk_norm:
            layer["q_norm"] = _vector(weights, p + "self_attn.q_norm.weight", (c.head_dim,), dtype)
            layer["k_norm"] = _vector(weights, p + "self_attn.k_norm.weight", (c.head_dim,), dtype)
        moe = None
        if moe_layout.is_sparse(c, i):
            gates, ups, downs = (moe_layout.expert_names(c, i, proj) for proj in range(3))
            gate_shape, down_shape = moe_layout.expert_shape(c, 0), moe_layout.expert_shape(c, 2)
            experts = [(lin.concat([mat(g, gate_shape), mat(u, gate_shape)]), mat(d, down_shape))
                       for g, u, d in zip(gates, ups, downs, strict=True)]
            moe = SparseMoe(c, mat(moe_layout.router_name(c, i), (c.num_experts, hid)), experts)
        else:
            inter = c.intermediate_size
            layer["gate_up"] = lin.concat([mat(p + "mlp.gate_proj.weight", (inter, hid)),
                                           mat(p + "mlp.up_proj.weight", (inter, hid))])
            layer["down"] = mat(p + "mlp.down_proj.weight", (hid, inter))
        layers.append(layer)
        moes.append(moe)
    norm = _vector(weights, "model.norm.weight", (hid,), dtype)
    return {"embed": embed, "lm_head": lm_head, "norm": norm, "layers": layers, "moe": moes}
