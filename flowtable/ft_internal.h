/* ft_internal.h — private to flowtable/: the flow record, the per-worker table state, the packet
 * record the dispatcher hands to a worker, and internal entry points.
 *
 * Ownership model. One cds_lfht (QSBR flavour) holds every live flow of an assembler. A flow
 * belongs to exactly one worker: the worker index is a function of the flow's symmetric key
 * hash, so both directions of a session reach the same worker, and only that worker ever looks
 * the flow up, changes it or deletes it. Other workers walk past its node inside the table's
 * split-ordered lists, which is why a deleted flow goes back to its owner's free list only after
 * an RCU grace period (call_rcu), never at once.
 *
 * The unit tests include this header to drive the assembler with hand-built struct cap_packet
 * values (ft_assembler_feed_packets), without the decoder. */
#ifndef NETLM_FT_INTERNAL_H
#define NETLM_FT_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <urcu-qsbr.h>
#include <urcu/rculfhash.h>

#include "flowtable/flowtable.h"

#define FT_TCP_FIN 0x01
#define FT_TCP_SYN 0x02
#define FT_TCP_RST 0x04
#define FT_TCP_ACK 0x10

/* TCP header bytes a frame must hold before its flags and sequence number are used for state:
 * through the window field, which is also what tshark needs before it assigns a tcp.stream. */
#define FT_TCP_TRUSTED_LEN 16

/* Timeout classes: each has one idle timeout, so each class's LRU list is ordered by expiry and
 * a sweep only ever looks at list heads. */
enum ft_tclass {
    FT_TC_TCP_NEW = 0,
    FT_TC_TCP_ESTABLISHED, /* ESTABLISHED and CLOSING */
    FT_TC_TCP_CLOSED,
    FT_TC_UDP_NEW,
    FT_TC_UDP_ESTABLISHED,
    FT_TC_OTHER_NEW,
    FT_TC_OTHER_ESTABLISHED,
    FT_TC_COUNT
};

/* Everything a worker needs to know about one frame. The dispatcher fills it; with several
 * workers it travels through the ring, followed by a copy of the frame's first bytes. */
enum ft_pkt_kind {
    FT_PKT_PACKET = 0,
    FT_PKT_TICK = 1,   /* clock_ns only: the input clock moved on */
    FT_PKT_FINISH = 2, /* end of input at clock_ns */
    FT_PKT_STOP = 3,
};

struct ft_pkt {
    struct ft_key key;
    uint64_t hash;
    int64_t ts_ns;
    int64_t clock_ns;     /* largest timestamp of this input so far (this frame included) */
    uint64_t frame;       /* 1-based within the current input */
    uint64_t ordinal;     /* 1-based over the whole run; a session's id is its first frame's */
    const uint8_t *bytes; /* the frame's first nbytes bytes */
    uint32_t nbytes;
    uint32_t caplen;
    uint32_t wirelen;
    uint32_t tcp_seq;
    struct cap_layers layers;
    uint8_t dir;       /* canonical direction: 0 = sent by key.addr_lo/port_lo */
    uint8_t tcp_flags; /* 0 unless tcp_ok */
    /* Bits, not bytes: the record is exactly two cache lines, and one more byte would make every
     * ring slot of a counters-only run a line longer. */
    uint8_t tcp_ok : 1;      /* TCP flags and seq come from a frame holding
                                FT_TCP_TRUSTED_LEN bytes */
    uint8_t has_payload : 1; /* the decoder found L4 payload in the frame (payload_len > 0) */
    uint8_t kind;            /* enum ft_pkt_kind */
};
_Static_assert(sizeof(struct ft_pkt) == 128, "a packet record is two cache lines");

/* The innermost VLAN tag's ID (0 untagged) names the network a session lives in; outer tags of a
 * QinQ or provider network are the same for both directions anyway. Deeper stacks than the
 * decoder remembers use the deepest remembered tag. */
static inline uint16_t ft_innermost_vlan(const struct cap_packet *pkt)
{
    unsigned nv = pkt->vlan_count < CAP_MAX_VLANS ? pkt->vlan_count : CAP_MAX_VLANS;
    return nv ? (uint16_t)(pkt->vlan_ids[nv - 1] & 0x0fff) : 0;
}

/* Builds the worker's record of a decoded packet (all but clock, frame, ordinal, bytes). Returns
 * false for a frame that carries no flow. */
bool ft_pkt_from_packet(const struct cap_packet *pkt, uint64_t seed, struct ft_pkt *out);
/* The frame's own fields of a record (time, lengths, layers), TCP fields cleared. */
void ft_pkt_fill_frame(struct ft_pkt *rec, const struct cap_packet *pkt);
/* The packet's L4 offset; for a frame the decoder stopped inside its L4 header, derived from the
 * IP header when nothing lies between them. CAP_ABSENT when unknown. */
uint32_t ft_l4_offset(const struct cap_packet *pkt);

/* One flow. Line 0 is what a lookup touches (table node, key, hash); lines 1 and 2 what every
 * packet updates, and the record's owner. With K = 0 (counters only) a record is these three
 * lines: records are the bulk of the table's memory and of its cache misses, so a new field has
 * to fit in them (line 2 has one byte to spare). The session buffer (K stored-packet entries, then
 * K×M bytes) follows in the same record; the entries' byte pointers are set once when the record
 * is carved from its slab and stay valid while it is recycled.
 *
 * A deleted record is still read by other workers' lookups during its grace period, but only
 * line 0 (node and key), so what reclamation needs (free list link, batch, rcu_head, the handoff
 * flag) overlays line 1 (LRU links, times, counters), which nobody reads once the flow has
 * ended. */
struct ft_worker;
struct ft_flow {
    struct cds_lfht_node node;
    struct ft_key key;
    uint64_t hash;

    union {
        struct { /* while live */
            struct ft_flow *lru_prev, *lru_next;
            int64_t clock_last; /* the input clock at its last packet: idle time is measured on it */
            int64_t last_ns;    /* its latest packet time (first_ns: its earliest) */
            uint64_t pkts[2]; /* by canonical direction; initiator/responder on output */
            uint64_t bytes[2];
        };
        struct { /* once deleted: free list, reclaimed list or retired batch */
            struct ft_flow *free_next;
            struct ft_flow *batch_tail; /* first record of a retired batch: its last record */
            struct rcu_head rcu;        /* first record of a retired batch */
            atomic_int rcu_handoff;     /* first record of a retired batch: release/acquire edge
                                           from the deleting worker to the RCU callback */
        };
    };

    uint32_t base_seq[2]; /* per canonical direction, as tshark's tcp.stream split uses it */
    uint32_t n_stored;
    uint16_t linktype;
    uint8_t tcp_flags[2];
    uint8_t tcp_state; /* enum ft_tcp_state */
    uint8_t init_dir;  /* canonical direction of the first packet */
    uint8_t seen_dirs; /* bit per canonical direction */
    uint8_t fin_dirs;
    uint8_t base_set;
    uint8_t tclass; /* enum ft_tclass: which LRU list it is on */
    uint8_t ready;  /* enum ft_ready_trigger: set once; from then on nothing more is stored */
    int64_t first_ns;
    uint64_t first_frame;
    uint64_t id;
    uint64_t payload_pkts; /* packets with L4 payload, both directions */

    /* Fields below survive recycling (not cleared for a new flow). */
    struct ft_worker *owner;

    _Alignas(64) struct ft_stored_packet stored[]; /* K entries, then K×M bytes */
};
_Static_assert(offsetof(struct ft_flow, stored) == 192,
               "a flow record without its session buffer is three cache lines");

/* Records come from slabs of FT_SLAB_BYTES (more if one record is larger), carved on demand and
 * never given back before the worker's pool is released: no allocator call and no allocator
 * header per flow, records packed at a 64-byte stride, and slabs aligned so that the kernel can
 * back them with transparent huge pages (fewer page faults and TLB misses over a large table). */
#define FT_SLAB_BYTES ((size_t)2 << 20)
struct ft_slab {
    struct ft_slab *next;
    size_t size;
};

struct ft_lru {
    struct ft_flow *head, *tail; /* head = least recently seen */
};

/* What all workers of an assembler share; read-only after creation. */
struct ft_shared {
    struct cds_lfht *ht;
    struct cds_lfht_node *(*bucket_at)(struct cds_lfht *ht, unsigned long index);
    unsigned long bucket_mask; /* buckets - 1 */
    struct ft_config cfg;
    int64_t timeout_ns[FT_TC_COUNT];           /* 0 = never */
    int64_t emergency_timeout_ns[FT_TC_COUNT]; /* in emergency mode; 0 = never */
    bool split;                                /* FT_PORT_REUSE_SPLIT */
    size_t flow_size;                          /* one record with its session buffer */
    ft_session_fn on_session;
    void *user;
    /* Early verdicts: set by ft_assembler_on_ready before the first feed; workers see them
     * through the ring (or the same thread), which orders the write before their reads. */
    ft_session_fn on_ready;
    void *ready_user;
};

/* A counter written by one thread and read by ft_assembler_stats from any thread: relaxed
 * atomics, and no read-modify-write instruction on the packet path. */
typedef _Atomic uint64_t ft_counter;
static inline void ft_count(ft_counter *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}
static inline uint64_t ft_counter_get(ft_counter *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* Direct-mapped front cache of a worker's own flows, indexed by the low bits of the key hash: a
 * busy flow is found without walking the cds_lfht bucket (a cache miss per packet on a large
 * table). Private to the owner; an entry is cleared before its flow is deleted. */
#define FT_FRONT_BITS 13
/* The slot keeps the flow's hash beside it, so that a packet of another flow (a new flow, most
 * often) is told apart without loading the cached flow. flow != NULL: hash == flow->hash. */
struct ft_front {
    uint64_t hash;
    struct ft_flow *flow;
};

/* The flows one worker owns, and its pool of records. */
struct ft_worker {
    struct ft_shared *sh;
    int index;
    uint32_t cap;  /* live flows allowed: max_flows / workers */
    uint32_t live;
    /* Emergency mode switches when live reaches enter_at or drops below leave_at; whichever
     * switch cannot happen in the current mode holds a value live never meets (UINT32_MAX, 0),
     * so inserting or ending a flow costs one compare. */
    uint32_t enter_at;
    uint32_t leave_at;
    struct ft_flow *free_list;
    struct ft_slab *slabs;        /* every slab of this worker, newest first */
    uint8_t *carve, *carve_end;   /* the part of the newest slab not handed out yet */
    /* Records carved so far, and the most it may carve: cap plus room for the ended flows that
     * wait out a grace period before they can be reused (ft_record_limit). Beyond it a new flow
     * waits for a record to come back, and is refused rather than memory grown if none does
     * (starved: one wait was in vain, none came back since). */
    uint32_t records, record_limit;
    bool starved;
    /* Records whose grace period has ended, pushed by the call_rcu thread; the owner takes the
     * whole list at once (exchange with NULL), so there is no ABA problem. */
    _Alignas(64) _Atomic(struct ft_flow *) reclaimed;
    _Alignas(64) struct ft_lru lru[FT_TC_COUNT];
    int64_t timeout_ns[FT_TC_COUNT]; /* in effect now: the shared normal or emergency set */
    int64_t clock;
    uint32_t since_sweep;
    bool emergency;
    uint32_t emergency_enter; /* live flows that start emergency mode; UINT32_MAX = off */
    uint32_t emergency_leave; /* live flows below which it ends */
    struct ft_session out; /* scratch for the callback */
    struct ft_front *front; /* 2^FT_FRONT_BITS entries */
    struct ft_flow *retired; /* deleted, waiting for one call_rcu for the batch */
    struct ft_flow *retired_tail;
    uint32_t n_retired;

    ft_counter created, evicted, timed_out, splits, refused, active;
    ft_counter readied, emergency_entered, emergency_active, memory;
};

/* Returns -1 when out of memory. */
int ft_worker_init(struct ft_worker *w, struct ft_shared *sh, int index, uint32_t cap);
/* The calling thread must be a registered QSBR reader inside rcu_read_lock. */
void ft_worker_packet(struct ft_worker *w, const struct ft_pkt *p);
/* ft_worker_packet over n records, loading the flow (or bucket) of a later record while the
 * current one runs. */
void ft_worker_packets(struct ft_worker *w, const struct ft_pkt *p, int n);
/* The bucket node that a key hash leads to, as liburcu computes it (hash modulo the bucket
 * count); only ever read for prefetching. */
static inline struct cds_lfht_node *ft_bucket_of(const struct ft_shared *sh, uint64_t hash)
{
    return sh->bucket_at(sh->ht, (unsigned long)hash & sh->bucket_mask);
}
/* Starts loading the first node after a bucket node or a flow's node: what an insertion, a
 * lookup or a deletion reads next. Other workers may change node->next: a relaxed load. */
static inline void ft_prefetch_next(struct cds_lfht_node *node)
{
    uintptr_t next = __atomic_load_n((uintptr_t *)&node->next, __ATOMIC_RELAXED);
    __builtin_prefetch((const void *)(next & ~(uintptr_t)7), 0, 3); /* minus liburcu's flags */
}

static inline struct ft_front *ft_front_slot(const struct ft_worker *w, uint64_t hash)
{
    return &w->front[hash & ((1u << FT_FRONT_BITS) - 1)];
}

/* A pipeline of loads ahead of the packet being handled, so that cache misses overlap. First,
 * for a packet several positions ahead: its front-cache slot and its bucket node. */
static inline void ft_worker_prefetch(const struct ft_worker *w, const struct ft_pkt *p)
{
    __builtin_prefetch(ft_front_slot(w, p->hash), 0, 3);
    __builtin_prefetch(ft_bucket_of(w->sh, p->hash), 0, 3);
}
/* Then, a few positions ahead: the flow, when its front-cache slot holds it; otherwise (a new
 * flow, most often) the first node of its bucket, where the insertion's walk starts. */
static inline void ft_worker_prefetch_flow(const struct ft_worker *w, const struct ft_pkt *p)
{
    const struct ft_front *slot = ft_front_slot(w, p->hash);
    const struct ft_flow *f = slot->flow;
    if (f && slot->hash == p->hash) {
        __builtin_prefetch(f, 1, 3);
        __builtin_prefetch((const char *)f + 64, 1, 3);
        __builtin_prefetch((const char *)f + 128, 1, 3);
    } else {
        ft_prefetch_next(ft_bucket_of(w->sh, p->hash));
    }
}
/* Queues the batch of deleted flows for reclamation after a grace period (call_rcu). Called at
 * the end of each burst; needs a registered thread. */
void ft_worker_retire(struct ft_worker *w);
/* Ends every flow idle for longer than its timeout at the worker's clock (oldest first). */
void ft_worker_sweep(struct ft_worker *w);
/* Ends every flow: with report, through the callback (reason end-of-input, or closed); without,
 * silently. Resets the worker's clock. Same locking rule as ft_worker_packet. */
void ft_worker_flush(struct ft_worker *w, bool report);
/* End of input: sweeps at the input's final clock (so a flow already idle for longer than its
 * timeout reports "timeout" whichever worker count ran it), then flushes with report. */
void ft_worker_finish(struct ft_worker *w, int64_t final_clock);
/* Frees the worker's slabs (every record it ever had) and its own memory. Only after
 * rcu_barrier(), with no live flows. */
void ft_worker_release_pool(struct ft_worker *w);

/* Key equality on the 5 words of a key. */
static inline bool ft_key_equal(const struct ft_key *a, const struct ft_key *b)
{
    uint64_t x[5], y[5];
    memcpy(x, a, sizeof x);
    memcpy(y, b, sizeof y);
    return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4])) == 0;
}

/* Drives an assembler with already decoded packets: what ft_assembler_feed does after
 * cap_decode. pkts[i].data must stay valid during the call. */
void ft_assembler_feed_packets(struct ft_assembler *as, const struct cap_packet *pkts, int n);

/* The pieces of ft_assembler_feed_packets, so that ft_assembler_feed can decode a few frames at
 * a time and hand them over while they are still in cache. */
void ft_feed_begin(struct ft_assembler *as);
void ft_feed_burst(struct ft_assembler *as, const struct cap_packet *pkts, int n);
void ft_feed_end(struct ft_assembler *as);
const struct cap_decode_opts *ft_assembler_decode_opts(const struct ft_assembler *as);
/* Bytes of one flow record, session buffer included (tests check K = 0 costs no buffer). */
size_t ft_assembler_flow_size(const struct ft_assembler *as);

#endif
