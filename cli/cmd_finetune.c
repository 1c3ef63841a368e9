/* cmd_finetune.c — `netlm finetune understanding`: a classifier trained on the seed's dataset
 * TSVs, from a pretrained model or a fresh one; the best epoch on dev is kept, test is evaluated
 * with it, and the metrics, curves and confusion matrix are written next to the model.
 *
 * Training is reproducible from its seed: the order of every epoch is a function of (seed,
 * epoch), so a run resumed from a checkpoint continues exactly as the uninterrupted one. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/finetune.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"
#include "train/train.h"

struct samples {
    uint32_t *ids, *lengths, *labels;
    size_t n, cap;
    uint32_t seq;
    uint64_t digest; /* of the rows as read: a resume checks the training set by it */
};

static void samples_free(struct samples *s)
{
    free(s->ids);
    free(s->lengths);
    free(s->labels);
    memset(s, 0, sizeof *s);
}

/* Every row of a dataset TSV, tokenized; labels must be ids below max_labels (0 = no limit). */
static bool samples_load(const char *cmd, const char *path, const struct tok_vocab *vocab,
                         uint32_t seq, struct samples *s)
{
    struct cli_tsv t = {0};
    s->seq = seq;
    s->digest = CLI_DIGEST_START;
    bool ok = cli_tsv_open(cmd, path, &t);
    if (ok && t.label_col < 0) {
        cli_error(cmd, "%s: no label column (the header must be label\\ttext_a)", path);
        ok = false;
    }
    char *label, *text;
    int r = 0;
    while (ok && (r = cli_tsv_next(cmd, &t, &label, &text)) > 0) {
        char *end;
        errno = 0;
        unsigned long id = strtoul(label, &end, 10);
        if (!*label || *end || errno || id >= MODEL_MAX_LABELS) {
            cli_error(cmd, "%s:%" PRIu64 ": label '%s' is not a label id (0, 1, ...)", path, t.line_no, label);
            ok = false;
            break;
        }
        if (s->n == s->cap) {
            size_t ncap = s->cap ? s->cap * 2 : 1024;
            uint32_t *ids = realloc(s->ids, ncap * seq * sizeof(uint32_t));
            if (ids)
                s->ids = ids;
            uint32_t *len = realloc(s->lengths, ncap * sizeof(uint32_t));
            if (len)
                s->lengths = len;
            uint32_t *lab = realloc(s->labels, ncap * sizeof(uint32_t));
            if (lab)
                s->labels = lab;
            if (!ids || !len || !lab) {
                cli_error(cmd, "out of memory reading %s", path);
                ok = false;
                break;
            }
            s->cap = ncap;
        }
        const size_t text_len = strlen(text);
        s->digest = cli_digest(cli_digest(cli_digest(s->digest, label, strlen(label)), "\t", 1), text, text_len + 1);
        s->lengths[s->n] = tok_text_ids(vocab, text, text_len, seq, s->ids + s->n * seq);
        s->labels[s->n++] = (uint32_t)id;
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

/* classes.txt next to the TSV (what netlm dataset writes): line n names label n. *from_file:
 * whether there was one. */
static char **class_names(const char *tsv_path, uint32_t n, bool *from_file)
{
    char path[4096];
    const char *slash = strrchr(tsv_path, '/');
    snprintf(path, sizeof path, "%.*sclasses.txt", slash ? (int)(slash - tsv_path + 1) : 0, tsv_path);
    FILE *f = fopen(path, "r");
    *from_file = f != NULL;
    char **names = calloc(n, sizeof(char *));
    char line[1024];
    for (uint32_t i = 0; names && f && i < n && fgets(line, sizeof line, f); i++) {
        line[strcspn(line, "\r\n")] = '\0';
        names[i] = strdup(line);
    }
    if (f)
        fclose(f);
    for (uint32_t i = 0; names && i < n; i++)
        if (!names[i]) {
            char num[16];
            snprintf(num, sizeof num, "%u", i);
            names[i] = strdup(num);
        }
    return names;
}

/* Classifies every sample, on the CPU or (dev → device ≥ 0) with keep's CUDA engine at dev's
 * precision (struct cli_eval_gpu); fills the confusion matrix. With several processes each
 * classifies its share of the rows and every process gets the summed matrix. */
static bool evaluate(const char *cmd, struct model *m, const struct samples *s, uint32_t batch,
                     uint32_t threads, const struct cli_device *dev, struct cli_eval_gpu *keep,
                     const struct cli_scoring *sc, struct train_confusion *cm)
{
    char err[512];
    const uint32_t NL = model_get_config(m)->num_labels;
    struct model_runner *r = NULL;
    struct model_cuda *gpu = NULL;
    if (dev && dev->device >= 0) {
        const struct model_cuda_options o = {.device = dev->device,
                                             .precision = dev->bf16 ? MODEL_PRECISION_BF16 : MODEL_PRECISION_FP32,
                                             .max_batch = batch, .max_seq = s->seq, .graphs = true,
                                             .residual_bf16 = dev->residual_bf16};
        gpu = cli_eval_engine(m, &o, keep, err, sizeof err);
    } else {
        r = model_runner_create(m, batch, s->seq, 0, threads, err, sizeof err);
    }
    float *scores = malloc((size_t)batch * NL * sizeof(float));
    if ((!r && !gpu) || !scores || !train_confusion_init(cm, NL)) {
        if (!r && !gpu && dev && dev->device >= 0)
            cli_error(cmd, "--device %s: %s", dev->name, err);
        else
            cli_error(cmd, "%s", r || gpu ? "out of memory" : err);
        model_runner_free(r);
        free(scores);
        return false;
    }
    bool ok = true;
    for (struct cli_scoring_walk w = cli_scoring_begin(sc, s->n, batch); ok && cli_scoring_next(cmd, &w);) {
        const size_t i = w.row;
        const uint32_t nb = (uint32_t)w.count;
        ok = gpu ? model_cuda_classify(gpu, s->ids + i * s->seq, s->lengths + i, nb, s->seq, NULL, scores)
                 : model_classify(r, s->ids + i * s->seq, s->lengths + i, nb, s->seq, NULL, scores);
        for (uint32_t b = 0; ok && b < nb; b++) {
            const float *sc = scores + (size_t)b * NL;
            uint32_t best = 0;
            for (uint32_t k = 1; k < NL; k++)
                if (sc[k] > sc[best])
                    best = k;
            train_confusion_add(cm, s->labels[i + b], best);
        }
    }
    if (!ok && gpu)
        cli_error(cmd, "evaluation failed: %s", model_cuda_error(gpu));
    else if (!ok)
        cli_error(cmd, "evaluation failed (a label or token id outside the model)");
    if (ok && sc->world > 1) {
        cli_mpi_sum_u64(cm->counts, (size_t)NL * NL);
        cli_mpi_sum_u64(&cm->total, 1);
    }
    model_runner_free(r);
    free(scores);
    return ok;
}

/* A CSV field per RFC 4180: quoted, its quotes doubled, when it holds a comma, quote or line end
 * (a class name is outside text). */
static void csv_put(FILE *f, const char *s)
{
    if (!s[strcspn(s, ",\"\r\n")]) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (const char *p = s; *p; p++) {
        if (*p == '"')
            fputc('"', f);
        fputc(*p, f);
    }
    fputc('"', f);
}

/* prf.csv (per class), confusion.tsv, metrics.json and the confusion plot for the test set. */
static bool write_test_report(const char *cmd, const char *dir, const struct train_confusion *cm,
                              char **names, double seconds)
{
    struct train_class_metrics *pc = calloc(cm->classes, sizeof *pc);
    if (!pc)
        return false;
    double f1 = train_macro_f1(cm, pc), acc = train_accuracy(cm);
    char path[4096];
    struct cli_output out;
    bool ok = true;
    snprintf(path, sizeof path, "%s/prf.csv", dir);
    if ((ok = cli_output_open(cmd, path, &out))) {
        fprintf(out.fp, "label_id,label,precision,recall,f1,support\n");
        for (uint32_t k = 0; k < cm->classes; k++) {
            fprintf(out.fp, "%u,", k);
            csv_put(out.fp, names[k]);
            fprintf(out.fp, ",%.4f,%.4f,%.4f,%" PRIu64 "\n", pc[k].precision, pc[k].recall, pc[k].f1, pc[k].support);
        }
        ok = cli_output_commit(cmd, &out);
    }
    snprintf(path, sizeof path, "%s/confusion.tsv", dir);
    if (ok && (ok = cli_output_open(cmd, path, &out))) {
        fprintf(out.fp, "truth\\predicted");
        for (uint32_t k = 0; k < cm->classes; k++) {
            fputc('\t', out.fp);
            cli_tsv_put(out.fp, names[k]);
        }
        fputc('\n', out.fp);
        for (uint32_t i = 0; i < cm->classes; i++) {
            cli_tsv_put(out.fp, names[i]);
            for (uint32_t k = 0; k < cm->classes; k++)
                fprintf(out.fp, "\t%" PRIu64, cm->counts[(size_t)i * cm->classes + k]);
            fputc('\n', out.fp);
        }
        ok = cli_output_commit(cmd, &out);
    }
    snprintf(path, sizeof path, "%s/metrics.json", dir);
    if (ok && (ok = cli_output_open(cmd, path, &out))) {
        fprintf(out.fp, "{\"split\": \"test\", \"rows\": %" PRIu64 ", \"accuracy\": %.6f, \"macro_f1\": %.6f, "
                        "\"train_seconds\": %.1f, \"per_class\": [",
                cm->total, acc, f1, seconds);
        for (uint32_t k = 0; ok && k < cm->classes; k++) {
            fprintf(out.fp, "%s{\"label\": ", k ? ", " : "");
            ok = cli_json_string(out.fp, names[k]);
            fprintf(out.fp, ", \"precision\": %.4f, \"recall\": %.4f, \"f1\": %.4f, \"support\": %" PRIu64 "}",
                    pc[k].precision, pc[k].recall, pc[k].f1, pc[k].support);
        }
        fprintf(out.fp, "]}\n");
        if (ok) {
            ok = cli_output_commit(cmd, &out);
        } else {
            cli_output_abort(&out);
            cli_error(cmd, "out of memory writing %s", path);
        }
    }
    free(pc);
    return ok;
}

/* gnuplot draws the loss curve and the confusion matrix when it is installed; the numbers are
 * in the CSV/TSV files either way. */
static void draw_plots(const char *dir, uint32_t classes)
{
    if (!cli_have_gnuplot())
        return;
    char script[2048];
    snprintf(script, sizeof script, "%s/loss.csv", dir);
    const bool have_loss = access(script, R_OK) == 0;
    if (have_loss && !cli_plot_loss(dir, true))
        return;
    snprintf(script, sizeof script,
             "set datafile separator tab; set title 'test confusion (rows: truth, columns: predicted)';"
             " set bmargin 9; set lmargin 18; set xrange [-0.5:%u-0.5]; set yrange [%u-0.5:-0.5]; set xtics rotate by 90 right font ',8'; set ytics font ',8';"
             " set palette defined (0 'white', 1 'dark-blue'); set cblabel 'rows';"
             " plot @F matrix rowheaders columnheaders using 1:2:3 with image notitle",
             classes, classes);
    cli_gnuplot(dir, "confusion.png", "900,800", script, "confusion.tsv");
}

static int finetune_understanding(int argc, char **argv)
{
    static const char *const cmd = "finetune understanding";
    struct cli_opt opts[] = {
        {"pretrained-model-path", NULL, 0, "DIR", "start from this model (default: a fresh one from --config_path)", NULL},
        {"config-path", NULL, 0, "FILE", "config.json of a fresh model (Hugging Face or UER form)", NULL},
        {"vocab-path", NULL, 0, "FILE", "vocabulary (default: the model's, or the built-in one)", NULL},
        {"train-path", NULL, 0, "FILE", "training TSV (label\\ttext_a)", NULL},
        {"dev-path", NULL, 0, "FILE", "validation TSV: the best epoch on it is kept", NULL},
        {"test-path", NULL, 0, "FILE", "test TSV, evaluated with the best epoch", NULL},
        {"output-model-path", NULL, 'o', "DIR", "where the model, checkpoint, metrics and plots go", NULL},
        {"labels-num", NULL, 0, "N", "classes (default: the largest label in train + 1)", NULL},
        {"pooling", NULL, 0, "mean|first|last|max", "pooling of the final states (default mean; a kept pretrained head's own)", NULL},
        {"seq-length", NULL, 0, "N", "ids per input (default 128)", NULL},
        {"epochs-num", NULL, 0, "N", "epochs (default 10)", NULL},
        {"batch-size", NULL, 'b', "N", "sequences per step (default 32)", NULL},
        {"learning-rate", NULL, 0, "LR", "peak learning rate (default 2e-5, the seed's)", NULL},
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
    int rc = cli_parse(cmd, "--train_path T --dev_path D --test_path E "
                       "--output_model_path OUT (--pretrained_model_path M | --config_path C | --qwen_model_name Q) [OPTIONS]",
                       "Trains the classification head (and the whole model) on the seed's dataset TSVs. Each epoch\n"
                       "is evaluated on dev and the best is kept in OUT; test is evaluated with it. OUT also gets\n"
                       "metrics.json, prf.csv (per-class precision/recall/F1), confusion.tsv, loss.csv and, with\n"
                       "gnuplot, loss.png and confusion.png. OUT/checkpoint holds the last epoch (or the step a\n"
                       "signal stopped the run at) for --resume. With the dataset.json netlm dataset writes beside\n"
                       "the TSVs, the model records how its rows were tokenized (header mode, stride, packets), so\n"
                       "classify and the sensor tokenize alike.",
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
    /* the seed passes --config_path with --pretrained_model_path too: the model's own config wins */
    if (!pretrained && !config_path && !cli_get(opts, "qwen-model-name") && !cli_flag(opts, "resume")) {
        cli_error(cmd, "give --pretrained_model_path DIR, --config_path FILE (a fresh model) or --qwen_model_name "
                       "(a Hugging Face checkpoint), or --resume");
        return 2;
    }
    uint32_t labels_num, seq, epochs, batch, threads, report;
    double lr;
    uint64_t seed;
    double dropout;
    struct cli_finetune_args fa;
    static const char *const pool_names[] = {"mean", "first", "last", "max", NULL};
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int pooling = cli_choice(cmd, opts, "pooling", "mean", pool_names);
    if (pooling < 0 || !cli_finetune_args(cmd, opts, &fa) ||
        !cli_u32(cmd, opts, "labels-num", 0, 1, MODEL_MAX_LABELS, &labels_num) ||
        !cli_u32(cmd, opts, "seq-length", 128, 2, 65536, &seq) ||
        !cli_u32(cmd, opts, "epochs-num", 10, 1, 100000, &epochs) ||
        !cli_u32(cmd, opts, "batch-size", 32, 1, 65536, &batch) ||
        !cli_u32(cmd, opts, "threads", ncpu > 0 ? (uint32_t)ncpu : 1, 1, 1024, &threads) ||
        !cli_u32(cmd, opts, "report-steps", 100, 1, UINT32_MAX, &report) ||
        !cli_double(cmd, opts, "learning-rate", 2e-5, 0.0, 10.0, &lr) ||
        !cli_u64(cmd, opts, "seed", 7, 0, UINT64_MAX, &seed) || !cli_dropout_arg(cmd, opts, &dropout))
        return 2;
    struct cli_device where;
    if (!cli_device_arg(cmd, opts, &where))
        return 2;
    int rank, world;
    const int started = cli_finetune_start(cmd, &fa, &where, &rank, &world);
    if (started)
        return started;
    /* with several processes, rank 0 writes everything and speaks for all */
    const bool writer = rank == 0, quiet = cli_flag(opts, "quiet") || !writer, resume = fa.resume;
    int status = 1;
    char err[1024], path[4400];
    struct model *m = NULL;
    struct tok_vocab *vocab = NULL;
    struct samples train = {0}, dev = {0}, test = {0};
    struct trainer *tr = NULL;
    float *best_params = NULL;
    struct cli_eval_gpu eval_gpu = {0};
    uint32_t *order = NULL;
    char **names = NULL;
    FILE *loss_csv = NULL;
    char checkpoint[4000];
    snprintf(checkpoint, sizeof checkpoint, "%s/checkpoint", out_dir);

    /* how the rows were tokenized, when netlm dataset recorded it: the model keeps it */
    struct cli_dataset_settings dataset;
    if (!cli_dataset_settings_read(cmd, "understanding", train_path, dev_path, test_path, &dataset))
        goto done;
    /* the model: a checkpoint to resume, a pretrained one, a Hugging Face one, or a fresh one */
    const char *vocab_path;
    if (!(m = cli_finetune_model(cmd, opts, resume ? checkpoint : NULL, seed, path, sizeof path, &vocab_path)))
        goto done;
    const struct model_config *mc = model_get_config(m);
    vocab = vocab_path ? tok_vocab_load(vocab_path, err, sizeof err) : tok_vocab_builtin();
    if (!vocab) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    if (tok_vocab_size(vocab) > mc->vocab_size) {
        cli_error(cmd, "the vocabulary has %u tokens but the model only %u", tok_vocab_size(vocab), mc->vocab_size);
        goto done;
    }
    if (mc->arch == MODEL_ARCH_GPT2 && seq > mc->max_positions) {
        cli_error(cmd, "--seq_length %u exceeds the model's %u positions", seq, mc->max_positions);
        goto done;
    }
    if (!samples_load(cmd, train_path, vocab, seq, &train) || !samples_load(cmd, dev_path, vocab, seq, &dev) ||
        !samples_load(cmd, test_path, vocab, seq, &test))
        goto done;
    uint32_t max_label = 0;
    for (size_t i = 0; i < train.n; i++)
        max_label = train.labels[i] > max_label ? train.labels[i] : max_label;
    if (labels_num == 0)
        labels_num = max_label + 1;
    struct samples *sets[] = {&train, &dev, &test};
    const char *set_paths[] = {train_path, dev_path, test_path};
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < sets[k]->n; i++)
            if (sets[k]->labels[i] >= labels_num) {
                cli_error(cmd, "%s: label %u but --labels_num is %u", set_paths[k], sets[k]->labels[i], labels_num);
                goto done;
            }
    bool names_from_file;
    names = class_names(train_path, labels_num, &names_from_file);
    if (!names)
        goto done;
    /* a pretrained classifier with as many labels keeps its head (and, resumed, the checkpoint's) */
    const bool head_kept = resume || (pretrained && mc->num_labels == labels_num);
    const enum model_pooling head_pooling = mc->pooling;
    if (!head_kept && !model_set_labels(m, labels_num, names, seed + 1, err, sizeof err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    mc = model_get_config(m);
    struct model_config *mut = model_config_mut(m);
    uint32_t first_differing = labels_num;
    for (uint32_t k = 0; head_kept && names_from_file && k < labels_num && first_differing == labels_num; k++)
        if (strcmp(mc->labels[k], names[k]) != 0)
            first_differing = k;
    const bool names_differ = first_differing < labels_num;
    if (names_differ && !resume)
        cli_warn(cmd, "the classes.txt beside %s names the labels otherwise than %s (label %u: '%s', was '%s'): its "
                      "classification head is kept, label ids as trained, under classes.txt's names", train_path,
                 pretrained, first_differing, names[first_differing], mc->labels[first_differing]);
    /* the dataset's names are the ones prf.csv reports: classify and the sensor must print the same */
    for (uint32_t k = 0; names_differ && k < labels_num; k++) {
        char *copy = strdup(names[k]);
        if (!copy) {
            cli_error(cmd, "out of memory");
            goto done;
        }
        free(mut->labels[k]);
        mut->labels[k] = copy;
    }
    mut->task = MODEL_TASK_CLASSIFY;
    const enum model_pooling asked = (enum model_pooling)(pooling == 0 ? MODEL_POOL_MEAN : pooling == 1
                                                          ? MODEL_POOL_FIRST : pooling == 2 ? MODEL_POOL_LAST
                                                          : MODEL_POOL_MAX);
    /* a kept head was trained on one pooling's states: without --pooling it keeps that one */
    if (!head_kept || cli_get(opts, "pooling"))
        mut->pooling = asked;
    if (head_kept && !resume && cli_get(opts, "pooling") && asked != head_pooling)
        cli_warn(cmd, "--pooling %s: %s's head, which is kept, was trained with --pooling %s", model_pooling_name(asked),
                 pretrained, model_pooling_name(head_pooling));
    mut->seq_length = seq;
    snprintf(mut->tokenizer.vocab, sizeof mut->tokenizer.vocab, "%s", vocab_path ? "vocab.txt" : "builtin");
    cli_dataset_settings_apply(&dataset, mut);

    tr = cli_trainer(cmd, m, &where, where.device, batch, seq, threads, dropout, seed);
    if (!tr || !cli_trainer_join(cmd, tr, rank, world, where.device, fa.world_size != 0))
        goto done;
    const size_t n_params = trainer_param_count(tr);
    size_t n_floats = 0;
    best_params = malloc((n_params ? n_params : 1) * sizeof(float));
    order = malloc(train.n * sizeof(uint32_t));
    uint32_t *b_ids = malloc((size_t)batch * seq * sizeof(uint32_t)), *b_len = malloc(batch * sizeof(uint32_t));
    uint32_t *b_lab = malloc(batch * sizeof(uint32_t));
    if (!best_params || !order || !b_ids || !b_len || !b_lab) {
        cli_error(cmd, "out of memory");
        free(b_ids);
        free(b_len);
        free(b_lab);
        goto done;
    }
    /* a step trains on world × batch sequences of the epoch's order; process rank on its slice */
    struct cli_finetune_run run = {.cmd = cmd, .out_dir = out_dir, .vocab_path = vocab_path, .writer = writer,
                                   .quiet = quiet, .rank = rank, .seed = seed, .epochs = epochs, .report = report,
                                   .lr = lr, .best = best_params};
    snprintf(run.task_settings, sizeof run.task_settings,
             "task=understanding train=%zu:%016" PRIx64 " seq_length=%u labels_num=%u pooling=%s", train.n,
             train.digest, seq, labels_num, model_pooling_name(mc->pooling));
    if (!cli_finetune_begin(&run, &fa, tr, m, train.n, batch, world,
                            "step,loss,learning_rate,dev_accuracy,dev_macro_f1", &loss_csv)) {
        status = run.refused ? 2 : 1;
        goto done_batch;
    }
    uint64_t step = run.start_step;
    if (!quiet) {
        fprintf(stderr, "netlm %s: %s %u x %u, %.2fM parameters, %zu train / %zu dev / %zu test rows, %u labels, "
                        "%" PRIu64 " steps\n", cmd, model_arch_name(mc->arch), mc->layers, mc->hidden,
                model_parameter_count(m) / 1e6, train.n, dev.n, test.n, labels_num, run.total_steps);
        cli_trainer_report(cmd, where.device, where.bf16, threads);
        if (world > 1)
            fprintf(stderr, "netlm %s: %d processes, %" PRIu64 " sequences per step\n", cmd, world, run.global_batch);
    }
    /* ^C, systemctl stop or a batch scheduler's SIGTERM: the step under way ends, a checkpoint of
     * it is written and --resume goes on from it mid-epoch */
    cli_stop_arm(true);
    for (uint64_t epoch = run.start_epoch; epoch < epochs; epoch++) {
        cli_epoch_order(seed, epoch, train.n, order);
        for (uint64_t s = epoch == run.start_epoch ? run.start_in_epoch : 0; s < run.steps_per_epoch; s++) {
            size_t lo, hi;
            cli_finetune_slice(&run, s, order, train.n, train.lengths, &lo, &hi);
            uint32_t nb = 0;
            for (size_t i = lo; i < hi; i++, nb++) {
                const uint32_t k = order[i];
                memcpy(b_ids + (size_t)nb * seq, train.ids + (size_t)k * seq, seq * sizeof(uint32_t));
                b_len[nb] = train.lengths[k];
                b_lab[nb] = train.labels[k];
            }
            /* a sequence's place in the epoch numbers its dropout masks, whichever process reads it */
            struct train_batch tb = {.ids = b_ids, .lengths = b_len, .batch = nb, .seq = seq, .labels = b_lab,
                                     .sample_base = epoch * train.n + lo};
            double loss;
            const float step_lr = train_schedule_lr(fa.schedule, (float)lr, step, run.warmup_steps, run.total_steps);
            if (!cli_finetune_step(&run, tr, TRAIN_CLASSIFY, &tb, nb, world, &fa, step, step_lr, threads, &loss))
                goto done_batch;
            step++;
            if (loss_csv)
                fprintf(loss_csv, "%" PRIu64 ",%.6f,%.6g,-1,-1\n", step, loss, step_lr);
            cli_finetune_stepped(&run, epoch, step, loss, step_lr);
            if (cli_finetune_interrupted(&run, tr, m, step, epoch, false, loss_csv, &status))
                goto done_batch;
        }
        struct train_confusion cm = {0};
        if (!trainer_sync_model(tr)) {
            cli_error(cmd, "%s", trainer_error(tr));
            goto done_batch;
        }
        const struct cli_scoring dev_scoring = {.rank = rank, .world = world, .what = "dev", .quiet = quiet};
        if (!evaluate(cmd, m, &dev, batch, threads, &where, &eval_gpu, &dev_scoring, &cm))
            goto done_batch;
        const double acc = train_accuracy(&cm), f1 = train_macro_f1(&cm, NULL);
        train_confusion_release(&cm);
        if (loss_csv) {
            fprintf(loss_csv, "%" PRIu64 ",,,%.6f,%.6f\n", step, acc, f1);
            fflush(loss_csv);
        }
        if (!quiet)
            fprintf(stderr, "netlm %s: epoch %" PRIu64 "/%u dev accuracy %.4f macro-F1 %.4f%s\n", cmd, epoch + 1, epochs,
                    acc, f1, acc > run.best_dev ? " (best)" : "");
        bool stop;
        if (!cli_finetune_epoch_end(&run, &fa, tr, m, step, epoch, acc, &stop))
            goto done_batch;
        if (stop) {
            status = 0;
            goto done_batch;
        }
        if (cli_finetune_interrupted(&run, tr, m, step, epoch, true, loss_csv, &status))
            goto done_batch;
    }
    cli_stop_arm(false);
    const double seconds = cli_now() - run.t0;
    /* test with the best epoch */
    memcpy(model_params(m, &n_floats), best_params, n_params * sizeof(float));
    struct train_confusion cm = {0};
    const struct cli_scoring test_scoring = {.rank = rank, .world = world, .what = "test", .quiet = quiet};
    if (!evaluate(cmd, m, &test, batch, threads, &where, &eval_gpu, &test_scoring, &cm))
        goto done_batch;
    if (!writer) {
        train_confusion_release(&cm);
        status = 0;
        goto done_batch;
    }
    if (vocab_path) {
        char dst[4096];
        snprintf(dst, sizeof dst, "%s/vocab.txt", out_dir);
        if (strcmp(vocab_path, dst) != 0 && !cli_copy_file(cmd, vocab_path, dst)) {
            train_confusion_release(&cm);
            goto done_batch;
        }
    }
    fclose(loss_csv);
    loss_csv = NULL;
    if (!write_test_report(cmd, out_dir, &cm, names, seconds)) {
        train_confusion_release(&cm);
        goto done_batch;
    }
    draw_plots(out_dir, labels_num);
    fprintf(stderr, "netlm %s: test accuracy %.4f, macro-F1 %.4f (%" PRIu64 " rows; best dev accuracy %.4f; %.0f s)\n",
            cmd, train_accuracy(&cm), train_macro_f1(&cm, NULL), cm.total, run.best_dev, seconds);
    train_confusion_release(&cm);
    status = 0;
done_batch:
    cli_stop_arm(false);
    free(b_ids);
    free(b_len);
    free(b_lab);
done:
    if (loss_csv)
        fclose(loss_csv);
    for (uint32_t i = 0; names && i < labels_num; i++)
        free(names[i]);
    free(names);
    free(order);
    free(best_params);
    model_cuda_free(eval_gpu.engine);
    trainer_free(tr);
    samples_free(&train);
    samples_free(&dev);
    samples_free(&test);
    tok_vocab_free(vocab);
    model_free(m);
    cli_mpi_stop(status != 0);
    return status;
}

int cmd_eval(int argc, char **argv)
{
    static const char *const cmd = "eval";
    struct cli_opt opts[] = {
        {"model", "load_model_path", 'm', "DIR", "classification model directory", NULL},
        {"test-path", NULL, 'i', "FILE", "labelled dataset TSV (label\ttext_a)", NULL},
        {"output-dir", NULL, 'o', "DIR", "also write metrics.json, prf.csv, confusion.tsv (and confusion.png) here", NULL},
        {"vocab-path", NULL, 0, "FILE", "vocabulary (default: the model's own)", NULL},
        {"batch-size", NULL, 'b', "N", "rows per forward pass (default 32)", NULL},
        {"threads", NULL, 't', "N", "CPU threads (default: all online CPUs)", NULL},
        {"device", NULL, 0, "cpu|cuda[:N]", "where the model runs (default cpu)", NULL},
        {"precision", NULL, 0, "bf16|fp32", "on a GPU: bf16 (default) or fp32", NULL},
        CLI_RESIDUAL_OPTION,
        {0},
    };
    const char **pos = NULL;
    int npos = 0;
    int rc = cli_parse(cmd, "--model DIR --test_path FILE.tsv [--output-dir DIR]",
                       "Accuracy, macro-F1 and the per-class precision, recall and F1 of a classification model\n"
                       "on a labelled TSV, as finetune reports them for its test set.",
                       opts, argc, argv, &pos, &npos);
    if (rc != CLI_PARSED)
        return rc == CLI_HELP_SHOWN ? 0 : 2;
    free(pos);
    const char *dir = cli_get(opts, "model"), *test_path = cli_get(opts, "test-path");
    const char *out_dir = cli_get(opts, "output-dir"), *vocab_path = cli_get(opts, "vocab-path");
    uint32_t batch, threads;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (!dir || !test_path) {
        cli_error(cmd, "--model and --test_path are required");
        return 2;
    }
    struct cli_device where;
    if (!cli_u32(cmd, opts, "batch-size", 32, 1, 4096, &batch) ||
        !cli_u32(cmd, opts, "threads", ncpu > 0 ? (uint32_t)ncpu : 1, 1, 1024, &threads) ||
        !cli_device_arg(cmd, opts, &where) || !cli_residual_arg(cmd, opts, &where))
        return 2;
    char err[1024], path[4200];
    int status = 1;
    struct samples test = {0};
    struct tok_vocab *vocab = NULL;
    struct train_confusion cm = {0};
    struct cli_eval_gpu eval_gpu = {0};
    struct stat out_st;
    if (out_dir && stat(out_dir, &out_st) == 0 && !S_ISDIR(out_st.st_mode)) { /* known before the work */
        cli_error(cmd, "--output-dir %s: exists and is not a folder", out_dir);
        return 2;
    }
    struct model *m = model_load(dir, err, sizeof err);
    if (!m) {
        cli_error(cmd, "%s", err);
        return 1;
    }
    const struct model_config *mc = model_get_config(m);
    if (mc->num_labels == 0) {
        cli_error(cmd, "%s: not a classification model", dir);
        goto done;
    }
    if (!cli_vocab_fits_model(cmd, mc, vocab_path, dir)) {
        status = 2; /* a usage error, as classify's */
        goto done;
    }
    vocab_path = cli_model_vocab(mc, vocab_path, dir, path, sizeof path);
    vocab = vocab_path ? tok_vocab_load(vocab_path, err, sizeof err) : tok_vocab_builtin();
    if (!vocab) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    if (!samples_load(cmd, test_path, vocab, mc->seq_length, &test))
        goto done;
    for (size_t i = 0; i < test.n; i++)
        if (test.labels[i] >= mc->num_labels) {
            cli_error(cmd, "%s: label %u but the model has %u labels", test_path, test.labels[i], mc->num_labels);
            goto done;
        }
    const struct cli_scoring scoring = {.rank = 0, .world = 1, .what = test_path, .quiet = false};
    if (!evaluate(cmd, m, &test, batch, threads, &where, &eval_gpu, &scoring, &cm))
        goto done;
    struct train_class_metrics *pc = calloc(mc->num_labels, sizeof *pc);
    if (!pc)
        goto done;
    double f1 = train_macro_f1(&cm, pc);
    printf("label_id\tlabel\tprecision\trecall\tf1\tsupport\n");
    for (uint32_t k = 0; k < mc->num_labels; k++) {
        printf("%u\t", k);
        cli_tsv_put(stdout, mc->labels[k]);
        printf("\t%.4f\t%.4f\t%.4f\t%" PRIu64 "\n", pc[k].precision, pc[k].recall, pc[k].f1, pc[k].support);
    }
    free(pc);
    fprintf(stderr, "netlm %s: %" PRIu64 " rows, accuracy %.4f, macro-F1 %.4f\n", cmd, cm.total,
            train_accuracy(&cm), f1);
    if (out_dir) {
        if (!cli_make_folders(cmd, "--output-dir", out_dir, false))
            goto done;
        if (!write_test_report(cmd, out_dir, &cm, mc->labels, 0.0))
            goto done;
        draw_plots(out_dir, mc->num_labels);
    }
    status = 0;
done:
    train_confusion_release(&cm);
    samples_free(&test);
    tok_vocab_free(vocab);
    model_cuda_free(eval_gpu.engine);
    model_free(m);
    return status;
}

int cmd_finetune(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "understanding") == 0)
        return finetune_understanding(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "generation") == 0)
        return finetune_generation(argc - 1, argv + 1);
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("usage: netlm finetune understanding|generation [OPTIONS]\n\n"
               "  understanding   a classifier on the seed's dataset TSVs ('netlm finetune understanding --help')\n"
               "  generation      header-field generation on the seed's generation TSVs ('... generation --help')\n");
        return 0;
    }
    fprintf(stderr, "netlm finetune: expected 'understanding' or 'generation' (see 'netlm finetune --help')\n");
    return 2;
}
