/* test_model_load.c — model directories that are wrong in every way a user meets (missing or
 * incomplete config, truncated or lying safetensors, wrong shapes, missing, extra or integer
 * tensors) give one clear error and no model; and the model API around them: seeded creation,
 * save/load, a new classifier head, vocabulary resize, bounds of a runner, sampling. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/model.h"
#include "model/safetensors.h"

static char base_dir[256];

static void small_config(struct model_config *c, enum model_arch arch)
{
    model_config_init(c);
    c->arch = arch;
    c->vocab_size = 300;
    c->hidden = 32;
    c->layers = 2;
    c->heads = 4;
    c->kv_heads = arch == MODEL_ARCH_GPT2 ? 4 : 2;
    c->head_dim = 8;
    c->ffn = 48;
    c->max_positions = 64;
    c->seq_length = 32;
    c->rope_theta = 1e4;
    c->norm_eps = 1e-5f;
    c->act = arch == MODEL_ARCH_GPT2 ? MODEL_ACT_GELU_TANH : MODEL_ACT_SILU;
}

static struct model *small_model(enum model_arch arch, uint64_t seed)
{
    struct model_config c;
    small_config(&c, arch);
    char err[512];
    struct model *m = model_create(&c, seed, err, sizeof err);
    if (!m)
        fail_msg("%s", err);
    model_config_release(&c);
    return m;
}

static void path_in(char *out, size_t cap, const char *dir, const char *name)
{
    snprintf(out, cap, "%s/%s/%s", base_dir, dir, name);
}

static void save_as(const struct model *m, const char *name)
{
    char dir[512], err[512];
    snprintf(dir, sizeof dir, "%s/%s", base_dir, name);
    if (!model_save(m, dir, err, sizeof err))
        fail_msg("%s", err);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    rewind(f);
    char *buf = malloc(*len + 1);
    assert_int_equal(fread(buf, 1, *len, f), *len);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

static void spill(const char *path, const char *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    fclose(f);
}

/* Loading name must fail with a message containing every needle. */
static void expect_load_error(const char *name, const char *needle1, const char *needle2)
{
    char dir[512], err[1024] = "";
    snprintf(dir, sizeof dir, "%s/%s", base_dir, name);
    struct model *m = model_load(dir, err, sizeof err);
    if (m)
        fail_msg("%s loaded but should not have", name);
    if (!strstr(err, needle1) || (needle2 && !strstr(err, needle2)))
        fail_msg("error for %s lacks '%s'/'%s': %s", name, needle1, needle2 ? needle2 : "", err);
    assert_null(strchr(err, '\n'));
}

/* Replaces the first occurrence of from by to (same length) in a file. */
static void patch_file(const char *path, const char *from, const char *to)
{
    size_t len;
    char *buf = slurp(path, &len);
    assert_int_equal(strlen(from), strlen(to));
    char *at = memmem(buf, len, from, strlen(from));
    assert_non_null(at);
    memcpy(at, to, strlen(to));
    spill(path, buf, len);
    free(buf);
}

/* Rewrites name's model.safetensors through keep(tensor) and an optional extra tensor. */
static void rewrite_weights(const char *name, const char *drop, const struct st_write_tensor *extra)
{
    char path[512], err[512];
    path_in(path, sizeof path, name, "model.safetensors");
    struct st_file *f = st_open(path, err, sizeof err);
    assert_non_null(f);
    size_t n = st_count(f), k = 0;
    struct st_write_tensor *t = calloc(n + 1, sizeof *t);
    float **copies = calloc(n, sizeof(float *));
    for (size_t i = 0; i < n; i++) {
        const struct st_tensor *s = st_at(f, i);
        if (drop && !strcmp(s->name, drop))
            continue;
        copies[i] = malloc(s->nbytes ? s->nbytes : 1);
        memcpy(copies[i], s->data, s->nbytes);
        t[k] = (struct st_write_tensor){.name = strdup(s->name), .dtype = s->dtype, .ndim = s->ndim, .data = copies[i]};
        memcpy(t[k].shape, s->shape, sizeof s->shape);
        k++;
    }
    if (extra)
        t[k++] = *extra;
    st_close(f);
    assert_true(st_write(path, t, k, NULL, 0, err, sizeof err));
    for (size_t i = 0; i < n; i++)
        free(copies[i]);
    for (size_t i = 0; i < k - (extra ? 1 : 0); i++)
        free((char *)t[i].name);
    free(copies);
    free(t);
}

static void copy_model(const struct model *m, const char *name) { save_as(m, name); }

static void test_malformed_models(void **state)
{
    (void)state;
    struct model *m = small_model(MODEL_ARCH_GPT2, 1);
    char path[512];

    copy_model(m, "no_config");
    path_in(path, sizeof path, "no_config", "config.json");
    unlink(path);
    expect_load_error("no_config", "config.json", NULL);

    copy_model(m, "config_missing_key");
    path_in(path, sizeof path, "config_missing_key", "config.json");
    patch_file(path, "\"n_head\"", "\"n_hxad\"");
    expect_load_error("config_missing_key", "n_head", NULL);

    copy_model(m, "no_weights");
    path_in(path, sizeof path, "no_weights", "model.safetensors");
    unlink(path);
    expect_load_error("no_weights", "model.safetensors", NULL);

    copy_model(m, "truncated");
    path_in(path, sizeof path, "truncated", "model.safetensors");
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(truncate(path, st.st_size / 2), 0);
    expect_load_error("truncated", "model.safetensors", NULL);

    copy_model(m, "lying_offsets");
    path_in(path, sizeof path, "lying_offsets", "model.safetensors");
    patch_file(path, "\"data_offsets\":[0,", "\"data_offsets\":[4,");
    expect_load_error("lying_offsets", "model.safetensors", NULL);

    copy_model(m, "unknown_dtype");
    path_in(path, sizeof path, "unknown_dtype", "model.safetensors");
    patch_file(path, "\"F32\"", "\"U32\"");
    expect_load_error("unknown_dtype", "U32", NULL);

    copy_model(m, "missing_tensor");
    rewrite_weights("missing_tensor", "transformer.h.1.mlp.c_fc.bias", NULL);
    expect_load_error("missing_tensor", "transformer.h.1.mlp.c_fc.bias", NULL);

    float junk[4] = {0};
    struct st_write_tensor extra = {.name = "transformer.h.0.attn.extra", .dtype = ST_F32, .ndim = 1, .shape = {4}, .data = junk};
    copy_model(m, "extra_tensor");
    rewrite_weights("extra_tensor", NULL, &extra);
    expect_load_error("extra_tensor", "transformer.h.0.attn.extra", NULL);

    /* the config says a different FFN width than the weights have */
    copy_model(m, "wrong_shape");
    path_in(path, sizeof path, "wrong_shape", "config.json");
    patch_file(path, "\"n_inner\": 48", "\"n_inner\": 40");
    expect_load_error("wrong_shape", "shape", "c_fc");

    int32_t ints[32] = {0};
    struct st_write_tensor int_bias = {.name = "transformer.ln_f.bias", .dtype = ST_I32, .ndim = 1, .shape = {32}, .data = ints};
    copy_model(m, "integer_weights");
    rewrite_weights("integer_weights", "transformer.ln_f.bias", &int_bias);
    expect_load_error("integer_weights", "transformer.ln_f.bias", "I32");
    model_free(m);
}

static void forward_hidden(struct model *m, const uint32_t *ids, uint32_t len, float *hidden)
{
    char err[256];
    struct model_runner *r = model_runner_create(m, 1, len, 0, 1, err, sizeof err);
    assert_non_null(r);
    assert_true(model_forward(r, ids, &len, 1, len, hidden, NULL));
    model_runner_free(r);
}

static void test_create_save_load(void **state)
{
    (void)state;
    for (int arch = 0; arch < 2; arch++) {
        struct model *a = small_model((enum model_arch)arch, 5), *b = small_model((enum model_arch)arch, 5);
        struct model *c = small_model((enum model_arch)arch, 6);
        uint32_t ids[10] = {2, 7, 9, 11, 200, 250, 299, 5, 6, 1};
        float ha[320], hb[320], hc[320];
        forward_hidden(a, ids, 10, ha);
        forward_hidden(b, ids, 10, hb);
        forward_hidden(c, ids, 10, hc);
        assert_memory_equal(ha, hb, sizeof ha);          /* same seed, same model */
        assert_memory_not_equal(ha, hc, sizeof ha);      /* another seed, another */
        save_as(a, "saved");
        char dir[512], err[512];
        snprintf(dir, sizeof dir, "%s/saved", base_dir);
        struct model *back = model_load(dir, err, sizeof err);
        if (!back)
            fail_msg("%s", err);
        forward_hidden(back, ids, 10, hb);
        assert_memory_equal(ha, hb, sizeof ha);
        assert_int_equal(model_parameter_count(back), model_parameter_count(a));
        model_free(back);
        model_free(a);
        model_free(b);
        model_free(c);
    }
}

/* What the temp observer saw: each temporary announced before it exists, released once gone. */
static struct {
    char live[8][600];
    int n_live, announced, released;
    bool existed_when_announced, left_when_released;
} temps;

static void watch_temp(const char *tmp_path, bool live)
{
    struct stat st;
    const bool exists = stat(tmp_path, &st) == 0;
    if (live) {
        temps.announced++;
        temps.existed_when_announced |= exists;
        if (temps.n_live < 8)
            snprintf(temps.live[temps.n_live++], sizeof temps.live[0], "%s", tmp_path);
        return;
    }
    temps.released++;
    temps.left_when_released |= exists;
    for (int i = 0; i < temps.n_live; i++)
        if (strcmp(temps.live[i], tmp_path) == 0) {
            memmove(temps.live[i], temps.live[i + 1], (size_t)(temps.n_live - i - 1) * sizeof temps.live[0]);
            temps.n_live--;
            return;
        }
    fail_msg("released a temporary never announced: %s", tmp_path);
}

/* A program that removes what a signal leaves (netlm's commands) learns of every temporary file
 * of a model save: announced before it is created, released once renamed, and also on failure. */
static void test_temp_observer(void **state)
{
    (void)state;
    struct model *m = small_model(MODEL_ARCH_QWEN2, 3);
    memset(&temps, 0, sizeof temps);
    model_set_temp_observer(watch_temp);
    save_as(m, "observed");
    assert_true(temps.announced >= 2); /* config.json and model.safetensors at least */
    assert_int_equal(temps.released, temps.announced);
    assert_int_equal(temps.n_live, 0);
    assert_false(temps.existed_when_announced);
    assert_false(temps.left_when_released);
    /* a save that fails once its temporaries exist (a folder where the weights file goes: the
     * rename fails) releases what it announced too, and leaves none of them */
    char blocked[512], in_the_way[600], err[512];
    snprintf(blocked, sizeof blocked, "%s/blocked", base_dir);
    snprintf(in_the_way, sizeof in_the_way, "%s/model.safetensors", blocked);
    assert_int_equal(mkdir(blocked, 0755), 0);
    assert_int_equal(mkdir(in_the_way, 0755), 0);
    memset(&temps, 0, sizeof temps);
    assert_false(model_save(m, blocked, err, sizeof err));
    assert_true(temps.announced >= 1);
    assert_int_equal(temps.released, temps.announced);
    assert_false(temps.left_when_released);
    assert_int_equal(temps.n_live, 0);
    model_set_temp_observer(NULL);
    model_free(m);
}

static void test_labels_and_resize(void **state)
{
    (void)state;
    struct model *m = small_model(MODEL_ARCH_QWEN2, 3);
    uint32_t ids[6] = {2, 10, 20, 30, 40, 1};
    float before[192], after[192];
    forward_hidden(m, ids, 6, before);
    char err[512];
    char *names[] = {"benign", "malware", "scan"};
    assert_true(model_set_labels(m, 3, names, 9, err, sizeof err));
    const struct model_config *c = model_get_config(m);
    assert_int_equal(c->num_labels, 3);
    assert_string_equal(c->labels[2], "scan");
    assert_int_equal(c->task, MODEL_TASK_CLASSIFY);
    forward_hidden(m, ids, 6, after);
    assert_memory_equal(before, after, sizeof before); /* the backbone is untouched */

    struct model_runner *r = model_runner_create(m, 2, 6, 0, 1, err, sizeof err);
    float scores[6];
    uint32_t len = 6;
    assert_true(model_classify(r, ids, &len, 1, 6, NULL, scores));
    assert_float_equal(scores[0] + scores[1] + scores[2], 1.0, 1e-5);
    /* bounds: batch, length and ids outside the runner or the vocabulary are refused */
    uint32_t zero = 0, seven = 7, bad_ids[6] = {2, 10, 300, 30, 40, 1};
    assert_false(model_classify(r, ids, &zero, 1, 6, NULL, scores));
    assert_false(model_classify(r, ids, &seven, 1, 6, NULL, scores));
    assert_false(model_classify(r, bad_ids, &len, 1, 6, NULL, scores));
    uint32_t lens3[3] = {6, 6, 6};
    assert_false(model_classify(r, ids, lens3, 3, 6, NULL, scores));
    model_runner_free(r);

    /* keep-first: ids below the old size see the same embeddings, so the same states */
    assert_true(model_resize_vocab(m, 500, false, 11, err, sizeof err));
    assert_int_equal(model_get_config(m)->vocab_size, 500);
    forward_hidden(m, ids, 6, after);
    assert_memory_equal(before, after, sizeof before);
    assert_true(model_resize_vocab(m, 100, false, 11, err, sizeof err));
    forward_hidden(m, ids, 6, after);
    assert_memory_equal(before, after, sizeof before);
    assert_true(model_resize_vocab(m, 100, true, 11, err, sizeof err));
    forward_hidden(m, ids, 6, after);
    assert_memory_not_equal(before, after, sizeof before);
    model_free(m);
}

static void test_sampling(void **state)
{
    (void)state;
    struct model *m = small_model(MODEL_ARCH_GPT2, 4);
    char err[256];
    struct model_runner *r = model_runner_create(m, 3, 8, 8 + 20, 2, err, sizeof err);
    assert_non_null(r);
    uint32_t ids[24] = {2, 10, 11, 12, 13, 14, 15, 1, 2, 50, 60, 1, 0, 0, 0, 0, 2, 99, 98, 97, 96, 95, 1, 0};
    uint32_t lens[3] = {8, 4, 7};
    uint32_t greedy[60], greedy_len[3], out[60], out_len[3], again[60], again_len[3];
    assert_true(model_generate(r, ids, lens, 3, 8, NULL, 20, greedy, greedy_len));
    struct model_sampling top1 = {.temperature = 1.0f, .top_k = 1, .top_p = 1.0f, .seed = 1};
    assert_true(model_generate(r, ids, lens, 3, 8, &top1, 20, out, out_len));
    assert_memory_equal(out, greedy, sizeof out); /* top-k 1 is greedy */
    assert_memory_equal(out_len, greedy_len, sizeof out_len);
    struct model_sampling hot = {.temperature = 5.0f, .top_k = 0, .top_p = 1.0f, .seed = 42};
    assert_true(model_generate(r, ids, lens, 3, 8, &hot, 20, out, out_len));
    assert_true(model_generate(r, ids, lens, 3, 8, &hot, 20, again, again_len));
    assert_memory_equal(out, again, sizeof out); /* same seed, same draw */
    assert_memory_not_equal(out, greedy, sizeof out);
    hot.seed = 43;
    assert_true(model_generate(r, ids, lens, 3, 8, &hot, 20, again, again_len));
    assert_memory_not_equal(out, again, sizeof out);
    struct model_sampling nucleus = {.temperature = 1.0f, .top_k = 50, .top_p = 0.5f, .seed = 42};
    assert_true(model_generate(r, ids, lens, 3, 8, &nucleus, 20, out, out_len));
    for (int b = 0; b < 3; b++) {
        assert_true(out_len[b] >= 1 && out_len[b] <= 20);
        for (uint32_t i = 0; i < out_len[b]; i++)
            assert_true(out[b * 20 + i] < 300);
    }
    /* the cache holds prompt + 20: asking for more is refused */
    assert_false(model_generate(r, ids, lens, 3, 8, NULL, 21, out, out_len));
    model_runner_free(r);
    model_free(m);
}

static void test_seed_uer_config(void **state)
{
    (void)state;
    struct model_config c;
    model_config_init(&c);
    char err[512];
    assert_true(model_config_load(NETLM_DATA_DIR "/netgpt/gpt2-config.json", &c, err, sizeof err));
    assert_int_equal(c.arch, MODEL_ARCH_GPT2);
    assert_int_equal(c.norm, MODEL_NORM_UER);
    assert_int_equal(c.layers, 12);
    assert_int_equal(c.hidden, 768);
    assert_int_equal(c.ffn, 3072);
    assert_int_equal(c.max_positions, 1024);
    model_config_release(&c);
}

static int make_base(void **state)
{
    (void)state;
    snprintf(base_dir, sizeof base_dir, "/tmp/netlm-model-load-XXXXXX");
    return mkdtemp(base_dir) ? 0 : -1;
}

static int remove_base(void **state)
{
    (void)state;
    char command[512];
    snprintf(command, sizeof command, "rm -rf '%s'", base_dir);
    return system(command) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_malformed_models), cmocka_unit_test(test_create_save_load),
        cmocka_unit_test(test_labels_and_resize), cmocka_unit_test(test_sampling),
        cmocka_unit_test(test_seed_uer_config), cmocka_unit_test(test_temp_observer),
    };
    return cmocka_run_group_tests(tests, make_base, remove_base);
}
