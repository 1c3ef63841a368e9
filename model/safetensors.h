/* safetensors.h — reading and writing the safetensors format (model/ internal; tests use it).
 *
 * File: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
 * optional "__metadata__" (string → string), then the tensor bytes. The reader maps the file and
 * validates everything before handing out a tensor: header size, JSON types, dtypes, shape ×
 * dtype size = span (overflow-checked), spans inside the buffer, contiguous from 0 without gaps
 * or overlap and covering it exactly, names unique. A checkpoint may be sharded
 * (model.safetensors.index.json with a weight_map); st_set opens either form. */
#ifndef NETLM_MODEL_SAFETENSORS_H
#define NETLM_MODEL_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (100u * 1000u * 1000u)

enum st_dtype { ST_F32 = 0, ST_F16, ST_BF16, ST_I32, ST_I64 };
const char *st_dtype_name(enum st_dtype d); /* "F32", ... */
size_t st_dtype_size(enum st_dtype d);

struct st_tensor {
    const char *name;
    enum st_dtype dtype;
    uint32_t ndim;
    uint64_t shape[ST_MAX_DIMS];
    uint64_t numel;
    const void *data; /* inside the mapping; little-endian, row-major */
    uint64_t nbytes;
};

struct st_file;
/* Maps and validates path. NULL and one line "PATH: what is wrong" in err on failure. */
struct st_file *st_open(const char *path, char *err, size_t errlen);
/* The same over bytes the caller keeps alive (fuzzing, tests); name is used in messages. */
struct st_file *st_open_buffer(const char *name, const void *data, size_t size, char *err,
                               size_t errlen);
void st_close(struct st_file *f);
size_t st_count(const struct st_file *f);
const struct st_tensor *st_at(const struct st_file *f, size_t i); /* in file offset order */
const struct st_tensor *st_find(const struct st_file *f, const char *name);
const char *st_metadata(const struct st_file *f, const char *key); /* NULL when absent */
/* A float tensor (F32/F16/BF16) as fp32 into out (numel floats); false for integer dtypes. */
bool st_read_f32(const struct st_tensor *t, float *out);
/* Integer tensors (I32/I64) as int64; false for float dtypes. */
bool st_read_i64(const struct st_tensor *t, int64_t *out);
/* Tells the kernel the tensor's pages are no longer needed (keeps peak RSS at one copy while a
 * model is converted to fp32). */
void st_drop_pages(const struct st_file *f, const struct st_tensor *t);

/* A directory's weights: model.safetensors, or model.safetensors.index.json and its shards. */
struct st_set;
struct st_set *st_set_open(const char *dir, char *err, size_t errlen);
void st_set_close(struct st_set *s);
const struct st_tensor *st_set_find(const struct st_set *s, const char *name);
/* Every tensor of every file (for "unexpected tensor" checks); i < st_set_count. */
size_t st_set_count(const struct st_set *s);
const struct st_tensor *st_set_at(const struct st_set *s, size_t i);
void st_set_drop_pages(const struct st_set *s, const struct st_tensor *t);

/* ---- writer ---- */

struct st_write_tensor {
    const char *name;
    enum st_dtype dtype;
    uint32_t ndim;
    uint64_t shape[ST_MAX_DIMS];
    const void *data; /* numel × dtype size bytes, little-endian */
};
/* Writes the tensors in the given order (header padded with spaces to a multiple of 8, so data
 * starts 8-aligned), metadata as n_meta key/value pairs (meta[2i], meta[2i+1]); to a temporary
 * name, then renamed. Duplicate names are an error. */
bool st_write(const char *path, const struct st_write_tensor *tensors, size_t n,
              const char *const *meta, size_t n_meta, char *err, size_t errlen);

#endif
