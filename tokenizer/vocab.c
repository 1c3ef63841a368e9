/* vocab.c — the built-in hex vocabulary, UER vocab files, and UER's BERT tokenization of words.
 *
 * A file vocab is read the way UER's Vocab.load reads it (Python text mode, UTF-8): every line
 * gets the id of its 0-based line number, empty lines included, and the token is the first
 * whitespace-separated field. Words are tokenized the way UER's BertTokenizer does it
 * (BasicTokenizer: control characters dropped, lower-cased, ASCII punctuation split off; then
 * greedy longest-match-first WordPiece with "##" continuations), so that ids agree with the
 * seed's Python for every input the pipelines produce. The 65,536 four-hex words are tokenized
 * once at load time; after that a packet never touches the hash table. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer_internal.h"

#define TOK_N_SPECIALS 5
#define TOK_WORDPIECE_MAX_CHARS 200 /* UER's max_input_chars_per_word */
#define TOK_VOCAB_MAX_FILE (1u << 30)

static const char *const tok_special_names[TOK_N_SPECIALS] = {"[PAD]", "[SEP]", "[CLS]", "[UNK]",
                                                              "[MASK]"};

/* The hash is kept next to the id so that a probe only touches the token text when it is very
 * likely the one sought: the tables are far larger than the cache. */
struct tok_slot {
    uint32_t id1; /* id + 1, 0 = empty */
    uint32_t hash;
};

struct tok_vocab {
    bool builtin;
    uint32_t size;
    uint32_t special[TOK_N_SPECIALS];
    /* builtin: 65,536 × "xxxx\0"; file: every line's token, NUL-terminated */
    char *text;
    /* file vocab only */
    uint32_t *tok_off, *tok_len;
    struct tok_slot *slots; /* open addressing */
    uint32_t slot_mask;
    uint32_t (*value_ids)[TOK_MAX_PIECES];
    uint8_t *value_n;
};

/* ---- token → id ---- */

static uint32_t tok_hash(const char *prefix, size_t plen, const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a; the key may come in two parts ("##" + piece) */
    for (size_t i = 0; i < plen; i++)
        h = (h ^ (uint8_t)prefix[i]) * 16777619u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h ^ (h >> 15);
}

static int tok_hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Id of prefix + s, or -1. */
static int64_t tok_vocab_lookup(const struct tok_vocab *v, const char *prefix, size_t plen,
                                const char *s, size_t n)
{
    if (v->builtin) {
        if (plen != 0)
            return -1;
        if (n == 4) {
            int value = 0;
            for (int i = 0; i < 4; i++) {
                int d = tok_hex_digit(s[i]);
                if (d < 0)
                    return -1;
                value = value << 4 | d;
            }
            return TOK_N_SPECIALS + value;
        }
        for (int i = 0; i < TOK_N_SPECIALS; i++)
            if (strlen(tok_special_names[i]) == n && memcmp(tok_special_names[i], s, n) == 0)
                return i;
        return -1;
    }
    uint32_t h = tok_hash(prefix, plen, s, n);
    for (uint32_t i = h & v->slot_mask;; i = (i + 1) & v->slot_mask) {
        const struct tok_slot *slot = &v->slots[i];
        if (slot->id1 == 0)
            return -1;
        if (slot->hash != h)
            continue;
        uint32_t id = slot->id1 - 1;
        const char *t = v->text + v->tok_off[id];
        if (v->tok_len[id] == plen + n && memcmp(t, prefix, plen) == 0 &&
            memcmp(t + plen, s, n) == 0)
            return id;
    }
}

/* UER keeps a dict from token to id, so a repeated token maps to its last line. */
static void tok_vocab_insert(struct tok_vocab *v, uint32_t id)
{
    const char *t = v->text + v->tok_off[id];
    uint32_t n = v->tok_len[id];
    uint32_t h = tok_hash("", 0, t, n);
    for (uint32_t i = h & v->slot_mask;; i = (i + 1) & v->slot_mask) {
        struct tok_slot *slot = &v->slots[i];
        if (slot->id1 == 0) {
            *slot = (struct tok_slot){id + 1, h};
            return;
        }
        uint32_t other = slot->id1 - 1;
        if (slot->hash == h && v->tok_len[other] == n &&
            memcmp(v->text + v->tok_off[other], t, n) == 0) {
            slot->id1 = id + 1;
            return;
        }
    }
}

/* ---- WordPiece ---- */

struct tok_id_sink {
    uint32_t *ids;
    size_t max, n;
};

static void tok_sink_push(struct tok_id_sink *k, uint32_t id)
{
    if (k->n < k->max)
        k->ids[k->n] = id;
    k->n++;
}

/* Length of the UTF-8 sequence at p (1 for a byte that starts no valid sequence, so that
 * malformed input still advances one byte at a time as a "character"). */
static size_t tok_utf8_len(const uint8_t *p, size_t avail, uint32_t *cp)
{
    uint8_t c = p[0];
    size_t n;
    uint32_t min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if (c >= 0xc2 && c <= 0xdf) {
        n = 2, min = 0x80, *cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3, min = 0x800, *cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4, min = 0x10000, *cp = c & 0x07;
    } else {
        *cp = UINT32_MAX;
        return 1;
    }
    if (avail < n) {
        *cp = UINT32_MAX;
        return 1;
    }
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            *cp = UINT32_MAX;
            return 1;
        }
        *cp = *cp << 6 | (p[i] & 0x3f);
    }
    if (*cp < min || *cp > 0x10ffff || (*cp >= 0xd800 && *cp <= 0xdfff)) {
        *cp = UINT32_MAX;
        return 1;
    }
    return n;
}

/* One BasicTokenizer word (≤ 200 characters) through greedy longest-match-first WordPiece. */
static void tok_wordpiece(const struct tok_vocab *v, const char *s, size_t n, struct tok_id_sink *k)
{
    size_t bounds[TOK_WORDPIECE_MAX_CHARS + 1];
    size_t nchars = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        bounds[nchars++] = i;
        i += tok_utf8_len((const uint8_t *)s + i, n - i, &cp);
    }
    bounds[nchars] = n;
    uint32_t pieces[TOK_WORDPIECE_MAX_CHARS];
    size_t np = 0;
    for (size_t start = 0; start < nchars;) {
        int64_t id = -1;
        size_t end = nchars;
        for (; end > start; end--) {
            id = tok_vocab_lookup(v, "##", start > 0 ? 2 : 0, s + bounds[start],
                                  bounds[end] - bounds[start]);
            if (id >= 0)
                break;
        }
        if (id < 0) {
            tok_sink_push(k, v->special[TOK_UNK]);
            return;
        }
        pieces[np++] = (uint32_t)id;
        start = end;
    }
    for (size_t i = 0; i < np; i++)
        tok_sink_push(k, pieces[i]);
}

static bool tok_ascii_punct(uint8_t c)
{
    return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
           (c >= 123 && c <= 126);
}

/* BasicTokenizer, for the ASCII part of Unicode: whitespace separates words, control
 * characters (C0 but tab/newline/return, DEL, C1, U+FFFD) vanish, A–Z is lower-cased and each
 * ASCII punctuation character is a word of its own. Other non-ASCII characters pass unchanged
 * (UER would also lower-case them, strip accents, and split off CJK and Unicode punctuation:
 * nothing the traffic pipelines ever produce). */
static void tok_basic_then_wordpiece(const struct tok_vocab *v, const char *word, size_t len,
                                     struct tok_id_sink *k)
{
    char cur[TOK_WORDPIECE_MAX_CHARS * 4];
    size_t cur_len = 0, cur_chars = 0;
    bool overlong = false;
#define TOK_FLUSH()                                                                                \
    do {                                                                                           \
        if (overlong)                                                                              \
            tok_sink_push(k, v->special[TOK_UNK]);                                                 \
        else if (cur_chars > 0)                                                                    \
            tok_wordpiece(v, cur, cur_len, k);                                                     \
        cur_len = cur_chars = 0;                                                                   \
        overlong = false;                                                                          \
    } while (0)
    const uint8_t *p = (const uint8_t *)word;
    for (size_t i = 0; i < len;) {
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
                TOK_FLUSH();
                continue;
            }
            if (c < 0x20 || c == 0x7f)
                continue;
            if (tok_ascii_punct(c)) {
                TOK_FLUSH();
                char one = (char)c;
                tok_wordpiece(v, &one, 1, k);
                continue;
            }
            if (c >= 'A' && c <= 'Z')
                c = (uint8_t)(c - 'A' + 'a');
            if (cur_chars == TOK_WORDPIECE_MAX_CHARS)
                overlong = true;
            else {
                cur[cur_len++] = (char)c;
                cur_chars++;
            }
            continue;
        }
        uint32_t cp;
        size_t n = tok_utf8_len(p + i, len - i, &cp);
        if ((cp >= 0x80 && cp <= 0x9f) || cp == 0xfffd) {
            i += n;
            continue;
        }
        if (cur_chars == TOK_WORDPIECE_MAX_CHARS)
            overlong = true;
        else {
            memcpy(cur + cur_len, p + i, n);
            cur_len += n;
            cur_chars++;
        }
        i += n;
    }
    TOK_FLUSH();
#undef TOK_FLUSH
}

size_t tok_vocab_word_ids(const struct tok_vocab *v, const char *word, size_t len, uint32_t *ids,
                          size_t max, size_t *needed)
{
    struct tok_id_sink k = {ids, max, 0};
    int special = -1;
    for (int i = 0; i < TOK_N_SPECIALS; i++)
        if (strlen(tok_special_names[i]) == len && memcmp(tok_special_names[i], word, len) == 0)
            special = i;
    if (special >= 0)
        tok_sink_push(&k, v->special[special]);
    else
        tok_basic_then_wordpiece(v, word, len, &k);
    if (needed)
        *needed = k.n;
    return k.n < max ? k.n : max;
}

int tok_vocab_value_ids(const struct tok_vocab *v, uint16_t value, uint32_t ids[TOK_MAX_PIECES])
{
    if (v->builtin) {
        ids[0] = TOK_N_SPECIALS + (uint32_t)value;
        return 1;
    }
    int n = v->value_n[value];
    memcpy(ids, v->value_ids[value], sizeof(uint32_t) * (size_t)n);
    return n;
}

uint32_t tok_vocab_special(const struct tok_vocab *v, int special) { return v->special[special]; }

/* ---- construction ---- */

static void tok_fill_hex_text(char *text)
{
    for (uint32_t value = 0; value < 65536; value++)
        tok_format_value((uint16_t)value, text + 5 * value);
}

struct tok_vocab *tok_vocab_builtin(void)
{
    struct tok_vocab *v = calloc(1, sizeof(*v));
    if (!v)
        return NULL;
    v->text = malloc(65536u * 5u);
    if (!v->text) {
        free(v);
        return NULL;
    }
    tok_fill_hex_text(v->text);
    v->builtin = true;
    v->size = TOK_BUILTIN_VOCAB_SIZE;
    for (int i = 0; i < TOK_N_SPECIALS; i++)
        v->special[i] = (uint32_t)i;
    return v;
}

void tok_vocab_free(struct tok_vocab *v)
{
    if (!v)
        return;
    free(v->text);
    free(v->tok_off);
    free(v->tok_len);
    free(v->slots);
    free(v->value_ids);
    free(v->value_n);
    free(v);
}

uint32_t tok_vocab_size(const struct tok_vocab *v) { return v->size; }
bool tok_vocab_is_builtin(const struct tok_vocab *v) { return v->builtin; }

const char *tok_vocab_token(const struct tok_vocab *v, uint32_t id)
{
    if (id >= v->size)
        return NULL;
    if (v->builtin)
        return id < TOK_N_SPECIALS ? tok_special_names[id] : v->text + 5 * (id - TOK_N_SPECIALS);
    return v->text + v->tok_off[id];
}

uint64_t tok_vocab_digest(const struct tok_vocab *v)
{
    uint64_t h = 14695981039346656037ull;
    for (uint32_t id = 0; id < v->size; id++) {
        for (const char *p = tok_vocab_token(v, id); *p; p++)
            h = (h ^ (uint8_t)*p) * 1099511628211ull;
        h = (h ^ '\n') * 1099511628211ull; /* "ab" "c" differs from "a" "bc" */
    }
    return h ? h : 1;
}

size_t tok_ids_text(const struct tok_vocab *v, const uint32_t *ids, uint32_t n, char *out, size_t cap)
{
    size_t len = 0;
    if (cap)
        out[0] = '\0';
    for (uint32_t i = 0; i < n && ids[i] != TOK_SEP; i++) {
        const char *tok = tok_vocab_token(v, ids[i]);
        if (!tok)
            tok = "[UNK]";
        if (len + strlen(tok) + 2 >= cap)
            break;
        len += (size_t)snprintf(out + len, cap - len, "%s%s", len ? " " : "", tok);
    }
    return len;
}

/* Python's str.isspace(), which is what str.split() splits on. */
static bool tok_py_space(uint32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

__attribute__((format(printf, 4, 5))) static struct tok_vocab *
tok_vocab_fail(struct tok_vocab *v, char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    tok_vocab_free(v);
    return NULL;
}

struct tok_vocab *tok_vocab_load_buffer(const char *name, const void *data, size_t size, char *err,
                                        size_t errlen)
{
    const uint8_t *buf = data;
    if (size == 0)
        return tok_vocab_fail(NULL, err, errlen, "%s: empty vocabulary file", name);
    if (size >= TOK_VOCAB_MAX_FILE)
        return tok_vocab_fail(NULL, err, errlen, "%s: %zu bytes is too large for a vocabulary file",
                              name, size);

    /* Python reads the file as UTF-8 text with universal newlines: \n, \r\n and a lone \r
     * each end a line, and a last line without one still counts. Validate first, so that the
     * tables below can be sized by the line count. */
    uint32_t lines = 0;
    for (size_t i = 0; i < size;) {
        uint8_t c = buf[i];
        if (c == 0)
            return tok_vocab_fail(NULL, err, errlen,
                                  "%s: line %u: NUL byte; a vocabulary is a UTF-8 text file", name,
                                  lines + 1);
        uint32_t cp;
        size_t n = tok_utf8_len(buf + i, size - i, &cp);
        if (cp == UINT32_MAX)
            return tok_vocab_fail(NULL, err, errlen,
                                  "%s: line %u: byte 0x%02x is not valid UTF-8; a vocabulary is a "
                                  "UTF-8 text file",
                                  name, lines + 1, c);
        i += n;
        if (c == '\n' || (c == '\r' && !(i < size && buf[i] == '\n'))) {
            lines++;
        } else if (c == '\r') {
            /* \r\n: the \n ends the line */
        } else if (i == size) {
            lines++;
        }
    }

    struct tok_vocab *v = calloc(1, sizeof(*v));
    if (!v)
        return tok_vocab_fail(NULL, err, errlen, "%s: out of memory", name);
    v->size = lines;
    v->text = malloc(size + lines);
    v->tok_off = malloc(sizeof(uint32_t) * lines);
    v->tok_len = malloc(sizeof(uint32_t) * lines);
    uint32_t slots = 1024;
    while (slots < 2u * lines)
        slots *= 2;
    v->slots = calloc(slots, sizeof(*v->slots));
    v->slot_mask = slots - 1;
    v->value_ids = malloc(sizeof(*v->value_ids) * 65536u);
    v->value_n = malloc(65536u);
    if (!v->text || !v->tok_off || !v->tok_len || !v->slots || !v->value_ids || !v->value_n)
        return tok_vocab_fail(v, err, errlen, "%s: out of memory", name);

    size_t at = 0;
    uint32_t id = 0;
    for (size_t i = 0; i < size; id++) {
        size_t start = i, end = i;
        while (end < size && buf[end] != '\n' && buf[end] != '\r')
            end++;
        i = end;
        if (i < size && buf[i] == '\r')
            i++;
        if (i < size && buf[i] == '\n' && (i == end || buf[i - 1] == '\r'))
            i++;
        /* UER: a line of only whitespace is its own (unmatchable) token; otherwise the first
         * whitespace-separated field. */
        size_t ws = start, we;
        uint32_t cp;
        while (ws < end) {
            size_t n = tok_utf8_len(buf + ws, end - ws, &cp);
            if (!tok_py_space(cp))
                break;
            ws += n;
        }
        if (ws == end) {
            we = end;
            ws = start;
        } else {
            we = ws;
            while (we < end) {
                size_t n = tok_utf8_len(buf + we, end - we, &cp);
                if (tok_py_space(cp))
                    break;
                we += n;
            }
        }
        v->tok_off[id] = (uint32_t)at;
        v->tok_len[id] = (uint32_t)(we - ws);
        memcpy(v->text + at, buf + ws, we - ws);
        at += we - ws;
        v->text[at++] = '\0';
        tok_vocab_insert(v, id);
    }

    for (int s = 0; s < TOK_N_SPECIALS; s++) {
        int64_t sid =
            tok_vocab_lookup(v, "", 0, tok_special_names[s], strlen(tok_special_names[s]));
        if (sid < 0) {
            bool bom = size >= 3 && buf[0] == 0xef && buf[1] == 0xbb && buf[2] == 0xbf;
            return tok_vocab_fail(v, err, errlen,
                                  "%s: no %s line; a UER vocabulary needs [PAD] [SEP] [CLS] [UNK] "
                                  "[MASK]%s",
                                  name, tok_special_names[s],
                                  bom ? " (the file starts with a UTF-8 byte-order mark)" : "");
        }
        v->special[s] = (uint32_t)sid;
    }

    for (uint32_t value = 0; value < 65536; value++) {
        char hex[5];
        tok_format_value((uint16_t)value, hex);
        struct tok_id_sink k = {v->value_ids[value], TOK_MAX_PIECES, 0};
        tok_wordpiece(v, hex, 4, &k); /* four characters: at most four pieces */
        v->value_n[value] = (uint8_t)k.n;
    }
    return v;
}

struct tok_vocab *tok_vocab_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return tok_vocab_fail(NULL, err, errlen, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 20, size = 0;
    uint8_t *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            fclose(f);
            return tok_vocab_fail(NULL, err, errlen, "%s: out of memory", path);
        }
        size += fread(buf + size, 1, cap - size, f);
        if (size < cap || size >= TOK_VOCAB_MAX_FILE)
            break;
        cap *= 2;
        uint8_t *grown = realloc(buf, cap);
        if (!grown)
            free(buf);
        buf = grown;
    }
    if (ferror(f)) {
        int e = errno;
        fclose(f);
        free(buf);
        return tok_vocab_fail(NULL, err, errlen, "%s: cannot read: %s", path, strerror(e));
    }
    fclose(f);
    struct tok_vocab *v = tok_vocab_load_buffer(path, buf, size, err, errlen);
    free(buf);
    return v;
}
