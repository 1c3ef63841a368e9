/* cmd_corpus.c — `netlm corpus`: captures to the seed's pretraining corpus text. Streams packet
 * by packet, so memory stays constant whatever the input size. */
#include <stdlib.h>
#include <string.h>

#include "capture/capture.h"
#include "cli/cli.h"
#include "tokenizer/tokenizer.h"

static void write_half(FILE *out, const uint16_t *values, size_t n)
{
    /* The seed's line: tokens each followed by one space (so a trailing space), then '\n'. */
    char buf[TOK_CORPUS_MAX_HALF * 5 + 2];
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        tok_format_value(values[i], buf + o);
        buf[o + 4] = ' ';
        o += 5;
    }
    buf[o++] = '\n';
    fwrite(buf, 1, o, out);
}

int cmd_corpus(int argc, char **argv)
{
    static const char *const cmd = "corpus";
    struct cli_opt opts[] = {
        {"pcap-path", NULL, 'i', "PATH", "a capture, or a folder searched recursively (also as arguments)", NULL},
        {"output", "corpus_path", 'o', "FILE", "corpus text to write, missing folders created (default standard output)", NULL},
        {"header-mode", NULL, 0, "MODE",
         "without it: the seed's corpus (bytes after the port fields); with none|seed|full|strict|strip: "
         "the whole frame masked by that mode (strip: the payload)", NULL},
        {"tunnels", NULL, 0, "outer|inner", "layers of a tunnelled packet: outer (default) or innermost", NULL},
        {"quiet", NULL, 'q', NULL, "no progress line", NULL},
        {0},
    };
    const char **pos;
    int npos;
    int rc = cli_parse(cmd, "[OPTIONS] [--pcap_path] PATH... -o corpus.txt",
                       "Writes the seed's pretraining corpus: for every packet, the bytes after the L4 port\n"
                       "fields (found from the real layer offsets, not a fixed 38 bytes) split in two halves,\n"
                       "each a line of overlapping 4-hex tokens (at most 256), then a blank line. Packets\n"
                       "with fewer than 5 such bytes, or without ports, are skipped.",
                       opts, argc, argv, &pos, &npos);
    if (rc != CLI_PARSED)
        return rc == CLI_HELP_SHOWN ? 0 : 2;
    int status = 2;
    char **files = NULL;
    int n_files = 0;
    struct cli_output out = {0};
    const char **inputs = calloc((size_t)npos + 2, sizeof *inputs);
    int n_inputs = 0;
    if (!inputs)
        goto done;
    if (cli_get(opts, "pcap-path"))
        inputs[n_inputs++] = cli_get(opts, "pcap-path");
    for (int i = 0; i < npos; i++)
        inputs[n_inputs++] = pos[i];
    bool use_mode = cli_get(opts, "header-mode") != NULL;
    enum tok_header_mode mode = TOK_HDR_NONE;
    if (!cli_header_mode(cmd, opts, &mode))
        goto done;
    static const char *const tunnels[] = {"outer", "inner", NULL};
    int t = cli_choice(cmd, opts, "tunnels", "outer", tunnels);
    if (t < 0)
        goto done;
    if (n_inputs == 0) {
        cli_error(cmd, "no capture given (--pcap_path PATH)");
        goto done;
    }
    status = 1;
    uint64_t total = 0;
    n_files = cli_collect_inputs(cmd, inputs, n_inputs, true, &files, &total);
    if (n_files <= 0) {
        if (n_files == 0)
            cli_error(cmd, "no capture files found in %s", inputs[0]);
        n_files = 0;
        goto done;
    }
    const char *output = cli_get(opts, "output");
    /* as the seed's scripts make corpora/ */
    if (output && strcmp(output, "-") != 0 && !cli_make_folders(cmd, "-o", output, true))
        goto done;
    if (!cli_output_open(cmd, output, &out))
        goto done;
    struct cap_decode_opts dopts = {.innermost = t == 1};
    struct cli_progress progress;
    cli_progress_start(&progress, cmd, total, cli_flag(opts, "quiet"));
    uint64_t done_bytes = 0, frames = 0, documents = 0; /* done_bytes: of the files finished */
    static uint16_t half1[TOK_CORPUS_MAX_HALF], half2[TOK_CORPUS_MAX_HALF];
    for (int f = 0; f < n_files; f++) {
        char err[512];
        struct cap_source *src = cap_open_file(files[f], err, sizeof err);
        if (!src) {
            cli_error(cmd, "%s", err);
            goto done;
        }
        struct cap_frame fr[64];
        int n;
        uint64_t guessed = 0;
        while ((n = cap_next_burst(src, fr, 64)) > 0) {
            for (int i = 0; i < n; i++) {
                struct cap_packet pkt;
                size_t n1, n2;
                cap_decode(&dopts, fr[i].linktype, fr[i].data, fr[i].caplen, fr[i].wirelen, fr[i].ts_ns, &pkt);
                if (tok_corpus_halves(fr[i].data, fr[i].caplen, &pkt.layers, use_mode, mode, half1, &n1,
                                      half2, &n2)) {
                    write_half(out.fp, half1, n1);
                    write_half(out.fp, half2, n2);
                    fputc('\n', out.fp);
                    documents++;
                }
                guessed += fr[i].caplen + 16u;
            }
            frames += (uint64_t)n;
            cli_progress_update(&progress, done_bytes + cli_source_progress(src, guessed), frames, "frames");
        }
        done_bytes += cli_source_progress(src, guessed);
        if (n == CAP_BURST_ERROR)
            cli_warn(cmd, "%s", cap_source_error(src));
        cap_close(src);
    }
    cli_progress_end(&progress, done_bytes, frames, "frames");
    if (documents == 0)
        cli_warn(cmd, "no packet had bytes to write (%llu frames read)", (unsigned long long)frames);
    if (!cli_output_commit(cmd, &out))
        goto done;
    status = 0;
done:
    if (out.fp)
        cli_output_abort(&out);
    cli_free_files(files, n_files);
    free(inputs);
    free(pos);
    return status;
}
