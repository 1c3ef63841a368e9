/* tune.c — timing interchangeable launches on the operands they are about to run on: the
 * median of a few timed calls after an untimed one, on the caller's stream. cuBLASLt's algorithm
 * for a GEMM (gemm.c) and the engine's own kernel choices (engine.c) are both made from it. */
#include "model/cuda/cuda_internal.h"

#define TIMED_CALLS 3

float cu_time_median(cudaEvent_t ev[2], cudaStream_t s, bool (*run)(void *ctx), void *ctx)
{
    float ms[TIMED_CALLS];
    for (int r = -1; r < TIMED_CALLS; r++) {
        /* the untimed call takes what a first call costs once (plans, caches, clocks) */
        if (r >= 0 && cudaEventRecord(ev[0], s) != cudaSuccess)
            return -1.0f;
        if (!run(ctx))
            return -1.0f;
        if (r >= 0 && (cudaEventRecord(ev[1], s) != cudaSuccess || cudaEventSynchronize(ev[1]) != cudaSuccess ||
                       cudaEventElapsedTime(&ms[r], ev[0], ev[1]) != cudaSuccess))
            return -1.0f;
    }
    for (int i = 1; i < TIMED_CALLS; i++) /* insertion sort of three */
        for (int j = i; j > 0 && ms[j] < ms[j - 1]; j--) {
            const float t = ms[j];
            ms[j] = ms[j - 1];
            ms[j - 1] = t;
        }
    return ms[TIMED_CALLS / 2];
}
