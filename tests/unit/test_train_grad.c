/* test_train_grad.c — the backward pass against central finite differences of the loss, on
 * tiny models of both architectures (every LayerNorm flavour and activation), both objectives
 * and every pooling: for each parameter tensor a few coordinates with the largest gradients are
 * perturbed and the measured slope must match the analytic gradient. Independent of the
 * PyTorch twin: it needs only the forward pass. With dropout the masks are fixed by (seed,
 * sample), so the loss is a smooth function of the weights and the same check applies; the
 * masks themselves are checked for their rate, their scale and their independence from how a
 * batch is split. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"
#include "train/train.h"

static struct model *tiny(enum model_arch arch, enum model_norm norm, enum model_act act,
                          enum model_pooling pooling)
{
    struct model_config c;
    model_config_init(&c);
    c.arch = arch;
    c.vocab_size = 40;
    c.hidden = 16;
    c.layers = 2;
    c.heads = 4;
    c.kv_heads = arch == MODEL_ARCH_GPT2 ? 4 : 2;
    c.head_dim = 4;
    c.ffn = 24;
    c.max_positions = 16;
    c.seq_length = 8;
    c.rope_theta = 100.0;
    c.norm_eps = 1e-5f;
    c.norm = norm;
    c.act = act;
    c.pooling = pooling;
    c.tie_embeddings = arch == MODEL_ARCH_GPT2;
    char err[256];
    struct model *m = model_create(&c, 7, err, sizeof err);
    assert_non_null(m);
    char *labels[] = {"a", "b", "c"};
    assert_true(model_set_labels(m, 3, labels, 8, err, sizeof err));
    /* larger weights than the 0.02 init so every path carries a measurable gradient */
    struct model_rng rng;
    model_rng_seed(&rng, 99);
    for (size_t t = 0; t < m->layout.count; t++) {
        const struct model_tensor *tensor = &m->layout.tensors[t];
        float *p = m->params + tensor->offset;
        for (size_t i = 0; i < tensor->numel; i++)
            p[i] = tensor->kind == MODEL_TENSOR_NORM_WEIGHT ? 1.0f + 0.2f * model_rng_normal(&rng)
                                                            : 0.3f * model_rng_normal(&rng);
    }
    model_config_release(&c);
    return m;
}

static double loss_of(struct train_runner *r, enum train_objective obj, const struct train_batch *b)
{
    double loss;
    assert_true(train_forward_backward(r, obj, b, &loss));
    return loss;
}

static void check_model_dropout(struct model *m, enum train_objective obj, const char *what,
                                const struct train_dropout *drop)
{
    char err[256];
    struct train_runner *r = train_runner_create(m, 3, 8, 2, err, sizeof err);
    assert_non_null(r);
    if (drop)
        train_runner_set_dropout(r, drop);
    uint32_t ids[24] = {2, 7, 9, 30, 11, 12, 13, 1, 2, 20, 21, 22, 1, 0, 0, 0, 2, 33, 34, 1, 0, 0, 0, 0};
    uint32_t lengths[3] = {8, 5, 4}, labels[3] = {0, 2, 1}, starts[3] = {1, 3, 1};
    struct train_batch b = {.ids = ids, .lengths = lengths, .batch = 3, .seq = 8, .labels = labels,
                            .target_start = starts};
    train_zero_grads(r);
    loss_of(r, obj, &b);
    const size_t n = train_runner_grad_count(r);
    float *g = malloc(n * sizeof(float));
    memcpy(g, train_runner_grads(r), n * sizeof(float));
    int checked = 0;
    for (size_t t = 0; t < m->layout.count; t++) {
        const struct model_tensor *tensor = &m->layout.tensors[t];
        if (obj == TRAIN_LM && !strncmp(tensor->name, "cls_", 4))
            continue;
        /* the three coordinates with the largest |gradient|: well above the difference noise */
        size_t best[3] = {0, 0, 0};
        for (size_t i = 0; i < tensor->numel; i++) {
            float a = fabsf(g[tensor->offset + i]);
            if (a > fabsf(g[tensor->offset + best[2]])) {
                best[2] = i;
                for (int k = 2; k > 0 && fabsf(g[tensor->offset + best[k]]) > fabsf(g[tensor->offset + best[k - 1]]); k--) {
                    size_t tmp = best[k];
                    best[k] = best[k - 1];
                    best[k - 1] = tmp;
                }
            }
        }
        for (int k = 0; k < 3; k++) {
            float *p = m->params + tensor->offset + best[k];
            const float analytic = g[tensor->offset + best[k]], saved = *p, h = 1e-2f;
            if (fabsf(analytic) < 1e-4f)
                continue;
            *p = saved + h;
            double up = loss_of(r, obj, &b);
            *p = saved - h;
            double down = loss_of(r, obj, &b);
            *p = saved;
            double numeric = (up - down) / (2.0 * h);
            double tol = 2e-2 * fabs(analytic) + 2e-4;
            if (fabs(numeric - analytic) > tol)
                fail_msg("%s %s[%zu]: analytic %.6g, finite difference %.6g", what, tensor->name,
                         best[k], analytic, numeric);
            checked++;
        }
    }
    assert_true(checked > 20);
    free(g);
    train_runner_free(r);
}

static void check_model(struct model *m, enum train_objective obj, const char *what)
{
    check_model_dropout(m, obj, what, NULL);
}

static void test_gpt2(void **state)
{
    (void)state;
    static const enum model_pooling poolings[] = {MODEL_POOL_MEAN, MODEL_POOL_FIRST, MODEL_POOL_LAST, MODEL_POOL_MAX};
    for (int p = 0; p < 4; p++) {
        struct model *m = tiny(MODEL_ARCH_GPT2, MODEL_NORM_STANDARD, MODEL_ACT_GELU_TANH, poolings[p]);
        check_model(m, TRAIN_CLASSIFY, "gpt2 classify");
        if (p == 0)
            check_model(m, TRAIN_LM, "gpt2 lm");
        model_free(m);
    }
    struct model *m = tiny(MODEL_ARCH_GPT2, MODEL_NORM_UER, MODEL_ACT_GELU_ERF, MODEL_POOL_MEAN);
    check_model(m, TRAIN_LM, "gpt2 uer/erf lm");
    check_model(m, TRAIN_CLASSIFY, "gpt2 uer/erf classify");
    model_free(m);
}

static void test_qwen2(void **state)
{
    (void)state;
    struct model *m = tiny(MODEL_ARCH_QWEN2, MODEL_NORM_STANDARD, MODEL_ACT_SILU, MODEL_POOL_MEAN);
    check_model(m, TRAIN_LM, "qwen2 lm");
    check_model(m, TRAIN_CLASSIFY, "qwen2 classify");
    model_free(m);
}

static void test_dropout_gradients(void **state)
{
    (void)state;
    const struct train_dropout drop = {.embed = 0.2f, .attn = 0.3f, .resid = 0.25f, .seed = 5};
    struct model *m = tiny(MODEL_ARCH_GPT2, MODEL_NORM_STANDARD, MODEL_ACT_GELU_TANH, MODEL_POOL_MEAN);
    check_model_dropout(m, TRAIN_LM, "gpt2 lm dropout", &drop);
    check_model_dropout(m, TRAIN_CLASSIFY, "gpt2 classify dropout", &drop);
    model_free(m);
    m = tiny(MODEL_ARCH_QWEN2, MODEL_NORM_STANDARD, MODEL_ACT_SILU, MODEL_POOL_LAST);
    check_model_dropout(m, TRAIN_LM, "qwen2 lm dropout", &drop);
    check_model_dropout(m, TRAIN_CLASSIFY, "qwen2 classify dropout", &drop);
    model_free(m);
}

static void test_dropout_mask(void **state)
{
    (void)state;
    /* rate and scale: over 2 M elements the dropped fraction is p within 5 standard deviations
     * and the mean factor is 1 (the expectation is preserved) */
    const float ps[] = {0.1f, 0.5f};
    for (int k = 0; k < 2; k++) {
        const float p = ps[k];
        struct op_dropout d = {.key = op_dropout_stream(11, (uint64_t)k),
                               .threshold = (uint32_t)((double)p * 4294967296.0),
                               .scale = 1.0f / (1.0f - p)};
        const size_t n = 2000000;
        size_t dropped = 0;
        double sum = 0.0;
        for (size_t i = 0; i < n; i++) {
            float f = op_dropout_factor(&d, i);
            assert_true(f == 0.0f || f == d.scale);
            dropped += f == 0.0f;
            sum += f;
        }
        const double sd = sqrt(p * (1.0 - p) / (double)n);
        assert_true(fabs((double)dropped / (double)n - p) < 5 * sd);
        assert_true(fabs(sum / (double)n - 1.0) < 5 * sd / (1.0 - p));
    }
    /* neighbouring streams and elements are not correlated: the same element of two streams is
     * dropped together at rate p², not p */
    struct op_dropout a = {.key = op_dropout_stream(3, 1), .threshold = 1u << 31, .scale = 2.0f};
    struct op_dropout b = {.key = op_dropout_stream(3, 2), .threshold = 1u << 31, .scale = 2.0f};
    size_t both = 0;
    for (size_t i = 0; i < 400000; i++)
        both += op_dropout_factor(&a, i) == 0.0f && op_dropout_factor(&b, i) == 0.0f;
    assert_true(fabs((double)both / 400000.0 - 0.25) < 0.005);
}

/* The gradient of one batch equals the target-weighted gradients of its rows run alone with the
 * same sample numbers: a mask belongs to its sample, not to the batch or the process that ran
 * it (which is what keeps data-parallel training equal to one process). */
static void test_dropout_split(void **state)
{
    (void)state;
    const struct train_dropout drop = {.embed = 0.1f, .attn = 0.1f, .resid = 0.1f, .seed = 42};
    struct model *m = tiny(MODEL_ARCH_QWEN2, MODEL_NORM_STANDARD, MODEL_ACT_SILU, MODEL_POOL_MEAN);
    char err[256];
    struct train_runner *r = train_runner_create(m, 2, 8, 2, err, sizeof err);
    assert_non_null(r);
    train_runner_set_dropout(r, &drop);
    uint32_t ids[16] = {2, 7, 9, 30, 11, 12, 13, 1, 2, 20, 21, 22, 1, 0, 0, 0};
    uint32_t lengths[2] = {8, 5};
    const size_t n = train_runner_grad_count(r);
    float *whole = malloc(n * sizeof(float)), *parts = calloc(n, sizeof(float));
    struct train_batch b = {.ids = ids, .lengths = lengths, .batch = 2, .seq = 8, .sample_base = 100};
    train_zero_grads(r);
    double loss_whole = loss_of(r, TRAIN_LM, &b);
    memcpy(whole, train_runner_grads(r), n * sizeof(float));
    double loss_parts = 0.0;
    for (uint32_t row = 0; row < 2; row++) {
        struct train_batch one = {.ids = ids + row * 8, .lengths = lengths + row, .batch = 1,
                                  .seq = 8, .sample_base = 100 + row};
        const double weight = (double)(lengths[row] - 1) / (double)(lengths[0] + lengths[1] - 2);
        train_zero_grads(r);
        loss_parts += weight * loss_of(r, TRAIN_LM, &one);
        const float *g = train_runner_grads(r);
        for (size_t i = 0; i < n; i++)
            parts[i] += (float)weight * g[i];
    }
    assert_true(fabs(loss_whole - loss_parts) < 1e-5 * fabs(loss_whole));
    float gmax = 0.0f, dmax = 0.0f;
    for (size_t i = 0; i < n; i++) {
        gmax = fmaxf(gmax, fabsf(whole[i]));
        dmax = fmaxf(dmax, fabsf(whole[i] - parts[i]));
    }
    assert_true(dmax <= 1e-5f * gmax);
    /* another sample number draws other masks: the loss moves */
    b.sample_base = 101;
    train_zero_grads(r);
    assert_true(fabs(loss_of(r, TRAIN_LM, &b) - loss_whole) > 1e-4);
    /* and without dropout it is another loss again, the same whatever the sample number */
    const struct train_dropout off = {0};
    train_runner_set_dropout(r, &off);
    double plain = loss_of(r, TRAIN_LM, &b);
    b.sample_base = 7;
    assert_true(loss_of(r, TRAIN_LM, &b) == plain);
    assert_true(fabs(plain - loss_whole) > 1e-4);
    free(whole);
    free(parts);
    train_runner_free(r);
    model_free(m);
}

static void test_schedules(void **state)
{
    (void)state;
    /* Hugging Face's linear schedule at 0-based steps: warmup 2 of 10 */
    const float want[] = {0.0f, 0.5f, 1.0f, 0.875f, 0.75f, 0.625f, 0.5f, 0.375f, 0.25f, 0.125f, 0.0f};
    for (int s = 0; s <= 10; s++)
        assert_float_equal(train_schedule_lr(TRAIN_SCHEDULE_LINEAR, 1.0f, (uint64_t)s, 2, 10), want[s], 1e-6);
    assert_float_equal(train_schedule_lr(TRAIN_SCHEDULE_COSINE, 1.0f, 6, 2, 10), 0.5f, 1e-6);
    assert_float_equal(train_schedule_lr(TRAIN_SCHEDULE_CONSTANT, 1.0f, 9, 2, 10), 1.0f, 1e-6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt2),
        cmocka_unit_test(test_qwen2),
        cmocka_unit_test(test_dropout_gradients),
        cmocka_unit_test(test_dropout_mask),
        cmocka_unit_test(test_dropout_split),
        cmocka_unit_test(test_schedules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
