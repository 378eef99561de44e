/*
 * readfile.c - a small file read whole (see readfile.h).
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "errbuf.h"
#include "readfile.h"

char *
read_file(const char *path, size_t max, size_t *len, char *err,
    size_t errlen)
{
    struct stat  sb;
    FILE        *f;
    char        *buf;
    size_t       n;

    f = fopen(path, "rb");
    if (f == NULL) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        set_err(err, errlen, "%s: not a regular file", path);
        fclose(f);
        return NULL;
    }
    if ((size_t) sb.st_size > max) {
        set_err(err, errlen, "%s: larger than %zu MiB", path, max >> 20);
        fclose(f);
        return NULL;
    }
    buf = malloc((size_t) sb.st_size + 1);
    if (buf == NULL) {
        set_err(err, errlen, "%s: out of memory", path);
        fclose(f);
        return NULL;
    }
    n = fread(buf, 1, (size_t) sb.st_size, f);
    fclose(f);
    if (n != (size_t) sb.st_size) {
        set_err(err, errlen, "%s: cannot read", path);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    if (len != NULL) {
        *len = n;
    }
    return buf;
}
