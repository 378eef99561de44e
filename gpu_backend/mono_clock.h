/*
 * mono_clock.h - nanoseconds on the monotonic clock, for the scheduler's
 * waits and the CUDA engine's step clock.
 */

#ifndef GPU_MONO_CLOCK_H
#define GPU_MONO_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t
mono_ns(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#endif /* GPU_MONO_CLOCK_H */
