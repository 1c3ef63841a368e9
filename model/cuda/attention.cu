/* attention.cu — causal self-attention in the flash style: each block owns a tile of one
 * sequence's queries for one head, walks that sequence's key/value tiles in order through shared
 * memory and keeps a running maximum and sum per query row (online softmax), so the T×T scores
 * never reach device memory. Packed rows (sequence b owns rows seq_off[b]..seq_off[b+1]-1),
 * grouped-query heads (query head h reads key/value head h / (heads / kv_heads)), any length up
 * to the buffers' (tested to 1024).
 *
 * Three kernels:
 * - attn_tc: bf16 on the tensor cores (mma.sync m16n8k16, fp32 accumulation), FlashAttention-2's
 *   layout: 4 warps × 16 query rows, 64-key tiles, Q fragments in registers for the whole walk,
 *   S = Q·Kᵀ accumulators turned into the A operand of P·V without leaving registers. Probabilities
 *   are rounded to bf16 for P·V (as FA2 does); the row sums use the fp32 values.
 * - attn_tc_group (CU_ATTN_TC_GROUP, inference): attn_tc's arithmetic for sequences of at most
 *   256 tokens with grouped-query heads, one block per kv head walking the group's query heads
 *   over key/value tiles it loads once; optionally rotating k (RoPE) in shared memory and q in
 *   registers (cu_attention_rope).
 * - attn_simt: fp32 arithmetic for both element types and any head_dim ≤ 128; the reference the
 *   fp32 engine runs (1e-5 against the CPU) and the fallback for shapes attn_tc does not take.
 * (attention_wgmma.cu has attn_tc_group's work on Hopper's warpgroup products, CU_ATTN_WG_GROUP,
 * CU_ATTN_WG_OVERLAP and CU_ATTN_WG_PAIR.)
 *
 * Masking: a query at position i sees keys 0..i. Right padding needs no mask of its own: every
 * real query's keys are real. Rows past a sequence's length are loaded as zeros and never stored.
 *
 * Training: both forward kernels can also store each query row's log-sum-exp (a branch on a
 * kernel argument, after the walk), and the backward (FlashAttention-2's, in fp32 arithmetic)
 * recomputes the probabilities from it tile by tile: attn_bwd_dq (one block per query tile, also
 * computes D = rowsum(dout ⊙ out)) and then attn_bwd_dkv (one block per key tile and kv head,
 * the group's query heads summed inside the block). Every gradient element is summed by one
 * thread in a fixed order: no atomics, so a training step is bit-reproducible. The same two
 * kernels exist on the tensor cores for bf16 with d ∈ {32, 64, 128} (attn_bwd_tc_dq,
 * attn_bwd_tc_dkv: bf16 products, P and dS rounded to bf16 as FA2 does, fp32 sums), taken by
 * CU_ATTN_AUTO.
 *
 * Dropout of the probabilities (struct cu_attn_dropout, training only) is a template argument
 * of every kernel: the instantiations without it, inference's included, are the code they were.
 * With it, each probability's factor is a hash of its (sequence, head, query, key), so the
 * backward redraws the forward's mask instead of storing it; the row sums stay unmasked. */
#include <cuda_bf16.h>
#include <math.h>

#include "model/cuda/attention_tc.cuh"
#include "model/cuda/cuda_device.cuh"
#include "model/cuda/cuda_internal.h"

namespace {

/* ---------------------------------------------------------------------------------------------
 * SIMT kernel. Block: 4 warps, 16 queries (4 per warp, one after the other within a key tile);
 * key/value tiles of 32 rows in shared memory as fp32. For one query, lane j scores key k0 + j,
 * the warp reduces the tile's maximum, and each lane accumulates output dimensions lane,
 * lane + 32, ... with the probabilities broadcast by shuffles. */

constexpr uint32_t SIMT_BQ = 16, SIMT_BK = 32, SIMT_THREADS = 128, SIMT_QPW = 4, SIMT_DMAX = 128;

/* One row of d head dims held by a warp as the SIMT kernels hold it (lane owns dims lane,
 * lane + 32, ...: v[r] is dim lane + 32·r), times scale, into row. */
template <typename T>
__device__ __forceinline__ void store_lane_dims(T *row, const float v[SIMT_DMAX / 32], float scale,
                                                uint32_t lane, uint32_t d)
{
#pragma unroll
    for (uint32_t r = 0; r < SIMT_DMAX / 32; r++) {
        const uint32_t e = lane + 32 * r;
        if (e < d)
            row[e] = from_f<T>(v[r] * scale);
    }
}

inline size_t simt_smem_bytes(uint32_t d)
{
    const uint32_t stride = d | 1u;
    return ((size_t)SIMT_BQ * d + 2 * (size_t)SIMT_BK * stride) * sizeof(float);
}

template <typename T, bool DROP>
__global__ void __launch_bounds__(SIMT_THREADS)
attn_simt(T *out, uint32_t ldo, float *lse, const T *qkv, uint32_t ldqkv, const uint32_t *seq_off,
          uint32_t heads, uint32_t kv_heads, uint32_t d, float scale, cu_attn_dropout drop)
{
    extern __shared__ float smem[];
    const uint32_t b = blockIdx.z, h = blockIdx.y;
    const uint32_t start = seq_off[b], len = seq_off[b + 1] - start;
    const uint32_t q0 = (gridDim.x - 1 - blockIdx.x) * SIMT_BQ; /* longest tiles first */
    if (q0 >= len)
        return;
    const uint32_t kvh = h / (heads / kv_heads);
    /* an odd row stride puts the rows that the 32 lanes read at once in 32 different banks */
    const uint32_t stride = d | 1u;
    float *qs = smem;                    /* [BQ][d] */
    float *ks = qs + SIMT_BQ * d;        /* [BK][stride] */
    float *vs = ks + SIMT_BK * stride;   /* [BK][stride] */
    const T *qbase = qkv + (size_t)start * ldqkv + (size_t)h * d;
    const T *kbase = qkv + (size_t)start * ldqkv + (size_t)(heads + kvh) * d;
    const T *vbase = qkv + (size_t)start * ldqkv + (size_t)(heads + kv_heads + kvh) * d;
    const uint32_t q_last = (q0 + SIMT_BQ < len ? q0 + SIMT_BQ : len) - 1;
    uint64_t drop_key = 0;
    if constexpr (DROP)
        drop_key = dev_drop_key(drop.seq_key[b], drop.layer, 1, h);

    for (uint32_t i = threadIdx.x; i < SIMT_BQ * d; i += blockDim.x) {
        const uint32_t r = i / d, e = i % d;
        qs[i] = q0 + r < len ? to_f(qbase[(size_t)(q0 + r) * ldqkv + e]) : 0.0f;
    }
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float m[SIMT_QPW], l[SIMT_QPW], acc[SIMT_QPW][SIMT_DMAX / 32];
#pragma unroll
    for (uint32_t qi = 0; qi < SIMT_QPW; qi++) {
        m[qi] = -INFINITY;
        l[qi] = 0.0f;
#pragma unroll
        for (uint32_t r = 0; r < SIMT_DMAX / 32; r++)
            acc[qi][r] = 0.0f;
    }

    for (uint32_t k0 = 0; k0 <= q_last; k0 += SIMT_BK) {
        __syncthreads(); /* the previous tile is consumed (and qs is complete) */
        for (uint32_t i = threadIdx.x; i < SIMT_BK * d; i += blockDim.x) {
            const uint32_t r = i / d, e = i % d, j = k0 + r;
            const bool ok = j <= q_last;
            ks[r * stride + e] = ok ? to_f(kbase[(size_t)j * ldqkv + e]) : 0.0f;
            vs[r * stride + e] = ok ? to_f(vbase[(size_t)j * ldqkv + e]) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (uint32_t qi = 0; qi < SIMT_QPW; qi++) {
            const uint32_t qr = warp * SIMT_QPW + qi, i = q0 + qr;
            if (i >= len || k0 > i) /* the same for the whole warp */
                continue;
            const uint32_t j = k0 + lane;
            float s = -INFINITY;
            if (j <= i) {
                const float *qv = qs + qr * d, *kv = ks + lane * stride;
                float dot = 0.0f;
                for (uint32_t e = 0; e < d; e++)
                    dot += qv[e] * kv[e];
                s = dot * scale;
            }
            /* key k0 ≤ i is visible, so the maximum is finite */
            const float m_new = fmaxf(m[qi], warp_max(s));
            const float alpha = expf(m[qi] - m_new); /* 0 on the first tile (m = −inf) */
            float p = j <= i ? expf(s - m_new) : 0.0f;
            l[qi] = l[qi] * alpha + p; /* per-lane partial sums, reduced at the end */
            m[qi] = m_new;
            if constexpr (DROP) /* P·V takes the masked probability, the row sum the plain one */
                if (j <= i)
                    p *= dev_dropout_factor(drop_key, drop.threshold, drop.scale, (uint64_t)i * len + j);
#pragma unroll
            for (uint32_t r = 0; r < SIMT_DMAX / 32; r++)
                acc[qi][r] *= alpha;
            const uint32_t nk = i - k0 + 1 < SIMT_BK ? i - k0 + 1 : SIMT_BK;
            for (uint32_t jj = 0; jj < nk; jj++) {
                const float pj = __shfl_sync(0xffffffffu, p, jj);
                const float *vr = vs + jj * stride;
#pragma unroll
                for (uint32_t r = 0; r < SIMT_DMAX / 32; r++) {
                    const uint32_t e = lane + 32 * r;
                    if (e < d)
                        acc[qi][r] += pj * vr[e];
                }
            }
        }
    }
#pragma unroll
    for (uint32_t qi = 0; qi < SIMT_QPW; qi++) {
        const uint32_t i = q0 + warp * SIMT_QPW + qi;
        if (i >= len)
            continue;
        const float sum = warp_sum(l[qi]), inv = 1.0f / sum;
        if (lse && lane == 0)
            lse[(size_t)(start + i) * heads + h] = m[qi] + logf(sum);
        store_lane_dims(out + (size_t)(start + i) * ldo + (size_t)h * d, acc[qi], inv, lane, d);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Tensor-core kernel (bf16). Fragment layouts of mma.sync.m16n8k16 (PTX ISA, "Matrix Fragments
 * for mma.m16n8k16"), with g = lane / 4 and t = lane % 4:
 *   A (16×16, row-major): reg0 = A[g][2t..2t+1], reg1 = A[g+8][2t..], reg2 = A[g][2t+8..],
 *                         reg3 = A[g+8][2t+8..]   (lower column in the lower 16 bits)
 *   B (16×8, k×n):        reg0 = B[2t..2t+1][g], reg1 = B[2t+8..2t+9][g]
 *   C (16×8, fp32):       c0, c1 = C[g][2t..2t+1], c2, c3 = C[g+8][2t..2t+1]
 * S = Q·Kᵀ: B[k][n] = K[n][k], two consecutive head dims of one key: ldmatrix of 8×8 blocks of
 * K rows hands each thread exactly that (four blocks, two k-steps, per instruction).
 * O += P·V: B[k][n] = V[k][n], the same dim of two consecutive keys: ldmatrix .trans of 8×8
 * blocks of V rows transposes on the way (four blocks, two dim tiles, per instruction).
 * The C fragments of S tiles 2c and 2c+1 are exactly the A fragment of P for keys 16c..16c+15.
 * K and V tiles are double-buffered: cp.async fetches tile kt + 1 while tile kt is computed.
 * (attention_tc.cuh: the tile shape and what attn_wg_group shares with these kernels.) */

/* The PTX primitives. tests/emulate/ compiles this file on the host with NETLM_CUDA_EMULATE and
 * its own versions of them (warps of threads, the fragment tables of the PTX manual). */
#ifndef NETLM_CUDA_EMULATE
__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Four 8×8 bf16 blocks from shared memory; lane l gives the address of row l % 8 of block l / 8
 * (16-byte aligned). Plain: reg i = block i's [g][2t..2t+1]; trans: block i's [2t..2t+1][g]. */
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const bf16 *row)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const bf16 *row)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

/* cp.async of one 4-byte word (lse, delta), completing with the tiles of its commit group */
__device__ __forceinline__ void cp_async4(void *smem, const void *gmem)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(a), "l"(gmem));
}
#endif

/* rows row0..row0+63 (of the sequence; those ≥ limit as zeros) of one head: 16-byte copies into
 * a [64][D + 8] tile (the 8-element pad keeps the fragment loads free of bank conflicts). */
template <uint32_t D>
__device__ __forceinline__ void load_tile(bf16 *tile, const bf16 *base, uint32_t ld,
                                          uint32_t row0, uint32_t limit)
{
    constexpr uint32_t LD = D + 8, VPR = D / 8; /* 16-byte vectors per row */
    for (uint32_t i = threadIdx.x; i < 64 * VPR; i += TC_THREADS) {
        const uint32_t r = i / VPR, cv = i % VPR;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (row0 + r < limit)
            v = *reinterpret_cast<const uint4 *>(base + (size_t)(row0 + r) * ld + cv * 8);
        *reinterpret_cast<uint4 *>(tile + r * LD + cv * 8) = v;
    }
}

/* The same through cp.async (no registers, completes at cp_async_wait); rows ≥ limit are zeroed
 * with plain stores, which the barrier after the wait orders like the copies. */
template <uint32_t D>
__device__ __forceinline__ void load_tile_async(bf16 *tile, const bf16 *base, uint32_t ld,
                                                uint32_t row0, uint32_t limit)
{
    constexpr uint32_t LD = D + 8, VPR = D / 8;
    for (uint32_t i = threadIdx.x; i < 64 * VPR; i += TC_THREADS) {
        const uint32_t r = i / VPR, cv = i % VPR;
        if (row0 + r < limit)
            cp_async16(tile + r * LD + cv * 8, base + (size_t)(row0 + r) * ld + cv * 8);
        else
            *reinterpret_cast<uint4 *>(tile + r * LD + cv * 8) = make_uint4(0, 0, 0, 0);
    }
}

/* One key tile of attn_tc's walk for a warp's 16 query rows (this thread's rows row0 and
 * row1 = row0 + 8): S = Q·Kᵀ from the Q fragments qa and the key tile ks, the online softmax
 * (tc_softmax: the mask on the diagonal tile, DIAG; the dropout, DROP), then O += P·V from the
 * value tile vs. Keys k0 .. k0 + 63. On the diagonal tile a warp also skips the products of the
 * 8-key blocks after its last query row and P·V's 16-key blocks there: warp w needs 2w + 2 of
 * the 8, 5 on average, and warps go on independently where nothing waits for them
 * (attn_tc_group's head walk). */
template <uint32_t D, bool DROP, bool DIAG>
__device__ __forceinline__ void tc_key_tile(const uint32_t (&qa)[D / 16][4], const bf16 *ks, const bf16 *vs,
                                            uint32_t k0, uint32_t row0, uint32_t row1, uint32_t len,
                                            uint32_t lane, float scale_log2, uint64_t drop_key,
                                            const cu_attn_dropout &drop, float (&o)[D / 8][4], float &m0,
                                            float &m1, float &l0, float &l1)
{
    constexpr uint32_t LD = D + 8, KD = D / 16, ND = D / 8, NK = TC_BK / 8;
    const uint32_t lrow = lane % 8, lblk = lane / 8, warp_last = tc_warp_last<DIAG>(row0, k0);
    float s[NK][4];
#pragma unroll
    for (uint32_t nt = 0; nt < NK; nt++) {
        s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
        if (DIAG && nt * 8 > warp_last) /* every key after every row: masked below */
            continue;
        /* blocks: dims kk·16 + {0, 8, 16, 24} of keys nt·8.. → b0, b1 of k-steps kk, kk + 1 */
        const bf16 *kr = ks + (nt * 8 + lrow) * LD + lblk * 8;
#pragma unroll
        for (uint32_t kk = 0; kk < KD; kk += 2) {
            uint32_t kb[4];
            ldmatrix_x4(kb, kr + kk * 16);
            mma_bf16(s[nt], qa[kk], kb[0], kb[1]);
            mma_bf16(s[nt], qa[kk + 1], kb[2], kb[3]);
        }
    }
    tc_softmax<D, DROP, DIAG>(s, k0, row0, row1, len, lane, scale_log2, drop_key, drop, o, m0, m1, l0, l1);
#pragma unroll
    for (uint32_t kc = 0; kc < TC_BK / 16; kc++) {
        if (DIAG && kc * 16 > warp_last) /* P is 0 there */
            continue;
        const uint32_t pa[4] = {pack_bf16(s[2 * kc][0], s[2 * kc][1]),
                                pack_bf16(s[2 * kc][2], s[2 * kc][3]),
                                pack_bf16(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                                pack_bf16(s[2 * kc + 1][2], s[2 * kc + 1][3])};
        /* blocks: keys kc·16 + {0, 8} × dims dt·8 + {0, 8} → b0, b1 of dim tiles dt, dt + 1 */
        const bf16 *vr = vs + (kc * 16 + (lblk & 1) * 8 + lrow) * LD + (lblk >> 1) * 8;
#pragma unroll
        for (uint32_t dt = 0; dt < ND; dt += 2) {
            uint32_t vb[4];
            ldmatrix_x4_trans(vb, vr + dt * 8);
            mma_bf16(o[dt], pa, vb[0], vb[1]);
            mma_bf16(o[dt + 1], pa, vb[2], vb[3]);
        }
    }
}

template <uint32_t D, bool DROP>
__global__ void __launch_bounds__(TC_THREADS)
attn_tc(bf16 *out, uint32_t ldo, float *lse, const bf16 *qkv, uint32_t ldqkv,
        const uint32_t *seq_off, uint32_t heads, uint32_t kv_heads, float scale_log2,
        cu_attn_dropout drop)
{
    constexpr uint32_t LD = D + 8, KD = D / 16, ND = D / 8;
    extern __shared__ __align__(16) unsigned char tc_smem[];
    bf16 *const kbuf = reinterpret_cast<bf16 *>(tc_smem); /* [2][TC_BK * LD]; Q first in [0] */
    bf16 *const vbuf = kbuf + 2 * TC_BK * LD;             /* [2][TC_BK * LD] */
    const uint32_t b = blockIdx.z, h = blockIdx.y;
    const uint32_t start = seq_off[b], len = seq_off[b + 1] - start;
    const uint32_t qt = gridDim.x - 1 - blockIdx.x; /* longest tiles first */
    const uint32_t q0 = qt * TC_BQ;
    if (q0 >= len)
        return;
    const uint32_t kvh = h / (heads / kv_heads);
    const bf16 *rows = qkv + (size_t)start * ldqkv;
    const bf16 *qbase = rows + (size_t)h * D;
    const bf16 *kbase = rows + (size_t)(heads + kvh) * D;
    const bf16 *vbase = rows + (size_t)(heads + kv_heads + kvh) * D;
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
    uint64_t drop_key = 0;
    if constexpr (DROP)
        drop_key = dev_drop_key(drop.seq_key[b], drop.layer, 1, h);

    /* Q into the second K buffer; the first key tile starts on its way meanwhile */
    load_tile_async<D>(kbuf, kbase, ldqkv, 0, len);
    load_tile_async<D>(vbuf, vbase, ldqkv, 0, len);
    cp_async_commit();
    load_tile<D>(kbuf + TC_BK * LD, qbase, ldqkv, q0, len);
    __syncthreads();
    uint32_t qa[KD][4];
    tc_q_fragments<D>(qa, kbuf + TC_BK * LD, LD, warp * 16 + g, warp * 16 + g + 8, TC_BQ, lane % 4);

    float o[ND][4], m0, m1, l0, l1;
    tc_walk_start(o, m0, m1, l0, l1);
    const uint32_t row0 = q0 + warp * 16 + g, row1 = row0 + 8; /* this thread's two query rows */

    for (uint32_t kt = 0; kt <= qt; kt++) {
        const uint32_t k0 = kt * TC_BK;
        const bf16 *ks = kbuf + (kt & 1) * TC_BK * LD, *vs = vbuf + (kt & 1) * TC_BK * LD;
        __syncthreads(); /* the Q fragments / tile kt − 1 are read: its buffer may be refilled */
        if (kt < qt) {
            load_tile_async<D>(kbuf + ((kt + 1) & 1) * TC_BK * LD, kbase, ldqkv, k0 + TC_BK, len);
            load_tile_async<D>(vbuf + ((kt + 1) & 1) * TC_BK * LD, vbase, ldqkv, k0 + TC_BK, len);
            cp_async_commit();
            cp_async_wait<1>(); /* tile kt has landed, kt + 1 may still be in flight */
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

        if (kt < qt)
            tc_key_tile<D, DROP, false>(qa, ks, vs, k0, row0, row1, len, lane, scale_log2, drop_key, drop, o, m0,
                                        m1, l0, l1);
        else
            tc_key_tile<D, DROP, true>(qa, ks, vs, k0, row0, row1, len, lane, scale_log2, drop_key, drop, o, m0, m1,
                                       l0, l1);
    }

    tc_finish<D>(out, ldo, lse, start, len, h, heads, row0, row1, lane, o, m0, m1, l0, l1);
}

template <uint32_t D, bool DROP>
cudaError_t launch_tc(void *out, uint32_t ldo, float *lse, const void *qkv, uint32_t ldqkv,
                      const uint32_t *seq_off, uint32_t nseq, uint32_t max_len, uint32_t heads,
                      uint32_t kv_heads, float scale, const cu_attn_dropout &drop, cudaStream_t s)
{
    const dim3 grid((max_len + TC_BQ - 1) / TC_BQ, heads, nseq);
    const size_t smem = 4 * (size_t)TC_BK * (D + 8) * sizeof(bf16); /* K, V double-buffered */
    static bool smem_raised; /* once, on the first (eager) call: never inside a graph capture */
    if (smem > 48 * 1024 && !smem_raised) {
        cudaError_t e = cudaFuncSetAttribute(attn_tc<D, DROP>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess)
            return e;
        smem_raised = true;
    }
    attn_tc<D, DROP><<<grid, TC_THREADS, smem, s>>>((bf16 *)out, ldo, lse, (const bf16 *)qkv, ldqkv, seq_off,
                                                    heads, kv_heads, scale * 1.4426950408889634f, drop);
    return cudaGetLastError();
}

/* 3 blocks a multiprocessor at d ≤ 64 (ptxas keeps each thread within 168 registers); d = 128
 * needs more registers than that, and its tiles take the shared memory of one block anyway */
template <uint32_t D> constexpr int group_min_blocks() { return D <= 64 ? 3 : 1; }

/* attn_tc for short sequences with grouped-query heads (inference): one block per (query tile,
 * kv head, sequence) walks the group's query heads one after the other over the same key/value
 * tiles, which it loads into shared memory once — every tile up to the query tile, so
 * max_len ≤ TC_GROUP_MAX_LEN — instead of each query head's block loading them again. Each warp
 * reads its query rows straight from qkv into the A fragments (no query tile in shared memory:
 * at d = 64 the 2 · 4 key/value tiles are 72 KB, so 3 blocks fit a multiprocessor where 2 did
 * with the query tiles beside them), the next head's while the current one is computed. No
 * log-sum-exp, no dropout.
 * ROPE: q and k in qkv are not rotated yet (positions = row index in the sequence, the classify
 * path's): the block rotates its key tiles once in shared memory, and each warp its query
 * fragments in registers (a thread holds dims j and j + D/2 of its rows in the same place of
 * fragments kk and kk + D/32), which costs less than cu_rope's pass over all of q and k. */
template <uint32_t D, bool ROPE>
__global__ void __launch_bounds__(TC_THREADS, group_min_blocks<D>())
attn_tc_group(bf16 *out, uint32_t ldo, const bf16 *qkv, uint32_t ldqkv, const uint32_t *seq_off, uint32_t heads,
              uint32_t kv_heads, float scale_log2, const float *cos_t, const float *sin_t)
{
    constexpr uint32_t KD = D / 16, ND = D / 8, TILE = TC_BK * (D + 8);
    extern __shared__ __align__(16) unsigned char group_smem[];
    bf16 *const kbuf = reinterpret_cast<bf16 *>(group_smem); /* [gridDim.x][TILE] */
    bf16 *const vbuf = kbuf + gridDim.x * TILE;               /* [gridDim.x][TILE] */
    const group_block gb = group_block_here<D>(qkv, ldqkv, seq_off, heads, kv_heads);
    if (gb.q0 >= gb.len)
        return;
    const uint32_t kvh = gb.kvh, group = gb.group, start = gb.start, len = gb.len, qt = gb.qt, lane = gb.lane;
    const uint32_t t = gb.t, row0 = gb.row0, row1 = gb.row1;
    const bf16 *rows = gb.rows, *kbase = gb.kbase, *vbase = gb.vbase;
    const cu_attn_dropout none = {};

    /* every key/value tile the query tile sees; the group's first query head meanwhile */
    for (uint32_t kt = 0; kt <= qt; kt++) {
        load_tile_async<D>(kbuf + kt * TILE, kbase, ldqkv, kt * TC_BK, len);
        load_tile_async<D>(vbuf + kt * TILE, vbase, ldqkv, kt * TC_BK, len);
    }
    cp_async_commit();
    uint32_t qa[KD][4];
    tc_q_fragments<D>(qa, rows + (size_t)kvh * group * D, ldqkv, row0, row1, len, t);
    cp_async_wait<0>();
    __syncthreads();
    if constexpr (ROPE) {
        for (uint32_t kt = 0; kt <= qt; kt++)
            rope_tile<D, padded_rows<D>>(kbuf + kt * TILE, kt * TC_BK, len, cos_t, sin_t);
        __syncthreads();
    }
    for (uint32_t hi = 0; hi < group; hi++) {
        const uint32_t h = kvh * group + hi;
        /* the next head's rows are on their way while this one is computed (the last head
         * fetches its own again: one branch fewer, no register left undefined) */
        uint32_t next[KD][4];
        tc_q_fragments<D>(next, rows + (size_t)(hi + 1 < group ? h + 1 : h) * D, ldqkv, row0, row1, len, t);
        if constexpr (ROPE)
            rope_fragments<D>(qa, row0, row1, len, t, cos_t, sin_t);
        float o[ND][4], m0, m1, l0, l1;
        tc_walk_start(o, m0, m1, l0, l1);
        /* (the diagonal tile inside the loop: after it, ptxas spills the d = 32 kernel's registers) */
        for (uint32_t kt = 0; kt <= qt; kt++) {
            if (kt < qt)
                tc_key_tile<D, false, false>(qa, kbuf + kt * TILE, vbuf + kt * TILE, kt * TC_BK, row0, row1, len,
                                             lane, scale_log2, 0, none, o, m0, m1, l0, l1);
            else
                tc_key_tile<D, false, true>(qa, kbuf + kt * TILE, vbuf + kt * TILE, kt * TC_BK, row0, row1, len,
                                            lane, scale_log2, 0, none, o, m0, m1, l0, l1);
        }
        tc_finish<D>(out, ldo, NULL, start, len, h, heads, row0, row1, lane, o, m0, m1, l0, l1);
        tc_next_head(qa, next);
    }
}

template <uint32_t D, bool ROPE>
cudaError_t launch_tc_group(void *out, uint32_t ldo, const void *qkv, uint32_t ldqkv, const uint32_t *seq_off,
                            uint32_t nseq, uint32_t max_len, uint32_t heads, uint32_t kv_heads, float scale,
                            const float *cos_t, const float *sin_t, cudaStream_t s)
{
    const uint32_t tiles = group_tiles(max_len);
    const dim3 grid(tiles, kv_heads, nseq);
    const size_t tile_bytes = (size_t)TC_BK * (D + 8) * sizeof(bf16);
    const size_t smem = 2 * (size_t)tiles * tile_bytes;
    static bool smem_raised; /* once, to the most any launch takes, on the first (eager) call */
    if (!smem_raised) {
        cudaError_t e = cudaFuncSetAttribute(attn_tc_group<D, ROPE>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             (int)(2 * TC_GROUP_TILES * tile_bytes));
        if (e != cudaSuccess)
            return e;
        smem_raised = true;
    }
    attn_tc_group<D, ROPE><<<grid, TC_THREADS, smem, s>>>((bf16 *)out, ldo, (const bf16 *)qkv, ldqkv, seq_off,
                                                          heads, kv_heads, scale * 1.4426950408889634f, cos_t, sin_t);
    return cudaGetLastError();
}

/* ---------------------------------------------------------------------------------------------
 * Backward, SIMT (fp32 arithmetic, any head_dim ≤ 128, both element types). With P recomputed as
 * exp(scale·q·kᵀ − lse) and D_i = Σ_e dout_ie · out_ie (= Σ_j P_ij · dP_ij):
 *   dP = dout·vᵀ,  dS = P ⊙ (dP − D),  dQ = scale·dS·K,  dK = scale·dSᵀ·Q,  dV = Pᵀ·dout.
 * With dropout (mask M, the forward's out = (P ⊙ M)·V): dP is M ⊙ dout·vᵀ and dV = (P ⊙ M)ᵀ·dout;
 * D = rowsum(dout ⊙ out) = Σ_j P_ij · (M ⊙ dout·vᵀ)_ij still, so it needs no change.
 * Tiles: 16 queries × 32 keys, 4 warps. The score phase is the forward's: lane j scores key
 * k0 + j against the warp's 4 queries (one pass over e for all four, so each key value loaded
 * from shared memory serves 4 products). */

constexpr uint32_t BWD_BQ = 16, BWD_BK = 32, BWD_THREADS = 128, BWD_QPW = 4;
constexpr uint32_t BWD_KPW = BWD_BK / (BWD_THREADS / 32); /* keys per warp when summing dK, dV */
constexpr uint32_t BWD_DR = SIMT_DMAX / 32;               /* head dims per lane: e = lane + 32·r */

inline size_t bwd_dq_smem_bytes(uint32_t d)
{
    return (2 * (size_t)BWD_BQ * d + 2 * (size_t)BWD_BK * (d | 1u)) * sizeof(float);
}

inline size_t bwd_dkv_smem_bytes(uint32_t d)
{
    return (2 * (size_t)BWD_BK * (d | 1u) + 2 * (size_t)BWD_BQ * d + 2 * (size_t)BWD_BQ * BWD_BK +
            2 * (size_t)BWD_BQ) * sizeof(float);
}

/* rows row0 .. row0 + nrows - 1 of one head (those ≥ limit as zeros) into fp32 rows of stride ld */
template <typename T>
__device__ __forceinline__ void stage_rows(float *dst, uint32_t ld, const T *src, uint32_t ldsrc,
                                           uint32_t row0, uint32_t nrows, uint32_t limit, uint32_t d)
{
    for (uint32_t i = threadIdx.x; i < nrows * d; i += blockDim.x) {
        const uint32_t r = i / d, e = i % d;
        dst[r * ld + e] = row0 + r < limit ? to_f(src[(size_t)(row0 + r) * ldsrc + e]) : 0.0f;
    }
}

/* For the warp's 4 query rows qrow[0..3] (rows of stride ldq in qs and dos) and key row `lane` of
 * ks and vs (stride ldk): s = q·k and dp = dout·v. */
__device__ __forceinline__ void bwd_scores(float s[BWD_QPW], float dp[BWD_QPW], const float *qs,
                                           const float *dos, uint32_t ldq, uint32_t qrow0,
                                           const float *ks, const float *vs, uint32_t ldk,
                                           uint32_t lane, uint32_t d)
{
#pragma unroll
    for (uint32_t qi = 0; qi < BWD_QPW; qi++)
        s[qi] = dp[qi] = 0.0f;
    const float *kr = ks + lane * ldk, *vr = vs + lane * ldk;
    for (uint32_t e = 0; e < d; e++) {
        const float kv = kr[e], vv = vr[e];
#pragma unroll
        for (uint32_t qi = 0; qi < BWD_QPW; qi++) {
            s[qi] += qs[(qrow0 + qi) * ldq + e] * kv;
            dp[qi] += dos[(qrow0 + qi) * ldq + e] * vv;
        }
    }
}

/* dQ of one query tile of one head, walking key tiles 0 .. the diagonal. Also computes and stores
 * D (delta [rows, heads]) for its rows: attn_bwd_dkv, launched after, reads it. */
template <typename T, bool DROP>
__global__ void __launch_bounds__(BWD_THREADS)
attn_bwd_dq(T *dqkv, uint32_t lddqkv, const T *dout, uint32_t lddout, const T *out, uint32_t ldout,
            const T *qkv, uint32_t ldqkv, const float *lse, float *delta, const uint32_t *seq_off,
            uint32_t heads, uint32_t kv_heads, uint32_t d, float scale, cu_attn_dropout drop)
{
    extern __shared__ float smem[];
    const uint32_t b = blockIdx.z, h = blockIdx.y;
    const uint32_t start = seq_off[b], len = seq_off[b + 1] - start;
    const uint32_t q0 = (gridDim.x - 1 - blockIdx.x) * BWD_BQ; /* longest tiles first */
    if (q0 >= len)
        return;
    const uint32_t kvh = h / (heads / kv_heads);
    const uint32_t stride = d | 1u; /* key rows: lane j reads row j, 32 different banks */
    float *qs = smem;                /* [BQ][d], read as broadcasts */
    float *dos = qs + BWD_BQ * d;    /* [BQ][d] */
    float *ks = dos + BWD_BQ * d;    /* [BK][stride] */
    float *vs = ks + BWD_BK * stride;
    const T *rows = qkv + (size_t)start * ldqkv;
    const T *kbase = rows + (size_t)(heads + kvh) * d, *vbase = rows + (size_t)(heads + kv_heads + kvh) * d;
    const uint32_t q_last = (q0 + BWD_BQ < len ? q0 + BWD_BQ : len) - 1;
    uint64_t drop_key = 0;
    if constexpr (DROP)
        drop_key = dev_drop_key(drop.seq_key[b], drop.layer, 1, h);
    stage_rows(qs, d, rows + (size_t)h * d, ldqkv, q0, BWD_BQ, len, d);
    stage_rows(dos, d, dout + (size_t)start * lddout + (size_t)h * d, lddout, q0, BWD_BQ, len, d);
    __syncthreads();

    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32, qrow0 = warp * BWD_QPW;
    float row_lse[BWD_QPW], row_delta[BWD_QPW], acc[BWD_QPW][BWD_DR];
#pragma unroll
    for (uint32_t qi = 0; qi < BWD_QPW; qi++) {
        const uint32_t i = q0 + qrow0 + qi;
        const T *o = out + (size_t)(start + i) * ldout + (size_t)h * d;
        float part = 0.0f;
#pragma unroll
        for (uint32_t r = 0; r < BWD_DR; r++) {
            const uint32_t e = lane + 32 * r;
            if (i < len && e < d)
                part += dos[(qrow0 + qi) * d + e] * to_f(o[e]);
        }
        row_delta[qi] = warp_sum(part); /* every lane holds the sum */
        row_lse[qi] = i < len ? lse[(size_t)(start + i) * heads + h] : 0.0f;
        if (i < len && lane == 0)
            delta[(size_t)(start + i) * heads + h] = row_delta[qi];
#pragma unroll
        for (uint32_t r = 0; r < BWD_DR; r++)
            acc[qi][r] = 0.0f;
    }

    for (uint32_t k0 = 0; k0 <= q_last; k0 += BWD_BK) {
        __syncthreads(); /* the previous key tile is consumed */
        stage_rows(ks, stride, kbase, ldqkv, k0, BWD_BK, q_last + 1, d);
        stage_rows(vs, stride, vbase, ldqkv, k0, BWD_BK, q_last + 1, d);
        __syncthreads();
        float s[BWD_QPW], dp[BWD_QPW];
        bwd_scores(s, dp, qs, dos, d, qrow0, ks, vs, stride, lane, d);
        const uint32_t j = k0 + lane;
#pragma unroll
        for (uint32_t qi = 0; qi < BWD_QPW; qi++) {
            const uint32_t i = q0 + qrow0 + qi;
            const bool seen = i < len && j <= i;
            float dpm = dp[qi];
            if constexpr (DROP)
                if (seen)
                    dpm *= dev_dropout_factor(drop_key, drop.threshold, drop.scale, (uint64_t)i * len + j);
            const float ds = seen ? expf(s[qi] * scale - row_lse[qi]) * (dpm - row_delta[qi]) : 0.0f;
            /* keys this query sees in the tile, the same for the whole warp (a count rather than
             * a `continue` keeps ptxas from spilling) */
            const uint32_t nk = i >= len || k0 > i ? 0 : i - k0 + 1 < BWD_BK ? i - k0 + 1 : BWD_BK;
            for (uint32_t jj = 0; jj < nk; jj++) {
                const float dsj = __shfl_sync(0xffffffffu, ds, jj);
                const float *kr = ks + jj * stride;
#pragma unroll
                for (uint32_t r = 0; r < BWD_DR; r++) {
                    const uint32_t e = lane + 32 * r;
                    if (e < d)
                        acc[qi][r] += dsj * kr[e];
                }
            }
        }
    }
#pragma unroll
    for (uint32_t qi = 0; qi < BWD_QPW; qi++) {
        const uint32_t i = q0 + qrow0 + qi;
        if (i >= len)
            continue;
        store_lane_dims(dqkv + (size_t)(start + i) * lddqkv + (size_t)h * d, acc[qi], scale, lane, d);
    }
}

/* dK and dV of one key tile of one kv head: walks every query tile from the diagonal to the end
 * of the sequence for each query head of the group, so the group's sum stays in registers. */
template <typename T, bool DROP>
__global__ void __launch_bounds__(BWD_THREADS)
attn_bwd_dkv(T *dqkv, uint32_t lddqkv, const T *dout, uint32_t lddout, const T *qkv,
             uint32_t ldqkv, const float *lse, const float *delta, const uint32_t *seq_off,
             uint32_t heads, uint32_t kv_heads, uint32_t d, float scale, cu_attn_dropout drop)
{
    extern __shared__ float smem[];
    const uint32_t b = blockIdx.z, kvh = blockIdx.y, k0 = blockIdx.x * BWD_BK; /* longest first */
    const uint32_t start = seq_off[b], len = seq_off[b + 1] - start;
    if (k0 >= len)
        return;
    const uint32_t group = heads / kv_heads, stride = d | 1u;
    float *ks = smem;                    /* [BK][stride] */
    float *vs = ks + BWD_BK * stride;    /* [BK][stride] */
    float *qs = vs + BWD_BK * stride;    /* [BQ][d] */
    float *dos = qs + BWD_BQ * d;        /* [BQ][d] */
    float *ps = dos + BWD_BQ * d;        /* [BQ][BK]: P of the tile */
    float *dss = ps + BWD_BQ * BWD_BK;   /* [BQ][BK]: dS of the tile */
    float *lse_s = dss + BWD_BQ * BWD_BK; /* [BQ] */
    float *delta_s = lse_s + BWD_BQ;      /* [BQ] */
    const T *rows = qkv + (size_t)start * ldqkv;
    stage_rows(ks, stride, rows + (size_t)(heads + kvh) * d, ldqkv, k0, BWD_BK, len, d);
    stage_rows(vs, stride, rows + (size_t)(heads + kv_heads + kvh) * d, ldqkv, k0, BWD_BK, len, d);

    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32, qrow0 = warp * BWD_QPW;
    const uint32_t krow0 = warp * BWD_KPW; /* this warp's keys when summing */
    float dk[BWD_KPW][BWD_DR], dv[BWD_KPW][BWD_DR];
#pragma unroll
    for (uint32_t kk = 0; kk < BWD_KPW; kk++)
#pragma unroll
        for (uint32_t r = 0; r < BWD_DR; r++)
            dk[kk][r] = dv[kk][r] = 0.0f;

    for (uint32_t h = kvh * group; h < (kvh + 1) * group; h++) {
        uint64_t drop_key = 0;
        if constexpr (DROP)
            drop_key = dev_drop_key(drop.seq_key[b], drop.layer, 1, h);
        for (uint32_t q0 = k0; q0 < len; q0 += BWD_BQ) {
            __syncthreads(); /* the previous query tile is consumed (and the key tile is staged) */
            stage_rows(qs, d, rows + (size_t)h * d, ldqkv, q0, BWD_BQ, len, d);
            stage_rows(dos, d, dout + (size_t)start * lddout + (size_t)h * d, lddout, q0, BWD_BQ, len, d);
            if (threadIdx.x < BWD_BQ) {
                const uint32_t i = q0 + threadIdx.x;
                const size_t at = (size_t)(start + i) * heads + h;
                lse_s[threadIdx.x] = i < len ? lse[at] : 0.0f;
                delta_s[threadIdx.x] = i < len ? delta[at] : 0.0f;
            }
            __syncthreads();
            float s[BWD_QPW], dp[BWD_QPW];
            bwd_scores(s, dp, qs, dos, d, qrow0, ks, vs, stride, lane, d);
            const uint32_t j = k0 + lane;
#pragma unroll
            for (uint32_t qi = 0; qi < BWD_QPW; qi++) {
                const uint32_t r = qrow0 + qi, i = q0 + r;
                const bool seen = i < len && j <= i; /* j ≤ i < len: a real key */
                const float p = seen ? expf(s[qi] * scale - lse_s[r]) : 0.0f;
                float f = 1.0f; /* the mask's factor: dV takes M ⊙ P, dS sees M ⊙ dP */
                if constexpr (DROP)
                    if (seen)
                        f = dev_dropout_factor(drop_key, drop.threshold, drop.scale, (uint64_t)i * len + j);
                ps[r * BWD_BK + lane] = DROP ? p * f : p;
                dss[r * BWD_BK + lane] = seen ? p * ((DROP ? dp[qi] * f : dp[qi]) - delta_s[r]) : 0.0f;
            }
            __syncthreads();
            /* lanes own head dims, the warp its 8 keys; sum over the tile's real queries */
            const uint32_t nq = len - q0 < BWD_BQ ? len - q0 : BWD_BQ;
            for (uint32_t r = 0; r < nq; r++) {
                float qv[BWD_DR], dov[BWD_DR];
#pragma unroll
                for (uint32_t c = 0; c < BWD_DR; c++) {
                    const uint32_t e = lane + 32 * c;
                    qv[c] = e < d ? qs[r * d + e] : 0.0f;
                    dov[c] = e < d ? dos[r * d + e] : 0.0f;
                }
#pragma unroll
                for (uint32_t kk = 0; kk < BWD_KPW; kk++) {
                    const float p = ps[r * BWD_BK + krow0 + kk], ds = dss[r * BWD_BK + krow0 + kk];
#pragma unroll
                    for (uint32_t c = 0; c < BWD_DR; c++) {
                        dv[kk][c] += p * dov[c];
                        dk[kk][c] += ds * qv[c];
                    }
                }
            }
        }
    }
#pragma unroll
    for (uint32_t kk = 0; kk < BWD_KPW; kk++) {
        const uint32_t j = k0 + krow0 + kk;
        if (j >= len)
            continue;
        T *row = dqkv + (size_t)(start + j) * lddqkv;
        store_lane_dims(row + (size_t)(heads + kvh) * d, dk[kk], scale, lane, d);
        store_lane_dims(row + (size_t)(heads + kv_heads + kvh) * d, dv[kk], 1.0f, lane, d); /* × 1: exact */
    }
}

/* Dynamic shared memory above the 48 KB default needs an opt-in per kernel; setting it on every
 * launch keeps the launcher stateless (it is not a stream operation, so graph capture is fine). */
template <typename K>
cudaError_t allow_smem(K *kernel, size_t bytes)
{
    if (bytes <= 48 * 1024)
        return cudaSuccess;
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
}

template <typename T, bool DROP>
cudaError_t launch_backward(void *dqkv, uint32_t lddqkv, const void *dout, uint32_t lddout,
                            const void *out, uint32_t ldout, const void *qkv, uint32_t ldqkv,
                            const float *lse, float *delta, const uint32_t *seq_off, uint32_t nseq,
                            uint32_t max_len, uint32_t heads, uint32_t kv_heads, uint32_t d,
                            float scale, const cu_attn_dropout &drop, cudaStream_t s)
{
    const size_t dq_smem = bwd_dq_smem_bytes(d), dkv_smem = bwd_dkv_smem_bytes(d);
    cudaError_t err = allow_smem(attn_bwd_dq<T, DROP>, dq_smem);
    if (err == cudaSuccess)
        err = allow_smem(attn_bwd_dkv<T, DROP>, dkv_smem);
    if (err != cudaSuccess)
        return err;
    const dim3 dq_grid((max_len + BWD_BQ - 1) / BWD_BQ, heads, nseq);
    attn_bwd_dq<T, DROP><<<dq_grid, BWD_THREADS, dq_smem, s>>>(
        (T *)dqkv, lddqkv, (const T *)dout, lddout, (const T *)out, ldout, (const T *)qkv, ldqkv,
        lse, delta, seq_off, heads, kv_heads, d, scale, drop);
    if ((err = cudaGetLastError()) != cudaSuccess)
        return err;
    const dim3 dkv_grid((max_len + BWD_BK - 1) / BWD_BK, kv_heads, nseq);
    attn_bwd_dkv<T, DROP><<<dkv_grid, BWD_THREADS, dkv_smem, s>>>(
        (T *)dqkv, lddqkv, (const T *)dout, lddout, (const T *)qkv, ldqkv, lse, delta, seq_off,
        heads, kv_heads, d, scale, drop);
    return cudaGetLastError();
}

/* ---------------------------------------------------------------------------------------------
 * Backward, tensor cores (bf16, d ∈ {32, 64, 128}): the SIMT backward's two kernels and
 * decomposition (so the same determinism), with every product on mma.sync m16n8k16 and the
 * fragment layouts of attn_tc's comment. 64 × 64 tiles, 4 warps × 16 rows; softmax arithmetic
 * and accumulators fp32. As FlashAttention-2 does, P (for dV) and dS (for dK, dQ) are rounded to
 * bf16 to become A operands; s = q·k and dP = dout·v are fp32 sums of exact bf16 products, as in
 * the SIMT kernels.
 *
 * A operands from shared memory by ldmatrix (not trans): lane l points at row l % 8 + 8·((l / 8)
 * & 1), column 8·(l / 16) of the 16×16 block, so blocks 0..3 are rows {0-7, 8-15} × columns
 * {0-7, 8-15} in the order of A's reg0..reg3. That is the address attn_tc's P·V step gives
 * ldmatrix .trans for V, so one address serves both: plain for A (rows as M), trans for B (rows
 * as K). The C fragments of two 8-column tiles are the A fragment of their 16 columns, as in
 * attn_tc (P and dS never leave registers). */

constexpr float LOG2E = 1.4426950408889634f;

/* A (or trans B) row address of this lane in a [rows][LD] bf16 tile, for the 16×16 block whose
 * top-left element is (row0, col0) */
template <uint32_t LD>
__device__ __forceinline__ const bf16 *frag_row(const bf16 *tile, uint32_t row0, uint32_t col0,
                                                uint32_t lane)
{
    return tile + (row0 + ((lane / 8) & 1) * 8 + lane % 8) * LD + col0 + (lane / 16) * 8;
}

/* c (16×16 of keys or queries × D) += a (16×16, A fragment) · tile rows r0..r0+15 (K of the
 * product) as B: ldmatrix .trans hands the B fragments of two 8-column tiles per instruction */
template <uint32_t D>
__device__ __forceinline__ void mma_a_by_rows(float c[][4], const uint32_t a[4], const bf16 *tile,
                                              uint32_t r0, uint32_t lane)
{
    const bf16 *row = frag_row<D + 8>(tile, r0, 0, lane);
#pragma unroll
    for (uint32_t dt = 0; dt < D / 8; dt += 2) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, row + dt * 8);
        mma_bf16(c[dt], a, b[0], b[1]);
        mma_bf16(c[dt + 1], a, b[2], b[3]);
    }
}

/* c[0..1] (16 × 16 columns) += a[KD] (16 × D, A fragments) · (tile rows r0..r0+15)ᵀ: the rows are
 * the N columns of the product, as K's in attn_tc's S = Q·Kᵀ */
template <uint32_t D>
__device__ __forceinline__ void mma_a_by_rows_t(float c[2][4], const uint32_t a[][4], const bf16 *tile,
                                                uint32_t r0, uint32_t lane)
{
    constexpr uint32_t LD = D + 8;
#pragma unroll
    for (uint32_t nt = 0; nt < 2; nt++) {
        /* blocks: dims kk·16 + {0, 8, 16, 24} of rows r0 + nt·8.. → b0, b1 of k-steps kk, kk + 1 */
        const bf16 *row = tile + (r0 + nt * 8 + lane % 8) * LD + (lane / 8) * 8;
#pragma unroll
        for (uint32_t kk = 0; kk < D / 16; kk += 2) {
            uint32_t b[4];
            ldmatrix_x4(b, row + kk * 16);
            mma_bf16(c[nt], a[kk], b[0], b[1]);
            mma_bf16(c[nt], a[kk + 1], b[2], b[3]);
        }
    }
}

/* The A fragments of a 16 × D block of a tile (rows r0..r0+15) */
template <uint32_t D>
__device__ __forceinline__ void load_a_frags(uint32_t a[][4], const bf16 *tile, uint32_t r0, uint32_t lane)
{
#pragma unroll
    for (uint32_t kk = 0; kk < D / 16; kk++)
        ldmatrix_x4(a[kk], frag_row<D + 8>(tile, r0, kk * 16, lane));
}

/* dQ of one 64-query tile of one head (and D = rowsum(dout ⊙ out) of its rows, which
 * attn_bwd_tc_dkv reads), walking key tiles 0 .. the diagonal with attn_tc's cp.async double
 * buffer. Warp w owns queries 16w..16w+15 of the tile; Q and dout fragments stay in registers.
 * Per 16-key chunk: s, dP (2 × 8 keys), then dS = P ⊙ (M ⊙ dP − D) → bf16 → dQ += dS · K. */
template <uint32_t D, bool DROP>
__global__ void __launch_bounds__(TC_THREADS)
attn_bwd_tc_dq(bf16 *dqkv, uint32_t lddqkv, const bf16 *dout, uint32_t lddout, const bf16 *out,
               uint32_t ldout, const bf16 *qkv, uint32_t ldqkv, const float *lse, float *delta,
               const uint32_t *seq_off, uint32_t heads, uint32_t kv_heads, float scale,
               cu_attn_dropout drop)
{
    constexpr uint32_t LD = D + 8, KD = D / 16, ND = D / 8, TILE = TC_BK * LD;
    extern __shared__ __align__(16) unsigned char tc_smem[];
    bf16 *const kbuf = reinterpret_cast<bf16 *>(tc_smem); /* [2][TILE]; Q first in [1] */
    bf16 *const vbuf = kbuf + 2 * TILE;                   /* [2][TILE]; dout first in [1] */
    const uint32_t b = blockIdx.z, h = blockIdx.y;
    const uint32_t start = seq_off[b], len = seq_off[b + 1] - start;
    const uint32_t qt = gridDim.x - 1 - blockIdx.x; /* longest tiles first */
    const uint32_t q0 = qt * TC_BQ;
    if (q0 >= len)
        return;
    const uint32_t kvh = h / (heads / kv_heads);
    const bf16 *rows = qkv + (size_t)start * ldqkv;
    const bf16 *kbase = rows + (size_t)(heads + kvh) * D;
    const bf16 *vbase = rows + (size_t)(heads + kv_heads + kvh) * D;
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const float scale_log2 = scale * LOG2E;
    uint64_t drop_key = 0;
    if constexpr (DROP)
        drop_key = dev_drop_key(drop.seq_key[b], drop.layer, 1, h);

    load_tile_async<D>(kbuf, kbase, ldqkv, 0, len);
    load_tile_async<D>(vbuf, vbase, ldqkv, 0, len);
    cp_async_commit();
    const bf16 *qs = kbuf + TILE, *dos = vbuf + TILE;
    load_tile<D>(kbuf + TILE, rows + (size_t)h * D, ldqkv, q0, len);
    load_tile<D>(vbuf + TILE, dout + (size_t)start * lddout + (size_t)h * D, lddout, q0, len);
    __syncthreads();
    uint32_t qa[KD][4], da[KD][4];
    load_a_frags<D>(qa, qs, warp * 16, lane);
    load_a_frags<D>(da, dos, warp * 16, lane);

    /* this thread's query rows (tile rows r0, r0 + 8); D_i over a quarter of the dims per thread
     * of the quad, then summed over the quad */
    const uint32_t r0 = warp * 16 + g, row0 = q0 + r0, row1 = row0 + 8;
    float dl0 = 0.0f, dl1 = 0.0f, lse0 = 0.0f, lse1 = 0.0f;
    {
        constexpr uint32_t PART = D / 4; /* 8, 16 or 32 elements: whole 16-byte vectors */
#pragma unroll
        for (uint32_t half = 0; half < 2; half++) {
            const uint32_t row = half ? row1 : row0;
            if (row >= len)
                continue;
            const bf16 *o = out + (size_t)(start + row) * ldout + (size_t)h * D + t * PART;
            const bf16 *dr = dos + (r0 + half * 8) * LD + t * PART;
            float part = 0.0f;
#pragma unroll
            for (uint32_t v = 0; v < PART / 8; v++) {
                const uint4 ov = *reinterpret_cast<const uint4 *>(o + v * 8);
                const uint4 dv = *reinterpret_cast<const uint4 *>(dr + v * 8);
                const bf16 *oe = reinterpret_cast<const bf16 *>(&ov);
                const bf16 *de = reinterpret_cast<const bf16 *>(&dv);
#pragma unroll
                for (uint32_t e = 0; e < 8; e++)
                    part += to_f(oe[e]) * to_f(de[e]);
            }
            const float l = lse[(size_t)(start + row) * heads + h] * LOG2E;
            if (half)
                dl1 = part, lse1 = l;
            else
                dl0 = part, lse0 = l;
        }
    }
    dl0 += __shfl_xor_sync(0xffffffffu, dl0, 1);
    dl0 += __shfl_xor_sync(0xffffffffu, dl0, 2);
    dl1 += __shfl_xor_sync(0xffffffffu, dl1, 1);
    dl1 += __shfl_xor_sync(0xffffffffu, dl1, 2);
    if (t == 0) {
        if (row0 < len)
            delta[(size_t)(start + row0) * heads + h] = dl0;
        if (row1 < len)
            delta[(size_t)(start + row1) * heads + h] = dl1;
    }

    float acc[ND][4];
#pragma unroll
    for (uint32_t dt = 0; dt < ND; dt++)
        acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.0f;

    for (uint32_t kt = 0; kt <= qt; kt++) {
        const uint32_t k0 = kt * TC_BK;
        const bf16 *ks = kbuf + (kt & 1) * TILE, *vs = vbuf + (kt & 1) * TILE;
        __syncthreads(); /* Q, dout (buffers [1]) / tile kt − 1 are read: the buffer may be refilled */
        if (kt < qt) {
            load_tile_async<D>(kbuf + ((kt + 1) & 1) * TILE, kbase, ldqkv, k0 + TC_BK, len);
            load_tile_async<D>(vbuf + ((kt + 1) & 1) * TILE, vbase, ldqkv, k0 + TC_BK, len);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const bool diag = kt == qt;
#pragma unroll
        for (uint32_t kc = 0; kc < TC_BK / 16; kc++) {
            if (diag && kc > warp) /* keys all after the warp's queries (uniform in the warp) */
                continue;
            float s[2][4] = {}, dp[2][4] = {};
            mma_a_by_rows_t<D>(s, qa, ks, kc * 16, lane);
            mma_a_by_rows_t<D>(dp, da, vs, kc * 16, lane);
            /* element e of tile nt: key k0 + kc·16 + nt·8 + 2t + (e & 1), query row0 (e < 2) or row1 */
            float ds[2][4];
#pragma unroll
            for (uint32_t nt = 0; nt < 2; nt++) {
#pragma unroll
                for (uint32_t e = 0; e < 4; e++) {
                    const uint32_t key = k0 + kc * 16 + nt * 8 + 2 * t + (e & 1);
                    const uint32_t qrow = e < 2 ? row0 : row1;
                    float v = 0.0f; /* a select, not a product: 0 · (dP − D) of a padding row */
                    if (qrow < len && key <= qrow) {
                        const float p = exp2_ftz(s[nt][e] * scale_log2 - (e < 2 ? lse0 : lse1));
                        float dpm = dp[nt][e];
                        if constexpr (DROP)
                            dpm *= dev_dropout_factor(drop_key, drop.threshold, drop.scale,
                                                      (uint64_t)qrow * len + key);
                        v = p * (dpm - (e < 2 ? dl0 : dl1));
                    }
                    ds[nt][e] = v;
                }
            }
            const uint32_t dsa[4] = {pack_bf16(ds[0][0], ds[0][1]), pack_bf16(ds[0][2], ds[0][3]),
                                     pack_bf16(ds[1][0], ds[1][1]), pack_bf16(ds[1][2], ds[1][3])};
            mma_a_by_rows<D>(acc, dsa, ks, kc * 16, lane);
        }
    }
    store_acc_rows<ND>(dqkv + (size_t)(start + row0) * lddqkv + (size_t)h * D + 2 * t, lddqkv, acc, row0 < len,
                       row1 < len, scale, scale);
}

/* dK and dV of one 64-key tile of one kv head: walks, for each query head of the group in
 * order, the query tiles from the diagonal to the end of the sequence, so the group's sum stays
 * in registers (one thread sums each element, in a fixed order). Warp w owns keys 16w..16w+15 of
 * the tile. Q, dout, lse and D of the next (head, query tile) come by cp.async while the current
 * one is computed. Per 16-query chunk, transposed: sᵀ = K·Qᵀ and dPᵀ = V·doutᵀ (2 × 8 queries),
 * then dV += (M ⊙ P)ᵀ·dout and dK += dSᵀ·Q, M ⊙ P and dS rounded to bf16. K and V fragments
 * stay in registers for d ≤ 64; at d = 128 they would take 64 of the registers that dK and dV
 * (128) need, so they are read from the tile (which stays in shared memory) at each use. */
template <uint32_t D, bool DROP>
__global__ void __launch_bounds__(TC_THREADS)
attn_bwd_tc_dkv(bf16 *dqkv, uint32_t lddqkv, const bf16 *dout, uint32_t lddout, const bf16 *qkv,
                uint32_t ldqkv, const float *lse, const float *delta, const uint32_t *seq_off,
                uint32_t heads, uint32_t kv_heads, float scale, cu_attn_dropout drop)
{
    constexpr uint32_t LD = D + 8, KD = D / 16, ND = D / 8, TILE = TC_BK * LD;
    constexpr bool KV_REGS = D <= 64;
    extern __shared__ __align__(16) unsigned char tc_smem[];
    bf16 *const ks = reinterpret_cast<bf16 *>(tc_smem);
    bf16 *const vs = ks + TILE;
    bf16 *const qbuf = vs + TILE;                                       /* [2][TILE] */
    bf16 *const dobuf = qbuf + 2 * TILE;                                /* [2][TILE] */
    float *const lse_s = reinterpret_cast<float *>(dobuf + 2 * TILE);   /* [2][TC_BQ] */
    float *const delta_s = lse_s + 2 * TC_BQ;                           /* [2][TC_BQ] */
    const uint32_t b = blockIdx.z, kvh = blockIdx.y, kt = blockIdx.x, k0 = kt * TC_BK; /* longest first */
    const uint32_t start = seq_off[b], len = seq_off[b + 1] - start;
    if (k0 >= len)
        return;
    const uint32_t group = heads / kv_heads;
    const uint32_t nqt = (len + TC_BQ - 1) / TC_BQ - kt; /* query tiles from the diagonal on */
    const uint32_t iters = group * nqt;                  /* (head, query tile), head-major */
    const bf16 *rows = qkv + (size_t)start * ldqkv, *drows = dout + (size_t)start * lddout;
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const float scale_log2 = scale * LOG2E;

    /* iteration `it`'s Q, dout, lse, D into buffer `buf`: rows past the sequence as zeros (their
     * lse, D are never used: every element of such a query is masked) */
    auto stage = [&](uint32_t it, uint32_t buf) {
        const uint32_t h = kvh * group + it / nqt, q0 = (kt + it % nqt) * TC_BQ;
        load_tile_async<D>(qbuf + buf * TILE, rows + (size_t)h * D, ldqkv, q0, len);
        load_tile_async<D>(dobuf + buf * TILE, drows + (size_t)h * D, lddout, q0, len);
        const uint32_t r = threadIdx.x % TC_BQ, i = q0 + r;
        float *dst = (threadIdx.x < TC_BQ ? lse_s : delta_s) + buf * TC_BQ + r;
        if (i < len)
            cp_async4(dst, (threadIdx.x < TC_BQ ? lse : delta) + (size_t)(start + i) * heads + h);
        else
            *dst = 0.0f;
    };
    static_assert(TC_THREADS == 2 * TC_BQ, "one thread per lse and per D of a query tile");

    stage(0, 0);
    cp_async_commit();
    load_tile<D>(ks, rows + (size_t)(heads + kvh) * D, ldqkv, k0, len);
    load_tile<D>(vs, rows + (size_t)(heads + kv_heads + kvh) * D, ldqkv, k0, len);
    __syncthreads();
    uint32_t ka[KV_REGS ? KD : 1][4], va[KV_REGS ? KD : 1][4];
    if constexpr (KV_REGS) {
        load_a_frags<D>(ka, ks, warp * 16, lane);
        load_a_frags<D>(va, vs, warp * 16, lane);
    }

    float dk[ND][4], dv[ND][4];
#pragma unroll
    for (uint32_t dt = 0; dt < ND; dt++) {
        dk[dt][0] = dk[dt][1] = dk[dt][2] = dk[dt][3] = 0.0f;
        dv[dt][0] = dv[dt][1] = dv[dt][2] = dv[dt][3] = 0.0f;
    }
    const uint32_t key0 = k0 + warp * 16 + g, key1 = key0 + 8; /* this thread's two keys */

    for (uint32_t it = 0; it < iters; it++) {
        const uint32_t buf = it & 1;
        __syncthreads(); /* iteration it − 1 has read buffer buf ^ 1: it may be refilled */
        if (it + 1 < iters) {
            stage(it + 1, buf ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const uint32_t h = kvh * group + it / nqt, qt = kt + it % nqt, q0 = qt * TC_BQ;
        const bf16 *qs = qbuf + buf * TILE, *dos = dobuf + buf * TILE;
        const float *lse_t = lse_s + buf * TC_BQ, *delta_t = delta_s + buf * TC_BQ;
        uint64_t drop_key = 0;
        if constexpr (DROP)
            drop_key = dev_drop_key(drop.seq_key[b], drop.layer, 1, h);
        const bool diag = qt == kt;
#pragma unroll
        for (uint32_t qc = 0; qc < TC_BQ / 16; qc++) {
            /* queries all before the warp's keys, or all past the sequence (uniform in the warp) */
            if ((diag && qc < warp) || q0 + qc * 16 >= len)
                continue;
            float st[2][4] = {}, dpt[2][4] = {};
            if constexpr (KV_REGS) {
                mma_a_by_rows_t<D>(st, ka, qs, qc * 16, lane);
                mma_a_by_rows_t<D>(dpt, va, dos, qc * 16, lane);
            } else {
                uint32_t a[KD][4];
                load_a_frags<D>(a, ks, warp * 16, lane);
                mma_a_by_rows_t<D>(st, a, qs, qc * 16, lane);
                load_a_frags<D>(a, vs, warp * 16, lane);
                mma_a_by_rows_t<D>(dpt, a, dos, qc * 16, lane);
            }
            /* element e of tile nt: key key0 (e < 2) or key1, query q0 + qc·16 + nt·8 + 2t + (e & 1) */
            float pm[2][4], ds[2][4];
#pragma unroll
            for (uint32_t nt = 0; nt < 2; nt++) {
#pragma unroll
                for (uint32_t e = 0; e < 4; e++) {
                    const uint32_t r = qc * 16 + nt * 8 + 2 * t + (e & 1), query = q0 + r;
                    const uint32_t key = e < 2 ? key0 : key1;
                    float pv = 0.0f, dsv = 0.0f;
                    if (query < len && key <= query) {
                        const float p = exp2_ftz(st[nt][e] * scale_log2 - lse_t[r] * LOG2E);
                        float dpm = dpt[nt][e], f = 1.0f;
                        if constexpr (DROP) {
                            f = dev_dropout_factor(drop_key, drop.threshold, drop.scale,
                                                   (uint64_t)query * len + key);
                            dpm *= f;
                        }
                        pv = DROP ? p * f : p;
                        dsv = p * (dpm - delta_t[r]);
                    }
                    pm[nt][e] = pv;
                    ds[nt][e] = dsv;
                }
            }
            const uint32_t pa[4] = {pack_bf16(pm[0][0], pm[0][1]), pack_bf16(pm[0][2], pm[0][3]),
                                    pack_bf16(pm[1][0], pm[1][1]), pack_bf16(pm[1][2], pm[1][3])};
            const uint32_t dsa[4] = {pack_bf16(ds[0][0], ds[0][1]), pack_bf16(ds[0][2], ds[0][3]),
                                     pack_bf16(ds[1][0], ds[1][1]), pack_bf16(ds[1][2], ds[1][3])};
            mma_a_by_rows<D>(dv, pa, dos, qc * 16, lane);
            mma_a_by_rows<D>(dk, dsa, qs, qc * 16, lane);
        }
    }
    bf16 *k0p = dqkv + (size_t)(start + key0) * lddqkv + (size_t)(heads + kvh) * D + 2 * t;
    bf16 *v0p = dqkv + (size_t)(start + key0) * lddqkv + (size_t)(heads + kv_heads + kvh) * D + 2 * t;
    store_acc_rows<ND>(k0p, lddqkv, dk, key0 < len, key1 < len, scale, scale);
    store_acc_rows<ND>(v0p, lddqkv, dv, key0 < len, key1 < len, 1.0f, 1.0f); /* × 1: exact */
}

/* dq: K, V double-buffered (Q, dout staged in the second buffers first); dkv: K, V, Q and dout
 * double-buffered, lse and D of two query tiles */
template <uint32_t D>
constexpr size_t bwd_tc_dq_smem() { return 4 * (size_t)TC_BK * (D + 8) * sizeof(bf16); }

template <uint32_t D>
constexpr size_t bwd_tc_dkv_smem()
{
    return 6 * (size_t)TC_BK * (D + 8) * sizeof(bf16) + 4 * TC_BQ * sizeof(float);
}

template <uint32_t D, bool DROP>
cudaError_t launch_backward_tc(void *dqkv, uint32_t lddqkv, const void *dout, uint32_t lddout,
                               const void *out, uint32_t ldout, const void *qkv, uint32_t ldqkv,
                               const float *lse, float *delta, const uint32_t *seq_off,
                               uint32_t nseq, uint32_t max_len, uint32_t heads, uint32_t kv_heads,
                               float scale, const cu_attn_dropout &drop, cudaStream_t s)
{
    /* d = 128: 69,632 and 105,472 bytes, two blocks of either per SM within Hopper's 227 KB */
    constexpr size_t dq_smem = bwd_tc_dq_smem<D>(), dkv_smem = bwd_tc_dkv_smem<D>();
    static_assert(dkv_smem <= 227 * 1024, "over the opt-in shared memory of an sm_90 block");
    cudaError_t err = allow_smem(attn_bwd_tc_dq<D, DROP>, dq_smem);
    if (err == cudaSuccess)
        err = allow_smem(attn_bwd_tc_dkv<D, DROP>, dkv_smem);
    if (err != cudaSuccess)
        return err;
    const dim3 grid((max_len + TC_BQ - 1) / TC_BQ, heads, nseq);
    attn_bwd_tc_dq<D, DROP><<<grid, TC_THREADS, dq_smem, s>>>(
        (bf16 *)dqkv, lddqkv, (const bf16 *)dout, lddout, (const bf16 *)out, ldout, (const bf16 *)qkv,
        ldqkv, lse, delta, seq_off, heads, kv_heads, scale, drop);
    if ((err = cudaGetLastError()) != cudaSuccess)
        return err;
    const dim3 dkv_grid((max_len + TC_BK - 1) / TC_BK, kv_heads, nseq);
    attn_bwd_tc_dkv<D, DROP><<<dkv_grid, TC_THREADS, dkv_smem, s>>>(
        (bf16 *)dqkv, lddqkv, (const bf16 *)dout, lddout, (const bf16 *)qkv, ldqkv, lse, delta,
        seq_off, heads, kv_heads, scale, drop);
    return cudaGetLastError();
}

template <bool DROP>
cudaError_t backward_tc(uint32_t d, void *dqkv, uint32_t lddqkv, const void *dout, uint32_t lddout,
                        const void *out, uint32_t ldout, const void *qkv, uint32_t ldqkv,
                        const float *lse, float *delta, const uint32_t *seq_off, uint32_t nseq,
                        uint32_t max_len, uint32_t heads, uint32_t kv_heads, float scale,
                        const cu_attn_dropout &drop, cudaStream_t s)
{
#define TC_BWD_ARGS dqkv, lddqkv, dout, lddout, out, ldout, qkv, ldqkv, lse, delta, seq_off, nseq, \
                    max_len, heads, kv_heads, scale, drop, s
    if (d == 32)
        return launch_backward_tc<32, DROP>(TC_BWD_ARGS);
    if (d == 64)
        return launch_backward_tc<64, DROP>(TC_BWD_ARGS);
    return launch_backward_tc<128, DROP>(TC_BWD_ARGS);
#undef TC_BWD_ARGS
}

/* attn_tc_group for head_dim d ∈ {32, 64, 128}, with RoPE inside when cos_t is given; attn_wg_group
 * (attention_wgmma.cu) in its place for CU_ATTN_WG_GROUP, _OVERLAP and _PAIR where that serves d. */
cudaError_t launch_group(void *out, uint32_t ldo, const void *qkv, uint32_t ldqkv, const uint32_t *seq_off,
                         uint32_t nseq, uint32_t max_len, uint32_t heads, uint32_t kv_heads, uint32_t d,
                         float scale, const float *cos_t, const float *sin_t, enum cu_attn_impl impl, cudaStream_t s)
{
    if (cu_attn_impl_wgmma(impl) && cu_attention_wg_serves(d))
        return cu_attention_wg(out, ldo, qkv, ldqkv, seq_off, nseq, max_len, heads, kv_heads, scale, cos_t, sin_t,
                               impl, s);
#define GROUP_ARGS out, ldo, qkv, ldqkv, seq_off, nseq, max_len, heads, kv_heads, scale, cos_t, sin_t, s
    if (d == 32)
        return cos_t ? launch_tc_group<32, true>(GROUP_ARGS) : launch_tc_group<32, false>(GROUP_ARGS);
    if (d == 64)
        return cos_t ? launch_tc_group<64, true>(GROUP_ARGS) : launch_tc_group<64, false>(GROUP_ARGS);
    return cos_t ? launch_tc_group<128, true>(GROUP_ARGS) : launch_tc_group<128, false>(GROUP_ARGS);
#undef GROUP_ARGS
}

/* Whether attn_tc_group serves a call: bf16 with a tensor-core head_dim, grouped-query heads,
 * sequences of at most TC_GROUP_MAX_LEN tokens, rows whose 16-byte vectors stay aligned. */
bool group_serves(enum cu_dtype t, uint32_t d, uint32_t heads, uint32_t kv_heads, uint32_t max_len, uint32_t ldqkv,
                  uint32_t ldo)
{
    return cu_attention_uses_tensor_cores(t, d) && kv_heads > 0 && heads > kv_heads && heads % kv_heads == 0 &&
           max_len > 0 && max_len <= TC_GROUP_MAX_LEN && ldqkv % 8 == 0 && ldo % 2 == 0;
}

template <bool DROP>
cudaError_t attention_forward(void *out, uint32_t ldo, float *lse, const void *qkv, uint32_t ldqkv,
                              enum cu_dtype t, const uint32_t *seq_off, uint32_t nseq,
                              uint32_t max_len, uint32_t heads, uint32_t kv_heads, uint32_t d,
                              float scale, enum cu_attn_impl impl, const cu_attn_dropout &drop,
                              cudaStream_t s)
{
    if (d == 0 || d > SIMT_DMAX || heads == 0 || kv_heads == 0 || heads % kv_heads)
        return cudaErrorInvalidValue;
    if (nseq == 0 || max_len == 0)
        return cudaSuccess;
    /* the tensor-core kernel copies 16-byte vectors: rows and head offsets must keep them aligned */
    const bool aligned = ldqkv % 8 == 0 && ldo % 2 == 0 && ((uintptr_t)qkv % 16) == 0 &&
                         ((uintptr_t)out % 4) == 0;
    const bool grouped = impl == CU_ATTN_TC_GROUP || cu_attn_impl_wgmma(impl);
    const bool tc = (impl == CU_ATTN_AUTO || grouped) && cu_attention_uses_tensor_cores(t, d) && aligned;
    if (tc && grouped && !DROP && !lse && group_serves(t, d, heads, kv_heads, max_len, ldqkv, ldo)) {
        return launch_group(out, ldo, qkv, ldqkv, seq_off, nseq, max_len, heads, kv_heads, d, scale, NULL, NULL,
                            impl, s);
    }
    if (tc) {
        if (d == 32)
            return launch_tc<32, DROP>(out, ldo, lse, qkv, ldqkv, seq_off, nseq, max_len, heads, kv_heads, scale, drop, s);
        if (d == 64)
            return launch_tc<64, DROP>(out, ldo, lse, qkv, ldqkv, seq_off, nseq, max_len, heads, kv_heads, scale, drop, s);
        return launch_tc<128, DROP>(out, ldo, lse, qkv, ldqkv, seq_off, nseq, max_len, heads, kv_heads, scale, drop, s);
    }
    const dim3 grid((max_len + SIMT_BQ - 1) / SIMT_BQ, heads, nseq);
    const size_t smem = simt_smem_bytes(d); /* ≤ 41,216 bytes for d = 128: under the 48 KB default */
    if (t == CU_BF16)
        attn_simt<bf16, DROP><<<grid, SIMT_THREADS, smem, s>>>((bf16 *)out, ldo, lse, (const bf16 *)qkv, ldqkv,
                                                               seq_off, heads, kv_heads, d, scale, drop);
    else
        attn_simt<float, DROP><<<grid, SIMT_THREADS, smem, s>>>((float *)out, ldo, lse, (const float *)qkv, ldqkv,
                                                                seq_off, heads, kv_heads, d, scale, drop);
    return cudaGetLastError();
}

} // namespace

extern "C" bool cu_attention_uses_tensor_cores(enum cu_dtype t, uint32_t d)
{
    return t == CU_BF16 && (d == 32 || d == 64 || d == 128);
}

extern "C" cudaError_t cu_attention(void *out, uint32_t ldo, const void *qkv, uint32_t ldqkv,
                                    enum cu_dtype t, const uint32_t *seq_off, uint32_t nseq,
                                    uint32_t max_len, uint32_t heads, uint32_t kv_heads,
                                    uint32_t d, float scale, enum cu_attn_impl impl,
                                    cudaStream_t s)
{
    const cu_attn_dropout none = {};
    return attention_forward<false>(out, ldo, NULL, qkv, ldqkv, t, seq_off, nseq, max_len, heads,
                                    kv_heads, d, scale, impl, none, s);
}

extern "C" bool cu_attention_fuses_rope(enum cu_dtype t, uint32_t d, uint32_t heads, uint32_t kv_heads,
                                        uint32_t max_len, uint32_t ldqkv, uint32_t ldo)
{
    return group_serves(t, d, heads, kv_heads, max_len, ldqkv, ldo);
}

extern "C" uint64_t cu_attention_group_blocks(uint32_t nseq, uint32_t max_len, uint32_t kv_heads)
{
    return (uint64_t)group_tiles(max_len) * kv_heads * nseq;
}

extern "C" cudaError_t cu_attention_rope(void *out, uint32_t ldo, const void *qkv, uint32_t ldqkv, enum cu_dtype t,
                                         const uint32_t *seq_off, uint32_t nseq, uint32_t max_len, uint32_t heads,
                                         uint32_t kv_heads, uint32_t d, float scale, const float *cos_t,
                                         const float *sin_t, enum cu_attn_impl impl, cudaStream_t s)
{
    /* (the query fragments read the tables' entries in pairs) */
    if (!cu_attention_fuses_rope(t, d, heads, kv_heads, max_len, ldqkv, ldo) || !cos_t || !sin_t ||
        (uintptr_t)qkv % 16 != 0 || (uintptr_t)out % 4 != 0 || (uintptr_t)cos_t % 8 != 0 ||
        (uintptr_t)sin_t % 8 != 0)
        return cudaErrorNotSupported;
    if (nseq == 0)
        return cudaSuccess;
    return launch_group(out, ldo, qkv, ldqkv, seq_off, nseq, max_len, heads, kv_heads, d, scale, cos_t, sin_t, impl,
                        s);
}

extern "C" cudaError_t cu_attention_train(void *out, uint32_t ldo, float *lse, const void *qkv,
                                          uint32_t ldqkv, enum cu_dtype t,
                                          const uint32_t *seq_off, uint32_t nseq,
                                          uint32_t max_len, uint32_t heads, uint32_t kv_heads,
                                          uint32_t d, float scale, enum cu_attn_impl impl,
                                          const struct cu_attn_dropout *drop, cudaStream_t s)
{
    if (drop)
        return attention_forward<true>(out, ldo, lse, qkv, ldqkv, t, seq_off, nseq, max_len, heads,
                                       kv_heads, d, scale, impl, *drop, s);
    const cu_attn_dropout none = {};
    return attention_forward<false>(out, ldo, lse, qkv, ldqkv, t, seq_off, nseq, max_len, heads,
                                    kv_heads, d, scale, impl, none, s);
}

extern "C" cudaError_t cu_attention_backward(void *dqkv, uint32_t lddqkv, const void *dout,
                                             uint32_t lddout, const void *out, uint32_t ldout,
                                             const void *qkv, uint32_t ldqkv, const float *lse,
                                             float *delta, enum cu_dtype t,
                                             const uint32_t *seq_off, uint32_t nseq,
                                             uint32_t max_len, uint32_t heads, uint32_t kv_heads,
                                             uint32_t d, float scale, enum cu_attn_impl impl,
                                             const struct cu_attn_dropout *drop, cudaStream_t s)
{
    if (d == 0 || d > SIMT_DMAX || heads == 0 || kv_heads == 0 || heads % kv_heads)
        return cudaErrorInvalidValue;
    if (nseq == 0 || max_len == 0)
        return cudaSuccess;
    const cu_attn_dropout none = {};
    /* the tensor-core kernels copy Q, K, V, dout rows and read out rows in 16-byte vectors and
     * store dq, dk, dv as pairs */
    const bool aligned = ldqkv % 8 == 0 && lddout % 8 == 0 && ldout % 8 == 0 && lddqkv % 2 == 0 &&
                         (uintptr_t)qkv % 16 == 0 && (uintptr_t)dout % 16 == 0 &&
                         (uintptr_t)out % 16 == 0 && (uintptr_t)dqkv % 4 == 0;
    if (impl == CU_ATTN_AUTO && cu_attention_uses_tensor_cores(t, d) && aligned) {
#define TC_ARGS d, dqkv, lddqkv, dout, lddout, out, ldout, qkv, ldqkv, lse, delta, seq_off, nseq, max_len, \
                heads, kv_heads, scale
        return drop ? backward_tc<true>(TC_ARGS, *drop, s) : backward_tc<false>(TC_ARGS, none, s);
#undef TC_ARGS
    }
#define BWD_ARGS dqkv, lddqkv, dout, lddout, out, ldout, qkv, ldqkv, lse, delta, seq_off, nseq, max_len, \
                 heads, kv_heads, d, scale
    if (t == CU_BF16)
        return drop ? launch_backward<bf16, true>(BWD_ARGS, *drop, s) : launch_backward<bf16, false>(BWD_ARGS, none, s);
    return drop ? launch_backward<float, true>(BWD_ARGS, *drop, s) : launch_backward<float, false>(BWD_ARGS, none, s);
#undef BWD_ARGS
}
