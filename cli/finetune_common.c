/* finetune_common.c — what both finetune tasks share (cli/finetune.h): the options, the model they
 * start from, the resume, the slices and steps of a data parallel run, its status lines, the end
 * of an epoch and walking a share of dev or test. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/finetune.h"
#include "model/model.h"

bool cli_finetune_args(const char *cmd, const struct cli_opt *opts, struct cli_finetune_args *f)
{
    static const char *const sched_names[] = {"constant", "linear", "cosine", NULL};
    static const char *const opt_names[] = {"adamw", "uer", NULL};
    memset(f, 0, sizeof *f);
    const int schedule = cli_choice(cmd, opts, "schedule", "linear", sched_names);
    const int optimizer = cli_choice(cmd, opts, "optimizer", "adamw", opt_names);
    double wd;
    if (schedule < 0 || optimizer < 0 || !cli_double(cmd, opts, "warmup", 0.1, 0.0, 1.0, &f->warmup) ||
        !cli_double(cmd, opts, "weight-decay", 0.01, 0.0, 10.0, &wd) ||
        !cli_double(cmd, opts, "clip", 0.0, 0.0, 1e9, &f->clip) ||
        !cli_u32(cmd, opts, "world-size", 0, 1, 65536, &f->world_size) ||
        !cli_u32(cmd, opts, "stop-after", 0, 0, UINT32_MAX, &f->stop_after))
        return false;
    f->schedule = (enum train_schedule)schedule;
    if (optimizer == 1)
        train_adamw_uer(&f->adamw);
    else
        train_adamw_defaults(&f->adamw);
    f->adamw.weight_decay = (float)wd;
    f->resume = cli_flag(opts, "resume");
    return true;
}

int cli_finetune_start(const char *cmd, const struct cli_finetune_args *f, struct cli_device *where, int *rank,
                       int *world)
{
    if (!cli_mpi_start(cmd, rank, world))
        return 1;
    if (!cli_world_size_check(cmd, f->world_size, *world)) {
        cli_mpi_stop(true);
        return 2;
    }
    if (where->device >= 0)
        where->device += *rank;
    return 0;
}

/* The vocabulary a finetune run tokenizes with: --vocab_path, else the model's own, in the
 * checkpoint when resuming (one written before checkpoints held it: beside the pretrained model). */
static const char *finetune_vocab(const struct model_config *mc, const char *given, const char *checkpoint,
                                  const char *pretrained, char *buf, size_t len)
{
    if (checkpoint) {
        const char *v = cli_model_vocab(mc, given, checkpoint, buf, len);
        if (v == given || access(v, R_OK) == 0 || !pretrained)
            return v;
    }
    return cli_model_vocab(mc, given, pretrained, buf, len);
}

/* --resume (the model already loaded from OUT/checkpoint): the moments and state into the
 * trainer and st, checked against this run's seed and sequences per step, and the best epoch's
 * parameters so far into best. */
static bool finetune_resume(const char *cmd, struct trainer *tr, struct model *m, const char *out_dir,
                            uint64_t seed, uint64_t global_batch, float *best, struct cli_train_state *st)
{
    char checkpoint[4100], path[4200], err[1024];
    snprintf(checkpoint, sizeof checkpoint, "%s/checkpoint", out_dir);
    const size_t n = trainer_param_count(tr);
    if (!cli_resume_optimizer(cmd, tr, checkpoint, seed, st))
        return false;
    if (isnan(st->best_dev)) {
        cli_error(cmd, "%s/state.json: no best_dev (not a finetune checkpoint)", checkpoint);
        return false;
    }
    /* another step size would change the steps per epoch, and with them the schedule */
    if (st->global_batch && st->global_batch != global_batch) {
        cli_error(cmd, "%s: the checkpoint was trained with %" PRIu64 " sequences per step (--batch_size × processes), "
                       "not %" PRIu64, checkpoint, st->global_batch, global_batch);
        return false;
    }
    /* the best epoch so far is OUT's model; before any was kept, the checkpoint's */
    snprintf(path, sizeof path, "%s/config.json", out_dir);
    struct model *kept = access(path, R_OK) == 0 ? model_load(out_dir, err, sizeof err) : NULL;
    size_t n_floats;
    const float *from = kept ? model_params(kept, &n_floats) : model_params(m, &n_floats);
    if (n_floats < n) {
        cli_error(cmd, "%s: not the checkpoint's model", out_dir);
        model_free(kept);
        return false;
    }
    memcpy(best, from, n * sizeof(float));
    model_free(kept);
    return true;
}

struct model *cli_finetune_model(const char *cmd, const struct cli_opt *opts, const char *checkpoint, uint64_t seed,
                                 char *vocab_buf, size_t vocab_len, const char **vocab_path)
{
    const char *from, *pretrained = cli_get(opts, "pretrained-model-path");
    const struct cli_model_source source = {.checkpoint = checkpoint, .pretrained = pretrained,
                                            .qwen_name = cli_get(opts, "qwen-model-name"),
                                            .config_path = cli_get(opts, "config-path"),
                                            .vocab_path = cli_get(opts, "vocab-path"),
                                            .use_qwen = cli_flag(opts, "use-qwen")};
    struct model *m = cli_training_model(cmd, &source, seed, &from);
    if (m)
        *vocab_path = finetune_vocab(model_get_config(m), source.vocab_path, checkpoint, pretrained, vocab_buf,
                                     vocab_len);
    return m;
}

bool cli_finetune_begin(struct cli_finetune_run *run, const struct cli_finetune_args *f, struct trainer *tr,
                        struct model *m, size_t train_rows, uint32_t batch, int world, const char *loss_header,
                        FILE **loss_csv)
{
    run->global_batch = (uint64_t)world * batch;
    run->steps_per_epoch = (train_rows + run->global_batch - 1) / run->global_batch;
    run->total_steps = run->steps_per_epoch * run->epochs;
    run->warmup_steps = (uint64_t)(f->warmup * (double)run->total_steps);
    struct cli_train_state st = {.best_dev = -1.0};
    size_t n_floats;
    if (f->resume &&
        !finetune_resume(run->cmd, tr, m, run->out_dir, run->seed, run->global_batch, run->best, &st))
        return false;
    if (!f->resume)
        memcpy(run->best, model_params(m, &n_floats), trainer_param_count(tr) * sizeof(float));
    run->start_epoch = st.epoch;
    run->start_step = st.step;
    run->batch = batch;
    *loss_csv = NULL;
    if (run->writer && mkdir(run->out_dir, 0755) != 0 && errno != EEXIST) {
        cli_error(run->cmd, "%s: %s", run->out_dir, strerror(errno));
        return false;
    }
    if (run->writer && !(*loss_csv = cli_open_loss_csv(run->cmd, run->out_dir, loss_header, f->resume, st.step)))
        return false;
    run->t0 = run->last_print = cli_now();
    run->best_dev = st.best_dev;
    return true;
}

void cli_finetune_slice(struct cli_finetune_run *run, uint64_t s, const uint32_t *order, size_t rows,
                        const uint32_t *lengths, size_t *lo, size_t *hi)
{
    const size_t start = s * run->global_batch, end = start + run->global_batch < rows ? start + run->global_batch : rows;
    for (size_t i = start; i < end; i++)
        run->tokens += lengths[order[i]];
    *lo = start + (size_t)run->rank * run->batch;
    *lo = *lo < end ? *lo : end;
    *hi = *lo + run->batch < end ? *lo + run->batch : end;
}

void cli_finetune_stepped(struct cli_finetune_run *run, uint64_t epoch, uint64_t step, double loss, float lr)
{
    run->loss_sum += loss;
    run->loss_count++;
    const double now = cli_now();
    if (run->quiet || (step % run->report != 0 && now - run->last_print <= 30))
        return;
    const double rate = (double)(step - run->start_step) / (now - run->t0);
    fprintf(stderr, "netlm %s: epoch %" PRIu64 "/%u step %" PRIu64 "/%" PRIu64 " loss %.4f lr %.3g %.0f tokens/s "
                    "ETA %.0f s\n", run->cmd, epoch + 1, run->epochs, step, run->total_steps,
            run->loss_sum / (double)run->loss_count, lr, (double)run->tokens / (now - run->t0),
            (double)(run->total_steps - step) / (rate > 0 ? rate : 1));
    run->loss_sum = 0.0;
    run->loss_count = 0;
    run->last_print = now;
}

bool cli_finetune_epoch_end(struct cli_finetune_run *run, const struct cli_finetune_args *f, struct trainer *tr,
                            struct model *m, uint64_t step, uint64_t epoch, double dev_score, bool *stop)
{
    char err[1024];
    size_t n_floats;
    if (dev_score > run->best_dev) {
        run->best_dev = dev_score;
        memcpy(run->best, model_params(m, &n_floats), trainer_param_count(tr) * sizeof(float));
        if (run->writer && !model_save(m, run->out_dir, err, sizeof err)) {
            cli_error(run->cmd, "%s", err);
            return false;
        }
    }
    const struct cli_train_state st = {.step = step, .epoch = epoch + 1, .seed = run->seed,
                                       .best_dev = run->best_dev, .global_batch = run->global_batch};
    if (run->writer && !cli_save_checkpoint(run->cmd, run->out_dir, tr, m, run->vocab_path, &st, true))
        return false;
    *stop = f->stop_after && epoch + 1 - run->start_epoch == f->stop_after && epoch + 1 < run->epochs;
    if (*stop && run->writer)
        fprintf(stderr, "netlm %s: stopped after epoch %" PRIu64 " (--stop-after); --resume continues\n", run->cmd,
                epoch + 1);
    return true;
}

struct cli_scoring_walk cli_scoring_begin(const struct cli_scoring *sc, size_t n, uint32_t batch)
{
    struct cli_scoring_walk w = {.sc = sc, .batch = batch, .start = cli_now()};
    cli_world_share(n, sc->rank, sc->world, &w.lo, &w.hi);
    w.row = w.lo;
    w.last_print = w.start;
    return w;
}

bool cli_scoring_next(const char *cmd, struct cli_scoring_walk *w)
{
    w->row += w->count;
    if (w->row >= w->hi)
        return false;
    w->count = w->hi - w->row < w->batch ? w->hi - w->row : w->batch;
    const double now = cli_now();
    const size_t done = w->row - w->lo, share = w->hi - w->lo;
    if (!w->sc->quiet && now - w->last_print >= 30.0) {
        w->last_print = now;
        const double rate = (double)done / (now - w->start);
        fprintf(stderr, "netlm %s: scoring %s: %zu of %zu rows%s, %.1f rows/s, ETA %.0f s\n", cmd, w->sc->what, done,
                share, w->sc->world > 1 ? " (this process's share)" : "", rate,
                rate > 0 ? (double)(share - done) / rate : 0.0);
    }
    return true;
}

bool cli_finetune_step(struct trainer *tr, enum train_objective objective, const struct train_batch *tb,
                       double terms, int world, const struct cli_finetune_args *f, uint64_t step, float lr,
                       uint32_t threads, double *loss)
{
    double slice_loss = 0.0, norm;
    if (!trainer_zero_grads(tr) || (tb->batch && !trainer_forward_backward(tr, objective, tb, &slice_loss)))
        return false;
    double weighted = slice_loss * terms;
    if (!cli_world_grads(tr, world, &weighted, &terms))
        return false;
    *loss = world == 1 ? slice_loss : weighted / (terms > 0 ? terms : 1.0);
    /* torch's clip_grad_norm_: scale by max/(norm + 1e-6) when that is below 1 */
    if (f->clip > 0 && (!trainer_grad_norm(tr, &norm) ||
                        (f->clip / (norm + 1e-6) < 1.0 && !trainer_grad_scale(tr, (float)(f->clip / (norm + 1e-6))))))
        return false;
    return trainer_adamw_step(tr, step + 1, lr, &f->adamw, (int)threads);
}

static bool same_engine_options(const struct model_cuda_options *a, const struct model_cuda_options *b)
{
    return a->device == b->device && a->precision == b->precision && a->max_batch == b->max_batch &&
           a->max_seq == b->max_seq && a->lm_head == b->lm_head && a->graphs == b->graphs &&
           a->residual_bf16 == b->residual_bf16 && a->kv_tokens == b->kv_tokens;
}

struct model_cuda *cli_eval_engine(struct model *m, const struct model_cuda_options *o,
                                   struct cli_eval_gpu *keep, char *err, size_t errlen)
{
    if (keep->engine && same_engine_options(&keep->opt, o)) {
        if (model_cuda_reload_weights(keep->engine))
            return keep->engine;
        snprintf(err, errlen, "%s", model_cuda_error(keep->engine));
        return NULL;
    }
    model_cuda_free(keep->engine);
    keep->engine = model_cuda_create(m, o, err, errlen);
    keep->opt = *o;
    return keep->engine;
}
