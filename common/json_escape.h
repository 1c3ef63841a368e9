/* json_escape.h — the one JSON string escaper of the project, for text that comes from outside
 * it: file names, class folder names, model labels, TSV fields. Every JSON writer that
 * carries such text (the sensor's and replay's events, `netlm sessions -f json`, `netlm classify`
 * and `netlm generate --format json`) uses it, so that they all write valid JSON for the same
 * input.
 *
 * Header-only on purpose: both sensor/ and cli/ include it, it belongs to neither folder's
 * public interface, and an inline function needs no library of its own. */
#ifndef NETLM_JSON_ESCAPE_H
#define NETLM_JSON_ESCAPE_H

#include <stddef.h>
#include <string.h>

/* Room json_escape needs for a string of len bytes, the terminator included: no byte becomes
 * more than six ("\u001f", or "\ufffd" for bytes that are not UTF-8). */
#define JSON_ESCAPED_MAX(len) ((len) * 6 + 1)

/* Bytes of the well-formed UTF-8 sequence at p (RFC 3629: no overlong form, no surrogate, nothing
 * above U+10FFFF), or 0 with *bad set to the bytes that one U+FFFD replaces: the longest start
 * of a well-formed sequence there, at least 1 (Unicode's "maximal subpart", which Python's and
 * the WHATWG decoders replace the same way). Strict because a reader's decoder is (Python's json
 * module rejects the whole line): a file name is bytes on Linux, and a Latin-1 or cut name is
 * common. */
static inline size_t json_utf8_len(const unsigned char *p, size_t *bad)
{
    const unsigned char c = p[0];
    unsigned char lo = 0x80, hi = 0xbf; /* the range of the second byte */
    size_t n;
    *bad = 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0; /* below: overlong */
        else if (c == 0xed)
            hi = 0x9f; /* above: a UTF-16 surrogate */
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90; /* below: overlong */
        else if (c == 0xf4)
            hi = 0x8f; /* above: past U+10FFFF */
    } else {
        return 0;
    }
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) { /* the terminating NUL stops here too */
            *bad = i;
            return 0;
        }
    }
    return n;
}

/* The body of a JSON string (no quotes) for s into out, cap bytes with the terminator; returns
 * its length. Quotes, backslashes and control characters are escaped, well-formed UTF-8 is kept,
 * and what is not becomes U+FFFD (one per maximal subpart, see json_utf8_len), so the output is
 * always valid JSON in valid UTF-8. When out is too small it ends at a character boundary, never
 * inside an escape. */
static inline size_t json_escape(const char *s, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t k = 0;
    if (cap == 0)
        return 0;
    while (*p) {
        const unsigned char ch = *p;
        char tmp[6];
        const char *piece = tmp;
        size_t n, adv = 1;
        if (ch == '"' || ch == '\\') {
            tmp[0] = '\\', tmp[1] = (char)ch, n = 2;
        } else if (ch == '\n') {
            tmp[0] = '\\', tmp[1] = 'n', n = 2;
        } else if (ch == '\t') {
            tmp[0] = '\\', tmp[1] = 't', n = 2;
        } else if (ch < 0x20 || ch == 0x7f) {
            memcpy(tmp, "\\u00", 4);
            tmp[4] = hex[ch >> 4], tmp[5] = hex[ch & 15], n = 6;
        } else if (ch < 0x80) {
            tmp[0] = (char)ch, n = 1;
        } else if ((n = json_utf8_len(p, &adv)) > 0) {
            piece = (const char *)p;
            adv = n;
        } else {
            memcpy(tmp, "\\ufffd", 6);
            n = 6;
        }
        if (k + n + 1 > cap)
            break;
        memcpy(out + k, piece, n);
        k += n;
        p += adv;
    }
    out[k] = '\0';
    return k;
}

#endif
