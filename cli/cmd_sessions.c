/* cmd_sessions.c — `netlm sessions`: every session of the given captures, one line each, as
 * TSV or JSON lines; the first tool to look at a capture with, and what the tests compare
 * against tshark's conversation tables. */
#include <arpa/inet.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

struct sessions_run {
    FILE *out;
    bool json;
    char **files;
    volatile int current_file;
    pthread_mutex_t lock;
    uint64_t count;
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

static void format_addr(uint8_t version, const uint8_t addr[16], char out[INET6_ADDRSTRLEN])
{
    inet_ntop(version == 6 ? AF_INET6 : AF_INET, addr, out, INET6_ADDRSTRLEN);
}

/* Epoch seconds with nine decimals, from the integer nanoseconds (a double would round them). */
static void format_time(int64_t ns, char out[32])
{
    int64_t sec = ns / 1000000000, frac = ns % 1000000000;
    if (frac < 0) {
        sec -= 1;
        frac += 1000000000;
    }
    snprintf(out, 32, "%" PRId64 ".%09" PRId64, sec, frac);
}

/* JSON string body for a file name: quotes, backslashes and control bytes escaped. */
static void json_escape(const char *s, char *out, size_t cap)
{
    size_t o = 0;
    for (; *s && o + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
}

static void on_session(const struct ft_session *s, int worker, void *user)
{
    (void)worker;
    struct sessions_run *run = user;
    char src[INET6_ADDRSTRLEN], dst[INET6_ADDRSTRLEN], pbuf[8], line[1536];
    format_addr(s->ip_version, s->src_addr, src);
    format_addr(s->ip_version, s->dst_addr, dst);
    const char *proto = proto_name(s->proto, pbuf);
    const char *file = run->files[run->current_file];
    char start[32], end[32];
    format_time(s->first_ns, start);
    format_time(s->last_ns, end);
    int n;
    if (run->json) {
        char esc[1024];
        json_escape(file, esc, sizeof esc);
        n = snprintf(line, sizeof line,
                     "{\"flow_id\":%" PRIu64 ",\"proto\":\"%s\",\"ip_v\":%u,\"src_ip\":\"%s\",\"src_port\":%u,"
                     "\"dest_ip\":\"%s\",\"dest_port\":%u,\"vlan\":%u,\"pkts_toserver\":%" PRIu64
                     ",\"pkts_toclient\":%" PRIu64 ",\"bytes_toserver\":%" PRIu64 ",\"bytes_toclient\":%" PRIu64
                     ",\"start\":%s,\"end\":%s,\"reason\":\"%s\",\"first_frame\":%" PRIu64
                     ",\"pcap_filename\":\"%s\"}\n",
                     s->id, proto, s->ip_version, src, s->src_port, dst, s->dst_port, s->vlan, s->pkts[0],
                     s->pkts[1], s->bytes[0], s->bytes[1], start, end, ft_end_reason_name(s->reason),
                     s->first_frame, esc);
    } else {
        n = snprintf(line, sizeof line,
                     "%s\t%s\t%u\t%s\t%u\t%" PRIu64 "\t%" PRIu64 "\t%" PRIu64 "\t%" PRIu64
                     "\t%s\t%s\t%s\t%" PRIu64 "\t%u\t%s\n",
                     proto, src, s->src_port, dst, s->dst_port, s->pkts[0], s->pkts[1], s->bytes[0],
                     s->bytes[1], start, end, ft_end_reason_name(s->reason), s->first_frame, s->vlan, file);
    }
    if (n >= (int)sizeof line)
        n = (int)sizeof line - 1;
    pthread_mutex_lock(&run->lock);
    fwrite(line, 1, (size_t)n, run->out);
    run->count++;
    pthread_mutex_unlock(&run->lock);
}

static void print_stats(const struct ft_stats *st, uint64_t sessions)
{
    fprintf(stderr, "{\"frames\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"flowless\":%" PRIu64
                    ",\"sessions\":%" PRIu64 ",\"flows_created\":%" PRIu64 ",\"flows_evicted\":%" PRIu64
                    ",\"flows_timed_out\":%" PRIu64 ",\"port_reuse_splits\":%" PRIu64 ",\"decode\":{",
            st->frames, st->bytes, st->flowless, sessions, st->flows_created, st->flows_evicted,
            st->flows_timed_out, st->port_reuse_splits);
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
                       "bytes each way (frame lengths on the wire), start and end times, why it ended\n"
                       "(closed, timeout, end-of-input, evicted), the number of its first frame and the file.",
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
    n_files = cli_collect_files(cmd, pos, npos, &files, &total);
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
    run.files = files;
    char err[512];
    as = ft_assembler_create(&cfg, on_session, &run, err, sizeof err);
    if (!as) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    if (!run.json && cli_flag(opts, "header"))
        fputs("proto\tsrc_ip\tsrc_port\tdest_ip\tdest_port\tpkts_toserver\tpkts_toclient\tbytes_toserver\t"
              "bytes_toclient\tstart\tend\treason\tfirst_frame\tvlan\tfile\n", run.out);
    if (cli_assemble_files(cmd, as, files, n_files, total, cli_flag(opts, "quiet"), &run.current_file) != 0)
        goto done;
    if (cli_flag(opts, "stats")) {
        struct ft_stats st;
        ft_assembler_stats(as, &st);
        print_stats(&st, run.count);
    }
    if (!cli_output_commit(cmd, &out))
        goto done;
    status = 0;
done:
    if (out.fp)
        cli_output_abort(&out);
    if (as)
        ft_assembler_destroy(as);
    cli_free_files(files, n_files);
    free(pos);
    return status;
}
