/* fuzz_vocab.c — libFuzzer target for the vocab parser and word tokenization, the tokenizer's
 * readers of untrusted bytes (a vocab file, a TSV's text column).
 *
 * The input is read as a vocab file; when it loads, the same bytes are tokenized with it as
 * text, and always with the built-in vocab. Needs only the tokenizer's own sources, e.g.
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I. tests/fuzz/fuzz_vocab.c \
 *     tokenizer/vocab.c tokenizer/hex.c tokenizer/header_mode.c tokenizer/sequence.c */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer.h"

static void exercise(const struct tok_vocab *v, const uint8_t *data, size_t size)
{
    uint32_t ids[512];
    tok_text_ids(v, (const char *)data, size, 512, ids);
    for (uint32_t i = 0; i < 512; i++)
        if (ids[i] >= tok_vocab_size(v) || !tok_vocab_token(v, ids[i]))
            abort();
    size_t needed = 0;
    size_t n = tok_vocab_word_ids(v, (const char *)data, size, ids, 7, &needed);
    if (n > 7 || (needed < 7 && n != needed))
        abort();
    uint32_t pieces[TOK_MAX_PIECES];
    for (size_t i = 0; i + 1 < size && i < 64; i += 2) {
        int k = tok_vocab_value_ids(v, (uint16_t)(data[i] << 8 | data[i + 1]), pieces);
        if (k < 1 || k > TOK_MAX_PIECES)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct tok_vocab *builtin;
    if (!builtin)
        builtin = tok_vocab_builtin();
    char err[256];
    struct tok_vocab *v = tok_vocab_load_buffer("fuzz", data, size, err, sizeof(err));
    if (v) {
        exercise(v, data, size);
        tok_vocab_free(v);
    } else if (!memchr(err, '\0', sizeof(err)) || strchr(err, '\n')) {
        abort(); /* the message must be one terminated line */
    }
    exercise(builtin, data, size);
    return 0;
}
