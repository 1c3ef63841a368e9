/* test_flowtable_ready_concurrency.c — early verdicts, ticks and emergency mode with several
 * worker threads: the ready callback runs once per session on the worker that owns it, and the
 * verdicts (trigger, packets seen, stored bytes) are those of the single-thread path; a tick
 * ends idle flows on every worker without any frame; emergency mode works per worker. CI runs
 * this file under ThreadSanitizer too. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <time.h>

#include <cmocka.h>

#include "test_flowtable_util.h"

/* ---- synthetic traffic: TCP sessions that close with FIN, RST or not at all, UDP of every
 * length, port reuse, idle pauses; packets of many flows interleaved ---- */

enum { GEN_SLOTS = 200 };

struct gen_slot {
    uint8_t proto;
    uint8_t cli[4], srv[4];
    uint16_t cport, sport;
    uint32_t cseq;
    int phase, len, end; /* end: 0 FIN, 1 RST, 2 abandoned */
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
        s->proto = rng_below(&g->rng, 3) == 0 ? 17 : 6;
        uint32_t c = rng_below(&g->rng, 60);
        uint8_t cli[4] = {10, 2, 0, (uint8_t)c};
        uint8_t srv[4] = {192, 168, 1, (uint8_t)rng_below(&g->rng, 10)};
        memcpy(s->cli, cli, 4);
        memcpy(s->srv, srv, 4);
        s->cport = g->next_port++;
        if (g->next_port < 1024)
            g->next_port = 1024;
        s->sport = s->proto == 6 ? 443 : 53;
    }
    s->cseq = (uint32_t)rng_next(&g->rng);
    s->phase = 0;
    s->len = (int)rng_below(&g->rng, 14);
    int e = (int)rng_below(&g->rng, 10);
    s->end = e < 5 ? 0 : e < 7 ? 1 : 2;
}

static void gen_packet(struct gen *g, struct tp_frame *f)
{
    g->t += rng_below(&g->rng, 1000000);
    if (rng_below(&g->rng, 20000) == 0)
        g->t += 700ll * TP_SEC; /* long enough for every timeout */
    struct gen_slot *s = &g->slot[rng_below(&g->rng, GEN_SLOTS)];
    bool c2s = true;
    uint8_t flags = 0;
    uint32_t payload = 0, seq = 0;
    if (s->proto == 17) {
        c2s = s->phase == 0 || rng_below(&g->rng, 2);
        payload = rng_below(&g->rng, 4) == 0 ? 0 : 20 + rng_below(&g->rng, 100);
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
            seq = 7;
        } else if (s->phase == 2) {
            flags = FT_TCP_ACK;
            seq = s->cseq + 1;
        } else if (s->phase < data_end) {
            c2s = rng_below(&g->rng, 2);
            flags = FT_TCP_ACK | 0x08;
            payload = rng_below(&g->rng, 3) == 0 ? 0 : rng_below(&g->rng, 1400);
        } else if (s->end == 1 && s->phase == data_end) {
            c2s = rng_below(&g->rng, 2);
            flags = FT_TCP_RST | FT_TCP_ACK;
        } else if (s->end == 0 && s->phase < data_end + 3) {
            int k = s->phase - data_end;
            c2s = k != 1;
            flags = k == 2 ? FT_TCP_ACK : FT_TCP_FIN | FT_TCP_ACK;
        } else {
            /* done or abandoned: a new connection, on the same ports half of the time */
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
}

/* ---- runs ---- */

enum { READY_K = 8, STORE_K = 10 };

struct run {
    struct tc_collect ends, ready;
    struct ft_stats st;
};

static void run_synthetic(int workers, int n, struct run *r)
{
    enum { BURST_MAX = 64 };
    tc_init(&r->ends);
    tc_init(&r->ready);
    struct ft_config cfg;
    ft_config_defaults(&cfg);
    cfg.workers = workers;
    cfg.max_flows = 1u << 16;
    cfg.packets_per_session = STORE_K;
    cfg.bytes_per_packet = 80;
    cfg.ready_packets = READY_K;
    cfg.hash_seed = 42;
    char err[256];
    struct ft_assembler *as = ft_assembler_create(&cfg, tc_on_session, &r->ends, err, sizeof err);
    if (as == NULL)
        fail_msg("create: %s", err);
    ft_assembler_on_ready(as, tc_on_session, &r->ready);
    struct gen *g = calloc(1, sizeof *g);
    g->rng = 11;
    g->t = 1600000000ll * TP_SEC;
    g->next_port = 1024;
    for (int i = 0; i < GEN_SLOTS; i++)
        gen_new_flow(g, &g->slot[i], false);
    struct tp_frame *frames = malloc(BURST_MAX * sizeof *frames);
    struct cap_packet pk[BURST_MAX];
    uint64_t burst_rng = 5;
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
    }
    ft_assembler_finish_input(as);
    ft_assembler_stats(as, &r->st);
    ft_assembler_destroy(as);
    free(frames);
    free(g);
}

static void run_free(struct run *r)
{
    tc_free(&r->ends);
    tc_free(&r->ready);
}

/* The canonical line of a session plus the fields this file is about. */
static char **lines_with_ready(const struct tc_collect *c)
{
    char **v = calloc(c->n ? c->n : 1, sizeof *v);
    for (size_t i = 0; i < c->n; i++) {
        char *base = tc_canonical(&c->v[i]);
        v[i] = malloc(600);
        snprintf(v[i], 600, "%s rd%u pp%llu", base, c->v[i].s.ready,
                 (unsigned long long)c->v[i].s.payload_pkts);
        free(base);
    }
    qsort(v, c->n, sizeof *v, tc_strcmp);
    return v;
}

static void assert_same_lines(const struct tc_collect *a, const struct tc_collect *b,
                              const char *what, int workers)
{
    if (a->n != b->n)
        fail_msg("%s: %zu with 1 worker, %zu with %d", what, a->n, b->n, workers);
    char **la = lines_with_ready(a), **lb = lines_with_ready(b);
    for (size_t i = 0; i < a->n; i++) {
        if (strcmp(la[i], lb[i]) != 0)
            fail_msg("%s: 1 worker vs %d differ:\n  %s\n  %s", what, workers, la[i], lb[i]);
    }
    tc_lines_free(la, a->n);
    tc_lines_free(lb, b->n);
}

static int by_id(const void *a, const void *b)
{
    uint64_t x = ((const struct tc_session *)a)->s.id, y = ((const struct tc_session *)b)->s.id;
    return x < y ? -1 : x > y;
}

/* Every verdict belongs to exactly one session, was made on that session's worker, saw the
 * packets the session ends with, and was due: K packets, or a FIN/RST as the last one stored. */
static void check_verdicts(struct run *r)
{
    qsort(r->ready.v, r->ready.n, sizeof *r->ready.v, by_id);
    qsort(r->ends.v, r->ends.n, sizeof *r->ends.v, by_id);
    size_t j = 0, readied = 0;
    for (size_t i = 0; i < r->ends.n; i++) {
        const struct tc_session *e = &r->ends.v[i];
        uint64_t total = e->s.pkts[0] + e->s.pkts[1];
        if (e->s.ready == FT_READY_NOT_YET) {
            assert_true(total < READY_K);
            assert_int_equal((e->s.tcp_flags[0] | e->s.tcp_flags[1]) & (FT_TCP_FIN | FT_TCP_RST),
                             0);
            assert_int_equal(e->s.n_stored, total);
            if (j < r->ready.n)
                assert_true(r->ready.v[j].s.id != e->s.id);
            continue;
        }
        readied++;
        assert_true(j < r->ready.n);
        const struct tc_session *v = &r->ready.v[j++];
        assert_int_equal(v->s.id, e->s.id); /* one verdict, no other in between */
        if (j < r->ready.n)
            assert_true(r->ready.v[j].s.id != e->s.id);
        assert_int_equal(v->worker, e->worker);
        assert_int_equal(v->s.ready, e->s.ready);
        assert_int_equal(v->s.n_stored, e->s.n_stored);
        assert_int_equal(v->s.pkts[0] + v->s.pkts[1], v->s.n_stored);
        assert_true(v->s.payload_pkts <= e->s.payload_pkts);
        for (uint32_t k = 0; k < v->s.n_stored; k++)
            assert_memory_equal(v->s.stored[k].bytes, e->s.stored[k].bytes,
                                v->s.stored[k].stored_len);
        uint8_t last = v->s.stored[v->s.n_stored - 1].tcp_flags;
        if (v->s.ready == FT_READY_PACKETS) {
            assert_int_equal(v->s.n_stored, READY_K);
            assert_int_equal(last & (FT_TCP_FIN | FT_TCP_RST), 0);
        } else {
            assert_true(v->s.n_stored <= READY_K);
            assert_true(last & (v->s.ready == FT_READY_FIN ? FT_TCP_FIN : FT_TCP_RST));
        }
    }
    assert_int_equal(j, r->ready.n);
    assert_int_equal(readied, r->st.flows_ready);
}

static void test_ready_equal_across_workers(void **state)
{
    (void)state;
    enum { N = 100000 };
    struct run one;
    run_synthetic(1, N, &one);
    check_verdicts(&one);
    size_t by[4] = {0};
    for (size_t i = 0; i < one.ready.n; i++)
        by[one.ready.v[i].s.ready]++;
    print_message("%zu sessions, verdicts: %zu packets, %zu fin, %zu rst\n", one.ends.n,
                  by[FT_READY_PACKETS], by[FT_READY_FIN], by[FT_READY_RST]);
    /* the mix exercised every trigger, and sessions that never got one */
    assert_true(by[FT_READY_PACKETS] > 2000 && by[FT_READY_FIN] > 500 && by[FT_READY_RST] > 200);
    assert_true(one.ready.n + 1000 < one.ends.n);
    const int ws[2] = {2, 3};
    for (int i = 0; i < 2; i++) {
        struct run many;
        run_synthetic(ws[i], N, &many);
        assert_int_equal(many.st.flows_ready, one.st.flows_ready);
        check_verdicts(&many);
        assert_same_lines(&one.ends, &many.ends, "sessions", ws[i]);
        assert_same_lines(&one.ready, &many.ready, "verdicts", ws[i]);
        bool several = false;
        for (size_t k = 1; k < many.ready.n; k++)
            several |= many.ready.v[k].worker != many.ready.v[0].worker;
        assert_true(several);
        run_free(&many);
    }
    run_free(&one);
}

/* ---- ticks and emergency mode with workers ---- */

static void sleep_ms(int ms)
{
    struct timespec ts = {0, ms * 1000000L};
    nanosleep(&ts, NULL);
}

static size_t collected(struct tc_collect *c)
{
    pthread_mutex_lock(&c->lock);
    size_t n = c->n;
    pthread_mutex_unlock(&c->lock);
    return n;
}

/* Sessions reported on worker threads arrive some time after the call: wait for n of them. */
static bool wait_for(struct tc_collect *c, size_t n)
{
    for (int i = 0; i < 2000 && collected(c) < n; i++)
        sleep_ms(5);
    return collected(c) >= n;
}

static void test_tick_with_workers(void **state)
{
    (void)state;
    const int ws[2] = {1, 2};
    for (int wi = 0; wi < 2; wi++) {
        struct tc_collect c;
        tc_init(&c);
        struct ft_config cfg;
        ft_config_defaults(&cfg);
        cfg.workers = ws[wi];
        cfg.max_flows = 1024;
        cfg.hash_seed = 77;
        char err[256];
        struct ft_assembler *as = ft_assembler_create(&cfg, tc_on_session, &c, err, sizeof err);
        assert_non_null(as);
        /* 40 UDP flows (both workers own some), all at 1 s. */
        enum { FLOWS = 40 };
        for (int i = 0; i < FLOWS; i++)
            tp_udp(as, "10.3.0.1", (uint16_t)(2000 + i), "10.3.0.2", 53, 10, TP_SEC);
        ft_assembler_tick(as, 30 * TP_SEC);          /* idle 29 s */
        ft_assembler_tick(as, 29 * TP_SEC + TP_SEC / 2); /* back: ignored */
        sleep_ms(50);
        assert_int_equal(collected(&c), 0);
        ft_assembler_tick(as, 31 * TP_SEC + 1);
        if (!wait_for(&c, FLOWS))
            fail_msg("%d workers: %zu of %d flows timed out after a tick", ws[wi], collected(&c),
                     FLOWS);
        bool worker_seen[2] = {false, false};
        pthread_mutex_lock(&c.lock);
        for (size_t i = 0; i < c.n; i++) {
            assert_int_equal(c.v[i].s.reason, FT_END_TIMEOUT);
            worker_seen[c.v[i].worker] = true;
        }
        pthread_mutex_unlock(&c.lock);
        if (ws[wi] == 2)
            assert_true(worker_seen[0] && worker_seen[1]);
        /* A worker counts a flow out of the active ones just after its callback returns. */
        struct ft_stats st;
        for (int i = 0; i < 2000; i++) {
            ft_assembler_stats(as, &st);
            if (st.flows_active == 0)
                break;
            sleep_ms(5);
        }
        assert_int_equal(st.flows_timed_out, FLOWS);
        assert_int_equal(st.flows_active, 0);
        /* Ticks right after each other reach the workers too (no once-a-second limit). */
        tp_udp(as, "10.3.0.1", 3000, "10.3.0.2", 53, 10, 40 * TP_SEC);
        ft_assembler_tick(as, 70 * TP_SEC);
        ft_assembler_tick(as, 70 * TP_SEC + TP_SEC / 2 + 1);
        if (!wait_for(&c, FLOWS + 1))
            fail_msg("%d workers: a tick half a second after another was lost", ws[wi]);
        ft_assembler_finish_input(as);
        assert_int_equal(collected(&c), FLOWS + 1);
        ft_assembler_destroy(as);
        tc_free(&c);
    }
}

static void test_emergency_with_workers(void **state)
{
    (void)state;
    struct tc_collect c;
    tc_init(&c);
    struct ft_config cfg;
    ft_config_defaults(&cfg);
    cfg.workers = 2;
    cfg.max_flows = 40; /* 20 per worker */
    cfg.emergency_enter_pct = 50;
    cfg.emergency_leave_pct = 20;
    cfg.emergency_timeouts.udp_new = 2;
    cfg.hash_seed = 3;
    char err[256];
    struct ft_assembler *as = ft_assembler_create(&cfg, tc_on_session, &c, err, sizeof err);
    assert_non_null(as);
    /* A flood of distinct flows: both workers fill past half their share. */
    enum { FLOOD = 200 };
    for (int i = 0; i < FLOOD; i++)
        tp_udp(as, "10.4.0.1", (uint16_t)(1000 + i), "10.4.0.2", 53, 10, TP_SEC + i * 1000000ll);
    ft_assembler_tick(as, TP_SEC + FLOOD * 1000000ll); /* behind every flood packet */
    struct ft_stats st;
    for (int i = 0; i < 2000; i++) {
        ft_assembler_stats(as, &st);
        if (st.emergency_active == 2 && st.flows_created == FLOOD &&
            st.flows_evicted + st.flows_active == FLOOD)
            break;
        sleep_ms(5);
    }
    assert_int_equal(st.emergency_active, 2);
    assert_true(st.emergency_entered >= 2);
    assert_true(st.flows_evicted > 0);
    assert_true(st.flows_active <= 40);
    assert_int_equal(st.flows_timed_out, 0);
    assert_true(st.memory_bytes >= 2 * (2u << 20)); /* a slab per worker */
    /* Idle 2.8 s or more is past the emergency timeout (2 s), far below the normal 30 s: flows
     * end until a worker is below 20 % of its share (4 flows), which ends its emergency mode
     * and leaves 3 of its flows for the normal timeouts. */
    uint64_t live = st.flows_active;
    assert_int_equal(live, 40);
    ft_assembler_tick(as, 4 * TP_SEC);
    for (int i = 0; i < 2000; i++) {
        ft_assembler_stats(as, &st);
        if (st.emergency_active == 0 && st.flows_active == 6)
            break;
        sleep_ms(5);
    }
    assert_int_equal(st.emergency_active, 0);
    assert_int_equal(st.flows_active, 6);
    assert_int_equal(st.flows_timed_out, live - 6);
    ft_assembler_tick(as, 40 * TP_SEC);
    for (int i = 0; i < 2000; i++) {
        ft_assembler_stats(as, &st);
        if (st.flows_active == 0)
            break;
        sleep_ms(5);
    }
    assert_int_equal(st.flows_timed_out, live);
    assert_int_equal(st.flows_active, 0);
    ft_assembler_finish_input(as);
    assert_int_equal(collected(&c), FLOOD);
    ft_assembler_destroy(as);
    tc_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ready_equal_across_workers),
        cmocka_unit_test(test_tick_with_workers),
        cmocka_unit_test(test_emergency_with_workers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
