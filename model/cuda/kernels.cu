/* kernels.cu — the CUDA forward ops other than attention and the GEMMs: embedding gather, the
 * norms, GELU, SwiGLU, RoPE, the fallback bias/GELU epilogue, pooling, tanh, softmax and the
 * last-row gather of the LM head.
 *
 * Each kernel is templated on the activation type T (float, or __nv_bfloat16 read and written
 * as such with fp32 arithmetic) and mirrors one CPU op of ops.c formula for formula, so the fp32
 * instantiation agrees with the CPU to rounding (1e-5 relative, tests/unit/test_cuda_ops.c).
 * The memory-bound ones are plain coalesced loops: one pass each, the fusion that matters (the
 * residual add) happens in the GEMM epilogue instead (engine.c). */
#include <cuda_bf16.h>
#include <math.h>

#include "model/cuda/cuda_device.cuh"
#include "model/cuda/cuda_internal.h"

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

template <typename T>
__global__ void embed_kernel(float *x, const T *wte, const T *wpe, const uint32_t *tokens,
                             const uint32_t *pos, uint32_t n, uint32_t c)
{
    const size_t total = (size_t)n * c;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t row = i / c, j = i % c;
        float v = to_f(wte[(size_t)tokens[row] * c + j]);
        if (wpe)
            v += to_f(wpe[(size_t)pos[row] * c + j]);
        x[i] = v;
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
template <typename T>
__global__ void norm_kernel(T *y, const float *x, const float *w, const float *b, uint32_t n,
                            uint32_t c, float eps, int kind)
{
    const uint32_t warps = blockDim.x / 32;
    const uint32_t row = blockIdx.x * warps + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= n)
        return;
    const float *xr = x + (size_t)row * c;
    float mean = 0.0f;
    if (kind != CU_NORM_RMS) {
        float s = 0.0f;
        for (uint32_t j = lane; j < c; j += 32)
            s += xr[j];
        mean = warp_sum(s) / (float)c;
    }
    float ss = 0.0f;
    for (uint32_t j = lane; j < c; j += 32) {
        const float d = xr[j] - mean;
        ss += d * d;
    }
    const float scale = norm_scale(warp_sum(ss), c, eps, kind);
    T *yr = y + (size_t)row * c;
    for (uint32_t j = lane; j < c; j += 32) {
        float v = (xr[j] - mean) * scale * w[j];
        if (b)
            v += b[j];
        yr[j] = from_f<T>(v);
    }
}

/* The same for rows of at most 32 × MAXV values: the row is read from device memory once into
 * registers (fully unrolled, so the array stays in registers), then reduced twice and written. */
template <typename T, int MAXV>
__global__ void norm_kernel_regs(T *y, const float *x, const float *w, const float *b, uint32_t n,
                                 uint32_t c, float eps, int kind)
{
    const uint32_t warps = blockDim.x / 32;
    const uint32_t row = blockIdx.x * warps + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= n)
        return;
    const float *xr = x + (size_t)row * c;
    float v[MAXV];
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < MAXV; k++) {
        const uint32_t j = lane + 32 * k;
        v[k] = j < c ? xr[j] : 0.0f;
        s += v[k];
    }
    const float mean = kind == CU_NORM_RMS ? 0.0f : warp_sum(s) / (float)c;
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < MAXV; k++) {
        const uint32_t j = lane + 32 * k;
        const float d = j < c ? v[k] - mean : 0.0f;
        ss += d * d;
    }
    const float scale = norm_scale(warp_sum(ss), c, eps, kind);
    T *yr = y + (size_t)row * c;
#pragma unroll
    for (int k = 0; k < MAXV; k++) {
        const uint32_t j = lane + 32 * k;
        if (j < c) {
            float o = (v[k] - mean) * scale * w[j];
            if (b)
                o += b[j];
            yr[j] = from_f<T>(o);
        }
    }
}

template <typename T> __global__ void gelu_kernel(T *x, size_t count, bool erf)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x) {
        const float v = to_f(x[i]);
        x[i] = from_f<T>(erf ? gelu_erf(v) : gelu_tanh(v));
    }
}

template <typename T> __global__ void swiglu_kernel(T *gate_up, uint32_t n, uint32_t f)
{
    const size_t total = (size_t)n * f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t row = i / f, j = i % f;
        T *g = gate_up + row * 2 * f + j;
        const float gv = to_f(*g), uv = to_f(g[f]);
        *g = from_f<T>(gv / (1.0f + expf(-gv)) * uv);
    }
}

template <typename T>
__global__ void rope_kernel(T *x, uint32_t n, uint32_t ld, uint32_t heads, uint32_t d,
                            const uint32_t *pos, const float *cos_t, const float *sin_t)
{
    const uint32_t half = d / 2;
    const size_t total = (size_t)n * heads * half;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t row = i / ((size_t)heads * half);
        const uint32_t rest = (uint32_t)(i % ((size_t)heads * half)), h = rest / half, j = rest % half;
        const size_t p = (size_t)pos[row] * half + j;
        const float cs = cos_t[p], sn = sin_t[p];
        T *xh = x + row * ld + (size_t)h * d;
        const float a = to_f(xh[j]), bb = to_f(xh[j + half]);
        xh[j] = from_f<T>(a * cs - bb * sn);
        xh[j + half] = from_f<T>(bb * cs + a * sn);
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

} // namespace

extern "C" cudaError_t cu_embed(float *x, const void *wte, const void *wpe, enum cu_dtype t,
                                const uint32_t *tokens, const uint32_t *pos, uint32_t n,
                                uint32_t c, cudaStream_t s)
{
    if (n == 0 || c == 0)
        return cudaSuccess;
    const unsigned g = blocks_for((size_t)n * c, 256);
    if (t == CU_BF16)
        embed_kernel<bf16><<<g, 256, 0, s>>>(x, (const bf16 *)wte, (const bf16 *)wpe, tokens, pos, n, c);
    else
        embed_kernel<float><<<g, 256, 0, s>>>(x, (const float *)wte, (const float *)wpe, tokens, pos, n, c);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_norm(void *y, enum cu_dtype t, const float *x, const float *w,
                               const float *b, uint32_t n, uint32_t c, float eps,
                               enum cu_norm_kind kind, cudaStream_t s)
{
    if (n == 0)
        return cudaSuccess;
    const unsigned warps = 4, g = (n + warps - 1) / warps;
    const float *bias = kind == CU_NORM_RMS ? NULL : b;
    /* rows up to 1024 values (GPT-2 base 768, Qwen2.5-0.5B 896) from registers, wider ones in
     * three passes (the later two from L1) */
    if (c <= 256) {
        if (t == CU_BF16)
            norm_kernel_regs<bf16, 8><<<g, warps * 32, 0, s>>>((bf16 *)y, x, w, bias, n, c, eps, (int)kind);
        else
            norm_kernel_regs<float, 8><<<g, warps * 32, 0, s>>>((float *)y, x, w, bias, n, c, eps, (int)kind);
    } else if (c <= 1024) {
        if (t == CU_BF16)
            norm_kernel_regs<bf16, 32><<<g, warps * 32, 0, s>>>((bf16 *)y, x, w, bias, n, c, eps, (int)kind);
        else
            norm_kernel_regs<float, 32><<<g, warps * 32, 0, s>>>((float *)y, x, w, bias, n, c, eps, (int)kind);
    } else if (t == CU_BF16) {
        norm_kernel<bf16><<<g, warps * 32, 0, s>>>((bf16 *)y, x, w, bias, n, c, eps, (int)kind);
    } else {
        norm_kernel<float><<<g, warps * 32, 0, s>>>((float *)y, x, w, bias, n, c, eps, (int)kind);
    }
    return cudaGetLastError();
}

extern "C" cudaError_t cu_gelu(void *x, enum cu_dtype t, size_t count, bool erf, cudaStream_t s)
{
    if (count == 0)
        return cudaSuccess;
    const unsigned g = blocks_for(count, 256);
    if (t == CU_BF16)
        gelu_kernel<bf16><<<g, 256, 0, s>>>((bf16 *)x, count, erf);
    else
        gelu_kernel<float><<<g, 256, 0, s>>>((float *)x, count, erf);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_swiglu(void *gate_up, enum cu_dtype t, uint32_t n, uint32_t f,
                                 cudaStream_t s)
{
    if (n == 0 || f == 0)
        return cudaSuccess;
    const unsigned g = blocks_for((size_t)n * f, 256);
    if (t == CU_BF16)
        swiglu_kernel<bf16><<<g, 256, 0, s>>>((bf16 *)gate_up, n, f);
    else
        swiglu_kernel<float><<<g, 256, 0, s>>>((float *)gate_up, n, f);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_rope(void *x, enum cu_dtype t, uint32_t n, uint32_t ld, uint32_t heads,
                               uint32_t d, const uint32_t *pos, const float *cos_t,
                               const float *sin_t, cudaStream_t s)
{
    if (n == 0 || heads == 0 || d < 2)
        return cudaSuccess;
    const unsigned g = blocks_for((size_t)n * heads * (d / 2), 256);
    if (t == CU_BF16)
        rope_kernel<bf16><<<g, 256, 0, s>>>((bf16 *)x, n, ld, heads, d, pos, cos_t, sin_t);
    else
        rope_kernel<float><<<g, 256, 0, s>>>((float *)x, n, ld, heads, d, pos, cos_t, sin_t);
    return cudaGetLastError();
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
