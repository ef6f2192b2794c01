/* ------------------------------------------------------------------ whole decode step
   Every layer of one decode step of a llama-family decoder in one call, so the Python
   interpreter (and the GIL) is out of the loop: at 30 layers x ~8 operations, per-call
   overhead was ~15% of a step, and it would grow with the layers and (MoE) the experts.

   One kernel serves every family that is llama's decoder plus differences the plan or
   the arguments carry:
   - qwen2's q/k/v bias, qwen3's per-head q/k norms (plan slots, 0 = none);
   - smollm3's layers without RoPE (`rotate` = 0): keys are cached unrotated;
   - granite's multipliers: the attention scale is `scale`, each branch is multiplied by
     `residual` before it joins the residual stream (the embedding and logit multipliers
     apply outside the layers, in Python);
   - qwen3_moe / mixtral: a layer with a `moe` table runs `tl_moe_ffn` (routing and the
     experts in one call) instead of the dense MLP;
   - phi3 is llama here (its fused tensors are split at load, partial rotation is in the
     RoPE tables).

   `plan`'s layout: decode_plan.h (namespace plan). x [B, hidden] holds the token
   embeddings and receives the last hidden states. */

#include <string.h>

#include "decode_plan.h"
#include "kernel_api.h"
#include "step_buffers.h"

namespace {

/* x += residual * branch, with the branch accumulated straight into x when residual is 1. */
struct Residual {
    float multiplier;
    float* branch;  // [B, hidden] scratch, used when multiplier != 1
    i64 B, hid;

    float* target(float* x) const { return multiplier == 1.0f ? x : branch; }
    int accumulate() const { return multiplier == 1.0f ? 1 : 0; }
    void add(float* x) const {
        if (multiplier == 1.0f) return;
        for (i64 i = 0; i < B * hid; i++) x[i] += multiplier * branch[i];
    }
};

void linear(const i64* p, int kind_slot, const float* in, i64 K, float* out, i64 N, i64 B, int accumulate,
            int nthreads) {
    tl_linear((int)p[kind_slot], (const void*)p[kind_slot + 1], (const float*)p[kind_slot + 2], in, K, out, N, B, N,
              K, accumulate, nthreads);
}

}  // namespace

extern "C" void tl_decode_step(const i64* pl, float* x, i64 B, const int32_t* block_tables, i64 max_blocks,
                               const int32_t* seq_lens, i64 block_size, float eps, float scale, float residual,
                               int nthreads) {
    using namespace plan;
    const i64 L = pl[n_layers], hid = pl[hidden], inter = pl[intermediate], H = pl[heads], KVH = pl[kv_heads],
              D = pl[head_dim];
    const float* cos_t = (const float*)pl[rope_cos];
    const float* sin_t = (const float*)pl[rope_sin];
    const int kv = (int)pl[kv_kind];
    const i64 qd = H * D, kvd = KVH * D, qkvd = qd + 2 * kvd;
    const StepBuffers buf = step_buffers(B, hid, qkvd, qd, inter);
    float *h = buf.h, *branch = buf.branch, *qkv = buf.qkv, *attn = buf.attn, *gu = buf.gu, *act = buf.act;
    const Residual res{residual, branch, B, hid};
    for (i64 l = 0; l < L; l++) {
        const i64* p = pl + HEADER_SLOTS + l * LAYER_SLOTS;
        tl_rms_norm(x, hid, (const float*)p[input_norm], h, hid, B, hid, eps);
        linear(p, qkv_kind, h, hid, qkv, qkvd, B, 0, nthreads);
        if (p[qkv_bias]) {
            const float* bias = (const float*)p[qkv_bias];
            for (i64 b = 0; b < B; b++)
                for (i64 j = 0; j < qkvd; j++) qkv[b * qkvd + j] += bias[j];
        }
        if (p[q_norm]) {
            for (i64 b = 0; b < B; b++) {
                float* q = qkv + b * qkvd;
                tl_rms_norm(q, D, (const float*)p[q_norm], q, D, H, D, eps);
                tl_rms_norm(q + qd, D, (const float*)p[k_norm], q + qd, D, KVH, D, eps);
            }
        }
        tl_decode_attention(qkv, qkvd, qkv + qd, qkvd, qkv + qd + kvd, qkvd, (void*)p[k_cache], (void*)p[v_cache],
                            kv, block_tables, max_blocks, seq_lens, cos_t, sin_t, (int)p[rotate], attn, B, H, KVH,
                            D, block_size, scale, nthreads);
        linear(p, o_kind, attn, qd, res.target(x), hid, B, res.accumulate(), nthreads);
        res.add(x);
        tl_rms_norm(x, hid, (const float*)p[post_attention_norm], h, hid, B, hid, eps);
        if (p[moe]) {
            float* out = res.target(x);
            if (out != x) memset(out, 0, B * hid * sizeof(float));
            tl_moe_ffn((const i64*)p[moe], h, hid, out, hid, B, nthreads);
        } else {
            linear(p, gate_up_kind, h, hid, gu, 2 * inter, B, 0, nthreads);
            tl_silu_mul(gu, act, B, inter);
            linear(p, down_kind, act, inter, res.target(x), hid, B, res.accumulate(), nthreads);
        }
        res.add(x);
    }
}
