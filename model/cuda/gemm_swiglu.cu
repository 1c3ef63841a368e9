/* gemm_swiglu.cu — the Qwen2 MLP's first half in one Hopper kernel: h = silu(x·Wgᵀ) ⊙ (x·Wuᵀ)
 * with the SwiGLU computed in the GEMM's epilogue, so that the [rows, 2F] gate/up product never
 * goes through device memory (cuBLASLt has no such epilogue; as a separate pass the SwiGLU reads
 * and writes 3 × rows × F bf16 values at bandwidth: 15 of 97 ms of Qwen2.5-0.5B at B256 T256 on
 * an H100).
 *
 * Compiled for sm_90a only (wgmma): a persistent grid, one CTA per multiprocessor, each of 3
 * warpgroups (4 in the "-w3" variants). Warpgroup 0 is the producer: one thread loads the tiles
 * with the bulk tensor copy engine (TMA, 128-byte swizzle) into a 4-stage ring of shared memory,
 * completing on mbarriers. Warpgroups 1 and 2 (and 3) consume: each multiplies 64 rows of a
 * 128-row (192-row) tile of x by a 256-row tile of W made of 128 gate rows and the 128 up rows of
 * the same outputs (wgmma m64n256k16, or two m64n128k16), so one thread holds a gate value and
 * its up partner in registers r and r + 64, and writes silu(g) · u as bf16 from the fp32
 * accumulators, 8 neighbouring outputs per 16-byte store (W's rows come in cu_gemm_swiglu_row's
 * order, which puts them in one thread's registers). Tiles run row block by row block (all of W,
 * 2F × C, stays in L2).
 *
 * Variants (cu_gemm_swiglu_variant; model/cuda/NOTES.md has their timings): "c1", the plain
 * kernel; "c2", clusters of 2 CTAs on neighbouring row blocks of the same outputs that share the
 * W tile, each loading one half (gate or up rows) and multicasting it to both, so a CTA reads 32
 * of a stage's 48 KB from L2; "c4", clusters of 2 × 2 CTAs that also share the x tile between
 * neighbouring output tiles, 24 of 48 KB. A stage is free again when the consumers of every CTA
 * of the cluster have released it (its empty barrier counts the warps of all). "-inflight":
 * consumers that keep one chunk's wgmma group running while they release the stage before it.
 * "-w3": three consumer warpgroups on tiles of 192 rows, which take a fifth less operand traffic
 * from L2 per product; their 512 threads start with 128 registers each, so the producer
 * warpgroup hands most of its own to the consumers (setmaxnreg). "-pingpong": the two consumers
 * take turns on tiles of 64 rows (a 5-stage ring of 40 KB stages), one's SiLU and stores running
 * while the other's products do; each 64-row tile loads its own W, 1.67 times the L2 traffic
 * per product of the 128-row tiles (c2-pingpong shares W as c2 does). "-stagger": the consumers
 * share every tile as in c2, but each starts a tile 1 (-w3) or 2 chunks after the one before
 * it, so that their epilogues come one after another, each beside the others' products; the
 * leader then runs up to 2 stages ahead of the last consumer, which leaves it 2 of the 4 to
 * prefetch into. "-early" (three consumers): the epilogue runs beside the consumer's own
 * products, the first half of the outputs' SiLU beside the tile's last products for the second
 * half, the second half's beside the next tile's first products for the first half (W's tile
 * then holds each half's gate rows next to its up rows, and the accumulators of a half are one
 * m64n128k16's). */
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>

#include "model/cuda/cuda_device.cuh"
#include "model/cuda/cuda_internal.h"
#include "model/cuda/hopper.cuh"

namespace {

constexpr uint32_t TILE_OUT = 128;    /* outputs of h per tile: 128 gate + 128 up rows of W */
constexpr uint32_t TILE_K = 64;       /* 64 bf16 = one 128-byte swizzle row */
constexpr uint32_t W_BYTES = 2 * TILE_OUT * TILE_K * 2;

/* A CTA of CONSUMERS consumer warpgroups and the producer warpgroup. Together (PINGPONG false)
 * the consumers take 64 rows each of one tile; taking turns (PINGPONG) each takes whole tiles of
 * 64 rows, every CONSUMERS-th of the CTA's, so that one's epilogue runs under the others' products. */
template <uint32_t CONSUMERS, bool PINGPONG, uint32_t STAGGER = 0> struct cta_shape {
    static constexpr uint32_t rows = PINGPONG ? 64 : 64 * CONSUMERS; /* of x (tokens) per tile */
    static constexpr uint32_t x_bytes = rows * TILE_K * 2;
    static constexpr uint32_t stage_bytes = x_bytes + W_BYTES;
    static constexpr uint32_t stages = PINGPONG ? 5 : 4; /* as many as shared memory holds */
    static constexpr uint32_t threads = 128 * (CONSUMERS + 1);
    static constexpr uint32_t warps_per_stage = PINGPONG ? 4 : 4 * CONSUMERS; /* that read a stage */
    /* the ring, 1024-byte aligned as the 128-byte swizzle needs, then the barriers: full and
     * empty per stage, and one per consumer taking turns or staggered */
    static constexpr uint32_t barriers = 2 * stages + (PINGPONG || STAGGER ? CONSUMERS : 0);
    static constexpr size_t smem_bytes = stages * stage_bytes + 1024 + barriers * sizeof(uint64_t);
    static_assert(smem_bytes <= 232448, "Hopper's shared memory per block (227 KB)");
};

/* Three consumers hold 128 fp32 accumulators per thread each: their 512 threads start with
 * 65,536 / 512 = 128 registers, so the producer warpgroup, whose one working thread needs few,
 * gives most of its own to them (24 · 128 + 160 · 384 = 64,512 of 65,536). */
constexpr uint32_t PRODUCER_REGISTERS = 24, CONSUMER_REGISTERS = 160;

/* The PTX primitives (hopper.cuh has the wgmma fence, commit and wait and the descriptor). Under
 * NETLM_CUDA_EMULATE (tests/emulate/cuda_emulate.h) a host emulation of each stands in for them. */
#ifndef NETLM_CUDA_EMULATE
__device__ __forceinline__ void barrier_init(uint64_t *bar, uint32_t count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}

/* makes the barriers' initialisation visible to the cluster and the bulk copy engine */
__device__ __forceinline__ void barrier_init_fence()
{
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

__device__ __forceinline__ void barrier_expect_bytes(uint64_t *bar, uint32_t bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes)
                 : "memory");
}

/* Waits until the barrier's phase of this parity has completed. */
__device__ __forceinline__ void barrier_wait(uint64_t *bar, uint32_t parity)
{
    uint32_t done;
    do {
        asm volatile("{\n"
                     ".reg .pred p;\n"
                     "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n"
                     "}\n"
                     : "=r"(done)
                     : "r"(smem_addr(bar)), "r"(parity)
                     : "memory");
    } while (!done);
}

__device__ __forceinline__ void barrier_arrive(uint64_t *bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}

/* Arrives on the barrier at the same place in the shared memory of CTA `rank` of the cluster. */
__device__ __forceinline__ void barrier_arrive_cluster(uint64_t *bar, uint32_t rank)
{
    uint32_t remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_addr(bar)), "r"(rank));
    asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];" ::"r"(remote) : "memory");
}

__device__ __forceinline__ void cluster_sync()
{
    asm volatile("barrier.cluster.arrive.release.aligned;\n"
                 "barrier.cluster.wait.acquire.aligned;" ::: "memory");
}

/* One box into the same place of the shared memory of the cluster's CTAs in `ctas` (a bit per
 * rank), each counting it on its own barrier at bar's place. */
__device__ __forceinline__ void tma_load_multicast(void *dst, const CUtensorMap *map, uint32_t inner, uint32_t outer,
                                                   uint64_t *bar, uint16_t ctas)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
                 " [%0], [%1, {%2, %3}], [%4], %5;" ::"r"(smem_addr(dst)),
                 "l"((uint64_t)map), "r"(inner), "r"(outer), "r"(smem_addr(bar)), "h"(ctas)
                 : "memory");
}

/* One box of a 2-D tensor map (inner coordinate first) into shared memory, counted on bar. */
__device__ __forceinline__ void tma_load(void *dst, const CUtensorMap *map, uint32_t inner, uint32_t outer,
                                         uint64_t *bar)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3}], [%4];" ::"r"(smem_addr(dst)),
                 "l"((uint64_t)map), "r"(inner), "r"(outer), "r"(smem_addr(bar))
                 : "memory");
}

/* 1/x in one MUFU operation (denormals flushed to zero) */
__device__ __forceinline__ float rcp_approx(float x)
{
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* Changes the registers each thread of the warpgroup owns (the whole warpgroup executes it). */
template <uint32_t REGISTERS> __device__ __forceinline__ void registers_release()
{
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(REGISTERS));
}
template <uint32_t REGISTERS> __device__ __forceinline__ void registers_claim()
{
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(REGISTERS));
}

/* 8, 32 or 64 accumulators from d[i] on as read-write operands of a wgmma's inline asm, in order. */
#define WGMMA_ACC8(d, i)                                                                           \
    "+f"(d[(i) + 0]), "+f"(d[(i) + 1]), "+f"(d[(i) + 2]), "+f"(d[(i) + 3]), "+f"(d[(i) + 4]),       \
        "+f"(d[(i) + 5]), "+f"(d[(i) + 6]), "+f"(d[(i) + 7])
#define WGMMA_ACC32(d, i)                                                                          \
    WGMMA_ACC8(d, (i) + 0), WGMMA_ACC8(d, (i) + 8), WGMMA_ACC8(d, (i) + 16), WGMMA_ACC8(d, (i) + 24)
#define WGMMA_ACC64(d, i) WGMMA_ACC32(d, i), WGMMA_ACC32(d, (i) + 32)

/* D[64 × 256] (+)= A[64 × 16] · B[256 × 16]ᵀ, both from shared memory (128-byte swizzle, K
 * contiguous), the accumulators in 128 registers per thread of the warpgroup. */
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t desc_a, uint64_t desc_b,
                                                 uint32_t accumulate)
{
    asm volatile("{\n"
                 ".reg .pred acc;\n"
                 "setp.ne.b32 acc, %130, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
                 "%128, %129, acc, 1, 1, 0, 0;\n"
                 "}\n"
        : WGMMA_ACC64(d, 0), WGMMA_ACC64(d, 64)
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

/* D[64 × 128] (+)= A[64 × 16] · B[128 × 16]ᵀ into d[LO .. LO + 31] and d[HI .. HI + 31], laid out
 * as m64n256k16's first 64 registers (in the kernel, LO + 32 = HI: one half of d). */
template <uint32_t LO, uint32_t HI>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[128], uint64_t desc_a, uint64_t desc_b, uint32_t accumulate)
{
    asm volatile("{\n"
                 ".reg .pred acc;\n"
                 "setp.ne.b32 acc, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
                 "%64, %65, acc, 1, 1, 0, 0;\n"
                 "}\n"
        : WGMMA_ACC32(d, LO), WGMMA_ACC32(d, HI)
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

#endif /* NETLM_CUDA_EMULATE */

/* wgmma_pin for one half of the accumulators, d[64·H .. 64·H + 63] (products running into the
 * other are left alone). */
template <uint32_t H> __device__ __forceinline__ void pin_half(float (&d)[128])
{
    wgmma_pin(reinterpret_cast<float(&)[64]>(d[64 * H]));
}

/* silu(g0) · u0 and silu(g1) · u1 as a bf16 pair. The epilogue runs with the tensor cores idle
 * (all consumers finish a tile together), and the multiprocessor's 16 MUFU lanes a clock, not
 * its arithmetic, bound it: at 2 MUFU operations per output (e^-g, then 1/(1 + e^-g)) they are
 * ~3,000 of a tile's ~33,000 clocks. Here two outputs share one reciprocal: with a = e^-|g| ∈
 * (0, 1] and y = 1 + a ∈ (1, 2], sigmoid(g) is 1/y for g ≥ 0 and a/y below, and 1/y0, 1/y1 are
 * y1 / (y0·y1) and y0 / (y0·y1) (the product at most 4: no overflow, no special case for large
 * |g|): 1.5 MUFU operations per output. Four outputs per reciprocal would be 1.25, but every
 * variant then spills registers, the two-consumer ones' 168 too. Error: a few
 * fp32 roundings more than one division (~1e-6 relative), far below the bf16 rounding. */
__device__ __forceinline__ __nv_bfloat162 silu_times2(float g0, float g1, float u0, float u1)
{
    const float a0 = exp2_ftz(fabsf(g0) * -1.4426950408889634f), a1 = exp2_ftz(fabsf(g1) * -1.4426950408889634f);
    const float y0 = 1.0f + a0, y1 = 1.0f + a1, r = rcp_approx(y0 * y1);
    const float s0 = (g0 >= 0.0f ? 1.0f : a0) * (r * y1), s1 = (g1 >= 0.0f ? 1.0f : a1) * (r * y0);
    return __floats2bfloat162_rn(g0 * s0 * u0, g1 * s1 * u1);
}

/* No CTA leaves while a peer may still arrive on its barriers (the warp reconverges first: the
 * cluster barrier is a whole-warp instruction). */
__device__ __forceinline__ void leave_cluster()
{
    __syncwarp();
    cluster_sync();
}

/* A tile is cta_shape's rows of x (64 per consumer together, 64 taking turns) by 128 outputs. A
 * cluster is ROWS × OUTS CTAs: ROWS neighbouring row blocks of the same outputs share the W tile
 * (each loads the gate or the up half, ROWS = 2, and multicasts it to the others), OUTS
 * neighbouring output tiles of the same rows share the x tile (each loads 1 / OUTS of its rows
 * and multicasts them). Rank r = row_sub + ROWS · out_sub. The x tensor map's box is the tile's
 * rows / OUTS. IN_FLIGHT: wgmma groups a consumer leaves running when it moves to the next stage
 * (0: it waits for each chunk's products before releasing the chunk's stage; 1: it keeps the last
 * chunk's running and releases the stage before). STAGGER (0: none): consumer p starts each tile
 * only once consumer p - 1 has the products of the tile's first STAGGER chunks, so the consumers
 * reach their epilogues one after another and each one's SiLU and stores run beside the others'
 * products instead of with the tensor cores idle. Every consumer warp that reads a stage releases
 * it in every CTA of the cluster, since up to three of them write into each CTA's stage. */
template <uint32_t ROWS, uint32_t OUTS, int IN_FLIGHT, uint32_t CONSUMERS, bool PINGPONG, uint32_t STAGGER, bool EARLY>
__global__ void __launch_bounds__(cta_shape<CONSUMERS, PINGPONG, STAGGER>::threads, 1)
    gemm_swiglu_kernel(const __grid_constant__ CUtensorMap x_map, const __grid_constant__ CUtensorMap w_map,
                       __nv_bfloat16 *h, uint32_t ldh, const float *row_scale, uint32_t n, uint32_t k, uint32_t f)
{
    static_assert((ROWS == 1 || ROWS == 2) && (OUTS == 1 || OUTS == 2), "clusters of 1, 2 or 2 × 2 CTAs");
    static_assert(CONSUMERS == 2 || CONSUMERS == 3, "two or three consumer warpgroups");
    static_assert(!PINGPONG || CONSUMERS == 2, "two consumers taking turns");
    static_assert(!PINGPONG || STAGGER == 0, "consumers taking turns are not staggered");
    static_assert(!EARLY || (CONSUMERS == 3 && !PINGPONG && STAGGER == 0),
                  "an early start splits the three consumers' two m64n128k16 products");
    using shape = cta_shape<CONSUMERS, PINGPONG, STAGGER>;
    constexpr uint32_t CLUSTER = ROWS * OUTS, TILE_ROWS = shape::rows, X_BYTES = shape::x_bytes;
    constexpr uint32_t STAGES = shape::stages;
    extern __shared__ uint8_t smem_raw[];
    uint8_t *ring = (uint8_t *)(((uintptr_t)smem_raw + 1023) & ~(uintptr_t)1023);
    uint64_t *full = (uint64_t *)(ring + STAGES * shape::stage_bytes), *empty = full + STAGES;
    /* taking turns: a consumer's turn_ready completes once the other has waited for the last
     * stage of its tile before; staggered: once the consumer before it has the products of the
     * tile's first STAGGER chunks */
    uint64_t *turn_ready = empty + STAGES;
    const uint32_t warpgroup = threadIdx.x / 128, lane = threadIdx.x % 32, warp = (threadIdx.x % 128) / 32;
    const uint32_t rank = blockIdx.x % CLUSTER, cluster = blockIdx.x / CLUSTER, clusters = gridDim.x / CLUSTER;
    const uint32_t row_sub = rank % ROWS, out_sub = rank / ROWS;
    const uint32_t out_groups = (f / TILE_OUT + OUTS - 1) / OUTS;
    const uint32_t groups = ((n + TILE_ROWS - 1) / TILE_ROWS + ROWS - 1) / ROWS * out_groups; /* of CLUSTER tiles */
    const uint32_t chunks = (k + TILE_K - 1) / TILE_K;
    /* the CTAs that share this one's x tile (same row_sub), and its W tile (same out_sub) */
    const uint16_t x_sharers = OUTS == 1 ? 0 : (uint16_t)((1u << row_sub) | (1u << (row_sub + ROWS)));
    const uint16_t w_sharers = ROWS == 1 ? 0 : (uint16_t)(3u << (out_sub * ROWS));

    if (threadIdx.x == 0) {
        for (uint32_t s = 0; s < STAGES; s++) {
            barrier_init(&full[s], 1);
            barrier_init(&empty[s], CLUSTER * shape::warps_per_stage);
        }
        for (uint32_t w = 0; (PINGPONG || STAGGER) && w < CONSUMERS; w++)
            barrier_init(&turn_ready[w], 4);
        barrier_init_fence();
    }
    cluster_sync(); /* the peer's barriers exist before anything is multicast or arrived on */

    if (warpgroup == 0) {
        if constexpr (CONSUMERS == 3)
            registers_release<PRODUCER_REGISTERS>();
        if (threadIdx.x == 0) {
            uint32_t it = 0;
            for (uint32_t group = cluster; group < groups; group += clusters) {
                const uint32_t row0 = (group / out_groups * ROWS + row_sub) * TILE_ROWS;
                const uint32_t out0 = (group % out_groups * OUTS + out_sub) * TILE_OUT;
                for (uint32_t c = 0; c < chunks; c++, it++) {
                    const uint32_t s = it % STAGES;
                    barrier_wait(&empty[s], ((it / STAGES) & 1) ^ 1); /* the first pass finds it free */
                    uint8_t *xs = ring + s * shape::stage_bytes, *ws = xs + X_BYTES;
                    barrier_expect_bytes(&full[s], shape::stage_bytes);
                    if constexpr (OUTS == 1) {
                        tma_load(xs, &x_map, c * TILE_K, row0, &full[s]);
                    } else {
                        /* this CTA's share of the x tile's rows to the CTAs on the same rows */
                        const uint32_t part = TILE_ROWS / OUTS;
                        tma_load_multicast(xs + out_sub * (X_BYTES / OUTS), &x_map, c * TILE_K, row0 + out_sub * part,
                                           &full[s], x_sharers);
                    }
                    if constexpr (EARLY) {
                        /* in halves of the outputs, each half's 64 gate rows then their 64 up
                         * rows (w_map's box: 64 rows); sharing W, this CTA loads the gate (or up)
                         * rows of both halves */
#pragma unroll
                        for (uint32_t b = 0; b < 4; b++) {
                            const uint32_t up = b % 2, half = b / 2;
                            uint8_t *dst = ws + (2 * half + up) * (W_BYTES / 4);
                            const uint32_t src = up * f + out0 + half * (TILE_OUT / 2);
                            if (ROWS == 1)
                                tma_load(dst, &w_map, c * TILE_K, src, &full[s]);
                            else if (up == row_sub)
                                tma_load_multicast(dst, &w_map, c * TILE_K, src, &full[s], w_sharers);
                        }
                    } else if constexpr (ROWS == 1) {
                        tma_load(ws, &w_map, c * TILE_K, out0, &full[s]);
                        tma_load(ws + W_BYTES / 2, &w_map, c * TILE_K, f + out0, &full[s]);
                    } else {
                        /* this CTA's half of the W tile (gate rows, or up rows) to the CTAs on
                         * the same outputs */
                        tma_load_multicast(ws + row_sub * (W_BYTES / 2), &w_map, c * TILE_K, row_sub * f + out0,
                                           &full[s], w_sharers);
                    }
                }
            }
        }
        leave_cluster(); /* each role leaves on its own: ptxas gives the consumers' code the
                          * registers they claimed only where no producer code runs */
        return;
    } else {
        if constexpr (CONSUMERS == 3)
            registers_claim<CONSUMER_REGISTERS>();
        /* together: rows 64·part .. 64·part + 63 of each tile; taking turns: tiles part,
         * part + CONSUMERS, ... of the CTA's */
        const uint32_t part = warpgroup - 1, first_row = PINGPONG ? 0 : 64 * part;
        /* A barrier's phases are told apart by parity alone, so consumer p - 1 must not complete
         * tile t + 1's phase of p's barrier before p has waited for tile t's: it cannot when
         * reaching chunk STAGGER - 1 of tile t + 1 needs a stage that p released in tile t,
         * that is when chunks + STAGGER - 1 >= STAGES. Shorter products run unstaggered. */
        const bool staggered = STAGGER > 0 && chunks >= STAGGER && chunks + STAGGER - 1 >= STAGES;
        float d[128];
        /* accumulator layout: register 4i + {0,1} at row lane/4, columns 8i + 2·(lane%4) +
         * {0,1}; 4i + {2,3} eight rows lower. Columns 0..127 are gates, 128..255 their up
         * partners (EARLY: columns 0..63 the first 64 outputs' gates, 64..127 their ups, 128..255
         * the same for the other 64). With W's rows in cu_gemm_swiglu_row's order, columns 32j +
         * 8a + 2q + e of the gates (q = lane % 4; a = 0..3) are outputs 32j + 8q + 2a + e: 8
         * neighbours, one store. */
        struct tile_rows {
            __nv_bfloat16 *out; /* the thread's first row and column of the tile in h */
            uint32_t row;       /* the first of its rows */
            bool upper, lower;  /* whether its rows (8 apart) are rows of h */
        };
        auto rows_of = [&](uint32_t row0, uint32_t out0) {
            const uint32_t row = row0 + first_row + warp * 16 + lane / 4;
            /* none for the odd last output tile of a 2 × 2 cluster's group */
            const bool stores = OUTS == 1 || out0 < f, upper = stores && row < n, lower = stores && row + 8 < n;
            return tile_rows{h + (size_t)row * ldh + out0 + 8 * (lane % 4), row, upper, lower};
        };
        auto store_outputs = [&](const tile_rows &t, uint32_t j) {
#pragma unroll
            for (uint32_t lower = 0; lower < 2; lower++) {
                uint4 packed;
                uint32_t *words = &packed.x;
                /* read where it is used: two values held through the epilogue spill registers */
                const float rs = row_scale && (lower ? t.lower : t.upper) ? row_scale[t.row + 8 * lower] : 1.0f;
#pragma unroll
                for (uint32_t a = 0; a < 4; a++) {
                    const uint32_t r = 4 * (4 * j + a), g = (EARLY && r >= 32 ? r + 32 : r) + 2 * lower;
                    const uint32_t u = g + (EARLY ? 32 : 64);
                    const __nv_bfloat162 hv = silu_times2(d[g] * rs, d[g + 1] * rs, d[u] * rs, d[u + 1] * rs);
                    words[a] = *reinterpret_cast<const uint32_t *>(&hv);
                }
                if (lower ? t.lower : t.upper)
                    *reinterpret_cast<uint4 *>(t.out + (lower ? 8 * (size_t)ldh : 0) + 32 * j) = packed;
            }
        };
        /* waits for stage `it`'s copies and describes its x rows (this consumer's) and W tile; a
         * descriptor moves in 16-byte steps */
        constexpr uint64_t W_SECOND_HALF = W_BYTES / 2 / 16;
        auto stage_operands = [&](uint32_t it, uint64_t &da, uint64_t &db) {
            const uint32_t s = it % STAGES;
            barrier_wait(&full[s], (it / STAGES) & 1);
            const uint8_t *xs = ring + s * shape::stage_bytes;
            da = smem_descriptor(xs + first_row * (TILE_K * 2));
            db = smem_descriptor(xs + X_BYTES);
        };
        /* a stage's products are done: free it in every CTA of the cluster */
        auto release = [&](uint32_t s) {
            __syncwarp();
            if (lane < CLUSTER)
                barrier_arrive_cluster(&empty[s], lane);
        };
        if constexpr (EARLY) {
            /* The tensor cores run products beside the whole epilogue: the tile's last chunk
             * commits the products of its first 64 outputs (d[0..63]) apart from the other 64's,
             * whose run the first half's SiLU and stores then go beside; once those are stored,
             * their registers take the next tile's first chunk of products for the same outputs,
             * which run beside the second half's. A tile's first chunk so multiplies only the
             * second half (the CTA's first tile's first half starts here). */
            uint64_t da, db;
            /* one chunk's products of one half (H: d[64·H .. 64·H + 63]); first: the tile's */
            auto half_products = [&](auto half, uint64_t a, uint64_t b, bool first) {
                constexpr uint32_t H = decltype(half)::value;
#pragma unroll
                for (uint32_t kk = 0; kk < TILE_K / 16; kk++)
                    wgmma_m64n128k16<64 * H, 64 * H + 32>(d, a + 2 * kk, b + H * W_SECOND_HALF + 2 * kk,
                                                          !first || kk != 0);
            };
            const std::integral_constant<uint32_t, 0> first_half;
            const std::integral_constant<uint32_t, 1> second_half;
            auto start_next = [&](uint32_t it) {
#pragma unroll
                for (uint32_t i = 0; i < 64; i++)
                    d[i] = 0.0f;
                pin_half<0>(d); /* zeroed before the fence */
                stage_operands(it, da, db);
                wgmma_fence();
                half_products(first_half, da, db, true);
                wgmma_commit();
            };
            uint32_t it = 0; /* the producer's count of stages filled */
            if (cluster < groups)
                start_next(it);
            for (uint32_t group = cluster; group < groups; group += clusters) {
                const uint32_t row0 = (group / out_groups * ROWS + row_sub) * TILE_ROWS;
                const uint32_t out0 = (group % out_groups * OUTS + out_sub) * TILE_OUT;
#pragma unroll
                for (uint32_t i = 64; i < 128; i++)
                    d[i] = 0.0f;
                pin_half<1>(d);
                /* chunk 0: the second half's products (the first's are running) */
                uint32_t s = it % STAGES;
                stage_operands(it++, da, db); /* (waited for already: at once) */
                wgmma_fence();
                half_products(second_half, da, db, true);
                wgmma_commit();
                if (chunks > 1) {
                    wgmma_wait<IN_FLIGHT>();
                    if (IN_FLIGHT == 0)
                        release(s);
                    uint32_t previous = s; /* (IN_FLIGHT: not yet released) */
                    for (uint32_t c = 1; c + 1 < chunks; c++, it++) {
                        s = it % STAGES;
                        stage_operands(it, da, db);
                        wgmma_fence();
#pragma unroll
                        for (uint32_t kk = 0; kk < TILE_K / 16; kk++) {
                            wgmma_m64n128k16<0, 32>(d, da + 2 * kk, db + 2 * kk, 1);
                            wgmma_m64n128k16<64, 96>(d, da + 2 * kk, db + W_SECOND_HALF + 2 * kk, 1);
                        }
                        wgmma_commit();
                        wgmma_wait<IN_FLIGHT>();
                        release(IN_FLIGHT ? previous : s);
                        previous = s;
                    }
                    /* the last chunk: each half's products a group of its own */
                    s = it % STAGES;
                    stage_operands(it++, da, db);
                    wgmma_fence();
                    half_products(first_half, da, db, false);
                    wgmma_commit();
                    half_products(second_half, da, db, false);
                    wgmma_commit();
                    wgmma_wait<1>(); /* all but the second half's last */
                    if (IN_FLIGHT > 0)
                        release(previous);
                } else {
                    wgmma_wait<1>(); /* the first half's, started before the tile */
                }
                pin_half<0>(d); /* the first half's reads after the wait */
                const tile_rows t = rows_of(row0, out0);
                store_outputs(t, 0);
                store_outputs(t, 1);
                wgmma_wait<0>();
                pin_half<1>(d);
                release(s);
                if (group + clusters < groups) {
                    start_next(it);
                    pin_half<1>(d); /* the second half's SiLU after the products' issue, not above it */
                }
                store_outputs(t, 2);
                store_outputs(t, 3);
                wgmma_wait<0>();
                pin_half<0>(d);
            }
        } else {
            uint32_t turn = 0; /* the CTA's tiles so far */
            for (uint32_t group = cluster; group < groups; group += clusters, turn++) {
                if (PINGPONG && turn % CONSUMERS != part)
                    continue;
                /* A stage's full barrier tells phases apart by parity alone, so a consumer may
                 * wait on it only once its previous phase has completed: taking turns, this
                 * tile's first stage was last filled for the other consumer's tile before, so
                 * wait until that consumer has taken its last stage (its (turn - 1) / 2-th
                 * arrival). This also keeps the two consumers' products mostly apart, the one's
                 * epilogue under the other's. */
                if (PINGPONG && turn > 0)
                    barrier_wait(&turn_ready[part], (turn - 1) / CONSUMERS & 1);
                if (staggered && part > 0)
                    barrier_wait(&turn_ready[part], turn & 1);
                const uint32_t row0 = (group / out_groups * ROWS + row_sub) * TILE_ROWS;
                const uint32_t out0 = (group % out_groups * OUTS + out_sub) * TILE_OUT;
                uint32_t previous = 0, it = turn * chunks; /* the producer's count of stages filled */
                /* The first products overwrite the accumulators (scale-d 0), but an asm operand
                 * "+f" reads them, so without this the register allocator would keep every
                 * accumulator live from one tile's epilogue into the next tile's first chunk;
                 * zeroed here, each one is free once the epilogue has used it (the
                 * three-consumer variants' 160 registers hold the 16-byte stores' operands only
                 * then). */
#pragma unroll
                for (uint32_t i = 0; i < 128; i++)
                    d[i] = 0.0f;
                for (uint32_t c = 0; c < chunks; c++, it++) {
                    const uint32_t s = it % STAGES;
                    uint64_t da, db;
                    stage_operands(it, da, db);
                    if (PINGPONG && c + 1 == chunks) { /* the other consumer's turn may begin */
                        __syncwarp();
                        if (lane == 0)
                            barrier_arrive(&turn_ready[(part + 1) % CONSUMERS]);
                    }
                    wgmma_fence();
                    if constexpr (CONSUMERS == 2) {
#pragma unroll
                        for (uint32_t kk = 0; kk < TILE_K / 16; kk++)
                            wgmma_m64n256k16(d, da + 2 * kk, db + 2 * kk, (c | kk) != 0);
                    } else {
                        /* ptxas checks each instruction against the registers a thread starts
                         * with, 128 for 512 threads, and m64n256k16's 128 accumulators do not
                         * fit beside its operands: the gate half and the up half as two
                         * m64n128k16 products instead, whose registers together are laid out as
                         * m64n256k16's */
                        const uint64_t db_up = db + W_SECOND_HALF;
#pragma unroll
                        for (uint32_t kk = 0; kk < TILE_K / 16; kk++) {
                            wgmma_m64n128k16<0, 32>(d, da + 2 * kk, db + 2 * kk, (c | kk) != 0);
                            wgmma_m64n128k16<64, 96>(d, da + 2 * kk, db_up + 2 * kk, (c | kk) != 0);
                        }
                    }
                    wgmma_commit();
                    /* with IN_FLIGHT = 1 the chunk before this one is done with its stage; else
                     * this one is: release it in every CTA of the cluster */
                    wgmma_wait<IN_FLIGHT>();
                    if (IN_FLIGHT == 0 || c > 0)
                        release(IN_FLIGHT ? previous : s);
                    if (staggered && part + 1 < CONSUMERS && c + 1 == STAGGER) { /* the next consumer may begin */
                        wgmma_wait<0>();
                        __syncwarp();
                        if (lane == 0)
                            barrier_arrive(&turn_ready[part + 1]);
                    }
                    previous = s;
                }
                wgmma_wait<0>();
                wgmma_pin(d); /* the epilogue's reads of the accumulators stay after the wait */
                if (IN_FLIGHT > 0)
                    release(previous);
                if (OUTS > 1 && out0 >= f) /* the odd last output tile of a 2 × 2 cluster's group: none */
                    continue;
                const tile_rows t = rows_of(row0, out0);
#pragma unroll
                for (uint32_t j = 0; j < 4; j++)
                    store_outputs(t, j);
            }
        }
        leave_cluster();
    }
}

PFN_cuTensorMapEncodeTiled_v12000 encode_tiled;

typedef void (*swiglu_kernel_fn)(CUtensorMap, CUtensorMap, __nv_bfloat16 *, uint32_t, const float *, uint32_t,
                                 uint32_t, uint32_t);

struct variant {
    const char *name;
    swiglu_kernel_fn kernel;
    uint32_t cluster;   /* CTAs */
    uint32_t outs;      /* of them on neighbouring output tiles, sharing x: its box is tile_rows / outs */
    uint32_t tile_rows; /* of x per CTA tile */
    uint32_t w_box;     /* rows of W per copy: 128 (a tile's gates or ups), 64 for -early's halves */
    uint32_t threads;
    size_t smem_bytes;
    uint32_t claimed_registers; /* per CTA by setmaxnreg (0: none) */
};

template <uint32_t ROWS, uint32_t OUTS, int IN_FLIGHT, uint32_t CONSUMERS, bool PINGPONG = false,
          uint32_t STAGGER = 0, bool EARLY = false>
constexpr variant make_variant(const char *name)
{
    using shape = cta_shape<CONSUMERS, PINGPONG, STAGGER>;
    const uint32_t claimed = CONSUMERS == 3 ? 128 * (PRODUCER_REGISTERS + 3 * CONSUMER_REGISTERS) : 0;
    return {name,        gemm_swiglu_kernel<ROWS, OUTS, IN_FLIGHT, CONSUMERS, PINGPONG, STAGGER, EARLY>,
            ROWS * OUTS, OUTS,
            shape::rows, EARLY ? TILE_OUT / 2 : TILE_OUT,
            shape::threads, shape::smem_bytes,
            claimed};
}

/* "-w3": three consumer warpgroups, tiles of 192 rows: a stage's 56 KB feed 1.5 times the
 * products of the 48 KB of a 128-row tile, so the operands' traffic from L2 per product falls by
 * a fifth (c1-w3); with the W tile shared in 2-CTA clusters by 44 % (c2-w3: 40 KB per CTA and
 * stage), and with x shared too by 61 % (c4-w3: 28 KB) */
/* the first is the default: c2-w3, the fastest on the H200 for Qwen2.5-0.5B's 65,536 × 9,728 × 896
 * product (1.86 ms, 614 TFLOP/s; c1 2.79 ms; docs/benchmarks.md) */
const variant variants[] = {
    make_variant<2, 1, 0, 3>("c2-w3"),
    make_variant<1, 1, 0, 2>("c1"),    make_variant<1, 1, 1, 2>("c1-inflight"),
    make_variant<2, 1, 0, 2>("c2"),    make_variant<2, 1, 1, 2>("c2-inflight"),
    make_variant<2, 2, 0, 2>("c4"),    make_variant<2, 2, 1, 2>("c4-inflight"),
    make_variant<1, 1, 0, 3>("c1-w3"), make_variant<2, 2, 0, 3>("c4-w3"),
    make_variant<1, 1, 1, 3>("c1-w3-inflight"), make_variant<2, 1, 1, 3>("c2-w3-inflight"),
    make_variant<2, 2, 1, 3>("c4-w3-inflight"),
    make_variant<1, 1, 0, 2, true>("c1-pingpong"), make_variant<2, 1, 0, 2, true>("c2-pingpong"),
    make_variant<2, 1, 0, 3, false, 1>("c2-w3-stagger"), make_variant<2, 1, 0, 2, false, 2>("c2-stagger"),
    make_variant<2, 1, 0, 3, false, 0, true>("c2-w3-early"),
    make_variant<2, 1, 1, 3, false, 0, true>("c2-w3-inflight-early"),
    make_variant<2, 2, 1, 3, false, 0, true>("c4-w3-inflight-early"),
};
constexpr int VARIANTS = sizeof variants / sizeof variants[0];

/* per device and variant: how many CTAs fit on the GPU at once, in whole clusters (a persistent
 * grid larger than that would run its last clusters after the others, doubling their time) */
constexpr int MAX_DEVICES = 64;
uint32_t resident_ctas[MAX_DEVICES][VARIANTS];

cudaLaunchConfig_t launch_config(const variant &v, uint32_t grid, cudaStream_t s, cudaLaunchAttribute *attr)
{
    cudaLaunchConfig_t launch = {};
    launch.gridDim = dim3(grid);
    launch.blockDim = dim3(v.threads);
    launch.dynamicSmemBytes = v.smem_bytes;
    launch.stream = s;
    if (v.cluster > 1) {
        attr->id = cudaLaunchAttributeClusterDimension;
        attr->val.clusterDim.x = v.cluster;
        attr->val.clusterDim.y = 1;
        attr->val.clusterDim.z = 1;
        launch.attrs = attr;
        launch.numAttrs = 1;
    }
    return launch;
}

/* Sets the variant's shared-memory limit on the current device and counts its resident CTAs. */
bool prepare(int device, int which)
{
    const variant &v = variants[which];
    int sms = 0, fit = 0;
    cudaError_t e = cudaFuncSetAttribute(v.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)v.smem_bytes);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
#ifndef NETLM_CUDA_EMULATE
    /* setmaxnreg.inc waits until the CTA has the registers it asks for: with fewer per thread at
     * launch than the roles claim on average, the consumers would wait forever */
    cudaFuncAttributes compiled;
    if (e == cudaSuccess && v.claimed_registers > 0) {
        e = cudaFuncGetAttributes(&compiled, v.kernel);
        if (e == cudaSuccess && (uint32_t)compiled.numRegs * v.threads < v.claimed_registers)
            e = cudaErrorInvalidConfiguration;
    }
#endif
    if (e == cudaSuccess && v.cluster == 1) {
        e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, v.kernel, (int)v.threads, v.smem_bytes);
        fit *= sms;
    } else if (e == cudaSuccess) {
        cudaLaunchAttribute attr;
        const cudaLaunchConfig_t launch = launch_config(v, (uint32_t)sms / v.cluster * v.cluster, 0, &attr);
        e = cudaOccupancyMaxActiveClusters(&fit, v.kernel, &launch);
        fit *= (int)v.cluster;
    }
    if (e != cudaSuccess || fit < 1) {
        cudaGetLastError();
        return false;
    }
    resident_ctas[device][which] = (uint32_t)fit;
    return true;
}

/* A 2-D bf16 tensor map of rows × cols (row stride ld elements) in boxes of box_rows rows × 64. */
bool tensor_map(CUtensorMap *map, const void *base, uint32_t rows, uint32_t cols, uint32_t ld, uint32_t box_rows)
{
    const cuuint64_t dims[2] = {cols, rows}, strides[1] = {(cuuint64_t)ld * 2};
    const cuuint32_t box[2] = {TILE_K, box_rows}, unit[2] = {1, 1};
    return encode_tiled(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, (void *)base, dims, strides, box, unit,
                        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

} // namespace

extern "C" bool cu_gemm_swiglu_supported(int device, uint32_t k, uint32_t f)
{
    if (!device_runs_sm90a(device) || f == 0 || f % TILE_OUT != 0 || k == 0 || k % 8 != 0 || device < 0 ||
        device >= MAX_DEVICES)
        return false;
    if (!encode_tiled) {
        cudaDriverEntryPointQueryResult found;
        void *fn = NULL;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
                cudaSuccess ||
            found != cudaDriverEntryPointSuccess || !fn) {
            cudaGetLastError();
            return false;
        }
        encode_tiled = (PFN_cuTensorMapEncodeTiled_v12000)fn;
    }
    for (int i = 0; i < VARIANTS; i++)
        if (!prepare(device, i))
            return false;
    return true;
}

extern "C" unsigned cu_gemm_swiglu_variants(void) { return VARIANTS; }

extern "C" const char *cu_gemm_swiglu_variant(unsigned i)
{
    return i < (unsigned)VARIANTS ? variants[i].name : NULL;
}

extern "C" int cu_gemm_swiglu_find(const char *name)
{
    for (int i = 0; i < VARIANTS; i++)
        if (strcmp(variants[i].name, name) == 0)
            return i;
    return -1;
}

extern "C" uint32_t cu_gemm_swiglu_grid(int device, unsigned which, uint32_t n, uint32_t f)
{
    if (device < 0 || device >= MAX_DEVICES || which >= (unsigned)VARIANTS || f < TILE_OUT)
        return 0;
    const variant &v = variants[which];
    const uint32_t rows = v.cluster / v.outs; /* row blocks per group */
    const uint32_t groups =
        (n + rows * v.tile_rows - 1) / (rows * v.tile_rows) * ((f / TILE_OUT + v.outs - 1) / v.outs);
    const uint32_t fit = resident_ctas[device][which] / v.cluster;
    return (groups < fit ? groups : fit) * v.cluster;
}

extern "C" cudaError_t cu_gemm_swiglu(void *h, uint32_t ldh, const void *x, uint32_t ldx, const void *w,
                                      const float *row_scale, uint32_t n, uint32_t k, uint32_t f, unsigned which,
                                      cudaStream_t s)
{
    if (which >= (unsigned)VARIANTS)
        return cudaErrorInvalidValue;
    if (n == 0)
        return cudaSuccess;
    if (!encode_tiled || f % TILE_OUT != 0 || k % 8 != 0 || ldx % 8 != 0 || ldh % 8 != 0 ||
        ((uintptr_t)x | (uintptr_t)w | (uintptr_t)h) % 16 != 0)
        return cudaErrorInvalidValue;
    CUtensorMap x_map, w_map;
    const variant &v = variants[which];
    if (!tensor_map(&x_map, x, n, k, ldx, v.tile_rows / v.outs) || !tensor_map(&w_map, w, 2 * f, k, k, v.w_box))
        return cudaErrorInvalidValue;
    int device = 0;
    cudaError_t e = cudaGetDevice(&device);
    if (e != cudaSuccess)
        return e;
    const uint32_t grid = cu_gemm_swiglu_grid(device, which, n, f);
    if (grid == 0)
        return cudaErrorInvalidValue; /* cu_gemm_swiglu_supported was not called for this device */
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t launch = launch_config(v, grid, s, &attr);
    __nv_bfloat16 *out = (__nv_bfloat16 *)h;
    e = cudaLaunchKernelEx(&launch, v.kernel, x_map, w_map, out, ldh, row_scale, n, k, f);
    return e != cudaSuccess ? e : cudaGetLastError();
}
