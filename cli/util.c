/* util.c — what the commands share: atomic output files, the progress line, and turning the
 * files and folders given on the command line into a sorted list of captures. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/json_escape.h"
#include "model/model.h"

const char *cli_model_vocab(const struct model_config *mc, const char *given, const char *dir, char *buf,
                            size_t len)
{
    if (given || !dir || strcmp(mc->tokenizer.vocab, "builtin") == 0)
        return given;
    snprintf(buf, len, "%s/%s", dir, mc->tokenizer.vocab);
    return buf;
}

bool cli_vocab_fits_model(const char *cmd, const struct model_config *mc, const char *given, const char *dir)
{
    if (!given || !dir || !mc->tokenizer.vocab_recorded)
        return true;
    char own_buf[4400], err[1024];
    const char *own = cli_model_vocab(mc, NULL, dir, own_buf, sizeof own_buf);
    struct tok_vocab *trained = own ? tok_vocab_load(own, err, sizeof err) : tok_vocab_builtin();
    struct tok_vocab *asked = tok_vocab_load(given, err, sizeof err);
    const bool fits = !trained || !asked || tok_vocab_digest(trained) == tok_vocab_digest(asked);
    if (!fits)
        cli_error(cmd, "--vocab_path %s: not the vocabulary %s was trained with (%s: the same tokens under other "
                       "ids); leave --vocab_path out to use the model's", given, dir, own ? own : "the built-in one");
    tok_vocab_free(trained);
    tok_vocab_free(asked);
    return fits;
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The files cli_collect_files listed, by device and inode: no output may replace one of them. */
static struct input_identity {
    dev_t dev;
    ino_t ino;
} *inputs;
static size_t n_inputs, inputs_cap;

static void remember_input(const struct stat *st)
{
    if (n_inputs == inputs_cap) {
        size_t cap = inputs_cap ? inputs_cap * 2 : 64;
        struct input_identity *p = realloc(inputs, cap * sizeof *p);
        if (!p)
            return; /* the check is a safeguard: without memory for it the run goes on */
        inputs = p;
        inputs_cap = cap;
    }
    inputs[n_inputs++] = (struct input_identity){st->st_dev, st->st_ino};
}

static bool is_input(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return false;
    for (size_t i = 0; i < n_inputs; i++)
        if (inputs[i].dev == st.st_dev && inputs[i].ino == st.st_ino)
            return true;
    return false;
}

bool cli_make_folders(const char *command, const char *flag, const char *dir, bool parent_only)
{
    char path[PATH_MAX];
    if (!dir[0] || snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path) {
        cli_error(command, "%s '%.64s': %s", flag, dir, dir[0] ? "too long a path" : "empty");
        return false;
    }
    if (parent_only) {
        char *slash = strrchr(path, '/');
        if (!slash || slash == path)
            return true; /* in the current folder, or in / */
        *slash = '\0';
    }
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        const char was = *p;
        *p = '\0';
        struct stat st;
        const bool exists = stat(path, &st) == 0;
        if (exists && !S_ISDIR(st.st_mode)) {
            cli_error(command, "%s %s: %s exists and is not a folder", flag, dir, path);
            return false;
        }
        if (!exists && mkdir(path, 0755) != 0 && errno != EEXIST) {
            cli_error(command, "%s %s: cannot create the folder %s: %s", flag, dir, path, strerror(errno));
            return false;
        }
        *p = was;
        if (was == '\0')
            return true;
    }
}

/* The temporary files of outputs being written, removed when SIGINT, SIGTERM or SIGHUP ends the
 * run (^C, systemctl stop, a closed terminal), so that no PATH.tmp.PID is left behind. Fixed slots
 * rather than allocated strings: the handler may run on any thread, while a slot is released. */
#define TEMP_SLOTS 16
static char temp_paths[TEMP_SLOTS][PATH_MAX];
static _Atomic bool temp_used[TEMP_SLOTS];
static const int temp_signals[] = {SIGINT, SIGTERM, SIGHUP};

/* A directory being filled (a checkpoint staged as OUT/checkpoint.new): the handler empties and
 * removes it with raw system calls only (no opendir: it allocates), so the PATH.tmp.PID files that
 * model_save writes inside go with it. */
static char temp_dir[PATH_MAX];
static _Atomic bool temp_dir_used;

static void remove_temp_dir(void)
{
    static _Alignas(8) char entries[4096];
    const int fd = open(temp_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return;
    for (long n; (n = syscall(SYS_getdents64, fd, entries, sizeof entries)) > 0;)
        for (long at = 0; at < n;) {
            /* struct linux_dirent64: ino (8), off (8), reclen (2), type (1), name */
            unsigned short reclen;
            memcpy(&reclen, entries + at + 16, sizeof reclen);
            const char *name = entries + at + 19;
            if (!(name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2]))))
                unlinkat(fd, name, 0);
            at += reclen;
        }
    close(fd);
    rmdir(temp_dir);
}

static void remove_temps_and_die(int signo)
{
    for (int i = 0; i < TEMP_SLOTS; i++)
        if (atomic_load(&temp_used[i]))
            unlink(temp_paths[i]);
    if (atomic_load(&temp_dir_used))
        remove_temp_dir();
    signal(signo, SIG_DFL);
    raise(signo); /* the status a caller expects of a run ended by signo */
}

/* A training loop that stops at a step boundary (cli_stop_arm): while armed, the first signal
 * only asks for the stop; a second one, or any while disarmed, ends the run at once. */
static volatile sig_atomic_t stop_armed, stop_signal;

static void stop_or_die(int signo)
{
    if (stop_armed && !stop_signal) {
        stop_signal = signo;
        return;
    }
    remove_temps_and_die(signo);
}

void cli_stop_arm(bool armed)
{
    if (armed) {
        for (size_t i = 0; i < sizeof temp_signals / sizeof temp_signals[0]; i++) {
            struct sigaction sa = {.sa_handler = stop_or_die, .sa_flags = SA_RESTART}, old;
            sigemptyset(&sa.sa_mask);
            /* as for the temporaries' handler: an ignored signal (nohup) stays ignored */
            if (sigaction(temp_signals[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
                sigaction(temp_signals[i], &sa, NULL);
        }
    }
    stop_armed = armed;
}

int cli_stop_requested(void)
{
    return stop_signal;
}

static void install_temp_handlers(void);

void cli_temp_track_dir(const char *dir)
{
    install_temp_handlers();
    if (strlen(dir) >= PATH_MAX)
        return;
    atomic_store(&temp_dir_used, false);
    memcpy(temp_dir, dir, strlen(dir) + 1);
    atomic_store(&temp_dir_used, true);
}

void cli_temp_untrack_dir(void)
{
    atomic_store(&temp_dir_used, false);
}

void cli_temp_track(const char *path)
{
    install_temp_handlers();
    if (strlen(path) >= PATH_MAX)
        return;
    for (int i = 0; i < TEMP_SLOTS; i++)
        if (!atomic_load(&temp_used[i])) {
            memcpy(temp_paths[i], path, strlen(path) + 1);
            atomic_store(&temp_used[i], true);
            return;
        }
}

static void install_temp_handlers(void)
{
    static bool handlers_installed;
    if (!handlers_installed) {
        handlers_installed = true;
        for (size_t i = 0; i < sizeof temp_signals / sizeof temp_signals[0]; i++) {
            struct sigaction sa = {.sa_handler = remove_temps_and_die}, old;
            sigemptyset(&sa.sa_mask);
            /* a disposition someone else chose (ignored under nohup) stays theirs */
            if (sigaction(temp_signals[i], NULL, &old) == 0 && old.sa_handler == SIG_DFL)
                sigaction(temp_signals[i], &sa, NULL);
            /* stop_or_die, once installed, removes the temporaries itself when it ends the run */
        }
    }
}

void cli_temp_untrack(const char *path)
{
    for (int i = 0; i < TEMP_SLOTS; i++)
        if (atomic_load(&temp_used[i]) && strcmp(temp_paths[i], path) == 0) {
            atomic_store(&temp_used[i], false);
            return;
        }
}

bool cli_output_not_input(const char *command, const char *path)
{
    if (!is_input(path))
        return true;
    cli_error(command, "%s: is one of the input files; refusing to overwrite it", path);
    return false;
}

bool cli_output_open(const char *command, const char *path, struct cli_output *out)
{
    memset(out, 0, sizeof *out);
    if (!path || strcmp(path, "-") == 0) {
        out->fp = stdout;
        return true;
    }
    char err[512];
    bool in_place = false;
    if (!model_output_target(path, &out->target, &in_place, err, sizeof err)) {
        cli_error(command, "%s", err);
        return false;
    }
    if (!cli_output_not_input(command, path)) {
        cli_output_abort(out);
        return false;
    }
    out->path = strdup(path);
    size_t n = strlen(out->target) + 32;
    if (!in_place)
        out->tmp_path = malloc(n);
    if (!out->path || (!in_place && !out->tmp_path)) {
        cli_error(command, "out of memory");
        cli_output_abort(out);
        return false;
    }
    if (!in_place) {
        snprintf(out->tmp_path, n, "%s.tmp.%ld", out->target, (long)getpid());
        cli_temp_track(out->tmp_path);
    }
    out->fp = fopen(in_place ? out->target : out->tmp_path, "w");
    if (!out->fp) {
        cli_error(command, "%s: cannot create: %s", path, strerror(errno));
        cli_output_abort(out);
        return false;
    }
    setvbuf(out->fp, NULL, _IOFBF, 1 << 20);
    return true;
}

bool cli_output_commit(const char *command, struct cli_output *out)
{
    if (out->fp == stdout) {
        if (fflush(stdout) != 0 || ferror(stdout)) {
            cli_error(command, "writing to standard output failed: %s", strerror(errno));
            return false;
        }
        return true;
    }
    bool ok = !ferror(out->fp);
    /* a device or pipe written in place has nothing to sync (fsync would fail on a pipe) */
    if (fflush(out->fp) != 0 || (out->tmp_path && fsync(fileno(out->fp)) != 0))
        ok = false;
    int saved = errno;
    if (fclose(out->fp) != 0)
        ok = false;
    out->fp = NULL;
    if (!ok) {
        cli_error(command, "%s: write failed: %s", out->path, strerror(saved));
        cli_output_abort(out);
        return false;
    }
    if (out->tmp_path && rename(out->tmp_path, out->target) != 0) {
        cli_error(command, "%s: cannot rename the finished output into place: %s", out->path,
                  strerror(errno));
        cli_output_abort(out);
        return false;
    }
    if (out->tmp_path)
        cli_temp_untrack(out->tmp_path);
    free(out->path);
    free(out->target);
    free(out->tmp_path);
    memset(out, 0, sizeof *out);
    return true;
}

void cli_output_abort(struct cli_output *out)
{
    if (out->fp && out->fp != stdout)
        fclose(out->fp);
    if (out->tmp_path) {
        unlink(out->tmp_path);
        cli_temp_untrack(out->tmp_path);
    }
    free(out->path);
    free(out->target);
    free(out->tmp_path);
    memset(out, 0, sizeof *out);
}

void cli_progress_start(struct cli_progress *p, const char *what, uint64_t total_bytes, bool quiet)
{
    memset(p, 0, sizeof *p);
    p->what = what;
    p->total_bytes = total_bytes;
    p->start = p->last_print = cli_now();
    p->tty = isatty(STDERR_FILENO);
    p->quiet = quiet;
}

static void progress_print(struct cli_progress *p, double now, uint64_t done, uint64_t items,
                           const char *unit, bool final)
{
    double elapsed = now - p->start;
    double mb = (double)done / 1e6;
    double rate = elapsed > 0 ? mb / elapsed : 0;
    double irate = elapsed > 0 ? (double)items / elapsed : 0;
    char eta[32] = "";
    if (!final && p->total_bytes && done > 0 && done < p->total_bytes) {
        double left = elapsed * (double)(p->total_bytes - done) / (double)done;
        snprintf(eta, sizeof eta, ", ETA %.0f s", left);
    }
    /* total 0: the size is unknown (a capture read from a pipe), so neither share nor ETA */
    char pct[16] = "";
    if (p->total_bytes)
        snprintf(pct, sizeof pct, " (%.0f%%)", 100.0 * (double)done / (double)p->total_bytes);
    fprintf(stderr, "%s%s: %.1f MB%s, %llu %s, %.1f MB/s, %.0f %s/s%s%s%s", p->tty ? "\r" : "",
            p->what, mb, pct, (unsigned long long)items, unit, rate, irate, unit, eta,
            final ? ", done" : "", p->tty && !final ? "\033[K" : "\n");
    if (p->tty && final)
        fputs("", stderr);
    p->printed = true;
}

void cli_progress_update(struct cli_progress *p, uint64_t done_bytes, uint64_t items, const char *unit)
{
    if (p->quiet)
        return;
    double now = cli_now();
    double interval = p->tty ? 0.5 : 10.0;
    if (now - p->last_print < interval)
        return;
    p->last_print = now;
    progress_print(p, now, done_bytes, items, unit, false);
}

void cli_progress_end(struct cli_progress *p, uint64_t done_bytes, uint64_t items, const char *unit)
{
    if (p->quiet || (!p->printed && cli_now() - p->start < 1.0))
        return;
    progress_print(p, cli_now(), done_bytes, items, unit, true);
}

size_t cli_tsv_escape(const char *s, char *out, size_t cap)
{
    size_t k = 0;
    if (cap == 0)
        return 0;
    for (; *s; s++) {
        char esc = *s == '\t' ? 't' : *s == '\n' ? 'n' : *s == '\r' ? 'r' : *s == '\\' ? '\\' : 0;
        size_t n = esc ? 2 : 1;
        if (k + n + 1 > cap)
            break;
        if (esc) {
            out[k++] = '\\';
            out[k++] = esc;
        } else {
            out[k++] = *s;
        }
    }
    out[k] = '\0';
    return k;
}

void cli_tsv_put(FILE *f, const char *s)
{
    for (const char *p = s;; p++) {
        const size_t plain = strcspn(p, "\t\n\r\\");
        fwrite(p, 1, plain, f);
        p += plain;
        if (!*p)
            return;
        fputc('\\', f);
        fputc(*p == '\t' ? 't' : *p == '\n' ? 'n' : *p == '\r' ? 'r' : '\\', f);
    }
}

struct file_list {
    char **paths;
    struct listed_file {
        dev_t dev;
        ino_t ino;
        uint64_t size;
    } *ids;                /* beside each path: what it names, and its size (0: unknown) */
    int n, cap;
    bool streams;          /* standard input, pipes and devices named on the command line are taken */
    bool size_unknown;     /* a stream is among them */
    uint64_t skipped;      /* files in folders that are not captures */
    char first_skipped[512];
};

/* Whether a file in a folder starts as a capture does: the pcap magic in either byte order
 * (microsecond, nanosecond and the modified format libpcap reads), or a pcapng section header.
 * A file that cannot be opened is kept, so that its reader names the error. */
static bool looks_like_capture(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return true;
    unsigned char m[4];
    const bool whole = fread(m, 1, 4, f) == 4;
    fclose(f);
    if (!whole)
        return false;
    const uint32_t be = (uint32_t)m[0] << 24 | (uint32_t)m[1] << 16 | (uint32_t)m[2] << 8 | m[3];
    const uint32_t le = (uint32_t)m[3] << 24 | (uint32_t)m[2] << 16 | (uint32_t)m[1] << 8 | m[0];
    static const uint32_t magics[] = {0xa1b2c3d4u, 0xa1b23c4du, 0xa1b2cd34u};
    for (size_t i = 0; i < sizeof magics / sizeof magics[0]; i++)
        if (be == magics[i] || le == magics[i])
            return true;
    return be == 0x0a0d0d0au;
}

static bool list_push(struct file_list *l, const char *path, const struct stat *st, uint64_t size)
{
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 64;
        char **p = realloc(l->paths, (size_t)cap * sizeof *p);
        if (!p)
            return false;
        l->paths = p;
        struct listed_file *ids = realloc(l->ids, (size_t)cap * sizeof *ids);
        if (!ids)
            return false;
        l->ids = ids;
        l->cap = cap;
    }
    l->paths[l->n] = strdup(path);
    if (!l->paths[l->n])
        return false;
    l->ids[l->n] = (struct listed_file){st->st_dev, st->st_ino, size};
    l->n++;
    return true;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A capture named on the command line that is read as a stream, as tcpdump -r reads one: "-"
 * (standard input: a pipe, a socket, or a redirected file), or a named pipe or character device
 * (bash's <(...), /dev/stdin). Nothing may read ahead in it (looks_like_capture would eat its
 * header), and its size is unknown unless it is a file. Inside a folder only regular files count:
 * opening a stray pipe there would wait for a writer forever. */
static bool walk_stream(const char *command, const char *path, const struct stat *st, struct file_list *l)
{
    const bool is_stdin = strcmp(path, "-") == 0;
    if (is_stdin && isatty(STDIN_FILENO)) {
        cli_error(command, "-: standard input is a terminal, not a capture (pipe one in: ... | netlm %s -)", command);
        return false;
    }
    uint64_t size = 0;
    if (S_ISREG(st->st_mode)) { /* only standard input gets here as a file */
        const off_t at = lseek(STDIN_FILENO, 0, SEEK_CUR); /* what is left of a redirected file */
        size = at >= 0 && at <= st->st_size ? (uint64_t)(st->st_size - at) : 0;
    } else if (S_ISFIFO(st->st_mode) || S_ISCHR(st->st_mode) || (is_stdin && S_ISSOCK(st->st_mode))) {
        l->size_unknown = true;
    } else {
        cli_error(command, "%s: %s", path,
                  is_stdin ? "standard input is neither a pipe nor a file" : "not a regular file, folder, pipe or device");
        return false;
    }
    remember_input(st);
    return list_push(l, path, st, size);
}

static bool walk(const char *command, const char *path, struct file_list *l, int depth)
{
    struct stat st;
    const bool is_stdin = depth == 0 && strcmp(path, "-") == 0;
    if (is_stdin && !l->streams) {
        cli_error(command, "-: this command reads capture files, not standard input");
        return false;
    }
    if (is_stdin ? fstat(STDIN_FILENO, &st) != 0 : stat(path, &st) != 0) {
        cli_error(command, "%s: %s", path, strerror(errno));
        return false;
    }
    if (is_stdin)
        return walk_stream(command, path, &st, l);
    if (S_ISREG(st.st_mode)) {
        remember_input(&st);
        if (depth > 0 && !looks_like_capture(path)) {
            if (l->skipped++ == 0)
                snprintf(l->first_skipped, sizeof l->first_skipped, "%s", path);
            return true;
        }
        return list_push(l, path, &st, (uint64_t)st.st_size);
    }
    if (depth == 0 && l->streams && !S_ISDIR(st.st_mode))
        return walk_stream(command, path, &st, l);
    if (!S_ISDIR(st.st_mode)) {
        cli_error(command, "%s: not a regular file or folder", path);
        return false;
    }
    if (depth > 64) {
        cli_error(command, "%s: folders nested too deep (a symlink loop?)", path);
        return false;
    }
    DIR *d = opendir(path);
    if (!d) {
        cli_error(command, "%s: cannot open folder: %s", path, strerror(errno));
        return false;
    }
    char **names = NULL;
    int n = 0, cap = 0;
    struct dirent *e;
    bool ok = true;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue; /* hidden files and . / .. (editors' and rsync's leftovers too) */
        if (n == cap) {
            cap = cap ? cap * 2 : 32;
            char **p = realloc(names, (size_t)cap * sizeof *p);
            if (!p) {
                ok = false;
                break;
            }
            names = p;
        }
        if (!(names[n] = strdup(e->d_name))) {
            ok = false;
            break;
        }
        n++;
    }
    closedir(d);
    if (ok && n > 0)
        qsort(names, (size_t)n, sizeof *names, cmp_str);
    for (int i = 0; i < n; i++) {
        if (ok) {
            size_t len = strlen(path) + strlen(names[i]) + 2;
            char *child = malloc(len);
            if (!child) {
                ok = false;
            } else {
                snprintf(child, len, "%s/%s", path, names[i]);
                ok = walk(command, child, l, depth + 1);
                free(child);
            }
        }
        free(names[i]);
    }
    free(names);
    return ok;
}

/* Orders entries by what they name, then by position: the first of equal ones is the one given
 * first. */
static int cmp_listed(const void *a, const void *b, void *ids)
{
    const int x = *(const int *)a, y = *(const int *)b;
    const struct listed_file *p = (const struct listed_file *)ids + x, *q = (const struct listed_file *)ids + y;
    if (p->dev != q->dev)
        return p->dev < q->dev ? -1 : 1;
    if (p->ino != q->ino)
        return p->ino < q->ino ? -1 : 1;
    return (x > y) - (x < y);
}

/* A file given twice (twice by name, a folder and a file in it, a hard or symbolic link) would be
 * read twice and its sessions counted twice: each file named by the same device and inode is
 * kept where it first appears, the others are dropped with one warning line. Sorting keeps this
 * O(n log n) for the tens of thousands of files of a session-per-file dataset. False when out of
 * memory. */
static bool drop_repeated(const char *command, struct file_list *l)
{
    if (l->n < 2)
        return true;
    int *order = malloc((size_t)l->n * sizeof *order);
    bool *dropped = calloc((size_t)l->n, sizeof *dropped);
    if (!order || !dropped) {
        free(order);
        free(dropped);
        return false;
    }
    for (int i = 0; i < l->n; i++)
        order[i] = i;
    qsort_r(order, (size_t)l->n, sizeof *order, cmp_listed, l->ids);
    int repeats = 0, first_dup = -1, first_orig = -1;
    for (int i = 1, run_start = 0; i < l->n; i++) {
        const struct listed_file *a = &l->ids[order[run_start]], *b = &l->ids[order[i]];
        if (a->dev != b->dev || a->ino != b->ino) {
            run_start = i;
            continue;
        }
        dropped[order[i]] = true;
        repeats++;
        if (first_dup < 0 || order[i] < first_dup) {
            first_dup = order[i];
            first_orig = order[run_start];
        }
    }
    if (repeats) {
        char more[64] = "";
        if (repeats > 1)
            snprintf(more, sizeof more, " (%d more input%s given before)", repeats - 1,
                     repeats == 2 ? " repeats one" : "s repeat ones");
        if (strcmp(l->paths[first_dup], l->paths[first_orig]) == 0)
            cli_warn(command, "%s: given more than once, read once%s", l->paths[first_dup], more);
        else
            cli_warn(command, "%s: the same file as %s, read once%s", l->paths[first_dup], l->paths[first_orig], more);
        int k = 0;
        for (int i = 0; i < l->n; i++) {
            if (dropped[i]) {
                free(l->paths[i]);
                continue;
            }
            l->paths[k] = l->paths[i];
            l->ids[k++] = l->ids[i];
        }
        l->n = k;
    }
    free(order);
    free(dropped);
    return true;
}

int cli_collect_files(const char *command, const char *const *paths, int n, char ***files_out,
                      uint64_t *total_bytes)
{
    return cli_collect_inputs(command, paths, n, false, files_out, total_bytes);
}

int cli_collect_inputs(const char *command, const char *const *paths, int n, bool streams, char ***files_out,
                       uint64_t *total_bytes)
{
    struct file_list l = {.streams = streams};
    int stdin_given = 0;
    for (int i = 0; i < n; i++)
        stdin_given += strcmp(paths[i], "-") == 0;
    if (stdin_given > 1) {
        /* a second read of standard input would find it at its end, not the capture again */
        cli_error(command, "-: standard input given %d times; it can be read once", stdin_given);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (!walk(command, paths[i], &l, 0)) {
            cli_free_files(l.paths, l.n);
            free(l.ids);
            return -1;
        }
    }
    if (l.skipped)
        cli_warn(command, "skipped %" PRIu64 " file%s of the folders given, not pcap or pcapng: %s%s", l.skipped,
                 l.skipped == 1 ? "" : "s", l.first_skipped, l.skipped > 1 ? ", ..." : "");
    if (!drop_repeated(command, &l)) {
        cli_error(command, "out of memory");
        cli_free_files(l.paths, l.n);
        free(l.ids);
        return -1;
    }
    uint64_t bytes = 0;
    for (int i = 0; i < l.n; i++)
        bytes += l.ids[i].size;
    free(l.ids);
    *files_out = l.paths;
    if (total_bytes)
        *total_bytes = l.size_unknown ? 0 : bytes;
    return l.n;
}

char **cli_escape_names(char *const *files, int n, bool json, size_t *lens)
{
    char **names = calloc(n > 0 ? (size_t)n : 1, sizeof *names);
    for (int i = 0; names && i < n; i++) {
        const size_t len = strlen(files[i]);
        const size_t cap = json ? JSON_ESCAPED_MAX(len) : CLI_TSV_ESCAPED_MAX(len);
        if (!(names[i] = malloc(cap))) {
            cli_free_files(names, i);
            return NULL;
        }
        const size_t k = json ? json_escape(files[i], names[i], cap) : cli_tsv_escape(files[i], names[i], cap);
        if (lens)
            lens[i] = k;
    }
    return names;
}

bool cli_json_string(FILE *f, const char *s)
{
    char stack[1024];
    size_t cap = JSON_ESCAPED_MAX(strlen(s));
    char *buf = cap <= sizeof stack ? stack : malloc(cap);
    const bool whole = buf != NULL;
    if (!whole) { /* without memory a cut string, still valid JSON, rather than none */
        buf = stack;
        cap = sizeof stack;
    }
    fputc('"', f);
    fwrite(buf, 1, json_escape(s, buf, cap), f);
    fputc('"', f);
    if (buf != stack)
        free(buf);
    return whole;
}

void cli_free_files(char **files, int n)
{
    for (int i = 0; i < n; i++)
        free(files[i]);
    free(files);
}
