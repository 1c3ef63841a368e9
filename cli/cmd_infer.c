/* cmd_infer.c — `netlm classify` and `netlm generate`: a model directory run over a dataset TSV
 * (the seed's label\ttext_a files) or, for classify, over the sessions of captures tokenized with
 * the model's own tokenizer settings. Rows stream through in batches, on the CPU or (--device
 * cuda[:N]) on a GPU; metrics go to stderr. classify also takes the seed's inference command
 * (run_classifier_infer.py: --load_model_path, --prediction_path, --labels_num, --config_path,
 * --output_logits, --output_prob) and then writes the seed's prediction file. Inputs and the
 * output are checked before the model is loaded and before anything is written. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "model/model.h"
#include "sensor/sensor.h"
#include "tokenizer/tokenizer.h"
#include "train/train.h"

/* ---- what both commands share ---- */

struct infer {
    const char *cmd;
    struct model *model;
    const struct model_config *cfg;
    struct tok_vocab *vocab;
    struct model_runner *runner; /* the CPU model, or NULL when gpu runs it */
    struct model_cuda *gpu; /* --device cuda[:N]: the model on a GPU instead */
    struct cli_device where; /* --device, --precision, --residual */
    uint32_t batch, seq, threads, top_k;
    bool json;
    bool seed_format;             /* run_classifier_infer.py's file: label id (+ logits, prob) */
    bool output_logits, output_prob;
    bool emit_tokens; /* classify captures, JSON: the input ids as "token_ids" (compare with replay) */
    FILE *out;
    /* the current batch */
    uint32_t n;
    uint32_t *ids, *lengths;
    int64_t *truth;      /* classify: label id or -1 */
    char **targets;      /* generate: the target text or NULL */
    uint64_t *row_no;    /* 1-based TSV line */
    float *scores;
    uint32_t *generated, *generated_len;
    uint32_t max_new;
    struct model_sampling sampling;
    struct train_confusion confusion;
    uint64_t rows, labelled, exact;
    bool failed;
};

static uint32_t default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (uint32_t)n : 1;
}

/* The model and its vocabulary: --vocab_path, else the one config.json names. */
static bool open_model(struct infer *in, const char *dir, const char *vocab_path)
{
    char err[1024];
    in->model = model_load(dir, err, sizeof err);
    if (!in->model) {
        cli_error(in->cmd, "%s", err);
        return false;
    }
    in->cfg = model_get_config(in->model);
    if (!cli_vocab_fits_model(in->cmd, in->cfg, vocab_path, dir))
        return false;
    char path[4096];
    vocab_path = cli_model_vocab(in->cfg, vocab_path, dir, path, sizeof path);
    in->vocab = vocab_path ? tok_vocab_load(vocab_path, err, sizeof err) : tok_vocab_builtin();
    if (!in->vocab) {
        cli_error(in->cmd, "%s", err);
        return false;
    }
    if (tok_vocab_size(in->vocab) > in->cfg->vocab_size) {
        cli_error(in->cmd, "%s: the vocabulary has %u tokens but the model only %u (vocab_size)",
                  vocab_path ? vocab_path : "builtin vocabulary", tok_vocab_size(in->vocab),
                  in->cfg->vocab_size);
        return false;
    }
    return true;
}

/* The batch buffers, and the CPU runner unless open_gpu put the model on a GPU. */
static bool alloc_batch(struct infer *in, uint32_t kv_tokens)
{
    char err[512];
    if (!in->gpu) {
        in->runner = model_runner_create(in->model, in->batch, in->seq, kv_tokens, in->threads, err,
                                         sizeof err);
        if (!in->runner) {
            cli_error(in->cmd, "%s", err);
            return false;
        }
    }
    size_t slots = (size_t)in->batch * in->seq;
    in->ids = calloc(slots, sizeof(uint32_t));
    in->lengths = calloc(in->batch, sizeof(uint32_t));
    in->truth = calloc(in->batch, sizeof(int64_t));
    in->targets = calloc(in->batch, sizeof(char *));
    in->row_no = calloc(in->batch, sizeof(uint64_t));
    in->scores = calloc((size_t)in->batch * (in->cfg->num_labels ? in->cfg->num_labels : 1), sizeof(float));
    in->generated = calloc((size_t)in->batch * (in->max_new ? in->max_new : 1), sizeof(uint32_t));
    in->generated_len = calloc(in->batch, sizeof(uint32_t));
    if (!in->ids || !in->lengths || !in->truth || !in->targets || !in->row_no || !in->scores ||
        !in->generated || !in->generated_len ||
        (in->cfg->num_labels && !train_confusion_init(&in->confusion, in->cfg->num_labels))) {
        cli_error(in->cmd, "out of memory");
        return false;
    }
    return true;
}

/* --device cuda[:N]: the CUDA engine for batches of up to in->batch × in->seq, one CUDA graph per
 * batch bucket; kv_tokens > 0 (generate): with a KV cache of that many positions per row. */
static bool open_gpu(struct infer *in, uint32_t kv_tokens)
{
    const struct cli_device *where = &in->where;
    if (where->device < 0)
        return true;
    struct model_cuda_options o = {.device = where->device,
                                   .precision = where->bf16 ? MODEL_PRECISION_BF16 : MODEL_PRECISION_FP32,
                                   .max_batch = in->batch, .max_seq = in->seq, .graphs = true,
                                   .residual_bf16 = where->residual_bf16, .kv_tokens = kv_tokens};
    char err[512];
    in->gpu = model_cuda_create(in->model, &o, err, sizeof err);
    if (!in->gpu) {
        cli_error(in->cmd, "--device %s: %s", where->name, err);
        return false;
    }
    return true;
}

static void infer_release(struct infer *in)
{
    model_cuda_free(in->gpu);
    for (uint32_t i = 0; in->targets && i < in->batch; i++)
        free(in->targets[i]);
    free(in->ids);
    free(in->lengths);
    free(in->truth);
    free(in->targets);
    free(in->row_no);
    free(in->scores);
    free(in->generated);
    free(in->generated_len);
    train_confusion_release(&in->confusion);
    model_runner_free(in->runner);
    tok_vocab_free(in->vocab);
    model_free(in->model);
}


/* The seed's prediction row: the label id, then (as asked) the logits and the probabilities,
 * each a space-separated list. The engine returns probabilities; their logarithm is the
 * seed's logits less the row's log-sum-exp, which is the same ranking and the same softmax. */
static void write_seed_row(struct infer *in, const float *prob, uint32_t best)
{
    const uint32_t n = in->cfg->num_labels;
    fprintf(in->out, "%u", best);
    if (in->output_logits)
        for (uint32_t i = 0; i < n; i++)
            fprintf(in->out, "%c%.9g", i ? ' ' : '\t', (double)logf(prob[i]));
    if (in->output_prob)
        for (uint32_t i = 0; i < n; i++)
            fprintf(in->out, "%c%.9g", i ? ' ' : '\t', (double)prob[i]);
    fputc('\n', in->out);
}

/* One classification result; prefix is what the row is (already written, tab-ended for TSV,
 * "{...," for JSON). */
static void write_classification(struct infer *in, uint32_t b)
{
    const float *s = in->scores + (size_t)b * in->cfg->num_labels;
    uint32_t best[16];
    uint32_t k = model_top_labels(s, in->cfg->num_labels, in->top_k, best);
    const char *const *names = (const char *const *)in->cfg->labels;
    if (in->seed_format) {
        write_seed_row(in, s, best[0]);
    } else if (in->json) {
        fprintf(in->out, "\"label_id\":%u,\"label\":", best[0]);
        cli_json_string(in->out, names[best[0]]);
        fprintf(in->out, ",\"score\":%.6f,\"top_k\":[", s[best[0]]);
        for (uint32_t i = 0; i < k; i++) {
            fprintf(in->out, "%s{\"label_id\":%u,\"label\":", i ? "," : "", best[i]);
            cli_json_string(in->out, names[best[i]]);
            fprintf(in->out, ",\"score\":%.6f}", s[best[i]]);
        }
        fputs("]}\n", in->out);
    } else {
        fprintf(in->out, "%u\t", best[0]);
        cli_tsv_put(in->out, names[best[0]]);
        fprintf(in->out, "\t%.6f\t", s[best[0]]);
        for (uint32_t i = 0; i < k; i++) {
            if (i)
                fputc(',', in->out);
            cli_tsv_put(in->out, names[best[i]]);
            fprintf(in->out, ":%.6f", s[best[i]]);
        }
        fputc('\n', in->out);
    }
    if (in->truth[b] >= 0) {
        train_confusion_add(&in->confusion, (uint32_t)in->truth[b], best[0]);
        in->labelled++;
    }
}

/* A TSV label: the label id, or a label name of the model. */
static bool label_id(const struct model_config *cfg, const char *label, int64_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(label, &end, 10);
    if (*label && !*end && !errno && v < cfg->num_labels) {
        *out = (int64_t)v;
        return true;
    }
    for (uint32_t i = 0; i < cfg->num_labels; i++)
        if (!strcmp(cfg->labels[i], label)) {
            *out = i;
            return true;
        }
    return false;
}

/* ---- classify ---- */

static bool classify_batch(struct infer *in, const char *const *row_prefix)
{
    if (in->n == 0)
        return true;
    if (in->gpu) {
        if (!model_cuda_classify(in->gpu, in->ids, in->lengths, in->n, in->seq, NULL, in->scores)) {
            cli_error(in->cmd, "%s", model_cuda_error(in->gpu));
            return false;
        }
    } else if (!model_classify(in->runner, in->ids, in->lengths, in->n, in->seq, NULL, in->scores)) {
        cli_error(in->cmd, "the model rejected a batch (token ids outside its vocabulary?)");
        return false;
    }
    for (uint32_t b = 0; b < in->n; b++) {
        if (in->json)
            fprintf(in->out, "{%s,", row_prefix[b]);
        else if (!in->seed_format)
            fprintf(in->out, "%s\t", row_prefix[b]);
        write_classification(in, b);
    }
    in->rows += in->n;
    in->n = 0;
    return true;
}

static void report_metrics(struct infer *in)
{
    if (in->labelled == 0) {
        fprintf(stderr, "netlm %s: %" PRIu64 " rows classified\n", in->cmd, in->rows);
        return;
    }
    double f1 = train_macro_f1(&in->confusion, NULL);
    fprintf(stderr, "netlm %s: %" PRIu64 " rows, accuracy %.4f, macro-F1 %.4f (%" PRIu64 " labelled)\n",
            in->cmd, in->rows, train_accuracy(&in->confusion), f1, in->labelled);
}

/* Sessions of captures, kept until every file is read (then classified in batches). */
struct session_rows {
    pthread_mutex_t lock;
    struct infer *in;
    const struct tok_settings *tok;
    char **names; /* the file column of each input, escaped for the format (JSON or TSV) */
    volatile int current_file;
    uint32_t *ids, *lengths;
    char **desc;
    size_t n, cap;
    bool oom;
};

static const char *proto_name(uint8_t p, char *buf)
{
    switch (p) {
    case 6: return "TCP";
    case 17: return "UDP";
    case 1: return "ICMP";
    case 58: return "IPv6-ICMP";
    case 132: return "SCTP";
    default: snprintf(buf, 8, "%u", p); return buf;
    }
}

static void on_session(const struct ft_session *s, int worker, void *user)
{
    (void)worker;
    struct session_rows *sr = user;
    struct infer *in = sr->in;
    uint32_t ids_tmp[4096];
    uint32_t *ids = in->seq <= 4096 ? ids_tmp : malloc(in->seq * sizeof(uint32_t));
    if (!ids) {
        sr->oom = true;
        return;
    }
    uint32_t len = tok_session_ids(in->vocab, sr->tok, s, ids);
    char src[INET6_ADDRSTRLEN] = "", dst[INET6_ADDRSTRLEN] = "", pbuf[8];
    int af = s->ip_version == 6 ? AF_INET6 : AF_INET;
    if (s->ip_version) {
        inet_ntop(af, s->src_addr, src, sizeof src);
        inet_ntop(af, s->dst_addr, dst, sizeof dst);
    }
    const char *file = sr->names[sr->current_file];
    char desc[8192 + 12 * 4096];
    if (in->json) {
        snprintf(desc, sizeof desc,
                 "\"file\":\"%s\",\"first_frame\":%" PRIu64 ",\"proto\":\"%s\",\"src_ip\":\"%s\",\"src_port\":%u,"
                 "\"dest_ip\":\"%s\",\"dest_port\":%u,\"packets\":%" PRIu64 ",\"tokens\":%u",
                 file, s->first_frame, proto_name(s->proto, pbuf), src, s->src_port, dst, s->dst_port,
                 s->pkts[0] + s->pkts[1], len);
        if (in->emit_tokens) {
            size_t k = strlen(desc);
            k += (size_t)snprintf(desc + k, sizeof desc - k, ",\"token_ids\":[");
            for (uint32_t i = 0; i < len && k + 16 < sizeof desc; i++)
                k += (size_t)snprintf(desc + k, sizeof desc - k, i ? ",%u" : "%u", ids[i]);
            snprintf(desc + k, sizeof desc - k, "]");
        }
    } else {
        snprintf(desc, sizeof desc, "%s\t%" PRIu64 "\t%s\t%s\t%u\t%s\t%u\t%" PRIu64, file, s->first_frame,
                 proto_name(s->proto, pbuf), src, s->src_port, dst, s->dst_port, s->pkts[0] + s->pkts[1]);
    }
    pthread_mutex_lock(&sr->lock);
    if (sr->n == sr->cap) {
        size_t ncap = sr->cap ? sr->cap * 2 : 1024;
        uint32_t *nids = realloc(sr->ids, ncap * in->seq * sizeof(uint32_t));
        if (nids)
            sr->ids = nids;
        uint32_t *nlen = realloc(sr->lengths, ncap * sizeof(uint32_t));
        if (nlen)
            sr->lengths = nlen;
        char **ndesc = realloc(sr->desc, ncap * sizeof(char *));
        if (ndesc)
            sr->desc = ndesc;
        if (nids && nlen && ndesc)
            sr->cap = ncap;
    }
    char *d = sr->n < sr->cap ? strdup(desc) : NULL;
    if (d) {
        memcpy(sr->ids + sr->n * in->seq, ids, in->seq * sizeof(uint32_t));
        sr->lengths[sr->n] = len;
        sr->desc[sr->n++] = d;
    } else {
        sr->oom = true;
    }
    pthread_mutex_unlock(&sr->lock);
    if (ids != ids_tmp)
        free(ids);
}

/* The model's tokenizer settings: the sensor's mapping, so that `netlm classify` and the sensor
 * tokenize a session identically by construction. */
static bool model_tok_settings(struct infer *in, struct tok_settings *tok)
{
    char err[512];
    if (!sensor_tok_settings_from_model(in->cfg, in->seq, tok, err, sizeof err)) {
        cli_error(in->cmd, "%s", err);
        return false;
    }
    return true;
}

/* The sessions of the captures in files (collected, and their names checked, before the model
 * was loaded), tokenized as the model was trained; fcfg holds the flow options. */
static int classify_captures(struct infer *in, const struct cli_opt *opts, struct ft_config *fcfg,
                             char **files, int n_files, uint64_t total_bytes)
{
    struct tok_settings tok;
    if (!model_tok_settings(in, &tok))
        return 1;
    fcfg->packets_per_session = tok.packets;
    fcfg->bytes_per_packet = sensor_bytes_per_packet(&tok);
    struct session_rows sr = {.in = in, .tok = &tok};
    pthread_mutex_init(&sr.lock, NULL);
    char err[512];
    struct ft_assembler *as = NULL;
    int status = 1;
    /* The file names are the one free-form field of a row: escaped once, not per session. */
    sr.names = cli_escape_names(files, n_files, in->json, NULL);
    if (!sr.names)
        cli_error(in->cmd, "out of memory");
    else if (!(as = ft_assembler_create(fcfg, on_session, &sr, err, sizeof err))) {
        cli_error(in->cmd, "%s", err);
    } else if (cli_assemble_files(in->cmd, as, files, n_files, total_bytes, cli_flag(opts, "quiet"),
                                  &sr.current_file) == 0) {
        if (sr.oom) {
            cli_error(in->cmd, "out of memory while collecting sessions");
        } else {
            status = 0;
            struct cli_progress progress;
            cli_progress_start(&progress, in->cmd, sr.n, cli_flag(opts, "quiet"));
            for (size_t i = 0; i < sr.n && status == 0; i += in->batch) {
                uint32_t n = (uint32_t)(sr.n - i < in->batch ? sr.n - i : in->batch);
                for (uint32_t b = 0; b < n; b++) {
                    memcpy(in->ids + (size_t)b * in->seq, sr.ids + (i + b) * in->seq, in->seq * sizeof(uint32_t));
                    in->lengths[b] = sr.lengths[i + b];
                    in->truth[b] = -1;
                }
                in->n = n;
                if (!classify_batch(in, (const char *const *)sr.desc + i))
                    status = 1;
                cli_progress_update(&progress, i + n, i + n, "sessions");
            }
            cli_progress_end(&progress, sr.n, sr.n, "sessions");
        }
    }
    if (as)
        ft_assembler_destroy(as);
    for (size_t i = 0; i < sr.n; i++)
        free(sr.desc[i]);
    free(sr.desc);
    if (sr.names)
        cli_free_files(sr.names, n_files);
    free(sr.ids);
    free(sr.lengths);
    pthread_mutex_destroy(&sr.lock);
    return status;
}

/* The rows of t (opened, its header read, before the model was loaded). */
static int classify_tsv(struct infer *in, struct cli_tsv *t, bool quiet)
{
    const char *path = t->path;
    int status = 1;
    char (*prefixes)[32] = malloc((size_t)in->batch * sizeof *prefixes);
    const char **prefix_ptr = malloc((size_t)in->batch * sizeof *prefix_ptr);
    if (!prefixes || !prefix_ptr) {
        cli_error(in->cmd, "out of memory");
        goto done;
    }
    struct cli_progress progress;
    cli_progress_start(&progress, in->cmd, t->size, quiet);
    char *label, *text;
    int r;
    while ((r = cli_tsv_next(in->cmd, t, &label, &text)) > 0) {
        uint32_t b = in->n;
        in->truth[b] = -1;
        if (label && *label && !label_id(in->cfg, label, &in->truth[b])) {
            cli_error(in->cmd, "%s:%" PRIu64 ": label '%s' is neither a label id below %u nor a label name of the model",
                      path, t->line_no, label, in->cfg->num_labels);
            goto done;
        }
        in->lengths[b] = tok_text_ids(in->vocab, text, strlen(text), in->seq, in->ids + (size_t)b * in->seq);
        snprintf(prefixes[b], sizeof prefixes[b], in->json ? "\"row\":%" PRIu64 : "%" PRIu64, t->line_no - 1);
        prefix_ptr[b] = prefixes[b];
        if (++in->n == in->batch) {
            if (!classify_batch(in, prefix_ptr))
                goto done;
            cli_progress_update(&progress, t->done, in->rows, "rows");
        }
    }
    if (r < 0 || !classify_batch(in, prefix_ptr))
        goto done;
    cli_progress_end(&progress, t->done, in->rows, "rows");
    status = 0;
done:
    free(prefixes);
    free(prefix_ptr);
    return status;
}

/* Options both commands take. */
#define INFER_OPTIONS                                                                                        \
    {"model", "load_model_path", 'm', "DIR", "model directory (config.json + model.safetensors)", NULL},     \
    {"test-path", NULL, 'i', "FILE", "dataset TSV with a text_a column (label\\ttext_a, or text_a)", NULL},    \
    {"vocab-path", NULL, 0, "FILE", "vocabulary (default: the model's own)", NULL},                          \
    {"seq-length", NULL, 0, "N", "ids per input, [CLS] and [SEP] included (default: the model's)", NULL},    \
    {"batch-size", NULL, 'b', "N", "rows per forward pass (default 32)", NULL},                               \
    {"threads", NULL, 't', "N", "CPU threads (default: all online CPUs)", NULL},                             \
    {"device", NULL, 0, "cpu|cuda[:N]", "where the model runs (default cpu)", NULL},                          \
    {"precision", NULL, 0, "bf16|fp32", "GPU arithmetic: bf16 with fp32 accumulation, or fp32 (default bf16)", NULL}, \
    CLI_RESIDUAL_OPTION

/* The options that name no file: a bad one is a usage error, reported before anything is opened. */
static bool infer_options(struct infer *in, const struct cli_opt *opts)
{
    if (!cli_get(opts, "model")) {
        cli_error(in->cmd, "--model DIR is required");
        return false;
    }
    return cli_u32(in->cmd, opts, "batch-size", 32, 1, 4096, &in->batch) &&
           cli_u32(in->cmd, opts, "threads", default_threads(), 1, 1024, &in->threads) &&
           cli_device_arg(in->cmd, opts, &in->where) && cli_residual_arg(in->cmd, opts, &in->where);
}

/* The model, its vocabulary, and the sequence length (the model's unless --seq_length). */
static bool infer_model(struct infer *in, const struct cli_opt *opts)
{
    return open_model(in, cli_get(opts, "model"), cli_get(opts, "vocab-path")) &&
           cli_u32(in->cmd, opts, "seq-length", in->cfg->seq_length, 2, 65536, &in->seq);
}

/* --config_path FILE: the seed builds its model from this file and then loads the weights into
 * it; netlm reads the model directory's own config.json. A file that describes the same network
 * is therefore accepted and changes nothing; one that does not would have failed in the seed and
 * is refused here rather than silently ignored. */
static bool check_seed_config(struct infer *in, const char *dir, const char *path)
{
    struct model_config c;
    char err[1024];
    model_config_init(&c);
    bool ok = model_config_load(path, &c, err, sizeof err);
    if (!ok) {
        cli_error(in->cmd, "--config_path: %s", err);
    } else if (c.arch != in->cfg->arch) {
        cli_error(in->cmd, "--config_path %s: a %s model, but the model in %s is %s", path, model_arch_name(c.arch),
                  dir, model_arch_name(in->cfg->arch));
        ok = false;
    } else {
        const struct {
            const char *what;
            uint32_t given, model;
        } sizes[] = {
            {"layers", c.layers, in->cfg->layers},          {"hidden size", c.hidden, in->cfg->hidden},
            {"attention heads", c.heads, in->cfg->heads},   {"key/value heads", c.kv_heads, in->cfg->kv_heads},
            {"feed-forward size", c.ffn, in->cfg->ffn},
        };
        for (size_t i = 0; ok && i < sizeof sizes / sizeof sizes[0]; i++)
            if (sizes[i].given != sizes[i].model) {
                cli_error(in->cmd, "--config_path %s: %s %u, but the model in %s has %u (netlm reads the model's own "
                                   "config.json: leave --config_path out)",
                          path, sizes[i].what, sizes[i].given, dir, sizes[i].model);
                ok = false;
            }
    }
    model_config_release(&c);
    return ok;
}

/* The seed's flags that restate what the model directory already says (--labels_num,
 * --config_path, --pooling): accepted when they agree with it, so that the seed's command line
 * runs unchanged, and refused when they do not. */
static bool check_seed_flags(struct infer *in, const struct cli_opt *opts)
{
    const char *dir = cli_get(opts, "model"), *pooling = cli_get(opts, "pooling");
    const char *config_path = cli_get(opts, "config-path");
    uint32_t labels_num;
    if (!cli_u32(in->cmd, opts, "labels-num", in->cfg->num_labels, 1, MODEL_MAX_LABELS, &labels_num))
        return false;
    if (labels_num != in->cfg->num_labels) {
        cli_error(in->cmd, "--labels_num %u: the model in %s has %u labels", labels_num, dir, in->cfg->num_labels);
        return false;
    }
    if (pooling) {
        enum model_pooling p;
        if (!model_pooling_parse(pooling, &p)) {
            cli_error(in->cmd, "--pooling: expected mean, first, last or max, got '%s'", pooling);
            return false;
        }
        if (p != in->cfg->pooling) {
            cli_error(in->cmd, "--pooling %s: the model in %s pools with %s", pooling, dir,
                      model_pooling_name(in->cfg->pooling));
            return false;
        }
    }
    return !config_path || check_seed_config(in, dir, config_path);
}

static const char *const classify_formats[] = {"tsv", "json", "seed", NULL};
enum { FORMAT_TSV, FORMAT_JSON, FORMAT_SEED };

int cmd_classify(int argc, char **argv)
{
    static const char *const cmd = "classify";
    struct cli_opt opts[] = {
        INFER_OPTIONS,
        {"output", NULL, 'o', "FILE", "results (default: stdout)", NULL},
        {"format", NULL, 0, "tsv|json|seed",
         "one TSV line or one JSON object per row, or the seed's prediction file: a 'label' header line, then "
         "each row's label id (default tsv; seed with --prediction_path)", NULL},
        {"prediction-path", NULL, 0, "FILE", "the seed's flag: --output FILE, in the seed's format unless --format says otherwise", NULL},
        {"output-logits", NULL, 0, NULL,
         "seed format: a logits column, the scores' logarithms (the seed's logits less their log-sum-exp: the "
         "same ranking and softmax), space-separated", NULL},
        {"output-prob", NULL, 0, NULL, "seed format: a prob column, the class probabilities, space-separated", NULL},
        {"labels-num", NULL, 0, "N", "the seed's flag: checked, must be the model's number of labels", NULL},
        {"config-path", NULL, 0, "FILE",
         "the seed's flag: checked, must describe the model's network (architecture and sizes); its own "
         "config.json is what netlm reads", NULL},
        {"pooling", NULL, 0, "mean|first|last|max", "the seed's flag: checked, must be the model's pooling", NULL},
        {"top-k", NULL, 'k', "N", "labels listed per row, best first (default 3, at most 16)", NULL},
        {"emit-tokens", NULL, 0, NULL, "debug, captures with --format json: the model input ids as \"token_ids\"", NULL},
        CLI_FLOW_OPTIONS,
        {0},
    };
    const char **pos = NULL;
    int npos = 0;
    int rc = cli_parse(cmd, "--model DIR (--test_path FILE.tsv | CAPTURE...) [OPTIONS]",
                       "Classifies the rows of a dataset TSV, or the sessions of captures (tokenized with the\n"
                       "model's own tokenizer settings), with a classification model. One line per row:\n"
                       "TSV: row (or file, first_frame, proto, src, sport, dst, dport, packets), label_id, label,\n"
                       "score, top-k as label:score,... With labels in the TSV, accuracy and macro-F1 go to stderr.\n"
                       "The seed's inference command (run_classifier_infer.py --load_model_path M --test_path T\n"
                       "--prediction_path P [--labels_num N] [--output_logits] [--output_prob] ...) runs as it is\n"
                       "and writes the seed's prediction file: 'label' [\\tlogits] [\\tprob], then one row per input.",
                       opts, argc, argv, &pos, &npos);
    if (rc != CLI_PARSED)
        return rc == CLI_HELP_SHOWN ? 0 : 2;
    struct infer in = {.cmd = cmd};
    struct cli_output out = {0};
    struct cli_tsv tsv = {0};
    struct ft_config fcfg;
    char **files = NULL;
    int n_files = 0, status = 2;
    uint64_t total_bytes = 0;
    const char *test_path = cli_get(opts, "test-path"), *output = cli_get(opts, "output");
    const char *prediction_path = cli_get(opts, "prediction-path");
    if ((test_path != NULL) == (npos > 0)) {
        cli_error(cmd, "give either --test_path FILE.tsv or capture files, not %s", test_path ? "both" : "neither");
        goto done;
    }
    if (output && prediction_path) {
        cli_error(cmd, "--output and --prediction_path name the same file: give one");
        goto done;
    }
    const int format = cli_choice(cmd, opts, "format", prediction_path ? "seed" : "tsv", classify_formats);
    if (format < 0)
        goto done;
    in.json = format == FORMAT_JSON;
    in.seed_format = format == FORMAT_SEED;
    in.output_logits = cli_flag(opts, "output-logits");
    in.output_prob = cli_flag(opts, "output-prob");
    if ((in.output_logits || in.output_prob) && !in.seed_format) {
        cli_error(cmd, "--%s: only in the seed's format (--prediction_path FILE, or --format seed)",
                  in.output_logits ? "output_logits" : "output_prob");
        goto done;
    }
    if (in.seed_format && !test_path) {
        cli_error(cmd, "--format seed: only with --test_path (the seed's prediction file has no session columns)");
        goto done;
    }
    ft_config_defaults(&fcfg);
    if (!infer_options(&in, opts) || !cli_u32(cmd, opts, "top-k", 3, 1, 16, &in.top_k) ||
        !cli_flow_config(cmd, opts, &fcfg))
        goto done;
    in.emit_tokens = cli_flag(opts, "emit-tokens");
    /* The inputs and the output before the model: a missing capture or an output that cannot be
     * written is reported at once, and before a header line reaches stdout. The captures come
     * first so that the output may be checked against them (it must not replace one). */
    status = 1;
    if (!test_path && (n_files = cli_collect_inputs(cmd, pos, npos, true, &files, &total_bytes)) < 0) {
        n_files = 0;
        goto done;
    }
    if (!cli_output_open(cmd, prediction_path ? prediction_path : output, &out) ||
        (test_path && !cli_tsv_open(cmd, test_path, &tsv)))
        goto done;
    status = 2;
    if (!infer_model(&in, opts))
        goto done;
    if (in.cfg->num_labels == 0) {
        cli_error(cmd, "%s: not a classification model (no labels; task %s)", cli_get(opts, "model"),
                  model_task_name(in.cfg->task));
        goto done;
    }
    if (!check_seed_flags(&in, opts))
        goto done;
    status = 1;
    if (!open_gpu(&in, 0) || !alloc_batch(&in, 0))
        goto done;
    in.out = out.fp;
    if (in.seed_format)
        fprintf(in.out, "label%s%s\n", in.output_logits ? "\tlogits" : "", in.output_prob ? "\tprob" : "");
    else if (!in.json)
        fprintf(in.out, "%slabel_id\tlabel\tscore\ttop_k\n",
                test_path ? "row\t" : "file\tfirst_frame\tproto\tsrc\tsport\tdst\tdport\tpackets\t");
    status = test_path ? classify_tsv(&in, &tsv, cli_flag(opts, "quiet"))
                       : classify_captures(&in, opts, &fcfg, files, n_files, total_bytes);
    if (status == 0 && !cli_output_commit(cmd, &out))
        status = 1;
    if (status == 0)
        report_metrics(&in);
done:
    if (status != 0 && out.fp)
        cli_output_abort(&out);
    cli_tsv_close(&tsv);
    cli_free_files(files, n_files);
    free(pos);
    infer_release(&in);
    return status;
}

/* ---- generate ---- */

/* Whitespace-insensitive comparison: "0000  003c" and "0000 003c" are the same target. */
static bool same_tokens(const char *a, const char *b)
{
    for (;;) {
        while (*a == ' ' || *a == '\t')
            a++;
        while (*b == ' ' || *b == '\t')
            b++;
        if (!*a || !*b)
            return !*a && !*b;
        while (*a && *a != ' ' && *a != '\t' && *a == *b)
            a++, b++;
        bool a_end = !*a || *a == ' ' || *a == '\t', b_end = !*b || *b == ' ' || *b == '\t';
        if (!a_end || !b_end)
            return false;
    }
}

static bool generate_batch(struct infer *in, const uint64_t *rows)
{
    if (in->n == 0)
        return true;
    if (in->gpu) {
        if (!model_cuda_generate(in->gpu, in->ids, in->lengths, in->n, in->seq, &in->sampling,
                                 in->max_new, in->generated, in->generated_len)) {
            cli_error(in->cmd, "%s", model_cuda_error(in->gpu));
            return false;
        }
    } else if (!model_generate(in->runner, in->ids, in->lengths, in->n, in->seq, &in->sampling,
                               in->max_new, in->generated, in->generated_len)) {
        cli_error(in->cmd, "the model rejected a batch (token ids outside its vocabulary?)");
        return false;
    }
    char text[4096];
    for (uint32_t b = 0; b < in->n; b++) {
        tok_ids_text(in->vocab, in->generated + (size_t)b * in->max_new, in->generated_len[b], text, sizeof text);
        bool has_target = in->targets[b] != NULL;
        bool match = has_target && same_tokens(text, in->targets[b]);
        if (in->json) {
            fprintf(in->out, "{\"row\":%" PRIu64 ",\"generated\":", rows[b]);
            cli_json_string(in->out, text);
            if (has_target) {
                fputs(",\"target\":", in->out);
                cli_json_string(in->out, in->targets[b]);
                fprintf(in->out, ",\"exact\":%s", match ? "true" : "false");
            }
            fputs("}\n", in->out);
        } else {
            fprintf(in->out, "%" PRIu64 "\t%s\t%s\t%s\n", rows[b], text, has_target ? in->targets[b] : "",
                    has_target ? (match ? "1" : "0") : "");
        }
        if (has_target) {
            in->labelled++;
            in->exact += match;
        }
        free(in->targets[b]);
        in->targets[b] = NULL;
    }
    in->rows += in->n;
    in->n = 0;
    return true;
}

static const char *const generate_formats[] = {"tsv", "json", NULL};

int cmd_generate(int argc, char **argv)
{
    static const char *const cmd = "generate";
    struct cli_opt opts[] = {
        INFER_OPTIONS,
        {"tgt-seq-length", NULL, 0, "N", "target length as the seed counts it, [CLS] t1 .. [SEP]: at most N-1 new tokens (default: the model's, 4)", NULL},
        {"temperature", NULL, 0, "T", "0 = greedy (default); > 0 samples", NULL},
        {"top-k", NULL, 0, "N", "sample among the N most likely tokens (0 = all)", NULL},
        {"top-p", NULL, 0, "P", "sample within the smallest set of probability mass P (default 1)", NULL},
        {"seed", "random_seed", 0, "N", "sampling seed (default 7)", NULL},
        {"output", "prediction_path", 'o', "FILE", "results (default: stdout)", NULL},
        {"format", NULL, 0, "tsv|json", "one TSV line or one JSON object per row (default tsv)", NULL},
        {"quiet", NULL, 'q', NULL, "no progress line", NULL},
        {0},
    };
    const char **pos = NULL;
    int npos = 0;
    int rc = cli_parse(cmd, "--model DIR --test_path FILE.tsv [OPTIONS]",
                       "Continues each row's text_a ([CLS] tokens [SEP]) with the model's LM head and a KV cache,\n"
                       "until [SEP] or the maximum, on the CPU or a GPU (--device). The seed's generation TSVs hold the target in the label\n"
                       "column: then each row says whether the generation matches it exactly, and the\n"
                       "exact-match accuracy goes to stderr. TSV out: row, generated, target, exact.\n"
                       "The model must be a language model (task lm or generate): a classifier's LM head was\n"
                       "never trained.",
                       opts, argc, argv, &pos, &npos);
    if (rc != CLI_PARSED)
        return rc == CLI_HELP_SHOWN ? 0 : 2;
    struct infer in = {.cmd = cmd};
    struct cli_output out = {0};
    struct cli_tsv t = {0};
    int status = 2;
    const char *test_path = cli_get(opts, "test-path");
    uint32_t tgt;
    double temperature, top_p;
    uint64_t seed;
    if (npos > 0) {
        cli_error(cmd, "unexpected argument '%s' (the input is --test_path FILE.tsv)", pos[0]);
        goto done;
    }
    if (!test_path) {
        cli_error(cmd, "--test_path FILE.tsv is required");
        goto done;
    }
    const int format = cli_choice(cmd, opts, "format", "tsv", generate_formats);
    if (format < 0 || !infer_options(&in, opts) ||
        !cli_double(cmd, opts, "temperature", 0.0, 0.0, 100.0, &temperature) ||
        !cli_u32(cmd, opts, "top-k", 0, 0, UINT32_MAX, &in.sampling.top_k) ||
        !cli_double(cmd, opts, "top-p", 1.0, 1e-6, 1.0, &top_p) ||
        !cli_u64(cmd, opts, "seed", 7, 0, UINT64_MAX, &seed))
        goto done;
    in.json = format == 1;
    /* the output and the input before the model: see cmd_classify */
    status = 1;
    if (!cli_output_open(cmd, cli_get(opts, "output"), &out) || !cli_tsv_open(cmd, test_path, &t))
        goto done;
    status = 2;
    if (!infer_model(&in, opts))
        goto done;
    if (in.cfg->task == MODEL_TASK_CLASSIFY) {
        cli_error(cmd, "%s: a classification model (%u labels), whose LM head was never trained: generate needs a "
                       "language model (task lm or generate: netlm pretrain, netlm finetune generation)",
                  cli_get(opts, "model"), in.cfg->num_labels);
        goto done;
    }
    if (!cli_u32(cmd, opts, "tgt-seq-length", in.cfg->tgt_seq_length, 2, 4096, &tgt))
        goto done;
    in.sampling.temperature = (float)temperature;
    in.sampling.top_p = (float)top_p;
    in.sampling.seed = seed;
    in.max_new = tgt - 1;
    status = 1;
    if (!open_gpu(&in, in.seq + in.max_new) || !alloc_batch(&in, in.seq + in.max_new))
        goto done;
    in.out = out.fp;
    if (!in.json)
        fputs("row\tgenerated\ttarget\texact\n", in.out);
    uint64_t rows[4096];
    struct cli_progress progress;
    cli_progress_start(&progress, cmd, t.size, cli_flag(opts, "quiet"));
    char *label, *text;
    int r;
    while ((r = cli_tsv_next(cmd, &t, &label, &text)) > 0) {
        uint32_t b = in.n;
        in.targets[b] = label && *label ? strdup(label) : NULL;
        in.lengths[b] = tok_text_ids(in.vocab, text, strlen(text), in.seq, in.ids + (size_t)b * in.seq);
        rows[b] = t.line_no - 1;
        if (++in.n == in.batch) {
            if (!generate_batch(&in, rows))
                goto done;
            cli_progress_update(&progress, t.done, in.rows, "rows");
        }
    }
    if (r < 0 || !generate_batch(&in, rows))
        goto done;
    cli_progress_end(&progress, t.done, in.rows, "rows");
    if (!cli_output_commit(cmd, &out))
        goto done;
    status = 0;
    if (in.labelled)
        fprintf(stderr, "netlm %s: %" PRIu64 " rows, exact-match accuracy %.4f (%" PRIu64 "/%" PRIu64 ")\n", cmd,
                in.rows, (double)in.exact / (double)in.labelled, in.exact, in.labelled);
    else
        fprintf(stderr, "netlm %s: %" PRIu64 " rows generated\n", cmd, in.rows);
done:
    if (status != 0 && out.fp)
        cli_output_abort(&out);
    cli_tsv_close(&t);
    free(pos);
    infer_release(&in);
    return status;
}
