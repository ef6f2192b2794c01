/* The activations of one whole-step decode call (decode_step.cpp, gemma_decode.cpp):
   one thread-local block carved into the buffers a layer needs, grown as batches grow
   and reused by every step on the calling thread. */

#pragma once

#include <stdint.h>
#include <vector>

struct StepBuffers {
    float* h;       // [B, hidden] the normalised input of a projection
    float* branch;  // [B, hidden] a branch before it joins the residual stream
    float* qkv;     // [B, q + 2 kv]
    float* attn;    // [B, q]
    float* gu;      // [B, 2 intermediate] gate|up
    float* act;     // [B, intermediate]
};

inline StepBuffers step_buffers(int64_t B, int64_t hidden, int64_t qkv, int64_t q, int64_t intermediate) {
    thread_local std::vector<float> scratch;
    const size_t need = (size_t)(B * (2 * hidden + qkv + q + 3 * intermediate));
    if (scratch.size() < need) scratch.resize(need);
    StepBuffers s;
    s.h = scratch.data();
    s.branch = s.h + B * hidden;
    s.qkv = s.branch + B * hidden;
    s.attn = s.qkv + B * qkv;
    s.gu = s.attn + B * q;
    s.act = s.gu + B * 2 * intermediate;
    return s;
}
