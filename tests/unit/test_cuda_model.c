/* test_cuda_model.c — the CUDA engine against the CPU runner (itself checked against the PyTorch
 * twin by test_model_reference) on random small models of both architectures: GPT-2 with the
 * standard and the UER LayerNorm, tanh and erf GELU; Qwen2 tied and untied with grouped-query
 * heads; every pooling; head dims that take the tensor-core and the SIMT attention; right-padded
 * batches of uneven lengths (up to 300 tokens, several key tiles).
 *
 * Bounds:
 * - fp32 engine: pooled states max |diff| ≤ 1e-4 × max |ref| (the bound the CPU path meets
 *   against the twin; per-op errors are ~1e-6 and compound over layers), scores and last-position
 *   logits the same (scores as absolute differences, they are probabilities).
 * - bf16 engine (bf16 weights, activations rounded at every op, fp32 residual stream): 5e-2 ×
 *   max |ref| for pooled states and logits, 5e-2 absolute for scores. Per op the rounding is
 *   ≤ 2⁻⁹ relative (test_cuda_ops); a layer applies about ten such roundings to the residual
 *   branch, on top of weights rounded to bf16 (2⁻⁹ each, averaging out over the K terms of a
 *   dot product): a few 1e-3 per layer, 1e-2 to 3e-2 after the final norm for these depths —
 *   half of llm.c's 0.079·|ref| per element. The classifier's out projection is scaled up
 *   (×40) so that scores are decisive, and argmax classes must agree wherever the CPU's margin
 *   between the two best classes exceeds twice the score bound.
 * - bf16 engine with residual_bf16 (the stream x in bf16 too), same models and batches: 8e-2 ×
 *   max |ref| for pooled states and logits, 8e-2 absolute for scores. On top of the above, the
 *   stream is rounded to bf16 after the embedding and after each of the 2 · layers residual adds
 *   (≤ 2⁻⁹ of the element each), and those errors reach the final norm through the identity
 *   path undamped: for 3 layers 7 roundings, 7 · 2⁻⁹ ≈ 1.4e-2 if they all line up (√7 · 2⁻⁹ ≈
 *   5e-3 typical), plus what each rounded input changes in the later branches. Added to the
 *   1e-2 to 3e-2 above that can reach ~5e-2; 8e-2 leaves room, and is still llm.c's per-element
 *   0.079 · |ref| applied to the largest element. Argmax classes must agree as above (margin
 *   above twice the score bound, 0.16).
 * - graphs: a replayed graph gives bit for bit what the eager run of the same bucket gave. */
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
    int dev = 99;
    if (!model_device_parse("cpu", &dev) || dev != -1 || model_cuda_device_count() != 0)
        return 1;
    printf("skipped: built without CUDA\n");
    return 77;
}
#else

#include <json-c/json.h>

#include "model/model_internal.h"
#include "tests/unit/test_cuda_util.h"

struct model_case {
    const char *name;
    struct test_model_shape shape;
    enum model_pooling pooling;
};

static const struct model_case cases[] = {
    /* d = 16: SIMT attention in both modes */
    {"gpt2 ln tanh d16 mean", {MODEL_ARCH_GPT2, 64, 2, 4, 4, 256, 300, MODEL_NORM_STANDARD, MODEL_ACT_GELU_TANH, true}, MODEL_POOL_MEAN},
    /* d = 64: tensor cores in bf16 */
    {"gpt2 uer erf d64 first", {MODEL_ARCH_GPT2, 128, 3, 2, 2, 384, 517, MODEL_NORM_UER, MODEL_ACT_GELU_ERF, true}, MODEL_POOL_FIRST},
    {"gpt2 ln tanh d64 max", {MODEL_ARCH_GPT2, 256, 2, 4, 4, 1024, 1000, MODEL_NORM_STANDARD, MODEL_ACT_GELU_TANH, true}, MODEL_POOL_MAX},
    {"qwen2 tied gqa d32 last", {MODEL_ARCH_QWEN2, 128, 3, 4, 2, 200, 300, MODEL_NORM_STANDARD, MODEL_ACT_SILU, true}, MODEL_POOL_LAST},
    {"qwen2 untied gqa d64 mean", {MODEL_ARCH_QWEN2, 256, 2, 4, 1, 344, 777, MODEL_NORM_STANDARD, MODEL_ACT_SILU, false}, MODEL_POOL_MEAN},
    /* ffn a multiple of 128: bf16 on Hopper runs the up GEMM with the SwiGLU in its epilogue */
    {"qwen2 tied gqa d64 ffn384 mean", {MODEL_ARCH_QWEN2, 256, 2, 4, 2, 384, 500, MODEL_NORM_STANDARD, MODEL_ACT_SILU, true}, MODEL_POOL_MEAN},
    /* d = 20: SIMT attention with GQA */
    {"qwen2 gqa d20 max", {MODEL_ARCH_QWEN2, 120, 2, 6, 3, 160, 400, MODEL_NORM_STANDARD, MODEL_ACT_SILU, true}, MODEL_POOL_MAX},
};

static const uint32_t num_labels = 7;

static struct model *make_model(const struct model_case *mc, uint64_t seed)
{
    struct model_config c;
    test_model_config(&c, &mc->shape, 300);
    char err[512];
    struct model *m = model_create(&c, seed, err, sizeof err);
    model_config_release(&c);
    if (!m)
        fail_msg("%s", err);
    if (!model_set_labels(m, num_labels, NULL, seed + 1, err, sizeof err))
        fail_msg("%s", err);
    model_config_mut(m)->pooling = mc->pooling;
    /* decisive scores: logits of a few units instead of hundredths */
    for (size_t i = 0; i < (size_t)num_labels * mc->shape.hidden; i++)
        m->w.cls_out_w[i] *= 40.0f;
    /* norm weights of a trained model, not model_create's ones: where the engine folds a norm's
     * weight into the product after it (Qwen2's MLP), a fold left out shows */
    struct test_rng r = {seed + 2};
    for (uint32_t l = 0; l <= mc->shape.layers; l++) {
        float *norm_w[2] = {l < mc->shape.layers ? m->w.layers[l].ln1_w : m->w.lnf_w,
                            l < mc->shape.layers ? m->w.layers[l].ln2_w : NULL};
        for (int k = 0; k < 2; k++)
            for (uint32_t j = 0; norm_w[k] && j < mc->shape.hidden; j++)
                norm_w[k][j] *= (float)(0.5 + test_uniform(&r));
    }
    return m;
}

/* A right-padded batch: lengths from 1 to seq (one full row), garbage in the padding. */
static void make_batch(uint32_t *ids, uint32_t *lengths, uint32_t batch, uint32_t seq,
                       uint32_t vocab, struct test_rng *r)
{
    for (uint32_t b = 0; b < batch; b++) {
        lengths[b] = b == 0 ? seq : 1 + (uint32_t)(test_uniform(r) * seq);
        if (lengths[b] > seq)
            lengths[b] = seq;
        for (uint32_t i = 0; i < seq; i++)
            ids[(size_t)b * seq + i] = i < lengths[b] ? (uint32_t)(test_uniform(r) * vocab) % vocab : 0xdeadbeefu;
    }
}

static uint32_t argmax(const float *x, uint32_t n, float *margin)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        best = x[i] > x[best] ? i : best;
    float second = -INFINITY;
    for (uint32_t i = 0; i < n; i++)
        if (i != best && x[i] > second)
            second = x[i];
    *margin = x[best] - second;
    return best;
}

static void compare_case(const struct model_case *mc, enum model_precision prec, bool residual_bf16,
                         uint32_t seq, uint32_t batch)
{
    const enum cu_dtype t = prec == MODEL_PRECISION_BF16 ? CU_BF16 : CU_F32;
    const double bound = residual_bf16 ? 8e-2 : t == CU_BF16 ? 5e-2 : 1e-4;
    const double rel_bound = bound, score_bound = bound;
    const char *stream_name = residual_bf16 ? " x bf16" : "";
    struct test_rng r = {0x5eed + mc->shape.hidden + seq};
    struct model *m = make_model(mc, 7 + mc->shape.layers);
    const uint32_t C = mc->shape.hidden, V = mc->shape.vocab, L = num_labels;
    char err[512];
    struct model_runner *cpu = model_runner_create(m, batch, seq, 0, 2, err, sizeof err);
    if (!cpu)
        fail_msg("%s", err);
    struct model_cuda_options o = {.device = 0, .precision = prec, .max_batch = batch,
                                   .max_seq = seq, .lm_head = true, .graphs = false,
                                   .residual_bf16 = residual_bf16};
    struct model_cuda *gpu = model_cuda_create(m, &o, err, sizeof err);
    if (!gpu)
        fail_msg("%s", err);

    uint32_t *ids = malloc((size_t)batch * seq * sizeof(uint32_t)), *lengths = malloc(batch * sizeof(uint32_t));
    float *ref_scores = malloc((size_t)batch * L * sizeof(float)), *got_scores = malloc((size_t)batch * L * sizeof(float));
    float *ref_pooled = malloc((size_t)batch * C * sizeof(float)), *got_pooled = malloc((size_t)batch * C * sizeof(float));
    float *all_logits = malloc((size_t)batch * seq * V * sizeof(float));
    float *ref_logits = malloc((size_t)batch * V * sizeof(float)), *got_logits = malloc((size_t)batch * V * sizeof(float));
    make_batch(ids, lengths, batch, seq, V, &r);

    assert_true(model_classify(cpu, ids, lengths, batch, seq, ref_pooled, ref_scores));
    if (!model_cuda_classify(gpu, ids, lengths, batch, seq, got_pooled, got_scores))
        fail_msg("%s", model_cuda_error(gpu));
    char label[128];
    snprintf(label, sizeof label, "%s T=%u%s pooled", mc->name, seq, stream_name);
    TEST_WITHIN(label, t, test_rel_err(got_pooled, ref_pooled, (size_t)batch * C), rel_bound);
    snprintf(label, sizeof label, "%s T=%u%s scores", mc->name, seq, stream_name);
    TEST_WITHIN(label, t, test_abs_err(got_scores, ref_scores, (size_t)batch * L), score_bound);
    uint32_t decided = 0;
    for (uint32_t b = 0; b < batch; b++) {
        float margin, unused;
        uint32_t want = argmax(ref_scores + (size_t)b * L, L, &margin);
        uint32_t got = argmax(got_scores + (size_t)b * L, L, &unused);
        if (margin > 2 * score_bound) {
            decided++;
            if (want != got)
                fail_msg("%s%s row %u: class %u on the GPU, %u on the CPU (margin %.3f)", mc->name, stream_name, b,
                         got, want, margin);
        }
    }
    printf("  %-40s argmax equal on %u of %u rows with a margin above %.2f\n", "", decided, batch, 2 * score_bound);

    assert_true(model_forward(cpu, ids, lengths, batch, seq, NULL, all_logits));
    for (uint32_t b = 0; b < batch; b++)
        memcpy(ref_logits + (size_t)b * V, all_logits + ((size_t)b * seq + lengths[b] - 1) * V, V * sizeof(float));
    if (!model_cuda_last_logits(gpu, ids, lengths, batch, seq, got_logits))
        fail_msg("%s", model_cuda_error(gpu));
    snprintf(label, sizeof label, "%s T=%u%s last logits", mc->name, seq, stream_name);
    TEST_WITHIN(label, t, test_rel_err(got_logits, ref_logits, (size_t)batch * V), rel_bound);

    /* padding is never read: other garbage, the same bits */
    for (uint32_t b = 0; b < batch; b++)
        for (uint32_t i = lengths[b]; i < seq; i++)
            ids[(size_t)b * seq + i] = 12345678u + i;
    float *again = malloc((size_t)batch * L * sizeof(float));
    if (!model_cuda_classify(gpu, ids, lengths, batch, seq, NULL, again))
        fail_msg("%s", model_cuda_error(gpu));
    assert_memory_equal(again, got_scores, (size_t)batch * L * sizeof(float));

    model_cuda_free(gpu);
    model_runner_free(cpu);
    model_free(m);
    free(ids), free(lengths), free(ref_scores), free(got_scores), free(ref_pooled), free(got_pooled);
    free(all_logits), free(ref_logits), free(got_logits), free(again);
}

static void test_fp32(void **state)
{
    (void)state;
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        compare_case(&cases[i], MODEL_PRECISION_FP32, false, 40, 6);
        if (!test_cuda_quick())
            compare_case(&cases[i], MODEL_PRECISION_FP32, false, 300, 3);
    }
}

static void test_bf16(void **state)
{
    (void)state;
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        compare_case(&cases[i], MODEL_PRECISION_BF16, false, 40, 6);
        if (!test_cuda_quick())
            compare_case(&cases[i], MODEL_PRECISION_BF16, false, 300, 3);
    }
}

/* The engine's kernel choices on the Qwen2 models, each forced whatever the batch's size (by
 * default the large batches get the up GEMM with the SwiGLU in its epilogue — Hopper, an ffn
 * that is a multiple of 128 — and grouped-query attention one block per kv head, the small ones
 * cuBLASLt's GEMM then the SwiGLU pass and a block per query head): each of those, the plain
 * fused kernel variant with RoPE inside the grouped attention in the classify pass, the grouped
 * attention on Hopper's warpgroup products beside a fused variant that keeps a product group in
 * flight, and that attention with RoPE inside; the same with each tile's softmax beside the tile
 * before's P·V, beside the staggered fused variants; and with two query tiles a block, without
 * and with RoPE inside. */
static void test_bf16_kernel_choices(void **state)
{
    (void)state;
    static const char *const choices[][2] = {
        {"0", "head"},           {"1", "group"},      {"c1", "group-rope"}, {"c2-w3-inflight", "wgmma"},
        {"c1-w3", "wgmma-rope"}, {"c2-w3-stagger", "wgmma-overlap"}, {"c2-stagger", "wgmma-overlap-rope"},
        {"c4-w3-inflight", "wgmma-pair"}, {"c1-w3-inflight", "wgmma-pair-rope"}};
    for (unsigned c = 0; c < sizeof choices / sizeof choices[0]; c++) {
        setenv("NETLM_CUDA_SWIGLU_GEMM", choices[c][0], 1);
        setenv("NETLM_CUDA_ATTN", choices[c][1], 1);
        for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            if (cases[i].shape.arch != MODEL_ARCH_QWEN2)
                continue;
            compare_case(&cases[i], MODEL_PRECISION_BF16, false, 40, 6);
            if (!test_cuda_quick())
                compare_case(&cases[i], MODEL_PRECISION_BF16, false, 200, 3);
        }
    }
    unsetenv("NETLM_CUDA_SWIGLU_GEMM");
    unsetenv("NETLM_CUDA_ATTN");
}

/* The step's choices in model_cuda_kernel_choices' report (an array; NULL when absent). */
static json_object *choices_of(json_object *report, const char *step)
{
    json_object *a = NULL;
    if (!json_object_object_get_ex(report, step, &a) || !json_object_is_type(a, json_type_array))
        return NULL;
    return a;
}

/* One class's choice: the pick, and whether it is the fastest of the times reported whose result
 * agreed with the reference's (timed) or no time was reported at all (not timed); the candidates
 * rejected for their results: exactly `rejected` (NULL: none). Returns the number timed. */
static size_t check_choice(json_object *choice, const char *step, const char **pick, const char *rejected)
{
    json_object *p = NULL, *ms = NULL, *out = NULL;
    assert_true(json_object_object_get_ex(choice, "pick", &p));
    assert_true(json_object_object_get_ex(choice, "ms", &ms));
    *pick = json_object_get_string(p);
    const bool any_rejected = json_object_object_get_ex(choice, "rejected", &out);
    assert_int_equal(any_rejected, rejected != NULL);
    if (rejected) {
        assert_int_equal(json_object_array_length(out), 1);
        assert_string_equal(json_object_get_string(json_object_array_get_idx(out, 0)), rejected);
    }
    const char *fastest = NULL;
    double best = INFINITY;
    size_t timed = 0;
    json_object_object_foreach(ms, name, t)
    {
        const double v = json_object_get_double(t);
        assert_true(v >= 0.0);
        if (v < best && !(rejected && strcmp(name, rejected) == 0)) {
            best = v;
            fastest = name;
        }
        timed++;
    }
    printf("  %s: %s of %zu timed (%s)%s%s\n", step, *pick, timed, json_object_to_json_string(ms),
           rejected ? ", rejected " : "", rejected ? rejected : "");
    if (timed)
        assert_string_equal(*pick, fastest);
    return timed;
}

/* Kernel choices timed on a shape's first pass (NETLM_CUDA_KERNEL_TUNE): on the emulated GPU
 * with the host's time between events (so that the candidates' times differ), each step of the
 * Qwen2 model whose up projection the fused kernel serves is timed with every candidate, the
 * fastest is picked and the results still match the CPU; the graph captured after that pass
 * replays the same kernels bit for bit. With tuning off, or a kernel named by the environment,
 * nothing is timed and the size rules pick (these batches are small: cuBLASLt and the pass, a
 * block per query head). Timed by launch count instead (an order known in advance), the
 * attention that rotates q and k itself wins (one launch against the others' two, their RoPE
 * pass included), so the pass that leaves RoPE out is checked as the engine chooses it. A
 * candidate whose result disagrees with the reference's (here: wiped after its timing,
 * NETLM_CUDA_TUNE_FAULT) is reported and not chosen, however fast, and no legitimate candidate
 * is rejected. A candidate that never finishes (emulated) fails the pass with an error instead
 * of hanging. */
static void test_timed_kernel_choices(void **state)
{
    (void)state;
    setenv("NETLM_CUDA_EMULATE_TIMING", "host", 1);
    const char *tune = getenv("NETLM_CUDA_KERNEL_TUNE");
    char *tune_before = tune ? strdup(tune) : NULL;
    const struct model_case *mc = &cases[5];
    struct model *m = make_model(mc, 21);
    const uint32_t batch = 4, seq = 40, L = num_labels;
    char err[512], report[4096];
    struct model_runner *cpu = model_runner_create(m, batch, seq, 0, 2, err, sizeof err);
    if (!cpu)
        fail_msg("%s", err);
    uint32_t ids[4 * 40], lengths[4];
    float first[4 * 7], replay[4 * 7], ref[4 * 7];
    struct test_rng r = {5};
    make_batch(ids, lengths, batch, seq, mc->shape.vocab, &r);
    assert_true(model_classify(cpu, ids, lengths, batch, seq, NULL, ref));
    int driver = 0; /* the emulated GPU has none (tests/emulate/cuda_runtime_emulated.cc) */
    const bool emulated = cudaDriverGetVersion(&driver) == cudaSuccess && driver == 0;
    for (int mode = 0; mode < 5; mode++) {
        /* 0: timed; 1: tuning off; 2: the up projection's kernel named, attention timed; 3:
         * timed by launch count (the emulated GPU only); 4: timed (by launch count where
         * emulated: the fused variants, one launch against cuBLASLt's and the pass's two, tie,
         * so the first would be chosen), the results of the grouped attention and of the first
         * fused variant wiped after their timing */
        if (mode == 3 && !emulated)
            continue;
        setenv("NETLM_CUDA_KERNEL_TUNE", mode == 1 ? "0" : "1", 1);
        setenv("NETLM_CUDA_EMULATE_TIMING", mode == 3 || mode == 4 ? "launches" : "host", 1);
        if (mode == 2)
            setenv("NETLM_CUDA_SWIGLU_GEMM", "c1", 1);
        else /* (mode 3 runs on the emulated GPU alone: mode 4 comes straight after 2 on a real one) */
            unsetenv("NETLM_CUDA_SWIGLU_GEMM");
        char fault[64];
        snprintf(fault, sizeof fault, "group,%s", cu_gemm_swiglu_variant(0));
        if (mode == 4)
            setenv("NETLM_CUDA_TUNE_FAULT", fault, 1);
        struct model_cuda_options o = {.device = 0, .precision = MODEL_PRECISION_BF16, .max_batch = batch,
                                       .max_seq = seq, .graphs = true};
        struct model_cuda *e = model_cuda_create(m, &o, err, sizeof err);
        if (!e)
            fail_msg("%s", err);
        if (!model_cuda_classify(e, ids, lengths, batch, seq, NULL, first) ||
            !model_cuda_classify(e, ids, lengths, batch, seq, NULL, replay))
            fail_msg("%s", model_cuda_error(e));
        TEST_WITHIN("chosen kernels vs cpu scores", CU_BF16, test_abs_err(first, ref, (size_t)batch * L), 5e-2);
        assert_memory_equal(first, replay, sizeof first);
        assert_true(model_cuda_kernel_choices(e, report, sizeof report));
        json_object *j = json_tokener_parse(report);
        assert_non_null(j);
        json_object *tuned = NULL, *mlp = choices_of(j, "mlp_up"), *attn = choices_of(j, "attention");
        assert_true(json_object_object_get_ex(j, "tuned", &tuned));
        assert_int_equal(json_object_get_boolean(tuned), mode != 1);
        assert_non_null(mlp);
        assert_non_null(attn);
        /* one class each: the eager pass made it, the capture and the replay kept it */
        assert_int_equal(json_object_array_length(attn), 1);
        const char *pick = NULL;
        json_object *attn0 = json_object_array_get_idx(attn, 0), *field = NULL;
        const size_t attn_timed = check_choice(attn0, "attention", &pick, mode == 4 ? "group" : NULL);
        /* its class: 4 sequences, the longest of 40 tokens (one 64-token tile), classifying */
        assert_true(json_object_object_get_ex(attn0, "sequences_up_to", &field));
        assert_int_equal(json_object_get_int(field), 4);
        assert_true(json_object_object_get_ex(attn0, "length_up_to", &field));
        assert_int_equal(json_object_get_int(field), 64);
        assert_true(json_object_object_get_ex(attn0, "classify", &field));
        assert_true(json_object_get_boolean(field));
        /* d = 64, 4 query heads on 2 kv heads, 40 tokens, a classify pass: a block per query head,
         * per kv head's group, that group with RoPE inside, and on Hopper the group on wgmma,
         * overlapped, in turn or two query tiles a block, each with RoPE inside too */
        int device_is_hopper = 0;
        cudaDeviceGetAttribute(&device_is_hopper, cudaDevAttrComputeCapabilityMajor, 0);
        assert_int_equal(attn_timed, mode == 1 ? 0 : device_is_hopper == 9 ? 9 : 3);
        if (mode == 1)
            assert_string_equal(pick, "head");
        if (mode == 3) /* (the wgmma kernels with RoPE inside tie with it, later in the order) */
            assert_string_equal(pick, "group+rope");
        if (mode == 2 || device_is_hopper != 9) {
            assert_int_equal(json_object_array_length(mlp), 0); /* named, or no fused kernel */
        } else {
            assert_int_equal(json_object_array_length(mlp), 1);
            unsigned variants = 0; /* counted by their names */
            while (cu_gemm_swiglu_variant(variants))
                variants++;
            json_object *mlp0 = json_object_array_get_idx(mlp, 0);
            const size_t mlp_timed = check_choice(mlp0, "mlp_up", &pick, mode == 4 ? fault + 6 : NULL);
            if (mode == 4 && emulated) /* the fastest, rejected: the next of the tie */
                assert_string_equal(pick, cu_gemm_swiglu_variant(1));
            /* its class: the batch's rows (its token bucket) within a power of two */
            uint32_t tokens = 0;
            for (uint32_t b = 0; b < batch; b++)
                tokens += lengths[b];
            assert_true(json_object_object_get_ex(mlp0, "rows_up_to", &field));
            const int64_t rows_up_to = json_object_get_int64(field);
            assert_true(rows_up_to >= tokens && rows_up_to < 4 * tokens && (rows_up_to & (rows_up_to - 1)) == 0);
            assert_int_equal(mlp_timed, mode == 1 ? 0 : 1 + variants);
            if (mode == 1)
                assert_string_equal(pick, "cublaslt+pass");
        }
        json_object_put(j);
        /* too small a buffer: false, still a terminated string */
        assert_false(model_cuda_kernel_choices(e, report, 8));
        assert_int_equal(strlen(report), 7);
        model_cuda_free(e);
    }
    unsetenv("NETLM_CUDA_SWIGLU_GEMM");
    unsetenv("NETLM_CUDA_TUNE_FAULT");
    if (emulated) {
        /* a candidate that never finishes: the pass fails with an error naming it, in 20 s,
         * instead of hanging, and nothing is chosen */
        setenv("NETLM_CUDA_KERNEL_TUNE", "1", 1);
        setenv("NETLM_CUDA_EMULATE_TIMING", "hang", 1);
        struct model_cuda_options o = {.device = 0, .precision = MODEL_PRECISION_BF16, .max_batch = batch,
                                       .max_seq = seq, .graphs = true};
        struct model_cuda *e = model_cuda_create(m, &o, err, sizeof err);
        if (!e)
            fail_msg("%s", err);
        assert_false(model_cuda_classify(e, ids, lengths, batch, seq, NULL, first));
        printf("  refused: %s\n", model_cuda_error(e));
        assert_non_null(strstr(model_cuda_error(e), "attention kernel candidate head did not finish"));
        assert_true(model_cuda_kernel_choices(e, report, sizeof report));
        assert_non_null(strstr(report, "\"attention\":[]"));
        model_cuda_free(e);
    }
    unsetenv("NETLM_CUDA_EMULATE_TIMING");
    if (tune_before)
        setenv("NETLM_CUDA_KERNEL_TUNE", tune_before, 1);
    else
        unsetenv("NETLM_CUDA_KERNEL_TUNE");
    free(tune_before);
    model_runner_free(cpu);
    model_free(m);
}

/* The bf16 engine with the residual stream in bf16 too, on the same models and batches. */
static void test_bf16_residual(void **state)
{
    (void)state;
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        compare_case(&cases[i], MODEL_PRECISION_BF16, true, 40, 6);
        if (!test_cuda_quick())
            compare_case(&cases[i], MODEL_PRECISION_BF16, true, 300, 3);
    }
}

/* CUDA graphs: bucketed shapes, the first call eager and captured, later calls replayed. */
static void test_graphs(void **state)
{
    (void)state;
    const struct model_case *mc = &cases[4];
    struct model *m = make_model(mc, 99);
    const uint32_t batch = 5, seq = 70, L = num_labels;
    char err[512];
    struct model_cuda_options o = {.device = 0, .precision = MODEL_PRECISION_BF16, .max_batch = 8,
                                   .max_seq = 128, .lm_head = false, .graphs = true};
    struct model_cuda *g = model_cuda_create(m, &o, err, sizeof err);
    o.graphs = false;
    struct model_cuda *plain = model_cuda_create(m, &o, err, sizeof err);
    if (!g || !plain)
        fail_msg("%s", err);
    struct model_runner *cpu = model_runner_create(m, batch, seq, 0, 2, err, sizeof err);
    struct test_rng r = {11};
    uint32_t ids[5 * 70], lengths[5];
    float first[5 * 7], replay[5 * 7], other[5 * 7], ref[5 * 7];
    for (int round = 0; round < 3; round++) {
        make_batch(ids, lengths, batch, seq, mc->shape.vocab, &r);
        if (!model_cuda_classify(g, ids, lengths, batch, seq, NULL, first) ||
            !model_cuda_classify(g, ids, lengths, batch, seq, NULL, replay) ||
            !model_cuda_classify(plain, ids, lengths, batch, seq, NULL, other))
            fail_msg("%s / %s", model_cuda_error(g), model_cuda_error(plain));
        assert_true(model_classify(cpu, ids, lengths, batch, seq, NULL, ref));
        /* the first call of a new bucket ran eagerly; the second replayed its graph */
        assert_memory_equal(first, replay, sizeof first);
        TEST_WITHIN("graph vs cpu scores", CU_BF16, test_abs_err(replay, ref, (size_t)batch * L), 5e-2);
        TEST_WITHIN("graph vs eager unpadded scores", CU_BF16, test_abs_err(replay, other, (size_t)batch * L), 5e-2);
    }
    /* a batch of 3 runs in a bucket of 4 sequences, the fourth empty; twice: eager, replay */
    for (int i = 0; i < 2; i++) {
        if (!model_cuda_classify(g, ids, lengths, 3, seq, NULL, replay))
            fail_msg("%s", model_cuda_error(g));
        assert_true(model_classify(cpu, ids, lengths, 3, seq, NULL, ref));
        TEST_WITHIN("graph, 3 rows in a bucket of 4", CU_BF16, test_abs_err(replay, ref, 3 * L), 5e-2);
    }
    model_runner_free(cpu);
    model_cuda_free(g);
    model_cuda_free(plain);
    model_free(m);
}

/* model_cuda_reload_weights: after the host weights change, an engine (with its captured graphs)
 * gives bit for bit what a new engine made from the changed model gives, for both architectures;
 * not with a batch in flight. */
static void test_reload_weights(void **state)
{
    (void)state;
    const int which[2] = {2, 4}; /* GPT-2 d64, Qwen2 untied */
    for (int c = 0; c < 2; c++) {
        const struct model_case *mc = &cases[which[c]];
        struct model *m = make_model(mc, 123);
        const uint32_t batch = 4, seq = 40, L = num_labels;
        char err[512];
        const struct model_cuda_options o = {.device = 0, .precision = MODEL_PRECISION_BF16, .max_batch = batch,
                                             .max_seq = seq, .graphs = true};
        struct model_cuda *kept = model_cuda_create(m, &o, err, sizeof err);
        if (!kept)
            fail_msg("%s", err);
        struct test_rng r = {5};
        uint32_t ids[4 * 40], lengths[4];
        make_batch(ids, lengths, batch, seq, mc->shape.vocab, &r);
        float before[4 * 7], after[4 * 7], fresh[4 * 7];
        /* twice: the second call replays the bucket's graph, which the reload must not stale */
        for (int i = 0; i < 2; i++)
            if (!model_cuda_classify(kept, ids, lengths, batch, seq, NULL, before))
                fail_msg("%s", model_cuda_error(kept));
        size_t n;
        float *p = model_params(m, &n);
        struct test_rng pr = {77};
        for (size_t i = 0; i < n; i++)
            p[i] += 0.05f * (test_uniform(&pr) - 0.5f);
        if (!model_cuda_reload_weights(kept) || !model_cuda_classify(kept, ids, lengths, batch, seq, NULL, after))
            fail_msg("%s", model_cuda_error(kept));
        struct model_cuda *made = model_cuda_create(m, &o, err, sizeof err);
        if (!made)
            fail_msg("%s", err);
        for (int i = 0; i < 2; i++)
            if (!model_cuda_classify(made, ids, lengths, batch, seq, NULL, fresh))
                fail_msg("%s", model_cuda_error(made));
        assert_memory_equal(after, fresh, sizeof after);
        assert_true(test_abs_err(after, before, (size_t)batch * L) > 1e-3); /* the change shows */
        /* a batch in flight reads the weights: no reload under it */
        assert_true(model_cuda_classify_submit(kept, ids, lengths, batch, seq, NULL, after));
        assert_false(model_cuda_reload_weights(kept));
        printf("  refused: %s\n", model_cuda_error(kept));
        assert_true(model_cuda_classify_wait(kept));
        assert_memory_equal(after, fresh, sizeof after);
        model_cuda_free(made);
        model_cuda_free(kept);
        model_free(m);
    }
}

/* Bad input is refused with a reason, and the engine stays usable. */
static void test_errors(void **state)
{
    (void)state;
    struct model *m = make_model(&cases[0], 5);
    char err[512];
    struct model_cuda_options o = {.device = 0, .precision = MODEL_PRECISION_BF16, .max_batch = 2, .max_seq = 16};
    struct model_cuda *e = model_cuda_create(m, &o, err, sizeof err);
    if (!e)
        fail_msg("%s", err);
    uint32_t ids[32] = {0}, lengths[2] = {4, 16};
    float scores[2 * 7], logits[8];
    lengths[0] = 0;
    assert_false(model_cuda_classify(e, ids, lengths, 2, 16, NULL, scores));
    printf("  refused: %s\n", model_cuda_error(e));
    lengths[0] = 4;
    ids[1] = 300; /* the vocabulary has 300 ids */
    assert_false(model_cuda_classify(e, ids, lengths, 2, 16, NULL, scores));
    printf("  refused: %s\n", model_cuda_error(e));
    ids[1] = 7;
    assert_false(model_cuda_classify(e, ids, lengths, 3, 16, NULL, scores));
    assert_false(model_cuda_last_logits(e, ids, lengths, 2, 16, logits)); /* no lm_head room */
    assert_true(model_cuda_classify(e, ids, lengths, 2, 16, NULL, scores));
    model_cuda_free(e);

    o.device = 4096;
    assert_null(model_cuda_create(m, &o, err, sizeof err));
    printf("  refused: %s\n", err);
    o.device = 0;
    o.max_seq = 4096; /* more than the model's positions */
    assert_null(model_cuda_create(m, &o, err, sizeof err));
    printf("  refused: %s\n", err);
    o.max_seq = 16;
    o.precision = MODEL_PRECISION_FP32;
    o.residual_bf16 = true; /* bf16 precision only */
    assert_null(model_cuda_create(m, &o, err, sizeof err));
    printf("  refused: %s\n", err);
    o.precision = MODEL_PRECISION_BF16;
    o.residual_bf16 = false;
    setenv("NETLM_CUDA_SWIGLU_GEMM", "c9", 1); /* no such kernel variant */
    assert_null(model_cuda_create(m, &o, err, sizeof err));
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "NETLM_CUDA_SWIGLU_GEMM"));
    unsetenv("NETLM_CUDA_SWIGLU_GEMM");
    setenv("NETLM_CUDA_ATTN", "fast", 1); /* none of auto, group, head, group-rope, wgmma */
    assert_null(model_cuda_create(m, &o, err, sizeof err));
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "NETLM_CUDA_ATTN"));
    unsetenv("NETLM_CUDA_ATTN");
    model_free(m);
}

int main(void)
{
    int dev = 99;
    if (!model_device_parse("cuda:3", &dev) || dev != 3 || model_device_parse("cuda:03", &dev) ||
        model_device_parse("gpu", &dev)) {
        printf("model_device_parse is wrong\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp32),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_bf16_kernel_choices),
        cmocka_unit_test(test_timed_kernel_choices),
        cmocka_unit_test(test_bf16_residual),
        cmocka_unit_test(test_graphs),
        cmocka_unit_test(test_reload_weights),
        cmocka_unit_test(test_errors),
    };
    return TEST_CUDA_RUN(tests);
}

#endif
