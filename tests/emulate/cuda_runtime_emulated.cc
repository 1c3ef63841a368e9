/* cuda_runtime_emulated.cc — the CUDA runtime calls the CUDA unit tests (tests/unit/test_cuda_*),
 * the kernel files' launchers and the engine (model/cuda/engine.c, gemm.c, profile.c) make, for
 * their emulated builds (tests/CMakeLists.txt): one compute capability 9.0 device whose memory is
 * the host's, launches run by cuda_emulate.h (force-included here too), cuBLASLt by
 * cublaslt_emulated.cc. Every stream is one synchronous queue: an operation runs when it is
 * issued, so events and stream waits order nothing that is not already in order, and timings are
 * a constant (with NETLM_CUDA_EMULATE_TIMING=host: the host's time between two events, the
 * emulated work between them included; =launches: the kernel launches between them, one ms
 * each, an order the tests can predict; =hang: events polled never complete, as behind a kernel
 * that deadlocks). Graph capture records the operations issued meanwhile (emu_submit) and a graph
 * launch runs them again, in order, as a real graph replays its nodes. */
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "model/cuda/cuda_internal.h"

struct CUstream_st {
    int unused;
};
struct CUevent_st {
    bool recorded;
    std::chrono::steady_clock::time_point at;
    unsigned launches; /* emu_launches then */
};
struct CUgraph_st {
    std::vector<std::function<void()>> ops;
};
struct CUgraphExec_st {
    std::vector<std::function<void()>> ops;
};

namespace {
cudaStream_t capturing_stream; /* the stream being captured, with emu_capture set */
}

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

/* the device memory in use, for cudaMemGetInfo: what cudaMalloc handed out and cudaFree did not
 * take back (pinned host memory is not device memory) */
static std::map<void *, size_t> &device_allocations()
{
    static std::map<void *, size_t> live;
    return live;
}
static size_t device_bytes_in_use;
static const size_t device_bytes_total = (size_t)16 << 30;

/* 256-byte aligned, as cudaMalloc's; ASan sees each allocation as one block */
static void *host_block(size_t bytes) { return aligned_alloc(256, (bytes + 255) / 256 * 256 + 256); }

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    if (bytes > device_bytes_total - device_bytes_in_use)
        return cudaErrorMemoryAllocation;
    *p = host_block(bytes);
    if (!*p)
        return cudaErrorMemoryAllocation;
    device_allocations()[*p] = bytes;
    device_bytes_in_use += bytes;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p)
{
    if (!p)
        return cudaSuccess;
    auto it = device_allocations().find(p);
    if (it == device_allocations().end())
        return cudaErrorInvalidValue;
    device_bytes_in_use -= it->second;
    device_allocations().erase(it);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total)
{
    *free_bytes = device_bytes_total - device_bytes_in_use;
    *total = device_bytes_total;
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

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int device)
{
    if (device != 0)
        return cudaErrorInvalidDevice;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "emulated Hopper (host memory)");
    p->totalGlobalMem = (size_t)16 << 30;
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = EMU_MULTIPROCESSORS;
    p->sharedMemPerBlockOptin = EMU_SMEM_BYTES;
    p->warpSize = 32;
    return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int *v)
{
    *v = CUDART_VERSION;
    return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *v)
{
    *v = 0; /* no driver */
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t bytes)
{
    *p = host_block(bytes);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFreeHost(void *p)
{
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind, cudaStream_t)
{
    emu_submit([=] { memmove(dst, src, bytes); });
    return cudaSuccess;
}

cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t height,
                              enum cudaMemcpyKind, cudaStream_t)
{
    if (width > dpitch || width > spitch)
        return cudaErrorInvalidPitchValue;
    emu_submit([=] {
        for (size_t r = 0; r < height; r++)
            memmove((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
    });
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t)
{
    emu_submit([=] { memset(p, value, bytes); });
    return cudaSuccess;
}

cudaError_t cudaMemset2DAsync(void *p, size_t pitch, int value, size_t width, size_t height, cudaStream_t)
{
    if (width > pitch)
        return cudaErrorInvalidPitchValue;
    emu_submit([=] {
        for (size_t r = 0; r < height; r++)
            memset((char *)p + r * pitch, value, width);
    });
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int)
{
    *s = new CUstream_st{};
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    delete s;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    return emu_capture && s == capturing_stream ? cudaErrorStreamCaptureUnsupported : cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned int) { return cudaSuccess; }

cudaError_t cudaEventCreate(cudaEvent_t *e)
{
    *e = new CUevent_st{};
    return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int) { return cudaEventCreate(e); }

cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    delete e;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t)
{
    e->recorded = true;
    emu_submit([=] {
        e->at = std::chrono::steady_clock::now();
        e->launches = emu_launches;
    });
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }

/* all issued work is done, unless the test plays a kernel that never finishes */
cudaError_t cudaEventQuery(cudaEvent_t)
{
    const char *timing = getenv("NETLM_CUDA_EMULATE_TIMING");
    return timing && strcmp(timing, "hang") == 0 ? cudaErrorNotReady : cudaSuccess;
}

/* nothing runs concurrently to time: every interval is the same, so timing picks the first
 * candidate, unless the test asks for the host's time */
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end)
{
    if (!start->recorded || !end->recorded)
        return cudaErrorInvalidResourceHandle;
    const char *timing = getenv("NETLM_CUDA_EMULATE_TIMING");
    if (timing && strcmp(timing, "host") == 0)
        *ms = std::chrono::duration<float, std::milli>(end->at - start->at).count();
    else if (timing && strcmp(timing, "launches") == 0)
        *ms = (float)(end->launches - start->launches);
    else
        *ms = 0.001f;
    return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode)
{
    if (emu_capture)
        return cudaErrorIllegalState;
    emu_capture = new std::vector<std::function<void()>>;
    capturing_stream = s;
    return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t s, enum cudaStreamCaptureStatus *status)
{
    *status = emu_capture && s == capturing_stream ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *graph)
{
    if (!emu_capture || s != capturing_stream)
        return cudaErrorIllegalState;
    *graph = new CUgraph_st{std::move(*emu_capture)};
    delete emu_capture;
    emu_capture = nullptr;
    capturing_stream = nullptr;
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long)
{
    *exec = new CUgraphExec_st{graph->ops};
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t)
{
    for (const auto &op : exec->ops)
        op();
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph)
{
    delete graph;
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec)
{
    delete exec;
    return cudaSuccess;
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
