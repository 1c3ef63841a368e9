/* capture.h — packet sources (pcap/pcapng files, live libpcap) and the L2–L4 decoder.
 *
 * A source hands out frames in bursts; the decoder turns one frame into a cap_packet: offsets into
 * the caller's bytes plus the few fields the flow table needs. The decoder allocates nothing and
 * never reads past caplen; a frame it cannot fully decode is reported with a reason, not an error. */
#ifndef NETLM_CAPTURE_H
#define NETLM_CAPTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Link types (LINKTYPE_* numbers as stored in pcap/pcapng files). */
enum {
    CAP_LINK_NULL = 0,
    CAP_LINK_EN10MB = 1,
    CAP_LINK_RAW_OLD = 12, /* DLT_RAW on some BSDs */
    CAP_LINK_RAW_OLD2 = 14,
    CAP_LINK_RAW = 101,
    CAP_LINK_LOOP = 108,
    CAP_LINK_LINUX_SLL = 113,
    CAP_LINK_IPV4 = 228,
    CAP_LINK_IPV6 = 229,
    CAP_LINK_LINUX_SLL2 = 276,
    /* also decoded: */
    CAP_LINK_PPP = 9,
    CAP_LINK_PPP_HDLC = 50,
    CAP_LINK_PPI = 192,   /* Per-Packet Information header, then the link type it names */
    CAP_LINK_NFLOG = 239, /* Linux NFLOG: TLVs, the packet in NFULA_PAYLOAD */
    CAP_LINK_IPOIB = 242, /* IP over InfiniBand */
};

#define CAP_ABSENT UINT32_MAX /* offset of a layer the frame does not have */
#define CAP_MAX_VLANS 4       /* tags remembered; deeper stacks are still walked */

/* Why a frame was not fully decoded. Counted per reason; never fatal. */
enum cap_decode_reason {
    CAP_DECODE_OK = 0,
    CAP_DECODE_UNSUPPORTED_LINK, /* link type the decoder does not know */
    CAP_DECODE_TRUNCATED_L2,     /* caplen ends inside the link/VLAN/MPLS/PPPoE headers */
    CAP_DECODE_NOT_IP,           /* ARP, STP, LLC, PPP control...: valid, just not a flow */
    CAP_DECODE_TRUNCATED_IP,     /* caplen ends inside the IP header or its extension headers */
    CAP_DECODE_BAD_IP_VERSION,   /* EtherType says IPv4/IPv6 but the version nibble disagrees */
    CAP_DECODE_BAD_IP_HEADER,    /* IHL < 5, total length below header, ext headers overrun */
    CAP_DECODE_FRAGMENT,         /* a non-first IP fragment: no L4 header, so no ports */
    CAP_DECODE_TRUNCATED_L4,     /* caplen ends inside the TCP/UDP/ICMP header */
    CAP_DECODE_BAD_L4_HEADER,    /* TCP data offset < 5 (DCCP < 3); L4 header past the datagram */
    CAP_DECODE_REASON_COUNT
};
/* Short lowercase name ("ok", "truncated_l4", ...) for counters and logs; "unknown" if out of
 * range. */
const char *cap_decode_reason_name(enum cap_decode_reason reason);

/* What a cap_packet holds for each reason (anything not listed is CAP_ABSENT / zero):
 * - UNSUPPORTED_LINK, TRUNCATED_L2, NOT_IP: eth_off once the Ethernet header is complete, and the
 *   VLAN tags met on the way.
 * - BAD_IP_VERSION: no IP layer.
 * - TRUNCATED_IP, BAD_IP_HEADER: l3_off and ip_version once the version byte is there; addresses
 *   and l4_proto once the fixed header (20 / 40 bytes) is (inside IPv6 extension headers,
 *   l4_proto is the last next-header value reached).
 * - FRAGMENT: the IP layer (addresses, l4_proto = the datagram's upper protocol), frag = LATER,
 *   and payload_off / payload_len = the fragment's data; no l4_off, no ports.
 * - TRUNCATED_L4, BAD_L4_HEADER: the IP layer; l4_off and the ports once the first 4 bytes of
 *   the L4 header are there (tcp_flags once 14 are), so a cut last packet still names its flow;
 *   payload_off absent. Fewer than 4 bytes: l4_off absent, ports 0.
 * - OK: everything. For upper protocols whose header is not parsed (GRE, ESP, IP-in-IP in the
 *   default mode, OSPF, ...) l4_off == payload_off and the ports are 0.
 * In the default mode a tunnel packet is its outer session; with cap_decode_opts.innermost the
 * innermost IP layer whose header is complete is the session, and eth_off / vlan tags still
 * describe the outer frame (inner VLAN tags are appended). */

enum cap_frag { CAP_FRAG_NONE = 0, CAP_FRAG_FIRST = 1, CAP_FRAG_LATER = 2 };

/* Where each layer starts, as byte offsets from the start of the frame. This is all a consumer
 * needs to find a header field again in a stored copy of the frame's first bytes. */
struct cap_layers {
    uint32_t eth_off;     /* outermost Ethernet header (MAC addresses), or CAP_ABSENT */
    uint32_t l3_off;      /* IP header of the session layer, or CAP_ABSENT */
    uint32_t l4_off;      /* TCP/UDP/ICMP header, or CAP_ABSENT (also for later fragments) */
    uint32_t payload_off; /* first byte after the L4 header, or CAP_ABSENT */
    uint16_t linktype;
    uint8_t ip_version;   /* 4, 6, or 0 without an IP layer */
    uint8_t l4_proto;     /* IPPROTO_* of the session layer (after IPv6 extension headers) */
};

struct cap_packet {
    const uint8_t *data; /* the caller's bytes; the view is valid as long as they are */
    uint32_t caplen;
    uint32_t wirelen;
    int64_t ts_ns;
    struct cap_layers layers;
    uint32_t payload_len; /* L4 payload bytes present in the frame per the IP length, ≤ caplen */
    uint8_t reason;       /* enum cap_decode_reason: the first problem met, CAP_DECODE_OK if none */
    uint8_t frag;         /* enum cap_frag */
    uint8_t tcp_flags;    /* FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 URG 0x20 ECE 0x40 CWR 0x80 */
    uint8_t tunnel_depth; /* encapsulations passed to reach the session layer */
    uint8_t vlan_count;   /* VLAN tags seen (all depths, outer and inner) */
    uint16_t vlan_ids[CAP_MAX_VLANS]; /* outermost first; 12-bit VIDs */
    uint8_t src_addr[16];             /* IPv4 uses the first 4 bytes, the rest zero */
    uint8_t dst_addr[16];
    uint16_t src_port; /* host order (TCP, UDP, UDP-Lite, SCTP, DCCP); ICMP/ICMPv6 and others: 0 */
    uint16_t dst_port;
    /* Which datagram a fragment (frag FIRST or LATER) of the session layer belongs to, together
     * with the addresses: IPv4 the protocol byte << 16 | the identification, IPv6 the fragment
     * header's identification. 0 when frag is NONE. */
    uint32_t frag_id;
};

struct cap_decode_opts {
    /* follow tunnels (GRE, VXLAN, Geneve, IP-in-IP, 6in4, Teredo) to the inner session; also
     * 4in6, PPTP GRE, ERSPAN, MPLS-over-UDP and GTP-U */
    bool innermost;
};

/* Decodes one frame. Fills *out completely whatever happens (absent layers are CAP_ABSENT) and
 * returns out->reason. Thread-safe; allocates nothing. opts may be NULL (the defaults). */
enum cap_decode_reason cap_decode(const struct cap_decode_opts *opts, uint16_t linktype,
                                  const uint8_t *data, uint32_t caplen, uint32_t wirelen,
                                  int64_t ts_ns, struct cap_packet *out);

/* Per-reason counters, kept by whoever runs the decoder (one per thread, summed for reports). */
struct cap_decode_stats {
    uint64_t frames;
    uint64_t by_reason[CAP_DECODE_REASON_COUNT];
};
void cap_decode_stats_add(struct cap_decode_stats *sum, const struct cap_decode_stats *part);

/* ---- packet sources ---- */

struct cap_frame {
    const uint8_t *data; /* valid until the next cap_next_burst() on the same source */
    uint32_t caplen;
    uint32_t wirelen;
    int64_t ts_ns;
    uint16_t linktype;
};

struct cap_source_stats {
    uint64_t frames;         /* handed out */
    uint64_t bytes;          /* caplen summed */
    uint64_t kernel_dropped; /* live only: pcap_stats ps_drop */
    uint64_t iface_dropped;  /* live only: pcap_stats ps_ifdrop */
};

struct cap_live_opts {
    const char *iface;
    int snaplen;     /* bytes per frame kept; 0 = 262144 */
    int buffer_mb;   /* kernel ring size; 0 = libpcap default */
    const char *bpf; /* capture filter, NULL = all */
    bool promisc;
    int timeout_ms;  /* how long a burst may wait for packets; 0 = 10 ms */
    /* 0 or 1: one handle sees every frame. More: the handle's packet socket starts a PACKET_FANOUT
     * group of its own (hash mode) that cap_open_reader's further handles join; the kernel gives
     * each frame to one handle of the group by its flow hash, which is symmetric, so both
     * directions of a flow reach the same handle. IP fragments are hashed by their addresses. */
    uint32_t readers;
};

/* A DPDK port instead of a kernel interface (the sensor's capture.source = "dpdk"): the frames
 * never pass through the kernel. Each receive queue is read by one thread at a time through its
 * own source (cap_open_dpdk: queue 0; cap_open_reader: the others); frames are copied out of their
 * mbufs (up to snaplen), so the mbufs go back to the pool at once and a slow consumer can never
 * starve the NIC of buffers. */
struct cap_dpdk_opts {
    /* A PCI address bound to a DPDK driver ("0000:3b:00.0", "3b:00.0"), or a virtual device's
     * arguments ("net_pcap0,rx_pcap=/tmp/x.pcap", "net_af_packet0,iface=eth1"). */
    const char *port;
    /* EAL arguments, separated by blanks ("-l 2 -n 4 --huge-dir /mnt/huge"); NULL or "" for the
     * defaults: the core the caller runs on, hugepages as the system provides them. */
    const char *eal_args;
    int snaplen;            /* bytes per frame kept; 0 = 262144 */
    const char *bpf;        /* capture filter (libpcap syntax, run in user space), NULL = all */
    bool promisc;
    uint32_t rx_descriptors; /* receive ring; 0 = 4096 (rounded to what the NIC allows) */
    uint32_t mbufs;          /* buffers in the pool; 0 = 4 × rx_descriptors */
    bool busy_poll;          /* spin on an empty ring (one core at 100 %, the least latency);
                                else sleep up to 1 ms once the ring has been empty a while */
    /* Receive queues, 0 or 1 = one. With more, a NIC that hashes (RSS) gets a symmetric Toeplitz
     * key, so that both directions of a flow arrive on the same queue; a virtual device without
     * RSS spreads frames its own way (net_af_packet's qpairs: the kernel's flow hash, symmetric;
     * net_pcap: one rx_pcap file per queue). */
    uint32_t queues;
};

struct cap_source;

/* Results of cap_next_burst(). */
enum { CAP_BURST_END = -1, CAP_BURST_ERROR = -2 };

/* Opens a pcap or pcapng file (either byte order, µs or ns). pcap goes through libpcap; pcapng
 * through netlm's own reader (capture/pcapng.c), which takes every section and interface: each
 * frame carries its own interface's link type (cap_frame.linktype) and time resolution, where
 * libpcap refuses a file whose interfaces differ. On failure returns NULL and writes one line
 * naming the file and the problem into err. */
struct cap_source *cap_open_file(const char *path, char *err, size_t errlen);
struct cap_source *cap_open_live(const struct cap_live_opts *opts, char *err, size_t errlen);
/* Starts DPDK's environment (once per process: a second DPDK source is refused) and the port.
 * Built without DPDK it fails with a message saying so. cap_source_stats(): kernel_dropped is
 * the frames the NIC dropped for want of ring space (imissed), iface_dropped its receive errors
 * and allocation failures. */
struct cap_source *cap_open_dpdk(const struct cap_dpdk_opts *opts, char *err, size_t errlen);
/* Reader `index` (1 .. readers - 1) of the input `first` was opened for (cap_live_opts.readers:
 * another handle in its fanout group; cap_dpdk_opts.queues: receive queue `index` of its port),
 * a source of its own for another thread. Close these before first (which closes a DPDK port).
 * Its stats count its own frames and, for libpcap, its own socket's drops; a DPDK port's drop
 * counters are reported by first only. */
struct cap_source *cap_open_reader(struct cap_source *first, uint32_t index, char *err, size_t errlen);
/* Readers the source's input was opened for: its fanout group's handles or its DPDK port's
 * receive queues; 1 for a file or a single handle. */
uint32_t cap_source_readers(const struct cap_source *src);
/* DPDK's version ("DPDK 22.11.11") when this build has the DPDK source, else NULL. */
const char *cap_dpdk_version(void);

/* Whether bpf (pcap-filter(7)) compiles for Ethernet frames, the link type of a live interface
 * or a DPDK port, without opening anything: a configuration check. False with one line in err
 * (the expression and libpcap's reason, for the caller to prefix with what set it). */
bool cap_filter_check(const char *bpf, char *err, size_t errlen);
/* A file source from now on hands out only the frames bpf matches, compiled for the file's link
 * type (as pcap_setfilter would; a live source takes its filter at open); in a pcapng file, for
 * each interface's link type. False with one line naming the file in err: not a file, or the
 * filter does not compile for its link type (a pcapng interface described further on whose link
 * type it does not compile for stops that file's bursts with CAP_BURST_ERROR). */
bool cap_source_set_filter(struct cap_source *src, const char *bpf, char *err, size_t errlen);

/* Fills up to max frames. Returns the count (0: nothing yet on a live source), CAP_BURST_END at
 * the end of a file, CAP_BURST_ERROR on a read error (cap_source_error() says what; for a
 * truncated or corrupted file the frames before the damage have been handed out already). */
int cap_next_burst(struct cap_source *src, struct cap_frame *frames, int max);
const char *cap_source_error(const struct cap_source *src);
const char *cap_source_name(const struct cap_source *src);
/* A pcapng file's: its first interface's (frames carry their own). */
uint16_t cap_source_linktype(const struct cap_source *src);
/* A file source: how far into the file it has read, in bytes from where it was opened (the end
 * of the last frame handed out or of a record after it); what progress is measured in, since
 * frame bytes leave out the file's own headers (16 per pcap record, 28 to 32 and options per
 * pcapng block). -1 where unknown: a pipe read by libpcap, a live source. */
int64_t cap_source_offset(const struct cap_source *src);
void cap_source_stats(struct cap_source *src, struct cap_source_stats *out);
void cap_close(struct cap_source *src);

#endif
