/* test_emulated_attention.cc — the attention kernels (attention.cu, attention_wgmma.cu, decode.cu)
 * run on the host through cuda_emulate.h, called through their own entry points (cu_attention,
 * cu_attention_rope, cu_attention_train, cu_attention_backward, cu_kv_store, cu_decode_attention),
 * against attention computed here in double precision: the tensor-core forward (attn_tc) and its
 * grouped-query form with and without RoPE (attn_tc_group) and on wgmma (attn_wg_group), the SIMT
 * forward, both backwards with dropout, and generation's decode step over a KV cache with its
 * greedy argmax. Every case runs under four schedules (cp.async copying at issue or at the wait;
 * threads resuming in index order, in reverse or shuffled; wgmma's products at issue or at the
 * wait). On a GPU the same kernels are checked by test_cuda_ops /
 * test_cuda_attention_backward; this test is what a machine without one (CI)
 * checks of them: indexing, fragment layouts, masks, barriers and, under ASan, every access. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

extern "C" { /* cmocka.h declares no C linkage itself */
#include <cmocka.h>
}

#include <algorithm>
#include <vector>

#include "model/cuda/cuda_internal.h"
#include "model/cuda/cuda_train.h"
#include "model/dropout_hash.h"
#include "tests/emulate/emulate_test_util.h"

namespace {


/* One problem: packed sequences of qkv rows [q heads | k heads | v heads] (values already on the
 * bf16 grid, so both element types hold them exactly) and a random output gradient. */
struct problem {
    uint32_t heads, kv_heads, d, nseq, max_len, qkv_width, out_width;
    std::vector<uint32_t> seq_off;
    std::vector<float> qkv, dout;
    size_t rows() const { return seq_off.back(); }
};

problem make_problem(uint32_t heads, uint32_t kv_heads, uint32_t d, const std::vector<uint32_t> &lens)
{
    problem p{heads, kv_heads, d, (uint32_t)lens.size(), 0, (heads + 2 * kv_heads) * d, heads * d, {0}, {}, {}};
    for (uint32_t len : lens) {
        p.seq_off.push_back(p.seq_off.back() + len);
        p.max_len = std::max(p.max_len, len);
    }
    p.qkv.resize(p.rows() * p.qkv_width);
    p.dout.resize(p.rows() * p.out_width);
    for (float &v : p.qkv)
        v = round_bf16(1.5f * normal());
    for (float &v : p.dout)
        v = round_bf16(normal());
    return p;
}

/* cu_rope's tables for positions 0..n-1: angle pos / theta^(2j / d) */
void rope_tables(uint32_t n, uint32_t d, std::vector<float> &cos_t, std::vector<float> &sin_t)
{
    cos_t.resize((size_t)n * d / 2);
    sin_t.resize((size_t)n * d / 2);
    for (uint32_t pos = 0; pos < n; pos++)
        for (uint32_t j = 0; j < d / 2; j++) {
            const double a = pos / pow(1e6, 2.0 * j / d);
            cos_t[(size_t)pos * d / 2 + j] = (float)cos(a);
            sin_t[(size_t)pos * d / 2 + j] = (float)sin(a);
        }
}

/* q and k rotated as cu_rope leaves them in bf16 (positions = places in the sequence) */
std::vector<float> rotated(const problem &p, const std::vector<float> &cos_t, const std::vector<float> &sin_t)
{
    std::vector<float> x = p.qkv;
    const uint32_t half = p.d / 2;
    for (uint32_t b = 0; b < p.nseq; b++)
        for (uint32_t i = 0; i < p.seq_off[b + 1] - p.seq_off[b]; i++)
            for (uint32_t h = 0; h < p.heads + p.kv_heads; h++) {
                float *v = &x[(p.seq_off[b] + i) * p.qkv_width + h * p.d];
                for (uint32_t j = 0; j < half; j++) {
                    const float a = v[j], c = v[j + half], cs = cos_t[i * half + j], sn = sin_t[i * half + j];
                    v[j] = round_bf16(a * cs - c * sn);
                    v[j + half] = round_bf16(c * cs + a * sn);
                }
            }
    return x;
}

struct dropout_spec {
    uint32_t layer, threshold; /* threshold and scale as the trainer sets them (cu_dropout_params) */
    float scale;
    std::vector<uint64_t> seq_key;
};

/* cu_attn_dropout's factor for (sequence b, head h, query i, key j), from the hash's definition */
double drop_factor(const dropout_spec *drop, uint32_t b, uint32_t h, uint32_t i, uint32_t j, uint32_t len)
{
    if (!drop)
        return 1.0;
    const uint64_t key = op_dropout_stream(op_dropout_stream(drop->seq_key[b], (uint64_t)drop->layer * 4 + 1), h);
    return op_dropout_hash(key, (uint64_t)i * len + j) >= drop->threshold ? drop->scale : 0.0;
}

struct reference {
    std::vector<double> out, lse, dqkv; /* dqkv in qkv's layout */
};

/* softmax(scale · q·kᵀ) over keys 0..i, times the dropout factors, times v; and the backward of
 * Σ dout ⊙ out through it */
reference attention_reference(const problem &p, const std::vector<float> &qkv, const dropout_spec *drop)
{
    reference r{std::vector<double>(p.rows() * p.out_width), std::vector<double>(p.rows() * p.heads),
                std::vector<double>(p.rows() * p.qkv_width)};
    const double scale = 1.0 / sqrt((double)p.d);
    const uint32_t group = p.heads / p.kv_heads, D = p.d;
    for (uint32_t b = 0; b < p.nseq; b++) {
        const size_t s0 = p.seq_off[b];
        const uint32_t len = p.seq_off[b + 1] - p.seq_off[b];
        for (uint32_t h = 0; h < p.heads; h++) {
            const uint32_t q_col = h * D, k_col = (p.heads + h / group) * D, v_col = k_col + p.kv_heads * D;
            for (uint32_t i = 0; i < len; i++) {
                const float *q = &qkv[(s0 + i) * p.qkv_width + q_col];
                std::vector<double> prob(i + 1), dprob(i + 1);
                double mx = -1e300, sum = 0;
                for (uint32_t j = 0; j <= i; j++) {
                    const float *k = &qkv[(s0 + j) * p.qkv_width + k_col];
                    double dot = 0;
                    for (uint32_t e = 0; e < D; e++)
                        dot += (double)q[e] * k[e];
                    prob[j] = dot * scale;
                    mx = std::max(mx, prob[j]);
                }
                for (uint32_t j = 0; j <= i; j++)
                    sum += (prob[j] = exp(prob[j] - mx));
                r.lse[(s0 + i) * p.heads + h] = mx + log(sum);
                double *o = &r.out[(s0 + i) * p.out_width + q_col];
                const float *g = &p.dout[(s0 + i) * p.out_width + q_col];
                for (uint32_t j = 0; j <= i; j++) {
                    prob[j] /= sum;
                    const double m = drop_factor(drop, b, h, i, j, len);
                    const float *v = &qkv[(s0 + j) * p.qkv_width + v_col];
                    double gv = 0;
                    for (uint32_t e = 0; e < D; e++) {
                        o[e] += prob[j] * m * v[e];
                        gv += (double)g[e] * v[e];
                    }
                    dprob[j] = m * gv; /* ∂/∂P of Σ dout ⊙ (P ⊙ M)·V */
                }
                double delta = 0; /* Σ_j P_j · dP_j = Σ_e dout_e · out_e */
                for (uint32_t e = 0; e < D; e++)
                    delta += (double)g[e] * o[e];
                for (uint32_t j = 0; j <= i; j++) {
                    const double ds = prob[j] * (dprob[j] - delta) * scale, m = drop_factor(drop, b, h, i, j, len);
                    const float *k = &qkv[(s0 + j) * p.qkv_width + k_col];
                    double *dq = &r.dqkv[(s0 + i) * p.qkv_width + q_col];
                    double *dk = &r.dqkv[(s0 + j) * p.qkv_width + k_col];
                    double *dv = &r.dqkv[(s0 + j) * p.qkv_width + v_col];
                    for (uint32_t e = 0; e < D; e++) {
                        dq[e] += ds * k[e];
                        dk[e] += ds * q[e];
                        dv[e] += prob[j] * m * g[e];
                    }
                }
            }
        }
    }
    return r;
}



/* four schedules: cp.async copying at issue with threads resuming in index order, then in
 * reverse order (a buffer overwritten while another warp still reads it shows in one of them);
 * copying at the wait that covers them (a read before that wait shows), with threads resuming in
 * index order and in a shuffled one, the last also with wgmma's products made at their waits (an
 * accumulator read before its wait shows) */
const schedule schedules[] = {{EMU_CP_EARLY, EMU_CP_EARLY, false, "early copies"},
                              {EMU_CP_EARLY, EMU_CP_EARLY, true, "early copies, reverse order"},
                              {EMU_CP_LATE, EMU_CP_EARLY, false, "late copies"},
                              {EMU_CP_LATE, EMU_CP_LATE, false, "late copies and products, threads shuffled", false,
                               0x9e3779b97f4a7c15ull}};

/* the forward through cu_attention (impl), or cu_attention_rope when cos_t is given; checks the
 * output against the reference and that the launch's grid is the expected kernel's */
template <typename T>
void check_forward(const problem &p, enum cu_dtype t, enum cu_attn_impl impl, const std::vector<float> *cos_t,
                   const std::vector<float> *sin_t, uint32_t expect_grid_x, uint32_t expect_grid_y, double bound)
{
    const reference ref = attention_reference(p, cos_t ? rotated(p, *cos_t, *sin_t) : p.qkv, NULL);
    const std::vector<T> qkv = as_type<T>(p.qkv);
    for (const schedule &sched : schedules) {
        set_schedule(sched);
        std::vector<T> out = nan_filled<T>(p.rows() * p.out_width), qkv_in = qkv;
        const float scale = 1.0f / sqrtf((float)p.d);
        const cudaError_t e =
            cos_t ? cu_attention_rope(out.data(), p.out_width, qkv_in.data(), p.qkv_width, t, p.seq_off.data(), p.nseq,
                                      p.max_len, p.heads, p.kv_heads, p.d, scale, cos_t->data(), sin_t->data(), impl,
                                      0)
                  : cu_attention(out.data(), p.out_width, qkv_in.data(), p.qkv_width, t, p.seq_off.data(), p.nseq,
                                 p.max_len, p.heads, p.kv_heads, p.d, scale, impl, 0);
        assert_int_equal(e, cudaSuccess);
        assert_int_equal(emu_grid_dim.x, expect_grid_x);
        assert_int_equal(emu_grid_dim.y, expect_grid_y);
        const double err = relative_error(out, ref.out, p.rows(), p.out_width, p.out_width);
        printf("  forward d=%u heads %u/%u, %s: %.2e (bound %.0e)\n", p.d, p.heads, p.kv_heads,
               sched.name, err, bound);
        assert_true(err <= bound);
        assert_memory_equal(qkv_in.data(), qkv.data(), qkv.size() * sizeof(T)); /* q, k left unrotated */
    }
}

uint32_t tiles(uint32_t len, uint32_t tile) { return (len + tile - 1) / tile; }

/* bf16 against double: the probabilities are rounded to bf16 for P·V (as FlashAttention-2), the
 * output to bf16: a few 2⁻⁹ relative at most */
constexpr double TC_BOUND = 1e-2;

void test_tc_forward(void **)
{
    const std::vector<uint32_t> lens = {1, 17, 0, 64, 65, 130};
    check_forward<__nv_bfloat16>(make_problem(6, 2, 64, lens), CU_BF16, CU_ATTN_AUTO, NULL, NULL, tiles(130, 64), 6,
                                 TC_BOUND);
    check_forward<__nv_bfloat16>(make_problem(4, 1, 32, lens), CU_BF16, CU_ATTN_AUTO, NULL, NULL, tiles(130, 64), 4,
                                 TC_BOUND);
    check_forward<__nv_bfloat16>(make_problem(2, 2, 128, {70, 3}), CU_BF16, CU_ATTN_AUTO, NULL, NULL, 2, 2, TC_BOUND);
}

/* one block per kv head: grid.y = kv_heads; Qwen2.5-0.5B's 7 query heads per kv head (an odd
 * count: the two query buffers alternate unevenly), sequences up to the 256-token limit */
void test_group_forward(void **)
{
    check_forward<__nv_bfloat16>(make_problem(14, 2, 64, {256, 1, 0, 65, 130, 64}), CU_BF16, CU_ATTN_TC_GROUP, NULL,
                                 NULL, 4, 2, TC_BOUND);
    check_forward<__nv_bfloat16>(make_problem(4, 1, 32, {17, 100}), CU_BF16, CU_ATTN_TC_GROUP, NULL, NULL, 2, 1,
                                 TC_BOUND);
    check_forward<__nv_bfloat16>(make_problem(6, 2, 128, {63, 129}), CU_BF16, CU_ATTN_TC_GROUP, NULL, NULL, 3, 2,
                                 TC_BOUND);
}

/* the warpgroup kernel (attention_wgmma.cu: head_dim 64 on compute capability 9.0, which the
 * emulated device is) on the grouped kernel's cases, also with each tile's softmax beside the
 * tile before's P·V (walks of 1 to 4 key tiles) and with two query tiles a block (a block per
 * pair of tiles: a pair's second tile past short sequences, 3 tiles for 130 tokens), and where it
 * does not serve (d = 32, 128) the grouped kernel in its place; the last schedule also makes
 * each product late, at the wait that covers it */
void test_wg_group_forward(void **)
{
    for (enum cu_attn_impl impl : {CU_ATTN_WG_GROUP, CU_ATTN_WG_OVERLAP, CU_ATTN_WG_PAIR}) {
        const uint32_t per_block = impl == CU_ATTN_WG_PAIR ? 2 : 1;
        printf("  %s\n", impl == CU_ATTN_WG_OVERLAP ? "overlapped" : impl == CU_ATTN_WG_PAIR ? "pairs" : "in turn");
        check_forward<__nv_bfloat16>(make_problem(14, 2, 64, {256, 1, 0, 65, 130, 64}), CU_BF16, impl, NULL, NULL,
                                     4 / per_block, 2, TC_BOUND);
        check_forward<__nv_bfloat16>(make_problem(8, 1, 64, {200, 63, 129}), CU_BF16, impl, NULL, NULL, 4 / per_block,
                                     1, TC_BOUND);
    }
    check_forward<__nv_bfloat16>(make_problem(6, 2, 64, {130, 2, 70}), CU_BF16, CU_ATTN_WG_PAIR, NULL, NULL, 2, 2,
                                 TC_BOUND);
    check_forward<__nv_bfloat16>(make_problem(4, 1, 32, {17, 100}), CU_BF16, CU_ATTN_WG_GROUP, NULL, NULL, 2, 1,
                                 TC_BOUND);
    check_forward<__nv_bfloat16>(make_problem(6, 2, 128, {63, 129}), CU_BF16, CU_ATTN_WG_GROUP, NULL, NULL, 3, 2,
                                 TC_BOUND);
}

/* RoPE inside the grouped kernel, and inside the warpgroup one (head_dim 64; the grouped kernel
 * in its place elsewhere): its keys rotated in their swizzled tiles */
void test_group_rope_forward(void **)
{
    std::vector<float> cos_t, sin_t;
    for (enum cu_attn_impl impl : {CU_ATTN_TC_GROUP, CU_ATTN_WG_GROUP, CU_ATTN_WG_OVERLAP, CU_ATTN_WG_PAIR})
        for (uint32_t d : {64u, 32u, 128u}) {
            rope_tables(256, d, cos_t, sin_t);
            const problem p = d == 64 ? make_problem(14, 2, 64, {256, 1, 0, 65, 130})
                                      : make_problem(d == 32 ? 4 : 6, d == 32 ? 1 : 2, d, {17, 129});
            printf("  %s\n", impl == CU_ATTN_WG_OVERLAP ? "wgmma overlapped"
                             : impl == CU_ATTN_WG_PAIR   ? "wgmma pairs"
                             : impl == CU_ATTN_WG_GROUP  ? "wgmma"
                                                         : "mma.sync");
            /* (pairs of query tiles where the warpgroup kernel serves, d = 64) */
            const uint32_t per_block = impl == CU_ATTN_WG_PAIR && d == 64 ? 2 : 1;
            check_forward<__nv_bfloat16>(p, CU_BF16, impl, &cos_t, &sin_t, tiles(tiles(p.max_len, 64), per_block),
                                         p.kv_heads, TC_BOUND);
        }
    /* outside what the kernel serves (no grouping, too long, tables whose entry pairs are not
     * 8-byte aligned): refused, nothing launched */
    std::vector<__nv_bfloat16> buf(16);
    alignas(16) __nv_bfloat16 qkv16[16] = {};
    const uint32_t off[2] = {0, 300}, short_off[2] = {0, 2}, launches = emu_launches;
    assert_false(cu_attention_fuses_rope(CU_BF16, 64, 4, 4, 256, 768, 256));
    assert_int_equal(cu_attention_rope(buf.data(), 256, buf.data(), 512, CU_BF16, off, 1, 300, 4, 2, 64, 0.125f,
                                       cos_t.data(), sin_t.data(), CU_ATTN_WG_GROUP, 0),
                     cudaErrorNotSupported);
    assert_int_equal(cu_attention_rope(buf.data(), 256, qkv16, 512, CU_BF16, short_off, 1, 2, 4, 2, 64, 0.125f,
                                       cos_t.data() + 1, sin_t.data(), CU_ATTN_TC_GROUP, 0),
                     cudaErrorNotSupported);
    assert_int_equal(emu_launches, launches);
}

/* the SIMT kernel: fp32 throughout against double (a head_dim the tensor cores do not take), and
 * bf16 when asked for */
void test_simt_forward(void **)
{
    const std::vector<uint32_t> lens = {1, 33, 0, 70};
    check_forward<float>(make_problem(4, 2, 48, lens), CU_F32, CU_ATTN_AUTO, NULL, NULL, tiles(70, 16), 4, 1e-5);
    check_forward<__nv_bfloat16>(make_problem(4, 2, 64, lens), CU_BF16, CU_ATTN_SIMT, NULL, NULL, tiles(70, 16), 4,
                                 TC_BOUND);
}

/* cu_attention_train (the log-sum-exp; dropout when drop) then cu_attention_backward (impl):
 * out, lse, dq, dk, dv against the reference */
template <typename T>
void check_backward(const problem &p, enum cu_dtype t, enum cu_attn_impl impl, const dropout_spec *drop,
                    double bound_out, double bound_grad)
{
    const reference ref = attention_reference(p, p.qkv, drop);
    const std::vector<T> qkv = as_type<T>(p.qkv), dout = as_type<T>(p.dout);
    cu_attn_dropout device_drop{};
    if (drop)
        device_drop = {drop->seq_key.data(), drop->layer, drop->threshold, drop->scale};
    const float scale = 1.0f / sqrtf((float)p.d);
    for (const schedule &sched : schedules) {
        set_schedule(sched);
        std::vector<T> out = nan_filled<T>(p.rows() * p.out_width), dqkv = nan_filled<T>(p.rows() * p.qkv_width);
        std::vector<float> lse = nan_filled<float>(p.rows() * p.heads), delta = nan_filled<float>(p.rows() * p.heads);
        assert_int_equal(cu_attention_train(out.data(), p.out_width, lse.data(), qkv.data(), p.qkv_width, t,
                                            p.seq_off.data(), p.nseq, p.max_len, p.heads, p.kv_heads, p.d, scale, impl,
                                            drop ? &device_drop : NULL, 0),
                         cudaSuccess);
        assert_int_equal(cu_attention_backward(dqkv.data(), p.qkv_width, dout.data(), p.out_width, out.data(),
                                               p.out_width, qkv.data(), p.qkv_width, lse.data(), delta.data(), t,
                                               p.seq_off.data(), p.nseq, p.max_len, p.heads, p.kv_heads, p.d, scale,
                                               impl, drop ? &device_drop : NULL, 0),
                         cudaSuccess);
        const double e_out = relative_error(out, ref.out, p.rows(), p.out_width, p.out_width);
        const double e_lse = relative_error(lse, ref.lse, p.rows(), p.heads, p.heads);
        const double e_grad = relative_error(dqkv, ref.dqkv, p.rows(), p.qkv_width, p.qkv_width);
        printf("  backward d=%u heads %u/%u%s, %s: out %.2e lse %.2e dqkv %.2e (bounds %.0e, %.0e)\n", p.d,
               p.heads, p.kv_heads, drop ? ", dropout" : "", sched.name, e_out, e_lse, e_grad, bound_out,
               bound_grad);
        assert_true(e_out <= bound_out);
        assert_true(e_lse <= 1e-5);
        assert_true(e_grad <= bound_grad);
    }
}

dropout_spec make_dropout(const problem &p, float prob)
{
    dropout_spec d{3, 0, 0.0f, std::vector<uint64_t>(p.nseq)};
    cu_dropout_params(prob, &d.threshold, &d.scale);
    for (uint64_t &k : d.seq_key)
        k = op_dropout_stream(12345, (uint64_t)(&k - d.seq_key.data()));
    return d;
}

/* the tensor-core backward: products in bf16, P and dS rounded to bf16 (FlashAttention-2's
 * choices), sums in fp32; the output gradient in bf16 */
void test_tc_backward(void **)
{
    const std::vector<uint32_t> lens = {1, 17, 0, 64, 65, 130};
    check_backward<__nv_bfloat16>(make_problem(6, 2, 64, lens), CU_BF16, CU_ATTN_AUTO, NULL, TC_BOUND, 2e-2);
    check_backward<__nv_bfloat16>(make_problem(4, 1, 32, {33, 70}), CU_BF16, CU_ATTN_AUTO, NULL, TC_BOUND, 2e-2);
    check_backward<__nv_bfloat16>(make_problem(2, 2, 128, {70, 5}), CU_BF16, CU_ATTN_AUTO, NULL, TC_BOUND, 2e-2);
    const problem p = make_problem(6, 2, 64, {1, 65, 130});
    const dropout_spec drop = make_dropout(p, 0.2f);
    check_backward<__nv_bfloat16>(p, CU_BF16, CU_ATTN_AUTO, &drop, TC_BOUND, 2e-2);
}

/* the SIMT backward in fp32 against double, with and without dropout */
void test_simt_backward(void **)
{
    const problem p = make_problem(4, 2, 48, {1, 33, 0, 70});
    check_backward<float>(p, CU_F32, CU_ATTN_SIMT, NULL, 1e-5, 1e-4);
    const dropout_spec drop = make_dropout(p, 0.25f);
    check_backward<float>(p, CU_F32, CU_ATTN_SIMT, &drop, 1e-5, 1e-4);
}

/* generation's kernels (decode.cu): every row of every sequence stored into its slot of a KV
 * cache by cu_kv_store, then each row asked as a decode step at its own position — which is the
 * causal attention of the whole sequence, row by row — plus a padding row (CU_KV_NONE: zeros) */
template <typename T> void check_decode(const problem &p, enum cu_dtype t, double bound)
{
    const reference ref = attention_reference(p, p.qkv, NULL);
    const std::vector<T> qkv = as_type<T>(p.qkv);
    const uint32_t kv_tokens = p.max_len + 3, width = p.kv_heads * p.d, n = (uint32_t)p.rows() + 1;
    std::vector<uint32_t> kvrow(n), pos(n);
    for (uint32_t b = 0; b < p.nseq; b++)
        for (uint32_t i = 0; i < p.seq_off[b + 1] - p.seq_off[b]; i++) {
            kvrow[p.seq_off[b] + i] = b * kv_tokens + i;
            pos[p.seq_off[b] + i] = i;
        }
    kvrow[n - 1] = CU_KV_NONE;
    pos[n - 1] = 0;
    std::vector<T> q_rows(qkv); /* one more row: the padding row's (never read) */
    q_rows.resize((size_t)n * p.qkv_width);
    for (const schedule &sched : schedules) {
        set_schedule(sched);
        std::vector<T> kc = nan_filled<T>((size_t)p.nseq * kv_tokens * width), vc = kc;
        std::vector<T> out = nan_filled<T>((size_t)n * p.out_width);
        assert_int_equal(cu_kv_store(kc.data(), vc.data(), qkv.data(), p.qkv_width, p.heads * p.d, width, kvrow.data(),
                                     n - 1, t, 0),
                         cudaSuccess);
        assert_int_equal(cu_decode_attention(out.data(), p.out_width, q_rows.data(), p.qkv_width, kc.data(), vc.data(),
                                             kvrow.data(), pos.data(), n, p.heads, p.kv_heads, p.d,
                                             1.0f / sqrtf((float)p.d), t, 0),
                         cudaSuccess);
        const double err = relative_error(out, ref.out, p.rows(), p.out_width, p.out_width);
        printf("  decode d=%u heads %u/%u, %s: %.2e (bound %.0e)\n", p.d, p.heads, p.kv_heads, sched.name, err, bound);
        assert_true(err <= bound);
        for (uint32_t c = 0; c < p.out_width; c++) /* the padding row */
            assert_true(value(out[(size_t)(n - 1) * p.out_width + c]) == 0.0f);
    }
}

void test_decode(void **)
{
    check_decode<float>(make_problem(6, 2, 64, {1, 40, 0, 33}), CU_F32, 1e-5);
    check_decode<__nv_bfloat16>(make_problem(4, 4, 32, {70, 5}), CU_BF16, TC_BOUND);
    check_decode<float>(make_problem(2, 1, 128, {3, 65}), CU_F32, 1e-5);
}

/* greedy choice: the largest logit, the lower index on a tie */
void test_argmax(void **)
{
    const uint32_t rows = 5, n = 1000, ld = 1003;
    std::vector<float> x(rows * ld);
    for (float &v : x)
        v = normal();
    x[2 * ld + 7] = x[2 * ld + 500] = 9.0f;  /* a tie: 7 wins */
    x[3 * ld + 999] = 9.0f;                  /* the last column */
    x[4 * ld + 1000] = 99.0f;                /* past n: not seen */
    std::vector<uint32_t> got(rows, UINT32_MAX);
    assert_int_equal(cu_argmax_rows(got.data(), x.data(), rows, n, ld, 0), cudaSuccess);
    for (uint32_t r = 0; r < rows; r++) {
        uint32_t best = 0;
        for (uint32_t c = 1; c < n; c++)
            if (x[r * ld + c] > x[r * ld + best])
                best = c;
        assert_int_equal(got[r], best);
    }
    assert_int_equal(got[2], 7);
    assert_int_equal(got[3], 999);
}

} // namespace

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tc_forward),         cmocka_unit_test(test_group_forward),
        cmocka_unit_test(test_wg_group_forward),
        cmocka_unit_test(test_group_rope_forward), cmocka_unit_test(test_simt_forward),
        cmocka_unit_test(test_tc_backward),        cmocka_unit_test(test_simt_backward),
        cmocka_unit_test(test_decode),             cmocka_unit_test(test_argmax),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
