/* cli.h — private to cli/: the subcommand table, option parsing with the seed's aliases, and
 * the small helpers every command shares (number parsing, atomic output files, progress). */
#ifndef NETLM_CLI_H
#define NETLM_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* One option of a command. Long names are kebab-case; the seed's snake_case spelling of the
 * same name is accepted automatically (--seq_length = --seq-length), and alias names a second
 * spelling where the seed's flag differs. */
struct cli_opt {
    const char *name;
    const char *alias;
    char short_name;
    const char *arg;  /* value placeholder for --help; NULL for a flag without value */
    const char *help;
    const char *value; /* after parsing: the value, "1" for a given flag, NULL if absent */
};

enum { CLI_PARSED = 0, CLI_HELP_SHOWN = 1, CLI_BAD_USAGE = 2 };

/* Parses argv (argv[0] is the command name) into opts (terminated by a zeroed entry) and the
 * positional arguments (pointers into argv, in order). Unknown options, missing values and
 * --help are handled here: messages go to stderr / stdout. */
int cli_parse(const char *command, const char *usage, const char *description, struct cli_opt *opts,
              int argc, char **argv, const char ***positional, int *n_positional);
const char *cli_get(const struct cli_opt *opts, const char *name);
bool cli_flag(const struct cli_opt *opts, const char *name);

/* Typed values with range checks; on error print "netlm CMD: --flag: ..." and return false. */
bool cli_u64(const char *command, const struct cli_opt *opts, const char *name, uint64_t def,
             uint64_t min, uint64_t max, uint64_t *out);
bool cli_u32(const char *command, const struct cli_opt *opts, const char *name, uint32_t def,
             uint32_t min, uint32_t max, uint32_t *out);
bool cli_double(const char *command, const struct cli_opt *opts, const char *name, double def,
                double min, double max, double *out);
/* One of choices (NULL-terminated); returns the index or -1 after printing an error. */
int cli_choice(const char *command, const struct cli_opt *opts, const char *name, const char *def,
               const char *const *choices);

/* Prints "netlm CMD: message" to stderr. */
void cli_error(const char *command, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cli_warn(const char *command, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* An output written under a temporary name and renamed on success, so no reader ever sees a
 * half-written file. path "-" or NULL writes to stdout; a device or pipe (/dev/null, a FIFO) is
 * written in place, a symbolic link is followed (model_output_target). An output that is one of
 * the files cli_collect_files listed is refused: the run would replace its own input. A run ended
 * by SIGINT, SIGTERM or SIGHUP removes the temporary files of the outputs it had open. */
struct cli_output {
    FILE *fp;
    char *path;     /* as given, for messages */
    char *target;   /* the file renamed over, or written in place */
    char *tmp_path; /* NULL when written in place */
};
bool cli_output_open(const char *command, const char *path, struct cli_output *out);
/* dir and the folders above it that do not exist yet (mkdir -p), as the seed's scripts make
 * their output folders; with parent_only, the folders above the file dir names. False after one
 * line naming flag. */
bool cli_make_folders(const char *command, const char *flag, const char *dir, bool parent_only);
/* A temporary file that is not a cli_output's (a token shard), removed too when a signal ends the
 * run; untracked once it is renamed or removed. */
void cli_temp_track(const char *path);
void cli_temp_untrack(const char *path);
/* A directory being filled, such as a checkpoint staged as OUT/checkpoint.new: SIGINT, SIGTERM or
 * SIGHUP empties and removes it (one at a time). */
void cli_temp_track_dir(const char *dir);
void cli_temp_untrack_dir(void);
/* A long loop's clean stop: armed, the first SIGINT, SIGTERM or SIGHUP is only recorded
 * (cli_stop_requested: its number, 0 before) for the loop to end at its next step boundary; a
 * second one ends the run at once, temporaries removed. Disarmed, every signal does that. */
void cli_stop_arm(bool armed);
int cli_stop_requested(void);
/* False after an error line when path names one of the files cli_collect_files listed (for
 * outputs that are not a cli_output: replay's). */
bool cli_output_not_input(const char *command, const char *path);
bool cli_output_commit(const char *command, struct cli_output *out);
void cli_output_abort(struct cli_output *out);

/* A status line on stderr with rate and ETA: redrawn in place on a terminal, one line every
 * 10 s otherwise (or never with quiet). */
struct cli_progress {
    const char *what;
    uint64_t total_bytes;
    double start, last_print;
    bool tty, quiet, printed;
};
void cli_progress_start(struct cli_progress *p, const char *what, uint64_t total_bytes, bool quiet);
void cli_progress_update(struct cli_progress *p, uint64_t done_bytes, uint64_t items, const char *unit);
void cli_progress_end(struct cli_progress *p, uint64_t done_bytes, uint64_t items, const char *unit);
double cli_now(void);

/* Expands files and folders (recursively, sorted) into capture paths. A file named on the
 * command line is taken as it is; a folder contributes every regular file that starts as a pcap
 * or pcapng capture does, and the others (a README, notes) are skipped with one warning line that
 * counts them. A file reached twice (named twice, a folder and a file in it, a link: the same
 * device and inode) is listed once, where it first appears, with one warning line. A missing
 * path is an error. Returns the count or -1, and the sum of the sizes in *total_bytes. */
int cli_collect_files(const char *command, const char *const *paths, int n, char ***files_out,
                      uint64_t *total_bytes);
/* The same, and with streams also "-" (standard input, at most once) and a pipe or character
 * device named on the command line (bash's <(...), /dev/stdin), as cap_open_file reads them. For
 * commands that open each input once: a stream cannot be read a second time. *total_bytes is 0
 * when a stream's size is unknown (the progress line then shows no share or ETA). */
int cli_collect_inputs(const char *command, const char *const *paths, int n, bool streams, char ***files_out,
                       uint64_t *total_bytes);
void cli_free_files(char **files, int n);

/* A TSV field that holds outside text (a file or class name, a label): tab, newline, carriage
 * return and backslash become \t, \n, \r and \\, so a row keeps its columns whatever the
 * name (docs/sessions.md). cli_tsv_escape writes into out (cap bytes with the terminator; at most
 * CLI_TSV_ESCAPED_MAX(len) needed), stops before an escape that does not fit, and returns the
 * length; cli_tsv_put writes to f. */
#define CLI_TSV_ESCAPED_MAX(len) ((len) * 2 + 1)
size_t cli_tsv_escape(const char *s, char *out, size_t cap);
void cli_tsv_put(FILE *f, const char *s);
/* Each of n file names as a format writes it, escaped once before the rows (a JSON string's body
 * with json, else a TSV field); lens (optional) gets their lengths. NULL when out of memory; free
 * with cli_free_files. */
char **cli_escape_names(char *const *files, int n, bool json, size_t *lens);
/* s as a JSON string, quotes included, escaped by common/json_escape.h (valid UTF-8 whatever s
 * holds). False when memory was short and the string was written cut. */
bool cli_json_string(FILE *f, const char *s);

/* A dataset TSV: columns found by the header's names (label, text_a). */
struct cli_tsv {
    FILE *f;
    const char *path;
    int label_col, text_col, columns;
    char *line;
    size_t cap;
    uint64_t line_no;
    uint64_t size, done; /* bytes, for progress */
};
/* Opens path and reads its header; false after an error line. */
bool cli_tsv_open(const char *command, const char *path, struct cli_tsv *t);
/* Next row: *label (NULL without a label column) and *text point into the line buffer.
 * Returns 1, 0 at the end, -1 after an error line naming file and line. */
int cli_tsv_next(const char *command, struct cli_tsv *t, char **label, char **text);
void cli_tsv_close(struct cli_tsv *t);

/* ---- training, shared by pretrain and finetune (train_common.c) ---- */

/* The order of epoch `epoch` over n examples: a seeded permutation, a function of (seed, epoch)
 * only, so a resumed run reads exactly what the uninterrupted one would. */
void cli_epoch_order(uint64_t seed, uint64_t epoch, size_t n, uint32_t *order);

/* --dropout P (UER's flag) sets the model's three dropout probabilities, which are saved with
 * it; absent, the model's config decides (0.1 for a GPT-2 config that names none). The runner
 * then trains with them, its masks drawn from seed. */
#define CLI_DROPOUT_OPTION                                                                          \
    {"dropout", NULL, 0, "P",                                                                      \
     "dropout at the embeddings, attention probabilities and residual branches (default: the "     \
     "model config's embd/attn/resid_pdrop; 0 = off)", NULL}
struct model;
struct model_config;
struct trainer;
/* The vocabulary file a model tokenizes with: given (--vocab_path), else the model's own
 * (tokenizer.vocab) in its directory dir, written into buf; NULL: the built-in one (also when
 * dir is NULL: a model with no directory yet). */
const char *cli_model_vocab(const struct model_config *mc, const char *given, const char *dir, char *buf,
                            size_t len);
/* --vocab_path (given) against the vocabulary the model in dir was trained with, where its
 * config records which (netlm's models do): another one of the same size, such as the seed's
 * encryptd_vocab.txt beside the built-in one, would give every token an id the model learnt as
 * another token's, silently. False after one error line; a vocabulary that cannot be read is
 * left to the load that follows. */
bool cli_vocab_fits_model(const char *cmd, const struct model_config *mc, const char *given, const char *dir);
bool cli_dropout_arg(const char *cmd, const struct cli_opt *opts, double *p); /* -1: absent */

/* --device cpu|cuda[:N] and --precision bf16|fp32 (training, evaluation, classify, generate;
 * --precision without a GPU is refused: the CPU computes in fp32). */
#define CLI_TRAIN_DEVICE_OPTIONS                                                                        {"device", NULL, 0, "cpu|cuda[:N]", "where to train (default cpu)", NULL},                         {"precision", NULL, 0, "bf16|fp32",                                                                 "on a GPU: bf16 matrix products with fp32 master weights and sums (default), or fp32 throughout", NULL}
struct cli_device {
    const char *name;   /* as given ("cpu" when absent) */
    int device;         /* -1: the CPU */
    bool bf16;
    bool residual_bf16; /* inference engine: the residual stream in bf16 (cli_residual_arg) */
};
bool cli_device_arg(const char *cmd, const struct cli_opt *opts, struct cli_device *d);
/* --residual bf16|fp32 (classify, generate, eval; after cli_device_arg): the residual stream of
 * a bf16 GPU engine. bf16, the default, is what PyTorch's bf16 models keep (half the stream's
 * memory traffic); fp32 rounds once less per layer. Refused on the CPU and with --precision fp32. */
#define CLI_RESIDUAL_OPTION                                                                              \
    {"residual", NULL, 0, "bf16|fp32",                                                                   \
     "on a GPU in bf16: the residual stream in bf16 as PyTorch's bf16 models (default), or fp32", NULL}
bool cli_residual_arg(const char *cmd, const struct cli_opt *opts, struct cli_device *d);
/* The trainer on device (the CPU when device < 0) for batches of batch × seq ids, with the run's
 * dropout: p ≥ 0 sets the model's three probabilities first (saved with it), else the model's
 * config decides; masks drawn from seed. NULL after one error line. */
struct trainer *cli_trainer(const char *cmd, struct model *m, const struct cli_device *d, int device,
                            uint32_t batch, uint32_t seq, uint32_t threads, double p, uint64_t seed);
/* One status line: where the trainer runs (the GPU's name and memory, the precision; or the CPU
 * threads). */
void cli_trainer_report(const char *cmd, int device, bool bf16, uint32_t threads);

/* A checkpoint's state.json. */
struct cli_train_state {
    uint64_t step;     /* optimizer steps done */
    uint64_t epoch;    /* finetune: epochs done; pretrain: the epoch being read */
    uint64_t seed;
    double best_dev;   /* finetune: the best dev accuracy so far; NAN: not written (pretrain) */
    uint64_t position; /* pretrain: examples of the epoch already used */
    char data[512];    /* pretrain: what the position counts (corpus, window, batch); "": neither
                          this nor position is written */
    uint64_t global_batch; /* finetune: sequences per optimizer step (processes × batch); 0: not
                              written (pretrain, older checkpoints) */
};
/* optimizer.safetensors (the AdamW moments, n floats each) and state.json into dir, each written
 * to a temporary name and renamed. */
bool cli_save_optimizer(const char *cmd, const char *dir, const float *mom, const float *vel, size_t n,
                        const struct cli_train_state *st);
/* The reverse; false after one error line. Fields that were not written come back as NAN
 * (best_dev) and "" / 0 (data, position). */
bool cli_load_optimizer(const char *cmd, const char *dir, float *mom, float *vel, size_t n,
                        struct cli_train_state *st);
/* --resume: the AdamW moments and state.json of the checkpoint in dir into the trainer and st,
 * which must have been trained with seed. False after one error line. */
bool cli_resume_optimizer(const char *cmd, struct trainer *t, const char *dir, uint64_t seed,
                          struct cli_train_state *st);
/* OUT/loss.csv opened for appending rows after header (a CSV header line, no newline); on
 * resume it keeps the rows up to step. NULL after one error line. */
FILE *cli_open_loss_csv(const char *cmd, const char *out_dir, const char *header, bool resume, uint64_t step);
/* OUT/checkpoint as a whole — the model (and vocab_file, when given), the AdamW moments and st —
 * written into OUT/checkpoint.new and swapped into place, so it always holds one consistent
 * step. synced: the trainer's parameters are in m already (trainer_sync_model since the last
 * step), so a GPU's are not downloaded again. False after one error line. */
bool cli_save_checkpoint(const char *cmd, const char *out_dir, struct trainer *t, const struct model *m,
                         const char *vocab_file, const struct cli_train_state *st, bool synced);
/* Step step's (1-based) loss and gradient norm (0 when not computed) before the optimizer uses
 * them: true when both are finite, else one error line naming the step, the value, the learning
 * rate and the checkpoint that stays (checkpoint_step; UINT64_MAX: none). Both values are of the
 * all-reduced global batch, so every process decides alike and they stop at the same step. */
bool cli_step_finite(const char *cmd, uint64_t step, double loss, double norm, double lr, uint64_t checkpoint_step);

/* A checkpoint's record of the settings (was) against this run's (now), both space-separated
 * NAME=VALUE words: false after one error line naming every difference. unrecorded_ok: a setting
 * the record lacks (a checkpoint of an older netlm) is not checked rather than refused. */
bool cli_settings_match(const char *cmd, const char *checkpoint, const char *was, const char *now,
                        bool unrecorded_ok);
/* The seed's Qwen flags (QwenNet's pretrain.py, run_understanding.py, run_generation.py). */
#define CLI_SEED_QWEN_OPTIONS                                                                      \
    {"use-qwen", NULL, 0, NULL, "the seed's flag: the model must be Qwen2 (its config, or --qwen_model_name's)", NULL}, \
    {"qwen-model-name", NULL, 0, "HF_ID|DIR",                                                      \
     "without --pretrained_model_path: start from this Hugging Face Qwen2/Qwen2.5 checkpoint (its "  \
     "directory, or a hub id already in the Hugging Face cache; nothing is downloaded), embedding "  \
     "resized to the traffic vocabulary keeping the first rows, as the seed's pretrain does", NULL}
/* Where a training run's model comes from, in this order: the checkpoint (when resuming), a
 * pretrained netlm model, a Hugging Face checkpoint (qwen_name), a fresh one (config_path). */
struct cli_model_source {
    const char *checkpoint; /* OUT/checkpoint when resuming, else NULL */
    const char *pretrained, *qwen_name, *config_path;
    const char *vocab_path; /* --vocab_path (sizes the Hugging Face checkpoint's embedding) */
    bool use_qwen;          /* --use_qwen: the model must be Qwen2 */
};
/* The model; *from names where it came from (a directory or the config file). NULL after one
 * error line. */
struct model *cli_training_model(const char *cmd, const struct cli_model_source *src, uint64_t seed,
                                 const char **from);
/* A Hugging Face checkpoint directory for id: id itself when it is a directory, else the
 * snapshot of the hub id in the Hugging Face cache ($HF_HUB_CACHE, $HF_HOME/hub or
 * ~/.cache/huggingface/hub; refs/main's revision). False after one error line. */
bool cli_hf_checkpoint(const char *cmd, const char *option, const char *id, char *dir, size_t len);

/* Makes the finished directory staged take dir's place atomically (the old dir is removed).
 * False after one error line. */
bool cli_replace_dir(const char *cmd, const char *staged, const char *dir);
/* Removes a directory holding only files; true when it is gone. */
bool cli_remove_flat_dir(const char *dir);
/* Copies a file (to a temporary name, then renamed). False after one error line. */
bool cli_copy_file(const char *cmd, const char *from, const char *to);

/* Plots: the numbers are always in the CSV/TSV files; gnuplot draws them when it is installed.
 * cli_gnuplot runs script (gnuplot commands, "@F" standing for the quoted path of dir/file)
 * with the output dir/png (pngcairo, size "W,H"); false when gnuplot is missing or fails. */
bool cli_have_gnuplot(void);
bool cli_gnuplot(const char *dir, const char *png, const char *size, const char *script, const char *file);
/* loss.png from loss.csv (step,loss,learning_rate[,dev_accuracy,...]): the loss, and dev
 * accuracy (finetune) or the learning rate (pretrain) on the second axis. */
bool cli_plot_loss(const char *dir, bool dev_accuracy);

/* ---- multi-process data parallel training (mpi.c) ---- */
/* Joins the processes mpirun started (rank, world); one process (0, 1) otherwise. False after an
 * error line. */
bool cli_mpi_start(const char *command, int *rank, int *world);
/* Element-wise sums across the processes, in place (no-ops in one process). */
void cli_mpi_sum_floats(float *x, size_t n);
void cli_mpi_sum_doubles(double *x, size_t n);
void cli_mpi_min_doubles(double *x, size_t n);
void cli_mpi_or_bytes(uint8_t *x, size_t n); /* bitwise OR */
/* Rank 0's n bytes into every process's (a no-op in one process). */
void cli_mpi_broadcast(void *bytes, size_t n);
/* Leaves MPI; failed aborts the other processes too. */
void cli_mpi_stop(bool failed);
void cli_mpi_sum_u64(uint64_t *x, size_t n);

/* Data parallel training on top of them (train_common.c). A global batch is world × --batch_size
 * sequences; each process trains on its slice and the gradients are summed before each step. */
/* --world_size (0: absent) must match the processes running; false after one error line. */
bool cli_world_size_check(const char *cmd, uint32_t world_size, int world);
/* Joins the trainer to the other processes (NCCL on GPUs; on CPUs the sums go through MPI). Does
 * nothing in one process, unless one_rank asks for a one-rank communicator on a GPU (so that
 * --world_size 1 runs the same path). False after one error line. */
bool cli_trainer_join(const char *cmd, struct trainer *tr, int rank, int world, int device, bool one_rank);
/* After each process's forward/backward: its gradient is the mean over its count targets (the
 * loss's terms; 0 for an empty slice, gradient zero). Weighted by count, summed over the
 * processes and divided by all targets, it becomes the global batch's; loss_weighted (its loss
 * × count) and count become the global sums. */
bool cli_world_grads(struct trainer *tr, int world, double *loss_weighted, double *count);
/* Process rank's contiguous share [lo, hi) of n items (evaluation splits its rows so). */
void cli_world_share(size_t n, int rank, int world, size_t *lo, size_t *hi);

int cmd_sessions(int argc, char **argv);
int cmd_corpus(int argc, char **argv);
int cmd_dataset(int argc, char **argv);
int cmd_preprocess(int argc, char **argv);
int cmd_classify(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_pretrain(int argc, char **argv);
int cmd_finetune(int argc, char **argv);
int finetune_generation(int argc, char **argv); /* cmd_finetune_gen.c */
int cmd_eval(int argc, char **argv);
int cmd_sensor(int argc, char **argv); /* cmd_sensor.c */
int cmd_replay(int argc, char **argv);

#endif

/* ---- capture → sessions, shared by sessions, dataset and corpus ---- */
#include "flowtable/flowtable.h"

/* The flow-assembly options every session-producing command takes. */
#define CLI_FLOW_OPTIONS                                                                           \
    {"workers", NULL, 'w', "N", "worker threads assembling sessions (default 1)", NULL},          \
    {"port-reuse", NULL, 0, "split|merge",                                                        \
     "split: a new SYN on a 5-tuple starts a new session, as tshark's tcp.stream (default); "   \
     "merge: one session per 5-tuple (SplitCap)", NULL},                                                     \
    {"max-flows", NULL, 0, "N", "live flows kept at most; the oldest idle is evicted (default 1048576; dataset: 262144)", NULL}, \
    {"tcp-timeout", NULL, 0, "SEC", "idle timeout of TCP sessions (default 600 once established; a smaller value or 0 = none holds in every state)", NULL}, \
    {"udp-timeout", NULL, 0, "SEC", "idle timeout of UDP sessions (default 300 once answered; a smaller value or 0 = none holds in every state)", NULL}, \
    {"no-timeouts", NULL, 0, NULL, "never end a session for being idle", NULL},                  \
    {"tunnels", NULL, 0, "outer|inner", "session of a tunnelled packet: the outer one (default) or the innermost", NULL}, \
    {"quiet", NULL, 'q', NULL, "no progress line", NULL}

/* --header-mode (none|seed|full|strict|strip) into *mode when given; false after an error. */
#include "tokenizer/tokenizer.h"
bool cli_header_mode(const char *command, const struct cli_opt *opts, enum tok_header_mode *mode);

/* Reads CLI_FLOW_OPTIONS into cfg (after ft_config_defaults). */
bool cli_flow_config(const char *command, const struct cli_opt *opts, struct ft_config *cfg);

/* Runs every file through the assembler, one input at a time (sessions never span files).
 * *current_file tells the session callback which file it is in. Returns 0, or 1 after an
 * error line (a file that cannot be read); a damaged file's readable part is kept, with a
 * warning. */
int cli_assemble_files(const char *command, struct ft_assembler *as, char **files, int n_files,
                       uint64_t total_bytes, bool quiet, volatile int *current_file);
/* How far into src reading has come, for a progress line: its position in the file, or where
 * the source cannot say (a pipe read by libpcap) guessed, the frames' bytes with a pcap record
 * header each (which a caller sums as it reads). */
uint64_t cli_source_progress(const struct cap_source *src, uint64_t guessed);
