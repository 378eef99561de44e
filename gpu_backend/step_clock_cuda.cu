/*
 * step_clock_cuda.cu - see step_clock.h.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "log.h"
}
#include "mono_clock.h"
#include "step_clock.h"

static const char *sc_kind_name[SC_KINDS] = { "decode", "mixed", "eager" };

int
sc_init(step_clock_t *sc)
{
    const char *env = getenv("NGX_GPU_STEP_LOG");
    int i;

    memset(sc, 0, sizeof(*sc));
    sc->every = env != NULL ? atoi(env) : 0;
    if (sc->every <= 0) {
        sc->every = 0;
        return 0;
    }
    for (i = 0; i < SC_RING; i++) {
        if (cudaEventCreate(&sc->start[i]) != cudaSuccess
            || cudaEventCreate(&sc->end[i]) != cudaSuccess)
        {
            return -1;
        }
    }
    log_info("step clock: a line every %d steps (NGX_GPU_STEP_LOG)",
             sc->every);
    return 0;
}

void
sc_free(step_clock_t *sc)
{
    int i;

    for (i = 0; i < SC_RING && sc->every > 0; i++) {
        if (sc->start[i] != NULL) {
            cudaEventDestroy(sc->start[i]);
        }
        if (sc->end[i] != NULL) {
            cudaEventDestroy(sc->end[i]);
        }
    }
    sc->every = 0;
}

void
sc_step_start(step_clock_t *sc, cudaStream_t s, int kind, int rows)
{
    int      k = (int) (sc->begun % SC_RING);
    int64_t  now;

    if (sc->every == 0) {
        return;
    }
    now = mono_ns();
    if (sc->begun > 0) {
        sc->period_ms += (now - sc->last_begin_ns) * 1e-6;
        sc->n_period++;
    }
    sc->last_begin_ns = now;
    sc->kind[k] = (uint8_t) kind;
    sc->rows[k] = rows;
    cudaEventRecord(sc->start[k], s);
}

void
sc_step_stop(step_clock_t *sc, cudaStream_t s)
{
    if (sc->every == 0) {
        return;
    }
    cudaEventRecord(sc->end[sc->begun % SC_RING], s);
    sc->begun++;
}

static void
sc_log(step_clock_t *sc)
{
    char  buf[512];
    int   i, o = 0;
    uint64_t all = 0;

    for (i = 0; i < SC_KINDS; i++) {
        all += sc->n[i];
        if (sc->n[i] == 0) {
            continue;
        }
        o += snprintf(buf + o, sizeof(buf) - o, "%s %llu x %.1f us "
                      "(%.1f rows), ", sc_kind_name[i],
                      (unsigned long long) sc->n[i],
                      1e3 * sc->busy_ms[i] / sc->n[i],
                      (double) sc->n_rows[i] / sc->n[i]);
    }
    log_info("step clock: %llu steps: %sidle between %.1f us a step "
             "(max %.1f); host: %.1f us from begin to begin, %.1f us a "
             "step waiting", (unsigned long long) all, buf,
             sc->n_gap ? 1e3 * sc->gap_ms / sc->n_gap : 0.0,
             1e3 * sc->gap_max_ms,
             sc->n_period ? 1e3 * sc->period_ms / sc->n_period : 0.0,
             all ? 1e3 * sc->wait_ms / all : 0.0);
    memset(sc->n, 0, sizeof(sc->n));
    memset(sc->n_rows, 0, sizeof(sc->n_rows));
    memset(sc->busy_ms, 0, sizeof(sc->busy_ms));
    sc->n_gap = sc->n_period = 0;
    sc->gap_ms = sc->gap_max_ms = sc->wait_ms = sc->period_ms = 0;
}

void
sc_step_ended(step_clock_t *sc, int64_t wait_ns)
{
    int    k, prev;
    float  ms;

    if (sc->every == 0) {
        return;
    }
    k = (int) (sc->ended % SC_RING);
    if (cudaEventElapsedTime(&ms, sc->start[k], sc->end[k])
        == cudaSuccess)
    {
        sc->busy_ms[sc->kind[k]] += ms;
        sc->n[sc->kind[k]]++;
        sc->n_rows[sc->kind[k]] += (uint64_t) sc->rows[k];
    }
    /* the step before this one still has its events: at most one step
     * was begun after this one (ENGINE_MAX_PENDING 2) */
    if (sc->ended > 0) {
        prev = (int) ((sc->ended - 1) % SC_RING);
        if (cudaEventElapsedTime(&ms, sc->end[prev], sc->start[k])
            == cudaSuccess)
        {
            ms = ms > 0 ? ms : 0;
            sc->gap_ms += ms;
            sc->gap_max_ms = ms > sc->gap_max_ms ? ms : sc->gap_max_ms;
            sc->n_gap++;
        }
    }
    sc->wait_ms += wait_ns * 1e-6;
    sc->ended++;
    if (sc->ended % (uint64_t) sc->every == 0) {
        sc_log(sc);
    }
}
