/* dpdk.c — the DPDK packet source behind cap_open_dpdk(): the EAL, one port, its receive queues.
 *
 * The thread that opens the source becomes DPDK's main lcore and polls queue 0 (the sensor's
 * reader thread, as with libpcap); with several queues each further one is polled by a thread of
 * its own, registered with the EAL on its first burst so that it gets a mempool cache of its
 * own. Several queues spread by RSS with a symmetric key. Frames are copied out of their mbufs into
 * the source's arena and the mbufs freed in the same burst, so the pool never runs dry because a
 * consumer is slow: the NIC drops at its ring instead (imissed, reported as drops). Without DPDK
 * in the build, cap_open_dpdk() says so. */
#include "capture/dpdk_port.h"

#include <stdio.h>

#ifdef NETLM_HAVE_DPDK

#include <ctype.h>
#include <errno.h>
#include <pcap/pcap.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_version.h>

#define DPDK_MAX_ARGS 64
#define DPDK_BURST_MAX 256
#define DPDK_DEFAULT_RX_DESC 4096
#define DPDK_TX_DESC 512
#define DPDK_SNAPLEN_MAX 262144
/* empty polls before the reader starts to sleep, and the longest sleep (µs) */
#define DPDK_SPIN_POLLS 64
#define DPDK_MAX_SLEEP_US 1000
#define DPDK_MAX_QUEUES 64

/* What one queue's thread keeps between bursts, a cache line per queue. */
struct dpdk_queue_state {
    _Alignas(64) uint32_t empty_polls;
};

struct cap_dpdk_port {
    uint16_t port;
    struct rte_mempool *pool;
    uint32_t snaplen;
    uint32_t frame_max; /* the longest frame the port can deliver, for sizing a burst */
    uint32_t queues;
    bool busy_poll;
    bool filter_on;
    struct bpf_program filter; /* read-only once compiled: every queue's thread runs it */
    struct dpdk_queue_state *queue_state; /* queues of them */
};

/* Microsoft's symmetric Toeplitz key (0x6d5a repeated): the hash of (src, dst) equals that of
 * (dst, src), so both directions of a flow go to one queue. Long enough for any NIC's key. */
static uint8_t symmetric_rss_key[64];

/* DPDK's environment can be started once per process. */
static bool eal_started;

const char *cap_dpdk_version(void) { return rte_version(); }

/* "0000:3b:00.0" or "3b:00.0": a PCI address (normalised with its domain into pci), else a
 * virtual device. */
static bool pci_address(const char *s, char *pci, size_t size)
{
    unsigned dom = 0, bus, dev, fn;
    int used = 0;
    if (sscanf(s, "%x:%x:%x.%x%n", &dom, &bus, &dev, &fn, &used) == 4 && s[used] == '\0') {
        /* with a domain */
    } else if (dom = 0, used = 0, sscanf(s, "%x:%x.%x%n", &bus, &dev, &fn, &used) == 3 && s[used] == '\0') {
        /* without */
    } else {
        return false;
    }
    if (dom > 0xffff || bus > 0xff || dev > 0x1f || fn > 7 || !isxdigit((unsigned char)s[0]))
        return false;
    snprintf(pci, size, "%04x:%02x:%02x.%x", dom, bus, dev, fn);
    return true;
}

static bool has_arg(char *const *argv, int argc, const char *const *names)
{
    for (int i = 0; i < argc; i++)
        for (const char *const *n = names; *n; n++)
            if (strncmp(argv[i], *n, strlen(*n)) == 0)
                return true;
    return false;
}

/* The EAL's arguments: netlm's defaults (unless the user's arguments set them), the user's, then
 * the port. Tokens point into words (a copy of eal_args cut at blanks) or static strings. */
static int eal_argv(const struct cap_dpdk_opts *o, const char *pci, char *words, char *cpu, size_t cpu_size,
                    char **argv, char *err, size_t errlen)
{
    char *user[DPDK_MAX_ARGS];
    int nuser = 0;
    for (char *save = NULL, *t = strtok_r(words, " \t\n", &save); t; t = strtok_r(NULL, " \t\n", &save)) {
        if (nuser == DPDK_MAX_ARGS - 12) {
            snprintf(err, errlen, "dpdk: more than %d EAL arguments", DPDK_MAX_ARGS - 12);
            return -1;
        }
        user[nuser++] = t;
    }
    int argc = 0;
    argv[argc++] = "dpdk"; /* how getopt names the EAL in its complaints */
    static const char *const core_opts[] = {"-l", "-c", "--lcores", NULL};
    static const char *const telemetry_opts[] = {"--telemetry", "--no-telemetry", NULL};
    static const char *const log_opts[] = {"--log-level", NULL};
    if (!has_arg(user, nuser, core_opts)) {
        /* one lcore, the CPU this thread may run on first: the EAL would otherwise start an idle
         * thread for every core of the machine */
        cpu_set_t set;
        int first = 0;
        if (sched_getaffinity(0, sizeof set, &set) == 0)
            while (first < CPU_SETSIZE - 1 && !CPU_ISSET(first, &set))
                first++;
        snprintf(cpu, cpu_size, "%d", first);
        argv[argc++] = "-l";
        argv[argc++] = cpu;
    }
    if (!has_arg(user, nuser, telemetry_opts))
        argv[argc++] = "--no-telemetry"; /* the sensor's stats events say what it counts */
    if (!has_arg(user, nuser, log_opts))
        argv[argc++] = "--log-level=warning";
    for (int i = 0; i < nuser; i++)
        argv[argc++] = user[i];
    if (pci) {
        argv[argc++] = "-a";
        argv[argc++] = (char *)pci;
    } else {
        argv[argc++] = "--vdev";
        argv[argc++] = (char *)o->port;
    }
    argv[argc] = NULL;
    return argc;
}

/* rte_eal_init pins the calling thread to its lcore; the sensor's other threads are created
 * from this one and would inherit that, so the thread's CPU set is put back afterwards. */
static bool start_eal(const struct cap_dpdk_opts *o, const char *pci, char *err, size_t errlen)
{
    char *words = strdup(o->eal_args ? o->eal_args : "");
    char *argv[DPDK_MAX_ARGS + 1], cpu[16];
    if (!words) {
        snprintf(err, errlen, "dpdk: out of memory");
        return false;
    }
    int argc = eal_argv(o, pci, words, cpu, sizeof cpu, argv, err, errlen);
    if (argc < 0) {
        free(words);
        return false;
    }
    cpu_set_t set;
    const bool have_set = pthread_getaffinity_np(pthread_self(), sizeof set, &set) == 0;
    eal_started = true; /* even a failed rte_eal_init cannot be repeated */
    int rc = rte_eal_init(argc, argv);
    if (have_set)
        pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    free(words);
    if (rc < 0) {
        snprintf(err, errlen,
                 "dpdk: cannot start the environment (rte_eal_init: %s; capture.dpdk.eal holds its arguments, "
                 "without hugepages: --no-huge -m 512)",
                 rte_strerror(rte_errno));
        return false;
    }
    return true;
}

static bool find_port(const char *name, uint16_t *port, char *err, size_t errlen)
{
    if (rte_eth_dev_get_port_by_name(name, port) == 0)
        return true;
    if (rte_eth_dev_count_avail() == 0)
        snprintf(err, errlen, "dpdk: %s: no such port (not bound to a DPDK driver, or the driver is not installed)",
                 name);
    else
        snprintf(err, errlen, "dpdk: %s: no such port (%u other ports)", name, rte_eth_dev_count_avail());
    return false;
}

static bool setup_port(struct cap_dpdk_port *p, const struct cap_dpdk_opts *o, const char *name, char *err,
                       size_t errlen)
{
    struct rte_eth_dev_info info;
    int rc = rte_eth_dev_info_get(p->port, &info);
    if (rc != 0) {
        snprintf(err, errlen, "dpdk: %s: no device information (%s)", name, rte_strerror(-rc));
        return false;
    }
    if (p->queues > info.max_rx_queues) {
        snprintf(err, errlen, "dpdk: %s: capture.readers is %u, the port has at most %u receive queue%s", name,
                 p->queues, info.max_rx_queues, info.max_rx_queues == 1 ? "" : "s");
        return false;
    }
    struct rte_eth_conf conf;
    memset(&conf, 0, sizeof conf);
    conf.rxmode.mq_mode = RTE_ETH_MQ_RX_NONE;
    const uint64_t rss_types = (RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP) & info.flow_type_rss_offloads;
    if (p->queues > 1 && rss_types) {
        for (size_t i = 0; i < sizeof symmetric_rss_key; i++)
            symmetric_rss_key[i] = i % 2 ? 0x5a : 0x6d;
        conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_key = info.hash_key_size ? symmetric_rss_key : NULL;
        conf.rx_adv_conf.rss_conf.rss_key_len = info.hash_key_size;
        conf.rx_adv_conf.rss_conf.rss_hf = rss_types;
    }
    if ((rc = rte_eth_dev_configure(p->port, (uint16_t)p->queues, 1, &conf)) != 0) {
        snprintf(err, errlen, "dpdk: %s: cannot configure the port with %u receive queues (%s)", name, p->queues,
                 rte_strerror(-rc));
        return false;
    }
    uint16_t rx_desc = (uint16_t)(o->rx_descriptors ? (o->rx_descriptors > 65535 ? 65535 : o->rx_descriptors)
                                                    : DPDK_DEFAULT_RX_DESC),
             tx_desc = DPDK_TX_DESC;
    if ((rc = rte_eth_dev_adjust_nb_rx_tx_desc(p->port, &rx_desc, &tx_desc)) != 0) {
        snprintf(err, errlen, "dpdk: %s: no ring size the port accepts (%s)", name, rte_strerror(-rc));
        return false;
    }
    uint32_t mbufs = o->mbufs ? o->mbufs : 4u * rx_desc * p->queues;
    if (mbufs <= rx_desc * p->queues)
        mbufs = rx_desc * p->queues + 1024; /* every descriptor holds one, and the bursts in flight */
    const int socket = rte_eth_dev_socket_id(p->port);
    char pool_name[RTE_MEMPOOL_NAMESIZE];
    snprintf(pool_name, sizeof pool_name, "netlm_rx_%u", p->port);
    p->pool = rte_pktmbuf_pool_create(pool_name, mbufs, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                      socket < 0 ? (int)rte_socket_id() : socket);
    if (!p->pool) {
        snprintf(err, errlen, "dpdk: %s: cannot allocate %u mbufs (%s); fewer with capture.dpdk.mbufs, or more memory "
                 "for the EAL (-m, hugepages)", name, mbufs, rte_strerror(rte_errno));
        return false;
    }
    for (uint16_t q = 0; q < p->queues; q++)
        if ((rc = rte_eth_rx_queue_setup(p->port, q, rx_desc, (unsigned)socket, NULL, p->pool)) != 0) {
            snprintf(err, errlen, "dpdk: %s: cannot set up receive queue %u (%s)", name, q, rte_strerror(-rc));
            return false;
        }
    if ((rc = rte_eth_tx_queue_setup(p->port, 0, tx_desc, (unsigned)socket, NULL)) != 0) {
        snprintf(err, errlen, "dpdk: %s: cannot set up its transmit queue (%s)", name, rte_strerror(-rc));
        return false;
    }
    uint16_t mtu = RTE_ETHER_MTU;
    rte_eth_dev_get_mtu(p->port, &mtu);
    /* Ethernet header, two VLAN tags and the CRC around the MTU */
    const uint32_t frame = (uint32_t)mtu + RTE_ETHER_HDR_LEN + 8 + RTE_ETHER_CRC_LEN;
    p->frame_max = frame < p->snaplen ? frame : p->snaplen;
    if ((rc = rte_eth_dev_start(p->port)) != 0) {
        snprintf(err, errlen, "dpdk: %s: cannot start the port (%s)", name, rte_strerror(-rc));
        return false;
    }
    /* a virtual device may not have the notion: not an error */
    rc = o->promisc ? rte_eth_promiscuous_enable(p->port) : rte_eth_promiscuous_disable(p->port);
    if (rc != 0 && rc != -ENOTSUP) {
        snprintf(err, errlen, "dpdk: %s: cannot %s promiscuous mode (%s)", name, o->promisc ? "enable" : "disable",
                 rte_strerror(-rc));
        return false;
    }
    return true;
}

static bool compile_filter(struct cap_dpdk_port *p, const char *bpf, const char *name, char *err, size_t errlen)
{
    pcap_t *dead = pcap_open_dead(DLT_EN10MB, (int)p->snaplen);
    if (!dead) {
        snprintf(err, errlen, "dpdk: %s: out of memory", name);
        return false;
    }
    const bool ok = pcap_compile(dead, &p->filter, bpf, 1, PCAP_NETMASK_UNKNOWN) == 0;
    if (!ok)
        snprintf(err, errlen, "dpdk: %s: bad capture filter \"%s\" (libpcap: %s)", name, bpf, pcap_geterr(dead));
    pcap_close(dead);
    p->filter_on = ok;
    return ok;
}

/* DPDK and getopt explain a failed start over many lines, on stderr, and the EAL prints its
 * whole usage on stdout (which may be the sensor's event stream). While the port starts, both go
 * to one temporary file: on failure its first line joins netlm's own one-line message; on
 * success whatever was said (warnings) is passed on to stderr. Nothing else runs yet (the
 * capture opens before the sensor starts any thread). */
struct eal_output {
    int saved[2]; /* stdout, stderr */
    FILE *file;
};

static void divert_output(struct eal_output *c)
{
    fflush(stdout);
    fflush(stderr);
    c->saved[0] = c->saved[1] = -1;
    c->file = tmpfile();
    bool ok = c->file != NULL;
    for (int fd = STDOUT_FILENO; ok && fd <= STDERR_FILENO; fd++)
        ok = (c->saved[fd - STDOUT_FILENO] = dup(fd)) >= 0 && dup2(fileno(c->file), fd) >= 0;
    if (!ok) { /* left as they were */
        for (int fd = STDOUT_FILENO; fd <= STDERR_FILENO; fd++)
            if (c->saved[fd - STDOUT_FILENO] >= 0) {
                dup2(c->saved[fd - STDOUT_FILENO], fd);
                close(c->saved[fd - STDOUT_FILENO]);
            }
        if (c->file)
            fclose(c->file);
        c->file = NULL;
    }
}

/* Restores stdout and stderr; with err, appends the first line said to it, else passes the text
 * on to stderr. */
static void restore_output(struct eal_output *c, char *err, size_t errlen)
{
    if (!c->file)
        return;
    fflush(stdout);
    fflush(stderr);
    for (int fd = STDOUT_FILENO; fd <= STDERR_FILENO; fd++) {
        dup2(c->saved[fd - STDOUT_FILENO], fd);
        close(c->saved[fd - STDOUT_FILENO]);
    }
    char text[4096];
    rewind(c->file);
    const size_t n = fread(text, 1, sizeof text - 1, c->file);
    fclose(c->file);
    text[n] = '\0';
    if (!err) {
        fputs(text, stderr);
        return;
    }
    const char *line = text + strspn(text, " \t\n");
    const int len = (int)strcspn(line, "\n");
    const size_t used = strlen(err);
    if (len > 0 && used + 16 < errlen)
        snprintf(err + used, errlen - used, "; DPDK said: %.*s", len, line);
}

struct cap_dpdk_port *cap_dpdk_port_open(const struct cap_dpdk_opts *o, uint32_t *snaplen_out, char *err,
                                         size_t errlen)
{
    if (!o || !o->port || !*o->port) {
        snprintf(err, errlen, "dpdk: no port given (a PCI address or a virtual device)");
        return NULL;
    }
    if (eal_started) {
        snprintf(err, errlen, "dpdk: %s: DPDK was already started in this process (one DPDK source per process)",
                 o->port);
        return NULL;
    }
    char pci[32], name[256];
    const bool is_pci = pci_address(o->port, pci, sizeof pci);
    /* a virtual device's port is named by its first argument: "net_pcap0" of "net_pcap0,rx_pcap=..." */
    snprintf(name, sizeof name, "%.*s", (int)strcspn(o->port, ","), is_pci ? pci : o->port);
    struct cap_dpdk_port *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "dpdk: out of memory");
        return NULL;
    }
    p->snaplen = o->snaplen > 0 && o->snaplen <= DPDK_SNAPLEN_MAX ? (uint32_t)o->snaplen : DPDK_SNAPLEN_MAX;
    p->busy_poll = o->busy_poll;
    p->queues = o->queues > 1 ? o->queues : 1;
    if (p->queues > DPDK_MAX_QUEUES) {
        snprintf(err, errlen, "dpdk: %s: %u receive queues, at most %d", name, p->queues, DPDK_MAX_QUEUES);
        free(p);
        return NULL;
    }
    p->queue_state = aligned_alloc(64, p->queues * sizeof *p->queue_state);
    if (!p->queue_state) {
        snprintf(err, errlen, "dpdk: out of memory");
        free(p);
        return NULL;
    }
    memset(p->queue_state, 0, p->queues * sizeof *p->queue_state);
    if (o->bpf && *o->bpf && !compile_filter(p, o->bpf, name, err, errlen)) {
        free(p->queue_state);
        free(p);
        return NULL;
    }
    struct eal_output said;
    divert_output(&said);
    if (!start_eal(o, is_pci ? pci : NULL, err, errlen)) {
        restore_output(&said, err, errlen);
        if (p->filter_on)
            pcap_freecode(&p->filter);
        free(p->queue_state);
        free(p);
        return NULL;
    }
    if (!find_port(name, &p->port, err, errlen) || !setup_port(p, o, name, err, errlen)) {
        restore_output(&said, err, errlen);
        cap_dpdk_port_close(p);
        return NULL;
    }
    restore_output(&said, NULL, 0);
    *snaplen_out = p->snaplen;
    return p;
}

uint32_t cap_dpdk_port_queues(const struct cap_dpdk_port *p) { return p->queues; }

static void idle(struct cap_dpdk_port *p, struct dpdk_queue_state *q)
{
    if (p->busy_poll || ++q->empty_polls <= DPDK_SPIN_POLLS)
        return;
    /* quiet: sleep 10 µs, doubling to 1 ms; the first frame resets it */
    unsigned shift = (q->empty_polls - DPDK_SPIN_POLLS) / DPDK_SPIN_POLLS;
    long us = shift >= 7 ? DPDK_MAX_SLEEP_US : 10L << shift;
    if (us > DPDK_MAX_SLEEP_US)
        us = DPDK_MAX_SLEEP_US;
    struct timespec ts = {.tv_sec = 0, .tv_nsec = us * 1000};
    nanosleep(&ts, NULL);
}

/* A thread that is not an EAL lcore has no mempool cache: every buffer the driver takes or
 * returns would go through the pool's shared ring. Registering gives it an lcore id of its own
 * (once per thread; failing only costs that cache). */
static void register_thread(void)
{
    static _Thread_local bool tried;
    if (!tried && rte_lcore_id() == LCORE_ID_ANY)
        rte_thread_register();
    tried = true;
}

int cap_dpdk_port_burst(struct cap_dpdk_port *p, uint32_t queue, struct cap_frame *frames, int max, uint8_t *arena,
                        size_t arena_size, size_t *used)
{
    if (queue >= p->queues)
        return 0;
    register_thread();
    struct dpdk_queue_state *q = &p->queue_state[queue];
    size_t room = arena_size - *used;
    size_t want = (size_t)(max < DPDK_BURST_MAX ? max : DPDK_BURST_MAX);
    if (want * p->frame_max > room)
        want = room / p->frame_max;
    if (want == 0)
        return 0;
    struct rte_mbuf *mbufs[DPDK_BURST_MAX];
    const uint16_t n = rte_eth_rx_burst(p->port, (uint16_t)queue, mbufs, (uint16_t)want);
    if (n == 0) {
        idle(p, q);
        return 0;
    }
    q->empty_polls = 0;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    const int64_t ts = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
    int out = 0;
    for (uint16_t i = 0; i < n; i++) {
        const uint32_t wire = rte_pktmbuf_pkt_len(mbufs[i]);
        uint32_t caplen = wire < p->snaplen ? wire : p->snaplen;
        room = arena_size - *used;
        if (caplen > room) /* a frame beyond the MTU on a port that scatters: cut, as snaplen cuts */
            caplen = (uint32_t)room;
        uint8_t *dst = arena + *used;
        const void *bytes = rte_pktmbuf_read(mbufs[i], 0, caplen, dst);
        if (bytes && bytes != dst)
            memcpy(dst, bytes, caplen);
        rte_pktmbuf_free(mbufs[i]);
        if (!bytes || caplen == 0)
            continue;
        if (p->filter_on) {
            const struct pcap_pkthdr h = {.caplen = caplen, .len = wire};
            if (!pcap_offline_filter(&p->filter, &h, dst))
                continue;
        }
        *used += caplen;
        frames[out++] = (struct cap_frame){
            .data = dst, .caplen = caplen, .wirelen = wire, .ts_ns = ts, .linktype = CAP_LINK_EN10MB};
    }
    return out;
}

void cap_dpdk_port_stats(struct cap_dpdk_port *p, uint64_t *missed, uint64_t *errors)
{
    struct rte_eth_stats st;
    *missed = *errors = 0;
    if (rte_eth_stats_get(p->port, &st) == 0) {
        *missed = st.imissed;
        *errors = st.ierrors + st.rx_nombuf;
    }
}

/* Stops the port, frees what it holds and the EAL's memory (which cannot be started again in
 * this process). */
void cap_dpdk_port_close(struct cap_dpdk_port *p)
{
    if (!p)
        return;
    if (p->pool) {
        rte_eth_dev_stop(p->port);
        rte_eth_dev_close(p->port);
        rte_mempool_free(p->pool);
    }
    if (p->filter_on)
        pcap_freecode(&p->filter);
    free(p->queue_state);
    free(p);
    rte_eal_cleanup();
}

#else /* no DPDK in this build */

const char *cap_dpdk_version(void) { return NULL; }

struct cap_dpdk_port *cap_dpdk_port_open(const struct cap_dpdk_opts *opts, uint32_t *snaplen_out, char *err,
                                         size_t errlen)
{
    (void)snaplen_out;
    snprintf(err, errlen, "dpdk: %s: this netlm was built without DPDK (install libdpdk-dev and rebuild)",
             opts && opts->port ? opts->port : "");
    return NULL;
}

int cap_dpdk_port_burst(struct cap_dpdk_port *p, uint32_t queue, struct cap_frame *frames, int max, uint8_t *arena,
                        size_t arena_size, size_t *used)
{
    (void)p, (void)queue, (void)frames, (void)max, (void)arena, (void)arena_size, (void)used;
    return 0; /* never called: no port opens */
}

uint32_t cap_dpdk_port_queues(const struct cap_dpdk_port *p)
{
    (void)p;
    return 1;
}

void cap_dpdk_port_stats(struct cap_dpdk_port *p, uint64_t *missed, uint64_t *errors)
{
    (void)p;
    *missed = *errors = 0;
}

void cap_dpdk_port_close(struct cap_dpdk_port *p) { (void)p; }

#endif
