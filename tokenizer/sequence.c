/* sequence.c — sessions to the seed's token text and to model input ids.
 *
 * Two paths produce a sequence: text (what the dataset builders write into TSVs, read back by
 * tok_text_ids as UER reads it) and ids straight from the session (what the sensor feeds the
 * model). They share the packet walk below, and tok_session_ids resolves every token, [SEP]
 * included, through the vocab exactly as the text path does, so they agree id for id. */
#include <string.h>

#include "tokenizer/tokenizer_internal.h"

void tok_settings_defaults(struct tok_settings *s)
{
    s->header_mode = TOK_HDR_FULL;
    s->stride = 2;
    s->tokens_per_packet = 64;
    s->packets = 32;
    s->seq_length = 128;
    s->sep_between_packets = false;
}

static void tok_packet_stream(const struct tok_settings *s, const struct ft_stored_packet *pkt,
                              struct tok_masked_frame *m, struct tok_value_stream *st)
{
    tok_masked_frame_init(m, s->header_mode, pkt->bytes, pkt->stored_len, &pkt->layers);
    tok_value_stream_init(st, m, m->from, m->to, s->stride, s->tokens_per_packet);
}

static uint32_t tok_session_packets(const struct tok_settings *s, const struct ft_session *session)
{
    return session->n_stored < s->packets ? session->n_stored : s->packets;
}

/* ---- text ---- */

struct tok_text_out {
    char *out;
    size_t cap, len; /* len counts everything, written or not */
};

static void tok_text_put(struct tok_text_out *t, const char *s, size_t n)
{
    if (t->cap > 0 && t->len < t->cap - 1) {
        size_t room = t->cap - 1 - t->len;
        memcpy(t->out + t->len, s, n < room ? n : room);
    }
    t->len += n;
}

static size_t tok_text_finish(struct tok_text_out *t, size_t *needed)
{
    size_t written = 0;
    if (t->cap > 0) {
        written = t->len < t->cap - 1 ? t->len : t->cap - 1;
        t->out[written] = '\0';
    }
    if (needed)
        *needed = t->len;
    return written;
}

/* Appends one packet's tokens; returns whether it had any. */
static bool tok_text_packet(const struct tok_settings *s, const struct ft_stored_packet *pkt,
                            bool first, struct tok_text_out *t)
{
    struct tok_masked_frame m;
    struct tok_value_stream st;
    uint16_t values[TOK_STREAM_CHUNK];
    size_t n;
    bool any = false;
    static const char hexdigits[] = "0123456789abcdef";
    tok_packet_stream(s, pkt, &m, &st);
    while ((n = tok_value_stream_next(&st, values, TOK_STREAM_CHUNK)) > 0) {
        size_t i = 0;
        if (!any) {
            if (!first)
                tok_text_put(t, s->sep_between_packets ? " [SEP] " : " ", s->sep_between_packets ? 7 : 1);
            char hex[5];
            tok_format_value(values[0], hex);
            tok_text_put(t, hex, 4);
            any = true;
            i = 1;
        }
        /* The common case, a chunk that fits: " xxxx" written straight into the output, which
         * is most of a dataset build's time otherwise spent in bounds checks. */
        if (t->cap > 0 && t->len + (n - i) * 5 < t->cap) {
            char *o = t->out + t->len;
            for (; i < n; i++, o += 5) {
                uint16_t v = values[i];
                o[0] = ' ';
                o[1] = hexdigits[v >> 12];
                o[2] = hexdigits[(v >> 8) & 15];
                o[3] = hexdigits[(v >> 4) & 15];
                o[4] = hexdigits[v & 15];
            }
            t->len = (size_t)(o - t->out);
            continue;
        }
        for (; i < n; i++) {
            char hex[5];
            tok_format_value(values[i], hex);
            tok_text_put(t, " ", 1);
            tok_text_put(t, hex, 4);
        }
    }
    return any;
}

size_t tok_session_text(const struct tok_settings *s, const struct ft_session *session, char *out,
                        size_t cap, size_t *needed)
{
    struct tok_text_out t = {out, cap, 0};
    bool first = true;
    uint32_t packets = tok_session_packets(s, session);
    for (uint32_t i = 0; i < packets; i++)
        if (tok_text_packet(s, &session->stored[i], first, &t))
            first = false;
    return tok_text_finish(&t, needed);
}

size_t tok_packet_text(const struct tok_settings *s, const struct ft_stored_packet *pkt, char *out,
                       size_t cap, size_t *needed)
{
    struct tok_text_out t = {out, cap, 0};
    tok_text_packet(s, pkt, true, &t);
    return tok_text_finish(&t, needed);
}

/* ---- ids ---- */

struct tok_seq {
    uint32_t *ids;
    uint32_t n, max;
};

static bool tok_seq_full(const struct tok_seq *q) { return q->n >= q->max; }

static void tok_seq_push(struct tok_seq *q, const uint32_t *ids, size_t n)
{
    for (size_t i = 0; i < n && q->n < q->max; i++)
        q->ids[q->n++] = ids[i];
}

/* UER's classifier input: [CLS] + tokens + [SEP], cut to seq_length (losing the [SEP]), then
 * [PAD] to seq_length. */
static uint32_t tok_seq_finish(const struct tok_vocab *v, struct tok_seq *q)
{
    uint32_t sep = tok_vocab_special(v, TOK_SEP), pad = tok_vocab_special(v, TOK_PAD);
    tok_seq_push(q, &sep, 1);
    uint32_t real = q->n;
    while (q->n < q->max)
        q->ids[q->n++] = pad;
    return real;
}

static bool tok_is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

uint32_t tok_text_ids(const struct tok_vocab *v, const char *text, size_t len, uint32_t seq_length,
                      uint32_t *ids)
{
    struct tok_seq q = {ids, 0, seq_length};
    uint32_t cls = tok_vocab_special(v, TOK_CLS);
    tok_seq_push(&q, &cls, 1);
    /* UER splits on these four only: other control characters are removed inside words. */
    for (size_t i = 0; i < len && !tok_seq_full(&q);) {
        while (i < len && tok_is_space(text[i]))
            i++;
        size_t start = i;
        while (i < len && !tok_is_space(text[i]))
            i++;
        if (i > start)
            q.n += (uint32_t)tok_vocab_word_ids(v, text + start, i - start, q.ids + q.n,
                                                q.max - q.n, NULL);
    }
    return tok_seq_finish(v, &q);
}

uint32_t tok_session_ids(const struct tok_vocab *v, const struct tok_settings *s,
                         const struct ft_session *session, uint32_t *ids)
{
    struct tok_seq q = {ids, 0, s->seq_length};
    uint32_t cls = tok_vocab_special(v, TOK_CLS), sep = tok_vocab_special(v, TOK_SEP);
    tok_seq_push(&q, &cls, 1);
    bool first = true;
    uint32_t packets = tok_session_packets(s, session);
    for (uint32_t p = 0; p < packets && !tok_seq_full(&q); p++) {
        struct tok_masked_frame m;
        struct tok_value_stream st;
        uint16_t values[TOK_STREAM_CHUNK];
        size_t n;
        bool any = false;
        tok_packet_stream(s, &session->stored[p], &m, &st);
        while (!tok_seq_full(&q) &&
               (n = tok_value_stream_next(&st, values, TOK_STREAM_CHUNK)) > 0) {
            if (!any && !first && s->sep_between_packets)
                tok_seq_push(&q, &sep, 1);
            any = true;
            for (size_t i = 0; i < n && !tok_seq_full(&q); i++) {
                uint32_t pieces[TOK_MAX_PIECES];
                int k = tok_vocab_value_ids(v, values[i], pieces);
                tok_seq_push(&q, pieces, (size_t)k);
            }
        }
        if (any)
            first = false;
    }
    return tok_seq_finish(v, &q);
}
