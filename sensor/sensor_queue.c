/* sensor_queue.c — the bounded ready queue between the flow workers and the batcher.
 *
 * All slots are allocated once at start; a session is copied into a free slot inside the flow
 * table's callback (the ft_session view dies with the callback) and handed over by index. Slot
 * indices travel through two bounded MPMC rings (Dmitry Vyukov's per-cell sequence numbers):
 * "free" (batcher → workers) and "ready" (workers → batcher). Both rings hold every index, so a
 * push never fails; only a pop can find a ring empty. The mutex and condition variables are used
 * only by a thread that has decided to sleep. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sensor/sensor_internal.h"

static bool ring_init(struct sensor_ring *r, uint32_t n)
{
    size_t cap = 1;
    while (cap < n)
        cap <<= 1;
    r->cells = calloc(cap, sizeof *r->cells);
    if (!r->cells)
        return false;
    for (size_t i = 0; i < cap; i++)
        atomic_init(&r->cells[i].seq, i);
    r->mask = cap - 1;
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    return true;
}

static bool ring_push(struct sensor_ring *r, uint32_t value)
{
    size_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
    for (;;) {
        struct sensor_ring_cell *c = &r->cells[pos & r->mask];
        size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        intptr_t dif = (intptr_t)seq - (intptr_t)pos;
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&r->tail, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed)) {
                c->value = value;
                atomic_store_explicit(&c->seq, pos + 1, memory_order_release);
                return true;
            }
        } else if (dif < 0) {
            return false; /* full: cannot happen, every ring holds every index */
        } else {
            pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
        }
    }
}

static bool ring_pop(struct sensor_ring *r, uint32_t *value)
{
    size_t pos = atomic_load_explicit(&r->head, memory_order_relaxed);
    for (;;) {
        struct sensor_ring_cell *c = &r->cells[pos & r->mask];
        size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        intptr_t dif = (intptr_t)seq - (intptr_t)(pos + 1);
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&r->head, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed)) {
                *value = c->value;
                atomic_store_explicit(&c->seq, pos + r->mask + 1, memory_order_release);
                return true;
            }
        } else if (dif < 0) {
            return false; /* empty */
        } else {
            pos = atomic_load_explicit(&r->head, memory_order_relaxed);
        }
    }
}

bool sensor_queue_init(struct sensor_queue *q, uint32_t n_slots, uint32_t max_pkts, uint32_t pkt_bytes)
{
    memset(q, 0, sizeof *q);
    q->n_slots = n_slots;
    q->max_pkts = max_pkts ? max_pkts : 1;
    q->pkt_bytes = pkt_bytes ? pkt_bytes : 1;
    q->slots = calloc(n_slots, sizeof *q->slots);
    q->pkts = calloc((size_t)n_slots * q->max_pkts, sizeof *q->pkts);
    q->bytes = malloc((size_t)n_slots * q->max_pkts * q->pkt_bytes);
    if (!q->slots || !q->pkts || !q->bytes || !ring_init(&q->free_ring, n_slots) ||
        !ring_init(&q->ready_ring, n_slots)) {
        sensor_queue_destroy(q);
        return false;
    }
    for (uint32_t i = 0; i < n_slots; i++) {
        q->slots[i].pkts = q->pkts + (size_t)i * q->max_pkts;
        q->slots[i].bytes = q->bytes + (size_t)i * q->max_pkts * q->pkt_bytes;
        ring_push(&q->free_ring, i);
    }
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->items, NULL);
    pthread_cond_init(&q->space, NULL);
    return true;
}

void sensor_queue_destroy(struct sensor_queue *q)
{
    if (q->free_ring.cells || q->ready_ring.cells) {
        pthread_mutex_destroy(&q->lock);
        pthread_cond_destroy(&q->items);
        pthread_cond_destroy(&q->space);
    }
    free(q->free_ring.cells);
    free(q->ready_ring.cells);
    free(q->slots);
    free(q->pkts);
    free(q->bytes);
    memset(q, 0, sizeof *q);
}

static void deadline_ts(struct timespec *ts, int64_t delta_ns)
{
    clock_gettime(CLOCK_REALTIME, ts); /* pthread_cond_timedwait's default clock */
    int64_t ns = ts->tv_nsec + delta_ns;
    ts->tv_sec += ns / 1000000000;
    ts->tv_nsec = ns % 1000000000;
}

struct sensor_slot *sensor_queue_reserve(struct sensor_queue *q, bool wait, const atomic_bool *give_up)
{
    uint32_t idx;
    if (ring_pop(&q->free_ring, &idx))
        return &q->slots[idx];
    if (!wait)
        return NULL;
    /* Replay only: a file can wait for the batcher, a wire cannot. */
    for (;;) {
        pthread_mutex_lock(&q->lock);
        atomic_fetch_add(&q->producers_waiting, 1);
        bool got = ring_pop(&q->free_ring, &idx);
        if (!got && !(give_up && atomic_load(give_up))) {
            struct timespec ts;
            deadline_ts(&ts, 2000000); /* a lost wakeup costs 2 ms at most */
            pthread_cond_timedwait(&q->space, &q->lock, &ts);
        }
        atomic_fetch_sub(&q->producers_waiting, 1);
        pthread_mutex_unlock(&q->lock);
        if (got || ring_pop(&q->free_ring, &idx))
            return &q->slots[idx];
        if (give_up && atomic_load(give_up))
            return NULL;
    }
}

void sensor_slot_fill(struct sensor_queue *q, struct sensor_slot *slot, const struct ft_session *s)
{
    slot->s = *s;
    uint32_t n = s->n_stored < q->max_pkts ? s->n_stored : q->max_pkts;
    for (uint32_t i = 0; i < n; i++) {
        const struct ft_stored_packet *sp = &s->stored[i];
        uint32_t len = sp->stored_len < q->pkt_bytes ? sp->stored_len : q->pkt_bytes;
        uint8_t *dst = slot->bytes + (size_t)i * q->pkt_bytes;
        memcpy(dst, sp->bytes, len);
        slot->pkts[i] = *sp;
        slot->pkts[i].bytes = dst;
        slot->pkts[i].stored_len = len;
    }
    slot->s.n_stored = n;
    slot->s.stored = slot->pkts;
}

void sensor_queue_push(struct sensor_queue *q, struct sensor_slot *slot)
{
    ring_push(&q->ready_ring, (uint32_t)(slot - q->slots));
    /* seq_cst push-then-check pairs with the consumer's set-flag-then-recheck: one of the two
     * sees the other, so a sleeping batcher is always woken */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load(&q->consumer_waiting)) {
        pthread_mutex_lock(&q->lock);
        pthread_cond_signal(&q->items);
        pthread_mutex_unlock(&q->lock);
    }
}

uint32_t sensor_queue_pop(struct sensor_queue *q, struct sensor_slot **out, uint32_t max)
{
    uint32_t n = 0, idx;
    while (n < max && ring_pop(&q->ready_ring, &idx))
        out[n++] = &q->slots[idx];
    return n;
}

static bool ring_maybe_nonempty(struct sensor_ring *r)
{
    size_t head = atomic_load(&r->head);
    struct sensor_ring_cell *c = &r->cells[head & r->mask];
    return atomic_load_explicit(&c->seq, memory_order_acquire) == head + 1;
}

void sensor_queue_wait_items(struct sensor_queue *q, int64_t deadline_ns)
{
    int64_t left = deadline_ns - sensor_mono_ns();
    if (left <= 0)
        return;
    pthread_mutex_lock(&q->lock);
    atomic_store(&q->consumer_waiting, 1);
    atomic_thread_fence(memory_order_seq_cst);
    if (!ring_maybe_nonempty(&q->ready_ring)) {
        struct timespec ts;
        deadline_ts(&ts, left);
        pthread_cond_timedwait(&q->items, &q->lock, &ts);
    }
    atomic_store(&q->consumer_waiting, 0);
    pthread_mutex_unlock(&q->lock);
}

void sensor_queue_kick(struct sensor_queue *q)
{
    pthread_mutex_lock(&q->lock);
    pthread_cond_broadcast(&q->items);
    pthread_cond_broadcast(&q->space);
    pthread_mutex_unlock(&q->lock);
}

void sensor_queue_release(struct sensor_queue *q, struct sensor_slot *slot)
{
    ring_push(&q->free_ring, (uint32_t)(slot - q->slots));
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load(&q->producers_waiting)) {
        pthread_mutex_lock(&q->lock);
        pthread_cond_broadcast(&q->space);
        pthread_mutex_unlock(&q->lock);
    }
}

size_t sensor_queue_depth(struct sensor_queue *q)
{
    size_t tail = atomic_load_explicit(&q->ready_ring.tail, memory_order_relaxed);
    size_t head = atomic_load_explicit(&q->ready_ring.head, memory_order_relaxed);
    return tail > head ? tail - head : 0;
}
