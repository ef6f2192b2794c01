/* Mixture-of-experts feed-forward, and the whole decode step of a MoE decoder.

   `tl_moe_ffn` takes the normalised hidden states of B tokens and adds their sparse MLP:
   router logits (one linear), softmax over all experts, the top k by probability (ties
   to the lower index), optionally renormalised to sum to 1, then tokens grouped by
   expert (counting sort) so each expert's weights stream from memory once per call for
   every token routed to it: gather the tokens' rows, gate|up linear, SiLU(gate) * up,
   down linear, and add weight * result into a zeroed accumulator per token, experts in
   index order (Hugging Face's order), which is finally added to the residual stream.
   Every weight is any kind `tl_linear` reads (float32, float16, GGUF blocks, a W_PARTS
   stack), so quantized experts run on the file's bytes.

   Threads: inside each linear (over chunks of output rows), as for dense layers.

   table (int64, built by model/moe.py, SparseMoe.table):
     [0] experts, [1] top_k, [2] renormalise top-k (0/1), [3] hidden, [4] expert width,
     [5..7] router kind, w*, d*, then per expert MOE_EXPERT slots:
     gate_up kind, w*, d*, down kind, w*, d*                                          */

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <vector>

typedef int64_t i64;

extern "C" void tl_linear(int kind, const void* w, const float* d, const float* x, i64 ldx, float* y,
                          i64 ldy, i64 M, i64 N, i64 K, int accumulate, int nthreads);
extern "C" void tl_silu_mul(const float* gu, float* out, i64 M, i64 I);
extern "C" void tl_rms_norm(const float* x, i64 ldx, const float* w, float* out, i64 ldo,
                            i64 M, i64 N, float eps);
extern "C" void tl_decode_attention(
        const float* q, i64 ldq, const float* k_new, i64 ldk, const float* v_new, i64 ldv,
        void* k_cache, void* v_cache, int kv_kind,
        const int32_t* block_tables, i64 max_blocks, const int32_t* seq_lens,
        const float* cos_table, const float* sin_table, int rope,
        float* out, i64 B, i64 H, i64 KVH, i64 D, i64 block_size, float scale, int nthreads);

#define MOE_HEADER 8
#define MOE_EXPERT 6

/* Top-k routing of B rows of router logits [B, E] -> expert ids and weights [B, k]. */
static void route(const float* logits, i64 B, i64 E, i64 k, int renorm, int32_t* ids, float* weights) {
    std::vector<float> p(E);
    std::vector<char> taken(E);
    for (i64 b = 0; b < B; b++) {
        const float* l = logits + b * E;
        float mx = l[0];
        for (i64 e = 1; e < E; e++) mx = l[e] > mx ? l[e] : mx;
        float sum = 0.f;
        for (i64 e = 0; e < E; e++) { p[e] = expf(l[e] - mx); sum += p[e]; }
        for (i64 e = 0; e < E; e++) { p[e] /= sum; taken[e] = 0; }
        float picked = 0.f;
        for (i64 j = 0; j < k; j++) {
            i64 best = -1;
            for (i64 e = 0; e < E; e++)
                if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
            taken[best] = 1;
            ids[b * k + j] = (int32_t)best;
            weights[b * k + j] = p[best];
            picked += p[best];
        }
        if (renorm)
            for (i64 j = 0; j < k; j++) weights[b * k + j] /= picked;
    }
}

extern "C" void tl_moe_ffn(const i64* moe, const float* h, i64 ldh, float* out, i64 ldo, i64 B, int nthreads) {
    const i64 E = moe[0], k = moe[1], hid = moe[3], ff = moe[4];
    const int renorm = (int)moe[2];
    thread_local std::vector<float> logits_v, weights_v, xb_v, gu_v, act_v, yb_v, acc_v;
    thread_local std::vector<int32_t> ids_v, count_v, start_v, rows_v;
    if ((i64)logits_v.size() < B * E) logits_v.resize(B * E);
    if ((i64)ids_v.size() < B * k) { ids_v.resize(B * k); weights_v.resize(B * k); rows_v.resize(B * k); }
    if ((i64)count_v.size() < E + 1) { count_v.resize(E + 1); start_v.resize(E + 1); }
    if ((i64)acc_v.size() < B * hid) acc_v.resize(B * hid);
    float* logits = logits_v.data();
    tl_linear((int)moe[5], (const void*)moe[6], (const float*)moe[7], h, ldh, logits, E, B, E, hid, 0, nthreads);
    route(logits, B, E, k, renorm, ids_v.data(), weights_v.data());

    /* counting sort of the B * k assignments by expert; within an expert, by token */
    int32_t* count = count_v.data();
    int32_t* start = start_v.data();
    memset(count, 0, (E + 1) * sizeof(int32_t));
    i64 most = 0;
    for (i64 i = 0; i < B * k; i++) count[ids_v[i]]++;
    start[0] = 0;
    for (i64 e = 0; e < E; e++) { start[e + 1] = start[e] + count[e]; most = count[e] > most ? count[e] : most; }
    for (i64 e = 0; e < E; e++) count[e] = start[e];
    for (i64 i = 0; i < B * k; i++) rows_v[count[ids_v[i]]++] = (int32_t)i;  // assignment b * k + j

    if ((i64)xb_v.size() < most * hid) { xb_v.resize(most * hid); yb_v.resize(most * hid); }
    if ((i64)gu_v.size() < most * 2 * ff) { gu_v.resize(most * 2 * ff); act_v.resize(most * ff); }
    float* acc = acc_v.data();
    memset(acc, 0, B * hid * sizeof(float));
    for (i64 e = 0; e < E; e++) {
        const i64 n = start[e + 1] - start[e];
        if (n == 0) continue;
        const int32_t* rows = rows_v.data() + start[e];
        for (i64 r = 0; r < n; r++) memcpy(xb_v.data() + r * hid, h + (rows[r] / k) * ldh, hid * sizeof(float));
        const i64* ex = moe + MOE_HEADER + e * MOE_EXPERT;
        tl_linear((int)ex[0], (const void*)ex[1], (const float*)ex[2], xb_v.data(), hid, gu_v.data(), 2 * ff,
                  n, 2 * ff, hid, 0, nthreads);
        tl_silu_mul(gu_v.data(), act_v.data(), n, ff);
        tl_linear((int)ex[3], (const void*)ex[4], (const float*)ex[5], act_v.data(), ff, yb_v.data(), hid,
                  n, hid, ff, 0, nthreads);
        for (i64 r = 0; r < n; r++) {
            const float w = weights_v[rows[r]];
            float* a = acc + (rows[r] / k) * hid;
            const float* y = yb_v.data() + r * hid;
            for (i64 j = 0; j < hid; j++) a[j] += y[j] * w;
        }
    }
    for (i64 b = 0; b < B; b++) {
        float* o = out + b * ldo;
        const float* a = acc + b * hid;
        for (i64 j = 0; j < hid; j++) o[j] += a[j];
    }
}

/* ------------------------------------------------------------------ whole decode step
   `tl_decode_step` (triolm_kernels.cpp) with a sparse MLP where a layer has one. plan:

     header (PLAN_HEADER): n_layers, hidden, intermediate, heads, kv_heads, head_dim,
       cos*, sin*, KV cache kind
     per layer (MOE_PLAN_LAYER slots): input_norm*, post_norm*, qkv kind, w*, d*,
       qkv bias* (0 = none), q_norm* (0 = none), k_norm*, o kind, w*, d*, gate_up kind,
       w*, d*, down kind, w*, d* (dense layers), k_cache*, v_cache*, moe table* (0 = dense)

   x [B, hidden] holds the token embeddings and receives the last hidden states. */

#define PLAN_HEADER 9
#define MOE_PLAN_LAYER 20

extern "C" void tl_moe_decode_step(const i64* plan, float* x, i64 B, const int32_t* block_tables,
                                   i64 max_blocks, const int32_t* seq_lens, i64 block_size,
                                   float eps, float scale, int nthreads) {
    const i64 n_layers = plan[0], hid = plan[1], inter = plan[2], H = plan[3], KVH = plan[4], D = plan[5];
    const float* cos_t = (const float*)plan[6];
    const float* sin_t = (const float*)plan[7];
    const int kv_kind = (int)plan[8];
    const i64 qd = H * D, kvd = KVH * D, qkvd = qd + 2 * kvd;
    thread_local std::vector<float> scratch;
    const size_t need = (size_t)(B * (hid + qkvd + qd + 3 * inter));
    if (scratch.size() < need) scratch.resize(need);
    float* h = scratch.data();
    float* qkv = h + B * hid;
    float* attn = qkv + B * qkvd;
    float* gu = attn + B * qd;
    float* act = gu + B * 2 * inter;
    for (i64 l = 0; l < n_layers; l++) {
        const i64* p = plan + PLAN_HEADER + l * MOE_PLAN_LAYER;
        tl_rms_norm(x, hid, (const float*)p[0], h, hid, B, hid, eps);
        tl_linear((int)p[2], (const void*)p[3], (const float*)p[4], h, hid, qkv, qkvd, B, qkvd, hid, 0, nthreads);
        if (p[5]) {
            const float* bias = (const float*)p[5];
            for (i64 b = 0; b < B; b++)
                for (i64 j = 0; j < qkvd; j++) qkv[b * qkvd + j] += bias[j];
        }
        if (p[6]) {
            for (i64 b = 0; b < B; b++) {
                float* q = qkv + b * qkvd;
                tl_rms_norm(q, D, (const float*)p[6], q, D, H, D, eps);
                tl_rms_norm(q + qd, D, (const float*)p[7], q + qd, D, KVH, D, eps);
            }
        }
        tl_decode_attention(qkv, qkvd, qkv + qd, qkvd, qkv + qd + kvd, qkvd, (void*)p[17], (void*)p[18], kv_kind,
                            block_tables, max_blocks, seq_lens, cos_t, sin_t, 1, attn, B, H, KVH, D,
                            block_size, scale, nthreads);
        tl_linear((int)p[8], (const void*)p[9], (const float*)p[10], attn, qd, x, hid, B, hid, qd, 1, nthreads);
        tl_rms_norm(x, hid, (const float*)p[1], h, hid, B, hid, eps);
        if (p[19]) {
            tl_moe_ffn((const i64*)p[19], h, hid, x, hid, B, nthreads);
            continue;
        }
        tl_linear((int)p[11], (const void*)p[12], (const float*)p[13], h, hid, gu, 2 * inter, B, 2 * inter, hid, 0,
                  nthreads);
        tl_silu_mul(gu, act, B, inter);
        tl_linear((int)p[14], (const void*)p[15], (const float*)p[16], act, inter, x, hid, B, hid, inter, 1, nthreads);
    }
}
