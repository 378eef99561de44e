/*
 * cpu_threads.c - the CPU engine's worker pool.
 *
 * A task is published by bumping a generation counter; workers that see
 * it run their part and count down `pending`.  The caller runs part 0 and
 * then waits until pending is 0.  Waiting spins first, which for the
 * short tasks of a forward step costs less than sleeping would, then
 * yields the CPU (so that more threads than free cores degrade instead of
 * stalling on preempted spinners), and an idle worker finally sleeps on a
 * condition variable; the generation is bumped under its mutex, so no
 * wake-up is lost.
 */

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "cpu_threads.h"

/* a waiting thread pauses this many times, then yields this many times
 * (tens of µs, then about a ms); a step's tasks come back to back well
 * within that.  Then an idle worker sleeps. */
#define SPIN_PAUSES  (1 << 12)
#define SPIN_YIELDS  1000

/* one more round of waiting: pause, or give the CPU away */
static inline void
wait_a_bit(int spins)
{
    if (spins < SPIN_PAUSES) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    } else {
        sched_yield();
    }
}

typedef struct {
    cpu_threads_t  *p;
    int             part;
} worker_t;

struct cpu_threads_s {
    int               n;              /* threads, caller included */
    int               started;        /* workers running */
    pthread_t        *tids;           /* [n], 0 unused */
    worker_t         *workers;        /* [n], 0 unused */
    cpu_task_fn       fn;             /* the task, valid for a generation */
    void             *arg;
    int               stop;
    atomic_uint       gen;
    atomic_int        pending;
    pthread_mutex_t   mu;
    pthread_cond_t    cv;
    int               sleepers;       /* under mu */
};

static void *
worker_main(void *v)
{
    worker_t *w = v;
    cpu_threads_t *p = w->p;
    unsigned seen = 0, g;

    for (;;) {
        int spins = 0;

        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire))
               == seen)
        {
            if (++spins < SPIN_PAUSES + SPIN_YIELDS) {
                wait_a_bit(spins);
                continue;
            }
            pthread_mutex_lock(&p->mu);
            p->sleepers++;
            while (atomic_load_explicit(&p->gen, memory_order_acquire)
                   == seen)
            {
                pthread_cond_wait(&p->cv, &p->mu);
            }
            p->sleepers--;
            pthread_mutex_unlock(&p->mu);
            spins = 0;
        }
        seen = g;
        if (p->stop) {
            return NULL;
        }
        p->fn(p->arg, w->part, p->n);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
    }
}

/* make fn/arg/stop visible to the workers and wake sleeping ones */
static void
publish(cpu_threads_t *p)
{
    atomic_store_explicit(&p->pending, p->started, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    if (p->sleepers > 0) {
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
}

cpu_threads_t *
cpu_threads_create(int n)
{
    cpu_threads_t *p;
    int i;

    if (n <= 1) {
        return NULL;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return NULL;
    }
    p->n = n;
    p->tids = calloc((size_t) n, sizeof(*p->tids));
    p->workers = calloc((size_t) n, sizeof(*p->workers));
    if (p->tids == NULL || p->workers == NULL) {
        free(p->tids);
        free(p->workers);
        free(p);
        return NULL;
    }
    atomic_init(&p->gen, 0);
    atomic_init(&p->pending, 0);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    for (i = 1; i < n; i++) {
        p->workers[i].p = p;
        p->workers[i].part = i;
        if (pthread_create(&p->tids[i], NULL, worker_main, &p->workers[i])
            != 0)
        {
            cpu_threads_destroy(p);
            return NULL;
        }
        p->started++;
    }
    return p;
}

void
cpu_threads_destroy(cpu_threads_t *p)
{
    int i;

    if (p == NULL) {
        return;
    }
    p->stop = 1;
    publish(p);
    for (i = 1; i <= p->started; i++) {
        pthread_join(p->tids[i], NULL);
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->tids);
    free(p->workers);
    free(p);
}

int
cpu_threads_count(const cpu_threads_t *p)
{
    return p ? p->n : 1;
}

void
cpu_threads_run(cpu_threads_t *p, cpu_task_fn fn, void *arg)
{
    int spins;

    if (p == NULL) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    publish(p);
    fn(arg, 0, p->n);
    for (spins = 0;
         atomic_load_explicit(&p->pending, memory_order_acquire) != 0;
         spins++)
    {
        wait_a_bit(spins);
    }
}
