/* outfile.c — model files written under a temporary name, synced and renamed, so a crash or a
 * full disk never leaves a half-written config.json or model.safetensors behind; and where any
 * output named by a path really goes (model_output_target), for the commands' outputs too. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/model_internal.h"

static void (*temp_observer)(const char *tmp_path, bool live);

void model_set_temp_observer(void (*observer)(const char *tmp_path, bool live))
{
    temp_observer = observer;
}

static void temp_gone(const char *tmp)
{
    if (temp_observer)
        temp_observer(tmp, false);
}

bool model_outfile_open(struct model_outfile *o, const char *path, char *err, size_t errlen)
{
    memset(o, 0, sizeof(*o));
    o->path = path;
    size_t cap = strlen(path) + 32;
    o->tmp = malloc(cap);
    if (!o->tmp) {
        snprintf(err, errlen, "%s: out of memory", path);
        return false;
    }
    snprintf(o->tmp, cap, "%s.tmp.%ld", path, (long)getpid());
    if (temp_observer) /* before the file exists: a signal in between finds nothing to remove */
        temp_observer(o->tmp, true);
    int fd = open(o->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd >= 0 && !(o->fp = fdopen(fd, "wb")))
        close(fd);
    if (!o->fp) {
        snprintf(err, errlen, "%s: cannot create %s: %s", path, o->tmp, strerror(errno));
        if (fd >= 0)
            unlink(o->tmp);
        temp_gone(o->tmp);
        free(o->tmp);
        o->tmp = NULL;
        return false;
    }
    return true;
}

bool model_outfile_commit(struct model_outfile *o, char *err, size_t errlen)
{
    bool ok = fflush(o->fp) == 0 && fsync(fileno(o->fp)) == 0;
    ok = (fclose(o->fp) == 0) && ok;
    o->fp = NULL;
    if (!ok)
        snprintf(err, errlen, "%s: cannot write %s: %s", o->path, o->tmp, strerror(errno));
    else if (rename(o->tmp, o->path) != 0) {
        snprintf(err, errlen, "%s: cannot rename %s: %s", o->path, o->tmp, strerror(errno));
        ok = false;
    }
    if (!ok)
        unlink(o->tmp);
    temp_gone(o->tmp);
    free(o->tmp);
    o->tmp = NULL;
    return ok;
}

void model_outfile_abort(struct model_outfile *o)
{
    if (o->fp)
        fclose(o->fp);
    if (o->tmp) {
        unlink(o->tmp);
        temp_gone(o->tmp);
        free(o->tmp);
    }
    memset(o, 0, sizeof(*o));
}

bool model_output_target(const char *path, char **target, bool *in_place, char *err, size_t errlen)
{
    *target = NULL;
    *in_place = false;
    struct stat st, link;
    if (stat(path, &st) == 0) { /* what path names, through any links */
        if (S_ISDIR(st.st_mode)) {
            snprintf(err, errlen, "%s: is a folder, not a file", path);
            return false;
        }
        *in_place = !S_ISREG(st.st_mode);
        if (!*in_place && lstat(path, &link) == 0 && S_ISLNK(link.st_mode))
            *target = realpath(path, NULL);
    }
    if (!*target)
        *target = strdup(path);
    if (!*target) {
        snprintf(err, errlen, "%s: out of memory", path);
        return false;
    }
    return true;
}
