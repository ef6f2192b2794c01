/* ------------------------------------------------------------------ Gemma decode step
   Every layer of one Gemma 2/3 decode step in one call (see tl_decode_step for why),
   as models/gemma.py computes it: four RMSNorms per layer whose weights are the (1 + w)
   multipliers, the "post" ones applied to the branch before the residual add; optional
   per-head q/k norms; GELU(tanh)-gated MLP; local layers attend over the last `window`
   positions of their own cache (engine/window_blocks.py), with their own RoPE tables;
   attention scores soft-capped when `softcap` > 0.

   `plan` is an int64 array written once by the model (GemmaCacheState.decode_plan);
   its layout: decode_plan.h, namespace gemma_plan.
   Global layers walk `block_tables`, local ones `window_tables` (blocks a sequence no
   longer holds point at a scratch block and are never read).
   x [B, hidden] holds the scaled token embeddings and receives the last hidden states. */

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "decode_plan.h"
#include "kernel_api.h"
#include "step_buffers.h"

/* out[m, j] = gelu_tanh(gu[m, j]) * gu[m, I + j], torch's approximate="tanh" formula. */
extern "C" void tl_gelu_tanh_mul(const float* gu, float* out, i64 M, i64 I) {
    const float k = 0.7978845608028654f;  // sqrt(2 / pi)
    for (i64 m = 0; m < M; m++) {
        const float* g = gu + m * 2 * I;
        const float* u = g + I;
        float* o = out + m * I;
        for (i64 j = 0; j < I; j++) {
            const float a = g[j];
            o[j] = 0.5f * a * (1.0f + tanhf(k * (a + 0.044715f * a * a * a))) * u[j];
        }
    }
}

extern "C" void tl_gemma_decode_step(const i64* plan, float* x, i64 B, const int32_t* block_tables,
                                     i64 max_blocks, const int32_t* window_tables, i64 max_wblocks,
                                     const int32_t* seq_lens, i64 block_size, float eps, float scale,
                                     i64 window, float softcap, int nthreads) {
    using namespace gemma_plan;
    const i64 L = plan[n_layers], hid = plan[hidden], inter = plan[intermediate], H = plan[heads],
              KVH = plan[kv_heads], D = plan[head_dim];
    const int kv = (int)plan[kv_kind];
    const i64 qd = H * D, kvd = KVH * D, qkvd = qd + 2 * kvd;
    const StepBuffers buf = step_buffers(B, hid, qkvd, qd, inter);
    float *h = buf.h, *branch = buf.branch, *qkv = buf.qkv, *attn = buf.attn, *gu = buf.gu, *act = buf.act;
    auto linear = [&](const i64* p, int kind_slot, const float* in, i64 K, float* out, i64 N) {
        tl_linear((int)p[kind_slot], (const void*)p[kind_slot + 1], (const float*)p[kind_slot + 2], in, K, out, N,
                  B, N, K, 0, nthreads);
    };
    for (i64 l = 0; l < L; l++) {
        const i64* p = plan + HEADER_SLOTS + l * LAYER_SLOTS;
        const bool is_local = p[local] != 0;
        tl_rms_norm(x, hid, (const float*)p[input_norm], h, hid, B, hid, eps);
        linear(p, qkv_kind, h, hid, qkv, qkvd);
        if (p[q_norm]) {
            for (i64 b = 0; b < B; b++) {
                float* q = qkv + b * qkvd;
                tl_rms_norm(q, D, (const float*)p[q_norm], q, D, H, D, eps);
                tl_rms_norm(q + qd, D, (const float*)p[k_norm], q + qd, D, KVH, D, eps);
            }
        }
        tl_decode_attention_windowed(qkv, qkvd, qkv + qd, qkvd, qkv + qd + kvd, qkvd, (void*)p[k_cache],
                                     (void*)p[v_cache], kv, is_local ? window_tables : block_tables,
                                     is_local ? max_wblocks : max_blocks, seq_lens, (const float*)p[rope_cos],
                                     (const float*)p[rope_sin], attn, B, H, KVH, D, block_size, scale, nthreads,
                                     is_local ? window : 0, softcap);
        linear(p, o_kind, attn, qd, branch, hid);
        tl_rms_norm(branch, hid, (const float*)p[post_attention_norm], branch, hid, B, hid, eps);
        for (i64 i = 0; i < B * hid; i++) x[i] += branch[i];
        tl_rms_norm(x, hid, (const float*)p[pre_feedforward_norm], h, hid, B, hid, eps);
        linear(p, gate_up_kind, h, hid, gu, 2 * inter);
        tl_gelu_tanh_mul(gu, act, B, inter);
        linear(p, down_kind, act, inter, branch, hid);
        tl_rms_norm(branch, hid, (const float*)p[post_feedforward_norm], branch, hid, B, hid, eps);
        for (i64 i = 0; i < B * hid; i++) x[i] += branch[i];
    }
}
