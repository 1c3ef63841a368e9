/* test_cuda_backward.c — every CUDA training kernel of train_kernels.cu against its CPU
 * counterpart on fresh random inputs, in both element types where the kernel has one: the norm,
 * GELU, SwiGLU and RoPE backward against model/ops.c, softmax + cross-entropy against
 * op_softmax_xent, AdamW and the gradient norm against train/optim.c (train_adamw_step called
 * on a two-tensor struct model), the embedding, tanh and pooling backward against loops written
 * here in double (the arithmetic of train/grad.c). Written outputs are poisoned (NaN) first;
 * accumulated ones (+=) start from random values and the scratch they use is poisoned instead.
 * Shapes include widths that are not multiples of any block size (37, 1000, 1500, V = 50021).
 *
 * Bounds, as max |got − ref| / max |ref| (test_cuda_util.h):
 * - fp32 outputs, same formula on both sides: 1e-5. What differs is the order of the sums (a
 *   norm row's statistics, Σ over 300 rows of dw and db, the 50k-wide softmax sum: ~√K·2⁻²⁴ ≤
 *   1e-6), FMA contraction, and exp (CUDA's expf against the CPU's 2-ulp polynomial). The norm
 *   backward's CPU statistics are in double, the GPU's in fp32: ≤ √C·2⁻²⁴ ≈ 2e-6 at C = 1500.
 *   AdamW: the same fp32 expression per element; its only difference is FMA contraction (1 ulp
 *   per step, 5 steps).
 * - bf16 inputs and fp32 outputs (norm backward dx/dw/db, tanh backward): the host rounds the
 *   inputs to bf16 and the CPU computes on the same values, so the bound is fp32's, 1e-5.
 * - bf16 outputs (GELU, SwiGLU, RoPE backward, dxn of pooling): one rounding to bf16 of each
 *   element, ≤ 2⁻⁹ = 1.95e-3 of it; with ×2 headroom 4e-3, as test_cuda_ops.c.
 * - embedding backward against double sums: each table row adds at most ~40 fp32 rows, ≤ 40·2⁻²⁴
 *   ≈ 2.4e-6 worst case: 1e-5. Against the CPU's own fp32 loop (rows in order onto the table)
 *   the kernel adds the same values in the same order: 0 (bit for bit).
 * - pooling backward (fp32) against double: one fp32 division for the mean: 1e-6.
 * - gradient norm: both sum squares in double, in different orders: n·2⁻⁵³ ≈ 1.1e-10 worst case
 *   at n = 10⁶: 1e-9. Clipping above the norm leaves g unchanged: 0. Clipping below it scales by
 *   a coef from norms that may differ in the last bits (1 ulp of the coef): 1e-6, and so does
 *   the plain scaling checked after it (one exact-order fp32 multiply on both sides).
 * - determinism: norm backward, embedding backward and the gradient norm run twice and must agree
 *   bit for bit. */
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

#include "model/cuda/cuda_train.h"
#include "model/model_internal.h"
#include "tests/unit/test_cuda_util.h"
#include "train/train.h"

static cudaStream_t stream;


static uint32_t *upload_u32(const uint32_t *x, size_t n)
{
    uint32_t *dev = NULL;
    CUDA_OK(cudaMalloc((void **)&dev, n * sizeof(uint32_t) + 4));
    CUDA_OK(cudaMemcpy(dev, x, n * sizeof(uint32_t), cudaMemcpyHostToDevice));
    return dev;
}

static float *clone_f32(const float *x, size_t n)
{
    float *c = malloc(n * sizeof(float) + 4);
    memcpy(c, x, n * sizeof(float));
    return c;
}

/* ---- norms ---- */

static void norm_backward_case(enum cu_dtype t, uint32_t n, uint32_t C, enum cu_norm_kind kind,
                               struct test_rng *r)
{
    const size_t nc = (size_t)n * C;
    float *x = malloc(nc * sizeof(float)), *dy = malloc(nc * sizeof(float)), *dx0 = malloc(nc * sizeof(float));
    float *w = malloc(C * sizeof(float)), *dw0 = malloc(C * sizeof(float)), *db0 = malloc(C * sizeof(float));
    float *got = malloc(nc * sizeof(float)), *got2 = malloc(nc * sizeof(float));
    test_fill(x, nc, 2.0f, r);
    for (size_t i = 0; i < nc; i++)
        x[i] += 0.5f;
    test_fill(dy, nc, 1.0f, r);
    test_round(dy, nc, t);
    test_fill(dx0, nc, 1.0f, r);
    test_fill(dw0, C, 1.0f, r);
    test_fill(db0, C, 1.0f, r);
    for (uint32_t j = 0; j < C; j++)
        w[j] = 1.0f + 0.1f * test_normal(r);

    float *rdx = clone_f32(dx0, nc), *rdw = clone_f32(dw0, C), *rdb = clone_f32(db0, C);
    bool ok = kind == CU_NORM_RMS
                  ? op_rmsnorm_backward(rdx, rdw, dy, x, w, n, C, 1e-5f, 1)
                  : op_layernorm_backward(rdx, rdw, rdb, dy, x, w, n, C, 1e-5f,
                                          kind == CU_NORM_LAYER_UER ? MODEL_NORM_UER : MODEL_NORM_STANDARD, 1);
    assert_true(ok);

    float *ddy = test_upload(dy, nc, t), *dxx = test_upload(x, nc, CU_F32), *dww = test_upload(w, C, CU_F32);
    const size_t scratch_n = cu_norm_backward_scratch_floats(n, C);
    uint32_t dw_bits[2][1500];
    for (int run = 0; run < 2; run++) {
        float *ddx = test_upload(dx0, nc, CU_F32), *ddw = test_upload(dw0, C, CU_F32), *ddb = test_upload(db0, C, CU_F32);
        float *scratch = test_poisoned(scratch_n, CU_F32);
        CUDA_OK(cu_norm_backward(ddx, ddw, ddb, ddy, t, dxx, dww, n, C, 1e-5f, kind, scratch, stream));
        const char *names[] = {"layernorm", "layernorm uer", "rmsnorm"};
        char label[80];
        test_download(got, ddx, nc, CU_F32);
        if (run == 0) {
            snprintf(label, sizeof label, "%s bwd dx n=%u c=%u", names[kind], n, C);
            TEST_WITHIN(label, t, test_rel_err(got, rdx, nc), 1e-5);
        }
        test_download(got2, ddw, C, CU_F32);
        memcpy(dw_bits[run], got2, C * sizeof(float));
        if (run == 0) {
            snprintf(label, sizeof label, "%s bwd dw n=%u c=%u", names[kind], n, C);
            TEST_WITHIN(label, t, test_rel_err(got2, rdw, C), 1e-5);
            test_download(got2, ddb, C, CU_F32);
            snprintf(label, sizeof label, "%s bwd db%s", names[kind], kind == CU_NORM_RMS ? " (untouched)" : "");
            /* RMSNorm has no bias: its db must come back as it went in */
            TEST_WITHIN(label, t, test_rel_err(got2, kind == CU_NORM_RMS ? db0 : rdb, C), kind == CU_NORM_RMS ? 0.0 : 1e-5);
        }
        cudaFree(ddx), cudaFree(ddw), cudaFree(ddb), cudaFree(scratch);
    }
    if (memcmp(dw_bits[0], dw_bits[1], C * sizeof(float)) != 0)
        fail_msg("norm backward dw differs between two runs");
    cudaFree(ddy), cudaFree(dxx), cudaFree(dww);
    free(x), free(dy), free(dx0), free(w), free(dw0), free(db0), free(got), free(got2);
    free(rdx), free(rdw), free(rdb);
}

static void test_norm_backward(void **state)
{
    (void)state;
    struct test_rng r = {11};
    /* 300 rows: three chunks of partial sums, the last one partial */
    const uint32_t cs[] = {37, 64, 768, 1000, 1500};
    const uint32_t n = test_cuda_quick() ? 130 : 300;
    for (int mi = 0; mi < 2; mi++)
        for (unsigned ci = 0; ci < sizeof cs / sizeof cs[0]; ci++)
            for (int k = 0; k < 3; k++)
                norm_backward_case(test_modes[mi], n, cs[ci], (enum cu_norm_kind)k, &r);
    /* a single row, and a row of one value (UER's c − 1 = 0 guard) */
    norm_backward_case(CU_F32, 1, 37, CU_NORM_LAYER, &r);
    norm_backward_case(CU_F32, 5, 1, CU_NORM_LAYER_UER, &r);
}

/* ---- elementwise ---- */

static void test_gelu_backward(void **state)
{
    (void)state;
    struct test_rng r = {12};
    /* an odd count: one value per item; a multiple of 8: 16-byte items; dx = dy and dx ≠ dy */
    const size_t counts[2] = {45 * 400 + 7, 45 * 400}, most = counts[0];
    float *pre = malloc(most * sizeof(float)), *d = malloc(most * sizeof(float));
    float *ref = malloc(most * sizeof(float)), *got = malloc(most * sizeof(float));
    for (int ci = 0; ci < 2; ci++) {
        const size_t count = counts[ci];
        for (int mi = 0; mi < 2; mi++) {
            const enum cu_dtype t = test_modes[mi];
            test_fill(pre, count, 2.0f, &r);
            test_fill(d, count, 1.0f, &r);
            test_round(pre, count, t);
            test_round(d, count, t);
            for (int erf = 0; erf < 2; erf++) {
                memcpy(ref, d, count * sizeof(float));
                op_gelu_backward(ref, pre, count, erf ? MODEL_ACT_GELU_ERF : MODEL_ACT_GELU_TANH, 1);
                for (int in_place = 1; in_place >= 0; in_place--) {
                    void *dd = test_upload(d, count, t), *dpre = test_upload(pre, count, t);
                    void *dx = in_place ? dd : test_poisoned(count, t);
                    CUDA_OK(cu_gelu_backward(dx, dd, dpre, t, count, erf, stream));
                    test_download(got, dx, count, t);
                    char label[64];
                    snprintf(label, sizeof label, "gelu %s bwd, %zu values%s", erf ? "erf" : "tanh", count,
                             in_place ? "" : ", dx ≠ dy");
                    TEST_WITHIN(label, t, test_rel_err(got, ref, count), test_bound_for(t, 1e-5, 4e-3));
                    if (!in_place)
                        cudaFree(dx);
                    cudaFree(dd), cudaFree(dpre);
                }
            }
        }
    }
    free(pre), free(d), free(ref), free(got);
}

static void test_swiglu_backward(void **state)
{
    (void)state;
    struct test_rng r = {13};
    /* f = 200 with packed dh rows: the 16-byte kernel; with dh rows of stride f + 3, and f = 37:
     * the scalar one */
    const uint32_t fs[] = {200, 200, 37}, pads[] = {0, 3, 3};
    for (int mi = 0; mi < 2; mi++) {
        const enum cu_dtype t = test_modes[mi];
        for (unsigned fi = 0; fi < 3; fi++) {
            const uint32_t n = 45, f = fs[fi], ldh = f + pads[fi];
            const size_t ngu = (size_t)n * 2 * f, ndh = (size_t)n * ldh;
            float *gu = malloc(ngu * sizeof(float)), *dh = malloc(ndh * sizeof(float));
            float *ref = malloc(ngu * sizeof(float)), *got = malloc(ngu * sizeof(float));
            test_fill(gu, ngu, 2.0f, &r);
            test_fill(dh, ndh, 1.0f, &r);
            test_round(gu, ngu, t);
            test_round(dh, ndh, t);
            void *dgu = test_upload(gu, ngu, t), *ddh = test_upload(dh, ndh, t), *dout = test_poisoned(ngu, t);
            CUDA_OK(cu_swiglu_backward(dout, ddh, ldh, dgu, t, n, f, stream));
            test_download(got, dout, ngu, t);
            op_swiglu_backward(ref, dh, ldh, gu, n, f, 1);
            char label[64];
            snprintf(label, sizeof label, "swiglu bwd f=%u ldh=%u", f, ldh);
            TEST_WITHIN(label, t, test_rel_err(got, ref, ngu), test_bound_for(t, 1e-5, 4e-3));
            cudaFree(dgu), cudaFree(ddh), cudaFree(dout);
            free(gu), free(dh), free(ref), free(got);
        }
    }
}

/* d = 64: the 16-byte kernel; d = 20 (half 10): the scalar one */
static void rope_backward_case(uint32_t d, struct test_rng *rng)
{
    struct test_rng r = *rng;
    const uint32_t n = 50, H = 6, KV = 2, P = 300, ld = (H + 2 * KV) * d, half = d / 2;
    float *cs = malloc(P * half * sizeof(float)), *sn = malloc(P * half * sizeof(float));
    op_rope_tables(cs, sn, P, d, 1e6);
    uint32_t pos[50];
    for (uint32_t i = 0; i < n; i++)
        pos[i] = i < 3 ? i : (uint32_t)(test_uniform(&r) * P);
    float *dcos = test_upload(cs, P * half, CU_F32), *dsin = test_upload(sn, P * half, CU_F32);
    uint32_t *dpos = upload_u32(pos, n);
    for (int mi = 0; mi < 2; mi++) {
        const enum cu_dtype t = test_modes[mi];
        const size_t total = (size_t)n * ld;
        float *x = malloc(total * sizeof(float)), *ref = malloc(total * sizeof(float));
        float *got = malloc(total * sizeof(float));
        test_fill(x, total, 1.0f, &r);
        test_round(x, total, t);
        void *dx = test_upload(x, total, t);
        CUDA_OK(cu_rope_backward(dx, t, n, ld, H + KV, d, dpos, dcos, dsin, stream));
        test_download(got, dx, total, t);
        memcpy(ref, x, total * sizeof(float));
        for (uint32_t i = 0; i < n; i++) /* dq, dk rotate back; dv stays */
            op_rope_backward(ref + (size_t)i * ld, H + KV, d, pos[i], cs, sn);
        TEST_WITHIN(d % 16 ? "rope bwd (dq, dk rotated, dv kept), d 20" : "rope bwd (dq, dk rotated, dv kept)", t,
                    test_rel_err(got, ref, total), test_bound_for(t, 1e-5, 4e-3));
        cudaFree(dx);
        free(x), free(ref), free(got);
    }
    cudaFree(dcos), cudaFree(dsin), cudaFree(dpos);
    free(cs), free(sn);
    *rng = r;
}

static void test_rope_backward(void **state)
{
    (void)state;
    struct test_rng r = {14};
    rope_backward_case(64, &r);
    rope_backward_case(20, &r);
}

/* ---- embeddings ---- */

static void embed_backward_table(const char *label, const uint32_t *keys, uint32_t n, uint32_t V,
                                 uint32_t C, const float *dx, float *ddx, struct test_rng *r)
{
    uint32_t *rows = malloc(n * sizeof(uint32_t)), *seg_key = malloc(n * sizeof(uint32_t));
    uint32_t *seg_start = malloc((n + 1) * sizeof(uint32_t));
    const uint32_t nseg = cu_embed_backward_index(keys, n, rows, seg_key, seg_start);
    /* the index: every row once, keys ascending and distinct per segment, rows ascending within */
    assert_true(nseg >= 1 && nseg <= n && seg_start[0] == 0 && seg_start[nseg] == n);
    for (uint32_t s = 0; s < nseg; s++) {
        assert_true(seg_start[s] < seg_start[s + 1]);
        assert_true(s == 0 || seg_key[s] > seg_key[s - 1]);
        for (uint32_t i = seg_start[s]; i < seg_start[s + 1]; i++) {
            assert_int_equal(keys[rows[i]], seg_key[s]);
            assert_true(i == seg_start[s] || rows[i] > rows[i - 1]);
        }
    }

    const size_t vc = (size_t)V * C;
    float *table0 = malloc(vc * sizeof(float)), *ref = malloc(vc * sizeof(float));
    float *ref32 = malloc(vc * sizeof(float)), *got = malloc(vc * sizeof(float)), *got2 = malloc(vc * sizeof(float));
    double *acc = malloc(vc * sizeof(double));
    test_fill(table0, vc, 0.02f, r);
    for (size_t i = 0; i < vc; i++)
        acc[i] = table0[i];
    memcpy(ref32, table0, vc * sizeof(float));
    for (uint32_t row = 0; row < n; row++) /* train/grad.c: rows in order onto the table */
        for (uint32_t j = 0; j < C; j++) {
            acc[(size_t)keys[row] * C + j] += dx[(size_t)row * C + j];
            ref32[(size_t)keys[row] * C + j] += dx[(size_t)row * C + j];
        }
    for (size_t i = 0; i < vc; i++)
        ref[i] = (float)acc[i];
    uint32_t *drows = upload_u32(rows, n), *dkey = upload_u32(seg_key, nseg), *dstart = upload_u32(seg_start, nseg + 1);
    for (int run = 0; run < 2; run++) {
        float *dtable = test_upload(table0, vc, CU_F32);
        CUDA_OK(cu_embed_backward(dtable, ddx, drows, dkey, dstart, nseg, C, stream));
        test_download(run ? got2 : got, dtable, vc, CU_F32);
        cudaFree(dtable);
    }
    TEST_WITHIN(label, CU_F32, test_rel_err(got, ref, vc), 1e-5);
    TEST_WITHIN("  (against the CPU's fp32 loop)", CU_F32, test_rel_err(got, ref32, vc), 0.0);
    if (memcmp(got, got2, vc * sizeof(float)) != 0)
        fail_msg("%s differs between two runs", label);
    cudaFree(drows), cudaFree(dkey), cudaFree(dstart);
    free(rows), free(seg_key), free(seg_start), free(table0), free(ref), free(ref32), free(got), free(got2), free(acc);
}

static void test_embed_backward(void **state)
{
    (void)state;
    struct test_rng r = {15};
    const uint32_t V = test_cuda_quick() ? 5003 : 50021, P = 97, n = 1000;
    const uint32_t cs[] = {37, 256};
    for (unsigned ci = 0; ci < 2; ci++) {
        const uint32_t C = cs[ci];
        uint32_t *tokens = malloc(n * sizeof(uint32_t)), *pos = malloc(n * sizeof(uint32_t));
        for (uint32_t i = 0; i < n; i++) {
            /* a third of the rows from ten frequent tokens (several rows per key), the rest
             * anywhere, the last and the first id included */
            const double u = test_uniform(&r);
            tokens[i] = u < 0.33 ? (17 + 4999 * (uint32_t)(test_uniform(&r) * 10)) % V
                                 : (uint32_t)(test_uniform(&r) * V);
            pos[i] = i % P;
        }
        tokens[5] = V - 1;
        tokens[6] = 0;
        float *dx = malloc((size_t)n * C * sizeof(float));
        test_fill(dx, (size_t)n * C, 1.0f, &r);
        float *ddx = test_upload(dx, (size_t)n * C, CU_F32);
        char label[64];
        snprintf(label, sizeof label, "embed bwd wte c=%u", C);
        embed_backward_table(label, tokens, n, V, C, dx, ddx, &r);
        snprintf(label, sizeof label, "embed bwd wpe c=%u", C);
        embed_backward_table(label, pos, n, P, C, dx, ddx, &r);
        cudaFree(ddx);
        free(tokens), free(pos), free(dx);
    }
}

/* ---- classification head ---- */

static void test_head_backward(void **state)
{
    (void)state;
    struct test_rng r = {16};
    const uint32_t lens[] = {5, 1, 40, 17}, nseq = 4, C = 96 + 37, N = 63;
    uint32_t off[6] = {0, 5, 6, 46, 63, 63}; /* and an empty padding sequence at the end */
    uint32_t *doff = upload_u32(off, 6);
    for (int mi = 0; mi < 2; mi++) {
        const enum cu_dtype t = test_modes[mi];
        /* tanh backward */
        {
            const size_t count = 45 * 37;
            float *y = malloc(count * sizeof(float)), *d = malloc(count * sizeof(float));
            float *ref = malloc(count * sizeof(float)), *got = malloc(count * sizeof(float));
            test_fill(y, count, 1.0f, &r);
            for (size_t i = 0; i < count; i++)
                y[i] = tanhf(y[i]);
            test_round(y, count, t);
            test_fill(d, count, 1.0f, &r);
            for (size_t i = 0; i < count; i++)
                ref[i] = (float)((double)d[i] * (1.0 - (double)y[i] * y[i]));
            float *dd = test_upload(d, count, CU_F32);
            void *dy = test_upload(y, count, t);
            CUDA_OK(cu_tanh_backward(dd, dy, t, count, stream));
            test_download(got, dd, count, CU_F32);
            TEST_WITHIN("tanh bwd", t, test_rel_err(got, ref, count), 1e-6);
            cudaFree(dd), cudaFree(dy);
            free(y), free(d), free(ref), free(got);
        }
        /* pooling backward */
        float *xn = malloc((size_t)N * C * sizeof(float)), *dp = malloc((nseq + 1) * C * sizeof(float));
        float *ref = malloc((size_t)N * C * sizeof(float)), *got = malloc((size_t)N * C * sizeof(float));
        test_fill(xn, (size_t)N * C, 1.0f, &r);
        /* ties for max: in sequence 2 some channels hold their maximum twice */
        for (uint32_t j = 0; j < C; j += 3) {
            xn[(size_t)10 * C + j] = 9.0f;
            xn[(size_t)20 * C + j] = 9.0f;
        }
        test_round(xn, (size_t)N * C, t);
        test_fill(dp, (nseq + 1) * C, 1.0f, &r);
        void *dxn = test_upload(xn, (size_t)N * C, t);
        float *ddp = test_upload(dp, (nseq + 1) * C, CU_F32);
        const char *names[] = {"pool mean bwd", "pool first bwd", "pool last bwd", "pool max bwd"};
        for (int k = 0; k < 4; k++) {
            void *dout = test_poisoned((size_t)N * C, t);
            CUDA_OK(cu_pool_backward(dout, ddp, dxn, t, C, doff, nseq + 1, (enum cu_pool_kind)k, stream));
            test_download(got, dout, (size_t)N * C, t);
            for (uint32_t b = 0; b < nseq; b++)
                for (uint32_t j = 0; j < C; j++) {
                    const float *rows = xn + (size_t)off[b] * C + j;
                    const double g = dp[b * C + j];
                    uint32_t take = k == 1 ? 0 : lens[b] - 1;
                    if (k == 3) {
                        take = 0;
                        for (uint32_t i = 1; i < lens[b]; i++)
                            if (rows[(size_t)i * C] > rows[(size_t)take * C])
                                take = i;
                    }
                    for (uint32_t i = 0; i < lens[b]; i++)
                        ref[(size_t)(off[b] + i) * C + j] =
                            k == 0 ? (float)(g / lens[b]) : i == take ? (float)g : 0.0f;
                }
            TEST_WITHIN(names[k], t, test_rel_err(got, ref, (size_t)N * C), test_bound_for(t, 1e-6, 4e-3));
            cudaFree(dout);
        }
        cudaFree(dxn), cudaFree(ddp);
        free(xn), free(dp), free(ref), free(got);
    }
    cudaFree(doff);
}

/* ---- loss ---- */

/* aligned: rows on the trainer's stride (V rounded up to 128: 4 logits per access, the last V % 4
 * one by one); else V + 5 (one logit per access). */
static void xent_case(uint32_t rows, uint32_t V, bool aligned, struct test_rng *r)
{
    const size_t ld = aligned ? ((size_t)V + 127) / 128 * 128 : (size_t)V + 5, total = rows * ld;
    float *z = malloc(total * sizeof(float)), *ref = malloc(total * sizeof(float));
    float *got = malloc(total * sizeof(float)), *loss = malloc(rows * sizeof(float));
    float *ref_loss = malloc(rows * sizeof(float));
    uint32_t *target = malloc(rows * sizeof(uint32_t));
    test_fill(z, total, 5.0f, r);
    for (uint32_t i = 0; i < rows; i++)
        target[i] = (uint32_t)(test_uniform(r) * V);
    target[0] = V - 1;
    target[1] = CU_XENT_IGNORE;
    target[2] = V; /* out of range: ignored too */
    const float scale = 1.0f / (float)rows;
    memcpy(ref, z, total * sizeof(float));
    for (uint32_t i = 0; i < rows; i++) {
        if (target[i] >= V) {
            memset(ref + i * ld, 0, V * sizeof(float));
            ref_loss[i] = 0.0f;
        } else {
            ref_loss[i] = (float)op_softmax_xent(ref + i * ld, V, target[i], scale);
        }
    }
    float *dz = test_upload(z, total, CU_F32), *dloss = test_poisoned(rows, CU_F32);
    uint32_t *dtarget = upload_u32(target, rows);
    CUDA_OK(cu_softmax_xent(dz, ld, NULL, CU_F32, dloss, dtarget, rows, V, scale, stream));
    test_download(got, dz, total, CU_F32);
    test_download(loss, dloss, rows, CU_F32);
    char label[96];
    snprintf(label, sizeof label, "softmax xent grad v=%u ld %zu (pad kept)", V, ld);
    TEST_WITHIN(label, CU_F32, test_rel_err(got, ref, total), 1e-5);
    snprintf(label, sizeof label, "softmax xent loss v=%u ld %zu", V, ld);
    TEST_WITHIN(label, CU_F32, test_rel_err(loss, ref_loss, rows), 1e-5);
    /* the gradient into a bf16 operand, z left as it was: the same loss, the gradient rounded */
    float *dz2 = test_upload(z, total, CU_F32);
    void *dgrad = test_upload(z, total, CU_BF16); /* its pad columns must survive */
    CUDA_OK(cu_softmax_xent(dz2, ld, dgrad, CU_BF16, dloss, dtarget, rows, V, scale, stream));
    test_download(got, dgrad, total, CU_BF16);
    /* the gradient columns on their own scale (the pad's values are far larger) */
    double worst = 0.0, grad_max = 0.0;
    for (uint32_t i = 0; i < rows; i++)
        for (uint32_t j = 0; j < V; j++) {
            const double d = fabs((double)got[i * ld + j] - (double)ref[i * ld + j]);
            if (!(d <= worst)) /* a NaN too */
                worst = isnan(d) ? INFINITY : d;
            grad_max = fabs(ref[i * ld + j]) > grad_max ? fabs(ref[i * ld + j]) : grad_max;
        }
    snprintf(label, sizeof label, "softmax xent bf16 grad v=%u ld %zu", V, ld);
    TEST_WITHIN(label, CU_BF16, worst / grad_max, 8e-3);
    float *pad_ref = malloc(total * sizeof(float)); /* the bf16 upload's pad: z rounded */
    memcpy(pad_ref, got, total * sizeof(float));
    for (uint32_t i = 0; i < rows; i++)
        for (uint32_t j = V; j < ld; j++)
            pad_ref[i * ld + j] = cu_bf16_to_f32(cu_f32_to_bf16(z[i * ld + j]));
    snprintf(label, sizeof label, "softmax xent bf16 grad v=%u ld %zu: pad kept", V, ld);
    TEST_WITHIN(label, CU_BF16, test_rel_err(got, pad_ref, total), 0.0);
    free(pad_ref);
    test_download(got, dz2, total, CU_F32);
    snprintf(label, sizeof label, "softmax xent bf16 grad v=%u ld %zu: logits untouched", V, ld);
    TEST_WITHIN(label, CU_F32, test_rel_err(got, z, total), 0.0);
    test_download(loss, dloss, rows, CU_F32);
    snprintf(label, sizeof label, "softmax xent bf16 grad v=%u ld %zu: loss", V, ld);
    TEST_WITHIN(label, CU_F32, test_rel_err(loss, ref_loss, rows), 1e-5);
    cudaFree(dz), cudaFree(dz2), cudaFree(dgrad), cudaFree(dloss), cudaFree(dtarget);
    free(z), free(ref), free(got), free(loss), free(ref_loss), free(target);
}

static void test_softmax_xent(void **state)
{
    (void)state;
    struct test_rng r = {17};
    xent_case(7, 37, false, &r);
    xent_case(9, 1000, false, &r);
    xent_case(5, 50021, false, &r);
    xent_case(7, 37, true, &r);
    xent_case(6, 1003, true, &r);
    xent_case(5, 60005, true, &r);
    if (!test_cuda_quick())
        xent_case(4, 151936, false, &r);
}

/* ---- optimizer ---- */

static void adamw_case(const struct train_adamw *o, bool bf16_copy, struct test_rng *r)
{
    /* a decayed matrix and an undecayed norm weight, as train_adamw_step tells them apart */
    const size_t n0 = (size_t)1000 * 37 + 3, n1 = 1500, total = n0 + n1;
    struct model_tensor tensors[2];
    memset(tensors, 0, sizeof tensors);
    tensors[0].kind = MODEL_TENSOR_MATRIX;
    tensors[0].offset = 0;
    tensors[0].numel = n0;
    tensors[1].kind = MODEL_TENSOR_NORM_WEIGHT;
    tensors[1].offset = n0;
    tensors[1].numel = n1;
    struct model m;
    memset(&m, 0, sizeof m);
    m.layout.tensors = tensors;
    m.layout.count = 2;
    m.layout.total = total;
    m.params = malloc(total * sizeof(float));
    float *g = malloc(total * sizeof(float)), *mom = calloc(total, sizeof(float)), *vel = calloc(total, sizeof(float));
    float *got = malloc(total * sizeof(float)), *ref16 = malloc(total * sizeof(float));
    test_fill(m.params, total, 0.02f, r);
    for (size_t i = n0; i < total; i++)
        m.params[i] += 1.0f;
    float *dp = test_upload(m.params, total, CU_F32), *dm = test_upload(mom, total, CU_F32);
    float *dv = test_upload(vel, total, CU_F32), *dg = test_poisoned(total, CU_F32);
    uint16_t *d16 = bf16_copy ? test_poisoned(total, CU_BF16) : NULL;
    const float lr = 1e-3f;
    for (uint64_t step = 1; step <= 5; step++) {
        test_fill(g, total, step == 1 ? 1.0f : 0.1f * (float)step, r);
        g[7] = 0.0f;
        CUDA_OK(cudaMemcpy(dg, g, total * sizeof(float), cudaMemcpyHostToDevice));
        for (size_t ti = 0; ti < 2; ti++) {
            const bool decay = tensors[ti].kind == MODEL_TENSOR_MATRIX || tensors[ti].kind == MODEL_TENSOR_EMBEDDING;
            const struct cu_adamw_step st = {.lr = lr, .beta1 = o->beta1, .beta2 = o->beta2, .eps = o->eps,
                                             .weight_decay = decay ? o->weight_decay : 0.0f,
                                             .uer = o->uer, .step = step};
            const size_t off = tensors[ti].offset;
            CUDA_OK(cu_adamw(dp + off, d16 ? d16 + off : NULL, dm + off, dv + off, dg + off, tensors[ti].numel, &st, stream));
        }
        train_adamw_step(&m, g, mom, vel, step, lr, o, 1);
    }
    const char *kind = o->uer ? "adamw uer (5 steps)" : "adamw (5 steps)";
    char label[64];
    test_download(got, dp, total, CU_F32);
    snprintf(label, sizeof label, "%s params", kind);
    TEST_WITHIN(label, CU_F32, test_rel_err(got, m.params, total), 1e-5);
    test_download(got, dm, total, CU_F32);
    TEST_WITHIN("  m", CU_F32, test_rel_err(got, mom, total), 1e-5);
    test_download(got, dv, total, CU_F32);
    TEST_WITHIN("  v", CU_F32, test_rel_err(got, vel, total), 1e-5);
    if (d16) {
        memcpy(ref16, m.params, total * sizeof(float));
        test_round(ref16, total, CU_BF16);
        test_download(got, d16, total, CU_BF16);
        TEST_WITHIN("  bf16 copy of the params", CU_BF16, test_rel_err(got, ref16, total), 4e-3);
    }
    cudaFree(dp), cudaFree(dm), cudaFree(dv), cudaFree(dg), cudaFree(d16);
    free(m.params), free(g), free(mom), free(vel), free(got), free(ref16);
}

static void test_adamw(void **state)
{
    (void)state;
    struct test_rng r = {18};
    struct train_adamw o;
    train_adamw_defaults(&o);
    adamw_case(&o, false, &r);
    adamw_case(&o, true, &r);
    train_adamw_uer(&o);
    adamw_case(&o, true, &r);
}

static void test_grad_norm(void **state)
{
    (void)state;
    struct test_rng r = {19};
    const size_t sizes[] = {37, 1000003};
    double *dnorm, *scratch;
    CUDA_OK(cudaMalloc((void **)&dnorm, 2 * sizeof(double)));
    CUDA_OK(cudaMalloc((void **)&scratch, CU_GRAD_NORM_SCRATCH * sizeof(double)));
    for (unsigned si = 0; si < 2; si++) {
        const size_t n = sizes[si];
        float *g = malloc(n * sizeof(float)), *ref = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
        test_fill(g, n, 0.01f, &r);
        float *dg = test_upload(g, n, CU_F32);
        double norm[2];
        CUDA_OK(cu_grad_norm(dnorm, dg, n, scratch, stream));
        CUDA_OK(cu_grad_norm(dnorm + 1, dg, n, scratch, stream));
        CUDA_OK(cudaMemcpy(norm, dnorm, sizeof norm, cudaMemcpyDeviceToHost));
        const double ref_norm = train_grad_norm(g, n);
        char label[64];
        snprintf(label, sizeof label, "grad norm n=%zu", n);
        TEST_WITHIN(label, CU_F32, fabs(norm[0] - ref_norm) / ref_norm, 1e-9);
        if (memcmp(&norm[0], &norm[1], sizeof(double)) != 0)
            fail_msg("grad norm differs between two runs");

        /* clip above the norm: nothing changes */
        CUDA_OK(cu_grad_clip(dg, n, dnorm, (float)(ref_norm * 2.0), stream));
        test_download(got, dg, n, CU_F32);
        TEST_WITHIN("  clip above the norm (unchanged)", CU_F32, test_rel_err(got, g, n), 0.0);
        /* clip at half the norm: the CLI's coef */
        const float max_norm = (float)(ref_norm * 0.5);
        memcpy(ref, g, n * sizeof(float));
        const double coef = max_norm / (ref_norm + 1e-6);
        train_grad_scale(ref, n, (float)coef);
        CUDA_OK(cu_grad_clip(dg, n, dnorm, max_norm, stream));
        test_download(got, dg, n, CU_F32);
        TEST_WITHIN("  clip at half the norm", CU_F32, test_rel_err(got, ref, n), 1e-6);
        /* plain scaling */
        train_grad_scale(ref, n, 3.0f);
        CUDA_OK(cu_grad_scale(dg, n, 3.0f, stream));
        test_download(got, dg, n, CU_F32);
        TEST_WITHIN("  scale", CU_F32, test_rel_err(got, ref, n), 1e-6);
        cudaFree(dg);
        free(g), free(ref), free(got);
    }
    cudaFree(dnorm), cudaFree(scratch);
}

int main(void)
{
    /* the launchers take a stream; the legacy default stream keeps the host copies ordered */
    stream = 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_norm_backward),   cmocka_unit_test(test_gelu_backward),
        cmocka_unit_test(test_swiglu_backward), cmocka_unit_test(test_rope_backward),
        cmocka_unit_test(test_embed_backward),  cmocka_unit_test(test_head_backward),
        cmocka_unit_test(test_softmax_xent),    cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_grad_norm),
    };
    return TEST_CUDA_RUN(tests);
}

#endif
