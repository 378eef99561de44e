/*
 * safetensors.h - read-only access to .safetensors files.
 *
 * A file is an 8-byte little-endian header length, a JSON header mapping
 * tensor names to {dtype, shape, data_offsets}, then the data.  Files are
 * mmapped; tensors point into the mapping.  Every offset is checked
 * against the file size, so a truncated or corrupt file is refused with a
 * message instead of being read out of bounds.
 */

#ifndef GPU_SAFETENSORS_H
#define GPU_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    ST_F32 = 0,
    ST_F16,
    ST_BF16,
    ST_OTHER                      /* present but not computable */
} st_dtype_e;

#define ST_MAX_DIMS  4

typedef struct {
    char         name[160];
    st_dtype_e   dtype;
    char         dtype_name[8];   /* as written in the file */
    int          ndim;
    int64_t      shape[ST_MAX_DIMS];
    int64_t      numel;
    const void  *data;
    size_t       nbytes;
    const char  *file;            /* path of the file holding it */
} st_tensor_t;

typedef struct st_set_s  st_set_t;

/* open one file (path ends in .safetensors) or an index
 * (model.safetensors.index.json) and every shard it names */
st_set_t *st_open(const char *path, char *err, size_t errlen);
void st_close(st_set_t *s);

const st_tensor_t *st_find(const st_set_t *s, const char *name);
int st_count(const st_set_t *s);
const st_tensor_t *st_at(const st_set_t *s, int i);

size_t st_dtype_size(st_dtype_e d);

#endif /* GPU_SAFETENSORS_H */
