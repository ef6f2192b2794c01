/* triolm's CPU kernels, built at run time by triolm/kernels/native.py.

   Why native code: on CPU, torch's float16 GEMV converts weights slower than memory
   streams them (measured here: no faster than float32 at batch 1), and its int8 paths
   re-quantize weights or activations. These kernels read weights exactly as the file
   stores them (float16, or Q8_0 int8 codes with one scale per 32), convert them in
   registers and compute in float32 — so results equal the dequantized float32 model up
   to summation order. Decode attention reads the paged KV cache in place (no per-layer
   gather), applies RoPE and writes the new key/value in the same pass.

   No torch headers: the library builds in a few seconds and is called through ctypes
   (which releases the GIL during each call). Its own small thread pool (see below) stays
   fast on a machine shared with other processes, where OpenMP barriers stall. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#define TL_AVX512 1
#else
#define TL_AVX512 0
#endif

typedef int64_t i64;

#include "half.h"
#include "vec_exp.h"

extern "C" int tl_has_avx512(void) { return TL_AVX512; }

/* ------------------------------------------------------------------ thread pool
   Why not OpenMP: a parallel region ends in a barrier that waits for every thread of
   the team. On a shared machine a worker is often descheduled, and the caller then
   spins for a whole time slice; with ~150 regions per decode step, steps took 10x
   longer under load. Here chunks are claimed from a shared ticket: the caller does
   every chunk nobody else took and waits only for chunks already in progress. Workers
   spin briefly between kernels (a decode step calls them back to back), then sleep. */

static inline void cpu_relax() {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
}

/* Nonzero while the server's event loop has work (serving/loop_core.py sets and clears
   it). Parallel loops then run on the calling thread alone and an idle worker sleeps at
   once: the loop gets the other core rather than preempting a kernel thread in the
   middle of a chunk, which stalled the whole step for as long as the loop ran. */
extern "C" { std::atomic<int> tl_loop_busy{0}; }

namespace {
struct Job {
    void (*fn)(void*, i64);
    void* ctx;
    i64 n;
};

class Pool {
  public:
    std::atomic<uint64_t> ticket{0};  // (job id << 32) | next chunk
    std::atomic<i64> done{0};
    std::atomic<uint32_t> job_id{0};
    std::atomic<int> sleeping{0};
    std::atomic<int64_t> spin_ns{150000};
    /* Two slots, job `id` in slot id & 1. A worker that wakes late may copy its slot
       while the caller already writes the next job; with one slot that copy could be
       torn (fn of one job, n of the next) and still claim a chunk of the old ticket.
       Slot id & 1 is rewritten only for job id + 2, which is published after the ticket
       has moved past `id`, so a copy made before a successful claim is always whole. */
    Job jobs[2] = {{nullptr, nullptr, 0}, {nullptr, nullptr, 0}};
    std::mutex mu, run_mu;
    std::condition_variable cv;
    int workers = 0;

    void ensure(int n) {
        for (; workers < n; workers++) std::thread([this] { loop(); }).detach();
    }

    void run_chunks(uint32_t id, const Job& j) {
        for (;;) {
            uint64_t t = ticket.load(std::memory_order_acquire);
            if ((uint32_t)(t >> 32) != id || (i64)(t & 0xffffffffu) >= j.n) return;
            if (!ticket.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel)) continue;
            j.fn(j.ctx, (i64)(t & 0xffffffffu));
            done.fetch_add(1, std::memory_order_acq_rel);
        }
    }

    void loop() {
        uint32_t seen = job_id.load();
        for (;;) {
            uint32_t id;
            auto start = std::chrono::steady_clock::now();
            int spins = 0;
            while ((id = job_id.load(std::memory_order_seq_cst)) == seen) {
                cpu_relax();
                if (++spins % 64) continue;
                if (!tl_loop_busy.load(std::memory_order_relaxed) &&
                    std::chrono::steady_clock::now() - start < std::chrono::nanoseconds(spin_ns.load())) continue;
                std::unique_lock<std::mutex> lk(mu);
                sleeping.fetch_add(1, std::memory_order_seq_cst);
                cv.wait(lk, [&] { return job_id.load(std::memory_order_seq_cst) != seen; });
                sleeping.fetch_sub(1, std::memory_order_seq_cst);
                start = std::chrono::steady_clock::now();
            }
            seen = id;
            Job j = jobs[id & 1];  // whole whenever a chunk of `id` can still be claimed
            run_chunks(id, j);
        }
    }

    void run(i64 n, int nthreads, void (*fn)(void*, i64), void* ctx) {
        std::unique_lock<std::mutex> guard(run_mu, std::try_to_lock);
        if (nthreads <= 1 || n <= 1 || tl_loop_busy.load(std::memory_order_relaxed) || !guard.owns_lock()) {
            for (i64 i = 0; i < n; i++) fn(ctx, i);
            return;
        }
        ensure(nthreads - 1);
        const uint32_t id = job_id.load() + 1;
        jobs[id & 1] = Job{fn, ctx, n};
        done.store(0, std::memory_order_relaxed);
        ticket.store((uint64_t)id << 32, std::memory_order_release);
        job_id.store(id, std::memory_order_seq_cst);
        if (sleeping.load(std::memory_order_seq_cst) > 0) {
            std::lock_guard<std::mutex> lk(mu);
            cv.notify_all();
        }
        run_chunks(id, jobs[id & 1]);
        while (done.load(std::memory_order_acquire) < n) cpu_relax();
    }
};

Pool* pool() {
    static Pool* p = new Pool();  // never destroyed: detached workers outlive main
    return p;
}

template <class F>
void parallel_for(i64 n, int nthreads, F&& body) {
    auto tramp = [](void* ctx, i64 i) { (*static_cast<F*>(ctx))(i); };
    pool()->run(n, nthreads, tramp, (void*)&body);
}
}  // namespace

extern "C" void tl_set_spin_us(int us) { pool()->spin_ns.store((int64_t)us * 1000); }

/* The pool for the other translation units (quant_linear.cpp). */
extern "C" void tl_parallel_for(i64 n, int nthreads, void (*fn)(void*, i64), void* ctx) {
    pool()->run(n, nthreads, fn, ctx);
}

/* ------------------------------------------------------------------ linear layers
   y[m, n] (+)= sum_k x[m, k] * W[n, k], x float32 [M, K] (row stride ldx), y float32
   [M, N] (row stride ldy). Weights: float32 or float16 [N, K], or Q8_0 as int8 codes
   [N, K] plus float32 scales [N, K/32]. Work is split over chunks of output rows; inside
   a chunk a register tile (4 x-rows by 4 weight rows, or 8 by 2 for batches of 8+, where
   each converted weight vector then feeds 8 FMAs) streams each weight once, with a
   software prefetch of the next tile (rows are short: hardware prefetch alone left
   a third of the memory bandwidth unused). */

enum { W_F32 = 0, W_F16 = 1, W_Q8_0 = 2 };

#ifndef NCHUNK
#define NCHUNK 64
#endif
#ifndef PF_AHEAD
#define PF_AHEAD 4096
#endif
/* Float weights prefetch into L2, Q8_0 codes into L1. Measured in paired engine runs:
   float16 decode steps 11.05 -> 10.34 ms with the L2 hint (the L1 hint stalled on the
   line-fill buffers), Q8_0 no better either way. */
#ifndef PF_HINT_FP
#define PF_HINT_FP _MM_HINT_T1
#endif
#ifndef PF_HINT_Q8
#define PF_HINT_Q8 _MM_HINT_T0
#endif

#if TL_AVX512
static inline __m512 load_w_f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
}
static inline __m512 load_w_q8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
}
static inline __m512 wload(const float* p) { return _mm512_loadu_ps(p); }
static inline __m512 wload(const uint16_t* p) { return load_w_f16(p); }
static inline __m512 wload_mask(const float* p, __mmask16 mk) { return _mm512_maskz_loadu_ps(mk, p); }
static inline __m512 wload_mask(const uint16_t* p, __mmask16 mk) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, p));
}

/* Sixteen dot products at once: lane i of the result is the sum of the lanes of s[i].
   A transpose-and-add tree (45 shuffles/adds) instead of 16 separate horizontal
   reductions (~8 dependent operations each), which dominated decode attention. */
static inline __m512 hsum16(const __m512* s) {
    __m512 x[8], z[4];
    for (int i = 0; i < 8; i++)
        x[i] = _mm512_add_ps(_mm512_unpacklo_ps(s[2 * i], s[2 * i + 1]), _mm512_unpackhi_ps(s[2 * i], s[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        z[i] = _mm512_add_ps(_mm512_shuffle_ps(x[2 * i], x[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(x[2 * i], x[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 w01 = _mm512_add_ps(_mm512_shuffle_f32x4(z[0], z[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                     _mm512_shuffle_f32x4(z[0], z[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512 w23 = _mm512_add_ps(_mm512_shuffle_f32x4(z[2], z[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                     _mm512_shuffle_f32x4(z[2], z[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w01, w23, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(w01, w23, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* Write a register tile's sums to y (or add them): 16 accumulators go through hsum16. */
template <int MR, int NR>
static inline void store_tile(__m512 (&acc)[MR][NR], float* y, i64 ldy, int accumulate) {
    if (MR * NR == 16) {
        alignas(64) float r[16];
        _mm512_store_ps(r, hsum16(&acc[0][0]));
        for (int m = 0; m < MR; m++)
            for (int n = 0; n < NR; n++) y[m * ldy + n] = accumulate ? y[m * ldy + n] + r[m * NR + n] : r[m * NR + n];
        return;
    }
    for (int m = 0; m < MR; m++)
        for (int n = 0; n < NR; n++) {
            float s = _mm512_reduce_add_ps(acc[m][n]);
            y[m * ldy + n] = accumulate ? y[m * ldy + n] + s : s;
        }
}

template <int MR, int NR, class T>
static void tile_fp(const float* x, i64 ldx, const T* w, i64 K, float* y, i64 ldy, int accumulate) {
    __m512 acc[MR][NR];
    for (int m = 0; m < MR; m++) for (int n = 0; n < NR; n++) acc[m][n] = _mm512_setzero_ps();
    i64 k = 0;
    const char* pf = (const char*)(w + NR * K) + PF_AHEAD;
    for (; k + 16 <= K; k += 16) {
        __m512 wv[NR];
        if (((k * (i64)sizeof(T)) & 63) == 0)
            for (int n = 0; n < NR; n++) _mm_prefetch(pf + sizeof(T) * (n * K + k), PF_HINT_FP);
        for (int n = 0; n < NR; n++) wv[n] = wload(w + n * K + k);
        for (int m = 0; m < MR; m++) {
            __m512 xv = _mm512_loadu_ps(x + m * ldx + k);
            for (int n = 0; n < NR; n++) acc[m][n] = _mm512_fmadd_ps(wv[n], xv, acc[m][n]);
        }
    }
    if (k < K) {
        __mmask16 mk = (__mmask16)((1u << (K - k)) - 1);
        __m512 wv[NR];
        for (int n = 0; n < NR; n++) wv[n] = wload_mask(w + n * K + k, mk);
        for (int m = 0; m < MR; m++) {
            __m512 xv = _mm512_maskz_loadu_ps(mk, x + m * ldx + k);
            for (int n = 0; n < NR; n++) acc[m][n] = _mm512_fmadd_ps(wv[n], xv, acc[m][n]);
        }
    }
    store_tile<MR, NR>(acc, y, ldy, accumulate);
}

template <int MR, int NR>
static void tile_q8(const float* x, i64 ldx, const int8_t* w, const float* d, i64 K, float* y, i64 ldy, int accumulate) {
    /* K is a multiple of 32 (Q8_0 blocks). Weights are dequantized in registers
       (code * scale is exact in float32), then used like float weights. */
    __m512 acc[MR][NR];
    const i64 nb = K / 32;
    for (int m = 0; m < MR; m++) for (int n = 0; n < NR; n++) acc[m][n] = _mm512_setzero_ps();
    const char* pf = (const char*)(w + NR * K) + PF_AHEAD;
#ifndef Q8_SCALE_PER_ELEMENT
    if (MR == 1) {
        /* One x-row (single-stream decode): sum code * x over the block first, then
           scale the block sum once — two instructions per block and row fewer than
           scaling every code, on a kernel that is partly issue-bound. */
        for (i64 b = 0; b < nb; b++) {
            for (int n = 0; n < NR; n++) _mm_prefetch(pf + n * K + b * 32, PF_HINT_Q8);
            const __m512 x0 = _mm512_loadu_ps(x + b * 32), x1 = _mm512_loadu_ps(x + b * 32 + 16);
            for (int n = 0; n < NR; n++) {
                __m512 blk = _mm512_mul_ps(load_w_q8(w + n * K + b * 32), x0);
                blk = _mm512_fmadd_ps(load_w_q8(w + n * K + b * 32 + 16), x1, blk);
                acc[0][n] = _mm512_fmadd_ps(blk, _mm512_set1_ps(d[n * nb + b]), acc[0][n]);
            }
        }
        store_tile<MR, NR>(acc, y, ldy, accumulate);
        return;
    }
#endif
    for (i64 b = 0; b < nb; b++) {
        __m512 dv[NR];
        for (int n = 0; n < NR; n++) _mm_prefetch(pf + n * K + b * 32, PF_HINT_Q8);
        for (int n = 0; n < NR; n++) dv[n] = _mm512_set1_ps(d[n * nb + b]);
        for (int half = 0; half < 2; half++) {
            const i64 k = b * 32 + half * 16;
            __m512 wv[NR];
            for (int n = 0; n < NR; n++) wv[n] = _mm512_mul_ps(load_w_q8(w + n * K + k), dv[n]);
            for (int m = 0; m < MR; m++) {
                __m512 xv = _mm512_loadu_ps(x + m * ldx + k);
                for (int n = 0; n < NR; n++) acc[m][n] = _mm512_fmadd_ps(wv[n], xv, acc[m][n]);
            }
        }
    }
    store_tile<MR, NR>(acc, y, ldy, accumulate);
}
#else
static inline float to_f(float v) { return v; }
static inline float to_f(uint16_t v) { return h2f(v); }
template <int MR, int NR, class T>
static void tile_fp(const float* x, i64 ldx, const T* w, i64 K, float* y, i64 ldy, int accumulate) {
    for (int m = 0; m < MR; m++)
        for (int n = 0; n < NR; n++) {
            float s = 0.f;
            for (i64 k = 0; k < K; k++) s += to_f(w[n * K + k]) * x[m * ldx + k];
            y[m * ldy + n] = accumulate ? y[m * ldy + n] + s : s;
        }
}
template <int MR, int NR>
static void tile_q8(const float* x, i64 ldx, const int8_t* w, const float* d, i64 K, float* y, i64 ldy, int accumulate) {
    const i64 nb = K / 32;
    for (int m = 0; m < MR; m++)
        for (int n = 0; n < NR; n++) {
            float s = 0.f;
            for (i64 k = 0; k < K; k++) s += ((float)w[n * K + k] * d[n * nb + k / 32]) * x[m * ldx + k];
            y[m * ldy + n] = accumulate ? y[m * ldy + n] + s : s;
        }
}
#endif

/* One weight matrix in any format, seen through a uniform tile call. */
struct WeightRef {
    int kind;
    const void* w;
    const float* d;  // Q8_0 scales
    i64 K;
};

template <int MR, int NR>
static inline void tile_any(const WeightRef& W, i64 n, const float* x, i64 ldx, float* y, i64 ldy, int acc) {
    const i64 K = W.K;
    if (W.kind == W_F16) tile_fp<MR, NR>(x, ldx, (const uint16_t*)W.w + n * K, K, y, ldy, acc);
    else if (W.kind == W_Q8_0) tile_q8<MR, NR>(x, ldx, (const int8_t*)W.w + n * K, W.d + n * (K / 32), K, y, ldy, acc);
    else tile_fp<MR, NR>(x, ldx, (const float*)W.w + n * K, K, y, ldy, acc);
}

typedef void (*tile_fn)(const WeightRef&, i64, const float*, i64, float*, i64, int);
static const tile_fn TILES[4][4] = {
    {tile_any<1, 1>, tile_any<1, 2>, tile_any<1, 3>, tile_any<1, 4>},
    {tile_any<2, 1>, tile_any<2, 2>, tile_any<2, 3>, tile_any<2, 4>},
    {tile_any<3, 1>, tile_any<3, 2>, tile_any<3, 3>, tile_any<3, 4>},
    {tile_any<4, 1>, tile_any<4, 2>, tile_any<4, 3>, tile_any<4, 4>},
};
static const tile_fn TILES_8[2] = {tile_any<8, 1>, tile_any<8, 2>};

/* Rows [n0, n1) of a float16 / Q8_0 weight as float32 into out [(n1 - n0), K]. */
static void expand_rows(const WeightRef& W, i64 n0, i64 n1, float* out) {
    const i64 K = W.K;
    if (W.kind == W_F16) {
        const uint16_t* src = (const uint16_t*)W.w + n0 * K;
        const i64 n = (n1 - n0) * K;
        i64 i = 0;
#if TL_AVX512
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, load_w_f16(src + i));
#endif
        for (; i < n; i++) out[i] = h2f(src[i]);
    } else {
        const int8_t* src = (const int8_t*)W.w + n0 * K;
        const float* d = W.d + n0 * (K / 32);
        const i64 nb = (n1 - n0) * (K / 32);
        for (i64 b = 0; b < nb; b++)
            for (int j = 0; j < 32; j++) out[b * 32 + j] = (float)src[b * 32 + j] * d[b];
    }
}

/* For quant_linear.cpp's chunks of many x-rows. */
extern "C" void tl_expand_rows(int kind, const void* w, const float* d, i64 K, i64 n0, i64 n1, float* out) {
    expand_rows(WeightRef{kind, w, d, K}, n0, n1, out);
}

/* Q8_0 only. On one 3072x576 matrix (us, one thread), expand vs in-register: 8 rows
   491/436, 16 rows 753/874 — but in whole decode steps of the benchmark model (both
   threads, every matrix) in-register wins up to 20 rows: 12 rows 29.5 vs 35.2 ms,
   16 rows 43.6 vs 49.5, 20 rows 54.1 vs 57.0; at 24 rows expanding is 2 % ahead.
   Float16 converts cheaply in registers (16 rows: 528 in-register vs 843 expanded),
   so it never takes this path. */
static i64 g_expand_min_rows = 24;
extern "C" void tl_set_expand_min_rows(i64 rows) { g_expand_min_rows = rows; }
/* Float16 converts cheaply in registers: expanded (packed-x GEMM) only beyond this many
   x-rows. One thread, 1536x576 (ms, in registers / packed): 16 rows 0.278 / 0.421, 32
   rows 0.573 / 0.453, 64 rows 1.004 / 0.864. */
#ifndef F16_INREG_MAX_ROWS
#define F16_INREG_MAX_ROWS 24
#endif
static const i64 g_f16_inreg_max_rows = F16_INREG_MAX_ROWS;
/* Column slices of expanded chunks (quant_linear.cpp's KC, KC_MAX). */
#define KSLICE 512
#define KSLICE_MAX 1024

/* GGUF block kinds and stacked weights: quant_linear.cpp. */
extern "C" void tl_linear_ext(int kind, const void* w, const float* d, const float* x, i64 ldx, float* y,
                              i64 ldy, i64 M, i64 N, i64 K, int accumulate, int nthreads);

static void linear(const WeightRef& W, const float* x, i64 ldx, float* y, i64 ldy, i64 M, i64 N,
                   int accumulate, int nthreads) {
    if (W.kind > W_Q8_0) {
        tl_linear_ext(W.kind, W.w, W.d, x, ldx, y, ldy, M, N, W.K, accumulate, nthreads);
        return;
    }
    const i64 nchunks = (N + NCHUNK - 1) / NCHUNK;
    const bool expand = (W.kind == W_Q8_0 && M >= g_expand_min_rows) || (W.kind == W_F16 && M > g_f16_inreg_max_rows);
#if TL_AVX512
    if (expand) {
        /* chunks expanded once into L2, then the packed-x GEMM (quant_linear.cpp, gemm_f32.h) */
        tl_linear_ext(W.kind, W.w, W.d, x, ldx, y, ldy, M, N, W.K, accumulate, nthreads);
        return;
    }
#endif
    if (expand) {
        /* Batches and prompts: expand each chunk of rows once into a float32 buffer that
           stays in L2, so the conversion is not repeated for every group of 8 x-rows.
           Long rows are multiplied in slices of KSLICE columns (partial sums add up in
           y), so the 8 x-rows a tile reads stay in L1. */
        const i64 K = W.K, sc = K <= KSLICE_MAX ? K : KSLICE;
        parallel_for(nchunks, nthreads, [&](i64 c) {
            const i64 n0 = c * NCHUNK, n1 = n0 + NCHUNK < N ? n0 + NCHUNK : N, rows = n1 - n0;
            thread_local std::vector<float> wbuf, sbuf;
            if ((i64)wbuf.size() < NCHUNK * K) wbuf.resize(NCHUNK * K);
            expand_rows(W, n0, n1, wbuf.data());
            if (sc < K && (i64)sbuf.size() < NCHUNK * sc) sbuf.resize(NCHUNK * sc);
            for (i64 k0 = 0; k0 < K; k0 += sc) {
                const i64 kc = K - k0 < sc ? K - k0 : sc;
                const float* wf = wbuf.data();
                if (sc < K) {
                    for (i64 r = 0; r < rows; r++) memcpy(sbuf.data() + r * kc, wbuf.data() + r * K + k0, kc * sizeof(float));
                    wf = sbuf.data();
                }
                const WeightRef F{W_F32, wf, nullptr, kc};
                const float* xs = x + k0;
                const int acc = accumulate || k0 > 0;
                i64 m0 = 0;
                for (; m0 + 8 <= M; m0 += 8)
                    for (i64 n = 0; n < rows; n += 2) {
                        const int nr = rows - n < 2 ? (int)(rows - n) : 2;
                        TILES_8[nr - 1](F, n, xs + m0 * ldx, ldx, y + m0 * ldy + n0 + n, ldy, acc);
                    }
                for (; m0 < M; m0 += 4) {
                    const int mr = M - m0 < 4 ? (int)(M - m0) : 4;
                    for (i64 n = 0; n < rows; n += 4) {
                        const int nr = rows - n < 4 ? (int)(rows - n) : 4;
                        TILES[mr - 1][nr - 1](F, n, xs + m0 * ldx, ldx, y + m0 * ldy + n0 + n, ldy, acc);
                    }
                }
            }
        });
        return;
    }
    parallel_for(nchunks, nthreads, [&](i64 c) {
        const i64 n0 = c * NCHUNK, n1 = n0 + NCHUNK < N ? n0 + NCHUNK : N;
        i64 m0 = 0;
        for (; m0 + 8 <= M; m0 += 8)
            for (i64 n = n0; n < n1; n += 2) {
                const int nr = n1 - n < 2 ? (int)(n1 - n) : 2;
                TILES_8[nr - 1](W, n, x + m0 * ldx, ldx, y + m0 * ldy + n, ldy, accumulate);
            }
        for (; m0 < M; m0 += 4) {
            const int mr = M - m0 < 4 ? (int)(M - m0) : 4;
            for (i64 n = n0; n < n1; n += 4) {
                const int nr = n1 - n < 4 ? (int)(n1 - n) : 4;
                TILES[mr - 1][nr - 1](W, n, x + m0 * ldx, ldx, y + m0 * ldy + n, ldy, accumulate);
            }
        }
    });
}

extern "C" void tl_linear(int kind, const void* w, const float* d, const float* x, i64 ldx, float* y,
                          i64 ldy, i64 M, i64 N, i64 K, int accumulate, int nthreads) {
    linear(WeightRef{kind, w, d, K}, x, ldx, y, ldy, M, N, accumulate, nthreads);
}

/* Expand weights into float32 (for the GEMMs of long prefills). */
extern "C" void tl_dequant_q8_0(const int8_t* w, const float* d, float* out, i64 N, i64 K, int nthreads) {
    const i64 nb = K / 32, rows_per = 64, nchunks = (N + rows_per - 1) / rows_per;
    parallel_for(nchunks, nthreads, [&](i64 c) {
      for (i64 n = c * rows_per; n < N && n < (c + 1) * rows_per; n++)
        for (i64 b = 0; b < nb; b++) {
            const float s = d[n * nb + b];
            const int8_t* src = w + n * K + b * 32;
            float* dst = out + n * K + b * 32;
#if TL_AVX512
            const __m512 sv = _mm512_set1_ps(s);
            _mm512_storeu_ps(dst, _mm512_mul_ps(load_w_q8(src), sv));
            _mm512_storeu_ps(dst + 16, _mm512_mul_ps(load_w_q8(src + 16), sv));
#else
            for (int j = 0; j < 32; j++) dst[j] = (float)src[j] * s;
#endif
        }
    });
}

extern "C" void tl_f16_to_f32(const uint16_t* w, float* out, i64 n, int nthreads) {
    const i64 chunk = 1 << 16, nchunks = (n + chunk - 1) / chunk;
    parallel_for(nchunks, nthreads, [&](i64 c) {
        const i64 lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n;
        i64 i = lo;
#if TL_AVX512
        for (; i + 16 <= hi; i += 16) _mm512_storeu_ps(out + i, load_w_f16(w + i));
#endif
        for (; i < hi; i++) out[i] = h2f(w[i]);
    });
}

#if TL_AVX512
#endif

/* out[m, j] = silu(gu[m, j]) * gu[m, I + j]: the gated MLP activation in one pass. */
extern "C" void tl_silu_mul(const float* gu, float* out, i64 M, i64 I) {
    for (i64 m = 0; m < M; m++) {
        const float* g = gu + m * 2 * I;
        const float* u = g + I;
        float* o = out + m * I;
        i64 j = 0;
#if TL_AVX512
        const __m512 one = _mm512_set1_ps(1.0f);
        for (; j + 16 <= I; j += 16) {
            __m512 a = _mm512_loadu_ps(g + j);
            __m512 sig = _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), a)));
            _mm512_storeu_ps(o + j, _mm512_mul_ps(_mm512_div_ps(a, sig), _mm512_loadu_ps(u + j)));
        }
#endif
        for (; j < I; j++) { float a = g[j]; o[j] = a / (1.0f + expf(-a)) * u[j]; }
    }
}

/* out[m, :] = x[m, :] / sqrt(mean(x[m, :]^2) + eps) * w: RMSNorm over rows of length N. */
extern "C" void tl_rms_norm(const float* x, i64 ldx, const float* w, float* out, i64 ldo,
                            i64 M, i64 N, float eps) {
    for (i64 m = 0; m < M; m++) {
        const float* xr = x + m * ldx;
        float* o = out + m * ldo;
        i64 j = 0;
        float ss = 0.f;
#if TL_AVX512
        __m512 acc = _mm512_setzero_ps();
        for (; j + 16 <= N; j += 16) { __m512 v = _mm512_loadu_ps(xr + j); acc = _mm512_fmadd_ps(v, v, acc); }
        ss = _mm512_reduce_add_ps(acc);
#endif
        for (; j < N; j++) ss += xr[j] * xr[j];
        const float r = 1.0f / sqrtf(ss / (float)N + eps);
        for (j = 0; j < N; j++) o[j] = (xr[j] * r) * w[j];
    }
}

/* ------------------------------------------------------------------ decode attention
   One new token per sequence. For each (sequence, kv head): rotate the new key and
   the group's queries (HF rotate-half RoPE), write key/value into the sequence's slot,
   then attend over its context by walking its block table in the flat slot cache
   [slots, kv_heads, head_dim]. Scores are kept per group in a small buffer; softmax in
   float32 with a vectorized exp.

   The cache holds float32 or float16 (KV_F16: half the memory and half the bytes a
   long-context step reads). Float16 entries are converted in registers and everything
   is computed in float32; new entries are rounded to nearest even, as torch's
   .to(float16) does for the prefill path, so both paths store identical bits. */

enum { KV_F32 = 0, KV_F16 = 1 };

static inline float kv_f(float v) { return v; }
static inline float kv_f(uint16_t v) { return h2f(v); }

static inline uint16_t f2h(float f) {
#if defined(__F16C__)
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) return sign | 0x7c00 | (x > 0x7f800000u ? 0x200 : 0);  // inf, nan
    if (x >= 0x477ff000u) return sign | 0x7c00;  // rounds past 65504
    if (x < 0x38800000u) {  // half subnormal (or zero): count units of 2^-24
        float a;
        memcpy(&a, &x, 4);
        return sign | (uint16_t)lrintf(a * 16777216.0f);
    }
    x += 0xc8000fffu + ((x >> 13) & 1);  // rebias the exponent, round to nearest even
    return sign | (uint16_t)(x >> 13);
#endif
}

static inline void kv_store(float* dst, const float* src, i64 D) { memcpy(dst, src, D * sizeof(float)); }
static inline void kv_store(uint16_t* dst, const float* src, i64 D) {
    i64 i = 0;
#if TL_AVX512
    for (; i + 16 <= D; i += 16)
        _mm256_storeu_si256((__m256i*)(dst + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
    for (; i < D; i++) dst[i] = f2h(src[i]);
}

#if TL_AVX512

template <class T>
static inline float dot_kv(const float* a, const T* b, int D) {
    __m512 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= D; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), wload(b + i), acc);
    if (i < D) {
        __mmask16 mk = (__mmask16)((1u << (D - i)) - 1);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, a + i), wload_mask(b + i, mk), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

/* s[t] = exp(s[t] - mx); returns the sum. */
static inline float exp_sum(float* s, i64 L, float mx) {
    __m512 sum = _mm512_setzero_ps(), m = _mm512_set1_ps(mx);
    i64 t = 0;
    for (; t + 16 <= L; t += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + t), m));
        _mm512_storeu_ps(s + t, e);
        sum = _mm512_add_ps(sum, e);
    }
    float total = _mm512_reduce_add_ps(sum);
    for (; t < L; t++) { s[t] = expf(s[t] - mx); total += s[t]; }
    return total;
}

template <class T>
static inline void axpy(float* y, float a, const T* x, int D) {
    __m512 av = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= D; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, wload(x + i), _mm512_loadu_ps(y + i)));
    for (; i < D; i++) y[i] += a * kv_f(x[i]);
}
#else
template <class T>
static inline float dot_kv(const float* a, const T* b, int D) {
    float s = 0.f;
    for (int i = 0; i < D; i++) s += a[i] * kv_f(b[i]);
    return s;
}
static inline float exp_sum(float* s, i64 L, float mx) {
    float total = 0.f;
    for (i64 t = 0; t < L; t++) { s[t] = expf(s[t] - mx); total += s[t]; }
    return total;
}
template <class T>
static inline void axpy(float* y, float a, const T* x, int D) {
    for (int i = 0; i < D; i++) y[i] += a * kv_f(x[i]);
}
#endif

#if TL_AVX512
/* scores[g * stride + i] = scale * q_g . rows[i] for i < n, heads g < G; D = 16 * DV. */
template <int DV, class T>
static void attn_scores(const float* q, int G, const T* const* rows, i64 n, float scale,
                        float* scores, i64 stride) {
    const __m512 sc = _mm512_set1_ps(scale);
    for (i64 t = 0; t < n; t += 16) {
        const int m = n - t < 16 ? (int)(n - t) : 16;
        for (int g = 0; g < G; g++) {
            __m512 qv[DV], s[16];
            for (int j = 0; j < DV; j++) qv[j] = _mm512_loadu_ps(q + g * 16 * DV + 16 * j);
            for (int i = 0; i < 16; i++) {
                if (i >= m) { s[i] = _mm512_setzero_ps(); continue; }
                const T* kr = rows[t + i];
                __m512 a = _mm512_mul_ps(qv[0], wload(kr));
                for (int j = 1; j < DV; j++) a = _mm512_fmadd_ps(qv[j], wload(kr + 16 * j), a);
                s[i] = a;
            }
            _mm512_mask_storeu_ps(scores + g * stride + t, (__mmask16)((1u << m) - 1),
                                  _mm512_mul_ps(hsum16(s), sc));
        }
    }
}

/* out[g] = sum_i p[g * stride + i] * rows[i] for GH heads, accumulators in registers. */
template <int DV, int GH, class T>
static void attn_values(const float* p, i64 stride, const T* const* rows, i64 n, float* out) {
    __m512 acc[GH][DV];
    for (int g = 0; g < GH; g++) for (int j = 0; j < DV; j++) acc[g][j] = _mm512_setzero_ps();
    for (i64 i = 0; i < n; i++) {
        const T* vr = rows[i];
        __m512 v[DV];
        for (int j = 0; j < DV; j++) v[j] = wload(vr + 16 * j);
        for (int g = 0; g < GH; g++) {
            const __m512 w = _mm512_set1_ps(p[g * stride + i]);
            for (int j = 0; j < DV; j++) acc[g][j] = _mm512_fmadd_ps(w, v[j], acc[g][j]);
        }
    }
    for (int g = 0; g < GH; g++) for (int j = 0; j < DV; j++) _mm512_storeu_ps(out + g * 16 * DV + 16 * j, acc[g][j]);
}

template <int DV, class T>
static void attn_values_all(const float* p, i64 stride, int G, const T* const* rows, i64 n, float* out) {
    typedef void (*values_fn)(const float*, i64, const T* const*, i64, float*);
    constexpr int MAXG = DV >= 8 ? 2 : (DV >= 4 ? 5 : 8);  // GH*DV + DV registers stay under 32
    static const values_fn fns[8] = {
        attn_values<DV, 1, T>, attn_values<DV, (MAXG >= 2 ? 2 : 1), T>, attn_values<DV, (MAXG >= 3 ? 3 : 1), T>,
        attn_values<DV, (MAXG >= 4 ? 4 : 1), T>, attn_values<DV, (MAXG >= 5 ? 5 : 1), T>,
        attn_values<DV, (MAXG >= 6 ? 6 : 1), T>, attn_values<DV, (MAXG >= 7 ? 7 : 1), T>,
        attn_values<DV, (MAXG >= 8 ? 8 : 1), T>};
    for (int g0 = 0; g0 < G;) {
        const int gh = G - g0 < MAXG ? G - g0 : MAXG;
        fns[gh - 1](p + g0 * stride, stride, rows, n, out + g0 * 16 * DV);
        g0 += gh;
    }
}

/* One chunk of one (sequence, kv head): scores, softmax numerators, value sums.
   Returns false when D has no vectorized variant (the caller then loops). */
template <class T>
static bool attn_chunk_vec(const float* q, int G, i64 D, const T* const* krows, const T* const* vrows,
                           i64 n, float scale, float* scores, i64 stride, float* accs, float* mx_sum) {
    switch (D) {
        case 16: attn_scores<1>(q, G, krows, n, scale, scores, stride); break;
        case 32: attn_scores<2>(q, G, krows, n, scale, scores, stride); break;
        case 64: attn_scores<4>(q, G, krows, n, scale, scores, stride); break;
        case 128: attn_scores<8>(q, G, krows, n, scale, scores, stride); break;
        default: return false;
    }
    for (int g = 0; g < G; g++) {
        float* sg = scores + g * stride;
        float mx = sg[0];
        for (i64 i = 1; i < n; i++) mx = sg[i] > mx ? sg[i] : mx;
        mx_sum[2 * g] = mx;
        mx_sum[2 * g + 1] = exp_sum(sg, n, mx);
    }
    switch (D) {
        case 16: attn_values_all<1>(scores, stride, G, vrows, n, accs); break;
        case 32: attn_values_all<2>(scores, stride, G, vrows, n, accs); break;
        case 64: attn_values_all<4>(scores, stride, G, vrows, n, accs); break;
        default: attn_values_all<8>(scores, stride, G, vrows, n, accs); break;
    }
    return true;
}
#else
template <class T>
static bool attn_chunk_vec(const float*, int, i64, const T* const*, const T* const*, i64, float,
                           float*, i64, float*, float*) {
    return false;
}
#endif

static inline void rope_rotate(const float* x, float* out, const float* cs, const float* sn, int D) {
    const int h = D / 2;
    for (int i = 0; i < h; i++) out[i] = x[i] * cs[i] + (-x[i + h]) * sn[i];
    for (int i = h; i < D; i++) out[i] = x[i] * cs[i] + x[i - h] * sn[i];
}

static i64 g_att_chunk = 256;
extern "C" void tl_set_att_chunk(i64 n) { g_att_chunk = n; }

template <class T>
static void decode_attention(
        const float* q, i64 ldq, const float* k_new, i64 ldk, const float* v_new, i64 ldv,
        T* k_cache, T* v_cache,
        const int32_t* block_tables, i64 max_blocks, const int32_t* seq_lens,
        const float* cos_table, const float* sin_table, int rope,
        float* out, i64 B, i64 H, i64 KVH, i64 D, i64 block_size, float scale, int nthreads,
        i64 window, float softcap) {
    /* window > 0: attend over the last `window` positions only (sliding-window layers;
       blocks before them need not exist); softcap > 0: scores -> cap * tanh(score / cap).
       Pass 1 rotates and stores the new key/value and the queries; pass 2 splits every
       context into chunks of ATT_CHUNK positions (so one long sequence still spreads
       over all threads) and keeps per chunk the running max, the exp-sum and the
       unnormalized value sum; pass 3 merges the chunks of each head. */
    const i64 ATT_CHUNK = g_att_chunk;
    const i64 G = H / KVH;
    const i64 slot_stride = KVH * D;
    auto first_pos = [&](i64 b) -> i64 { return window > 0 && seq_lens[b] > window ? seq_lens[b] - window : 0; };
    i64 lmax = 1;
    for (i64 b = 0; b < B; b++) lmax = seq_lens[b] - first_pos(b) > lmax ? seq_lens[b] - first_pos(b) : lmax;
    const i64 nch = (lmax + ATT_CHUNK - 1) / ATT_CHUNK;
    const i64 part_len = (D + 2 + 15) / 16 * 16;  // max, sum, acc[D]; padded to 64 bytes
    thread_local std::vector<float> qbuf_v, part_v;
    if ((i64)qbuf_v.size() < B * H * D) qbuf_v.resize(B * H * D);
    if ((i64)part_v.size() < B * H * nch * part_len) part_v.resize(B * H * nch * part_len);
    float* qbuf = qbuf_v.data();
    float* part = part_v.data();

    parallel_for(B * KVH, nthreads, [&](i64 task) {
        const i64 b = task / KVH, kh = task % KVH;
        const i64 pos = seq_lens[b] - 1;
        if (pos < 0 || pos / block_size >= max_blocks) return;  // no slot for it: never write out of bounds
        const int32_t* bt = block_tables + b * max_blocks;
        const float* cs = cos_table + pos * D;
        const float* sn = sin_table + pos * D;
        const i64 new_slot = (i64)bt[pos / block_size] * block_size + pos % block_size;
        T* kdst = k_cache + new_slot * slot_stride + kh * D;
        T* vdst = v_cache + new_slot * slot_stride + kh * D;
        const float* ksrc = k_new + b * ldk + kh * D;
        thread_local std::vector<float> krot_v;
        if ((i64)krot_v.size() < D) krot_v.resize(D);
        if (rope) { rope_rotate(ksrc, krot_v.data(), cs, sn, (int)D); ksrc = krot_v.data(); }
        kv_store(kdst, ksrc, D);
        kv_store(vdst, v_new + b * ldv + kh * D, D);
        for (i64 g = 0; g < G; g++) {
            const i64 h = kh * G + g;
            const float* qsrc = q + b * ldq + h * D;
            if (rope) rope_rotate(qsrc, qbuf + (b * H + h) * D, cs, sn, (int)D);
            else memcpy(qbuf + (b * H + h) * D, qsrc, D * sizeof(float));
        }
    });

    parallel_for(B * KVH * nch, nthreads, [&](i64 task) {
        const i64 c = task % nch, bk = task / nch, b = bk / KVH, kh = bk % KVH;
        const i64 L = seq_lens[b], t0 = first_pos(b) + c * ATT_CHUNK;
        const i64 t1 = t0 + ATT_CHUNK < L ? t0 + ATT_CHUNK : L;
        float* pbase = part + ((b * H + kh * G) * nch + c) * part_len;  // head g at + g * nch * part_len
        if (t0 >= L) {
            for (i64 g = 0; g < G; g++) { pbase[g * nch * part_len] = -INFINITY; pbase[g * nch * part_len + 1] = 0.f; }
            return;
        }
        const i64 n = t1 - t0;
        thread_local std::vector<float> sc_v, acc_v;
        if ((i64)sc_v.size() < G * ATT_CHUNK) sc_v.resize(G * ATT_CHUNK);
        if ((i64)acc_v.size() < G * D) acc_v.resize(G * D);
        float* scores = sc_v.data();
        float* accs = acc_v.data();  // accumulate privately: chunks of one head are neighbours in `part`
        memset(accs, 0, G * D * sizeof(float));
        const int32_t* bt = block_tables + b * max_blocks;
        const float* qr = qbuf + (b * H + kh * G) * D;
        thread_local std::vector<const T*> krows_v, vrows_v;
        thread_local std::vector<float> ms_v;
        if ((i64)krows_v.size() < ATT_CHUNK) { krows_v.resize(ATT_CHUNK); vrows_v.resize(ATT_CHUNK); }
        if ((i64)ms_v.size() < 2 * G) ms_v.resize(2 * G);
        for (i64 t = t0; t < t1; t++) {
            const i64 slot = (i64)bt[t / block_size] * block_size + t % block_size;
            krows_v[t - t0] = k_cache + slot * slot_stride + kh * D;
            vrows_v[t - t0] = v_cache + slot * slot_stride + kh * D;
        }
        if (softcap <= 0.f &&
            attn_chunk_vec<T>(qr, (int)G, D, krows_v.data(), vrows_v.data(), n, scale, scores, ATT_CHUNK, accs,
                              ms_v.data())) {
            for (i64 g = 0; g < G; g++) {
                float* pg = pbase + g * nch * part_len;
                pg[0] = ms_v[2 * g];
                pg[1] = ms_v[2 * g + 1];
                memcpy(pg + 2, accs + g * D, D * sizeof(float));
            }
            return;
        }
        // walk block by block: no division per position
        for (i64 t = t0; t < t1;) {
            const i64 blk = t / block_size, off = t % block_size;
            const i64 run = block_size - off < t1 - t ? block_size - off : t1 - t;
            const T* kr = k_cache + ((i64)bt[blk] * block_size + off) * slot_stride + kh * D;
            for (i64 i = 0; i < run; i++, t++, kr += slot_stride)
                for (i64 g = 0; g < G; g++) scores[g * ATT_CHUNK + (t - t0)] = dot_kv(qr + g * D, kr, (int)D) * scale;
        }
        if (softcap > 0.f)
            for (i64 g = 0; g < G; g++)
                for (i64 i = 0; i < n; i++) {
                    float& sc = scores[g * ATT_CHUNK + i];
                    sc = softcap * tanhf(sc / softcap);
                }
        for (i64 g = 0; g < G; g++) {
            float* sg = scores + g * ATT_CHUNK;
            float mx = sg[0];
            for (i64 i = 1; i < n; i++) mx = sg[i] > mx ? sg[i] : mx;
            float* pg = pbase + g * nch * part_len;
            pg[0] = mx;
            pg[1] = exp_sum(sg, n, mx);
        }
        for (i64 t = t0; t < t1;) {
            const i64 blk = t / block_size, off = t % block_size;
            const i64 run = block_size - off < t1 - t ? block_size - off : t1 - t;
            const T* vr = v_cache + ((i64)bt[blk] * block_size + off) * slot_stride + kh * D;
            for (i64 i = 0; i < run; i++, t++, vr += slot_stride)
                for (i64 g = 0; g < G; g++) axpy(accs + g * D, scores[g * ATT_CHUNK + (t - t0)], vr, (int)D);
        }
        for (i64 g = 0; g < G; g++) memcpy(pbase + g * nch * part_len + 2, accs + g * D, D * sizeof(float));
    });

    for (i64 bh = 0; bh < B * H; bh++) {
        const float* pb = part + bh * nch * part_len;
        float M = -INFINITY;
        for (i64 c = 0; c < nch; c++) M = pb[c * part_len] > M ? pb[c * part_len] : M;
        float* o = out + bh * D;
        memset(o, 0, D * sizeof(float));
        float total = 0.f;
        for (i64 c = 0; c < nch; c++) {
            const float* pc = pb + c * part_len;
            if (pc[1] == 0.f) continue;
            const float w = expf(pc[0] - M);
            total += w * pc[1];
            axpy(o, w, pc + 2, (int)D);
        }
        const float inv = 1.0f / total;
        for (i64 i = 0; i < D; i++) o[i] *= inv;
    }
}

/* k_cache/v_cache hold float32 (kv_kind KV_F32) or float16 (KV_F16) entries. */
extern "C" void tl_decode_attention(
        const float* q, i64 ldq, const float* k_new, i64 ldk, const float* v_new, i64 ldv,
        void* k_cache, void* v_cache, int kv_kind,
        const int32_t* block_tables, i64 max_blocks, const int32_t* seq_lens,
        const float* cos_table, const float* sin_table, int rope,
        float* out, i64 B, i64 H, i64 KVH, i64 D, i64 block_size, float scale, int nthreads) {
    if (kv_kind == KV_F16)
        decode_attention(q, ldq, k_new, ldk, v_new, ldv, (uint16_t*)k_cache, (uint16_t*)v_cache, block_tables,
                         max_blocks, seq_lens, cos_table, sin_table, rope, out, B, H, KVH, D, block_size, scale,
                         nthreads, 0, 0.f);
    else
        decode_attention(q, ldq, k_new, ldk, v_new, ldv, (float*)k_cache, (float*)v_cache, block_tables,
                         max_blocks, seq_lens, cos_table, sin_table, rope, out, B, H, KVH, D, block_size, scale,
                         nthreads, 0, 0.f);
}

/* tl_decode_attention over the last `window` positions (0: all) with scores soft-capped
   at `softcap` (0: none): Gemma's layers (gemma_decode.cpp). */
extern "C" void tl_decode_attention_windowed(
        const float* q, i64 ldq, const float* k_new, i64 ldk, const float* v_new, i64 ldv,
        void* k_cache, void* v_cache, int kv_kind,
        const int32_t* block_tables, i64 max_blocks, const int32_t* seq_lens,
        const float* cos_table, const float* sin_table,
        float* out, i64 B, i64 H, i64 KVH, i64 D, i64 block_size, float scale, int nthreads,
        i64 window, float softcap) {
    if (kv_kind == KV_F16)
        decode_attention(q, ldq, k_new, ldk, v_new, ldv, (uint16_t*)k_cache, (uint16_t*)v_cache, block_tables,
                         max_blocks, seq_lens, cos_table, sin_table, 1, out, B, H, KVH, D, block_size, scale,
                         nthreads, window, softcap);
    else
        decode_attention(q, ldq, k_new, ldk, v_new, ldv, (float*)k_cache, (float*)v_cache, block_tables,
                         max_blocks, seq_lens, cos_table, sin_table, 1, out, B, H, KVH, D, block_size, scale,
                         nthreads, window, softcap);
}
