/*
 * cpu_threads.h - a small persistent pool of worker threads for the CPU
 * engine.  run() hands the same task to every thread (the caller is part
 * 0) and returns when all parts are done; each part picks its share from
 * (part, n_parts).  Workers spin briefly between tasks, since a step runs
 * dozens of them back to back, then sleep.
 */

#ifndef GPU_CPU_THREADS_H
#define GPU_CPU_THREADS_H

typedef struct cpu_threads_s  cpu_threads_t;

typedef void (*cpu_task_fn)(void *arg, int part, int n_parts);

/* n threads in all, the caller included; n <= 1 gives NULL, no threads */
cpu_threads_t *cpu_threads_create(int n);
void cpu_threads_destroy(cpu_threads_t *p);

/* threads in all (1 for NULL) */
int cpu_threads_count(const cpu_threads_t *p);

/* fn(arg, part, n) for part 0 .. n-1; with p NULL just fn(arg, 0, 1) */
void cpu_threads_run(cpu_threads_t *p, cpu_task_fn fn, void *arg);

#endif /* GPU_CPU_THREADS_H */
