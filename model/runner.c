/* runner.c — running the model: one activation block sized once per (batch, seq), the
 * transformer stack over packed real tokens, the LM head, pooling and the classifier.
 *
 * Right-padded batches are packed to their real tokens before the stack runs: projections see
 * only real rows and attention reads a per-sequence cache, so padding costs nothing and cannot
 * leak into a real position. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"

static uint32_t qkv_width(const struct model_config *c) { return (c->heads + 2 * c->kv_heads) * c->head_dim; }
static uint32_t ffn_width(const struct model_config *c) { return c->arch == MODEL_ARCH_GPT2 ? c->ffn : 2 * c->ffn; }

struct model_runner *model_runner_create(const struct model *m, uint32_t max_batch,
                                         uint32_t max_seq, uint32_t kv_tokens, uint32_t threads,
                                         char *err, size_t errlen)
{
    const struct model_config *c = &m->cfg;
    if (max_batch == 0 || max_seq == 0 || threads == 0) {
        snprintf(err, errlen, "model: batch, sequence length and threads must be at least 1");
        return NULL;
    }
    uint32_t cap = kv_tokens > max_seq ? kv_tokens : max_seq;
    if (c->arch == MODEL_ARCH_GPT2 && cap > c->max_positions) {
        snprintf(err, errlen, "model: %u positions asked but the model has %u (n_positions)", cap,
                 c->max_positions);
        return NULL;
    }
    struct model_runner *r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(err, errlen, "model: out of memory");
        return NULL;
    }
    r->m = m;
    r->max_batch = max_batch;
    r->max_seq = max_seq;
    r->kv_tokens = kv_tokens;
    r->threads = threads;
    r->kv_capacity = cap;
    r->cache_all_layers = kv_tokens > 0;
    r->max_tokens = (size_t)max_batch * max_seq;

    const size_t T = r->max_tokens, C = c->hidden, d = c->head_dim;
    const size_t cache = (r->cache_all_layers ? c->layers : 1) * (size_t)max_batch * c->kv_heads * cap * d;
    const size_t rope = c->arch == MODEL_ARCH_QWEN2 ? (size_t)cap * (d / 2) : 0;
    const size_t sizes[] = {
        T * C, T * C, T * qkv_width(c), T * c->heads * d, T * ffn_width(c), /* x xn qkv att ffn */
        cache, cache, rope, rope, (size_t)threads * max_seq * cap,
        kv_tokens > 0 ? (size_t)max_batch * c->vocab_size : 0, (size_t)max_batch * C,
        (size_t)max_batch * C,
    };
    float **slots[] = {&r->x, &r->xn, &r->qkv, &r->att, &r->ffn, &r->kcache, &r->vcache,
                       &r->rope_cos, &r->rope_sin, &r->scratch, &r->last_logits, &r->pooled,
                       &r->head_tmp};
    size_t total = 0;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        total += (sizes[i] + 15) & ~(size_t)15;
    r->block_floats = total;
    r->block = aligned_alloc(64, total * sizeof(float));
    r->tokens = malloc(T * sizeof(uint32_t));
    r->seq_start = malloc(4 * (size_t)max_batch * sizeof(uint32_t));
    if (!r->block || !r->tokens || !r->seq_start) {
        snprintf(err, errlen, "model: cannot allocate %zu MiB of activations", total * 4 >> 20);
        model_runner_free(r);
        return NULL;
    }
    r->seq_count = r->seq_start + max_batch;
    r->seq_offset = r->seq_count + max_batch;
    r->seq_slot = r->seq_offset + max_batch;
    float *p = r->block;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        *slots[i] = sizes[i] ? p : NULL;
        p += (sizes[i] + 15) & ~(size_t)15;
    }
    if (rope)
        op_rope_tables(r->rope_cos, r->rope_sin, cap, (uint32_t)d, c->rope_theta);
    return r;
}

void model_runner_free(struct model_runner *r)
{
    if (!r)
        return;
    free(r->block);
    free(r->tokens);
    free(r->seq_start);
    free(r);
}

size_t model_runner_bytes(const struct model_runner *r)
{
    return r->block_floats * sizeof(float) + r->max_tokens * sizeof(uint32_t) +
           4 * (size_t)r->max_batch * sizeof(uint32_t);
}

static void norm_rows(const struct model_runner *r, float *y, const float *x, const float *w,
                      const float *b, size_t n)
{
    const struct model_config *c = &r->m->cfg;
    if (c->arch == MODEL_ARCH_GPT2)
        op_layernorm(y, x, w, b, n, c->hidden, c->norm_eps, c->norm, (int)r->threads);
    else
        op_rmsnorm(y, x, w, n, c->hidden, c->norm_eps, (int)r->threads);
}

static float *cache_at(const struct model_runner *r, float *base, uint32_t layer, uint32_t slot,
                       uint32_t kv_head)
{
    const struct model_config *c = &r->m->cfg;
    size_t per_head = (size_t)r->kv_capacity * c->head_dim;
    size_t per_slot = per_head * c->kv_heads;
    size_t per_layer = per_slot * r->max_batch;
    return base + (r->cache_all_layers ? layer * per_layer : 0) + slot * per_slot + kv_head * per_head;
}

void model_run_stack(struct model_runner *r, uint32_t nseq)
{
    const struct model *m = r->m;
    const struct model_config *c = &m->cfg;
    const struct model_weights *w = &m->w;
    const bool gpt2 = c->arch == MODEL_ARCH_GPT2;
    const uint32_t C = c->hidden, d = c->head_dim, H = c->heads, KV = c->kv_heads;
    const uint32_t QKV = qkv_width(c), FW = ffn_width(c), group = H / KV;
    const float scale = 1.0f / sqrtf((float)d);
    const size_t N = (size_t)r->seq_offset[nseq - 1] + r->seq_count[nseq - 1];
    const int threads = (int)r->threads;

    /* row → (sequence, position), so the per-row loops need no search */
    for (uint32_t b = 0; b < nseq; b++) {
        for (uint32_t i = 0; i < r->seq_count[b]; i++) {
            size_t row = r->seq_offset[b] + i;
            uint32_t pos = r->seq_start[b] + i;
            const float *e = w->wte + (size_t)r->tokens[row] * C;
            float *x = r->x + row * C;
            if (gpt2) {
                const float *pe = w->wpe + (size_t)pos * C;
                for (uint32_t j = 0; j < C; j++)
                    x[j] = e[j] + pe[j];
            } else {
                memcpy(x, e, C * sizeof(float));
            }
        }
    }

    for (uint32_t l = 0; l < c->layers; l++) {
        const struct model_layer_weights *lw = &w->layers[l];
        norm_rows(r, r->xn, r->x, lw->ln1_w, lw->ln1_b, N);
        op_matmul(r->qkv, QKV, r->xn, C, lw->qkv_w, lw->qkv_b, N, C, QKV, false, threads);

        /* rotate q and k (Qwen2), then store k and v at their positions in the cache */
#pragma omp parallel for num_threads(threads) schedule(static)
        for (uint32_t b = 0; b < nseq; b++) {
            for (uint32_t i = 0; i < r->seq_count[b]; i++) {
                size_t row = r->seq_offset[b] + i;
                uint32_t pos = r->seq_start[b] + i;
                float *q = r->qkv + row * QKV, *k = q + (size_t)H * d, *v = k + (size_t)KV * d;
                if (!gpt2) {
                    op_rope_apply(q, H, d, pos, r->rope_cos, r->rope_sin);
                    op_rope_apply(k, KV, d, pos, r->rope_cos, r->rope_sin);
                }
                for (uint32_t h = 0; h < KV; h++) {
                    memcpy(cache_at(r, r->kcache, l, r->seq_slot[b], h) + (size_t)pos * d,
                           k + (size_t)h * d, d * sizeof(float));
                    memcpy(cache_at(r, r->vcache, l, r->seq_slot[b], h) + (size_t)pos * d,
                           v + (size_t)h * d, d * sizeof(float));
                }
            }
        }

        /* causal attention: the token at position p sees cache positions 0..p */
#pragma omp parallel num_threads(threads)
        {
            float *scratch = r->scratch + (size_t)omp_get_thread_num() * r->max_seq * r->kv_capacity;
#pragma omp for schedule(dynamic, 4) collapse(2)
            for (uint32_t b = 0; b < nseq; b++) {
                for (uint32_t h = 0; h < H; h++) {
                    const float *kc = cache_at(r, r->kcache, l, r->seq_slot[b], h / group);
                    const float *vc = cache_at(r, r->vcache, l, r->seq_slot[b], h / group);
                    const size_t row = r->seq_offset[b];
                    const uint32_t n = r->seq_count[b];
                    if (n >= 4) {
                        op_attend_block(r->att + row * H * d + (size_t)h * d, (size_t)H * d,
                                        r->qkv + row * QKV + (size_t)h * d, QKV, kc, vc,
                                        r->seq_start[b], n, d, scale, scratch, NULL);
                        continue;
                    }
                    for (uint32_t i = 0; i < n; i++)
                        op_attend(r->att + (row + i) * H * d + (size_t)h * d,
                                  r->qkv + (row + i) * QKV + (size_t)h * d, kc, vc,
                                  r->seq_start[b] + i + 1, d, scale, scratch);
                }
            }
        }
        op_matmul(r->x, C, r->att, (size_t)H * d, lw->o_w, lw->o_b, N, (size_t)H * d, C, true, threads);

        norm_rows(r, r->xn, r->x, lw->ln2_w, lw->ln2_b, N);
        op_matmul(r->ffn, FW, r->xn, C, lw->up_w, lw->up_b, N, C, FW, false, threads);
        if (gpt2)
            op_gelu(r->ffn, N * c->ffn, c->act, threads);
        else
            op_swiglu(r->ffn, N, c->ffn, threads);
        op_matmul(r->x, C, r->ffn, FW, lw->down_w, lw->down_b, N, c->ffn, C, true, threads);
    }
    norm_rows(r, r->xn, r->x, w->lnf_w, w->lnf_b, N);
}

void model_lm_head_rows(struct model_runner *r, const uint32_t *rows, uint32_t n, float *out)
{
    const struct model_config *c = &r->m->cfg;
    const float *head = r->m->w.lm_head ? r->m->w.lm_head : r->m->w.wte;
    /* gather the rows so the head is one sgemm */
    for (uint32_t i = 0; i < n; i++)
        memcpy(r->head_tmp + (size_t)i * c->hidden, r->xn + (size_t)rows[i] * c->hidden,
               c->hidden * sizeof(float));
    op_matmul(out, c->vocab_size, r->head_tmp, c->hidden, head, NULL, n, c->hidden,
              c->vocab_size, false, (int)r->threads);
}

bool model_pack_batch(struct model_runner *r, const uint32_t *ids, const uint32_t *lengths,
                       uint32_t batch, uint32_t seq)
{
    const struct model_config *c = &r->m->cfg;
    if (batch == 0 || batch > r->max_batch || seq == 0 || seq > r->max_seq)
        return false;
    uint32_t offset = 0;
    for (uint32_t b = 0; b < batch; b++) {
        if (lengths[b] == 0 || lengths[b] > seq)
            return false;
        for (uint32_t i = 0; i < lengths[b]; i++) {
            uint32_t id = ids[(size_t)b * seq + i];
            if (id >= c->vocab_size)
                return false;
            r->tokens[offset + i] = id;
        }
        r->seq_start[b] = 0;
        r->seq_count[b] = lengths[b];
        r->seq_offset[b] = offset;
        r->seq_slot[b] = b;
        offset += lengths[b];
    }
    openblas_set_num_threads(1);
    return true;
}

bool model_forward(struct model_runner *r, const uint32_t *ids, const uint32_t *lengths,
                   uint32_t batch, uint32_t seq, float *hidden, float *logits)
{
    if (!model_pack_batch(r, ids, lengths, batch, seq))
        return false;
    model_run_stack(r, batch);
    const struct model_config *c = &r->m->cfg;
    const float *head = r->m->w.lm_head ? r->m->w.lm_head : r->m->w.wte;
    for (uint32_t b = 0; b < batch; b++) {
        const float *xn = r->xn + (size_t)r->seq_offset[b] * c->hidden;
        if (hidden)
            memcpy(hidden + (size_t)b * seq * c->hidden, xn,
                   (size_t)lengths[b] * c->hidden * sizeof(float));
    }
    /* the LM head: one sgemm per run of rows that are contiguous in the output too (full rows
     * follow each other without padding between them) */
    for (uint32_t b = 0; logits && b < batch;) {
        uint32_t e = b + 1;
        while (e < batch && lengths[e - 1] == seq)
            e++;
        size_t rows = (size_t)r->seq_offset[e - 1] + lengths[e - 1] - r->seq_offset[b];
        op_matmul(logits + (size_t)b * seq * c->vocab_size, c->vocab_size,
                  r->xn + (size_t)r->seq_offset[b] * c->hidden, c->hidden, head, NULL, rows,
                  c->hidden, c->vocab_size, false, (int)r->threads);
        b = e;
    }
    return true;
}

static void pool_rows(const struct model_runner *r, uint32_t b, float *out)
{
    const struct model_config *c = &r->m->cfg;
    const uint32_t C = c->hidden, n = r->seq_count[b];
    const float *rows = r->xn + (size_t)r->seq_offset[b] * C;
    switch (c->pooling) {
    case MODEL_POOL_FIRST:
        memcpy(out, rows, C * sizeof(float));
        break;
    case MODEL_POOL_LAST:
        memcpy(out, rows + (size_t)(n - 1) * C, C * sizeof(float));
        break;
    case MODEL_POOL_MAX:
        memcpy(out, rows, C * sizeof(float));
        for (uint32_t i = 1; i < n; i++)
            for (uint32_t j = 0; j < C; j++)
                out[j] = rows[(size_t)i * C + j] > out[j] ? rows[(size_t)i * C + j] : out[j];
        break;
    case MODEL_POOL_MEAN:
    default:
        for (uint32_t j = 0; j < C; j++) {
            double s = 0.0;
            for (uint32_t i = 0; i < n; i++)
                s += rows[(size_t)i * C + j];
            out[j] = (float)(s / n);
        }
        break;
    }
}

uint32_t model_top_labels(const float *scores, uint32_t n, uint32_t k, uint32_t *best)
{
    if (k > n)
        k = n;
    for (uint32_t i = 0; i < k; i++) {
        uint32_t pick = UINT32_MAX;
        for (uint32_t j = 0; j < n; j++) {
            bool taken = false;
            for (uint32_t t = 0; t < i; t++)
                taken |= best[t] == j;
            if (!taken && (pick == UINT32_MAX || scores[j] > scores[pick]))
                pick = j;
        }
        best[i] = pick;
    }
    return k;
}

bool model_classify(struct model_runner *r, const uint32_t *ids, const uint32_t *lengths,
                    uint32_t batch, uint32_t seq, float *pooled, float *scores)
{
    const struct model *m = r->m;
    const struct model_config *c = &m->cfg;
    if (c->num_labels == 0 || !m->w.cls_dense_w || !model_pack_batch(r, ids, lengths, batch, seq))
        return false;
    model_run_stack(r, batch);
    for (uint32_t b = 0; b < batch; b++)
        pool_rows(r, b, r->pooled + (size_t)b * c->hidden);
    if (pooled)
        memcpy(pooled, r->pooled, (size_t)batch * c->hidden * sizeof(float));
    op_matmul(r->head_tmp, c->hidden, r->pooled, c->hidden, m->w.cls_dense_w, m->w.cls_dense_b,
              batch, c->hidden, c->hidden, false, (int)r->threads);
    for (size_t i = 0; i < (size_t)batch * c->hidden; i++)
        r->head_tmp[i] = tanhf(r->head_tmp[i]);
    op_matmul(scores, c->num_labels, r->head_tmp, c->hidden, m->w.cls_out_w, m->w.cls_out_b, batch,
              c->hidden, c->num_labels, false, (int)r->threads);
    for (uint32_t b = 0; b < batch; b++)
        op_softmax(scores + (size_t)b * c->num_labels, c->num_labels);
    return true;
}
