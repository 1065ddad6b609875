/* Row softmax statistics and gradient over a bf16 logits buffer, one pass each.

   rayrec's fused loss (losses.py) keeps the [rows, catalogue] logits in bf16. In eager
   torch each block of rows is widened to fp32, reduced and exponentiated in five passes,
   and narrowed back: 70% of the loss's time at d_model 64. Here each row is read once
   from memory (its max pass runs from cache) and written once, with fp32 arithmetic.

   Built on first use by softmax_rows.py with the machine's C compiler; plain C, no
   Python or torch headers, called through ctypes on raw pointers. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

static inline float bf16_to_f32(uint16_t v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {  /* round to nearest even, as torch does */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);  /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* exp(x) for x <= 0 (x - rowmax), branch-free so that the loop vectorizes: 2^n * p(r)
   with x = n ln2 + r, |r| <= ln2 / 2, and a degree-6 polynomial (relative error < 2e-7).
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

#ifdef __AVX512F__
/* AVX-512: 16 columns per step, tails by mask. exp as above, with scalef for 2^n. */
static inline __m512 load16(const uint16_t *p, __mmask16 k) {
    __m256i h = _mm256_maskz_loadu_epi16(k, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline void store16(uint16_t *p, __m512 v, __mmask16 k) {
#ifdef __AVX512BF16__
    _mm256_mask_storeu_epi16(p, k, (__m256i)_mm512_cvtneps_pbh(v));
#else
    __m512i u = _mm512_castps_si512(v);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    _mm256_mask_storeu_epi16(p, k, _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16)));
#endif
}

static inline __m512 exp16(__m512 x) {  /* x <= 0 */
    const __m512 lo = _mm512_set1_ps(-87.0f);
    __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    __m512 xc = _mm512_max_ps(x, lo);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps((__mmask16)~under, p, n);
}

static void forward_row(uint16_t *row, int64_t c, float *max_out, float *sum_out, float *total_out) {
    __m512 m = _mm512_set1_ps(-INFINITY), t = _mm512_setzero_ps();
    for (int64_t j = 0; j < c; j += 16) {
        __mmask16 k = c - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (c - j)) - 1);
        __m512 v = load16(row + j, k);
        m = _mm512_mask_max_ps(m, k, m, v);
        t = _mm512_add_ps(t, v);  /* masked-off lanes load as 0 */
    }
    float mx = _mm512_reduce_max_ps(m);
    if (!isfinite(mx)) mx = 0.0f;
    __m512 mv = _mm512_set1_ps(mx), s = _mm512_setzero_ps();
    for (int64_t j = 0; j < c; j += 16) {
        __mmask16 k = c - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (c - j)) - 1);
        __m512 e = _mm512_maskz_mov_ps(k, exp16(_mm512_sub_ps(load16(row + j, k), mv)));
        store16(row + j, e, k);
        s = _mm512_add_ps(s, e);
    }
    *max_out = mx;
    *sum_out = _mm512_reduce_add_ps(s);
    *total_out = _mm512_reduce_add_ps(t);
}

static void backward_row(uint16_t *row, int64_t c, float k_, float spread) {
    __m512 kv = _mm512_set1_ps(k_), sv = _mm512_set1_ps(spread);
    for (int64_t j = 0; j < c; j += 16) {
        __mmask16 k = c - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (c - j)) - 1);
        store16(row + j, _mm512_fmsub_ps(load16(row + j, k), kv, sv), k);
    }
}
#endif

/* Rows [r0, r1) of `x` (row stride `ld` elements, `c` columns): x <- exp(x - rowmax) in
   bf16; lse[i] = log(sum) + rowmax, inv[i] = 1 / sum, picked[i] = x[i, labels[i]] and,
   when `total` is given, total[i] = sum of the row's logits. A row without a finite
   maximum (all -inf) uses 0 as its maximum. */
void softmax_rows_forward(int64_t r0, int64_t r1, uint16_t *x, int64_t c, int64_t ld,
                          const int64_t *labels, float *lse, float *inv, float *picked, float *total) {
    for (int64_t i = r0; i < r1; i++) {
        uint16_t *row = x + i * ld;
        picked[i] = bf16_to_f32(row[labels[i]]);
        float m, s, t;
#ifdef __AVX512F__
        forward_row(row, c, &m, &s, &t);
#else
        m = -INFINITY;
        t = 0.0f;
#pragma omp simd reduction(max:m) reduction(+:t)
        for (int64_t j = 0; j < c; j++) {
            float v = bf16_to_f32(row[j]);
            m = v > m ? v : m;
            t += v;
        }
        if (!isfinite(m)) m = 0.0f;
        s = 0.0f;
#pragma omp simd reduction(+:s)
        for (int64_t j = 0; j < c; j++) {
            float e = exp_nonpositive(bf16_to_f32(row[j]) - m);
            row[j] = f32_to_bf16(e);
            s += e;
        }
#endif
        if (total) total[i] = t;
        lse[i] = m + logf(s);
        inv[i] = 1.0f / s;
    }
}

/* Rows [r0, r1) of the forward's exp(x - rowmax) -> the loss gradient, in place:
   e * inv[i] * scale - spread, and at the label also - target. */
void softmax_rows_backward(int64_t r0, int64_t r1, uint16_t *x, int64_t c, int64_t ld,
                           const int64_t *labels, const float *inv, float scale, float spread, float target) {
    for (int64_t i = r0; i < r1; i++) {
        uint16_t *row = x + i * ld;
        float k = inv[i] * scale;
        float at_label = bf16_to_f32(row[labels[i]]) * k - spread - target;
#ifdef __AVX512F__
        backward_row(row, c, k, spread);
#else
#pragma omp simd
        for (int64_t j = 0; j < c; j++)
            row[j] = f32_to_bf16(bf16_to_f32(row[j]) * k - spread);
#endif
        row[labels[i]] = f32_to_bf16(at_label);
    }
}
