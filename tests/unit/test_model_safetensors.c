/* test_model_safetensors.c — the safetensors reader, writer and shard sets: round trips of every
 * dtype, the exact message for each malformed file, and F16/BF16 conversion.
 *
 * Expected half/bfloat values are computed here from the IEEE formulas with ldexp, not with the
 * bit manipulation safetensors.c uses. Malformed files are built byte by byte, so each case
 * breaks exactly one rule. */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "model/safetensors.h"

static char tmpdir[256];

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/netlm_st_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void path_in(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/%s", tmpdir, name);
}

/* 8-byte length + header + data, as a buffer (caller frees). */
static uint8_t *build(const char *header, const void *data, size_t dlen, size_t *size)
{
    size_t h = strlen(header);
    *size = 8 + h + dlen;
    uint8_t *b = malloc(*size + 1);
    assert_non_null(b);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(b + 8, header, h);
    if (dlen)
        memcpy(b + 8 + h, data, dlen);
    return b;
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(p, 1, n, fp), n);
    assert_int_equal(fclose(fp), 0);
}

/* The message for a buffer that must be refused; also checks it is one terminated line. */
static const char *refuse(const char *header, size_t dlen)
{
    static char err[512];
    uint8_t zeros[256] = {0};
    assert_true(dlen <= sizeof(zeros));
    size_t size;
    uint8_t *b = build(header, zeros, dlen, &size);
    memset(err, 0, sizeof(err));
    struct st_file *f = st_open_buffer("m.safetensors", b, size, err, sizeof(err));
    free(b);
    assert_null(f);
    assert_null(strchr(err, '\n'));
    return err;
}

static size_t count_tmp_files(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

/* ---- round trips ---- */

static void test_round_trip(void **state)
{
    (void)state;
    float f32[6] = {1.5f, -2.0f, 0.0f, 3.25f, 1e-30f, -65504.0f};
    uint16_t f16[4] = {0x3c00, 0xc000, 0x7bff, 0x0001};
    uint16_t bf16[2] = {0x3f80, 0xc0a0}; /* 1, -5 */
    int32_t i32[3] = {-1, 0, 2147483647};
    int64_t i64[2] = {INT64_MIN, 1234567890123LL};
    float scalar = 42.0f;
    const char *odd = "we\"ird\\ name\n\t/";
    struct st_write_tensor ts[] = {
        {"model.a", ST_F32, 2, {2, 3}, f32},
        {"h16", ST_F16, 1, {4}, f16},
        {"bf", ST_BF16, 2, {1, 2}, bf16},
        {"ids", ST_I32, 1, {3}, i32},
        {"big", ST_I64, 1, {2}, i64},
        {"scalar", ST_F32, 0, {0}, &scalar},
        {"empty", ST_F32, 2, {0, 5}, NULL},
        {odd, ST_F32, 1, {1}, &scalar},
    };
    const size_t n = sizeof(ts) / sizeof(ts[0]);
    const char *meta[] = {"format", "pt", "note", "a \"quoted\" \\ value\nwith a newline"};
    char path[300], err[256];
    path_in(path, sizeof(path), "rt.safetensors");
    assert_true(st_write(path, ts, n, meta, 2, err, sizeof(err)));
    assert_int_equal(count_tmp_files(tmpdir), 0);

    /* the raw file: metadata first, header padded with spaces so the data starts 8-aligned */
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    uint8_t raw[4096];
    size_t got = fread(raw, 1, sizeof(raw), fp);
    fclose(fp);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | raw[i];
    assert_true(8 + hlen <= got);
    assert_int_equal((8 + hlen) % 8, 0);
    assert_memory_equal(raw + 8, "{\"__metadata__\":{", 17);
    size_t last = 8 + hlen - 1;
    while (raw[last] == ' ')
        last--;
    assert_int_equal(raw[last], '}');
    assert_true(8 + hlen - 1 - last < 8);

    struct st_file *f = st_open(path, err, sizeof(err));
    assert_non_null(f);
    assert_int_equal(st_count(f), n);
    assert_string_equal(st_metadata(f, "format"), "pt");
    assert_string_equal(st_metadata(f, "note"), meta[3]);
    assert_null(st_metadata(f, "missing"));
    for (size_t i = 0; i < n; i++) {
        const struct st_tensor *t = st_find(f, ts[i].name);
        assert_non_null(t);
        assert_string_equal(t->name, ts[i].name);
        assert_int_equal(t->dtype, ts[i].dtype);
        assert_int_equal(t->ndim, ts[i].ndim);
        uint64_t numel = 1;
        for (uint32_t d = 0; d < t->ndim; d++) {
            assert_int_equal(t->shape[d], ts[i].shape[d]);
            numel *= ts[i].shape[d];
        }
        assert_int_equal(t->numel, numel);
        assert_int_equal(t->nbytes, numel * st_dtype_size(ts[i].dtype));
        if (t->nbytes)
            assert_memory_equal(t->data, ts[i].data, t->nbytes);
        /* written in the given order, so st_at (offset order) agrees; the empty tensor sits
         * at the same offset as the next, which st_at puts after it by name order */
    }
    assert_null(st_find(f, "nope"));
    assert_null(st_find(f, ""));
    assert_string_equal(st_at(f, 0)->name, "model.a");
    assert_string_equal(st_at(f, 1)->name, "h16");
    assert_null(st_at(f, n));
    for (size_t i = 1; i < n; i++)
        assert_true((const uint8_t *)st_at(f, i)->data >=
                    (const uint8_t *)st_at(f, i - 1)->data + st_at(f, i - 1)->nbytes);

    float out[8];
    assert_true(st_read_f32(st_find(f, "model.a"), out));
    assert_memory_equal(out, f32, sizeof(f32));
    assert_true(st_read_f32(st_find(f, "h16"), out));
    assert_true(out[0] == 1.0f && out[1] == -2.0f && out[2] == 65504.0f &&
                out[3] == ldexpf(1.0f, -24));
    assert_true(st_read_f32(st_find(f, "bf"), out));
    assert_true(out[0] == 1.0f && out[1] == -5.0f);
    assert_true(st_read_f32(st_find(f, "scalar"), out));
    assert_true(out[0] == 42.0f);
    assert_true(st_read_f32(st_find(f, "empty"), NULL));
    assert_false(st_read_f32(st_find(f, "ids"), out));
    int64_t iv[4];
    assert_true(st_read_i64(st_find(f, "ids"), iv));
    assert_true(iv[0] == -1 && iv[1] == 0 && iv[2] == 2147483647);
    assert_true(st_read_i64(st_find(f, "big"), iv));
    assert_true(iv[0] == INT64_MIN && iv[1] == 1234567890123LL);
    assert_false(st_read_i64(st_find(f, "model.a"), iv));
    assert_int_equal(st_find(f, "scalar")->numel, 1);
    assert_int_equal(st_find(f, "empty")->numel, 0);
    for (size_t i = 0; i < n; i++)
        st_drop_pages(f, st_at(f, i));
    assert_true(st_read_f32(st_find(f, "model.a"), out)); /* pages come back from the file */
    assert_memory_equal(out, f32, sizeof(f32));
    st_close(f);

    /* no metadata, no tensors */
    assert_true(st_write(path, NULL, 0, NULL, 0, err, sizeof(err)));
    f = st_open(path, err, sizeof(err));
    assert_non_null(f);
    assert_int_equal(st_count(f), 0);
    assert_null(st_metadata(f, "format"));
    st_close(f);
}

static void test_names_and_dtypes(void **state)
{
    (void)state;
    assert_string_equal(st_dtype_name(ST_F32), "F32");
    assert_string_equal(st_dtype_name(ST_F16), "F16");
    assert_string_equal(st_dtype_name(ST_BF16), "BF16");
    assert_string_equal(st_dtype_name(ST_I32), "I32");
    assert_string_equal(st_dtype_name(ST_I64), "I64");
    assert_int_equal(st_dtype_size(ST_F32), 4);
    assert_int_equal(st_dtype_size(ST_F16), 2);
    assert_int_equal(st_dtype_size(ST_BF16), 2);
    assert_int_equal(st_dtype_size(ST_I32), 4);
    assert_int_equal(st_dtype_size(ST_I64), 8);
}

/* A file written by someone else: no padding (data unaligned), keys in any order, escapes. */
static void test_foreign_file(void **state)
{
    (void)state;
    float v[3] = {1.0f, 2.0f, 3.0f};
    const char *good = "{\"b\":{\"shape\":[3],\"data_offsets\":[1,13],\"dtype\":\"F32\",\"extra\":"
                       "[1,{\"x\":null}]},\"\\u0061\":{\"dtype\":\"I32\",\"shape\":[0],"
                       "\"data_offsets\":[0,0]},\"c\":{\"dtype\":\"F16\",\"shape\":[0,3],"
                       "\"data_offsets\":[0,0]},\"one\":{\"dtype\":\"I32\",\"shape\":[],"
                       "\"data_offsets\":[0,0]}}";
    /* a scalar has one element: "one" at [0,0) is refused */
    const char *msg = refuse(good, 13);
    assert_string_equal(msg, "m.safetensors: tensor 'one': data_offsets [0, 0) but shape [] I32 "
                             "needs 4 bytes");
    const char *ok = "{\"b\":{\"shape\":[3],\"data_offsets\":[1,13],\"dtype\":\"F32\",\"extra\":"
                     "[1,{\"x\":null}]},\"\\u0061\":{\"dtype\":\"I32\",\"shape\":[0],"
                     "\"data_offsets\":[0,0]},\"c\":{\"dtype\":\"F16\",\"shape\":[0,3],"
                     "\"data_offsets\":[0,0]},\"s\":{\"dtype\":\"I64\",\"shape\":[0],"
                     "\"data_offsets\":[1,1]},\"u\":{\"dtype\":\"BF16\",\"shape\":[],"
                     "\"data_offsets\":[0,1]}}";
    /* a BF16 scalar needs 2 bytes */
    assert_string_equal(refuse(ok, 13), "m.safetensors: tensor 'u': data_offsets [0, 1) but "
                                        "shape [] BF16 needs 2 bytes");
    uint8_t d2[14];
    d2[0] = 0x80, d2[1] = 0x3f; /* bf16 1.0 */
    memcpy(d2 + 2, v, 12);
    const char *hdr = "{\"b\":{\"shape\":[3],\"data_offsets\":[2,14],\"dtype\":\"F32\",\"extra\":"
                      "[1,{\"x\":null}]},\"\\u0061\":{\"dtype\":\"I32\",\"shape\":[0],"
                      "\"data_offsets\":[0,0]},\"c\":{\"dtype\":\"F16\",\"shape\":[0,3],"
                      "\"data_offsets\":[2,2]},\"u\":{\"dtype\":\"BF16\",\"shape\":[],"
                      "\"data_offsets\":[0,2]}}  \n";
    size_t size;
    uint8_t *b = build(hdr, d2, sizeof(d2), &size);
    char err[256];
    struct st_file *f = st_open_buffer("x", b, size, err, sizeof(err));
    assert_non_null(f);
    assert_int_equal(st_count(f), 4);
    assert_non_null(st_find(f, "a"));
    assert_int_equal(st_find(f, "a")->numel, 0);
    assert_int_equal(st_find(f, "u")->ndim, 0);
    assert_int_equal(st_find(f, "u")->numel, 1);
    float out[3];
    assert_true(st_read_f32(st_find(f, "u"), out));
    assert_true(out[0] == 1.0f);
    assert_true(st_read_f32(st_find(f, "b"), out)); /* data not 4-aligned */
    assert_memory_equal(out, v, 12);
    /* offset order: the empty "a" at 0, "u" [0,2), then "c" at 2 and "b" [2,14) */
    assert_string_equal(st_at(f, 0)->name, "a");
    assert_string_equal(st_at(f, 1)->name, "u");
    assert_string_equal(st_at(f, 2)->name, "c");
    assert_string_equal(st_at(f, 3)->name, "b");
    st_drop_pages(f, st_find(f, "b")); /* not mapped: nothing to do */
    st_close(f);
    free(b);

    /* an empty header object and no data */
    b = build("{}", NULL, 0, &size);
    f = st_open_buffer("x", b, size, err, sizeof(err));
    assert_non_null(f);
    assert_int_equal(st_count(f), 0);
    assert_null(st_at(f, 0));
    assert_null(st_find(f, "a"));
    st_close(f);
    free(b);
}

/* ---- malformed files ---- */

static void test_errors_framing(void **state)
{
    (void)state;
    char path[300], err[256];
    path_in(path, sizeof(path), "m.safetensors");
    write_bytes(path, "\x10\0\0\0\0", 5);
    assert_null(st_open(path, err, sizeof(err)));
    char want[512];
    snprintf(want, sizeof(want), "%s: file is 5 bytes, too short for the 8-byte header length",
             path);
    assert_string_equal(err, want);
    write_bytes(path, "", 0);
    assert_null(st_open(path, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s: file is 0 bytes, too short for the 8-byte header length",
             path);
    assert_string_equal(err, want);

    uint8_t b[28] = {100};
    memcpy(b + 8, "{}", 2);
    write_bytes(path, b, sizeof(b));
    assert_null(st_open(path, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s: header length 100 runs past the end of the file (28 bytes)",
             path);
    assert_string_equal(err, want);

    uint8_t big[16] = {0x00, 0xc2, 0xeb, 0x0b}; /* 200,000,000 */
    assert_null(st_open_buffer("m.safetensors", big, sizeof(big), err, sizeof(err)));
    assert_string_equal(err, "m.safetensors: header length 200000000 exceeds the 100000000-byte "
                             "limit");
    uint8_t huge[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    assert_null(st_open_buffer("m.safetensors", huge, sizeof(huge), err, sizeof(err)));
    assert_string_equal(err, "m.safetensors: header length 18446744073709551615 exceeds the "
                             "100000000-byte limit");

    char nodir[300];
    path_in(nodir, sizeof(nodir), "missing.safetensors");
    assert_null(st_open(nodir, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s: cannot open: No such file or directory", nodir);
    assert_string_equal(err, want);
    assert_null(st_open(tmpdir, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s: not a regular file", tmpdir);
    assert_string_equal(err, want);

    assert_true(strncmp(refuse("{\"a\":", 0), "m.safetensors: header is not valid JSON (", 41) ==
                0);
    assert_true(strncmp(refuse("{abc}", 0), "m.safetensors: header is not valid JSON (", 41) == 0);
    assert_true(strncmp(refuse("", 0), "m.safetensors: header is not valid JSON (", 41) == 0);
    assert_string_equal(refuse("{'a':1}", 0),
                        "m.safetensors: header is not valid JSON (single quote at offset 1)");
    assert_string_equal(refuse("{'a':{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
                        "m.safetensors: header is not valid JSON (single quote at offset 1)");
    assert_string_equal(refuse("{\"a\":NaN}", 0), /* json-c takes NaN even when strict */
                        "m.safetensors: tensor 'a' is not a JSON object");
    assert_true(strncmp(refuse("{\"\xff\":1}", 0), "m.safetensors: header is not valid JSON (",
                        41) == 0);
    uint8_t nul[12] = {4, 0, 0, 0, 0, 0, 0, 0, '{', 0, '}', ' '};
    assert_null(st_open_buffer("m.safetensors", nul, sizeof(nul), err, sizeof(err)));
    assert_string_equal(err, "m.safetensors: header is not valid JSON (NUL byte at offset 1)");
    assert_string_equal(refuse("[1, 2]", 0), "m.safetensors: header is not a JSON object");
    assert_string_equal(refuse("\"x\"   ", 0), "m.safetensors: header is not a JSON object");
    /* trailing bytes: json-c's own message when strict, ours otherwise; only spaces may pad */
    assert_true(strncmp(refuse("{} x", 0), "m.safetensors: header ", 22) == 0);
    assert_non_null(strstr(refuse("{} x", 0), "offset 3"));
    assert_non_null(strstr(refuse("{}{}", 0), "offset 2"));
}

static void test_errors_offsets(void **state)
{
    (void)state;
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", 20),
        "m.safetensors: tensor 'b': data_offsets [12, 20) leave a gap of 4 bytes after offset 8");
    assert_string_equal(
        refuse("{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12),
        "m.safetensors: tensor 'b': data_offsets [4, 12) leave a gap of 4 bytes after offset 0");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12),
        "m.safetensors: tensor 'b': data_offsets [4, 12) overlap tensor 'a' [0, 8)");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8),
        "m.safetensors: tensor 'b': data_offsets [0, 8) overlap tensor 'a' [0, 8)");
    /* an empty tensor inside another's span overlaps it */
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}", 8),
        "m.safetensors: tensor 'e': data_offsets [4, 4) overlap tensor 'a' [0, 8)");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8),
        "m.safetensors: tensor 'a': data_offsets [0, 16) run past the end of the 8-byte data "
        "buffer");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12),
        "m.safetensors: tensors end at offset 8 but the data buffer is 12 bytes");
    assert_string_equal(refuse("{}", 4),
                        "m.safetensors: tensors end at offset 0 but the data buffer is 4 bytes");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 12),
        "m.safetensors: tensor 'a': data_offsets [0, 12) but shape [2, 2] F32 needs 16 bytes");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,4]}}", 8),
        "m.safetensors: tensor 'a': data_offsets [8, 4) end before they begin");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8),
        "m.safetensors: tensor 'a': \"data_offsets\" must be [begin, end], two non-negative "
        "integers");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,-8]}}", 8),
        "m.safetensors: tensor 'a': \"data_offsets\" must be [begin, end], two non-negative "
        "integers");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8),
        "m.safetensors: tensor 'a': \"data_offsets\" must be [begin, end], two non-negative "
        "integers");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,18446744073709551615]}"
               "}", 8),
        "m.safetensors: tensor 'a': data_offsets [0, 18446744073709551615) but shape [2] F32 "
        "needs 8 bytes");
}

static void test_errors_entries(void **state)
{
    (void)state;
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2),
        "m.safetensors: tensor 'a': unsupported dtype 'F8_E4M3' (F32, F16, BF16, I32, I64)");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"XYZ\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2),
        "m.safetensors: tensor 'a': unsupported dtype 'XYZ' (F32, F16, BF16, I32, I64)");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8),
        "m.safetensors: tensor 'a': unsupported dtype 'f32' (F32, F16, BF16, I32, I64)");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"F32\\u0000\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8),
        "m.safetensors: tensor 'a': unsupported dtype 'F32?' (F32, F16, BF16, I32, I64)");
    assert_string_equal(refuse("{\"a\":{\"dtype\":3,\"shape\":[2],\"data_offsets\":[0,8]}}", 8),
                        "m.safetensors: tensor 'a': \"dtype\" must be a string");
    assert_string_equal(refuse("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8),
                        "m.safetensors: tensor 'a': \"dtype\" must be a string");
    assert_string_equal(refuse("{\"a\":[1]}", 0), "m.safetensors: tensor 'a' is not a JSON object");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8),
        "m.safetensors: tensor 'a': \"shape\" must be an array of non-negative integers");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8),
        "m.safetensors: tensor 'a': \"shape\" must be an array of non-negative integers");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8),
        "m.safetensors: tensor 'a': \"shape\" must be an array of integers");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}",
               8),
        "m.safetensors: tensor 'a': shape has 9 dimensions, more than 8");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
               "\"data_offsets\":[0,8]}}", 8),
        "m.safetensors: tensor 'a': shape [4294967296, 4294967296] F32 overflows 64 bits");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"I64\",\"shape\":[2305843009213693952],"
               "\"data_offsets\":[0,8]}}", 8),
        "m.safetensors: tensor 'a': shape [2305843009213693952] I64 overflows 64 bits");
    /* a zero dimension makes any other size harmless */
    char err[256];
    size_t size;
    uint8_t *b = build("{\"z\":{\"dtype\":\"F32\",\"shape\":[0,18446744073709551615],"
                       "\"data_offsets\":[0,0]}}", NULL, 0, &size);
    struct st_file *f = st_open_buffer("z", b, size, err, sizeof(err));
    assert_non_null(f);
    assert_int_equal(st_find(f, "z")->numel, 0);
    st_close(f);
    free(b);

    /* names that would break a message line are shown with '?' */
    assert_string_equal(refuse("{\"a\\nb\":[1]}", 0),
                        "m.safetensors: tensor 'a?b' is not a JSON object");
}

static void test_errors_duplicates_metadata(void **state)
{
    (void)state;
    const char *a = "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}";
    const char *b = "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}";
    char h[512];
    snprintf(h, sizeof(h), "{\"x\":%s,\"x\":%s}", a, b);
    assert_string_equal(refuse(h, 8), "m.safetensors: duplicate tensor name 'x'");
    snprintf(h, sizeof(h), "{\"x\":%s,\"\\u0078\":%s}", a, b);
    assert_string_equal(refuse(h, 8), "m.safetensors: duplicate tensor name 'x'");
    snprintf(h, sizeof(h), "{\"\\ud83d\\ude00\":%s,\"\xf0\x9f\x98\x80\":%s}", a, b);
    assert_string_equal(refuse(h, 8), "m.safetensors: duplicate tensor name '\xf0\x9f\x98\x80'");
    snprintf(h, sizeof(h), "{\"x\":%s,\"y\":%s,\"__metadata__\":{},\"__metadata__\":{}}", a, b);
    assert_string_equal(refuse(h, 8), "m.safetensors: duplicate tensor name '__metadata__'");
    assert_string_equal(
        refuse("{\"a\":{\"dtype\":\"I64\",\"dtype\":\"F32\",\"shape\":[1],"
               "\"data_offsets\":[0,4]}}", 4),
        "m.safetensors: tensor 'a': duplicate key 'dtype'");
    assert_string_equal(refuse("{\"a\\u0000b\":{}}", 0),
                        "m.safetensors: key 'a?b' contains a NUL character");
    /* an empty name is a name (loaded below, first of all with nothing stored before it), and
     * a duplicate of it */
    snprintf(h, sizeof(h), "{\"\":%s,\"\":%s}", a, b);
    assert_string_equal(refuse(h, 8), "m.safetensors: duplicate tensor name ''");
    assert_string_equal(refuse("{\"\":{},\"\":{}}", 0), "m.safetensors: duplicate tensor name ''");
    /* nested objects of different tensors may reuse keys */
    snprintf(h, sizeof(h), "{\"x\":%s,\"y\":%s}", a, b);
    size_t size;
    char err[256];
    uint8_t zeros[8] = {0};
    uint8_t *buf = build(h, zeros, 8, &size);
    struct st_file *f = st_open_buffer("m", buf, size, err, sizeof(err));
    assert_non_null(f);
    assert_int_equal(st_count(f), 2);
    st_close(f);
    free(buf);
    snprintf(h, sizeof(h), "{\"\":%s}", a);
    buf = build(h, zeros, 4, &size);
    f = st_open_buffer("m", buf, size, err, sizeof(err));
    assert_non_null(f);
    assert_non_null(st_find(f, ""));
    st_close(f);
    free(buf);

    snprintf(h, sizeof(h), "{\"__metadata__\":{\"k\":1},\"x\":%s}", a);
    assert_string_equal(refuse(h, 4), "m.safetensors: __metadata__ 'k' must be a string");
    snprintf(h, sizeof(h), "{\"__metadata__\":[\"k\"],\"x\":%s}", a);
    assert_string_equal(refuse(h, 4), "m.safetensors: __metadata__ must be an object of strings");
    snprintf(h, sizeof(h), "{\"__metadata__\":\"k\",\"x\":%s}", a);
    assert_string_equal(refuse(h, 4), "m.safetensors: __metadata__ must be an object of strings");
    snprintf(h, sizeof(h), "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"},\"x\":%s}", a);
    assert_string_equal(refuse(h, 4), "m.safetensors: __metadata__: duplicate key 'k'");
    snprintf(h, sizeof(h), "{\"__metadata__\":{\"k\":\"a\\u0000b\"},\"x\":%s}", a);
    assert_string_equal(refuse(h, 4), "m.safetensors: __metadata__ 'k' contains a NUL character");
    snprintf(h, sizeof(h), "{\"__metadata__\":{\"k\":\"v\",\"e\":\"\"},\"x\":%s}", a);
    buf = build(h, zeros, 4, &size);
    f = st_open_buffer("m", buf, size, err, sizeof(err));
    assert_non_null(f);
    assert_string_equal(st_metadata(f, "k"), "v");
    assert_string_equal(st_metadata(f, "e"), "");
    assert_int_equal(st_count(f), 1);
    st_close(f);
    free(buf);
}

/* ---- conversion ---- */

/* IEEE binary16 from its fields, in double arithmetic. */
static double half_value(uint16_t h)
{
    int s = h >> 15, e = h >> 10 & 0x1f, m = h & 0x3ff;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

static void test_half_conversion(void **state)
{
    (void)state;
    static uint16_t all[65536];
    static float out[65536];
    for (uint32_t i = 0; i < 65536; i++)
        all[i] = (uint16_t)i;
    struct st_tensor t = {.name = "h", .dtype = ST_F16, .ndim = 1, .shape = {65536},
                          .numel = 65536, .data = all, .nbytes = sizeof(all)};
    assert_true(st_read_f32(&t, out));
    for (uint32_t i = 0; i < 65536; i++) {
        int e = i >> 10 & 0x1f, m = i & 0x3ff;
        if (e == 31 && m == 0) {
            assert_true(isinf(out[i]));
            assert_int_equal(signbit(out[i]) != 0, (i >> 15) != 0);
        } else if (e == 31) {
            assert_true(isnan(out[i]));
        } else {
            assert_true((double)out[i] == half_value((uint16_t)i));
            assert_int_equal(signbit(out[i]) != 0, (i >> 15) != 0); /* -0 stays -0 */
        }
    }
    assert_true(out[0x3c00] == 1.0f);
    assert_true(out[0xc000] == -2.0f);
    assert_true(out[0x7bff] == 65504.0f);
    assert_true(out[0x0001] == 0x1p-24f);
    assert_true(out[0x03ff] == 1023 * 0x1p-24f);
    assert_true(out[0x0400] == 0x1p-14f);
    assert_true(isinf(out[0x7c00]) && out[0x7c00] > 0);
    assert_true(isinf(out[0xfc00]) && out[0xfc00] < 0);
    assert_true(isnan(out[0x7e00]) && isnan(out[0x7c01]));
    assert_true(out[0x3555] == (float)half_value(0x3555)); /* ≈ 1/3 */

    /* bfloat16: the top half of an fp32 */
    for (uint32_t i = 0; i < 65536; i++) {
        int e = i >> 7 & 0xff, m = i & 0x7f;
        double v = e == 0 ? ldexp(m, -133) : ldexp(128 + m, e - 134);
        if (i >> 15)
            v = -v;
        all[i] = (uint16_t)i;
        (void)v;
    }
    t.dtype = ST_BF16;
    assert_true(st_read_f32(&t, out));
    for (uint32_t i = 0; i < 65536; i++) {
        int e = i >> 7 & 0xff, m = i & 0x7f;
        if (e == 255) {
            assert_true(m ? isnan(out[i]) : isinf(out[i]));
            continue;
        }
        double v = e == 0 ? ldexp(m, -133) : ldexp(128 + m, e - 134);
        if (i >> 15)
            v = -v;
        assert_true((double)out[i] == v);
    }
    assert_true(out[0x3f80] == 1.0f);
    assert_true(out[0xc000] == -2.0f);
    assert_true(out[0x4049] == 3.140625f);

    /* integer tensors refuse float reads and the other way round */
    int64_t iv;
    assert_false(st_read_i64(&t, &iv));
    t.dtype = ST_I32;
    float fv;
    assert_false(st_read_f32(&t, &fv));
}

/* ---- sets ---- */

static void make_dir(char *out, size_t len, const char *name)
{
    path_in(out, len, name);
    assert_int_equal(mkdir(out, 0755), 0);
}

static void write_shard(const char *dir, const char *file, const char *const *names, size_t n,
                        float base)
{
    struct st_write_tensor ts[8];
    static float data[8][4];
    for (size_t i = 0; i < n; i++) {
        for (int k = 0; k < 4; k++)
            data[i][k] = base + (float)(i * 4 + (size_t)k);
        ts[i] = (struct st_write_tensor){names[i], ST_F32, 2, {2, 2}, data[i]};
    }
    char path[400], err[256];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    assert_true(st_write(path, ts, n, NULL, 0, err, sizeof(err)));
}

static void write_text(const char *dir, const char *file, const char *text)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    write_bytes(path, text, strlen(text));
}

static void test_sets(void **state)
{
    (void)state;
    char dir[300], err[512], want[1200];
    make_dir(dir, sizeof(dir), "single");
    assert_null(st_set_open(dir, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s: no model.safetensors or model.safetensors.index.json", dir);
    assert_string_equal(err, want);

    const char *names1[] = {"w.a", "w.b"};
    write_shard(dir, "model.safetensors", names1, 2, 0);
    struct st_set *s = st_set_open(dir, err, sizeof(err));
    assert_non_null(s);
    assert_int_equal(st_set_count(s), 2);
    assert_non_null(st_set_find(s, "w.a"));
    assert_null(st_set_find(s, "w.c"));
    float out[4];
    assert_true(st_read_f32(st_set_find(s, "w.b"), out));
    assert_true(out[0] == 4.0f);
    st_set_drop_pages(s, st_set_find(s, "w.a"));
    st_set_close(s);

    /* sharded: ~300 names over three files */
    char sdir[300];
    make_dir(sdir, sizeof(sdir), "sharded");
    static char namebuf[300][32];
    const char *names[300];
    for (int i = 0; i < 300; i++) {
        snprintf(namebuf[i], sizeof(namebuf[i]), "model.layers.%d.w", i);
        names[i] = namebuf[i];
    }
    char index[30000];
    size_t used = (size_t)snprintf(index, sizeof(index),
                                   "{\"metadata\": {\"total_size\": 4800}, \"weight_map\": {");
    for (int shard = 0; shard < 3; shard++) {
        char file[64];
        snprintf(file, sizeof(file), "model-%05d-of-00003.safetensors", shard + 1);
        struct st_write_tensor ts[100];
        static float d[300][4];
        for (int k = 0; k < 100; k++) {
            int i = shard * 100 + k;
            for (int j = 0; j < 4; j++)
                d[i][j] = (float)i;
            ts[k] = (struct st_write_tensor){names[i], ST_F32, 2, {2, 2}, d[i]};
            used += (size_t)snprintf(index + used, sizeof(index) - used, "%s\"%s\": \"%s\"",
                                     i ? ", " : "", names[i], file);
        }
        char path[400];
        snprintf(path, sizeof(path), "%s/%s", sdir, file);
        assert_true(st_write(path, ts, 100, NULL, 0, err, sizeof(err)));
    }
    snprintf(index + used, sizeof(index) - used, "}}\n");
    write_text(sdir, "model.safetensors.index.json", index);
    write_shard(sdir, "model.safetensors", names1, 2, 0); /* the index wins over it */
    s = st_set_open(sdir, err, sizeof(err));
    assert_non_null(s);
    assert_int_equal(st_set_count(s), 300);
    for (int i = 0; i < 300; i++) {
        const struct st_tensor *t = st_set_find(s, names[i]);
        assert_non_null(t);
        assert_true(st_read_f32(t, out));
        assert_true(out[3] == (float)i);
        st_set_drop_pages(s, t);
    }
    assert_null(st_set_find(s, "w.a"));
    size_t seen = 0;
    for (size_t i = 0; i < st_set_count(s); i++)
        seen += st_set_at(s, i) != NULL;
    assert_int_equal(seen, 300);
    assert_null(st_set_at(s, 300));
    st_set_close(s);

    /* a missing shard, a name mapped to the wrong shard, a name in two shards, bad file names */
    char bdir[300];
    make_dir(bdir, sizeof(bdir), "bad");
    const char *na[] = {"a"}, *nb[] = {"b"}, *nab[] = {"a", "b"};
    write_shard(bdir, "s1.safetensors", na, 1, 0);
    write_shard(bdir, "s2.safetensors", nb, 1, 0);
    write_text(bdir, "model.safetensors.index.json",
               "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s3.safetensors\"}}");
    assert_null(st_set_open(bdir, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s/s3.safetensors: cannot open: No such file or directory",
             bdir);
    assert_string_equal(err, want);
    write_text(bdir, "model.safetensors.index.json",
               "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s1.safetensors\"}}");
    assert_null(st_set_open(bdir, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s/model.safetensors.index.json: tensor 'b' is mapped to "
             "s1.safetensors, which has no such tensor", bdir);
    assert_string_equal(err, want);
    write_shard(bdir, "s3.safetensors", nab, 2, 0);
    write_text(bdir, "model.safetensors.index.json",
               "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s3.safetensors\"}}");
    assert_null(st_set_open(bdir, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s: tensor 'a' is in both %s/s1.safetensors and "
             "%s/s3.safetensors", bdir, bdir, bdir);
    assert_string_equal(err, want);
    const char *bad_maps[] = {
        "{\"weight_map\": {\"a\": \"../s1.safetensors\"}}",
        "{\"weight_map\": {\"a\": \"..\"}}",
        "{\"weight_map\": {\"a\": \"\"}}",
        "{\"weight_map\": {\"a\": \"/etc/passwd\"}}",
    };
    for (size_t i = 0; i < sizeof(bad_maps) / sizeof(*bad_maps); i++) {
        write_text(bdir, "model.safetensors.index.json", bad_maps[i]);
        assert_null(st_set_open(bdir, err, sizeof(err)));
        assert_non_null(strstr(err, "is not a plain file name in the directory"));
        assert_null(strchr(err, '\n'));
    }
    write_text(bdir, "model.safetensors.index.json", "{\"weight_map\": {\"a\": 3}}");
    assert_null(st_set_open(bdir, err, sizeof(err)));
    assert_non_null(strstr(err, "weight_map 'a' must be a file name"));
    write_text(bdir, "model.safetensors.index.json", "{\"weight_map\": {}}");
    assert_null(st_set_open(bdir, err, sizeof(err)));
    assert_non_null(strstr(err, "\"weight_map\" is empty"));
    write_text(bdir, "model.safetensors.index.json", "{\"metadata\": {}}");
    assert_null(st_set_open(bdir, err, sizeof(err)));
    assert_non_null(strstr(err, "\"weight_map\" must be an object"));
    write_text(bdir, "model.safetensors.index.json", "{\"weight_map\": ");
    assert_null(st_set_open(bdir, err, sizeof(err)));
    assert_non_null(strstr(err, "model.safetensors.index.json: not valid JSON"));
    /* a shard that fails validation names itself */
    write_text(bdir, "s4.safetensors", "garbage");
    write_text(bdir, "model.safetensors.index.json",
               "{\"weight_map\": {\"a\": \"s4.safetensors\"}}");
    assert_null(st_set_open(bdir, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s/s4.safetensors: file is 7 bytes, too short for the 8-byte "
             "header length", bdir);
    assert_string_equal(err, want);
    /* several names in one shard, the shard opened once */
    write_text(bdir, "model.safetensors.index.json",
               "{\"weight_map\": {\"a\": \"s3.safetensors\", \"b\": \"s3.safetensors\"}}");
    s = st_set_open(bdir, err, sizeof(err));
    assert_non_null(s);
    assert_int_equal(st_set_count(s), 2);
    st_set_close(s);
}

/* ---- the writer's failures ---- */

static void test_write_errors(void **state)
{
    (void)state;
    float v[2] = {1, 2};
    struct st_write_tensor ts[] = {{"a", ST_F32, 1, {2}, v}, {"a", ST_F32, 1, {1}, v}};
    char path[300], err[512], want[600];
    path_in(path, sizeof(path), "w.safetensors");
    assert_false(st_write(path, ts, 2, NULL, 0, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s: duplicate tensor name 'a'", path);
    assert_string_equal(err, want);
    assert_int_equal(access(path, F_OK), -1);

    const char *meta[] = {"k", "1", "k", "2"};
    assert_false(st_write(path, ts, 1, meta, 2, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s: duplicate metadata key 'k'", path);
    assert_string_equal(err, want);

    struct st_write_tensor reserved = {"__metadata__", ST_F32, 1, {2}, v};
    assert_false(st_write(path, &reserved, 1, NULL, 0, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s: tensor '__metadata__': reserved name", path);
    assert_string_equal(err, want);
    struct st_write_tensor nodata = {"x", ST_F32, 1, {2}, NULL};
    assert_false(st_write(path, &nodata, 1, NULL, 0, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s: tensor 'x': no data", path);
    assert_string_equal(err, want);
    struct st_write_tensor dims = {"x", ST_F32, 9, {1}, v};
    assert_false(st_write(path, &dims, 1, NULL, 0, err, sizeof(err)));
    struct st_write_tensor dtype = {"x", (enum st_dtype)7, 1, {1}, v};
    assert_false(st_write(path, &dtype, 1, NULL, 0, err, sizeof(err)));
    struct st_write_tensor over = {"x", ST_F32, 2, {1ull << 40, 1ull << 40}, v};
    assert_false(st_write(path, &over, 1, NULL, 0, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s: tensor 'x': size overflows 64 bits", path);
    assert_string_equal(err, want);
    assert_int_equal(count_tmp_files(tmpdir), 0);

    /* into a missing directory */
    char missing[300];
    path_in(missing, sizeof(missing), "nodir/w.safetensors");
    assert_false(st_write(missing, ts, 1, NULL, 0, err, sizeof(err)));
    assert_true(strncmp(err, missing, strlen(missing)) == 0);
    assert_non_null(strstr(err, "cannot create"));
    assert_null(strchr(err, '\n'));

    /* the rename fails (the target is a non-empty directory): the temporary file is removed */
    char target[300], inner[400];
    make_dir(target, sizeof(target), "occupied");
    snprintf(inner, sizeof(inner), "%s/x", target);
    write_bytes(inner, "x", 1);
    assert_false(st_write(target, ts, 1, NULL, 0, err, sizeof(err)));
    assert_non_null(strstr(err, "cannot rename"));
    assert_int_equal(count_tmp_files(tmpdir), 0);

    /* an existing file is replaced whole */
    write_bytes(path, "old contents that are longer than the new file will be", 55);
    assert_true(st_write(path, ts, 1, NULL, 0, err, sizeof(err)));
    struct st_file *f = st_open(path, err, sizeof(err));
    assert_non_null(f);
    assert_int_equal(st_count(f), 1);
    st_close(f);
}

/* A tensor spanning many pages: dropping them keeps the contents readable. */
static void test_drop_pages(void **state)
{
    (void)state;
    size_t n = 1 << 20;
    float *v = malloc(n * sizeof(float));
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = (float)i;
    float small = 3;
    struct st_write_tensor ts[] = {{"s", ST_F32, 0, {0}, &small}, {"big", ST_F32, 1, {n}, v}};
    char path[300], err[256];
    path_in(path, sizeof(path), "big.safetensors");
    assert_true(st_write(path, ts, 2, NULL, 0, err, sizeof(err)));
    struct st_file *f = st_open(path, err, sizeof(err));
    assert_non_null(f);
    const struct st_tensor *t = st_find(f, "big");
    float *out = malloc(n * sizeof(float));
    assert_non_null(out);
    assert_true(st_read_f32(t, out));
    st_drop_pages(f, t);
    st_drop_pages(f, st_find(f, "s"));
    memset(out, 0, n * sizeof(float));
    assert_true(st_read_f32(t, out));
    assert_memory_equal(out, v, n * sizeof(float));
    /* a tensor of another file is ignored */
    struct st_tensor foreign = *t;
    foreign.data = v;
    st_drop_pages(f, &foreign);
    assert_true(v[n - 1] == (float)(n - 1));
    st_close(f);
    free(out);
    free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_and_dtypes),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_foreign_file),
        cmocka_unit_test(test_errors_framing),
        cmocka_unit_test(test_errors_offsets),
        cmocka_unit_test(test_errors_entries),
        cmocka_unit_test(test_errors_duplicates_metadata),
        cmocka_unit_test(test_half_conversion),
        cmocka_unit_test(test_sets),
        cmocka_unit_test(test_write_errors),
        cmocka_unit_test(test_drop_pages),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
