/* safetensors.c — the safetensors reader (mmap, validated before use), shard sets, the writer.
 *
 * A checkpoint is untrusted input: every byte the rest of the model code reads through a
 * st_tensor has been checked to lie inside the file, and the spans tile the data buffer exactly,
 * so a tensor can never alias another. json-c parses the header, but it silently keeps the last of
 * two equal keys, so the header text is also walked once here to reject duplicates (a checkpoint
 * with two different "x" tensors would otherwise load whichever json-c kept). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

#include "model/model_internal.h"
#include "model/safetensors.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host (tensor bytes are used in place)"
#endif

#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"
#define ST_MAX_INDEX_FILE (64u << 20)
#define ST_SCAN_MAX_DEPTH 64     /* json-c refuses deeper headers first (its default is 32) */
#define ST_WRITE_CHUNK (64u << 20) /* bounded fwrite calls for multi-GB tensors */
#define ST_QUOTE_MAX 96            /* longest name shown in a message */

static const char *const st_dtype_names[] = {"F32", "F16", "BF16", "I32", "I64"};
static const size_t st_dtype_sizes[] = {4, 2, 2, 4, 8};
#define ST_N_DTYPES (sizeof(st_dtype_names) / sizeof(st_dtype_names[0]))

const char *st_dtype_name(enum st_dtype d)
{
    return (unsigned)d < ST_N_DTYPES ? st_dtype_names[d] : "?";
}

size_t st_dtype_size(enum st_dtype d)
{
    return (unsigned)d < ST_N_DTYPES ? st_dtype_sizes[d] : 0;
}

struct st_file {
    char *name;
    const uint8_t *base; /* the whole file */
    size_t size;
    bool mapped;
    uint64_t data_size;             /* the buffer after the header */
    size_t n;
    struct st_tensor *tensors;      /* offset order */
    const struct st_tensor **by_name;
    size_t n_meta;
    char **meta;                    /* key, value, ... sorted by key */
    char *strings;                  /* tensor names and metadata, one allocation */
};

/* ---- messages ---- */

static void st_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void st_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    for (char *p = err; *p; p++) /* one line, whatever a name or path contains */
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
}

/* A name as it may appear in one message line: bounded, control bytes shown as '?' (st_err
 * replaces them). */
struct st_quoted {
    char s[ST_QUOTE_MAX + 4];
};

static struct st_quoted st_quote_n(const char *s, size_t n)
{
    struct st_quoted q;
    size_t k = n < ST_QUOTE_MAX ? n : ST_QUOTE_MAX;
    for (size_t i = 0; i < k; i++)
        q.s[i] = s[i] ? s[i] : '?';
    if (k < n)
        memcpy(q.s + k, "...", 3), k += 3;
    q.s[k] = '\0';
    return q;
}

static struct st_quoted st_quote(const char *s)
{
    return st_quote_n(s, strlen(s));
}

static void st_format_shape(char *buf, size_t len, const uint64_t *shape, uint32_t ndim)
{
    size_t used = (size_t)snprintf(buf, len, "[");
    for (uint32_t i = 0; i < ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%" PRIu64, i ? ", " : "", shape[i]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
}

/* ---- duplicate keys in the header text ---- */

struct st_key {
    uint32_t off, len; /* decoded bytes in st_scan.text */
};

/* st_scan.text's first size: st_check_keys allocates it before the first key */
#define ST_SCAN_TEXT_START 4096

struct st_scan {
    char *text;
    size_t text_len, text_cap; /* text_cap ≥ ST_SCAN_TEXT_START */
    struct st_key *keys;
    size_t n_keys, keys_cap;
};

static bool st_scan_put(struct st_scan *s, const void *bytes, size_t n)
{
    if (s->text_len + n > s->text_cap) {
        size_t cap = s->text_cap;
        while (cap < s->text_len + n)
            cap *= 2;
        char *t = realloc(s->text, cap);
        if (!t)
            return false;
        s->text = t;
        s->text_cap = cap;
    }
    memcpy(s->text + s->text_len, bytes, n);
    s->text_len += n;
    return true;
}

static int st_hex4(const uint8_t *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int c = p[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v << 4 | d;
    }
    return v;
}

static size_t st_utf8(uint32_t cp, uint8_t *out)
{
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xc0 | cp >> 6);
        out[1] = (uint8_t)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xe0 | cp >> 12);
        out[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
        out[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (uint8_t)(0xf0 | cp >> 18);
    out[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3f));
    out[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
    out[3] = (uint8_t)(0x80 | (cp & 0x3f));
    return 4;
}

/* Decodes the string starting after the opening quote at p[*i] into s->text (when keep); leaves
 * *i after the closing quote. A lone surrogate decodes to U+FFFD, as json-c does. */
static bool st_scan_string(struct st_scan *s, const uint8_t *p, size_t n, size_t *i, bool keep)
{
    size_t k = *i;
    while (k < n) {
        uint8_t c = p[k];
        if (c == '"') {
            *i = k + 1;
            return true;
        }
        if (c != '\\') {
            size_t run = k;
            while (run < n && p[run] != '"' && p[run] != '\\')
                run++;
            if (keep && !st_scan_put(s, p + k, run - k))
                return false;
            k = run;
            continue;
        }
        if (k + 1 >= n)
            return false;
        uint8_t e = p[k + 1];
        uint8_t out[8];
        size_t m = 1;
        k += 2;
        switch (e) {
        case '"': out[0] = '"'; break;
        case '\\': out[0] = '\\'; break;
        case '/': out[0] = '/'; break;
        case 'b': out[0] = '\b'; break;
        case 'f': out[0] = '\f'; break;
        case 'n': out[0] = '\n'; break;
        case 'r': out[0] = '\r'; break;
        case 't': out[0] = '\t'; break;
        case 'u': {
            if (k + 4 > n)
                return false;
            int u = st_hex4(p + k);
            if (u < 0)
                return false;
            k += 4;
            uint32_t cp = (uint32_t)u;
            if (cp >= 0xd800 && cp < 0xdc00) {
                int lo = k + 6 <= n && p[k] == '\\' && p[k + 1] == 'u' ? st_hex4(p + k + 2) : -1;
                if (lo >= 0xdc00 && lo < 0xe000) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + ((uint32_t)lo - 0xdc00);
                    k += 6;
                } else {
                    cp = 0xfffd;
                }
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                cp = 0xfffd;
            }
            m = st_utf8(cp, out);
            break;
        }
        default:
            return false;
        }
        if (keep && !st_scan_put(s, out, m))
            return false;
    }
    return false;
}

static int st_key_cmp(const void *a, const void *b, void *text)
{
    const struct st_key *x = a, *y = b;
    const char *t = text;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(t + x->off, t + y->off, n);
    if (c)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

/* Walks the (json-c accepted) header and reports the first duplicate key of any object, or a key
 * with a NUL in it (json-c cuts keys at NUL, which would merge distinct names). */
static bool st_check_keys(const char *name, const uint8_t *p, size_t n, size_t *top_keys,
                          char *err, size_t errlen)
{
    struct frame {
        bool object, expect_key;
        size_t first_key;  /* this object's keys are keys[first_key ..] */
        uint32_t parent;   /* key that holds this object */
    } stack[ST_SCAN_MAX_DEPTH];
    /* the text buffer exists from the start: empty keys point into it too */
    struct st_scan s = {.text = malloc(ST_SCAN_TEXT_START), .text_cap = ST_SCAN_TEXT_START};
    int depth = 0;
    uint32_t last_key = UINT32_MAX; /* the key whose value comes next, in the innermost object */
    bool ok = s.text != NULL;
    const char *oom = ok ? NULL : "out of memory";
    if (err && errlen)
        err[0] = '\0';
    *top_keys = 0;
    for (size_t i = 0; i < n && ok;) {
        uint8_t c = p[i];
        if (c == '{' || c == '[') {
            if (depth == ST_SCAN_MAX_DEPTH) {
                st_err(err, errlen, "%s: header nests deeper than %d levels", name,
                       ST_SCAN_MAX_DEPTH);
                ok = false;
                break;
            }
            uint32_t parent = depth > 0 && stack[depth - 1].object ? last_key : UINT32_MAX;
            stack[depth++] = (struct frame){c == '{', c == '{', s.n_keys, parent};
            i++;
        } else if (c == '}' || c == ']') {
            if (depth == 0) {
                ok = false;
                break;
            }
            struct frame *f = &stack[--depth];
            if (depth == 0)
                *top_keys = s.n_keys - f->first_key;
            if (f->object && s.n_keys - f->first_key > 1) {
                size_t m = s.n_keys - f->first_key;
                struct st_key *keys = s.keys + f->first_key;
                qsort_r(keys, m, sizeof(*keys), st_key_cmp, s.text);
                for (size_t k = 1; k < m && ok; k++) {
                    if (st_key_cmp(&keys[k - 1], &keys[k], s.text) != 0)
                        continue;
                    struct st_quoted key = st_quote_n(s.text + keys[k].off, keys[k].len);
                    if (depth == 0) {
                        st_err(err, errlen, "%s: duplicate tensor name '%s'", name, key.s);
                    } else if (f->parent < f->first_key) {
                        const struct st_key *pk = &s.keys[f->parent];
                        struct st_quoted in = st_quote_n(s.text + pk->off, pk->len);
                        if (depth == 1 && strcmp(in.s, "__metadata__") == 0)
                            st_err(err, errlen, "%s: __metadata__: duplicate key '%s'", name,
                                   key.s);
                        else if (depth == 1)
                            st_err(err, errlen, "%s: tensor '%s': duplicate key '%s'", name,
                                   in.s, key.s);
                        else
                            st_err(err, errlen, "%s: '%s': duplicate key '%s'", name, in.s,
                                   key.s);
                    } else {
                        st_err(err, errlen, "%s: duplicate key '%s' in the header", name, key.s);
                    }
                    ok = false;
                }
            }
            /* a closed container's keys are done with; the parents' keys stay below them */
            if (f->first_key < s.n_keys) {
                s.text_len = s.keys[f->first_key].off;
                s.n_keys = f->first_key;
            }
            i++;
        } else if (c == '"') {
            i++;
            bool is_key = depth > 0 && stack[depth - 1].object && stack[depth - 1].expect_key;
            size_t start = s.text_len;
            if (!st_scan_string(&s, p, n, &i, is_key)) {
                ok = false;
                break;
            }
            if (is_key) {
                size_t len = s.text_len - start;
                if (memchr(s.text + start, '\0', len)) {
                    struct st_quoted key = st_quote_n(s.text + start, len);
                    st_err(err, errlen, "%s: key '%s' contains a NUL character", name, key.s);
                    ok = false;
                    break;
                }
                if (s.n_keys == s.keys_cap) {
                    size_t cap = s.keys_cap ? 2 * s.keys_cap : 256;
                    struct st_key *k = realloc(s.keys, cap * sizeof(*k));
                    if (!k) {
                        oom = "out of memory";
                        ok = false;
                        break;
                    }
                    s.keys = k;
                    s.keys_cap = cap;
                }
                if (s.text_len > UINT32_MAX) {
                    oom = "header too large";
                    ok = false;
                    break;
                }
                last_key = (uint32_t)s.n_keys;
                s.keys[s.n_keys++] = (struct st_key){(uint32_t)start, (uint32_t)len};
                stack[depth - 1].expect_key = false;
            }
        } else if (c == '\'') { /* json-c takes single-quoted strings even when strict */
            st_err(err, errlen, "%s: header is not valid JSON (single quote at offset %zu)", name,
                   i);
            ok = false;
        } else if (c == ',') {
            if (depth > 0 && stack[depth - 1].object)
                stack[depth - 1].expect_key = true;
            i++;
        } else {
            i++;
        }
    }
    if (ok && depth != 0)
        ok = false;
    if (!ok && err && errlen && (oom || err[0] == '\0'))
        st_err(err, errlen, "%s: cannot check the header's keys (%s)", name,
               oom ? oom : "malformed JSON");
    free(s.text);
    free(s.keys);
    return ok;
}

/* ---- the reader ---- */

struct st_entry {
    struct st_tensor t;
    uint64_t begin, end;
};

static int st_entry_cmp(const void *a, const void *b)
{
    const struct st_entry *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->t.name, y->t.name);
}

static int st_by_name_cmp(const void *a, const void *b)
{
    const struct st_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

static int st_meta_cmp(const void *a, const void *b)
{
    const char *const *x = a, *const *y = b;
    return strcmp(x[0], y[0]);
}

/* A JSON integer ≥ 0 (json-c keeps those above INT64_MAX as uint64). */
static bool st_json_u64(struct json_object *o, uint64_t *out)
{
    if (!json_object_is_type(o, json_type_int))
        return false;
    int64_t v = json_object_get_int64(o);
    if (v < 0)
        return false;
    *out = v == INT64_MAX ? json_object_get_uint64(o) : (uint64_t)v;
    return true;
}

static bool st_parse_entry(const char *name, const char *tname, struct json_object *o,
                           uint64_t data_size, struct st_entry *e, char *err, size_t errlen)
{
    struct st_quoted q = st_quote(tname);
    if (!json_object_is_type(o, json_type_object)) {
        st_err(err, errlen, "%s: tensor '%s' is not a JSON object", name, q.s);
        return false;
    }
    struct json_object *dtype, *shape, *offsets;
    if (!json_object_object_get_ex(o, "dtype", &dtype) ||
        !json_object_is_type(dtype, json_type_string)) {
        st_err(err, errlen, "%s: tensor '%s': \"dtype\" must be a string", name, q.s);
        return false;
    }
    const char *ds = json_object_get_string(dtype);
    size_t dlen = (size_t)json_object_get_string_len(dtype);
    bool known = false;
    for (unsigned d = 0; d < ST_N_DTYPES; d++)
        if (dlen == strlen(st_dtype_names[d]) && memcmp(ds, st_dtype_names[d], dlen) == 0) {
            e->t.dtype = (enum st_dtype)d;
            known = true;
        }
    if (!known) {
        struct st_quoted dq = st_quote_n(ds, dlen);
        st_err(err, errlen, "%s: tensor '%s': unsupported dtype '%s' (F32, F16, BF16, I32, I64)",
               name, q.s, dq.s);
        return false;
    }
    if (!json_object_object_get_ex(o, "shape", &shape) ||
        !json_object_is_type(shape, json_type_array)) {
        st_err(err, errlen, "%s: tensor '%s': \"shape\" must be an array of integers", name, q.s);
        return false;
    }
    size_t ndim = json_object_array_length(shape);
    if (ndim > ST_MAX_DIMS) {
        st_err(err, errlen, "%s: tensor '%s': shape has %zu dimensions, more than %d", name, q.s,
               ndim, ST_MAX_DIMS);
        return false;
    }
    e->t.ndim = (uint32_t)ndim;
    uint64_t numel = 1;
    bool overflow = false;
    for (size_t i = 0; i < ndim; i++) {
        if (!st_json_u64(json_object_array_get_idx(shape, i), &e->t.shape[i])) {
            st_err(err, errlen, "%s: tensor '%s': \"shape\" must be an array of non-negative "
                   "integers", name, q.s);
            return false;
        }
        if (__builtin_mul_overflow(numel, e->t.shape[i], &numel))
            overflow = true;
    }
    char shape_text[ST_MAX_DIMS * 22 + 4];
    st_format_shape(shape_text, sizeof(shape_text), e->t.shape, e->t.ndim);
    bool has_zero = false;
    for (size_t i = 0; i < ndim; i++)
        has_zero |= e->t.shape[i] == 0;
    uint64_t nbytes;
    if (has_zero) {
        numel = 0;
        nbytes = 0;
    } else if (overflow || __builtin_mul_overflow(numel, (uint64_t)st_dtype_size(e->t.dtype),
                                                  &nbytes)) {
        st_err(err, errlen, "%s: tensor '%s': shape %s %s overflows 64 bits", name, q.s,
               shape_text, st_dtype_name(e->t.dtype));
        return false;
    }
    if (!json_object_object_get_ex(o, "data_offsets", &offsets) ||
        !json_object_is_type(offsets, json_type_array) ||
        json_object_array_length(offsets) != 2 ||
        !st_json_u64(json_object_array_get_idx(offsets, 0), &e->begin) ||
        !st_json_u64(json_object_array_get_idx(offsets, 1), &e->end)) {
        st_err(err, errlen, "%s: tensor '%s': \"data_offsets\" must be [begin, end], two "
               "non-negative integers", name, q.s);
        return false;
    }
    if (e->begin > e->end) {
        st_err(err, errlen, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 ") end before "
               "they begin", name, q.s, e->begin, e->end);
        return false;
    }
    if (e->end - e->begin != nbytes) {
        st_err(err, errlen, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 ") but shape "
               "%s %s needs %" PRIu64 " bytes", name, q.s, e->begin, e->end, shape_text,
               st_dtype_name(e->t.dtype), nbytes);
        return false;
    }
    if (e->end > data_size) {
        st_err(err, errlen, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 ") run past "
               "the end of the %" PRIu64 "-byte data buffer", name, q.s, e->begin, e->end,
               data_size);
        return false;
    }
    e->t.numel = numel;
    e->t.nbytes = nbytes;
    return true;
}

static bool st_parse_metadata(struct st_file *f, struct json_object *meta, char **cursor,
                              char *err, size_t errlen)
{
    if (!json_object_is_type(meta, json_type_object)) {
        st_err(err, errlen, "%s: __metadata__ must be an object of strings", f->name);
        return false;
    }
    size_t k = 0;
    json_object_object_foreach(meta, key, val)
    {
        struct st_quoted q = st_quote(key);
        if (!json_object_is_type(val, json_type_string)) {
            st_err(err, errlen, "%s: __metadata__ '%s' must be a string", f->name, q.s);
            return false;
        }
        size_t len = (size_t)json_object_get_string_len(val);
        const char *v = json_object_get_string(val);
        if (memchr(v, '\0', len)) {
            st_err(err, errlen, "%s: __metadata__ '%s' contains a NUL character", f->name, q.s);
            return false;
        }
        size_t kl = strlen(key);
        f->meta[2 * k] = memcpy(*cursor, key, kl + 1);
        *cursor += kl + 1;
        f->meta[2 * k + 1] = memcpy(*cursor, v, len);
        (*cursor)[len] = '\0';
        *cursor += len + 1;
        k++;
    }
    qsort(f->meta, f->n_meta, 2 * sizeof(char *), st_meta_cmp);
    return true;
}

static bool st_is_ws(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool st_validate(struct st_file *f, char *err, size_t errlen)
{
    const char *name = f->name;
    if (f->size < 8) {
        st_err(err, errlen, "%s: file is %zu bytes, too short for the 8-byte header length", name,
               f->size);
        return false;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | f->base[i];
    if (hlen > ST_MAX_HEADER) {
        st_err(err, errlen, "%s: header length %" PRIu64 " exceeds the %u-byte limit", name, hlen,
               ST_MAX_HEADER);
        return false;
    }
    if (hlen > f->size - 8) {
        st_err(err, errlen, "%s: header length %" PRIu64 " runs past the end of the file (%zu "
               "bytes)", name, hlen, f->size);
        return false;
    }
    const uint8_t *h = f->base + 8;
    size_t hn = (size_t)hlen;
    f->data_size = f->size - 8 - hn;
    const uint8_t *nul = memchr(h, '\0', hn);
    if (nul) {
        st_err(err, errlen, "%s: header is not valid JSON (NUL byte at offset %zu)", name,
               (size_t)(nul - h));
        return false;
    }

    struct json_tokener *tok = json_tokener_new();
    if (!tok) {
        st_err(err, errlen, "%s: out of memory", name);
        return false;
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    struct json_object *root = json_tokener_parse_ex(tok, (const char *)h, (int)hn);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (!root || jerr != json_tokener_success) {
        st_err(err, errlen, "%s: header is not valid JSON (%s at offset %zu)", name,
               jerr == json_tokener_continue ? "unexpected end" : json_tokener_error_desc(jerr),
               end);
        json_object_put(root);
        return false;
    }
    bool ok = false;
    struct st_entry *entries = NULL;
    if (!json_object_is_type(root, json_type_object)) {
        st_err(err, errlen, "%s: header is not a JSON object", name);
        goto out;
    }
    for (size_t i = end; i < hn; i++)
        if (!st_is_ws(h[i])) {
            st_err(err, errlen, "%s: header has bytes after the JSON object (offset %zu)", name,
                   i);
            goto out;
        }
    size_t top_keys;
    if (!st_check_keys(name, h, end, &top_keys, err, errlen))
        goto out;
    size_t n_total = (size_t)json_object_object_length(root);
    if (top_keys != n_total) { /* json-c merged two names this scan told apart */
        st_err(err, errlen, "%s: duplicate tensor names (%zu keys, %zu distinct)", name, top_keys,
               n_total);
        goto out;
    }

    entries = calloc(n_total ? n_total : 1, sizeof(*entries));
    if (!entries) {
        st_err(err, errlen, "%s: out of memory", name);
        goto out;
    }
    size_t strings = 0, n = 0;
    struct json_object *meta = NULL;
    json_object_object_foreach(root, key, val)
    {
        if (strcmp(key, "__metadata__") == 0) {
            meta = val;
            if (json_object_is_type(val, json_type_object)) {
                json_object_object_foreach(val, mk, mv)
                {
                    strings += strlen(mk) + 1;
                    if (json_object_is_type(mv, json_type_string))
                        strings += (size_t)json_object_get_string_len(mv) + 1;
                    f->n_meta++;
                }
            }
            continue;
        }
        if (!st_parse_entry(name, key, val, f->data_size, &entries[n], err, errlen))
            goto out;
        entries[n].t.name = key; /* json-c's until copied below */
        strings += strlen(key) + 1;
        n++;
    }
    qsort(entries, n, sizeof(*entries), st_entry_cmp);
    uint64_t cursor = 0;
    for (size_t i = 0; i < n; i++) {
        const struct st_entry *e = &entries[i];
        struct st_quoted q = st_quote(e->t.name);
        if (e->begin > cursor) {
            st_err(err, errlen, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 ") leave "
                   "a gap of %" PRIu64 " bytes after offset %" PRIu64, name, q.s, e->begin,
                   e->end, e->begin - cursor, cursor);
            goto out;
        }
        if (e->begin < cursor) {
            /* everything before tiles [0, cursor), so the previous span ends at cursor */
            const struct st_entry *o = &entries[i - 1];
            struct st_quoted oq = st_quote(o->t.name);
            st_err(err, errlen, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 ") "
                   "overlap tensor '%s' [%" PRIu64 ", %" PRIu64 ")", name, q.s, e->begin, e->end,
                   oq.s, o->begin, o->end);
            goto out;
        }
        cursor = e->end;
    }
    if (cursor != f->data_size) {
        st_err(err, errlen, "%s: tensors end at offset %" PRIu64 " but the data buffer is %" PRIu64
               " bytes", name, cursor, f->data_size);
        goto out;
    }

    f->strings = malloc(strings ? strings : 1);
    f->tensors = calloc(n ? n : 1, sizeof(*f->tensors));
    f->by_name = calloc(n ? n : 1, sizeof(*f->by_name));
    f->meta = calloc(f->n_meta ? 2 * f->n_meta : 1, sizeof(char *));
    if (!f->strings || !f->tensors || !f->by_name || !f->meta) {
        st_err(err, errlen, "%s: out of memory", name);
        goto out;
    }
    char *sp = f->strings;
    const uint8_t *data = h + hn;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(entries[i].t.name);
        memcpy(sp, entries[i].t.name, len + 1);
        f->tensors[i] = entries[i].t;
        f->tensors[i].name = sp;
        f->tensors[i].data = data + entries[i].begin;
        f->by_name[i] = &f->tensors[i];
        sp += len + 1;
    }
    f->n = n;
    qsort(f->by_name, n, sizeof(*f->by_name), st_by_name_cmp);
    if (meta && !st_parse_metadata(f, meta, &sp, err, errlen))
        goto out;
    ok = true;
out:
    free(entries);
    json_object_put(root);
    return ok;
}

static void st_file_free(struct st_file *f)
{
    if (!f)
        return;
    if (f->mapped && f->base)
        munmap((void *)f->base, f->size);
    free(f->tensors);
    free(f->by_name);
    free(f->meta);
    free(f->strings);
    free(f->name);
    free(f);
}

static struct st_file *st_file_new(const char *name)
{
    struct st_file *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->name = strdup(name);
    if (!f->name) {
        free(f);
        return NULL;
    }
    return f;
}

struct st_file *st_open_buffer(const char *name, const void *data, size_t size, char *err,
                               size_t errlen)
{
    struct st_file *f = st_file_new(name);
    if (!f) {
        st_err(err, errlen, "%s: out of memory", name);
        return NULL;
    }
    f->base = data;
    f->size = size;
    if (size > 0 && !data) {
        st_err(err, errlen, "%s: no data", name);
        st_file_free(f);
        return NULL;
    }
    if (!st_validate(f, err, errlen)) {
        st_file_free(f);
        return NULL;
    }
    return f;
}

struct st_file *st_open(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        st_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st_err(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (!S_ISREG(sb.st_mode)) {
        st_err(err, errlen, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    struct st_file *f = st_file_new(path);
    if (!f) {
        st_err(err, errlen, "%s: out of memory", path);
        close(fd);
        return NULL;
    }
    f->size = (size_t)sb.st_size;
    if (f->size >= 8) {
        void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            st_err(err, errlen, "%s: cannot map %zu bytes: %s", path, f->size, strerror(errno));
            close(fd);
            st_file_free(f);
            return NULL;
        }
        f->base = m;
        f->mapped = true;
    }
    close(fd);
    if (!st_validate(f, err, errlen)) {
        st_file_free(f);
        return NULL;
    }
    return f;
}

void st_close(struct st_file *f)
{
    st_file_free(f);
}

size_t st_count(const struct st_file *f)
{
    return f ? f->n : 0;
}

const struct st_tensor *st_at(const struct st_file *f, size_t i)
{
    return f && i < f->n ? &f->tensors[i] : NULL;
}

const struct st_tensor *st_find(const struct st_file *f, const char *name)
{
    if (!f || !name || f->n == 0)
        return NULL;
    struct st_tensor key = {.name = name};
    const struct st_tensor *kp = &key;
    const struct st_tensor **hit =
        bsearch(&kp, f->by_name, f->n, sizeof(*f->by_name), st_by_name_cmp);
    return hit ? *hit : NULL;
}

const char *st_metadata(const struct st_file *f, const char *key)
{
    if (!f || !key || f->n_meta == 0)
        return NULL;
    const char *k[2] = {key, NULL};
    char **hit = bsearch(k, f->meta, f->n_meta, 2 * sizeof(char *), st_meta_cmp);
    return hit ? hit[1] : NULL;
}

static float st_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = h >> 10 & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        float v = (float)mant * 0x1p-24f; /* zero or subnormal: exact */
        return sign ? -v : v;
    }
    if (exp == 31)
        bits = sign | 0x7f800000u | mant << 13; /* inf, or NaN with its payload */
    else
        bits = sign | (exp + 112) << 23 | mant << 13;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

bool st_read_f32(const struct st_tensor *t, float *out)
{
    if (!t || (t->numel > 0 && !out))
        return false;
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case ST_F32:
        if (t->numel)
            memcpy(out, p, t->numel * 4);
        return true;
    case ST_F16:
        for (uint64_t i = 0; i < t->numel; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = st_f16_to_f32(h);
        }
        return true;
    case ST_BF16:
        for (uint64_t i = 0; i < t->numel; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            uint32_t bits = (uint32_t)h << 16;
            memcpy(&out[i], &bits, 4);
        }
        return true;
    default:
        return false;
    }
}

bool st_read_i64(const struct st_tensor *t, int64_t *out)
{
    if (!t || (t->numel > 0 && !out))
        return false;
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case ST_I32:
        for (uint64_t i = 0; i < t->numel; i++) {
            int32_t v;
            memcpy(&v, p + 4 * i, 4);
            out[i] = v;
        }
        return true;
    case ST_I64:
        if (t->numel)
            memcpy(out, p, t->numel * 8);
        return true;
    default:
        return false;
    }
}

void st_drop_pages(const struct st_file *f, const struct st_tensor *t)
{
    if (!f || !t || !f->mapped || t->nbytes == 0)
        return;
    uintptr_t lo = (uintptr_t)t->data, hi = lo + t->nbytes;
    uintptr_t base = (uintptr_t)f->base;
    if (lo < base || hi > base + f->size)
        return; /* not this file's tensor */
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t start = (lo + page - 1) & ~(page - 1), stop = hi & ~(page - 1);
    if (stop > start)
        madvise((void *)start, stop - start, MADV_DONTNEED);
}

/* ---- sets of files ---- */

struct st_set {
    size_t n_files;
    struct st_file **files;
    size_t n;
    const struct st_tensor **by_name;
};

void st_set_close(struct st_set *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n_files; i++)
        st_close(s->files[i]);
    free(s->files);
    free(s->by_name);
    free(s);
}

static char *st_join(const char *dir, const char *file)
{
    size_t a = strlen(dir), b = strlen(file);
    char *p = malloc(a + b + 2);
    if (p) {
        memcpy(p, dir, a);
        p[a] = '/';
        memcpy(p + a + 1, file, b + 1);
    }
    return p;
}

static int st_str_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static struct st_file *st_set_file_of(const struct st_set *s, const struct st_tensor *t)
{
    for (size_t i = 0; i < s->n_files; i++) {
        const struct st_file *f = s->files[i];
        if (f->n && t >= f->tensors && t < f->tensors + f->n)
            return s->files[i];
    }
    return NULL;
}

/* The name index over all files; a name in two shards would make lookups ambiguous. */
static bool st_set_index(struct st_set *s, const char *dir, char *err, size_t errlen)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n_files; i++)
        n += s->files[i]->n;
    s->by_name = calloc(n ? n : 1, sizeof(*s->by_name));
    if (!s->by_name) {
        st_err(err, errlen, "%s: out of memory", dir);
        return false;
    }
    for (size_t i = 0; i < s->n_files; i++)
        for (size_t k = 0; k < s->files[i]->n; k++)
            s->by_name[s->n++] = &s->files[i]->tensors[k];
    qsort(s->by_name, s->n, sizeof(*s->by_name), st_by_name_cmp);
    for (size_t i = 1; i < s->n; i++)
        if (strcmp(s->by_name[i - 1]->name, s->by_name[i]->name) == 0) {
            struct st_quoted q = st_quote(s->by_name[i]->name);
            const struct st_file *a = st_set_file_of(s, s->by_name[i - 1]);
            const struct st_file *b = st_set_file_of(s, s->by_name[i]);
            st_err(err, errlen, "%s: tensor '%s' is in both %s and %s", dir, q.s, a->name,
                   b->name);
            return false;
        }
    return true;
}

static bool st_plain_name(const char *s, size_t len)
{
    return len > 0 && !memchr(s, '\0', len) && !strchr(s, '/') && strcmp(s, ".") != 0 &&
           strcmp(s, "..") != 0;
}

static bool st_set_open_index(struct st_set *s, const char *dir, const char *index, char *err,
                              size_t errlen)
{
    FILE *fp = fopen(index, "rb");
    if (!fp) {
        st_err(err, errlen, "%s: cannot open: %s", index, strerror(errno));
        return false;
    }
    char *text = malloc(ST_MAX_INDEX_FILE + 1);
    size_t len = text ? fread(text, 1, ST_MAX_INDEX_FILE + 1, fp) : 0;
    bool read_err = ferror(fp);
    fclose(fp);
    if (!text || read_err || len > ST_MAX_INDEX_FILE) {
        st_err(err, errlen, "%s: %s", index,
               !text ? "out of memory" : read_err ? "read error" : "larger than 64 MiB");
        free(text);
        return false;
    }
    struct json_tokener *tok = json_tokener_new();
    if (!tok) {
        st_err(err, errlen, "%s: out of memory", index);
        free(text);
        return false;
    }
    struct json_object *root = json_tokener_parse_ex(tok, text, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    json_tokener_free(tok);
    free(text);
    bool ok = false;
    char **shards = NULL;
    struct json_object *map;
    if (!root || jerr != json_tokener_success) {
        st_err(err, errlen, "%s: not valid JSON (%s)", index,
               jerr == json_tokener_continue ? "unexpected end" : json_tokener_error_desc(jerr));
        goto out;
    }
    if (!json_object_is_type(root, json_type_object) ||
        !json_object_object_get_ex(root, "weight_map", &map) ||
        !json_object_is_type(map, json_type_object)) {
        st_err(err, errlen, "%s: \"weight_map\" must be an object of tensor name to file name",
               index);
        goto out;
    }
    size_t n = (size_t)json_object_object_length(map);
    if (n == 0) {
        st_err(err, errlen, "%s: \"weight_map\" is empty", index);
        goto out;
    }
    shards = calloc(n, sizeof(*shards));
    if (!shards) {
        st_err(err, errlen, "%s: out of memory", index);
        goto out;
    }
    size_t k = 0;
    json_object_object_foreach(map, tname, file)
    {
        struct st_quoted q = st_quote(tname);
        if (!json_object_is_type(file, json_type_string)) {
            st_err(err, errlen, "%s: weight_map '%s' must be a file name", index, q.s);
            goto out;
        }
        const char *fname = json_object_get_string(file);
        if (!st_plain_name(fname, (size_t)json_object_get_string_len(file))) {
            struct st_quoted fq = st_quote(fname);
            st_err(err, errlen, "%s: weight_map '%s': '%s' is not a plain file name in the "
                   "directory", index, q.s, fq.s);
            goto out;
        }
        shards[k++] = (char *)fname;
    }
    qsort(shards, n, sizeof(*shards), st_str_cmp);
    size_t distinct = 0;
    for (size_t i = 0; i < n; i++)
        if (i == 0 || strcmp(shards[i], shards[distinct - 1]) != 0)
            shards[distinct++] = shards[i];
    s->files = calloc(distinct, sizeof(*s->files));
    if (!s->files) {
        st_err(err, errlen, "%s: out of memory", index);
        goto out;
    }
    for (size_t i = 0; i < distinct; i++) {
        char *path = st_join(dir, shards[i]);
        if (!path) {
            st_err(err, errlen, "%s: out of memory", index);
            goto out;
        }
        s->files[s->n_files] = st_open(path, err, errlen);
        free(path);
        if (!s->files[s->n_files])
            goto out;
        s->n_files++;
    }
    json_object_object_foreach(map, tname2, file2)
    {
        const char *fname = json_object_get_string(file2);
        const char *const *hit = bsearch(&fname, shards, distinct, sizeof(*shards), st_str_cmp);
        const struct st_file *f = s->files[hit - (const char *const *)shards];
        if (!st_find(f, tname2)) {
            struct st_quoted q = st_quote(tname2), fq = st_quote(fname);
            st_err(err, errlen, "%s: tensor '%s' is mapped to %s, which has no such tensor", index,
                   q.s, fq.s);
            goto out;
        }
    }
    ok = st_set_index(s, dir, err, errlen);
out:
    free(shards);
    json_object_put(root);
    return ok;
}

struct st_set *st_set_open(const char *dir, char *err, size_t errlen)
{
    struct st_set *s = calloc(1, sizeof(*s));
    char *index = st_join(dir, ST_INDEX_NAME), *single = st_join(dir, ST_SINGLE_NAME);
    bool ok = false;
    if (!s || !index || !single) {
        st_err(err, errlen, "%s: out of memory", dir);
        goto out;
    }
    struct stat sb;
    if (stat(index, &sb) == 0) {
        ok = st_set_open_index(s, dir, index, err, errlen);
    } else if (stat(single, &sb) == 0) {
        s->files = calloc(1, sizeof(*s->files));
        if (!s->files) {
            st_err(err, errlen, "%s: out of memory", dir);
            goto out;
        }
        s->files[0] = st_open(single, err, errlen);
        if (!s->files[0])
            goto out;
        s->n_files = 1;
        ok = st_set_index(s, dir, err, errlen);
    } else {
        st_err(err, errlen, "%s: no " ST_SINGLE_NAME " or " ST_INDEX_NAME, dir);
    }
out:
    free(index);
    free(single);
    if (!ok) {
        st_set_close(s);
        return NULL;
    }
    return s;
}

const struct st_tensor *st_set_find(const struct st_set *s, const char *name)
{
    if (!s || !name || s->n == 0)
        return NULL;
    struct st_tensor key = {.name = name};
    const struct st_tensor *kp = &key;
    const struct st_tensor **hit =
        bsearch(&kp, s->by_name, s->n, sizeof(*s->by_name), st_by_name_cmp);
    return hit ? *hit : NULL;
}

size_t st_set_count(const struct st_set *s)
{
    return s ? s->n : 0;
}

const struct st_tensor *st_set_at(const struct st_set *s, size_t i)
{
    if (!s)
        return NULL;
    for (size_t k = 0; k < s->n_files; k++) {
        if (i < s->files[k]->n)
            return &s->files[k]->tensors[i];
        i -= s->files[k]->n;
    }
    return NULL;
}

void st_set_drop_pages(const struct st_set *s, const struct st_tensor *t)
{
    if (!s || !t)
        return;
    const struct st_file *f = st_set_file_of(s, t);
    if (f)
        st_drop_pages(f, t);
}

/* ---- the writer ---- */

struct st_buf {
    char *p;
    size_t len, cap;
    bool oom;
};

static void st_buf_put(struct st_buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void st_buf_printf(struct st_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void st_buf_printf(struct st_buf *b, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        st_buf_put(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

static void st_buf_json_string(struct st_buf *b, const char *s)
{
    st_buf_put(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            st_buf_put(b, e, 2);
        } else if (c < 0x20) {
            st_buf_printf(b, "\\u%04x", c);
        } else {
            st_buf_put(b, p, 1);
        }
    }
    st_buf_put(b, "\"", 1);
}

static int st_wname_cmp(const void *a, const void *b)
{
    const struct st_write_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

static bool st_write_all(FILE *fp, const void *data, uint64_t n)
{
    const uint8_t *p = data;
    while (n > 0) {
        size_t k = n > ST_WRITE_CHUNK ? ST_WRITE_CHUNK : (size_t)n;
        if (fwrite(p, 1, k, fp) != k)
            return false;
        p += k;
        n -= k;
    }
    return true;
}

bool st_write(const char *path, const struct st_write_tensor *tensors, size_t n,
              const char *const *meta, size_t n_meta, char *err, size_t errlen)
{
    uint64_t *sizes = calloc(n ? n : 1, sizeof(*sizes));
    const struct st_write_tensor **sorted = calloc(n ? n : 1, sizeof(*sorted));
    struct st_buf hb = {0};
    bool ok = false;
    if (!sizes || !sorted) {
        st_err(err, errlen, "%s: out of memory", path);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const struct st_write_tensor *t = &tensors[i];
        if (!t->name) {
            st_err(err, errlen, "%s: tensor %zu has no name", path, i);
            goto out;
        }
        struct st_quoted q = st_quote(t->name);
        if (strcmp(t->name, "__metadata__") == 0 || (unsigned)t->dtype >= ST_N_DTYPES ||
            t->ndim > ST_MAX_DIMS) {
            st_err(err, errlen, "%s: tensor '%s': %s", path, q.s,
                   (unsigned)t->dtype >= ST_N_DTYPES ? "unknown dtype"
                   : t->ndim > ST_MAX_DIMS             ? "too many dimensions"
                                                       : "reserved name");
            goto out;
        }
        uint64_t bytes = st_dtype_size(t->dtype);
        for (uint32_t d = 0; d < t->ndim; d++)
            if (__builtin_mul_overflow(bytes, t->shape[d], &bytes)) {
                st_err(err, errlen, "%s: tensor '%s': size overflows 64 bits", path, q.s);
                goto out;
            }
        for (uint32_t d = 0; d < t->ndim; d++)
            if (t->shape[d] == 0)
                bytes = 0;
        if (bytes > 0 && !t->data) {
            st_err(err, errlen, "%s: tensor '%s': no data", path, q.s);
            goto out;
        }
        sizes[i] = bytes;
        sorted[i] = t;
    }
    qsort(sorted, n, sizeof(*sorted), st_wname_cmp);
    for (size_t i = 1; i < n; i++)
        if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0) {
            struct st_quoted q = st_quote(sorted[i]->name);
            st_err(err, errlen, "%s: duplicate tensor name '%s'", path, q.s);
            goto out;
        }
    for (size_t i = 0; i < n_meta; i++) {
        if (!meta[2 * i] || !meta[2 * i + 1]) {
            st_err(err, errlen, "%s: metadata entry %zu is NULL", path, i);
            goto out;
        }
        for (size_t k = 0; k < i; k++)
            if (strcmp(meta[2 * k], meta[2 * i]) == 0) {
                struct st_quoted q = st_quote(meta[2 * i]);
                st_err(err, errlen, "%s: duplicate metadata key '%s'", path, q.s);
                goto out;
            }
    }

    st_buf_put(&hb, "{", 1);
    if (n_meta > 0) {
        st_buf_put(&hb, "\"__metadata__\":{", 16);
        for (size_t i = 0; i < n_meta; i++) {
            if (i)
                st_buf_put(&hb, ",", 1);
            st_buf_json_string(&hb, meta[2 * i]);
            st_buf_put(&hb, ":", 1);
            st_buf_json_string(&hb, meta[2 * i + 1]);
        }
        st_buf_put(&hb, "}", 1);
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < n; i++) {
        const struct st_write_tensor *t = &tensors[i];
        if (i || n_meta)
            st_buf_put(&hb, ",", 1);
        st_buf_json_string(&hb, t->name);
        st_buf_printf(&hb, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_name(t->dtype));
        for (uint32_t d = 0; d < t->ndim; d++)
            st_buf_printf(&hb, "%s%" PRIu64, d ? "," : "", t->shape[d]);
        uint64_t end;
        if (__builtin_add_overflow(offset, sizes[i], &end)) {
            st_err(err, errlen, "%s: total size overflows 64 bits", path);
            goto out;
        }
        st_buf_printf(&hb, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", offset, end);
        offset = end;
    }
    st_buf_put(&hb, "}", 1);
    while ((8 + hb.len) % 8 != 0)
        st_buf_put(&hb, " ", 1);
    if (hb.oom) {
        st_err(err, errlen, "%s: out of memory", path);
        goto out;
    }
    if (hb.len > ST_MAX_HEADER) {
        st_err(err, errlen, "%s: header of %zu bytes exceeds the %u-byte limit", path, hb.len,
               ST_MAX_HEADER);
        goto out;
    }

    struct model_outfile outf;
    if (!model_outfile_open(&outf, path, err, errlen))
        goto out;
    uint8_t lenbytes[8];
    for (int i = 0; i < 8; i++)
        lenbytes[i] = (uint8_t)((uint64_t)hb.len >> (8 * i));
    bool wrote = fwrite(lenbytes, 1, 8, outf.fp) == 8 && st_write_all(outf.fp, hb.p, hb.len);
    for (size_t i = 0; i < n && wrote; i++)
        wrote = st_write_all(outf.fp, tensors[i].data, sizes[i]);
    if (!wrote) {
        st_err(err, errlen, "%s: cannot write %s: %s", path, outf.tmp, strerror(errno));
        model_outfile_abort(&outf);
        goto out;
    }
    ok = model_outfile_commit(&outf, err, errlen);
out:
    free(hb.p);
    free(sizes);
    free(sorted);
    return ok;
}
