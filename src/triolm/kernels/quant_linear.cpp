/* Linear layers on GGUF block weights (quant_blocks.h), and stacked weights (W_PARTS).

   y[m, n] (+)= sum_k x[m, k] * W[n, k] with W rows stored as the file stores them:
   K / QK blocks per row, row n at w + n * (K / QK) * BYTES.

   Few x-rows (decode): each 32-value group of a weight row is decoded in registers and
   feeds one FMA per x-row, accumulating in float32 — the weights stream from memory once
   per call whatever the type. Many x-rows: each chunk of weight rows is expanded once
   into a float32 buffer that stays in L2, then multiplied with the x-rows packed once per
   call (gemm_f32.h), so decoding is not repeated per group of x-rows. Without AVX-512 the
   portable decoders expand the chunk in column slices for triolm_kernels.cpp's float32
   tiles (`tl_linear` on that buffer).

   Threads: the caller's parallel loop (`tl_parallel_for`, triolm_kernels.cpp) over chunks
   of NCHUNK_Q weight rows; a stacked weight's parts share one loop. */

#include <stdint.h>
#include <string.h>
#include <vector>

#include "gemm_f32.h"
#include "iq4_blocks.h"
#include "quant_blocks.h"

typedef int64_t i64;

extern "C" void tl_parallel_for(i64 n, int nthreads, void (*fn)(void*, i64), void* ctx);
extern "C" void tl_linear(int kind, const void* w, const float* d, const float* x, i64 ldx, float* y,
                          i64 ldy, i64 M, i64 N, i64 K, int accumulate, int nthreads);
extern "C" void tl_expand_rows(int kind, const void* w, const float* d, i64 K, i64 n0, i64 n1, float* out);

namespace {

enum { W_F32 = 0, W_F16 = 1, W_Q8_0 = 2 };  // the kinds triolm_kernels.cpp computes itself
constexpr i64 NCHUNK_Q = 32;
/* Columns per slice of an expanded chunk (many x-rows): 8 x-rows x KC floats = 8 KB. On
   a 512-row prompt, one thread (GFLOP/s, loaded machine): K = 576 ran at 83 unsliced,
   K = 1536 at 28 and K = 3072 at 21 (the x-rows' span left L1); MKL's GEMM, 22-31. */
#ifndef KC_MAX
#define KC_MAX 1024
#endif
#ifndef KC
#define KC 512
#endif
/* The slice width for rows of K columns: K itself up to KC_MAX, else KC. */
static inline i64 slice_cols(i64 K) { return K <= KC_MAX ? K : KC; }

/* Up to this many x-rows are computed from registers; more expand chunk by chunk.
   Measured on the SmolLM-shape model's matrices (see docs/quantized-weights.md). */
#ifndef INREG_MAX_ROWS
#define INREG_MAX_ROWS 16
#endif
i64 g_inreg_max_rows = INREG_MAX_ROWS;
/* The K-quants' in-register decoding costs more per x-row pass: beyond 8 x-rows (two
   passes) the expanded chunk + packed GEMM is ahead. One thread, thread CPU time (ms):
   Q4_K 16384x3072, 16 rows 23.6 in registers / 14.2 packed, 8 rows 12.1 / 12.4; Q6_K
   3072x8192, 16 rows 11.2 / 7.0. The 32-value types stay in registers to 16 rows
   (Q4_0 1536x576, 16 rows: 0.221 / 0.235; 8 rows 0.114 / 0.256). */
static inline i64 inreg_max_rows(int kind) {
    const bool kquant = kind >= qb::W_Q2_K && kind <= qb::W_Q6_K;
    return kquant && g_inreg_max_rows > 8 ? 8 : g_inreg_max_rows;
}

template <class F>
void parallel_for(i64 n, int nthreads, F&& body) {
    auto tramp = [](void* ctx, i64 i) { (*static_cast<F*>(ctx))(i); };
    tl_parallel_for(n, nthreads, tramp, (void*)&body);
}

#if defined(__AVX512F__)
#ifndef QPF_AHEAD
#define QPF_AHEAD 8192
#endif
/* Every cache line of the block QPF_AHEAD bytes ahead. Without it the blocks stream at
   a fraction of the bandwidth. Measured, one x-row, one thread (us): 16384x1536 Q4_K
   15458 with one line per block 4 blocks ahead, 1332 with every line 2 KB ahead, 1123
   8 KB ahead (16 KB: 1166); 49152x576 Q8_0 blocks 2320 / 1497 (4 KB) / 947 (8 KB),
   the repacked Q8_0 kernel 922; BF16 6684 / 2294 / 1707. */
template <class B>
static inline void prefetch_block(const uint8_t* blk) {
    const char* p = (const char*)blk + QPF_AHEAD;
    /* Blocks of up to 64 bytes: a line holds the end of at least one of them, so the
       block's last byte alone covers every line (one prefetch per block, not two). */
    if (B::BYTES > 64)
        for (int off = 0; off < B::BYTES - 1; off += 64) _mm_prefetch(p + off, _MM_HINT_T0);
    _mm_prefetch(p + B::BYTES - 1, _MM_HINT_T0);
}

/* MR x-rows by NR weight rows; lo and hi halves of each group accumulate separately
   (two independent FMA chains per pair, which keeps the one-row case off the FMA
   latency). */
template <class B, int MR, int NR>
void tile_blocks(const uint8_t* w, i64 row_bytes, i64 K, const float* x, i64 ldx, float* y, i64 ldy, int acc) {
    __m512 s[MR][NR][2];
    for (int m = 0; m < MR; m++)
        for (int n = 0; n < NR; n++) s[m][n][0] = s[m][n][1] = _mm512_setzero_ps();
    const i64 nb = K / B::QK;
    for (i64 b = 0; b < nb; b++) {
        for (int n = 0; n < NR; n++) prefetch_block<B>(w + n * row_bytes + b * B::BYTES);
        for (int n = 0; n < NR; n++)
            qb::each_group<B>(w + n * row_bytes + b * B::BYTES, [&](int j, __m512 lo, __m512 hi) {
                const i64 k = b * B::QK + j * 32;
                for (int m = 0; m < MR; m++) {
                    s[m][n][0] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x + m * ldx + k), s[m][n][0]);
                    s[m][n][1] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + m * ldx + k + 16), s[m][n][1]);
                }
            });
    }
    for (int m = 0; m < MR; m++)
        for (int n = 0; n < NR; n++) {
            const float v = _mm512_reduce_add_ps(_mm512_add_ps(s[m][n][0], s[m][n][1]));
            y[m * ldy + n] = acc ? y[m * ldy + n] + v : v;
        }
}

/* One x-row, NR weight rows of a CODES type: per block, sum q * x, then scale once.
   sx[b] is the sum of x over block b (for offset types, CODES == 2). */
template <class B, int NR>
void tile_codes_1(const uint8_t* w, i64 row_bytes, i64 K, const float* x, const float* sx, float* y, int acc) {
    __m512 s[NR];
    float off[NR];
    for (int n = 0; n < NR; n++) { s[n] = _mm512_setzero_ps(); off[n] = 0.f; }
    const i64 nb = K / 32;
    for (i64 b = 0; b < nb; b++) {
        const __m512 x0 = _mm512_loadu_ps(x + b * 32), x1 = _mm512_loadu_ps(x + b * 32 + 16);
        for (int n = 0; n < NR; n++) {
            const uint8_t* blk = w + n * row_bytes + b * B::BYTES;
            prefetch_block<B>(blk);
            __m512 qlo, qhi;
            float d, m;
            B::codes(blk, qlo, qhi, d, m);
            const __m512 dot = _mm512_fmadd_ps(qhi, x1, _mm512_mul_ps(qlo, x0));
            s[n] = _mm512_fmadd_ps(dot, _mm512_set1_ps(d), s[n]);
            if (B::CODES == 2) off[n] += m * sx[b];
        }
    }
    for (int n = 0; n < NR; n++) {
        const float v = _mm512_reduce_add_ps(s[n]) + off[n];
        y[n] = acc ? y[n] + v : v;
    }
}

/* One x-row, NR weight rows of a K-quant with `dot1`. sx: sums of x per 32 values. */
template <class B, int NR>
void tile_kdot_1(const uint8_t* w, i64 row_bytes, i64 K, const float* x, const float* sx, float* y, int acc) {
    __m512 a0[NR], a1[NR];
    __m256 off[NR];
    for (int n = 0; n < NR; n++) { a0[n] = a1[n] = _mm512_setzero_ps(); off[n] = _mm256_setzero_ps(); }
    const i64 nb = K / B::QK;
    for (i64 b = 0; b < nb; b++)
        for (int n = 0; n < NR; n++) {
            const uint8_t* blk = w + n * row_bytes + b * B::BYTES;
            prefetch_block<B>(blk);
            B::dot1(blk, x + b * B::QK, sx + b * (B::QK / 32), a0[n], a1[n], off[n]);
        }
    for (int n = 0; n < NR; n++) {
        const __m256 o = off[n];
        const float v = _mm512_reduce_add_ps(_mm512_add_ps(a0[n], a1[n])) -
                        _mm512_reduce_add_ps(_mm512_insertf32x8(_mm512_setzero_ps(), o, 0));
        y[n] = acc ? y[n] + v : v;
    }
}

template <class B>
void expand_block_rows(const uint8_t* w, i64 rows, i64 K, float* out) {
    const i64 nb = rows * (K / B::QK);
    for (i64 b = 0; b < nb; b++)
        qb::each_group<B>(w + b * B::BYTES, [&](int j, __m512 lo, __m512 hi) {
            _mm512_storeu_ps(out + b * B::QK + j * 32, lo);
            _mm512_storeu_ps(out + b * B::QK + j * 32 + 16, hi);
        });
}
#else
template <class B, int MR, int NR>
void tile_blocks(const uint8_t* w, i64 row_bytes, i64 K, const float* x, i64 ldx, float* y, i64 ldy, int acc) {
    float s[MR][NR];
    for (int m = 0; m < MR; m++) for (int n = 0; n < NR; n++) s[m][n] = 0.f;
    float v[32];
    const i64 nb = K / B::QK;
    for (int n = 0; n < NR; n++)
        for (i64 b = 0; b < nb; b++)
            for (int j = 0; j < B::QK / 32; j++) {
                B::group(w + n * row_bytes + b * B::BYTES, j, v);
                const i64 k = b * B::QK + j * 32;
                for (int m = 0; m < MR; m++)
                    for (int i = 0; i < 32; i++) s[m][n] += v[i] * x[m * ldx + k + i];
            }
    for (int m = 0; m < MR; m++)
        for (int n = 0; n < NR; n++) y[m * ldy + n] = acc ? y[m * ldy + n] + s[m][n] : s[m][n];
}

template <class B>
void expand_block_rows(const uint8_t* w, i64 rows, i64 K, float* out) {
    const i64 nb = rows * (K / B::QK);
    for (i64 b = 0; b < nb; b++)
        for (int j = 0; j < B::QK / 32; j++) B::group(w + b * B::BYTES, j, out + b * B::QK + j * 32);
}
#endif

/* Rows of a block weight as float32, slice by slice: columns [k0, k0 + kc) of row r at
   out[rows * k0 + r * kc] (kc = KC, or what is left of K in the last slice). */
template <class B>
void expand_block_slices(const uint8_t* w, i64 rows, i64 K, float* out) {
    thread_local std::vector<float> row;
    if ((i64)row.size() < K) row.resize(K);
    const i64 sc = slice_cols(K);
    if (sc == K) {
        expand_block_rows<B>(w, rows, K, out);
        return;
    }
    for (i64 r = 0; r < rows; r++) {
        expand_block_rows<B>(w + r * (K / B::QK) * B::BYTES, 1, K, row.data());
        for (i64 k0 = 0; k0 < K; k0 += sc) {
            const i64 kc = K - k0 < sc ? K - k0 : sc;
            memcpy(out + rows * k0 + r * kc, row.data() + k0, kc * sizeof(float));
        }
    }
}

typedef void (*qtile_fn)(const uint8_t*, i64, i64, const float*, i64, float*, i64, int);

/* Rows [0, rows) of one block weight (already offset to its first row), single thread. */
template <class B>
void block_rows(const uint8_t* w, i64 rows, i64 K, const float* x, i64 ldx, float* y, i64 ldy, i64 M, int acc) {
    const i64 row_bytes = K / B::QK * B::BYTES;
    if (M > g_inreg_max_rows) {
        /* Expanded slice by slice of KC columns, each slice [rows, kc] contiguous: the
           float32 tiles then keep their 8 x-rows' slice in L1 however long K is. */
        thread_local std::vector<float> buf;
        if ((i64)buf.size() < rows * K) buf.resize(rows * K);
        expand_block_slices<B>(w, rows, K, buf.data());
        const i64 sc = slice_cols(K);
        for (i64 k0 = 0; k0 < K; k0 += sc) {
            const i64 kc = K - k0 < sc ? K - k0 : sc;
            tl_linear(W_F32, buf.data() + rows * k0, nullptr, x + k0, ldx, y, ldy, M, rows, kc, acc || k0 > 0, 1);
        }
        return;
    }
#if defined(__AVX512F__)
    if constexpr (B::CODES != 0) {
        if (M == 1) {
            const i64 nb = K / 32;
            thread_local std::vector<float> sxv;
            if ((i64)sxv.size() < nb) sxv.resize(nb);
            if (B::CODES >= 2)
                for (i64 b = 0; b < nb; b++)
                    sxv[b] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_loadu_ps(x + b * 32), _mm512_loadu_ps(x + b * 32 + 16)));
            i64 n = 0;
            if constexpr (B::CODES == 3) {
                for (; n + 2 <= rows; n += 2) tile_kdot_1<B, 2>(w + n * row_bytes, row_bytes, K, x, sxv.data(), y + n, acc);
                for (; n < rows; n++) tile_kdot_1<B, 1>(w + n * row_bytes, row_bytes, K, x, sxv.data(), y + n, acc);
            } else {
                for (; n + 2 <= rows; n += 2) tile_codes_1<B, 2>(w + n * row_bytes, row_bytes, K, x, sxv.data(), y + n, acc);
                for (; n < rows; n++) tile_codes_1<B, 1>(w + n * row_bytes, row_bytes, K, x, sxv.data(), y + n, acc);
            }
            return;
        }
    }
#endif
    static const qtile_fn T2[4] = {tile_blocks<B, 1, 2>, tile_blocks<B, 2, 2>, tile_blocks<B, 3, 2>, tile_blocks<B, 4, 2>};
    static const qtile_fn T1[4] = {tile_blocks<B, 1, 1>, tile_blocks<B, 2, 1>, tile_blocks<B, 3, 1>, tile_blocks<B, 4, 1>};
    i64 m0 = 0;
    for (; m0 + 8 <= M; m0 += 8)
        for (i64 n = 0; n < rows; n++)
            tile_blocks<B, 8, 1>(w + n * row_bytes, row_bytes, K, x + m0 * ldx, ldx, y + m0 * ldy + n, ldy, acc);
    for (; m0 < M; m0 += 4) {
        const int mr = M - m0 < 4 ? (int)(M - m0) : 4;
        i64 n = 0;
        for (; n + 2 <= rows; n += 2) T2[mr - 1](w + n * row_bytes, row_bytes, K, x + m0 * ldx, ldx, y + m0 * ldy + n, ldy, acc);
        for (; n < rows; n++) T1[mr - 1](w + n * row_bytes, row_bytes, K, x + m0 * ldx, ldx, y + m0 * ldy + n, ldy, acc);
    }
}

/* f(B{}) with the block type of `kind`; false for the kinds that are not blocks. */
template <class F>
bool with_block_type(int kind, F&& f) {
    switch (kind) {
        case qb::W_BF16: f(qb::BF16{}); return true;
        case qb::W_Q4_0: f(qb::Q4_0{}); return true;
        case qb::W_Q4_1: f(qb::Q4_1{}); return true;
        case qb::W_Q5_0: f(qb::Q5_0{}); return true;
        case qb::W_Q5_1: f(qb::Q5_1{}); return true;
        case qb::W_Q8_0B: f(qb::Q8_0{}); return true;
        case qb::W_Q2_K: f(qb::Q2_K{}); return true;
        case qb::W_Q3_K: f(qb::Q3_K{}); return true;
        case qb::W_Q4_K: f(qb::Q4_K{}); return true;
        case qb::W_Q5_K: f(qb::Q5_K{}); return true;
        case qb::W_Q6_K: f(qb::Q6_K{}); return true;
        case qb::W_IQ4_NL: f(qb::IQ4_NL{}); return true;
        case qb::W_IQ4_XS: f(qb::IQ4_XS{}); return true;
    }
    return false;
}

/* Bytes of one weight row. */
i64 row_bytes_of(int kind, i64 K) {
    switch (kind) {
        case W_F32: return 4 * K;
        case W_F16: return 2 * K;
        case W_Q8_0: return K;
    }
    i64 rb = 0;
    with_block_type(kind, [&](auto b) { rb = K / decltype(b)::QK * decltype(b)::BYTES; });
    return rb;
}

/* Output rows [n0, n0 + rows) of one (non-stacked) weight, on the calling thread. */
void weight_rows(int kind, const void* w, const float* d, i64 K, i64 n0, i64 rows, const float* x, i64 ldx,
                 float* y, i64 ldy, i64 M, int acc) {
    const uint8_t* wr = (const uint8_t*)w + n0 * row_bytes_of(kind, K);
    y += n0;
    if (!with_block_type(kind, [&](auto b) { block_rows<decltype(b)>(wr, rows, K, x, ldx, y, ldy, M, acc); }))
        tl_linear(kind, wr, d ? d + n0 * (K / 32) : nullptr, x, ldx, y, ldy, M, rows, K, acc, 1);
}

/* Rows [n0, n0 + rows) of any weight kind as float32 into out [rows, K]. */
void expand_rows_of(int kind, const void* w, const float* d, i64 K, i64 n0, i64 rows, float* out) {
    const uint8_t* wr = (const uint8_t*)w + n0 * row_bytes_of(kind, K);
    if (kind == W_F32) memcpy(out, wr, rows * K * sizeof(float));
    else if (!with_block_type(kind, [&](auto b) { expand_block_rows<decltype(b)>(wr, rows, K, out); }))
        tl_expand_rows(kind, w, d, K, n0, n0 + rows, out);
}

#if defined(__AVX512F__)
/* Output rows [n0, n0 + rows) of one weight for many x-rows (`xt`, gemm::pack_x): the
   rows expanded once into a float32 buffer that stays in L2, then the packed-x GEMM. */
void weight_rows_gemm(int kind, const void* w, const float* d, i64 K, i64 n0, i64 rows, const float* xt, i64 M,
                      float* y, i64 ldy, int acc) {
    if (kind == W_F32) {
        gemm::multiply(xt, M, (const float*)w + n0 * K, K, rows, K, y + n0, ldy, acc);
        return;
    }
    thread_local std::vector<float> buf;
    if ((i64)buf.size() < rows * K) buf.resize(rows * K);
    expand_rows_of(kind, w, d, K, n0, rows, buf.data());
    gemm::multiply(xt, M, buf.data(), K, rows, K, y + n0, ldy, acc);
}
#endif

struct Part {
    int kind;
    const void* w;
    const float* d;
    i64 rows, out0, chunk0;
};

/* The parts of a weight (one, or a W_PARTS table's), with their first output row and
   first chunk. Returns the number of chunks. */
i64 parts_of(int kind, const void* w, const float* d, i64 N, Part* parts, int& np, int cap) {
    np = 0;
    i64 chunks = 0, out0 = 0;
    auto add = [&](int k, const void* pw, const float* pd, i64 rows) {
        if (np >= cap) return;  // never: the Python side allows at most `cap` parts
        parts[np++] = Part{k, pw, pd, rows, out0, chunks};
        out0 += rows;
        chunks += (rows + NCHUNK_Q - 1) / NCHUNK_Q;
    };
    if (kind == qb::W_PARTS) {
        const i64* t = (const i64*)w;
        for (i64 i = 0; i < t[0]; i++)
            add((int)t[1 + 4 * i], (const void*)t[2 + 4 * i], (const float*)t[3 + 4 * i], t[4 + 4 * i]);
    } else {
        add(kind, w, d, N);
    }
    return chunks;
}

}  // namespace

extern "C" void tl_set_inreg_max_rows(i64 rows) { g_inreg_max_rows = rows; }

/* Every weight kind above W_Q8_0, and F16/Q8_0/F32 for many x-rows (triolm_kernels.cpp's
   `linear` hands them over). */
extern "C" void tl_linear_ext(int kind, const void* w, const float* d, const float* x, i64 ldx, float* y,
                              i64 ldy, i64 M, i64 N, i64 K, int accumulate, int nthreads) {
    Part parts[8];  // StackedLinear.MAX_PARTS
    int np = 0;
    const i64 nchunks = parts_of(kind, w, d, N, parts, np, 8);
    if (np == 0) return;
    auto chunk = [&](i64 c, i64& r0, i64& rows) -> const Part& {
        int p = np - 1;
        while (p > 0 && parts[p].chunk0 > c) p--;
        r0 = (c - parts[p].chunk0) * NCHUNK_Q;
        rows = parts[p].rows - r0 < NCHUNK_Q ? parts[p].rows - r0 : NCHUNK_Q;
        return parts[p];
    };
#if defined(__AVX512F__)
    i64 inreg = g_inreg_max_rows;
    for (int p = 0; p < np; p++) inreg = inreg_max_rows(parts[p].kind) < inreg ? inreg_max_rows(parts[p].kind) : inreg;
    if (M > inreg || kind <= W_Q8_0) {
        /* x packed once for every chunk (gemm_f32.h); F32/F16/Q8_0 come here only for
           many x-rows */
        thread_local std::vector<float> xbuf;
        const i64 need = gemm::panels(M) * K * 16 + 16;
        if ((i64)xbuf.size() < need) xbuf.resize(need);
        float* xt = (float*)(((uintptr_t)xbuf.data() + 63) & ~(uintptr_t)63);
        gemm::pack_x(x, ldx, M, K, xt);
        parallel_for(nchunks, nthreads, [&](i64 c) {
            i64 r0, rows;
            const Part& P = chunk(c, r0, rows);
            weight_rows_gemm(P.kind, P.w, P.d, K, r0, rows, xt, M, y + P.out0, ldy, accumulate);
        });
        return;
    }
#endif
    parallel_for(nchunks, nthreads, [&](i64 c) {
        i64 r0, rows;
        const Part& P = chunk(c, r0, rows);
        weight_rows(P.kind, P.w, P.d, K, r0, rows, x, ldx, y + P.out0, ldy, M, accumulate);
    });
}

/* Rows [0, N) of a block weight as float32 into out [N, K] (prefill's GEMM input). */
extern "C" void tl_dequant_blocks(int kind, const void* w, float* out, i64 N, i64 K, int nthreads) {
    const i64 nchunks = (N + NCHUNK_Q - 1) / NCHUNK_Q;
    parallel_for(nchunks, nthreads, [&](i64 c) {
        const i64 n0 = c * NCHUNK_Q, rows = N - n0 < NCHUNK_Q ? N - n0 : NCHUNK_Q;
        expand_rows_of(kind, w, nullptr, K, n0, rows, out + n0 * K);
    });
}
