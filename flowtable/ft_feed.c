/* ft_feed.c — ft_assembler_feed: decodes frames with cap_decode, a few at a time, and hands the
 * packets to the assembler while they are still in cache. Kept apart from ft_assembler.c so that
 * everything else in flowtable/ links and is testable without the decoder. */
#include "flowtable/ft_internal.h"

#define FT_DECODE_BURST 16

void ft_assembler_feed(struct ft_assembler *as, const struct cap_frame *frames, int n)
{
    const struct cap_decode_opts *opts = ft_assembler_decode_opts(as);
    struct cap_packet pkts[FT_DECODE_BURST];
    ft_feed_begin(as);
    for (int base = 0; base < n; base += FT_DECODE_BURST) {
        int m = n - base < FT_DECODE_BURST ? n - base : FT_DECODE_BURST;
        for (int i = 0; i < m; i++) {
            const struct cap_frame *f = &frames[base + i];
            cap_decode(opts, f->linktype, f->data, f->caplen, f->wirelen, f->ts_ns, &pkts[i]);
        }
        ft_feed_burst(as, pkts, m);
    }
    ft_feed_end(as);
}
