/* GGUF block formats, decoded 32 values at a time.

   Each type is a struct with its block geometry (QK values in BYTES bytes) and two
   decoders of the 32-value group j of one block (j < QK / 32):
     - AVX-512, one of: `codes(blk, lo, hi, d, m)`, a 32-value block's codes as floats
       plus its scale and offset (value = d * q + m; `each_group` scales them);
       `group(blk, j, lo, hi)`, values 32j.. into two registers; or for types whose
       groups share bytes and scales (SHARED, the K-quants) `block(blk, emit)`, which
       decodes the whole block and hands each group to emit(j, lo, hi);
     - `group(blk, j, out)`: portable, into out[32].
   All perform the `gguf` package's float32 operations (gguf.quants.dequantize) in its
   order — scale products first, then code * scale (+/- offset), never fused — so a
   decoded weight is bit-equal to the reference and a dot product with it differs from
   the dequantized float32 model only in summation order. Layouts are ggml's
   (ggml-common.h), described here from the reference decoder. */

#pragma once
#include <stdint.h>
#include <string.h>

#include "half.h"
#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace qb {

/* Weight kinds beyond triolm_kernels.cpp's W_F32 = 0, W_F16 = 1, W_Q8_0 = 2 (int8 codes +
   float32 scales, repacked). The block kinds read the file's bytes as they are. */
enum {
    W_BF16 = 3, W_Q4_0 = 4, W_Q4_1 = 5, W_Q5_0 = 6, W_Q5_1 = 7, W_Q8_0B = 8,
    W_Q2_K = 9, W_Q3_K = 10, W_Q4_K = 11, W_Q5_K = 12, W_Q6_K = 13,
    /* Several weights stacked by output rows (fused q|k|v, gate|up) without a copy: `w`
       points to an int64 table {n_parts, then per part: kind, w, d, rows}. */
    W_PARTS = 32,
};

static inline float f16(const uint8_t* p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return h2f(h);
}

static inline uint32_t u32(const uint8_t* p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* The 6-bit scale and min of sub-block j of Q4_K/Q5_K (12 packed bytes). */
static inline void scale_min_k4(const uint8_t* s, int j, int& sc, int& m) {
    if (j < 4) { sc = s[j] & 63; m = s[j + 4] & 63; }
    else {
        sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* The signed 6-bit scale i (of 16) of Q3_K. */
static inline int scale_q3k(const uint8_t* s, int i) {
    const int lo = i < 8 ? s[i] & 0x0F : s[i - 8] >> 4;
    const int hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
    return (int)(int8_t)(uint8_t)(lo | (hi << 4)) - 32;
}

#if defined(__AVX512F__)
static inline __m512i bytes16(const uint8_t* p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p)); }
static inline __m512 cvt(__m512i v) { return _mm512_cvtepi32_ps(v); }
static inline __m512i nib_lo(__m512i v) { return _mm512_and_si512(v, _mm512_set1_epi32(15)); }
static inline __m512i nib_hi(__m512i v) { return _mm512_srli_epi32(v, 4); }
/* Small codes become floats by table lookup: `_mm512_permutexvar_ps` reads the low 4
   bits of each index lane (so a high nibble needs only its shift, a low one nothing),
   `_mm512_permutex2var_ps` the low 5 (bit 4 picks the second table). One operation where
   masking, offsetting and converting took three; the values are the same small integers
   the reference converts. */
static inline __m512 iota16(float from = 0.f) {
    return _mm512_add_ps(_mm512_set1_ps(from), _mm512_setr_ps(0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f, 8.f, 9.f, 10.f,
                                                                11.f, 12.f, 13.f, 14.f, 15.f));
}
/* Lanes of a 32-bit high-bit word as bit 4 of the index (Q5_0/Q5_1): nibble | 16. */
static inline __m512i with_high(__m512i nib, __mmask16 high) {
    return _mm512_mask_or_epi32(nib, high, nib, _mm512_set1_epi32(16));
}

/* The 32 codes of a legacy block as floats: 16 bytes of nibbles (value i: low nibble of
   byte i, value 16 + i: high nibble), optionally bit 4 from a 32-bit high-bit word;
   `from` is the value of code 0 (-8 or -16 for the offset types, 0 otherwise). */
static inline void codes4(const uint8_t* qs, float from, __m512& lo, __m512& hi) {
    const __m512i q = bytes16(qs);
    const __m512 table = iota16(from);
    lo = _mm512_permutexvar_ps(q, table);
    hi = _mm512_permutexvar_ps(nib_hi(q), table);
}
static inline void codes5(const uint8_t* qs, uint32_t qh, float from, __m512& lo, __m512& hi) {
    const __m512i q = bytes16(qs);
    const __m512 t0 = iota16(from), t1 = iota16(from + 16.f);
    lo = _mm512_permutex2var_ps(t0, with_high(nib_lo(q), (__mmask16)(qh & 0xFFFF)), t1);
    hi = _mm512_permutex2var_ps(t0, with_high(nib_hi(q), (__mmask16)(qh >> 16)), t1);
}

/* The eight scales and mins of a Q4_K/Q5_K block times d and dmin, in one vector pass
   (scale_min_k4 for all j at once): out[j] = d * sc_j, out[8 + j] = dmin * m_j. */
static inline void scales_mins_k4(const uint8_t* b, float* out) {
    const __m512i s = bytes16(b + 4);  // lanes 12..15 are code bytes, never selected
    const __m512i a = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11), s);
    const __m512i t = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7), s);
    const __m512i lo = _mm512_and_si512(_mm512_srlv_epi32(a, _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4)),
                                        _mm512_setr_epi32(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 15, 15, 15, 15));
    const __m512i hi = _mm512_maskz_slli_epi32((__mmask16)0xF0F0, _mm512_srli_epi32(t, 6), 4);
    const __m512 dd = _mm512_mask_blend_ps((__mmask16)0xFF00, _mm512_set1_ps(f16(b)), _mm512_set1_ps(f16(b + 2)));
    _mm512_store_ps(out, _mm512_mul_ps(dd, cvt(_mm512_or_si512(lo, hi))));
}
#endif

#if defined(__AVX512F__)
/* CODES: 0 = decode values only; 1 = value = d * q (`codes` gives q and d); 2 = value =
   d * q + m; 3 = a K-quant with a one-x-row block dot (`dot1`). For one x-row the
   kernels then sum q * x over a block (or sub-block) and scale that sum once (plus m
   times the sum of x there): the same products regrouped by distributivity, two to
   four vector operations fewer per 32 values. */

/* Every group of one block: emit(j, lo, hi) for j < QK / 32. Types whose groups share
   bytes or scales (the K-quants) define their own `block` that decodes those once. */
template <class B, class Emit>
static inline void each_group(const uint8_t* b, Emit&& emit) {
    if constexpr (B::SHARED) {
        B::block(b, emit);
    } else if constexpr (B::CODES == 1 || B::CODES == 2) {
        /* value = d * q (+ m) from the type's `codes` (one group per block) */
        __m512 qlo, qhi;
        float d, m;
        B::codes(b, qlo, qhi, d, m);
        const __m512 dv = _mm512_set1_ps(d);
        if (B::CODES == 2)
            emit(0, _mm512_add_ps(_mm512_mul_ps(dv, qlo), _mm512_set1_ps(m)), _mm512_add_ps(_mm512_mul_ps(dv, qhi), _mm512_set1_ps(m)));
        else
            emit(0, _mm512_mul_ps(dv, qlo), _mm512_mul_ps(dv, qhi));
    } else {
        for (int j = 0; j < B::QK / 32; j++) {
            __m512 lo, hi;
            B::group(b, j, lo, hi);
            emit(j, lo, hi);
        }
    }
}
#endif

struct BF16 {
    static constexpr int QK = 32, BYTES = 64;
    static constexpr bool SHARED = false;
    static constexpr int CODES = 0;  // see `codes`
#if defined(__AVX512F__)
    static inline void group(const uint8_t* b, int, __m512& lo, __m512& hi) {
        lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)b)), 16));
        hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(b + 32))), 16));
    }
#endif
    static inline void group(const uint8_t* b, int, float* out) {
        for (int i = 0; i < 32; i++) {
            uint32_t u = (uint32_t)(b[2 * i] | (b[2 * i + 1] << 8)) << 16;
            memcpy(out + i, &u, 4);
        }
    }
};

/* The legacy 32-value blocks Q4_0, Q4_1, Q5_0, Q5_1: d (f16), then m (f16) for the
   offset types (HAS_M), then 32 high bits for the 5-bit types (FIVE: uint32, bit i ->
   value i), then 16 bytes of nibbles (value i: low nibble of byte i, value 16 + i: high
   nibble of byte i). q = nibble | high << 4; value = d * q + m, or without m
   d * (q - 8) / d * (q - 16). */
template <int BYTES_, bool HAS_M, bool FIVE>
struct Legacy {
    static constexpr int QK = 32, BYTES = BYTES_;
    static constexpr bool SHARED = false;
    static constexpr int CODES = HAS_M ? 2 : 1;  // see `codes`
    static constexpr int QH = HAS_M ? 4 : 2, QS = QH + (FIVE ? 4 : 0), ZERO = HAS_M ? 0 : (FIVE ? 16 : 8);
#if defined(__AVX512F__)
    /* The block's codes as floats and its scale/offset: value = d * q + m. */
    static inline void codes(const uint8_t* b, __m512& lo, __m512& hi, float& d, float& m) {
        if (FIVE) codes5(b + QS, u32(b + QH), (float)-ZERO, lo, hi);
        else codes4(b + QS, (float)-ZERO, lo, hi);
        d = f16(b);
        m = HAS_M ? f16(b + 2) : 0.f;
    }
#endif
    static inline void group(const uint8_t* b, int, float* out) {
        const float d = f16(b);
        const uint32_t qh = FIVE ? u32(b + QH) : 0;
        for (int i = 0; i < 32; i++) {
            const int q = ((b[QS + i % 16] >> (i < 16 ? 0 : 4)) & 15) | (((qh >> i) & 1) << 4);
            out[i] = HAS_M ? d * (float)q + f16(b + 2) : d * (float)(q - ZERO);
        }
    }
};
typedef Legacy<18, false, false> Q4_0;
typedef Legacy<20, true, false> Q4_1;
typedef Legacy<22, false, true> Q5_0;
typedef Legacy<24, true, true> Q5_1;

/* d (f16), 32 int8 codes: value = code * d. */
struct Q8_0 {
    static constexpr int QK = 32, BYTES = 34;
    static constexpr bool SHARED = false;
    static constexpr int CODES = 1;  // see `codes`
#if defined(__AVX512F__)
    /* The block's codes as floats and its scale/offset: value = d * q + m. */
    static inline void codes(const uint8_t* b, __m512& lo, __m512& hi, float& d, float& m) {
        lo = cvt(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(b + 2))));
        hi = cvt(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(b + 18))));
        d = f16(b);
        m = 0.f;
    }
#endif
    static inline void group(const uint8_t* b, int, float* out) {
        const float d = f16(b);
        for (int i = 0; i < 32; i++) out[i] = (float)(int8_t)b[2 + i] * d;
    }
};

/* 256 values: 16 scale bytes (low nibble scale, high nibble min, one per 16 values),
   64 bytes of 2-bit codes, d, dmin (f16). Value e: byte qs[(e / 128) * 32 + e % 32],
   bits 2 * ((e / 32) % 4); value = (d * sc) * q - (dmin * m). */
struct Q2_K {
    static constexpr int QK = 256, BYTES = 84;
    static constexpr bool SHARED = false;
    static constexpr int CODES = 0;  // see `codes`
#if defined(__AVX512F__)
    static inline void group(const uint8_t* b, int j, __m512& lo, __m512& hi) {
        const float d = f16(b + 80), dmin = f16(b + 82);
        const uint8_t s0 = b[2 * j], s1 = b[2 * j + 1];
        const uint8_t* qs = b + 16 + (j / 4) * 32;
        const int sh = 2 * (j % 4);
        const __m512i three = _mm512_set1_epi32(3);
        const __m512i q0 = _mm512_and_si512(_mm512_srli_epi32(bytes16(qs), sh), three);
        const __m512i q1 = _mm512_and_si512(_mm512_srli_epi32(bytes16(qs + 16), sh), three);
        lo = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(d * (float)(s0 & 15)), cvt(q0)), _mm512_set1_ps(dmin * (float)(s0 >> 4)));
        hi = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(d * (float)(s1 & 15)), cvt(q1)), _mm512_set1_ps(dmin * (float)(s1 >> 4)));
    }
#endif
    static inline void group(const uint8_t* b, int j, float* out) {
        const float d = f16(b + 80), dmin = f16(b + 82);
        const uint8_t* qs = b + 16 + (j / 4) * 32;
        const int sh = 2 * (j % 4);
        for (int i = 0; i < 32; i++) {
            const uint8_t s = b[2 * j + i / 16];
            out[i] = (d * (float)(s & 15)) * (float)((qs[i] >> sh) & 3) - dmin * (float)(s >> 4);
        }
    }
};

/* 256 values: 32 bytes of high-bit masks, 64 bytes of 2-bit codes, 12 bytes of sixteen
   signed 6-bit scales, d (f16). Value e: low bits as Q2_K, high bit h = bit e / 32 of
   hmask[e % 32]; q = low - (h ? 0 : 4); value = (d * scale) * q. */
struct Q3_K {
    static constexpr int QK = 256, BYTES = 110;
    static constexpr bool SHARED = false;
    static constexpr int CODES = 0;  // see `codes`
#if defined(__AVX512F__)
    static inline void group(const uint8_t* b, int j, __m512& lo, __m512& hi) {
        const float d = f16(b + 108);
        const uint8_t* qs = b + 32 + (j / 4) * 32;
        const int sh = 2 * (j % 4);
        const __m512i three = _mm512_set1_epi32(3), four = _mm512_set1_epi32(4);
        const __m512i q0 = _mm512_and_si512(_mm512_srli_epi32(bytes16(qs), sh), three);
        const __m512i q1 = _mm512_and_si512(_mm512_srli_epi32(bytes16(qs + 16), sh), three);
        const __m512i bit = _mm512_set1_epi32(1 << j);
        const __mmask16 m0 = _mm512_test_epi32_mask(bytes16(b), bit), m1 = _mm512_test_epi32_mask(bytes16(b + 16), bit);
        lo = _mm512_mul_ps(_mm512_set1_ps(d * (float)scale_q3k(b + 96, 2 * j)), cvt(_mm512_mask_sub_epi32(q0, (__mmask16)~m0, q0, four)));
        hi = _mm512_mul_ps(_mm512_set1_ps(d * (float)scale_q3k(b + 96, 2 * j + 1)), cvt(_mm512_mask_sub_epi32(q1, (__mmask16)~m1, q1, four)));
    }
#endif
    static inline void group(const uint8_t* b, int j, float* out) {
        const float d = f16(b + 108);
        const uint8_t* qs = b + 32 + (j / 4) * 32;
        const int sh = 2 * (j % 4);
        for (int i = 0; i < 32; i++) {
            const int q = ((qs[i] >> sh) & 3) - (((b[i] >> j) & 1) ? 0 : 4);
            out[i] = (d * (float)scale_q3k(b + 96, 2 * j + i / 16)) * (float)q;
        }
    }
};

/* 256 values: d, dmin (f16), 12 bytes of eight 6-bit scales and mins, 128 bytes of
   nibbles. Group j: bytes qs[(j / 2) * 32 + i], low nibble for even j, high for odd;
   value = (d * sc) * q - (dmin * m). */
struct Q4_K {
    static constexpr int QK = 256, BYTES = 144;
    static constexpr bool SHARED = true;
    static constexpr int CODES = 3;  // see `dot1`
#if defined(__AVX512F__)
    /* A group's 16 possible values as a table, (d * sc) * k - (dmin * m) for k < 16 —
       the reference's operations, so entries are bit-equal to its values — and the codes
       look up their value with one permute (which reads the low 4 bits of each lane):
       two operations fewer per 16 values than converting and scaling every code. */
    template <class Emit>
    static inline void block(const uint8_t* b, Emit&& emit) {
        alignas(64) float dm[16];
        scales_mins_k4(b, dm);
        const __m512 iota = iota16();
        for (int c = 0; c < 4; c++) {
            const __m512i q0 = bytes16(b + 16 + c * 32), q1 = bytes16(b + 32 + c * 32);
            const __m512 t0 = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(dm[2 * c]), iota), _mm512_set1_ps(dm[8 + 2 * c]));
            const __m512 t1 = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(dm[2 * c + 1]), iota), _mm512_set1_ps(dm[9 + 2 * c]));
            emit(2 * c, _mm512_permutexvar_ps(q0, t0), _mm512_permutexvar_ps(q1, t0));
            emit(2 * c + 1, _mm512_permutexvar_ps(nib_hi(q0), t1), _mm512_permutexvar_ps(nib_hi(q1), t1));
        }
    }
    /* One x-row (decode): for each group j, (d * sc_j) * sum(q * x) - (dmin * m_j) * sum(x),
       the block's products regrouped by distributivity as `codes` does for Q4_0..Q8_0.
       sx: the sums of x over the block's 8 groups (shared by every weight row). a0, a1
       accumulate the scaled sums of even and odd groups, off the mins' terms. */
    static inline void dot1(const uint8_t* b, const float* x, const float* sx, __m512& a0, __m512& a1, __m256& off) {
        alignas(64) float dm[16];
        scales_mins_k4(b, dm);
        off = _mm256_fmadd_ps(_mm256_load_ps(dm + 8), _mm256_loadu_ps(sx), off);
        const __m512 iota = iota16();
        for (int c = 0; c < 4; c++) {
            const __m512i q0 = bytes16(b + 16 + c * 32), q1 = bytes16(b + 32 + c * 32);
            const float* xc = x + c * 64;
            const __m512 e = _mm512_fmadd_ps(_mm512_permutexvar_ps(q1, iota), _mm512_loadu_ps(xc + 16),
                                             _mm512_mul_ps(_mm512_permutexvar_ps(q0, iota), _mm512_loadu_ps(xc)));
            const __m512 o = _mm512_fmadd_ps(_mm512_permutexvar_ps(nib_hi(q1), iota), _mm512_loadu_ps(xc + 48),
                                             _mm512_mul_ps(_mm512_permutexvar_ps(nib_hi(q0), iota), _mm512_loadu_ps(xc + 32)));
            a0 = _mm512_fmadd_ps(e, _mm512_set1_ps(dm[2 * c]), a0);
            a1 = _mm512_fmadd_ps(o, _mm512_set1_ps(dm[2 * c + 1]), a1);
        }
    }
#endif
    static inline void group(const uint8_t* b, int j, float* out) {
        int sc, m;
        scale_min_k4(b + 4, j, sc, m);
        const float ds = f16(b) * (float)sc, dm = f16(b + 2) * (float)m;
        const uint8_t* qs = b + 16 + (j / 2) * 32;
        const int sh = 4 * (j % 2);
        for (int i = 0; i < 32; i++) out[i] = ds * (float)((qs[i] >> sh) & 15) - dm;
    }
};

/* As Q4_K plus 32 bytes of high bits after the scales: bit j of qh[i] is bit 4 of
   value 32j + i. value = (d * sc) * q - (dmin * m). */
struct Q5_K {
    static constexpr int QK = 256, BYTES = 176;
    static constexpr bool SHARED = true;
    static constexpr int CODES = 3;  // see `dot1`
#if defined(__AVX512F__)
    /* One x-row: as Q4_K::dot1, the 5-bit codes looked up in two 16-entry tables (bit 4,
       from qh, picks the second). */
    static inline void dot1(const uint8_t* b, const float* x, const float* sx, __m512& a0, __m512& a1, __m256& off) {
        alignas(64) float dm[16];
        scales_mins_k4(b, dm);
        off = _mm256_fmadd_ps(_mm256_load_ps(dm + 8), _mm256_loadu_ps(sx), off);
        const __m512 t0 = iota16(0.f), t1 = iota16(16.f);
        const __m512i qh0 = bytes16(b + 16), qh1 = bytes16(b + 32);
        for (int c = 0; c < 4; c++) {
            const __m512i q0 = bytes16(b + 48 + c * 32), q1 = bytes16(b + 64 + c * 32);
            const __m512i be = _mm512_set1_epi32(1 << (2 * c)), bo = _mm512_set1_epi32(2 << (2 * c));
            const float* xc = x + c * 64;
            const __m512 e0 = _mm512_permutex2var_ps(t0, with_high(nib_lo(q0), _mm512_test_epi32_mask(qh0, be)), t1);
            const __m512 e1 = _mm512_permutex2var_ps(t0, with_high(nib_lo(q1), _mm512_test_epi32_mask(qh1, be)), t1);
            const __m512 o0 = _mm512_permutex2var_ps(t0, with_high(nib_hi(q0), _mm512_test_epi32_mask(qh0, bo)), t1);
            const __m512 o1 = _mm512_permutex2var_ps(t0, with_high(nib_hi(q1), _mm512_test_epi32_mask(qh1, bo)), t1);
            const __m512 e = _mm512_fmadd_ps(e1, _mm512_loadu_ps(xc + 16), _mm512_mul_ps(e0, _mm512_loadu_ps(xc)));
            const __m512 o = _mm512_fmadd_ps(o1, _mm512_loadu_ps(xc + 48), _mm512_mul_ps(o0, _mm512_loadu_ps(xc + 32)));
            a0 = _mm512_fmadd_ps(e, _mm512_set1_ps(dm[2 * c]), a0);
            a1 = _mm512_fmadd_ps(o, _mm512_set1_ps(dm[2 * c + 1]), a1);
        }
    }
    template <class Emit>
    static inline void block(const uint8_t* b, Emit&& emit) {
        const float d = f16(b), dmin = f16(b + 2);
        const __m512i qh0 = bytes16(b + 16), qh1 = bytes16(b + 32), sixteen = _mm512_set1_epi32(16);
        for (int c = 0; c < 4; c++) {
            const __m512i q0 = bytes16(b + 48 + c * 32), q1 = bytes16(b + 64 + c * 32);
            for (int t = 0; t < 2; t++) {
                const int j = 2 * c + t;
                int sc, m;
                scale_min_k4(b + 4, j, sc, m);
                const __m512 ds = _mm512_set1_ps(d * (float)sc), dm = _mm512_set1_ps(dmin * (float)m);
                const __m512i bit = _mm512_set1_epi32(1 << j);
                const __m512i h0 = _mm512_maskz_mov_epi32(_mm512_test_epi32_mask(qh0, bit), sixteen);
                const __m512i h1 = _mm512_maskz_mov_epi32(_mm512_test_epi32_mask(qh1, bit), sixteen);
                const __m512i l0 = t ? nib_hi(q0) : nib_lo(q0), l1 = t ? nib_hi(q1) : nib_lo(q1);
                emit(j, _mm512_sub_ps(_mm512_mul_ps(ds, cvt(_mm512_or_si512(l0, h0))), dm),
                     _mm512_sub_ps(_mm512_mul_ps(ds, cvt(_mm512_or_si512(l1, h1))), dm));
            }
        }
    }
#endif
    static inline void group(const uint8_t* b, int j, float* out) {
        int sc, m;
        scale_min_k4(b + 4, j, sc, m);
        const float ds = f16(b) * (float)sc, dm = f16(b + 2) * (float)m;
        const uint8_t* qs = b + 48 + (j / 2) * 32;
        const int sh = 4 * (j % 2);
        for (int i = 0; i < 32; i++)
            out[i] = ds * (float)(((qs[i] >> sh) & 15) | (((b[16 + i] >> j) & 1) << 4)) - dm;
    }
};

/* 256 values: 128 bytes of low nibbles, 64 bytes of 2-bit highs, sixteen int8 scales,
   d (f16). Group j (half h = j / 4, r = j % 4): low = ql[h * 64 + (r % 2) * 32 + i]
   nibble r / 2, high = (qh[h * 32 + i] >> 2r) & 3; value = (d * scale[e / 16]) * (q - 32). */
struct Q6_K {
    static constexpr int QK = 256, BYTES = 210;
    static constexpr bool SHARED = true;
    static constexpr int CODES = 0;
#if defined(__AVX512F__)
    /* Codes are assembled 64 at a time in bytes (low nibble | high bits << 4, minus
       32), then widened per 16 and scaled by their own d * scale (one vector of 16). */
    template <class Emit>
    static inline void block(const uint8_t* b, Emit&& emit) {
        alignas(64) float ds[16];
        _mm512_store_ps(ds, _mm512_mul_ps(_mm512_set1_ps(f16(b + 208)),
                                          cvt(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(b + 192))))));
        const __m512i m4 = _mm512_set1_epi8(15), m2 = _mm512_set1_epi8(0x30), k32 = _mm512_set1_epi8(32);
        /* high bits of r = 0 | 1 (bytes 0..31 | 32..63 of ql), and of r = 2 | 3 */
        const __m512i sh01 = _mm512_setr_epi64(0, 0, 0, 0, 0x0002000200020002LL, 0x0002000200020002LL,
                                               0x0002000200020002LL, 0x0002000200020002LL);
        const __m512i sh23 = _mm512_add_epi16(sh01, _mm512_set1_epi16(4));
        alignas(64) int8_t q[128];
        for (int h = 0; h < 2; h++) {
            const __m512i ql = _mm512_loadu_si512((const void*)(b + h * 64));
            const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)(b + 128 + h * 32)));
            const __m512i h01 = _mm512_and_si512(_mm512_slli_epi16(_mm512_srlv_epi16(qh, sh01), 4), m2);
            const __m512i h23 = _mm512_and_si512(_mm512_slli_epi16(_mm512_srlv_epi16(qh, sh23), 4), m2);
            _mm512_store_si512((void*)q, _mm512_sub_epi8(_mm512_or_si512(_mm512_and_si512(ql, m4), h01), k32));
            _mm512_store_si512((void*)(q + 64), _mm512_sub_epi8(_mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4), h23), k32));
            for (int r = 0; r < 4; r++) {
                const int j = 4 * h + r;
                const int8_t* qr = q + (r / 2) * 64 + (r % 2) * 32;
                emit(j, _mm512_mul_ps(_mm512_set1_ps(ds[2 * j]), cvt(_mm512_cvtepi8_epi32(_mm_load_si128((const __m128i*)qr)))),
                     _mm512_mul_ps(_mm512_set1_ps(ds[2 * j + 1]), cvt(_mm512_cvtepi8_epi32(_mm_load_si128((const __m128i*)(qr + 16))))));
            }
        }
    }
#endif
    static inline void group(const uint8_t* b, int j, float* out) {
        const float d = f16(b + 208);
        const int h = j / 4, r = j % 4;
        const uint8_t* ql = b + h * 64 + (r % 2) * 32;
        const uint8_t* qh = b + 128 + h * 32;
        const int8_t* sc = (const int8_t*)(b + 192);
        for (int i = 0; i < 32; i++) {
            const int q = (((ql[i] >> (4 * (r / 2))) & 15) | (((qh[i] >> (2 * r)) & 3) << 4)) - 32;
            out[i] = (d * (float)sc[2 * j + i / 16]) * (float)q;
        }
    }
};

}  // namespace qb
