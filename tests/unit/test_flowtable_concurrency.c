/* test_flowtable_concurrency.c — the assembler with several worker threads must produce exactly
 * the sessions of the single-thread path: same multiset of (5-tuple, counts, bytes, first/last
 * timestamps, first frame, id, reason, TCP state and flags, stored packets). Checked on a
 * synthetic mix (port reuse, RST, timeouts, time jumping back by years, cut frames) and on the
 * real captures in shared/data, in split and merge mode. Also: max_flows holds with workers, and
 * stats may be read while workers run. CI runs this file under ThreadSanitizer too. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_flowtable_util.h"

/* ---- synthetic traffic ---- */

enum { GEN_SLOTS = 300 };

struct gen_slot {
    uint8_t proto;
    uint8_t cli[4], srv[4];
    uint16_t cport, sport;
    uint32_t cseq, sseq;
    int phase;
    int len;
    int end; /* 0 FIN, 1 RST, 2 abandoned */
};

struct gen {
    uint64_t rng;
    int64_t t;
    uint16_t next_port;
    struct gen_slot slot[GEN_SLOTS];
};

static void gen_new_flow(struct gen *g, struct gen_slot *s, bool reuse_ports)
{
    if (!reuse_ports) {
        s->proto = rng_below(&g->rng, 4) == 0 ? 17 : 6;
        uint32_t c = rng_below(&g->rng, 50), v = rng_below(&g->rng, 20);
        uint8_t cli[4] = {10, 1, (uint8_t)(c >> 8), (uint8_t)c};
        uint8_t srv[4] = {192, 168, 0, (uint8_t)v};
        memcpy(s->cli, cli, 4);
        memcpy(s->srv, srv, 4);
        s->cport = g->next_port++;
        if (g->next_port < 1024)
            g->next_port = 1024;
        s->sport = s->proto == 6 ? 443 : 53;
    }
    s->cseq = (uint32_t)rng_next(&g->rng);
    s->sseq = (uint32_t)rng_next(&g->rng);
    s->phase = 0;
    s->len = 1 + (int)rng_below(&g->rng, 12);
    s->end = (int)rng_below(&g->rng, 10);
    s->end = s->end < 7 ? 0 : s->end < 9 ? 1 : 2;
}

static void gen_init(struct gen *g, uint64_t seed)
{
    memset(g, 0, sizeof *g);
    g->rng = seed;
    g->t = 1300000000ll * TP_SEC;
    g->next_port = 1024;
    for (int i = 0; i < GEN_SLOTS; i++)
        gen_new_flow(g, &g->slot[i], false);
}

/* One packet of a random flow. */
static void gen_packet(struct gen *g, struct tp_frame *f)
{
    g->t += rng_below(&g->rng, 2000000);
    uint32_t r = rng_below(&g->rng, 100000);
    if (r < 5)
        g->t -= 300000000ll * TP_SEC; /* back by ~10 years: concatenated captures */
    else if (r < 15)
        g->t += 400ll * TP_SEC; /* a pause long enough for timeouts */

    struct gen_slot *s = &g->slot[rng_below(&g->rng, GEN_SLOTS)];
    bool c2s = true;
    uint8_t flags = 0;
    uint32_t payload = 0, seq = 0;
    if (s->proto == 17) {
        c2s = s->phase == 0 || rng_below(&g->rng, 2);
        payload = 20 + rng_below(&g->rng, 200);
        if (++s->phase > s->len)
            gen_new_flow(g, s, rng_below(&g->rng, 2));
    } else {
        int data_end = 3 + s->len;
        if (s->phase == 0) {
            flags = FT_TCP_SYN;
            seq = s->cseq;
        } else if (s->phase == 1) {
            c2s = false;
            flags = FT_TCP_SYN | FT_TCP_ACK;
            seq = s->sseq;
            if (rng_below(&g->rng, 10) == 0) { /* lost: the SYN is retransmitted */
                c2s = true;
                flags = FT_TCP_SYN;
                seq = s->cseq;
                s->phase--;
            }
        } else if (s->phase == 2) {
            flags = FT_TCP_ACK;
            seq = s->cseq + 1;
        } else if (s->phase < data_end) {
            c2s = rng_below(&g->rng, 2);
            flags = FT_TCP_ACK | 0x08;
            payload = rng_below(&g->rng, 1400);
            seq = c2s ? s->cseq + 1 : s->sseq + 1;
        } else if (s->end == 1) {
            c2s = rng_below(&g->rng, 2);
            flags = FT_TCP_RST | FT_TCP_ACK;
            s->phase = data_end + 10;
        } else if (s->end == 0 && s->phase < data_end + 3) {
            int k = s->phase - data_end;
            c2s = k != 1;
            flags = k == 2 ? FT_TCP_ACK : FT_TCP_FIN | FT_TCP_ACK;
            seq = c2s ? s->cseq + 2 : s->sseq + 2;
        } else {
            /* done (or abandoned): the next packet of this slot starts a new connection,
             * on the same ports half of the time */
            gen_new_flow(g, s, rng_below(&g->rng, 2));
            flags = FT_TCP_SYN;
            seq = s->cseq;
        }
        s->phase++;
    }
    if (c2s)
        tp_build_bin(f, s->proto, s->cli, s->cport, s->srv, s->sport, flags, seq, payload, g->t);
    else
        tp_build_bin(f, s->proto, s->srv, s->sport, s->cli, s->cport, flags, seq, payload, g->t);

    uint32_t odd = rng_below(&g->rng, 1000);
    if (odd == 0) { /* not IP at all */
        f->pkt.reason = CAP_DECODE_NOT_IP;
        f->pkt.layers.l3_off = f->pkt.layers.l4_off = f->pkt.layers.payload_off = CAP_ABSENT;
        f->pkt.layers.ip_version = 0;
    } else if (odd < 3) { /* cut by the snap length inside the L4 header */
        f->pkt.caplen = 14 + 20 + 6;
        f->pkt.reason = CAP_DECODE_TRUNCATED_L4;
        f->pkt.layers.l4_off = f->pkt.layers.payload_off = CAP_ABSENT;
        f->pkt.src_port = f->pkt.dst_port = 0;
        f->pkt.tcp_flags = 0;
    }
}

struct synth_result {
    struct tc_collect c;
    struct ft_stats st;
    uint64_t max_active;
};

static void run_synthetic(int workers, uint32_t max_flows, int n, struct synth_result *res)
{
    enum { BURST_MAX = 64 };
    tc_init(&res->c);
    res->max_active = 0;
    struct ft_config cfg;
    ft_config_defaults(&cfg);
    cfg.workers = workers;
    cfg.max_flows = max_flows;
    cfg.packets_per_session = 8;
    cfg.bytes_per_packet = 96;
    cfg.hash_seed = 42;
    char err[256];
    struct ft_assembler *as = ft_assembler_create(&cfg, tc_on_session, &res->c, err, sizeof err);
    if (as == NULL)
        fail_msg("create: %s", err);
    struct gen *g = malloc(sizeof *g);
    gen_init(g, 7);
    struct tp_frame *frames = malloc(BURST_MAX * sizeof *frames);
    struct cap_packet pk[BURST_MAX];
    uint64_t burst_rng = 99;
    for (int done = 0; done < n;) {
        int k = 1 + (int)rng_below(&burst_rng, BURST_MAX);
        if (k > n - done)
            k = n - done;
        for (int i = 0; i < k; i++) {
            gen_packet(g, &frames[i]);
            pk[i] = frames[i].pkt;
            pk[i].data = frames[i].bytes;
        }
        ft_assembler_feed_packets(as, pk, k);
        done += k;
        struct ft_stats st;
        ft_assembler_stats(as, &st); /* while workers run: atomics only */
        if (st.flows_active > res->max_active)
            res->max_active = st.flows_active;
    }
    ft_assembler_finish_input(as);
    ft_assembler_stats(as, &res->st);
    ft_assembler_destroy(as);
    free(frames);
    free(g);
}

static void assert_same_sessions(const struct tc_collect *a, const struct tc_collect *b,
                                 const char *what, int workers)
{
    if (a->n != b->n)
        fail_msg("%s: %zu sessions with 1 worker, %zu with %d", what, a->n, b->n, workers);
    char **la = tc_lines(a), **lb = tc_lines(b);
    for (size_t i = 0; i < a->n; i++) {
        if (strcmp(la[i], lb[i]) != 0)
            fail_msg("%s: 1 worker vs %d differ:\n  %s\n  %s", what, workers, la[i], lb[i]);
    }
    tc_lines_free(la, a->n);
    tc_lines_free(lb, b->n);
}

static void test_synthetic_equal_across_workers(void **state)
{
    (void)state;
    enum { N = 60000 };
    struct synth_result one;
    run_synthetic(1, 1u << 16, N, &one);
    assert_int_equal(tc_total_packets(&one.c) + one.st.flowless, one.st.frames);
    assert_int_equal(one.st.frames, N);
    print_message("synthetic: %llu sessions, %llu splits, %llu timeouts, %llu flowless\n",
                  (unsigned long long)one.c.n, (unsigned long long)one.st.port_reuse_splits,
                  (unsigned long long)one.st.flows_timed_out, (unsigned long long)one.st.flowless);
    /* the mix really exercised what it is meant to */
    assert_true(one.st.port_reuse_splits > 100);
    assert_true(one.st.flows_timed_out > 100);
    assert_int_equal(one.st.flows_evicted, 0);
    const int ws[2] = {2, 4};
    for (int i = 0; i < 2; i++) {
        struct synth_result many;
        run_synthetic(ws[i], 1u << 16, N, &many);
        assert_int_equal(many.st.frames, one.st.frames);
        assert_int_equal(many.st.flowless, one.st.flowless);
        assert_int_equal(many.st.flows_created, one.st.flows_created);
        assert_int_equal(many.st.port_reuse_splits, one.st.port_reuse_splits);
        assert_int_equal(many.st.flows_timed_out, one.st.flows_timed_out);
        assert_int_equal(many.st.flows_active, 0);
        assert_same_sessions(&one.c, &many.c, "synthetic", ws[i]);
        tc_free(&many.c);
    }
    tc_free(&one.c);
}

static void test_max_flows_with_workers(void **state)
{
    (void)state;
    struct synth_result r;
    run_synthetic(4, 64, 20000, &r);
    assert_true(r.max_active <= 64);
    assert_true(r.st.flows_evicted > 0);
    /* 4 workers of 16 flows churn faster than grace periods end: they wait for their records
     * instead of refusing flows */
    assert_int_equal(r.st.refused_packets, 0);
    assert_int_equal(tc_total_packets(&r.c) + r.st.flowless, r.st.frames);
    tc_free(&r.c);
}

/* ---- real captures ---- */

struct name_list {
    char **v;
    size_t n;
};

static void names_add(struct name_list *l, const char *path)
{
    l->v = realloc(l->v, (l->n + 1) * sizeof *l->v);
    l->v[l->n++] = strdup(path);
}

static int names_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Capture files directly in dir, or in its subdirectories with subdirs. */
static void names_scan(struct name_list *l, const char *dir, bool subdirs)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        size_t len = strlen(e->d_name);
        if (subdirs && e->d_type == DT_DIR)
            names_scan(l, path, false);
        else if ((len > 5 && strcmp(e->d_name + len - 5, ".pcap") == 0) ||
                 (len > 7 && strcmp(e->d_name + len - 7, ".pcapng") == 0))
            names_add(l, path);
    }
    closedir(d);
}

static struct name_list capture_names(void)
{
    struct name_list l = {0};
    names_scan(&l, NETLM_DATA_DIR "/pcaps", false);
    names_scan(&l, NETLM_DATA_DIR "/labeled/ustc-tfc2016/sessions", true);
    names_scan(&l, NETLM_DATA_DIR "/labeled/ustc-tfc2016/full", false);
    qsort(l.v, l.n, sizeof *l.v, names_cmp);
    return l;
}

static void check_captures(enum ft_port_reuse mode)
{
    struct name_list names = capture_names();
    if (names.n < 20)
        fail_msg("expected the shared captures under %s, found %zu files", NETLM_DATA_DIR,
                 names.n);
    uint64_t total_frames = 0, total_sessions = 0;
    for (size_t i = 0; i < names.n; i++) {
        struct tl_capture cap;
        char err[512];
        if (tl_load(names.v[i], &cap, err, sizeof err) != 0 && cap.n == 0) {
            /* a capture the reader refuses outright is the reader's test's business */
            tl_free(&cap);
            continue;
        }
        struct ft_config cfg;
        ft_config_defaults(&cfg);
        cfg.max_flows = 1u << 16;
        cfg.packets_per_session = 8;
        cfg.bytes_per_packet = 160;
        cfg.hash_seed = 0x5eed;
        cfg.port_reuse = mode;
        struct tc_collect one;
        struct ft_stats st1;
        tc_init(&one);
        tl_run(&cap, &cfg, 32, &one, &st1);
        if (tc_total_packets(&one) + st1.flowless != st1.frames || st1.frames != cap.n)
            fail_msg("%s: %llu session packets + %llu flowless != %llu frames", names.v[i],
                     (unsigned long long)tc_total_packets(&one),
                     (unsigned long long)st1.flowless, (unsigned long long)st1.frames);
        const int ws[2] = {2, 4};
        for (int k = 0; k < 2; k++) {
            struct tc_collect many;
            struct ft_stats stw;
            tc_init(&many);
            cfg.workers = ws[k];
            tl_run(&cap, &cfg, 32, &many, &stw);
            assert_same_sessions(&one, &many, names.v[i], ws[k]);
            tc_free(&many);
        }
        total_frames += cap.n;
        total_sessions += one.n;
        tc_free(&one);
        tl_free(&cap);
    }
    print_message("%zu captures, %llu frames, %llu sessions (%s)\n", names.n,
                  (unsigned long long)total_frames, (unsigned long long)total_sessions,
                  mode == FT_PORT_REUSE_SPLIT ? "split" : "merge");
    for (size_t i = 0; i < names.n; i++)
        free(names.v[i]);
    free(names.v);
}

static void test_captures_split_equal_across_workers(void **state)
{
    (void)state;
    check_captures(FT_PORT_REUSE_SPLIT);
}

static void test_captures_merge_equal_across_workers(void **state)
{
    (void)state;
    check_captures(FT_PORT_REUSE_MERGE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_synthetic_equal_across_workers),
        cmocka_unit_test(test_max_flows_with_workers),
        cmocka_unit_test(test_captures_split_equal_across_workers),
        cmocka_unit_test(test_captures_merge_equal_across_workers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
