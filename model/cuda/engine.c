/* engine.c — the CUDA inference engine (model.h's model_cuda_*): weights on the GPU, one
 * activation arena sized for (max_batch, max_seq), the transformer stack as a sequence of kernel
 * launches and cuBLASLt calls on one stream, optionally captured into a CUDA graph per shape
 * bucket and replayed.
 *
 * Layout on the device (all tensors 256-byte aligned, one allocation each for weights and for
 * activations, none after the first call of a bucket):
 * - weights: matrices and embeddings in the engine's type T (bf16, or fp32 for testing), the
 *   vocabulary padded to a multiple of 128 rows (zeros) so the LM head's GEMM has aligned tiles;
 *   norm weights/biases fp32; a projection's bias in the type of its GEMM's output (cuBLASLt's
 *   bias epilogue reads the output type): qkv and up biases T, o/down biases of the residual's
 *   type, classifier biases fp32.
 *   Qwen2's RoPE cos/sin tables (fp32, [max_seq, d/2]) are computed by the CPU's op_rope_tables,
 *   so both backends rotate by the same numbers.
 * - activations, packed real tokens as on the CPU (row r of sequence b at seq_off[b] + r): the
 *   residual stream x [tokens, C] of type XT; xn, qkv, att, ffn of type T; pooled/head/scores
 *   fp32. The residual adds are the o- and down-projection GEMMs accumulating into x (beta = 1),
 *   so no kernel passes over it only to add. XT is fp32 by default (the stream sums 2 · layers
 *   branch outputs at fp32 precision); with the residual_bf16 option it is bf16 as in
 *   PyTorch's bf16 models: the norms read and those GEMMs read and write half the bytes, and
 *   each add rounds the stream to bf16 once more.
 * - per call: the packed token ids, their positions and seq_off[batch + 1], copied from pinned
 *   host memory; scores (and pooled states, logits) copied back into pinned memory.
 * - classification's two slots (model_cuda_classify_submit): each its own pinned input/output
 *   buffers and device input/output buffers (carved from the activation block), see below.
 * - generation (the kv_tokens option): a KV cache [layers][max_batch][kv_tokens][kv_heads · d]
 *   of type T for K and V (its own allocation, made at create), the position tables (wpe, RoPE)
 *   for kv_tokens positions, and per row its cache row kvrow = slot · kv_tokens + position.
 *
 * Generation (model_cuda_generate) runs model_generate's loop with the same passes as the other
 * calls: the prefill is the packed forward over the prompts (TAIL_PREFILL: also stores each
 * layer's K, after RoPE, and V in the cache; the last rows' logits), each decode step the same
 * enqueue over one new token per running row (TAIL_DECODE: attention by cu_decode_attention over
 * the row's cache instead of cu_attention, the LM head on every row). Greedy picks the tokens on
 * the device (cu_argmax_rows: batch ids come back per step); sampling copies the rows' logits to
 * pinned memory and draws with the CPU's model_sample from the same per-row streams. Decode steps
 * are graph buckets too (rows rounded up to a power of two, padding rows store nothing).
 *
 * CUDA graphs: kernels read every per-call value from those fixed device buffers, so a graph
 * depends only on the launch shapes: (batch bucket, token bucket, length bucket, head). With
 * graphs on, a batch is padded to its buckets (padding rows use token 0 at position 0 and belong
 * to no sequence; padding sequences are empty and give zero rows); the first call of a bucket
 * runs eagerly (building the GEMM plans) and captures the graph for the next ones.
 *
 * Classification is double-buffered over three streams: an upload stream copies slot k+1's
 * packed inputs to the device while the compute stream runs slot k, and a download stream copies
 * slot k's outputs back while the compute stream runs k+1. Events order them: the compute of a
 * slot waits for its upload ("uploaded"); an upload into a slot waits for the compute that last
 * read its device inputs ("consumed"); a download waits for its compute ("computed"); the compute
 * writing a slot's device outputs waits for the previous download of them ("downloaded"). The host
 * reuses a slot only after it waited for its "downloaded", which follows all the others, so the
 * device-side waits restate what the host already guarantees. Uploads and downloads have a stream
 * each so that an upload never queues behind a download that waits for a compute.
 *   Graphs keep reading the fixed buffers (d_seq_off, d_tokens, d_pos; scores, pooled32): the
 * compute stream copies a slot's inputs into them before the pass and the outputs out of them into
 * the slot after it (device-to-device, a few hundred KiB at most). That keeps one graph per bucket
 * (not one per bucket and slot) and keeps the copies out of the graphs. Only inputs and outputs
 * are doubled: the activations stay single, which is correct because all passes are serialised on
 * the compute stream. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/cuda/cuda_internal.h"
#include "model/model_internal.h"

#define ALIGN_BYTES 256
#define GRAPH_SLOTS 48
#define CU_SLOTS 2 /* classify batches in flight at most */
#define CHOICE_SLOTS 64
#define CHOICE_CANDIDATES 26 /* the up projection: cuBLASLt + the pass and each fused variant */
#define FINGERPRINT_BLOCKS 264 /* cu_fingerprint's: two waves of 132 multiprocessors */

struct cu_layer {
    float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    void *qkv_w, *qkv_b; /* bias T */
    void *o_w, *o_b;       /* bias XT */
    void *up_w, *up_b;     /* bias T */
    void *down_w, *down_b; /* bias XT */
};

/* What a pass computes after the stack; PREFILL and DECODE also store keys and values in the KV
 * cache (generation). */
enum tail { TAIL_CLASSIFY = 0, TAIL_LAST_LOGITS, TAIL_PREFILL, TAIL_DECODE };

/* The steps with interchangeable kernels (see "kernel choices" below). */
enum choice_step { STEP_MLP_UP = 0, STEP_ATTENTION };

/* One step's kernel for a class of shapes, and what each candidate took. */
struct kernel_choice {
    enum choice_step step;
    uint64_t key; /* kernel_choice_key */
    int pick;
    float ms[CHOICE_CANDIDATES]; /* negative: not timed (tuning off, does not serve, or failed) */
    uint32_t rejected;           /* candidates (a bit each) whose result disagreed with the reference's */
};
_Static_assert(CHOICE_CANDIDATES <= 32, "a bit of kernel_choice.rejected per candidate");

struct graph_slot {
    bool used;
    uint32_t nseq, rows, max_len;
    enum tail tail;
    cudaGraphExec_t exec;
};

/* One classify batch in flight (model_cuda_classify_submit): its inputs packed compactly as
 * seq_off [nseq + 1] | tokens [rows] | pos [rows] (one upload), its outputs as scores [batch, L]
 * | pooled [batch, C] (one download), and the caller's destinations for them. */
struct cu_slot {
    uint32_t *h_in, *d_in; /* pinned host, device: [max_batch + 1 + 2 · max_tokens] */
    float *h_out, *d_out;  /* pinned host, device: [max_batch · (L + C)] */
    cudaEvent_t uploaded, consumed, computed, downloaded;
    uint32_t batch, nseq, rows, max_len;
    float *pooled, *scores; /* the submit's (pooled may be NULL) */
};

struct model_cuda {
    const struct model *m;
    struct model_cuda_options opt;
    enum cu_dtype t, xt; /* activations and weights; the residual stream */
    size_t ts, xs;       /* their sizes */
    uint32_t C, H, KV, d, QKV, F, FW, V, Vp, L;
    bool gpt2, has_cls;
    bool swiglu_gemm;   /* Qwen2 bf16 on Hopper: the up GEMM with the SwiGLU in its epilogue
                         * (and the gate/up weights in its row order, for the SwiGLU pass too) */
    bool swiglu_always; /* that on every batch, never timed against others (NETLM_CUDA_SWIGLU_GEMM) */
    unsigned swiglu_variant; /* its variant then; otherwise the size rule's (the first) */
    bool norm_in_up; /* Qwen2 with x of the compute type: the norm before the MLP inside its up product
                      * (the norm's weight folded into up_w, 1/rms per row: rowscale) */
    enum cu_attn_impl attn; /* the prefill / classify attention NETLM_CUDA_ATTN names */
    bool attn_chosen;       /* none named: a kernel chosen per class of shapes (timed, or by size) */
    bool attn_rope;         /* named: Qwen2's classify pass with RoPE inside the grouped kernel */
    enum tail tail;         /* the pass being enqueued */
    uint32_t sms;           /* the device's multiprocessors */
    bool tune_kernels;      /* time the candidates of a step on its first pass (NETLM_CUDA_KERNEL_TUNE) */
    cudaEvent_t tune_ev[CHOICE_CANDIDATES + 1]; /* cu_time_rounds' */
    double *d_fingerprint; /* cu_fingerprint's partial sums, [2 · FINGERPRINT_BLOCKS] */
    char tune_fault[128];  /* NETLM_CUDA_TUNE_FAULT: candidates (a,b,...) whose results are wiped after their timing */
    struct kernel_choice choices[CHOICE_SLOTS];
    unsigned nchoices;
    enum cu_norm_kind norm;
    size_t max_tokens;

    cudaStream_t stream;     /* compute: every pass, in call order */
    cudaStream_t up, down;   /* classify slots' uploads and downloads */
    struct cu_gemm *gemm;

    /* weights */
    void *wblock;
    size_t wbytes;
    void *wte, *wpe, *head; /* head: the LM head [Vp, C] (wte when tied) */
    struct cu_layer *layers;
    float *lnf_w, *lnf_b;
    void *cls_dense_w, *cls_out_w;
    float *cls_dense_b, *cls_out_b;
    float *rope_cos, *rope_sin;

    /* activations */
    void *ablock;
    size_t abytes;
    float *rowscale; /* [tokens]: the MLP norm's 1/rms per row (norm_in_up) */
    void *x, *xn, *qkv, *att, *ffn;
    float *pooled32, *head32, *scores, *logits;
    void *pooled_t, *head_t;
    uint32_t *d_seq_off, *d_tokens, *d_pos;
    uint32_t *d_kvrow, *d_next; /* generation: [max_tokens] cache rows, [max_batch] chosen ids */

    /* generation: the KV cache (kv_cap positions per slot, 0 = none) */
    uint32_t kv_cap, positions; /* positions: rows of the wpe / RoPE tables */
    void *kvblock, *kcache, *vcache;
    size_t kvbytes, kv_layer; /* kv_layer: elements of one layer's K (or V) cache */
    struct model_rng *gen_rng;  /* host, [max_batch]: each row's sampling stream */
    uint32_t *gen_pos, *gen_active;        /* [max_batch] */
    struct model_candidate *gen_cand;      /* [vocab]: model_sample's scratch */
    cu_generate_hook gen_hook;             /* tests: each pass's logits */
    void *gen_hook_user;

    /* pinned host memory */
    uint32_t *h_in; /* seq_off [max_batch + 1], tokens, pos [max_tokens]; generation: kvrow
                     * [max_tokens], next [max_batch] */
    uint32_t *h_seq_off, *h_tokens, *h_pos, *h_kvrow, *h_next;
    float *h_out;
    size_t h_out_floats;

    /* the current call */
    uint32_t batch, nseq, rows, max_len; /* real batch; launch shapes (bucketed with graphs) */

    struct graph_slot graphs[GRAPH_SLOTS];
    unsigned graph_next;

    /* classify in flight: slot[oldest] is the oldest of `inflight` (0..2); `unclaimed` batches
     * (older than any in flight) were completed by a submit that found the pipeline full, or by
     * model_cuda_classify, and their waits return at once */
    struct cu_slot slot[CU_SLOTS];
    void *h_slots; /* the slots' pinned buffers, one allocation */
    unsigned oldest, inflight, unclaimed;
    bool prof_pending; /* the profile holds marks of a pass not yet collected */

    struct cu_profile *prof; /* NETLM_CUDA_PROFILE=1, eager runs only (profile.c) */
    char err[320];
};

static void fail(struct model_cuda *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct model_cuda *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->err, sizeof e->err, fmt, ap);
    va_end(ap);
}

#define CK(call, what)                                                                             \
    do {                                                                                          \
        cudaError_t ce_ = (call);                                                                 \
        if (ce_ != cudaSuccess) {                                                                 \
            fail(e, "cuda: %s: %s", (what), cudaGetErrorString(ce_));                             \
            return false;                                                                         \
        }                                                                                         \
    } while (0)

static size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

bool cu_model_fits(const struct model_config *c, int device, uint32_t max_batch, uint32_t max_seq,
                   char *err, size_t errlen)
{
    if (max_batch == 0 || max_batch > 65535 || max_seq == 0) {
        snprintf(err, errlen, "cuda: max_batch must be 1..65535 and max_seq at least 1");
        return false;
    }
    if (c->arch == MODEL_ARCH_GPT2 && max_seq > c->max_positions) {
        snprintf(err, errlen, "cuda: %u positions asked but the model has %u (n_positions)", max_seq,
                 c->max_positions);
        return false;
    }
    if (c->head_dim > 128) {
        snprintf(err, errlen, "cuda: head_dim %u is not supported (at most 128)", c->head_dim);
        return false;
    }
    const int count = model_cuda_device_count();
    if (device < 0 || device >= count) {
        if (count == 0)
            snprintf(err, errlen, "cuda: no GPU is visible (cuda:%d asked)", device);
        else
            snprintf(err, errlen, "cuda: device cuda:%d does not exist (%d visible)", device, count);
        return false;
    }
    return true;
}

int model_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no device" state for later calls */
        return 0;
    }
    return n;
}

bool model_cuda_describe(int device, char *out, size_t len)
{
    struct cudaDeviceProp p;
    if (device < 0 || device >= model_cuda_device_count() || cudaGetDeviceProperties(&p, device) != cudaSuccess) {
        cudaGetLastError();
        if (len)
            out[0] = '\0';
        return false;
    }
    snprintf(out, len, "%s, %.1f GiB, sm_%d%d", p.name, (double)p.totalGlobalMem / (1 << 30), p.major, p.minor);
    return true;
}

bool model_cuda_versions(char *out, size_t len)
{
    int runtime = 0, driver = 0;
    if (cudaRuntimeGetVersion(&runtime) != cudaSuccess)
        runtime = 0;
    if (cudaDriverGetVersion(&driver) != cudaSuccess)
        driver = 0;
    cudaGetLastError();
    char d[32] = "none";
    if (driver > 0)
        snprintf(d, sizeof d, "%d.%d", driver / 1000, driver % 1000 / 10);
    snprintf(out, len, "runtime %d.%d, driver %s", runtime / 1000, runtime % 1000 / 10, d);
    return true;
}

/* ---- weights ---- */

/* Places tensors one after the other (256-byte aligned); with image set, also writes them there
 * converted to their device type. Run once to size, once to fill. */
struct placer {
    char *image;   /* host image of the device block, NULL while sizing */
    char *dev;     /* device base, NULL while sizing */
    size_t used;
};

static void *place(struct placer *p, const float *src, size_t numel, size_t alloc, enum cu_dtype t)
{
    const size_t off = p->used, es = cu_dtype_size(t);
    p->used = align_up(off + alloc * es, ALIGN_BYTES);
    if (!p->image)
        return NULL;
    if (src)
        cu_host_from_f32(p->image + off, t, src, numel);
    memset(p->image + off + numel * es, 0, (alloc - numel) * es); /* vocabulary padding */
    return p->dev + off;
}

/* The gate/up rows of a placed weight (f gate rows, then f up rows, of row_bytes each) into the
 * order cu_gemm_swiglu takes (cu_gemm_swiglu_row, its own inverse: a swap per pair of rows). */
static void order_for_fused_swiglu(char *rows, size_t row_bytes, uint32_t f)
{
    char tmp[8192];
    for (uint32_t half = 0; half < 2; half++)
        for (uint32_t r = 0; r < f; r++) {
            const uint32_t other = cu_gemm_swiglu_row(r);
            if (other <= r)
                continue;
            char *a = rows + ((size_t)half * f + r) * row_bytes, *b = rows + ((size_t)half * f + other) * row_bytes;
            for (size_t at = 0; at < row_bytes; at += sizeof tmp) {
                const size_t len = row_bytes - at < sizeof tmp ? row_bytes - at : sizeof tmp;
                memcpy(tmp, a + at, len);
                memcpy(a + at, b + at, len);
                memcpy(b + at, tmp, len);
            }
        }
}

/* up_w [rows, c] with column j scaled by norm_w[j], into folded: the norm before the MLP then
 * needs only its 1/rms per row, which the up product's epilogue applies (norm_in_up). */
static const float *fold_norm_weight(float *folded, const float *up_w, const float *norm_w, size_t rows, size_t c)
{
    for (size_t r = 0; r < rows; r++)
        for (size_t j = 0; j < c; j++)
            folded[r * c + j] = up_w[r * c + j] * norm_w[j];
    return folded;
}

/* fold: scratch for one layer's folded up weights (norm_in_up, while filling; NULL while
 * sizing) */
static void place_weights(struct model_cuda *e, struct placer *p, const float *rope_cos,
                          const float *rope_sin, float *fold)
{
    const struct model_weights *w = &e->m->w;
    const enum cu_dtype T = e->t, XT = e->xt, F32 = CU_F32;
    const size_t C = e->C;
    e->wte = place(p, w->wte, (size_t)e->V * C, (size_t)e->Vp * C, T);
    if (e->gpt2)
        e->wpe = place(p, w->wpe, (size_t)e->positions * C, (size_t)e->positions * C, T);
    for (uint32_t l = 0; l < e->m->cfg.layers; l++) {
        const struct model_layer_weights *lw = &w->layers[l];
        struct cu_layer *cl = &e->layers[l];
        cl->ln1_w = place(p, lw->ln1_w, C, C, F32);
        cl->ln1_b = lw->ln1_b ? place(p, lw->ln1_b, C, C, F32) : NULL;
        cl->qkv_w = place(p, lw->qkv_w, (size_t)e->QKV * C, (size_t)e->QKV * C, T);
        cl->qkv_b = lw->qkv_b ? place(p, lw->qkv_b, e->QKV, e->QKV, T) : NULL;
        cl->o_w = place(p, lw->o_w, C * e->H * e->d, C * e->H * e->d, T);
        cl->o_b = lw->o_b ? place(p, lw->o_b, C, C, XT) : NULL;
        cl->ln2_w = place(p, lw->ln2_w, C, C, F32);
        cl->ln2_b = lw->ln2_b ? place(p, lw->ln2_b, C, C, F32) : NULL;
        const float *up_w = lw->up_w;
        if (p->image && e->norm_in_up)
            up_w = fold_norm_weight(fold, lw->up_w, lw->ln2_w, e->FW, C);
        cl->up_w = place(p, up_w, (size_t)e->FW * C, (size_t)e->FW * C, T);
        /* the fused GEMM's row order, which the SwiGLU pass then also reads (no bias in Qwen2's
         * MLP) */
        if (p->image && e->swiglu_gemm)
            order_for_fused_swiglu(p->image + ((char *)cl->up_w - p->dev), C * cu_dtype_size(T), e->F);
        cl->up_b = lw->up_b ? place(p, lw->up_b, e->FW, e->FW, T) : NULL;
        cl->down_w = place(p, lw->down_w, C * e->F, C * e->F, T);
        cl->down_b = lw->down_b ? place(p, lw->down_b, C, C, XT) : NULL;
    }
    e->lnf_w = place(p, w->lnf_w, C, C, F32);
    e->lnf_b = w->lnf_b ? place(p, w->lnf_b, C, C, F32) : NULL;
    e->head = w->lm_head ? place(p, w->lm_head, (size_t)e->V * C, (size_t)e->Vp * C, T) : e->wte;
    if (e->has_cls) {
        e->cls_dense_w = place(p, w->cls_dense_w, C * C, C * C, T);
        e->cls_dense_b = place(p, w->cls_dense_b, C, C, F32);
        e->cls_out_w = place(p, w->cls_out_w, (size_t)e->L * C, (size_t)e->L * C, T);
        e->cls_out_b = place(p, w->cls_out_b, e->L, e->L, F32);
    }
    if (!e->gpt2) {
        const size_t n = (size_t)e->positions * (e->d / 2);
        e->rope_cos = place(p, rope_cos, n, n, F32);
        e->rope_sin = place(p, rope_sin, n, n, F32);
    }
}

/* Converts the host model's weights into a staging image and copies it into the device block,
 * at the places place_weights gives (the same every time: CUDA graphs captured earlier stay
 * valid). */
static bool fill_weights(struct model_cuda *e)
{
    char *image = malloc(e->wbytes);
    float *rope = NULL, *fold = NULL;
    const size_t rope_n = e->gpt2 ? 0 : (size_t)e->positions * (e->d / 2);
    if (rope_n)
        rope = malloc(2 * rope_n * sizeof(float));
    if (e->norm_in_up)
        fold = malloc((size_t)e->FW * e->C * sizeof(float));
    if (!image || (rope_n && !rope) || (e->norm_in_up && !fold)) {
        free(image);
        free(rope);
        free(fold);
        fail(e, "cuda: out of host memory staging %zu MiB of weights", e->wbytes >> 20);
        return false;
    }
    if (rope_n)
        op_rope_tables(rope, rope + rope_n, e->positions, e->d, e->m->cfg.rope_theta);
    memset(image, 0, e->wbytes); /* alignment gaps: no uninitialised bytes on the device */
    struct placer fill = {.image = image, .dev = e->wblock};
    place_weights(e, &fill, rope, rope ? rope + rope_n : NULL, fold);
    cudaError_t ce = cudaMemcpy(e->wblock, image, e->wbytes, cudaMemcpyHostToDevice);
    free(image);
    free(rope);
    free(fold);
    CK(ce, "copying the weights");
    return true;
}

static bool upload_weights(struct model_cuda *e)
{
    struct placer sizing = {0};
    place_weights(e, &sizing, NULL, NULL, NULL);
    e->wbytes = sizing.used;
    CK(cudaMalloc(&e->wblock, e->wbytes), "allocating the weights");
    return fill_weights(e);
}

bool model_cuda_reload_weights(struct model_cuda *e)
{
    if (e->inflight) {
        fail(e, "reload_weights with a batch in flight");
        return false;
    }
    CK(cudaSetDevice(e->opt.device), "selecting the device");
    /* cudaMemcpy orders only against the legacy default stream, which the engine's non-blocking
     * streams do not wait for: whatever they still run reads the weights, so it ends first */
    CK(cudaStreamSynchronize(e->stream), "waiting for the compute stream");
    CK(cudaStreamSynchronize(e->up), "waiting for the upload stream");
    CK(cudaStreamSynchronize(e->down), "waiting for the download stream");
    return fill_weights(e);
}

/* ---- activations ---- */

/* Carves the activation arena; with base NULL only sizes it (offsets kept as integers). */
static void place_activations(struct model_cuda *e, char *base, size_t *total)
{
    const size_t N = e->max_tokens, B = e->opt.max_batch, ts = e->ts, C = e->C;
    size_t off = 0;
#define CARVE(field, type, bytes)                                                                  \
    do {                                                                                          \
        if (base)                                                                                 \
            e->field = (type)(base + off);                                                        \
        const size_t bytes_ = (bytes);                                                            \
        off = align_up(off + (bytes_ > 0 ? bytes_ : 1), ALIGN_BYTES);                             \
    } while (0)
    CARVE(x, void *, N * C * e->xs);
    CARVE(xn, void *, N * C * ts);
    CARVE(rowscale, float *, N * sizeof(float));
    CARVE(qkv, void *, N * e->QKV * ts);
    CARVE(att, void *, N * e->H * e->d * ts);
    CARVE(ffn, void *, N * e->FW * ts);
    CARVE(pooled32, float *, B * C * sizeof(float));
    CARVE(pooled_t, void *, B * C * ts);
    CARVE(head32, float *, B * C * sizeof(float));
    CARVE(head_t, void *, B * C * ts);
    CARVE(scores, float *, B * (e->L ? e->L : 1) * sizeof(float));
    if (e->opt.lm_head || e->kv_cap)
        CARVE(logits, float *, B * e->Vp * sizeof(float));
    CARVE(d_seq_off, uint32_t *, (B + 1) * sizeof(uint32_t));
    CARVE(d_tokens, uint32_t *, N * sizeof(uint32_t));
    CARVE(d_pos, uint32_t *, N * sizeof(uint32_t));
    if (e->kv_cap) {
        CARVE(d_kvrow, uint32_t *, N * sizeof(uint32_t));
        CARVE(d_next, uint32_t *, B * sizeof(uint32_t));
    }
    for (unsigned i = 0; e->has_cls && i < CU_SLOTS; i++) {
        CARVE(slot[i].d_in, uint32_t *, (B + 1 + 2 * N) * sizeof(uint32_t));
        CARVE(slot[i].d_out, float *, B * (e->L + C) * sizeof(float));
    }
#undef CARVE
    *total = off;
}

/* ---- create / free ---- */

void model_cuda_free(struct model_cuda *e)
{
    if (!e)
        return;
    if (e->opt.device >= 0)
        cudaSetDevice(e->opt.device);
    /* batches still in flight are dropped, but no copy may still touch the buffers freed below */
    const cudaStream_t streams[3] = {e->up, e->stream, e->down};
    for (unsigned i = 0; i < 3; i++)
        if (streams[i])
            cudaStreamSynchronize(streams[i]);
    for (unsigned i = 0; i < CU_SLOTS; i++) {
        struct cu_slot *sl = &e->slot[i];
        cudaEvent_t *ev[4] = {&sl->uploaded, &sl->consumed, &sl->computed, &sl->downloaded};
        for (unsigned k = 0; k < 4; k++)
            if (*ev[k])
                cudaEventDestroy(*ev[k]);
    }
    for (unsigned i = 0; i < GRAPH_SLOTS; i++)
        if (e->graphs[i].used)
            cudaGraphExecDestroy(e->graphs[i].exec);
    for (unsigned i = 0; i <= CHOICE_CANDIDATES; i++)
        if (e->tune_ev[i])
            cudaEventDestroy(e->tune_ev[i]);
    cu_profile_free(e->prof);
    cu_gemm_free(e->gemm);
    cudaFree(e->d_fingerprint);
    cudaFree(e->wblock);
    cudaFree(e->ablock);
    cudaFree(e->kvblock);
    cudaFreeHost(e->h_in);
    cudaFreeHost(e->h_out);
    cudaFreeHost(e->h_slots);
    for (unsigned i = 0; i < 3; i++)
        if (streams[i])
            cudaStreamDestroy(streams[i]);
    free(e->gen_rng);
    free(e->gen_pos);
    free(e->gen_active);
    free(e->gen_cand);
    free(e->layers);
    free(e);
}

static bool attention_named(struct model_cuda *e, const char *name);

struct model_cuda *model_cuda_create(const struct model *m, const struct model_cuda_options *o,
                                     char *err, size_t errlen)
{
    const struct model_config *c = &m->cfg;
    if (o->residual_bf16 && o->precision != MODEL_PRECISION_BF16) {
        /* the fp32 engine is the reference the bf16 one is checked against: refused rather
         * than silently ignored, so a caller asking for both learns which one it got */
        snprintf(err, errlen, "cuda: residual_bf16 needs precision bf16");
        return NULL;
    }
    if (!cu_model_fits(c, o->device, o->max_batch, o->max_seq, err, errlen))
        return NULL;
    /* as the CPU runner: a cache holds at least the longest prompt */
    const uint32_t kv_cap = o->kv_tokens ? (o->kv_tokens > o->max_seq ? o->kv_tokens : o->max_seq) : 0;
    if (kv_cap && c->arch == MODEL_ARCH_GPT2 && kv_cap > c->max_positions) {
        snprintf(err, errlen, "cuda: a KV cache of %u positions asked but the model has %u (n_positions)",
                 kv_cap, c->max_positions);
        return NULL;
    }
    if (kv_cap && (uint64_t)o->max_batch * kv_cap >= CU_KV_NONE) {
        snprintf(err, errlen, "cuda: a KV cache of %u × %u positions is too large", o->max_batch, kv_cap);
        return NULL;
    }
    struct model_cuda *e = calloc(1, sizeof(*e));
    if (!e || !(e->layers = calloc(c->layers ? c->layers : 1, sizeof(struct cu_layer)))) {
        free(e);
        snprintf(err, errlen, "cuda: out of memory");
        return NULL;
    }
    e->m = m;
    e->opt = *o;
    e->t = o->precision == MODEL_PRECISION_FP32 ? CU_F32 : CU_BF16;
    e->ts = cu_dtype_size(e->t);
    e->xt = o->residual_bf16 ? CU_BF16 : CU_F32;
    e->xs = cu_dtype_size(e->xt);
    e->gpt2 = c->arch == MODEL_ARCH_GPT2;
    e->C = c->hidden;
    e->H = c->heads;
    e->KV = c->kv_heads;
    e->d = c->head_dim;
    e->QKV = (c->heads + 2 * c->kv_heads) * c->head_dim;
    e->F = c->ffn;
    e->FW = e->gpt2 ? c->ffn : 2 * c->ffn;
    e->V = c->vocab_size;
    e->Vp = (uint32_t)align_up(c->vocab_size, 128);
    e->has_cls = c->num_labels > 0 && m->w.cls_dense_w;
    e->L = e->has_cls ? c->num_labels : 0;
    e->norm = !e->gpt2 ? CU_NORM_RMS : c->norm == MODEL_NORM_UER ? CU_NORM_LAYER_UER : CU_NORM_LAYER;
    e->max_tokens = (size_t)o->max_batch * o->max_seq;
    e->kv_cap = kv_cap;
    e->positions = kv_cap > o->max_seq ? kv_cap : o->max_seq;

    bool ok = true;
    if (cudaSetDevice(o->device) != cudaSuccess ||
        cudaStreamCreateWithFlags(&e->stream, cudaStreamNonBlocking) != cudaSuccess ||
        cudaStreamCreateWithFlags(&e->up, cudaStreamNonBlocking) != cudaSuccess ||
        cudaStreamCreateWithFlags(&e->down, cudaStreamNonBlocking) != cudaSuccess) {
        fail(e, "cuda: cannot open cuda:%d: %s", o->device, cudaGetErrorString(cudaGetLastError()));
        ok = false;
    }
    if (ok && !(e->gemm = cu_gemm_create(CU_GEMM_WORKSPACE_BYTES, e->err, sizeof e->err)))
        ok = false;
    if (ok && !o->graphs)
        e->prof = cu_profile_create();
    /* The kernel choices (below, before enqueue): timed on a shape's first pass unless
     * NETLM_CUDA_KERNEL_TUNE=0. */
    const char *tune = getenv("NETLM_CUDA_KERNEL_TUNE");
    e->tune_kernels = !(tune && strcmp(tune, "0") == 0);
    bool timing = true;
    for (unsigned i = 0; ok && e->tune_kernels && timing && i <= CHOICE_CANDIDATES; i++)
        timing = cudaEventCreate(&e->tune_ev[i]) == cudaSuccess;
    if (ok && e->tune_kernels &&
        (!timing || cudaMalloc((void **)&e->d_fingerprint, 2 * FINGERPRINT_BLOCKS * sizeof(double)) != cudaSuccess)) {
        fail(e, "cuda: cannot create the kernel timing's events and buffer: %s",
             cudaGetErrorString(cudaGetLastError()));
        ok = false;
    }
    /* A check of the check of each candidate's result (kernel_choice): the named candidates'
     * results wiped after their timing, as a kernel that computes nothing would leave them
     * (tests/unit/test_cuda_model.c). */
    const char *fault = getenv("NETLM_CUDA_TUNE_FAULT");
    snprintf(e->tune_fault, sizeof e->tune_fault, "%s", fault ? fault : "");
    /* Qwen2 bf16 on Hopper: the up GEMM with the SwiGLU in its epilogue (gemm_swiglu.cu) or
     * cuBLASLt's GEMM then the SwiGLU as a pass of its own, whichever is faster
     * (STEP_MLP_UP). NETLM_CUDA_SWIGLU_GEMM=0: that pair always; 1 or a variant's name: the fused
     * kernel (that variant; 1: the default one) always. */
    const char *fused = getenv("NETLM_CUDA_SWIGLU_GEMM");
    const bool named = fused && strcmp(fused, "0") != 0 && strcmp(fused, "1") != 0;
    const int variant = named ? cu_gemm_swiglu_find(fused) : 0;
    if (ok && variant < 0) {
        char names[256] = "";
        for (unsigned i = 0; cu_gemm_swiglu_variant(i); i++)
            snprintf(names + strlen(names), sizeof names - strlen(names), ", %s", cu_gemm_swiglu_variant(i));
        fail(e, "NETLM_CUDA_SWIGLU_GEMM: no kernel variant \"%s\" (0, 1%s)", fused, names);
        ok = false;
    }
    e->swiglu_variant = variant > 0 ? (unsigned)variant : 0;
    if (ok && !(fused && strcmp(fused, "0") == 0) && !e->gpt2 && e->t == CU_BF16)
        e->swiglu_gemm = cu_gemm_swiglu_supported(o->device, e->C, e->F);
    e->swiglu_always = fused != NULL;
    /* Qwen2's norm before the MLP folded into the up product (its weight into up_w, 1/rms per
     * row applied in the SwiGLU): a pass that reads x and writes 4 bytes a row instead of
     * writing xn. The product reads x, so x must be of the compute type (bf16 with
     * residual_bf16). NETLM_CUDA_NORM_IN_UP=0: the norm as a pass of its own, as GPT-2's. */
    const char *norm_in_up = getenv("NETLM_CUDA_NORM_IN_UP");
    e->norm_in_up = !e->gpt2 && e->t == e->xt && !(norm_in_up && strcmp(norm_in_up, "0") == 0);
    /* The prefill / classify attention: a block per query head, or with grouped-query heads and
     * sequences of at most 256 tokens one block per kv head's group (CU_ATTN_TC_GROUP), on
     * Hopper's warpgroup products too (CU_ATTN_WG_GROUP), either grouped one with RoPE inside it
     * in the classify pass, whichever is faster (STEP_ATTENTION). NETLM_CUDA_ATTN=group: the
     * grouped kernel always; head: a block per query head always; wgmma: the grouped kernel on
     * Hopper's warpgroup products always (CU_ATTN_WG_GROUP: head_dim 64 on compute capability
     * 9.0; the grouped kernel elsewhere); wgmma-overlap: that kernel with each tile's softmax
     * beside the tile before's P·V (CU_ATTN_WG_OVERLAP); wgmma-pair: two query tiles a block
     * (CU_ATTN_WG_PAIR); group-rope, wgmma-rope, wgmma-overlap-rope, wgmma-pair-rope: those,
     * with RoPE inside them in the classify pass instead of as a pass of its own. */
    const char *attn = getenv("NETLM_CUDA_ATTN");
    e->attn = CU_ATTN_TC_GROUP;
    e->attn_chosen = !attn || strcmp(attn, "auto") == 0;
    if (ok && !e->attn_chosen)
        ok = attention_named(e, attn);
    int sms = 0;
    if (ok && cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, o->device) != cudaSuccess) {
        fail(e, "cuda: cannot read cuda:%d's multiprocessor count: %s", o->device,
             cudaGetErrorString(cudaGetLastError()));
        ok = false;
    }
    e->sms = (uint32_t)sms;
    ok = ok && upload_weights(e);
    if (ok) {
        place_activations(e, NULL, &e->abytes);
        cudaError_t ce = cudaMalloc(&e->ablock, e->abytes);
        if (ce != cudaSuccess) {
            fail(e, "cuda: cannot allocate %zu MiB of activations for %u × %u: %s",
                 e->abytes >> 20, o->max_batch, o->max_seq, cudaGetErrorString(ce));
            ok = false;
        } else {
            place_activations(e, e->ablock, &e->abytes);
            /* padding rows of a bucket are never written by attention: keep them finite. On
             * the engine's stream, then a device-wide wait: the weight copies above went through
             * the legacy stream, which a non-blocking stream does not wait for. */
            ce = cudaMemsetAsync(e->ablock, 0, e->abytes, e->stream);
            if (ce == cudaSuccess)
                ce = cudaDeviceSynchronize();
            if (ce != cudaSuccess) {
                fail(e, "cuda: clearing the activations: %s", cudaGetErrorString(ce));
                ok = false;
            }
        }
    }
    if (ok && kv_cap) {
        /* a decode step reads only positions its row has written; cleared anyway so that no
         * byte of the cache is undefined */
        e->kv_layer = (size_t)o->max_batch * kv_cap * e->KV * e->d;
        e->kvbytes = 2 * (size_t)c->layers * e->kv_layer * e->ts;
        cudaError_t ce = cudaMalloc(&e->kvblock, e->kvbytes ? e->kvbytes : 1);
        if (ce != cudaSuccess) {
            fail(e, "cuda: cannot allocate %zu MiB of KV cache for %u × %u positions: %s",
                 e->kvbytes >> 20, o->max_batch, kv_cap, cudaGetErrorString(ce));
            ok = false;
        } else {
            e->kcache = e->kvblock;
            e->vcache = (char *)e->kvblock + e->kvbytes / 2;
            ce = cudaMemsetAsync(e->kvblock, 0, e->kvbytes, e->stream);
            if (ce == cudaSuccess)
                ce = cudaStreamSynchronize(e->stream);
            if (ce != cudaSuccess) {
                fail(e, "cuda: clearing the KV cache: %s", cudaGetErrorString(ce));
                ok = false;
            }
        }
        e->gen_rng = malloc(o->max_batch * sizeof(*e->gen_rng));
        e->gen_pos = malloc(o->max_batch * sizeof(uint32_t));
        e->gen_active = malloc(o->max_batch * sizeof(uint32_t));
        e->gen_cand = malloc((size_t)e->V * sizeof(*e->gen_cand));
        if (ok && (!e->gen_rng || !e->gen_pos || !e->gen_active || !e->gen_cand)) {
            fail(e, "cuda: out of host memory");
            ok = false;
        }
    }
    if (ok) {
        const size_t in_words = (size_t)o->max_batch + 1 + 2 * e->max_tokens +
                                (kv_cap ? e->max_tokens + o->max_batch : 0);
        e->h_out_floats = (size_t)o->max_batch * (e->L + e->C);
        if ((o->lm_head || kv_cap) && (size_t)o->max_batch * e->V > e->h_out_floats)
            e->h_out_floats = (size_t)o->max_batch * e->V;
        if (cudaMallocHost((void **)&e->h_in, in_words * sizeof(uint32_t)) != cudaSuccess ||
            cudaMallocHost((void **)&e->h_out, e->h_out_floats * sizeof(float)) != cudaSuccess) {
            fail(e, "cuda: cannot allocate pinned host buffers");
            ok = false;
        } else {
            e->h_seq_off = e->h_in;
            e->h_tokens = e->h_in + o->max_batch + 1;
            e->h_pos = e->h_tokens + e->max_tokens;
            if (kv_cap) {
                e->h_kvrow = e->h_pos + e->max_tokens;
                e->h_next = e->h_kvrow + e->max_tokens;
            }
        }
    }
    if (ok && e->has_cls) {
        /* the classify slots: pinned buffers and events, all made here so that no call after
         * the first of a bucket allocates */
        const size_t in_bytes = align_up(((size_t)o->max_batch + 1 + 2 * e->max_tokens) * sizeof(uint32_t), ALIGN_BYTES);
        const size_t out_bytes = align_up((size_t)o->max_batch * (e->L + e->C) * sizeof(float), ALIGN_BYTES);
        if (cudaMallocHost(&e->h_slots, CU_SLOTS * (in_bytes + out_bytes)) != cudaSuccess) {
            fail(e, "cuda: cannot allocate pinned host buffers");
            ok = false;
        }
        for (unsigned i = 0; ok && i < CU_SLOTS; i++) {
            struct cu_slot *sl = &e->slot[i];
            char *base = (char *)e->h_slots + i * (in_bytes + out_bytes);
            sl->h_in = (uint32_t *)base;
            sl->h_out = (float *)(base + in_bytes);
            cudaEvent_t *ev[4] = {&sl->uploaded, &sl->consumed, &sl->computed, &sl->downloaded};
            for (unsigned k = 0; ok && k < 4; k++)
                if (cudaEventCreateWithFlags(ev[k], cudaEventDisableTiming) != cudaSuccess) {
                    fail(e, "cuda: cannot create events: %s", cudaGetErrorString(cudaGetLastError()));
                    ok = false;
                }
        }
    }
    if (!ok) {
        snprintf(err, errlen, "%s", e->err);
        model_cuda_free(e);
        return NULL;
    }
    return e;
}

void cu_engine_streams(struct model_cuda *e, cudaStream_t *compute, cudaStream_t *upload,
                       cudaStream_t *download)
{
    *compute = e->stream;
    *upload = e->up;
    *download = e->down;
}

size_t model_cuda_bytes(const struct model_cuda *e)
{
    return e->wbytes + e->abytes + e->kvbytes + CU_GEMM_WORKSPACE_BYTES;
}

const char *model_cuda_error(const struct model_cuda *e) { return e->err; }

/* ---- the forward pass ---- */

#define GEMM(...)                                                                                  \
    do {                                                                                          \
        if (!cu_gemm_run(e->gemm, s, __VA_ARGS__, e->err, sizeof e->err))                         \
            return false;                                                                         \
    } while (0)

/* ---- kernel choices ----
 *
 * Two steps have interchangeable kernels whose order of speed depends on the card and on the
 * batch: Qwen2's up projection with its SwiGLU (STEP_MLP_UP: cuBLASLt's GEMM and the SwiGLU pass,
 * or one of the fused kernel's variants) and the prefill / classify attention (STEP_ATTENTION: a
 * block per query head, a block per kv head's group, the group on warpgroup products; in the
 * classify pass also the group rotating q and k itself, without the RoPE pass). The first
 * pass of a class of shapes times each candidate that serves it on layer 0's real operands
 * (each once untimed, then in rounds over all of them: cu_time_rounds; the candidates only write
 * the step's output, which the chosen one then writes again) and keeps the fastest for every
 * later pass of that class, graphs captured after it included. A class: rows (sequences, for
 * attention) within the same power of two; for attention also the longest sequence's 64-token
 * query tiles and whether the pass classifies.
 * Ties and failures go to the size rules below, which also decide with NETLM_CUDA_KERNEL_TUNE=0
 * and within a graph capture; a kernel that the environment names is never timed against others.
 * A process may so pick other kernels than another one (results differ in the last bf16 bits,
 * as cuBLASLt's own timing makes them: gemm.c); within a process a class keeps its kernel. */

enum { MLP_PASS = 0 }; /* STEP_MLP_UP's candidates: MLP_PASS, then 1 + the fused kernel's variants */
/* STEP_ATTENTION's candidates; with rope_inside (Qwen2's classify pass only: the prefill stores
 * rotated keys in the KV cache) the kernel rotates q and k as it loads them, in place of the RoPE
 * pass, which the others' times therefore include */
enum {
    ATTN_HEAD,
    ATTN_GROUP,
    ATTN_WGMMA,
    ATTN_WGMMA_OVERLAP,
    ATTN_WGMMA_PAIR,
    ATTN_GROUP_ROPE,
    ATTN_WGMMA_ROPE,
    ATTN_WGMMA_OVERLAP_ROPE,
    ATTN_WGMMA_PAIR_ROPE,
    ATTENTION_CANDIDATES
};
static const struct {
    enum cu_attn_impl impl;
    bool rope_inside;
    const char *name;
} attention_candidates[ATTENTION_CANDIDATES] = {[ATTN_HEAD] = {CU_ATTN_AUTO, false, "head"},
                                                [ATTN_GROUP] = {CU_ATTN_TC_GROUP, false, "group"},
                                                [ATTN_WGMMA] = {CU_ATTN_WG_GROUP, false, "wgmma"},
                                                [ATTN_WGMMA_OVERLAP] = {CU_ATTN_WG_OVERLAP, false, "wgmma-overlap"},
                                                [ATTN_WGMMA_PAIR] = {CU_ATTN_WG_PAIR, false, "wgmma-pair"},
                                                [ATTN_GROUP_ROPE] = {CU_ATTN_TC_GROUP, true, "group+rope"},
                                                [ATTN_WGMMA_ROPE] = {CU_ATTN_WG_GROUP, true, "wgmma+rope"},
                                                [ATTN_WGMMA_OVERLAP_ROPE] = {CU_ATTN_WG_OVERLAP, true,
                                                                             "wgmma-overlap+rope"},
                                                [ATTN_WGMMA_PAIR_ROPE] = {CU_ATTN_WG_PAIR, true, "wgmma-pair+rope"}};

/* NETLM_CUDA_ATTN=name: the candidate of that name (its "+rope" spelled "-rope") always, timing
 * none; false with the error set when there is none. */
static bool attention_named(struct model_cuda *e, const char *name)
{
    char names[256] = "";
    for (int c = 0; c < ATTENTION_CANDIDATES; c++) {
        const char *candidate = attention_candidates[c].name, *plus = strchr(candidate, '+');
        const size_t stem = plus ? (size_t)(plus - candidate) : strlen(candidate);
        if (strncmp(name, candidate, stem) == 0 && strcmp(name + stem, plus ? "-rope" : "") == 0) {
            e->attn = attention_candidates[c].impl;
            e->attn_rope = attention_candidates[c].rope_inside;
            return true;
        }
        snprintf(names + strlen(names), sizeof names - strlen(names), ", %.*s%s", (int)stem, candidate,
                 plus ? "-rope" : "");
    }
    fail(e, "NETLM_CUDA_ATTN: \"%s\" is not auto%s", name, names);
    return false;
}

/* The size rule of the up projection. The fused kernel is a persistent grid of one CTA per
 * multiprocessor walking 192 × 128 output tiles: on an H200, against cuBLASLt plus the pass, it
 * took Qwen2.5-0.5B's engine 3.0 ms of 93.7 less at 65,536 rows (256 sequences of 256 tokens) and
 * 0.21 ms of 1.89 more at 256 rows (one sequence: 76 tiles, too few to fill the grid). */
enum { SWIGLU_FUSED_MIN_ROWS = 8192 };

/* The size rule of attention. The grouped kernel runs a 7th of the blocks of the per-query-head
 * one on Qwen2.5's 14 / 2 heads: on an H200 1.2 ms faster at 256 sequences of 256 tokens (2,048
 * blocks, 16 per multiprocessor) and 0.5 ms slower on one (8 blocks). Grouped from 4 blocks per
 * multiprocessor on. */
static int attention_by_size(const struct model_cuda *e)
{
    return cu_attention_group_blocks(e->nseq, e->max_len, e->KV) >= 4ull * e->sms ? ATTN_GROUP : ATTN_HEAD;
}

static const char *candidate_name(enum choice_step step, int c)
{
    if (step == STEP_ATTENTION)
        return attention_candidates[c].name;
    return c == MLP_PASS ? "cublaslt+pass" : cu_gemm_swiglu_variant((unsigned)c - 1);
}

static uint32_t pow2_at_least(uint32_t v)
{
    uint32_t p = 1;
    while (p < v)
        p <<= 1;
    return p;
}

static uint64_t kernel_choice_key(const struct model_cuda *e, enum choice_step step)
{
    if (step == STEP_MLP_UP)
        return pow2_at_least(e->rows);
    return (uint64_t)pow2_at_least(e->nseq) << 32 | (e->max_len + 63) / 64 << 1 | (e->tail == TAIL_CLASSIFY);
}

/* Does candidate c serve the step for the current shapes? (Unserved ones fall back to another
 * candidate's kernel: timing them would time that one twice.) */
static bool candidate_serves(const struct model_cuda *e, enum choice_step step, int c)
{
    if (step == STEP_MLP_UP)
        return true;
    const bool grouped = cu_attention_fuses_rope(e->t, e->d, e->H, e->KV, e->max_len, e->QKV, e->H * e->d);
    switch (c) {
    case ATTN_HEAD:
        return true;
    case ATTN_GROUP:
        return grouped;
    case ATTN_WGMMA:
    case ATTN_WGMMA_OVERLAP:
    case ATTN_WGMMA_PAIR:
        return grouped && cu_attention_wg_serves(e->d);
    case ATTN_GROUP_ROPE: /* (its rivals' RoPE pass is timed in ffn, not in use yet) */
        return grouped && !e->gpt2 && e->tail == TAIL_CLASSIFY && e->FW >= e->QKV;
    default:
        return candidate_serves(e, step, ATTN_GROUP_ROPE) && cu_attention_wg_serves(e->d);
    }
}

static bool enqueue_mlp_up(struct model_cuda *e, const struct cu_layer *cl, int c, struct cu_profile *prof);
static bool enqueue_attention(struct model_cuda *e, enum cu_attn_impl impl, bool rope_inside);

struct timed_candidate {
    struct model_cuda *e;
    const struct cu_layer *layer;
    enum choice_step step;
};

static bool run_candidate(void *ctx, int c)
{
    const struct timed_candidate *t = ctx;
    struct model_cuda *e = t->e;
    if (t->step == STEP_MLP_UP)
        return enqueue_mlp_up(e, t->layer, c, NULL);
    if (!attention_candidates[c].rope_inside && candidate_serves(e, STEP_ATTENTION, ATTN_GROUP_ROPE)) {
        /* the RoPE pass this candidate needs, on a scratch copy's worth of ffn (qkv itself is
         * rotated once, by the pass that follows the choice) */
        CK(cu_rope(e->ffn, e->t, e->rows, e->QKV, e->H + e->KV, e->d, e->d_pos, e->rope_cos, e->rope_sin, e->stream),
           "rope");
    }
    return enqueue_attention(e, attention_candidates[c].impl, attention_candidates[c].rope_inside);
}

/* Whether name is one of list's comma-separated names. */
static bool named_in(const char *list, const char *name)
{
    const size_t n = strlen(name);
    for (const char *at = list; *at;) {
        const size_t len = strcspn(at, ",");
        if (len == n && strncmp(at, name, n) == 0)
            return true;
        at += len + (at[len] == ',');
    }
    return false;
}

/* The fingerprint (cu_fingerprint's two sums) of candidate c's result, where its timing left it:
 * the step's output (ffn: h, with the row stride each path writes; att). False when it cannot be
 * taken. */
static bool candidate_fingerprint(struct model_cuda *e, enum choice_step step, int c, double sums[2])
{
    void *x = step == STEP_MLP_UP ? e->ffn : e->att;
    const uint32_t cols = step == STEP_MLP_UP ? e->F : e->H * e->d;
    const size_t ld = step != STEP_MLP_UP ? cols : c == MLP_PASS ? e->FW : e->F;
    double partial[2 * FINGERPRINT_BLOCKS];
    cudaError_t ce = cudaSuccess;
    if (named_in(e->tune_fault, candidate_name(step, c)))
        ce = cudaMemset2DAsync(x, ld * e->ts, 0, cols * e->ts, e->rows, e->stream);
    if (ce == cudaSuccess)
        ce = cu_fingerprint(e->d_fingerprint, FINGERPRINT_BLOCKS, x, e->t, e->rows, cols, ld, e->stream);
    if (ce == cudaSuccess)
        ce = cudaMemcpyAsync(partial, e->d_fingerprint, sizeof partial, cudaMemcpyDeviceToHost, e->stream);
    if (ce == cudaSuccess)
        ce = cudaStreamSynchronize(e->stream);
    if (ce != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    sums[0] = sums[1] = 0.0;
    for (unsigned b = 0; b < FINGERPRINT_BLOCKS; b++) {
        sums[0] += partial[2 * b];
        sums[1] += partial[2 * b + 1];
    }
    return true;
}

/* Two candidates' results agree when their sums of squares are within 5 % and their signed sums
 * within 5 % of the root of that: kernels that compute the same thing differ by their roundings
 * (~1e-3 of each), one that computes nothing, garbage or a permutation by far more (NaN never
 * agrees). */
static bool fingerprints_agree(const double reference[2], const double sums[2])
{
    const double tol = 0.05;
    return fabs(sums[0] - reference[0]) <= tol * reference[0] &&
           fabs(sums[1] - reference[1]) <= tol * sqrt(reference[0]);
}

/* A candidate that has not finished after 20 s (c < 0: one of a round's, after each had run once):
 * the pass fails naming it, and nothing is chosen for its class. */
static int hung_candidate(struct model_cuda *e, enum choice_step step, int c)
{
    fail(e, "cuda: the %s kernel candidate%s%s did not finish within 20 s (NETLM_CUDA_KERNEL_TUNE=0 or a kernel "
            "named in the environment avoids it)",
         step == STEP_MLP_UP ? "up projection" : "attention", c >= 0 ? " " : "s timed in turn",
         c >= 0 ? candidate_name(step, c) : "");
    e->nchoices--;
    return -1;
}

/* The step's candidate for the current shapes: the class's choice, or one made now (timed when
 * allowed: outside a capture, with tuning on, more than one candidate serving). by_size: the
 * size rule's candidate. -1 (e->err set) when a candidate hung. */
static int kernel_choice(struct model_cuda *e, enum choice_step step, const struct cu_layer *layer,
                         unsigned count, int by_size)
{
    const uint64_t key = kernel_choice_key(e, step);
    if (count > CHOICE_CANDIDATES)
        count = CHOICE_CANDIDATES; /* (test_timed_kernel_choices counts them all) */
    for (unsigned i = 0; i < e->nchoices; i++)
        if (e->choices[i].step == step && e->choices[i].key == key)
            return e->choices[i].pick;
    enum cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    if (e->nchoices == CHOICE_SLOTS || cudaStreamIsCapturing(e->stream, &cap) != cudaSuccess ||
        cap != cudaStreamCaptureStatusNone) {
        cudaGetLastError();
        return by_size; /* made on the eager pass before the capture; the table full: by size */
    }
    struct kernel_choice *k = &e->choices[e->nchoices++];
    *k = (struct kernel_choice){.step = step, .key = key, .pick = by_size};
    for (unsigned c = 0; c < CHOICE_CANDIDATES; c++)
        k->ms[c] = -1.0f;
    unsigned serving = 0;
    for (unsigned c = 0; c < count; c++)
        serving += candidate_serves(e, step, (int)c);
    if (!e->tune_kernels || serving < 2)
        return by_size;
    /* Each result is checked against the first of its group's: a kernel that is fast because it
     * computes something else (wrong on this card, say) is not chosen. The attention candidates
     * with RoPE inside rotate q and k as they load them, the others read them unrotated while
     * they are timed (their RoPE pass goes to scratch): two groups. */
    double reference[2][2];
    bool have_reference[2] = {false, false};
    struct timed_candidate t = {e, layer, step};
    for (unsigned c = 0; c < count; c++) {
        if (!candidate_serves(e, step, (int)c))
            continue;
        const cudaError_t ce = cu_run_once(e->tune_ev[0], e->stream, run_candidate, &t, (int)c);
        if (ce == cudaErrorLaunchTimeout)
            return hung_candidate(e, step, (int)c);
        cudaGetLastError(); /* a failed candidate leaves nothing behind: it is just not chosen */
        const int group = step == STEP_ATTENTION && attention_candidates[c].rope_inside;
        double sums[2];
        if (ce != cudaSuccess || !candidate_fingerprint(e, step, (int)c, sums))
            continue; /* (k->ms[c] stays -1: not timed) */
        k->ms[c] = 0.0f; /* to be timed */
        if (!have_reference[group]) {
            memcpy(reference[group], sums, sizeof sums);
            have_reference[group] = true;
        } else if (!fingerprints_agree(reference[group], sums)) {
            k->rejected |= 1u << c;
        }
    }
    /* the rejected ones too: their times are reported beside the reason they were not chosen */
    const cudaError_t ce = cu_time_rounds(e->tune_ev, e->stream, run_candidate, &t, (int)count, k->ms);
    if (ce == cudaErrorLaunchTimeout)
        return hung_candidate(e, step, -1);
    if (ce != cudaSuccess) {
        cudaGetLastError();
        for (unsigned c = 0; c < count; c++)
            k->ms[c] = -1.0f; /* nothing timed: the size rule's */
    }
    for (unsigned c = 0; c < count; c++) {
        const bool pick_usable = k->ms[k->pick] >= 0.0f && !(k->rejected >> k->pick & 1);
        if (k->ms[c] >= 0.0f && !(k->rejected >> c & 1) && (!pick_usable || k->ms[c] < k->ms[k->pick]))
            k->pick = (int)c;
    }
    return k->pick;
}

bool model_cuda_kernel_choices(const struct model_cuda *e, char *out, size_t len)
{
    size_t at = 0;
#define PUT(...)                                                                                   \
    do {                                                                                          \
        int n_ = snprintf(at < len ? out + at : NULL, at < len ? len - at : 0, __VA_ARGS__);      \
        at += n_ > 0 ? (size_t)n_ : 0;                                                           \
    } while (0)
    PUT("{\"tuned\":%s", e->tune_kernels ? "true" : "false");
    for (int step = STEP_MLP_UP; step <= STEP_ATTENTION; step++) {
        PUT(",\"%s\":[", step == STEP_MLP_UP ? "mlp_up" : "attention");
        bool first = true;
        for (unsigned i = 0; i < e->nchoices; i++) {
            const struct kernel_choice *k = &e->choices[i];
            if (k->step != (enum choice_step)step)
                continue;
            if (step == STEP_MLP_UP)
                PUT("%s{\"rows_up_to\":%llu", first ? "" : ",", (unsigned long long)k->key);
            else
                PUT("%s{\"sequences_up_to\":%llu,\"length_up_to\":%llu,\"classify\":%s", first ? "" : ",",
                    (unsigned long long)(k->key >> 32), (unsigned long long)(k->key & 0xffffffffu) / 2 * 64,
                    k->key & 1 ? "true" : "false");
            PUT(",\"pick\":\"%s\",\"ms\":{", candidate_name(k->step, k->pick));
            bool first_ms = true;
            for (int c = 0; c < CHOICE_CANDIDATES; c++)
                if (k->ms[c] >= 0.0f) {
                    PUT("%s\"%s\":%.4f", first_ms ? "" : ",", candidate_name(k->step, c), k->ms[c]);
                    first_ms = false;
                }
            PUT("}");
            if (k->rejected) { /* timed, but their results disagreed with the reference's */
                PUT(",\"rejected\":[");
                bool first_rejected = true;
                for (int c = 0; c < CHOICE_CANDIDATES; c++)
                    if (k->rejected >> c & 1) {
                        PUT("%s\"%s\"", first_rejected ? "" : ",", candidate_name(k->step, c));
                        first_rejected = false;
                    }
                PUT("]");
            }
            PUT("}");
            first = false;
        }
        PUT("]");
    }
    PUT("}");
#undef PUT
    if (at >= len && len)
        out[len - 1] = '\0';
    return at < len;
}

/* Qwen2's up projection and SwiGLU into ffn by candidate c (MLP_PASS or 1 + a fused variant). */
static bool enqueue_mlp_up(struct model_cuda *e, const struct cu_layer *cl, int c, struct cu_profile *prof)
{
    const cudaStream_t s = e->stream;
    const enum cu_dtype T = e->t;
    const uint32_t n = e->rows, C = e->C;
    /* (norm_in_up: x itself, the norm's 1/rms applied to the products) */
    const void *in = e->norm_in_up ? e->x : e->xn;
    const float *row_scale = e->norm_in_up ? e->rowscale : NULL;
    if (c != MLP_PASS) {
        CK(cu_gemm_swiglu(e->ffn, e->F, in, C, cl->up_w, row_scale, n, C, e->F, (unsigned)c - 1, s),
           "gemm up + swiglu");
        cu_profile_mark(prof, "gemm up +swiglu", s);
        return true;
    }
    GEMM(T, T, e->ffn, e->FW, in, C, cl->up_w, NULL, n, C, e->FW, false, false);
    cu_profile_mark(prof, "gemm up", s);
    CK(e->swiglu_gemm ? cu_swiglu_fused_order(e->ffn, e->FW, e->ffn, T, row_scale, n, e->F, s)
                      : cu_swiglu(e->ffn, e->FW, e->ffn, T, row_scale, n, e->F, s),
       "swiglu");
    cu_profile_mark(prof, "swiglu", s);
    return true;
}

/* The prefill / classify attention of qkv into att: RoPE applied before, or by the grouped
 * kernel as it loads q and k (rope_inside). */
static bool enqueue_attention(struct model_cuda *e, enum cu_attn_impl impl, bool rope_inside)
{
    const float scale = 1.0f / sqrtf((float)e->d);
    if (rope_inside)
        CK(cu_attention_rope(e->att, e->H * e->d, e->qkv, e->QKV, e->t, e->d_seq_off, e->nseq, e->max_len, e->H,
                             e->KV, e->d, scale, e->rope_cos, e->rope_sin, impl, e->stream),
           "attention with rope");
    else
        CK(cu_attention(e->att, e->H * e->d, e->qkv, e->QKV, e->t, e->d_seq_off, e->nseq, e->max_len, e->H, e->KV,
                        e->d, scale, impl, e->stream),
           "attention");
    return true;
}

/* This pass's up projection (layer 0's operands time the candidates) and attention. */
static int mlp_up_for_pass(struct model_cuda *e, const struct cu_layer *layer0)
{
    if (!e->swiglu_gemm)
        return MLP_PASS;
    if (e->swiglu_always)
        return 1 + (int)e->swiglu_variant;
    return kernel_choice(e, STEP_MLP_UP, layer0, 1 + cu_gemm_swiglu_variants(),
                         e->rows >= SWIGLU_FUSED_MIN_ROWS ? 1 + (int)e->swiglu_variant : MLP_PASS);
}

/* (before layer 0's RoPE pass, which the choice may leave out) */
static int attention_for_pass(struct model_cuda *e)
{
    const int by_size = candidate_serves(e, STEP_ATTENTION, ATTN_GROUP) ? attention_by_size(e) : ATTN_HEAD;
    return kernel_choice(e, STEP_ATTENTION, NULL, ATTENTION_CANDIDATES, by_size);
}

/* Enqueues the stack and the head for the current launch shapes (e->nseq sequences, e->rows
 * rows, lengths ≤ e->max_len; a decode step: e->rows rows of one new token each, at the cache
 * rows d_kvrow). This is what a graph captures; the host waits for the stream only on the first
 * pass of a class of shapes, while it times the kernel choices' candidates. */
static bool enqueue(struct model_cuda *e, enum tail tail)
{
    const cudaStream_t s = e->stream;
    const enum cu_dtype T = e->t, XT = e->xt;
    const uint32_t n = e->rows, C = e->C, Hd = e->H * e->d, KVd = e->KV * e->d;
    const float eps = e->m->cfg.norm_eps, scale = 1.0f / sqrtf((float)e->d);
    const bool store_kv = tail == TAIL_PREFILL || tail == TAIL_DECODE;
    /* the classify pass stores no KV cache: q and k may stay unrotated in qkv */
    bool rope_inside = !e->gpt2 && e->attn_rope && tail == TAIL_CLASSIFY &&
                       cu_attention_fuses_rope(T, e->d, e->H, e->KV, e->max_len, e->QKV, Hd);
    enum cu_attn_impl attn = e->attn;
    int mlp_up = MLP_PASS;
    e->tail = tail;

    cu_profile_start(e->prof, s);
    CK(cu_embed(e->x, XT, e->wte, e->gpt2 ? e->wpe : NULL, T, e->d_tokens, e->d_pos, n, C, s), "embedding");
    cu_profile_mark(e->prof, "embedding", s);
    for (uint32_t l = 0; l < e->m->cfg.layers; l++) {
        const struct cu_layer *cl = &e->layers[l];
        CK(cu_norm(e->xn, T, e->x, XT, cl->ln1_w, cl->ln1_b, n, C, eps, e->norm, s), "norm 1");
        cu_profile_mark(e->prof, "norm", s);
        GEMM(T, T, e->qkv, e->QKV, e->xn, C, cl->qkv_w, cl->qkv_b, n, C, e->QKV, false, false);
        cu_profile_mark(e->prof, "gemm qkv", s);
        if (l == 0 && tail != TAIL_DECODE && e->attn_chosen) {
            const int c = attention_for_pass(e);
            if (c < 0)
                return false;
            attn = attention_candidates[c].impl;
            rope_inside = attention_candidates[c].rope_inside;
        }
        if (!e->gpt2 && !rope_inside) {
            CK(cu_rope(e->qkv, T, n, e->QKV, e->H + e->KV, e->d, e->d_pos, e->rope_cos,
                       e->rope_sin, s), "rope");
            cu_profile_mark(e->prof, "rope", s);
        }
        void *kc = NULL, *vc = NULL;
        if (store_kv) {
            kc = (char *)e->kcache + (size_t)l * e->kv_layer * e->ts;
            vc = (char *)e->vcache + (size_t)l * e->kv_layer * e->ts;
            CK(cu_kv_store(kc, vc, e->qkv, e->QKV, Hd, KVd, e->d_kvrow, n, T, s), "kv cache store");
            cu_profile_mark(e->prof, "kv store", s);
        }
        if (tail == TAIL_DECODE)
            CK(cu_decode_attention(e->att, Hd, e->qkv, e->QKV, kc, vc, e->d_kvrow, e->d_pos, n, e->H,
                                   e->KV, e->d, scale, T, s), "decode attention");
        else if (!enqueue_attention(e, attn, rope_inside))
            return false;
        cu_profile_mark(e->prof, "attention", s);
        GEMM(T, XT, e->x, C, e->att, Hd, cl->o_w, cl->o_b, n, Hd, C, true, false);
        cu_profile_mark(e->prof, "gemm o +residual", s);
        if (e->norm_in_up)
            CK(cu_rms_scale(e->rowscale, e->x, XT, n, C, eps, s), "norm 2");
        else
            CK(cu_norm(e->xn, T, e->x, XT, cl->ln2_w, cl->ln2_b, n, C, eps, e->norm, s), "norm 2");
        cu_profile_mark(e->prof, "norm", s);
        if (e->gpt2) {
            /* cuBLASLt's GELU epilogue is the tanh form but evaluates tanh its own way (~1e-3,
             * test_cuda_ops): bf16 rounds coarser than that; the fp32 engine uses the kernel */
            const bool erf = e->m->cfg.act == MODEL_ACT_GELU_ERF, fused = !erf && T == CU_BF16;
            GEMM(T, T, e->ffn, e->F, e->xn, C, cl->up_w, cl->up_b, n, C, e->F, false, fused);
            cu_profile_mark(e->prof, "gemm up", s);
            if (!fused) {
                CK(cu_gelu(e->ffn, e->ffn, T, (size_t)n * e->F, erf, s), "gelu");
                cu_profile_mark(e->prof, "gelu", s);
            }
        } else {
            if (l == 0 && (mlp_up = mlp_up_for_pass(e, cl)) < 0)
                return false;
            if (!enqueue_mlp_up(e, cl, mlp_up, e->prof))
                return false;
        }
        /* the hidden activations: [n, F] packed after the fused GEMM, the gate halves of
         * [n, 2F] rows after the separate SwiGLU */
        GEMM(T, XT, e->x, C, e->ffn, mlp_up != MLP_PASS ? e->F : e->FW, cl->down_w, cl->down_b, n, e->F, C, true,
             false);
        cu_profile_mark(e->prof, "gemm down +residual", s);
    }
    CK(cu_norm(e->xn, T, e->x, XT, e->lnf_w, e->lnf_b, n, C, eps, e->norm, s), "final norm");
    cu_profile_mark(e->prof, "norm", s);

    if (tail == TAIL_CLASSIFY) {
        const enum cu_pool_kind pk = (enum cu_pool_kind)e->m->cfg.pooling;
        CK(cu_pool(e->pooled32, e->pooled_t, e->xn, T, C, e->d_seq_off, e->nseq, pk, s), "pooling");
        GEMM(T, CU_F32, e->head32, C, e->pooled_t, C, e->cls_dense_w, e->cls_dense_b, e->nseq, C,
             C, false, false);
        CK(cu_tanh(e->head_t, T, e->head32, (size_t)e->nseq * C, s), "tanh");
        GEMM(T, CU_F32, e->scores, e->L, e->head_t, C, e->cls_out_w, e->cls_out_b, e->nseq, C,
             e->L, false, false);
        CK(cu_softmax_rows(e->scores, e->nseq, e->L, e->L, s), "softmax");
    } else if (tail == TAIL_DECODE) {
        /* one row per running sequence: the head reads xn as it is */
        GEMM(T, CU_F32, e->logits, e->Vp, e->xn, C, e->head, NULL, n, C, e->Vp, false, false);
    } else {
        CK(cu_gather_last(e->head_t, e->xn, T, C, e->d_seq_off, e->nseq, s), "last rows");
        GEMM(T, CU_F32, e->logits, e->Vp, e->head_t, C, e->head, NULL, e->nseq, C, e->Vp, false,
             false);
    }
    cu_profile_mark(e->prof, "head", s);
    return true;
}

/* ---- one call: pack, copy in, run (eager or graph) ---- */

/* Token bucket: at most 1/8 of padding above 128 rows, multiples of 16 below. */
static size_t token_bucket(size_t n)
{
    size_t step = 16;
    while (step * 8 < n)
        step <<= 1;
    return align_up(n, step);
}

/* A batch's launch shapes: nseq sequences (batch, or its bucket with graphs), rows packed rows,
 * lengths ≤ max_len. */
struct cu_shape {
    uint32_t batch, nseq, rows, max_len;
};

/* Checks a right-padded batch's size and lengths and gives its shapes. */
static bool batch_shape(struct model_cuda *e, const uint32_t *lengths, uint32_t batch, uint32_t seq,
                        struct cu_shape *sh)
{
    if (batch == 0 || batch > e->opt.max_batch || seq == 0 || seq > e->opt.max_seq) {
        fail(e, "cuda: batch %u × %u outside the engine's %u × %u", batch, seq, e->opt.max_batch,
             e->opt.max_seq);
        return false;
    }
    uint32_t off = 0, max_len = 0;
    for (uint32_t b = 0; b < batch; b++) {
        const uint32_t len = lengths[b];
        if (len == 0 || len > seq) {
            fail(e, "cuda: row %u has length %u (1..%u)", b, len, seq);
            return false;
        }
        off += len;
        max_len = len > max_len ? len : max_len;
    }
    *sh = (struct cu_shape){.batch = batch, .nseq = batch, .rows = off, .max_len = max_len};
    if (e->opt.graphs) {
        sh->nseq = pow2_at_least(batch);
        if (sh->nseq > e->opt.max_batch)
            sh->nseq = e->opt.max_batch;
        size_t rows = token_bucket(off);
        sh->rows = (uint32_t)(rows < e->max_tokens ? rows : e->max_tokens);
        uint32_t len_cap = (uint32_t)align_up(e->opt.max_seq, 64);
        sh->max_len = (uint32_t)align_up(max_len, 64);
        if (sh->max_len > len_cap)
            sh->max_len = len_cap;
    }
    return true;
}

/* Packs the batch into seq_off [nseq + 1], tokens and pos [rows] (host memory): sequence b's
 * tokens at rows seq_off[b]..; padding sequences empty, padding rows token 0 at position 0. */
static bool batch_fill(struct model_cuda *e, const uint32_t *ids, const uint32_t *lengths,
                       uint32_t seq, const struct cu_shape *sh, uint32_t *seq_off, uint32_t *tokens,
                       uint32_t *pos)
{
    uint32_t off = 0;
    for (uint32_t b = 0; b < sh->batch; b++) {
        const uint32_t len = lengths[b];
        seq_off[b] = off;
        for (uint32_t i = 0; i < len; i++) {
            const uint32_t id = ids[(size_t)b * seq + i];
            if (id >= e->V) {
                fail(e, "cuda: token id %u in row %u is outside the vocabulary (%u)", id, b, e->V);
                return false;
            }
            tokens[off + i] = id;
            pos[off + i] = i;
        }
        off += len;
    }
    for (uint32_t b = sh->batch; b <= sh->nseq; b++)
        seq_off[b] = off;
    for (uint32_t r = off; r < sh->rows; r++)
        tokens[r] = pos[r] = 0;
    return true;
}

static void set_shape(struct model_cuda *e, const struct cu_shape *sh)
{
    e->batch = sh->batch;
    e->nseq = sh->nseq;
    e->rows = sh->rows;
    e->max_len = sh->max_len;
}

/* The synchronous calls' packing: into h_seq_off, h_tokens, h_pos, shapes into e. */
static bool pack(struct model_cuda *e, const uint32_t *ids, const uint32_t *lengths,
                 uint32_t batch, uint32_t seq)
{
    struct cu_shape sh;
    if (!batch_shape(e, lengths, batch, seq, &sh) ||
        !batch_fill(e, ids, lengths, seq, &sh, e->h_seq_off, e->h_tokens, e->h_pos))
        return false;
    set_shape(e, &sh);
    return true;
}

static struct graph_slot *graph_find(struct model_cuda *e, enum tail tail)
{
    for (unsigned i = 0; i < GRAPH_SLOTS; i++) {
        struct graph_slot *g = &e->graphs[i];
        if (g->used && g->nseq == e->nseq && g->rows == e->rows && g->max_len == e->max_len &&
            g->tail == tail)
            return g;
    }
    return NULL;
}

/* Captures the current shapes into a graph (after an eager run of them, so every GEMM plan
 * exists and capture only records launches). */
static bool graph_capture(struct model_cuda *e, enum tail tail)
{
    unsigned slot = GRAPH_SLOTS;
    for (unsigned i = 0; i < GRAPH_SLOTS && slot == GRAPH_SLOTS; i++)
        if (!e->graphs[i].used)
            slot = i;
    if (slot == GRAPH_SLOTS) {
        slot = e->graph_next++ % GRAPH_SLOTS;
        cudaGraphExecDestroy(e->graphs[slot].exec);
        e->graphs[slot].used = false;
    }
    CK(cudaStreamBeginCapture(e->stream, cudaStreamCaptureModeThreadLocal), "begin capture");
    const bool ok = enqueue(e, tail);
    cudaGraph_t graph = NULL;
    cudaError_t ce = cudaStreamEndCapture(e->stream, &graph);
    if (!ok) {
        if (graph)
            cudaGraphDestroy(graph);
        return false;
    }
    CK(ce, "end capture");
    cudaGraphExec_t exec;
    ce = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    CK(ce, "instantiating a graph");
    e->graphs[slot] = (struct graph_slot){.used = true, .nseq = e->nseq, .rows = e->rows,
                                          .max_len = e->max_len, .tail = tail, .exec = exec};
    return true;
}

/* Collects the profile's marks of the last pass before a new pass starts over them. */
static bool profile_flush(struct model_cuda *e)
{
    if (!e->prof_pending)
        return true;
    e->prof_pending = false;
    CK(cudaStreamSynchronize(e->stream), "running the model");
    cu_profile_collect(e->prof, true);
    return true;
}

/* The current shapes' pass on the compute stream: a graph's replay, or an eager run (and, the
 * first time a bucket is seen with graphs, *capture set: graph_capture once the run is done). */
static bool launch(struct model_cuda *e, enum tail tail, bool *capture)
{
    *capture = false;
    if (!e->opt.graphs)
        return enqueue(e, tail);
    struct graph_slot *g = graph_find(e, tail);
    if (g) {
        CK(cudaGraphLaunch(g->exec, e->stream), "launching a graph");
        return true;
    }
    *capture = true;
    return enqueue(e, tail);
}

/* The synchronous calls' pass: the packed batch from h_* into the fixed buffers, then the pass,
 * on the compute stream behind any classify batch in flight (which left its outputs in its slot
 * before this pass can overwrite the arena). */
static bool run(struct model_cuda *e, enum tail tail)
{
    const cudaStream_t s = e->stream;
    CK(cudaSetDevice(e->opt.device), "selecting the device");
    if (!profile_flush(e))
        return false;
    CK(cudaMemcpyAsync(e->d_seq_off, e->h_seq_off, (e->nseq + 1) * sizeof(uint32_t),
                       cudaMemcpyHostToDevice, s), "copying the batch");
    CK(cudaMemcpyAsync(e->d_tokens, e->h_tokens, e->rows * sizeof(uint32_t),
                       cudaMemcpyHostToDevice, s), "copying the batch");
    CK(cudaMemcpyAsync(e->d_pos, e->h_pos, e->rows * sizeof(uint32_t), cudaMemcpyHostToDevice, s),
       "copying the batch");
    if (tail == TAIL_PREFILL || tail == TAIL_DECODE)
        CK(cudaMemcpyAsync(e->d_kvrow, e->h_kvrow, e->rows * sizeof(uint32_t),
                           cudaMemcpyHostToDevice, s), "copying the batch");
    bool capture;
    if (!launch(e, tail, &capture))
        return false;
    if (!capture)
        return true;
    /* first call of this bucket: run it, then record it for the next calls */
    CK(cudaStreamSynchronize(s), "running the model");
    return graph_capture(e, tail);
}

/* ---- classification, double-buffered ---- */

/* Enqueues slot sl's batch (packed in sl->h_in, shapes in sl) on the three streams; see the
 * file's comment for the events. */
static bool slot_enqueue(struct model_cuda *e, struct cu_slot *sl)
{
    const cudaStream_t s = e->stream;
    const size_t in_words = sl->nseq + 1 + 2 * (size_t)sl->rows;
    const size_t scores_n = (size_t)sl->batch * e->L, pooled_n = sl->pooled ? (size_t)sl->batch * e->C : 0;
    const uint32_t *d_tokens = sl->d_in + sl->nseq + 1, *d_pos = d_tokens + sl->rows;
    CK(cudaSetDevice(e->opt.device), "selecting the device");
    if (!profile_flush(e))
        return false;
    CK(cudaStreamWaitEvent(e->up, sl->consumed, 0), "ordering the upload");
    CK(cudaMemcpyAsync(sl->d_in, sl->h_in, in_words * sizeof(uint32_t), cudaMemcpyHostToDevice, e->up),
       "copying the batch");
    CK(cudaEventRecord(sl->uploaded, e->up), "recording the upload");

    CK(cudaStreamWaitEvent(s, sl->uploaded, 0), "ordering the pass");
    CK(cudaMemcpyAsync(e->d_seq_off, sl->d_in, (sl->nseq + 1) * sizeof(uint32_t),
                       cudaMemcpyDeviceToDevice, s), "copying the batch");
    CK(cudaMemcpyAsync(e->d_tokens, d_tokens, sl->rows * sizeof(uint32_t), cudaMemcpyDeviceToDevice, s),
       "copying the batch");
    CK(cudaMemcpyAsync(e->d_pos, d_pos, sl->rows * sizeof(uint32_t), cudaMemcpyDeviceToDevice, s),
       "copying the batch");
    CK(cudaEventRecord(sl->consumed, s), "recording the pass");
    e->batch = sl->batch;
    e->nseq = sl->nseq;
    e->rows = sl->rows;
    e->max_len = sl->max_len;
    bool capture;
    if (!launch(e, TAIL_CLASSIFY, &capture))
        return false;
    e->prof_pending = e->prof != NULL;
    CK(cudaStreamWaitEvent(s, sl->downloaded, 0), "ordering the pass");
    CK(cudaMemcpyAsync(sl->d_out, e->scores, scores_n * sizeof(float), cudaMemcpyDeviceToDevice, s),
       "copying the scores");
    if (pooled_n)
        CK(cudaMemcpyAsync(sl->d_out + scores_n, e->pooled32, pooled_n * sizeof(float),
                           cudaMemcpyDeviceToDevice, s), "copying the pooled states");
    CK(cudaEventRecord(sl->computed, s), "recording the pass");

    CK(cudaStreamWaitEvent(e->down, sl->computed, 0), "ordering the download");
    CK(cudaMemcpyAsync(sl->h_out, sl->d_out, (scores_n + pooled_n) * sizeof(float),
                       cudaMemcpyDeviceToHost, e->down), "copying the scores");
    CK(cudaEventRecord(sl->downloaded, e->down), "recording the download");
    if (!capture)
        return true;
    /* first call of this bucket: the eager pass above gives this batch's results; the graph
     * recorded now serves the next ones */
    CK(cudaStreamSynchronize(s), "running the model");
    return graph_capture(e, TAIL_CLASSIFY);
}

/* Waits for slot sl's batch and copies its results where its submit said. */
static bool slot_finish(struct model_cuda *e, struct cu_slot *sl)
{
    CK(cudaEventSynchronize(sl->downloaded), "running the model");
    if (e->prof_pending && e->inflight == 1) { /* the newest pass: nothing was enqueued after it */
        e->prof_pending = false;
        cu_profile_collect(e->prof, true);
    }
    const size_t scores_n = (size_t)sl->batch * e->L;
    memcpy(sl->scores, sl->h_out, scores_n * sizeof(float));
    if (sl->pooled)
        memcpy(sl->pooled, sl->h_out + scores_n, (size_t)sl->batch * e->C * sizeof(float));
    return true;
}

/* Finishes the oldest batch in flight and frees its slot (whether or not it succeeded: the batch
 * is claimed either way). */
static bool finish_oldest(struct model_cuda *e)
{
    const bool ok = slot_finish(e, &e->slot[e->oldest]);
    e->oldest = (e->oldest + 1) % CU_SLOTS;
    e->inflight--;
    return ok;
}

/* Finishes every batch in flight for later waits (which then return at once). On a failure the
 * failing batch stays in flight, to be reported again by its own wait. */
static bool finish_for_later(struct model_cuda *e, unsigned keep)
{
    while (e->inflight > keep) {
        if (!slot_finish(e, &e->slot[e->oldest]))
            return false;
        e->oldest = (e->oldest + 1) % CU_SLOTS;
        e->inflight--;
        e->unclaimed++;
    }
    return true;
}

bool model_cuda_classify_submit(struct model_cuda *e, const uint32_t *ids, const uint32_t *lengths,
                                uint32_t batch, uint32_t seq, float *pooled, float *scores)
{
    if (!e->has_cls) {
        fail(e, "cuda: the model has no classification head");
        return false;
    }
    if (!ids || !lengths || !scores) {
        fail(e, "cuda: classify needs ids, lengths and scores");
        return false;
    }
    struct cu_shape sh;
    if (!batch_shape(e, lengths, batch, seq, &sh))
        return false;
    /* a full pipeline: block on the oldest batch, whose results go where its submit said */
    if (!finish_for_later(e, CU_SLOTS - 1))
        return false;
    /* free: never used, or its batch finished (its download done, hence everything before it) */
    struct cu_slot *sl = &e->slot[(e->oldest + e->inflight) % CU_SLOTS];
    uint32_t *seq_off = sl->h_in, *tokens = seq_off + sh.nseq + 1, *pos = tokens + sh.rows;
    if (!batch_fill(e, ids, lengths, seq, &sh, seq_off, tokens, pos))
        return false;
    sl->batch = sh.batch;
    sl->nseq = sh.nseq;
    sl->rows = sh.rows;
    sl->max_len = sh.max_len;
    sl->pooled = pooled;
    sl->scores = scores;
    if (!slot_enqueue(e, sl)) {
        /* not submitted: let whatever part of it was enqueued finish before the slot is refilled */
        cudaStreamSynchronize(e->up);
        cudaStreamSynchronize(e->stream);
        cudaStreamSynchronize(e->down);
        return false;
    }
    e->inflight++;
    return true;
}

bool model_cuda_classify_wait(struct model_cuda *e)
{
    if (e->unclaimed) {
        e->unclaimed--;
        return true;
    }
    if (!e->inflight) {
        fail(e, "cuda: classify_wait without a batch in flight (one wait per successful submit)");
        return false;
    }
    return finish_oldest(e);
}

/* submit + wait of this batch alone: batches submitted earlier finish first (for their waits). */
bool model_cuda_classify(struct model_cuda *e, const uint32_t *ids, const uint32_t *lengths,
                         uint32_t batch, uint32_t seq, float *pooled, float *scores)
{
    return finish_for_later(e, 0) && model_cuda_classify_submit(e, ids, lengths, batch, seq, pooled, scores) &&
           finish_oldest(e);
}

bool model_cuda_last_logits(struct model_cuda *e, const uint32_t *ids, const uint32_t *lengths,
                            uint32_t batch, uint32_t seq, float *logits)
{
    if (!e->logits) {
        fail(e, "cuda: the engine was created without room for the LM head (lm_head option)");
        return false;
    }
    if (!pack(e, ids, lengths, batch, seq) || !run(e, TAIL_LAST_LOGITS))
        return false;
    const cudaStream_t s = e->stream;
    CK(cudaMemcpy2DAsync(e->h_out, (size_t)e->V * sizeof(float), e->logits,
                         (size_t)e->Vp * sizeof(float), (size_t)e->V * sizeof(float), batch,
                         cudaMemcpyDeviceToHost, s), "copying the logits");
    CK(cudaStreamSynchronize(s), "running the model");
    cu_profile_collect(e->prof, true);
    memcpy(logits, e->h_out, (size_t)batch * e->V * sizeof(float));
    return true;
}

/* ---- generation ---- */

/* The launch shapes of a decode step over n rows whose tokens, positions and cache rows the
 * caller has put in h_tokens, h_pos, h_kvrow [0, n): one sequence per row. With graphs the rows
 * are rounded up to a power of two; padding rows take token 0 at position 0 and store nothing. */
static void pack_decode(struct model_cuda *e, uint32_t n)
{
    e->batch = e->nseq = e->rows = n;
    e->max_len = 1;
    if (e->opt.graphs) {
        const uint32_t bucket = pow2_at_least(n);
        e->nseq = e->rows = bucket < e->opt.max_batch ? bucket : e->opt.max_batch;
    }
    for (uint32_t k = 0; k <= e->nseq; k++)
        e->h_seq_off[k] = k < n ? k : n;
    for (uint32_t r = n; r < e->rows; r++) {
        e->h_tokens[r] = e->h_pos[r] = 0;
        e->h_kvrow[r] = CU_KV_NONE;
    }
}

void cu_engine_set_generate_hook(struct model_cuda *e, cu_generate_hook fn, void *user)
{
    e->gen_hook = fn;
    e->gen_hook_user = user;
}

/* The next token of each of the first n rows of e->logits into e->h_next: greedy on the device
 * (only the ids come back), else the rows' logits to pinned memory and model_sample from row
 * gen_active[k]'s stream. Waits for the stream. */
static bool choose_tokens(struct model_cuda *e, uint32_t n, const struct model_sampling *sp)
{
    const cudaStream_t s = e->stream;
    const bool greedy = sp->temperature <= 0.0f;
    if (greedy) {
        CK(cu_argmax_rows(e->d_next, e->logits, n, e->V, e->Vp, s), "argmax");
        cu_profile_mark(e->prof, "token choice", s);
        CK(cudaMemcpyAsync(e->h_next, e->d_next, n * sizeof(uint32_t), cudaMemcpyDeviceToHost, s),
           "copying the tokens");
    }
    if (!greedy || e->gen_hook)
        CK(cudaMemcpy2DAsync(e->h_out, (size_t)e->V * sizeof(float), e->logits,
                             (size_t)e->Vp * sizeof(float), (size_t)e->V * sizeof(float), n,
                             cudaMemcpyDeviceToHost, s), "copying the logits");
    CK(cudaStreamSynchronize(s), "running the model");
    if (e->gen_hook)
        e->gen_hook(e->gen_hook_user, e->gen_active, n, e->h_out, e->V);
    for (uint32_t k = 0; !greedy && k < n; k++)
        e->h_next[k] = model_sample(e->h_out + (size_t)k * e->V, e->V, sp,
                                    &e->gen_rng[e->gen_active[k]], e->gen_cand);
    return true;
}

bool model_cuda_generate(struct model_cuda *e, const uint32_t *ids, const uint32_t *lengths,
                         uint32_t batch, uint32_t seq, const struct model_sampling *sampling,
                         uint32_t max_new, uint32_t *out, uint32_t *out_len)
{
    const struct model_sampling greedy = {0};
    const struct model_sampling *sp = sampling ? sampling : &greedy;
    if (!e->kv_cap) {
        fail(e, "cuda: the engine was created without a KV cache (kv_tokens option)");
        return false;
    }
    if (!ids || !lengths || !out || !out_len) {
        fail(e, "cuda: generate needs ids, lengths, out and out_len");
        return false;
    }
    if (max_new == 0 || (uint64_t)seq + max_new > e->kv_cap) {
        fail(e, "cuda: %u prompt positions and %u new tokens (at least 1) do not fit the KV "
             "cache's %u positions (kv_tokens)", seq, max_new, e->kv_cap);
        return false;
    }
    if (!pack(e, ids, lengths, batch, seq))
        return false;
    const uint32_t cap = e->kv_cap;
    /* the prompts' cache rows: sequence b in slot b from position 0 */
    for (uint32_t b = 0; b < batch; b++)
        for (uint32_t i = 0; i < lengths[b]; i++)
            e->h_kvrow[e->h_seq_off[b] + i] = b * cap + i;
    for (uint32_t r = e->h_seq_off[batch]; r < e->rows; r++)
        e->h_kvrow[r] = CU_KV_NONE;
    memset(out, 0, (size_t)batch * max_new * sizeof(uint32_t));
    for (uint32_t b = 0; b < batch; b++) {
        model_sample_rng(&e->gen_rng[b], sp, b);
        e->gen_pos[b] = lengths[b];
        e->gen_active[b] = b;
        out_len[b] = 0;
    }
    if (!run(e, TAIL_PREFILL) || !choose_tokens(e, batch, sp))
        return false;
    uint32_t nactive = batch;
    for (;;) {
        /* as model_generate: keep each row's token, drop the rows that are done */
        uint32_t still = 0;
        for (uint32_t k = 0; k < nactive; k++) {
            const uint32_t b = e->gen_active[k], tok = e->h_next[k];
            out[(size_t)b * max_new + out_len[b]++] = tok;
            if (out_len[b] < max_new && (sp->ignore_sep || tok != MODEL_TOKEN_SEP))
                e->gen_active[still++] = b;
        }
        nactive = still;
        cu_profile_collect(e->prof, nactive == 0);
        if (nactive == 0)
            return true;
        for (uint32_t k = 0; k < nactive; k++) {
            const uint32_t b = e->gen_active[k];
            e->h_tokens[k] = out[(size_t)b * max_new + out_len[b] - 1];
            e->h_pos[k] = e->gen_pos[b];
            e->h_kvrow[k] = b * cap + e->gen_pos[b];
            e->gen_pos[b]++;
        }
        pack_decode(e, nactive);
        if (!run(e, TAIL_DECODE) || !choose_tokens(e, nactive, sp))
            return false;
    }
}
