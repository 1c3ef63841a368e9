/* cmd_dataset.c — `netlm dataset understanding|generation`: class-per-folder captures to the
 * seed's train/valid/test TSVs. Sessions are assembled here (no SplitCap step), sampled with a
 * seeded order that does not depend on thread timing, and split by session, stratified by class.
 * Beside the TSVs, dataset.json records how the rows were tokenized, which finetune hands on to
 * the model so that captures are tokenized for it as its training rows were. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "tokenizer/tokenizer.h"

enum task { TASK_UNDERSTANDING, TASK_GENERATION };
enum split { SPLIT_TRAIN, SPLIT_VALID, SPLIT_TEST };
static const char *const split_names[] = {"train", "valid", "test"};

struct sample {
    uint64_t session_key; /* orders sessions for the split */
    uint64_t sample_key;  /* orders samples for the per-class cap and the row order */
    uint32_t label;
    uint32_t file_index;
    uint64_t first_frame;
    uint32_t packet_index; /* generation: which packet of the session */
    uint8_t split;
    char *text;
    char *target; /* generation only */
    struct origin {    /* proto and endpoints, for dataset_index.tsv; formatted when written */
        uint8_t ip_version, proto;
        uint16_t src_port, dst_port;
        uint8_t src[16], dst[16];
        uint64_t packets;
    } origin;
};

/* Keeps the `cap` samples with the smallest sample_key: a max-heap, so the selection is the same
 * whatever order worker threads deliver sessions in. */
struct sample_heap {
    struct sample *items;
    size_t n, cap;
};

struct dataset_run {
    enum task task;
    struct tok_settings tok;
    enum tok_field fields[TOK_FIELD_COUNT];
    int n_fields;
    uint64_t seed;
    uint32_t seq_length; /* 0: rows keep every token (the seed's TSVs) */
    uint32_t label;
    volatile int current_file;
    uint32_t file_base; /* global index of the class's first file */
    struct sample_heap heap;
    pthread_mutex_t lock;
    uint64_t sessions_seen, empty_sessions;
    bool oom;
};

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t key_of(uint64_t seed, uint64_t a, uint64_t b, uint64_t c, uint64_t d)
{
    return mix64(mix64(mix64(mix64(seed ^ 0x6e65746c6dull) ^ a) ^ b) ^ c) ^ d;
}

static void sample_free(struct sample *s)
{
    free(s->text);
    free(s->target);
}

static void heap_sift_down(struct sample_heap *h, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && h->items[l].sample_key > h->items[m].sample_key)
            m = l;
        if (r < h->n && h->items[r].sample_key > h->items[m].sample_key)
            m = r;
        if (m == i)
            return;
        struct sample t = h->items[i];
        h->items[i] = h->items[m];
        h->items[m] = t;
        i = m;
    }
}

/* Takes ownership of s's strings in every case. */
static bool heap_offer(struct sample_heap *h, struct sample *s)
{
    if (h->n < h->cap) {
        size_t i = h->n++;
        h->items[i] = *s;
        while (i > 0) {
            size_t p = (i - 1) / 2;
            if (h->items[p].sample_key >= h->items[i].sample_key)
                break;
            struct sample t = h->items[i];
            h->items[i] = h->items[p];
            h->items[p] = t;
            i = p;
        }
        return true;
    }
    if (h->cap == 0 || s->sample_key >= h->items[0].sample_key) {
        sample_free(s);
        return false;
    }
    sample_free(&h->items[0]);
    h->items[0] = *s;
    heap_sift_down(h, 0);
    return true;
}

/* Cuts text after max_tokens space-separated tokens. */
static void truncate_tokens(char *text, uint32_t max_tokens)
{
    uint32_t count = 0;
    for (char *p = text; *p; p++) {
        if (*p == ' ' && ++count == max_tokens) {
            *p = '\0';
            return;
        }
    }
    if (max_tokens == 0)
        text[0] = '\0';
}

static void session_origin(const struct ft_session *s, struct origin *o)
{
    o->ip_version = s->ip_version;
    o->proto = s->proto;
    o->src_port = s->src_port;
    o->dst_port = s->dst_port;
    memcpy(o->src, s->src_addr, 16);
    memcpy(o->dst, s->dst_addr, 16);
    o->packets = s->pkts[0] + s->pkts[1];
}

static void write_origin(FILE *f, const struct origin *o)
{
    char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
    inet_ntop(o->ip_version == 6 ? AF_INET6 : AF_INET, o->src, a, sizeof a);
    inet_ntop(o->ip_version == 6 ? AF_INET6 : AF_INET, o->dst, b, sizeof b);
    fprintf(f, "%u\t%s\t%u\t%s\t%u\t%" PRIu64, o->proto, a, o->src_port, b, o->dst_port, o->packets);
}

/* The longest text the settings allow: every token 4 hex digits and a separator, "[SEP] "
 * between packets. Sizing once avoids tokenizing each session twice. */
static size_t text_bound(const struct tok_settings *tok, uint32_t packets)
{
    return (size_t)packets * ((size_t)tok->tokens_per_packet * 5 + 7) + 1;
}

static char *session_text(const struct tok_settings *tok, const struct ft_session *s)
{
    uint32_t packets = s->n_stored < tok->packets ? s->n_stored : tok->packets;
    size_t cap = text_bound(tok, packets), needed = 0;
    char *text = malloc(cap);
    if (text)
        tok_session_text(tok, s, text, cap, &needed);
    return text;
}

static void offer_locked(struct dataset_run *run, struct sample *smp)
{
    pthread_mutex_lock(&run->lock);
    heap_offer(&run->heap, smp);
    pthread_mutex_unlock(&run->lock);
}

static void understanding_session(struct dataset_run *run, const struct ft_session *s, uint32_t file_index)
{
    char *text = session_text(&run->tok, s);
    if (!text) {
        run->oom = true;
        return;
    }
    if (run->seq_length)
        truncate_tokens(text, run->seq_length >= 2 ? run->seq_length - 2 : 0);
    if (text[0] == '\0') {
        free(text);
        __atomic_add_fetch(&run->empty_sessions, 1, __ATOMIC_RELAXED);
        return;
    }
    struct sample smp = {.label = run->label, .file_index = file_index, .first_frame = s->first_frame,
                         .text = text};
    smp.session_key = key_of(run->seed, run->label, file_index, s->first_frame, 0);
    smp.sample_key = smp.session_key;
    session_origin(s, &smp.origin);
    offer_locked(run, &smp);
}

static void generation_session(struct dataset_run *run, const struct ft_session *s, uint32_t file_index)
{
    uint64_t session_key = key_of(run->seed, run->label, file_index, s->first_frame, 0);
    struct origin origin;
    session_origin(s, &origin);
    for (uint32_t p = 0; p < s->n_stored && p < run->tok.packets; p++) {
        const struct ft_stored_packet *sp = &s->stored[p];
        uint8_t bytes[4096];
        uint32_t len = sp->stored_len < sizeof bytes ? sp->stored_len : (uint32_t)sizeof bytes;
        memcpy(bytes, sp->bytes, len);
        char target[TOK_FIELD_COUNT * 10 + 1] = "";
        for (int f = 0; f < run->n_fields; f++) {
            uint32_t value = 0;
            tok_field_take(run->fields[f], bytes, len, &sp->layers, &value); /* absent: 0, as the seed */
            char t[10];
            tok_field_target_text(value, t);
            if (f)
                strcat(target, " ");
            strcat(target, t);
        }
        struct ft_stored_packet masked = *sp;
        masked.bytes = bytes;
        masked.stored_len = len;
        struct sample smp = {.label = run->label, .file_index = file_index, .first_frame = s->first_frame,
                             .packet_index = p, .session_key = session_key};
        size_t cap = text_bound(&run->tok, 1), needed = 0;
        smp.text = malloc(cap);
        smp.target = strdup(target);
        if (!smp.text || !smp.target) {
            sample_free(&smp);
            run->oom = true;
            return;
        }
        if (tok_packet_text(&run->tok, &masked, smp.text, cap, &needed) == 0) {
            sample_free(&smp);
            continue;
        }
        if (run->seq_length)
            truncate_tokens(smp.text, run->seq_length >= 2 ? run->seq_length - 2 : 0);
        smp.sample_key = key_of(run->seed, run->label, file_index, s->first_frame, p + 1);
        smp.origin = origin;
        offer_locked(run, &smp);
    }
}

static void on_session(const struct ft_session *s, int worker, void *user)
{
    (void)worker;
    struct dataset_run *run = user;
    __atomic_add_fetch(&run->sessions_seen, 1, __ATOMIC_RELAXED);
    uint32_t file_index = run->file_base + (uint32_t)run->current_file;
    if (run->task == TASK_UNDERSTANDING)
        understanding_session(run, s, file_index);
    else
        generation_session(run, s, file_index);
}

static int cmp_session_key(const void *a, const void *b)
{
    const struct sample *x = a, *y = b;
    if (x->session_key != y->session_key)
        return x->session_key < y->session_key ? -1 : 1;
    return x->packet_index < y->packet_index ? -1 : x->packet_index > y->packet_index;
}

static int cmp_sample_key(const void *a, const void *b)
{
    const struct sample *x = *(const struct sample *const *)a, *y = *(const struct sample *const *)b;
    return x->sample_key < y->sample_key ? -1 : x->sample_key > y->sample_key;
}

/* 80/10/10 by session within one class: sessions in session_key order, the first tenth (rounded)
 * to test, the next to valid, the rest to train. */
static void assign_splits(struct sample *items, size_t n)
{
    qsort(items, n, sizeof *items, cmp_session_key);
    size_t sessions = 0;
    for (size_t i = 0; i < n; i++)
        if (i == 0 || items[i].session_key != items[i - 1].session_key)
            sessions++;
    size_t n_test = (sessions + 5) / 10, n_valid = (sessions + 5) / 10;
    size_t s = 0;
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && items[i].session_key != items[i - 1].session_key)
            s++;
        items[i].split = s < n_test ? SPLIT_TEST : s < n_test + n_valid ? SPLIT_VALID : SPLIT_TRAIN;
    }
}

struct class_list {
    char **names;
    int n;
};

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool list_classes(const char *cmd, const char *dir, struct class_list *out)
{
    DIR *d = opendir(dir);
    if (!d) {
        cli_error(cmd, "%s: cannot open the class folder root: %s", dir, strerror(errno));
        return false;
    }
    struct dirent *e;
    int cap = 0;
    out->n = 0;
    out->names = NULL;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
            cli_warn(cmd, "%s: not a class folder, ignored", path);
            continue;
        }
        if (strpbrk(e->d_name, "\n\r")) {
            /* classes.txt names label n on line n: a line break would shift every label after it.
             * The name is shown escaped, so that the error stays one line. */
            char shown[CLI_TSV_ESCAPED_MAX(sizeof e->d_name)];
            cli_tsv_escape(e->d_name, shown, sizeof shown);
            cli_error(cmd, "%s/%s: a class folder name with a line break in it cannot be a label; rename it", dir,
                      shown);
            closedir(d);
            return false;
        }
        if (out->n == cap) {
            cap = cap ? 2 * cap : 32;
            char **p = realloc(out->names, (size_t)cap * sizeof *p);
            if (!p) {
                closedir(d);
                return false;
            }
            out->names = p;
        }
        out->names[out->n++] = strdup(e->d_name);
    }
    closedir(d);
    if (out->n > 0)
        qsort(out->names, (size_t)out->n, sizeof *out->names, cmp_str);
    return true;
}

struct outputs {
    struct cli_output split[3], nolabel, classes, index, settings;
};

/* dataset.json: what finetune needs to know of the rows that the TSVs do not say. */
struct class_file {
    dev_t dev;
    ino_t ino;
    int class_index, file_index;
};

static int cmp_class_file(const void *a, const void *b)
{
    const struct class_file *x = a, *y = b;
    if (x->dev != y->dev)
        return x->dev < y->dev ? -1 : 1;
    if (x->ino != y->ino)
        return x->ino < y->ino ? -1 : 1;
    return (x->class_index > y->class_index) - (x->class_index < y->class_index);
}

/* The same capture in two class folders (a copy made as a hard or symbolic link) would give its
 * sessions two labels, and a split could put one in train and the other in test: false after
 * one error line naming both places. */
static bool no_file_in_two_classes(const char *cmd, const struct class_list *classes, char ***files,
                                   const int *nfiles)
{
    size_t n = 0;
    for (int c = 0; c < classes->n; c++)
        n += (size_t)nfiles[c];
    struct class_file *all = malloc((n ? n : 1) * sizeof *all);
    if (!all) {
        cli_error(cmd, "out of memory");
        return false;
    }
    size_t k = 0;
    for (int c = 0; c < classes->n; c++)
        for (int i = 0; i < nfiles[c]; i++) {
            struct stat st;
            if (stat(files[c][i], &st) == 0)
                all[k++] = (struct class_file){st.st_dev, st.st_ino, c, i};
        }
    qsort(all, k, sizeof *all, cmp_class_file);
    bool ok = true;
    for (size_t i = 1; i < k && ok; i++) {
        const struct class_file *a = &all[i - 1], *b = &all[i];
        if (a->dev == b->dev && a->ino == b->ino && a->class_index != b->class_index) {
            cli_error(cmd, "%s and %s are the same file, in classes %s and %s: its sessions can have one label",
                      files[a->class_index][a->file_index], files[b->class_index][b->file_index],
                      classes->names[a->class_index], classes->names[b->class_index]);
            ok = false;
        }
    }
    free(all);
    return ok;
}

static void write_settings(FILE *f, const struct dataset_run *run, int classes)
{
    fprintf(f, "{\"task\": \"%s\", \"tokenizer\": {\"header_mode\": \"%s\", \"stride\": %d, "
               "\"tokens_per_packet\": %u, \"packets\": %u, \"sep_between_packets\": %s}",
            run->task == TASK_UNDERSTANDING ? "understanding" : "generation", tok_header_mode_name(run->tok.header_mode),
            run->tok.stride, run->tok.tokens_per_packet, run->tok.packets, run->tok.sep_between_packets ? "true" : "false");
    if (run->task == TASK_GENERATION) {
        fprintf(f, ", \"fields\": [");
        for (int k = 0; k < run->n_fields; k++)
            fprintf(f, "%s\"%s\"", k ? ", " : "", tok_field_name(run->fields[k]));
        fputc(']', f);
    }
    fprintf(f, ", \"seq_length\": %u, \"random_seed\": %" PRIu64 ", \"classes\": %d}\n", run->seq_length, run->seed,
            classes);
}

static bool open_outputs(const char *cmd, const char *dir, struct outputs *o)
{
    static const char *const names[] = {"train_dataset.tsv", "valid_dataset.tsv", "test_dataset.tsv"};
    char path[4096];
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (!cli_output_open(cmd, path, &o->split[i]))
            return false;
        fputs("label\ttext_a\n", o->split[i].fp);
    }
    snprintf(path, sizeof path, "%s/nolabel_test_dataset.tsv", dir);
    if (!cli_output_open(cmd, path, &o->nolabel))
        return false;
    fputs("text_a\n", o->nolabel.fp);
    snprintf(path, sizeof path, "%s/classes.txt", dir);
    if (!cli_output_open(cmd, path, &o->classes))
        return false;
    snprintf(path, sizeof path, "%s/dataset_index.tsv", dir);
    if (!cli_output_open(cmd, path, &o->index))
        return false;
    fputs("split\tlabel\tclass\tfile\tfirst_frame\tpacket\tproto\tsrc_ip\tsrc_port\tdest_ip\tdest_port\tpackets\n",
          o->index.fp);
    snprintf(path, sizeof path, "%s/dataset.json", dir);
    return cli_output_open(cmd, path, &o->settings);
}

static void abort_outputs(struct outputs *o)
{
    for (int i = 0; i < 3; i++)
        cli_output_abort(&o->split[i]);
    cli_output_abort(&o->nolabel);
    cli_output_abort(&o->classes);
    cli_output_abort(&o->index);
    cli_output_abort(&o->settings);
}

static bool commit_outputs(const char *cmd, struct outputs *o)
{
    bool ok = true;
    for (int i = 0; i < 3 && ok; i++)
        ok = cli_output_commit(cmd, &o->split[i]);
    ok = ok && cli_output_commit(cmd, &o->nolabel) && cli_output_commit(cmd, &o->classes) &&
         cli_output_commit(cmd, &o->index) && cli_output_commit(cmd, &o->settings);
    return ok;
}

int cmd_dataset(int argc, char **argv)
{
    static const char *const cmd = "dataset";
    struct cli_opt opts[] = {
        {"pcap-path", NULL, 'i', "DIR", "one sub-folder per class; label = index in the sorted folder names", NULL},
        {"dataset-dir", NULL, 'o', "DIR", "where the TSVs, classes.txt, dataset_index.tsv and dataset.json go "
                                          "(created with its parents)", NULL},
        {"class-num", NULL, 0, "N", "number of classes (at least the number of class folders)", NULL},
        {"random-seed", NULL, 0, "S", "seed of sampling and split (default 1)", NULL},
        {"samples-per-class", NULL, 0, "N", "samples kept per class at most (default 5000)", NULL},
        {"packets", NULL, 0, "N", "packets used per session (default 32; generation: 101, one sample each)", NULL},
        {"tokens-per-packet", NULL, 0, "N", "tokens per packet at most (default 64)", NULL},
        {"stride", NULL, 0, "1|2", "bytes between token starts: 2 (default) or 1 (overlapping)", NULL},
        {"seq-length", NULL, 0, "N", "trim each row to the N - 2 tokens a model of that length reads (default: keep all)", NULL},
        {"header-mode", NULL, 0, "MODE", "none|seed|full|strict|strip (default full; seed = NetGPT's)", NULL},
        {"sep-between-packets", NULL, 0, NULL, "put [SEP] between the packets of a session", NULL},
        {"fields", NULL, 0, "LIST", "generation targets, comma-separated: ip_len (default), src_port, dst_port, ttl, tcp_window", NULL},
        {"middle-save-path", NULL, 0, "DIR", "accepted for the seed's command lines; not needed", NULL},
        CLI_FLOW_OPTIONS,
        {0},
    };
    const char **pos;
    int npos;
    int rc = cli_parse(cmd, "understanding|generation --pcap_path DIR --dataset_dir OUT [OPTIONS]",
                       "Builds a labeled dataset from class-per-folder captures. A class folder holds one capture\n"
                       "per session (SplitCap's layout) or captures with many sessions: either way netlm\n"
                       "assembles the sessions itself. understanding: one row per session (label = class id);\n"
                       "generation: one row per packet, the chosen header fields zeroed in the input and given as\n"
                       "the target. Samples are split 80/10/10 by session, stratified by class, with the seed.",
                       opts, argc, argv, &pos, &npos);
    if (rc != CLI_PARSED)
        return rc == CLI_HELP_SHOWN ? 0 : 2;
    int status = 2;
    struct class_list classes = {0};
    struct outputs outs;
    memset(&outs, 0, sizeof outs);
    struct sample *all = NULL;
    size_t n_all = 0, cap_all = 0;
    struct ft_assembler *as = NULL;
    struct dataset_run run;
    memset(&run, 0, sizeof run);
    pthread_mutex_init(&run.lock, NULL);

    if (npos != 1 || (strcmp(pos[0], "understanding") != 0 && strcmp(pos[0], "generation") != 0)) {
        cli_error(cmd, "expected the task, 'understanding' or 'generation', as the one argument");
        goto done;
    }
    run.task = strcmp(pos[0], "understanding") == 0 ? TASK_UNDERSTANDING : TASK_GENERATION;
    const char *pcap_dir = cli_get(opts, "pcap-path"), *out_dir = cli_get(opts, "dataset-dir");
    if (!pcap_dir || !out_dir) {
        cli_error(cmd, "%s is required", !pcap_dir ? "--pcap_path DIR" : "--dataset_dir DIR");
        goto done;
    }
    uint64_t seed;
    uint32_t samples_cap, class_num, stride;
    tok_settings_defaults(&run.tok);
    if (!cli_u64(cmd, opts, "random-seed", 1, 0, UINT64_MAX, &seed) ||
        !cli_u32(cmd, opts, "samples-per-class", 5000, 1, 1u << 20, &samples_cap) ||
        !cli_u32(cmd, opts, "packets", run.task == TASK_GENERATION ? 101 : 32, 1, 100000, &run.tok.packets) ||
        !cli_u32(cmd, opts, "tokens-per-packet", 64, 1, 65536, &run.tok.tokens_per_packet) ||
        !cli_u32(cmd, opts, "stride", 2, 1, 2, &stride) ||
        !cli_u32(cmd, opts, "seq-length", 0, 0, 1u << 20, &run.seq_length) ||
        !cli_u32(cmd, opts, "class-num", 0, 0, 1u << 20, &class_num))
        goto done;
    if (run.seq_length == 1) {
        cli_error(cmd, "--seq_length: 1 leaves no room for [CLS] and a token");
        goto done;
    }
    run.seed = seed;
    run.tok.stride = (int)stride;
    run.tok.sep_between_packets = cli_flag(opts, "sep-between-packets");
    if (!cli_header_mode(cmd, opts, &run.tok.header_mode))
        goto done;
    if (run.task == TASK_GENERATION) {
        const char *list = cli_get(opts, "fields") ? cli_get(opts, "fields") : "ip_len";
        char buf[256];
        snprintf(buf, sizeof buf, "%s", list);
        for (char *save = NULL, *f = strtok_r(buf, ",", &save); f; f = strtok_r(NULL, ",", &save)) {
            if (run.n_fields == TOK_FIELD_COUNT || !tok_field_parse(f, &run.fields[run.n_fields])) {
                cli_error(cmd, "--fields: unknown or repeated field '%s' (ip_len, src_port, dst_port, ttl, tcp_window)", f);
                goto done;
            }
            run.n_fields++;
        }
    } else if (cli_get(opts, "fields")) {
        cli_error(cmd, "--fields applies to the generation task only");
        goto done;
    }
    struct ft_config cfg;
    ft_config_defaults(&cfg);
    cfg.max_flows = 1u << 18; /* each flow holds its first packets here: ~6 KB, so 1.5 GB at most */
    if (!cli_flow_config(cmd, opts, &cfg))
        goto done;
    cfg.packets_per_session = run.tok.packets;
    /* Enough bytes for the tokens after the longest headers, so strip mode still has payload. */
    cfg.bytes_per_packet = run.tok.tokens_per_packet * stride + 1 +
                           (run.tok.header_mode == TOK_HDR_STRIP ? 256 : 0);
    if (cfg.bytes_per_packet > 4096)
        cfg.bytes_per_packet = 4096;

    status = 1;
    if (!list_classes(cmd, pcap_dir, &classes))
        goto done;
    if (classes.n == 0) {
        cli_error(cmd, "%s: no class folders (expected one sub-folder per class)", pcap_dir);
        goto done;
    }
    if (class_num == 0) {
        class_num = (uint32_t)classes.n;
    } else if (class_num < (uint32_t)classes.n) {
        cli_error(cmd, "--class_num %u is smaller than the %d class folders in %s", class_num, classes.n, pcap_dir);
        goto done;
    } else if (class_num > (uint32_t)classes.n) {
        cli_warn(cmd, "--class_num %u but only %d class folders in %s: labels are 0..%d", class_num, classes.n,
                 pcap_dir, classes.n - 1);
    }
    char err[512];
    as = ft_assembler_create(&cfg, on_session, &run, err, sizeof err);
    if (!as) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    char ***class_files = calloc((size_t)classes.n, sizeof *class_files);
    int *class_nfiles = calloc((size_t)classes.n, sizeof *class_nfiles);
    uint32_t *class_file_base = calloc((size_t)classes.n, sizeof *class_file_base); /* global index of each class's first file */
    if (!class_files || !class_nfiles || !class_file_base) {
        free(class_files);
        free(class_nfiles);
        free(class_file_base);
        goto done;
    }
    uint64_t *class_bytes = calloc((size_t)classes.n, sizeof *class_bytes);
    bool ok = class_bytes != NULL;
    /* every class's files before any is read: a capture in two classes is refused up front */
    for (int c = 0; c < classes.n && ok; c++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", pcap_dir, classes.names[c]);
        const char *one[] = {path};
        class_nfiles[c] = cli_collect_files(cmd, one, 1, &class_files[c], &class_bytes[c]);
        if (class_nfiles[c] < 0) {
            class_nfiles[c] = 0;
            ok = false;
        } else if (class_nfiles[c] == 0) {
            cli_error(cmd, "%s: class folder has no capture files", path);
            ok = false;
        }
    }
    ok = ok && no_file_in_two_classes(cmd, &classes, class_files, class_nfiles);
    uint32_t file_base = 0;
    for (int c = 0; c < classes.n && ok; c++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", pcap_dir, classes.names[c]);
        const int nf = class_nfiles[c];
        const uint64_t bytes = class_bytes[c];
        run.label = (uint32_t)c;
        run.file_base = file_base;
        class_file_base[c] = file_base;
        run.sessions_seen = run.empty_sessions = 0;
        run.heap.items = calloc(samples_cap, sizeof *run.heap.items);
        run.heap.cap = samples_cap;
        run.heap.n = 0;
        if (!run.heap.items) {
            ok = false;
            break;
        }
        char what[300];
        snprintf(what, sizeof what, "%s [%d/%d %s]", cmd, c + 1, classes.n, classes.names[c]);
        if (cli_assemble_files(what, as, class_files[c], nf, bytes, cli_flag(opts, "quiet"), &run.current_file) != 0) {
            ok = false;
        } else if (run.oom) {
            cli_error(cmd, "out of memory while collecting samples of %s", path);
            ok = false;
        } else if (run.heap.n == 0) {
            if (run.sessions_seen == 0)
                cli_error(cmd, "%s: no sessions in %d capture file(s)", path, nf);
            else
                cli_error(cmd, "%s: %" PRIu64 " sessions in %d capture file(s), none with tokens", path,
                          run.sessions_seen, nf);
            ok = false;
        }
        if (ok) {
            assign_splits(run.heap.items, run.heap.n);
            if (n_all + run.heap.n > cap_all) {
                cap_all = (n_all + run.heap.n) * 2;
                struct sample *p = realloc(all, cap_all * sizeof *all);
                if (!p) {
                    ok = false;
                } else {
                    all = p;
                }
            }
        }
        if (ok) {
            memcpy(all + n_all, run.heap.items, run.heap.n * sizeof *all);
            n_all += run.heap.n;
        } else {
            for (size_t i = 0; i < run.heap.n; i++)
                sample_free(&run.heap.items[i]);
        }
        free(run.heap.items);
        run.heap.items = NULL;
        file_base += (uint32_t)nf;
    }
    if (ok) {
        /* Rows in sample_key order: a seeded interleaving of the classes. The folder (and its
         * missing parents) only now that there is something to write: a failed run leaves none. */
        struct sample **order = malloc(n_all * sizeof *order);
        ok = order != NULL && cli_make_folders(cmd, "--dataset_dir", out_dir, false) && open_outputs(cmd, out_dir, &outs);
        if (ok) {
            for (size_t i = 0; i < n_all; i++)
                order[i] = &all[i];
            qsort(order, n_all, sizeof *order, cmp_sample_key);
            size_t counts[3] = {0};
            for (size_t i = 0; i < n_all; i++) {
                const struct sample *s = order[i];
                FILE *f = outs.split[s->split].fp;
                if (run.task == TASK_UNDERSTANDING)
                    fprintf(f, "%u\t", s->label);
                else
                    fprintf(f, "%s\t", s->target);
                fputs(s->text, f);
                fputc('\n', f);
                if (s->split == SPLIT_TEST) {
                    fputs(s->text, outs.nolabel.fp);
                    fputc('\n', outs.nolabel.fp);
                }
                counts[s->split]++;
                const char *fname = class_files[s->label][s->file_index - class_file_base[s->label]];
                fprintf(outs.index.fp, "%s\t%u\t", split_names[s->split], s->label);
                cli_tsv_put(outs.index.fp, classes.names[s->label]);
                fputc('\t', outs.index.fp);
                cli_tsv_put(outs.index.fp, fname);
                fprintf(outs.index.fp, "\t%" PRIu64 "\t%u\t", s->first_frame, s->packet_index + 1);
                write_origin(outs.index.fp, &s->origin);
                fputc('\n', outs.index.fp);
            }
            for (int c = 0; c < classes.n; c++)
                fprintf(outs.classes.fp, "%s\n", classes.names[c]);
            write_settings(outs.settings.fp, &run, classes.n);
            ok = commit_outputs(cmd, &outs);
            if (ok && !cli_flag(opts, "quiet"))
                fprintf(stderr, "netlm dataset: %d classes, %zu samples: train %zu, valid %zu, test %zu -> %s\n",
                        classes.n, n_all, counts[0], counts[1], counts[2], out_dir);
        }
        free(order);
    }
    abort_outputs(&outs);
    for (int c = 0; c < classes.n; c++)
        cli_free_files(class_files[c], class_nfiles[c]);
    free(class_files);
    free(class_nfiles);
    free(class_file_base);
    free(class_bytes);
    status = ok ? 0 : 1;
done:
    for (size_t i = 0; i < n_all; i++)
        sample_free(&all[i]);
    free(all);
    if (as)
        ft_assembler_destroy(as);
    for (int c = 0; c < classes.n; c++)
        free(classes.names[c]);
    free(classes.names);
    pthread_mutex_destroy(&run.lock);
    free(pos);
    return status;
}
