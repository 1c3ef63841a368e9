/* gemm_bench.c — the cuBLASLt GEMMs of netlm's GPU paths timed one by one (model/cuda/gemm.c,
 * the calls the engine and the trainer make), so a GEMM that runs far below the card's rate can
 * be told apart from its neighbours: the LM head of training (bf16 × bf16 → fp32 logits, and its
 * two backward GEMMs) with the vocabulary as it is (60,005: odd) and rounded up to 128 rows,
 * each with the heuristic's first algorithm (what training runs) and with the fastest of its
 * candidates (what the inference engine runs), next to GEMMs of ordinary shapes for the rate
 * the card gives. One JSON line per case on stdout; bench/gpu_check.sh runs it (bench-gemm).
 *
 *   netlm_gemm_bench [--device N] [--runs N] [--warmup N] [--only NAME]
 *
 * --only: the cases whose name contains NAME; --warmup: untimed calls before the timed ones
 * (default 2: the plan with its tuning, then one more; 0 under a profiler, which replays every
 * launch it measures anyway, so that each kernel is launched once per --runs).
 *
 * Where a padded case has an unpadded twin, "max_rel_diff" compares the first V columns of the
 * two forward outputs (the padded weight's extra rows are zeros, so they must agree to fp32
 * accumulation-order rounding).
 *
 * Then Qwen2.5-0.5B's MLP first half at the inference benchmark's size (65,536 rows, B256 T256):
 * cuBLASLt's gate/up GEMM alone, that GEMM followed by the SwiGLU pass (the engine's default
 * path), and each variant of the one kernel with the SwiGLU in its epilogue (gemm_swiglu.cu;
 * "algorithm" gives the CTAs it ran on), whose output is compared with the two-step one
 * ("max_rel_diff": the two-step path rounds the product to bf16 before the SwiGLU, so ~4e-3 is
 * expected). Before them, one line per kernel cuBLASLt's heuristic offers for the gate/up GEMM
 * ("gemm_candidate"): its time and its ids of tile, stages and cluster shape (cublasLt.h's enums). */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/cuda/cuda_internal.h"

enum gemm_kind { GEMM_FWD, GEMM_DX, GEMM_DW };

static int untimed_calls = 2; /* --warmup */

struct gemm_case {
    const char *name;
    enum gemm_kind kind;
    enum cu_dtype yt;         /* the forward's output type (dx: bf16; dw: fp32) */
    size_t n, in, out, ld;    /* rows, reduction / input width, output width, the wide side's stride */
};

static const struct gemm_case cases[] = {
    /* training's LM head, one chunk of 4,096 rows, GPT-2 base width */
    {"lm-head-fwd-v60005", GEMM_FWD, CU_F32, 4096, 768, 60005, 60005},
    {"lm-head-fwd-v60005-ld60032", GEMM_FWD, CU_F32, 4096, 768, 60005, 60032},
    {"lm-head-fwd-v60032", GEMM_FWD, CU_F32, 4096, 768, 60032, 60032},
    {"lm-head-fwd-bf16out-v60005", GEMM_FWD, CU_BF16, 4096, 768, 60005, 60005},
    {"lm-head-fwd-bf16out-v60032", GEMM_FWD, CU_BF16, 4096, 768, 60032, 60032},
    {"lm-head-dx-v60005", GEMM_DX, CU_BF16, 4096, 768, 60005, 60005},
    {"lm-head-dx-v60032", GEMM_DX, CU_BF16, 4096, 768, 60032, 60032},
    {"lm-head-dw-v60005", GEMM_DW, CU_F32, 4096, 768, 60005, 60005},
    {"lm-head-dw-v60032", GEMM_DW, CU_F32, 4096, 768, 60032, 60032},
    /* ordinary shapes for the card's rate: GPT-2 base's up projection at B32 T512, Qwen2.5-0.5B's
     * gate/up projection at B16 T512 */
    {"gpt2-up-fwd", GEMM_FWD, CU_BF16, 16384, 768, 3072, 3072},
    {"qwen-up-fwd", GEMM_FWD, CU_BF16, 8192, 896, 9728, 9728},
    {"qwen-up-dx", GEMM_DX, CU_BF16, 8192, 896, 9728, 9728},
    {"qwen-up-dw", GEMM_DW, CU_F32, 8192, 896, 9728, 9728},
};

#define CUDA_CHECK(call)                                                                          \
    do {                                                                                          \
        cudaError_t e_ = (call);                                                                  \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "netlm_gemm_bench: %s: %s\n", #call, cudaGetErrorString(e_));       \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)

/* "max_rel_diff": the largest |got − ref| over the largest |ref|, a NaN difference winning. */
struct rel_diff {
    double worst, top;
};

static inline void rel_diff_add(struct rel_diff *r, double ref, double got)
{
    const double d = fabs(got - ref);
    r->worst = d > r->worst || isnan(d) ? d : r->worst;
    r->top = fabs(ref) > r->top ? fabs(ref) : r->top;
}

static double rel_diff_value(const struct rel_diff *r) { return r->worst / (r->top > 0 ? r->top : 1.0); }

/* Uniform values in [-scale, scale) of type t: fixed, so runs compare. */
static void *random_device(size_t count, enum cu_dtype t, float scale, unsigned seed)
{
    float *host = malloc(count * sizeof(float));
    void *packed = malloc(count * cu_dtype_size(t)), *dev = NULL;
    if (!host || !packed) {
        fprintf(stderr, "netlm_gemm_bench: out of memory\n");
        exit(1);
    }
    unsigned x = seed * 2654435761u + 1u;
    for (size_t i = 0; i < count; i++) {
        x = x * 1664525u + 1013904223u;
        host[i] = scale * ((float)(x >> 8) / 8388608.0f - 1.0f);
    }
    cu_host_from_f32(packed, t, host, count);
    CUDA_CHECK(cudaMalloc(&dev, count * cu_dtype_size(t)));
    CUDA_CHECK(cudaMemcpy(dev, packed, count * cu_dtype_size(t), cudaMemcpyHostToDevice));
    free(host);
    free(packed);
    return dev;
}

/* One call of the case; false with err set. */
static bool call(struct cu_gemm *g, cudaStream_t s, const struct gemm_case *c, void *y, const void *x,
                 const void *w, void *dy, float *dw, char *err, size_t errlen)
{
    switch (c->kind) {
    case GEMM_FWD:
        return cu_gemm_run(g, s, CU_BF16, c->yt, y, c->ld, x, c->in, w, NULL, c->n, c->in, c->out, false,
                           false, err, errlen);
    case GEMM_DX: /* dx[n, in] = dy[n, out] · w[out, in] */
        return cu_gemm_dx(g, s, CU_BF16, CU_BF16, y, c->in, dy, c->ld, w, c->n, c->in, c->out, false, err,
                          errlen);
    case GEMM_DW: /* dw[out, in] += dy[n, out]ᵀ · x[n, in] */
        return cu_gemm_dw(g, s, CU_BF16, dw, NULL, dy, c->ld, x, c->in, c->n, c->in, c->out, err, errlen);
    }
    return false;
}

/* Times `runs` calls of one path (2: the fused kernel's variant) after the untimed ones; ms per
 * call. */
static float time_path(int path, unsigned variant, struct cu_gemm *g, cudaStream_t s, cudaEvent_t ev[2], int runs,
                       void *gate_up, void *h, const void *x, const void *w, const float *row_scale, size_t n,
                       size_t k, size_t f)
{
    char err[512];
    for (int r = -untimed_calls; r < runs; r++) {
        if (r == 0)
            CUDA_CHECK(cudaEventRecord(ev[0], s));
        if (path < 2 && !cu_gemm_run(g, s, CU_BF16, CU_BF16, gate_up, (uint32_t)(2 * f), x, (uint32_t)k, w, NULL,
                                     (uint32_t)n, (uint32_t)k, (uint32_t)(2 * f), false, false, err, sizeof err)) {
            fprintf(stderr, "netlm_gemm_bench: qwen-mlp: %s\n", err);
            exit(1);
        }
        if (path == 1) /* w in the fused kernel's row order, as the engine keeps it for both */
            CUDA_CHECK(cu_swiglu_fused_order(gate_up, 2 * f, gate_up, CU_BF16, row_scale, (uint32_t)n, (uint32_t)f, s));
        if (path == 2)
            CUDA_CHECK(cu_gemm_swiglu(h, (uint32_t)f, x, (uint32_t)k, w, row_scale, (uint32_t)n, (uint32_t)k,
                                      (uint32_t)f, variant, s));
    }
    CUDA_CHECK(cudaEventRecord(ev[1], s));
    CUDA_CHECK(cudaEventSynchronize(ev[1]));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, ev[0], ev[1]));
    return ms / (float)runs;
}

/* Qwen2.5-0.5B's MLP first half, h = silu(s·x·Wgᵀ) ⊙ (s·x·Wuᵀ), at 65,536 rows, s each row's
 * 1/rms as the engine applies its norm there: cuBLASLt's GEMM alone, with the SwiGLU pass after
 * it, and each variant of the fused kernel (checked against the two-step output). */
static void bench_swiglu(struct cu_gemm *g, cudaStream_t s, cudaEvent_t ev[2], int runs, const char *only)
{
    const size_t n = 65536, k = 896, f = 4864;
    const double flops = 2.0 * (double)n * (double)k * (double)(2 * f);
    /* --only: the rows whose name contains it; the two-step path runs whenever a fused row does,
     * as the reference */
    char row[96];
    bool any_fused = !only;
    for (unsigned v = 0; !any_fused && cu_gemm_swiglu_variant(v); v++) {
        snprintf(row, sizeof row, "qwen-mlp-up+swiglu-fused-%s", cu_gemm_swiglu_variant(v));
        any_fused = strstr(row, only) != NULL;
    }
    const bool show[2] = {!only || strstr("qwen-mlp-up-cublaslt", only),
                          !only || strstr("qwen-mlp-up+swiglu-cublaslt", only)};
    if (!show[0] && !show[1] && !any_fused)
        return;
    int device = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    void *x = random_device(n * k, CU_BF16, 1.0f, 4), *w = random_device(2 * f * k, CU_BF16, 0.05f, 5);
    void *gate_up = NULL, *h = NULL;
    float *row_scale = NULL, *scales = malloc(n * sizeof(float));
    if (!scales) {
        fprintf(stderr, "netlm_gemm_bench: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        scales[i] = 0.5f + 0.25f * (float)(i % 7);
    CUDA_CHECK(cudaMalloc((void **)&row_scale, n * sizeof(float)));
    CUDA_CHECK(cudaMemcpy(row_scale, scales, n * sizeof(float), cudaMemcpyHostToDevice));
    free(scales);
    CUDA_CHECK(cudaMalloc(&gate_up, n * 2 * f * 2));
    CUDA_CHECK(cudaMalloc(&h, n * f * 2));
    /* the kernels cuBLASLt offers for the gate/up GEMM, each timed with its tile, stages and
     * cluster shape: the recipe the fused kernel is measured against */
    cu_gemm_set_candidate_log(g, stdout);
    for (int path = 0; path < 2; path++) {
        if (!show[path] && !(path == 1 && any_fused))
            continue;
        const float ms = time_path(path, 0, g, s, ev, runs, gate_up, h, x, w, row_scale, n, k, f);
        if (!show[path])
            continue;
        printf("{\"side\":\"netlm\",\"gemm\":\"%s\",\"algorithm\":\"fastest\",\"n\":%zu,\"in\":%zu,\"out\":%zu,"
               "\"ld\":%zu,\"ms\":%.4f,\"tflops\":%.1f}\n",
               path ? "qwen-mlp-up+swiglu-cublaslt" : "qwen-mlp-up-cublaslt", n, k, 2 * f, 2 * f, ms,
               flops / (ms * 1e-3) / 1e12);
    }
    cu_gemm_set_candidate_log(g, NULL);
    if (any_fused && !cu_gemm_swiglu_supported(device, (uint32_t)k, (uint32_t)f)) {
        printf("{\"side\":\"netlm\",\"gemm\":\"qwen-mlp-up+swiglu-fused\",\"skipped\":\"not a compute capability "
               "9.0 GPU\"}\n");
    } else if (any_fused) {
        /* the reference for the fused variants: h in the gate halves of the two-step rows */
        uint16_t *two_step = malloc(n * f * 2), *fused = malloc(n * f * 2);
        if (!two_step || !fused) {
            fprintf(stderr, "netlm_gemm_bench: out of memory\n");
            exit(1);
        }
        CUDA_CHECK(cudaMemcpy2D(two_step, f * 2, gate_up, 2 * f * 2, f * 2, n, cudaMemcpyDeviceToHost));
        for (unsigned v = 0; cu_gemm_swiglu_variant(v); v++) {
            snprintf(row, sizeof row, "qwen-mlp-up+swiglu-fused-%s", cu_gemm_swiglu_variant(v));
            if (only && !strstr(row, only))
                continue;
            CUDA_CHECK(cudaMemset(h, 0xff, n * f * 2)); /* NaN: a tile left unwritten shows */
            const float ms = time_path(2, v, g, s, ev, runs, gate_up, h, x, w, row_scale, n, k, f);
            CUDA_CHECK(cudaMemcpy(fused, h, n * f * 2, cudaMemcpyDeviceToHost));
            struct rel_diff diff = {0};
            for (size_t i = 0; i < n * f; i++)
                rel_diff_add(&diff, cu_bf16_to_f32(two_step[i]), cu_bf16_to_f32(fused[i]));
            printf("{\"side\":\"netlm\",\"gemm\":\"%s\",\"algorithm\":\"%u CTAs\",\"n\":%zu,"
                   "\"in\":%zu,\"out\":%zu,\"ld\":%zu,\"ms\":%.4f,\"tflops\":%.1f,\"max_rel_diff\":%.3g}\n",
                   row, cu_gemm_swiglu_grid(device, v, (uint32_t)n, (uint32_t)f), n, k, 2 * f, f,
                   ms, flops / (ms * 1e-3) / 1e12, rel_diff_value(&diff));
            fflush(stdout);
        }
        free(two_step);
        free(fused);
    }
    cudaFree(x), cudaFree(w), cudaFree(gate_up), cudaFree(h), cudaFree(row_scale);
}

int main(int argc, char **argv)
{
    int device = 0, runs = 10;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--only") && i + 1 < argc) {
            only = argv[++i];
        } else if (!strcmp(argv[i], "--device") && i + 1 < argc) {
            device = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
            runs = atoi(argv[++i]);
            if (runs < 1) {
                fprintf(stderr, "netlm_gemm_bench: --runs: expected a count of at least 1\n");
                return 2;
            }
        } else if (!strcmp(argv[i], "--warmup") && i + 1 < argc) {
            char *end;
            const long n = strtol(argv[++i], &end, 10);
            if (*argv[i] == '\0' || *end != '\0' || n < 0 || n > 100) {
                fprintf(stderr, "netlm_gemm_bench: --warmup: expected a count from 0 to 100, not \"%s\"\n", argv[i]);
                return 2;
            }
            untimed_calls = (int)n;
        } else {
            fprintf(stderr, "usage: netlm_gemm_bench [--device N] [--runs N] [--warmup N] [--only NAME]\n");
            return 2;
        }
    }
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || device < 0 || device >= count) {
        fprintf(stderr, "netlm_gemm_bench: no cuda:%d (%d devices)\n", device, count);
        return 1;
    }
    CUDA_CHECK(cudaSetDevice(device));
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreate(&s));
    cudaEvent_t ev[2];
    CUDA_CHECK(cudaEventCreate(&ev[0]));
    CUDA_CHECK(cudaEventCreate(&ev[1]));
    /* operands large enough for every case: x [n, in], w [out, in] (rows past 60,005 zero for
     * the padded head), y / dy [n, ld] (4 bytes an element), dw [out, in] fp32 */
    size_t x_max = 0, w_max = 0, y_max = 0, dw_max = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct gemm_case *c = &cases[i];
        x_max = c->n * c->in > x_max ? c->n * c->in : x_max;
        w_max = c->out * c->in > w_max ? c->out * c->in : w_max;
        y_max = c->n * (c->ld > c->in ? c->ld : c->in) > y_max ? c->n * (c->ld > c->in ? c->ld : c->in) : y_max;
        dw_max = c->out * c->in > dw_max ? c->out * c->in : dw_max;
    }
    void *x = random_device(x_max, CU_BF16, 1.0f, 1), *w = random_device(w_max, CU_BF16, 0.05f, 2);
    void *dy = random_device(y_max, CU_BF16, 1e-3f, 3), *y = NULL;
    float *dw = NULL;
    CUDA_CHECK(cudaMalloc(&y, y_max * 4));
    CUDA_CHECK(cudaMalloc((void **)&dw, dw_max * 4));
    /* the head's padding rows and the gradient's padding columns are zeros, as in the trainer */
    CUDA_CHECK(cudaMemset((uint16_t *)w + (size_t)60005 * 768, 0, (size_t)(60032 - 60005) * 768 * 2));
    for (size_t r = 0; r < 4096; r++)
        CUDA_CHECK(cudaMemset((uint16_t *)dy + r * 60032 + 60005, 0, (60032 - 60005) * 2));
    float *first = malloc((size_t)4096 * 60005 * sizeof(float)), *other = malloc((size_t)4096 * 60005 * sizeof(float));
    if (!first || !other) {
        fprintf(stderr, "netlm_gemm_bench: out of memory\n");
        return 1;
    }
    char err[512];
    for (int tuned = 0; tuned < 2; tuned++) {
        struct cu_gemm *g = cu_gemm_create(CU_GEMM_WORKSPACE_BYTES, err, sizeof err);
        if (!g) {
            fprintf(stderr, "netlm_gemm_bench: %s\n", err);
            return 1;
        }
        cu_gemm_set_tuning(g, tuned != 0);
        bool have_first = false;
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            const struct gemm_case *c = &cases[i];
            if (only && !strstr(c->name, only))
                continue;
            for (int r = -untimed_calls; r < runs; r++) {
                if (r == 0)
                    CUDA_CHECK(cudaEventRecord(ev[0], s));
                if (!call(g, s, c, y, x, w, dy, dw, err, sizeof err)) {
                    fprintf(stderr, "netlm_gemm_bench: %s: %s\n", c->name, err);
                    return 1;
                }
            }
            CUDA_CHECK(cudaEventRecord(ev[1], s));
            CUDA_CHECK(cudaEventSynchronize(ev[1]));
            float ms = 0.0f;
            CUDA_CHECK(cudaEventElapsedTime(&ms, ev[0], ev[1]));
            ms /= (float)runs;
            const double flops = 2.0 * (double)c->n * (double)c->in * (double)c->out;
            printf("{\"side\":\"netlm\",\"gemm\":\"%s\",\"algorithm\":\"%s\",\"n\":%zu,\"in\":%zu,\"out\":%zu,"
                   "\"ld\":%zu,\"ms\":%.4f,\"tflops\":%.1f",
                   c->name, tuned ? "fastest" : "heuristic-first", c->n, c->in, c->out, c->ld, ms,
                   flops / (ms * 1e-3) / 1e12);
            /* the fp32-output forward cases: the first V columns against the first such case's */
            if (c->kind == GEMM_FWD && c->yt == CU_F32) {
                float *dst = have_first ? other : first;
                CUDA_CHECK(cudaMemcpy2D(dst, 60005 * sizeof(float), y, c->ld * sizeof(float),
                                        60005 * sizeof(float), c->n, cudaMemcpyDeviceToHost));
                if (have_first) {
                    struct rel_diff diff = {0};
                    for (size_t k = 0; k < (size_t)4096 * 60005; k++)
                        rel_diff_add(&diff, first[k], other[k]);
                    printf(",\"max_rel_diff\":%.3g", rel_diff_value(&diff));
                }
                have_first = true;
            }
            printf("}\n");
            fflush(stdout);
        }
        if (tuned)
            bench_swiglu(g, s, ev, runs, only);
        cu_gemm_free(g);
    }
    free(first);
    free(other);
    cudaFree(x), cudaFree(w), cudaFree(dy), cudaFree(y), cudaFree(dw);
    cudaStreamDestroy(s);
    return 0;
}
