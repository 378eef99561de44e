/*
 * st_files.h - what the loader tests share: writing a model.safetensors
 * of zeros behind a header they made, and checking that model_load()
 * refuses a model with a message that says why.  Needs unit.h and
 * model.h first.
 */

#ifndef NGX_GPU_ST_FILES_H
#define NGX_GPU_ST_FILES_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* dir/model.safetensors: the 8-byte little-endian length of the JSON
 * header, the header, then data_bytes zero bytes */
static inline void
st_write_zeros(const char *dir, const char *json, size_t data_bytes)
{
    static const unsigned char zeros[4096];
    char path[600];
    unsigned char le[8];
    uint64_t hl = strlen(json);
    FILE *f;
    int i;

    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    f = fopen(path, "wb");
    for (i = 0; i < 8; i++) {
        le[i] = (unsigned char) (hl >> (8 * i));
    }
    fwrite(le, 1, 8, f);
    fwrite(json, 1, hl, f);
    while (data_bytes > 0) {
        size_t k = data_bytes < sizeof(zeros) ? data_bytes : sizeof(zeros);
        fwrite(zeros, 1, k, f);
        data_bytes -= k;
    }
    fclose(f);
}

/* model_load(dir) must fail with a message holding s1, s2 and s3 (each
 * may be NULL) */
static inline void
st_expect_load_fail(const char *dir, const char *what, const char *s1,
    const char *s2, const char *s3)
{
    const char *need[3] = { s1, s2, s3 };
    char err[512] = "";
    model_t m;
    int rc = model_load(dir, &m, err, sizeof(err)), i;

    CHECK(rc != 0, "%s: loaded", what);
    if (rc == 0) {
        model_free(&m);
        return;
    }
    for (i = 0; i < 3; i++) {
        if (need[i] != NULL) {
            CHECK(strstr(err, need[i]) != NULL, "%s: \"%s\" lacks \"%s\"",
                  what, err, need[i]);
        }
    }
    printf("  %-28s -> %s\n", what, err);
}

#endif /* NGX_GPU_ST_FILES_H */
