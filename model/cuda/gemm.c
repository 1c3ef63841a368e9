/* gemm.c — the projections on cuBLASLt: y = x·Wᵀ (+ bias) (+ y) (then GELU), row-major as the
 * CPU's op_matmul, with a plan cache so a steady state makes no descriptor or heuristic calls.
 *
 * Row-major y[n, out] is column-major yᶜ[out, n]; x[n, in] is xᶜ[in, n]; W[out, in] is
 * Wᶜ[in, out]. So yᶜ = Wᶜᵀ · xᶜ: A = W with op T (stored in × out, ld in), B = x with op N
 * (in × n, ld ldx), C = D = y (out × n, ld ldy). The epilogue bias has D's row count (out), which
 * is what nn.Linear's bias is. The residual add of the transformer is this GEMM with beta = 1 and
 * C = D = the fp32 residual stream: no separate pass over it.
 *
 * The backward GEMMs (cu_gemm_dx, cu_gemm_dw), in the same terms (dy[n, out] is dyᶜ[out, n], ld
 * ldy; x[n, in] is xᶜ[in, n], ld ldx; W[out, in] is Wᶜ[in, out], ld in):
 * - dx[n, in] = dy · W: dxᶜ[in, n] = Wᶜ · dyᶜ, i.e. dxᶜ[i, r] = Σ_o W[o, i]·dy[r, o]. A = W with
 *   op N (in × out, ld in), B = dy with op N (out × n, ld ldy), C = D = dx (in × n, ld lddx);
 *   m = in, n = n, k = out.
 * - dW[out, in] += dyᵀ · x: dWᶜ[in, out] = xᶜ · dyᶜᵀ, i.e. dWᶜ[i, o] = Σ_r x[r, i]·dy[r, o].
 *   A = x with op N (in × n, ld ldx), B = dy with op T (stored out × n, ld ldy), C = D = dW
 *   (in × out, ld in), beta = 1; m = in, n = out, k = n (the rows).
 * db += Σ_rows dy is not cuBLASLt's BGRADB epilogue (which stores rather than adds, so it would
 * need a scratch vector and an add anyway, and says nothing of its summation order): it is
 * cu_gemm_bias_grad (gemm_kernels.cu), fixed chunks of rows in a fixed order, its partials in the
 * cuBLASLt workspace (free between GEMMs on the one stream).
 *
 * Precision: CUBLAS_COMPUTE_32F in both modes. With fp32 operands that is true fp32 (TF32 only
 * with _FAST_TF32, never asked for); with bf16 operands the products accumulate in fp32 and D is
 * rounded once to its type. When cuBLASLt offers no algorithm with a bias or GELU epilogue for a
 * shape, the plan runs without it and cu_bias_act applies it (same formula as the CPU).
 *
 * Algorithm choice: the heuristic's first answer is often not the fastest for the skinny shapes
 * of small batches (few output tiles, one wave on part of the chip). When a plan is made outside
 * a graph capture, its top few candidates are timed on the real operands, writing into a
 * scratch output (a residual GEMM must not add twice), and the fastest is kept.
 * NETLM_CUDA_GEMM_TUNE=0 keeps the heuristic's first. Within a process a plan keeps its algorithm,
 * so a GEMM repeats bit for bit (cuBLAS: same bits for the same algorithm on the same GPU model);
 * across processes the timing may pick another algorithm: bit-for-bit repeatable training runs
 * want NETLM_CUDA_GEMM_TUNE=0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/cuda/cuda_internal.h"

#define CU_GEMM_PLANS 96
/* the heuristic's first 16: on the H200 the gate/up GEMM's fastest was its 7th of 8 (7 % ahead
 * of the first), so the ranks past 8 may hold faster ones too */
#define TUNE_CANDIDATES 16

enum { EPI_NONE = 0, EPI_BIAS = 1, EPI_GELU = 2 }; /* bit set */

/* Everything that shapes a plan's descriptors, in cuBLASLt's column-major terms: D[m, n] =
 * op(A)[m, k] · op(B)[k, n] (+ C, C = D). The heuristic assumes 256-byte aligned A, B, C and D
 * unless told less, so the pointers' alignments (bytes, at most 256) are part of the key; the
 * forward passes 256 as it always has. */
struct gemm_key {
    cublasOperation_t opa, opb;
    enum cu_dtype abt, dt; /* A and B; C and D */
    size_t m, n, k, lda, ldb, ldd;
    uint32_t align_a, align_b, align_d;
    int epi;
};

struct cu_gemm_plan {
    bool used;
    struct gemm_key key;
    /* value */
    bool fallback; /* cuBLASLt had no algorithm with the epilogue: apply it with cu_bias_act */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
};

struct cu_gemm {
    cublasLtHandle_t lt;
    void *workspace;
    size_t workspace_bytes;
    bool epilogues;
    bool tune;
    void *tune_out; /* scratch output of the timed candidates */
    size_t tune_bytes;
    cudaEvent_t tune_ev[TUNE_CANDIDATES + 1]; /* cu_time_rounds' */
    FILE *candidate_log; /* each timed candidate as a JSON line (cu_gemm_set_candidate_log) */
    unsigned next; /* round-robin victim when the cache is full */
    struct cu_gemm_plan plans[CU_GEMM_PLANS];
};

static cudaDataType_t lt_type(enum cu_dtype t) { return t == CU_BF16 ? CUDA_R_16BF : CUDA_R_32F; }

static bool key_eq(const struct gemm_key *a, const struct gemm_key *b)
{
    return a->opa == b->opa && a->opb == b->opb && a->abt == b->abt && a->dt == b->dt &&
           a->m == b->m && a->n == b->n && a->k == b->k && a->lda == b->lda && a->ldb == b->ldb &&
           a->ldd == b->ldd && a->align_a == b->align_a && a->align_b == b->align_b &&
           a->align_d == b->align_d && a->epi == b->epi;
}

/* The largest power of two ≤ 256 that divides the address (NULL: 256). */
static uint32_t ptr_align(const void *p)
{
    const uintptr_t a = (uintptr_t)p;
    uint32_t al = 256;
    while (al > 1 && (a & (al - 1)))
        al >>= 1;
    return al;
}

struct cu_gemm *cu_gemm_create(size_t workspace_bytes, char *err, size_t errlen)
{
    struct cu_gemm *g = calloc(1, sizeof(*g));
    if (!g) {
        snprintf(err, errlen, "cuda: out of memory");
        return NULL;
    }
    cublasStatus_t st = cublasLtCreate(&g->lt);
    if (st != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "cuda: cublasLtCreate failed (status %d)", (int)st);
        free(g);
        return NULL;
    }
    cudaError_t ce = cudaMalloc(&g->workspace, workspace_bytes);
    if (ce != cudaSuccess) {
        snprintf(err, errlen, "cuda: cannot allocate the %zu MiB cuBLASLt workspace: %s",
                 workspace_bytes >> 20, cudaGetErrorString(ce));
        cublasLtDestroy(g->lt);
        free(g);
        return NULL;
    }
    g->workspace_bytes = workspace_bytes;
    const char *env = getenv("NETLM_CUDA_NO_EPILOGUE");
    g->epilogues = !(env && env[0] == '1');
    env = getenv("NETLM_CUDA_GEMM_TUNE");
    g->tune = !(env && env[0] == '0');
    /* each timed candidate as a JSON line on stderr (gpu_check.sh's bench-netlm: which ranks win
     * for the engine's shapes) */
    env = getenv("NETLM_CUDA_GEMM_CANDIDATES");
    if (env && env[0] == '1')
        g->candidate_log = stderr;
    for (int i = 0; i <= TUNE_CANDIDATES && g->tune; i++)
        if (cudaEventCreate(&g->tune_ev[i]) != cudaSuccess) {
            cudaGetLastError();
            g->tune = false;
        }
    return g;
}

static void plan_release(struct cu_gemm_plan *p)
{
    if (!p->used)
        return;
    if (p->a)
        cublasLtMatrixLayoutDestroy(p->a);
    if (p->b)
        cublasLtMatrixLayoutDestroy(p->b);
    if (p->c)
        cublasLtMatrixLayoutDestroy(p->c);
    if (p->desc)
        cublasLtMatmulDescDestroy(p->desc);
    memset(p, 0, sizeof(*p));
}

void cu_gemm_free(struct cu_gemm *g)
{
    if (!g)
        return;
    for (unsigned i = 0; i < CU_GEMM_PLANS; i++)
        plan_release(&g->plans[i]);
    cudaFree(g->workspace);
    cudaFree(g->tune_out);
    for (int i = 0; i <= TUNE_CANDIDATES; i++)
        if (g->tune_ev[i])
            cudaEventDestroy(g->tune_ev[i]);
    cublasLtDestroy(g->lt);
    free(g);
}

void cu_gemm_set_epilogues(struct cu_gemm *g, bool enabled)
{
    g->epilogues = enabled;
    for (unsigned i = 0; i < CU_GEMM_PLANS; i++)
        plan_release(&g->plans[i]);
}

void cu_gemm_set_tuning(struct cu_gemm *g, bool enabled)
{
    g->tune = enabled && g->tune_ev[TUNE_CANDIDATES]; /* all made, or tuning was off from the start */
    for (unsigned i = 0; i < CU_GEMM_PLANS; i++)
        plan_release(&g->plans[i]);
}

void cu_gemm_set_candidate_log(struct cu_gemm *g, FILE *log) { g->candidate_log = log; }

/* The timed candidates: res[c].algo writing the scratch with beta = 0, since D of the real call
 * may be an input (the residual, dx or dW accumulated onto), which a timed run must never change. */
struct tune_call {
    struct cu_gemm *g;
    const struct cu_gemm_plan *p;
    const cublasLtMatmulHeuristicResult_t *res;
    const void *a, *b;
    cudaStream_t s;
};

static bool tune_run(void *ctx, int candidate)
{
    const struct tune_call *c = ctx;
    const float alpha = 1.0f, beta = 0.0f;
    return cublasLtMatmul(c->g->lt, c->p->desc, &alpha, c->a, c->p->a, c->b, c->p->b, &beta, c->g->tune_out,
                          c->p->c, c->g->tune_out, c->p->c, &c->res[candidate].algo, c->g->workspace,
                          c->g->workspace_bytes, c->s) == CUBLAS_STATUS_SUCCESS;
}

/* One JSON line: the candidate's time and what cuBLASLt says of its kernel (the enum values of
 * cublasLt.h: cublasLtMatmulTile_t, cublasLtMatmulStages_t, cublasLtClusterShape_t, ...), so
 * that the tile, pipeline depth and cluster shape of the fastest kernels for a shape are known. */
static void log_candidate(FILE *f, const struct cu_gemm_plan *p, int index, const cublasLtMatmulAlgo_t *algo, float ms)
{
    static const struct {
        const char *name;
        cublasLtMatmulAlgoConfigAttributes_t attr;
        size_t bytes;
    } fields[] = {
        {"algo_id", CUBLASLT_ALGO_CONFIG_ID, 4},           {"tile_id", CUBLASLT_ALGO_CONFIG_TILE_ID, 4},
        {"stages_id", CUBLASLT_ALGO_CONFIG_STAGES_ID, 4},  {"cluster_id", CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, 2},
        {"inner_id", CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID, 2}, {"swizzle", CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, 4},
        {"splitk", CUBLASLT_ALGO_CONFIG_SPLITK_NUM, 4},
    };
    fprintf(f, "{\"side\":\"netlm\",\"gemm_candidate\":%d,\"m\":%zu,\"n\":%zu,\"k\":%zu,\"ms\":%.4f", index,
            p->key.m, p->key.n, p->key.k, ms);
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        uint32_t v32 = 0;
        uint16_t v16 = 0;
        size_t written = 0;
        void *v = fields[i].bytes == 2 ? (void *)&v16 : (void *)&v32;
        if (cublasLtMatmulAlgoConfigGetAttribute(algo, fields[i].attr, v, fields[i].bytes, &written) ==
            CUBLAS_STATUS_SUCCESS)
            fprintf(f, ",\"%s\":%u", fields[i].name, fields[i].bytes == 2 ? (unsigned)v16 : (unsigned)v32);
    }
    fprintf(f, "}\n");
    fflush(f);
}

/* Of the heuristic's candidates res[0..found), the fastest on these operands (index). Any
 * failure keeps the heuristic's first: tuning is an optimisation, never an error. */
static int tune_pick(struct cu_gemm *g, const struct cu_gemm_plan *p,
                     const cublasLtMatmulHeuristicResult_t *res, int found, const void *a,
                     const void *b, cudaStream_t s)
{
    enum cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    if (!g->tune || found < 2 || !a || !b || cudaStreamIsCapturing(s, &cap) != cudaSuccess ||
        cap != cudaStreamCaptureStatusNone)
        return 0;
    /* D's n columns of ldd elements: a cudaMalloc'd scratch is at least as aligned as D */
    const size_t bytes = p->key.n * p->key.ldd * cu_dtype_size(p->key.dt);
    if (bytes > g->tune_bytes) {
        cudaFree(g->tune_out);
        g->tune_out = NULL;
        g->tune_bytes = 0;
        if (cudaMalloc(&g->tune_out, bytes) != cudaSuccess ||
            cudaMemsetAsync(g->tune_out, 0, bytes, s) != cudaSuccess) {
            cudaGetLastError();
            cudaFree(g->tune_out);
            g->tune_out = NULL;
            return 0;
        }
        g->tune_bytes = bytes;
    }
    /* each once untimed (a failing one drops out), then all of them in rounds (cu_time_rounds) */
    struct tune_call call = {g, p, res, a, b, s};
    float ms[TUNE_CANDIDATES];
    for (int i = 0; i < found; i++) {
        ms[i] = -1.0f; /* kept when the timing fails */
        if (res[i].state == CUBLAS_STATUS_SUCCESS && cu_run_once(g->tune_ev[0], s, tune_run, &call, i) == cudaSuccess)
            ms[i] = 0.0f;
        cudaGetLastError();
    }
    if (cu_time_rounds(g->tune_ev, s, tune_run, &call, found, ms) != cudaSuccess)
        for (int i = 0; i < found; i++)
            ms[i] = -1.0f;
    int best = 0;
    float best_ms = -1.0f;
    for (int i = 0; i < found; i++) {
        if (g->candidate_log && res[i].state == CUBLAS_STATUS_SUCCESS)
            log_candidate(g->candidate_log, p, i, &res[i].algo, ms[i]);
        if (ms[i] >= 0.0f && (best_ms < 0.0f || ms[i] < best_ms)) {
            best = i;
            best_ms = ms[i];
        }
    }
    cudaGetLastError(); /* a failed candidate leaves nothing behind for the next launch */
    return best;
}

/* Descriptors for epilogue epi; then the heuristic's candidates, the fastest kept. */
static cublasStatus_t plan_build(struct cu_gemm *g, struct cu_gemm_plan *p, int epi,
                                 const void *bias, const void *a, const void *b, cudaStream_t s)
{
    cublasStatus_t st;
    const struct gemm_key *k = &p->key;
    if ((st = cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F)) ||
        (st = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &k->opa, sizeof k->opa)) ||
        (st = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &k->opb, sizeof k->opb)))
        return st;
    if (epi) {
        cublasLtEpilogue_t e = epi == (EPI_BIAS | EPI_GELU) ? CUBLASLT_EPILOGUE_GELU_BIAS
                             : epi == EPI_GELU            ? CUBLASLT_EPILOGUE_GELU
                                                          : CUBLASLT_EPILOGUE_BIAS;
        if ((st = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &e, sizeof e)))
            return st;
        if (epi & EPI_BIAS) {
            /* the heuristic reads the pointer's alignment; every bias the engine passes is
             * 256-byte aligned, so the plan stays valid for the other layers' biases */
            int32_t bt = (int32_t)lt_type(k->dt);
            if ((st = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt)) ||
                (st = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias)))
                return st;
        }
    }
    /* stored shapes: op N keeps A as m × k and B as k × n; op T stores their transposes */
    const bool na = k->opa == CUBLAS_OP_N, nb = k->opb == CUBLAS_OP_N;
    if ((st = cublasLtMatrixLayoutCreate(&p->a, lt_type(k->abt), na ? k->m : k->k,
                                         na ? k->k : k->m, (int64_t)k->lda)) ||
        (st = cublasLtMatrixLayoutCreate(&p->b, lt_type(k->abt), nb ? k->k : k->n,
                                         nb ? k->n : k->k, (int64_t)k->ldb)) ||
        (st = cublasLtMatrixLayoutCreate(&p->c, lt_type(k->dt), k->m, k->n, (int64_t)k->ldd)))
        return st;
    cublasLtMatmulPreference_t pref;
    if ((st = cublasLtMatmulPreferenceCreate(&pref)))
        return st;
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                              &g->workspace_bytes, sizeof g->workspace_bytes);
    /* less than the default 256-byte alignment: only algorithms that cope (C is D) */
    if (!st && (k->align_a < 256 || k->align_b < 256 || k->align_d < 256)) {
        const cublasLtMatmulPreferenceAttributes_t at[4] = {
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
        const uint32_t *al[4] = {&k->align_a, &k->align_b, &k->align_d, &k->align_d};
        for (int i = 0; i < 4 && !st; i++)
            st = cublasLtMatmulPreferenceSetAttribute(pref, at[i], al[i], sizeof *al[i]);
    }
    cublasLtMatmulHeuristicResult_t res[TUNE_CANDIDATES];
    int found = 0;
    if (!st)
        st = cublasLtMatmulAlgoGetHeuristic(g->lt, p->desc, p->a, p->b, p->c, p->c, pref,
                                            g->tune ? TUNE_CANDIDATES : 1, res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st)
        return st;
    if (found < 1 || res[0].state != CUBLAS_STATUS_SUCCESS)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    p->algo = res[tune_pick(g, p, res, found, a, b, s)].algo;
    return CUBLAS_STATUS_SUCCESS;
}

static struct cu_gemm_plan *plan_get(struct cu_gemm *g, const struct gemm_key *key,
                                     const void *bias, const void *a, const void *b,
                                     cudaStream_t s, cublasStatus_t *status)
{
    for (unsigned i = 0; i < CU_GEMM_PLANS; i++) {
        struct cu_gemm_plan *p = &g->plans[i];
        if (p->used && key_eq(&p->key, key))
            return p;
    }
    unsigned slot = CU_GEMM_PLANS;
    for (unsigned i = 0; i < CU_GEMM_PLANS && slot == CU_GEMM_PLANS; i++)
        if (!g->plans[i].used)
            slot = i;
    if (slot == CU_GEMM_PLANS) {
        slot = g->next++ % CU_GEMM_PLANS;
        plan_release(&g->plans[slot]);
    }
    struct cu_gemm_plan *p = &g->plans[slot];
    const int epi = key->epi;
    *p = (struct cu_gemm_plan){.used = true, .key = *key};
    cublasStatus_t st = plan_build(g, p, g->epilogues ? epi : EPI_NONE, bias, a, b, s);
    if (st == CUBLAS_STATUS_SUCCESS && epi && !g->epilogues)
        p->fallback = true;
    if (st != CUBLAS_STATUS_SUCCESS && epi && g->epilogues) {
        /* no algorithm with this epilogue: the plain GEMM and the fallback kernel */
        plan_release(p);
        *p = (struct cu_gemm_plan){.used = true, .key = *key, .fallback = true};
        st = plan_build(g, p, EPI_NONE, NULL, a, b, s);
    }
    if (st != CUBLAS_STATUS_SUCCESS) {
        plan_release(p);
        *status = st;
        return NULL;
    }
    return p;
}

/* D = A·B (+ D when beta = 1) for key, with its epilogue's bias (NULL without one): the plan,
 * which says whether the caller still owes the epilogue (fallback), or NULL with err set; what
 * names the GEMM in errors. */
static struct cu_gemm_plan *gemm_exec(struct cu_gemm *g, cudaStream_t s, const struct gemm_key *key,
                                      const void *bias, const void *a, const void *b, void *d,
                                      float beta, const char *what, char *err, size_t errlen)
{
    cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
    struct cu_gemm_plan *p = plan_get(g, key, bias, a, b, s, &st);
    if (!p) {
        snprintf(err, errlen,
                 "cuda: no cuBLASLt algorithm for the %s GEMM m %zu n %zu k %zu (%s → %s): status %d",
                 what, key->m, key->n, key->k, key->abt == CU_BF16 ? "bf16" : "fp32",
                 key->dt == CU_BF16 ? "bf16" : "fp32", (int)st);
        return NULL;
    }
    if ((key->epi & EPI_BIAS) && !p->fallback) {
        st = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
        if (st) {
            snprintf(err, errlen, "cuda: setting the %s GEMM's bias failed: status %d", what, (int)st);
            return NULL;
        }
    }
    const float alpha = 1.0f;
    st = cublasLtMatmul(g->lt, p->desc, &alpha, a, p->a, b, p->b, &beta, d, p->c, d, p->c,
                        &p->algo, g->workspace, g->workspace_bytes, s);
    if (st) {
        snprintf(err, errlen, "cuda: cublasLtMatmul (%s) m %zu n %zu k %zu failed: status %d", what,
                 key->m, key->n, key->k, (int)st);
        return NULL;
    }
    return p;
}

bool cu_gemm_run(struct cu_gemm *g, cudaStream_t s, enum cu_dtype abt, enum cu_dtype yt, void *y,
                 size_t ldy, const void *x, size_t ldx, const void *w, const void *bias, size_t n,
                 size_t in, size_t out, bool accumulate, bool gelu, char *err, size_t errlen)
{
    if (n == 0 || out == 0)
        return true;
    if (gelu && accumulate) {
        snprintf(err, errlen, "cuda: GEMM with GELU cannot accumulate");
        return false;
    }
    const int epi = (bias ? EPI_BIAS : 0) | (gelu ? EPI_GELU : 0);
    /* yᶜ[out, n] = Wᶜᵀ · xᶜ (the header comment) */
    const struct gemm_key key = {.opa = CUBLAS_OP_T, .opb = CUBLAS_OP_N, .abt = abt, .dt = yt,
                                 .m = out, .n = n, .k = in, .lda = in, .ldb = ldx, .ldd = ldy,
                                 .align_a = 256, .align_b = 256, .align_d = 256, .epi = epi};
    const struct cu_gemm_plan *p = gemm_exec(g, s, &key, bias, w, x, y, accumulate ? 1.0f : 0.0f,
                                             "forward", err, errlen);
    if (!p)
        return false;
    if (p->fallback && epi) {
        cudaError_t ce = cu_bias_act(y, yt, ldy, bias, (uint32_t)n, (uint32_t)out, gelu, s);
        if (ce != cudaSuccess) {
            snprintf(err, errlen, "cuda: bias/GELU kernel: %s", cudaGetErrorString(ce));
            return false;
        }
    }
    return true;
}

bool cu_gemm_dx(struct cu_gemm *g, cudaStream_t s, enum cu_dtype abt, enum cu_dtype dxt, void *dx,
                size_t lddx, const void *dy, size_t ldy, const void *w, size_t n, size_t in,
                size_t out, bool accumulate, char *err, size_t errlen)
{
    if (n == 0 || in == 0 || out == 0)
        return true;
    /* dxᶜ[in, n] = Wᶜ[in, out] · dyᶜ[out, n] (the header comment) */
    const struct gemm_key key = {.opa = CUBLAS_OP_N, .opb = CUBLAS_OP_N, .abt = abt, .dt = dxt,
                                 .m = in, .n = n, .k = out, .lda = in, .ldb = ldy, .ldd = lddx,
                                 .align_a = ptr_align(w), .align_b = ptr_align(dy),
                                 .align_d = ptr_align(dx), .epi = EPI_NONE};
    return gemm_exec(g, s, &key, NULL, w, dy, dx, accumulate ? 1.0f : 0.0f, "dx", err, errlen) != NULL;
}

bool cu_gemm_dw(struct cu_gemm *g, cudaStream_t s, enum cu_dtype abt, float *dw, float *db,
                const void *dy, size_t ldy, const void *x, size_t ldx, size_t n, size_t in,
                size_t out, char *err, size_t errlen)
{
    if (n == 0 || in == 0 || out == 0)
        return true;
    /* dWᶜ[in, out] += xᶜ[in, n] · (dyᶜ[out, n])ᵀ (the header comment) */
    const struct gemm_key key = {.opa = CUBLAS_OP_N, .opb = CUBLAS_OP_T, .abt = abt, .dt = CU_F32,
                                 .m = in, .n = out, .k = n, .lda = ldx, .ldb = ldy, .ldd = in,
                                 .align_a = ptr_align(x), .align_b = ptr_align(dy),
                                 .align_d = ptr_align(dw), .epi = EPI_NONE};
    if (!gemm_exec(g, s, &key, NULL, x, dy, dw, 1.0f, "dW", err, errlen))
        return false;
    if (db) {
        /* after the GEMM on the same stream, so its workspace is free for the partials */
        cudaError_t ce = cu_gemm_bias_grad(db, dy, abt, ldy, n, out, (float *)g->workspace,
                                           g->workspace_bytes / sizeof(float), s);
        if (ce != cudaSuccess) {
            snprintf(err, errlen, "cuda: bias gradient kernel (%zu rows × %zu): %s", n, out,
                     cudaGetErrorString(ce));
            return false;
        }
    }
    return true;
}
