/* model_internal.h — what the model folder's files (and train/, tests) share: the parameter
 * layout, the CPU ops, the runner's buffers, generation's token choice.
 *
 * All parameters live in one fp32 block laid out by model_layout: a table of tensors with their
 * offsets. Gradients and optimizer moments use the same layout, so one offset finds a tensor's
 * weights, gradient and moments. Matrices are stored [out, in] (nn.Linear), so every projection
 * is y = x·Wᵀ + b, one sgemm. GPT-2's Conv1D [in, out] tensors are transposed on load and save;
 * Qwen2's q/k/v and gate/up projections are fused into one matrix each. */
#ifndef NETLM_MODEL_INTERNAL_H
#define NETLM_MODEL_INTERNAL_H

#include <stdio.h>

#include "model/dropout_hash.h"
#include "model/model.h"

enum model_tensor_kind {
    MODEL_TENSOR_EMBEDDING = 0, /* token / position table */
    MODEL_TENSOR_MATRIX,
    MODEL_TENSOR_BIAS,
    MODEL_TENSOR_NORM_WEIGHT,
    MODEL_TENSOR_NORM_BIAS,
};

struct model_tensor {
    char name[48];   /* internal name, e.g. "layers.3.qkv_w" */
    enum model_tensor_kind kind;
    size_t offset;   /* floats from the start of the block */
    size_t numel;
    uint32_t rows, cols; /* matrices and embeddings; a vector has rows 1 */
};

struct model_layer_weights {
    float *ln1_w, *ln1_b;   /* ln1_b, ln2_b: GPT-2 only */
    float *qkv_w, *qkv_b;   /* [(heads + 2·kv_heads)·d, C] */
    float *o_w, *o_b;       /* [C, heads·d]; o_b GPT-2 only */
    float *ln2_w, *ln2_b;
    float *up_w, *up_b;     /* GPT-2 [F, C] + bias; Qwen2 [2F, C]: gate rows then up rows */
    float *down_w, *down_b; /* [C, F]; down_b GPT-2 only */
};

struct model_weights {
    float *wte;             /* [V, C] */
    float *wpe;             /* [P, C], GPT-2 */
    struct model_layer_weights *layers;
    float *lnf_w, *lnf_b;
    float *lm_head;         /* [V, C] when untied, else NULL (wte is the head) */
    float *cls_dense_w, *cls_dense_b, *cls_out_w, *cls_out_b; /* NULL without labels */
};

struct model_layout {
    struct model_tensor *tensors;
    size_t count;
    size_t total; /* floats */
};

/* The layout for cfg (classifier included when cfg->num_labels > 0). */
bool model_layout_build(const struct model_config *cfg, struct model_layout *out);
void model_layout_release(struct model_layout *l);
/* Pointers into a block laid out by l (weights, or gradients of the same shape); layers must
 * hold cfg->layers entries. */
void model_weights_bind(const struct model_config *cfg, const struct model_layout *l, float *base,
                        struct model_weights *w, struct model_layer_weights *layers);

struct model {
    struct model_config cfg;
    struct model_layout layout;
    float *params;
    struct model_weights w;
    struct model_layer_weights *layer_storage;
};

/* A model with zeroed parameters (the loader fills them). */
struct model *model_create_empty(const struct model_config *cfg, char *err, size_t errlen);

/* Seeded init of one block (the seed's scheme: N(0, 0.02) but norms 1/0). */
void model_init_block(const struct model_layout *l, float *base, uint64_t seed);

/* The Hugging Face view of a block laid out as m's parameters (its weights, or gradients or
 * optimizer moments of the same layout): tensor i's name, shape (shape[1] = 1 for vectors) and,
 * when out is given, its values in the Hugging Face layout. */
size_t model_hf_count(const struct model *m);
bool model_hf_tensor(const struct model *m, size_t i, const float *block, char *name,
                     size_t name_cap, uint32_t *ndim, uint64_t shape[2], float *out);

/* ---- output files: PATH.tmp.PID, then fsync and rename (outfile.c) ---- */
struct model_outfile {
    FILE *fp;
    char *tmp;
    const char *path;
};
bool model_outfile_open(struct model_outfile *o, const char *path, char *err, size_t errlen);
/* Flushes, syncs, closes and renames; on failure the temporary file is removed. */
bool model_outfile_commit(struct model_outfile *o, char *err, size_t errlen);
void model_outfile_abort(struct model_outfile *o);

/* ---- random numbers: splitmix64 seeding a xoshiro256** stream ---- */
struct model_rng { uint64_t s[4]; };
void model_rng_seed(struct model_rng *r, uint64_t seed);
uint64_t model_rng_next(struct model_rng *r);
double model_rng_uniform(struct model_rng *r); /* [0, 1) */
float model_rng_normal(struct model_rng *r);   /* N(0, 1) */

/* ---- CPU ops (ops.c). Rows are tokens; n rows of width c. ---- */

/* y[n, out] = x[n, in]·W[out, in]ᵀ (+ b) (+ y when accumulate); ldx/ldy are row strides. */
void op_matmul(float *y, size_t ldy, const float *x, size_t ldx, const float *w, const float *b,
               size_t n, size_t in, size_t out, bool accumulate, int threads);
void op_layernorm(float *y, const float *x, const float *w, const float *b, size_t n, size_t c,
                  float eps, enum model_norm flavour, int threads);
void op_rmsnorm(float *y, const float *x, const float *w, size_t n, size_t c, float eps,
                int threads);
void op_gelu(float *x, size_t count, enum model_act act, int threads);
/* gate_up rows [gate(F) | up(F)] → gate part = silu(gate)·up, in place. */
void op_swiglu(float *gate_up, size_t n, size_t f, int threads);
/* cos/sin tables [positions, d/2] for the half-split rotation. */
void op_rope_tables(float *cos_t, float *sin_t, uint32_t positions, uint32_t d, double theta);
/* Rotates heads×d values of one token at position pos in place. */
void op_rope_apply(float *x, uint32_t heads, uint32_t d, uint32_t pos, const float *cos_t,
                   const float *sin_t);
/* out[d] = softmax(q·Kᵀ·scale over positions 0..len-1)·V; k/v rows of stride d. scratch ≥ len. */
void op_attend(float *out, const float *q, const float *k, const float *v, uint32_t len,
               uint32_t d, float scale, float *scratch);
/* Dropout without state: whether element `index` of the stream `key` is kept is a hash of the
 * two, so the forward and the backward pass, any thread count, several processes and a resumed
 * run all draw the same mask. Kept elements are scaled by 1 / (1 − p). */
struct op_dropout {
    uint64_t key;       /* one stream per (sample, layer, site, head): op_dropout_stream */
    uint32_t threshold; /* dropped when the element's 32-bit hash is below p · 2³² */
    float scale;        /* 1 / (1 − p) */
};
/* The factor of element index: 0 or scale (op_dropout_hash, shared with the CUDA kernels). */
static inline float op_dropout_factor(const struct op_dropout *dr, uint64_t index)
{
    return op_dropout_hash(dr->key, index) >= dr->threshold ? dr->scale : 0.0f;
}
/* The same for n consecutive new tokens at positions start..start+n-1 of one head: q rows of
 * stride ldq, out rows of stride ldo; scores ≥ n × (start + n). drop (NULL = none) masks the
 * attention probabilities (training): element (i, j) is index i · (start + n) + j. */
void op_attend_block(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                     const float *v, uint32_t start, uint32_t n, uint32_t d, float scale,
                     float *scores, const struct op_dropout *drop);
void op_softmax(float *x, size_t n);

/* ---- backward ops (training); gradients of weights are accumulated (+=) ---- */

/* dx (= or += with accumulate_dx; NULL to skip) = dy·W, dW += dyᵀ·x, db += Σ dy (db may be
 * NULL). */
void op_matmul_backward(float *dx, size_t lddx, float *dw, float *db, const float *dy, size_t ldy,
                        const float *x, size_t ldx, const float *w, size_t n, size_t in,
                        size_t out, bool accumulate_dx, int threads);
/* dx += ∂/∂x; dw, db += (statistics recomputed from x). False when out of memory. */
bool op_layernorm_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                           const float *w, size_t n, size_t c, float eps, enum model_norm flavour,
                           int threads);
bool op_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                         size_t n, size_t c, float eps, int threads);
/* d ← d · gelu'(pre), in place. */
void op_gelu_backward(float *d, const float *pre, size_t count, enum model_act act, int threads);
/* From dh [n, F] (row stride ldh) and the pre-activation rows [gate | up]: d_gate_up [n, 2F]. */
void op_swiglu_backward(float *d_gate_up, const float *dh, size_t ldh, const float *gate_up,
                        size_t n, size_t f, int threads);
void op_rope_backward(float *dx, uint32_t heads, uint32_t d, uint32_t pos, const float *cos_t,
                      const float *sin_t);
/* One head of one sequence of n tokens from position 0: dq (written, stride lddq), dk and dv
 * ([n, d], accumulated) from dout (stride ldo). scratch ≥ 2·n·n. drop: the forward's mask. */
void op_attend_block_backward(float *dq, size_t lddq, float *dk, float *dv, const float *dout,
                              size_t ldo, const float *q, size_t ldq, const float *k,
                              const float *v, uint32_t n, uint32_t d, float scale, float *scratch,
                              const struct op_dropout *drop);

/* Cross-entropy of logits z against target: returns −log softmax(z)[target] and leaves the
 * gradient scale·(softmax(z) − onehot(target)) in z. */
double op_softmax_xent(float *z, size_t n, uint32_t target, float scale);

/* ---- generation's token choice (generate.c), shared by the CPU and the CUDA engine ---- */

#define MODEL_TOKEN_SEP 1u /* [SEP] in both vocabularies: a row stops after emitting it */

struct model_candidate {
    float logit;
    uint32_t id;
};
/* Row `row`'s stream of a call with these settings: the same row number gives the same draws on
 * every backend, whatever else is in the batch. */
void model_sample_rng(struct model_rng *rng, const struct model_sampling *s, uint32_t row);
/* The next token from one row's n logits: argmax (ties: the lower id) when s->temperature ≤ 0,
 * else a draw from rng among the top_k / top_p candidates at the temperature. cand: scratch of n
 * entries (unused when greedy). */
uint32_t model_sample(const float *logits, uint32_t n, const struct model_sampling *s,
                      struct model_rng *rng, struct model_candidate *cand);

/* ---- runner ---- */

struct model_runner {
    const struct model *m;
    uint32_t max_batch, max_seq, kv_tokens, threads;
    size_t max_tokens;       /* rows of the token buffers */
    float *block;            /* one allocation for everything below */
    size_t block_floats;
    float *x, *xn, *qkv, *att, *ffn; /* [tokens, C | C | QKV | heads·d | F or 2F] */
    float *kcache, *vcache;  /* [layers | 1][batch][kv_heads][kv_capacity][d] */
    uint32_t kv_capacity;    /* positions per sequence in the cache */
    bool cache_all_layers;
    float *rope_cos, *rope_sin; /* [kv_capacity, d/2] */
    float *scratch;          /* [threads][max_seq × kv_capacity] attention scores */
    float *last_logits;      /* [batch, V] */
    float *pooled;           /* [batch, C] */
    float *head_tmp;         /* [batch, C] */
    /* the current call's sequences */
    uint32_t *tokens;        /* [max_tokens] packed ids */
    uint32_t *seq_start, *seq_count, *seq_offset, *seq_slot; /* [max_batch] */
};

/* Runs the stack on r->tokens, the packed new tokens of nseq sequences: sequence b has
 * seq_count[b] new tokens at positions seq_start[b].. (rows seq_offset[b].. of the token
 * buffers) and uses cache slot seq_slot[b]; keys and values before seq_start[b] must already be
 * in that slot (generation). Leaves the final-norm states in r->xn. */
void model_run_stack(struct model_runner *r, uint32_t nseq);
/* Checks a right-padded batch against the runner and the vocabulary and packs its real ids into
 * r->tokens, each sequence from position 0 in cache slot b. */
bool model_pack_batch(struct model_runner *r, const uint32_t *ids, const uint32_t *lengths,
                      uint32_t batch, uint32_t seq);
/* Logits of chosen rows of r->xn: out[i, V] for row rows[i]. */
void model_lm_head_rows(struct model_runner *r, const uint32_t *rows, uint32_t n, float *out);

#endif
