"""The llama-family decoder (llama, mistral, qwen2, qwen3) as plain tensors and functions.

Weights are fused where that saves kernel launches (q|k|v, gate|up: stacked parts, no
copy) and kept in the representation the file gives them (see `linear.py`: float32,
float16, every GGUF block type). The
forward pass takes a flat batch of tokens, so prefill and batched decode share one
torch code path; decode steps of a float32-activation model take a leaner path through
the native kernels (fused RoPE + KV write + paged attention, GEMV on packed weights,
residual adds folded into the projections).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from triolm.errors import ModelLoadError
from triolm.kernels import native
from triolm.model import linear as lin
from triolm.model.attention import AttentionMetadata, paged_attention
from triolm.model.config import ModelConfig
from triolm.model.rope import RotaryEmbedding


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's RMSNorm in float32. torch's CPU rms_norm is a chain of small ops (~50 us a
    call here), so float32 rows go through one native call when available."""
    lib = native.lib()
    if lib is None or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    n = x.shape[-1]
    rows = x.reshape(-1, n)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape)
    lib.tl_rms_norm(rows.data_ptr(), rows.stride(0), weight.data_ptr(), out.data_ptr(), n,
                    rows.shape[0], n, eps)
    return out.view(x.shape)


class DecoderLayer:
    def __init__(self, config: ModelConfig, w: dict[str, Any]):
        self.config = config
        self.input_norm = w["input_layernorm"]
        self.post_attn_norm = w["post_attention_layernorm"]
        self.qkv: lin.Linear = w["qkv"]
        self.qkv_bias = w.get("qkv_bias")
        self.o_proj: lin.Linear = w["o_proj"]
        self.gate_up: lin.Linear = w["gate_up"]
        self.down: lin.Linear = w["down"]
        self.q_norm = w.get("q_norm")
        self.k_norm = w.get("k_norm")
        h, kvh, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.q_size, self.kv_size = h * d, kvh * d
        self.scale = d ** -0.5

    def _qkv(self, x: torch.Tensor):
        c = self.config
        h = rms_norm(x, self.input_norm, c.rms_norm_eps)
        qkv = self.qkv(h)
        if self.qkv_bias is not None:
            qkv += self.qkv_bias
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.q_norm is not None:
            q = rms_norm(q.reshape(-1, c.num_attention_heads, c.head_dim), self.q_norm, c.rms_norm_eps)
            k = rms_norm(k.reshape(-1, c.num_key_value_heads, c.head_dim), self.k_norm, c.rms_norm_eps)
            q, k = q.reshape(-1, self.q_size), k.reshape(-1, self.kv_size)
        return q, k, v

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rope: RotaryEmbedding,
                cache_k: torch.Tensor, cache_v: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Generic torch path (prefill; decode without native kernels). Updates x in place."""
        c = self.config
        q, k, v = self._qkv(x)
        q = rope.apply(q.reshape(-1, c.num_attention_heads, c.head_dim), positions)
        k = rope.apply(k.reshape(-1, c.num_key_value_heads, c.head_dim), positions)
        v = v.reshape(-1, c.num_key_value_heads, c.head_dim)
        attn = paged_attention(q, k, v, cache_k, cache_v, meta, self.scale)
        self.o_proj(attn.reshape(-1, self.q_size), out=x)
        self._mlp(x)
        return x

    def _mlp(self, x: torch.Tensor) -> None:
        h = rms_norm(x, self.post_attn_norm, self.config.rms_norm_eps)
        gate_up = self.gate_up(h)
        lib = native.lib()
        if lib is not None and gate_up.dtype == torch.float32:
            act = torch.empty(x.shape[0], self.config.intermediate_size)
            lib.tl_silu_mul(gate_up.data_ptr(), act.data_ptr(), x.shape[0], self.config.intermediate_size)
        else:
            gate, up = gate_up.chunk(2, dim=-1)
            act = F.silu(gate) * up
        self.down(act, out=x)


class LlamaModel:
    """Forward pass of a llama-family causal LM over a paged KV cache.

    `weights` maps HF names to float tensors, or (for GGUF files read with
    keep_quantized) to quantized tensors exposing `qtype`, `shape`, `data` and
    `dequantize()`. With dtype float32, float16 tensors and GGUF blocks keep their
    compact form (computed in float32); with dtype float16/bfloat16 every weight is
    converted to that dtype and the torch path computes in it."""

    layer_class = DecoderLayer  # variants (granite, smollm3) change a layer's arithmetic

    def __init__(self, config: ModelConfig, weights: Mapping[str, Any],
                 dtype: torch.dtype = torch.float32, max_positions: int | None = None):
        self.config = config
        self.dtype = dtype
        fused = fuse_weights(config, weights, dtype)
        self.lm_head: lin.Linear = fused["lm_head"]
        self.embed: lin.Linear = fused["embed"]
        self.norm = fused["norm"]
        self.layers = [self.layer_class(config, fused["layers"][i]) for i in range(config.num_hidden_layers)]
        self.rope = RotaryEmbedding(config, max_positions or config.max_position_embeddings, dtype)
        self._native_ok: bool | None = None
        if dtype == torch.float32:
            native.lib()  # build/load the kernels now (start-up), not in the first request

    @property
    def native_decode(self) -> bool:
        """Decode steps run as one native call (float32 activations, library built, every
        weight in a format the kernels read)."""
        if self._native_ok is None:
            refs = [p.native_ref() for layer in self.layers
                    for p in (layer.qkv, layer.o_proj, layer.gate_up, layer.down)]
            self._native_ok = self.dtype == torch.float32 and all(r is not None for r in refs)
        return self._native_ok and native.available()

    @property
    def weights_bytes(self) -> int:
        """Bytes of weights as held in memory (tied embeddings counted once)."""
        seen: set[int] = set()
        total = 0
        parts = [self.embed, self.lm_head]
        for layer in self.layers:
            parts += [layer.qkv, layer.o_proj, layer.gate_up, layer.down]
        for p in parts:
            if id(p) not in seen:
                seen.add(id(p))
                total += p.nbytes
        return total

    def weight_kinds(self) -> dict[str, int]:
        """How many projection matrices use each representation (for logs and benchmarks)."""
        kinds: dict[str, int] = {}
        for layer in self.layers:
            for p in (layer.qkv, layer.o_proj, layer.gate_up, layer.down):
                kinds[p.kind] = kinds.get(p.kind, 0) + 1
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
        x = self.embed.rows(input_ids).to(self.dtype)
        if state is None or state.kv_cache is not kv_cache:
            state = CacheState(self, kv_cache)
        caches = state.layers
        if not meta.is_prefill and meta.block_tables is not None and self.native_decode:
            c = self.config
            x = x.contiguous()
            plan = state.decode_plan()
            if before_layers is not None:
                before_layers()
            native.lib().tl_decode_step(
                plan.data_ptr(), x.data_ptr(), x.shape[0],
                meta.block_tables.data_ptr(), meta.block_tables.shape[1], meta.seq_lens.data_ptr(),
                meta.block_size, c.rms_norm_eps, c.head_dim ** -0.5, native.num_threads())
            return x
        if before_layers is not None:
            before_layers()
        for layer, (k, v) in zip(self.layers, caches, strict=True):
            layer.forward(x, positions, self.rope, k, v, meta)
        return x

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits for the given rows of hidden states."""
        h = rms_norm(hidden, self.norm, self.config.rms_norm_eps)
        return self.lm_head(h).float()


class CacheState:
    """Per-layer (k, v) views of one KV cache, and the int64 table `tl_decode_step`
    walks (layout in kernels/triolm_kernels.cpp). The table holds raw pointers: the model's weights and
    this cache stay referenced by the model and by this object."""

    def __init__(self, model: LlamaModel, kv_cache: torch.Tensor):
        self.model = model
        self.kv_cache = kv_cache
        self.layers = [(kv_cache[i, 0], kv_cache[i, 1]) for i in range(kv_cache.shape[0])]
        self._plan: torch.Tensor | None = None

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
                plan += [ptr(layer.input_norm), ptr(layer.post_attn_norm), *layer.qkv.native_ref(),
                         ptr(layer.qkv_bias), ptr(layer.q_norm), ptr(layer.k_norm),
                         *layer.o_proj.native_ref(), *layer.gate_up.native_ref(),
                         *layer.down.native_ref(), k.data_ptr(), v.data_ptr()]
            self._plan = torch.tensor(plan, dtype=torch.int64)
        return self._plan


# ------------------------------------------------------------------------ weights

def _shape_of(t: Any) -> tuple[int, ...]:
    return tuple(t.shape)


def _take(weights: Mapping[str, Any], name: str, shape: tuple[int, ...]) -> Any:
    if name not in weights:
        raise ModelLoadError(f"missing tensor {name!r}")
    t = weights[name]
    if _shape_of(t) != shape:
        raise ModelLoadError(f"tensor {name!r} has shape {_shape_of(t)}, expected {shape}")
    return t


def _vector(weights: Mapping[str, Any], name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    t = _take(weights, name, shape)
    if not isinstance(t, torch.Tensor):
        t = t.dequantize(torch.float32)
    return t.to(dtype).contiguous()


def make_linear(t: Any, dtype: torch.dtype) -> lin.Linear:
    """The representation of one weight matrix (see module `linear`)."""
    if not isinstance(t, torch.Tensor):  # a GGUF matrix as the file's bytes
        if dtype == torch.float32:
            return lin.from_blocks(t.qtype, t.data, *t.shape)
        return lin.DenseLinear(t.dequantize(torch.float32).to(dtype))
    if dtype == torch.float32 and t.dtype == torch.float16:
        return lin.Float16Linear(t)
    return lin.DenseLinear(t.to(dtype))


def fuse_weights(config: ModelConfig, weights: Mapping[str, Any], dtype: torch.dtype) -> dict:
    """Check every tensor's presence and shape, then fuse q|k|v and gate|up."""
    c = config
    hid, inter = c.hidden_size, c.intermediate_size
    qd, kvd = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    embed = make_linear(_take(weights, "model.embed_tokens.weight", (c.vocab_size, hid)), dtype)
    if "lm_head.weight" in weights and not c.tie_word_embeddings:
        lm_head = make_linear(_take(weights, "lm_head.weight", (c.vocab_size, hid)), dtype)
    else:
        lm_head = embed
    layers = []
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."

        def mat(name: str, shape: tuple[int, int]) -> lin.Linear:
            return make_linear(_take(weights, p + name, shape), dtype)  # noqa: B023 (called within this iteration)

        layer = {
            "input_layernorm": _vector(weights, p + "input_layernorm.weight", (hid,), dtype),
            "post_attention_layernorm": _vector(weights, p + "post_attention_layernorm.weight", (hid,), dtype),
            "qkv": lin.concat([mat("self_attn.q_proj.weight", (qd, hid)),
                               mat("self_attn.k_proj.weight", (kvd, hid)),
                               mat("self_attn.v_proj.weight", (kvd, hid))]),
            "o_proj": mat("self_attn.o_proj.weight", (hid, qd)),
            "gate_up": lin.concat([mat("mlp.gate_proj.weight", (inter, hid)),
                                   mat("mlp.up_proj.weight", (inter, hid))]),
            "down": mat("mlp.down_proj.weight", (hid, inter)),
        }
        if c.attention_bias:
            layer["qkv_bias"] = torch.cat([
                _vector(weights, p + "self_attn.q_proj.bias", (qd,), dtype),
                _vector(weights, p + "self_attn.k_proj.bias", (kvd,), dtype),
                _vector(weights, p + "self_attn.v_proj.bias", (kvd,), dtype)])
        if c.qk_norm:
            layer["q_norm"] = _vector(weights, p + "self_attn.q_norm.weight", (c.head_dim,), dtype)
            layer["k_norm"] = _vector(weights, p + "self_attn.k_norm.weight", (c.head_dim,), dtype)
        layers.append(layer)
    norm = _vector(weights, "model.norm.weight", (hid,), dtype)
    return {"embed": embed, "lm_head": lm_head, "norm": norm, "layers": layers}
