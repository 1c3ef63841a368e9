/* cmd_preprocess.c — `netlm preprocess`: corpus text (or a dataset TSV) to a token shard for
 * pretraining. Every non-empty line is one document, [CLS] + its tokens + [SEP]; the seed's
 * blank-line [CLS][SEP] instances are not written. Streams line by line. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "tokenizer/tokenizer.h"

int cmd_preprocess(int argc, char **argv)
{
    static const char *const cmd = "preprocess";
    struct cli_opt opts[] = {
        {"corpus-path", NULL, 'i', "FILE", "corpus text (netlm corpus) or a dataset TSV (label\\ttext_a)", NULL},
        {"dataset-path", NULL, 'o', "FILE", "token shard to write", NULL},
        {"vocab-path", NULL, 0, "FILE", "UER vocab file (default: the built-in 65,541-token vocab)", NULL},
        {"seq-length", NULL, 0, "N", "training window recorded in the shard (default 128)", NULL},
        {"processes-num", NULL, 0, "N", "accepted for the seed's command lines; one pass is fast enough", NULL},
        {"data-processor", NULL, 0, "lm", "accepted for the seed's command lines; only lm", NULL},
        {"quiet", NULL, 'q', NULL, "no progress line", NULL},
        {0},
    };
    const char **pos;
    int npos;
    int rc = cli_parse(cmd, "--corpus_path FILE --dataset_path OUT [OPTIONS]",
                       "Tokenizes a corpus (each non-empty line a document) or the text_a column of a TSV into\n"
                       "a token shard: a 64-byte header, then uint32 ids, memory-mapped by the trainer.",
                       opts, argc, argv, &pos, &npos);
    if (rc != CLI_PARSED)
        return rc == CLI_HELP_SHOWN ? 0 : 2;
    int status = 2;
    struct tok_vocab *vocab = NULL;
    struct tok_shard_writer *w = NULL;
    char temp_path[PATH_MAX] = ""; /* w's, removed if a signal ends the run */
    FILE *in = NULL;
    char *line = NULL;
    uint32_t *ids = NULL;
    const char *in_path = cli_get(opts, "corpus-path");
    if (!in_path && npos == 1)
        in_path = pos[0];
    const char *out_path = cli_get(opts, "dataset-path");
    uint32_t seq_length;
    if (!cli_u32(cmd, opts, "seq-length", 128, 2, 1u << 20, &seq_length))
        goto done;
    if (cli_get(opts, "data-processor") && strcmp(cli_get(opts, "data-processor"), "lm") != 0) {
        cli_error(cmd, "--data_processor: only 'lm' (causal language modelling) is supported, got '%s'",
                  cli_get(opts, "data-processor"));
        goto done;
    }
    if (!in_path || !out_path) {
        cli_error(cmd, "%s is required", !in_path ? "--corpus_path FILE" : "--dataset_path FILE");
        goto done;
    }
    status = 1;
    char err[512];
    vocab = cli_get(opts, "vocab-path") ? tok_vocab_load(cli_get(opts, "vocab-path"), err, sizeof err)
                                        : tok_vocab_builtin();
    if (!vocab) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    in = fopen(in_path, "r");
    if (!in) {
        cli_error(cmd, "%s: %s", in_path, strerror(errno));
        goto done;
    }
    fseek(in, 0, SEEK_END);
    long total = ftell(in);
    rewind(in);
    w = tok_shard_create(out_path, tok_vocab_size(vocab), seq_length, err, sizeof err);
    if (!w) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    tok_shard_set_vocab_digest(w, tok_vocab_digest(vocab));
    snprintf(temp_path, sizeof temp_path, "%s", tok_shard_temp_path(w));
    cli_temp_track(temp_path);
    size_t cap = 0, ids_cap = 4096;
    ids = malloc(ids_cap * sizeof *ids);
    if (!ids)
        goto done;
    ssize_t len;
    uint64_t lineno = 0, docs = 0, done_bytes = 0, tokens = 0;
    bool tsv = false;
    struct cli_progress progress;
    cli_progress_start(&progress, cmd, (uint64_t)total, cli_flag(opts, "quiet"));
    while ((len = getline(&line, &cap, in)) >= 0) {
        lineno++;
        done_bytes += (uint64_t)len;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (memchr(line, '\0', (size_t)len)) {
            cli_error(cmd, "%s:%llu: binary data (NUL byte): not a corpus or TSV", in_path, (unsigned long long)lineno);
            goto done;
        }
        const char *text = line;
        if (lineno == 1 && (strcmp(line, "label\ttext_a") == 0 || strcmp(line, "text_a") == 0)) {
            tsv = true;
            continue;
        }
        if (tsv) {
            const char *tab = strrchr(line, '\t');
            text = tab ? tab + 1 : line;
        }
        /* [CLS] + words + [SEP]: count first, then grow the buffer once if needed. */
        size_t n = 0;
        ids[n++] = TOK_CLS;
        const char *p = text;
        bool any = false;
        while (*p) {
            while (*p == ' ' || *p == '\t')
                p++;
            const char *start = p;
            while (*p && *p != ' ' && *p != '\t')
                p++;
            if (p == start)
                break;
            any = true;
            size_t needed;
            size_t got = tok_vocab_word_ids(vocab, start, (size_t)(p - start), ids + n, ids_cap - n - 1, &needed);
            if (got < needed) {
                ids_cap = (ids_cap + needed) * 2;
                uint32_t *grown = realloc(ids, ids_cap * sizeof *ids);
                if (!grown)
                    goto done;
                ids = grown;
                got = tok_vocab_word_ids(vocab, start, (size_t)(p - start), ids + n, ids_cap - n - 1, &needed);
            }
            n += got;
        }
        if (!any)
            continue;
        ids[n++] = TOK_SEP;
        if (tok_shard_append(w, ids, n) != 0) {
            cli_error(cmd, "%s: write failed: %s", out_path, strerror(errno));
            goto done;
        }
        docs++;
        tokens += n;
        if ((lineno & 0xfff) == 0)
            cli_progress_update(&progress, done_bytes, docs, "documents");
    }
    if (ferror(in)) {
        cli_error(cmd, "%s: read error: %s", in_path, strerror(errno));
        goto done;
    }
    cli_progress_end(&progress, done_bytes, docs, "documents");
    if (docs == 0) {
        cli_error(cmd, "%s: no documents (the file has no non-empty lines)", in_path);
        goto done;
    }
    if (tok_shard_commit(w, err, sizeof err) != 0) {
        w = NULL;
        cli_error(cmd, "%s", err);
        goto done;
    }
    w = NULL;
    if (!cli_flag(opts, "quiet"))
        fprintf(stderr, "netlm preprocess: %llu documents, %llu tokens -> %s\n", (unsigned long long)docs,
                (unsigned long long)tokens, out_path);
    status = 0;
done:
    if (w)
        tok_shard_abort(w);
    if (temp_path[0])
        cli_temp_untrack(temp_path);
    if (in)
        fclose(in);
    free(line);
    free(ids);
    tok_vocab_free(vocab);
    free(pos);
    return status;
}
