/* model_bench.c — forward, classification and generation speed of the CPU model on random
 * weights, in the shapes bench/model_twin_bench.py times for PyTorch (bench/model.sh runs both
 * with the same thread count and prints the ratios). One JSON object on stdout.
 *
 *   netlm_model_bench --arch gpt2|qwen2 [--threads N] [--runs N]
 *   netlm_model_bench --qwen05b-rss [--threads N]   (peak RSS of a Qwen2.5-0.5B-sized forward)
 *   netlm_model_bench --train --arch gpt2|qwen2 [--threads N]  (training steps, batch 32 x 128)
 *   netlm_model_bench --device cuda[:N] [--only NAME[,NAME...]] [--precision bf16|fp32] [--residual bf16|fp32]
 *                     [--runs N] [--profile | --graphs]
 *   netlm_model_bench --device cuda[:N] --train [--precision bf16|fp32] [--dropout P] [--runs N]
 *     (training steps on the GPU; each case trains with the dropout PyTorch's model has in
 *      bench/gpu_bench.py, 0.1 for GPT-2 and none for Qwen2, unless --dropout gives one)
 *   netlm_model_bench --device cuda[:N] --pipeline [--precision bf16|fp32] [--runs N]
 *     (classification of 32 batches, small GPT-2 B256 T128 with graphs, host packing included:
 *      synchronous calls against submit/wait with one batch in flight, as the sensor runs it)
 *     (--profile: no CUDA graphs, and the engine's time per kind of step as a JSON line
 *      {"cuda_profile": ...} on stderr after each case; --residual: the residual stream's type
 *      in bf16 precision, bf16 by default as in netlm's commands and the sensor, fp32 the
 *      engine's other choice; --graphs: CUDA graphs in the throughput cases too, which the
 *      latency cases always replay)
 *       (the CUDA engine on the configs of bench/gpu_bench.py: one JSON line per measurement;
 *       bench/gpu_check.sh runs it next to PyTorch)
 *   netlm_model_bench --device cpu|cuda[:N] --generate [--only NAME] [--precision bf16|fp32]
 *                     [--residual bf16|fp32] [--runs N] [--threads N] [--profile]
 *     (greedy continuation of 128-token prompts by 16 tokens, the gen-* cases: ms per generate
 *      call and new tokens/s, next to gpu_bench.py's HF generate; on the CPU, fp32 and the small
 *      GPT-2 cases unless --only names others) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "model/model.h"
#include "model/model_internal.h" /* model_create_empty: the GPU cases' fast random weights */
#include "train/train.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void random_ids(uint32_t *ids, size_t n, uint32_t vocab, uint64_t *state)
{
    for (size_t i = 0; i < n; i++) {
        *state = *state * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = 5 + (uint32_t)((*state >> 33) % (vocab - 5));
    }
}

/* A batch of random ids, every row full length (seq ids), drawn from seed. */
static void full_length_batch(uint32_t *ids, uint32_t *lengths, uint32_t batch, uint32_t seq, uint32_t vocab,
                              uint64_t seed)
{
    random_ids(ids, (size_t)batch * seq, vocab, &seed);
    for (uint32_t b = 0; b < batch; b++)
        lengths[b] = seq;
}

/* The classification task with the 20 labels "0".."19" (the benchmarks' head). */
static void classify_labels(struct model_config *c)
{
    c->task = MODEL_TASK_CLASSIFY;
    c->num_labels = 20;
    c->labels = calloc(20, sizeof(char *));
    for (int i = 0; i < 20; i++) {
        char name[8];
        snprintf(name, sizeof name, "%d", i);
        c->labels[i] = strdup(name);
    }
}

static void config_for(const char *arch, struct model_config *c)
{
    model_config_init(c);
    c->vocab_size = 65541;
    c->hidden = 256;
    c->layers = 4;
    c->heads = 4;
    c->head_dim = 64;
    c->max_positions = 256;
    classify_labels(c);
    if (!strcmp(arch, "gpt2")) {
        c->arch = MODEL_ARCH_GPT2;
        c->kv_heads = 4;
        c->ffn = 1024;
        c->norm_eps = 1e-5f;
    } else {
        c->arch = MODEL_ARCH_QWEN2;
        c->kv_heads = 2;
        c->ffn = 688;
        c->rope_theta = 1e6;
        c->norm_eps = 1e-6f;
        c->act = MODEL_ACT_SILU;
    }
}

static long peak_rss_kib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

/* Times fn over runs after two warm-ups; returns the median seconds. */
#define TIME_MEDIAN(runs, out, body)                                                               \
    do {                                                                                          \
        double samples_[64];                                                                      \
        for (int i_ = 0; i_ < 2; i_++) {                                                          \
            body;                                                                                 \
        }                                                                                         \
        for (int i_ = 0; i_ < (runs); i_++) {                                                     \
            double t0_ = now();                                                                   \
            body;                                                                                 \
            samples_[i_] = now() - t0_;                                                           \
        }                                                                                         \
        (out) = median(samples_, (runs));                                                         \
    } while (0)

static int qwen05b_rss(uint32_t threads)
{
    struct model_config c;
    model_config_init(&c);
    c.arch = MODEL_ARCH_QWEN2;
    c.vocab_size = 65541;
    c.hidden = 896;
    c.layers = 24;
    c.heads = 14;
    c.kv_heads = 2;
    c.head_dim = 64;
    c.ffn = 4864;
    c.max_positions = 32768;
    c.rope_theta = 1e6;
    c.norm_eps = 1e-6f;
    c.act = MODEL_ACT_SILU;
    c.task = MODEL_TASK_CLASSIFY;
    c.num_labels = 2;
    c.labels = calloc(2, sizeof(char *));
    c.labels[0] = strdup("0");
    c.labels[1] = strdup("1");
    char err[512];
    struct model *m = model_create(&c, 1, err, sizeof err);
    if (!m) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const uint32_t B = 32, T = 128;
    struct model_runner *r = model_runner_create(m, B, T, 0, threads, err, sizeof err);
    uint32_t *ids = malloc((size_t)B * T * sizeof(uint32_t)), lengths[32];
    full_length_batch(ids, lengths, B, T, c.vocab_size, 1);
    float scores[64];
    double t0 = now();
    if (!r || !model_classify(r, ids, lengths, B, T, NULL, scores)) {
        fprintf(stderr, "forward failed\n");
        return 1;
    }
    double secs = now() - t0;
    printf("{\"mode\":\"qwen05b_rss\",\"threads\":%u,\"parameters\":%llu,\"parameter_mib\":%.1f,"
           "\"activation_mib\":%.1f,\"batch\":%u,\"seq\":%u,\"forward_s\":%.3f,\"peak_rss_mib\":%.1f}\n",
           threads, (unsigned long long)model_parameter_count(m),
           model_parameter_count(m) * 4.0 / 1048576.0, model_runner_bytes(r) / 1048576.0, B, T,
           secs, peak_rss_kib() / 1024.0);
    free(ids);
    model_runner_free(r);
    model_free(m);
    model_config_release(&c);
    return 0;
}

/* Training: forward + backward + AdamW on batch 32 × 128, the LM objective (every next token)
 * and the classification one; tokens/s = 32·128 / median step time. */
static int train_bench(const char *arch, uint32_t threads, int runs)
{
    struct model_config c;
    config_for(arch, &c);
    char err[512];
    struct model *m = model_create(&c, 1, err, sizeof err);
    const uint32_t B = 32, T = 128;
    struct train_runner *tr = m ? train_runner_create(m, B, T, threads, err, sizeof err) : NULL;
    if (!tr) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    size_t n = train_runner_grad_count(tr);
    float *mom = calloc(n, sizeof(float)), *vel = calloc(n, sizeof(float));
    uint32_t *ids = malloc((size_t)B * T * sizeof(uint32_t)), lengths[32], labels[32];
    full_length_batch(ids, lengths, B, T, c.vocab_size, 42);
    for (uint32_t b = 0; b < B; b++)
        labels[b] = b % c.num_labels;
    struct train_batch batch = {.ids = ids, .lengths = lengths, .batch = B, .seq = T, .labels = labels};
    struct train_adamw opt;
    train_adamw_defaults(&opt);
    uint64_t step = 0;
    double loss, lm_s, cls_s;
    TIME_MEDIAN(runs, lm_s, (train_zero_grads(tr), train_forward_backward(tr, TRAIN_LM, &batch, &loss),
                              train_adamw_step(m, train_runner_grads(tr), mom, vel, ++step, 1e-4f, &opt, (int)threads)));
    TIME_MEDIAN(runs, cls_s, (train_zero_grads(tr), train_forward_backward(tr, TRAIN_CLASSIFY, &batch, &loss),
                               train_adamw_step(m, train_runner_grads(tr), mom, vel, ++step, 1e-4f, &opt, (int)threads)));
    printf("{\"side\":\"netlm\",\"mode\":\"train\",\"arch\":\"%s\",\"threads\":%u,\"batch\":%u,\"seq\":%u,"
           "\"lm_train_tok_per_s\":%.1f,\"classify_train_tok_per_s\":%.1f,\"peak_rss_mib\":%.1f}\n",
           arch, threads, B, T, B * T / lm_s, B * T / cls_s, peak_rss_kib() / 1024.0);
    free(mom);
    free(vel);
    free(ids);
    train_runner_free(tr);
    model_free(m);
    model_config_release(&c);
    return 0;
}

/* ---- the CUDA engine (bench/gpu_check.sh) ---- */

struct cuda_case {
    const char *name;
    enum model_arch arch;
    uint32_t layers, hidden, heads, kv_heads, ffn, vocab;
    uint32_t batch, seq;
    bool graphs; /* latency cases replay CUDA graphs */
};

/* The table (PyTorch figures in bench/gpu_bench.py): throughput at large batches,
 * latency at batch 1; and two Qwen2 batch sizes between (netlm alone). */
static const struct cuda_case cuda_cases[] = {
    {"gpt2-base-v60005-b256-t256", MODEL_ARCH_GPT2, 12, 768, 12, 12, 3072, 60005, 256, 256, false},
    {"gpt2-base-v65541-b512-t128", MODEL_ARCH_GPT2, 12, 768, 12, 12, 3072, 65541, 512, 128, false},
    {"gpt2-base-v65541-b1-t128", MODEL_ARCH_GPT2, 12, 768, 12, 12, 3072, 65541, 1, 128, true},
    {"gpt2-small-v65541-b4096-t128", MODEL_ARCH_GPT2, 4, 256, 4, 4, 1024, 65541, 4096, 128, false},
    {"gpt2-small-v65541-b1-t128", MODEL_ARCH_GPT2, 4, 256, 4, 4, 1024, 65541, 1, 128, true},
    {"qwen05b-v60005-b256-t256", MODEL_ARCH_QWEN2, 24, 896, 14, 2, 4864, 60005, 256, 256, false},
    {"qwen05b-v60005-b1-t256", MODEL_ARCH_QWEN2, 24, 896, 14, 2, 4864, 60005, 1, 256, true},
    /* between the two: where the engine's size-chosen kernels (engine.c) change over */
    {"qwen05b-v60005-b16-t256", MODEL_ARCH_QWEN2, 24, 896, 14, 2, 4864, 60005, 16, 256, false},
    {"qwen05b-v60005-b64-t256", MODEL_ARCH_QWEN2, 24, 896, 14, 2, 4864, 60005, 64, 256, false},
};

/* Forward FLOPs of one full-length sequence through the stack and the classifier (the LM head
 * is not run): 2 per multiply-add of every projection, and causal attention's
 * Q·Kᵀ and P·V over (T + 1) / 2 keys on average. The same formula as gpu_bench.py. */
static double cuda_case_flops(const struct cuda_case *k, uint32_t labels)
{
    const double C = k->hidden, d = (double)k->hidden / k->heads, T = k->seq;
    const double qkv = (k->heads + 2.0 * k->kv_heads) * d, fw = k->arch == MODEL_ARCH_GPT2 ? k->ffn : 2.0 * k->ffn;
    const double per_token = k->layers * (2 * C * qkv + 2 * k->heads * d * C + 2 * C * fw + 2 * k->ffn * C +
                                          2 * k->heads * d * (T + 1));
    return per_token * T + 2 * C * C + 2 * C * labels;
}

/* Random weights in a fraction of model_create's time (its Box-Muller normals take half a
 * minute for the 0.5B model): uniform with the seed scheme's standard deviation 0.02, norm
 * weights 1 and norm biases 0. Speed does not depend on the distribution, only on it not being
 * all zeros. */
static struct model *bench_model(const struct model_config *c, char *err, size_t errlen)
{
    struct model *m = model_create_empty(c, err, errlen);
    if (!m)
        return NULL;
    uint64_t x = 0x9e3779b97f4a7c15ull;
    const float a = 0.02f * 1.7320508f; /* uniform [-a, a] has standard deviation a / sqrt(3) */
    for (size_t i = 0; i < m->layout.count; i++) {
        const struct model_tensor *t = &m->layout.tensors[i];
        float *p = m->params + t->offset;
        for (size_t j = 0; j < t->numel; j++) {
            if (t->kind == MODEL_TENSOR_NORM_WEIGHT || t->kind == MODEL_TENSOR_NORM_BIAS) {
                p[j] = t->kind == MODEL_TENSOR_NORM_WEIGHT ? 1.0f : 0.0f;
                continue;
            }
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            p[j] = a * ((float)(x >> 40) * (2.0f / 16777216.0f) - 1.0f);
        }
    }
    return m;
}

/* A case's model: 20 labels for the classification head, the seed architectures' constants. */
static void cuda_case_config(const struct cuda_case *k, struct model_config *c)
{
    model_config_init(c);
    c->arch = k->arch;
    c->vocab_size = k->vocab;
    c->hidden = k->hidden;
    c->layers = k->layers;
    c->heads = k->heads;
    c->kv_heads = k->kv_heads;
    c->head_dim = k->hidden / k->heads;
    c->ffn = k->ffn;
    c->max_positions = 1024;
    classify_labels(c);
    if (k->arch == MODEL_ARCH_QWEN2) {
        c->rope_theta = 1e6;
        c->norm_eps = 1e-6f;
        c->act = MODEL_ACT_SILU;
        c->tie_embeddings = true;
    } else {
        c->norm_eps = 1e-5f;
    }
}

/* Training on the GPU (train_cuda_*): causal-LM steps of full-length random sequences, each a
 * forward + backward + AdamW step, as bench/gpu_bench.py's PyTorch training cases. */
static const struct cuda_case cuda_train_cases[] = {
    {"train-gpt2-base-v60005-b32-t512", MODEL_ARCH_GPT2, 12, 768, 12, 12, 3072, 60005, 32, 512, false},
    {"train-qwen05b-v60005-b16-t512", MODEL_ARCH_QWEN2, 24, 896, 14, 2, 4864, 60005, 16, 512, false},
};
/* Each case's dropout (embedding, attention, residual), what PyTorch's model trains with in
 * gpu_bench.py: transformers' GPT2Config defaults to 0.1 for all three, Qwen2Config to none. */
static const float cuda_train_dropout[] = {0.1f, 0.0f};
_Static_assert(sizeof cuda_train_dropout / sizeof cuda_train_dropout[0] ==
                   sizeof cuda_train_cases / sizeof cuda_train_cases[0],
               "one dropout per training case");

/* --only NAME[,NAME...]: whether a case's name contains one of the comma-separated parts (all
 * cases without --only). */
static bool case_chosen(const char *name, const char *only)
{
    if (!only)
        return true;
    for (const char *part = only; *part;) {
        const size_t len = strcspn(part, ",");
        char want[128];
        snprintf(want, sizeof want, "%.*s", (int)len, part);
        if (len && strstr(name, want))
            return true;
        part += len + (part[len] == ',');
    }
    return false;
}

/* dropout < 0: each case's own (cuda_train_dropout); else this probability for all three. */
static int cuda_train_bench(int device, const char *only, enum model_precision prec, int runs, float dropout)
{
    int status = 0;
    for (size_t ci = 0; ci < sizeof cuda_train_cases / sizeof cuda_train_cases[0]; ci++) {
        const struct cuda_case *k = &cuda_train_cases[ci];
        if (!case_chosen(k->name, only))
            continue;
        struct model_config c;
        cuda_case_config(k, &c);
        c.task = MODEL_TASK_LM;
        char err[512];
        struct model *m = bench_model(&c, err, sizeof err);
        struct train_cuda *t = m ? train_cuda_create(m, device, prec == MODEL_PRECISION_BF16, k->batch, k->seq, err,
                                                     sizeof err)
                                 : NULL;
        const float p = dropout >= 0.0f ? dropout : cuda_train_dropout[ci];
        const struct train_dropout drop = {.embed = p, .attn = p, .resid = p, .seed = 7};
        if (t && !train_cuda_set_dropout(t, &drop)) {
            snprintf(err, sizeof err, "%s", train_cuda_error(t));
            train_cuda_free(t);
            t = NULL;
        }
        uint32_t *ids = malloc((size_t)k->batch * k->seq * sizeof(uint32_t));
        uint32_t *lengths = malloc(k->batch * sizeof(uint32_t));
        if (!t || !ids || !lengths) {
            printf("{\"side\":\"netlm\",\"case\":\"%s\",\"error\":\"%s\"}\n", k->name, t ? "out of memory" : err);
            status = 1;
        } else {
            full_length_batch(ids, lengths, k->batch, k->seq, c.vocab_size, 43);
            struct train_batch batch = {.ids = ids, .lengths = lengths, .batch = k->batch, .seq = k->seq};
            struct train_adamw o;
            train_adamw_defaults(&o);
            uint64_t step = 0;
            double secs = 0.0, loss = 0.0;
            bool ok = true;
            TIME_MEDIAN(runs, secs,
                        ok = ok && train_cuda_zero_grads(t) && train_cuda_forward_backward(t, TRAIN_LM, &batch, &loss) &&
                             train_cuda_adamw_step(t, ++step, 1e-4f, &o));
            if (!ok) {
                printf("{\"side\":\"netlm\",\"case\":\"%s\",\"error\":\"%s\"}\n", k->name, train_cuda_error(t));
                status = 1;
            } else {
                /* 3× the forward's projections and attention, plus the LM head's 3 GEMMs */
                const double flops = 3.0 * (cuda_case_flops(k, 0) + 2.0 * k->hidden * k->vocab * k->seq) * k->batch;
                printf("{\"side\":\"netlm\",\"case\":\"%s\",\"precision\":\"%s\",\"batch\":%u,\"seq\":%u,"
                       "\"dropout\":%.2f,\"ms\":%.4f,\"tok_per_s\":%.1f,\"tflops\":%.2f,\"mfu\":%.4f,\"loss\":%.4f}\n",
                       k->name, prec == MODEL_PRECISION_FP32 ? "fp32" : "bf16", k->batch, k->seq, p, secs * 1e3,
                       (double)k->batch * k->seq / secs, flops / secs / 1e12, flops / secs / 989e12, loss);
            }
        }
        fflush(stdout);
        free(ids);
        free(lengths);
        train_cuda_free(t);
        model_free(m);
        model_config_release(&c);
    }
    return status;
}

static int cuda_bench(int device, const char *only, enum model_precision prec, bool residual_bf16,
                      int runs, bool profile, bool all_graphs)
{
    int status = 0;
    if (profile)
        setenv("NETLM_CUDA_PROFILE", "1", 1);
    if (model_cuda_device_count() <= device) {
        printf("{\"side\":\"netlm\",\"error\":\"no GPU cuda:%d visible\"}\n", device);
        return 1;
    }
    for (size_t ci = 0; ci < sizeof cuda_cases / sizeof cuda_cases[0]; ci++) {
        const struct cuda_case *k = &cuda_cases[ci];
        if (!case_chosen(k->name, only))
            continue;
        struct model_config c;
        cuda_case_config(k, &c);
        char err[512];
        struct model *m = bench_model(&c, err, sizeof err);
        struct model_cuda_options o = {.device = device, .precision = prec, .max_batch = k->batch,
                                       .max_seq = k->seq, .graphs = (k->graphs || all_graphs) && !profile,
                                       .residual_bf16 = residual_bf16};
        struct model_cuda *e = m ? model_cuda_create(m, &o, err, sizeof err) : NULL;
        uint32_t *ids = malloc((size_t)k->batch * k->seq * sizeof(uint32_t));
        uint32_t *lengths = malloc(k->batch * sizeof(uint32_t));
        float *scores = malloc((size_t)k->batch * c.num_labels * sizeof(float));
        if (!e || !ids || !lengths || !scores) {
            printf("{\"side\":\"netlm\",\"case\":\"%s\",\"error\":\"%s\"}\n", k->name, e ? "out of memory" : err);
            status = 1;
        } else {
            full_length_batch(ids, lengths, k->batch, k->seq, c.vocab_size, 42);
            double secs = 0.0;
            bool ok = true;
            /* warm-up inside TIME_MEDIAN: plans, and the graph capture of latency cases */
            TIME_MEDIAN(runs, secs, ok = model_cuda_classify(e, ids, lengths, k->batch, k->seq, NULL, scores) && ok);
            if (!ok) {
                printf("{\"side\":\"netlm\",\"case\":\"%s\",\"error\":\"%s\"}\n", k->name, model_cuda_error(e));
                status = 1;
            } else {
                const double flops = cuda_case_flops(k, c.num_labels) * k->batch;
                /* the kernels the engine chose for this batch, and their candidates' times */
                char kernels[16384];
                if (!model_cuda_kernel_choices(e, kernels, sizeof kernels))
                    snprintf(kernels, sizeof kernels, "null");
                printf("{\"side\":\"netlm\",\"case\":\"%s\",\"precision\":\"%s\",\"residual\":\"%s\",\"graphs\":%s,\"batch\":%u,"
                       "\"seq\":%u,\"ms\":%.4f,\"seq_per_s\":%.1f,\"tok_per_s\":%.1f,\"tflops\":%.2f,"
                       "\"mfu\":%.4f,\"device_mib\":%.1f,\"kernels\":%s}\n",
                       k->name, prec == MODEL_PRECISION_FP32 ? "fp32" : "bf16", residual_bf16 ? "bf16" : "fp32",
                       o.graphs ? "true" : "false",
                       k->batch, k->seq, secs * 1e3, k->batch / secs, (double)k->batch * k->seq / secs,
                       flops / secs / 1e12, flops / secs / 989e12, model_cuda_bytes(e) / 1048576.0, kernels);
            }
        }
        fflush(stdout);
        free(ids);
        free(lengths);
        free(scores);
        model_cuda_free(e);
        model_free(m);
        model_config_release(&c);
    }
    return status;
}

/* ---- the classify pipeline (model_cuda_classify_submit / _wait) ---- */

enum { PIPE_BATCHES = 32, PIPE_SHAPES = 4 };

/* Batch i of the pipeline benchmark, written by the host as the sensor's batcher tokenizes: its
 * lengths (uniform in [T/4, T], one of PIPE_SHAPES sets so that every graph bucket is warm) and
 * its ids (the same for a given i in both modes). */
static void pipe_batch(uint32_t i, uint32_t *ids, uint32_t *lengths, uint32_t B, uint32_t T, uint32_t vocab)
{
    uint64_t st = 1000 + i % PIPE_SHAPES;
    for (uint32_t b = 0; b < B; b++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        lengths[b] = T / 4 + (uint32_t)((st >> 33) % (T - T / 4 + 1));
    }
    st = 77 + i;
    random_ids(ids, (size_t)B * T, vocab, &st);
}

static bool pipe_sync(struct model_cuda *e, uint32_t *ids, uint32_t *lengths, uint32_t B, uint32_t T,
                      uint32_t vocab, float *scores, size_t per_batch)
{
    for (uint32_t i = 0; i < PIPE_BATCHES; i++) {
        pipe_batch(i, ids, lengths, B, T, vocab);
        if (!model_cuda_classify(e, ids, lengths, B, T, NULL, scores + i * per_batch))
            return false;
    }
    return true;
}

/* one batch in flight: batch i is packed and submitted before batch i - 1 is waited for */
static bool pipe_overlapped(struct model_cuda *e, uint32_t *ids, uint32_t *lengths, uint32_t B, uint32_t T,
                            uint32_t vocab, float *scores, size_t per_batch)
{
    for (uint32_t i = 0; i < PIPE_BATCHES; i++) {
        pipe_batch(i, ids, lengths, B, T, vocab);
        if (!model_cuda_classify_submit(e, ids, lengths, B, T, NULL, scores + i * per_batch))
            return false;
        if (i > 0 && !model_cuda_classify_wait(e))
            return false;
    }
    return model_cuda_classify_wait(e);
}

static int cuda_pipeline_bench(int device, enum model_precision prec, int runs)
{
    const struct cuda_case k = {"gpt2-small-v65541-b256-t128", MODEL_ARCH_GPT2, 4, 256, 4, 4, 1024, 65541, 256, 128, true};
    if (model_cuda_device_count() <= device) {
        printf("{\"side\":\"netlm\",\"error\":\"no GPU cuda:%d visible\"}\n", device);
        return 1;
    }
    struct model_config c;
    cuda_case_config(&k, &c);
    char err[512];
    struct model *m = bench_model(&c, err, sizeof err);
    struct model_cuda_options o = {.device = device, .precision = prec, .max_batch = k.batch, .max_seq = k.seq,
                                   .graphs = true, .residual_bf16 = prec == MODEL_PRECISION_BF16};
    struct model_cuda *e = m ? model_cuda_create(m, &o, err, sizeof err) : NULL;
    const size_t per_batch = (size_t)k.batch * c.num_labels;
    uint32_t *ids = malloc((size_t)k.batch * k.seq * sizeof(uint32_t)), *lengths = malloc(k.batch * sizeof(uint32_t));
    float *sync_scores = malloc(PIPE_BATCHES * per_batch * sizeof(float));
    float *pipe_scores = malloc(PIPE_BATCHES * per_batch * sizeof(float));
    int status = 0;
    if (!e || !ids || !lengths || !sync_scores || !pipe_scores) {
        printf("{\"side\":\"netlm\",\"case\":\"pipeline-%s\",\"error\":\"%s\"}\n", k.name, e ? "out of memory" : err);
        status = 1;
    } else {
        uint64_t tokens = 0;
        for (uint32_t i = 0; i < PIPE_BATCHES; i++) {
            pipe_batch(i, ids, lengths, k.batch, k.seq, c.vocab_size);
            for (uint32_t b = 0; b < k.batch; b++)
                tokens += lengths[b];
        }
        double sync_s = 0.0, pipe_s = 0.0;
        bool ok = true;
        /* the warm-ups of TIME_MEDIAN capture every bucket's graph */
        TIME_MEDIAN(runs, sync_s, ok = pipe_sync(e, ids, lengths, k.batch, k.seq, c.vocab_size, sync_scores, per_batch) && ok);
        TIME_MEDIAN(runs, pipe_s, ok = pipe_overlapped(e, ids, lengths, k.batch, k.seq, c.vocab_size, pipe_scores, per_batch) && ok);
        if (!ok) {
            printf("{\"side\":\"netlm\",\"case\":\"pipeline-%s\",\"error\":\"%s\"}\n", k.name, model_cuda_error(e));
            status = 1;
        } else {
            /* the same engine, kernels and buckets: the results must agree bit for bit */
            const bool equal = !memcmp(sync_scores, pipe_scores, PIPE_BATCHES * per_batch * sizeof(float));
            const char *modes[2] = {"sync", "pipelined"};
            const double secs[2] = {sync_s, pipe_s};
            for (int i = 0; i < 2; i++)
                printf("{\"side\":\"netlm\",\"case\":\"pipeline-%s-%s\",\"precision\":\"%s\",\"graphs\":true,"
                       "\"batch\":%u,\"seq\":%u,\"batches\":%d,\"ms\":%.4f,\"seq_per_s\":%.1f,\"tok_per_s\":%.1f,"
                       "\"speedup\":%.3f,\"equal\":%s}\n",
                       k.name, modes[i], prec == MODEL_PRECISION_FP32 ? "fp32" : "bf16", k.batch, k.seq, PIPE_BATCHES,
                       secs[i] * 1e3 / PIPE_BATCHES, PIPE_BATCHES * k.batch / secs[i], tokens / secs[i],
                       sync_s / secs[i], equal ? "true" : "false");
            if (!equal)
                status = 1;
        }
    }
    fflush(stdout);
    free(ids);
    free(lengths);
    free(sync_scores);
    free(pipe_scores);
    model_cuda_free(e);
    model_free(m);
    model_config_release(&c);
    return status;
}

/* ---- generation (model_cuda_generate; model_generate on the CPU) ---- */

/* Every row continues a full-length prompt by GEN_NEW tokens: greedy with ignore_sep, so no row
 * stops early and each call does the same work on both sides (bench/gpu_bench.py's GEN_CASES:
 * HF generate with min_new_tokens = max_new_tokens). Batch 1 is the latency of one sequence,
 * the large batches the new tokens per second. */
enum { GEN_NEW = 16 };
static const struct cuda_case gen_cases[] = {
    {"gen-gpt2-base-b1-p128-n16", MODEL_ARCH_GPT2, 12, 768, 12, 12, 3072, 60005, 1, 128, true},
    {"gen-gpt2-base-b64-p128-n16", MODEL_ARCH_GPT2, 12, 768, 12, 12, 3072, 60005, 64, 128, true},
    {"gen-gpt2-small-b1-p128-n16", MODEL_ARCH_GPT2, 4, 256, 4, 4, 1024, 65541, 1, 128, true},
    {"gen-gpt2-small-b256-p128-n16", MODEL_ARCH_GPT2, 4, 256, 4, 4, 1024, 65541, 256, 128, true},
    {"gen-qwen05b-b1-p128-n16", MODEL_ARCH_QWEN2, 24, 896, 14, 2, 4864, 60005, 1, 128, true},
    {"gen-qwen05b-b64-p128-n16", MODEL_ARCH_QWEN2, 24, 896, 14, 2, 4864, 60005, 64, 128, true},
};

/* device < 0: the CPU runner with threads threads, and (without --only) the small GPT-2 cases
 * alone, since the others take minutes per call on a few cores. */
static int gen_bench(int device, const char *only, enum model_precision prec, bool residual_bf16, int runs,
                     bool profile, uint32_t threads)
{
    int status = 0;
    if (profile)
        setenv("NETLM_CUDA_PROFILE", "1", 1);
    if (device >= 0 && model_cuda_device_count() <= device) {
        printf("{\"side\":\"netlm\",\"error\":\"no GPU cuda:%d visible\"}\n", device);
        return 1;
    }
    for (size_t ci = 0; ci < sizeof gen_cases / sizeof gen_cases[0]; ci++) {
        const struct cuda_case *k = &gen_cases[ci];
        if (only ? !case_chosen(k->name, only) : device < 0 && k->hidden > 256)
            continue;
        struct model_config c;
        cuda_case_config(k, &c);
        c.task = MODEL_TASK_GENERATE;
        char err[512];
        struct model *m = bench_model(&c, err, sizeof err);
        struct model_cuda_options o = {.device = device, .precision = prec, .max_batch = k->batch,
                                       .max_seq = k->seq, .graphs = k->graphs && !profile,
                                       .residual_bf16 = residual_bf16, .kv_tokens = k->seq + GEN_NEW};
        struct model_cuda *e = NULL;
        struct model_runner *r = NULL;
        if (m && device >= 0)
            e = model_cuda_create(m, &o, err, sizeof err);
        else if (m)
            r = model_runner_create(m, k->batch, k->seq, k->seq + GEN_NEW, threads, err, sizeof err);
        uint32_t *ids = malloc((size_t)k->batch * k->seq * sizeof(uint32_t));
        uint32_t *lengths = malloc(k->batch * sizeof(uint32_t)), *out_len = calloc(k->batch, sizeof(uint32_t));
        uint32_t *out = malloc((size_t)k->batch * GEN_NEW * sizeof(uint32_t));
        if ((!e && !r) || !ids || !lengths || !out_len || !out) {
            printf("{\"side\":\"netlm\",\"case\":\"%s\",\"error\":\"%s\"}\n", k->name, e || r ? "out of memory" : err);
            status = 1;
        } else {
            full_length_batch(ids, lengths, k->batch, k->seq, c.vocab_size, 44);
            const struct model_sampling greedy = {.ignore_sep = true};
            double secs = 0.0;
            bool ok = true;
            /* the warm-ups capture the prefill's and the decode step's graphs */
            TIME_MEDIAN(runs, secs,
                        ok = (e ? model_cuda_generate(e, ids, lengths, k->batch, k->seq, &greedy, GEN_NEW, out, out_len)
                                : model_generate(r, ids, lengths, k->batch, k->seq, &greedy, GEN_NEW, out, out_len)) &&
                             ok);
            uint32_t short_rows = 0;
            for (uint32_t b = 0; b < k->batch; b++)
                short_rows += out_len[b] != GEN_NEW;
            if (!ok || short_rows) {
                printf("{\"side\":\"netlm\",\"case\":\"%s\",\"error\":\"%s\"}\n", k->name,
                       !ok ? (e ? model_cuda_error(e) : "model_generate failed") : "a row stopped before 16 tokens");
                status = 1;
            } else {
                const double new_tokens = (double)k->batch * GEN_NEW;
                printf("{\"side\":\"netlm\",\"case\":\"%s\",\"device\":\"%s\",\"precision\":\"%s\",\"residual\":\"%s\","
                       "\"graphs\":%s,\"threads\":%u,\"batch\":%u,\"prompt\":%u,\"new_tokens\":%d,\"ms\":%.4f,"
                       "\"ms_per_token\":%.4f,\"tok_per_s\":%.1f,\"mib\":%.1f}\n",
                       k->name, e ? "cuda" : "cpu", !e ? "fp32" : prec == MODEL_PRECISION_FP32 ? "fp32" : "bf16",
                       e && residual_bf16 ? "bf16" : "fp32", e && o.graphs ? "true" : "false", e ? 0 : threads,
                       k->batch, k->seq, GEN_NEW, secs * 1e3, secs * 1e3 / GEN_NEW, new_tokens / secs,
                       (e ? model_cuda_bytes(e) : model_runner_bytes(r)) / 1048576.0);
            }
        }
        fflush(stdout);
        free(ids);
        free(lengths);
        free(out_len);
        free(out);
        model_cuda_free(e);
        model_runner_free(r);
        model_free(m);
        model_config_release(&c);
    }
    return status;
}

int main(int argc, char **argv)
{
    const char *arch = "gpt2";
    uint32_t threads = 1;
    int runs = 7;
    bool rss_mode = false, train_mode = false, profile = false, pipeline = false;
    bool generate = false, all_graphs = false;
    float dropout = -1.0f; /* --dropout: the GPU training cases' own unless given */
    const char *device_name = "cpu", *only = NULL, *precision = "bf16", *residual = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--arch") && i + 1 < argc)
            arch = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--qwen05b-rss"))
            rss_mode = true;
        else if (!strcmp(argv[i], "--train"))
            train_mode = true;
        else if (!strcmp(argv[i], "--device") && i + 1 < argc)
            device_name = argv[++i];
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--precision") && i + 1 < argc)
            precision = argv[++i];
        else if (!strcmp(argv[i], "--profile"))
            profile = true;
        else if (!strcmp(argv[i], "--graphs"))
            all_graphs = true;
        else if (!strcmp(argv[i], "--residual") && i + 1 < argc)
            residual = argv[++i];
        else if (!strcmp(argv[i], "--pipeline"))
            pipeline = true;
        else if (!strcmp(argv[i], "--generate"))
            generate = true;
        else if (!strcmp(argv[i], "--dropout") && i + 1 < argc) {
            char *end;
            dropout = strtof(argv[++i], &end);
            if (*end || !(dropout >= 0.0f && dropout < 1.0f)) {
                fprintf(stderr, "%s: --dropout: expected a probability in [0, 1), not '%s'\n", argv[0], argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "usage: %s [--arch gpt2|qwen2] [--threads N] [--runs N] [--qwen05b-rss | --train | --generate [--only NAME] | --device cuda[:N] [--only NAME] [--precision bf16|fp32] [--residual bf16|fp32] [--profile | --graphs] [--pipeline | --generate | --train [--dropout P]]]\n", argv[0]);
            return 2;
        }
    }
    if (threads < 1 || runs < 1 || runs > 64 || (strcmp(arch, "gpt2") && strcmp(arch, "qwen2"))) {
        fprintf(stderr, "%s: bad --arch, --threads or --runs (1..64)\n", argv[0]);
        return 2;
    }
    int device = -1;
    if (!model_device_parse(device_name, &device) || (strcmp(precision, "bf16") && strcmp(precision, "fp32"))) {
        fprintf(stderr, "%s: bad --device (cpu, cuda, cuda:N) or --precision (bf16, fp32)\n", argv[0]);
        return 2;
    }
    if (residual && ((strcmp(residual, "bf16") && strcmp(residual, "fp32")) || device < 0 ||
                     !strcmp(precision, "fp32"))) {
        fprintf(stderr, "%s: --residual is bf16 or fp32, for --device cuda with --precision bf16\n", argv[0]);
        return 2;
    }
    /* the residual stream as netlm's commands and the sensor keep it unless told */
    const bool residual_bf16 = device >= 0 && strcmp(precision, "fp32") && (!residual || !strcmp(residual, "bf16"));
    if (pipeline && (device < 0 || train_mode || residual || profile)) {
        fprintf(stderr, "%s: --pipeline is for --device cuda, without --train, --residual or --profile\n", argv[0]);
        return 2;
    }
    if (all_graphs && (device < 0 || train_mode || pipeline || generate || profile)) {
        fprintf(stderr, "%s: --graphs is for --device cuda classification, without --profile\n", argv[0]);
        return 2;
    }
    if (dropout >= 0.0f && !(device >= 0 && train_mode)) {
        fprintf(stderr, "%s: --dropout is for --device cuda --train\n", argv[0]);
        return 2;
    }
    if (generate && (pipeline || train_mode || rss_mode)) {
        fprintf(stderr, "%s: --generate is for --device cpu or cuda[:N], without --pipeline, --train or --qwen05b-rss\n",
                argv[0]);
        return 2;
    }
    if (generate)
        return gen_bench(device, only, strcmp(precision, "fp32") ? MODEL_PRECISION_BF16 : MODEL_PRECISION_FP32,
                         residual_bf16, runs, profile, threads);
    if (pipeline)
        return cuda_pipeline_bench(device, strcmp(precision, "fp32") ? MODEL_PRECISION_BF16 : MODEL_PRECISION_FP32, runs);
    if (device >= 0 && train_mode)
        return cuda_train_bench(device, only, strcmp(precision, "fp32") ? MODEL_PRECISION_BF16 : MODEL_PRECISION_FP32,
                                runs, dropout);
    if (device >= 0)
        return cuda_bench(device, only, strcmp(precision, "fp32") ? MODEL_PRECISION_BF16 : MODEL_PRECISION_FP32,
                          residual_bf16, runs, profile, all_graphs);
    if (rss_mode)
        return qwen05b_rss(threads);
    if (train_mode)
        return train_bench(arch, threads, runs);

    struct model_config c;
    config_for(arch, &c);
    char err[512];
    struct model *m = model_create(&c, 1, err, sizeof err);
    if (!m) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const uint32_t B = 32, T = 128, GB = 8, GP = 64, GN = 64;
    struct model_runner *r = model_runner_create(m, B, T, 0, threads, err, sizeof err);
    struct model_runner *g = model_runner_create(m, GB, GP, GP + GN, threads, err, sizeof err);
    uint32_t *ids = malloc((size_t)B * T * sizeof(uint32_t)), lengths[32];
    float *scores = malloc((size_t)B * c.num_labels * sizeof(float));
    float *logits = malloc((size_t)B * T * c.vocab_size * sizeof(float));
    uint32_t *gen = malloc((size_t)GB * GN * sizeof(uint32_t)), gen_len[8];
    if (!r || !g || !ids || !scores || !logits || !gen) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    full_length_batch(ids, lengths, B, T, c.vocab_size, 42);
    double classify_s, batch1_s, lm_s, gen_s, gen1_s;
    TIME_MEDIAN(runs, classify_s, model_classify(r, ids, lengths, B, T, NULL, scores));
    TIME_MEDIAN(runs, batch1_s, model_classify(r, ids, lengths, 1, T, NULL, scores));
    TIME_MEDIAN(runs > 3 ? 3 : runs, lm_s, model_forward(r, ids, lengths, B, T, NULL, logits));
    struct model_sampling greedy = {.ignore_sep = true};
    uint32_t glen[8];
    for (uint32_t b = 0; b < GB; b++)
        glen[b] = GP;
    TIME_MEDIAN(runs > 3 ? 3 : runs, gen_s, model_generate(g, ids, glen, GB, GP, &greedy, GN, gen, gen_len));
    TIME_MEDIAN(runs > 3 ? 3 : runs, gen1_s, model_generate(g, ids, glen, 1, GP, &greedy, GN, gen, gen_len));
    printf("{\"side\":\"netlm\",\"arch\":\"%s\",\"threads\":%u,"
           "\"config\":{\"layers\":%u,\"hidden\":%u,\"heads\":%u,\"kv_heads\":%u,\"ffn\":%u,\"vocab\":%u},"
           "\"classify_seq_per_s\":%.2f,\"classify_batch1_ms\":%.3f,\"lm_seq_per_s\":%.2f,"
           "\"generate_tok_per_s\":%.1f,\"generate_batch1_tok_per_s\":%.1f,\"peak_rss_mib\":%.1f}\n",
           arch, threads, c.layers, c.hidden, c.heads, c.kv_heads, c.ffn, c.vocab_size,
           B / classify_s, batch1_s * 1e3, B / lm_s, GB * GN / gen_s, GN / gen1_s,
           peak_rss_kib() / 1024.0);
    free(ids);
    free(scores);
    free(logits);
    free(gen);
    model_runner_free(r);
    model_runner_free(g);
    model_free(m);
    model_config_release(&c);
    return 0;
}
