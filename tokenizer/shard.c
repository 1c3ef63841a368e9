/* shard.c — token shards: a 64-byte little-endian header, then uint32 ids, memory-mapped by the
 * training loader.
 *
 * A shard is either complete or absent: the writer fills "<path>.tmp.<pid>" and only a commit
 * that has written the final counts and fsync'ed the data renames it into place, so a crash or
 * a full disk never leaves a half shard under the real name. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tokenizer/tokenizer_internal.h"

#define TOK_SHARD_HEADER_SIZE 64u
#define TOK_SHARD_BUFFER_IDS (64u * 1024u)

_Static_assert(sizeof(struct tok_shard_header) == TOK_SHARD_HEADER_SIZE, "shard header layout");

__attribute__((format(printf, 3, 4))) static void tok_set_err(char *err, size_t errlen,
                                                              const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void tok_put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void tok_put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t tok_get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t tok_get_le64(const uint8_t *p)
{
    return (uint64_t)tok_get_le32(p) | (uint64_t)tok_get_le32(p + 4) << 32;
}

static void tok_header_encode(const struct tok_shard_header *h, uint8_t out[64])
{
    memset(out, 0, 64);
    memcpy(out, h->magic, 8);
    tok_put_le32(out + 8, h->version);
    tok_put_le32(out + 12, h->header_size);
    tok_put_le64(out + 16, h->n_tokens);
    tok_put_le64(out + 24, h->n_documents);
    tok_put_le32(out + 32, h->vocab_size);
    tok_put_le32(out + 36, h->seq_length);
    tok_put_le64(out + 40, h->vocab_digest);
    memcpy(out + 48, h->reserved, sizeof(h->reserved));
}

static void tok_header_decode(const uint8_t in[64], struct tok_shard_header *h)
{
    memcpy(h->magic, in, 8);
    h->version = tok_get_le32(in + 8);
    h->header_size = tok_get_le32(in + 12);
    h->n_tokens = tok_get_le64(in + 16);
    h->n_documents = tok_get_le64(in + 24);
    h->vocab_size = tok_get_le32(in + 32);
    h->seq_length = tok_get_le32(in + 36);
    h->vocab_digest = tok_get_le64(in + 40);
    memcpy(h->reserved, in + 48, sizeof(h->reserved));
}

static int tok_write_all(int fd, const void *data, size_t n, off_t at)
{
    const uint8_t *p = data;
    while (n > 0) {
        ssize_t w = at >= 0 ? pwrite(fd, p, n, at) : write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? errno : EIO;
        p += w;
        n -= (size_t)w;
        if (at >= 0)
            at += w;
    }
    return 0;
}

/* ---- writer ---- */

struct tok_shard_writer {
    int fd;
    char *path, *tmp;
    uint32_t vocab_size, seq_length;
    uint64_t vocab_digest;
    uint64_t n_tokens, n_documents;
    uint8_t *buf;
    size_t buf_ids;
    char error[256]; /* the first failure of an append, reported by commit */
};

static void tok_writer_free(struct tok_shard_writer *w)
{
    if (w->fd >= 0)
        close(w->fd);
    free(w->buf);
    free(w->path);
    free(w->tmp);
    free(w);
}

struct tok_shard_writer *tok_shard_create(const char *path, uint32_t vocab_size,
                                          uint32_t seq_length, char *err, size_t errlen)
{
    struct tok_shard_writer *w = calloc(1, sizeof(*w));
    if (!w) {
        tok_set_err(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    w->fd = -1;
    w->vocab_size = vocab_size;
    w->seq_length = seq_length;
    size_t tmp_len = strlen(path) + 32;
    w->path = strdup(path);
    w->tmp = malloc(tmp_len);
    w->buf = malloc(TOK_SHARD_BUFFER_IDS * 4u);
    if (!w->path || !w->tmp || !w->buf) {
        tok_set_err(err, errlen, "%s: out of memory", path);
        tok_writer_free(w);
        return NULL;
    }
    snprintf(w->tmp, tmp_len, "%s.tmp.%ld", path, (long)getpid());
    w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        tok_set_err(err, errlen, "%s: cannot create %s: %s", path, w->tmp, strerror(errno));
        tok_writer_free(w);
        return NULL;
    }
    /* The real header goes in at commit, when the counts are known. */
    uint8_t zero[TOK_SHARD_HEADER_SIZE] = {0};
    int e = tok_write_all(w->fd, zero, sizeof(zero), -1);
    if (e) {
        tok_set_err(err, errlen, "%s: write failed: %s", w->tmp, strerror(e));
        unlink(w->tmp);
        tok_writer_free(w);
        return NULL;
    }
    return w;
}

const char *tok_shard_temp_path(const struct tok_shard_writer *w) { return w->tmp; }

void tok_shard_set_vocab_digest(struct tok_shard_writer *w, uint64_t digest) { w->vocab_digest = digest; }

static int tok_writer_flush(struct tok_shard_writer *w)
{
    if (w->buf_ids == 0)
        return 0;
    int e = tok_write_all(w->fd, w->buf, w->buf_ids * 4u, -1);
    w->buf_ids = 0;
    if (e) {
        snprintf(w->error, sizeof(w->error), "%s: write failed: %s", w->tmp, strerror(e));
        return -1;
    }
    return 0;
}

int tok_shard_append(struct tok_shard_writer *w, const uint32_t *ids, size_t n)
{
    if (w->error[0])
        return -1;
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= w->vocab_size) {
            snprintf(w->error, sizeof(w->error),
                     "%s: document %llu has id %u, outside the vocabulary of %u", w->path,
                     (unsigned long long)w->n_documents + 1, ids[i], w->vocab_size);
            return -1;
        }
    for (size_t i = 0; i < n; i++) {
        if (w->buf_ids == TOK_SHARD_BUFFER_IDS && tok_writer_flush(w) != 0)
            return -1;
        tok_put_le32(w->buf + 4 * w->buf_ids++, ids[i]);
    }
    w->n_tokens += n;
    w->n_documents++;
    return 0;
}

/* The rename is only durable once the directory entry is on disk too. */
static void tok_sync_dir(const char *path)
{
    char *dir = strdup(path);
    if (!dir)
        return;
    char *slash = strrchr(dir, '/');
    const char *name = dir;
    if (!slash)
        name = ".";
    else if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    int fd = open(name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

int tok_shard_commit(struct tok_shard_writer *w, char *err, size_t errlen)
{
    int e = 0;
    if (!w->error[0] && tok_writer_flush(w) == 0) {
        struct tok_shard_header h = {.version = TOK_SHARD_VERSION,
                                     .header_size = TOK_SHARD_HEADER_SIZE,
                                     .n_tokens = w->n_tokens,
                                     .n_documents = w->n_documents,
                                     .vocab_size = w->vocab_size,
                                     .seq_length = w->seq_length,
                                     .vocab_digest = w->vocab_digest};
        memcpy(h.magic, TOK_SHARD_MAGIC, 8);
        uint8_t raw[TOK_SHARD_HEADER_SIZE];
        tok_header_encode(&h, raw);
        if ((e = tok_write_all(w->fd, raw, sizeof(raw), 0)) != 0)
            snprintf(w->error, sizeof(w->error), "%s: write failed: %s", w->tmp, strerror(e));
        else if (fsync(w->fd) != 0)
            snprintf(w->error, sizeof(w->error), "%s: fsync failed: %s", w->tmp, strerror(errno));
        else if (close(w->fd) != 0)
            snprintf(w->error, sizeof(w->error), "%s: close failed: %s", w->tmp, strerror(errno));
        else if ((w->fd = -1, rename(w->tmp, w->path) != 0))
            snprintf(w->error, sizeof(w->error), "%s: cannot rename to %s: %s", w->tmp, w->path,
                     strerror(errno));
        w->fd = -1;
    }
    if (w->error[0]) {
        tok_set_err(err, errlen, "%s", w->error);
        unlink(w->tmp);
        tok_writer_free(w);
        return -1;
    }
    tok_sync_dir(w->path);
    tok_writer_free(w);
    return 0;
}

void tok_shard_abort(struct tok_shard_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    unlink(w->tmp);
    tok_writer_free(w);
}

/* ---- reader ---- */

int tok_shard_open(const char *path, struct tok_shard *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    /* The ids are handed out as mapped uint32s, which are only the file's values here. */
    tok_set_err(err, errlen, "%s: token shards can only be mapped on little-endian hosts", path);
    return -1;
#endif
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        tok_set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        tok_set_err(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    uint8_t raw[TOK_SHARD_HEADER_SIZE];
    ssize_t got = st.st_size >= (off_t)sizeof(raw) ? pread(fd, raw, sizeof(raw), 0) : 0;
    if (got != (ssize_t)sizeof(raw)) {
        if (got < 0)
            tok_set_err(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        else
            tok_set_err(err, errlen, "%s: %lld bytes, shorter than the %u-byte token shard header",
                        path, (long long)st.st_size, TOK_SHARD_HEADER_SIZE);
        close(fd);
        return -1;
    }
    struct tok_shard_header h;
    tok_header_decode(raw, &h);
    const char *problem = NULL;
    char detail[160];
    if (memcmp(h.magic, TOK_SHARD_MAGIC, 8) != 0)
        problem = "not a netlm token shard (bad magic)";
    else if (h.version != TOK_SHARD_VERSION) {
        snprintf(detail, sizeof(detail), "token shard version %u, this netlm reads version %u",
                 h.version, TOK_SHARD_VERSION);
        problem = detail;
    } else if (h.header_size != TOK_SHARD_HEADER_SIZE) {
        snprintf(detail, sizeof(detail), "header size %u, expected %u", h.header_size,
                 TOK_SHARD_HEADER_SIZE);
        problem = detail;
    } else if (h.vocab_size == 0)
        problem = "vocabulary size 0";
    else if (h.n_tokens > ((uint64_t)INT64_MAX - TOK_SHARD_HEADER_SIZE) / 4 ||
             (uint64_t)st.st_size != TOK_SHARD_HEADER_SIZE + 4 * h.n_tokens) {
        snprintf(detail, sizeof(detail),
                 "%lld bytes but the header says %llu tokens (%llu bytes): truncated or damaged",
                 (long long)st.st_size, (unsigned long long)h.n_tokens,
                 (unsigned long long)(TOK_SHARD_HEADER_SIZE + 4 * h.n_tokens));
        problem = detail;
    }
    if (problem) {
        tok_set_err(err, errlen, "%s: %s", path, problem);
        close(fd);
        return -1;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED) {
        tok_set_err(err, errlen, "%s: cannot map: %s", path, strerror(map_errno));
        return -1;
    }
    out->header = h;
    out->map = map;
    out->map_len = (size_t)st.st_size;
    out->ids = (const uint32_t *)((const uint8_t *)map + TOK_SHARD_HEADER_SIZE);
    return 0;
}

int tok_shard_check_ids(const struct tok_shard *s, char *err, size_t errlen)
{
    for (uint64_t i = 0; i < s->header.n_tokens; i++)
        if (s->ids[i] >= s->header.vocab_size) {
            tok_set_err(err, errlen, "token %llu has id %u, outside the vocabulary of %u",
                        (unsigned long long)i, s->ids[i], s->header.vocab_size);
            return -1;
        }
    return 0;
}

void tok_shard_close(struct tok_shard *s)
{
    if (s->map)
        munmap(s->map, s->map_len);
    memset(s, 0, sizeof(*s));
}
