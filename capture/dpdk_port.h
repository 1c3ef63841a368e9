/* dpdk_port.h — capture's private interface between source.c (the cap_source a caller holds)
 * and dpdk.c (the DPDK port behind it): dpdk.c is the only file compiled with DPDK's headers. */
#ifndef NETLM_CAPTURE_DPDK_PORT_H
#define NETLM_CAPTURE_DPDK_PORT_H

#include "capture/capture.h"

struct cap_dpdk_port;

/* Starts the EAL and the port; NULL with err set. *snaplen_out: the snap length in force. */
struct cap_dpdk_port *cap_dpdk_port_open(const struct cap_dpdk_opts *opts, uint32_t *snaplen_out, char *err,
                                         size_t errlen);
/* Receives up to max frames from one receive queue (one thread per queue at a time), each
 * copied (at most snaplen bytes) into arena[*used ..]; frames the filter rejects are dropped.
 * Returns the count (0: none yet; receiving cannot fail, a stopped port just delivers nothing). */
int cap_dpdk_port_burst(struct cap_dpdk_port *p, uint32_t queue, struct cap_frame *frames, int max, uint8_t *arena,
                        size_t arena_size, size_t *used);
/* Receive queues the port was set up with (cap_dpdk_opts.queues). */
uint32_t cap_dpdk_port_queues(const struct cap_dpdk_port *p);
/* missed: frames the NIC dropped for want of ring space; errors: receive errors and mbuf
 * allocation failures. */
void cap_dpdk_port_stats(struct cap_dpdk_port *p, uint64_t *missed, uint64_t *errors);
void cap_dpdk_port_close(struct cap_dpdk_port *p);

#endif
