/* train_kernels.cu — the CUDA training kernels other than attention and the GEMMs (launchers
 * declared in cuda_train.h): norm, GELU and SwiGLU backward (RoPE's is the forward kernel with
 * the opposite angle, in kernels.cu), the embedding gradient, the classification head's tanh and
 * pooling backward, fused softmax + cross-entropy, residual and embedding dropout, AdamW, the
 * gradient norm, scaling and clipping.
 *
 * Each kernel mirrors one CPU op (model/ops.c, train/grad.c, train/optim.c) formula for formula
 * in fp32, so tests/unit/test_cuda_backward.c can hold the fp32 instantiations to rounding.
 * Sums over rows never use float atomics: they run in an order fixed by the shapes (a chunk of
 * rows per block into a partial, then the partials in chunk order), so a training run repeats
 * bit for bit on the same GPU model. */
#include <cuda_bf16.h>
#include <math.h>

#include "model/cuda/cuda_device.cuh"
#include "model/cuda/cuda_train.h"

namespace {

inline unsigned blocks_for(size_t count, unsigned threads)
{
    size_t b = (count + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : (b > 65535u * 8u ? 65535u * 8u : b));
}

/* ---- norms ---- */

/* rows of the dw/db partial sums: one partial per chunk keeps the scratch at 2c floats per 128
 * rows while giving each column tile n/128 blocks to spread over the GPU */
constexpr uint32_t NORM_CHUNK = 128;
constexpr uint32_t NORM_PART_ROWS = 8; /* threadIdx.y of the partial-sum blocks */

/* One warp per row: dx += ∂/∂x, and the row's (mean, scale) into stats for the dw pass, where
 * scale turns x − mean into x̂ (rstd; UER's 1/(std + eps); RMSNorm's 1/rms with mean 0). */
template <typename T>
__global__ void norm_backward_rows(float *dx, float *stats, const T *dy, const float *x,
                                   const float *w, uint32_t n, uint32_t c, float eps, int kind)
{
    const uint32_t row = warp_row(), lane = threadIdx.x % 32;
    if (row >= n)
        return;
    const float *xr = x + (size_t)row * c;
    const T *dyr = dy + (size_t)row * c;
    float *dxr = dx + (size_t)row * c;
    float mean = 0.0f;
    if (kind != CU_NORM_RMS) {
        float s = 0.0f;
        for (uint32_t j = lane; j < c; j += 32)
            s += xr[j];
        mean = warp_sum(s) / (float)c;
    }
    float ss = 0.0f, g_sum = 0.0f, g_xc = 0.0f, xc_sum = 0.0f;
    for (uint32_t j = lane; j < c; j += 32) {
        const float xc = xr[j] - mean, g = to_f(dyr[j]) * w[j];
        ss += xc * xc;
        g_sum += g;
        g_xc += g * xc;
        xc_sum += xc;
    }
    ss = warp_sum(ss);
    g_sum = warp_sum(g_sum);
    g_xc = warp_sum(g_xc);
    xc_sum = warp_sum(xc_sum);
    float scale;
    if (kind == CU_NORM_RMS) {
        const float r = 1.0f / sqrtf(ss / (float)c + eps), k = r * r * r * g_xc / (float)c;
        for (uint32_t j = lane; j < c; j += 32)
            dxr[j] += r * (to_f(dyr[j]) * w[j]) - k * xr[j];
        scale = r;
    } else if (kind == CU_NORM_LAYER_UER) {
        /* y = w·xc/(s + eps), s the unbiased std: d/dxc, then remove the mean (ops.c) */
        const float den = (float)(c > 1 ? c - 1 : 1), sd = sqrtf(ss / den), a = 1.0f / (sd + eps);
        const float k = sd > 0.0f ? a * a * g_xc / (den * sd) : 0.0f;
        const float dxc_mean = (a * g_sum - k * xc_sum) / (float)c;
        /* a·g as in g_sum, so that a row of one value gets exactly 0 */
        for (uint32_t j = lane; j < c; j += 32)
            dxr[j] += a * (to_f(dyr[j]) * w[j]) - k * (xr[j] - mean) - dxc_mean;
        scale = a;
    } else {
        const float rstd = 1.0f / sqrtf(ss / (float)c + eps);
        const float m1 = g_sum / (float)c, m2 = g_xc * rstd / (float)c;
        for (uint32_t j = lane; j < c; j += 32) {
            const float xhat = (xr[j] - mean) * rstd;
            dxr[j] += rstd * (to_f(dyr[j]) * w[j] - m1 - xhat * m2);
        }
        scale = rstd;
    }
    if (lane == 0) {
        stats[2 * (size_t)row] = mean;
        stats[2 * (size_t)row + 1] = scale;
    }
}

/* grid (chunks, column tiles of 32), block (32, NORM_PART_ROWS): column j's Σ dy·x̂ and Σ dy over
 * one chunk of rows, each thread over every NORM_PART_ROWS-th row, then the threads of a column
 * in order; partial [chunks][2c] (dw then db). Coalesced: a warp reads 32 adjacent columns. */
template <typename T>
__global__ void norm_backward_partials(float *partial, const float *stats, const T *dy,
                                       const float *x, uint32_t n, uint32_t c)
{
    __shared__ float sw[NORM_PART_ROWS][33], sb[NORM_PART_ROWS][33];
    const uint32_t chunk = blockIdx.x, j = blockIdx.y * 32 + threadIdx.x;
    const uint32_t r0 = chunk * NORM_CHUNK, r1 = r0 + NORM_CHUNK < n ? r0 + NORM_CHUNK : n;
    float pw = 0.0f, pb = 0.0f;
    if (j < c)
        for (uint32_t r = r0 + threadIdx.y; r < r1; r += NORM_PART_ROWS) {
            const size_t i = (size_t)r * c + j;
            const float g = to_f(dy[i]);
            pw += g * ((x[i] - stats[2 * (size_t)r]) * stats[2 * (size_t)r + 1]);
            pb += g;
        }
    sw[threadIdx.y][threadIdx.x] = pw;
    sb[threadIdx.y][threadIdx.x] = pb;
    __syncthreads();
    if (threadIdx.y == 0 && j < c) {
        float a = 0.0f, b = 0.0f;
        for (uint32_t k = 0; k < NORM_PART_ROWS; k++) {
            a += sw[k][threadIdx.x];
            b += sb[k][threadIdx.x];
        }
        partial[(size_t)chunk * 2 * c + j] = a;
        partial[(size_t)chunk * 2 * c + c + j] = b;
    }
}

__global__ void norm_backward_reduce(float *dw, float *db, const float *partial, uint32_t chunks,
                                     uint32_t c)
{
    const uint32_t j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c)
        return;
    float a = 0.0f, b = 0.0f;
    for (uint32_t k = 0; k < chunks; k++) {
        a += partial[(size_t)k * 2 * c + j];
        b += partial[(size_t)k * 2 * c + c + j];
    }
    dw[j] += a;
    if (db)
        db[j] += b;
}

/* ---- elementwise ---- */

/* dx = dy · gelu'(pre), VW values per item (16-byte accesses when VW · sizeof(T) = 16); dx may be
 * dy. */
template <typename T, uint32_t VW>
__global__ void gelu_backward_kernel(T *dx, const T *dy, const T *pre, size_t items, bool erf)
{
    const float k = 0.7978845608028654f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < items;
         i += (size_t)gridDim.x * blockDim.x) {
        float x[VW], d[VW];
        load_vec<T, VW>(x, pre + i * VW);
        load_vec<T, VW>(d, dy + i * VW);
#pragma unroll
        for (uint32_t j = 0; j < VW; j++) {
            float slope;
            if (erf) {
                slope = 0.5f * (1.0f + erff(x[j] * 0.70710678118654752f)) +
                        x[j] * 0.3989422804014327f * expf(-0.5f * x[j] * x[j]);
            } else {
                const float u = k * (x[j] + 0.044715f * x[j] * x[j] * x[j]);
                /* tanh(u) = 1 − 2/(1 + e^(2u)), as the CPU evaluates it */
                const float t = 1.0f - 2.0f / (1.0f + expf(2.0f * u));
                slope = 0.5f * (1.0f + t) +
                        0.5f * x[j] * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * x[j] * x[j]);
            }
            d[j] *= slope;
        }
        store_vec<T, VW>(dx + i * VW, d);
    }
}

/* Row-shaped, VW values per item (one vector access each where the launcher found the rows
 * aligned, VW = 1 otherwise): no 64-bit index division per element. */
template <typename T, uint32_t VW>
__global__ void swiglu_backward_kernel(T *d_gate_up, const T *dh, size_t ldh, const T *gate_up,
                                       uint32_t n, uint32_t f)
{
    const uint32_t vecs = f / VW;
    for (uint32_t row = blockIdx.y; row < n; row += gridDim.y) {
        const T *g = gate_up + (size_t)row * 2 * f, *dr = dh + (size_t)row * ldh;
        T *out = d_gate_up + (size_t)row * 2 * f;
        for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < vecs; i += gridDim.x * blockDim.x) {
            float gv[VW], uv[VW], dv[VW], dg[VW], du[VW];
            load_vec<T, VW>(gv, g + i * VW);
            load_vec<T, VW>(uv, g + f + i * VW);
            load_vec<T, VW>(dv, dr + i * VW);
#pragma unroll
            for (uint32_t k = 0; k < VW; k++) {
                const float sg = 1.0f / (1.0f + expf(-gv[k])), silu = gv[k] * sg;
                dg[k] = dv[k] * uv[k] * sg * (1.0f + gv[k] * (1.0f - sg));
                du[k] = dv[k] * silu;
            }
            store_vec<T, VW>(out + i * VW, dg);
            store_vec<T, VW>(out + f + i * VW, du);
        }
    }
}

/* ---- embeddings ---- */

/* One block per key: each thread owns columns and adds the key's rows in row order onto the
 * table's value, the CPU's order of additions. No two blocks share a key. */
__global__ void embed_backward_kernel(float *table, const float *dx, const uint32_t *rows_by_key,
                                      const uint32_t *seg_key, const uint32_t *seg_start,
                                      uint32_t c)
{
    const uint32_t seg = blockIdx.x, r0 = seg_start[seg], r1 = seg_start[seg + 1];
    float *dst = table + (size_t)seg_key[seg] * c;
    for (uint32_t j = threadIdx.x; j < c; j += blockDim.x) {
        float acc = dst[j];
        for (uint32_t r = r0; r < r1; r++)
            acc += dx[(size_t)rows_by_key[r] * c + j];
        dst[j] = acc;
    }
}

/* ---- classification head ---- */

template <typename T> __global__ void tanh_backward_kernel(float *d, const T *y, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x) {
        const float v = to_f(y[i]);
        d[i] *= 1.0f - v * v;
    }
}

/* grid (nseq, channel tiles): a thread owns a channel of one sequence and writes all its rows. */
template <typename T>
__global__ void pool_backward_kernel(T *dxn, const float *dpooled, const T *xn, uint32_t c,
                                     const uint32_t *seq_off, int kind)
{
    const uint32_t b = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= c)
        return;
    const uint32_t start = seq_off[b], end = seq_off[b + 1];
    if (end <= start)
        return;
    const float dp = dpooled[(size_t)b * c + j];
    if (kind == CU_POOL_MEAN) {
        const T v = from_f<T>(dp / (float)(end - start));
        for (uint32_t r = start; r < end; r++)
            dxn[(size_t)r * c + j] = v;
        return;
    }
    uint32_t take = kind == CU_POOL_FIRST ? start : end - 1;
    if (kind == CU_POOL_MAX) {
        /* the first maximum takes the gradient (train/grad.c, torch's max) */
        take = start;
        float best = to_f(xn[(size_t)start * c + j]);
        for (uint32_t r = start + 1; r < end; r++) {
            const float v = to_f(xn[(size_t)r * c + j]);
            if (v > best) {
                best = v;
                take = r;
            }
        }
    }
    const T g = from_f<T>(dp), zero = from_f<T>(0.0f);
    for (uint32_t r = start; r < end; r++)
        dxn[(size_t)r * c + j] = r == take ? g : zero;
}

/* ---- loss ---- */

constexpr unsigned XENT_THREADS = 512;

/* (m, s) pairs of the online softmax: s·e^m is a partial Σ e^z. Merging an empty pair (m = −∞)
 * with another empty one must stay empty, not NaN. */
__device__ __forceinline__ void xent_merge(float &m, float &s, float mo, float so)
{
    const float mx = fmaxf(m, mo);
    s = mx == -INFINITY ? 0.0f : s * expf(m - mx) + so * expf(mo - mx);
    m = mx;
}

/* One block per row: pass 1 the online max and sum, pass 2 the gradient over the logits, into
 * grad (G: fp32 in place over z, or the bf16 operand of the backward GEMMs, which then need no
 * conversion pass over the logits). VW logits per access (4: 16-byte loads and 8- or 16-byte
 * stores, where the launcher found the rows aligned), the last v % VW one by one. */
template <typename G, uint32_t VW>
__global__ void softmax_xent_kernel(const float *z, size_t ld, G *grad, float *loss, const uint32_t *target,
                                    uint32_t v, float scale)
{
    __shared__ float red_m[XENT_THREADS / 32], red_s[XENT_THREADS / 32];
    const float *row = z + (size_t)blockIdx.x * ld;
    G *grow = grad + (size_t)blockIdx.x * ld;
    const uint32_t tgt = target[blockIdx.x], vecs = v / VW;
    if (tgt >= v) { /* the whole block takes this branch: no barrier is skipped by some only */
        for (uint32_t j = threadIdx.x; j < v; j += blockDim.x)
            grow[j] = from_f<G>(0.0f);
        if (threadIdx.x == 0)
            loss[blockIdx.x] = 0.0f;
        return;
    }
    const float target_logit = row[tgt]; /* read before the barrier below, written after it */
    float m = -INFINITY, s = 0.0f;
    for (uint32_t i = threadIdx.x; i < vecs + (v - vecs * VW); i += blockDim.x) {
        float x[VW];
        uint32_t count = VW;
        if (i < vecs) {
            load_vec<float, VW>(x, row + (size_t)i * VW);
        } else {
            x[0] = row[vecs * VW + (i - vecs)];
            count = 1;
        }
        float top = x[0];
#pragma unroll
        for (uint32_t k = 1; k < VW; k++)
            top = k < count ? fmaxf(top, x[k]) : top;
        if (top > m) {
            s = m == -INFINITY ? 0.0f : s * expf(m - top);
            m = top;
        }
        if (m > -INFINITY) {
#pragma unroll
            for (uint32_t k = 0; k < VW; k++)
                s += k < count ? expf(x[k] - m) : 0.0f;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float mo = __shfl_xor_sync(0xffffffffu, m, o), so = __shfl_xor_sync(0xffffffffu, s, o);
        xent_merge(m, s, mo, so);
    }
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    if (lane == 0) {
        red_m[warp] = m;
        red_s[warp] = s;
    }
    __syncthreads();
    /* every thread merges the warps in the same order: the same (mx, sum) everywhere */
    float mx = red_m[0], sum = red_s[0];
    for (uint32_t w = 1; w < warps; w++)
        xent_merge(mx, sum, red_m[w], red_s[w]);
    if (threadIdx.x == 0)
        loss[blockIdx.x] = (float)(log((double)sum) + (double)mx - (double)target_logit);
    const float k = scale / sum;
    for (uint32_t i = threadIdx.x; i < vecs; i += blockDim.x) {
        float g[VW];
        load_vec<float, VW>(g, row + (size_t)i * VW);
#pragma unroll
        for (uint32_t e = 0; e < VW; e++)
            g[e] = expf(g[e] - mx) * k - (i * VW + e == tgt ? scale : 0.0f);
        store_vec<G, VW>(grow + (size_t)i * VW, g);
    }
    for (uint32_t j = vecs * VW + threadIdx.x; j < v; j += blockDim.x)
        grow[j] = from_f<G>(expf(row[j] - mx) * k - (j == tgt ? scale : 0.0f));
}

/* ---- optimizer ---- */

struct adamw_coef {
    float lr, b1, b2, eps, wd;
    float step_size, bc2_sqrt; /* standard AdamW's bias corrections, from double as the CPU */
    bool uer;
};

__global__ void adamw_kernel(float *p, bf16 *p_bf16, float *m, float *v, const float *g, size_t n,
                             adamw_coef o)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float gi = g[i];
        float pi = p[i];
        const float mi = o.b1 * m[i] + (1.0f - o.b1) * gi;
        const float vi = o.b2 * v[i] + (1.0f - o.b2) * gi * gi;
        if (o.uer) {
            pi -= o.lr * mi / (sqrtf(vi) + o.eps);
            pi -= o.lr * o.wd * pi;
        } else {
            pi *= 1.0f - o.lr * o.wd;
            pi -= o.step_size * mi / (sqrtf(vi) / o.bc2_sqrt + o.eps);
        }
        m[i] = mi;
        v[i] = vi;
        p[i] = pi;
        if (p_bf16)
            p_bf16[i] = __float2bfloat16_rn(pi);
    }
}

constexpr unsigned NORM2_THREADS = 256;

__device__ __forceinline__ double warp_sum_d(double v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Block sum in a fixed order: lanes by the butterfly, then the warps in index order. */
__device__ double block_sum_d(double v)
{
    __shared__ double red[NORM2_THREADS / 32];
    v = warp_sum_d(v);
    if (threadIdx.x % 32 == 0)
        red[threadIdx.x / 32] = v;
    __syncthreads();
    double t = 0.0;
    for (unsigned w = 0; w < NORM2_THREADS / 32; w++)
        t += red[w];
    return t;
}

/* Exactly CU_GRAD_NORM_SCRATCH blocks whatever the GPU, so the order of the sum is fixed. */
__global__ void grad_sumsq_kernel(double *partial, const float *g, size_t n)
{
    double ss = 0.0;
    for (size_t i = blockIdx.x * (size_t)NORM2_THREADS + threadIdx.x; i < n;
         i += (size_t)CU_GRAD_NORM_SCRATCH * NORM2_THREADS) {
        const double x = g[i];
        ss += x * x;
    }
    ss = block_sum_d(ss);
    if (threadIdx.x == 0)
        partial[blockIdx.x] = ss;
}

__global__ void grad_norm_finish_kernel(double *norm, const double *partial)
{
    double ss = 0.0;
    for (unsigned i = threadIdx.x; i < CU_GRAD_NORM_SCRATCH; i += NORM2_THREADS)
        ss += partial[i];
    ss = block_sum_d(ss);
    if (threadIdx.x == 0)
        *norm = sqrt(ss);
}

__global__ void grad_scale_kernel(float *g, size_t n, float scale)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        g[i] *= scale;
}

__global__ void grad_clip_kernel(float *g, size_t n, const double *norm, float max_norm)
{
    const double coef = (double)max_norm / (*norm + 1e-6);
    if (!(coef < 1.0))
        return;
    const float k = (float)coef;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        g[i] *= k;
}

template <typename T> __global__ void convert_kernel(T *dst, const float *src, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = from_f<T>(src[i]);
}

/* ---- dropout ---- */

/* grid (column blocks, rows): one row per blockIdx.y step; the row's sequence by a binary
 * search of seq_off (it ends with seq_off[lo] ≤ r < seq_off[lo + 1]: never an empty sequence) */
template <typename T>
__global__ void dropout_rows_kernel(T *dst, const float *base, const float *src, uint32_t c,
                                    const uint32_t *seq_off, uint32_t nseq, uint32_t rows,
                                    const uint64_t *seq_key, uint32_t layer, uint32_t place,
                                    uint32_t threshold, float scale)
{
    for (uint32_t r = blockIdx.y; r < rows; r += gridDim.y) {
        uint32_t lo = 0, hi = nseq; /* seq_off[lo] ≤ r < seq_off[hi] */
        while (hi - lo > 1) {
            const uint32_t mid = (lo + hi) / 2;
            if (seq_off[mid] <= r)
                lo = mid;
            else
                hi = mid;
        }
        const uint64_t key = dev_drop_key(seq_key[lo], layer, place, 0);
        const uint64_t first = (uint64_t)(r - seq_off[lo]) * c; /* element i·c of the row's stream */
        const size_t row = (size_t)r * c;
        for (uint32_t j = blockIdx.x * blockDim.x + threadIdx.x; j < c; j += gridDim.x * blockDim.x) {
            /* rounded apart (no FMA), as the CPU's drop_rows computes it */
            const float v = __fmul_rn(dev_dropout_factor(key, threshold, scale, first + j), src[row + j]);
            dst[row + j] = from_f<T>(base ? __fadd_rn(base[row + j], v) : v);
        }
    }
}

} // namespace

/* ---- launchers ---- */

extern "C" size_t cu_norm_backward_scratch_floats(uint32_t n, uint32_t c)
{
    const size_t chunks = ((size_t)n + NORM_CHUNK - 1) / NORM_CHUNK;
    return 2 * (size_t)n + chunks * 2 * (size_t)c;
}

extern "C" cudaError_t cu_norm_backward(float *dx, float *dw, float *db, const void *dy,
                                        enum cu_dtype t, const float *x, const float *w,
                                        uint32_t n, uint32_t c, float eps, enum cu_norm_kind kind,
                                        float *scratch, cudaStream_t s)
{
    if (n == 0 || c == 0)
        return cudaSuccess;
    const uint32_t chunks = (n + NORM_CHUNK - 1) / NORM_CHUNK, tiles = (c + 31) / 32;
    if (tiles > 65535u)
        return cudaErrorInvalidValue;
    float *stats = scratch, *partial = scratch + 2 * (size_t)n;
    float *bias_grad = kind == CU_NORM_RMS ? NULL : db;
    const unsigned warps = 4, g = (n + warps - 1) / warps;
    const dim3 pgrid(chunks, tiles), pblock(32, NORM_PART_ROWS);
    if (t == CU_BF16) {
        norm_backward_rows<bf16><<<g, warps * 32, 0, s>>>(dx, stats, (const bf16 *)dy, x, w, n, c, eps, (int)kind);
        norm_backward_partials<bf16><<<pgrid, pblock, 0, s>>>(partial, stats, (const bf16 *)dy, x, n, c);
    } else {
        norm_backward_rows<float><<<g, warps * 32, 0, s>>>(dx, stats, (const float *)dy, x, w, n, c, eps, (int)kind);
        norm_backward_partials<float><<<pgrid, pblock, 0, s>>>(partial, stats, (const float *)dy, x, n, c);
    }
    norm_backward_reduce<<<(c + 127) / 128, 128, 0, s>>>(dw, bias_grad, partial, chunks, c);
    return cudaGetLastError();
}

/* 16-byte items when the three buffers are aligned and count divides (each one row of count
 * values), else one value per item. */
template <typename T>
static void gelu_backward_launch(T *dx, const T *dy, const T *pre, size_t count, bool erf, cudaStream_t s)
{
    constexpr uint32_t VW = 16 / sizeof(T);
    if (rows_vectorizable<T>(dx, count, count) && rows_vectorizable<T>(dy, count, count) &&
        rows_vectorizable<T>(pre, count, count))
        gelu_backward_kernel<T, VW><<<blocks_for(count / VW, 256), 256, 0, s>>>(dx, dy, pre, count / VW, erf);
    else
        gelu_backward_kernel<T, 1><<<blocks_for(count, 256), 256, 0, s>>>(dx, dy, pre, count, erf);
}

extern "C" cudaError_t cu_gelu_backward(void *dx, const void *dy, const void *pre, enum cu_dtype t, size_t count,
                                        bool erf, cudaStream_t s)
{
    if (count == 0)
        return cudaSuccess;
    if (t == CU_BF16)
        gelu_backward_launch<bf16>((bf16 *)dx, (const bf16 *)dy, (const bf16 *)pre, count, erf, s);
    else
        gelu_backward_launch<float>((float *)dx, (const float *)dy, (const float *)pre, count, erf, s);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_swiglu_backward(void *d_gate_up, const void *dh, size_t ldh,
                                          const void *gate_up, enum cu_dtype t, uint32_t n,
                                          uint32_t f, cudaStream_t s)
{
    if (n == 0 || f == 0)
        return cudaSuccess;
    dim3 g;
    unsigned threads;
#define SWIGLU_BWD(T_, VW_)                                                                        \
    (row_grid(&g, &threads, f / (VW_), n),                                                        \
     swiglu_backward_kernel<T_, VW_><<<g, threads, 0, s>>>((T_ *)d_gate_up, (const T_ *)dh, ldh, \
                                                            (const T_ *)gate_up, n, f))
    if (t == CU_BF16) {
        if (rows_vectorizable<bf16>(gate_up, f, 2 * (size_t)f) && rows_vectorizable<bf16>(d_gate_up, f, 2 * (size_t)f) &&
            rows_vectorizable<bf16>(dh, f, ldh))
            SWIGLU_BWD(bf16, 8);
        else
            SWIGLU_BWD(bf16, 1);
    } else if (rows_vectorizable<float>(gate_up, f, 2 * (size_t)f) && rows_vectorizable<float>(d_gate_up, f, 2 * (size_t)f) &&
               rows_vectorizable<float>(dh, f, ldh)) {
        SWIGLU_BWD(float, 4);
    } else {
        SWIGLU_BWD(float, 1);
    }
#undef SWIGLU_BWD
    return cudaGetLastError();
}

extern "C" uint32_t cu_embed_backward_index(const uint32_t *keys, uint32_t n,
                                            uint32_t *rows_by_key, uint32_t *seg_key,
                                            uint32_t *seg_start)
{
    seg_start[0] = 0;
    if (n == 0)
        return 0;
    /* stable LSD radix sort of the row numbers by key, 8 bits a pass; seg_key is the second
     * buffer until the segments are written, and four passes end in rows_by_key */
    uint32_t *src = rows_by_key, *dst = seg_key;
    for (uint32_t i = 0; i < n; i++)
        src[i] = i;
    for (unsigned shift = 0; shift < 32; shift += 8) {
        uint32_t start[257] = {0};
        for (uint32_t i = 0; i < n; i++)
            start[((keys[src[i]] >> shift) & 255u) + 1]++;
        if (start[((keys[src[0]] >> shift) & 255u) + 1] == n) {
            /* one digit for every row: the pass would copy src unchanged */
            for (uint32_t i = 0; i < n; i++)
                dst[i] = src[i];
        } else {
            for (unsigned b = 0; b < 256; b++)
                start[b + 1] += start[b];
            for (uint32_t i = 0; i < n; i++)
                dst[start[(keys[src[i]] >> shift) & 255u]++] = src[i];
        }
        uint32_t *tmp = src;
        src = dst;
        dst = tmp;
    }
    uint32_t nseg = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint32_t k = keys[rows_by_key[i]];
        if (i == 0 || k != keys[rows_by_key[i - 1]]) {
            seg_key[nseg] = k;
            seg_start[nseg++] = i;
        }
    }
    seg_start[nseg] = n;
    return nseg;
}

extern "C" cudaError_t cu_embed_backward(float *table, const float *dx,
                                         const uint32_t *rows_by_key, const uint32_t *seg_key,
                                         const uint32_t *seg_start, uint32_t nseg, uint32_t c,
                                         cudaStream_t s)
{
    if (nseg == 0 || c == 0)
        return cudaSuccess;
    embed_backward_kernel<<<nseg, 128, 0, s>>>(table, dx, rows_by_key, seg_key, seg_start, c);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_tanh_backward(float *d, const void *y, enum cu_dtype t, size_t count,
                                        cudaStream_t s)
{
    if (count == 0)
        return cudaSuccess;
    const unsigned g = blocks_for(count, 256);
    if (t == CU_BF16)
        tanh_backward_kernel<bf16><<<g, 256, 0, s>>>(d, (const bf16 *)y, count);
    else
        tanh_backward_kernel<float><<<g, 256, 0, s>>>(d, (const float *)y, count);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_pool_backward(void *dxn, const float *dpooled, const void *xn,
                                        enum cu_dtype t, uint32_t c, const uint32_t *seq_off,
                                        uint32_t nseq, enum cu_pool_kind kind, cudaStream_t s)
{
    if (nseq == 0 || c == 0)
        return cudaSuccess;
    const dim3 g(nseq, (c + 127) / 128);
    if (t == CU_BF16)
        pool_backward_kernel<bf16><<<g, 128, 0, s>>>((bf16 *)dxn, dpooled, (const bf16 *)xn, c, seq_off, (int)kind);
    else
        pool_backward_kernel<float><<<g, 128, 0, s>>>((float *)dxn, dpooled, (const float *)xn, c, seq_off, (int)kind);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_softmax_xent(float *z, size_t ld, void *grad, enum cu_dtype grad_t,
                                       float *loss, const uint32_t *target, uint32_t rows, uint32_t v,
                                       float scale, cudaStream_t s)
{
    if (rows == 0 || v == 0)
        return cudaSuccess;
    /* 4 logits per access when every row starts 16-byte aligned (and its bf16 gradient 8-byte) */
    const bool vec = ((uintptr_t)z | (uintptr_t)(grad ? grad : z)) % 16 == 0 && ld % 4 == 0;
    if (grad_t == CU_BF16 && vec)
        softmax_xent_kernel<bf16, 4><<<rows, XENT_THREADS, 0, s>>>(z, ld, (bf16 *)grad, loss, target, v, scale);
    else if (grad_t == CU_BF16)
        softmax_xent_kernel<bf16, 1><<<rows, XENT_THREADS, 0, s>>>(z, ld, (bf16 *)grad, loss, target, v, scale);
    else if (vec)
        softmax_xent_kernel<float, 4><<<rows, XENT_THREADS, 0, s>>>(z, ld, grad ? (float *)grad : z, loss,
                                                                    target, v, scale);
    else
        softmax_xent_kernel<float, 1><<<rows, XENT_THREADS, 0, s>>>(z, ld, grad ? (float *)grad : z, loss,
                                                                    target, v, scale);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_adamw(float *p, uint16_t *p_bf16, float *m, float *v, const float *g,
                                size_t n, const struct cu_adamw_step *o, cudaStream_t s)
{
    if (n == 0)
        return cudaSuccess;
    /* train_adamw_step's host-side arithmetic: the corrections in double, rounded to float */
    const double bc1 = 1.0 - pow(o->beta1, (double)o->step), bc2 = 1.0 - pow(o->beta2, (double)o->step);
    adamw_coef c;
    c.lr = o->lr;
    c.b1 = o->beta1;
    c.b2 = o->beta2;
    c.eps = o->eps;
    c.wd = o->weight_decay;
    c.step_size = o->uer ? 0.0f : (float)(o->lr / bc1);
    c.bc2_sqrt = o->uer ? 1.0f : (float)sqrt(bc2);
    c.uer = o->uer;
    adamw_kernel<<<blocks_for(n, 256), 256, 0, s>>>(p, (bf16 *)p_bf16, m, v, g, n, c);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_grad_norm(double *norm, const float *g, size_t n, double *scratch,
                                    cudaStream_t s)
{
    grad_sumsq_kernel<<<CU_GRAD_NORM_SCRATCH, NORM2_THREADS, 0, s>>>(scratch, g, n);
    grad_norm_finish_kernel<<<1, NORM2_THREADS, 0, s>>>(norm, scratch);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_grad_scale(float *g, size_t n, float scale, cudaStream_t s)
{
    if (n == 0)
        return cudaSuccess;
    grad_scale_kernel<<<blocks_for(n, 256), 256, 0, s>>>(g, n, scale);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_grad_clip(float *g, size_t n, const double *norm, float max_norm,
                                    cudaStream_t s)
{
    if (n == 0)
        return cudaSuccess;
    grad_clip_kernel<<<blocks_for(n, 256), 256, 0, s>>>(g, n, norm, max_norm);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_dropout_rows(void *dst, enum cu_dtype t, const float *base, const float *src,
                                       uint32_t c, const uint32_t *seq_off, uint32_t nseq, uint32_t rows,
                                       const uint64_t *seq_key, uint32_t layer, uint32_t place,
                                       uint32_t threshold, float scale, cudaStream_t s)
{
    if (rows == 0 || c == 0 || nseq == 0)
        return cudaSuccess;
    dim3 g;
    unsigned threads;
    row_grid(&g, &threads, c, rows);
    if (t == CU_BF16)
        dropout_rows_kernel<bf16><<<g, threads, 0, s>>>((bf16 *)dst, base, src, c, seq_off, nseq, rows, seq_key,
                                                        layer, place, threshold, scale);
    else
        dropout_rows_kernel<float><<<g, threads, 0, s>>>((float *)dst, base, src, c, seq_off, nseq, rows,
                                                         seq_key, layer, place, threshold, scale);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_convert_f32(void *dst, enum cu_dtype t, const float *src, size_t count, cudaStream_t s)
{
    if (count == 0)
        return cudaSuccess;
    if (t == CU_BF16)
        convert_kernel<bf16><<<blocks_for(count, 256), 256, 0, s>>>((bf16 *)dst, src, count);
    else
        convert_kernel<float><<<blocks_for(count, 256), 256, 0, s>>>((float *)dst, src, count);
    return cudaGetLastError();
}
