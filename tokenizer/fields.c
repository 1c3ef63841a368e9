/* fields.c — header fields as generation targets: read a field, hide it in the input, and
 * write the value the way the seed wrote its IPv4 total length (inet_aton of the decimal
 * value: four bytes big-endian as two tokens, 60 → "0000 003c"). */
#include <string.h>

#include "tokenizer/tokenizer_internal.h"

static const char *const tok_field_names[TOK_FIELD_COUNT] = {"ip_len", "src_port", "dst_port",
                                                             "ttl", "tcp_window"};

const char *tok_field_name(enum tok_field f)
{
    return (unsigned)f < TOK_FIELD_COUNT ? tok_field_names[f] : "?";
}

bool tok_field_parse(const char *name, enum tok_field *out)
{
    for (int i = 0; i < TOK_FIELD_COUNT; i++)
        if (name && strcmp(name, tok_field_names[i]) == 0) {
            *out = (enum tok_field)i;
            return true;
        }
    return false;
}

/* Where the field is: offset and width (1 or 2 bytes), or false when the packet lacks it. */
static bool tok_field_locate(enum tok_field f, const struct cap_layers *L, uint64_t *off,
                             unsigned *width)
{
    uint64_t l3 = L->l3_off, l4 = L->l4_off;
    bool v4 = L->l3_off != CAP_ABSENT && L->ip_version == 4;
    bool v6 = L->l3_off != CAP_ABSENT && L->ip_version == 6;
    bool ports = L->l4_off != CAP_ABSENT && tok_l4_has_ports(L->l4_proto);
    switch (f) {
    case TOK_FIELD_IP_LENGTH:
        *off = v4 ? l3 + 2 : l3 + 4, *width = 2;
        return v4 || v6;
    case TOK_FIELD_SRC_PORT:
        *off = l4, *width = 2;
        return ports;
    case TOK_FIELD_DST_PORT:
        *off = l4 + 2, *width = 2;
        return ports;
    case TOK_FIELD_TTL:
        *off = v4 ? l3 + 8 : l3 + 7, *width = 1;
        return v4 || v6;
    case TOK_FIELD_TCP_WINDOW:
        *off = l4 + 14, *width = 2;
        return L->l4_off != CAP_ABSENT && L->l4_proto == 6;
    default:
        return false;
    }
}

bool tok_field_take(enum tok_field f, uint8_t *frame, size_t len, const struct cap_layers *layers,
                    uint32_t *value)
{
    uint64_t off;
    unsigned width;
    *value = 0;
    if (!tok_field_locate(f, layers, &off, &width) || off > len || width > len - off)
        return false;
    *value = width == 2 ? tok_be16(frame + off) : frame[off];
    memset(frame + off, 0, width);
    return true;
}

void tok_field_target_text(uint32_t value, char out[10])
{
    tok_format_value((uint16_t)(value >> 16), out);
    out[4] = ' ';
    tok_format_value((uint16_t)value, out + 5);
}

bool tok_field_target_value(const char *text, uint64_t *value)
{
    uint64_t v = 0;
    int digits = 0;
    const char *p = text;
    for (;;) {
        for (int d = 0; d < 4; d++, p++) {
            const char c = *p;
            const int x = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
            if (x < 0)
                return false;
            v = v << 4 | (uint64_t)x;
        }
        digits += 4;
        if (digits > 16)
            return false;
        if (*p == '\0')
            break;
        if (*p++ != ' ')
            return false;
    }
    *value = v;
    return true;
}
