/* test_tokenizer_util.h — what the tokenizer tests need from real captures, without the capture
 * and flowtable code (written in parallel): frames read with libpcap, a small L2–L4 decoder for
 * cap_layers, and naive bidirectional 5-tuple sessions as ft_session views.
 *
 * The decoder covers the link types and encapsulations of the captures the tests use (Ethernet
 * with VLAN tags, Linux SLL/SLL2, NULL/loopback, raw IPv4/IPv6, IPv6 extension headers); its
 * offsets are checked against tshark's for the frames in test_tokenizer_header.c. */
#ifndef NETLM_TEST_TOKENIZER_UTIL_H
#define NETLM_TEST_TOKENIZER_UTIL_H

#include <pcap/pcap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer.h"

#define TT_PCAPS NETLM_DATA_DIR "/pcaps/"
#define TT_VOCAB NETLM_DATA_DIR "/netgpt/encryptd_vocab.txt"

static inline size_t tt_hex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = 0;
    for (; hex[0] && hex[1] && n < cap; hex += 2) {
        unsigned v;
        if (sscanf(hex, "%2x", &v) != 1)
            break;
        out[n++] = (uint8_t)v;
    }
    return n;
}

/* libpcap hands out DLT_ numbers; cap_layers.linktype holds LINKTYPE_ numbers. */
static inline uint16_t tt_linktype(int dlt)
{
    return dlt == DLT_RAW ? CAP_LINK_RAW : (uint16_t)dlt;
}

/* Reads frame `number` (1-based) of a capture in shared/data/pcaps. */
static inline bool tt_read_frame(const char *file, unsigned number, uint8_t *buf, size_t cap,
                                 uint32_t *caplen, uint16_t *linktype)
{
    char path[512], errbuf[PCAP_ERRBUF_SIZE];
    *caplen = 0;
    *linktype = 0;
    snprintf(path, sizeof(path), "%s%s", TT_PCAPS, file);
    pcap_t *p = pcap_open_offline(path, errbuf);
    if (!p)
        return false;
    struct pcap_pkthdr *h;
    const u_char *data;
    bool found = false;
    for (unsigned i = 1; pcap_next_ex(p, &h, &data) == 1; i++)
        if (i == number) {
            *caplen = h->caplen < cap ? h->caplen : (uint32_t)cap;
            memcpy(buf, data, *caplen);
            *linktype = tt_linktype(pcap_datalink(p));
            found = true;
            break;
        }
    pcap_close(p);
    return found;
}

static inline uint16_t tt_be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static inline void tt_decode(uint16_t linktype, const uint8_t *d, uint32_t len,
                             struct cap_layers *L)
{
    *L = (struct cap_layers){CAP_ABSENT, CAP_ABSENT, CAP_ABSENT, CAP_ABSENT, linktype, 0, 0};
    uint32_t off = 0;
    int version = 0;
    switch (linktype) {
    case CAP_LINK_EN10MB: {
        if (len < 14)
            return;
        L->eth_off = 0;
        uint16_t et = tt_be16(d + 12);
        off = 14;
        while ((et == 0x8100 || et == 0x88a8 || et == 0x9100) && off + 4 <= len) {
            et = tt_be16(d + off + 2);
            off += 4;
        }
        version = et == 0x0800 ? 4 : et == 0x86dd ? 6 : 0;
        break;
    }
    case CAP_LINK_LINUX_SLL:
        off = 16;
        if (len >= 16)
            version = tt_be16(d + 14) == 0x0800 ? 4 : tt_be16(d + 14) == 0x86dd ? 6 : 0;
        break;
    case CAP_LINK_LINUX_SLL2:
        off = 20;
        if (len >= 20)
            version = tt_be16(d) == 0x0800 ? 4 : tt_be16(d) == 0x86dd ? 6 : 0;
        break;
    case CAP_LINK_NULL:
    case CAP_LINK_LOOP:
        off = 4;
        version = len > 4 ? d[4] >> 4 : 0;
        break;
    case CAP_LINK_RAW:
    case CAP_LINK_RAW_OLD:
    case CAP_LINK_RAW_OLD2:
        version = len > 0 ? d[0] >> 4 : 0;
        break;
    case CAP_LINK_IPV4:
        version = 4;
        break;
    case CAP_LINK_IPV6:
        version = 6;
        break;
    default:
        return;
    }
    uint32_t l4;
    uint8_t proto;
    if (version == 4) {
        if (off + 20 > len || d[off] >> 4 != 4)
            return;
        L->l3_off = off;
        L->ip_version = 4;
        proto = d[off + 9];
        L->l4_proto = proto;
        if ((tt_be16(d + off + 6) & 0x1fff) != 0)
            return; /* a later fragment */
        l4 = off + (d[off] & 15u) * 4;
    } else if (version == 6) {
        if (off + 40 > len || d[off] >> 4 != 6)
            return;
        L->l3_off = off;
        L->ip_version = 6;
        proto = d[off + 6];
        l4 = off + 40;
        while ((proto == 0 || proto == 43 || proto == 60 || proto == 44 || proto == 51) &&
               l4 + 8 <= len) {
            uint8_t next = d[l4];
            if (proto == 44) {
                if ((tt_be16(d + l4 + 2) & 0xfff8) != 0) {
                    L->l4_proto = next;
                    return;
                }
                l4 += 8;
            } else if (proto == 51) {
                l4 += (d[l4 + 1] + 2u) * 4;
            } else {
                l4 += (d[l4 + 1] + 1u) * 8;
            }
            proto = next;
        }
        L->l4_proto = proto;
    } else {
        return;
    }
    if (l4 > len)
        return;
    if (proto == 6 && l4 + 20 <= len) {
        L->l4_off = l4;
        L->payload_off = l4 + (d[l4 + 12] >> 4) * 4u;
    } else if (proto == 17 && l4 + 8 <= len) {
        L->l4_off = l4;
        L->payload_off = l4 + 8;
    } else if ((proto == 1 || proto == 58) && l4 + 8 <= len) {
        L->l4_off = l4;
        L->payload_off = l4 + 8;
    }
}

/* ---- sessions ---- */

struct tt_session {
    uint8_t key[40]; /* lower endpoint first */
    struct ft_session view;
    struct ft_stored_packet *stored;
    uint32_t n_stored;
};

struct tt_capture {
    struct tt_session *sessions;
    size_t n, cap;
};

static inline void tt_endpoint(const uint8_t *d, const struct cap_layers *L, bool dst,
                               uint8_t out[18])
{
    memset(out, 0, 18);
    if (L->ip_version == 4)
        memcpy(out, d + L->l3_off + (dst ? 16 : 12), 4);
    else
        memcpy(out, d + L->l3_off + (dst ? 24 : 8), 16);
    if (L->l4_off != CAP_ABSENT && (L->l4_proto == 6 || L->l4_proto == 17))
        memcpy(out + 16, d + L->l4_off + (dst ? 2 : 0), 2);
}

/* The first `packets` packets (`bytes` bytes each) of every IP session of a capture. */
static inline bool tt_load_sessions(const char *file, uint32_t packets, uint32_t bytes,
                                    struct tt_capture *c)
{
    char path[512], errbuf[PCAP_ERRBUF_SIZE];
    memset(c, 0, sizeof(*c));
    snprintf(path, sizeof(path), "%s%s", TT_PCAPS, file);
    pcap_t *p = pcap_open_offline(path, errbuf);
    if (!p)
        return false;
    uint16_t linktype = tt_linktype(pcap_datalink(p));
    struct pcap_pkthdr *h;
    const u_char *data;
    while (pcap_next_ex(p, &h, &data) == 1) {
        struct cap_layers L;
        tt_decode(linktype, data, h->caplen, &L);
        if (L.l3_off == CAP_ABSENT)
            continue;
        uint8_t a[18], b[18], key[40] = {0};
        tt_endpoint(data, &L, false, a);
        tt_endpoint(data, &L, true, b);
        bool swap = memcmp(a, b, 18) > 0;
        memcpy(key, swap ? b : a, 18);
        memcpy(key + 18, swap ? a : b, 18);
        key[36] = L.l4_proto;
        key[37] = L.ip_version;
        struct tt_session *s = NULL;
        for (size_t i = 0; i < c->n; i++)
            if (memcmp(c->sessions[i].key, key, sizeof(key)) == 0)
                s = &c->sessions[i];
        if (!s) {
            if (c->n == c->cap) {
                c->cap = c->cap ? 2 * c->cap : 64;
                c->sessions = realloc(c->sessions, c->cap * sizeof(*c->sessions));
            }
            s = &c->sessions[c->n++];
            memset(s, 0, sizeof(*s));
            memcpy(s->key, key, sizeof(key));
            s->stored = calloc(packets, sizeof(*s->stored));
            s->view.id = c->n;
            s->view.ip_version = L.ip_version;
            s->view.proto = L.l4_proto;
            s->view.linktype = linktype;
        }
        if (s->n_stored < packets) {
            struct ft_stored_packet *sp = &s->stored[s->n_stored++];
            uint32_t n = h->caplen < bytes ? h->caplen : bytes;
            uint8_t *copy = malloc(n ? n : 1);
            memcpy(copy, data, n);
            sp->bytes = copy;
            sp->stored_len = n;
            sp->caplen = h->caplen;
            sp->wirelen = h->len;
            sp->layers = L; /* offsets of the whole frame; they may point past stored_len */
        }
    }
    pcap_close(p);
    for (size_t i = 0; i < c->n; i++) {
        c->sessions[i].view.n_stored = c->sessions[i].n_stored;
        c->sessions[i].view.stored = c->sessions[i].stored;
    }
    return true;
}

static inline void tt_free_sessions(struct tt_capture *c)
{
    for (size_t i = 0; i < c->n; i++) {
        for (uint32_t j = 0; j < c->sessions[i].n_stored; j++)
            free((void *)c->sessions[i].stored[j].bytes);
        free(c->sessions[i].stored);
    }
    free(c->sessions);
    memset(c, 0, sizeof(*c));
}

#endif
