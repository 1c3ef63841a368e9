/* attention_wgmma.cu — the grouped-query attention of the classify pass (attn_tc_group's work:
 * one block per query tile, kv head and sequence, sequences of at most 256 tokens, the group's
 * query heads walked over key/value tiles loaded once) on Hopper's warpgroup products. The block
 * is one warpgroup; per key tile it issues S = Q·Kᵀ as 4 wgmma m64n64k16 and O += P·V as 4 more,
 * where attn_tc_group's warps issue 64 mma.sync and 32 ldmatrix each: at head_dim 64 the softmax
 * and the instructions that feed the tensor cores are what bound the mma.sync kernel, and the
 * products, asynchronous here, run while the warps issue other work.
 *
 * Both products take A from registers (the query fragments of tc_q_fragments; the probabilities
 * packed from S's accumulators, whose layout is the A fragment's) and B from shared memory in
 * the K-major 128-byte-swizzled layout wgmma reads: K tiles as they are (a row of 64 dims is
 * one 128-byte row), V tiles transposed on the way in (a row per dim, the tile's 64 keys along
 * it), so that no operand needs wgmma's transposition. The online softmax, the masks and the
 * end of the walk are tc_probabilities, tc_rescale and tc_finish, the mma.sync kernels' own
 * (attention_tc.cuh).
 *
 * With OVERLAP (CU_ATTN_WG_OVERLAP) a head's walk issues the next tile's S with this tile's
 * P·V and runs the next tile's softmax while P·V runs (wg_walk_overlapped), where the plain walk
 * leaves the tensor cores to other blocks through each softmax.
 *
 * With WGS = 2 (CU_ATTN_WG_PAIR) a block is two warpgroups, each walking the group's heads for
 * one of two neighbouring query tiles over the key/value tiles loaded once for both: the shared
 * memory that bounds the single-warpgroup kernel at 3 blocks (12 warps) a multiprocessor then
 * serves 16 warps in 2 blocks.
 *
 * With ROPE (cu_attention_rope's classify pass: q and k in qkv not rotated yet), the block
 * rotates its key tiles once in shared memory and each warp its query fragments in registers,
 * as attn_tc_group does (attention_tc.cuh's rope_tile and rope_fragments).
 *
 * Compiled for sm_90a only (CMakeLists.txt); cu_attention (and cu_attention_rope) run it for
 * CU_ATTN_WG_GROUP, CU_ATTN_WG_OVERLAP and CU_ATTN_WG_PAIR on compute capability 9.0 and
 * head_dim 64, and attn_tc_group elsewhere. */
#include <cuda_bf16.h>
#include <math.h>

#include "model/cuda/attention_tc.cuh"
#include "model/cuda/cuda_device.cuh"
#include "model/cuda/cuda_internal.h"
#include "model/cuda/hopper.cuh"

namespace {

constexpr uint32_t WG_D = 64;                   /* a key's or a Vᵀ row's 64 bf16: one swizzle row */
constexpr uint32_t WG_TILE_BYTES = TC_BK * 128; /* a 64-row tile, swizzled */

/* where dim j of row r of a swizzled tile is (rope_tile's Rows) */
struct swizzled_rows {
    __device__ static bf16 *at(void *tile, uint32_t r, uint32_t j)
    {
        return (bf16 *)((uint8_t *)tile + r * 128 + ((j / 8) ^ (r % 8)) * 16 + (j % 8) * 2);
    }
};

/* Key rows row0..row0+63 of one kv head into a swizzled tile (row r's 16-byte chunk c at
 * r·128 + (c XOR r % 8)·16; rows ≥ len zeros) through cp.async, by the block's THREADS. */
template <uint32_t THREADS>
__device__ __forceinline__ void wg_load_keys(uint8_t *tile, const bf16 *base, uint32_t ld, uint32_t row0,
                                             uint32_t len)
{
    for (uint32_t i = threadIdx.x; i < TC_BK * 8; i += THREADS) {
        const uint32_t r = i / 8, c = i % 8;
        uint8_t *dst = tile + r * 128 + ((c ^ (r % 8)) * 16);
        if (row0 + r < len)
            cp_async16(dst, base + (size_t)(row0 + r) * ld + c * 8);
        else
            *reinterpret_cast<uint4 *>(dst) = make_uint4(0, 0, 0, 0);
    }
}

/* Value tiles 0..tiles-1 of one kv head, transposed into swizzled tiles: Vᵀ row n (dim n) holds
 * the tile's 64 keys. A work item is 2 neighbouring keys × 8 dims: two 16-byte loads, then eight
 * 4-byte stores of (key 2p, key 2p + 1) pairs. A warp's lanes take 32 neighbouring key pairs of
 * the same dims, so each store of the warp falls in 32 different banks. Every load is issued
 * before the first store: one load latency for the block, not one per item. */
template <uint32_t THREADS>
__device__ __forceinline__ void wg_load_values_transposed(uint8_t *vt, const bf16 *base, uint32_t ld,
                                                          uint32_t tiles, uint32_t len)
{
    constexpr uint32_t ITEMS = TC_BK / 2 * (WG_D / 8); /* per tile */
    constexpr uint32_t STEPS = TC_GROUP_TILES * ITEMS / THREADS;
    static_assert(ITEMS % THREADS == 0, "a step of the block's threads stays within one tile");
    uint4 even[STEPS], odd[STEPS];
#pragma unroll
    for (uint32_t st = 0; st < STEPS; st++) {
        const uint32_t i = threadIdx.x + st * THREADS, kt = i / ITEMS, p = i % 32, c = i % ITEMS / 32;
        const uint32_t key = kt * TC_BK + 2 * p;
        even[st] = odd[st] = make_uint4(0, 0, 0, 0);
        if (kt < tiles && key < len)
            even[st] = *reinterpret_cast<const uint4 *>(base + (size_t)key * ld + c * 8);
        if (kt < tiles && key + 1 < len)
            odd[st] = *reinterpret_cast<const uint4 *>(base + (size_t)(key + 1) * ld + c * 8);
    }
#pragma unroll
    for (uint32_t st = 0; st < STEPS; st++) {
        const uint32_t i = threadIdx.x + st * THREADS, kt = i / ITEMS, p = i % 32, c = i % ITEMS / 32;
        if (kt >= tiles)
            continue;
        const uint16_t *a = reinterpret_cast<const uint16_t *>(&even[st]);
        const uint16_t *b = reinterpret_cast<const uint16_t *>(&odd[st]);
        uint8_t *tile = vt + kt * WG_TILE_BYTES;
#pragma unroll
        for (uint32_t e = 0; e < 8; e++) /* row 8c + e: its row % 8 is e */
            *reinterpret_cast<uint32_t *>(tile + (8 * c + e) * 128 + ((p / 4) ^ e) * 16 + (p % 4) * 4) =
                (uint32_t)a[e] | (uint32_t)b[e] << 16;
    }
}

/* S = Q·K_ktᵀ for one warpgroup's 64 query rows, issued as one wgmma group (not waited for) */
template <uint32_t KD>
__device__ __forceinline__ void wg_scores_issue(float (&s)[TC_BK / 8][4], uint32_t (&qa)[KD][4], uint64_t keys)
{
    wgmma_pin(qa); /* loaded (and rotated) before the fence */
    wgmma_fence(); /* the query fragments in place: before the products read them */
    wgmma_m64n64k16_rs_overwrite(s, qa[0], keys);
#pragma unroll
    for (uint32_t kk = 1; kk < KD; kk++)
        wgmma_m64n64k16_rs(s, qa[kk], keys + 2 * kk, 1);
    wgmma_commit();
}

/* O += P·V_kt issued as one wgmma group (not waited for), P from the probabilities s (the A
 * fragments of keys 16kc..16kc+15 are S's accumulators 2kc and 2kc + 1) */
template <uint32_t D>
__device__ __forceinline__ void wg_values_issue(const float (&s)[TC_BK / 8][4], float (&o)[D / 8][4], uint32_t kt,
                                                const uint8_t *vtbuf)
{
    uint32_t pa[TC_BK / 16][4];
#pragma unroll
    for (uint32_t kc = 0; kc < TC_BK / 16; kc++) {
        pa[kc][0] = pack_bf16(s[2 * kc][0], s[2 * kc][1]);
        pa[kc][1] = pack_bf16(s[2 * kc][2], s[2 * kc][3]);
        pa[kc][2] = pack_bf16(s[2 * kc + 1][0], s[2 * kc + 1][1]);
        pa[kc][3] = pack_bf16(s[2 * kc + 1][2], s[2 * kc + 1][3]);
    }
    const uint64_t values = smem_descriptor(vtbuf + kt * WG_TILE_BYTES);
    wgmma_pin(pa);
    wgmma_pin(o); /* rescaled before the fence, not between it and the products */
    wgmma_fence();
#pragma unroll
    for (uint32_t kc = 0; kc < TC_BK / 16; kc++)
        wgmma_m64n64k16_rs(o, pa[kc], values + 2 * kc, 1);
    wgmma_commit();
}

/* The probabilities of key tile kt's scores s (the causal mask on the last, diagonal one) and the
 * factors a0, a1 that bring o to the new maxima */
__device__ __forceinline__ void wg_probabilities(float (&s)[TC_BK / 8][4], uint32_t kt, uint32_t qt, uint32_t row0,
                                                 uint32_t row1, uint32_t len, uint32_t lane, float scale_log2,
                                                 float &m0, float &m1, float &l0, float &l1, float &a0, float &a1)
{
    const cu_attn_dropout none = {};
    if (kt < qt)
        tc_probabilities<false, false>(s, kt * TC_BK, row0, row1, len, lane, scale_log2, 0, none, m0, m1, l0, l1, a0,
                                       a1);
    else
        tc_probabilities<false, true>(s, kt * TC_BK, row0, row1, len, lane, scale_log2, 0, none, m0, m1, l0, l1, a0,
                                      a1);
}

/* A head's walk over its TILES key tiles with the softmax of each tile after the first running
 * while the tensor cores compute the tile before's P·V (FlashAttention-3's overlap within a
 * warpgroup): tile kt + 1's S = Q·Kᵀ and tile kt's P·V are issued together, the first wait
 * leaves only P·V running, and o is rescaled once that is done too. Every tile ends with no
 * product running, so ptxas can tell which registers each one holds; unrolled for a tile count
 * known at compile time, the two tiles of scores that take turns are named statically. */
template <uint32_t D, uint32_t TILES>
__device__ __forceinline__ void wg_walk_overlapped(float (&o)[D / 8][4], uint32_t (&qa)[D / 16][4],
                                                   const uint8_t *kbuf, const uint8_t *vtbuf, uint32_t row0,
                                                   uint32_t row1, uint32_t len, uint32_t lane, float scale_log2,
                                                   float &m0, float &m1, float &l0, float &l1)
{
    float s[2][TC_BK / 8][4], a0, a1;
    wg_scores_issue<D / 16>(s[0], qa, smem_descriptor(kbuf));
    wgmma_wait<0>();
    wgmma_pin(s[0]);
    wg_probabilities(s[0], 0, TILES - 1, row0, row1, len, lane, scale_log2, m0, m1, l0, l1, a0, a1); /* o = 0 */
#pragma unroll
    for (uint32_t kt = 0; kt < TILES; kt++) {
        if (kt + 1 < TILES)
            wg_scores_issue<D / 16>(s[(kt + 1) % 2], qa, smem_descriptor(kbuf + (kt + 1) * WG_TILE_BYTES));
        wg_values_issue<D>(s[kt % 2], o, kt, vtbuf);
        if (kt + 1 < TILES) {
            wgmma_wait<1>(); /* the scores, issued first */
            wgmma_pin(s[(kt + 1) % 2]);
            wg_probabilities(s[(kt + 1) % 2], kt + 1, TILES - 1, row0, row1, len, lane, scale_log2, m0, m1, l0, l1, a0,
                             a1);
            wgmma_wait<0>(); /* P·V, into the o that is rescaled now */
            wgmma_pin(o);
            tc_rescale(o, a0, a1);
        } else {
            wgmma_wait<0>();
            wgmma_pin(o);
        }
    }
}

/* 3 blocks a multiprocessor: 65 KB of shared memory each (4 key and 4 Vᵀ tiles), ≤ 168
 * registers a thread. OVERLAP: each key tile's softmax runs while the tile before's P·V does
 * (wg_walk_overlapped), at the cost of a second tile of scores in registers: 2 blocks a
 * multiprocessor then. WGS = 2 (CU_ATTN_WG_PAIR): two warpgroups, each its own query tile of
 * a pair (2p, 2p + 1), over the key and value tiles the block loads once for both: the same 65
 * KB then serve 8 warps, and 2 blocks of ≤ 128 registers a thread make 16 warps a
 * multiprocessor where 3 single blocks make 12. */
template <bool ROPE, bool OVERLAP, uint32_t WGS>
__global__ void __launch_bounds__(TC_THREADS * WGS, OVERLAP || WGS == 2 ? 2 : 3)
    attn_wg_group(bf16 *out, uint32_t ldo, const bf16 *qkv, uint32_t ldqkv, const uint32_t *seq_off, uint32_t heads,
                  uint32_t kv_heads, float scale_log2, const float *cos_t, const float *sin_t)
{
    static_assert(WGS == 1 || (WGS == 2 && !OVERLAP), "pairs of query tiles walk in turn");
    constexpr uint32_t D = WG_D, KD = D / 16, ND = D / 8, NK = TC_BK / 8, THREADS = TC_THREADS * WGS;
    extern __shared__ __align__(1024) unsigned char wg_smem[];
    /* the swizzle is a function of the address: tiles start on 1024-byte boundaries */
    uint8_t *const kbuf = (uint8_t *)(((uintptr_t)wg_smem + 1023) & ~(uintptr_t)1023); /* [gridDim.x · WGS] */
    uint8_t *const vtbuf = kbuf + gridDim.x * WGS * WG_TILE_BYTES;                       /* [gridDim.x · WGS] */
    const group_block gb = group_block_here<D, WGS>(qkv, ldqkv, seq_off, heads, kv_heads);
    if (gb.q0 >= gb.len)
        return;
    const uint32_t kvh = gb.kvh, group = gb.group, start = gb.start, len = gb.len, lane = gb.lane;
    const uint32_t t = gb.t, row0 = gb.row0, row1 = gb.row1;
    /* this warpgroup's query tile, and the last key tile any of the block's walks reaches (with
     * one warpgroup, its own: threadIdx.x < TC_THREADS, which the compiler cannot tell) */
    const uint32_t qt = WGS == 1 ? gb.qt : gb.qt + threadIdx.x / TC_THREADS;
    const uint32_t last_in_len = (len - 1) / TC_BK, block_last = gb.qt + WGS - 1;
    const uint32_t last = WGS == 1 ? qt : block_last < last_in_len ? block_last : last_in_len;
    const bf16 *rows = gb.rows;

    for (uint32_t kt = 0; kt <= last; kt++)
        wg_load_keys<THREADS>(kbuf + kt * WG_TILE_BYTES, gb.kbase, ldqkv, kt * TC_BK, len);
    cp_async_commit();
    uint32_t qa[KD][4];
    tc_q_fragments<D>(qa, rows + (size_t)kvh * group * D, ldqkv, row0, row1, len, t);
    wg_load_values_transposed<THREADS>(vtbuf, gb.vbase, ldqkv, last + 1, len);
    cp_async_wait<0>();
    if constexpr (ROPE) {
        __syncthreads(); /* every key row in place before any thread rotates one */
        for (uint32_t kt = 0; kt <= last; kt++)
            rope_tile<D, swizzled_rows, THREADS>(kbuf + kt * WG_TILE_BYTES, kt * TC_BK, len, cos_t, sin_t);
    }
    fence_view_async_shared(); /* the rotated keys and the stored Vᵀ, for the products' reads */
    __syncthreads();
    if (WGS > 1 && qt * TC_BQ >= len)
        return; /* the pair's second tile lies past the sequence (no barrier follows) */

    for (uint32_t hi = 0; hi < group; hi++) {
        const uint32_t h = kvh * group + hi;
        /* the next head's rows are on their way while this one is computed */
        uint32_t next[KD][4];
        tc_q_fragments<D>(next, rows + (size_t)(hi + 1 < group ? h + 1 : h) * D, ldqkv, row0, row1, len, t);
        if constexpr (ROPE)
            rope_fragments<D>(qa, row0, row1, len, t, cos_t, sin_t);
        float o[ND][4], m0, m1, l0, l1;
        tc_walk_start(o, m0, m1, l0, l1);
        if constexpr (OVERLAP) {
            static_assert(TC_GROUP_TILES == 4, "a walk of 1 to 4 key tiles");
#define WG_WALK_ARGS o, qa, kbuf, vtbuf, row0, row1, len, lane, scale_log2, m0, m1, l0, l1
            if (qt == 0)
                wg_walk_overlapped<D, 1>(WG_WALK_ARGS);
            else if (qt == 1)
                wg_walk_overlapped<D, 2>(WG_WALK_ARGS);
            else if (qt == 2)
                wg_walk_overlapped<D, 3>(WG_WALK_ARGS);
            else
                wg_walk_overlapped<D, 4>(WG_WALK_ARGS);
#undef WG_WALK_ARGS
        } else {
            for (uint32_t kt = 0; kt <= qt; kt++) {
                float s[NK][4], a0, a1;
                wg_scores_issue<KD>(s, qa, smem_descriptor(kbuf + kt * WG_TILE_BYTES));
                wgmma_wait<0>(); /* S, and the tile before's P·V, whose o the softmax rescales */
                wgmma_pin(s);
                wgmma_pin(o);
                wg_probabilities(s, kt, qt, row0, row1, len, lane, scale_log2, m0, m1, l0, l1, a0, a1);
                tc_rescale(o, a0, a1);
                wg_values_issue<D>(s, o, kt, vtbuf);
            }
        }
        wgmma_wait<0>();
        wgmma_pin(o);
        tc_finish<D>(out, ldo, NULL, start, len, h, heads, row0, row1, lane, o, m0, m1, l0, l1);
        tc_next_head(qa, next);
    }
}

template <bool ROPE, bool OVERLAP, uint32_t WGS>
cudaError_t launch_wg_group(void *out, uint32_t ldo, const void *qkv, uint32_t ldqkv, const uint32_t *seq_off,
                            uint32_t nseq, uint32_t max_len, uint32_t heads, uint32_t kv_heads, float scale,
                            const float *cos_t, const float *sin_t, cudaStream_t s)
{
    const uint32_t blocks = (group_tiles(max_len) + WGS - 1) / WGS; /* per kv head and sequence */
    const dim3 grid(blocks, kv_heads, nseq);
    const size_t smem = 2 * (size_t)blocks * WGS * WG_TILE_BYTES + 1024;
    static bool smem_raised; /* once, to the most any launch takes, on the first (eager) call */
    if (!smem_raised) {
        cudaError_t e = cudaFuncSetAttribute(attn_wg_group<ROPE, OVERLAP, WGS>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             (int)(2 * TC_GROUP_TILES * WG_TILE_BYTES + 1024));
        if (e != cudaSuccess)
            return e;
        smem_raised = true;
    }
    attn_wg_group<ROPE, OVERLAP, WGS><<<grid, TC_THREADS * WGS, smem, s>>>(
        (bf16 *)out, ldo, (const bf16 *)qkv, ldqkv, seq_off, heads, kv_heads, scale * 1.4426950408889634f, cos_t,
        sin_t);
    return cudaGetLastError();
}

constexpr int MAX_DEVICES = 64;
signed char hopper[MAX_DEVICES]; /* per device: 0 not asked yet, 1 runs sm_90a code, -1 not */

} // namespace

extern "C" bool cu_attention_wg_serves(uint32_t d)
{
    int device = 0;
    if (d != WG_D)
        return false;
    if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= MAX_DEVICES) {
        cudaGetLastError();
        return false;
    }
    if (hopper[device] == 0)
        hopper[device] = device_runs_sm90a(device) ? 1 : -1;
    return hopper[device] > 0;
}

extern "C" cudaError_t cu_attention_wg(void *out, uint32_t ldo, const void *qkv, uint32_t ldqkv,
                                       const uint32_t *seq_off, uint32_t nseq, uint32_t max_len, uint32_t heads,
                                       uint32_t kv_heads, float scale, const float *cos_t, const float *sin_t,
                                       enum cu_attn_impl impl, cudaStream_t s)
{
#define WG_ARGS out, ldo, qkv, ldqkv, seq_off, nseq, max_len, heads, kv_heads, scale
    if (impl == CU_ATTN_WG_OVERLAP)
        return cos_t ? launch_wg_group<true, true, 1>(WG_ARGS, cos_t, sin_t, s)
                     : launch_wg_group<false, true, 1>(WG_ARGS, NULL, NULL, s);
    if (impl == CU_ATTN_WG_PAIR)
        return cos_t ? launch_wg_group<true, false, 2>(WG_ARGS, cos_t, sin_t, s)
                     : launch_wg_group<false, false, 2>(WG_ARGS, NULL, NULL, s);
    return cos_t ? launch_wg_group<true, false, 1>(WG_ARGS, cos_t, sin_t, s)
                 : launch_wg_group<false, false, 1>(WG_ARGS, NULL, NULL, s);
#undef WG_ARGS
}
