/* cuda_emulate.h — runs a kernel file's own CUDA C++ source on the host, so that machines without
 * a GPU (CI's) still check the kernels' indexing, fragment layouts, masks, synchronisation and
 * memory accesses (under ASan too). Forced-included (-include) before the kernel file, which is
 * compiled with NETLM_CUDA_EMULATE (it then leaves its PTX primitives to this file) after its
 * launches `k<<<grid, block, smem, stream>>>(args)` were rewritten to
 * `emu_launch(k, grid, block, smem, stream)(args)` (tests/CMakeLists.txt).
 *
 * A block's threads are fibers (a stack each) on the calling thread; blocks run one after
 * another (the blocks of a cluster together, as one team). A thread runs until it waits at a
 * barrier (__syncthreads, or a warp-wide exchange: shuffles, ldmatrix, mma), then the next one in
 * index order runs (decreasing order with emu_reverse_order); a block whose threads do not all
 * reach a barrier is reported as a deadlock. The warp-level tensor-core instructions follow the
 * fragment tables of the PTX manual (mma.m16n8k16 .bf16, ldmatrix .x4 plain and .trans). A block's dynamic shared
 * memory is a host array (every extern __shared__ name of the kernel the same bytes), filled with
 * NaNs before each block; under ASan the bytes past the launch's dynamic size are poisoned.
 * cp.async copies either at issue (EMU_CP_EARLY: a buffer refilled while other warps still read
 * it shows) or at the wait that covers them (EMU_CP_LATE: a read before that wait shows).
 * Hopper's mbarriers, bulk tensor copies, wgmma and clusters (gemm_swiglu.cu, attention_wgmma.cu)
 * are emulated too: see their section below. */
#ifndef NETLM_CUDA_EMULATE_H
#define NETLM_CUDA_EMULATE_H

/* the fibers' _longjmp goes to another stack, which fortified longjmp would refuse */
#undef _FORTIFY_SOURCE

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include <setjmp.h>
#include <ucontext.h>

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#if defined(__SANITIZE_ADDRESS__)
#include <dlfcn.h>
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

struct emu_index {
    unsigned x, y, z;
};

/* ---- the block's threads: fibers on one OS thread, switching only where a thread waits ---- */

struct emu_copy {
    void *dst;
    const void *src;
    unsigned bytes;
};
struct emu_thread {
    emu_index idx;
    unsigned linear; /* x + bx·(y + by·z) in its block: its lane is linear % 32 */
    unsigned cta;    /* its block's rank in the cluster */
    unsigned team;   /* its place among the cluster's threads: its warp is team / 32 */
    jmp_buf resume;  /* where it waits */
    bool started, done;
    std::vector<std::vector<emu_copy>> copy_groups; /* cp.async: committed, oldest first */
    std::vector<emu_copy> copy_open;
    struct wgmma {
        float *d;
        uint64_t desc_a, desc_b;
        bool accumulate;
        unsigned n;               /* 256, 128 or 64 columns */
        bool a_in_registers;      /* A from the warp's registers (a_warp), not through desc_a */
        uint32_t a_warp[32][4];   /* then: each lane's A fragment, as the warp held it at issue */
        float *d_upper = nullptr; /* registers 32.. of d at their own place (else d + 32) */
    };
    std::vector<std::vector<wgmma>> wgmma_groups; /* committed, oldest first */
    std::vector<wgmma> wgmma_open;
};
struct emu_barrier {
    unsigned expected, arrived, generation;
};

constexpr unsigned EMU_MAX_WARPS = 32;  /* of a block */
constexpr unsigned EMU_MAX_CLUSTER = 4; /* blocks of a cluster, which run together */
constexpr int EMU_MULTIPROCESSORS = 3; /* what the device reports: few, so persistent grids loop */
constexpr size_t EMU_STACK_BYTES = 512 * 1024;
inline std::vector<emu_thread> emu_team;
/* One fiber per place in the team, made once and kept: when its thread ends, the fiber waits at
 * `idle` for the thread of that place in the next block or launch, so starting a thread is one
 * _longjmp, not the two signal-mask system calls of getcontext and setcontext (millions of them
 * for the row kernels over a vocabulary-sized tensor). */
struct emu_fiber {
    std::unique_ptr<char[]> stack;
    ucontext_t context; /* its first start */
    jmp_buf idle;
    bool made; /* entered once: later threads resume it at idle */
};
inline std::vector<std::unique_ptr<emu_fiber>> emu_fibers;
inline emu_thread *emu_current;
inline jmp_buf emu_main_resume;
inline emu_barrier emu_warp_barrier[EMU_MAX_CLUSTER * EMU_MAX_WARPS], emu_cluster_barrier;
inline unsigned emu_cluster_size = 1;
struct emu_cta { /* a block of the cluster that runs */
    emu_index block_idx;
    emu_barrier block_barrier;
    unsigned live; /* threads not exited yet: at 0 its shared memory is gone */
};
inline emu_cta emu_ctas[EMU_MAX_CLUSTER];
inline unsigned emu_live;                   /* threads of the cluster not exited yet */
inline unsigned emu_waits_without_progress; /* a whole round of them: every live thread is stuck */
inline bool emu_reverse_order;              /* threads resume in decreasing index order */
/* not 0: threads resume in an order drawn anew each round from this generator state (xorshift64,
 * never 0 once started: every live thread once per round, so a round where none moves is still a
 * deadlock) */
inline uint64_t emu_shuffle_state;
inline std::vector<unsigned> emu_round; /* this round's order of the team */
inline size_t emu_round_at;
inline bool emu_warp_leads;                 /* a warp released from __syncwarp goes on at its first lane */
inline emu_index emu_block_idx, emu_grid_dim, emu_block_dim;
#define threadIdx (emu_current->idx)
/* names, not macros: a launch configuration's members of the same names stay reachable */
inline emu_index &blockIdx = emu_block_idx, &gridDim = emu_grid_dim, &blockDim = emu_block_dim;
#undef __global__
#define __global__
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __shared__
#define __shared__

#if defined(__SANITIZE_ADDRESS__)
inline const void *emu_main_stack;
inline size_t emu_main_stack_bytes;
inline const void *emu_stack_of(const emu_thread *t)
{
    return t ? (const void *)emu_fibers[t->team]->stack.get() : emu_main_stack;
}
#endif

#if defined(__SANITIZE_ADDRESS__)
/* ASan's _longjmp (an interceptor), like every call of a function the compiler knows as
 * noreturn, first unpoisons the whole stack being left: a sigaltstack system call and a memset
 * of a fiber stack's shadow at every switch, 95 % of an emulated run under ASan. A switch leaves
 * no frame behind with poisoned locals (emu_enter's below, the one it abandons, has none; a
 * finished thread's frames returned), so the switches call libc's own _longjmp, and emu_enter,
 * which does not return either, is not declared noreturn. */
inline void (*const emu_longjmp)(struct __jmp_buf_tag *, int) = [] {
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    void *real = libc ? dlsym(libc, "_longjmp") : NULL;
    return real ? (void (*)(struct __jmp_buf_tag *, int))real : _longjmp;
}();
#else
#define emu_longjmp _longjmp
#endif

/* into `to` where it waits (NULL: the launch), or at its start: its place's fiber, waiting for
 * its next thread, or made now. Never returns. */
inline void emu_enter(emu_thread *to)
{
    struct __jmp_buf_tag *target;
    if (!to) {
        target = emu_main_resume;
    } else if (to->started) {
        target = to->resume;
    } else {
        to->started = true;
        emu_fiber &fiber = *emu_fibers[to->team];
        if (!fiber.made) {
            fiber.made = true;
            setcontext(&fiber.context);
            abort(); /* setcontext returns only on failure */
        }
        target = fiber.idle;
    }
    emu_longjmp(target, 1);
}

/* From the running thread (or the launch, from == NULL) to `to` (NULL: the launch); a finished
 * thread (from->done) leaves its fiber waiting for the next thread of its place. Every switch but
 * a fiber's first entry (its ucontext) goes through _setjmp/_longjmp: no signal-mask system call,
 * unlike swapcontext. Not inlined: the _setjmp stays in a frame of its own, whose locals no later
 * code reads. */
[[gnu::noinline]] inline void emu_switch(emu_thread *from, emu_thread *to)
{
    emu_current = to;
    if (to)
        emu_block_idx = emu_ctas[to->cta].block_idx;
#if defined(__SANITIZE_ADDRESS__)
    void *fake_stack = NULL;
    __sanitizer_start_switch_fiber(&fake_stack, emu_stack_of(to), to ? EMU_STACK_BYTES : emu_main_stack_bytes);
#endif
    struct __jmp_buf_tag *here = !from ? emu_main_resume : from->done ? emu_fibers[from->team]->idle : from->resume;
    if (_setjmp(here) == 0)
        emu_enter(to);
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(fake_stack, NULL, NULL);
#endif
}

/* the next place in a shuffled round, drawing the next round when this one is done */
inline unsigned emu_next_in_round()
{
    if (emu_round_at >= emu_round.size()) {
        emu_round.resize(emu_team.size());
        for (unsigned i = 0; i < emu_round.size(); i++)
            emu_round[i] = i;
        for (size_t i = emu_round.size(); i > 1; i--) { /* Fisher-Yates, xorshift64 */
            emu_shuffle_state ^= emu_shuffle_state << 13;
            emu_shuffle_state ^= emu_shuffle_state >> 7;
            emu_shuffle_state ^= emu_shuffle_state << 17;
            std::swap(emu_round[i - 1], emu_round[emu_shuffle_state % i]);
        }
        emu_round_at = 0;
    }
    return emu_round[emu_round_at++];
}

/* the next live thread after the running one in resume order, or NULL */
inline emu_thread *emu_next_live()
{
    if (emu_shuffle_state != 0) {
        for (size_t k = 0; k < 2 * emu_team.size(); k++) { /* the rest of this round, then the next */
            emu_thread *t = &emu_team[emu_next_in_round()];
            if (!t->done && t != emu_current)
                return t;
        }
        return emu_current && !emu_current->done ? emu_current : NULL;
    }
    const size_t n = emu_team.size(), at = (size_t)(emu_current - emu_team.data());
    for (size_t k = 1; k <= n; k++) {
        emu_thread *t = &emu_team[emu_reverse_order ? (at + n - k) % n : (at + k) % n];
        if (!t->done)
            return t;
    }
    return NULL;
}

inline void emu_barrier_release(emu_barrier &b)
{
    b.arrived = 0;
    b.generation++;
    emu_waits_without_progress = 0;
}

/* The waiting thread gives the others a turn; when every live thread has waited twice in a row
 * with nothing moving (no barrier released, no mbarrier arrival), the block deadlocks. */
inline void emu_wait_turn()
{
    if (++emu_waits_without_progress > 2 * emu_live) {
        fprintf(stderr, "cuda_emulate: block (%u, %u, %u) deadlocks: every thread waits, at a barrier the others "
                        "never reach or on an mbarrier phase that never completes\n",
                emu_block_idx.x, emu_block_idx.y, emu_block_idx.z);
        abort();
    }
    emu_switch(emu_current, emu_next_live());
}

inline void emu_barrier_wait(emu_barrier &b)
{
    const unsigned generation = b.generation;
    if (++b.arrived == b.expected) {
        emu_barrier_release(b);
        return;
    }
    while (b.generation == generation)
        emu_wait_turn();
}

/* an exited thread no longer counts at the barriers, as on the GPU */
inline void emu_barrier_drop(emu_barrier &b)
{
    b.expected--;
    if (b.expected > 0 && b.arrived == b.expected)
        emu_barrier_release(b);
}

constexpr unsigned EMU_WARP = 32;
struct emu_warp_exchange { /* what the lanes of one warp hand each other */
    uint32_t a[32][4], b[32][2];
    const void *ptr[32];
    uint64_t raw[32];
};
inline emu_warp_exchange emu_warps[EMU_MAX_CLUSTER * EMU_MAX_WARPS];

/* With emu_warp_leads the thread that completes a warp's barrier hands over to the warp's first
 * lane, which then runs ahead of the other warps: what it does after the barrier (arriving on
 * an mbarrier, say) happens before other warps read what that arrival gives away. */
inline void emu_warp_sync()
{
    const unsigned warp = emu_current->team / EMU_WARP;
    emu_barrier &b = emu_warp_barrier[warp];
    const bool completes = b.arrived + 1 == b.expected;
    emu_barrier_wait(b);
    emu_thread *first = &emu_team[warp * EMU_WARP];
    if (emu_warp_leads && completes && first != emu_current && !first->done)
        emu_switch(emu_current, first);
}
inline void __syncthreads() { emu_barrier_wait(emu_ctas[emu_current->cta].block_barrier); }

/* a lane's value of any type up to 8 bytes to the lane source(lane, arg) */
template <typename T> inline T emu_shuffle(T v, unsigned (*source)(unsigned lane, int arg), int arg)
{
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    emu_warp_exchange &w = emu_warps[emu_current->team / 32];
    const unsigned lane = emu_current->linear % 32;
    memcpy(&w.raw[lane], &v, sizeof v);
    emu_warp_sync();
    T r;
    memcpy(&r, &w.raw[source(lane, arg) % 32], sizeof r);
    emu_warp_sync();
    return r;
}
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int mask)
{
    return emu_shuffle(v, [](unsigned lane, int m) { return lane ^ (unsigned)m; }, mask);
}
template <typename T> inline T __shfl_sync(unsigned, T v, int src)
{
    return emu_shuffle(v, [](unsigned, int s) { return (unsigned)s; }, src);
}

/* ---- arithmetic intrinsics (the host's IEEE operations, rounded to nearest) and the clock ---- */

inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
/* rcp.approx.ftz.f32 (the emulation rounds the quotient correctly) */
inline float rcp_approx(float x) { return 1.0f / x; }
/* ex2.approx.ftz.f32: a denormal argument counts as 0, a result below 2^-126 is 0 */
inline float exp2_ftz(float x)
{
    const float y = exp2f(std::fpclassify(x) == FP_SUBNORMAL ? 0.0f : x);
    return y < 0x1p-126f ? 0.0f : y;
}
inline long long clock64()
{
    return (long long)std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

/* ---- tensor-core fragments (PTX manual: mma.m16n8k16 with .bf16, ldmatrix .m8n8.x4) ---- */

inline float emu_bf16_bits(uint32_t v)
{
    const uint32_t x = (v & 0xffffu) << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}
inline uint32_t emu_pair(const __nv_bfloat16 *p) /* p[0] in the low half */
{
    uint16_t lo, hi;
    memcpy(&lo, p, 2);
    memcpy(&hi, p + 1, 2);
    return lo | (uint32_t)hi << 16;
}

/* lane l gives the address of row l % 8 of 8×8 block l / 8; register i of lane (g = l / 4,
 * t = l % 4) is block i's elements [g][2t], [g][2t + 1] — or with .trans [2t][g], [2t + 1][g] */
inline void emu_ldmatrix(uint32_t r[4], const __nv_bfloat16 *row, bool trans)
{
    emu_warp_exchange &w = emu_warps[emu_current->team / 32];
    const unsigned lane = emu_current->linear % 32, g = lane / 4, t = lane % 4;
    w.ptr[lane] = row;
    emu_warp_sync();
    for (unsigned i = 0; i < 4; i++) {
        if (!trans) {
            r[i] = emu_pair((const __nv_bfloat16 *)w.ptr[8 * i + g] + 2 * t);
        } else {
            uint16_t lo, hi;
            memcpy(&lo, (const __nv_bfloat16 *)w.ptr[8 * i + 2 * t] + g, 2);
            memcpy(&hi, (const __nv_bfloat16 *)w.ptr[8 * i + 2 * t + 1] + g, 2);
            r[i] = lo | (uint32_t)hi << 16;
        }
    }
    emu_warp_sync();
}
inline void ldmatrix_x4(uint32_t r[4], const __nv_bfloat16 *row) { emu_ldmatrix(r, row, false); }
inline void ldmatrix_x4_trans(uint32_t r[4], const __nv_bfloat16 *row) { emu_ldmatrix(r, row, true); }

/* D[16×8] += A[16×16] · B[16×8]: lane (g, t) holds A rows g, g + 8 (registers 0/2: columns 2t,
 * 2t + 1; 1/3: the rows 8 lower ... see the PTX manual's figure), B column g rows 2t.., and C
 * rows g, g + 8 at columns 2t, 2t + 1. Products summed in fp32, as the hardware's accumulation. */
/* Element (r, k) of a 16 × 16 A operand from the A fragments of a warp's 32 lanes (mma.m16n8k16's
 * table, which wgmma's register A follows per warp): lane 4·(r % 8) + (k % 8) / 2, register
 * r / 8 + 2·(k / 8), the lower column in the lower half. */
inline float emu_a_fragment(const uint32_t (&a)[32][4], unsigned r, unsigned k)
{
    return emu_bf16_bits(a[(r % 8) * 4 + (k % 8) / 2][r / 8 + 2 * (k / 8)] >> (16 * (k % 2)));
}

inline void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    emu_warp_exchange &w = emu_warps[emu_current->team / 32];
    const unsigned lane = emu_current->linear % 32, g = lane / 4, t = lane % 4;
    memcpy(w.a[lane], a, 16);
    w.b[lane][0] = b0;
    w.b[lane][1] = b1;
    emu_warp_sync();
    auto A = [&](unsigned r, unsigned k) { return emu_a_fragment(w.a, r, k); };
    auto B = [&](unsigned k, unsigned n) { return emu_bf16_bits(w.b[n * 4 + (k % 8) / 2][k / 8] >> (16 * (k % 2))); };
    const unsigned rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    float out[4];
    for (unsigned e = 0; e < 4; e++) {
        float acc = c[e];
        for (unsigned k = 0; k < 16; k++)
            acc += A(rows[e], k) * B(k, cols[e]);
        out[e] = acc;
    }
    emu_warp_sync();
    memcpy(c, out, 16);
}

/* ---- cp.async: per thread, groups of copies completed by cp.async.wait_group ---- */

enum emu_copy_mode { EMU_CP_EARLY, EMU_CP_LATE };
inline emu_copy_mode emu_copy_timing = EMU_CP_EARLY;
/* when wgmma's products are made: at issue, or at the wgmma.wait_group that covers them (late,
 * a thread waiting for an mbarrier phase also runs as soon as that phase completes) */
inline emu_copy_mode emu_product_timing = EMU_CP_EARLY;

inline void emu_cp_async(void *dst, const void *src, unsigned bytes)
{
    if (emu_copy_timing == EMU_CP_LATE)
        emu_current->copy_open.push_back({dst, src, bytes});
    else
        memcpy(dst, src, bytes);
}
inline void cp_async16(void *dst, const void *src) { emu_cp_async(dst, src, 16); }
inline void cp_async4(void *dst, const void *src) { emu_cp_async(dst, src, 4); }
inline void cp_async_commit()
{
    emu_current->copy_groups.push_back(std::move(emu_current->copy_open));
    emu_current->copy_open.clear();
}
/* copies not yet committed are not waited for (PTX): they stay pending */
template <int N> inline void cp_async_wait()
{
    std::vector<std::vector<emu_copy>> &groups = emu_current->copy_groups;
    while (groups.size() > (size_t)N) {
        for (const emu_copy &c : groups.front())
            memcpy(c.dst, c.src, c.bytes);
        groups.erase(groups.begin());
    }
}

/* ---- dynamic shared memory: each block of the cluster has its own; the kernel files'
 * `extern __shared__ T name[];` become `T *const name = (T *)emu_dynamic_smem();`
 * (tests/CMakeLists.txt), every such name of a kernel the same bytes, as on the GPU ---- */

constexpr size_t EMU_SMEM_BYTES = 232448; /* Hopper's opt-in maximum per block (227 KB) */
/* 1024: the 128-byte swizzle's period */
alignas(1024) inline unsigned char emu_smem_pool[EMU_MAX_CLUSTER][EMU_SMEM_BYTES];
inline unsigned char *emu_dynamic_smem() { return emu_smem_pool[emu_current->cta]; }

/* what cuTensorMapEncodeTiled records in the 128 opaque bytes of a CUtensorMap */
struct emu_tensor_map {
    const unsigned char *base;
    uint64_t dims[2];   /* elements: inner, outer */
    uint64_t stride;    /* bytes between rows */
    uint32_t box[2];    /* elements: inner, outer */
};
static_assert(sizeof(emu_tensor_map) <= sizeof(CUtensorMap), "a tensor map's record fits its opaque bytes");

struct emu_tma_copy {
    size_t dst; /* in the shared memory of the cluster's block `cta` */
    unsigned cta;
    emu_tensor_map map;
    uint32_t inner, outer;
};
struct emu_mbarrier {
    unsigned count, pending, phase; /* phase: completed phases */
    long long tx;                    /* bytes expected and not yet arrived */
    std::vector<emu_tma_copy> late;  /* EMU_CP_LATE: copies not yet made */
    std::vector<emu_thread *> waiters; /* threads polling it since its last phase */
};

/* each block's, by offset in its shared memory; a cluster's are gone after it */
inline std::map<size_t, emu_mbarrier> emu_mbarriers[EMU_MAX_CLUSTER];

inline void emu_prepare_smem(size_t bytes)
{
    for (unsigned r = 0; r < emu_cluster_size; r++) {
        unsigned char *a = emu_smem_pool[r];
        emu_mbarriers[r].clear();
#if defined(__SANITIZE_ADDRESS__)
        ASAN_UNPOISON_MEMORY_REGION(a, EMU_SMEM_BYTES);
#endif
        memset(a, 0xff, bytes); /* NaN in bf16 and fp32: a read of bytes never written shows */
#if defined(__SANITIZE_ADDRESS__)
        ASAN_POISON_MEMORY_REGION(a + bytes, EMU_SMEM_BYTES - bytes);
#endif
    }
}

/* ---- launches and the runtime calls the launchers make ---- */

inline unsigned emu_launches; /* run so far (emu_grid_dim: the last one's grid) */
inline cudaError_t emu_error = cudaSuccess;

inline std::function<void()> emu_kernel_call;

/* one thread of the team, from its start to its exit */
inline void emu_thread_run()
{
    emu_kernel_call();
    emu_thread *self = emu_current;
    if (!self->copy_open.empty() || !self->copy_groups.empty()) {
        fprintf(stderr, "cuda_emulate: block (%u, %u, %u) thread %u exits with cp.async copies never waited for\n",
                emu_block_idx.x, emu_block_idx.y, emu_block_idx.z, self->linear);
        abort();
    }
    if (!self->wgmma_open.empty() || !self->wgmma_groups.empty()) {
        fprintf(stderr, "cuda_emulate: block (%u, %u, %u) thread %u exits with wgmma products never waited for\n",
                emu_block_idx.x, emu_block_idx.y, emu_block_idx.z, self->linear);
        abort();
    }
    self->done = true;
    emu_live--;
    emu_ctas[self->cta].live--;
    emu_barrier_drop(emu_warp_barrier[self->team / EMU_WARP]);
    emu_barrier_drop(emu_ctas[self->cta].block_barrier);
    emu_barrier_drop(emu_cluster_barrier);
    emu_switch(self, emu_next_live()); /* the last one back to the launch; back here for the next thread */
}

/* a fiber: the threads of its place in the team, one after another */
[[noreturn]] inline void emu_fiber_main()
{
#if defined(__SANITIZE_ADDRESS__)
    if (!emu_main_stack) /* the first switch in: learn main's stack */
        __sanitizer_finish_switch_fiber(NULL, &emu_main_stack, &emu_main_stack_bytes);
    else
        __sanitizer_finish_switch_fiber(NULL, NULL, NULL);
#endif
    for (;;)
        emu_thread_run();
}

/* i: its place in the cluster's team */
inline void emu_thread_prepare(unsigned i, unsigned threads)
{
    emu_thread &t = emu_team[i];
    const unsigned linear = i % threads;
    t.linear = linear;
    t.cta = i / threads;
    t.team = i;
    t.idx = {linear % emu_block_dim.x, linear / emu_block_dim.x % emu_block_dim.y,
             linear / (emu_block_dim.x * emu_block_dim.y)};
    t.started = t.done = false;
    t.copy_groups.clear();
    t.copy_open.clear();
    t.wgmma_groups.clear();
    t.wgmma_open.clear();
}

/* not inlined: getcontext returns twice, like _setjmp */
[[gnu::noinline]] inline void emu_make_fiber()
{
    auto fiber = std::make_unique<emu_fiber>();
    fiber->stack.reset(new char[EMU_STACK_BYTES]);
    getcontext(&fiber->context);
    fiber->context.uc_stack.ss_sp = fiber->stack.get();
    fiber->context.uc_stack.ss_size = EMU_STACK_BYTES;
    fiber->context.uc_link = NULL;
    makecontext(&fiber->context, (void (*)())emu_fiber_main, 0);
    fiber->made = false;
    emu_fibers.push_back(std::move(fiber));
}

/* The grid's clusters (of `cluster` neighbouring blocks along x) one after another, the blocks of
 * a cluster together: their threads are one team of fibers, in block order. */
template <typename... P> inline void emu_run(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem_bytes,
                                             const std::tuple<P...> &args, unsigned cluster = 1)
{
    const unsigned threads = block.x * block.y * block.z;
    if (threads == 0 || threads > EMU_WARP * EMU_MAX_WARPS || smem_bytes > EMU_SMEM_BYTES || cluster == 0 ||
        cluster > EMU_MAX_CLUSTER || grid.x % cluster != 0 || (cluster > 1 && threads % EMU_WARP != 0)) {
        emu_error = cudaErrorInvalidConfiguration;
        return;
    }
    const unsigned team = cluster * threads;
    emu_grid_dim = {grid.x, grid.y, grid.z};
    emu_block_dim = {block.x, block.y, block.z};
    emu_cluster_size = cluster;
    emu_launches++;
    emu_kernel_call = [&] { std::apply(kernel, args); };
    emu_team.resize(team);
    while (emu_fibers.size() < team)
        emu_make_fiber();
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x += cluster) {
                for (unsigned r = 0; r < cluster; r++)
                    emu_ctas[r] = {{x + r, y, z}, {threads, 0, 0}, threads};
                /* warps numbered through the team: with clusters every block's are whole */
                for (unsigned w = 0; w * EMU_WARP < team; w++) /* a lone block's last may be partial */
                    emu_warp_barrier[w] = {std::min(EMU_WARP, team - w * EMU_WARP), 0, 0};
                emu_cluster_barrier = {team, 0, 0};
                emu_waits_without_progress = 0;
                emu_live = team;
                emu_prepare_smem(smem_bytes);
                for (unsigned i = 0; i < team; i++)
                    emu_thread_prepare(i, threads);
                emu_round_at = emu_round.size(); /* a shuffled order starts a round of its own */
                emu_switch(NULL, &emu_team[emu_shuffle_state ? emu_next_in_round()
                                                             : emu_reverse_order ? team - 1 : 0]);
            }
    emu_cluster_size = 1;
}

/* While a stream is being captured into a graph (cuda_runtime_emulated.cc), the launches, copies
 * and matmuls issued are recorded instead of run; cudaGraphLaunch runs them in their order. Every
 * stream is the one stream of a synchronous device. */
inline std::vector<std::function<void()>> *emu_capture;
inline void emu_submit(std::function<void()> op)
{
    if (emu_capture)
        emu_capture->push_back(std::move(op));
    else
        op();
}

/* k<<<grid, block, smem, stream>>>(args) becomes emu_launch(k, grid, block, smem, stream)(args) */
template <typename... P> inline auto emu_launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem_bytes = 0,
                                                cudaStream_t = 0)
{
    return [=](auto &&...args) {
        const std::tuple<P...> a((P)args...);
        emu_submit([=] { emu_run(kernel, grid, block, smem_bytes, a); });
    };
}

template <typename F> inline cudaError_t cudaFuncSetAttribute(F *, enum cudaFuncAttribute, int value)
{
    return value >= 0 && (size_t)value <= EMU_SMEM_BYTES ? cudaSuccess : cudaErrorInvalidValue;
}

/* one block per multiprocessor at a time, and two clusters (whatever their size) on the device:
 * a persistent grid of clusters has more than one */
template <typename F> inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *n, F *, int, size_t)
{
    *n = 1;
    return cudaSuccess;
}
template <typename F> inline cudaError_t cudaOccupancyMaxActiveClusters(int *n, F *, const cudaLaunchConfig_t *)
{
    *n = 2;
    return cudaSuccess;
}


/* ---- Hopper (gemm_swiglu.cu, attention_wgmma.cu): mbarriers, the bulk tensor copy (TMA), wgmma,
 * clusters ----
 *
 * An mbarrier's state lives beside the block (emu_mbarriers, by its offset in the block's shared
 * memory), not in its 8 bytes of shared memory.
 * A thread polling one (barrier_wait) lets the others run, as at a barrier. A bulk tensor copy
 * writes its box with the 128-byte swizzle (16-byte chunk c of a 128-byte row goes to c XOR the
 * row's address bits 7..9) and counts its bytes on the barrier: at issue (emu_copy_timing
 * EMU_CP_EARLY) or when a thread first polls that barrier (EMU_CP_LATE: a read of the stage before
 * the wait shows). wgmma reads its operands from shared memory through their descriptors (or A
 * from the warp's registers, as they were at issue) and sums in fp32; it runs at issue or at the
 * wgmma.wait_group that covers it (emu_product_timing EMU_CP_LATE, with copies at issue: a stage
 * released and refilled before its products were waited for shows). The blocks of a cluster run together (emu_run): a multicast copy writes its
 * box at the same offset in each block it names and counts it on the barrier at the same offset in
 * each; a remote arrival (mapa) arrives on the barrier at the same offset in the block of that
 * rank; the cluster barrier waits for every thread of every block of it. */

#undef __grid_constant__
#define __grid_constant__
inline void __syncwarp(unsigned = 0xffffffffu) { emu_warp_sync(); }

inline CUresult emu_tensor_map_encode(CUtensorMap *map, CUtensorMapDataType type, cuuint32_t rank, void *base,
                                      const cuuint64_t *dims, const cuuint64_t *strides, const cuuint32_t *box,
                                      const cuuint32_t *element_strides, CUtensorMapInterleave interleave,
                                      CUtensorMapSwizzle swizzle, CUtensorMapL2promotion,
                                      CUtensorMapFloatOOBfill oob)
{
    /* only what gemm_swiglu.cu asks for, with the checks the driver makes of it */
    if (type != CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 || rank != 2 || interleave != CU_TENSOR_MAP_INTERLEAVE_NONE ||
        swizzle != CU_TENSOR_MAP_SWIZZLE_128B || oob != CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE ||
        element_strides[0] != 1 || element_strides[1] != 1 || (uintptr_t)base % 16 != 0 || strides[0] % 16 != 0 ||
        box[0] * 2 > 128 || box[0] == 0 || box[1] == 0 || box[1] > 256 || dims[0] == 0 || dims[1] == 0)
        return CUDA_ERROR_INVALID_VALUE;
    emu_tensor_map m = {(const unsigned char *)base, {dims[0], dims[1]}, strides[0], {box[0], box[1]}};
    memset(map, 0, sizeof *map);
    memcpy(map, &m, sizeof m);
    return CUDA_SUCCESS;
}

/* p's offset in the running thread's block's shared memory */
inline size_t emu_smem_offset(const void *p)
{
    const unsigned char *c = (const unsigned char *)p, *own = emu_dynamic_smem();
    if (c < own || c >= own + EMU_SMEM_BYTES) {
        fprintf(stderr, "cuda_emulate: a shared-memory address outside the block's shared memory\n");
        abort();
    }
    return (size_t)(c - own);
}
/* the 128-byte swizzle, on the address (the hardware's: 16-byte chunk XOR address bits 7..9) */
inline size_t emu_swizzle128(size_t offset) { return offset ^ (((offset >> 7) & 7) << 4); }

inline uint32_t smem_addr(const void *p) { return (uint32_t)emu_smem_offset(p); }

/* the mbarrier at this offset of block `cta` of the cluster */
inline emu_mbarrier &emu_mbarrier_in(unsigned cta, size_t offset)
{
    if (emu_ctas[cta].live == 0) { /* a block that leaves before its peers are done with it */
        fprintf(stderr, "cuda_emulate: block (%u, %u, %u): an mbarrier of block (%u, %u, %u), which has exited\n",
                emu_block_idx.x, emu_block_idx.y, emu_block_idx.z, emu_ctas[cta].block_idx.x,
                emu_ctas[cta].block_idx.y, emu_ctas[cta].block_idx.z);
        abort();
    }
    auto it = emu_mbarriers[cta].find(offset);
    if (it == emu_mbarriers[cta].end()) {
        fprintf(stderr, "cuda_emulate: block (%u, %u, %u): an mbarrier used before mbarrier.init\n",
                emu_ctas[cta].block_idx.x, emu_ctas[cta].block_idx.y, emu_ctas[cta].block_idx.z);
        abort();
    }
    return it->second;
}
inline emu_mbarrier &emu_mbarrier_at(const uint64_t *bar)
{
    return emu_mbarrier_in(emu_current->cta, emu_smem_offset(bar));
}
inline void emu_mbarrier_settle(emu_mbarrier &b)
{
    emu_waits_without_progress = 0;
    if (b.pending == 0 && b.tx == 0) {
        b.phase++;
        b.pending = b.count;
    }
}
inline void barrier_init(uint64_t *bar, uint32_t count)
{
    emu_mbarriers[emu_current->cta][emu_smem_offset(bar)] = {count, count, 0, 0, {}, {}};
}
inline void barrier_init_fence() {}
inline void emu_mbarrier_arrive(emu_mbarrier &b)
{
    if (b.pending == 0) {
        fprintf(stderr, "cuda_emulate: block (%u, %u, %u): more arrivals on an mbarrier than its count\n",
                emu_block_idx.x, emu_block_idx.y, emu_block_idx.z);
        abort();
    }
    b.pending--;
    const unsigned phase = b.phase;
    emu_mbarrier_settle(b);
    /* products late: a thread waiting for this phase (a producer waiting for its stage) runs at
     * once, so that a stage released before its products were waited for is refilled under them */
    if (emu_product_timing == EMU_CP_LATE && b.phase != phase && !b.waiters.empty()) {
        emu_thread *waiter = b.waiters.front();
        b.waiters.clear();
        if (waiter != emu_current && !waiter->done)
            emu_switch(emu_current, waiter);
    }
}
inline void barrier_expect_bytes(uint64_t *bar, uint32_t bytes)
{
    emu_mbarrier &b = emu_mbarrier_at(bar);
    b.tx += bytes;
    emu_mbarrier_arrive(b);
}
inline void barrier_arrive(uint64_t *bar) { emu_mbarrier_arrive(emu_mbarrier_at(bar)); }
inline unsigned emu_cluster_rank(uint32_t rank)
{
    if (rank >= emu_cluster_size) {
        fprintf(stderr, "cuda_emulate: block (%u, %u, %u): rank %u of a cluster of %u\n", emu_block_idx.x,
                emu_block_idx.y, emu_block_idx.z, rank, emu_cluster_size);
        abort();
    }
    return rank;
}
/* mapa + a remote arrive: the barrier at the same place in block `rank`'s shared memory */
inline void barrier_arrive_cluster(uint64_t *bar, uint32_t rank)
{
    emu_mbarrier_arrive(emu_mbarrier_in(emu_cluster_rank(rank), emu_smem_offset(bar)));
}
inline void cluster_sync() { emu_barrier_wait(emu_cluster_barrier); }

/* one box into block c.cta's shared memory at c.dst, with the 128-byte swizzle; rows and columns
 * outside the tensor read as zeros */
inline void emu_tma_run(const emu_tma_copy &c)
{
    unsigned char *smem = emu_smem_pool[c.cta];
    for (uint32_t r = 0; r < c.map.box[1]; r++)
        for (uint32_t e = 0; e < c.map.box[0]; e++) {
            const uint64_t row = (uint64_t)c.outer + r, col = (uint64_t)c.inner + e;
            uint16_t v = 0;
            if (row < c.map.dims[1] && col < c.map.dims[0])
                memcpy(&v, c.map.base + row * c.map.stride + col * 2, 2);
            memcpy(smem + emu_swizzle128(c.dst + (size_t)r * 128 + (size_t)e * 2), &v, 2);
        }
}
/* the copy made, its bytes counted on its barrier */
inline void emu_tma_complete(emu_mbarrier &b, const emu_tma_copy &c)
{
    emu_tma_run(c);
    b.tx -= (long long)c.map.box[0] * c.map.box[1] * 2;
    emu_mbarrier_settle(b);
}
/* The box into the blocks of `ctas` (a bit per rank), at dst's offset in each and counted on the
 * barrier at bar's offset in each: at issue, or (EMU_CP_LATE) when a thread of that block polls it. */
inline void emu_tma_issue(void *dst, const CUtensorMap *map, uint32_t inner, uint32_t outer, uint64_t *bar,
                          uint16_t ctas)
{
    const size_t at = emu_smem_offset(dst), bar_at = emu_smem_offset(bar);
    if (at % 1024 != 0) {
        fprintf(stderr, "cuda_emulate: a 128-byte-swizzled box not 1024-byte aligned in shared memory\n");
        abort();
    }
    for (unsigned r = 0; r < 16; r++) {
        if (!(ctas >> r & 1))
            continue;
        emu_tma_copy c = {at, emu_cluster_rank(r), {}, inner, outer};
        memcpy(&c.map, map, sizeof c.map);
        emu_mbarrier &b = emu_mbarrier_in(r, bar_at);
        if (emu_copy_timing == EMU_CP_LATE)
            b.late.push_back(c);
        else
            emu_tma_complete(b, c);
    }
}
inline void tma_load(void *dst, const CUtensorMap *map, uint32_t inner, uint32_t outer, uint64_t *bar)
{
    emu_tma_issue(dst, map, inner, outer, bar, (uint16_t)(1u << emu_current->cta));
}
inline void tma_load_multicast(void *dst, const CUtensorMap *map, uint32_t inner, uint32_t outer, uint64_t *bar,
                               uint16_t ctas)
{
    emu_tma_issue(dst, map, inner, outer, bar, ctas);
}

/* Returns once the phase of this parity has completed; the other threads run meanwhile. */
inline void barrier_wait(uint64_t *bar, uint32_t parity)
{
    for (;;) {
        emu_mbarrier &b = emu_mbarrier_at(bar);
        while (!b.late.empty()) { /* EMU_CP_LATE: the copies land when somebody looks */
            const emu_tma_copy c = b.late.front();
            b.late.erase(b.late.begin());
            emu_tma_complete(b, c);
        }
        if ((b.phase & 1) != parity)
            return;
        if (std::find(b.waiters.begin(), b.waiters.end(), emu_current) == b.waiters.end())
            b.waiters.push_back(emu_current);
        emu_wait_turn();
    }
}

/* D[64 × N] (+)= A[64 × 16] · B[N × 16]ᵀ of the thread's warpgroup (N = 256, 128 or 64), both K-major
 * in shared memory with the 128-byte swizzle (descriptor: start address >> 4 in bits 0..13, stride between
 * 8-row groups >> 4 in bits 32..45, swizzle mode in bits 62..63), or A from registers: each warp's 16
 * rows in the A fragment of mma.m16n8k16 (lane 4g + t: reg 0 = row g, columns 2t, 2t + 1, the lower
 * column in the lower half; reg 1 row g + 8; regs 2, 3 columns 8 further). The thread's registers hold
 * rows 16·warp + lane/4 (+ 8 for 4i + 2, 4i + 3) at columns 8i + 2·(lane % 4) + {0, 1}. */
inline void emu_wgmma_run(const emu_thread::wgmma &op)
{
    auto decode = [](uint64_t desc, size_t &start, size_t &group_stride) {
        if (desc >> 62 != 1) {
            fprintf(stderr, "cuda_emulate: a wgmma descriptor without the 128-byte swizzle is not emulated\n");
            abort();
        }
        start = (size_t)(desc & 0x3FFF) << 4;
        group_stride = (size_t)((desc >> 32) & 0x3FFF) << 4;
    };
    size_t a0 = 0, a_stride = 0, b0, b_stride;
    if (!op.a_in_registers)
        decode(op.desc_a, a0, a_stride);
    decode(op.desc_b, b0, b_stride);
    auto element = [](size_t start, size_t stride, unsigned row, unsigned k) {
        const size_t at = emu_swizzle128(start + (row / 8) * stride + (row % 8) * 128 + (size_t)k * 2);
        if (at + 2 > EMU_SMEM_BYTES) {
            fprintf(stderr, "cuda_emulate: a wgmma operand outside shared memory\n");
            abort();
        }
        uint16_t v;
        memcpy(&v, emu_dynamic_smem() + at, 2);
        return emu_bf16_bits(v);
    };
    const unsigned warp = emu_current->linear % 128 / 32, lane = emu_current->linear % 32;
    for (unsigned i = 0; i < op.n / 8; i++)
        for (unsigned e = 0; e < 4; e++) {
            const unsigned r = lane / 4 + (e >= 2 ? 8 : 0), row = 16 * warp + r, col = 8 * i + 2 * (lane % 4) + (e & 1);
            const unsigned reg = 4 * i + e;
            float &d = op.d_upper && reg >= 32 ? op.d_upper[reg - 32] : op.d[reg];
            float acc = op.accumulate ? d : 0.0f;
            for (unsigned k = 0; k < 16; k++)
                acc += (op.a_in_registers ? emu_a_fragment(op.a_warp, r, k) : element(a0, a_stride, row, k)) *
                       element(b0, b_stride, col, k);
            d = acc;
        }
}
inline void wgmma_fence() {}
inline void emu_wgmma_issue(const emu_thread::wgmma &op)
{
    if (emu_product_timing == EMU_CP_LATE)
        emu_current->wgmma_open.push_back(op);
    else
        emu_wgmma_run(op);
}
inline void wgmma_m64n256k16(float (&d)[128], uint64_t desc_a, uint64_t desc_b, uint32_t accumulate)
{
    emu_wgmma_issue({d, desc_a, desc_b, accumulate != 0, 256, false, {}});
}
/* into d[LO .. LO + 31] and d[HI .. HI + 31] */
template <uint32_t LO, uint32_t HI>
inline void wgmma_m64n128k16(float (&d)[128], uint64_t desc_a, uint64_t desc_b, uint32_t accumulate)
{
    emu_wgmma_issue({d + LO, desc_a, desc_b, accumulate != 0, 128, false, {}, d + HI});
}
/* A from registers: the warp's lanes hand each other their fragments at issue (the instruction
 * is warpgroup-wide), and the product reads that copy whenever it runs, as the hardware reads
 * the registers the program must leave alone until the wait. */
inline void wgmma_m64n64k16_rs(float (&d)[8][4], const uint32_t (&a)[4], uint64_t desc_b, uint32_t accumulate)
{
    emu_thread::wgmma op{&d[0][0], 0, desc_b, accumulate != 0, 64, true, {}};
    emu_warp_exchange &w = emu_warps[emu_current->team / 32];
    memcpy(w.a[emu_current->linear % 32], a, sizeof a);
    emu_warp_sync();
    memcpy(op.a_warp, w.a, sizeof op.a_warp);
    emu_warp_sync();
    emu_wgmma_issue(op);
}
inline void wgmma_m64n64k16_rs_overwrite(float (&d)[8][4], const uint32_t (&a)[4], uint64_t desc_b)
{
    wgmma_m64n64k16_rs(d, a, desc_b, 0);
}
inline void fence_view_async_shared() {}
inline void wgmma_commit()
{
    emu_current->wgmma_groups.push_back(std::move(emu_current->wgmma_open));
    emu_current->wgmma_open.clear();
}
template <int PENDING> inline void wgmma_wait()
{
    auto &groups = emu_current->wgmma_groups;
    while (groups.size() > (size_t)PENDING) {
        for (const emu_thread::wgmma &op : groups.front())
            emu_wgmma_run(op);
        groups.erase(groups.begin());
    }
}
/* the registers a thread owns are the host's business here */
template <uint32_t REGISTERS> inline void registers_release() {}
template <uint32_t REGISTERS> inline void registers_claim() {}

/* cudaLaunchKernelEx: the launch's configuration, with clusters along x */
template <typename... P, typename... A>
inline cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t *config, void (*kernel)(P...), A &&...args)
{
    unsigned cluster = 1;
    for (unsigned i = 0; i < config->numAttrs; i++)
        if (config->attrs[i].id == cudaLaunchAttributeClusterDimension) {
            const auto &c = config->attrs[i].val.clusterDim;
            if (c.y != 1 || c.z != 1)
                return cudaErrorNotSupported;
            cluster = c.x;
        }
    const std::tuple<P...> a((P)std::forward<A>(args)...);
    const dim3 grid = config->gridDim, block = config->blockDim;
    const size_t smem = config->dynamicSmemBytes;
    if (emu_capture) { /* checked when the graph runs */
        emu_submit([=] { emu_run(kernel, grid, block, smem, a, cluster); });
        return cudaSuccess;
    }
    const cudaError_t before = emu_error; /* the last error until this launch fails */
    emu_error = cudaSuccess;
    emu_run(kernel, grid, block, smem, a, cluster);
    if (emu_error == cudaSuccess) {
        emu_error = before;
        return cudaSuccess;
    }
    return emu_error;
}

#endif
