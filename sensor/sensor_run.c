/* sensor_run.c — the sensor's threads and their order of life: start-up (model, capture, output,
 * privileges, flow table), the reader loop, the manager thread (stats, systemd, signals, reload)
 * and the drain at the end.
 *
 * Threads: the calling thread reads the capture and feeds the flow table (its worker threads
 * call back into sensor_events.c); with capture.readers > 1 a reader thread per further fanout
 * socket or DPDK queue feeds a flow table of its own (struct sensor_shard); the batcher runs the
 * model (none with model.task "none": a flow sensor); the sink's writer owns the output; the
 * manager waits on the signal self-pipe.
 * Drain on SIGTERM/SIGINT or end of input: the reader stops, ft_assembler_finish_input ends
 * every open flow (reason shutdown; unready payload sessions are queued, waiting for room now
 * that no wire is being read), the batcher empties the queue and leaves, the final stats event
 * is written, and the sink flushes and closes. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <poll.h>
#include <pwd.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "sensor/sensor_internal.h"

static const char *log_command = "sensor";

void sensor_set_log_command(const char *command)
{
    log_command = command;
}

void sensor_log(const char *fmt, ...)
{
    char line[1024];
    int n = snprintf(line, sizeof line, "netlm %s: ", log_command);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", line); /* one call: lines from several threads do not interleave */
}

int64_t sensor_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t sensor_realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- start-up pieces ---- */

static const char *model_dir(const struct sensor_options *o, const struct cfg_sensor *cfg)
{
    if (o->model_override && o->model_override[0])
        return o->model_override;
    return cfg->model.path[0] ? cfg->model.path : NETLM_DEFAULT_MODEL;
}

/* e = NULL: no model (model.task "none"), the table keeps counters only. */
static void flow_config(const struct cfg_sensor *c, const struct sensor_engine *e, struct ft_config *f)
{
    ft_config_defaults(f);
    f->max_flows = c->flow.max_flows;
    if (e) {
        /* Store only what is used: a session is handed over at its ready_packets-th packet (or
         * earlier) and the table stores nothing after, so more slots would never be filled and
         * would only make every flow record bigger (32 slots: ~6 KB a flow, 8: ~1.7 KB). */
        f->ready_packets = c->session.ready_packets;
        f->packets_per_session = c->flow.packets_per_session < c->session.ready_packets
                                     ? c->flow.packets_per_session
                                     : c->session.ready_packets;
        /* never keep fewer bytes than the model's tokenizer reads of a packet: `netlm classify`
         * keeps exactly this many, and the two must tokenize alike */
        uint32_t need = sensor_bytes_per_packet(&e->tok);
        f->bytes_per_packet = c->flow.bytes_per_packet > need ? c->flow.bytes_per_packet : need;
    } else {
        f->ready_packets = 0;       /* no ready callback */
        f->packets_per_session = 0; /* counters only */
        f->bytes_per_packet = c->flow.bytes_per_packet;
    }
    f->port_reuse = c->flow.port_reuse_merge ? FT_PORT_REUSE_MERGE : FT_PORT_REUSE_SPLIT;
    f->decode.innermost = c->capture.tunnels_inner;
    f->workers = c->flow.workers ? (int)c->flow.workers : 1;
    const struct cfg_timeouts *t = &c->flow.timeouts, *et = &c->flow.emergency_timeouts;
    f->timeouts = (struct ft_timeouts){t->tcp_new, t->tcp_established, t->tcp_closed, t->udp_new,
                                       t->udp_established, t->other_new, t->other_established};
    f->emergency_enter_pct = c->flow.emergency_enter_pct;
    f->emergency_leave_pct = c->flow.emergency_leave_pct;
    f->emergency_timeouts = (struct ft_timeouts){et->tcp_new, et->tcp_established, et->tcp_closed, et->udp_new,
                                                 et->udp_established, et->other_new, et->other_established};
}

/* The events file given to the user the sensor is about to become, as Suricata does with its
 * logs: created (or left by a previous run) as root, it could not be opened again by SIGHUP's
 * reopen, nor truncated in place by logrotate's copytruncate. Only a regular file with one name
 * is touched: the name is not followed if it is a symbolic link, so a link planted where the
 * output goes cannot make root give away another file. A failure only costs later reopens, so it
 * is one warning line and the start goes on. */
static void give_output_file(const char *path, const char *user, uid_t uid, gid_t gid)
{
    /* O_PATH: a device under that name is not opened (a tape would rewind) */
    int fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    const char *problem = NULL;
    if (fd < 0 || fstat(fd, &st) != 0)
        problem = strerror(errno);
    else if (S_ISLNK(st.st_mode))
        problem = "it is a symbolic link";
    else if (!S_ISREG(st.st_mode))
        problem = NULL; /* /dev/null, a FIFO: not ours to give away, and nothing to reopen */
    else if (st.st_nlink > 1)
        problem = "it has other names (hard links)";
    else if ((st.st_uid != uid || st.st_gid != gid) && fchownat(fd, "", uid, gid, AT_EMPTY_PATH) != 0)
        problem = strerror(errno);
    if (problem)
        sensor_log("warning: output.filename %s: cannot give it to user '%s' (%s); a SIGHUP reopen as '%s' may fail",
                   path, user, problem, user);
    if (fd >= 0)
        close(fd);
}

/* Started as root with service.user set: become that user (after the capture and the output are
 * open, before any packet is processed), giving it the events file (output_file, or NULL for
 * other outputs). Anyone else stays who they are. */
static bool drop_privileges(const struct cfg_sensor *c, const char *output_file, char *err, size_t errlen)
{
    if (geteuid() != 0 || !c->service.user[0])
        return true;
    struct passwd pwbuf, *pw = NULL;
    char buf[4096];
    if (getpwnam_r(c->service.user, &pwbuf, buf, sizeof buf, &pw) != 0 || !pw) {
        snprintf(err, errlen, "service.user '%s': no such user", c->service.user);
        return false;
    }
    uid_t uid = pw->pw_uid;
    gid_t gid = pw->pw_gid;
    if (c->service.group[0]) {
        struct group grbuf, *gr = NULL;
        char gbuf[4096];
        if (getgrnam_r(c->service.group, &grbuf, gbuf, sizeof gbuf, &gr) != 0 || !gr) {
            snprintf(err, errlen, "service.group '%s': no such group", c->service.group);
            return false;
        }
        gid = gr->gr_gid;
    }
    if (output_file)
        give_output_file(output_file, c->service.user, uid, gid);
    if (initgroups(c->service.user, gid) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
        snprintf(err, errlen, "cannot become user '%s': %s", c->service.user, strerror(errno));
        return false;
    }
    /* glibc applies setuid to every thread; check it took, and that it cannot be undone */
    if (getuid() != uid || geteuid() != uid || getgid() != gid || getegid() != gid ||
        (uid != 0 && setuid(0) == 0)) {
        snprintf(err, errlen, "dropping privileges to '%s' did not take", c->service.user);
        return false;
    }
    return true;
}

/* ---- systemd notification that never blocks ----
 * libsystemd's sd_notify sends with a blocking sendmsg: when the notify socket's reader is slow
 * or gone, the kernel's queue of 10 datagrams (net.unix.max_dgram_qlen) fills and the call hangs,
 * and with it the manager thread, which is also the one that handles SIGTERM. So the datagram is
 * sent here, on a fresh non-blocking socket per message (as sd_notify opens a fresh one, so that
 * a restarted systemd is found), and a message that finds the queue full is dropped: STATUS= and
 * WATCHDOG=1 come again, and nothing may stop a drain. READY=1 at start waits up to 1 s for room.
 * NOTIFY_SOCKET addresses other than a unix path or an abstract name (@...), such as vsock:, are
 * left to sd_notify. */

static char notify_path[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];

static void notify_init(void)
{
    const char *p = getenv("NOTIFY_SOCKET");
    notify_path[0] = '\0';
    if (p && strlen(p) < sizeof notify_path)
        snprintf(notify_path, sizeof notify_path, "%s", p);
}

static void notify(const char *text, int wait_ms)
{
    if (!notify_path[0])
        return;
    if (notify_path[0] != '/' && notify_path[0] != '@') {
        sd_notify(0, text);
        return;
    }
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t n = strlen(notify_path);
    if (n >= sizeof a.sun_path)
        return;
    memcpy(a.sun_path, notify_path, n);
    if (a.sun_path[0] == '@')
        a.sun_path[0] = '\0'; /* abstract namespace */
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (a.sun_path[0] ? 1 : 0));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return;
    /* connected, so that poll() reports room in the reader's queue */
    if (connect(fd, (struct sockaddr *)&a, alen) == 0) {
        size_t len = strlen(text);
        for (;;) {
            if (send(fd, text, len, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0)
                break;
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN || wait_ms <= 0)
                break; /* dropped */
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            if (poll(&p, 1, wait_ms) <= 0)
                break;
            wait_ms = 0;
        }
    }
    close(fd);
}

/* ---- the manager thread ---- */

struct manager {
    struct sensor *sn;
    int sigfd, stopfd;
};

/* Signals arrive through a self-pipe: the handler only writes the signal number. (A signalfd
 * would need the signals blocked in every thread, and libraries start threads of their own —
 * OpenBLAS at load time — where they are not.) */
static int signal_pipe[2] = {-1, -1};

static void on_signal(int signo)
{
    int saved = errno;
    unsigned char b = (unsigned char)signo;
    if (write(signal_pipe[1], &b, 1) < 0) {
        /* the pipe is full: signals are already pending, nothing is lost that matters */
    }
    errno = saved;
}

static void reload(struct sensor *sn)
{
    char err[CFG_PATH_MAX + 1024];
    if (sn->no_model) {
        sensor_log("reload: model.task is \"none\" (no model); a restart applies a model");
        return;
    }
    struct cfg_sensor *nc = malloc(sizeof *nc);
    if (!nc) {
        sensor_log("reload: out of memory (keeping the running model)");
        return;
    }
    *nc = sn->cfg;
    if (sn->opts->config_path) {
        struct cfg_sensor *fresh = malloc(sizeof *fresh);
        /* replay writes where its command line says, whatever the file's output section */
        const int loaded = !fresh ? -1
                           : sn->replay ? cfg_load_unused_output(sn->opts->config_path, fresh, err, sizeof err)
                                        : cfg_load(sn->opts->config_path, fresh, err, sizeof err);
        if (loaded == 0 && sn->replay)
            fresh->output = nc->output;
        if (loaded != 0 || cfg_validate(fresh, err, sizeof err) != 0) {
            sensor_log("reload: %s (keeping the running model)", fresh ? err : "out of memory");
            free(fresh);
            free(nc);
            return;
        }
        if (fresh->model.task == CFG_TASK_NONE) {
            sensor_log("reload: model.task \"none\" needs a restart (keeping the running model)");
            free(fresh);
            free(nc);
            return;
        }
        /* only the [SIGUSR2] keys change; the rest waits for a restart */
        memcpy(nc->model.path, fresh->model.path, sizeof nc->model.path);
        nc->model.task = fresh->model.task;
        nc->model.batch_max = fresh->model.batch_max;
        nc->model.batch_timeout_us = fresh->model.batch_timeout_us;
        nc->model.top_k = fresh->model.top_k;
        nc->model.max_new_tokens = fresh->model.max_new_tokens;
        free(fresh);
    }
    const char *dir = model_dir(sn->opts, nc);
    struct sensor_engine *e = sensor_engine_load(nc, dir, err, sizeof err);
    if (e && sensor_bytes_per_packet(&e->tok) > sn->q.pkt_bytes) {
        snprintf(err, sizeof err, "%s: its tokenizer reads %u bytes of a packet, the flow table keeps %u (restart to apply)",
                 dir, sensor_bytes_per_packet(&e->tok), sn->q.pkt_bytes);
        sensor_engine_free(e);
        e = NULL;
    }
    if (e) {
        /* usable: one tiny batch through it, here, not in the batcher */
        e->ids[0] = TOK_CLS, e->ids[1] = TOK_SEP;
        e->lengths[0] = 2;
        char why[400] = "";
        bool ok = e->task == CFG_TASK_CLASSIFY ? sensor_engine_classify(e, 1, why, sizeof why)
                                               : sensor_engine_generate(e, 1, 1, why, sizeof why);
        if (!ok) {
            snprintf(err, sizeof err, "%s: the model failed a test batch%s%s", dir, why[0] ? ": " : "", why);
            sensor_engine_free(e);
            e = NULL;
        }
    }
    if (!e) {
        sensor_log("reload: %s (keeping the running model)", err);
        free(nc);
        return;
    }
    sn->cfg.model = nc->model; /* the manager's copy; nothing else reads these keys */
    free(nc);
    sensor_engine_free(atomic_exchange(&sn->pending, e)); /* an earlier reload never taken */
    sensor_queue_kick(&sn->q);
}

void sensor_status_line(char *buf, size_t size, const struct sensor_status *s)
{
    int n;
    if (s->no_model)
        n = snprintf(buf, size, "STATUS=%.0f packets/s (no model: flow events only)", s->packets_per_s);
    else
        n = snprintf(buf, size, "STATUS=%.0f packets/s, %.1f sessions/s classified, %" PRIu64 " skipped, %zu queued",
                     s->packets_per_s, s->classified_per_s, s->skipped, s->queued);
    if (n < 0 || (size_t)n >= size || (s->capture_drops == 0 && s->refused_packets == 0))
        return;
    const char *sep = "; lost since start:";
    if (s->capture_drops)
        n += snprintf(buf + n, size - (size_t)n, "%s %" PRIu64 " frames dropped by the capture", sep, s->capture_drops);
    if (s->refused_packets && (size_t)n < size)
        snprintf(buf + n, size - (size_t)n, "%s %" PRIu64 " packets of new flows refused (no free flow record)",
                 s->capture_drops ? "," : sep, s->refused_packets);
}

static void *manager_main(void *arg)
{
    struct manager *m = arg;
    struct sensor *sn = m->sn;
    int64_t now = sensor_mono_ns();
    double interval = sn->cfg.output.stats_interval;
    int64_t stats_every = interval > 0 ? (int64_t)(interval * 1e9) : 0;
    /* STATUS= at most every 10 s: it is for `systemctl status`, not a metrics feed */
    int64_t status_every = stats_every > 10000000000LL ? stats_every : 10000000000LL;
    uint64_t wd_usec = 0;
    int64_t wd_every = sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec ? (int64_t)wd_usec * 500 : 0;
    int64_t next_stats = stats_every ? now + stats_every : INT64_MAX;
    int64_t next_status = now + status_every;
    int64_t next_wd = wd_every ? now : INT64_MAX;
    uint64_t last_pkts = 0, last_done = 0;
    int64_t last_status = now;
    for (;;) {
        now = sensor_mono_ns();
        int64_t next = next_stats < next_status ? next_stats : next_status;
        if (next_wd < next)
            next = next_wd;
        int timeout = next <= now ? 0 : (int)((next - now) / 1000000 + 1);
        if (timeout < 10 && !atomic_load(&sn->ready_notified))
            timeout = 10; /* a ping due before READY=1 waits for it without spinning */
        struct pollfd fds[2] = {{.fd = m->sigfd, .events = POLLIN}, {.fd = m->stopfd, .events = POLLIN}};
        int r = poll(fds, 2, timeout);
        if (r < 0 && errno != EINTR)
            break;
        if (r > 0 && (fds[1].revents & POLLIN))
            break;
        if (r > 0 && (fds[0].revents & POLLIN)) {
            unsigned char signo;
            if (read(m->sigfd, &signo, 1) == 1) {
                switch (signo) {
                case SIGTERM:
                case SIGINT:
                    if (!atomic_exchange(&sn->stop, true)) {
                        sensor_log("%s: draining (finishing flows, classifying ready sessions, flushing events)",
                                   signo == SIGTERM ? "SIGTERM" : "SIGINT");
                        notify("STOPPING=1", 0);
                    }
                    break;
                case SIGHUP:
                    sensor_sink_reopen(sn->sink);
                    break;
                case SIGUSR1: /* its default action would kill the process, and with it every pending event */
                    if (sn->replay)
                        sensor_log("SIGUSR1: ignored (SIGTERM or SIGINT stops reading and drains, SIGUSR2 reloads the model)");
                    else
                        sensor_log("SIGUSR1: ignored (SIGHUP reopens the output file, SIGUSR2 reloads the model and the "
                                   "[SIGUSR2] keys)");
                    break;
                case SIGUSR2:
                    notify("RELOADING=1", 0);
                    reload(sn);
                    notify("READY=1", 0);
                    break;
                default:
                    break;
                }
            }
        }
        now = sensor_mono_ns();
        if (now >= next_stats) {
            sensor_emit_stats(sn);
            next_stats += stats_every;
            if (next_stats < now)
                next_stats = now + stats_every;
        }
        /* nothing before READY=1: the service manager should see READY first */
        const bool ready = atomic_load(&sn->ready_notified);
        if (ready && now >= next_status) {
            struct sensor_capture_totals cap;
            sensor_capture_totals(sn, &cap);
            struct ft_stats fs;
            sensor_flow_totals(sn, &fs);
            uint64_t pkts = cap.packets, done = atomic_load(&sn->classified);
            double dt = (double)(now - last_status) / 1e9;
            const struct sensor_status st = {
                .no_model = sn->no_model,
                .packets_per_s = dt > 0 ? (double)(pkts - last_pkts) / dt : 0,
                .classified_per_s = dt > 0 ? (double)(done - last_done) / dt : 0,
                .skipped = atomic_load(&sn->skipped),
                .queued = sensor_queue_depth(&sn->q),
                .capture_drops = cap.kernel_drops + cap.iface_drops,
                .refused_packets = fs.refused_packets,
            };
            char status[320];
            sensor_status_line(status, sizeof status, &st);
            notify(status, 0);
            last_pkts = pkts, last_done = done, last_status = now;
            next_status = now + status_every;
        }
        if (ready && now >= next_wd) {
            notify("WATCHDOG=1", 0);
            next_wd = now + wd_every;
        }
    }
    return NULL;
}

/* ---- the reader ---- */

enum { BURST = 64 };

static void count_frames(struct sensor_shard *shard, const struct cap_frame *fr, int n, uint64_t *bytes_out)
{
    uint64_t bytes = 0;
    for (int i = 0; i < n; i++)
        bytes += fr[i].caplen;
    atomic_fetch_add_explicit(&shard->packets, (uint64_t)n, memory_order_relaxed);
    atomic_fetch_add_explicit(&shard->bytes, bytes, memory_order_relaxed);
    if (bytes_out)
        *bytes_out += bytes + 16u * (uint64_t)n; /* record headers count toward the file size */
}

/* The reader's place (capture.cpus) and, for the readers on threads of their own, its name (top
 * -H, /proc); the calling thread keeps the process's name. False with the reason logged. */
static bool place_reader(struct sensor_shard *shard)
{
    struct sensor *sn = shard->sn;
    if (shard->index > 0) {
        char name[16]; /* the kernel's limit; readers are at most 64 */
        snprintf(name, sizeof name, "netlm-reader%u", (unsigned)shard->index % 100u);
        pthread_setname_np(pthread_self(), name);
    }
    if (sn->n_reader_cpus == 0)
        return true;
    const int cpu = sn->reader_cpus[shard->index % sn->n_reader_cpus];
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    const int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    if (rc != 0) {
        sensor_log("capture.cpus: cannot run reader %d on CPU %d (%s)", shard->index, cpu, strerror(rc));
        return false;
    }
    return true;
}

static void read_live(struct sensor_shard *shard)
{
    struct sensor *sn = shard->sn;
    struct cap_source *src = shard->src;
    struct cap_frame frames[BURST];
    int64_t next_stats = 0;
    if (!place_reader(shard)) {
        atomic_store(&sn->failed, true);
        atomic_store(&sn->stop, true);
    }
    while (!atomic_load_explicit(&sn->stop, memory_order_relaxed)) {
        int n = cap_next_burst(src, frames, BURST);
        if (n > 0) {
            count_frames(shard, frames, n, NULL);
            ft_assembler_feed(shard->as, frames, n);
        } else if (n == 0) {
            ft_assembler_tick(shard->as, sensor_realtime_ns()); /* idle flows still time out */
        } else {
            if (n == CAP_BURST_ERROR) {
                sensor_log("%s", cap_source_error(src)); /* which names the source */
                atomic_store(&sn->failed, true);
            }
            break;
        }
        int64_t now = sensor_mono_ns();
        if (now >= next_stats) { /* the kernel's (or the port's) counters: the source is this thread's */
            struct cap_source_stats st;
            cap_source_stats(src, &st);
            atomic_store_explicit(&shard->kernel_drops, st.kernel_dropped, memory_order_relaxed);
            atomic_store_explicit(&shard->iface_drops, st.iface_dropped, memory_order_relaxed);
            next_stats = now + 500000000;
        }
    }
    /* every reader stops together: the wire is no longer read, so waiting for room is fine */
    atomic_store(&sn->stop, true);
    atomic_store(&sn->block_when_full, true);
    ft_assembler_finish_input(shard->as);
}

static void *read_live_main(void *arg)
{
    read_live(arg);
    return NULL;
}

/* A capture file with capture.bpf applied, compiled for the file's own link type (a live
 * interface gets it at open); NULL with one line in err. */
static struct cap_source *open_replay_file(const struct sensor *sn, const char *path, char *err, size_t errlen)
{
    struct cap_source *src = cap_open_file(path, err, errlen);
    if (src && !cap_source_set_filter(src, sn->cfg.capture.bpf, err, errlen)) {
        cap_close(src);
        return NULL;
    }
    return src;
}

static void read_files(struct sensor *sn)
{
    const struct sensor_options *o = sn->opts;
    struct cap_frame frames[BURST];
    uint64_t done_bytes = 0, frames_seen = 0;
    for (int f = 0; f < o->n_files && !atomic_load(&sn->stop); f++) {
        char err[1024];
        struct cap_source *src = sn->streams && sn->streams[f] ? sn->streams[f] : open_replay_file(sn, o->files[f], err, sizeof err);
        if (sn->streams)
            sn->streams[f] = NULL;
        if (!src) {
            sensor_log("%s", err);
            atomic_store(&sn->failed, true);
            break;
        }
        atomic_store(&sn->current_file, f);
        while (!atomic_load_explicit(&sn->stop, memory_order_relaxed)) {
            int n = cap_next_burst(src, frames, BURST);
            if (n == CAP_BURST_END)
                break;
            if (n == CAP_BURST_ERROR) {
                sensor_log("warning: %s", cap_source_error(src)); /* the readable part counts */
                break;
            }
            count_frames(&sn->shards[0], frames, n, &done_bytes);
            ft_assembler_feed(sn->shards[0].as, frames, n);
            frames_seen += (uint64_t)n;
            if (o->progress && (frames_seen & 0x3fff) < (uint64_t)n)
                o->progress(o->progress_user, done_bytes, frames_seen, false);
        }
        if (atomic_load(&sn->stop))
            atomic_store(&sn->block_when_full, true); /* drain: every ready session is classified */
        ft_assembler_finish_input(sn->shards[0].as); /* sessions never span files */
        cap_close(src);
    }
    sn->progress_bytes = done_bytes; /* the final progress line comes after the drain */
    sn->progress_frames = frames_seen;
}

/* ---- the run ---- */

static void release(struct sensor *sn)
{
    /* the other readers' sources before the first (which closes a DPDK port) */
    for (int i = sn->n_shards - 1; i >= 0; i--) {
        ft_assembler_destroy(sn->shards[i].as);
        if (sn->shards[i].src)
            cap_close(sn->shards[i].src);
    }
    free(sn->shards);
    for (int w = 0; sn->skipsets && w < sn->n_workers; w++)
        sensor_skipset_free(sn->skipsets[w]);
    free(sn->skipsets);
    for (int f = 0; sn->files_json && f < sn->opts->n_files; f++)
        free(sn->files_json[f]);
    free(sn->files_json);
    for (int f = 0; sn->streams && f < sn->opts->n_files; f++)
        if (sn->streams[f])
            cap_close(sn->streams[f]);
    free(sn->streams);
    sensor_engine_free(atomic_exchange(&sn->pending, NULL));
    sensor_engine_free(sn->engine);
    sensor_queue_destroy(&sn->q);
    free(sn);
}

int sensor_run(const struct sensor_options *o)
{
    sensor_set_log_command(o->command);
    /* from here on a signal only writes to the pipe; the manager acts on it */
    if (signal_pipe[0] < 0 && pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        sensor_log("pipe: %s", strerror(errno));
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    const int handled[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof handled / sizeof handled[0]; i++)
        sigaction(handled[i], &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct sensor *sn = calloc(1, sizeof *sn);
    if (!sn) {
        sensor_log("out of memory");
        return 1;
    }
    sn->opts = o;
    sn->cfg = o->cfg;
    sn->replay = o->replay;
    if (o->replay) /* one reader reads the files, whatever the live setting (model.threads = 0 counts it) */
        sn->cfg.capture.readers = 1;
    sn->flow_events = o->cfg.output.flow_events;
    sn->no_model = o->cfg.model.task == CFG_TASK_NONE;
    notify_init();
    atomic_init(&sn->block_when_full, o->replay && !o->drop);
    sn->start_mono = sensor_mono_ns();
    char err[1024];
    int status = 1;
    struct cap_source *live = NULL;
    int sigfd = -1, stopfd = -1;

    /* the readers' CPUs: each one this process may run on (systemd's CPUAffinity=, taskset) */
    if (!o->replay && sn->cfg.capture.cpus[0]) {
        if (cfg_check_cpus_allowed(&sn->cfg, err, sizeof err) != 0) { /* as `netlm sensor` checked before */
            sensor_log("%s", err);
            release(sn);
            return 1;
        }
        sn->n_reader_cpus = cfg_cpu_list(sn->cfg.capture.cpus, sn->reader_cpus, CFG_MAX_CPUS);
    }

    /* 1. the input */
    if (o->replay) {
        sn->files_json = calloc((size_t)o->n_files, sizeof *sn->files_json);
        sn->streams = calloc((size_t)o->n_files, sizeof *sn->streams);
        for (int f = 0; f < o->n_files; f++) {
            struct cap_source *src = open_replay_file(sn, o->files[f], err, sizeof err);
            if (!src) {
                sensor_log("%s", err);
                release(sn);
                return 1;
            }
            /* every input is opened here so that a bad one stops the run before any event; a
             * file is opened again when its turn comes (a folder may hold more files than a
             * process may keep open), a stream cannot be: it stays open until then */
            struct stat st;
            const bool is_file = strcmp(o->files[f], "-") != 0 && stat(o->files[f], &st) == 0 && S_ISREG(st.st_mode);
            if (!is_file && sn->streams)
                sn->streams[f] = src;
            else
                cap_close(src);
            if (!sn->files_json || !sn->streams || !(sn->files_json[f] = sj_quote_dup(o->files[f]))) {
                sensor_log("out of memory");
                release(sn);
                return 1;
            }
        }
    } else if (sn->cfg.capture.dpdk) {
        const struct cap_dpdk_opts dopts = {
            .port = sn->cfg.capture.dpdk_port.port,
            .eal_args = sn->cfg.capture.dpdk_port.eal,
            .snaplen = (int)sn->cfg.capture.snaplen,
            .bpf = sn->cfg.capture.bpf[0] ? sn->cfg.capture.bpf : NULL,
            .promisc = sn->cfg.capture.promiscuous,
            .rx_descriptors = sn->cfg.capture.dpdk_port.rx_descriptors,
            .mbufs = sn->cfg.capture.dpdk_port.mbufs,
            .busy_poll = sn->cfg.capture.dpdk_port.busy_poll,
            .queues = sn->cfg.capture.readers,
        };
        live = cap_open_dpdk(&dopts, err, sizeof err);
        if (!live) {
            sensor_log("%s", err);
            release(sn);
            return 1;
        }
    } else {
        struct cap_live_opts lo = {
            .iface = sn->cfg.capture.interface,
            .snaplen = (int)sn->cfg.capture.snaplen,
            .buffer_mb = (int)sn->cfg.capture.buffer_mb,
            .bpf = sn->cfg.capture.bpf[0] ? sn->cfg.capture.bpf : NULL,
            .promisc = sn->cfg.capture.promiscuous,
            .readers = sn->cfg.capture.readers,
        };
        live = cap_open_live(&lo, err, sizeof err);
        if (!live) {
            sensor_log("%s", err);
            release(sn);
            return 1;
        }
    }

    /* the flow tables' shards: one, or one per reader of the live input */
    sn->n_shards = live ? (int)cap_source_readers(live) : 1;
    sn->shards = calloc((size_t)sn->n_shards, sizeof *sn->shards);
    if (!sn->shards) {
        sensor_log("out of memory");
        if (live)
            cap_close(live);
        release(sn);
        return 1;
    }
    for (int i = 0; i < sn->n_shards; i++) {
        sn->shards[i].sn = sn;
        sn->shards[i].index = i;
    }
    sn->shards[0].src = live; /* closed by release() from here on */
    for (int i = 1; i < sn->n_shards; i++)
        if (!(sn->shards[i].src = cap_open_reader(live, (uint32_t)i, err, sizeof err))) {
            sensor_log("%s", err);
            release(sn);
            return 1;
        }

    /* 2. the model (after the input, so a wrong interface or file is named first); none for a
     * flow sensor */
    const char *dir = model_dir(o, &sn->cfg);
    struct stat st;
    struct ft_config fcfg;
    if (sn->cfg.model.threads == 0) /* auto; a reload keeps what it resolved to */
        sn->cfg.model.threads = sensor_auto_model_threads(&sn->cfg);
    if (sn->no_model) {
        flow_config(&sn->cfg, NULL, &fcfg);
    } else if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        /* the default is where `cmake --install` puts the bundled model; a build tree has none */
        if (strcmp(dir, NETLM_DEFAULT_MODEL) == 0)
            sensor_log("model %s not found (the bundled model is installed there by 'cmake --install'); "
                       "pass -m DIR or set model.path", dir);
        else
            sensor_log("model %s: %s", dir, errno == ENOENT ? "no such directory" : "not a directory");
        goto out;
    } else {
        sn->engine = sensor_engine_load(&sn->cfg, dir, err, sizeof err);
        if (!sn->engine) {
            sensor_log("%s", err);
            goto out;
        }
        flow_config(&sn->cfg, sn->engine, &fcfg);
    }

    /* 3. the output */
    if (o->output_path)
        sn->sink = sensor_sink_open(CFG_OUTPUT_FILE, o->output_path, true, err, sizeof err);
    else
        sn->sink = sensor_sink_open(sn->cfg.output.kind,
                                    sn->cfg.output.kind == CFG_OUTPUT_UNIX_STREAM ? sn->cfg.output.socket
                                                                                  : sn->cfg.output.filename,
                                    o->replay, err, sizeof err);
    if (!sn->sink) {
        sensor_log("%s", err);
        goto out;
    }

    /* 4. privileges: capture and output are open, no packet has been read */
    if (!o->replay && !drop_privileges(&sn->cfg, sn->cfg.output.kind == CFG_OUTPUT_FILE ? sn->cfg.output.filename : NULL,
                                       err, sizeof err)) {
        sensor_log("%s", err);
        goto out;
    }

    /* 5. queue and flow table */
    if (!sn->no_model &&
        !sensor_queue_init(&sn->q, sn->cfg.session.queue_size ? sn->cfg.session.queue_size : 1,
                           fcfg.packets_per_session, fcfg.bytes_per_packet)) {
        sensor_log("out of memory for %u ready-queue slots", sn->cfg.session.queue_size);
        goto out;
    }
    sn->n_workers = fcfg.workers * sn->n_shards;
    sn->skipsets = calloc((size_t)sn->n_workers, sizeof *sn->skipsets);
    for (int w = 0; sn->skipsets && w < sn->n_workers; w++)
        if (!(sn->skipsets[w] = sensor_skipset_new()))
            break;
    if (!sn->skipsets || !sn->skipsets[sn->n_workers - 1]) {
        sensor_log("out of memory");
        goto out;
    }
    for (int i = 0; i < sn->n_shards; i++) {
        struct sensor_shard *shard = &sn->shards[i];
        struct ft_config shard_cfg = fcfg; /* each reader's table holds its share of the flows */
        shard_cfg.max_flows = fcfg.max_flows / (uint32_t)sn->n_shards;
        shard_cfg.id_shard = (uint32_t)i;
        shard_cfg.id_shards = (uint32_t)sn->n_shards;
        shard->first_worker = i * fcfg.workers;
        shard->as = ft_assembler_create(&shard_cfg, sensor_on_end, shard, err, sizeof err);
        if (!shard->as) {
            sensor_log("flow table: %s", err);
            goto out;
        }
        if (!sn->no_model)
            ft_assembler_on_ready(shard->as, sensor_on_ready, shard);
    }

    /* 6. threads */
    sigfd = signal_pipe[0];
    stopfd = eventfd(0, EFD_CLOEXEC);
    if (stopfd < 0) {
        sensor_log("eventfd: %s", strerror(errno));
        goto out;
    }
    pthread_t batcher, manager;
    struct manager mg = {.sn = sn, .sigfd = sigfd, .stopfd = stopfd};
    if (!sn->no_model && pthread_create(&batcher, NULL, sensor_batcher_main, sn) != 0) {
        sensor_log("cannot start the batcher thread");
        goto out;
    }
    if (pthread_create(&manager, NULL, manager_main, &mg) != 0) {
        sensor_log("cannot start the manager thread");
        atomic_store(&sn->input_done, true);
        if (!sn->no_model) {
            sensor_queue_kick(&sn->q);
            pthread_join(batcher, NULL);
        }
        goto out;
    }
    notify("READY=1\nSTATUS=capturing", 1000);
    atomic_store(&sn->ready_notified, true);
    char input[400];
    if (live && sn->n_shards > 1)
        snprintf(input, sizeof input, "%s (%d readers, %s)", cap_source_name(live), sn->n_shards,
                 sn->cfg.capture.dpdk ? "a receive queue each" : "a packet fanout group");
    else if (live)
        snprintf(input, sizeof input, "%s", cap_source_name(live));
    if (!o->replay && sn->no_model)
        sensor_log("capturing on %s, no model (flow and stats events only), %d flow workers", input,
                   sn->n_workers);
    else if (!o->replay && sn->engine->gpu) {
        int dev = 0;
        char gpu[384] = "";
        if (model_device_parse(sn->cfg.model.device, &dev))
            model_cuda_describe(dev, gpu, sizeof gpu);
        sensor_log("capturing on %s, model %s on %s (%s, bf16, %s residual stream), %d flow workers", input,
                   sn->engine->name, sn->cfg.model.device, gpu, sn->cfg.model.residual_bf16 ? "bf16" : "fp32",
                   sn->n_workers);
    } else if (!o->replay) {
        sensor_log("capturing on %s, model %s (%u threads), %d flow workers", input, sn->engine->name,
                   sn->engine->threads, sn->n_workers);
    }

    /* 7. read until the end of input or a stop signal */
    if (o->replay) {
        read_files(sn);
    } else {
        for (int i = 1; i < sn->n_shards; i++) {
            struct sensor_shard *shard = &sn->shards[i];
            shard->started = pthread_create(&shard->thread, NULL, read_live_main, shard) == 0;
            if (!shard->started) {
                sensor_log("cannot start capture reader thread %d", i);
                atomic_store(&sn->failed, true);
                atomic_store(&sn->stop, true);
                break;
            }
        }
        read_live(&sn->shards[0]); /* ends its flows, and makes the other readers end theirs */
        for (int i = 1; i < sn->n_shards; i++)
            if (sn->shards[i].started)
                pthread_join(sn->shards[i].thread, NULL);
    }

    /* 8. drain */
    atomic_store(&sn->input_done, true);
    if (!sn->no_model) {
        sensor_queue_kick(&sn->q);
        pthread_join(batcher, NULL);
    }
    uint64_t one = 1;
    if (write(stopfd, &one, sizeof one) != (ssize_t)sizeof one)
        sensor_log("cannot stop the manager thread");
    pthread_join(manager, NULL);
    sensor_emit_stats(sn);
    if (o->replay && o->progress)
        o->progress(o->progress_user, sn->progress_bytes, sn->progress_frames, true);
    status = atomic_load(&sn->failed) ? 1 : 0;
out:
    if (sn->sink && !sensor_sink_close(sn->sink, status == 0))
        status = 1;
    sn->sink = NULL;
    (void)sigfd; /* the signal pipe stays: a signal during exit still has somewhere to go */
    if (stopfd >= 0)
        close(stopfd);
    release(sn);
    return status;
}
