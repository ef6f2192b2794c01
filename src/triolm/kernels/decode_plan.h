/* The decode plans: int64 tables a model writes once per KV cache (pointers as
   integers) and a whole-step kernel walks every step. Each slot is named here and only
   here: native.py reads these enums to pack a plan by slot name, so the Python side
   holds no positional list that could drift from the C++ side.

   A plan is a header (Header) followed by one row per layer (Layer) or expert
   (Expert); the last
   enumerator of each enum is its size. Pointers of 0 mean "none" where a slot says so.
   Weight triples (kind, w*, d*) are what `tl_linear` takes (kind: W_F32, W_F16, W_Q8_0,
   a GGUF block kind or W_PARTS). */

#pragma once

/* `tl_decode_step` (decode_step.cpp): llama, mistral, qwen2/3, phi3, granite, smollm3,
   qwen3_moe, mixtral. */
namespace plan {
enum Header {
    n_layers, hidden, intermediate, heads, kv_heads, head_dim,
    rope_cos, rope_sin,  /* [positions, head_dim] float32 tables */
    kv_kind,             /* KV_F32 | KV_F16 */
    HEADER_SLOTS
};
enum Layer {
    input_norm, post_attention_norm,
    qkv_kind, qkv_w, qkv_d,
    qkv_bias,            /* 0: none */
    q_norm, k_norm,      /* per-head norms; 0: none */
    rotate,              /* 1: RoPE on q and k; 0: the layer leaves positions out */
    o_kind, o_w, o_d,
    gate_up_kind, gate_up_w, gate_up_d, down_kind, down_w, down_d,  /* dense MLP */
    moe,                 /* tl_moe_ffn's table (moe_kernels.cpp); 0: the dense MLP */
    k_cache, v_cache,
    LAYER_SLOTS
};
}  // namespace plan

/* `tl_moe_ffn` (moe_kernels.cpp): one sparse MLP, a `plan::moe` slot of a MoE layer. */
namespace moe_plan {
enum Header {
    experts, top_k,
    renormalize,         /* 1: the top-k weights are scaled to sum to 1 */
    hidden, width,       /* hidden size, an expert's intermediate size */
    router_kind, router_w, router_d,
    HEADER_SLOTS
};
enum Expert {            /* one row per expert */
    gate_up_kind, gate_up_w, gate_up_d, down_kind, down_w, down_d,
    EXPERT_SLOTS
};
}  // namespace moe_plan

/* `tl_gemma_decode_step` (gemma_decode.cpp): gemma2, gemma3. The norms' weights are
   their (1 + w) multipliers. */
namespace gemma_plan {
enum Header {
    n_layers, hidden, intermediate, heads, kv_heads, head_dim,
    kv_kind,
    HEADER_SLOTS
};
enum Layer {
    local,               /* 1: sliding-window layer (its own cache and block tables) */
    rope_cos, rope_sin,  /* this layer's RoPE tables (local and global bases differ) */
    input_norm, post_attention_norm, pre_feedforward_norm, post_feedforward_norm,
    q_norm, k_norm,      /* 0: none */
    qkv_kind, qkv_w, qkv_d, o_kind, o_w, o_d,
    gate_up_kind, gate_up_w, gate_up_d, down_kind, down_w, down_d,
    k_cache, v_cache,
    LAYER_SLOTS
};
}  // namespace gemma_plan
