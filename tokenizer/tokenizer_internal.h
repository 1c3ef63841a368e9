/* tokenizer_internal.h — helpers shared by the tokenizer's own files; not part of its interface.
 *
 * A header mode is represented as a "masked frame": the frame's bytes, the window the mode keeps
 * (the whole frame, or the L4 payload for strip) and a short list of byte ranges to zero. Every
 * consumer (copying a packet out, streaming its token values, the corpus halves) reads through
 * it, so the masking rules live in one place and no caller needs a frame-sized buffer. */
#ifndef NETLM_TOKENIZER_INTERNAL_H
#define NETLM_TOKENIZER_INTERNAL_H

#include "tokenizer/tokenizer.h"

/* Bytes [off, off + len) of the frame are ANDed with keep (0 = zeroed; the IPv6 flow label needs
 * half a byte kept). */
struct tok_zero_range {
    uint32_t off;
    uint32_t len;
    uint8_t keep;
};

/* Enough for every field of strict mode plus four TCP timestamp options (40 option bytes) and
 * an ICMP error's quoted header. */
#define TOK_MAX_ZERO_RANGES 32

struct tok_masked_frame {
    const uint8_t *frame;
    size_t len;        /* readable bytes of frame */
    size_t from, to;   /* the window the mode keeps, from ≤ to ≤ len */
    unsigned n_ranges; /* ranges are clipped to len, not to the window */
    struct tok_zero_range ranges[TOK_MAX_ZERO_RANGES];
};

void tok_masked_frame_init(struct tok_masked_frame *m, enum tok_header_mode mode,
                           const uint8_t *frame, size_t len, const struct cap_layers *layers);
/* Copies frame bytes [pos, pos + count) with the ranges applied; the caller keeps them in len. */
void tok_masked_copy(const struct tok_masked_frame *m, size_t pos, size_t count, uint8_t *out);
/* Protocols whose first four header bytes are source and destination port. */
bool tok_l4_has_ports(uint8_t proto);

/* Token values of a window of a masked frame, produced in bounded chunks so that any
 * tokens_per_packet works without a per-packet buffer. */
struct tok_value_stream {
    const struct tok_masked_frame *m;
    size_t pos, end; /* next byte, end of the bytes to tokenize */
    size_t left;     /* tokens still allowed */
    int stride;
};
#define TOK_STREAM_CHUNK 256
void tok_value_stream_init(struct tok_value_stream *st, const struct tok_masked_frame *m,
                           size_t from, size_t to, int stride, size_t max_tokens);
/* Up to max (≤ TOK_STREAM_CHUNK is most efficient) values; 0 at the end. */
size_t tok_value_stream_next(struct tok_value_stream *st, uint16_t *out, size_t max);

/* The ids of one of the five specials, resolved through the vocab (a file vocab has its own). */
uint32_t tok_vocab_special(const struct tok_vocab *v, int special);

static inline uint16_t tok_be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

#endif
