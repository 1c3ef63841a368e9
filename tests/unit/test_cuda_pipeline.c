/* test_cuda_pipeline.c — the CUDA engine's double-buffered classification
 * (model_cuda_classify_submit / model_cuda_classify_wait) against its own synchronous
 * model_cuda_classify, which is submit + wait of one batch: the same kernels, buckets and GEMM
 * plans on the same engine, so every comparison here is bit for bit (fp32 and bf16, graphs on and
 * off). The batches differ in size, width and lengths, so a result delivered to the wrong caller,
 * read from a slot before its upload landed or copied back before its pass ended cannot pass.
 *
 * What each test checks:
 * - test_interleaved: submit A, submit B, wait A, submit C, wait B, wait C, submit D, wait D give
 *   each batch's synchronous scores (and pooled states where asked); the caller's ids and lengths
 *   are poisoned as soon as each submit returns (submit must have copied them); a third submit
 *   with two in flight blocks on the oldest, whose results are then already written, and every
 *   wait succeeds; a wait too many fails with its message; model_cuda_classify with two batches
 *   in flight completes them first; model_cuda_last_logits and model_cuda_generate with a batch
 *   in flight give their synchronous results and leave the batch's to its wait.
 * - test_held_streams: the same sequence while a spin kernel holds back, in turn, the upload, the
 *   compute and the download stream: without the compute stream's wait on "uploaded" a pass reads
 *   a slot's previous (or zero) inputs; without the download's wait on "computed" it copies stale
 *   outputs; without the host's wait on "downloaded" (rather than "computed") wait reads pinned
 *   memory before the copy lands.
 * - test_no_allocation: after warm-up, 40 more rounds (4 quick) of submits, waits and synchronous calls
 *   leave the device's free memory exactly where it was (cudaMemGetInfo; nothing else runs on a
 *   test GPU).
 * - test_errors: wait without a submit, a refused submit (which submits nothing), a model
 *   without a classification head. */
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
    printf("skipped: built without CUDA\n");
    return 77;
}
#else

#include "model/model.h"
#include "tests/unit/test_cuda_util.h"

enum { MAX_BATCH = 8, MAX_SEQ = 128, LABELS = 7, NBATCH = 4, MAX_NEW = 4 };

struct batch {
    uint32_t n, seq;
    bool pooled; /* ask for the pooled states too */
    uint32_t ids[MAX_BATCH * MAX_SEQ], lengths[MAX_BATCH];
};

/* Results of one batch: scores [n, LABELS], pooled [n, C]. */
struct result {
    float scores[MAX_BATCH * LABELS];
    float *pooled;
};

static struct model *make_model(enum model_arch arch, bool classify, uint64_t seed)
{
    const bool gpt2 = arch == MODEL_ARCH_GPT2;
    const struct test_model_shape shape = {arch, 128, 2, 2, gpt2 ? 2 : 1, gpt2 ? 512 : 344, 500, MODEL_NORM_STANDARD,
                                           gpt2 ? MODEL_ACT_GELU_TANH : MODEL_ACT_SILU, true};
    struct model_config c;
    test_model_config(&c, &shape, MAX_SEQ);
    char err[512];
    struct model *m = model_create(&c, seed, err, sizeof err);
    model_config_release(&c);
    if (!m)
        fail_msg("%s", err);
    if (classify && !model_set_labels(m, LABELS, NULL, seed + 1, err, sizeof err))
        fail_msg("%s", err);
    return m;
}

/* Four batches of different sizes, widths and lengths; padding full of out-of-vocabulary ids. */
static void make_batches(struct batch *bs, uint32_t vocab)
{
    static const uint32_t n[NBATCH] = {5, 8, 3, 1}, seq[NBATCH] = {70, 128, 40, 97};
    struct test_rng r = {0xbadc0de};
    for (unsigned k = 0; k < NBATCH; k++) {
        struct batch *b = &bs[k];
        b->n = n[k];
        b->seq = seq[k];
        b->pooled = k % 2 == 0;
        for (uint32_t i = 0; i < b->n; i++) {
            uint32_t len = i == 0 ? b->seq : 1 + (uint32_t)(test_uniform(&r) * b->seq);
            b->lengths[i] = len > b->seq ? b->seq : len;
            for (uint32_t t = 0; t < b->seq; t++)
                b->ids[i * b->seq + t] = t < b->lengths[i] ? (uint32_t)(test_uniform(&r) * vocab) % vocab : 0xdeadbeefu;
        }
    }
}

static void poison(struct result *res, uint32_t C)
{
    memset(res->scores, 0xff, sizeof res->scores);
    if (res->pooled)
        memset(res->pooled, 0xff, (size_t)MAX_BATCH * C * sizeof(float));
}

static void check_equal(const char *what, const struct batch *b, const struct result *got,
                        const struct result *ref, uint32_t C)
{
    if (memcmp(got->scores, ref->scores, (size_t)b->n * LABELS * sizeof(float)))
        fail_msg("%s: scores differ from the synchronous call's", what);
    if (b->pooled && memcmp(got->pooled, ref->pooled, (size_t)b->n * C * sizeof(float)))
        fail_msg("%s: pooled states differ from the synchronous call's", what);
}

/* submit from a copy of the batch, poisoned once submit returns: submit owns its inputs */
static void submit(struct model_cuda *e, const struct batch *b, struct result *out)
{
    static struct batch copy;
    copy = *b;
    if (!model_cuda_classify_submit(e, copy.ids, copy.lengths, copy.n, copy.seq,
                                    b->pooled ? out->pooled : NULL, out->scores))
        fail_msg("submit: %s", model_cuda_error(e));
    memset(copy.ids, 0xff, sizeof copy.ids);
    memset(copy.lengths, 0xff, sizeof copy.lengths);
}

static void wait_ok(struct model_cuda *e)
{
    if (!model_cuda_classify_wait(e))
        fail_msg("wait: %s", model_cuda_error(e));
}

struct fixture {
    struct model *m;
    struct model_cuda *e;
    uint32_t C;
    struct batch b[NBATCH];
    struct result ref[NBATCH], got[NBATCH];
};

static void fixture_open(struct fixture *f, enum model_arch arch, enum model_precision prec, bool graphs,
                         uint32_t kv_tokens)
{
    memset(f, 0, sizeof *f);
    f->m = make_model(arch, true, 3 + arch);
    f->C = model_get_config(f->m)->hidden;
    char err[512];
    struct model_cuda_options o = {.device = 0, .precision = prec, .max_batch = MAX_BATCH, .max_seq = MAX_SEQ,
                                   .lm_head = true, .graphs = graphs, .kv_tokens = kv_tokens};
    f->e = model_cuda_create(f->m, &o, err, sizeof err);
    if (!f->e)
        fail_msg("%s", err);
    make_batches(f->b, model_get_config(f->m)->vocab_size);
    for (unsigned k = 0; k < NBATCH; k++) {
        f->ref[k].pooled = malloc((size_t)MAX_BATCH * f->C * sizeof(float));
        f->got[k].pooled = malloc((size_t)MAX_BATCH * f->C * sizeof(float));
        /* twice: with graphs the first call of a bucket runs eagerly, the second replays */
        struct result first = {.pooled = malloc((size_t)MAX_BATCH * f->C * sizeof(float))};
        const struct batch *b = &f->b[k];
        for (int i = 0; i < 2; i++)
            if (!model_cuda_classify(f->e, b->ids, b->lengths, b->n, b->seq, b->pooled ? (i ? f->ref[k].pooled : first.pooled) : NULL,
                                     i ? f->ref[k].scores : first.scores))
                fail_msg("%s", model_cuda_error(f->e));
        check_equal("eager then replayed", b, &first, &f->ref[k], f->C);
        free(first.pooled);
    }
}

static void fixture_close(struct fixture *f)
{
    for (unsigned k = 0; k < NBATCH; k++) {
        free(f->ref[k].pooled);
        free(f->got[k].pooled);
    }
    model_cuda_free(f->e);
    model_free(f->m);
}

static void poison_all(struct fixture *f)
{
    for (unsigned k = 0; k < NBATCH; k++)
        poison(&f->got[k], f->C);
}

/* submit A, submit B, wait A, submit C, wait B, wait C, submit D, wait D; hold (optional) runs
 * before each submit. */
static void interleaved(struct fixture *f, const char *what, void (*hold)(void *), void *user)
{
    struct model_cuda *e = f->e;
    poison_all(f);
    for (unsigned k = 0; k < NBATCH; k++) {
        if (hold)
            hold(user);
        submit(e, &f->b[k], &f->got[k]);
        if (k == 0)
            continue;
        wait_ok(e);
        check_equal(what, &f->b[k - 1], &f->got[k - 1], &f->ref[k - 1], f->C);
    }
    wait_ok(e);
    check_equal(what, &f->b[NBATCH - 1], &f->got[NBATCH - 1], &f->ref[NBATCH - 1], f->C);
}

static void interleaved_case(enum model_arch arch, enum model_precision prec, bool graphs)
{
    struct fixture f;
    fixture_open(&f, arch, prec, graphs, MAX_SEQ + MAX_NEW);
    struct model_cuda *e = f.e;
    const uint32_t C = f.C;
    printf("  %s %s graphs %s\n", arch == MODEL_ARCH_GPT2 ? "gpt2" : "qwen2",
           prec == MODEL_PRECISION_BF16 ? "bf16" : "fp32", graphs ? "on" : "off");

    interleaved(&f, "interleaved", NULL, NULL);

    /* a third submit blocks on the oldest: A's results are written before its wait */
    poison_all(&f);
    submit(e, &f.b[0], &f.got[0]);
    submit(e, &f.b[1], &f.got[1]);
    submit(e, &f.b[2], &f.got[2]);
    check_equal("A after the third submit", &f.b[0], &f.got[0], &f.ref[0], C);
    for (unsigned k = 0; k < 3; k++) {
        wait_ok(e);
        check_equal("three submitted", &f.b[k], &f.got[k], &f.ref[k], C);
    }
    assert_false(model_cuda_classify_wait(e));
    assert_non_null(strstr(model_cuda_error(e), "without a batch in flight"));

    /* the synchronous call with two in flight: they finish first, their waits return at once */
    poison_all(&f);
    submit(e, &f.b[3], &f.got[3]);
    submit(e, &f.b[0], &f.got[0]);
    const struct batch *c = &f.b[2];
    if (!model_cuda_classify(e, c->ids, c->lengths, c->n, c->seq, f.got[2].pooled, f.got[2].scores))
        fail_msg("%s", model_cuda_error(e));
    check_equal("synchronous among submits", c, &f.got[2], &f.ref[2], C);
    check_equal("finished by the synchronous call", &f.b[3], &f.got[3], &f.ref[3], C);
    wait_ok(e);
    wait_ok(e);
    check_equal("waited after the synchronous call", &f.b[0], &f.got[0], &f.ref[0], C);
    assert_false(model_cuda_classify_wait(e));

    /* last logits and generation behind a batch in flight */
    const uint32_t V = model_get_config(f.m)->vocab_size;
    const struct batch *a = &f.b[0];
    float *ref_logits = malloc((size_t)a->n * V * sizeof(float)), *logits = malloc((size_t)a->n * V * sizeof(float));
    uint32_t ref_out[MAX_BATCH * MAX_NEW], out[MAX_BATCH * MAX_NEW], ref_len[MAX_BATCH], out_len[MAX_BATCH];
    const struct model_sampling greedy = {.top_p = 1};
    const struct batch *g = &f.b[2]; /* seq 40: room for MAX_NEW in the cache */
    for (int i = 0; i < 2; i++) /* the second time as the later calls: replayed graphs */
        if (!model_cuda_last_logits(e, a->ids, a->lengths, a->n, a->seq, ref_logits) ||
            !model_cuda_generate(e, g->ids, g->lengths, g->n, g->seq, &greedy, MAX_NEW, ref_out, ref_len))
            fail_msg("%s", model_cuda_error(e));
    poison_all(&f);
    submit(e, &f.b[1], &f.got[1]);
    if (!model_cuda_last_logits(e, a->ids, a->lengths, a->n, a->seq, logits))
        fail_msg("%s", model_cuda_error(e));
    submit(e, &f.b[3], &f.got[3]);
    if (!model_cuda_generate(e, g->ids, g->lengths, g->n, g->seq, &greedy, MAX_NEW, out, out_len))
        fail_msg("%s", model_cuda_error(e));
    assert_memory_equal(logits, ref_logits, (size_t)a->n * V * sizeof(float));
    assert_memory_equal(out_len, ref_len, g->n * sizeof(uint32_t));
    assert_memory_equal(out, ref_out, (size_t)g->n * MAX_NEW * sizeof(uint32_t));
    wait_ok(e);
    check_equal("behind last_logits", &f.b[1], &f.got[1], &f.ref[1], C);
    wait_ok(e);
    check_equal("behind generate", &f.b[3], &f.got[3], &f.ref[3], C);
    free(ref_logits);
    free(logits);
    fixture_close(&f);
}

static void test_interleaved(void **state)
{
    (void)state;
    const enum model_precision precs[2] = {MODEL_PRECISION_FP32, MODEL_PRECISION_BF16};
    for (unsigned p = 0; p < 2; p++)
        for (int graphs = 0; graphs < 2; graphs++) {
            interleaved_case(MODEL_ARCH_GPT2, precs[p], graphs);
            if (!test_cuda_quick())
                interleaved_case(MODEL_ARCH_QWEN2, precs[p], graphs);
        }
}

/* ~20 ms of a spin kernel on one stream ahead of each submit */
static void hold_stream(void *user)
{
    CUDA_OK(cu_spin(40000000LL, *(cudaStream_t *)user));
}

static void test_held_streams(void **state)
{
    (void)state;
    static const char *const names[3] = {"upload held", "compute held", "download held"};
    for (int graphs = 0; graphs < 2; graphs++) {
        struct fixture f;
        fixture_open(&f, MODEL_ARCH_GPT2, graphs ? MODEL_PRECISION_BF16 : MODEL_PRECISION_FP32, graphs, 0);
        cudaStream_t s[3];
        cu_engine_streams(f.e, &s[1], &s[0], &s[2]);
        for (int i = 0; i < 3; i++) {
            printf("  %s, graphs %s\n", names[i], graphs ? "on" : "off");
            interleaved(&f, names[i], hold_stream, &s[i]);
        }
        fixture_close(&f);
    }
}

static void test_no_allocation(void **state)
{
    (void)state;
    struct fixture f;
    fixture_open(&f, MODEL_ARCH_GPT2, MODEL_PRECISION_BF16, true, 0);
    interleaved(&f, "warm-up", NULL, NULL); /* the pipelined path's own first use */
    size_t free0 = 0, free1 = 0, total = 0;
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemGetInfo(&free0, &total));
    /* an allocation after warm-up shows in any round; the quick runs (emulated, sanitized) take 4 */
    const int rounds = test_cuda_quick() ? 4 : 40;
    for (int round = 0; round < rounds; round++) {
        interleaved(&f, "steady state", NULL, NULL);
        const struct batch *b = &f.b[round % NBATCH];
        if (!model_cuda_classify(f.e, b->ids, b->lengths, b->n, b->seq, f.got[0].pooled, f.got[0].scores))
            fail_msg("%s", model_cuda_error(f.e));
    }
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemGetInfo(&free1, &total));
    printf("  device memory free before %zu, after %zu bytes\n", free0, free1);
    assert_true(free0 == free1);
    fixture_close(&f);
}

static void test_errors(void **state)
{
    (void)state;
    struct fixture f;
    fixture_open(&f, MODEL_ARCH_GPT2, MODEL_PRECISION_BF16, false, 0);
    struct model_cuda *e = f.e;
    assert_false(model_cuda_classify_wait(e));
    printf("  refused: %s\n", model_cuda_error(e));
    struct batch bad = f.b[0];
    bad.lengths[1] = bad.seq + 1;
    assert_false(model_cuda_classify_submit(e, bad.ids, bad.lengths, bad.n, bad.seq, NULL, f.got[0].scores));
    printf("  refused: %s\n", model_cuda_error(e));
    bad = f.b[0];
    bad.ids[0] = 100000;
    assert_false(model_cuda_classify_submit(e, bad.ids, bad.lengths, bad.n, bad.seq, NULL, f.got[0].scores));
    assert_false(model_cuda_classify_submit(e, bad.ids, bad.lengths, bad.n, bad.seq, NULL, NULL));
    assert_false(model_cuda_classify_wait(e)); /* nothing was submitted */
    /* still usable */
    interleaved(&f, "after refusals", NULL, NULL);
    fixture_close(&f);

    struct model *lm = make_model(MODEL_ARCH_GPT2, false, 9);
    char err[512];
    struct model_cuda_options o = {.device = 0, .precision = MODEL_PRECISION_BF16, .max_batch = 2, .max_seq = 16};
    struct model_cuda *le = model_cuda_create(lm, &o, err, sizeof err);
    if (!le)
        fail_msg("%s", err);
    uint32_t ids[16] = {1, 2, 3}, lengths[1] = {3};
    float scores[LABELS];
    assert_false(model_cuda_classify_submit(le, ids, lengths, 1, 16, NULL, scores));
    printf("  refused: %s\n", model_cuda_error(le));
    assert_false(model_cuda_classify_wait(le));
    model_cuda_free(le);
    model_free(lm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_interleaved),
        cmocka_unit_test(test_held_streams),
        cmocka_unit_test(test_no_allocation),
        cmocka_unit_test(test_errors),
    };
    return TEST_CUDA_RUN(tests);
}

#endif
