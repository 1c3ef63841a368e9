/* train.h — training: gradients of a loss through the model (one gradient block laid out as the
 * parameters), AdamW and learning-rate schedules, and the classification metrics (confusion
 * matrix, accuracy, per-class precision/recall/F1, macro-F1) that classify and finetune report. */
#ifndef NETLM_TRAIN_H
#define NETLM_TRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/model.h"

/* ---- gradients ---- */

enum train_objective {
    TRAIN_LM = 0,   /* causal LM: position t − 1 predicts id t, for t ≥ target_start */
    TRAIN_CLASSIFY, /* the classification head, NLL of labels */
};

struct train_batch {
    const uint32_t *ids;          /* batch × seq, right-padded */
    const uint32_t *lengths;      /* real ids per row */
    uint32_t batch, seq;
    const uint32_t *labels;       /* TRAIN_CLASSIFY */
    const uint32_t *target_start; /* TRAIN_LM: first target index per row (NULL: 1, every next
                                     id; generation: the first target token's index) */
    uint64_t sample_base;         /* dropout: row b's masks are drawn for sample sample_base + b,
                                     a number no other row of the run shares (e.g. epoch × rows
                                     per epoch + position in the epoch's order) */
};

/* Dropout at the seed's four places: the embedding output, the attention probabilities, and
 * each residual branch before its add (attention output, MLP output). The masks are a function
 * of (seed, sample, layer, place, element) only, so a run is the same with any thread count,
 * split over processes, or stopped and resumed. All zero (the default) is off. */
struct train_dropout {
    float embed, attn, resid;
    uint64_t seed;
};
/* From the model's config (its embd/attn/resid dropout), with the run's seed. */
void train_dropout_from_config(struct train_dropout *d, const struct model_config *c,
                               uint64_t seed);

struct train_runner;
/* Activations kept for the backward pass and one gradient block, for up to max_batch sequences
 * of max_seq ids. The model stays owned by the caller (the optimizer updates it in place). */
struct train_runner *train_runner_create(struct model *m, uint32_t max_batch, uint32_t max_seq,
                                         uint32_t threads, char *err, size_t errlen);
void train_runner_free(struct train_runner *r);
/* Gradients, laid out as the model's parameter block. */
float *train_runner_grads(struct train_runner *r);
size_t train_runner_grad_count(const struct train_runner *r);
void train_zero_grads(struct train_runner *r);
/* The word-embedding gradient (vocab × width floats from *offset in the block) is zero but in the
 * rows of the ids the batches held since train_zero_grads: a bitmap of those rows (bit id & 7 of
 * byte id >> 3), or NULL when every row may be nonzero (an LM head tied to the embedding). What a
 * data-parallel sum can skip. */
const uint8_t *train_runner_embedding_rows(const struct train_runner *r, size_t *offset, uint32_t *vocab,
                                           uint32_t *width);
void train_runner_set_dropout(struct train_runner *r, const struct train_dropout *d);
/* Forward, the mean loss over the batch's targets (*loss), and its gradient added (+=) to the
 * gradient block. False for a batch outside the runner or the vocabulary. */
bool train_forward_backward(struct train_runner *r, enum train_objective objective,
                            const struct train_batch *batch, double *loss);

/* ---- optimizer ---- */

struct train_adamw {
    float lr, beta1, beta2, eps, weight_decay;
    bool uer; /* the seed's variant: no bias correction, decay p −= lr·wd·p after the step */
};
/* Defaults: standard AdamW (torch.optim.AdamW), β (0.9, 0.999), eps 1e-8, wd 0.01. */
void train_adamw_defaults(struct train_adamw *o);
/* The seed's: UER AdamW, eps 1e-6, wd 0.01, no bias correction. */
void train_adamw_uer(struct train_adamw *o);
/* One step (step = 1, 2, ...) at learning rate lr over the whole parameter block; weight decay
 * skips biases and norm weights. m and v are zero-initialised blocks of the same size. */
void train_adamw_step(struct model *m, const float *grads, float *mom, float *vel, uint64_t step,
                      float lr, const struct train_adamw *o, int threads);
/* Global L2 norm of the gradient block; scale multiplies it in place. */
double train_grad_norm(const float *grads, size_t n);
void train_grad_scale(float *grads, size_t n, float scale);

/* ---- training on a GPU (train_cuda.c) ----
 * The same contract as the CPU's train_runner + train_adamw_step, on the CUDA backend: the
 * model's parameters are copied to the device at creation (fp32 master copy, and a bf16 mirror
 * the GEMMs read when bf16), stay there while training, and come back with train_cuda_download.
 * Every call returns false with train_cuda_error set on failure; without the CUDA backend
 * train_cuda_create fails with that reason. */
struct train_cuda;
struct train_cuda *train_cuda_create(struct model *m, int device, bool bf16, uint32_t max_batch,
                                     uint32_t max_seq, char *err, size_t errlen);
void train_cuda_free(struct train_cuda *t);
/* As train_forward_backward: the mean loss (*loss, on the host) and its gradient added (+=). */
bool train_cuda_forward_backward(struct train_cuda *t, enum train_objective objective,
                                 const struct train_batch *batch, double *loss);
/* As train_runner_set_dropout, for the following calls: the same masks as the CPU for the same
 * seed and batch sample_base. False (and nothing changed) for a probability outside [0, 1). */
bool train_cuda_set_dropout(struct train_cuda *t, const struct train_dropout *d);
bool train_cuda_zero_grads(struct train_cuda *t);
bool train_cuda_grad_norm(struct train_cuda *t, double *norm);
bool train_cuda_grad_scale(struct train_cuda *t, float scale);
/* As train_adamw_step (moments kept on the device, zero at creation). */
bool train_cuda_adamw_step(struct train_cuda *t, uint64_t step, float lr, const struct train_adamw *o);
/* Blocks laid out as m->params (any may be NULL): parameters, gradients, moments. */
bool train_cuda_download(struct train_cuda *t, float *params, float *grads, float *mom, float *vel);
/* Back onto the device (resume): parameters and moments (any may be NULL). */
bool train_cuda_upload(struct train_cuda *t, const float *params, const float *mom, const float *vel);
const char *train_cuda_error(const struct train_cuda *t);
/* The device gradient block (aligned layout: *count floats, gaps zero) and the stream every call
 * runs on (a cudaStream_t), for a collective over the gradients between calls (trainer.c). */
bool train_cuda_grad_buffer(struct train_cuda *t, float **grads, size_t *count, void **stream);

/* ---- one trainer on either device (trainer.c): what the training commands call ----
 * The CPU runner + train_adamw_step, or train_cuda, behind one set of calls. The CPU trains the
 * model's parameter block in place; the GPU keeps everything on the device, so m's parameters
 * are current only after trainer_sync_model, and the moments after trainer_moments. Every call
 * returns false with trainer_error set on failure. */
struct trainer_options {
    int device;            /* -1: the CPU; N: cuda:N */
    bool bf16;             /* GPU: bf16 GEMM operands (fp32 master weights, fp32 sums) */
    uint32_t max_batch, max_seq;
    uint32_t threads;      /* CPU */
    const struct train_dropout *dropout; /* NULL: none */
};
struct trainer;
struct trainer *trainer_create(struct model *m, const struct trainer_options *o, char *err, size_t errlen);
void trainer_free(struct trainer *t);
const char *trainer_error(const struct trainer *t);
size_t trainer_param_count(const struct trainer *t);
bool trainer_zero_grads(struct trainer *t);
bool trainer_forward_backward(struct trainer *t, enum train_objective objective,
                              const struct train_batch *batch, double *loss);
bool trainer_grad_scale(struct trainer *t, float scale);
bool trainer_grad_norm(struct trainer *t, double *norm);
bool trainer_adamw_step(struct trainer *t, uint64_t step, float lr, const struct train_adamw *o, int threads);
/* m's parameter block ← the trainer's (a no-op on the CPU), and the reverse after the caller
 * changed m's parameters (e.g. back to the best epoch's). */
bool trainer_sync_model(struct trainer *t);
bool trainer_load_model(struct trainer *t);
/* The host blocks of the two AdamW moments (laid out as the parameters), current; a resume
 * fills them and calls trainer_load_moments. */
bool trainer_moments(struct trainer *t, float **mom, float **vel);
bool trainer_load_moments(struct trainer *t);
/* Data parallel over processes: rank 0 makes an id (NCCL's, for GPUs), the caller gives it to
 * every rank, each joins; trainer_sum_grads then sums the gradients over the world before a
 * step — on GPUs with NCCL, on the CPU through the caller's MPI all-reduces. */
struct trainer_comm_id {
    unsigned char bytes[128];
};
bool trainer_comm_id(struct trainer_comm_id *id, char *err, size_t errlen);
bool trainer_join(struct trainer *t, const struct trainer_comm_id *id, int rank, int world);
struct trainer_host_reduce {
    void (*sum_floats)(float *x, size_t n); /* x ← the sum of every process's x */
    void (*or_bytes)(uint8_t *x, size_t n); /* x ← the bitwise OR of every process's x */
};
/* On the CPU the word-embedding gradient is summed only in the rows some process's batches
 * touched (the rest is zero everywhere), unless a tied LM head made it dense: with the
 * vocabulary's 60-65 k rows it is most of a small model's gradient. */
bool trainer_sum_grads(struct trainer *t, const struct trainer_host_reduce *host);

enum train_schedule { TRAIN_SCHEDULE_CONSTANT = 0, TRAIN_SCHEDULE_LINEAR, TRAIN_SCHEDULE_COSINE };
/* Learning rate for the optimizer step with 0-based index step: linear warmup over warmup steps
 * (from 0), then constant, linear to 0 at total, or cosine to 0 at total (Hugging Face's
 * get_*_schedule_with_warmup). */
float train_schedule_lr(enum train_schedule kind, float base_lr, uint64_t step, uint64_t warmup,
                        uint64_t total);

struct train_confusion {
    uint32_t classes;
    uint64_t *counts; /* [truth][predicted] */
    uint64_t total;
};
bool train_confusion_init(struct train_confusion *c, uint32_t classes);
void train_confusion_release(struct train_confusion *c);
void train_confusion_add(struct train_confusion *c, uint32_t truth, uint32_t predicted);

struct train_class_metrics {
    double precision, recall, f1; /* 0 when undefined (nothing predicted / no support) */
    uint64_t support;             /* rows whose truth is the class */
    uint64_t predicted;           /* rows predicted as the class */
};
double train_accuracy(const struct train_confusion *c);
/* Mean F1 over the classes that occur in the truth or the predictions (a class absent from
 * both says nothing about the model); per_class (optional, `classes` entries) gets every
 * class. */
double train_macro_f1(const struct train_confusion *c, struct train_class_metrics *per_class);

#endif
