/* test_emulated_kernels.cc — the kernels that the emulated GPU unit tests do not reach (their
 * tests need cuBLASLt, the trainer or clusters), run on the host through cuda_emulate.h and
 * checked against their definitions computed here: the fallback GEMM epilogue (cu_bias_act:
 * bias, tanh GELU), the bias gradient's deterministic column sums (cu_gemm_bias_grad), the
 * residual and embedding dropout (cu_dropout_rows, masks from the dropout hash's definition), the
 * fp32 → bf16 mirror (cu_convert_f32), and Qwen2's up GEMM with the SwiGLU in its epilogue
 * (cu_gemm_swiglu: TMA, mbarriers, wgmma, clusters; every variant, under seven schedules). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" { /* cmocka.h declares no C linkage itself */
#include <cmocka.h>
}

#include "model/cuda/cuda_internal.h"
#include "model/cuda/cuda_train.h"
#include "model/dropout_hash.h"
#include "tests/emulate/emulate_test_util.h"

namespace {

double gelu_tanh(double x) { return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }

/* y[n, out] (row stride ld, the columns past out untouched) += bias, then GELU when asked */
template <typename T> void bias_act_case(enum cu_dtype t, uint32_t n, uint32_t out, uint32_t ld, bool bias, bool gelu,
                                         double bound)
{
    std::vector<float> y(n * ld), b(out);
    for (float &v : y)
        v = round_bf16(2.0f * normal());
    for (float &v : b)
        v = round_bf16(normal());
    std::vector<double> ref(n * ld);
    for (uint32_t r = 0; r < n; r++)
        for (uint32_t c = 0; c < ld; c++) {
            double v = y[r * ld + c];
            if (c < out) {
                v += bias ? b[c] : 0.0;
                v = gelu ? gelu_tanh(v) : v;
            }
            ref[r * ld + c] = v;
        }
    std::vector<T> dy = as_type<T>(y);
    const std::vector<T> db = as_type<T>(b);
    assert_int_equal(cu_bias_act(dy.data(), t, ld, bias ? db.data() : NULL, n, out, gelu, 0), cudaSuccess);
    const double err = relative_error(dy, ref, n, ld, ld);
    printf("  bias_act %s n=%u out=%u ld=%u%s%s: %.2e (bound %.0e)\n", t == CU_BF16 ? "bf16" : "fp32", n, out, ld,
           bias ? " bias" : "", gelu ? " gelu" : "", err, bound);
    assert_true(err <= bound);
}

void test_bias_act(void **)
{
    bias_act_case<float>(CU_F32, 37, 80, 80, true, false, 1e-6);
    bias_act_case<float>(CU_F32, 5, 96, 100, true, true, 1e-5);
    bias_act_case<float>(CU_F32, 9, 33, 33, false, true, 1e-5); /* odd width: scalar accesses */
    bias_act_case<__nv_bfloat16>(CU_BF16, 37, 64, 72, true, true, 8e-3);
}

/* db (fp32) += column sums of dy (n × out, row stride ldy); chunked through scratch or not */
template <typename T> void bias_grad_case(enum cu_dtype t, size_t n, size_t out, size_t ldy, size_t scratch_floats)
{
    std::vector<float> dy(n * ldy), db0(out);
    for (float &v : dy)
        v = round_bf16(normal());
    for (float &v : db0)
        v = normal();
    std::vector<double> ref(out);
    for (size_t c = 0; c < out; c++) {
        ref[c] = db0[c];
        for (size_t r = 0; r < n; r++)
            ref[c] += dy[r * ldy + c];
    }
    const std::vector<T> d_dy = as_type<T>(dy);
    std::vector<float> db = db0, db_again = db0, scratch(scratch_floats + 1);
    float *sp = scratch_floats ? scratch.data() : NULL;
    assert_int_equal(cu_gemm_bias_grad(db.data(), d_dy.data(), t, ldy, n, out, sp, scratch_floats, 0), cudaSuccess);
    assert_int_equal(cu_gemm_bias_grad(db_again.data(), d_dy.data(), t, ldy, n, out, sp, scratch_floats, 0),
                     cudaSuccess);
    const double err = relative_error(db, ref, 1, out, out);
    printf("  bias_grad %s n=%zu out=%zu scratch %zu: %.2e (bound 1e-5)\n", t == CU_BF16 ? "bf16" : "fp32", n, out,
           scratch_floats, err);
    assert_true(err <= 1e-5);
    assert_memory_equal(db.data(), db_again.data(), out * sizeof(float)); /* deterministic */
}

void test_bias_grad(void **)
{
    bias_grad_case<float>(CU_F32, 1000, 70, 72, 1 << 20);
    bias_grad_case<float>(CU_F32, 1000, 70, 70, 0); /* no scratch: one chunk */
    bias_grad_case<__nv_bfloat16>(CU_BF16, 513, 40, 48, 4096);
}

/* dst = (base +) M ⊙ src over the rows of each sequence, M from the hash as grad.c draws it */
template <typename T> void dropout_case(enum cu_dtype t, bool with_base, double bound)
{
    const uint32_t lens[] = {3, 0, 40, 17}, nseq = 4, c = 24, layer = 2, place = 3;
    uint32_t threshold;
    float scale;
    cu_dropout_params(0.3f, &threshold, &scale);
    std::vector<uint32_t> seq_off = {0};
    for (uint32_t len : lens)
        seq_off.push_back(seq_off.back() + len);
    const uint32_t rows = seq_off.back();
    std::vector<uint64_t> seq_key(nseq);
    for (uint32_t b = 0; b < nseq; b++)
        seq_key[b] = op_dropout_stream(99, b);
    std::vector<float> src(rows * c), base(rows * c);
    for (float &v : src)
        v = normal();
    for (float &v : base)
        v = normal();
    std::vector<double> ref(rows * c);
    size_t dropped = 0;
    for (uint32_t b = 0; b < nseq; b++) {
        const uint64_t key = op_dropout_stream(op_dropout_stream(seq_key[b], (uint64_t)layer * 4 + place), 0);
        for (uint32_t i = 0; i < lens[b]; i++)
            for (uint32_t j = 0; j < c; j++) {
                const bool drop = op_dropout_hash(key, (uint64_t)i * c + j) < threshold;
                const size_t e = (size_t)(seq_off[b] + i) * c + j;
                dropped += drop;
                ref[e] = (with_base ? base[e] : 0.0) + (drop ? 0.0 : (double)(src[e] * scale));
            }
    }
    std::vector<T> dst = nan_filled<T>(rows * c);
    assert_int_equal(cu_dropout_rows(dst.data(), t, with_base ? base.data() : NULL, src.data(), c, seq_off.data(), nseq,
                                     rows, seq_key.data(), layer, place, threshold, scale, 0),
                     cudaSuccess);
    const double err = relative_error(dst, ref, rows, c, c);
    printf("  dropout %s%s: %zu of %u dropped, %.2e (bound %.0e)\n", t == CU_BF16 ? "bf16" : "fp32",
           with_base ? " + base" : "", dropped, rows * c, err, bound);
    assert_true(err <= bound);
    assert_true(dropped > rows * c / 5 && dropped < rows * c * 2 / 5);
}

void test_dropout_rows(void **)
{
    dropout_case<float>(CU_F32, false, 1e-7);
    dropout_case<float>(CU_F32, true, 1e-7);
    dropout_case<__nv_bfloat16>(CU_BF16, true, 5e-3); /* bf16: half an ulp is up to 2⁻⁸ */
}

void test_convert(void **)
{
    std::vector<float> src(1001);
    for (float &v : src)
        v = normal() * 100.0f;
    src[5] = NAN;
    std::vector<__nv_bfloat16> got = nan_filled<__nv_bfloat16>(src.size() + 1);
    memset((void *)&got.back(), 0x5a, sizeof got.back()); /* past count: stays */
    assert_int_equal(cu_convert_f32(got.data(), CU_BF16, src.data(), src.size(), 0), cudaSuccess);
    std::vector<uint16_t> want(src.size());
    cu_host_from_f32(want.data(), CU_BF16, src.data(), src.size()); /* round to nearest even, NaN kept */
    for (size_t i = 0; i < src.size(); i++) {
        uint16_t g;
        memcpy(&g, &got[i], 2);
        if (i == 5)
            assert_true(std::isnan(__bfloat162float(got[i])));
        else
            assert_int_equal(g, want[i]);
    }
    uint16_t tail;
    memcpy(&tail, &got.back(), 2);
    assert_int_equal(tail, 0x5a5a);
    std::vector<float> same = nan_filled<float>(src.size());
    assert_int_equal(cu_convert_f32(same.data(), CU_F32, src.data(), src.size(), 0), cudaSuccess);
    assert_memory_equal(same.data() + 6, src.data() + 6, (src.size() - 6) * sizeof(float));
}

/* h = silu(s·x·Wgᵀ) ⊙ (s·x·Wuᵀ) for x [n × k] (row stride ldx), w [2f × k] (gate rows, then up
 * rows) and s a factor per row in [0.5, 2) (row_scale; the kernel's 1 without it for one row),
 * into h [n × f] (row stride ldh: the columns past f stay as they were), against double
 * precision on the same bf16 inputs. Bound: the bf16 rounding of h (2⁻⁹ relative) and fp32 sums. */
void gemm_swiglu_case(unsigned variant, uint32_t n, uint32_t k, uint32_t f, uint32_t ldx, uint32_t ldh)
{
    std::vector<float> x(n * ldx), w(2 * f * k);
    for (float &v : x)
        v = round_bf16(normal());
    for (float &v : w)
        v = round_bf16(normal() / 8);
    std::vector<float> row_scale(n);
    for (float &v : row_scale)
        v = n > 1 ? 0.5f + 1.5f * (float)uniform() : 1.0f;
    std::vector<double> ref(n * ldh);
    for (uint32_t r = 0; r < n; r++)
        for (uint32_t c = 0; c < f; c++) {
            double g = 0, u = 0;
            for (uint32_t j = 0; j < k; j++) {
                g += (double)x[r * ldx + j] * w[c * k + j];
                u += (double)x[r * ldx + j] * w[(f + c) * k + j];
            }
            g *= row_scale[r];
            u *= row_scale[r];
            ref[r * ldh + c] = g / (1 + exp(-g)) * u;
        }
    /* the kernel takes each half's rows in cu_gemm_swiglu_row's order and writes h in the
     * model's order */
    std::vector<float> w_kernel(w.size());
    for (uint32_t r = 0; r < 2 * f; r++)
        std::copy_n(&w[(r / f * f + cu_gemm_swiglu_row(r % f)) * k], k, &w_kernel[r * k]);
    const std::vector<__nv_bfloat16> dx = as_type<__nv_bfloat16>(x), dw = as_type<__nv_bfloat16>(w_kernel);
    std::vector<__nv_bfloat16> h = nan_filled<__nv_bfloat16>(n * ldh);
    const unsigned before = emu_launches;
    assert_int_equal(cu_gemm_swiglu(h.data(), ldh, dx.data(), ldx, dw.data(), n > 1 ? row_scale.data() : nullptr, n, k,
                                    f, variant, 0),
                     cudaSuccess);
    assert_int_equal(emu_launches, before + 1);
    const double err = relative_error(h, ref, n, ldh, f);
    bool untouched = true;
    for (uint32_t r = 0; r < n; r++)
        for (uint32_t c = f; c < ldh; c++)
            untouched &= std::isnan(value(h[r * ldh + c]));
    printf("    n=%u k=%u f=%u ldx=%u ldh=%u (%u CTAs): %.2e\n", n, k, f, ldx, ldh, emu_grid_dim.x, err);
    assert_true(err <= 1e-2);
    assert_true(untouched);
}

/* NETLM_EMULATE_SWIGLU_SHARD=i/n: the SwiGLU GEMM's variants v with v mod n = i only, and for
 * i > 0 that test alone (tests/CMakeLists.txt runs the variants as several ctest tests, each
 * within its time limit under the sanitizers) */
unsigned shard_index = 0, shard_count = 1;

void test_gemm_swiglu(void **)
{
    assert_true(cu_gemm_swiglu_supported(0, 64, 128));
    assert_false(cu_gemm_swiglu_supported(0, 64, 100)); /* f not a multiple of the 128-wide tile */
    assert_false(cu_gemm_swiglu_supported(0, 60, 128)); /* rows of x not 16-byte aligned */
    /* copies late: a read of a stage before its full barrier's wait shows; products late with
     * copies early: a stage released (and so refilled) before its products were waited for shows;
     * warps running ahead: a stage released before every warp read it shows; threads shuffled:
     * orders none of the fixed ones takes; with clusters, a block that leaves while its peers may
     * still arrive on its barriers shows too */
    const schedule schedules[] = {
        {EMU_CP_EARLY, EMU_CP_EARLY, false, "copies and products at issue"},
        {EMU_CP_EARLY, EMU_CP_EARLY, true, "at issue, threads in reverse order"},
        {EMU_CP_LATE, EMU_CP_EARLY, false, "copies at their waits"},
        {EMU_CP_EARLY, EMU_CP_LATE, false, "products at their waits"},
        {EMU_CP_EARLY, EMU_CP_LATE, false, "products at their waits, warps running ahead", true},
        {EMU_CP_LATE, EMU_CP_EARLY, false, "copies at their waits, threads shuffled", false, 0x9e3779b97f4a7c15ull},
        {EMU_CP_EARLY, EMU_CP_LATE, false, "products at their waits, threads shuffled", true, 0x2545f4914f6cdd1dull},
    };
    unsigned ran = 0;
    for (unsigned v = 0; cu_gemm_swiglu_variant(v); v++) {
        if (v % shard_count != shard_index)
            continue;
        ran++;
        for (const schedule &s : schedules) {
            const char *variant = cu_gemm_swiglu_variant(v);
            set_schedule(s);
            printf("  %s, %s\n", variant, s.name);
            gemm_swiglu_case(v, 1, 64, 128, 64, 128);    /* one row: a tile of 127 rows outside x */
            gemm_swiglu_case(v, 300, 200, 256, 200, 264); /* rows and K not multiples of the tile */
            gemm_swiglu_case(v, 129, 136, 384, 144, 384); /* more tiles than CTAs, a wider row stride */
            gemm_swiglu_case(v, 400, 72, 256, 72, 256);   /* and for 192-row tiles (-w3) */
            gemm_swiglu_case(v, 520, 64, 512, 64, 512);   /* and for clusters of 2 × 2 */
            gemm_swiglu_case(v, 200, 640, 128, 640, 128); /* more chunks than stages, tiles in turns */
            gemm_swiglu_case(v, 384, 320, 384, 320, 384); /* and a CTA's tiles one after another (-early) */
        }
    }
    assert_true(ran > 0); /* a shard past the variants checks nothing */
    set_schedule(schedules[0]);
}

} // namespace

int main(void)
{
    const char *shard = getenv("NETLM_EMULATE_SWIGLU_SHARD");
    if (shard) {
        char *end = NULL;
        shard_index = (unsigned)strtoul(shard, &end, 10);
        if (*end == '/')
            shard_count = (unsigned)strtoul(end + 1, &end, 10);
        if (*end || shard_count == 0 || shard_index >= shard_count) {
            fprintf(stderr, "test_emulated_kernels: NETLM_EMULATE_SWIGLU_SHARD: expected i/n with i < n, not '%s'\n",
                    shard);
            return 2;
        }
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_swiglu), cmocka_unit_test(test_bias_act),  cmocka_unit_test(test_bias_grad),
        cmocka_unit_test(test_dropout_rows), cmocka_unit_test(test_convert),
    };
    /* shards after the first: the SwiGLU GEMM's share of variants alone */
    return _cmocka_run_group_tests("test_emulated_kernels", tests, shard_index == 0 ? sizeof tests / sizeof tests[0] : 1,
                                   NULL, NULL);
}
