/*
 * errbuf.h - the loaders' and the engine's error messages: a printf into
 * the caller's buffer, which may be NULL (the caller does not want it).
 */

#ifndef GPU_ERRBUF_H
#define GPU_ERRBUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

static inline void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static inline void
set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

#endif /* GPU_ERRBUF_H */
