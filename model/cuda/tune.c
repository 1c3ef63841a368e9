/* tune.c — timing interchangeable launches on the operands they are about to run on, on the
 * caller's stream: each once untimed, then all of them in rounds, the median of each one's rounds.
 * cuBLASLt's algorithm for a GEMM (gemm.c) and the engine's own kernel choices (engine.c) are
 * both made from it. */
#include <stdlib.h>
#include <time.h>

#include "model/cuda/cuda_internal.h"

/* a call that has not finished by then never will (a deadlocked kernel) */
#define HANG_SECONDS 20
#define MAX_CANDIDATES 64

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

static int compare_floats(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* The median of v[n] (n odd), v sorted in place. */
static float median(float *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, compare_floats);
    return v[n / 2];
}

cudaError_t cu_run_once(cudaEvent_t ev, cudaStream_t s, bool (*run)(void *ctx, int c), void *ctx, int c)
{
    if (!run(ctx, c))
        return cudaErrorInvalidValue;
    const cudaError_t e = cudaEventRecord(ev, s);
    return e != cudaSuccess ? e : wait_event(ev);
}

cudaError_t cu_time_rounds(cudaEvent_t *ev, cudaStream_t s, bool (*run)(void *ctx, int c), void *ctx, int n,
                           float *ms)
{
    int order[MAX_CANDIDATES], timed = 0;
    if (n > MAX_CANDIDATES)
        return cudaErrorInvalidValue;
    for (int c = 0; c < n; c++)
        if (ms[c] >= 0.0f)
            order[timed++] = c;
    float samples[MAX_CANDIDATES][CU_TIMED_ROUNDS];
    bool failed[MAX_CANDIDATES] = {false};
    for (int r = 0; r < CU_TIMED_ROUNDS && timed > 0; r++) {
        cudaError_t e = cudaEventRecord(ev[0], s);
        for (int i = 0; i < timed && e == cudaSuccess; i++) {
            const int c = order[(i + r) % timed];
            if (!failed[c] && !run(ctx, c))
                failed[c] = true;
            e = cudaEventRecord(ev[i + 1], s);
        }
        if (e == cudaSuccess)
            e = wait_event(ev[timed]);
        for (int i = 0; i < timed && e == cudaSuccess; i++)
            e = cudaEventElapsedTime(&samples[order[(i + r) % timed]][r], ev[i], ev[i + 1]);
        if (e != cudaSuccess)
            return e;
    }
    for (int i = 0; i < timed; i++)
        ms[order[i]] = failed[order[i]] ? -1.0f : median(samples[order[i]], CU_TIMED_ROUNDS);
    return cudaSuccess;
}
