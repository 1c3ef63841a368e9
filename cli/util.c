/* util.c — what the commands share: atomic output files, the progress line, and turning the
 * files and folders given on the command line into a sorted list of captures. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "model/model.h"

const char *cli_model_vocab(const struct model_config *mc, const char *given, const char *dir, char *buf,
                            size_t len)
{
    if (given || !dir || strcmp(mc->tokenizer.vocab, "builtin") == 0)
        return given;
    snprintf(buf, len, "%s/%s", dir, mc->tokenizer.vocab);
    return buf;
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

static void remove_temps_and_die(int signo)
{
    for (int i = 0; i < TEMP_SLOTS; i++)
        if (atomic_load(&temp_used[i]))
            unlink(temp_paths[i]);
    signal(signo, SIG_DFL);
    raise(signo); /* the status a caller expects of a run ended by signo */
}

void cli_temp_track(const char *path)
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
        }
    }
    if (strlen(path) >= PATH_MAX)
        return;
    for (int i = 0; i < TEMP_SLOTS; i++)
        if (!atomic_load(&temp_used[i])) {
            memcpy(temp_paths[i], path, strlen(path) + 1);
            atomic_store(&temp_used[i], true);
            return;
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
    double pct = p->total_bytes ? 100.0 * (double)done / (double)p->total_bytes : 0;
    fprintf(stderr, "%s%s: %.1f MB (%.0f%%), %llu %s, %.1f MB/s, %.0f %s/s%s%s%s", p->tty ? "\r" : "",
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

struct file_list {
    char **paths;
    int n, cap;
    uint64_t bytes;
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

static bool list_push(struct file_list *l, const char *path, uint64_t size)
{
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 64;
        char **p = realloc(l->paths, (size_t)cap * sizeof *p);
        if (!p)
            return false;
        l->paths = p;
        l->cap = cap;
    }
    l->paths[l->n] = strdup(path);
    if (!l->paths[l->n])
        return false;
    l->n++;
    l->bytes += size;
    return true;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool walk(const char *command, const char *path, struct file_list *l, int depth)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        cli_error(command, "%s: %s", path, strerror(errno));
        return false;
    }
    if (S_ISREG(st.st_mode)) {
        remember_input(&st);
        if (depth > 0 && !looks_like_capture(path)) {
            if (l->skipped++ == 0)
                snprintf(l->first_skipped, sizeof l->first_skipped, "%s", path);
            return true;
        }
        return list_push(l, path, (uint64_t)st.st_size);
    }
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

int cli_collect_files(const char *command, const char *const *paths, int n, char ***files_out,
                      uint64_t *total_bytes)
{
    struct file_list l = {0};
    for (int i = 0; i < n; i++) {
        if (!walk(command, paths[i], &l, 0)) {
            cli_free_files(l.paths, l.n);
            return -1;
        }
    }
    if (l.skipped)
        cli_warn(command, "skipped %" PRIu64 " file%s of the folders given, not pcap or pcapng: %s%s", l.skipped,
                 l.skipped == 1 ? "" : "s", l.first_skipped, l.skipped > 1 ? ", ..." : "");
    *files_out = l.paths;
    if (total_bytes)
        *total_bytes = l.bytes;
    return l.n;
}

void cli_free_files(char **files, int n)
{
    for (int i = 0; i < n; i++)
        free(files[i]);
    free(files);
}
