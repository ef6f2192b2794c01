/* Linear layers on GGUF block weights (quant_blocks.h), and stacked weights (W_PARTS).

   y[m, n] (+)= sum_k x[m, k] * W[n, k] with W rows stored as the file stores them:
   K / QK blocks per row, row n at w + n * (K / QK) * BYTES.

   Few x-rows (decode): each 32-value group of a weight row is decoded in registers and
   feeds one FMA per x-row, accumulating in float32 — the weights stream from memory once
   per call whatever the type. Many x-rows: each chunk of weight rows is expanded once
   into a float32 buffer that stays in L2, then multiplied by the float32 tiles of
   triolm_kernels.cpp (`tl_linear` on that buffer), so decoding is not repeated per group
   of x-rows. Without AVX-512 the same code runs with the portable decoders.

   Threads: the caller's parallel loop (`tl_parallel_for`, triolm_kernels.cpp) over chunks
   of NCHUNK_Q weight rows; a stacked weight's parts share one loop. */

#include <stdint.h>
#include <string.h>
#include <vector>

#include "iq4_blocks.h"
#include "quant_blocks.h"

typedef int64_t i64;

extern "C" void tl_parallel_for(i64 n, int nthreads, void (*fn)(void*, i64), void* ctx);
extern "C" void tl_linear(int kind, const void* w, const float* d, const float* x, i64 ldx, float* y,
                          i64 ldy, i64 M, i64 N, i64 K, int accumulate, int nthreads);

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
i64 g_inreg_max_rows = 16;

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

/* Bytes of one weight row, and the offset of row n's scales (repacked Q8_0 only). */
i64 row_bytes_of(int kind, i64 K) {
    switch (kind) {
        case W_F32: return 4 * K;
        case W_F16: case qb::W_BF16: return 2 * K;
        case W_Q8_0: return K;
        case qb::W_Q4_0: return K / 32 * qb::Q4_0::BYTES;
        case qb::W_Q4_1: return K / 32 * qb::Q4_1::BYTES;
        case qb::W_Q5_0: return K / 32 * qb::Q5_0::BYTES;
        case qb::W_Q5_1: return K / 32 * qb::Q5_1::BYTES;
        case qb::W_Q8_0B: return K / 32 * qb::Q8_0::BYTES;
        case qb::W_Q2_K: return K / 256 * qb::Q2_K::BYTES;
        case qb::W_Q3_K: return K / 256 * qb::Q3_K::BYTES;
        case qb::W_Q4_K: return K / 256 * qb::Q4_K::BYTES;
        case qb::W_Q5_K: return K / 256 * qb::Q5_K::BYTES;
        case qb::W_Q6_K: return K / 256 * qb::Q6_K::BYTES;
        case qb::W_IQ4_NL: return K / 32 * qb::IQ4_NL::BYTES;
        case qb::W_IQ4_XS: return K / 256 * qb::IQ4_XS::BYTES;
    }
    return 0;
}

/* Output rows [n0, n0 + rows) of one (non-stacked) weight, on the calling thread. */
void weight_rows(int kind, const void* w, const float* d, i64 K, i64 n0, i64 rows, const float* x, i64 ldx,
                 float* y, i64 ldy, i64 M, int acc) {
    const uint8_t* wr = (const uint8_t*)w + n0 * row_bytes_of(kind, K);
    y += n0;
    switch (kind) {
        case W_F32: case W_F16: case W_Q8_0:
            tl_linear(kind, wr, d ? d + n0 * (K / 32) : nullptr, x, ldx, y, ldy, M, rows, K, acc, 1);
            return;
        case qb::W_BF16: block_rows<qb::BF16>(wr, rows, K, x, ldx, y, ldy, M, acc); return;
        case qb::W_Q4_0: block_rows<qb::Q4_0>(wr, rows, K, x, ldx, y, ldy, M, acc); return;
        case qb::W_Q4_1: block_rows<qb::Q4_1>(wr, rows, K, x, ldx, y, ldy, M, acc); return;
        case qb::W_Q5_0: block_rows<qb::Q5_0>(wr, rows, K, x, ldx, y, ldy, M, acc); return;
        case qb::W_Q5_1: block_rows<qb::Q5_1>(wr, rows, K, x, ldx, y, ldy, M, acc); return;
        case qb::W_Q8_0B: block_rows<qb::Q8_0>(wr, rows, K, x, ldx, y, ldy, M, acc); return;
        case qb::W_Q2_K: block_rows<qb::Q2_K>(wr, rows, K, x, ldx, y, ldy, M, acc); return;
        case qb::W_Q3_K: block_rows<qb::Q3_K>(wr, rows, K, x, ldx, y, ldy, M, acc); return;
        case qb::W_Q4_K: block_rows<qb::Q4_K>(wr, rows, K, x, ldx, y, ldy, M, acc); return;
        case qb::W_Q5_K: block_rows<qb::Q5_K>(wr, rows, K, x, ldx, y, ldy, M, acc); return;
        case qb::W_Q6_K: block_rows<qb::Q6_K>(wr, rows, K, x, ldx, y, ldy, M, acc); return;
        case qb::W_IQ4_NL: block_rows<qb::IQ4_NL>(wr, rows, K, x, ldx, y, ldy, M, acc); return;
        case qb::W_IQ4_XS: block_rows<qb::IQ4_XS>(wr, rows, K, x, ldx, y, ldy, M, acc); return;
    }
}

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

/* Every weight kind above W_Q8_0 (triolm_kernels.cpp's `linear` hands them over). */
extern "C" void tl_linear_ext(int kind, const void* w, const float* d, const float* x, i64 ldx, float* y,
                              i64 ldy, i64 M, i64 N, i64 K, int accumulate, int nthreads) {
    Part parts[8];  // StackedLinear.MAX_PARTS
    int np = 0;
    const i64 nchunks = parts_of(kind, w, d, N, parts, np, 8);
    if (np == 0) return;
    parallel_for(nchunks, nthreads, [&](i64 c) {
        int p = np - 1;
        while (p > 0 && parts[p].chunk0 > c) p--;
        const Part& P = parts[p];
        const i64 r0 = (c - P.chunk0) * NCHUNK_Q;
        const i64 rows = P.rows - r0 < NCHUNK_Q ? P.rows - r0 : NCHUNK_Q;
        weight_rows(P.kind, P.w, P.d, K, r0, rows, x, ldx, y + P.out0, ldy, M, accumulate);
    });
}

/* Rows [0, N) of a block weight as float32 into out [N, K] (prefill's GEMM input). */
extern "C" void tl_dequant_blocks(int kind, const void* w, float* out, i64 N, i64 K, int nthreads) {
    const i64 nchunks = (N + NCHUNK_Q - 1) / NCHUNK_Q;
    const i64 rb = row_bytes_of(kind, K);
    parallel_for(nchunks, nthreads, [&](i64 c) {
        const i64 n0 = c * NCHUNK_Q, rows = N - n0 < NCHUNK_Q ? N - n0 : NCHUNK_Q;
        const uint8_t* wr = (const uint8_t*)w + n0 * rb;
        float* o = out + n0 * K;
        switch (kind) {
            case qb::W_BF16: expand_block_rows<qb::BF16>(wr, rows, K, o); break;
            case qb::W_Q4_0: expand_block_rows<qb::Q4_0>(wr, rows, K, o); break;
            case qb::W_Q4_1: expand_block_rows<qb::Q4_1>(wr, rows, K, o); break;
            case qb::W_Q5_0: expand_block_rows<qb::Q5_0>(wr, rows, K, o); break;
            case qb::W_Q5_1: expand_block_rows<qb::Q5_1>(wr, rows, K, o); break;
            case qb::W_Q8_0B: expand_block_rows<qb::Q8_0>(wr, rows, K, o); break;
            case qb::W_Q2_K: expand_block_rows<qb::Q2_K>(wr, rows, K, o); break;
            case qb::W_Q3_K: expand_block_rows<qb::Q3_K>(wr, rows, K, o); break;
            case qb::W_Q4_K: expand_block_rows<qb::Q4_K>(wr, rows, K, o); break;
            case qb::W_Q5_K: expand_block_rows<qb::Q5_K>(wr, rows, K, o); break;
            case qb::W_Q6_K: expand_block_rows<qb::Q6_K>(wr, rows, K, o); break;
            case qb::W_IQ4_NL: expand_block_rows<qb::IQ4_NL>(wr, rows, K, o); break;
            case qb::W_IQ4_XS: expand_block_rows<qb::IQ4_XS>(wr, rows, K, o); break;
        }
    });
}
