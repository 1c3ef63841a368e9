/* test_capture.c — unit tests of capture/: the L2–L4 decoder on real captures, its robustness on
 * cut and random frames, and the pcap/pcapng file source (bursts, errors, the frame arena).
 *
 * Expected values are not made up: the addresses, ports, layer offsets (PDML "pos" of each
 * protocol), lengths and flags written below were read with TShark 4.0.17 from the captures in
 * shared/data (e.g. `tshark -r F -T pdml`, `tshark -r F -T fields -e ip.src -e tcp.srcport ...`)
 * and checked by hand; payload_len is the L4 length (udp.length - 8, tcp.len, icmp size - 8,
 * ip.len - ip.hdr_len for headerless protocols) bounded by the bytes captured. pcapng files for
 * netlm's own reader are built block by block from frames libpcap read (see "pcapng" below). */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pcap/pcap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "capture/capture.h"

#define PCAPS NETLM_DATA_DIR "/pcaps/"
#define USTC NETLM_DATA_DIR "/labeled/ustc-tfc2016/sessions/"
#define A CAP_ABSENT

/* ---- helpers ---- */

struct frame_copy {
    uint8_t *data;
    uint32_t caplen, wirelen;
    int64_t ts_ns;
    uint16_t linktype;
};

struct frames {
    size_t n;
    struct frame_copy *f;
};

static struct frames load(const char *path)
{
    char err[512];
    struct cap_source *src = cap_open_file(path, err, sizeof err);
    if (!src)
        fail_msg("%s", err);
    struct frames fs = {0};
    size_t cap = 0;
    struct cap_frame b[64];
    int k;
    while ((k = cap_next_burst(src, b, 64)) > 0) {
        for (int i = 0; i < k; i++) {
            if (fs.n == cap) {
                cap = cap ? 2 * cap : 256;
                fs.f = realloc(fs.f, cap * sizeof *fs.f);
                assert_non_null(fs.f);
            }
            struct frame_copy *c = &fs.f[fs.n++];
            c->data = malloc(b[i].caplen ? b[i].caplen : 1);
            assert_non_null(c->data);
            memcpy(c->data, b[i].data, b[i].caplen);
            c->caplen = b[i].caplen;
            c->wirelen = b[i].wirelen;
            c->ts_ns = b[i].ts_ns;
            c->linktype = b[i].linktype;
        }
    }
    if (k != CAP_BURST_END)
        fail_msg("%s: %s", path, cap_source_error(src));
    cap_close(src);
    return fs;
}

static void frames_free(struct frames *fs)
{
    for (size_t i = 0; i < fs->n; i++)
        free(fs->f[i].data);
    free(fs->f);
    fs->f = NULL;
    fs->n = 0;
}

static enum cap_decode_reason decode(const struct frame_copy *f, bool innermost,
                                     struct cap_packet *p)
{
    struct cap_decode_opts o = {.innermost = innermost};
    return cap_decode(&o, f->linktype, f->data, f->caplen, f->wirelen, f->ts_ns, p);
}

static void addr_from_text(const char *s, uint8_t out[16])
{
    memset(out, 0, 16);
    if (!s)
        return;
    if (strchr(s, ':'))
        assert_int_equal(inet_pton(AF_INET6, s, out), 1);
    else
        assert_int_equal(inet_pton(AF_INET, s, out), 1);
}

static void assert_addr(const uint8_t got[16], const char *want, const char *what)
{
    uint8_t w[16];
    addr_from_text(want, w);
    if (memcmp(got, w, 16) != 0) {
        char buf[64];
        bool v6 = want && strchr(want, ':');
        inet_ntop(v6 ? AF_INET6 : AF_INET, got, buf, sizeof buf);
        fail_msg("%s: got %s, want %s", what, buf, want ? want : "(zero)");
    }
}

/* Everything a decoded packet must satisfy whatever the input: the offsets stay inside the frame,
 * absent layers are consistent, the payload is within caplen. */
static void check_invariants(const struct cap_packet *p, const uint8_t *data, uint32_t caplen)
{
    const struct cap_layers *l = &p->layers;
    assert_ptr_equal(p->data, data);
    assert_int_equal(p->caplen, caplen);
    assert_true(p->reason < CAP_DECODE_REASON_COUNT);
    assert_true(l->eth_off == A || (uint64_t)l->eth_off + 14 <= caplen);
    assert_true(l->l3_off == A || l->l3_off < caplen);
    assert_true((l->l3_off == A) == (l->ip_version == 0));
    assert_true(l->ip_version == 0 || l->ip_version == 4 || l->ip_version == 6);
    /* a parsed L4 header has at least its first 4 bytes; an unparsed upper layer may be empty
     * (IPv6 no-next-header: l4_off == payload_off == the end) */
    uint8_t pr = l->l4_proto;
    bool parsed = pr == 6 || pr == 17 || pr == 136 || pr == 132 || pr == 33 || pr == 1 || pr == 58;
    assert_true(l->l4_off == A || (l->l3_off != A && l->l4_off > l->l3_off &&
                                   (uint64_t)l->l4_off + (parsed ? 4 : 0) <= caplen));
    if (l->l4_off == A)
        assert_true(p->src_port == 0 && p->dst_port == 0 && p->tcp_flags == 0);
    if (l->payload_off == A)
        assert_int_equal(p->payload_len, 0);
    else
        assert_true((uint64_t)l->payload_off + p->payload_len <= caplen);
    assert_true((p->frag == CAP_FRAG_LATER) == (p->reason == CAP_DECODE_FRAGMENT));
    if (p->frag == CAP_FRAG_NONE)
        assert_int_equal(p->frag_id, 0); /* nothing of an outer fragmented layer left behind */
    if (p->reason == CAP_DECODE_OK) {
        assert_true(l->l3_off != A && l->l4_off != A && l->payload_off != A);
        assert_true(l->l4_off <= l->payload_off);
    }
    if (p->reason == CAP_DECODE_FRAGMENT)
        assert_true(l->l3_off != A && l->l4_off == A && l->payload_off != A);
    if ((p->reason != CAP_DECODE_OK && p->reason < CAP_DECODE_TRUNCATED_IP) ||
        p->reason == CAP_DECODE_BAD_IP_VERSION)
        assert_true(l->l3_off == A);
    if (p->tunnel_depth)
        assert_true(l->l3_off != A);
    uint8_t zero[16] = {0};
    if (l->ip_version == 4) {
        assert_memory_equal(p->src_addr + 4, zero, 12);
        assert_memory_equal(p->dst_addr + 4, zero, 12);
    }
    if (l->ip_version == 0) {
        assert_memory_equal(p->src_addr, zero, 16);
        assert_memory_equal(p->dst_addr, zero, 16);
    }
}

/* ---- the decoder on real frames: one row per frame and mode, values from TShark ---- */

struct expect {
    const char *file; /* under shared/data/pcaps */
    unsigned frame;   /* 1-based, as TShark numbers them */
    bool innermost;
    uint8_t reason;
    const char *src, *dst; /* NULL: all zero */
    uint8_t l4_proto;
    uint16_t sport, dport;
    uint32_t eth_off, l3_off, l4_off, payload_off, payload_len;
    uint8_t tcp_flags, frag, depth, vlan_count;
    uint16_t vlan0, vlan1;
    int64_t ts_ns; /* 0: not checked */
};

static const struct expect expects[] = {
    /* Linux SLL (113), nanosecond pcap: TCP handshake; sll@0+16 ip@16+20 tcp@36+40 */
    {"tcpdump-tcp-handshake-nano.pcap", 1, false, CAP_DECODE_OK, "131.155.215.69", "137.116.81.94",
     6, 46656, 80, A, 16, 36, 76, 0, 0x02, 0, 0, 0, 0, 0, 1418145369924505488},
    {"tcpdump-tcp-handshake-nano.pcap", 2, false, CAP_DECODE_OK, "137.116.81.94", "131.155.215.69",
     6, 80, 46656, A, 16, 36, 76, 0, 0x12, 0, 0, 0, 0, 0, 1418145370052027262},
    /* LINKTYPE_RAW (101) IPv4 and IPv6, LINKTYPE_IPV4 (228), LINKTYPE_IPV6 (229): UDP/DNS with a
     * 29-byte payload */
    {"tcpdump-LINKTYPE_RAW_ipv4.pcap", 1, false, CAP_DECODE_OK, "192.168.1.100", "9.9.9.9", 17,
     12345, 53, A, 0, 20, 28, 29, 0, 0, 0, 0, 0, 0, 1751997551951226000},
    {"tcpdump-LINKTYPE_RAW_ipv6.pcap", 1, false, CAP_DECODE_OK, "2001:db8::1", "2620:fe::9", 17,
     12345, 53, A, 0, 40, 48, 29, 0, 0, 0, 0, 0, 0, 1751997557215270000},
    {"tcpdump-LINKTYPE_IPV4.pcap", 1, false, CAP_DECODE_OK, "192.168.1.100", "9.9.9.9", 17, 12345,
     53, A, 0, 20, 28, 29, 0, 0, 0, 0, 0, 0, 1751997572592885000},
    {"tcpdump-LINKTYPE_IPV6.pcap", 1, false, CAP_DECODE_OK, "2001:db8::1", "2620:fe::9", 17, 12345,
     53, A, 0, 40, 48, 29, 0, 0, 0, 0, 0, 0, 1751997566204450000},
    /* DLT_NULL, family 30 (macOS AF_INET6) little-endian: null@0+4 ipv6@4+40 udp@44+8 quic 1200 */
    {"tcpdump-quic_handshake.pcap", 1, false, CAP_DECODE_OK, "::1", "::1", 17, 50606, 443, A, 4,
     44, 52, 1200, 0, 0, 0, 0, 0, 0, 1635191722974137000},
    /* snaplen 256 of 1252: the payload present is 256 - 52 */
    {"tcpdump-quic_handshake_truncated.pcap", 1, false, CAP_DECODE_OK, "::1", "::1", 17, 65165,
     443, A, 4, 44, 52, 204, 0, 0, 0, 0, 0, 0, 1635191822464273000},
    /* 802.1ad 200 + 802.1Q 2001 around ARP */
    {"tcpdump-802.1ad_QinQ.pcap", 1, false, CAP_DECODE_NOT_IP, NULL, NULL, 0, 0, 0, 0, A, A, A, 0,
     0, 0, 0, 2, 200, 2001, 1575842394599412000},
    /* VLAN 757 + VLAN 1 + PPPoE session + PPP IPv4 + UDP; ip@30 udp@50, udp.length 60 */
    {"ndpi-discord_mid_flow.pcap", 1, false, CAP_DECODE_OK, "66.22.242.132", "5.36.141.228", 17,
     50001, 54935, 0, 30, 50, 58, 52, 0, 0, 0, 2, 757, 1, 1673444902267546000},
    /* Arista AVSP timestamp header, then MPLS label 1024 / VLAN 100 + MPLS, IPv4 proto 63 */
    {"tcpdump-arista_ether.pcap", 3, false, CAP_DECODE_OK, "10.136.1.32", "10.2.23.24", 63, 0, 0,
     0, 32, 52, 52, 58, 0, 0, 0, 0, 0, 0, 0},
    {"tcpdump-arista_ether.pcap", 4, false, CAP_DECODE_OK, "10.136.1.32", "10.2.23.24", 63, 0, 0,
     0, 36, 56, 56, 54, 0, 0, 0, 1, 100, 0, 0},
    /* AVSP version 0x0011 that TShark does not know either: no EtherType to follow */
    {"tcpdump-arista_ether.pcap", 2, false, CAP_DECODE_NOT_IP, NULL, NULL, 0, 0, 0, 0, A, A, A, 0,
     0, 0, 0, 0, 0, 0, 0},
    /* IPv6 routing header (24 / 40 bytes) before ICMPv6 and UDP */
    {"tcpdump-ipv6-routing-header.pcap", 1, false, CAP_DECODE_OK, "2200::244:212:3fff:feae:22f7",
     "2200::240:2:0:0:4", 58, 0, 0, 0, 14, 78, 86, 0, 0, 0, 0, 0, 0, 0, 1170175891766766000},
    {"tcpdump-ipv6-routing-header.pcap", 4, false, CAP_DECODE_OK, "2200::244:212:3fff:feae:22f7",
     "2200::211:2:0:0:2", 17, 5645, 5642, 0, 14, 94, 102, 0, 0, 0, 0, 0, 0, 0, 0},
    /* IPv4 fragments: first (MF, offset 0) keeps its ports; the later one (offset 185) has none */
    {"ndpi-dns_fragmented.pcap", 2, false, CAP_DECODE_OK, "193.24.227.238", "172.217.40.76", 17,
     53, 56680, 0, 14, 34, 42, 1472, 0, CAP_FRAG_FIRST, 0, 0, 0, 0, 0},
    {"ndpi-dns_fragmented.pcap", 3, false, CAP_DECODE_FRAGMENT, "193.24.227.238", "172.217.40.76",
     17, 0, 0, 0, 14, A, 34, 230, 0, CAP_FRAG_LATER, 0, 0, 0, 0, 0},
    /* IPv6 fragment header (nxt 44): first and later fragment */
    {"ndpi-dns_fragmented.pcap", 5, false, CAP_DECODE_OK, "2001:470:765b::a25:53",
     "2a00:1450:4013:c03::10a", 17, 53, 46433, 0, 14, 62, 70, 1440, 0, CAP_FRAG_FIRST, 0, 0, 0, 0,
     0},
    {"ndpi-dns_fragmented.pcap", 6, false, CAP_DECODE_FRAGMENT, "2001:470:765b::a25:53",
     "2a00:1450:4013:c03::10a", 17, 0, 0, 0, 14, A, 62, 61, 0, CAP_FRAG_LATER, 0, 0, 0, 0, 0},
    {"tcpdump-afs.pcap", 126, false, CAP_DECODE_FRAGMENT, "131.151.1.146", "131.151.32.21", 17, 0,
     0, 0, 14, A, 34, 1480, 0, CAP_FRAG_LATER, 0, 0, 0, 0, 942356851873045000},
    /* EtherType IPv6, version nibble not 6 */
    {"tcpdump-ipv6-bad-version.pcap", 2, false, CAP_DECODE_BAD_IP_VERSION, NULL, NULL, 0, 0, 0, 0,
     A, A, A, 0, 0, 0, 0, 0, 0, 0, 0},
    {"tcpdump-ipv6-bad-version.pcap", 1, false, CAP_DECODE_OK, "::", "ff02::1:ff76:6c14", 58, 0, 0,
     0, 14, 54, 62, 16, 0, 0, 0, 0, 0, 0, 0},
    /* BIG TCP: IPv4 total length 0, IPv6 payload length 0 + hop-by-hop jumbo; tcp.len 80000 */
    {"tcpdump-bigtcp-ipv4.pcap", 1, false, CAP_DECODE_OK, "10.25.132.13", "10.25.132.11", 6,
     35871, 36425, 0, 14, 34, 66, 80000, 0x18, 0, 0, 0, 0, 0, 0},
    {"tcpdump-bigtcp-ipv6-hbh.pcap", 1, false, CAP_DECODE_OK, "2604:1380:4091:ce00::d",
     "2604:1380:4091:ce00::b", 6, 41851, 43913, 0, 14, 62, 94, 80000, 0x18, 0, 0, 0, 0, 0, 0},
    /* big-endian pcap: PPTP control SYN */
    {"tcpdump-pptp.pcap", 1, false, CAP_DECODE_OK, "10.1.1.11", "10.1.1.10", 6, 3025, 1723, 0, 14,
     34, 62, 0, 0x02, 0, 0, 0, 0, 0, 954147395148077000},
    /* PPTP GRE carrying PPP LCP: the GRE session either way, there is no inner IP */
    {"tcpdump-pptp.pcap", 16, false, CAP_DECODE_OK, "10.1.1.11", "10.1.1.10", 47, 0, 0, 0, 14, 34,
     34, 60, 0, 0, 0, 0, 0, 0, 0},
    {"tcpdump-pptp.pcap", 16, true, CAP_DECODE_OK, "10.1.1.11", "10.1.1.10", 47, 0, 0, 0, 14, 34,
     34, 60, 0, 0, 0, 0, 0, 0, 0},
    /* pcapng with 22 IDBs, ns resolution */
    {"ndpi-sites.pcapng", 699, false, CAP_DECODE_OK, "192.168.1.183", "146.70.182.51", 6, 44102,
     443, 0, 14, 34, 66, 755, 0x18, 0, 0, 0, 0, 0, 1722540110397706326},

    /* ---- tunnels: outer session by default, inner with innermost ---- */
    /* VLAN + GRE (key) + Cisco MetaData + IPv4 + GRE keepalive: the inner GRE is the session */
    {"tcpdump-various_gre.pcap", 11, false, CAP_DECODE_OK, "10.172.64.7", "10.172.64.6", 47, 0, 0,
     0, 18, 38, 38, 44, 0, 0, 0, 1, 1213, 0, 0},
    {"tcpdump-various_gre.pcap", 11, true, CAP_DECODE_OK, "10.172.64.6", "10.172.64.7", 47, 0, 0,
     0, 54, 74, 74, 8, 0, 0, 1, 1, 1213, 0, 0},
    {"tcpdump-various_gre.pcap", 25, true, CAP_DECODE_OK, "172.17.1.54", "172.17.1.55", 1, 0, 0, 0,
     54, 74, 82, 72, 0, 0, 1, 1, 1213, 0, 0},
    /* pcapng with 9 IDBs: VLAN + PPTP enhanced GRE (S, A) + PPP + IPv4/UDP SIP */
    {"ndpi-gre.pcapng", 1, false, CAP_DECODE_OK, "109.105.228.253", "10.177.98.84", 47, 0, 0, 0,
     18, 38, 38, 346, 0, 0, 0, 1, 142, 0, 0},
    {"ndpi-gre.pcapng", 1, true, CAP_DECODE_OK, "192.168.10.210", "192.168.103.40", 17, 5060, 5060,
     0, 58, 78, 86, 298, 0, 0, 1, 1, 142, 0, 0},
    /* VXLAN: eth@50 ip@64 icmp@84+64 inside UDP 4789 */
    {"tcpdump-vxlan.pcap", 1, false, CAP_DECODE_OK, "192.168.203.1", "192.168.202.1", 17, 45149,
     4789, 0, 14, 34, 42, 106, 0, 0, 0, 0, 0, 0, 0},
    {"tcpdump-vxlan.pcap", 1, true, CAP_DECODE_OK, "192.168.203.3", "192.168.203.5", 1, 0, 0, 0, 64,
     84, 92, 56, 0, 0, 1, 0, 0, 0, 0},
    /* VXLAN carrying ARP: nothing inside to be a session, so the outer UDP one stays */
    {"tcpdump-vxlan.pcap", 2, true, CAP_DECODE_OK, "192.168.202.1", "192.168.203.1", 17, 42710,
     4789, 0, 14, 34, 42, 50, 0, 0, 0, 0, 0, 0, 0},
    /* Geneve with 8 bytes of options (geneve@42+16), and without, carrying TCP/SSH */
    {"tcpdump-geneve.pcap", 1, true, CAP_DECODE_OK, "30.0.0.1", "30.0.0.2", 1, 0, 0, 0, 72, 92, 100,
     56, 0, 0, 1, 0, 0, 0, 0},
    {"tcpdump-geneve.pcap", 8, false, CAP_DECODE_OK, "20.0.0.2", "20.0.0.1", 17, 43443, 6081, 0,
     14, 34, 42, 95, 0, 0, 0, 0, 0, 0, 0},
    {"tcpdump-geneve.pcap", 8, true, CAP_DECODE_OK, "30.0.0.2", "30.0.0.1", 6, 51225, 22, 0, 64, 84,
     116, 21, 0x18, 0, 1, 0, 0, 0, 0},
    /* 6in4 (protocol 41) */
    {"ndpi-6in4tunnel.pcap", 1, false, CAP_DECODE_OK, "174.3.73.24", "184.105.255.26", 41, 0, 0, 0,
     14, 34, 34, 104, 0, 0, 0, 0, 0, 0, 0},
    {"ndpi-6in4tunnel.pcap", 1, true, CAP_DECODE_OK, "2001:470:1f17:13f:3e97:eff:fe73:4dec",
     "2604:a880:1:20::224:b001", 58, 0, 0, 0, 34, 74, 82, 56, 0, 0, 1, 0, 0, 0, 0},
    /* 4in6 (next header 4) */
    {"ndpi-4in6tunnel.pcap", 1, false, CAP_DECODE_OK, "22e0:1685:eda7:38cc:58bd:f3f1:aa3f:22d8",
     "344a:ba94:152a:ac34::2a", 4, 0, 0, 0, 14, 54, 54, 52, 0, 0, 0, 0, 0, 0, 0},
    {"ndpi-4in6tunnel.pcap", 1, true, CAP_DECODE_OK, "192.168.0.1", "10.10.10.1", 6, 64455, 443, 0,
     54, 74, 106, 0, 0x02, 0, 1, 0, 0, 0, 0},
    /* Teredo: authentication header (ipv6@55), and authentication + origin indication (ipv6@63) */
    {"ndpi-teredo.pcap", 1, true, CAP_DECODE_OK, "fe80::ffff:ffff:fffe", "ff02::2", 58, 0, 0, 0,
     55, 95, 103, 0, 0, 0, 1, 0, 0, 0, 0},
    {"ndpi-teredo.pcap", 2, false, CAP_DECODE_OK, "194.136.28.76", "10.112.16.106", 17, 3544, 52513,
     0, 14, 34, 42, 109, 0, 0, 0, 0, 0, 0, 0},
    {"ndpi-teredo.pcap", 2, true, CAP_DECODE_OK, "fe80::8000:f227:3d77:e3b3",
     "fe80::ffff:ffff:fffe", 58, 0, 0, 0, 63, 103, 111, 40, 0, 0, 1, 0, 0, 0, 0},
    /* MPLS over UDP (6635) */
    {"tcpdump-mpls-over-udp.pcap", 1, false, CAP_DECODE_OK, "10.100.12.170", "10.100.13.157", 17,
     58699, 6635, 0, 14, 34, 42, 88, 0, 0, 0, 0, 0, 0, 0},
    {"tcpdump-mpls-over-udp.pcap", 1, true, CAP_DECODE_OK, "10.3.0.10", "10.1.0.10", 1, 0, 0, 0, 46,
     66, 74, 56, 0, 0, 1, 0, 0, 0, 0},
    /* SRv6: routing header, then IPv6-in-IPv6 */
    {"tcpdump-ipv6-srh-ext-header.pcap", 1, false, CAP_DECODE_OK, "a:b:c:12::1", "a:b:c:2::f1:0",
     41, 0, 0, 0, 14, 94, 94, 104, 0, 0, 0, 0, 0, 0, 0},
    {"tcpdump-ipv6-srh-ext-header.pcap", 1, true, CAP_DECODE_OK, "a:b:c:12::1", "b2::2", 58, 0, 0,
     0, 94, 134, 142, 56, 0, 0, 1, 0, 0, 0, 0},
    /* GTP-U (UDP 2152) in an anonymised mobile capture, caplen 106 of 110 */
    {"ndpi-reasm_segv_anon.pcapng", 1, true, CAP_DECODE_OK, "172.17.36.21", "63.190.145.43", 6,
     57619, 80, 0, 54, 74, 106, 0, 0x10, 0, 1, 0, 0, 0, 0},

    /* ---- the less common link types ---- */
    /* NFLOG (239): the packet TLV starts at 104 */
    {"tcpdump-nflog.pcap", 1, false, CAP_DECODE_OK, "74.82.42.42", "10.0.0.20", 17, 53, 42585, A,
     104, 124, 132, 45, 0, 0, 0, 0, 0, 0, 1378492319615994000},
    /* PPI (192) wrapping Ethernet: ppi@0+16 eth@16; ns pcap */
    {"ndpi-someip_sd_sample.pcap", 1, false, CAP_DECODE_OK, "192.168.88.73", "235.2.3.5", 17, 30490,
     30490, 16, 30, 50, 58, 56, 0, 0, 0, 0, 0, 0, 1559741544964106975},
    /* IP over InfiniBand (242), big-endian pcap: ipoib@0+44 */
    {"tcpdump-ipoib.pcap", 1, false, CAP_DECODE_OK, "192.168.56.10", "192.168.56.24", 1, 0, 0, A,
     44, 64, 72, 56, 0, 0, 0, 0, 0, 0, 0},
    /* PPP (9) with MPLS (0x0281) */
    {"tcpdump-mpls-traceroute.pcap", 1, false, CAP_DECODE_OK, "12.4.4.4", "12.1.1.1", 17, 42315,
     33435, A, 8, 28, 36, 12, 0, 0, 0, 0, 0, 0, 0},
};

static void check_expect(const struct expect *e, const struct frame_copy *f)
{
    struct cap_packet p;
    enum cap_decode_reason r = decode(f, e->innermost, &p);
    print_message("  %s #%u%s\n", e->file, e->frame, e->innermost ? " innermost" : "");
    check_invariants(&p, f->data, f->caplen);
    assert_int_equal(r, p.reason);
    assert_string_equal(cap_decode_reason_name(r), cap_decode_reason_name(e->reason));
    assert_addr(p.src_addr, e->src, "src");
    assert_addr(p.dst_addr, e->dst, "dst");
    assert_int_equal(p.layers.ip_version, e->src ? (strchr(e->src, ':') ? 6 : 4) : 0);
    assert_int_equal(p.layers.l4_proto, e->l4_proto);
    assert_int_equal(p.src_port, e->sport);
    assert_int_equal(p.dst_port, e->dport);
    assert_int_equal(p.layers.eth_off, e->eth_off);
    assert_int_equal(p.layers.l3_off, e->l3_off);
    assert_int_equal(p.layers.l4_off, e->l4_off);
    assert_int_equal(p.layers.payload_off, e->payload_off);
    assert_int_equal(p.payload_len, e->payload_len);
    assert_int_equal(p.tcp_flags, e->tcp_flags);
    assert_int_equal(p.frag, e->frag);
    assert_int_equal(p.tunnel_depth, e->depth);
    assert_int_equal(p.vlan_count, e->vlan_count);
    if (e->vlan_count > 0)
        assert_int_equal(p.vlan_ids[0], e->vlan0);
    if (e->vlan_count > 1)
        assert_int_equal(p.vlan_ids[1], e->vlan1);
    assert_int_equal(p.layers.linktype, f->linktype);
    if (e->ts_ns)
        assert_int_equal(p.ts_ns, e->ts_ns);
    assert_int_equal(p.wirelen, f->wirelen);
}


/* Captures are loaded once and kept for the whole run. */
static struct {
    char path[512];
    struct frames fs;
} cache[64];
static size_t cache_n;

static const struct frames *cached(const char *path)
{
    for (size_t i = 0; i < cache_n; i++)
        if (strcmp(cache[i].path, path) == 0)
            return &cache[i].fs;
    assert_true(cache_n < sizeof cache / sizeof cache[0]);
    snprintf(cache[cache_n].path, sizeof cache[cache_n].path, "%s", path);
    cache[cache_n].fs = load(path);
    return &cache[cache_n++].fs;
}

static const struct frames *capture_file(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s%s", PCAPS, name);
    return cached(path);
}

static const struct frame_copy *nth(const struct frames *fs, size_t no)
{
    assert_true(no >= 1 && no <= fs->n);
    return &fs->f[no - 1];
}

static int free_cache(void **state)
{
    (void)state;
    for (size_t i = 0; i < cache_n; i++)
        frames_free(&cache[i].fs);
    cache_n = 0;
    return 0;
}

static void test_decode_real_frames(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof expects / sizeof expects[0]; i++) {
        const struct expect *e = &expects[i];
        check_expect(e, nth(capture_file(e->file), e->frame));
    }
}

/* Frame counts of whole captures (capinfos -c), and per reason: every frame decodes, and the
 * reasons other than OK are the ones TShark also flags (non-IP frames, fragments, cut frames). */
static void test_decode_whole_captures(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        size_t frames, ok, not_ip, fragment;
    } caps[] = {
        {"tcpdump-tcp-handshake-nano.pcap", 3, 3, 0, 0},
        {"tcpdump-pptp.pcap", 23, 23, 0, 0},
        {"tcpdump-802.1ad_QinQ.pcap", 2, 0, 2, 0},
        /* 70 STP/CDP/DTP/loop frames (eth:llc / vlan:llc / loop), 30 VLAN + GRE */
        {"tcpdump-various_gre.pcap", 100, 30, 70, 0},
        {"tcpdump-pppoes.pcap", 2, 0, 2, 0}, /* PPP LCP only */
        /* 3 first fragments (MF) are OK, 7 later fragments */
        {"ndpi-dns_fragmented.pcap", 66, 59, 0, 7},
        {"ndpi-sites.pcapng", 699, 699, 0, 0},
        {"ndpi-gre.pcapng", 1, 1, 0, 0},
        {"tcpdump-of13_ericsson.pcapng", 174, 174, 0, 0},
        {"ndpi-ocs.pcap", 946, 946, 0, 0},
        {"ndpi-KakaoTalk_chat.pcap", 347, 347, 0, 0},
        {"ndpi-1kxun.pcap", 1723, 1723, 0, 0},
        {"tcpdump-afs.pcap", 601, 452, 0, 149},
    };
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) {
        const struct frames *fs = capture_file(caps[i].file);
        print_message("  %s\n", caps[i].file);
        assert_int_equal(fs->n, caps[i].frames);
        size_t by[CAP_DECODE_REASON_COUNT] = {0};
        for (size_t k = 0; k < fs->n; k++) {
            struct cap_packet p;
            by[decode(&fs->f[k], false, &p)]++;
            check_invariants(&p, fs->f[k].data, fs->f[k].caplen);
        }
        assert_int_equal(by[CAP_DECODE_OK], caps[i].ok);
        assert_int_equal(by[CAP_DECODE_NOT_IP], caps[i].not_ip);
        assert_int_equal(by[CAP_DECODE_FRAGMENT], caps[i].fragment);
    }
}

static bool same_packet(const struct cap_packet *a, const struct cap_packet *b)
{
    return a->layers.eth_off == b->layers.eth_off && a->layers.l3_off == b->layers.l3_off &&
           a->layers.l4_off == b->layers.l4_off && a->layers.payload_off == b->layers.payload_off &&
           a->layers.ip_version == b->layers.ip_version &&
           a->layers.l4_proto == b->layers.l4_proto && a->payload_len == b->payload_len &&
           a->reason == b->reason && a->frag == b->frag && a->tcp_flags == b->tcp_flags &&
           a->tunnel_depth == b->tunnel_depth && a->vlan_count == b->vlan_count &&
           memcmp(a->vlan_ids, b->vlan_ids, sizeof a->vlan_ids) == 0 &&
           memcmp(a->src_addr, b->src_addr, 16) == 0 &&
           memcmp(a->dst_addr, b->dst_addr, 16) == 0 && a->src_port == b->src_port &&
           a->dst_port == b->dst_port;
}

/* All real captures, both modes: invariants hold, and innermost only differs from the default
 * where it went through a tunnel. */
static void test_decode_all_captures_both_modes(void **state)
{
    (void)state;
    static const char *const files[] = {
        "ndpi-1kxun.pcap", "ndpi-4in6tunnel.pcap", "ndpi-6in4tunnel.pcap",
        "ndpi-KakaoTalk_chat.pcap", "ndpi-bot.pcap", "ndpi-discord_mid_flow.pcap",
        "ndpi-dns_fragmented.pcap", "ndpi-gnutella.pcap", "ndpi-gre.pcapng",
        "ndpi-ip_fragmented_garbage.pcap", "ndpi-netflix.pcap", "ndpi-ocs.pcap",
        "ndpi-openwire.pcapng", "ndpi-pinterest.pcap", "ndpi-quic_interop_V.pcapng",
        "ndpi-reasm_segv_anon.pcapng", "ndpi-sites.pcapng", "ndpi-someip_sd_sample.pcap",
        "ndpi-synscan.pcap", "ndpi-teams.pcap", "ndpi-teredo.pcap", "tcpdump-802.1ad_QinQ.pcap",
        "tcpdump-LINKTYPE_IPV4.pcap", "tcpdump-LINKTYPE_IPV6.pcap",
        "tcpdump-LINKTYPE_RAW_ipv4.pcap", "tcpdump-LINKTYPE_RAW_ipv6.pcap", "tcpdump-afs.pcap",
        "tcpdump-ahcp.pcapng", "tcpdump-arista_ether.pcap", "tcpdump-bigtcp-ipv4.pcap",
        "tcpdump-bigtcp-ipv6-hbh.pcap", "tcpdump-dns_tcp.pcap", "tcpdump-espudp1.pcap",
        "tcpdump-geneve.pcap", "tcpdump-icmpv6-rfc7112.pcap", "tcpdump-ipoib.pcap",
        "tcpdump-ipv6-bad-version.pcap", "tcpdump-ipv6-routing-header.pcap",
        "tcpdump-ipv6-srh-ext-header.pcap", "tcpdump-mpls-over-udp.pcap",
        "tcpdump-mpls-traceroute.pcap", "tcpdump-mptcp-v0.pcap", "tcpdump-mptcp-v1.pcap",
        "tcpdump-nflog.pcap", "tcpdump-of13_ericsson.pcapng", "tcpdump-pppoes.pcap",
        "tcpdump-pptp.pcap", "tcpdump-print-flags.pcap", "tcpdump-quic_handshake.pcap",
        "tcpdump-quic_handshake_truncated.pcap", "tcpdump-resp_1_benchmark.pcap",
        "tcpdump-ssh.pcap", "tcpdump-tcp-handshake-nano.pcap", "tcpdump-tfo.pcap",
        "tcpdump-various_gre.pcap", "tcpdump-vxlan.pcap",
    };
    size_t tunneled = 0, unsupported = 0;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        const struct frames *fs = capture_file(files[i]);
        for (size_t k = 0; k < fs->n; k++) {
            struct cap_packet outer, inner;
            decode(&fs->f[k], false, &outer);
            decode(&fs->f[k], true, &inner);
            check_invariants(&outer, fs->f[k].data, fs->f[k].caplen);
            check_invariants(&inner, fs->f[k].data, fs->f[k].caplen);
            assert_int_equal(outer.tunnel_depth, 0);
            if (inner.tunnel_depth == 0)
                assert_true(same_packet(&outer, &inner));
            else
                tunneled++;
            unsupported += outer.reason == CAP_DECODE_UNSUPPORTED_LINK;
        }
    }
    /* every link type in shared/data is decoded */
    assert_int_equal(unsupported, 0);
    /* frames whose frame.protocols (TShark) show an IP layer inside a tunnel: vxlan 8 (the other
     * 2 carry ARP, so they stay outer UDP), geneve 39, 6in4 127, 4in6 4, teredo 24, gre.pcapng 1,
     * various_gre 20 (GRE + CMD + IP), mpls-over-udp 2, SRv6 1, reasm_segv_anon GTP-U 82 */
    assert_int_equal(tunneled, 8 + 39 + 127 + 4 + 24 + 1 + 20 + 2 + 1 + 82);
}

/* Frames cut in the middle of a header, from the USTC-TFC2016 sessions (784-byte samples). */
static void test_decode_cut_frames(void **state)
{
    (void)state;
    struct cap_packet p;
    const struct frames *skype = cached(USTC "Skype/Skype.pcap");
    /* #2: caplen 24 of 70, ip@14+10: the IP header is cut before the addresses */
    const struct frame_copy *f = nth(skype, 2);
    assert_int_equal(f->caplen, 24);
    assert_int_equal(f->wirelen, 70);
    assert_int_equal(decode(f, false, &p), CAP_DECODE_TRUNCATED_IP);
    check_invariants(&p, f->data, f->caplen);
    assert_int_equal(p.layers.eth_off, 0);
    assert_int_equal(p.layers.l3_off, 14);
    assert_int_equal(p.layers.ip_version, 4);
    assert_addr(p.src_addr, NULL, "src");
    assert_int_equal(p.layers.l4_off, A);
    /* #4: caplen 56, tcp@34+22 of a 32-byte header: ports and flags are there, payload is not */
    f = nth(skype, 4);
    assert_int_equal(decode(f, false, &p), CAP_DECODE_TRUNCATED_L4);
    check_invariants(&p, f->data, f->caplen);
    assert_addr(p.src_addr, "1.1.73.41", "src");
    assert_addr(p.dst_addr, "1.2.253.126", "dst");
    assert_int_equal(p.layers.l4_proto, 6);
    assert_int_equal(p.layers.l4_off, 34);
    assert_int_equal(p.src_port, 1591);
    assert_int_equal(p.dst_port, 443);
    assert_int_equal(p.tcp_flags, 0x10);
    assert_int_equal(p.layers.payload_off, A);
    /* Gmail #3: caplen 35, one byte of TCP: addresses but no ports */
    f = nth(cached(USTC "Gmail/Gmail.pcap"), 3);
    assert_int_equal(decode(f, false, &p), CAP_DECODE_TRUNCATED_L4);
    check_invariants(&p, f->data, f->caplen);
    assert_addr(p.src_addr, "1.2.172.36", "src");
    assert_addr(p.dst_addr, "1.1.163.200", "dst");
    assert_int_equal(p.layers.l4_proto, 6);
    assert_int_equal(p.layers.l4_off, A);
    assert_int_equal(p.src_port, 0);
    /* Htbot #182: one byte captured of 54 */
    f = nth(cached(USTC "Htbot/Htbot.pcap"), 182);
    assert_int_equal(f->caplen, 1);
    assert_int_equal(decode(f, false, &p), CAP_DECODE_TRUNCATED_L2);
    check_invariants(&p, f->data, f->caplen);
    assert_int_equal(p.layers.eth_off, A);
    /* ip_fragmented_garbage #1: a first fragment (MF, ip.len 36) holding only 16 bytes of TCP;
     * the header goes on in the next fragment. Ports from the hex dump: 5e 26 2a 28. */
    f = nth(capture_file("ndpi-ip_fragmented_garbage.pcap"), 1);
    assert_int_equal(decode(f, false, &p), CAP_DECODE_TRUNCATED_L4);
    assert_int_equal(p.frag, CAP_FRAG_FIRST);
    assert_addr(p.src_addr, "10.0.0.2", "src");
    assert_addr(p.dst_addr, "10.128.0.2", "dst");
    assert_int_equal(p.src_port, 24102);
    assert_int_equal(p.dst_port, 10792);
}

/* Which datagram a fragment belongs to, against tshark's ip.id (with ip.proto) and
 * ipv6.fraghdr.ident of the same frames (tshark -o ip.defragment:FALSE -e ip.id ...). */
static void test_decode_fragment_ids(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        size_t frame;
        uint8_t frag;
        uint32_t id;
    } want[] = {
        {"ndpi-dns_fragmented.pcap", 1, CAP_FRAG_NONE, 0},
        {"ndpi-dns_fragmented.pcap", 2, CAP_FRAG_FIRST, 17u << 16 | 0xd0fe},
        {"ndpi-dns_fragmented.pcap", 3, CAP_FRAG_LATER, 17u << 16 | 0xd0fe},
        {"ndpi-dns_fragmented.pcap", 5, CAP_FRAG_FIRST, 0x28403c0b},
        {"ndpi-dns_fragmented.pcap", 6, CAP_FRAG_LATER, 0x28403c0b},
        {"ndpi-dns_fragmented.pcap", 38, CAP_FRAG_FIRST, 0x0000069a},
        {"tcpdump-afs.pcap", 126, CAP_FRAG_LATER, 17u << 16 | 0x023d},
        {"tcpdump-afs.pcap", 129, CAP_FRAG_FIRST, 17u << 16 | 0x023e},
        {"ndpi-ip_fragmented_garbage.pcap", 2, CAP_FRAG_LATER, 6u << 16 | 0x00a0},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const struct frame_copy *f = nth(capture_file(want[i].file), want[i].frame);
        struct cap_packet p;
        decode(f, false, &p);
        if (p.frag != want[i].frag || p.frag_id != want[i].id)
            fail_msg("%s #%zu: frag %u id 0x%x, expected frag %u id 0x%x", want[i].file,
                     want[i].frame, p.frag, p.frag_id, want[i].frag, want[i].id);
    }
}

/* The dataset README counts 1139 USTC-TFC2016 samples whose last record is cut before the L4
 * ports (Geodo 554, Skype 327, Neris 94, Virut 47, Htbot 41, Gmail 37, others fewer). The
 * decoder must see exactly those as frames without ports, and every TRUNCATED_* frame must be one
 * whose capture is shorter than the wire. */
static void test_decode_ustc_cut_samples(void **state)
{
    (void)state;
    static const struct {
        const char *cls;
        size_t no_ports; /* -1: only counted in the total */
    } classes[] = {
        {"BitTorrent", SIZE_MAX}, {"Cridex", SIZE_MAX}, {"FTP", SIZE_MAX},
        {"Facetime", SIZE_MAX},   {"Geodo", 554},       {"Gmail", 37},
        {"Htbot", 41},            {"Miuref", SIZE_MAX}, {"MySQL", SIZE_MAX},
        {"Neris", 94},            {"Nsis-ay", SIZE_MAX}, {"Outlook", SIZE_MAX},
        {"SMB", SIZE_MAX},        {"Shifu", SIZE_MAX},  {"Skype", 327},
        {"Tinba", SIZE_MAX},      {"Virut", 47},        {"Weibo", SIZE_MAX},
        {"WorldOfWarcraft", SIZE_MAX}, {"Zeus", SIZE_MAX},
    };
    size_t total = 0, frames = 0;
    for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s%s/%s.pcap", USTC, classes[i].cls, classes[i].cls);
        struct frames fs = load(path);
        size_t no_ports = 0;
        for (size_t k = 0; k < fs.n; k++) {
            struct cap_packet p;
            const struct frame_copy *f = &fs.f[k];
            enum cap_decode_reason r = decode(f, false, &p);
            check_invariants(&p, f->data, f->caplen);
            bool cut = r == CAP_DECODE_TRUNCATED_L2 || r == CAP_DECODE_TRUNCATED_IP ||
                       r == CAP_DECODE_TRUNCATED_L4;
            if (cut)
                assert_true(f->caplen < f->wirelen);
            else
                assert_int_equal(r, CAP_DECODE_OK);
            if (cut && p.layers.l4_off == A)
                no_ports++;
        }
        print_message("  %s: %zu frames, %zu cut before the ports\n", classes[i].cls, fs.n,
                      no_ports);
        if (classes[i].no_ports != SIZE_MAX)
            assert_int_equal(no_ports, classes[i].no_ports);
        total += no_ports;
        frames += fs.n;
        frames_free(&fs);
    }
    assert_int_equal(frames, 51226); /* README: packets, total */
    assert_int_equal(total, 1139);
}

/* Every prefix of real frames (caplen 0..full), in an exactly sized heap block so that ASan sees
 * any read past caplen. What a prefix decodes must agree with the full frame. */
static void test_decode_every_prefix(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        unsigned frame;
    } picks[] = {
        {"tcpdump-tcp-handshake-nano.pcap", 1}, {"tcpdump-quic_handshake.pcap", 1},
        {"tcpdump-802.1ad_QinQ.pcap", 1},       {"ndpi-discord_mid_flow.pcap", 1},
        {"tcpdump-arista_ether.pcap", 4},       {"tcpdump-ipv6-routing-header.pcap", 4},
        {"ndpi-dns_fragmented.pcap", 5},        {"ndpi-dns_fragmented.pcap", 6},
        {"tcpdump-geneve.pcap", 1},             {"tcpdump-geneve.pcap", 8},
        {"ndpi-teredo.pcap", 2},                {"ndpi-gre.pcapng", 1},
        {"tcpdump-various_gre.pcap", 25},       {"ndpi-6in4tunnel.pcap", 1},
        {"ndpi-4in6tunnel.pcap", 1},            {"ndpi-reasm_segv_anon.pcapng", 1},
        {"tcpdump-vxlan.pcap", 1},              {"tcpdump-mpls-over-udp.pcap", 1},
        {"tcpdump-nflog.pcap", 1},              {"ndpi-someip_sd_sample.pcap", 1},
        {"tcpdump-ipoib.pcap", 1},              {"tcpdump-mpls-traceroute.pcap", 1},
        {"tcpdump-ipv6-srh-ext-header.pcap", 1}, {"tcpdump-LINKTYPE_RAW_ipv6.pcap", 1},
        {"tcpdump-pptp.pcap", 16},              {"ndpi-sites.pcapng", 1},
    };
    for (size_t i = 0; i < sizeof picks / sizeof picks[0]; i++) {
        const struct frame_copy *f = nth(capture_file(picks[i].file), picks[i].frame);
        for (int mode = 0; mode < 2; mode++) {
            struct cap_packet full;
            decode(f, mode, &full);
            for (uint32_t len = 0; len <= f->caplen; len++) {
                uint8_t *buf = malloc(len ? len : 1);
                assert_non_null(buf);
                memcpy(buf, f->data, len);
                struct frame_copy cut = *f;
                cut.data = len ? buf : NULL;
                cut.caplen = len;
                struct cap_packet p;
                enum cap_decode_reason r = decode(&cut, mode, &p);
                check_invariants(&p, cut.data, len);
                if (len == f->caplen)
                    assert_true(same_packet(&p, &full));
                /* A prefix only loses information; in the default mode what it has is right. */
                if (mode == 0 && r != CAP_DECODE_OK) {
                    assert_true(r == CAP_DECODE_TRUNCATED_L2 || r == CAP_DECODE_TRUNCATED_IP ||
                                r == CAP_DECODE_TRUNCATED_L4 || r == full.reason);
                }
                if (mode == 0) {
                    if (p.layers.l3_off != A)
                        assert_int_equal(p.layers.l3_off, full.layers.l3_off);
                    if (p.layers.l4_off != A) {
                        assert_int_equal(p.layers.l4_off, full.layers.l4_off);
                        assert_int_equal(p.src_port, full.src_port);
                        assert_int_equal(p.dst_port, full.dst_port);
                    }
                    if (p.layers.payload_off != A && r == CAP_DECODE_OK) {
                        assert_int_equal(p.layers.payload_off, full.layers.payload_off);
                        assert_true(p.payload_len <= full.payload_len);
                    }
                    if (r == CAP_DECODE_OK || r >= CAP_DECODE_FRAGMENT) {
                        assert_memory_equal(p.src_addr, full.src_addr, 16);
                        assert_memory_equal(p.dst_addr, full.dst_addr, 16);
                    }
                }
                free(buf);
            }
        }
    }
}

static uint64_t rng_state;
static uint32_t rng(void)
{
    /* xorshift64*: a fixed seed makes a failure reproducible */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ULL) >> 32);
}

static const uint16_t all_links[] = {
    CAP_LINK_NULL,   CAP_LINK_EN10MB,    CAP_LINK_RAW_OLD,   CAP_LINK_RAW_OLD2, CAP_LINK_RAW,
    CAP_LINK_LOOP,   CAP_LINK_LINUX_SLL, CAP_LINK_IPV4,      CAP_LINK_IPV6,     CAP_LINK_LINUX_SLL2,
    CAP_LINK_PPP,    CAP_LINK_PPP_HDLC,  CAP_LINK_PPI,       CAP_LINK_NFLOG,    CAP_LINK_IPOIB,
    2,               105,                65535,
};

/* Random bytes as every link type: never a crash, never a read past caplen. */
static void test_decode_random_bytes(void **state)
{
    (void)state;
    rng_state = 0x9e3779b97f4a7c15ULL;
    for (int iter = 0; iter < 60000; iter++) {
        uint32_t len = rng() % 160;
        uint8_t *buf = malloc(len ? len : 1);
        assert_non_null(buf);
        for (uint32_t i = 0; i < len; i++)
            buf[i] = (uint8_t)rng();
        /* Steer some frames into the deeper layers: plausible EtherTypes and IP versions. */
        if (len > 14 && (iter & 3) == 0) {
            static const uint16_t types[] = {0x0800, 0x86dd, 0x8100, 0x88a8, 0x8847, 0x8864,
                                             0x6558, 0xd28b, 0x8909};
            uint16_t t = types[rng() % (sizeof types / sizeof types[0])];
            buf[12] = (uint8_t)(t >> 8);
            buf[13] = (uint8_t)t;
            buf[14] = (uint8_t)((rng() & 1 ? 0x40 : 0x60) | (buf[14] & 0x0f));
        }
        struct cap_decode_opts o = {.innermost = iter & 1};
        uint16_t lt = all_links[(unsigned)iter % (sizeof all_links / sizeof all_links[0])];
        struct cap_packet p;
        cap_decode(&o, lt, len ? buf : NULL, len, len + (rng() % 64), iter, &p);
        check_invariants(&p, len ? buf : NULL, len);
        free(buf);
    }
}

/* Real frames with a few bytes changed: gets much deeper than pure noise (tunnel headers, length
 * fields, extension header chains). */
static void test_decode_mutated_frames(void **state)
{
    (void)state;
    static const char *const files[] = {
        "tcpdump-various_gre.pcap", "ndpi-gre.pcapng", "tcpdump-geneve.pcap", "ndpi-teredo.pcap",
        "tcpdump-vxlan.pcap", "ndpi-6in4tunnel.pcap", "ndpi-4in6tunnel.pcap",
        "ndpi-dns_fragmented.pcap", "tcpdump-ipv6-routing-header.pcap",
        "ndpi-discord_mid_flow.pcap", "tcpdump-arista_ether.pcap", "ndpi-reasm_segv_anon.pcapng",
        "tcpdump-nflog.pcap", "ndpi-someip_sd_sample.pcap", "tcpdump-mpls-traceroute.pcap",
        "tcpdump-ipv6-srh-ext-header.pcap", "tcpdump-bigtcp-ipv6-hbh.pcap",
    };
    rng_state = 0x2545f4914f6cdd1dULL;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        const struct frames *fs = capture_file(files[i]);
        for (int iter = 0; iter < 3000; iter++) {
            const struct frame_copy *f = &fs->f[rng() % fs->n];
            uint32_t len = f->caplen > 400 ? 400 : f->caplen;
            if (rng() % 4 == 0 && len > 0)
                len = rng() % len;
            uint8_t *buf = malloc(len ? len : 1);
            assert_non_null(buf);
            memcpy(buf, f->data, len);
            int flips = 1 + (int)(rng() % 4);
            for (int k = 0; k < flips && len > 0; k++)
                buf[rng() % len] = (uint8_t)rng();
            struct cap_decode_opts o = {.innermost = iter & 1};
            size_t nlinks = sizeof all_links / sizeof all_links[0];
            uint16_t lt = rng() % 16 == 0 ? all_links[rng() % nlinks] : f->linktype;
            struct cap_packet p;
            cap_decode(&o, lt, len ? buf : NULL, len, f->wirelen, f->ts_ns, &p);
            check_invariants(&p, len ? buf : NULL, len);
            free(buf);
        }
    }
}

/* DLT_NULL / LOOP carry the AF_ value in either byte order and AF_INET6 as 10, 24, 28 or 30.
 * The frames are the real ones with only the 4-byte family header rewritten. */
static void test_decode_null_loop_families(void **state)
{
    (void)state;
    const struct frame_copy *v6 = nth(capture_file("tcpdump-quic_handshake.pcap"), 1);
    const struct frame_copy *v4 = nth(capture_file("tcpdump-LINKTYPE_RAW_ipv4.pcap"), 1);
    static const struct {
        uint8_t hdr[4];
        int ver; /* 0: not IP */
    } fams[] = {
        {{2, 0, 0, 0}, 4},  {{0, 0, 0, 2}, 4},  {{10, 0, 0, 0}, 6}, {{0, 0, 0, 10}, 6},
        {{24, 0, 0, 0}, 6}, {{0, 0, 0, 24}, 6}, {{28, 0, 0, 0}, 6}, {{0, 0, 0, 28}, 6},
        {{30, 0, 0, 0}, 6}, {{0, 0, 0, 30}, 6}, {{7, 0, 0, 0}, 0},  {{0, 2, 0, 0}, 0},
    };
    for (size_t i = 0; i < sizeof fams / sizeof fams[0]; i++) {
        for (int link = 0; link < 2; link++) {
            const struct frame_copy *src = fams[i].ver == 4 ? v4 : v6;
            uint32_t ip_len = fams[i].ver == 4 ? src->caplen : src->caplen - 4;
            const uint8_t *ip = fams[i].ver == 4 ? src->data : src->data + 4;
            uint32_t len = 4 + ip_len;
            uint8_t *buf = malloc(len);
            assert_non_null(buf);
            memcpy(buf, fams[i].hdr, 4);
            memcpy(buf + 4, ip, ip_len);
            struct cap_packet p;
            uint16_t lt = link ? CAP_LINK_LOOP : CAP_LINK_NULL;
            enum cap_decode_reason r = cap_decode(NULL, lt, buf, len, len, 0, &p);
            check_invariants(&p, buf, len);
            if (fams[i].ver == 0) {
                assert_int_equal(r, CAP_DECODE_NOT_IP);
            } else {
                assert_int_equal(r, CAP_DECODE_OK);
                assert_int_equal(p.layers.ip_version, fams[i].ver);
                assert_int_equal(p.layers.l3_off, 4);
                assert_int_equal(p.dst_port, fams[i].ver == 4 ? 53 : 443);
            }
            free(buf);
        }
    }
}

/* LINUX_SLL2 and the RAW variants, from real frames re-wrapped: the SLL handshake frame's IP
 * packet under a 20-byte SLL2 header, and the raw IPv4/IPv6 frames under link types 12 and 14. */
static void test_decode_sll2_and_raw_variants(void **state)
{
    (void)state;
    const struct frame_copy *sll = nth(capture_file("tcpdump-tcp-handshake-nano.pcap"), 1);
    uint32_t ip_len = sll->caplen - 16;
    uint32_t len = 20 + ip_len;
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    static const uint8_t sll2[20] = {0x08, 0x00, 0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 0x52, 0x54, 0, 0x12,
                                     0x34, 0x56, 0, 0};
    memcpy(buf, sll2, 20);
    memcpy(buf + 20, sll->data + 16, ip_len);
    struct cap_packet p;
    assert_int_equal(cap_decode(NULL, CAP_LINK_LINUX_SLL2, buf, len, len, 0, &p), CAP_DECODE_OK);
    check_invariants(&p, buf, len);
    assert_int_equal(p.layers.eth_off, A);
    assert_int_equal(p.layers.l3_off, 20);
    assert_int_equal(p.layers.l4_off, 40);
    assert_addr(p.src_addr, "131.155.215.69", "src");
    assert_int_equal(p.src_port, 46656);
    /* SLL2 with an ARP protocol, and cut inside its header */
    buf[0] = 0x08;
    buf[1] = 0x06;
    assert_int_equal(cap_decode(NULL, CAP_LINK_LINUX_SLL2, buf, len, len, 0, &p),
                     CAP_DECODE_NOT_IP);
    assert_int_equal(cap_decode(NULL, CAP_LINK_LINUX_SLL2, buf, 19, len, 0, &p),
                     CAP_DECODE_TRUNCATED_L2);
    free(buf);

    const struct frame_copy *r4 = nth(capture_file("tcpdump-LINKTYPE_RAW_ipv4.pcap"), 1);
    const struct frame_copy *r6 = nth(capture_file("tcpdump-LINKTYPE_RAW_ipv6.pcap"), 1);
    static const uint16_t raws[] = {CAP_LINK_RAW, CAP_LINK_RAW_OLD, CAP_LINK_RAW_OLD2};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(cap_decode(NULL, raws[i], r4->data, r4->caplen, r4->caplen, 0, &p),
                         CAP_DECODE_OK);
        assert_int_equal(p.layers.ip_version, 4);
        assert_int_equal(cap_decode(NULL, raws[i], r6->data, r6->caplen, r6->caplen, 0, &p),
                         CAP_DECODE_OK);
        assert_int_equal(p.layers.ip_version, 6);
    }
    /* the IPv6 packet given as LINKTYPE_IPV4: the version nibble disagrees */
    assert_int_equal(cap_decode(NULL, CAP_LINK_IPV4, r6->data, r6->caplen, r6->caplen, 0, &p),
                     CAP_DECODE_BAD_IP_VERSION);
    assert_int_equal(cap_decode(NULL, CAP_LINK_RAW, r4->data, 0, 0, 0, &p),
                     CAP_DECODE_TRUNCATED_IP);
    assert_int_equal(cap_decode(NULL, 147, r4->data, r4->caplen, r4->caplen, 0, &p),
                     CAP_DECODE_UNSUPPORTED_LINK);
    check_invariants(&p, r4->data, r4->caplen);
}

static void test_reason_names_and_stats(void **state)
{
    (void)state;
    assert_string_equal(cap_decode_reason_name(CAP_DECODE_OK), "ok");
    assert_string_equal(cap_decode_reason_name(CAP_DECODE_TRUNCATED_L4), "truncated_l4");
    assert_string_equal(cap_decode_reason_name(CAP_DECODE_BAD_L4_HEADER), "bad_l4_header");
    assert_string_equal(cap_decode_reason_name(CAP_DECODE_REASON_COUNT), "unknown");
    for (int r = 0; r < CAP_DECODE_REASON_COUNT; r++) {
        const char *n = cap_decode_reason_name((enum cap_decode_reason)r);
        assert_true(strcmp(n, "unknown") != 0 && *n);
        for (int q = 0; q < r; q++)
            assert_true(strcmp(n, cap_decode_reason_name((enum cap_decode_reason)q)) != 0);
    }
    struct cap_decode_stats sum = {0}, a = {0}, b = {0};
    a.frames = 10;
    a.by_reason[CAP_DECODE_OK] = 7;
    a.by_reason[CAP_DECODE_NOT_IP] = 3;
    b.frames = 5;
    b.by_reason[CAP_DECODE_OK] = 4;
    b.by_reason[CAP_DECODE_BAD_L4_HEADER] = 1;
    cap_decode_stats_add(&sum, &a);
    cap_decode_stats_add(&sum, &b);
    assert_int_equal(sum.frames, 15);
    assert_int_equal(sum.by_reason[CAP_DECODE_OK], 11);
    assert_int_equal(sum.by_reason[CAP_DECODE_NOT_IP], 3);
    assert_int_equal(sum.by_reason[CAP_DECODE_BAD_L4_HEADER], 1);
}

/* ---- the file source ---- */

static char tmpdir[256];

static int make_tmpdir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/netlm-test-capture-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int remove_tmpdir(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    uint8_t *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void expect_open_error(const char *path, const char *what)
{
    char err[1024] = "";
    struct cap_source *src = cap_open_file(path, err, sizeof err);
    assert_null(src);
    print_message("  %s\n", err);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, what));
    assert_null(strchr(err, '\n'));
}

static void test_file_open_errors(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/does-not-exist.pcap", tmpdir);
    expect_open_error(path, "no such file");
    expect_open_error(tmpdir, "is a directory");
    snprintf(path, sizeof path, "%s/empty.pcap", tmpdir);
    write_file(path, "", 0);
    expect_open_error(path, "empty file");
    snprintf(path, sizeof path, "%s/notes.txt", tmpdir);
    const char text[] = "these are notes, not packets\n";
    write_file(path, text, sizeof text - 1);
    expect_open_error(path, "not a pcap or pcapng file (libpcap: ");
    /* the first 10 bytes of a real pcap: the magic is right, the header is cut */
    size_t n;
    uint8_t *real = read_file(PCAPS "tcpdump-ssh.pcap", &n);
    snprintf(path, sizeof path, "%s/short-header.pcap", tmpdir);
    write_file(path, real, 10);
    expect_open_error(path, "damaged pcap or pcapng header");
    free(real);
    if (geteuid() != 0) { /* root reads anything */
        snprintf(path, sizeof path, "%s/secret.pcap", tmpdir);
        write_file(path, text, sizeof text - 1);
        chmod(path, 0);
        expect_open_error(path, "permission denied");
    }
}

/* Reads a whole source with bursts of at most max frames; returns the frame count and the last
 * burst result. */
static size_t drain(struct cap_source *src, int max, int *last, uint64_t *bytes)
{
    struct cap_frame b[256];
    size_t n = 0;
    *bytes = 0;
    int k;
    while ((k = cap_next_burst(src, b, max)) > 0) {
        assert_true(k <= max);
        for (int i = 0; i < k; i++)
            *bytes += b[i].caplen;
        n += (size_t)k;
    }
    *last = k;
    return n;
}

static void test_file_bursts_and_stats(void **state)
{
    (void)state;
    char err[512];
    /* tcpdump-ssh.pcap: 54 packets, 11960 bytes of data (capinfos) */
    static const int maxes[] = {1, 7, 54, 256};
    for (size_t i = 0; i < sizeof maxes / sizeof maxes[0]; i++) {
        struct cap_source *src = cap_open_file(PCAPS "tcpdump-ssh.pcap", err, sizeof err);
        assert_non_null(src);
        assert_string_equal(cap_source_name(src), PCAPS "tcpdump-ssh.pcap");
        assert_int_equal(cap_source_linktype(src), CAP_LINK_EN10MB);
        int last;
        uint64_t bytes;
        assert_int_equal(drain(src, maxes[i], &last, &bytes), 54);
        assert_int_equal(last, CAP_BURST_END);
        assert_int_equal(bytes, 11960);
        struct cap_frame b[4];
        assert_int_equal(cap_next_burst(src, b, 4), CAP_BURST_END); /* stays at the end */
        struct cap_source_stats st;
        cap_source_stats(src, &st);
        assert_int_equal(st.frames, 54);
        assert_int_equal(st.bytes, 11960);
        assert_int_equal(st.kernel_dropped, 0);
        assert_string_equal(cap_source_error(src), "");
        cap_close(src);
    }
    /* pcapng, 22 IDBs: 699 packets, 374435 bytes (capinfos) */
    struct cap_source *src = cap_open_file(PCAPS "ndpi-sites.pcapng", err, sizeof err);
    assert_non_null(src);
    int last;
    uint64_t bytes;
    assert_int_equal(drain(src, 100, &last, &bytes), 699);
    assert_int_equal(bytes, 374435);
    cap_close(src);
    /* µs pcap: times become ns (afs #1: 942356776.463334) */
    const struct frames *afs = capture_file("tcpdump-afs.pcap");
    assert_int_equal(nth(afs, 1)->ts_ns, 942356776463334000);
    assert_int_equal(nth(afs, 1)->caplen, 86);
    /* big-endian pcap: 23 packets, 2072 bytes */
    src = cap_open_file(PCAPS "tcpdump-pptp.pcap", err, sizeof err);
    assert_non_null(src);
    assert_int_equal(drain(src, 5, &last, &bytes), 23);
    assert_int_equal(bytes, 2072);
    cap_close(src);
}

static void expect_cut_file(const char *name, const uint8_t *data, size_t len, int max,
                            size_t want_frames, const char *want_err)
{
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    write_file(path, data, len);
    struct cap_source *src = cap_open_file(path, err, sizeof err);
    assert_non_null(src);
    int last;
    uint64_t bytes;
    assert_int_equal(drain(src, max, &last, &bytes), want_frames);
    if (!want_err) {
        assert_int_equal(last, CAP_BURST_END);
    } else {
        assert_int_equal(last, CAP_BURST_ERROR);
        const char *msg = cap_source_error(src);
        print_message("  %s\n", msg);
        assert_non_null(strstr(msg, path));
        assert_non_null(strstr(msg, want_err));
        struct cap_frame b[4];
        assert_int_equal(cap_next_burst(src, b, 4), CAP_BURST_ERROR); /* and stays there */
    }
    struct cap_source_stats st;
    cap_source_stats(src, &st);
    assert_int_equal(st.frames, want_frames);
    cap_close(src);
}

static void test_file_cut_mid_record(void **state)
{
    (void)state;
    size_t n;
    uint8_t *ssh = read_file(PCAPS "tcpdump-ssh.pcap", &n);
    assert_int_equal(n, 12848);
    /* record 11 starts at byte 2752: 16-byte header, then 66 bytes of frame */
    expect_cut_file("cut-data.pcap", ssh, 2752 + 16 + 30, 4, 10,
                    "truncated or corrupted after frame 10 (libpcap: ");
    expect_cut_file("cut-data-1.pcap", ssh, 2752 + 16 + 30, 1, 10, "after frame 10");
    expect_cut_file("cut-header.pcap", ssh, 2752 + 5, 64, 10, "after frame 10");
    /* cut exactly between records: a clean, shorter file */
    expect_cut_file("cut-between.pcap", ssh, 2752, 3, 10, NULL);
    free(ssh);
    /* pcapng: 9 IDBs then one 384-byte packet; cut inside the packet block */
    uint8_t *gre = read_file(PCAPS "ndpi-gre.pcapng", &n);
    assert_int_equal(n, 668);
    expect_cut_file("cut.pcapng", gre, n - 100, 8, 0, "after frame 0");
    free(gre);
}

/* Frames that do not fit in what is left of the arena end the burst early and come first in the
 * next one; every frame handed out stays intact until the next burst. */
static void test_file_arena_full(void **state)
{
    (void)state;
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/big-frames.pcap", tmpdir);
    pcap_t *dead = pcap_open_dead_with_tstamp_precision(DLT_EN10MB, 262144,
                                                        PCAP_TSTAMP_PRECISION_NANO);
    assert_non_null(dead);
    pcap_dumper_t *dump = pcap_dump_open(dead, path);
    assert_non_null(dump);
    enum { FRAMES = 90 };
    uint8_t *frame = malloc(262144);
    assert_non_null(frame);
    uint32_t sizes[FRAMES];
    for (int i = 0; i < FRAMES; i++) {
        sizes[i] = i % 10 == 9 ? 262144 : 60000 + (uint32_t)i;
        memset(frame, i, sizes[i]);
        struct pcap_pkthdr h = {.ts = {.tv_sec = 1000 + i, .tv_usec = 5}, .caplen = sizes[i],
                                .len = sizes[i]};
        pcap_dump((u_char *)dump, &h, frame);
    }
    pcap_dump_close(dump);
    pcap_close(dead);
    free(frame);

    struct cap_source *src = cap_open_file(path, err, sizeof err);
    assert_non_null(src);
    struct cap_frame b[FRAMES];
    int k, bursts = 0, seen = 0;
    while ((k = cap_next_burst(src, b, FRAMES)) > 0) {
        bursts++;
        for (int i = 0; i < k; i++) {
            int no = seen + i;
            assert_int_equal(b[i].caplen, sizes[no]);
            assert_int_equal(b[i].ts_ns, (int64_t)(1000 + no) * 1000000000 + 5);
            assert_int_equal(b[i].data[0], (uint8_t)no);
            assert_int_equal(b[i].data[b[i].caplen - 1], (uint8_t)no);
        }
        /* re-check the first frame: later copies must not have overwritten it */
        assert_int_equal(b[0].data[b[0].caplen / 2], (uint8_t)seen);
        seen += k;
    }
    assert_int_equal(k, CAP_BURST_END);
    assert_int_equal(seen, FRAMES);
    assert_true(bursts > 1);
    cap_close(src);
}

/* ---- pcapng: netlm's own reader ----
 *
 * Files are built here block by block from frames that libpcap read out of the shared pcap files,
 * so what each frame must come back as (bytes, lengths, time, link type) is known by
 * construction: the time stamps are written in each interface's resolution and expected in ns
 * computed apart from the reader, NFLOG frames are written in the section's byte order as a host
 * of that order captures them. The shared pcapng files are checked against libpcap itself. */

struct ng_want {
    const uint8_t *data; /* the original frame (host order) */
    uint32_t caplen, wirelen;
    int64_t ts_ns;
    uint16_t linktype; /* as libpcap names it */
    bool tcp, udp, dns; /* for the filter tests, from the decoder */
};

struct ng_file {
    uint8_t *buf;
    size_t len, cap;
    bool be;            /* the section being written is big-endian */
    size_t shb_len;     /* the first Section Header Block's length */
    struct ng_want want[64];
    size_t n_want;
    size_t ends[160];   /* where each block ends, and how many packet blocks end there or before */
    size_t frames_at[160];
    size_t n_ends;
    size_t packet_start[64]; /* where each packet block starts */
    bool untracked;          /* more blocks than the above hold: none recorded */
    int first_linktype;      /* the file's first interface's, as libpcap names it; -1 none yet */
};

static void ng_init(struct ng_file *w)
{
    memset(w, 0, sizeof *w);
    w->first_linktype = -1;
}

static void ng_raw(struct ng_file *w, const void *p, size_t n)
{
    if (w->len + n > w->cap) {
        w->cap = (w->len + n) * 2 + 4096;
        w->buf = realloc(w->buf, w->cap);
        assert_non_null(w->buf);
    }
    memcpy(w->buf + w->len, p, n);
    w->len += n;
}

static void ng_16(struct ng_file *w, uint16_t v)
{
    uint8_t b[2] = {(uint8_t)(v & 0xff), (uint8_t)(v >> 8)};
    if (w->be) {
        b[0] = (uint8_t)(v >> 8);
        b[1] = (uint8_t)(v & 0xff);
    }
    ng_raw(w, b, 2);
}

static void ng_32(struct ng_file *w, uint32_t v)
{
    if (w->be) {
        ng_16(w, (uint16_t)(v >> 16));
        ng_16(w, (uint16_t)v);
    } else {
        ng_16(w, (uint16_t)v);
        ng_16(w, (uint16_t)(v >> 16));
    }
}

static void ng_64(struct ng_file *w, uint64_t v)
{
    if (w->be) {
        ng_32(w, (uint32_t)(v >> 32));
        ng_32(w, (uint32_t)v);
    } else {
        ng_32(w, (uint32_t)v);
        ng_32(w, (uint32_t)(v >> 32));
    }
}

static void ng_pad(struct ng_file *w)
{
    static const uint8_t zero[4];
    ng_raw(w, zero, (4 - w->len % 4) % 4);
}

static size_t ng_begin(struct ng_file *w, uint32_t type)
{
    size_t at = w->len;
    ng_32(w, type);
    ng_32(w, 0); /* the length, once known */
    return at;
}

static void ng_option(struct ng_file *w, uint16_t code, const void *value, uint16_t len)
{
    ng_16(w, code);
    ng_16(w, len);
    ng_raw(w, value, len);
    ng_pad(w);
}

static void ng_end(struct ng_file *w, size_t at, bool packet)
{
    ng_pad(w);
    const uint32_t len = (uint32_t)(w->len - at + 4);
    ng_32(w, len);
    const size_t keep = w->len;
    w->len = at + 4;
    ng_32(w, len);
    w->len = keep;
    if (w->untracked)
        return;
    if (packet)
        w->packet_start[w->n_want - 1] = at;
    assert_true(w->n_ends < sizeof w->ends / sizeof w->ends[0]);
    w->ends[w->n_ends] = w->len;
    w->frames_at[w->n_ends++] = w->n_want;
}

static void ng_section(struct ng_file *w, bool be)
{
    w->be = be;
    size_t at = ng_begin(w, 0x0A0D0D0A);
    ng_32(w, 0x1A2B3C4D);
    ng_16(w, 1);
    ng_16(w, 0);
    ng_64(w, UINT64_MAX); /* section length not given */
    ng_option(w, 4, "netlm test_capture", 18); /* shb_userappl */
    ng_16(w, 0);
    ng_16(w, 0);
    ng_end(w, at, false);
    if (!w->shb_len)
        w->shb_len = w->len;
}

/* tsresol < 0: none (µs); tsoffset written when non-zero */
static void ng_interface(struct ng_file *w, uint16_t linktype, uint32_t snaplen, int tsresol, int64_t tsoffset)
{
    if (w->first_linktype < 0)
        w->first_linktype = linktype == 101 ? DLT_RAW : linktype;
    size_t at = ng_begin(w, 1);
    ng_16(w, linktype);
    ng_16(w, 0);
    ng_32(w, snaplen);
    ng_option(w, 2, "eth7", 4); /* if_name */
    if (tsresol >= 0) {
        uint8_t v = (uint8_t)tsresol;
        ng_option(w, 9, &v, 1);
    }
    if (tsoffset) {
        ng_16(w, 14);
        ng_16(w, 8);
        ng_64(w, (uint64_t)tsoffset);
    }
    ng_16(w, 0);
    ng_16(w, 0);
    ng_end(w, at, false);
}

static void ng_other(struct ng_file *w, uint32_t type, size_t body)
{
    size_t at = ng_begin(w, type);
    uint8_t *b = malloc(body);
    assert_non_null(b);
    for (size_t i = 0; i < body; i++)
        b[i] = (uint8_t)(i * 37 + 11);
    ng_raw(w, b, body);
    free(b);
    ng_end(w, at, false);
}

/* NFLOG's TLV lengths and types as a host of the other byte order writes them. */
static void swap_nflog_tlvs(uint8_t *d, uint32_t caplen)
{
    uint32_t off = 4;
    while (off + 4 <= caplen) {
        uint16_t len, type;
        memcpy(&len, d + off, 2);
        memcpy(&type, d + off + 2, 2);
        uint32_t size = ((uint32_t)len + 3) & ~3u; /* the host's own order: read before swapping */
        len = (uint16_t)(len >> 8 | len << 8);
        type = (uint16_t)(type >> 8 | type << 8);
        memcpy(d + off, &len, 2);
        memcpy(d + off + 2, &type, 2);
        if (size < 4)
            return;
        off += size;
    }
}

static bool host_be(void)
{
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 0;
}

static void want_frame(struct ng_file *w, const struct frame_copy *f, uint32_t caplen, int64_t ts_ns)
{
    assert_true(w->n_want < sizeof w->want / sizeof w->want[0]);
    struct cap_packet p;
    cap_decode(NULL, f->linktype, f->data, f->caplen, f->wirelen, 0, &p);
    w->want[w->n_want++] = (struct ng_want){
        .data = f->data, .caplen = caplen, .wirelen = f->wirelen, .ts_ns = ts_ns, .linktype = f->linktype,
        .tcp = p.layers.l4_proto == 6, .udp = p.layers.l4_proto == 17,
        .dns = p.layers.l4_proto == 17 && (p.src_port == 53 || p.dst_port == 53)};
}

/* An Enhanced (or, pb, obsolete) Packet Block with the frame's bytes as the section would hold
 * them; t is the time in the interface's units, ts_ns what it must come back as. */
static void ng_packet(struct ng_file *w, bool pb, uint32_t iface, const struct frame_copy *f, uint64_t t,
                      int64_t ts_ns, bool comment)
{
    want_frame(w, f, f->caplen, ts_ns);
    size_t at = ng_begin(w, pb ? 2 : 6);
    if (pb) {
        ng_16(w, (uint16_t)iface);
        ng_16(w, 0); /* drops */
    } else {
        ng_32(w, iface);
    }
    ng_32(w, (uint32_t)(t >> 32));
    ng_32(w, (uint32_t)t);
    ng_32(w, f->caplen);
    ng_32(w, f->wirelen);
    size_t data = w->len;
    ng_raw(w, f->data, f->caplen);
    if (f->linktype == 239 && w->be != host_be())
        swap_nflog_tlvs(w->buf + data, f->caplen);
    ng_pad(w);
    if (comment) {
        ng_option(w, 1, "a frame with options", 20);
        ng_16(w, 0);
        ng_16(w, 0);
    }
    ng_end(w, at, true);
}

/* A Simple Packet Block keeps no captured length: the frame cut to the interface's snap length,
 * and no time either (the reader gives it its predecessor's) */
static void ng_simple(struct ng_file *w, const struct frame_copy *f, uint32_t snaplen)
{
    assert_int_equal(f->caplen, f->wirelen);
    const uint32_t stored = snaplen && snaplen < f->wirelen ? snaplen : f->wirelen;
    want_frame(w, f, stored, w->want[w->n_want - 1].ts_ns);
    size_t at = ng_begin(w, 3);
    ng_32(w, f->wirelen);
    ng_raw(w, f->data, stored);
    ng_end(w, at, true);
}

#define NS 1000000000LL

/* Three sections: little-endian, big-endian, little-endian again; eight interfaces of five link
 * types, four time resolutions, a time offset; every packet block type; blocks that are not
 * packets before, between and after them; an interface described after packets. */
static void ng_build(struct ng_file *w)
{
    ng_init(w);
    const struct frames *ssh = capture_file("tcpdump-ssh.pcap");
    const struct frames *raw = capture_file("tcpdump-LINKTYPE_RAW_ipv4.pcap");
    const struct frames *nflog = capture_file("tcpdump-nflog.pcap");
    const struct frames *sll = capture_file("tcpdump-tcp-handshake-nano.pcap");
    const struct frames *quic = capture_file("tcpdump-quic_handshake.pcap");
    assert_int_equal(raw->f[0].linktype, DLT_RAW); /* libpcap's name for LINKTYPE_RAW (101) */

    ng_section(w, false);
    ng_interface(w, 1, 262144, -1, 0);         /* 0: Ethernet, µs */
    ng_interface(w, 101, 65535, 9, 0);         /* 1: raw IP, ns */
    ng_other(w, 4, 16);                        /* name resolution */
    ng_packet(w, false, 0, nth(ssh, 1), 1545562209891237ULL, 1545562209891237000LL, false);
    ng_packet(w, false, 1, nth(raw, 1), 1700000000123456789ULL, 1700000000123456789LL, true);
    ng_interface(w, 239, 0, 0x94, 1000);       /* 2: NFLOG, 2^-20 s, +1000 s */
    /* 1.5e9 s and 0x54321 / 2^20 s: 344865 * 1e9 / 2^20 = 328888893.13 ns */
    ng_packet(w, false, 2, nth(nflog, 1), (1500000000ULL << 20) | 0x54321, 1500001000LL * NS + 328888893LL,
              false);
    ng_packet(w, true, 0, nth(ssh, 2), 1545562209891300ULL, 1545562209891300000LL, false);
    ng_other(w, 5, 28);                        /* interface statistics */
    ng_simple(w, nth(ssh, 3), 262144);
    ng_other(w, 0x40000BAD, 13);               /* a custom block, padded */
    ng_packet(w, false, 0, nth(ssh, 4), 1545562210000001ULL, 1545562210000001000LL, true);

    ng_section(w, true);
    /* 0: Linux SLL, ns, a snap length of 70 that its 76-byte frames exceed: Enhanced Packet
     * Blocks say their own captured length and are taken as they are (as Wireshark does; libpcap
     * refuses them), a Simple Packet Block is cut to it */
    ng_interface(w, 113, 70, 9, 0);
    ng_interface(w, 239, 65535, -1, -20);      /* 1: NFLOG, µs, -20 s */
    ng_interface(w, 0, 65535, 3, 0);           /* 2: BSD loopback, ms */
    for (size_t i = 1; i <= 3; i++)
        ng_packet(w, false, 0, nth(sll, i), 1600000000000000000ULL + i, 1600000000000000000LL + (int64_t)i, false);
    for (size_t i = 2; i <= 4; i++)
        ng_packet(w, false, 1, nth(nflog, i), 1400000000000000ULL + i, (1400000000LL - 20) * NS + (int64_t)i * 1000,
                  i == 3);
    ng_packet(w, false, 2, nth(quic, 1), 1234567890123ULL, 1234567890123000000LL, false);
    ng_packet(w, true, 2, nth(quic, 2), 1234567890124ULL, 1234567890124000000LL, false);
    ng_other(w, 0x0A, 40);                     /* decryption secrets */
    ng_simple(w, nth(sll, 2), 70);

    ng_section(w, false);
    ng_interface(w, 1, 1500, 6, 0);            /* 0: Ethernet again, µs said explicitly */
    ng_packet(w, false, 0, nth(ssh, 5), 1545562211000000ULL, 1545562211000000000LL, false);
}

static void ng_write(const struct ng_file *w, const char *name, char *path, size_t pathlen)
{
    snprintf(path, pathlen, "%s/%s", tmpdir, name);
    write_file(path, w->buf, w->len);
}

/* Reads path in bursts of max; checks every frame against want[], which the filter selects from
 * (filter: 0 all, 1 TCP only, 2 DNS only, 3 UDP only). Returns the last burst result. */
static int ng_check_frames(const char *path, const struct ng_file *w, int max, int filter, const char *bpf,
                           size_t *got)
{
    char err[512];
    struct cap_source *src = cap_open_file(path, err, sizeof err);
    if (!src)
        fail_msg("%s", err);
    if (bpf && !cap_source_set_filter(src, bpf, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(cap_source_linktype(src), w->first_linktype);
    struct cap_frame b[64];
    size_t i = 0, n = 0;
    uint64_t bytes = 0;
    int k;
    while ((k = cap_next_burst(src, b, max)) > 0) {
        assert_true(k <= max);
        for (int j = 0; j < k; j++) {
            while (i < w->n_want && ((filter == 1 && !w->want[i].tcp) || (filter == 2 && !w->want[i].dns) ||
                                     (filter == 3 && !w->want[i].udp)))
                i++;
            assert_true(i < w->n_want);
            const struct ng_want *e = &w->want[i++];
            if (b[j].caplen != e->caplen || b[j].wirelen != e->wirelen || b[j].ts_ns != e->ts_ns ||
                b[j].linktype != e->linktype || memcmp(b[j].data, e->data, e->caplen) != 0)
                fail_msg("%s frame %zu: caplen %u/%u wirelen %u/%u ts %lld/%lld linktype %u/%u%s", path, i,
                         b[j].caplen, e->caplen, b[j].wirelen, e->wirelen, (long long)b[j].ts_ns,
                         (long long)e->ts_ns, b[j].linktype, e->linktype,
                         memcmp(b[j].data, e->data, e->caplen) ? ", bytes differ" : "");
            bytes += b[j].caplen;
        }
        n += (size_t)k;
    }
    struct cap_source_stats st;
    cap_source_stats(src, &st);
    assert_int_equal(st.frames, n);
    assert_int_equal(st.bytes, bytes);
    if (k == CAP_BURST_END && !filter)
        assert_int_equal(n, w->n_want);
    if (k == CAP_BURST_END && cap_source_offset(src) >= 0)
        assert_int_equal(cap_source_offset(src), (int64_t)w->len);
    *got = n;
    cap_close(src);
    return k;
}

static void test_pcapng_sections(void **state)
{
    (void)state;
    struct ng_file w;
    ng_build(&w);
    char path[512];
    ng_write(&w, "sections.pcapng", path, sizeof path);
    assert_int_equal(w.n_want, 16);
    assert_int_equal(w.want[6].caplen, 76);  /* over the snap length, in an Enhanced Packet Block */
    assert_int_equal(w.want[14].caplen, 70); /* cut to it, in a Simple Packet Block */
    static const int maxes[] = {1, 3, 64};
    for (size_t i = 0; i < sizeof maxes / sizeof maxes[0]; i++) {
        size_t n;
        assert_int_equal(ng_check_frames(path, &w, maxes[i], 0, NULL, &n), CAP_BURST_END);
        assert_int_equal(n, 16);
    }
    free(w.buf);

    /* Several MiB: reading goes on in the reader's second buffer in the middle of bursts, and the
     * bursts stay full, as libpcap's are (the order sessions end in follows them) */
    const struct frames *ssh = capture_file("tcpdump-ssh.pcap");
    ng_init(&w);
    w.untracked = true;
    ng_section(&w, false);
    ng_interface(&w, 1, 0, 9, 0);
    enum { LONG = 30000 };
    for (size_t i = 0; i < LONG; i++) {
        const struct frame_copy *f = nth(ssh, 1 + i % ssh->n);
        size_t at = ng_begin(&w, 6);
        ng_32(&w, 0);
        ng_32(&w, 0);
        ng_32(&w, (uint32_t)i);
        ng_32(&w, f->caplen);
        ng_32(&w, f->wirelen);
        ng_raw(&w, f->data, f->caplen);
        ng_end(&w, at, false);
    }
    assert_true(w.len > (4u << 20));
    ng_write(&w, "long.pcapng", path, sizeof path);
    char err[512];
    struct cap_source *src = cap_open_file(path, err, sizeof err);
    assert_non_null(src);
    struct cap_frame b[64];
    size_t seen = 0;
    int k;
    while ((k = cap_next_burst(src, b, 64)) > 0) {
        if (k < 64)
            assert_int_equal(seen + (size_t)k, LONG);
        for (int j = 0; j < k; j++) {
            const struct frame_copy *f = nth(ssh, 1 + (seen + (size_t)j) % ssh->n);
            assert_int_equal(b[j].ts_ns, (int64_t)(seen + (size_t)j));
            assert_int_equal(b[j].caplen, f->caplen);
            assert_memory_equal(b[j].data, f->data, f->caplen);
        }
        seen += (size_t)k;
    }
    assert_int_equal(k, CAP_BURST_END);
    assert_int_equal(seen, LONG);
    assert_int_equal(cap_source_offset(src), (int64_t)w.len);
    cap_close(src);
    free(w.buf);
}

/* Every shared pcapng file that libpcap reads gives the frames libpcap gives. */
static void test_pcapng_as_libpcap(void **state)
{
    (void)state;
    static const char *const files[] = {
        "ndpi-sites.pcapng", "ndpi-gre.pcapng", "ndpi-openwire.pcapng", "ndpi-quic_interop_V.pcapng",
        "ndpi-reasm_segv_anon.pcapng", "tcpdump-ahcp.pcapng", "tcpdump-of13_ericsson.pcapng"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[512], perr[PCAP_ERRBUF_SIZE], err[512];
        snprintf(path, sizeof path, "%s%s", PCAPS, files[i]);
        pcap_t *p = pcap_open_offline_with_tstamp_precision(path, PCAP_TSTAMP_PRECISION_NANO, perr);
        assert_non_null(p);
        struct cap_source *src = cap_open_file(path, err, sizeof err);
        assert_non_null(src);
        struct cap_frame b[64];
        int k, n = 0;
        while ((k = cap_next_burst(src, b, 64)) > 0) {
            for (int j = 0; j < k; j++, n++) {
                struct pcap_pkthdr *h;
                const u_char *d;
                assert_int_equal(pcap_next_ex(p, &h, &d), 1);
                assert_int_equal(b[j].caplen, h->caplen);
                assert_int_equal(b[j].wirelen, h->len);
                assert_int_equal(b[j].ts_ns, (int64_t)h->ts.tv_sec * NS + h->ts.tv_usec);
                assert_int_equal(b[j].linktype, pcap_datalink(p));
                assert_memory_equal(b[j].data, d, h->caplen);
            }
        }
        assert_int_equal(k, CAP_BURST_END);
        struct pcap_pkthdr *h;
        const u_char *d;
        assert_int_equal(pcap_next_ex(p, &h, &d), PCAP_ERROR_BREAK);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(cap_source_offset(src), st.st_size);
        print_message("  %s: %d frames as libpcap's\n", files[i], n);
        cap_close(src);
        pcap_close(p);
    }
}

/* Through a named pipe, written in small pieces, as bash's <(...) gives one: reads return what
 * is there, which moves the reader's buffer at other places than a file's reads do. */
static void feed_fifo(const char *fifo, const uint8_t *data, size_t len, size_t piece)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(fifo, O_WRONLY);
        for (size_t at = 0; fd >= 0 && at < len; at += piece) {
            size_t n = len - at < piece ? len - at : piece;
            if (write(fd, data + at, n) != (ssize_t)n)
                _exit(1);
            usleep(200);
        }
        _exit(0);
    }
}

static void test_pcapng_pipe(void **state)
{
    (void)state;
    struct ng_file w;
    ng_build(&w);
    char fifo[512];
    snprintf(fifo, sizeof fifo, "%s/capture.fifo", tmpdir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    static const size_t pieces[] = {7, 100, 4096};
    for (size_t i = 0; i < sizeof pieces / sizeof pieces[0]; i++) {
        feed_fifo(fifo, w.buf, w.len, pieces[i]);
        size_t n;
        assert_int_equal(ng_check_frames(fifo, &w, 4, 0, NULL, &n), CAP_BURST_END);
        assert_int_equal(n, 16);
        int status;
        assert_true(wait(&status) > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    /* a pcap file through the pipe goes to libpcap, its magic handed back to it; its offset is
     * unknown there */
    size_t len;
    uint8_t *ssh = read_file(PCAPS "tcpdump-ssh.pcap", &len);
    feed_fifo(fifo, ssh, len, 333);
    char err[512];
    struct cap_source *src = cap_open_file(fifo, err, sizeof err);
    assert_non_null(src);
    int last;
    uint64_t bytes;
    assert_int_equal(drain(src, 64, &last, &bytes), 54);
    assert_int_equal(last, CAP_BURST_END);
    assert_int_equal(bytes, 11960);
    assert_int_equal(cap_source_offset(src), -1);
    cap_close(src);
    int status;
    assert_true(wait(&status) > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* the same file on disk: the offset is the file's size at the end */
    src = cap_open_file(PCAPS "tcpdump-ssh.pcap", err, sizeof err);
    assert_non_null(src);
    assert_int_equal(drain(src, 64, &last, &bytes), 54);
    assert_int_equal(cap_source_offset(src), (int64_t)len);
    cap_close(src);
    free(ssh);
    unlink(fifo);
    free(w.buf);
}

/* Reads a damaged copy; the frames before the damage come out, then one error naming the file,
 * the frame count and what is wrong. */
static void expect_ng_damage(const char *name, const uint8_t *data, size_t len, size_t frames, const char *what)
{
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    write_file(path, data, len);
    struct cap_source *src = cap_open_file(path, err, sizeof err);
    if (!src)
        fail_msg("%s: %s", name, err);
    int last;
    uint64_t bytes;
    size_t n = drain(src, 5, &last, &bytes);
    const char *msg = cap_source_error(src);
    if (last != CAP_BURST_ERROR || n != frames || !strstr(msg, path) || !strstr(msg, what))
        fail_msg("%s: %zu frames (want %zu), result %d, \"%s\" (want \"%s\")", name, n, frames, last, msg, what);
    char after[64];
    snprintf(after, sizeof after, "truncated or corrupted after frame %zu (pcapng: ", frames);
    if (!strstr(msg, after))
        fail_msg("%s: \"%s\" lacks \"%s\"", name, msg, after);
    assert_null(strchr(msg, '\n'));
    print_message("  %s\n", msg);
    struct cap_frame b[4];
    assert_int_equal(cap_next_burst(src, b, 4), CAP_BURST_ERROR); /* and stays there */
    cap_close(src);
}

static void put32(uint8_t *p, uint32_t v, bool be)
{
    for (int i = 0; i < 4; i++)
        p[be ? 3 - i : i] = (uint8_t)(v >> (8 * i));
}

static void test_pcapng_damage(void **state)
{
    (void)state;
    struct ng_file w;
    ng_build(&w);
    char path[512], err[512];
    uint8_t *c = malloc(w.len);
    assert_non_null(c);

    /* every cut: at a block's end a clean shorter file; elsewhere the frames of the blocks before
     * it, then the error; inside the first Section Header Block no file at all */
    size_t block = 0;
    for (size_t cut = 1; cut < w.len; cut++) {
        while (block < w.n_ends && w.ends[block] <= cut)
            block++;
        const size_t frames = block ? w.frames_at[block - 1] : 0;
        snprintf(path, sizeof path, "%s/cut.pcapng", tmpdir);
        write_file(path, w.buf, cut);
        struct cap_source *src = cap_open_file(path, err, sizeof err);
        if (cut < w.shb_len) {
            assert_null(src);
            assert_non_null(strstr(err, path));
            assert_non_null(strstr(err, cut < 4 ? "not a pcap or pcapng file" : "damaged pcap or pcapng header"));
            continue;
        }
        if (!src)
            fail_msg("cut at %zu: %s", cut, err);
        int last;
        uint64_t bytes;
        const size_t n = drain(src, 3, &last, &bytes);
        const bool boundary = block > 0 && w.ends[block - 1] == cut;
        if (n != frames || last != (boundary ? CAP_BURST_END : CAP_BURST_ERROR))
            fail_msg("cut at %zu: %zu frames (want %zu), result %d: %s", cut, n, frames, last, cap_source_error(src));
        if (!boundary) {
            char after[64];
            snprintf(after, sizeof after, "truncated or corrupted after frame %zu (pcapng: ", frames);
            assert_non_null(strstr(cap_source_error(src), after));
        }
        cap_close(src);
    }

    /* where the damage is: the k-th packet block (counting from 0) of the first section */
    const size_t p1 = w.packet_start[1], p2 = w.packet_start[2];
    const uint32_t p1_len = (uint32_t)w.buf[p1 + 4] | (uint32_t)w.buf[p1 + 5] << 8;
#define COPY() memcpy(c, w.buf, w.len)
    COPY();
    put32(c + p1 + p1_len - 4, p1_len + 4, false);
    expect_ng_damage("trailer.pcapng", c, w.len, 1, "whose two lengths differ");
    COPY();
    put32(c + p1 + 4, p1_len + 2, false);
    expect_ng_damage("odd-length.pcapng", c, w.len, 1, "claims a length of");
    COPY();
    put32(c + p1 + 4, 8, false);
    expect_ng_damage("short-length.pcapng", c, w.len, 1, "claims a length of 8 bytes");
    COPY();
    put32(c + p1 + 4, 0x7ffffff0, false);
    expect_ng_damage("huge-packet.pcapng", c, w.len, 1, "more than");
    COPY();
    put32(c + p1 + 20, p1_len, false); /* captured length */
    expect_ng_damage("caplen.pcapng", c, w.len, 1, "runs past its end");
    COPY();
    put32(c + p2 + 8, 7, false); /* interface */
    expect_ng_damage("iface.pcapng", c, w.len, 2, "interface 7");
    /* the third section has one interface: the second section's three are gone */
    const size_t last_packet = w.packet_start[w.n_want - 1];
    COPY();
    put32(c + last_packet + 8, 1, false);
    expect_ng_damage("old-iface.pcapng", c, w.len, w.n_want - 1, "interface 1, which its section has not described");
    /* the second section's header: its byte-order magic, its version */
    size_t shb2 = 0;
    for (size_t i = 0; i < w.n_ends; i++)
        if (w.ends[i] < w.len && memcmp(w.buf + w.ends[i], "\x0a\x0d\x0d\x0a", 4) == 0 && !shb2)
            shb2 = w.ends[i];
    assert_true(shb2 > 0);
    const size_t frames1 = 6;
    COPY();
    c[shb2 + 8] ^= 0xff;
    expect_ng_damage("bom.pcapng", c, w.len, frames1, "byte-order magic");
    COPY();
    c[shb2 + 13] = 2; /* major version, big-endian */
    expect_ng_damage("version.pcapng", c, w.len, frames1, "version 2.0");
    /* the second section's first interface: an option longer than the block, a resolution of
     * 2^-64 */
    const size_t idb2 = shb2 + ((size_t)w.buf[shb2 + 6] << 8 | w.buf[shb2 + 7]); /* after the header */
    COPY();
    c[idb2 + 16 + 3] = 200; /* if_name's length (big-endian) */
    expect_ng_damage("option.pcapng", c, w.len, frames1, "runs past the block");
    COPY();
    assert_int_equal(c[idb2 + 24 + 1], 9); /* if_tsresol, after if_name's 4 + 4 bytes */
    c[idb2 + 24 + 4] = 0xc0;
    expect_ng_damage("tsresol.pcapng", c, w.len, frames1, "2^-64");

    /* a valid block of another type larger than the reader holds whole: skipped as it streams
     * by, the frames after it read */
    struct ng_file big;
    ng_init(&big);
    ng_section(&big, false);
    ng_interface(&big, 1, 0, -1, 0);
    ng_packet(&big, false, 0, nth(capture_file("tcpdump-ssh.pcap"), 1), 1, 1000, false);
    ng_other(&big, 0x80000001, 17u << 20);
    ng_packet(&big, false, 0, nth(capture_file("tcpdump-ssh.pcap"), 2), 2, 2000, false);
    snprintf(path, sizeof path, "%s/long-block.pcapng", tmpdir);
    write_file(path, big.buf, big.len);
    size_t n;
    assert_int_equal(ng_check_frames(path, &big, 64, 0, NULL, &n), CAP_BURST_END);
    assert_int_equal(n, 2);
    /* ... and the same cut inside it */
    expect_ng_damage("long-block-cut.pcapng", big.buf, big.len - 1000, 1, "ends inside a block of");
    free(big.buf);

    /* random damage: never a crash, never a frame outside the file, always an end */
    srand(7);
    for (int round = 0; round < 3000; round++) {
        COPY();
        const int flips = 1 + rand() % 4;
        for (int f = 0; f < flips; f++)
            c[(size_t)rand() % w.len] ^= (uint8_t)(1 + rand() % 255);
        snprintf(path, sizeof path, "%s/mutated.pcapng", tmpdir);
        write_file(path, c, w.len);
        struct cap_source *src = cap_open_file(path, err, sizeof err);
        if (!src)
            continue;
        struct cap_frame b[8];
        int k;
        size_t frames = 0;
        while ((k = cap_next_burst(src, b, 8)) > 0) {
            for (int j = 0; j < k; j++)
                assert_true(b[j].caplen <= w.len);
            frames += (size_t)k;
        }
        assert_true(k == CAP_BURST_END || k == CAP_BURST_ERROR);
        assert_true(frames <= w.len / 16);
        cap_close(src);
    }
#undef COPY
    free(c);
    free(w.buf);
}

/* A filter is compiled for each interface's link type: "tcp" keeps the TCP frames of Ethernet,
 * raw IP, Linux SLL and BSD loopback interfaces, which the decoder names apart from libpcap. The
 * loopback frames are a macOS capture's IPv6 (address family 30), which libpcap matches in a
 * savefile but not in what it compiles for a live capture. */
static void test_pcapng_filter(void **state)
{
    (void)state;
    const struct frames *ssh = capture_file("tcpdump-ssh.pcap");
    const struct frames *raw = capture_file("tcpdump-LINKTYPE_RAW_ipv4.pcap");
    const struct frames *sll = capture_file("tcpdump-tcp-handshake-nano.pcap");
    const struct frames *dns = capture_file("ndpi-dns_fragmented.pcap");
    const struct frames *quic = capture_file("tcpdump-quic_handshake.pcap");
    struct ng_file w;
    ng_init(&w);
    ng_section(&w, false);
    ng_interface(&w, 1, 0, -1, 0);
    ng_interface(&w, 101, 0, 9, 0);
    ng_interface(&w, 113, 0, 9, 0);
    ng_interface(&w, 0, 0, 9, 0);
    ng_packet(&w, false, 3, nth(quic, 3), 0, 0, false);
    ng_packet(&w, false, 0, nth(ssh, 1), 1, 1000, false);
    ng_packet(&w, false, 1, nth(raw, 1), 2, 2, false);
    ng_packet(&w, false, 2, nth(sll, 1), 3, 3, false);
    ng_packet(&w, false, 0, nth(dns, 1), 4, 4000, false);
    ng_packet(&w, false, 0, nth(dns, 2), 5, 5000, false); /* a first fragment: it has the ports */
    ng_packet(&w, false, 2, nth(sll, 2), 6, 6, false);
    ng_packet(&w, false, 3, nth(quic, 1), 7, 7, false);
    ng_section(&w, true);
    ng_interface(&w, 1, 0, -1, 0);
    ng_interface(&w, 1, 0, 3, 0);
    ng_packet(&w, true, 1, nth(ssh, 2), 8, 8000000, false);
    ng_packet(&w, false, 0, nth(dns, 4), 9, 9000, false);
    char path[512], err[512];
    ng_write(&w, "filter.pcapng", path, sizeof path);
    size_t n, tcp = 0, udp = 0, dns53 = 0;
    for (size_t i = 0; i < w.n_want; i++) {
        tcp += w.want[i].tcp;
        udp += w.want[i].udp;
        dns53 += w.want[i].dns;
    }
    assert_int_equal(tcp, 4);   /* SSH twice, the SLL handshake twice */
    assert_int_equal(udp, 6);   /* the DNS frames and QUIC twice */
    assert_int_equal(dns53, 4); /* raw IP, Ethernet IPv4 twice (a query, an answer's first fragment),
                                 * Ethernet IPv6 */
    assert_int_equal(ng_check_frames(path, &w, 64, 1, "tcp", &n), CAP_BURST_END);
    assert_int_equal(n, tcp);
    assert_int_equal(ng_check_frames(path, &w, 2, 2, "udp port 53", &n), CAP_BURST_END);
    assert_int_equal(n, dns53);
    assert_int_equal(ng_check_frames(path, &w, 64, 3, "udp", &n), CAP_BURST_END);
    assert_int_equal(n, udp);
    assert_int_equal(ng_check_frames(path, &w, 64, 0, "", &n), CAP_BURST_END); /* none */
    assert_int_equal(n, w.n_want);

    /* the leading interfaces include raw IP, which has no Ethernet addresses */
    struct cap_source *src = cap_open_file(path, err, sizeof err);
    assert_non_null(src);
    assert_false(cap_source_set_filter(src, "ether host 00:01:02:03:04:05", err, sizeof err));
    print_message("  %s\n", err);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "does not apply to its link type 12"));
    cap_close(src);
    free(w.buf);

    /* libpcap filters nothing but link[...] on NFLOG; ng_build's file describes an NFLOG
     * interface after two frames: the one of them that is TCP, then the error */
    ng_build(&w);
    ng_write(&w, "nflog-filter.pcapng", path, sizeof path);
    src = cap_open_file(path, err, sizeof err);
    assert_non_null(src);
    assert_true(cap_source_set_filter(src, "tcp", err, sizeof err));
    int last;
    uint64_t bytes;
    assert_int_equal(drain(src, 64, &last, &bytes), 1);
    assert_int_equal(bytes, nth(ssh, 1)->caplen);
    assert_int_equal(last, CAP_BURST_ERROR);
    print_message("  %s\n", cap_source_error(src));
    assert_non_null(strstr(cap_source_error(src), "does not apply to link type 239 of interface 2"));
    assert_null(strstr(cap_source_error(src), "corrupted"));
    cap_close(src);
    free(w.buf);
}

/* ---- live capture on the loopback interface (skipped where capturing is not allowed) ---- */

#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void test_live_errors(void **state)
{
    (void)state;
    char err[512];
    struct cap_live_opts o = {.iface = "netlm-nosuch0"};
    assert_null(cap_open_live(&o, err, sizeof err));
    print_message("  %s\n", err);
    assert_non_null(strstr(err, "netlm-nosuch0"));
    struct cap_live_opts none = {0};
    assert_null(cap_open_live(&none, err, sizeof err));
    assert_non_null(strstr(err, "no interface"));
}

static void test_live_loopback(void **state)
{
    (void)state;
    char err[512];
    uint16_t port = (uint16_t)(40000 + getpid() % 20000);
    char filter[64];
    snprintf(filter, sizeof filter, "udp and dst port %u", port);
    struct cap_live_opts o = {.iface = "lo", .bpf = filter, .timeout_ms = 20, .snaplen = 2048};
    struct cap_source *src = cap_open_live(&o, err, sizeof err);
    if (!src) {
        print_message("  live capture not possible here: %s\n", err);
        assert_non_null(strstr(err, "lo"));
        skip();
    }
    /* a bad filter names the interface and the filter */
    struct cap_live_opts bad = {.iface = "lo", .bpf = "udp and port"};
    assert_null(cap_open_live(&bad, err, sizeof err));
    assert_non_null(strstr(err, "udp and port"));

    struct cap_frame b[64];
    double t0 = now_s();
    int k = cap_next_burst(src, b, 64); /* nothing sent yet: empty, and quick */
    assert_true(k == 0);
    assert_true(now_s() - t0 < 2.0);

    int s = socket(AF_INET, SOCK_DGRAM, 0);
    assert_true(s >= 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    const char msg[] = "netlm live capture test";
    for (int i = 0; i < 3; i++)
        assert_int_equal(sendto(s, msg, sizeof msg, 0, (struct sockaddr *)&to, sizeof to),
                         (ssize_t)sizeof msg);
    close(s);

    int got = 0;
    t0 = now_s();
    while (got < 3 && now_s() - t0 < 5.0) {
        k = cap_next_burst(src, b, 64);
        assert_true(k >= 0);
        for (int i = 0; i < k; i++, got++) {
            struct cap_packet p;
            assert_int_equal(cap_decode(NULL, b[i].linktype, b[i].data, b[i].caplen,
                                        b[i].wirelen, b[i].ts_ns, &p),
                             CAP_DECODE_OK);
            assert_addr(p.src_addr, "127.0.0.1", "src");
            assert_addr(p.dst_addr, "127.0.0.1", "dst");
            assert_int_equal(p.dst_port, port);
            assert_int_equal(p.payload_len, sizeof msg);
            assert_true(p.ts_ns > 1600000000LL * 1000000000);
        }
    }
    assert_int_equal(got, 3);
    struct cap_source_stats st;
    cap_source_stats(src, &st);
    assert_int_equal(st.frames, 3);
    assert_string_equal(cap_source_name(src), "lo");
    cap_close(src);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_real_frames),
        cmocka_unit_test(test_decode_whole_captures),
        cmocka_unit_test(test_decode_all_captures_both_modes),
        cmocka_unit_test(test_decode_cut_frames),
        cmocka_unit_test(test_decode_fragment_ids),
        cmocka_unit_test(test_decode_ustc_cut_samples),
        cmocka_unit_test(test_decode_every_prefix),
        cmocka_unit_test(test_decode_random_bytes),
        cmocka_unit_test(test_decode_mutated_frames),
        cmocka_unit_test(test_decode_null_loop_families),
        cmocka_unit_test(test_decode_sll2_and_raw_variants),
        cmocka_unit_test(test_reason_names_and_stats),
        cmocka_unit_test(test_file_open_errors),
        cmocka_unit_test(test_file_bursts_and_stats),
        cmocka_unit_test(test_file_cut_mid_record),
        cmocka_unit_test(test_file_arena_full),
        cmocka_unit_test(test_pcapng_sections),
        cmocka_unit_test(test_pcapng_as_libpcap),
        cmocka_unit_test(test_pcapng_pipe),
        cmocka_unit_test(test_pcapng_damage),
        cmocka_unit_test(test_pcapng_filter),
        cmocka_unit_test(test_live_errors),
        cmocka_unit_test(test_live_loopback),
    };
    if (make_tmpdir(NULL) != 0) {
        fprintf(stderr, "test_capture: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    int failed = cmocka_run_group_tests(tests, NULL, free_cache);
    remove_tmpdir(NULL);
    return failed;
}
