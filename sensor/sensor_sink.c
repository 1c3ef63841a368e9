/* sensor_sink.c — where events go: one writer thread that owns the output (file, stdout or a
 * unix stream socket) and writes whole lines in batches.
 *
 * Producers append complete lines to the active half of a double buffer under a mutex (a memcpy;
 * the only lock an event producer takes); the writer swaps the halves and writes the full one
 * with no lock held, at least every 100 ms (50 ms here) or as soon as 64 KiB are pending. A line
 * is either copied whole or not at all, and write() is retried until the whole batch is out; when
 * a write into a regular file fails part way (a full disk), the file is cut back to the last whole
 * line written, so a file output never holds a partial line and the lines after the failure
 * start on a line of their own. A full buffer makes the batcher wait and drops (and counts) flow
 * events, which come from the capture path and must never block it. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "model/model.h"
#include "sensor/sensor_internal.h"

enum { SINK_BUF = 1 << 20, SINK_WAKE = 64 << 10, SINK_FLUSH_MS = 50 };

struct sensor_sink {
    enum cfg_output_kind kind;
    char path[CFG_PATH_MAX]; /* as configured: messages, and the live file's reopen */
    char *target;            /* a replay's file: what the finished one is renamed over */
    char *tmp_path;          /* a replay's file is written here, then renamed; NULL otherwise */
    bool batch, created;
    bool regular; /* a regular file: a failed write can be cut back to whole lines */
    int fd;
    pthread_t thread;
    bool thread_started;

    pthread_mutex_t lock;
    pthread_cond_t wake, space;
    char *active, *spare;
    size_t active_len;
    uint64_t active_lines;
    bool stopping, reopen, write_failed;

    /* unix socket reconnection */
    int64_t next_connect_ns, backoff_ns;
    int connect_errno; /* the last failure logged: a new reason is logged again */

    uint64_t lost_since_failure; /* lines a failing file output could not take, until it recovers */

    _Atomic uint64_t written, dropped, depth;
};

static int open_file(const char *path, bool truncate)
{
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (truncate ? O_TRUNC : O_APPEND);
    return open(path, flags, 0640);
}

static int connect_socket(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    const size_t len = strlen(path);
    if (len >= sizeof a.sun_path) { /* a shortened path would name another socket */
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(a.sun_path, path, len + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Writes all of buf; false on an error, with *done the bytes that went out before it. */
static bool write_all(struct sensor_sink *s, const char *buf, size_t n, size_t *done)
{
    *done = 0;
    while (*done < n) {
        ssize_t w = s->kind == CFG_OUTPUT_UNIX_STREAM ? send(s->fd, buf + *done, n - *done, MSG_NOSIGNAL)
                                                      : write(s->fd, buf + *done, n - *done);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        *done += (size_t)w;
    }
    return true;
}

static uint64_t count_lines(const char *buf, size_t n)
{
    uint64_t lines = 0;
    for (const char *p = buf; (p = memchr(p, '\n', n - (size_t)(p - buf))) != NULL; p++)
        lines++;
    return lines;
}

static void socket_lost(struct sensor_sink *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    s->backoff_ns = s->backoff_ns ? s->backoff_ns * 2 : 100000000;
    if (s->backoff_ns > 5000000000LL)
        s->backoff_ns = 5000000000LL;
    s->next_connect_ns = sensor_mono_ns() + s->backoff_ns;
}

/* The socket's lines of one batch that could not be sent. A replay's output must hold every
 * event: the run fails (after one line); a live sensor counts them and goes on. */
static void socket_dropped(struct sensor_sink *s, uint64_t lines, const char *why)
{
    atomic_fetch_add(&s->dropped, lines);
    if (s->batch && !s->write_failed)
        sensor_log("output: %s: %s; events are being lost", s->path, why);
    if (s->batch)
        s->write_failed = true;
}

static void write_socket_batch(struct sensor_sink *s, const char *buf, size_t n, uint64_t lines)
{
    if (s->fd < 0 && sensor_mono_ns() >= s->next_connect_ns) {
        s->fd = connect_socket(s->path);
        if (s->fd >= 0) {
            s->backoff_ns = 0;
            s->connect_errno = 0;
            sensor_log("output: connected to %s", s->path);
        } else {
            if (errno != s->connect_errno) /* each new reason once (the collector's socket moved, lost its permissions) */
                sensor_log("output: %s: %s; will retry", s->path, strerror(errno));
            s->connect_errno = errno;
            socket_lost(s);
        }
    }
    if (s->fd < 0) {
        socket_dropped(s, lines, "not connected");
        return;
    }
    size_t done;
    if (!write_all(s, buf, n, &done)) {
        /* the stream may now hold part of a line; the reader sees the connection end there,
         * and the next connection starts on a line boundary */
        const int e = errno;
        const uint64_t sent = count_lines(buf, done);
        sensor_log("output: %s: %s; reconnecting", s->path, strerror(e));
        socket_dropped(s, lines - sent, strerror(e));
        atomic_fetch_add(&s->written, sent);
        socket_lost(s);
        return;
    }
    atomic_fetch_add(&s->written, lines);
}

/* The writer's half of the buffer: out it goes (or is counted as dropped). */
static void write_batch(struct sensor_sink *s, const char *buf, size_t n, uint64_t lines)
{
    if (s->kind == CFG_OUTPUT_UNIX_STREAM) {
        write_socket_batch(s, buf, n, lines);
        return;
    }
    const char *name = s->kind == CFG_OUTPUT_STDOUT ? "stdout" : s->path;
    size_t done = 0;
    if (s->fd >= 0 && write_all(s, buf, n, &done)) {
        atomic_fetch_add(&s->written, lines);
        if (s->lost_since_failure) {
            sensor_log("output: %s: writing again (%" PRIu64 " events lost meanwhile)", name, s->lost_since_failure);
            s->lost_since_failure = 0;
        }
        return;
    }
    const int e = s->fd < 0 ? EBADF : errno;
    size_t kept = done; /* whole lines only: the partial one is cut off again */
    while (kept > 0 && buf[kept - 1] != '\n')
        kept--;
    /* the batch began done bytes before where the writes left the offset (also under O_APPEND,
     * which moves it to the end each write): found only when a write failed, not for every batch */
    const off_t start = s->regular && kept < done ? lseek(s->fd, 0, SEEK_CUR) - (off_t)done : -1;
    if (kept < done && start >= 0) {
        if (ftruncate(s->fd, start + (off_t)kept) != 0 || lseek(s->fd, start + (off_t)kept, SEEK_SET) < 0)
            sensor_log("output: %s: cannot cut back a partial line: %s", name, strerror(errno));
    } else if (kept < done) {
        kept = done; /* a pipe or terminal took them: nothing to cut back */
    }
    const uint64_t whole = count_lines(buf, kept);
    atomic_fetch_add(&s->written, whole);
    atomic_fetch_add(&s->dropped, lines - whole);
    if (!s->lost_since_failure)
        sensor_log("output: %s: %s; events are lost until it can write again", name,
                   s->fd < 0 ? "not open" : strerror(e));
    s->lost_since_failure += lines - whole;
    s->write_failed = true;
}

static void *writer_main(void *arg)
{
    struct sensor_sink *s = arg;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        if (s->active_len < SINK_WAKE && !s->stopping && !s->reopen) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += SINK_FLUSH_MS * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&s->wake, &s->lock, &ts);
        }
        bool reopen = s->reopen, stopping = s->stopping;
        s->reopen = false;
        char *buf = s->active;
        size_t n = s->active_len;
        uint64_t lines = s->active_lines;
        s->active = s->spare;
        s->spare = buf;
        s->active_len = 0;
        s->active_lines = 0;
        atomic_store(&s->depth, 0);
        pthread_cond_broadcast(&s->space);
        pthread_mutex_unlock(&s->lock);

        if (reopen && s->kind == CFG_OUTPUT_FILE && !s->batch) {
            /* logrotate renamed the file: continue in a new one under the configured name */
            int fd = open_file(s->path, false);
            if (fd >= 0) {
                close(s->fd);
                s->fd = fd;
                s->write_failed = false;
            } else {
                sensor_log("output: cannot reopen %s: %s (still writing the old file)", s->path,
                           strerror(errno));
            }
        }
        if (n > 0)
            write_batch(s, buf, n, lines);

        pthread_mutex_lock(&s->lock);
        if (stopping && s->active_len == 0)
            break;
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

struct sensor_sink *sensor_sink_open(enum cfg_output_kind kind, const char *path, bool batch,
                                     char *err, size_t errlen)
{
    struct sensor_sink *s = calloc(1, sizeof *s);
    if (!s || !(s->active = malloc(SINK_BUF)) || !(s->spare = malloc(SINK_BUF))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    s->kind = kind;
    s->batch = batch;
    s->fd = -1;
    snprintf(s->path, sizeof s->path, "%s", path ? path : "");
    if (kind == CFG_OUTPUT_FILE) {
        bool in_place = false;
        if (batch && !model_output_target(s->path, &s->target, &in_place, err, errlen))
            goto fail;
        if (batch && !in_place) {
            const size_t len = strlen(s->target) + 32;
            if (!(s->tmp_path = malloc(len))) {
                snprintf(err, errlen, "out of memory");
                goto fail;
            }
            snprintf(s->tmp_path, len, "%s.tmp.%ld", s->target, (long)getpid());
            s->fd = open_file(s->tmp_path, true);
        } else {
            s->created = access(s->path, F_OK) != 0;
            s->fd = open_file(s->path, false); /* a device or pipe too: written in place */
        }
        if (s->fd < 0) {
            snprintf(err, errlen, "%s: cannot open for writing: %s", s->path, strerror(errno));
            goto fail;
        }
    } else if (kind == CFG_OUTPUT_STDOUT) {
        s->fd = STDOUT_FILENO;
    } else {
        struct sockaddr_un a;
        if (strlen(s->path) >= sizeof a.sun_path || !s->path[0]) {
            snprintf(err, errlen, "output socket '%s': path empty or longer than %zu bytes", s->path,
                     sizeof a.sun_path - 1);
            goto fail;
        }
        s->fd = connect_socket(s->path);
        if (s->fd < 0 && batch) { /* a replay's events would all be lost */
            snprintf(err, errlen, "output socket %s: cannot connect: %s", s->path, strerror(errno));
            goto fail;
        }
        if (s->fd < 0) { /* a live sensor's collector may start later */
            s->connect_errno = errno;
            sensor_log("output: %s: %s; will retry", s->path, strerror(errno));
            socket_lost(s);
        }
    }
    struct stat st;
    s->regular = kind != CFG_OUTPUT_UNIX_STREAM && fstat(s->fd, &st) == 0 && S_ISREG(st.st_mode);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->wake, NULL);
    pthread_cond_init(&s->space, NULL);
    if (pthread_create(&s->thread, NULL, writer_main, s) != 0) {
        snprintf(err, errlen, "cannot start the output thread");
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->wake);
        pthread_cond_destroy(&s->space);
        goto fail;
    }
    s->thread_started = true;
    return s;
fail:
    if (s) {
        if (s->fd >= 0 && s->kind != CFG_OUTPUT_STDOUT) {
            close(s->fd);
            if (s->tmp_path)
                unlink(s->tmp_path);
        }
        free(s->target);
        free(s->tmp_path);
        free(s->active);
        free(s->spare);
        free(s);
    }
    return NULL;
}

bool sensor_sink_put(struct sensor_sink *s, const char *line, size_t len, bool wait)
{
    if (len > SINK_BUF) {
        atomic_fetch_add(&s->dropped, 1);
        return false;
    }
    pthread_mutex_lock(&s->lock);
    while (s->active_len + len > SINK_BUF) {
        if (!wait || s->stopping) {
            pthread_mutex_unlock(&s->lock);
            atomic_fetch_add(&s->dropped, 1);
            return false;
        }
        pthread_cond_signal(&s->wake);
        pthread_cond_wait(&s->space, &s->lock);
    }
    memcpy(s->active + s->active_len, line, len);
    s->active_len += len;
    s->active_lines++;
    atomic_store_explicit(&s->depth, s->active_lines, memory_order_relaxed);
    if (s->active_len >= SINK_WAKE && s->active_len - len < SINK_WAKE)
        pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
    return true;
}

void sensor_sink_count_dropped(struct sensor_sink *s, uint64_t n)
{
    atomic_fetch_add(&s->dropped, n);
}

void sensor_sink_reopen(struct sensor_sink *s)
{
    pthread_mutex_lock(&s->lock);
    s->reopen = true;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
}

bool sensor_sink_close(struct sensor_sink *s, bool commit)
{
    if (!s)
        return true;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
    if (s->thread_started)
        pthread_join(s->thread, NULL);
    bool ok = !s->write_failed;
    if (s->kind == CFG_OUTPUT_FILE) {
        if (s->tmp_path)
            (void)fsync(s->fd); /* the rename must not publish a file whose data is not there */
        if (close(s->fd) != 0)
            ok = false;
        if (s->tmp_path) {
            if (commit && ok) {
                if (rename(s->tmp_path, s->target) != 0) {
                    sensor_log("output: cannot rename %s to %s: %s", s->tmp_path, s->target, strerror(errno));
                    unlink(s->tmp_path);
                    ok = false;
                }
            } else {
                unlink(s->tmp_path);
            }
        } else if (!commit && s->created && atomic_load(&s->written) == 0) {
            unlink(s->path); /* created by a run that failed before writing anything */
        }
    } else if (s->kind == CFG_OUTPUT_UNIX_STREAM) {
        if (s->fd >= 0)
            close(s->fd);
    }
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->wake);
    pthread_cond_destroy(&s->space);
    free(s->target);
    free(s->tmp_path);
    free(s->active);
    free(s->spare);
    free(s);
    return ok;
}

void sensor_sink_stats(struct sensor_sink *s, struct sensor_sink_stats *out)
{
    out->written = atomic_load_explicit(&s->written, memory_order_relaxed);
    out->dropped = atomic_load_explicit(&s->dropped, memory_order_relaxed);
    out->depth = atomic_load_explicit(&s->depth, memory_order_relaxed);
}
