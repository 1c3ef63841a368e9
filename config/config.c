/* config.c — the sensor's configuration file (libconfig syntax) read into struct cfg_sensor.
 *
 * The file is walked setting by setting against one table of the keys the sensor knows (rather
 * than looking the known keys up), so that a key nobody looks for — a typo, a key of another
 * version, a group in the wrong place — is an error instead of being silently ignored. The same
 * table holds each key's type and range, which cfg_validate checks again on the struct, because
 * command-line overrides bypass the file.
 *
 * libconfig 1.5 has two traits the loader works around. An integer literal that does not fit
 * its type wraps or saturates without a word (4294967312 reads as 16), so a pre-scan of the text
 * finds such literals and the loader checks what was written instead of what libconfig made of
 * it. And `@include` would read any file the text names, so it is refused: one file is the whole
 * configuration, and the fuzzer's arbitrary bytes cannot make the parser read /dev/zero. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libconfig.h>

#include "config/config.h"

#ifndef NETLM_DEFAULT_MODEL /* CMake defines it for netlm_core; a stand-alone build of this file */
#define NETLM_DEFAULT_MODEL "/usr/local/share/netlm/models/ustc-tfc2016"
#endif

/* The commented reference file is about 9 KiB; anything this large was not meant as a config. */
#define CFG_FILE_MAX (1u << 20)
#define CFG_MSG_MAX 1024 /* longest message assembled before it is cut to the caller's errlen */
#define CFG_SHOW_MAX 48  /* longest piece of a string value or a line quoted in a message */
#define CFG_SHOWN_SIZE (4 * CFG_SHOW_MAX + 16) /* it quoted, every byte escaped */
#define CFG_CUDA_DEVICES 256 /* "cuda:N": N below this */

_Static_assert(sizeof(enum cfg_task) == sizeof(int) && sizeof(enum cfg_output_kind) == sizeof(int),
               "choices stored in an enum are written as int");

/* ---- the keys ---- */

enum cfg_kind {
    CFG_KIND_UINT32,      /* uint32_t, integer setting in [lo, hi] */
    CFG_KIND_SECONDS,     /* double, integer or float setting in [lo, hi] */
    CFG_KIND_BOOL,        /* bool */
    CFG_KIND_STRING,      /* char[size], length in [lo, hi] (hi = size - 1) */
    CFG_KIND_DEVICE,      /* char[size]: "cpu", "cuda" or "cuda:N" */
    CFG_KIND_CHOICE_BOOL, /* bool: index in choices (two of them) */
    CFG_KIND_CHOICE_ENUM, /* an enum: index in choices */
    CFG_KIND_GROUP,       /* children, their offsets relative to this group's */
};

struct cfg_key {
    const char *name;
    enum cfg_kind kind;
    size_t offset; /* relative to the enclosing group's offset in struct cfg_sensor */
    size_t size;   /* strings: bytes of the buffer */
    long long lo, hi;
    const char *const *choices;
    size_t n; /* choices, or children */
    const struct cfg_key *children;
    bool empty_keeps_default; /* strings: "" in the file means the default (model.path, whose
                                 default is a build-time path the shipped file cannot spell) */
};

static const char *const cfg_tunnels_names[] = {"outer", "inner"};
static const char *const cfg_source_names[] = {"libpcap", "dpdk"};
static const char *const cfg_port_reuse_names[] = {"split", "merge"};
static const char *const cfg_residual_names[] = {"fp32", "bf16"};
static const char *const cfg_task_names[] = {"auto", "classify", "generate", "none"};
static const char *const cfg_output_names[] = {"file", "stdout", "unix_stream"};

#define CFG_COUNT(a) (sizeof(a) / sizeof((a)[0]))
/* Offset of a field inside one of struct cfg_sensor's groups. */
#define CFG_AT(group, field) (offsetof(struct cfg_sensor, group.field) - offsetof(struct cfg_sensor, group))
#define CFG_FIELD_SIZE(group, field) sizeof(((struct cfg_sensor *)0)->group.field)

#define CFG_U32(nm, group, field, l, h)                                                           \
    {.name = nm, .kind = CFG_KIND_UINT32, .offset = CFG_AT(group, field), .lo = l, .hi = h}
#define CFG_SECS(nm, group, field, h)                                                             \
    {.name = nm, .kind = CFG_KIND_SECONDS, .offset = CFG_AT(group, field), .lo = 0, .hi = h}
#define CFG_BOOLEAN(nm, group, field)                                                             \
    {.name = nm, .kind = CFG_KIND_BOOL, .offset = CFG_AT(group, field)}
#define CFG_STR(nm, group, field, min_len)                                                        \
    {.name = nm, .kind = CFG_KIND_STRING, .offset = CFG_AT(group, field),                         \
     .size = CFG_FIELD_SIZE(group, field), .lo = min_len,                                         \
     .hi = (long long)CFG_FIELD_SIZE(group, field) - 1}
#define CFG_CHOICE(nm, k, group, field, names)                                                    \
    {.name = nm, .kind = k, .offset = CFG_AT(group, field), .choices = names,                     \
     .n = CFG_COUNT(names)}
#define CFG_GROUP(nm, off, keys)                                                                  \
    {.name = nm, .kind = CFG_KIND_GROUP, .offset = off, .n = CFG_COUNT(keys), .children = keys}

/* 10^7 s (four months) is beyond any useful idle timeout; the bound keeps the flow table's
 * seconds-to-nanoseconds arithmetic far from overflow. */
#define CFG_TIMEOUT_MAX 10000000
#define CFG_TIMEOUT(nm, field)                                                                    \
    {.name = nm, .kind = CFG_KIND_SECONDS, .offset = offsetof(struct cfg_timeouts, field),        \
     .lo = 0, .hi = CFG_TIMEOUT_MAX}

static const struct cfg_key cfg_timeout_keys[] = {
    CFG_TIMEOUT("tcp_new", tcp_new),
    CFG_TIMEOUT("tcp_established", tcp_established),
    CFG_TIMEOUT("tcp_closed", tcp_closed),
    CFG_TIMEOUT("udp_new", udp_new),
    CFG_TIMEOUT("udp_established", udp_established),
    CFG_TIMEOUT("other_new", other_new),
    CFG_TIMEOUT("other_established", other_established),
};

/* capture.dpdk's keys sit in capture itself (the group adds nothing to the offset) */
static const struct cfg_key cfg_dpdk_keys[] = {
    CFG_STR("port", capture, dpdk_port.port, 0),
    CFG_STR("eal", capture, dpdk_port.eal, 0),
    CFG_U32("rx_descriptors", capture, dpdk_port.rx_descriptors, 64, 65536),
    CFG_U32("mbufs", capture, dpdk_port.mbufs, 0, 16777216),
    CFG_BOOLEAN("busy_poll", capture, dpdk_port.busy_poll),
};

static const struct cfg_key cfg_capture_keys[] = {
    CFG_CHOICE("source", CFG_KIND_CHOICE_BOOL, capture, dpdk, cfg_source_names),
    CFG_STR("interface", capture, interface, 1),
    CFG_U32("readers", capture, readers, 1, 64),
    CFG_STR("cpus", capture, cpus, 0),
    CFG_U32("snaplen", capture, snaplen, 64, 262144),
    CFG_U32("buffer_mb", capture, buffer_mb, 1, 4096),
    CFG_BOOLEAN("promiscuous", capture, promiscuous),
    CFG_STR("bpf", capture, bpf, 0),
    CFG_CHOICE("tunnels", CFG_KIND_CHOICE_BOOL, capture, tunnels_inner, cfg_tunnels_names),
    CFG_GROUP("dpdk", 0, cfg_dpdk_keys),
};

static const struct cfg_key cfg_emergency_keys[] = {
    CFG_U32("enter_pct", flow, emergency_enter_pct, 0, 100),
    CFG_U32("leave_pct", flow, emergency_leave_pct, 0, 100),
    CFG_GROUP("timeouts", CFG_AT(flow, emergency_timeouts), cfg_timeout_keys),
};

static const struct cfg_key cfg_flow_keys[] = {
    CFG_U32("max_flows", flow, max_flows, 16, 1 << 30),
    CFG_U32("packets_per_session", flow, packets_per_session, 1, CFG_SESSION_PACKETS_MAX),
    CFG_U32("bytes_per_packet", flow, bytes_per_packet, 16, 65535),
    CFG_CHOICE("port_reuse", CFG_KIND_CHOICE_BOOL, flow, port_reuse_merge, cfg_port_reuse_names),
    CFG_U32("workers", flow, workers, 1, 64),
    CFG_GROUP("timeouts", CFG_AT(flow, timeouts), cfg_timeout_keys),
    /* the emergency fields sit in flow itself: the group adds nothing to the offset */
    CFG_GROUP("emergency", 0, cfg_emergency_keys),
};

static const struct cfg_key cfg_session_keys[] = {
    CFG_U32("ready_packets", session, ready_packets, 1, CFG_SESSION_PACKETS_MAX),
    CFG_U32("queue_size", session, queue_size, 16, 1048576),
};

static const struct cfg_key cfg_model_keys[] = {
    {.name = "path", .kind = CFG_KIND_STRING, .offset = CFG_AT(model, path),
     .size = CFG_FIELD_SIZE(model, path), .lo = 1, .hi = (long long)CFG_FIELD_SIZE(model, path) - 1,
     .empty_keeps_default = true},
    CFG_CHOICE("task", CFG_KIND_CHOICE_ENUM, model, task, cfg_task_names),
    CFG_U32("threads", model, threads, 0, 1024),
    {.name = "device", .kind = CFG_KIND_DEVICE, .offset = CFG_AT(model, device),
     .size = CFG_FIELD_SIZE(model, device), .lo = 1, .hi = (long long)CFG_FIELD_SIZE(model, device) - 1},
    CFG_CHOICE("residual", CFG_KIND_CHOICE_BOOL, model, residual_bf16, cfg_residual_names),
    CFG_U32("batch_max", model, batch_max, 1, 4096),
    CFG_U32("batch_timeout_us", model, batch_timeout_us, 0, 10000000),
    CFG_U32("top_k", model, top_k, 1, 100),
    CFG_U32("max_new_tokens", model, max_new_tokens, 0, 65536),
};

static const struct cfg_key cfg_output_keys[] = {
    CFG_CHOICE("type", CFG_KIND_CHOICE_ENUM, output, kind, cfg_output_names),
    CFG_STR("filename", output, filename, 0),
    CFG_STR("socket", output, socket, 0),
    CFG_BOOLEAN("flow_events", output, flow_events),
    CFG_SECS("stats_interval", output, stats_interval, 86400),
};

static const struct cfg_key cfg_service_keys[] = {
    CFG_STR("user", service, user, 0),
    CFG_STR("group", service, group, 0),
};

static const struct cfg_key cfg_groups[] = {
    CFG_GROUP("capture", offsetof(struct cfg_sensor, capture), cfg_capture_keys),
    CFG_GROUP("flow", offsetof(struct cfg_sensor, flow), cfg_flow_keys),
    CFG_GROUP("session", offsetof(struct cfg_sensor, session), cfg_session_keys),
    CFG_GROUP("model", offsetof(struct cfg_sensor, model), cfg_model_keys),
    CFG_GROUP("output", offsetof(struct cfg_sensor, output), cfg_output_keys),
    CFG_GROUP("service", offsetof(struct cfg_sensor, service), cfg_service_keys),
};

static const struct cfg_key cfg_root = CFG_GROUP("", 0, cfg_groups);

/* ---- defaults and names ---- */

static void cfg_copy_string(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src);
    if (n >= size)
        n = size - 1;
    memset(dst, 0, size); /* equal configurations compare equal byte for byte */
    memcpy(dst, src, n);
}

void cfg_defaults(struct cfg_sensor *c)
{
    memset(c, 0, sizeof(*c));
    cfg_copy_string(c->capture.interface, sizeof(c->capture.interface), "eth0");
    c->capture.snaplen = 262144;
    c->capture.buffer_mb = 64;
    c->capture.promiscuous = true;
    c->capture.tunnels_inner = false;
    c->capture.dpdk = false;
    c->capture.dpdk_port.rx_descriptors = 4096;
    c->capture.readers = 1;

    c->flow.max_flows = 1048576;
    c->flow.packets_per_session = 32;
    c->flow.bytes_per_packet = 128;
    c->flow.port_reuse_merge = false;
    c->flow.workers = 2;
    /* Suricata's shipped suricata.yaml (flow-timeouts: tcp, udp, default). */
    c->flow.timeouts = (struct cfg_timeouts){
        .tcp_new = 60, .tcp_established = 600, .tcp_closed = 60,
        .udp_new = 30, .udp_established = 300,
        .other_new = 30, .other_established = 300,
    };
    c->flow.emergency_enter_pct = 95;
    c->flow.emergency_leave_pct = 70;
    /* Its emergency-new / -established / -closed values. */
    c->flow.emergency_timeouts = (struct cfg_timeouts){
        .tcp_new = 5, .tcp_established = 100, .tcp_closed = 10,
        .udp_new = 10, .udp_established = 100,
        .other_new = 10, .other_established = 100,
    };

    c->session.ready_packets = 8;
    c->session.queue_size = 4096;

    cfg_copy_string(c->model.path, sizeof(c->model.path), NETLM_DEFAULT_MODEL);
    c->model.task = CFG_TASK_AUTO;
    c->model.threads = 0;
    cfg_copy_string(c->model.device, sizeof(c->model.device), "cpu");
    c->model.residual_bf16 = true;
    c->model.batch_max = 32;
    c->model.batch_timeout_us = 2000;
    c->model.top_k = 3;
    c->model.max_new_tokens = 0;

    c->output.kind = CFG_OUTPUT_FILE;
    cfg_copy_string(c->output.filename, sizeof(c->output.filename), "/var/log/netlm/eve.json");
    c->output.flow_events = true;
    c->output.stats_interval = 10;

    cfg_copy_string(c->service.user, sizeof(c->service.user), "netlm");
}

const char *cfg_task_name(enum cfg_task t)
{
    return (unsigned)t < CFG_COUNT(cfg_task_names) ? cfg_task_names[t] : "unknown";
}

const char *cfg_output_kind_name(enum cfg_output_kind k)
{
    return (unsigned)k < CFG_COUNT(cfg_output_names) ? cfg_output_names[k] : "unknown";
}

/* ---- messages ---- */

/* Writes "PREFIX" + the formatted rest into err as one line: whatever the file holds (a string
 * value with a newline in it, say), the message stays one line. */
static void cfg_message(char *err, size_t errlen, const char *prefix, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void cfg_message(char *err, size_t errlen, const char *prefix, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    char body[CFG_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    snprintf(err, errlen, "%s%s", prefix, body);
    for (char *p = err; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
}

/* Text shown in a message between quote characters: control bytes as \xNN (the message stays
 * one line whatever the file holds), the quote and the backslash escaped as libconfig writes
 * them, long text cut with "...". */
static void cfg_show_quoted(char *buf, size_t size, const char *s, char quote)
{
    size_t k = 0;
    buf[k++] = quote;
    for (size_t i = 0; s[i] && k + 8 < size; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (i == CFG_SHOW_MAX) {
            memcpy(buf + k, "...", 3);
            k += 3;
            break;
        }
        if (ch < 0x20 || ch == 0x7f) {
            k += (size_t)snprintf(buf + k, size - k, "\\x%02x", ch);
        } else {
            if (ch == (unsigned char)quote || ch == '\\')
                buf[k++] = '\\';
            buf[k++] = (char)ch;
        }
    }
    buf[k++] = quote;
    buf[k] = '\0';
}

static void cfg_show_string(char *buf, size_t size, const char *s)
{
    cfg_show_quoted(buf, size, s, '"');
}

/* A double as a message shows it: the shortest form that reads back the same, with a decimal
 * point, so that 2.0 given for a count does not read as the integer 2. */
static void cfg_format_double(double d, char *buf, size_t size)
{
    for (int precision = 1; precision <= 17; precision++) {
        snprintf(buf, size, "%.*g", precision, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    if (isfinite(d) && fabs(d) < 1e15 && d == floor(d)) /* 1e3 as 1000.0, 2.0 not as 2 */
        snprintf(buf, size, "%.1f", d);
}

/* "a, b, c": the keys of a group. */
static void cfg_list_keys(const struct cfg_key *group, char *buf, size_t size)
{
    size_t k = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < group->n && k < size; i++)
        k += (size_t)snprintf(buf + k, size - k, "%s%s", i ? ", " : "", group->children[i].name);
}

/* What the expected value of a key is, for "KEY: expected ..., got ...". */
static void cfg_expected(const struct cfg_key *key, char *buf, size_t size)
{
    switch (key->kind) {
    case CFG_KIND_UINT32:
        snprintf(buf, size, "an integer from %lld to %lld", key->lo, key->hi);
        break;
    case CFG_KIND_SECONDS:
        snprintf(buf, size, "a number of seconds from %lld to %lld", key->lo, key->hi);
        break;
    case CFG_KIND_BOOL:
        snprintf(buf, size, "true or false");
        break;
    case CFG_KIND_STRING:
        if (key->lo > 0)
            snprintf(buf, size, "a string of %lld to %lld bytes", key->lo, key->hi);
        else
            snprintf(buf, size, "a string of at most %lld bytes", key->hi);
        break;
    case CFG_KIND_DEVICE:
        snprintf(buf, size, "\"cpu\", \"cuda\" or \"cuda:N\" (N from 0 to %d)", CFG_CUDA_DEVICES - 1);
        break;
    case CFG_KIND_CHOICE_BOOL:
    case CFG_KIND_CHOICE_ENUM: {
        size_t k = 0;
        buf[0] = '\0';
        for (size_t i = 0; i < key->n && k < size; i++)
            k += (size_t)snprintf(buf + k, size - k, "%s\"%s\"",
                                  i == 0 ? "" : i + 1 == key->n ? " or " : ", ", key->choices[i]);
        break;
    }
    case CFG_KIND_GROUP: {
        char names[256];
        cfg_list_keys(key, names, sizeof(names));
        snprintf(buf, size, "a group { %s }", names);
        break;
    }
    }
}

/* ---- the pre-scan: @include, and integer literals libconfig misreads ---- */

/* An integer literal whose value libconfig 1.5 does not keep: a plain integer beyond 32 bits
 * (it wraps), or an L integer beyond 64 bits (it saturates). */
struct cfg_wide_literal {
    const char *name;       /* the setting's name in the text (the last name before the literal) */
    size_t name_len;
    unsigned line;          /* of that name, which is the line libconfig reports */
    long long as_read;      /* what libconfig made of it */
    long long value;        /* what was written, when it fits 64 bits */
    bool beyond_64_bits;
    char text[40];          /* as written, for the message */
};

struct cfg_scan {
    unsigned include_line; /* first line with an @include, or 0 */
    struct cfg_wide_literal *wide;
    size_t n_wide, cap_wide;
};

static bool cfg_is_name_start(char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || ch == '*';
}

static bool cfg_is_name_char(char ch)
{
    return cfg_is_name_start(ch) || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
}

static bool cfg_is_digit(char ch) { return ch >= '0' && ch <= '9'; }

static bool cfg_is_hex_digit(char ch)
{
    return cfg_is_digit(ch) || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

/* Reads the integer literal text[0..len) (optional sign, then digits, or 0x and hex digits; no
 * suffix) both as libconfig 1.5's scanner does — atoi / strtoul for a plain integer, which keep
 * the low 32 bits, atoll / strtoull for an L one, which saturate — and as written; records it
 * when the two differ. */
static int cfg_scan_integer(struct cfg_scan *scan, const char *text, size_t len, bool hex,
                            bool suffix_l, const char *name, size_t name_len, unsigned line)
{
    const char *p = text, *end = text + len;
    bool negative = false;
    if (hex)
        p += 2;
    else if (*p == '-' || *p == '+')
        negative = *p++ == '-';
    while (p < end - 1 && *p == '0') /* leading zeros change nothing, however many */
        p++;
    size_t ndigits = (size_t)(end - p);
    bool beyond = ndigits > (hex ? 16u : 19u);
    char digits[24];
    unsigned long long magnitude = ULLONG_MAX;
    if (!beyond) {
        memcpy(digits, p, ndigits);
        digits[ndigits] = '\0';
        errno = 0;
        magnitude = strtoull(digits, NULL, hex ? 16 : 10);
        beyond = errno == ERANGE;
    }
    long long value, as_read;
    if (hex) {
        beyond = beyond || magnitude > (unsigned long long)LLONG_MAX;
        value = beyond ? LLONG_MAX : (long long)magnitude;
        as_read = suffix_l ? (long long)magnitude : (long long)(int32_t)(uint32_t)magnitude;
    } else {
        /* strtoll's saturation, which atoi and atoll share */
        if (negative)
            beyond = beyond || magnitude > (unsigned long long)LLONG_MAX + 1;
        else
            beyond = beyond || magnitude > (unsigned long long)LLONG_MAX;
        long long saturated = negative ? LLONG_MIN : LLONG_MAX;
        value = beyond ? saturated
                : negative ? (long long)(0 - magnitude) : (long long)magnitude;
        as_read = suffix_l ? value : (long long)(int32_t)(uint32_t)(unsigned long long)value;
    }
    if (!beyond && as_read == value)
        return 0;
    if (scan->n_wide == scan->cap_wide) {
        size_t cap = scan->cap_wide ? 2 * scan->cap_wide : 16;
        struct cfg_wide_literal *w = realloc(scan->wide, cap * sizeof(*w));
        if (!w)
            return -1;
        scan->wide = w;
        scan->cap_wide = cap;
    }
    struct cfg_wide_literal *w = &scan->wide[scan->n_wide++];
    w->name = name;
    w->name_len = name_len;
    w->line = line;
    w->as_read = as_read;
    w->value = value;
    w->beyond_64_bits = beyond;
    if (len < sizeof(w->text)) {
        memcpy(w->text, text, len);
        w->text[len] = '\0';
    } else { /* cut, and say so */
        memcpy(w->text, text, sizeof(w->text) - 4);
        memcpy(w->text + sizeof(w->text) - 4, "...", 4);
    }
    return 0;
}

/* A lexer just good enough to tell comments, strings, names and numbers apart the way libconfig
 * 1.5's does. -1 when out of memory. */
static int cfg_prescan(const char *text, struct cfg_scan *scan)
{
    memset(scan, 0, sizeof(*scan));
    unsigned line = 1, name_line = 1;
    const char *name = "";
    size_t name_len = 0;
    bool line_start = true; /* only blanks so far on this line */
    const char *p = text;
    while (*p) {
        char ch = *p;
        if (ch == '\n') {
            line++;
            line_start = true;
            p++;
            continue;
        }
        if (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\f' || ch == '\v') {
            p++;
            continue;
        }
        if (line_start && ch == '@' && strncmp(p, "@include", 8) == 0) {
            if (!scan->include_line)
                scan->include_line = line;
        }
        line_start = false;
        if (ch == '#' || (ch == '/' && p[1] == '/')) {
            while (*p && *p != '\n')
                p++;
        } else if (ch == '/' && p[1] == '*') {
            for (p += 2; *p && !(p[0] == '*' && p[1] == '/'); p++)
                line += *p == '\n';
            p += *p ? 2 : 0;
        } else if (ch == '"') {
            for (p++; *p && *p != '"'; p++) {
                if (*p == '\\' && p[1])
                    p++;
                line += *p == '\n';
            }
            p += *p ? 1 : 0;
        } else if (cfg_is_name_start(ch)) {
            name_line = line;
            name = p;
            while (cfg_is_name_char(*p))
                p++;
            name_len = (size_t)(p - name);
        } else if (cfg_is_digit(ch) || ((ch == '-' || ch == '+' || ch == '.') &&
                                        (cfg_is_digit(p[1]) || (p[1] == '.' && cfg_is_digit(p[2]))))) {
            const char *start = p;
            bool hex = ch == '0' && (p[1] == 'x' || p[1] == 'X') && cfg_is_hex_digit(p[2]);
            if (hex) {
                for (p += 2; cfg_is_hex_digit(*p); p++)
                    ;
            } else {
                if (*p == '-' || *p == '+')
                    p++;
                while (cfg_is_digit(*p))
                    p++;
            }
            if (!hex && (*p == '.' || *p == 'e' || *p == 'E')) { /* a float: not ours */
                while (cfg_is_digit(*p) || *p == '.' || *p == 'e' || *p == 'E' ||
                       ((*p == '-' || *p == '+') && (p[-1] == 'e' || p[-1] == 'E')))
                    p++;
                continue;
            }
            size_t len = (size_t)(p - start);
            bool suffix_l = *p == 'L';
            while (*p == 'L')
                p++;
            if (cfg_scan_integer(scan, start, len, hex, suffix_l, name, name_len, name_line) < 0)
                return -1;
        } else {
            p++;
        }
    }
    return 0;
}

/* ---- the walk ---- */

struct cfg_loader {
    const char *name; /* the file, as messages name it */
    const struct cfg_scan *scan;
    char *err;
    size_t errlen;
};

static void cfg_fail(const struct cfg_loader *ld, const config_setting_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void cfg_fail(const struct cfg_loader *ld, const config_setting_t *s, const char *fmt, ...)
{
    char prefix[CFG_PATH_MAX + 32], body[CFG_MSG_MAX];
    snprintf(prefix, sizeof(prefix), "%s:%u: ", ld->name, config_setting_source_line(s));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    cfg_message(ld->err, ld->errlen, prefix, "%s", body);
}

/* The literal an integer setting was read from, when libconfig did not keep its value. */
static const struct cfg_wide_literal *cfg_find_wide(const struct cfg_loader *ld,
                                                    const config_setting_t *s)
{
    const char *name = config_setting_name(s);
    if (!name)
        return NULL;
    size_t name_len = strlen(name);
    long long v = config_setting_get_int64(s);
    for (size_t i = 0; i < ld->scan->n_wide; i++) {
        const struct cfg_wide_literal *w = &ld->scan->wide[i];
        if (w->line == config_setting_source_line(s) && w->as_read == v &&
            w->name_len == name_len && memcmp(w->name, name, name_len) == 0)
            return w;
    }
    return NULL;
}

/* A setting's value as a message shows it after "got". */
static void cfg_describe(const struct cfg_loader *ld, const config_setting_t *s, char *buf,
                         size_t size)
{
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_GROUP:
        snprintf(buf, size, "a group");
        break;
    case CONFIG_TYPE_ARRAY:
        snprintf(buf, size, "an array");
        break;
    case CONFIG_TYPE_LIST:
        snprintf(buf, size, "a list");
        break;
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64: {
        const struct cfg_wide_literal *w = cfg_find_wide(ld, s);
        if (w)
            snprintf(buf, size, "%s", w->text);
        else
            snprintf(buf, size, "%lld", config_setting_get_int64(s));
        break;
    }
    case CONFIG_TYPE_FLOAT:
        cfg_format_double(config_setting_get_float(s), buf, size);
        break;
    case CONFIG_TYPE_STRING:
        cfg_show_string(buf, size, config_setting_get_string(s));
        break;
    case CONFIG_TYPE_BOOL:
        snprintf(buf, size, "%s", config_setting_get_bool(s) ? "true" : "false");
        break;
    default:
        snprintf(buf, size, "nothing");
        break;
    }
}

/* The integer a setting holds as the file wrote it. false when it is beyond 64 bits. */
static bool cfg_integer_as_written(const struct cfg_loader *ld, const config_setting_t *s,
                                   long long *out)
{
    const struct cfg_wide_literal *w = cfg_find_wide(ld, s);
    *out = w ? w->value : config_setting_get_int64(s);
    return !w || !w->beyond_64_bits;
}

static bool cfg_is_integer_setting(const config_setting_t *s)
{
    return config_setting_type(s) == CONFIG_TYPE_INT || config_setting_type(s) == CONFIG_TYPE_INT64;
}

/* "cpu", "cuda", or "cuda:N" with N a decimal without leading zeros below CFG_CUDA_DEVICES. */
static bool cfg_device_ok(const char *s)
{
    if (strcmp(s, "cpu") == 0 || strcmp(s, "cuda") == 0)
        return true;
    if (strncmp(s, "cuda:", 5) != 0 || !cfg_is_digit(s[5]) || (s[5] == '0' && s[6]))
        return false;
    int n = 0;
    for (const char *p = s + 5; *p; p++) {
        if (!cfg_is_digit(*p) || (n = n * 10 + (*p - '0')) >= CFG_CUDA_DEVICES)
            return false;
    }
    return true;
}

static int cfg_choice_index(const struct cfg_key *key, const char *s)
{
    for (size_t i = 0; i < key->n; i++)
        if (strcmp(s, key->choices[i]) == 0)
            return (int)i;
    return -1;
}

/* Checks one scalar setting against its key and stores it at base + key->offset. */
static int cfg_load_scalar(const struct cfg_loader *ld, const struct cfg_key *key,
                           const char *path, const config_setting_t *s, char *base)
{
    char expected[256], got[CFG_SHOWN_SIZE];
    void *field = base + key->offset;
    int type = config_setting_type(s);
    cfg_expected(key, expected, sizeof(expected));
    cfg_describe(ld, s, got, sizeof(got));

    switch (key->kind) {
    case CFG_KIND_UINT32: {
        long long v;
        if (!cfg_is_integer_setting(s) || !cfg_integer_as_written(ld, s, &v) || v < key->lo ||
            v > key->hi)
            break;
        uint32_t u = (uint32_t)v;
        memcpy(field, &u, sizeof(u));
        return 0;
    }
    case CFG_KIND_SECONDS: {
        double d;
        if (cfg_is_integer_setting(s)) {
            long long v;
            if (!cfg_integer_as_written(ld, s, &v))
                break;
            d = (double)v;
        } else if (type == CONFIG_TYPE_FLOAT) {
            d = config_setting_get_float(s);
        } else {
            break;
        }
        if (!(d >= (double)key->lo && d <= (double)key->hi)) /* NaN fails too */
            break;
        memcpy(field, &d, sizeof(d));
        return 0;
    }
    case CFG_KIND_BOOL:
        if (type != CONFIG_TYPE_BOOL)
            break;
        *(bool *)field = config_setting_get_bool(s) != 0;
        return 0;
    case CFG_KIND_STRING:
    case CFG_KIND_DEVICE: {
        if (type != CONFIG_TYPE_STRING)
            break;
        const char *v = config_setting_get_string(s);
        size_t len = strlen(v);
        if ((long long)len > key->hi) { /* a long value is not worth quoting */
            cfg_fail(ld, s, "%s: expected %s, got a string of %zu bytes", path, expected, len);
            return -1;
        }
        if (len == 0 && key->empty_keeps_default)
            return 0;
        if ((long long)len < key->lo || (key->kind == CFG_KIND_DEVICE && !cfg_device_ok(v)))
            break;
        cfg_copy_string(field, key->size, v);
        return 0;
    }
    case CFG_KIND_CHOICE_BOOL:
    case CFG_KIND_CHOICE_ENUM: {
        int i = type == CONFIG_TYPE_STRING ? cfg_choice_index(key, config_setting_get_string(s)) : -1;
        if (i < 0)
            break;
        if (key->kind == CFG_KIND_CHOICE_BOOL)
            *(bool *)field = i != 0;
        else
            memcpy(field, &i, sizeof(i));
        return 0;
    }
    case CFG_KIND_GROUP:
        break;
    }
    cfg_fail(ld, s, "%s: expected %s, got %s", path, expected, got);
    return -1;
}

/* Walks the settings of one group: each must be one of the group's keys. */
static int cfg_load_group(const struct cfg_loader *ld, const struct cfg_key *group,
                          const char *path, const config_setting_t *setting, char *base)
{
    unsigned n = (unsigned)config_setting_length(setting);
    for (unsigned i = 0; i < n; i++) {
        const config_setting_t *s = config_setting_get_elem(setting, i);
        const char *name = config_setting_name(s);
        const struct cfg_key *key = NULL;
        for (size_t k = 0; name && k < group->n; k++)
            if (strcmp(name, group->children[k].name) == 0)
                key = &group->children[k];
        if (!key) {
            char known[256];
            cfg_list_keys(group, known, sizeof(known));
            if (path[0])
                cfg_fail(ld, s, "%s.%s: expected one of the keys of %s (%s), got an unknown key",
                         path, name ? name : "?", path, known);
            else
                cfg_fail(ld, s, "%s: expected one of the groups (%s), got an unknown key",
                         name ? name : "?", known);
            return -1;
        }
        char child_path[128];
        snprintf(child_path, sizeof(child_path), "%s%s%s", path, path[0] ? "." : "", key->name);
        if (key->kind == CFG_KIND_GROUP) {
            if (config_setting_type(s) != CONFIG_TYPE_GROUP) {
                char expected[512], got[CFG_SHOWN_SIZE];
                cfg_expected(key, expected, sizeof(expected));
                cfg_describe(ld, s, got, sizeof(got));
                cfg_fail(ld, s, "%s: expected %s, got %s", child_path, expected, got);
                return -1;
            }
            if (cfg_load_group(ld, key, child_path, s, base + key->offset) < 0)
                return -1;
        } else if (cfg_load_scalar(ld, key, child_path, s, base) < 0) {
            return -1;
        }
    }
    return 0;
}

/* ---- checks on the struct ---- */

/* Every field within its key's range: what the loader guarantees, checked again for values set
 * by other means (command-line overrides). Writes "KEY: expected ..., got ..." into msg. */
static int cfg_check_fields(const struct cfg_key *group, const char *path, const char *base,
                            char *msg, size_t size)
{
    for (size_t k = 0; k < group->n; k++) {
        const struct cfg_key *key = &group->children[k];
        const void *field = base + key->offset;
        char key_path[128], expected[512], got[CFG_SHOWN_SIZE];
        snprintf(key_path, sizeof(key_path), "%s%s%s", path, path[0] ? "." : "", key->name);
        if (key->kind == CFG_KIND_GROUP) {
            if (cfg_check_fields(key, key_path, base + key->offset, msg, size) < 0)
                return -1;
            continue;
        }
        bool ok = true;
        switch (key->kind) {
        case CFG_KIND_UINT32: {
            uint32_t v;
            memcpy(&v, field, sizeof(v));
            ok = v >= key->lo && v <= key->hi;
            snprintf(got, sizeof(got), "%u", v);
            break;
        }
        case CFG_KIND_SECONDS: {
            double d;
            memcpy(&d, field, sizeof(d));
            ok = d >= (double)key->lo && d <= (double)key->hi;
            cfg_format_double(d, got, sizeof(got));
            break;
        }
        case CFG_KIND_STRING:
        case CFG_KIND_DEVICE: {
            const char *s = field;
            const char *end = memchr(s, '\0', key->size);
            if (!end) {
                snprintf(got, sizeof(got), "an unterminated string");
                ok = false;
                break;
            }
            long long len = end - s;
            ok = len >= key->lo && len <= key->hi &&
                 (key->kind != CFG_KIND_DEVICE || cfg_device_ok(s));
            cfg_show_string(got, sizeof(got), s);
            break;
        }
        case CFG_KIND_CHOICE_ENUM: {
            int i;
            memcpy(&i, field, sizeof(i));
            ok = i >= 0 && (size_t)i < key->n;
            snprintf(got, sizeof(got), "%d", i);
            break;
        }
        case CFG_KIND_BOOL:
        case CFG_KIND_CHOICE_BOOL:
        case CFG_KIND_GROUP:
            break;
        }
        if (!ok) {
            cfg_expected(key, expected, sizeof(expected));
            snprintf(msg, size, "%s: expected %s, got %s", key_path, expected, got);
            return -1;
        }
    }
    return 0;
}

int cfg_cpu_list(const char *text, int *cpus, int max)
{
    int n = 0;
    const char *p = text;
    do {
        char *end;
        errno = 0;
        long first = isdigit((unsigned char)*p) ? strtol(p, &end, 10) : -1, last = first;
        if (first < 0 || errno)
            return -1;
        if (*end == '-') {
            p = end + 1;
            last = isdigit((unsigned char)*p) ? strtol(p, &end, 10) : -1;
            if (last < first || errno)
                return -1;
        }
        if (last >= CFG_MAX_CPUS || (*end != ',' && *end != '\0'))
            return -1;
        for (long cpu = first; cpu <= last; cpu++) {
            if (n == max)
                return -1;
            cpus[n++] = (int)cpu;
        }
        p = end + (*end == ',');
    } while (*p);
    return n > 0 && p[-1] != ',' ? n : -1;
}

int cfg_check_cpus_allowed(const struct cfg_sensor *c, char *err, size_t errlen)
{
    char prefix[CFG_PATH_MAX + 8] = "";
    if (memchr(c->path, '\0', sizeof(c->path)) && c->path[0])
        snprintf(prefix, sizeof(prefix), "%s: ", c->path);
    if (!c->capture.cpus[0])
        return 0;
    int cpus[CFG_MAX_CPUS];
    const int n = cfg_cpu_list(c->capture.cpus, cpus, CFG_MAX_CPUS);
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    int rc = -1;
    if (n <= 0) /* cfg_validate refuses such a list */
        cfg_message(err, errlen, prefix, "capture.cpus: \"%.200s\" is not a list of CPUs", c->capture.cpus);
    else if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0)
        cfg_message(err, errlen, prefix, "capture.cpus: cannot read the CPUs this process may run on (%s)",
                    strerror(errno));
    else
        rc = 0;
    for (int i = 0; rc == 0 && i < n; i++)
        if (!CPU_ISSET(cpus[i], &allowed)) {
            cfg_message(err, errlen, prefix, "capture.cpus: CPU %d is not one this process may run on (%d allowed)",
                        cpus[i], CPU_COUNT(&allowed));
            rc = -1;
        }
    return rc;
}

/* The rules that involve several keys (and the one key with a syntax of its own); the output's
 * only when output_used. On failure, msg says what is wrong and *keys names the keys involved,
 * the one the message starts with first (for the loader to find a line). */
static int cfg_check_combinations(const struct cfg_sensor *c, bool output_used, char *msg, size_t size,
                                  const char *keys[2])
{
    int cpus[CFG_MAX_CPUS];
    if (c->capture.cpus[0] && cfg_cpu_list(c->capture.cpus, cpus, CFG_MAX_CPUS) < 0) {
        keys[0] = keys[1] = "capture.cpus";
        snprintf(msg, size, "capture.cpus: expected a list of CPUs 0 to %d such as \"2-5,8\", or \"\", got \"%.200s\"",
                 CFG_MAX_CPUS - 1, c->capture.cpus);
        return -1;
    }
    if (c->session.ready_packets > c->flow.packets_per_session) {
        keys[0] = "session.ready_packets", keys[1] = "flow.packets_per_session";
        snprintf(msg, size, "session.ready_packets: expected at most flow.packets_per_session "
                 "(%u), got %u", c->flow.packets_per_session, c->session.ready_packets);
        return -1;
    }
    if (c->flow.emergency_enter_pct != 0 &&
        c->flow.emergency_leave_pct >= c->flow.emergency_enter_pct) {
        keys[0] = "flow.emergency.leave_pct", keys[1] = "flow.emergency.enter_pct";
        snprintf(msg, size, "flow.emergency.leave_pct: expected less than flow.emergency.enter_pct "
                 "(%u), got %u", c->flow.emergency_enter_pct, c->flow.emergency_leave_pct);
        return -1;
    }
    /* Each worker owns max_flows / workers flows (of its reader's table, with several readers);
     * a share this small would evict all the time. */
    const uint64_t flow_owners = (uint64_t)c->flow.workers * c->capture.readers;
    if ((uint64_t)c->flow.max_flows < 16 * flow_owners) {
        keys[0] = "flow.max_flows", keys[1] = "flow.workers";
        if (flow_owners > c->flow.workers)
            snprintf(msg, size, "flow.max_flows: expected at least 16 per worker and reader (flow.workers = %u, "
                     "capture.readers = %u: %" PRIu64 "), got %u", c->flow.workers, c->capture.readers,
                     16 * flow_owners, c->flow.max_flows);
        else
            snprintf(msg, size, "flow.max_flows: expected at least 16 per worker (flow.workers = %u: "
                     "%u), got %u", c->flow.workers, 16 * c->flow.workers, c->flow.max_flows);
        return -1;
    }
    if (c->capture.dpdk && c->capture.dpdk_port.port[0] == '\0') {
        keys[0] = "capture.dpdk.port", keys[1] = "capture.source";
        snprintf(msg, size, "capture.dpdk.port: expected a PCI address or a virtual device with "
                 "capture.source \"dpdk\", got \"\"");
        return -1;
    }
    /* with several readers, a receive ring per reader */
    const uint64_t descriptors = (uint64_t)c->capture.dpdk_port.rx_descriptors * c->capture.readers;
    if (c->capture.dpdk_port.mbufs != 0 && c->capture.dpdk_port.mbufs <= descriptors) {
        keys[0] = "capture.dpdk.mbufs", keys[1] = "capture.dpdk.rx_descriptors";
        if (c->capture.readers > 1)
            snprintf(msg, size, "capture.dpdk.mbufs: expected 0 (4 × rx_descriptors × readers) or more than "
                     "capture.dpdk.rx_descriptors × capture.readers (%" PRIu64 "), got %u", descriptors,
                     c->capture.dpdk_port.mbufs);
        else
            snprintf(msg, size, "capture.dpdk.mbufs: expected 0 (4 × rx_descriptors) or more than "
                     "capture.dpdk.rx_descriptors (%u), got %u", c->capture.dpdk_port.rx_descriptors,
                     c->capture.dpdk_port.mbufs);
        return -1;
    }
    if (!output_used)
        return 0;
    if (c->output.kind == CFG_OUTPUT_FILE && c->output.filename[0] == '\0') {
        keys[0] = "output.filename", keys[1] = "output.type";
        snprintf(msg, size, "output.filename: expected a file name with output.type \"file\", got \"\"");
        return -1;
    }
    if (c->output.kind == CFG_OUTPUT_UNIX_STREAM && c->output.socket[0] == '\0') {
        keys[0] = "output.socket", keys[1] = "output.type";
        snprintf(msg, size, "output.socket: expected a socket path with output.type \"unix_stream\", "
                 "got \"\"");
        return -1;
    }
    return 0;
}

int cfg_validate(const struct cfg_sensor *c, char *err, size_t errlen)
{
    char msg[CFG_MSG_MAX], prefix[CFG_PATH_MAX + 8] = "";
    const char *keys[2];
    const char *path_end = memchr(c->path, '\0', sizeof(c->path));
    if (path_end && c->path[0])
        snprintf(prefix, sizeof(prefix), "%s: ", c->path);
    if (cfg_check_fields(&cfg_root, "", (const char *)c, msg, sizeof(msg)) < 0 ||
        cfg_check_combinations(c, true, msg, sizeof(msg), keys) < 0) {
        cfg_message(err, errlen, prefix, "%s", msg);
        return -1;
    }
    return 0;
}

/* ---- loading ---- */

/* "near "<the line>"" for libconfig's bare "syntax error", which does not say what it met. */
static void cfg_describe_line(const char *text, unsigned line, char *buf, size_t size)
{
    const char *p = text;
    for (unsigned l = 1; l < line && p; l++) {
        p = strchr(p, '\n');
        p = p ? p + 1 : NULL;
    }
    if (!p) {
        snprintf(buf, size, "at the end of the file");
        return;
    }
    while (*p == ' ' || *p == '\t')
        p++;
    size_t n = strcspn(p, "\r\n");
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    if (n == 0) {
        snprintf(buf, size, "at the end of the file");
        return;
    }
    char copy[CFG_SHOW_MAX + 4]; /* more than shown, so that the cut says "..." */
    size_t k = n < sizeof(copy) - 1 ? n : sizeof(copy) - 1;
    memcpy(copy, p, k);
    copy[k] = '\0';
    char shown[CFG_SHOWN_SIZE];
    cfg_show_quoted(shown, sizeof(shown), copy, '\'');
    snprintf(buf, size, "near %s", shown);
}

static int cfg_load_text(const char *name, const char *text, bool output_used, struct cfg_sensor *out,
                         char *err, size_t errlen)
{
    if (!name)
        name = "config";
    struct cfg_sensor *c = malloc(sizeof(*c)); /* ~14 KiB: not for a reload thread's stack */
    struct cfg_scan scan;
    char prefix[CFG_PATH_MAX + 32];
    if (!c || !text || cfg_prescan(text, &scan) < 0) {
        snprintf(prefix, sizeof(prefix), "%s: ", name);
        cfg_message(err, errlen, prefix, "%s", text ? "out of memory" : "no text");
        free(c);
        return -1;
    }
    if (scan.include_line) {
        snprintf(prefix, sizeof(prefix), "%s:%u: ", name, scan.include_line);
        cfg_message(err, errlen, prefix, "@include: expected the settings themselves, got an "
                    "@include (one file holds the whole configuration)");
        free(scan.wide);
        free(c);
        return -1;
    }

    cfg_defaults(c);
    cfg_copy_string(c->path, sizeof(c->path), name);
    struct cfg_loader ld = {name, &scan, err, errlen};
    config_t lc;
    config_init(&lc);
    int rc = -1;
    if (!config_read_string(&lc, text)) {
        const char *what = config_error_text(&lc) ? config_error_text(&lc) : "unreadable";
        unsigned line = config_error_line(&lc) > 0 ? (unsigned)config_error_line(&lc) : 1;
        char near[CFG_SHOWN_SIZE + 16];
        near[0] = '\0';
        if (strcmp(what, "syntax error") == 0) {
            cfg_describe_line(text, line, near, sizeof(near));
            what = near;
        }
        snprintf(prefix, sizeof(prefix), "%s:%u: ", name, line);
        cfg_message(err, errlen, prefix, "syntax error: %s", what);
    } else if (cfg_load_group(&ld, &cfg_root, "", config_root_setting(&lc), (char *)c) == 0) {
        char msg[CFG_MSG_MAX];
        const char *keys[2];
        if (cfg_check_combinations(c, output_used, msg, sizeof(msg), keys) < 0) {
            /* The line of whichever of the keys the file sets (a default may be the other). */
            const config_setting_t *s = config_lookup(&lc, keys[0]);
            if (!s)
                s = config_lookup(&lc, keys[1]);
            if (s)
                snprintf(prefix, sizeof(prefix), "%s:%u: ", name, config_setting_source_line(s));
            else
                snprintf(prefix, sizeof(prefix), "%s: ", name);
            cfg_message(err, errlen, prefix, "%s", msg);
        } else {
            memcpy(out, c, sizeof(*c));
            rc = 0;
        }
    }
    config_destroy(&lc);
    free(scan.wide);
    free(c);
    return rc;
}

int cfg_load_buffer(const char *name, const char *text, struct cfg_sensor *out, char *err,
                    size_t errlen)
{
    return cfg_load_text(name, text, true, out, err, errlen);
}

static int cfg_load_file(const char *path, bool output_used, struct cfg_sensor *out, char *err, size_t errlen)
{
    char prefix[CFG_PATH_MAX + 32];
    if (!path) {
        cfg_message(err, errlen, "", "no configuration file named");
        return -1;
    }
    snprintf(prefix, sizeof(prefix), "%s: ", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        cfg_message(err, errlen, prefix, "cannot read: %s", strerror(errno));
        return -1;
    }
    /* Read to the end (a pipe or /proc file has no size to trust), refusing what is too large. */
    char *text = malloc(CFG_FILE_MAX + 1);
    size_t len = 0;
    int error = text ? 0 : ENOMEM;
    while (!error) {
        ssize_t n = read(fd, text + len, CFG_FILE_MAX + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            error = errno;
        else if (n == 0)
            break;
        else if ((len += (size_t)n) > CFG_FILE_MAX)
            error = EFBIG;
    }
    close(fd);
    if (error) {
        cfg_message(err, errlen, prefix, "cannot read: %s", strerror(error));
        free(text);
        return -1;
    }
    text[len] = '\0';
    const char *nul = memchr(text, '\0', len);
    if (nul) { /* libconfig would stop there and take a truncated file for the whole */
        unsigned line = 1;
        for (const char *p = text; p < nul; p++)
            line += *p == '\n';
        snprintf(prefix, sizeof(prefix), "%s:%u: ", path, line);
        cfg_message(err, errlen, prefix, "syntax error: a NUL byte (not a text file?)");
        free(text);
        return -1;
    }
    int rc = cfg_load_text(path, text, output_used, out, err, errlen);
    free(text);
    return rc;
}

int cfg_load(const char *path, struct cfg_sensor *out, char *err, size_t errlen)
{
    return cfg_load_file(path, true, out, err, errlen);
}

int cfg_load_unused_output(const char *path, struct cfg_sensor *out, char *err, size_t errlen)
{
    return cfg_load_file(path, false, out, err, errlen);
}
