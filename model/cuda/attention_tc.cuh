/* attention_tc.cuh — what the two tensor-core forward kernels share: attention.cu's attn_tc and
 * attn_tc_group (mma.sync) and attention_wgmma.cu's attn_wg_group (Hopper's wgmma). A warp owns
 * 16 query rows of a 64-row tile; a thread holds rows row0 = g and row1 = g + 8 of them (g =
 * lane / 4) in the C-fragment layout of mma.m16n8k16, which is also the layout of a wgmma
 * m64nNk16 accumulator's rows of that warp: the query fragments, the online softmax over one
 * 64-key tile of scores, and the end of the walk are the same code for both. Private to
 * model/cuda/. */
#ifndef NETLM_ATTENTION_TC_CUH
#define NETLM_ATTENTION_TC_CUH

#include <cuda_bf16.h>
#include <math.h>

#include "model/cuda/cuda_device.cuh"
#include "model/cuda/cuda_internal.h"

namespace {

constexpr uint32_t TC_BQ = 64, TC_BK = 64, TC_THREADS = 128;
/* the grouped kernels hold every key/value tile of a sequence: at most this many */
constexpr uint32_t TC_GROUP_TILES = 4, TC_GROUP_MAX_LEN = TC_GROUP_TILES * TC_BK;

/* 16 bytes from device memory into shared memory without passing through registers (cp.async),
 * completing at a wait for its commit group. (tests/emulate/cuda_emulate.h has the host's.) */
#ifndef NETLM_CUDA_EMULATE
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(a), "l"(gmem));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

#endif

/* attn_tc_group's and attn_wg_group's query tiles per (kv head, sequence): their grid's x */
constexpr uint32_t group_tiles(uint32_t max_len) { return (max_len + TC_BK - 1) / TC_BK; }

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* .x (lo) in the low half */
    return *reinterpret_cast<const uint32_t *>(&v);
}

/* The ND accumulator tiles of a warp's 16 rows (C fragments: this thread's columns 2t, 2t+1 of
 * each 8-column tile, of rows g and g + 8) as bf16 into p0 (row g, column 2t of tile 0) and the
 * row 8 below (row stride ld): row g scaled by s0 and written when w0, row g + 8 by s1 when w1. */
template <uint32_t ND>
__device__ __forceinline__ void store_acc_rows(bf16 *p0, size_t ld, const float (*acc)[4], bool w0, bool w1,
                                               float s0, float s1)
{
#pragma unroll
    for (uint32_t dt = 0; dt < ND; dt++) {
        if (w0)
            *reinterpret_cast<uint32_t *>(p0 + dt * 8) = pack_bf16(acc[dt][0] * s0, acc[dt][1] * s0);
        if (w1)
            *reinterpret_cast<uint32_t *>(p0 + 8 * ld + dt * 8) = pack_bf16(acc[dt][2] * s1, acc[dt][3] * s1);
    }
}


/* The A fragments of a warp's query rows row0 and row1 = row0 + 8 (rows at or past len as zeros)
 * for the whole key walk, read from q (row 0 of the head's dims, row stride ld): a [64][D + 8]
 * tile in shared memory, or qkv itself. */
template <uint32_t D>
__device__ __forceinline__ void tc_q_fragments(uint32_t (&qa)[D / 16][4], const bf16 *q, uint32_t ld, uint32_t row0,
                                               uint32_t row1, uint32_t len, uint32_t t)
{
    const bf16 *r0 = q + (size_t)row0 * ld + 2 * t, *r1 = q + (size_t)row1 * ld + 2 * t;
#pragma unroll
    for (uint32_t kk = 0; kk < D / 16; kk++) {
        qa[kk][0] = row0 < len ? *reinterpret_cast<const uint32_t *>(r0 + kk * 16) : 0u;
        qa[kk][1] = row1 < len ? *reinterpret_cast<const uint32_t *>(r1 + kk * 16) : 0u;
        qa[kk][2] = row0 < len ? *reinterpret_cast<const uint32_t *>(r0 + kk * 16 + 8) : 0u;
        qa[kk][3] = row1 < len ? *reinterpret_cast<const uint32_t *>(r1 + kk * 16 + 8) : 0u;
    }
}

/* After the walk: the row sums over the quad, the log-sum-exp when lse, the rows of head h
 * divided by their sums into out (row0 and row1 of the sequence starting at packed row start,
 * those < len). */
template <uint32_t D>
__device__ __forceinline__ void tc_finish(bf16 *out, uint32_t ldo, float *lse, uint32_t start, uint32_t len,
                                          uint32_t h, uint32_t heads, uint32_t row0, uint32_t row1,
                                          uint32_t lane, const float (&o)[D / 8][4], float m0, float m1,
                                          float l0, float l1)
{
    const uint32_t t = lane % 4;
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
    if (lse && t == 0) { /* m is in the log2 domain: ln Σ e^s = ln 2 · (m + log2 l) */
        if (row0 < len)
            lse[(size_t)(start + row0) * heads + h] = (m0 + log2f(l0)) * 0.6931471805599453f;
        if (row1 < len)
            lse[(size_t)(start + row1) * heads + h] = (m1 + log2f(l1)) * 0.6931471805599453f;
    }
    store_acc_rows<D / 8>(out + (size_t)(start + row0) * ldo + (size_t)h * D + 2 * t, ldo, o, row0 < len,
                          row1 < len, inv0, inv1);
}

/* Where a block of the grouped kernels stands (attn_tc_group, attn_wg_group): sequence
 * blockIdx.z, kv head blockIdx.y, its first query tile qt (blockIdx.x from the last: the longest
 * tiles first; TILES neighbouring query tiles a block, a warpgroup each), rows from q0; the
 * thread's two query rows (warp w's in the block's tiles from row 16w); the sequence's qkv rows
 * and its kv head's keys and values in them. */
struct group_block {
    uint32_t kvh, group, start, len, qt, q0, lane, t, row0, row1;
    const bf16 *rows, *kbase, *vbase;
};
template <uint32_t D, uint32_t TILES = 1>
__device__ __forceinline__ group_block group_block_here(const bf16 *qkv, uint32_t ldqkv, const uint32_t *seq_off,
                                                        uint32_t heads, uint32_t kv_heads)
{
    group_block g;
    g.kvh = blockIdx.y;
    g.group = heads / kv_heads;
    g.start = seq_off[blockIdx.z];
    g.len = seq_off[blockIdx.z + 1] - g.start;
    g.qt = (gridDim.x - 1 - blockIdx.x) * TILES;
    g.q0 = g.qt * TC_BQ;
    g.lane = threadIdx.x % 32;
    g.t = g.lane % 4;
    g.row0 = g.q0 + threadIdx.x / 32 * 16 + g.lane / 4;
    g.row1 = g.row0 + 8;
    g.rows = qkv + (size_t)g.start * ldqkv;
    g.kbase = g.rows + (size_t)(heads + g.kvh) * D;
    g.vbase = g.rows + (size_t)(heads + kv_heads + g.kvh) * D;
    return g;
}

/* The next head's query fragments, fetched during this head's walk, become the current ones. */
template <uint32_t KD>
__device__ __forceinline__ void tc_next_head(uint32_t (&qa)[KD][4], const uint32_t (&next)[KD][4])
{
#pragma unroll
    for (uint32_t kk = 0; kk < KD; kk++)
#pragma unroll
        for (uint32_t e = 0; e < 4; e++)
            qa[kk][e] = next[kk][e];
}

/* A head's walk starts from o = 0, no maximum yet, empty sums. */
template <uint32_t ND>
__device__ __forceinline__ void tc_walk_start(float (&o)[ND][4], float &m0, float &m1, float &l0, float &l1)
{
#pragma unroll
    for (uint32_t dt = 0; dt < ND; dt++)
        o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
    m0 = m1 = -INFINITY;
    l0 = l1 = 0.0f;
}

/* On the diagonal key tile (k0 = the query tile's first row): the warp's last query row within
 * it, 16w + 15, uniform in the warp; the whole tile elsewhere. */
template <bool DIAG> __device__ __forceinline__ uint32_t tc_warp_last(uint32_t row0, uint32_t k0)
{
    return DIAG ? (row0 - k0) | 15u : TC_BK - 1;
}

/* The online softmax over one key tile of a warp's scores s (C fragments: s[nt][e] is key
 * k0 + nt·8 + 2t + (e & 1) of row0 for e < 2, of row1 else), unscaled: the causal mask on the
 * diagonal tile (DIAG), the update of the running maxima m (log2 domain: scores times
 * scale_log2) and partial row sums l, and s turned into the probabilities 2^(s·scale_log2 − m)
 * (one FFMA in each exponent), dropped out by DROP's mask for P·V while the sums take the plain
 * ones; a0 and a1 are the factors that bring o (rows row0 and row1) to the new maxima
 * (tc_rescale). On the diagonal tile the 8-key blocks after the warp's last row are left as
 * zeros without an exponent each. At d = 64 the softmax's instructions per score cost as much
 * issue time as the products, so each one counts. */
template <bool DROP, bool DIAG>
__device__ __forceinline__ void tc_probabilities(float (&s)[TC_BK / 8][4], uint32_t k0, uint32_t row0, uint32_t row1,
                                                 uint32_t len, uint32_t lane, float scale_log2, uint64_t drop_key,
                                                 const cu_attn_dropout &drop, float &m0, float &m1, float &l0,
                                                 float &l1, float &a0, float &a1)
{
    constexpr uint32_t NK = TC_BK / 8;
    const uint32_t t = lane % 4, warp_last = tc_warp_last<DIAG>(row0, k0);
    /* the diagonal tile masks keys after the query (k0 = the query tile's first row there) */
    if constexpr (DIAG) {
#pragma unroll
        for (uint32_t nt = 0; nt < NK; nt++)
#pragma unroll
            for (uint32_t e = 0; e < 4; e++)
                if (nt * 8 + 2 * t + (e & 1) > (e < 2 ? row0 : row1) - k0)
                    s[nt][e] = -INFINITY;
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (uint32_t nt = 0; nt < NK; nt++) {
        mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
        mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
    }
    /* a row's values are spread over the 4 threads of a quad */
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    /* key k0 ≤ query on every tile walked (key 0 on the first), so these are finite; scale_log2
     * > 0, so the scaled maximum is the maximum of the scaled scores */
    const float mn0 = fmaxf(m0, mx0 * scale_log2), mn1 = fmaxf(m1, mx1 * scale_log2);
    a0 = exp2_ftz(m0 - mn0); /* 0 on the first tile */
    a1 = exp2_ftz(m1 - mn1);
    m0 = mn0;
    m1 = mn1;
    float ls0 = 0.0f, ls1 = 0.0f;
#pragma unroll
    for (uint32_t nt = 0; nt < NK; nt++) {
        if (DIAG && nt * 8 > warp_last) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            continue;
        }
        s[nt][0] = exp2_ftz(fmaf(s[nt][0], scale_log2, -mn0)); /* masked: 2^−∞ = 0 */
        s[nt][1] = exp2_ftz(fmaf(s[nt][1], scale_log2, -mn0));
        s[nt][2] = exp2_ftz(fmaf(s[nt][2], scale_log2, -mn1));
        s[nt][3] = exp2_ftz(fmaf(s[nt][3], scale_log2, -mn1));
        ls0 += s[nt][0] + s[nt][1];
        ls1 += s[nt][2] + s[nt][3];
    }
    l0 = l0 * a0 + ls0; /* per-thread partial sums, reduced over the quad at the end */
    l1 = l1 * a1 + ls1;
    if constexpr (DROP) {
        /* the sums above are of the plain probabilities; P·V takes the masked ones (element
         * e of tile nt: key k0 + nt·8 + 2t + (e & 1) of row0 for e < 2, else of row1) */
#pragma unroll
        for (uint32_t nt = 0; nt < NK; nt++) {
#pragma unroll
            for (uint32_t e = 0; e < 4; e++) {
                const uint32_t key = k0 + nt * 8 + 2 * t + (e & 1), qrow = e < 2 ? row0 : row1;
                if (qrow < len && key <= qrow)
                    s[nt][e] *= dev_dropout_factor(drop_key, drop.threshold, drop.scale,
                                                   (uint64_t)qrow * len + key);
            }
        }
    }
}

/* o's rows row0 and row1 brought to the maxima of tc_probabilities' a0 and a1 */
template <uint32_t ND> __device__ __forceinline__ void tc_rescale(float (&o)[ND][4], float a0, float a1)
{
#pragma unroll
    for (uint32_t dt = 0; dt < ND; dt++) {
        o[dt][0] *= a0;
        o[dt][1] *= a0;
        o[dt][2] *= a1;
        o[dt][3] *= a1;
    }
}

/* tc_probabilities, then o rescaled to the new maxima */
template <uint32_t D, bool DROP, bool DIAG>
__device__ __forceinline__ void tc_softmax(float (&s)[TC_BK / 8][4], uint32_t k0, uint32_t row0, uint32_t row1,
                                           uint32_t len, uint32_t lane, float scale_log2, uint64_t drop_key,
                                           const cu_attn_dropout &drop, float (&o)[D / 8][4], float &m0, float &m1,
                                           float &l0, float &l1)
{
    float a0, a1;
    tc_probabilities<DROP, DIAG>(s, k0, row0, row1, len, lane, scale_log2, drop_key, drop, m0, m1, l0, l1, a0, a1);
    tc_rescale(o, a0, a1);
}

/* RoPE (cu_rope's arithmetic: half-split pairs j, j + D/2 rotated by the angle of the row's
 * position) on a 64-row tile of keys in shared memory: tile row r is position pos0 + r of its
 * sequence, rows at or past len (zeros) are left alone. Rows::at(tile, r, j) is where dim j of
 * row r is (two neighbouring dims, j even, are always neighbours there): attn_tc_group's padded
 * tiles (padded_rows) or attn_wg_group's swizzled ones. Every thread of the block (THREADS) takes part,
 * two neighbouring pairs at a time. The block does nothing else meanwhile, so each thread first
 * loads all the table entries it needs (from L2), then rotates: one load latency per tile
 * instead of one per step. */
template <uint32_t D> struct padded_rows {
    __device__ static bf16 *at(void *tile, uint32_t r, uint32_t j) { return (bf16 *)tile + r * (D + 8) + j; }
};

template <uint32_t D, typename Rows, uint32_t THREADS = TC_THREADS>
__device__ __forceinline__ void rope_tile(void *tile, uint32_t pos0, uint32_t len, const float *cos_t,
                                          const float *sin_t)
{
    constexpr uint32_t HALF = D / 2, PAIRS = HALF / 2, STEPS = TC_BK * PAIRS / THREADS;
    static_assert(TC_BK * PAIRS % THREADS == 0, "whole steps of the block's threads");
    float c0[STEPS], c1[STEPS], s0[STEPS], s1[STEPS];
#pragma unroll
    for (uint32_t st = 0; st < STEPS; st++) {
        const uint32_t i = threadIdx.x + st * THREADS, pos = pos0 + i / PAIRS, j = 2 * (i % PAIRS);
        const size_t at = (size_t)(pos < len ? pos : 0) * HALF + j; /* rows past len: any entry */
        c0[st] = cos_t[at];
        c1[st] = cos_t[at + 1];
        s0[st] = sin_t[at];
        s1[st] = sin_t[at + 1];
    }
#pragma unroll
    for (uint32_t st = 0; st < STEPS; st++) {
        const uint32_t i = threadIdx.x + st * THREADS, r = i / PAIRS, j = 2 * (i % PAIRS);
        if (pos0 + r >= len)
            continue;
        __nv_bfloat162 *lo = reinterpret_cast<__nv_bfloat162 *>(Rows::at(tile, r, j));
        __nv_bfloat162 *hi = reinterpret_cast<__nv_bfloat162 *>(Rows::at(tile, r, j + HALF));
        const float2 a = __bfloat1622float2(*lo), b = __bfloat1622float2(*hi);
        *lo = __floats2bfloat162_rn(a.x * c0[st] - b.x * s0[st], a.y * c1[st] - b.y * s1[st]);
        *hi = __floats2bfloat162_rn(b.x * c0[st] + a.x * s0[st], b.y * c1[st] + a.y * s1[st]);
    }
}

/* RoPE on the A fragments of rows row0 and row1 (cu_rope's arithmetic: half-split pairs j,
 * j + D/2 rotated by the angle of the row's position, one bf16 rounding). Register e of
 * fragment kk holds dims kk·16 + 2t (+ 8 for e ≥ 2), two of them, of row0 (e even) or row1. */
template <uint32_t D>
__device__ __forceinline__ void rope_fragments(uint32_t (&qa)[D / 16][4], uint32_t row0, uint32_t row1,
                                               uint32_t len, uint32_t t, const float *cos_t, const float *sin_t)
{
    constexpr uint32_t HALF = D / 2, KH = D / 32; /* fragments of the lower half */
    const size_t at0 = (size_t)(row0 < len ? row0 : 0) * HALF + 2 * t, at1 = (size_t)(row1 < len ? row1 : 0) * HALF + 2 * t;
#pragma unroll
    for (uint32_t kk = 0; kk < KH; kk++) {
#pragma unroll
        for (uint32_t e = 0; e < 4; e++) {
            const size_t at = (e & 1 ? at1 : at0) + kk * 16 + (e & 2 ? 8 : 0);
            const float2 c = *reinterpret_cast<const float2 *>(cos_t + at);
            const float2 sn = *reinterpret_cast<const float2 *>(sin_t + at);
            __nv_bfloat162 lo = *reinterpret_cast<const __nv_bfloat162 *>(&qa[kk][e]);
            __nv_bfloat162 hi = *reinterpret_cast<const __nv_bfloat162 *>(&qa[kk + KH][e]);
            const float2 a = __bfloat1622float2(lo), b = __bfloat1622float2(hi);
            lo = __floats2bfloat162_rn(a.x * c.x - b.x * sn.x, a.y * c.y - b.y * sn.y);
            hi = __floats2bfloat162_rn(b.x * c.x + a.x * sn.x, b.y * c.y + a.y * sn.y);
            qa[kk][e] = *reinterpret_cast<const uint32_t *>(&lo);
            qa[kk + KH][e] = *reinterpret_cast<const uint32_t *>(&hi);
        }
    }
}

} // namespace

#endif
