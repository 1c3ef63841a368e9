/* fuzz_safetensors.c — libFuzzer target for the safetensors reader, the model's parser of
 * untrusted checkpoint bytes.
 *
 * The input is opened as a whole safetensors file; when it opens, every tensor is looked up by
 * name, its span checked against the buffer, and small ones read through st_read_f32/st_read_i64
 * (ASan catches a read outside the input). Needs only the reader and json-c, e.g.
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I. \
 *     tests/fuzz/fuzz_safetensors.c model/safetensors.c -ljson-c */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/safetensors.h"

#define FUZZ_MAX_NUMEL 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    memset(err, 'x', sizeof(err));
    struct st_file *f = st_open_buffer("fuzz", data, size, err, sizeof(err));
    if (!f) {
        if (!memchr(err, '\0', sizeof(err)) || strchr(err, '\n'))
            abort(); /* the message must be one terminated line */
        return 0;
    }
    static float fout[FUZZ_MAX_NUMEL];
    static int64_t iout[FUZZ_MAX_NUMEL];
    const uint8_t *end = data + size, *prev_end = NULL;
    for (size_t i = 0; i < st_count(f); i++) {
        const struct st_tensor *t = st_at(f, i);
        if (!t || st_find(f, t->name) != t)
            abort();
        const uint8_t *p = t->data;
        if (p < data || t->nbytes > (uint64_t)(end - p))
            abort();
        if (prev_end && p < prev_end)
            abort(); /* offset order, no overlap */
        prev_end = p + t->nbytes;
        if (t->nbytes != t->numel * st_dtype_size(t->dtype) || t->ndim > ST_MAX_DIMS)
            abort();
        if (t->numel <= FUZZ_MAX_NUMEL) {
            bool is_float = t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16;
            if (st_read_f32(t, fout) != is_float || st_read_i64(t, iout) == is_float)
                abort();
        }
        st_drop_pages(f, t);
    }
    if (st_at(f, st_count(f)) != NULL)
        abort();
    st_metadata(f, "format");
    st_metadata(f, "");
    st_find(f, "");
    st_close(f);
    return 0;
}
