/* pcapng.c — netlm's pcapng reader (pcapng.h says why libpcap's is not enough).
 *
 * The format (draft-ietf-opsawg-pcapng): every block is type, total length, body, total length
 * again. A Section Header Block starts a section with its own byte order and its own list of
 * interfaces; Interface Description Blocks give each interface its link type, snap length and
 * time resolution; packets come in Enhanced, Simple and (obsolete) Packet Blocks. Every other
 * block type is skipped by its length, so new block types cost nothing.
 *
 * A block whose two lengths disagree, that is too short for its own fields, whose options run
 * past its end, or whose packet names an interface its section has not described stops the
 * reading as damage: after one wrong length nothing that follows is where it claims to be, and
 * guessing would turn garbage into frames. */
#include "capture/pcapng.h"

#include <errno.h>
#include <pcap/pcap.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NG_SHB 0x0A0D0D0Au
#define NG_IDB 1u
#define NG_PB 2u
#define NG_SPB 3u
#define NG_EPB 6u
#define NG_BYTE_ORDER_MAGIC 0x1A2B3C4Du
#define NG_OPT_TSRESOL 9
#define NG_OPT_TSOFFSET 14

/* A read fills the rest of the buffer, so one system call brings hundreds of frames. */
#define NG_BUFFER_BYTES (1u << 20)
/* The largest block held whole: 64 times libpcap's largest snap length, room for any frame a
 * capture tool writes; a larger packet block is taken for damage (and would otherwise let a
 * corrupt length claim gigabytes), a larger block of another type is skipped piece by piece. */
#define NG_MAX_BLOCK (16u << 20)
/* Filters are compiled as if for this snap length: only their accept value depends on it, and it
 * must not be 0 (an interface's "no limit"), which would make them reject everything. */
#define NG_FILTER_SNAPLEN 262144u
#define NG_LINKTYPE_NFLOG 239

struct ng_iface {
    uint16_t linktype; /* as libpcap names it */
    uint16_t file_linktype; /* as the file names it (LINKTYPE_) */
    bool swapped;      /* its section's byte order is not ours */
    uint32_t snaplen;  /* 0: no limit */
    uint64_t units;    /* time stamp units per second (if_tsresol) */
    int64_t offset_s;  /* if_tsoffset: seconds added to every time stamp */
    int prog;          /* the filter compiled for its link type: an index in progs, -1 without */
};

struct ng_prog {
    uint16_t file_linktype;
    bool swapped;
    struct bpf_program prog;
};

struct cap_pcapng {
    int fd;
    uint8_t *buf;
    size_t size; /* allocated */
    size_t pos;  /* the first byte not taken yet */
    size_t end;  /* bytes held */
    uint64_t base; /* stream offset of buf[0] */
    bool eof;
    /* Where reading goes on when buf runs out in the middle of a burst, whose frames point into
     * buf: once per burst, so that bursts stay full (and sessions come out in the order that
     * libpcap's bursts give) unless a burst's frames span more than a buffer. */
    uint8_t *spare;
    size_t spare_size;
    bool switched; /* buf was switched since the last may_move */

    bool swapped; /* the section's byte order is not ours */
    struct ng_iface *ifaces;
    uint32_t n_ifaces, cap_ifaces;
    bool have_linktype;
    uint16_t linktype; /* the file's first interface's */
    int64_t last_ts;   /* a Simple Packet Block has no time: it gets its predecessor's */
    uint64_t frames_read;

    char *bpf;
    struct ng_prog *progs;
    size_t n_progs;

    bool failed;
    bool damaged;
    char err[PCAP_ERRBUF_SIZE + 256];
};

/* One block, wholly in the buffer at r->pos. */
struct ng_block {
    uint32_t type;
    uint32_t len;
    bool swapped; /* its byte order (a Section Header Block says its own) */
    uint8_t *body; /* after type and length */
    uint32_t body_len; /* up to the trailing length */
};

enum { NG_OK = 1, NG_SHORT = 0, NG_FAIL = -1, NG_HOLD = -2 };

static inline uint16_t ng_u16(bool swapped, const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return swapped ? __builtin_bswap16(v) : v;
}

static inline uint32_t ng_u32(bool swapped, const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return swapped ? __builtin_bswap32(v) : v;
}

static inline uint64_t ng_u64(bool swapped, const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return swapped ? __builtin_bswap64(v) : v;
}

/* Stores a host value of len bytes, reversed when swapped. */
static void ng_put(uint8_t *p, const void *v, size_t len, bool swapped)
{
    for (size_t i = 0; i < len; i++)
        p[i] = ((const uint8_t *)v)[swapped ? len - 1 - i : i];
}

__attribute__((format(printf, 3, 4))) static int ng_fail(struct cap_pcapng *r, bool damaged, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof r->err, fmt, ap);
    va_end(ap);
    r->damaged = damaged;
    return NG_FAIL;
}

/* Makes `need` bytes from r->pos available. Moving what is held to the front of the buffer (or
 * into a bigger one) invalidates every frame handed out, hence may_move; without it the rest is
 * moved to the spare buffer instead, once. */
static int ng_fill(struct cap_pcapng *r, size_t need, bool may_move)
{
    if (r->end - r->pos >= need)
        return NG_OK;
    if (r->eof)
        return NG_SHORT;
    const size_t held = r->end - r->pos;
    if (may_move) {
        memmove(r->buf, r->buf + r->pos, held);
        if (need > r->size) {
            size_t size = r->size * 2 > need ? r->size * 2 : need;
            uint8_t *bigger = realloc(r->buf, size);
            if (!bigger)
                return ng_fail(r, false, "out of memory for a block of %zu bytes", need);
            r->buf = bigger;
            r->size = size;
        }
    } else {
        if (r->switched)
            return NG_HOLD;
        const size_t size = need > r->size ? need : r->size;
        if (r->spare_size < size) {
            free(r->spare);
            r->spare_size = 0;
            if (!(r->spare = malloc(size)))
                return NG_HOLD; /* the next burst moves buf instead */
            r->spare_size = size;
        }
        memcpy(r->spare, r->buf + r->pos, held);
        uint8_t *const old = r->buf;
        const size_t old_size = r->size;
        r->buf = r->spare;
        r->size = r->spare_size;
        r->spare = old;
        r->spare_size = old_size;
        r->switched = true;
    }
    r->base += r->pos;
    r->end = held;
    r->pos = 0;
    while (r->end < need) {
        ssize_t got = read(r->fd, r->buf + r->end, r->size - r->end);
        if (got > 0) {
            r->end += (size_t)got;
        } else if (got == 0) {
            r->eof = true;
            return NG_SHORT;
        } else if (errno != EINTR) {
            return ng_fail(r, true, "read failed: %s", strerror(errno));
        }
    }
    return NG_OK;
}

/* libpcap hands out link types as DLT_ values; these four are the LINKTYPE_ numbers that differ
 * from their DLT_ on Linux. Keeping libpcap's numbers makes a frame the same whichever reader
 * read it. */
static uint16_t ng_dlt(uint16_t linktype)
{
    switch (linktype) {
    case 100:
        return 11; /* ATM_RFC1483 */
    case 101:
        return DLT_RAW;
    case 102:
        return 15; /* SLIP_BSDOS */
    case 103:
        return 16; /* PPP_BSDOS */
    default:
        return linktype;
    }
}

/* The block at r->pos, whole, its lengths checked; NG_SHORT only at a clean end (no byte of a
 * next block). A block too long to hold that packets cannot be in is skipped here when
 * skip_long, and the next one looked at. */
static int ng_block(struct cap_pcapng *r, bool may_move, bool skip_long, struct ng_block *b)
{
    for (;;) {
        int rc = ng_fill(r, 8, may_move);
        if (rc == NG_SHORT && r->end == r->pos)
            return NG_SHORT;
        if (rc == NG_SHORT)
            return ng_fail(r, true, "the file ends inside a block header (%zu of its 8 bytes)", r->end - r->pos);
        if (rc != NG_OK)
            return rc;
        const uint8_t *h = r->buf + r->pos;
        b->type = ng_u32(r->swapped, h);
        b->swapped = r->swapped;
        if (b->type == NG_SHB) { /* the same bytes in either order; its byte order is its own */
            rc = ng_fill(r, 12, may_move);
            if (rc == NG_SHORT)
                return ng_fail(r, true, "the file ends inside a Section Header Block");
            if (rc != NG_OK)
                return rc;
            h = r->buf + r->pos;
            const uint32_t magic = ng_u32(false, h + 8);
            if (magic == NG_BYTE_ORDER_MAGIC)
                b->swapped = false;
            else if (magic == __builtin_bswap32(NG_BYTE_ORDER_MAGIC))
                b->swapped = true;
            else
                return ng_fail(r, true, "a Section Header Block without the byte-order magic");
        }
        b->len = ng_u32(b->swapped, h + 4);
        if (b->len < 12 || b->len % 4 != 0)
            return ng_fail(r, true, "a block of type %u claims a length of %u bytes", b->type, b->len);
        if (b->len > NG_MAX_BLOCK) {
            if (b->type == NG_SHB || b->type == NG_IDB || b->type == NG_EPB || b->type == NG_SPB ||
                b->type == NG_PB)
                return ng_fail(r, true, "a block of type %u claims a length of %u bytes, more than %u", b->type,
                               b->len, NG_MAX_BLOCK);
            if (!skip_long || !may_move)
                return NG_HOLD;
            /* Skipped as it streams by; only its trailing length is checked. */
            uint64_t left = b->len - 4;
            while (left > 0) {
                if (r->end == r->pos) {
                    rc = ng_fill(r, 1, true);
                    if (rc == NG_SHORT)
                        return ng_fail(r, true, "the file ends inside a block of %u bytes", b->len);
                    if (rc != NG_OK)
                        return rc;
                }
                size_t take = r->end - r->pos < left ? r->end - r->pos : (size_t)left;
                r->pos += take;
                left -= take;
            }
            rc = ng_fill(r, 4, true);
            if (rc == NG_SHORT)
                return ng_fail(r, true, "the file ends inside a block of %u bytes", b->len);
            if (rc != NG_OK)
                return rc;
            if (ng_u32(b->swapped, r->buf + r->pos) != b->len)
                return ng_fail(r, true, "a block of type %u whose two lengths differ (%u, %u)", b->type, b->len,
                               ng_u32(b->swapped, r->buf + r->pos));
            r->pos += 4;
            continue;
        }
        rc = ng_fill(r, b->len, may_move);
        if (rc == NG_SHORT)
            return ng_fail(r, true, "the file ends inside a block of type %u (%zu of its %u bytes)", b->type,
                           r->end - r->pos, b->len);
        if (rc != NG_OK)
            return rc;
        uint8_t *p = r->buf + r->pos;
        const uint32_t trailer = ng_u32(b->swapped, p + b->len - 4);
        if (trailer != b->len)
            return ng_fail(r, true, "a block of type %u whose two lengths differ (%u, %u)", b->type, b->len, trailer);
        b->body = p + 8;
        b->body_len = b->len - 12;
        return NG_OK;
    }
}

static int ng_section(struct cap_pcapng *r, const struct ng_block *b)
{
    if (b->body_len < 16)
        return ng_fail(r, true, "a Section Header Block of %u bytes, too short for its fields", b->len);
    const uint16_t major = ng_u16(b->swapped, b->body + 4), minor = ng_u16(b->swapped, b->body + 6);
    if (major != 1)
        return ng_fail(r, true, "a section of pcapng version %u.%u (netlm reads 1.x)", major, minor);
    r->swapped = b->swapped;
    r->n_ifaces = 0; /* each section describes its interfaces anew */
    return NG_OK;
}

/* The filter's program for an interface's link type and byte order, compiled the first time one
 * is asked for, by a handle that libpcap opened as a savefile (a pcap file header of that link
 * type and byte order): libpcap compiles differently for one than for pcap_open_dead's, which it
 * takes for a live capture. On BSD loopback (DLT_NULL) a savefile's address family is matched in
 * the byte order of the host that captured, and as any of the BSDs' AF_INET6 values; a "live"
 * program looks for Linux's only, and missed a macOS capture's IPv6. */
static int ng_prog_for(struct cap_pcapng *r, const struct ng_iface *in, char *why, size_t whylen)
{
    for (size_t i = 0; i < r->n_progs; i++)
        if (r->progs[i].file_linktype == in->file_linktype && r->progs[i].swapped == in->swapped)
            return (int)i;
    struct ng_prog *more = realloc(r->progs, (r->n_progs + 1) * sizeof *more);
    if (!more) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    r->progs = more;
    /* magic, version 2.4, time zone, accuracy, snap length, link type; in the section's order */
    uint8_t header[24] = {0};
    const uint32_t magic = 0xa1b2c3d4, snaplen = NG_FILTER_SNAPLEN, linktype = in->file_linktype;
    const uint16_t major = 2, minor = 4;
    ng_put(header, &magic, 4, in->swapped);
    ng_put(header + 4, &major, 2, in->swapped);
    ng_put(header + 6, &minor, 2, in->swapped);
    ng_put(header + 16, &snaplen, 4, in->swapped);
    ng_put(header + 20, &linktype, 4, in->swapped);
    FILE *fp = fmemopen(header, sizeof header, "rb");
    char errbuf[PCAP_ERRBUF_SIZE] = "";
    pcap_t *p = fp ? pcap_fopen_offline(fp, errbuf) : NULL;
    if (!p) {
        snprintf(why, whylen, "%s", fp ? errbuf : "out of memory");
        if (fp)
            fclose(fp);
        return -1;
    }
    struct ng_prog *prog = &r->progs[r->n_progs];
    prog->file_linktype = in->file_linktype;
    prog->swapped = in->swapped;
    const int rc = pcap_compile(p, &prog->prog, r->bpf, 1, PCAP_NETMASK_UNKNOWN);
    if (rc != 0)
        snprintf(why, whylen, "%s", pcap_geterr(p));
    pcap_close(p); /* closes fp */
    return rc == 0 ? (int)r->n_progs++ : -1;
}

static int ng_interface(struct cap_pcapng *r, const struct ng_block *b)
{
    if (b->body_len < 8)
        return ng_fail(r, true, "an Interface Description Block of %u bytes, too short for its fields", b->len);
    struct ng_iface in = {
        .file_linktype = ng_u16(r->swapped, b->body),
        .linktype = ng_dlt(ng_u16(r->swapped, b->body)),
        .swapped = r->swapped,
        .snaplen = ng_u32(r->swapped, b->body + 4),
        .units = 1000000, /* µs unless if_tsresol says otherwise */
        .prog = -1,
    };
    for (size_t at = 8; b->body_len - at >= 4;) { /* at ≤ body_len throughout */
        const uint8_t *o = b->body + at;
        const uint16_t code = ng_u16(r->swapped, o), olen = ng_u16(r->swapped, o + 2);
        o += 4;
        at += 4;
        if (code == 0)
            break;
        if (olen > b->body_len - at)
            return ng_fail(r, true, "an Interface Description Block option of %u bytes runs past the block", olen);
        if (code == NG_OPT_TSRESOL && olen >= 1) {
            const uint8_t v = o[0];
            if (v & 0x80) {
                if ((v & 0x7f) > 63)
                    return ng_fail(r, true, "an interface's time resolution 2^-%u is finer than netlm reads", v & 0x7f);
                in.units = (uint64_t)1 << (v & 0x7f);
            } else {
                if (v > 19)
                    return ng_fail(r, true, "an interface's time resolution 10^-%u is finer than netlm reads", v);
                in.units = 1;
                for (unsigned i = 0; i < v; i++)
                    in.units *= 10;
            }
        } else if (code == NG_OPT_TSOFFSET && olen >= 8) {
            in.offset_s = (int64_t)ng_u64(r->swapped, o);
        }
        at += ((size_t)olen + 3) & ~(size_t)3;
        if (at > b->body_len)
            break; /* the last option's padding missing: nothing else to read */
    }
    if (r->bpf) {
        char why[PCAP_ERRBUF_SIZE];
        in.prog = ng_prog_for(r, &in, why, sizeof why);
        if (in.prog < 0)
            return ng_fail(r, false, "the capture filter does not apply to link type %u of interface %u (libpcap: %s)",
                           in.linktype, r->n_ifaces, why);
    }
    if (r->n_ifaces == r->cap_ifaces) {
        uint32_t cap = r->cap_ifaces ? r->cap_ifaces * 2 : 8;
        struct ng_iface *more = realloc(r->ifaces, cap * sizeof *more);
        if (!more)
            return ng_fail(r, false, "out of memory for interface %u", r->n_ifaces);
        r->ifaces = more;
        r->cap_ifaces = cap;
    }
    r->ifaces[r->n_ifaces++] = in;
    if (!r->have_linktype) {
        r->have_linktype = true;
        r->linktype = in.linktype;
    }
    return NG_OK;
}

static inline int64_t ng_time(const struct ng_iface *in, uint64_t t)
{
    const uint64_t sec = t / in->units, frac = t % in->units;
    uint64_t ns;
    if (in->units == 1000000)
        ns = frac * 1000;
    else if (in->units == 1000000000)
        ns = frac;
    else /* frac < units < 2^64: the product fits in 128 bits */
        ns = (uint64_t)((unsigned __int128)frac * 1000000000u / in->units);
    /* unsigned, so that a nonsense time wraps instead of overflowing */
    return (int64_t)((sec + (uint64_t)in->offset_s) * 1000000000u + ns);
}

/* NFLOG's TLV types and lengths are in the byte order of the host that captured (its fixed header
 * is big-endian); the decoder reads them in ours, as libpcap converts them. */
static void ng_swap_nflog(uint8_t *d, uint32_t caplen, uint32_t wirelen)
{
    if (caplen < 4 || wirelen < 4 || d[1] != 0) /* version 0 is the only one there is */
        return;
    uint32_t off = 4, left = caplen - 4, wire_left = wirelen - 4;
    while (left >= 4) {
        uint16_t len, type;
        memcpy(&len, d + off, 2);
        memcpy(&type, d + off + 2, 2);
        len = __builtin_bswap16(len);
        type = __builtin_bswap16(type);
        memcpy(d + off, &len, 2);
        memcpy(d + off + 2, &type, 2);
        const uint32_t size = ((uint32_t)len + 3) & ~3u;
        if (size < 4 || size > left || size > wire_left)
            return;
        off += size;
        left -= size;
        wire_left -= size;
    }
}

/* A packet block: its frame into *f. NG_OK with a frame, NG_SHORT when the filter rejects it. */
static int ng_packet(struct cap_pcapng *r, const struct ng_block *b, struct cap_pcapng_frame *f)
{
    uint32_t iface, caplen, wirelen;
    uint64_t t;
    uint8_t *data;
    uint32_t room;
    if (b->type == NG_SPB) {
        if (b->body_len < 4)
            return ng_fail(r, true, "a Simple Packet Block of %u bytes, too short for its fields", b->len);
        iface = 0;
        wirelen = ng_u32(r->swapped, b->body);
        data = b->body + 4;
        room = b->body_len - 4;
        /* The frame's captured length is not stored: the original length cut by the block's room
         * (its padding) and by the interface's snap length. */
        caplen = wirelen < room ? wirelen : room;
        t = 0;
    } else {
        if (b->body_len < 20)
            return ng_fail(r, true, "a packet block of type %u and %u bytes, too short for its fields", b->type,
                           b->len);
        iface = b->type == NG_EPB ? ng_u32(r->swapped, b->body) : ng_u16(r->swapped, b->body);
        t = (uint64_t)ng_u32(r->swapped, b->body + 4) << 32 | ng_u32(r->swapped, b->body + 8);
        caplen = ng_u32(r->swapped, b->body + 12);
        wirelen = ng_u32(r->swapped, b->body + 16);
        data = b->body + 20;
        room = b->body_len - 20;
        if (caplen > room)
            return ng_fail(r, true, "a packet block whose captured length %u runs past its end (%u bytes left)",
                           caplen, room);
    }
    if (iface >= r->n_ifaces)
        return ng_fail(r, true, "a packet on interface %u, which its section has not described (it has %u)",
                       iface, r->n_ifaces);
    const struct ng_iface *in = &r->ifaces[iface];
    if (b->type == NG_SPB) {
        if (in->snaplen && caplen > in->snaplen)
            caplen = in->snaplen;
        f->ts_ns = r->last_ts; /* packet time moves on only with frames that have one */
    } else {
        f->ts_ns = r->last_ts = ng_time(in, t);
    }
    r->frames_read++;
    if (r->swapped && in->linktype == NG_LINKTYPE_NFLOG)
        ng_swap_nflog(data, caplen, wirelen);
    if (in->prog >= 0) {
        struct pcap_pkthdr h = {.caplen = caplen, .len = wirelen};
        if (!pcap_offline_filter(&r->progs[in->prog].prog, &h, data))
            return NG_SHORT;
    }
    f->data = data;
    f->caplen = caplen;
    f->wirelen = wirelen;
    f->linktype = in->linktype;
    return NG_OK;
}

int cap_pcapng_next(struct cap_pcapng *r, bool may_move, struct cap_pcapng_frame *f)
{
    if (r->failed)
        return CAP_PCAPNG_ERROR;
    if (may_move)
        r->switched = false; /* no frame handed out is in use any more, in either buffer */
    for (;;) {
        struct ng_block b;
        int rc = ng_block(r, may_move, true, &b);
        if (rc == NG_HOLD)
            return CAP_PCAPNG_HOLD;
        if (rc == NG_SHORT)
            return CAP_PCAPNG_END;
        if (rc == NG_OK) {
            switch (b.type) {
            case NG_EPB:
            case NG_SPB:
            case NG_PB:
                rc = ng_packet(r, &b, f);
                break;
            case NG_IDB:
                rc = ng_interface(r, &b);
                break;
            case NG_SHB:
                rc = ng_section(r, &b);
                break;
            default:
                break; /* name resolution, statistics, secrets, custom blocks...: not frames */
            }
        }
        if (rc == NG_FAIL) {
            r->failed = true;
            return CAP_PCAPNG_ERROR;
        }
        r->pos += b.len;
        if (rc == NG_OK && (b.type == NG_EPB || b.type == NG_SPB || b.type == NG_PB))
            return CAP_PCAPNG_FRAME;
        /* rejected by the filter, or not a packet: may_move stays as it was, since frames
         * handed out earlier in the burst still point into the buffer */
    }
}

struct cap_pcapng *cap_pcapng_open(int fd, const uint8_t *head, size_t head_len, bool *damaged, char *err,
                                   size_t errlen)
{
    *damaged = false;
    struct cap_pcapng *r = calloc(1, sizeof *r);
    if (r)
        r->buf = malloc(NG_BUFFER_BYTES);
    if (!r || !r->buf || head_len > NG_BUFFER_BYTES) {
        if (r)
            free(r->buf);
        free(r);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->fd = fd;
    r->size = NG_BUFFER_BYTES;
    memcpy(r->buf, head, head_len);
    r->end = head_len;
    struct ng_block b;
    int rc = ng_block(r, true, false, &b);
    if ((rc == NG_OK || rc == NG_HOLD) && b.type != NG_SHB) /* HOLD: a long block, of another type */
        rc = ng_fail(r, true, "the first block is of type %u, not a Section Header Block", b.type);
    if (rc == NG_OK)
        rc = ng_section(r, &b);
    if (rc != NG_OK) {
        *damaged = rc == NG_SHORT || r->damaged;
        snprintf(err, errlen, "%s", rc == NG_SHORT ? "no Section Header Block" : r->err);
        free(r->buf);
        free(r);
        return NULL;
    }
    r->pos += b.len;
    /* The blocks up to the first packet, for the interfaces a filter is compiled for. Whatever
     * goes wrong is met again, and reported, by the first cap_pcapng_next. */
    for (;;) {
        rc = ng_block(r, true, false, &b);
        if (rc != NG_OK || b.type == NG_EPB || b.type == NG_SPB || b.type == NG_PB)
            break;
        if (b.type == NG_SHB)
            rc = ng_section(r, &b);
        else if (b.type == NG_IDB)
            rc = ng_interface(r, &b);
        if (rc != NG_OK)
            break;
        r->pos += b.len;
    }
    r->err[0] = '\0';
    r->damaged = false;
    return r;
}

bool cap_pcapng_set_filter(struct cap_pcapng *r, const char *bpf, uint16_t *bad_linktype, char *why,
                           size_t whylen)
{
    for (size_t i = 0; i < r->n_progs; i++)
        pcap_freecode(&r->progs[i].prog);
    r->n_progs = 0;
    free(r->bpf);
    r->bpf = NULL;
    for (uint32_t i = 0; i < r->n_ifaces; i++)
        r->ifaces[i].prog = -1;
    if (!bpf || !*bpf)
        return true;
    if (!(r->bpf = strdup(bpf))) {
        *bad_linktype = r->linktype;
        snprintf(why, whylen, "out of memory");
        return false;
    }
    for (uint32_t i = 0; i < r->n_ifaces; i++) {
        if ((r->ifaces[i].prog = ng_prog_for(r, &r->ifaces[i], why, whylen)) < 0) {
            *bad_linktype = r->ifaces[i].linktype;
            cap_pcapng_set_filter(r, NULL, bad_linktype, why, 0);
            return false;
        }
    }
    return true;
}

const char *cap_pcapng_error(const struct cap_pcapng *r, bool *damaged)
{
    if (damaged)
        *damaged = r->failed && r->damaged;
    return r->failed ? r->err : "";
}

uint64_t cap_pcapng_frames_read(const struct cap_pcapng *r)
{
    return r->frames_read;
}

uint64_t cap_pcapng_offset(const struct cap_pcapng *r)
{
    return r->base + r->pos;
}

uint16_t cap_pcapng_linktype(const struct cap_pcapng *r)
{
    return r->have_linktype ? r->linktype : DLT_EN10MB;
}

void cap_pcapng_close(struct cap_pcapng *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_progs; i++)
        pcap_freecode(&r->progs[i].prog);
    free(r->progs);
    free(r->bpf);
    free(r->ifaces);
    free(r->buf);
    free(r->spare);
    if (r->fd > STDIN_FILENO)
        close(r->fd);
    free(r);
}
