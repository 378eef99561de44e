/*
 * unicode.c - see unicode.h.  NFC follows UAX #15: full canonical
 * decomposition, canonical ordering of combining marks, then canonical
 * composition of each mark with the last starter it is not blocked
 * from; Hangul syllables are decomposed and composed by arithmetic.
 */

#include "unicode.h"

#define HANGUL_S      0xac00
#define HANGUL_L      0x1100
#define HANGUL_V      0x1161
#define HANGUL_T      0x11a7
#define HANGUL_LN     19
#define HANGUL_VN     21
#define HANGUL_TN     28
#define HANGUL_NN     (HANGUL_VN * HANGUL_TN)
#define HANGUL_SN     (HANGUL_LN * HANGUL_NN)

/* an invalid byte b travels through NFC as this code point */
#define UC_RAW_BYTE   0x110000


static uint32_t
range_find(const uc_range_t *r, int n, uint32_t c)
{
    int lo = 0, hi = n - 1, mid;

    while (lo <= hi) {
        mid = (lo + hi) / 2;
        if (c < r[mid].lo) {
            hi = mid - 1;
        } else if (c > r[mid].hi) {
            lo = mid + 1;
        } else {
            return r[mid].v;
        }
    }
    return 0;
}


static int
u32_find(const uint32_t *a, int n, uint32_t c)
{
    int lo = 0, hi = n - 1, mid;

    while (lo <= hi) {
        mid = (lo + hi) / 2;
        if (c < a[mid]) {
            hi = mid - 1;
        } else if (c > a[mid]) {
            lo = mid + 1;
        } else {
            return mid;
        }
    }
    return -1;
}


int
uc_class(uint32_t c)
{
    if (c < 0x80) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ? UC_LETTER
               : (c >= '0' && c <= '9') ? UC_NUMBER : UC_OTHER;
    }
    return (int) range_find(uc_letter_number, uc_letter_number_n, c);
}


int
uc_is_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0
           || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028
           || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}


int
uc_ccc(uint32_t c)
{
    return c < 0x300 ? 0 : (int) range_find(uc_ccc_ranges, uc_ccc_ranges_n, c);
}


int
uc_utf8_len(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char b = s[0];
    uint32_t      c;
    int           len, i;

    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    if (b >= 0xc2 && b <= 0xdf) {
        len = 2;
        c = b & 0x1f;
    } else if (b >= 0xe0 && b <= 0xef) {
        len = 3;
        c = b & 0x0f;
    } else if (b >= 0xf0 && b <= 0xf4) {
        len = 4;
        c = b & 0x07;
    } else {
        return 0;
    }
    if ((size_t) len > n) {
        return 0;
    }
    for (i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }
        c = (c << 6) | (s[i] & 0x3f);
    }
    /* overlong, surrogate, above U+10FFFF */
    if ((len == 3 && c < 0x800) || (len == 4 && c < 0x10000)
        || (c >= 0xd800 && c <= 0xdfff) || c > 0x10ffff)
    {
        return 0;
    }
    *cp = c;
    return len;
}


int
uc_utf8_put(uint32_t c, unsigned char *o)
{
    if (c < 0x80) {
        o[0] = (unsigned char) c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (unsigned char) (0xc0 | c >> 6);
        o[1] = (unsigned char) (0x80 | (c & 0x3f));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (unsigned char) (0xe0 | c >> 12);
        o[1] = (unsigned char) (0x80 | ((c >> 6) & 0x3f));
        o[2] = (unsigned char) (0x80 | (c & 0x3f));
        return 3;
    }
    o[0] = (unsigned char) (0xf0 | c >> 18);
    o[1] = (unsigned char) (0x80 | ((c >> 12) & 0x3f));
    o[2] = (unsigned char) (0x80 | ((c >> 6) & 0x3f));
    o[3] = (unsigned char) (0x80 | (c & 0x3f));
    return 4;
}


int
uc_nfc_quick(const char *in, size_t n)
{
    const unsigned char *s = (const unsigned char *) in;
    size_t               p;
    uint32_t             c;
    int                  len;

    for (p = 0; p < n; p += len) {
        if (s[p] < 0x80) {
            len = 1;
            continue;
        }
        len = uc_utf8_len(s + p, n - p, &c);
        if (len == 0) {
            len = 1;                /* an invalid byte changes nothing */
            continue;
        }
        if (c < 0x300) {
            continue;               /* every one is its own NFC */
        }
        if (uc_ccc(c) != 0 || (c >= HANGUL_L && c < HANGUL_L + 0x100)
            || u32_find(uc_decomp_key, uc_decomp_n, c) >= 0
            || u32_find(uc_compose_second, uc_compose_second_n, c) >= 0)
        {
            return 0;
        }
    }
    return 1;
}


/* append the full canonical decomposition of c */
static size_t
decompose(uint32_t c, uint32_t *o)
{
    uint32_t  s, t;
    int       i, k;

    if (c >= HANGUL_S && c < HANGUL_S + HANGUL_SN) {
        s = c - HANGUL_S;
        o[0] = HANGUL_L + s / HANGUL_NN;
        o[1] = HANGUL_V + (s % HANGUL_NN) / HANGUL_TN;
        t = s % HANGUL_TN;
        if (t == 0) {
            return 2;
        }
        o[2] = HANGUL_T + t;
        return 3;
    }
    i = c < 0xc0 ? -1 : u32_find(uc_decomp_key, uc_decomp_n, c);
    if (i < 0) {
        o[0] = c;
        return 1;
    }
    for (k = uc_decomp_off[i]; k < uc_decomp_off[i + 1]; k++) {
        *o++ = uc_decomp_data[k];
    }
    return (size_t) (uc_decomp_off[i + 1] - uc_decomp_off[i]);
}


/* the primary composite of a + b, or 0 */
static uint32_t
compose(uint32_t a, uint32_t b)
{
    int lo = 0, hi = uc_compose_n - 1, mid;

    if (a >= HANGUL_L && a < HANGUL_L + HANGUL_LN
        && b >= HANGUL_V && b < HANGUL_V + HANGUL_VN)
    {
        return HANGUL_S + ((a - HANGUL_L) * HANGUL_VN + (b - HANGUL_V))
                          * HANGUL_TN;
    }
    if (a >= HANGUL_S && a < HANGUL_S + HANGUL_SN
        && (a - HANGUL_S) % HANGUL_TN == 0
        && b > HANGUL_T && b < HANGUL_T + HANGUL_TN)
    {
        return a + (b - HANGUL_T);
    }
    while (lo <= hi) {
        mid = (lo + hi) / 2;
        if (a < uc_compose[mid].first
            || (a == uc_compose[mid].first && b < uc_compose[mid].second))
        {
            hi = mid - 1;
        } else if (a > uc_compose[mid].first
                   || b > uc_compose[mid].second)
        {
            lo = mid + 1;
        } else {
            return uc_compose[mid].composite;
        }
    }
    return 0;
}


size_t
uc_nfc(const char *in, size_t n, char *out, uint32_t *cps)
{
    const unsigned char *s = (const unsigned char *) in;
    unsigned char       *o = (unsigned char *) out;
    size_t               p, m, i, j, k, starter;
    uint32_t             c, x;
    int                  len, cc, last, have_starter;

    /* 1. decompose; invalid bytes become opaque starters */
    m = 0;
    for (p = 0; p < n; p += len) {
        len = uc_utf8_len(s + p, n - p, &c);
        if (len == 0) {
            cps[m++] = UC_RAW_BYTE + s[p];
            len = 1;
            continue;
        }
        m += decompose(c, cps + m);
    }

    /* 2. canonical ordering: stable sort of each run of marks by class */
    for (i = 1; i < m; i++) {
        cc = cps[i] >= UC_RAW_BYTE ? 0 : uc_ccc(cps[i]);
        if (cc == 0) {
            continue;
        }
        for (j = i; j > 0; j--) {
            x = cps[j - 1];
            if (x >= UC_RAW_BYTE || uc_ccc(x) <= cc) {
                break;
            }
            cps[j - 1] = cps[j];
            cps[j] = x;
        }
    }

    /*
     * 3. compose: each character with the last starter, unless a
     * character in between has class 0 or a class >= its own
     */
    k = 0;
    starter = 0;
    have_starter = 0;
    last = -1;                      /* class of the last kept, -1: none */
    for (i = 0; i < m; i++) {
        c = cps[i];
        cc = c >= UC_RAW_BYTE ? 0 : uc_ccc(c);
        if (have_starter && c < UC_RAW_BYTE && cps[starter] < UC_RAW_BYTE
            && (last == -1 || (last != 0 && last < cc))
            && (x = compose(cps[starter], c)) != 0)
        {
            cps[starter] = x;
            continue;
        }
        if (cc == 0) {
            starter = k;
            have_starter = 1;
            last = -1;
        } else {
            last = cc;
        }
        cps[k++] = c;
    }

    for (i = 0; i < k; i++) {
        if (cps[i] >= UC_RAW_BYTE) {
            *o++ = (unsigned char) (cps[i] - UC_RAW_BYTE);
        } else {
            o += uc_utf8_put(cps[i], o);
        }
    }
    return (size_t) (o - (unsigned char *) out);
}
