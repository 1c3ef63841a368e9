/* test_tokenizer_vocab.c — the built-in vocabulary, UER vocab files (NetGPT's real one and
 * small files for the line rules and the errors), and UER-style word tokenization.
 *
 * Expectations on the NetGPT vocab are re-derived here independently of vocab.c: ids by
 * scanning the file line by line, WordPiece by a plain greedy loop over a sorted token list. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_tokenizer_util.h"

static void test_builtin(void **state)
{
    (void)state;
    struct tok_vocab *v = tok_vocab_builtin();
    assert_non_null(v);
    assert_true(tok_vocab_is_builtin(v));
    assert_int_equal(tok_vocab_size(v), 65541);
    const char *specials[] = {"[PAD]", "[SEP]", "[CLS]", "[UNK]", "[MASK]"};
    for (uint32_t i = 0; i < 5; i++) {
        assert_string_equal(tok_vocab_token(v, i), specials[i]);
        uint32_t id;
        size_t needed;
        size_t n = tok_vocab_word_ids(v, specials[i], strlen(specials[i]), &id, 1, &needed);
        assert_int_equal(n, 1);
        assert_int_equal(id, i);
    }
    assert_string_equal(tok_vocab_token(v, 5), "0000");
    assert_string_equal(tok_vocab_token(v, 5 + 0x0a1b), "0a1b");
    assert_string_equal(tok_vocab_token(v, 65540), "ffff");
    assert_null(tok_vocab_token(v, 65541));
    /* generated ids as text: up to the first [SEP], [UNK] outside the vocabulary, whole tokens
     * while they fit */
    const uint32_t gen[] = {5, 5 + 0x3c, TOK_SEP, 5 + 1};
    char text[32];
    assert_int_equal(tok_ids_text(v, gen, 4, text, sizeof text), 9);
    assert_string_equal(text, "0000 003c");
    const uint32_t odd[] = {5 + 0xffff, 70000, 5};
    assert_int_equal(tok_ids_text(v, odd, 3, text, sizeof text), 15);
    assert_string_equal(text, "ffff [UNK] 0000");
    assert_int_equal(tok_ids_text(v, odd, 3, text, 12), 10);
    assert_string_equal(text, "ffff [UNK]");
    assert_int_equal(tok_ids_text(v, gen + 2, 2, text, sizeof text), 0);
    assert_string_equal(text, "");
    for (uint32_t value = 0; value < 65536; value++) {
        uint32_t ids[TOK_MAX_PIECES], wid[4];
        assert_int_equal(tok_vocab_value_ids(v, (uint16_t)value, ids), 1);
        assert_int_equal(ids[0], 5 + value);
        char hex[5];
        tok_format_value((uint16_t)value, hex);
        assert_int_equal(tok_vocab_word_ids(v, hex, 4, wid, 4, NULL), 1);
        assert_int_equal(wid[0], 5 + value);
    }
    uint32_t ids[8];
    size_t needed;
    /* BasicTokenizer lower-cases; the built-in vocab has no pieces, so anything else is [UNK] */
    assert_int_equal(tok_vocab_word_ids(v, "0A1B", 4, ids, 8, &needed), 1);
    assert_int_equal(ids[0], 5 + 0x0a1b);
    assert_int_equal(tok_vocab_word_ids(v, "0a1b0c", 6, ids, 8, &needed), 1);
    assert_int_equal(ids[0], TOK_UNK);
    assert_int_equal(tok_vocab_word_ids(v, "[sep]", 5, ids, 8, &needed), 3); /* "[", "sep", "]" */
    assert_int_equal(ids[0], TOK_UNK);
    assert_int_equal(tok_vocab_word_ids(v, "0a1b,ffff", 9, ids, 8, &needed), 3);
    assert_int_equal(ids[0], 5 + 0x0a1b);
    assert_int_equal(ids[1], TOK_UNK);
    assert_int_equal(ids[2], 5 + 0xffff);
    /* max cuts, needed tells the whole */
    assert_int_equal(tok_vocab_word_ids(v, "0a1b,ffff", 9, ids, 1, &needed), 1);
    assert_int_equal(needed, 3);
    assert_int_equal(ids[0], 5 + 0x0a1b);
    tok_vocab_free(v);
}

/* ---- the NetGPT vocab ---- */

struct line_tok {
    char text[64];
    uint32_t id;
};

static int cmp_line_tok(const void *a, const void *b)
{
    const struct line_tok *x = a, *y = b;
    int c = strcmp(x->text, y->text);
    return c ? c : (x->id < y->id ? -1 : x->id > y->id);
}

static struct line_tok *lines;
static size_t n_lines;

/* Every line of the file as (text, line number - 1), sorted by text. */
static int load_lines(void **state)
{
    (void)state;
    FILE *f = fopen(TT_VOCAB, "r");
    if (!f)
        return -1;
    lines = calloc(70000, sizeof(*lines));
    char buf[256];
    while (fgets(buf, sizeof(buf), f)) {
        buf[strcspn(buf, "\r\n")] = '\0';
        size_t l = strlen(buf);
        if (l >= sizeof(lines[n_lines].text))
            l = sizeof(lines[n_lines].text) - 1;
        memcpy(lines[n_lines].text, buf, l);
        lines[n_lines].id = (uint32_t)n_lines;
        n_lines++;
    }
    fclose(f);
    qsort(lines, n_lines, sizeof(*lines), cmp_line_tok);
    return 0;
}

static int free_lines(void **state)
{
    (void)state;
    free(lines);
    return 0;
}

static int64_t line_id(const char *text)
{
    size_t lo = 0, hi = n_lines;
    while (lo < hi) { /* first entry ≥ key; a repeated token keeps its last line (UER's dict) */
        size_t mid = (lo + hi) / 2;
        if (strcmp(lines[mid].text, text) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    int64_t id = -1;
    for (; lo < n_lines && strcmp(lines[lo].text, text) == 0; lo++)
        id = lines[lo].id;
    return id;
}

static void test_netgpt_vocab(void **state)
{
    (void)state;
    char err[256] = "";
    struct tok_vocab *v = tok_vocab_load(TT_VOCAB, err, sizeof(err));
    assert_non_null(v);
    assert_string_equal(err, "");
    assert_false(tok_vocab_is_builtin(v));
    assert_int_equal(n_lines, 65541);
    assert_int_equal(tok_vocab_size(v), 65541);
    const char *specials[] = {"[PAD]", "[SEP]", "[CLS]", "[UNK]", "[MASK]"};
    for (uint32_t i = 0; i < 5; i++) {
        assert_string_equal(tok_vocab_token(v, i), specials[i]);
        assert_int_equal(line_id(specials[i]), i);
        uint32_t id;
        assert_int_equal(tok_vocab_word_ids(v, specials[i], strlen(specials[i]), &id, 1, NULL), 1);
        assert_int_equal(id, i);
    }

    /* "0000" is on line 40 of the file (id 39); found here by the scan, not assumed. */
    int64_t id0000 = line_id("0000");
    assert_int_equal(id0000, 39);
    uint32_t ids[TOK_MAX_PIECES];
    assert_int_equal(tok_vocab_value_ids(v, 0x0000, ids), 1);
    assert_int_equal(ids[0], id0000);
    assert_string_equal(tok_vocab_token(v, ids[0]), "0000");

    /* Every value: present → its line; absent → greedy longest-match-first pieces. */
    size_t missing = 0, multi = 0;
    uint16_t first_missing = 0;
    for (uint32_t value = 0; value < 65536; value++) {
        char hex[5];
        snprintf(hex, sizeof(hex), "%04x", value);
        uint32_t expect[8];
        int n_expect = 0;
        int64_t whole = line_id(hex);
        if (whole >= 0) {
            expect[n_expect++] = (uint32_t)whole;
        } else {
            if (missing++ == 0)
                first_missing = (uint16_t)value;
            int pos = 0;
            while (pos < 4) {
                int64_t found = -1;
                int len;
                for (len = 4 - pos; len > 0; len--) {
                    char piece[8];
                    snprintf(piece, sizeof(piece), "%s%.*s", pos ? "##" : "", len, hex + pos);
                    if ((found = line_id(piece)) >= 0)
                        break;
                }
                if (found < 0) {
                    n_expect = 0;
                    expect[n_expect++] = 3;
                    break;
                }
                expect[n_expect++] = (uint32_t)found;
                pos += len;
            }
            if (n_expect > 1)
                multi++;
        }
        uint32_t got[TOK_MAX_PIECES], word[8];
        int n = tok_vocab_value_ids(v, (uint16_t)value, got);
        assert_int_equal(n, n_expect);
        assert_memory_equal(got, expect, sizeof(uint32_t) * (size_t)n);
        size_t needed;
        assert_int_equal(tok_vocab_word_ids(v, hex, 4, word, 8, &needed), (size_t)n_expect);
        assert_memory_equal(word, expect, sizeof(uint32_t) * (size_t)n);
    }
    assert_int_equal(missing, 2392); /* as the seed documentation counts */
    assert_int_equal(multi, missing);   /* every missing one has a decomposition */

    /* A concrete absent token, spelled out: its pieces read back as the token. */
    char hex[5], joined[16] = "";
    tok_format_value(first_missing, hex);
    int n = tok_vocab_value_ids(v, first_missing, ids);
    assert_true(n >= 2);
    for (int i = 0; i < n; i++) {
        const char *t = tok_vocab_token(v, ids[i]);
        strcat(joined, i ? t + 2 : t);
        if (i)
            assert_memory_equal(t, "##", 2);
    }
    assert_string_equal(joined, hex);
    tok_vocab_free(v);
}

/* The digest tells vocabularies apart by what each id means, not by their size: the seed's
 * file has the built-in's 65,541 entries under other ids, and a file that lists the built-in
 * tokens in order is the built-in vocabulary. */
static void test_digest(void **state)
{
    (void)state;
    char err[256] = "", path[] = "/tmp/netlm_vocab_XXXXXX";
    struct tok_vocab *builtin = tok_vocab_builtin(), *seed = tok_vocab_load(TT_VOCAB, err, sizeof(err));
    assert_non_null(builtin);
    assert_non_null(seed);
    assert_int_equal(tok_vocab_size(builtin), tok_vocab_size(seed));
    assert_true(tok_vocab_digest(builtin) != tok_vocab_digest(seed));
    assert_true(tok_vocab_digest(builtin) != 0);

    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("[PAD]\n[SEP]\n[CLS]\n[UNK]\n[MASK]\n", f);
    for (unsigned v = 0; v < 65536; v++)
        fprintf(f, "%04x\n", v);
    fclose(f);
    struct tok_vocab *listed = tok_vocab_load(path, err, sizeof(err));
    assert_non_null(listed);
    assert_int_equal(tok_vocab_digest(listed), tok_vocab_digest(builtin));
    tok_vocab_free(listed);

    /* two tokens swapped: the same size and token set, another vocabulary */
    f = fopen(path, "w");
    fputs("[PAD]\n[SEP]\n[CLS]\n[UNK]\n[MASK]\n0001\n0000\n", f);
    for (unsigned v = 2; v < 65536; v++)
        fprintf(f, "%04x\n", v);
    fclose(f);
    listed = tok_vocab_load(path, err, sizeof(err));
    assert_non_null(listed);
    assert_true(tok_vocab_digest(listed) != tok_vocab_digest(builtin));
    tok_vocab_free(listed);
    unlink(path);
    tok_vocab_free(builtin);
    tok_vocab_free(seed);
}

static void test_netgpt_words(void **state)
{
    (void)state;
    char err[256];
    struct tok_vocab *v = tok_vocab_load(TT_VOCAB, err, sizeof(err));
    assert_non_null(v);
    uint32_t a[256], b[256];
    size_t na, nb, needed;
    /* lower-casing */
    na = tok_vocab_word_ids(v, "c0a8", 4, a, 64, &needed);
    nb = tok_vocab_word_ids(v, "C0A8", 4, b, 64, &needed);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na * 4);
    assert_int_equal(a[0], line_id("c0a8"));
    /* specials only by their exact name; "[cls]" is three punctuation-split words */
    na = tok_vocab_word_ids(v, "[cls]", 5, a, 64, &needed);
    assert_int_equal(na, 3);
    assert_int_equal(a[0], 3);
    assert_int_equal(a[2], 3);
    /* control characters vanish inside a word */
    na = tok_vocab_word_ids(v, "c0\x01" "a8", 5, a, 64, &needed);
    assert_int_equal(na, 1);
    assert_int_equal(a[0], line_id("c0a8"));
    /* punctuation splits: "4500,0800" = "4500" "," "0800", and "," is not in the vocab */
    na = tok_vocab_word_ids(v, "4500,0800", 9, a, 64, &needed);
    assert_int_equal(na, 3);
    assert_int_equal(a[0], line_id("4500"));
    assert_int_equal(a[1], 3);
    assert_int_equal(a[2], line_id("0800"));
    /* "##a" as typed is "#", "#", "a": UER's punctuation rule applies to text too */
    na = tok_vocab_word_ids(v, "##a", 3, a, 64, &needed);
    assert_int_equal(na, 3);
    assert_int_equal(a[2], line_id("a"));
    /* 200 characters are still tokenized, 201 are [UNK] */
    char word[202];
    memset(word, '0', sizeof(word));
    na = tok_vocab_word_ids(v, word, 200, a, 256, &needed);
    assert_true(needed > 1);
    size_t chars = 0;
    for (size_t i = 0; i < na; i++) {
        const char *t = tok_vocab_token(v, a[i]);
        chars += strlen(t) - (i ? 2 : 0);
    }
    assert_int_equal(na, needed);
    assert_int_equal(needed, 197); /* "0000" then "##0" ×196: NetGPT has no "##00" */
    assert_int_equal(chars, 200);  /* the pieces spell the word */
    na = tok_vocab_word_ids(v, word, 201, a, 64, &needed);
    assert_int_equal(na, 1);
    assert_int_equal(a[0], 3);
    /* a long word cut by max: the first ids of the full sequence */
    tok_vocab_word_ids(v, word, 200, a, 256, &needed);
    size_t part = tok_vocab_word_ids(v, word, 200, b, 3, &nb);
    assert_int_equal(part, 3);
    assert_int_equal(nb, needed);
    assert_memory_equal(a, b, 3 * 4);
    tok_vocab_free(v);
}

/* ---- small vocab files ---- */

static char *write_temp(const void *data, size_t n)
{
    static char path[64];
    snprintf(path, sizeof(path), "/tmp/netlm_vocab_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, n), (ssize_t)n);
    close(fd);
    return path;
}

/* Python's universal newlines (\r\n, \n, a lone \r), empty and blank lines keeping their ids,
 * first field of a line, the last of two equal tokens winning, no final newline. */
static void test_line_rules(void **state)
{
    (void)state;
    const char text[] = "[PAD]\r\n[SEP]\r\n[CLS] 17\r\n\r\n[UNK]\r[MASK]\n  ab  cd\n\t\nab\n"
                        "0a\n##1b\n0a1b";
    char *path = write_temp(text, sizeof(text) - 1);
    char err[256] = "";
    struct tok_vocab *v = tok_vocab_load(path, err, sizeof(err));
    unlink(path);
    assert_non_null(v);
    assert_int_equal(tok_vocab_size(v), 12);
    const char *tokens[] = {"[PAD]", "[SEP]", "[CLS]", "", "[UNK]", "[MASK]",
                            "ab",    "\t",    "ab",    "0a", "##1b", "0a1b"};
    for (uint32_t i = 0; i < 12; i++)
        assert_string_equal(tok_vocab_token(v, i), tokens[i]);
    assert_null(tok_vocab_token(v, 12));
    uint32_t ids[8];
    assert_int_equal(tok_vocab_word_ids(v, "[UNK]", 5, ids, 8, NULL), 1);
    assert_int_equal(ids[0], 4);
    assert_int_equal(tok_vocab_word_ids(v, "[MASK]", 6, ids, 8, NULL), 1);
    assert_int_equal(ids[0], 5);
    assert_int_equal(tok_vocab_word_ids(v, "ab", 2, ids, 8, NULL), 1);
    assert_int_equal(ids[0], 8);
    assert_int_equal(tok_vocab_value_ids(v, 0x0a1b, ids), 1);
    assert_int_equal(ids[0], 11);
    /* WordPiece: "0a1b" matches, then "##0a" is absent: the whole word is [UNK] */
    assert_int_equal(tok_vocab_word_ids(v, "0a1b0a", 6, ids, 8, NULL), 1);
    assert_int_equal(ids[0], 4);
    assert_int_equal(tok_vocab_value_ids(v, 0x0a1c, ids), 1); /* "0a", then no "##1c" */
    assert_int_equal(ids[0], 4);
    assert_int_equal(tok_vocab_word_ids(v, "0A##1B", 6, ids, 8, NULL), 4); /* 0a # # 1b */
    assert_int_equal(ids[0], 9);
    tok_vocab_free(v);

    /* the same content from memory */
    v = tok_vocab_load_buffer("mem", text, sizeof(text) - 1, err, sizeof(err));
    assert_non_null(v);
    assert_int_equal(tok_vocab_size(v), 12);
    tok_vocab_free(v);
}

static void expect_load_error(const void *data, size_t n, const char *needle)
{
    char *path = write_temp(data, n);
    char err[256] = "";
    struct tok_vocab *v = tok_vocab_load(path, err, sizeof(err));
    unlink(path);
    assert_null(v);
    if (!strstr(err, needle) || !strstr(err, path)) {
        print_error("message \"%s\" lacks \"%s\" or the path\n", err, needle);
        fail();
    }
    assert_null(strchr(err, '\n'));
}

static void test_load_errors(void **state)
{
    (void)state;
    char err[256] = "";
    assert_null(tok_vocab_load("/nonexistent/netlm/vocab.txt", err, sizeof(err)));
    assert_non_null(strstr(err, "/nonexistent/netlm/vocab.txt: cannot open"));
    assert_null(strchr(err, '\n'));

    expect_load_error("", 0, "empty");
    const char no_cls[] = "[PAD]\n[SEP]\n[UNK]\n[MASK]\n0000\n";
    expect_load_error(no_cls, sizeof(no_cls) - 1, "no [CLS]");
    const char lower[] = "[pad]\n[sep]\n[cls]\n[unk]\n[mask]\n";
    expect_load_error(lower, sizeof(lower) - 1, "no [PAD]");
    const char nul[] = "[PAD]\n[SEP]\n[CLS]\n[UNK]\n[MA\0SK]\n";
    expect_load_error(nul, sizeof(nul) - 1, "line 5: NUL byte");
    const char bad_utf8[] = "[PAD]\n[SEP]\n\xff\xfe[CLS]\n[UNK]\n[MASK]\n";
    expect_load_error(bad_utf8, sizeof(bad_utf8) - 1, "line 3: byte 0xff is not valid UTF-8");
    const char bom[] = "\xef\xbb\xbf[PAD]\n[SEP]\n[CLS]\n[UNK]\n[MASK]\n";
    expect_load_error(bom, sizeof(bom) - 1, "byte-order mark");
    /* a real binary file */
    char *data = NULL;
    size_t n = 0;
    FILE *f = fopen(TT_PCAPS "tcpdump-ssh.pcap", "rb");
    assert_non_null(f);
    data = malloc(4096);
    n = fread(data, 1, 4096, f);
    fclose(f);
    expect_load_error(data, n, "line 1:");
    free(data);
    /* err may be NULL or empty */
    assert_null(tok_vocab_load("/nonexistent", NULL, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_builtin),
        cmocka_unit_test(test_netgpt_vocab), cmocka_unit_test(test_digest),
        cmocka_unit_test(test_netgpt_words),
        cmocka_unit_test(test_line_rules),
        cmocka_unit_test(test_load_errors),
    };
    return cmocka_run_group_tests(tests, load_lines, free_lines);
}
