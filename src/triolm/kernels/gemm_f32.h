/* Float32 GEMM on an expanded chunk of weight rows: y[m, n] (+)= sum_k x[m, k] * W[n, k].

   The x-rows are packed once per call into panels of 16 rows, transposed (`pack_x`:
   panel p holds x[16p + i, k] at [p][k][i], zero past M). A register tile then takes NR
   weight rows (row-major, as the block decoders write them) by MV panels: per column k,
   MV vector loads of x, NR broadcasts of W[n, k], MV * NR FMAs into MV * NR accumulators,
   each a column of 16 outputs. Two loads per two FMAs at most, no horizontal sums, and no
   transposition of the weights, whose decoders stay as they are.

   Every y[m, n] is summed over k in order (per column slice of KS_GEMM, the slices'
   sums then added in y): float32 products of the decoded weights, so the result differs
   from the dequantized float32 model only in summation order.

   Measured on one core (thread CPU time, loaded machine; the FMA peak is ~250 GFLOP/s):
   512 x-rows, 48 weight rows, K = 576 / 3072: 238 / 253 GFLOP/s with MV = 3, NR = 8, where
   the dot-product tiles (8 x-rows by 2 weight rows, horizontal sums) ran at 130-150; 16
   x-rows (MV = 1): 214 / 223. */

#pragma once
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>

namespace gemm {

typedef int64_t i64;

/* Columns per slice: a 3-panel x group (48 x K floats) and a 32-row weight chunk of one
   slice stay in L2 together. */
#ifndef KS_GEMM
#define KS_GEMM 2048
#endif

/* Panels of 16 transposed x-rows: out[(p * K + k) * 16 + i] = x[(16p + i) * ldx + k], 0 past M.
   `out` holds panels(M) * K * 16 floats, 64-byte aligned. */
static inline i64 panels(i64 M) { return (M + 15) / 16; }

static inline void pack_x(const float* x, i64 ldx, i64 M, i64 K, float* out) {
    for (i64 p = 0; p < panels(M); p++) {
        float* o = out + p * K * 16;
        const i64 rows = M - 16 * p < 16 ? M - 16 * p : 16;
        if (rows < 16) memset(o, 0, K * 16 * sizeof(float));
        i64 k = 0;
        if (rows == 16) {
            /* 16 x 16 blocks through registers: gather a column of 16 rows at once */
            const __m512i idx = _mm512_mullo_epi32(_mm512_set1_epi32((int)ldx),
                                                   _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
            const float* xp = x + 16 * p * ldx;
            if (ldx * 16 < (i64)1 << 31)
                for (; k < K; k++)
                    _mm512_store_ps(o + k * 16, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), (__mmask16)0xFFFF, idx, xp + k, 4));
        }
        for (; k < K; k++)
            for (i64 i = 0; i < rows; i++) o[k * 16 + i] = x[(16 * p + i) * ldx + k];
    }
}

/* MV panels (x-rows 16 * MV from `xt`, panels `ps` floats apart) by NR weight rows (`w`,
   rows `ldw` floats apart), columns [0, kc). y[m, n] for m < mrows (of the MV * 16), n < NR. */
template <int MV, int NR>
static inline void tile(const float* xt, i64 ps, const float* w, i64 ldw, i64 kc, float* y, i64 ldy, i64 mrows,
                        int acc) {
    __m512 c[NR][MV];
    for (int n = 0; n < NR; n++)
        for (int v = 0; v < MV; v++) c[n][v] = _mm512_setzero_ps();
    const float* wp[NR];
    for (int n = 0; n < NR; n++) wp[n] = w + n * ldw;
    for (i64 k = 0; k < kc; k++) {
        __m512 xv[MV];
        for (int v = 0; v < MV; v++) xv[v] = _mm512_load_ps(xt + v * ps + k * 16);
        for (int n = 0; n < NR; n++) {
            const __m512 b = _mm512_set1_ps(wp[n][k]);
            for (int v = 0; v < MV; v++) c[n][v] = _mm512_fmadd_ps(b, xv[v], c[n][v]);
        }
    }
    const __m512i idx = _mm512_mullo_epi32(_mm512_set1_epi32((int)ldy),
                                           _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    for (int v = 0; v < MV; v++) {
        const i64 left = mrows - 16 * v;
        if (left <= 0) break;
        const __mmask16 mk = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        for (int n = 0; n < NR; n++) {
            float* yp = y + 16 * v * ldy + n;
            __m512 r = c[n][v];
            if (acc) r = _mm512_add_ps(r, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, idx, yp, 4));
            _mm512_mask_i32scatter_ps(yp, mk, idx, r, 4);
        }
    }
}

typedef void (*tile_fn)(const float*, i64, const float*, i64, i64, float*, i64, i64, int);
template <int MV>
static inline tile_fn tile_of(int nr) {
    static const tile_fn T[8] = {tile<MV, 1>, tile<MV, 2>, tile<MV, 3>, tile<MV, 4>,
                                 tile<MV, 5>, tile<MV, 6>, tile<MV, 7>, tile<MV, 8>};
    return T[nr - 1];
}

/* y[m, n] (+)= sum_k x[m, k] * w[n, k] for m < M, n < rows: `xt` from pack_x (M rows, K
   columns), w float32 rows `ldw` floats apart. Single thread. */
static inline void multiply(const float* xt, i64 M, const float* w, i64 ldw, i64 rows, i64 K, float* y, i64 ldy,
                            int acc) {
    const i64 P = panels(M), ps = K * 16;
    for (i64 k0 = 0; k0 < K; k0 += KS_GEMM) {
        const i64 kc = K - k0 < KS_GEMM ? K - k0 : KS_GEMM;
        const int a = acc || k0 > 0;
        for (i64 p = 0; p < P;) {
            const int mv = P - p >= 3 ? 3 : (int)(P - p);
            const i64 mrows = M - 16 * p < 16 * mv ? M - 16 * p : 16 * mv;
            const float* xp = xt + p * ps + k0 * 16;
            float* yp = y + 16 * p * ldy;
            for (i64 n = 0; n < rows; n += 8) {
                const int nr = rows - n < 8 ? (int)(rows - n) : 8;
                const tile_fn f = mv == 3 ? tile_of<3>(nr) : mv == 2 ? tile_of<2>(nr) : tile_of<1>(nr);
                f(xp, ps, w + n * ldw + k0, ldw, kc, yp + n, ldy, mrows, a);
            }
            p += mv;
        }
    }
}

}  // namespace gemm
#endif
