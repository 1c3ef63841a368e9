/* finetune.h — what `netlm finetune understanding` and `netlm finetune generation` share: the
 * optimizer, schedule and run options, the model they start from, the tokenization a dataset
 * recorded beside its TSVs, resuming from OUT/checkpoint (only with the training set and settings
 * the checkpoint was trained with), one data parallel optimizer step, the end of an epoch, and
 * scoring dev and test. */
#ifndef NETLM_CLI_FINETUNE_H
#define NETLM_CLI_FINETUNE_H

#include "cli/cli.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"
#include "train/train.h"

#define CLI_FINETUNE_OPTIONS                                                                       \
    {"warmup", NULL, 0, "FRACTION", "share of the steps with linear warmup (default 0.1)", NULL},   \
    {"schedule", "scheduler", 0, "linear|cosine|constant", "after warmup (default linear to 0)", NULL}, \
    {"optimizer", NULL, 0, "adamw|uer", "bias-corrected AdamW (default) or the seed's UER AdamW", NULL}, \
    {"weight-decay", NULL, 0, "WD", "decoupled weight decay, not on biases and norms (default 0.01)", NULL}, \
    {"clip", NULL, 0, "NORM", "clip the gradient's global norm (default 0 = off)", NULL},           \
    {"world-size", NULL, 0, "N", "processes training together, each on its slice of every world × "  \
                                 "--batch_size sequences (start them with mpirun -np N; default: as " \
                                 "many as mpirun started)", NULL},                                    \
    {"resume", NULL, 0, NULL, "continue from OUTPUT/checkpoint, exactly as if never stopped (the "    \
                              "same training set and settings: a change is refused); SIGINT or "      \
                              "SIGTERM ends a run at its next step with a checkpoint", NULL},          \
    {"stop-after", NULL, 0, "N", "end this run after N epochs, checkpoint kept (a time-limited job; " \
                                 "--resume goes on)", NULL},                                          \
    CLI_SEED_QWEN_OPTIONS

struct cli_finetune_args {
    double warmup, clip;
    enum train_schedule schedule;
    const char *optimizer;    /* its name, for the checkpoint's record of the settings */
    struct train_adamw adamw; /* weight decay set; lr per step */
    uint32_t world_size;      /* 0: not given */
    uint32_t stop_after;      /* epochs; 0: run to the end */
    bool resume;
};
/* CLI_FINETUNE_OPTIONS' values; false after one error line. */
bool cli_finetune_args(const char *cmd, const struct cli_opt *opts, struct cli_finetune_args *f);

/* After the options: joins the processes mpirun started and checks --world_size against them;
 * with several, rank r trains on the GPU after rank r − 1's (cuda:D+r), so where->device moves.
 * 0, or the exit status after one error line. */
int cli_finetune_start(const char *cmd, const struct cli_finetune_args *f, struct cli_device *where, int *rank,
                       int *world);

/* The model a finetune run starts from (cli_training_model with the command's options) and the
 * vocabulary file it tokenizes with (*vocab_path, in vocab_buf when it is the model's own; NULL:
 * the built-in one). NULL after one error line. */
struct model *cli_finetune_model(const char *cmd, const struct cli_opt *opts, const char *checkpoint, uint64_t seed,
                                 char *vocab_buf, size_t vocab_len, const char **vocab_path);

/* dataset.json: what `netlm dataset` records beside the TSVs it writes — the task, how the rows
 * were tokenized and (generation) which fields the targets hold — so that the model finetune
 * keeps tokenizes captures as its training rows were. */
#define CLI_DATASET_SETTINGS "dataset.json"
struct cli_dataset_settings {
    bool present;                  /* false: no dataset.json beside the training TSV */
    char path[4200];               /* the file read */
    char task[16];                 /* "understanding" | "generation" */
    struct model_tokenizer tokenizer; /* vocab unused */
    enum tok_field fields[TOK_FIELD_COUNT];
    uint32_t n_fields;             /* generation */
};
/* The dataset.json beside train (none: present false, not an error), checked against the one
 * beside dev and test where they lie elsewhere and have one, and against task. False after one
 * error line naming the file. */
bool cli_dataset_settings_read(const char *cmd, const char *task, const char *train, const char *dev,
                               const char *test, struct cli_dataset_settings *ds);
/* The recorded tokenization into the model's config (when there is one): `netlm classify` and the
 * sensor read it there. */
void cli_dataset_settings_apply(const struct cli_dataset_settings *ds, struct model_config *mc);

/* FNV-1a over n bytes from h (start with CLI_DIGEST_START): the training rows' fingerprint. */
#define CLI_DIGEST_START 0xcbf29ce484222325ull
uint64_t cli_digest(uint64_t h, const void *bytes, size_t n);

/* A run's shape and bookkeeping. The command fills the first block; cli_finetune_begin the rest. */
struct cli_finetune_run {
    const char *cmd, *out_dir, *vocab_path; /* vocab_path: the model's vocabulary file, or NULL */
    bool writer, quiet;                     /* writer: rank 0, which writes OUT */
    int rank;
    uint64_t seed;
    uint32_t epochs, report; /* report: a status line every report steps */
    double lr;               /* the peak learning rate */
    float *best; /* the best epoch's parameters so far: trainer_param_count floats */
    /* What training depends on that the command alone knows, as space-separated words NAME=VALUE
     * (NAME an option's seed spelling, or "task", or "train" = ROWS:DIGEST of the training rows):
     * with the shared options it makes the checkpoint's record, which --resume must match. */
    char task_settings[320];
    char settings[512]; /* cli_finetune_begin: the whole record */
    bool refused;       /* cli_finetune_begin failed because --resume met other settings: exit 2 */

    uint32_t batch;            /* sequences per process and step */
    uint64_t global_batch;     /* sequences per step: world × batch */
    uint64_t steps_per_epoch, total_steps, warmup_steps;
    uint64_t start_epoch, start_step; /* where this run begins (0, or the checkpoint's) */
    uint64_t start_in_epoch;          /* steps of start_epoch done already (an interrupted run's checkpoint) */
    double best_dev;                  /* the best dev score; −1 before the first */
    double t0, last_print, loss_sum;  /* the status line: since t0 (the first step), the losses since */
    uint64_t loss_count, tokens;      /* the last one, every process's tokens */
    uint64_t checkpoint_step;         /* the step OUT/checkpoint holds; UINT64_MAX: none yet */
};
/* Steps of world × batch sequences over train_rows per epoch, the warmup, and with --resume the
 * checkpoint's state: the AdamW moments, the step and epoch (checked against this run's seed,
 * sequences per step, training set and settings: a difference is one error line naming it) and
 * the best epoch's parameters so far (OUT's model) into best; else best =
 * the model's parameters. Then, the inputs known good (bad input leaves nothing behind), the
 * writer makes OUT and opens its loss.csv (loss_header its first line; resumed: the rows up to the
 * checkpoint kept) into *loss_csv, NULL in the other processes. False after one error line. */
bool cli_finetune_begin(struct cli_finetune_run *run, const struct cli_finetune_args *f, struct trainer *tr,
                        struct model *m, size_t train_rows, uint32_t batch, int world, const char *loss_header,
                        FILE **loss_csv);
/* Step s (0-based) of an epoch in order: this process's rows order[*lo .. *hi), empty when the
 * epoch ends before its slice; every process's tokens (lengths) count into the status line's rate. */
void cli_finetune_slice(struct cli_finetune_run *run, uint64_t s, const uint32_t *order, size_t rows,
                        const uint32_t *lengths, size_t *lo, size_t *hi);
/* After optimizer step number step (1-based) of epoch epoch, its loss and learning rate: the
 * status line (loss since the last one, tokens/s, ETA) every report steps and at least every 30 s. */
void cli_finetune_stepped(struct cli_finetune_run *run, uint64_t epoch, uint64_t step, double loss, float lr);
/* The end of epoch epoch (0-based; the trainer's model synced into m, dev scored dev_score, step
 * steps done): a better score keeps the parameters in best and the model in OUT; OUT/checkpoint
 * gets the epoch; *stop says whether --stop-after ends the run here (said on stderr). False after
 * one error line. */
bool cli_finetune_epoch_end(struct cli_finetune_run *run, const struct cli_finetune_args *f, struct trainer *tr,
                            struct model *m, uint64_t step, uint64_t epoch, double dev_score, bool *stop);

/* The CUDA engine that a training run's evaluations share: made at the first, given the weights
 * again at each later one (training changed them in between) instead of being made anew. Its
 * owner frees it (model_cuda_free(keep.engine)) before the model. */
struct cli_eval_gpu {
    struct model_cuda *engine;
    struct model_cuda_options opt;
};
/* An engine with options o for m: keep's when it has one made with the same options (its weights
 * copied again), else a new one, which keep then holds (and an older one is freed). NULL with a
 * message in err when it cannot be had. */
struct model_cuda *cli_eval_engine(struct model *m, const struct model_cuda_options *o,
                                   struct cli_eval_gpu *keep, char *err, size_t errlen);

/* Who scores which rows of dev or test: each of world processes its contiguous share
 * (cli_world_share), and the status line while that runs. */
struct cli_scoring {
    int rank, world;
    const char *what; /* "dev", "test" */
    bool quiet;
};
/* This process's share of n rows in batches of at most batch, with a status line every 30 s
 * (rows done, rate, time left):
 *     for (struct cli_scoring_walk w = cli_scoring_begin(&sc, n, batch); cli_scoring_next(cmd, &w);)
 *         ... rows w.row .. w.row + w.count − 1 ... */
struct cli_scoring_walk {
    const struct cli_scoring *sc;
    size_t lo, hi, row, count;
    uint32_t batch;
    double start, last_print;
};
struct cli_scoring_walk cli_scoring_begin(const struct cli_scoring *sc, size_t n, uint32_t batch);
bool cli_scoring_next(const char *cmd, struct cli_scoring_walk *w);

/* One optimizer step (index step, 0-based) on this process's slice tb (tb->batch may be 0: its
 * gradient is zero) of terms loss terms (sequences, or target tokens): the gradient of the
 * global batch (cli_world_grads), clipped, then AdamW at lr. loss gets the global batch's mean
 * loss. False after one error line (run->cmd's): the trainer's error, or a loss or gradient norm
 * that is not finite (cli_step_finite; the weights are left as they were). */
/* After a step (epoch_done false) or an epoch's end (its checkpoint written): true when SIGINT,
 * SIGTERM or SIGHUP asked the run to stop (cli_stop_arm; on any process: every process stops
 * here), with OUT/checkpoint holding this step and one line saying so; *status is then the exit
 * status, 128 + the signal, or 1 after an error line when the checkpoint could not be written. */
bool cli_finetune_interrupted(struct cli_finetune_run *run, struct trainer *tr, struct model *m, uint64_t step,
                              uint64_t epoch, bool epoch_done, FILE *loss_csv, int *status);
bool cli_finetune_step(const struct cli_finetune_run *run, struct trainer *tr, enum train_objective objective,
                       const struct train_batch *tb, double terms, int world, const struct cli_finetune_args *f,
                       uint64_t step, float lr, uint32_t threads, double *loss);

#endif
