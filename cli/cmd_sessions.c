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
    char **escaped_files; /* JSON-escaped file names, made before the workers start */
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

/* The output line is built by hand: with hundreds of thousands of sessions a second, printf's
 * format parsing was most of the command's time. */
struct line {
    char buf[1536];
    size_t n;
};

static void put_str(struct line *l, const char *s)
{
    size_t len = strlen(s);
    if (l->n + len < sizeof l->buf) {
        memcpy(l->buf + l->n, s, len);
        l->n += len;
    }
}

static void put_u64(struct line *l, uint64_t v)
{
    char tmp[24];
    int i = 24;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    if (l->n + (size_t)(24 - i) < sizeof l->buf) {
        memcpy(l->buf + l->n, tmp + i, (size_t)(24 - i));
        l->n += (size_t)(24 - i);
    }
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
        put_str(l, "-");
        sec = -sec;
    }
    put_u64(l, (uint64_t)sec);
    char digits[11] = ".000000000";
    for (int i = 9; i >= 1; i--) {
        digits[i] = (char)('0' + frac % 10);
        frac /= 10;
    }
    put_str(l, digits);
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
            put_str(l, ".");
        put_u64(l, addr[i]);
    }
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
    struct line l = {.n = 0};
    char pbuf[8];
    const char *proto = proto_name(s->proto, pbuf);
    const char *file = run->files[run->current_file];
    if (run->json) {
        put_str(&l, "{\"flow_id\":");
        put_u64(&l, s->id);
        put_str(&l, ",\"proto\":\"");
        put_str(&l, proto);
        put_str(&l, "\",\"ip_v\":");
        put_u64(&l, s->ip_version);
        put_str(&l, ",\"src_ip\":\"");
        put_addr(&l, s->ip_version, s->src_addr);
        put_str(&l, "\",\"src_port\":");
        put_u64(&l, s->src_port);
        put_str(&l, ",\"dest_ip\":\"");
        put_addr(&l, s->ip_version, s->dst_addr);
        put_str(&l, "\",\"dest_port\":");
        put_u64(&l, s->dst_port);
        put_str(&l, ",\"vlan\":");
        put_u64(&l, s->vlan);
        put_str(&l, ",\"pkts_toserver\":");
        put_u64(&l, s->pkts[0]);
        put_str(&l, ",\"pkts_toclient\":");
        put_u64(&l, s->pkts[1]);
        put_str(&l, ",\"bytes_toserver\":");
        put_u64(&l, s->bytes[0]);
        put_str(&l, ",\"bytes_toclient\":");
        put_u64(&l, s->bytes[1]);
        put_str(&l, ",\"start\":");
        put_time(&l, s->first_ns);
        put_str(&l, ",\"end\":");
        put_time(&l, s->last_ns);
        put_str(&l, ",\"reason\":\"");
        put_str(&l, ft_end_reason_name(s->reason));
        put_str(&l, "\",\"first_frame\":");
        put_u64(&l, s->first_frame);
        put_str(&l, ",\"pcap_filename\":\"");
        put_str(&l, run->escaped_files[run->current_file]);
        put_str(&l, "\"}\n");
    } else {
        put_str(&l, proto);
        put_str(&l, "\t");
        put_addr(&l, s->ip_version, s->src_addr);
        put_str(&l, "\t");
        put_u64(&l, s->src_port);
        put_str(&l, "\t");
        put_addr(&l, s->ip_version, s->dst_addr);
        put_str(&l, "\t");
        put_u64(&l, s->dst_port);
        for (int i = 0; i < 4; i++) {
            put_str(&l, "\t");
            put_u64(&l, i < 2 ? s->pkts[i] : s->bytes[i - 2]);
        }
        put_str(&l, "\t");
        put_time(&l, s->first_ns);
        put_str(&l, "\t");
        put_time(&l, s->last_ns);
        put_str(&l, "\t");
        put_str(&l, ft_end_reason_name(s->reason));
        put_str(&l, "\t");
        put_u64(&l, s->first_frame);
        put_str(&l, "\t");
        put_u64(&l, s->vlan);
        put_str(&l, "\t");
        put_str(&l, file);
        put_str(&l, "\n");
    }
    if (l.n == sizeof l.buf - 1 || l.buf[l.n - 1] != '\n')
        l.buf[l.n - 1] = '\n'; /* an absurdly long file name was cut; the line still ends */
    pthread_mutex_lock(&run->lock);
    fwrite(l.buf, 1, l.n, run->out);
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
    run.escaped_files = calloc((size_t)n_files, sizeof *run.escaped_files);
    for (int i = 0; run.escaped_files && i < n_files; i++) {
        size_t cap = strlen(files[i]) * 6 + 1;
        if ((run.escaped_files[i] = malloc(cap)))
            json_escape(files[i], run.escaped_files[i], cap);
        else
            goto done;
    }
    if (!run.escaped_files)
        goto done;
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
    if (run.escaped_files)
        cli_free_files(run.escaped_files, n_files);
    cli_free_files(files, n_files);
    free(pos);
    return status;
}
