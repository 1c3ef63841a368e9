/* train_cuda.c — training on a GPU: the train.h contract of train_forward_backward and
 * train_adamw_step (same objectives, same batch format, same gradient and optimizer arithmetic)
 * over the CUDA kernels of model/cuda/, so the CPU path stays the reference it is checked against
 * (tests/unit/test_cuda_train.c).
 *
 * Device state: the parameters in fp32 (the master copy AdamW updates), their gradients and the
 * two moments, each a block laid out like the model's parameter block but with every tensor
 * 256-byte aligned (cuBLASLt's plans assume aligned operands); in bf16 mode a bf16 mirror of the
 * parameters that the GEMMs read, rewritten by every AdamW step. Activations kept for the
 * backward pass: per layer the residual stream before and after attention (fp32), both norm
 * outputs, q/k/v after RoPE, the attention output and its log-sum-exp, the MLP's pre- and
 * post-activation (type T). Gradients of weights are fp32 and accumulate (+=) across calls until
 * train_cuda_zero_grads, as on the CPU; every sum runs in a fixed order (no atomics, the GEMM
 * heuristic's first algorithm) so that a run repeats bit for bit and a resumed run continues
 * exactly, which test_cuda_train checks.
 *
 * Dropout (train_cuda_set_dropout) draws train/grad.c's masks on the device from the same
 * integer hash (model/dropout_hash.h, compiled for host and device), keyed per batch row by
 * op_dropout_stream(seed, sample_base + b): a GPU step with dropout is the CPU's step to
 * rounding, and the masks are recomputed in the backward pass rather than stored. With
 * residual dropout the o- and down-projections write their branch to a scratch buffer and one
 * kernel adds the masked branch to the stream; with every probability 0 the passes are the
 * ones without dropout.
 *
 * The gradient sum across processes (NCCL) is train/trainer.c's, over train_cuda_grad_buffer.
 * Not yet: CUDA graphs of the step. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"
#include "train/train.h"

#ifndef NETLM_HAVE_CUDA

struct train_cuda {
    char unused;
};

struct train_cuda *train_cuda_create(struct model *m, int device, bool bf16, uint32_t max_batch,
                                     uint32_t max_seq, char *err, size_t errlen)
{
    (void)m, (void)device, (void)bf16, (void)max_batch, (void)max_seq;
    snprintf(err, errlen, "cuda: this netlm was built without the CUDA backend (nvcc was not found at build time)");
    return NULL;
}
void train_cuda_free(struct train_cuda *t) { (void)t; }
bool train_cuda_forward_backward(struct train_cuda *t, enum train_objective objective,
                                 const struct train_batch *batch, double *loss)
{
    (void)t, (void)objective, (void)batch, (void)loss;
    return false;
}
bool train_cuda_zero_grads(struct train_cuda *t) { return (void)t, false; }
bool train_cuda_grad_norm(struct train_cuda *t, double *norm) { return (void)t, (void)norm, false; }
bool train_cuda_grad_scale(struct train_cuda *t, float scale) { return (void)t, (void)scale, false; }
bool train_cuda_adamw_step(struct train_cuda *t, uint64_t step, float lr, const struct train_adamw *o)
{
    return (void)t, (void)step, (void)lr, (void)o, false;
}
bool train_cuda_download(struct train_cuda *t, float *params, float *grads, float *mom, float *vel)
{
    return (void)t, (void)params, (void)grads, (void)mom, (void)vel, false;
}
bool train_cuda_upload(struct train_cuda *t, const float *params, const float *mom, const float *vel)
{
    return (void)t, (void)params, (void)mom, (void)vel, false;
}
const char *train_cuda_error(const struct train_cuda *t) { return (void)t, "built without CUDA"; }
bool train_cuda_set_dropout(struct train_cuda *t, const struct train_dropout *d)
{
    return (void)t, (void)d, false;
}
bool train_cuda_grad_buffer(struct train_cuda *t, float **grads, size_t *count, void **stream)
{
    return (void)t, (void)grads, (void)count, (void)stream, false;
}

#else

#include "model/cuda/cuda_internal.h"
#include "model/cuda/cuda_train.h"

#define TENSOR_ALIGN 64 /* floats: 256 bytes */
#define LM_CHUNK 4096u  /* rows of logits per GEMM + cross-entropy pass */
/* The LM head's vocabulary dimension as its GEMMs see it: V rounded up to this. V is often odd
 * (60005), and an odd extent in a GEMM operand's contiguous dimension (the logits' rows, the
 * gradient's rows) leaves cuBLASLt only kernels without vector access (the head ran at ~95
 * TFLOP/s on an H100 where the other GEMMs run at 600-750). The head's weight rows past V are
 * zeros that nothing updates, so the logits and gradients past V are zeros too. 128 as the
 * inference engine's padded vocabulary (whole tiles). */
#define LOGITS_ALIGN 128u

/* train/grad.c's enum drop_place: each place of a layer draws its own stream (the attention
 * probabilities' place, 1, is built into the attention kernels) */
enum drop_place { DROP_EMBED = 0, DROP_ATTN_PROBS, DROP_ATTN_OUT, DROP_MLP_OUT };

struct layer_stash {
    float *x_in, *x_mid, *lse;
    void *ln1, *qkv, *att, *ln2, *ffn_pre, *ffn_act;
};

struct train_cuda {
    struct model *m;
    int device;
    enum cu_dtype t;
    size_t ts;
    uint32_t max_batch, max_seq, C, H, KV, d, QKV, F, FW, V, NL;
    size_t ldlogits; /* V rounded up to LOGITS_ALIGN: the logits' row stride, the head's rows */
    size_t max_rows;
    bool gpt2;
    enum cu_norm_kind norm;
    cudaStream_t stream;
    struct cu_gemm *gemm;
    struct cu_profile *prof; /* NETLM_CUDA_PROFILE=1: time per kind of step (profile.c) */

    /* parameters: fp32 master, gradients, moments, bf16 mirror; the aligned layout */
    struct model_layout layout;
    size_t *host_offset;  /* tensor i's offset in m->params */
    float *p, *g, *mom, *vel;
    uint16_t *p16;
    struct model_weights w, gw; /* bound to p and g */
    struct model_layer_weights *wl, *gl;
    float *rope_cos, *rope_sin;

    /* activations and their gradients */
    void *ablock;
    struct layer_stash *stash;
    float *x_fin, *dx, *logits, *loss_rows, *norm_scratch, *delta;
    void *xn, *dxn, *dy, *dln, *datt, *dqkv, *dffn_act, *dffn, *dlogits_t;
    float *pooled32, *head32, *cls_logits, *dhead32, *dpooled;
    void *pooled_t, *head_t, *dcls_t, *dh_t;
    double *gnorm, *gnorm_scratch;
    uint32_t *d_seq_off, *d_tokens, *d_pos, *d_targets;
    uint32_t *d_rows_by_key, *d_seg_key, *d_seg_start; /* rows grouped by token (wte gradient) */
    uint32_t *d_prows, *d_pseg_key, *d_pseg_start;     /* ... by position (wpe gradient) */

    /* dropout: probabilities, op_dropout's threshold and scale per kind, each row's stream */
    struct train_dropout drop;
    uint32_t embed_thr, attn_thr, resid_thr;
    float embed_scale, attn_scale, resid_scale;
    uint64_t *d_seq_key, *h_seq_key;
    float *branch; /* [rows, C] fp32, with residual dropout only: a branch before its masked add */

    enum cu_attn_impl attn_bwd; /* NETLM_CUDA_ATTN_BWD=simt: the fp32 attention backward in bf16 */

    /* host staging (pinned) */
    uint32_t *h_seq_off, *h_tokens, *h_pos, *h_targets;
    uint32_t *h_rows_by_key, *h_seg_key, *h_seg_start, *h_prows, *h_pseg_key, *h_pseg_start;
    float *h_loss;
    char err[320];
};

static void fail(struct train_cuda *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct train_cuda *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->err, sizeof t->err, fmt, ap);
    va_end(ap);
}

#define CK(call, what)                                                                             \
    do {                                                                                          \
        cudaError_t ce_ = (call);                                                                 \
        if (ce_ != cudaSuccess) {                                                                 \
            fail(t, "cuda: %s: %s", (what), cudaGetErrorString(ce_));                             \
            return false;                                                                         \
        }                                                                                         \
    } while (0)

#define GEMM_OK(call)                                                                              \
    do {                                                                                          \
        if (!(call))                                                                              \
            return false;                                                                         \
    } while (0)

static size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

const char *train_cuda_error(const struct train_cuda *t) { return t->err; }

/* The bf16 mirror of a parameter (in bf16 mode) or the fp32 parameter itself: what GEMMs read. */
static const void *wt(const struct train_cuda *t, const float *p)
{
    return t->t == CU_BF16 ? (const void *)(t->p16 + (p - t->p)) : (const void *)p;
}

void train_cuda_free(struct train_cuda *t)
{
    if (!t)
        return;
    cudaSetDevice(t->device);
    if (t->stream)
        cudaStreamSynchronize(t->stream);
    cu_profile_free(t->prof);
    cu_gemm_free(t->gemm);
    cudaFree(t->p);
    cudaFree(t->ablock);
    cudaFree(t->branch);
    cudaFreeHost(t->h_seq_key);
    if (t->stream)
        cudaStreamDestroy(t->stream);
    free(t->layout.tensors);
    free(t->host_offset);
    free(t->wl);
    free(t->gl);
    free(t->stash);
    free(t);
}

/* Every device buffer, carved from two allocations (parameters, activations); with base NULL
 * only the sizes are summed. */
static void carve(struct train_cuda *t, char *pbase, size_t *pbytes, char *abase, size_t *abytes)
{
    const struct model_config *c = &t->m->cfg;
    const size_t N = t->max_rows, B = t->max_batch, ts = t->ts;
    size_t po = 0, ao = 0;
    /* a buffer of 0 bytes is NULL, not the next buffer's address: p16 in fp32 mode must stay NULL,
     * or AdamW would write a bf16 mirror over the RoPE tables and past the block */
#define PTAKE(field, type, bytes) ((field) = (type)(pbase && (bytes) != 0 ? pbase + po : NULL), po = align_up(po + (bytes), 256))
#define ATAKE(field, type, bytes) ((field) = (type)(abase && (bytes) != 0 ? abase + ao : NULL), ao = align_up(ao + (bytes), 256))
    const size_t P = t->layout.total;
    PTAKE(t->p, float *, P * 4);
    PTAKE(t->g, float *, P * 4);
    PTAKE(t->mom, float *, P * 4);
    PTAKE(t->vel, float *, P * 4);
    PTAKE(t->p16, uint16_t *, t->t == CU_BF16 ? P * 2 : 0);
    PTAKE(t->rope_cos, float *, (size_t)t->max_seq * (t->d / 2) * 4);
    PTAKE(t->rope_sin, float *, (size_t)t->max_seq * (t->d / 2) * 4);
    PTAKE(t->gnorm, double *, 8);
    PTAKE(t->gnorm_scratch, double *, CU_GRAD_NORM_SCRATCH * 8);
    for (uint32_t l = 0; l < c->layers; l++) {
        struct layer_stash *s = &t->stash[l];
        ATAKE(s->x_in, float *, N * t->C * 4);
        ATAKE(s->x_mid, float *, N * t->C * 4);
        ATAKE(s->lse, float *, N * t->H * 4);
        ATAKE(s->ln1, void *, N * t->C * ts);
        ATAKE(s->qkv, void *, N * t->QKV * ts);
        ATAKE(s->att, void *, N * t->H * t->d * ts);
        ATAKE(s->ln2, void *, N * t->C * ts);
        ATAKE(s->ffn_pre, void *, N * t->FW * ts);
        ATAKE(s->ffn_act, void *, N * t->F * ts);
    }
    const size_t chunk = N < LM_CHUNK ? N : LM_CHUNK;
    ATAKE(t->x_fin, float *, N * t->C * 4);
    ATAKE(t->dx, float *, N * t->C * 4);
    ATAKE(t->logits, float *, chunk * t->ldlogits * 4);
    ATAKE(t->loss_rows, float *, (N > B ? N : B) * 4);
    ATAKE(t->norm_scratch, float *, cu_norm_backward_scratch_floats((uint32_t)N, t->C) * 4);
    ATAKE(t->delta, float *, N * t->H * 4);
    ATAKE(t->xn, void *, N * t->C * ts);
    ATAKE(t->dxn, void *, N * t->C * ts);
    ATAKE(t->dy, void *, N * t->C * ts);
    ATAKE(t->dln, void *, N * t->C * ts);
    ATAKE(t->datt, void *, N * t->H * t->d * ts);
    ATAKE(t->dqkv, void *, N * t->QKV * ts);
    ATAKE(t->dffn_act, void *, N * t->F * ts);
    ATAKE(t->dffn, void *, N * t->FW * ts);
    ATAKE(t->dlogits_t, void *, t->t == CU_BF16 ? chunk * t->ldlogits * ts : 0);
    const size_t NL = t->NL ? t->NL : 1;
    ATAKE(t->pooled32, float *, B * t->C * 4);
    ATAKE(t->head32, float *, B * t->C * 4);
    ATAKE(t->cls_logits, float *, B * NL * 4);
    ATAKE(t->dhead32, float *, B * t->C * 4);
    ATAKE(t->dpooled, float *, B * t->C * 4);
    ATAKE(t->pooled_t, void *, B * t->C * ts);
    ATAKE(t->head_t, void *, B * t->C * ts);
    ATAKE(t->dcls_t, void *, B * NL * ts);
    ATAKE(t->dh_t, void *, B * t->C * ts);
    ATAKE(t->d_seq_off, uint32_t *, (B + 1) * 4);
    ATAKE(t->d_seq_key, uint64_t *, B * 8);
    ATAKE(t->d_tokens, uint32_t *, N * 4);
    ATAKE(t->d_pos, uint32_t *, N * 4);
    ATAKE(t->d_targets, uint32_t *, (N > B ? N : B) * 4);
    ATAKE(t->d_rows_by_key, uint32_t *, N * 4);
    ATAKE(t->d_seg_key, uint32_t *, N * 4);
    ATAKE(t->d_seg_start, uint32_t *, (N + 1) * 4);
    ATAKE(t->d_prows, uint32_t *, N * 4);
    ATAKE(t->d_pseg_key, uint32_t *, N * 4);
    ATAKE(t->d_pseg_start, uint32_t *, (N + 1) * 4);
#undef PTAKE
#undef ATAKE
    *pbytes = po;
    *abytes = ao;
}

/* Host values of a block laid out as m->params into the aligned device block (or back). */
static bool copy_block(struct train_cuda *t, float *dev, float *host, bool to_device)
{
    for (size_t i = 0; i < t->layout.count; i++) {
        const size_t n = t->layout.tensors[i].numel * sizeof(float);
        float *d = dev + t->layout.tensors[i].offset, *h = host + t->host_offset[i];
        CK(to_device ? cudaMemcpyAsync(d, h, n, cudaMemcpyHostToDevice, t->stream)
                     : cudaMemcpyAsync(h, d, n, cudaMemcpyDeviceToHost, t->stream),
           "copying parameters");
    }
    CK(cudaStreamSynchronize(t->stream), "copying parameters");
    return true;
}

/* The bf16 mirror from the fp32 parameters (after an upload; AdamW keeps it current after). */
static bool refresh_mirror(struct train_cuda *t)
{
    if (t->t != CU_BF16)
        return true;
    CK(cu_convert_f32(t->p16, CU_BF16, t->p, t->layout.total, t->stream), "the bf16 parameters");
    return true;
}

struct train_cuda *train_cuda_create(struct model *m, int device, bool bf16, uint32_t max_batch,
                                     uint32_t max_seq, char *err, size_t errlen)
{
    const struct model_config *c = &m->cfg;
    if (!cu_model_fits(c, device, max_batch, max_seq, err, errlen))
        return NULL;
    struct train_cuda *t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(err, errlen, "cuda: out of memory");
        return NULL;
    }
    t->m = m;
    t->device = device;
    t->t = bf16 ? CU_BF16 : CU_F32;
    t->ts = cu_dtype_size(t->t);
    t->max_batch = max_batch;
    t->max_seq = max_seq;
    t->max_rows = (size_t)max_batch * max_seq;
    t->gpt2 = c->arch == MODEL_ARCH_GPT2;
    t->C = c->hidden;
    t->H = c->heads;
    t->KV = c->kv_heads;
    t->d = c->head_dim;
    t->QKV = (c->heads + 2 * c->kv_heads) * c->head_dim;
    t->F = c->ffn;
    t->FW = t->gpt2 ? c->ffn : 2 * c->ffn;
    t->V = c->vocab_size;
    t->ldlogits = align_up(t->V, LOGITS_ALIGN);
    t->NL = m->w.cls_dense_w ? c->num_labels : 0;
    t->norm = !t->gpt2 ? CU_NORM_RMS : c->norm == MODEL_NORM_UER ? CU_NORM_LAYER_UER : CU_NORM_LAYER;
    /* bf16 takes the tensor-core attention backward (1.8x faster whole steps on an H100);
     * NETLM_CUDA_ATTN_BWD=simt keeps the fp32 one, to compare */
    const char *bwd = getenv("NETLM_CUDA_ATTN_BWD");
    t->attn_bwd = bwd && strcmp(bwd, "simt") == 0 ? CU_ATTN_SIMT : CU_ATTN_AUTO;

    /* the aligned layout */
    t->layout.count = m->layout.count;
    t->layout.tensors = malloc(m->layout.count * sizeof(struct model_tensor));
    t->host_offset = malloc(m->layout.count * sizeof(size_t));
    t->wl = calloc(c->layers ? c->layers : 1, sizeof(struct model_layer_weights));
    t->gl = calloc(c->layers ? c->layers : 1, sizeof(struct model_layer_weights));
    t->stash = calloc(c->layers ? c->layers : 1, sizeof(struct layer_stash));
    bool ok = t->layout.tensors && t->host_offset && t->wl && t->gl && t->stash;
    if (!ok) {
        fail(t, "cuda: out of memory");
    } else {
        size_t off = 0;
        const char *head = m->w.lm_head ? "lm_head" : "wte";
        for (size_t i = 0; i < m->layout.count; i++) {
            const struct model_tensor *mt = &m->layout.tensors[i];
            t->layout.tensors[i] = *mt;
            t->host_offset[i] = mt->offset;
            t->layout.tensors[i].offset = off;
            /* the LM head keeps room for its zero rows up to ldlogits (LOGITS_ALIGN) */
            off = align_up(off + (strcmp(mt->name, head) ? mt->numel : t->ldlogits * mt->cols), TENSOR_ALIGN);
        }
        t->layout.total = off;
    }
    if (ok && (cudaSetDevice(device) != cudaSuccess ||
               cudaStreamCreateWithFlags(&t->stream, cudaStreamNonBlocking) != cudaSuccess)) {
        fail(t, "cuda: cannot open cuda:%d: %s", device, cudaGetErrorString(cudaGetLastError()));
        ok = false;
    }
    if (ok && !(t->gemm = cu_gemm_create(CU_GEMM_WORKSPACE_BYTES, t->err, sizeof t->err)))
        ok = false;
    if (ok) /* the heuristic's first algorithm, the same in every process: resume is exact */
        cu_gemm_set_tuning(t->gemm, false);
    if (ok)
        t->prof = cu_profile_create();
    size_t pbytes = 0, abytes = 0;
    if (ok) {
        carve(t, NULL, &pbytes, NULL, &abytes);
        void *pb = NULL, *ab = NULL;
        cudaError_t ce = cudaMalloc(&pb, pbytes);
        if (ce == cudaSuccess)
            ce = cudaMalloc(&ab, abytes);
        if (ce != cudaSuccess) {
            fail(t, "cuda: cannot allocate %zu MiB for training %u × %u: %s", (pbytes + abytes) >> 20,
                 max_batch, max_seq, cudaGetErrorString(ce));
            cudaFree(pb);
            ok = false;
        } else {
            carve(t, pb, &pbytes, ab, &abytes);
            t->ablock = ab;
            /* gaps between tensors and every gradient start at zero; finite activations in rows
             * no sequence writes (they are never read, but a NaN there would hide nothing) */
            ok = cudaMemsetAsync(pb, 0, pbytes, t->stream) == cudaSuccess &&
                 cudaMemsetAsync(ab, 0, abytes, t->stream) == cudaSuccess;
            if (!ok)
                fail(t, "cuda: clearing the training buffers failed");
        }
    }
    if (ok) {
        const size_t N = t->max_rows, B = max_batch, NB = N > B ? N : B;
        const size_t words = (B + 1) + 2 * N + 2 * (3 * N + 1) + NB + NB;
        if (cudaMallocHost((void **)&t->h_seq_key, B * 8 + words * 4) != cudaSuccess) {
            fail(t, "cuda: cannot allocate pinned host buffers");
            ok = false;
        } else {
            t->h_seq_off = (uint32_t *)(t->h_seq_key + B);
            t->h_tokens = t->h_seq_off + B + 1;
            t->h_pos = t->h_tokens + N;
            t->h_rows_by_key = t->h_pos + N;
            t->h_seg_key = t->h_rows_by_key + N;
            t->h_seg_start = t->h_seg_key + N;
            t->h_prows = t->h_seg_start + N + 1;
            t->h_pseg_key = t->h_prows + N;
            t->h_pseg_start = t->h_pseg_key + N;
            t->h_targets = t->h_pseg_start + N + 1;
            t->h_loss = (float *)(t->h_targets + NB);
        }
    }
    if (ok) {
        model_weights_bind(c, &t->layout, t->p, &t->w, t->wl);
        model_weights_bind(c, &t->layout, t->g, &t->gw, t->gl);
        ok = copy_block(t, t->p, m->params, true) && refresh_mirror(t);
    }
    if (ok && !t->gpt2) {
        const size_t n = (size_t)max_seq * (t->d / 2);
        float *cs = malloc(2 * n * sizeof(float));
        if (!cs) {
            fail(t, "cuda: out of memory");
            ok = false;
        } else {
            op_rope_tables(cs, cs + n, max_seq, t->d, c->rope_theta);
            ok = cudaMemcpy(t->rope_cos, cs, n * 4, cudaMemcpyHostToDevice) == cudaSuccess &&
                 cudaMemcpy(t->rope_sin, cs + n, n * 4, cudaMemcpyHostToDevice) == cudaSuccess;
            free(cs);
            if (!ok)
                fail(t, "cuda: copying the RoPE tables failed");
        }
    }
    if (ok && cudaStreamSynchronize(t->stream) != cudaSuccess) {
        fail(t, "cuda: %s", cudaGetErrorString(cudaGetLastError()));
        ok = false;
    }
    if (!ok) {
        snprintf(err, errlen, "%s", t->err);
        train_cuda_free(t);
        return NULL;
    }
    return t;
}

/* ---- the passes ---- */

#define MARK(step) cu_profile_mark(t->prof, (step), t->stream)
#define GEMM(...) GEMM_OK(cu_gemm_run(t->gemm, s, __VA_ARGS__, t->err, sizeof t->err))
#define GEMM_DX(...) GEMM_OK(cu_gemm_dx(t->gemm, s, __VA_ARGS__, t->err, sizeof t->err))
#define GEMM_DW(...) GEMM_OK(cu_gemm_dw(t->gemm, s, __VA_ARGS__, t->err, sizeof t->err))

static bool forward(struct train_cuda *t, uint32_t nseq, uint32_t N, uint32_t max_len)
{
    const struct model_config *c = &t->m->cfg;
    const cudaStream_t s = t->stream;
    const enum cu_dtype T = t->t;
    const uint32_t C = t->C, Hd = t->H * t->d;
    const float eps = c->norm_eps;
    const struct train_dropout *dr = &t->drop;
    CK(cu_embed(t->stash[0].x_in, CU_F32, wt(t, t->w.wte), t->gpt2 ? wt(t, t->w.wpe) : NULL, T,
                t->d_tokens, t->d_pos, N, C, s), "embedding");
    if (dr->embed > 0)
        CK(cu_dropout_rows(t->stash[0].x_in, CU_F32, NULL, t->stash[0].x_in, C, t->d_seq_off, nseq, N,
                           t->d_seq_key, 0, DROP_EMBED, t->embed_thr, t->embed_scale, s), "embedding dropout");
    MARK("embedding");
    for (uint32_t l = 0; l < c->layers; l++) {
        const struct model_layer_weights *lw = &t->wl[l];
        struct layer_stash *st = &t->stash[l];
        float *next = l + 1 < c->layers ? t->stash[l + 1].x_in : t->x_fin;
        const struct cu_attn_dropout ad = {.seq_key = t->d_seq_key, .layer = l, .threshold = t->attn_thr,
                                           .scale = t->attn_scale};
        CK(cu_norm(st->ln1, T, st->x_in, CU_F32, lw->ln1_w, lw->ln1_b, N, C, eps, t->norm, s), "norm 1");
        MARK("norm");
        GEMM(T, T, st->qkv, t->QKV, st->ln1, C, wt(t, lw->qkv_w), lw->qkv_b ? wt(t, lw->qkv_b) : NULL, N, C,
             t->QKV, false, false);
        MARK("gemm qkv");
        if (!t->gpt2) {
            CK(cu_rope(st->qkv, T, N, t->QKV, t->H + t->KV, t->d, t->d_pos, t->rope_cos, t->rope_sin, s),
               "rope");
            MARK("rope");
        }
        CK(cu_attention_train(st->att, Hd, st->lse, st->qkv, t->QKV, T, t->d_seq_off, nseq, max_len, t->H,
                              t->KV, t->d, 1.0f / sqrtf((float)t->d), CU_ATTN_AUTO, dr->attn > 0 ? &ad : NULL, s),
           "attention");
        MARK("attention");
        /* the residual GEMMs' bias is fp32 like their output (cu_gemm_run: bias of y's type) */
        if (dr->resid > 0) {
            GEMM(T, CU_F32, t->branch, C, st->att, Hd, wt(t, lw->o_w), lw->o_b, N, Hd, C, false, false);
            MARK("gemm o");
            CK(cu_dropout_rows(st->x_mid, CU_F32, st->x_in, t->branch, C, t->d_seq_off, nseq, N, t->d_seq_key, l,
                               DROP_ATTN_OUT, t->resid_thr, t->resid_scale, s), "residual dropout");
            MARK("dropout");
        } else {
            CK(cudaMemcpyAsync(st->x_mid, st->x_in, (size_t)N * C * 4, cudaMemcpyDeviceToDevice, s), "residual");
            GEMM(T, CU_F32, st->x_mid, C, st->att, Hd, wt(t, lw->o_w), lw->o_b, N, Hd, C, true, false);
            MARK("gemm o");
        }
        CK(cu_norm(st->ln2, T, st->x_mid, CU_F32, lw->ln2_w, lw->ln2_b, N, C, eps, t->norm, s), "norm 2");
        MARK("norm");
        GEMM(T, T, st->ffn_pre, t->FW, st->ln2, C, wt(t, lw->up_w), lw->up_b ? wt(t, lw->up_b) : NULL, N, C,
             t->FW, false, false);
        MARK("gemm up");
        /* the pre-activations stay for the backward; the activations [N, F] are packed */
        if (t->gpt2)
            CK(cu_gelu(st->ffn_act, st->ffn_pre, T, (size_t)N * t->F, c->act == MODEL_ACT_GELU_ERF, s), "gelu");
        else
            CK(cu_swiglu(st->ffn_act, t->F, st->ffn_pre, T, NULL, N, t->F, s), "swiglu");
        MARK("activation");
        if (dr->resid > 0) {
            GEMM(T, CU_F32, t->branch, C, st->ffn_act, t->F, wt(t, lw->down_w), lw->down_b, N, t->F, C, false,
                 false);
            MARK("gemm down");
            CK(cu_dropout_rows(next, CU_F32, st->x_mid, t->branch, C, t->d_seq_off, nseq, N, t->d_seq_key, l,
                               DROP_MLP_OUT, t->resid_thr, t->resid_scale, s), "residual dropout");
            MARK("dropout");
        } else {
            CK(cudaMemcpyAsync(next, st->x_mid, (size_t)N * C * 4, cudaMemcpyDeviceToDevice, s), "residual");
            GEMM(T, CU_F32, next, C, st->ffn_act, t->F, wt(t, lw->down_w), lw->down_b, N, t->F, C, true, false);
            MARK("gemm down");
        }
    }
    CK(cu_norm(t->xn, T, t->x_fin, CU_F32, t->w.lnf_w, t->w.lnf_b, N, C, eps, t->norm, s), "final norm");
    MARK("norm");
    return true;
}

/* dy (type T) for a GEMM's backward from an fp32 gradient: itself in fp32 mode, else converted. */
static const void *as_t(struct train_cuda *t, void *dst, const float *src, size_t count, bool *ok)
{
    if (t->t == CU_F32)
        return src;
    if (cu_convert_f32(dst, t->t, src, count, t->stream) != cudaSuccess) {
        fail(t, "cuda: converting a gradient: %s", cudaGetErrorString(cudaGetLastError()));
        *ok = false;
    }
    return dst;
}

/* The LM head over every row in chunks: logits, cross-entropy against d_targets (CU_XENT_IGNORE
 * for rows without a target), dxn and the head's gradient. The three GEMMs run over ldlogits
 * vocabulary entries: the head's zero rows past V give zero logits there, the cross-entropy
 * leaves those columns of the gradient zero (fp32: the GEMM's zeros; bf16: never written since
 * the block was cleared), so dxn gains nothing from them and the head's zero rows stay zero. */
static bool lm_head(struct train_cuda *t, uint32_t N, float scale)
{
    const cudaStream_t s = t->stream;
    const enum cu_dtype T = t->t;
    const float *head = t->w.lm_head ? t->w.lm_head : t->w.wte;
    float *dhead = t->w.lm_head ? t->gw.lm_head : t->gw.wte;
    const size_t C = t->C, V = t->V, ld = t->ldlogits, ts = t->ts;
    /* the gradient over the logits: in place in fp32, else straight into the bf16 operand */
    void *dl = T == CU_F32 ? (void *)t->logits : t->dlogits_t;
    for (uint32_t r0 = 0; r0 < N; r0 += LM_CHUNK) {
        const uint32_t n = N - r0 < LM_CHUNK ? N - r0 : LM_CHUNK;
        const void *rows = (const char *)t->xn + (size_t)r0 * C * ts;
        GEMM(T, CU_F32, t->logits, ld, rows, C, wt(t, head), NULL, n, C, ld, false, false);
        MARK("lm head gemm");
        CK(cu_softmax_xent(t->logits, ld, dl, T, t->loss_rows + r0, t->d_targets + r0, n, (uint32_t)V, scale, s),
           "cross-entropy");
        MARK("cross-entropy");
        GEMM_DX(T, T, (char *)t->dxn + (size_t)r0 * C * ts, C, dl, ld, wt(t, head), n, C, ld, false);
        GEMM_DW(T, dhead, NULL, dl, ld, rows, C, n, C, ld);
        MARK("lm head gemm backward");
    }
    return true;
}

/* Pooling → dense → tanh → out → cross-entropy against the labels (d_targets), and back to dxn. */
static bool classify_head(struct train_cuda *t, uint32_t nseq)
{
    const struct model_config *c = &t->m->cfg;
    const cudaStream_t s = t->stream;
    const enum cu_dtype T = t->t;
    const uint32_t C = t->C, NL = t->NL;
    bool ok = true;
    CK(cu_pool(t->pooled32, t->pooled_t, t->xn, T, C, t->d_seq_off, nseq, (enum cu_pool_kind)c->pooling, s),
       "pooling");
    GEMM(T, CU_F32, t->head32, C, t->pooled_t, C, wt(t, t->w.cls_dense_w), t->w.cls_dense_b, nseq, C, C,
         false, false);
    CK(cu_tanh(t->head_t, T, t->head32, (size_t)nseq * C, s), "tanh");
    GEMM(T, CU_F32, t->cls_logits, NL, t->head_t, C, wt(t, t->w.cls_out_w), t->w.cls_out_b, nseq, C, NL,
         false, false);
    void *dl = T == CU_F32 ? (void *)t->cls_logits : t->dcls_t;
    CK(cu_softmax_xent(t->cls_logits, NL, dl, T, t->loss_rows, t->d_targets, nseq, NL, 1.0f / (float)nseq, s),
       "cross-entropy");
    GEMM_DX(T, CU_F32, t->dhead32, C, dl, NL, wt(t, t->w.cls_out_w), nseq, C, NL, false);
    GEMM_DW(T, t->gw.cls_out_w, t->gw.cls_out_b, dl, NL, t->head_t, C, nseq, C, NL);
    CK(cu_tanh_backward(t->dhead32, t->head_t, T, (size_t)nseq * C, s), "tanh backward");
    const void *dh = as_t(t, t->dh_t, t->dhead32, (size_t)nseq * C, &ok);
    if (!ok)
        return false;
    GEMM_DX(T, CU_F32, t->dpooled, C, dh, C, wt(t, t->w.cls_dense_w), nseq, C, C, false);
    GEMM_DW(T, t->gw.cls_dense_w, t->gw.cls_dense_b, dh, C, t->pooled_t, C, nseq, C, C);
    CK(cu_pool_backward(t->dxn, t->dpooled, t->xn, T, C, t->d_seq_off, nseq, (enum cu_pool_kind)c->pooling, s),
       "pooling backward");
    return true;
}

/* The gradient of a residual branch (type T, for its GEMMs' backward) from dx = d(stream): dx
 * itself without residual dropout, else M ⊙ dx (into dy in bf16, the fp32 scratch in fp32). */
static const void *branch_grad(struct train_cuda *t, uint32_t nseq, uint32_t N, uint32_t layer,
                               enum drop_place place, bool *ok)
{
    if (!(t->drop.resid > 0))
        return as_t(t, t->dy, t->dx, (size_t)N * t->C, ok);
    void *dst = t->t == CU_F32 ? (void *)t->branch : t->dy;
    if (cu_dropout_rows(dst, t->t, NULL, t->dx, t->C, t->d_seq_off, nseq, N, t->d_seq_key, layer, place,
                        t->resid_thr, t->resid_scale, t->stream) != cudaSuccess) {
        fail(t, "cuda: residual dropout backward: %s", cudaGetErrorString(cudaGetLastError()));
        *ok = false;
    }
    return dst;
}

static bool backward(struct train_cuda *t, uint32_t nseq, uint32_t N, uint32_t max_len, uint32_t nseg_tok,
                     uint32_t nseg_pos)
{
    const struct model_config *c = &t->m->cfg;
    const cudaStream_t s = t->stream;
    const enum cu_dtype T = t->t;
    const uint32_t C = t->C, Hd = t->H * t->d;
    const float eps = c->norm_eps;
    bool ok = true;
    CK(cudaMemsetAsync(t->dx, 0, (size_t)N * C * 4, s), "gradients");
    CK(cu_norm_backward(t->dx, t->gw.lnf_w, t->gw.lnf_b, t->dxn, T, t->x_fin, t->w.lnf_w, N, C, eps, t->norm,
                        t->norm_scratch, s), "final norm backward");
    MARK("norm backward");
    for (uint32_t l = c->layers; l-- > 0;) {
        const struct model_layer_weights *lw = &t->wl[l];
        struct model_layer_weights *gl = &t->gl[l];
        struct layer_stash *st = &t->stash[l];
        /* MLP: dx = d(x_out); x_out = x_mid + M ⊙ down(act(up(ln2(x_mid)))) */
        const void *dy = branch_grad(t, nseq, N, l, DROP_MLP_OUT, &ok);
        if (!ok)
            return false;
        GEMM_DX(T, T, t->dffn_act, t->F, dy, C, wt(t, lw->down_w), N, t->F, C, false);
        GEMM_DW(T, gl->down_w, gl->down_b, dy, C, st->ffn_act, t->F, N, t->F, C);
        MARK("gemm down backward");
        if (t->gpt2) {
            CK(cu_gelu_backward(t->dffn, t->dffn_act, st->ffn_pre, T, (size_t)N * t->F, c->act == MODEL_ACT_GELU_ERF,
                                s), "gelu backward");
        } else {
            CK(cu_swiglu_backward(t->dffn, t->dffn_act, t->F, st->ffn_pre, T, N, t->F, s), "swiglu backward");
        }
        MARK("activation backward");
        GEMM_DX(T, T, t->dln, C, t->dffn, t->FW, wt(t, lw->up_w), N, C, t->FW, false);
        GEMM_DW(T, gl->up_w, gl->up_b, t->dffn, t->FW, st->ln2, C, N, C, t->FW);
        MARK("gemm up backward");
        CK(cu_norm_backward(t->dx, gl->ln2_w, gl->ln2_b, t->dln, T, st->x_mid, lw->ln2_w, N, C, eps, t->norm,
                            t->norm_scratch, s), "norm 2 backward");
        MARK("norm backward");
        /* attention: dx = d(x_mid); x_mid = x_in + M ⊙ o(attn(qkv(ln1(x_in)))) */
        dy = branch_grad(t, nseq, N, l, DROP_ATTN_OUT, &ok);
        if (!ok)
            return false;
        GEMM_DX(T, T, t->datt, Hd, dy, C, wt(t, lw->o_w), N, Hd, C, false);
        GEMM_DW(T, gl->o_w, gl->o_b, dy, C, st->att, Hd, N, Hd, C);
        MARK("gemm o backward");
        const struct cu_attn_dropout ad = {.seq_key = t->d_seq_key, .layer = l, .threshold = t->attn_thr,
                                           .scale = t->attn_scale};
        CK(cu_attention_backward(t->dqkv, t->QKV, t->datt, Hd, st->att, Hd, st->qkv, t->QKV, st->lse, t->delta,
                                 T, t->d_seq_off, nseq, max_len, t->H, t->KV, t->d, 1.0f / sqrtf((float)t->d),
                                 t->attn_bwd, t->drop.attn > 0 ? &ad : NULL, s),
           "attention backward");
        MARK("attention backward");
        if (!t->gpt2) {
            CK(cu_rope_backward(t->dqkv, T, N, t->QKV, t->H + t->KV, t->d, t->d_pos, t->rope_cos, t->rope_sin, s),
               "rope backward");
            MARK("rope backward");
        }
        GEMM_DX(T, T, t->dln, C, t->dqkv, t->QKV, wt(t, lw->qkv_w), N, C, t->QKV, false);
        GEMM_DW(T, gl->qkv_w, gl->qkv_b, t->dqkv, t->QKV, st->ln1, C, N, C, t->QKV);
        if (t->gpt2 && gl->qkv_b) /* the key bias: exactly zero gradient (see train/grad.c) */
            CK(cudaMemsetAsync(gl->qkv_b + Hd, 0, (size_t)t->KV * t->d * 4, s), "key bias");
        MARK("gemm qkv backward");
        CK(cu_norm_backward(t->dx, gl->ln1_w, gl->ln1_b, t->dln, T, st->x_in, lw->ln1_w, N, C, eps, t->norm,
                            t->norm_scratch, s), "norm 1 backward");
        MARK("norm backward");
    }
    if (t->drop.embed > 0)
        CK(cu_dropout_rows(t->dx, CU_F32, NULL, t->dx, C, t->d_seq_off, nseq, N, t->d_seq_key, 0, DROP_EMBED,
                           t->embed_thr, t->embed_scale, s), "embedding dropout backward");
    CK(cu_embed_backward(t->gw.wte, t->dx, t->d_rows_by_key, t->d_seg_key, t->d_seg_start, nseg_tok, C, s),
       "embedding backward");
    if (t->gpt2)
        CK(cu_embed_backward(t->gw.wpe, t->dx, t->d_prows, t->d_pseg_key, t->d_pseg_start, nseg_pos, C, s),
           "position embedding backward");
    MARK("embedding backward");
    return true;
}

/* Packs the batch (rows of real tokens only), its targets and the embedding indexes, and copies
 * them in. Returns the number of loss terms, 0 for a batch outside the trainer. */
static size_t pack(struct train_cuda *t, enum train_objective objective, const struct train_batch *batch,
                   uint32_t *rows_out, uint32_t *max_len_out)
{
    const struct model_config *c = &t->m->cfg;
    const uint32_t B = batch->batch, T = batch->seq;
    if (B == 0 || B > t->max_batch || T == 0 || T > t->max_seq)
        return 0;
    if (objective == TRAIN_CLASSIFY && (!t->NL || !batch->labels))
        return 0;
    uint32_t N = 0, max_len = 0;
    size_t terms = 0;
    for (uint32_t b = 0; b < B; b++) {
        const uint32_t len = batch->lengths[b];
        if (len == 0 || len > T)
            return 0;
        if (objective == TRAIN_CLASSIFY && batch->labels[b] >= c->num_labels)
            return 0;
        t->h_seq_off[b] = N;
        t->h_seq_key[b] = op_dropout_stream(t->drop.seed, batch->sample_base + b); /* grad.c's seq_key */
        const uint32_t first = batch->target_start && batch->target_start[b] ? batch->target_start[b] : 1;
        for (uint32_t i = 0; i < len; i++) {
            const uint32_t id = batch->ids[(size_t)b * T + i];
            if (id >= c->vocab_size)
                return 0;
            t->h_tokens[N + i] = id;
            t->h_pos[N + i] = i;
            /* row i predicts id i + 1 when i + 1 is a target */
            uint32_t target = CU_XENT_IGNORE;
            if (objective == TRAIN_LM && i + 1 < len && i + 1 >= first) {
                target = batch->ids[(size_t)b * T + i + 1];
                terms++;
            }
            if (objective == TRAIN_LM)
                t->h_targets[N + i] = target;
        }
        if (objective == TRAIN_CLASSIFY) {
            t->h_targets[b] = batch->labels[b];
            terms++;
        }
        N += len;
        max_len = len > max_len ? len : max_len;
    }
    t->h_seq_off[B] = N;
    *rows_out = N;
    *max_len_out = max_len;
    return terms;
}

bool train_cuda_forward_backward(struct train_cuda *t, enum train_objective objective,
                                 const struct train_batch *batch, double *loss)
{
    uint32_t N = 0, max_len = 0;
    const size_t terms = pack(t, objective, batch, &N, &max_len);
    if (terms == 0) {
        fail(t, "cuda: a batch outside the trainer (sizes, vocabulary or labels) or without targets");
        return false;
    }
    const uint32_t B = batch->batch;
    const cudaStream_t s = t->stream;
    CK(cudaSetDevice(t->device), "selecting the device");
    /* the embedding gradients' indexes: rows by token, and (GPT-2) rows by position */
    const uint32_t nseg_tok = cu_embed_backward_index(t->h_tokens, N, t->h_rows_by_key, t->h_seg_key, t->h_seg_start);
    const uint32_t nseg_pos = t->gpt2 ? cu_embed_backward_index(t->h_pos, N, t->h_prows, t->h_pseg_key, t->h_pseg_start) : 0;
    if (t->gpt2) {
        CK(cudaMemcpyAsync(t->d_prows, t->h_prows, (size_t)N * 4, cudaMemcpyHostToDevice, s), "copying the batch");
        CK(cudaMemcpyAsync(t->d_pseg_key, t->h_pseg_key, (size_t)nseg_pos * 4, cudaMemcpyHostToDevice, s),
           "copying the batch");
        CK(cudaMemcpyAsync(t->d_pseg_start, t->h_pseg_start, ((size_t)nseg_pos + 1) * 4, cudaMemcpyHostToDevice, s),
           "copying the batch");
    }
    CK(cudaMemcpyAsync(t->d_seq_off, t->h_seq_off, (B + 1) * 4, cudaMemcpyHostToDevice, s), "copying the batch");
    if (t->drop.embed > 0 || t->drop.attn > 0 || t->drop.resid > 0)
        CK(cudaMemcpyAsync(t->d_seq_key, t->h_seq_key, (size_t)B * 8, cudaMemcpyHostToDevice, s), "copying the batch");
    CK(cudaMemcpyAsync(t->d_tokens, t->h_tokens, (size_t)N * 4, cudaMemcpyHostToDevice, s), "copying the batch");
    CK(cudaMemcpyAsync(t->d_pos, t->h_pos, (size_t)N * 4, cudaMemcpyHostToDevice, s), "copying the batch");
    CK(cudaMemcpyAsync(t->d_targets, t->h_targets, (objective == TRAIN_LM ? N : B) * 4, cudaMemcpyHostToDevice, s),
       "copying the batch");
    CK(cudaMemcpyAsync(t->d_rows_by_key, t->h_rows_by_key, (size_t)N * 4, cudaMemcpyHostToDevice, s),
       "copying the batch");
    CK(cudaMemcpyAsync(t->d_seg_key, t->h_seg_key, (size_t)nseg_tok * 4, cudaMemcpyHostToDevice, s),
       "copying the batch");
    CK(cudaMemcpyAsync(t->d_seg_start, t->h_seg_start, ((size_t)nseg_tok + 1) * 4, cudaMemcpyHostToDevice, s),
       "copying the batch");
    cu_profile_start(t->prof, s);
    if (!forward(t, B, N, max_len))
        return false;
    CK(cudaMemsetAsync(t->dxn, 0, (size_t)N * t->C * t->ts, s), "gradients");
    if (objective == TRAIN_LM) {
        if (!lm_head(t, N, 1.0f / (float)terms))
            return false;
    } else if (!classify_head(t, B)) {
        return false;
    }
    const uint32_t loss_rows = objective == TRAIN_LM ? N : B;
    CK(cudaMemcpyAsync(t->h_loss, t->loss_rows, (size_t)loss_rows * 4, cudaMemcpyDeviceToHost, s), "the loss");
    if (!backward(t, B, N, max_len, nseg_tok, nseg_pos))
        return false;
    CK(cudaStreamSynchronize(s), "running the backward pass");
    cu_profile_collect(t->prof, false); /* a training step's call ends with its AdamW pass */
    double sum = 0.0;
    for (uint32_t i = 0; i < loss_rows; i++)
        sum += t->h_loss[i];
    *loss = sum / (double)terms;
    return true;
}

bool train_cuda_zero_grads(struct train_cuda *t)
{
    CK(cudaMemsetAsync(t->g, 0, t->layout.total * 4, t->stream), "zeroing the gradients");
    return true;
}

bool train_cuda_set_dropout(struct train_cuda *t, const struct train_dropout *d)
{
    if (!(d->embed >= 0 && d->embed < 1) || !(d->attn >= 0 && d->attn < 1) || !(d->resid >= 0 && d->resid < 1)) {
        fail(t, "cuda: dropout probabilities must be in [0, 1) (embed %g, attn %g, resid %g)", d->embed, d->attn,
             d->resid);
        return false;
    }
    if (d->resid > 0 && !t->branch) {
        CK(cudaSetDevice(t->device), "selecting the device");
        CK(cudaMalloc((void **)&t->branch, t->max_rows * t->C * 4), "allocating the residual dropout buffer");
    }
    t->drop = *d;
    cu_dropout_params(d->embed, &t->embed_thr, &t->embed_scale);
    cu_dropout_params(d->attn, &t->attn_thr, &t->attn_scale);
    cu_dropout_params(d->resid, &t->resid_thr, &t->resid_scale);
    return true;
}

bool train_cuda_grad_buffer(struct train_cuda *t, float **grads, size_t *count, void **stream)
{
    *grads = t->g;
    *count = t->layout.total;
    *stream = t->stream;
    return true;
}

bool train_cuda_grad_norm(struct train_cuda *t, double *norm)
{
    CK(cu_grad_norm(t->gnorm, t->g, t->layout.total, t->gnorm_scratch, t->stream), "gradient norm");
    CK(cudaMemcpyAsync(norm, t->gnorm, sizeof(double), cudaMemcpyDeviceToHost, t->stream), "gradient norm");
    CK(cudaStreamSynchronize(t->stream), "gradient norm");
    return true;
}

bool train_cuda_grad_scale(struct train_cuda *t, float scale)
{
    CK(cu_grad_scale(t->g, t->layout.total, scale, t->stream), "gradient scaling");
    return true;
}

bool train_cuda_adamw_step(struct train_cuda *t, uint64_t step, float lr, const struct train_adamw *o)
{
    cu_profile_start(t->prof, t->stream);
    for (size_t i = 0; i < t->layout.count; i++) {
        const struct model_tensor *tensor = &t->layout.tensors[i];
        const bool decay = tensor->kind == MODEL_TENSOR_MATRIX || tensor->kind == MODEL_TENSOR_EMBEDDING;
        const struct cu_adamw_step a = {.lr = lr, .beta1 = o->beta1, .beta2 = o->beta2, .eps = o->eps,
                                        .weight_decay = decay ? o->weight_decay : 0.0f, .uer = o->uer,
                                        .step = step};
        const size_t off = tensor->offset;
        CK(cu_adamw(t->p + off, t->p16 ? t->p16 + off : NULL, t->mom + off, t->vel + off, t->g + off,
                    tensor->numel, &a, t->stream), "AdamW");
    }
    MARK("adamw");
    CK(cudaStreamSynchronize(t->stream), "AdamW");
    cu_profile_collect(t->prof, true);
    return true;
}

bool train_cuda_download(struct train_cuda *t, float *params, float *grads, float *mom, float *vel)
{
    CK(cudaSetDevice(t->device), "selecting the device");
    return (!params || copy_block(t, t->p, params, false)) && (!grads || copy_block(t, t->g, grads, false)) &&
           (!mom || copy_block(t, t->mom, mom, false)) && (!vel || copy_block(t, t->vel, vel, false));
}

bool train_cuda_upload(struct train_cuda *t, const float *params, const float *mom, const float *vel)
{
    CK(cudaSetDevice(t->device), "selecting the device");
    return (!params || (copy_block(t, t->p, (float *)params, true) && refresh_mirror(t))) &&
           (!mom || copy_block(t, t->mom, (float *)mom, true)) && (!vel || copy_block(t, t->vel, (float *)vel, true));
}

#endif
