/* test_tokenizer_hex.c — hex token values at both strides, the seed's corpus halves, and the
 * generation fields, with the seed documentation's golden cases and real frames (layer offsets
 * and field values from tshark: ip.len, tcp.srcport/dstport, ip.ttl, tcp.window_size_value,
 * ipv6.plen, ipv6.hlim, udp.srcport/dstport). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_tokenizer_util.h"

static void text_of(const uint16_t *v, size_t n, char *out)
{
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        char hex[5];
        tok_format_value(v[i], hex);
        if (i)
            strcat(out, " ");
        strcat(out, hex);
    }
}

/* seed-pipeline.md §3.1: the shipped stride-2 function on 0x01..0x8b and on 0x01..0x07. */
static void test_golden_stride2(void **state)
{
    (void)state;
    uint8_t bytes[139];
    for (int i = 0; i < 139; i++)
        bytes[i] = (uint8_t)(i + 1);
    uint16_t v[128];
    char text[1024];
    assert_int_equal(tok_hex_values(bytes, 139, 2, 64, v), 64);
    text_of(v, 64, text);
    assert_string_equal(
        text, "0102 0304 0506 0708 090a 0b0c 0d0e 0f10 1112 1314 1516 1718 191a 1b1c 1d1e 1f20 "
              "2122 2324 2526 2728 292a 2b2c 2d2e 2f30 3132 3334 3536 3738 393a 3b3c 3d3e 3f40 "
              "4142 4344 4546 4748 494a 4b4c 4d4e 4f50 5152 5354 5556 5758 595a 5b5c 5d5e 5f60 "
              "6162 6364 6566 6768 696a 6b6c 6d6e 6f70 7172 7374 7576 7778 797a 7b7c 7d7e 7f80");
    assert_int_equal(tok_hex_values(bytes, 7, 2, 64, v), 3);
    text_of(v, 3, text);
    assert_string_equal(text, "0102 0304 0506");

    /* the same through a packet's text (mode none: bytes as captured) */
    struct tok_settings s;
    tok_settings_defaults(&s);
    s.header_mode = TOK_HDR_NONE;
    struct ft_stored_packet pkt = {.bytes = bytes, .stored_len = 7};
    pkt.layers = (struct cap_layers){CAP_ABSENT, CAP_ABSENT, CAP_ABSENT, CAP_ABSENT, 1, 0, 0};
    size_t needed;
    assert_int_equal(tok_packet_text(&s, &pkt, text, sizeof(text), &needed), 14);
    assert_string_equal(text, "0102 0304 0506");
    pkt.stored_len = 139;
    assert_int_equal(tok_packet_text(&s, &pkt, text, sizeof(text), &needed), 64 * 5 - 1);
    assert_memory_equal(text + 64 * 5 - 10, "7d7e 7f80", 10);
    /* cut output: NUL-terminated, needed says the full length */
    assert_int_equal(tok_packet_text(&s, &pkt, text, 8, &needed), 7);
    assert_string_equal(text, "0102 03");
    assert_int_equal(needed, 64 * 5 - 1);
}

static void test_stride1(void **state)
{
    (void)state;
    const uint8_t bytes[] = {1, 2, 3, 4, 5, 6, 7};
    uint16_t v[16];
    char text[128];
    assert_int_equal(tok_hex_values(bytes, 7, 1, 64, v), 6);
    text_of(v, 6, text);
    assert_string_equal(text, "0102 0203 0304 0405 0506 0607");
    assert_int_equal(tok_hex_values(bytes, 7, 1, 3, v), 3);
    text_of(v, 3, text);
    assert_string_equal(text, "0102 0203 0304");
    assert_int_equal(tok_hex_values(bytes, 1, 1, 64, v), 0);
    assert_int_equal(tok_hex_values(bytes, 0, 1, 64, v), 0);
    assert_int_equal(tok_hex_values(bytes, 1, 2, 64, v), 0);
    assert_int_equal(tok_hex_values(bytes, 2, 2, 64, v), 1);
    assert_int_equal(tok_hex_values(bytes, 7, 3, 64, v), 0); /* no such stride */
    char hex[5];
    tok_format_value(0xabcd, hex);
    assert_string_equal(hex, "abcd");
    tok_format_value(0x0009, hex);
    assert_string_equal(hex, "0009");
}

/* ---- corpus halves ---- */

/* A raw-IPv4/UDP frame whose bytes after the ports number n: the seed's 38-byte strip is
 * l4_off + 4, here 24. */
static void check_halves(size_t n, size_t bytes1, size_t tok1, size_t tok2)
{
    uint8_t frame[1024];
    for (size_t i = 0; i < sizeof(frame); i++)
        frame[i] = (uint8_t)(i * 7 + 3);
    struct cap_layers L = {CAP_ABSENT, 0, 20, 28, CAP_LINK_RAW, 4, 17};
    uint16_t h1[TOK_CORPUS_MAX_HALF], h2[TOK_CORPUS_MAX_HALF];
    size_t n1, n2;
    assert_true(tok_corpus_halves(frame, 24 + n, &L, false, TOK_HDR_NONE, h1, &n1, h2, &n2));
    assert_int_equal(n1, tok1);
    assert_int_equal(n2, tok2);
    uint16_t e1[TOK_CORPUS_MAX_HALF], e2[TOK_CORPUS_MAX_HALF];
    assert_int_equal(tok_hex_values(frame + 24, bytes1, 1, 256, e1), tok1);
    assert_int_equal(tok_hex_values(frame + 24 + bytes1, n - bytes1, 1, 256, e2), tok2);
    assert_memory_equal(h1, e1, tok1 * 2);
    assert_memory_equal(h2, e2, tok2 * 2);
}

static void test_corpus_golden(void **state)
{
    (void)state;
    /* seed-pipeline.md §2.3 A: first half (n + n % 4) / 2 bytes */
    check_halves(5, 3, 2, 1);
    check_halves(50, 26, 25, 23);
    check_halves(51, 27, 26, 23);
    check_halves(600, 300, 256, 256); /* 299 tokens each, capped */
    check_halves(6, 4, 3, 1);         /* 6 % 4 = 2 → 4 + 2 */
    check_halves(7, 5, 4, 1);
    check_halves(8, 4, 3, 3);
    uint8_t frame[64] = {0};
    struct cap_layers L = {CAP_ABSENT, 0, 20, 28, CAP_LINK_RAW, 4, 17};
    uint16_t h1[TOK_CORPUS_MAX_HALF], h2[TOK_CORPUS_MAX_HALF];
    size_t n1, n2;
    assert_false(tok_corpus_halves(frame, 28, &L, false, TOK_HDR_NONE, h1, &n1, h2, &n2));
    assert_false(tok_corpus_halves(frame, 10, &L, false, TOK_HDR_NONE, h1, &n1, h2, &n2));
    L.l4_proto = 1; /* ICMP: no ports */
    assert_false(tok_corpus_halves(frame, 64, &L, false, TOK_HDR_NONE, h1, &n1, h2, &n2));
    L = (struct cap_layers){CAP_ABSENT, 0, CAP_ABSENT, CAP_ABSENT, CAP_LINK_RAW, 4, 17};
    assert_false(tok_corpus_halves(frame, 64, &L, false, TOK_HDR_NONE, h1, &n1, h2, &n2));
    /* with a mode the whole frame counts, ports or not */
    assert_true(tok_corpus_halves(frame, 64, &L, true, TOK_HDR_FULL, h1, &n1, h2, &n2));
    assert_int_equal(n1, 31);
    assert_int_equal(n2, 31);
}

/* tcpdump-ssh.pcap frame 4 (75 bytes, Ethernet/IPv4/TCP, 21 payload bytes
 * "SSH-2.0-OpenSSH_7.8\r\n"): after the ports (byte 38) 37 bytes remain: 19 + 18. */
static void test_corpus_real_frame(void **state)
{
    (void)state;
    uint8_t frame[128];
    uint32_t caplen;
    uint16_t linktype;
    assert_true(tt_read_frame("tcpdump-ssh.pcap", 4, frame, sizeof(frame), &caplen, &linktype));
    assert_int_equal(caplen, 75);
    struct cap_layers L = {0, 14, 34, 54, CAP_LINK_EN10MB, 4, 6};
    uint16_t h1[TOK_CORPUS_MAX_HALF], h2[TOK_CORPUS_MAX_HALF];
    size_t n1, n2;
    char text[2048];
    assert_true(tok_corpus_halves(frame, caplen, &L, false, TOK_HDR_NONE, h1, &n1, h2, &n2));
    text_of(h1, n1, text);
    assert_string_equal(text, "f351 51f1 f159 5992 9257 57ab ab47 4750 5018 1810 1000 008b 8b76 "
                              "7600 0000 0053 5353 5348");
    text_of(h2, n2, text);
    assert_string_equal(text, "2d32 322e 2e30 302d 2d4f 4f70 7065 656e 6e53 5353 5348 485f 5f37 "
                              "372e 2e38 380d 0d0a");
    assert_int_equal(n2, 17); /* the halves do not overlap: "SSH" ends the first, "-" starts this */

    /* full mode, whole frame: 75 bytes → 39 + 36; the first token is the zeroed MAC */
    assert_true(tok_corpus_halves(frame, caplen, &L, true, TOK_HDR_FULL, h1, &n1, h2, &n2));
    assert_int_equal(n1, 38);
    assert_int_equal(n2, 35);
    assert_int_equal(h1[0], 0x0000);
    assert_int_equal(h1[11], 0x0008); /* byte 11 (zeroed MAC), then the EtherType */
    assert_int_equal(h1[12], 0x0800);
    assert_int_equal(h2[n2 - 1], 0x0d0a);
    /* strip: the 21 payload bytes → 11 + 10 */
    assert_true(tok_corpus_halves(frame, caplen, &L, true, TOK_HDR_STRIP, h1, &n1, h2, &n2));
    assert_int_equal(n1, 10);
    assert_int_equal(n2, 9);
    assert_int_equal(h1[0], 0x5353); /* "SS" */
    assert_int_equal(h2[0], 0x6e53); /* "SSH-2.0-Ope" | "nSSH_7.8\r\n" */
    /* strip on a SYN (no payload): nothing */
    assert_true(tt_read_frame("tcpdump-ssh.pcap", 1, frame, sizeof(frame), &caplen, &linktype));
    L.payload_off = 78;
    assert_false(tok_corpus_halves(frame, caplen, &L, true, TOK_HDR_STRIP, h1, &n1, h2, &n2));
}

/* ---- generation fields ---- */

static void test_field_target_text(void **state)
{
    (void)state;
    char out[10];
    tok_field_target_text(60, out);
    assert_string_equal(out, "0000 003c");
    tok_field_target_text(40, out);
    assert_string_equal(out, "0000 0028");
    tok_field_target_text(1500, out);
    assert_string_equal(out, "0000 05dc");
    tok_field_target_text(0, out);
    assert_string_equal(out, "0000 0000");
    tok_field_target_text(0x12345678u, out);
    assert_string_equal(out, "1234 5678");
    /* and back, from generated text */
    uint64_t v = 7;
    assert_true(tok_field_target_value("0000 003c", &v));
    assert_int_equal(v, 60);
    assert_true(tok_field_target_value("1234 5678", &v));
    assert_int_equal(v, 0x12345678u);
    assert_true(tok_field_target_value("05dc", &v));
    assert_int_equal(v, 1500);
    assert_true(tok_field_target_value("ffff ffff ffff ffff", &v));
    assert_true(v == UINT64_MAX);
    const char *bad[] = {"", "003", "0000 003c ", "0000  003c", "0000 003C", "[UNK]", "0000 [UNK]",
                         "0000 0000 0000 0000 0000", "00g0"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        v = 7;
        assert_false(tok_field_target_value(bad[i], &v));
        assert_int_equal(v, 7);
    }
    const char *names[] = {"ip_len", "src_port", "dst_port", "ttl", "tcp_window"};
    for (int i = 0; i < TOK_FIELD_COUNT; i++) {
        enum tok_field f;
        assert_true(tok_field_parse(names[i], &f));
        assert_int_equal(f, i);
        assert_string_equal(tok_field_name(f), names[i]);
    }
    enum tok_field f;
    assert_false(tok_field_parse("length", &f));
}

struct field_case {
    const char *file;
    unsigned frame;
    struct cap_layers layers;
    int64_t expect[TOK_FIELD_COUNT]; /* -1: the packet lacks it */
};

static void test_field_take(void **state)
{
    (void)state;
    /* values from tshark -T fields -e ip.len -e tcp.srcport -e tcp.dstport -e ip.ttl
     * -e tcp.window_size_value (IPv6: ipv6.plen, ipv6.hlim; UDP: udp.srcport/dstport) */
    const struct field_case cases[] = {
        {"tcpdump-ssh.pcap", 1, {0, 14, 34, 78, CAP_LINK_EN10MB, 4, 6}, {64, 62146, 22, 64, 65535}},
        {"ndpi-pinterest.pcap", 1, {0, 14, 54, 86, CAP_LINK_EN10MB, 6, 6},
         {32, 33164, 443, 64, 501}},
        {"tcpdump-LINKTYPE_RAW_ipv4.pcap", 1, {CAP_ABSENT, 0, 20, 28, CAP_LINK_RAW, 4, 17},
         {57, 12345, 53, 64, -1}},
        {"ndpi-quic_interop_V.pcapng", 11, {0, 14, 34, 42, CAP_LINK_EN10MB, 4, 1},
         {576, -1, -1, 38, -1}},
        {"ndpi-bot.pcap", 1, {0, 18, 38, 66, CAP_LINK_EN10MB, 4, 6}, {48, 64768, 80, 110, 64240}},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        const struct field_case *c = &cases[k];
        for (int f = 0; f < TOK_FIELD_COUNT; f++) {
            uint8_t frame[2048], before[2048];
            uint32_t caplen;
            uint16_t linktype;
            assert_true(tt_read_frame(c->file, c->frame, frame, sizeof(frame), &caplen, &linktype));
            memcpy(before, frame, caplen);
            uint32_t value = 12345678;
            bool has = tok_field_take((enum tok_field)f, frame, caplen, &c->layers, &value);
            if (c->expect[f] < 0) {
                assert_false(has);
                assert_int_equal(value, 0);
                assert_memory_equal(frame, before, caplen);
                continue;
            }
            if (!has || value != (uint32_t)c->expect[f]) {
                print_error("%s frame %u field %s: %s %u, expected %lld\n", c->file, c->frame,
                            tok_field_name((enum tok_field)f), has ? "got" : "absent", value,
                            (long long)c->expect[f]);
                fail();
            }
            size_t changed = 0;
            for (uint32_t i = 0; i < caplen; i++)
                if (frame[i] != before[i]) {
                    assert_int_equal(frame[i], 0);
                    changed++;
                }
            assert_true(changed >= 1 && changed <= 2);
            /* taking it again reads the zero */
            assert_true(tok_field_take((enum tok_field)f, frame, caplen, &c->layers, &value));
            assert_int_equal(value, 0);
        }
    }
    /* a field past len: absent, nothing touched */
    uint8_t frame[128];
    uint32_t caplen;
    uint16_t linktype;
    assert_true(tt_read_frame("tcpdump-ssh.pcap", 1, frame, sizeof(frame), &caplen, &linktype));
    struct cap_layers L = {0, 14, 34, 78, CAP_LINK_EN10MB, 4, 6};
    uint32_t value;
    assert_false(tok_field_take(TOK_FIELD_IP_LENGTH, frame, 17, &L, &value));
    assert_int_equal(frame[17], 0x40);
    assert_true(tok_field_take(TOK_FIELD_IP_LENGTH, frame, 18, &L, &value));
    assert_int_equal(value, 64);
    assert_false(tok_field_take(TOK_FIELD_TCP_WINDOW, frame, 49, &L, &value));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_stride2),  cmocka_unit_test(test_stride1),
        cmocka_unit_test(test_corpus_golden),   cmocka_unit_test(test_corpus_real_frame),
        cmocka_unit_test(test_field_target_text), cmocka_unit_test(test_field_take),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
