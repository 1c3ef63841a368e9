/* test_tokenizer_header.c — header modes on real frames, against bytes derived from tshark.
 *
 * Every expected string below was made from the capture itself: the frame's bytes from
 * `tshark -r FILE -Y frame.number==N -T json -x`, then each field a mode hides zeroed at the
 * position and length tshark's *_raw entry gives for it (eth.src/dst, sll.src.eth, ip.src/dst,
 * ipv6.src/dst, tcp/udp.srcport/dstport, and for strict ip.id, ip.ttl, ip.checksum, ipv6.flow
 * (its 20-bit mask), ipv6.hlim, tcp/udp/icmp.checksum, tcp.options.timestamp.tsval/tsecr). The
 * ICMP error's quoted header has its ip.src/dst and udp ports (tshark's second occurrences)
 * zeroed in full and strict. strip = the bytes from tcp.payload/udp.payload's position to the
 * end of the IP packet (ip.len / ipv6.plen). The layer offsets are tshark's too (ip.hdr_len,
 * tcp.hdr_len positions), filled in by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_tokenizer_util.h"

struct mode_case {
    const char *name, *file;
    unsigned frame;
    size_t limit; /* stored bytes: the expectations cover the frame's first `limit` bytes */
    struct cap_layers layers;
    const char *orig, *seed, *full, *strict, *strip;
};

static const struct mode_case cases[] = {
    {"ssh_syn_ts", "tcpdump-ssh.pcap", 1, 128,
     {0, 14, 34, 78, CAP_LINK_EN10MB, 4, 6},
     /* orig */
     "d4ca6d2e7f678c85903f77dd0800450000400000400040060344ca6c57a5df8435def2c20016f351"
     "f15800000000b002ffffec120000020405b4010303060101080a7422c7ce0000000004020000",
     /* seed */
     "d4ca6d2e7f670000000000000800450000400000400040060344000000000000000000000000f351"
     "f15800000000b002ffffec120000020405b4010303060101080a7422c7ce0000000004020000",
     /* full */
     "0000000000000000000000000800450000400000400040060344000000000000000000000000f351"
     "f15800000000b002ffffec120000020405b4010303060101080a7422c7ce0000000004020000",
     /* strict */
     "0000000000000000000000000800450000400000400000060000000000000000000000000000f351"
     "f15800000000b002ffff00000000020405b4010303060101080a000000000000000004020000",
     /* strip */
     ""},
    {"ssh_data", "tcpdump-ssh.pcap", 4, 128,
     {0, 14, 34, 54, CAP_LINK_EN10MB, 4, 6},
     /* orig */
     "d4ca6d2e7f678c85903f77dd08004500003d0000400040060347ca6c57a5df8435def2c20016f351"
     "f1599257ab47501810008b7600005353482d322e302d4f70656e5353485f372e380d0a",
     /* seed */
     "d4ca6d2e7f6700000000000008004500003d0000400040060347000000000000000000000000f351"
     "f1599257ab47501810008b7600005353482d322e302d4f70656e5353485f372e380d0a",
     /* full */
     "00000000000000000000000008004500003d0000400040060347000000000000000000000000f351"
     "f1599257ab47501810008b7600005353482d322e302d4f70656e5353485f372e380d0a",
     /* strict */
     "00000000000000000000000008004500003d0000400000060000000000000000000000000000f351"
     "f1599257ab4750181000000000005353482d322e302d4f70656e5353485f372e380d0a",
     /* strip */
     "5353482d322e302d4f70656e5353485f372e380d0a"},
    {"quic_v4_udp", "ndpi-quic_interop_V.pcapng", 2, 64,
     {0, 14, 34, 42, CAP_LINK_EN10MB, 4, 17},
     /* orig */
     "a491b18234393ca9f4a81fec080045000500d1644000401130edc0a8018047ca29a9930b01bb04ec"
     "4dd2ce0a0a0a0a0836a1f5564f342e14000044d266d44384",
     /* seed */
     "a491b1823439000000000000080045000500d1644000401130ed0000000000000000930b01bb04ec"
     "4dd2ce0a0a0a0a0836a1f5564f342e14000044d266d44384",
     /* full */
     "000000000000000000000000080045000500d1644000401130ed00000000000000000000000004ec"
     "4dd2ce0a0a0a0a0836a1f5564f342e14000044d266d44384",
     /* strict */
     "000000000000000000000000080045000500000040000011000000000000000000000000000004ec"
     "0000ce0a0a0a0a0836a1f5564f342e14000044d266d44384",
     /* strip */
     "ce0a0a0a0a0836a1f5564f342e14000044d266d44384"},
    {"ahcp_v6_udp", "tcpdump-ahcp.pcapng", 1, 128,
     {0, 14, 54, 62, CAP_LINK_EN10MB, 6, 17},
     /* orig */
     "3333e182535968a3c4f4841e86dd6c000000003c1101fe800000000000006aa3c4fffef4841eff02"
     "000000000000cca6c0f9e182535914ef14ef003c37dc2b0101017ce311356aa3c4fffef4841effff"
     "ffffffffffff000000180204527f3cee0304000001a209040000000006000c000d00",
     /* seed */
     "3333e182535900000000000086dd6c000000003c1101fe800000000000006aa3c4fffef4841eff02"
     "000000000000cca6c0f9e182535914ef14ef003c37dc2b0101017ce311356aa3c4fffef4841effff"
     "ffffffffffff000000180204527f3cee0304000001a209040000000006000c000d00",
     /* full */
     "00000000000000000000000086dd6c000000003c1101000000000000000000000000000000000000"
     "000000000000000000000000000000000000003c37dc2b0101017ce311356aa3c4fffef4841effff"
     "ffffffffffff000000180204527f3cee0304000001a209040000000006000c000d00",
     /* strict */
     "00000000000000000000000086dd6c000000003c1100000000000000000000000000000000000000"
     "000000000000000000000000000000000000003c00002b0101017ce311356aa3c4fffef4841effff"
     "ffffffffffff000000180204527f3cee0304000001a209040000000006000c000d00",
     /* strip */
     "2b0101017ce311356aa3c4fffef4841effffffffffffffff000000180204527f3cee0304000001a2"
     "09040000000006000c000d00"},
    {"pinterest_v6_tcp", "ndpi-pinterest.pcap", 1, 128,
     {0, 14, 54, 86, CAP_LINK_EN10MB, 6, 6},
     /* orig */
     "aadb03afc964e442a6e563f286dd6008c9a3002006402a01cb0120498b07991dec8528dff6290064"
     "ff9b000000000000000097657854818c01bbd54360bdb52d681e801001f5311200000101080acfaa"
     "230cc2b862f8",
     /* seed */
     "aadb03afc96400000000000086dd6008c9a3002006402a01cb0120498b07991dec8528dff6290064"
     "ff9b00000000000000009765785400000000d54360bdb52d681e801001f5311200000101080acfaa"
     "230cc2b862f8",
     /* full */
     "00000000000000000000000086dd6008c9a300200640000000000000000000000000000000000000"
     "000000000000000000000000000000000000d54360bdb52d681e801001f5311200000101080acfaa"
     "230cc2b862f8",
     /* strict */
     "00000000000000000000000086dd6000000000200600000000000000000000000000000000000000"
     "000000000000000000000000000000000000d54360bdb52d681e801001f5000000000101080a0000"
     "000000000000",
     /* strip */
     ""},
    {"bot_vlan_tcp", "ndpi-bot.pcap", 1, 128,
     {0, 18, 38, 66, CAP_LINK_EN10MB, 4, 6},
     /* orig */
     "005056b654104055390fadc28100004d080045020030115240006e068a07284da724591f48dcfd00"
     "0050b706c9ec0000000070c2faf097d10000020405a001010402",
     /* seed */
     "005056b654100000000000008100004d080045020030115240006e068a0700000000000000000000"
     "0000b706c9ec0000000070c2faf097d10000020405a001010402",
     /* full */
     "0000000000000000000000008100004d080045020030115240006e068a0700000000000000000000"
     "0000b706c9ec0000000070c2faf097d10000020405a001010402",
     /* strict */
     "0000000000000000000000008100004d080045020030000040000006000000000000000000000000"
     "0000b706c9ec0000000070c2faf000000000020405a001010402",
     /* strip */
     ""},
    {"ocs_raw_tcp", "ndpi-ocs.pcap", 1, 128,
     {CAP_ABSENT, 0, 20, 60, CAP_LINK_RAW, 4, 6},
     /* orig */
     "4500003ca6f3400040062578c0a8b40240e9b8bcba53146c02fdd80900000000a002390874f60000"
     "020405b40402080a003581b60000000001030306",
     /* seed */
     "4500003ca6f340004006257800000000000000000000000002fdd80900000000a002390874f60000"
     "020405b40402080a003581b60000000001030306",
     /* full */
     "4500003ca6f340004006257800000000000000000000000002fdd80900000000a002390874f60000"
     "020405b40402080a003581b60000000001030306",
     /* strict */
     "4500003c000040000006000000000000000000000000000002fdd80900000000a002390800000000"
     "020405b40402080a000000000000000001030306",
     /* strip */
     ""},
    {"raw_v4_udp", "tcpdump-LINKTYPE_RAW_ipv4.pcap", 1, 128,
     {CAP_ABSENT, 0, 20, 28, CAP_LINK_RAW, 4, 17},
     /* orig */
     "45000039000100004011a695c0a80164090909093039003500251976123401000001000000000000"
     "076578616d706c6503636f6d0000010001",
     /* seed */
     "45000039000100004011a69500000000000000003039003500251976123401000001000000000000"
     "076578616d706c6503636f6d0000010001",
     /* full */
     "45000039000100004011a69500000000000000000000000000251976123401000001000000000000"
     "076578616d706c6503636f6d0000010001",
     /* strict */
     "45000039000000000011000000000000000000000000000000250000123401000001000000000000"
     "076578616d706c6503636f6d0000010001",
     /* strip */
     "123401000001000000000000076578616d706c6503636f6d0000010001"},
    {"raw_v6_udp", "tcpdump-LINKTYPE_IPV6.pcap", 1, 128,
     {CAP_ABSENT, 0, 40, 48, CAP_LINK_IPV6, 6, 17},
     /* orig */
     "600000000025114020010db8000000000000000000000001262000fe000000000000000000000009"
     "30390035002598b3123401000001000000000000076578616d706c6503636f6d0000010001",
     /* seed */
     "600000000025114020010db8000000000000000000000001262000fe000000000000000000000009"
     "30390035002598b3123401000001000000000000076578616d706c6503636f6d0000010001",
     /* full */
     "60000000002511400000000000000000000000000000000000000000000000000000000000000000"
     "00000000002598b3123401000001000000000000076578616d706c6503636f6d0000010001",
     /* strict */
     "60000000002511000000000000000000000000000000000000000000000000000000000000000000"
     "0000000000250000123401000001000000000000076578616d706c6503636f6d0000010001",
     /* strip */
     "123401000001000000000000076578616d706c6503636f6d0000010001"},
    {"icmp_unreach", "ndpi-quic_interop_V.pcapng", 11, 80,
     {0, 14, 34, 42, CAP_LINK_EN10MB, 4, 1},
     /* orig */
     "3ca9f4a81feca491b1823439080045c00240ebd900002601ee4b0379f236c0a801800303b7780000"
     "000045000500b45d40002111e8b7c0a801800379f236b7a201bb04ecec2ac60a0a0a0a087509d783",
     /* seed */
     "3ca9f4a81fec000000000000080045c00240ebd900002601ee4b00000000000000000303b7780000"
     "000045000500b45d40002111e8b7c0a801800379f236b7a201bb04ecec2ac60a0a0a0a087509d783",
     /* full */
     "000000000000000000000000080045c00240ebd900002601ee4b00000000000000000303b7780000"
     "000045000500b45d40002111e8b700000000000000000000000004ecec2ac60a0a0a0a087509d783",
     /* strict */
     "000000000000000000000000080045c0024000000000000100000000000000000000030300000000"
     "000045000500b45d40002111e8b700000000000000000000000004ecec2ac60a0a0a0a087509d783",
     /* strip */
     "45000500b45d40002111e8b7c0a801800379f236b7a201bb04ecec2ac60a0a0a0a087509d783"},
    {"sll_tcp", "tcpdump-mptcp-v1.pcap", 1, 128,
     {CAP_ABSENT, 16, 36, 80, CAP_LINK_LINUX_SLL, 4, 6},
     /* orig */
     "000000010006323287aa04020000080045000040ad7f4000400676370a0001010a000201821a2714"
     "81fbb5fd00000000b002ffff17340000020405b40402080a1baf9ea100000000010303081e040101",
     /* seed */
     "000000010006323287aa04020000080045000040ad7f400040067637000000000000000000000000"
     "81fbb5fd00000000b002ffff17340000020405b40402080a1baf9ea100000000010303081e040101",
     /* full */
     "0000000100060000000000000000080045000040ad7f400040067637000000000000000000000000"
     "81fbb5fd00000000b002ffff17340000020405b40402080a1baf9ea100000000010303081e040101",
     /* strict */
     "00000001000600000000000000000800450000400000400000060000000000000000000000000000"
     "81fbb5fd00000000b002ffff00000000020405b40402080a0000000000000000010303081e040101",
     /* strip */
     ""},
    {"dns_tcp_padded", "tcpdump-dns_tcp.pcap", 5, 128,
     {0, 14, 34, 54, CAP_LINK_EN10MB, 4, 6},
     /* orig */
     "001122334455001122334466080045000028002f00008006ae83d157f912c0a8010b003583f379d2"
     "491423fec8475010faf0f5700000000000000000",
     /* seed */
     "001122334455000000000000080045000028002f00008006ae8300000000000000000000000079d2"
     "491423fec8475010faf0f5700000000000000000",
     /* full */
     "000000000000000000000000080045000028002f00008006ae8300000000000000000000000079d2"
     "491423fec8475010faf0f5700000000000000000",
     /* strict */
     "000000000000000000000000080045000028000000000006000000000000000000000000000079d2"
     "491423fec8475010faf000000000000000000000",
     /* strip */
     ""},
};

#define N_CASES (sizeof(cases) / sizeof(cases[0]))

static void check_mode(const struct mode_case *c, const uint8_t *frame, size_t len,
                       enum tok_header_mode mode, const char *expect_hex)
{
    uint8_t expect[256], out[256 + 16];
    size_t n = tt_hex(expect_hex, expect, sizeof(expect));
    memset(out, 0xa5, sizeof(out));
    size_t got = tok_apply_header_mode(mode, frame, len, &c->layers, out, c->limit);
    if (got != n || memcmp(out, expect, n) != 0) {
        print_error("%s frame %u (%s), mode %s: got %zu bytes, expected %zu\n", c->file, c->frame,
                    c->name, tok_header_mode_name(mode), got, n);
        for (size_t i = 0; i < got && i < n; i++)
            if (out[i] != expect[i])
                print_error("  first difference at byte %zu: %02x, expected %02x\n", i, out[i],
                            expect[i]);
        fail();
    }
    for (size_t i = got; i < sizeof(out); i++)
        assert_int_equal(out[i], 0xa5); /* nothing written past the result */
}

static void test_modes_on_real_frames(void **state)
{
    (void)state;
    for (size_t k = 0; k < N_CASES; k++) {
        const struct mode_case *c = &cases[k];
        uint8_t frame[2048], orig[256];
        uint32_t caplen;
        uint16_t linktype;
        assert_true(tt_read_frame(c->file, c->frame, frame, sizeof(frame), &caplen, &linktype));
        assert_int_equal(linktype, c->layers.linktype);
        /* The test decoder (used for the session tests) agrees with tshark's offsets. */
        struct cap_layers L;
        tt_decode(linktype, frame, caplen, &L);
        assert_memory_equal(&L, &c->layers, sizeof(L));

        size_t len = caplen < c->limit ? caplen : c->limit;
        size_t n = tt_hex(c->orig, orig, sizeof(orig));
        assert_int_equal(n, len);
        assert_memory_equal(frame, orig, n);
        check_mode(c, frame, len, TOK_HDR_NONE, c->orig);
        check_mode(c, frame, len, TOK_HDR_SEED, c->seed);
        check_mode(c, frame, len, TOK_HDR_FULL, c->full);
        check_mode(c, frame, len, TOK_HDR_STRICT, c->strict);
        check_mode(c, frame, len, TOK_HDR_STRIP, c->strip);
    }
}

/* Offsets that point past the stored bytes (a frame stored short, or a flow table keeping
 * fewer bytes than the headers span): never read or written past len or cap; the stored part
 * of a field that is cut is still zeroed. */
static void test_fields_past_len(void **state)
{
    (void)state;
    const struct mode_case *c = &cases[0]; /* ssh SYN: IPv4 src at 26..29, dst 30..33 */
    uint8_t frame[128];
    uint32_t caplen;
    uint16_t linktype;
    assert_true(tt_read_frame(c->file, c->frame, frame, sizeof(frame), &caplen, &linktype));
    uint8_t expect[128];
    tt_hex(c->full, expect, sizeof(expect));
    for (size_t len = 0; len <= caplen; len++) {
        uint8_t copy[128], out[160];
        memcpy(copy, frame, len); /* a stored prefix; nothing of it may be read past len */
        memset(out, 0xa5, sizeof(out));
        size_t got = tok_apply_header_mode(TOK_HDR_STRICT, copy, len, &c->layers, out, sizeof(out));
        assert_int_equal(got, len);
        uint8_t strict[128];
        tt_hex(c->strict, strict, sizeof(strict));
        assert_memory_equal(out, strict, len);
        for (size_t i = len; i < sizeof(out); i++)
            assert_int_equal(out[i], 0xa5);
        memset(out, 0xa5, sizeof(out));
        got = tok_apply_header_mode(TOK_HDR_FULL, copy, len, &c->layers, out, sizeof(out));
        assert_memory_equal(out, expect, len);
    }
    /* len 30 cuts the source address in two: 26..29 zeroed, the rest untouched. */
    uint8_t out[64];
    assert_int_equal(tok_apply_header_mode(TOK_HDR_SEED, frame, 30, &c->layers, out, 64), 30);
    assert_memory_equal(out + 26, "\0\0\0\0", 4);
    /* cap below len: only cap bytes come out, masked as in the full frame */
    memset(out, 0xa5, sizeof(out));
    assert_int_equal(tok_apply_header_mode(TOK_HDR_FULL, frame, caplen, &c->layers, out, 28), 28);
    assert_memory_equal(out, expect, 28);
    assert_int_equal(out[28], 0xa5);
    /* strip with a payload offset past the stored bytes is empty */
    const struct mode_case *d = &cases[1];
    uint8_t data[128];
    assert_true(tt_read_frame(d->file, d->frame, data, sizeof(data), &caplen, &linktype));
    assert_int_equal(tok_apply_header_mode(TOK_HDR_STRIP, data, 54, &d->layers, out, 64), 0);
    assert_int_equal(tok_apply_header_mode(TOK_HDR_STRIP, data, 60, &d->layers, out, 64), 6);
    assert_memory_equal(out, "SSH-2.", 6);
    assert_int_equal(tok_apply_header_mode(TOK_HDR_STRIP, data, caplen, &d->layers, out, 4), 4);
    assert_memory_equal(out, "SSH-", 4);
}

/* The capture has no IPv6 packet whose traffic class has low bits set, so one real frame is
 * edited: byte 15 (the traffic class's low nibble and the flow label's top bits) of pinterest
 * frame 1 becomes 0x58; strict keeps the class nibble 5 and clears the label. */
static void test_flow_label_keeps_traffic_class(void **state)
{
    (void)state;
    const struct mode_case *c = &cases[4];
    assert_string_equal(c->name, "pinterest_v6_tcp");
    uint8_t frame[128], out[128];
    uint32_t caplen;
    uint16_t linktype;
    assert_true(tt_read_frame(c->file, c->frame, frame, sizeof(frame), &caplen, &linktype));
    assert_int_equal(frame[14], 0x60);
    frame[15] = 0x58;
    tok_apply_header_mode(TOK_HDR_STRICT, frame, caplen, &c->layers, out, sizeof(out));
    assert_int_equal(out[14], 0x60);
    assert_int_equal(out[15], 0x50);
    assert_int_equal(out[16], 0);
    assert_int_equal(out[17], 0);
    tok_apply_header_mode(TOK_HDR_FULL, frame, caplen, &c->layers, out, sizeof(out));
    assert_int_equal(out[15], 0x58);
    assert_int_equal(out[16], 0xc9);
}

/* Layers without L3/L4 (ARP, a later fragment) touch only what exists. */
static void test_absent_layers(void **state)
{
    (void)state;
    uint8_t frame[60], out[60];
    for (size_t i = 0; i < sizeof(frame); i++)
        frame[i] = (uint8_t)(i + 1);
    struct cap_layers L = {0, CAP_ABSENT, CAP_ABSENT, CAP_ABSENT, CAP_LINK_EN10MB, 0, 0};
    tok_apply_header_mode(TOK_HDR_STRICT, frame, sizeof(frame), &L, out, sizeof(out));
    for (size_t i = 0; i < 12; i++)
        assert_int_equal(out[i], 0);
    assert_memory_equal(out + 12, frame + 12, sizeof(frame) - 12);
    assert_int_equal(tok_apply_header_mode(TOK_HDR_STRIP, frame, sizeof(frame), &L, out, 60), 0);
    /* IPv4 later fragment: addresses masked, no L4 field touched */
    L = (struct cap_layers){CAP_ABSENT, 0, CAP_ABSENT, CAP_ABSENT, CAP_LINK_RAW, 4, 17};
    tok_apply_header_mode(TOK_HDR_STRICT, frame, sizeof(frame), &L, out, sizeof(out));
    assert_memory_equal(out + 20, frame + 20, sizeof(frame) - 20);
    assert_int_equal(out[12], 0);
    assert_int_equal(out[19], 0);
    /* offsets far past the frame (as CAP_ABSENT - 1) do not wrap around */
    L = (struct cap_layers){UINT32_MAX - 1, UINT32_MAX - 2, UINT32_MAX - 3, UINT32_MAX - 4,
                            CAP_LINK_EN10MB, 4, 6};
    assert_int_equal(tok_apply_header_mode(TOK_HDR_STRICT, frame, 60, &L, out, 60), 60);
    assert_memory_equal(out, frame, 60);
    assert_int_equal(tok_apply_header_mode(TOK_HDR_STRIP, frame, 60, &L, out, 60), 0);
}

static void test_mode_names(void **state)
{
    (void)state;
    const char *names[] = {"none", "seed", "full", "strict", "strip"};
    for (int i = 0; i < 5; i++) {
        enum tok_header_mode m;
        assert_true(tok_header_mode_parse(names[i], &m));
        assert_int_equal(m, i);
        assert_string_equal(tok_header_mode_name(m), names[i]);
    }
    enum tok_header_mode m;
    assert_false(tok_header_mode_parse("Full", &m));
    assert_false(tok_header_mode_parse("", &m));
    assert_false(tok_header_mode_parse("strip38", &m));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_modes_on_real_frames),
        cmocka_unit_test(test_fields_past_len),
        cmocka_unit_test(test_flow_label_keeps_traffic_class),
        cmocka_unit_test(test_absent_layers),
        cmocka_unit_test(test_mode_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
