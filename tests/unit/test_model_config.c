/* test_model_config.c — config.json in its three forms (Hugging Face GPT-2 and Qwen2, the seed's
 * UER file), the netlm object, the exact message for each bad key, and write → parse round trips.
 *
 * The Qwen2 case is the config.json Hugging Face publishes for Qwen2.5-0.5B, key for key; the UER
 * case is the seed's own file from shared/data. */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "model/model.h"

static char tmpdir[256];

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/netlm_cfg_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static const char *const qwen25_05b =
    "{\n"
    "  \"architectures\": [\n    \"Qwen2ForCausalLM\"\n  ],\n"
    "  \"attention_dropout\": 0.0,\n"
    "  \"bos_token_id\": 151643,\n"
    "  \"eos_token_id\": 151643,\n"
    "  \"hidden_act\": \"silu\",\n"
    "  \"hidden_size\": 896,\n"
    "  \"initializer_range\": 0.02,\n"
    "  \"intermediate_size\": 4864,\n"
    "  \"max_position_embeddings\": 32768,\n"
    "  \"max_window_layers\": 24,\n"
    "  \"model_type\": \"qwen2\",\n"
    "  \"num_attention_heads\": 14,\n"
    "  \"num_hidden_layers\": 24,\n"
    "  \"num_key_value_heads\": 2,\n"
    "  \"rms_norm_eps\": 1e-06,\n"
    "  \"rope_theta\": 1000000.0,\n"
    "  \"sliding_window\": 32768,\n"
    "  \"tie_word_embeddings\": true,\n"
    "  \"torch_dtype\": \"bfloat16\",\n"
    "  \"transformers_version\": \"4.40.1\",\n"
    "  \"use_cache\": true,\n"
    "  \"use_sliding_window\": false,\n"
    "  \"vocab_size\": 151936\n"
    "}\n";

/* Hugging Face's gpt2 config.json (the keys that matter, and some that do not) */
static const char *const hf_gpt2 =
    "{\"activation_function\": \"gelu_new\", \"architectures\": [\"GPT2LMHeadModel\"],"
    " \"attn_pdrop\": 0.1, \"bos_token_id\": 50256, \"embd_pdrop\": 0.1,"
    " \"eos_token_id\": 50256, \"initializer_range\": 0.02, \"layer_norm_epsilon\": 1e-05,"
    " \"model_type\": \"gpt2\", \"n_ctx\": 1024, \"n_embd\": 768, \"n_head\": 12,"
    " \"n_inner\": null, \"n_layer\": 12, \"n_positions\": 1024, \"resid_pdrop\": 0.1,"
    " \"summary_type\": \"cls_index\", \"task_specific_params\": {\"text-generation\":"
    " {\"do_sample\": true, \"max_length\": 50}}, \"vocab_size\": 50257}";

static char err[512];

static void parse_ok(const char *json, struct model_config *cfg)
{
    memset(err, 0, sizeof(err));
    bool ok = model_config_parse("c.json", json, strlen(json), cfg, err, sizeof(err));
    if (!ok)
        fail_msg("parse failed: %s", err);
}

/* The one-line message for a config that must be refused. */
static const char *parse_err(const char *json)
{
    struct model_config cfg;
    memset(err, 0, sizeof(err));
    bool ok = model_config_parse("c.json", json, strlen(json), &cfg, err, sizeof(err));
    assert_false(ok);
    assert_null(cfg.labels); /* nothing to release after a failure */
    assert_null(strchr(err, '\n'));
    assert_true(strncmp(err, "c.json: ", 8) == 0);
    return err;
}

/* json with "key": value replaced (value NULL: the key removed); key must occur once. */
static char *edit(const char *json, const char *key, const char *value)
{
    char pat[128];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *at = strstr(json, pat);
    if (!at)
        fail_msg("no key %s", key);
    const char *v = at + strlen(pat);
    int depth = 0;
    const char *end = v;
    bool in_str = false;
    for (; *end; end++) {
        if (in_str) {
            if (*end == '\\')
                end++;
            else if (*end == '"')
                in_str = false;
            continue;
        }
        if (*end == '"')
            in_str = true;
        else if (*end == '{' || *end == '[')
            depth++;
        else if ((*end == '}' || *end == ']') && depth-- == 0)
            break;
        else if (*end == ',' && depth == 0)
            break;
    }
    size_t n = strlen(json) + (value ? strlen(value) : 0) + 64;
    char *out = malloc(n);
    assert_non_null(out);
    if (value) {
        snprintf(out, n, "%.*s %s%s", (int)(v - json), json, value, end);
    } else {
        /* drop the key and one adjacent comma */
        const char *from = at, *to = end;
        if (*to == ',') {
            to++;
        } else {
            while (from > json && from[-1] != ',')
                from--;
            if (from > json)
                from--;
        }
        snprintf(out, n, "%.*s%s", (int)(from - json), json, to);
    }
    return out;
}

static const char *edit_err(const char *json, const char *key, const char *value)
{
    char *j = edit(json, key, value);
    const char *e = parse_err(j);
    free(j);
    return e;
}

static void edit_ok(const char *json, const char *key, const char *value,
                    struct model_config *cfg)
{
    char *j = edit(json, key, value);
    parse_ok(j, cfg);
    free(j);
}

static void assert_config_equal(const struct model_config *a, const struct model_config *b)
{
    assert_int_equal(a->arch, b->arch);
    assert_int_equal(a->vocab_size, b->vocab_size);
    assert_int_equal(a->hidden, b->hidden);
    assert_int_equal(a->layers, b->layers);
    assert_int_equal(a->heads, b->heads);
    assert_int_equal(a->kv_heads, b->kv_heads);
    assert_int_equal(a->head_dim, b->head_dim);
    assert_int_equal(a->ffn, b->ffn);
    assert_int_equal(a->max_positions, b->max_positions);
    assert_true(a->dropout_embed == b->dropout_embed && a->dropout_attn == b->dropout_attn &&
                a->dropout_resid == b->dropout_resid);
    assert_memory_equal(&a->norm_eps, &b->norm_eps, sizeof(float));
    if (a->arch == MODEL_ARCH_QWEN2)
        assert_memory_equal(&a->rope_theta, &b->rope_theta, sizeof(double));
    assert_int_equal(a->tie_embeddings, b->tie_embeddings);
    assert_int_equal(a->norm, b->norm);
    assert_int_equal(a->act, b->act);
    assert_int_equal(a->task, b->task);
    assert_int_equal(a->pooling, b->pooling);
    assert_int_equal(a->num_labels, b->num_labels);
    for (uint32_t i = 0; i < a->num_labels; i++)
        assert_string_equal(a->labels[i], b->labels[i]);
    assert_int_equal(a->seq_length, b->seq_length);
    assert_int_equal(a->tgt_seq_length, b->tgt_seq_length);
    assert_string_equal(a->tokenizer.header_mode, b->tokenizer.header_mode);
    assert_int_equal(a->tokenizer.stride, b->tokenizer.stride);
    assert_int_equal(a->tokenizer.tokens_per_packet, b->tokenizer.tokens_per_packet);
    assert_int_equal(a->tokenizer.packets, b->tokenizer.packets);
    assert_int_equal(a->tokenizer.sep_between_packets, b->tokenizer.sep_between_packets);
    assert_string_equal(a->tokenizer.vocab, b->tokenizer.vocab);
}

static size_t count_tmp_files(void)
{
    DIR *d = opendir(tmpdir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

/* write → load gives the same configuration */
static void round_trip(const struct model_config *cfg, const char *file)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, file);
    if (!model_config_write(cfg, path, err, sizeof(err)))
        fail_msg("write failed: %s", err);
    assert_int_equal(count_tmp_files(), 0);
    struct model_config back;
    if (!model_config_load(path, &back, err, sizeof(err)))
        fail_msg("load of the written file failed: %s", err);
    assert_config_equal(cfg, &back);
    model_config_release(&back);
}

/* ---- tests ---- */

static void test_defaults_and_names(void **state)
{
    (void)state;
    struct model_config c;
    memset(&c, 0xab, sizeof(c));
    model_config_init(&c);
    assert_int_equal(c.arch, MODEL_ARCH_GPT2);
    assert_int_equal(c.vocab_size, 0);
    assert_int_equal(c.hidden, 0);
    assert_int_equal(c.layers, 0);
    assert_int_equal(c.heads, 0);
    assert_int_equal(c.kv_heads, 0);
    assert_int_equal(c.head_dim, 0);
    assert_int_equal(c.ffn, 0);
    assert_int_equal(c.max_positions, 0);
    assert_true(c.norm_eps == 1e-5f);
    assert_true(c.rope_theta == 10000.0);
    assert_true(c.tie_embeddings);
    assert_int_equal(c.norm, MODEL_NORM_STANDARD);
    assert_int_equal(c.act, MODEL_ACT_GELU_TANH);
    assert_int_equal(c.task, MODEL_TASK_LM);
    assert_int_equal(c.pooling, MODEL_POOL_MEAN);
    assert_int_equal(c.num_labels, 0);
    assert_null(c.labels);
    assert_int_equal(c.seq_length, 128);
    assert_int_equal(c.tgt_seq_length, 4);
    assert_string_equal(c.tokenizer.header_mode, "full");
    assert_int_equal(c.tokenizer.stride, 2);
    assert_int_equal(c.tokenizer.tokens_per_packet, 64);
    assert_int_equal(c.tokenizer.packets, 32);
    assert_false(c.tokenizer.sep_between_packets);
    assert_string_equal(c.tokenizer.vocab, "builtin");
    model_config_release(&c);
    /* sizes zero: not a valid model yet */
    assert_false(model_config_validate(&c, err, sizeof(err)));
    assert_string_equal(err, "model config: vocab_size 0 is out of range 1..16777216");

    assert_string_equal(model_arch_name(MODEL_ARCH_GPT2), "gpt2");
    assert_string_equal(model_arch_name(MODEL_ARCH_QWEN2), "qwen2");
    assert_string_equal(model_task_name(MODEL_TASK_LM), "lm");
    assert_string_equal(model_task_name(MODEL_TASK_CLASSIFY), "classify");
    assert_string_equal(model_task_name(MODEL_TASK_GENERATE), "generate");
    assert_string_equal(model_pooling_name(MODEL_POOL_MEAN), "mean");
    assert_string_equal(model_pooling_name(MODEL_POOL_FIRST), "first");
    assert_string_equal(model_pooling_name(MODEL_POOL_LAST), "last");
    assert_string_equal(model_pooling_name(MODEL_POOL_MAX), "max");
    enum model_task t;
    enum model_pooling p;
    assert_true(model_task_parse("classify", &t) && t == MODEL_TASK_CLASSIFY);
    assert_true(model_task_parse("generate", &t) && t == MODEL_TASK_GENERATE);
    assert_true(model_task_parse("lm", &t) && t == MODEL_TASK_LM);
    assert_false(model_task_parse("Classify", &t));
    assert_false(model_task_parse("", &t));
    assert_false(model_task_parse(NULL, &t));
    assert_true(model_pooling_parse("max", &p) && p == MODEL_POOL_MAX);
    assert_true(model_pooling_parse("last", &p) && p == MODEL_POOL_LAST);
    assert_true(model_pooling_parse("first", &p) && p == MODEL_POOL_FIRST);
    assert_true(model_pooling_parse("mean", &p) && p == MODEL_POOL_MEAN);
    assert_false(model_pooling_parse("avg", &p));
}

static void test_hf_gpt2(void **state)
{
    (void)state;
    struct model_config c;
    parse_ok(hf_gpt2, &c);
    assert_int_equal(c.arch, MODEL_ARCH_GPT2);
    assert_int_equal(c.vocab_size, 50257);
    assert_int_equal(c.hidden, 768);
    assert_int_equal(c.layers, 12);
    assert_int_equal(c.heads, 12);
    assert_int_equal(c.kv_heads, 12);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.ffn, 3072);
    assert_int_equal(c.max_positions, 1024);
    assert_true(c.norm_eps == 1e-5f);
    assert_true(c.tie_embeddings);
    assert_int_equal(c.norm, MODEL_NORM_STANDARD);
    assert_int_equal(c.act, MODEL_ACT_GELU_TANH);
    assert_int_equal(c.task, MODEL_TASK_LM);
    assert_int_equal(c.num_labels, 0);
    model_config_release(&c);

    /* absent optional keys take their defaults; n_inner given; activations */
    const char *min = "{\"model_type\": \"gpt2\", \"vocab_size\": 100, \"n_embd\": 32,"
                      " \"n_layer\": 2, \"n_head\": 4, \"n_positions\": 128}";
    parse_ok(min, &c);
    assert_int_equal(c.ffn, 128);
    assert_true(c.norm_eps == 1e-5f);
    assert_int_equal(c.act, MODEL_ACT_GELU_TANH);
    assert_int_equal(c.seq_length, 128);
    model_config_release(&c);
    /* the default seq_length (128) is shortened to the position table; a given one must fit */
    edit_ok(min, "n_positions", "64", &c);
    assert_int_equal(c.seq_length, 64);
    model_config_release(&c);
    char *with_netlm = edit(min, "n_positions", "64, \"netlm\": {\"seq_length\": 128}");
    assert_string_equal(parse_err(with_netlm), "c.json: seq_length 128 is out of range 2..64");
    free(with_netlm);

    const char *small = "{\"model_type\": \"gpt2\", \"vocab_size\": 100, \"n_embd\": 32,"
                        " \"n_layer\": 2, \"n_head\": 4, \"n_positions\": 256,"
                        " \"n_inner\": 100, \"layer_norm_epsilon\": 1e-6,"
                        " \"activation_function\": \"gelu\", \"tie_word_embeddings\": true}";
    parse_ok(small, &c);
    assert_int_equal(c.ffn, 100);
    assert_true(c.norm_eps == 1e-6f);
    assert_int_equal(c.act, MODEL_ACT_GELU_ERF);
    model_config_release(&c);
    const char *tanh_names[] = {"\"gelu_new\"", "\"gelu_fast\"", "\"gelu_pytorch_tanh\""};
    for (int i = 0; i < 3; i++) {
        edit_ok(small, "activation_function", tanh_names[i], &c);
        assert_int_equal(c.act, MODEL_ACT_GELU_TANH);
    }
    assert_string_equal(edit_err(small, "activation_function", "\"relu\""),
                        "c.json: activation_function 'relu' is not supported (gelu_new, "
                        "gelu_fast, gelu_pytorch_tanh or gelu)");
    assert_string_equal(edit_err(small, "activation_function", "1"),
                        "c.json: key 'activation_function' must be a string");
    assert_string_equal(edit_err(small, "tie_word_embeddings", "false"),
                        "c.json: untied GPT-2 LM head is not supported");
    assert_string_equal(edit_err(small, "tie_word_embeddings", "0"),
                        "c.json: key 'tie_word_embeddings' must be true or false");
    edit_ok(small, "n_inner", "null", &c);
    assert_int_equal(c.ffn, 128);
    edit_ok(small, "n_head", "4.0", &c); /* an integral double is an integer */
    assert_int_equal(c.heads, 4);
    char *j = edit(small, "n_inner", "100, \"scale_attn_by_inverse_layer_idx\": true");
    assert_string_equal(parse_err(j), "c.json: GPT-2 attention scaling other than "
                                      "1/sqrt(head_dim) is not supported");
    free(j);
}

static void test_hf_qwen2(void **state)
{
    (void)state;
    struct model_config c;
    parse_ok(qwen25_05b, &c);
    assert_int_equal(c.arch, MODEL_ARCH_QWEN2);
    assert_int_equal(c.vocab_size, 151936);
    assert_int_equal(c.hidden, 896);
    assert_int_equal(c.layers, 24);
    assert_int_equal(c.heads, 14);
    assert_int_equal(c.kv_heads, 2);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.ffn, 4864);
    assert_int_equal(c.max_positions, 32768);
    assert_true(c.norm_eps == 1e-6f);
    assert_true(c.rope_theta == 1e6);
    assert_true(c.tie_embeddings);
    assert_int_equal(c.act, MODEL_ACT_SILU);
    assert_int_equal(c.norm, MODEL_NORM_STANDARD);
    round_trip(&c, "qwen.json");
    model_config_release(&c);

    /* Hugging Face's defaults */
    const char *min = "{\"model_type\": \"qwen2\", \"vocab_size\": 1000, \"hidden_size\": 64,"
                      " \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                      " \"intermediate_size\": 96}";
    parse_ok(min, &c);
    assert_int_equal(c.kv_heads, 4);
    assert_int_equal(c.head_dim, 16);
    assert_true(c.rope_theta == 10000.0);
    assert_true(c.norm_eps == 1e-6f);
    assert_int_equal(c.max_positions, 32768);
    assert_false(c.tie_embeddings);
    model_config_release(&c);

    edit_ok(qwen25_05b, "vocab_size", "151936, \"head_dim\": 64", &c);
    assert_int_equal(c.head_dim, 64);
    assert_string_equal(edit_err(qwen25_05b, "hidden_act", "\"gelu\""),
                        "c.json: hidden_act 'gelu' is not supported (Qwen2 uses silu)");
    edit_ok(qwen25_05b, "tie_word_embeddings", "false", &c);
    assert_false(c.tie_embeddings);
    assert_string_equal(edit_err(qwen25_05b, "use_sliding_window", "true"),
                        "c.json: use_sliding_window true is not supported");
    char *j = edit(qwen25_05b, "vocab_size", "151936, \"head_dim\": 32");
    assert_string_equal(parse_err(j), "c.json: key 'head_dim' (32) must equal hidden_size / "
                                      "num_attention_heads (896 / 14)");
    free(j);
    j = edit(qwen25_05b, "vocab_size", "151936, \"rope_scaling\": {\"type\": \"yarn\"}");
    assert_string_equal(parse_err(j), "c.json: rope_scaling is not supported");
    free(j);
    j = edit(qwen25_05b, "vocab_size", "151936, \"rope_scaling\": null");
    parse_ok(j, &c);
    free(j);
    assert_string_equal(edit_err(qwen25_05b, "rope_theta", "\"1e6\""),
                        "c.json: key 'rope_theta' must be a positive number");
    assert_string_equal(edit_err(qwen25_05b, "rope_theta", "0"),
                        "c.json: key 'rope_theta' must be a positive number");
    assert_string_equal(edit_err(qwen25_05b, "rms_norm_eps", "-1e-6"),
                        "c.json: key 'rms_norm_eps' must be a positive number");
    assert_string_equal(edit_err(qwen25_05b, "rms_norm_eps", "1e-60"),
                        "c.json: norm_eps (0) must be a positive finite number");
    assert_string_equal(edit_err(qwen25_05b, "num_key_value_heads", "4"),
                        "c.json: kv_heads (4) must divide heads (14)");
    assert_string_equal(edit_err(qwen25_05b, "num_attention_heads", "15"),
                        "c.json: heads (15) must divide hidden (896)");
    assert_string_equal(edit_err(qwen25_05b, "num_attention_heads", "128"),
                        "c.json: head_dim (7) must be even for RoPE");
}

static void test_uer_seed(void **state)
{
    (void)state;
    struct model_config c;
    char path[600];
    snprintf(path, sizeof(path), "%s/netgpt/gpt2-config.json", NETLM_DATA_DIR);
    if (!model_config_load(path, &c, err, sizeof(err)))
        fail_msg("%s", err);
    assert_int_equal(c.arch, MODEL_ARCH_GPT2);
    assert_int_equal(c.vocab_size, 65541);
    assert_int_equal(c.hidden, 768);
    assert_int_equal(c.layers, 12);
    assert_int_equal(c.heads, 12);
    assert_int_equal(c.kv_heads, 12);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.ffn, 3072);
    assert_int_equal(c.max_positions, 1024);
    assert_true(c.norm_eps == 1e-6f);
    assert_true(c.tie_embeddings);
    assert_int_equal(c.norm, MODEL_NORM_UER);
    assert_int_equal(c.act, MODEL_ACT_GELU_TANH);
    round_trip(&c, "uer.json");
    model_config_release(&c);

    const char *uer = "{\"emb_size\": 64, \"feedforward_size\": 256, \"hidden_size\": 64,"
                      " \"hidden_act\": \"gelu_fast\", \"heads_num\": 4, \"layers_num\": 2,"
                      " \"max_seq_length\": 256, \"dropout\": 0.1,"
                      " \"embedding\": [\"word\", \"pos\"], \"remove_embedding_layernorm\": true,"
                      " \"encoder\": \"transformer\", \"mask\": \"causal\","
                      " \"layernorm_positioning\": \"pre\", \"target\": [\"lm\"],"
                      " \"tie_weights\": true}";
    parse_ok(uer, &c);
    assert_int_equal(c.hidden, 64);
    assert_int_equal(c.ffn, 256);
    assert_int_equal(c.max_positions, 256);
    edit_ok(uer, "hidden_act", "\"gelu\"", &c);
    assert_int_equal(c.act, MODEL_ACT_GELU_ERF);
    edit_ok(uer, "hidden_act", "\"gelu_new\"", &c);
    assert_int_equal(c.act, MODEL_ACT_GELU_TANH);
    edit_ok(uer, "hidden_act", NULL, &c); /* UER's default */
    assert_int_equal(c.act, MODEL_ACT_GELU_ERF);
    edit_ok(uer, "max_seq_length", NULL, &c);
    assert_int_equal(c.max_positions, 512);
    edit_ok(uer, "hidden_size", NULL, &c); /* emb_size alone */
    assert_int_equal(c.hidden, 64);
    edit_ok(uer, "emb_size", NULL, &c);
    assert_int_equal(c.hidden, 64);
    edit_ok(uer, "mask", NULL, &c);
    edit_ok(uer, "embedding", NULL, &c);
    edit_ok(uer, "tie_weights", NULL, &c);
    assert_string_equal(edit_err(uer, "emb_size", "128"),
                        "c.json: emb_size (128) must equal hidden_size (64)");
    assert_string_equal(edit_err(uer, "hidden_act", "\"relu\""),
                        "c.json: hidden_act 'relu' is not supported (gelu_fast, gelu_new or "
                        "gelu)");
    assert_string_equal(edit_err(uer, "layernorm_positioning", "\"post\""),
                        "c.json: post-LN (layernorm_positioning \"post\") is not supported");
    assert_string_equal(edit_err(uer, "layernorm_positioning", NULL),
                        "c.json: post-LN (layernorm_positioning \"post\", UER's default) is not "
                        "supported");
    assert_string_equal(edit_err(uer, "mask", "\"fully_visible\""),
                        "c.json: mask 'fully_visible' is not supported (causal)");
    assert_string_equal(edit_err(uer, "embedding", "[\"word\", \"pos\", \"seg\"]"),
                        "c.json: embedding must be [\"word\", \"pos\"]");
    assert_string_equal(edit_err(uer, "remove_embedding_layernorm", "false"),
                        "c.json: an embedding LayerNorm (remove_embedding_layernorm false) is "
                        "not supported");
    assert_string_equal(edit_err(uer, "tie_weights", "false"),
                        "c.json: untied GPT-2 LM head (tie_weights false) is not supported");
    assert_string_equal(edit_err(uer, "heads_num", "5"),
                        "c.json: heads (5) must divide hidden (64)");
    edit_ok(uer, "max_seq_length", "100", &c);
    assert_int_equal(c.seq_length, 100);
    model_config_release(&c);

    /* use_qwen: the real Qwen2.5-0.5B shape whatever the UER sizes say */
    char *j = edit(uer, "tie_weights", "true, \"use_qwen\": true, \"qwen_model_name\": "
                                       "\"Qwen/Qwen2.5-0.5B\"");
    parse_ok(j, &c);
    free(j);
    assert_int_equal(c.arch, MODEL_ARCH_QWEN2);
    assert_int_equal(c.vocab_size, 65541);
    assert_int_equal(c.hidden, 896);
    assert_int_equal(c.layers, 24);
    assert_int_equal(c.heads, 14);
    assert_int_equal(c.kv_heads, 2);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.ffn, 4864);
    assert_int_equal(c.max_positions, 32768);
    assert_true(c.rope_theta == 1e6);
    assert_true(c.norm_eps == 1e-6f);
    assert_true(c.tie_embeddings);
    assert_int_equal(c.act, MODEL_ACT_SILU);
    assert_int_equal(c.norm, MODEL_NORM_STANDARD);
    j = edit(uer, "tie_weights", "true, \"use_qwen\": \"yes\"");
    assert_string_equal(parse_err(j), "c.json: key 'use_qwen' must be true or false");
    free(j);
}

static void test_missing_keys(void **state)
{
    (void)state;
    const char *gpt2_keys[] = {"vocab_size", "n_embd", "n_layer", "n_head", "n_positions"};
    for (size_t i = 0; i < 5; i++) {
        char want[128];
        snprintf(want, sizeof(want), "c.json: missing required key '%s'", gpt2_keys[i]);
        assert_string_equal(edit_err(hf_gpt2, gpt2_keys[i], NULL), want);
    }
    const char *qwen_keys[] = {"vocab_size", "hidden_size", "num_hidden_layers",
                               "num_attention_heads", "intermediate_size"};
    for (size_t i = 0; i < 5; i++) {
        char want[128];
        snprintf(want, sizeof(want), "c.json: missing required key '%s'", qwen_keys[i]);
        assert_string_equal(edit_err(qwen25_05b, qwen_keys[i], NULL), want);
    }
    const char *uer = "{\"emb_size\": 64, \"feedforward_size\": 256, \"hidden_size\": 64,"
                      " \"heads_num\": 4, \"layers_num\": 2, \"layernorm_positioning\": \"pre\"}";
    const char *uer_keys[] = {"feedforward_size", "heads_num", "layers_num"};
    for (size_t i = 0; i < 3; i++) {
        char want[128];
        snprintf(want, sizeof(want), "c.json: missing required key '%s'", uer_keys[i]);
        assert_string_equal(edit_err(uer, uer_keys[i], NULL), want);
    }
    char *j = edit(uer, "emb_size", NULL), *k = edit(j, "hidden_size", NULL);
    assert_string_equal(parse_err(k), "c.json: missing required key 'hidden_size'");
    free(j);
    free(k);
    assert_string_equal(parse_err("{\"hidden_size\": 64}"),
                        "c.json: neither \"model_type\" (Hugging Face form) nor "
                        "\"layers_num\"/\"emb_size\" (UER form)");
    assert_string_equal(parse_err("{}"), "c.json: neither \"model_type\" (Hugging Face form) nor "
                                         "\"layers_num\"/\"emb_size\" (UER form)");
}

static void test_wrong_types_and_values(void **state)
{
    (void)state;
    const char *bad_ints[] = {"\"12\"", "0", "-1", "12.5", "true", "null", "[12]", "{}", "1e400"};
    for (size_t i = 0; i < sizeof(bad_ints) / sizeof(*bad_ints); i++)
        assert_string_equal(edit_err(hf_gpt2, "n_head", bad_ints[i]),
                            "c.json: key 'n_head' must be a positive integer");
    assert_string_equal(edit_err(hf_gpt2, "vocab_size", "5000000000"),
                        "c.json: key 'vocab_size' is too large");
    assert_string_equal(edit_err(hf_gpt2, "vocab_size", "99999999999999999999"),
                        "c.json: key 'vocab_size' is too large");
    assert_string_equal(edit_err(hf_gpt2, "vocab_size", "20000000"),
                        "c.json: vocab_size 20000000 is out of range 1..16777216");
    assert_string_equal(edit_err(hf_gpt2, "n_embd", "100000"),
                        "c.json: hidden 100000 is out of range 1..65536");
    assert_string_equal(edit_err(hf_gpt2, "n_layer", "2000"),
                        "c.json: layers 2000 is out of range 1..1024");
    assert_string_equal(edit_err(hf_gpt2, "n_inner", "2000000"),
                        "c.json: ffn 2000000 is out of range 1..1048576");
    assert_string_equal(edit_err(hf_gpt2, "n_positions", "2000000"),
                        "c.json: max_positions 2000000 is out of range 1..1048576");
    assert_string_equal(edit_err(hf_gpt2, "n_head", "5"),
                        "c.json: heads (5) must divide hidden (768)");
    assert_string_equal(edit_err(hf_gpt2, "n_head", "1536"),
                        "c.json: heads 1536 is out of range 1..1024");
    assert_string_equal(edit_err(hf_gpt2, "layer_norm_epsilon", "\"x\""),
                        "c.json: key 'layer_norm_epsilon' must be a positive number");
    assert_string_equal(edit_err(hf_gpt2, "model_type", "\"llama\""),
                        "c.json: model_type 'llama' is not supported (gpt2 or qwen2)");
    assert_string_equal(edit_err(hf_gpt2, "model_type", "\"ll\\nama\""),
                        "c.json: model_type 'll?ama' is not supported (gpt2 or qwen2)");
    assert_string_equal(edit_err(hf_gpt2, "model_type", "2"),
                        "c.json: key 'model_type' must be a string");
    assert_true(strncmp(parse_err("{\"model_type\": "), "c.json: not valid JSON (", 24) == 0);
    assert_true(strncmp(parse_err(""), "c.json: not valid JSON (", 24) == 0);
    assert_true(strncmp(parse_err("{} {}"), "c.json: not valid JSON (", 24) == 0);
    assert_string_equal(parse_err("[1]"), "c.json: not a JSON object");

    struct model_config c;
    char path[400];
    snprintf(path, sizeof(path), "%s/none.json", tmpdir);
    assert_false(model_config_load(path, &c, err, sizeof(err)));
    char want[500];
    snprintf(want, sizeof(want), "%s: cannot open: No such file or directory", path);
    assert_string_equal(err, want);
    assert_null(c.labels);
}

static void test_netlm_object(void **state)
{
    (void)state;
    const char *base = "{\"model_type\": \"gpt2\", \"vocab_size\": 65541, \"n_embd\": 64,"
                       " \"n_layer\": 2, \"n_head\": 4, \"n_positions\": 512, \"netlm\": {"
                       "\"task\": \"classify\", \"labels\": [\"Cridex\", \"Geodo\", \"Htbot\"],"
                       " \"pooling\": \"max\", \"seq_length\": 256, \"tgt_seq_length\": 6,"
                       " \"layer_norm\": \"uer\", \"tokenizer\": {\"header_mode\": \"strip\","
                       " \"stride\": 1, \"tokens_per_packet\": 128, \"packets\": 4,"
                       " \"sep_between_packets\": true, \"vocab\": \"vocab.txt\"}}}";
    struct model_config c;
    parse_ok(base, &c);
    assert_int_equal(c.task, MODEL_TASK_CLASSIFY);
    assert_int_equal(c.num_labels, 3);
    assert_string_equal(c.labels[0], "Cridex");
    assert_string_equal(c.labels[2], "Htbot");
    assert_int_equal(c.pooling, MODEL_POOL_MAX);
    assert_int_equal(c.seq_length, 256);
    assert_int_equal(c.tgt_seq_length, 6);
    assert_int_equal(c.norm, MODEL_NORM_UER);
    assert_string_equal(c.tokenizer.header_mode, "strip");
    assert_int_equal(c.tokenizer.stride, 1);
    assert_int_equal(c.tokenizer.tokens_per_packet, 128);
    assert_int_equal(c.tokenizer.packets, 4);
    assert_true(c.tokenizer.sep_between_packets);
    assert_string_equal(c.tokenizer.vocab, "vocab.txt");
    round_trip(&c, "netlm.json");

    /* copy is deep */
    struct model_config d;
    assert_true(model_config_copy(&d, &c));
    assert_true(d.labels != c.labels && d.labels[1] != c.labels[1]);
    assert_config_equal(&c, &d);
    model_config_release(&c);
    assert_null(c.labels);
    assert_int_equal(c.num_labels, 0);
    assert_string_equal(d.labels[1], "Geodo");
    round_trip(&d, "copy.json");
    model_config_release(&d);
    model_config_release(&d); /* twice is harmless */

    /* num_labels alone names the classes by number; both must agree */
    edit_ok(base, "labels", "null, \"num_labels\": 3", &c);
    assert_int_equal(c.num_labels, 3);
    assert_string_equal(c.labels[0], "0");
    assert_string_equal(c.labels[2], "2");
    model_config_release(&c);
    edit_ok(base, "labels", "[\"a\", \"b\"], \"num_labels\": 2", &c);
    assert_int_equal(c.num_labels, 2);
    model_config_release(&c);
    assert_string_equal(edit_err(base, "labels", "[\"a\", \"b\"], \"num_labels\": 3"),
                        "c.json: netlm.num_labels (3) does not match the 2 names in "
                        "netlm.labels");
    assert_string_equal(edit_err(base, "labels", "[]"),
                        "c.json: task classify needs labels (num_labels >= 1)");
    assert_string_equal(edit_err(base, "labels", "null"),
                        "c.json: task classify needs labels (num_labels >= 1)");
    assert_string_equal(edit_err(base, "labels", "[\"a\", 2]"),
                        "c.json: netlm.labels[1] must be a string");
    assert_string_equal(edit_err(base, "labels", "\"a\""),
                        "c.json: key 'netlm.labels' must be an array of strings");
    assert_string_equal(edit_err(base, "labels", "null, \"num_labels\": 65537"),
                        "c.json: netlm.num_labels 65537 is more than 65536");
    assert_string_equal(edit_err(base, "labels", "null, \"num_labels\": -1"),
                        "c.json: key 'netlm.num_labels' must be a non-negative integer");
    assert_string_equal(edit_err(base, "task", "\"detect\""),
                        "c.json: netlm.task 'detect' must be lm, classify or generate");
    assert_string_equal(edit_err(base, "pooling", "\"avg\""),
                        "c.json: netlm.pooling 'avg' must be mean, first, last or max");
    assert_string_equal(edit_err(base, "seq_length", "1"),
                        "c.json: seq_length 1 is out of range 2..512");
    assert_string_equal(edit_err(base, "seq_length", "513"),
                        "c.json: seq_length 513 is out of range 2..512");
    assert_string_equal(edit_err(base, "tgt_seq_length", "1"),
                        "c.json: tgt_seq_length 1 is out of range 2..1048576");
    assert_string_equal(edit_err(base, "layer_norm", "\"rms\""),
                        "c.json: netlm.layer_norm 'rms' must be standard or uer");
    assert_string_equal(edit_err(base, "header_mode", "\"raw\""),
                        "c.json: netlm.tokenizer.header_mode 'raw' must be one of none, seed, "
                        "full, strict, strip");
    assert_string_equal(edit_err(base, "stride", "3"),
                        "c.json: netlm.tokenizer.stride 3 must be 1 or 2");
    assert_string_equal(edit_err(base, "packets", "0"),
                        "c.json: key 'netlm.tokenizer.packets' must be a positive integer");
    assert_string_equal(edit_err(base, "sep_between_packets", "1"),
                        "c.json: key 'netlm.tokenizer.sep_between_packets' must be true or false");
    assert_string_equal(edit_err(base, "vocab", "\"../vocab.txt\""),
                        "c.json: netlm.tokenizer.vocab '../vocab.txt' must be \"builtin\" or a "
                        "file name inside the model directory");
    assert_string_equal(edit_err(base, "vocab", "\"..\""),
                        "c.json: netlm.tokenizer.vocab '..' must be \"builtin\" or a file name "
                        "inside the model directory");
    assert_string_equal(edit_err(base, "vocab", "\"\""),
                        "c.json: netlm.tokenizer.vocab '' must be \"builtin\" or a file name "
                        "inside the model directory");
    assert_string_equal(edit_err(base, "tokenizer", "[]"),
                        "c.json: key 'netlm.tokenizer' must be an object");
    assert_string_equal(edit_err(base, "netlm", "3"), "c.json: key 'netlm' must be an object");

    /* layer_norm at the top level; a Qwen2 model has no UER LayerNorm */
    edit_ok(base, "netlm", "{}, \"layer_norm\": \"uer\"", &c);
    assert_int_equal(c.norm, MODEL_NORM_UER);
    assert_int_equal(c.task, MODEL_TASK_LM);
    char *j = edit(qwen25_05b, "vocab_size", "1000, \"netlm\": {\"layer_norm\": \"uer\"}");
    assert_string_equal(parse_err(j), "c.json: layer_norm \"uer\" applies to GPT-2 only (Qwen2 "
                                      "uses RMSNorm)");
    free(j);
    /* a generate model without labels; an lm model may keep label names */
    edit_ok(base, "task", "\"generate\"", &c);
    assert_int_equal(c.task, MODEL_TASK_GENERATE);
    round_trip(&c, "gen.json");
    model_config_release(&c);
    edit_ok(base, "labels", "[], \"task\": \"lm\"", &c);
    round_trip(&c, "lm.json");
}

static void test_validate_and_write(void **state)
{
    (void)state;
    struct model_config c;
    model_config_init(&c);
    c.arch = MODEL_ARCH_QWEN2;
    c.vocab_size = 512;
    c.hidden = 48;
    c.layers = 3;
    c.heads = 6;
    c.kv_heads = 2;
    c.head_dim = 8;
    c.ffn = 100;
    c.max_positions = 300;
    c.norm_eps = 3e-7f;
    c.rope_theta = 123456.789;
    c.tie_embeddings = false;
    c.act = MODEL_ACT_SILU;
    c.seq_length = 2;
    c.tgt_seq_length = 2;
    assert_true(model_config_validate(&c, err, sizeof(err)));
    round_trip(&c, "q.json");

    /* the file is the Hugging Face form */
    char path[400];
    snprintf(path, sizeof(path), "%s/q.json", tmpdir);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    char text[4096] = {0};
    assert_true(fread(text, 1, sizeof(text) - 1, fp) > 0);
    fclose(fp);
    assert_non_null(strstr(text, "\"Qwen2ForCausalLM\""));
    assert_non_null(strstr(text, "\"model_type\": \"qwen2\""));
    assert_non_null(strstr(text, "\"hidden_act\": \"silu\""));
    assert_non_null(strstr(text, "\"torch_dtype\": \"float32\""));
    assert_non_null(strstr(text, "\"rms_norm_eps\": 3e-07"));
    assert_non_null(strstr(text, "\"rope_theta\": 123456.789"));
    assert_non_null(strstr(text, "\"num_key_value_heads\": 2"));
    assert_non_null(strstr(text, "\"netlm\""));
    assert_non_null(strstr(text, "\n  "));

    struct model_config g;
    parse_ok(hf_gpt2, &g);
    g.act = MODEL_ACT_GELU_ERF;
    g.norm_eps = 1e-5f;
    round_trip(&g, "g.json");
    snprintf(path, sizeof(path), "%s/g.json", tmpdir);
    fp = fopen(path, "r");
    assert_non_null(fp);
    memset(text, 0, sizeof(text));
    assert_true(fread(text, 1, sizeof(text) - 1, fp) > 0);
    fclose(fp);
    assert_non_null(strstr(text, "\"GPT2LMHeadModel\""));
    assert_non_null(strstr(text, "\"activation_function\": \"gelu\""));
    assert_non_null(strstr(text, "\"layer_norm_epsilon\": 1e-05"));
    assert_non_null(strstr(text, "\"n_inner\": 3072"));

    /* each inconsistency has its message */
    struct model_config b = c;
    b.head_dim = 7;
    assert_false(model_config_validate(&b, err, sizeof(err)));
    assert_string_equal(err, "model config: head_dim (7) must be hidden / heads (8)");
    b = c;
    b.kv_heads = 4;
    assert_false(model_config_validate(&b, err, sizeof(err)));
    assert_string_equal(err, "model config: kv_heads (4) must divide heads (6)");
    b = c;
    b.kv_heads = 0;
    assert_false(model_config_validate(&b, err, sizeof(err)));
    assert_string_equal(err, "model config: kv_heads 0 is out of range 1..1024");
    b = g;
    b.kv_heads = 4;
    assert_false(model_config_validate(&b, err, sizeof(err)));
    assert_string_equal(err, "model config: GPT-2 has kv_heads = heads (12), not 4");
    b = g;
    b.tie_embeddings = false;
    assert_false(model_config_validate(&b, err, sizeof(err)));
    assert_string_equal(err, "model config: untied GPT-2 LM head is not supported");
    b = g;
    b.act = MODEL_ACT_SILU;
    assert_false(model_config_validate(&b, err, sizeof(err)));
    b = c;
    b.act = MODEL_ACT_GELU_TANH;
    assert_false(model_config_validate(&b, err, sizeof(err)));
    b = c;
    b.norm_eps = 0;
    assert_false(model_config_validate(&b, err, sizeof(err)));
    assert_string_equal(err, "model config: norm_eps (0) must be a positive finite number");
    b = c;
    b.rope_theta = INFINITY;
    assert_false(model_config_validate(&b, err, sizeof(err)));
    assert_string_equal(err, "model config: rope_theta (inf) must be a positive finite number");
    b = c;
    b.task = MODEL_TASK_CLASSIFY;
    assert_false(model_config_validate(&b, err, sizeof(err)));
    assert_string_equal(err, "model config: task classify needs labels (num_labels >= 1)");
    b.num_labels = 2;
    assert_false(model_config_validate(&b, err, sizeof(err)));
    assert_string_equal(err, "model config: num_labels is 2 but there are no label names");
    b.num_labels = MODEL_MAX_LABELS + 1;
    assert_false(model_config_validate(&b, err, sizeof(err)));
    assert_string_equal(err, "model config: num_labels 65537 is more than 65536");
    b = c;
    b.tgt_seq_length = 1;
    assert_false(model_config_validate(&b, err, sizeof(err)));
    b = c;
    b.tokenizer.stride = 0;
    assert_false(model_config_validate(&b, err, sizeof(err)));
    assert_string_equal(err, "model config: tokenizer stride 0 must be 1 or 2");
    b = c;
    strcpy(b.tokenizer.header_mode, "bogus");
    assert_false(model_config_validate(&b, err, sizeof(err)));
    b = c;
    strcpy(b.tokenizer.vocab, "a/b");
    assert_false(model_config_validate(&b, err, sizeof(err)));
    b = c;
    b.tokenizer.packets = 0;
    assert_false(model_config_validate(&b, err, sizeof(err)));
    b = c;
    b.norm = MODEL_NORM_UER;
    assert_false(model_config_validate(&b, err, sizeof(err)));
    /* the largest sizes the limits allow still count in 64 bits */
    b = c;
    b.vocab_size = 16777216;
    b.hidden = 65536;
    b.heads = 1024;
    b.kv_heads = 1024;
    b.head_dim = 64;
    b.layers = 1024;
    b.ffn = 1048576;
    b.max_positions = 1048576;
    assert_true(model_config_validate(&b, err, sizeof(err)));

    /* writing refuses an invalid config, and leaves nothing behind on failure */
    snprintf(path, sizeof(path), "%s/bad.json", tmpdir);
    b = c;
    b.heads = 5;
    assert_false(model_config_write(&b, path, err, sizeof(err)));
    char want[600];
    snprintf(want, sizeof(want), "%s: heads (5) must divide hidden (48)", path);
    assert_string_equal(err, want);
    assert_int_equal(access(path, F_OK), -1);
    snprintf(path, sizeof(path), "%s/nodir/c.json", tmpdir);
    assert_false(model_config_write(&c, path, err, sizeof(err)));
    assert_true(strncmp(err, path, strlen(path)) == 0);
    assert_non_null(strstr(err, "cannot create"));
    snprintf(path, sizeof(path), "%s/adir", tmpdir);
    assert_int_equal(mkdir(path, 0755), 0);
    char inner[500];
    snprintf(inner, sizeof(inner), "%s/x", path);
    fp = fopen(inner, "w");
    assert_non_null(fp);
    fclose(fp);
    assert_false(model_config_write(&c, path, err, sizeof(err)));
    assert_non_null(strstr(err, "cannot rename"));
    assert_int_equal(count_tmp_files(), 0);
    model_config_release(&g);
}

/* Floats that have no short decimal form still come back bit for bit. */
static void test_float_round_trip(void **state)
{
    (void)state;
    struct model_config c;
    parse_ok(qwen25_05b, &c);
    const float eps[] = {1e-5f, 1e-6f, 1e-12f, 0.1f, 3.4028235e38f, 1.17549435e-38f,
                         1.4e-45f, 0.3333333f, 7.0f};
    const double theta[] = {10000.0, 1e6, 0.1, 1.0 / 3.0, 5e-324, 1.7976931348623157e308,
                            500000.5};
    for (size_t i = 0; i < sizeof(eps) / sizeof(*eps); i++) {
        c.norm_eps = eps[i];
        c.rope_theta = theta[i % (sizeof(theta) / sizeof(*theta))];
        round_trip(&c, "f.json");
    }
}

/* Dropout as each form names it, and its defaults where a form names none. */
static void test_dropout(void **state)
{
    (void)state;
    struct model_config c;
    const char *gpt2 = "{\"model_type\": \"gpt2\", \"vocab_size\": 10, \"n_embd\": 8, "
                       "\"n_layer\": 1, \"n_head\": 2, \"n_positions\": 16";
    char json[512];
    snprintf(json, sizeof json, "%s}", gpt2); /* transformers' GPT2Config defaults: 0.1 */
    parse_ok(json, &c);
    assert_true(c.dropout_embed == 0.1f && c.dropout_attn == 0.1f && c.dropout_resid == 0.1f);
    model_config_release(&c);
    snprintf(json, sizeof json, "%s, \"embd_pdrop\": 0.0, \"attn_pdrop\": 0.25, \"resid_pdrop\": 0.5}", gpt2);
    parse_ok(json, &c);
    assert_true(c.dropout_embed == 0.0f && c.dropout_attn == 0.25f && c.dropout_resid == 0.5f);
    round_trip(&c, "d.json");
    model_config_release(&c);
    snprintf(json, sizeof json, "%s, \"resid_pdrop\": 1.0}", gpt2);
    assert_non_null(strstr(parse_err(json), "'resid_pdrop' must be a probability in [0, 1)"));
    snprintf(json, sizeof json, "%s, \"attn_pdrop\": \"0.1\"}", gpt2);
    assert_non_null(strstr(parse_err(json), "'attn_pdrop'"));
    /* Qwen2: attention_dropout only */
    parse_ok(qwen25_05b, &c);
    assert_true(c.dropout_embed == 0.0f && c.dropout_attn == 0.0f && c.dropout_resid == 0.0f);
    c.dropout_attn = 0.125f;
    round_trip(&c, "q.json");
    model_config_release(&c);
    /* the seed's UER file: "dropout" for all three (UER's default 0.1 when absent) */
    const char *uer = "{\"emb_size\": 8, \"feedforward_size\": 16, \"hidden_size\": 8, "
                      "\"heads_num\": 2, \"layers_num\": 1, \"layernorm_positioning\": \"pre\"";
    snprintf(json, sizeof json, "%s, \"dropout\": 0.2}", uer);
    parse_ok(json, &c);
    assert_true(c.dropout_embed == 0.2f && c.dropout_attn == 0.2f && c.dropout_resid == 0.2f);
    model_config_release(&c);
    snprintf(json, sizeof json, "%s}", uer);
    parse_ok(json, &c);
    assert_true(c.dropout_embed == 0.1f && c.dropout_resid == 0.1f);
    model_config_release(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_names),
        cmocka_unit_test(test_hf_gpt2),
        cmocka_unit_test(test_hf_qwen2),
        cmocka_unit_test(test_uer_seed),
        cmocka_unit_test(test_missing_keys),
        cmocka_unit_test(test_wrong_types_and_values),
        cmocka_unit_test(test_netlm_object),
        cmocka_unit_test(test_validate_and_write),
        cmocka_unit_test(test_float_round_trip),
        cmocka_unit_test(test_dropout),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
