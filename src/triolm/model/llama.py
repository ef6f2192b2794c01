"""The llama-family decoder, and the families that are llama plus a difference or two.

llama, mistral, qwen2 (q/k/v bias), qwen3 (per-head q/k norms), phi3 (its fused tensors
split at load, `formats/phi3.py`; partial rotation and longrope in the RoPE tables),
granite (embedding, residual and attention multipliers, logits scaling), smollm3 (no
RoPE on some layers), and the mixture-of-experts qwen3_moe and mixtral (a routed
feed-forward, `moe.py`): each difference is a config field this module reads or a
layer part it is given, so one decoder runs them all.

Weights are fused where that saves kernel launches (q|k|v, gate|up: stacked parts, no
copy) and kept in the representation the file gives them (see `linear.py`: float32,
float16, every GGUF block type). The forward pass takes a flat batch of tokens, so
prefill and batched decode share one torch code path; a decode step of a
float32-activation model is one native call for all layers (`tl_decode_step`,
kernels/decode_step.cpp: fused RoPE + KV write + paged attention, GEMV on packed
weights, residual adds folded into the projections).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from triolm.formats import moe_layout
from triolm.kernels import native
from triolm.model import linear as lin
from triolm.model.attention import AttentionMetadata, paged_attention
from triolm.model.config import ModelConfig
from triolm.model.feed_forward import DenseMlp, add_projection
from triolm.model.moe import SparseMoe, sparse_moe
from triolm.model.norm import rms_norm
from triolm.model.rope import RotaryEmbedding
from triolm.model.weights import attention, embeddings, gated_mlp, native_slots, ptr, vector

FeedForward = DenseMlp | SparseMoe


class DecoderLayer:
    """Pre-norm attention then a feed-forward, each branch added to the residual stream
    (times `residual_multiplier`: granite's; 1 elsewhere)."""

    def __init__(self, config: ModelConfig, index: int, input_norm: torch.Tensor, post_attn_norm: torch.Tensor,
                 qkv: lin.Linear, qkv_bias: torch.Tensor | None, o_proj: lin.Linear,
                 q_norm: torch.Tensor | None, k_norm: torch.Tensor | None, feed_forward: FeedForward):
        c = config
        self.config = c
        self.input_norm, self.post_attn_norm = input_norm, post_attn_norm
        self.qkv, self.qkv_bias, self.o_proj = qkv, qkv_bias, o_proj
        self.q_norm, self.k_norm = q_norm, k_norm
        self.feed_forward = feed_forward
        self.rotates = c.rotates(index)
        self.residual = c.residual_multiplier
        self.q_size, self.kv_size = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.config
        qkv = self.qkv(rms_norm(x, self.input_norm, c.rms_norm_eps))
        if self.qkv_bias is not None:
            qkv += self.qkv_bias
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(-1, c.num_attention_heads, c.head_dim)
        k = k.reshape(-1, c.num_key_value_heads, c.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = rms_norm(q, self.q_norm, c.rms_norm_eps), rms_norm(k, self.k_norm, c.rms_norm_eps)
        return q, k, v.reshape(-1, c.num_key_value_heads, c.head_dim)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rope: RotaryEmbedding,
                cache_k: torch.Tensor, cache_v: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """The torch path (prefill; decode without native kernels). Updates x in place."""
        q, k, v = self._qkv(x)
        if self.rotates:
            q, k = rope.apply(q, positions), rope.apply(k, positions)
        attn = paged_attention(q, k, v, cache_k, cache_v, meta, attention_scale(self.config))
        add_projection(self.o_proj, attn.reshape(-1, self.q_size), x, self.residual)
        h = rms_norm(x, self.post_attn_norm, self.config.rms_norm_eps)
        self.feed_forward.add_into(h, x, self.residual)
        return x

    def projections(self) -> list[lin.Linear]:
        return [self.qkv, self.o_proj, *self.feed_forward.projections()]

    def weight_kinds(self) -> list[str]:
        return [self.qkv.kind, self.o_proj.kind, *self.feed_forward.weight_kinds()]

    @property
    def native_ready(self) -> bool:
        """Every weight in a format the native decode step reads."""
        return (self.qkv.native_ref() is not None and self.o_proj.native_ref() is not None
                and self.feed_forward.native_ready)

    def plan_row(self, cache_k: torch.Tensor, cache_v: torch.Tensor) -> dict[str, int]:
        """This layer's slots of the decode plan (kernels/decode_plan.h, `plan::Layer`)."""
        return {"input_norm": ptr(self.input_norm), "post_attention_norm": ptr(self.post_attn_norm),
                **native_slots("qkv", self.qkv), "qkv_bias": ptr(self.qkv_bias),
                "q_norm": ptr(self.q_norm), "k_norm": ptr(self.k_norm), "rotate": int(self.rotates),
                **native_slots("o", self.o_proj), **self.feed_forward.plan_slots(),
                "k_cache": cache_k.data_ptr(), "v_cache": cache_v.data_ptr()}


def attention_scale(config: ModelConfig) -> float:
    """granite's attention multiplier, else head_dim^-1/2."""
    if config.attention_multiplier is not None:
        return config.attention_multiplier
    return config.head_dim ** -0.5


class LlamaModel:
    """Forward pass of a llama-family causal LM over a paged KV cache.

    `weights` maps HF names to float tensors, or (for GGUF files read with
    keep_quantized) to quantized tensors exposing `qtype`, `shape`, `data` and
    `dequantize()`. With dtype float32, float16 tensors and GGUF blocks keep their
    compact form (computed in float32); with dtype float16/bfloat16 every weight is
    converted to that dtype and the torch path computes in it."""

    def __init__(self, config: ModelConfig, weights: Mapping[str, Any],
                 dtype: torch.dtype = torch.float32, max_positions: int | None = None):
        self.config = config
        self.dtype = dtype
        self.embed, self.lm_head = embeddings(config, weights, dtype)
        self.layers = [decoder_layer(config, weights, i, dtype) for i in range(config.num_hidden_layers)]
        self.norm = vector(weights, "model.norm.weight", (config.hidden_size,), dtype)
        self.rope = RotaryEmbedding(config, max_positions or config.max_position_embeddings, dtype)
        self._native_ok: bool | None = None
        if dtype == torch.float32:
            native.lib()  # build/load the kernels now (start-up), not in the first request

    @property
    def native_decode(self) -> bool:
        """Decode steps run as one native call (float32 activations, library built, every
        weight in a format the kernels read)."""
        if self._native_ok is None:
            self._native_ok = self.dtype == torch.float32 and all(layer.native_ready for layer in self.layers)
        return self._native_ok and native.available()

    @property
    def weights_bytes(self) -> int:
        """Bytes of weights as held in memory (tied embeddings counted once)."""
        projections = [p for layer in self.layers for p in layer.projections()]
        parts = {id(p): p for p in [self.embed, self.lm_head, *projections]}
        return sum(p.nbytes for p in parts.values())

    def weight_kinds(self) -> dict[str, int]:
        """How many matrices use each representation (for logs and benchmarks); MoE
        routers and experts counted apart."""
        kinds: dict[str, int] = {}
        for layer in self.layers:
            for kind in layer.weight_kinds():
                kinds[kind] = kinds.get(kind, 0) + 1
        kinds["lm_head:" + self.lm_head.kind] = 1
        return kinds

    def cache_state(self, kv_cache: torch.Tensor) -> CacheState:
        """Per-cache things worth making once: layer views and the native decode plan.
        The engine's runner keeps one for its cache; a model may serve several engines."""
        return CacheState(self, kv_cache)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_cache: torch.Tensor, meta: AttentionMetadata,
                state: CacheState | None = None,
                before_layers: Callable[[], None] | None = None) -> torch.Tensor:
        """Hidden states [T, hidden] for a flat batch. kv_cache: [layers, 2, slots, kvh, d].

        `before_layers` runs once the inputs are ready, right before the layers (the
        native decode call releases the GIL for its whole duration)."""
        c = self.config
        x = self.embed.rows(input_ids).to(self.dtype)
        if c.embedding_multiplier != 1.0:
            x = x * c.embedding_multiplier
        if state is None or state.kv_cache is not kv_cache:
            state = CacheState(self, kv_cache)
        if not meta.is_prefill and meta.block_tables is not None and meta.seq_lens is not None \
                and self.native_decode:
            x = x.contiguous()
            plan = state.decode_plan()
            if before_layers is not None:
                before_layers()
            native.lib().tl_decode_step(
                plan.data_ptr(), x.data_ptr(), x.shape[0],
                meta.block_tables.data_ptr(), meta.block_tables.shape[1], meta.seq_lens.data_ptr(),
                meta.block_size, c.rms_norm_eps, attention_scale(c), c.residual_multiplier,
                native.num_threads())
            return x
        if before_layers is not None:
            before_layers()
        for layer, (k, v) in zip(self.layers, state.layers, strict=True):
            layer.forward(x, positions, self.rope, k, v, meta)
        return x

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits for the given rows of hidden states (divided by granite's
        logits_scaling)."""
        logits = self.lm_head(rms_norm(hidden, self.norm, self.config.rms_norm_eps)).float()
        if self.config.logits_scaling != 1.0:
            logits = logits / self.config.logits_scaling
        return logits


class CacheState:
    """Per-layer (k, v) views of one KV cache, and the decode plan `tl_decode_step` walks
    (kernels/decode_plan.h). The plan holds raw pointers: the model's weights and this
    cache stay referenced by the model and by this object."""

    def __init__(self, model: LlamaModel, kv_cache: torch.Tensor):
        self.model = model
        self.kv_cache = kv_cache
        self.layers = [(kv_cache[i, 0], kv_cache[i, 1]) for i in range(kv_cache.shape[0])]
        self._plan: torch.Tensor | None = None

    def decode_plan(self) -> torch.Tensor:
        if self._plan is None:
            m, c = self.model, self.model.config
            if self.kv_cache.dtype not in native.KV_KINDS:
                raise ValueError(f"native decode cannot read a {self.kv_cache.dtype} KV cache")
            header = {"n_layers": c.num_hidden_layers, "hidden": c.hidden_size, "intermediate": c.intermediate_size,
                      "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads, "head_dim": c.head_dim,
                      "rope_cos": m.rope.cos.data_ptr(), "rope_sin": m.rope.sin.data_ptr(),
                      "kv_kind": native.KV_KINDS[self.kv_cache.dtype]}
            rows = [layer.plan_row(k, v) for layer, (k, v) in zip(m.layers, self.layers, strict=True)]
            self._plan = native.DECODE_PLAN.pack(header, rows)
        return self._plan


def decoder_layer(config: ModelConfig, weights: Mapping[str, Any], index: int, dtype: torch.dtype) -> DecoderLayer:
    """Layer `index` from HF-named weights, every tensor's presence and shape checked."""
    c = config
    p = f"model.layers.{index}."
    input_norm = vector(weights, p + "input_layernorm.weight", (c.hidden_size,), dtype)
    post_attn_norm = vector(weights, p + "post_attention_layernorm.weight", (c.hidden_size,), dtype)
    qkv, qkv_bias, o_proj = attention(c, weights, p, dtype)
    q_norm = k_norm = None
    if c.qk_norm:
        q_norm = vector(weights, p + "self_attn.q_norm.weight", (c.head_dim,), dtype)
        k_norm = vector(weights, p + "self_attn.k_norm.weight", (c.head_dim,), dtype)
    feed_forward: FeedForward
    if moe_layout.is_sparse(c, index):
        feed_forward = sparse_moe(c, weights, index, dtype)
    else:
        names = (p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight")
        feed_forward = DenseMlp(*gated_mlp(c, weights, names, c.intermediate_size, dtype))
    return DecoderLayer(c, index, input_norm, post_attn_norm, qkv, qkv_bias, o_proj, q_norm, k_norm, feed_forward)
