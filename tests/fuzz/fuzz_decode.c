/* fuzz_decode.c — libFuzzer target for cap_decode(). Every input is decoded as each link type the
 * decoder knows (and one it does not), in the default and the innermost mode; and, read as the
 * seeds of tests/fuzz/seed_frames.py are written (a 2-byte little-endian link type, then the
 * frame), once more as that link type. Besides crashes and out-of-bounds reads, it traps when a
 * decoded packet breaks the promises of capture.h: offsets inside the frame, absent layers
 * consistent, the payload within caplen.
 *
 * Built by CMake with CC=clang -DNETLM_FUZZ=ON (add -DNETLM_SANITIZE=address,undefined so that
 * reads past caplen are caught), run by tests/fuzz/run; or by hand:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I. \
 *       tests/fuzz/fuzz_decode.c capture/decode.c -o fuzz_decode && ./fuzz_decode corpus/ */
#include <stddef.h>
#include <stdint.h>

#include "capture/capture.h"

static const uint16_t links[] = {
    CAP_LINK_NULL,      CAP_LINK_EN10MB, CAP_LINK_RAW_OLD,  CAP_LINK_RAW_OLD2, CAP_LINK_RAW,
    CAP_LINK_LOOP,      CAP_LINK_LINUX_SLL, CAP_LINK_IPV4,  CAP_LINK_IPV6,     CAP_LINK_LINUX_SLL2,
    CAP_LINK_PPP,       CAP_LINK_PPP_HDLC, CAP_LINK_PPI,    CAP_LINK_NFLOG,    CAP_LINK_IPOIB,
    147, /* a user DLT: unsupported */
};

#define CHECK(c)                                                                                  \
    do {                                                                                          \
        if (!(c))                                                                                 \
            __builtin_trap();                                                                     \
    } while (0)

static void check(const struct cap_packet *p, const uint8_t *data, uint32_t caplen,
                  enum cap_decode_reason r)
{
    const struct cap_layers *l = &p->layers;
    CHECK(p->reason == r && r < CAP_DECODE_REASON_COUNT);
    CHECK(p->data == data && p->caplen == caplen);
    CHECK(l->eth_off == CAP_ABSENT || (uint64_t)l->eth_off + 14 <= caplen);
    CHECK(l->l3_off == CAP_ABSENT || l->l3_off < caplen);
    CHECK((l->l3_off == CAP_ABSENT) == (l->ip_version == 0));
    CHECK(l->l4_off == CAP_ABSENT || (l->l3_off != CAP_ABSENT && l->l4_off > l->l3_off &&
                                      l->l4_off <= caplen));
    CHECK(l->l4_off != CAP_ABSENT || (p->src_port == 0 && p->dst_port == 0));
    CHECK(l->payload_off != CAP_ABSENT || p->payload_len == 0);
    CHECK(l->payload_off == CAP_ABSENT || (uint64_t)l->payload_off + p->payload_len <= caplen);
    CHECK((p->frag == CAP_FRAG_LATER) == (r == CAP_DECODE_FRAGMENT));
    CHECK(p->frag != CAP_FRAG_NONE || p->frag_id == 0);
    CHECK(r != CAP_DECODE_OK || (l->l4_off != CAP_ABSENT && l->payload_off >= l->l4_off));
    CHECK(p->tunnel_depth == 0 || l->l3_off != CAP_ABSENT);
}

static void decode_both_modes(uint16_t linktype, const uint8_t *data, uint32_t len)
{
    for (int inner = 0; inner < 2; inner++) {
        struct cap_decode_opts opts = {.innermost = inner};
        struct cap_packet p;
        enum cap_decode_reason r = cap_decode(&opts, linktype, data, len, len, 0, &p);
        check(&p, data, len, r);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > UINT32_MAX)
        return 0;
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
        decode_both_modes(links[i], data, (uint32_t)size);
    if (size >= 2)
        decode_both_modes((uint16_t)(data[0] | data[1] << 8), data + 2, (uint32_t)size - 2);
    return 0;
}
