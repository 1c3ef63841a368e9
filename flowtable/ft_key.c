/* ft_key.c — the canonical bidirectional flow key, its seeded hash, and the per-packet record a
 * worker consumes.
 *
 * The key sorts the two (address, port) endpoints so both directions of a session give the same
 * bytes; the hash is computed over those bytes only, so it is symmetric by construction and can
 * also pick the worker that owns the flow. */
#include <endian.h>
#include <string.h>

#include "flowtable/ft_internal.h"

enum { FT_IPPROTO_TCP = 6, FT_IPPROTO_UDP = 17, FT_IPPROTO_SCTP = 132, FT_IPPROTO_UDPLITE = 136 };

static inline uint16_t ft_be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t ft_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint64_t ft_be64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return be64toh(v);
}

/* Orders endpoints by address (as a 128-bit big-endian number), then port. */
static inline int ft_endpoint_cmp(const uint8_t *a, uint16_t ap, const uint8_t *b, uint16_t bp)
{
    uint64_t a0 = ft_be64(a), b0 = ft_be64(b);
    if (a0 != b0)
        return a0 < b0 ? -1 : 1;
    uint64_t a1 = ft_be64(a + 8), b1 = ft_be64(b + 8);
    if (a1 != b1)
        return a1 < b1 ? -1 : 1;
    return (ap > bp) - (ap < bp);
}

/* Where the L4 header starts. The decoder leaves l4_off absent when it stops inside the L4
 * header (cut by the snap length, or a bad TCP data offset); it is then derived here when the IP
 * header leads straight to it (no IPv4 AH, no IPv6 extension header), which is the common case. */
uint32_t ft_l4_offset(const struct cap_packet *pkt)
{
    const struct cap_layers *ly = &pkt->layers;
    if (ly->l4_off != CAP_ABSENT || pkt->data == NULL || ly->l3_off == CAP_ABSENT)
        return ly->l4_off;
    if (pkt->reason != CAP_DECODE_TRUNCATED_L4 && pkt->reason != CAP_DECODE_BAD_L4_HEADER)
        return CAP_ABSENT;
    const uint8_t *ip = pkt->data + ly->l3_off;
    uint32_t room = pkt->caplen > ly->l3_off ? pkt->caplen - ly->l3_off : 0;
    if (ly->ip_version == 4 && room >= 20 && ip[9] == ly->l4_proto)
        return ly->l3_off + (uint32_t)(ip[0] & 0x0f) * 4;
    if (ly->ip_version == 6 && room >= 40 && ip[6] == ly->l4_proto)
        return ly->l3_off + 40;
    return CAP_ABSENT;
}

/* Ports of a ported L4 protocol. A header cut by the snap length still has its ports when its
 * first 4 bytes are there: the decoder reports the frame as truncated, but it belongs to its
 * session (the last frame of every snap-cut session in the USTC-TFC2016 files, for one). */
static bool ft_ports(const struct cap_packet *pkt, uint16_t *sp, uint16_t *dp)
{
    uint8_t proto = pkt->layers.l4_proto;
    bool ported = proto == FT_IPPROTO_TCP || proto == FT_IPPROTO_UDP ||
                  proto == FT_IPPROTO_UDPLITE || proto == FT_IPPROTO_SCTP;
    if (pkt->reason != CAP_DECODE_OK && ported) {
        uint32_t l4 = ft_l4_offset(pkt);
        if (l4 == CAP_ABSENT || pkt->caplen < 4 || l4 > pkt->caplen - 4)
            return false;
        *sp = ft_be16(pkt->data + l4);
        *dp = ft_be16(pkt->data + l4 + 2);
        return true;
    }
    *sp = pkt->src_port;
    *dp = pkt->dst_port;
    return true;
}

bool ft_key_from_packet(const struct cap_packet *pkt, struct ft_key *key, int *dir_out)
{
    switch (pkt->reason) {
    case CAP_DECODE_OK:
    case CAP_DECODE_TRUNCATED_L4: /* ports checked below */
    case CAP_DECODE_BAD_L4_HEADER: /* bad TCP data offset: ports and flags are still there */
        break;
    default:
        return false;
    }
    const struct cap_layers *ly = &pkt->layers;
    if (ly->l3_off == CAP_ABSENT || (ly->ip_version != 4 && ly->ip_version != 6))
        return false;
    if (pkt->frag == CAP_FRAG_LATER)
        return false;
    uint16_t sp, dp;
    if (!ft_ports(pkt, &sp, &dp))
        return false;

    uint8_t src[16], dst[16];
    size_t alen = ly->ip_version == 4 ? 4 : 16;
    memset(src, 0, sizeof src);
    memset(dst, 0, sizeof dst);
    memcpy(src, pkt->src_addr, alen);
    memcpy(dst, pkt->dst_addr, alen);

    int dir = ft_endpoint_cmp(src, sp, dst, dp) > 0;
    if (dir == 0) {
        memcpy(key->addr_lo, src, 16);
        memcpy(key->addr_hi, dst, 16);
        key->port_lo = sp;
        key->port_hi = dp;
    } else {
        memcpy(key->addr_lo, dst, 16);
        memcpy(key->addr_hi, src, 16);
        key->port_lo = dp;
        key->port_hi = sp;
    }
    key->vlan = ft_innermost_vlan(pkt);
    key->proto = ly->l4_proto;
    key->ip_version = ly->ip_version;
    if (dir_out)
        *dir_out = dir;
    return true;
}

/* ---- hash ----
 *
 * A multiply-fold hash: pairs of 64-bit key words, each XORed with the seed and a fixed odd
 * constant, are multiplied into a 128-bit product whose halves are XORed together. Every input
 * bit reaches every output bit through two such products. The constants are arbitrary odd 64-bit
 * numbers drawn once for this file. The per-run random seed keeps a sender from crafting keys
 * that collide on purpose (the table's chains would grow without bound). */
static const uint64_t FT_K[8] = {
    0xdaf1b71865b1f861ull, 0x12f24e37de205b6dull, 0x997f0aa5e7bff103ull, 0x85c9ba5345cf9b5full,
    0x4b9677642da3390full, 0x97784c4e851743b3ull, 0x14db3f3130cf1ddfull, 0x8cb599485b74d351ull,
};

static inline uint64_t ft_fold(uint64_t a, uint64_t b)
{
    __extension__ unsigned __int128 p = (unsigned __int128)a * b;
    return (uint64_t)p ^ (uint64_t)(p >> 64);
}

_Static_assert(sizeof(struct ft_key) == 40, "ft_key must stay 5 padding-free words");

uint64_t ft_key_hash(const struct ft_key *key, uint64_t seed)
{
    uint64_t w[5];
    memcpy(w, key, sizeof w);
    uint64_t a = ft_fold(w[0] ^ seed ^ FT_K[0], w[1] ^ FT_K[1]);
    uint64_t b = ft_fold(w[2] ^ seed ^ FT_K[2], w[3] ^ FT_K[3]);
    uint64_t c = ft_fold(w[4] ^ seed ^ FT_K[4], a ^ FT_K[5]);
    uint64_t h = ft_fold(b ^ FT_K[6], c ^ FT_K[7]);
    return h ^ (h >> 31);
}

/* ---- the worker's packet record ---- */

void ft_pkt_fill_frame(struct ft_pkt *rec, const struct cap_packet *pkt)
{
    rec->ts_ns = pkt->ts_ns;
    rec->caplen = pkt->caplen;
    rec->wirelen = pkt->wirelen;
    rec->layers = pkt->layers;
    rec->kind = FT_PKT_PACKET;
    rec->tcp_flags = 0;
    rec->tcp_ok = 0;
    rec->has_payload = pkt->payload_len > 0;
    rec->tcp_seq = 0;
}

bool ft_pkt_from_packet(const struct cap_packet *pkt, uint64_t seed, struct ft_pkt *out)
{
    int dir;
    if (!ft_key_from_packet(pkt, &out->key, &dir))
        return false;
    out->hash = ft_key_hash(&out->key, seed);
    out->dir = (uint8_t)dir;
    ft_pkt_fill_frame(out, pkt);
    /* A cut L4 header gets its offset in the stored layers too, so that whoever masks header
     * fields in the stored bytes finds the ports of a cut frame as well. */
    uint32_t l4 = ft_l4_offset(pkt);
    out->layers.l4_off = l4;
    if (out->key.proto == FT_IPPROTO_TCP && l4 != CAP_ABSENT && pkt->data != NULL &&
        pkt->caplen >= FT_TCP_TRUSTED_LEN && l4 <= pkt->caplen - FT_TCP_TRUSTED_LEN) {
        out->tcp_ok = 1;
        out->tcp_seq = ft_be32(pkt->data + l4 + 4);
        /* The decoder's flags when it read a whole header; the byte itself otherwise. */
        out->tcp_flags = pkt->reason == CAP_DECODE_OK ? pkt->tcp_flags : pkt->data[l4 + 13];
    }
    return true;
}
