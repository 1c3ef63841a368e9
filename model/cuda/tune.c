/* tune.c — timing interchangeable launches on the operands they are about to run on: the
 * median of a few timed calls after an untimed one, on the caller's stream. cuBLASLt's algorithm
 * for a GEMM (gemm.c) and the engine's own kernel choices (engine.c) are both made from it. */
#include <time.h>

#include "model/cuda/cuda_internal.h"

#define TIMED_CALLS 3
#define HANG_SECONDS 20 /* a call that has not finished by then never will (a deadlocked kernel) */

/* cudaEventSynchronize(ev), but cudaErrorLaunchTimeout once HANG_SECONDS have passed: a candidate
 * that deadlocks makes the first pass fail with an error rather than hang the caller. */
static cudaError_t wait_event(cudaEvent_t ev)
{
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        const cudaError_t e = cudaEventQuery(ev);
        if (e != cudaErrorNotReady)
            return e;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec > HANG_SECONDS)
            return cudaErrorLaunchTimeout;
        const struct timespec pause = {0, 20000};
        nanosleep(&pause, NULL);
    }
}

cudaError_t cu_time_median(cudaEvent_t ev[2], cudaStream_t s, bool (*run)(void *ctx), void *ctx, float *median_ms)
{
    float ms[TIMED_CALLS];
    for (int r = -1; r < TIMED_CALLS; r++) {
        /* the untimed call takes what a first call costs once (plans, caches, clocks) */
        cudaError_t e = r >= 0 ? cudaEventRecord(ev[0], s) : cudaSuccess;
        if (e != cudaSuccess)
            return e;
        if (!run(ctx))
            return cudaErrorInvalidValue;
        if (r >= 0 && ((e = cudaEventRecord(ev[1], s)) != cudaSuccess || (e = wait_event(ev[1])) != cudaSuccess ||
                       (e = cudaEventElapsedTime(&ms[r], ev[0], ev[1])) != cudaSuccess))
            return e;
    }
    for (int i = 1; i < TIMED_CALLS; i++) /* insertion sort of three */
        for (int j = i; j > 0 && ms[j] < ms[j - 1]; j--) {
            const float t = ms[j];
            ms[j] = ms[j - 1];
            ms[j - 1] = t;
        }
    *median_ms = ms[TIMED_CALLS / 2];
    return cudaSuccess;
}
