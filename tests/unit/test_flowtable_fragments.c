/* test_flowtable_fragments.c — later IP fragments join the session of their datagram's first
 * fragment: hand-built IPv4 and IPv6 fragments, decoded by cap_decode (which gives each its
 * datagram's identification), through the assembler with one worker and with two. What must join
 * (same addresses and identification, IPv4 also the protocol, after the first fragment and within
 * 30 s of it, in the same input) and what must stay without a flow. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_flowtable_util.h"

struct frag_frame {
    uint8_t bytes[256];
    uint32_t len;
    int64_t ts_ns;
};

static int64_t sec(double s)
{
    return (int64_t)llround(s * 1e9);
}

static void put_ether(uint8_t *b, uint16_t type)
{
    memset(b, 0, 14);
    b[0] = b[6] = 0x02;
    b[5] = 1;
    b[11] = 2;
    tp_put16(b + 12, type);
}

/* What follows the IP layer of a fragment that ends at byte hdr_end: a first fragment (offset 0)
 * starts with a UDP header of ports sport → dport; then data bytes (a pattern that differs by
 * offset, so that stored bytes show which fragment they came from). */
static void put_fragment_data(struct frag_frame *f, uint32_t hdr_end, uint16_t offset,
                              uint16_t sport, uint16_t dport, uint32_t data, double t)
{
    uint8_t *l4 = f->bytes + hdr_end;
    uint32_t l4len = offset == 0 ? 8 : 0;
    if (l4len) {
        tp_put16(l4, sport);
        tp_put16(l4 + 2, dport);
        tp_put16(l4 + 4, (uint16_t)(8 + data + 100)); /* the whole datagram's UDP length */
    }
    f->len = hdr_end + l4len + data;
    for (uint32_t i = hdr_end + l4len; i < f->len; i++)
        f->bytes[i] = (uint8_t)(i + offset);
    f->ts_ns = sec(t);
}

/* An IPv4 fragment; offset in 8-byte units. */
static void frag4(struct frag_frame *f, const char *src, const char *dst, uint8_t proto,
                  uint16_t id, uint16_t offset, bool more, uint16_t sport, uint16_t dport,
                  uint32_t data, double t)
{
    memset(f, 0, sizeof *f);
    put_ether(f->bytes, 0x0800);
    uint8_t *ip = f->bytes + 14;
    uint32_t l4 = offset == 0 ? 8 : 0;
    ip[0] = 0x45;
    tp_put16(ip + 2, (uint16_t)(20 + l4 + data));
    tp_put16(ip + 4, id);
    tp_put16(ip + 6, (uint16_t)((more ? 0x2000 : 0) | offset));
    ip[8] = 64;
    ip[9] = proto;
    inet_pton(AF_INET, src, ip + 12);
    inet_pton(AF_INET, dst, ip + 16);
    put_fragment_data(f, 14 + 20, offset, sport, dport, data, t);
}

/* The same over IPv6, through a fragment header. */
static void frag6(struct frag_frame *f, const char *src, const char *dst, uint32_t ident,
                  uint16_t offset, bool more, uint16_t sport, uint16_t dport, uint32_t data,
                  double t)
{
    memset(f, 0, sizeof *f);
    put_ether(f->bytes, 0x86dd);
    uint8_t *ip = f->bytes + 14;
    uint32_t l4 = offset == 0 ? 8 : 0;
    ip[0] = 0x60;
    tp_put16(ip + 4, (uint16_t)(8 + l4 + data));
    ip[6] = 44; /* fragment header */
    ip[7] = 64;
    inet_pton(AF_INET6, src, ip + 8);
    inet_pton(AF_INET6, dst, ip + 24);
    uint8_t *fh = ip + 40;
    fh[0] = 17;
    tp_put16(fh + 2, (uint16_t)(offset << 3 | (more ? 1 : 0)));
    tp_put32(fh + 4, ident);
    put_fragment_data(f, 14 + 48, offset, sport, dport, data, t);
}

static void feed(struct ft_assembler *as, const struct frag_frame *f)
{
    struct cap_packet p;
    cap_decode(NULL, CAP_LINK_EN10MB, f->bytes, f->len, f->len, f->ts_ns, &p);
    ft_assembler_feed_packets(as, &p, 1);
}

static struct ft_assembler *mk(int workers, struct tc_collect *c, double udp_timeout)
{
    struct ft_config cfg;
    ft_config_defaults(&cfg);
    cfg.max_flows = 1024;
    cfg.hash_seed = 0x5eed;
    cfg.workers = workers;
    if (udp_timeout > 0)
        cfg.timeouts.udp_new = cfg.timeouts.udp_established = udp_timeout;
    char err[256];
    struct ft_assembler *as = ft_assembler_create(&cfg, tc_on_session, c, err, sizeof err);
    if (as == NULL)
        fail_msg("create: %s", err);
    return as;
}

static const struct tc_session *find(const struct tc_collect *c, uint16_t sport)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->v[i].s.src_port == sport)
            return &c->v[i];
    fail_msg("no session from port %u", sport);
    return NULL;
}

/* A datagram in three fragments each way of one UDP session, IPv4 and IPv6: every fragment is a
 * packet of the session, in its direction, stored like any packet (with no L4 header). */
static void join_in_order(int workers)
{
    struct tc_collect c;
    tc_init(&c);
    struct ft_assembler *as = mk(workers, &c, 0);
    struct frag_frame f[9];
    frag4(&f[0], "10.0.0.1", "10.0.0.2", 17, 0x1234, 0, true, 5000, 53, 64, 1.000);
    frag4(&f[1], "10.0.0.1", "10.0.0.2", 17, 0x1234, 9, true, 0, 0, 80, 1.001);
    frag4(&f[2], "10.0.0.1", "10.0.0.2", 17, 0x1234, 19, false, 0, 0, 20, 1.002);
    frag4(&f[3], "10.0.0.2", "10.0.0.1", 17, 0x0777, 0, true, 53, 5000, 96, 1.010);
    frag4(&f[4], "10.0.0.2", "10.0.0.1", 17, 0x0777, 13, false, 0, 0, 40, 1.011);
    frag6(&f[5], "2001:db8::1", "2001:db8::2", 0xdeadbeef, 0, true, 6000, 53, 48, 2.000);
    frag6(&f[6], "2001:db8::1", "2001:db8::2", 0xdeadbeef, 7, false, 0, 0, 30, 2.001);
    frag6(&f[7], "2001:db8::2", "2001:db8::1", 0x00000001, 0, true, 53, 6000, 48, 2.010);
    frag6(&f[8], "2001:db8::2", "2001:db8::1", 0x00000001, 7, false, 0, 0, 30, 2.011);
    uint64_t bytes4[2] = {f[0].len + f[1].len + f[2].len, f[3].len + f[4].len};
    uint64_t bytes6[2] = {f[5].len + f[6].len, f[7].len + f[8].len};
    for (int i = 0; i < 9; i++)
        feed(as, &f[i]);
    ft_assembler_finish_input(as);
    struct ft_stats st;
    ft_assembler_stats(as, &st);
    assert_int_equal(st.frames, 9);
    assert_int_equal(st.flowless, 0);
    assert_int_equal(st.fragments_joined, 5);
    assert_int_equal(st.decode.by_reason[CAP_DECODE_FRAGMENT], 5);
    assert_int_equal(c.n, 2);

    const struct tc_session *s4 = find(&c, 5000);
    assert_int_equal(s4->s.ip_version, 4);
    assert_int_equal(s4->s.dst_port, 53);
    assert_int_equal(s4->s.pkts[0], 3);
    assert_int_equal(s4->s.pkts[1], 2);
    assert_int_equal(s4->s.bytes[0], bytes4[0]);
    assert_int_equal(s4->s.bytes[1], bytes4[1]);
    assert_int_equal(s4->s.first_ns, sec(1.000));
    assert_int_equal(s4->s.last_ns, sec(1.011));
    assert_int_equal(s4->s.payload_pkts, 5);
    assert_int_equal(s4->s.n_stored, 5);
    static const uint8_t dirs[5] = {0, 0, 0, 1, 1};
    for (int i = 0; i < 5; i++) {
        const struct ft_stored_packet *sp = &s4->s.stored[i];
        assert_int_equal(sp->dir, dirs[i]);
        assert_int_equal(sp->wirelen, f[i].len);
        /* the first fragment of each datagram has its UDP header, the later ones none */
        bool first = i == 0 || i == 3;
        assert_int_equal(sp->layers.l4_off, first ? 34u : CAP_ABSENT);
        assert_int_equal(sp->layers.payload_off, first ? 42u : 34u);
        assert_memory_equal(sp->bytes, f[i].bytes, sp->stored_len);
    }

    const struct tc_session *s6 = find(&c, 6000);
    assert_int_equal(s6->s.ip_version, 6);
    assert_int_equal(s6->s.pkts[0], 2);
    assert_int_equal(s6->s.pkts[1], 2);
    assert_int_equal(s6->s.bytes[0], bytes6[0]);
    assert_int_equal(s6->s.bytes[1], bytes6[1]);
    assert_int_equal(s6->s.n_stored, 4);
    assert_int_equal(s6->s.stored[1].layers.l4_off, CAP_ABSENT);
    assert_int_equal(s6->s.stored[3].dir, 1);
    ft_assembler_destroy(as);
    tc_free(&c);
}

static void test_join_one_worker(void **state)
{
    (void)state;
    join_in_order(1);
}

static void test_join_two_workers(void **state)
{
    (void)state;
    join_in_order(2);
}

/* Later fragments that name no known first fragment stay without a flow; the session gets only
 * the ones that do. */
static void test_unmatched(void **state)
{
    (void)state;
    struct tc_collect c;
    tc_init(&c);
    /* UDP sessions live long here, so that only the fragments' own 30 s decide. */
    struct ft_assembler *as = mk(1, &c, 600);
    struct frag_frame f;
    int joined = 0, flowless = 0;
    /* before its first fragment */
    frag4(&f, "10.0.0.1", "10.0.0.2", 17, 0x42, 9, false, 0, 0, 40, 1.0);
    feed(as, &f), flowless++;
    frag4(&f, "10.0.0.1", "10.0.0.2", 17, 0x42, 0, true, 7000, 53, 64, 1.1);
    feed(as, &f);
    /* another identification, the other direction, another protocol */
    frag4(&f, "10.0.0.1", "10.0.0.2", 17, 0x43, 9, false, 0, 0, 40, 1.2);
    feed(as, &f), flowless++;
    frag4(&f, "10.0.0.2", "10.0.0.1", 17, 0x42, 9, false, 0, 0, 40, 1.3);
    feed(as, &f), flowless++;
    frag4(&f, "10.0.0.1", "10.0.0.2", 6, 0x42, 9, false, 0, 0, 40, 1.4);
    feed(as, &f), flowless++;
    /* 29 s after the first fragment it still joins (a duplicate later fragment does too); 31 s
     * after, no longer */
    frag4(&f, "10.0.0.1", "10.0.0.2", 17, 0x42, 9, true, 0, 0, 40, 30.0);
    feed(as, &f), joined++;
    frag4(&f, "10.0.0.1", "10.0.0.2", 17, 0x42, 9, true, 0, 0, 40, 30.05);
    feed(as, &f), joined++;
    frag4(&f, "10.0.0.1", "10.0.0.2", 17, 0x42, 14, false, 0, 0, 40, 32.2);
    feed(as, &f), flowless++;
    /* an IPv6 later fragment with an IPv4 datagram's addresses-and-id shape is another datagram */
    frag6(&f, "2001:db8::1", "2001:db8::2", 0x42, 9, false, 0, 0, 40, 32.3);
    feed(as, &f), flowless++;
    /* a first fragment in one input does not reach into the next */
    frag4(&f, "10.0.0.1", "10.0.0.2", 17, 0x99, 0, true, 7001, 53, 64, 40.0);
    feed(as, &f);
    ft_assembler_finish_input(as);
    frag4(&f, "10.0.0.1", "10.0.0.2", 17, 0x99, 9, false, 0, 0, 40, 40.001);
    feed(as, &f), flowless++;
    ft_assembler_finish_input(as);

    struct ft_stats st;
    ft_assembler_stats(as, &st);
    assert_int_equal(st.fragments_joined, joined);
    assert_int_equal(st.flowless, flowless);
    assert_int_equal(c.n, 2);
    assert_int_equal(find(&c, 7000)->s.pkts[0], 1 + joined);
    assert_int_equal(find(&c, 7000)->s.pkts[1], 0);
    assert_int_equal(find(&c, 7001)->s.pkts[0], 1);
    ft_assembler_destroy(as);
    tc_free(&c);
}

/* The decoder gives each hand-built fragment its datagram (IPv4 ip.id with ip.proto, IPv6
 * ipv6.fraghdr.ident: test_capture checks the same on real frames against tshark). */
static void test_decoder_identification(void **state)
{
    (void)state;
    struct frag_frame f;
    struct cap_packet p;
    frag4(&f, "10.0.0.1", "10.0.0.2", 17, 0xd0fe, 0, true, 1, 2, 8, 0);
    cap_decode(NULL, CAP_LINK_EN10MB, f.bytes, f.len, f.len, 0, &p);
    assert_int_equal(p.frag, CAP_FRAG_FIRST);
    assert_int_equal(p.frag_id, 17u << 16 | 0xd0fe);
    frag4(&f, "10.0.0.1", "10.0.0.2", 6, 0xd0fe, 185, false, 0, 0, 8, 0);
    cap_decode(NULL, CAP_LINK_EN10MB, f.bytes, f.len, f.len, 0, &p);
    assert_int_equal(p.frag, CAP_FRAG_LATER);
    assert_int_equal(p.frag_id, 6u << 16 | 0xd0fe);
    frag6(&f, "2001:db8::1", "2001:db8::2", 0x28403c0b, 181, false, 0, 0, 8, 0);
    cap_decode(NULL, CAP_LINK_EN10MB, f.bytes, f.len, f.len, 0, &p);
    assert_int_equal(p.frag, CAP_FRAG_LATER);
    assert_int_equal(p.frag_id, 0x28403c0b);
    /* an unfragmented datagram has none */
    frag4(&f, "10.0.0.1", "10.0.0.2", 17, 0x1111, 0, false, 1, 2, 8, 0);
    cap_decode(NULL, CAP_LINK_EN10MB, f.bytes, f.len, f.len, 0, &p);
    assert_int_equal(p.frag, CAP_FRAG_NONE);
    assert_int_equal(p.frag_id, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decoder_identification),
        cmocka_unit_test(test_join_one_worker),
        cmocka_unit_test(test_join_two_workers),
        cmocka_unit_test(test_unmatched),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
