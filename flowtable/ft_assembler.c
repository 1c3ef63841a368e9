/* ft_assembler.c — drives the flow table from frames: configuration, the shared cds_lfht, the
 * input clock (moved by frames, or by ticks when a live capture is idle) and frame numbering,
 * and either the single-thread fast path or the dispatcher that hands packet records to worker
 * threads through bounded single-producer single-consumer rings.
 *
 * workers == 1: the caller's thread does everything inside ft_assembler_feed; it is a QSBR
 * reader only for the duration of each call (registered on entry, unregistered on exit), so it
 * may block freely between calls, and any thread may make the calls (one at a time).
 *
 * workers > 1: the caller's thread decodes, keys and hashes each frame and copies a packet record
 * (plus the frame's first min(caplen, M) bytes) into the ring of the worker that owns the key.
 * Control records (clock ticks, finish, stop) travel through the same rings, so they are ordered
 * after every packet dispatched before them. Each worker is a QSBR reader that announces a
 * quiescent state after every burst and goes offline while it sleeps. */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "flowtable/ft_internal.h"

#define FT_MAX_WORKERS 64
#define FT_MAX_PACKETS_PER_SESSION 65536u
#define FT_MAX_BYTES_PER_PACKET 262144u
#define FT_MAX_FLOW_BYTES (64u << 20)  /* one record with its session buffer */
#define FT_RING_BYTES (512u << 10)     /* per worker, before clamping the slot count */
#define FT_RING_MIN_SLOTS 64u
#define FT_RING_MAX_SLOTS 4096u
#define FT_PUBLISH_EVERY 32            /* records written before the tail is published */
#define FT_WORKER_BURST 64             /* records a worker handles between quiescent states */
#define FT_QS_EVERY 64                 /* single-thread path: packets between quiescent states */
#define FT_FEED_BURST 16               /* single-thread path: packets keyed before their lookups */
#define FT_SPINS 64                    /* yields before a waiting side goes to sleep */
#define FT_TICK_NS 1000000000ll        /* input clock between two clock records to the workers */
/* Live flows per bucket when the table is full (max_flows). The packet path prefetches a key's
 * bucket and its first node, so a few flows per bucket cost little; a bucket array four times
 * smaller stays in cache far better, and cds_lfht_destroy's walk over every bucket (one cache
 * miss each, in bit-reversed order) at the end of a run takes a quarter of the time. */
#define FT_FLOWS_PER_BUCKET 4
/* A timestamp this far behind the newest one starts a new clock segment (see ft_clock_advance). */
#define FT_CLOCK_REBASE_NS 1000000000ll

/* ---- names and defaults ---- */

const char *ft_end_reason_name(enum ft_end_reason reason)
{
    switch (reason) {
    case FT_END_CLOSED:
        return "closed";
    case FT_END_TIMEOUT:
        return "timeout";
    case FT_END_END_OF_INPUT:
        return "end-of-input";
    case FT_END_EVICTED:
        return "evicted";
    }
    return "unknown";
}

const char *ft_ready_trigger_name(enum ft_ready_trigger t)
{
    switch (t) {
    case FT_READY_NOT_YET:
        return "not_yet";
    case FT_READY_PACKETS:
        return "packets";
    case FT_READY_FIN:
        return "fin";
    case FT_READY_RST:
        return "rst";
    }
    return "unknown";
}

void ft_config_defaults(struct ft_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->max_flows = 1u << 20;
    cfg->packets_per_session = 32;
    cfg->bytes_per_packet = 128;
    cfg->port_reuse = FT_PORT_REUSE_SPLIT;
    /* Suricata's shipped suricata.yaml values (its code defaults are shorter for TCP). The
     * closed timeout only bounds how long the final ACK and other stragglers still join a
     * session that FIN/RST already ended. */
    cfg->timeouts = (struct ft_timeouts){
        .tcp_new = 60, .tcp_established = 600, .tcp_closed = 60,
        .udp_new = 30, .udp_established = 300,
        .other_new = 30, .other_established = 300,
    };
    cfg->decode.innermost = false; /* the outer session, as flowtable.h documents */
    cfg->workers = 1;
    cfg->hash_seed = 0;
    cfg->merge_timeouts = false;
    cfg->cut_frames = FT_CUT_FRAMES_AUTO;
    cfg->ready_packets = 0; /* no early verdicts: sessions are handed over when they end */
    cfg->emergency_enter_pct = 0;
    cfg->emergency_leave_pct = 0;
    /* Suricata's shipped suricata.yaml emergency-* values (flow-timeouts: tcp, udp, icmp for
     * "other"); they only apply once emergency_enter_pct turns the mode on. */
    cfg->emergency_timeouts = (struct ft_timeouts){
        .tcp_new = 5, .tcp_established = 100, .tcp_closed = 10,
        .udp_new = 10, .udp_established = 100,
        .other_new = 10, .other_established = 100,
    };
}

/* ---- SPSC ring ----
 *
 * head and tail count records since creation (never wrap in practice). The producer publishes
 * tail in batches; the consumer publishes head after each burst. A side that finds nothing to do
 * yields a few times, then sleeps on a condition variable after announcing it in *_sleeping;
 * the other side checks that flag after publishing. Both the publish and the flag use seq_cst,
 * so either the sleeper sees the new index or the publisher sees the flag (no lost wake-up). */
struct ft_ring {
    _Alignas(64) _Atomic uint64_t head; /* consumed; written by the worker */
    _Alignas(64) _Atomic uint64_t tail; /* published; written by the dispatcher */
    _Alignas(64) atomic_int producer_sleeping;
    atomic_int consumer_sleeping;
    /* dispatcher-private */
    _Alignas(64) uint64_t ptail;    /* next record to write */
    uint64_t phead;                 /* last head seen */
    uint64_t published;
    /* worker-private */
    _Alignas(64) uint64_t chead;
    uint8_t *slots;
    uint32_t mask;
    uint32_t slot_size;
    pthread_mutex_t lock;
    pthread_cond_t has_data;
    pthread_cond_t has_space;
};

struct ft_wthread {
    struct ft_assembler *as;
    struct ft_worker *w;
    struct ft_ring ring;
    pthread_t thread;
    bool started;
};

/* A recent frame that carried a flow, for FT_CUT_FRAMES_ATTACH: its flow and header bytes. A
 * few are kept because one session's frames may alternate between MAC pairs (a capture taken on
 * both sides of a router, as in the USTC-TFC2016 malware captures). */
#define FT_PREV_BYTES 128
#define FT_PREV_KEEP 4
struct ft_prev {
    bool valid;
    uint8_t dir;
    uint8_t ip_version;
    uint16_t linktype;
    uint32_t l3_off;
    uint32_t len;
    uint64_t hash;
    struct ft_key key;
    uint8_t bytes[FT_PREV_BYTES];
};

/* IP fragments. A datagram's later fragments carry no ports; they join the session of its first
 * fragment, found by the datagram's identity (addresses, identification; IPv4 also the protocol)
 * in a direct-mapped table of the first fragments seen lately. The identity is kept in the form
 * of a key (addr_lo = source, addr_hi = destination, the identification in the two port fields,
 * not sorted: a datagram has one direction), so it is hashed with the flow key's seeded hash. A
 * later fragment that comes before its first, or more than FT_FRAG_TIMEOUT_NS after it (Linux's
 * ipfrag_time), or whose entry a newer datagram took, stays without a flow. */
#define FT_FRAG_SLOTS 4096
#define FT_FRAG_TIMEOUT_NS (30 * 1000000000ll)
struct ft_frag {
    struct ft_key ident;
    struct ft_key key; /* the session of the first fragment */
    uint64_t hash;
    int64_t until; /* input clock */
    uint32_t input; /* ft_assembler.inputs when it was made: sessions never span inputs */
    uint8_t dir;
    bool used;
};

struct ft_assembler {
    struct ft_shared sh;
    int nw;
    struct ft_worker *workers;  /* nw, cache-line aligned */
    struct ft_wthread *threads; /* nw when nw > 1 */
    uint64_t seed;
    uint32_t copy_max;          /* bytes of a frame that travel with its record */

    /* dispatcher state: the feeding thread only */
    int64_t clock;       /* the input clock: monotone, INT64_MIN before the first frame */
    int64_t seg_start;   /* first timestamp of the current clock segment */
    int64_t seg_max;     /* newest timestamp of the segment */
    int64_t seg_clock0;  /* clock at the start of the segment */
    int64_t next_tick;
    int64_t tick_sent;   /* clock of the last clock record sent to the workers */
    bool cut_attach;     /* FT_CUT_FRAMES_ATTACH in effect */
    bool cut_tshark;     /* FT_CUT_FRAMES_TSHARK in effect */
    struct ft_prev prev[FT_PREV_KEEP]; /* ring, newest at prev_next - 1 */
    unsigned prev_next;
    struct ft_frag *frags; /* FT_FRAG_SLOTS */
    uint32_t inputs;       /* ft_assembler_finish_input calls so far */
    uint64_t frame_no;
    uint64_t ordinal;
    uint32_t id_shard, id_shards; /* ids: (ordinal - 1) · id_shards + id_shard + 1 */
    uint32_t since_qs;

    /* finish-input handshake with the workers */
    pthread_mutex_t done_lock;
    pthread_cond_t done_cond;
    int done_count;

    ft_counter frames, bytes, flowless, fragments_joined;
    ft_counter by_reason[CAP_DECODE_REASON_COUNT];
};

static int ft_ring_init(struct ft_ring *r, uint32_t copy_max)
{
    memset(r, 0, sizeof *r);
    uint32_t slot = (uint32_t)((sizeof(struct ft_pkt) + copy_max + 63) & ~(size_t)63);
    uint32_t n = FT_RING_MAX_SLOTS;
    while (n > FT_RING_MIN_SLOTS && (uint64_t)n * slot > FT_RING_BYTES)
        n >>= 1;
    r->slots = aligned_alloc(64, (size_t)n * slot);
    if (r->slots == NULL)
        return -1;
    r->mask = n - 1;
    r->slot_size = slot;
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    atomic_init(&r->producer_sleeping, 0);
    atomic_init(&r->consumer_sleeping, 0);
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->has_data, NULL);
    pthread_cond_init(&r->has_space, NULL);
    return 0;
}

static void ft_ring_fini(struct ft_ring *r)
{
    free(r->slots);
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->has_data);
    pthread_cond_destroy(&r->has_space);
}

static inline struct ft_pkt *ft_ring_slot(struct ft_ring *r, uint64_t i)
{
    return (struct ft_pkt *)(r->slots + (size_t)(i & r->mask) * r->slot_size);
}

static void ft_ring_publish(struct ft_ring *r)
{
    if (r->published == r->ptail)
        return;
    r->published = r->ptail;
    atomic_store(&r->tail, r->ptail);
    if (atomic_load(&r->consumer_sleeping)) {
        pthread_mutex_lock(&r->lock);
        pthread_cond_signal(&r->has_data);
        pthread_mutex_unlock(&r->lock);
    }
}

/* Dispatcher: a free slot, waiting for the worker if the ring is full. */
static struct ft_pkt *ft_ring_reserve(struct ft_ring *r)
{
    uint64_t size = (uint64_t)r->mask + 1;
    if (r->ptail - r->phead < size)
        return ft_ring_slot(r, r->ptail);
    r->phead = atomic_load_explicit(&r->head, memory_order_acquire);
    if (r->ptail - r->phead < size)
        return ft_ring_slot(r, r->ptail);
    ft_ring_publish(r); /* the worker must see what is there before we wait for it */
    for (int i = 0; i < FT_SPINS; i++) {
        sched_yield();
        r->phead = atomic_load_explicit(&r->head, memory_order_acquire);
        if (r->ptail - r->phead < size)
            return ft_ring_slot(r, r->ptail);
    }
    pthread_mutex_lock(&r->lock);
    atomic_store(&r->producer_sleeping, 1);
    while (r->ptail - (r->phead = atomic_load(&r->head)) >= size)
        pthread_cond_wait(&r->has_space, &r->lock);
    atomic_store(&r->producer_sleeping, 0);
    pthread_mutex_unlock(&r->lock);
    return ft_ring_slot(r, r->ptail);
}

static inline void ft_ring_commit(struct ft_ring *r)
{
    r->ptail++;
    if (r->ptail - r->published >= FT_PUBLISH_EVERY)
        ft_ring_publish(r);
}

/* Worker: records available, sleeping (QSBR-offline) while there are none. */
static uint64_t ft_ring_wait(struct ft_ring *r)
{
    uint64_t t = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (t != r->chead)
        return t - r->chead;
    for (int i = 0; i < FT_SPINS; i++) {
        sched_yield();
        t = atomic_load_explicit(&r->tail, memory_order_acquire);
        if (t != r->chead)
            return t - r->chead;
    }
    rcu_thread_offline();
    pthread_mutex_lock(&r->lock);
    atomic_store(&r->consumer_sleeping, 1);
    while ((t = atomic_load(&r->tail)) == r->chead)
        pthread_cond_wait(&r->has_data, &r->lock);
    atomic_store(&r->consumer_sleeping, 0);
    pthread_mutex_unlock(&r->lock);
    rcu_thread_online();
    return t - r->chead;
}

static void ft_ring_release(struct ft_ring *r, uint64_t n)
{
    r->chead += n;
    atomic_store(&r->head, r->chead);
    if (atomic_load(&r->producer_sleeping)) {
        pthread_mutex_lock(&r->lock);
        pthread_cond_signal(&r->has_space);
        pthread_mutex_unlock(&r->lock);
    }
}

/* ---- worker threads ---- */

static void ft_signal_done(struct ft_assembler *as)
{
    pthread_mutex_lock(&as->done_lock);
    as->done_count++;
    pthread_cond_broadcast(&as->done_cond);
    pthread_mutex_unlock(&as->done_lock);
}

static void *ft_worker_main(void *arg)
{
    struct ft_wthread *t = arg;
    struct ft_ring *r = &t->ring;
    struct ft_worker *w = t->w;
    bool stop = false;
    rcu_register_thread();
    while (!stop) {
        uint64_t avail = ft_ring_wait(r);
        if (avail > FT_WORKER_BURST)
            avail = FT_WORKER_BURST;
        uint64_t done = 0;
        rcu_read_lock();
        for (uint64_t i = 0; i < avail; i++) {
            struct ft_pkt *p = ft_ring_slot(r, r->chead + i);
            if (p->kind == FT_PKT_PACKET)
                ft_worker_prefetch(w, p);
        }
        while (done < avail) {
            struct ft_pkt *p = ft_ring_slot(r, r->chead + done);
            done++;
            if (p->kind == FT_PKT_PACKET) {
                const struct ft_pkt *next = ft_ring_slot(r, r->chead + done);
                if (done < avail && next->kind == FT_PKT_PACKET)
                    ft_worker_prefetch_flow(w, next);
                p->bytes = (const uint8_t *)(p + 1);
                ft_worker_packet(w, p);
            } else if (p->kind == FT_PKT_TICK) {
                if (p->clock_ns > w->clock)
                    w->clock = p->clock_ns;
            } else if (p->kind == FT_PKT_FINISH) {
                ft_worker_finish(w, p->clock_ns);
                ft_signal_done(t->as);
            } else {
                stop = true;
                break;
            }
        }
        if (!stop && w->clock != INT64_MIN)
            ft_worker_sweep(w);
        ft_worker_retire(w);
        rcu_read_unlock();
        ft_ring_release(r, done);
        rcu_quiescent_state();
    }
    /* Destroy without finish_input: the remaining flows are dropped without callbacks. */
    rcu_read_lock();
    ft_worker_flush(w, false);
    rcu_read_unlock();
    rcu_unregister_thread();
    return NULL;
}

/* ---- single-thread path: the caller's thread as a QSBR reader ----
 *
 * Registered only while inside an assembler call. The depth counter makes nested calls (a
 * session callback that feeds another assembler) safe; a thread that already is an online QSBR
 * reader of its own is used as it is. */
static _Thread_local int ft_tls_depth;
static _Thread_local bool ft_tls_registered;

static void ft_reader_enter(void)
{
    if (ft_tls_depth++ == 0) {
        ft_tls_registered = !rcu_read_ongoing();
        if (ft_tls_registered)
            rcu_register_thread();
    }
    rcu_read_lock();
}

static void ft_reader_leave(void)
{
    rcu_read_unlock();
    if (--ft_tls_depth == 0) {
        if (ft_tls_registered)
            rcu_unregister_thread(); /* offline: no grace period waits for this thread */
        else
            rcu_quiescent_state();
    }
}

/* ---- the input clock ----
 *
 * Timeouts run on packet time, but capture timestamps are not monotone: packets from several
 * queues arrive slightly out of order, and files made by concatenating captures (USTC-TFC2016)
 * jump back by years. The clock therefore moves only forward. Small steps back are ignored (the
 * clock holds at the newest timestamp, so reordering never shortens an idle time). A step back
 * of more than FT_CLOCK_REBASE_NS starts a new segment: from there the clock advances with the
 * new timestamps, so timeouts keep working in the later part of a concatenated file instead of
 * waiting until its timestamps catch up with the old maximum. A jump forward moves the clock
 * forward, and flows idle across it time out, as they would have in real time.
 *
 * The dispatcher stamps each packet with the clock, so every worker count sees the same clock
 * at the same packet, which is what makes sessions independent of the number of workers. */
#define FT_CLOCK_LIMIT (INT64_MAX / 2) /* 2^62 - 1 ns: about 146 years either side of 1970 */

/* a + b for a in ±FT_CLOCK_LIMIT and b in [0, 2 * FT_CLOCK_LIMIT], saturated at the limit. */
static int64_t ft_sat_add(int64_t a, int64_t b)
{
    if (a > 0 && b > FT_CLOCK_LIMIT - a)
        return FT_CLOCK_LIMIT;
    int64_t s = a + b; /* a <= 0, or a + b <= limit: no overflow */
    return s > FT_CLOCK_LIMIT ? FT_CLOCK_LIMIT : s;
}

static void ft_clock_reset(struct ft_assembler *as)
{
    as->clock = INT64_MIN;
    as->seg_start = as->seg_max = as->seg_clock0 = 0;
    as->next_tick = INT64_MIN;
    as->tick_sent = INT64_MIN;
}

static void ft_clock_advance(struct ft_assembler *as, int64_t ts)
{
    /* Clamped to ±FT_CLOCK_LIMIT, so every difference of two clock values fits in an int64. */
    const int64_t lim = FT_CLOCK_LIMIT;
    ts = ts > lim ? lim : ts < -lim ? -lim : ts;
    if (as->clock == INT64_MIN) {
        as->clock = as->seg_start = as->seg_max = as->seg_clock0 = ts;
        return;
    }
    if (ts > as->seg_max) {
        as->seg_max = ts;
        int64_t c = ft_sat_add(as->seg_clock0, as->seg_max - as->seg_start);
        if (c > as->clock)
            as->clock = c;
    } else if (as->seg_max - ts > FT_CLOCK_REBASE_NS) {
        as->seg_clock0 = as->clock;
        as->seg_start = as->seg_max = ts;
    }
}

/* ---- create / destroy ---- */

static uint64_t ft_random_seed(void)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof s, 0) != (ssize_t)sizeof s || s == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        s = ((uint64_t)ts.tv_nsec << 32) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 17) ^
            0x9e3779b97f4a7c15ull;
    }
    return s;
}

static int ft_check_timeout(double v, const char *name, char *err, size_t errlen)
{
    if (!isfinite(v) || v < 0 || v > 1e9) {
        snprintf(err, errlen, "flowtable: %s must be between 0 and 1e9 seconds, got %g", name, v);
        return -1;
    }
    return 0;
}

static int64_t ft_seconds_to_ns(double v)
{
    return (int64_t)llround(v * 1e9);
}

/* prefix names the struct in messages ("timeouts", "emergency_timeouts"). */
static int ft_check_timeouts(const struct ft_timeouts *t, const char *prefix, char *err,
                             size_t errlen)
{
    const struct {
        double v;
        const char *name;
    } all[] = {
        {t->tcp_new, "tcp_new"}, {t->tcp_established, "tcp_established"},
        {t->tcp_closed, "tcp_closed"}, {t->udp_new, "udp_new"},
        {t->udp_established, "udp_established"}, {t->other_new, "other_new"},
        {t->other_established, "other_established"},
    };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s.%s", prefix, all[i].name);
        if (ft_check_timeout(all[i].v, name, err, errlen) != 0)
            return -1;
    }
    return 0;
}

static void ft_timeouts_to_ns(const struct ft_timeouts *t, int64_t ns[FT_TC_COUNT])
{
    ns[FT_TC_TCP_NEW] = ft_seconds_to_ns(t->tcp_new);
    ns[FT_TC_TCP_ESTABLISHED] = ft_seconds_to_ns(t->tcp_established);
    ns[FT_TC_TCP_CLOSED] = ft_seconds_to_ns(t->tcp_closed);
    ns[FT_TC_UDP_NEW] = ft_seconds_to_ns(t->udp_new);
    ns[FT_TC_UDP_ESTABLISHED] = ft_seconds_to_ns(t->udp_established);
    ns[FT_TC_OTHER_NEW] = ft_seconds_to_ns(t->other_new);
    ns[FT_TC_OTHER_ESTABLISHED] = ft_seconds_to_ns(t->other_established);
}

static int ft_validate(const struct ft_config *cfg, char *err, size_t errlen)
{
    if (cfg->workers < 1 || cfg->workers > FT_MAX_WORKERS) {
        snprintf(err, errlen, "flowtable: workers must be 1..%d, got %d", FT_MAX_WORKERS,
                 cfg->workers);
        return -1;
    }
    if (cfg->max_flows < (uint32_t)cfg->workers) {
        snprintf(err, errlen,
                 "flowtable: max_flows (%u) must be at least the number of workers (%d)",
                 cfg->max_flows, cfg->workers);
        return -1;
    }
    if (cfg->id_shards > 1 && cfg->id_shard >= cfg->id_shards) {
        snprintf(err, errlen, "flowtable: id_shard must be below id_shards (%u), got %u", cfg->id_shards,
                 cfg->id_shard);
        return -1;
    }
    if (cfg->max_flows > (1u << 31)) {
        snprintf(err, errlen, "flowtable: max_flows must be at most 2^31, got %u", cfg->max_flows);
        return -1;
    }
    if (cfg->packets_per_session > FT_MAX_PACKETS_PER_SESSION) {
        snprintf(err, errlen, "flowtable: packets_per_session must be at most %u, got %u",
                 FT_MAX_PACKETS_PER_SESSION, cfg->packets_per_session);
        return -1;
    }
    if (cfg->bytes_per_packet > FT_MAX_BYTES_PER_PACKET) {
        snprintf(err, errlen, "flowtable: bytes_per_packet must be at most %u, got %u",
                 FT_MAX_BYTES_PER_PACKET, cfg->bytes_per_packet);
        return -1;
    }
    uint64_t buf = (uint64_t)cfg->packets_per_session *
                   (sizeof(struct ft_stored_packet) + cfg->bytes_per_packet);
    if (buf > FT_MAX_FLOW_BYTES) {
        snprintf(err, errlen,
                 "flowtable: a session buffer of %u packets x %u bytes is %llu bytes, more than "
                 "the %u allowed per flow",
                 cfg->packets_per_session, cfg->bytes_per_packet, (unsigned long long)buf,
                 FT_MAX_FLOW_BYTES);
        return -1;
    }
    if (cfg->cut_frames != FT_CUT_FRAMES_AUTO && cfg->cut_frames != FT_CUT_FRAMES_ATTACH &&
        cfg->cut_frames != FT_CUT_FRAMES_TSHARK) {
        snprintf(err, errlen, "flowtable: unknown cut_frames mode %d", (int)cfg->cut_frames);
        return -1;
    }
    if (cfg->port_reuse != FT_PORT_REUSE_SPLIT && cfg->port_reuse != FT_PORT_REUSE_MERGE) {
        snprintf(err, errlen, "flowtable: unknown port_reuse mode %d", (int)cfg->port_reuse);
        return -1;
    }
    if (ft_check_timeouts(&cfg->timeouts, "timeouts", err, errlen) != 0)
        return -1;
    /* The ready callback's view is the stored packets: they must all be there. */
    if (cfg->ready_packets > cfg->packets_per_session) {
        snprintf(err, errlen,
                 "flowtable: ready_packets (%u) must be at most packets_per_session (%u)",
                 cfg->ready_packets, cfg->packets_per_session);
        return -1;
    }
    if (cfg->emergency_enter_pct > 100) {
        snprintf(err, errlen,
                 "flowtable: emergency_enter_pct must be 0 (off) or 1..100, got %u",
                 cfg->emergency_enter_pct);
        return -1;
    }
    if (cfg->emergency_enter_pct > 0 && cfg->emergency_leave_pct >= cfg->emergency_enter_pct) {
        snprintf(err, errlen,
                 "flowtable: emergency_leave_pct (%u) must be below emergency_enter_pct (%u)",
                 cfg->emergency_leave_pct, cfg->emergency_enter_pct);
        return -1;
    }
    if (ft_check_timeouts(&cfg->emergency_timeouts, "emergency_timeouts", err, errlen) != 0)
        return -1;
    return 0;
}

static unsigned long ft_pow2_at_least(uint64_t n)
{
    unsigned long p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

/* Presized and never resized: auto-resize is unreliable on liburcu 0.13. The memory manager is
 * named explicitly (liburcu's mmap one, which cds_lfht_new picks for a bounded table on 64-bit
 * anyway): its bucket nodes are one flat array, so ft_bucket_of finds the bucket a key hashes
 * to and the packet path can prefetch it. */
static struct cds_lfht *ft_table_new(struct ft_shared *sh, unsigned long buckets)
{
    sh->bucket_at = cds_lfht_mm_mmap.bucket_at;
    sh->bucket_mask = buckets - 1;
    return _cds_lfht_new(buckets, buckets, buckets, 0, &cds_lfht_mm_mmap, &rcu_flavor, NULL);
}

struct ft_assembler *ft_assembler_create(const struct ft_config *cfg, ft_session_fn on_session,
                                         void *user, char *err, size_t errlen)
{
    char dummy[1];
    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = '\0';
    if (cfg == NULL || on_session == NULL) {
        snprintf(err, errlen, "flowtable: a config and a session callback are required");
        return NULL;
    }
    if (ft_validate(cfg, err, errlen) != 0)
        return NULL;

    struct ft_assembler *as = calloc(1, sizeof *as);
    if (as == NULL) {
        snprintf(err, errlen, "flowtable: out of memory");
        return NULL;
    }
    struct ft_shared *sh = &as->sh;
    sh->cfg = *cfg;
    sh->on_session = on_session;
    sh->user = user;
    sh->split = cfg->port_reuse == FT_PORT_REUSE_SPLIT;
    /* SplitCap has no timeouts: merge mode keeps one session per 5-tuple for the whole input
     * unless the user asks for timeouts with merge_timeouts. */
    if (sh->split || cfg->merge_timeouts)
        ft_timeouts_to_ns(&cfg->timeouts, sh->timeout_ns);
    /* Emergency timeouts apply in every mode: memory pressure outranks merge mode's one session
     * per 5-tuple (and emergency mode is off unless asked for). */
    ft_timeouts_to_ns(&cfg->emergency_timeouts, sh->emergency_timeout_ns);
    size_t k = cfg->packets_per_session;
    sh->flow_size = (sizeof(struct ft_flow) + k * sizeof(struct ft_stored_packet) +
                     k * cfg->bytes_per_packet + 63) & ~(size_t)63;
    as->nw = cfg->workers;
    as->id_shards = cfg->id_shards > 1 ? cfg->id_shards : 1;
    as->id_shard = as->id_shards > 1 ? cfg->id_shard : 0;
    as->seed = cfg->hash_seed ? cfg->hash_seed : ft_random_seed();
    as->copy_max = k ? cfg->bytes_per_packet : 0;
    as->cut_attach = cfg->cut_frames == FT_CUT_FRAMES_ATTACH ||
                     (cfg->cut_frames == FT_CUT_FRAMES_AUTO && !sh->split);
    as->cut_tshark = cfg->cut_frames == FT_CUT_FRAMES_TSHARK ||
                     (cfg->cut_frames == FT_CUT_FRAMES_AUTO && sh->split);
    ft_clock_reset(as);
    as->frags = calloc(FT_FRAG_SLOTS, sizeof *as->frags);
    pthread_mutex_init(&as->done_lock, NULL);
    pthread_cond_init(&as->done_cond, NULL);

    unsigned long buckets = ft_pow2_at_least(cfg->max_flows);
    buckets = buckets > FT_FLOWS_PER_BUCKET ? buckets / FT_FLOWS_PER_BUCKET : 1;
    sh->ht = ft_table_new(sh, buckets);
    size_t wsize = ((sizeof(struct ft_worker) * (size_t)as->nw) + 63) & ~(size_t)63;
    as->workers = aligned_alloc(64, wsize);
    if (as->workers)
        memset(as->workers, 0, wsize);
    if (sh->ht == NULL || as->workers == NULL || as->frags == NULL) {
        snprintf(err, errlen, "flowtable: out of memory for a table of %lu buckets", buckets);
        goto fail;
    }
    for (int i = 0; i < as->nw; i++) {
        if (ft_worker_init(&as->workers[i], sh, i, cfg->max_flows / (uint32_t)as->nw) != 0) {
            snprintf(err, errlen, "flowtable: out of memory");
            goto fail;
        }
    }

    if (as->nw > 1) {
        size_t tsize = (sizeof *as->threads * (size_t)as->nw + 63) & ~(size_t)63;
        as->threads = aligned_alloc(64, tsize);
        if (as->threads == NULL) {
            snprintf(err, errlen, "flowtable: out of memory");
            goto fail;
        }
        memset(as->threads, 0, tsize);
        for (int i = 0; i < as->nw; i++) {
            struct ft_wthread *t = &as->threads[i];
            t->as = as;
            t->w = &as->workers[i];
            if (ft_ring_init(&t->ring, as->copy_max) != 0) {
                snprintf(err, errlen, "flowtable: out of memory for worker rings");
                goto fail;
            }
        }
        for (int i = 0; i < as->nw; i++) {
            struct ft_wthread *t = &as->threads[i];
            int rc = pthread_create(&t->thread, NULL, ft_worker_main, t);
            if (rc != 0) {
                snprintf(err, errlen, "flowtable: cannot start worker thread %d: %s", i,
                         strerror(rc));
                goto fail;
            }
            t->started = true;
        }
    }
    return as;

fail:
    ft_assembler_destroy(as);
    return NULL;
}

/* Sends a control record to every worker, behind the packets already dispatched. */
static void ft_broadcast(struct ft_assembler *as, enum ft_pkt_kind kind, bool publish)
{
    int64_t clock = as->clock;
    for (int i = 0; i < as->nw; i++) {
        struct ft_wthread *t = &as->threads[i];
        if (!t->started)
            continue;
        struct ft_pkt *p = ft_ring_reserve(&t->ring);
        p->kind = (uint8_t)kind;
        p->clock_ns = clock;
        ft_ring_commit(&t->ring);
        if (publish)
            ft_ring_publish(&t->ring);
    }
    if (kind == FT_PKT_TICK)
        as->tick_sent = clock;
}

static void ft_stop_threads(struct ft_assembler *as)
{
    ft_broadcast(as, FT_PKT_STOP, true);
    for (int i = 0; i < as->nw; i++) {
        if (as->threads[i].started) {
            pthread_join(as->threads[i].thread, NULL);
            as->threads[i].started = false;
        }
    }
}

void ft_assembler_destroy(struct ft_assembler *as)
{
    if (as == NULL)
        return;
    if (as->threads) {
        ft_stop_threads(as);
    } else if (as->workers && as->sh.ht) {
        ft_reader_enter();
        ft_worker_flush(&as->workers[0], false);
        ft_reader_leave();
    }
    /* Every deleted flow's callback has run after this; then the pools hold all records. */
    rcu_barrier();
    if (as->workers) {
        for (int i = 0; i < as->nw; i++)
            ft_worker_release_pool(&as->workers[i]);
    }
    if (as->threads) {
        for (int i = 0; i < as->nw; i++)
            if (as->threads[i].ring.slots)
                ft_ring_fini(&as->threads[i].ring);
        free(as->threads);
    }
    if (as->sh.ht)
        (void)cds_lfht_destroy(as->sh.ht, NULL);
    free(as->workers);
    free(as->frags);
    pthread_mutex_destroy(&as->done_lock);
    pthread_cond_destroy(&as->done_cond);
    free(as);
}

/* ---- feeding ---- */

const struct cap_decode_opts *ft_assembler_decode_opts(const struct ft_assembler *as)
{
    return &as->sh.cfg.decode;
}

size_t ft_assembler_flow_size(const struct ft_assembler *as)
{
    return as->sh.flow_size;
}

void ft_feed_begin(struct ft_assembler *as)
{
    if (as->nw == 1) {
        ft_reader_enter();
        as->since_qs = 0;
    }
}

void ft_feed_end(struct ft_assembler *as)
{
    if (as->nw == 1) {
        struct ft_worker *w = &as->workers[0];
        if (as->clock > w->clock)
            w->clock = as->clock; /* frames without a flow move time too */
        if (w->clock != INT64_MIN)
            ft_worker_sweep(w);
        ft_worker_retire(w);
        ft_reader_leave();
    } else {
        if (as->clock != INT64_MIN && as->clock >= as->next_tick) {
            /* Workers see the clock only through their own packets; a clock record now and then
             * lets each sweep its idle flows even when none of its flows is busy. At most one
             * per feed call and per second of input time. */
            ft_broadcast(as, FT_PKT_TICK, false);
            as->next_tick = ft_sat_add(as->clock, FT_TICK_NS);
        }
        for (int i = 0; i < as->nw; i++)
            ft_ring_publish(&as->threads[i].ring);
    }
}

/* ---- frames cut by the snap length (enum ft_cut_frames) ---- */

/* tshark assigns no stream to a TCP header cut before 16 bytes or a UDP header before 8. */
static bool ft_l4_cut_short(const struct cap_packet *pkt, const struct ft_pkt *rec)
{
    if (pkt->reason == CAP_DECODE_OK)
        return false;
    uint32_t l4 = rec->layers.l4_off;
    uint8_t proto = rec->key.proto;
    uint32_t need = proto == 6 ? 16 : (proto == 17 || proto == 136) ? 8 : 0;
    if (need == 0 || l4 == CAP_ABSENT)
        return false;
    return pkt->caplen < l4 || pkt->caplen - l4 < need;
}

static void ft_prev_remember(struct ft_prev *pv, const struct cap_packet *pkt,
                             const struct ft_pkt *rec)
{
    pv->valid = pkt->data != NULL && pkt->layers.l3_off < FT_PREV_BYTES;
    pv->key = rec->key;
    pv->hash = rec->hash;
    pv->dir = rec->dir;
    pv->linktype = pkt->layers.linktype;
    pv->l3_off = pkt->layers.l3_off;
    pv->ip_version = pkt->layers.ip_version;
    pv->len = pkt->caplen < FT_PREV_BYTES ? pkt->caplen : FT_PREV_BYTES;
    if (pv->valid)
        memcpy(pv->bytes, pkt->data, pv->len);
}

/* The record of a frame that carries no key of its own (cut before its ports, a later IP
 * fragment) but belongs to a flow known from an earlier frame: that flow, in direction dir. */
static void ft_pkt_of_flow(struct ft_pkt *rec, const struct ft_key *key, uint64_t hash, uint8_t dir,
                           const struct cap_packet *pkt)
{
    rec->key = *key;
    rec->hash = hash;
    rec->dir = dir;
    ft_pkt_fill_frame(rec, pkt);
}

/* Does a frame cut before its ports continue the flow of a recent flow frame? The bytes it has
 * left must name the same flow, in the same or the opposite direction: the link header past the
 * MAC addresses, IP version and protocol must be equal; when at least one whole IP address is
 * left, the addresses decide (a capture on both sides of a router sees one session with two MAC
 * pairs); otherwise the MAC addresses must agree too. Fills rec with that flow and direction. */
static bool ft_cut_continues(const struct ft_prev *pv, const struct cap_packet *pkt,
                             struct ft_pkt *rec)
{
    if (!pv->valid || pkt->data == NULL || pkt->caplen >= pkt->wirelen ||
        pkt->layers.linktype != pv->linktype)
        return false;
    if (pkt->reason != CAP_DECODE_TRUNCATED_L2 && pkt->reason != CAP_DECODE_TRUNCATED_IP &&
        pkt->reason != CAP_DECODE_TRUNCATED_L4)
        return false;
    const uint8_t *a = pkt->data, *b = pv->bytes;
    uint32_t l3 = pv->l3_off;
    uint32_t alen = pv->ip_version == 4 ? 4 : 16;
    uint32_t src = l3 + (pv->ip_version == 4 ? 12 : 8);
    uint32_t n = pkt->caplen;
    if (n > src + 2 * alen)
        n = src + 2 * alen;
    if (n > pv->len)
        return false; /* cannot happen: a flow frame has its whole IP header */
    bool mac_same = true, mac_swapped = true;
    bool ether = pv->linktype == CAP_LINK_EN10MB && l3 >= 14;
    for (uint32_t i = 0; i < n && i < l3; i++) {
        if (ether && i < 12) {
            mac_same &= a[i] == b[i];
            mac_swapped &= a[i] == b[i < 6 ? i + 6 : i - 6];
        } else if (a[i] != b[i]) {
            return false;
        }
    }
    if (n > l3 && (a[l3] >> 4) != (b[l3] >> 4))
        return false;
    uint32_t proto_at = l3 + (pv->ip_version == 4 ? 9 : 6);
    if (n > proto_at && a[proto_at] != b[proto_at])
        return false;
    bool ip_same = true, ip_swapped = true;
    for (uint32_t i = src; i < n; i++) {
        ip_same &= a[i] == b[i];
        ip_swapped &= a[i] == b[i < src + alen ? i + alen : i - alen];
    }
    bool same, swapped;
    if (n >= src + alen) {
        same = ip_same;
        swapped = ip_swapped;
    } else {
        same = mac_same && ip_same;
        swapped = mac_swapped && ip_swapped;
    }
    if (!same && !swapped)
        return false;
    ft_pkt_of_flow(rec, &pv->key, pv->hash, (uint8_t)(same ? pv->dir : pv->dir ^ 1), pkt);
    return true;
}

/* ---- IP fragments (struct ft_frag) ---- */

static struct ft_frag *ft_frag_slot(struct ft_assembler *as, const struct cap_packet *pkt,
                                    struct ft_key *ident)
{
    memset(ident, 0, sizeof *ident);
    size_t alen = pkt->layers.ip_version == 4 ? 4 : 16;
    memcpy(ident->addr_lo, pkt->src_addr, alen);
    memcpy(ident->addr_hi, pkt->dst_addr, alen);
    ident->port_lo = (uint16_t)(pkt->frag_id >> 16);
    ident->port_hi = (uint16_t)pkt->frag_id;
    ident->vlan = ft_innermost_vlan(pkt);
    ident->ip_version = pkt->layers.ip_version;
    uint64_t h = ft_key_hash(ident, as->seed);
    return &as->frags[(h >> 20) & (FT_FRAG_SLOTS - 1)];
}

/* A first fragment that got its flow: the later ones will look for it. Out of line, as is the
 * lookup: fragments are rare, and the frame path they would sit in is the hot one. */
static __attribute__((noinline, cold)) void ft_frag_remember(struct ft_assembler *as,
                                                             const struct cap_packet *pkt,
                                                             const struct ft_pkt *rec)
{
    struct ft_key ident;
    struct ft_frag *e = ft_frag_slot(as, pkt, &ident);
    e->ident = ident;
    e->key = rec->key;
    e->hash = rec->hash;
    e->dir = rec->dir;
    e->until = ft_sat_add(as->clock, FT_FRAG_TIMEOUT_NS);
    e->input = as->inputs;
    e->used = true;
}

/* A later fragment: the flow and direction of its datagram's first fragment, if known. */
static __attribute__((noinline, cold)) bool ft_frag_join(struct ft_assembler *as,
                                                          const struct cap_packet *pkt,
                                                          struct ft_pkt *rec)
{
    if (pkt->layers.l3_off == CAP_ABSENT)
        return false;
    struct ft_key ident;
    const struct ft_frag *e = ft_frag_slot(as, pkt, &ident);
    if (!e->used || e->input != as->inputs || as->clock > e->until ||
        memcmp(&e->ident, &ident, sizeof ident) != 0)
        return false;
    ft_pkt_of_flow(rec, &e->key, e->hash, e->dir, pkt);
    return true;
}

/* Frame counters, frame number and the clock for one frame; fills the worker's record when the
 * frame carries a flow. */
static bool ft_frame_in(struct ft_assembler *as, const struct cap_packet *pkt, struct ft_pkt *rec)
{
    ft_count(&as->frames, 1);
    ft_count(&as->bytes, pkt->wirelen);
    ft_count(&as->by_reason[pkt->reason < CAP_DECODE_REASON_COUNT ? pkt->reason : 0], 1);
    as->frame_no++;
    as->ordinal++;
    ft_clock_advance(as, pkt->ts_ns);
    if (ft_pkt_from_packet(pkt, as->seed, rec)) {
        if (as->cut_tshark && ft_l4_cut_short(pkt, rec)) {
            ft_count(&as->flowless, 1);
            return false;
        }
        if (as->cut_attach) {
            ft_prev_remember(&as->prev[as->prev_next % FT_PREV_KEEP], pkt, rec);
            as->prev_next++;
        }
        if (pkt->frag == CAP_FRAG_FIRST)
            ft_frag_remember(as, pkt, rec);
    } else if (pkt->frag == CAP_FRAG_LATER && ft_frag_join(as, pkt, rec)) {
        ft_count(&as->fragments_joined, 1);
    } else {
        bool found = false;
        for (unsigned i = 1; as->cut_attach && !found && i <= FT_PREV_KEEP; i++)
            found = ft_cut_continues(&as->prev[(as->prev_next - i) % FT_PREV_KEEP], pkt, rec);
        if (!found) {
            ft_count(&as->flowless, 1);
            return false;
        }
    }
    rec->clock_ns = as->clock;
    rec->frame = as->frame_no;
    rec->ordinal = (as->ordinal - 1) * as->id_shards + as->id_shard + 1;
    return true;
}

/* Copies the record and the frame's first bytes into the ring of the worker owning the key. */
static void ft_dispatch(struct ft_assembler *as, const struct cap_packet *pkt,
                        const struct ft_pkt *rec)
{
    int owner = (int)(((rec->hash >> 32) * (uint64_t)as->nw) >> 32);
    struct ft_ring *ring = &as->threads[owner].ring;
    struct ft_pkt *slot = ft_ring_reserve(ring);
    *slot = *rec;
    uint32_t n = pkt->caplen < as->copy_max ? pkt->caplen : as->copy_max;
    if (pkt->data == NULL)
        n = 0;
    if (n)
        memcpy(slot + 1, pkt->data, n);
    slot->nbytes = n;
    slot->bytes = NULL; /* the worker points it at its slot */
    ft_ring_commit(ring);
}

void ft_feed_burst(struct ft_assembler *as, const struct cap_packet *pkts, int n)
{
    struct ft_pkt recs[FT_FEED_BURST];
    if (as->nw > 1) {
        for (int i = 0; i < n; i++)
            if (ft_frame_in(as, &pkts[i], &recs[0]))
                ft_dispatch(as, &pkts[i], &recs[0]);
        return;
    }
    /* Single thread: key a small burst first and start loading what the lookups will touch,
     * then run the flows; memory latency, not instructions, is what a flow table pays. */
    struct ft_worker *w = &as->workers[0];
    for (int base = 0; base < n; base += FT_FEED_BURST) {
        int end = n - base < FT_FEED_BURST ? n : base + FT_FEED_BURST;
        int m = 0;
        for (int i = base; i < end; i++) {
            struct ft_pkt *p = &recs[m];
            if (!ft_frame_in(as, &pkts[i], p))
                continue;
            p->bytes = pkts[i].data;
            p->nbytes = pkts[i].data ? pkts[i].caplen : 0;
            ft_worker_prefetch(w, p);
            m++;
        }
        ft_worker_packets(w, recs, m);
        as->since_qs += (uint32_t)m;
        if (as->since_qs >= FT_QS_EVERY) {
            /* Let grace periods end during long feeds so recycled records come back. */
            as->since_qs = 0;
            ft_worker_retire(w);
            rcu_read_unlock();
            rcu_quiescent_state();
            rcu_read_lock();
        }
    }
}

void ft_assembler_feed_packets(struct ft_assembler *as, const struct cap_packet *pkts, int n)
{
    ft_feed_begin(as);
    ft_feed_burst(as, pkts, n);
    ft_feed_end(as);
}

void ft_assembler_on_ready(struct ft_assembler *as, ft_session_fn on_ready, void *user)
{
    as->sh.on_ready = on_ready;
    as->sh.ready_user = user;
}

/* What a frame with this timestamp would do to the clock, and the sweeps that follow, without a
 * frame: a live capture that goes quiet still ends its idle flows. */
void ft_assembler_tick(struct ft_assembler *as, int64_t now_ns)
{
    ft_clock_advance(as, now_ns);
    if (as->nw == 1) {
        ft_feed_begin(as);
        ft_feed_end(as); /* moves the worker's clock, sweeps, retires */
        return;
    }
    /* A clock record to every worker, even within a second of the last one (feed's rate limit):
     * ticks come from a timer, seldom, and a quiet link gets nothing else. Only a clock that
     * moved is worth sending. */
    if (as->clock != INT64_MIN && as->clock > as->tick_sent) {
        ft_broadcast(as, FT_PKT_TICK, true);
        as->next_tick = ft_sat_add(as->clock, FT_TICK_NS);
    }
}

void ft_assembler_finish_input(struct ft_assembler *as)
{
    if (as->nw == 1) {
        ft_reader_enter();
        ft_worker_finish(&as->workers[0], as->clock);
        ft_reader_leave();
    } else {
        pthread_mutex_lock(&as->done_lock);
        as->done_count = 0;
        pthread_mutex_unlock(&as->done_lock);
        ft_broadcast(as, FT_PKT_FINISH, true);
        pthread_mutex_lock(&as->done_lock);
        while (as->done_count < as->nw)
            pthread_cond_wait(&as->done_cond, &as->done_lock);
        pthread_mutex_unlock(&as->done_lock);
    }
    as->frame_no = 0;
    for (int i = 0; i < FT_PREV_KEEP; i++)
        as->prev[i].valid = false;
    as->inputs++;
    ft_clock_reset(as);
}

void ft_assembler_stats(struct ft_assembler *as, struct ft_stats *out)
{
    memset(out, 0, sizeof *out);
    out->frames = ft_counter_get(&as->frames);
    out->bytes = ft_counter_get(&as->bytes);
    out->flowless = ft_counter_get(&as->flowless);
    out->fragments_joined = ft_counter_get(&as->fragments_joined);
    for (int i = 0; i < as->nw; i++) {
        struct ft_worker *w = &as->workers[i];
        out->flows_created += ft_counter_get(&w->created);
        out->flows_active += ft_counter_get(&w->active);
        out->flows_evicted += ft_counter_get(&w->evicted);
        out->flows_timed_out += ft_counter_get(&w->timed_out);
        out->port_reuse_splits += ft_counter_get(&w->splits);
        out->refused_packets += ft_counter_get(&w->refused);
        out->flows_ready += ft_counter_get(&w->readied);
        out->emergency_entered += ft_counter_get(&w->emergency_entered);
        out->emergency_active += ft_counter_get(&w->emergency_active);
        out->memory_bytes += ft_counter_get(&w->memory);
    }
    out->decode.frames = out->frames;
    for (int r = 0; r < CAP_DECODE_REASON_COUNT; r++)
        out->decode.by_reason[r] = ft_counter_get(&as->by_reason[r]);
}

void ft_stats_add(struct ft_stats *sum, const struct ft_stats *part)
{
    sum->frames += part->frames;
    sum->bytes += part->bytes;
    sum->flowless += part->flowless;
    sum->fragments_joined += part->fragments_joined;
    sum->flows_created += part->flows_created;
    sum->flows_active += part->flows_active;
    sum->flows_evicted += part->flows_evicted;
    sum->flows_timed_out += part->flows_timed_out;
    sum->port_reuse_splits += part->port_reuse_splits;
    sum->refused_packets += part->refused_packets;
    sum->flows_ready += part->flows_ready;
    sum->emergency_entered += part->emergency_entered;
    sum->emergency_active += part->emergency_active;
    sum->memory_bytes += part->memory_bytes;
    cap_decode_stats_add(&sum->decode, &part->decode);
}
