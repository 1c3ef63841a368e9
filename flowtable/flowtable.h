/* flowtable.h — bidirectional sessions from decoded packets.
 *
 * Flows live in a liburcu cds_lfht keyed by a canonical bidirectional key; each flow keeps
 * per-direction counters, TCP state and the first K packets (M bytes each) of its session. The
 * assembler drives the table from frames: one thread, or one reader dispatching by a symmetric
 * hash to several workers that each own their flows. A finished session is handed to a callback
 * as an ft_session view, which is what the tokenizer and the dataset writers consume. */
#ifndef NETLM_FLOWTABLE_H
#define NETLM_FLOWTABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "capture/capture.h"

/* Canonical bidirectional key: the (address, port) endpoint that sorts lower comes first, so
 * both directions of a session hash and compare equal. */
struct ft_key {
    uint8_t addr_lo[16];
    uint8_t addr_hi[16];
    uint16_t port_lo;
    uint16_t port_hi;
    uint16_t vlan; /* innermost VLAN ID, 0 if untagged */
    uint8_t proto; /* IPPROTO_* */
    uint8_t ip_version;
};

/* Fills key from a decoded packet; *dir_out = 0 if the packet goes lo→hi, 1 if hi→lo. Returns
 * false when the packet carries no flow (no IP layer, later fragment, truncated L4 header); the
 * assembler gives a later fragment the flow of its datagram's first fragment when it saw it.
 * A TCP/UDP header cut by the snap length still has a key when its 4 port bytes are there
 * (whether the assembler counts the frame is cfg.cut_frames' business; TCP flags and sequence
 * numbers are used only when 16 TCP header bytes are there). */
bool ft_key_from_packet(const struct cap_packet *pkt, struct ft_key *key, int *dir_out);
/* Symmetric by construction (hashes the canonical key), seeded per run. */
uint64_t ft_key_hash(const struct ft_key *key, uint64_t seed);

enum ft_port_reuse {
    FT_PORT_REUSE_SPLIT = 0, /* tshark's tcp.stream: a SYN (no ACK) whose sequence number differs
                                from the first one seen from that side starts a new session; TCP
                                close and idle timeouts end sessions */
    FT_PORT_REUSE_MERGE = 1, /* one session per 5-tuple for the whole input (SplitCap) */
};

enum ft_end_reason {
    FT_END_CLOSED = 0,       /* FIN from both sides, or RST */
    FT_END_TIMEOUT = 1,      /* idle longer than the timeout for its protocol and state */
    FT_END_END_OF_INPUT = 2, /* still open when the input ended */
    FT_END_EVICTED = 3,      /* pushed out because the table was full */
};
const char *ft_end_reason_name(enum ft_end_reason reason);

enum ft_tcp_state {
    FT_TCP_NONE = 0, /* not TCP */
    FT_TCP_NEW,      /* SYN or first packet seen, not both directions yet */
    FT_TCP_ESTABLISHED,
    FT_TCP_CLOSING,  /* FIN from one side */
    FT_TCP_CLOSED,   /* FIN both ways, or RST */
};

/* Idle timeouts in seconds of packet time; 0 = never. "new" applies until both directions have
 * been seen, "established" after, "closed" to TCP after FIN/RST (the session has already ended;
 * it only bounds how long late packets are still counted into it). */
struct ft_timeouts {
    double tcp_new, tcp_established, tcp_closed;
    double udp_new, udp_established;
    double other_new, other_established;
};

/* Frames the snap length cut before their flow is fully known (the last frame of every session
 * in the USTC-TFC2016 files, for one). */
enum ft_cut_frames {
    FT_CUT_FRAMES_AUTO = 0,   /* ATTACH in merge mode, TSHARK in split mode */
    FT_CUT_FRAMES_ATTACH = 1, /* SplitCap, which saw the uncut packets: a frame cut after its ports
                                 joins its flow; one cut before them (even inside the Ethernet
                                 header) joins the flow of the newest of the last 4 flow frames
                                 whose bytes it agrees with, either direction: link header, IP
                                 version and protocol, and the IP addresses when a whole one is
                                 left (the MAC addresses otherwise) */
    FT_CUT_FRAMES_TSHARK = 2, /* tshark: a TCP header cut before 16 bytes or a UDP header before 8
                                 carries no flow, nor does a frame cut before its ports */
};

struct ft_config {
    /* Hard cap on live flows; when full the oldest idle is evicted. It bounds memory too: each
     * worker carves at most its share plus half as many again (at least one 2 MiB slab's worth)
     * of records, the rest holding ended flows until a grace period lets them be reused; a new
     * flow that finds none free waits for one (up to 0.5 s: grace periods take milliseconds) and
     * is then refused (refused_packets) instead of memory grown. */
    uint32_t max_flows;
    uint32_t packets_per_session; /* K: packets kept per session (both directions); 0 = counters only */
    uint32_t bytes_per_packet;    /* M: bytes kept of each of those packets */
    enum ft_port_reuse port_reuse;
    struct ft_timeouts timeouts;
    struct cap_decode_opts decode;
    int workers;                  /* 1 = all on the caller's thread */
    uint64_t hash_seed;           /* 0 = random per run */
    bool merge_timeouts;          /* merge mode applies the timeouts only when true (SplitCap has
                                     none: one session per 5-tuple for the whole input) */
    enum ft_cut_frames cut_frames;
    /* Early verdicts (the sensor). 0 = off. Otherwise the ready callback (ft_assembler_on_ready)
     * fires once per session, as soon as it has ready_packets packets (both directions counted)
     * or at its first FIN or RST; from then on the flow only updates its counters (no more
     * packets are stored). Must be ≤ packets_per_session. */
    uint32_t ready_packets;
    /* Memory pressure (Suricata's emergency mode). When a worker's live flows reach
     * emergency_enter_pct % of its share of max_flows, it switches to emergency_timeouts (shorter)
     * until they fall below emergency_leave_pct % (leave 0: until it has no flow left). Enter 0 =
     * never; otherwise 1..100 and leave < enter. Emergency timeouts apply in merge mode too. */
    uint32_t emergency_enter_pct;
    uint32_t emergency_leave_pct;
    struct ft_timeouts emergency_timeouts;
    /* One of id_shards assemblers of one run that see disjoint flows (the sensor's readers):
     * session ids become (ordinal - 1) · id_shards + id_shard + 1, unique across them. 0 or 1
     * shards: ids are the ordinals. */
    uint32_t id_shard, id_shards;
};
/* Defaults: max_flows 1 M (2^20), K 32, M 128, split, decode.innermost, 1 worker, random seed,
 * merge_timeouts false, cut_frames AUTO, and the timeouts of Suricata's shipped suricata.yaml:
 * TCP new 60 s, established 600 s, closed 60 s; UDP new 30 s, established 300 s; other 30 s /
 * 300 s. ready_packets 0 (off), emergency mode off, emergency timeouts as suricata.yaml's
 * emergency-* values: TCP new 5 s, established 100 s, closed 10 s; UDP 10 s / 100 s; other
 * 10 s / 100 s.
 * With W workers each owns max_flows / W flows (the remainder is unused). */
void ft_config_defaults(struct ft_config *cfg);

/* Why a session was handed to the ready callback. */
enum ft_ready_trigger {
    FT_READY_NOT_YET = 0, /* never (in an end callback: no early verdict was given) */
    FT_READY_PACKETS = 1, /* it reached ready_packets packets */
    FT_READY_FIN = 2,     /* its first FIN */
    FT_READY_RST = 3,     /* its first RST */
};
const char *ft_ready_trigger_name(enum ft_ready_trigger t); /* "not_yet", "packets", "fin", "rst" */

/* One of the first K packets of a session, as stored. */
struct ft_stored_packet {
    const uint8_t *bytes;    /* the frame's first min(caplen, M) bytes */
    uint32_t stored_len;
    uint32_t caplen;
    uint32_t wirelen;
    int64_t ts_ns;
    struct cap_layers layers; /* offsets valid for bytes (they may point past stored_len) */
    uint8_t dir;              /* 0 = sent by the initiator (src), 1 = by the responder */
    uint8_t tcp_flags;
};

/* A finished session. Oriented by its first packet: src is the side that sent it. The view and
 * everything it points to are valid only during the callback. */
struct ft_session {
    uint64_t id;           /* unique within a run: the run-wide ordinal of its first frame */
    uint64_t first_frame;  /* 1-based frame number of the first packet within its input file */
    uint8_t ip_version;
    uint8_t proto;         /* IPPROTO_* */
    uint16_t vlan;
    uint8_t src_addr[16], dst_addr[16];
    uint16_t src_port, dst_port;
    uint64_t pkts[2];      /* [0] = to server (from src), [1] = to client */
    uint64_t bytes[2];     /* frame lengths on the wire */
    int64_t first_ns, last_ns; /* its earliest and latest packet timestamps (not the first and
                                  last to arrive: time may step back within a capture) */
    uint8_t tcp_flags[2];  /* OR of the flags seen each way */
    uint8_t tcp_state;     /* enum ft_tcp_state at the end */
    uint8_t reason;        /* enum ft_end_reason (0 in the ready callback: not ended yet) */
    uint16_t linktype;
    uint32_t n_stored;
    const struct ft_stored_packet *stored; /* first n_stored packets in arrival order */
    uint64_t payload_pkts; /* packets (both ways) that carried L4 payload (payload_len > 0) */
    uint8_t ready;         /* enum ft_ready_trigger: in the ready callback why it fires; in the
                              end callback how the session was readied earlier, or NOT_YET */
};

/* Called once per finished session. With several workers it is called from each worker's
 * thread concurrently: the callback must be thread-safe. worker = 0..workers-1. It runs inside
 * the flow table's RCU read side: it should not block for long (memory of ended flows is
 * reclaimed only after every worker moves on), and must not call ft_assembler_destroy. */
typedef void (*ft_session_fn)(const struct ft_session *session, int worker, void *user);

struct ft_stats {
    uint64_t frames, bytes;    /* frames fed, and their lengths on the wire */
    uint64_t flowless;         /* frames that carry no flow (see ft_key_from_packet, cut_frames);
                                  session packets + flowless = frames */
    uint64_t fragments_joined; /* later IP fragments counted into the session of their datagram's
                                  first fragment (session packets, not flowless) */
    uint64_t flows_created;
    uint64_t flows_active;     /* at the time of the call (frames still queued to workers not
                                  yet counted) */
    uint64_t flows_evicted;    /* pushed out by max_flows */
    uint64_t flows_timed_out;  /* sessions that ended with reason timeout */
    uint64_t port_reuse_splits;
    uint64_t refused_packets;  /* packets of new flows dropped for want of a record: every one
                                  the worker may have is live or waiting out a grace period
                                  (see max_flows), or no memory for more */
    uint64_t flows_ready;      /* ready callbacks made */
    uint64_t emergency_entered; /* times a worker entered emergency mode */
    uint64_t emergency_active; /* workers in emergency mode now */
    uint64_t memory_bytes;     /* bytes of flow records allocated (slabs) */
    struct cap_decode_stats decode;
};

struct ft_assembler;

/* Returns NULL with a message in err if the config is impossible. With workers > 1 it starts
 * the worker threads. Idle timeouts run on packet time: a monotone clock made from the frames'
 * timestamps (steps back are ignored, a step back of more than 1 s starts a new clock segment),
 * so capture files that jump back and forth in time neither crash nor split sessions wrongly,
 * and 1 and N workers give the same sessions (unless max_flows forces evictions or emergency
 * mode, which happen per worker). feed, finish_input and destroy are called by one thread at a
 * time (any thread); with workers == 1 that thread is a liburcu QSBR reader only during each
 * call, registered by the call (or used as it is if it already is an online QSBR reader). */
struct ft_assembler *ft_assembler_create(const struct ft_config *cfg, ft_session_fn on_session,
                                         void *user, char *err, size_t errlen);
/* Sets the callback of early verdicts (cfg.ready_packets); same threading rules as on_session
 * (it may run concurrently with itself and with on_session on other workers). Call before the
 * first feed. */
void ft_assembler_on_ready(struct ft_assembler *as, ft_session_fn on_ready, void *user);
/* Live capture with no frames: moves the input clock to now_ns (the same clock as the frames'
 * timestamps) so that idle flows time out. Same threading rule as feed. */
void ft_assembler_tick(struct ft_assembler *as, int64_t now_ns);
/* Decodes and assigns frames to sessions. Frames may be reused by the caller on return. */
void ft_assembler_feed(struct ft_assembler *as, const struct cap_frame *frames, int n);
/* End of one input: every open session ends (reason end-of-input; closed or timeout if that
 * already applied at the input's last frame) and the frame counter restarts, so the next file is
 * numbered from 1. Waits until all workers are done. */
void ft_assembler_finish_input(struct ft_assembler *as);
/* Safe from any thread at any time (relaxed counters). */
void ft_assembler_stats(struct ft_assembler *as, struct ft_stats *out);
/* Adds part's counters to sum (several assemblers of one run). */
void ft_stats_add(struct ft_stats *sum, const struct ft_stats *part);
/* Stops the workers and frees everything. Sessions still open are dropped without a callback:
 * call ft_assembler_finish_input first to get them. NULL is accepted. */
void ft_assembler_destroy(struct ft_assembler *as);

#endif
