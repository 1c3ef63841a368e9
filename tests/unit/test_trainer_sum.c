/* test_trainer_sum.c — the CPU trainer's data-parallel gradient sum (trainer_sum_grads), with
 * two threads standing in for two MPI processes: each trains on half of a batch, the sum goes
 * through the same two collectives cli/mpi.c gives it (float sum, byte OR), and the averaged
 * gradient must be the one a single trainer computes over the whole batch. The word-embedding
 * rows no half touched must be left out of the message unless a tied LM head makes that
 * gradient dense. The gradient is read back as AdamW's first moment after a step with β1 = 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"
#include "train/train.h"

enum { VOCAB = 300, SEQ = 8, ROWS = 4, HALF = ROWS / 2 };

/* ---- two threads as two processes: collectives over a shared slot per rank ---- */

static pthread_barrier_t meet;
static _Thread_local int my_rank;
/* cmocka's assertions must not fail on another thread: the threads record what went wrong here
 * and the test's thread fails with it */
static pthread_mutex_t failure_lock = PTHREAD_MUTEX_INITIALIZER;
static char failure[256];

static bool expect(bool ok, const char *what, int line)
{
    pthread_mutex_lock(&failure_lock);
    if (!ok && !failure[0])
        snprintf(failure, sizeof failure, "line %d: %s", line, what);
    pthread_mutex_unlock(&failure_lock);
    return ok;
}
#define EXPECT(cond) expect((cond), #cond, __LINE__)

/* A failure before the collectives: the other thread would wait for this one forever. */
static void die_early(void)
{
    fprintf(stderr, "test_trainer_sum: %s\n", failure);
    abort();
}
static void *slot[2];
static size_t slot_n[2];
static size_t floats_sent[2]; /* per rank: floats in its sum_floats calls */

/* Both ranks must make the same collective with the same count (MPI would hang or corrupt
 * memory otherwise). After a mismatch the collectives stop meeting, so neither thread waits for
 * a call the other never makes. */
static char slot_kind[2];
static atomic_bool collectives_broken;

static bool meet_peer(char kind, void *x, size_t n)
{
    if (atomic_load(&collectives_broken))
        return false;
    slot[my_rank] = x;
    slot_n[my_rank] = n;
    slot_kind[my_rank] = kind;
    pthread_barrier_wait(&meet);
    const bool same = slot_kind[0] == slot_kind[1] && slot_n[0] == slot_n[1];
    EXPECT(slot_kind[0] == slot_kind[1]);
    EXPECT(slot_n[0] == slot_n[1]);
    pthread_barrier_wait(&meet); /* both have compared before either moves on */
    if (!same)
        atomic_store(&collectives_broken, true);
    return same;
}

static void fake_sum_floats(float *x, size_t n)
{
    floats_sent[my_rank] += n;
    if (!meet_peer('f', x, n))
        return;
    float *sum = malloc(n * sizeof(float) + 1);
    const float *a = slot[0], *b = slot[1];
    for (size_t i = 0; i < n; i++)
        sum[i] = a[i] + b[i];
    pthread_barrier_wait(&meet); /* both have read both before either writes */
    memcpy(x, sum, n * sizeof(float));
    free(sum);
}

static void fake_or_bytes(uint8_t *x, size_t n)
{
    if (!meet_peer('b', x, n))
        return;
    uint8_t *or = malloc(n + 1);
    const uint8_t *a = slot[0], *b = slot[1];
    for (size_t i = 0; i < n; i++)
        or[i] = a[i] | b[i];
    pthread_barrier_wait(&meet);
    memcpy(x, or, n);
    free(or);
}

/* ---- the model and the batch ---- */

static struct model *tiny(enum model_arch arch, bool tied)
{
    struct model_config c;
    model_config_init(&c);
    c.arch = arch;
    c.vocab_size = VOCAB;
    c.hidden = 16;
    c.layers = 1;
    c.heads = 4;
    c.kv_heads = arch == MODEL_ARCH_GPT2 ? 4 : 2;
    c.head_dim = 4;
    c.ffn = 24;
    c.max_positions = SEQ;
    c.seq_length = SEQ;
    c.rope_theta = 100.0;
    c.norm_eps = 1e-5f;
    if (arch == MODEL_ARCH_QWEN2)
        c.act = MODEL_ACT_SILU;
    c.tie_embeddings = tied;
    char err[256];
    struct model *m = model_create(&c, 11, err, sizeof err);
    char *labels[] = {"a", "b", "c"};
    if (!EXPECT(m != NULL) || !EXPECT(model_set_labels(m, 3, labels, 8, err, sizeof err)))
        die_early();
    model_config_release(&c);
    return m;
}

/* Row r's ids: a few from a range of its own, so the halves share some rows and miss most. */
static void batch_ids(uint32_t *ids, uint32_t *lengths, uint32_t *labels)
{
    for (uint32_t r = 0; r < ROWS; r++) {
        lengths[r] = SEQ - r % 3;
        labels[r] = r % 3;
        for (uint32_t i = 0; i < SEQ; i++)
            ids[r * SEQ + i] = i < lengths[r] ? 5 + (r * 7 + i * 3) % (20 + 10 * r) : 0;
    }
}

struct half_run {
    enum model_arch arch;
    bool tied;
    enum train_objective objective;
    int rank;  /* 0, 1: half of the batch with the fake collectives; -1: the whole batch alone */
    bool half_only; /* only the first half trains (rank 1 has no rows this step; the whole run
                       takes the first half) */
    float *mom; /* out: the averaged gradient (AdamW's first moment with β1 = 0) */
    size_t n;
};

static void *run_half(void *arg)
{
    struct half_run *h = arg;
    my_rank = h->rank < 0 ? 0 : h->rank;
    struct model *m = tiny(h->arch, h->tied);
    uint32_t ids[ROWS * SEQ], lengths[ROWS], labels[ROWS];
    batch_ids(ids, lengths, labels);
    const uint32_t first = h->rank < 0 ? 0 : (uint32_t)h->rank * HALF,
                   rows = h->half_only ? (h->rank == 1 ? 0 : HALF) : h->rank < 0 ? ROWS : HALF;
    struct train_batch b = {.ids = ids + first * SEQ, .lengths = lengths + first, .batch = rows, .seq = SEQ,
                            .labels = labels + first};
    const struct trainer_options o = {.device = -1, .max_batch = ROWS, .max_seq = SEQ, .threads = 1};
    char err[256];
    struct trainer *t = trainer_create(m, &o, err, sizeof err);
    double loss;
    if (!EXPECT(t != NULL) || !EXPECT(trainer_zero_grads(t)) ||
        (rows > 0 && !EXPECT(trainer_forward_backward(t, h->objective, &b, &loss))))
        die_early();
    if (h->rank >= 0) {
        /* as cli_world_grads: a half's mean × its count, summed, ÷ the whole count (rows, or
         * LM targets: every id after a row's first) */
        double mine = 0.0, all = 0.0;
        for (uint32_t r = 0; r < (h->half_only ? HALF : ROWS); r++) {
            const double n = h->objective == TRAIN_LM ? lengths[r] - 1.0 : 1.0;
            all += n;
            mine += r >= first && r < first + rows ? n : 0.0;
        }
        struct trainer_comm_id id = {0};
        const struct trainer_host_reduce reduce = {fake_sum_floats, fake_or_bytes};
        EXPECT(trainer_join(t, &id, h->rank, 2));
        EXPECT(trainer_grad_scale(t, (float)mine));
        EXPECT(trainer_sum_grads(t, &reduce));
        EXPECT(trainer_grad_scale(t, (float)(1.0 / all)));
    }
    struct train_adamw opt;
    train_adamw_defaults(&opt);
    opt.beta1 = 0.0f;
    float *mom = NULL, *vel;
    model_params(m, &h->n);
    h->mom = calloc(h->n, sizeof(float));
    if (EXPECT(trainer_adamw_step(t, 1, 1e-3f, &opt, 1)) && EXPECT(trainer_moments(t, &mom, &vel)))
        memcpy(h->mom, mom, h->n * sizeof(float));
    trainer_free(t);
    model_free(m);
    return NULL;
}

/* Distinct ids the whole batch holds (the rows an embedding gradient can have). */
static size_t distinct_ids(void)
{
    uint32_t ids[ROWS * SEQ], lengths[ROWS], labels[ROWS];
    batch_ids(ids, lengths, labels);
    bool seen[VOCAB] = {false};
    size_t k = 0;
    for (uint32_t r = 0; r < ROWS; r++)
        for (uint32_t i = 0; i < lengths[r]; i++)
            if (!seen[ids[r * SEQ + i]]) {
                seen[ids[r * SEQ + i]] = true;
                k++;
            }
    return k;
}

/* Two halves summed against the whole batch (half_only: the first half, rank 1 idle); returns
 * 0 when each rank sent the whole gradient, else minus the floats it left out. */
static size_t check_sum(enum model_arch arch, bool tied, enum train_objective objective, bool half_only)
{
    struct half_run whole = {arch, tied, objective, -1, half_only, NULL, 0},
                    a = {arch, tied, objective, 0, half_only, NULL, 0}, b = {arch, tied, objective, 1, half_only, NULL, 0};
    failure[0] = '\0';
    atomic_store(&collectives_broken, false);
    run_half(&whole);
    if (failure[0])
        fail_msg("%s", failure);
    pthread_barrier_init(&meet, NULL, 2);
    floats_sent[0] = floats_sent[1] = 0;
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, run_half, &a), 0);
    assert_int_equal(pthread_create(&tb, NULL, run_half, &b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    pthread_barrier_destroy(&meet);
    if (failure[0])
        fail_msg("%s", failure);
    assert_int_equal(a.n, whole.n);
    /* every process ends with the same gradient, bit for bit, and it is the whole batch's */
    assert_memory_equal(a.mom, b.mom, a.n * sizeof(float));
    double worst = 0.0, scale = 0.0;
    for (size_t i = 0; i < a.n; i++)
        scale = fmax(scale, fabs((double)whole.mom[i]));
    for (size_t i = 0; i < a.n; i++)
        worst = fmax(worst, fabs((double)a.mom[i] - whole.mom[i]));
    if (worst > 1e-5 * scale)
        fail_msg("halves summed differ from the whole batch by %g (largest gradient %g)", worst, scale);
    assert_int_equal(floats_sent[0], floats_sent[1]);
    const size_t n = a.n;
    free(whole.mom);
    free(a.mom);
    free(b.mom);
    return n == floats_sent[0] ? 0 : floats_sent[0] - n; /* 0: dense; else the (negative) saving */
}

static void test_classify_sends_touched_rows_only(void **state)
{
    (void)state;
    const uint32_t C = 16;
    for (int arch = 0; arch < 2; arch++) {
        size_t saved = (size_t)0 - check_sum(arch ? MODEL_ARCH_QWEN2 : MODEL_ARCH_GPT2, true, TRAIN_CLASSIFY, false);
        /* the embedding's untouched rows are not sent: (VOCAB - distinct ids) rows of C floats */
        assert_int_equal(saved, (VOCAB - distinct_ids()) * C);
    }
}

static void test_lm_tied_head_sends_everything(void **state)
{
    (void)state;
    assert_int_equal(check_sum(MODEL_ARCH_GPT2, true, TRAIN_LM, false), 0);
}

/* A process with no rows this step (a short last batch) has no dense gradient of its own: it
 * must still send everything when the other's tied LM head made it dense. */
static void test_lm_tied_head_with_an_idle_process(void **state)
{
    (void)state;
    assert_int_equal(check_sum(MODEL_ARCH_GPT2, true, TRAIN_LM, true), 0);
}

static void test_lm_untied_head_sends_touched_rows_only(void **state)
{
    (void)state;
    size_t saved = (size_t)0 - check_sum(MODEL_ARCH_QWEN2, false, TRAIN_LM, false);
    assert_int_equal(saved, (VOCAB - distinct_ids()) * 16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classify_sends_touched_rows_only),
        cmocka_unit_test(test_lm_tied_head_sends_everything),
        cmocka_unit_test(test_lm_tied_head_with_an_idle_process),
        cmocka_unit_test(test_lm_untied_head_sends_touched_rows_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
