/* profile.c — the step profile of the CUDA engine and trainer (NETLM_CUDA_PROFILE=1): an event
 * after every step of a pass, the time between consecutive events summed per kind of step, one
 * JSON line on stderr when the owner is freed (bench/gpu_check.sh reads it). The pass starts
 * behind a spin kernel, so the host has enqueued every step before the first runs and the
 * events time the GPU's work rather than the host's launches. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/cuda/cuda_internal.h"

struct cu_profile *cu_profile_create(void)
{
    const char *env = getenv("NETLM_CUDA_PROFILE");
    if (!env || env[0] != '1')
        return NULL;
    struct cu_profile *p = calloc(1, sizeof(*p));
    for (unsigned i = 0; p && i < CU_PROFILE_EVENTS; i++)
        if (cudaEventCreate(&p->ev[i]) != cudaSuccess) {
            cudaGetLastError();
            cu_profile_free(p);
            return NULL;
        }
    return p;
}

void cu_profile_start(struct cu_profile *p, cudaStream_t s)
{
    if (!p)
        return;
    cu_spin(10000000LL, s); /* ~5 ms at 2 GHz */
    p->marks = 0;
    cu_profile_mark(p, "start", s);
}

void cu_profile_mark(struct cu_profile *p, const char *step, cudaStream_t s)
{
    if (p && p->marks < CU_PROFILE_EVENTS && cudaEventRecord(p->ev[p->marks], s) == cudaSuccess)
        p->step[p->marks++] = step;
}

void cu_profile_collect(struct cu_profile *p, bool ends_call)
{
    if (!p)
        return;
    for (unsigned i = 1; p->warm && i < p->marks; i++) {
        float ms = 0.0f;
        if (cudaEventElapsedTime(&ms, p->ev[i - 1], p->ev[i]) != cudaSuccess)
            continue;
        unsigned k = 0;
        while (k < p->kinds && strcmp(p->names[k], p->step[i]))
            k++;
        if (k == p->kinds && p->kinds < CU_PROFILE_KINDS)
            p->names[p->kinds++] = p->step[i];
        if (k < p->kinds)
            p->ms[k] += ms;
    }
    if (p->marks > 1 && p->warm && ends_call)
        p->calls++;
    if (ends_call) /* the first call, with its plan creation between launches, is not counted */
        p->warm = true;
    p->marks = 0;
}

void cu_profile_free(struct cu_profile *p)
{
    if (!p)
        return;
    if (p->calls) {
        double total = 0.0;
        for (unsigned k = 0; k < p->kinds; k++)
            total += p->ms[k];
        fprintf(stderr, "{\"cuda_profile\":{\"calls\":%u,\"ms_per_call\":%.4f,\"steps\":{", p->calls,
                total / p->calls);
        for (unsigned k = 0; k < p->kinds; k++)
            fprintf(stderr, "%s\"%s\":%.4f", k ? "," : "", p->names[k], p->ms[k] / p->calls);
        fprintf(stderr, "}}}\n");
    }
    for (unsigned i = 0; i < CU_PROFILE_EVENTS; i++)
        if (p->ev[i])
            cudaEventDestroy(p->ev[i]);
    free(p);
}
