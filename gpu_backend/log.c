/* log.c - see log.h */

#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "log.h"


void
log_msg(const char *level, const char *fmt, ...)
{
    char             ts[32], line[1024];
    va_list          ap;
    struct tm        tm;
    struct timespec  now;

    clock_gettime(CLOCK_REALTIME, &now);
    localtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof(ts), "%Y/%m/%d %H:%M:%S", &tm);

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);

    /* one write per line, so lines from the supervisor and the server
     * never interleave */
    dprintf(STDERR_FILENO, "%s gpu_backend[%d] %s: %s\n", ts, (int) getpid(),
            level, line);
}
