/*
 * stop.c - see stop.h.  Stop strings are few and short: plain searches
 * over the new end of the text are all it takes.
 */

#include <string.h>

#include "stop.h"


void
stop_init(stop_set_t *ss, const gpu_slot_t *slot)
{
    uint32_t  i, n;

    ss->n = 0;
    ss->max_len = 0;
    n = slot->n_stop < GPU_STOP_MAX ? slot->n_stop : GPU_STOP_MAX;
    for (i = 0; i < n; i++) {
        if (slot->stop_len[i] == 0 || slot->stop_len[i] > GPU_STOP_LEN) {
            continue;
        }
        ss->s[ss->n] = slot->stop[i];
        ss->len[ss->n] = slot->stop_len[i];
        if (ss->len[ss->n] > ss->max_len) {
            ss->max_len = ss->len[ss->n];
        }
        ss->n++;
    }
}


long
stop_find(const stop_set_t *ss, const char *text, size_t n, size_t from)
{
    const char  *hit;
    size_t       start;
    long         best = -1;
    int          i;

    for (i = 0; i < ss->n; i++) {
        /* a match ending after `from` starts at from - len + 1 or later */
        start = from + 1 > ss->len[i] ? from + 1 - ss->len[i] : 0;
        if (start >= n) {
            continue;
        }
        hit = memmem(text + start, n - start, ss->s[i], ss->len[i]);
        if (hit != NULL && (best < 0 || hit - text < best)) {
            best = hit - text;
        }
    }
    return best;
}


size_t
stop_hold(const stop_set_t *ss, const char *text, size_t n)
{
    size_t  k;
    int     i;

    k = ss->max_len > 0 ? ss->max_len - 1 : 0;
    if (k > n) {
        k = n;
    }
    for ( ; k > 0; k--) {
        for (i = 0; i < ss->n; i++) {
            if (ss->len[i] > k && memcmp(text + n - k, ss->s[i], k) == 0) {
                return k;
            }
        }
    }
    return 0;
}
