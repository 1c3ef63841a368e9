/* kernels.cu — the CUDA forward ops other than attention and the GEMMs: embedding gather, the
 * norms, GELU, SwiGLU, RoPE, the fallback bias/GELU epilogue, pooling, tanh, softmax, the
 * last-row gather of the LM head, and the fingerprint the engine compares kernel candidates by.
 *
 * Each kernel is templated on the activation type T (float, or __nv_bfloat16 read and written
 * as such with fp32 arithmetic) and mirrors one CPU op of ops.c formula for formula, so the fp32
 * instantiation agrees with the CPU to rounding (1e-5 relative, tests/unit/test_cuda_ops.c).
 * The embedding and the norms, which write and read the residual stream, are also templated on
 * its type XT (fp32, or bf16 with the engine's residual_bf16).
 * The memory-bound ones are one pass each, the fusion that matters (the residual add) happens in
 * the GEMM epilogue instead (engine.c). Row-shaped ones run on a (column blocks, rows) grid with
 * 16-byte accesses where the row width allows, so no thread divides a 64-bit index (an emulated
 * division per element made the first versions compute-bound) and every load is a full vector;
 * other widths take the scalar instantiation of the same kernel. */
#include <cuda_bf16.h>
#include <math.h>

#include "model/cuda/cuda_device.cuh"
#include "model/cuda/cuda_internal.h"
#include "model/cuda/cuda_train.h"

namespace {

/* Grid-stride launch shape for count elements: enough blocks to fill the GPU, never more than
 * the work. */
inline unsigned blocks_for(size_t count, unsigned threads)
{
    size_t b = (count + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : (b > 65535u * 8u ? 65535u * 8u : b));
}

/* the CPU's tanh-form GELU: 0.5·v·(1 + tanh(u)) = v / (1 + e^(−2u)) */
__device__ __forceinline__ float gelu_tanh(float v)
{
    const float k = 0.7978845608028654f;
    return v / (1.0f + expf(-2.0f * k * (v + 0.044715f * v * v * v)));
}

__device__ __forceinline__ float gelu_erf(float v)
{
    return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
}

template <typename T, typename XT, uint32_t VW>
__global__ void embed_kernel(XT *x, const T *wte, const T *wpe, const uint32_t *tokens,
                             const uint32_t *pos, uint32_t n, uint32_t c)
{
    const uint32_t vecs = c / VW;
    for (uint32_t row = blockIdx.y; row < n; row += gridDim.y) {
        const T *e = wte + (size_t)tokens[row] * c, *p = wpe ? wpe + (size_t)pos[row] * c : NULL;
        XT *xr = x + (size_t)row * c;
        for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < vecs; i += gridDim.x * blockDim.x) {
            float v[VW], pv[VW];
            load_vec<T, VW>(v, e + i * VW);
            if (p) {
                load_vec<T, VW>(pv, p + i * VW);
#pragma unroll
                for (uint32_t k = 0; k < VW; k++)
                    v[k] += pv[k];
            }
            store_vec<XT, VW>(xr + i * VW, v);
        }
    }
}

/* 1 / spread of a row from its summed squared deviations ss: UER's LayerNorm divides by the
 * unbiased standard deviation plus eps, the standard one and RMSNorm by sqrt(variance + eps). */
__device__ __forceinline__ float norm_scale(float ss, uint32_t c, float eps, int kind)
{
    if (kind == CU_NORM_LAYER_UER)
        return 1.0f / (sqrtf(ss / (float)(c > 1 ? c - 1 : 1)) + eps);
    return 1.0f / sqrtf(ss / (float)c + eps);
}

/* One warp per row; three passes over the row (mean, spread, output), the later ones from L1. */
template <typename T, typename XT>
__global__ void norm_kernel(T *y, const XT *x, const float *w, const float *b, uint32_t n,
                            uint32_t c, float eps, int kind)
{
    const uint32_t row = warp_row(), lane = threadIdx.x % 32;
    if (row >= n)
        return;
    const XT *xr = x + (size_t)row * c;
    float mean = 0.0f;
    if (kind != CU_NORM_RMS) {
        float s = 0.0f;
        for (uint32_t j = lane; j < c; j += 32)
            s += to_f(xr[j]);
        mean = warp_sum(s) / (float)c;
    }
    float ss = 0.0f;
    for (uint32_t j = lane; j < c; j += 32) {
        const float d = to_f(xr[j]) - mean;
        ss += d * d;
    }
    const float scale = norm_scale(warp_sum(ss), c, eps, kind);
    T *yr = y + (size_t)row * c;
    for (uint32_t j = lane; j < c; j += 32) {
        float v = (to_f(xr[j]) - mean) * scale * w[j];
        if (b)
            v += b[j];
        yr[j] = from_f<T>(v);
    }
}

template <typename T> __device__ __forceinline__ void store4(T *p, float a, float b, float c, float d);
template <> __device__ __forceinline__ void store4<float>(float *p, float a, float b, float c, float d)
{
    *reinterpret_cast<float4 *>(p) = make_float4(a, b, c, d);
}
template <> __device__ __forceinline__ void store4<bf16>(bf16 *p, float a, float b, float c, float d)
{
    const __nv_bfloat162 lo = __floats2bfloat162_rn(a, b), hi = __floats2bfloat162_rn(c, d);
    uint2 raw;
    raw.x = *reinterpret_cast<const uint32_t *>(&lo);
    raw.y = *reinterpret_cast<const uint32_t *>(&hi);
    *reinterpret_cast<uint2 *>(p) = raw;
}

/* Four consecutive residual values as fp32: one 16-byte load of fp32, one 8-byte load of bf16
 * (4-value aligned p). */
template <typename XT> __device__ __forceinline__ float4 load4(const XT *p);
template <> __device__ __forceinline__ float4 load4<float>(const float *p)
{
    return *reinterpret_cast<const float4 *>(p);
}
template <> __device__ __forceinline__ float4 load4<bf16>(const bf16 *p)
{
    const uint2 raw = *reinterpret_cast<const uint2 *>(p);
    const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&raw.x));
    const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&raw.y));
    return make_float4(lo.x, lo.y, hi.x, hi.y);
}

/* The same for rows of c values, c a multiple of 4 and at most 128 × MAXV4: the row is read from
 * device memory once into registers with vector loads (16 bytes of fp32 x, 8 of bf16; fully
 * unrolled, so the array stays in registers), then reduced twice and written. Lane l holds
 * values 4l.., 4(l + 32).., ... of its row. */
template <typename T, typename XT, int MAXV4>
__global__ void norm_kernel_vec(T *y, const XT *x, const float *w, const float *b, uint32_t n,
                                uint32_t c, float eps, int kind)
{
    const uint32_t row = warp_row(), lane = threadIdx.x % 32;
    if (row >= n)
        return;
    const uint32_t c4 = c / 4;
    const XT *xr = x + (size_t)row * c;
    float4 v[MAXV4];
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < MAXV4; k++) {
        const uint32_t j = lane + 32 * k;
        v[k] = j < c4 ? load4<XT>(xr + 4 * j) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        s += (v[k].x + v[k].y) + (v[k].z + v[k].w);
    }
    const float mean = kind == CU_NORM_RMS ? 0.0f : warp_sum(s) / (float)c;
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < MAXV4; k++)
        if (lane + 32 * k < c4) {
            const float d0 = v[k].x - mean, d1 = v[k].y - mean, d2 = v[k].z - mean, d3 = v[k].w - mean;
            ss += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
        }
    const float scale = norm_scale(warp_sum(ss), c, eps, kind);
    T *yr = y + (size_t)row * c;
#pragma unroll
    for (int k = 0; k < MAXV4; k++) {
        const uint32_t j = lane + 32 * k;
        if (j < c4) {
            const float4 w4 = reinterpret_cast<const float4 *>(w)[j];
            const float4 b4 = b ? reinterpret_cast<const float4 *>(b)[j] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            store4<T>(yr + 4 * j, (v[k].x - mean) * scale * w4.x + b4.x, (v[k].y - mean) * scale * w4.y + b4.y,
                      (v[k].z - mean) * scale * w4.z + b4.z, (v[k].w - mean) * scale * w4.w + b4.w);
        }
    }
}

/* RMSNorm's factor alone, one warp per row: r[row] = 1 / sqrt(mean(x²) + eps), summed as
 * norm_kernel_vec sums (VEC: 4 values per load, c a multiple of 4) or norm_kernel (one). */
template <typename XT, bool VEC>
__global__ void rms_scale_kernel(float *r, const XT *x, uint32_t n, uint32_t c, float eps)
{
    const uint32_t row = warp_row(), lane = threadIdx.x % 32;
    if (row >= n)
        return;
    const XT *xr = x + (size_t)row * c;
    float ss = 0.0f;
    if (VEC) {
        for (uint32_t j = lane; j < c / 4; j += 32) {
            const float4 v = load4<XT>(xr + 4 * j);
            ss += (v.x * v.x + v.y * v.y) + (v.z * v.z + v.w * v.w);
        }
    } else {
        for (uint32_t j = lane; j < c; j += 32) {
            const float v = to_f(xr[j]);
            ss += v * v;
        }
    }
    ss = warp_sum(ss);
    if (lane == 0)
        r[row] = norm_scale(ss, c, eps, CU_NORM_RMS);
}

/* VW values per item (16-byte accesses when VW · sizeof(T) = 16); y may be x. */
template <typename T, uint32_t VW> __global__ void gelu_kernel(T *y, const T *x, size_t items, bool erf)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < items;
         i += (size_t)gridDim.x * blockDim.x) {
        float v[VW];
        load_vec<T, VW>(v, x + i * VW);
#pragma unroll
        for (uint32_t k = 0; k < VW; k++)
            v[k] = erf ? gelu_erf(v[k]) : gelu_tanh(v[k]);
        store_vec<T, VW>(y + i * VW, v);
    }
}

/* h[row] (row stride ldh) = silu(gate) ⊙ up of gate_up[row] = [gate | up] (row stride 2f); h may
 * be gate_up itself (ldh = 2f: the gate halves are overwritten). FUSED_ORDER: gate and up columns
 * in cu_gemm_swiglu_row's order, each block of 32 reordered on its way to h by one thread, which
 * reads the whole block before it writes any of it (in place too). */
template <typename T, uint32_t VW, bool FUSED_ORDER>
__global__ void swiglu_kernel(T *h, size_t ldh, const T *gate_up, const float *row_scale, uint32_t n, uint32_t f)
{
    constexpr uint32_t W = FUSED_ORDER ? 32 : VW; /* columns per item */
    const uint32_t items = f / W;
    for (uint32_t row = blockIdx.y; row < n; row += gridDim.y) {
        const T *g = gate_up + (size_t)row * 2 * f;
        T *hr = h + (size_t)row * ldh;
        const float rs = row_scale ? row_scale[row] : 1.0f;
        for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < items; i += gridDim.x * blockDim.x) {
            float gv[W], uv[W], hv[W];
#pragma unroll
            for (uint32_t v = 0; v < W; v += VW) {
                load_vec<T, VW>(gv + v, g + i * W + v);
                load_vec<T, VW>(uv + v, g + f + i * W + v);
            }
#pragma unroll
            for (uint32_t k = 0; k < W; k++) {
                const float gk = gv[k] * rs;
                hv[FUSED_ORDER ? cu_gemm_swiglu_row(k) : k] = gk / (1.0f + expf(-gk)) * (uv[k] * rs);
            }
#pragma unroll
            for (uint32_t v = 0; v < W; v += VW)
                store_vec<T, VW>(hr + i * W + v, hv + v);
        }
    }
}

/* Per row: heads × (d/2 / VW) items, each rotating VW pairs (j, j + d/2) by the position's
 * angle, or by its opposite (INVERSE: the backward pass, the transpose of a rotation). */
template <typename T, uint32_t VW, bool INVERSE>
__global__ void rope_kernel(T *x, uint32_t n, uint32_t ld, uint32_t heads, uint32_t d,
                            const uint32_t *pos, const float *cos_t, const float *sin_t)
{
    const uint32_t half = d / 2, per_head = half / VW, per_row = heads * per_head;
    for (uint32_t row = blockIdx.y; row < n; row += gridDim.y) {
        const float *cr = cos_t + (size_t)pos[row] * half, *sr = sin_t + (size_t)pos[row] * half;
        for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < per_row; i += gridDim.x * blockDim.x) {
            const uint32_t h = i / per_head, j = (i % per_head) * VW;
            T *xh = x + (size_t)row * ld + (size_t)h * d;
            float a[VW], bb[VW], ra[VW], rb[VW];
            load_vec<T, VW>(a, xh + j);
            load_vec<T, VW>(bb, xh + j + half);
#pragma unroll
            for (uint32_t k = 0; k < VW; k++) {
                const float cs = cr[j + k], sn = INVERSE ? -sr[j + k] : sr[j + k];
                ra[k] = a[k] * cs - bb[k] * sn;
                rb[k] = bb[k] * cs + a[k] * sn;
            }
            store_vec<T, VW>(xh + j, ra);
            store_vec<T, VW>(xh + j + half, rb);
        }
    }
}

template <typename T>
__global__ void bias_act_kernel(T *y, size_t ld, const T *bias, uint32_t n, uint32_t out, bool gelu)
{
    const size_t total = (size_t)n * out;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t row = i / out, j = i % out;
        T *p = y + row * ld + j;
        float v = to_f(*p);
        if (bias)
            v += to_f(bias[j]);
        *p = from_f<T>(gelu ? gelu_tanh(v) : v);
    }
}

/* grid (nseq, channel blocks): threads own channels, loop over the sequence's rows (coalesced
 * across the block). The mean accumulates in double as the CPU does. */
template <typename T>
__global__ void pool_kernel(float *pooled32, T *pooled_t, const T *xn, uint32_t c,
                            const uint32_t *seq_off, int kind)
{
    const uint32_t b = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= c)
        return;
    const uint32_t start = seq_off[b], end = seq_off[b + 1];
    float v = 0.0f;
    if (end > start) {
        switch (kind) {
        case CU_POOL_FIRST:
            v = to_f(xn[(size_t)start * c + j]);
            break;
        case CU_POOL_LAST:
            v = to_f(xn[(size_t)(end - 1) * c + j]);
            break;
        case CU_POOL_MAX:
            v = to_f(xn[(size_t)start * c + j]);
            for (uint32_t r = start + 1; r < end; r++)
                v = fmaxf(v, to_f(xn[(size_t)r * c + j]));
            break;
        default: {
            double s = 0.0;
            for (uint32_t r = start; r < end; r++)
                s += (double)to_f(xn[(size_t)r * c + j]);
            v = (float)(s / (double)(end - start));
        }
        }
    }
    pooled32[(size_t)b * c + j] = v;
    if (pooled_t)
        pooled_t[(size_t)b * c + j] = from_f<T>(v);
}

template <typename T> __global__ void tanh_kernel(T *y, const float *x, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = from_f<T>(tanhf(x[i]));
}

/* One block of 256 threads per row. */
__global__ void softmax_kernel(float *x, uint32_t n, size_t ld)
{
    __shared__ float red[8];
    float *row = x + blockIdx.x * ld;
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float mx = -INFINITY;
    for (uint32_t j = threadIdx.x; j < n; j += blockDim.x)
        mx = fmaxf(mx, row[j]);
    mx = warp_max(mx);
    if (lane == 0)
        red[warp] = mx;
    __syncthreads();
    mx = red[0];
    for (uint32_t w = 1; w < blockDim.x / 32; w++)
        mx = fmaxf(mx, red[w]);
    __syncthreads(); /* everyone has read red before it is reused */
    float sum = 0.0f;
    for (uint32_t j = threadIdx.x; j < n; j += blockDim.x) {
        const float e = expf(row[j] - mx);
        row[j] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    if (lane == 0)
        red[warp] = sum;
    __syncthreads();
    sum = 0.0f;
    for (uint32_t w = 0; w < blockDim.x / 32; w++)
        sum += red[w];
    const float inv = 1.0f / sum;
    for (uint32_t j = threadIdx.x; j < n; j += blockDim.x)
        row[j] *= inv;
}

template <typename T>
__global__ void gather_last_kernel(T *dst, const T *src, uint32_t c, const uint32_t *seq_off)
{
    const uint32_t b = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= c)
        return;
    const uint32_t start = seq_off[b], end = seq_off[b + 1];
    dst[(size_t)b * c + j] = end > start ? src[(size_t)(end - 1) * c + j] : from_f<T>(0.0f);
}

/* Per block: Σ x² and Σ ±x over its rows (blockIdx.x, + gridDim.x, ...) of a [rows, cols] matrix
 * (row stride ld), the sign a hash of the element's place, in double and in an order fixed by the
 * shapes; partial[2b], partial[2b + 1] (cu_fingerprint). */
constexpr unsigned FINGERPRINT_THREADS = 256;
template <typename T>
__global__ void fingerprint_kernel(double *partial, const T *x, uint32_t rows, uint32_t cols, size_t ld)
{
    __shared__ double red[2][FINGERPRINT_THREADS / 32];
    double squares = 0.0, signed_sum = 0.0;
    for (uint32_t r = blockIdx.x; r < rows; r += gridDim.x)
        for (uint32_t c = threadIdx.x; c < cols; c += blockDim.x) {
            const double v = to_f(x[(size_t)r * ld + c]);
            squares += v * v;
            signed_sum += (((uint64_t)r * cols + c) * 0x9E3779B97F4A7C15ull) >> 63 ? v : -v;
        }
    for (int lanes = 16; lanes > 0; lanes >>= 1) {
        squares += __shfl_xor_sync(0xffffffffu, squares, lanes);
        signed_sum += __shfl_xor_sync(0xffffffffu, signed_sum, lanes);
    }
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        red[0][warp] = squares;
        red[1][warp] = signed_sum;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        squares = signed_sum = 0.0;
        for (uint32_t w = 0; w < FINGERPRINT_THREADS / 32; w++) {
            squares += red[0][w];
            signed_sum += red[1][w];
        }
        partial[2 * blockIdx.x] = squares;
        partial[2 * blockIdx.x + 1] = signed_sum;
    }
}

/* Busy for `cycles` clock cycles of one multiprocessor: the step profile puts it ahead of a
 * forward so the host has enqueued every step before the first one runs (the events then time
 * the GPU's work, not the host's launches). */
__global__ void spin_kernel(long long cycles)
{
    const long long start = clock64();
    while (clock64() - start < cycles) {
    }
}

/* The embedding's launch for one (table, residual) type pair; vec: 4 values per item. */
template <typename T, typename XT>
void embed_launch(XT *x, const T *wte, const T *wpe, const uint32_t *tokens, const uint32_t *pos,
                  uint32_t n, uint32_t c, bool vec, cudaStream_t s)
{
    dim3 g;
    unsigned threads;
    row_grid(&g, &threads, vec ? c / 4 : c, n);
    if (vec)
        embed_kernel<T, XT, 4><<<g, threads, 0, s>>>(x, wte, wpe, tokens, pos, n, c);
    else
        embed_kernel<T, XT, 1><<<g, threads, 0, s>>>(x, wte, wpe, tokens, pos, n, c);
}

/* The norm's launch for one (output, residual) type pair: rows of up to 1024 values (GPT-2 base
 * 768, Qwen2.5-0.5B 896) from registers with vector loads when vec; wider rows, and widths that
 * are not a multiple of 4, in three passes (the later two from L1). */
template <typename T, typename XT>
void norm_launch(T *y, const XT *x, const float *w, const float *b, uint32_t n, uint32_t c,
                 float eps, int kind, bool vec, cudaStream_t s)
{
    const unsigned warps = 4, g = (n + warps - 1) / warps, threads = warps * 32;
    if (vec && c <= 256)
        norm_kernel_vec<T, XT, 2><<<g, threads, 0, s>>>(y, x, w, b, n, c, eps, kind);
    else if (vec && c <= 512)
        norm_kernel_vec<T, XT, 4><<<g, threads, 0, s>>>(y, x, w, b, n, c, eps, kind);
    else if (vec && c <= 1024)
        norm_kernel_vec<T, XT, 8><<<g, threads, 0, s>>>(y, x, w, b, n, c, eps, kind);
    else /* wider rows, and widths no model has (not a multiple of 4) */
        norm_kernel<T, XT><<<g, threads, 0, s>>>(y, x, w, b, n, c, eps, kind);
}

} // namespace

extern "C" cudaError_t cu_spin(long long cycles, cudaStream_t s)
{
    spin_kernel<<<1, 1, 0, s>>>(cycles);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_embed(void *x, enum cu_dtype xt, const void *wte, const void *wpe,
                                enum cu_dtype t, const uint32_t *tokens, const uint32_t *pos,
                                uint32_t n, uint32_t c, cudaStream_t s)
{
    if (n == 0 || c == 0)
        return cudaSuccess;
    /* 4 values per item: the tables read and the row written 16 bytes (fp32) or 8 (bf16) */
    const bool vec = c % 4 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)wte % 16 == 0 &&
                     (!wpe || (uintptr_t)wpe % 16 == 0);
    if (t == CU_BF16 && xt == CU_BF16)
        embed_launch<bf16, bf16>((bf16 *)x, (const bf16 *)wte, (const bf16 *)wpe, tokens, pos, n, c, vec, s);
    else if (t == CU_BF16)
        embed_launch<bf16, float>((float *)x, (const bf16 *)wte, (const bf16 *)wpe, tokens, pos, n, c, vec, s);
    else if (xt == CU_BF16)
        embed_launch<float, bf16>((bf16 *)x, (const float *)wte, (const float *)wpe, tokens, pos, n, c, vec, s);
    else
        embed_launch<float, float>((float *)x, (const float *)wte, (const float *)wpe, tokens, pos, n, c, vec, s);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_norm(void *y, enum cu_dtype t, const void *x, enum cu_dtype xt,
                               const float *w, const float *b, uint32_t n, uint32_t c, float eps,
                               enum cu_norm_kind kind, cudaStream_t s)
{
    if (n == 0)
        return cudaSuccess;
    const float *bias = kind == CU_NORM_RMS ? NULL : b;
    /* vector loads of 4 values need c a multiple of 4 and every pointer 16-byte aligned (more
     * than a bf16 x's 8 bytes need: the engine's tensors are 256-byte aligned anyway) */
    const bool vec = c % 4 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)w % 16 == 0 &&
                     (!bias || (uintptr_t)bias % 16 == 0) && (uintptr_t)y % 16 == 0;
    const int k = (int)kind;
    if (t == CU_BF16 && xt == CU_BF16)
        norm_launch<bf16, bf16>((bf16 *)y, (const bf16 *)x, w, bias, n, c, eps, k, vec, s);
    else if (t == CU_BF16)
        norm_launch<bf16, float>((bf16 *)y, (const float *)x, w, bias, n, c, eps, k, vec, s);
    else if (xt == CU_BF16)
        norm_launch<float, bf16>((float *)y, (const bf16 *)x, w, bias, n, c, eps, k, vec, s);
    else
        norm_launch<float, float>((float *)y, (const float *)x, w, bias, n, c, eps, k, vec, s);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_rms_scale(float *r, const void *x, enum cu_dtype xt, uint32_t n, uint32_t c, float eps,
                                    cudaStream_t s)
{
    if (n == 0)
        return cudaSuccess;
    const unsigned warps = 4, g = (n + warps - 1) / warps, threads = warps * 32;
    const bool vec = c % 4 == 0 && (uintptr_t)x % 16 == 0;
    if (xt == CU_BF16 && vec)
        rms_scale_kernel<bf16, true><<<g, threads, 0, s>>>(r, (const bf16 *)x, n, c, eps);
    else if (xt == CU_BF16)
        rms_scale_kernel<bf16, false><<<g, threads, 0, s>>>(r, (const bf16 *)x, n, c, eps);
    else if (vec)
        rms_scale_kernel<float, true><<<g, threads, 0, s>>>(r, (const float *)x, n, c, eps);
    else
        rms_scale_kernel<float, false><<<g, threads, 0, s>>>(r, (const float *)x, n, c, eps);
    return cudaGetLastError();
}

/* 16-byte items when both buffers are aligned and count divides (each one row of count
 * values), else one value per item. */
template <typename T>
static void gelu_launch(T *y, const T *x, size_t count, bool erf, cudaStream_t s)
{
    constexpr uint32_t VW = 16 / sizeof(T);
    if (rows_vectorizable<T>(y, count, count) && rows_vectorizable<T>(x, count, count))
        gelu_kernel<T, VW><<<blocks_for(count / VW, 256), 256, 0, s>>>(y, x, count / VW, erf);
    else
        gelu_kernel<T, 1><<<blocks_for(count, 256), 256, 0, s>>>(y, x, count, erf);
}

extern "C" cudaError_t cu_gelu(void *y, const void *x, enum cu_dtype t, size_t count, bool erf, cudaStream_t s)
{
    if (count == 0)
        return cudaSuccess;
    if (t == CU_BF16)
        gelu_launch<bf16>((bf16 *)y, (const bf16 *)x, count, erf, s);
    else
        gelu_launch<float>((float *)y, (const float *)x, count, erf, s);
    return cudaGetLastError();
}

template <typename T, bool FUSED_ORDER>
static void swiglu_launch(T *h, size_t ldh, const T *gate_up, const float *row_scale, uint32_t n, uint32_t f,
                          cudaStream_t s)
{
    constexpr uint32_t VW = 16 / sizeof(T);
    dim3 g;
    unsigned threads;
    if (rows_vectorizable<T>(gate_up, f, 2 * (size_t)f) && rows_vectorizable<T>(h, f, ldh)) {
        row_grid(&g, &threads, f / (FUSED_ORDER ? 32 : VW), n);
        swiglu_kernel<T, VW, FUSED_ORDER><<<g, threads, 0, s>>>(h, ldh, gate_up, row_scale, n, f);
    } else {
        row_grid(&g, &threads, f / (FUSED_ORDER ? 32 : 1), n);
        swiglu_kernel<T, 1, FUSED_ORDER><<<g, threads, 0, s>>>(h, ldh, gate_up, row_scale, n, f);
    }
}

template <bool FUSED_ORDER>
static cudaError_t swiglu(void *h, size_t ldh, const void *gate_up, enum cu_dtype t, const float *row_scale, uint32_t n,
                          uint32_t f, cudaStream_t s)
{
    if (n == 0 || f == 0)
        return cudaSuccess;
    if (FUSED_ORDER && f % 32 != 0)
        return cudaErrorInvalidValue;
    if (t == CU_BF16)
        swiglu_launch<bf16, FUSED_ORDER>((bf16 *)h, ldh, (const bf16 *)gate_up, row_scale, n, f, s);
    else
        swiglu_launch<float, FUSED_ORDER>((float *)h, ldh, (const float *)gate_up, row_scale, n, f, s);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_swiglu(void *h, size_t ldh, const void *gate_up, enum cu_dtype t, const float *row_scale,
                                 uint32_t n, uint32_t f, cudaStream_t s)
{
    return swiglu<false>(h, ldh, gate_up, t, row_scale, n, f, s);
}

extern "C" cudaError_t cu_swiglu_fused_order(void *h, size_t ldh, const void *gate_up, enum cu_dtype t,
                                             const float *row_scale, uint32_t n, uint32_t f, cudaStream_t s)
{
    return swiglu<true>(h, ldh, gate_up, t, row_scale, n, f, s);
}

/* cu_rope and cu_rope_backward (cuda_train.h): vectors of half-rows when d/2 and the row stride
 * are multiples of the vector and the rows aligned, else one pair per item. */
template <bool INVERSE>
static cudaError_t rope_launch(void *x, enum cu_dtype t, uint32_t n, uint32_t ld, uint32_t heads, uint32_t d,
                               const uint32_t *pos, const float *cos_t, const float *sin_t, cudaStream_t s)
{
    if (n == 0 || heads == 0 || d < 2)
        return cudaSuccess;
    const uint32_t half = d / 2;
    dim3 g;
    unsigned threads;
    if (t == CU_BF16 && rows_vectorizable<bf16>(x, half, ld) && d % 2 == 0) {
        row_grid(&g, &threads, (size_t)heads * (half / 8), n);
        rope_kernel<bf16, 8, INVERSE><<<g, threads, 0, s>>>((bf16 *)x, n, ld, heads, d, pos, cos_t, sin_t);
    } else if (t == CU_BF16) {
        row_grid(&g, &threads, (size_t)heads * half, n);
        rope_kernel<bf16, 1, INVERSE><<<g, threads, 0, s>>>((bf16 *)x, n, ld, heads, d, pos, cos_t, sin_t);
    } else if (rows_vectorizable<float>(x, half, ld) && d % 2 == 0) {
        row_grid(&g, &threads, (size_t)heads * (half / 4), n);
        rope_kernel<float, 4, INVERSE><<<g, threads, 0, s>>>((float *)x, n, ld, heads, d, pos, cos_t, sin_t);
    } else {
        row_grid(&g, &threads, (size_t)heads * half, n);
        rope_kernel<float, 1, INVERSE><<<g, threads, 0, s>>>((float *)x, n, ld, heads, d, pos, cos_t, sin_t);
    }
    return cudaGetLastError();
}

extern "C" cudaError_t cu_rope(void *x, enum cu_dtype t, uint32_t n, uint32_t ld, uint32_t heads,
                               uint32_t d, const uint32_t *pos, const float *cos_t,
                               const float *sin_t, cudaStream_t s)
{
    return rope_launch<false>(x, t, n, ld, heads, d, pos, cos_t, sin_t, s);
}

extern "C" cudaError_t cu_rope_backward(void *dx, enum cu_dtype t, uint32_t n, uint32_t ld,
                                        uint32_t heads, uint32_t d, const uint32_t *pos,
                                        const float *cos_t, const float *sin_t, cudaStream_t s)
{
    return rope_launch<true>(dx, t, n, ld, heads, d, pos, cos_t, sin_t, s);
}

extern "C" cudaError_t cu_bias_act(void *y, enum cu_dtype t, size_t ld, const void *bias,
                                   uint32_t n, uint32_t out, bool gelu, cudaStream_t s)
{
    if (n == 0 || out == 0)
        return cudaSuccess;
    const unsigned g = blocks_for((size_t)n * out, 256);
    if (t == CU_BF16)
        bias_act_kernel<bf16><<<g, 256, 0, s>>>((bf16 *)y, ld, (const bf16 *)bias, n, out, gelu);
    else
        bias_act_kernel<float><<<g, 256, 0, s>>>((float *)y, ld, (const float *)bias, n, out, gelu);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_pool(float *pooled32, void *pooled_t, const void *xn, enum cu_dtype t,
                               uint32_t c, const uint32_t *seq_off, uint32_t nseq,
                               enum cu_pool_kind kind, cudaStream_t s)
{
    if (nseq == 0 || c == 0)
        return cudaSuccess;
    const dim3 g(nseq, (c + 127) / 128);
    if (t == CU_BF16)
        pool_kernel<bf16><<<g, 128, 0, s>>>(pooled32, (bf16 *)pooled_t, (const bf16 *)xn, c, seq_off, (int)kind);
    else
        pool_kernel<float><<<g, 128, 0, s>>>(pooled32, (float *)pooled_t, (const float *)xn, c, seq_off, (int)kind);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_tanh(void *y, enum cu_dtype t, const float *x, size_t count,
                               cudaStream_t s)
{
    if (count == 0)
        return cudaSuccess;
    const unsigned g = blocks_for(count, 256);
    if (t == CU_BF16)
        tanh_kernel<bf16><<<g, 256, 0, s>>>((bf16 *)y, x, count);
    else
        tanh_kernel<float><<<g, 256, 0, s>>>((float *)y, x, count);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_softmax_rows(float *x, uint32_t rows, uint32_t n, size_t ld,
                                       cudaStream_t s)
{
    if (rows == 0 || n == 0)
        return cudaSuccess;
    softmax_kernel<<<rows, 256, 0, s>>>(x, n, ld);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_fingerprint(double *partial, uint32_t blocks, const void *x, enum cu_dtype t,
                                      uint32_t rows, uint32_t cols, size_t ld, cudaStream_t s)
{
    if (blocks == 0)
        return cudaErrorInvalidValue;
    if (t == CU_BF16)
        fingerprint_kernel<bf16><<<blocks, FINGERPRINT_THREADS, 0, s>>>(partial, (const bf16 *)x, rows, cols, ld);
    else
        fingerprint_kernel<float><<<blocks, FINGERPRINT_THREADS, 0, s>>>(partial, (const float *)x, rows, cols, ld);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_gather_last(void *dst, const void *src, enum cu_dtype t, uint32_t c,
                                      const uint32_t *seq_off, uint32_t nseq, cudaStream_t s)
{
    if (nseq == 0 || c == 0)
        return cudaSuccess;
    const dim3 g(nseq, (c + 127) / 128);
    if (t == CU_BF16)
        gather_last_kernel<bf16><<<g, 128, 0, s>>>((bf16 *)dst, (const bf16 *)src, c, seq_off);
    else
        gather_last_kernel<float><<<g, 128, 0, s>>>((float *)dst, (const float *)src, c, seq_off);
    return cudaGetLastError();
}
