/* cmd_finetune_gen.c — `netlm finetune generation`: the seed's header-field generation task as
 * decoder-only conditional generation. A row is [CLS] packet tokens [SEP] target tokens [SEP];
 * the loss counts the target tokens (and the closing [SEP]) only. Dev and test are scored by
 * greedy generation with the KV cache: exact match, as the seed reports, and per field the
 * Jensen–Shannon divergence between the generated and the true value distributions. Every target
 * is checked against the fields (the dataset's dataset.json, or --fields): a class id or a target
 * of other fields is refused, not trained on. */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/finetune.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"
#include "train/train.h"

struct gen_samples {
    uint32_t *ids;     /* [n][row] prompt then target then [SEP], padded */
    uint32_t *lengths; /* whole row */
    uint32_t *prompt;  /* ids before the first target token */
    size_t n, cap;
    uint32_t row;      /* seq + tgt_seq_length − 1 */
    uint64_t digest;   /* of the rows as read: a resume checks the training set by it */
};

static void gen_free(struct gen_samples *s)
{
    free(s->ids);
    free(s->lengths);
    free(s->prompt);
    memset(s, 0, sizeof *s);
}

/* A target must be the fields' values, two 4-hex tokens each ("0000 003c"): a class id (an
 * understanding TSV) or another number of fields would train on something else without a word.
 * False after one error line. */
static bool gen_target_ok(const char *cmd, const char *path, uint64_t line_no, const char *label, uint32_t n_fields,
                          const char *field_list)
{
    uint32_t words = 0;
    for (const char *p = label; *p;) {
        while (*p == ' ')
            p++;
        const size_t len = strcspn(p, " ");
        if (len == 0)
            break;
        if (len != 4 || strspn(p, "0123456789abcdef") < 4) {
            cli_error(cmd, "%s:%" PRIu64 ": label '%.40s' is not a generation target (4-hex tokens, 2 per field, as "
                           "'0000 003c'); an understanding TSV? netlm dataset generation writes generation TSVs",
                      path, line_no, label);
            return false;
        }
        words++;
        p += len;
    }
    if (words != 2 * n_fields) {
        cli_error(cmd, "%s:%" PRIu64 ": the target '%.60s' has %u tokens, but --fields %s takes %u (2 per field): "
                       "give the --fields the dataset was made with", path, line_no, label, words, field_list,
                  2 * n_fields);
        return false;
    }
    return true;
}

/* Rows of a generation TSV: label = the target tokens ("0000 003c"), text_a = the packet. */
static bool gen_load(const char *cmd, const char *path, const struct tok_vocab *vocab, uint32_t seq,
                     uint32_t tgt, uint32_t n_fields, const char *field_list, struct gen_samples *s)
{
    struct cli_tsv t = {0};
    s->row = seq + tgt - 1;
    s->digest = CLI_DIGEST_START;
    bool ok = cli_tsv_open(cmd, path, &t);
    if (ok && t.label_col < 0) {
        cli_error(cmd, "%s: no label column (a generation TSV holds the target in label)", path);
        ok = false;
    }
    char *label, *text;
    int r = 0;
    while (ok && (r = cli_tsv_next(cmd, &t, &label, &text)) > 0) {
        if (!gen_target_ok(cmd, path, t.line_no, label, n_fields, field_list)) {
            ok = false;
            break;
        }
        const size_t text_len = strlen(text);
        s->digest = cli_digest(cli_digest(cli_digest(s->digest, label, strlen(label)), "\t", 1), text, text_len + 1);
        if (s->n == s->cap) {
            size_t ncap = s->cap ? s->cap * 2 : 1024;
            uint32_t *ids = realloc(s->ids, ncap * s->row * sizeof(uint32_t));
            if (ids)
                s->ids = ids;
            uint32_t *len = realloc(s->lengths, ncap * sizeof(uint32_t));
            if (len)
                s->lengths = len;
            uint32_t *pr = realloc(s->prompt, ncap * sizeof(uint32_t));
            if (pr)
                s->prompt = pr;
            if (!ids || !len || !pr) {
                cli_error(cmd, "out of memory reading %s", path);
                ok = false;
                break;
            }
            s->cap = ncap;
        }
        uint32_t *row = s->ids + s->n * s->row;
        memset(row, 0, s->row * sizeof(uint32_t));
        uint32_t n = tok_text_ids(vocab, text, text_len, seq, row);
        s->prompt[s->n] = n;
        /* the target's words, then [SEP]; at most tgt − 1 ids as the seed's [CLS] t1 .. [SEP] */
        uint32_t room = tgt - 1, used = 0;
        for (char *p = label; *p && used < room;) {
            while (*p == ' ')
                p++;
            char *start = p;
            while (*p && *p != ' ')
                p++;
            if (p == start)
                break;
            size_t needed;
            used += (uint32_t)tok_vocab_word_ids(vocab, start, (size_t)(p - start), row + n + used,
                                                 room - used, &needed);
        }
        if (used < room)
            row[n + used++] = TOK_SEP;
        s->lengths[s->n++] = n + used;
    }
    if (r < 0)
        ok = false;
    if (ok && s->n == 0) {
        cli_error(cmd, "%s: no rows", path);
        ok = false;
    }
    cli_tsv_close(&t);
    return ok;
}

/* A generated or true target as field values: field k is tokens 2k and 2k+1, four hex digits
 * each (the seed's "0000 003c"); UINT64_MAX when a token is not four hex digits. */
static uint64_t field_value(const struct tok_vocab *v, const uint32_t *ids, uint32_t n, uint32_t k)
{
    if (2 * k + 1 >= n)
        return UINT64_MAX;
    uint64_t value = 0;
    for (uint32_t i = 2 * k; i <= 2 * k + 1; i++) {
        const char *t = tok_vocab_token(v, ids[i]);
        if (!t || strlen(t) != 4 || strspn(t, "0123456789abcdef") != 4)
            return UINT64_MAX;
        value = value << 16 | strtoul(t, NULL, 16);
    }
    return value;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Jensen–Shannon divergence (base 2, in [0, 1]) of two samples of values of equal size n. */
static double jsd(uint64_t *p, uint64_t *q, size_t n)
{
    qsort(p, n, sizeof *p, cmp_u64);
    qsort(q, n, sizeof *q, cmp_u64);
    double d = 0.0;
    size_t i = 0, j = 0;
    while (i < n || j < n) {
        uint64_t v = i < n && (j >= n || p[i] <= q[j]) ? p[i] : q[j];
        size_t a = 0, b = 0;
        while (i < n && p[i] == v)
            i++, a++;
        while (j < n && q[j] == v)
            j++, b++;
        double pa = (double)a / n, qb = (double)b / n, m = 0.5 * (pa + qb);
        if (pa > 0)
            d += 0.5 * pa * log2(pa / m);
        if (qb > 0)
            d += 0.5 * qb * log2(qb / m);
    }
    return d;
}

struct gen_score {
    double exact;
    double jsd[TOK_FIELD_COUNT];
    uint64_t rows;
};

/* Greedy generation of every row's target from its prompt: on the CPU, or (where → a GPU) with
 * the CUDA engine (keep's: struct cli_eval_gpu) and its KV cache at the training precision. With
 * several processes each generates its share of the rows and every process gets the whole
 * score. */
static bool gen_evaluate(const char *cmd, struct model *m, const struct tok_vocab *vocab,
                         const struct gen_samples *s, uint32_t tgt, uint32_t batch, uint32_t threads,
                         const struct cli_device *where, struct cli_eval_gpu *keep,
                         const struct cli_scoring *sc, uint32_t n_fields, struct gen_score *score)
{
    char err[512];
    const uint32_t max_new = tgt - 1;
    struct model_runner *r = NULL;
    struct model_cuda *gpu = NULL;
    if (where->device >= 0) {
        const struct model_cuda_options o = {.device = where->device,
                                             .precision = where->bf16 ? MODEL_PRECISION_BF16 : MODEL_PRECISION_FP32,
                                             .max_batch = batch, .max_seq = s->row, .kv_tokens = s->row + max_new,
                                             .graphs = true};
        gpu = cli_eval_engine(m, &o, keep, err, sizeof err);
    } else {
        r = model_runner_create(m, batch, s->row, s->row + max_new, threads, err, sizeof err);
    }
    uint32_t *out = malloc((size_t)batch * max_new * sizeof(uint32_t)), *out_len = malloc(batch * sizeof(uint32_t));
    uint64_t *truth = malloc(s->n * n_fields * sizeof(uint64_t)), *got = calloc(s->n * n_fields, sizeof(uint64_t));
    if ((!r && !gpu) || !out || !out_len || !truth || !got) {
        if (!r && !gpu && where->device >= 0)
            cli_error(cmd, "--device %s: %s", where->name, err);
        else
            cli_error(cmd, "%s", r || gpu ? "out of memory" : err);
        model_runner_free(r);
        free(out);
        free(out_len);
        free(truth);
        free(got);
        return false;
    }
    for (size_t i = 0; i < s->n; i++)
        for (uint32_t k = 0; k < n_fields; k++)
            truth[i * n_fields + k] = field_value(vocab, s->ids + i * s->row + s->prompt[i], s->lengths[i] - s->prompt[i], k);
    uint64_t exact = 0;
    bool ok = true;
    for (struct cli_scoring_walk w = cli_scoring_begin(sc, s->n, batch); ok && cli_scoring_next(cmd, &w);) {
        const size_t i = w.row;
        const uint32_t nb = (uint32_t)w.count;
        ok = gpu ? model_cuda_generate(gpu, s->ids + i * s->row, s->prompt + i, nb, s->row, NULL, max_new, out, out_len)
                 : model_generate(r, s->ids + i * s->row, s->prompt + i, nb, s->row, NULL, max_new, out, out_len);
        for (uint32_t b = 0; ok && b < nb; b++) {
            const uint32_t *want = s->ids + (i + b) * s->row + s->prompt[i + b];
            const uint32_t want_n = s->lengths[i + b] - s->prompt[i + b];
            const uint32_t *gen = out + (size_t)b * max_new;
            exact += out_len[b] == want_n && !memcmp(gen, want, want_n * sizeof(uint32_t));
            for (uint32_t k = 0; k < n_fields; k++)
                got[(i + b) * n_fields + k] = field_value(vocab, gen, out_len[b], k);
        }
    }
    if (ok && sc->world > 1) { /* the other processes' rows are zero here */
        cli_mpi_sum_u64(got, s->n * n_fields);
        cli_mpi_sum_u64(&exact, 1);
    }
    if (ok) {
        score->rows = s->n;
        score->exact = (double)exact / (double)s->n;
        uint64_t *p = malloc(s->n * sizeof(uint64_t)), *q = malloc(s->n * sizeof(uint64_t));
        for (uint32_t k = 0; p && q && k < n_fields; k++) {
            for (size_t i = 0; i < s->n; i++) {
                p[i] = truth[i * n_fields + k];
                q[i] = got[i * n_fields + k];
            }
            score->jsd[k] = jsd(p, q, s->n);
        }
        free(p);
        free(q);
    } else if (gpu) {
        cli_error(cmd, "generation failed: %s", model_cuda_error(gpu));
    } else {
        cli_error(cmd, "generation failed (token ids outside the model?)");
    }
    model_runner_free(r);
    free(out);
    free(out_len);
    free(truth);
    free(got);
    return ok;
}

int finetune_generation(int argc, char **argv)
{
    static const char *const cmd = "finetune generation";
    struct cli_opt opts[] = {
        {"pretrained-model-path", NULL, 0, "DIR", "start from this model (default: a fresh one from --config_path)", NULL},
        {"config-path", NULL, 0, "FILE", "config.json of a fresh model (Hugging Face or UER form)", NULL},
        {"vocab-path", NULL, 0, "FILE", "vocabulary (default: the model's, or the built-in one)", NULL},
        {"train-path", NULL, 0, "FILE", "training TSV (label = target tokens, text_a = packet)", NULL},
        {"dev-path", NULL, 0, "FILE", "validation TSV: the best epoch on it is kept", NULL},
        {"test-path", NULL, 0, "FILE", "test TSV, evaluated with the best epoch", NULL},
        {"output-model-path", NULL, 'o', "DIR", "where the model, metrics and loss curve go", NULL},
        {"fields", NULL, 0, "LIST", "the fields the targets hold, in order (as netlm dataset generation --fields; "
                                    "default: those the dataset.json beside --train_path names, else ip_len)", NULL},
        {"seq-length", NULL, 0, "N", "prompt ids, [CLS] and [SEP] included (default 256, the seed's)", NULL},
        {"tgt-seq-length", NULL, 0, "N", "target as the seed counts it, [CLS] t1 .. [SEP] (default 2 per field + 2: "
                                         "4 for ip_len)", NULL},
        {"pooling", NULL, 0, "mean|first|last|max", "accepted for the seed's command lines; no effect (a generation "
                                                    "model does not pool)", NULL},
        {"epochs-num", NULL, 0, "N", "epochs (default 10)", NULL},
        {"batch-size", NULL, 'b', "N", "sequences per step (default 16, the seed's)", NULL},
        {"learning-rate", NULL, 0, "LR", "peak learning rate (default 1e-5, the seed's)", NULL},
        CLI_FINETUNE_OPTIONS,
        CLI_DROPOUT_OPTION,
        CLI_TRAIN_DEVICE_OPTIONS,
        {"seed", NULL, 0, "N", "seed of the initialisation and the data order (default 7)", NULL},
        {"threads", NULL, 't', "N", "CPU threads (default: all online CPUs)", NULL},
        {"report-steps", NULL, 0, "N", "a status line every N steps (default 100) and at least every 30 s", NULL},
        {"quiet", NULL, 'q', NULL, "no status lines", NULL},
        {0},
    };
    const char **pos = NULL;
    int npos = 0;
    int rc = cli_parse(cmd, "--train_path T --dev_path D --test_path E --output_model_path OUT "
                       "(--pretrained_model_path M | --config_path C | --qwen_model_name Q) [OPTIONS]",
                       "Trains the LM head to produce the seed's header-field targets after each packet: a row is\n"
                       "[CLS] packet [SEP] target [SEP] and the loss counts the target only. Each epoch is scored on\n"
                       "dev by greedy generation (exact match); test gets exact match and, per field, the\n"
                       "Jensen-Shannon divergence of generated against true values (metrics.json in OUT).\n"
                       "OUT/checkpoint holds the last epoch (or the step a signal stopped the run at) for --resume.\n"
                       "With the dataset.json netlm dataset writes beside the TSVs, the fields come from it and the\n"
                       "model records how the packets were tokenized.",
                       opts, argc, argv, &pos, &npos);
    if (rc != CLI_PARSED)
        return rc == CLI_HELP_SHOWN ? 0 : 2;
    free(pos);
    const char *train_path = cli_get(opts, "train-path"), *dev_path = cli_get(opts, "dev-path");
    const char *test_path = cli_get(opts, "test-path"), *out_dir = cli_get(opts, "output-model-path");
    const char *pretrained = cli_get(opts, "pretrained-model-path"), *config_path = cli_get(opts, "config-path");
    if (!train_path || !dev_path || !test_path || !out_dir) {
        cli_error(cmd, "--train_path, --dev_path, --test_path and --output_model_path are required");
        return 2;
    }
    if (!pretrained && !config_path && !cli_get(opts, "qwen-model-name") && !cli_flag(opts, "resume")) {
        cli_error(cmd, "give --pretrained_model_path DIR, --config_path FILE (a fresh model) or --qwen_model_name "
                       "(a Hugging Face checkpoint), or --resume");
        return 2;
    }
    /* how the rows were made, when netlm dataset recorded it: the fields and the tokenization */
    struct cli_dataset_settings dataset;
    if (!cli_dataset_settings_read(cmd, "generation", train_path, dev_path, test_path, &dataset))
        return 1;
    enum tok_field fields[TOK_FIELD_COUNT];
    uint32_t n_fields = 0;
    char list[256], field_list[256] = "";
    snprintf(list, sizeof list, "%s", cli_get(opts, "fields") ? cli_get(opts, "fields") : "ip_len");
    for (char *save = NULL, *f = strtok_r(list, ",", &save); f; f = strtok_r(NULL, ",", &save)) {
        if (n_fields == TOK_FIELD_COUNT || !tok_field_parse(f, &fields[n_fields])) {
            cli_error(cmd, "--fields: unknown or repeated field '%s' (ip_len, src_port, dst_port, ttl, tcp_window)", f);
            return 2;
        }
        n_fields++;
    }
    for (uint32_t k = 0; k < dataset.n_fields; k++)
        snprintf(field_list + strlen(field_list), sizeof field_list - strlen(field_list), "%s%s", k ? "," : "",
                 tok_field_name(dataset.fields[k]));
    if (dataset.present && cli_get(opts, "fields") &&
        (n_fields != dataset.n_fields || memcmp(fields, dataset.fields, n_fields * sizeof *fields) != 0)) {
        cli_error(cmd, "--fields %s, but %s says the targets hold %s: leave --fields out", cli_get(opts, "fields"),
                  dataset.path, field_list);
        return 2;
    }
    if (dataset.present) {
        n_fields = dataset.n_fields;
        memcpy(fields, dataset.fields, n_fields * sizeof *fields);
    }
    field_list[0] = '\0';
    for (uint32_t k = 0; k < n_fields; k++)
        snprintf(field_list + strlen(field_list), sizeof field_list - strlen(field_list), "%s%s", k ? "," : "",
                 tok_field_name(fields[k]));
    static const char *const pool_names[] = {"mean", "first", "last", "max", NULL};
    if (cli_choice(cmd, opts, "pooling", "mean", pool_names) < 0)
        return 2;
    uint32_t seq, tgt, epochs, batch, threads, report;
    double lr;
    uint64_t seed;
    double dropout;
    struct cli_finetune_args fa;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (!cli_finetune_args(cmd, opts, &fa) || !cli_u32(cmd, opts, "seq-length", 256, 2, 65536, &seq) ||
        !cli_u32(cmd, opts, "tgt-seq-length", 2 * n_fields + 2, 2, 4096, &tgt) ||
        !cli_u32(cmd, opts, "epochs-num", 10, 1, 100000, &epochs) ||
        !cli_u32(cmd, opts, "batch-size", 16, 1, 65536, &batch) ||
        !cli_u32(cmd, opts, "threads", ncpu > 0 ? (uint32_t)ncpu : 1, 1, 1024, &threads) ||
        !cli_u32(cmd, opts, "report-steps", 100, 1, UINT32_MAX, &report) ||
        !cli_double(cmd, opts, "learning-rate", 1e-5, 0.0, 10.0, &lr) ||
        !cli_u64(cmd, opts, "seed", 7, 0, UINT64_MAX, &seed) || !cli_dropout_arg(cmd, opts, &dropout))
        return 2;
    struct cli_device where;
    if (!cli_device_arg(cmd, opts, &where))
        return 2;
    if (2 * n_fields + 2 > tgt) {
        cli_error(cmd, "--tgt_seq_length %u cannot hold %u field(s): it needs [CLS] + 2 tokens per field + [SEP] = %u",
                  tgt, n_fields, 2 * n_fields + 2);
        return 2;
    }
    int rank, world;
    const int started = cli_finetune_start(cmd, &fa, &where, &rank, &world);
    if (started)
        return started;
    /* with several processes, rank 0 writes everything and speaks for all */
    const bool writer = rank == 0, quiet = cli_flag(opts, "quiet") || !writer, resume = fa.resume;
    int status = 1;
    char err[1024], checkpoint[4000], vocab_buf[4400];
    struct model *m = NULL;
    struct tok_vocab *vocab = NULL;
    struct gen_samples train = {0}, dev = {0}, test = {0};
    struct trainer *tr = NULL;
    struct cli_eval_gpu eval_gpu = {0};
    float *best = NULL;
    uint32_t *order = NULL, *b_ids = NULL, *b_len = NULL, *b_start = NULL;
    FILE *loss_csv = NULL;
    snprintf(checkpoint, sizeof checkpoint, "%s/checkpoint", out_dir);
    /* the model: a checkpoint to resume, a pretrained one, a Hugging Face one, or a fresh one */
    const char *vocab_path;
    if (!(m = cli_finetune_model(cmd, opts, resume ? checkpoint : NULL, seed, vocab_buf, sizeof vocab_buf, &vocab_path)))
        goto done;
    vocab = vocab_path ? tok_vocab_load(vocab_path, err, sizeof err) : tok_vocab_builtin();
    if (!vocab) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    const struct model_config *mc = model_get_config(m);
    const uint32_t row = seq + tgt - 1;
    if (mc->arch == MODEL_ARCH_GPT2 && row + tgt > mc->max_positions) {
        cli_error(cmd, "--seq_length %u + --tgt_seq_length %u needs %u positions; the model has %u", seq, tgt,
                  row + tgt, mc->max_positions);
        goto done;
    }
    if (tok_vocab_size(vocab) > mc->vocab_size) {
        cli_error(cmd, "the vocabulary has %u tokens but the model only %u", tok_vocab_size(vocab), mc->vocab_size);
        goto done;
    }
    if (!gen_load(cmd, train_path, vocab, seq, tgt, n_fields, field_list, &train) ||
        !gen_load(cmd, dev_path, vocab, seq, tgt, n_fields, field_list, &dev) ||
        !gen_load(cmd, test_path, vocab, seq, tgt, n_fields, field_list, &test))
        goto done;
    struct model_config *mut = model_config_mut(m);
    mut->task = MODEL_TASK_GENERATE;
    mut->seq_length = seq;
    mut->tgt_seq_length = tgt;
    snprintf(mut->tokenizer.vocab, sizeof mut->tokenizer.vocab, "%s", vocab_path ? "vocab.txt" : "builtin");
    cli_dataset_settings_apply(&dataset, mut);
    tr = cli_trainer(cmd, m, &where, where.device, batch, row, threads, dropout, seed);
    if (!tr || !cli_trainer_join(cmd, tr, rank, world, where.device, fa.world_size != 0))
        goto done;
    if (!quiet) {
        cli_trainer_report(cmd, where.device, where.bf16, threads);
        if (world > 1)
            fprintf(stderr, "netlm %s: %d processes, %u sequences per step\n", cmd, world, world * batch);
    }
    const size_t n = trainer_param_count(tr);
    size_t n_floats;
    best = malloc((n ? n : 1) * sizeof(float));
    order = malloc(train.n * sizeof(uint32_t));
    b_ids = malloc((size_t)batch * row * sizeof(uint32_t));
    b_len = malloc(batch * sizeof(uint32_t));
    b_start = malloc(batch * sizeof(uint32_t));
    if (!best || !order || !b_ids || !b_len || !b_start) {
        cli_error(cmd, "out of memory");
        goto done;
    }
    /* a step trains on world × batch rows of the epoch's order; process rank on its slice */
    struct cli_finetune_run run = {.cmd = cmd, .out_dir = out_dir, .vocab_path = vocab_path, .writer = writer,
                                   .quiet = quiet, .rank = rank, .seed = seed, .epochs = epochs, .report = report,
                                   .lr = lr, .best = best};
    snprintf(run.task_settings, sizeof run.task_settings,
             "task=generation train=%zu:%016" PRIx64 " seq_length=%u tgt_seq_length=%u fields=%s", train.n,
             train.digest, seq, tgt, field_list);
    if (!cli_finetune_begin(&run, &fa, tr, m, train.n, batch, world, "step,loss,learning_rate,dev_accuracy",
                            &loss_csv)) {
        status = run.refused ? 2 : 1;
        goto done;
    }
    uint64_t step = run.start_step;
    if (resume && !quiet)
        fprintf(stderr, "netlm %s: resuming at epoch %" PRIu64 " (step %" PRIu64 ")\n", cmd, run.start_epoch + 1, step);
    /* ^C, systemctl stop or a batch scheduler's SIGTERM: the step under way ends, a checkpoint of
     * it is written and --resume goes on from it mid-epoch */
    cli_stop_arm(true);
    for (uint64_t epoch = run.start_epoch; epoch < epochs; epoch++) {
        cli_epoch_order(seed, epoch, train.n, order);
        for (uint64_t s = epoch == run.start_epoch ? run.start_in_epoch : 0; s < run.steps_per_epoch; s++) {
            size_t lo, hi;
            cli_finetune_slice(&run, s, order, train.n, train.lengths, &lo, &hi);
            uint32_t nb = 0;
            double targets = 0.0; /* the loss's terms: the target ids of each row */
            for (size_t i = lo; i < hi; i++, nb++) {
                const uint32_t k = order[i];
                memcpy(b_ids + (size_t)nb * row, train.ids + (size_t)k * row, row * sizeof(uint32_t));
                b_len[nb] = train.lengths[k];
                b_start[nb] = train.prompt[k];
                const uint32_t target_from = b_start[nb] ? b_start[nb] : 1;
                targets += b_len[nb] > target_from ? b_len[nb] - target_from : 0;
            }
            /* a row's place in the epoch numbers its dropout masks, whichever process reads it */
            struct train_batch tb = {.ids = b_ids, .lengths = b_len, .batch = nb, .seq = row, .target_start = b_start,
                                     .sample_base = epoch * train.n + lo};
            double loss;
            const float step_lr = train_schedule_lr(fa.schedule, (float)lr, step, run.warmup_steps, run.total_steps);
            if (!cli_finetune_step(&run, tr, TRAIN_LM, &tb, targets, world, &fa, step, step_lr, threads, &loss))
                goto done;
            step++;
            if (loss_csv)
                fprintf(loss_csv, "%" PRIu64 ",%.6f,%.6g,-1\n", step, loss, step_lr);
            cli_finetune_stepped(&run, epoch, step, loss, step_lr);
            if (cli_finetune_interrupted(&run, tr, m, step, epoch, false, loss_csv, &status))
                goto done;
        }
        struct gen_score sc = {0};
        if (!trainer_sync_model(tr)) {
            cli_error(cmd, "%s", trainer_error(tr));
            goto done;
        }
        const struct cli_scoring dev_scoring = {.rank = rank, .world = world, .what = "dev", .quiet = quiet};
        if (!gen_evaluate(cmd, m, vocab, &dev, tgt, batch, threads, &where, &eval_gpu, &dev_scoring, n_fields, &sc))
            goto done;
        if (loss_csv) {
            fprintf(loss_csv, "%" PRIu64 ",,,%.6f\n", step, sc.exact);
            fflush(loss_csv);
        }
        if (!quiet)
            fprintf(stderr, "netlm %s: epoch %" PRIu64 "/%u dev exact match %.4f%s\n", cmd, epoch + 1, epochs, sc.exact,
                    sc.exact > run.best_dev ? " (best)" : "");
        bool stop;
        if (!cli_finetune_epoch_end(&run, &fa, tr, m, step, epoch, sc.exact, &stop))
            goto done;
        if (stop) {
            status = 0;
            goto done;
        }
        if (cli_finetune_interrupted(&run, tr, m, step, epoch, true, loss_csv, &status))
            goto done;
    }
    cli_stop_arm(false);
    const double seconds = cli_now() - run.t0;
    memcpy(model_params(m, &n_floats), best, n * sizeof(float));
    struct gen_score sc = {0};
    const struct cli_scoring test_scoring = {.rank = rank, .world = world, .what = "test", .quiet = quiet};
    if (!gen_evaluate(cmd, m, vocab, &test, tgt, batch, threads, &where, &eval_gpu, &test_scoring, n_fields, &sc))
        goto done;
    if (!writer) {
        status = 0;
        goto done;
    }
    fclose(loss_csv);
    loss_csv = NULL;
    cli_plot_loss(out_dir, true);
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.json", out_dir);
    struct cli_output out;
    if (!cli_output_open(cmd, path, &out))
        goto done;
    fprintf(out.fp, "{\"split\": \"test\", \"rows\": %" PRIu64 ", \"exact_match\": %.6f, \"train_seconds\": %.1f, \"jsd\": {",
            sc.rows, sc.exact, seconds);
    for (uint32_t k = 0; k < n_fields; k++)
        fprintf(out.fp, "%s\"%s\": %.6f", k ? ", " : "", tok_field_name(fields[k]), sc.jsd[k]);
    fprintf(out.fp, "}}\n");
    if (!cli_output_commit(cmd, &out))
        goto done;
    if (vocab_path) {
        snprintf(path, sizeof path, "%s/vocab.txt", out_dir);
        if (strcmp(vocab_path, path) != 0 && !cli_copy_file(cmd, vocab_path, path))
            goto done;
    }
    fprintf(stderr, "netlm %s: test exact match %.4f (%" PRIu64 " rows; best dev %.4f; %.0f s)", cmd, sc.exact,
            sc.rows, run.best_dev, seconds);
    for (uint32_t k = 0; k < n_fields; k++)
        fprintf(stderr, ", JSD %s %.4f", tok_field_name(fields[k]), sc.jsd[k]);
    fputc('\n', stderr);
    status = 0;
done:
    cli_stop_arm(false);
    if (loss_csv)
        fclose(loss_csv);
    free(order);
    free(b_ids);
    free(b_len);
    free(b_start);
    free(best);
    model_cuda_free(eval_gpu.engine);
    trainer_free(tr);
    gen_free(&train);
    gen_free(&dev);
    gen_free(&test);
    tok_vocab_free(vocab);
    model_free(m);
    cli_mpi_stop(status != 0);
    return status;
}
