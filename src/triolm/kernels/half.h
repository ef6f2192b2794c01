/* float16 -> float32 for every kernel file: F16C's instruction where the CPU has it,
   else the exact bit manipulation (subnormals, infinities and NaNs included). */
#pragma once

#include <stdint.h>
#include <string.h>
#if defined(__F16C__)
#include <immintrin.h>  // _cvtsh_ss, also without AVX-512
#endif

static inline float h2f(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff, u;
    if (e == 0) {
        if (m == 0) { u = s; }
        else { e = 127 - 15 + 1; while (!(m & 0x400)) { m <<= 1; e--; } m &= 0x3ff; u = s | (e << 23) | (m << 13); }
    } else if (e == 31) { u = s | 0x7f800000u | (m << 13); }
    else { u = s | ((e + 127 - 15) << 23) | (m << 13); }
    float f; memcpy(&f, &u, 4); return f;
#endif
}
