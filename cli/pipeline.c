/* pipeline.c — capture files through the flow assembler, with the options and progress line
 * shared by every command that works on sessions. */
#include <string.h>

#include "capture/capture.h"
#include "cli/cli.h"

bool cli_header_mode(const char *command, const struct cli_opt *opts, enum tok_header_mode *mode)
{
    if (!cli_get(opts, "header-mode"))
        return true;
    const char *names[TOK_HDR_STRIP + 2];
    for (int m = TOK_HDR_NONE; m <= TOK_HDR_STRIP; m++)
        names[m] = tok_header_mode_name((enum tok_header_mode)m);
    names[TOK_HDR_STRIP + 1] = NULL;
    int m = cli_choice(command, opts, "header-mode", NULL, names);
    if (m < 0)
        return false;
    *mode = (enum tok_header_mode)m;
    return true;
}

/* A timeout flag holds for its protocol's sessions in every state, as its help says: 0 (none)
 * turns off the new and closed states' timeouts too, and a value below their defaults lowers
 * them (a larger value leaves them, Suricata's shorter timeouts for flows not yet answered).
 * Otherwise a one-way UDP flow, which never leaves the new state, still ended after udp_new's
 * 30 s under --udp-timeout 0. */
static void flag_timeout(double given, double *established, double *new_state, double *closed)
{
    *established = given;
    double *others[] = {new_state, closed};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++)
        if (others[i] && (given == 0 || *others[i] > given))
            *others[i] = given;
}

bool cli_flow_config(const char *command, const struct cli_opt *opts, struct ft_config *cfg)
{
    uint32_t workers, max_flows;
    if (!cli_u32(command, opts, "workers", 1, 1, 64, &workers) ||
        !cli_u32(command, opts, "max-flows", cfg->max_flows, 16, 1u << 30, &max_flows))
        return false;
    cfg->workers = (int)workers;
    cfg->max_flows = max_flows;
    static const char *const reuse[] = {"split", "merge", NULL};
    int r = cli_choice(command, opts, "port-reuse", "split", reuse);
    if (r < 0)
        return false;
    cfg->port_reuse = r == 0 ? FT_PORT_REUSE_SPLIT : FT_PORT_REUSE_MERGE;
    static const char *const tunnels[] = {"outer", "inner", NULL};
    int t = cli_choice(command, opts, "tunnels", "outer", tunnels);
    if (t < 0)
        return false;
    cfg->decode.innermost = t == 1;
    double tcp, udp;
    if (!cli_double(command, opts, "tcp-timeout", cfg->timeouts.tcp_established, 0, 1e9, &tcp) ||
        !cli_double(command, opts, "udp-timeout", cfg->timeouts.udp_established, 0, 1e9, &udp))
        return false;
    if (cli_get(opts, "tcp-timeout"))
        flag_timeout(tcp, &cfg->timeouts.tcp_established, &cfg->timeouts.tcp_new, &cfg->timeouts.tcp_closed);
    if (cli_get(opts, "udp-timeout"))
        flag_timeout(udp, &cfg->timeouts.udp_established, &cfg->timeouts.udp_new, NULL);
    if (cli_flag(opts, "no-timeouts"))
        memset(&cfg->timeouts, 0, sizeof cfg->timeouts);
    return true;
}

/* Progress is the position in the file: frame bytes leave out the file's own headers (a pcapng
 * block's are 28 bytes and up, more than a pcap record's 16). */
uint64_t cli_source_progress(const struct cap_source *src, uint64_t guessed)
{
    const int64_t at = cap_source_offset(src);
    return at >= 0 ? (uint64_t)at : guessed;
}

int cli_assemble_files(const char *command, struct ft_assembler *as, char **files, int n_files,
                       uint64_t total_bytes, bool quiet, volatile int *current_file)
{
    enum { BURST = 64 };
    struct cap_frame frames[BURST];
    struct cli_progress progress;
    uint64_t done_bytes = 0, frames_seen = 0; /* done_bytes: of the files finished */
    cli_progress_start(&progress, command, total_bytes, quiet);
    for (int f = 0; f < n_files; f++) {
        char err[512];
        struct cap_source *src = cap_open_file(files[f], err, sizeof err);
        if (!src) {
            cli_error(command, "%s", err);
            return 1;
        }
        *current_file = f;
        uint64_t guessed = 0;
        for (;;) {
            int n = cap_next_burst(src, frames, BURST);
            if (n == CAP_BURST_END)
                break;
            if (n == CAP_BURST_ERROR) {
                cli_warn(command, "%s", cap_source_error(src));
                break;
            }
            ft_assembler_feed(as, frames, n);
            frames_seen += (uint64_t)n;
            for (int i = 0; i < n; i++)
                guessed += frames[i].caplen + 16u;
            if ((frames_seen & 0x3fff) < (uint64_t)n)
                cli_progress_update(&progress, done_bytes + cli_source_progress(src, guessed), frames_seen,
                                    "frames");
        }
        done_bytes += cli_source_progress(src, guessed);
        ft_assembler_finish_input(as);
        cap_close(src);
    }
    cli_progress_end(&progress, done_bytes, frames_seen, "frames");
    return 0;
}
