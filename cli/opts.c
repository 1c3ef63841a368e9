/* opts.c — option parsing for every subcommand: kebab-case long options, the seed's snake_case
 * spellings and aliases, generated --help, and typed values with range checks. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

void cli_error(const char *command, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "netlm %s: ", command);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

void cli_warn(const char *command, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "netlm %s: warning: ", command);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* "--seq_length" and "--seq-length" name the same option: compare with '_' read as '-'. */
static bool name_matches(const char *given, size_t len, const char *name)
{
    if (!name || strlen(name) != len)
        return false;
    for (size_t i = 0; i < len; i++) {
        char a = given[i] == '_' ? '-' : given[i];
        char b = name[i] == '_' ? '-' : name[i];
        if (a != b)
            return false;
    }
    return true;
}

static void print_help(const char *command, const char *usage, const char *description,
                       const struct cli_opt *opts)
{
    printf("usage: netlm %s %s\n\n%s\n\noptions:\n", command, usage, description);
    for (const struct cli_opt *o = opts; o->name; o++) {
        char left[96];
        char short_part[8] = "    ";
        if (o->short_name)
            snprintf(short_part, sizeof short_part, "-%c, ", o->short_name);
        snprintf(left, sizeof left, "%s--%s%s%s", short_part, o->name, o->arg ? " " : "", o->arg ? o->arg : "");
        printf("  %-34s %s", left, o->help);
        if (o->alias)
            printf(" (alias --%s)", o->alias);
        putchar('\n');
    }
    printf("  %-34s %s\n", "-h, --help", "show this help");
    printf("\nSnake_case spellings of the long options are accepted too (--seq_length = --seq-length).\n");
}

static struct cli_opt *find_long(struct cli_opt *opts, const char *given, size_t len)
{
    for (struct cli_opt *o = opts; o->name; o++)
        if (name_matches(given, len, o->name) || name_matches(given, len, o->alias))
            return o;
    return NULL;
}

int cli_parse(const char *command, const char *usage, const char *description, struct cli_opt *opts,
              int argc, char **argv, const char ***positional, int *n_positional)
{
    const char **pos = calloc((size_t)argc + 1, sizeof *pos);
    int npos = 0;
    bool only_positional = false;
    if (!pos) {
        cli_error(command, "out of memory");
        return CLI_BAD_USAGE;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_positional || a[0] != '-' || a[1] == '\0') {
            pos[npos++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_positional = true;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            print_help(command, usage, description, opts);
            free(pos);
            return CLI_HELP_SHOWN;
        }
        struct cli_opt *o = NULL;
        const char *inline_value = NULL;
        if (a[1] == '-') {
            const char *name = a + 2;
            const char *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            o = find_long(opts, name, len);
            inline_value = eq ? eq + 1 : NULL;
        } else {
            for (struct cli_opt *s = opts; s->name; s++)
                if (s->short_name == a[1])
                    o = s;
            if (o && a[2] != '\0')
                inline_value = a + 2;
        }
        if (!o) {
            cli_error(command, "unknown option '%s' (see 'netlm %s --help')", a, command);
            free(pos);
            return CLI_BAD_USAGE;
        }
        if (!o->arg) {
            if (inline_value) {
                cli_error(command, "option '--%s' takes no value", o->name);
                free(pos);
                return CLI_BAD_USAGE;
            }
            o->value = "1";
            continue;
        }
        if (inline_value) {
            o->value = inline_value;
        } else if (i + 1 < argc) {
            o->value = argv[++i];
        } else {
            cli_error(command, "option '--%s' needs a value (%s)", o->name, o->arg);
            free(pos);
            return CLI_BAD_USAGE;
        }
    }
    pos[npos] = NULL;
    *positional = pos;
    *n_positional = npos;
    return CLI_PARSED;
}

static const struct cli_opt *lookup(const struct cli_opt *opts, const char *name)
{
    for (const struct cli_opt *o = opts; o->name; o++)
        if (strcmp(o->name, name) == 0)
            return o;
    abort(); /* a command asked for an option it did not declare: a programming error */
}

const char *cli_get(const struct cli_opt *opts, const char *name)
{
    return lookup(opts, name)->value;
}

bool cli_flag(const struct cli_opt *opts, const char *name)
{
    return lookup(opts, name)->value != NULL;
}

bool cli_u64(const char *command, const struct cli_opt *opts, const char *name, uint64_t def,
             uint64_t min, uint64_t max, uint64_t *out)
{
    const char *v = cli_get(opts, name);
    if (!v) {
        *out = def;
        return true;
    }
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-' || x < min || x > max) {
        cli_error(command, "--%s: expected an integer from %llu to %llu, got '%s'", name,
                  (unsigned long long)min, (unsigned long long)max, v);
        return false;
    }
    *out = x;
    return true;
}

bool cli_u32(const char *command, const struct cli_opt *opts, const char *name, uint32_t def,
             uint32_t min, uint32_t max, uint32_t *out)
{
    uint64_t x;
    if (!cli_u64(command, opts, name, def, min, max, &x))
        return false;
    *out = (uint32_t)x;
    return true;
}

bool cli_double(const char *command, const struct cli_opt *opts, const char *name, double def,
                double min, double max, double *out)
{
    const char *v = cli_get(opts, name);
    if (!v) {
        *out = def;
        return true;
    }
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(x) || x < min || x > max) {
        cli_error(command, "--%s: expected a number from %g to %g, got '%s'", name, min, max, v);
        return false;
    }
    *out = x;
    return true;
}

int cli_choice(const char *command, const struct cli_opt *opts, const char *name, const char *def,
               const char *const *choices)
{
    const char *v = cli_get(opts, name);
    if (!v)
        v = def;
    char list[256] = "";
    for (int i = 0; choices[i]; i++) {
        if (strcmp(v, choices[i]) == 0)
            return i;
        if (i)
            strncat(list, ", ", sizeof list - strlen(list) - 1);
        strncat(list, choices[i], sizeof list - strlen(list) - 1);
    }
    cli_error(command, "--%s: expected one of %s, got '%s'", name, list, v);
    return -1;
}
