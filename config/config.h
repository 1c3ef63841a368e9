/* config.h — the sensor's configuration: a libconfig file (config/netlm.conf is the commented
 * reference) read into one struct, every key checked.
 *
 * Every key is optional; an absent key keeps its default. A key the sensor does not know, a value
 * of the wrong type or out of range, or an impossible combination is an error whose one-line
 * message names the file, the line, the key and what was expected, e.g.
 *   netlm.conf:12: flow.max_flows: expected an integer from 16 to 1073741824, got 3
 * One file is the whole configuration (`@include` is refused). model.path = "" in the file stands
 * for the default, the bundled model, whose installed path the shipped file cannot know.
 * config/ knows nothing of the other folders: the sensor maps this struct onto theirs. */
#ifndef NETLM_CONFIG_H
#define NETLM_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CFG_PATH_MAX 4096
#define CFG_SESSION_PACKETS_MAX 1024 /* flow.packets_per_session and session.ready_packets */

enum cfg_output_kind {
    CFG_OUTPUT_FILE = 0,        /* append to output.filename; reopened on SIGHUP (logrotate) */
    CFG_OUTPUT_STDOUT = 1,
    CFG_OUTPUT_UNIX_STREAM = 2, /* connect to the listening unix socket output.socket */
};

enum cfg_task {
    CFG_TASK_AUTO = 0,  /* what the model was trained for (its config.json) */
    CFG_TASK_CLASSIFY = 1,
    CFG_TASK_GENERATE = 2,
    CFG_TASK_NONE = 3,  /* no model: a flow sensor (flow and stats events only) */
};

/* Idle seconds of packet time; 0 = never. */
struct cfg_timeouts {
    double tcp_new, tcp_established, tcp_closed;
    double udp_new, udp_established;
    double other_new, other_established;
};

struct cfg_sensor {
    char path[CFG_PATH_MAX]; /* the file it was read from ("" for defaults), for messages */

    struct {                      /* all [restart] */
        char interface[64];       /* "eth0" */
        uint32_t snaplen;         /* 262144 */
        uint32_t buffer_mb;       /* 64: kernel ring buffer */
        bool promiscuous;         /* true */
        char bpf[1024];           /* "" = everything */
        bool tunnels_inner;       /* tunnels = "outer" (false) | "inner" (true) */
        bool dpdk;                /* source = "libpcap" (false) | "dpdk" (true) */
        uint32_t readers;         /* 1: capture threads, a flow table each (fanout sockets or
                                     DPDK receive queues) */
        char cpus[256];           /* "": readers not pinned; else a CPU list, reader k on its
                                     k-th CPU (cfg_cpu_list) */
        struct {                  /* the DPDK port, with source = "dpdk" (capture.h: cap_dpdk_opts) */
            char port[256];       /* PCI address or virtual device arguments */
            char eal[512];        /* EAL arguments */
            uint32_t rx_descriptors; /* 4096 */
            uint32_t mbufs;       /* 0: 4 × rx_descriptors × readers */
            bool busy_poll;       /* false */
        } dpdk_port;
    } capture;

    struct {                      /* all [restart] */
        uint32_t max_flows;       /* 1048576 */
        uint32_t packets_per_session; /* 32: K packets stored per session (the sensor stores
                                         at most session.ready_packets of them) */
        uint32_t bytes_per_packet;    /* 128: M bytes stored per packet */
        bool port_reuse_merge;    /* port_reuse = "split" (false) | "merge" (true) */
        uint32_t workers;         /* 2: flow worker threads */
        struct cfg_timeouts timeouts;          /* Suricata's shipped values */
        uint32_t emergency_enter_pct;          /* 95 */
        uint32_t emergency_leave_pct;          /* 70; must be < enter */
        struct cfg_timeouts emergency_timeouts; /* Suricata's shipped emergency values: tcp
                                                   5/100/10, udp 10/100, other 10/100 */
    } flow;

    struct {
        uint32_t ready_packets;   /* 8 [restart]: a session is ready after this many packets */
        uint32_t queue_size;      /* 4096 [restart]: ready queue slots; full = skipped */
    } session;

    struct {
        char path[CFG_PATH_MAX];  /* [SIGUSR2] model directory; default: the bundled model as
                                     installed (NETLM_DEFAULT_MODEL, a compile-time path) */
        enum cfg_task task;       /* [SIGUSR2] "auto" | "classify" | "generate" | "none" (no
                                     model; to or from "none" needs a restart) */
        uint32_t threads;         /* [restart] CPU threads of the model; 0 = auto: the cores
                                     the capture threads leave (the sensor resolves it) */
        char device[32];          /* [restart] "cpu" | "cuda" | "cuda:N" */
        bool residual_bf16;       /* [restart] on a GPU: residual = "bf16" (true, the default) |
                                     "fp32" (false): the residual stream's type */
        uint32_t batch_max;       /* [SIGUSR2] 32 */
        uint32_t batch_timeout_us; /* [SIGUSR2] 2000 */
        uint32_t top_k;           /* [SIGUSR2] 3: scores in each classification event */
        uint32_t max_new_tokens;  /* [SIGUSR2] 0 = the model's tgt_seq_length */
    } model;

    struct {
        enum cfg_output_kind kind; /* [restart] type = "file" | "stdout" | "unix_stream" */
        char filename[CFG_PATH_MAX]; /* [restart] "/var/log/netlm/eve.json" */
        char socket[108];         /* [restart] unix socket path (sun_path is 108 bytes) */
        bool flow_events;         /* [restart] true: a `flow` event at each flow's end */
        double stats_interval;    /* [restart] 10 seconds; 0 = only the final `stats` event */
    } output;

    struct {
        char user[64];            /* [restart] "netlm": run as this user once capture is open
                                     (when started as root); "" = stay */
        char group[64];           /* [restart] "" = the user's primary group */
    } service;
};

/* Fills every default. */
void cfg_defaults(struct cfg_sensor *c);
/* Defaults, then the file, then cfg_validate's rules. 0, or -1 with one line in err and out
 * untouched (a SIGUSR2 reload that fails keeps what runs). */
int cfg_load(const char *path, struct cfg_sensor *out, char *err, size_t errlen);
/* cfg_load for a command that writes where its own options say (`netlm replay`): the output
 * section's keys are still read and checked one by one, but not whether together they make an
 * output (type "unix_stream" without a socket is fine). */
int cfg_load_unused_output(const char *path, struct cfg_sensor *out, char *err, size_t errlen);
/* The same from text in memory; name stands for the file in messages. */
int cfg_load_buffer(const char *name, const char *text, struct cfg_sensor *out, char *err,
                    size_t errlen);
/* Checks every field's range and the combinations that involve several keys (e.g. ready_packets
 * ≤ packets_per_session); call again after command-line overrides. The message starts with
 * c->path (when set) and names keys as the file does: "netlm.conf: flow.workers: ...". */
int cfg_validate(const struct cfg_sensor *c, char *err, size_t errlen);
/* The CPUs of a list such as "2-5,8" in its order, ranges expanded, into cpus (at most max);
 * returns how many, or -1 when text is not such a list of CPUs 0..CFG_MAX_CPUS - 1. */
#define CFG_MAX_CPUS 1024 /* CPU_SETSIZE */
int cfg_cpu_list(const char *text, int *cpus, int max);
/* Whether each CPU of capture.cpus is one this process may run on (its affinity mask: systemd's
 * CPUAffinity=, taskset, a cpuset), a question for the running system that cfg_validate does not
 * ask. 0 (also for ""), or -1 with one line in err, starting as cfg_validate's do. */
int cfg_check_cpus_allowed(const struct cfg_sensor *c, char *err, size_t errlen);

const char *cfg_task_name(enum cfg_task t); /* "auto", "classify", "generate", "none" */
const char *cfg_output_kind_name(enum cfg_output_kind k); /* "file", "stdout", "unix_stream" */

#endif
