/* ------------------------------------------------------------------ Gemma decode step
   Every layer of one Gemma 2/3 decode step in one call (see tl_decode_step for why),
   as models/gemma.py computes it: four RMSNorms per layer whose weights are the (1 + w)
   multipliers, the "post" ones applied to the branch before the residual add; optional
   per-head q/k norms; GELU(tanh)-gated MLP; local layers attend over the last `window`
   positions of their own cache (engine/window_blocks.py), with their own RoPE tables;
   attention scores soft-capped when `softcap` > 0.

   `plan` is an int64 array written once by the model (GemmaCacheState.decode_plan):
     header: n_layers, hidden, intermediate, heads, kv_heads, head_dim, KV cache kind
     per layer (GEMMA_PLAN_LAYER slots): local (0/1), cos*, sin*, input_norm*,
       post_attention_norm*, pre_ffn_norm*, post_ffn_norm*, q_norm* (0 = none), k_norm*,
       qkv kind, w*, d*, o kind, w*, d*, gate_up kind, w*, d*, down kind, w*, d*,
       k_cache*, v_cache*
   Global layers walk `block_tables`, local ones `window_tables` (blocks a sequence no
   longer holds point at a scratch block and are never read).
   x [B, hidden] holds the scaled token embeddings and receives the last hidden states. */

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

typedef int64_t i64;

extern "C" void tl_linear(int kind, const void* w, const float* d, const float* x, i64 ldx, float* y,
                          i64 ldy, i64 M, i64 N, i64 K, int accumulate, int nthreads);
extern "C" void tl_rms_norm(const float* x, i64 ldx, const float* w, float* out, i64 ldo,
                            i64 M, i64 N, float eps);
extern "C" void tl_decode_attention_windowed(
        const float* q, i64 ldq, const float* k_new, i64 ldk, const float* v_new, i64 ldv,
        void* k_cache, void* v_cache, int kv_kind,
        const int32_t* block_tables, i64 max_blocks, const int32_t* seq_lens,
        const float* cos_table, const float* sin_table,
        float* out, i64 B, i64 H, i64 KVH, i64 D, i64 block_size, float scale, int nthreads,
        i64 window, float softcap);

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

#define GEMMA_PLAN_HEADER 7
#define GEMMA_PLAN_LAYER 23

extern "C" void tl_gemma_decode_step(const i64* plan, float* x, i64 B, const int32_t* block_tables,
                                     i64 max_blocks, const int32_t* window_tables, i64 max_wblocks,
                                     const int32_t* seq_lens, i64 block_size, float eps, float scale,
                                     i64 window, float softcap, int nthreads) {
    const i64 n_layers = plan[0], hid = plan[1], inter = plan[2], H = plan[3], KVH = plan[4], D = plan[5];
    const int kv_kind = (int)plan[6];
    const i64 qd = H * D, kvd = KVH * D, qkvd = qd + 2 * kvd;
    thread_local std::vector<float> scratch;
    const size_t need = (size_t)(B * (2 * hid + qkvd + qd + 3 * inter));
    if (scratch.size() < need) scratch.resize(need);
    float* h = scratch.data();
    float* branch = h + B * hid;
    float* qkv = branch + B * hid;
    float* attn = qkv + B * qkvd;
    float* gu = attn + B * qd;
    float* act = gu + B * 2 * inter;
    for (i64 l = 0; l < n_layers; l++) {
        const i64* p = plan + GEMMA_PLAN_HEADER + l * GEMMA_PLAN_LAYER;
        const bool local = p[0] != 0;
        tl_rms_norm(x, hid, (const float*)p[3], h, hid, B, hid, eps);
        tl_linear((int)p[9], (const void*)p[10], (const float*)p[11], h, hid, qkv, qkvd, B, qkvd, hid, 0, nthreads);
        if (p[7]) {
            for (i64 b = 0; b < B; b++) {
                float* q = qkv + b * qkvd;
                tl_rms_norm(q, D, (const float*)p[7], q, D, H, D, eps);
                tl_rms_norm(q + qd, D, (const float*)p[8], q + qd, D, KVH, D, eps);
            }
        }
        tl_decode_attention_windowed(qkv, qkvd, qkv + qd, qkvd, qkv + qd + kvd, qkvd, (void*)p[21], (void*)p[22],
                                     kv_kind, local ? window_tables : block_tables, local ? max_wblocks : max_blocks,
                                     seq_lens, (const float*)p[1], (const float*)p[2], attn, B, H, KVH, D,
                                     block_size, scale, nthreads, local ? window : 0, softcap);
        tl_linear((int)p[12], (const void*)p[13], (const float*)p[14], attn, qd, branch, hid, B, hid, qd, 0, nthreads);
        tl_rms_norm(branch, hid, (const float*)p[4], branch, hid, B, hid, eps);
        for (i64 i = 0; i < B * hid; i++) x[i] += branch[i];
        tl_rms_norm(x, hid, (const float*)p[5], h, hid, B, hid, eps);
        tl_linear((int)p[15], (const void*)p[16], (const float*)p[17], h, hid, gu, 2 * inter, B, 2 * inter, hid, 0,
                  nthreads);
        tl_gelu_tanh_mul(gu, act, B, inter);
        tl_linear((int)p[18], (const void*)p[19], (const float*)p[20], act, inter, branch, hid, B, hid, inter, 0,
                  nthreads);
        tl_rms_norm(branch, hid, (const float*)p[6], branch, hid, B, hid, eps);
        for (i64 i = 0; i < B * hid; i++) x[i] += branch[i];
    }
}
