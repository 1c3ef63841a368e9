/* cuda_internal.h — what the CUDA backend's files (and its tests) share: the element types, the
 * kernel launchers of kernels.cu, attention.cu and decode.cu (generation's KV cache, decode
 * attention, argmax), the cuBLASLt wrapper of gemm.c (forward and
 * backward GEMMs; gemm_kernels.cu holds its bias-gradient kernel). The training kernels are in
 * cuda_train.h.
 *
 * Only built when NETLM_HAVE_CUDA is defined. Kernels live in .cu files; everything that only
 * orders work on a stream is host C (engine.c, gemm.c). Every launcher enqueues on the stream it
 * is given and returns the launch's cudaError_t (cudaGetLastError), so callers can check each
 * step and CUDA graph capture sees the same calls as a plain run.
 *
 * Conventions, as in the CPU ops (model_internal.h): rows are tokens, matrices are [out, in]
 * (nn.Linear), a right-padded batch is packed to its real tokens: sequence b owns rows
 * seq_off[b] .. seq_off[b + 1] - 1 (seq_off is a device array of nseq + 1 entries; an empty
 * range is a padding slot of a batch bucket and yields zeros wherever a per-sequence output is
 * written). Activations are of the engine's element type T (fp32, or bf16 with fp32
 * arithmetic); the residual stream is fp32 (bf16 with the engine's residual_bf16 option), norm
 * weights and statistics always fp32. */
#ifndef NETLM_MODEL_CUDA_INTERNAL_H
#define NETLM_MODEL_CUDA_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

enum cu_dtype { CU_F32 = 0, CU_BF16 = 1 };

static inline size_t cu_dtype_size(enum cu_dtype t) { return t == CU_BF16 ? 2 : 4; }

/* fp32 → bf16 bits, round to nearest even; NaN stays a quiet NaN (the host side of uploads and
 * of the tests, which round their inputs the same way the device does). */
static inline uint16_t cu_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu))
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float cu_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Host conversions between fp32 and T (dst and src may not overlap); convert.c. */
void cu_host_from_f32(void *dst, enum cu_dtype t, const float *src, size_t n);
void cu_host_to_f32(float *dst, const void *src, enum cu_dtype t, size_t n);

/* ---- kernels (kernels.cu) ---- */

enum cu_norm_kind { CU_NORM_LAYER = 0, CU_NORM_LAYER_UER, CU_NORM_RMS };
enum cu_pool_kind { CU_POOL_MEAN = 0, CU_POOL_FIRST, CU_POOL_LAST, CU_POOL_MAX };

/* The residual stream x of cu_embed and cu_norm is of type xt: fp32, or bf16 when the engine
 * runs with residual_bf16 (half the traffic, one more rounding per residual add); the
 * arithmetic is fp32 either way. */

/* x[row, C] (type xt) = wte[tokens[row]] (+ wpe[pos[row]] when wpe), tables of type t; the sum
 * in fp32, rounded once to xt. */
cudaError_t cu_embed(void *x, enum cu_dtype xt, const void *wte, const void *wpe, enum cu_dtype t,
                     const uint32_t *tokens, const uint32_t *pos, uint32_t n, uint32_t c,
                     cudaStream_t s);
/* y[n, c] (type t) = norm(x[n, c] of type xt) · w (+ b): LayerNorm (biased variance, eps inside
 * the sqrt), UER's LayerNorm (unbiased std, eps added to it) or RMSNorm (b unused). */
cudaError_t cu_norm(void *y, enum cu_dtype t, const void *x, enum cu_dtype xt, const float *w,
                    const float *b, uint32_t n, uint32_t c, float eps, enum cu_norm_kind kind,
                    cudaStream_t s);
/* RMSNorm's factor of each row alone, r[n] = 1 / sqrt(mean(x²) + eps) (x of type xt), for a
 * product that applies it (and the norm's weight, folded into its own) in its epilogue:
 * cu_gemm_swiglu, cu_swiglu's row_scale. */
cudaError_t cu_rms_scale(float *r, const void *x, enum cu_dtype xt, uint32_t n, uint32_t c, float eps,
                         cudaStream_t s);
/* y = GELU(x) over count values, tanh form (erf = false) or erf form; y may be x. */
cudaError_t cu_gelu(void *y, const void *x, enum cu_dtype t, size_t count, bool erf, cudaStream_t s);
/* h[n, f] (row stride ldh) = silu(gate) · up of the rows gate_up[n] = [gate(f) | up(f)] (row
 * stride 2f), gate and up first scaled by row_scale[row] when row_scale (cu_rms_scale); h may be
 * gate_up (ldh = 2f: the gate halves are overwritten). */
cudaError_t cu_swiglu(void *h, size_t ldh, const void *gate_up, enum cu_dtype t, const float *row_scale, uint32_t n,
                      uint32_t f, cudaStream_t s);
/* The same for gate and up columns in cu_gemm_swiglu_row's order (a product with the fused
 * kernel's weights, f a multiple of 32): h in the columns' own order. */
cudaError_t cu_swiglu_fused_order(void *h, size_t ldh, const void *gate_up, enum cu_dtype t, const float *row_scale,
                                  uint32_t n, uint32_t f, cudaStream_t s);
/* The order of W's rows, in each of its gate and up halves, that cu_gemm_swiglu takes: row r holds
 * what is row cu_gemm_swiglu_row(r) in the model's order. Within each block of 32 rows r = 8a +
 * 2b + e (a, b < 4, e < 2) it swaps a and b: a thread of the kernel's epilogue then holds the 8
 * neighbouring outputs 8b .. 8b + 7 of each block of 32 in its accumulators (the wgmma layout
 * gives it columns 8a + 2b + e, a = 0..3) and writes them with one 16-byte store instead of four
 * 4-byte ones. Its own inverse. */
#ifdef __CUDACC__
__host__ __device__
#endif
static inline uint32_t cu_gemm_swiglu_row(uint32_t r)
{
    return (r & ~31u) | (r >> 3 & 3u) << 1 | (r >> 1 & 3u) << 3 | (r & 1u);
}
/* h[n, f] (bf16, row stride ldh) = silu(s·x·Wgᵀ) ⊙ (s·x·Wuᵀ) for bf16 x[n, k] (row stride ldx),
 * w[2f, k] (the gate rows, then the up rows, each half in cu_gemm_swiglu_row's order) and s =
 * row_scale[row] (1 when row_scale is NULL), the SwiGLU in the GEMM's epilogue from fp32
 * accumulators (gemm_swiglu.cu: wgmma, Hopper only). h 16-byte
 * aligned, ldh a multiple of 8. _supported says whether this device runs it for these sizes
 * (compute capability 9.0, f a multiple of 128, k of 8) and prepares it there (device must be the
 * current one); call it once per device before cu_gemm_swiglu. */
bool cu_gemm_swiglu_supported(int device, uint32_t k, uint32_t f);
cudaError_t cu_gemm_swiglu(void *h, uint32_t ldh, const void *x, uint32_t ldx, const void *w, const float *row_scale,
                           uint32_t n, uint32_t k, uint32_t f, unsigned variant, cudaStream_t s);
/* The kernel's variants: how many, their names (i = 0, 1, ... until NULL; the first is the
 * default), the index of a name (-1: none), and the CTAs the variant's launch for n rows uses on
 * device. */
unsigned cu_gemm_swiglu_variants(void);
const char *cu_gemm_swiglu_variant(unsigned i);
int cu_gemm_swiglu_find(const char *name);
uint32_t cu_gemm_swiglu_grid(int device, unsigned variant, uint32_t n, uint32_t f);
/* Rotates, in place, the first `heads` heads of d values of each row (row stride ld elements):
 * half-split pairs (j, j + d/2) at position pos[row]; cos/sin tables [positions, d/2] fp32. */
cudaError_t cu_rope(void *x, enum cu_dtype t, uint32_t n, uint32_t ld, uint32_t heads, uint32_t d,
                    const uint32_t *pos, const float *cos_t, const float *sin_t, cudaStream_t s);
/* Fallback epilogue when cuBLASLt has none for a shape: y[n, out] (row stride ld) += bias, then
 * the tanh GELU when gelu. bias is of y's type (NULL: GELU alone). */
cudaError_t cu_bias_act(void *y, enum cu_dtype t, size_t ld, const void *bias, uint32_t n,
                        uint32_t out, bool gelu, cudaStream_t s);
/* Per sequence: pooled over its rows of xn [rows, c] (type t) into pooled32 [nseq, c] fp32 and
 * pooled_t [nseq, c] (type t, may be NULL). Empty sequences give zeros. */
cudaError_t cu_pool(float *pooled32, void *pooled_t, const void *xn, enum cu_dtype t, uint32_t c,
                    const uint32_t *seq_off, uint32_t nseq, enum cu_pool_kind kind,
                    cudaStream_t s);
/* y (type t) = tanh(x) over count values. */
cudaError_t cu_tanh(void *y, enum cu_dtype t, const float *x, size_t count, cudaStream_t s);
/* Softmax of each of rows rows of n values (row stride ld), fp32, in place. */
cudaError_t cu_softmax_rows(float *x, uint32_t rows, uint32_t n, size_t ld, cudaStream_t s);
/* Keeps the stream busy for about `cycles` GPU clock cycles (the step profile's head start). */
cudaError_t cu_spin(long long cycles, cudaStream_t s);
/* A fingerprint of a [rows, cols] matrix (row stride ld, type t) that tells apart two results of
 * the same computation by different kernels (rounding: equal to ~1e-3) from a wrong one: Σ x² and
 * Σ ±x (a sign per element from its place), partial sums of `blocks` blocks into partial[2·blocks]
 * (device) in an order fixed by the shapes; the caller adds them up. */
cudaError_t cu_fingerprint(double *partial, uint32_t blocks, const void *x, enum cu_dtype t, uint32_t rows,
                           uint32_t cols, size_t ld, cudaStream_t s);
/* dst[b, c] = src[last row of sequence b, c] (type t); zeros for an empty sequence. */
cudaError_t cu_gather_last(void *dst, const void *src, enum cu_dtype t, uint32_t c,
                           const uint32_t *seq_off, uint32_t nseq, cudaStream_t s);

/* ---- attention (attention.cu) ---- */

enum cu_attn_impl {
    CU_ATTN_AUTO = 0, /* tensor cores for bf16 with head_dim 32, 64 or 128; else SIMT */
    CU_ATTN_SIMT,     /* fp32 arithmetic throughout, any head_dim up to 128 */
    /* as AUTO, but with grouped-query heads and max_len ≤ 256 (inference: no log-sum-exp, no
     * dropout) one block serves a kv head's whole group of query heads, loading its key/value
     * tiles once */
    CU_ATTN_TC_GROUP,
    /* as CU_ATTN_TC_GROUP, on Hopper's warpgroup products (attention_wgmma.cu) where they serve
     * (compute capability 9.0, head_dim 64), else the same as CU_ATTN_TC_GROUP */
    CU_ATTN_WG_GROUP,
    /* as CU_ATTN_WG_GROUP, each key tile's softmax running beside the tile before's P·V product
     * (2 blocks a multiprocessor instead of 3: its registers) */
    CU_ATTN_WG_OVERLAP,
    /* as CU_ATTN_WG_GROUP, a block of two warpgroups taking two neighbouring query tiles over the
     * key/value tiles it loads once for both (16 warps a multiprocessor instead of 12) */
    CU_ATTN_WG_PAIR,
};
/* Whether impl names one of attention_wgmma.cu's kernels (the grouped kernel where they do not serve) */
static inline bool cu_attn_impl_wgmma(enum cu_attn_impl impl)
{
    return impl == CU_ATTN_WG_GROUP || impl == CU_ATTN_WG_OVERLAP || impl == CU_ATTN_WG_PAIR;
}
/* Causal attention of every sequence and head in the flash style: online softmax over key tiles
 * staged in shared memory, no score matrix in device memory. qkv rows hold [q (heads·d) | k
 * (kv_heads·d) | v (kv_heads·d)] (row stride ldqkv, RoPE already applied); query head h reads
 * key/value head h / (heads / kv_heads). out rows [heads·d] (row stride ldo). max_len bounds
 * every sequence's length (the grid's query-tile count). Rows of a sequence are written, nothing
 * else. head_dim ≤ 128. */
cudaError_t cu_attention(void *out, uint32_t ldo, const void *qkv, uint32_t ldqkv,
                         enum cu_dtype t, const uint32_t *seq_off, uint32_t nseq,
                         uint32_t max_len, uint32_t heads, uint32_t kv_heads, uint32_t d,
                         float scale, enum cu_attn_impl impl, cudaStream_t s);
/* Whether the tensor-core kernel serves (t, d) under CU_ATTN_AUTO. */
bool cu_attention_uses_tensor_cores(enum cu_dtype t, uint32_t d);
/* attention_wgmma.cu: whether its kernel serves head_dim d on the current device, and the launch
 * (the conditions of CU_ATTN_TC_GROUP's kernel hold, qkv's alignment included: cu_attention
 * checks them; with cos_t and sin_t, cu_attention_rope's RoPE, which it checks too). */
bool cu_attention_wg_serves(uint32_t d);
cudaError_t cu_attention_wg(void *out, uint32_t ldo, const void *qkv, uint32_t ldqkv, const uint32_t *seq_off,
                            uint32_t nseq, uint32_t max_len, uint32_t heads, uint32_t kv_heads, float scale,
                            const float *cos_t, const float *sin_t, enum cu_attn_impl impl, cudaStream_t s);
/* The blocks CU_ATTN_TC_GROUP launches for nseq sequences of at most max_len tokens: one per
 * query tile, kv head and sequence (a block per query head launches heads / kv_heads times as
 * many). */
uint64_t cu_attention_group_blocks(uint32_t nseq, uint32_t max_len, uint32_t kv_heads);
/* cu_attention as CU_ATTN_TC_GROUP (or, for impl CU_ATTN_WG_GROUP / _OVERLAP / _PAIR, that one) runs it,
 * with RoPE (cu_rope's tables and arithmetic) applied to q and k as the kernel loads them: qkv
 * holds them unrotated and keeps them so. Positions are the rows' places in their sequences (the
 * classify path's packing). Only where cu_attention_fuses_rope says the grouped kernel serves
 * the call (bf16, head_dim 32/64/128, grouped-query heads, max_len ≤ 256, ldqkv a multiple of 8;
 * qkv 16-byte and the tables 8-byte aligned); cudaErrorNotSupported elsewhere. */
bool cu_attention_fuses_rope(enum cu_dtype t, uint32_t d, uint32_t heads, uint32_t kv_heads, uint32_t max_len,
                             uint32_t ldqkv, uint32_t ldo);
cudaError_t cu_attention_rope(void *out, uint32_t ldo, const void *qkv, uint32_t ldqkv, enum cu_dtype t,
                              const uint32_t *seq_off, uint32_t nseq, uint32_t max_len, uint32_t heads,
                              uint32_t kv_heads, uint32_t d, float scale, const float *cos_t, const float *sin_t,
                              enum cu_attn_impl impl, cudaStream_t s);
/* Dropout of the attention probabilities (training), train/grad.c's masks on the device: the
 * probability of query i and key j (positions in a sequence of len tokens) of head h of
 * sequence b is multiplied by op_dropout_factor of element i·len + j of the stream
 * op_dropout_stream(op_dropout_stream(seq_key[b], layer·4 + 1), h) (place 1 of grad.c's
 * drop_stream). The softmax's statistics (row sum, lse) stay those of the unmasked
 * probabilities, as on the CPU. A NULL pointer to it is no dropout: the kernels without it. */
struct cu_attn_dropout {
    const uint64_t *seq_key; /* device, [nseq]: op_dropout_stream(seed, sample) per sequence */
    uint32_t layer;
    uint32_t threshold; /* op_dropout's: dropped when the 32-bit hash is below p·2³² */
    float scale;        /* 1 / (1 − p) */
};
/* cu_attention for training: also writes lse [rows, heads] (fp32, row-major, the sequences' rows
 * only), each query row's ln Σ_j exp(scale·q·k_j) over its visible keys, from which
 * cu_attention_backward recomputes the probabilities. lse = NULL and drop = NULL is
 * cu_attention. drop (NULL = none): the masks above, the same given to cu_attention_backward. */
cudaError_t cu_attention_train(void *out, uint32_t ldo, float *lse, const void *qkv, uint32_t ldqkv,
                               enum cu_dtype t, const uint32_t *seq_off, uint32_t nseq,
                               uint32_t max_len, uint32_t heads, uint32_t kv_heads, uint32_t d,
                               float scale, enum cu_attn_impl impl,
                               const struct cu_attn_dropout *drop, cudaStream_t s);
/* Gradient of cu_attention (FlashAttention-2's backward, any head_dim ≤ 128): from dout [rows,
 * heads·d] (row stride lddout) and the forward's qkv, out (row stride ldout) and lse
 * (cu_attention_train), writes dqkv rows [dq (heads·d) | dk (kv_heads·d) | dv (kv_heads·d)]
 * (type t, row stride lddqkv; a kv head's dk, dv sum over its query heads). Every element of
 * the sequences' rows is written (=, not +=), nothing else. delta: scratch of rows·heads floats
 * (rowsum(dout ⊙ out), left there). Deterministic: no atomics, fixed summation order. drop: the
 * forward's (NULL = none); then dP is masked, dV takes the masked P, as
 * op_attend_block_backward. impl: CU_ATTN_AUTO takes the tensor cores (bf16 products, P and dS
 * rounded to bf16, fp32 sums) where cu_attention_uses_tensor_cores(t, d) and qkv, dout, out are
 * 16-byte aligned with row strides of multiples of 8 elements (dqkv: 4 bytes, an even stride);
 * CU_ATTN_SIMT and every other case: fp32 arithmetic throughout. */
cudaError_t cu_attention_backward(void *dqkv, uint32_t lddqkv, const void *dout, uint32_t lddout,
                                  const void *out, uint32_t ldout, const void *qkv, uint32_t ldqkv,
                                  const float *lse, float *delta, enum cu_dtype t,
                                  const uint32_t *seq_off, uint32_t nseq, uint32_t max_len,
                                  uint32_t heads, uint32_t kv_heads, uint32_t d, float scale,
                                  enum cu_attn_impl impl, const struct cu_attn_dropout *drop,
                                  cudaStream_t s);

/* ---- generation (decode.cu) ---- */

/* The KV cache of one layer: [max_batch][kv_tokens][kv_heads · d] of type t, the k (v) part of
 * each token's qkv row at cache row kvrow = slot · kv_tokens + position. kvrow[row] = CU_KV_NONE:
 * a padding row of a graph bucket (nothing stored, zeros out). */
#define CU_KV_NONE UINT32_MAX
/* kc/vc[kvrow[row]] = the k/v parts of qkv row `row` (width = kv_heads · d values each, k at
 * element koff of the row, v right after it; row stride ldqkv), for rows 0..n-1. */
cudaError_t cu_kv_store(void *kc, void *vc, const void *qkv, uint32_t ldqkv, uint32_t koff,
                        uint32_t width, const uint32_t *kvrow, uint32_t n, enum cu_dtype t,
                        cudaStream_t s);
/* Attention of one new query per row over its cached keys: row `row` is at position pos[row] of
 * the cache slot kvrow[row] − pos[row] (the slot's row 0) and sees cache positions 0..pos[row]
 * (its own key included: store it first). q rows [heads · d] (row stride ldq, e.g. the qkv rows
 * after RoPE); kc/vc one layer's cache; grouped-query heads as cu_attention; out rows [heads · d]
 * (row stride ldo). fp32 softmax and accumulation for both types, any cache length, d ≤ 128
 * (cudaErrorInvalidValue otherwise). */
cudaError_t cu_decode_attention(void *out, uint32_t ldo, const void *q, uint32_t ldq,
                                const void *kc, const void *vc, const uint32_t *kvrow,
                                const uint32_t *pos, uint32_t n, uint32_t heads, uint32_t kv_heads,
                                uint32_t d, float scale, enum cu_dtype t, cudaStream_t s);
/* out[row] = the index of the largest of x[row, 0..n-1] (row stride ld), the lower index on a
 * tie (model_sample's greedy choice); rows 0..rows-1. */
cudaError_t cu_argmax_rows(uint32_t *out, const float *x, uint32_t rows, uint32_t n, size_t ld,
                           cudaStream_t s);

/* Test hook of model_cuda_generate (engine.c): after each pass (the prefill, then every decode
 * step) fn gets the fp32 logits [n, vocab] of the n running rows, row k of them being the batch's
 * row rows[k], before the tokens are chosen from them. The logits come to the host only while a
 * hook is set. fn = NULL removes it. */
typedef void (*cu_generate_hook)(void *user, const uint32_t *rows, uint32_t n, const float *logits,
                                 uint32_t vocab);
struct model_cuda;
void cu_engine_set_generate_hook(struct model_cuda *e, cu_generate_hook fn, void *user);
/* Test hook: the engine's compute stream and the classify slots' upload and download streams, so
 * that a test can hold one of them back (cu_spin) and check that the others wait for it. */
void cu_engine_streams(struct model_cuda *e, cudaStream_t *compute, cudaStream_t *upload,
                       cudaStream_t *download);

/* ---- GEMMs through cuBLASLt (gemm.c) ---- */

/* A cache of matmul plans (descriptors, layouts and the heuristic's algorithm) keyed by shape,
 * types and epilogue, so a steady state (and a graph capture) only sets pointers and calls
 * cublasLtMatmul. One per engine (not thread-safe); owns the workspace. */
struct cu_gemm;
/* The workspace the engine and the trainer give it: cuBLASLt's recommendation for Hopper. */
#define CU_GEMM_WORKSPACE_BYTES ((size_t)32 << 20)
struct cu_gemm *cu_gemm_create(size_t workspace_bytes, char *err, size_t errlen);
void cu_gemm_free(struct cu_gemm *g);
/* Disable the bias/GELU epilogues (always run the fallback kernel): for testing and for a
 * cuBLASLt that rejects them. Also set by the environment NETLM_CUDA_NO_EPILOGUE=1. */
void cu_gemm_set_epilogues(struct cu_gemm *g, bool enabled);
/* Time the heuristic's candidates (the default, unless NETLM_CUDA_GEMM_TUNE=0) or take its first.
 * Training turns it off: the timed choice may differ between processes, and a resumed run must
 * repeat the same algorithms to continue bit for bit. */
void cu_gemm_set_tuning(struct cu_gemm *g, bool enabled);
/* While log is set, each candidate timed for a new plan is written to it as a JSON line (its
 * time and cuBLASLt's ids of its tile, stages and cluster shape): netlm_gemm_bench's view of
 * which kernels cuBLASLt runs fastest for a shape. */
void cu_gemm_set_candidate_log(struct cu_gemm *g, FILE *log);

/* y[n, out] (type yt, row stride ldy) = x[n, in] (type abt, row stride ldx) · w[out, in]ᵀ
 * (type abt, packed) (+ bias, of type yt) (+ y when accumulate), then the tanh GELU when gelu
 * (not with accumulate). fp32 inputs compute in true fp32 (no TF32); bf16 inputs accumulate in
 * fp32. False with err set when cuBLASLt fails. */
bool cu_gemm_run(struct cu_gemm *g, cudaStream_t s, enum cu_dtype abt, enum cu_dtype yt, void *y,
                 size_t ldy, const void *x, size_t ldx, const void *w, const void *bias, size_t n,
                 size_t in, size_t out, bool accumulate, bool gelu, char *err, size_t errlen);

/* The backward GEMMs, as op_matmul_backward. fp32 operands compute in true fp32, bf16 operands
 * accumulate in fp32. Pointers need only their element type's alignment (views into wider rows
 * are fine). n, in or out = 0: nothing is written, true.
 * dx[n, in] (type dxt, row stride lddx) = dy[n, out] (type abt, row stride ldy) · w[out, in]
 * (type abt, packed), or += when accumulate. Only the n × in view of dx is written. */
bool cu_gemm_dx(struct cu_gemm *g, cudaStream_t s, enum cu_dtype abt, enum cu_dtype dxt, void *dx,
                size_t lddx, const void *dy, size_t ldy, const void *w, size_t n, size_t in,
                size_t out, bool accumulate, char *err, size_t errlen);
/* dw[out, in] (fp32, packed) += dy[n, out]ᵀ · x[n, in] (dy, x of type abt, row strides ldy, ldx);
 * db[out] (fp32, NULL = none) += Σ over rows of dy. Deterministic: the same bits on every run
 * of a process (the plan keeps its algorithm; across processes see NETLM_CUDA_GEMM_TUNE in
 * gemm.c). Uses the cu_gemm's workspace as the bias gradient's scratch. */
bool cu_gemm_dw(struct cu_gemm *g, cudaStream_t s, enum cu_dtype abt, float *dw, float *db,
                const void *dy, size_t ldy, const void *x, size_t ldx, size_t n, size_t in,
                size_t out, char *err, size_t errlen);
/* (gemm_kernels.cu) db[out] (fp32) += Σ over the n rows of dy[n, out] (type t, row stride ldy),
 * without atomics: per-chunk partials over fixed chunks of rows, then the partials in chunk
 * order. The chunking depends on (n, out) alone whenever scratch holds 2²⁰ floats (fewer chunks
 * when it holds less; one chunk, no scratch, when it cannot hold out floats). */
cudaError_t cu_gemm_bias_grad(float *db, const void *dy, enum cu_dtype t, size_t ldy, size_t n,
                              size_t out, float *scratch, size_t scratch_floats, cudaStream_t s);

/* ---- the engine and the trainer ---- */

/* Whether cuda:device exists and can run c for up to max_batch sequences (the attention's grid
 * holds at most 65,535) of max_seq tokens (GPT-2: within n_positions; head_dim ≤ 128); false
 * with one line in err. (engine.c) */
struct model_config;
bool cu_model_fits(const struct model_config *c, int device, uint32_t max_batch, uint32_t max_seq,
                   char *err, size_t errlen);

/* ---- timing interchangeable launches (tune.c) ---- */

/* Candidate c's run(ctx, c) once on s, untimed, and the wait for it (what a first call costs once
 * (plans, caches, clocks) stays out of the timings; a failing or hanging candidate shows before
 * them). cudaErrorInvalidValue when run fails (it leaves its own error behind), the wait's error
 * when that fails, cudaErrorLaunchTimeout when the call has not finished after 20 s (a kernel
 * that deadlocks: the stream will not finish anything after it either). */
cudaError_t cu_run_once(cudaEvent_t ev, cudaStream_t s, bool (*run)(void *ctx, int c), void *ctx, int c);

/* The candidates c < n with ms[c] >= 0 timed in CU_TIMED_ROUNDS rounds, each round running every
 * one of them once in turn (from another one each round), so that what changes over the rounds
 * (the card's clocks as it warms, L2 contents) reaches them all alike, where timing one candidate
 * after another would favour the early ones; ms[c] becomes the median of its rounds, -1 when a
 * run fails (the others' go on). ev: n + 1 events. Errors as cu_run_once's. */
#define CU_TIMED_ROUNDS 5
cudaError_t cu_time_rounds(cudaEvent_t *ev, cudaStream_t s, bool (*run)(void *ctx, int c), void *ctx, int n,
                           float *ms);

/* ---- the step profile (profile.c) ---- */

#define CU_PROFILE_EVENTS 2048 /* marks per pass: a forward has 7 per layer, a training step 20 */
#define CU_PROFILE_KINDS 32
struct cu_profile {
    cudaEvent_t ev[CU_PROFILE_EVENTS];
    const char *step[CU_PROFILE_EVENTS];
    unsigned marks, calls;
    bool warm;
    const char *names[CU_PROFILE_KINDS];
    double ms[CU_PROFILE_KINDS];
    unsigned kinds;
};
/* NULL (every call below then does nothing) unless NETLM_CUDA_PROFILE=1. */
struct cu_profile *cu_profile_create(void);
/* A pass begins: the spin kernel's head start, then the first mark. */
void cu_profile_start(struct cu_profile *p, cudaStream_t s);
/* The step just enqueued on s ends here; step names a kind (a string that outlives p). */
void cu_profile_mark(struct cu_profile *p, const char *step, cudaStream_t s);
/* After the stream has finished the pass: each step's time into its kind's sum. ends_call: the
 * pass completes one call of the profiled API (ms_per_call averages over those). */
void cu_profile_collect(struct cu_profile *p, bool ends_call);
/* Prints the JSON line {"cuda_profile": {...}} (when a pass was counted) and frees p. */
void cu_profile_free(struct cu_profile *p);

#ifdef __cplusplus
}
#endif

#endif
