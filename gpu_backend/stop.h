/*
 * stop.h - stop strings over generated text.  The scheduler appends each
 * token's text and asks two things: does the text now contain a stop
 * string (then it ends before it), and how much of its end could still
 * become one (that much is held back, so no byte of a stop string is
 * ever sent).  Stop strings are valid UTF-8, and so is the text, so
 * both answers fall on character boundaries.
 */

#ifndef GPU_STOP_H
#define GPU_STOP_H

#include <stddef.h>

#include "channel.h"

typedef struct {
    int          n;
    const char  *s[GPU_STOP_MAX];
    size_t       len[GPU_STOP_MAX];
    size_t       max_len;
} stop_set_t;

/* the slot's stop strings (empty ones are left out) */
void stop_init(stop_set_t *ss, const gpu_slot_t *slot);

/*
 * The earliest stop string in text[0..n) that ends after offset `from`
 * (what is new since the last call): its start, or -1.
 */
long stop_find(const stop_set_t *ss, const char *text, size_t n,
    size_t from);

/* bytes at the end of text[0..n) that are a proper prefix of a stop */
size_t stop_hold(const stop_set_t *ss, const char *text, size_t n);

#endif /* GPU_STOP_H */
