/* test_tokenizer_sequence.c — sessions to text and to ids.
 *
 * A hand-built session of tcpdump-ssh.pcap's first four frames checks the text literally (the
 * full-mode bytes are tshark's, as in test_tokenizer_header.c). Then every session of a dozen
 * real captures, under many settings and three vocabularies (built-in, NetGPT's, and NetGPT's
 * with the specials reordered so that [SEP]/[CLS]/[PAD] have other ids), must give the same ids
 * through the text (tok_text_ids(tok_session_text(...))) as straight from the session. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_tokenizer_util.h"

static const char ssh_full_text[] =
    /* frame 1: SYN with MSS, window scale, timestamps */
    "0000 0000 0000 0000 0000 0000 0800 4500 0040 0000 4000 4006 0344 0000 0000 "
    "0000 0000 0000 0000 f351 f158 0000 0000 b002 ffff ec12 0000 0204 05b4 0103 "
    "0306 0101 080a 7422 c7ce 0000 0000 0402 0000 "
    /* frame 2: SYN-ACK */
    "0000 0000 0000 0000 0000 0000 0800 4548 003c 0000 4000 3606 0d00 0000 0000 "
    "0000 0000 0000 0000 9257 ab46 f351 f159 a012 7120 8d3d 0000 0204 05b4 0402 "
    "0101 0101 0101 0101 0101 0103 0307 "
    /* frame 3: ACK */
    "0000 0000 0000 0000 0000 0000 0800 4500 0028 0000 4000 4006 035c 0000 0000 "
    "0000 0000 0000 0000 f351 f159 9257 ab47 5010 1000 533c 0000 "
    /* frame 4: the client's banner; 75 bytes, so the last byte (0x0a) is dropped */
    "0000 0000 0000 0000 0000 0000 0800 4500 003d 0000 4000 4006 0347 0000 0000 "
    "0000 0000 0000 0000 f351 f159 9257 ab47 5018 1000 8b76 0000 5353 482d 322e "
    "302d 4f70 656e 5353 485f 372e 380d";

struct ssh_session {
    uint8_t frames[4][128];
    struct ft_stored_packet stored[4];
    struct ft_session session;
};

static void build_ssh_session(struct ssh_session *s)
{
    memset(s, 0, sizeof(*s));
    /* offsets from tshark (ip.hdr_len at 14, tcp.hdr_len 44/40/20/20) */
    const uint32_t payload[4] = {78, 74, 54, 54};
    for (unsigned i = 0; i < 4; i++) {
        uint32_t caplen;
        uint16_t linktype;
        assert_true(
            tt_read_frame("tcpdump-ssh.pcap", i + 1, s->frames[i], 128, &caplen, &linktype));
        s->stored[i].bytes = s->frames[i];
        s->stored[i].stored_len = caplen;
        s->stored[i].caplen = caplen;
        s->stored[i].layers = (struct cap_layers){0, 14, 34, payload[i], CAP_LINK_EN10MB, 4, 6};
        s->stored[i].dir = i == 1;
    }
    s->session.ip_version = 4;
    s->session.proto = 6;
    s->session.n_stored = 4;
    s->session.stored = s->stored;
}

static void test_session_text(void **state)
{
    (void)state;
    struct ssh_session ssh;
    build_ssh_session(&ssh);
    struct tok_settings s;
    tok_settings_defaults(&s);
    assert_int_equal(s.header_mode, TOK_HDR_FULL);
    assert_int_equal(s.stride, 2);
    assert_int_equal(s.tokens_per_packet, 64);
    assert_int_equal(s.packets, 32);
    assert_int_equal(s.seq_length, 128);
    assert_false(s.sep_between_packets);
    char text[4096];
    size_t needed;
    size_t n = tok_session_text(&s, &ssh.session, text, sizeof(text), &needed);
    assert_string_equal(text, ssh_full_text);
    assert_int_equal(n, strlen(ssh_full_text));
    assert_int_equal(needed, n);

    /* cut: NUL-terminated prefix, full length in needed */
    assert_int_equal(tok_session_text(&s, &ssh.session, text, 10, &needed), 9);
    assert_string_equal(text, "0000 0000");
    assert_int_equal(needed, strlen(ssh_full_text));
    assert_int_equal(tok_session_text(&s, &ssh.session, NULL, 0, &needed), 0);
    assert_int_equal(needed, strlen(ssh_full_text));

    /* [SEP] between packets: the packets' own texts joined */
    s.sep_between_packets = true;
    char expect[4096] = "", one[1024];
    for (int i = 0; i < 4; i++) {
        tok_packet_text(&s, &ssh.stored[i], one, sizeof(one), NULL);
        if (i)
            strcat(expect, " [SEP] ");
        strcat(expect, one);
    }
    tok_session_text(&s, &ssh.session, text, sizeof(text), &needed);
    assert_string_equal(text, expect);

    /* packets: 2 */
    s.sep_between_packets = false;
    s.packets = 2;
    tok_session_text(&s, &ssh.session, text, sizeof(text), &needed);
    assert_int_equal(needed, (39 + 37) * 5 - 1);

    /* strip: only frame 4 has payload; empty packets leave no separator behind */
    s.packets = 32;
    s.header_mode = TOK_HDR_STRIP;
    s.sep_between_packets = true;
    tok_session_text(&s, &ssh.session, text, sizeof(text), &needed);
    assert_string_equal(text, "5353 482d 322e 302d 4f70 656e 5353 485f 372e 380d");

    /* stride 1, 3 tokens per packet */
    s.header_mode = TOK_HDR_NONE;
    s.stride = 1;
    s.tokens_per_packet = 3;
    s.sep_between_packets = false;
    tok_session_text(&s, &ssh.session, text, sizeof(text), &needed);
    assert_string_equal(text, "d4ca ca6d 6d2e 8c85 8590 903f d4ca ca6d 6d2e d4ca ca6d 6d2e");
}

static void test_text_ids(void **state)
{
    (void)state;
    struct tok_vocab *v = tok_vocab_builtin();
    uint32_t ids[16];
    const char *text = "0102 0304  [SEP] ffff\n";
    assert_int_equal(tok_text_ids(v, text, strlen(text), 8, ids), 6);
    const uint32_t expect[8] = {TOK_CLS, 5 + 0x0102, 5 + 0x0304, TOK_SEP, 5 + 0xffff, TOK_SEP,
                                TOK_PAD, TOK_PAD};
    assert_memory_equal(ids, expect, sizeof(expect));
    /* truncated: the closing [SEP] is lost */
    assert_int_equal(tok_text_ids(v, text, strlen(text), 3, ids), 3);
    assert_memory_equal(ids, expect, 3 * 4);
    assert_int_equal(tok_text_ids(v, text, strlen(text), 5, ids), 5);
    assert_int_equal(ids[4], 5 + 0xffff);
    assert_int_equal(tok_text_ids(v, text, strlen(text), 6, ids), 6);
    assert_int_equal(ids[5], TOK_SEP);
    assert_int_equal(tok_text_ids(v, "", 0, 4, ids), 2);
    assert_int_equal(ids[0], TOK_CLS);
    assert_int_equal(ids[1], TOK_SEP);
    assert_int_equal(ids[2], TOK_PAD);
    assert_int_equal(tok_text_ids(v, text, strlen(text), 1, ids), 1);
    assert_int_equal(tok_text_ids(v, text, strlen(text), 0, ids), 0);
    /* len bounds the text */
    assert_int_equal(tok_text_ids(v, text, 4, 8, ids), 3);
    tok_vocab_free(v);

    /* the session's ids, checked by hand on the built-in vocab */
    struct ssh_session ssh;
    build_ssh_session(&ssh);
    struct tok_settings s;
    tok_settings_defaults(&s);
    v = tok_vocab_builtin();
    uint32_t seq[128];
    assert_int_equal(tok_session_ids(v, &s, &ssh.session, seq), 128); /* 140 tokens, cut */
    assert_int_equal(seq[0], TOK_CLS);
    assert_int_equal(seq[1], 5);
    assert_int_equal(seq[7], 5 + 0x0800);
    assert_int_equal(seq[39], 5 + 0x0000); /* frame 1's last token (EOL padding) */
    assert_int_equal(seq[40], 5 + 0x0000); /* frame 2 starts with the zeroed MAC */
    assert_int_equal(seq[110], 5 + 0x0800); /* frame 4's EtherType: 1 + 39 + 37 + 27 + 6 */
    assert_int_equal(seq[127], 5 + 0x5018); /* its TCP flags word, where 128 ids end */
    s.seq_length = 256;
    uint32_t longer[256];
    assert_int_equal(tok_session_ids(v, &s, &ssh.session, longer), 142);
    assert_int_equal(longer[140], 5 + 0x380d);
    assert_int_equal(longer[141], TOK_SEP);
    assert_int_equal(longer[142], TOK_PAD);
    assert_int_equal(longer[255], TOK_PAD);
    tok_vocab_free(v);
}

/* ---- both paths on real sessions ---- */

static struct tok_vocab *vocabs[3];
static const char *vocab_names[3] = {"built-in", "NetGPT", "NetGPT, specials reordered"};

static int setup_vocabs(void **state)
{
    (void)state;
    char err[256];
    vocabs[0] = tok_vocab_builtin();
    vocabs[1] = tok_vocab_load(TT_VOCAB, err, sizeof(err));
    /* NetGPT's file with its first five lines reversed: [MASK] [UNK] [CLS] [SEP] [PAD] */
    FILE *f = fopen(TT_VOCAB, "rb");
    if (!f || !vocabs[1])
        return -1;
    static char data[1 << 20];
    size_t n = fread(data, 1, sizeof(data), f);
    fclose(f);
    const char *rest = data;
    for (int i = 0; i < 5; i++)
        rest = strchr(rest, '\n') + 1;
    char *buf = malloc(n + 1);
    size_t at = (size_t)sprintf(buf, "[MASK]\n[UNK]\n[CLS]\n[SEP]\n[PAD]\n");
    memcpy(buf + at, rest, n - (size_t)(rest - data));
    at += n - (size_t)(rest - data);
    vocabs[2] = tok_vocab_load_buffer("reordered", buf, at, err, sizeof(err));
    free(buf);
    return vocabs[2] ? 0 : -1;
}

static int teardown_vocabs(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++)
        tok_vocab_free(vocabs[i]);
    return 0;
}

static void test_reordered_specials(void **state)
{
    (void)state;
    struct tok_vocab *v = vocabs[2];
    assert_string_equal(tok_vocab_token(v, 3), "[SEP]");
    uint32_t ids[8];
    assert_int_equal(tok_text_ids(v, "0000 [SEP]", 10, 6, ids), 4);
    const uint32_t expect[6] = {2, 39, 3, 3, 4, 4}; /* [CLS] 0000 [SEP] [SEP] [PAD] [PAD] */
    assert_memory_equal(ids, expect, sizeof(expect));
}

static size_t nonempty_texts, split_words; /* evidence that the comparisons are not trivial */

static void check_session(const struct tok_vocab *v, int vi, const struct tok_settings *s,
                          const struct ft_session *session, const char *file)
{
    static char text[1 << 20];
    static uint32_t a[4096], b[4096];
    size_t needed;
    size_t n = tok_session_text(s, session, text, sizeof(text), &needed);
    assert_int_equal(n, needed);
    /* the text's shape: single spaces, no leading/trailing space, no doubled [SEP] */
    if (n) {
        assert_true(text[0] != ' ' && text[n - 1] != ' ');
        assert_null(strstr(text, "  "));
        assert_null(strstr(text, "[SEP] [SEP]"));
        assert_true(strncmp(text, "[SEP]", 5) != 0);
    }
    uint32_t na = tok_text_ids(v, text, n, s->seq_length, a);
    if (n) {
        nonempty_texts++;
        size_t words = 1;
        for (size_t i = 0; i < n; i++)
            words += text[i] == ' ';
        if (vi > 0 && s->seq_length > 2 && words + 2 < s->seq_length && na > words + 2)
            split_words++; /* some 4-hex token became several WordPiece ids */
    }
    uint32_t nb = tok_session_ids(v, s, session, b);
    if (na != nb || memcmp(a, b, sizeof(uint32_t) * s->seq_length) != 0) {
        print_error("%s session %llu, vocab %s, mode %s stride %d tpp %u packets %u seq %u "
                    "sep %d: text path %u ids, session path %u\n",
                    file, (unsigned long long)session->id, vocab_names[vi],
                    tok_header_mode_name(s->header_mode), s->stride, s->tokens_per_packet,
                    s->packets, s->seq_length, s->sep_between_packets, na, nb);
        fail();
    }
}

static void test_paths_agree(void **state)
{
    (void)state;
    const char *files[] = {
        "tcpdump-ssh.pcap",          "ndpi-bot.pcap",           "ndpi-pinterest.pcap",
        "ndpi-ocs.pcap",             "ndpi-quic_interop_V.pcapng", "ndpi-sites.pcapng",
        "ndpi-KakaoTalk_chat.pcap",  "ndpi-openwire.pcapng",    "tcpdump-resp_1_benchmark.pcap",
        "tcpdump-ipv6-routing-header.pcap", "tcpdump-LINKTYPE_RAW_ipv6.pcap", "ndpi-teams.pcap",
        "tcpdump-quic_handshake_truncated.pcap", "ndpi-6in4tunnel.pcap", "ndpi-gnutella.pcap",
    };
    struct tok_settings variants[12];
    for (int i = 0; i < 12; i++)
        tok_settings_defaults(&variants[i]);
    variants[1].header_mode = TOK_HDR_SEED;
    variants[2].header_mode = TOK_HDR_STRICT, variants[2].sep_between_packets = true;
    variants[3].header_mode = TOK_HDR_STRIP, variants[3].sep_between_packets = true;
    variants[4].header_mode = TOK_HDR_NONE, variants[4].stride = 1;
    variants[5].stride = 1, variants[5].tokens_per_packet = 300, variants[5].seq_length = 1024;
    variants[6].tokens_per_packet = 3, variants[6].sep_between_packets = true;
    variants[7].tokens_per_packet = 0;
    variants[8].packets = 2, variants[8].seq_length = 16;
    variants[9].seq_length = 1;
    variants[10].seq_length = 0;
    variants[11].header_mode = TOK_HDR_STRIP, variants[11].seq_length = 2048,
    variants[11].tokens_per_packet = 1000, variants[11].sep_between_packets = true;
    size_t sessions = 0;
    for (size_t f = 0; f < sizeof(files) / sizeof(files[0]); f++) {
        struct tt_capture c;
        /* 1500 bytes stored: the strip and stride-1 variants see whole payloads */
        assert_true(tt_load_sessions(files[f], 32, 1500, &c));
        assert_true(c.n > 0);
        for (size_t i = 0; i < c.n; i++)
            for (int vi = 0; vi < 3; vi++)
                for (int k = 0; k < 12; k++)
                    check_session(vocabs[vi], vi, &variants[k], &c.sessions[i].view, files[f]);
        sessions += c.n;
        tt_free_sessions(&c);
    }
    assert_true(sessions > 300);
    print_message("%zu sessions, %zu non-empty texts, %zu with WordPiece splits\n", sessions,
                  nonempty_texts, split_words);
    assert_true(nonempty_texts > 10000);
    assert_true(split_words > 100);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_session_text),
        cmocka_unit_test(test_text_ids),
        cmocka_unit_test(test_reordered_specials),
        cmocka_unit_test(test_paths_agree),
    };
    return cmocka_run_group_tests(tests, setup_vocabs, teardown_vocabs);
}
