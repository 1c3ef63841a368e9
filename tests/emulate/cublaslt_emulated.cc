/* cublaslt_emulated.cc — the cuBLASLt calls model/cuda/gemm.c makes, on the host, for the emulated
 * builds of the engine (tests/CMakeLists.txt): D = alpha·op(A)·op(B) + beta·C in cuBLASLt's
 * column-major terms, bf16 or fp32 operands, products summed in fp32 (OpenBLAS) and D rounded
 * once to its type after the BIAS / GELU / GELU_BIAS epilogue (GELU's tanh form). The heuristic
 * offers one algorithm, or NETLM_CUDA_EMULATE_ALGOS of them, which compute the same and differ
 * in what they cost under NETLM_CUDA_EMULATE_TIMING=launches (emulated_algo_launches): gemm.c's
 * tuning then has a known fastest to find. Descriptors live inside cuBLASLt's own opaque structs (their data words), so the
 * header's types are used as they are. A matmul issued while a stream is being captured is
 * recorded into the graph like a kernel launch (cuda_emulate.h's emu_submit). */
#include <cblas.h>
#include <cublasLt.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "model/cuda/cuda_internal.h"

namespace {

struct desc {
    cublasOperation_t opa, opb;
    cublasLtEpilogue_t epilogue;
    const void *bias;
    cudaDataType_t bias_type;
};
static_assert(sizeof(desc) <= sizeof(cublasLtMatmulDescOpaque_t), "the descriptor fits cuBLASLt's");

struct layout {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
};
static_assert(sizeof(layout) <= sizeof(cublasLtMatrixLayoutOpaque_t), "the layout fits cuBLASLt's");

desc *of(cublasLtMatmulDesc_t d) { return reinterpret_cast<desc *>(d->data); }
const layout *of(cublasLtMatrixLayout_t l) { return reinterpret_cast<const layout *>(l->data); }

float load(cudaDataType_t t, const void *p, size_t i)
{
    return t == CUDA_R_32F ? static_cast<const float *>(p)[i] : cu_bf16_to_f32(static_cast<const uint16_t *>(p)[i]);
}

void store(cudaDataType_t t, void *p, size_t i, float v)
{
    if (t == CUDA_R_32F) {
        static_cast<float *>(p)[i] = v;
        return;
    }
    cu_host_from_f32(static_cast<uint16_t *>(p) + i, CU_BF16, &v, 1);
}

/* element (r, c) of op(X) for X stored as layout l */
float element(const layout *l, const void *x, cublasOperation_t op, uint64_t r, uint64_t c)
{
    return op == CUBLAS_OP_N ? load(l->type, x, r + c * l->ld) : load(l->type, x, c + r * l->ld);
}

} // namespace

struct cublasLtContext {
    int unused;
};

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t *handle)
{
    *handle = new cublasLtContext{};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle)
{
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t compute, cudaDataType_t scale)
{
    if (compute != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    *d = new cublasLtMatmulDescOpaque_t{};
    *of(*d) = desc{CUBLAS_OP_N, CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT, nullptr, CUDA_R_32F};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d)
{
    delete d;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t bytes)
{
    desc *x = of(d);
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
        memcpy(&x->opa, buf, sizeof x->opa < bytes ? sizeof x->opa : bytes);
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_TRANSB:
        memcpy(&x->opb, buf, sizeof x->opb < bytes ? sizeof x->opb : bytes);
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
        memcpy(&x->epilogue, buf, sizeof x->epilogue);
        return x->epilogue == CUBLASLT_EPILOGUE_DEFAULT || x->epilogue == CUBLASLT_EPILOGUE_BIAS ||
                       x->epilogue == CUBLASLT_EPILOGUE_GELU || x->epilogue == CUBLASLT_EPILOGUE_GELU_BIAS
                   ? CUBLAS_STATUS_SUCCESS
                   : CUBLAS_STATUS_NOT_SUPPORTED;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
        memcpy(&x->bias, buf, sizeof x->bias);
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: {
        int32_t t;
        memcpy(&t, buf, sizeof t);
        x->bias_type = static_cast<cudaDataType_t>(t);
        return CUBLAS_STATUS_SUCCESS;
    }
    default:
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType type, uint64_t rows, uint64_t cols,
                                          int64_t ld)
{
    if ((type != CUDA_R_32F && type != CUDA_R_16BF) || ld < static_cast<int64_t>(rows))
        return CUBLAS_STATUS_INVALID_VALUE;
    *l = new cublasLtMatrixLayoutOpaque_t{};
    *reinterpret_cast<layout *>((*l)->data) = layout{type, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l)
{
    delete l;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p)
{
    *p = new cublasLtMatmulPreferenceOpaque_t{};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p)
{
    delete p;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t,
                                                    const void *, size_t)
{
    return CUBLAS_STATUS_SUCCESS;
}

/* one algorithm, whatever was asked (tuning then has nothing to choose from), or as many as
 * NETLM_CUDA_EMULATE_ALGOS says, each with its rank in its first data word */
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t,
                                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                              cublasLtMatmulPreference_t, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int *found)
{
    *found = 0;
    if (requested < 1)
        return CUBLAS_STATUS_INVALID_VALUE;
    const char *env = getenv("NETLM_CUDA_EMULATE_ALGOS");
    const int offered = env && atoi(env) > 1 ? atoi(env) : 1;
    for (int i = 0; i < offered && i < requested; i++) {
        results[i] = cublasLtMatmulHeuristicResult_t{};
        results[i].algo.data[0] = (uint64_t)i;
        results[i].state = CUBLAS_STATUS_SUCCESS;
        results[i].wavesCount = 1.0f;
        *found = i + 1;
    }
    return CUBLAS_STATUS_SUCCESS;
}

/* What algorithm `rank` of the NETLM_CUDA_EMULATE_ALGOS offered costs, as kernel launches: one
 * more for each rank it lies from the next to last, the one the tuning should find (neither the
 * heuristic's first nor where a loop over them ends). */
extern "C" unsigned emulated_algo_launches(uint64_t rank)
{
    const char *env = getenv("NETLM_CUDA_EMULATE_ALGOS");
    const int offered = env && atoi(env) > 1 ? atoi(env) : 1, fastest = offered > 1 ? offered - 2 : 0;
    const int from = (int)rank - fastest;
    return 1u + (unsigned)(from < 0 ? -from : from);
}

cublasStatus_t cublasLtMatmulAlgoConfigGetAttribute(const cublasLtMatmulAlgo_t *, cublasLtMatmulAlgoConfigAttributes_t,
                                                    void *, size_t, size_t *)
{
    return CUBLAS_STATUS_NOT_SUPPORTED;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t computeDesc, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t Adesc, const void *B, cublasLtMatrixLayout_t Bdesc,
                              const void *beta, const void *C, cublasLtMatrixLayout_t Cdesc, void *D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t *algo, void *, size_t,
                              cudaStream_t)
{
    const desc d = *of(computeDesc);
    const layout a = *of(Adesc), b = *of(Bdesc), c = *of(Cdesc), dl = *of(Ddesc);
    const uint64_t m = dl.rows, n = dl.cols;
    const uint64_t k = d.opa == CUBLAS_OP_N ? a.cols : a.rows;
    if ((d.opa == CUBLAS_OP_N ? a.rows : a.cols) != m || (d.opb == CUBLAS_OP_N ? b.rows : b.cols) != k ||
        (d.opb == CUBLAS_OP_N ? b.cols : b.rows) != n || c.rows != m || c.cols != n)
        return CUBLAS_STATUS_INVALID_VALUE;
    const float al = *static_cast<const float *>(alpha), be = *static_cast<const float *>(beta);
    const unsigned launches = emulated_algo_launches(algo ? algo->data[0] : 0);
    emu_submit([=] {
        emu_launches += launches; /* a kernel on the GPU too (NETLM_CUDA_EMULATE_TIMING=launches counts it) */
        /* op(A) as rows of k, op(B) as columns of k, in fp32; their products summed in fp32 by
         * OpenBLAS (prod[j][i] = Σ_t op(A)[i][t]·op(B)[t][j]), then alpha, beta·C and the epilogue */
        std::vector<float> ar(m * k), bc(n * k), prod(n * m), col(m);
        for (uint64_t i = 0; i < m; i++)
            for (uint64_t t = 0; t < k; t++)
                ar[i * k + t] = element(&a, A, d.opa, i, t);
        for (uint64_t j = 0; j < n; j++)
            for (uint64_t t = 0; t < k; t++)
                bc[j * k + t] = element(&b, B, d.opb, t, j);
        if (m && n && k)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)m, (int)k, 1.0f, bc.data(), (int)k,
                        ar.data(), (int)k, 0.0f, prod.data(), (int)m);
        for (uint64_t j = 0; j < n; j++) {
            for (uint64_t i = 0; i < m; i++) {
                float v = al * prod[j * m + i];
                if (be != 0.0f)
                    v += be * load(c.type, C, i + j * c.ld);
                if (d.epilogue == CUBLASLT_EPILOGUE_BIAS || d.epilogue == CUBLASLT_EPILOGUE_GELU_BIAS)
                    v += load(d.bias_type, d.bias, i);
                if (d.epilogue == CUBLASLT_EPILOGUE_GELU || d.epilogue == CUBLASLT_EPILOGUE_GELU_BIAS)
                    v = 0.5f * v * (1.0f + std::tanh(0.7978845608f * (v + 0.044715f * v * v * v)));
                col[i] = v;
            }
            /* C may be D: the column is read whole before it is written */
            for (uint64_t i = 0; i < m; i++)
                store(dl.type, D, i + j * dl.ld, col[i]);
        }
    });
    return CUBLAS_STATUS_SUCCESS;
}

} // extern "C"
