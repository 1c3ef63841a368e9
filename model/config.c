/* config.c — config.json: the Hugging Face form (GPT-2, Qwen2) with netlm's own object, the
 * seed's UER form, checks, and the writer.
 *
 * A config decides how much memory the model takes and how the weights are indexed, so every
 * size is checked against limits that keep the model code's size arithmetic in 64 bits, and a
 * key that would change the computation in a way netlm does not implement is an error rather
 * than silently ignored. The writer emits the Hugging Face form only; parsing what it wrote gives
 * back the same configuration. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "model/model_internal.h"

#define CFG_MAX_FILE (16u << 20)
#define CFG_MAX_VOCAB 16777216u
#define CFG_MAX_HIDDEN 65536u
#define CFG_MAX_LAYERS 1024u
#define CFG_MAX_HEADS 1024u
#define CFG_MAX_FFN 1048576u
#define CFG_MAX_POSITIONS 1048576u
#define CFG_QUOTE_MAX 64

/* The seed's vocabulary (5 specials + 65,536 four-hex words); the caller replaces it with the
 * size of the vocabulary it actually uses. */
#define CFG_UER_VOCAB 65541u

static const char *const cfg_header_modes[] = {"none", "seed", "full", "strict", "strip"};

struct cfg_ctx {
    const char *name;
    char *err;
    size_t errlen;
};

static void cfg_err(const struct cfg_ctx *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void cfg_err(const struct cfg_ctx *c, const char *fmt, ...)
{
    if (!c->err || c->errlen == 0)
        return;
    int n = snprintf(c->err, c->errlen, "%s: ", c->name);
    if (n >= 0 && (size_t)n < c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    for (char *p = c->err; *p; p++) /* one line, whatever the file holds */
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
}

/* A value from the file as it may appear in a message. */
struct cfg_quoted {
    char s[CFG_QUOTE_MAX + 4];
};

static struct cfg_quoted cfg_quote(const char *s)
{
    struct cfg_quoted q;
    size_t n = strlen(s), k = n < CFG_QUOTE_MAX ? n : CFG_QUOTE_MAX;
    memcpy(q.s, s, k);
    if (k < n)
        memcpy(q.s + k, "...", 3), k += 3;
    q.s[k] = '\0';
    return q;
}

/* ---- names ---- */

const char *model_arch_name(enum model_arch a)
{
    switch (a) {
    case MODEL_ARCH_GPT2: return "gpt2";
    case MODEL_ARCH_QWEN2: return "qwen2";
    }
    return "unknown";
}

const char *model_task_name(enum model_task t)
{
    switch (t) {
    case MODEL_TASK_LM: return "lm";
    case MODEL_TASK_CLASSIFY: return "classify";
    case MODEL_TASK_GENERATE: return "generate";
    }
    return "unknown";
}

const char *model_pooling_name(enum model_pooling p)
{
    switch (p) {
    case MODEL_POOL_MEAN: return "mean";
    case MODEL_POOL_FIRST: return "first";
    case MODEL_POOL_LAST: return "last";
    case MODEL_POOL_MAX: return "max";
    }
    return "unknown";
}

bool model_task_parse(const char *name, enum model_task *out)
{
    for (int t = MODEL_TASK_LM; name && t <= MODEL_TASK_GENERATE; t++)
        if (strcmp(name, model_task_name((enum model_task)t)) == 0) {
            *out = (enum model_task)t;
            return true;
        }
    return false;
}

bool model_pooling_parse(const char *name, enum model_pooling *out)
{
    for (int p = MODEL_POOL_MEAN; name && p <= MODEL_POOL_MAX; p++)
        if (strcmp(name, model_pooling_name((enum model_pooling)p)) == 0) {
            *out = (enum model_pooling)p;
            return true;
        }
    return false;
}

static const char *cfg_norm_name(enum model_norm n)
{
    return n == MODEL_NORM_UER ? "uer" : "standard";
}

/* ---- init, release, copy ---- */

void model_config_init(struct model_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->arch = MODEL_ARCH_GPT2;
    cfg->norm_eps = 1e-5f;
    cfg->rope_theta = 10000.0;
    cfg->tie_embeddings = true;
    cfg->norm = MODEL_NORM_STANDARD;
    cfg->act = MODEL_ACT_GELU_TANH;
    cfg->task = MODEL_TASK_LM;
    cfg->pooling = MODEL_POOL_MEAN;
    cfg->seq_length = 128;
    cfg->tgt_seq_length = 4;
    strcpy(cfg->tokenizer.header_mode, "full");
    cfg->tokenizer.stride = 2;
    cfg->tokenizer.tokens_per_packet = 64;
    cfg->tokenizer.packets = 32;
    cfg->tokenizer.sep_between_packets = false;
    strcpy(cfg->tokenizer.vocab, "builtin");
}

static void cfg_free_labels(char **labels, uint32_t n)
{
    if (!labels)
        return;
    for (uint32_t i = 0; i < n; i++)
        free(labels[i]);
    free(labels);
}

void model_config_release(struct model_config *cfg)
{
    if (!cfg)
        return;
    cfg_free_labels(cfg->labels, cfg->num_labels);
    cfg->labels = NULL;
    cfg->num_labels = 0;
}

bool model_config_copy(struct model_config *dst, const struct model_config *src)
{
    struct model_config c = *src;
    c.labels = NULL;
    if (src->labels && src->num_labels > 0) {
        c.labels = calloc(src->num_labels, sizeof(*c.labels));
        if (!c.labels)
            goto oom;
        for (uint32_t i = 0; i < src->num_labels; i++) {
            c.labels[i] = strdup(src->labels[i] ? src->labels[i] : "");
            if (!c.labels[i]) {
                cfg_free_labels(c.labels, i);
                goto oom;
            }
        }
    }
    *dst = c;
    return true;
oom:
    model_config_init(dst);
    return false;
}

/* ---- checks ---- */

static bool cfg_plain_file_name(const char *s)
{
    return s[0] && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static bool cfg_range(const struct cfg_ctx *c, const char *what, uint64_t v, uint64_t lo,
                      uint64_t hi)
{
    if (v >= lo && v <= hi)
        return true;
    cfg_err(c, "%s %llu is out of range %llu..%llu", what, (unsigned long long)v,
            (unsigned long long)lo, (unsigned long long)hi);
    return false;
}

static bool cfg_validate(const struct model_config *cfg, const struct cfg_ctx *c)
{
    if (cfg->arch != MODEL_ARCH_GPT2 && cfg->arch != MODEL_ARCH_QWEN2) {
        cfg_err(c, "unknown architecture %d", (int)cfg->arch);
        return false;
    }
    bool gpt2 = cfg->arch == MODEL_ARCH_GPT2;
    if (!cfg_range(c, "vocab_size", cfg->vocab_size, 1, CFG_MAX_VOCAB) ||
        !cfg_range(c, "hidden", cfg->hidden, 1, CFG_MAX_HIDDEN) ||
        !cfg_range(c, "layers", cfg->layers, 1, CFG_MAX_LAYERS) ||
        !cfg_range(c, "heads", cfg->heads, 1, CFG_MAX_HEADS) ||
        !cfg_range(c, "kv_heads", cfg->kv_heads, 1, CFG_MAX_HEADS) ||
        !cfg_range(c, "ffn", cfg->ffn, 1, CFG_MAX_FFN) ||
        !cfg_range(c, "max_positions", cfg->max_positions, 1, CFG_MAX_POSITIONS))
        return false;
    if (cfg->hidden % cfg->heads != 0) {
        cfg_err(c, "heads (%u) must divide hidden (%u)", cfg->heads, cfg->hidden);
        return false;
    }
    if (cfg->head_dim != cfg->hidden / cfg->heads) {
        cfg_err(c, "head_dim (%u) must be hidden / heads (%u)", cfg->head_dim,
                cfg->hidden / cfg->heads);
        return false;
    }
    if (cfg->heads % cfg->kv_heads != 0) {
        cfg_err(c, "kv_heads (%u) must divide heads (%u)", cfg->kv_heads, cfg->heads);
        return false;
    }
    if (gpt2 && cfg->kv_heads != cfg->heads) {
        cfg_err(c, "GPT-2 has kv_heads = heads (%u), not %u", cfg->heads, cfg->kv_heads);
        return false;
    }
    if (!gpt2 && cfg->head_dim % 2 != 0) {
        cfg_err(c, "head_dim (%u) must be even for RoPE", cfg->head_dim);
        return false;
    }
    if (!cfg_range(c, "seq_length", cfg->seq_length, 2, cfg->max_positions) ||
        !cfg_range(c, "tgt_seq_length", cfg->tgt_seq_length, 2, CFG_MAX_POSITIONS))
        return false;
    if (!(cfg->norm_eps > 0) || !isfinite(cfg->norm_eps)) {
        cfg_err(c, "norm_eps (%g) must be a positive finite number", (double)cfg->norm_eps);
        return false;
    }
    if (!(cfg->rope_theta > 0) || !isfinite(cfg->rope_theta)) {
        cfg_err(c, "rope_theta (%g) must be a positive finite number", cfg->rope_theta);
        return false;
    }
    if (cfg->norm != MODEL_NORM_STANDARD && cfg->norm != MODEL_NORM_UER) {
        cfg_err(c, "unknown layer norm %d", (int)cfg->norm);
        return false;
    }
    if (!gpt2 && cfg->norm != MODEL_NORM_STANDARD) {
        cfg_err(c, "layer_norm \"uer\" applies to GPT-2 only (Qwen2 uses RMSNorm)");
        return false;
    }
    if (gpt2 ? cfg->act != MODEL_ACT_GELU_TANH && cfg->act != MODEL_ACT_GELU_ERF
             : cfg->act != MODEL_ACT_SILU) {
        cfg_err(c, "activation %d does not fit %s", (int)cfg->act, model_arch_name(cfg->arch));
        return false;
    }
    if (gpt2 && !cfg->tie_embeddings) {
        cfg_err(c, "untied GPT-2 LM head is not supported");
        return false;
    }
    if ((unsigned)cfg->task > MODEL_TASK_GENERATE || (unsigned)cfg->pooling > MODEL_POOL_MAX) {
        cfg_err(c, "unknown task or pooling");
        return false;
    }
    if (cfg->num_labels > MODEL_MAX_LABELS) {
        cfg_err(c, "num_labels %u is more than %u", cfg->num_labels, MODEL_MAX_LABELS);
        return false;
    }
    if (cfg->task == MODEL_TASK_CLASSIFY && cfg->num_labels == 0) {
        cfg_err(c, "task classify needs labels (num_labels >= 1)");
        return false;
    }
    if (cfg->num_labels > 0 && !cfg->labels) {
        cfg_err(c, "num_labels is %u but there are no label names", cfg->num_labels);
        return false;
    }
    for (uint32_t i = 0; i < cfg->num_labels; i++)
        if (!cfg->labels[i]) {
            cfg_err(c, "label %u has no name", i);
            return false;
        }
    const struct model_tokenizer *t = &cfg->tokenizer;
    bool mode_ok = false;
    if (memchr(t->header_mode, '\0', sizeof(t->header_mode)))
        for (size_t i = 0; i < sizeof(cfg_header_modes) / sizeof(*cfg_header_modes); i++)
            mode_ok |= strcmp(t->header_mode, cfg_header_modes[i]) == 0;
    if (!mode_ok) {
        cfg_err(c, "tokenizer header_mode must be one of none, seed, full, strict, strip");
        return false;
    }
    if (t->stride != 1 && t->stride != 2) {
        cfg_err(c, "tokenizer stride %u must be 1 or 2", t->stride);
        return false;
    }
    if (t->tokens_per_packet == 0 || t->packets == 0) {
        cfg_err(c, "tokenizer tokens_per_packet and packets must be positive");
        return false;
    }
    if (!memchr(t->vocab, '\0', sizeof(t->vocab)) || !cfg_plain_file_name(t->vocab)) {
        cfg_err(c, "tokenizer vocab must be \"builtin\" or a file name inside the model directory");
        return false;
    }
    /* parameters, as the model code counts them, stay well inside 64 bits */
    uint64_t h = cfg->hidden, kvd = (uint64_t)cfg->kv_heads * cfg->head_dim, layer, total;
    bool of = false;
    if (gpt2)
        layer = 4 * h * h + 9 * h + 2 * h * cfg->ffn + cfg->ffn; /* ≤ 2^32 + 2^37 + ... */
    else
        layer = 2 * h * h + 2 * kvd * h + h + 2 * kvd + 3 * h * cfg->ffn + 2 * h;
    of |= __builtin_mul_overflow(layer, (uint64_t)cfg->layers, &total);
    uint64_t emb = (uint64_t)cfg->vocab_size * h * (cfg->tie_embeddings ? 1 : 2);
    if (gpt2)
        emb += (uint64_t)cfg->max_positions * h;
    uint64_t head = h * h + h + (uint64_t)cfg->num_labels * h + cfg->num_labels;
    of |= __builtin_add_overflow(total, emb, &total);
    of |= __builtin_add_overflow(total, head + 2 * h, &total);
    if (of) {
        cfg_err(c, "parameter count overflows 64 bits");
        return false;
    }
    return true;
}

bool model_config_validate(const struct model_config *cfg, char *err, size_t errlen)
{
    struct cfg_ctx c = {"model config", err, errlen};
    return cfg_validate(cfg, &c);
}

/* ---- parsing ---- */

/* The value of key, or NULL when absent or JSON null (both mean "use the default"). */
static struct json_object *cfg_get(struct json_object *o, const char *key)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || json_object_is_type(v, json_type_null))
        return NULL;
    return v;
}

static bool cfg_present(struct json_object *o, const char *key)
{
    return json_object_object_get_ex(o, key, NULL);
}

/* A JSON integer, or a double with an integral value, in [lo, UINT32_MAX]. Absent: *out is kept
 * unless required. */
static bool cfg_uint(const struct cfg_ctx *c, struct json_object *o, const char *key,
                     const char *shown, bool required, uint32_t lo, uint32_t *out)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, key, &v)) {
        if (!required)
            return true;
        cfg_err(c, "missing required key '%s'", shown);
        return false;
    }
    if (!required && json_object_is_type(v, json_type_null))
        return true;
    const char *what = lo > 0 ? "a positive integer" : "a non-negative integer";
    double d;
    if (json_object_is_type(v, json_type_int)) {
        int64_t i = json_object_get_int64(v);
        if (i < (int64_t)lo) {
            cfg_err(c, "key '%s' must be %s", shown, what);
            return false;
        }
        if (i > (int64_t)UINT32_MAX) {
            cfg_err(c, "key '%s' is too large", shown);
            return false;
        }
        *out = (uint32_t)i;
        return true;
    }
    if (json_object_is_type(v, json_type_double)) {
        d = json_object_get_double(v);
        if (isfinite(d) && d == floor(d) && d >= lo) {
            if (d > (double)UINT32_MAX) {
                cfg_err(c, "key '%s' is too large", shown);
                return false;
            }
            *out = (uint32_t)d;
            return true;
        }
    }
    cfg_err(c, "key '%s' must be %s", shown, what);
    return false;
}

static bool cfg_number(const struct cfg_ctx *c, struct json_object *o, const char *key,
                       double *out)
{
    struct json_object *v = cfg_get(o, key);
    if (!v)
        return true;
    double d = 0;
    bool num = json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double);
    if (num)
        d = json_object_get_double(v);
    if (!num || !isfinite(d) || !(d > 0)) {
        cfg_err(c, "key '%s' must be a positive number", key);
        return false;
    }
    *out = d;
    return true;
}

static bool cfg_bool(const struct cfg_ctx *c, struct json_object *o, const char *key,
                     const char *shown, bool *out)
{
    struct json_object *v = cfg_get(o, key);
    if (!v)
        return true;
    if (!json_object_is_type(v, json_type_boolean)) {
        cfg_err(c, "key '%s' must be true or false", shown);
        return false;
    }
    *out = json_object_get_boolean(v);
    return true;
}

/* A string without NUL characters; *out NULL when absent. */
static bool cfg_string(const struct cfg_ctx *c, struct json_object *o, const char *key,
                       const char *shown, const char **out)
{
    *out = NULL;
    struct json_object *v = cfg_get(o, key);
    if (!v)
        return true;
    if (!json_object_is_type(v, json_type_string) ||
        strlen(json_object_get_string(v)) != (size_t)json_object_get_string_len(v)) {
        cfg_err(c, "key '%s' must be a string", shown);
        return false;
    }
    *out = json_object_get_string(v);
    return true;
}

/* A dropout probability in [0, 1); absent keeps *out. */
static bool cfg_probability(const struct cfg_ctx *c, struct json_object *o, const char *key,
                            float *out)
{
    struct json_object *v = cfg_get(o, key);
    if (!v)
        return true;
    bool num = json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double);
    double d = num ? json_object_get_double(v) : -1.0;
    if (!num || !(d >= 0.0 && d < 1.0)) {
        cfg_err(c, "key '%s' must be a probability in [0, 1)", key);
        return false;
    }
    *out = (float)d;
    return true;
}

static bool cfg_eps(const struct cfg_ctx *c, struct json_object *o, const char *key,
                    struct model_config *cfg)
{
    double eps = cfg->norm_eps;
    if (!cfg_number(c, o, key, &eps))
        return false;
    cfg->norm_eps = (float)eps;
    return true;
}

static bool cfg_parse_gpt2(const struct cfg_ctx *c, struct json_object *o,
                           struct model_config *cfg)
{
    cfg->arch = MODEL_ARCH_GPT2;
    cfg->norm_eps = 1e-5f;
    if (!cfg_uint(c, o, "vocab_size", "vocab_size", true, 1, &cfg->vocab_size) ||
        !cfg_uint(c, o, "n_embd", "n_embd", true, 1, &cfg->hidden) ||
        !cfg_uint(c, o, "n_layer", "n_layer", true, 1, &cfg->layers) ||
        !cfg_uint(c, o, "n_head", "n_head", true, 1, &cfg->heads) ||
        !cfg_uint(c, o, "n_positions", "n_positions", true, 1, &cfg->max_positions))
        return false;
    if (cfg->hidden > UINT32_MAX / 4) {
        cfg_err(c, "key 'n_embd' is too large");
        return false;
    }
    cfg->ffn = 4 * cfg->hidden;
    cfg->dropout_embed = cfg->dropout_attn = cfg->dropout_resid = 0.1f;
    if (!cfg_uint(c, o, "n_inner", "n_inner", false, 1, &cfg->ffn) ||
        !cfg_eps(c, o, "layer_norm_epsilon", cfg) ||
        !cfg_probability(c, o, "embd_pdrop", &cfg->dropout_embed) ||
        !cfg_probability(c, o, "attn_pdrop", &cfg->dropout_attn) ||
        !cfg_probability(c, o, "resid_pdrop", &cfg->dropout_resid))
        return false;
    cfg->kv_heads = cfg->heads;
    const char *act;
    if (!cfg_string(c, o, "activation_function", "activation_function", &act))
        return false;
    cfg->act = MODEL_ACT_GELU_TANH;
    if (act) {
        if (strcmp(act, "gelu") == 0) {
            cfg->act = MODEL_ACT_GELU_ERF;
        } else if (strcmp(act, "gelu_new") != 0 && strcmp(act, "gelu_fast") != 0 &&
                   strcmp(act, "gelu_pytorch_tanh") != 0) {
            cfg_err(c, "activation_function '%s' is not supported (gelu_new, gelu_fast, "
                    "gelu_pytorch_tanh or gelu)", cfg_quote(act).s);
            return false;
        }
    }
    bool tie = true, scale = true, by_layer = false;
    if (!cfg_bool(c, o, "tie_word_embeddings", "tie_word_embeddings", &tie) ||
        !cfg_bool(c, o, "scale_attn_weights", "scale_attn_weights", &scale) ||
        !cfg_bool(c, o, "scale_attn_by_inverse_layer_idx", "scale_attn_by_inverse_layer_idx",
                  &by_layer))
        return false;
    if (!tie) {
        cfg_err(c, "untied GPT-2 LM head is not supported");
        return false;
    }
    if (!scale || by_layer) {
        cfg_err(c, "GPT-2 attention scaling other than 1/sqrt(head_dim) is not supported");
        return false;
    }
    cfg->tie_embeddings = true;
    return true;
}

static bool cfg_parse_qwen2(const struct cfg_ctx *c, struct json_object *o,
                            struct model_config *cfg)
{
    cfg->arch = MODEL_ARCH_QWEN2;
    cfg->act = MODEL_ACT_SILU;
    cfg->norm_eps = 1e-6f;
    cfg->rope_theta = 10000.0;
    cfg->max_positions = 32768;
    cfg->tie_embeddings = false;
    if (!cfg_uint(c, o, "vocab_size", "vocab_size", true, 1, &cfg->vocab_size) ||
        !cfg_uint(c, o, "hidden_size", "hidden_size", true, 1, &cfg->hidden) ||
        !cfg_uint(c, o, "num_hidden_layers", "num_hidden_layers", true, 1, &cfg->layers) ||
        !cfg_uint(c, o, "num_attention_heads", "num_attention_heads", true, 1, &cfg->heads) ||
        !cfg_uint(c, o, "intermediate_size", "intermediate_size", true, 1, &cfg->ffn))
        return false;
    cfg->kv_heads = cfg->heads;
    if (!cfg_uint(c, o, "num_key_value_heads", "num_key_value_heads", false, 1,
                  &cfg->kv_heads) ||
        !cfg_number(c, o, "rope_theta", &cfg->rope_theta) || !cfg_eps(c, o, "rms_norm_eps", cfg) ||
        !cfg_uint(c, o, "max_position_embeddings", "max_position_embeddings", false, 1,
                  &cfg->max_positions) ||
        !cfg_bool(c, o, "tie_word_embeddings", "tie_word_embeddings", &cfg->tie_embeddings) ||
        !cfg_probability(c, o, "attention_dropout", &cfg->dropout_attn))
        return false;
    const char *act;
    if (!cfg_string(c, o, "hidden_act", "hidden_act", &act))
        return false;
    if (act && strcmp(act, "silu") != 0) {
        cfg_err(c, "hidden_act '%s' is not supported (Qwen2 uses silu)", cfg_quote(act).s);
        return false;
    }
    uint32_t head_dim = 0;
    if (!cfg_uint(c, o, "head_dim", "head_dim", false, 1, &head_dim))
        return false;
    if (head_dim && (uint64_t)head_dim * cfg->heads != cfg->hidden) {
        cfg_err(c, "key 'head_dim' (%u) must equal hidden_size / num_attention_heads (%u / %u)",
                head_dim, cfg->hidden, cfg->heads);
        return false;
    }
    bool sliding = false;
    if (!cfg_bool(c, o, "use_sliding_window", "use_sliding_window", &sliding))
        return false;
    if (sliding) {
        cfg_err(c, "use_sliding_window true is not supported");
        return false;
    }
    if (cfg_get(o, "rope_scaling")) {
        cfg_err(c, "rope_scaling is not supported");
        return false;
    }
    return true;
}

/* The seed's UER config with use_qwen (QwenNet's models/qwen/config.json) describes no model of
 * its own: QwenNet's pretrain.py loads the Hugging Face checkpoint qwen_model_name names
 * (Qwen/Qwen2.5-0.5B by default) and its sizes, and the file's UER sizes (FFN 3584, no GQA) match
 * no Qwen2.5. So the model is Qwen2.5-0.5B's shape, the one QwenNet's pretrained checkpoints
 * have; another qwen_model_name is refused rather than guessed. */
static bool cfg_parse_uer_qwen(const struct cfg_ctx *c, struct json_object *o,
                               struct model_config *cfg)
{
    const char *name;
    if (!cfg_string(c, o, "qwen_model_name", "qwen_model_name", &name))
        return false;
    const char *base = name ? strrchr(name, '/') : NULL;
    base = base ? base + 1 : name;
    if (base && strcmp(base, "Qwen2.5-0.5B") != 0 && strcmp(base, "Qwen2.5-0.5B-Instruct") != 0) {
        cfg_err(c, "use_qwen with qwen_model_name '%s': from a UER config netlm builds Qwen2.5-0.5B's "
                "shape only; give that model's Hugging Face config.json, or its checkpoint with "
                "--qwen_model_name", cfg_quote(name).s);
        return false;
    }
    /* the sizes the file states, only to say that they are not used */
    uint32_t layers = 0, hidden = 0, ffn = 0;
    struct cfg_ctx quiet = {.name = c->name};
    cfg_uint(&quiet, o, "layers_num", "", false, 0, &layers);
    if (!cfg_uint(&quiet, o, "hidden_size", "", false, 0, &hidden) || !hidden)
        cfg_uint(&quiet, o, "emb_size", "", false, 0, &hidden);
    cfg_uint(&quiet, o, "feedforward_size", "", false, 0, &ffn);
    char stated[96] = "";
    if (layers || hidden || ffn)
        snprintf(stated, sizeof stated, "; the UER sizes in the file (%u layers x %u, FFN %u) are not used",
                 layers, hidden, ffn);
    snprintf(cfg->sizes_note, sizeof cfg->sizes_note,
             "%s: use_qwen: Qwen2.5-0.5B's shape (24 layers x 896, 14 query / 2 key-value heads, FFN 4864), "
             "the checkpoint QwenNet loads for it (%s)%s", c->name,
             name ? "its qwen_model_name" : "Qwen/Qwen2.5-0.5B, its default", stated);
    return true;
}

/* The seed's UER config (models/transformer/config.json): always a pre-LN GPT-2 with UER's
 * LayerNorm, or with use_qwen the Qwen2.5-0.5B shape (cfg_parse_uer_qwen). */
static bool cfg_parse_uer(const struct cfg_ctx *c, struct json_object *o,
                          struct model_config *cfg)
{
    bool use_qwen = false;
    float dropout = 0.1f; /* UER's --dropout default */
    if (!cfg_bool(c, o, "use_qwen", "use_qwen", &use_qwen) ||
        !cfg_probability(c, o, "dropout", &dropout))
        return false;
    cfg->dropout_embed = cfg->dropout_attn = cfg->dropout_resid = dropout;
    if (use_qwen) {
        if (!cfg_parse_uer_qwen(c, o, cfg))
            return false;
        cfg->arch = MODEL_ARCH_QWEN2;
        cfg->vocab_size = CFG_UER_VOCAB;
        cfg->hidden = 896;
        cfg->layers = 24;
        cfg->heads = 14;
        cfg->kv_heads = 2;
        cfg->ffn = 4864;
        cfg->max_positions = 32768;
        cfg->rope_theta = 1e6;
        cfg->norm_eps = 1e-6f;
        cfg->tie_embeddings = true;
        cfg->norm = MODEL_NORM_STANDARD;
        cfg->act = MODEL_ACT_SILU;
        return true;
    }
    cfg->arch = MODEL_ARCH_GPT2;
    cfg->vocab_size = CFG_UER_VOCAB;
    cfg->norm = MODEL_NORM_UER;
    cfg->norm_eps = 1e-6f;
    cfg->tie_embeddings = true;
    uint32_t emb = 0;
    if (!cfg_uint(c, o, "emb_size", "emb_size", false, 1, &emb) ||
        !cfg_uint(c, o, "hidden_size", "hidden_size", !cfg_present(o, "emb_size"), 1,
                  &cfg->hidden))
        return false;
    if (!cfg->hidden)
        cfg->hidden = emb;
    if (emb && emb != cfg->hidden) {
        cfg_err(c, "emb_size (%u) must equal hidden_size (%u)", emb, cfg->hidden);
        return false;
    }
    cfg->max_positions = 512; /* UER's --max_seq_length default */
    if (!cfg_uint(c, o, "feedforward_size", "feedforward_size", true, 1, &cfg->ffn) ||
        !cfg_uint(c, o, "heads_num", "heads_num", true, 1, &cfg->heads) ||
        !cfg_uint(c, o, "layers_num", "layers_num", true, 1, &cfg->layers) ||
        !cfg_uint(c, o, "max_seq_length", "max_seq_length", false, 1, &cfg->max_positions))
        return false;
    cfg->kv_heads = cfg->heads;
    const char *act, *ln, *mask;
    if (!cfg_string(c, o, "hidden_act", "hidden_act", &act) ||
        !cfg_string(c, o, "layernorm_positioning", "layernorm_positioning", &ln) ||
        !cfg_string(c, o, "mask", "mask", &mask))
        return false;
    if (!act || strcmp(act, "gelu") == 0) { /* UER's --hidden_act default */
        cfg->act = MODEL_ACT_GELU_ERF;
    } else if (strcmp(act, "gelu_fast") == 0 || strcmp(act, "gelu_new") == 0) {
        cfg->act = MODEL_ACT_GELU_TANH;
    } else {
        cfg_err(c, "hidden_act '%s' is not supported (gelu_fast, gelu_new or gelu)",
                cfg_quote(act).s);
        return false;
    }
    if (!ln || strcmp(ln, "post") == 0) {
        cfg_err(c, "post-LN (layernorm_positioning \"post\"%s) is not supported",
                ln ? "" : ", UER's default");
        return false;
    }
    if (strcmp(ln, "pre") != 0) {
        cfg_err(c, "layernorm_positioning '%s' is not supported (pre)", cfg_quote(ln).s);
        return false;
    }
    if (mask && strcmp(mask, "causal") != 0) {
        cfg_err(c, "mask '%s' is not supported (causal)", cfg_quote(mask).s);
        return false;
    }
    struct json_object *e = cfg_get(o, "embedding");
    if (e && (!json_object_is_type(e, json_type_array) || json_object_array_length(e) != 2 ||
              !json_object_is_type(json_object_array_get_idx(e, 0), json_type_string) ||
              !json_object_is_type(json_object_array_get_idx(e, 1), json_type_string) ||
              strcmp(json_object_get_string(json_object_array_get_idx(e, 0)), "word") != 0 ||
              strcmp(json_object_get_string(json_object_array_get_idx(e, 1)), "pos") != 0)) {
        cfg_err(c, "embedding must be [\"word\", \"pos\"]");
        return false;
    }
    bool no_emb_ln = true, tie = true;
    if (!cfg_bool(c, o, "remove_embedding_layernorm", "remove_embedding_layernorm",
                  &no_emb_ln) ||
        !cfg_bool(c, o, "tie_weights", "tie_weights", &tie))
        return false;
    if (!no_emb_ln) {
        cfg_err(c, "an embedding LayerNorm (remove_embedding_layernorm false) is not supported");
        return false;
    }
    if (!tie) {
        cfg_err(c, "untied GPT-2 LM head (tie_weights false) is not supported");
        return false;
    }
    return true;
}

static bool cfg_layer_norm(const struct cfg_ctx *c, struct json_object *o, const char *shown,
                           struct model_config *cfg)
{
    const char *ln;
    if (!cfg_string(c, o, "layer_norm", shown, &ln))
        return false;
    if (!ln)
        return true;
    if (strcmp(ln, "standard") == 0) {
        cfg->norm = MODEL_NORM_STANDARD;
    } else if (strcmp(ln, "uer") == 0) {
        cfg->norm = MODEL_NORM_UER;
    } else {
        cfg_err(c, "%s '%s' must be standard or uer", shown, cfg_quote(ln).s);
        return false;
    }
    return true;
}

static bool cfg_parse_tokenizer(const struct cfg_ctx *c, struct json_object *t,
                                struct model_tokenizer *tk)
{
    if (!json_object_is_type(t, json_type_object)) {
        cfg_err(c, "key 'netlm.tokenizer' must be an object");
        return false;
    }
    const char *mode, *vocab;
    if (!cfg_string(c, t, "header_mode", "netlm.tokenizer.header_mode", &mode) ||
        !cfg_uint(c, t, "stride", "netlm.tokenizer.stride", false, 1, &tk->stride) ||
        !cfg_uint(c, t, "tokens_per_packet", "netlm.tokenizer.tokens_per_packet", false, 1,
                  &tk->tokens_per_packet) ||
        !cfg_uint(c, t, "packets", "netlm.tokenizer.packets", false, 1, &tk->packets) ||
        !cfg_bool(c, t, "sep_between_packets", "netlm.tokenizer.sep_between_packets",
                  &tk->sep_between_packets) ||
        !cfg_string(c, t, "vocab", "netlm.tokenizer.vocab", &vocab))
        return false;
    if (mode) {
        bool known = false;
        for (size_t i = 0; i < sizeof(cfg_header_modes) / sizeof(*cfg_header_modes); i++)
            known |= strcmp(mode, cfg_header_modes[i]) == 0;
        if (!known) {
            cfg_err(c, "netlm.tokenizer.header_mode '%s' must be one of none, seed, full, "
                    "strict, strip", cfg_quote(mode).s);
            return false;
        }
        strcpy(tk->header_mode, mode);
    }
    if (tk->stride != 1 && tk->stride != 2) {
        cfg_err(c, "netlm.tokenizer.stride %u must be 1 or 2", tk->stride);
        return false;
    }
    if (vocab) {
        if (strlen(vocab) >= sizeof(tk->vocab) || !cfg_plain_file_name(vocab)) {
            cfg_err(c, "netlm.tokenizer.vocab '%s' must be \"builtin\" or a file name inside "
                    "the model directory", cfg_quote(vocab).s);
            return false;
        }
        strcpy(tk->vocab, vocab);
        tk->vocab_recorded = true;
    }
    return true;
}

static bool cfg_parse_labels(const struct cfg_ctx *c, struct json_object *n,
                             struct model_config *cfg)
{
    struct json_object *labels = cfg_get(n, "labels");
    uint32_t count = 0;
    bool have_count = cfg_get(n, "num_labels") != NULL;
    if (!cfg_uint(c, n, "num_labels", "netlm.num_labels", false, 0, &count))
        return false;
    if (labels) {
        if (!json_object_is_type(labels, json_type_array)) {
            cfg_err(c, "key 'netlm.labels' must be an array of strings");
            return false;
        }
        size_t k = json_object_array_length(labels);
        if (k > MODEL_MAX_LABELS) {
            cfg_err(c, "netlm.labels has %zu names, more than %u", k, MODEL_MAX_LABELS);
            return false;
        }
        if (have_count && count != k) {
            cfg_err(c, "netlm.num_labels (%u) does not match the %zu names in netlm.labels",
                    count, k);
            return false;
        }
        count = (uint32_t)k;
    } else if (count > MODEL_MAX_LABELS) {
        cfg_err(c, "netlm.num_labels %u is more than %u", count, MODEL_MAX_LABELS);
        return false;
    }
    if (count == 0)
        return true;
    cfg->labels = calloc(count, sizeof(*cfg->labels));
    if (!cfg->labels) {
        cfg_err(c, "out of memory");
        return false;
    }
    cfg->num_labels = count; /* release frees what was filled in so far */
    for (uint32_t i = 0; i < count; i++) {
        if (labels) {
            struct json_object *v = json_object_array_get_idx(labels, i);
            if (!json_object_is_type(v, json_type_string) ||
                strlen(json_object_get_string(v)) != (size_t)json_object_get_string_len(v)) {
                cfg_err(c, "netlm.labels[%u] must be a string", i);
                return false;
            }
            cfg->labels[i] = strdup(json_object_get_string(v));
        } else {
            char num[16];
            snprintf(num, sizeof(num), "%u", i);
            cfg->labels[i] = strdup(num);
        }
        if (!cfg->labels[i]) {
            cfg_err(c, "out of memory");
            return false;
        }
    }
    return true;
}

static bool cfg_parse_netlm(const struct cfg_ctx *c, struct json_object *n,
                            struct model_config *cfg)
{
    if (!json_object_is_type(n, json_type_object)) {
        cfg_err(c, "key 'netlm' must be an object");
        return false;
    }
    const char *task, *pooling;
    if (!cfg_string(c, n, "task", "netlm.task", &task) ||
        !cfg_string(c, n, "pooling", "netlm.pooling", &pooling))
        return false;
    if (task && !model_task_parse(task, &cfg->task)) {
        cfg_err(c, "netlm.task '%s' must be lm, classify or generate", cfg_quote(task).s);
        return false;
    }
    if (pooling && !model_pooling_parse(pooling, &cfg->pooling)) {
        cfg_err(c, "netlm.pooling '%s' must be mean, first, last or max", cfg_quote(pooling).s);
        return false;
    }
    if (!cfg_uint(c, n, "seq_length", "netlm.seq_length", false, 1, &cfg->seq_length) ||
        !cfg_uint(c, n, "tgt_seq_length", "netlm.tgt_seq_length", false, 1,
                  &cfg->tgt_seq_length) ||
        !cfg_layer_norm(c, n, "netlm.layer_norm", cfg))
        return false;
    struct json_object *t = cfg_get(n, "tokenizer");
    if (t && !cfg_parse_tokenizer(c, t, &cfg->tokenizer))
        return false;
    return cfg_parse_labels(c, n, cfg);
}

static bool cfg_parse_root(const struct cfg_ctx *c, struct json_object *root,
                           struct model_config *cfg)
{
    if (!json_object_is_type(root, json_type_object)) {
        cfg_err(c, "not a JSON object");
        return false;
    }
    struct json_object *type;
    if (json_object_object_get_ex(root, "model_type", &type)) {
        const char *t = json_object_is_type(type, json_type_string)
                            ? json_object_get_string(type) : NULL;
        if (!t) {
            cfg_err(c, "key 'model_type' must be a string");
            return false;
        }
        if (strcmp(t, "gpt2") == 0) {
            if (!cfg_parse_gpt2(c, root, cfg))
                return false;
        } else if (strcmp(t, "qwen2") == 0) {
            if (!cfg_parse_qwen2(c, root, cfg))
                return false;
        } else {
            cfg_err(c, "model_type '%s' is not supported (gpt2 or qwen2)", cfg_quote(t).s);
            return false;
        }
    } else if (cfg_present(root, "layers_num") || cfg_present(root, "emb_size")) {
        if (!cfg_parse_uer(c, root, cfg))
            return false;
    } else {
        cfg_err(c, "neither \"model_type\" (Hugging Face form) nor \"layers_num\"/\"emb_size\" "
                "(UER form)");
        return false;
    }
    if (!cfg_layer_norm(c, root, "layer_norm", cfg))
        return false;
    /* a checkpoint without a netlm object (or without its seq_length) gets the default length,
     * shortened to what the position table holds */
    if (cfg->max_positions > 0 && cfg->seq_length > cfg->max_positions)
        cfg->seq_length = cfg->max_positions;
    struct json_object *n = cfg_get(root, "netlm");
    if (n && !cfg_parse_netlm(c, n, cfg))
        return false;
    cfg->head_dim = cfg->heads ? cfg->hidden / cfg->heads : 0;
    return cfg_validate(cfg, c);
}

bool model_config_parse(const char *name, const char *json, size_t len, struct model_config *cfg,
                        char *err, size_t errlen)
{
    struct cfg_ctx c = {name ? name : "config", err, errlen};
    model_config_init(cfg);
    if (!json && len > 0) {
        cfg_err(&c, "no data");
        return false;
    }
    if (!json)
        json = "";
    if (len > CFG_MAX_FILE) {
        cfg_err(&c, "larger than %u bytes", CFG_MAX_FILE);
        return false;
    }
    if (memchr(json, '\0', len)) {
        cfg_err(&c, "not valid JSON (NUL byte)");
        return false;
    }
    struct json_tokener *tok = json_tokener_new();
    if (!tok) {
        cfg_err(&c, "out of memory");
        return false;
    }
    struct json_object *root = json_tokener_parse_ex(tok, json, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    bool ok = false;
    if (!root || jerr != json_tokener_success) {
        cfg_err(&c, "not valid JSON (%s at offset %zu)",
                jerr == json_tokener_continue ? "unexpected end" : json_tokener_error_desc(jerr),
                end);
        goto out;
    }
    for (size_t i = end; i < len; i++)
        if (!strchr(" \t\r\n", json[i])) {
            cfg_err(&c, "not valid JSON (data after the object at offset %zu)", i);
            goto out;
        }
    ok = cfg_parse_root(&c, root, cfg);
out:
    json_object_put(root);
    if (!ok) {
        model_config_release(cfg);
        model_config_init(cfg);
    }
    return ok;
}

bool model_config_load(const char *path, struct model_config *cfg, char *err, size_t errlen)
{
    struct cfg_ctx c = {path, err, errlen};
    model_config_init(cfg);
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        cfg_err(&c, "cannot open: %s", strerror(errno));
        return false;
    }
    char *text = malloc(CFG_MAX_FILE + 1);
    size_t len = text ? fread(text, 1, CFG_MAX_FILE + 1, fp) : 0;
    bool read_err = ferror(fp);
    fclose(fp);
    if (!text || read_err || len > CFG_MAX_FILE) {
        cfg_err(&c, "%s", !text ? "out of memory" : read_err ? "read error" : "larger than 16 MiB");
        free(text);
        return false;
    }
    bool ok = model_config_parse(path, text, len, cfg, err, errlen);
    free(text);
    return ok;
}

/* ---- writing ---- */

/* The shortest decimal that reads back as exactly this float (through a double, as the parser
 * reads it), so that the file says 1e-05, not 9.9999997473787516e-06. */
static struct json_object *cfg_json_float(float v)
{
    char buf[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof(buf), "%.*g", p, (double)v);
        if ((float)strtod(buf, NULL) == v)
            break;
    }
    return json_object_new_double_s((double)v, buf);
}

static struct json_object *cfg_json_double(double v)
{
    char buf[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof(buf), "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    return json_object_new_double_s(v, buf);
}

static void cfg_add(struct json_object *o, const char *key, struct json_object *v, bool *ok)
{
    if (!v || json_object_object_add(o, key, v) != 0) {
        json_object_put(v);
        *ok = false;
    }
}

static struct json_object *cfg_to_json(const struct model_config *cfg)
{
    bool ok = true, gpt2 = cfg->arch == MODEL_ARCH_GPT2;
    struct json_object *o = json_object_new_object(), *arr = json_object_new_array();
    if (!o || !arr) {
        json_object_put(o);
        json_object_put(arr);
        return NULL;
    }
    if (json_object_array_add(arr, json_object_new_string(gpt2 ? "GPT2LMHeadModel"
                                                               : "Qwen2ForCausalLM")) != 0)
        ok = false;
    cfg_add(o, "architectures", arr, &ok);
    cfg_add(o, "model_type", json_object_new_string(model_arch_name(cfg->arch)), &ok);
    cfg_add(o, "vocab_size", json_object_new_int64(cfg->vocab_size), &ok);
    if (gpt2) {
        cfg_add(o, "n_embd", json_object_new_int64(cfg->hidden), &ok);
        cfg_add(o, "n_layer", json_object_new_int64(cfg->layers), &ok);
        cfg_add(o, "n_head", json_object_new_int64(cfg->heads), &ok);
        cfg_add(o, "n_inner", json_object_new_int64(cfg->ffn), &ok);
        cfg_add(o, "n_positions", json_object_new_int64(cfg->max_positions), &ok);
        cfg_add(o, "layer_norm_epsilon", cfg_json_float(cfg->norm_eps), &ok);
        cfg_add(o, "activation_function",
                json_object_new_string(cfg->act == MODEL_ACT_GELU_ERF ? "gelu" : "gelu_new"),
                &ok);
        cfg_add(o, "embd_pdrop", cfg_json_float(cfg->dropout_embed), &ok);
        cfg_add(o, "attn_pdrop", cfg_json_float(cfg->dropout_attn), &ok);
        cfg_add(o, "resid_pdrop", cfg_json_float(cfg->dropout_resid), &ok);
    } else {
        cfg_add(o, "hidden_size", json_object_new_int64(cfg->hidden), &ok);
        cfg_add(o, "num_hidden_layers", json_object_new_int64(cfg->layers), &ok);
        cfg_add(o, "num_attention_heads", json_object_new_int64(cfg->heads), &ok);
        cfg_add(o, "num_key_value_heads", json_object_new_int64(cfg->kv_heads), &ok);
        cfg_add(o, "intermediate_size", json_object_new_int64(cfg->ffn), &ok);
        cfg_add(o, "max_position_embeddings", json_object_new_int64(cfg->max_positions), &ok);
        cfg_add(o, "rope_theta", cfg_json_double(cfg->rope_theta), &ok);
        cfg_add(o, "rms_norm_eps", cfg_json_float(cfg->norm_eps), &ok);
        cfg_add(o, "hidden_act", json_object_new_string("silu"), &ok);
        cfg_add(o, "attention_dropout", cfg_json_float(cfg->dropout_attn), &ok);
        cfg_add(o, "torch_dtype", json_object_new_string("float32"), &ok);
    }
    cfg_add(o, "tie_word_embeddings", json_object_new_boolean(cfg->tie_embeddings), &ok);

    struct json_object *n = json_object_new_object(), *tk = json_object_new_object(),
                       *labels = json_object_new_array();
    if (!n || !tk || !labels) {
        json_object_put(n);
        json_object_put(tk);
        json_object_put(labels);
        json_object_put(o);
        return NULL;
    }
    cfg_add(n, "task", json_object_new_string(model_task_name(cfg->task)), &ok);
    for (uint32_t i = 0; i < cfg->num_labels && ok; i++)
        if (json_object_array_add(labels, json_object_new_string(cfg->labels[i])) != 0)
            ok = false;
    cfg_add(n, "labels", labels, &ok);
    cfg_add(n, "num_labels", json_object_new_int64(cfg->num_labels), &ok);
    cfg_add(n, "pooling", json_object_new_string(model_pooling_name(cfg->pooling)), &ok);
    cfg_add(n, "seq_length", json_object_new_int64(cfg->seq_length), &ok);
    cfg_add(n, "tgt_seq_length", json_object_new_int64(cfg->tgt_seq_length), &ok);
    cfg_add(n, "layer_norm", json_object_new_string(cfg_norm_name(cfg->norm)), &ok);
    cfg_add(tk, "header_mode", json_object_new_string(cfg->tokenizer.header_mode), &ok);
    cfg_add(tk, "stride", json_object_new_int64(cfg->tokenizer.stride), &ok);
    cfg_add(tk, "tokens_per_packet", json_object_new_int64(cfg->tokenizer.tokens_per_packet),
            &ok);
    cfg_add(tk, "packets", json_object_new_int64(cfg->tokenizer.packets), &ok);
    cfg_add(tk, "sep_between_packets",
            json_object_new_boolean(cfg->tokenizer.sep_between_packets), &ok);
    cfg_add(tk, "vocab", json_object_new_string(cfg->tokenizer.vocab), &ok);
    cfg_add(n, "tokenizer", tk, &ok);
    cfg_add(o, "netlm", n, &ok);
    if (!ok) {
        json_object_put(o);
        return NULL;
    }
    return o;
}

bool model_config_write(const struct model_config *cfg, const char *path, char *err, size_t errlen)
{
    struct cfg_ctx c = {path, err, errlen};
    if (!cfg_validate(cfg, &c))
        return false;
    struct json_object *o = cfg_to_json(cfg);
    if (!o) {
        cfg_err(&c, "out of memory");
        return false;
    }
    const char *text = json_object_to_json_string_ext(
        o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE);
    bool ok = false;
    struct model_outfile out;
    if (!text) {
        cfg_err(&c, "out of memory");
    } else if (model_outfile_open(&out, path, err, errlen)) {
        size_t len = strlen(text);
        if (fwrite(text, 1, len, out.fp) != len || fputc('\n', out.fp) == EOF) {
            cfg_err(&c, "cannot write %s: %s", out.tmp, strerror(errno));
            model_outfile_abort(&out);
        } else {
            ok = model_outfile_commit(&out, err, errlen);
        }
    }
    json_object_put(o);
    return ok;
}
