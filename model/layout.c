/* layout.c — the parameter block: its tensor table, pointers into it, seeded initialisation,
 * model creation, vocabulary resize and a fresh classification head. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"

static bool add_tensor(struct model_layout *l, size_t *cap, const char *name,
                       enum model_tensor_kind kind, uint32_t rows, uint32_t cols)
{
    if (l->count == *cap) {
        size_t ncap = *cap ? *cap * 2 : 64;
        struct model_tensor *t = realloc(l->tensors, ncap * sizeof(*t));
        if (!t)
            return false;
        l->tensors = t;
        *cap = ncap;
    }
    struct model_tensor *t = &l->tensors[l->count++];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->kind = kind;
    t->rows = rows;
    t->cols = cols;
    t->numel = (size_t)rows * cols;
    t->offset = l->total;
    /* 16 floats (64 bytes) between tensors keeps every tensor cache-line aligned */
    l->total += (t->numel + 15) & ~(size_t)15;
    return true;
}

bool model_layout_build(const struct model_config *cfg, struct model_layout *out)
{
    memset(out, 0, sizeof(*out));
    size_t cap = 0;
    const uint32_t C = cfg->hidden, d = cfg->head_dim, F = cfg->ffn;
    const uint32_t qkv = (cfg->heads + 2 * cfg->kv_heads) * d;
    const bool gpt2 = cfg->arch == MODEL_ARCH_GPT2;
    char name[48];
    bool ok = add_tensor(out, &cap, "wte", MODEL_TENSOR_EMBEDDING, cfg->vocab_size, C);
    if (gpt2)
        ok = ok && add_tensor(out, &cap, "wpe", MODEL_TENSOR_EMBEDDING, cfg->max_positions, C);
    for (uint32_t i = 0; ok && i < cfg->layers; i++) {
#define ADD(suffix, kind, r, c)                                                                  \
    (snprintf(name, sizeof(name), "layers.%u." suffix, i), add_tensor(out, &cap, name, kind, r, c))
        ok = ADD("ln1_w", MODEL_TENSOR_NORM_WEIGHT, 1, C);
        if (gpt2)
            ok = ok && ADD("ln1_b", MODEL_TENSOR_NORM_BIAS, 1, C);
        ok = ok && ADD("qkv_w", MODEL_TENSOR_MATRIX, qkv, C) && ADD("qkv_b", MODEL_TENSOR_BIAS, 1, qkv);
        ok = ok && ADD("o_w", MODEL_TENSOR_MATRIX, C, cfg->heads * d);
        if (gpt2)
            ok = ok && ADD("o_b", MODEL_TENSOR_BIAS, 1, C);
        ok = ok && ADD("ln2_w", MODEL_TENSOR_NORM_WEIGHT, 1, C);
        if (gpt2)
            ok = ok && ADD("ln2_b", MODEL_TENSOR_NORM_BIAS, 1, C);
        ok = ok && ADD("up_w", MODEL_TENSOR_MATRIX, gpt2 ? F : 2 * F, C);
        if (gpt2)
            ok = ok && ADD("up_b", MODEL_TENSOR_BIAS, 1, F);
        ok = ok && ADD("down_w", MODEL_TENSOR_MATRIX, C, F);
        if (gpt2)
            ok = ok && ADD("down_b", MODEL_TENSOR_BIAS, 1, C);
#undef ADD
    }
    ok = ok && add_tensor(out, &cap, "lnf_w", MODEL_TENSOR_NORM_WEIGHT, 1, C);
    if (gpt2)
        ok = ok && add_tensor(out, &cap, "lnf_b", MODEL_TENSOR_NORM_BIAS, 1, C);
    if (!cfg->tie_embeddings)
        ok = ok && add_tensor(out, &cap, "lm_head", MODEL_TENSOR_MATRIX, cfg->vocab_size, C);
    if (cfg->num_labels > 0) {
        ok = ok && add_tensor(out, &cap, "cls_dense_w", MODEL_TENSOR_MATRIX, C, C) &&
             add_tensor(out, &cap, "cls_dense_b", MODEL_TENSOR_BIAS, 1, C) &&
             add_tensor(out, &cap, "cls_out_w", MODEL_TENSOR_MATRIX, cfg->num_labels, C) &&
             add_tensor(out, &cap, "cls_out_b", MODEL_TENSOR_BIAS, 1, cfg->num_labels);
    }
    if (!ok)
        model_layout_release(out);
    return ok;
}

void model_layout_release(struct model_layout *l)
{
    free(l->tensors);
    memset(l, 0, sizeof(*l));
}

void model_weights_bind(const struct model_config *cfg, const struct model_layout *l, float *base,
                        struct model_weights *w, struct model_layer_weights *layers)
{
    memset(w, 0, sizeof(*w));
    memset(layers, 0, sizeof(*layers) * cfg->layers);
    w->layers = layers;
    for (size_t i = 0; i < l->count; i++) {
        const struct model_tensor *t = &l->tensors[i];
        float *p = base + t->offset;
        unsigned layer;
        char field[16];
        if (sscanf(t->name, "layers.%u.%15s", &layer, field) == 2 && layer < cfg->layers) {
            struct model_layer_weights *lw = &layers[layer];
            float **slot = !strcmp(field, "ln1_w")    ? &lw->ln1_w
                           : !strcmp(field, "ln1_b")  ? &lw->ln1_b
                           : !strcmp(field, "qkv_w")  ? &lw->qkv_w
                           : !strcmp(field, "qkv_b")  ? &lw->qkv_b
                           : !strcmp(field, "o_w")    ? &lw->o_w
                           : !strcmp(field, "o_b")    ? &lw->o_b
                           : !strcmp(field, "ln2_w")  ? &lw->ln2_w
                           : !strcmp(field, "ln2_b")  ? &lw->ln2_b
                           : !strcmp(field, "up_w")   ? &lw->up_w
                           : !strcmp(field, "up_b")   ? &lw->up_b
                           : !strcmp(field, "down_w") ? &lw->down_w
                                                      : &lw->down_b;
            *slot = p;
            continue;
        }
        float **slot = !strcmp(t->name, "wte")           ? &w->wte
                       : !strcmp(t->name, "wpe")         ? &w->wpe
                       : !strcmp(t->name, "lnf_w")       ? &w->lnf_w
                       : !strcmp(t->name, "lnf_b")       ? &w->lnf_b
                       : !strcmp(t->name, "lm_head")     ? &w->lm_head
                       : !strcmp(t->name, "cls_dense_w") ? &w->cls_dense_w
                       : !strcmp(t->name, "cls_dense_b") ? &w->cls_dense_b
                       : !strcmp(t->name, "cls_out_w")   ? &w->cls_out_w
                                                         : &w->cls_out_b;
        *slot = p;
    }
}

/* ---- random numbers ---- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void model_rng_seed(struct model_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t model_rng_next(struct model_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double model_rng_uniform(struct model_rng *r) { return (double)(model_rng_next(r) >> 11) * 0x1p-53; }

float model_rng_normal(struct model_rng *r)
{
    /* Box–Muller; one value per call keeps the stream position easy to reason about */
    double u1 = 1.0 - model_rng_uniform(r), u2 = model_rng_uniform(r);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

/* Each tensor draws from its own stream (seed, tensor index), so a tensor's values do not depend
 * on the sizes of the tensors before it — a resized vocabulary leaves the layers as they were. */
static void init_tensor(const struct model_tensor *t, float *p, uint64_t seed, uint64_t index)
{
    if (t->kind == MODEL_TENSOR_NORM_WEIGHT) {
        for (size_t i = 0; i < t->numel; i++)
            p[i] = 1.0f;
        return;
    }
    if (t->kind == MODEL_TENSOR_NORM_BIAS) {
        memset(p, 0, t->numel * sizeof(float));
        return;
    }
    struct model_rng rng;
    model_rng_seed(&rng, seed ^ (0x6a09e667f3bcc909ull * (index + 1)));
    for (size_t i = 0; i < t->numel; i++)
        p[i] = 0.02f * model_rng_normal(&rng);
}

void model_init_block(const struct model_layout *l, float *base, uint64_t seed)
{
    for (size_t i = 0; i < l->count; i++)
        init_tensor(&l->tensors[i], base + l->tensors[i].offset, seed, i);
}

/* ---- the model object ---- */

static struct model *model_alloc(const struct model_config *cfg, char *err, size_t errlen)
{
    if (!model_config_validate(cfg, err, errlen))
        return NULL;
    struct model *m = calloc(1, sizeof(*m));
    if (!m || !model_config_copy(&m->cfg, cfg) || !model_layout_build(&m->cfg, &m->layout)) {
        snprintf(err, errlen, "model: out of memory");
        if (m)
            model_config_release(&m->cfg);
        free(m);
        return NULL;
    }
    m->layer_storage = calloc(cfg->layers, sizeof(*m->layer_storage));
    if (m->layer_storage && m->layout.total <= SIZE_MAX / sizeof(float))
        m->params = aligned_alloc(64, ((m->layout.total * sizeof(float)) + 63) & ~(size_t)63);
    if (!m->params) {
        snprintf(err, errlen, "model: cannot allocate %zu MiB of parameters",
                 m->layout.total * sizeof(float) >> 20);
        model_free(m);
        return NULL;
    }
    model_weights_bind(&m->cfg, &m->layout, m->params, &m->w, m->layer_storage);
    return m;
}

struct model *model_create_empty(const struct model_config *cfg, char *err, size_t errlen)
{
    struct model *m = model_alloc(cfg, err, errlen);
    if (m)
        memset(m->params, 0, m->layout.total * sizeof(float));
    return m;
}

struct model *model_create(const struct model_config *cfg, uint64_t seed, char *err, size_t errlen)
{
    struct model *m = model_alloc(cfg, err, errlen);
    if (m) {
        memset(m->params, 0, m->layout.total * sizeof(float));
        model_init_block(&m->layout, m->params, seed);
    }
    return m;
}

void model_free(struct model *m)
{
    if (!m)
        return;
    free(m->params);
    free(m->layer_storage);
    model_layout_release(&m->layout);
    model_config_release(&m->cfg);
    free(m);
}

const struct model_config *model_get_config(const struct model *m) { return &m->cfg; }

float *model_params(struct model *m, size_t *floats)
{
    *floats = m->layout.total;
    return m->params;
}
struct model_config *model_config_mut(struct model *m) { return &m->cfg; }

uint64_t model_parameter_count(const struct model *m)
{
    uint64_t n = 0;
    for (size_t i = 0; i < m->layout.count; i++)
        n += m->layout.tensors[i].numel;
    return n;
}

static const struct model_tensor *find_tensor(const struct model_layout *l, const char *name)
{
    for (size_t i = 0; i < l->count; i++)
        if (!strcmp(l->tensors[i].name, name))
            return &l->tensors[i];
    return NULL;
}

/* Rebuilds m for a changed config, copying every tensor whose name exists in both layouts (rows
 * that exist in both, for a changed row count); the rest comes from fill (seeded init). */
static bool model_reshape(struct model *m, const struct model_config *ncfg, uint64_t seed,
                          const char *const *reinit, size_t n_reinit, char *err, size_t errlen)
{
    struct model *n = model_alloc(ncfg, err, errlen);
    if (!n)
        return false;
    model_init_block(&n->layout, n->params, seed);
    for (size_t i = 0; i < n->layout.count; i++) {
        const struct model_tensor *dst = &n->layout.tensors[i];
        bool fresh = false;
        for (size_t k = 0; k < n_reinit; k++)
            fresh |= !strcmp(dst->name, reinit[k]);
        const struct model_tensor *src = fresh ? NULL : find_tensor(&m->layout, dst->name);
        if (!src || src->cols != dst->cols)
            continue;
        uint32_t rows = src->rows < dst->rows ? src->rows : dst->rows;
        memcpy(n->params + dst->offset, m->params + src->offset,
               (size_t)rows * dst->cols * sizeof(float));
    }
    /* swap the new contents into m so the caller's pointer stays valid */
    struct model old = *m;
    *m = *n;
    *n = old;
    model_free(n);
    return true;
}

bool model_set_labels(struct model *m, uint32_t num_labels, char **labels, uint64_t seed,
                      char *err, size_t errlen)
{
    struct model_config ncfg;
    if (!model_config_copy(&ncfg, &m->cfg)) {
        snprintf(err, errlen, "model: out of memory");
        return false;
    }
    for (uint32_t i = 0; i < ncfg.num_labels; i++)
        free(ncfg.labels[i]);
    free(ncfg.labels);
    ncfg.labels = calloc(num_labels ? num_labels : 1, sizeof(char *));
    ncfg.num_labels = num_labels;
    bool ok = ncfg.labels != NULL;
    for (uint32_t i = 0; ok && i < num_labels; i++) {
        char fallback[16];
        snprintf(fallback, sizeof(fallback), "%u", i);
        ncfg.labels[i] = strdup(labels && labels[i] ? labels[i] : fallback);
        ok = ncfg.labels[i] != NULL;
    }
    if (num_labels > 0)
        ncfg.task = MODEL_TASK_CLASSIFY;
    static const char *const head[] = {"cls_dense_w", "cls_dense_b", "cls_out_w", "cls_out_b"};
    if (!ok)
        snprintf(err, errlen, "model: out of memory");
    ok = ok && model_reshape(m, &ncfg, seed, head, 4, err, errlen);
    model_config_release(&ncfg);
    return ok;
}

bool model_resize_vocab(struct model *m, uint32_t vocab_size, bool init_all, uint64_t seed,
                        char *err, size_t errlen)
{
    struct model_config ncfg;
    if (!model_config_copy(&ncfg, &m->cfg)) {
        snprintf(err, errlen, "model: out of memory");
        return false;
    }
    ncfg.vocab_size = vocab_size;
    static const char *const vocab_tensors[] = {"wte", "lm_head"};
    bool ok = model_reshape(m, &ncfg, seed, vocab_tensors, init_all ? 2 : 0, err, errlen);
    model_config_release(&ncfg);
    return ok;
}
