"""The Gemma 2 / Gemma 3 decoder, on the same weights, cache and engine as `llama.py`.

What differs from llama, each as Hugging Face computes it:
- the embedding is scaled by sqrt(hidden) (rounded to the activation dtype);
- RMSNorm multiplies by (1 + w), in float32; each layer has four norms: before and
  after attention, before and after the MLP (the "post" ones on the branch, before
  the residual add), and gemma3 has per-head q/k norms;
- the MLP is GELU(tanh)-gated;
- layers alternate local (sliding-window attention, RoPE base 10k) and global (full
  attention, the file's base and rope scaling) as `config.layer_types` says;
- attention is scaled by query_pre_attn_scalar^-1/2; gemma2 soft-caps attention
  scores and final logits (`windowed_attention.py`).

Weights keep the representation the file gives them (`make_linear`); decode steps of
a float32 model run as one native call (`tl_gemma_decode_step`,
kernels/gemma_decode.cpp), else the per-layer torch path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from triolm.kernels import native
from triolm.model import linear as lin
from triolm.model.attention import AttentionMetadata
from triolm.model.config import ModelConfig
from triolm.model.norm import rms_norm
from triolm.model.rope import RotaryEmbedding
from triolm.model.weights import attention, embeddings, gated_mlp, native_slots, ptr, vector
from triolm.model.windowed_attention import windowed_paged_attention


def gemma_norm(x: torch.Tensor, multiplier: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's Gemma RMSNorm: normalise in float32, multiply by (1 + w) (`multiplier`,
    float32), cast back to the activation dtype."""
    if x.dtype == torch.float32:
        return rms_norm(x, multiplier, eps)
    return F.rms_norm(x.float(), (x.shape[-1],), multiplier, eps).to(x.dtype)


class GemmaLayer:
    def __init__(self, config: ModelConfig, index: int, w: dict[str, Any], rope: RotaryEmbedding):
        c = config
        self.config = c
        self.input_norm = w["input_layernorm"]
        self.post_attn_norm = w["post_attention_layernorm"]
        self.pre_ffn_norm = w["pre_feedforward_layernorm"]
        self.post_ffn_norm = w["post_feedforward_layernorm"]
        self.q_norm, self.k_norm = w.get("q_norm"), w.get("k_norm")
        self.qkv: lin.Linear = w["qkv"]
        self.qkv_bias = w.get("qkv_bias")
        self.o_proj: lin.Linear = w["o_proj"]
        self.gate_up: lin.Linear = w["gate_up"]
        self.down: lin.Linear = w["down"]
        self.rope = rope
        self.window = c.sliding_window if c.is_sliding(index) else None
        self.scale = (c.query_pre_attn_scalar or c.head_dim) ** -0.5
        self.softcap = c.attn_logit_softcapping
        self.q_size = c.num_attention_heads * c.head_dim
        self.kv_size = c.num_key_value_heads * c.head_dim

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache_k: torch.Tensor,
                cache_v: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        c = self.config
        eps = c.rms_norm_eps
        qkv = self.qkv(gemma_norm(x, self.input_norm, eps))
        if self.qkv_bias is not None:
            qkv += self.qkv_bias
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(-1, c.num_attention_heads, c.head_dim)
        k = k.reshape(-1, c.num_key_value_heads, c.head_dim)
        v = v.reshape(-1, c.num_key_value_heads, c.head_dim)
        if self.q_norm is not None:
            q, k = gemma_norm(q, self.q_norm, eps), gemma_norm(k, self.k_norm, eps)
        q, k = self.rope.apply(q, positions), self.rope.apply(k, positions)
        if self.window is not None and meta.window is not None:
            meta = meta.window  # this layer's KV lives in the sliding-window pool
        attn = windowed_paged_attention(q, k, v, cache_k, cache_v, meta, self.scale, self.window,
                                        self.softcap, positions)
        x += gemma_norm(self.o_proj(attn.reshape(-1, self.q_size)), self.post_attn_norm, eps)
        gate, up = self.gate_up(gemma_norm(x, self.pre_ffn_norm, eps)).chunk(2, dim=-1)
        x += gemma_norm(self.down(F.gelu(gate, approximate="tanh") * up), self.post_ffn_norm, eps)
        return x


class GemmaCacheState:
    """Per-layer (k, v) views of the KV cache (the runner makes one per cache). With a
    `window_cache`, global layers take kv_cache's entries in order and sliding-window
    layers window_cache's (`engine/window_blocks.py`); else every layer is in kv_cache."""

    def __init__(self, kv_cache: torch.Tensor, window_cache: torch.Tensor | None = None,
                 sliding: tuple[bool, ...] = ()):
        self.kv_cache = kv_cache
        self._plan: torch.Tensor | None = None
        if window_cache is None:
            self.layers = [(kv_cache[i, 0], kv_cache[i, 1]) for i in range(kv_cache.shape[0])]
            return
        pools = {False: iter(kv_cache), True: iter(window_cache)}
        self.layers = [(t[0], t[1]) for t in (next(pools[flag]) for flag in sliding)]

    def decode_plan(self, model: GemmaModel) -> torch.Tensor:
        """The plan `tl_gemma_decode_step` walks (kernels/decode_plan.h, `gemma_plan`).
        It holds raw pointers: the model's weights and these caches stay referenced by the
        model and by this object."""
        if self._plan is None:
            c = model.config
            if self.kv_cache.dtype not in native.KV_KINDS:
                raise ValueError(f"native decode cannot read a {self.kv_cache.dtype} KV cache")
            header = {"n_layers": c.num_hidden_layers, "hidden": c.hidden_size, "intermediate": c.intermediate_size,
                      "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads, "head_dim": c.head_dim,
                      "kv_kind": native.KV_KINDS[self.kv_cache.dtype]}
            rows = [{"local": int(layer.window is not None), "rope_cos": layer.rope.cos.data_ptr(),
                     "rope_sin": layer.rope.sin.data_ptr(), "input_norm": ptr(layer.input_norm),
                     "post_attention_norm": ptr(layer.post_attn_norm), "pre_feedforward_norm": ptr(layer.pre_ffn_norm),
                     "post_feedforward_norm": ptr(layer.post_ffn_norm), "q_norm": ptr(layer.q_norm),
                     "k_norm": ptr(layer.k_norm), **native_slots("qkv", layer.qkv), **native_slots("o", layer.o_proj),
                     **native_slots("gate_up", layer.gate_up), **native_slots("down", layer.down),
                     "k_cache": k.data_ptr(), "v_cache": v.data_ptr()}
                    for layer, (k, v) in zip(model.layers, self.layers, strict=True)]
            self._plan = native.GEMMA_PLAN.pack(header, rows)
        return self._plan


class GemmaModel:
    """Forward pass of a Gemma 2/3 causal LM over a paged KV cache; the interface of
    `LlamaModel` (weights by HF name, float or quantized, see `make_linear`)."""

    def __init__(self, config: ModelConfig, weights: Mapping[str, Any],
                 dtype: torch.dtype = torch.float32, max_positions: int | None = None):
        c = config
        self.config = c
        self.dtype = dtype
        positions = max_positions or c.max_position_embeddings
        self.rope = RotaryEmbedding(c, positions, dtype)
        # gemma3's local layers have their own base and no scaling; gemma2 has one RoPE
        local_scaling = c.rope_scaling if c.architecture == "gemma2" else None
        local = attrs.evolve(c, rope_theta=c.rope_local_theta, rope_scaling=local_scaling)
        self.local_rope = (self.rope if (local.rope_theta, local.rope_scaling) == (c.rope_theta, c.rope_scaling)
                           else RotaryEmbedding(local, positions, dtype))
        w = _gemma_weights(c, weights, dtype)
        self.embed: lin.Linear = w["embed"]
        self.lm_head: lin.Linear = w["lm_head"]
        self.norm = w["norm"]
        self.layers = [GemmaLayer(c, i, w["layers"][i], self.local_rope if c.is_sliding(i) else self.rope)
                       for i in range(c.num_hidden_layers)]
        self.embed_scale = torch.tensor(c.hidden_size ** 0.5, dtype=dtype)
        self._native_ok: bool | None = None
        if dtype == torch.float32:
            native.lib()  # build/load the kernels now (start-up), not in the first request

    @property
    def native_decode(self) -> bool:
        """Decode steps run as one native call (float32, library built, every projection
        in a format the kernels read, no q/k/v bias)."""
        if self._native_ok is None:
            refs = [p.native_ref() for layer in self.layers for p in _projections(layer)]
            self._native_ok = (self.dtype == torch.float32 and all(r is not None for r in refs)
                               and all(layer.qkv_bias is None for layer in self.layers))
        return self._native_ok and native.available()

    @property
    def weights_bytes(self) -> int:
        """Bytes of weights as held in memory (the tied output matrix counted once)."""
        head = self.lm_head.nbytes if self.lm_head is not self.embed else 0
        return self.embed.nbytes + head + sum(p.nbytes for layer in self.layers for p in _projections(layer))

    def weight_kinds(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for layer in self.layers:
            for p in _projections(layer):
                kinds[p.kind] = kinds.get(p.kind, 0) + 1
        kinds["lm_head:" + self.lm_head.kind] = 1
        return kinds

    def cache_state(self, kv_cache: torch.Tensor, window_cache: torch.Tensor | None = None) -> GemmaCacheState:
        sliding = tuple(self.config.is_sliding(i) for i in range(self.config.num_hidden_layers))
        return GemmaCacheState(kv_cache, window_cache, sliding)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_cache: torch.Tensor, meta: AttentionMetadata,
                state: GemmaCacheState | None = None,
                before_layers: Callable[[], None] | None = None) -> torch.Tensor:
        """Hidden states [T, hidden] for a flat batch. kv_cache: [layers, 2, slots, kvh, d]."""
        x = self.embed.rows(input_ids).to(self.dtype) * self.embed_scale
        if state is None or state.kv_cache is not kv_cache:
            state = GemmaCacheState(kv_cache)
        if not meta.is_prefill and meta.block_tables is not None and self.native_decode:
            return self._native_decode_step(x.contiguous(), meta, state, before_layers)
        if before_layers is not None:
            before_layers()
        for layer, (k, v) in zip(self.layers, state.layers, strict=True):
            layer.forward(x, positions, k, v, meta)
        return x

    def _native_decode_step(self, x: torch.Tensor, meta: AttentionMetadata, state: GemmaCacheState,
                            before_layers: Callable[[], None] | None) -> torch.Tensor:
        c = self.config
        local = meta.window if meta.window is not None else meta  # one pool: local layers walk the same tables
        plan = state.decode_plan(self)
        if before_layers is not None:
            before_layers()
        native.lib().tl_gemma_decode_step(
            plan.data_ptr(), x.data_ptr(), x.shape[0], meta.block_tables.data_ptr(), meta.block_tables.shape[1],
            local.block_tables.data_ptr(), local.block_tables.shape[1], meta.seq_lens.data_ptr(), meta.block_size,
            c.rms_norm_eps, (c.query_pre_attn_scalar or c.head_dim) ** -0.5, c.sliding_window or 0,
            c.attn_logit_softcapping or 0.0, native.num_threads())
        return x

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits for the given rows of hidden states (soft-capped if the model says)."""
        logits = self.lm_head(gemma_norm(hidden, self.norm, self.config.rms_norm_eps))
        cap = self.config.final_logit_softcapping
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits.float()


def _projections(layer: GemmaLayer) -> tuple[lin.Linear, ...]:
    return layer.qkv, layer.o_proj, layer.gate_up, layer.down


def _gemma_weights(config: ModelConfig, weights: Mapping[str, Any], dtype: torch.dtype) -> dict:
    """Check every tensor's presence and shape; fuse q|k|v and gate|up; norms become
    their float32 multipliers 1 + w."""
    c = config
    hid = c.hidden_size

    def norm(name: str, size: int) -> torch.Tensor:
        return 1.0 + vector(weights, name, (size,), dtype).float()

    layers = []
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        layer: dict[str, Any] = {
            name: norm(p + name + ".weight", hid)
            for name in ("input_layernorm", "post_attention_layernorm",
                         "pre_feedforward_layernorm", "post_feedforward_layernorm")
        }
        layer["qkv"], layer["qkv_bias"], layer["o_proj"] = attention(c, weights, p, dtype)
        mlp = (p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight")
        layer["gate_up"], layer["down"] = gated_mlp(c, weights, mlp, c.intermediate_size, dtype)
        if c.qk_norm:
            layer["q_norm"] = norm(p + "self_attn.q_norm.weight", c.head_dim)
            layer["k_norm"] = norm(p + "self_attn.k_norm.weight", c.head_dim)
        layers.append(layer)
    embed, lm_head = embeddings(c, weights, dtype)
    return {"embed": embed, "lm_head": lm_head, "norm": norm("model.norm.weight", hid), "layers": layers}
