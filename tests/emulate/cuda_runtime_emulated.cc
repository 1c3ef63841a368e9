/* cuda_runtime_emulated.cc — the CUDA runtime calls the CUDA unit tests (tests/unit/test_cuda_*)
 * and the kernel files' launchers make, for their emulated builds (tests/CMakeLists.txt): one
 * compute capability 9.0 device whose memory is the host's, every call synchronous, launches run
 * by cuda_emulate.h (force-included here too). cuBLASLt has no emulation: cu_gemm_create says so
 * (the tests of it are skipped by name). */
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

/* a Hopper (compute capability 9.0) with few multiprocessors, so that a persistent grid's blocks
 * each take several tiles */
cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device)
{
    if (device != 0)
        return cudaErrorInvalidDevice;
    switch (attr) {
    case cudaDevAttrComputeCapabilityMajor:
        *value = 9;
        return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
        *value = 0;
        return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
        *value = EMU_MULTIPROCESSORS;
        return cudaSuccess;
    default:
        return cudaErrorInvalidValue;
    }
}

/* the driver's cuTensorMapEncodeTiled, as gemm_swiglu.cu looks it up */
cudaError_t cudaGetDriverEntryPointByVersion(const char *symbol, void **fn, unsigned int, unsigned long long,
                                             cudaDriverEntryPointQueryResult *status)
{
    const bool known = strcmp(symbol, "cuTensorMapEncodeTiled") == 0;
    *fn = known ? (void *)emu_tensor_map_encode : NULL;
    if (status)
        *status = known ? cudaDriverEntryPointSuccess : cudaDriverEntryPointSymbolNotFound;
    return cudaSuccess;
}

} // extern "C"
