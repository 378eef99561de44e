/*
 * carve.h - arrays carved out of one allocation, as the engines take their
 * memory: a first pass with base NULL adds up the sizes, a second one
 * (base the allocation) hands out the pointers.  Each array starts at a
 * multiple of align bytes (a power of two).
 */

#ifndef GPU_CARVE_H
#define GPU_CARVE_H

#include <stddef.h>

typedef struct {
    char    *base;
    size_t   used;
    size_t   align;
} carve_t;

static inline void *
carve(carve_t *cv, size_t bytes)
{
    void *p = cv->base ? cv->base + cv->used : NULL;

    cv->used += (bytes + cv->align - 1) & ~(cv->align - 1);
    return p;
}

#endif /* GPU_CARVE_H */
