/* hopper.cuh — the warpgroup matrix products of sm_90a (wgmma) that more than one kernel file
 * issues: gemm_swiglu.cu (both operands from shared memory) and attention_wgmma.cu (A from
 * registers), with the shared-memory descriptor both build, and the device check both make.
 * Only files compiled for sm_90a include it. Under NETLM_CUDA_EMULATE
 * (tests/emulate/cuda_emulate.h) a host emulation of each instruction stands in; the
 * descriptor's encoding is the kernels' own either way. Private to model/cuda/. */
#ifndef NETLM_HOPPER_CUH
#define NETLM_HOPPER_CUH

#include <stdint.h>

#include <type_traits>

#include <cuda_runtime_api.h>

namespace {

#ifndef NETLM_CUDA_EMULATE
__device__ __forceinline__ uint32_t smem_addr(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* Orders this thread's register accesses before the wgmma that follow (accumulators written by
 * other instructions, A fragments built in registers). */
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
/* Waits until at most PENDING of the warpgroup's committed groups are still running. */
template <int PENDING> __device__ __forceinline__ void wgmma_wait()
{
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(PENDING) : "memory");
}

/* Makes this thread's ordinary writes to shared memory (st.shared, cp.async) visible to the
 * wgmma that read it later, which go through the async proxy. */
__device__ __forceinline__ void fence_view_async_shared()
{
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

/* D[64 × 64] (+)= A[64 × 16] · B[64 × 16]ᵀ: A from registers, each warp's 16 rows in the A
 * fragment of mma.m16n8k16 (a[0] = row g, columns 2t, 2t + 1; a[1] row g + 8; a[2], a[3] the
 * same 8 columns on), B from shared memory through its descriptor; D's 32 registers per thread
 * laid out as 8 C fragments of mma.m16n8k16 side by side (d[i] is columns 8i..8i+7). */
__device__ __forceinline__ void wgmma_m64n64k16_rs(float (&d)[8][4], const uint32_t (&a)[4], uint64_t desc_b,
                                                   uint32_t accumulate)
{
    asm volatile("{\n"
                 ".reg .pred acc;\n"
                 "setp.ne.b32 acc, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                 "{%32, %33, %34, %35}, %36, acc, 1, 1, 0;\n"
                 "}\n"
                 : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]),
                   "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]),
                   "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]),
                   "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
                   "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]),
                   "+f"(d[7][2]), "+f"(d[7][3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
}

/* D[64 × 64] = A[64 × 16] · B[64 × 16]ᵀ, as wgmma_m64n64k16_rs without accumulating: D's
 * registers are outputs only, so their old values are dead before it (with "+f" the register
 * allocator keeps them live up to the product, which its scale-d of 0 never reads). */
__device__ __forceinline__ void wgmma_m64n64k16_rs_overwrite(float (&d)[8][4], const uint32_t (&a)[4],
                                                             uint64_t desc_b)
{
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                 "{%32, %33, %34, %35}, %36, 0, 1, 1, 0;\n"
                 : "=f"(d[0][0]), "=f"(d[0][1]), "=f"(d[0][2]), "=f"(d[0][3]), "=f"(d[1][0]), "=f"(d[1][1]),
                   "=f"(d[1][2]), "=f"(d[1][3]), "=f"(d[2][0]), "=f"(d[2][1]), "=f"(d[2][2]), "=f"(d[2][3]),
                   "=f"(d[3][0]), "=f"(d[3][1]), "=f"(d[3][2]), "=f"(d[3][3]), "=f"(d[4][0]), "=f"(d[4][1]),
                   "=f"(d[4][2]), "=f"(d[4][3]), "=f"(d[5][0]), "=f"(d[5][1]), "=f"(d[5][2]), "=f"(d[5][3]),
                   "=f"(d[6][0]), "=f"(d[6][1]), "=f"(d[6][2]), "=f"(d[6][3]), "=f"(d[7][0]), "=f"(d[7][1]),
                   "=f"(d[7][2]), "=f"(d[7][3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}
#endif /* NETLM_CUDA_EMULATE */

/* Pins registers that a wgmma reads or writes (accumulators, A fragments) to this point of the
 * program. wgmma_fence and wgmma_wait order instructions, not the register arithmetic around
 * them: without a pin the compiler may move a rescale of the accumulators below the fence that
 * must follow it, or a read of the products above the wait that must precede it. Pinned before
 * wgmma_fence, the registers are written before it; pinned after wgmma_wait, read after it. No
 * instruction is emitted. For a flat array of registers, or one of fragments of 4. */
template <typename T, uint32_t N> __device__ __forceinline__ void wgmma_pin(T (&r)[N])
{
    static_assert(std::is_same<T, float>::value || std::is_same<T, uint32_t>::value, "32-bit registers");
#ifndef NETLM_CUDA_EMULATE
#pragma unroll
    for (uint32_t i = 0; i < N; i++) {
        if constexpr (std::is_same<T, float>::value)
            asm volatile("" : "+f"(r[i])::"memory");
        else
            asm volatile("" : "+r"(r[i])::"memory");
    }
#else
    (void)r; /* the emulated products keep r's address: no access to it moves across a call */
#endif
}
template <typename T, uint32_t N> __device__ __forceinline__ void wgmma_pin(T (&r)[N][4])
{
    wgmma_pin(reinterpret_cast<T(&)[N * 4]>(r));
}

/* Whether device runs sm_90a code: compute capability 9.0 exactly (the "a" features exist on no
 * other). */
inline bool device_runs_sm90a(int device)
{
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return major == 9 && minor == 0;
}

/* A shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row groups 1024 bytes apart
 * (the layout the tensor map's SWIZZLE_128B boxes have: row r's 16-byte chunk c at r·128 +
 * (c XOR r % 8)·16 from a 1024-byte aligned start). Adding 2 moves it 32 bytes: 16 bf16 further
 * along K. */
__device__ __forceinline__ uint64_t smem_descriptor(const void *p)
{
    const uint64_t addr = smem_addr(p);
    return ((addr & 0x3FFFF) >> 4) | (1ull << 16) | ((1024ull >> 4) << 32) | (1ull << 62);
}

} // namespace

#endif
