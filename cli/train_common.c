/* train_common.c — what the training commands (pretrain, finetune) share: the seeded order of an
 * epoch, the optimizer state and state.json of a checkpoint, swapping a finished checkpoint
 * directory into place, copying a vocabulary next to a model, drawing plots with gnuplot, and
 * training data parallel over the processes mpirun started.
 *
 * Resuming is exact because everything a run depends on is either a function of its flags (the
 * data order is one of (seed, epoch)) or stored in the checkpoint (weights, AdamW moments, step,
 * data position). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

#include "cli/cli.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "tokenizer/tokenizer.h"
#include "train/train.h"

/* Position i of epoch e's order: a seeded Fisher–Yates permutation, recomputed from (seed, e). */
void cli_epoch_order(uint64_t seed, uint64_t epoch, size_t n, uint32_t *order)
{
    struct train_rng {
        uint64_t s;
    } rng = {seed * 0x9e3779b97f4a7c15ull + epoch * 0xd1b54a32d192ed03ull + 1};
    for (size_t i = 0; i < n; i++)
        order[i] = (uint32_t)i;
    for (size_t i = n; i > 1; i--) {
        rng.s ^= rng.s << 13;
        rng.s ^= rng.s >> 7;
        rng.s ^= rng.s << 17;
        size_t j = (size_t)(rng.s % i);
        uint32_t t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
}

bool cli_save_optimizer(const char *cmd, const char *dir, const float *mom, const float *vel, size_t n,
                        const struct cli_train_state *st)
{
    char path[4200], err[512];
    struct st_write_tensor t[2] = {
        {.name = "adamw.m", .dtype = ST_F32, .ndim = 1, .shape = {n}, .data = mom},
        {.name = "adamw.v", .dtype = ST_F32, .ndim = 1, .shape = {n}, .data = vel},
    };
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    if (!st_write(path, t, 2, NULL, 0, err, sizeof err)) {
        cli_error(cmd, "%s", err);
        return false;
    }
    snprintf(path, sizeof path, "%s/state.json", dir);
    struct cli_output out;
    if (!cli_output_open(cmd, path, &out))
        return false;
    /* finetune's fields first, in the order older checkpoints have them */
    fprintf(out.fp, "{\"step\": %" PRIu64 ", \"epoch\": %" PRIu64 ", \"seed\": %" PRIu64, st->step, st->epoch, st->seed);
    if (!isnan(st->best_dev))
        fprintf(out.fp, ", \"best_dev\": %.17g", st->best_dev);
    if (st->global_batch)
        fprintf(out.fp, ", \"global_batch\": %" PRIu64, st->global_batch);
    if (st->data[0]) {
        struct json_object *s = json_object_new_string(st->data);
        fprintf(out.fp, ", \"position\": %" PRIu64 ", \"data\": %s", st->position,
                s ? json_object_to_json_string_ext(s, JSON_C_TO_STRING_NOSLASHESCAPE) : "\"\"");
        json_object_put(s);
    }
    fprintf(out.fp, "}\n");
    return cli_output_commit(cmd, &out);
}

static bool get_u64(struct json_object *o, const char *key, uint64_t *out)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
        return false;
    *out = (uint64_t)json_object_get_int64(v);
    return true;
}

bool cli_load_optimizer(const char *cmd, const char *dir, float *mom, float *vel, size_t n,
                        struct cli_train_state *st)
{
    char path[4200], err[512];
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    struct st_file *f = st_open(path, err, sizeof err);
    if (!f) {
        cli_error(cmd, "%s", err);
        return false;
    }
    const struct st_tensor *tm = st_find(f, "adamw.m"), *tv = st_find(f, "adamw.v");
    bool ok = tm && tv && tm->numel == n && tv->numel == n && st_read_f32(tm, mom) && st_read_f32(tv, vel);
    st_close(f);
    if (!ok) {
        cli_error(cmd, "%s: not this model's optimizer state", path);
        return false;
    }
    snprintf(path, sizeof path, "%s/state.json", dir);
    memset(st, 0, sizeof *st);
    st->best_dev = NAN;
    struct json_object *o = json_object_from_file(path), *v;
    ok = o && get_u64(o, "step", &st->step) && get_u64(o, "epoch", &st->epoch) && get_u64(o, "seed", &st->seed);
    if (ok && json_object_object_get_ex(o, "best_dev", &v))
        st->best_dev = json_object_get_double(v);
    if (ok && json_object_object_get_ex(o, "global_batch", &v))
        ok = get_u64(o, "global_batch", &st->global_batch);
    if (ok && json_object_object_get_ex(o, "data", &v)) {
        ok = json_object_is_type(v, json_type_string) && get_u64(o, "position", &st->position) &&
             json_object_get_string_len(v) < (int)sizeof st->data;
        if (ok)
            snprintf(st->data, sizeof st->data, "%s", json_object_get_string(v));
    }
    json_object_put(o);
    if (!ok)
        cli_error(cmd, "%s: missing or malformed (step, epoch, seed)", path);
    return ok;
}

bool cli_resume_optimizer(const char *cmd, struct trainer *t, const char *dir, uint64_t seed,
                          struct cli_train_state *st)
{
    float *mom, *vel;
    if (!trainer_moments(t, &mom, &vel)) {
        cli_error(cmd, "%s", trainer_error(t));
        return false;
    }
    if (!cli_load_optimizer(cmd, dir, mom, vel, trainer_param_count(t), st))
        return false;
    if (!trainer_load_moments(t)) {
        cli_error(cmd, "%s", trainer_error(t));
        return false;
    }
    if (st->seed != seed) {
        cli_error(cmd, "%s: the checkpoint was trained with --seed %" PRIu64 ", not %" PRIu64, dir, st->seed, seed);
        return false;
    }
    return true;
}

/* On resume the rows after the checkpoint's step go: a run killed after its last checkpoint
 * wrote them, and the resumed run writes them again. */
FILE *cli_open_loss_csv(const char *cmd, const char *out_dir, const char *header, bool resume, uint64_t step)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/loss.csv", out_dir);
    FILE *in = resume ? fopen(path, "r") : NULL;
    struct cli_output out;
    if (!cli_output_open(cmd, path, &out)) {
        if (in)
            fclose(in);
        return NULL;
    }
    fprintf(out.fp, "%s\n", header);
    char *line = NULL;
    size_t cap = 0;
    for (bool first = true; in && getline(&line, &cap, in) > 0; first = false) {
        char *end;
        unsigned long long s = strtoull(line, &end, 10);
        if (!(first && strncmp(line, "step,", 5) == 0) && end != line && *end == ',' && s <= step)
            fputs(line, out.fp);
    }
    free(line);
    if (in)
        fclose(in);
    if (!cli_output_commit(cmd, &out))
        return NULL;
    FILE *f = fopen(path, "a");
    if (!f)
        cli_error(cmd, "cannot open %s for appending: %s", path, strerror(errno));
    return f;
}

bool cli_save_checkpoint(const char *cmd, const char *out_dir, struct trainer *t, const struct model *m,
                         const char *vocab_file, const struct cli_train_state *st, bool synced)
{
    char staged[4000], dir[4000], path[4100], err[1024];
    float *mom, *vel;
    if ((!synced && !trainer_sync_model(t)) || !trainer_moments(t, &mom, &vel)) {
        cli_error(cmd, "%s", trainer_error(t));
        return false;
    }
    const size_t n = trainer_param_count(t);
    snprintf(staged, sizeof staged, "%s/checkpoint.new", out_dir);
    snprintf(dir, sizeof dir, "%s/checkpoint", out_dir);
    cli_remove_flat_dir(staged);
    if (mkdir(staged, 0755) != 0) {
        cli_error(cmd, "cannot create the checkpoint directory %s: %s", staged, strerror(errno));
        return false;
    }
    /* a signal while it fills must not leave a half checkpoint (and its .tmp.PID files) behind */
    cli_temp_track_dir(staged);
    bool ok = model_save(m, staged, err, sizeof err);
    if (!ok)
        cli_error(cmd, "%s", err);
    snprintf(path, sizeof path, "%s/vocab.txt", staged);
    ok = ok && (!vocab_file || cli_copy_file(cmd, vocab_file, path));
    ok = ok && cli_save_optimizer(cmd, staged, mom, vel, n, st) && cli_replace_dir(cmd, staged, dir);
    if (!ok)
        cli_remove_flat_dir(staged);
    cli_temp_untrack_dir();
    return ok;
}

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

bool cli_hf_checkpoint(const char *cmd, const char *option, const char *id, char *dir, size_t len)
{
    if (is_dir(id)) {
        snprintf(dir, len, "%s", id);
        return true;
    }
    /* the cache's layout: models--ORG--NAME/{refs/main, snapshots/REVISION/} */
    char root[3000] = "";
    const char *hub = getenv("HF_HUB_CACHE"), *home = getenv("HF_HOME"), *xdg = getenv("XDG_CACHE_HOME");
    if (hub && *hub)
        snprintf(root, sizeof root, "%s", hub);
    else if (home && *home)
        snprintf(root, sizeof root, "%s/hub", home);
    else if (xdg && *xdg)
        snprintf(root, sizeof root, "%s/huggingface/hub", xdg);
    else if (getenv("HOME"))
        snprintf(root, sizeof root, "%s/.cache/huggingface/hub", getenv("HOME"));
    const char *slash = strchr(id, '/');
    const bool hub_id = slash && slash != id && slash[1] && !strchr(slash + 1, '/') && id[0] != '.';
    char repo[3400], ref_path[3500], revision[256] = "";
    snprintf(repo, sizeof repo, "%s/models--%.*s--%s", root, hub_id ? (int)(slash - id) : 0, id,
             hub_id ? slash + 1 : "");
    snprintf(ref_path, sizeof ref_path, "%s/refs/main", repo);
    FILE *ref = hub_id ? fopen(ref_path, "r") : NULL;
    if (ref) {
        if (!fgets(revision, sizeof revision, ref))
            revision[0] = '\0';
        revision[strcspn(revision, " \r\n")] = '\0';
        fclose(ref);
    }
    if (revision[0] && !strchr(revision, '/')) {
        snprintf(dir, len, "%s/snapshots/%s", repo, revision);
        if (is_dir(dir))
            return true;
    }
    if (hub_id)
        cli_error(cmd, "--%s %s: not a directory, and not in the Hugging Face cache (%s); netlm downloads nothing: "
                       "fetch it first (huggingface-cli download %s) or give its directory", option, id,
                  root[0] ? root : "no HOME", id);
    else
        cli_error(cmd, "--%s %s: no such directory (a Hugging Face checkpoint: config.json and *.safetensors)",
                  option, id);
    return false;
}

struct model *cli_training_model(const char *cmd, const struct cli_model_source *src, uint64_t seed,
                                 const char **from)
{
    char err[1024], hf_dir[4096];
    struct model *m = NULL;
    const char *dir = src->checkpoint ? src->checkpoint : src->pretrained;
    *from = dir ? dir : src->config_path;
    if (dir) {
        m = model_load(dir, err, sizeof err);
    } else if (src->qwen_name) {
        if (!cli_hf_checkpoint(cmd, "qwen_model_name", src->qwen_name, hf_dir, sizeof hf_dir))
            return NULL;
        *from = src->qwen_name;
        m = model_load(hf_dir, err, sizeof err);
        /* the seed's resize_token_embeddings: the traffic vocabulary's size, the first rows kept */
        struct tok_vocab *v = !m ? NULL : src->vocab_path ? tok_vocab_load(src->vocab_path, err, sizeof err)
                                                          : tok_vocab_builtin();
        if (m && (!v || !model_resize_vocab(m, tok_vocab_size(v), false, seed, err, sizeof err))) {
            model_free(m);
            m = NULL;
        }
        tok_vocab_free(v);
        if (m)
            snprintf(model_config_mut(m)->tokenizer.vocab, sizeof model_config_mut(m)->tokenizer.vocab, "builtin");
    } else {
        struct model_config cfg;
        model_config_init(&cfg);
        if (model_config_load(src->config_path, &cfg, err, sizeof err))
            m = model_create(&cfg, seed, err, sizeof err);
        model_config_release(&cfg);
    }
    if (!m) {
        cli_error(cmd, "%s", err);
        return NULL;
    }
    if (src->use_qwen && model_get_config(m)->arch != MODEL_ARCH_QWEN2) {
        cli_error(cmd, "--use_qwen: %s is a %s model, not Qwen2", *from, model_arch_name(model_get_config(m)->arch));
        model_free(m);
        return NULL;
    }
    /* a model larger or other than its file says must not go unnoticed, -q or not */
    if (model_get_config(m)->sizes_note[0])
        fprintf(stderr, "netlm %s: %s\n", cmd, model_get_config(m)->sizes_note);
    return m;
}

/* Removes a directory that holds only files (a checkpoint). */
bool cli_remove_flat_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT;
    struct dirent *e;
    char path[4400];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    return rmdir(dir) == 0;
}

/* staged (a finished checkpoint) becomes dir in one step: renameat2's exchange swaps the two
 * directories atomically, so at every instant dir is either the old checkpoint or the new one,
 * never a mixture of the two (a model from one step and the optimizer of another). */
bool cli_replace_dir(const char *cmd, const char *staged, const char *dir)
{
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        if (rename(staged, dir) == 0)
            return true;
        cli_error(cmd, "%s: cannot rename %s into place: %s", dir, staged, strerror(errno));
        return false;
    }
    if (renameat2(AT_FDCWD, staged, AT_FDCWD, dir, RENAME_EXCHANGE) == 0) {
        cli_remove_flat_dir(staged); /* now the old one */
    } else {
        /* a file system without the exchange: a short window without a checkpoint (dir.old
         * holds it) rather than a mixed one */
        char old[4200];
        snprintf(old, sizeof old, "%s.old", dir);
        cli_remove_flat_dir(old);
        if (rename(dir, old) != 0 || rename(staged, dir) != 0) {
            cli_error(cmd, "%s: cannot replace it with %s: %s", dir, staged, strerror(errno));
            return false;
        }
        cli_remove_flat_dir(old);
    }
    /* the renames are durable once the parent's entries are */
    char parent[4200];
    snprintf(parent, sizeof parent, "%s", dir);
    char *slash = strrchr(parent, '/');
    if (slash)
        *slash = '\0';
    int fd = open(slash ? parent : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    return true;
}

bool cli_copy_file(const char *cmd, const char *from, const char *to)
{
    FILE *in = fopen(from, "rb");
    if (!in) {
        cli_error(cmd, "cannot copy %s: %s", from, strerror(errno));
        return false;
    }
    struct cli_output out;
    bool ok = cli_output_open(cmd, to, &out);
    char buf[65536];
    size_t n;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0)
        ok = fwrite(buf, 1, n, out.fp) == n;
    if (ok && ferror(in)) {
        cli_error(cmd, "cannot copy %s: read error", from);
        ok = false;
    }
    fclose(in);
    if (ok)
        return cli_output_commit(cmd, &out);
    if (out.fp)
        cli_output_abort(&out);
    return false;
}

bool cli_have_gnuplot(void)
{
    return access("/usr/bin/gnuplot", X_OK) == 0;
}

/* A path inside a gnuplot single-quoted string: a quote is written twice. */
static void put_quoted(FILE *f, const char *dir, const char *name)
{
    fputc('\'', f);
    for (const char *p = dir; *p; p++) {
        if (*p == '\'')
            fputc('\'', f);
        fputc(*p, f);
    }
    fprintf(f, "/%s'", name);
}

/* The script goes to gnuplot's standard input (no shell sees the paths); the image is drawn
 * under a temporary name and renamed, so a reader never sees half a PNG. */
bool cli_gnuplot(const char *dir, const char *png, const char *size, const char *script, const char *file)
{
    if (!cli_have_gnuplot())
        return false;
    char tmp_name[256], path[4400], tmp_path[4400];
    snprintf(tmp_name, sizeof tmp_name, "%s.tmp.%ld", png, (long)getpid());
    snprintf(path, sizeof path, "%s/%s", dir, png);
    snprintf(tmp_path, sizeof tmp_path, "%s/%s", dir, tmp_name);
    /* a gnuplot that exits before reading its script must not take netlm down with SIGPIPE */
    struct sigaction ignore = {.sa_handler = SIG_IGN}, saved;
    sigemptyset(&ignore.sa_mask);
    sigaction(SIGPIPE, &ignore, &saved);
    FILE *gp = popen("/usr/bin/gnuplot >/dev/null 2>&1", "w");
    if (!gp) {
        sigaction(SIGPIPE, &saved, NULL);
        return false;
    }
    fprintf(gp, "set terminal pngcairo size %s noenhanced\nset output ", size);
    put_quoted(gp, dir, tmp_name);
    fputc('\n', gp);
    /* gnuplot centres a rotated tic label on its tic, so half of it lies inside the graph, under
     * what is plotted there (a confusion matrix's image leaves two letters of each class name
     * visible): right-justified, it hangs below the axis whole. A justification the script
     * gives itself still wins. */
    if (strstr(script, "xtics rotate"))
        fputs("set xtics right\n", gp);
    for (const char *p = script; *p; p++) {
        if (p[0] == '@' && p[1] == 'F') {
            put_quoted(gp, dir, file);
            p++;
        } else {
            fputc(*p, gp);
        }
    }
    fprintf(gp, "\nset output\n");
    int rc = pclose(gp);
    sigaction(SIGPIPE, &saved, NULL);
    if (rc != 0 || rename(tmp_path, path) != 0) {
        unlink(tmp_path);
        return false;
    }
    return true;
}

bool cli_plot_loss(const char *dir, bool dev_accuracy)
{
    if (dev_accuracy)
        return cli_gnuplot(dir, "loss.png", "900,500",
                           "set datafile separator ','; set key autotitle columnhead; set xlabel 'step'; set ylabel 'loss';"
                           " set y2label 'dev accuracy'; set y2tics; set ytics nomirror;"
                           " plot @F using 1:2 with lines title 'train loss',"
                           " @F using 1:(column(4) >= 0 ? column(4) : 1/0) axes x1y2 with linespoints title 'dev accuracy'",
                           "loss.csv");
    return cli_gnuplot(dir, "loss.png", "900,500",
                       "set datafile separator ','; set key autotitle columnhead; set xlabel 'step'; set ylabel 'loss';"
                       " set y2label 'learning rate'; set y2tics; set ytics nomirror;"
                       " plot @F using 1:2 with lines title 'train loss',"
                       " @F using 1:3 axes x1y2 with lines title 'learning rate'",
                       "loss.csv");
}

bool cli_dropout_arg(const char *cmd, const struct cli_opt *opts, double *p)
{
    *p = -1.0;
    return !cli_get(opts, "dropout") || cli_double(cmd, opts, "dropout", 0.0, 0.0, 0.95, p);
}

bool cli_device_arg(const char *cmd, const struct cli_opt *opts, struct cli_device *d)
{
    static const char *const precisions[] = {"bf16", "fp32", NULL};
    d->name = cli_get(opts, "device");
    d->device = -1;
    if (d->name && !model_device_parse(d->name, &d->device)) {
        cli_error(cmd, "--device: expected cpu, cuda or cuda:N, got '%s'", d->name);
        return false;
    }
    if (!d->name)
        d->name = "cpu";
    const int prec = cli_choice(cmd, opts, "precision", "bf16", precisions);
    if (prec < 0)
        return false;
    if (d->device < 0 && cli_get(opts, "precision")) {
        cli_error(cmd, "--precision: only with --device cuda (the CPU computes in fp32)");
        return false;
    }
    d->bf16 = prec == 0;
    d->residual_bf16 = false;
    return true;
}

bool cli_residual_arg(const char *cmd, const struct cli_opt *opts, struct cli_device *d)
{
    static const char *const streams[] = {"bf16", "fp32", NULL};
    const int stream = cli_choice(cmd, opts, "residual", "bf16", streams);
    if (stream < 0)
        return false;
    if (cli_get(opts, "residual") && (d->device < 0 || !d->bf16)) {
        cli_error(cmd, "--residual: only with --device cuda in bf16 (%s)",
                  d->device < 0 ? "the CPU computes in fp32" : "--precision fp32 keeps everything in fp32");
        return false;
    }
    d->residual_bf16 = d->device >= 0 && d->bf16 && stream == 0;
    return true;
}

void cli_trainer_report(const char *cmd, int device, bool bf16, uint32_t threads)
{
    if (device < 0) {
        fprintf(stderr, "netlm %s: training on the CPU, %u thread%s, fp32\n", cmd, threads, threads == 1 ? "" : "s");
        return;
    }
    char gpu[384];
    if (!model_cuda_describe(device, gpu, sizeof gpu))
        snprintf(gpu, sizeof gpu, "?");
    fprintf(stderr, "netlm %s: training on cuda:%d (%s), %s\n", cmd, device, gpu, bf16 ? "bf16" : "fp32");
}

struct trainer *cli_trainer(const char *cmd, struct model *m, const struct cli_device *d, int device,
                            uint32_t batch, uint32_t seq, uint32_t threads, double p, uint64_t seed)
{
    if (p >= 0.0) {
        struct model_config *mut = model_config_mut(m);
        mut->dropout_embed = mut->dropout_attn = mut->dropout_resid = (float)p;
    }
    struct train_dropout drop;
    train_dropout_from_config(&drop, model_get_config(m), seed);
    const struct trainer_options o = {.device = device, .bf16 = d->bf16, .max_batch = batch, .max_seq = seq,
                                      .threads = threads, .dropout = &drop};
    char err[1024];
    struct trainer *t = trainer_create(m, &o, err, sizeof err);
    if (!t) {
        if (device >= 0)
            cli_error(cmd, "--device %s: %s", d->name, err);
        else
            cli_error(cmd, "%s", err);
    }
    return t;
}

bool cli_world_size_check(const char *cmd, uint32_t world_size, int world)
{
    if (!world_size || world_size == (uint32_t)world)
        return true;
    cli_error(cmd, "--world_size %u, but %d process%s running: start them with mpirun -np %u netlm %s ...",
              world_size, world, world == 1 ? " is" : "es are", world_size, cmd);
    return false;
}

bool cli_trainer_join(const char *cmd, struct trainer *tr, int rank, int world, int device, bool one_rank)
{
    if (world == 1 && !(one_rank && device >= 0))
        return true;
    /* rank 0 makes the communicator's id, every rank joins with it */
    char err[512];
    struct trainer_comm_id id = {0};
    bool have_id = rank != 0 || device < 0 || trainer_comm_id(&id, err, sizeof err);
    if (!have_id)
        cli_error(cmd, "%s", err);
    if (world > 1) {
        double ok = have_id ? 1.0 : 0.0; /* every rank learns whether rank 0 made one */
        cli_mpi_min_doubles(&ok, 1);
        cli_mpi_broadcast(id.bytes, sizeof id.bytes);
        have_id = ok > 0.0;
    }
    if (!have_id)
        return false;
    if (!trainer_join(tr, &id, rank, world)) {
        cli_error(cmd, "%s", trainer_error(tr));
        return false;
    }
    return true;
}

bool cli_step_finite(const char *cmd, uint64_t step, double loss, double norm, double lr, uint64_t checkpoint_step)
{
    if (isfinite(loss) && isfinite(norm))
        return true;
    char kept[96];
    if (checkpoint_step == UINT64_MAX)
        snprintf(kept, sizeof kept, "no checkpoint was written");
    else
        snprintf(kept, sizeof kept, "the last checkpoint (step %" PRIu64 ") is kept", checkpoint_step);
    /* NaN weights saved over a good model would be worse than stopping: nothing is written */
    cli_error(cmd, "step %" PRIu64 ": the %s is %g (learning rate %g; a lower --learning_rate, a longer --warmup "
                   "or --clip may help): stopped; %s", step, isfinite(loss) ? "gradient norm" : "loss",
              isfinite(loss) ? norm : loss, lr, kept);
    return false;
}

bool cli_world_grads(struct trainer *tr, int world, double *loss_weighted, double *count)
{
    if (world == 1)
        return trainer_sum_grads(tr, NULL); /* a no-op but for a one-rank GPU communicator */
    double sums[2] = {*loss_weighted, *count};
    cli_mpi_sum_doubles(sums, 2);
    if (sums[1] <= 0.0)
        return trainer_grad_scale(tr, 0.0f);
    static const struct trainer_host_reduce mpi = {cli_mpi_sum_floats, cli_mpi_or_bytes};
    if (!trainer_grad_scale(tr, (float)*count) || !trainer_sum_grads(tr, &mpi) ||
        !trainer_grad_scale(tr, (float)(1.0 / sums[1])))
        return false;
    *loss_weighted = sums[0];
    *count = sums[1];
    return true;
}

void cli_world_share(size_t n, int rank, int world, size_t *lo, size_t *hi)
{
    *lo = n * (size_t)rank / (size_t)world;
    *hi = n * (size_t)(rank + 1) / (size_t)world;
}
