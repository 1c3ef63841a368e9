/* ft_table.c — one worker's flows: get-or-create in the shared cds_lfht, per-direction counters,
 * TCP state, the session buffer, early verdicts (the ready callback), idle timeouts, the max_flows
 * cap with emergency mode, and ending a session (callback, table delete, record back to the pool
 * after a grace period).
 *
 * Every decision here depends only on the sequence of packet records a worker receives (key,
 * direction, TCP fields, input clock), never on wall time or on when sweeps run, so 1 worker and
 * N workers produce the same sessions as long as no flow is evicted for lack of room and no
 * worker enters emergency mode (both depend on how full each worker's share of the table is). */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "flowtable/ft_internal.h"

#define FT_SWEEP_EVERY 256 /* packets between two looks at the LRU heads */
/* In emergency mode: a sweep that finds nothing looks at one list head per timeout class, cheap
 * next to what a full table costs, so flows are ended promptly under the shorter timeouts. */
#define FT_SWEEP_EVERY_EMERGENCY 8
#define FT_RETIRE_BATCH 256 /* deleted flows per call_rcu at most */
#define FT_FLOW_AHEAD 2     /* packets between ft_worker_prefetch_flow and their turn */
/* How long a worker whose records are all in use waits for ended flows' records to come back
 * before it refuses a new flow: grace periods take milliseconds, far longer only when one
 * stalls. */
#define FT_RECLAIM_WAIT_NS 500000000LL

/* ---- LRU lists ---- */

static void ft_lru_unlink(struct ft_lru *l, struct ft_flow *f)
{
    if (f->lru_prev)
        f->lru_prev->lru_next = f->lru_next;
    else
        l->head = f->lru_next;
    if (f->lru_next)
        f->lru_next->lru_prev = f->lru_prev;
    else
        l->tail = f->lru_prev;
    f->lru_prev = f->lru_next = NULL;
}

static void ft_lru_append(struct ft_lru *l, struct ft_flow *f)
{
    f->lru_next = NULL;
    f->lru_prev = l->tail;
    if (l->tail)
        l->tail->lru_next = f;
    else
        l->head = f;
    l->tail = f;
}

/* ---- records ---- */

/* Live flows at which pct % of cap is reached: the least n with n * 100 >= cap * pct. */
static uint32_t ft_pct_of(uint32_t cap, uint32_t pct)
{
    return (uint32_t)(((uint64_t)cap * pct + 99) / 100);
}

/* Records a worker may ever carve: its cap of live flows, plus half as many again (at least one
 * slab's worth) for ended flows still waiting out their grace period. Those come back within
 * milliseconds while every thread keeps reporting quiescent states (15-25 % of the cap under a
 * flood of new flows on 2 cores); the limit keeps memory bounded when the call_rcu thread falls
 * further behind (a small table churning faster than grace periods end), or one stalls. */
static uint32_t ft_record_limit(uint32_t cap, size_t flow_size)
{
    size_t per_slab = flow_size + 64 <= FT_SLAB_BYTES ? (FT_SLAB_BYTES - 64) / flow_size : 1;
    uint64_t slack = cap / 2 > per_slab ? cap / 2 : per_slab;
    uint64_t limit = (uint64_t)cap + slack;
    return limit < UINT32_MAX ? (uint32_t)limit : UINT32_MAX;
}

int ft_worker_init(struct ft_worker *w, struct ft_shared *sh, int index, uint32_t cap)
{
    memset(w, 0, sizeof *w);
    w->sh = sh;
    w->index = index;
    w->cap = cap;
    w->record_limit = ft_record_limit(cap, sh->flow_size);
    atomic_init(&w->reclaimed, NULL);
    memcpy(w->timeout_ns, sh->timeout_ns, sizeof w->timeout_ns);
    w->emergency_enter = UINT32_MAX;
    if (sh->cfg.emergency_enter_pct > 0) {
        w->emergency_enter = ft_pct_of(cap, sh->cfg.emergency_enter_pct);
        /* leave_pct 0 would never be met: a worker leaves once it has no flow left instead. */
        w->emergency_leave = ft_pct_of(cap, sh->cfg.emergency_leave_pct);
        if (w->emergency_leave == 0)
            w->emergency_leave = 1;
    }
    w->enter_at = w->emergency_enter;
    w->leave_at = 0;
    w->clock = INT64_MIN;
    w->front = calloc((size_t)1 << FT_FRONT_BITS, sizeof *w->front);
    return w->front ? 0 : -1;
}

/* Runs on the call_rcu thread once no reader can still see a batch of deleted records (linked
 * through free_next from the one whose rcu_head was queued): hands them back to their owner in
 * one push. The acquire load pairs with the owner's release store before call_rcu, so
 * everything the owner wrote to the records happens before this thread touches them. */
static void ft_batch_reclaim(struct rcu_head *head)
{
    struct ft_flow *first = caa_container_of(head, struct ft_flow, rcu);
    (void)atomic_load_explicit(&first->rcu_handoff, memory_order_acquire);
    struct ft_worker *w = first->owner;
    struct ft_flow *last = first->batch_tail;
    struct ft_flow *top = atomic_load_explicit(&w->reclaimed, memory_order_relaxed);
    do {
        last->free_next = top;
    } while (!atomic_compare_exchange_weak_explicit(&w->reclaimed, &top, first,
                                                    memory_order_release, memory_order_relaxed));
}

/* Deleted flows wait in a per-worker batch, and one call_rcu covers the batch: call_rcu and its
 * callback cost more than the rest of ending a flow. Called at the end of every burst. */
void ft_worker_retire(struct ft_worker *w)
{
    struct ft_flow *first = w->retired;
    if (first == NULL)
        return;
    first->batch_tail = w->retired_tail;
    w->retired = NULL;
    w->retired_tail = NULL;
    w->n_retired = 0;
    atomic_store_explicit(&first->rcu_handoff, 1, memory_order_release);
    call_rcu(&first->rcu, ft_batch_reclaim);
}

/* A new slab for at least one record; false when out of memory. */
static bool ft_slab_add(struct ft_worker *w)
{
    size_t need = w->sh->flow_size + 64; /* the slab header takes the first cache line */
    size_t size = need <= FT_SLAB_BYTES ? FT_SLAB_BYTES
                                        : (need + FT_SLAB_BYTES - 1) & ~(FT_SLAB_BYTES - 1);
    struct ft_slab *s = aligned_alloc(FT_SLAB_BYTES, size);
    if (s == NULL)
        return false;
#ifdef MADV_HUGEPAGE
    (void)madvise(s, size, MADV_HUGEPAGE); /* only advice: small pages work too */
#endif
    s->next = w->slabs;
    s->size = size;
    w->slabs = s;
    ft_count(&w->memory, size);
    w->carve = (uint8_t *)s + 64;
    w->carve_end = (uint8_t *)s + size;
    return true;
}

static int64_t ft_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Every record the worker may carve is live or waiting out a grace period: queue the ended
 * flows not yet queued and wait, QSBR-offline (so that the wait holds no grace period back; the
 * worker holds no reference into the table between packets), for a batch to come back. A
 * replay loses nothing while grace periods are merely slow. After a wait in vain the worker
 * refuses new flows at once until records come back (ft_flow_alloc clears `starved`), so a
 * stalled grace period costs one wait, not one per packet. */
static struct ft_flow *ft_wait_reclaimed(struct ft_worker *w)
{
    if (w->starved)
        return NULL;
    ft_worker_retire(w);
    rcu_thread_offline();
    const int64_t start = ft_mono_ns();
    struct ft_flow *got;
    while ((got = atomic_exchange_explicit(&w->reclaimed, NULL, memory_order_acquire)) == NULL &&
           ft_mono_ns() - start < FT_RECLAIM_WAIT_NS)
        nanosleep(&(struct timespec){.tv_nsec = 20000}, NULL);
    rcu_thread_online();
    if (got == NULL) {
        w->starved = true;
        return NULL;
    }
    w->free_list = got->free_next;
    return got;
}

static struct ft_flow *ft_flow_alloc(struct ft_worker *w)
{
    if (w->free_list == NULL)
        w->free_list = atomic_exchange_explicit(&w->reclaimed, NULL, memory_order_acquire);
    struct ft_flow *f = w->free_list;
    if (f) {
        w->starved = false;
        w->free_list = f->free_next;
        /* A recycled record has been cold for a grace period: start loading the next one. */
        if (w->free_list) {
            const char *n = (const char *)w->free_list;
            __builtin_prefetch(n, 1, 3);
            __builtin_prefetch(n + 64, 1, 3);
            __builtin_prefetch(n + 128, 1, 3);
            __builtin_prefetch(n + 192, 1, 3); /* the first stored-packet entry, if any */
        }
        return f;
    }
    if (w->records >= w->record_limit)
        return ft_wait_reclaimed(w);
    const struct ft_shared *sh = w->sh;
    if ((size_t)(w->carve_end - w->carve) < sh->flow_size && !ft_slab_add(w))
        return NULL;
    f = (struct ft_flow *)w->carve;
    w->carve += sh->flow_size;
    w->records++;
    uint32_t k = sh->cfg.packets_per_session;
    uint8_t *data = (uint8_t *)&f->stored[k];
    for (uint32_t i = 0; i < k; i++)
        f->stored[i].bytes = data + (size_t)i * sh->cfg.bytes_per_packet;
    f->owner = w;
    return f;
}

void ft_worker_release_pool(struct ft_worker *w)
{
    free(w->front);
    w->front = NULL;
    w->free_list = NULL;
    /* Acquire: the call_rcu thread's last writes to these records happen before the free. */
    (void)atomic_exchange_explicit(&w->reclaimed, NULL, memory_order_acquire);
    while (w->slabs) {
        struct ft_slab *next = w->slabs->next;
        free(w->slabs);
        w->slabs = next;
    }
    w->carve = w->carve_end = NULL;
}

/* ---- ending a session ---- */

/* The worker's scratch view of a flow, for either callback. */
static struct ft_session *ft_view(struct ft_worker *w, const struct ft_flow *f)
{
    struct ft_session *s = &w->out;
    const struct ft_key *k = &f->key;
    int a = f->init_dir, b = a ^ 1;
    s->id = f->id;
    s->first_frame = f->first_frame;
    s->ip_version = k->ip_version;
    s->proto = k->proto;
    s->vlan = k->vlan;
    memcpy(s->src_addr, a == 0 ? k->addr_lo : k->addr_hi, 16);
    memcpy(s->dst_addr, a == 0 ? k->addr_hi : k->addr_lo, 16);
    s->src_port = a == 0 ? k->port_lo : k->port_hi;
    s->dst_port = a == 0 ? k->port_hi : k->port_lo;
    s->pkts[0] = f->pkts[a];
    s->pkts[1] = f->pkts[b];
    s->bytes[0] = f->bytes[a];
    s->bytes[1] = f->bytes[b];
    s->first_ns = f->first_ns;
    s->last_ns = f->last_ns;
    s->tcp_flags[0] = f->tcp_flags[a];
    s->tcp_flags[1] = f->tcp_flags[b];
    s->tcp_state = f->tcp_state;
    s->linktype = f->linktype;
    s->n_stored = f->n_stored;
    s->stored = f->stored;
    s->payload_pkts = f->payload_pkts;
    s->ready = f->ready;
    return s;
}

static void ft_emit(struct ft_worker *w, const struct ft_flow *f, enum ft_end_reason reason)
{
    struct ft_session *s = ft_view(w, f);
    s->reason = (uint8_t)reason;
    w->sh->on_session(s, w->index, w->sh->user);
}

/* An early verdict: from now on the flow stores nothing more, so the packets the ready callback
 * saw are the ones the end callback reports. The session has not ended: reason is 0 there. */
static void ft_make_ready(struct ft_worker *w, struct ft_flow *f, enum ft_ready_trigger why)
{
    f->ready = (uint8_t)why;
    ft_count(&w->readied, 1);
    const struct ft_shared *sh = w->sh;
    if (sh->on_ready) {
        struct ft_session *s = ft_view(w, f);
        s->reason = 0;
        sh->on_ready(s, w->index, sh->ready_user);
    }
}

/* ---- emergency mode ---- */

/* The worker's live flows reached emergency_enter_pct % of its cap: shorter timeouts, and a
 * sweep at the end of the packet being handled (not inside the insertion: the new flow's times
 * are set only after it). */
static void ft_emergency_enter(struct ft_worker *w)
{
    w->emergency = true;
    memcpy(w->timeout_ns, w->sh->emergency_timeout_ns, sizeof w->timeout_ns);
    w->enter_at = UINT32_MAX;
    w->leave_at = w->emergency_leave;
    w->since_sweep = FT_SWEEP_EVERY - 1;
    ft_count(&w->emergency_entered, 1);
    ft_count(&w->emergency_active, 1);
}

static void ft_emergency_leave(struct ft_worker *w)
{
    w->emergency = false;
    memcpy(w->timeout_ns, w->sh->timeout_ns, sizeof w->timeout_ns);
    w->enter_at = w->emergency_enter;
    w->leave_at = 0;
    ft_count(&w->emergency_active, (uint64_t)-1);
}

/* why: what ended it (timeout, evicted, end of input, or closed for a port-reuse split). In
 * split mode a flow whose TCP state is CLOSED reports "closed" whatever finally pushed it out:
 * the session had ended, later packets only lingered in it. */
static void ft_end(struct ft_worker *w, struct ft_flow *f, enum ft_end_reason why, bool report)
{
    const struct ft_shared *sh = w->sh;
    enum ft_end_reason reason = why;
    if (sh->split && f->tcp_state == FT_TCP_CLOSED)
        reason = FT_END_CLOSED;
    if (why == FT_END_EVICTED)
        ft_count(&w->evicted, 1);
    if (reason == FT_END_TIMEOUT)
        ft_count(&w->timed_out, 1);
    if (report)
        ft_emit(w, f, reason);
    struct ft_front *slot = ft_front_slot(w, f->hash);
    if (slot->flow == f)
        slot->flow = NULL;
    ft_lru_unlink(&w->lru[f->tclass], f);
    (void)cds_lfht_del(sh->ht, &f->node); /* only the owner deletes: it always succeeds */
    f->free_next = w->retired;
    if (w->retired == NULL)
        w->retired_tail = f;
    w->retired = f;
    if (++w->n_retired >= FT_RETIRE_BATCH)
        ft_worker_retire(w);
    w->live--;
    ft_count(&w->active, (uint64_t)-1);
    if (w->live < w->leave_at)
        ft_emergency_leave(w);
}

/* Loads ahead while flows are ended in LRU order (a sweep, the end of the input): what the
 * deletion of f walks (its bucket's first node), and for the next flows their bucket, the node
 * after them and the record after that. Ending a flow (output, delete) takes long enough for
 * these to arrive. */
static inline void ft_end_prefetch(const struct ft_worker *w, const struct ft_flow *f)
{
    const struct ft_shared *sh = w->sh;
    ft_prefetch_next(ft_bucket_of(sh, f->hash));
    struct ft_flow *a = f->lru_next;
    if (a == NULL)
        return;
    __builtin_prefetch(ft_bucket_of(sh, a->hash), 0, 3);
    ft_prefetch_next(&a->node);
    const struct ft_flow *b = a->lru_next;
    if (b) {
        __builtin_prefetch(b, 1, 3);
        __builtin_prefetch((const char *)b + 64, 1, 3);
        __builtin_prefetch((const char *)b + 128, 1, 3);
    }
}

static inline bool ft_expired(const struct ft_worker *w, const struct ft_flow *f, int64_t now)
{
    int64_t to = w->timeout_ns[f->tclass];
    return to != 0 && now - f->clock_last > to;
}

void ft_worker_sweep(struct ft_worker *w)
{
    /* In emergency the packet counter restarts close to the limit rather than moving the limit:
     * the packet path keeps comparing with a constant. */
    w->since_sweep = w->emergency ? FT_SWEEP_EVERY - FT_SWEEP_EVERY_EMERGENCY : 0;
    for (int c = 0; c < FT_TC_COUNT; c++) {
        if (w->timeout_ns[c] == 0)
            continue;
        struct ft_lru *l = &w->lru[c];
        while (l->head && ft_expired(w, l->head, w->clock)) {
            ft_end_prefetch(w, l->head);
            ft_end(w, l->head, FT_END_TIMEOUT, true);
        }
    }
}

void ft_worker_flush(struct ft_worker *w, bool report)
{
    for (int c = 0; c < FT_TC_COUNT; c++) {
        struct ft_lru *l = &w->lru[c];
        while (l->head) {
            ft_end_prefetch(w, l->head);
            ft_end(w, l->head, FT_END_END_OF_INPUT, report);
        }
    }
    ft_worker_retire(w);
    w->clock = INT64_MIN;
    w->since_sweep = 0; /* no flow is left: emergency mode has ended */
}

void ft_worker_finish(struct ft_worker *w, int64_t final_clock)
{
    if (final_clock > w->clock)
        w->clock = final_clock;
    if (w->clock != INT64_MIN)
        ft_worker_sweep(w);
    ft_worker_flush(w, true);
}

/* The table is full: end a flow that has already timed out if there is one (that is what a
 * sweep would have done), otherwise evict the least recently seen. */
static void ft_make_room(struct ft_worker *w)
{
    struct ft_flow *oldest = NULL;
    for (int c = 0; c < FT_TC_COUNT; c++) {
        struct ft_flow *h = w->lru[c].head;
        if (h == NULL)
            continue;
        if (ft_expired(w, h, w->clock)) {
            ft_end(w, h, FT_END_TIMEOUT, true);
            return;
        }
        if (oldest == NULL || h->clock_last < oldest->clock_last)
            oldest = h;
    }
    if (oldest)
        ft_end(w, oldest, FT_END_EVICTED, true);
}

/* ---- per packet ---- */

static int ft_match(struct cds_lfht_node *node, const void *key)
{
    const struct ft_flow *f = caa_container_of(node, struct ft_flow, node);
    return ft_key_equal(&f->key, key);
}

static uint8_t ft_tclass_of(const struct ft_flow *f)
{
    bool both = f->seen_dirs == 3;
    switch (f->key.proto) {
    case 6:
        if (f->tcp_state == FT_TCP_CLOSED)
            return FT_TC_TCP_CLOSED;
        return f->tcp_state == FT_TCP_NEW ? FT_TC_TCP_NEW : FT_TC_TCP_ESTABLISHED;
    case 17:
        return both ? FT_TC_UDP_ESTABLISHED : FT_TC_UDP_NEW;
    default:
        return both ? FT_TC_OTHER_ESTABLISHED : FT_TC_OTHER_NEW;
    }
}

/* A record set up for the packet's flow, not yet in the table. */
static struct ft_flow *ft_flow_prepare(struct ft_worker *w, const struct ft_pkt *p)
{
    struct ft_flow *f = ft_flow_alloc(w);
    if (f == NULL)
        return NULL;
    memset(f, 0, offsetof(struct ft_flow, owner));
    f->key = p->key;
    f->hash = p->hash;
    f->first_ns = f->last_ns = p->ts_ns;
    f->first_frame = p->frame;
    f->id = p->ordinal;
    f->linktype = p->layers.linktype;
    f->init_dir = p->dir;
    f->tcp_state = p->key.proto == 6 ? FT_TCP_NEW : FT_TCP_NONE;
    f->tclass = ft_tclass_of(f);
    return f;
}

/* Inserts a prepared record. Returns it, or the flow already in the table under its key; the
 * record was then never visible to anyone and goes straight back to the free list. */
static struct ft_flow *ft_flow_insert(struct ft_worker *w, struct ft_flow *f, bool *fresh)
{
    struct cds_lfht_node *got =
        cds_lfht_add_unique(w->sh->ht, f->hash, ft_match, &f->key, &f->node);
    if (got != &f->node) {
        f->free_next = w->free_list;
        w->free_list = f;
        *fresh = false;
        return caa_container_of(got, struct ft_flow, node);
    }
    ft_lru_append(&w->lru[f->tclass], f);
    w->live++;
    ft_count(&w->active, 1);
    ft_count(&w->created, 1);
    if (w->live >= w->enter_at)
        ft_emergency_enter(w);
    *fresh = true;
    return f;
}

/* A new flow for a packet whose key has none (any old one has just ended). The record comes
 * first: a packet refused for want of one must not evict a live flow too. */
static struct ft_flow *ft_flow_new(struct ft_worker *w, const struct ft_pkt *p)
{
    struct ft_flow *f = ft_flow_prepare(w, p);
    if (f == NULL) {
        ft_count(&w->refused, 1);
        return NULL;
    }
    if (w->live >= w->cap)
        ft_make_room(w);
    bool fresh;
    return ft_flow_insert(w, f, &fresh); /* fresh: only this worker adds keys that hash to it */
}

/* tshark's rule for a new tcp.stream on a known 5-tuple: a SYN without ACK whose sequence
 * number differs from the first one seen in that direction (a retransmitted SYN keeps its
 * sequence number and stays in the session, whatever the TCP state). */
static inline bool ft_syn_reuses_ports(const struct ft_flow *f, const struct ft_pkt *p)
{
    return p->tcp_ok && (p->tcp_flags & (FT_TCP_SYN | FT_TCP_ACK)) == FT_TCP_SYN &&
           (f->base_set >> p->dir & 1) && p->tcp_seq != f->base_seq[p->dir];
}

static void ft_tcp_track(struct ft_flow *f, const struct ft_pkt *p)
{
    int d = p->dir;
    if (p->tcp_ok) {
        uint8_t fl = p->tcp_flags;
        f->tcp_flags[d] |= fl;
        if (!(f->base_set >> d & 1)) {
            /* As tshark: the ISN for a SYN, else one before the first seq seen. */
            f->base_seq[d] = (fl & FT_TCP_SYN) ? p->tcp_seq : p->tcp_seq - 1;
            f->base_set |= (uint8_t)(1u << d);
        }
        if (fl & FT_TCP_RST) {
            f->tcp_state = FT_TCP_CLOSED;
        } else if (fl & FT_TCP_FIN) {
            f->fin_dirs |= (uint8_t)(1u << d);
            if (f->tcp_state != FT_TCP_CLOSED)
                f->tcp_state = f->fin_dirs == 3 ? FT_TCP_CLOSED : FT_TCP_CLOSING;
        }
    }
    if (f->tcp_state == FT_TCP_NEW && f->seen_dirs == 3)
        f->tcp_state = FT_TCP_ESTABLISHED;
}

void ft_worker_packet(struct ft_worker *w, const struct ft_pkt *p)
{
    const struct ft_shared *sh = w->sh;
    if (p->clock_ns > w->clock)
        w->clock = p->clock_ns;

    struct ft_front *slot = ft_front_slot(w, p->hash);
    struct ft_flow *f = slot->flow;
    bool fresh = false;
    if (f == NULL || slot->hash != p->hash || !ft_key_equal(&f->key, &p->key)) {
        struct ft_flow *cand = w->live < w->cap ? ft_flow_prepare(w, p) : NULL;
        if (cand) {
            /* Get-or-create in one walk of the bucket: most keys missing from the front cache
             * are new flows. */
            f = ft_flow_insert(w, cand, &fresh);
        } else {
            /* Full (or no record free): look first, so that only a new flow evicts one. */
            struct cds_lfht_iter it;
            cds_lfht_lookup(sh->ht, p->hash, ft_match, &p->key, &it);
            struct cds_lfht_node *node = cds_lfht_iter_get_node(&it);
            f = node ? caa_container_of(node, struct ft_flow, node) : NULL;
        }
        if (f) {
            slot->hash = p->hash;
            slot->flow = f;
        }
    }
    if (f && !fresh) {
        /* Expiry on the flow's next packet uses the same rule as a sweep, so when sweeps run
         * does not change any session. */
        if (ft_expired(w, f, p->clock_ns)) {
            ft_end(w, f, FT_END_TIMEOUT, true);
            f = NULL;
        } else if (sh->split && ft_syn_reuses_ports(f, p)) {
            ft_end(w, f, FT_END_CLOSED, true);
            ft_count(&w->splits, 1);
            f = NULL;
        }
    }
    if (f == NULL) {
        f = ft_flow_new(w, p);
        if (f == NULL)
            return;
        slot->hash = p->hash;
        slot->flow = f;
    }

    int d = p->dir;
    f->pkts[d]++;
    f->bytes[d] += p->wirelen;
    /* A session's start and end are its earliest and latest packet times, as tshark's
     * conversations give them: a capture merged from several sources steps back in time, and
     * arrival order would then make end < start. Idleness is measured on clock_last, not here. */
    if (p->ts_ns > f->last_ns)
        f->last_ns = p->ts_ns;
    else if (p->ts_ns < f->first_ns)
        f->first_ns = p->ts_ns;
    f->clock_last = p->clock_ns;
    f->seen_dirs |= (uint8_t)(1u << d);
    f->payload_pkts += p->has_payload;
    if (f->key.proto == 6)
        ft_tcp_track(f, p);

    uint32_t k = sh->cfg.packets_per_session;
    if (f->n_stored < k && !f->ready) {
        struct ft_stored_packet *sp = &f->stored[f->n_stored++];
        uint32_t m = sh->cfg.bytes_per_packet;
        uint32_t n = p->caplen < m ? p->caplen : m;
        if (n > p->nbytes)
            n = p->nbytes;
        if (n)
            memcpy((uint8_t *)sp->bytes, p->bytes, n);
        sp->stored_len = n;
        sp->caplen = p->caplen;
        sp->wirelen = p->wirelen;
        sp->ts_ns = p->ts_ns;
        sp->layers = p->layers;
        sp->dir = (uint8_t)(d ^ f->init_dir);
        sp->tcp_flags = p->tcp_flags;
    }

    /* Early verdict, after the packet is stored. Until then every packet has been stored
     * (ready_packets <= K), so the view holds the session's packets so far. A FIN or RST on the
     * packet that also completes the count names the close: it says more about the session. */
    uint32_t rp = sh->cfg.ready_packets;
    if (rp && !f->ready) {
        if (p->tcp_flags & FT_TCP_RST)
            ft_make_ready(w, f, FT_READY_RST);
        else if (p->tcp_flags & FT_TCP_FIN)
            ft_make_ready(w, f, FT_READY_FIN);
        else if (f->pkts[0] + f->pkts[1] >= rp)
            ft_make_ready(w, f, FT_READY_PACKETS);
    }

    /* Most recently seen goes to the tail of its class's list; the clock never decreases, so
     * each list stays ordered by idle time. */
    uint8_t tc = ft_tclass_of(f);
    if (tc != f->tclass || w->lru[tc].tail != f) {
        ft_lru_unlink(&w->lru[f->tclass], f);
        f->tclass = tc;
        ft_lru_append(&w->lru[tc], f);
    }

    if (++w->since_sweep >= FT_SWEEP_EVERY)
        ft_worker_sweep(w);
}

void ft_worker_packets(struct ft_worker *w, const struct ft_pkt *p, int n)
{
    for (int i = 0; i < n && i < FT_FLOW_AHEAD; i++)
        ft_worker_prefetch_flow(w, &p[i]);
    for (int i = 0; i < n; i++) {
        if (i + FT_FLOW_AHEAD < n)
            ft_worker_prefetch_flow(w, &p[i + FT_FLOW_AHEAD]);
        ft_worker_packet(w, &p[i]);
    }
}
