/* pcapng.h — capture's private interface between source.c (the cap_source a caller holds) and
 * pcapng.c, netlm's own pcapng reader. libpcap's reader refuses a file whose interfaces differ in
 * link type or snap length (Wireshark's multi-interface captures, mergecap's merges); this one
 * gives every frame its own interface's link type and time resolution.
 *
 * Blocks are read into a buffer and frames point into it, so nothing is copied per frame. A frame
 * stays valid until a call of cap_pcapng_next with may_move: only that call may move the bytes
 * held or read over them (without it, reading goes on in a second buffer). */
#ifndef NETLM_CAPTURE_PCAPNG_H
#define NETLM_CAPTURE_PCAPNG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cap_pcapng;

struct cap_pcapng_frame {
    const uint8_t *data;
    uint32_t caplen;
    uint32_t wirelen;
    int64_t ts_ns;
    uint16_t linktype; /* as libpcap names it (pcap_datalink: DLT_RAW for LINKTYPE_RAW, ...) */
};

/* Results of cap_pcapng_next(). */
enum {
    CAP_PCAPNG_FRAME = 1,  /* *frame is filled */
    CAP_PCAPNG_END = 0,    /* the file ended cleanly, at a block boundary */
    CAP_PCAPNG_ERROR = -1, /* cap_pcapng_error() says what; every later call says the same */
    CAP_PCAPNG_HOLD = -2,  /* may_move false, and the next block is in neither buffer */
};

/* Starts reading fd, whose first head_len bytes (the caller's look at the magic) were already
 * taken from it. It is read with read(2), as much as is there, so that a pipe's frames come out
 * as they arrive. Reads the Section Header Block and every block before the first packet (so
 * that cap_pcapng_set_filter knows the leading interfaces); a problem after the Section Header
 * Block is left for cap_pcapng_next to report, after the frames before it. NULL when the file
 * does not start with a valid Section Header Block (*damaged true) or memory is short, with the
 * reason in err (no file name); fd is then still the caller's. On success the reader owns fd and closes it
 * unless it is standard input. */
struct cap_pcapng *cap_pcapng_open(int fd, const uint8_t *head, size_t head_len, bool *damaged, char *err,
                                   size_t errlen);

/* The next frame (one the filter accepts). may_move false: frames handed out since the last
 * call with may_move true must stay valid, so the bytes held are left where they are; a second
 * buffer takes the reading on once, and a block that does not fit there either (the frames since
 * may_move span more than a buffer, 1 MiB) gives CAP_PCAPNG_HOLD. */
int cap_pcapng_next(struct cap_pcapng *r, bool may_move, struct cap_pcapng_frame *frame);

/* From now on only frames that bpf matches are handed out, compiled for each interface's link
 * type as libpcap compiles one for a file's; NULL or "" removes it. False when it does not
 * compile for the link type of an interface read so far: *bad_linktype is that link type and
 * why libpcap's reason. An interface described later whose link type it does not compile for
 * stops the reading (CAP_PCAPNG_ERROR, not a damaged file). */
bool cap_pcapng_set_filter(struct cap_pcapng *r, const char *bpf, uint16_t *bad_linktype, char *why,
                           size_t whylen);

/* What stopped the reading ("" if nothing); damaged: the file breaks the format (or ends inside a
 * block), rather than the filter not applying. */
const char *cap_pcapng_error(const struct cap_pcapng *r, bool *damaged);
/* Packet blocks read without error, those the filter rejected included. */
uint64_t cap_pcapng_frames_read(const struct cap_pcapng *r);
/* Bytes of the stream taken so far: up to the end of the last block read. */
uint64_t cap_pcapng_offset(const struct cap_pcapng *r);
/* The link type of the first interface of the file (DLT_EN10MB when there is none yet). */
uint16_t cap_pcapng_linktype(const struct cap_pcapng *r);
void cap_pcapng_close(struct cap_pcapng *r);

#endif
