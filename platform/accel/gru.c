/* One time step of a GRU layer's gates, forward and backward, over the rows still active.

   torch's CPU GRU runs each time step as a matmul and about ten elementwise ops forward
   (and their autograd nodes backward), each a pass over [batch, 3 d] with a dispatch of its
   own; at 20 steps, 2 layers and d_model 192 that was half of a training step. gru_fast.py
   keeps the matmuls in torch (one for the whole sequence's input projection, one per step
   for the recurrence) and calls these loops for the rest: one pass per step each way.

   Gate order and equations are torch's (r, z, n):
     r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z), n = tanh(gi_n + r * gh_n),
     h = (1 - z) * n + z * h_prev,
   with gi = x W_ih^T + b_ih and gh = h_prev W_hh^T + b_hh. Rows are [n, 3 d] or [n, d],
   contiguous; h_prev NULL means zeros (the first step). */
#include <stdint.h>

#include "expf.h"
#include "schedule.h"

#define PARALLEL_FROM 16384  /* elements per step below which one thread is faster */

static inline float sigmoid(float x) {
    float e = exp_nonpositive(-fabsf(x));          /* exp(-|x|): never overflows */
    float s = 1.0f / (1.0f + e);
    return x >= 0.0f ? s : e * s;
}

static inline float tanh_(float x) {
    float e = exp_nonpositive(-2.0f * fabsf(x));   /* |error| < 2e-7 */
    float t = (1.0f - e) / (1.0f + e);
    return x >= 0.0f ? t : -t;
}

/* h <- the step's output; gates <- (r, z, n) for the backward (NULL in inference). */
void gru_step_forward(int64_t n, int64_t d, const float *gi, const float *gh, const float *h_prev, float *h,
                      float *gates, int32_t threads) {
#pragma omp parallel for schedule(RAYREC_SCHEDULE(rows_per_item(d))) num_threads(threads) if (n * d >= PARALLEL_FROM)
    for (int64_t i = 0; i < n; i++) {
        const float *a = gi + i * 3 * d, *b = gh + i * 3 * d, *hp = h_prev ? h_prev + i * d : 0;
        float *o = h + i * d, *g = gates ? gates + i * 3 * d : 0;
#pragma omp simd
        for (int64_t j = 0; j < d; j++) {
            float r = sigmoid(a[j] + b[j]);
            float z = sigmoid(a[d + j] + b[d + j]);
            float c = tanh_(a[2 * d + j] + r * b[2 * d + j]);
            float p = hp ? hp[j] : 0.0f;
            o[j] = c + z * (p - c);
            if (g) {
                g[j] = r;
                g[d + j] = z;
                g[2 * d + j] = c;
            }
        }
    }
}

/* With dh = dout + carry (the gradient reaching the step's output from above and from the
   next step): dgi <- the gradient of gi, dgh <- that of gh, carry <- dh * z, the part of
   h_prev's gradient that bypasses W_hh (the caller adds dgh W_hh). dout NULL means zeros. */
void gru_step_backward(int64_t n, int64_t d, const float *dout, float *carry, const float *gates, const float *gh,
                       const float *h_prev, float *dgi, float *dgh, int32_t threads) {
#pragma omp parallel for schedule(RAYREC_SCHEDULE(rows_per_item(d))) num_threads(threads) if (n * d >= PARALLEL_FROM)
    for (int64_t i = 0; i < n; i++) {
        const float *g = gates + i * 3 * d, *b = gh + i * 3 * d, *hp = h_prev ? h_prev + i * d : 0;
        const float *up = dout ? dout + i * d : 0;
        float *cy = carry + i * d, *ga = dgi + i * 3 * d, *gb = dgh + i * 3 * d;
#pragma omp simd
        for (int64_t j = 0; j < d; j++) {
            float r = g[j], z = g[d + j], c = g[2 * d + j];
            float dh = cy[j] + (up ? up[j] : 0.0f);
            float p = hp ? hp[j] : 0.0f;
            float dc = dh * (1.0f - z) * (1.0f - c * c);   /* through tanh */
            float dr = dc * b[2 * d + j] * r * (1.0f - r);
            float dz = dh * (p - c) * z * (1.0f - z);
            ga[j] = dr;
            ga[d + j] = dz;
            ga[2 * d + j] = dc;
            gb[j] = dr;
            gb[d + j] = dz;
            gb[2 * d + j] = dc * r;
            cy[j] = dh * z;
        }
    }
}
