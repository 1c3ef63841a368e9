/* util.c — what the commands share: atomic output files, the progress line, and turning the
 * files and folders given on the command line into a sorted list of captures. */
#include <dirent.h>
#include <errno.h>
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

bool cli_output_open(const char *command, const char *path, struct cli_output *out)
{
    memset(out, 0, sizeof *out);
    if (!path || strcmp(path, "-") == 0) {
        out->fp = stdout;
        return true;
    }
    size_t n = strlen(path) + 32;
    out->path = strdup(path);
    out->tmp_path = malloc(n);
    if (!out->path || !out->tmp_path) {
        cli_error(command, "out of memory");
        cli_output_abort(out);
        return false;
    }
    snprintf(out->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
    out->fp = fopen(out->tmp_path, "w");
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
    if (fflush(out->fp) != 0 || fsync(fileno(out->fp)) != 0)
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
    if (rename(out->tmp_path, out->path) != 0) {
        cli_error(command, "%s: cannot rename the finished output into place: %s", out->path,
                  strerror(errno));
        cli_output_abort(out);
        return false;
    }
    free(out->path);
    free(out->tmp_path);
    memset(out, 0, sizeof *out);
    return true;
}

void cli_output_abort(struct cli_output *out)
{
    if (out->fp && out->fp != stdout)
        fclose(out->fp);
    if (out->tmp_path)
        unlink(out->tmp_path);
    free(out->path);
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
};

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
    if (S_ISREG(st.st_mode))
        return list_push(l, path, (uint64_t)st.st_size);
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
