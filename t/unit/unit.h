/*
 * unit.h - the C unit tests' assertions.  Each test binary prints one
 * line per check group and ends with "N passed, N failed"; it exits
 * non-zero if anything failed.  TEST_SHARED is the shared data folder
 * (../shared beside the checkout); tests that need it skip visibly when
 * it is absent.
 */

#ifndef NGX_GPU_UNIT_H
#define NGX_GPU_UNIT_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int unit_passed, unit_failed, unit_skipped;

#define CHECK(cond, ...) do {                                           \
    if (cond) {                                                         \
        unit_passed++;                                                  \
    } else {                                                            \
        unit_failed++;                                                  \
        fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
        fprintf(stderr, __VA_ARGS__);                                   \
        fprintf(stderr, "\n");                                          \
    }                                                                   \
} while (0)

#define CHECK_CLOSE(a, b, tol, what) do {                               \
    double _a = (a), _b = (b);                                          \
    CHECK(fabs(_a - _b) <= (tol) * (1.0 + fabs(_b)),                    \
          "%s: %.9g vs %.9g", (what), _a, _b);                          \
} while (0)

#define SKIP(...) do {                                                  \
    unit_skipped++;                                                     \
    printf("SKIP: ");                                                   \
    printf(__VA_ARGS__);                                                \
    printf("\n");                                                       \
} while (0)

/* the converted stories260K, made by `make models`, or NULL */
static inline const char *
unit_stories_dir(void)
{
    const char *d = getenv("NGX_GPU_STORIES");
    static char buf[4096];

    if (d == NULL) {
        d = "build/models/stories260K";
    }
    snprintf(buf, sizeof(buf), "%s/config.json", d);
    return access(buf, R_OK) == 0 ? d : NULL;
}

static inline int
unit_report(const char *name)
{
    printf("%s: %d passed, %d failed", name, unit_passed, unit_failed);
    if (unit_skipped) {
        printf(", %d skipped", unit_skipped);
    }
    printf("\n");
    return unit_failed ? 1 : 0;
}

#endif
