/* test_cuda_train.c — training on the GPU (train_cuda_*) against the CPU's training
 * (train_runner + train_adamw_step), which the finite-difference tests and the PyTorch twin
 * check: small GPT-2 and Qwen2 models (grouped-query heads, RoPE, SwiGLU, RMSNorm), right-padded
 * batches of different lengths, both objectives.
 *
 * Bounds:
 * - one step in fp32: loss within 1e-5 relative; every parameter tensor's gradient within 1e-4
 *   of its largest CPU value (the key part of the q/k/v bias left out: its gradient is exactly
 *   zero, softmax ignores a constant added to a row, so both sides hold only rounding noise
 *   there; the CPU zeroes it for GPT-2 and so does the GPU). Both sides compute the same
 *   formulas in fp32; the differences are
 *   summation orders (GEMMs, attention's recomputed probabilities, the norms' statistics in fp32
 *   on the GPU and double on the CPU), ~1e-6 per op, compounded over the layers of the backward
 *   pass;
 * - 20 AdamW steps in fp32: every step's loss within 1e-4 of the CPU's (the bound);
 * - 20 steps in bf16: within 2 % of the CPU's fp32 loss;
 * - resume: 3 steps, download parameters and moments, a new trainer, upload, 3 more steps gives
 *   the same bits as 6 steps in one trainer (every sum on the device runs in a fixed order).
 *
 * Dropout (train_cuda_set_dropout against train_runner_set_dropout, the same seed and
 * sample_base):
 * - the masks: cu_dropout_rows against train/grad.c's drop_rows formula written out on the host
 *   (op_dropout_stream / op_dropout_factor), bit for bit, every place of several layers, with
 *   and without the base, in place, and into bf16 (the same bits as rounding the host's fp32);
 *   the kept fraction within 0.02 of 1 − p;
 * - one step with embed, attention and residual dropout 0.1 in fp32: the bounds of one step
 *   without it (loss 1e-5, gradients 1e-4): the masks are the same bits on both sides, so only
 *   rounding differs; one mask drawn differently moves its element by 1.1× its value, far
 *   outside. The CPU's loss with dropout must differ from its loss without (the step exercises
 *   the masks);
 * - one step in bf16 with dropout: loss within 2 % of the CPU's fp32 (the bf16 curves' bound),
 *   the gradients bit-identical when run twice;
 * - probabilities 0 are the path without dropout: the same bits as a trainer never given
 *   dropout, also after dropout was on and off again. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>

#ifndef NETLM_HAVE_CUDA
int main(void)
{
    printf("skipped: built without CUDA\n");
    return 77;
}
#else

#include "model/cuda/cuda_train.h"
#include "model/model_internal.h"
#include "tests/unit/test_cuda_util.h"
#include "train/train.h"

#define B 4
#define T 40

static struct model *small_model(enum model_arch arch, bool labels, bool tied_head)
{
    struct model_config c;
    model_config_init(&c);
    c.arch = arch;
    c.vocab_size = 300;
    c.hidden = 64;
    c.layers = 2;
    c.heads = 4;
    c.kv_heads = arch == MODEL_ARCH_GPT2 ? 4 : 2;
    c.head_dim = 16;
    c.ffn = arch == MODEL_ARCH_GPT2 ? 256 : 96;
    c.max_positions = 64;
    c.seq_length = T;
    c.rope_theta = 10000.0;
    c.norm_eps = arch == MODEL_ARCH_GPT2 ? 1e-5f : 1e-6f;
    c.act = arch == MODEL_ARCH_GPT2 ? MODEL_ACT_GELU_TANH : MODEL_ACT_SILU;
    c.pooling = MODEL_POOL_MEAN;
    c.tie_embeddings = tied_head;
    char err[256];
    struct model *m = model_create(&c, 11, err, sizeof err);
    assert_non_null(m);
    if (labels) {
        char *names[] = {"a", "b", "c", "d", "e"};
        assert_true(model_set_labels(m, 5, names, T, err, sizeof err));
    }
    /* weights larger than the 0.02 init, so every path carries a gradient well above rounding */
    struct model_rng rng;
    model_rng_seed(&rng, 5);
    for (size_t i = 0; i < m->layout.count; i++) {
        const struct model_tensor *tensor = &m->layout.tensors[i];
        float *p = m->params + tensor->offset;
        for (size_t j = 0; j < tensor->numel; j++)
            p[j] = tensor->kind == MODEL_TENSOR_NORM_WEIGHT ? 1.0f + 0.1f * model_rng_normal(&rng)
                                                            : 0.08f * model_rng_normal(&rng);
    }
    model_config_release(&c);
    return m;
}

static struct model *small(enum model_arch arch, bool labels) { return small_model(arch, labels, true); }

struct batch_data {
    uint32_t ids[B * T], lengths[B], labels[B];
    struct train_batch batch;
};

static void make_batch(struct batch_data *d, uint32_t vocab, uint32_t seed)
{
    static const uint32_t lengths[B] = {40, 17, 1, 33};
    struct test_rng r = {seed};
    memset(d->ids, 0, sizeof d->ids);
    for (uint32_t b = 0; b < B; b++) {
        d->lengths[b] = lengths[(b + seed) % B];
        d->labels[b] = (uint32_t)(test_uniform(&r) * 5);
        for (uint32_t i = 0; i < d->lengths[b]; i++)
            d->ids[b * T + i] = (uint32_t)(test_uniform(&r) * vocab);
    }
    d->batch = (struct train_batch){.ids = d->ids, .lengths = d->lengths, .batch = B, .seq = T,
                                    .labels = d->labels};
}

static struct train_cuda *gpu_trainer(struct model *m, bool bf16)
{
    char err[512];
    struct train_cuda *t = train_cuda_create(m, 0, bf16, B, T, err, sizeof err);
    if (!t)
        fail_msg("%s", err);
    return t;
}

/* One forward + backward on both sides: loss and every tensor's gradient. The batch seed picks
 * where the sequence of one token and the full-length one sit (every rotation is checked). */
static void step_on(struct model *m, enum train_objective objective, const char *name, uint32_t seed,
                    const struct train_dropout *drop)
{
    char label[64];
    snprintf(label, sizeof label, "%s seed %u%s", name, seed, drop ? " dropout" : "");
    struct batch_data d;
    make_batch(&d, m->cfg.vocab_size, seed);
    d.batch.sample_base = 1000u * seed + 17u; /* masks of samples other than 0..B-1 */
    char err[512];
    struct train_runner *r = train_runner_create(m, B, T, 1, err, sizeof err);
    assert_non_null(r);
    double cpu_loss = 0, gpu_loss = 0;
    if (drop)
        train_runner_set_dropout(r, drop);
    assert_true(train_forward_backward(r, objective, &d.batch, &cpu_loss));
    struct train_cuda *t = gpu_trainer(m, false);
    if (drop && !train_cuda_set_dropout(t, drop))
        fail_msg("%s", train_cuda_error(t));
    if (!train_cuda_forward_backward(t, objective, &d.batch, &gpu_loss))
        fail_msg("%s", train_cuda_error(t));
    const size_t P = m->layout.total;
    float *g = malloc(P * sizeof(float));
    if (!train_cuda_download(t, NULL, g, NULL, NULL))
        fail_msg("%s", train_cuda_error(t));
    char what[96];
    snprintf(what, sizeof what, "%s loss %.6f", label, cpu_loss);
    TEST_WITHIN(what, CU_F32, fabs(gpu_loss - cpu_loss) / fabs(cpu_loss), 1e-5);
    const float *ref = train_runner_grads(r);
    double worst = 0;
    const char *worst_name = "";
    const size_t qd = (size_t)m->cfg.heads * m->cfg.head_dim, kd = (size_t)m->cfg.kv_heads * m->cfg.head_dim;
    for (size_t i = 0; i < m->layout.count; i++) {
        const struct model_tensor *tensor = &m->layout.tensors[i];
        const size_t len = strlen(tensor->name);
        double e = test_rel_err(g + tensor->offset, ref + tensor->offset, tensor->numel);
        if (len > 5 && !strcmp(tensor->name + len - 5, "qkv_b")) { /* q and v parts only */
            float got_qv[1024], ref_qv[1024];
            assert_true(tensor->numel - kd <= 1024);
            memcpy(got_qv, g + tensor->offset, qd * sizeof(float));
            memcpy(ref_qv, ref + tensor->offset, qd * sizeof(float));
            memcpy(got_qv + qd, g + tensor->offset + qd + kd, kd * sizeof(float));
            memcpy(ref_qv + qd, ref + tensor->offset + qd + kd, kd * sizeof(float));
            e = test_rel_err(got_qv, ref_qv, qd + kd);
        }
        if (e > worst) {
            worst = e;
            worst_name = tensor->name;
        }
    }
    snprintf(what, sizeof what, "%s grads (worst %s)", label, worst_name);
    TEST_WITHIN(what, CU_F32, worst, 1e-4);
    if (drop) { /* the step is not the one without dropout: the masks were drawn on both sides */
        const struct train_dropout off = {0};
        double plain = 0;
        train_runner_set_dropout(r, &off);
        assert_true(train_forward_backward(r, objective, &d.batch, &plain));
        printf("  %-40s cpu loss %.6f without dropout, %.6f with\n", label, plain, cpu_loss);
        assert_true(fabs(plain - cpu_loss) > 1e-4 * fabs(plain));
    }
    free(g);
    train_cuda_free(t);
    train_runner_free(r);
}

static void one_step(enum model_arch arch, enum train_objective objective, const char *name, uint32_t seed,
                     const struct train_dropout *drop)
{
    struct model *m = small(arch, objective == TRAIN_CLASSIFY);
    step_on(m, objective, name, seed, drop);
    model_free(m);
}

static void test_one_step(void **state)
{
    (void)state;
    for (uint32_t seed = 0; seed < B; seed++) {
        one_step(MODEL_ARCH_GPT2, TRAIN_LM, "gpt2 lm", seed, NULL);
        one_step(MODEL_ARCH_QWEN2, TRAIN_LM, "qwen2 lm", seed, NULL);
        one_step(MODEL_ARCH_GPT2, TRAIN_CLASSIFY, "gpt2 classify", seed, NULL);
        one_step(MODEL_ARCH_QWEN2, TRAIN_CLASSIFY, "qwen2 classify", seed, NULL);
    }
    /* an untied LM head (larger Qwen2 models): its own tensor carries the trainer's padded
     * vocabulary rows instead of the embedding */
    struct model *m = small_model(MODEL_ARCH_QWEN2, false, false);
    assert_non_null(m->w.lm_head);
    step_on(m, TRAIN_LM, "qwen2 lm untied head", 0, NULL);
    model_free(m);
}

/* 20 AdamW steps on both sides from the same weights: the loss curves. */
static void curves(enum model_arch arch, bool bf16)
{
    const int steps = 20;
    struct model *mc = small(arch, false), *mg = small(arch, false);
    char err[512];
    struct train_runner *r = train_runner_create(mc, B, T, 1, err, sizeof err);
    assert_non_null(r);
    struct train_cuda *t = gpu_trainer(mg, bf16);
    struct train_adamw o;
    train_adamw_defaults(&o);
    float *mom = calloc(mc->layout.total, sizeof(float)), *vel = calloc(mc->layout.total, sizeof(float));
    double worst = 0;
    for (int s = 1; s <= steps; s++) {
        struct batch_data d;
        make_batch(&d, mc->cfg.vocab_size, (uint32_t)s);
        double lc = 0, lg = 0;
        train_zero_grads(r);
        assert_true(train_forward_backward(r, TRAIN_LM, &d.batch, &lc));
        train_adamw_step(mc, train_runner_grads(r), mom, vel, (uint64_t)s, 1e-3f, &o, 1);
        if (!train_cuda_zero_grads(t) || !train_cuda_forward_backward(t, TRAIN_LM, &d.batch, &lg) ||
            !train_cuda_adamw_step(t, (uint64_t)s, 1e-3f, &o))
            fail_msg("%s", train_cuda_error(t));
        const double e = bf16 ? fabs(lg - lc) / lc : fabs(lg - lc);
        const bool first_off = e > (bf16 ? 0.02 : 1e-4) && worst <= (bf16 ? 0.02 : 1e-4);
        worst = e > worst ? e : worst;
        if (s == 1 || s == steps || first_off) /* and where the curves part, if they do */
            printf("  step %2d  cpu %.6f  gpu %.6f%s\n", s, lc, lg, first_off ? "  (first step off)" : "");
    }
    char what[96];
    snprintf(what, sizeof what, "%s %s: 20 steps, loss %s", arch == MODEL_ARCH_GPT2 ? "gpt2" : "qwen2",
             bf16 ? "bf16" : "fp32", bf16 ? "(relative)" : "(absolute)");
    TEST_WITHIN(what, bf16 ? CU_BF16 : CU_F32, worst, bf16 ? 0.02 : 1e-4);
    free(mom), free(vel);
    train_cuda_free(t);
    train_runner_free(r);
    model_free(mc), model_free(mg);
}

static void test_twenty_steps(void **state)
{
    (void)state;
    curves(MODEL_ARCH_GPT2, false);
    curves(MODEL_ARCH_QWEN2, false);
    curves(MODEL_ARCH_GPT2, true);
    if (!test_cuda_quick())
        curves(MODEL_ARCH_QWEN2, true);
}

/* steps first..last of a run on trainer t */
static void run_steps(struct train_cuda *t, uint32_t vocab, int first, int last)
{
    struct train_adamw o;
    train_adamw_defaults(&o);
    for (int s = first; s <= last; s++) {
        struct batch_data d;
        make_batch(&d, vocab, (uint32_t)s);
        double l = 0;
        if (!train_cuda_zero_grads(t) || !train_cuda_forward_backward(t, TRAIN_LM, &d.batch, &l) ||
            !train_cuda_adamw_step(t, (uint64_t)s, 1e-3f, &o))
            fail_msg("%s", train_cuda_error(t));
    }
}

static void test_resume_bit_identical(void **state)
{
    (void)state;
    for (int bf16 = 0; bf16 < 2; bf16++) {
        struct model *m = small(MODEL_ARCH_QWEN2, false);
        const size_t P = m->layout.total;
        float *straight = malloc(P * sizeof(float)), *resumed = malloc(P * sizeof(float));
        float *p = malloc(P * sizeof(float)), *mo = malloc(P * sizeof(float)), *ve = malloc(P * sizeof(float));
        struct train_cuda *t = gpu_trainer(m, bf16);
        run_steps(t, m->cfg.vocab_size, 1, 6);
        assert_true(train_cuda_download(t, straight, NULL, NULL, NULL));
        train_cuda_free(t);

        t = gpu_trainer(m, bf16); /* m->params still holds the start */
        run_steps(t, m->cfg.vocab_size, 1, 3);
        assert_true(train_cuda_download(t, p, NULL, mo, ve));
        train_cuda_free(t);
        t = gpu_trainer(m, bf16);
        if (!train_cuda_upload(t, p, mo, ve))
            fail_msg("%s", train_cuda_error(t));
        run_steps(t, m->cfg.vocab_size, 4, 6);
        assert_true(train_cuda_download(t, resumed, NULL, NULL, NULL));
        train_cuda_free(t);
        size_t differ = 0;
        for (size_t i = 0; i < P; i++)
            differ += memcmp(&straight[i], &resumed[i], sizeof(float)) != 0;
        printf("  resume %s: %zu of %zu parameters differ\n", bf16 ? "bf16" : "fp32", differ, P);
        assert_int_equal(differ, 0);
        free(straight), free(resumed), free(p), free(mo), free(ve);
        model_free(m);
    }
}

/* Which tensors' gradients differ bit for bit between two runs (names into buf); the count. */
static size_t grads_differ(const struct model *m, const float *a, const float *b, char *buf, size_t cap)
{
    size_t n = 0, k = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < m->layout.count; i++) {
        const struct model_tensor *tensor = &m->layout.tensors[i];
        if (memcmp(a + tensor->offset, b + tensor->offset, tensor->numel * sizeof(float)) == 0)
            continue;
        n++;
        if (k + strlen(tensor->name) + 2 < cap)
            k += (size_t)snprintf(buf + k, cap - k, "%s ", tensor->name);
    }
    return n;
}

/* The same batch from the same weights gives the same gradient bits: twice in one trainer, and
 * in a fresh trainer against one that ran a different batch first (a kernel reading something
 * the step did not write would show there). Names the tensors that differ. */
static void test_deterministic_gradients(void **state)
{
    (void)state;
    for (int arch = 0; arch < 2; arch++) {
        for (int bf16 = 0; bf16 < 2; bf16++) {
            struct model *m = small(arch ? MODEL_ARCH_QWEN2 : MODEL_ARCH_GPT2, false);
            const size_t P = m->layout.total;
            float *g1 = malloc(P * sizeof(float)), *g2 = malloc(P * sizeof(float)), *g3 = malloc(P * sizeof(float));
            struct batch_data d, other;
            make_batch(&d, m->cfg.vocab_size, 2);
            make_batch(&other, m->cfg.vocab_size, 7);
            double l1 = 0, l2 = 0, l3 = 0, lo = 0;
            struct train_cuda *a = gpu_trainer(m, bf16), *b = gpu_trainer(m, bf16);
            bool ok = train_cuda_forward_backward(a, TRAIN_LM, &d.batch, &l1) &&
                      train_cuda_download(a, NULL, g1, NULL, NULL) && train_cuda_zero_grads(a) &&
                      train_cuda_forward_backward(a, TRAIN_LM, &d.batch, &l2) &&
                      train_cuda_download(a, NULL, g2, NULL, NULL) &&
                      train_cuda_forward_backward(b, TRAIN_LM, &other.batch, &lo) && train_cuda_zero_grads(b) &&
                      train_cuda_forward_backward(b, TRAIN_LM, &d.batch, &l3) &&
                      train_cuda_download(b, NULL, g3, NULL, NULL);
            if (!ok)
                fail_msg("%s / %s", train_cuda_error(a), train_cuda_error(b));
            char names[512];
            const size_t same_trainer = grads_differ(m, g1, g2, names, sizeof names);
            printf("  %s %s: twice in one trainer: loss %s, %zu tensors differ %s\n", arch ? "qwen2" : "gpt2",
                   bf16 ? "bf16" : "fp32", l1 == l2 ? "same" : "DIFFERS", same_trainer, names);
            const size_t after_other = grads_differ(m, g1, g3, names, sizeof names);
            printf("  %s %s: after another batch: loss %s, %zu tensors differ %s\n", arch ? "qwen2" : "gpt2",
                   bf16 ? "bf16" : "fp32", l1 == l3 ? "same" : "DIFFERS", after_other, names);
            assert_true(l1 == l2 && l1 == l3);
            assert_int_equal(same_trainer, 0);
            assert_int_equal(after_other, 0);
            train_cuda_free(a);
            train_cuda_free(b);
            free(g1), free(g2), free(g3);
            model_free(m);
        }
    }
}

/* ---- dropout ---- */

/* train/grad.c's drop_stream, written out: the stream of (sequence key, layer, place, head) and
 * op_dropout's threshold and scale for p */
static struct op_dropout cpu_drop(uint64_t seq_key, uint32_t layer, uint32_t place, uint32_t head, float p)
{
    struct op_dropout dr;
    dr.key = op_dropout_stream(op_dropout_stream(seq_key, (uint64_t)layer * 4 + place), head);
    const double t = (double)p * 4294967296.0;
    dr.threshold = t >= 4294967295.0 ? UINT32_MAX : (uint32_t)t;
    dr.scale = 1.0f / (1.0f - p);
    return dr;
}

/* cu_dropout_rows against drop_rows' formula on the host, bit for bit. */
static void test_dropout_masks(void **state)
{
    (void)state;
    static const uint32_t lens[] = {40, 17, 1, 33, 2};
    const uint32_t nseq = 5;
    const uint64_t seed = 0x5eed, sample_base = 123456789;
    uint32_t max_len;
    uint32_t *off = test_seq_offsets(lens, nseq, &max_len);
    const uint32_t N = off[nseq];
    uint64_t seq_key[5];
    for (uint32_t b = 0; b < nseq; b++)
        seq_key[b] = op_dropout_stream(seed, sample_base + b); /* grad.c's seq_key */
    uint32_t *d_off;
    uint64_t *d_key;
    CUDA_OK(cudaMalloc((void **)&d_off, (nseq + 1) * sizeof(uint32_t)));
    CUDA_OK(cudaMalloc((void **)&d_key, nseq * sizeof(uint64_t)));
    CUDA_OK(cudaMemcpy(d_off, off, (nseq + 1) * sizeof(uint32_t), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d_key, seq_key, nseq * sizeof(uint64_t), cudaMemcpyHostToDevice));
    struct test_rng r = {21};
    static const uint32_t widths[] = {64, 37};
    static const float probs[] = {0.1f, 0.5f};
    for (unsigned wi = 0; wi < 2; wi++) {
        const uint32_t C = widths[wi];
        const size_t n = (size_t)N * C;
        float *src = malloc(n * sizeof(float)), *base = malloc(n * sizeof(float));
        float *got = malloc(n * sizeof(float)), *ref = malloc(n * sizeof(float)), *ref_base = malloc(n * sizeof(float));
        uint16_t *got16 = malloc(n * sizeof(uint16_t));
        test_fill(src, n, 1.0f, &r);
        test_fill(base, n, 1.0f, &r);
        float *d_src = test_upload(src, n, CU_F32), *d_base = test_upload(base, n, CU_F32);
        float *d_dst = test_poisoned(n, CU_F32);
        void *d_dst16 = test_poisoned(n, CU_BF16);
        for (unsigned pi = 0; pi < 2; pi++) {
            const float p = probs[pi];
            uint32_t threshold;
            float scale;
            cu_dropout_params(p, &threshold, &scale);
            size_t differ = 0, differ_base = 0, differ16 = 0, kept = 0, total = 0;
            for (uint32_t layer = 0; layer < 3; layer++) {
                for (uint32_t place = 0; place < 4; place++) {
                    for (uint32_t b = 0; b < nseq; b++) {
                        const struct op_dropout dr = cpu_drop(seq_key[b], layer, place, 0, p);
                        for (uint32_t i = 0; i < lens[b]; i++)
                            for (uint32_t j = 0; j < C; j++) {
                                const size_t at = ((size_t)off[b] + i) * C + j;
                                volatile float v = op_dropout_factor(&dr, (uint64_t)i * C + j) * src[at];
                                ref[at] = v;
                                ref_base[at] = base[at] + v; /* v volatile: no fused multiply-add */
                                kept += op_dropout_factor(&dr, (uint64_t)i * C + j) != 0.0f;
                                total++;
                            }
                    }
                    CUDA_OK(cu_dropout_rows(d_dst, CU_F32, NULL, d_src, C, d_off, nseq, N, d_key, layer, place,
                                            threshold, scale, 0));
                    test_download(got, d_dst, n, CU_F32);
                    for (size_t k = 0; k < n; k++)
                        differ += memcmp(&got[k], &ref[k], sizeof(float)) != 0;
                    /* with the base, in place over it (the forward's residual add writes a fresh
                     * buffer; the embedding masks in place) */
                    CUDA_OK(cudaMemcpy(d_dst, d_base, n * sizeof(float), cudaMemcpyDeviceToDevice));
                    CUDA_OK(cu_dropout_rows(d_dst, CU_F32, d_dst, d_src, C, d_off, nseq, N, d_key, layer, place,
                                            threshold, scale, 0));
                    test_download(got, d_dst, n, CU_F32);
                    for (size_t k = 0; k < n; k++)
                        differ_base += memcmp(&got[k], &ref_base[k], sizeof(float)) != 0;
                    CUDA_OK(cu_dropout_rows(d_dst16, CU_BF16, NULL, d_src, C, d_off, nseq, N, d_key, layer, place,
                                            threshold, scale, 0));
                    CUDA_OK(cudaDeviceSynchronize());
                    CUDA_OK(cudaMemcpy(got16, d_dst16, n * sizeof(uint16_t), cudaMemcpyDeviceToHost));
                    for (size_t k = 0; k < n; k++)
                        differ16 += got16[k] != cu_f32_to_bf16(ref[k]);
                }
            }
            const double kept_frac = (double)kept / (double)total;
            printf("  masks c %u p %.1f: %zu / %zu / %zu of %zu differ (plain / with base / bf16), kept %.4f\n", C,
                   p, differ, differ_base, differ16, total, kept_frac);
            assert_int_equal(differ, 0);
            assert_int_equal(differ_base, 0);
            assert_int_equal(differ16, 0);
            assert_true(fabs(kept_frac - (1.0 - p)) < 0.02);
        }
        /* in place over the source, as the embedding's backward does */
        const struct op_dropout dr = cpu_drop(seq_key[3], 1, 2, 0, 0.1f);
        uint32_t threshold;
        float scale;
        cu_dropout_params(0.1f, &threshold, &scale);
        CUDA_OK(cudaMemcpy(d_dst, d_src, n * sizeof(float), cudaMemcpyDeviceToDevice));
        CUDA_OK(cu_dropout_rows(d_dst, CU_F32, NULL, d_dst, C, d_off, nseq, N, d_key, 1, 2, threshold, scale, 0));
        test_download(got, d_dst, n, CU_F32);
        for (uint32_t i = 0; i < lens[3]; i++)
            for (uint32_t j = 0; j < C; j++) {
                const size_t at = ((size_t)off[3] + i) * C + j;
                const float want = op_dropout_factor(&dr, (uint64_t)i * C + j) * src[at];
                assert_memory_equal(&got[at], &want, sizeof(float));
            }
        cudaFree(d_src), cudaFree(d_base), cudaFree(d_dst), cudaFree(d_dst16);
        free(src), free(base), free(got), free(ref), free(ref_base), free(got16);
    }
    cudaFree(d_off), cudaFree(d_key);
    free(off);
}

static const struct train_dropout drop_all = {.embed = 0.1f, .attn = 0.1f, .resid = 0.1f, .seed = 0xd20b};

static void test_one_step_dropout(void **state)
{
    (void)state;
    const uint32_t seeds = test_cuda_quick() ? 1 : 2;
    for (uint32_t seed = 0; seed < seeds; seed++) {
        one_step(MODEL_ARCH_GPT2, TRAIN_LM, "gpt2 lm", seed, &drop_all);
        one_step(MODEL_ARCH_QWEN2, TRAIN_LM, "qwen2 lm", seed, &drop_all);
        one_step(MODEL_ARCH_GPT2, TRAIN_CLASSIFY, "gpt2 classify", seed, &drop_all);
        one_step(MODEL_ARCH_QWEN2, TRAIN_CLASSIFY, "qwen2 classify", seed, &drop_all);
    }
}

/* One GPU step (zeroed gradients first) with dropout d (NULL: never set); loss and gradients. */
static void gpu_step(struct train_cuda *t, const struct train_dropout *d, const struct train_batch *batch,
                     double *loss, float *g)
{
    if ((d && !train_cuda_set_dropout(t, d)) || !train_cuda_zero_grads(t) ||
        !train_cuda_forward_backward(t, TRAIN_LM, batch, loss) || !train_cuda_download(t, NULL, g, NULL, NULL))
        fail_msg("%s", train_cuda_error(t));
}

/* bf16 with dropout: near the CPU's fp32 loss, and the same bits twice. */
static void test_dropout_bf16(void **state)
{
    (void)state;
    for (int arch = 0; arch < 2; arch++) {
        struct model *m = small(arch ? MODEL_ARCH_QWEN2 : MODEL_ARCH_GPT2, false);
        const size_t P = m->layout.total;
        struct batch_data d;
        make_batch(&d, m->cfg.vocab_size, 3);
        d.batch.sample_base = 99;
        char err[512];
        struct train_runner *r = train_runner_create(m, B, T, 1, err, sizeof err);
        assert_non_null(r);
        train_runner_set_dropout(r, &drop_all);
        double cpu_loss = 0, l1 = 0, l2 = 0;
        assert_true(train_forward_backward(r, TRAIN_LM, &d.batch, &cpu_loss));
        float *g1 = malloc(P * sizeof(float)), *g2 = malloc(P * sizeof(float));
        struct train_cuda *t = gpu_trainer(m, true);
        gpu_step(t, &drop_all, &d.batch, &l1, g1);
        gpu_step(t, NULL, &d.batch, &l2, g2);
        char what[96], names[512];
        snprintf(what, sizeof what, "%s bf16 dropout loss %.6f", arch ? "qwen2" : "gpt2", cpu_loss);
        TEST_WITHIN(what, CU_BF16, fabs(l1 - cpu_loss) / cpu_loss, 0.02);
        const size_t differ = grads_differ(m, g1, g2, names, sizeof names);
        printf("  %s bf16 dropout twice: loss %s, %zu tensors differ %s\n", arch ? "qwen2" : "gpt2",
               l1 == l2 ? "same" : "DIFFERS", differ, names);
        assert_true(l1 == l2);
        assert_int_equal(differ, 0);
        free(g1), free(g2);
        train_cuda_free(t);
        train_runner_free(r);
        model_free(m);
    }
}

/* Probabilities 0 run the passes without dropout: the same bits as a trainer never given any,
 * also after dropout was on and off again; probabilities outside [0, 1) are refused. */
static void test_dropout_zero_is_off(void **state)
{
    (void)state;
    for (int bf16 = 0; bf16 < 2; bf16++) {
        struct model *m = small(MODEL_ARCH_GPT2, false);
        const size_t P = m->layout.total;
        struct batch_data d;
        make_batch(&d, m->cfg.vocab_size, 1);
        d.batch.sample_base = 5;
        const struct train_dropout zero = {.seed = 0xd20b};
        float *g0 = malloc(P * sizeof(float)), *g1 = malloc(P * sizeof(float)), *g2 = malloc(P * sizeof(float));
        double l0 = 0, l1 = 0, l2 = 0, lon = 0;
        struct train_cuda *a = gpu_trainer(m, bf16), *b = gpu_trainer(m, bf16);
        gpu_step(a, NULL, &d.batch, &l0, g0);
        gpu_step(b, &zero, &d.batch, &l1, g1);
        gpu_step(b, &drop_all, &d.batch, &lon, g2);
        gpu_step(b, &zero, &d.batch, &l2, g2);
        char names[512];
        const size_t differ1 = grads_differ(m, g0, g1, names, sizeof names);
        printf("  %s p = 0: loss %s, %zu tensors differ %s\n", bf16 ? "bf16" : "fp32", l0 == l1 ? "same" : "DIFFERS",
               differ1, names);
        const size_t differ2 = grads_differ(m, g0, g2, names, sizeof names);
        printf("  %s p = 0 after 0.1: loss %s, %zu tensors differ %s (with 0.1: %.6f, without %.6f)\n",
               bf16 ? "bf16" : "fp32", l0 == l2 ? "same" : "DIFFERS", differ2, names, lon, l0);
        assert_true(l0 == l1 && l0 == l2);
        assert_int_equal(differ1, 0);
        assert_int_equal(differ2, 0);
        assert_true(lon != l0);
        const struct train_dropout bad[] = {{.attn = 1.0f}, {.embed = -0.1f}, {.resid = NAN}};
        for (unsigned i = 0; i < 3; i++)
            assert_false(train_cuda_set_dropout(b, &bad[i]));
        train_cuda_free(a);
        train_cuda_free(b);
        free(g0), free(g1), free(g2);
        model_free(m);
    }
}

static void test_bad_batch(void **state)
{
    (void)state;
    struct model *m = small(MODEL_ARCH_GPT2, false);
    struct train_cuda *t = gpu_trainer(m, false);
    struct batch_data d;
    make_batch(&d, m->cfg.vocab_size, 1);
    d.ids[5] = m->cfg.vocab_size; /* outside the vocabulary */
    double l = 0;
    assert_false(train_cuda_forward_backward(t, TRAIN_LM, &d.batch, &l));
    assert_true(strlen(train_cuda_error(t)) > 0);
    make_batch(&d, m->cfg.vocab_size, 1);
    d.batch.batch = B + 1; /* more rows than the trainer holds */
    assert_false(train_cuda_forward_backward(t, TRAIN_LM, &d.batch, &l));
    train_cuda_free(t);
    model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_step),
        cmocka_unit_test(test_deterministic_gradients),
        cmocka_unit_test(test_twenty_steps),
        cmocka_unit_test(test_resume_bit_identical),
        cmocka_unit_test(test_bad_batch),
        cmocka_unit_test(test_dropout_masks),
        cmocka_unit_test(test_one_step_dropout),
        cmocka_unit_test(test_dropout_bf16),
        cmocka_unit_test(test_dropout_zero_is_off),
    };
    return TEST_CUDA_RUN(tests);
}

#endif
