/* test_flowtable_util.h — helpers shared by the flowtable unit tests: hand-built Ethernet/IPv4/
 * TCP|UDP frames with the cap_packet view the decoder would give, a thread-safe session
 * collector that deep-copies each session (stored bytes included), and a canonical text form of
 * a session so that runs can be compared as multisets, and the random numbers of the synthetic
 * traffic generators. Header-only: each test is one file. */
#ifndef NETLM_TEST_FLOWTABLE_UTIL_H
#define NETLM_TEST_FLOWTABLE_UTIL_H

#include <arpa/inet.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flowtable/ft_internal.h"

#define TP_SEC 1000000000ll

#if defined(__SANITIZE_THREAD__)
/* What tests/tsan.supp says, built in so that these tests are clean under TSan however they are
 * started (ctest sets no TSAN_OPTIONS). history_size=7 keeps enough of each thread's history for
 * the allocating stack of a report to be restored, which the suppression needs to match. Each
 * test executable includes this header once. See tests/tsan.supp for why the entry is there. */
const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
    return "history_size=7";
}
const char *__tsan_default_suppressions(void);
const char *__tsan_default_suppressions(void)
{
    return "race:urcu_qsbr_barrier\n";
}
#endif

/* ---- the synthetic traffic generators' random numbers (splitmix64) ---- */

static inline uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint32_t rng_below(uint64_t *s, uint32_t n) { return (uint32_t)(rng_next(s) % n); }

/* ---- hand-built frames ---- */

struct tp_frame {
    uint8_t bytes[256];
    struct cap_packet pkt;
};

static inline void tp_put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void tp_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* An Ethernet/IPv4 frame carrying TCP (proto 6) or UDP (17) with `payload` payload bytes, of
 * which at most what fits in the buffer is captured (wirelen is the full length). */
static inline void tp_build_bin(struct tp_frame *f, uint8_t proto, const uint8_t src[4],
                                uint16_t sport, const uint8_t dst[4], uint16_t dport,
                                uint8_t flags, uint32_t seq, uint32_t payload, int64_t ts_ns);

static inline void tp_build(struct tp_frame *f, uint8_t proto, const char *src, uint16_t sport,
                            const char *dst, uint16_t dport, uint8_t flags, uint32_t seq,
                            uint32_t payload, int64_t ts_ns)
{
    uint8_t s4[4], d4[4];
    inet_pton(AF_INET, src, s4);
    inet_pton(AF_INET, dst, d4);
    tp_build_bin(f, proto, s4, sport, d4, dport, flags, seq, payload, ts_ns);
}

static inline void tp_build_bin(struct tp_frame *f, uint8_t proto, const uint8_t src[4],
                                uint16_t sport, const uint8_t dst[4], uint16_t dport,
                                uint8_t flags, uint32_t seq, uint32_t payload, int64_t ts_ns)
{
    memset(f, 0, sizeof *f);
    uint8_t *b = f->bytes;
    uint32_t l4len = proto == 6 ? 20 : 8;
    uint32_t wire = 14 + 20 + l4len + payload;
    uint32_t cap = wire < sizeof f->bytes ? wire : (uint32_t)sizeof f->bytes;
    /* Ethernet: MACs derived from the IP addresses (so they swap with the direction) */
    b[0] = b[6] = 0x02;
    b[1] = b[7] = 0x00;
    memcpy(b + 2, dst, 4);
    memcpy(b + 8, src, 4);
    tp_put16(b + 12, 0x0800);
    uint8_t *ip = b + 14;
    ip[0] = 0x45;
    tp_put16(ip + 2, (uint16_t)(20 + l4len + payload));
    ip[8] = 64;
    ip[9] = proto;
    memcpy(ip + 12, src, 4);
    memcpy(ip + 16, dst, 4);
    uint8_t *l4 = ip + 20;
    tp_put16(l4, sport);
    tp_put16(l4 + 2, dport);
    if (proto == 6) {
        tp_put32(l4 + 4, seq);
        l4[12] = 5 << 4;
        l4[13] = flags;
        tp_put16(l4 + 14, 8192);
    } else {
        tp_put16(l4 + 4, (uint16_t)(8 + payload));
    }
    for (uint32_t i = 14 + 20 + l4len; i < cap; i++)
        b[i] = (uint8_t)(i * 7 + seq + sport);

    struct cap_packet *p = &f->pkt;
    p->data = b;
    p->caplen = cap;
    p->wirelen = wire;
    p->ts_ns = ts_ns;
    p->layers.eth_off = 0;
    p->layers.l3_off = 14;
    p->layers.l4_off = 34;
    p->layers.payload_off = 34 + l4len;
    p->layers.linktype = CAP_LINK_EN10MB;
    p->layers.ip_version = 4;
    p->layers.l4_proto = proto;
    p->payload_len = payload;
    p->reason = CAP_DECODE_OK;
    p->frag = CAP_FRAG_NONE;
    p->tcp_flags = proto == 6 ? flags : 0;
    memcpy(p->src_addr, ip + 12, 4);
    memcpy(p->dst_addr, ip + 16, 4);
    p->src_port = sport;
    p->dst_port = dport;
}

static inline void tp_feed(struct ft_assembler *as, struct tp_frame *f)
{
    /* The frame's own bytes must be where the view points (the struct may have been copied). */
    f->pkt.data = f->bytes;
    ft_assembler_feed_packets(as, &f->pkt, 1);
}

static inline void tp_tcp(struct ft_assembler *as, const char *src, uint16_t sport,
                          const char *dst, uint16_t dport, uint8_t flags, uint32_t seq,
                          uint32_t payload, int64_t ts_ns)
{
    struct tp_frame f;
    tp_build(&f, 6, src, sport, dst, dport, flags, seq, payload, ts_ns);
    tp_feed(as, &f);
}

static inline void tp_udp(struct ft_assembler *as, const char *src, uint16_t sport,
                          const char *dst, uint16_t dport, uint32_t payload, int64_t ts_ns)
{
    struct tp_frame f;
    tp_build(&f, 17, src, sport, dst, dport, 0, 0, payload, ts_ns);
    tp_feed(as, &f);
}

/* ---- session collector ---- */

struct tc_session {
    struct ft_session s; /* .stored points at stored below */
    struct ft_stored_packet *stored;
    uint8_t *bytes;
    int worker;
};

struct tc_collect {
    pthread_mutex_t lock;
    struct tc_session *v;
    size_t n, cap;
};

static inline void tc_init(struct tc_collect *c)
{
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->lock, NULL);
}

static inline void tc_clear(struct tc_collect *c)
{
    for (size_t i = 0; i < c->n; i++) {
        free(c->v[i].stored);
        free(c->v[i].bytes);
    }
    c->n = 0;
}

static inline void tc_free(struct tc_collect *c)
{
    tc_clear(c);
    free(c->v);
    pthread_mutex_destroy(&c->lock);
}

static inline void tc_on_session(const struct ft_session *s, int worker, void *user)
{
    struct tc_collect *c = user;
    struct tc_session t;
    t.s = *s;
    t.worker = worker;
    size_t total = 0;
    for (uint32_t i = 0; i < s->n_stored; i++)
        total += s->stored[i].stored_len;
    t.stored = calloc(s->n_stored ? s->n_stored : 1, sizeof *t.stored);
    t.bytes = malloc(total ? total : 1);
    size_t off = 0;
    for (uint32_t i = 0; i < s->n_stored; i++) {
        t.stored[i] = s->stored[i];
        memcpy(t.bytes + off, s->stored[i].bytes, s->stored[i].stored_len);
        t.stored[i].bytes = t.bytes + off;
        off += s->stored[i].stored_len;
    }
    t.s.stored = t.stored;
    pthread_mutex_lock(&c->lock);
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 64;
        c->v = realloc(c->v, c->cap * sizeof *c->v);
    }
    c->v[c->n++] = t;
    pthread_mutex_unlock(&c->lock);
}

/* 64-bit FNV-1a, for fingerprints of stored bytes in the canonical form. */
static inline uint64_t tc_fnv(const uint8_t *p, size_t n, uint64_t h)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Everything that must not depend on the number of workers, as one line. */
static inline char *tc_canonical(const struct tc_session *t)
{
    const struct ft_session *s = &t->s;
    char src[INET6_ADDRSTRLEN], dst[INET6_ADDRSTRLEN];
    inet_ntop(s->ip_version == 6 ? AF_INET6 : AF_INET, s->src_addr, src, sizeof src);
    inet_ntop(s->ip_version == 6 ? AF_INET6 : AF_INET, s->dst_addr, dst, sizeof dst);
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint32_t i = 0; i < s->n_stored; i++) {
        const struct ft_stored_packet *sp = &s->stored[i];
        h = tc_fnv(sp->bytes, sp->stored_len, h);
        uint64_t meta[6] = {sp->stored_len, sp->caplen, sp->wirelen, (uint64_t)sp->ts_ns,
                            (uint64_t)sp->dir << 8 | sp->tcp_flags,
                            (uint64_t)sp->layers.l3_off << 32 | sp->layers.l4_off};
        h = tc_fnv((const uint8_t *)meta, sizeof meta, h);
    }
    char *line = malloc(512);
    snprintf(line, 512,
             "%llu %llu p%u v%u %s:%u>%s:%u pk%llu/%llu by%llu/%llu t%lld..%lld f%02x/%02x st%u "
             "r%u lt%u n%u h%016llx",
             (unsigned long long)s->first_frame, (unsigned long long)s->id, s->proto, s->vlan, src,
             s->src_port, dst, s->dst_port, (unsigned long long)s->pkts[0],
             (unsigned long long)s->pkts[1], (unsigned long long)s->bytes[0],
             (unsigned long long)s->bytes[1], (long long)s->first_ns, (long long)s->last_ns,
             s->tcp_flags[0], s->tcp_flags[1], s->tcp_state, s->reason, s->linktype, s->n_stored,
             (unsigned long long)h);
    return line;
}

static inline int tc_strcmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted canonical lines of all collected sessions; free with tc_lines_free. */
static inline char **tc_lines(const struct tc_collect *c)
{
    char **v = calloc(c->n ? c->n : 1, sizeof *v);
    for (size_t i = 0; i < c->n; i++)
        v[i] = tc_canonical(&c->v[i]);
    qsort(v, c->n, sizeof *v, tc_strcmp);
    return v;
}

static inline void tc_lines_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static inline uint64_t tc_total_packets(const struct tc_collect *c)
{
    uint64_t n = 0;
    for (size_t i = 0; i < c->n; i++)
        n += c->v[i].s.pkts[0] + c->v[i].s.pkts[1];
    return n;
}

/* ---- captures loaded into memory (needs capture/'s file source) ---- */

struct tl_capture {
    struct cap_frame *frames;
    size_t n;
    uint8_t *data;
};

/* Reads a whole pcap/pcapng file; 0 on success, else -1 with a message in err. */
static inline int tl_load(const char *path, struct tl_capture *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    struct cap_source *src = cap_open_file(path, err, errlen);
    if (src == NULL)
        return -1;
    size_t cap = 0, used = 0, dcap = 0;
    size_t *offs = NULL;
    struct cap_frame burst[64];
    int got;
    while ((got = cap_next_burst(src, burst, 64)) > 0) {
        for (int i = 0; i < got; i++) {
            if (out->n == cap) {
                cap = cap ? cap * 2 : 1024;
                out->frames = realloc(out->frames, cap * sizeof *out->frames);
                offs = realloc(offs, cap * sizeof *offs);
            }
            while (used + burst[i].caplen > dcap) {
                dcap = dcap ? dcap * 2 : (1u << 20);
                out->data = realloc(out->data, dcap);
            }
            if (burst[i].caplen)
                memcpy(out->data + used, burst[i].data, burst[i].caplen);
            out->frames[out->n] = burst[i];
            offs[out->n++] = used;
            used += burst[i].caplen;
        }
    }
    if (got == CAP_BURST_ERROR)
        snprintf(err, errlen, "%s", cap_source_error(src));
    cap_close(src);
    for (size_t i = 0; i < out->n; i++)
        out->frames[i].data = out->data + offs[i];
    free(offs);
    return got == CAP_BURST_ERROR ? -1 : 0;
}

static inline void tl_free(struct tl_capture *c)
{
    free(c->frames);
    free(c->data);
    memset(c, 0, sizeof *c);
}

/* Feeds a loaded capture as one input, in bursts, and collects its sessions. */
static inline void tl_run(const struct tl_capture *cap, const struct ft_config *cfg, int burst,
                          struct tc_collect *c, struct ft_stats *st)
{
    char err[256];
    struct ft_assembler *as = ft_assembler_create(cfg, tc_on_session, c, err, sizeof err);
    if (as == NULL) {
        fprintf(stderr, "create: %s\n", err);
        abort();
    }
    for (size_t i = 0; i < cap->n; i += (size_t)burst) {
        size_t k = cap->n - i < (size_t)burst ? cap->n - i : (size_t)burst;
        ft_assembler_feed(as, cap->frames + i, (int)k);
    }
    ft_assembler_finish_input(as);
    ft_assembler_stats(as, st);
    ft_assembler_destroy(as);
}

#endif
