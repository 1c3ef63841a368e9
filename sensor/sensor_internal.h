/* sensor_internal.h — private to sensor/: the ready queue, the model engine, the sink, the JSON
 * line builder and the run's shared state, which the threads of sensor_run.c, sensor_batcher.c,
 * sensor_sink.c and sensor_events.c all see. */
#ifndef NETLM_SENSOR_INTERNAL_H
#define NETLM_SENSOR_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "capture/capture.h"
#include "flowtable/flowtable.h"
#include "sensor/sensor.h"

int64_t sensor_mono_ns(void);     /* CLOCK_MONOTONIC: latencies and intervals */
int64_t sensor_realtime_ns(void); /* CLOCK_REALTIME: the clock of live packet timestamps */
/* One line on stderr: "netlm <command>: ..." (the threads' only way to report). */
void sensor_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void sensor_set_log_command(const char *command);

/* ---- the ready queue: preallocated slots handed around by index through two lock-free
 * bounded MPMC rings (Vyukov's sequence-number ring), so the flow workers' callbacks, which run
 * concurrently, never allocate and never take a lock on the fast path ---- */

enum sensor_trigger {
    SN_TRIGGER_PACKETS = 0,
    SN_TRIGGER_FIN,
    SN_TRIGGER_RST,
    SN_TRIGGER_TIMEOUT,
    SN_TRIGGER_FORCED,
    SN_TRIGGER_SHUTDOWN,
};
const char *sensor_trigger_name(enum sensor_trigger t);

struct sensor_slot {
    struct ft_session s;          /* s.stored points at pkts below */
    struct ft_stored_packet *pkts; /* max_pkts entries */
    uint8_t *bytes;               /* max_pkts × pkt_bytes */
    int64_t enqueue_ns;           /* monotonic, for ready→verdict latency */
    int64_t event_ts_ns;          /* packet time of the ready packet (or the last one) */
    int32_t file_index;           /* replay: which input file, -1 live */
    uint8_t trigger;              /* enum sensor_trigger */
};

struct sensor_ring_cell {
    _Atomic size_t seq;
    uint32_t value;
};
struct sensor_ring {
    struct sensor_ring_cell *cells;
    size_t mask;
    _Alignas(64) _Atomic size_t head; /* next to pop */
    _Alignas(64) _Atomic size_t tail; /* next to push */
};

struct sensor_queue {
    uint32_t n_slots, max_pkts, pkt_bytes;
    struct sensor_slot *slots;
    uint8_t *bytes;
    struct ft_stored_packet *pkts;
    struct sensor_ring free_ring, ready_ring;
    /* only for sleeping: the fast paths never touch it */
    pthread_mutex_t lock;
    pthread_cond_t items, space;
    _Atomic int consumer_waiting, producers_waiting;
};

bool sensor_queue_init(struct sensor_queue *q, uint32_t n_slots, uint32_t max_pkts,
                       uint32_t pkt_bytes);
void sensor_queue_destroy(struct sensor_queue *q);
/* A free slot, or NULL when none is free (wait = false) or when *give_up turns true while
 * waiting. */
struct sensor_slot *sensor_queue_reserve(struct sensor_queue *q, bool wait, const atomic_bool *give_up);
/* Copies the session view (and its stored packets) into the slot. */
void sensor_slot_fill(struct sensor_queue *q, struct sensor_slot *slot, const struct ft_session *s);
void sensor_queue_push(struct sensor_queue *q, struct sensor_slot *slot);
/* Up to max ready slots, without waiting. */
uint32_t sensor_queue_pop(struct sensor_queue *q, struct sensor_slot **out, uint32_t max);
/* Sleeps until a slot may be ready, deadline (monotonic ns) passes, or sensor_queue_kick. */
void sensor_queue_wait_items(struct sensor_queue *q, int64_t deadline_ns);
void sensor_queue_kick(struct sensor_queue *q);
void sensor_queue_release(struct sensor_queue *q, struct sensor_slot *slot);
size_t sensor_queue_depth(struct sensor_queue *q);

/* ---- the model engine: everything a batch needs, swapped whole on reload ---- */

/* Classification's batch in flight: the batcher submits batch k + 1 before it waits for batch k
 * and writes k's events, so that on the GPU batch k runs while k + 1 is gathered and tokenized
 * (on the CPU a batch is finished right after its submit). Its own per-batch arrays, exchanged
 * with the engine's current ones at each submit. */
struct sensor_flight {
    struct sensor_slot **batch;
    uint32_t *ids, *lengths;
    float *scores;
    uint32_t n; /* sessions in flight, 0 = none */
};

struct sensor_engine {
    struct model *model;
    const struct model_config *mc;
    struct tok_vocab *vocab;
    struct tok_settings tok;
    struct model_runner *runner;  /* the CPU model (model.device cpu) */
    struct model_cuda *gpu;       /* or the CUDA engine (model.device cuda[:N]) */
    enum cfg_task task;           /* CLASSIFY or GENERATE (never AUTO or NONE) */
    uint32_t threads;             /* the model's CPU threads (model.threads, 0 resolved) */
    enum tok_field field;         /* generation target (the seed's: ip_len) */
    uint32_t seq, batch_max, batch_timeout_us, top_k, max_new;
    char name[256];               /* the model directory's last component */
    char *name_json;              /* name as a JSON string, quotes included */
    char **labels_json;           /* each label as a JSON string */
    uint32_t *ids, *lengths, *generated, *generated_len;
    float *scores;
    struct sensor_slot **batch;   /* batch_max slots being worked on */
    struct sensor_flight flight;  /* classification: the batch submitted before this one */
    char *line;                   /* one event line */
    size_t line_cap;
    char *text;                   /* generation: one packet's token text */
    size_t text_cap;
};
/* model.threads = 0 (auto): the cores this process may run on (its affinity mask) less the
 * capture threads — the reader, and flow.workers worker threads when there are two or more —
 * at least 1: model threads that share a core with capture make the latency tail much worse. */
uint32_t sensor_auto_model_threads(const struct cfg_sensor *cfg);
/* Loads model_dir and builds its runner for cfg's batch and task settings. NULL + one line. */
struct sensor_engine *sensor_engine_load(const struct cfg_sensor *cfg, const char *model_dir,
                                         char *err, size_t errlen);
void sensor_engine_free(struct sensor_engine *e);
/* Scores of e->ids / e->lengths [n] into e->scores, on the engine's device; false with a reason
 * in err. */
bool sensor_engine_classify(struct sensor_engine *e, uint32_t n, char *err, size_t errlen);
/* Greedy continuations of the first n rows of e->ids (max_new tokens at most) into e->generated,
 * on the GPU or the CPU, whichever holds the model; false with the reason in err. */
bool sensor_engine_generate(struct sensor_engine *e, uint32_t n, uint32_t max_new, char *err, size_t errlen);

/* ---- JSON lines ---- */

struct sensor_json {
    char *buf;
    size_t len, cap;
    bool overflow; /* the line did not fit: it is dropped, never written cut */
};
void sj_init(struct sensor_json *j, char *buf, size_t cap);
void sj_raw(struct sensor_json *j, const char *s);
void sj_rawn(struct sensor_json *j, const char *s, size_t n);
void sj_printf(struct sensor_json *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sj_str(struct sensor_json *j, const char *s); /* quoted and escaped */
void sj_time(struct sensor_json *j, int64_t ns);   /* "2026-11-26T20:23:13.123456+0000" */
void sj_u64(struct sensor_json *j, uint64_t v);    /* decimal */
/* Escapes s into a new string, quotes included (labels, names, file names: done once). */
char *sj_quote_dup(const char *s);

/* ---- the sink: one writer thread, a double buffer of whole lines ---- */

struct sensor_sink;
/* A live sensor's output (batch false): kind FILE appends to path (O_APPEND; reopened on SIGHUP),
 * UNIX_STREAM connects to path and reconnects with backoff, counting what it could not send. A
 * replay's (batch true) must hold every event: a FILE is written to "TARGET.tmp.PID" and renamed
 * over its target by sensor_sink_close(commit) (model_output_target: a device or pipe is written
 * in place), a UNIX_STREAM must connect now and an event it cannot send fails the run. Starts
 * the writer thread. NULL + one line. */
struct sensor_sink *sensor_sink_open(enum cfg_output_kind kind, const char *path, bool batch,
                                     char *err, size_t errlen);
/* line ends with '\n'. wait: sleep while the buffer is full; otherwise drop and count. */
bool sensor_sink_put(struct sensor_sink *s, const char *line, size_t len, bool wait);
void sensor_sink_count_dropped(struct sensor_sink *s, uint64_t n);
void sensor_sink_reopen(struct sensor_sink *s); /* SIGHUP: at the next write */
/* Writes everything pending, stops the writer; commit renames a replay's file into place,
 * otherwise it is removed. Returns false when a write failed or, in a replay, an event was not
 * delivered (after one line). */
bool sensor_sink_close(struct sensor_sink *s, bool commit);
struct sensor_sink_stats {
    uint64_t written, dropped, depth;
};
void sensor_sink_stats(struct sensor_sink *s, struct sensor_sink_stats *out);

/* ---- the run ---- */

/* Ready→verdict latency histogram, log-linear as HdrHistogram's: latencies below 16 µs have a
 * bucket each; above, every power of two [2^e, 2^(e+1)) is cut into 16 equal sub-buckets, so a
 * bucket is at most 1/16 (6.25 %) of its lower bound wide. Octaves up to 2^40 µs (12 days); a
 * longer latency lands in the last bucket. */
#define SN_LAT_SUB_BITS 4
#define SN_LAT_SUB (1u << SN_LAT_SUB_BITS)
#define SN_LAT_MAX_EXP 40
#define SN_LAT_BUCKETS (SN_LAT_SUB + (SN_LAT_MAX_EXP - SN_LAT_SUB_BITS) * SN_LAT_SUB)
/* The bucket of a latency of us µs, and the largest latency the bucket holds (its upper bound). */
uint32_t sensor_lat_bucket(uint64_t us);
uint64_t sensor_lat_upper(uint32_t bucket);

struct sensor_skipset; /* per flow worker: ids of ready sessions the queue had no room for */

/* One flow table and what feeds it: the replay's files, the live interface, or with
 * capture.readers > 1 one of several readers of it (packet sockets in a fanout group, or receive
 * queues of a DPDK port), each with its thread and its table: the kernel's flow hash or the NIC's
 * symmetric RSS keeps each flow on one reader. The flow table's callbacks get the shard. */
struct sensor_shard {
    struct sensor *sn;
    int index;
    int first_worker;        /* its flow workers' first index into sn->skipsets */
    struct ft_assembler *as;
    struct cap_source *src;  /* live; shard 0's owns a DPDK port and is closed last */
    _Atomic uint64_t packets, bytes;            /* frames it read, their captured lengths */
    _Atomic uint64_t kernel_drops, iface_drops; /* its source's counters */
    pthread_t thread;        /* shards 1.. read on threads of their own */
    bool started;
};

struct sensor {
    const struct sensor_options *opts;
    struct cfg_sensor cfg;
    struct sensor_shard *shards;
    int n_shards;
    int reader_cpus[CFG_MAX_CPUS]; /* capture.cpus in order: reader k runs on reader_cpus[k % n] */
    int n_reader_cpus;       /* 0: readers not pinned */
    struct sensor_queue q;
    struct sensor_sink *sink;
    struct sensor_engine *engine;                 /* the batcher's; NULL with no_model */
    _Atomic(struct sensor_engine *) pending;      /* a reloaded engine waiting to be swapped in */
    char **files;                                 /* replay */
    char **files_json;                            /* each file name as a JSON string */
    struct cap_source **streams;                  /* inputs read once (stdin, a pipe): kept open from
                                                     the check at start until they are read */
    _Atomic int current_file;
    bool replay, flow_events;
    bool no_model;               /* model.task = "none": a flow sensor; no engine, no queue, no
                                    batcher, the flow table stores no packets */
    atomic_bool block_when_full; /* replay without --drop, and during the drain */
    struct sensor_skipset **skipsets;
    int n_workers;

    atomic_bool stop;        /* SIGTERM/SIGINT: stop reading */
    atomic_bool ready_notified; /* READY=1 sent: the manager's STATUS and WATCHDOG come after it */
    atomic_bool input_done;  /* every flow has ended: the batcher drains and leaves */
    atomic_bool failed;      /* a thread hit an error that ends the run (exit 1) */
    int64_t start_mono;
    uint64_t progress_bytes, progress_frames; /* replay: read by the end (reader thread only) */

    /* counters (relaxed atomics: read by the manager); the capture's are the shards' */
    _Atomic uint64_t ready, skipped, classified, failed_batches;
    _Atomic uint64_t batches, batch_items, batch_max_seen;
    _Atomic uint64_t lat_hist[SN_LAT_BUCKETS];
    _Atomic uint64_t lat_max;
};

/* The capture counters summed over the shards (sensor_events.c; relaxed, read while they count) */
struct sensor_capture_totals {
    uint64_t packets, bytes, kernel_drops, iface_drops;
};
void sensor_capture_totals(struct sensor *sn, struct sensor_capture_totals *out);
/* The flow tables' counters summed over the shards (sensor_events.c) */
void sensor_flow_totals(struct sensor *sn, struct ft_stats *out);

/* What `systemctl status` shows (sensor_run.c's STATUS= line): rates over the last interval and,
 * when there were any, the frames and packets lost since start, so that an operator sees them
 * without reading the stats events. */
struct sensor_status {
    bool no_model;
    double packets_per_s, classified_per_s;
    uint64_t skipped;
    size_t queued;
    uint64_t capture_drops;   /* the kernel's or the NIC's (capture.kernel_drops + iface_drops) */
    uint64_t refused_packets; /* flow.refused_packets */
};
void sensor_status_line(char *buf, size_t size, const struct sensor_status *s);

/* ft callbacks (sensor_events.c); user is the struct sensor_shard of the flow table */
void sensor_on_ready(const struct ft_session *s, int worker, void *user);
void sensor_on_end(const struct ft_session *s, int worker, void *user);
struct sensor_skipset *sensor_skipset_new(void);
void sensor_skipset_free(struct sensor_skipset *set);

/* Writes the common part ({"timestamp":...,"proto":...,) of an event. */
void sensor_event_common(struct sensor *sn, struct sensor_json *j, int64_t ts_ns,
                         const struct ft_session *s, const char *event_type, int file_index);
/* One stats event (manager thread, and once at shutdown). interval_s: length of the interval the
 * latency histogram covers. */
void sensor_emit_stats(struct sensor *sn);

/* The batcher thread (sensor_batcher.c). */
void *sensor_batcher_main(void *arg);

#endif
