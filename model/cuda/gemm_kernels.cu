/* gemm_kernels.cu — the kernel beside the backward GEMMs of gemm.c: the bias gradient
 * db += Σ_rows dy, which cuBLASLt's BGRADB epilogue would store rather than add.
 *
 * Deterministic by construction: no float atomics. The rows are cut into chunks fixed by the
 * shape; one block per (chunk, 32 columns) sums its chunk in a fixed order (thread row y takes
 * rows y, y + 8, …, then the 8 threads of a column in order) into a partial; a second kernel
 * adds each column's partials in chunk order onto db. So the bits depend on (n, out) alone, not
 * on which block ran first. */
#include <cuda_bf16.h>

#include "model/cuda/cuda_device.cuh"
#include "model/cuda/cuda_internal.h"

namespace {

constexpr uint32_t DB_CHUNK = 128;          /* nominal rows per chunk */
constexpr uint32_t DB_PART_ROWS = 8;        /* threadIdx.y of the partial-sum blocks */
constexpr size_t DB_SCRATCH_CAP = 1u << 20; /* floats of partials used at most (4 MiB) */

/* grid (chunks, column tiles of 32), block (32, DB_PART_ROWS): column j's sum over rows
 * [chunk·rows, (chunk + 1)·rows) into partial[chunk][j], or added onto db[j] when there is one
 * chunk (partial NULL). A warp reads 32 adjacent columns of a row: coalesced. */
template <typename T>
__global__ void bias_grad_partials(float *partial, float *db, const T *dy, size_t ldy, size_t n,
                                   uint32_t out, size_t rows)
{
    __shared__ float part[DB_PART_ROWS][33];
    const uint32_t j = blockIdx.y * 32 + threadIdx.x;
    const size_t r0 = (size_t)blockIdx.x * rows, r1 = r0 + rows < n ? r0 + rows : n;
    float a = 0.0f;
    if (j < out)
        for (size_t r = r0 + threadIdx.y; r < r1; r += DB_PART_ROWS)
            a += to_f(dy[r * ldy + j]);
    part[threadIdx.y][threadIdx.x] = a;
    __syncthreads();
    if (threadIdx.y != 0 || j >= out)
        return;
    float sum = 0.0f;
    for (uint32_t k = 0; k < DB_PART_ROWS; k++)
        sum += part[k][threadIdx.x];
    if (partial)
        partial[(size_t)blockIdx.x * out + j] = sum;
    else
        db[j] += sum;
}

__global__ void bias_grad_reduce(float *db, const float *partial, uint32_t chunks, uint32_t out)
{
    const uint32_t j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= out)
        return;
    float sum = 0.0f;
    for (uint32_t k = 0; k < chunks; k++)
        sum += partial[(size_t)k * out + j];
    db[j] += sum;
}

} // namespace

extern "C" cudaError_t cu_gemm_bias_grad(float *db, const void *dy, enum cu_dtype t, size_t ldy,
                                         size_t n, size_t out, float *scratch,
                                         size_t scratch_floats, cudaStream_t s)
{
    if (n == 0 || out == 0)
        return cudaSuccess;
    const size_t tiles = (out + 31) / 32;
    if (tiles > 65535u || out > UINT32_MAX)
        return cudaErrorInvalidValue;
    /* chunks of DB_CHUNK rows, fewer (longer) when their partials would not fit: every count
     * here is a function of (n, out) while scratch holds DB_SCRATCH_CAP floats */
    const size_t cap = scratch_floats < DB_SCRATCH_CAP ? scratch_floats : DB_SCRATCH_CAP;
    size_t chunks = (n + DB_CHUNK - 1) / DB_CHUNK;
    if (chunks > cap / out)
        chunks = cap / out;
    if (chunks < 1 || !scratch)
        chunks = 1;
    const size_t rows = (n + chunks - 1) / chunks;
    chunks = (n + rows - 1) / rows; /* no empty chunk */
    const dim3 grid((unsigned)chunks, (unsigned)tiles), block(32, DB_PART_ROWS);
    float *partial = chunks > 1 ? scratch : NULL;
    if (t == CU_BF16)
        bias_grad_partials<bf16><<<grid, block, 0, s>>>(partial, db, (const bf16 *)dy, ldy, n,
                                                        (uint32_t)out, rows);
    else
        bias_grad_partials<float><<<grid, block, 0, s>>>(partial, db, (const float *)dy, ldy, n,
                                                         (uint32_t)out, rows);
    if (partial)
        bias_grad_reduce<<<(unsigned)((out + 255) / 256), 256, 0, s>>>(db, partial, (uint32_t)chunks,
                                                                       (uint32_t)out);
    return cudaGetLastError();
}
