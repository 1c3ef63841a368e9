/* flowtable_bench.c — the decode + flow-table stage alone: every frame of a capture is first read
 * into memory, then fed through ft_assembler (decode, key, lookup or create, counters, session
 * buffer, end of sessions) and timed, so file I/O and output do not count. This is the figure
 * the ≥ 3 M packets/s per core target speaks of; bench/sessions_bench.py measures whole commands.
 *
 * usage: netlm_flowtable_bench CAPTURE [WORKERS] [PACKETS_PER_SESSION] [REPEAT]
 * prints one JSON object. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capture/capture.h"
#include "flowtable/flowtable.h"

struct frames {
    struct cap_frame *v;
    uint8_t *bytes;
    size_t n, cap, used, bytes_cap;
};

static void on_session(const struct ft_session *s, int worker, void *user)
{
    (void)s;
    (void)worker;
    __atomic_add_fetch((uint64_t *)user, 1, __ATOMIC_RELAXED);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s CAPTURE [WORKERS] [PACKETS_PER_SESSION] [REPEAT]\n", argv[0]);
        return 2;
    }
    int workers = argc > 2 ? atoi(argv[2]) : 1;
    int k = argc > 3 ? atoi(argv[3]) : 0;
    int repeat = argc > 4 ? atoi(argv[4]) : 3;
    char err[512];
    struct cap_source *src = cap_open_file(argv[1], err, sizeof err);
    if (!src) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    struct frames f = {0};
    struct cap_frame burst[256];
    int n;
    /* Offsets first, pointers after the last realloc. */
    size_t *offsets = NULL;
    while ((n = cap_next_burst(src, burst, 256)) > 0) {
        for (int i = 0; i < n; i++) {
            if (f.n == f.cap) {
                f.cap = f.cap ? 2 * f.cap : 1 << 20;
                f.v = realloc(f.v, f.cap * sizeof *f.v);
                offsets = realloc(offsets, f.cap * sizeof *offsets);
            }
            if (f.used + burst[i].caplen > f.bytes_cap) {
                f.bytes_cap = f.bytes_cap ? 2 * f.bytes_cap : 1 << 26;
                f.bytes = realloc(f.bytes, f.bytes_cap);
            }
            if (!f.v || !offsets || !f.bytes) {
                fprintf(stderr, "out of memory\n");
                return 1;
            }
            memcpy(f.bytes + f.used, burst[i].data, burst[i].caplen);
            f.v[f.n] = burst[i];
            offsets[f.n] = f.used;
            f.used += burst[i].caplen;
            f.n++;
        }
    }
    cap_close(src);
    for (size_t i = 0; i < f.n; i++)
        f.v[i].data = f.bytes + offsets[i];

    double best = 1e30;
    uint64_t sessions = 0;
    for (int r = 0; r < repeat; r++) {
        struct ft_config cfg;
        ft_config_defaults(&cfg);
        cfg.workers = workers;
        cfg.packets_per_session = (uint32_t)k;
        uint64_t count = 0;
        struct ft_assembler *as = ft_assembler_create(&cfg, on_session, &count, err, sizeof err);
        if (!as) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        double t0 = now();
        for (size_t i = 0; i < f.n; i += 64)
            ft_assembler_feed(as, f.v + i, (int)(f.n - i < 64 ? f.n - i : 64));
        ft_assembler_finish_input(as);
        double t = now() - t0;
        ft_assembler_destroy(as);
        if (t < best)
            best = t;
        sessions = count;
    }
    printf("{\"frames\":%zu,\"sessions\":%llu,\"workers\":%d,\"packets_per_session\":%d,\"seconds\":%.4f,"
           "\"packets_per_s\":%.0f,\"packets_per_s_per_worker\":%.0f}\n",
           f.n, (unsigned long long)sessions, workers, k, best, (double)f.n / best,
           (double)f.n / best / workers);
    free(f.v);
    free(f.bytes);
    free(offsets);
    return 0;
}
