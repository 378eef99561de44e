/*
 * utf8.c - see utf8.h.  Validation follows RFC 3629: no overlong forms,
 * no surrogates, nothing above U+10FFFF.
 */

#include <string.h>

#include "utf8.h"


/* length of a sequence led by b, or 0 if b cannot lead one */
static int
utf8_lead_len(unsigned char b)
{
    if (b < 0x80) {
        return 1;
    }
    if (b >= 0xc2 && b <= 0xdf) {
        return 2;
    }
    if (b >= 0xe0 && b <= 0xef) {
        return 3;
    }
    if (b >= 0xf0 && b <= 0xf4) {
        return 4;
    }
    return 0;
}


/* is c a valid continuation at index i of a sequence led by lead */
static int
utf8_cont_ok(unsigned char lead, int i, unsigned char c)
{
    if ((c & 0xc0) != 0x80) {
        return 0;
    }
    if (i == 1) {
        if (lead == 0xe0 && c < 0xa0) {
            return 0;                   /* overlong */
        }
        if (lead == 0xed && c > 0x9f) {
            return 0;                   /* surrogate */
        }
        if (lead == 0xf0 && c < 0x90) {
            return 0;                   /* overlong */
        }
        if (lead == 0xf4 && c > 0x8f) {
            return 0;                   /* above U+10FFFF */
        }
    }
    return 1;
}


size_t
utf8_sanitize(const unsigned char *in, size_t n, int final,
    unsigned char *out, size_t *consumed)
{
    int     len, i;
    size_t  p, o;

    p = 0;
    o = 0;

    while (p < n) {
        len = utf8_lead_len(in[p]);

        if (len == 0) {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            p++;
            continue;
        }

        for (i = 1; i < len && p + i < n; i++) {
            if (!utf8_cont_ok(in[p], i, in[p + i])) {
                break;
            }
        }

        if (i == len) {
            memcpy(out + o, in + p, len);
            o += len;
            p += len;
            continue;
        }

        if (p + i == n && !final) {
            break;                      /* incomplete tail: wait */
        }

        /* the bytes so far can never complete: one U+FFFD for them */
        memcpy(out + o, "\xef\xbf\xbd", 3);
        o += 3;
        p += i;
    }

    *consumed = p;
    return o;
}


size_t
utf8_chars(const unsigned char *p, size_t n)
{
    size_t  i, c;

    c = 0;
    for (i = 0; i < n; i++) {
        c += (p[i] & 0xc0) != 0x80;
    }
    return c;
}
