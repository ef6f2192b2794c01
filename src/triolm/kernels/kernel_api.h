/* The kernels one translation unit calls in another (the exported C ABI; native.py's
   `_SIGNATURES` gives ctypes the same signatures). */

#pragma once

#include <stdint.h>

typedef int64_t i64;

extern "C" {
void tl_linear(int kind, const void* w, const float* d, const float* x, i64 ldx, float* y, i64 ldy, i64 M,
               i64 N, i64 K, int accumulate, int nthreads);
void tl_silu_mul(const float* gu, float* out, i64 M, i64 I);
void tl_rms_norm(const float* x, i64 ldx, const float* w, float* out, i64 ldo, i64 M, i64 N, float eps);
void tl_decode_attention(const float* q, i64 ldq, const float* k_new, i64 ldk, const float* v_new, i64 ldv,
                         void* k_cache, void* v_cache, int kv_kind, const int32_t* block_tables,
                         i64 max_blocks, const int32_t* seq_lens, const float* cos_table,
                         const float* sin_table, int rope, float* out, i64 B, i64 H, i64 KVH, i64 D,
                         i64 block_size, float scale, int nthreads);
void tl_decode_attention_windowed(const float* q, i64 ldq, const float* k_new, i64 ldk, const float* v_new,
                                  i64 ldv, void* k_cache, void* v_cache, int kv_kind,
                                  const int32_t* block_tables, i64 max_blocks, const int32_t* seq_lens,
                                  const float* cos_table, const float* sin_table, float* out, i64 B, i64 H,
                                  i64 KVH, i64 D, i64 block_size, float scale, int nthreads, i64 window,
                                  float softcap);
void tl_moe_ffn(const i64* moe, const float* h, i64 ldh, float* out, i64 ldo, i64 B, int nthreads);
}
