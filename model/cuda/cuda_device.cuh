/* cuda_device.cuh — device helpers every kernel file of model/cuda/ uses: element conversions
 * between the storage types (fp32, bf16) and fp32 arithmetic, warp-wide reductions, the
 * vector accesses and (column blocks, rows) grids of the row-shaped kernels, and the dropout
 * hash of training. Private to model/cuda/; each .cu file includes it once. */
#ifndef NETLM_CUDA_DEVICE_CUH
#define NETLM_CUDA_DEVICE_CUH

#include <cuda_bf16.h>
#include <stddef.h>
#include <stdint.h>

#include "model/dropout_hash.h"

typedef __nv_bfloat16 bf16;

namespace {

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<bf16>(bf16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float v) { return __float2bfloat16_rn(v); }

/* 2^x in one MUFU.EX2, results below 2^-126 flushed to zero. exp2f is the same approximation
 * (2 ulp) but keeps denormal results, at three more instructions each; the softmax's
 * probabilities and the SiLU's e^-|g| that small vanish in their sums and bf16 results anyway.
 * (tests/emulate/cuda_emulate.h has the host's version.) */
#ifndef NETLM_CUDA_EMULATE
__device__ __forceinline__ float exp2_ftz(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
#endif

/* The row of this warp in a kernel of one warp per row (blocks of whole warps along x). */
__device__ __forceinline__ uint32_t warp_row() { return blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; }

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* ---- row-shaped kernels: vector accesses and their launch shape ---- */

/* The register type of one access of BYTES bytes. */
template <size_t BYTES> struct raw_vec;
template <> struct raw_vec<16> { typedef uint4 type; };
template <> struct raw_vec<8> { typedef uint2 type; };

template <typename T, uint32_t VW> __host__ __device__ constexpr bool is_vector_access()
{
    return VW * sizeof(T) == 16 || VW * sizeof(T) == 8;
}

/* VW consecutive elements of T as fp32: one 16- or 8-byte access when VW · sizeof(T) is 16 or 8
 * (8: the 4 bf16 that go with a float4 elsewhere in the kernel; the caller checks the
 * alignment), else VW scalar accesses. */
template <typename T, uint32_t VW> __device__ __forceinline__ void load_vec(float *v, const T *p)
{
    if constexpr (is_vector_access<T, VW>()) {
        typedef typename raw_vec<VW * sizeof(T)>::type raw_t;
        const raw_t raw = *reinterpret_cast<const raw_t *>(p);
        const T *e = reinterpret_cast<const T *>(&raw);
#pragma unroll
        for (uint32_t i = 0; i < VW; i++)
            v[i] = to_f(e[i]);
    } else {
#pragma unroll
        for (uint32_t i = 0; i < VW; i++)
            v[i] = to_f(p[i]);
    }
}

template <typename T, uint32_t VW> __device__ __forceinline__ void store_vec(T *p, const float *v)
{
    if constexpr (is_vector_access<T, VW>()) {
        typedef typename raw_vec<VW * sizeof(T)>::type raw_t;
        raw_t raw;
        T *e = reinterpret_cast<T *>(&raw);
#pragma unroll
        for (uint32_t i = 0; i < VW; i++)
            e[i] = from_f<T>(v[i]);
        *reinterpret_cast<raw_t *>(p) = raw;
    } else {
#pragma unroll
        for (uint32_t i = 0; i < VW; i++)
            p[i] = from_f<T>(v[i]);
    }
}

/* Elements per 16-byte vector of T, when rows of `width` elements starting at `base` (and at
 * multiples of `stride` elements from it) are all 16-byte aligned; else 1. */
template <typename T> inline bool rows_vectorizable(const void *base, size_t width, size_t stride)
{
    const size_t vw = 16 / sizeof(T);
    return (uintptr_t)base % 16 == 0 && width % vw == 0 && stride % vw == 0;
}

/* The (column blocks, rows) grid of a row-shaped kernel with `per_row` work items per row. */
inline void row_grid(dim3 *grid, unsigned *threads, size_t per_row, uint32_t rows)
{
    *threads = per_row >= 256 ? 256 : (unsigned)((per_row + 31) / 32 * 32);
    const size_t xb = (per_row + *threads - 1) / *threads;
    grid->x = (unsigned)(xb < 1 ? 1 : xb);
    grid->y = rows < 65535 ? rows : 65535;
    grid->z = 1;
}

/* ---- dropout: model/dropout_hash.h's functions, the CPU's, so a mask drawn here is the CPU's
 * bit for bit (test_cuda_train's mask test compares them) ---- */

/* train/grad.c's drop_stream: place `place` (its enum drop_place) of layer `layer`, head `head`,
 * of the sequence whose stream is seq_key (op_dropout_stream(seed, sample)). */
__device__ __forceinline__ uint64_t dev_drop_key(uint64_t seq_key, uint32_t layer, uint32_t place,
                                                 uint32_t head)
{
    return op_dropout_stream(op_dropout_stream(seq_key, (uint64_t)layer * 4 + place), head);
}

/* 0 or scale for element `index` of stream `key`. */
__device__ __forceinline__ float dev_dropout_factor(uint64_t key, uint32_t threshold, float scale,
                                                    uint64_t index)
{
    return op_dropout_hash(key, index) >= threshold ? scale : 0.0f;
}

} // namespace

#endif
