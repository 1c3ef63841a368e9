/* cuda_runtime_emulated.cc — the CUDA runtime calls the CUDA unit tests (tests/unit/test_cuda_*)
 * make, for their emulated builds (tests/CMakeLists.txt): one device whose memory is the host's,
 * every call synchronous, launches run by cuda_emulate.h (force-included here too). cuBLASLt and
 * the Hopper-only SwiGLU GEMM have no emulation: cu_gemm_create says so (the tests of it are
 * skipped by name) and cu_gemm_swiglu_supported is false, as on a GPU other than compute
 * capability 9.0. */
#include "model/cuda/cuda_internal.h"

extern "C" {

cudaError_t cudaGetDeviceCount(int *count)
{
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device)
{
    *device = 0;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

/* a launch's error (cuda_emulate.h's emu_run sets it), once */
cudaError_t cudaGetLastError(void)
{
    const cudaError_t e = emu_error;
    emu_error = cudaSuccess;
    return e;
}

/* 256-byte aligned, as cudaMalloc's; ASan sees each allocation as one block */
cudaError_t cudaMalloc(void **p, size_t bytes)
{
    *p = aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFree(void *p)
{
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind)
{
    memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemset(void *p, int value, size_t bytes)
{
    memset(p, value, bytes);
    return cudaSuccess;
}

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess:
        return "no error";
    case cudaErrorInvalidValue:
        return "invalid argument";
    case cudaErrorMemoryAllocation:
        return "out of memory";
    case cudaErrorInvalidConfiguration:
        return "invalid configuration argument";
    case cudaErrorNotSupported:
        return "operation not supported";
    default:
        return "error (emulated runtime)";
    }
}

struct cu_gemm *cu_gemm_create(size_t, char *err, size_t errlen)
{
    snprintf(err, errlen, "cuBLASLt has no host emulation");
    return NULL;
}
void cu_gemm_free(struct cu_gemm *) {}
void cu_gemm_set_epilogues(struct cu_gemm *, bool) {}
bool cu_gemm_run(struct cu_gemm *, cudaStream_t, enum cu_dtype, enum cu_dtype, void *, size_t, const void *, size_t,
                 const void *, const void *, size_t, size_t, size_t, bool, bool, char *err, size_t errlen)
{
    snprintf(err, errlen, "cuBLASLt has no host emulation");
    return false;
}
bool cu_gemm_swiglu_supported(int, uint32_t, uint32_t) { return false; }
cudaError_t cu_gemm_swiglu(void *, uint32_t, const void *, uint32_t, const void *, uint32_t, uint32_t, uint32_t,
                           cudaStream_t)
{
    return cudaErrorNotSupported;
}
const char *cu_gemm_swiglu_variant(unsigned) { return NULL; }
bool cu_gemm_swiglu_select(const char *) { return false; }

} // extern "C"
