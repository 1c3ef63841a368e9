/* test_tokenizer_shard.c — token shards: the byte layout, write/read round trips, the
 * temporary-name-then-rename rule, and the reader's rejection of damaged or foreign files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_tokenizer_util.h"

static char dir[64];

static int make_dir(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/netlm_shard_XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int remove_dir(void **state)
{
    (void)state;
    return rmdir(dir); /* fails if a test left a file behind */
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static char *path_of(const char *name)
{
    static char path[128];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return path;
}

static char *tmp_of(const char *path)
{
    static char tmp[160];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    return tmp;
}

static void test_layout(void **state)
{
    (void)state;
    char err[256] = "";
    char *path = path_of("small.tok");
    struct tok_shard_writer *w = tok_shard_create(path, 65541, 128, err, sizeof(err));
    assert_non_null(w);
    tok_shard_set_vocab_digest(w, 0x0102030405060708ull);
    /* written under the temporary name until commit */
    assert_true(exists(tmp_of(path)));
    assert_false(exists(path));
    const uint32_t doc1[] = {2, 5, 65540, 1}, doc2[] = {2, 1};
    assert_int_equal(tok_shard_append(w, doc1, 4), 0);
    assert_int_equal(tok_shard_append(w, doc2, 2), 0);
    assert_int_equal(tok_shard_commit(w, err, sizeof(err)), 0);
    assert_true(exists(path));
    assert_false(exists(tmp_of(path)));

    /* the bytes, spelled out: little-endian header then ids */
    const uint8_t expect[] = {
        'N', 'E', 'T', 'L', 'M', 'T', 'O', 'K', /* magic */
        1, 0, 0, 0,                             /* version */
        64, 0, 0, 0,                            /* header size */
        6, 0, 0, 0, 0, 0, 0, 0,                 /* tokens */
        2, 0, 0, 0, 0, 0, 0, 0,                 /* documents */
        0x05, 0x00, 0x01, 0x00,                 /* vocab size 65541 */
        128, 0, 0, 0,                           /* seq length */
        8, 7, 6, 5, 4, 3, 2, 1,                 /* vocab digest */
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* reserved */
        2, 0, 0, 0, 5, 0, 0, 0, 0x04, 0x00, 0x01, 0x00, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0,
    };
    uint8_t got[256];
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    size_t n = fread(got, 1, sizeof(got), f);
    fclose(f);
    assert_int_equal(n, sizeof(expect));
    assert_memory_equal(got, expect, sizeof(expect));

    struct tok_shard s;
    assert_int_equal(tok_shard_open(path, &s, err, sizeof(err)), 0);
    assert_memory_equal(s.header.magic, TOK_SHARD_MAGIC, 8);
    assert_int_equal(s.header.version, TOK_SHARD_VERSION);
    assert_int_equal(s.header.header_size, 64);
    assert_int_equal(s.header.n_tokens, 6);
    assert_int_equal(s.header.n_documents, 2);
    assert_int_equal(s.header.vocab_size, 65541);
    assert_int_equal(s.header.seq_length, 128);
    assert_true(s.header.vocab_digest == 0x0102030405060708ull);
    const uint32_t all[] = {2, 5, 65540, 1, 2, 1};
    assert_memory_equal(s.ids, all, sizeof(all));
    assert_int_equal(tok_shard_check_ids(&s, err, sizeof(err)), 0);
    tok_shard_close(&s);
    assert_null(s.map);
    unlink(path);
}

/* More ids than the writer buffers at once, and an empty shard. */
static void test_round_trip(void **state)
{
    (void)state;
    char err[256];
    char *path = path_of("big.tok");
    struct tok_shard_writer *w = tok_shard_create(path, 1000, 129, err, sizeof(err));
    assert_non_null(w);
    uint32_t doc[129];
    size_t total = 0;
    for (uint32_t d = 0; d < 3000; d++) {
        size_t n = 1 + d % 129;
        for (size_t i = 0; i < n; i++)
            doc[i] = (uint32_t)((d * 131 + i * 7) % 1000);
        assert_int_equal(tok_shard_append(w, doc, n), 0);
        total += n;
    }
    assert_int_equal(tok_shard_commit(w, err, sizeof(err)), 0);
    struct tok_shard s;
    assert_int_equal(tok_shard_open(path, &s, err, sizeof(err)), 0);
    assert_int_equal(s.header.n_tokens, total);
    assert_int_equal(s.header.n_documents, 3000);
    size_t at = 0;
    for (uint32_t d = 0; d < 3000; d++)
        for (size_t i = 0; i < 1 + d % 129; i++)
            assert_int_equal(s.ids[at++], (d * 131 + i * 7) % 1000);
    tok_shard_close(&s);
    unlink(path);

    path = path_of("empty.tok");
    w = tok_shard_create(path, 65541, 128, err, sizeof(err));
    assert_int_equal(tok_shard_commit(w, err, sizeof(err)), 0);
    assert_int_equal(tok_shard_open(path, &s, err, sizeof(err)), 0);
    assert_int_equal(s.header.n_tokens, 0);
    assert_int_equal(s.header.n_documents, 0);
    tok_shard_close(&s);
    unlink(path);
}

static void test_abort(void **state)
{
    (void)state;
    char err[256];
    char *path = path_of("aborted.tok");
    struct tok_shard_writer *w = tok_shard_create(path, 65541, 128, err, sizeof(err));
    const uint32_t doc[] = {2, 7, 1};
    assert_int_equal(tok_shard_append(w, doc, 3), 0);
    tok_shard_abort(w);
    assert_false(exists(path));
    assert_false(exists(tmp_of(path)));

    /* an id outside the vocabulary fails the append, and then the commit; nothing remains */
    w = tok_shard_create(path, 100, 128, err, sizeof(err));
    const uint32_t bad[] = {2, 100, 1};
    assert_int_equal(tok_shard_append(w, doc, 3), 0);
    assert_int_equal(tok_shard_append(w, bad, 3), -1);
    assert_int_equal(tok_shard_append(w, doc, 3), -1);
    err[0] = '\0';
    assert_int_equal(tok_shard_commit(w, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "document 2 has id 100, outside the vocabulary of 100"));
    assert_non_null(strstr(err, path));
    assert_false(exists(path));
    assert_false(exists(tmp_of(path)));

    /* a directory that does not exist */
    assert_null(tok_shard_create("/nonexistent/netlm/x.tok", 10, 10, err, sizeof(err)));
    assert_non_null(strstr(err, "/nonexistent/netlm/x.tok: cannot create /nonexistent/netlm/x.tok.tmp."));
    assert_non_null(strstr(err, "cannot create"));
}

static void write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

static void expect_open_error(const char *path, const char *needle)
{
    struct tok_shard s;
    char err[256] = "";
    assert_int_equal(tok_shard_open(path, &s, err, sizeof(err)), -1);
    if (!strstr(err, needle) || !strstr(err, path)) {
        print_error("message \"%s\" lacks \"%s\" or the path\n", err, needle);
        fail();
    }
    assert_null(strchr(err, '\n'));
    assert_null(s.map);
}

static void test_damaged(void **state)
{
    (void)state;
    char err[256];
    char *p = path_of("good.tok");
    char good[128];
    snprintf(good, sizeof(good), "%s", p);
    struct tok_shard_writer *w = tok_shard_create(good, 65541, 128, err, sizeof(err));
    const uint32_t doc[] = {2, 7, 8, 9, 1};
    tok_shard_append(w, doc, 5);
    assert_int_equal(tok_shard_commit(w, err, sizeof(err)), 0);
    uint8_t bytes[64 + 20 + 8];
    FILE *f = fopen(good, "rb");
    assert_int_equal(fread(bytes, 1, 84, f), 84);
    fclose(f);
    char *bad = path_of("bad.tok");

    write_bytes(bad, bytes, 82); /* truncated inside the ids */
    expect_open_error(bad, "82 bytes but the header says 5 tokens (84 bytes)");
    memset(bytes + 84, 0, 8);
    write_bytes(bad, bytes, 92); /* trailing bytes */
    expect_open_error(bad, "92 bytes but the header says 5 tokens");
    write_bytes(bad, bytes, 40); /* truncated header */
    expect_open_error(bad, "40 bytes, shorter than the 64-byte token shard header");
    write_bytes(bad, bytes, 0);
    expect_open_error(bad, "0 bytes");
    uint8_t copy[84];
    memcpy(copy, bytes, 84);
    copy[8] = 2;
    write_bytes(bad, copy, 84);
    expect_open_error(bad, "token shard version 2, this netlm reads version 1");
    memcpy(copy, bytes, 84);
    copy[12] = 80;
    write_bytes(bad, copy, 84);
    expect_open_error(bad, "header size 80, expected 64");
    memcpy(copy, bytes, 84);
    memset(copy + 32, 0, 4);
    write_bytes(bad, copy, 84);
    expect_open_error(bad, "vocabulary size 0");
    memcpy(copy, bytes, 84);
    memset(copy + 16, 0xff, 8); /* a token count whose byte size overflows */
    write_bytes(bad, copy, 84);
    expect_open_error(bad, "truncated or damaged");
    unlink(bad);

    /* a foreign file: a real pcap */
    char pcap[256];
    snprintf(pcap, sizeof(pcap), "%s%s", TT_PCAPS, "tcpdump-ssh.pcap");
    expect_open_error(pcap, "not a netlm token shard (bad magic)");
    expect_open_error(path_of("missing.tok"), "cannot open");

    /* sizes fine, an id out of range: open succeeds, the id check does not */
    memcpy(copy, bytes, 84);
    copy[64 + 8] = 0x05, copy[64 + 9] = 0x00, copy[64 + 10] = 0x01, copy[64 + 11] = 0x00;
    write_bytes(bad, copy, 84);
    struct tok_shard s;
    assert_int_equal(tok_shard_open(bad, &s, err, sizeof(err)), 0);
    assert_int_equal(tok_shard_check_ids(&s, err, sizeof(err)), -1);
    assert_string_equal(err, "token 2 has id 65541, outside the vocabulary of 65541");
    tok_shard_close(&s);
    unlink(bad);
    unlink(good);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_abort),
        cmocka_unit_test(test_damaged),
    };
    return cmocka_run_group_tests(tests, make_dir, remove_dir);
}
