/* IQ4_NL and IQ4_XS: 4-bit codes that index ggml's fixed non-linear table of 16 int8
   values (kvalues_iq4nl), in quant_blocks.h's decoder interface.

   The codes become floats by the same `vpermps` lookup as Q4_0, over a table that holds
   the 16 int8 values as floats instead of q - 8. Decoding performs the `gguf` package's
   float32 operations in its order (IQ4_NL: d * value; IQ4_XS: (d * scale) * value), so
   a decoded weight is bit-equal to gguf.quants.dequantize. */

#pragma once
#include <stdint.h>

#include "quant_blocks.h"

namespace qb {

/* Kinds beside quant_blocks.h's (W_PARTS stays the largest). */
enum { W_IQ4_NL = 20, W_IQ4_XS = 21 };

static const int8_t kIQ4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

#if defined(__AVX512F__)
static inline __m512 iq4_table() { return cvt(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)kIQ4Values))); }
#endif

/* d (f16), 16 bytes of nibbles: value i = d * table[i < 16 ? low : high nibble of byte i % 16]. */
struct IQ4_NL {
    static constexpr int QK = 32, BYTES = 18;
    static constexpr bool SHARED = false;
    static constexpr int CODES = 1;  // see `codes`
#if defined(__AVX512F__)
    /* The block's 16 possible weights, d * value[k] (the reference's product), looked up. */
    static inline void group(const uint8_t* b, int, __m512& lo, __m512& hi) {
        const __m512i q = bytes16(b + 2);
        const __m512 table = _mm512_mul_ps(_mm512_set1_ps(f16(b)), iq4_table());
        lo = _mm512_permutexvar_ps(q, table);
        hi = _mm512_permutexvar_ps(nib_hi(q), table);
    }
    /* The block's table values as floats and its scale: value = d * q. */
    static inline void codes(const uint8_t* b, __m512& lo, __m512& hi, float& d, float& m) {
        const __m512i q = bytes16(b + 2);
        const __m512 table = iq4_table();
        lo = _mm512_permutexvar_ps(q, table);
        hi = _mm512_permutexvar_ps(nib_hi(q), table);
        d = f16(b);
        m = 0.f;
    }
#endif
    static inline void group(const uint8_t* b, int, float* out) {
        const float d = f16(b);
        for (int i = 0; i < 16; i++) {
            out[i] = d * (float)kIQ4Values[b[2 + i] & 15];
            out[i + 16] = d * (float)kIQ4Values[b[2 + i] >> 4];
        }
    }
};

/* 256 values: d (f16), scales_h (uint16: bits 2j, 2j + 1 are the high bits of group j's
   scale), scales_l (4 bytes: nibble j % 2 of byte j / 2 holds its low bits), 128 bytes of
   nibbles (group j: bytes 16j.., low nibbles for values 0..15, high for 16..31).
   value = (d * (scale - 32)) * table[q]. */
struct IQ4_XS {
    static constexpr int QK = 256, BYTES = 136;
    static constexpr bool SHARED = true;
    static constexpr int CODES = 3;  // see `dot1`
    /* The signed 6-bit scale of group j. */
    static inline int scale(const uint8_t* b, int j) {
        const int lo = (b[4 + j / 2] >> (4 * (j % 2))) & 15;
        const int hi = ((b[2] | (b[3] << 8)) >> (2 * j)) & 3;
        return (lo | (hi << 4)) - 32;
    }
#if defined(__AVX512F__)
    /* The 8 scales in one vector pass: lane j = d * ((low nibble j | high bits j << 4) - 32). */
    static inline __m256 scales8(const uint8_t* b) {
        const __m256i lo = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)u32(b + 4)),
                                                              _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                                            _mm256_set1_epi32(15));
        const __m256i hi = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(b[2] | (b[3] << 8)),
                                                              _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)),
                                            _mm256_set1_epi32(3));
        const __m256i sc = _mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)), _mm256_set1_epi32(32));
        return _mm256_mul_ps(_mm256_set1_ps(f16(b)), _mm256_cvtepi32_ps(sc));
    }
    /* A group's 16 possible values as a table, (d * scale) * value[k] — the reference's
       product, so entries are bit-equal to its weights — looked up by the codes. */
    template <class Emit>
    static inline void block(const uint8_t* b, Emit&& emit) {
        alignas(32) float dl[8];
        _mm256_store_ps(dl, scales8(b));
        const __m512 table = iq4_table();
        for (int j = 0; j < 8; j++) {
            const __m512i q = bytes16(b + 8 + 16 * j);
            const __m512 t = _mm512_mul_ps(_mm512_set1_ps(dl[j]), table);
            emit(j, _mm512_permutexvar_ps(q, t), _mm512_permutexvar_ps(nib_hi(q), t));
        }
    }
    /* One x-row (decode): per group, (d * scale) * sum(value * x), the products regrouped
       by distributivity as Q4_K::dot1 does (IQ4_XS has no mins: `off` and `sx` unused).
       Even groups accumulate in a0, odd ones in a1. */
    static inline void dot1(const uint8_t* b, const float* x, const float*, __m512& a0, __m512& a1, __m256&) {
        alignas(32) float dl[8];
        _mm256_store_ps(dl, scales8(b));
        const __m512 table = iq4_table();
        for (int c = 0; c < 4; c++) {
            const __m512i q0 = bytes16(b + 8 + 32 * c), q1 = bytes16(b + 24 + 32 * c);
            const float* xc = x + c * 64;
            const __m512 e = _mm512_fmadd_ps(_mm512_permutexvar_ps(nib_hi(q0), table), _mm512_loadu_ps(xc + 16),
                                             _mm512_mul_ps(_mm512_permutexvar_ps(q0, table), _mm512_loadu_ps(xc)));
            const __m512 o = _mm512_fmadd_ps(_mm512_permutexvar_ps(nib_hi(q1), table), _mm512_loadu_ps(xc + 48),
                                             _mm512_mul_ps(_mm512_permutexvar_ps(q1, table), _mm512_loadu_ps(xc + 32)));
            a0 = _mm512_fmadd_ps(e, _mm512_set1_ps(dl[2 * c]), a0);
            a1 = _mm512_fmadd_ps(o, _mm512_set1_ps(dl[2 * c + 1]), a1);
        }
    }
#endif
    static inline void group(const uint8_t* b, int j, float* out) {
        const float dl = f16(b) * (float)scale(b, j);
        const uint8_t* qs = b + 8 + 16 * j;
        for (int i = 0; i < 16; i++) {
            out[i] = dl * (float)kIQ4Values[qs[i] & 15];
            out[i + 16] = dl * (float)kIQ4Values[qs[i] >> 4];
        }
    }
};

}  // namespace qb
