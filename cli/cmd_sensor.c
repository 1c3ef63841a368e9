/* cmd_sensor.c — `netlm sensor` (the live service) and `netlm replay` (the same pipeline over
 * capture files): options and configuration into sensor_options, then sensor_run(). Everything
 * that can be checked before a thread starts is checked here, so a bad flag, config, model path
 * or file ends with one line and nothing written. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture/capture.h"
#include "cli/cli.h"
#include "config/config.h"
#include "sensor/sensor.h"

/* -o: "-" = stdout, "unix:PATH" = a unix stream socket, anything else a file. */
static bool apply_output(const char *cmd, const char *out, struct cfg_sensor *c, bool replay,
                         const char **file_path)
{
    *file_path = NULL;
    if (!out)
        return true;
    if (strcmp(out, "-") == 0) {
        c->output.kind = CFG_OUTPUT_STDOUT;
    } else if (strncmp(out, "unix:", 5) == 0) {
        if (strlen(out + 5) == 0 || strlen(out + 5) >= sizeof c->output.socket) {
            cli_error(cmd, "-o %s: a unix socket path of 1 to %zu bytes is expected", out, sizeof c->output.socket - 1);
            return false;
        }
        c->output.kind = CFG_OUTPUT_UNIX_STREAM;
        snprintf(c->output.socket, sizeof c->output.socket, "%s", out + 5);
    } else {
        if (strlen(out) >= sizeof c->output.filename) {
            cli_error(cmd, "-o: path too long");
            return false;
        }
        c->output.kind = CFG_OUTPUT_FILE;
        snprintf(c->output.filename, sizeof c->output.filename, "%s", out);
        if (replay)
            *file_path = out; /* replay writes a temporary file and renames it at the end */
    }
    return true;
}

static bool load_config(const char *cmd, const char *path, struct cfg_sensor *c)
{
    char err[1024];
    if (!path) {
        cfg_defaults(c);
        return true;
    }
    if (cfg_load(path, c, err, sizeof err) != 0) {
        cli_error(cmd, "%s", err);
        return false;
    }
    return true;
}

/* --no-model (or model.task = "none" in the file): classification off, a flow sensor. -m names a
 * model that would not be used: said, rather than ignored. */
static bool apply_no_model(const char *cmd, const struct cli_opt *opts, struct cfg_sensor *c)
{
    if (cli_flag(opts, "no-model"))
        c->model.task = CFG_TASK_NONE;
    if (c->model.task == CFG_TASK_NONE && cli_get(opts, "model")) {
        cli_error(cmd, "-m %s: no model is used with %s", cli_get(opts, "model"),
                  cli_flag(opts, "no-model") ? "--no-model" : "model.task = \"none\"");
        return false;
    }
    return true;
}

static bool validate(const char *cmd, const struct cfg_sensor *c)
{
    char err[1024];
    if (cfg_validate(c, err, sizeof err) != 0) {
        cli_error(cmd, "%s", err);
        return false;
    }
    return true;
}

int cmd_sensor(int argc, char **argv)
{
    static const char *const cmd = "sensor";
    struct cli_opt opts[] = {
        {"config", NULL, 'c', "FILE", "configuration (libconfig; default: built-in defaults)", NULL},
        {"check-config", NULL, 0, NULL, "load and validate the configuration, print 'FILE: ok', exit", NULL},
        {"interface", NULL, 'i', "IFACE", "capture interface (capture.interface); dpdk:PORT captures with DPDK "
                                          "(capture.source \"dpdk\", capture.dpdk.port = PORT)", NULL},
        {"model", NULL, 'm', "DIR", "model directory (model.path)", NULL},
        {"no-model", NULL, 0, NULL, "classification off: no model, flow and stats events only (model.task = \"none\")", NULL},
        {"output", NULL, 'o', "OUT", "events to a file, '-' = stdout, 'unix:PATH' = a unix stream socket", NULL},
        {"workers", NULL, 'w', "N", "flow worker threads (flow.workers; per reader)", NULL},
        {"readers", NULL, 0, "N", "capture threads, a flow table each (capture.readers: a packet fanout group, "
                                  "or DPDK receive queues)", NULL},
        {"bpf", NULL, 0, "EXPR", "capture filter (capture.bpf)", NULL},
        {"user", NULL, 0, "USER", "user to run as once capture is open, when started as root (service.user)", NULL},
        {"stats-interval", NULL, 0, "S", "seconds between stats events, 0 = only at exit (output.stats_interval)", NULL},
        {0},
    };
    const char **pos = NULL;
    int npos = 0;
    int rc = cli_parse(cmd, "[-c FILE] [--check-config] [-i IFACE] [-m DIR | --no-model] [-o OUT] [OPTIONS]",
                       "Captures live traffic, classifies each session once it has its first packets and\n"
                       "writes JSON-line events (classification, flow, stats; see docs/sensor.md); with\n"
                       "--no-model, a flow sensor: flow and stats events only. Runs in\n"
                       "the foreground (systemd: Type=notify). SIGTERM/SIGINT drain and exit, SIGHUP reopens\n"
                       "the output file, SIGUSR2 reloads the model and the [SIGUSR2] keys.",
                       opts, argc, argv, &pos, &npos);
    if (rc != CLI_PARSED)
        return rc == CLI_HELP_SHOWN ? 0 : 2;
    int status = 2;
    struct sensor_options *o = calloc(1, sizeof *o);
    if (!o) {
        cli_error(cmd, "out of memory");
        goto done;
    }
    if (npos > 0) {
        cli_error(cmd, "unexpected argument '%s' (capture files are for 'netlm replay')", pos[0]);
        goto done;
    }
    const char *config = cli_get(opts, "config");
    if (!load_config(cmd, config, &o->cfg))
        goto done;
    const char *iface = cli_get(opts, "interface");
    if (iface && strncmp(iface, "dpdk:", 5) == 0) {
        if (!iface[5] || strlen(iface + 5) >= sizeof o->cfg.capture.dpdk_port.port) {
            cli_error(cmd, "--interface: expected dpdk:PORT with a PORT of 1 to %zu bytes",
                      sizeof o->cfg.capture.dpdk_port.port - 1);
            goto done;
        }
        o->cfg.capture.dpdk = true;
        snprintf(o->cfg.capture.dpdk_port.port, sizeof o->cfg.capture.dpdk_port.port, "%s", iface + 5);
    } else if (iface) {
        if (!*iface || strlen(iface) >= sizeof o->cfg.capture.interface) {
            cli_error(cmd, "--interface: expected an interface name of 1 to %zu bytes, got '%s'",
                      sizeof o->cfg.capture.interface - 1, iface);
            goto done;
        }
        o->cfg.capture.dpdk = false;
        snprintf(o->cfg.capture.interface, sizeof o->cfg.capture.interface, "%s", iface);
    }
    if (cli_get(opts, "bpf"))
        snprintf(o->cfg.capture.bpf, sizeof o->cfg.capture.bpf, "%s", cli_get(opts, "bpf"));
    if (cli_get(opts, "user"))
        snprintf(o->cfg.service.user, sizeof o->cfg.service.user, "%s", cli_get(opts, "user"));
    uint32_t workers, readers;
    double interval;
    if (!cli_u32(cmd, opts, "workers", o->cfg.flow.workers, 1, 64, &workers) ||
        !cli_u32(cmd, opts, "readers", o->cfg.capture.readers, 1, 64, &readers) ||
        !cli_double(cmd, opts, "stats-interval", o->cfg.output.stats_interval, 0, 86400, &interval))
        goto done;
    o->cfg.flow.workers = workers;
    o->cfg.capture.readers = readers;
    o->cfg.output.stats_interval = interval;
    const char *file_path;
    if (!apply_no_model(cmd, opts, &o->cfg) || !apply_output(cmd, cli_get(opts, "output"), &o->cfg, false, &file_path) ||
        !validate(cmd, &o->cfg))
        goto done;
    /* a configuration this build cannot run is not "ok" (replay reads files, whatever the source) */
    if (o->cfg.capture.dpdk && !cap_dpdk_version()) {
        cli_error(cmd, "capture.source \"dpdk\": this netlm was built without DPDK (install libdpdk-dev and rebuild)");
        goto done;
    }
    if (cli_flag(opts, "check-config")) {
        printf("%s: ok\n", config ? config : "(defaults)");
        status = 0;
        goto done;
    }
    o->command = cmd;
    o->config_path = config;
    o->model_override = cli_get(opts, "model");
    status = sensor_run(o);
done:
    free(o);
    free(pos);
    return status;
}

struct replay_progress {
    struct cli_progress p;
};

static void replay_progress(void *user, uint64_t bytes, uint64_t frames, bool final)
{
    struct replay_progress *rp = user;
    if (final)
        cli_progress_end(&rp->p, bytes, frames, "frames");
    else
        cli_progress_update(&rp->p, bytes, frames, "frames");
}

int cmd_replay(int argc, char **argv)
{
    static const char *const cmd = "replay";
    struct cli_opt opts[] = {
        {"config", NULL, 'c', "FILE", "configuration (default: built-in defaults); its output section is not used", NULL},
        {"model", NULL, 'm', "DIR", "model directory (default: model.path, else the installed bundled model)", NULL},
        {"no-model", NULL, 0, NULL, "classification off: no model, flow and stats events only (model.task = \"none\")", NULL},
        {"output", NULL, 'o', "OUT", "events to a file (written whole, then renamed), '-' = stdout (default), "
                                     "'unix:PATH' = a unix stream socket", NULL},
        {"workers", NULL, 'w', "N", "flow worker threads (default flow.workers)", NULL},
        {"drop", NULL, 0, NULL, "a full ready queue skips sessions, as live capture does (default: the reader waits, "
                                "so every session is classified)", NULL},
        {"no-flow-events", NULL, 0, NULL, "no flow event at each flow's end", NULL},
        {"ready-packets", NULL, 0, "K", "a session is ready after K packets (session.ready_packets, default 8)", NULL},
        {"stats-interval", NULL, 0, "S", "seconds between stats events (default 0: one at the end)", NULL},
        {"emit-tokens", NULL, 0, NULL, "debug: the model input ids as \"tokens\" in each classification event", NULL},
        {"quiet", NULL, 'q', NULL, "no progress line", NULL},
        {0},
    };
    const char **pos = NULL;
    int npos = 0;
    int rc = cli_parse(cmd, "FILE... [-c FILE] [-m DIR | --no-model] [-o OUT] [-w N] [--drop] [OPTIONS]",
                       "Runs the sensor's pipeline over pcap/pcapng files (or folders of them) as fast as the\n"
                       "machine allows; the flow table's clock is the packets' time. Events as `netlm sensor`\n"
                       "writes them, plus pcap_filename. SIGTERM/SIGINT stop reading and drain.",
                       opts, argc, argv, &pos, &npos);
    if (rc != CLI_PARSED)
        return rc == CLI_HELP_SHOWN ? 0 : 2;
    int status = 2;
    char **files = NULL;
    int n_files = 0;
    struct sensor_options *o = calloc(1, sizeof *o);
    if (!o) {
        cli_error(cmd, "out of memory");
        goto done;
    }
    if (npos == 0) {
        cli_error(cmd, "no capture file given");
        goto done;
    }
    const char *config = cli_get(opts, "config");
    if (!load_config(cmd, config, &o->cfg))
        goto done;
    o->cfg.output.kind = CFG_OUTPUT_STDOUT;
    o->cfg.output.flow_events = !cli_flag(opts, "no-flow-events");
    uint32_t workers, ready;
    double interval;
    if (!cli_u32(cmd, opts, "workers", o->cfg.flow.workers, 1, 64, &workers) ||
        !cli_u32(cmd, opts, "ready-packets", o->cfg.session.ready_packets, 1, 4096, &ready) ||
        !cli_double(cmd, opts, "stats-interval", 0, 0, 86400, &interval))
        goto done;
    o->cfg.flow.workers = workers;
    o->cfg.session.ready_packets = ready;
    if (o->cfg.flow.packets_per_session < ready)
        o->cfg.flow.packets_per_session = ready;
    o->cfg.output.stats_interval = interval;
    if (!apply_no_model(cmd, opts, &o->cfg) || !apply_output(cmd, cli_get(opts, "output"), &o->cfg, true, &o->output_path) ||
        !validate(cmd, &o->cfg))
        goto done;
    uint64_t total = 0;
    n_files = cli_collect_files(cmd, pos, npos, &files, &total);
    if (n_files < 0) {
        n_files = 0;
        status = 1;
        goto done;
    }
    struct replay_progress rp;
    cli_progress_start(&rp.p, cmd, total, cli_flag(opts, "quiet"));
    o->command = cmd;
    o->config_path = config;
    o->model_override = cli_get(opts, "model");
    o->replay = true;
    o->files = files;
    o->n_files = n_files;
    o->total_bytes = total;
    o->drop = cli_flag(opts, "drop");
    o->emit_tokens = cli_flag(opts, "emit-tokens");
    o->progress = replay_progress;
    o->progress_user = &rp;
    status = sensor_run(o);
done:
    cli_free_files(files, n_files);
    free(o);
    free(pos);
    return status;
}
