/* Dropout in one pass: out = x * keep * scale, the keep mask a hash of (seed, position).

   torch draws the mask from its Mersenne Twister (a 64-bit draw per four elements in
   dropout.py), compares, converts and multiplies in four more passes, and keeps the mask
   for the backward. Here the mask is a counter-based hash (splitmix64's finalizer): the
   forward and the backward each recompute it in the pass that applies it, nothing is
   stored, and the draw at a position does not depend on how the work is split. Each 64-bit
   hash gives four 16-bit slices, one per element; an element is kept when its slice is at
   least `threshold` (p * 65536), so the keep probability is exact to 1/65536. */
#include <stdint.h>

#include "bf16.h"
#include "schedule.h"

static inline uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline float kept(uint64_t seed, int64_t i, uint32_t threshold, float scale) {
    uint64_t h = mix(seed + (uint64_t)(i >> 2) * 0x9e3779b97f4a7c15ull);
    uint32_t slice = (uint32_t)(h >> ((i & 3) * 16)) & 0xffffu;
    return slice >= threshold ? scale : 0.0f;
}

#define BLOCK 8192  /* elements per OpenMP work item */

/* The n elements of `x` -> `out` (bf16 if `bf16`, else fp32; may be the same buffer):
   x * scale where kept, else 0, on `threads` threads of the process's OpenMP pool. */
void dropout_apply(int64_t n, const void *x, void *out, int32_t bf16, uint64_t seed, uint32_t threshold,
                   float scale, int32_t threads) {
#pragma omp parallel for schedule(RAYREC_SCHEDULE(1)) num_threads(threads)
    for (int64_t b = 0; b < (n + BLOCK - 1) / BLOCK; b++) {
        int64_t i0 = b * BLOCK, i1 = i0 + BLOCK < n ? i0 + BLOCK : n;
        if (bf16) {
            const uint16_t *a = x;
            uint16_t *o = out;
#pragma omp simd
            for (int64_t i = i0; i < i1; i++) o[i] = f32_to_bf16(bf16_to_f32(a[i]) * kept(seed, i, threshold, scale));
        } else {
            const float *a = x;
            float *o = out;
#pragma omp simd
            for (int64_t i = i0; i < i1; i++) o[i] = a[i] * kept(seed, i, threshold, scale);
        }
    }
}
