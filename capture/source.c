/* source.c — packet sources behind cap_open_file() / cap_open_live() / cap_open_dpdk(): libpcap
 * handles (or a DPDK port, dpdk.c, or netlm's pcapng reader, pcapng.c) that hand out frames in
 * bursts.
 *
 * libpcap reuses one buffer for every frame it returns, so each burst copies its frames into a
 * per-source arena; the frames stay valid until the next burst on the same source. The pcapng
 * reader's frames point into its own block buffer, which only moves at the start of a burst. A
 * source is owned by one thread at a time; different sources share nothing. A file's capture
 * filter (cap_source_set_filter) runs in user space on each frame read, as libpcap runs one on a
 * savefile; a live handle's runs in the kernel. */
#include "capture/capture.h"
#include "capture/dpdk_port.h"
#include "capture/pcapng.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <pcap/pcap.h>
#include <poll.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* Room for a burst of a few thousand full-size frames, and for 16 of the largest snaplen: a live
 * burst stops while a maximal frame still fits, a file burst holds back the frame that does not
 * (a single frame larger than the arena grows it). */
#define CAP_ARENA_BYTES (4u << 20)
#define CAP_MAX_SNAPLEN 262144
#define CAP_DEFAULT_TIMEOUT_MS 10
#define CAP_STREAM_BUF_BYTES (64u << 10) /* stdio buffer of a capture file: fits in L2 */

struct cap_source {
    pcap_t *pcap;
    struct cap_pcapng *ng; /* a pcapng file: netlm's reader instead of pcap */
    int64_t start_offset;  /* libpcap file: where in its stream the capture starts */
    char *name; /* the path or the interface */
    bool live;
    bool ended;      /* file: end reached, every later call says so */
    bool failed;     /* an error is stored in err; every later call reports it */
    bool ts_nano;    /* libpcap hands out ns (else µs) in tv_usec */
    uint16_t linktype;
    uint32_t snaplen;
    int poll_fd;     /* live: the descriptor to wait on, -1 where libpcap has none */
    int timeout_ms;  /* live: how long an empty burst waits */

    char *stream_buf;    /* file: stdio buffer of the capture file; freed after pcap_close */
    uint8_t *arena;
    size_t arena_size;
    size_t arena_used;

    /* file: a frame already read by pcap_next_ex that did not fit in the last burst's arena; its
     * bytes stay valid in libpcap's buffer until the next pcap_next_ex */
    const struct pcap_pkthdr *held_hdr;
    const uint8_t *held_bytes;

    /* file: cap_source_set_filter's program, run on each frame read (a frame it rejects is
     * still counted in frames_read, so "after frame N" keeps naming the file's frame) */
    struct bpf_program filter;
    bool filtered;

    struct cap_dpdk_port *dpdk; /* a DPDK port (live) instead of pcap */
    uint32_t dpdk_queue;        /* the receive queue this source reads */
    bool dpdk_owner;            /* closes the port (cap_open_dpdk's source, not cap_open_reader's) */

    /* live with several readers (cap_live_opts.readers): the first handle keeps what the others
     * of its fanout group are opened with */
    uint32_t readers;
    uint16_t fanout_group;
    struct cap_live_opts reader_opts; /* iface: name; bpf: reader_bpf */
    char *reader_bpf;

    /* live: where the dispatch callback puts the current burst */
    struct cap_frame *cb_frames;
    int cb_count;

    uint64_t frames_read; /* frames read without error, for the "after frame N" message */
    uint64_t frames;
    uint64_t bytes;
    char err[PCAP_ERRBUF_SIZE + 512];
};

static struct cap_source *source_new(const char *name, char *err, size_t errlen)
{
    struct cap_source *src = calloc(1, sizeof *src);
    if (src) {
        src->name = strdup(name);
        src->arena_size = CAP_ARENA_BYTES;
        src->arena = malloc(src->arena_size);
    }
    if (!src || !src->name || !src->arena) {
        if (src) {
            free(src->name);
            free(src->arena);
            free(src);
        }
        snprintf(err, errlen, "%s: out of memory", name);
        return NULL;
    }
    return src;
}

static void source_free(struct cap_source *src)
{
    if (!src)
        return;
    if (src->filtered)
        pcap_freecode(&src->filter);
    if (src->pcap)
        pcap_close(src->pcap);
    cap_pcapng_close(src->ng);
    if (src->dpdk_owner)
        cap_dpdk_port_close(src->dpdk);
    free(src->stream_buf);
    free(src->arena);
    free(src->reader_bpf);
    free(src->name);
    free(src);
}

static bool has_pcap_magic(const uint8_t m[4])
{
    static const uint8_t magics[][4] = {
        {0xa1, 0xb2, 0xc3, 0xd4}, {0xd4, 0xc3, 0xb2, 0xa1}, /* µs */
        {0xa1, 0xb2, 0x3c, 0x4d}, {0x4d, 0x3c, 0xb2, 0xa1}, /* ns */
        {0xa1, 0xb2, 0xcd, 0x34}, {0x34, 0xcd, 0xb2, 0xa1}, /* Kuznetzov's modified pcap */
        {0x0a, 0x0d, 0x0d, 0x0a},                           /* pcapng section header */
    };
    for (size_t i = 0; i < sizeof magics / sizeof magics[0]; i++)
        if (memcmp(m, magics[i], 4) == 0)
            return true;
    return false;
}

/* A capture that could not be opened (open's errno). */
static void explain_open_errno(const char *path, int open_errno, char *err, size_t errlen)
{
    if (open_errno == ENOENT || open_errno == ENOTDIR)
        snprintf(err, errlen, "%s: no such file", path);
    else if (open_errno == EACCES || open_errno == EPERM)
        snprintf(err, errlen, "%s: permission denied", path);
    else
        snprintf(err, errlen, "%s: %s", path, strerror(open_errno));
}

/* libpcap's open error ("truncated dump file; tried to read 4 file header bytes...", "unknown
 * file format") rarely says what the user needs to hear, so look at the input ourselves: head
 * holds the got bytes already read from its start. Nothing is opened again: a pipe reopened
 * after its writer left would wait forever. */
static void explain_open_failure(const char *path, int fd, const char *pcap_err, const uint8_t *head, size_t got,
                                 char *err, size_t errlen)
{
    struct stat st;
    const bool stat_ok = fstat(fd, &st) == 0;
    if (stat_ok && S_ISDIR(st.st_mode))
        snprintf(err, errlen, "%s: is a directory, not a pcap or pcapng file", path);
    else if (got == 0 && stat_ok && S_ISREG(st.st_mode))
        snprintf(err, errlen, "%s: empty file", path);
    else if (got == 0)
        snprintf(err, errlen, "%s: empty input", path);
    else if (got == 4 && has_pcap_magic(head))
        snprintf(err, errlen, "%s: damaged pcap or pcapng header (libpcap: %s)", path, pcap_err);
    else
        snprintf(err, errlen, "%s: not a pcap or pcapng file (libpcap: %s)", path, pcap_err);
}

/* What libpcap reads from a stream that cannot seek back (a pipe): the bytes taken to look at the
 * magic, then the rest. */
struct prefixed_stream {
    int fd;
    uint8_t head[4];
    size_t n, at;
};

static ssize_t prefixed_read(void *cookie, char *buf, size_t size)
{
    struct prefixed_stream *p = cookie;
    if (p->at < p->n) {
        size_t k = p->n - p->at < size ? p->n - p->at : size;
        memcpy(buf, p->head + p->at, k);
        p->at += k;
        return (ssize_t)k;
    }
    ssize_t got;
    do
        got = read(p->fd, buf, size);
    while (got < 0 && errno == EINTR);
    return got;
}

static int prefixed_close(void *cookie)
{
    struct prefixed_stream *p = cookie;
    int rc = p->fd > STDIN_FILENO ? close(p->fd) : 0;
    free(p);
    return rc;
}

/* The stream libpcap reads fd from, positioned where the capture starts (start; -1: fd cannot
 * seek, and head holds the n bytes already taken). NULL on failure, fd left open. */
static FILE *libpcap_stream(int fd, bool is_stdin, off_t start, const uint8_t *head, size_t n)
{
    if (start >= 0 && lseek(fd, start, SEEK_SET) == start)
        return is_stdin ? stdin : fdopen(fd, "rb");
    struct prefixed_stream *p = malloc(sizeof *p);
    if (!p)
        return NULL;
    *p = (struct prefixed_stream){.fd = fd, .n = n};
    memcpy(p->head, head, n);
    FILE *fp = fopencookie(p, "rb", (cookie_io_functions_t){.read = prefixed_read, .close = prefixed_close});
    if (!fp)
        free(p);
    return fp;
}

struct cap_source *cap_open_file(const char *path, char *err, size_t errlen)
{
    char pcap_err[PCAP_ERRBUF_SIZE] = "";
    if (!path || !*path) {
        snprintf(err, errlen, "(empty path): no such file");
        return NULL;
    }
    /* "-" is stdin, as for tcpdump -r. */
    const bool is_stdin = strcmp(path, "-") == 0;
    const int fd = is_stdin ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        explain_open_errno(path, errno, err, errlen);
        return NULL;
    }
    struct cap_source *src = source_new(path, err, errlen);
    if (!src) {
        if (!is_stdin)
            close(fd);
        return NULL;
    }
    /* The magic decides the reader: pcapng goes to netlm's own, which reads files whose
     * interfaces differ (libpcap refuses them) and hands out frames without copying them. A
     * redirected standard input may start anywhere in its file: progress counts from there. */
    const off_t start = lseek(fd, 0, SEEK_CUR);
    static const uint8_t pcapng_magic[4] = {0x0a, 0x0d, 0x0d, 0x0a};
    uint8_t head[4];
    size_t got = 0;
    while (got < sizeof head) {
        ssize_t k = read(fd, head + got, sizeof head - got);
        if (k > 0)
            got += (size_t)k;
        else if (k == 0 || errno != EINTR)
            break; /* a directory, say: libpcap fails on it below and the failure is explained */
    }
    src->start_offset = start > 0 ? start : 0;
    if (got == sizeof head && memcmp(head, pcapng_magic, sizeof head) == 0) {
        bool damaged;
        char why[PCAP_ERRBUF_SIZE + 256];
        src->ng = cap_pcapng_open(fd, head, got, &damaged, why, sizeof why);
        if (!src->ng) {
            if (!is_stdin)
                close(fd);
            source_free(src);
            if (damaged)
                snprintf(err, errlen, "%s: damaged pcap or pcapng header (pcapng: %s)", path, why);
            else
                snprintf(err, errlen, "%s: %s", path, why);
            return NULL;
        }
        /* frames point into the reader's buffer: the arena stays unused */
        free(src->arena);
        src->arena = NULL;
        src->arena_size = 0;
        src->ts_nano = true;
        src->linktype = cap_pcapng_linktype(src->ng);
        return src;
    }
    /* Opened here rather than by pcap_open_offline() so that the stream gets its buffer before
     * the first read: libpcap freads record by record, and with stdio's default 4 KiB buffer
     * every full-size frame was a read() system call of its own (a third slower on 1500-byte
     * frames). */
    FILE *fp = libpcap_stream(fd, is_stdin, start, head, got);
    if (!fp) {
        if (!is_stdin)
            close(fd);
        source_free(src);
        snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    if (!is_stdin) {
        src->stream_buf = malloc(CAP_STREAM_BUF_BYTES);
        if (src->stream_buf)
            setvbuf(fp, src->stream_buf, _IOFBF, CAP_STREAM_BUF_BYTES);
        /* Only the thread that owns the source reads the stream, so stdio need not lock it:
         * libpcap makes two freads per frame, and each took and released the stream's lock. */
        __fsetlocking(fp, FSETLOCKING_BYCALLER);
    }
    pcap_t *p = pcap_fopen_offline_with_tstamp_precision(fp, PCAP_TSTAMP_PRECISION_NANO, pcap_err);
    if (!p) {
        explain_open_failure(path, fd, pcap_err, head, got, err, errlen);
        if (fp != stdin)
            fclose(fp);
        source_free(src);
        return NULL;
    }
    src->pcap = p;
    src->ts_nano = pcap_get_tstamp_precision(p) == PCAP_TSTAMP_PRECISION_NANO;
    src->linktype = (uint16_t)pcap_datalink(p);
    src->snaplen = (uint32_t)pcap_snapshot(p);
    return src;
}

static const char *activate_problem(int rc)
{
    switch (rc) {
    case PCAP_ERROR_PERM_DENIED:
        return "permission denied (capturing needs CAP_NET_RAW, e.g. run as the netlm service "
               "user or as root)";
    case PCAP_ERROR_PROMISC_PERM_DENIED:
        return "permission denied for promiscuous mode (needs CAP_NET_ADMIN or turn promisc off)";
    case PCAP_ERROR_NO_SUCH_DEVICE:
        return "no such interface";
    case PCAP_ERROR_IFACE_NOT_UP:
        return "interface is not up";
    case PCAP_ERROR_RFMON_NOTSUP:
        return "monitor mode not supported";
    default:
        return NULL;
    }
}

enum fanout { FANOUT_NONE, FANOUT_START, FANOUT_JOIN };

/* Starts a hash-mode fanout group with the handle's packet socket (which libpcap has bound to
 * the interface), the kernel choosing an unused id (0 is one), or joins group *id. */
static bool join_fanout(pcap_t *p, const char *iface, enum fanout how, uint16_t *id, char *err, size_t errlen)
{
    const int fd = pcap_fileno(p);
    const int arg = how == FANOUT_JOIN ? (int)*id | (PACKET_FANOUT_HASH << 16)
                                       : (PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_UNIQUEID) << 16;
    int got = 0;
    socklen_t len = sizeof got;
    if (setsockopt(fd, SOL_PACKET, PACKET_FANOUT, &arg, sizeof arg) != 0 ||
        getsockopt(fd, SOL_PACKET, PACKET_FANOUT, &got, &len) != 0) {
        snprintf(err, errlen, "%s: cannot %s a packet fanout group for capture.readers (%s)", iface,
                 how == FANOUT_JOIN ? "join" : "start", strerror(errno));
        return false;
    }
    *id = (uint16_t)(got & 0xffff);
    return true;
}

/* One activated handle with its filter; with fanout, in a new fanout group (its id into *group)
 * or in group *group. */
static struct cap_source *open_live_handle(const struct cap_live_opts *opts, enum fanout fanout, uint16_t *group,
                                           char *err, size_t errlen)
{
    char pcap_err[PCAP_ERRBUF_SIZE] = "";
    const char *iface = opts->iface;
    int snaplen = opts->snaplen > 0 && opts->snaplen <= CAP_MAX_SNAPLEN ? opts->snaplen
                                                                         : CAP_MAX_SNAPLEN;
    int timeout = opts->timeout_ms > 0 ? opts->timeout_ms : CAP_DEFAULT_TIMEOUT_MS;

    pcap_t *p = pcap_create(iface, pcap_err);
    if (!p) {
        snprintf(err, errlen, "%s: cannot open for capture (libpcap: %s)", iface, pcap_err);
        return NULL;
    }
    /* The setters only fail on an already activated handle, which this is not. */
    pcap_set_snaplen(p, snaplen);
    pcap_set_promisc(p, opts->promisc ? 1 : 0);
    pcap_set_timeout(p, timeout);
    pcap_set_immediate_mode(p, 0); /* let the kernel batch: bursts, not wakeups per frame */
    if (opts->buffer_mb > 0)
        pcap_set_buffer_size(p, opts->buffer_mb > 2047 ? INT32_MAX : opts->buffer_mb << 20);
    /* ns when the platform has them; a failure just leaves µs, noticed after activation */
    pcap_set_tstamp_precision(p, PCAP_TSTAMP_PRECISION_NANO);

    int rc = pcap_activate(p);
    if (rc < 0) {
        const char *what = activate_problem(rc);
        if (what)
            snprintf(err, errlen, "%s: %s (libpcap: %s)", iface, what, pcap_geterr(p));
        else
            snprintf(err, errlen, "%s: cannot start capture (libpcap: %s)", iface, pcap_geterr(p));
        pcap_close(p);
        return NULL;
    }
    if (opts->bpf && *opts->bpf) {
        struct bpf_program prog;
        if (pcap_compile(p, &prog, opts->bpf, 1, PCAP_NETMASK_UNKNOWN) != 0) {
            snprintf(err, errlen, "%s: bad capture filter \"%s\" (libpcap: %s)", iface, opts->bpf,
                     pcap_geterr(p));
            pcap_close(p);
            return NULL;
        }
        rc = pcap_setfilter(p, &prog);
        pcap_freecode(&prog);
        if (rc != 0) {
            snprintf(err, errlen, "%s: cannot set capture filter \"%s\" (libpcap: %s)", iface,
                     opts->bpf, pcap_geterr(p));
            pcap_close(p);
            return NULL;
        }
    }
    if (fanout != FANOUT_NONE && !join_fanout(p, iface, fanout, group, err, errlen)) {
        pcap_close(p);
        return NULL;
    }
    struct cap_source *src = source_new(iface, err, errlen);
    if (!src) {
        pcap_close(p);
        return NULL;
    }
    /* Non-blocking plus our own poll(): with TPACKET_V3 the kernel's block timeout only runs once
     * a packet has arrived, so a blocking read on a quiet interface would never return. */
    src->poll_fd = pcap_get_selectable_fd(p);
    if (src->poll_fd >= 0 && pcap_setnonblock(p, 1, pcap_err) != 0)
        src->poll_fd = -1;
    src->timeout_ms = timeout;
    src->pcap = p;
    src->live = true;
    src->ts_nano = pcap_get_tstamp_precision(p) == PCAP_TSTAMP_PRECISION_NANO;
    src->linktype = (uint16_t)pcap_datalink(p);
    src->snaplen = (uint32_t)pcap_snapshot(p);
    return src;
}

struct cap_source *cap_open_live(const struct cap_live_opts *opts, char *err, size_t errlen)
{
    const char *iface = opts && opts->iface ? opts->iface : NULL;
    if (!iface || !*iface) {
        snprintf(err, errlen, "live capture: no interface given");
        return NULL;
    }
    const bool fanout = opts->readers > 1;
    uint16_t group = 0;
    struct cap_source *src = open_live_handle(opts, fanout ? FANOUT_START : FANOUT_NONE, &group, err, errlen);
    if (!src || !fanout)
        return src;
    /* what the group's other handles are opened with */
    src->readers = opts->readers;
    src->fanout_group = group;
    src->reader_opts = *opts;
    src->reader_opts.iface = src->name;
    if (opts->bpf && !(src->reader_opts.bpf = src->reader_bpf = strdup(opts->bpf))) {
        snprintf(err, errlen, "%s: out of memory", iface);
        source_free(src);
        return NULL;
    }
    return src;
}

struct cap_source *cap_open_dpdk(const struct cap_dpdk_opts *opts, char *err, size_t errlen)
{
    uint32_t snaplen = 0;
    struct cap_dpdk_port *port = cap_dpdk_port_open(opts, &snaplen, err, errlen);
    if (!port)
        return NULL;
    char name[300];
    snprintf(name, sizeof name, "dpdk:%s", opts->port);
    struct cap_source *src = source_new(name, err, errlen);
    if (!src) {
        cap_dpdk_port_close(port);
        return NULL;
    }
    src->dpdk = port;
    src->dpdk_owner = true;
    src->live = true;
    src->linktype = CAP_LINK_EN10MB;
    src->snaplen = snaplen;
    return src;
}

struct cap_source *cap_open_reader(struct cap_source *first, uint32_t index, char *err, size_t errlen)
{
    if (index == 0 || index >= cap_source_readers(first) || (first->dpdk && !first->dpdk_owner)) {
        snprintf(err, errlen, "%s: no reader %u to open", first->name, index);
        return NULL;
    }
    if (!first->dpdk) {
        uint16_t group = first->fanout_group;
        return open_live_handle(&first->reader_opts, FANOUT_JOIN, &group, err, errlen);
    }
    char name[320];
    snprintf(name, sizeof name, "%s#%u", first->name, index);
    struct cap_source *src = source_new(name, err, errlen);
    if (!src)
        return NULL;
    src->dpdk = first->dpdk;
    src->dpdk_queue = index;
    src->live = true;
    src->linktype = first->linktype;
    src->snaplen = first->snaplen;
    return src;
}

uint32_t cap_source_readers(const struct cap_source *src)
{
    if (src->dpdk)
        return cap_dpdk_port_queues(src->dpdk);
    return src->readers > 1 ? src->readers : 1;
}

static inline int64_t ts_to_ns(const struct cap_source *src, const struct timeval *tv)
{
    return (int64_t)tv->tv_sec * 1000000000 + (int64_t)tv->tv_usec * (src->ts_nano ? 1 : 1000);
}

static inline void put_frame(struct cap_source *src, struct cap_frame *f,
                             const struct pcap_pkthdr *h, const uint8_t *bytes, uint32_t caplen)
{
    uint8_t *dst = src->arena + src->arena_used;
    memcpy(dst, bytes, caplen);
    src->arena_used += caplen;
    f->data = dst;
    f->caplen = caplen;
    f->wirelen = h->len;
    f->ts_ns = ts_to_ns(src, &h->ts);
    f->linktype = src->linktype;
}

/* Only called with the arena empty, so no frame handed out points into the old block. */
static bool arena_fit(struct cap_source *src, uint32_t caplen)
{
    if (caplen <= src->arena_size)
        return true;
    uint8_t *bigger = malloc(caplen);
    if (!bigger)
        return false;
    free(src->arena);
    src->arena = bigger;
    src->arena_size = caplen;
    return true;
}

/* One line however the expression is written: a newline in it is only blank space to libpcap. */
static void filter_message(char *err, size_t errlen, const char *before, const char *bpf, const char *after,
                           const char *why)
{
    snprintf(err, errlen, "%s\"%.200s%s\"%s (libpcap: %s)", before, bpf, strlen(bpf) > 200 ? "..." : "", after, why);
    for (char *p = err; *p; p++)
        if ((unsigned char)*p < 0x20)
            *p = ' ';
}

bool cap_filter_check(const char *bpf, char *err, size_t errlen)
{
    if (!bpf || !*bpf)
        return true;
    pcap_t *dead = pcap_open_dead(DLT_EN10MB, CAP_MAX_SNAPLEN);
    if (!dead) {
        snprintf(err, errlen, "out of memory");
        return false;
    }
    struct bpf_program prog;
    const bool ok = pcap_compile(dead, &prog, bpf, 1, PCAP_NETMASK_UNKNOWN) == 0;
    if (ok)
        pcap_freecode(&prog);
    else
        filter_message(err, errlen, "bad capture filter ", bpf, "", pcap_geterr(dead));
    pcap_close(dead);
    return ok;
}

bool cap_source_set_filter(struct cap_source *src, const char *bpf, char *err, size_t errlen)
{
    if (src->live || src->dpdk || (!src->pcap && !src->ng)) {
        snprintf(err, errlen, "%s: a filter is set here for capture files only", src->name);
        return false;
    }
    if (src->ng) {
        uint16_t linktype = 0;
        char why[PCAP_ERRBUF_SIZE];
        if (cap_pcapng_set_filter(src->ng, bpf, &linktype, why, sizeof why))
            return true;
        char before[300], after[80];
        snprintf(before, sizeof before, "%.200s: the capture filter ", src->name);
        snprintf(after, sizeof after, " does not apply to its link type %u", linktype);
        filter_message(err, errlen, before, bpf, after, why);
        return false;
    }
    if (src->filtered) {
        pcap_freecode(&src->filter);
        src->filtered = false;
    }
    if (!bpf || !*bpf)
        return true;
    if (pcap_compile(src->pcap, &src->filter, bpf, 1, PCAP_NETMASK_UNKNOWN) != 0) {
        char before[300], after[80];
        snprintf(before, sizeof before, "%.200s: the capture filter ", src->name);
        snprintf(after, sizeof after, " does not apply to its link type %u", src->linktype);
        filter_message(err, errlen, before, bpf, after, pcap_geterr(src->pcap));
        return false;
    }
    src->filtered = true;
    return true;
}

static int file_burst(struct cap_source *src, struct cap_frame *frames, int max)
{
    int n = 0;

    if (src->held_hdr) {
        const struct pcap_pkthdr *h = src->held_hdr;
        if (!arena_fit(src, h->caplen)) {
            snprintf(src->err, sizeof src->err, "%s: out of memory for a %u-byte frame",
                     src->name, h->caplen);
            src->failed = true;
            return CAP_BURST_ERROR;
        }
        put_frame(src, &frames[n++], h, src->held_bytes, h->caplen);
        src->held_hdr = NULL;
        src->held_bytes = NULL;
    }
    while (n < max) {
        struct pcap_pkthdr *h;
        const u_char *bytes;
        int rc = pcap_next_ex(src->pcap, &h, &bytes);
        if (__builtin_expect(rc == 1, 1)) {
            src->frames_read++;
            if (src->filtered && !pcap_offline_filter(&src->filter, h, bytes))
                continue;
            if (h->caplen > src->arena_size - src->arena_used) {
                if (n > 0) {
                    src->held_hdr = h;
                    src->held_bytes = bytes;
                    break;
                }
                if (!arena_fit(src, h->caplen)) {
                    snprintf(src->err, sizeof src->err, "%s: out of memory for a %u-byte frame",
                             src->name, h->caplen);
                    src->failed = true;
                    return CAP_BURST_ERROR;
                }
            }
            put_frame(src, &frames[n++], h, bytes, h->caplen);
        } else if (rc == PCAP_ERROR_BREAK) {
            src->ended = true;
            break;
        } else {
            snprintf(src->err, sizeof src->err,
                     "%s: truncated or corrupted after frame %llu (libpcap: %s)", src->name,
                     (unsigned long long)src->frames_read, pcap_geterr(src->pcap));
            src->failed = true;
            break;
        }
    }
    return n;
}

/* No copy: the frames point into the reader's buffer, which only the burst's first read may move
 * (the previous burst's frames are no longer valid by then). */
static int pcapng_burst(struct cap_source *src, struct cap_frame *frames, int max)
{
    int n = 0;
    uint64_t bytes = 0;
    while (n < max) {
        struct cap_pcapng_frame f;
        const int rc = cap_pcapng_next(src->ng, n == 0, &f);
        if (__builtin_expect(rc == CAP_PCAPNG_FRAME, 1)) {
            frames[n++] = (struct cap_frame){
                .data = f.data, .caplen = f.caplen, .wirelen = f.wirelen, .ts_ns = f.ts_ns, .linktype = f.linktype};
            bytes += f.caplen;
        } else if (rc == CAP_PCAPNG_HOLD) {
            break;
        } else if (rc == CAP_PCAPNG_END) {
            src->ended = true;
            break;
        } else {
            bool damaged;
            const char *why = cap_pcapng_error(src->ng, &damaged);
            if (damaged)
                snprintf(src->err, sizeof src->err, "%s: truncated or corrupted after frame %llu (pcapng: %s)",
                         src->name, (unsigned long long)cap_pcapng_frames_read(src->ng), why);
            else
                snprintf(src->err, sizeof src->err, "%s: %s", src->name, why);
            src->failed = true;
            break;
        }
    }
    src->bytes += bytes;
    return n;
}

static void live_frame(u_char *user, const struct pcap_pkthdr *h, const u_char *bytes)
{
    struct cap_source *src = (struct cap_source *)user;
    size_t room = src->arena_size - src->arena_used;
    /* Cannot exceed room: the burst is stopped below while a maximal frame still fits. */
    uint32_t caplen = h->caplen <= room ? h->caplen : (uint32_t)room;
    put_frame(src, &src->cb_frames[src->cb_count++], h, bytes, caplen);
    if (src->arena_size - src->arena_used < src->snaplen)
        pcap_breakloop(src->pcap);
}

static int live_burst(struct cap_source *src, struct cap_frame *frames, int max)
{
    src->cb_frames = frames;
    src->cb_count = 0;
    int rc = pcap_dispatch(src->pcap, max, live_frame, (u_char *)src);
    if (rc == 0 && src->cb_count == 0 && src->poll_fd >= 0) {
        /* Nothing ready: wait up to the timeout. EINTR just ends the burst empty, which lets the
         * caller look at its signal flags. */
        struct pollfd pfd = {.fd = src->poll_fd, .events = POLLIN};
        if (poll(&pfd, 1, src->timeout_ms) > 0)
            rc = pcap_dispatch(src->pcap, max, live_frame, (u_char *)src);
    }
    /* PCAP_ERROR_BREAK is our own pcap_breakloop (arena nearly full): the burst is just short. */
    if (rc == PCAP_ERROR) {
        snprintf(src->err, sizeof src->err, "%s: capture failed (libpcap: %s)", src->name,
                 pcap_geterr(src->pcap));
        src->failed = true;
    }
    src->frames_read += (uint64_t)src->cb_count;
    return src->cb_count;
}

int cap_next_burst(struct cap_source *src, struct cap_frame *frames, int max)
{
    if (src->failed)
        return CAP_BURST_ERROR;
    if (src->ended)
        return CAP_BURST_END;
    if (max <= 0)
        return 0;
    src->arena_used = 0;
    int n;
    if (src->dpdk) {
        n = cap_dpdk_port_burst(src->dpdk, src->dpdk_queue, frames, max, src->arena, src->arena_size,
                                &src->arena_used);
        src->frames_read += (uint64_t)n;
    } else {
        n = src->live ? live_burst(src, frames, max)
            : src->ng ? pcapng_burst(src, frames, max)
                      : file_burst(src, frames, max);
    }
    if (n > 0) {
        src->frames += (uint64_t)n;
        src->bytes += src->arena_used;
        return n;
    }
    if (src->failed)
        return CAP_BURST_ERROR;
    if (src->ended)
        return CAP_BURST_END;
    return 0;
}

const char *cap_source_error(const struct cap_source *src)
{
    return src->failed ? src->err : "";
}

const char *cap_source_name(const struct cap_source *src)
{
    return src->name;
}

uint16_t cap_source_linktype(const struct cap_source *src)
{
    return src->ng ? cap_pcapng_linktype(src->ng) : src->linktype;
}

int64_t cap_source_offset(const struct cap_source *src)
{
    if (src->ng)
        return (int64_t)cap_pcapng_offset(src->ng);
    if (src->live || src->dpdk || !src->pcap)
        return -1;
    const off_t at = ftello(pcap_file(src->pcap)); /* -1 on a pipe */
    return at >= src->start_offset ? at - src->start_offset : -1;
}

void cap_source_stats(struct cap_source *src, struct cap_source_stats *out)
{
    *out = (struct cap_source_stats){.frames = src->frames, .bytes = src->bytes};
    if (src->dpdk) {
        if (src->dpdk_owner) /* the port's counters, once */
            cap_dpdk_port_stats(src->dpdk, &out->kernel_dropped, &out->iface_dropped);
    } else if (src->live) {
        struct pcap_stat ps;
        if (pcap_stats(src->pcap, &ps) == 0) {
            out->kernel_dropped = ps.ps_drop;
            out->iface_dropped = ps.ps_ifdrop;
        }
    }
}

void cap_close(struct cap_source *src)
{
    source_free(src);
}
