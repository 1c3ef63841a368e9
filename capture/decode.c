/* decode.c — the L2–L4 decoder behind cap_decode().
 *
 * One frame in, a cap_packet out: layer offsets into the caller's bytes plus the fields the flow
 * table keys on. It runs once per captured frame, so it is written as straight-line code over the
 * bytes: no allocation, no table of handlers, one bounds check per header. Every read is preceded
 * by a check against `lim`, the end of the bytes that both the capture (caplen) and the enclosing
 * IP datagram (its length field) vouch for; crossing `lim` is reported as truncation when the
 * capture ran out there, and as a malformed header when the datagram itself ends there.
 *
 * Tunnels: by default the session is the outermost IP layer (a GRE or VXLAN packet is a GRE or
 * UDP session). With opts->innermost the decoder keeps going into GRE (incl. PPTP and ERSPAN),
 * VXLAN, Geneve, IP-in-IP, 6in4/4in6, Teredo, MPLS-over-UDP and GTP-U, and reports the innermost
 * IP layer whose header it can fully read. */
#include "capture/capture.h"

#include <string.h>

/* Deeper nesting than this is not real traffic; stopping keeps the worst case bounded. */
#define CAP_MAX_TUNNEL_DEPTH 8

#define CAP_LIKELY(x) __builtin_expect(!!(x), 1)
#define CAP_UNLIKELY(x) __builtin_expect(!!(x), 0)
/* The common path (link header, IP, TCP/UDP) is kept in one function body so the window and
 * offsets stay in registers; rarer layers are ordinary calls. */
#define CAP_HOT static inline __attribute__((always_inline))

enum {
    ETH_IPV4 = 0x0800,
    ETH_IPV6 = 0x86dd,
    ETH_VLAN = 0x8100,
    ETH_QINQ = 0x88a8,
    ETH_QINQ_OLD = 0x9100,
    ETH_QINQ_OLD2 = 0x9200,
    ETH_MPLS = 0x8847,
    ETH_MPLS_MC = 0x8848,
    ETH_PPPOE_SESS = 0x8864,
    ETH_TEB = 0x6558,       /* transparent Ethernet bridging: a whole Ethernet frame follows */
    ETH_PPP = 0x880b,       /* GRE (PPTP) carrying PPP */
    ETH_ERSPAN2 = 0x88be,
    ETH_ERSPAN3 = 0x22eb,
    ETH_CISCO_MD = 0x8909,  /* Cisco MetaData (SGT) shim */
    ETH_ARISTA = 0xd28b,    /* Arista vendor header (AVSP), timestamps */
};

enum {
    PROTO_HOPOPT = 0,
    PROTO_ICMP = 1,
    PROTO_IPIP = 4,
    PROTO_TCP = 6,
    PROTO_UDP = 17,
    PROTO_DCCP = 33,
    PROTO_IPV6 = 41,
    PROTO_ROUTING = 43,
    PROTO_FRAGMENT = 44,
    PROTO_GRE = 47,
    PROTO_ESP = 50,
    PROTO_AH = 51,
    PROTO_ICMPV6 = 58,
    PROTO_NONE = 59,
    PROTO_DSTOPTS = 60,
    PROTO_SCTP = 132,
    PROTO_UDPLITE = 136,
};

enum {
    PORT_TEREDO = 3544,
    PORT_VXLAN = 4789,
    PORT_GENEVE = 6081,
    PORT_MPLS_UDP = 6635,
    PORT_GTP_U = 2152,
};

/* What a tunnel header says follows it. */
enum cap_tun_kind {
    TUN_NONE = 0,
    TUN_IP,    /* an IP header; ver is 4, 6, or 0 to go by the version nibble */
    TUN_ETHER, /* a full Ethernet header */
    TUN_ETYPE, /* the payload of EtherType etype (VLAN, MPLS, IP...) */
};

struct cap_tun {
    uint8_t kind;
    uint8_t ver;
    uint16_t etype;
    uint32_t off;
};

/* The readable window of the frame while decoding: lim is the first offset not to read; cut says
 * whether lim is where the capture (or a first fragment) stops, as opposed to where the enclosing
 * datagram says its bytes end. */
struct cap_win {
    const uint8_t *d;
    uint32_t lim;
    bool cut;
};

static inline uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)((uint16_t)p[0] << 8 | p[1]);
}

static inline uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Bytes [off, off+n) are readable. 64-bit so that the sum cannot wrap. */
static inline bool has(const struct cap_win *w, uint32_t off, uint32_t n)
{
    return (uint64_t)off + n <= w->lim;
}

static inline void add_vlan(struct cap_packet *out, uint16_t tci)
{
    if (out->vlan_count < CAP_MAX_VLANS)
        out->vlan_ids[out->vlan_count] = tci & 0x0fff;
    if (out->vlan_count < UINT8_MAX)
        out->vlan_count++;
}

/* The EtherType of what a PPP protocol number carries, or 0 for PPP control protocols (LCP,
 * IPCP...) and anything else that is not a session. */
static inline uint16_t ppp_to_ethertype(uint16_t proto)
{
    switch (proto) {
    case 0x0021:
        return ETH_IPV4;
    case 0x0057:
        return ETH_IPV6;
    case 0x0281:
        return ETH_MPLS;
    case 0x0283:
        return ETH_MPLS_MC;
    default:
        return 0;
    }
}

/* A PPP header at *off (address/control ff 03 may be elided; a protocol number with the low bit
 * set is one byte long). Returns the EtherType it carries (0: not a session) and moves *off past
 * the header, or returns -1 if the header is cut. */
static int ppp_header(const struct cap_win *w, uint32_t *offp)
{
    const uint8_t *d = w->d;
    uint32_t off = *offp;
    if (!has(w, off, 1))
        return -1;
    if (d[off] == 0xff) {
        if (!has(w, off, 2))
            return -1;
        if (d[off + 1] == 0x03)
            off += 2;
    }
    if (!has(w, off, 1))
        return -1;
    uint16_t proto;
    if (d[off] & 1) {
        proto = d[off];
        off += 1;
    } else {
        if (!has(w, off, 2))
            return -1;
        proto = rd16(d + off);
        off += 2;
    }
    *offp = off;
    return ppp_to_ethertype(proto);
}

/* Follows EtherType-chained headers starting with `type` at *off: VLAN tags, MPLS labels, PPPoE,
 * vendor shims. On success *off is the IP header and *ver its expected version (0: decided by the
 * version nibble, for MPLS which does not say). */
static enum cap_decode_reason l2_walk(const struct cap_win *w, uint32_t *offp, uint16_t type,
                                      unsigned *ver, struct cap_packet *out)
{
    const uint8_t *d = w->d;
    uint32_t off = *offp;

    for (;;) {
        if (CAP_LIKELY(type == ETH_IPV4)) {
            *ver = 4;
            break;
        }
        switch (type) {
        case ETH_IPV6:
            *ver = 6;
            *offp = off;
            return CAP_DECODE_OK;
        case ETH_VLAN:
        case ETH_QINQ:
        case ETH_QINQ_OLD:
        case ETH_QINQ_OLD2:
            if (!has(w, off, 4))
                return CAP_DECODE_TRUNCATED_L2;
            add_vlan(out, rd16(d + off));
            type = rd16(d + off + 2);
            off += 4;
            continue;
        case ETH_MPLS:
        case ETH_MPLS_MC:
            /* The label stack says nothing about what it carries; after the bottom label the
             * version nibble is the usual (and tshark's) guess. */
            for (;;) {
                if (!has(w, off, 4))
                    return CAP_DECODE_TRUNCATED_L2;
                uint8_t bos = d[off + 2] & 1;
                off += 4;
                if (bos)
                    break;
            }
            if (!has(w, off, 1))
                return CAP_DECODE_TRUNCATED_L2;
            if ((d[off] >> 4) != 4 && (d[off] >> 4) != 6)
                return CAP_DECODE_NOT_IP;
            *ver = 0;
            *offp = off;
            return CAP_DECODE_OK;
        case ETH_PPPOE_SESS:
            /* version/type, code, session ID, length, then an uncompressed PPP protocol */
            if (!has(w, off, 8))
                return CAP_DECODE_TRUNCATED_L2;
            type = ppp_to_ethertype(rd16(d + off + 6));
            off += 8;
            if (!type)
                return CAP_DECODE_NOT_IP;
            continue;
        case ETH_CISCO_MD: {
            /* version, length (in 4-byte option units), options, then the next EtherType */
            if (!has(w, off, 2))
                return CAP_DECODE_TRUNCATED_L2;
            uint32_t next = 2 + 4 * (uint32_t)d[off + 1];
            if (!has(w, off, next + 2))
                return CAP_DECODE_TRUNCATED_L2;
            type = rd16(d + off + next);
            off += next + 2;
            continue;
        }
        case ETH_ARISTA: {
            /* subtype 1 = timestamp; the version's low byte says 64-bit (0x10) or 48-bit (0x20) */
            if (!has(w, off, 4))
                return CAP_DECODE_TRUNCATED_L2;
            uint16_t sub = rd16(d + off), v = rd16(d + off + 2) & 0xff;
            uint32_t ts_len = v == 0x10 ? 8 : v == 0x20 ? 6 : 0;
            if (sub != 1 || !ts_len)
                return CAP_DECODE_NOT_IP;
            if (!has(w, off, 4 + ts_len + 2))
                return CAP_DECODE_TRUNCATED_L2;
            type = rd16(d + off + 4 + ts_len);
            off += 4 + ts_len + 2;
            continue;
        }
        default:
            /* 802.3 length field (LLC/SNAP: STP, CDP...), ARP, LLDP and everything else */
            return CAP_DECODE_NOT_IP;
        }
    }
    *offp = off;
    return CAP_DECODE_OK;
}

CAP_HOT enum cap_decode_reason ether_walk(const struct cap_win *w, uint32_t *offp, unsigned *ver,
                                          struct cap_packet *out)
{
    uint32_t off = *offp;
    if (!has(w, off, 14))
        return CAP_DECODE_TRUNCATED_L2;
    uint16_t type = rd16(w->d + off + 12);
    *offp = off + 14;
    if (CAP_LIKELY(type == ETH_IPV4 || type == ETH_IPV6)) {
        *ver = type == ETH_IPV4 ? 4 : 6;
        return CAP_DECODE_OK;
    }
    return l2_walk(w, offp, type, ver, out);
}

/* Past the GRE header: where the inner packet starts and what it is, or TUN_NONE. */
static struct cap_tun gre_inner(const struct cap_win *w, uint32_t off)
{
    const uint8_t *d = w->d;
    struct cap_tun t = {0};
    if (!has(w, off, 4))
        return t;
    uint16_t fv = rd16(d + off), proto = rd16(d + off + 2);
    uint32_t hl = 4;

    if ((fv & 7) == 0) {
        if (fv & 0x4000) /* routing present (RFC 1701): source-route entries, not worth it */
            return t;
        hl += (fv & 0x8000 ? 4u : 0u) + (fv & 0x2000 ? 4u : 0u) + (fv & 0x1000 ? 4u : 0u);
    } else if ((fv & 7) == 1) {
        /* PPTP enhanced GRE: key (payload length + call ID) always, sequence and ack optional */
        if (proto != ETH_PPP || !(fv & 0x2000))
            return t;
        hl += 4 + (fv & 0x1000 ? 4u : 0u) + (fv & 0x0080 ? 4u : 0u);
    } else {
        return t;
    }
    off += hl;
    if (!has(w, off, 0))
        return t;

    switch (proto) {
    case ETH_TEB:
        t.kind = TUN_ETHER;
        break;
    case ETH_PPP: {
        int et = ppp_header(w, &off);
        if (et <= 0)
            return t;
        t.kind = TUN_ETYPE;
        t.etype = (uint16_t)et;
        break;
    }
    case ETH_CISCO_MD: {
        /* In GRE the Cisco MetaData shim starts with the EtherType it carries, then version,
         * length (in 4-byte option units) and the options. */
        if (!has(w, off, 4))
            return t;
        t.kind = TUN_ETYPE;
        t.etype = rd16(d + off);
        off += 4 + 4 * (uint32_t)d[off + 3];
        break;
    }
    case ETH_ERSPAN2:
        off += 8;
        t.kind = TUN_ETHER;
        break;
    case ETH_ERSPAN3: {
        if (!has(w, off, 12))
            return t;
        /* frame type (bits 14..10 of the last word) 0 = Ethernet; O bit adds 8 bytes */
        if (((d[off + 10] >> 2) & 0x1f) != 0)
            return t;
        off += 12 + ((d[off + 11] & 1) ? 8u : 0u);
        t.kind = TUN_ETHER;
        break;
    }
    default:
        t.kind = TUN_ETYPE;
        t.etype = proto;
        break;
    }
    t.off = off;
    return t;
}

/* Teredo (RFC 4380): optional authentication and origin-indication headers, then IPv6. UDP port
 * 3544 is also used by the Teredo servers' own non-tunnel traffic, so the IPv6 version nibble has
 * to be there too. */
static struct cap_tun teredo_inner(const struct cap_win *w, uint32_t off)
{
    const uint8_t *d = w->d;
    struct cap_tun t = {0};
    if (!has(w, off, 2))
        return t;
    if (rd16(d + off) == 0x0001) {
        if (!has(w, off, 4))
            return t;
        off += 4 + (uint32_t)d[off + 2] + d[off + 3] + 8 + 1; /* ids, nonce, confirmation */
        if (!has(w, off, 2))
            return t;
    }
    if (rd16(d + off) == 0x0000)
        off += 8;
    if (!has(w, off, 40) || (d[off] >> 4) != 6)
        return t;
    t.kind = TUN_IP;
    t.ver = 6;
    t.off = off;
    return t;
}

/* GTP-U (3GPP TS 29.281), the mobile core's user-plane tunnel: only G-PDUs (type 255) carry a
 * user packet; sequence/N-PDU/extension flags add 4 bytes, then extension headers chain. */
static struct cap_tun gtpu_inner(const struct cap_win *w, uint32_t off)
{
    const uint8_t *d = w->d;
    struct cap_tun t = {0};
    if (!has(w, off, 8) || (d[off] & 0xf0) != 0x30 || d[off + 1] != 0xff)
        return t;
    uint8_t flags = d[off];
    uint32_t p = off + 8;
    if (flags & 0x07) {
        if (!has(w, p, 4))
            return t;
        uint8_t next = flags & 0x04 ? d[p + 3] : 0;
        p += 4;
        while (next != 0) {
            if (!has(w, p, 1) || d[p] == 0)
                return t;
            uint32_t len = 4 * (uint32_t)d[p];
            if (!has(w, p, len))
                return t;
            next = d[p + len - 1];
            p += len;
        }
    }
    t.kind = TUN_IP;
    t.ver = 0;
    t.off = p;
    return t;
}

static struct cap_tun udp_inner(const struct cap_win *w, uint32_t off, uint16_t sport,
                                uint16_t dport)
{
    const uint8_t *d = w->d;
    struct cap_tun t = {0};
    switch (dport) {
    case PORT_VXLAN:
        if (!has(w, off, 8) || !(d[off] & 0x08)) /* the I flag: a valid VNI */
            return t;
        t.kind = TUN_ETHER;
        t.off = off + 8;
        return t;
    case PORT_GENEVE: {
        if (!has(w, off, 8) || (d[off] >> 6) != 0)
            return t;
        uint16_t proto = rd16(d + off + 2);
        t.off = off + 8 + 4 * (uint32_t)(d[off] & 0x3f);
        t.kind = proto == ETH_TEB ? TUN_ETHER : TUN_ETYPE;
        t.etype = proto;
        return t;
    }
    case PORT_MPLS_UDP:
        t.kind = TUN_ETYPE;
        t.etype = ETH_MPLS;
        t.off = off;
        return t;
    default:
        break;
    }
    if (sport == PORT_TEREDO || dport == PORT_TEREDO)
        return teredo_inner(w, off);
    if (sport == PORT_GTP_U || dport == PORT_GTP_U)
        return gtpu_inner(w, off);
    return t;
}

/* An L4 header that is cut or malformed still names its session when the ports are there: a
 * snaplen- or 784-byte-cut last packet belongs to its flow. So l4_off and the ports are filled
 * once the first 4 bytes are present (and the TCP flags once byte 13 is); payload_off stays
 * absent because where the payload starts is not known. */
static enum cap_decode_reason l4_cut(const struct cap_win *w, uint32_t l4, uint8_t proto,
                                     struct cap_packet *out, bool malformed)
{
    const uint8_t *d = w->d;
    enum cap_decode_reason r = malformed || !w->cut ? CAP_DECODE_BAD_L4_HEADER
                                                    : CAP_DECODE_TRUNCATED_L4;
    if (!has(w, l4, 4))
        return r;
    out->layers.l4_off = l4;
    if (proto != PROTO_ICMP && proto != PROTO_ICMPV6) {
        out->src_port = rd16(d + l4);
        out->dst_port = rd16(d + l4 + 2);
    }
    if (proto == PROTO_TCP && has(w, l4, 14))
        out->tcp_flags = d[l4 + 13];
    return r;
}

static inline enum cap_decode_reason past_lim(const struct cap_win *w,
                                              enum cap_decode_reason truncated,
                                              enum cap_decode_reason bad)
{
    return w->cut ? truncated : bad;
}

/* Decodes an IP header at off and what follows it up to the L4 header. ver: 4, 6, or 0 to go by
 * the version nibble. Narrows w->lim to the datagram. When `follow` is set and the L4 layer is a
 * tunnel the decoder knows, *tun says where the inner packet starts. */
CAP_HOT enum cap_decode_reason ip_decode(struct cap_win *w, uint32_t off, unsigned ver,
                                         bool follow, struct cap_packet *out, struct cap_tun *tun)
{
    const uint8_t *d = w->d;
    uint32_t l4;
    uint8_t proto;

    /* One check covers the version byte and the fixed IPv4 header. */
    bool fixed4 = has(w, off, 20);
    if (CAP_UNLIKELY(!fixed4) && !has(w, off, 1))
        return CAP_DECODE_TRUNCATED_IP;
    unsigned nib = d[off] >> 4;
    if (ver == 0)
        ver = nib;
    if (CAP_UNLIKELY(nib != ver || (ver != 4 && ver != 6)))
        return CAP_DECODE_BAD_IP_VERSION;
    out->layers.l3_off = off;
    out->layers.ip_version = (uint8_t)ver;

    if (CAP_LIKELY(ver == 4)) {
        if (CAP_UNLIKELY(!fixed4))
            return CAP_DECODE_TRUNCATED_IP;
        uint32_t ihl = (uint32_t)(d[off] & 0x0f) * 4;
        if (ihl < 20)
            return CAP_DECODE_BAD_IP_HEADER;
        memcpy(out->src_addr, d + off + 12, 4);
        memcpy(out->dst_addr, d + off + 16, 4);
        proto = d[off + 9];
        out->layers.l4_proto = proto;
        uint32_t tot = rd16(d + off + 2);
        /* Total length 0 is what GSO/TSO ("BIG TCP") frames carry: the capture length is all
         * there is to go by. */
        if (tot != 0) {
            if (tot < ihl)
                return CAP_DECODE_BAD_IP_HEADER;
            if (tot < w->lim - off) {
                w->lim = off + tot;
                w->cut = false;
            }
        }
        if (!has(w, off, ihl))
            return past_lim(w, CAP_DECODE_TRUNCATED_IP, CAP_DECODE_BAD_IP_HEADER);
        l4 = off + ihl;
        uint16_t frag = rd16(d + off + 6);
        if (CAP_UNLIKELY(frag & 0x3fff)) {
            out->frag_id = (uint32_t)d[off + 9] << 16 | rd16(d + off + 4);
            if (frag & 0x1fff) {
                out->frag = CAP_FRAG_LATER;
                out->layers.payload_off = l4;
                out->payload_len = w->lim - l4;
                return CAP_DECODE_FRAGMENT;
            }
            out->frag = CAP_FRAG_FIRST;
            w->cut = true; /* the datagram goes on in the next fragment */
        }
        if (CAP_UNLIKELY(proto == PROTO_AH)) {
            if (!has(w, l4, 2))
                return past_lim(w, CAP_DECODE_TRUNCATED_IP, CAP_DECODE_BAD_IP_HEADER);
            uint32_t len = ((uint32_t)d[l4 + 1] + 2) * 4;
            if (!has(w, l4, len))
                return past_lim(w, CAP_DECODE_TRUNCATED_IP, CAP_DECODE_BAD_IP_HEADER);
            proto = d[l4];
            out->layers.l4_proto = proto;
            l4 += len;
        }
    } else {
        if (!has(w, off, 40))
            return CAP_DECODE_TRUNCATED_IP;
        memcpy(out->src_addr, d + off + 8, 16);
        memcpy(out->dst_addr, d + off + 24, 16);
        proto = d[off + 6];
        out->layers.l4_proto = proto;
        uint32_t plen = rd16(d + off + 4);
        /* Payload length 0 with something following is a jumbogram (RFC 2675, BIG TCP): its
         * real length is in a hop-by-hop option; the capture length bounds it just as well. */
        if (plen != 0 || proto == PROTO_NONE) {
            if (40 + plen < w->lim - off) {
                w->lim = off + 40 + plen;
                w->cut = false;
            }
        }
        l4 = off + 40;
        /* Extension headers; each is at least 8 bytes, so this ends within lim/8 rounds. */
        for (;;) {
            uint32_t len;
            if (CAP_LIKELY(proto == PROTO_TCP || proto == PROTO_UDP))
                break;
            if (proto == PROTO_HOPOPT || proto == PROTO_ROUTING || proto == PROTO_DSTOPTS) {
                if (!has(w, l4, 2))
                    return past_lim(w, CAP_DECODE_TRUNCATED_IP, CAP_DECODE_BAD_IP_HEADER);
                len = ((uint32_t)d[l4 + 1] + 1) * 8;
            } else if (proto == PROTO_AH) {
                if (!has(w, l4, 2))
                    return past_lim(w, CAP_DECODE_TRUNCATED_IP, CAP_DECODE_BAD_IP_HEADER);
                len = ((uint32_t)d[l4 + 1] + 2) * 4;
            } else if (proto == PROTO_FRAGMENT) {
                if (!has(w, l4, 8))
                    return past_lim(w, CAP_DECODE_TRUNCATED_IP, CAP_DECODE_BAD_IP_HEADER);
                uint16_t fo = rd16(d + l4 + 2);
                if (fo & 0xfff9)
                    out->frag_id = rd32(d + l4 + 4);
                proto = d[l4];
                out->layers.l4_proto = proto;
                l4 += 8;
                if (fo & 0xfff8) {
                    out->frag = CAP_FRAG_LATER;
                    out->layers.payload_off = l4;
                    out->payload_len = w->lim - l4;
                    return CAP_DECODE_FRAGMENT;
                }
                /* Offset 0: the first fragment when M is set; without M it is an atomic
                 * fragment (RFC 6946), a whole datagram. */
                if (fo & 1) {
                    out->frag = CAP_FRAG_FIRST;
                    w->cut = true;
                }
                continue;
            } else {
                break;
            }
            if (!has(w, l4, len))
                return past_lim(w, CAP_DECODE_TRUNCATED_IP, CAP_DECODE_BAD_IP_HEADER);
            proto = d[l4];
            out->layers.l4_proto = proto;
            l4 += len;
        }
    }

    /* L4. l4_off is set for any upper-layer protocol once its header (if it is one we parse) is
     * complete; protocols without a parsed header have payload_off == l4_off. */
    uint32_t hl;
    if (CAP_LIKELY(proto == PROTO_TCP)) {
        if (!has(w, l4, 20))
            return l4_cut(w, l4, proto, out, false);
        hl = (uint32_t)(d[l4 + 12] >> 4) * 4;
        if (hl < 20)
            return l4_cut(w, l4, proto, out, true);
        if (hl > 20 && !has(w, l4, hl))
            return l4_cut(w, l4, proto, out, false);
        out->src_port = rd16(d + l4);
        out->dst_port = rd16(d + l4 + 2);
        out->tcp_flags = d[l4 + 13];
    } else switch (proto) {
    case PROTO_UDP:
    case PROTO_UDPLITE:
        if (!has(w, l4, 8))
            return l4_cut(w, l4, proto, out, false);
        hl = 8;
        out->src_port = rd16(d + l4);
        out->dst_port = rd16(d + l4 + 2);
        if (follow)
            *tun = udp_inner(w, l4 + 8, out->src_port, out->dst_port);
        break;
    case PROTO_ICMP:
    case PROTO_ICMPV6:
        /* type, code, checksum and the 4-byte rest-of-header every message has */
        if (!has(w, l4, 8))
            return l4_cut(w, l4, proto, out, false);
        hl = 8;
        break;
    case PROTO_SCTP:
        if (!has(w, l4, 12))
            return l4_cut(w, l4, proto, out, false);
        hl = 12;
        out->src_port = rd16(d + l4);
        out->dst_port = rd16(d + l4 + 2);
        break;
    case PROTO_DCCP:
        /* ports, then the header length in 4-byte words at byte 4 (12 bytes at least) */
        if (!has(w, l4, 12))
            return l4_cut(w, l4, proto, out, false);
        hl = (uint32_t)d[l4 + 4] * 4;
        if (hl < 12)
            return l4_cut(w, l4, proto, out, true);
        if (!has(w, l4, hl))
            return l4_cut(w, l4, proto, out, false);
        out->src_port = rd16(d + l4);
        out->dst_port = rd16(d + l4 + 2);
        break;
    case PROTO_GRE:
        hl = 0;
        if (follow)
            *tun = gre_inner(w, l4);
        break;
    case PROTO_IPIP:
    case PROTO_IPV6:
        hl = 0;
        if (follow) {
            tun->kind = TUN_IP;
            tun->ver = proto == PROTO_IPIP ? 4 : 6;
            tun->off = l4;
        }
        break;
    default:
        hl = 0;
        break;
    }
    out->layers.l4_off = l4;
    out->layers.payload_off = l4 + hl;
    out->payload_len = w->lim - (l4 + hl);
    return CAP_DECODE_OK;
}

/* The same, out of line, for the layers inside a tunnel. */
static __attribute__((noinline)) enum cap_decode_reason
ip_decode_inner(struct cap_win *w, uint32_t off, unsigned ver, struct cap_packet *out,
                struct cap_tun *tun)
{
    return ip_decode(w, off, ver, true, out, tun);
}

/* Clears what an inner decode rewrites, so an inner layer that stops early leaves nothing of the
 * outer one behind; cap_decode starts every frame from it too. */
static inline void reset_session_layer(struct cap_packet *out)
{
    out->layers.l3_off = CAP_ABSENT;
    out->layers.l4_off = CAP_ABSENT;
    out->layers.payload_off = CAP_ABSENT;
    out->layers.ip_version = 0;
    out->layers.l4_proto = 0;
    out->payload_len = 0;
    out->frag = CAP_FRAG_NONE;
    out->frag_id = 0;
    out->tcp_flags = 0;
    memset(out->src_addr, 0, sizeof out->src_addr);
    memset(out->dst_addr, 0, sizeof out->dst_addr);
    out->src_port = 0;
    out->dst_port = 0;
}

/* A decode that reached a complete IP header: addresses and protocol are known. */
static inline bool has_ip_session(enum cap_decode_reason r)
{
    return r == CAP_DECODE_OK || r >= CAP_DECODE_FRAGMENT;
}

/* Decodes the session layer starting at the IP header at off and, with opts->innermost, follows
 * tunnels inward.
 *
 * Fallback rule for tunnels: an inner layer replaces the outer one only when its IP header is
 * complete (reason OK, FRAGMENT, TRUNCATED_L4 or BAD_L4_HEADER). So a frame cut inside the inner
 * TCP header still belongs to the inner session (and is counted as TRUNCATED_L4 there) rather than
 * inventing an outer UDP/GRE session, while a payload that only looks like a tunnel (a non-VXLAN
 * service on port 4789, a GRE keepalive, a cut inner IP header, non-IP inside) leaves the outer
 * session as decoded, with its reason and tunnel_depth unchanged. */
static __attribute__((noinline)) enum cap_decode_reason
follow_tunnels(struct cap_win *w, struct cap_tun tun, enum cap_decode_reason r,
               struct cap_packet *out)
{
    while (r == CAP_DECODE_OK && tun.kind != TUN_NONE && out->tunnel_depth < CAP_MAX_TUNNEL_DEPTH) {
        struct cap_packet saved = *out;
        struct cap_win inner = *w;
        uint32_t ioff = tun.off;
        unsigned iver = tun.ver;
        enum cap_decode_reason ir = CAP_DECODE_OK;

        if (tun.kind == TUN_ETHER)
            ir = ether_walk(&inner, &ioff, &iver, out);
        else if (tun.kind == TUN_ETYPE)
            ir = l2_walk(&inner, &ioff, tun.etype, &iver, out);
        if (ir == CAP_DECODE_OK) {
            reset_session_layer(out);
            out->tunnel_depth++;
            tun.kind = TUN_NONE;
            ir = ip_decode_inner(&inner, ioff, iver, out, &tun);
        }
        if (!has_ip_session(ir)) {
            *out = saved;
            break;
        }
        *w = inner;
        r = ir;
    }
    return r;
}

CAP_HOT enum cap_decode_reason session_decode(const struct cap_decode_opts *opts,
                                              struct cap_win *w, uint32_t off, unsigned ver,
                                              struct cap_packet *out)
{
    bool follow = opts && opts->innermost;
    struct cap_tun tun = {0};
    enum cap_decode_reason r = ip_decode(w, off, ver, follow, out, &tun);
    if (CAP_UNLIKELY(tun.kind != TUN_NONE) && r == CAP_DECODE_OK)
        r = follow_tunnels(w, tun, r, out);
    return r;
}

static inline uint16_t rd16_le(const uint8_t *p)
{
    return (uint16_t)(p[0] | (uint16_t)p[1] << 8);
}

/* NFLOG: family, version, resource ID, then TLVs (length and type in the capturing host's byte
 * order, which libpcap has already converted to ours), 4-byte aligned; type 9 is the packet. */
static enum cap_decode_reason nflog_walk(const struct cap_win *w, uint32_t *offp, unsigned *ver)
{
    const uint8_t *d = w->d;
    uint32_t off = *offp;
    if (!has(w, off, 4))
        return CAP_DECODE_TRUNCATED_L2;
    *ver = d[off] == 2 ? 4 : d[off] == 10 ? 6 : 0;
    if (!*ver)
        return CAP_DECODE_NOT_IP;
    off += 4;
    for (;;) {
        if (!has(w, off, 4))
            return CAP_DECODE_TRUNCATED_L2;
        uint16_t len, type;
        memcpy(&len, d + off, 2);
        memcpy(&type, d + off + 2, 2);
        if (len < 4)
            return CAP_DECODE_NOT_IP;
        if (type == 9) {
            *offp = off + 4;
            return CAP_DECODE_OK;
        }
        off += ((uint32_t)len + 3) & ~3u;
    }
}

/* Finds the start of the network layer under the link header. */
CAP_HOT enum cap_decode_reason link_decode(const struct cap_win *w, uint16_t linktype,
                                           uint32_t *offp, unsigned *ver, struct cap_packet *out)
{
    const uint8_t *d = w->d;
    uint32_t base = 0, off = 0;
    enum cap_decode_reason r;

    if (CAP_LIKELY(linktype == CAP_LINK_EN10MB)) {
        r = ether_walk(w, &off, ver, out);
        if (CAP_LIKELY(off != 0))
            out->layers.eth_off = 0;
        *offp = off;
        return r;
    }
again:
    switch (linktype) {
    case CAP_LINK_EN10MB:
        r = ether_walk(w, &off, ver, out);
        if (CAP_LIKELY(off != base))
            out->layers.eth_off = base;
        break;
    case CAP_LINK_LINUX_SLL:
        /* packet type, ARPHRD type, address length, 8 address bytes, protocol */
        if (!has(w, base, 16))
            return CAP_DECODE_TRUNCATED_L2;
        off = base + 16;
        /* ARPHRD_NETLINK: the protocol field is a netlink family, not an EtherType */
        if (rd16(d + base + 2) == 824)
            return CAP_DECODE_NOT_IP;
        r = l2_walk(w, &off, rd16(d + base + 14), ver, out);
        break;
    case CAP_LINK_LINUX_SLL2:
        /* protocol, reserved, interface index, ARPHRD type, packet type, address length, address */
        if (!has(w, base, 20))
            return CAP_DECODE_TRUNCATED_L2;
        off = base + 20;
        if (rd16(d + base + 8) == 824)
            return CAP_DECODE_NOT_IP;
        r = l2_walk(w, &off, rd16(d + base), ver, out);
        break;
    case CAP_LINK_RAW:
    case CAP_LINK_RAW_OLD:
    case CAP_LINK_RAW_OLD2:
        *ver = 0;
        r = CAP_DECODE_OK;
        break;
    case CAP_LINK_IPV4:
        *ver = 4;
        r = CAP_DECODE_OK;
        break;
    case CAP_LINK_IPV6:
        *ver = 6;
        r = CAP_DECODE_OK;
        break;
    case CAP_LINK_NULL:
    case CAP_LINK_LOOP: {
        /* The AF_ value is in the capturing host's byte order (NULL) or network order (LOOP),
         * and files move between hosts: accept both. AF_INET6 differs between OSes. */
        if (!has(w, base, 4))
            return CAP_DECODE_TRUNCATED_L2;
        uint32_t be = rd32(d + base);
        uint32_t le = __builtin_bswap32(be);
        uint32_t af = be < le ? be : le;
        off = base + 4;
        if (af == 2)
            *ver = 4;
        else if (af == 10 || af == 24 || af == 28 || af == 30)
            *ver = 6;
        else
            return CAP_DECODE_NOT_IP;
        r = CAP_DECODE_OK;
        break;
    }
    case CAP_LINK_PPP:
    case CAP_LINK_PPP_HDLC: {
        int et = ppp_header(w, &off);
        if (et < 0)
            return CAP_DECODE_TRUNCATED_L2;
        if (et == 0)
            return CAP_DECODE_NOT_IP;
        r = l2_walk(w, &off, (uint16_t)et, ver, out);
        break;
    }
    case CAP_LINK_IPOIB:
        /* source and destination hardware addresses (20 bytes each), EtherType, reserved */
        if (!has(w, base, 44))
            return CAP_DECODE_TRUNCATED_L2;
        off = base + 44;
        r = l2_walk(w, &off, rd16(d + base + 40), ver, out);
        break;
    case CAP_LINK_NFLOG:
        r = nflog_walk(w, &off, ver);
        break;
    case CAP_LINK_PPI: {
        /* version, flags, header length and the link type of what follows, little-endian */
        if (!has(w, base, 8))
            return CAP_DECODE_TRUNCATED_L2;
        uint32_t len = rd16_le(d + base + 2);
        uint32_t dlt = rd16_le(d + base + 4) | (uint32_t)rd16_le(d + base + 6) << 16;
        if (len < 8 || base != 0 || dlt == CAP_LINK_PPI || dlt > UINT16_MAX)
            return CAP_DECODE_UNSUPPORTED_LINK;
        if (!has(w, base, len))
            return CAP_DECODE_TRUNCATED_L2;
        linktype = (uint16_t)dlt;
        base = off = len;
        goto again;
    }
    default:
        return CAP_DECODE_UNSUPPORTED_LINK;
    }
    *offp = off;
    return r;
}

enum cap_decode_reason cap_decode(const struct cap_decode_opts *opts, uint16_t linktype,
                                  const uint8_t *data, uint32_t caplen, uint32_t wirelen,
                                  int64_t ts_ns, struct cap_packet *out)
{
    /* Field by field: a struct-literal assignment compiles to `rep stos`, whose start-up cost
     * is a large part of decoding a short frame. */
    out->data = data;
    out->caplen = caplen;
    out->wirelen = wirelen;
    out->ts_ns = ts_ns;
    out->layers.eth_off = CAP_ABSENT;
    out->layers.linktype = linktype;
    out->tunnel_depth = 0;
    out->vlan_count = 0;
    memset(out->vlan_ids, 0, sizeof out->vlan_ids);
    reset_session_layer(out);
    struct cap_win w = {.d = data, .lim = data ? caplen : 0, .cut = true};
    uint32_t off = 0;
    unsigned ver = 0;
    enum cap_decode_reason r = link_decode(&w, linktype, &off, &ver, out);
    if (CAP_LIKELY(r == CAP_DECODE_OK))
        r = session_decode(opts, &w, off, ver, out);
    out->reason = (uint8_t)r;
    return r;
}

const char *cap_decode_reason_name(enum cap_decode_reason reason)
{
    static const char *const names[CAP_DECODE_REASON_COUNT] = {
        [CAP_DECODE_OK] = "ok",
        [CAP_DECODE_UNSUPPORTED_LINK] = "unsupported_link",
        [CAP_DECODE_TRUNCATED_L2] = "truncated_l2",
        [CAP_DECODE_NOT_IP] = "not_ip",
        [CAP_DECODE_TRUNCATED_IP] = "truncated_ip",
        [CAP_DECODE_BAD_IP_VERSION] = "bad_ip_version",
        [CAP_DECODE_BAD_IP_HEADER] = "bad_ip_header",
        [CAP_DECODE_FRAGMENT] = "fragment",
        [CAP_DECODE_TRUNCATED_L4] = "truncated_l4",
        [CAP_DECODE_BAD_L4_HEADER] = "bad_l4_header",
    };
    if ((unsigned)reason >= CAP_DECODE_REASON_COUNT)
        return "unknown";
    return names[reason];
}

void cap_decode_stats_add(struct cap_decode_stats *sum, const struct cap_decode_stats *part)
{
    sum->frames += part->frames;
    for (int i = 0; i < CAP_DECODE_REASON_COUNT; i++)
        sum->by_reason[i] += part->by_reason[i];
}
