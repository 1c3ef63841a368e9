/* test_model_reference.c — the CPU model against the PyTorch twin (tests/reference/twin.py, run
 * with /usr/bin/python3): for small random GPT-2 (standard and UER LayerNorm) and Qwen2 (tied,
 * untied, BF16 weights, sharded) models the twin writes, netlm must give the twin's logits
 * (max |diff| ≤ 1e-4 × max |logit|), hidden states, pooled states and class scores for every
 * pooling, the same greedy continuations, and outputs of real positions that do not depend on
 * what sits in the padding or on the rest of the batch. A model netlm saves must be the twin's
 * model bit for bit (checked by the twin). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"
#include "model/safetensors.h"

static char twin_dir[4096];
static const uint32_t threads = 2;

static int run_twin(const char *args)
{
    char command[40000];
    snprintf(command, sizeof command, "/usr/bin/python3 %s/tests/reference/twin.py %s",
             NETLM_SOURCE_DIR, args);
    return system(command);
}

static int setup_fixtures(void **state)
{
    (void)state;
    const char *given = getenv("NETLM_TWIN_DIR");
    if (given) {
        snprintf(twin_dir, sizeof twin_dir, "%s", given);
        return 0;
    }
    snprintf(twin_dir, sizeof twin_dir, "%s", "/tmp/netlm-twin-XXXXXX");
    if (!mkdtemp(twin_dir))
        return -1;
    char args[8192];
    snprintf(args, sizeof args, "fixtures %s", twin_dir);
    if (run_twin(args) != 0) {
        fprintf(stderr, "the PyTorch twin failed (is python3-torch installed? scripts/setup installs it)\n");
        return -1;
    }
    return 0;
}

static int remove_fixtures(void **state)
{
    (void)state;
    if (!getenv("NETLM_TWIN_DIR") && !getenv("NETLM_KEEP_TWIN")) {
        char command[8192];
        snprintf(command, sizeof command, "rm -rf '%s'", twin_dir);
        if (system(command) != 0)
            return -1;
    }
    return 0;
}

struct fixtures {
    struct st_file *f;
    uint32_t batch, seq;
    uint32_t *ids, *ids_pad_variant, *lengths;
};

static float *read_f32(const struct fixtures *fx, const char *name, uint64_t expect_numel)
{
    const struct st_tensor *t = st_find(fx->f, name);
    assert_non_null(t);
    assert_int_equal(t->numel, expect_numel);
    float *out = malloc(t->numel * sizeof(float));
    assert_non_null(out);
    assert_true(st_read_f32(t, out));
    return out;
}

static uint32_t *read_u32(const struct fixtures *fx, const char *name, uint64_t *numel)
{
    const struct st_tensor *t = st_find(fx->f, name);
    assert_non_null(t);
    int64_t *tmp = malloc((t->numel ? t->numel : 1) * sizeof(int64_t));
    uint32_t *out = malloc((t->numel ? t->numel : 1) * sizeof(uint32_t));
    assert_true(tmp && out);
    assert_true(st_read_i64(t, tmp));
    for (uint64_t i = 0; i < t->numel; i++)
        out[i] = (uint32_t)tmp[i];
    free(tmp);
    if (numel)
        *numel = t->numel;
    return out;
}

static void fixtures_open(const char *case_name, struct fixtures *fx)
{
    char path[8192], err[512];
    snprintf(path, sizeof path, "%s/%s/fixtures.safetensors", twin_dir, case_name);
    fx->f = st_open(path, err, sizeof err);
    if (!fx->f)
        fail_msg("%s", err);
    const struct st_tensor *ids = st_find(fx->f, "input_ids");
    assert_non_null(ids);
    assert_int_equal(ids->ndim, 2);
    fx->batch = (uint32_t)ids->shape[0];
    fx->seq = (uint32_t)ids->shape[1];
    fx->ids = read_u32(fx, "input_ids", NULL);
    fx->ids_pad_variant = read_u32(fx, "ids_pad_variant", NULL);
    fx->lengths = read_u32(fx, "lengths", NULL);
}

static void fixtures_close(struct fixtures *fx)
{
    free(fx->ids);
    free(fx->ids_pad_variant);
    free(fx->lengths);
    st_close(fx->f);
}

/* max |a - b| over the real rows of [batch, seq, width] tensors, and max |b| there */
static void compare_rows(const float *got, const float *want, const struct fixtures *fx,
                         size_t width, double rel_tol, const char *what)
{
    double max_diff = 0.0, max_ref = 0.0;
    for (uint32_t b = 0; b < fx->batch; b++)
        for (uint32_t t = 0; t < fx->lengths[b]; t++)
            for (size_t j = 0; j < width; j++) {
                size_t i = ((size_t)b * fx->seq + t) * width + j;
                max_diff = fmax(max_diff, fabs((double)got[i] - want[i]));
                max_ref = fmax(max_ref, fabs((double)want[i]));
            }
    if (!(max_diff <= rel_tol * max_ref))
        fail_msg("%s: max |diff| %.3g > %.1g x max |ref| %.3g", what, max_diff, rel_tol, max_ref);
}

static void compare_flat(const float *got, const float *want, size_t n, double rel_tol,
                         const char *what)
{
    double max_diff = 0.0, max_ref = 0.0;
    for (size_t i = 0; i < n; i++) {
        max_diff = fmax(max_diff, fabs((double)got[i] - want[i]));
        max_ref = fmax(max_ref, fabs((double)want[i]));
    }
    if (!(max_diff <= rel_tol * max_ref))
        fail_msg("%s: max |diff| %.3g > %.1g x max |ref| %.3g", what, max_diff, rel_tol, max_ref);
}

static uint32_t argmax(const float *x, uint32_t n)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

static void check_case(const char *case_name)
{
    char dir[8192], err[1024];
    snprintf(dir, sizeof dir, "%s/%s/model", twin_dir, case_name);
    struct model *m = model_load(dir, err, sizeof err);
    if (!m)
        fail_msg("%s", err);
    const struct model_config *cfg = model_get_config(m);
    struct fixtures fx;
    fixtures_open(case_name, &fx);
    const uint32_t B = fx.batch, T = fx.seq, C = cfg->hidden, V = cfg->vocab_size;
    uint64_t n_greedy = 0;
    uint32_t *greedy = read_u32(&fx, "greedy", &n_greedy);
    uint32_t *greedy_len = read_u32(&fx, "greedy_len", NULL);
    const uint32_t max_new = (uint32_t)(n_greedy / B);
    struct model_runner *r = model_runner_create(m, B, T, T + max_new, threads, err, sizeof err);
    if (!r)
        fail_msg("%s", err);

    /* logits and hidden states of every real position */
    float *hidden = calloc((size_t)B * T * C, sizeof(float));
    float *logits = calloc((size_t)B * T * V, sizeof(float));
    float *logits2 = calloc((size_t)B * T * V, sizeof(float));
    assert_true(hidden && logits && logits2);
    assert_true(model_forward(r, fx.ids, fx.lengths, B, T, hidden, logits));
    float *want_hidden = read_f32(&fx, "hidden", (uint64_t)B * T * C);
    float *want_logits = read_f32(&fx, "logits", (uint64_t)B * T * V);
    compare_rows(logits, want_logits, &fx, V, 1e-4, "logits");
    compare_rows(hidden, want_hidden, &fx, C, 1e-4, "hidden");

    /* what sits in the padding never reaches a real position: bit for bit */
    assert_true(model_forward(r, fx.ids_pad_variant, fx.lengths, B, T, NULL, logits2));
    for (uint32_t b = 0; b < B; b++)
        assert_memory_equal(logits + (size_t)b * T * V, logits2 + (size_t)b * T * V,
                            (size_t)fx.lengths[b] * V * sizeof(float));
    /* nor does the rest of the batch (sgemm may block differently: a tolerance) */
    for (uint32_t b = 0; b < B; b++) {
        assert_true(model_forward(r, fx.ids + (size_t)b * T, &fx.lengths[b], 1, T, NULL, logits2));
        compare_flat(logits2, logits + (size_t)b * T * V, (size_t)fx.lengths[b] * V, 1e-5,
                     "row alone vs in its batch");
    }

    /* every pooling and the classifier */
    static const char *const poolings[] = {"mean", "first", "last", "max"};
    const enum model_pooling configured = cfg->pooling;
    for (int p = 0; p < 4; p++) {
        char name[64];
        enum model_pooling pooling;
        assert_true(model_pooling_parse(poolings[p], &pooling));
        model_config_mut(m)->pooling = pooling;
        float *pooled = calloc((size_t)B * C, sizeof(float));
        float *scores = calloc((size_t)B * cfg->num_labels, sizeof(float));
        assert_true(model_classify(r, fx.ids, fx.lengths, B, T, pooled, scores));
        snprintf(name, sizeof name, "pooled_%s", poolings[p]);
        float *want_pooled = read_f32(&fx, name, (uint64_t)B * C);
        compare_flat(pooled, want_pooled, (size_t)B * C, 1e-4, name);
        snprintf(name, sizeof name, "scores_%s", poolings[p]);
        float *want_scores = read_f32(&fx, name, (uint64_t)B * cfg->num_labels);
        compare_flat(scores, want_scores, (size_t)B * cfg->num_labels, 1e-4, name);
        for (uint32_t b = 0; b < B; b++)
            assert_int_equal(argmax(scores + (size_t)b * cfg->num_labels, cfg->num_labels),
                             argmax(want_scores + (size_t)b * cfg->num_labels, cfg->num_labels));
        free(pooled);
        free(scores);
        free(want_pooled);
        free(want_scores);
    }
    model_config_mut(m)->pooling = configured;

    /* greedy continuation with the KV cache */
    uint32_t *out = calloc((size_t)B * max_new, sizeof(uint32_t)), *out_len = calloc(B, sizeof(uint32_t));
    assert_true(model_generate(r, fx.ids, fx.lengths, B, T, NULL, max_new, out, out_len));
    for (uint32_t b = 0; b < B; b++) {
        assert_int_equal(out_len[b], greedy_len[b]);
        assert_memory_equal(out + (size_t)b * max_new, greedy + (size_t)b * max_new,
                            greedy_len[b] * sizeof(uint32_t));
    }

    /* netlm's save is the twin's model, bit for bit (the twin checks, from its side) */
    char saved[8192], args[32768];
    snprintf(saved, sizeof saved, "%s/%s/netlm", twin_dir, case_name);
    if (!model_save(m, saved, err, sizeof err))
        fail_msg("%s", err);
    snprintf(args, sizeof args, "roundtrip-check %s %s %s/%s/fixtures.safetensors", dir, saved,
             twin_dir, case_name);
    assert_int_equal(run_twin(args), 0);
    struct model *back = model_load(saved, err, sizeof err);
    if (!back)
        fail_msg("%s", err);
    struct model_runner *r2 = model_runner_create(back, B, T, 0, threads, err, sizeof err);
    assert_non_null(r2);
    assert_true(model_forward(r2, fx.ids, fx.lengths, B, T, NULL, logits2));
    for (uint32_t b = 0; b < B; b++)
        assert_memory_equal(logits + (size_t)b * T * V, logits2 + (size_t)b * T * V,
                            (size_t)fx.lengths[b] * V * sizeof(float));
    model_runner_free(r2);
    model_free(back);

    free(out);
    free(out_len);
    free(greedy);
    free(greedy_len);
    free(want_hidden);
    free(want_logits);
    free(hidden);
    free(logits);
    free(logits2);
    model_runner_free(r);
    fixtures_close(&fx);
    model_free(m);
}

static void test_gpt2(void **state) { (void)state; check_case("gpt2"); }
static void test_gpt2_uer(void **state) { (void)state; check_case("gpt2_uer"); }
static void test_qwen2(void **state) { (void)state; check_case("qwen2"); }
static void test_qwen2_untied(void **state) { (void)state; check_case("qwen2_untied"); }
static void test_qwen2_bf16(void **state) { (void)state; check_case("qwen2_bf16"); }
static void test_qwen2_sharded(void **state) { (void)state; check_case("qwen2_sharded"); }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt2),          cmocka_unit_test(test_gpt2_uer),
        cmocka_unit_test(test_qwen2),         cmocka_unit_test(test_qwen2_untied),
        cmocka_unit_test(test_qwen2_bf16),    cmocka_unit_test(test_qwen2_sharded),
    };
    return cmocka_run_group_tests(tests, setup_fixtures, remove_fixtures);
}
