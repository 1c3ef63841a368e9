/* test_cuda_attention_backward.c — the training path of CUDA attention: the log-sum-exp that
 * cu_attention_train keeps (against a host computation in double) and cu_attention_backward's
 * dq, dk, dv (against the CPU's op_attend_block_backward, one head of one sequence at a time), on
 * fresh random inputs, with outputs poisoned (NaN) before each run. The backward runs on the GPU
 * forward's own out and lse, as training does; it must also be bit-identical when run twice. Both
 * backwards: SIMT, and the tensor-core one (CU_ATTN_AUTO; called directly, whatever
 * NETLM_CUDA_ATTN_BWD says), which is also compared with the SIMT one on the same inputs.
 *
 * Bounds, as max |got − ref| / max |ref| (test_cuda_util.h), each of dq, dk, dv and lse alone:
 * - lse, 1e-5 in both types: fp32 sums of d products (the tensor-core kernel's bf16 products are
 *   exact, its sums fp32) and one log; relative to max |lse| (≥ log of the longest length) the
 *   error is a few 2⁻²⁴ — the bound leaves an order of magnitude.
 * - fp32 gradients, 1e-5: the same formulas as the CPU in fp32, summed in another order (≤ 1024
 *   terms: ~√K·2⁻²⁴ ≈ 2e-6). Recomputing P as exp(s − lse) instead of a softmax adds an error of
 *   ~|lse|·2⁻²⁴ ≈ 6e-7 relative (|lse| ≲ 10 here), and D = rowsum(dout ⊙ out) uses the
 *   forward's out (itself within ~1e-6) where the CPU sums P ⊙ dP in double: both well inside.
 * - bf16 gradients, 1e-2: inputs are rounded to bf16 on the host so the CPU computes on the same
 *   values; the gradients are rounded once to bf16 (≤ 2⁻⁹ ≈ 2e-3 of an element), and D comes
 *   from the forward's bf16 out (rounded once, 2⁻⁹; the tensor-core forward also rounds P for
 *   P·V: 2⁻⁸), which enters dS = P ⊙ (dP − D) as ~2⁻⁸ of |dP − D| at worst: ≤ 6e-3 in all,
 *   the tensor-core attention forward's bound.
 * - bf16 gradients of the tensor-core backward (d = 32, 64, 128), 2e-2: derived, not measured (no
 *   GPU when it was written). On top of the SIMT bf16 causes above, one factor of every summand
 *   is rounded to bf16 before its product, as FlashAttention-2 does: P in dV = (M ⊙ P)ᵀ·dout, dS in
 *   dK = dSᵀ·Q and dQ = dS·K (relative u = 2⁻⁸ each; the products and sums are otherwise exact
 *   bf16 products in fp32). The error of such a sum is ~u of the sum, not of Σ|terms|: equal
 *   probabilities round alike (an error proportional to the sum), distinct ones independently (a
 *   random walk like the sum's own over the random-sign dout, Q, K). 1e-2 + 2⁻⁸ ≈ 1.4e-2; the
 *   bound leaves ~40 %. A mask drawn wrong, a key off by one, a missing scale: O(1).
 * - The tensor-core backward against the SIMT one on the same forward (out, lse), 1.5e-2: the
 *   forward's errors (D) are common and cancel; left are the two roundings of each gradient to
 *   bf16 (at most 1 ulp apart: 2⁻⁷ of the largest element, 7.8e-3) and the tensor cores' rounding
 *   of P and dS (~2⁻⁸ = 3.9e-3): 1.2e-2.
 *
 * Dropout of the probabilities (struct cu_attn_dropout, p = 0.2, random per-sequence keys): the
 * forward's out against the CPU's op_attend_block with train/grad.c's op_dropout of each (sequence,
 * head) — 1e-5 in fp32, 4e-3 (SIMT) and 1e-2 (tensor cores) in bf16, test_cuda_ops's attention
 * bounds — and it must differ from the output without dropout (the mask did something); lse
 * stays the unmasked statistics (the same 1e-5); the backward against op_attend_block_backward
 * with the same masks, within the bounds above, and bit-identical when run twice. A mask drawn
 * differently on one side moves an element by a whole probability: far outside every bound. */
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

#define DROP_LAYER 3u /* any layer: the stream of (b, h) is drawn from layer·4 + 1 */

static cudaStream_t stream;

/* Columns col0 .. col0 + n - 1 of rows rows of stride ld, packed. */
static void take_columns(float *dst, const float *src, size_t rows, size_t ld, size_t col0, size_t n)
{
    for (size_t i = 0; i < rows; i++)
        memcpy(dst + i * n, src + i * ld + col0, n * sizeof(float));
}

/* ln Σ_{j ≤ i} exp(scale·q_i·k_j) in double, for every row and head: the forward's statistics */
static void host_lse(float *lse, const float *qkv, const uint32_t *off, uint32_t nseq, uint32_t H,
                     uint32_t KV, uint32_t d, float scale)
{
    const size_t QKV = (size_t)(H + 2 * KV) * d;
    for (uint32_t b = 0; b < nseq; b++)
        for (uint32_t h = 0; h < H; h++) {
            const uint32_t kvh = h / (H / KV);
            for (uint32_t i = off[b]; i < off[b + 1]; i++) {
                const float *q = qkv + i * QKV + (size_t)h * d;
                double mx = -INFINITY, sum = 0.0;
                for (int pass = 0; pass < 2; pass++)
                    for (uint32_t j = off[b]; j <= i; j++) {
                        const float *k = qkv + j * QKV + (size_t)(H + kvh) * d;
                        double s = 0.0;
                        for (uint32_t e = 0; e < d; e++)
                            s += (double)q[e] * k[e];
                        s *= scale;
                        if (pass == 0)
                            mx = s > mx ? s : mx;
                        else
                            sum += exp(s - mx);
                    }
                lse[(size_t)i * H + h] = (float)(mx + log(sum));
            }
        }
}

/* train/grad.c's drop_stream for the attention probabilities (place 1), written out here so the
 * device's derivation is checked against the CPU's formula rather than against itself */
static struct op_dropout cpu_attn_drop(uint64_t seq_key, uint32_t head, float p)
{
    struct op_dropout dr;
    dr.key = op_dropout_stream(op_dropout_stream(seq_key, (uint64_t)DROP_LAYER * 4 + 1), head);
    const double t = (double)p * 4294967296.0;
    dr.threshold = t >= 4294967295.0 ? UINT32_MAX : (uint32_t)t;
    dr.scale = 1.0f / (1.0f - p);
    return dr;
}

/* impl: the forward's, bwd: the backward's; p_drop > 0: the probabilities' dropout on both sides.
 * Where bwd takes the tensor cores, the SIMT backward also runs on the same forward (out, lse)
 * and the two are compared. */
static void backward_case(enum cu_dtype t, enum cu_attn_impl impl, enum cu_attn_impl bwd, uint32_t H,
                          uint32_t KV, uint32_t d, const uint32_t *lens, uint32_t nseq, float p_drop,
                          struct test_rng *r)
{
    const uint32_t QKV = (H + 2 * KV) * d, Hd = H * d;
    uint32_t max_len;
    uint32_t *off = test_seq_offsets(lens, nseq, &max_len);
    const size_t N = off[nseq];
    float *qkv = malloc(N * QKV * sizeof(float)), *dout = malloc(N * Hd * sizeof(float));
    test_fill(qkv, N * QKV, 1.0f, r);
    test_fill(dout, N * Hd, 1.0f, r);
    test_round(qkv, N * QKV, t);
    test_round(dout, N * Hd, t);
    void *d_qkv = test_upload(qkv, N * QKV, t), *d_dout = test_upload(dout, N * Hd, t);
    void *d_out = test_poisoned(N * Hd, t), *d_out_plain = test_poisoned(N * Hd, t);
    void *d_dqkv = test_poisoned(N * QKV, t), *d_dqkv_again = test_poisoned(N * QKV, t);
    float *d_lse = test_poisoned(N * H, CU_F32), *d_delta = test_poisoned(N * H, CU_F32);
    uint32_t *d_off;
    CUDA_OK(cudaMalloc((void **)&d_off, (nseq + 1) * sizeof(uint32_t)));
    CUDA_OK(cudaMemcpy(d_off, off, (nseq + 1) * sizeof(uint32_t), cudaMemcpyHostToDevice));
    const float scale = 1.0f / sqrtf((float)d);
    const bool dropping = p_drop > 0;
    uint64_t *seq_key = malloc(nseq * sizeof(uint64_t)), *d_seq_key = NULL;
    for (uint32_t b = 0; b < nseq; b++)
        seq_key[b] = (uint64_t)(test_uniform(r) * 9007199254740992.0) * 2654435761u + b;
    CUDA_OK(cudaMalloc((void **)&d_seq_key, nseq * sizeof(uint64_t)));
    CUDA_OK(cudaMemcpy(d_seq_key, seq_key, nseq * sizeof(uint64_t), cudaMemcpyHostToDevice));
    struct cu_attn_dropout drop = {.seq_key = d_seq_key, .layer = DROP_LAYER};
    cu_dropout_params(p_drop, &drop.threshold, &drop.scale);
    const struct cu_attn_dropout *dp = dropping ? &drop : NULL;

    CUDA_OK(cu_attention_train(d_out, Hd, d_lse, d_qkv, QKV, t, d_off, nseq, max_len, H, KV, d,
                               scale, impl, dp, stream));
    CUDA_OK(cu_attention(d_out_plain, Hd, d_qkv, QKV, t, d_off, nseq, max_len, H, KV, d, scale,
                         impl, stream));
    CUDA_OK(cu_attention_backward(d_dqkv, QKV, d_dout, Hd, d_out, Hd, d_qkv, QKV, d_lse, d_delta,
                                  t, d_off, nseq, max_len, H, KV, d, scale, bwd, dp, stream));
    CUDA_OK(cu_attention_backward(d_dqkv_again, QKV, d_dout, Hd, d_out, Hd, d_qkv, QKV, d_lse,
                                  d_delta, t, d_off, nseq, max_len, H, KV, d, scale, bwd, dp, stream));
    /* every buffer this case allocates is 256-byte aligned and its strides are multiples of 8
     * elements at these d: the tensor-core backward's conditions hold */
    const bool tc = impl == CU_ATTN_AUTO && cu_attention_uses_tensor_cores(t, d);
    const bool bwd_tc = bwd == CU_ATTN_AUTO && cu_attention_uses_tensor_cores(t, d);
    void *d_dqkv_simt = NULL;
    if (bwd_tc) {
        d_dqkv_simt = test_poisoned(N * QKV, t);
        CUDA_OK(cu_attention_backward(d_dqkv_simt, QKV, d_dout, Hd, d_out, Hd, d_qkv, QKV, d_lse,
                                      d_delta, t, d_off, nseq, max_len, H, KV, d, scale, CU_ATTN_SIMT,
                                      dp, stream));
    }
    CUDA_OK(cudaDeviceSynchronize());

    const char *what = dropping ? (tc ? "tc drop" : "simt drop") : (tc ? "tc" : "simt");
    const char *bwd_what = bwd_tc ? "tc" : "simt";
    char label[112];
    const size_t bytes_out = N * Hd * cu_dtype_size(t), bytes_dqkv = N * QKV * cu_dtype_size(t);
    uint8_t *bits_a = malloc(bytes_dqkv + 1), *bits_b = malloc(bytes_dqkv + 1);

    /* keeping the statistics changes nothing in the output; dropout changes it */
    CUDA_OK(cudaMemcpy(bits_a, d_out, bytes_out, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(bits_b, d_out_plain, bytes_out, cudaMemcpyDeviceToHost));
    const bool same_out = memcmp(bits_a, bits_b, bytes_out) == 0;
    snprintf(label, sizeof label, "out %s h%u/kv%u d%u: train %s plain", what, H, KV, d, dropping ? "!=" : "=");
    printf("  %-40s %s  %s\n", label, test_dtype_name(t), same_out == !dropping ? "ok" : "FAIL");
    assert_true(same_out == !dropping);

    /* the backward is deterministic: no atomics, a fixed order of sums */
    CUDA_OK(cudaMemcpy(bits_a, d_dqkv, bytes_dqkv, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(bits_b, d_dqkv_again, bytes_dqkv, cudaMemcpyDeviceToHost));
    snprintf(label, sizeof label, "backward %s (%s fwd) h%u/kv%u d%u: run twice", bwd_what, what, H, KV, d);
    printf("  %-40s %s  %s\n", label, test_dtype_name(t), memcmp(bits_a, bits_b, bytes_dqkv) ? "FAIL" : "bit-identical");
    assert_memory_equal(bits_a, bits_b, bytes_dqkv);

    float *lse = malloc(N * H * sizeof(float)), *lse_ref = malloc(N * H * sizeof(float));
    test_download(lse, d_lse, N * H, CU_F32);
    host_lse(lse_ref, qkv, off, nseq, H, KV, d, scale);
    snprintf(label, sizeof label, "lse %s h%u/kv%u d%u max_len %u", what, H, KV, d, max_len);
    TEST_WITHIN(label, t, test_rel_err(lse, lse_ref, N * H), 1e-5);

    /* CPU: per sequence and kv head, the group's query heads add into one contiguous dK, dV */
    float *got = malloc(N * QKV * sizeof(float)), *ref = malloc(N * QKV * sizeof(float));
    test_download(got, d_dqkv, N * QKV, t);
    float *k = malloc((size_t)max_len * d * sizeof(float)), *v = malloc((size_t)max_len * d * sizeof(float));
    float *dk = malloc((size_t)max_len * d * sizeof(float)), *dv = malloc((size_t)max_len * d * sizeof(float));
    float *scratch = malloc(2 * (size_t)max_len * max_len * sizeof(float));
    float *out_ref = dropping ? calloc(N * Hd, sizeof(float)) : NULL;
    for (uint32_t b = 0; b < nseq; b++) {
        if (lens[b] == 0)
            continue;
        for (uint32_t kvh = 0; kvh < KV; kvh++) {
            for (uint32_t i = 0; i < lens[b]; i++) {
                const float *row = qkv + (size_t)(off[b] + i) * QKV;
                memcpy(k + (size_t)i * d, row + (size_t)(H + kvh) * d, d * sizeof(float));
                memcpy(v + (size_t)i * d, row + (size_t)(H + KV + kvh) * d, d * sizeof(float));
            }
            memset(dk, 0, (size_t)lens[b] * d * sizeof(float));
            memset(dv, 0, (size_t)lens[b] * d * sizeof(float));
            for (uint32_t h = kvh * (H / KV); h < (kvh + 1) * (H / KV); h++) {
                const struct op_dropout pd = cpu_attn_drop(seq_key[b], h, p_drop);
                if (dropping)
                    op_attend_block(out_ref + (size_t)off[b] * Hd + (size_t)h * d, Hd,
                                    qkv + (size_t)off[b] * QKV + (size_t)h * d, QKV, k, v, 0, lens[b], d,
                                    scale, scratch, &pd);
                op_attend_block_backward(ref + (size_t)off[b] * QKV + (size_t)h * d, QKV, dk, dv,
                                         dout + (size_t)off[b] * Hd + (size_t)h * d, Hd,
                                         qkv + (size_t)off[b] * QKV + (size_t)h * d, QKV, k, v,
                                         lens[b], d, scale, scratch, dropping ? &pd : NULL);
            }
            for (uint32_t i = 0; i < lens[b]; i++) {
                float *row = ref + (size_t)(off[b] + i) * QKV;
                memcpy(row + (size_t)(H + kvh) * d, dk + (size_t)i * d, d * sizeof(float));
                memcpy(row + (size_t)(H + KV + kvh) * d, dv + (size_t)i * d, d * sizeof(float));
            }
        }
    }
    if (dropping) {
        float *out_got = malloc(N * Hd * sizeof(float));
        test_download(out_got, d_out, N * Hd, t);
        snprintf(label, sizeof label, "out %s h%u/kv%u d%u max_len %u", what, H, KV, d, max_len);
        TEST_WITHIN(label, t, test_rel_err(out_got, out_ref, N * Hd), t == CU_F32 ? 1e-5 : tc ? 1e-2 : 4e-3);
        free(out_got);
    }
    /* each part alone: dk and dv are smaller than dq, one joint maximum would hide their errors */
    const struct { const char *name; size_t col0, n; } parts[] = {
        {"dq", 0, Hd}, {"dk", Hd, (size_t)KV * d}, {"dv", Hd + (size_t)KV * d, (size_t)KV * d},
    };
    float *part_got = malloc(N * Hd * sizeof(float)), *part_ref = malloc(N * Hd * sizeof(float));
    for (unsigned p = 0; p < 3; p++) {
        take_columns(part_got, got, N, QKV, parts[p].col0, parts[p].n);
        take_columns(part_ref, ref, N, QKV, parts[p].col0, parts[p].n);
        snprintf(label, sizeof label, "backward %s %s (%s fwd) h%u/kv%u d%u max_len %u", parts[p].name,
                 bwd_what, what, H, KV, d, max_len);
        TEST_WITHIN(label, t, test_rel_err(part_got, part_ref, N * parts[p].n),
                    t == CU_F32 ? 1e-5 : bwd_tc ? 2e-2 : 1e-2);
    }
    if (bwd_tc) { /* the same forward's statistics on both sides: only the backwards' roundings */
        float *simt = malloc(N * QKV * sizeof(float));
        test_download(simt, d_dqkv_simt, N * QKV, t);
        for (unsigned p = 0; p < 3; p++) {
            take_columns(part_got, got, N, QKV, parts[p].col0, parts[p].n);
            take_columns(part_ref, simt, N, QKV, parts[p].col0, parts[p].n);
            snprintf(label, sizeof label, "backward %s tc vs simt (%s fwd) h%u/kv%u d%u max_len %u",
                     parts[p].name, what, H, KV, d, max_len);
            TEST_WITHIN(label, t, test_rel_err(part_got, part_ref, N * parts[p].n), 1.5e-2);
        }
        free(simt);
        cudaFree(d_dqkv_simt);
    }

    cudaFree(d_qkv), cudaFree(d_dout), cudaFree(d_out), cudaFree(d_out_plain), cudaFree(d_dqkv);
    cudaFree(d_dqkv_again), cudaFree(d_lse), cudaFree(d_delta), cudaFree(d_off), cudaFree(d_seq_key);
    free(seq_key), free(out_ref);
    free(off), free(qkv), free(dout), free(bits_a), free(bits_b), free(lse), free(lse_ref);
    free(got), free(ref), free(k), free(v), free(dk), free(dv), free(scratch), free(part_got);
    free(part_ref);
}

/* {4, 2, 128}: a group of 2 at d = 128, where the tensor-core dK/dV kernel reads K and V
 * fragments from shared memory instead of registers */
static const struct { uint32_t H, KV, d; } shapes[] = {
    {4, 4, 64}, {6, 2, 64}, {4, 1, 32}, {2, 2, 128}, {4, 2, 128}, {3, 3, 48}, {4, 2, 20},
};

/* Every shape in both types: fp32 (AUTO is SIMT there); bf16 with the SIMT backward on the
 * tensor-core forward's statistics (what training runs by default) or, at the d the tensor cores
 * do not take, with AUTO (its fallback); where they take it, also the tensor-core backward
 * (against the CPU and against the SIMT backward) and, outside NETLM_CUDA_TEST_QUICK (the
 * sanitizers' runs, where test_cuda_ops covers the SIMT forward), the SIMT forward's statistics. */
static void backward_shapes(const uint32_t *lens, uint32_t nseq, float p_drop, struct test_rng *r)
{
    for (unsigned s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const uint32_t H = shapes[s].H, KV = shapes[s].KV, d = shapes[s].d;
        const bool tc = cu_attention_uses_tensor_cores(CU_BF16, d);
        backward_case(CU_F32, CU_ATTN_AUTO, CU_ATTN_AUTO, H, KV, d, lens, nseq, p_drop, r);
        backward_case(CU_BF16, CU_ATTN_AUTO, tc ? CU_ATTN_SIMT : CU_ATTN_AUTO, H, KV, d, lens, nseq,
                      p_drop, r);
        if (tc) {
            backward_case(CU_BF16, CU_ATTN_AUTO, CU_ATTN_AUTO, H, KV, d, lens, nseq, p_drop, r);
            if (!test_cuda_quick())
                backward_case(CU_BF16, CU_ATTN_SIMT, CU_ATTN_SIMT, H, KV, d, lens, nseq, p_drop, r);
        }
    }
}

static void test_attention_backward(void **state)
{
    (void)state;
    struct test_rng r = {11};
    /* lengths around the 16- and 32-row tiles of the SIMT kernels and the 64-row tiles of the
     * tensor-core ones, a single token, an empty padding slot */
    const uint32_t lens[] = {1, 15, 16, 17, 0, 33, 63, 64, 65, 130, 3};
    backward_shapes(lens, sizeof lens / sizeof lens[0], 0.0f, &r);
}

/* The same shapes and lengths with the probabilities' dropout: every kernel, both types. */
static void test_attention_dropout(void **state)
{
    (void)state;
    struct test_rng r = {13};
    const uint32_t lens[] = {1, 15, 16, 17, 0, 33, 63, 64, 65, 130, 3};
    backward_shapes(lens, sizeof lens / sizeof lens[0], 0.2f, &r);
}

static void test_attention_backward_long(void **state)
{
    (void)state;
    if (test_cuda_quick()) {
        printf("  (NETLM_CUDA_TEST_QUICK: the 1024-token case is left out)\n");
        return;
    }
    struct test_rng r = {12};
    const uint32_t lens[] = {1024, 0, 700, 257};
    backward_case(CU_F32, CU_ATTN_AUTO, CU_ATTN_AUTO, 4, 2, 64, lens, 4, 0.0f, &r);
    backward_case(CU_BF16, CU_ATTN_AUTO, CU_ATTN_SIMT, 4, 2, 64, lens, 4, 0.0f, &r);
    backward_case(CU_BF16, CU_ATTN_AUTO, CU_ATTN_SIMT, 2, 2, 128, lens, 4, 0.0f, &r);
    /* indexes i·len + j past 2¹⁹ */
    backward_case(CU_F32, CU_ATTN_AUTO, CU_ATTN_AUTO, 4, 2, 64, lens, 4, 0.1f, &r);
    backward_case(CU_BF16, CU_ATTN_AUTO, CU_ATTN_SIMT, 4, 2, 64, lens, 4, 0.1f, &r);
    /* the tensor-core backward over 16 query tiles per key tile: d = 32, 64, 128, groups 4, 2 */
    backward_case(CU_BF16, CU_ATTN_AUTO, CU_ATTN_AUTO, 4, 1, 32, lens, 4, 0.0f, &r);
    backward_case(CU_BF16, CU_ATTN_AUTO, CU_ATTN_AUTO, 4, 2, 64, lens, 4, 0.0f, &r);
    backward_case(CU_BF16, CU_ATTN_AUTO, CU_ATTN_AUTO, 4, 2, 128, lens, 4, 0.0f, &r);
    backward_case(CU_BF16, CU_ATTN_AUTO, CU_ATTN_AUTO, 4, 2, 64, lens, 4, 0.1f, &r);
}

int main(void)
{
    /* the launchers take a stream; the legacy default stream keeps the host copies ordered */
    stream = 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_backward),
        cmocka_unit_test(test_attention_dropout),
        cmocka_unit_test(test_attention_backward_long),
    };
    return TEST_CUDA_RUN(tests);
}

#endif
