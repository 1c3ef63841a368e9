/* sensor_events.c — the flow table's callbacks (ready sessions into the queue, flow events at each
 * flow's end) and the JSON-line formatting shared by every event type.
 *
 * The callbacks run on the flow workers, concurrently, inside the table's RCU read side: they
 * copy, format into stack buffers and hand over; nothing here allocates on that path. */
#include <arpa/inet.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/json_escape.h"
#include "sensor/sensor_internal.h"

/* ---- JSON lines ---- */

void sj_init(struct sensor_json *j, char *buf, size_t cap)
{
    j->buf = buf;
    j->cap = cap;
    j->len = 0;
    j->overflow = false;
    buf[0] = '\0';
}

void sj_rawn(struct sensor_json *j, const char *s, size_t n)
{
    if (j->overflow || j->len + n + 1 > j->cap) {
        j->overflow = true;
        return;
    }
    memcpy(j->buf + j->len, s, n);
    j->len += n;
    j->buf[j->len] = '\0';
}

void sj_raw(struct sensor_json *j, const char *s)
{
    sj_rawn(j, s, strlen(s));
}

void sj_printf(struct sensor_json *j, const char *fmt, ...)
{
    if (j->overflow)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(j->buf + j->len, j->cap - j->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= j->cap - j->len) {
        j->overflow = true;
        j->buf[j->len] = '\0';
        return;
    }
    j->len += (size_t)n;
}

void sj_str(struct sensor_json *j, const char *s)
{
    char tmp[2048];
    sj_rawn(j, "\"", 1);
    sj_rawn(j, tmp, json_escape(s, tmp, sizeof tmp));
    sj_rawn(j, "\"", 1);
}

char *sj_quote_dup(const char *s)
{
    size_t cap = JSON_ESCAPED_MAX(strlen(s)) + 2;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    out[0] = '"';
    size_t k = json_escape(s, out + 1, cap - 2);
    out[1 + k] = '"';
    out[2 + k] = '\0';
    return out;
}

/* Digits of v, right-aligned in out[0 .. width) with leading zeros (width 0: as many as v has);
 * the count written. */
static size_t put_digits(char *out, uint64_t v, size_t width)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n < width)
        tmp[n++] = '0';
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

void sj_u64(struct sensor_json *j, uint64_t v)
{
    char buf[20];
    sj_rawn(j, buf, put_digits(buf, v, 0));
}

/* A flow sensor writes three timestamps per flow event, hundreds of thousands a second: the
 * calendar part is computed once per second (per thread) and only the microseconds each time. */
void sj_time(struct sensor_json *j, int64_t ns)
{
    static _Thread_local int64_t cached_sec = INT64_MIN;
    static _Thread_local char cached[32]; /* "\"YYYY-MM-DDTHH:MM:SS" */
    static _Thread_local size_t cached_len;
    int64_t sec = ns / 1000000000, rem = ns % 1000000000;
    if (rem < 0) {
        sec--;
        rem += 1000000000;
    }
    if (sec != cached_sec) {
        time_t t = (time_t)sec;
        struct tm tm;
        if (!gmtime_r(&t, &tm) || tm.tm_year + 1900 < 0 || tm.tm_year + 1900 > 9999) {
            sj_raw(j, "\"1970-01-01T00:00:00.000000+0000\"");
            return;
        }
        char *p = cached;
        *p++ = '"';
        p += put_digits(p, (uint64_t)(tm.tm_year + 1900), 4);
        *p++ = '-';
        p += put_digits(p, (uint64_t)(tm.tm_mon + 1), 2);
        *p++ = '-';
        p += put_digits(p, (uint64_t)tm.tm_mday, 2);
        *p++ = 'T';
        p += put_digits(p, (uint64_t)tm.tm_hour, 2);
        *p++ = ':';
        p += put_digits(p, (uint64_t)tm.tm_min, 2);
        *p++ = ':';
        p += put_digits(p, (uint64_t)tm.tm_sec, 2);
        cached_len = (size_t)(p - cached);
        cached_sec = sec;
    }
    char tail[16];
    tail[0] = '.';
    size_t n = 1 + put_digits(tail + 1, (uint64_t)(rem / 1000), 6);
    memcpy(tail + n, "+0000\"", 6);
    sj_rawn(j, cached, cached_len);
    sj_rawn(j, tail, n + 6);
}

/* ---- the common fields ---- */

static const char *proto_name(uint8_t p, char buf[8])
{
    switch (p) {
    case 6: return "TCP";
    case 17: return "UDP";
    case 1: return "ICMP";
    case 58: return "IPv6-ICMP";
    default: snprintf(buf, 8, "%u", p); return buf;
    }
}

void sensor_event_common(struct sensor *sn, struct sensor_json *j, int64_t ts_ns,
                         const struct ft_session *s, const char *event_type, int file_index)
{
    char src[INET6_ADDRSTRLEN] = "", dst[INET6_ADDRSTRLEN] = "", pbuf[8];
    int af = s->ip_version == 6 ? AF_INET6 : AF_INET;
    inet_ntop(af, s->src_addr, src, sizeof src);
    inet_ntop(af, s->dst_addr, dst, sizeof dst);
    /* appended piece by piece: printf's format parsing was most of a flow event's cost */
    sj_raw(j, "{\"timestamp\":");
    sj_time(j, ts_ns);
    sj_raw(j, ",\"flow_id\":");
    sj_u64(j, s->id);
    sj_raw(j, ",\"event_type\":\"");
    sj_raw(j, event_type);
    sj_raw(j, "\",\"src_ip\":\"");
    sj_raw(j, src);
    sj_raw(j, "\",\"src_port\":");
    sj_u64(j, s->src_port);
    sj_raw(j, ",\"dest_ip\":\"");
    sj_raw(j, dst);
    sj_raw(j, "\",\"dest_port\":");
    sj_u64(j, s->dst_port);
    sj_raw(j, ",\"proto\":\"");
    sj_raw(j, proto_name(s->proto, pbuf));
    sj_raw(j, "\"");
    if (s->vlan) {
        sj_raw(j, ",\"vlan\":[");
        sj_u64(j, s->vlan);
        sj_raw(j, "]");
    }
    if (sn->replay && file_index >= 0 && sn->files_json) {
        sj_raw(j, ",\"pcap_filename\":");
        sj_raw(j, sn->files_json[file_index]);
    }
}

/* ---- ids of skipped sessions, per flow worker ----
 * A flow event says whether its flow got a verdict. A session that became ready but found the
 * queue full was skipped; the flow table keeps no user data per flow, so each worker remembers
 * its skipped ids until their flows end (a flow's callbacks always run on its owning worker: no
 * locking). Open addressing, linear probing, backward-shift deletion. If it ever fills, further
 * skips are not remembered and those flows report verdict true (counted nowhere else: the
 * sessions.skipped counter is still exact). */

#define SKIPSET_BITS 16
#define SKIPSET_CAP (1u << SKIPSET_BITS)

struct sensor_skipset {
    uint64_t keys[SKIPSET_CAP]; /* id + 1; 0 = empty */
    uint32_t n;
};

struct sensor_skipset *sensor_skipset_new(void)
{
    return calloc(1, sizeof(struct sensor_skipset));
}

void sensor_skipset_free(struct sensor_skipset *set)
{
    free(set);
}

static uint32_t skip_hash(uint64_t key)
{
    key *= 0x9e3779b97f4a7c15ull;
    return (uint32_t)(key >> (64 - SKIPSET_BITS));
}

static void skipset_add(struct sensor_skipset *set, uint64_t id)
{
    if (set->n >= SKIPSET_CAP * 3 / 4)
        return;
    uint64_t key = id + 1;
    for (uint32_t i = skip_hash(key);; i = (i + 1) & (SKIPSET_CAP - 1)) {
        if (set->keys[i] == key)
            return;
        if (set->keys[i] == 0) {
            set->keys[i] = key;
            set->n++;
            return;
        }
    }
}

static bool skipset_take(struct sensor_skipset *set, uint64_t id)
{
    uint64_t key = id + 1;
    uint32_t i = skip_hash(key);
    while (set->keys[i] != key) {
        if (set->keys[i] == 0)
            return false;
        i = (i + 1) & (SKIPSET_CAP - 1);
    }
    /* backward shift: pull later members of the probe run into the hole */
    uint32_t hole = i;
    for (uint32_t j = (i + 1) & (SKIPSET_CAP - 1); set->keys[j]; j = (j + 1) & (SKIPSET_CAP - 1)) {
        uint32_t home = skip_hash(set->keys[j]);
        bool movable = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
        if (movable) {
            set->keys[hole] = set->keys[j];
            hole = j;
        }
    }
    set->keys[hole] = 0;
    set->n--;
    return true;
}

/* ---- the flow table's callbacks ---- */

static enum sensor_trigger trigger_of_end(uint8_t reason)
{
    switch (reason) {
    case FT_END_EVICTED: return SN_TRIGGER_FORCED;
    case FT_END_END_OF_INPUT: return SN_TRIGGER_SHUTDOWN;
    default: return SN_TRIGGER_TIMEOUT; /* FT_END_TIMEOUT, and FT_END_CLOSED (FIN/RST readied it) */
    }
}

/* Into the queue; false when skipped. */
static bool enqueue(struct sensor *sn, const struct ft_session *s, enum sensor_trigger trigger)
{
    atomic_fetch_add_explicit(&sn->ready, 1, memory_order_relaxed);
    struct sensor_slot *slot = sensor_queue_reserve(&sn->q, atomic_load_explicit(&sn->block_when_full, memory_order_relaxed),
                                                   &sn->failed);
    if (!slot) {
        atomic_fetch_add_explicit(&sn->skipped, 1, memory_order_relaxed);
        return false;
    }
    sensor_slot_fill(&sn->q, slot, s);
    slot->trigger = (uint8_t)trigger;
    slot->event_ts_ns = s->last_ns;
    slot->file_index = sn->replay ? atomic_load_explicit(&sn->current_file, memory_order_relaxed) : -1;
    slot->enqueue_ns = sensor_mono_ns();
    sensor_queue_push(&sn->q, slot);
    return true;
}

void sensor_on_ready(const struct ft_session *s, int worker, void *user)
{
    const struct sensor_shard *shard = user;
    struct sensor *sn = shard->sn;
    worker += shard->first_worker;
    enum sensor_trigger t = s->ready == FT_READY_FIN   ? SN_TRIGGER_FIN
                            : s->ready == FT_READY_RST ? SN_TRIGGER_RST
                                                       : SN_TRIGGER_PACKETS;
    if (!enqueue(sn, s, t) && worker >= 0 && worker < sn->n_workers)
        skipset_add(sn->skipsets[worker], s->id);
}

static const char *state_name(uint8_t st)
{
    switch (st) {
    case FT_TCP_NEW: return "new";
    case FT_TCP_ESTABLISHED: return "established";
    case FT_TCP_CLOSING: return "closing";
    case FT_TCP_CLOSED: return "closed";
    default: return "none";
    }
}

static const char *reason_name(uint8_t r)
{
    switch (r) {
    case FT_END_EVICTED: return "forced";
    case FT_END_END_OF_INPUT: return "shutdown";
    default: return "timeout";
    }
}

void sensor_on_end(const struct ft_session *s, int worker, void *user)
{
    const struct sensor_shard *shard = user;
    struct sensor *sn = shard->sn;
    worker += shard->first_worker;
    bool verdict = false;
    if (sn->no_model) {
        /* a flow sensor: nothing is handed to a model */
    } else if (s->ready != FT_READY_NOT_YET) {
        verdict = !(worker >= 0 && worker < sn->n_workers && skipset_take(sn->skipsets[worker], s->id));
    } else if (s->payload_pkts > 0) {
        verdict = enqueue(sn, s, trigger_of_end(s->reason));
    }
    if (!sn->flow_events)
        return;
    char buf[2048];
    struct sensor_json j;
    sj_init(&j, buf, sizeof buf);
    int file = sn->replay ? atomic_load_explicit(&sn->current_file, memory_order_relaxed) : -1;
    sensor_event_common(sn, &j, s->last_ns, s, "flow", file);
    sj_raw(&j, ",\"flow\":{\"pkts_toserver\":");
    sj_u64(&j, s->pkts[0]);
    sj_raw(&j, ",\"pkts_toclient\":");
    sj_u64(&j, s->pkts[1]);
    sj_raw(&j, ",\"bytes_toserver\":");
    sj_u64(&j, s->bytes[0]);
    sj_raw(&j, ",\"bytes_toclient\":");
    sj_u64(&j, s->bytes[1]);
    sj_raw(&j, ",\"start\":");
    sj_time(&j, s->first_ns);
    sj_raw(&j, ",\"end\":");
    sj_time(&j, s->last_ns);
    sj_raw(&j, ",\"state\":\"");
    sj_raw(&j, state_name(s->tcp_state));
    sj_raw(&j, "\",\"reason\":\"");
    sj_raw(&j, reason_name(s->reason));
    sj_raw(&j, verdict ? "\",\"verdict\":true}}\n" : "\",\"verdict\":false}}\n");
    if (j.overflow)
        sensor_sink_count_dropped(sn->sink, 1);
    else
        /* live, never block capture: a full sink drops the line and counts it; a replay (or the
         * drain after capture stopped) waits for the writer, since nothing is lost by waiting */
        sensor_sink_put(sn->sink, j.buf, j.len, atomic_load_explicit(&sn->block_when_full, memory_order_relaxed));
}

/* ---- stats ---- */

uint32_t sensor_lat_bucket(uint64_t us)
{
    if (us < SN_LAT_SUB)
        return (uint32_t)us;
    int e = 63 - __builtin_clzll(us); /* us in [2^e, 2^(e+1)), e >= SN_LAT_SUB_BITS */
    if (e >= SN_LAT_MAX_EXP)
        return SN_LAT_BUCKETS - 1;
    uint32_t sub = (uint32_t)(us >> (e - SN_LAT_SUB_BITS)) & (SN_LAT_SUB - 1);
    return SN_LAT_SUB + (uint32_t)(e - SN_LAT_SUB_BITS) * SN_LAT_SUB + sub;
}

uint64_t sensor_lat_upper(uint32_t b)
{
    if (b < SN_LAT_SUB)
        return b;
    if (b >= SN_LAT_BUCKETS - 1)
        return UINT64_MAX;
    uint32_t shift = (b - SN_LAT_SUB) / SN_LAT_SUB; /* e - SN_LAT_SUB_BITS */
    uint64_t sub = (b - SN_LAT_SUB) % SN_LAT_SUB;
    return ((SN_LAT_SUB + sub + 1) << shift) - 1;
}

/* The smallest bucket upper bound below which at least pct % of the interval's latencies lie
 * (nearest rank: the ceil(pct/100 × total)-th smallest), capped by the interval's max: the exact
 * percentile or at most 6.25 % above it. */
static uint64_t lat_percentile(const uint64_t *h, uint64_t total, unsigned pct, uint64_t max)
{
    if (total == 0)
        return 0;
    uint64_t want = (total * pct + 99) / 100, sum = 0;
    for (uint32_t b = 0; b < SN_LAT_BUCKETS; b++) {
        sum += h[b];
        if (sum >= want) {
            uint64_t upper = sensor_lat_upper(b);
            return upper < max ? upper : max;
        }
    }
    return max;
}

void sensor_capture_totals(struct sensor *sn, struct sensor_capture_totals *out)
{
    memset(out, 0, sizeof *out);
    for (int i = 0; i < sn->n_shards; i++) {
        struct sensor_shard *shard = &sn->shards[i];
        out->packets += atomic_load_explicit(&shard->packets, memory_order_relaxed);
        out->bytes += atomic_load_explicit(&shard->bytes, memory_order_relaxed);
        out->kernel_drops += atomic_load_explicit(&shard->kernel_drops, memory_order_relaxed);
        out->iface_drops += atomic_load_explicit(&shard->iface_drops, memory_order_relaxed);
    }
}

void sensor_flow_totals(struct sensor *sn, struct ft_stats *out)
{
    memset(out, 0, sizeof *out);
    for (int i = 0; i < sn->n_shards; i++)
        if (sn->shards[i].as) {
            struct ft_stats part;
            ft_assembler_stats(sn->shards[i].as, &part);
            ft_stats_add(out, &part);
        }
}

void sensor_emit_stats(struct sensor *sn)
{
    struct ft_stats fs;
    sensor_flow_totals(sn, &fs);
    struct sensor_capture_totals cap;
    sensor_capture_totals(sn, &cap);
    struct sensor_sink_stats ss;
    sensor_sink_stats(sn->sink, &ss);
    uint64_t h[SN_LAT_BUCKETS], total = 0;
    for (uint32_t b = 0; b < SN_LAT_BUCKETS; b++) {
        h[b] = atomic_exchange_explicit(&sn->lat_hist[b], 0, memory_order_relaxed);
        total += h[b];
    }
    uint64_t lmax = atomic_exchange_explicit(&sn->lat_max, 0, memory_order_relaxed);
    uint64_t batches = atomic_load(&sn->batches), items = atomic_load(&sn->batch_items);
#define LD(x) atomic_load_explicit(&sn->x, memory_order_relaxed)
    char buf[8192]; /* up to 64 readers' counters */
    struct sensor_json j;
    sj_init(&j, buf, sizeof buf);
    sj_raw(&j, "{\"timestamp\":");
    sj_time(&j, sensor_realtime_ns());
    sj_printf(&j, ",\"event_type\":\"stats\",\"stats\":{\"uptime\":%.3f,"
                  "\"capture\":{\"packets\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"kernel_drops\":%" PRIu64
                  ",\"iface_drops\":%" PRIu64,
              (double)(sensor_mono_ns() - sn->start_mono) / 1e9, cap.packets, cap.bytes, cap.kernel_drops,
              cap.iface_drops);
    if (sn->n_shards > 1) { /* how evenly the fanout hash or RSS spreads the load */
        sj_raw(&j, ",\"readers\":[");
        for (int i = 0; i < sn->n_shards; i++)
            sj_printf(&j, "%s{\"packets\":%" PRIu64 ",\"kernel_drops\":%" PRIu64 "}", i ? "," : "",
                      atomic_load_explicit(&sn->shards[i].packets, memory_order_relaxed),
                      atomic_load_explicit(&sn->shards[i].kernel_drops, memory_order_relaxed));
        sj_raw(&j, "]");
    }
    sj_raw(&j, "},\"decoder\":{");
    for (int r = 0; r < CAP_DECODE_REASON_COUNT; r++)
        sj_printf(&j, "%s\"%s\":%" PRIu64, r ? "," : "", cap_decode_reason_name((enum cap_decode_reason)r),
                  fs.decode.by_reason[r]);
    sj_printf(&j, "},\"flow\":{\"active\":%" PRIu64 ",\"created\":%" PRIu64 ",\"evicted\":%" PRIu64
                  ",\"timed_out\":%" PRIu64 ",\"emergency_entered\":%" PRIu64 ",\"emergency_active\":%" PRIu64
                  ",\"memory_bytes\":%" PRIu64 ",\"refused_packets\":%" PRIu64
                  ",\"fragments_joined\":%" PRIu64 "},",
              fs.flows_active, fs.flows_created, fs.flows_evicted, fs.flows_timed_out, fs.emergency_entered,
              fs.emergency_active, fs.memory_bytes, fs.refused_packets, fs.fragments_joined);
    sj_printf(&j, "\"sessions\":{\"ready\":%" PRIu64 ",\"skipped\":%" PRIu64 ",\"classified\":%" PRIu64 "},",
              LD(ready), LD(skipped), LD(classified));
    sj_printf(&j, "\"batches\":{\"count\":%" PRIu64 ",\"mean_size\":%.3f,\"max_size\":%" PRIu64 "},", batches,
              batches ? (double)items / (double)batches : 0.0, LD(batch_max_seen));
    sj_printf(&j, "\"latency_us\":{\"p50\":%" PRIu64 ",\"p90\":%" PRIu64 ",\"p99\":%" PRIu64 ",\"max\":%" PRIu64 "},",
              lat_percentile(h, total, 50, lmax), lat_percentile(h, total, 90, lmax),
              lat_percentile(h, total, 99, lmax), lmax);
    sj_printf(&j, "\"queues\":{\"ready_depth\":%zu,\"ready_capacity\":%u,\"sink_depth\":%" PRIu64 "},",
              sensor_queue_depth(&sn->q), sn->q.n_slots, ss.depth);
    sj_printf(&j, "\"events\":{\"written\":%" PRIu64 ",\"dropped\":%" PRIu64 "}}}\n", ss.written, ss.dropped);
#undef LD
    if (j.overflow)
        sensor_sink_count_dropped(sn->sink, 1);
    else
        sensor_sink_put(sn->sink, j.buf, j.len, true);
}
