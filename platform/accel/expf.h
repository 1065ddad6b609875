/* exp for rayrec's C kernels (softmax_rows.c, gru.c), branch-free so that loops over it
   vectorize: libm's expf is a call per element, which gcc does not vectorize without
   -ffast-math. */
#ifndef RAYREC_EXPF_H
#define RAYREC_EXPF_H
#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x) for x <= 0 (x - rowmax in the softmax, -|x| in a gate): 2^n * p(r) with x = n ln2 + r, |r| <= ln2 / 2, and a degree-6 polynomial (relative error < 2e-7).
   Below -87 the result is 0, as float exp underflows there too. */
static inline float exp_nonpositive(float x) {
    const float lo = -87.0f;
    float xc = x < lo ? lo : x;
    float n = rintf(xc * 1.44269504088896341f);
    float r = xc - n * 0.693359375f;       /* ln2 split in two for an exact first product */
    r = r + n * 2.12194440e-4f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t e = (int32_t)n + 127;
    uint32_t bits = (uint32_t)e << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return x < lo ? 0.0f : p * scale;
}

#endif
