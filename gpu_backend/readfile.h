/*
 * readfile.h - a small file (JSON: config.json, tokenizer.json, an index)
 * read whole into memory, NUL-terminated.
 */

#ifndef GPU_READFILE_H
#define GPU_READFILE_H

#include <stddef.h>

/*
 * The file at path, at most max bytes; *len (may be NULL) gets its size.
 * NULL with err set ("PATH: why") if it cannot be opened, is not a
 * regular file, is larger than max or cannot be read.  free() it.
 */
char *read_file(const char *path, size_t max, size_t *len, char *err,
    size_t errlen);

#endif /* GPU_READFILE_H */
