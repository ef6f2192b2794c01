/* Causal self-attention of one prompt with no cached context (prefill), grouped-query
   heads, float32: out = softmax(scale * q k^T, causal) v per head.

   Scores and the weighted sum of values are two float32 GEMMs (gemm_f32.h) per head and
   block of QB query rows, over keys [0, last query of the block]: the causal upper
   triangle is skipped per block, not per element (its scores are masked to zero weight).
   Softmax per row: max, exp(s - max) (vec_exp.h), sum; the output row is divided by
   the sum. The same operations as the reference attention up to summation order and
   exp's last bits. torch's CPU attention (scaled_dot_product_attention) ran at ~37
   GFLOP/s on the SmolLM shape (512 tokens, 9 heads of 64, one thread); see
   docs/quantized-weights.md for this kernel's figure.

   Threads: the pool's parallel loop over (head, query block). */

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <vector>

#include "gemm_f32.h"
#include "vec_exp.h"

typedef int64_t i64;

extern "C" void tl_parallel_for(i64 n, int nthreads, void (*fn)(void*, i64), void* ctx);

#if defined(__AVX512F__)
namespace {

constexpr i64 QB = 64;  // query rows per task

template <class F>
void parallel_for(i64 n, int nthreads, F&& body) {
    auto tramp = [](void* ctx, i64 i) { (*static_cast<F*>(ctx))(i); };
    tl_parallel_for(n, nthreads, tramp, (void*)&body);
}

/* Row s[0, L) -> exp(scale * s - max) in place; returns the sum. */
float softmax_numerators(float* s, i64 L, float scale) {
    const __m512 sc = _mm512_set1_ps(scale);
    __m512 mx = _mm512_set1_ps(-INFINITY);
    i64 t = 0;
    for (; t + 16 <= L; t += 16) {
        const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(s + t), sc);
        _mm512_storeu_ps(s + t, v);
        mx = _mm512_max_ps(mx, v);
    }
    float m = _mm512_reduce_max_ps(mx);
    for (i64 i = t; i < L; i++) {
        s[i] *= scale;
        m = s[i] > m ? s[i] : m;
    }
    const __m512 mv = _mm512_set1_ps(m);
    __m512 sum = _mm512_setzero_ps();
    for (t = 0; t + 16 <= L; t += 16) {
        const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + t), mv));
        _mm512_storeu_ps(s + t, e);
        sum = _mm512_add_ps(sum, e);
    }
    if (t < L) {
        const __mmask16 mk = (__mmask16)((1u << (L - t)) - 1);
        const __m512 e = _mm512_maskz_mov_ps(mk, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, s + t), mv)));
        _mm512_mask_storeu_ps(s + t, mk, e);
        sum = _mm512_add_ps(sum, e);
    }
    return _mm512_reduce_add_ps(sum);
}

}  // namespace
#endif

extern "C" int tl_prefill_attention(const float* q, i64 ldq, const float* k, i64 ldk, const float* v, i64 ldv,
                                    float* out, i64 ldo, i64 n, i64 H, i64 KVH, i64 D, float scale,
                                    int nthreads) {
#if defined(__AVX512F__)
    /* keys per kv head contiguous [n, D]; values transposed [D, n] (the second GEMM's weight rows) */
    thread_local std::vector<float> kbuf, vbuf;  // the caller's, reused from layer to layer
    if (kbuf.size() < (size_t)(KVH * n * D)) { kbuf.resize((size_t)(KVH * n * D)); vbuf.resize((size_t)(KVH * n * D)); }
    float* const kc = kbuf.data();  // the workers see these pointers, not their own thread_local buffers
    float* const vt = vbuf.data();
    parallel_for(KVH, nthreads, [&](i64 g) {
        for (i64 j = 0; j < n; j++) {
            memcpy(kc + (g * n + j) * D, k + j * ldk + g * D, D * sizeof(float));
            for (i64 d = 0; d < D; d++) vt[(g * D + d) * n + j] = v[j * ldv + g * D + d];
        }
    });
    const i64 nqb = (n + QB - 1) / QB, group = H / KVH;
    parallel_for(H * nqb, nthreads, [&](i64 task) {
        const i64 h = task / nqb, r0 = (task % nqb) * QB, rows = n - r0 < QB ? n - r0 : QB, L = r0 + rows;
        const i64 g = h / group;
        thread_local std::vector<float> xt, s, pt;
        const size_t need_x = (size_t)(gemm::panels(rows) * D * 16 + 16), need_p = (size_t)(gemm::panels(rows) * L * 16 + 16);
        if (xt.size() < need_x) xt.resize(need_x);
        if (s.size() < (size_t)(rows * L)) s.resize((size_t)(rows * L));
        if (pt.size() < need_p) pt.resize(need_p);
        float* xa = (float*)(((uintptr_t)xt.data() + 63) & ~(uintptr_t)63);
        float* pa = (float*)(((uintptr_t)pt.data() + 63) & ~(uintptr_t)63);
        gemm::pack_x(q + r0 * ldq + h * D, ldq, rows, D, xa);
        gemm::multiply(xa, rows, kc + g * n * D, D, L, D, s.data(), L, 0);
        float inv[QB];
        for (i64 m = 0; m < rows; m++) {
            float* row = s.data() + m * L;
            const i64 len = r0 + m + 1;  // keys 0..query
            inv[m] = 1.f / softmax_numerators(row, len, scale);
            memset(row + len, 0, (L - len) * sizeof(float));
        }
        gemm::pack_x(s.data(), L, rows, L, pa);
        float* o = out + r0 * ldo + h * D;
        gemm::multiply(pa, rows, vt + g * D * n, n, D, L, o, ldo, 0);
        for (i64 m = 0; m < rows; m++)
            for (i64 d = 0; d < D; d++) o[m * ldo + d] *= inv[m];
    });
    return 1;
#else
    (void)q; (void)ldq; (void)k; (void)ldk; (void)v; (void)ldv; (void)out; (void)ldo; (void)n; (void)H;
    (void)KVH; (void)D; (void)scale; (void)nthreads;
    return 0;  // the caller uses torch's attention
#endif
}
