/* test_cuda_util.h — what the CUDA tests share: the "skipped: no GPU" exit, random inputs,
 * device buffers in either element type, poisoned outputs and the error measure.
 *
 * Error measure (the project's, as in test_model_reference): max |got − ref| over max |ref|,
 * NaN counting as infinite. Every comparison prints its measured value next to its bound, so a
 * GPU run's log says how much room each bound has. */
#ifndef NETLM_TEST_CUDA_UTIL_H
#define NETLM_TEST_CUDA_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "model/cuda/cuda_internal.h"
#include "model/model.h"

/* ctest's SKIP_RETURN_CODE for the cuda label (tests/CMakeLists.txt) */
#define TEST_CUDA_SKIP 77

static inline int test_cuda_skip_without_gpu(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        cudaGetLastError();
        printf("skipped: no GPU\n");
        return 1;
    }
    return 0;
}

/* whether name is one of the comma-separated names of list (NULL: none) */
static inline bool test_cuda_listed(const char *list, const char *name)
{
    const size_t len = strlen(name);
    for (const char *p = list; p && *p;) {
        const size_t n = strcspn(p, ",");
        if (n == len && strncmp(p, name, len) == 0)
            return true;
        p += n + (p[n] == ',');
    }
    return false;
}

/* Runs a CUDA test file's group (const struct CMUnitTest tests[]): exit 77 without a GPU;
 * NETLM_CUDA_TEST_FILTER=test_x runs one test alone (a sanitizer run, a GPU session's rerun),
 * NETLM_CUDA_TEST_SKIP=test_x,test_y leaves those out (the emulated builds: what needs cuBLASLt,
 * what takes minutes there). */
static inline int test_cuda_run(const char *group, const struct CMUnitTest *tests, size_t count)
{
    if (test_cuda_skip_without_gpu())
        return TEST_CUDA_SKIP;
    if (getenv("NETLM_CUDA_TEST_FILTER"))
        cmocka_set_test_filter(getenv("NETLM_CUDA_TEST_FILTER"));
    const char *skip = getenv("NETLM_CUDA_TEST_SKIP");
    struct CMUnitTest *kept = malloc(count * sizeof *kept);
    size_t n = 0;
    for (size_t i = 0; kept && i < count; i++) {
        if (test_cuda_listed(skip, tests[i].name))
            printf("[  SKIPPED ] %s (NETLM_CUDA_TEST_SKIP)\n", tests[i].name);
        else
            kept[n++] = tests[i];
    }
    const int failed = kept ? _cmocka_run_group_tests(group, kept, n, NULL, NULL) : 1;
    free(kept);
    return failed;
}
#define TEST_CUDA_RUN(tests) test_cuda_run(#tests, tests, sizeof(tests) / sizeof((tests)[0]))

/* NETLM_CUDA_TEST_QUICK=1: smaller shapes (compute-sanitizer runs, bench/gpu_check.sh) */
static inline int test_cuda_quick(void)
{
    const char *q = getenv("NETLM_CUDA_TEST_QUICK");
    return q && q[0] == '1';
}

#define CUDA_OK(call)                                                                              \
    do {                                                                                          \
        cudaError_t ce_ = (call);                                                                 \
        if (ce_ != cudaSuccess)                                                                   \
            fail_msg("%s:%d: %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(ce_));       \
    } while (0)

/* The shape of a small random model (the CUDA tests build many, each against the CPU). */
struct test_model_shape {
    enum model_arch arch;
    uint32_t hidden, layers, heads, kv_heads, ffn, vocab;
    enum model_norm norm;
    enum model_act act;
    bool tied;
};

/* A config of that shape: head_dim = hidden / heads, 512 positions, RoPE θ 1e6 (positions far
 * apart still rotate differently), the architecture's usual eps. The caller sets the rest and
 * releases it. */
static inline void test_model_config(struct model_config *c, const struct test_model_shape *s, uint32_t seq_length)
{
    model_config_init(c);
    c->arch = s->arch;
    c->vocab_size = s->vocab;
    c->hidden = s->hidden;
    c->layers = s->layers;
    c->heads = s->heads;
    c->kv_heads = s->kv_heads;
    c->head_dim = s->hidden / s->heads;
    c->ffn = s->ffn;
    c->max_positions = 512;
    c->seq_length = seq_length;
    c->rope_theta = 1e6;
    c->norm_eps = s->arch == MODEL_ARCH_GPT2 ? 1e-5f : 1e-6f;
    c->norm = s->norm;
    c->act = s->act;
    c->tie_embeddings = s->tied;
}

struct test_rng { uint64_t s; };

static inline double test_uniform(struct test_rng *r)
{
    r->s = r->s * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(r->s >> 11) * (1.0 / 9007199254740992.0);
}

static inline float test_normal(struct test_rng *r)
{
    double u = test_uniform(r), v = test_uniform(r);
    if (u < 1e-300)
        u = 1e-300;
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

static inline void test_fill(float *x, size_t n, float scale, struct test_rng *r)
{
    for (size_t i = 0; i < n; i++)
        x[i] = scale * test_normal(r);
}

/* Rounds host values to what the device holds in type t, so the CPU reference computes on the
 * same inputs and a bound measures only the op's own rounding. */
static inline void test_round(float *x, size_t n, enum cu_dtype t)
{
    if (t == CU_BF16)
        for (size_t i = 0; i < n; i++)
            x[i] = cu_bf16_to_f32(cu_f32_to_bf16(x[i]));
}

static inline void *test_upload(const float *x, size_t n, enum cu_dtype t)
{
    void *host = malloc(n * cu_dtype_size(t) + 1), *dev = NULL;
    cu_host_from_f32(host, t, x, n);
    CUDA_OK(cudaMalloc(&dev, n * cu_dtype_size(t) + 1));
    CUDA_OK(cudaMemcpy(dev, host, n * cu_dtype_size(t), cudaMemcpyHostToDevice));
    free(host);
    return dev;
}

/* A device buffer full of NaN (all bits set is a NaN in fp32 and in bf16): an element the op
 * fails to write cannot pass. */
static inline void *test_poisoned(size_t n, enum cu_dtype t)
{
    void *dev = NULL;
    CUDA_OK(cudaMalloc(&dev, n * cu_dtype_size(t) + 1));
    CUDA_OK(cudaMemset(dev, 0xff, n * cu_dtype_size(t)));
    return dev;
}

static inline void test_download(float *x, const void *dev, size_t n, enum cu_dtype t)
{
    void *host = malloc(n * cu_dtype_size(t) + 1);
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(host, dev, n * cu_dtype_size(t), cudaMemcpyDeviceToHost));
    cu_host_to_f32(x, host, t, n);
    free(host);
}

static inline double test_rel_err(const float *got, const float *ref, size_t n)
{
    double mx = 0.0, ref_max = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)ref[i]);
        if (isnan(got[i]) || isnan(d))
            return INFINITY;
        mx = d > mx ? d : mx;
        ref_max = fabs(ref[i]) > ref_max ? fabs(ref[i]) : ref_max;
    }
    return mx / (ref_max > 1e-30 ? ref_max : 1e-30);
}

static inline double test_abs_err(const float *got, const float *ref, size_t n)
{
    double mx = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)ref[i]);
        if (isnan(got[i]) || isnan(d))
            return INFINITY;
        mx = d > mx ? d : mx;
    }
    return mx;
}

/* The packed rows of a right-padded batch: off[nseq + 1] (malloc'ed, sequence b owns rows
 * off[b] .. off[b + 1] − 1) and the longest length. */
static inline uint32_t *test_seq_offsets(const uint32_t *lens, uint32_t nseq, uint32_t *max_len)
{
    uint32_t *off = malloc((nseq + 1) * sizeof(uint32_t));
    off[0] = 0;
    *max_len = 0;
    for (uint32_t b = 0; b < nseq; b++) {
        off[b + 1] = off[b] + lens[b];
        *max_len = lens[b] > *max_len ? lens[b] : *max_len;
    }
    return off;
}

/* Both element types, for the tests that run every op in each. */
static const enum cu_dtype test_modes[2] = {CU_F32, CU_BF16};

/* The bound of a comparison in element type t. */
static inline double test_bound_for(enum cu_dtype t, double fp32, double bf16) { return t == CU_BF16 ? bf16 : fp32; }

static inline const char *test_dtype_name(enum cu_dtype t) { return t == CU_BF16 ? "bf16" : "fp32"; }

/* Prints and checks one comparison. */
#define TEST_WITHIN(label, t, err, bound)                                                          \
    do {                                                                                          \
        double e_ = (err), b_ = (bound);                                                          \
        printf("  %-40s %s  err %.3e  bound %.1e%s\n", (label), test_dtype_name(t), e_, b_,      \
               e_ <= b_ ? "" : "  FAIL");                                                         \
        if (!(e_ <= b_))                                                                          \
            fail_msg("%s (%s): error %.3e above %.1e", (label), test_dtype_name(t), e_, b_);     \
    } while (0)

#endif
