/* test_cuda_generate.c — generation on the GPU (model_cuda_generate, decode.cu) against the CPU's
 * model_generate (itself checked against the PyTorch twin's greedy continuations by
 * test_model_reference), on random small models of both architectures: GPT-2 with the standard
 * and the UER LayerNorm, Qwen2 tied and untied with grouped-query heads, head dims 16 to 128;
 * right-padded prompts of uneven lengths (1 to seq) in one batch.
 *
 * What is checked, and the bounds:
 * - cu_kv_store: the cache rows it writes are the qkv rows' k and v bit for bit, nothing else
 *   is written (padding rows store nothing).
 * - cu_decode_attention against a double-precision reference on the same (rounded) inputs:
 *   fp32 ≤ 1e-5 × max |ref|; bf16 ≤ 4e-3 × max |ref| — inputs are bf16 on both sides, the
 *   kernel's arithmetic is fp32 (~1e-6), and the output is rounded to bf16 once (≤ 2⁻⁹ ≈ 2e-3 of
 *   an element, hence of max |ref|): twice that. Cache lengths 1 to 300 (not a multiple of the
 *   32-key tile) and one of 2,048; a padding row must give zeros.
 * - cu_argmax_rows: exactly the CPU's rule (first maximum: ties → the lower id).
 * - every GPU call: each pass's logits (the prefill's, then each decode step's, through the
 *   engine's test hook) against the CPU's logits at the same position of the same sequence (a
 *   plain forward of the prompt and the tokens before the step), over the steps whose input
 *   tokens are the CPU's: fp32 ≤ 1e-4 × max |ref| and bf16 ≤ 5e-2 × max |ref| per step, the
 *   bounds test_cuda_model holds the engine's last-position logits to. This is what catches a
 *   wrong position, slot or head in the decode path even where the chosen token survives it.
 *   The projections of q, k, v and o are scaled up in some models (attn_gain) so that attention
 *   moves the logits (random N(0, 0.02) weights leave it nearly uniform and small).
 * - fp32 engine, greedy: out and out_len equal the CPU's token for token, with graphs off and on.
 *   The comparison is only meaningful where no step is a near tie, so the test first measures,
 *   along the CPU's path, each step's margin between its two best logits (relative to the
 *   step's max |logit|) and requires it above 1e-3 — five times what the fp32 engine's logit
 *   error (≤ 1e-4 × max |ref|, test_cuda_model) could overturn; the fixed seeds were chosen so
 *   that holds. The SEP row of the head is scaled up (sep_boost) so that some rows stop early
 *   on [SEP] and others run to max_new; the test checks that both happen.
 * - bf16 engine, greedy: a row's tokens must equal the CPU's up to its first step whose margin
 *   is at most 2 × 5e-2 × max |logit| (twice the bf16 logit bound: two logits each off by up
 *   to that cannot swap); from that step on the row may part from the CPU and is not compared.
 *   The count of compared tokens is printed and must be at least a fifth of all.
 * - sampled (temperature 0.8, top_k 5, fixed seed): two GPU calls give the same tokens (fp32
 *   and bf16); the fp32 ones equal the CPU's (same model_sample, same per-row streams; a draw
 *   could only differ if it fell within ~1e-6 of a boundary of the cumulative probabilities).
 * - bad input is refused with a reason and the engine stays usable; generation between
 *   last_logits calls changes nothing they return. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>

#ifndef NETLM_HAVE_CUDA
#include "model/model.h"
int main(void)
{
    if (model_cuda_device_count() != 0)
        return 1;
    printf("skipped: built without CUDA\n");
    return 77;
}
#else

#include "model/model_internal.h"
#include "tests/unit/test_cuda_util.h"

/* ---- the kernels alone ---- */

static void kv_store_case(enum cu_dtype t)
{
    const uint32_t H = 4, KV = 2, d = 24, QKV = (H + 2 * KV) * d, width = KV * d, slots = 3, cap = 10;
    const uint32_t n = 5;
    const uint32_t kvrow[5] = {0 * cap + 0, 2 * cap + 9, CU_KV_NONE, 1 * cap + 4, 2 * cap + 0};
    struct test_rng r = {41};
    float *qkv = malloc((size_t)n * QKV * sizeof(float));
    test_fill(qkv, (size_t)n * QKV, 1.0f, &r);
    test_round(qkv, (size_t)n * QKV, t);
    const size_t cache_n = (size_t)slots * cap * width;
    void *d_qkv = test_upload(qkv, (size_t)n * QKV, t);
    void *d_kc = test_poisoned(cache_n, t), *d_vc = test_poisoned(cache_n, t);
    uint32_t *d_kvrow = NULL;
    CUDA_OK(cudaMalloc((void **)&d_kvrow, sizeof kvrow));
    CUDA_OK(cudaMemcpy(d_kvrow, kvrow, sizeof kvrow, cudaMemcpyHostToDevice));
    CUDA_OK(cu_kv_store(d_kc, d_vc, d_qkv, QKV, H * d, width, d_kvrow, n, t, 0));
    float *kc = malloc(cache_n * sizeof(float)), *vc = malloc(cache_n * sizeof(float));
    test_download(kc, d_kc, cache_n, t);
    test_download(vc, d_vc, cache_n, t);
    for (uint32_t row = 0; row < slots * cap; row++) {
        int from = -1;
        for (uint32_t i = 0; i < n; i++)
            if (kvrow[i] == row)
                from = (int)i;
        for (uint32_t e = 0; e < width; e++) {
            const float k = kc[(size_t)row * width + e], v = vc[(size_t)row * width + e];
            if (from < 0) {
                if (!isnan(k) || !isnan(v))
                    fail_msg("kv store %s: cache row %u written but no row maps to it", test_dtype_name(t), row);
            } else if (k != qkv[(size_t)from * QKV + H * d + e] || v != qkv[(size_t)from * QKV + H * d + width + e]) {
                fail_msg("kv store %s: cache row %u element %u is not qkv row %d's", test_dtype_name(t), row, e, from);
            }
        }
    }
    printf("  kv store %s: 4 rows stored, a padding row skipped, nothing else written\n", test_dtype_name(t));
    cudaFree(d_qkv), cudaFree(d_kc), cudaFree(d_vc), cudaFree(d_kvrow);
    free(qkv), free(kc), free(vc);
}

static void test_kv_store(void **state)
{
    (void)state;
    kv_store_case(CU_F32);
    kv_store_case(CU_BF16);
}

/* Rows at the given positions, in slots taken in reverse order (slot ≠ row), plus one padding row
 * at the end; q rows are the first heads·d values of qkv-shaped rows (stride (H + 2KV)·d). */
static void decode_attention_case(enum cu_dtype t, uint32_t H, uint32_t KV, uint32_t d, uint32_t cap,
                                  const uint32_t *pos, uint32_t nreal)
{
    const uint32_t n = nreal + 1, ldq = (H + 2 * KV) * d, ldo = H * d, width = KV * d;
    const size_t cache_n = (size_t)nreal * cap * width;
    struct test_rng r = {1000 + H * 131 + d * 7 + cap};
    float *q = malloc((size_t)n * ldq * sizeof(float)), *kc = malloc(cache_n * sizeof(float));
    float *vc = malloc(cache_n * sizeof(float)), *ref = calloc((size_t)n * ldo, sizeof(float));
    float *got = malloc((size_t)n * ldo * sizeof(float));
    double *p = malloc(cap * sizeof(double));
    uint32_t *kvrow = malloc(n * sizeof(uint32_t)), *posv = malloc(n * sizeof(uint32_t));
    test_fill(q, (size_t)n * ldq, 1.0f, &r);
    test_fill(kc, cache_n, 1.0f, &r);
    test_fill(vc, cache_n, 1.0f, &r);
    test_round(q, (size_t)n * ldq, t);
    test_round(kc, cache_n, t);
    test_round(vc, cache_n, t);
    const float scale = 1.0f / sqrtf((float)d);
    for (uint32_t row = 0; row < nreal; row++) {
        const uint32_t slot = nreal - 1 - row, len = pos[row] + 1;
        kvrow[row] = slot * cap + pos[row];
        posv[row] = pos[row];
        for (uint32_t h = 0; h < H; h++) {
            const uint32_t kvh = h / (H / KV);
            const float *qh = q + (size_t)row * ldq + (size_t)h * d;
            double mx = -INFINITY, sum = 0.0;
            for (uint32_t j = 0; j < len; j++) {
                const float *k = kc + ((size_t)slot * cap + j) * width + (size_t)kvh * d;
                double dot = 0.0;
                for (uint32_t e = 0; e < d; e++)
                    dot += (double)qh[e] * k[e];
                p[j] = dot * scale;
                mx = p[j] > mx ? p[j] : mx;
            }
            for (uint32_t j = 0; j < len; j++)
                sum += p[j] = exp(p[j] - mx);
            for (uint32_t e = 0; e < d; e++) {
                double acc = 0.0;
                for (uint32_t j = 0; j < len; j++)
                    acc += p[j] * vc[((size_t)slot * cap + j) * width + (size_t)kvh * d + e];
                ref[(size_t)row * ldo + (size_t)h * d + e] = (float)(acc / sum);
            }
        }
    }
    kvrow[nreal] = CU_KV_NONE;
    posv[nreal] = 0;
    void *d_q = test_upload(q, (size_t)n * ldq, t), *d_kc = test_upload(kc, cache_n, t);
    void *d_vc = test_upload(vc, cache_n, t), *d_out = test_poisoned((size_t)n * ldo, t);
    uint32_t *d_kvrow = NULL, *d_pos = NULL;
    CUDA_OK(cudaMalloc((void **)&d_kvrow, n * sizeof(uint32_t)));
    CUDA_OK(cudaMalloc((void **)&d_pos, n * sizeof(uint32_t)));
    CUDA_OK(cudaMemcpy(d_kvrow, kvrow, n * sizeof(uint32_t), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d_pos, posv, n * sizeof(uint32_t), cudaMemcpyHostToDevice));
    CUDA_OK(cu_decode_attention(d_out, ldo, d_q, ldq, d_kc, d_vc, d_kvrow, d_pos, n, H, KV, d, scale, t, 0));
    test_download(got, d_out, (size_t)n * ldo, t);
    char label[96];
    uint32_t longest = 0;
    for (uint32_t i = 0; i < nreal; i++)
        longest = pos[i] + 1 > longest ? pos[i] + 1 : longest;
    snprintf(label, sizeof label, "decode attn H%u KV%u d%u keys ≤ %u", H, KV, d, longest);
    TEST_WITHIN(label, t, test_rel_err(got, ref, (size_t)n * ldo), test_bound_for(t, 1e-5, 4e-3));
    for (uint32_t e = 0; e < ldo; e++)
        if (got[(size_t)nreal * ldo + e] != 0.0f)
            fail_msg("decode attention: the padding row's output %u is %g, not 0", e, got[(size_t)nreal * ldo + e]);
    cudaFree(d_q), cudaFree(d_kc), cudaFree(d_vc), cudaFree(d_out), cudaFree(d_kvrow), cudaFree(d_pos);
    free(q), free(kc), free(vc), free(ref), free(got), free(p), free(kvrow), free(posv);
}

static void test_decode_attention(void **state)
{
    (void)state;
    /* one key, tile edges (32, 33, 64, 65 keys), a long row, the last position of the cache */
    static const uint32_t pos[] = {0, 1, 31, 32, 63, 64, 150, 299};
    static const struct { uint32_t H, KV, d; } shapes[] = {
        {4, 4, 16}, {6, 3, 20}, {4, 2, 32}, {4, 1, 64}, {14, 2, 64}, {2, 2, 128}, {8, 1, 128},
    };
    for (unsigned m = 0; m < 2; m++)
        for (unsigned i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
            decode_attention_case(test_modes[m], shapes[i].H, shapes[i].KV, shapes[i].d, 300, pos,
                                  sizeof pos / sizeof pos[0]);
    if (!test_cuda_quick()) {
        static const uint32_t long_pos[] = {2047, 1000};
        for (unsigned m = 0; m < 2; m++)
            decode_attention_case(test_modes[m], 4, 2, 64, 2048, long_pos, 2);
    }
}

static uint32_t cpu_argmax(const float *x, uint32_t n)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

static void test_argmax(void **state)
{
    (void)state;
    const uint32_t rows = 7, n = 65541, ld = 65664;
    struct test_rng r = {5};
    float *x = malloc((size_t)rows * ld * sizeof(float));
    test_fill(x, (size_t)rows * ld, 1.0f, &r);
    for (uint32_t j = 0; j < n; j++)
        x[1 * (size_t)ld + j] = 0.25f; /* all equal: 0 */
    x[2 * (size_t)ld + 300] = x[2 * (size_t)ld + 700] = x[2 * (size_t)ld + 64000] = 9.0f; /* ties: 300 */
    for (uint32_t j = 0; j < n; j++)
        x[3 * (size_t)ld + j] = -INFINITY; /* nothing better than -inf: 0 */
    x[4 * (size_t)ld + n - 1] = 50.0f;     /* the last one */
    x[5 * (size_t)ld + 255] = x[5 * (size_t)ld + 256] = 50.0f; /* a tie across threads' shares */
    for (uint32_t j = n; j < ld; j++)      /* past n: never read */
        for (uint32_t i = 0; i < rows; i++)
            x[(size_t)i * ld + j] = 1e30f;
    float *d_x = test_upload(x, (size_t)rows * ld, CU_F32);
    uint32_t *d_out = NULL, got[7];
    CUDA_OK(cudaMalloc((void **)&d_out, rows * sizeof(uint32_t)));
    CUDA_OK(cu_argmax_rows(d_out, d_x, rows, n, ld, 0));
    CUDA_OK(cudaMemcpy(got, d_out, sizeof got, cudaMemcpyDeviceToHost));
    for (uint32_t i = 0; i < rows; i++) {
        const uint32_t want = cpu_argmax(x + (size_t)i * ld, n);
        if (got[i] != want)
            fail_msg("argmax row %u: %u on the GPU, %u on the CPU", i, got[i], want);
    }
    /* a short row (fewer values than threads) */
    CUDA_OK(cu_argmax_rows(d_out, d_x + 4 * (size_t)ld + n - 3, 1, 3, 3, 0));
    CUDA_OK(cudaMemcpy(got, d_out, sizeof(uint32_t), cudaMemcpyDeviceToHost));
    assert_int_equal(got[0], 2);
    printf("  argmax: %u rows of %u and one of 3 as the CPU (ties: the lower id)\n", rows, n);
    cudaFree(d_x), cudaFree(d_out);
    free(x);
}

/* ---- the engine against model_generate ---- */

struct gen_case {
    const char *name;
    struct test_model_shape shape;
    float sep_boost; /* the SEP row of the LM head × this: rows stop on [SEP] at varying steps */
    float attn_gain; /* qkv and o projections × this: attention that decides tokens (random
                      * N(0, 0.02) weights leave it near uniform, its output small next to the
                      * residual, and a model that repeats its last input token) */
    uint32_t batch, seq, max_new;
    bool ignore_sep;
    uint64_t seed;
};

static const struct gen_case cases[] = {
    /* d = 16 and 20: the SIMT prefill attention; d = 32, 64, 128 take tensor cores in bf16.
     * Seeds and boosts: chosen (on the CPU) so that every fp32 step is decided (margin > 1e-3)
     * and some rows stop on [SEP] while others run to max_new. */
    {"gpt2 ln tanh d16", {MODEL_ARCH_GPT2, 64, 2, 4, 4, 256, 300, MODEL_NORM_STANDARD, MODEL_ACT_GELU_TANH, true}, 4.0f, 1.0f, 6, 40, 12, false, 9},
    {"gpt2 uer erf d64", {MODEL_ARCH_GPT2, 128, 2, 2, 2, 384, 517, MODEL_NORM_UER, MODEL_ACT_GELU_ERF, true}, 6.0f, 4.0f, 6, 40, 12, false, 4},
    {"qwen2 tied gqa d32", {MODEL_ARCH_QWEN2, 128, 2, 4, 2, 200, 300, MODEL_NORM_STANDARD, MODEL_ACT_SILU, true}, 2.0f, 1.0f, 6, 40, 12, false, 5},
    {"qwen2 untied gqa d64", {MODEL_ARCH_QWEN2, 256, 2, 4, 1, 344, 777, MODEL_NORM_STANDARD, MODEL_ACT_SILU, false}, 2.0f, 4.0f, 6, 40, 12, false, 2},
    {"qwen2 gqa d20", {MODEL_ARCH_QWEN2, 120, 2, 6, 3, 160, 400, MODEL_NORM_STANDARD, MODEL_ACT_SILU, true}, 4.0f, 1.0f, 6, 40, 12, false, 2},
    {"qwen2 untied d128", {MODEL_ARCH_QWEN2, 256, 2, 2, 1, 256, 200, MODEL_NORM_STANDARD, MODEL_ACT_SILU, false}, 2.0f, 1.0f, 6, 40, 12, false, 3},
    /* long caches (up to 260 keys, 9 tiles), every row to max_new */
    {"qwen2 tied gqa d32 long", {MODEL_ARCH_QWEN2, 128, 2, 4, 2, 200, 300, MODEL_NORM_STANDARD, MODEL_ACT_SILU, true}, 1.0f, 1.0f, 3, 200, 60, true, 1},
    {"gpt2 ln tanh d16 long", {MODEL_ARCH_GPT2, 64, 2, 4, 4, 256, 300, MODEL_NORM_STANDARD, MODEL_ACT_GELU_TANH, true}, 1.0f, 1.0f, 3, 200, 60, true, 5},
};
#define LONG_CASES 2 /* the last ones: skipped with NETLM_CUDA_TEST_QUICK=1 */

static unsigned case_count(void)
{
    const unsigned n = sizeof cases / sizeof cases[0];
    return test_cuda_quick() ? n - LONG_CASES : n;
}

static struct model *make_model(const struct gen_case *gc)
{
    struct model_config c;
    test_model_config(&c, &gc->shape, gc->seq);
    c.task = MODEL_TASK_GENERATE;
    char err[512];
    struct model *m = model_create(&c, gc->seed, err, sizeof err);
    model_config_release(&c);
    if (!m)
        fail_msg("%s", err);
    float *head = m->w.lm_head ? m->w.lm_head : m->w.wte;
    for (uint32_t j = 0; j < gc->shape.hidden; j++)
        head[(size_t)MODEL_TOKEN_SEP * gc->shape.hidden + j] *= gc->sep_boost;
    const size_t qkv = (size_t)(gc->shape.heads + 2 * gc->shape.kv_heads) * (gc->shape.hidden / gc->shape.heads) * gc->shape.hidden;
    for (uint32_t l = 0; l < gc->shape.layers; l++) {
        for (size_t i = 0; i < qkv; i++)
            m->w.layers[l].qkv_w[i] *= gc->attn_gain;
        for (size_t i = 0; i < (size_t)gc->shape.hidden * gc->shape.hidden; i++)
            m->w.layers[l].o_w[i] *= gc->attn_gain;
    }
    return m;
}

/* Right-padded prompts: row 0 full, the others 1..seq, garbage in the padding. */
static void make_prompts(const struct gen_case *gc, uint32_t *ids, uint32_t *lengths)
{
    struct test_rng r = {gc->seed * 977 + 3};
    for (uint32_t b = 0; b < gc->batch; b++) {
        lengths[b] = b == 0 ? gc->seq : 1 + (uint32_t)(test_uniform(&r) * gc->seq) % gc->seq;
        for (uint32_t i = 0; i < gc->seq; i++)
            ids[(size_t)b * gc->seq + i] = i < lengths[b] ? 2 + (uint32_t)(test_uniform(&r) * (gc->shape.vocab - 2)) % (gc->shape.vocab - 2)
                                                          : 0xdeadbeefu;
    }
}

/* What the CPU does with one case: its output, and along its own path each step's margin
 * between the two best logits over the step's max |logit| (from a plain forward of the prompt
 * and the tokens before the step). */
struct cpu_ref {
    struct model *m;
    uint32_t *ids, *lengths, *out, *out_len;
    float *margin; /* [batch][max_new] */
    float *logits; /* [batch][max_new][vocab] along the CPU's path (NaN past out_len) */
    float min_margin;
    uint32_t early, full; /* rows that stopped on [SEP] before max_new / ran to max_new */
};

static void cpu_reference(const struct gen_case *gc, const struct model_sampling *sp, struct cpu_ref *ref)
{
    const uint32_t B = gc->batch, S = gc->seq, N = gc->max_new, V = gc->shape.vocab;
    char err[512];
    ref->m = make_model(gc);
    ref->ids = malloc((size_t)B * S * sizeof(uint32_t));
    ref->lengths = malloc(B * sizeof(uint32_t));
    ref->out = malloc((size_t)B * N * sizeof(uint32_t));
    ref->out_len = malloc(B * sizeof(uint32_t));
    ref->margin = malloc((size_t)B * N * sizeof(float));
    ref->logits = malloc((size_t)B * N * V * sizeof(float));
    make_prompts(gc, ref->ids, ref->lengths);
    struct model_runner *r = model_runner_create(ref->m, B, S, S + N, 2, err, sizeof err);
    if (!r)
        fail_msg("%s", err);
    if (!model_generate(r, ref->ids, ref->lengths, B, S, sp, N, ref->out, ref->out_len))
        fail_msg("%s: model_generate failed", gc->name);
    model_runner_free(r);
    struct model_runner *f = model_runner_create(ref->m, 1, S + N, 0, 2, err, sizeof err);
    if (!f)
        fail_msg("%s", err);
    uint32_t *seqv = malloc((S + N) * sizeof(uint32_t));
    float *logits = malloc((size_t)(S + N) * V * sizeof(float));
    ref->min_margin = INFINITY;
    ref->early = ref->full = 0;
    for (uint32_t b = 0; b < B; b++) {
        const uint32_t len = ref->lengths[b], n = ref->out_len[b];
        if (n == N)
            ref->full++;
        else if (ref->out[(size_t)b * N + n - 1] == MODEL_TOKEN_SEP)
            ref->early++;
        memcpy(seqv, ref->ids + (size_t)b * S, len * sizeof(uint32_t));
        memcpy(seqv + len, ref->out + (size_t)b * N, (n - 1) * sizeof(uint32_t));
        uint32_t total = len + n - 1;
        if (!model_forward(f, seqv, &total, 1, total, NULL, logits))
            fail_msg("%s: model_forward failed", gc->name);
        for (uint32_t t = 0; t < N; t++) {
            float *keep = ref->logits + ((size_t)b * N + t) * V;
            if (t >= n) {
                ref->margin[(size_t)b * N + t] = NAN;
                for (uint32_t j = 0; j < V; j++)
                    keep[j] = NAN;
                continue;
            }
            const float *z = logits + (size_t)(len - 1 + t) * V;
            memcpy(keep, z, V * sizeof(float));
            uint32_t best = cpu_argmax(z, V);
            float second = -INFINITY, mx = 0.0f;
            for (uint32_t j = 0; j < V; j++) {
                if (j != best && z[j] > second)
                    second = z[j];
                mx = fabsf(z[j]) > mx ? fabsf(z[j]) : mx;
            }
            const float margin = (z[best] - second) / (mx > 0.0f ? mx : 1.0f);
            ref->margin[(size_t)b * N + t] = margin;
            ref->min_margin = margin < ref->min_margin ? margin : ref->min_margin;
        }
    }
    free(seqv);
    free(logits);
    model_runner_free(f);
}

static void cpu_ref_free(struct cpu_ref *ref)
{
    model_free(ref->m);
    free(ref->ids), free(ref->lengths), free(ref->out), free(ref->out_len), free(ref->margin), free(ref->logits);
}

static struct model_cuda *engine(const struct gen_case *gc, const struct model *m, enum model_precision prec,
                                 bool graphs)
{
    struct model_cuda_options o = {.device = 0, .precision = prec, .max_batch = gc->batch, .max_seq = gc->seq,
                                   .graphs = graphs, .kv_tokens = gc->seq + gc->max_new};
    char err[512];
    struct model_cuda *e = model_cuda_create(m, &o, err, sizeof err);
    if (!e)
        fail_msg("%s: %s", gc->name, err);
    return e;
}

/* The logits of every pass of a GPU call, through the engine's test hook: row b's step t (the
 * logits its token t is chosen from) at [b][t]. */
struct gpu_steps {
    uint32_t max_new, vocab;
    uint32_t seen[8]; /* passes row b took part in */
    float *logits;    /* [batch][max_new][vocab] */
    bool overflow;
};

static void on_pass(void *user, const uint32_t *rows, uint32_t n, const float *logits, uint32_t vocab)
{
    struct gpu_steps *g = user;
    for (uint32_t k = 0; k < n; k++) {
        const uint32_t b = rows[k], t = g->seen[b]++;
        if (vocab != g->vocab || b >= 8 || t >= g->max_new) {
            g->overflow = true;
            continue;
        }
        memcpy(g->logits + ((size_t)b * g->max_new + t) * vocab, logits + (size_t)k * vocab, vocab * sizeof(float));
    }
}

static void gpu_generate(struct model_cuda *e, const struct gen_case *gc, const struct cpu_ref *ref,
                         const struct model_sampling *sp, uint32_t *out, uint32_t *out_len, struct gpu_steps *steps)
{
    /* poisoned: every slot must be written (unused ones 0) */
    memset(out, 0xab, (size_t)gc->batch * gc->max_new * sizeof(uint32_t));
    memset(out_len, 0xab, gc->batch * sizeof(uint32_t));
    memset(steps->seen, 0, sizeof steps->seen);
    steps->max_new = gc->max_new;
    steps->vocab = gc->shape.vocab;
    steps->overflow = false;
    cu_engine_set_generate_hook(e, on_pass, steps);
    if (!model_cuda_generate(e, ref->ids, ref->lengths, gc->batch, gc->seq, sp, gc->max_new, out, out_len))
        fail_msg("%s: %s", gc->name, model_cuda_error(e));
    cu_engine_set_generate_hook(e, NULL, NULL);
    if (steps->overflow)
        fail_msg("%s: the hook saw more passes than tokens", gc->name);
    for (uint32_t b = 0; b < gc->batch; b++) {
        if (out_len[b] < 1 || out_len[b] > gc->max_new || steps->seen[b] != out_len[b])
            fail_msg("%s: row %u has %u tokens after %u passes", gc->name, b, out_len[b], steps->seen[b]);
        for (uint32_t u = out_len[b]; u < gc->max_new; u++)
            if (out[(size_t)b * gc->max_new + u] != 0)
                fail_msg("%s: row %u: unused slot %u is %u, not 0", gc->name, b, u, out[(size_t)b * gc->max_new + u]);
    }
}

/* The largest error of the GPU's logits over every step whose inputs were the CPU's (the row's
 * tokens before it equal), each step relative to its own max |ref|. */
static double step_logits_error(const struct gen_case *gc, const struct cpu_ref *ref, const uint32_t *out,
                                const uint32_t *out_len, const struct gpu_steps *steps, uint32_t *compared)
{
    const uint32_t N = gc->max_new, V = gc->shape.vocab;
    double worst = 0.0;
    *compared = 0;
    for (uint32_t b = 0; b < gc->batch; b++) {
        const uint32_t n = out_len[b] < ref->out_len[b] ? out_len[b] : ref->out_len[b];
        for (uint32_t t = 0; t < n; t++) {
            const size_t at = ((size_t)b * N + t) * V;
            const double err = test_rel_err(steps->logits + at, ref->logits + at, V);
            worst = err > worst ? err : worst;
            (*compared)++;
            if (out[(size_t)b * N + t] != ref->out[(size_t)b * N + t])
                break; /* the next step's input differs */
        }
    }
    return worst;
}

static void report_first_difference(const struct gen_case *gc, const struct cpu_ref *ref, const uint32_t *out,
                                    const uint32_t *out_len, const char *what)
{
    const uint32_t N = gc->max_new;
    for (uint32_t b = 0; b < gc->batch; b++)
        for (uint32_t t = 0; t < N; t++)
            if (out[(size_t)b * N + t] != ref->out[(size_t)b * N + t] || out_len[b] != ref->out_len[b])
                fail_msg("%s %s: row %u (prompt %u tokens) step %u: token %u on the GPU, %u on the CPU "
                         "(CPU margin %.3g; lengths %u / %u)",
                         gc->name, what, b, ref->lengths[b], t, out[(size_t)b * N + t], ref->out[(size_t)b * N + t],
                         t < ref->out_len[b] ? ref->margin[(size_t)b * N + t] : 0.0, out_len[b], ref->out_len[b]);
}

#define FP32_MIN_MARGIN 1e-3f
#define FP32_LOGITS 1e-4 /* test_cuda_model's last-logits bounds */
#define BF16_LOGITS 5e-2
#define BF16_MARGIN (2.0f * (float)BF16_LOGITS)

static struct gpu_steps *steps_for(const struct gen_case *gc)
{
    struct gpu_steps *g = calloc(1, sizeof *g);
    g->logits = malloc((size_t)gc->batch * gc->max_new * gc->shape.vocab * sizeof(float));
    return g;
}

static void steps_free(struct gpu_steps *g)
{
    free(g->logits);
    free(g);
}

static void test_greedy_fp32(void **state)
{
    (void)state;
    const struct model_sampling greedy = {.temperature = 0.0f, .top_p = 1.0f, .seed = 1};
    uint32_t early = 0, full = 0;
    for (unsigned i = 0; i < case_count(); i++) {
        const struct gen_case *gc = &cases[i];
        struct cpu_ref ref;
        struct model_sampling sp = greedy;
        sp.ignore_sep = gc->ignore_sep;
        cpu_reference(gc, &sp, &ref);
        if (!(ref.min_margin > FP32_MIN_MARGIN))
            fail_msg("%s: the CPU's path has a near tie (margin %.3g ≤ %.0e): the comparison would not be "
                     "meaningful; choose another seed", gc->name, ref.min_margin, FP32_MIN_MARGIN);
        early += ref.early;
        full += ref.full;
        uint32_t *out = malloc((size_t)gc->batch * gc->max_new * sizeof(uint32_t)), out_len[8], compared = 0;
        struct gpu_steps *steps = steps_for(gc);
        double worst = 0.0;
        for (int graphs = 0; graphs < 2; graphs++) {
            struct model_cuda *e = engine(gc, ref.m, MODEL_PRECISION_FP32, graphs);
            /* twice: with graphs the second call replays what the first captured */
            for (int call = 0; call < 2; call++) {
                gpu_generate(e, gc, &ref, &sp, out, out_len, steps);
                report_first_difference(gc, &ref, out, out_len, graphs ? "graphs" : "eager");
                const double err = step_logits_error(gc, &ref, out, out_len, steps, &compared);
                worst = err > worst ? err : worst;
            }
            model_cuda_free(e);
        }
        char label[96];
        snprintf(label, sizeof label, "%s: logits of %u steps", gc->name, compared);
        TEST_WITHIN(label, CU_F32, worst, FP32_LOGITS);
        uint32_t tokens = 0;
        for (uint32_t b = 0; b < gc->batch; b++)
            tokens += ref.out_len[b];
        printf("  %-28s fp32: %u tokens equal to the CPU's (eager, graphs), %u rows stopped on [SEP], "
               "min margin %.3g\n", gc->name, tokens, ref.early, ref.min_margin);
        free(out);
        steps_free(steps);
        cpu_ref_free(&ref);
    }
    /* the premise of the out_len checks: both kinds of rows occurred */
    if (early == 0 || full == 0)
        fail_msg("the cases had %u rows stopping early and %u running to max_new: both must occur", early, full);
}

static void test_greedy_bf16(void **state)
{
    (void)state;
    const struct model_sampling greedy = {.temperature = 0.0f, .top_p = 1.0f, .seed = 1};
    uint32_t compared = 0, total = 0;
    for (unsigned i = 0; i < case_count(); i++) {
        const struct gen_case *gc = &cases[i];
        const uint32_t N = gc->max_new;
        struct cpu_ref ref;
        struct model_sampling sp = greedy;
        sp.ignore_sep = gc->ignore_sep;
        cpu_reference(gc, &sp, &ref);
        uint32_t *out = malloc((size_t)gc->batch * N * sizeof(uint32_t)), out_len[8];
        struct model_cuda *e = engine(gc, ref.m, MODEL_PRECISION_BF16, i % 2 == 1);
        struct gpu_steps *steps = steps_for(gc);
        gpu_generate(e, gc, &ref, &sp, out, out_len, steps);
        uint32_t steps_compared;
        const double worst = step_logits_error(gc, &ref, out, out_len, steps, &steps_compared);
        char label[96];
        snprintf(label, sizeof label, "%s: logits of %u steps", gc->name, steps_compared);
        TEST_WITHIN(label, CU_BF16, worst, BF16_LOGITS);
        uint32_t here = 0, all = 0;
        for (uint32_t b = 0; b < gc->batch; b++) {
            all += ref.out_len[b];
            uint32_t t = 0;
            for (; t < ref.out_len[b] && ref.margin[(size_t)b * N + t] > BF16_MARGIN; t++) {
                if (out[(size_t)b * N + t] != ref.out[(size_t)b * N + t])
                    fail_msg("%s bf16: row %u step %u: token %u on the GPU, %u on the CPU (margin %.3f > %.2f)",
                             gc->name, b, t, out[(size_t)b * N + t], ref.out[(size_t)b * N + t],
                             ref.margin[(size_t)b * N + t], BF16_MARGIN);
                here++;
            }
            if (t == ref.out_len[b] && out_len[b] != ref.out_len[b])
                fail_msg("%s bf16: row %u: %u tokens on the GPU, %u on the CPU, every step decided", gc->name, b,
                         out_len[b], ref.out_len[b]);
        }
        printf("  %-28s bf16: %u of %u tokens decided (margin > %.2f) and equal\n", gc->name, here, all, BF16_MARGIN);
        compared += here;
        total += all;
        model_cuda_free(e);
        free(out);
        steps_free(steps);
        cpu_ref_free(&ref);
    }
    if (compared * 5 < total)
        fail_msg("only %u of %u tokens were decided: the bf16 comparison checks too little", compared, total);
}

static void test_sampled(void **state)
{
    (void)state;
    const struct model_sampling sp = {.temperature = 0.8f, .top_k = 5, .top_p = 1.0f, .seed = 1234};
    for (unsigned i = 0; i < case_count(); i += 3) {
        const struct gen_case *gc = &cases[i];
        const size_t slots = (size_t)gc->batch * gc->max_new;
        struct model_sampling s = sp;
        s.ignore_sep = gc->ignore_sep;
        struct cpu_ref ref;
        cpu_reference(gc, &s, &ref);
        uint32_t *a = malloc(slots * sizeof(uint32_t)), *b = malloc(slots * sizeof(uint32_t));
        uint32_t alen[8], blen[8];
        struct gpu_steps *steps = steps_for(gc);
        for (int m = 0; m < 2; m++) {
            const enum model_precision prec = m ? MODEL_PRECISION_BF16 : MODEL_PRECISION_FP32;
            struct model_cuda *e = engine(gc, ref.m, prec, m == 1);
            gpu_generate(e, gc, &ref, &s, a, alen, steps);
            gpu_generate(e, gc, &ref, &s, b, blen, steps);
            assert_memory_equal(alen, blen, gc->batch * sizeof(uint32_t));
            assert_memory_equal(a, b, slots * sizeof(uint32_t));
            if (prec == MODEL_PRECISION_FP32) {
                report_first_difference(gc, &ref, a, alen, "sampled fp32");
                uint32_t compared;
                const double err = step_logits_error(gc, &ref, a, alen, steps, &compared);
                char label[96];
                snprintf(label, sizeof label, "%s sampled: logits of %u steps", gc->name, compared);
                TEST_WITHIN(label, CU_F32, err, FP32_LOGITS);
            }
            printf("  %-28s sampled %s: two calls the same%s\n", gc->name, m ? "bf16" : "fp32",
                   m ? "" : ", and the CPU's draws");
            model_cuda_free(e);
        }
        free(a), free(b);
        steps_free(steps);
        cpu_ref_free(&ref);
    }
}

/* Bad input is refused with a reason; the engine stays usable, and generation in between does
 * not change what last_logits returns. */
static void test_errors(void **state)
{
    (void)state;
    const struct gen_case *gc = &cases[2];
    struct model *m = make_model(gc);
    char err[512];
    struct model_cuda_options o = {.device = 0, .precision = MODEL_PRECISION_FP32, .max_batch = 2, .max_seq = 16,
                                   .lm_head = true};
    uint32_t ids[32], lengths[2] = {4, 16}, out[2 * 8], out_len[2];
    for (uint32_t i = 0; i < 32; i++)
        ids[i] = 2 + i;
    struct model_cuda *e = model_cuda_create(m, &o, err, sizeof err);
    if (!e)
        fail_msg("%s", err);
    assert_false(model_cuda_generate(e, ids, lengths, 2, 16, NULL, 4, out, out_len)); /* no cache */
    printf("  refused: %s\n", model_cuda_error(e));
    model_cuda_free(e);

    o.kv_tokens = 20;
    e = model_cuda_create(m, &o, err, sizeof err);
    if (!e)
        fail_msg("%s", err);
    float before[2 * 300], after[2 * 300];
    if (!model_cuda_last_logits(e, ids, lengths, 2, 16, before))
        fail_msg("%s", model_cuda_error(e));
    assert_false(model_cuda_generate(e, ids, lengths, 2, 16, NULL, 5, out, out_len)); /* 16 + 5 > 20 */
    printf("  refused: %s\n", model_cuda_error(e));
    assert_false(model_cuda_generate(e, ids, lengths, 2, 16, NULL, 0, out, out_len));
    assert_false(model_cuda_generate(e, ids, lengths, 3, 16, NULL, 4, out, out_len)); /* batch > max */
    printf("  refused: %s\n", model_cuda_error(e));
    assert_false(model_cuda_generate(e, ids, lengths, 2, 16, NULL, 4, NULL, out_len));
    printf("  refused: %s\n", model_cuda_error(e));
    ids[17] = 300; /* row 1, outside the vocabulary */
    assert_false(model_cuda_generate(e, ids, lengths, 2, 16, NULL, 4, out, out_len));
    printf("  refused: %s\n", model_cuda_error(e));
    ids[17] = 19;
    lengths[0] = 0;
    assert_false(model_cuda_generate(e, ids, lengths, 2, 16, NULL, 4, out, out_len));
    lengths[0] = 4;
    if (!model_cuda_generate(e, ids, lengths, 2, 16, NULL, 4, out, out_len))
        fail_msg("%s", model_cuda_error(e));
    if (!model_cuda_last_logits(e, ids, lengths, 2, 16, after))
        fail_msg("%s", model_cuda_error(e));
    assert_memory_equal(before, after, sizeof before);
    model_cuda_free(e);

    o.kv_tokens = 1000; /* GPT-2 positions: more than the model's 512 */
    struct gen_case g2 = cases[0];
    struct model *m2 = make_model(&g2);
    assert_null(model_cuda_create(m2, &o, err, sizeof err));
    printf("  refused: %s\n", err);
    model_free(m2);
    model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_store),
        cmocka_unit_test(test_decode_attention),
        cmocka_unit_test(test_argmax),
        cmocka_unit_test(test_greedy_fp32),
        cmocka_unit_test(test_greedy_bf16),
        cmocka_unit_test(test_sampled),
        cmocka_unit_test(test_errors),
    };
    return TEST_CUDA_RUN(tests);
}

#endif
