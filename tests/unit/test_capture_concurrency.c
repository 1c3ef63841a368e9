/* test_capture_concurrency.c — capture sources and the decoder used from several threads at once,
 * each thread with its own sources (the sensor's capture workers and a multi-file replay). Run
 * under ThreadSanitizer in CI ("concurrency" in the name): nothing in capture/ may share state
 * between sources. */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "capture/capture.h"

#define PCAPS NETLM_DATA_DIR "/pcaps/"

static const char *const files[] = {
    PCAPS "ndpi-1kxun.pcap",          PCAPS "ndpi-sites.pcapng",
    PCAPS "tcpdump-geneve.pcap",      PCAPS "ndpi-teredo.pcap",
    PCAPS "ndpi-dns_fragmented.pcap", PCAPS "tcpdump-various_gre.pcap",
    PCAPS "tcpdump-pptp.pcap",        PCAPS "ndpi-6in4tunnel.pcap",
};
enum { NFILES = sizeof files / sizeof files[0], THREADS = 6, ROUNDS = 3 };

/* What one pass over a file yields: frame count, bytes, per-reason counts and a hash of every
 * decoded field, so two passes can be compared exactly. */
struct digest {
    uint64_t frames, bytes, hash;
    struct cap_decode_stats stats;
    char err[256];
};

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    return h;
}

static void digest_file(const char *path, bool innermost, int burst, struct digest *d)
{
    memset(d, 0, sizeof *d);
    struct cap_source *src = cap_open_file(path, d->err, sizeof d->err);
    if (!src)
        return;
    struct cap_decode_opts opts = {.innermost = innermost};
    struct cap_frame f[128];
    int n;
    while ((n = cap_next_burst(src, f, burst)) > 0) {
        for (int i = 0; i < n; i++) {
            struct cap_packet p;
            enum cap_decode_reason r = cap_decode(&opts, f[i].linktype, f[i].data, f[i].caplen,
                                                  f[i].wirelen, f[i].ts_ns, &p);
            d->stats.frames++;
            d->stats.by_reason[r]++;
            d->frames++;
            d->bytes += f[i].caplen;
            uint64_t h = d->hash;
            h = mix(h, (uint64_t)p.ts_ns);
            h = mix(h, (uint64_t)p.layers.l3_off << 32 | p.layers.l4_off);
            h = mix(h, (uint64_t)p.layers.payload_off << 32 | p.payload_len);
            h = mix(h, (uint64_t)p.src_port << 16 | p.dst_port);
            h = mix(h, (uint64_t)p.reason << 24 | (uint64_t)p.tunnel_depth << 16 |
                           p.layers.l4_proto);
            for (int k = 0; k < 16; k += 8) {
                uint64_t a, b;
                memcpy(&a, p.src_addr + k, 8);
                memcpy(&b, p.dst_addr + k, 8);
                h = mix(mix(h, a), b);
            }
            d->hash = h;
        }
    }
    if (n == CAP_BURST_ERROR)
        snprintf(d->err, sizeof d->err, "%s", cap_source_error(src));
    cap_close(src);
}

static struct digest reference[NFILES][2];

struct worker {
    int id;
    int mismatches;
    struct cap_decode_stats stats; /* this thread's counters, summed by the main thread */
};

static void *work(void *arg)
{
    struct worker *w = arg;
    for (int round = 0; round < ROUNDS; round++) {
        for (int k = 0; k < NFILES; k++) {
            int i = (k + w->id) % NFILES; /* threads walk the files in different orders */
            int inner = (w->id + round) & 1;
            struct digest d;
            digest_file(files[i], inner, 1 + (w->id * 37 + round * 11) % 128, &d);
            const struct digest *ref = &reference[i][inner];
            if (d.frames != ref->frames || d.bytes != ref->bytes || d.hash != ref->hash ||
                d.err[0])
                w->mismatches++;
            cap_decode_stats_add(&w->stats, &d.stats);
        }
    }
    return NULL;
}

static void test_sources_in_parallel(void **state)
{
    (void)state;
    for (int i = 0; i < NFILES; i++) {
        for (int inner = 0; inner < 2; inner++) {
            digest_file(files[i], inner, 64, &reference[i][inner]);
            if (reference[i][inner].err[0])
                fail_msg("%s", reference[i][inner].err);
            assert_true(reference[i][inner].frames > 0);
        }
    }
    pthread_t t[THREADS];
    struct worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){.id = i};
        assert_int_equal(pthread_create(&t[i], NULL, work, &w[i]), 0);
    }
    struct cap_decode_stats total = {0};
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(w[i].mismatches, 0);
        cap_decode_stats_add(&total, &w[i].stats);
    }
    /* every frame of every pass was counted exactly once */
    uint64_t per_pass = 0, sum = 0;
    for (int i = 0; i < NFILES; i++)
        per_pass += reference[i][0].frames;
    for (int r = 0; r < CAP_DECODE_REASON_COUNT; r++)
        sum += total.by_reason[r];
    assert_int_equal(total.frames, per_pass * THREADS * ROUNDS);
    assert_int_equal(sum, total.frames);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sources_in_parallel),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
