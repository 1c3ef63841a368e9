/* cmd_sessions.c — `netlm sessions`: every session of the given captures, one line each, as
 * TSV or JSON lines; the first tool to look at a capture with, and what the tests compare
 * against tshark's conversation tables. */
#include <arpa/inet.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

/* Lines are built straight into a block buffer of the worker that ended the session, and a full
 * block is written with one fwrite under the lock: one lock and one stdio call per block instead
 * of per line. One worker writes its lines in the order its sessions end, as before; with
 * several, each block holds whole lines of one worker. */
#define OUT_BLOCK_BYTES (256u << 10)
#define OUT_LINE_MAX 1536 /* longest line; a longer file name is left out of it */

struct sessions_block {
    char *buf; /* OUT_BLOCK_BYTES */
    size_t n;
    uint64_t count; /* lines written into this worker's blocks */
    char pad[64 - sizeof(char *) - sizeof(size_t) - sizeof(uint64_t)]; /* a line per worker */
};

struct sessions_run {
    FILE *out;
    bool json;
    volatile int current_file;
    char **names; /* the file column of each input, escaped for the format (JSON or TSV), made
                     before the workers start */
    size_t *name_lens;
    pthread_mutex_t lock;
    struct sessions_block *blocks; /* one per worker */
    int n_blocks;
};

static const char *proto_name(uint8_t proto, char buf[8])
{
    switch (proto) {
    case 6: return "tcp";
    case 17: return "udp";
    case 1: return "icmp";
    case 58: return "icmpv6";
    case 132: return "sctp";
    default: snprintf(buf, 8, "%u", proto); return buf;
    }
}

/* The output line is built by hand: with hundreds of thousands of sessions a second, printf's
 * format parsing was most of the command's time. A string that would take the line past
 * OUT_LINE_MAX - 1 bytes is left out whole; numbers and addresses always fit. */
struct line {
    char *buf; /* OUT_LINE_MAX bytes of room */
    size_t n;
};

static inline void put_mem(struct line *l, const char *s, size_t len)
{
    if (l->n + len < OUT_LINE_MAX) {
        memcpy(l->buf + l->n, s, len);
        l->n += len;
    }
}

static inline void put_str(struct line *l, const char *s)
{
    put_mem(l, s, strlen(s));
}

#define PUT_LIT(l, s) put_mem((l), (s), sizeof(s) - 1)

static const char digit_pairs[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

static inline unsigned decimal_digits(uint64_t v)
{
    unsigned n = 1;
    for (;;) {
        if (v < 10) return n;
        if (v < 100) return n + 1;
        if (v < 1000) return n + 2;
        if (v < 10000) return n + 3;
        v /= 10000;
        n += 4;
    }
}

/* Writes exactly `width` decimal digits of v (v < 10^width) ending at end, two at a time; in
 * 32-bit arithmetic once the value fits (almost every field does from the start). */
static inline void digits_back(char *end, uint64_t v, unsigned width)
{
    while (v > UINT32_MAX) {
        unsigned r = (unsigned)(v % 100);
        v /= 100;
        end -= 2;
        memcpy(end, digit_pairs + 2 * r, 2);
        width -= 2;
    }
    uint32_t u = (uint32_t)v;
    while (width >= 2) {
        unsigned r = u % 100;
        u /= 100;
        end -= 2;
        memcpy(end, digit_pairs + 2 * r, 2);
        width -= 2;
    }
    if (width)
        *--end = (char)('0' + u);
}

/* A number never goes past OUT_LINE_MAX: the fixed fields are far shorter, and put_mem checks
 * the only long field (the file name). */
static inline void put_u64(struct line *l, uint64_t v)
{
    unsigned len = decimal_digits(v);
    digits_back(l->buf + l->n + len, v, len);
    l->n += len;
}

/* Epoch seconds with nine decimals, from the integer nanoseconds (a double would round them). */
static void put_time(struct line *l, int64_t ns)
{
    int64_t sec = ns / 1000000000, frac = ns % 1000000000;
    if (frac < 0) {
        sec -= 1;
        frac += 1000000000;
    }
    if (sec < 0) {
        l->buf[l->n++] = '-';
        sec = -sec;
    }
    put_u64(l, (uint64_t)sec);
    l->buf[l->n] = '.';
    digits_back(l->buf + l->n + 10, (uint64_t)frac, 9);
    l->n += 10;
}

static void put_addr(struct line *l, uint8_t version, const uint8_t addr[16])
{
    if (version == 6) {
        char tmp[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, addr, tmp, sizeof tmp);
        put_str(l, tmp);
        return;
    }
    for (int i = 0; i < 4; i++) {
        if (i)
            l->buf[l->n++] = '.';
        put_u64(l, addr[i]);
    }
}

/* Writes a worker's block out; the caller owns the block (its worker, or any thread once the
 * workers are idle). */
static void block_flush(struct sessions_run *run, struct sessions_block *b)
{
    if (b->n == 0)
        return;
    pthread_mutex_lock(&run->lock);
    fwrite(b->buf, 1, b->n, run->out);
    pthread_mutex_unlock(&run->lock);
    b->n = 0;
}

static void on_session(const struct ft_session *s, int worker, void *user)
{
    struct sessions_run *run = user;
    struct sessions_block *b = &run->blocks[worker];
    if (OUT_BLOCK_BYTES - b->n < OUT_LINE_MAX)
        block_flush(run, b);
    struct line l = {.buf = b->buf + b->n, .n = 0};
    char pbuf[8];
    const char *proto = proto_name(s->proto, pbuf);
    int file = run->current_file;
    if (run->json) {
        PUT_LIT(&l, "{\"flow_id\":");
        put_u64(&l, s->id);
        PUT_LIT(&l, ",\"proto\":\"");
        put_str(&l, proto);
        PUT_LIT(&l, "\",\"ip_v\":");
        put_u64(&l, s->ip_version);
        PUT_LIT(&l, ",\"src_ip\":\"");
        put_addr(&l, s->ip_version, s->src_addr);
        PUT_LIT(&l, "\",\"src_port\":");
        put_u64(&l, s->src_port);
        PUT_LIT(&l, ",\"dest_ip\":\"");
        put_addr(&l, s->ip_version, s->dst_addr);
        PUT_LIT(&l, "\",\"dest_port\":");
        put_u64(&l, s->dst_port);
        PUT_LIT(&l, ",\"vlan\":");
        put_u64(&l, s->vlan);
        PUT_LIT(&l, ",\"pkts_toserver\":");
        put_u64(&l, s->pkts[0]);
        PUT_LIT(&l, ",\"pkts_toclient\":");
        put_u64(&l, s->pkts[1]);
        PUT_LIT(&l, ",\"bytes_toserver\":");
        put_u64(&l, s->bytes[0]);
        PUT_LIT(&l, ",\"bytes_toclient\":");
        put_u64(&l, s->bytes[1]);
        PUT_LIT(&l, ",\"start\":");
        put_time(&l, s->first_ns);
        PUT_LIT(&l, ",\"end\":");
        put_time(&l, s->last_ns);
        PUT_LIT(&l, ",\"reason\":\"");
        put_str(&l, ft_end_reason_name(s->reason));
        PUT_LIT(&l, "\",\"first_frame\":");
        put_u64(&l, s->first_frame);
        PUT_LIT(&l, ",\"pcap_filename\":\"");
        put_mem(&l, run->names[file], run->name_lens[file]);
        PUT_LIT(&l, "\"}\n");
    } else {
        put_str(&l, proto);
        PUT_LIT(&l, "\t");
        put_addr(&l, s->ip_version, s->src_addr);
        PUT_LIT(&l, "\t");
        put_u64(&l, s->src_port);
        PUT_LIT(&l, "\t");
        put_addr(&l, s->ip_version, s->dst_addr);
        PUT_LIT(&l, "\t");
        put_u64(&l, s->dst_port);
        for (int i = 0; i < 4; i++) {
            PUT_LIT(&l, "\t");
            put_u64(&l, i < 2 ? s->pkts[i] : s->bytes[i - 2]);
        }
        PUT_LIT(&l, "\t");
        put_time(&l, s->first_ns);
        PUT_LIT(&l, "\t");
        put_time(&l, s->last_ns);
        PUT_LIT(&l, "\t");
        put_str(&l, ft_end_reason_name(s->reason));
        PUT_LIT(&l, "\t");
        put_u64(&l, s->first_frame);
        PUT_LIT(&l, "\t");
        put_u64(&l, s->vlan);
        PUT_LIT(&l, "\t");
        put_mem(&l, run->names[file], run->name_lens[file]);
        PUT_LIT(&l, "\n");
    }
    if (l.n == OUT_LINE_MAX - 1 || l.buf[l.n - 1] != '\n')
        l.buf[l.n - 1] = '\n'; /* an absurdly long file name was cut; the line still ends */
    b->n += l.n;
    b->count++;
}

static void print_stats(const struct ft_stats *st, uint64_t sessions)
{
    fprintf(stderr, "{\"frames\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"flowless\":%" PRIu64
                    ",\"fragments_joined\":%" PRIu64 ",\"sessions\":%" PRIu64 ",\"flows_created\":%" PRIu64 ",\"flows_evicted\":%" PRIu64
                    ",\"flows_timed_out\":%" PRIu64 ",\"port_reuse_splits\":%" PRIu64
                    ",\"refused_packets\":%" PRIu64 ",\"decode\":{",
            st->frames, st->bytes, st->flowless, st->fragments_joined, sessions, st->flows_created, st->flows_evicted,
            st->flows_timed_out, st->port_reuse_splits, st->refused_packets);
    for (int r = 1; r < CAP_DECODE_REASON_COUNT; r++)
        fprintf(stderr, "%s\"%s\":%" PRIu64, r > 1 ? "," : "", cap_decode_reason_name((enum cap_decode_reason)r),
                st->decode.by_reason[r]);
    fprintf(stderr, "}}\n");
}

int cmd_sessions(int argc, char **argv)
{
    static const char *const cmd = "sessions";
    struct cli_opt opts[] = {
        {"format", NULL, 'f', "tsv|json", "output format (default tsv; json: one object per line)", NULL},
        {"output", NULL, 'o', "FILE", "write to FILE (atomically) instead of standard output", NULL},
        {"header", NULL, 0, NULL, "TSV: print a header line first", NULL},
        {"stats", NULL, 0, NULL, "print frame, decode and flow counters as one JSON line on stderr", NULL},
        CLI_FLOW_OPTIONS,
        {0},
    };
    const char **pos;
    int npos;
    int rc = cli_parse(cmd, "[OPTIONS] FILE|FOLDER...",
                       "Assembles the bidirectional sessions of pcap/pcapng captures and prints one line per\n"
                       "session: protocol, endpoints (src = the side that sent the first packet), packets and\n"
                       "bytes each way (frame lengths on the wire), start and end (its earliest and latest\n"
                       "packet times), why it ended (closed, timeout, end-of-input, evicted), the number of its\n"
                       "first frame, its VLAN and the file. vlan is the innermost 802.1Q/802.1ad VLAN ID of its\n"
                       "frames (0: untagged): it is part of the session's key, so the same 5-tuple on two VLANs\n"
                       "is two sessions.\n"
                       "A datagram's later IP fragments count in the session of its first fragment.\n"
                       "TSV columns (--header prints them): proto src_ip src_port dest_ip dest_port\n"
                       "pkts_toserver pkts_toclient bytes_toserver bytes_toclient start end reason first_frame\n"
                       "vlan file (a tab, newline, CR or backslash in it written \\t \\n \\r \\\\); JSON: the same\n"
                       "fields, flow_id and ip_v added, pcap_filename for file. FILE '-' is standard input.",
                       opts, argc, argv, &pos, &npos);
    if (rc != CLI_PARSED)
        return rc == CLI_HELP_SHOWN ? 0 : 2;
    int status = 2;
    char **files = NULL;
    int n_files = 0;
    struct ft_assembler *as = NULL;
    struct cli_output out = {0};
    struct sessions_run run = {.lock = PTHREAD_MUTEX_INITIALIZER};
    static const char *const formats[] = {"tsv", "json", NULL};
    int format = cli_choice(cmd, opts, "format", "tsv", formats);
    struct ft_config cfg;
    ft_config_defaults(&cfg);
    cfg.packets_per_session = 0; /* counters only: nothing here reads packet bytes */
    if (format < 0 || !cli_flow_config(cmd, opts, &cfg))
        goto done;
    if (npos == 0) {
        cli_error(cmd, "no capture given (usage: netlm sessions FILE...)");
        goto done;
    }
    uint64_t total = 0;
    n_files = cli_collect_inputs(cmd, pos, npos, true, &files, &total);
    status = 1;
    if (n_files < 0) {
        n_files = 0;
        goto done;
    }
    if (n_files == 0) {
        cli_error(cmd, "no capture files found in %s", pos[0]);
        goto done;
    }
    if (!cli_output_open(cmd, cli_get(opts, "output"), &out))
        goto done;
    run.out = out.fp;
    run.json = format == 1;
    run.name_lens = calloc((size_t)n_files, sizeof *run.name_lens);
    run.names = run.name_lens ? cli_escape_names(files, n_files, run.json, run.name_lens) : NULL;
    run.blocks = calloc((size_t)cfg.workers, sizeof *run.blocks);
    if (!run.names || !run.name_lens || !run.blocks) {
        cli_error(cmd, "out of memory");
        goto done;
    }
    for (run.n_blocks = 0; run.n_blocks < cfg.workers; run.n_blocks++) {
        if (!(run.blocks[run.n_blocks].buf = malloc(OUT_BLOCK_BYTES))) {
            cli_error(cmd, "out of memory");
            goto done;
        }
    }
    char err[512];
    as = ft_assembler_create(&cfg, on_session, &run, err, sizeof err);
    if (!as) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    if (!run.json && cli_flag(opts, "header"))
        fputs("proto\tsrc_ip\tsrc_port\tdest_ip\tdest_port\tpkts_toserver\tpkts_toclient\tbytes_toserver\t"
              "bytes_toclient\tstart\tend\treason\tfirst_frame\tvlan\tfile\n", run.out);
    int assembled = cli_assemble_files(cmd, as, files, n_files, total, cli_flag(opts, "quiet"),
                                       &run.current_file);
    /* Every input has been finished (or none is being fed): the workers are idle. */
    uint64_t count = 0;
    for (int i = 0; i < run.n_blocks; i++) {
        block_flush(&run, &run.blocks[i]);
        count += run.blocks[i].count;
    }
    if (assembled != 0)
        goto done;
    if (cli_flag(opts, "stats")) {
        struct ft_stats st;
        ft_assembler_stats(as, &st);
        print_stats(&st, count);
    }
    if (!cli_output_commit(cmd, &out))
        goto done;
    status = 0;
done:
    if (out.fp)
        cli_output_abort(&out);
    if (as)
        ft_assembler_destroy(as);
    if (run.names)
        cli_free_files(run.names, n_files);
    for (int i = 0; i < run.n_blocks; i++)
        free(run.blocks[i].buf);
    free(run.blocks);
    free(run.name_lens);
    cli_free_files(files, n_files);
    free(pos);
    return status;
}
