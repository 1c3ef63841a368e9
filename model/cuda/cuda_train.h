/* cuda_train.h — launchers of the CUDA training kernels (train_kernels.cu) other than attention
 * and the GEMMs: norm, GELU, SwiGLU and RoPE backward, the embedding gradient, the
 * classification head's tanh and pooling backward, fused softmax + cross-entropy, the residual
 * and embedding dropout, AdamW and the gradient norm.
 *
 * Conventions of cuda_internal.h (rows are tokens, T = fp32 or bf16 with fp32 arithmetic, every
 * launcher enqueues on its stream and returns cudaGetLastError()). Gradients: of weights always
 * fp32 and accumulated (+=) as the CPU ops do; of the residual stream (dx) fp32 and accumulated;
 * of the other activations of type T, like the activations they belong to (dy of a norm, the
 * GELU/SwiGLU/RoPE gradients, the pooled rows' dxn), since the GEMMs around them read and write
 * T. The head's small gradients (dhidden of tanh, dpooled) and the logits are fp32.
 *
 * Determinism: no kernel here adds floats with atomics; every sum over rows runs in an order
 * fixed by the shapes alone (per-chunk partials, then the partials in chunk order), so a run
 * repeats bit for bit. */
#ifndef NETLM_MODEL_CUDA_TRAIN_H
#define NETLM_MODEL_CUDA_TRAIN_H

#include "model/cuda/cuda_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- norms ---- */

/* Floats of scratch cu_norm_backward needs for n rows of c: the rows' statistics (2n) and the
 * per-chunk partial sums of dw and db (2c per chunk of 128 rows). */
size_t cu_norm_backward_scratch_floats(uint32_t n, uint32_t c);
/* Backward of cu_norm, as op_layernorm_backward / op_rmsnorm_backward (statistics recomputed
 * from x): dx[n, c] (fp32) += ∂/∂x, dw[c] += Σ dy·x̂, db[c] += Σ dy (db may be NULL; unused for
 * RMSNorm). dy of type t. scratch: cu_norm_backward_scratch_floats(n, c) floats. */
cudaError_t cu_norm_backward(float *dx, float *dw, float *db, const void *dy, enum cu_dtype t,
                             const float *x, const float *w, uint32_t n, uint32_t c, float eps,
                             enum cu_norm_kind kind, float *scratch, cudaStream_t s);

/* ---- elementwise ---- */

/* dx = dy · gelu'(pre) over count values (type t), tanh form (erf = false) or erf form, as
 * op_gelu_backward; dx may be dy. */
cudaError_t cu_gelu_backward(void *dx, const void *dy, const void *pre, enum cu_dtype t, size_t count, bool erf,
                             cudaStream_t s);
/* From dh [n, f] (row stride ldh) and the forward's input rows gate_up [gate | up] (row stride
 * 2f): d_gate_up [n, 2f] = [dh·up·silu'(gate) | dh·silu(gate)], as op_swiglu_backward. All of
 * type t; d_gate_up may not alias gate_up or dh. */
cudaError_t cu_swiglu_backward(void *d_gate_up, const void *dh, size_t ldh, const void *gate_up,
                               enum cu_dtype t, uint32_t n, uint32_t f, cudaStream_t s);
/* In place, the transpose of cu_rope (rotation by the opposite angle) over the first `heads`
 * heads of d values of each row (row stride ld), as op_rope_backward. (In kernels.cu: the
 * forward's kernel.) */
cudaError_t cu_rope_backward(void *dx, enum cu_dtype t, uint32_t n, uint32_t ld, uint32_t heads,
                             uint32_t d, const uint32_t *pos, const float *cos_t,
                             const float *sin_t, cudaStream_t s);

/* ---- embeddings ---- */

/* Host: groups the rows 0..n-1 by keys[row] (token ids, or positions for the position table) so
 * cu_embed_backward can sum each key's rows without atomics. Writes rows_by_key [n] (rows
 * sorted by key, ascending row order within a key: a stable radix sort), seg_key [n] and
 * seg_start [n + 1] (segment i is rows_by_key[seg_start[i] .. seg_start[i + 1] - 1], all of key
 * seg_key[i]); returns the number of segments. O(n), no allocation. */
uint32_t cu_embed_backward_index(const uint32_t *keys, uint32_t n, uint32_t *rows_by_key,
                                 uint32_t *seg_key, uint32_t *seg_start);
/* table[seg_key[i], c] (fp32) += Σ dx[row, c] over segment i's rows, for i < nseg, in row order
 * (the CPU's order: the same bits as train/grad.c's loop). Device arrays from
 * cu_embed_backward_index. Call once for wte (keys = tokens) and once for wpe (keys =
 * positions). */
cudaError_t cu_embed_backward(float *table, const float *dx, const uint32_t *rows_by_key,
                              const uint32_t *seg_key, const uint32_t *seg_start, uint32_t nseg,
                              uint32_t c, cudaStream_t s);

/* ---- classification head ---- */

/* d[i] (fp32) *= 1 − y[i]² over count values, y = tanh(x) the forward's output (type t). */
cudaError_t cu_tanh_backward(float *d, const void *y, enum cu_dtype t, size_t count,
                             cudaStream_t s);
/* Backward of cu_pool: writes (=, not +=) every row of every sequence of dxn [rows, c] (type t)
 * from dpooled [nseq, c] (fp32): mean gives dpooled/len to each row, first / last the first /
 * last row and zeros elsewhere, max the first row holding the maximum of xn (type t, strict >,
 * as train/grad.c) and zeros elsewhere. Rows outside the sequences are not touched. */
cudaError_t cu_pool_backward(void *dxn, const float *dpooled, const void *xn, enum cu_dtype t,
                             uint32_t c, const uint32_t *seq_off, uint32_t nseq,
                             enum cu_pool_kind kind, cudaStream_t s);

/* ---- loss ---- */

/* A target that contributes nothing (padding, positions without a next token). */
#define CU_XENT_IGNORE UINT32_MAX
/* Per row of logits z [rows, v] (fp32, row stride ld), as op_softmax_xent: loss[row] =
 * −log softmax(z)[target[row]] and grad ← scale·(softmax(z) − onehot(target)), in two passes
 * over the row (online max and sum, then the gradient; no probabilities stored). grad has the
 * row stride ld and type grad_t: fp32 with grad NULL or z is in place; bf16 is the backward
 * GEMMs' operand. A target of CU_XENT_IGNORE (or any value ≥ v) gives loss 0 and a zero row. */
cudaError_t cu_softmax_xent(float *z, size_t ld, void *grad, enum cu_dtype grad_t, float *loss,
                            const uint32_t *target, uint32_t rows, uint32_t v, float scale,
                            cudaStream_t s);

/* ---- dropout (train/grad.c's masks, drawn on the device) ---- */

/* op_dropout's threshold and scale for probability p (train/grad.c's drop_stream). */
static inline void cu_dropout_params(float p, uint32_t *threshold, float *scale)
{
    const double t = (double)p * 4294967296.0;
    *threshold = t >= 4294967295.0 ? UINT32_MAX : (uint32_t)t;
    *scale = 1.0f / (1.0f - p);
}
/* grad.c's drop_rows over the packed rows of nseq sequences (seq_off [nseq + 1], device; rows
 * 0 .. seq_off[nseq] − 1, row stride c): dst (type t) = (base +) M ⊙ src, all fp32 but dst, where
 * M of row i of sequence b, column j is op_dropout_factor of element i·c + j of the stream
 * op_dropout_stream(op_dropout_stream(seq_key[b], layer·4 + place), 0). The product and the sum
 * are rounded separately, as on the CPU. base may be NULL; dst may be src or base (fp32). */
cudaError_t cu_dropout_rows(void *dst, enum cu_dtype t, const float *base, const float *src,
                            uint32_t c, const uint32_t *seq_off, uint32_t nseq, uint32_t rows,
                            const uint64_t *seq_key, uint32_t layer, uint32_t place,
                            uint32_t threshold, float scale, cudaStream_t s);

/* dst (type t) = src (fp32) over count values: the bf16 mirror of the parameters, and fp32
 * gradients as the bf16 operand of a backward GEMM. */
cudaError_t cu_convert_f32(void *dst, enum cu_dtype t, const float *src, size_t count, cudaStream_t s);

/* ---- optimizer ---- */

struct cu_adamw_step {
    float lr, beta1, beta2, eps;
    float weight_decay; /* 0 for tensors the CPU does not decay (biases, norm weights) */
    bool uer;           /* the seed's variant: no bias correction, decay after the step */
    uint64_t step;      /* 1, 2, ...: the bias corrections */
};
/* One AdamW step over n parameters, the arithmetic of train_adamw_step for one tensor: p, m, v,
 * g fp32; p_bf16 (may be NULL) receives the updated parameters rounded to bf16 in the same
 * pass. */
cudaError_t cu_adamw(float *p, uint16_t *p_bf16, float *m, float *v, const float *g, size_t n,
                     const struct cu_adamw_step *o, cudaStream_t s);
/* Doubles of scratch cu_grad_norm needs. */
#define CU_GRAD_NORM_SCRATCH 1024
/* *norm (device, double) = ‖g‖₂ over n values, summed in double in a fixed order (a fixed grid
 * of partial sums, then the partials in order) like train_grad_norm. */
cudaError_t cu_grad_norm(double *norm, const float *g, size_t n, double *scratch,
                         cudaStream_t s);
/* g *= scale (train_grad_scale). */
cudaError_t cu_grad_scale(float *g, size_t n, float scale, cudaStream_t s);
/* Clipping without a trip to the host: coef = max_norm / (*norm + 1e-6) in double; when below 1,
 * g *= (float)coef (the CLI's torch-style clip_grad_norm_). */
cudaError_t cu_grad_clip(float *g, size_t n, const double *norm, float max_norm, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
