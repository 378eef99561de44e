/*
 * step_clock.h - where a serving step's time goes, device and host, for
 * the CUDA engine (NGX_GPU_STEP_LOG=N: a log line every N steps).
 *
 * Overlapped steps hide the host's work behind the device's only while
 * the host keeps a step queued.  Whether it does is what this measures:
 * each step's device time (an event before its upload, one after its
 * downloads), the device's idle time between steps (the previous step's
 * end to this one's start: above zero when the host queued it late),
 * the host's time blocked in the wait for a step, and the host's period
 * from one step's begin to the next.  Steps are counted by kind:
 * a decode graph, a mixed graph (requests joining) or eager kernels.
 */

#ifndef GPU_STEP_CLOCK_H
#define GPU_STEP_CLOCK_H

#include <stdint.h>

#include <cuda_runtime.h>

#define SC_DECODE  0
#define SC_MIXED   1
#define SC_EAGER   2
#define SC_KINDS   3

/* a step's events live until the step after next has begun */
#define SC_RING    3

typedef struct {
    int          every;             /* 0: off */
    cudaEvent_t  start[SC_RING], end[SC_RING];
    uint8_t      kind[SC_RING];
    int          rows[SC_RING];
    uint64_t     begun, ended;      /* steps */
    int64_t      last_begin_ns;

    /* sums since the last log line */
    uint64_t     n[SC_KINDS], n_rows[SC_KINDS], n_gap, n_period;
    double       busy_ms[SC_KINDS], gap_ms, gap_max_ms, wait_ms,
                 period_ms;
} step_clock_t;

#ifdef __cplusplus
extern "C" {
#endif

/* reads NGX_GPU_STEP_LOG; events only when it is set; 0 or -1 */
int sc_init(step_clock_t *sc);
void sc_free(step_clock_t *sc);

/* around a step's work on the stream, in cu_begin */
void sc_step_start(step_clock_t *sc, cudaStream_t s, int kind, int rows);
void sc_step_stop(step_clock_t *sc, cudaStream_t s);

/* in cu_end, after the wait (wait_ns long) for the oldest step */
void sc_step_ended(step_clock_t *sc, int64_t wait_ns);

#ifdef __cplusplus
}
#endif

#endif /* GPU_STEP_CLOCK_H */
