/* test_flowtable_ready.c — unit tests of what the sensor needs from flowtable/, on one worker and
 * hand-built packets: early verdicts (the ready callback at K packets, on FIN, on RST, once per
 * session, stored packets frozen after it, the trigger reported again at the end), payload
 * packet counts, ticks that move the clock without frames, emergency mode under a flood of new
 * flows, the new counters, and the new config errors. The same with several workers is in
 * test_flowtable_ready_concurrency.c. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_flowtable_util.h"

#define SYN FT_TCP_SYN
#define ACK FT_TCP_ACK
#define FIN FT_TCP_FIN
#define RST FT_TCP_RST
#define PSH 0x08

static int64_t sec(double s)
{
    return (int64_t)llround(s * 1e9);
}

static void base_cfg(struct ft_config *cfg)
{
    ft_config_defaults(cfg);
    cfg->max_flows = 1024;
    cfg->hash_seed = 0x1234567;
}

/* An assembler whose end callback collects into ends and ready callback into ready. */
static struct ft_assembler *mk(const struct ft_config *cfg, struct tc_collect *ends,
                               struct tc_collect *ready)
{
    char err[256];
    struct ft_assembler *as = ft_assembler_create(cfg, tc_on_session, ends, err, sizeof err);
    if (as == NULL)
        fail_msg("create: %s", err);
    if (ready)
        ft_assembler_on_ready(as, tc_on_session, ready);
    return as;
}

static uint64_t total_pkts(const struct ft_session *s)
{
    return s->pkts[0] + s->pkts[1];
}

/* The stored packets of two views are the same packets, byte for byte. */
static void assert_same_stored(const struct ft_session *a, const struct ft_session *b)
{
    assert_int_equal(a->n_stored, b->n_stored);
    for (uint32_t i = 0; i < a->n_stored; i++) {
        const struct ft_stored_packet *x = &a->stored[i], *y = &b->stored[i];
        assert_int_equal(x->stored_len, y->stored_len);
        assert_int_equal(x->ts_ns, y->ts_ns);
        assert_int_equal(x->dir, y->dir);
        assert_int_equal(x->tcp_flags, y->tcp_flags);
        assert_memory_equal(x->bytes, y->bytes, x->stored_len);
    }
}

/* ---- early verdicts ---- */

static void test_ready_at_k_packets(void **state)
{
    (void)state;
    struct tc_collect ends, ready;
    tc_init(&ends);
    tc_init(&ready);
    struct ft_config cfg;
    base_cfg(&cfg);
    cfg.packets_per_session = 8;
    cfg.bytes_per_packet = 64;
    cfg.ready_packets = 4;
    struct ft_assembler *as = mk(&cfg, &ends, &ready);
    const char *A = "10.0.0.1", *B = "10.0.0.2";
    tp_tcp(as, A, 40000, B, 80, SYN, 100, 0, sec(0));
    tp_tcp(as, B, 80, A, 40000, SYN | ACK, 500, 0, sec(0.1));
    tp_tcp(as, A, 40000, B, 80, ACK, 101, 0, sec(0.2));
    assert_int_equal(ready.n, 0); /* 3 packets: not yet */
    tp_tcp(as, A, 40000, B, 80, ACK | PSH, 101, 100, sec(0.3));
    assert_int_equal(ready.n, 1); /* the 4th packet */
    const struct ft_session *r = &ready.v[0].s;
    assert_int_equal(r->ready, FT_READY_PACKETS);
    assert_int_equal(total_pkts(r), 4);
    assert_int_equal(r->pkts[0], 3);
    assert_int_equal(r->pkts[1], 1);
    assert_int_equal(r->n_stored, 4);
    assert_int_equal(r->payload_pkts, 1);
    assert_int_equal(r->reason, 0);
    assert_int_equal(r->tcp_state, FT_TCP_ESTABLISHED);
    assert_int_equal(r->src_port, 40000);
    assert_int_equal(r->stored[1].dir, 1);
    assert_int_equal(r->stored[3].stored_len, 64);
    assert_int_equal(ready.v[0].worker, 0);
    /* More packets: counted, not stored, no second verdict. */
    for (int i = 0; i < 6; i++)
        tp_tcp(as, i % 2 ? B : A, i % 2 ? 80 : 40000, i % 2 ? A : B, i % 2 ? 40000 : 80,
               ACK | PSH, 200 + (uint32_t)i, i == 5 ? 0 : 300, sec(1 + i));
    assert_int_equal(ready.n, 1);
    assert_int_equal(ends.n, 0);
    struct ft_stats st;
    ft_assembler_stats(as, &st);
    assert_int_equal(st.flows_ready, 1);
    ft_assembler_finish_input(as);
    assert_int_equal(ends.n, 1);
    const struct ft_session *e = &ends.v[0].s;
    assert_int_equal(e->ready, FT_READY_PACKETS);
    assert_int_equal(total_pkts(e), 10);
    assert_int_equal(e->n_stored, 4); /* frozen at the verdict */
    assert_int_equal(e->payload_pkts, 6);
    assert_int_equal(e->reason, FT_END_END_OF_INPUT);
    assert_int_equal(e->id, r->id);
    assert_same_stored(r, e);
    ft_assembler_destroy(as);
    tc_free(&ends);
    tc_free(&ready);

    /* UDP, and ready_packets == packets_per_session. */
    tc_init(&ends);
    tc_init(&ready);
    base_cfg(&cfg);
    cfg.packets_per_session = 3;
    cfg.ready_packets = 3;
    as = mk(&cfg, &ends, &ready);
    for (int i = 0; i < 5; i++)
        tp_udp(as, i == 1 ? B : A, i == 1 ? 53 : 5000, i == 1 ? A : B, i == 1 ? 5000 : 53,
               i == 2 ? 0 : 30, sec(i));
    assert_int_equal(ready.n, 1);
    assert_int_equal(total_pkts(&ready.v[0].s), 3);
    assert_int_equal(ready.v[0].s.payload_pkts, 2);
    assert_int_equal(ready.v[0].s.n_stored, 3);
    ft_assembler_finish_input(as);
    assert_int_equal(ends.n, 1);
    assert_int_equal(ends.v[0].s.ready, FT_READY_PACKETS);
    assert_int_equal(ends.v[0].s.n_stored, 3);
    assert_int_equal(ends.v[0].s.payload_pkts, 4);
    assert_same_stored(&ready.v[0].s, &ends.v[0].s);
    ft_assembler_destroy(as);
    tc_free(&ends);
    tc_free(&ready);
}

static void test_ready_on_fin_and_rst(void **state)
{
    (void)state;
    struct tc_collect ends, ready;
    struct ft_config cfg;
    const char *A = "10.0.0.1", *B = "10.0.0.2";

    /* FIN before K: the FIN packet is the last one stored; the rest of the close is counted. */
    tc_init(&ends);
    tc_init(&ready);
    base_cfg(&cfg);
    cfg.packets_per_session = 16;
    cfg.ready_packets = 8;
    struct ft_assembler *as = mk(&cfg, &ends, &ready);
    tp_tcp(as, A, 40000, B, 80, SYN, 100, 0, sec(0));
    tp_tcp(as, B, 80, A, 40000, SYN | ACK, 500, 0, sec(0.1));
    tp_tcp(as, A, 40000, B, 80, ACK | PSH, 101, 50, sec(0.2));
    tp_tcp(as, B, 80, A, 40000, FIN | ACK, 501, 0, sec(0.3));
    assert_int_equal(ready.n, 1);
    const struct ft_session *r = &ready.v[0].s;
    assert_int_equal(r->ready, FT_READY_FIN);
    assert_int_equal(r->n_stored, 4);
    assert_int_equal(r->stored[3].tcp_flags, FIN | ACK);
    assert_int_equal(r->stored[3].dir, 1);
    assert_int_equal(r->tcp_state, FT_TCP_CLOSING);
    assert_int_equal(r->payload_pkts, 1);
    tp_tcp(as, A, 40000, B, 80, FIN | ACK, 151, 0, sec(0.4)); /* a second FIN: no new verdict */
    tp_tcp(as, B, 80, A, 40000, ACK, 502, 0, sec(0.5));
    assert_int_equal(ready.n, 1);
    ft_assembler_finish_input(as);
    assert_int_equal(ends.n, 1);
    assert_int_equal(ends.v[0].s.ready, FT_READY_FIN);
    assert_int_equal(ends.v[0].s.reason, FT_END_CLOSED);
    assert_int_equal(total_pkts(&ends.v[0].s), 6);
    assert_same_stored(r, &ends.v[0].s);
    ft_assembler_destroy(as);
    tc_free(&ends);
    tc_free(&ready);

    /* RST on the second packet. */
    tc_init(&ends);
    tc_init(&ready);
    as = mk(&cfg, &ends, &ready);
    tp_tcp(as, A, 40001, B, 81, SYN, 100, 0, sec(0));
    tp_tcp(as, B, 81, A, 40001, RST | ACK, 0, 0, sec(0.1));
    assert_int_equal(ready.n, 1);
    assert_int_equal(ready.v[0].s.ready, FT_READY_RST);
    assert_int_equal(ready.v[0].s.n_stored, 2);
    assert_int_equal(ready.v[0].s.tcp_state, FT_TCP_CLOSED);
    tp_tcp(as, A, 40001, B, 81, RST, 101, 0, sec(0.2));
    ft_assembler_finish_input(as);
    assert_int_equal(ready.n, 1);
    assert_int_equal(ends.n, 1);
    assert_int_equal(ends.v[0].s.ready, FT_READY_RST);
    assert_int_equal(ends.v[0].s.n_stored, 2);
    assert_int_equal(total_pkts(&ends.v[0].s), 3);
    ft_assembler_destroy(as);
    tc_free(&ends);
    tc_free(&ready);

    /* A FIN on the packet that also reaches ready_packets names the close; a FIN after the
     * verdict changes nothing. */
    tc_init(&ends);
    tc_init(&ready);
    base_cfg(&cfg);
    cfg.packets_per_session = 4;
    cfg.ready_packets = 3;
    as = mk(&cfg, &ends, &ready);
    tp_tcp(as, A, 40002, B, 82, SYN, 100, 0, sec(0));
    tp_tcp(as, B, 82, A, 40002, SYN | ACK, 500, 0, sec(0.1));
    tp_tcp(as, A, 40002, B, 82, FIN | ACK, 101, 0, sec(0.2));
    tp_tcp(as, A, 40003, B, 83, SYN, 100, 0, sec(0.3));
    tp_tcp(as, B, 83, A, 40003, SYN | ACK, 500, 0, sec(0.4));
    tp_tcp(as, A, 40003, B, 83, ACK, 101, 0, sec(0.5));
    tp_tcp(as, A, 40003, B, 83, FIN | ACK, 101, 0, sec(0.6));
    assert_int_equal(ready.n, 2);
    assert_int_equal(ready.v[0].s.ready, FT_READY_FIN);
    assert_int_equal(ready.v[0].s.n_stored, 3);
    assert_int_equal(ready.v[1].s.ready, FT_READY_PACKETS);
    assert_int_equal(ready.v[1].s.n_stored, 3);
    ft_assembler_finish_input(as);
    assert_int_equal(ends.n, 2);
    for (size_t i = 0; i < 2; i++) {
        const struct ft_session *e = &ends.v[i].s;
        assert_int_equal(e->n_stored, 3);
        assert_int_equal(e->ready, e->src_port == 40002 ? FT_READY_FIN : FT_READY_PACKETS);
    }
    ft_assembler_destroy(as);
    tc_free(&ends);
    tc_free(&ready);
}

/* Many sessions of every length, port reuse included: one verdict per session that reaches K or
 * sees FIN/RST, none for the others, and the end callback agrees. */
static void test_ready_once_per_session(void **state)
{
    (void)state;
    struct tc_collect ends, ready;
    tc_init(&ends);
    tc_init(&ready);
    struct ft_config cfg;
    base_cfg(&cfg);
    cfg.packets_per_session = 8;
    cfg.ready_packets = 5;
    struct ft_assembler *as = mk(&cfg, &ends, &ready);
    const char *A = "10.0.0.1", *B = "10.0.0.2";
    int64_t t = 0;
    for (int n = 1; n <= 12; n++) {
        for (int i = 0; i < n; i++)
            tp_udp(as, A, (uint16_t)(1000 + n), B, 53, (uint32_t)(i % 3 ? 10 : 0), t += sec(0.01));
    }
    /* One 5-tuple, three TCP sessions (port reuse): each gets its own verdict. */
    for (int s = 0; s < 3; s++) {
        uint32_t isn = 1000u * (uint32_t)(s + 1);
        tp_tcp(as, A, 4444, B, 443, SYN, isn, 0, t += sec(0.01));
        tp_tcp(as, B, 443, A, 4444, SYN | ACK, 9, 0, t += sec(0.01));
        tp_tcp(as, A, 4444, B, 443, ACK, isn + 1, 0, t += sec(0.01));
        if (s == 1)
            tp_tcp(as, A, 4444, B, 443, RST, isn + 1, 0, t += sec(0.01));
    }
    ft_assembler_finish_input(as);
    assert_int_equal(ends.n, 15);
    /* UDP lengths 5..12, the RST session, and the third TCP session? No: 3 packets, no FIN. */
    assert_int_equal(ready.n, 8 + 1);
    struct ft_stats st;
    ft_assembler_stats(as, &st);
    assert_int_equal(st.flows_ready, 9);
    for (size_t i = 0; i < ends.n; i++) {
        const struct ft_session *e = &ends.v[i].s;
        const struct ft_session *r = NULL;
        for (size_t j = 0; j < ready.n; j++) {
            if (ready.v[j].s.id == e->id) {
                assert_null(r); /* at most one verdict per session */
                r = &ready.v[j].s;
            }
        }
        bool rst = (e->tcp_flags[0] | e->tcp_flags[1]) & RST;
        if (total_pkts(e) >= 5 || rst) {
            assert_non_null(r);
            assert_int_equal(e->ready, r->ready);
            assert_int_equal(r->ready, rst ? FT_READY_RST : FT_READY_PACKETS);
            assert_int_equal(r->n_stored, rst ? 4 : 5);
            assert_same_stored(r, e);
        } else {
            assert_null(r);
            assert_int_equal(e->ready, FT_READY_NOT_YET);
            assert_int_equal(e->n_stored, total_pkts(e));
        }
        if (e->proto == 17) {
            uint64_t n = total_pkts(e), with = 0;
            for (uint64_t k = 0; k < n; k++)
                with += k % 3 != 0;
            assert_int_equal(e->payload_pkts, with);
        } else {
            assert_int_equal(e->payload_pkts, 0);
        }
    }
    ft_assembler_destroy(as);
    tc_free(&ends);
    tc_free(&ready);
}

/* ready_packets 0: no verdicts even with a callback set; everything else as before, and the new
 * fields are filled. */
static void test_ready_off(void **state)
{
    (void)state;
    struct tc_collect ends, ready;
    tc_init(&ends);
    tc_init(&ready);
    struct ft_config cfg;
    base_cfg(&cfg);
    cfg.packets_per_session = 4;
    struct ft_assembler *as = mk(&cfg, &ends, &ready);
    const char *A = "10.0.0.1", *B = "10.0.0.2";
    tp_tcp(as, A, 40000, B, 80, SYN, 100, 0, sec(0));
    tp_tcp(as, B, 80, A, 40000, SYN | ACK, 500, 0, sec(0.1));
    for (int i = 0; i < 6; i++)
        tp_tcp(as, A, 40000, B, 80, ACK | PSH, 101, 10, sec(1 + i));
    tp_tcp(as, A, 40000, B, 80, FIN | ACK, 161, 0, sec(8));
    tp_tcp(as, B, 80, A, 40000, RST, 501, 0, sec(9));
    ft_assembler_finish_input(as);
    assert_int_equal(ready.n, 0);
    assert_int_equal(ends.n, 1);
    assert_int_equal(ends.v[0].s.ready, FT_READY_NOT_YET);
    assert_int_equal(ends.v[0].s.n_stored, 4);
    assert_int_equal(ends.v[0].s.payload_pkts, 6);
    assert_int_equal(total_pkts(&ends.v[0].s), 10);
    struct ft_stats st;
    ft_assembler_stats(as, &st);
    assert_int_equal(st.flows_ready, 0);
    ft_assembler_destroy(as);
    tc_free(&ends);
    tc_free(&ready);

    /* ready_packets set but no ready callback: the flow still freezes its stored packets and
     * reports how it was readied. */
    tc_init(&ends);
    base_cfg(&cfg);
    cfg.packets_per_session = 4;
    cfg.ready_packets = 2;
    as = mk(&cfg, &ends, NULL);
    for (int i = 0; i < 5; i++)
        tp_udp(as, A, 7, B, 8, 10, sec(i));
    ft_assembler_finish_input(as);
    assert_int_equal(ends.n, 1);
    assert_int_equal(ends.v[0].s.ready, FT_READY_PACKETS);
    assert_int_equal(ends.v[0].s.n_stored, 2);
    ft_assembler_destroy(as);
    tc_free(&ends);
}

/* ---- ticks ---- */

static void test_tick_times_out_idle_flows(void **state)
{
    (void)state;
    struct tc_collect c;
    tc_init(&c);
    struct ft_config cfg;
    base_cfg(&cfg);
    struct ft_assembler *as = mk(&cfg, &c, NULL);
    ft_assembler_tick(as, sec(5)); /* before any frame: starts the clock, nothing to end */
    const char *A = "10.0.0.1", *B = "10.0.0.2";
    tp_udp(as, A, 5000, B, 53, 20, sec(10));
    tp_tcp(as, A, 40000, B, 80, SYN, 1, 0, sec(10));
    tp_tcp(as, B, 80, A, 40000, SYN | ACK, 1, 0, sec(10));
    ft_assembler_tick(as, sec(39.9)); /* UDP idle 29.9 s of 30 */
    assert_int_equal(c.n, 0);
    ft_assembler_tick(as, sec(39.5)); /* a step back: ignored */
    assert_int_equal(c.n, 0);
    ft_assembler_tick(as, sec(40.5));
    assert_int_equal(c.n, 1);
    assert_int_equal(c.v[0].s.proto, 17);
    assert_int_equal(c.v[0].s.reason, FT_END_TIMEOUT);
    ft_assembler_tick(as, sec(10 + 601)); /* TCP established: 600 s */
    assert_int_equal(c.n, 2);
    assert_int_equal(c.v[1].s.proto, 6);
    assert_int_equal(c.v[1].s.reason, FT_END_TIMEOUT);
    struct ft_stats st;
    ft_assembler_stats(as, &st);
    assert_int_equal(st.flows_timed_out, 2);
    assert_int_equal(st.flows_active, 0);
    assert_int_equal(st.frames, 3); /* a tick is not a frame */
    /* The clock a tick moved is the frames' clock: a late frame of an old flow starts anew. */
    tp_udp(as, A, 6000, B, 53, 20, sec(700));
    ft_assembler_tick(as, sec(729));
    assert_int_equal(c.n, 2);
    ft_assembler_finish_input(as);
    assert_int_equal(c.n, 3);
    assert_int_equal(c.v[2].s.reason, FT_END_END_OF_INPUT);
    ft_assembler_destroy(as);
    tc_free(&c);
}

/* ---- emergency mode ---- */

static void emergency_cfg(struct ft_config *cfg)
{
    base_cfg(cfg);
    cfg->max_flows = 10;
    cfg->emergency_enter_pct = 80; /* 8 live flows */
    cfg->emergency_leave_pct = 50; /* below 5 */
    cfg->emergency_timeouts.udp_new = 3;
}

static void test_emergency_mode(void **state)
{
    (void)state;
    struct tc_collect c;
    tc_init(&c);
    struct ft_config cfg;
    emergency_cfg(&cfg);
    struct ft_assembler *as = mk(&cfg, &c, NULL);
    struct ft_stats st;
    for (int i = 0; i < 7; i++)
        tp_udp(as, "10.0.0.1", (uint16_t)(1000 + i), "10.0.0.2", 53, 10, sec(0.1 * i));
    ft_assembler_stats(as, &st);
    assert_int_equal(st.emergency_entered, 0);
    assert_int_equal(st.emergency_active, 0);
    tp_udp(as, "10.0.0.1", 1007, "10.0.0.2", 53, 10, sec(0.7)); /* the 8th: 80 % */
    ft_assembler_stats(as, &st);
    assert_int_equal(st.emergency_entered, 1);
    assert_int_equal(st.emergency_active, 1);
    assert_int_equal(c.n, 0);
    /* 3.45 s: flows idle more than the emergency udp_new (3 s) end, though 30 s apply normally:
     * 1000..1004. After the 5th, 4 flows are live and 4 < 5 ends emergency mode, so 1005 (idle
     * 3.05 s) stays. */
    tp_udp(as, "10.0.0.1", 2000, "10.0.0.2", 53, 10, sec(3.55));
    assert_int_equal(c.n, 5);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(c.v[i].s.src_port, 1000 + i);
        assert_int_equal(c.v[i].s.reason, FT_END_TIMEOUT);
    }
    ft_assembler_stats(as, &st);
    assert_int_equal(st.emergency_entered, 1);
    assert_int_equal(st.emergency_active, 0);
    assert_int_equal(st.flows_timed_out, 5);
    assert_int_equal(st.flows_active, 4);
    /* Normal timeouts again: nothing more ends at 20 s. */
    ft_assembler_tick(as, sec(20));
    assert_int_equal(c.n, 5);
    /* Back in at 8 flows: the sweep on entering ends the 4 old flows (idle more than 3 s) at
     * once, which leaves emergency mode again. */
    for (int i = 0; i < 4; i++)
        tp_udp(as, "10.0.0.1", (uint16_t)(3000 + i), "10.0.0.2", 53, 10, sec(20));
    ft_assembler_stats(as, &st);
    assert_int_equal(st.emergency_entered, 2);
    assert_int_equal(st.emergency_active, 0);
    assert_int_equal(c.n, 9);
    for (int i = 5; i < 9; i++)
        assert_int_equal(c.v[i].s.reason, FT_END_TIMEOUT);
    /* A third time, with nothing idle enough to end: it stays in. */
    for (int i = 0; i < 4; i++)
        tp_udp(as, "10.0.0.1", (uint16_t)(4000 + i), "10.0.0.2", 53, 10, sec(20.5));
    ft_assembler_stats(as, &st);
    assert_int_equal(st.emergency_entered, 3);
    assert_int_equal(st.emergency_active, 1);
    assert_int_equal(c.n, 9);
    ft_assembler_finish_input(as); /* every flow ends: emergency mode too */
    ft_assembler_stats(as, &st);
    assert_int_equal(st.emergency_active, 0);
    ft_assembler_destroy(as);
    tc_free(&c);

    /* The same traffic without emergency mode: nothing times out before 30 s. */
    tc_init(&c);
    emergency_cfg(&cfg);
    cfg.emergency_enter_pct = 0;
    as = mk(&cfg, &c, NULL);
    for (int i = 0; i < 8; i++)
        tp_udp(as, "10.0.0.1", (uint16_t)(1000 + i), "10.0.0.2", 53, 10, sec(0.1 * i));
    tp_udp(as, "10.0.0.1", 2000, "10.0.0.2", 53, 10, sec(3.55));
    assert_int_equal(c.n, 0);
    ft_assembler_stats(as, &st);
    assert_int_equal(st.emergency_entered, 0);
    ft_assembler_finish_input(as);
    ft_assembler_destroy(as);
    tc_free(&c);
}

/* A flood faster than any timeout: the full table still evicts the oldest, in emergency mode. */
static void test_emergency_flood_evicts(void **state)
{
    (void)state;
    struct tc_collect c;
    tc_init(&c);
    struct ft_config cfg;
    emergency_cfg(&cfg);
    struct ft_assembler *as = mk(&cfg, &c, NULL);
    for (int i = 0; i < 100; i++)
        tp_udp(as, "10.0.0.1", (uint16_t)(1000 + i), "10.0.0.2", 53, 10, sec(0.001 * i));
    struct ft_stats st;
    ft_assembler_stats(as, &st);
    assert_int_equal(st.emergency_entered, 1);
    assert_int_equal(st.emergency_active, 1);
    assert_int_equal(st.flows_evicted, 90);
    assert_int_equal(st.flows_active, 10);
    assert_int_equal(c.n, 90);
    for (int i = 0; i < 90; i++) {
        assert_int_equal(c.v[i].s.src_port, 1000 + i);
        assert_int_equal(c.v[i].s.reason, FT_END_EVICTED);
    }
    ft_assembler_finish_input(as);
    ft_assembler_destroy(as);
    tc_free(&c);
}

/* One event log for both callbacks, to see in which order things happened. */
struct ev_log {
    char kind[64];
    uint16_t port[64];
    int n;
};

static void ev_ready(const struct ft_session *s, int worker, void *user)
{
    (void)worker;
    struct ev_log *l = user;
    if (l->n < 64) {
        l->kind[l->n] = 'R';
        l->port[l->n++] = s->src_port;
    }
}

static void ev_end(const struct ft_session *s, int worker, void *user)
{
    (void)worker;
    struct ev_log *l = user;
    if (l->n < 64) {
        l->kind[l->n] = s->reason == FT_END_TIMEOUT ? 'T' : 'E';
        l->port[l->n++] = s->src_port;
    }
}

/* In emergency mode a sweep runs within a few packets, not only every few hundred or at the
 * end of a feed call: within one call, flows idle past the emergency timeout end before a busy
 * flow's 20th packet. */
static void test_emergency_sweeps_promptly(void **state)
{
    (void)state;
    struct ev_log log;
    memset(&log, 0, sizeof log);
    struct ft_config cfg;
    base_cfg(&cfg);
    cfg.max_flows = 10;
    cfg.emergency_enter_pct = 50; /* 5 flows */
    cfg.emergency_leave_pct = 10; /* below 1 */
    cfg.emergency_timeouts.udp_new = 1;
    cfg.packets_per_session = 20;
    cfg.ready_packets = 20;
    char err[256];
    struct ft_assembler *as = ft_assembler_create(&cfg, ev_end, &log, err, sizeof err);
    assert_non_null(as);
    ft_assembler_on_ready(as, ev_ready, &log);
    enum { N = 5 + 40 };
    struct tp_frame *fr = calloc(N, sizeof *fr);
    struct cap_packet pk[N];
    for (int i = 0; i < N; i++) {
        if (i < 5)
            tp_build(&fr[i], 17, "10.0.0.1", (uint16_t)(1000 + i), "10.0.0.2", 53, 0, 0, 10, 0);
        else
            tp_build(&fr[i], 17, "10.0.0.1", 2000, "10.0.0.2", 53, 0, 0, 10,
                     sec(2) + sec(0.001) * i);
        pk[i] = fr[i].pkt;
        pk[i].data = fr[i].bytes;
    }
    ft_assembler_feed_packets(as, pk, N);
    /* 5 timeouts, then the busy flow's verdict; its end comes with finish_input. */
    assert_int_equal(log.n, 6);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(log.kind[i], 'T');
        assert_int_equal(log.port[i], 1000 + i);
    }
    assert_int_equal(log.kind[5], 'R');
    assert_int_equal(log.port[5], 2000);
    ft_assembler_finish_input(as);
    assert_int_equal(log.n, 7);
    ft_assembler_destroy(as);
    free(fr);
}

/* ---- stats, names, config ---- */

static void test_memory_bytes(void **state)
{
    (void)state;
    struct tc_collect c;
    tc_init(&c);
    struct ft_config cfg;
    base_cfg(&cfg);
    cfg.max_flows = 1u << 16;
    cfg.packets_per_session = 0;
    struct ft_assembler *as = mk(&cfg, &c, NULL);
    struct ft_stats st;
    ft_assembler_stats(as, &st);
    assert_int_equal(st.memory_bytes, 0); /* slabs are carved on demand */
    tp_udp(as, "10.0.0.1", 1, "10.0.0.2", 2, 10, 0);
    ft_assembler_stats(as, &st);
    assert_int_equal(st.memory_bytes, 2u << 20); /* one slab */
    /* Records are 3 cache lines with K = 0: a 2 MiB slab holds 10922 of them. */
    for (int i = 0; i < 12000; i++)
        tp_udp(as, "10.0.1.1", (uint16_t)(1000 + i), "10.0.0.2", 2, 10, 0);
    ft_assembler_stats(as, &st);
    assert_int_equal(st.memory_bytes, 4u << 20);
    ft_assembler_finish_input(as);
    ft_assembler_stats(as, &st);
    assert_int_equal(st.memory_bytes, 4u << 20); /* kept for reuse, not given back */
    ft_assembler_destroy(as);
    tc_free(&c);
}

/* A QSBR reader that stays online and never reports a quiescent state: while it waits, no grace
 * period can end, so no ended flow's record comes back for reuse. */
struct grace_stall {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool online, release;
    int64_t release_ms; /* > 0: the thread goes offline by itself that long after it started */
};

static void *grace_stall_main(void *arg)
{
    struct grace_stall *g = arg;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += g->release_ms / 1000;
    until.tv_nsec += g->release_ms % 1000 * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    rcu_register_thread();
    pthread_mutex_lock(&g->lock);
    g->online = true;
    pthread_cond_broadcast(&g->cond);
    while (!g->release) {
        if (g->release_ms == 0)
            pthread_cond_wait(&g->cond, &g->lock);
        else if (pthread_cond_timedwait(&g->cond, &g->lock, &until) != 0)
            break;
    }
    pthread_mutex_unlock(&g->lock);
    rcu_unregister_thread();
    return NULL;
}

static void grace_stall_start(struct grace_stall *g, int64_t release_ms)
{
    memset(g, 0, sizeof *g);
    g->release_ms = release_ms;
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->cond, NULL);
    assert_int_equal(pthread_create(&g->thread, NULL, grace_stall_main, g), 0);
    pthread_mutex_lock(&g->lock);
    while (!g->online)
        pthread_cond_wait(&g->cond, &g->lock);
    pthread_mutex_unlock(&g->lock);
}

static void grace_stall_end(struct grace_stall *g)
{
    pthread_mutex_lock(&g->lock);
    g->release = true;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
    pthread_join(g->thread, NULL);
    pthread_cond_destroy(&g->cond);
    pthread_mutex_destroy(&g->lock);
}

/* The stall of the test below: its teardown ends it even when an assertion failed, or every
 * later grace period (the next test's destroy) would wait forever. */
static struct grace_stall the_stall;

static int grace_stall_teardown(void **state)
{
    (void)state;
    if (the_stall.online && !the_stall.release)
        grace_stall_end(&the_stall);
    return 0;
}

/* The i-th flow of a block: source address net.(i / 50000).1, source port 1000 + i % 50000. */
static void udp_flow_packet(struct ft_assembler *as, const char *net, int i)
{
    char addr[32];
    snprintf(addr, sizeof addr, "%s.%d.1", net, i / 50000);
    tp_udp(as, addr, (uint16_t)(1000 + i % 50000), "10.0.0.2", 53, 10, 0);
}

/* One packet of each of the flows 0 .. n-1 of a block. */
static void feed_new_flows(struct ft_assembler *as, const char *net, int n)
{
    for (int i = 0; i < n; i++)
        udp_flow_packet(as, net, i);
}

/* What the records of a one-worker assembler may take: 1.5 × max_flows of them, in whole slabs
 * (whose first 64 bytes are the slab's), plus one slab of rounding. */
static uint64_t record_memory_bound(const struct ft_assembler *as, uint64_t max_flows)
{
    const uint64_t slab = 2u << 20, size = ft_assembler_flow_size(as);
    /* half of max_flows in flight fits no single slab here, so that half is the slack */
    assert_true(max_flows / 2 * size > slab);
    return (max_flows * 3 / 2 * size + slab - 65) / (slab - 64) * slab + slab;
}

/* One worker of 65,536 flows with records of 3 cache lines (K = 0), for the record limit's tests. */
#define BOUNDED_FLOWS (1u << 16)
static struct ft_assembler *mk_bounded(struct tc_collect *c)
{
    tc_init(c);
    struct ft_config cfg;
    base_cfg(&cfg);
    cfg.max_flows = BOUNDED_FLOWS;
    cfg.packets_per_session = 0;
    return mk(&cfg, c, NULL);
}

/* max_flows bounds memory even when grace periods stall: a worker carves at most its share and
 * half as many again, then waits for ended flows' records to come back, and after half a second
 * in vain refuses new flows (counted) rather than grow; packets of live flows go on, and so do
 * new flows once the ended ones come back. */
static void test_memory_bounded_while_grace_stalls(void **state)
{
    (void)state;
    struct tc_collect c;
    struct ft_assembler *as = mk_bounded(&c);
    const uint64_t cap = BOUNDED_FLOWS, limit = cap + cap / 2;
    const uint64_t mem_bound = record_memory_bound(as, cap);

    grace_stall_start(&the_stall, 0);
    const int first = 150000;
    feed_new_flows(as, "10.1", first);
    struct ft_stats st;
    ft_assembler_stats(as, &st);
    assert_int_equal(st.flows_created, limit);
    assert_int_equal(st.flows_active, cap);       /* refusals evict nothing */
    assert_int_equal(st.flows_evicted, limit - cap);
    assert_int_equal(st.refused_packets, first - limit);
    assert_true(st.memory_bytes <= mem_bound);
    const uint64_t mem_stalled = st.memory_bytes;

    /* still stalled: more new flows are refused, memory stays; a live flow's packet is taken */
    feed_new_flows(as, "10.2", 10000);
    udp_flow_packet(as, "10.1", (int)limit - 1); /* the last flow created */
    ft_assembler_stats(as, &st);
    assert_int_equal(st.flows_created, limit);
    assert_int_equal(st.refused_packets, first - limit + 10000);
    assert_int_equal(st.frames, first + 10000 + 1);
    assert_int_equal(st.memory_bytes, mem_stalled);

    /* grace periods end: the ended flows' records serve new flows, without more memory */
    grace_stall_end(&the_stall);
    rcu_barrier();
    feed_new_flows(as, "10.3", 20000);
    ft_assembler_stats(as, &st);
    assert_int_equal(st.flows_created, limit + 20000);
    assert_int_equal(st.refused_packets, first - limit + 10000);
    assert_int_equal(st.flows_active, cap);
    assert_int_equal(st.memory_bytes, mem_stalled);
    ft_assembler_destroy(as);
    tc_free(&c);
}

/* A grace period that is merely slow (a thread online for 400 ms without a quiescent state):
 * the worker at its record limit waits for the ended flows' records instead of refusing, so no
 * flow is lost and no memory added. */
static void test_records_waited_for_while_grace_is_slow(void **state)
{
    (void)state;
    struct tc_collect c;
    struct ft_assembler *as = mk_bounded(&c);
    const uint64_t cap = BOUNDED_FLOWS, limit = cap + cap / 2;
    feed_new_flows(as, "10.4", (int)limit);
    rcu_barrier(); /* the ended flows' records are back: the stall below holds back later ones */

    grace_stall_start(&the_stall, 400);
    feed_new_flows(as, "10.5", (int)limit); /* uses those, carves the rest, then has to wait */
    struct ft_stats st;
    ft_assembler_stats(as, &st);
    assert_int_equal(st.flows_created, 2 * limit);
    assert_int_equal(st.refused_packets, 0);
    assert_int_equal(st.flows_active, cap);
    assert_true(st.memory_bytes <= record_memory_bound(as, cap));
    grace_stall_end(&the_stall);
    ft_assembler_destroy(as);
    tc_free(&c);
}

static void test_ready_config_errors(void **state)
{
    (void)state;
    struct tc_collect c;
    tc_init(&c);
    struct ft_config cfg;
    char err[256];
    base_cfg(&cfg);
    cfg.packets_per_session = 8;
    cfg.ready_packets = 9;
    assert_null(ft_assembler_create(&cfg, tc_on_session, &c, err, sizeof err));
    assert_non_null(strstr(err, "ready_packets (9)"));
    assert_non_null(strstr(err, "packets_per_session (8)"));
    base_cfg(&cfg);
    cfg.packets_per_session = 0;
    cfg.ready_packets = 1;
    assert_null(ft_assembler_create(&cfg, tc_on_session, &c, err, sizeof err));
    assert_non_null(strstr(err, "ready_packets"));
    base_cfg(&cfg);
    cfg.emergency_enter_pct = 101;
    assert_null(ft_assembler_create(&cfg, tc_on_session, &c, err, sizeof err));
    assert_non_null(strstr(err, "emergency_enter_pct"));
    base_cfg(&cfg);
    cfg.emergency_enter_pct = 70;
    cfg.emergency_leave_pct = 70;
    assert_null(ft_assembler_create(&cfg, tc_on_session, &c, err, sizeof err));
    assert_non_null(strstr(err, "emergency_leave_pct (70)"));
    assert_non_null(strstr(err, "emergency_enter_pct (70)"));
    base_cfg(&cfg);
    cfg.emergency_timeouts.tcp_closed = NAN;
    assert_null(ft_assembler_create(&cfg, tc_on_session, &c, err, sizeof err));
    assert_non_null(strstr(err, "emergency_timeouts.tcp_closed"));
    base_cfg(&cfg);
    cfg.timeouts.udp_new = -1;
    assert_null(ft_assembler_create(&cfg, tc_on_session, &c, err, sizeof err));
    assert_non_null(strstr(err, "timeouts.udp_new"));

    /* Valid edges: K = ready, enter 100 with leave 99, enter 1 with leave 0, leave ignored while
     * emergency mode is off. */
    const uint32_t ok[4][4] = {{8, 8, 0, 0}, {8, 1, 100, 99}, {8, 0, 1, 0}, {8, 0, 0, 50}};
    for (int i = 0; i < 4; i++) {
        base_cfg(&cfg);
        cfg.packets_per_session = ok[i][0];
        cfg.ready_packets = ok[i][1];
        cfg.emergency_enter_pct = ok[i][2];
        cfg.emergency_leave_pct = ok[i][3];
        struct ft_assembler *as = ft_assembler_create(&cfg, tc_on_session, &c, err, sizeof err);
        if (as == NULL)
            fail_msg("config %d: %s", i, err);
        ft_assembler_destroy(as);
    }
    tc_free(&c);
}

static void test_ready_names_and_defaults(void **state)
{
    (void)state;
    assert_string_equal(ft_ready_trigger_name(FT_READY_NOT_YET), "not_yet");
    assert_string_equal(ft_ready_trigger_name(FT_READY_PACKETS), "packets");
    assert_string_equal(ft_ready_trigger_name(FT_READY_FIN), "fin");
    assert_string_equal(ft_ready_trigger_name(FT_READY_RST), "rst");
    assert_string_equal(ft_ready_trigger_name((enum ft_ready_trigger)9), "unknown");
    struct ft_config cfg;
    ft_config_defaults(&cfg);
    assert_int_equal(cfg.ready_packets, 0);
    assert_int_equal(cfg.emergency_enter_pct, 0);
    assert_int_equal(cfg.emergency_leave_pct, 0);
    const struct ft_timeouts *e = &cfg.emergency_timeouts;
    assert_true(e->tcp_new == 5 && e->tcp_established == 100 && e->tcp_closed == 10);
    assert_true(e->udp_new == 10 && e->udp_established == 100);
    assert_true(e->other_new == 10 && e->other_established == 100);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ready_at_k_packets),
        cmocka_unit_test(test_ready_on_fin_and_rst),
        cmocka_unit_test(test_ready_once_per_session),
        cmocka_unit_test(test_ready_off),
        cmocka_unit_test(test_tick_times_out_idle_flows),
        cmocka_unit_test(test_emergency_mode),
        cmocka_unit_test(test_emergency_flood_evicts),
        cmocka_unit_test(test_emergency_sweeps_promptly),
        cmocka_unit_test(test_memory_bytes),
        cmocka_unit_test_teardown(test_memory_bounded_while_grace_stalls, grace_stall_teardown),
        cmocka_unit_test_teardown(test_records_waited_for_while_grace_is_slow, grace_stall_teardown),
        cmocka_unit_test(test_ready_config_errors),
        cmocka_unit_test(test_ready_names_and_defaults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
