/* cmd_pretrain.c — `netlm pretrain`: causal-LM pretraining on the token shards `netlm preprocess`
 * writes, from a fresh model (--config_path) or a pretrained one, with checkpoints that resume
 * exactly, a status line per interval, loss.csv and loss.png.
 *
 * Data: the shards, memory-mapped, are read as one stream of ids (their documents, [CLS] ..
 * [SEP], back to back: UER's LmDataset with --full_sentences), cut into consecutive windows of
 * seq_length (L) inputs. Window w is the ids [wL, wL + L], L + 1 of them, fed as one row: position
 * t − 1 predicts id t, so every id of the stream but the first is a target exactly once per
 * epoch, and a row takes L + 1 positions. The last window is shorter; the ids it lacks are [PAD]
 * and are no targets unless --count-pad-targets.
 *
 * Order: each epoch is a seeded permutation of the windows, a function of (seed, epoch) only;
 * batches run on across the end of an epoch. A checkpoint holds the weights, the AdamW moments,
 * the step and the data position (epoch, windows of it used), so --resume continues bit for bit
 * where the uninterrupted run would be. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"
#include "train/train.h"

static const char *const cmd = "pretrain";

/* ---- the corpus: every shard as one stream of ids ---- */

struct pt_data {
    struct tok_shard *shards;
    const char *const *paths;
    uint64_t *start; /* stream index of each shard's first id; start[n] = tokens */
    int n;
    uint64_t tokens, windows;
    uint32_t seq;    /* inputs per window */
    uint64_t digest; /* of the shards' headers and a sample of their ids: resume checks it */
};

static void data_close(struct pt_data *d)
{
    for (int k = 0; d->shards && k < d->n; k++)
        tok_shard_close(&d->shards[k]);
    free(d->shards);
    free(d->start);
    memset(d, 0, sizeof *d);
}

static uint64_t fnv(uint64_t h, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        h = (h ^ ((v >> (8 * i)) & 0xff)) * 0x100000001b3ull;
    return h;
}

/* Maps every shard and reads every id once (an id outside its shard's vocabulary is an error
 * here, naming the file, rather than a failed step hours later). */
static bool data_open(const char *const *paths, int n, struct pt_data *d)
{
    char err[1024];
    memset(d, 0, sizeof *d);
    d->paths = paths;
    d->shards = calloc((size_t)n, sizeof *d->shards);
    d->start = calloc((size_t)n + 1, sizeof *d->start);
    if (!d->shards || !d->start) {
        cli_error(cmd, "out of memory");
        return false;
    }
    d->digest = 0xcbf29ce484222325ull;
    for (int k = 0; k < n; k++) {
        struct stat sb;
        if (stat(paths[k], &sb) == 0 && S_ISDIR(sb.st_mode)) {
            cli_error(cmd, "%s: a directory, not a token shard (netlm preprocess writes one)", paths[k]);
            return false;
        }
        if (tok_shard_open(paths[k], &d->shards[k], err, sizeof err) != 0) {
            cli_error(cmd, "%s", err);
            return false;
        }
        d->n = k + 1;
        const struct tok_shard *s = &d->shards[k];
        if (tok_shard_check_ids(s, err, sizeof err) != 0) {
            cli_error(cmd, "%s: %s", paths[k], err);
            return false;
        }
        d->start[k] = d->tokens;
        d->tokens += s->header.n_tokens;
        d->digest = fnv(fnv(fnv(d->digest, s->header.n_tokens), s->header.n_documents), s->header.vocab_size);
        for (uint64_t i = 0; i < 64 && s->header.n_tokens; i++)
            d->digest = fnv(d->digest, s->ids[i * s->header.n_tokens / 64]);
    }
    d->start[n] = d->tokens;
    return true;
}

/* Row of window w: up to L + 1 ids from the stream (across shard ends), [PAD] after the end. */
static uint32_t window_ids(const struct pt_data *d, uint64_t w, uint32_t *out, bool pad_targets)
{
    const uint64_t from = w * d->seq, want = d->seq + 1;
    const uint64_t n = from + want <= d->tokens ? want : d->tokens - from;
    int lo = 0, hi = d->n; /* the last shard k with start[k] <= from */
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (d->start[mid] <= from)
            lo = mid;
        else
            hi = mid;
    }
    uint64_t done = 0;
    for (int k = lo; done < n && k < d->n; k++) {
        const uint64_t at = from + done - d->start[k], avail = d->start[k + 1] - d->start[k];
        if (at >= avail)
            continue;
        const uint64_t take = avail - at < n - done ? avail - at : n - done;
        memcpy(out + done, d->shards[k].ids + at, take * sizeof(uint32_t));
        done += take;
    }
    for (uint64_t i = n; i < want; i++)
        out[i] = TOK_PAD;
    return pad_targets ? (uint32_t)want : (uint32_t)n;
}

/* ---- options ---- */

struct pt_args {
    const char **shards;
    int n_shards;
    const char *out_dir, *config_path, *pretrained, *vocab_path, *qwen_name;
    bool use_qwen;
    uint32_t seq; /* 0: the shards' own */
    uint32_t batch, accum, threads, report, stop_after;
    double dropout; /* -1: the model config's */
    uint64_t total_steps, save_steps, seed;
    double lr, warmup, wd, clip;
    int schedule, optimizer;
    bool quiet, resume, pad_targets;
    struct cli_device dev;
    uint32_t world_size;  /* --world_size: 0 when absent */
    int *gpu_ranks, n_gpu_ranks;
};

/* cli_parse gives an option one value; the seed's command lines give some several
 * (--dataset_path a b, --gpu_ranks 0 1 2 3, --embedding word pos, --target lm). An option whose
 * placeholder ends in "..." takes every following word up to the next option (none at all is
 * fine): they are taken out of argv here, into vals (val_opt: whose), before cli_parse sees the
 * rest. The option's value is its first word ("" for none). */
static bool name_matches(const char *given, size_t len, const char *name)
{
    if (!name || strlen(name) != len)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((given[i] == '_' ? '-' : given[i]) != (name[i] == '_' ? '-' : name[i]))
            return false;
    return true;
}

static int split_variadic(struct cli_opt *opts, int argc, char **argv, char **rest, const char **vals,
                          int *val_opt, int *n_vals)
{
    int n = 0;
    *n_vals = 0;
    rest[n++] = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            while (i < argc)
                rest[n++] = argv[i++];
            break;
        }
        struct cli_opt *o = NULL;
        const char *inline_value = NULL;
        if (a[0] == '-' && a[1] == '-') {
            const char *eq = strchr(a + 2, '=');
            const size_t len = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
            for (struct cli_opt *s = opts; s->name && !o; s++)
                if (name_matches(a + 2, len, s->name) || name_matches(a + 2, len, s->alias))
                    o = s;
            inline_value = eq ? eq + 1 : NULL;
        } else if (a[0] == '-' && a[1]) {
            for (struct cli_opt *s = opts; s->name && !o; s++)
                if (s->short_name == a[1])
                    o = s;
            inline_value = a[2] ? a + 2 : NULL;
        }
        const size_t arg_len = o && o->arg ? strlen(o->arg) : 0;
        if (!o || !o->arg || arg_len < 3 || strcmp(o->arg + arg_len - 3, "...") != 0) {
            rest[n++] = argv[i];
            if (o && o->arg && !inline_value && i + 1 < argc) /* its value, whatever it looks like */
                rest[n++] = argv[++i];
            continue;
        }
        const int first = *n_vals;
        if (inline_value) {
            vals[*n_vals] = inline_value;
            val_opt[(*n_vals)++] = (int)(o - opts);
        } else {
            while (i + 1 < argc && !(argv[i + 1][0] == '-' && argv[i + 1][1])) {
                vals[*n_vals] = argv[++i];
                val_opt[(*n_vals)++] = (int)(o - opts);
            }
        }
        if (!o->value || !o->value[0])
            o->value = *n_vals > first ? vals[first] : "";
    }
    rest[n] = NULL;
    return n;
}

#define PT_USAGE                                                                                    \
    "--dataset_path SHARD [SHARD...] --output_model_path OUT (--config_path C | --pretrained_model_path M | --qwen_model_name Q) [OPTIONS]"
#define PT_DESCRIPTION                                                                              \
    "Pretrains a causal language model on token shards (netlm preprocess). The shards are one stream\n" \
    "of ids cut into windows of --seq_length inputs, each predicting the next id, in a seeded order\n" \
    "per epoch. OUT gets the model (config.json with task lm, model.safetensors, vocab.txt),\n"    \
    "loss.csv and, with gnuplot, loss.png; OUT/checkpoint is written every --save_checkpoint_steps\n" \
    "and at the end, and --resume continues from it exactly as if the run had never stopped;\n"   \
    "SIGINT or SIGTERM ends the step under way and writes it too (a second one stops at once).\n" \
    "Options after --dataset_path, --gpu_ranks, --embedding and --target take every following\n"   \
    "word up to the next option."

/* Returns 0 with a filled args, CLI_HELP_SHOWN, or 2 after an error line. */
static int parse_args(int argc, char **argv, struct pt_args *a, const char ***pos_out, char ***rest_out,
                      const char ***vals_out, int **val_opt_out)
{
    struct cli_opt opts[] = {
        {"dataset-path", NULL, 'i', "SHARD...", "token shards from netlm preprocess (also as arguments)", NULL},
        {"output-model-path", NULL, 'o', "DIR", "where the model, OUT/checkpoint, loss.csv and loss.png go", NULL},
        {"config-path", NULL, 0, "FILE", "config.json of a fresh model (Hugging Face or UER form)", NULL},
        {"pretrained-model-path", NULL, 0, "DIR", "go on pretraining this model instead", NULL},
        {"vocab-path", NULL, 0, "FILE", "the vocabulary the shards were written with (default: the model's, or the built-in one)", NULL},
        {"seq-length", NULL, 0, "N", "inputs per window (default: the one the shards record)", NULL},
        {"total-steps", NULL, 0, "N", "optimizer steps (default 100000, the seed's)", NULL},
        {"batch-size", NULL, 'b', "N", "windows per micro-batch (default 32)", NULL},
        {"accumulation-steps", NULL, 0, "K", "micro-batches per optimizer step, weighted as one big batch (default 1)", NULL},
        {"learning-rate", NULL, 0, "LR", "peak learning rate (default 1e-4)", NULL},
        {"warmup", NULL, 0, "FRACTION", "share of --total_steps with linear warmup (default 0.1)", NULL},
        {"schedule", "scheduler", 0, "linear|cosine|constant", "after warmup (default linear to 0)", NULL},
        {"optimizer", NULL, 0, "adamw|uer", "bias-corrected AdamW (default) or the seed's UER AdamW", NULL},
        {"weight-decay", NULL, 0, "WD", "decoupled weight decay, not on biases and norms (default 0.01)", NULL},
        {"clip", NULL, 0, "NORM", "clip the gradient's global norm (default 0 = off)", NULL},
        {"save-checkpoint-steps", NULL, 0, "N", "write OUT/checkpoint every N steps (default 10000) and at the end", NULL},
        {"report-steps", NULL, 0, "N", "a status line every N steps (default 100) and at least every 30 s", NULL},
        CLI_DROPOUT_OPTION,
        {"seed", NULL, 0, "N", "seed of the initialisation and the data order (default 7)", NULL},
        {"threads", NULL, 't', "N", "CPU threads (default: all online CPUs)", NULL},
        {"count-pad-targets", NULL, 0, NULL, "the [PAD]s that fill the stream's last window are targets too", NULL},
        {"resume", NULL, 0, NULL, "continue from OUT/checkpoint, exactly as if never stopped", NULL},
        {"stop-after", NULL, 0, "STEPS", "end this run after STEPS steps with a checkpoint (a time-limited job; --resume goes on)", NULL},
        {"quiet", NULL, 'q', NULL, "no status lines", NULL},
        CLI_TRAIN_DEVICE_OPTIONS,
        {"world-size", NULL, 0, "N", "processes training together (start them with mpirun -np N; default: as many as mpirun started)", NULL},
        {"gpu-ranks", NULL, 0, "N...", "with --device cuda: the GPU of each process, in rank order (default: cuda:D+rank for --device cuda:D)", NULL},
        {"data-processor", NULL, 0, "lm", "accepted for the seed's command lines; only lm", NULL},
        {"embedding", NULL, 0, "NAME...", "accepted for the seed's command lines; the config decides", NULL},
        {"encoder", NULL, 0, "NAME", "accepted for the seed's command lines; the config decides", NULL},
        {"mask", NULL, 0, "causal", "accepted for the seed's command lines; only causal", NULL},
        {"target", NULL, 0, "lm...", "accepted for the seed's command lines; only lm", NULL},
        {"layernorm-positioning", NULL, 0, "pre", "accepted for the seed's command lines; the config decides", NULL},
        {"remove-embedding-layernorm", NULL, 0, NULL, "accepted for the seed's command lines", NULL},
        {"tie-weights", NULL, 0, NULL, "accepted for the seed's command lines", NULL},
        CLI_SEED_QWEN_OPTIONS,
        {0},
    };
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    const char **vals = calloc((size_t)argc + 1, sizeof *vals);
    int *val_opt = calloc((size_t)argc + 1, sizeof *val_opt);
    *rest_out = rest;
    *vals_out = vals;
    *val_opt_out = val_opt;
    if (!rest || !vals || !val_opt) {
        cli_error(cmd, "out of memory");
        return 2;
    }
    int n_vals;
    const int n_rest = split_variadic(opts, argc, argv, rest, vals, val_opt, &n_vals);
    const char **pos = NULL;
    int npos = 0;
    int rc = cli_parse(cmd, PT_USAGE, PT_DESCRIPTION, opts, n_rest, rest, &pos, &npos);
    if (rc != CLI_PARSED)
        return rc == CLI_HELP_SHOWN ? CLI_HELP_SHOWN : 2;
    *pos_out = pos;

    /* shards: --dataset_path's words, then the arguments */
    memset(a, 0, sizeof *a);
    a->shards = calloc((size_t)(n_vals + npos) + 1, sizeof *a->shards);
    if (!a->shards) {
        cli_error(cmd, "out of memory");
        return 2;
    }
    for (int i = 0; i < n_vals; i++) {
        const char *opt = opts[val_opt[i]].name;
        if (strcmp(opt, "dataset-path") == 0)
            a->shards[a->n_shards++] = vals[i];
        else if (strcmp(opt, "target") == 0 && strcmp(vals[i], "lm") != 0) {
            cli_error(cmd, "--target: only 'lm' (causal language modelling), got '%s'", vals[i]);
            return 2;
        } else if (strcmp(opt, "gpu-ranks") == 0) {
            char *end;
            errno = 0;
            const long r = strtol(vals[i], &end, 10);
            if (end == vals[i] || *end || errno || r < 0 || r > 4096) {
                cli_error(cmd, "--gpu_ranks: expected GPU numbers 0..4096, got '%s'", vals[i]);
                return 2;
            }
            if (!a->gpu_ranks && !(a->gpu_ranks = calloc((size_t)n_vals, sizeof *a->gpu_ranks))) {
                cli_error(cmd, "out of memory");
                return 2;
            }
            a->gpu_ranks[a->n_gpu_ranks++] = (int)r;
        }
    }
    for (int i = 0; i < npos; i++)
        a->shards[a->n_shards++] = pos[i];
    static const struct {
        const char *opt, *only, *what;
    } seed_only[] = {
        {"data-processor", "lm", "causal language modelling"},
        {"mask", "causal", "causal attention"},
    };
    for (size_t i = 0; i < sizeof seed_only / sizeof seed_only[0]; i++) {
        const char *v = cli_get(opts, seed_only[i].opt);
        if (v && strcmp(v, seed_only[i].only) != 0) {
            cli_error(cmd, "--%s: only '%s' (%s), got '%s'", seed_only[i].opt, seed_only[i].only, seed_only[i].what, v);
            return 2;
        }
    }
    if (!cli_device_arg(cmd, opts, &a->dev))
        return 2;
    a->out_dir = cli_get(opts, "output-model-path");
    a->config_path = cli_get(opts, "config-path");
    a->pretrained = cli_get(opts, "pretrained-model-path");
    a->vocab_path = cli_get(opts, "vocab-path");
    a->qwen_name = cli_get(opts, "qwen-model-name");
    a->use_qwen = cli_flag(opts, "use-qwen");
    a->quiet = cli_flag(opts, "quiet");
    a->resume = cli_flag(opts, "resume");
    a->pad_targets = cli_flag(opts, "count-pad-targets");
    if (a->n_shards == 0) {
        cli_error(cmd, "--dataset_path SHARD is required (a token shard from netlm preprocess)");
        return 2;
    }
    if (!a->out_dir || !a->out_dir[0]) {
        cli_error(cmd, "--output_model_path DIR is required");
        return 2;
    }
    /* the seed passes --config_path with --pretrained_model_path too: the model's own config wins */
    if (!a->resume && !a->pretrained && !a->config_path && !a->qwen_name) {
        cli_error(cmd, "give --config_path FILE (a fresh model), --pretrained_model_path DIR or --qwen_model_name "
                       "(a Hugging Face checkpoint)");
        return 2;
    }
    static const char *const sched_names[] = {"constant", "linear", "cosine", NULL};
    static const char *const opt_names[] = {"adamw", "uer", NULL};
    const long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    a->schedule = cli_choice(cmd, opts, "schedule", "linear", sched_names);
    a->optimizer = cli_choice(cmd, opts, "optimizer", "adamw", opt_names);
    if (a->schedule < 0 || a->optimizer < 0 ||
        !cli_u32(cmd, opts, "seq-length", 0, 1, 1u << 20, &a->seq) ||
        !cli_u64(cmd, opts, "total-steps", 100000, 1, UINT64_MAX / 2, &a->total_steps) ||
        !cli_u32(cmd, opts, "batch-size", 32, 1, 65536, &a->batch) ||
        !cli_u32(cmd, opts, "accumulation-steps", 1, 1, 65536, &a->accum) ||
        !cli_u32(cmd, opts, "threads", ncpu > 0 ? (uint32_t)ncpu : 1, 1, 1024, &a->threads) ||
        !cli_u32(cmd, opts, "report-steps", 100, 1, UINT32_MAX, &a->report) ||
        !cli_u64(cmd, opts, "save-checkpoint-steps", 10000, 1, UINT64_MAX, &a->save_steps) ||
        !cli_u32(cmd, opts, "stop-after", 0, 0, UINT32_MAX, &a->stop_after) ||
        !cli_u32(cmd, opts, "world-size", 0, 1, 65536, &a->world_size) ||
        !cli_double(cmd, opts, "learning-rate", 1e-4, 0.0, 10.0, &a->lr) ||
        !cli_double(cmd, opts, "warmup", 0.1, 0.0, 1.0, &a->warmup) ||
        !cli_double(cmd, opts, "weight-decay", 0.01, 0.0, 10.0, &a->wd) ||
        !cli_double(cmd, opts, "clip", 0.0, 0.0, 1e9, &a->clip) ||
        !cli_u64(cmd, opts, "seed", 7, 0, UINT64_MAX, &a->seed) || !cli_dropout_arg(cmd, opts, &a->dropout))
        return 2;
    return 0;
}

/* ---- the run ---- */

static int pretrain(const struct pt_args *a, int rank, int world)
{
    /* with several processes, rank 0 writes everything and speaks for all */
    const bool writer = rank == 0, quiet = a->quiet || !writer;
    int status = 1;
    char err[1024], path[4200], checkpoint[4000], vocab_buf[4400];
    struct pt_data data = {0};
    struct model *m = NULL;
    struct tok_vocab *vocab = NULL;
    struct trainer *tr = NULL;
    uint32_t *order = NULL, *b_ids = NULL, *b_len = NULL;
    FILE *loss_csv = NULL;
    if (strlen(a->out_dir) > 3800) {
        cli_error(cmd, "--output_model_path: longer than 3800 characters");
        return 2;
    }
    if (!cli_world_size_check(cmd, a->world_size, world))
        return 2;
    if (a->dev.device >= 0 && a->n_gpu_ranks && a->n_gpu_ranks != world) {
        cli_error(cmd, "--gpu_ranks names %d GPU%s for %d process%s: one per process, in rank order", a->n_gpu_ranks,
                  a->n_gpu_ranks == 1 ? "" : "s", world, world == 1 ? "" : "es");
        return 2;
    }
    snprintf(checkpoint, sizeof checkpoint, "%s/checkpoint", a->out_dir);
    snprintf(path, sizeof path, "%s/state.json", checkpoint);
    const bool have_checkpoint = access(path, F_OK) == 0;
    if (a->resume && !have_checkpoint) {
        cli_error(cmd, "%s: no checkpoint to resume (no state.json)", checkpoint);
        return 1;
    }
    if (!a->resume && have_checkpoint) {
        cli_error(cmd, "%s: a checkpoint is there already: --resume continues it; remove it (or choose another "
                       "--output_model_path) to start over", checkpoint);
        return 1;
    }

    /* everything is checked before OUT is touched: a bad input leaves no output behind */
    if (!data_open(a->shards, a->n_shards, &data))
        goto done;
    uint32_t seq = a->seq;
    for (int k = 0; k < data.n && !seq; k++)
        if (data.shards[k].header.seq_length != data.shards[0].header.seq_length) {
            cli_error(cmd, "%s records --seq_length %u but %s %u: give --seq_length", a->shards[0],
                      data.shards[0].header.seq_length, a->shards[k], data.shards[k].header.seq_length);
            goto done;
        }
    if (!seq)
        seq = data.shards[0].header.seq_length;
    if (seq == 0 || seq > 1u << 20) {
        cli_error(cmd, "%s records --seq_length %u: give --seq_length", a->shards[0], seq);
        goto done;
    }
    data.seq = seq;
    if (data.tokens < 2) {
        cli_error(cmd, "%s: %" PRIu64 " token%s in all, nothing to predict", a->n_shards == 1 ? a->shards[0] : "the shards",
                  data.tokens, data.tokens == 1 ? "" : "s");
        goto done;
    }
    data.windows = (data.tokens - 2) / seq + 1; /* windows start at 0, L, 2L, ... before the last id */
    if (data.windows > UINT32_MAX) {
        cli_error(cmd, "%" PRIu64 " windows of %u ids: more than this netlm orders per epoch; use a larger --seq_length "
                       "or fewer shards", data.windows, seq);
        goto done;
    }

    /* the model: the checkpoint to resume, a pretrained one, a Hugging Face one, or a fresh one */
    const char *model_dir = a->resume ? checkpoint : a->pretrained, *model_name;
    const struct cli_model_source source = {.checkpoint = a->resume ? checkpoint : NULL, .pretrained = a->pretrained,
                                            .qwen_name = a->qwen_name, .config_path = a->config_path,
                                            .vocab_path = a->vocab_path, .use_qwen = a->use_qwen};
    if (!(m = cli_training_model(cmd, &source, a->seed, &model_name)))
        goto done;
    const struct model_config *mc = model_get_config(m);
    for (int k = 0; k < data.n; k++)
        if (data.shards[k].header.vocab_size > mc->vocab_size) {
            cli_error(cmd, "%s: ids from a vocabulary of %u tokens, but the model (%s) has %u", a->shards[k],
                      data.shards[k].header.vocab_size, model_name, mc->vocab_size);
            goto done;
        }
    if (mc->arch == MODEL_ARCH_GPT2 && seq + 1 > mc->max_positions) {
        cli_error(cmd, "--seq_length %u needs %u positions (a window's next id is its last target) but the model (%s) "
                       "has %u: use --seq_length %u or less", seq, seq + 1, model_name, mc->max_positions,
                  mc->max_positions - 1);
        goto done;
    }
    const char *vocab_path = cli_model_vocab(mc, a->vocab_path, model_dir, vocab_buf, sizeof vocab_buf);
    vocab = vocab_path ? tok_vocab_load(vocab_path, err, sizeof err) : tok_vocab_builtin();
    if (!vocab) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    const uint64_t vocab_digest = tok_vocab_digest(vocab);
    for (int k = 0; k < data.n; k++) {
        const struct tok_shard_header *h = &data.shards[k].header;
        if (h->vocab_size != tok_vocab_size(vocab)) {
            cli_error(cmd, "%s: written with a vocabulary of %u tokens, but %s has %u (give the shards' --vocab_path)",
                      a->shards[k], h->vocab_size, vocab_path ? vocab_path : "the built-in vocabulary",
                      tok_vocab_size(vocab));
            goto done;
        }
        /* the same size, other ids (the seed's encryptd_vocab.txt beside the built-in one) */
        if (h->vocab_digest && h->vocab_digest != vocab_digest) {
            cli_error(cmd, "%s: written with another vocabulary than %s (the same size, other tokens: give the "
                           "shards' --vocab_path)", a->shards[k], vocab_path ? vocab_path : "the built-in one");
            goto done;
        }
    }
    struct model_config *mut = model_config_mut(m);
    mut->task = MODEL_TASK_LM;
    mut->seq_length = seq;
    snprintf(mut->tokenizer.vocab, sizeof mut->tokenizer.vocab, "%s", vocab_path ? "vocab.txt" : "builtin");

    const uint32_t row = seq + 1;
    /* this process's GPU: --gpu_ranks[rank], else the --device ordinal + rank */
    const int device = a->dev.device < 0 ? -1 : a->n_gpu_ranks ? a->gpu_ranks[rank] : a->dev.device + rank;
    tr = cli_trainer(cmd, m, &a->dev, device, a->batch, row, a->threads, a->dropout, a->seed);
    if (!tr)
        goto done;
    /* with --world_size 1 on a GPU the one-rank communicator runs too, so that the path is the
     * same at every size */
    if (!cli_trainer_join(cmd, tr, rank, world, device, a->world_size != 0))
        goto done;
    order = malloc(data.windows * sizeof(uint32_t));
    b_ids = malloc((size_t)a->batch * row * sizeof(uint32_t));
    b_len = malloc(a->batch * sizeof(uint32_t));
    if (!order || !b_ids || !b_len) {
        cli_error(cmd, "out of memory");
        goto done;
    }
    struct train_adamw adamw;
    if (a->optimizer == 1)
        train_adamw_uer(&adamw);
    else
        train_adamw_defaults(&adamw);
    adamw.weight_decay = (float)a->wd;

    /* what the data position counts: a resumed run must cut and batch the same stream */
    struct cli_train_state st = {.seed = a->seed, .best_dev = NAN};
    const int data_len = snprintf(st.data, sizeof st.data,
             "shards=%d tokens=%" PRIu64 " digest=%016" PRIx64 " seq_length=%u batch_size=%u accumulation_steps=%u "
             "count_pad_targets=%d", data.n, data.tokens, data.digest, seq, a->batch, a->accum, a->pad_targets);
    /* then what the schedule and the updates depend on: finetune's record, which --resume checks
     * alike (a checkpoint of an older netlm lacks these words: they go unchecked) */
    static const char *const schedules[] = {"constant", "linear", "cosine"}, *const optimizers[] = {"adamw", "uer"};
    snprintf(st.data + data_len, sizeof st.data - (size_t)data_len,
             " task=pretrain total_steps=%" PRIu64 " learning_rate=%.9g warmup=%.9g schedule=%s optimizer=%s "
             "weight_decay=%.7g clip=%.9g dropout=%.7g,%.7g,%.7g", a->total_steps, a->lr, a->warmup,
             schedules[a->schedule], optimizers[a->optimizer], a->wd, a->clip, (double)mc->dropout_embed,
             (double)mc->dropout_attn, (double)mc->dropout_resid);
    if (a->resume) {
        struct cli_train_state saved;
        if (!cli_resume_optimizer(cmd, tr, checkpoint, a->seed, &saved))
            goto done;
        if (!saved.data[0]) {
            cli_error(cmd, "%s: not a pretrain checkpoint (state.json has no data position)", checkpoint);
            goto done;
        }
        if (strncmp(saved.data, st.data, (size_t)data_len) != 0 || (saved.data[data_len] && saved.data[data_len] != ' ')) {
            const char *saved_task = strstr(saved.data, " task=");
            const int saved_len = saved_task ? (int)(saved_task - saved.data) : (int)strlen(saved.data);
            cli_error(cmd, "%s: trained on '%.*s', this run has '%.*s': --resume needs the same shards, --seq_length, "
                           "--batch_size, --accumulation_steps and --count-pad-targets", checkpoint, saved_len,
                      saved.data, data_len, st.data);
            status = 2;
            goto done;
        }
        if (!cli_settings_match(cmd, checkpoint, saved.data, st.data, true)) {
            status = 2;
            goto done;
        }
        if (saved.position > data.windows) {
            cli_error(cmd, "%s/state.json: position %" PRIu64 " past the %" PRIu64 " windows of an epoch", checkpoint,
                      saved.position, data.windows);
            goto done;
        }
        if (saved.step > a->total_steps) {
            cli_error(cmd, "%s: at step %" PRIu64 ", beyond --total_steps %" PRIu64, checkpoint, saved.step, a->total_steps);
            goto done;
        }
        st.step = saved.step;
        st.epoch = saved.epoch;
        st.position = saved.position;
    } else if (mkdir(a->out_dir, 0755) != 0 && errno != EEXIST) {
        cli_error(cmd, "--output_model_path %s: cannot create the folder: %s", a->out_dir, strerror(errno));
        goto done;
    }
    loss_csv = writer ? cli_open_loss_csv(cmd, a->out_dir, "step,loss,learning_rate", a->resume, st.step) : fopen("/dev/null", "w");
    if (!loss_csv)
        goto done;

    const uint64_t total = a->total_steps, warmup_steps = (uint64_t)(a->warmup * (double)total);
    const uint64_t start_step = st.step, per_step = (uint64_t)a->batch * a->accum;
    if (!quiet) {
        fprintf(stderr, "netlm %s: %s %u x %u, %.2fM parameters; %d shard%s, %" PRIu64 " tokens = %" PRIu64
                        " windows of %u; %" PRIu64 " steps of %u x %u windows (%.2f epochs)\n",
                cmd, model_arch_name(mc->arch), mc->layers, mc->hidden, model_parameter_count(m) / 1e6, data.n,
                data.n == 1 ? "" : "s", data.tokens, data.windows, seq, total, a->batch, a->accum,
                (double)total * (double)per_step / (double)data.windows);
        cli_trainer_report(cmd, device, a->dev.bf16, a->threads);
        if (a->resume)
            fprintf(stderr, "netlm %s: resuming at step %" PRIu64 " (epoch %" PRIu64 ", window %" PRIu64 ")\n", cmd,
                    st.step, st.epoch + 1, st.position);
    }
    cli_epoch_order(a->seed, st.epoch, data.windows, order);
    const double t0 = cli_now();
    double last_print = t0, loss_sum = 0.0, loss = 0.0, last_losses[16];
    uint64_t loss_count = 0, targets_run = 0, saved_step = a->resume ? st.step : UINT64_MAX;
    /* ^C, systemctl stop or a batch scheduler's SIGTERM: the step under way ends, a checkpoint is
     * written and --resume goes on from it, rather than the run losing every step since the last
     * --save_checkpoint_steps */
    cli_stop_arm(true);
    while (st.step < total) {
        /* k micro-batches weighted by their targets, as one batch of all of them: the block holds
         * Σ (n_j / n_i) g_j after micro-batch i (each g_j the gradient of micro-batch j's mean
         * loss), rescaled when a micro-batch has a different count (only the one with the
         * stream's last window), and by n_k / N at the end. */
        if (!trainer_zero_grads(tr))
            goto step_failed;
        uint64_t n_prev = 0, n_all = 0;
        double loss_weighted = 0.0;
        for (uint32_t micro = 0; micro < a->accum; micro++) {
            uint64_t n_t = 0, first_sample = 0;
            /* a global micro-batch is world × batch windows; process `rank` trains on its slice */
            for (int slice = 0; slice < world; slice++)
                for (uint32_t b = 0; b < a->batch; b++) {
                    if (st.position == data.windows) {
                        st.epoch++;
                        st.position = 0;
                        cli_epoch_order(a->seed, st.epoch, data.windows, order);
                    }
                    if (slice != rank) {
                        st.position++;
                        continue;
                    }
                    /* a window's place in the whole stream of epochs numbers its dropout masks,
                     * whichever process reads it */
                    if (b == 0)
                        first_sample = st.epoch * data.windows + st.position;
                    b_len[b] = window_ids(&data, order[st.position++], b_ids + (size_t)b * row, a->pad_targets);
                    n_t += b_len[b] - 1;
                }
            if (micro > 0 && n_t != n_prev && !trainer_grad_scale(tr, (float)((double)n_prev / (double)n_t)))
                goto step_failed;
            const struct train_batch tb = {.ids = b_ids, .lengths = b_len, .batch = a->batch, .seq = row,
                                           .sample_base = first_sample};
            double micro_loss;
            if (!trainer_forward_backward(tr, TRAIN_LM, &tb, &micro_loss))
                goto step_failed;
            loss_weighted += micro_loss * (double)n_t;
            n_all += n_t;
            n_prev = n_t;
        }
        if (n_prev != n_all && !trainer_grad_scale(tr, (float)((double)n_prev / (double)n_all)))
            goto step_failed;
        /* each process holds the mean gradient of its targets: weighted by their count and summed
         * over the processes (MPI on CPUs, NCCL on GPUs), divided by all targets, it is the
         * gradient of the global batch */
        double n_global = (double)n_all;
        if (!cli_world_grads(tr, world, &loss_weighted, &n_global))
            goto step_failed;
        n_all = (uint64_t)n_global;
        const float step_lr = train_schedule_lr((enum train_schedule)a->schedule, (float)a->lr, st.step,
                                                warmup_steps, total);
        double norm = 0.0;
        if (a->clip > 0 && !trainer_grad_norm(tr, &norm))
            goto step_failed;
        /* loss and norm are of the all-reduced batch: every process stops at the same step */
        loss = loss_weighted / (double)n_all;
        if (!cli_step_finite(cmd, st.step + 1, loss, norm, step_lr, saved_step))
            goto done;
        /* torch's clip_grad_norm_: scale by max/(norm + 1e-6) when that is below 1 */
        if (a->clip > 0 && a->clip / (norm + 1e-6) < 1.0 && !trainer_grad_scale(tr, (float)(a->clip / (norm + 1e-6))))
            goto step_failed;
        if (!trainer_adamw_step(tr, st.step + 1, step_lr, &adamw, (int)a->threads))
            goto step_failed;
        st.step++;
        loss_sum += loss;
        loss_count++;
        targets_run += n_all;
        fprintf(loss_csv, "%" PRIu64 ",%.6f,%.6g\n", st.step, loss, step_lr);
        const double now = cli_now();
        if (!quiet && (st.step % a->report == 0 || st.step == total || now - last_print >= 30)) {
            const double rate = (double)(st.step - start_step) / (now - t0);
            fprintf(stderr, "netlm %s: step %" PRIu64 "/%" PRIu64 " epoch %" PRIu64 " loss %.4f lr %.3g %.0f tokens/s ETA %.0f s\n",
                    cmd, st.step, total, st.epoch + 1, loss_sum / (double)loss_count, step_lr,
                    (double)targets_run / (now - t0), (double)(total - st.step) / (rate > 0 ? rate : 1));
            loss_sum = 0.0;
            loss_count = 0;
            last_print = now;
        }
        last_losses[(st.step - start_step - 1) % 16] = loss;
        const bool stop = a->stop_after && st.step - start_step == a->stop_after && st.step < total;
        if (st.step % a->save_steps == 0 || st.step == total || stop) {
            if (fflush(loss_csv) != 0) {
                cli_error(cmd, "%s/loss.csv: %s", a->out_dir, strerror(errno));
                goto done;
            }
            if (writer && !cli_save_checkpoint(cmd, a->out_dir, tr, m, vocab_path, &st, false))
                goto done;
            saved_step = st.step;
        }
        if (stop) {
            if (writer)
                fprintf(stderr, "netlm %s: stopped after step %" PRIu64 " (--stop-after); --resume continues\n", cmd, st.step);
            status = 0;
            goto done;
        }
        /* every process stops at the same step, whichever of them the signal reached */
        const int signo = cli_stop_requested();
        uint8_t interrupted = signo != 0;
        if (world > 1)
            cli_mpi_or_bytes(&interrupted, 1);
        if (interrupted && st.step < total) {
            if (fflush(loss_csv) != 0) {
                cli_error(cmd, "%s/loss.csv: %s", a->out_dir, strerror(errno));
                goto done;
            }
            if (writer && saved_step != st.step && !cli_save_checkpoint(cmd, a->out_dir, tr, m, vocab_path, &st, false))
                goto done;
            if (writer)
                fprintf(stderr, "netlm %s: interrupted (%s) after step %" PRIu64 ": checkpoint written; --resume continues\n",
                        cmd, strsignal(signo ? signo : SIGTERM), st.step);
            status = 128 + (signo ? signo : SIGTERM); /* as a shell reports a run the signal ended */
            goto done;
        }
    }
    cli_stop_arm(false);
    if (writer && saved_step != st.step && !cli_save_checkpoint(cmd, a->out_dir, tr, m, vocab_path, &st, false))
        goto done;
    const bool csv_ok = fclose(loss_csv) == 0;
    loss_csv = NULL;
    if (!csv_ok) {
        cli_error(cmd, "%s/loss.csv: %s", a->out_dir, strerror(errno));
        goto done;
    }
    if (!writer) {
        status = 0;
        goto done;
    }
    if (!trainer_sync_model(tr)) {
        cli_error(cmd, "%s", trainer_error(tr));
        goto done;
    }
    if (!model_save(m, a->out_dir, err, sizeof err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    snprintf(path, sizeof path, "%s/vocab.txt", a->out_dir);
    if (vocab_path && !cli_copy_file(cmd, vocab_path, path))
        goto done;
    cli_plot_loss(a->out_dir, false);
    /* one step's loss swings with its batch: the mean of the last few says more */
    const uint64_t n_last = st.step - start_step < 16 ? st.step - start_step : 16;
    double last_mean = 0.0;
    for (uint64_t i = 0; i < n_last; i++)
        last_mean += last_losses[i] / (double)n_last;
    if (n_last)
        fprintf(stderr, "netlm %s: step %" PRIu64 ", loss %.4f (mean of the last %" PRIu64 " steps), %.0f s -> %s\n",
                cmd, st.step, last_mean, n_last, cli_now() - t0, a->out_dir);
    else
        fprintf(stderr, "netlm %s: already at step %" PRIu64 " -> %s\n", cmd, st.step, a->out_dir);
    status = 0;
    goto done;
step_failed:
    cli_error(cmd, "training step %" PRIu64 ": %s", st.step + 1, trainer_error(tr));
done:
    cli_stop_arm(false);
    if (loss_csv)
        fclose(loss_csv);
    free(order);
    free(b_ids);
    free(b_len);
    trainer_free(tr);
    tok_vocab_free(vocab);
    model_free(m);
    data_close(&data);
    return status;
}

int cmd_pretrain(int argc, char **argv)
{
    struct pt_args a = {0};
    const char **pos = NULL, **vals = NULL;
    char **rest = NULL;
    int *val_opt = NULL;
    int rc = parse_args(argc, argv, &a, &pos, &rest, &vals, &val_opt);
    int rank = 0, world = 1;
    if (rc == 0 && !cli_mpi_start(cmd, &rank, &world))
        rc = 1;
    else if (rc == 0) {
        rc = pretrain(&a, rank, world);
        cli_mpi_stop(rc != 0);
    }
    else if (rc == CLI_HELP_SHOWN)
        rc = 0;
    free(a.shards);
    free(a.gpu_ranks);
    free(pos);
    free(rest);
    free(vals);
    free(val_opt);
    return rc;
}
