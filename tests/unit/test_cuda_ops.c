/* test_cuda_ops.c — every CUDA forward op against its CPU op (model/ops.c) on fresh random
 * inputs, in both element types, with outputs poisoned (NaN) before each run.
 *
 * Bounds, as max |got − ref| / max |ref| (test_cuda_util.h):
 * - fp32: 1e-5 for every op. Both sides compute the same formula in fp32; what differs is the
 *   order of sums (GEMM, norms, attention: relative error ~√K·2⁻²⁴ ≈ 1e-6 for K ≤ 1024) and the
 *   exp (the CPU's polynomial, 2 ulp; CUDA's expf, 2 ulp).
 * - bf16: inputs are rounded to bf16 on the host first and the CPU computes on those same
 *   values, so a bound covers only the op's own rounding. One rounding of an output to bf16 is a
 *   relative error ≤ 2⁻⁹ (1.95e-3) of that element; with headroom ×2: 4e-3 for the norms, GELU,
 *   SwiGLU, RoPE, tanh, the SIMT attention and GEMMs with bf16 output. fp32 outputs from bf16
 *   operands (the residual GEMMs, pooling, embeddings) carry only fp32 sum-order error: 1e-4 for
 *   GEMMs (tensor-core accumulation order), 1e-6 for the others. Tensor-core attention rounds the
 *   probabilities to bf16 before P·V (another ≤ 2⁻⁹ of max |v|, as FlashAttention-2 does) and the
 *   output once: 2⁻⁸ ≈ 3.9e-3, bound 1e-2. cuBLASLt's GELU epilogue evaluates tanh its own way:
 *   8e-3 in bf16; in fp32 it is reported against 1e-3 (which is why the fp32 engine applies GELU
 *   with its own kernel instead). The epilogue fallback (no cuBLASLt epilogue) rounds a bf16
 *   output twice, after the product and after the bias: 8e-3.
 * - a bf16 residual stream (the engine's residual_bf16): as an input of the norms it is just
 *   another input, rounded on the host first, so the norms keep the bounds of their output type.
 *   As the output of the embedding (one rounding of the fp32 sum wte + wpe) and of the residual
 *   GEMMs it is one more bf16 output: 4e-3 for the embedding; 8e-3 for a GEMM that adds into a
 *   bf16 y (measured 4.2e-3 on an H200, above one rounding: consistent with the product
 *   rounded to bf16 before y is added) and with the epilogue fallback, which adds the bias after
 *   rounding.
 * For comparison, llm.c's bf16 tests allow |ref|·0.079 per element. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>

#ifndef NETLM_HAVE_CUDA
int main(void)
{
    printf("skipped: built without CUDA\n");
    return 77;
}
#else

#include "model/model_internal.h"
#include "tests/unit/test_cuda_util.h"

static cudaStream_t stream;
static bool gemm_epilogue_fallback; /* bias and GELU by netlm's kernel after the product */


/* ---- GEMM (cuBLASLt) ---- */

static void gemm_case(struct cu_gemm *g, enum cu_dtype t, enum cu_dtype yt, size_t n, size_t in,
                      size_t out, bool bias, bool accumulate, bool gelu, struct test_rng *r)
{
    float *x = malloc(n * in * sizeof(float)), *w = malloc(out * in * sizeof(float));
    float *b = malloc(out * sizeof(float)), *y0 = malloc(n * out * sizeof(float));
    float *ref = malloc(n * out * sizeof(float)), *got = malloc(n * out * sizeof(float));
    test_fill(x, n * in, 1.0f, r);
    test_fill(w, out * in, 1.0f / sqrtf((float)in), r);
    test_fill(b, out, 0.5f, r);
    test_fill(y0, n * out, 1.0f, r);
    test_round(x, n * in, t);
    test_round(w, out * in, t);
    test_round(b, out, yt);
    test_round(y0, n * out, yt);
    void *dx = test_upload(x, n * in, t), *dw = test_upload(w, out * in, t);
    void *db = bias ? test_upload(b, out, yt) : NULL;
    void *dy = accumulate ? test_upload(y0, n * out, yt) : test_poisoned(n * out, yt);
    char err[256] = "";
    if (!cu_gemm_run(g, stream, t, yt, dy, out, dx, in, dw, db, n, in, out, accumulate, gelu, err, sizeof err))
        fail_msg("%s", err);
    test_download(got, dy, n * out, yt);

    memcpy(ref, y0, n * out * sizeof(float));
    op_matmul(ref, out, x, in, w, bias ? b : NULL, n, in, out, accumulate, 1);
    if (gelu)
        op_gelu(ref, n * out, MODEL_ACT_GELU_TANH, 1);
    char label[96];
    snprintf(label, sizeof label, "gemm %zux%zux%zu%s%s%s → %s", n, in, out, bias ? " +bias" : "",
             accumulate ? " +y" : "", gelu ? " gelu" : "", test_dtype_name(yt));
    double bound = yt == CU_BF16 ? 4e-3 : t == CU_BF16 ? 1e-4 : 1e-5;
    if (yt == CU_BF16 && (((bias || gelu) && gemm_epilogue_fallback) || accumulate))
        bound = 8e-3;
    if (gelu)
        bound = t == CU_BF16 ? 8e-3 : 1e-3;
    TEST_WITHIN(label, t, test_rel_err(got, ref, n * out), bound);
    cudaFree(dx), cudaFree(dw), cudaFree(db), cudaFree(dy);
    free(x), free(w), free(b), free(y0), free(ref), free(got);
}

static void test_gemm(void **state)
{
    (void)state;
    struct test_rng r = {1};
    char err[256];
    struct cu_gemm *g = cu_gemm_create((size_t)32 << 20, err, sizeof err);
    if (!g)
        fail_msg("%s", err);
    for (int epilogues = 1; epilogues >= 0; epilogues--) {
        cu_gemm_set_epilogues(g, epilogues);
        gemm_epilogue_fallback = !epilogues;
        printf(" epilogues %s\n", epilogues ? "on" : "off (fallback kernel)");
        for (int mi = 0; mi < 2; mi++) {
            const enum cu_dtype t = test_modes[mi];
            gemm_case(g, t, t, 37, 80, 52, false, false, false, &r);
            gemm_case(g, t, t, 256, 128, 384, true, false, false, &r);
            gemm_case(g, t, t, 129, 64, 256, true, false, true, &r);
            gemm_case(g, t, CU_F32, 200, 256, 64, true, true, false, &r);
            if (t == CU_BF16) /* a bf16 residual stream: C = D bf16 */
                gemm_case(g, t, CU_BF16, 200, 256, 64, true, true, false, &r);
            gemm_case(g, t, CU_F32, 5, 64, 7, true, false, false, &r);
            if (!test_cuda_quick())
                gemm_case(g, t, t, 1024, 768, 2304, true, false, false, &r);
        }
    }
    cu_gemm_free(g);
}

/* A saved environment variable, put back by env_restore (NULL: it was unset). */
static char *env_save(const char *name)
{
    const char *v = getenv(name);
    return v ? strdup(v) : NULL;
}

static void env_restore(const char *name, char *saved)
{
    if (saved)
        setenv(name, saved, 1);
    else
        unsetenv(name);
    free(saved);
}

/* cuBLASLt's algorithm chosen by timing the heuristic's candidates on the operands (gemm.c):
 * every usable candidate is timed once (the candidate log has one line per rank, a time each),
 * the timed runs leave D alone (a GEMM that adds into y adds once), and the plan then runs the
 * fastest. On the emulated GPU the heuristic offers four algorithms whose costs, timed by launch
 * count, are known (tests/emulate/cublaslt_emulated.cc: 3, 2, 1, 2 launches): the times logged
 * must be exactly those, each credited to its own rank, and the call after the plan was made must
 * cost one launch. On a GPU the candidates are cuBLASLt's own. */
static void test_gemm_tuning(void **state)
{
    (void)state;
    int driver = 0;
    const bool emulated = cudaDriverGetVersion(&driver) == cudaSuccess && driver == 0;
    static const char *vars[] = {"NETLM_CUDA_EMULATE_ALGOS", "NETLM_CUDA_EMULATE_TIMING", "NETLM_CUDA_GEMM_TUNE"};
    char *saved[3];
    for (int i = 0; i < 3; i++)
        saved[i] = env_save(vars[i]);
    setenv("NETLM_CUDA_EMULATE_ALGOS", "4", 1);
    setenv("NETLM_CUDA_EMULATE_TIMING", "launches", 1);
    setenv("NETLM_CUDA_GEMM_TUNE", "1", 1);
    char err[256];
    struct cu_gemm *g = cu_gemm_create((size_t)32 << 20, err, sizeof err);
    if (!g)
        fail_msg("%s", err);
    FILE *log = tmpfile();
    assert_non_null(log);
    cu_gemm_set_candidate_log(g, log);
    struct test_rng r = {3};
    const size_t n = 96, in = 64, out = 80;
    gemm_epilogue_fallback = false;
    gemm_case(g, CU_F32, CU_F32, n, in, out, true, true, false, &r); /* the plan: timed here */

    rewind(log);
    char line[1024];
    float logged[16];
    int lines = 0, max_rank = -1;
    while (fgets(line, sizeof line, log)) {
        int rank = -1;
        float ms = -2.0f;
        const char *c = strstr(line, "\"gemm_candidate\":"), *t = strstr(line, "\"ms\":");
        assert_true(c && t && sscanf(c, "\"gemm_candidate\":%d", &rank) == 1 && sscanf(t, "\"ms\":%f", &ms) == 1);
        assert_true(rank == lines && rank < 16); /* each rank once, in order */
        assert_true(ms >= 0.0f || ms == -1.0f);
        logged[rank] = ms;
        max_rank = rank;
        lines++;
    }
    printf("  %d candidates timed\n", lines);
    if (emulated) {
        static const float expect[4] = {3.0f, 2.0f, 1.0f, 2.0f};
        assert_int_equal(lines, 4);
        for (int i = 0; i < 4; i++)
            assert_float_equal(logged[i], expect[i], 0.0f);

        /* the same GEMM again: the plan's algorithm, the fastest */
        float *x = malloc(n * in * sizeof(float)), *w = malloc(out * in * sizeof(float));
        test_fill(x, n * in, 1.0f, &r);
        test_fill(w, out * in, 0.1f, &r);
        void *dx = test_upload(x, n * in, CU_F32), *dw = test_upload(w, out * in, CU_F32);
        void *dy = test_poisoned(n * out, CU_F32), *db = test_upload(w, out, CU_F32);
        cudaEvent_t ev[2];
        assert_int_equal(cudaEventCreate(&ev[0]), cudaSuccess);
        assert_int_equal(cudaEventCreate(&ev[1]), cudaSuccess);
        assert_int_equal(cudaEventRecord(ev[0], stream), cudaSuccess);
        if (!cu_gemm_run(g, stream, CU_F32, CU_F32, dy, out, dx, in, dw, db, n, in, out, true, false, err, sizeof err))
            fail_msg("%s", err);
        assert_int_equal(cudaEventRecord(ev[1], stream), cudaSuccess);
        float launches = 0.0f;
        assert_int_equal(cudaEventElapsedTime(&launches, ev[0], ev[1]), cudaSuccess);
        assert_float_equal(launches, 1.0f, 0.0f);
        cudaEventDestroy(ev[0]), cudaEventDestroy(ev[1]);
        cudaFree(dx), cudaFree(dw), cudaFree(dy), cudaFree(db);
        free(x), free(w);
    } else {
        assert_true(max_rank >= 0);
    }
    fclose(log);
    cu_gemm_free(g);
    for (int i = 0; i < 3; i++)
        env_restore(vars[i], saved[i]);
}

/* ---- the GEMM with the SwiGLU in its epilogue (gemm_swiglu.cu, Hopper only) ---- */

/* h = silu(s·x·Wgᵀ) ⊙ (s·x·Wuᵀ) against op_matmul + op_swiglu on the same bf16 inputs in fp32,
 * s a factor per row in [0.5, 2) (scaled) or 1 (the kernel without row_scale): the kernel rounds
 * only its output (the unfused path also rounds the product), so 4e-3. Written into a poisoned
 * buffer with rows and columns beyond h, which must stay NaN. */
static void gemm_swiglu_case(uint32_t n, uint32_t k, uint32_t f, uint32_t ldx, bool scaled, unsigned variant,
                             struct test_rng *r)
{
    const uint32_t ldh = f + 64, rows_after = 130;
    float *x = malloc((size_t)n * ldx * sizeof(float)), *w = malloc((size_t)2 * f * k * sizeof(float));
    float *dense = malloc((size_t)n * k * sizeof(float)), *ref = malloc((size_t)n * 2 * f * sizeof(float));
    const size_t out_count = (size_t)(n + rows_after) * ldh;
    float *got = malloc(out_count * sizeof(float)), *got_h = malloc((size_t)n * f * sizeof(float));
    float *ref_h = malloc((size_t)n * f * sizeof(float));
    test_fill(x, (size_t)n * ldx, 1.0f, r);
    test_fill(w, (size_t)2 * f * k, 1.0f / sqrtf((float)k), r);
    test_round(x, (size_t)n * ldx, CU_BF16);
    test_round(w, (size_t)2 * f * k, CU_BF16);
    float *row_scale = malloc((size_t)n * sizeof(float));
    for (uint32_t i = 0; i < n; i++) {
        row_scale[i] = scaled ? 0.5f + 1.5f * test_uniform(r) : 1.0f;
        for (uint32_t j = 0; j < k; j++)
            dense[(size_t)i * k + j] = x[(size_t)i * ldx + j] * row_scale[i];
    }
    float *d_row_scale = scaled ? test_upload(row_scale, n, CU_F32) : NULL;
    /* the kernel takes each half's rows in cu_gemm_swiglu_row's order, h in the model's */
    float *w_kernel = malloc((size_t)2 * f * k * sizeof(float));
    for (uint32_t row = 0; row < 2 * f; row++)
        memcpy(w_kernel + (size_t)row * k, w + ((size_t)row / f * f + cu_gemm_swiglu_row(row % f)) * k,
               k * sizeof(float));
    void *dx = test_upload(x, (size_t)n * ldx, CU_BF16), *dw = test_upload(w_kernel, (size_t)2 * f * k, CU_BF16);
    free(w_kernel);
    void *dh = test_poisoned(out_count, CU_BF16);
    CUDA_OK(cu_gemm_swiglu(dh, ldh, dx, ldx, dw, d_row_scale, n, k, f, variant, stream));
    test_download(got, dh, out_count, CU_BF16);

    op_matmul(ref, 2 * f, dense, k, w, NULL, n, k, 2 * f, false, 1);
    op_swiglu(ref, n, f, 1);
    size_t written_outside = 0;
    for (size_t i = 0; i < (size_t)n + rows_after; i++)
        for (size_t j = 0; j < ldh; j++) {
            const float v = got[i * ldh + j];
            if (i < n && j < f) {
                got_h[i * f + j] = v;
                ref_h[i * f + j] = ref[i * 2 * f + j];
            } else if (!isnan(v)) {
                written_outside++;
            }
        }
    char label[96];
    snprintf(label, sizeof label, "gemm+swiglu %ux%ux%u (ldx %u)%s", n, k, f, ldx, scaled ? ", rows scaled" : "");
    TEST_WITHIN(label, CU_BF16, test_rel_err(got_h, ref_h, (size_t)n * f), 4e-3);
    if (written_outside)
        fail_msg("%s: %zu elements written outside h", label, written_outside);
    cudaFree(dx), cudaFree(dw), cudaFree(dh), cudaFree(d_row_scale);
    free(x), free(w), free(dense), free(ref), free(got), free(got_h), free(ref_h), free(row_scale);
}

static void test_gemm_swiglu(void **state)
{
    (void)state;
    int device = 0;
    CUDA_OK(cudaGetDevice(&device));
    if (!cu_gemm_swiglu_supported(device, 64, 128)) {
        printf(" gemm+swiglu: skipped (not a compute capability 9.0 GPU)\n");
        return;
    }
    /* unsupported sizes are refused, not run */
    assert_false(cu_gemm_swiglu_supported(device, 64, 100));
    assert_false(cu_gemm_swiglu_supported(device, 60, 128));
    assert_int_equal(cu_gemm_swiglu_find("no such variant"), -1);
    for (unsigned v = 0; cu_gemm_swiglu_variant(v); v++) {
        assert_int_equal(cu_gemm_swiglu_find(cu_gemm_swiglu_variant(v)), (int)v);
        printf(" variant %s\n", cu_gemm_swiglu_variant(v));
        struct test_rng r = {7};
        gemm_swiglu_case(1, 64, 128, 64, false, v, &r);     /* one row: a tile of 127 zero-filled rows */
        gemm_swiglu_case(300, 200, 256, 200, true, v, &r);  /* rows and K not multiples of the tile */
        gemm_swiglu_case(129, 896, 384, 904, false, v, &r); /* Qwen2's K, x with a wider row stride */
        if (!test_cuda_quick())
            gemm_swiglu_case(4096, 896, 1024, 896, true, v, &r); /* more tiles than multiprocessors */
    }
    /* a variant that does not exist is refused, not launched */
    assert_non_null(cu_gemm_swiglu_variant(cu_gemm_swiglu_variants() - 1)); /* the count is the names' */
    assert_null(cu_gemm_swiglu_variant(cu_gemm_swiglu_variants()));
    assert_int_equal(cu_gemm_swiglu(NULL, 128, NULL, 64, NULL, NULL, 1, 64, 128, cu_gemm_swiglu_variants(), stream),
                     cudaErrorInvalidValue);
}

/* ---- embedding, norms, elementwise ---- */

static void test_embed(void **state)
{
    (void)state;
    struct test_rng r = {2};
    const uint32_t V = 50, P = 40, n = 70;
    /* C = 48: the 4-wide kernel; C = 50: the scalar one */
    for (int ci = 0; ci < 4; ci++) {
        const uint32_t C = ci < 2 ? 48 : 50;
        const enum cu_dtype t = test_modes[ci % 2];
        float *wte = malloc(V * C * sizeof(float)), *wpe = malloc(P * C * sizeof(float));
        float *ref = malloc(n * C * sizeof(float)), *got = malloc(n * C * sizeof(float));
        uint32_t tokens[70], pos[70];
        test_fill(wte, V * C, 0.02f, &r);
        test_fill(wpe, P * C, 0.02f, &r);
        test_round(wte, V * C, t);
        test_round(wpe, P * C, t);
        for (uint32_t i = 0; i < n; i++) {
            tokens[i] = (uint32_t)(test_uniform(&r) * V);
            pos[i] = (uint32_t)(test_uniform(&r) * P);
        }
        void *dwte = test_upload(wte, V * C, t), *dwpe = test_upload(wpe, P * C, t);
        uint32_t *dtok, *dpos;
        CUDA_OK(cudaMalloc((void **)&dtok, sizeof tokens));
        CUDA_OK(cudaMalloc((void **)&dpos, sizeof pos));
        CUDA_OK(cudaMemcpy(dtok, tokens, sizeof tokens, cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemcpy(dpos, pos, sizeof pos, cudaMemcpyHostToDevice));
        /* the residual stream x in fp32, then in bf16 (residual_bf16) */
        for (int xi = 0; xi < 2; xi++)
            for (int with_pos = 0; with_pos < 2; with_pos++) {
                const enum cu_dtype xt = test_modes[xi];
                void *dx = test_poisoned(n * C, xt);
                CUDA_OK(cu_embed(dx, xt, dwte, with_pos ? dwpe : NULL, t, dtok, dpos, n, C, stream));
                test_download(got, dx, n * C, xt);
                for (uint32_t i = 0; i < n; i++)
                    for (uint32_t j = 0; j < C; j++)
                        ref[i * C + j] = wte[tokens[i] * C + j] + (with_pos ? wpe[pos[i] * C + j] : 0.0f);
                char label[64];
                snprintf(label, sizeof label, "embed %s c=%u → x %s", with_pos ? "wte + wpe" : "wte", C,
                         test_dtype_name(xt));
                TEST_WITHIN(label, t, test_rel_err(got, ref, n * C), test_bound_for(xt, 1e-6, 4e-3));
                cudaFree(dx);
            }
        cudaFree(dwte), cudaFree(dwpe), cudaFree(dtok), cudaFree(dpos);
        free(wte), free(wpe), free(ref), free(got);
    }
}

static void test_norms(void **state)
{
    (void)state;
    struct test_rng r = {3};
    /* the register paths with vector loads (≤ 256, ≤ 512, ≤ 1024) and the three-pass one (37:
     * not a multiple of 4; > 1024) */
    const uint32_t cs[] = {64, 768, 37, 1000, 1500, 300};
    for (int mi = 0; mi < 2; mi++) {
        const enum cu_dtype t = test_modes[mi];
        for (unsigned ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
            const uint32_t n = 33, C = cs[ci];
            float *x = malloc(n * C * sizeof(float)), *w = malloc(C * sizeof(float)), *b = malloc(C * sizeof(float));
            float *xin = malloc(n * C * sizeof(float));
            float *ref = malloc(n * C * sizeof(float)), *got = malloc(n * C * sizeof(float));
            test_fill(x, n * C, 2.0f, &r);
            for (uint32_t i = 0; i < n * C; i++)
                x[i] += 0.5f; /* a mean away from zero, as a residual stream has */
            for (uint32_t j = 0; j < C; j++) {
                w[j] = 1.0f + 0.1f * test_normal(&r);
                b[j] = 0.1f * test_normal(&r);
            }
            float *dw = test_upload(w, C, CU_F32), *db = test_upload(b, C, CU_F32);
            const enum cu_norm_kind kinds[] = {CU_NORM_LAYER, CU_NORM_LAYER_UER, CU_NORM_RMS};
            const char *names[] = {"layernorm", "layernorm uer", "rmsnorm"};
            /* the residual stream x in fp32, then in bf16 (residual_bf16): a bf16 x is another
             * input, rounded here first, so the bound stays that of the output type */
            for (int xi = 0; xi < 2; xi++) {
                const enum cu_dtype xt = test_modes[xi];
                memcpy(xin, x, n * C * sizeof(float));
                test_round(xin, n * C, xt);
                void *dx = test_upload(xin, n * C, xt);
                for (unsigned k = 0; k < 3; k++) {
                    void *dy = test_poisoned(n * C, t);
                    CUDA_OK(cu_norm(dy, t, dx, xt, dw, db, n, C, 1e-5f, kinds[k], stream));
                    test_download(got, dy, n * C, t);
                    if (kinds[k] == CU_NORM_RMS)
                        op_rmsnorm(ref, xin, w, n, C, 1e-5f, 1);
                    else
                        op_layernorm(ref, xin, w, b, n, C, 1e-5f,
                                     kinds[k] == CU_NORM_LAYER_UER ? MODEL_NORM_UER : MODEL_NORM_STANDARD, 1);
                    char label[64];
                    snprintf(label, sizeof label, "%s c=%u, x %s", names[k], C, test_dtype_name(xt));
                    TEST_WITHIN(label, t, test_rel_err(got, ref, n * C), test_bound_for(t, 1e-5, 4e-3));
                    cudaFree(dy);
                }
                /* RMSNorm's factor alone (the norm folded into the product after it), fp32 out
                 * whatever t (so once), against double precision */
                if (mi == 0) {
                    float *d_scale = test_poisoned(n, CU_F32), scale[33], scale_ref[33];
                    CUDA_OK(cu_rms_scale(d_scale, dx, xt, n, C, 1e-5f, stream));
                    test_download(scale, d_scale, n, CU_F32);
                    for (uint32_t i = 0; i < n; i++) {
                        double ss = 0.0;
                        for (uint32_t j = 0; j < C; j++)
                            ss += (double)xin[i * C + j] * xin[i * C + j];
                        scale_ref[i] = (float)(1.0 / sqrt(ss / C + 1e-5));
                    }
                    char label[64];
                    snprintf(label, sizeof label, "rms scale c=%u, x %s", C, test_dtype_name(xt));
                    TEST_WITHIN(label, CU_F32, test_rel_err(scale, scale_ref, n), 1e-5);
                    cudaFree(d_scale);
                }
                cudaFree(dx);
            }
            cudaFree(dw), cudaFree(db);
            free(x), free(xin), free(w), free(b), free(ref), free(got);
        }
    }
}

/* the first f of each of n rows of 2f values, as packed [n, f] rows (malloc'd) */
static float *gate_halves(const float *rows, uint32_t n, uint32_t f)
{
    float *packed = malloc((size_t)n * f * sizeof(float));
    for (uint32_t i = 0; i < n; i++)
        memcpy(packed + (size_t)i * f, rows + (size_t)i * 2 * f, f * sizeof(float));
    return packed;
}

/* f = 200 takes the 16-byte vector kernels, an odd f the scalar ones, f = 224 (7 blocks of 32)
 * the SwiGLU pass in the fused GEMM's column order too */
static void elementwise_case(uint32_t f, struct test_rng *rng)
{
    struct test_rng r = *rng;
    const uint32_t n = 45;
    const size_t count = (size_t)n * 2 * f;
    for (int mi = 0; mi < 2; mi++) {
        const enum cu_dtype t = test_modes[mi];
        float *x = malloc(count * sizeof(float)), *ref = malloc(count * sizeof(float));
        float *got = malloc(count * sizeof(float));
        test_fill(x, count, 2.0f, &r);
        test_round(x, count, t);
        for (int erf = 0; erf < 2; erf++) {
            memcpy(ref, x, count * sizeof(float));
            op_gelu(ref, count, erf ? MODEL_ACT_GELU_ERF : MODEL_ACT_GELU_TANH, 1);
            for (int in_place = 1; in_place >= 0; in_place--) {
                void *d = test_upload(x, count, t), *y = in_place ? d : test_poisoned(count, t);
                CUDA_OK(cu_gelu(y, d, t, count, erf, stream));
                test_download(got, y, count, t);
                char label[64];
                snprintf(label, sizeof label, "gelu %s%s", erf ? "erf" : "tanh", in_place ? "" : " (y ≠ x)");
                TEST_WITHIN(label, t, test_rel_err(got, ref, count), test_bound_for(t, 1e-5, 4e-3));
                if (!in_place)
                    cudaFree(y);
                cudaFree(d);
            }
        }
        memcpy(ref, x, count * sizeof(float));
        op_swiglu(ref, n, f, 1);
        {
            void *d = test_upload(x, count, t);
            CUDA_OK(cu_swiglu(d, 2 * (size_t)f, d, t, NULL, n, f, stream));
            test_download(got, d, count, t);
            /* only the gate halves are outputs; the up halves must be untouched */
            TEST_WITHIN(f % 8 ? "swiglu (whole rows), odd f" : "swiglu (whole rows)", t,
                        test_rel_err(got, ref, count), test_bound_for(t, 1e-5, 4e-3));
            cudaFree(d);
        }
        float *ref_h = gate_halves(ref, n, f);
        if (f % 32 == 0) {
            /* gate and up columns in the fused GEMM's order (cu_gemm_swiglu_row), h in the
             * model's: into packed rows, and in place (the up halves left as they were) */
            float *ordered = malloc(count * sizeof(float));
            for (uint32_t i = 0; i < n; i++)
                for (uint32_t c = 0; c < 2 * f; c++)
                    ordered[(size_t)i * 2 * f + c] = x[(size_t)i * 2 * f + c / f * f + cu_gemm_swiglu_row(c % f)];
            void *d = test_upload(ordered, count, t), *h = test_poisoned((size_t)n * f, t);
            CUDA_OK(cu_swiglu_fused_order(h, f, d, t, NULL, n, f, stream));
            test_download(got, h, (size_t)n * f, t);
            TEST_WITHIN("swiglu (fused order, packed h)", t, test_rel_err(got, ref_h, (size_t)n * f),
                        test_bound_for(t, 1e-5, 4e-3));
            CUDA_OK(cu_swiglu_fused_order(d, 2 * (size_t)f, d, t, NULL, n, f, stream));
            test_download(got, d, count, t);
            for (uint32_t i = 0; i < n; i++)
                assert_memory_equal(got + (size_t)i * 2 * f + f, ordered + (size_t)i * 2 * f + f, f * sizeof(float));
            float *got_h = gate_halves(got, n, f);
            TEST_WITHIN("swiglu (fused order, in place)", t, test_rel_err(got_h, ref_h, (size_t)n * f),
                        test_bound_for(t, 1e-5, 4e-3));
            free(got_h), free(ordered);
            cudaFree(d), cudaFree(h);
        }
        {
            /* into packed [n, f] rows of another buffer */
            void *d = test_upload(x, count, t), *h = test_poisoned((size_t)n * f, t);
            CUDA_OK(cu_swiglu(h, f, d, t, NULL, n, f, stream));
            test_download(got, h, (size_t)n * f, t);
            TEST_WITHIN(f % 8 ? "swiglu (packed h), odd f" : "swiglu (packed h)", t,
                        test_rel_err(got, ref_h, (size_t)n * f), test_bound_for(t, 1e-5, 4e-3));
            /* gate and up of each row first scaled by its row_scale (the norm folded into the
             * product before) */
            float *row_scale = malloc(n * sizeof(float)), *scaled = malloc(count * sizeof(float));
            for (uint32_t i = 0; i < n; i++) {
                row_scale[i] = 0.5f + 1.5f * test_uniform(&r);
                for (uint32_t c = 0; c < 2 * f; c++)
                    scaled[(size_t)i * 2 * f + c] = x[(size_t)i * 2 * f + c] * row_scale[i];
            }
            op_swiglu(scaled, n, f, 1);
            float *scaled_h = gate_halves(scaled, n, f), *d_row_scale = test_upload(row_scale, n, CU_F32);
            CUDA_OK(cu_swiglu(h, f, d, t, d_row_scale, n, f, stream));
            test_download(got, h, (size_t)n * f, t);
            TEST_WITHIN("swiglu (packed h, rows scaled)", t, test_rel_err(got, scaled_h, (size_t)n * f),
                        test_bound_for(t, 1e-5, 4e-3));
            free(row_scale), free(scaled), free(scaled_h);
            cudaFree(d), cudaFree(h), cudaFree(d_row_scale);
        }
        free(ref_h);
        {
            float *dx = test_upload(x, count, CU_F32);
            void *dy = test_poisoned(count, t);
            CUDA_OK(cu_tanh(dy, t, dx, count, stream));
            test_download(got, dy, count, t);
            for (size_t i = 0; i < count; i++)
                ref[i] = tanhf(x[i]);
            TEST_WITHIN("tanh", t, test_rel_err(got, ref, count), test_bound_for(t, 1e-5, 4e-3));
            cudaFree(dx), cudaFree(dy);
        }
        free(x), free(ref), free(got);
    }
    *rng = r;
}

static void test_elementwise(void **state)
{
    (void)state;
    struct test_rng r = {4};
    elementwise_case(200, &r);
    elementwise_case(203, &r);
    elementwise_case(224, &r);
}

/* d = 64 takes the vector kernel, d = 20 (half 10) the scalar one */
static void rope_case(uint32_t d, struct test_rng *rng)
{
    struct test_rng r = *rng;
    const uint32_t n = 50, H = 6, KV = 2, P = 300, ld = (H + 2 * KV) * d, half = d / 2;
    float *cs = malloc(P * half * sizeof(float)), *sn = malloc(P * half * sizeof(float));
    op_rope_tables(cs, sn, P, d, 1e6);
    uint32_t pos[50];
    for (uint32_t i = 0; i < n; i++)
        pos[i] = i < 3 ? i : (uint32_t)(test_uniform(&r) * P);
    float *dcos = test_upload(cs, P * half, CU_F32), *dsin = test_upload(sn, P * half, CU_F32);
    uint32_t *dpos;
    CUDA_OK(cudaMalloc((void **)&dpos, sizeof pos));
    CUDA_OK(cudaMemcpy(dpos, pos, sizeof pos, cudaMemcpyHostToDevice));
    for (int mi = 0; mi < 2; mi++) {
        const enum cu_dtype t = test_modes[mi];
        float *x = malloc((size_t)n * ld * sizeof(float)), *ref = malloc((size_t)n * ld * sizeof(float));
        float *got = malloc((size_t)n * ld * sizeof(float));
        test_fill(x, (size_t)n * ld, 1.0f, &r);
        test_round(x, (size_t)n * ld, t);
        void *dx = test_upload(x, (size_t)n * ld, t);
        CUDA_OK(cu_rope(dx, t, n, ld, H + KV, d, dpos, dcos, dsin, stream));
        test_download(got, dx, (size_t)n * ld, t);
        memcpy(ref, x, (size_t)n * ld * sizeof(float));
        for (uint32_t i = 0; i < n; i++) /* q and k heads rotate; v stays */
            op_rope_apply(ref + (size_t)i * ld, H + KV, d, pos[i], cs, sn);
        TEST_WITHIN(d % 16 ? "rope (q, k rotated, v kept), d 20" : "rope (q, k rotated, v kept)", t,
                    test_rel_err(got, ref, (size_t)n * ld), test_bound_for(t, 1e-5, 4e-3));
        cudaFree(dx);
        free(x), free(ref), free(got);
    }
    cudaFree(dcos), cudaFree(dsin), cudaFree(dpos);
    free(cs), free(sn);
    *rng = r;
}

static void test_rope(void **state)
{
    (void)state;
    struct test_rng r = {5};
    rope_case(64, &r);
    rope_case(20, &r);
}

/* ---- attention ---- */

/* rope: cu_attention_rope, q and k unrotated in qkv: the reference rotates them first (by each
 * row's place in its sequence, rounded to t as the kernel keeps them) and qkv must come back
 * unchanged. */
static void attention_case_rope(enum cu_dtype t, enum cu_attn_impl impl, bool rope, uint32_t H, uint32_t KV,
                                uint32_t d, const uint32_t *lens, uint32_t nseq, struct test_rng *r)
{
    const uint32_t QKV = (H + 2 * KV) * d, Hd = H * d;
    uint32_t max_len;
    uint32_t *off = test_seq_offsets(lens, nseq, &max_len);
    const size_t N = off[nseq];
    float *qkv = malloc(N * QKV * sizeof(float)), *ref = malloc(N * Hd * sizeof(float));
    float *got = malloc(N * QKV * sizeof(float));
    test_fill(qkv, N * QKV, 1.0f, r);
    test_round(qkv, N * QKV, t);
    void *dqkv = test_upload(qkv, N * QKV, t), *dout = test_poisoned(N * Hd, t);
    uint32_t *doff;
    CUDA_OK(cudaMalloc((void **)&doff, (nseq + 1) * sizeof(uint32_t)));
    CUDA_OK(cudaMemcpy(doff, off, (nseq + 1) * sizeof(uint32_t), cudaMemcpyHostToDevice));
    const float scale = 1.0f / sqrtf((float)d);
    float *cs = NULL, *sn = NULL, *dcos = NULL, *dsin = NULL;
    if (rope) {
        cs = malloc((size_t)max_len * d / 2 * sizeof(float));
        sn = malloc((size_t)max_len * d / 2 * sizeof(float));
        op_rope_tables(cs, sn, max_len, d, 1e6);
        dcos = test_upload(cs, (size_t)max_len * d / 2, CU_F32);
        dsin = test_upload(sn, (size_t)max_len * d / 2, CU_F32);
        assert_true(cu_attention_fuses_rope(t, d, H, KV, max_len, QKV, Hd));
        CUDA_OK(cu_attention_rope(dout, Hd, dqkv, QKV, t, doff, nseq, max_len, H, KV, d, scale, dcos, dsin, impl,
                                  stream));
        test_download(got, dqkv, N * QKV, t);
        assert_int_equal(memcmp(got, qkv, N * QKV * sizeof(float)), 0); /* q, k left unrotated */
        for (uint32_t b = 0; b < nseq; b++)
            for (uint32_t i = 0; i < lens[b]; i++)
                op_rope_apply(qkv + (size_t)(off[b] + i) * QKV, H + KV, d, i, cs, sn);
        test_round(qkv, N * QKV, t);
    } else {
        CUDA_OK(cu_attention(dout, Hd, dqkv, QKV, t, doff, nseq, max_len, H, KV, d, scale, impl, stream));
    }
    test_download(got, dout, N * Hd, t);

    /* CPU: per sequence and head, contiguous K and V of the head's kv head, op_attend_block */
    float *k = malloc((size_t)max_len * d * sizeof(float)), *v = malloc((size_t)max_len * d * sizeof(float));
    float *scores = malloc((size_t)max_len * max_len * sizeof(float));
    for (uint32_t b = 0; b < nseq; b++)
        for (uint32_t h = 0; h < H; h++) {
            const uint32_t kvh = h / (H / KV);
            for (uint32_t i = 0; i < lens[b]; i++) {
                const float *row = qkv + (size_t)(off[b] + i) * QKV;
                memcpy(k + (size_t)i * d, row + (size_t)(H + kvh) * d, d * sizeof(float));
                memcpy(v + (size_t)i * d, row + (size_t)(H + KV + kvh) * d, d * sizeof(float));
            }
            op_attend_block(ref + (size_t)off[b] * Hd + (size_t)h * d, Hd,
                            qkv + (size_t)off[b] * QKV + (size_t)h * d, QKV, k, v, 0, lens[b], d,
                            scale, scores, NULL);
        }
    const bool tc = (rope || impl != CU_ATTN_SIMT) && cu_attention_uses_tensor_cores(t, d);
    const bool wgmma = cu_attn_impl_wgmma(impl) && cu_attention_wg_serves(d);
    const char *kernel = !tc                                ? "simt"
                         : wgmma                            ? (impl == CU_ATTN_WG_OVERLAP ? "wgmma overlap"
                                                               : impl == CU_ATTN_WG_PAIR  ? "wgmma pair"
                                                                                          : "wgmma group")
                         : impl == CU_ATTN_TC_GROUP || rope ? "tc group"
                         : impl != CU_ATTN_AUTO             ? "tc group (no wgmma)"
                                                            : "tc";
    char label[96];
    snprintf(label, sizeof label, "attention %s%s h%u/kv%u d%u max_len %u", kernel, rope ? " + rope" : "", H, KV, d,
             max_len);
    TEST_WITHIN(label, t, test_rel_err(got, ref, N * Hd), t == CU_F32 ? 1e-5 : tc ? 1e-2 : 4e-3);
    cudaFree(dqkv), cudaFree(dout), cudaFree(doff), cudaFree(dcos), cudaFree(dsin);
    free(off), free(qkv), free(ref), free(got), free(k), free(v), free(scores), free(cs), free(sn);
}

static void attention_case(enum cu_dtype t, enum cu_attn_impl impl, uint32_t H, uint32_t KV, uint32_t d,
                           const uint32_t *lens, uint32_t nseq, struct test_rng *r)
{
    attention_case_rope(t, impl, false, H, KV, d, lens, nseq, r);
}

static void test_attention(void **state)
{
    (void)state;
    struct test_rng r = {6};
    const bool quick = test_cuda_quick();
    /* lengths around the 16-, 32- and 64-row tiles, a single token, and long ones */
    const uint32_t lens_short[] = {1, 15, 16, 17, 63, 64, 65, 130, 3};
    const uint32_t lens_long[] = {1024, 700, 257};
    const uint32_t lens_256[] = {256, 255, 193, 64, 1, 129};
    const struct { uint32_t H, KV, d; } shapes[] = {
        {4, 4, 64}, {6, 2, 64}, {4, 1, 32}, {2, 2, 128}, {3, 3, 48}, {4, 2, 20}, {14, 2, 64},
    };
    for (int mi = 0; mi < 2; mi++) {
        const enum cu_dtype t = test_modes[mi];
        /* the grouped kernel's limit: 4 key tiles, Qwen2.5-0.5B's heads; with RoPE inside (bf16) */
        attention_case(t, CU_ATTN_TC_GROUP, 14, 2, 64, lens_256, 6, &r);
        attention_case(t, CU_ATTN_TC_GROUP, 8, 1, 128, lens_256, 6, &r);
        /* Hopper's warpgroup products (head_dim 64 on compute capability 9.0), the grouped
         * kernel elsewhere */
        attention_case(t, CU_ATTN_WG_GROUP, 14, 2, 64, lens_256, 6, &r);
        attention_case(t, CU_ATTN_WG_GROUP, 6, 2, 64, lens_short, 9, &r);
        attention_case(t, CU_ATTN_WG_GROUP, 8, 1, 128, lens_256, 6, &r);
        /* and with each tile's softmax beside the tile before's P·V: 1 to 4 key tiles */
        attention_case(t, CU_ATTN_WG_OVERLAP, 14, 2, 64, lens_256, 6, &r);
        attention_case(t, CU_ATTN_WG_OVERLAP, 6, 2, 64, lens_short, 9, &r);
        /* and two query tiles a block: pairs whose second tile lies past a sequence, odd tile counts */
        attention_case(t, CU_ATTN_WG_PAIR, 14, 2, 64, lens_256, 6, &r);
        attention_case(t, CU_ATTN_WG_PAIR, 6, 2, 64, lens_short, 9, &r);
        if (t == CU_BF16) {
            attention_case_rope(t, CU_ATTN_TC_GROUP, true, 14, 2, 64, lens_256, 6, &r);
            attention_case_rope(t, CU_ATTN_TC_GROUP, true, 6, 2, 32, lens_short, 9, &r);
            attention_case_rope(t, CU_ATTN_TC_GROUP, true, 8, 1, 128, lens_short, 9, &r);
            attention_case_rope(t, CU_ATTN_WG_GROUP, true, 14, 2, 64, lens_256, 6, &r);
            attention_case_rope(t, CU_ATTN_WG_GROUP, true, 6, 2, 64, lens_short, 9, &r);
            attention_case_rope(t, CU_ATTN_WG_OVERLAP, true, 14, 2, 64, lens_256, 6, &r);
            attention_case_rope(t, CU_ATTN_WG_OVERLAP, true, 6, 2, 64, lens_short, 9, &r);
            attention_case_rope(t, CU_ATTN_WG_PAIR, true, 14, 2, 64, lens_256, 6, &r);
            attention_case_rope(t, CU_ATTN_WG_PAIR, true, 6, 2, 64, lens_short, 9, &r);
            /* where the grouped kernel does not serve: refused */
            assert_false(cu_attention_fuses_rope(t, 64, 4, 4, 128, 768, 256));  /* no grouped heads */
            assert_false(cu_attention_fuses_rope(t, 64, 14, 2, 257, 1152, 896)); /* over 256 tokens */
            assert_false(cu_attention_fuses_rope(t, 48, 6, 2, 128, 480, 288));  /* head_dim 48 */
            assert_false(cu_attention_fuses_rope(CU_F32, 64, 14, 2, 128, 1152, 896));
        }
        for (unsigned s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            attention_case(t, CU_ATTN_AUTO, shapes[s].H, shapes[s].KV, shapes[s].d, lens_short, 9, &r);
            if (t == CU_BF16 && cu_attention_uses_tensor_cores(t, shapes[s].d))
                attention_case(t, CU_ATTN_SIMT, shapes[s].H, shapes[s].KV, shapes[s].d, lens_short, 9, &r);
            /* one block per kv head's group of query heads (max_len ≤ 256 here); elsewhere the
             * same as AUTO */
            attention_case(t, CU_ATTN_TC_GROUP, shapes[s].H, shapes[s].KV, shapes[s].d, lens_short, 9, &r);
        }
        if (!quick) {
            attention_case(t, CU_ATTN_AUTO, 12, 12, 64, lens_long, 3, &r);
            attention_case(t, CU_ATTN_AUTO, 14, 2, 64, lens_long, 3, &r);
            attention_case(t, CU_ATTN_TC_GROUP, 14, 2, 64, lens_long, 3, &r); /* over 256: AUTO's kernel */
        }
    }
}

/* ---- pooling, head pieces ---- */

static void test_pool_softmax(void **state)
{
    (void)state;
    struct test_rng r = {7};
    const uint32_t lens[] = {5, 1, 40, 17}, nseq = 4, C = 96, N = 63;
    uint32_t off[6] = {0, 5, 6, 46, 63, 63}; /* and an empty padding sequence at the end */
    uint32_t *doff;
    CUDA_OK(cudaMalloc((void **)&doff, sizeof off));
    CUDA_OK(cudaMemcpy(doff, off, sizeof off, cudaMemcpyHostToDevice));
    for (int mi = 0; mi < 2; mi++) {
        const enum cu_dtype t = test_modes[mi];
        float *xn = malloc((size_t)N * C * sizeof(float)), *ref = malloc((nseq + 1) * C * sizeof(float));
        float *got = malloc((nseq + 1) * C * sizeof(float));
        test_fill(xn, (size_t)N * C, 1.0f, &r);
        test_round(xn, (size_t)N * C, t);
        void *dxn = test_upload(xn, (size_t)N * C, t);
        const char *names[] = {"pool mean", "pool first", "pool last", "pool max"};
        for (int k = 0; k < 4; k++) {
            float *d32 = test_poisoned((nseq + 1) * C, CU_F32);
            void *dt = test_poisoned((nseq + 1) * C, t);
            CUDA_OK(cu_pool(d32, dt, dxn, t, C, doff, nseq + 1, (enum cu_pool_kind)k, stream));
            for (uint32_t b = 0; b <= nseq; b++)
                for (uint32_t j = 0; j < C; j++) {
                    const uint32_t len = b < nseq ? lens[b] : 0;
                    const float *rows = xn + (size_t)off[b] * C + j;
                    double v = 0.0;
                    if (len && k == 0) {
                        for (uint32_t i = 0; i < len; i++)
                            v += rows[(size_t)i * C];
                        v /= len;
                    } else if (len && k == 1) {
                        v = rows[0];
                    } else if (len && k == 2) {
                        v = rows[(size_t)(len - 1) * C];
                    } else if (len) {
                        v = rows[0];
                        for (uint32_t i = 1; i < len; i++)
                            v = rows[(size_t)i * C] > v ? rows[(size_t)i * C] : v;
                    }
                    ref[b * C + j] = (float)v;
                }
            test_download(got, d32, (nseq + 1) * C, CU_F32);
            TEST_WITHIN(names[k], t, test_rel_err(got, ref, (nseq + 1) * C), 1e-6);
            test_download(got, dt, (nseq + 1) * C, t);
            TEST_WITHIN("  (as T)", t, test_rel_err(got, ref, (nseq + 1) * C), test_bound_for(t, 1e-6, 4e-3));
            cudaFree(d32), cudaFree(dt);
        }
        /* last rows for the LM head */
        void *dl = test_poisoned((nseq + 1) * C, t);
        CUDA_OK(cu_gather_last(dl, dxn, t, C, doff, nseq + 1, stream));
        test_download(got, dl, (nseq + 1) * C, t);
        for (uint32_t b = 0; b <= nseq; b++)
            for (uint32_t j = 0; j < C; j++)
                ref[b * C + j] = b < nseq ? xn[(size_t)(off[b + 1] - 1) * C + j] : 0.0f;
        TEST_WITHIN("gather last rows", t, test_rel_err(got, ref, (nseq + 1) * C), 0.0);
        cudaFree(dl), cudaFree(dxn);
        free(xn), free(ref), free(got);
    }
    cudaFree(doff);

    /* softmax rows, fp32 only (the scores always are) */
    const uint32_t rows = 9, n = 1000;
    float *x = malloc(rows * n * sizeof(float)), *ref = malloc(rows * n * sizeof(float));
    float *got = malloc(rows * n * sizeof(float));
    test_fill(x, rows * n, 5.0f, &r);
    float *dx = test_upload(x, rows * n, CU_F32);
    CUDA_OK(cu_softmax_rows(dx, rows, n, n, stream));
    test_download(got, dx, rows * n, CU_F32);
    memcpy(ref, x, rows * n * sizeof(float));
    for (uint32_t i = 0; i < rows; i++)
        op_softmax(ref + (size_t)i * n, n);
    TEST_WITHIN("softmax rows", CU_F32, test_rel_err(got, ref, rows * n), 1e-5);
    cudaFree(dx);
    free(x), free(ref), free(got);
}

int main(void)
{
    /* the launchers take a stream; the legacy default stream keeps the host copies ordered */
    stream = 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm),      cmocka_unit_test(test_gemm_tuning), cmocka_unit_test(test_embed),
        cmocka_unit_test(test_norms),     cmocka_unit_test(test_elementwise),
        cmocka_unit_test(test_rope),      cmocka_unit_test(test_attention),
        cmocka_unit_test(test_pool_softmax), cmocka_unit_test(test_gemm_swiglu),
    };
    return TEST_CUDA_RUN(tests);
}

#endif
