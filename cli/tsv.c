/* tsv.c — reading the seed's dataset TSVs (label\ttext_a with a header line, csv.writer's \r\n
 * line ends), the input of classify, generate, finetune and eval. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

bool cli_tsv_open(const char *cmd, const char *path, struct cli_tsv *t)
{
    memset(t, 0, sizeof *t);
    t->path = path;
    t->f = fopen(path, "r");
    if (!t->f) {
        cli_error(cmd, "%s: %s", path, strerror(errno));
        return false;
    }
    fseek(t->f, 0, SEEK_END);
    t->size = (uint64_t)ftell(t->f);
    rewind(t->f);
    ssize_t len = getline(&t->line, &t->cap, t->f);
    t->line_no = 1;
    if (len < 0) {
        cli_error(cmd, "%s: empty file (expected a header line: label\\ttext_a)", path);
        return false;
    }
    t->done = (uint64_t)len;
    while (len > 0 && (t->line[len - 1] == '\n' || t->line[len - 1] == '\r'))
        t->line[--len] = '\0';
    /* columns by header name, as the seed's scripts find them */
    t->label_col = t->text_col = -1;
    char *save = NULL;
    int col = 0;
    for (char *tok = strtok_r(t->line, "\t", &save); tok; tok = strtok_r(NULL, "\t", &save), col++) {
        if (!strcmp(tok, "label"))
            t->label_col = col;
        else if (!strcmp(tok, "text_a"))
            t->text_col = col;
    }
    t->columns = col;
    if (t->text_col < 0) {
        cli_error(cmd, "%s: line 1: the header has no text_a column (expected label\\ttext_a or text_a)", path);
        return false;
    }
    return true;
}

int cli_tsv_next(const char *cmd, struct cli_tsv *t, char **label, char **text)
{
    for (;;) {
        ssize_t len = getline(&t->line, &t->cap, t->f);
        if (len < 0)
            return 0;
        t->line_no++;
        t->done += (uint64_t)len;
        if (memchr(t->line, '\0', (size_t)len)) {
            cli_error(cmd, "%s:%" PRIu64 ": binary data (NUL byte): not a TSV", t->path, t->line_no);
            return -1;
        }
        while (len > 0 && (t->line[len - 1] == '\n' || t->line[len - 1] == '\r'))
            t->line[--len] = '\0';
        if (len == 0)
            continue;
        char *fields[64];
        int n = 0;
        char *p = t->line;
        fields[n++] = p;
        while ((p = strchr(p, '\t')) && n < 64) {
            *p++ = '\0';
            fields[n++] = p;
        }
        if (n != t->columns) {
            cli_error(cmd, "%s:%" PRIu64 ": %d columns, the header has %d", t->path, t->line_no, n,
                      t->columns);
            return -1;
        }
        *label = t->label_col >= 0 ? fields[t->label_col] : NULL;
        *text = fields[t->text_col];
        return 1;
    }
}

void cli_tsv_close(struct cli_tsv *t)
{
    if (t->f)
        fclose(t->f);
    free(t->line);
}

