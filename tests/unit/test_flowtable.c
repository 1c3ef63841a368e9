/* test_flowtable.c — unit tests of flowtable/ on hand-built packets (no decoder, no files): the
 * canonical key and hash, TCP state and session ends (FIN, RST, port reuse), timeouts in packet
 * time, time going backwards, the max_flows cap, the session buffer, config errors. */
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

static void base_cfg(struct ft_config *cfg)
{
    ft_config_defaults(cfg);
    cfg->max_flows = 1024;
    cfg->hash_seed = 0x1234567;
}

static struct ft_assembler *mk(const struct ft_config *cfg, struct tc_collect *c)
{
    char err[256];
    struct ft_assembler *as = ft_assembler_create(cfg, tc_on_session, c, err, sizeof err);
    if (as == NULL)
        fail_msg("create: %s", err);
    return as;
}

static int64_t sec(double s)
{
    return (int64_t)llround(s * 1e9);
}

/* ---- key ---- */

static void test_key_symmetric(void **state)
{
    (void)state;
    struct tp_frame a, b;
    tp_build(&a, 6, "10.0.0.1", 40000, "10.0.0.2", 80, SYN, 1, 0, 0);
    tp_build(&b, 6, "10.0.0.2", 80, "10.0.0.1", 40000, SYN | ACK, 1, 0, 0);
    struct ft_key ka, kb;
    int da = -1, db = -1;
    assert_true(ft_key_from_packet(&a.pkt, &ka, &da));
    assert_true(ft_key_from_packet(&b.pkt, &kb, &db));
    assert_memory_equal(&ka, &kb, sizeof ka);
    assert_int_equal(da, 0);
    assert_int_equal(db, 1);
    assert_int_equal(ka.port_lo, 40000);
    assert_int_equal(ka.port_hi, 80);
    assert_int_equal(ka.proto, 6);
    assert_int_equal(ka.ip_version, 4);
    assert_int_equal(ka.vlan, 0);
    assert_true(ft_key_hash(&ka, 1) == ft_key_hash(&kb, 1));
    assert_true(ft_key_hash(&ka, 1) != ft_key_hash(&ka, 2));

    /* Same address both sides: the port decides the order. */
    tp_build(&a, 17, "10.0.0.7", 90, "10.0.0.7", 80, 0, 0, 0, 0);
    tp_build(&b, 17, "10.0.0.7", 80, "10.0.0.7", 90, 0, 0, 0, 0);
    assert_true(ft_key_from_packet(&a.pkt, &ka, &da));
    assert_true(ft_key_from_packet(&b.pkt, &kb, &db));
    assert_memory_equal(&ka, &kb, sizeof ka);
    assert_int_equal(da, 1);
    assert_int_equal(db, 0);
    assert_int_equal(ka.port_lo, 80);

    /* IPv6, innermost VLAN, no bytes needed for a complete decode. */
    struct cap_packet p6;
    memset(&p6, 0, sizeof p6);
    p6.reason = CAP_DECODE_OK;
    p6.layers.l3_off = 18;
    p6.layers.l4_off = 58;
    p6.layers.ip_version = 6;
    p6.layers.l4_proto = 17;
    p6.vlan_count = 2;
    p6.vlan_ids[0] = 100;
    p6.vlan_ids[1] = 200;
    inet_pton(AF_INET6, "2001:db8::2", p6.src_addr);
    inet_pton(AF_INET6, "2001:db8::1", p6.dst_addr);
    p6.src_port = 5353;
    p6.dst_port = 5353;
    assert_true(ft_key_from_packet(&p6, &ka, &da));
    assert_int_equal(da, 1);
    assert_int_equal(ka.vlan, 200);
    assert_int_equal(ka.ip_version, 6);
    uint8_t lo[16];
    inet_pton(AF_INET6, "2001:db8::1", lo);
    assert_memory_equal(ka.addr_lo, lo, 16);

    /* No flow: not IP, a later fragment, an L4 header cut before its ports. */
    struct cap_packet q = a.pkt;
    q.reason = CAP_DECODE_NOT_IP;
    q.layers.l3_off = CAP_ABSENT;
    assert_false(ft_key_from_packet(&q, &ka, &da));
    q = a.pkt;
    q.reason = CAP_DECODE_FRAGMENT;
    q.frag = CAP_FRAG_LATER;
    assert_false(ft_key_from_packet(&q, &ka, &da));
    q = a.pkt;
    q.reason = CAP_DECODE_TRUNCATED_L4;
    q.layers.l4_off = CAP_ABSENT;
    q.caplen = 14 + 20 + 3;
    assert_false(ft_key_from_packet(&q, &ka, &da));
    /* ...but one cut after its ports is a flow packet, keyed from the bytes. */
    q.caplen = 14 + 20 + 10;
    q.src_port = q.dst_port = 0;
    assert_true(ft_key_from_packet(&q, &kb, &db));
    assert_int_equal(db, 1);
    assert_int_equal(kb.port_lo, 80);
    assert_int_equal(kb.port_hi, 90);
    assert_int_equal(ft_l4_offset(&q), 34);
}

static void test_hash_spread(void **state)
{
    (void)state;
    /* 65536 keys differing in one port and one address byte: a good 64-bit hash fills about
     * 1 - 1/e of 65536 buckets by its low 16 bits and as many by its high 16 bits. */
    enum { N = 65536 };
    uint8_t *lo = calloc(N, 1), *hi = calloc(N, 1);
    int used_lo = 0, used_hi = 0;
    struct ft_key k;
    memset(&k, 0, sizeof k);
    k.proto = 6;
    k.ip_version = 4;
    k.addr_lo[0] = 10;
    k.addr_hi[0] = 192;
    for (int i = 0; i < N; i++) {
        k.port_lo = (uint16_t)(1024 + (i & 0x3fff));
        k.addr_hi[3] = (uint8_t)(i >> 14);
        uint64_t h = ft_key_hash(&k, 99);
        used_lo += !lo[h & 0xffff]++;
        used_hi += !hi[h >> 48]++;
    }
    assert_true(used_lo > 39500 && used_lo < 43300);
    assert_true(used_hi > 39500 && used_hi < 43300);
    free(lo);
    free(hi);
}

/* ---- TCP sessions ---- */

/* Handshake, one data segment each way, FIN, FIN, last ACK. */
static void feed_connection(struct ft_assembler *as, const char *c, const char *s, uint16_t cport,
                            uint32_t isn, double t0)
{
    tp_tcp(as, c, cport, s, 80, SYN, isn, 0, sec(t0 + 0.0));
    tp_tcp(as, s, 80, c, cport, SYN | ACK, 5000, 0, sec(t0 + 0.1));
    tp_tcp(as, c, cport, s, 80, ACK, isn + 1, 0, sec(t0 + 0.2));
    tp_tcp(as, c, cport, s, 80, PSH | ACK, isn + 1, 100, sec(t0 + 0.3));
    tp_tcp(as, s, 80, c, cport, PSH | ACK, 5001, 200, sec(t0 + 0.4));
    tp_tcp(as, c, cport, s, 80, FIN | ACK, isn + 101, 0, sec(t0 + 0.5));
    tp_tcp(as, s, 80, c, cport, FIN | ACK, 5201, 0, sec(t0 + 0.6));
    tp_tcp(as, c, cport, s, 80, ACK, isn + 102, 0, sec(t0 + 0.7));
}

static void test_tcp_handshake_close(void **state)
{
    (void)state;
    /* Once with the client on the low side of the key, once on the high side. */
    const char *clients[2] = {"10.0.0.1", "10.0.0.9"};
    for (int k = 0; k < 2; k++) {
        struct tc_collect c;
        tc_init(&c);
        struct ft_config cfg;
        base_cfg(&cfg);
        struct ft_assembler *as = mk(&cfg, &c);
        feed_connection(as, clients[k], "10.0.0.5", 40000, 1000, 1.0);
        /* Closed, but the session lingers for late packets until a SYN, the closed timeout or
         * the end of input. */
        assert_int_equal(c.n, 0);
        struct ft_stats st;
        ft_assembler_stats(as, &st);
        assert_int_equal(st.frames, 8);
        assert_int_equal(st.flows_created, 1);
        assert_int_equal(st.flows_active, 1);
        ft_assembler_finish_input(as);
        assert_int_equal(c.n, 1);
        const struct ft_session *s = &c.v[0].s;
        char a[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, s->src_addr, a, sizeof a);
        assert_string_equal(a, clients[k]);
        assert_int_equal(s->src_port, 40000);
        assert_int_equal(s->dst_port, 80);
        assert_int_equal(s->proto, 6);
        assert_int_equal(s->pkts[0], 5);
        assert_int_equal(s->pkts[1], 3);
        assert_int_equal(s->bytes[0], 5 * 54 + 100);
        assert_int_equal(s->bytes[1], 3 * 54 + 200);
        assert_int_equal(s->tcp_flags[0], SYN | ACK | PSH | FIN);
        assert_int_equal(s->tcp_flags[1], SYN | ACK | PSH | FIN);
        assert_int_equal(s->tcp_state, FT_TCP_CLOSED);
        assert_int_equal(s->reason, FT_END_CLOSED);
        assert_int_equal(s->first_ns, sec(1.0));
        assert_int_equal(s->last_ns, sec(1.7));
        assert_int_equal(s->first_frame, 1);
        assert_int_equal(s->id, 1);
        assert_int_equal(s->linktype, CAP_LINK_EN10MB);
        assert_int_equal(s->n_stored, 8);
        static const uint8_t dirs[8] = {0, 1, 0, 0, 1, 0, 1, 0};
        for (int i = 0; i < 8; i++)
            assert_int_equal(s->stored[i].dir, dirs[i]);
        ft_assembler_stats(as, &st);
        assert_int_equal(st.flows_active, 0);
        ft_assembler_destroy(as);
        tc_free(&c);
    }
}

static void test_tcp_closed_linger(void **state)
{
    (void)state;
    struct tc_collect c;
    tc_init(&c);
    struct ft_config cfg;
    base_cfg(&cfg);
    struct ft_assembler *as = mk(&cfg, &c);
    feed_connection(as, "10.0.0.1", "10.0.0.5", 40000, 1000, 0);
    /* A retransmitted last ACK 30 s later still belongs to it (closed timeout 60 s). */
    tp_tcp(as, "10.0.0.1", 40000, "10.0.0.5", 80, ACK, 1102, 0, sec(30.7));
    assert_int_equal(c.n, 0);
    /* Another flow 61 s after that moves the clock: the sweep ends the closed session. */
    tp_udp(as, "10.1.0.1", 53, "10.1.0.2", 53, 10, sec(91.8));
    assert_int_equal(c.n, 1);
    assert_int_equal(c.v[0].s.pkts[0], 6);
    assert_int_equal(c.v[0].s.reason, FT_END_CLOSED);
    assert_int_equal(c.v[0].s.last_ns, sec(30.7));
    struct ft_stats st;
    ft_assembler_stats(as, &st);
    assert_int_equal(st.flows_timed_out, 0);
    ft_assembler_finish_input(as);
    assert_int_equal(c.n, 2);
    assert_int_equal(c.v[1].s.reason, FT_END_END_OF_INPUT);
    ft_assembler_destroy(as);
    tc_free(&c);
}

static void test_tcp_rst(void **state)
{
    (void)state;
    struct tc_collect c;
    tc_init(&c);
    struct ft_config cfg;
    base_cfg(&cfg);
    struct ft_assembler *as = mk(&cfg, &c);
    const char *C = "10.0.0.1", *S = "10.0.0.2";
    tp_tcp(as, C, 3000, S, 445, SYN, 100, 0, sec(0.0));
    tp_tcp(as, S, 445, C, 3000, RST | ACK, 0, 0, sec(0.1));
    /* A SYN retransmitted with the same ISN after the RST stays in the session (tshark). */
    tp_tcp(as, C, 3000, S, 445, SYN, 100, 0, sec(0.5));
    tp_tcp(as, S, 445, C, 3000, RST | ACK, 0, 0, sec(0.6));
    tp_tcp(as, C, 3000, S, 445, ACK, 101, 0, sec(0.7));
    assert_int_equal(c.n, 0);
    /* A SYN with a new ISN starts a new session. */
    tp_tcp(as, C, 3000, S, 445, SYN, 999, 0, sec(1.0));
    assert_int_equal(c.n, 1);
    const struct ft_session *s = &c.v[0].s;
    assert_int_equal(s->pkts[0], 3);
    assert_int_equal(s->pkts[1], 2);
    assert_int_equal(s->tcp_state, FT_TCP_CLOSED);
    assert_int_equal(s->reason, FT_END_CLOSED);
    assert_int_equal(s->tcp_flags[1], RST | ACK);
    tp_tcp(as, S, 445, C, 3000, SYN | ACK, 7000, 0, sec(1.1));
    ft_assembler_finish_input(as);
    assert_int_equal(c.n, 2);
    s = &c.v[1].s;
    assert_int_equal(s->pkts[0], 1);
    assert_int_equal(s->pkts[1], 1);
    assert_int_equal(s->first_frame, 6);
    assert_int_equal(s->tcp_state, FT_TCP_ESTABLISHED);
    assert_int_equal(s->reason, FT_END_END_OF_INPUT);
    struct ft_stats st;
    ft_assembler_stats(as, &st);
    assert_int_equal(st.port_reuse_splits, 1);
    assert_int_equal(st.flows_created, 2);
    ft_assembler_destroy(as);
    tc_free(&c);
}

static void test_port_reuse_split_vs_merge(void **state)
{
    (void)state;
    for (int mode = 0; mode < 2; mode++) {
        struct tc_collect c;
        tc_init(&c);
        struct ft_config cfg;
        base_cfg(&cfg);
        cfg.port_reuse = mode ? FT_PORT_REUSE_MERGE : FT_PORT_REUSE_SPLIT;
        struct ft_assembler *as = mk(&cfg, &c);
        feed_connection(as, "10.0.0.1", "10.0.0.2", 50000, 1000, 0);
        feed_connection(as, "10.0.0.1", "10.0.0.2", 50000, 9000, 10);
        /* The server side may reuse the pair too: a SYN from it is a new session in split
         * mode (its first SYN-ACK set another sequence base). */
        tp_tcp(as, "10.0.0.2", 80, "10.0.0.1", 50000, SYN, 4242, 0, sec(20));
        ft_assembler_finish_input(as);
        struct ft_stats st;
        ft_assembler_stats(as, &st);
        if (mode == 0) {
            assert_int_equal(c.n, 3);
            assert_int_equal(st.port_reuse_splits, 2);
            assert_int_equal(c.v[0].s.pkts[0] + c.v[0].s.pkts[1], 8);
            assert_int_equal(c.v[1].s.pkts[0] + c.v[1].s.pkts[1], 8);
            assert_int_equal(c.v[1].s.first_frame, 9);
            assert_int_equal(c.v[0].s.reason, FT_END_CLOSED);
            assert_int_equal(c.v[1].s.reason, FT_END_CLOSED);
            char a[INET_ADDRSTRLEN];
            inet_ntop(AF_INET, c.v[2].s.src_addr, a, sizeof a);
            assert_string_equal(a, "10.0.0.2");
            assert_int_equal(c.v[2].s.reason, FT_END_END_OF_INPUT);
        } else {
            assert_int_equal(c.n, 1);
            assert_int_equal(st.port_reuse_splits, 0);
            assert_int_equal(c.v[0].s.pkts[0], 10);
            assert_int_equal(c.v[0].s.pkts[1], 7);
            /* Merge mode has no "closed" ending. */
            assert_int_equal(c.v[0].s.reason, FT_END_END_OF_INPUT);
            assert_int_equal(c.v[0].s.tcp_state, FT_TCP_CLOSED);
        }
        ft_assembler_destroy(as);
        tc_free(&c);
    }
}

/* ---- timeouts in packet time ---- */

static void test_udp_timeout(void **state)
{
    (void)state;
    struct tc_collect c;
    tc_init(&c);
    struct ft_config cfg;
    base_cfg(&cfg);
    struct ft_assembler *as = mk(&cfg, &c);
    const char *A = "10.0.0.1", *B = "10.0.0.2";
    tp_udp(as, A, 5000, B, 53, 20, sec(0));
    tp_udp(as, A, 5000, B, 53, 20, sec(10));
    tp_udp(as, A, 5000, B, 53, 20, sec(41)); /* idle 31 s > udp new 30 s */
    assert_int_equal(c.n, 1);
    assert_int_equal(c.v[0].s.pkts[0], 2);
    assert_int_equal(c.v[0].s.reason, FT_END_TIMEOUT);
    tp_udp(as, B, 53, A, 5000, 40, sec(42));          /* both ways: udp established 300 s */
    tp_udp(as, A, 5000, B, 53, 20, sec(42 + 299));    /* idle 299 s: same session */
    tp_udp(as, A, 5000, B, 53, 20, sec(42 + 299 + 301));
    assert_int_equal(c.n, 2);
    assert_int_equal(c.v[1].s.pkts[0], 2);
    assert_int_equal(c.v[1].s.pkts[1], 1);
    assert_int_equal(c.v[1].s.first_frame, 3);
    assert_int_equal(c.v[1].s.reason, FT_END_TIMEOUT);
    /* A sweep ends an idle flow without a packet of its own: another flow moves the clock. */
    tp_udp(as, "10.9.0.1", 1, "10.9.0.2", 2, 0, sec(642 + 31));
    assert_int_equal(c.n, 3);
    assert_int_equal(c.v[2].s.pkts[0], 1);
    assert_int_equal(c.v[2].s.reason, FT_END_TIMEOUT);
    ft_assembler_finish_input(as);
    assert_int_equal(c.n, 4);
    struct ft_stats st;
    ft_assembler_stats(as, &st);
    assert_int_equal(st.flows_timed_out, 3);
    ft_assembler_destroy(as);
    tc_free(&c);

    /* Merge mode: no timeouts unless asked for. */
    for (int ask = 0; ask < 2; ask++) {
        tc_init(&c);
        base_cfg(&cfg);
        cfg.port_reuse = FT_PORT_REUSE_MERGE;
        cfg.merge_timeouts = ask;
        as = mk(&cfg, &c);
        tp_udp(as, A, 5000, B, 53, 20, sec(0));
        tp_udp(as, A, 5000, B, 53, 20, sec(1000));
        ft_assembler_finish_input(as);
        assert_int_equal(c.n, ask ? 2 : 1);
        ft_assembler_destroy(as);
        tc_free(&c);
    }
}

static void test_time_backwards(void **state)
{
    (void)state;
    struct tc_collect c;
    tc_init(&c);
    struct ft_config cfg;
    base_cfg(&cfg);
    struct ft_assembler *as = mk(&cfg, &c);
    const char *A = "10.0.0.1", *B = "10.0.0.2";
    double t0 = 1.4e9; /* 2014 */
    tp_udp(as, A, 7000, B, 7001, 10, sec(t0));
    tp_udp(as, B, 7001, A, 7000, 10, sec(t0 + 1));
    /* Back to 1970 (a concatenation of captures): no split, no expiry, no crash. */
    tp_udp(as, A, 7000, B, 7001, 10, sec(5));
    tp_tcp(as, "10.5.0.1", 1234, "10.5.0.2", 80, SYN, 1, 0, sec(6));
    tp_udp(as, B, 7001, A, 7000, 10, sec(6));
    tp_udp(as, A, 7000, B, 7001, 10, -sec(100)); /* before 1970 */
    tp_tcp(as, "10.5.0.2", 80, "10.5.0.1", 1234, SYN | ACK, 9, 0, -sec(99));
    assert_int_equal(c.n, 0);
    /* The clock goes on from the new timestamps: timeouts still work after the jump back. */
    tp_udp(as, "10.7.0.1", 9, "10.7.0.2", 9, 0, -sec(99));
    tp_udp(as, "10.7.0.1", 9, "10.7.0.2", 9, 0, -sec(68)); /* idle 31 s > udp new 30 s */
    assert_int_equal(c.n, 1);
    assert_int_equal(c.v[0].s.reason, FT_END_TIMEOUT);
    assert_int_equal(c.v[0].s.first_ns, -sec(99));
    tp_udp(as, A, 7000, B, 7001, 10, sec(100)); /* idle 200 s < udp established 300 s */
    assert_int_equal(c.n, 2); /* ...while the second 10.7 session has timed out */
    assert_int_equal(c.v[1].s.first_ns, -sec(68));
    /* Forward again, far: the other flows have been idle longer than their timeouts. */
    tp_udp(as, "10.9.0.1", 1, "10.9.0.2", 2, 0, sec(t0 + 1000));
    assert_int_equal(c.n, 4);
    for (size_t i = 2; i < 4; i++) {
        const struct ft_session *s = &c.v[i].s;
        assert_int_equal(s->reason, FT_END_TIMEOUT);
        if (s->proto == 17) {
            assert_int_equal(s->pkts[0], 4);
            assert_int_equal(s->pkts[1], 2);
            /* the earliest and latest packet times, not the first and last to arrive */
            assert_int_equal(s->first_ns, -sec(100));
            assert_int_equal(s->last_ns, sec(t0 + 1));
        } else {
            assert_int_equal(s->pkts[0], 1);
            assert_int_equal(s->pkts[1], 1);
            assert_int_equal(s->tcp_state, FT_TCP_ESTABLISHED);
        }
    }
    ft_assembler_finish_input(as);
    assert_int_equal(c.n, 5);
    ft_assembler_destroy(as);
    tc_free(&c);

    /* Small steps back (reordering) never make the clock go back or jump. */
    tc_init(&c);
    as = mk(&cfg, &c);
    for (int i = 0; i < 100; i++) {
        tp_udp(as, A, 1, B, 2, 10, sec(100 + i * 10.0));
        tp_udp(as, A, 3, B, 4, 10, sec(100 + i * 10.0 - 0.5));
    }
    assert_int_equal(c.n, 0);
    ft_assembler_finish_input(as);
    assert_int_equal(c.n, 2);
    ft_assembler_destroy(as);
    tc_free(&c);
}

/* Absurd timestamps (corrupt files, fuzzed input) must not overflow anything (UBSan run). */
static void test_extreme_timestamps(void **state)
{
    (void)state;
    static const int64_t ts[] = {INT64_MIN, INT64_MAX, 0, INT64_MIN + 1, INT64_MAX, -1, INT64_MIN};
    for (int workers = 1; workers <= 2; workers++) {
        struct tc_collect c;
        tc_init(&c);
        struct ft_config cfg;
        base_cfg(&cfg);
        cfg.workers = workers;
        struct ft_assembler *as = mk(&cfg, &c);
        for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) {
            tp_udp(as, "10.0.0.1", 1, "10.0.0.2", 2, 10, ts[i]);
            tp_tcp(as, "10.0.0.1", (uint16_t)(100 + i), "10.0.0.2", 80, SYN, 1, 0, ts[i]);
        }
        ft_assembler_finish_input(as);
        assert_int_equal(tc_total_packets(&c), 2 * sizeof ts / sizeof *ts);
        ft_assembler_destroy(as);
        tc_free(&c);
    }
}

/* ---- max_flows ---- */

static void test_max_flows(void **state)
{
    (void)state;
    struct tc_collect c;
    tc_init(&c);
    struct ft_config cfg;
    base_cfg(&cfg);
    cfg.max_flows = 4;
    struct ft_assembler *as = mk(&cfg, &c);
    for (int i = 0; i < 10; i++) {
        tp_udp(as, "10.0.0.1", (uint16_t)(1000 + i), "10.0.0.2", 53, 10, sec(i));
        struct ft_stats st;
        ft_assembler_stats(as, &st);
        assert_true(st.flows_active <= 4);
        assert_int_equal(st.flows_evicted, i < 4 ? 0 : (uint64_t)i - 3);
    }
    /* Oldest first. */
    assert_int_equal(c.n, 6);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(c.v[i].s.src_port, 1000 + i);
        assert_int_equal(c.v[i].s.reason, FT_END_EVICTED);
    }
    /* Touching a flow makes it the youngest. */
    tp_udp(as, "10.0.0.1", 1006, "10.0.0.2", 53, 10, sec(10));
    tp_udp(as, "10.0.0.1", 2000, "10.0.0.2", 53, 10, sec(11));
    assert_int_equal(c.n, 7);
    assert_int_equal(c.v[6].s.src_port, 1007);
    ft_assembler_finish_input(as);
    assert_int_equal(c.n, 11);
    ft_assembler_destroy(as);
    tc_free(&c);

    /* A full table first ends a flow that has timed out anyway, and says so. */
    tc_init(&c);
    base_cfg(&cfg);
    cfg.max_flows = 2;
    as = mk(&cfg, &c);
    tp_udp(as, "10.0.0.1", 1, "10.0.0.2", 53, 10, sec(0));
    tp_tcp(as, "10.0.0.1", 2, "10.0.0.2", 80, SYN, 5, 0, sec(1));
    tp_udp(as, "10.0.0.1", 3, "10.0.0.2", 53, 10, sec(40));
    assert_int_equal(c.n, 1);
    assert_int_equal(c.v[0].s.src_port, 1);
    assert_int_equal(c.v[0].s.reason, FT_END_TIMEOUT);
    tp_udp(as, "10.0.0.1", 4, "10.0.0.2", 53, 10, sec(41));
    assert_int_equal(c.n, 2);
    assert_int_equal(c.v[1].s.src_port, 2);
    assert_int_equal(c.v[1].s.reason, FT_END_EVICTED);
    struct ft_stats st;
    ft_assembler_stats(as, &st);
    assert_int_equal(st.flows_evicted, 1);
    assert_int_equal(st.flows_timed_out, 1);
    ft_assembler_finish_input(as);
    ft_assembler_destroy(as);
    tc_free(&c);
}

/* ---- session buffer ---- */

static void test_session_buffer(void **state)
{
    (void)state;
    const uint32_t ms[2] = {40, 100};
    for (int v = 0; v < 2; v++) {
        struct tc_collect c;
        tc_init(&c);
        struct ft_config cfg;
        base_cfg(&cfg);
        cfg.packets_per_session = 3;
        cfg.bytes_per_packet = ms[v];
        struct ft_assembler *as = mk(&cfg, &c);
        assert_true(ft_assembler_flow_size(as) >=
                    sizeof(struct ft_flow) + 3 * (sizeof(struct ft_stored_packet) + ms[v]));
        /* Client on the high side: stored dirs are relative to the initiator. */
        const char *C = "10.0.0.9", *S = "10.0.0.1";
        struct tp_frame f[5];
        tp_build(&f[0], 6, C, 1111, S, 22, SYN, 10, 0, sec(1));
        tp_build(&f[1], 6, S, 22, C, 1111, SYN | ACK, 20, 0, sec(2));
        tp_build(&f[2], 6, C, 1111, S, 22, PSH | ACK, 11, 100, sec(3));
        tp_build(&f[3], 6, S, 22, C, 1111, ACK, 21, 0, sec(4));
        tp_build(&f[4], 6, C, 1111, S, 22, PSH | ACK, 111, 50, sec(5));
        for (int i = 0; i < 5; i++)
            tp_feed(as, &f[i]);
        ft_assembler_finish_input(as);
        assert_int_equal(c.n, 1);
        const struct ft_session *s = &c.v[0].s;
        assert_int_equal(s->n_stored, 3);
        static const uint8_t dirs[3] = {0, 1, 0};
        for (int i = 0; i < 3; i++) {
            const struct ft_stored_packet *sp = &s->stored[i];
            uint32_t want = f[i].pkt.caplen < ms[v] ? f[i].pkt.caplen : ms[v];
            assert_int_equal(sp->stored_len, want);
            assert_int_equal(sp->caplen, f[i].pkt.caplen);
            assert_int_equal(sp->wirelen, f[i].pkt.wirelen);
            assert_int_equal(sp->ts_ns, f[i].pkt.ts_ns);
            assert_int_equal(sp->dir, dirs[i]);
            assert_int_equal(sp->tcp_flags, f[i].pkt.tcp_flags);
            assert_int_equal(sp->layers.l4_off, 34);
            assert_memory_equal(sp->bytes, f[i].bytes, want);
        }
        ft_assembler_destroy(as);
        tc_free(&c);
    }

    /* K = 0: counters only, and the record carries no buffer. */
    struct tc_collect c;
    tc_init(&c);
    struct ft_config cfg;
    base_cfg(&cfg);
    cfg.packets_per_session = 0;
    struct ft_assembler *as = mk(&cfg, &c);
    assert_true(ft_assembler_flow_size(as) < sizeof(struct ft_flow) + 64);
    tp_udp(as, "10.0.0.1", 1, "10.0.0.2", 2, 10, 0);
    ft_assembler_finish_input(as);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.v[0].s.n_stored, 0);
    assert_int_equal(c.v[0].s.pkts[0], 1);
    ft_assembler_destroy(as);
    tc_free(&c);
}

/* Frames cut by the snap length before their flow is known (enum ft_cut_frames). */
static void cut(struct tp_frame *f, uint32_t caplen, enum cap_decode_reason reason)
{
    struct cap_packet *p = &f->pkt;
    p->caplen = caplen;
    p->reason = reason;
    p->layers.l4_off = p->layers.payload_off = CAP_ABSENT;
    p->src_port = p->dst_port = 0;
    p->tcp_flags = 0;
    if (reason == CAP_DECODE_TRUNCATED_IP || reason == CAP_DECODE_TRUNCATED_L2) {
        memset(p->src_addr, 0, 16);
        memset(p->dst_addr, 0, 16);
        p->layers.l4_proto = 0;
    }
    if (reason == CAP_DECODE_TRUNCATED_L2) {
        p->layers.l3_off = CAP_ABSENT;
        p->layers.ip_version = 0;
    }
}

static void run_cut(enum ft_port_reuse mode, enum ft_cut_frames policy, struct tc_collect *c,
                    struct ft_stats *st)
{
    struct ft_config cfg;
    base_cfg(&cfg);
    cfg.port_reuse = mode;
    cfg.cut_frames = policy;
    struct ft_assembler *as = mk(&cfg, c);
    const char *C = "10.0.0.1", *S = "10.0.0.2";
    tp_tcp(as, C, 4000, S, 80, SYN, 1, 0, sec(0));
    tp_tcp(as, S, 80, C, 4000, SYN | ACK, 1, 0, sec(0.1));
    struct tp_frame f;
    /* 1: TCP header cut after 10 bytes: ports, no flags */
    tp_build(&f, 6, C, 4000, S, 80, SYN, 77, 0, sec(0.2));
    cut(&f, 14 + 20 + 10, CAP_DECODE_TRUNCATED_L4);
    tp_feed(as, &f);
    /* 2: from the server, cut inside the IP header: 2 bytes of its source address left */
    tp_build(&f, 6, S, 80, C, 4000, ACK, 2, 100, sec(0.3));
    cut(&f, 14 + 14, CAP_DECODE_TRUNCATED_IP);
    tp_feed(as, &f);
    /* 3: cut inside the Ethernet header (8 bytes: the destination MAC and 2 of the source) */
    tp_build(&f, 6, C, 4000, S, 80, ACK, 3, 100, sec(0.4));
    cut(&f, 8, CAP_DECODE_TRUNCATED_L2);
    tp_feed(as, &f);
    /* 4: another host pair, cut before its ports: its address bytes disagree */
    tp_build(&f, 6, "10.0.9.9", 4000, S, 80, ACK, 4, 100, sec(0.5));
    cut(&f, 14 + 18, CAP_DECODE_TRUNCATED_IP);
    tp_feed(as, &f);
    /* 5: not cut by the snap length (caplen = wirelen): a broken header, not a cut one */
    tp_build(&f, 6, C, 4000, S, 80, ACK, 5, 0, sec(0.6));
    cut(&f, 14 + 14, CAP_DECODE_TRUNCATED_IP);
    f.pkt.wirelen = f.pkt.caplen;
    tp_feed(as, &f);
    ft_assembler_finish_input(as);
    ft_assembler_stats(as, st);
    ft_assembler_destroy(as);
}

static void test_cut_frames(void **state)
{
    (void)state;
    struct tc_collect c;
    struct ft_stats st;

    /* split mode, tshark's rule: none of the cut frames has a flow */
    tc_init(&c);
    run_cut(FT_PORT_REUSE_SPLIT, FT_CUT_FRAMES_AUTO, &c, &st);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.v[0].s.pkts[0], 1);
    assert_int_equal(c.v[0].s.pkts[1], 1);
    assert_int_equal(st.flowless, 5);
    tc_free(&c);

    /* merge mode, SplitCap's rule: frames 1-3 join the session, 4 and 5 do not */
    for (int explicit_ = 0; explicit_ < 2; explicit_++) {
        tc_init(&c);
        run_cut(explicit_ ? FT_PORT_REUSE_SPLIT : FT_PORT_REUSE_MERGE,
                explicit_ ? FT_CUT_FRAMES_ATTACH : FT_CUT_FRAMES_AUTO, &c, &st);
        assert_int_equal(c.n, 1);
        const struct ft_session *s = &c.v[0].s;
        assert_int_equal(s->pkts[0], 3);
        assert_int_equal(s->pkts[1], 2);
        assert_int_equal(st.flowless, 2);
        assert_int_equal(tc_total_packets(&c) + st.flowless, st.frames);
        /* the cut TCP header got its L4 offset; the others keep the decoder's layers */
        assert_int_equal(s->stored[2].layers.l4_off, 34);
        assert_int_equal(s->stored[2].stored_len, 44);
        assert_int_equal(s->stored[3].dir, 1);
        assert_int_equal(s->stored[3].caplen, 28);
        assert_int_equal(s->stored[4].dir, 0);
        assert_int_equal(s->stored[4].stored_len, 8);
        assert_int_equal(s->tcp_flags[0], SYN); /* cut frames add no flags */
        tc_free(&c);
    }

    /* merge mode with tshark's rule asked for explicitly */
    tc_init(&c);
    run_cut(FT_PORT_REUSE_MERGE, FT_CUT_FRAMES_TSHARK, &c, &st);
    assert_int_equal(c.v[0].s.pkts[0] + c.v[0].s.pkts[1], 2);
    tc_free(&c);
}

/* ---- inputs, frame numbers, accounting ---- */

static void test_inputs_and_accounting(void **state)
{
    (void)state;
    struct tc_collect c;
    tc_init(&c);
    struct ft_config cfg;
    base_cfg(&cfg);
    struct ft_assembler *as = mk(&cfg, &c);
    struct tp_frame arp;
    tp_build(&arp, 17, "10.0.0.1", 1, "10.0.0.2", 2, 0, 0, 0, 0);
    arp.pkt.reason = CAP_DECODE_NOT_IP;
    arp.pkt.layers.l3_off = arp.pkt.layers.l4_off = arp.pkt.layers.payload_off = CAP_ABSENT;
    arp.pkt.layers.ip_version = 0;
    for (int input = 0; input < 2; input++) {
        tp_feed(as, &arp);
        tp_udp(as, "10.0.0.1", 10, "10.0.0.2", 20, 5, sec(1));
        tp_udp(as, "10.0.0.3", 10, "10.0.0.2", 20, 5, sec(2));
        tp_udp(as, "10.0.0.2", 20, "10.0.0.1", 10, 5, sec(3));
        ft_assembler_finish_input(as);
    }
    assert_int_equal(c.n, 4);
    /* frame numbers restart with each input; ids do not */
    assert_int_equal(c.v[0].s.first_frame * c.v[1].s.first_frame, 6);
    assert_int_equal(c.v[1].s.first_frame + c.v[0].s.first_frame, 5);
    assert_int_equal(c.v[2].s.first_frame + c.v[3].s.first_frame, 5);
    uint64_t ids = 0;
    for (int i = 0; i < 4; i++)
        ids |= 1ull << c.v[i].s.id;
    assert_int_equal(ids, (1ull << 2) | (1ull << 3) | (1ull << 6) | (1ull << 7));
    struct ft_stats st;
    ft_assembler_stats(as, &st);
    assert_int_equal(st.frames, 8);
    assert_int_equal(st.flowless, 2);
    assert_int_equal(st.decode.frames, 8);
    assert_int_equal(st.decode.by_reason[CAP_DECODE_NOT_IP], 2);
    assert_int_equal(tc_total_packets(&c) + st.flowless, st.frames);
    assert_int_equal(st.bytes, 2 * (arp.pkt.wirelen + 3 * 47));
    ft_assembler_destroy(as);
    tc_free(&c);
}

/* Assemblers that share a run (the sensor's readers) number their sessions apart: shard k of
 * n gives the session whose first frame is its j-th frame the id (j - 1) · n + k + 1, with one
 * worker or several; a shard index out of range is refused. */
static void test_id_shards(void **state)
{
    (void)state;
    for (int workers = 1; workers <= 2; workers++)
        for (uint32_t shard = 0; shard < 3; shard++) {
            struct tc_collect c;
            tc_init(&c);
            struct ft_config cfg;
            base_cfg(&cfg);
            cfg.workers = workers;
            cfg.id_shard = shard;
            cfg.id_shards = 3;
            struct ft_assembler *as = mk(&cfg, &c);
            /* sessions start at this input's frames 1, 2 and 4 (frame 3 continues the first) */
            tp_udp(as, "10.0.0.1", 10, "10.0.0.2", 20, 5, sec(1));
            tp_udp(as, "10.0.0.3", 10, "10.0.0.2", 20, 5, sec(2));
            tp_udp(as, "10.0.0.2", 20, "10.0.0.1", 10, 5, sec(3));
            tp_udp(as, "10.0.0.4", 10, "10.0.0.2", 20, 5, sec(4));
            ft_assembler_finish_input(as);
            assert_int_equal(c.n, 3);
            uint64_t got = 0, want = 0;
            for (int i = 0; i < 3; i++)
                got |= 1ull << c.v[i].s.id;
            const uint64_t first_frames[] = {1, 2, 4};
            for (int i = 0; i < 3; i++)
                want |= 1ull << ((first_frames[i] - 1) * 3 + shard + 1);
            assert_int_equal(got, want);
            ft_assembler_destroy(as);
            tc_free(&c);
        }
    struct tc_collect c;
    tc_init(&c);
    struct ft_config cfg;
    char err[256];
    base_cfg(&cfg);
    cfg.id_shard = 2;
    cfg.id_shards = 2;
    assert_null(ft_assembler_create(&cfg, tc_on_session, &c, err, sizeof err));
    assert_non_null(strstr(err, "id_shard"));
    tc_free(&c);
}

/* Destroy without finish_input drops the open flows quietly and frees everything (ASan). */
static void test_destroy_with_open_flows(void **state)
{
    (void)state;
    for (int workers = 1; workers <= 2; workers++) {
        struct tc_collect c;
        tc_init(&c);
        struct ft_config cfg;
        base_cfg(&cfg);
        cfg.workers = workers;
        struct ft_assembler *as = mk(&cfg, &c);
        for (int i = 0; i < 100; i++)
            tp_udp(as, "10.0.0.1", (uint16_t)i, "10.0.0.2", 53, 10, sec(i) / 100);
        ft_assembler_destroy(as);
        assert_int_equal(c.n, 0);
        tc_free(&c);
    }
}

static void test_config_errors(void **state)
{
    (void)state;
    struct tc_collect c;
    tc_init(&c);
    struct ft_config cfg;
    char err[256];
    base_cfg(&cfg);
    cfg.workers = 0;
    assert_null(ft_assembler_create(&cfg, tc_on_session, &c, err, sizeof err));
    assert_non_null(strstr(err, "workers"));
    base_cfg(&cfg);
    cfg.workers = 4;
    cfg.max_flows = 3;
    assert_null(ft_assembler_create(&cfg, tc_on_session, &c, err, sizeof err));
    assert_non_null(strstr(err, "max_flows"));
    base_cfg(&cfg);
    cfg.timeouts.udp_new = NAN;
    assert_null(ft_assembler_create(&cfg, tc_on_session, &c, err, sizeof err));
    assert_non_null(strstr(err, "udp_new"));
    base_cfg(&cfg);
    cfg.timeouts.tcp_closed = -1;
    assert_null(ft_assembler_create(&cfg, tc_on_session, &c, err, sizeof err));
    base_cfg(&cfg);
    cfg.packets_per_session = 65536;
    cfg.bytes_per_packet = 65536;
    assert_null(ft_assembler_create(&cfg, tc_on_session, &c, err, sizeof err));
    assert_non_null(strstr(err, "session buffer"));
    base_cfg(&cfg);
    cfg.port_reuse = (enum ft_port_reuse)7;
    assert_null(ft_assembler_create(&cfg, tc_on_session, &c, err, sizeof err));
    base_cfg(&cfg);
    cfg.cut_frames = (enum ft_cut_frames)9;
    assert_null(ft_assembler_create(&cfg, tc_on_session, &c, err, sizeof err));
    assert_non_null(strstr(err, "cut_frames"));
    base_cfg(&cfg);
    assert_null(ft_assembler_create(&cfg, NULL, &c, err, sizeof err));
    tc_free(&c);
}

static void test_names_and_defaults(void **state)
{
    (void)state;
    assert_string_equal(ft_end_reason_name(FT_END_CLOSED), "closed");
    assert_string_equal(ft_end_reason_name(FT_END_TIMEOUT), "timeout");
    assert_string_equal(ft_end_reason_name(FT_END_END_OF_INPUT), "end-of-input");
    assert_string_equal(ft_end_reason_name(FT_END_EVICTED), "evicted");
    assert_string_equal(ft_end_reason_name((enum ft_end_reason)99), "unknown");
    struct ft_config cfg;
    ft_config_defaults(&cfg);
    assert_int_equal(cfg.max_flows, 1u << 20);
    assert_int_equal(cfg.packets_per_session, 32);
    assert_int_equal(cfg.bytes_per_packet, 128);
    assert_int_equal(cfg.port_reuse, FT_PORT_REUSE_SPLIT);
    assert_int_equal(cfg.workers, 1);
    assert_true(cfg.timeouts.tcp_established == 600 && cfg.timeouts.udp_new == 30);
    /* The defaults make a working assembler (random seed, 2^20 buckets). */
    struct tc_collect c;
    tc_init(&c);
    struct ft_assembler *as = mk(&cfg, &c);
    tp_udp(as, "10.0.0.1", 1, "10.0.0.2", 2, 10, 0);
    ft_assembler_finish_input(as);
    assert_int_equal(c.n, 1);
    ft_assembler_destroy(as);
    tc_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_symmetric),
        cmocka_unit_test(test_hash_spread),
        cmocka_unit_test(test_tcp_handshake_close),
        cmocka_unit_test(test_tcp_closed_linger),
        cmocka_unit_test(test_tcp_rst),
        cmocka_unit_test(test_port_reuse_split_vs_merge),
        cmocka_unit_test(test_udp_timeout),
        cmocka_unit_test(test_time_backwards),
        cmocka_unit_test(test_extreme_timestamps),
        cmocka_unit_test(test_max_flows),
        cmocka_unit_test(test_session_buffer),
        cmocka_unit_test(test_cut_frames),
        cmocka_unit_test(test_inputs_and_accounting),
        cmocka_unit_test(test_id_shards),
        cmocka_unit_test(test_destroy_with_open_flows),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_names_and_defaults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
