/* generate.c — continuing prompts with the LM head and the KV cache: one prefill of every
 * prompt, then one decode step per new token for the rows still running; greedy or sampled
 * (temperature, top-k, top-p) from a per-row seeded stream, so a row's output does not depend on
 * the rest of its batch. The token choice (model_sample, model_sample_rng) is shared with the
 * CUDA engine's model_cuda_generate, so both backends pick from their logits with one code. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"

static int by_logit_desc(const void *a, const void *b)
{
    const struct model_candidate *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit > y->logit ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static uint32_t argmax(const float *logits, uint32_t n)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}

/* a ranks below b: a smaller logit, or the same logit and a larger id */
static bool ranks_below(const struct model_candidate *a, const struct model_candidate *b)
{
    return by_logit_desc(a, b) > 0;
}

static void sift_down(struct model_candidate *heap, uint32_t size, uint32_t j)
{
    for (;;) {
        uint32_t l = 2 * j + 1, r = l + 1, m = j;
        if (l < size && ranks_below(&heap[l], &heap[m]))
            m = l;
        if (r < size && ranks_below(&heap[r], &heap[m]))
            m = r;
        if (m == j)
            return;
        struct model_candidate t = heap[j];
        heap[j] = heap[m];
        heap[m] = t;
        j = m;
    }
}

/* Keeps the k best-ranked logits in heap[0..k), a heap with the lowest-ranked at the root:
 * O(n log k) instead of sorting the whole vocabulary. */
static uint32_t top_k_select(const float *logits, uint32_t n, uint32_t k, struct model_candidate *heap)
{
    uint32_t size = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct model_candidate c = {logits[i], i};
        if (size < k) {
            uint32_t j = size++;
            while (j > 0 && ranks_below(&c, &heap[(j - 1) / 2])) {
                heap[j] = heap[(j - 1) / 2];
                j = (j - 1) / 2;
            }
            heap[j] = c;
        } else if (ranks_below(&heap[0], &c)) {
            heap[0] = c;
            sift_down(heap, size, 0);
        }
    }
    return size;
}

void model_sample_rng(struct model_rng *rng, const struct model_sampling *s, uint32_t row)
{
    model_rng_seed(rng, s->seed ^ (0x9e3779b97f4a7c15ull * (row + 1)));
}

uint32_t model_sample(const float *logits, uint32_t n, const struct model_sampling *s,
                      struct model_rng *rng, struct model_candidate *cand)
{
    if (s->temperature <= 0.0f)
        return argmax(logits, n);
    uint32_t count;
    if (s->top_k > 0 && s->top_k < n) {
        count = top_k_select(logits, n, s->top_k, cand);
    } else {
        for (uint32_t i = 0; i < n; i++)
            cand[i] = (struct model_candidate){logits[i], i};
        count = n;
    }
    if (count < n || s->top_p < 1.0f)
        qsort(cand, count, sizeof(*cand), by_logit_desc);
    /* softmax over the candidates at the temperature, in double for long tails */
    double mx = -INFINITY, sum = 0.0;
    for (uint32_t i = 0; i < count; i++)
        mx = cand[i].logit > mx ? cand[i].logit : mx;
    for (uint32_t i = 0; i < count; i++) {
        double p = exp((cand[i].logit - mx) / s->temperature);
        cand[i].logit = (float)p;
        sum += p;
    }
    if (s->top_p > 0.0f && s->top_p < 1.0f) {
        /* the smallest prefix (by descending probability) whose mass reaches top_p */
        double acc = 0.0;
        uint32_t keep = 0;
        while (keep < count) {
            acc += cand[keep++].logit / sum;
            if (acc >= s->top_p)
                break;
        }
        count = keep;
        sum = 0.0;
        for (uint32_t i = 0; i < count; i++)
            sum += cand[i].logit;
    }
    double u = model_rng_uniform(rng) * sum, acc = 0.0;
    for (uint32_t i = 0; i < count; i++) {
        acc += cand[i].logit;
        if (u < acc)
            return cand[i].id;
    }
    return cand[count - 1].id;
}

bool model_generate(struct model_runner *r, const uint32_t *ids, const uint32_t *lengths,
                    uint32_t batch, uint32_t seq, const struct model_sampling *sampling,
                    uint32_t max_new, uint32_t *out, uint32_t *out_len)
{
    const struct model_config *c = &r->m->cfg;
    const struct model_sampling greedy = {0};
    const struct model_sampling *s = sampling ? sampling : &greedy;
    if (max_new == 0 || !r->cache_all_layers || (uint64_t)seq + max_new > r->kv_capacity)
        return false;
    if (c->arch == MODEL_ARCH_GPT2 && (uint64_t)seq + max_new > c->max_positions)
        return false;
    if (!model_pack_batch(r, ids, lengths, batch, seq))
        return false;
    struct model_rng *rngs = malloc(batch * sizeof(*rngs));
    uint32_t *pos = malloc(batch * sizeof(uint32_t)), *active = malloc(batch * sizeof(uint32_t));
    uint32_t *rows = malloc(batch * sizeof(uint32_t));
    struct model_candidate *cand = s->temperature > 0.0f ? malloc(c->vocab_size * sizeof(*cand)) : NULL;
    bool ok = rngs && pos && active && rows && (s->temperature <= 0.0f || cand);
    if (ok) {
        memset(out, 0, (size_t)batch * max_new * sizeof(uint32_t));
        for (uint32_t b = 0; b < batch; b++) {
            model_sample_rng(&rngs[b], s, b);
            pos[b] = lengths[b];
            out_len[b] = 0;
            rows[b] = r->seq_offset[b] + r->seq_count[b] - 1;
        }
        model_run_stack(r, batch);
        model_lm_head_rows(r, rows, batch, r->last_logits);
        uint32_t nactive = batch;
        for (uint32_t b = 0; b < batch; b++)
            active[b] = b;
        for (uint32_t step = 0; nactive > 0; step++) {
            /* pick each running row's next token from its logits row */
            uint32_t still = 0;
            for (uint32_t k = 0; k < nactive; k++) {
                uint32_t b = active[k];
                uint32_t tok = model_sample(r->last_logits + (size_t)k * c->vocab_size, c->vocab_size, s,
                                      &rngs[b], cand);
                out[(size_t)b * max_new + out_len[b]++] = tok;
                if (out_len[b] < max_new && (s->ignore_sep || tok != MODEL_TOKEN_SEP))
                    active[still++] = b;
            }
            nactive = still;
            if (nactive == 0)
                break;
            for (uint32_t k = 0; k < nactive; k++) {
                uint32_t b = active[k];
                r->tokens[k] = out[(size_t)b * max_new + out_len[b] - 1];
                r->seq_start[k] = pos[b]++;
                r->seq_count[k] = 1;
                r->seq_offset[k] = k;
                r->seq_slot[k] = b;
                rows[k] = k;
            }
            model_run_stack(r, nactive);
            model_lm_head_rows(r, rows, nactive, r->last_logits);
        }
    }
    free(rngs);
    free(pos);
    free(active);
    free(rows);
    free(cand);
    return ok;
}
