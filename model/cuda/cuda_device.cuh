/* cuda_device.cuh — device helpers every kernel file of model/cuda/ uses: element conversions
 * between the storage types (fp32, bf16) and fp32 arithmetic, and warp-wide reductions. Private
 * to model/cuda/; each .cu file includes it once. */
#ifndef NETLM_CUDA_DEVICE_CUH
#define NETLM_CUDA_DEVICE_CUH

#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;

namespace {

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<bf16>(bf16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float v) { return __float2bfloat16_rn(v); }

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

} // namespace

#endif
