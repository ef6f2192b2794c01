/* Mixture-of-experts feed-forward (a MoE decoder's decode step is tl_decode_step).

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

   table: an int64 plan written once by model/moe.py (layout: decode_plan.h, namespace
   moe_plan), a header then one row per expert.                                       */

#include <math.h>
#include <string.h>
#include <vector>

#include "decode_plan.h"
#include "kernel_api.h"

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
    using namespace moe_plan;
    const i64 E = moe[experts], k = moe[top_k], hid = moe[hidden], ff = moe[width];
    const int renorm = (int)moe[renormalize];
    thread_local std::vector<float> logits_v, weights_v, xb_v, gu_v, act_v, yb_v, acc_v;
    thread_local std::vector<int32_t> ids_v, count_v, start_v, rows_v;
    if ((i64)logits_v.size() < B * E) logits_v.resize(B * E);
    if ((i64)ids_v.size() < B * k) { ids_v.resize(B * k); weights_v.resize(B * k); rows_v.resize(B * k); }
    if ((i64)count_v.size() < E + 1) { count_v.resize(E + 1); start_v.resize(E + 1); }
    if ((i64)acc_v.size() < B * hid) acc_v.resize(B * hid);
    float* logits = logits_v.data();
    tl_linear((int)moe[router_kind], (const void*)moe[router_w], (const float*)moe[router_d], h, ldh, logits, E, B, E, hid, 0, nthreads);
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
        const i64* ex = moe + HEADER_SLOTS + e * EXPERT_SLOTS;
        tl_linear((int)ex[gate_up_kind], (const void*)ex[gate_up_w], (const float*)ex[gate_up_d], xb_v.data(), hid, gu_v.data(), 2 * ff,
                  n, 2 * ff, hid, 0, nthreads);
        tl_silu_mul(gu_v.data(), act_v.data(), n, ff);
        tl_linear((int)ex[down_kind], (const void*)ex[down_w], (const float*)ex[down_d], act_v.data(), ff, yb_v.data(), hid,
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
