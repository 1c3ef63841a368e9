/* test_cuda_gemm_backward.c — the backward GEMMs of gemm.c (cu_gemm_dx; cu_gemm_dw with the bias
 * gradient of gemm_kernels.cu) against the CPU's op_matmul_backward on fresh random inputs, in
 * fp32 and with bf16 operands, with and without accumulation and bias, on odd shapes, on views
 * (row strides wider than the rows, pointers off the 256-byte alignment), and a repeat of dW/db
 * from the same start that must give the same bits.
 *
 * What the GPU must not touch is checked too: dx is poisoned (NaN) where it is written with =,
 * the padding of every input is NaN (a GEMM that reads it cannot pass), and dx's buffer outside
 * its n × in view holds values that must come back bit for bit.
 *
 * Bounds, as max |got − ref| / max |ref| (test_cuda_util.h):
 * - fp32 dx: 1e-5. The same products summed in another order: ~√K·2⁻²⁴ relative, K = out ≤
 *   2304 → ~3e-6 at worst here (the forward GEMM's bound).
 * - fp32 dW and db: 2e-5. K is now the rows, up to n = 4096, and the start value is added in.
 *   Summing K terms of magnitude ~1 leaves an absolute error ~K·2⁻²⁴/√2 ≈ 2e-4 typically for
 *   a sequential sum (blocked sums, as BLAS and the GPU do, much less), while max |ref| ≈ 5·√K
 *   ≈ 320: ~7e-7 relative, a few times that at the worst of 1.7 M elements; 2e-5 keeps ×10
 *   headroom.
 * - bf16 operands (inputs rounded to bf16 with test_round, the CPU computing on those values,
 *   so products are exact in fp32 on both sides): dx in bf16 4e-3 (one rounding of the output,
 *   ≤ 2⁻⁹ relative, ×2 headroom), 8e-3 when it adds into dx (measured 4.07e-3 on an H200 at
 *   4096 × 768 × 2304: consistent with the product rounded to bf16 before C is added); fp32 dx
 *   and fp32 dW (onto a nonzero start) 1e-4 (fp32 sum order of the tensor cores' accumulation,
 *   as the forward's bf16 → fp32 GEMMs); db 2e-5 (the
 *   kernel's fp32 sums of exact bf16 values, order only, as in fp32).
 * - determinism: two runs of cu_gemm_dw from the same dW, db give identical bits. */
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

/* A strided matrix as the device holds it: a buffer of off + rows·ld elements, the view [rows,
 * cols] starting at element off; everything outside the view is `outside` (NaN: must never be
 * read; a finite value: must never be written). view is packed [rows, cols]. */
static float *strided_image(const float *view, size_t rows, size_t cols, size_t ld, size_t off,
                            float outside)
{
    const size_t total = off + rows * ld;
    float *img = malloc(total * sizeof(float));
    for (size_t i = 0; i < total; i++)
        img[i] = outside;
    for (size_t r = 0; r < rows; r++)
        memcpy(img + off + r * ld, view + r * cols, cols * sizeof(float));
    return img;
}

static void *at_element(void *dev, size_t off, enum cu_dtype t) { return (char *)dev + off * cu_dtype_size(t); }

struct bw_case {
    size_t n, in, out;
    size_t pad; /* ldy = out + pad, ldx = in + pad + 2, lddx = in + pad + 4 (0: packed) */
    size_t off; /* element offset of the dy, x and dx views in their buffers */
};

static void backward_case(struct cu_gemm *g, enum cu_dtype t, enum cu_dtype dxt, struct bw_case c,
                          bool accumulate, bool bias, struct test_rng *r)
{
    const size_t n = c.n, in = c.in, out = c.out;
    const size_t ldy = out + c.pad, ldx = in + (c.pad ? c.pad + 2 : 0), lddx = in + (c.pad ? c.pad + 4 : 0);
    float *y = malloc(n * out * sizeof(float)), *x = malloc(n * in * sizeof(float));
    float *w = malloc(out * in * sizeof(float)), *dx0 = malloc(n * in * sizeof(float));
    float *dw0 = malloc(out * in * sizeof(float)), *db0 = malloc(out * sizeof(float));
    test_fill(y, n * out, 1.0f, r);
    test_fill(x, n * in, 1.0f, r);
    test_fill(w, out * in, 1.0f / sqrtf((float)out), r);
    test_fill(dx0, n * in, 1.0f, r);
    test_fill(dw0, out * in, 1.0f, r);
    test_fill(db0, out, 1.0f, r);
    test_round(y, n * out, t);
    test_round(x, n * in, t);
    test_round(w, out * in, t);
    test_round(dx0, n * in, dxt);

    /* device images: inputs padded with NaN; dx's view NaN (=) or dx0 (+=), finite around it */
    const size_t ny = c.off + n * ldy, nx = c.off + n * ldx, ndx = c.off + n * lddx;
    float *yimg = strided_image(y, n, out, ldy, c.off, NAN);
    float *ximg = strided_image(x, n, in, ldx, c.off, NAN);
    float *dximg = strided_image(dx0, n, in, lddx, c.off, 0.0f);
    struct test_rng around = {0x5eed ^ n};
    for (size_t i = 0; i < ndx; i++) {
        const size_t e = i < c.off ? 0 : i - c.off;
        const bool in_view = i >= c.off && e % lddx < in;
        if (!in_view)
            dximg[i] = test_normal(&around);
        else if (!accumulate)
            dximg[i] = NAN;
    }
    test_round(dximg, ndx, dxt);
    void *d_y = test_upload(yimg, ny, t), *d_x = test_upload(ximg, nx, t), *d_w = test_upload(w, out * in, t);
    void *d_dx = test_upload(dximg, ndx, dxt);
    float *d_dw = test_upload(dw0, out * in, CU_F32), *d_db = test_upload(db0, out, CU_F32);

    char err[256] = "";
    if (!cu_gemm_dx(g, stream, t, dxt, at_element(d_dx, c.off, dxt), lddx, at_element(d_y, c.off, t), ldy,
                    d_w, n, in, out, accumulate, err, sizeof err))
        fail_msg("%s", err);
    if (!cu_gemm_dw(g, stream, t, d_dw, bias ? d_db : NULL, at_element(d_y, c.off, t), ldy,
                    at_element(d_x, c.off, t), ldx, n, in, out, err, sizeof err))
        fail_msg("%s", err);

    /* the CPU on packed copies of the same values */
    float *dx_ref = malloc(n * in * sizeof(float)), *dw_ref = malloc(out * in * sizeof(float));
    float *db_ref = malloc(out * sizeof(float));
    if (accumulate)
        memcpy(dx_ref, dx0, n * in * sizeof(float));
    else
        memset(dx_ref, 0, n * in * sizeof(float));
    memcpy(dw_ref, dw0, out * in * sizeof(float));
    memcpy(db_ref, db0, out * sizeof(float));
    op_matmul_backward(dx_ref, in, dw_ref, bias ? db_ref : NULL, y, out, x, in, w, n, in, out,
                       accumulate, 1);

    float *got_img = malloc(ndx * sizeof(float));
    float *got = malloc((n > out ? n : out) * in * sizeof(float)); /* dx, then dW, then db */
    test_download(got_img, d_dx, ndx, dxt);
    size_t touched = 0;
    for (size_t i = 0; i < ndx; i++) {
        const size_t e = i < c.off ? 0 : i - c.off;
        if (i >= c.off && e % lddx < in)
            got[(e / lddx) * in + e % lddx] = got_img[i];
        else if (memcmp(&got_img[i], &dximg[i], sizeof(float)) != 0)
            touched++;
    }
    char label[128];
    snprintf(label, sizeof label, "dx %zux%zux%zu%s%s%s → %s", n, in, out, accumulate ? " +=" : "",
             c.pad ? " strided" : "", c.off ? " unaligned" : "", test_dtype_name(dxt));
    if (touched)
        fail_msg("%s: %zu elements outside the view written", label, touched);
    const double dx_bound = dxt == CU_BF16 ? (accumulate ? 8e-3 : 4e-3) : t == CU_BF16 ? 1e-4 : 1e-5;
    TEST_WITHIN(label, t, test_rel_err(got, dx_ref, n * in), dx_bound);

    test_download(got, d_dw, out * in, CU_F32);
    snprintf(label, sizeof label, "dW += %zux%zux%zu%s%s", n, in, out, c.pad ? " strided" : "",
             c.off ? " unaligned" : "");
    TEST_WITHIN(label, t, test_rel_err(got, dw_ref, out * in), t == CU_BF16 ? 1e-4 : 2e-5);
    test_download(got, d_db, out, CU_F32);
    if (bias)
        snprintf(label, sizeof label, "db += %zu rows × %zu", n, out);
    else
        snprintf(label, sizeof label, "db untouched (NULL) %zu × %zu", n, out);
    TEST_WITHIN(label, t, test_rel_err(got, db_ref, out), 2e-5);

    cudaFree(d_y), cudaFree(d_x), cudaFree(d_w), cudaFree(d_dx), cudaFree(d_dw), cudaFree(d_db);
    free(y), free(x), free(w), free(dx0), free(dw0), free(db0), free(yimg), free(ximg), free(dximg);
    free(dx_ref), free(dw_ref), free(db_ref), free(got_img), free(got);
}

static void test_gemm_backward(void **state)
{
    (void)state;
    struct test_rng r = {11};
    char err[256];
    struct cu_gemm *g = cu_gemm_create((size_t)32 << 20, err, sizeof err);
    if (!g)
        fail_msg("%s", err);
    const struct bw_case shapes[] = {
        {37, 80, 52, 0, 0},  {5, 64, 7, 0, 0},   {129, 256, 64, 0, 0},
        {37, 80, 52, 3, 0},  {129, 256, 64, 5, 0}, {129, 256, 64, 3, 1}, /* off the alignment */
    };
    const enum cu_dtype modes[3][2] = {{CU_F32, CU_F32}, {CU_BF16, CU_BF16}, {CU_BF16, CU_F32}};
    for (int mi = 0; mi < 3; mi++) {
        const enum cu_dtype t = modes[mi][0], dxt = modes[mi][1];
        printf(" operands %s, dx %s\n", test_dtype_name(t), test_dtype_name(dxt));
        for (unsigned si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
            for (int v = 0; v < 4; v++)
                backward_case(g, t, dxt, shapes[si], v & 1, v & 2, &r);
        if (!test_cuda_quick()) {
            const struct bw_case big = {4096, 768, 2304, 0, 0};
            backward_case(g, t, dxt, big, mi == 1, true, &r);
        }
    }
    /* nothing to do: no pointer is looked at */
    assert_true(cu_gemm_dx(g, stream, CU_F32, CU_F32, NULL, 8, NULL, 8, NULL, 0, 8, 8, false, err, sizeof err));
    assert_true(cu_gemm_dx(g, stream, CU_F32, CU_F32, NULL, 8, NULL, 8, NULL, 8, 0, 8, false, err, sizeof err));
    assert_true(cu_gemm_dx(g, stream, CU_F32, CU_F32, NULL, 8, NULL, 8, NULL, 8, 8, 0, false, err, sizeof err));
    assert_true(cu_gemm_dw(g, stream, CU_BF16, NULL, NULL, NULL, 8, NULL, 8, 0, 8, 8, err, sizeof err));
    assert_true(cu_gemm_dw(g, stream, CU_BF16, NULL, NULL, NULL, 8, NULL, 8, 8, 0, 8, err, sizeof err));
    assert_true(cu_gemm_dw(g, stream, CU_BF16, NULL, NULL, NULL, 8, NULL, 8, 8, 8, 0, err, sizeof err));
    cu_gemm_free(g);
}

/* Two runs of cu_gemm_dw (and its bias gradient) from the same dW and db: the same bits. A
 * fresh cu_gemm, so the first run also builds (and times) the plan: the timed candidates must
 * not have added into dW, which the comparison with the CPU shows. */
static void test_gemm_dw_deterministic(void **state)
{
    (void)state;
    struct test_rng r = {12};
    const size_t n = test_cuda_quick() ? 1000 : 4096, in = test_cuda_quick() ? 256 : 768;
    const size_t out = test_cuda_quick() ? 384 : 2304;
    const enum cu_dtype types[2] = {CU_F32, CU_BF16};
    for (int mi = 0; mi < 2; mi++) {
        const enum cu_dtype t = types[mi];
        char err[256];
        struct cu_gemm *g = cu_gemm_create((size_t)32 << 20, err, sizeof err);
        if (!g)
            fail_msg("%s", err);
        float *y = malloc(n * out * sizeof(float)), *x = malloc(n * in * sizeof(float));
        float *dw0 = malloc(out * in * sizeof(float)), *db0 = malloc(out * sizeof(float));
        float *got[2][2], *ref = malloc(out * in * sizeof(float)), *db_ref = malloc(out * sizeof(float));
        test_fill(y, n * out, 1.0f, &r);
        test_fill(x, n * in, 1.0f, &r);
        test_fill(dw0, out * in, 1.0f, &r);
        test_fill(db0, out, 1.0f, &r);
        test_round(y, n * out, t);
        test_round(x, n * in, t);
        void *d_y = test_upload(y, n * out, t), *d_x = test_upload(x, n * in, t);
        float *d_dw = test_upload(dw0, out * in, CU_F32), *d_db = test_upload(db0, out, CU_F32);
        for (int run = 0; run < 2; run++) {
            CUDA_OK(cudaMemcpy(d_dw, dw0, out * in * sizeof(float), cudaMemcpyHostToDevice));
            CUDA_OK(cudaMemcpy(d_db, db0, out * sizeof(float), cudaMemcpyHostToDevice));
            if (!cu_gemm_dw(g, stream, t, d_dw, d_db, d_y, out, d_x, in, n, in, out, err, sizeof err))
                fail_msg("%s", err);
            got[run][0] = malloc(out * in * sizeof(float));
            got[run][1] = malloc(out * sizeof(float));
            test_download(got[run][0], d_dw, out * in, CU_F32);
            test_download(got[run][1], d_db, out, CU_F32);
        }
        memcpy(ref, dw0, out * in * sizeof(float));
        memcpy(db_ref, db0, out * sizeof(float));
        op_matmul_backward(NULL, in, ref, db_ref, y, out, x, in, NULL, n, in, out, false, 1);
        char label[96];
        snprintf(label, sizeof label, "dW += %zux%zux%zu (first run, tuned)", n, in, out);
        TEST_WITHIN(label, t, test_rel_err(got[0][0], ref, out * in), t == CU_BF16 ? 1e-4 : 2e-5);
        TEST_WITHIN("db (first run)", t, test_rel_err(got[0][1], db_ref, out), 2e-5);
        const bool same_dw = memcmp(got[0][0], got[1][0], out * in * sizeof(float)) == 0;
        const bool same_db = memcmp(got[0][1], got[1][1], out * sizeof(float)) == 0;
        printf("  dW, db repeat bit for bit: %s, %s\n", same_dw ? "yes" : "NO", same_db ? "yes" : "NO");
        assert_true(same_dw);
        assert_true(same_db);
        cudaFree(d_y), cudaFree(d_x), cudaFree(d_dw), cudaFree(d_db);
        for (int run = 0; run < 2; run++)
            free(got[run][0]), free(got[run][1]);
        free(y), free(x), free(dw0), free(db0), free(ref), free(db_ref);
        cu_gemm_free(g);
    }
}

int main(void)
{
    /* the launchers take a stream; the legacy default stream keeps the host copies ordered */
    stream = 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_backward),
        cmocka_unit_test(test_gemm_dw_deterministic),
    };
    return TEST_CUDA_RUN(tests);
}

#endif
