/* hex.c — bytes to two-byte token values at stride 2 (the seed's datasets) or stride 1 (its
 * pretraining corpus), and the corpus's per-packet halves.
 *
 * Stride 2 pairs b0b1 b2b3 … and drops an odd last byte; stride 1 overlaps, b0b1 b1b2 …, so n
 * bytes give n - 1 tokens. The value stream reads a masked frame in chunks, which keeps the
 * sensor's path free of allocation and of frame-sized buffers for any per-packet cap. */
#include <string.h>

#include "tokenizer/tokenizer_internal.h"

size_t tok_hex_values(const uint8_t *bytes, size_t len, int stride, size_t max_tokens,
                      uint16_t *out)
{
    size_t n;
    if (stride == 2)
        n = len / 2;
    else if (stride == 1)
        n = len >= 2 ? len - 1 : 0;
    else
        return 0;
    if (n > max_tokens)
        n = max_tokens;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = bytes + i * (size_t)stride;
        out[i] = (uint16_t)(p[0] << 8 | p[1]);
    }
    return n;
}

void tok_format_value(uint16_t value, char out[5])
{
    static const char digits[] = "0123456789abcdef";
    out[0] = digits[value >> 12];
    out[1] = digits[(value >> 8) & 15];
    out[2] = digits[(value >> 4) & 15];
    out[3] = digits[value & 15];
    out[4] = '\0';
}

void tok_value_stream_init(struct tok_value_stream *st, const struct tok_masked_frame *m,
                           size_t from, size_t to, int stride, size_t max_tokens)
{
    st->m = m;
    st->pos = from;
    st->end = to;
    st->stride = stride;
    st->left = stride == 1 || stride == 2 ? max_tokens : 0;
}

size_t tok_value_stream_next(struct tok_value_stream *st, uint16_t *out, size_t max)
{
    uint8_t buf[2 * TOK_STREAM_CHUNK];
    size_t avail = st->end - st->pos;
    size_t n = st->stride == 2 ? avail / 2 : (avail >= 2 ? avail - 1 : 0);
    if (n > st->left)
        n = st->left;
    if (n > max)
        n = max;
    if (n > TOK_STREAM_CHUNK)
        n = TOK_STREAM_CHUNK;
    if (n == 0)
        return 0;
    size_t bytes = st->stride == 2 ? 2 * n : n + 1;
    tok_masked_copy(st->m, st->pos, bytes, buf);
    n = tok_hex_values(buf, bytes, st->stride, n, out);
    st->pos += st->stride == 2 ? bytes : n;
    st->left -= n;
    return n;
}

/* The seed's cut(): the first half has (n + n % 4) / 2 bytes (it splits the hex string at a
 * multiple of four characters), the second the rest. */
static void tok_half_tokens(const struct tok_masked_frame *m, size_t from, size_t to, uint16_t *out,
                            size_t *n)
{
    struct tok_value_stream st;
    tok_value_stream_init(&st, m, from, to, 1, TOK_CORPUS_MAX_HALF);
    size_t got, total = 0;
    while ((got = tok_value_stream_next(&st, out + total, TOK_CORPUS_MAX_HALF - total)) > 0)
        total += got;
    *n = total;
}

bool tok_corpus_halves(const uint8_t *frame, size_t len, const struct cap_layers *layers,
                       bool use_mode, enum tok_header_mode mode, uint16_t *half1, size_t *n1,
                       uint16_t *half2, size_t *n2)
{
    struct tok_masked_frame m;
    *n1 = *n2 = 0;
    if (use_mode) {
        tok_masked_frame_init(&m, mode, frame, len, layers);
    } else {
        /* The seed dropped a fixed 38 bytes (Ethernet + 20-byte IPv4 + the ports); the same
         * cut at the real offsets: everything after the port fields. */
        if (layers->l4_off == CAP_ABSENT || !tok_l4_has_ports(layers->l4_proto))
            return false;
        uint64_t start = (uint64_t)layers->l4_off + 4;
        tok_masked_frame_init(&m, TOK_HDR_NONE, frame, len, layers);
        m.from = start < len ? (size_t)start : len;
    }
    size_t n = m.to - m.from;
    if (n < 5)
        return false;
    size_t first = (n + n % 4) / 2;
    tok_half_tokens(&m, m.from, m.from + first, half1, n1);
    tok_half_tokens(&m, m.from + first, m.to, half2, n2);
    return true;
}
