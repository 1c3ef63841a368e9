/* test_config.c — the sensor's configuration: defaults, the shipped config/netlm.conf (loads to
 * exactly the defaults, documents every key with when it takes effect), every kind of error
 * with its exact FILE:LINE: KEY prefix, the rules across keys, and a round trip of a file that
 * sets every key. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <libconfig.h>

#include "config/config.h"

#define SHIPPED NETLM_SOURCE_DIR "/config/netlm.conf"
#define NAME "test.conf"

/* Every key of the file, and when a change to it takes effect. */
static const struct {
    const char *key;
    bool sigusr2;
} all_keys[] = {
    {"capture.interface", false}, {"capture.snaplen", false}, {"capture.buffer_mb", false},
    {"capture.promiscuous", false}, {"capture.bpf", false}, {"capture.tunnels", false},
    {"capture.source", false}, {"capture.dpdk.port", false}, {"capture.dpdk.eal", false},
    {"capture.dpdk.rx_descriptors", false}, {"capture.dpdk.mbufs", false}, {"capture.dpdk.busy_poll", false},
    {"capture.readers", false}, {"capture.cpus", false},
    {"flow.max_flows", false}, {"flow.packets_per_session", false},
    {"flow.bytes_per_packet", false}, {"flow.port_reuse", false}, {"flow.workers", false},
    {"flow.timeouts.tcp_new", false}, {"flow.timeouts.tcp_established", false},
    {"flow.timeouts.tcp_closed", false}, {"flow.timeouts.udp_new", false},
    {"flow.timeouts.udp_established", false}, {"flow.timeouts.other_new", false},
    {"flow.timeouts.other_established", false}, {"flow.emergency.enter_pct", false},
    {"flow.emergency.leave_pct", false}, {"flow.emergency.timeouts.tcp_new", false},
    {"flow.emergency.timeouts.tcp_established", false},
    {"flow.emergency.timeouts.tcp_closed", false}, {"flow.emergency.timeouts.udp_new", false},
    {"flow.emergency.timeouts.udp_established", false},
    {"flow.emergency.timeouts.other_new", false},
    {"flow.emergency.timeouts.other_established", false}, {"session.ready_packets", false},
    {"session.queue_size", false}, {"model.path", true}, {"model.task", true},
    {"model.threads", false}, {"model.device", false}, {"model.residual", false}, {"model.batch_max", true},
    {"model.batch_timeout_us", true}, {"model.top_k", true}, {"model.max_new_tokens", true},
    {"output.type", false}, {"output.filename", false}, {"output.socket", false},
    {"output.flow_events", false}, {"output.stats_interval", false}, {"service.user", false},
    {"service.group", false},
};
#define N_KEYS (sizeof(all_keys) / sizeof(all_keys[0]))

/* libconfig 1.5 leaks the string token a syntax error stops at (`"x"` where a setting name
 * belongs); test_syntax_errors has such a case, and the sanitizer build must not fail on the
 * library's few bytes. Only frames in libconfig are excused. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:libconfig.so\n";
}

/* ---- helpers ---- */

/* Text that sets one key ("flow.timeouts.tcp_new") to value (as written), each group on its own
 * line, so the key sits on line (number of dots + 1). */
static char *nested(const char *key, const char *value)
{
    static char buf[16384];
    char parts[4][64];
    int n = 0;
    for (const char *p = key; n < 4; n++) {
        size_t len = strcspn(p, ".");
        memcpy(parts[n], p, len);
        parts[n][len] = '\0';
        if (!p[len]) {
            n++;
            break;
        }
        p += len + 1;
    }
    size_t k = 0;
    for (int i = 0; i < n - 1; i++)
        k += (size_t)snprintf(buf + k, sizeof(buf) - k, "%*s%s = {\n", 2 * i, "", parts[i]);
    k += (size_t)snprintf(buf + k, sizeof(buf) - k, "%*s%s = %s;\n", 2 * (n - 1), "",
                          parts[n - 1], value);
    for (int i = n - 2; i >= 0; i--)
        k += (size_t)snprintf(buf + k, sizeof(buf) - k, "%*s};\n", 2 * i, "");
    return buf;
}

static unsigned key_line(const char *key)
{
    unsigned line = 1;
    for (const char *p = key; *p; p++)
        line += *p == '.';
    return line;
}

/* Loads text, which must fail with exactly want. */
static void expect_error(const char *text, const char *want)
{
    struct cfg_sensor c;
    char err[1024];
    memset(err, 0, sizeof(err));
    int rc = cfg_load_buffer(NAME, text, &c, err, sizeof(err));
    if (rc == 0 || strcmp(err, want) != 0)
        fail_msg("text:\n%s\nwant: %s\ngot (%d): %s", text, want, rc, err);
}

/* Loads text, which must fail with a message that starts "test.conf:LINE: KEY: expected" (or
 * "test.conf:LINE: " + rest when key is NULL). */
static void expect_error_at(const char *text, unsigned line, const char *key)
{
    struct cfg_sensor c;
    char err[1024], want[256];
    snprintf(want, sizeof(want), NAME ":%u: %s%s", line, key ? key : "", key ? ": expected " : "");
    int rc = cfg_load_buffer(NAME, text, &c, err, sizeof(err));
    if (rc == 0 || strncmp(err, want, strlen(want)) != 0 || strchr(err, '\n'))
        fail_msg("text:\n%s\nwant a message starting: %s\ngot (%d): %s", text, want, rc,
                 rc ? err : "");
}

static void expect_ok(const char *text, struct cfg_sensor *c)
{
    char err[1024] = "";
    if (cfg_load_buffer(NAME, text, c, err, sizeof(err)) != 0)
        fail_msg("text:\n%s\nfailed: %s", text, err);
}

#define EXPECT_FIELD(a, b, field)                                                                 \
    do {                                                                                          \
        if ((a)->field != (b)->field)                                                             \
            fail_msg("%s differs", #field);                                                       \
    } while (0)
#define EXPECT_STRING(a, b, field)                                                                \
    do {                                                                                          \
        if (strcmp((a)->field, (b)->field) != 0)                                                  \
            fail_msg("%s differs: \"%s\" / \"%s\"", #field, (a)->field, (b)->field);              \
    } while (0)

static void expect_timeouts_equal(const struct cfg_timeouts *a, const struct cfg_timeouts *b)
{
    EXPECT_FIELD(a, b, tcp_new);
    EXPECT_FIELD(a, b, tcp_established);
    EXPECT_FIELD(a, b, tcp_closed);
    EXPECT_FIELD(a, b, udp_new);
    EXPECT_FIELD(a, b, udp_established);
    EXPECT_FIELD(a, b, other_new);
    EXPECT_FIELD(a, b, other_established);
}

/* Field by field (a failure names the field), then byte for byte, which also catches a field
 * added to the struct but not here. path is not compared. */
static void expect_same_config(const struct cfg_sensor *a, const struct cfg_sensor *b)
{
    EXPECT_STRING(a, b, capture.interface);
    EXPECT_FIELD(a, b, capture.snaplen);
    EXPECT_FIELD(a, b, capture.buffer_mb);
    EXPECT_FIELD(a, b, capture.promiscuous);
    EXPECT_STRING(a, b, capture.bpf);
    EXPECT_FIELD(a, b, capture.tunnels_inner);
    EXPECT_FIELD(a, b, flow.max_flows);
    EXPECT_FIELD(a, b, flow.packets_per_session);
    EXPECT_FIELD(a, b, flow.bytes_per_packet);
    EXPECT_FIELD(a, b, flow.port_reuse_merge);
    EXPECT_FIELD(a, b, flow.workers);
    expect_timeouts_equal(&a->flow.timeouts, &b->flow.timeouts);
    EXPECT_FIELD(a, b, flow.emergency_enter_pct);
    EXPECT_FIELD(a, b, flow.emergency_leave_pct);
    expect_timeouts_equal(&a->flow.emergency_timeouts, &b->flow.emergency_timeouts);
    EXPECT_FIELD(a, b, session.ready_packets);
    EXPECT_FIELD(a, b, session.queue_size);
    EXPECT_STRING(a, b, model.path);
    EXPECT_FIELD(a, b, model.task);
    EXPECT_FIELD(a, b, model.threads);
    EXPECT_STRING(a, b, model.device);
    EXPECT_FIELD(a, b, model.residual_bf16);
    EXPECT_FIELD(a, b, model.batch_max);
    EXPECT_FIELD(a, b, model.batch_timeout_us);
    EXPECT_FIELD(a, b, model.top_k);
    EXPECT_FIELD(a, b, model.max_new_tokens);
    EXPECT_FIELD(a, b, output.kind);
    EXPECT_STRING(a, b, output.filename);
    EXPECT_STRING(a, b, output.socket);
    EXPECT_FIELD(a, b, output.flow_events);
    EXPECT_FIELD(a, b, output.stats_interval);
    EXPECT_STRING(a, b, service.user);
    EXPECT_STRING(a, b, service.group);
    size_t from = offsetof(struct cfg_sensor, capture);
    assert_memory_equal((const char *)a + from, (const char *)b + from, sizeof(*a) - from);
}

/* A configuration as libconfig text: every key, in the file's layout. */
static void append(char *buf, size_t size, const char *fmt, ...)
{
    size_t k = strlen(buf);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + k, size - k, fmt, ap);
    va_end(ap);
}

static void write_timeouts(char *buf, size_t size, const struct cfg_timeouts *t)
{
    append(buf, size,
           "timeouts = { tcp_new = %.17g; tcp_established = %.17g; tcp_closed = %.17g;\n"
           "udp_new = %.17g; udp_established = %.17g; other_new = %.17g; other_established = %.17g; };\n",
           t->tcp_new, t->tcp_established, t->tcp_closed, t->udp_new, t->udp_established,
           t->other_new, t->other_established);
}

static void write_config(const struct cfg_sensor *c, char *buf, size_t size)
{
    buf[0] = '\0';
    append(buf, size,
           "capture = { interface = \"%s\"; snaplen = %u; buffer_mb = %u; promiscuous = %s;\n"
           "bpf = \"%s\"; tunnels = \"%s\"; };\n",
           c->capture.interface, c->capture.snaplen, c->capture.buffer_mb,
           c->capture.promiscuous ? "true" : "false", c->capture.bpf,
           c->capture.tunnels_inner ? "inner" : "outer");
    append(buf, size,
           "flow = { max_flows = %u; packets_per_session = %u; bytes_per_packet = %u;\n"
           "port_reuse = \"%s\"; workers = %u;\n",
           c->flow.max_flows, c->flow.packets_per_session, c->flow.bytes_per_packet,
           c->flow.port_reuse_merge ? "merge" : "split", c->flow.workers);
    write_timeouts(buf, size, &c->flow.timeouts);
    append(buf, size, "emergency = { enter_pct = %u; leave_pct = %u;\n",
           c->flow.emergency_enter_pct, c->flow.emergency_leave_pct);
    write_timeouts(buf, size, &c->flow.emergency_timeouts);
    append(buf, size, "}; };\nsession = { ready_packets = %u; queue_size = %u; };\n",
           c->session.ready_packets, c->session.queue_size);
    append(buf, size,
           "model = { path = \"%s\"; task = \"%s\"; threads = %u; device = \"%s\"; residual = \"%s\";\n"
           "batch_max = %u; batch_timeout_us = %u; top_k = %u; max_new_tokens = %u; };\n",
           c->model.path, cfg_task_name(c->model.task), c->model.threads, c->model.device,
           c->model.residual_bf16 ? "bf16" : "fp32", c->model.batch_max, c->model.batch_timeout_us, c->model.top_k,
           c->model.max_new_tokens);
    append(buf, size,
           "output = { type = \"%s\"; filename = \"%s\"; socket = \"%s\"; flow_events = %s;\n"
           "stats_interval = %.17g; };\n",
           cfg_output_kind_name(c->output.kind), c->output.filename, c->output.socket,
           c->output.flow_events ? "true" : "false", c->output.stats_interval);
    append(buf, size, "service = { user = \"%s\"; group = \"%s\"; };\n", c->service.user,
           c->service.group);
}

static char *make_temp_dir(void)
{
    static char dir[64];
    snprintf(dir, sizeof(dir), "/tmp/test_config.XXXXXX");
    assert_non_null(mkdtemp(dir));
    return dir;
}

static void write_file(const char *path, const void *bytes, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* ---- defaults and names ---- */

static void test_defaults(void **state)
{
    (void)state;
    struct cfg_sensor c;
    memset(&c, 0x5a, sizeof(c));
    cfg_defaults(&c);
    assert_string_equal(c.path, "");
    assert_string_equal(c.capture.interface, "eth0");
    assert_int_equal(c.capture.snaplen, 262144);
    assert_int_equal(c.capture.buffer_mb, 64);
    assert_true(c.capture.promiscuous);
    assert_string_equal(c.capture.bpf, "");
    assert_false(c.capture.tunnels_inner);
    assert_false(c.capture.dpdk);
    assert_string_equal(c.capture.dpdk_port.port, "");
    assert_string_equal(c.capture.dpdk_port.eal, "");
    assert_int_equal(c.capture.dpdk_port.rx_descriptors, 4096);
    assert_int_equal(c.capture.dpdk_port.mbufs, 0);
    assert_false(c.capture.dpdk_port.busy_poll);
    assert_int_equal(c.flow.max_flows, 1048576);
    assert_int_equal(c.flow.packets_per_session, 32);
    assert_int_equal(c.flow.bytes_per_packet, 128);
    assert_false(c.flow.port_reuse_merge);
    assert_int_equal(c.flow.workers, 2);
    const struct cfg_timeouts suricata = {60, 600, 60, 30, 300, 30, 300};
    const struct cfg_timeouts suricata_emergency = {5, 100, 10, 10, 100, 10, 100};
    expect_timeouts_equal(&c.flow.timeouts, &suricata);
    assert_int_equal(c.flow.emergency_enter_pct, 95);
    assert_int_equal(c.flow.emergency_leave_pct, 70);
    expect_timeouts_equal(&c.flow.emergency_timeouts, &suricata_emergency);
    assert_int_equal(c.session.ready_packets, 8);
    assert_int_equal(c.session.queue_size, 4096);
    assert_string_equal(c.model.path, NETLM_DEFAULT_MODEL);
    assert_int_equal(c.model.task, CFG_TASK_AUTO);
    assert_int_equal(c.model.threads, 0);
    assert_string_equal(c.model.device, "cpu");
    assert_true(c.model.residual_bf16); /* on a GPU, as PyTorch's bf16 models */
    assert_int_equal(c.model.batch_max, 32);
    assert_int_equal(c.model.batch_timeout_us, 2000);
    assert_int_equal(c.model.top_k, 3);
    assert_int_equal(c.model.max_new_tokens, 0);
    assert_int_equal(c.output.kind, CFG_OUTPUT_FILE);
    assert_string_equal(c.output.filename, "/var/log/netlm/eve.json");
    assert_string_equal(c.output.socket, "");
    assert_true(c.output.flow_events);
    assert_true(c.output.stats_interval == 10.0);
    assert_string_equal(c.service.user, "netlm");
    assert_string_equal(c.service.group, "");

    char err[256];
    assert_int_equal(cfg_validate(&c, err, sizeof(err)), 0);
    /* an empty file is the defaults too */
    struct cfg_sensor empty;
    expect_ok("", &empty);
    assert_string_equal(empty.path, NAME);
    expect_same_config(&empty, &c);
}

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(cfg_task_name(CFG_TASK_AUTO), "auto");
    assert_string_equal(cfg_task_name(CFG_TASK_CLASSIFY), "classify");
    assert_string_equal(cfg_task_name(CFG_TASK_GENERATE), "generate");
    assert_string_equal(cfg_task_name(CFG_TASK_NONE), "none");
    assert_string_equal(cfg_task_name((enum cfg_task)7), "unknown");
    assert_string_equal(cfg_output_kind_name(CFG_OUTPUT_FILE), "file");
    assert_string_equal(cfg_output_kind_name(CFG_OUTPUT_STDOUT), "stdout");
    assert_string_equal(cfg_output_kind_name(CFG_OUTPUT_UNIX_STREAM), "unix_stream");
    assert_string_equal(cfg_output_kind_name((enum cfg_output_kind)-1), "unknown");
}

/* ---- the shipped file ---- */

static void test_shipped_file_is_the_defaults(void **state)
{
    (void)state;
    struct cfg_sensor loaded, defaults;
    char err[1024] = "";
    if (cfg_load(SHIPPED, &loaded, err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_string_equal(loaded.path, SHIPPED);
    cfg_defaults(&defaults);
    expect_same_config(&loaded, &defaults);
}

/* The comment block right above a line (the lines starting with #), joined. */
static void comment_above(char **lines, unsigned line, char *out, size_t size)
{
    out[0] = '\0';
    for (unsigned l = line - 1; l >= 1; l--) {
        const char *p = lines[l - 1] + strspn(lines[l - 1], " \t");
        if (*p != '#')
            break;
        append(out, size, "%s ", p);
    }
}

static void test_shipped_file_documents_every_key(void **state)
{
    (void)state;
    /* every key present, nothing else */
    config_t lc;
    config_init(&lc);
    if (!config_read_file(&lc, SHIPPED))
        fail_msg("%s:%d: %s", SHIPPED, config_error_line(&lc), config_error_text(&lc));
    FILE *f = fopen(SHIPPED, "r");
    assert_non_null(f);
    static char text[1 << 16];
    size_t len = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[len] = '\0';
    char *lines[2048];
    unsigned n_lines = 0;
    for (char *p = text; p && n_lines < 2048; n_lines++) {
        lines[n_lines] = p;
        p = strchr(p, '\n');
        if (p)
            *p++ = '\0';
    }

    size_t leaves = 0;
    for (size_t i = 0; i < N_KEYS; i++) {
        const config_setting_t *s = config_lookup(&lc, all_keys[i].key);
        if (!s || config_setting_is_group(s))
            fail_msg("%s: %s is missing", SHIPPED, all_keys[i].key);
        /* the marker of a key: in the comment above it, else above its group's, and so on */
        const char *marker = NULL;
        for (; s && s->parent && !marker; s = s->parent) {
            char comment[4096];
            comment_above(lines, config_setting_source_line(s), comment, sizeof(comment));
            if (strstr(comment, "[restart]"))
                marker = "[restart]";
            if (strstr(comment, "[SIGUSR2]"))
                marker = marker ? "both" : "[SIGUSR2]";
        }
        const char *want = all_keys[i].sigusr2 ? "[SIGUSR2]" : "[restart]";
        if (!marker || strcmp(marker, want) != 0)
            fail_msg("%s: the comment of %s says %s, want %s", SHIPPED, all_keys[i].key,
                     marker ? marker : "nothing", want);
        leaves++;
    }
    /* count the scalars in the file: no key beyond the list */
    size_t scalars = 0;
    const config_setting_t *stack[16] = {config_root_setting(&lc)};
    int depth = 1;
    while (depth > 0) {
        const config_setting_t *g = stack[--depth];
        for (int i = 0; i < config_setting_length(g); i++) {
            const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
            if (config_setting_is_group(s))
                stack[depth++] = s;
            else
                scalars++;
        }
    }
    assert_int_equal(scalars, leaves);
    config_destroy(&lc);

    /* the header: signals and command-line overrides */
    static char whole[1 << 16];
    f = fopen(SHIPPED, "r");
    assert_non_null(f);
    whole[fread(whole, 1, sizeof(whole) - 1, f)] = '\0';
    fclose(f);
    static const char *const documented[] = {
        "SIGHUP", "SIGUSR2", "SIGTERM", "-i, --interface", "-m, --model", "-o, --output",
        "-w, --workers", "--bpf", "--user", "[restart]", "[SIGUSR2]",
    };
    for (size_t i = 0; i < sizeof(documented) / sizeof(documented[0]); i++)
        if (!strstr(whole, documented[i]))
            fail_msg("%s does not document %s", SHIPPED, documented[i]);
}

/* ---- one key at a time ---- */

struct range_case {
    const char *key;
    const char *expected; /* after "expected " */
    const char *good[4];
    const char *bad[6]; /* what the message shows after "got " is the value as written */
};

static const struct range_case range_cases[] = {
    {"capture.snaplen", "an integer from 64 to 262144", {"64", "262144", "1500"},
     {"63", "262145", "-1", "0"}},
    {"capture.buffer_mb", "an integer from 1 to 4096", {"1", "4096"}, {"0", "4097"}},
    {"flow.max_flows", "an integer from 16 to 1073741824", {"32", "1073741824", "1024L"},
     {"15", "1073741825", "3", "2147483648L"}},
    {"flow.packets_per_session", "an integer from 1 to 1024", {"8", "1024"}, {"0", "1025"}},
    {"flow.bytes_per_packet", "an integer from 16 to 65535", {"16", "65535"}, {"15", "65536"}},
    {"flow.workers", "an integer from 1 to 64", {"1", "64", "0x10"}, {"0", "65", "-2"}},
    {"flow.emergency.enter_pct", "an integer from 0 to 100", {"0", "100"}, {"101", "-1"}},
    {"flow.emergency.leave_pct", "an integer from 0 to 100", {"0", "50"}, {"101"}},
    {"session.ready_packets", "an integer from 1 to 1024", {"1", "32"}, {"0", "1025"}},
    {"session.queue_size", "an integer from 16 to 1048576", {"16", "1048576"},
     {"15", "1048577"}},
    {"model.threads", "an integer from 0 to 1024", {"0", "1024"}, {"1025", "-1"}},
    {"model.batch_max", "an integer from 1 to 4096", {"1", "4096"}, {"0", "4097"}},
    {"model.batch_timeout_us", "an integer from 0 to 10000000", {"0", "10000000"},
     {"10000001", "-1"}},
    {"model.top_k", "an integer from 1 to 100", {"1", "100"}, {"0", "101"}},
    {"model.max_new_tokens", "an integer from 0 to 65536", {"0", "65536"}, {"65537"}},
    {"flow.timeouts.tcp_new", "a number of seconds from 0 to 10000000",
     {"0", "0.5", "10000000", "60L"}, {"-1", "-0.5", "10000000.5", "1e400"}},
    {"flow.timeouts.other_established", "a number of seconds from 0 to 10000000", {"7.25"},
     {"10000001"}},
    {"flow.emergency.timeouts.udp_new", "a number of seconds from 0 to 10000000", {"1"},
     {"-3"}},
    {"output.stats_interval", "a number of seconds from 0 to 86400", {"0", "86400", "0.1"},
     {"86400.5", "-1"}},
};

static void test_ranges(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(range_cases) / sizeof(range_cases[0]); i++) {
        const struct range_case *rc = &range_cases[i];
        struct cfg_sensor c;
        for (size_t g = 0; g < 4 && rc->good[g]; g++)
            expect_ok(nested(rc->key, rc->good[g]), &c);
        for (size_t b = 0; b < 6 && rc->bad[b]; b++) {
            char want[512];
            const char *shown = strcmp(rc->bad[b], "1e400") == 0 ? "inf"
                                : strcmp(rc->bad[b], "2147483648L") == 0 ? "2147483648"
                                : rc->bad[b];
            snprintf(want, sizeof(want), NAME ":%u: %s: expected %s, got %s", key_line(rc->key),
                     rc->key, rc->expected, shown);
            expect_error(nested(rc->key, rc->bad[b]), want);
        }
    }
    /* the values land where they belong */
    struct cfg_sensor c;
    expect_ok(nested("flow.emergency.timeouts.other_new", "2.5"), &c);
    assert_true(c.flow.emergency_timeouts.other_new == 2.5);
    assert_true(c.flow.timeouts.other_new == 30.0);
    expect_ok(nested("flow.timeouts.tcp_closed", "7"), &c);
    assert_true(c.flow.timeouts.tcp_closed == 7.0);
    assert_true(c.flow.emergency_timeouts.tcp_closed == 10.0);
    expect_ok(nested("flow.workers", "0x10"), &c);
    assert_int_equal(c.flow.workers, 16);
    expect_ok(nested("flow.max_flows", "1073741824L"), &c);
    assert_int_equal(c.flow.max_flows, 1u << 30);
}

/* Values of the wrong type, in every kind of key. */
static void test_types(void **state)
{
    (void)state;
    static const struct {
        const char *key, *value, *message;
    } cases[] = {
        {"flow.workers", "2.0", "expected an integer from 1 to 64, got 2.0"},
        {"flow.workers", "\"2\"", "expected an integer from 1 to 64, got \"2\""},
        {"flow.workers", "true", "expected an integer from 1 to 64, got true"},
        {"capture.snaplen", "{ }", "expected an integer from 64 to 262144, got a group"},
        {"capture.snaplen", "[1500]", "expected an integer from 64 to 262144, got an array"},
        {"capture.snaplen", "(1500, 9000)", "expected an integer from 64 to 262144, got a list"},
        {"flow.timeouts.udp_new", "\"30s\"",
         "expected a number of seconds from 0 to 10000000, got \"30s\""},
        {"flow.timeouts.udp_new", "false",
         "expected a number of seconds from 0 to 10000000, got false"},
        {"capture.promiscuous", "1", "expected true or false, got 1"},
        {"capture.promiscuous", "\"yes\"", "expected true or false, got \"yes\""},
        {"output.flow_events", "{ enabled = true; }", "expected true or false, got a group"},
        {"capture.interface", "0", "expected a string of 1 to 63 bytes, got 0"},
        {"capture.interface", "\"\"", "expected a string of 1 to 63 bytes, got \"\""},
        {"capture.bpf", "[\"tcp\"]", "expected a string of at most 1023 bytes, got an array"},
        {"service.user", "1000", "expected a string of at most 63 bytes, got 1000"},
        {"capture.tunnels", "\"Inner\"", "expected \"outer\" or \"inner\", got \"Inner\""},
        {"capture.tunnels", "true", "expected \"outer\" or \"inner\", got true"},
        {"flow.port_reuse", "\"splitcap\"", "expected \"split\" or \"merge\", got \"splitcap\""},
        {"model.task", "\"classification\"",
         "expected \"auto\", \"classify\", \"generate\" or \"none\", got \"classification\""},
        {"output.type", "\"eve\"",
         "expected \"file\", \"stdout\" or \"unix_stream\", got \"eve\""},
        {"output.type", "1", "expected \"file\", \"stdout\" or \"unix_stream\", got 1"},
        {"model.device", "\"gpu\"",
         "expected \"cpu\", \"cuda\" or \"cuda:N\" (N from 0 to 255), got \"gpu\""},
        {"model.device", "0", "expected \"cpu\", \"cuda\" or \"cuda:N\" (N from 0 to 255), got 0"},
        {"capture.bpf", "1.5", "expected a string of at most 1023 bytes, got 1.5"},
        /* a newline in a value does not break the message's line */
        {"capture.tunnels", "\"in\\nner\"", "expected \"outer\" or \"inner\", got \"in\\x0aner\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char want[512];
        snprintf(want, sizeof(want), NAME ":%u: %s: %s", key_line(cases[i].key), cases[i].key,
                 cases[i].message);
        expect_error(nested(cases[i].key, cases[i].value), want);
    }
    /* and the one with a newline in its value, as a valid string */
    struct cfg_sensor c;
    expect_ok(nested("service.group", "\"a\\nb\""), &c);
}

static void test_choices_and_devices(void **state)
{
    (void)state;
    struct cfg_sensor c;
    expect_ok(nested("capture.tunnels", "\"inner\""), &c);
    assert_true(c.capture.tunnels_inner);
    expect_ok(nested("capture.tunnels", "\"outer\""), &c);
    assert_false(c.capture.tunnels_inner);
    expect_ok(nested("flow.port_reuse", "\"merge\""), &c);
    assert_true(c.flow.port_reuse_merge);
    expect_ok("capture = { source = \"dpdk\"; dpdk = { port = \"0000:3b:00.0\"; eal = \"-l 2 -n 4\"; "
              "rx_descriptors = 2048; mbufs = 16384; busy_poll = true; }; readers = 4; };", &c);
    assert_true(c.capture.dpdk);
    assert_int_equal(c.capture.readers, 4);
    assert_string_equal(c.capture.dpdk_port.port, "0000:3b:00.0");
    assert_string_equal(c.capture.dpdk_port.eal, "-l 2 -n 4");
    assert_int_equal(c.capture.dpdk_port.rx_descriptors, 2048);
    assert_int_equal(c.capture.dpdk_port.mbufs, 16384);
    assert_true(c.capture.dpdk_port.busy_poll);
    expect_ok(nested("capture.source", "\"libpcap\""), &c);
    assert_false(c.capture.dpdk);
    expect_error_at(nested("capture.source", "\"pf_ring\""), 2, "capture.source");
    expect_ok(nested("model.task", "\"classify\""), &c);
    assert_int_equal(c.model.task, CFG_TASK_CLASSIFY);
    expect_ok(nested("model.task", "\"generate\""), &c);
    assert_int_equal(c.model.task, CFG_TASK_GENERATE);
    expect_ok(nested("model.task", "\"none\""), &c); /* a flow sensor: no model */
    assert_int_equal(c.model.task, CFG_TASK_NONE);
    expect_ok(nested("model.task", "\"auto\""), &c);
    assert_int_equal(c.model.task, CFG_TASK_AUTO);
    expect_ok(nested("model.residual", "\"fp32\""), &c);
    assert_false(c.model.residual_bf16);
    expect_ok(nested("model.residual", "\"bf16\""), &c);
    assert_true(c.model.residual_bf16);
    expect_error_at(nested("model.residual", "\"fp16\""), 2, "model.residual");
    char want[256];
    snprintf(want, sizeof(want),
             NAME ":%u: model.task: expected \"auto\", \"classify\", \"generate\" or \"none\", got \"off\"",
             key_line("model.task"));
    expect_error(nested("model.task", "\"off\""), want);
    expect_ok("output = { type = \"stdout\"; };", &c);
    assert_int_equal(c.output.kind, CFG_OUTPUT_STDOUT);
    expect_ok("output = { type = \"unix_stream\"; socket = \"/run/netlm/eve.sock\"; };", &c);
    assert_int_equal(c.output.kind, CFG_OUTPUT_UNIX_STREAM);
    assert_string_equal(c.output.socket, "/run/netlm/eve.sock");

    static const char *const good[] = {"cpu", "cuda", "cuda:0", "cuda:7", "cuda:15", "cuda:255"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char value[64];
        snprintf(value, sizeof(value), "\"%s\"", good[i]);
        expect_ok(nested("model.device", value), &c);
        assert_string_equal(c.model.device, good[i]);
    }
    static const char *const bad[] = {"", "CPU", "cuda:", "cuda:-1", "cuda:1x", "cuda:256",
                                      "cuda:01", "cuda0", "cuda:99999999999", " cpu", "cpu "};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char value[64];
        snprintf(value, sizeof(value), "\"%s\"", bad[i]);
        expect_error_at(nested("model.device", value), 2, "model.device");
    }
    /* model.path "" is the bundled model, as the shipped file writes it */
    expect_ok(nested("model.path", "\"\""), &c);
    assert_string_equal(c.model.path, NETLM_DEFAULT_MODEL);
    expect_ok(nested("model.path", "\"/srv/models/mine\""), &c);
    assert_string_equal(c.model.path, "/srv/models/mine");
}

/* Strings as long as their buffers allow, and one byte more. */
static void test_long_strings(void **state)
{
    (void)state;
    struct cfg_sensor c0;
    static const struct {
        const char *key;
        size_t max;
        unsigned min;
    } cases[] = {
        {"capture.interface", sizeof(c0.capture.interface) - 1, 1},
        {"capture.bpf", sizeof(c0.capture.bpf) - 1, 0},
        {"model.path", sizeof(c0.model.path) - 1, 1},
        {"output.filename", sizeof(c0.output.filename) - 1, 0},
        {"output.socket", sizeof(c0.output.socket) - 1, 0},
        {"service.user", sizeof(c0.service.user) - 1, 0},
        {"service.group", sizeof(c0.service.group) - 1, 0},
    };
    assert_int_equal(cases[0].max, 63);
    assert_int_equal(cases[4].max, 107);
    static char value[CFG_PATH_MAX + 8];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct cfg_sensor c;
        for (size_t len = cases[i].max; len <= cases[i].max + 1; len++) {
            value[0] = '"';
            memset(value + 1, 'a', len);
            snprintf(value + 1 + len, 3, "\"");
            char want[512];
            if (cases[i].min)
                snprintf(want, sizeof(want), NAME ":%u: %s: expected a string of %u to %zu bytes, "
                         "got a string of %zu bytes", key_line(cases[i].key), cases[i].key,
                         cases[i].min, cases[i].max, len);
            else
                snprintf(want, sizeof(want), NAME ":%u: %s: expected a string of at most %zu "
                         "bytes, got a string of %zu bytes", key_line(cases[i].key), cases[i].key,
                         cases[i].max, len);
            if (len <= cases[i].max)
                expect_ok(nested(cases[i].key, value), &c);
            else
                expect_error(nested(cases[i].key, value), want);
        }
    }
    struct cfg_sensor c;
    memset(value, 'i', 63);
    value[63] = '\0';
    char text[256];
    snprintf(text, sizeof(text), "capture = { interface = \"%s\"; };", value);
    expect_ok(text, &c);
    assert_string_equal(c.capture.interface, value);
}

/* Keys nobody knows, and groups and scalars in each other's places. */
static void test_unknown_keys(void **state)
{
    (void)state;
    expect_error("sensor = { };",
                 NAME ":1: sensor: expected one of the groups (capture, flow, session, model, "
                 "output, service), got an unknown key");
    expect_error("\n\nsnaplen = 1500;",
                 NAME ":3: snaplen: expected one of the groups (capture, flow, session, model, "
                 "output, service), got an unknown key");
    expect_error("capture = {\n  snaplen = 1500;\n  snaplenn = 1500;\n};",
                 NAME ":3: capture.snaplenn: expected one of the keys of capture (source, interface, "
                 "readers, cpus, snaplen, buffer_mb, promiscuous, bpf, tunnels, dpdk), got an unknown key");
    expect_error("capture = {\n  dpdk = {\n    ports = \"x\";\n  };\n};",
                 NAME ":3: capture.dpdk.ports: expected one of the keys of capture.dpdk (port, eal, "
                 "rx_descriptors, mbufs, busy_poll), got an unknown key");
    expect_error("flow = {\n  timeouts = {\n    tcp-new = 5;\n  };\n};",
                 NAME ":3: flow.timeouts.tcp-new: expected one of the keys of flow.timeouts "
                 "(tcp_new, tcp_established, tcp_closed, udp_new, udp_established, other_new, "
                 "other_established), got an unknown key");
    expect_error_at(nested("flow.emergency.timeouts.icmp_new", "5"), 4,
                    "flow.emergency.timeouts.icmp_new");
    expect_error_at(nested("flow.emergency.enter", "5"), 3, "flow.emergency.enter");
    expect_error_at(nested("session.ready", "5"), 2, "session.ready");
    expect_error_at(nested("model.batch_size", "5"), 2, "model.batch_size");
    expect_error_at(nested("output.types", "\"file\""), 2, "output.types");
    expect_error_at(nested("service.uid", "0"), 2, "service.uid");
    /* a group of the right name one level off */
    expect_error_at("capture = { timeouts = { tcp_new = 5; }; };", 1, "capture.timeouts");
    /* a scalar or an aggregate where a group belongs */
    expect_error("flow = 5;", NAME ":1: flow: expected a group { max_flows, packets_per_session, "
                 "bytes_per_packet, port_reuse, workers, timeouts, emergency }, got 5");
    expect_error("flow = {\n  timeouts = [1, 2];\n};",
                 NAME ":2: flow.timeouts: expected a group { tcp_new, tcp_established, "
                 "tcp_closed, udp_new, udp_established, other_new, other_established }, got an "
                 "array");
    expect_error("flow = {\n  emergency = \"off\";\n};",
                 NAME ":2: flow.emergency: expected a group { enter_pct, leave_pct, timeouts }, "
                 "got \"off\"");
    expect_error("model = ( );", NAME ":1: model: expected a group { path, task, threads, device, "
                 "residual, batch_max, batch_timeout_us, top_k, max_new_tokens }, got a list");
    /* the first error in the file is the one reported */
    expect_error_at("capture = { snaplen = 1; };\nbogus = 1;", 1, "capture.snaplen");
}

static void test_syntax_errors(void **state)
{
    (void)state;
    expect_error("capture = {\n  snaplen = ;\n};", NAME ":2: syntax error: near 'snaplen = ;'");
    expect_error("capture = { snaplen = 1500; };\ncapture = { bpf = \"\"; };",
                 NAME ":2: syntax error: duplicate setting name");
    expect_error("flow = {\n  workers = 4;\n  workers = 8;\n};",
                 NAME ":3: syntax error: duplicate setting name");
    expect_error("model = {\n  task = yes;\n};", NAME ":2: syntax error: near 'task = yes;'");
    expect_error_at("capture = {\n  snaplen = 1500;\n", 3, NULL);
    expect_error_at("capture = { bpf = \"unterminated; };", 1, NULL);
    expect_error_at("= 5;", 1, NULL);
    expect_error("capture = { snaplen = 1500; };\n\"snaplen\" = 1500;",
                 NAME ":2: syntax error: near '\"snaplen\" = 1500;'");
    /* @include is refused before anything reads the file it names */
    expect_error("# settings\n  @include \"/dev/zero\"\n",
                 NAME ":2: @include: expected the settings themselves, got an @include (one file "
                 "holds the whole configuration)");
    /* ...but not inside a string or a comment, where libconfig does not read it either */
    struct cfg_sensor c;
    expect_ok("capture = { bpf = \"tcp\n@include\"; };\n/*\n@include \"x\"\n*/", &c);
    assert_string_equal(c.capture.bpf, "tcp\n@include");
}

/* libconfig 1.5 wraps a plain integer beyond 32 bits and saturates an L one beyond 64: the
 * value as written is what is checked, and shown. */
static void test_wide_integers(void **state)
{
    (void)state;
    expect_error(nested("flow.max_flows", "4294967312"),
                 NAME ":2: flow.max_flows: expected an integer from 16 to 1073741824, got 4294967312");
    expect_error(nested("flow.max_flows", "0x100000010"),
                 NAME ":2: flow.max_flows: expected an integer from 16 to 1073741824, got 0x100000010");
    expect_error(nested("flow.workers", "99999999999999999999"),
                 NAME ":2: flow.workers: expected an integer from 1 to 64, got 99999999999999999999");
    expect_error(nested("flow.workers", "-99999999999999999999"),
                 NAME ":2: flow.workers: expected an integer from 1 to 64, got -99999999999999999999");
    expect_error(nested("flow.workers", "99999999999999999999L"),
                 NAME ":2: flow.workers: expected an integer from 1 to 64, got 99999999999999999999");
    expect_error(nested("flow.workers", "0x10000000000000002L"),
                 NAME ":2: flow.workers: expected an integer from 1 to 64, got 0x10000000000000002");
    expect_error(nested("flow.timeouts.tcp_new", "4294967396"),
                 NAME ":3: flow.timeouts.tcp_new: expected a number of seconds from 0 to 10000000, "
                 "got 4294967396");
    expect_error(nested("model.batch_timeout_us", "5000000000"),
                 NAME ":2: model.batch_timeout_us: expected an integer from 0 to 10000000, got "
                 "5000000000");
    /* two settings on one line: the wide literal is blamed on its own key */
    expect_error("flow = { workers = 16; max_flows = 4294967312; };",
                 NAME ":1: flow.max_flows: expected an integer from 16 to 1073741824, got 4294967312");
    /* a value on the line after its name */
    expect_error("flow = {\n  max_flows =\n    4294967312;\n};",
                 NAME ":2: flow.max_flows: expected an integer from 16 to 1073741824, got 4294967312");
    /* what is not an integer literal is left alone */
    struct cfg_sensor c;
    expect_ok("capture = { bpf = \"port 4294967312\"; snaplen = 1500; }; # 4294967312\n"
              "flow = { max_flows = 00000000000000000000000000001024; workers = 4; };\n"
              "/* 4294967312 */ session = { ready_packets = 8; };", &c);
    assert_string_equal(c.capture.bpf, "port 4294967312");
    assert_int_equal(c.capture.snaplen, 1500);
    assert_int_equal(c.flow.max_flows, 1024);
    assert_int_equal(c.flow.workers, 4);
    /* the largest plain integer is not wide: its value is shown as it is */
    expect_error(nested("flow.max_flows", "2147483647"),
                 NAME ":2: flow.max_flows: expected an integer from 16 to 1073741824, got 2147483647");
}

static void test_unreadable_files(void **state)
{
    (void)state;
    struct cfg_sensor c;
    char err[1024];
    char *dir = make_temp_dir();
    char path[128];

    snprintf(path, sizeof(path), "%s/missing.conf", dir);
    assert_int_equal(cfg_load(path, &c, err, sizeof(err)), -1);
    char want[256];
    snprintf(want, sizeof(want), "%s: cannot read: %s", path, strerror(ENOENT));
    assert_string_equal(err, want);

    assert_int_equal(cfg_load(dir, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "%s: cannot read: %s", dir, strerror(EISDIR));
    assert_string_equal(err, want);

    /* larger than any configuration */
    snprintf(path, sizeof(path), "%s/big.conf", dir);
    size_t big = (1u << 20) + 1;
    char *spaces = malloc(big);
    assert_non_null(spaces);
    memset(spaces, ' ', big);
    write_file(path, spaces, big);
    free(spaces);
    assert_int_equal(cfg_load(path, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "%s: cannot read: %s", path, strerror(EFBIG));
    assert_string_equal(err, want);
    unlink(path);

    /* a NUL byte would end libconfig's text early: a truncated file must not pass */
    snprintf(path, sizeof(path), "%s/nul.conf", dir);
    static const char with_nul[] = "capture = { snaplen = 1500; };\n\n# \0flow = { workers = 0; };\n";
    write_file(path, with_nul, sizeof(with_nul) - 1);
    assert_int_equal(cfg_load(path, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "%s:3: syntax error: a NUL byte (not a text file?)", path);
    assert_string_equal(err, want);
    unlink(path);

    /* a good file by path: messages and c.path name it */
    snprintf(path, sizeof(path), "%s/good.conf", dir);
    static const char good[] = "flow = {\n  workers = 4;\n  max_flows = 32;\n};\n";
    write_file(path, good, sizeof(good) - 1);
    assert_int_equal(cfg_load(path, &c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "%s:3: flow.max_flows: expected at least 16 per worker "
             "(flow.workers = 4: 64), got 32", path);
    assert_string_equal(err, want);
    static const char good2[] = "flow = {\n  workers = 4;\n  max_flows = 64;\n};\n";
    write_file(path, good2, sizeof(good2) - 1);
    if (cfg_load(path, &c, err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_string_equal(c.path, path);
    assert_int_equal(c.flow.workers, 4);
    unlink(path);
    rmdir(dir);
}

/* ---- rules across keys ---- */

static void test_cross_key_rules(void **state)
{
    (void)state;
    /* the line is that of the key the file sets; the other keeps its default */
    expect_error("flow = {\n  packets_per_session = 4;\n};",
                 NAME ":2: session.ready_packets: expected at most flow.packets_per_session (4), "
                 "got 8");
    expect_error("session = {\n  ready_packets = 33;\n};",
                 NAME ":2: session.ready_packets: expected at most flow.packets_per_session (32), "
                 "got 33");
    struct cfg_sensor c;
    expect_ok("flow = { packets_per_session = 4; };\nsession = { ready_packets = 4; };", &c);
    expect_ok("flow = { packets_per_session = 1024; };\nsession = { ready_packets = 1024; };", &c);

    expect_error("flow = {\n  emergency = {\n    enter_pct = 60;\n  };\n};",
                 NAME ":3: flow.emergency.leave_pct: expected less than flow.emergency.enter_pct "
                 "(60), got 70");
    expect_error("flow = {\n  emergency = {\n    enter_pct = 80;\n    leave_pct = 80;\n  };\n};",
                 NAME ":4: flow.emergency.leave_pct: expected less than flow.emergency.enter_pct "
                 "(80), got 80");
    expect_ok(nested("flow.emergency.enter_pct", "0"), &c); /* never: leave does not matter */
    assert_int_equal(c.flow.emergency_enter_pct, 0);
    expect_ok("flow = { emergency = { enter_pct = 100; leave_pct = 99; }; };", &c);

    expect_ok("flow = { workers = 64; };", &c); /* 1 M flows for 64 workers is plenty */
    expect_ok("flow = { max_flows = 16; workers = 1; };", &c); /* the lowest, with one worker */
    expect_error("flow = {\n  max_flows = 16;\n  workers = 2;\n};",
                 NAME ":2: flow.max_flows: expected at least 16 per worker (flow.workers = 2: "
                 "32), got 16");

    expect_error("capture = {\n  source = \"dpdk\";\n};",
                 NAME ":2: capture.dpdk.port: expected a PCI address or a virtual device with "
                 "capture.source \"dpdk\", got \"\"");
    expect_error("capture = {\n  source = \"dpdk\";\n  dpdk = {\n    port = \"0000:3b:00.0\";\n"
                 "    rx_descriptors = 1024;\n    mbufs = 1024;\n  };\n};",
                 NAME ":6: capture.dpdk.mbufs: expected 0 (4 × rx_descriptors) or more than "
                 "capture.dpdk.rx_descriptors (1024), got 1024");
    expect_ok("capture = { source = \"dpdk\"; dpdk = { port = \"net_pcap0,rx_pcap=x.pcap\"; mbufs = 4097; }; };", &c);
    /* every queue's ring holds buffers, and every queue's table its share of the flows */
    expect_error("capture = {\n  source = \"dpdk\";\n  readers = 4;\n  dpdk = {\n    port = \"0000:3b:00.0\";\n"
                 "    rx_descriptors = 1024;\n    mbufs = 4096;\n  };\n};",
                 NAME ":7: capture.dpdk.mbufs: expected 0 (4 × rx_descriptors × readers) or more than "
                 "capture.dpdk.rx_descriptors × capture.readers (4096), got 4096");
    expect_ok("capture = { source = \"dpdk\"; readers = 4; dpdk = { port = \"x\"; rx_descriptors = 1024; "
              "mbufs = 4097; }; };", &c);
    expect_error("capture = { readers = 4; };\nflow = {\n  max_flows = 127;\n  workers = 2;\n};",
                 NAME ":3: flow.max_flows: expected at least 16 per worker and reader (flow.workers = 2, "
                 "capture.readers = 4: 128), got 127");
    expect_ok("capture = { readers = 4; };\nflow = { max_flows = 128; workers = 2; };", &c);
    expect_error_at("capture = { readers = 65; };", 1, "capture.readers");
    expect_error_at("capture = { readers = 0; };", 1, "capture.readers");

    expect_error("output = {\n  filename = \"\";\n};",
                 NAME ":2: output.filename: expected a file name with output.type \"file\", got \"\"");
    expect_ok("output = { type = \"stdout\"; filename = \"\"; };", &c);
    expect_error("output = {\n  type = \"unix_stream\";\n};",
                 NAME ":2: output.socket: expected a socket path with output.type "
                 "\"unix_stream\", got \"\"");
}

/* cfg_validate on a struct changed after loading, as command-line overrides change it. */
/* capture.cpus: the list's CPUs in its order, ranges expanded; anything else is one error line */
static void test_cpu_lists(void **state)
{
    (void)state;
    int cpus[8];
    const int want[] = {2, 3, 4, 5, 8, 0};
    assert_int_equal(cfg_cpu_list("2-5,8,0", cpus, 8), 6);
    assert_memory_equal(cpus, want, sizeof want);
    assert_int_equal(cfg_cpu_list("1023", cpus, 8), 1);
    assert_int_equal(cpus[0], 1023);
    assert_int_equal(cfg_cpu_list("0-8", cpus, 8), -1); /* more CPUs than room */
    static const char *const bad[] = {"", "x", "1,", ",1", "5-2", "1 ,2", " 1", "-1", "+1", "1024",
                                      "0-1024", "1-", "1--2", "1,,2", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (cfg_cpu_list(bad[i], cpus, 8) != -1)
            fail_msg("cfg_cpu_list(\"%s\") accepted", bad[i]);
    struct cfg_sensor c;
    expect_ok("capture = { cpus = \"2-5,8,0\"; readers = 3; };", &c);
    assert_string_equal(c.capture.cpus, "2-5,8,0");
    expect_error("capture = {\n  readers = 2;\n  cpus = \"1,\";\n};",
                 NAME ":3: capture.cpus: expected a list of CPUs 0 to 1023 such as \"2-5,8\", or \"\", got \"1,\"");
}

static void test_validate_overrides(void **state)
{
    (void)state;
    struct cfg_sensor c;
    char err[1024];
    cfg_defaults(&c);
    snprintf(c.path, sizeof(c.path), "/etc/netlm/netlm.conf");
    assert_int_equal(cfg_validate(&c, err, sizeof(err)), 0);

    c.flow.workers = 65;
    assert_int_equal(cfg_validate(&c, err, sizeof(err)), -1);
    assert_string_equal(err, "/etc/netlm/netlm.conf: flow.workers: expected an integer from 1 to "
                        "64, got 65");
    c.flow.workers = 8;
    c.capture.interface[0] = '\0';
    assert_int_equal(cfg_validate(&c, err, sizeof(err)), -1);
    assert_string_equal(err, "/etc/netlm/netlm.conf: capture.interface: expected a string of 1 to "
                        "63 bytes, got \"\"");
    snprintf(c.capture.interface, sizeof(c.capture.interface), "ens1f0");
    memset(c.capture.bpf, 'x', sizeof(c.capture.bpf)); /* no terminator */
    assert_int_equal(cfg_validate(&c, err, sizeof(err)), -1);
    assert_string_equal(err, "/etc/netlm/netlm.conf: capture.bpf: expected a string of at most "
                        "1023 bytes, got an unterminated string");
    c.capture.bpf[0] = '\0';
    snprintf(c.model.device, sizeof(c.model.device), "cuda:x");
    assert_int_equal(cfg_validate(&c, err, sizeof(err)), -1);
    assert_string_equal(err, "/etc/netlm/netlm.conf: model.device: expected \"cpu\", \"cuda\" or "
                        "\"cuda:N\" (N from 0 to 255), got \"cuda:x\"");
    snprintf(c.model.device, sizeof(c.model.device), "cuda:1");
    c.flow.timeouts.udp_new = NAN;
    assert_int_equal(cfg_validate(&c, err, sizeof(err)), -1);
    assert_string_equal(err, "/etc/netlm/netlm.conf: flow.timeouts.udp_new: expected a number of "
                        "seconds from 0 to 10000000, got nan");
    c.flow.timeouts.udp_new = 1.5;
    c.output.kind = (enum cfg_output_kind)3;
    assert_int_equal(cfg_validate(&c, err, sizeof(err)), -1);
    assert_string_equal(err, "/etc/netlm/netlm.conf: output.type: expected \"file\", \"stdout\" or "
                        "\"unix_stream\", got 3");
    c.output.kind = CFG_OUTPUT_UNIX_STREAM;
    assert_int_equal(cfg_validate(&c, err, sizeof(err)), -1);
    assert_string_equal(err, "/etc/netlm/netlm.conf: output.socket: expected a socket path with "
                        "output.type \"unix_stream\", got \"\"");
    snprintf(c.output.socket, sizeof(c.output.socket), "/run/x.sock");
    c.session.ready_packets = 33;
    assert_int_equal(cfg_validate(&c, err, sizeof(err)), -1);
    assert_string_equal(err, "/etc/netlm/netlm.conf: session.ready_packets: expected at most "
                        "flow.packets_per_session (32), got 33");
    c.session.ready_packets = 32;
    assert_int_equal(cfg_validate(&c, err, sizeof(err)), 0);

    /* without a file, no prefix */
    cfg_defaults(&c);
    c.model.top_k = 0;
    assert_int_equal(cfg_validate(&c, err, sizeof(err)), -1);
    assert_string_equal(err, "model.top_k: expected an integer from 1 to 100, got 0");
}

/* ---- error reporting itself ---- */

static void test_error_buffer(void **state)
{
    (void)state;
    struct cfg_sensor c, before;
    memset(&c, 0xab, sizeof(c));
    memcpy(&before, &c, sizeof(c));
    char err[16];
    memset(err, 'z', sizeof(err));
    assert_int_equal(cfg_load_buffer(NAME, "flow = { workers = 0; };", &c, err, sizeof(err)), -1);
    assert_string_equal(err, "test.conf:1: fl"); /* cut, terminated */
    assert_memory_equal(&c, &before, sizeof(c)); /* out untouched on error */
    assert_int_equal(cfg_load_buffer(NAME, "flow = { workers = 0; };", &c, NULL, 0), -1);
    assert_int_equal(cfg_load_buffer(NAME, "}", &c, NULL, 0), -1);
    assert_int_equal(cfg_load("/nonexistent/netlm.conf", &c, NULL, 0), -1);
    assert_memory_equal(&c, &before, sizeof(c));
    char big[1024];
    assert_int_equal(cfg_load_buffer(NULL, "flow = 1;", &c, big, sizeof(big)), -1);
    assert_true(strncmp(big, "config:1: flow: expected a group", 32) == 0);
    assert_int_equal(cfg_load_buffer(NAME, NULL, &c, big, sizeof(big)), -1);
    assert_string_equal(big, NAME ": no text");
}

/* ---- a file that sets everything ---- */

static void test_custom_file(void **state)
{
    (void)state;
    static const char text[] =
        "// every key, none at its default\n"
        "capture = { interface = \"ens1f0\"; snaplen = 1518; buffer_mb = 256; promiscuous = false;\n"
        "  bpf = \"not port 22\"; tunnels = \"inner\"; };\n"
        "flow : {\n"
        "  max_flows = 65536; packets_per_session = 16; bytes_per_packet = 256;\n"
        "  port_reuse = \"merge\"; workers = 8;\n"
        "  timeouts = { tcp_new = 30; tcp_established = 3600.5; tcp_closed = 0; udp_new = 15;\n"
        "    udp_established = 120; other_new = 10; other_established = 60; };\n"
        "  emergency = { enter_pct = 90; leave_pct = 50;\n"
        "    timeouts = { tcp_new = 1; tcp_established = 2; tcp_closed = 3; udp_new = 4;\n"
        "      udp_established = 5; other_new = 6; other_established = 7.5; }; };\n"
        "};\n"
        "session = { ready_packets = 4; queue_size = 65536; };\n"
        "model = { path = \"/srv/netlm/model\"; task = \"generate\"; threads = 12; device = \"cuda:1\";\n"
        "  batch_max = 256; batch_timeout_us = 500; top_k = 5; max_new_tokens = 16; };\n"
        "output = { type = \"unix_stream\"; filename = \"/tmp/eve.json\"; socket = \"/run/eve.sock\";\n"
        "  flow_events = false; stats_interval = 2.5; };\n"
        "service = { user = \"nobody\"; group = \"nogroup\"; };\n";
    struct cfg_sensor c;
    expect_ok(text, &c);
    assert_string_equal(c.capture.interface, "ens1f0");
    assert_int_equal(c.capture.snaplen, 1518);
    assert_int_equal(c.capture.buffer_mb, 256);
    assert_false(c.capture.promiscuous);
    assert_string_equal(c.capture.bpf, "not port 22");
    assert_true(c.capture.tunnels_inner);
    assert_int_equal(c.flow.max_flows, 65536);
    assert_int_equal(c.flow.packets_per_session, 16);
    assert_int_equal(c.flow.bytes_per_packet, 256);
    assert_true(c.flow.port_reuse_merge);
    assert_int_equal(c.flow.workers, 8);
    const struct cfg_timeouts t = {30, 3600.5, 0, 15, 120, 10, 60};
    const struct cfg_timeouts e = {1, 2, 3, 4, 5, 6, 7.5};
    expect_timeouts_equal(&c.flow.timeouts, &t);
    assert_int_equal(c.flow.emergency_enter_pct, 90);
    assert_int_equal(c.flow.emergency_leave_pct, 50);
    expect_timeouts_equal(&c.flow.emergency_timeouts, &e);
    assert_int_equal(c.session.ready_packets, 4);
    assert_int_equal(c.session.queue_size, 65536);
    assert_string_equal(c.model.path, "/srv/netlm/model");
    assert_int_equal(c.model.task, CFG_TASK_GENERATE);
    assert_int_equal(c.model.threads, 12);
    assert_string_equal(c.model.device, "cuda:1");
    assert_int_equal(c.model.batch_max, 256);
    assert_int_equal(c.model.batch_timeout_us, 500);
    assert_int_equal(c.model.top_k, 5);
    assert_int_equal(c.model.max_new_tokens, 16);
    assert_int_equal(c.output.kind, CFG_OUTPUT_UNIX_STREAM);
    assert_string_equal(c.output.filename, "/tmp/eve.json");
    assert_string_equal(c.output.socket, "/run/eve.sock");
    assert_false(c.output.flow_events);
    assert_true(c.output.stats_interval == 2.5);
    assert_string_equal(c.service.user, "nobody");
    assert_string_equal(c.service.group, "nogroup");

    /* written back and read again: the same, byte for byte */
    static char written[16384];
    write_config(&c, written, sizeof(written));
    struct cfg_sensor again;
    expect_ok(written, &again);
    expect_same_config(&again, &c);

    /* and so are the defaults */
    struct cfg_sensor d;
    cfg_defaults(&d);
    write_config(&d, written, sizeof(written));
    expect_ok(written, &again);
    expect_same_config(&again, &d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_shipped_file_is_the_defaults),
        cmocka_unit_test(test_shipped_file_documents_every_key),
        cmocka_unit_test(test_ranges),
        cmocka_unit_test(test_types),
        cmocka_unit_test(test_choices_and_devices),
        cmocka_unit_test(test_long_strings),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_wide_integers),
        cmocka_unit_test(test_unreadable_files),
        cmocka_unit_test(test_cross_key_rules),
        cmocka_unit_test(test_cpu_lists),
        cmocka_unit_test(test_validate_overrides),
        cmocka_unit_test(test_error_buffer),
        cmocka_unit_test(test_custom_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
