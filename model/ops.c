/* ops.c — the CPU forward ops: projections through OpenBLAS, everything else plain loops over
 * rows (OpenMP across rows). This file is the readable reference the CUDA kernels are checked
 * against; the backward ops of training sit next to their forward in train/. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"

/* The elementwise loops are compiled for AVX-512 and AVX2+FMA too, picked at load time by the
 * CPU (the build itself targets baseline x86-64 so the binary runs anywhere). Not under
 * ThreadSanitizer: its runtime is not ready when the ifunc resolvers run at load time. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SIMD_CLONES
#endif

/* e^x to about 2 ulp, written so loops over it vectorise (libm's expf and tanhf are calls the
 * compiler cannot vectorise, and GELU/SiLU/softmax run them millions of times per batch):
 * x = n·ln2 + r with |r| ≤ ln2/2, e^r by a degree-6 polynomial, 2^n put in the exponent. */
static inline float exp_approx(float x)
{
    /* a NaN comes out as NaN (a diverged run's loss must show it), without reaching the integer
     * conversion below, whose result would be undefined; selects, so the loops still vectorise */
    const float nan_through = x != x ? x : 0.0f;
    x = x != x ? 0.0f : x;
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.7f ? 88.7f : x;
    /* round to nearest by adding and removing 1.5·2^23 (no floorf call in the loop) */
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693145751953125f; /* ln2 split in two for an exact first step */
    r -= n * 1.428606765330187e-06f;
    float p = 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale = {.i = ((int32_t)n + 127) << 23};
    return p * scale.f + nan_through;
}

/* One sgemm on a block of rows or columns; OpenBLAS itself runs single-threaded (see
 * model_runner_create): the threads are OpenMP's, so two thread pools never spin against each
 * other on the same cores. */
static void matmul_block(float *y, size_t ldy, const float *x, size_t ldx, const float *w,
                         const float *b, size_t n, size_t in, size_t out, bool accumulate)
{
    if (b && !accumulate) {
        /* start from the bias so sgemm adds onto it (beta = 1): no second pass over y */
        for (size_t i = 0; i < n; i++)
            memcpy(y + i * ldy, b, out * sizeof(float));
    }
    const float beta = (accumulate || b) ? 1.0f : 0.0f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)out, (int)in, 1.0f, x,
                (int)ldx, w, (int)in, beta, y, (int)ldy);
    if (b && accumulate) {
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < out; j++)
                y[i * ldy + j] += b[j];
    }
}

void op_matmul(float *y, size_t ldy, const float *x, size_t ldx, const float *w, const float *b,
               size_t n, size_t in, size_t out, bool accumulate, int threads)
{
    if (n == 0 || out == 0)
        return;
    /* many rows: split the rows (each thread reads all of W); few rows (decode, the head of a
     * small batch): split the output features so the weights are read once in total */
    const bool by_rows = n >= (size_t)threads * 32;
    const size_t parts = threads > 1 ? (size_t)threads : 1;
    const size_t span = by_rows ? n : out;
    if (parts == 1 || span < parts * 16) {
        matmul_block(y, ldy, x, ldx, w, b, n, in, out, accumulate);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t p = 0; p < parts; p++) {
        /* blocks rounded to 16 so every block but the last is a whole number of SIMD tiles */
        size_t chunk = ((span + parts - 1) / parts + 15) & ~(size_t)15;
        size_t lo = p * chunk, hi = lo + chunk < span ? lo + chunk : span;
        if (lo >= hi)
            continue;
        if (by_rows)
            matmul_block(y + lo * ldy, ldy, x + lo * ldx, ldx, w, b, hi - lo, in, out, accumulate);
        else
            matmul_block(y + lo, ldy, x, ldx, w + lo * in, b ? b + lo : NULL, n, in, hi - lo,
                         accumulate);
    }
}

SIMD_CLONES static void layernorm_row(float *y, const float *x, const float *w, const float *b,
                                      size_t c, float eps, enum model_norm flavour)
{
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (size_t j = 0; j < c; j++)
        sum += x[j];
    const double mean = sum / (double)c;
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (size_t j = 0; j < c; j++) {
        double dv = x[j] - mean;
        ss += dv * dv;
    }
    /* UER's LayerNorm divides by the unbiased std plus eps; the standard one by
     * sqrt(biased variance + eps) */
    const double scale = flavour == MODEL_NORM_UER
                             ? 1.0 / (sqrt(ss / (double)(c > 1 ? c - 1 : 1)) + eps)
                             : 1.0 / sqrt(ss / (double)c + eps);
    const float s = (float)scale, mu = (float)mean;
    if (b) {
#pragma omp simd
        for (size_t j = 0; j < c; j++)
            y[j] = (x[j] - mu) * s * w[j] + b[j];
    } else {
#pragma omp simd
        for (size_t j = 0; j < c; j++)
            y[j] = (x[j] - mu) * s * w[j];
    }
}

void op_layernorm(float *y, const float *x, const float *w, const float *b, size_t n, size_t c,
                  float eps, enum model_norm flavour, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++)
        layernorm_row(y + i * c, x + i * c, w, b, c, eps, flavour);
}

SIMD_CLONES static void rmsnorm_row(float *y, const float *x, const float *w, size_t c, float eps)
{
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (size_t j = 0; j < c; j++)
        ss += (double)x[j] * x[j];
    const float s = (float)(1.0 / sqrt(ss / (double)c + eps));
#pragma omp simd
    for (size_t j = 0; j < c; j++)
        y[j] = x[j] * s * w[j];
}

void op_rmsnorm(float *y, const float *x, const float *w, size_t n, size_t c, float eps,
                int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++)
        rmsnorm_row(y + i * c, x + i * c, w, c, eps);
}

SIMD_CLONES static void gelu_tanh_span(float *x, size_t n)
{
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    /* 0.5·v·(1 + tanh(u)) = v·sigmoid(2u) = v / (1 + e^(−2u)) */
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        x[i] = v / (1.0f + exp_approx(-2.0f * k * (v + 0.044715f * v * v * v)));
    }
}

SIMD_CLONES static void swiglu_row(float *g, const float *u, size_t f)
{
#pragma omp simd
    for (size_t j = 0; j < f; j++)
        g[j] = g[j] / (1.0f + exp_approx(-g[j])) * u[j];
}

void op_gelu(float *x, size_t count, enum model_act act, int threads)
{
    const size_t parts = threads > 1 ? (size_t)threads * 4 : 1;
    const size_t chunk = (count + parts - 1) / parts;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t p = 0; p < parts; p++) {
        size_t lo = p * chunk, hi = lo + chunk < count ? lo + chunk : count;
        if (lo >= hi)
            continue;
        if (act == MODEL_ACT_GELU_ERF) {
            for (size_t i = lo; i < hi; i++)
                x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
        } else {
            gelu_tanh_span(x + lo, hi - lo);
        }
    }
}

void op_swiglu(float *gate_up, size_t n, size_t f, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++)
        swiglu_row(gate_up + i * 2 * f, gate_up + i * 2 * f + f, f);
}

void op_rope_tables(float *cos_t, float *sin_t, uint32_t positions, uint32_t d, double theta)
{
    const uint32_t half = d / 2;
    for (uint32_t i = 0; i < half; i++) {
        /* the inverse frequency rounded to fp32 first, as Hugging Face computes it */
        const float inv_freq = (float)(1.0 / pow(theta, (double)(2 * i) / (double)d));
        for (uint32_t p = 0; p < positions; p++) {
            const float angle = (float)p * inv_freq;
            cos_t[(size_t)p * half + i] = cosf(angle);
            sin_t[(size_t)p * half + i] = sinf(angle);
        }
    }
}

void op_rope_apply(float *x, uint32_t heads, uint32_t d, uint32_t pos, const float *cos_t,
                   const float *sin_t)
{
    /* half-split pairs (j, j + d/2): x' = x·cos + rotate_half(x)·sin */
    const uint32_t half = d / 2;
    const float *c = cos_t + (size_t)pos * half, *s = sin_t + (size_t)pos * half;
    for (uint32_t h = 0; h < heads; h++) {
        float *xh = x + (size_t)h * d;
        for (uint32_t j = 0; j < half; j++) {
            const float a = xh[j], b = xh[j + half];
            xh[j] = a * c[j] - b * s[j];
            xh[j + half] = b * c[j] + a * s[j];
        }
    }
}

SIMD_CLONES void op_softmax(float *x, size_t n)
{
    float mx = -INFINITY;
    for (size_t i = 0; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (size_t i = 0; i < n; i++) {
        x[i] = exp_approx(x[i] - mx);
        sum += x[i];
    }
    const float inv = 1.0f / sum;
    for (size_t i = 0; i < n; i++)
        x[i] *= inv;
}

void op_attend_block(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                     const float *v, uint32_t start, uint32_t n, uint32_t d, float scale,
                     float *scores, const struct op_dropout *drop)
{
    /* S = Q·Kᵀ over every cached position, then each row masked to its causal prefix, softmax,
     * O = P·V: two sgemms instead of n·len scalar dot products */
    const uint32_t len = start + n;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)len, (int)d, scale, q,
                (int)ldq, k, (int)d, 0.0f, scores, (int)len);
    for (uint32_t i = 0; i < n; i++) {
        float *row = scores + (size_t)i * len;
        const uint32_t visible = start + i + 1;
        op_softmax(row, visible);
        memset(row + visible, 0, (len - visible) * sizeof(float));
        if (drop)
            for (uint32_t j = 0; j < visible; j++)
                row[j] *= op_dropout_factor(drop, (uint64_t)i * len + j);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)d, (int)len, 1.0f, scores,
                (int)len, v, (int)d, 0.0f, out, (int)ldo);
}

void op_attend(float *out, const float *q, const float *k, const float *v, uint32_t len,
               uint32_t d, float scale, float *scratch)
{
    for (uint32_t j = 0; j < len; j++) {
        const float *kj = k + (size_t)j * d;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (uint32_t e = 0; e < d; e++)
            dot += q[e] * kj[e];
        scratch[j] = dot * scale;
    }
    op_softmax(scratch, len);
    memset(out, 0, d * sizeof(float));
    for (uint32_t j = 0; j < len; j++) {
        const float p = scratch[j], *vj = v + (size_t)j * d;
#pragma omp simd
        for (uint32_t e = 0; e < d; e++)
            out[e] += p * vj[e];
    }
}

/* ---- backward ops (training), each the derivative of the forward op above it ---- */

void op_matmul_backward(float *dx, size_t lddx, float *dw, float *db, const float *dy, size_t ldy,
                        const float *x, size_t ldx, const float *w, size_t n, size_t in,
                        size_t out, bool accumulate_dx, int threads)
{
    if (n == 0 || out == 0)
        return;
    const size_t parts = threads > 1 ? (size_t)threads : 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t p = 0; p < parts; p++) {
        /* dx = dy·W by blocks of rows; dW += dyᵀ·x and db by blocks of output features: every
         * thread owns what it writes, so no reduction and the same sums for the same threads */
        size_t rchunk = (n + parts - 1) / parts, r0 = p * rchunk, r1 = r0 + rchunk < n ? r0 + rchunk : n;
        if (dx && r0 < r1)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(r1 - r0), (int)in,
                        (int)out, 1.0f, dy + r0 * ldy, (int)ldy, w, (int)in,
                        accumulate_dx ? 1.0f : 0.0f, dx + r0 * lddx, (int)lddx);
        size_t ochunk = (out + parts - 1) / parts, o0 = p * ochunk, o1 = o0 + ochunk < out ? o0 + ochunk : out;
        if (o0 >= o1)
            continue;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(o1 - o0), (int)in, (int)n, 1.0f,
                    dy + o0, (int)ldy, x, (int)ldx, 1.0f, dw + o0 * in, (int)in);
        if (db)
            for (size_t i = 0; i < n; i++)
                for (size_t j = o0; j < o1; j++)
                    db[j] += dy[i * ldy + j];
    }
}

/* Per-thread partial sums of the norm weight/bias gradients, added in a fixed order so the
 * result depends only on the thread count. */
static float *norm_partials(size_t c, int threads)
{
    return calloc((size_t)threads * 2 * c, sizeof(float));
}

static void norm_reduce(float *dw, float *db, const float *partial, size_t c, int threads)
{
    for (int t = 0; t < threads; t++)
        for (size_t j = 0; j < c; j++) {
            dw[j] += partial[(size_t)t * 2 * c + j];
            if (db)
                db[j] += partial[(size_t)t * 2 * c + c + j];
        }
}

bool op_layernorm_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                           const float *w, size_t n, size_t c, float eps, enum model_norm flavour,
                           int threads)
{
    float *partial = norm_partials(c, threads);
    if (!partial)
        return false;
    const size_t parts = (size_t)threads;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t p = 0; p < parts; p++) {
        float *pw = partial + p * 2 * c, *pb = pw + c;
        size_t chunk = (n + parts - 1) / parts, lo = p * chunk, hi = lo + chunk < n ? lo + chunk : n;
        for (size_t i = lo; i < hi; i++) {
            const float *xi = x + i * c, *dyi = dy + i * c;
            float *dxi = dx + i * c;
            double sum = 0.0;
            for (size_t j = 0; j < c; j++)
                sum += xi[j];
            const double mean = sum / (double)c;
            double ss = 0.0;
            for (size_t j = 0; j < c; j++)
                ss += (xi[j] - mean) * (xi[j] - mean);
            double g_sum = 0.0, g_xc = 0.0;
            for (size_t j = 0; j < c; j++) {
                double g = (double)dyi[j] * w[j];
                g_sum += g;
                g_xc += g * (xi[j] - mean);
            }
            if (flavour == MODEL_NORM_UER) {
                /* y = w·xc/(s + eps), s the unbiased std: d/dxc, then remove the mean */
                const double s = sqrt(ss / (double)(c > 1 ? c - 1 : 1)), a = 1.0 / (s + eps);
                const double k = s > 0 ? a * a * g_xc / ((double)(c > 1 ? c - 1 : 1) * s) : 0.0;
                double dxc_sum = 0.0;
                for (size_t j = 0; j < c; j++)
                    dxc_sum += a * dyi[j] * w[j] - k * (xi[j] - mean);
                const double dxc_mean = dxc_sum / (double)c;
                for (size_t j = 0; j < c; j++) {
                    double dxc = a * dyi[j] * w[j] - k * (xi[j] - mean);
                    dxi[j] += (float)(dxc - dxc_mean);
                    pw[j] += dyi[j] * (float)((xi[j] - mean) * a);
                    pb[j] += dyi[j];
                }
            } else {
                const double rstd = 1.0 / sqrt(ss / (double)c + eps);
                const double m1 = g_sum / (double)c, m2 = g_xc * rstd / (double)c;
                for (size_t j = 0; j < c; j++) {
                    double xhat = (xi[j] - mean) * rstd;
                    dxi[j] += (float)(rstd * ((double)dyi[j] * w[j] - m1 - xhat * m2));
                    pw[j] += dyi[j] * (float)xhat;
                    pb[j] += dyi[j];
                }
            }
        }
    }
    norm_reduce(dw, db, partial, c, threads);
    free(partial);
    return true;
}

bool op_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                         size_t n, size_t c, float eps, int threads)
{
    float *partial = norm_partials(c, threads);
    if (!partial)
        return false;
    const size_t parts = (size_t)threads;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t p = 0; p < parts; p++) {
        float *pw = partial + p * 2 * c;
        size_t chunk = (n + parts - 1) / parts, lo = p * chunk, hi = lo + chunk < n ? lo + chunk : n;
        for (size_t i = lo; i < hi; i++) {
            const float *xi = x + i * c, *dyi = dy + i * c;
            float *dxi = dx + i * c;
            double ss = 0.0, g_x = 0.0;
            for (size_t j = 0; j < c; j++) {
                ss += (double)xi[j] * xi[j];
                g_x += (double)dyi[j] * w[j] * xi[j];
            }
            const double r = 1.0 / sqrt(ss / (double)c + eps), k = r * r * r * g_x / (double)c;
            for (size_t j = 0; j < c; j++) {
                dxi[j] += (float)(r * dyi[j] * w[j] - k * xi[j]);
                pw[j] += dyi[j] * (float)(xi[j] * r);
            }
        }
    }
    norm_reduce(dw, NULL, partial, c, threads);
    free(partial);
    return true;
}

SIMD_CLONES static void gelu_tanh_backward_span(float *d, const float *pre, size_t n)
{
    const float k = 0.7978845608028654f;
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        const float x = pre[i], u = k * (x + 0.044715f * x * x * x);
        /* tanh(u) = 1 − 2/(1 + e^(2u)), with the vectorising exp */
        const float t = 1.0f - 2.0f / (1.0f + exp_approx(2.0f * u));
        d[i] *= 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * x * x);
    }
}

void op_gelu_backward(float *d, const float *pre, size_t count, enum model_act act, int threads)
{
    const size_t parts = threads > 1 ? (size_t)threads * 4 : 1;
    const size_t chunk = (count + parts - 1) / parts;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t p = 0; p < parts; p++) {
        size_t lo = p * chunk, hi = lo + chunk < count ? lo + chunk : count;
        if (lo >= hi)
            continue;
        if (act != MODEL_ACT_GELU_ERF) {
            gelu_tanh_backward_span(d + lo, pre + lo, hi - lo);
            continue;
        }
        for (size_t i = lo; i < hi; i++) {
            const float x = pre[i];
            d[i] *= 0.5f * (1.0f + erff(x * 0.70710678118654752f)) +
                    x * 0.3989422804014327f * expf(-0.5f * x * x);
        }
    }
}

void op_swiglu_backward(float *d_gate_up, const float *dh, size_t ldh, const float *gate_up,
                        size_t n, size_t f, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++) {
        const float *g = gate_up + i * 2 * f, *u = g + f, *dhi = dh + i * ldh;
        float *dg = d_gate_up + i * 2 * f, *du = dg + f;
        for (size_t j = 0; j < f; j++) {
            const float s = 1.0f / (1.0f + expf(-g[j])), silu = g[j] * s;
            dg[j] = dhi[j] * u[j] * s * (1.0f + g[j] * (1.0f - s));
            du[j] = dhi[j] * silu;
        }
    }
}

void op_rope_backward(float *dx, uint32_t heads, uint32_t d, uint32_t pos, const float *cos_t,
                      const float *sin_t)
{
    /* the transpose of a rotation is the rotation by the opposite angle */
    const uint32_t half = d / 2;
    const float *c = cos_t + (size_t)pos * half, *s = sin_t + (size_t)pos * half;
    for (uint32_t h = 0; h < heads; h++) {
        float *xh = dx + (size_t)h * d;
        for (uint32_t j = 0; j < half; j++) {
            const float a = xh[j], b = xh[j + half];
            xh[j] = a * c[j] + b * s[j];
            xh[j + half] = b * c[j] - a * s[j];
        }
    }
}

void op_attend_block_backward(float *dq, size_t lddq, float *dk, float *dv, const float *dout,
                              size_t ldo, const float *q, size_t ldq, const float *k,
                              const float *v, uint32_t n, uint32_t d, float scale, float *scratch,
                              const struct op_dropout *drop)
{
    /* recompute P (cheaper to keep than to store for every layer), then
     * dP = dO·Vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)), dQ = scale·dS·K, dK += scale·dSᵀ·Q,
     * dV += Pᵀ·dO. With dropout the forward used P ⊙ M: dP is masked first, and dV takes the
     * masked P (left in p once dS no longer needs P). */
    float *p = scratch, *dp = scratch + (size_t)n * n;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)n, (int)d, scale, q, (int)ldq,
                k, (int)d, 0.0f, p, (int)n);
    for (uint32_t i = 0; i < n; i++) {
        op_softmax(p + (size_t)i * n, i + 1);
        memset(p + (size_t)i * n + i + 1, 0, (n - i - 1) * sizeof(float));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)n, (int)d, 1.0f, dout,
                (int)ldo, v, (int)d, 0.0f, dp, (int)n);
    for (uint32_t i = 0; i < n; i++) {
        float *pi = p + (size_t)i * n, *dpi = dp + (size_t)i * n;
        if (drop)
            for (uint32_t j = 0; j <= i; j++)
                dpi[j] *= op_dropout_factor(drop, (uint64_t)i * n + j);
        double dot = 0.0;
        for (uint32_t j = 0; j <= i; j++)
            dot += (double)pi[j] * dpi[j];
        for (uint32_t j = 0; j < n; j++)
            dpi[j] = j <= i ? pi[j] * (dpi[j] - (float)dot) : 0.0f;
        if (drop)
            for (uint32_t j = 0; j <= i; j++)
                pi[j] *= op_dropout_factor(drop, (uint64_t)i * n + j);
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)n, (int)d, (int)n, 1.0f, p, (int)n,
                dout, (int)ldo, 1.0f, dv, (int)d);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)d, (int)n, scale, dp, (int)n,
                k, (int)d, 0.0f, dq, (int)lddq);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)n, (int)d, (int)n, scale, dp, (int)n,
                q, (int)ldq, 1.0f, dk, (int)d);
}

SIMD_CLONES double op_softmax_xent(float *z, size_t n, uint32_t target, float scale)
{
    const float target_logit = z[target];
    float mx = -INFINITY;
    for (size_t i = 0; i < n; i++)
        mx = z[i] > mx ? z[i] : mx;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (size_t i = 0; i < n; i++) {
        z[i] = exp_approx(z[i] - mx);
        sum += z[i];
    }
    const float k = scale / sum;
#pragma omp simd
    for (size_t i = 0; i < n; i++)
        z[i] *= k;
    z[target] -= scale;
    return log((double)sum) + mx - target_logit;
}
