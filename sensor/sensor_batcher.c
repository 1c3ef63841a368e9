/* sensor_batcher.c — the model side of the sensor: the engine (model, vocabulary, tokenizer
 * settings, runner and buffers, built and swapped as one unit so a reload can never mix two
 * models) and the batcher thread that turns ready sessions into classification or generation
 * events, on the CPU runner or the CUDA engine (model.device).
 *
 * A batch is up to batch_max sessions, or fewer once batch_timeout_us has passed since the first
 * of them was queued. Reload: the manager builds a new engine and posts it; the batcher takes it
 * between batches and frees the old one after its in-flight batch, so no batch ever runs on a
 * model that is being freed.
 *
 * Classification keeps one batch in flight (struct sensor_flight): batch k + 1 is tokenized and
 * submitted (model_cuda_classify_submit) before the batcher waits for batch k and writes its
 * events, so the GPU computes k while the host prepares k + 1. The batch in flight is finished
 * before the batcher would sleep (an empty queue, or a batch still filling up), before an engine
 * swap and at the end, so overlap never costs latency when sessions trickle in. The CPU runner
 * goes through the same steps but finishes each batch right after computing it. Events keep their
 * order within a batch and batches finish in order. */
#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sensor/sensor_internal.h"

/* ---- what `netlm classify` shares ---- */

bool sensor_tok_settings_from_model(const struct model_config *mc, uint32_t seq_length,
                                    struct tok_settings *tok, char *err, size_t errlen)
{
    const struct model_tokenizer *mt = &mc->tokenizer;
    tok_settings_defaults(tok);
    if (!tok_header_mode_parse(mt->header_mode, &tok->header_mode)) {
        snprintf(err, errlen, "model config: tokenizer.header_mode '%s' is not none|seed|full|strict|strip",
                 mt->header_mode);
        return false;
    }
    if (mt->stride != 1 && mt->stride != 2) {
        snprintf(err, errlen, "model config: tokenizer.stride %u is not 1 or 2", mt->stride);
        return false;
    }
    tok->stride = (int)mt->stride;
    tok->tokens_per_packet = mt->tokens_per_packet;
    tok->packets = mt->packets;
    tok->sep_between_packets = mt->sep_between_packets;
    tok->seq_length = seq_length;
    return true;
}

uint32_t sensor_bytes_per_packet(const struct tok_settings *tok)
{
    uint64_t n = (uint64_t)tok->tokens_per_packet * (uint32_t)tok->stride + 1 +
                 (tok->header_mode == TOK_HDR_STRIP ? 256 : 0);
    return n > 4096 ? 4096 : (uint32_t)n;
}

struct tok_vocab *sensor_load_vocab(const char *dir, const struct model_config *mc, char *err, size_t errlen)
{
    if (strcmp(mc->tokenizer.vocab, "builtin") == 0 || mc->tokenizer.vocab[0] == '\0')
        return tok_vocab_builtin();
    char path[CFG_PATH_MAX + 300];
    snprintf(path, sizeof path, "%s/%s", dir, mc->tokenizer.vocab);
    return tok_vocab_load(path, err, errlen);
}

/* ---- the engine ---- */

uint32_t sensor_auto_model_threads(const struct cfg_sensor *cfg)
{
    long cores = 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        cores = CPU_COUNT(&set); /* systemd's CPUAffinity=, taskset, a cpuset */
    if (cores <= 0)
        cores = sysconf(_SC_NPROCESSORS_ONLN);
    long workers = cfg->flow.workers ? (long)cfg->flow.workers : 1;
    long readers = cfg->capture.readers ? (long)cfg->capture.readers : 1; /* a flow table each */
    /* with one worker, the flows run on the reader's thread */
    long capture = readers * (workers > 1 ? workers + 1 : 1);
    long left = cores - capture;
    return left >= 1 ? (uint32_t)left : 1;
}

void sensor_engine_free(struct sensor_engine *e)
{
    if (!e)
        return;
    if (e->labels_json)
        for (uint32_t i = 0; i < e->mc->num_labels; i++)
            free(e->labels_json[i]);
    free(e->labels_json);
    free(e->name_json);
    free(e->ids);
    free(e->lengths);
    free(e->flight.batch);
    free(e->flight.ids);
    free(e->flight.lengths);
    free(e->flight.scores);
    free(e->generated);
    free(e->generated_len);
    free(e->scores);
    free(e->batch);
    free(e->line);
    free(e->text);
    model_runner_free(e->runner);
    model_cuda_free(e->gpu);
    tok_vocab_free(e->vocab);
    model_free(e->model);
    free(e);
}

struct sensor_engine *sensor_engine_load(const struct cfg_sensor *cfg, const char *dir, char *err, size_t errlen)
{
    struct sensor_engine *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int device = -1;
    if (cfg->model.device[0] && !model_device_parse(cfg->model.device, &device)) {
        snprintf(err, errlen, "model.device '%s': expected cpu, cuda or cuda:N", cfg->model.device);
        goto fail;
    }
    e->model = model_load(dir, err, errlen);
    if (!e->model)
        goto fail;
    e->mc = model_get_config(e->model);
    enum cfg_task task = cfg->model.task;
    if (task == CFG_TASK_NONE) {
        snprintf(err, errlen, "model.task is \"none\": no model is loaded");
        goto fail;
    }
    if (task == CFG_TASK_AUTO) {
        if (e->mc->task == MODEL_TASK_CLASSIFY)
            task = CFG_TASK_CLASSIFY;
        else if (e->mc->task == MODEL_TASK_GENERATE)
            task = CFG_TASK_GENERATE;
        else {
            snprintf(err, errlen, "%s: a language model (task %s); the sensor needs a classify or generate model",
                     dir, model_task_name(e->mc->task));
            goto fail;
        }
    }
    e->task = task;
    if (task == CFG_TASK_CLASSIFY && e->mc->num_labels == 0) {
        snprintf(err, errlen, "%s: not a classification model (no labels; task %s)", dir,
                 model_task_name(e->mc->task));
        goto fail;
    }
    e->seq = e->mc->seq_length;
    if (e->seq < 2 || e->seq > e->mc->max_positions) {
        snprintf(err, errlen, "%s: seq_length %u outside 2..%u", dir, e->seq, e->mc->max_positions);
        goto fail;
    }
    if (!sensor_tok_settings_from_model(e->mc, e->seq, &e->tok, err, errlen))
        goto fail;
    e->vocab = sensor_load_vocab(dir, e->mc, err, errlen);
    if (!e->vocab)
        goto fail;
    if (tok_vocab_size(e->vocab) > e->mc->vocab_size) {
        snprintf(err, errlen, "%s: the vocabulary has %u tokens but the model only %u (vocab_size)", dir,
                 tok_vocab_size(e->vocab), e->mc->vocab_size);
        goto fail;
    }
    e->field = TOK_FIELD_IP_LENGTH;
    e->batch_max = cfg->model.batch_max ? cfg->model.batch_max : 1;
    e->batch_timeout_us = cfg->model.batch_timeout_us;
    e->top_k = cfg->model.top_k ? cfg->model.top_k : 1;
    if (task == CFG_TASK_CLASSIFY && e->top_k > e->mc->num_labels)
        e->top_k = e->mc->num_labels;
    if (e->top_k > 100)
        e->top_k = 100;
    e->max_new = cfg->model.max_new_tokens ? cfg->model.max_new_tokens
                                           : (e->mc->tgt_seq_length > 1 ? e->mc->tgt_seq_length - 1 : 1);
    uint32_t threads = cfg->model.threads ? cfg->model.threads : sensor_auto_model_threads(cfg);
    e->threads = threads;
    if (task == CFG_TASK_GENERATE && e->seq + e->max_new > e->mc->max_positions) {
        /* the prompt is one packet: leave room for the generated tokens */
        if (e->mc->max_positions < e->max_new + 2) {
            snprintf(err, errlen, "%s: %u positions cannot hold a prompt and %u new tokens", dir,
                     e->mc->max_positions, e->max_new);
            goto fail;
        }
        e->seq = e->mc->max_positions - e->max_new;
        e->tok.seq_length = e->seq;
    }
    uint32_t kv = task == CFG_TASK_GENERATE ? e->seq + e->max_new : 0;
    if (device >= 0) {
        /* bf16, one CUDA graph per batch bucket (and per decode-step bucket): no allocation after
         * the first batch of a size; generation with a device KV cache of kv positions a row */
        struct model_cuda_options o = {.device = device, .precision = MODEL_PRECISION_BF16,
                                       .max_batch = e->batch_max, .max_seq = e->seq, .graphs = true,
                                       .residual_bf16 = cfg->model.residual_bf16, .kv_tokens = kv};
        char cerr[512];
        e->gpu = model_cuda_create(e->model, &o, cerr, sizeof cerr);
        if (!e->gpu) {
            snprintf(err, errlen, "model.device '%s': %s", cfg->model.device, cerr);
            goto fail;
        }
    } else {
        e->runner = model_runner_create(e->model, e->batch_max, e->seq, kv, threads, err, errlen);
        if (!e->runner)
            goto fail;
    }
    size_t labels = e->mc->num_labels ? e->mc->num_labels : 1;
    e->ids = calloc((size_t)e->batch_max * e->seq, sizeof *e->ids);
    e->lengths = calloc(e->batch_max, sizeof *e->lengths);
    e->scores = calloc((size_t)e->batch_max * labels, sizeof *e->scores);
    e->generated = calloc((size_t)e->batch_max * e->max_new, sizeof *e->generated);
    e->generated_len = calloc(e->batch_max, sizeof *e->generated_len);
    e->batch = calloc(e->batch_max, sizeof *e->batch);
    e->line_cap = 16384 + (size_t)e->seq * 12 + (size_t)e->max_new * 16;
    e->line = malloc(e->line_cap);
    e->text_cap = (size_t)e->tok.tokens_per_packet * 8 + 64;
    e->text = malloc(e->text_cap);
    /* the model's name in events: the directory's last component */
    char name[CFG_PATH_MAX];
    snprintf(name, sizeof name, "%s", dir);
    size_t nl = strlen(name);
    while (nl > 1 && name[nl - 1] == '/')
        name[--nl] = '\0';
    const char *base = strrchr(name, '/');
    snprintf(e->name, sizeof e->name, "%s", base && base[1] ? base + 1 : name);
    e->name_json = sj_quote_dup(e->name);
    e->labels_json = calloc(labels, sizeof *e->labels_json);
    bool ok = e->ids && e->lengths && e->scores && e->generated && e->generated_len && e->batch && e->line &&
              e->text && e->name_json && e->labels_json;
    if (ok && task == CFG_TASK_CLASSIFY) {
        struct sensor_flight *f = &e->flight;
        f->ids = calloc((size_t)e->batch_max * e->seq, sizeof *f->ids);
        f->lengths = calloc(e->batch_max, sizeof *f->lengths);
        f->scores = calloc((size_t)e->batch_max * labels, sizeof *f->scores);
        f->batch = calloc(e->batch_max, sizeof *f->batch);
        ok = f->ids && f->lengths && f->scores && f->batch;
    }
    for (uint32_t i = 0; ok && i < e->mc->num_labels; i++)
        ok = (e->labels_json[i] = sj_quote_dup(e->mc->labels[i])) != NULL;
    if (!ok) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    return e;
fail:
    sensor_engine_free(e);
    return NULL;
}

/* ---- one batch ---- */


static void record_latency(struct sensor *sn, int64_t ns)
{
    uint64_t us = ns > 0 ? (uint64_t)ns / 1000 : 0;
    atomic_fetch_add_explicit(&sn->lat_hist[sensor_lat_bucket(us)], 1, memory_order_relaxed);
    uint64_t cur = atomic_load_explicit(&sn->lat_max, memory_order_relaxed);
    while (us > cur && !atomic_compare_exchange_weak_explicit(&sn->lat_max, &cur, us, memory_order_relaxed,
                                                              memory_order_relaxed)) {
    }
}

static void append_tokens(struct sensor_json *j, const char *key, const uint32_t *ids, uint32_t n)
{
    sj_printf(j, ",\"%s\":[", key);
    for (uint32_t i = 0; i < n; i++)
        sj_printf(j, i ? ",%u" : "%u", ids[i]);
    sj_raw(j, "]");
}

static void emit(struct sensor *sn, struct sensor_json *j)
{
    if (j->overflow) {
        sensor_sink_count_dropped(sn->sink, 1);
        return;
    }
    sensor_sink_put(sn->sink, j->buf, j->len, true); /* the batcher may wait for the writer */
}

bool sensor_engine_classify(struct sensor_engine *e, uint32_t n, char *err, size_t errlen)
{
    if (e->gpu) {
        if (model_cuda_classify(e->gpu, e->ids, e->lengths, n, e->seq, NULL, e->scores))
            return true;
        snprintf(err, errlen, "%s", model_cuda_error(e->gpu));
        return false;
    }
    if (model_classify(e->runner, e->ids, e->lengths, n, e->seq, NULL, e->scores))
        return true;
    snprintf(err, errlen, "token ids outside its vocabulary?");
    return false;
}

bool sensor_engine_generate(struct sensor_engine *e, uint32_t n, uint32_t max_new, char *err, size_t errlen)
{
    const struct model_sampling greedy = {.temperature = 0, .top_k = 0, .top_p = 1, .seed = 7};
    if (e->gpu) {
        if (model_cuda_generate(e->gpu, e->ids, e->lengths, n, e->seq, &greedy, max_new, e->generated,
                                e->generated_len))
            return true;
        snprintf(err, errlen, "%s", model_cuda_error(e->gpu));
        return false;
    }
    if (model_generate(e->runner, e->ids, e->lengths, n, e->seq, &greedy, max_new, e->generated, e->generated_len))
        return true;
    snprintf(err, errlen, "token ids outside its vocabulary?");
    return false;
}

/* A batch's counters, and its slots back to the queue. */
static void batch_done(struct sensor *sn, struct sensor_slot **batch, uint32_t n)
{
    atomic_fetch_add_explicit(&sn->batches, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&sn->batch_items, n, memory_order_relaxed);
    uint64_t m = atomic_load_explicit(&sn->batch_max_seen, memory_order_relaxed);
    if (n > m)
        atomic_store_explicit(&sn->batch_max_seen, n, memory_order_relaxed);
    for (uint32_t b = 0; b < n; b++)
        sensor_queue_release(&sn->q, batch[b]);
}

/* One classification event per session of a finished batch. */
static void emit_classifications(struct sensor *sn, struct sensor_engine *e, const struct sensor_flight *f,
                                 int64_t now)
{
    uint32_t best[100];
    for (uint32_t b = 0; b < f->n; b++) {
        struct sensor_slot *slot = f->batch[b];
        const float *s = f->scores + (size_t)b * e->mc->num_labels;
        uint32_t k = model_top_labels(s, e->mc->num_labels, e->top_k, best);
        int64_t lat = now - slot->enqueue_ns;
        record_latency(sn, lat);
        struct sensor_json j;
        sj_init(&j, e->line, e->line_cap);
        sensor_event_common(sn, &j, slot->event_ts_ns, &slot->s, "classification", slot->file_index);
        sj_raw(&j, ",\"classification\":{\"label\":");
        sj_raw(&j, e->labels_json[best[0]]);
        sj_printf(&j, ",\"label_id\":%u,\"score\":%.6f,\"top_k\":[", best[0], s[best[0]]);
        for (uint32_t i = 0; i < k; i++) {
            sj_raw(&j, i ? ",{\"label\":" : "{\"label\":");
            sj_raw(&j, e->labels_json[best[i]]);
            sj_printf(&j, ",\"label_id\":%u,\"score\":%.6f}", best[i], s[best[i]]);
        }
        uint32_t used = slot->s.n_stored < e->tok.packets ? slot->s.n_stored : e->tok.packets;
        sj_raw(&j, "],\"model\":");
        sj_raw(&j, e->name_json);
        sj_printf(&j, ",\"packets\":%u,\"trigger\":\"%s\",\"latency_us\":%" PRId64, used,
                  sensor_trigger_name((enum sensor_trigger)slot->trigger), lat / 1000);
        if (sn->opts->emit_tokens)
            append_tokens(&j, "tokens", f->ids + (size_t)b * e->seq, f->lengths[b]);
        sj_raw(&j, "}}\n");
        emit(sn, &j);
        atomic_fetch_add_explicit(&sn->classified, 1, memory_order_relaxed);
    }
}

/* Waits for the batch in flight (GPU), writes its events and gives its slots back. */
static void finish_flight(struct sensor *sn, struct sensor_engine *e)
{
    struct sensor_flight *f = &e->flight;
    if (f->n == 0)
        return;
    const bool ok = !e->gpu || model_cuda_classify_wait(e->gpu);
    int64_t now = sensor_mono_ns();
    if (ok) {
        emit_classifications(sn, e, f, now);
    } else {
        atomic_fetch_add(&sn->failed_batches, 1);
        sensor_log("the model failed a batch of %u sessions (%s)", f->n, model_cuda_error(e->gpu));
    }
    batch_done(sn, f->batch, f->n);
    f->n = 0;
}

/* Tokenizes the current batch (e->batch, n sessions) and starts it: submitted to the GPU, or
 * computed by the CPU runner; then finishes the batch submitted before it, and leaves this one in
 * flight (GPU) or finishes it too (CPU). */
static void classify_batch(struct sensor *sn, struct sensor_engine *e, uint32_t n)
{
    for (uint32_t b = 0; b < n; b++)
        e->lengths[b] = tok_session_ids(e->vocab, &e->tok, &e->batch[b]->s, e->ids + (size_t)b * e->seq);
    char why[400] = "";
    bool ok;
    if (e->gpu) {
        ok = model_cuda_classify_submit(e->gpu, e->ids, e->lengths, n, e->seq, NULL, e->scores);
        if (!ok)
            snprintf(why, sizeof why, "%s", model_cuda_error(e->gpu));
    } else {
        ok = sensor_engine_classify(e, n, why, sizeof why);
    }
    finish_flight(sn, e);
    if (!ok) {
        atomic_fetch_add(&sn->failed_batches, 1);
        sensor_log("the model rejected a batch of %u sessions (%s)", n, why);
        batch_done(sn, e->batch, n);
        return;
    }
    /* this batch's arrays become the flight's; the finished flight's are free for the next */
    struct sensor_flight *f = &e->flight;
    struct sensor_slot **batch = f->batch;
    uint32_t *ids = f->ids, *lengths = f->lengths;
    float *scores = f->scores;
    *f = (struct sensor_flight){.batch = e->batch, .ids = e->ids, .lengths = e->lengths, .scores = e->scores, .n = n};
    e->batch = batch, e->ids = ids, e->lengths = lengths, e->scores = scores;
    if (!e->gpu)
        finish_flight(sn, e);
}

/* Generation: the seed's task on the session's first packet — the field zeroed in the input, the
 * model writes its value as tokens. */
static void generate_batch(struct sensor *sn, struct sensor_engine *e, uint32_t n)
{
    uint8_t bytes[4096];
    for (uint32_t b = 0; b < n; b++) {
        struct sensor_slot *slot = e->batch[b];
        uint32_t *ids = e->ids + (size_t)b * e->seq;
        if (slot->s.n_stored == 0) {
            ids[0] = TOK_CLS, ids[1] = TOK_SEP;
            e->lengths[b] = 2;
            continue;
        }
        struct ft_stored_packet masked = slot->pkts[0];
        uint32_t len = masked.stored_len < sizeof bytes ? masked.stored_len : (uint32_t)sizeof bytes;
        memcpy(bytes, masked.bytes, len);
        uint32_t value = 0;
        tok_field_take(e->field, bytes, len, &masked.layers, &value);
        masked.bytes = bytes;
        masked.stored_len = len;
        size_t needed = 0;
        size_t tl = tok_packet_text(&e->tok, &masked, e->text, e->text_cap, &needed);
        e->lengths[b] = tok_text_ids(e->vocab, e->text, tl, e->seq, ids);
    }
    char why[400] = "";
    const bool ok = sensor_engine_generate(e, n, e->max_new, why, sizeof why);
    int64_t now = sensor_mono_ns();
    if (!ok) {
        atomic_fetch_add(&sn->failed_batches, 1);
        sensor_log("the model rejected a batch of %u sessions (%s)", n, why);
        return;
    }
    for (uint32_t b = 0; b < n; b++) {
        struct sensor_slot *slot = e->batch[b];
        int64_t lat = now - slot->enqueue_ns;
        record_latency(sn, lat);
        char text[1024];
        tok_ids_text(e->vocab, e->generated + (size_t)b * e->max_new, e->generated_len[b], text, sizeof text);
        uint64_t value = 0;
        const bool parses = tok_field_target_value(text, &value);
        struct sensor_json j;
        sj_init(&j, e->line, e->line_cap);
        sensor_event_common(sn, &j, slot->event_ts_ns, &slot->s, "generation", slot->file_index);
        sj_printf(&j, ",\"generation\":{\"field\":\"%s\",\"tokens\":", tok_field_name(e->field));
        sj_str(&j, text);
        if (parses)
            sj_printf(&j, ",\"value\":%" PRIu64, value);
        sj_raw(&j, ",\"model\":");
        sj_raw(&j, e->name_json);
        sj_printf(&j, ",\"packets\":%u,\"trigger\":\"%s\",\"latency_us\":%" PRId64, slot->s.n_stored ? 1u : 0u,
                  sensor_trigger_name((enum sensor_trigger)slot->trigger), lat / 1000);
        if (sn->opts->emit_tokens)
            append_tokens(&j, "input_tokens", e->ids + (size_t)b * e->seq, e->lengths[b]);
        sj_raw(&j, "}}\n");
        emit(sn, &j);
        atomic_fetch_add_explicit(&sn->classified, 1, memory_order_relaxed);
    }
}

const char *sensor_trigger_name(enum sensor_trigger t)
{
    static const char *const names[] = {"packets", "fin", "rst", "timeout", "forced", "shutdown"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "packets";
}

void *sensor_batcher_main(void *arg)
{
    struct sensor *sn = arg;
    for (;;) {
        struct sensor_engine *next = atomic_exchange(&sn->pending, NULL);
        if (next) {
            finish_flight(sn, sn->engine);
            sensor_engine_free(sn->engine); /* its last batch is done: nothing else uses it */
            sn->engine = next;
            sensor_log("model %s loaded (task %s, batch_max %u)", next->name, cfg_task_name(next->task),
                       next->batch_max);
        }
        struct sensor_engine *e = sn->engine;
        uint32_t n = sensor_queue_pop(&sn->q, e->batch, e->batch_max);
        if (n == 0) {
            if (e->flight.n) { /* nothing to overlap it with: deliver it now */
                finish_flight(sn, e);
                continue;
            }
            /* input_done is set only after the last flow has ended, so an empty queue then is
             * final; re-check after reading the flag to close the race with the last push */
            if (atomic_load(&sn->input_done)) {
                n = sensor_queue_pop(&sn->q, e->batch, e->batch_max);
                if (n == 0)
                    break;
            } else {
                sensor_queue_wait_items(&sn->q, sensor_mono_ns() + 100000000);
                continue;
            }
        }
        int64_t deadline = e->batch[0]->enqueue_ns + (int64_t)e->batch_timeout_us * 1000;
        while (n < e->batch_max) {
            n += sensor_queue_pop(&sn->q, e->batch + n, e->batch_max - n);
            if (n == e->batch_max || atomic_load(&sn->input_done) || sensor_mono_ns() >= deadline)
                break;
            finish_flight(sn, e); /* never sleep on a finished batch's events */
            sensor_queue_wait_items(&sn->q, deadline);
        }
        if (e->task == CFG_TASK_CLASSIFY) {
            classify_batch(sn, e, n); /* counts and releases its batches itself */
        } else {
            generate_batch(sn, e, n);
            batch_done(sn, e->batch, n);
        }
    }
    finish_flight(sn, sn->engine);
    return NULL;
}
