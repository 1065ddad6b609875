/* Row softmax statistics and gradient over a logits buffer (bf16 or fp32), one pass each.

   rayrec's fused loss (losses.py) keeps the [rows, catalogue] logits in bf16 (or fp32).
   In eager torch each block of rows is widened to fp32, reduced and exponentiated in five
   passes, and narrowed back: 70% of the loss's time at d_model 64. Here each row is read
   once from memory (its max pass runs from cache) and written once, in fp32 arithmetic.

   Built on first use by native.py with the machine's C compiler; plain C with OpenMP,
   no Python or torch headers, called through ctypes on raw pointers. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"
#include "schedule.h"
#include "expf.h"
#ifdef __AVX512F__
#include <immintrin.h>
#endif

static inline float get(const void *row, int64_t j, int bf16) {
    return bf16 ? bf16_to_f32(((const uint16_t *)row)[j]) : ((const float *)row)[j];
}

static inline void put(void *row, int64_t j, float v, int bf16) {
    if (bf16) ((uint16_t *)row)[j] = f32_to_bf16(v);
    else ((float *)row)[j] = v;
}

#define INLINE static inline __attribute__((always_inline))

#ifdef __AVX512F__
/* AVX-512: 16 columns per step, tails by mask. exp as above, with scalef for 2^n. */
INLINE __m512 vget(const void *row, int64_t j, __mmask16 k, int bf16) {
    if (!bf16) return _mm512_maskz_loadu_ps(k, (const float *)row + j);
    __m256i h = _mm256_maskz_loadu_epi16(k, (const uint16_t *)row + j);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

INLINE void vput(void *row, int64_t j, __m512 v, __mmask16 k, int bf16) {
    if (!bf16) {
        _mm512_mask_storeu_ps((float *)row + j, k, v);
        return;
    }
#ifdef __AVX512BF16__
    _mm256_mask_storeu_epi16((uint16_t *)row + j, k, (__m256i)_mm512_cvtneps_pbh(v));
#else
    __m512i u = _mm512_castps_si512(v);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    _mm256_mask_storeu_epi16((uint16_t *)row + j, k, _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16)));
#endif
}

INLINE __m512 vbias(const float *bias, int64_t j, __mmask16 k) {
    return bias ? _mm512_maskz_loadu_ps(k, bias + j) : _mm512_setzero_ps();
}

INLINE __mmask16 tail(int64_t c, int64_t j) {
    return c - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (c - j)) - 1);
}

INLINE __m512 exp16(__m512 x) {  /* x <= 0 */
    const __m512 lo = _mm512_set1_ps(-87.0f);
    __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    __m512 xc = _mm512_max_ps(lo, x);  /* a NaN x stays NaN (max returns its second operand) */
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
#endif

/* One row: (max, sum of exp, sum of logits) of x + bias, and x <- exp(x + bias - max). */
INLINE void forward_row(void *row, const float *bias, int64_t c, int bf16, float *m_out, float *s_out,
                        float *t_out) {
    float m, s, t;
#ifdef __AVX512F__
    __m512 mv = _mm512_set1_ps(-INFINITY), tv = _mm512_setzero_ps(), sv = _mm512_setzero_ps();
    for (int64_t j = 0; j < c; j += 16) {
        __mmask16 k = tail(c, j);
        __m512 v = _mm512_add_ps(vget(row, j, k, bf16), vbias(bias, j, k));
        mv = _mm512_mask_max_ps(mv, k, mv, v);
        tv = _mm512_add_ps(tv, v);  /* masked-off lanes load as 0 */
    }
    m = _mm512_reduce_max_ps(mv);
    t = _mm512_reduce_add_ps(tv);
    if (!isfinite(m)) m = 0.0f;
    mv = _mm512_set1_ps(m);
    for (int64_t j = 0; j < c; j += 16) {
        __mmask16 k = tail(c, j);
        __m512 v = _mm512_add_ps(vget(row, j, k, bf16), vbias(bias, j, k));
        __m512 e = _mm512_maskz_mov_ps(k, exp16(_mm512_sub_ps(v, mv)));
        vput(row, j, e, k, bf16);
        sv = _mm512_add_ps(sv, e);
    }
    s = _mm512_reduce_add_ps(sv);
#else
    m = -INFINITY;
    t = 0.0f;
#pragma omp simd reduction(max:m) reduction(+:t)
    for (int64_t j = 0; j < c; j++) {
        float v = get(row, j, bf16) + (bias ? bias[j] : 0.0f);
        m = v > m ? v : m;
        t += v;
    }
    if (!isfinite(m)) m = 0.0f;
    s = 0.0f;
#pragma omp simd reduction(+:s)
    for (int64_t j = 0; j < c; j++) {
        float e = exp_nonpositive(get(row, j, bf16) + (bias ? bias[j] : 0.0f) - m);
        put(row, j, e, bf16);
        s += e;
    }
#endif
    *m_out = m;
    *s_out = s;
    *t_out = t;
}

/* One row of exp(x - max) -> e * k - spread, added to colsum where given. */
INLINE void backward_row(void *row, int64_t c, int bf16, float k_, float spread, float *colsum) {
#ifdef __AVX512F__
    __m512 kv = _mm512_set1_ps(k_), sv = _mm512_set1_ps(spread);
    for (int64_t j = 0; j < c; j += 16) {
        __mmask16 k = tail(c, j);
        __m512 g = _mm512_fmsub_ps(vget(row, j, k, bf16), kv, sv);
        vput(row, j, g, k, bf16);
        if (colsum) _mm512_mask_storeu_ps(colsum + j, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, colsum + j), g));
    }
#else
#pragma omp simd
    for (int64_t j = 0; j < c; j++) {
        float g = get(row, j, bf16) * k_ - spread;
        put(row, j, g, bf16);
        if (colsum) colsum[j] += g;
    }
#endif
}

INLINE void one_forward(int64_t i, char *x, int bf16, int64_t c, int64_t ld, const float *bias,
                        const int64_t *labels, float *lse, float *inv, float *picked, float *total) {
    void *row = x + i * ld * (bf16 ? 2 : 4);
    float m, s, t;
    picked[i] = get(row, labels[i], bf16) + (bias ? bias[labels[i]] : 0.0f);
    forward_row(row, bias, c, bf16, &m, &s, &t);
    if (total) total[i] = t;
    lse[i] = m + logf(s);
    inv[i] = 1.0f / s;
}

INLINE void one_backward(int64_t i, char *x, int bf16, int64_t c, int64_t ld, const int64_t *labels,
                         const float *inv, float scale, float spread, float target, float *colsum) {
    void *row = x + i * ld * (bf16 ? 2 : 4);
    float k = inv[i] * scale;
    float at_label = get(row, labels[i], bf16) * k - spread - target;
    backward_row(row, c, bf16, k, spread, colsum);
    put(row, labels[i], at_label, bf16);
    if (colsum) colsum[labels[i]] -= target;
}

/* The rows of `x` (n of them, bf16 if `bf16`, else fp32; row stride `ld` elements, `c`
   columns, plus `bias` per column if given): x <- exp(x + bias - rowmax); lse[i] =
   log(sum) + rowmax, inv[i] = 1 / sum, picked[i] = the logit at labels[i] and, where
   `total` is given, total[i] = the row's sum of logits. A row without a finite maximum
   (all -inf) uses 0. The rows run on `threads` threads of the process's OpenMP pool (the
   one torch runs on, so that no second pool competes with its spinning workers). */
void softmax_rows_forward(int64_t n, void *x, int32_t bf16, int64_t c, int64_t ld, const float *bias,
                          const int64_t *labels, float *lse, float *inv, float *picked, float *total,
                          int32_t threads) {
    if (bf16) {
#pragma omp parallel for schedule(RAYREC_SCHEDULE(rows_per_item(c))) num_threads(threads)
        for (int64_t i = 0; i < n; i++) one_forward(i, x, 1, c, ld, bias, labels, lse, inv, picked, total);
    } else {
#pragma omp parallel for schedule(RAYREC_SCHEDULE(rows_per_item(c))) num_threads(threads)
        for (int64_t i = 0; i < n; i++) one_forward(i, x, 0, c, ld, bias, labels, lse, inv, picked, total);
    }
}

/* The forward's exp(x - rowmax) -> the loss gradient, in place: e * inv[i] * scale -
   spread, and at the label also - target. With `colsum` ([ceil(n / chunk), c]), the rows
   of chunk k are also summed into colsum[k]: partial sums of the bias's gradient over a
   split that does not depend on the thread count. */
void softmax_rows_backward(int64_t n, void *x, int32_t bf16, int64_t c, int64_t ld, const int64_t *labels,
                           const float *inv, float scale, float spread, float target, float *colsum,
                           int64_t chunk, int32_t threads) {
    int64_t chunks = colsum ? (n + chunk - 1) / chunk : n;
    int64_t per = colsum ? chunk : 1;
#pragma omp parallel for schedule(RAYREC_SCHEDULE(colsum ? 1 : rows_per_item(c))) num_threads(threads)
    for (int64_t k = 0; k < chunks; k++) {
        float *sums = colsum ? colsum + k * c : 0;
        int64_t end = k * per + per < n ? k * per + per : n;
        for (int64_t i = k * per; i < end; i++) {
            if (bf16) one_backward(i, x, 1, c, ld, labels, inv, scale, spread, target, sums);
            else one_backward(i, x, 0, c, ld, labels, inv, scale, spread, target, sums);
        }
    }
}

/* One categorical draw per row of non-negative weights (the forward's exp(x - rowmax)):
   out[i] = the first column whose running sum reaches target[i], which the caller draws
   in (0, row total]. Blocks whose sum stays below the target are skipped by a vectorized
   sum; a column of weight 0 is never drawn (where rounding leaves the target beyond the
   running total, the last column of positive weight is). */
#define SAMPLE_BLOCK 64
void sample_rows(int64_t n, const void *x, int32_t bf16, int64_t c, int64_t ld, const float *target, int64_t *out,
                 int32_t threads) {
#pragma omp parallel for schedule(RAYREC_SCHEDULE(rows_per_item(c))) num_threads(threads)
    for (int64_t i = 0; i < n; i++) {
        const char *row = (const char *)x + i * ld * (bf16 ? 2 : 4);
        float t = target[i], run = 0.0f;
        int64_t found = -1;
        for (int64_t j0 = 0; j0 < c && found < 0; j0 += SAMPLE_BLOCK) {
            int64_t j1 = j0 + SAMPLE_BLOCK < c ? j0 + SAMPLE_BLOCK : c;
            float s = 0.0f;
#pragma omp simd reduction(+:s)
            for (int64_t j = j0; j < j1; j++) s += get(row, j, bf16);
            if (run + s < t) {
                run += s;
                continue;
            }
            for (int64_t j = j0; j < j1; j++) {
                float v = get(row, j, bf16);
                run += v;
                if (v > 0.0f && run >= t) {
                    found = j;
                    break;
                }
            }
        }
        for (int64_t j = c - 1; found < 0 && j >= 0; j--)
            if (get(row, j, bf16) > 0.0f) found = j;
        out[i] = found < 0 ? c - 1 : found;
    }
}
