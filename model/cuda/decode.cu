/* decode.cu — the kernels only generation needs (model_cuda_generate in engine.c): storing each
 * new token's keys and values in the device KV cache, attention of one new query per row over
 * that row's cached keys, and the greedy token choice (a row's argmax), so a decode step sends
 * back one id per row instead of a row of logits.
 *
 * The cache of one layer is [max_batch][kv_tokens][kv_heads · d] of the engine's type T: the
 * k (or v) part of a qkv row as the GEMM wrote it (after RoPE), one cache row per (slot,
 * position). Kernels address it by the per-row index kvrow = slot · kv_tokens + position, which
 * the host computes; CU_KV_NONE marks a padding row of a graph bucket (nothing stored, zeros
 * out). Prefill attention still runs on the qkv rows (attention.cu): the cache is read only by
 * the decode steps. */
#include <cuda_bf16.h>
#include <math.h>

#include "model/cuda/cuda_device.cuh"
#include "model/cuda/cuda_internal.h"

namespace {

template <typename T>
__global__ void kv_store_kernel(T *kc, T *vc, const T *qkv, uint32_t ldqkv, uint32_t koff,
                                uint32_t width, const uint32_t *kvrow, uint32_t n)
{
    for (uint32_t row = blockIdx.y; row < n; row += gridDim.y) {
        const uint32_t dst = kvrow[row];
        if (dst == CU_KV_NONE)
            continue;
        const T *k = qkv + (size_t)row * ldqkv + koff, *v = k + width;
        T *kd = kc + (size_t)dst * width, *vd = vc + (size_t)dst * width;
        for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < width; i += gridDim.x * blockDim.x) {
            kd[i] = k[i];
            vd[i] = v[i];
        }
    }
}

/* One block per (row, query head): the row's query in shared memory, its cached keys and values
 * walked in tiles of DEC_BK staged as fp32 (coalesced loads), online softmax over the tiles. Warp
 * 0 scores a tile (lane j: key k0 + j, a dot product over the query in shared memory; the odd
 * row stride of the key tile keeps the 32 lanes in 32 banks), then every thread rescales and
 * accumulates its own output dimension. All threads keep the same running max and sum: they
 * compute them from the same shared values in the same order. */
constexpr uint32_t DEC_BK = 32, DEC_THREADS = 128, DEC_DMAX = 128;

template <typename T>
__global__ void __launch_bounds__(DEC_THREADS)
decode_attn_kernel(T *out, uint32_t ldo, const T *q, uint32_t ldq, const T *kc, const T *vc,
                   const uint32_t *kvrow, const uint32_t *pos, uint32_t heads, uint32_t kv_heads,
                   uint32_t d, float scale)
{
    __shared__ float qs[DEC_DMAX];
    __shared__ float ks[DEC_BK][DEC_DMAX + 1];
    __shared__ float vs[DEC_BK][DEC_DMAX];
    __shared__ float ps[DEC_BK];
    __shared__ float tile_max_sum[2];
    const uint32_t row = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
    T *o = out + (size_t)row * ldo + (size_t)h * d;
    const uint32_t at = kvrow[row];
    if (at == CU_KV_NONE) {
        for (uint32_t e = tid; e < d; e += blockDim.x)
            o[e] = from_f<T>(0.0f);
        return;
    }
    const uint32_t p = pos[row], len = p + 1;
    const uint32_t kvh = h / (heads / kv_heads), ldkv = kv_heads * d;
    /* the row's first cache row: its slot's position 0 */
    const size_t first = (size_t)(at - p);
    const T *kb = kc + first * ldkv + (size_t)kvh * d, *vb = vc + first * ldkv + (size_t)kvh * d;
    for (uint32_t e = tid; e < d; e += blockDim.x)
        qs[e] = to_f(q[(size_t)row * ldq + (size_t)h * d + e]);
    float m = -INFINITY, l = 0.0f, acc = 0.0f; /* acc: output dimension tid (tid < d) */
    for (uint32_t k0 = 0; k0 < len; k0 += DEC_BK) {
        const uint32_t nk = len - k0 < DEC_BK ? len - k0 : DEC_BK;
        __syncthreads(); /* the last tile's readers are done (and qs is written) */
        for (uint32_t i = tid; i < nk * d; i += blockDim.x) {
            const uint32_t r = i / d, e = i % d;
            ks[r][e] = to_f(kb[(size_t)(k0 + r) * ldkv + e]);
            vs[r][e] = to_f(vb[(size_t)(k0 + r) * ldkv + e]);
        }
        __syncthreads();
        if (tid < 32) {
            float sc = -INFINITY;
            if (tid < nk) {
                float dot = 0.0f;
                for (uint32_t e = 0; e < d; e++)
                    dot += qs[e] * ks[tid][e];
                sc = dot * scale;
            }
            const float m_new = fmaxf(m, warp_max(sc));
            const float pj = tid < nk ? expf(sc - m_new) : 0.0f;
            ps[tid] = pj;
            const float sum = warp_sum(pj);
            if (tid == 0) {
                tile_max_sum[0] = m_new;
                tile_max_sum[1] = sum;
            }
        }
        __syncthreads();
        const float m_new = tile_max_sum[0], alpha = expf(m - m_new); /* 0 on the first tile */
        l = l * alpha + tile_max_sum[1];
        m = m_new;
        if (tid < d) {
            float a = acc * alpha;
            for (uint32_t j = 0; j < nk; j++)
                a += ps[j] * vs[j][tid];
            acc = a;
        }
    }
    if (tid < d)
        o[tid] = from_f<T>(acc / l);
}

/* One block per row: each thread the best of a strided share, then the block's best. Better
 * means a larger value, or the same value at a lower index (the CPU's first maximum); NaN is
 * never better than anything. */
constexpr uint32_t ARGMAX_THREADS = 256;

__device__ __forceinline__ void take_better(float &bv, uint32_t &bi, float v, uint32_t i)
{
    if (v > bv || (v == bv && i < bi)) {
        bv = v;
        bi = i;
    }
}

__global__ void __launch_bounds__(ARGMAX_THREADS)
argmax_kernel(uint32_t *out, const float *x, uint32_t n, size_t ld)
{
    __shared__ float wv[ARGMAX_THREADS / 32];
    __shared__ uint32_t wi[ARGMAX_THREADS / 32];
    const float *r = x + (size_t)blockIdx.x * ld;
    float bv = -INFINITY;
    uint32_t bi = UINT32_MAX;
    for (uint32_t j = threadIdx.x; j < n; j += blockDim.x)
        take_better(bv, bi, r[j], j);
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const uint32_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
        take_better(bv, bi, ov, oi);
    }
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        wv[warp] = bv;
        wi[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (uint32_t w = 1; w < blockDim.x / 32; w++)
            take_better(bv, bi, wv[w], wi[w]);
        out[blockIdx.x] = bi == UINT32_MAX ? 0 : bi; /* a row of NaN: token 0, as the CPU */
    }
}

} // namespace

extern "C" cudaError_t cu_kv_store(void *kc, void *vc, const void *qkv, uint32_t ldqkv,
                                   uint32_t koff, uint32_t width, const uint32_t *kvrow,
                                   uint32_t n, enum cu_dtype t, cudaStream_t s)
{
    if (n == 0 || width == 0)
        return cudaSuccess;
    dim3 g;
    unsigned threads;
    row_grid(&g, &threads, width, n);
    if (t == CU_BF16)
        kv_store_kernel<bf16><<<g, threads, 0, s>>>((bf16 *)kc, (bf16 *)vc, (const bf16 *)qkv, ldqkv,
                                                    koff, width, kvrow, n);
    else
        kv_store_kernel<float><<<g, threads, 0, s>>>((float *)kc, (float *)vc, (const float *)qkv,
                                                     ldqkv, koff, width, kvrow, n);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_decode_attention(void *out, uint32_t ldo, const void *q, uint32_t ldq,
                                           const void *kc, const void *vc, const uint32_t *kvrow,
                                           const uint32_t *pos, uint32_t n, uint32_t heads,
                                           uint32_t kv_heads, uint32_t d, float scale,
                                           enum cu_dtype t, cudaStream_t s)
{
    if (n == 0 || heads == 0)
        return cudaSuccess;
    if (d == 0 || d > DEC_DMAX || kv_heads == 0 || heads % kv_heads != 0 || heads > 65535)
        return cudaErrorInvalidValue;
    const dim3 g(n, heads);
    if (t == CU_BF16)
        decode_attn_kernel<bf16><<<g, DEC_THREADS, 0, s>>>((bf16 *)out, ldo, (const bf16 *)q, ldq,
                                                           (const bf16 *)kc, (const bf16 *)vc, kvrow,
                                                           pos, heads, kv_heads, d, scale);
    else
        decode_attn_kernel<float><<<g, DEC_THREADS, 0, s>>>((float *)out, ldo, (const float *)q, ldq,
                                                            (const float *)kc, (const float *)vc,
                                                            kvrow, pos, heads, kv_heads, d, scale);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_argmax_rows(uint32_t *out, const float *x, uint32_t rows, uint32_t n,
                                      size_t ld, cudaStream_t s)
{
    if (rows == 0)
        return cudaSuccess;
    argmax_kernel<<<rows, ARGMAX_THREADS, 0, s>>>(out, x, n, ld);
    return cudaGetLastError();
}
