/* weights_io.c — model directories: Hugging Face tensor names and layouts to and from the
 * parameter block (GPT-2's Conv1D [in, out] matrices transposed, Qwen2's q/k/v and gate/up
 * projections split out of their fused rows), checked tensor by tensor. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/model_internal.h"
#include "model/safetensors.h"

struct hf_entry {
    char name[128];
    size_t offset;       /* floats into the parameter block */
    uint32_t ndim;       /* 1 or 2 */
    uint64_t shape[2];   /* the Hugging Face shape */
    bool transpose;      /* Conv1D [in, out] ↔ internal [out, in] */
};

struct hf_map {
    struct hf_entry *e;
    size_t count;
};

static void put(struct hf_map *map, const char *name, const float *base, const float *dst,
                uint32_t ndim, uint64_t rows, uint64_t cols, bool transpose)
{
    struct hf_entry *e = &map->e[map->count++];
    snprintf(e->name, sizeof(e->name), "%s", name);
    e->offset = (size_t)(dst - base);
    e->ndim = ndim;
    e->shape[0] = rows;
    e->shape[1] = cols;
    e->transpose = transpose;
}

/* The Hugging Face tensors of m, in the order a Hugging Face checkpoint lists them. */
/* The seed's UER GPT-2 (NetGPT's pretrain.py state dict, saved as safetensors): nn.Linear
 * weights [out, in], q/k/v as three linears, LayerNorm gamma/beta; the tied
 * target.lm.output_layer.weight is the word embedding again and is not read. */
static void uer_map_build(const struct model *m, struct hf_map *map)
{
    const struct model_config *c = &m->cfg;
    const struct model_weights *w = &m->w;
    const float *base = m->params;
    const uint64_t C = c->hidden, F = c->ffn;
    char n[96];
    put(map, "embedding.word.embedding.weight", base, w->wte, 2, c->vocab_size, C, false);
    put(map, "embedding.pos.embedding.weight", base, w->wpe, 2, c->max_positions, C, false);
    for (uint32_t i = 0; i < c->layers; i++) {
        const struct model_layer_weights *l = &w->layers[i];
#define U(fmt, ...) (snprintf(n, sizeof(n), "encoder.transformer.%u." fmt, i, __VA_ARGS__), n)
        put(map, U("%s", "layer_norm_1.gamma"), base, l->ln1_w, 1, C, 0, false);
        put(map, U("%s", "layer_norm_1.beta"), base, l->ln1_b, 1, C, 0, false);
        for (uint32_t k = 0; k < 3; k++) {
            put(map, U("self_attn.linear_layers.%u.weight", k), base, l->qkv_w + k * C * C, 2, C, C, false);
            put(map, U("self_attn.linear_layers.%u.bias", k), base, l->qkv_b + k * C, 1, C, 0, false);
        }
        put(map, U("%s", "self_attn.final_linear.weight"), base, l->o_w, 2, C, C, false);
        put(map, U("%s", "self_attn.final_linear.bias"), base, l->o_b, 1, C, 0, false);
        put(map, U("%s", "layer_norm_2.gamma"), base, l->ln2_w, 1, C, 0, false);
        put(map, U("%s", "layer_norm_2.beta"), base, l->ln2_b, 1, C, 0, false);
        put(map, U("%s", "feed_forward.linear_1.weight"), base, l->up_w, 2, F, C, false);
        put(map, U("%s", "feed_forward.linear_1.bias"), base, l->up_b, 1, F, 0, false);
        put(map, U("%s", "feed_forward.linear_2.weight"), base, l->down_w, 2, C, F, false);
        put(map, U("%s", "feed_forward.linear_2.bias"), base, l->down_b, 1, C, 0, false);
#undef U
    }
    put(map, "encoder.layer_norm.gamma", base, w->lnf_w, 1, C, 0, false);
    put(map, "encoder.layer_norm.beta", base, w->lnf_b, 1, C, 0, false);
}

/* prefix: "transformer." or "" before GPT-2's names; "" or "qwen_model." (QwenNet's wrapper)
 * before Qwen2's. uer: the seed's UER names for GPT-2 (uer_map_build). netlm writes
 * hf_write_map's. */
static bool hf_map_build(const struct model *m, const char *prefix, bool uer, struct hf_map *map)
{
    const struct model_config *c = &m->cfg;
    const struct model_weights *w = &m->w;
    const float *base = m->params;
    map->count = 0;
    map->e = calloc(16 * (size_t)c->layers + 16, sizeof(*map->e));
    if (!map->e)
        return false;
    const uint64_t C = c->hidden, F = c->ffn, Q = (uint64_t)c->heads * c->head_dim;
    const uint64_t KVd = (uint64_t)c->kv_heads * c->head_dim;
    char n[128];
    if (c->arch == MODEL_ARCH_GPT2 && uer) {
        uer_map_build(m, map);
    } else if (c->arch == MODEL_ARCH_GPT2) {
#define G(fmt, ...) (snprintf(n, sizeof(n), "%s" fmt, prefix, __VA_ARGS__), n)
        put(map, G("%s", "wte.weight"), base, w->wte, 2, c->vocab_size, C, false);
        put(map, G("%s", "wpe.weight"), base, w->wpe, 2, c->max_positions, C, false);
        for (uint32_t i = 0; i < c->layers; i++) {
            const struct model_layer_weights *l = &w->layers[i];
            put(map, G("h.%u.ln_1.weight", i), base, l->ln1_w, 1, C, 0, false);
            put(map, G("h.%u.ln_1.bias", i), base, l->ln1_b, 1, C, 0, false);
            put(map, G("h.%u.attn.c_attn.weight", i), base, l->qkv_w, 2, C, 3 * C, true);
            put(map, G("h.%u.attn.c_attn.bias", i), base, l->qkv_b, 1, 3 * C, 0, false);
            put(map, G("h.%u.attn.c_proj.weight", i), base, l->o_w, 2, C, C, true);
            put(map, G("h.%u.attn.c_proj.bias", i), base, l->o_b, 1, C, 0, false);
            put(map, G("h.%u.ln_2.weight", i), base, l->ln2_w, 1, C, 0, false);
            put(map, G("h.%u.ln_2.bias", i), base, l->ln2_b, 1, C, 0, false);
            put(map, G("h.%u.mlp.c_fc.weight", i), base, l->up_w, 2, C, F, true);
            put(map, G("h.%u.mlp.c_fc.bias", i), base, l->up_b, 1, F, 0, false);
            put(map, G("h.%u.mlp.c_proj.weight", i), base, l->down_w, 2, F, C, true);
            put(map, G("h.%u.mlp.c_proj.bias", i), base, l->down_b, 1, C, 0, false);
        }
        put(map, G("%s", "ln_f.weight"), base, w->lnf_w, 1, C, 0, false);
        put(map, G("%s", "ln_f.bias"), base, w->lnf_b, 1, C, 0, false);
#undef G
    } else {
        put(map, (snprintf(n, sizeof(n), "%smodel.embed_tokens.weight", prefix), n), base, w->wte, 2, c->vocab_size,
            C, false);
        for (uint32_t i = 0; i < c->layers; i++) {
            const struct model_layer_weights *l = &w->layers[i];
#define L(suffix) (snprintf(n, sizeof(n), "%smodel.layers.%u.%s", prefix, i, suffix), n)
            put(map, L("input_layernorm.weight"), base, l->ln1_w, 1, C, 0, false);
            put(map, L("self_attn.q_proj.weight"), base, l->qkv_w, 2, Q, C, false);
            put(map, L("self_attn.q_proj.bias"), base, l->qkv_b, 1, Q, 0, false);
            put(map, L("self_attn.k_proj.weight"), base, l->qkv_w + Q * C, 2, KVd, C, false);
            put(map, L("self_attn.k_proj.bias"), base, l->qkv_b + Q, 1, KVd, 0, false);
            put(map, L("self_attn.v_proj.weight"), base, l->qkv_w + (Q + KVd) * C, 2, KVd, C, false);
            put(map, L("self_attn.v_proj.bias"), base, l->qkv_b + Q + KVd, 1, KVd, 0, false);
            put(map, L("self_attn.o_proj.weight"), base, l->o_w, 2, C, Q, false);
            put(map, L("post_attention_layernorm.weight"), base, l->ln2_w, 1, C, 0, false);
            put(map, L("mlp.gate_proj.weight"), base, l->up_w, 2, F, C, false);
            put(map, L("mlp.up_proj.weight"), base, l->up_w + F * C, 2, F, C, false);
            put(map, L("mlp.down_proj.weight"), base, l->down_w, 2, C, F, false);
#undef L
        }
        put(map, (snprintf(n, sizeof(n), "%smodel.norm.weight", prefix), n), base, w->lnf_w, 1, C, 0, false);
        if (w->lm_head)
            put(map, (snprintf(n, sizeof(n), "%slm_head.weight", prefix), n), base, w->lm_head, 2, c->vocab_size, C,
                false);
    }
    if (w->cls_dense_w) { /* the seed's run_understanding.py: output_layer_1, tanh, output_layer_2 */
        put(map, uer ? "output_layer_1.weight" : "classifier.dense.weight", base, w->cls_dense_w, 2, C, C, false);
        put(map, uer ? "output_layer_1.bias" : "classifier.dense.bias", base, w->cls_dense_b, 1, C, 0, false);
        put(map, uer ? "output_layer_2.weight" : "classifier.out_proj.weight", base, w->cls_out_w, 2, c->num_labels,
            C, false);
        put(map, uer ? "output_layer_2.bias" : "classifier.out_proj.bias", base, w->cls_out_b, 1, c->num_labels, 0,
            false);
    }
    return true;
}

/* The names netlm writes: Hugging Face's, GPT-2's under "transformer.". */
static bool hf_write_map(const struct model *m, struct hf_map *map)
{
    return hf_map_build(m, m->cfg.arch == MODEL_ARCH_GPT2 ? "transformer." : "", false, map);
}

static void transpose(float *dst, const float *src, uint64_t rows, uint64_t cols)
{
    for (uint64_t i = 0; i < rows; i++)
        for (uint64_t j = 0; j < cols; j++)
            dst[j * rows + i] = src[i * cols + j];
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* Tensors a Hugging Face checkpoint may carry that are not weights netlm needs. */
static bool ignorable(const struct model_config *c, const char *name)
{
    /* a tied head saved again: Hugging Face's lm_head, QwenNet's, UER's output layer */
    return ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias") ||
           ends_with(name, "rotary_emb.inv_freq") ||
           (c->tie_embeddings && (!strcmp(name, "lm_head.weight") || !strcmp(name, "qwen_model.lm_head.weight") ||
                                  !strcmp(name, "target.lm.output_layer.weight")));
}

static void shape_text(const struct st_tensor *t, char *out, size_t cap)
{
    size_t n = (size_t)snprintf(out, cap, "[");
    for (uint32_t i = 0; i < t->ndim && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, "%s%llu", i ? ", " : "",
                              (unsigned long long)t->shape[i]);
    if (n < cap)
        snprintf(out + n, cap - n, "]");
}

/* The classifier's label count from the weights; reconciles it with config.json. uer: the
 * seed's names, whose head is output_layer_2. */
static bool reconcile_labels(struct model_config *cfg, const struct st_set *set, bool uer, const char *dir,
                             char *err, size_t errlen)
{
    const struct st_tensor *out = st_set_find(set, uer ? "output_layer_2.weight" : "classifier.out_proj.weight");
    if (!out) {
        if (cfg->num_labels > 0 && cfg->task == MODEL_TASK_CLASSIFY) {
            snprintf(err, errlen, "%s: config.json has %u labels but the weights have no classifier.* tensors",
                     dir, cfg->num_labels);
            return false;
        }
        /* labels without a head (e.g. a pretrained LM dir) are dropped: the head comes later */
        for (uint32_t i = 0; i < cfg->num_labels; i++)
            free(cfg->labels[i]);
        free(cfg->labels);
        cfg->labels = NULL;
        cfg->num_labels = 0;
        return true;
    }
    if (out->ndim != 2 || out->shape[0] == 0 || out->shape[0] > MODEL_MAX_LABELS) {
        snprintf(err, errlen, "%s: %s has an invalid shape", dir, out->name);
        return false;
    }
    uint32_t n = (uint32_t)out->shape[0];
    if (cfg->num_labels == 0) {
        cfg->labels = calloc(n, sizeof(char *));
        if (!cfg->labels) {
            snprintf(err, errlen, "%s: out of memory", dir);
            return false;
        }
        cfg->num_labels = n;
        for (uint32_t i = 0; i < n; i++) {
            char name[16];
            snprintf(name, sizeof(name), "%u", i);
            if (!(cfg->labels[i] = strdup(name))) {
                snprintf(err, errlen, "%s: out of memory", dir);
                return false;
            }
        }
    } else if (cfg->num_labels != n) {
        snprintf(err, errlen, "%s: config.json has %u labels but %s has %u rows", dir, cfg->num_labels, out->name, n);
        return false;
    }
    return true;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bool fill_from_set(struct model *m, const struct st_set *set, const struct hf_map *map,
                          const char *dir, char *err, size_t errlen)
{
    size_t largest = 0;
    for (size_t i = 0; i < map->count; i++)
        if (map->e[i].transpose && map->e[i].shape[0] * map->e[i].shape[1] > largest)
            largest = map->e[i].shape[0] * map->e[i].shape[1];
    float *tmp = largest ? malloc(largest * sizeof(float)) : NULL;
    if (largest && !tmp) {
        snprintf(err, errlen, "%s: out of memory", dir);
        return false;
    }
    bool ok = true;
    for (size_t i = 0; ok && i < map->count; i++) {
        const struct hf_entry *e = &map->e[i];
        const struct st_tensor *t = st_set_find(set, e->name);
        char want[64], got[64];
        if (!t) {
            snprintf(err, errlen, "%s: missing tensor '%s'", dir, e->name);
            ok = false;
            break;
        }
        if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
            snprintf(err, errlen, "%s: tensor '%s' is %s; weights must be F32, F16 or BF16", dir,
                     e->name, st_dtype_name(t->dtype));
            ok = false;
            break;
        }
        struct st_tensor expect = {.ndim = e->ndim, .shape = {e->shape[0], e->shape[1]}};
        if (t->ndim != e->ndim || t->shape[0] != e->shape[0] ||
            (e->ndim == 2 && t->shape[1] != e->shape[1])) {
            shape_text(&expect, want, sizeof(want));
            shape_text(t, got, sizeof(got));
            snprintf(err, errlen, "%s: tensor '%s' has shape %s, the config needs %s", dir,
                     e->name, got, want);
            ok = false;
            break;
        }
        float *dst = m->params + e->offset;
        if (e->transpose) {
            st_read_f32(t, tmp);
            transpose(dst, tmp, e->shape[0], e->shape[1]);
        } else {
            st_read_f32(t, dst);
        }
        st_set_drop_pages(set, t);
    }
    free(tmp);
    if (!ok)
        return false;
    /* anything left is a tensor this architecture does not have: a wrong model_type, most
     * likely, and never silently dropped */
    const char **names = malloc(map->count * sizeof(char *));
    if (!names) {
        snprintf(err, errlen, "%s: out of memory", dir);
        return false;
    }
    for (size_t i = 0; i < map->count; i++)
        names[i] = map->e[i].name;
    qsort(names, map->count, sizeof(char *), cmp_str);
    for (size_t i = 0; ok && i < st_set_count(set); i++) {
        const char *name = st_set_at(set, i)->name;
        if (!bsearch(&name, names, map->count, sizeof(char *), cmp_str) &&
            !ignorable(&m->cfg, name)) {
            snprintf(err, errlen, "%s: unexpected tensor '%s' for a %s model", dir, name,
                     model_arch_name(m->cfg.arch));
            ok = false;
        }
    }
    free(names);
    return ok;
}

struct model *model_load(const char *dir, char *err, size_t errlen)
{
    char path[4096];
    struct stat st;
    if (stat(dir, &st) == 0 && !S_ISDIR(st.st_mode)) {
        /* the seed's models are single PyTorch files (pretrained_model.bin) */
        snprintf(err, errlen, "%s: a file, not a model directory (config.json and *.safetensors); a PyTorch .bin "
                              "or .pt checkpoint is not read: save its state dict as model.safetensors beside its "
                              "config.json (Hugging Face, UER and QwenNet names are read)", dir);
        return NULL;
    }
    snprintf(path, sizeof(path), "%s/config.json", dir);
    struct model_config cfg;
    model_config_init(&cfg);
    if (!model_config_load(path, &cfg, err, errlen))
        return NULL;
    struct st_set *set = st_set_open(dir, err, errlen);
    if (!set) {
        model_config_release(&cfg);
        return NULL;
    }
    /* Hugging Face's names (GPT-2's with or without "transformer."), or the seed's own: UER's for
     * GPT-2, QwenNet's "qwen_model." before Qwen2's */
    const bool gpt2 = cfg.arch == MODEL_ARCH_GPT2;
    const char *prefix = gpt2 ? "transformer." : "";
    if (gpt2 && !st_set_find(set, "transformer.wte.weight") && st_set_find(set, "wte.weight"))
        prefix = "";
    if (!gpt2 && !st_set_find(set, "model.embed_tokens.weight") &&
        st_set_find(set, "qwen_model.model.embed_tokens.weight"))
        prefix = "qwen_model.";
    const bool uer = gpt2 && !st_set_find(set, "transformer.wte.weight") && !st_set_find(set, "wte.weight") &&
                     st_set_find(set, "embedding.word.embedding.weight");
    struct model *m = NULL;
    if (reconcile_labels(&cfg, set, uer, dir, err, errlen))
        m = model_create_empty(&cfg, err, errlen);
    model_config_release(&cfg);
    if (m) {
        struct hf_map map;
        bool ok = hf_map_build(m, prefix, uer, &map);
        if (!ok)
            snprintf(err, errlen, "%s: out of memory", dir);
        ok = ok && fill_from_set(m, set, &map, dir, err, errlen);
        free(map.e);
        if (!ok) {
            model_free(m);
            m = NULL;
        }
    }
    st_set_close(set);
    return m;
}

size_t model_hf_count(const struct model *m)
{
    struct hf_map map;
    if (!hf_write_map(m, &map))
        return 0;
    size_t n = map.count;
    free(map.e);
    return n;
}

bool model_hf_tensor(const struct model *m, size_t i, const float *block, char *name,
                     size_t name_cap, uint32_t *ndim, uint64_t shape[2], float *out)
{
    struct hf_map map;
    if (!hf_write_map(m, &map))
        return false;
    bool ok = i < map.count;
    if (ok) {
        const struct hf_entry *e = &map.e[i];
        snprintf(name, name_cap, "%s", e->name);
        *ndim = e->ndim;
        shape[0] = e->shape[0];
        shape[1] = e->ndim == 2 ? e->shape[1] : 1;
        const size_t numel = shape[0] * shape[1];
        if (out && e->transpose)
            transpose(out, block + e->offset, e->shape[1], e->shape[0]);
        else if (out)
            memcpy(out, block + e->offset, numel * sizeof(float));
    }
    free(map.e);
    return ok;
}

/* fp32 → bf16, round to nearest even; NaN stays a quiet NaN */
static void to_bf16(uint16_t *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &src[i], 4);
        if ((u & 0x7fffffffu) > 0x7f800000u)
            dst[i] = (uint16_t)((u >> 16) | 0x40);
        else
            dst[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
}

static bool save_dir(const struct model *m, const char *dir, bool bf16, char *err, size_t errlen);

bool model_save(const struct model *m, const char *dir, char *err, size_t errlen)
{
    return save_dir(m, dir, false, err, errlen);
}

bool model_save_bf16(const struct model *m, const char *dir, char *err, size_t errlen)
{
    return save_dir(m, dir, true, err, errlen);
}

static bool save_dir(const struct model *m, const char *dir, bool bf16, char *err, size_t errlen)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: cannot create the directory: %s", dir, strerror(errno));
        return false;
    }
    struct hf_map map;
    if (!hf_write_map(m, &map)) {
        snprintf(err, errlen, "%s: out of memory", dir);
        return false;
    }
    size_t transposed = 0, total = 0;
    for (size_t i = 0; i < map.count; i++) {
        size_t numel = map.e[i].shape[0] * (map.e[i].ndim == 2 ? map.e[i].shape[1] : 1);
        total += numel;
        if (map.e[i].transpose)
            transposed += numel;
    }
    float *tmp = transposed ? malloc(transposed * sizeof(float)) : NULL;
    uint16_t *half = bf16 ? malloc(total * sizeof(uint16_t)) : NULL;
    struct st_write_tensor *t = calloc(map.count, sizeof(*t));
    bool ok = t && (!transposed || tmp) && (!bf16 || half);
    if (!ok)
        snprintf(err, errlen, "%s: out of memory", dir);
    size_t used = 0, half_used = 0;
    for (size_t i = 0; ok && i < map.count; i++) {
        const struct hf_entry *e = &map.e[i];
        t[i].name = e->name;
        t[i].dtype = ST_F32;
        t[i].ndim = e->ndim;
        t[i].shape[0] = e->shape[0];
        t[i].shape[1] = e->shape[1];
        if (e->transpose) {
            /* internal [out, in] back to Conv1D [in, out] */
            float *dst = tmp + used;
            transpose(dst, m->params + e->offset, e->shape[1], e->shape[0]);
            used += e->shape[0] * e->shape[1];
            t[i].data = dst;
        } else {
            t[i].data = m->params + e->offset;
        }
        if (bf16) {
            size_t numel = e->shape[0] * (e->ndim == 2 ? e->shape[1] : 1);
            to_bf16(half + half_used, t[i].data, numel);
            t[i].data = half + half_used;
            t[i].dtype = ST_BF16;
            half_used += numel;
        }
    }
    char path[4096];
    static const char *const meta[] = {"format", "pt"};
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    ok = ok && st_write(path, t, map.count, meta, 1, err, errlen);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    ok = ok && model_config_write(&m->cfg, path, err, errlen);
    if (ok) {
        /* a stale shard index would make loaders read the old shards instead */
        snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
        unlink(path);
    }
    free(tmp);
    free(half);
    free(t);
    free(map.e);
    return ok;
}
