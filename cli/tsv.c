/* tsv.c — reading the seed's dataset TSVs (label\ttext_a with a header line, csv.writer's \r\n
 * line ends), the input of classify, generate, finetune and eval. Content a model would read
 * wrongly without failing (tokens that are not hex, a file cut short) is warned about, once per
 * file, before the first row is used. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"

static bool is_hex_token(const char *s, size_t n)
{
    if (n != 4)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i]))
            return false;
    return true;
}

/* A token as a warning quotes it: at most 16 bytes, anything unprintable as '?'. */
static void quote_token(char *dst, size_t cap, const char *s, size_t n)
{
    size_t k = 0;
    for (; k < n && k < 16 && k + 4 < cap; k++)
        dst[k] = isprint((unsigned char)s[k]) ? s[k] : '?';
    if (k < n && k + 4 <= cap)
        memcpy(dst + k, "...", 3), k += 3;
    dst[k] = '\0';
}

static bool is_special_token(const char *s, size_t n)
{
    static const char *const names[] = {"[PAD]", "[SEP]", "[CLS]", "[UNK]", "[MASK]"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i]) == n && memcmp(names[i], s, n) == 0)
            return true;
    return false;
}

/* What the scan of a file's rows found. */
struct tsv_findings {
    uint64_t odd_tokens, odd_rows;
    uint64_t first_odd_line;
    char first_odd[24];     /* the first odd token, cut for the message */
    uint64_t last_line;     /* the last non-empty line */
    bool last_unterminated; /* it has no line end */
    char last_token[24];    /* and ends with this token ("" when it is whole) */
};

/* Counts the tokens of text (the text_a field of line line_no) that are neither four hex digits
 * nor a special token: the seed writes nothing else, and the tokenizer turns anything else into
 * [UNK] or word pieces without a sound. *last: the text's last token. */
static void scan_text(const char *text, uint64_t line_no, struct tsv_findings *f, const char **last,
                      size_t *last_len)
{
    uint64_t odd = 0;
    *last = NULL;
    *last_len = 0;
    for (const char *p = text; *p;) {
        while (*p == ' ')
            p++;
        const char *start = p;
        while (*p && *p != ' ')
            p++;
        size_t n = (size_t)(p - start);
        if (n == 0)
            continue;
        *last = start;
        *last_len = n;
        if (is_hex_token(start, n) || is_special_token(start, n))
            continue;
        if (odd++ == 0 && f->odd_rows == 0) {
            f->first_odd_line = line_no;
            quote_token(f->first_odd, sizeof f->first_odd, start, n);
        }
    }
    f->odd_tokens += odd;
    f->odd_rows += odd > 0;
}

enum { TSV_MAX_COLUMNS = 64 };

/* Cuts a line (its end already removed) at its tabs: fields[] gets the first TSV_MAX_COLUMNS
 * fields, the return value counts all of them, so a row with too many columns still reads as one
 * with the wrong count. The header and the rows are cut alike: an empty field is a column. */
static int split_fields(char *line, char **fields)
{
    int n = 0;
    for (char *p = line;; p++) {
        if (n < TSV_MAX_COLUMNS)
            fields[n] = p;
        n++;
        p = strchr(p, '\t');
        if (!p)
            return n;
        if (n < TSV_MAX_COLUMNS)
            *p = '\0';
    }
}

/* Removes the line end (\n, and the \r of csv.writer's \r\n); returns the new length. */
static ssize_t chop_line_end(char *line, ssize_t len)
{
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
        line[--len] = '\0';
    return len;
}

/* Reads the rows once before they are used, so that one warning can count everything affected.
 * A line that cli_tsv_next will refuse (a NUL byte, the wrong number of columns) ends the scan
 * without a warning: its error is what matters. Only a regular file is scanned (a pipe can be
 * read once); the file is left where the header ended. */
static void scan_rows(const char *cmd, struct cli_tsv *t)
{
    struct stat st;
    long start = ftell(t->f);
    if (start < 0 || fstat(fileno(t->f), &st) != 0 || !S_ISREG(st.st_mode))
        return;
    struct tsv_findings f = {0};
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    bool refused = false;
    for (uint64_t line_no = 2; !refused && (len = getline(&line, &cap, t->f)) >= 0; line_no++) {
        if (memchr(line, '\0', (size_t)len)) {
            refused = true;
            break;
        }
        const bool terminated = len > 0 && line[len - 1] == '\n';
        if (chop_line_end(line, len) == 0)
            continue;
        char *fields[TSV_MAX_COLUMNS];
        if (split_fields(line, fields) != t->columns) {
            refused = true;
            break;
        }
        const char *text = fields[t->text_col];
        const char *last;
        size_t last_len;
        scan_text(text, line_no, &f, &last, &last_len);
        f.last_line = line_no;
        f.last_unterminated = !terminated;
        f.last_token[0] = '\0';
        if (last && !is_hex_token(last, last_len) && !is_special_token(last, last_len))
            quote_token(f.last_token, sizeof f.last_token, last, last_len);
    }
    free(line);
    clearerr(t->f);
    if (fseek(t->f, start, SEEK_SET) != 0 || refused)
        return;
    if (f.last_unterminated)
        cli_warn(cmd, "%s: line %" PRIu64 ", the last, has no line end%s%s%s: the file looks cut short (the row is "
                      "read as it is)", t->path, f.last_line, f.last_token[0] ? " and ends in '" : "", f.last_token,
                 f.last_token[0] ? "', not a whole token" : "");
    if (f.odd_tokens)
        cli_warn(cmd, "%s: %" PRIu64 " token%s in %" PRIu64 " row%s %s not 4-digit hex (the first: '%s', line %" PRIu64
                      "): the model reads %s as [UNK] or word pieces", t->path, f.odd_tokens,
                 f.odd_tokens == 1 ? "" : "s", f.odd_rows, f.odd_rows == 1 ? "" : "s",
                 f.odd_tokens == 1 ? "is" : "are", f.first_odd, f.first_odd_line,
                 f.odd_tokens == 1 ? "it" : "them");
}

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
    chop_line_end(t->line, len);
    /* columns by header name, as the seed's scripts find them */
    t->label_col = t->text_col = -1;
    char *fields[TSV_MAX_COLUMNS];
    t->columns = split_fields(t->line, fields);
    if (t->columns > TSV_MAX_COLUMNS) {
        cli_error(cmd, "%s: line 1: %d columns (at most %d)", path, t->columns, TSV_MAX_COLUMNS);
        return false;
    }
    for (int col = 0; col < t->columns; col++) {
        if (!strcmp(fields[col], "label") && t->label_col < 0)
            t->label_col = col;
        else if (!strcmp(fields[col], "text_a") && t->text_col < 0)
            t->text_col = col;
    }
    if (t->text_col < 0) {
        cli_error(cmd, "%s: line 1: the header has no text_a column (expected label\\ttext_a or text_a)", path);
        return false;
    }
    scan_rows(cmd, t);
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
        if (chop_line_end(t->line, len) == 0)
            continue;
        char *fields[TSV_MAX_COLUMNS];
        const int n = split_fields(t->line, fields);
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

