/* model.h — the traffic transformer: model directories (config.json + model.safetensors), the
 * GPT-2 and Qwen2 architectures in fp32 on the CPU, the classification and generation heads.
 *
 * A model is loaded once (parameters in one allocation) and run through a runner, which owns the
 * activations sized for (max_batch, max_seq) and the KV cache. Inputs are right-padded batches
 * with per-sequence lengths; only real tokens are computed, so padding never changes a result.
 * This folder never sees packets: token ids in, scores and token ids out. */
#ifndef NETLM_MODEL_H
#define NETLM_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- configuration (config.json) ---- */

enum model_arch { MODEL_ARCH_GPT2 = 0, MODEL_ARCH_QWEN2 };
enum model_task { MODEL_TASK_LM = 0, MODEL_TASK_CLASSIFY, MODEL_TASK_GENERATE };
enum model_pooling { MODEL_POOL_MEAN = 0, MODEL_POOL_FIRST, MODEL_POOL_LAST, MODEL_POOL_MAX };
enum model_norm { MODEL_NORM_STANDARD = 0, MODEL_NORM_UER }; /* GPT-2 LayerNorm flavour */
enum model_act { MODEL_ACT_GELU_TANH = 0, MODEL_ACT_GELU_ERF, MODEL_ACT_SILU };

#define MODEL_MAX_LABELS 65536u

/* How the model's inputs were tokenized, so classify/sensor feed it the same way. Plain fields:
 * the tokenizer folder owns their meaning. */
struct model_tokenizer {
    char header_mode[16];       /* "full" */
    uint32_t stride;            /* 2 */
    uint32_t tokens_per_packet; /* 64 */
    uint32_t packets;           /* 32 */
    bool sep_between_packets;   /* false */
    char vocab[256];            /* "builtin", or a file name inside the model directory */
    bool vocab_recorded;        /* config.json names it (a netlm model): the ids are certain */
};

struct model_config {
    enum model_arch arch;
    uint32_t vocab_size;
    uint32_t hidden;        /* n_embd / hidden_size */
    uint32_t layers;
    uint32_t heads;
    uint32_t kv_heads;      /* = heads for GPT-2 */
    uint32_t head_dim;      /* hidden / heads */
    uint32_t ffn;           /* n_inner (4 × hidden when null) / intermediate_size */
    uint32_t max_positions; /* n_positions / max_position_embeddings */
    float norm_eps;
    double rope_theta;      /* Qwen2 */
    bool tie_embeddings;    /* always true for GPT-2 */
    enum model_norm norm;
    enum model_act act;     /* GPT-2's MLP activation; Qwen2 is SiLU (SwiGLU) */
    /* Dropout probabilities in training (inference ignores them): the embedding output, the
     * attention probabilities, and each residual branch (attention and MLP output). GPT-2:
     * embd_pdrop, attn_pdrop, resid_pdrop (0.1 when absent, as transformers reads them);
     * Qwen2: attention_dropout only (0); the seed's UER config: dropout (0.1) for all three. */
    float dropout_embed, dropout_attn, dropout_resid;
    /* the "netlm" object */
    enum model_task task;
    enum model_pooling pooling;
    uint32_t num_labels;    /* classify: > 0 */
    char **labels;          /* num_labels names ("0", "1", ... when the file has none) */
    uint32_t seq_length;    /* input ids per sequence, [CLS] and [SEP] included (128) */
    uint32_t tgt_seq_length; /* generate: [CLS] t1 .. [SEP] as the seed counts it (4) */
    struct model_tokenizer tokenizer;
    /* Read, never written: which sizes were used and why, when they are not the ones the file
     * states (the seed's UER config with use_qwen), for the command to say; "" otherwise. */
    char sizes_note[320];
};

/* Defaults for everything optional; arch and sizes zero. */
void model_config_init(struct model_config *cfg);
void model_config_release(struct model_config *cfg); /* frees labels */
/* Deep copy (labels included). */
bool model_config_copy(struct model_config *dst, const struct model_config *src);
/* config.json in Hugging Face form (model_type gpt2 | qwen2, plus the netlm object) or the seed's
 * UER form (emb_size, layers_num, ...). Unknown keys are ignored; a missing required key, a value
 * of the wrong type or an inconsistent size is one error line naming the file and the key. */
bool model_config_load(const char *path, struct model_config *cfg, char *err, size_t errlen);
bool model_config_parse(const char *name, const char *json, size_t len, struct model_config *cfg,
                        char *err, size_t errlen);
/* Checks sizes and limits (heads divide hidden, kv_heads divide heads, ...). */
bool model_config_validate(const struct model_config *cfg, char *err, size_t errlen);
/* Hugging Face form with the netlm object, written to a temporary name and renamed. */
bool model_config_write(const struct model_config *cfg, const char *path, char *err, size_t errlen);

const char *model_arch_name(enum model_arch a);       /* "gpt2", "qwen2" */
const char *model_task_name(enum model_task t);       /* "lm", "classify", "generate" */
const char *model_pooling_name(enum model_pooling p); /* "mean", "first", "last", "max" */
bool model_task_parse(const char *name, enum model_task *out);
bool model_pooling_parse(const char *name, enum model_pooling *out);

/* ---- the model ---- */

struct model;
/* Random weights as the seed initialises them: N(0, 0.02) for matrices, embeddings and biases,
 * ones/zeros for norms; deterministic in seed. */
struct model *model_create(const struct model_config *cfg, uint64_t seed, char *err, size_t errlen);
/* A model directory: config.json and model.safetensors, or a Hugging Face checkpoint (sharded
 * ones through model.safetensors.index.json). F16/BF16 tensors become fp32. */
struct model *model_load(const char *dir, char *err, size_t errlen);
/* config.json and model.safetensors (Hugging Face names and layouts) into dir, created if
 * missing; each file written to a temporary name and renamed. */
bool model_save(const struct model *m, const char *dir, char *err, size_t errlen);
/* The same with BF16 weights (round to nearest even): half the size, for shipping a model; it
 * loads back as fp32. */
bool model_save_bf16(const struct model *m, const char *dir, char *err, size_t errlen);
void model_free(struct model *m);
const struct model_config *model_get_config(const struct model *m);
struct model_config *model_config_mut(struct model *m); /* netlm object and dropout fields only */
uint64_t model_parameter_count(const struct model *m);
/* The parameter block (all tensors, aligned, in layout order; *floats its length): what an
 * optimizer updates and a checkpoint snapshots. */
float *model_params(struct model *m, size_t *floats);
/* Replaces the classification head with a fresh one for num_labels classes (N(0, 0.02)). */
bool model_set_labels(struct model *m, uint32_t num_labels, char **labels, uint64_t seed,
                      char *err, size_t errlen);
/* Resize the vocabulary: keep the first min(old, new) embedding rows, new rows N(0, 0.02); with
 * init_all every row is reinitialised. */
bool model_resize_vocab(struct model *m, uint32_t vocab_size, bool init_all, uint64_t seed,
                        char *err, size_t errlen);

/* Where an output named path is written (the commands' outputs and model files alike). A FIFO,
 * character device or socket (/dev/null, /dev/stdout, a named pipe) is written in place
 * (*in_place): a file renamed over it would take its place. A symbolic link to a file is followed,
 * so that the renamed file replaces the file it names and the link stays. Anything else, existing
 * or not, is to be written under a temporary name beside *target and renamed over it. A folder is
 * an error. *target: malloc'd. */
bool model_output_target(const char *path, char **target, bool *in_place, char *err, size_t errlen);
/* observer(tmp, true) as a model file starts under its temporary name, observer(tmp, false) once
 * it is renamed or removed: a program that removes what a signal leaves behind learns of them
 * (netlm's commands: cli_temp_track). NULL: none. */
void model_set_temp_observer(void (*observer)(const char *tmp_path, bool live));

/* ---- running it ---- */

struct model_runner;
/* Activations for up to max_batch sequences of up to max_seq tokens, and (kv_tokens > 0) a KV
 * cache of max_batch × kv_tokens positions for generation. threads ≥ 1. */
struct model_runner *model_runner_create(const struct model *m, uint32_t max_batch,
                                         uint32_t max_seq, uint32_t kv_tokens, uint32_t threads,
                                         char *err, size_t errlen);
void model_runner_free(struct model_runner *r);
size_t model_runner_bytes(const struct model_runner *r);

/* ids: batch rows of seq ids (right-padded), lengths[b] real ids in row b (1..seq).
 * hidden (optional): final-norm states [batch, seq, hidden], pad rows untouched.
 * logits (optional): LM head [batch, seq, vocab], pad rows untouched. */
bool model_forward(struct model_runner *r, const uint32_t *ids, const uint32_t *lengths,
                   uint32_t batch, uint32_t seq, float *hidden, float *logits);
/* Classification: pooled states [batch, hidden] (optional) and softmax scores
 * [batch, num_labels]. */
bool model_classify(struct model_runner *r, const uint32_t *ids, const uint32_t *lengths,
                    uint32_t batch, uint32_t seq, float *pooled, float *scores);
/* The min(k, n) best of one row's n scores into best, best first (ties: the lower id first), the
 * one ranking `netlm classify` and the sensor report. Returns the count. */
uint32_t model_top_labels(const float *scores, uint32_t n, uint32_t k, uint32_t *best);

struct model_sampling {
    float temperature; /* 0 = greedy */
    uint32_t top_k;    /* 0 = all */
    float top_p;       /* 1 = all */
    uint64_t seed;      /* each row draws from its own stream (seed, row) */
    bool ignore_sep;    /* always max_new tokens (benchmarks) */
};
/* Continues each prompt (its lengths[b] real ids) by up to max_new tokens, stopping a row after
 * it emits [SEP] (kept in its output). out: [batch, max_new] (unused slots 0), out_len[b] the
 * count. Needs kv_tokens ≥ seq + max_new. */
bool model_generate(struct model_runner *r, const uint32_t *ids, const uint32_t *lengths,
                    uint32_t batch, uint32_t seq, const struct model_sampling *sampling,
                    uint32_t max_new, uint32_t *out, uint32_t *out_len);

/* ---- running it on a GPU (model/cuda/) ----
 *
 * The inference engine: the model's weights copied to one GPU (bf16, or fp32 for testing),
 * activations for (max_batch, max_seq) allocated once, pinned host buffers, a compute stream and
 * (classification) an upload and a download stream; no allocation after the first call of each
 * shape bucket. Same contract as model_classify: a
 * right-padded batch with per-sequence lengths in, fp32 scores out; generation with a device KV
 * cache (the kv_tokens option) as model_generate's. Built when nvcc is found
 * (NETLM_HAVE_CUDA); otherwise every call reports that CUDA is not built in. An engine is used
 * by one thread at a time and must not outlive its model. */

enum model_precision { MODEL_PRECISION_BF16 = 0, MODEL_PRECISION_FP32 };

struct model_cuda_options {
    int device;                     /* CUDA ordinal (cuda:N) */
    enum model_precision precision; /* bf16 weights and activations, fp32 accumulation */
    uint32_t max_batch, max_seq;
    bool lm_head;                   /* room for model_cuda_last_logits ([max_batch, vocab]) */
    bool graphs;                    /* replay a CUDA graph per (batch, tokens, length) bucket */
    bool residual_bf16; /* bf16 precision only (model_cuda_create refuses it with fp32): the
                         * residual stream in bf16 too (less memory traffic, ~1e-2 relative
                         * drift over the layers) */
    uint32_t kv_tokens; /* model_cuda_generate: positions per sequence of the device KV cache
                         * (0 = none; at least seq + max_new of each call; GPT-2: within
                         * n_positions), allocated at create with room for max_batch rows */
};

/* "cpu" → -1, "cuda" → 0, "cuda:N" → N; false for anything else. */
bool model_device_parse(const char *name, int *device);
/* GPUs visible to this process; 0 when none or when built without CUDA. */
int model_cuda_device_count(void);
/* One line about cuda:device into out ("NVIDIA H100 80GB HBM3, 79.2 GiB, sm_90"); false when it
 * is not visible or the build has no CUDA. */
bool model_cuda_describe(int device, char *out, size_t len);
/* The CUDA runtime and driver versions as "runtime 13.0, driver 13.0" (driver "none" without a
 * driver); false when built without CUDA. */
bool model_cuda_versions(char *out, size_t len);

struct model_cuda;
struct model_cuda *model_cuda_create(const struct model *m, const struct model_cuda_options *o,
                                     char *err, size_t errlen);
void model_cuda_free(struct model_cuda *e);
size_t model_cuda_bytes(const struct model_cuda *e); /* device memory held */
/* Copies the model's weights to the GPU again, after they changed on the host (training between
 * evaluations): same model, same shapes, no allocation, captured graphs kept. Not while a
 * classify batch is in flight. */
bool model_cuda_reload_weights(struct model_cuda *e);
/* As model_classify: pooled [batch, hidden] (optional) and softmax scores [batch, num_labels].
 * The same as submit + wait of this batch alone (batches already in flight finish first; their
 * waits then return at once). */
bool model_cuda_classify(struct model_cuda *e, const uint32_t *ids, const uint32_t *lengths,
                         uint32_t batch, uint32_t seq, float *pooled, float *scores);
/* model_cuda_classify in two halves, so that the caller prepares batch k + 1 while the GPU runs
 * batch k. submit checks and packs the batch into one of two slots (pinned host and device
 * buffers for inputs and outputs: ids and lengths may be reused as soon as it returns) and
 * enqueues its upload, its pass and its download; pooled (may be NULL) and scores are where its
 * results go, and must stay valid until its wait returns. wait finishes the oldest batch not yet
 * waited for (batches complete in submit order, one wait per successful submit) and returns its
 * status; without a batch to wait for it fails ("classify_wait without a batch in flight").
 * Two batches at most are in flight: a third submit blocks on the oldest (which then writes its
 * results, and its wait returns at once). Uploads, passes and downloads overlap across the two
 * slots; the passes themselves run one after the other (one activation arena). A failed submit
 * submits nothing. model_cuda_last_logits and model_cuda_generate may be called with batches in
 * flight: they run after them on the compute stream and leave their results to their waits. */
bool model_cuda_classify_submit(struct model_cuda *e, const uint32_t *ids, const uint32_t *lengths,
                                uint32_t batch, uint32_t seq, float *pooled, float *scores);
bool model_cuda_classify_wait(struct model_cuda *e);
/* LM head logits of each row's last real position: logits [batch, vocab]. */
bool model_cuda_last_logits(struct model_cuda *e, const uint32_t *ids, const uint32_t *lengths,
                            uint32_t batch, uint32_t seq, float *logits);
/* As model_generate (greedy, or sampled by the CPU's code from the same per-row streams), on the
 * GPU with the engine's KV cache: needs kv_tokens ≥ seq + max_new. */
bool model_cuda_generate(struct model_cuda *e, const uint32_t *ids, const uint32_t *lengths,
                         uint32_t batch, uint32_t seq, const struct model_sampling *sampling,
                         uint32_t max_new, uint32_t *out, uint32_t *out_len);
/* Why the last call on e failed (bad input, or the CUDA error and where it happened). */
const char *model_cuda_error(const struct model_cuda *e);
/* The kernels the engine chose so far for its steps with several (Qwen2's up projection with the
 * SwiGLU, the attention), per class of shapes, and what each candidate took when they were timed,
 * as one JSON object into out; false when out is too small (truncated) or without CUDA. */
bool model_cuda_kernel_choices(const struct model_cuda *e, char *out, size_t len);

#endif
