/*
 * pretok.c - see pretok.h.  Each alternative of the patterns is a small
 * function that returns the end of its match at i, or 0 when it does
 * not match there (a match is never empty, so 0 is free); the first
 * alternative that matches wins, as in a backtracking regex engine.
 */

#include <string.h>

#include "pretok.h"
#include "unicode.h"

#define CH_OTHER   UC_OTHER
#define CH_LETTER  UC_LETTER
#define CH_NUMBER  UC_NUMBER
#define CH_SPACE   3

static const char  gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+"
    "|\\s+(?!\\S)|\\s+";
static const char  gpt4_head[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}";
static const char  gpt4_tail[] =
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";


int
pretok_parse(const char *pat, pretok_t *p)
{
    size_t  h = sizeof(gpt4_head) - 1;
    int     k = 0;

    if (strcmp(pat, gpt2_pattern) == 0) {
        pretok_gpt2(p);
        return 0;
    }
    if (strncmp(pat, gpt4_head, h) != 0) {
        return -1;
    }
    pat += h;
    if (strncmp(pat, "{1,", 3) == 0) {
        for (pat += 3; *pat >= '0' && *pat <= '9' && k < 1000; pat++) {
            k = k * 10 + (*pat - '0');
        }
        if (*pat++ != '}' || k < 1) {
            return -1;
        }
    } else {
        k = 1;
    }
    if (strcmp(pat, gpt4_tail) != 0) {
        return -1;
    }
    p->kind = PRETOK_GPT4;
    p->max_digits = k;
    return 0;
}


void
pretok_gpt2(pretok_t *p)
{
    p->kind = PRETOK_GPT2;
    p->max_digits = 0;
}


/* class and length of the character at s[i]; invalid bytes: OTHER, 1 */
static int
ch_at(const char *str, size_t n, size_t i, uint32_t *cp, int *len)
{
    const unsigned char *s = (const unsigned char *) str;
    uint32_t             c;
    int                  k;

    if (s[i] < 0x80) {
        c = s[i];
        k = 1;
    } else if ((k = uc_utf8_len(s + i, n - i, &c)) == 0) {
        *cp = 0xfffd;
        *len = 1;
        return CH_OTHER;
    }
    *cp = c;
    *len = k;
    return uc_is_space(c) ? CH_SPACE : uc_class(c);
}


/* end of the run of class cls at i (i itself may be outside it) */
static size_t
run_of(const char *s, size_t n, size_t i, int cls)
{
    uint32_t  c;
    int       len;

    while (i < n && ch_at(s, n, i, &c, &len) == cls) {
        i += len;
    }
    return i;
}


/* 's 't 're 've 'm 'll 'd, ASCII-exact or (icase) Unicode-caseless */
static size_t
contraction(const char *str, size_t n, size_t i, int icase)
{
    const unsigned char *s = (const unsigned char *) str;
    unsigned char        a, b;

    if (s[i] != '\'' || i + 1 >= n) {
        return 0;
    }
    a = s[i + 1];
    if (icase && a == 0xc5 && i + 2 < n && s[i + 2] == 0xbf) {
        return i + 3;               /* U+017F LONG S folds to s */
    }
    if (icase && a >= 'A' && a <= 'Z') {
        a += 'a' - 'A';
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') {
        return i + 2;
    }
    if (i + 2 >= n) {
        return 0;
    }
    b = s[i + 2];
    if (icase && b >= 'A' && b <= 'Z') {
        b += 'a' - 'A';
    }
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e')
        || (a == 'l' && b == 'l'))
    {
        return i + 3;
    }
    return 0;
}


/* \s*[\r\n]+ : through the last \r or \n of the whitespace run */
static size_t
space_to_newline(const char *s, size_t n, size_t i)
{
    size_t    p = i, end = 0;
    uint32_t  c;
    int       len;

    while (p < n && ch_at(s, n, p, &c, &len) == CH_SPACE) {
        p += len;
        if (c == '\r' || c == '\n') {
            end = p;
        }
    }
    return end;
}


/* \s+(?!\S)|\s+ : all of the run at the end, else all but its last */
static size_t
space_run(const char *s, size_t n, size_t i)
{
    size_t    p = i, last = i;
    uint32_t  c;
    int       len;

    while (p < n && ch_at(s, n, p, &c, &len) == CH_SPACE) {
        last = p;
        p += len;
    }
    if (p == n || last == i) {
        return p;                   /* (?!\S) holds, or \s+ takes one */
    }
    return last;
}


static size_t
next_gpt2(const char *s, size_t n, size_t i)
{
    size_t    e, j;
    uint32_t  c;
    int       len, cls;

    if ((e = contraction(s, n, i, 0)) != 0) {
        return e;
    }
    cls = ch_at(s, n, i, &c, &len);
    j = i;
    if (c == ' ' && i + 1 < n) {
        /* " ?" before a letter, number or symbol run */
        cls = ch_at(s, n, i + 1, &c, &len);
        if (cls != CH_SPACE) {
            j = i + 1;
        } else {
            cls = CH_SPACE;
        }
    }
    if (cls != CH_SPACE) {
        return run_of(s, n, j, cls);
    }
    return space_run(s, n, i);
}


static size_t
next_gpt4(const pretok_t *p, const char *s, size_t n, size_t i)
{
    size_t    e, j;
    uint32_t  c, c2;
    int       len, len2, cls, cls2, k;

    if ((e = contraction(s, n, i, 1)) != 0) {
        return e;
    }
    cls = ch_at(s, n, i, &c, &len);

    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (cls == CH_LETTER) {
        return run_of(s, n, i, CH_LETTER);
    }
    if (cls != CH_NUMBER && c != '\r' && c != '\n' && i + len < n
        && ch_at(s, n, i + len, &c2, &len2) == CH_LETTER)
    {
        return run_of(s, n, i + len, CH_LETTER);
    }

    /* \p{N}{1,k} */
    if (cls == CH_NUMBER) {
        for (j = i, k = 0; k < p->max_digits && j < n
             && ch_at(s, n, j, &c2, &len2) == CH_NUMBER; k++)
        {
            j += len2;
        }
        return j;
    }

    /* " ?[^\s\p{L}\p{N}]+[\r\n]*" */
    j = i;
    cls2 = cls;
    if (c == ' ' && i + 1 < n) {
        cls2 = ch_at(s, n, i + 1, &c2, &len2);
        j = i + 1;
    }
    if (cls2 == CH_OTHER) {
        e = run_of(s, n, j, CH_OTHER);
        while (e < n && (s[e] == '\r' || s[e] == '\n')) {
            e++;
        }
        return e;
    }

    /* whitespace: \s*[\r\n]+, then \s+(?!\S), then \s+ */
    if ((e = space_to_newline(s, n, i)) != 0) {
        return e;
    }
    return space_run(s, n, i);
}


size_t
pretok_next(const pretok_t *p, const char *s, size_t n, size_t i)
{
    return p->kind == PRETOK_GPT2 ? next_gpt2(s, n, i)
                                  : next_gpt4(p, s, n, i);
}
