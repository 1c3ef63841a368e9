/* header_mode.c — which header bytes each anonymization mode hides, found from the decoder's
 * layer offsets (never a fixed byte count, which is what broke the seed on raw-IP captures).
 *
 * Modes only ever zero bytes (or, for strip, choose a window); nothing is recomputed, so masked
 * checksums stay zero and unmasked ones keep their original, now inconsistent, values — as in
 * the seed, where scapy re-serialized the dissected checksums unchanged. A field that lies
 * partly past the stored bytes has its stored part zeroed: half an address is still a leak. */
#include <string.h>

#include "tokenizer/tokenizer_internal.h"

enum {
    TOK_PROTO_ICMP = 1,
    TOK_PROTO_TCP = 6,
    TOK_PROTO_UDP = 17,
    TOK_PROTO_DCCP = 33,
    TOK_PROTO_ICMPV6 = 58,
    TOK_PROTO_SCTP = 132,
    TOK_PROTO_UDPLITE = 136,
};

static const char *const tok_mode_names[] = {"none", "seed", "full", "strict", "strip"};

const char *tok_header_mode_name(enum tok_header_mode mode)
{
    if ((unsigned)mode >= sizeof(tok_mode_names) / sizeof(tok_mode_names[0]))
        return "?";
    return tok_mode_names[mode];
}

bool tok_header_mode_parse(const char *name, enum tok_header_mode *out)
{
    for (unsigned i = 0; i < sizeof(tok_mode_names) / sizeof(tok_mode_names[0]); i++)
        if (name && strcmp(name, tok_mode_names[i]) == 0) {
            *out = (enum tok_header_mode)i;
            return true;
        }
    return false;
}

bool tok_l4_has_ports(uint8_t proto)
{
    return proto == TOK_PROTO_TCP || proto == TOK_PROTO_UDP || proto == TOK_PROTO_DCCP ||
           proto == TOK_PROTO_SCTP || proto == TOK_PROTO_UDPLITE;
}

/* Offsets are uint32 from the decoder; sums are done in 64 bits so that a CAP_ABSENT-like
 * value plus a field offset cannot wrap into range. */
static void tok_zero(struct tok_masked_frame *m, uint64_t off, uint64_t len, uint8_t keep)
{
    if (off >= m->len || len == 0 || m->n_ranges == TOK_MAX_ZERO_RANGES)
        return;
    if (len > m->len - off)
        len = m->len - off;
    m->ranges[m->n_ranges++] = (struct tok_zero_range){(uint32_t)off, (uint32_t)len, keep};
}

static bool tok_readable(const struct tok_masked_frame *m, uint64_t off, uint64_t len)
{
    return off <= m->len && len <= m->len - off;
}

/* The TCP timestamp option (kind 8) carries the sender's clock: a host fingerprint and an
 * uptime, the best-known shortcut feature of published traffic classifiers. */
static void tok_zero_tcp_timestamps(struct tok_masked_frame *m, uint64_t l4)
{
    if (!tok_readable(m, l4 + 12, 1))
        return;
    uint64_t hdr_end = l4 + (uint64_t)(m->frame[l4 + 12] >> 4) * 4;
    uint64_t end = hdr_end < m->len ? hdr_end : m->len;
    for (uint64_t opt = l4 + 20; opt < end;) {
        uint8_t kind = m->frame[opt];
        if (kind == 0)
            break;
        if (kind == 1) {
            opt++;
            continue;
        }
        if (opt + 1 >= end)
            break;
        uint8_t olen = m->frame[opt + 1];
        if (olen < 2)
            break;
        if (kind == 8) {
            uint64_t vlen = olen - 2u;
            if (opt + 2 + vlen > hdr_end)
                vlen = hdr_end > opt + 2 ? hdr_end - (opt + 2) : 0;
            tok_zero(m, opt + 2, vlen, 0);
        }
        opt += olen;
    }
}

/* An ICMP error quotes the offending packet's IP header and first L4 bytes: the session's
 * addresses and ports again, which full mode promises to hide. */
static void tok_zero_icmp_quote(struct tok_masked_frame *m, uint64_t l4, bool v6)
{
    if (!tok_readable(m, l4 + 8, 1))
        return;
    uint8_t type = m->frame[l4];
    uint64_t q = l4 + 8;
    uint8_t version = m->frame[q] >> 4;
    if (!v6 && (type == 3 || type == 4 || type == 5 || type == 11 || type == 12) && version == 4) {
        uint64_t ihl = (uint64_t)(m->frame[q] & 0x0f) * 4;
        tok_zero(m, q + 12, 8, 0);
        if (ihl >= 20 && tok_readable(m, q + 9, 1) && tok_l4_has_ports(m->frame[q + 9]))
            tok_zero(m, q + ihl, 4, 0);
    } else if (v6 && type >= 1 && type <= 4 && version == 6) {
        tok_zero(m, q + 8, 32, 0);
        if (tok_readable(m, q + 6, 1) && tok_l4_has_ports(m->frame[q + 6]))
            tok_zero(m, q + 40, 4, 0);
    }
}

static void tok_collect_ranges(struct tok_masked_frame *m, enum tok_header_mode mode,
                               const struct cap_layers *L)
{
    bool strict = mode == TOK_HDR_STRICT;
    bool full = mode == TOK_HDR_FULL || strict;
    if (mode != TOK_HDR_SEED && !full)
        return;

    if (L->eth_off != CAP_ABSENT) {
        /* The seed zeroed only the source MAC: its destination assignment was misspelled. */
        if (full)
            tok_zero(m, L->eth_off, 12, 0);
        else
            tok_zero(m, (uint64_t)L->eth_off + 6, 6, 0);
    } else if (full && L->linktype == CAP_LINK_LINUX_SLL) {
        /* Linux cooked captures carry the sender's MAC in their own header, at the frame's
         * start (the 8-byte address field); the seed's scapy left it, as it is no Ether. */
        tok_zero(m, 6, 8, 0);
    } else if (full && L->linktype == CAP_LINK_LINUX_SLL2) {
        tok_zero(m, 12, 8, 0);
    }

    if (L->l3_off != CAP_ABSENT) {
        uint64_t l3 = L->l3_off;
        if (L->ip_version == 4) {
            tok_zero(m, l3 + 12, 8, 0); /* source and destination */
            if (strict) {
                tok_zero(m, l3 + 4, 2, 0);  /* identification: a per-host counter */
                tok_zero(m, l3 + 8, 1, 0);  /* TTL: the sender's OS and hop distance */
                tok_zero(m, l3 + 10, 2, 0); /* header checksum: a function of the above */
            }
        } else if (L->ip_version == 6 && full) {
            tok_zero(m, l3 + 8, 32, 0);
            if (strict) {
                /* The flow label is a per-flow (often per-host) pseudo-random value, an
                 * identifier like the IPv4 ID; the traffic class before it is kept. */
                tok_zero(m, l3 + 1, 1, 0xf0);
                tok_zero(m, l3 + 2, 2, 0);
                tok_zero(m, l3 + 7, 1, 0); /* hop limit */
            }
        }
    }

    if (L->l4_off == CAP_ABSENT)
        return;
    uint64_t l4 = L->l4_off;
    uint8_t proto = L->l4_proto;
    if (mode == TOK_HDR_SEED) {
        if (proto == TOK_PROTO_TCP)
            tok_zero(m, l4, 4, 0);
        return;
    }
    if (tok_l4_has_ports(proto))
        tok_zero(m, l4, 4, 0);
    if (proto == TOK_PROTO_ICMP || proto == TOK_PROTO_ICMPV6)
        tok_zero_icmp_quote(m, l4, proto == TOK_PROTO_ICMPV6);
    if (!strict)
        return;
    switch (proto) {
    case TOK_PROTO_TCP:
        tok_zero(m, l4 + 16, 2, 0);
        tok_zero_tcp_timestamps(m, l4);
        break;
    case TOK_PROTO_UDP:
    case TOK_PROTO_UDPLITE:
    case TOK_PROTO_DCCP:
        tok_zero(m, l4 + 6, 2, 0);
        break;
    case TOK_PROTO_SCTP:
        tok_zero(m, l4 + 8, 4, 0);
        break;
    case TOK_PROTO_ICMP:
    case TOK_PROTO_ICMPV6:
        tok_zero(m, l4 + 2, 2, 0);
        break;
    default:
        break;
    }
}

/* Strip keeps the L4 payload up to the end of the IP packet, so that Ethernet padding of short
 * frames is not taken for payload. An IP length of 0 (TSO/GRO "big" packets, jumbograms) gives
 * no bound and the frame's end is used. */
static void tok_payload_window(struct tok_masked_frame *m, const struct cap_layers *L)
{
    m->from = m->to = 0;
    if (L->payload_off == CAP_ABSENT || L->payload_off >= m->len)
        return;
    uint64_t end = m->len;
    if (L->l3_off != CAP_ABSENT) {
        uint64_t l3 = L->l3_off;
        if (L->ip_version == 4 && tok_readable(m, l3 + 2, 2)) {
            uint16_t total = tok_be16(m->frame + l3 + 2);
            if (total != 0 && l3 + total < end)
                end = l3 + total;
        } else if (L->ip_version == 6 && tok_readable(m, l3 + 4, 2)) {
            uint16_t plen = tok_be16(m->frame + l3 + 4);
            if (plen != 0 && l3 + 40 + plen < end)
                end = l3 + 40 + plen;
        }
    }
    if (end > L->payload_off) {
        m->from = L->payload_off;
        m->to = (size_t)end;
    }
}

void tok_masked_frame_init(struct tok_masked_frame *m, enum tok_header_mode mode,
                           const uint8_t *frame, size_t len, const struct cap_layers *layers)
{
    m->frame = frame;
    m->len = len;
    m->n_ranges = 0;
    m->from = 0;
    m->to = len;
    if (mode == TOK_HDR_STRIP)
        tok_payload_window(m, layers);
    else
        tok_collect_ranges(m, mode, layers);
}

void tok_masked_copy(const struct tok_masked_frame *m, size_t pos, size_t count, uint8_t *out)
{
    memcpy(out, m->frame + pos, count);
    size_t end = pos + count;
    for (unsigned i = 0; i < m->n_ranges; i++) {
        const struct tok_zero_range *r = &m->ranges[i];
        size_t a = r->off > pos ? r->off : pos;
        size_t b = (size_t)r->off + r->len < end ? (size_t)r->off + r->len : end;
        for (size_t j = a; j < b; j++)
            out[j - pos] &= r->keep;
    }
}

size_t tok_apply_header_mode(enum tok_header_mode mode, const uint8_t *frame, size_t len,
                             const struct cap_layers *layers, uint8_t *out, size_t cap)
{
    struct tok_masked_frame m;
    tok_masked_frame_init(&m, mode, frame, len, layers);
    size_t n = m.to - m.from;
    if (n > cap)
        n = cap;
    if (n)
        tok_masked_copy(&m, m.from, n, out);
    return n;
}
