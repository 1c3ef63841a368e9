/* test_train_grad.c — the backward pass against central finite differences of the loss, on
 * tiny models of both architectures (every LayerNorm flavour and activation), both objectives
 * and every pooling: for each parameter tensor a few coordinates with the largest gradients are
 * perturbed and the measured slope must match the analytic gradient. Independent of the
 * PyTorch twin: it needs only the forward pass. */
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

static void check_model(struct model *m, enum train_objective obj, const char *what)
{
    char err[256];
    struct train_runner *r = train_runner_create(m, 3, 8, 2, err, sizeof err);
    assert_non_null(r);
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
        cmocka_unit_test(test_schedules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
