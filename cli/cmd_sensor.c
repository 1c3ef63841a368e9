/* cmd_sensor.c — `netlm sensor` (the live service) and `netlm replay` (the same pipeline over
 * capture files): options and configuration into sensor_options, then sensor_run(). Everything
 * that can be checked before a thread starts is checked here, so a bad flag, config, model path
 * or file ends with one line and nothing written. */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "capture/capture.h"
#include "cli/cli.h"
#include "config/config.h"
#include "model/model.h"
#include "sensor/sensor.h"

/* -o: "-" = stdout, "unix:PATH" = a unix stream socket, anything else a file. */
static bool apply_output(const char *cmd, const char *out, struct cfg_sensor *c, bool replay,
                         const char **file_path)
{
    *file_path = NULL;
    if (!out)
        return true;
    if (!*out) {
        cli_error(cmd, "-o: expected a file, '-' (stdout) or 'unix:PATH', got ''");
        return false;
    }
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

/* replay writes where its options say, so its config's output section only has to read well */
static bool load_config(const char *cmd, const char *path, bool replay, struct cfg_sensor *c)
{
    char err[1024];
    if (!path) {
        cfg_defaults(c);
        return true;
    }
    if ((replay ? cfg_load_unused_output(path, c, err, sizeof err) : cfg_load(path, c, err, sizeof err)) != 0) {
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

/* A string option into a config field, refused (as the file's key would be) when it does not fit
 * rather than cut to another value. */
static bool apply_string(const char *cmd, const struct cli_opt *opts, const char *name, char *field, size_t size)
{
    const char *v = cli_get(opts, name);
    if (!v)
        return true;
    if (strlen(v) >= size) {
        cli_error(cmd, "--%s: expected a string of at most %zu bytes, got %zu bytes", name, size - 1, strlen(v));
        return false;
    }
    snprintf(field, size, "%s", v);
    return true;
}

/* Which option set the values that check_host looks at, so that its message names what the user
 * wrote: the flag, else the configuration's key (after the file's name, as cfg_validate's
 * messages start). */
struct origin {
    const char *config; /* -c FILE, or NULL */
    const char *model;  /* -m DIR, or NULL */
    bool bpf, user, output;
    bool replay;
};

static const char *origin_name(char *buf, size_t size, const struct origin *from, bool flag_given, const char *flag,
                               const char *key)
{
    if (flag_given)
        snprintf(buf, size, "%s", flag);
    else if (from->config)
        snprintf(buf, size, "%s: %s", from->config, key);
    else
        snprintf(buf, size, "%s", key);
    return buf;
}

/* "no such directory" for what stat() said of a path that should be a directory. */
static const char *not_a_directory(int stat_rc, int err)
{
    if (stat_rc == 0)
        return "not a directory";
    return err == ENOENT || err == ENOTDIR ? "no such directory" : strerror(err);
}

/* What cfg_validate cannot see in the values alone, asked of this machine before anything is
 * opened, so that --check-config's "ok" means the start gets past these too: the capture filter
 * compiles, the readers' CPUs are this process's, the model directory exists on a device this
 * build has, the output file's folder exists, and the user (and group) to switch to exist. Each is
 * a compile, a lookup or a stat, in the order the start meets them. Replay reads files with one
 * reader, writes where -o says and switches no user. */
static bool check_host(const char *cmd, const struct cfg_sensor *c, const struct origin *from)
{
    char name[CFG_PATH_MAX + 64], why[CFG_PATH_MAX + 1024];
    if (!cap_filter_check(c->capture.bpf, why, sizeof why)) {
        cli_error(cmd, "%s: %s", origin_name(name, sizeof name, from, from->bpf, "--bpf", "capture.bpf"), why);
        return false;
    }
    if (!from->replay && cfg_check_cpus_allowed(c, why, sizeof why) != 0) {
        cli_error(cmd, "%s", why);
        return false;
    }
    if (c->model.task != CFG_TASK_NONE) {
        const bool flag = from->model && from->model[0];
        const char *dir = flag ? from->model : c->model.path;
        struct stat st;
        const int rc = stat(dir, &st), stat_errno = errno;
        if (rc != 0 || !S_ISDIR(st.st_mode)) {
            if (!flag && strcmp(dir, NETLM_DEFAULT_MODEL) == 0)
                cli_error(cmd, "model %s not found (the bundled model is installed there by 'cmake --install'); "
                          "pass -m DIR or set model.path", dir);
            else
                cli_error(cmd, "%s %s: %s", origin_name(name, sizeof name, from, flag, "-m", "model.path"), dir,
                          not_a_directory(rc, stat_errno));
            return false;
        }
        int device;
        char versions[128];
        if (model_device_parse(c->model.device, &device) && device >= 0 && !model_cuda_versions(versions, sizeof versions)) {
            cli_error(cmd, "%s \"%s\": this netlm was built without CUDA (no nvcc at build time, or NETLM_CUDA=OFF)",
                      origin_name(name, sizeof name, from, false, "", "model.device"), c->model.device);
            return false;
        }
    }
    if (c->output.kind == CFG_OUTPUT_FILE) {
        /* the file is created at start: its folder must be there, and the name not be a folder */
        const char *file = c->output.filename;
        const char *slash = strrchr(file, '/');
        char dir[CFG_PATH_MAX];
        if (slash)
            snprintf(dir, sizeof dir, "%.*s", slash == file ? 1 : (int)(slash - file), file);
        else
            snprintf(dir, sizeof dir, ".");
        origin_name(name, sizeof name, from, from->output, "-o", "output.filename");
        struct stat st;
        const int rc = stat(dir, &st), stat_errno = errno;
        if (rc != 0 || !S_ISDIR(st.st_mode)) {
            cli_error(cmd, "%s %s: folder %s: %s", name, file, dir, not_a_directory(rc, stat_errno));
            return false;
        }
        if (stat(file, &st) == 0 && S_ISDIR(st.st_mode)) {
            cli_error(cmd, "%s %s: is a directory, not a file", name, file);
            return false;
        }
    }
    /* only a root start switches user; anyone else stays who they are and never looks them up */
    if (!from->replay && geteuid() == 0 && c->service.user[0]) {
        if (!getpwnam(c->service.user)) {
            cli_error(cmd, "%s '%s': no such user (started as root, the sensor becomes this user once capture is open)",
                      origin_name(name, sizeof name, from, from->user, "--user", "service.user"), c->service.user);
            return false;
        }
        if (c->service.group[0] && !getgrnam(c->service.group)) {
            cli_error(cmd, "%s '%s': no such group",
                      origin_name(name, sizeof name, from, false, "", "service.group"), c->service.group);
            return false;
        }
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
                       "the output file, SIGUSR2 reloads the model and the [SIGUSR2] keys; SIGUSR1 is ignored.",
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
    if (!load_config(cmd, config, false, &o->cfg))
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
    if (!apply_string(cmd, opts, "bpf", o->cfg.capture.bpf, sizeof o->cfg.capture.bpf) ||
        !apply_string(cmd, opts, "user", o->cfg.service.user, sizeof o->cfg.service.user))
        goto done;
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
    const struct origin from = {
        .config = config,
        .model = cli_get(opts, "model"),
        .bpf = cli_flag(opts, "bpf"),
        .user = cli_flag(opts, "user"),
        .output = cli_flag(opts, "output"),
    };
    if (!check_host(cmd, &o->cfg, &from))
        goto done;
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
        {"config", NULL, 'c', "FILE", "configuration (default: built-in defaults); capture.bpf filters the files, the output "
                                     "section is not used", NULL},
        {"model", NULL, 'm', "DIR", "model directory (default: model.path, else the installed bundled model)", NULL},
        {"no-model", NULL, 0, NULL, "classification off: no model, flow and stats events only (model.task = \"none\")", NULL},
        {"output", NULL, 'o', "OUT", "events to a file (written whole, then renamed), '-' = stdout (default), "
                                     "'unix:PATH' = a unix stream socket", NULL},
        {"workers", NULL, 'w', "N", "flow worker threads (default flow.workers)", NULL},
        {"drop", NULL, 0, NULL, "a full ready queue skips sessions, as live capture does (default: the reader waits, "
                                "so every session is classified)", NULL},
        {"no-flow-events", NULL, 0, NULL, "no flow event at each flow's end", NULL},
        {"ready-packets", NULL, 0, "K", "a session is ready after K packets, 1 to 1024 (session.ready_packets, default 8)", NULL},
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
    if (!load_config(cmd, config, true, &o->cfg))
        goto done;
    o->cfg.output.kind = CFG_OUTPUT_STDOUT;
    o->cfg.output.flow_events = !cli_flag(opts, "no-flow-events");
    uint32_t workers, ready;
    double interval;
    if (!cli_u32(cmd, opts, "workers", o->cfg.flow.workers, 1, 64, &workers) ||
        !cli_u32(cmd, opts, "ready-packets", o->cfg.session.ready_packets, 1, CFG_SESSION_PACKETS_MAX, &ready) ||
        !cli_double(cmd, opts, "stats-interval", 0, 0, 86400, &interval))
        goto done;
    o->cfg.flow.workers = workers;
    o->cfg.session.ready_packets = ready;
    if (o->cfg.flow.packets_per_session < ready)
        o->cfg.flow.packets_per_session = ready;
    o->cfg.output.stats_interval = interval;
    const struct origin from = {
        .config = config,
        .model = cli_get(opts, "model"),
        .output = cli_flag(opts, "output"),
        .replay = true,
    };
    if (!apply_no_model(cmd, opts, &o->cfg) || !apply_output(cmd, cli_get(opts, "output"), &o->cfg, true, &o->output_path) ||
        !validate(cmd, &o->cfg) || !check_host(cmd, &o->cfg, &from))
        goto done;
    uint64_t total = 0;
    n_files = cli_collect_inputs(cmd, pos, npos, true, &files, &total);
    if (n_files < 0) {
        n_files = 0;
        status = 1;
        goto done;
    }
    if (o->output_path && !cli_output_not_input(cmd, o->output_path))
        goto done;
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
