/* finetune_common.c — what both finetune tasks share (cli/finetune.h): the options, the model they
 * start from, the dataset's recorded tokenization, the resume and its check of the settings, the
 * slices and steps of a data parallel run, its status lines, the end of an epoch and walking a
 * share of dev or test. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

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
    f->optimizer = opt_names[optimizer];
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

/* A settings record's words NAME=VALUE (cli_finetune_run.settings), split in place. */
struct setting {
    const char *name, *value;
};
static int settings_split(char *record, struct setting *out, int max)
{
    int n = 0;
    for (char *save = NULL, *w = strtok_r(record, " ", &save); w && n < max; w = strtok_r(NULL, " ", &save)) {
        char *eq = strchr(w, '=');
        if (!eq)
            continue;
        *eq = '\0';
        out[n++] = (struct setting){w, eq + 1};
    }
    return n;
}

static const char *setting_value(const struct setting *s, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s[i].name, name) == 0)
            return s[i].value;
    return NULL;
}

/* The checkpoint's record of the settings (was) against this run's (now): false after one error
 * line naming every difference, since another training set, schedule or data order would make
 * the resumed run neither the old run continued nor a new one. */
bool cli_settings_match(const char *cmd, const char *checkpoint, const char *was, const char *now,
                        bool unrecorded_ok)
{
    char was_buf[512], now_buf[512], changes[1024] = "";
    struct setting w[48], n[48];
    snprintf(was_buf, sizeof was_buf, "%s", was);
    snprintf(now_buf, sizeof now_buf, "%s", now);
    const int nw = settings_split(was_buf, w, 48), nn = settings_split(now_buf, n, 48);
    const char *task_was = setting_value(w, nw, "task"), *task_now = setting_value(n, nn, "task");
    if ((task_was || !unrecorded_ok) && (!task_was || !task_now || strcmp(task_was, task_now) != 0)) {
        cli_error(cmd, "%s: a checkpoint of finetune %s, not of this task", checkpoint, task_was ? task_was : "(unknown)");
        return false;
    }
    size_t used = 0;
    for (int pass = 0; pass < 2; pass++) /* the checkpoint's settings, then any it lacks */
        for (int i = 0; i < (pass ? nn : nw); i++) {
            const struct setting *s = pass ? &n[i] : &w[i];
            const char *other = setting_value(pass ? w : n, pass ? nw : nn, s->name);
            if ((pass && (other || unrecorded_ok)) || (!pass && other && strcmp(other, s->value) == 0))
                continue;
            const char *before = pass ? "(not recorded)" : s->value, *after = pass ? s->value : other ? other : "none";
            int k;
            if (strcmp(s->name, "train") == 0)
                k = snprintf(changes + used, sizeof changes - used, "%sthe training rows (rows:digest %s, now %s)",
                             used ? ", " : "", before, after);
            else
                k = snprintf(changes + used, sizeof changes - used, "%s--%s %s (now %s)", used ? ", " : "", s->name,
                             before, after);
            used = k > 0 && used + (size_t)k < sizeof changes ? used + (size_t)k : used;
        }
    if (!changes[0])
        return true;
    cli_error(cmd, "%s: trained with other data or settings: %s; --resume needs the same (another "
                   "--output_model_path starts a new run)", checkpoint, changes);
    return false;
}

/* What OUT/checkpoint/state.json says of the run that wrote it, before anything is loaded: another
 * seed, step size or setting is the command line's mistake, refused with one line. A state.json
 * that cannot be read is left to cli_resume_optimizer to report. */
static bool resume_allowed(const char *cmd, const char *checkpoint, uint64_t seed, uint64_t global_batch,
                           const char *settings)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/state.json", checkpoint);
    struct json_object *o = json_object_from_file(path), *v;
    if (!o || !json_object_is_type(o, json_type_object)) {
        json_object_put(o);
        return true;
    }
    bool ok = true;
    if (json_object_object_get_ex(o, "seed", &v) && json_object_is_type(v, json_type_int) &&
        (uint64_t)json_object_get_int64(v) != seed) {
        cli_error(cmd, "%s: the checkpoint was trained with --seed %" PRIu64 ", not %" PRIu64, checkpoint,
                  (uint64_t)json_object_get_int64(v), seed);
        ok = false;
    } else if (json_object_object_get_ex(o, "global_batch", &v) && json_object_is_type(v, json_type_int) &&
               (uint64_t)json_object_get_int64(v) != global_batch) {
        /* another step size would change the steps per epoch, and with them the schedule */
        cli_error(cmd, "%s: the checkpoint was trained with %" PRIu64 " sequences per step (--batch_size × "
                       "processes), not %" PRIu64, checkpoint, (uint64_t)json_object_get_int64(v), global_batch);
        ok = false;
    } else if (json_object_object_get_ex(o, "data", &v) && json_object_is_type(v, json_type_string)) {
        ok = cli_settings_match(cmd, checkpoint, json_object_get_string(v), settings, false);
    } else if (json_object_object_get_ex(o, "best_dev", NULL)) {
        cli_warn(cmd, "%s: the checkpoint records no training settings (an older netlm): they are not checked",
                 checkpoint);
    }
    json_object_put(o);
    return ok;
}

/* --resume (the model already loaded from OUT/checkpoint): the moments and state into the
 * trainer and st, and the best epoch's parameters so far into best. */
static bool finetune_resume(const char *cmd, struct trainer *tr, struct model *m, const char *out_dir,
                            uint64_t seed, float *best, struct cli_train_state *st)
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
    if (m && !cli_vocab_fits_model(cmd, model_get_config(m), source.vocab_path, checkpoint ? checkpoint : pretrained)) {
        model_free(m);
        return NULL;
    }
    if (m)
        *vocab_path = finetune_vocab(model_get_config(m), source.vocab_path, checkpoint, pretrained, vocab_buf,
                                     vocab_len);
    return m;
}

uint64_t cli_digest(uint64_t h, const void *bytes, size_t n)
{
    const unsigned char *b = bytes;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* dataset.json in the folder of the TSV at tsv_path. */
static void settings_path(const char *tsv_path, char *out, size_t len)
{
    const char *slash = strrchr(tsv_path, '/');
    snprintf(out, len, "%.*s%s", slash ? (int)(slash - tsv_path + 1) : 0, tsv_path, CLI_DATASET_SETTINGS);
}

static bool json_uint(struct json_object *o, const char *key, uint32_t min, uint32_t max, uint32_t *out)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
        return false;
    const int64_t x = json_object_get_int64(v);
    if (x < min || x > max)
        return false;
    *out = (uint32_t)x;
    return true;
}

static const char *json_string(struct json_object *o, const char *key)
{
    struct json_object *v;
    return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
               ? json_object_get_string(v) : NULL;
}

/* What is wrong with a dataset.json's object o (NULL: nothing), read into ds. */
static const char *settings_parse(struct json_object *o, struct cli_dataset_settings *ds)
{
    struct json_object *t, *v, *fields;
    const char *task = json_string(o, "task"), *mode = NULL;
    enum tok_header_mode header_mode;
    if (!task || (strcmp(task, "understanding") != 0 && strcmp(task, "generation") != 0))
        return "task (understanding or generation)";
    snprintf(ds->task, sizeof ds->task, "%s", task);
    if (!json_object_object_get_ex(o, "tokenizer", &t) || !json_object_is_type(t, json_type_object))
        return "tokenizer (an object)";
    if (!(mode = json_string(t, "header_mode")) || !tok_header_mode_parse(mode, &header_mode))
        return "tokenizer.header_mode (none, seed, full, strict or strip)";
    snprintf(ds->tokenizer.header_mode, sizeof ds->tokenizer.header_mode, "%s", tok_header_mode_name(header_mode));
    if (!json_uint(t, "stride", 1, 2, &ds->tokenizer.stride))
        return "tokenizer.stride (1 or 2)";
    if (!json_uint(t, "tokens_per_packet", 1, 65536, &ds->tokenizer.tokens_per_packet))
        return "tokenizer.tokens_per_packet (a count)";
    if (!json_uint(t, "packets", 1, 100000, &ds->tokenizer.packets))
        return "tokenizer.packets (a count)";
    if (!json_object_object_get_ex(t, "sep_between_packets", &v) || !json_object_is_type(v, json_type_boolean))
        return "tokenizer.sep_between_packets (true or false)";
    ds->tokenizer.sep_between_packets = json_object_get_boolean(v);
    if (!json_object_object_get_ex(o, "fields", &fields))
        return strcmp(task, "generation") == 0 ? "fields (what a generation dataset's targets hold)" : NULL;
    if (!json_object_is_type(fields, json_type_array) || json_object_array_length(fields) == 0 ||
        json_object_array_length(fields) > TOK_FIELD_COUNT)
        return "fields (an array of field names)";
    for (size_t i = 0; i < json_object_array_length(fields); i++) {
        struct json_object *f = json_object_array_get_idx(fields, i);
        if (!json_object_is_type(f, json_type_string) ||
            !tok_field_parse(json_object_get_string(f), &ds->fields[ds->n_fields++]))
            return "fields (ip_len, src_port, dst_port, ttl, tcp_window)";
    }
    return NULL;
}

/* One dataset.json; absent: ds->present false. False after one error line naming the file and
 * the key. */
static bool settings_load(const char *cmd, const char *path, struct cli_dataset_settings *ds)
{
    memset(ds, 0, sizeof *ds);
    snprintf(ds->path, sizeof ds->path, "%s", path);
    if (access(path, F_OK) != 0)
        return true;
    struct json_object *o = json_object_from_file(path);
    const char *bad = !o || !json_object_is_type(o, json_type_object) ? "content (not a JSON object)"
                                                                        : settings_parse(o, ds);
    json_object_put(o);
    if (bad) {
        cli_error(cmd, "%s: bad or missing %s; netlm dataset writes this file beside its TSVs", path, bad);
        return false;
    }
    ds->present = true;
    return true;
}

/* What differs between two datasets' settings: NULL when they agree. */
static const char *settings_difference(const struct cli_dataset_settings *a, const struct cli_dataset_settings *b)
{
    if (strcmp(a->task, b->task) != 0)
        return "task";
    if (strcmp(a->tokenizer.header_mode, b->tokenizer.header_mode) != 0)
        return "tokenizer.header_mode";
    if (a->tokenizer.stride != b->tokenizer.stride)
        return "tokenizer.stride";
    if (a->tokenizer.tokens_per_packet != b->tokenizer.tokens_per_packet)
        return "tokenizer.tokens_per_packet";
    if (a->tokenizer.packets != b->tokenizer.packets)
        return "tokenizer.packets";
    if (a->tokenizer.sep_between_packets != b->tokenizer.sep_between_packets)
        return "tokenizer.sep_between_packets";
    if (a->n_fields != b->n_fields || memcmp(a->fields, b->fields, a->n_fields * sizeof *a->fields) != 0)
        return "fields";
    return NULL;
}

bool cli_dataset_settings_read(const char *cmd, const char *task, const char *train, const char *dev,
                               const char *test, struct cli_dataset_settings *ds)
{
    char path[4200];
    settings_path(train, path, sizeof path);
    if (!settings_load(cmd, path, ds))
        return false;
    if (!ds->present)
        return true;
    if (strcmp(ds->task, task) != 0) {
        cli_error(cmd, "%s: --train_path was made by netlm dataset %s, not %s", ds->path, ds->task, task);
        return false;
    }
    const char *others[] = {dev, test};
    for (int k = 0; k < 2; k++) {
        struct cli_dataset_settings other;
        settings_path(others[k], path, sizeof path);
        if (strcmp(path, ds->path) == 0)
            continue;
        if (!settings_load(cmd, path, &other))
            return false;
        const char *differs = other.present ? settings_difference(ds, &other) : NULL;
        if (differs) {
            cli_error(cmd, "%s and %s differ in %s: --%s_path was not made as --train_path was", ds->path, other.path,
                      differs, k ? "test" : "dev");
            return false;
        }
    }
    return true;
}

void cli_dataset_settings_apply(const struct cli_dataset_settings *ds, struct model_config *mc)
{
    if (!ds->present)
        return;
    struct model_tokenizer *t = &mc->tokenizer;
    snprintf(t->header_mode, sizeof t->header_mode, "%s", ds->tokenizer.header_mode);
    t->stride = ds->tokenizer.stride;
    t->tokens_per_packet = ds->tokenizer.tokens_per_packet;
    /* a generation row is one packet, whatever number of a session's packets gave rows */
    t->packets = strcmp(ds->task, "generation") == 0 ? 1 : ds->tokenizer.packets;
    t->sep_between_packets = ds->tokenizer.sep_between_packets;
}

bool cli_finetune_begin(struct cli_finetune_run *run, const struct cli_finetune_args *f, struct trainer *tr,
                        struct model *m, size_t train_rows, uint32_t batch, int world, const char *loss_header,
                        FILE **loss_csv)
{
    run->global_batch = (uint64_t)world * batch;
    run->steps_per_epoch = (train_rows + run->global_batch - 1) / run->global_batch;
    run->total_steps = run->steps_per_epoch * run->epochs;
    run->warmup_steps = (uint64_t)(f->warmup * (double)run->total_steps);
    static const char *const schedules[] = {"constant", "linear", "cosine"};
    const struct model_config *mc = model_get_config(m);
    const int len = snprintf(run->settings, sizeof run->settings,
                             "%s epochs_num=%u learning_rate=%.9g warmup=%.9g schedule=%s optimizer=%s weight_decay=%.7g "
                             "clip=%.9g dropout=%.7g,%.7g,%.7g", run->task_settings, run->epochs, run->lr, f->warmup,
                             schedules[f->schedule], f->optimizer, (double)f->adamw.weight_decay, f->clip,
                             (double)mc->dropout_embed, (double)mc->dropout_attn, (double)mc->dropout_resid);
    if (len < 0 || (size_t)len >= sizeof run->settings) {
        cli_error(run->cmd, "the run's settings do not fit the checkpoint's record (%d bytes)", len);
        return false;
    }
    struct cli_train_state st = {.best_dev = -1.0};
    size_t n_floats;
    char checkpoint[4100];
    snprintf(checkpoint, sizeof checkpoint, "%s/checkpoint", run->out_dir);
    run->refused = f->resume && !resume_allowed(run->cmd, checkpoint, run->seed, run->global_batch, run->settings);
    if (run->refused || (f->resume && !finetune_resume(run->cmd, tr, m, run->out_dir, run->seed, run->best, &st)))
        return false;
    if (!f->resume)
        memcpy(run->best, model_params(m, &n_floats), trainer_param_count(tr) * sizeof(float));
    run->start_epoch = st.epoch;
    run->start_step = st.step;
    /* a checkpoint an interrupted run wrote mid-epoch: the steps of its epoch done already */
    if (st.step < st.epoch * run->steps_per_epoch || st.step - st.epoch * run->steps_per_epoch > run->steps_per_epoch) {
        cli_error(run->cmd, "%s/state.json: step %" PRIu64 " is not in epoch %" PRIu64 " of %" PRIu64 " steps",
                  checkpoint, st.step, st.epoch + 1, run->steps_per_epoch);
        return false;
    }
    run->start_in_epoch = st.step - st.epoch * run->steps_per_epoch;
    run->checkpoint_step = f->resume ? st.step : UINT64_MAX;
    run->batch = batch;
    *loss_csv = NULL;
    if (run->writer && mkdir(run->out_dir, 0755) != 0 && errno != EEXIST) {
        cli_error(run->cmd, "--output_model_path %s: cannot create the folder: %s", run->out_dir, strerror(errno));
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
    struct cli_train_state st = {.step = step, .epoch = epoch + 1, .seed = run->seed,
                                 .best_dev = run->best_dev, .global_batch = run->global_batch};
    snprintf(st.data, sizeof st.data, "%s", run->settings);
    if (run->writer && !cli_save_checkpoint(run->cmd, run->out_dir, tr, m, run->vocab_path, &st, true))
        return false;
    run->checkpoint_step = step;
    *stop = f->stop_after && epoch + 1 - run->start_epoch == f->stop_after && epoch + 1 < run->epochs;
    if (*stop && run->writer)
        fprintf(stderr, "netlm %s: stopped after epoch %" PRIu64 " (--stop-after); --resume continues\n", run->cmd,
                epoch + 1);
    return true;
}

bool cli_finetune_interrupted(struct cli_finetune_run *run, struct trainer *tr, struct model *m, uint64_t step,
                              uint64_t epoch, bool epoch_done, FILE *loss_csv, int *status)
{
    const int signo = cli_stop_requested();
    uint8_t asked = signo != 0;
    if (run->global_batch > run->batch) /* several processes: whichever the signal reached */
        cli_mpi_or_bytes(&asked, 1);
    if (!asked)
        return false;
    *status = 1;
    if (loss_csv && fflush(loss_csv) != 0) {
        cli_error(run->cmd, "%s/loss.csv: %s", run->out_dir, strerror(errno));
        return true;
    }
    if (run->checkpoint_step != step) {
        struct cli_train_state st = {.step = step, .epoch = epoch_done ? epoch + 1 : epoch, .seed = run->seed,
                                     .best_dev = run->best_dev, .global_batch = run->global_batch};
        snprintf(st.data, sizeof st.data, "%s", run->settings);
        if (run->writer && !cli_save_checkpoint(run->cmd, run->out_dir, tr, m, run->vocab_path, &st, false))
            return true;
        run->checkpoint_step = step;
    }
    if (run->writer)
        fprintf(stderr, "netlm %s: interrupted (%s) at step %" PRIu64 " of epoch %" PRIu64 ": checkpoint written; "
                        "--resume continues\n", run->cmd, strsignal(signo ? signo : SIGTERM), step, epoch + 1);
    *status = 128 + (signo ? signo : SIGTERM);
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

bool cli_finetune_step(const struct cli_finetune_run *run, struct trainer *tr, enum train_objective objective,
                       const struct train_batch *tb, double terms, int world, const struct cli_finetune_args *f,
                       uint64_t step, float lr, uint32_t threads, double *loss)
{
    double slice_loss = 0.0, norm = 0.0;
    if (!trainer_zero_grads(tr) || (tb->batch && !trainer_forward_backward(tr, objective, tb, &slice_loss)))
        goto failed;
    double weighted = slice_loss * terms;
    if (!cli_world_grads(tr, world, &weighted, &terms))
        goto failed;
    *loss = world == 1 ? slice_loss : weighted / (terms > 0 ? terms : 1.0);
    if (f->clip > 0 && !trainer_grad_norm(tr, &norm))
        goto failed;
    if (!cli_step_finite(run->cmd, step + 1, *loss, norm, lr, run->checkpoint_step))
        return false;
    /* torch's clip_grad_norm_: scale by max/(norm + 1e-6) when that is below 1 */
    if (f->clip > 0 && f->clip / (norm + 1e-6) < 1.0 && !trainer_grad_scale(tr, (float)(f->clip / (norm + 1e-6))))
        goto failed;
    if (trainer_adamw_step(tr, step + 1, lr, &f->adamw, (int)threads))
        return true;
failed:
    cli_error(run->cmd, "training step %" PRIu64 ": %s", step + 1, trainer_error(tr));
    return false;
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
