/* grad.c — one forward pass that keeps what the backward pass needs, the losses (causal LM over
 * chosen target positions, classification NLL), and the backward pass into one gradient block
 * laid out as the parameters.
 *
 * Like inference, a batch is packed to its real tokens; each sequence starts at position 0 and
 * its keys and values sit in a per-layer cache, so attention forward and backward are sgemms per
 * (sequence, head). The LM head runs over chunks of target rows, so the [tokens, vocab] logits
 * never exist at once. Dropout masks are recomputed from their hash in the backward pass rather
 * than stored. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"
#include "train/train.h"

#define LM_CHUNK_ROWS 128u

/* Where dropout applies; each place of each layer draws its own stream. */
enum drop_place { DROP_EMBED = 0, DROP_ATTN_PROBS, DROP_ATTN_OUT, DROP_MLP_OUT };

struct layer_stash {
    float *x_in, *ln1, *qkv, *att, *x_mid, *ln2, *ffn_pre, *ffn_act, *kc, *vc;
};

struct train_runner {
    struct model *m;
    uint32_t max_batch, max_seq, threads;
    size_t max_tokens;
    float *grads;
    struct model_weights gw;
    struct model_layer_weights *glayers;
    float *block;
    struct layer_stash *stash;
    float *x_fin, *xn;
    float *dx, *dxn, *dqkv, *datt, *dffn, *dffn_act, *dkc, *dvc;
    float *rope_cos, *rope_sin, *scratch; /* scratch: [threads][2·seq·seq] */
    float *lm_logits, *lm_rows, *lm_drows; /* [chunk, V], [chunk, C] ×2 */
    float *pooled, *hidden1, *cls_logits, *dpooled, *dhidden1; /* classification head */
    uint32_t *tokens, *seq_offset, *seq_count, *lm_row, *lm_target;
    struct train_dropout drop;
    uint64_t *seq_key;       /* dropout stream of each row's sample in the current batch */
    float *branch, *dbranch; /* a residual branch before its masked add, and its gradient */
    /* The word-embedding rows whose gradient may be nonzero since train_zero_grads (one bit per
     * vocabulary id: the ids the batches held), or all of them once an LM head tied to the
     * embedding has added its dense gradient. */
    uint8_t *wte_rows;
    bool wte_dense;
};

static uint32_t qkv_width(const struct model_config *c) { return (c->heads + 2 * c->kv_heads) * c->head_dim; }
static uint32_t ffn_width(const struct model_config *c) { return c->arch == MODEL_ARCH_GPT2 ? c->ffn : 2 * c->ffn; }

void train_runner_free(struct train_runner *r)
{
    if (!r)
        return;
    free(r->grads);
    free(r->glayers);
    free(r->block);
    free(r->stash);
    free(r->tokens);
    free(r->seq_key);
    free(r->wte_rows);
    free(r);
}

struct train_runner *train_runner_create(struct model *m, uint32_t max_batch, uint32_t max_seq,
                                         uint32_t threads, char *err, size_t errlen)
{
    const struct model_config *c = &m->cfg;
    if (max_batch == 0 || max_seq == 0 || threads == 0) {
        snprintf(err, errlen, "train: batch, sequence length and threads must be at least 1");
        return NULL;
    }
    if (c->arch == MODEL_ARCH_GPT2 && max_seq > c->max_positions) {
        snprintf(err, errlen, "train: sequences of %u tokens but the model has %u positions", max_seq,
                 c->max_positions);
        return NULL;
    }
    struct train_runner *r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(err, errlen, "train: out of memory");
        return NULL;
    }
    r->m = m;
    r->max_batch = max_batch;
    r->max_seq = max_seq;
    r->threads = threads;
    r->max_tokens = (size_t)max_batch * max_seq;
    const size_t T = r->max_tokens, C = c->hidden, d = c->head_dim, L = c->layers;
    const size_t QKV = qkv_width(c), HD = (size_t)c->heads * d, FW = ffn_width(c), F = c->ffn;
    const size_t cache = (size_t)max_batch * c->kv_heads * max_seq * d;
    const size_t per_layer = T * (3 * C + QKV + HD + C + FW + F) + 2 * cache;
    const size_t rope = c->arch == MODEL_ARCH_QWEN2 ? (size_t)max_seq * (d / 2) : 0;
    const size_t V = c->vocab_size, NL = c->num_labels ? c->num_labels : 1;
    size_t total = L * per_layer + 2 * T * C                  /* stash, x_fin, xn */
                   + 2 * T * C + T * QKV + T * HD + T * FW + T * F + 2 * cache /* gradients */
                   + 2 * rope + (size_t)threads * 2 * max_seq * max_seq
                   + LM_CHUNK_ROWS * (V + 2 * C)
                   + (size_t)max_batch * (4 * C + NL) + 2 * T * C;
    r->grads = calloc(m->layout.total, sizeof(float));
    r->glayers = calloc(L, sizeof(*r->glayers));
    r->block = calloc(total, sizeof(float));
    r->stash = calloc(L, sizeof(*r->stash));
    r->tokens = malloc((4 * T + 2 * (size_t)max_batch) * sizeof(uint32_t));
    r->seq_key = calloc(max_batch, sizeof(uint64_t));
    r->wte_rows = calloc(V / 8 + 1, 1);
    if (!r->grads || !r->glayers || !r->block || !r->stash || !r->tokens || !r->seq_key || !r->wte_rows) {
        snprintf(err, errlen, "train: cannot allocate %zu MiB of activations and gradients",
                 (total + m->layout.total) * 4 >> 20);
        train_runner_free(r);
        return NULL;
    }
    model_weights_bind(c, &m->layout, r->grads, &r->gw, r->glayers);
    float *p = r->block;
#define TAKE(ptr, n) ((ptr) = p, p += (n))
    for (size_t l = 0; l < L; l++) {
        struct layer_stash *s = &r->stash[l];
        TAKE(s->x_in, T * C);
        TAKE(s->ln1, T * C);
        TAKE(s->qkv, T * QKV);
        TAKE(s->att, T * HD);
        TAKE(s->x_mid, T * C);
        TAKE(s->ln2, T * C);
        TAKE(s->ffn_pre, T * FW);
        TAKE(s->ffn_act, T * F);
        TAKE(s->kc, cache);
        TAKE(s->vc, cache);
    }
    TAKE(r->x_fin, T * C);
    TAKE(r->xn, T * C);
    TAKE(r->dx, T * C);
    TAKE(r->dxn, T * C);
    TAKE(r->dqkv, T * QKV);
    TAKE(r->datt, T * HD);
    TAKE(r->dffn, T * FW);
    TAKE(r->dffn_act, T * F);
    TAKE(r->dkc, cache);
    TAKE(r->dvc, cache);
    TAKE(r->rope_cos, rope);
    TAKE(r->rope_sin, rope);
    TAKE(r->scratch, (size_t)threads * 2 * max_seq * max_seq);
    TAKE(r->lm_logits, LM_CHUNK_ROWS * V);
    TAKE(r->lm_rows, LM_CHUNK_ROWS * C);
    TAKE(r->lm_drows, LM_CHUNK_ROWS * C);
    TAKE(r->pooled, (size_t)max_batch * C);
    TAKE(r->hidden1, (size_t)max_batch * C);
    TAKE(r->dpooled, (size_t)max_batch * C);
    TAKE(r->dhidden1, (size_t)max_batch * C);
    TAKE(r->cls_logits, (size_t)max_batch * NL);
    TAKE(r->branch, T * C);
    TAKE(r->dbranch, T * C);
#undef TAKE
    r->seq_offset = r->tokens + T;
    r->seq_count = r->seq_offset + max_batch;
    r->lm_row = r->seq_count + max_batch;
    r->lm_target = r->lm_row + T;
    if (rope)
        op_rope_tables(r->rope_cos, r->rope_sin, max_seq, (uint32_t)d, c->rope_theta);
    return r;
}

float *train_runner_grads(struct train_runner *r) { return r->grads; }
size_t train_runner_grad_count(const struct train_runner *r) { return r->m->layout.total; }
void train_zero_grads(struct train_runner *r)
{
    memset(r->grads, 0, r->m->layout.total * sizeof(float));
    memset(r->wte_rows, 0, r->m->cfg.vocab_size / 8 + 1);
    r->wte_dense = false;
}

const uint8_t *train_runner_embedding_rows(const struct train_runner *r, size_t *offset, uint32_t *vocab,
                                           uint32_t *width)
{
    *offset = (size_t)(r->gw.wte - r->grads);
    *vocab = r->m->cfg.vocab_size;
    *width = r->m->cfg.hidden;
    return r->wte_dense ? NULL : r->wte_rows;
}

void train_runner_set_dropout(struct train_runner *r, const struct train_dropout *d)
{
    r->drop = *d;
}

void train_dropout_from_config(struct train_dropout *d, const struct model_config *c, uint64_t seed)
{
    d->embed = c->dropout_embed;
    d->attn = c->dropout_attn;
    d->resid = c->dropout_resid;
    d->seed = seed;
}

/* The mask of one place of one layer (and head, for the attention probabilities) of row b. */
static struct op_dropout drop_stream(const struct train_runner *r, uint32_t b, uint32_t layer,
                                     enum drop_place place, uint32_t head, float p)
{
    struct op_dropout d;
    d.key = op_dropout_stream(op_dropout_stream(r->seq_key[b], (uint64_t)layer * 4 + place), head);
    const double t = (double)p * 4294967296.0;
    d.threshold = t >= 4294967295.0 ? UINT32_MAX : (uint32_t)t;
    d.scale = 1.0f / (1.0f - p);
    return d;
}

/* dst = (base +) mask ⊙ src over the batch's token rows, element (i, j) of row b being index
 * i·C + j of its stream. base may be NULL; dst may be src. */
static void drop_rows(const struct train_runner *r, float *dst, const float *base, const float *src,
                      uint32_t nseq, uint32_t layer, enum drop_place place, float p)
{
    const uint32_t C = r->m->cfg.hidden;
#pragma omp parallel for num_threads((int)r->threads) schedule(static)
    for (uint32_t b = 0; b < nseq; b++) {
        const struct op_dropout d = drop_stream(r, b, layer, place, 0, p);
        for (uint32_t i = 0; i < r->seq_count[b]; i++) {
            const size_t row = ((size_t)r->seq_offset[b] + i) * C;
            for (uint32_t j = 0; j < C; j++) {
                const float v = op_dropout_factor(&d, (uint64_t)i * C + j) * src[row + j];
                dst[row + j] = base ? base[row + j] + v : v;
            }
        }
    }
}

static float *cache_head(const struct train_runner *r, float *base, uint32_t b, uint32_t kvh)
{
    const struct model_config *c = &r->m->cfg;
    return base + (((size_t)b * c->kv_heads + kvh) * r->max_seq) * c->head_dim;
}

static void norm_fwd(const struct train_runner *r, float *y, const float *x, const float *w,
                     const float *b, size_t n)
{
    const struct model_config *c = &r->m->cfg;
    if (c->arch == MODEL_ARCH_GPT2)
        op_layernorm(y, x, w, b, n, c->hidden, c->norm_eps, c->norm, (int)r->threads);
    else
        op_rmsnorm(y, x, w, n, c->hidden, c->norm_eps, (int)r->threads);
}

static bool norm_bwd(const struct train_runner *r, float *dx, float *dw, float *db, const float *dy,
                     const float *x, const float *w, size_t n)
{
    const struct model_config *c = &r->m->cfg;
    if (c->arch == MODEL_ARCH_GPT2)
        return op_layernorm_backward(dx, dw, db, dy, x, w, n, c->hidden, c->norm_eps, c->norm,
                                     (int)r->threads);
    return op_rmsnorm_backward(dx, dw, dy, x, w, n, c->hidden, c->norm_eps, (int)r->threads);
}

static void forward(struct train_runner *r, uint32_t nseq, size_t N)
{
    const struct model *m = r->m;
    const struct model_config *c = &m->cfg;
    const struct model_weights *w = &m->w;
    const bool gpt2 = c->arch == MODEL_ARCH_GPT2;
    const uint32_t C = c->hidden, d = c->head_dim, H = c->heads, KV = c->kv_heads;
    const uint32_t QKV = qkv_width(c), FW = ffn_width(c), group = H / KV;
    const int threads = (int)r->threads;
    const float scale = 1.0f / sqrtf((float)d);
    float *x = r->stash[0].x_in;
    for (uint32_t b = 0; b < nseq; b++)
        for (uint32_t i = 0; i < r->seq_count[b]; i++) {
            size_t row = r->seq_offset[b] + i;
            const float *e = w->wte + (size_t)r->tokens[row] * C;
            for (uint32_t j = 0; j < C; j++)
                x[row * C + j] = e[j] + (gpt2 ? w->wpe[(size_t)i * C + j] : 0.0f);
        }
    const struct train_dropout *dr = &r->drop;
    if (dr->embed > 0)
        drop_rows(r, x, NULL, x, nseq, 0, DROP_EMBED, dr->embed);
    for (uint32_t l = 0; l < c->layers; l++) {
        const struct model_layer_weights *lw = &w->layers[l];
        struct layer_stash *s = &r->stash[l];
        norm_fwd(r, s->ln1, s->x_in, lw->ln1_w, lw->ln1_b, N);
        op_matmul(s->qkv, QKV, s->ln1, C, lw->qkv_w, lw->qkv_b, N, C, QKV, false, threads);
#pragma omp parallel for num_threads(threads) schedule(static)
        for (uint32_t b = 0; b < nseq; b++)
            for (uint32_t i = 0; i < r->seq_count[b]; i++) {
                float *q = s->qkv + (r->seq_offset[b] + i) * (size_t)QKV, *k = q + (size_t)H * d;
                float *v = k + (size_t)KV * d;
                if (!gpt2) {
                    op_rope_apply(q, H, d, i, r->rope_cos, r->rope_sin);
                    op_rope_apply(k, KV, d, i, r->rope_cos, r->rope_sin);
                }
                for (uint32_t h = 0; h < KV; h++) {
                    memcpy(cache_head(r, s->kc, b, h) + (size_t)i * d, k + (size_t)h * d, d * sizeof(float));
                    memcpy(cache_head(r, s->vc, b, h) + (size_t)i * d, v + (size_t)h * d, d * sizeof(float));
                }
            }
#pragma omp parallel num_threads(threads)
        {
            float *scratch = r->scratch + (size_t)omp_get_thread_num() * 2 * r->max_seq * r->max_seq;
#pragma omp for schedule(dynamic, 1) collapse(2)
            for (uint32_t b = 0; b < nseq; b++)
                for (uint32_t h = 0; h < H; h++) {
                    size_t row = r->seq_offset[b];
                    struct op_dropout pd = drop_stream(r, b, l, DROP_ATTN_PROBS, h, dr->attn);
                    op_attend_block(s->att + row * H * d + (size_t)h * d, (size_t)H * d,
                                    s->qkv + row * QKV + (size_t)h * d, QKV,
                                    cache_head(r, s->kc, b, h / group), cache_head(r, s->vc, b, h / group),
                                    0, r->seq_count[b], d, scale, scratch, dr->attn > 0 ? &pd : NULL);
                }
        }
        if (dr->resid > 0) {
            op_matmul(r->branch, C, s->att, (size_t)H * d, lw->o_w, lw->o_b, N, (size_t)H * d, C, false, threads);
            drop_rows(r, s->x_mid, s->x_in, r->branch, nseq, l, DROP_ATTN_OUT, dr->resid);
        } else {
            memcpy(s->x_mid, s->x_in, N * C * sizeof(float));
            op_matmul(s->x_mid, C, s->att, (size_t)H * d, lw->o_w, lw->o_b, N, (size_t)H * d, C, true, threads);
        }
        norm_fwd(r, s->ln2, s->x_mid, lw->ln2_w, lw->ln2_b, N);
        op_matmul(s->ffn_pre, FW, s->ln2, C, lw->up_w, lw->up_b, N, C, FW, false, threads);
        if (gpt2) {
            memcpy(s->ffn_act, s->ffn_pre, N * c->ffn * sizeof(float));
            op_gelu(s->ffn_act, N * c->ffn, c->act, threads);
        } else {
            for (size_t i = 0; i < N; i++)
                memcpy(s->ffn_act + i * c->ffn, s->ffn_pre + i * FW, c->ffn * sizeof(float));
            /* silu(gate)·up computed from the kept pre-activations */
#pragma omp parallel for num_threads(threads) schedule(static)
            for (size_t i = 0; i < N; i++) {
                const float *g = s->ffn_pre + i * FW, *u = g + c->ffn;
                float *h = s->ffn_act + i * c->ffn;
                for (uint32_t j = 0; j < c->ffn; j++)
                    h[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
            }
        }
        float *next = l + 1 < c->layers ? r->stash[l + 1].x_in : r->x_fin;
        if (dr->resid > 0) {
            op_matmul(r->branch, C, s->ffn_act, c->ffn, lw->down_w, lw->down_b, N, c->ffn, C, false, threads);
            drop_rows(r, next, s->x_mid, r->branch, nseq, l, DROP_MLP_OUT, dr->resid);
        } else {
            memcpy(next, s->x_mid, N * C * sizeof(float));
            op_matmul(next, C, s->ffn_act, c->ffn, lw->down_w, lw->down_b, N, c->ffn, C, true, threads);
        }
    }
    norm_fwd(r, r->xn, r->x_fin, w->lnf_w, w->lnf_b, N);
}

/* dxn → parameter gradients, through every layer and the embeddings. */
static bool backward(struct train_runner *r, uint32_t nseq, size_t N)
{
    const struct model *m = r->m;
    const struct model_config *c = &m->cfg;
    const struct model_weights *w = &m->w;
    struct model_weights *gw = &r->gw;
    const bool gpt2 = c->arch == MODEL_ARCH_GPT2;
    const uint32_t C = c->hidden, d = c->head_dim, H = c->heads, KV = c->kv_heads, F = c->ffn;
    const uint32_t QKV = qkv_width(c), FW = ffn_width(c), group = H / KV;
    const int threads = (int)r->threads;
    const float scale = 1.0f / sqrtf((float)d);
    memset(r->dx, 0, N * C * sizeof(float));
    if (!norm_bwd(r, r->dx, gw->lnf_w, gw->lnf_b, r->dxn, r->x_fin, w->lnf_w, N))
        return false;
    for (uint32_t l = c->layers; l-- > 0;) {
        const struct model_layer_weights *lw = &w->layers[l];
        struct model_layer_weights *gl = &gw->layers[l];
        struct layer_stash *s = &r->stash[l];
        /* MLP: dx holds d(x_out); x_out = x_mid + mask ⊙ down(act(up(ln2(x_mid)))) */
        const float *dy = r->dx;
        if (r->drop.resid > 0) {
            drop_rows(r, r->dbranch, NULL, r->dx, nseq, l, DROP_MLP_OUT, r->drop.resid);
            dy = r->dbranch;
        }
        op_matmul_backward(r->dffn_act, F, gl->down_w, gl->down_b, dy, C, s->ffn_act, F,
                           lw->down_w, N, F, C, false, threads);
        if (gpt2) {
            memcpy(r->dffn, r->dffn_act, N * F * sizeof(float));
            op_gelu_backward(r->dffn, s->ffn_pre, N * F, c->act, threads);
        } else {
            op_swiglu_backward(r->dffn, r->dffn_act, F, s->ffn_pre, N, F, threads);
        }
        op_matmul_backward(r->dxn, C, gl->up_w, gl->up_b, r->dffn, FW, s->ln2, C, lw->up_w, N, C, FW,
                           false, threads);
        if (!norm_bwd(r, r->dx, gl->ln2_w, gl->ln2_b, r->dxn, s->x_mid, lw->ln2_w, N))
            return false;
        /* attention: dx holds d(x_mid); x_mid = x_in + mask ⊙ o(attn(qkv(ln1(x_in)))) */
        dy = r->dx;
        if (r->drop.resid > 0) {
            drop_rows(r, r->dbranch, NULL, r->dx, nseq, l, DROP_ATTN_OUT, r->drop.resid);
            dy = r->dbranch;
        }
        op_matmul_backward(r->datt, (size_t)H * d, gl->o_w, gl->o_b, dy, C, s->att, (size_t)H * d,
                           lw->o_w, N, (size_t)H * d, C, false, threads);
        memset(r->dkc, 0, (size_t)r->max_batch * KV * r->max_seq * d * sizeof(float));
        memset(r->dvc, 0, (size_t)r->max_batch * KV * r->max_seq * d * sizeof(float));
#pragma omp parallel num_threads(threads)
        {
            float *scratch = r->scratch + (size_t)omp_get_thread_num() * 2 * r->max_seq * r->max_seq;
            /* one task per (sequence, kv head): the heads of a group add into the same dK, dV */
#pragma omp for schedule(dynamic, 1) collapse(2)
            for (uint32_t b = 0; b < nseq; b++)
                for (uint32_t kvh = 0; kvh < KV; kvh++) {
                    size_t row = r->seq_offset[b];
                    for (uint32_t h = kvh * group; h < (kvh + 1) * group; h++) {
                        struct op_dropout pd = drop_stream(r, b, l, DROP_ATTN_PROBS, h, r->drop.attn);
                        op_attend_block_backward(r->dqkv + row * QKV + (size_t)h * d, QKV,
                                                 cache_head(r, r->dkc, b, kvh), cache_head(r, r->dvc, b, kvh),
                                                 r->datt + row * H * d + (size_t)h * d, (size_t)H * d,
                                                 s->qkv + row * QKV + (size_t)h * d, QKV,
                                                 cache_head(r, s->kc, b, kvh), cache_head(r, s->vc, b, kvh),
                                                 r->seq_count[b], d, scale, scratch,
                                                 r->drop.attn > 0 ? &pd : NULL);
                    }
                }
        }
#pragma omp parallel for num_threads(threads) schedule(static)
        for (uint32_t b = 0; b < nseq; b++)
            for (uint32_t i = 0; i < r->seq_count[b]; i++) {
                float *dq = r->dqkv + (r->seq_offset[b] + i) * (size_t)QKV, *dk = dq + (size_t)H * d;
                float *dv = dk + (size_t)KV * d;
                for (uint32_t h = 0; h < KV; h++) {
                    memcpy(dk + (size_t)h * d, cache_head(r, r->dkc, b, h) + (size_t)i * d, d * sizeof(float));
                    memcpy(dv + (size_t)h * d, cache_head(r, r->dvc, b, h) + (size_t)i * d, d * sizeof(float));
                }
                if (!gpt2) {
                    op_rope_backward(dq, H, d, i, r->rope_cos, r->rope_sin);
                    op_rope_backward(dk, KV, d, i, r->rope_cos, r->rope_sin);
                }
            }
        op_matmul_backward(r->dxn, C, gl->qkv_w, gl->qkv_b, r->dqkv, QKV, s->ln1, C, lw->qkv_w, N, C,
                           QKV, false, threads);
        if (gpt2) {
            /* A key bias adds q·b to a whole row of scores, which softmax ignores: its gradient is
             * exactly zero. Computed, it is rounding noise that AdamW (noise / (√v + eps))
             * would turn into a random walk of up to lr per step, so it is kept at zero. */
            for (uint32_t j = 0; j < KV * d; j++)
                gl->qkv_b[(size_t)H * d + j] = 0.0f;
        }
        if (!norm_bwd(r, r->dx, gl->ln1_w, gl->ln1_b, r->dxn, s->x_in, lw->ln1_w, N))
            return false;
    }
    /* embeddings: rows in a fixed order, so the sums do not depend on threads */
    if (r->drop.embed > 0)
        drop_rows(r, r->dx, NULL, r->dx, nseq, 0, DROP_EMBED, r->drop.embed);
    for (uint32_t b = 0; b < nseq; b++)
        for (uint32_t i = 0; i < r->seq_count[b]; i++) {
            size_t row = r->seq_offset[b] + i;
            const uint32_t id = r->tokens[row];
            r->wte_rows[id >> 3] |= (uint8_t)(1u << (id & 7));
            float *g = gw->wte + (size_t)id * C, *gp = gpt2 ? gw->wpe + (size_t)i * C : NULL;
            for (uint32_t j = 0; j < C; j++) {
                g[j] += r->dx[row * C + j];
                if (gp)
                    gp[j] += r->dx[row * C + j];
            }
        }
    return true;
}

/* Causal-LM loss over the chosen targets, its gradient into dxn and the LM head. */
static double lm_loss(struct train_runner *r, size_t n_targets)
{
    const struct model *m = r->m;
    const struct model_config *c = &m->cfg;
    const uint32_t C = c->hidden, V = c->vocab_size;
    const float *head = m->w.lm_head ? m->w.lm_head : m->w.wte;
    float *dhead = m->w.lm_head ? r->gw.lm_head : r->gw.wte;
    r->wte_dense |= !m->w.lm_head; /* the head's gradient reaches every row */
    const int threads = (int)r->threads;
    const float inv = 1.0f / (float)n_targets;
    double loss = 0.0;
    for (size_t start = 0; start < n_targets; start += LM_CHUNK_ROWS) {
        const size_t n = n_targets - start < LM_CHUNK_ROWS ? n_targets - start : LM_CHUNK_ROWS;
        for (size_t i = 0; i < n; i++)
            memcpy(r->lm_rows + i * C, r->xn + (size_t)r->lm_row[start + i] * C, C * sizeof(float));
        op_matmul(r->lm_logits, V, r->lm_rows, C, head, NULL, n, C, V, false, threads);
        double chunk_loss = 0.0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : chunk_loss)
        for (size_t i = 0; i < n; i++)
            chunk_loss += op_softmax_xent(r->lm_logits + i * V, V, r->lm_target[start + i], inv);
        loss += chunk_loss;
        op_matmul_backward(r->lm_drows, C, dhead, NULL, r->lm_logits, V, r->lm_rows, C, head, n, C,
                           V, false, threads);
        for (size_t i = 0; i < n; i++) {
            float *dst = r->dxn + (size_t)r->lm_row[start + i] * C;
            for (uint32_t j = 0; j < C; j++)
                dst[j] += r->lm_drows[i * C + j];
        }
    }
    return loss / (double)n_targets;
}

/* Pooling → Linear → tanh → Linear → log-softmax, NLL averaged over the batch. */
static double classify_loss(struct train_runner *r, uint32_t nseq, const uint32_t *labels)
{
    const struct model *m = r->m;
    const struct model_config *c = &m->cfg;
    const uint32_t C = c->hidden, NL = c->num_labels;
    const int threads = (int)r->threads;
    for (uint32_t b = 0; b < nseq; b++) {
        const float *rows = r->xn + (size_t)r->seq_offset[b] * C;
        const uint32_t n = r->seq_count[b];
        float *out = r->pooled + (size_t)b * C;
        for (uint32_t j = 0; j < C; j++) {
            double acc = c->pooling == MODEL_POOL_MAX ? -INFINITY : 0.0;
            for (uint32_t i = 0; i < n; i++) {
                float v = rows[(size_t)i * C + j];
                if (c->pooling == MODEL_POOL_MAX)
                    acc = v > acc ? v : acc;
                else if (c->pooling == MODEL_POOL_MEAN)
                    acc += v;
            }
            out[j] = c->pooling == MODEL_POOL_MEAN   ? (float)(acc / n)
                     : c->pooling == MODEL_POOL_MAX  ? (float)acc
                     : c->pooling == MODEL_POOL_FIRST ? rows[j]
                                                      : rows[(size_t)(n - 1) * C + j];
        }
    }
    op_matmul(r->hidden1, C, r->pooled, C, m->w.cls_dense_w, m->w.cls_dense_b, nseq, C, C, false, threads);
    for (size_t i = 0; i < (size_t)nseq * C; i++)
        r->hidden1[i] = tanhf(r->hidden1[i]);
    op_matmul(r->cls_logits, NL, r->hidden1, C, m->w.cls_out_w, m->w.cls_out_b, nseq, C, NL, false, threads);
    double loss = 0.0;
    const float inv = 1.0f / (float)nseq;
    for (uint32_t b = 0; b < nseq; b++)
        loss += op_softmax_xent(r->cls_logits + (size_t)b * NL, NL, labels[b], inv);
    op_matmul_backward(r->dhidden1, C, r->gw.cls_out_w, r->gw.cls_out_b, r->cls_logits, NL,
                       r->hidden1, C, m->w.cls_out_w, nseq, C, NL, false, threads);
    for (size_t i = 0; i < (size_t)nseq * C; i++)
        r->dhidden1[i] *= 1.0f - r->hidden1[i] * r->hidden1[i];
    op_matmul_backward(r->dpooled, C, r->gw.cls_dense_w, r->gw.cls_dense_b, r->dhidden1, C,
                       r->pooled, C, m->w.cls_dense_w, nseq, C, C, false, threads);
    for (uint32_t b = 0; b < nseq; b++) {
        const uint32_t n = r->seq_count[b];
        const float *rows = r->xn + (size_t)r->seq_offset[b] * C, *dp = r->dpooled + (size_t)b * C;
        float *drows = r->dxn + (size_t)r->seq_offset[b] * C;
        for (uint32_t j = 0; j < C; j++) {
            switch (c->pooling) {
            case MODEL_POOL_FIRST:
                drows[j] += dp[j];
                break;
            case MODEL_POOL_LAST:
                drows[(size_t)(n - 1) * C + j] += dp[j];
                break;
            case MODEL_POOL_MAX: {
                uint32_t best = 0; /* the first maximum takes the gradient, as torch's max */
                for (uint32_t i = 1; i < n; i++)
                    if (rows[(size_t)i * C + j] > rows[(size_t)best * C + j])
                        best = i;
                drows[(size_t)best * C + j] += dp[j];
                break;
            }
            default:
                for (uint32_t i = 0; i < n; i++)
                    drows[(size_t)i * C + j] += dp[j] / (float)n;
            }
        }
    }
    return loss / nseq;
}

bool train_forward_backward(struct train_runner *r, enum train_objective objective,
                            const struct train_batch *batch, double *loss)
{
    const struct model_config *c = &r->m->cfg;
    const uint32_t B = batch->batch, T = batch->seq;
    if (B == 0 || B > r->max_batch || T == 0 || T > r->max_seq)
        return false;
    if (objective == TRAIN_CLASSIFY && (!r->m->w.cls_dense_w || !batch->labels))
        return false;
    size_t N = 0, n_targets = 0;
    for (uint32_t b = 0; b < B; b++) {
        const uint32_t len = batch->lengths[b];
        if (len == 0 || len > T)
            return false;
        if (objective == TRAIN_CLASSIFY && batch->labels[b] >= c->num_labels)
            return false;
        r->seq_offset[b] = (uint32_t)N;
        r->seq_count[b] = len;
        r->seq_key[b] = op_dropout_stream(r->drop.seed, batch->sample_base + b);
        for (uint32_t i = 0; i < len; i++) {
            const uint32_t id = batch->ids[(size_t)b * T + i];
            if (id >= c->vocab_size)
                return false;
            r->tokens[N + i] = id;
        }
        if (objective == TRAIN_LM) {
            /* position i predicts id i + 1; targets from target_start[b] (1 = every next id) */
            uint32_t first = batch->target_start ? batch->target_start[b] : 1;
            for (uint32_t t = first ? first : 1; t < len; t++) {
                r->lm_row[n_targets] = (uint32_t)(N + t - 1);
                r->lm_target[n_targets++] = batch->ids[(size_t)b * T + t];
            }
        }
        N += len;
    }
    if (objective == TRAIN_LM && n_targets == 0)
        return false;
    openblas_set_num_threads(1);
    forward(r, B, N);
    memset(r->dxn, 0, N * c->hidden * sizeof(float));
    *loss = objective == TRAIN_LM ? lm_loss(r, n_targets) : classify_loss(r, B, batch->labels);
    return backward(r, B, N);
}
