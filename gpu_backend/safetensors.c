/*
 * safetensors.c - open, map and check .safetensors files.
 *
 * Layout of a file: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...,
 * "__metadata__": {..}}, then the data section; offsets are relative to
 * the start of the data section.  Everything in the header is checked
 * before a tensor is handed out, so a consumer can read t->data for
 * t->nbytes without further checks.  Assumes a little-endian host, as
 * the engines do.
 */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <yajl/yajl_tree.h>

#include "errbuf.h"
#include "readfile.h"
#include "safetensors.h"

typedef struct {
    char    *path;
    void    *map;
    size_t   size;
} st_file_t;

struct st_set_s {
    st_file_t     *files;
    int            n_files;
    st_tensor_t   *tensors;
    int            n_tensors;
    int            cap_tensors;
    int           *by_name;       /* indices into tensors, sorted by name */
};

/* every dtype the format defines; only the first three are computable */
static const struct {
    const char  *name;
    st_dtype_e   dtype;
    size_t       size;
} st_dtypes[] = {
    { "F32", ST_F32, 4 },       { "F16", ST_F16, 2 },
    { "BF16", ST_BF16, 2 },     { "F64", ST_OTHER, 8 },
    { "I64", ST_OTHER, 8 },     { "U64", ST_OTHER, 8 },
    { "I32", ST_OTHER, 4 },     { "U32", ST_OTHER, 4 },
    { "I16", ST_OTHER, 2 },     { "U16", ST_OTHER, 2 },
    { "I8", ST_OTHER, 1 },      { "U8", ST_OTHER, 1 },
    { "BOOL", ST_OTHER, 1 },    { "F8_E4M3", ST_OTHER, 1 },
    { "F8_E5M2", ST_OTHER, 1 },
};


size_t
st_dtype_size(st_dtype_e d)
{
    switch (d) {
    case ST_F32:  return 4;
    case ST_F16:  return 2;
    case ST_BF16: return 2;
    default:      return 0;
    }
}

static int
ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);

    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* map the whole file read-only; 0 or -1 */
static int
st_map(st_file_t *f, const char *path, char *err, size_t errlen)
{
    struct stat sb;
    int fd;

    f->path = strdup(path);
    if (f->path == NULL) {
        set_err(err, errlen, "%s: out of memory", path);
        return -1;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        set_err(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    f->size = (size_t) sb.st_size;
    if (f->size < 8) {
        set_err(err, errlen, "%s: %zu bytes is too short for a safetensors "
                "file (truncated file?)", path, f->size);
        close(fd);
        return -1;
    }
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        set_err(err, errlen, "%s: mmap: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

static st_tensor_t *
st_new_tensor(st_set_t *s)
{
    st_tensor_t *t;

    if (s->n_tensors == s->cap_tensors) {
        int cap = s->cap_tensors ? 2 * s->cap_tensors : 256;
        t = realloc(s->tensors, (size_t) cap * sizeof(*t));
        if (t == NULL) {
            return NULL;
        }
        s->tensors = t;
        s->cap_tensors = cap;
    }
    t = &s->tensors[s->n_tensors++];
    memset(t, 0, sizeof(*t));
    return t;
}

/* a JSON integer >= 0, or -1 */
static int64_t
json_uint(yajl_val v)
{
    if (!YAJL_IS_INTEGER(v) || YAJL_GET_INTEGER(v) < 0) {
        return -1;
    }
    return YAJL_GET_INTEGER(v);
}

/* check one header entry and append it as a tensor of file f */
static int
st_add_tensor(st_set_t *s, const st_file_t *f, size_t data_size,
    const char *name, yajl_val desc, char *err, size_t errlen)
{
    static const char *k_dtype[] = { "dtype", NULL };
    static const char *k_shape[] = { "shape", NULL };
    static const char *k_offs[] = { "data_offsets", NULL };
    const char *p = f->path;
    yajl_val dt, shape, offs;
    st_tensor_t *t;
    size_t esize = 0, i;
    int64_t numel = 1, b, e;
    int known = 0;

    if (!YAJL_IS_OBJECT(desc)) {
        set_err(err, errlen, "%s: tensor '%s' is not a JSON object", p, name);
        return -1;
    }
    if (strlen(name) >= sizeof(t->name)) {
        set_err(err, errlen, "%s: tensor name '%.60s...' is longer than %zu "
                "bytes", p, name, sizeof(t->name) - 1);
        return -1;
    }
    dt = yajl_tree_get(desc, k_dtype, yajl_t_string);
    shape = yajl_tree_get(desc, k_shape, yajl_t_array);
    offs = yajl_tree_get(desc, k_offs, yajl_t_array);
    if (dt == NULL || shape == NULL || offs == NULL) {
        set_err(err, errlen, "%s: tensor '%s' lacks a string \"dtype\", an "
                "array \"shape\" or an array \"data_offsets\"", p, name);
        return -1;
    }

    t = st_new_tensor(s);
    if (t == NULL) {
        set_err(err, errlen, "%s: out of memory", p);
        return -1;
    }
    snprintf(t->name, sizeof(t->name), "%s", name);
    snprintf(t->dtype_name, sizeof(t->dtype_name), "%s", dt->u.string);
    t->dtype = ST_OTHER;
    for (i = 0; i < sizeof(st_dtypes) / sizeof(st_dtypes[0]); i++) {
        if (strcmp(dt->u.string, st_dtypes[i].name) == 0) {
            t->dtype = st_dtypes[i].dtype;
            esize = st_dtypes[i].size;
            known = 1;
        }
    }
    /* an unknown dtype may still be in bounds; it is refused only if an
     * engine needs the tensor (esize 0 skips the size check below) */

    if (shape->u.array.len > ST_MAX_DIMS) {
        set_err(err, errlen, "%s: tensor '%s' has %zu dimensions, at most %d "
                "are supported", p, name, shape->u.array.len, ST_MAX_DIMS);
        return -1;
    }
    t->ndim = (int) shape->u.array.len;
    for (i = 0; i < shape->u.array.len; i++) {
        int64_t d = json_uint(shape->u.array.values[i]);
        if (d < 0) {
            set_err(err, errlen, "%s: tensor '%s' has a shape entry that is "
                    "not a non-negative integer", p, name);
            return -1;
        }
        if (d > 0 && numel > INT64_MAX / 16 / d) {
            set_err(err, errlen, "%s: tensor '%s' has an impossibly large "
                    "shape", p, name);
            return -1;
        }
        t->shape[i] = d;
        numel *= d;
    }
    t->numel = numel;

    if (offs->u.array.len != 2
        || (b = json_uint(offs->u.array.values[0])) < 0
        || (e = json_uint(offs->u.array.values[1])) < 0)
    {
        set_err(err, errlen, "%s: tensor '%s' data_offsets is not two "
                "non-negative integers", p, name);
        return -1;
    }
    if (b > e) {
        set_err(err, errlen, "%s: tensor '%s' data_offsets [%lld,%lld] end "
                "before they begin", p, name, (long long) b, (long long) e);
        return -1;
    }
    if ((uint64_t) e > data_size) {
        set_err(err, errlen, "%s: tensor '%s' data_offsets [%lld,%lld] exceed "
                "the file's data size %zu (truncated file?)", p, name,
                (long long) b, (long long) e, data_size);
        return -1;
    }
    if (known && (uint64_t) (e - b) != (uint64_t) numel * esize) {
        set_err(err, errlen, "%s: tensor '%s' has %lld %s elements (%lld "
                "bytes) but data_offsets [%lld,%lld] span %lld bytes", p, name,
                (long long) numel, t->dtype_name,
                (long long) ((uint64_t) numel * esize), (long long) b,
                (long long) e, (long long) (e - b));
        return -1;
    }
    t->data = (const char *) f->map + (f->size - data_size) + b;
    t->nbytes = (size_t) (e - b);
    t->file = f->path;
    return 0;
}

/* parse and check the header of an already mapped file */
static int
st_parse_file(st_set_t *s, const st_file_t *f, char *err, size_t errlen)
{
    const unsigned char *m = f->map;
    uint64_t hlen = 0;
    size_t i, data_size;
    char *json, ebuf[256];
    yajl_val root;
    int rc = 0;

    for (i = 0; i < 8; i++) {
        hlen |= (uint64_t) m[i] << (8 * i);
    }
    if (hlen > f->size - 8) {
        set_err(err, errlen, "%s: header length %llu exceeds the file size "
                "%zu (truncated file?)", f->path, (unsigned long long) hlen,
                f->size);
        return -1;
    }
    if (hlen < 2) {
        set_err(err, errlen, "%s: header length %llu is too short for a JSON "
                "object", f->path, (unsigned long long) hlen);
        return -1;
    }
    data_size = f->size - 8 - (size_t) hlen;

    /* yajl wants a NUL-terminated string; the map has none */
    json = malloc((size_t) hlen + 1);
    if (json == NULL) {
        set_err(err, errlen, "%s: out of memory", f->path);
        return -1;
    }
    memcpy(json, m + 8, (size_t) hlen);
    json[hlen] = '\0';
    if (memchr(json, '\0', (size_t) hlen) != NULL) {
        set_err(err, errlen, "%s: header contains a NUL byte (not a "
                "safetensors file?)", f->path);
        free(json);
        return -1;
    }
    ebuf[0] = '\0';
    root = yajl_tree_parse(json, ebuf, sizeof(ebuf));
    free(json);
    if (root == NULL) {
        /* yajl's message spans lines; keep the first */
        ebuf[strcspn(ebuf, "\n")] = '\0';
        set_err(err, errlen, "%s: header is not valid JSON: %s", f->path,
                ebuf[0] ? ebuf : "parse error");
        return -1;
    }
    if (!YAJL_IS_OBJECT(root)) {
        set_err(err, errlen, "%s: header is not a JSON object", f->path);
        yajl_tree_free(root);
        return -1;
    }
    for (i = 0; i < root->u.object.len && rc == 0; i++) {
        const char *name = root->u.object.keys[i];
        if (strcmp(name, "__metadata__") == 0) {
            continue;
        }
        rc = st_add_tensor(s, f, data_size, name, root->u.object.values[i],
                           err, errlen);
    }
    yajl_tree_free(root);
    return rc;
}

static int
st_open_file(st_set_t *s, const char *path, char *err, size_t errlen)
{
    st_file_t *f;

    f = realloc(s->files, (size_t) (s->n_files + 1) * sizeof(*f));
    if (f == NULL) {
        set_err(err, errlen, "%s: out of memory", path);
        return -1;
    }
    s->files = f;
    f = &s->files[s->n_files++];
    memset(f, 0, sizeof(*f));
    if (st_map(f, path, err, errlen) != 0) {
        return -1;
    }
    return st_parse_file(s, f, err, errlen);
}

/* qsort_r is a GNU extension; the sort key is the tensor array */
static int
st_cmp_name(const void *a, const void *b, void *arg)
{
    const st_tensor_t *t = arg;

    return strcmp(t[*(const int *) a].name, t[*(const int *) b].name);
}

static int
st_index(st_set_t *s, char *err, size_t errlen)
{
    int i;

    s->by_name = malloc((size_t) (s->n_tensors ? s->n_tensors : 1)
                        * sizeof(int));
    if (s->by_name == NULL) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    for (i = 0; i < s->n_tensors; i++) {
        s->by_name[i] = i;
    }
    qsort_r(s->by_name, (size_t) s->n_tensors, sizeof(int), st_cmp_name,
            s->tensors);
    for (i = 1; i < s->n_tensors; i++) {
        const st_tensor_t *a = &s->tensors[s->by_name[i - 1]];
        const st_tensor_t *b = &s->tensors[s->by_name[i]];
        if (strcmp(a->name, b->name) == 0) {
            set_err(err, errlen, "%s: tensor '%s' appears twice (also in %s)",
                    b->file, b->name, a->file);
            return -1;
        }
    }
    return 0;
}

/* a model.safetensors.index.json: open every shard its weight_map names */
static int
st_open_index(st_set_t *s, const char *path, char *err, size_t errlen)
{
    static const char *k_map[] = { "weight_map", NULL };
    char *json = NULL, ebuf[256], dir[PATH_MAX], shard[PATH_MAX];
    const char *slash;
    yajl_val root = NULL, wm;
    size_t i, j, dlen;
    int rc = -1;

    json = read_file(path, (size_t) 64 << 20, NULL, err, errlen);
    if (json == NULL) {
        return -1;
    }

    ebuf[0] = '\0';
    root = yajl_tree_parse(json, ebuf, sizeof(ebuf));
    if (root == NULL) {
        ebuf[strcspn(ebuf, "\n")] = '\0';
        set_err(err, errlen, "%s: not valid JSON: %s", path,
                ebuf[0] ? ebuf : "parse error");
        goto done;
    }
    wm = yajl_tree_get(root, k_map, yajl_t_object);
    if (wm == NULL || wm->u.object.len == 0) {
        set_err(err, errlen, "%s: no \"weight_map\" object naming the shards",
                path);
        goto done;
    }

    slash = strrchr(path, '/');
    dlen = slash ? (size_t) (slash - path + 1) : 0;
    if (dlen >= sizeof(dir)) {
        set_err(err, errlen, "%s: path too long", path);
        goto done;
    }
    memcpy(dir, path, dlen);
    dir[dlen] = '\0';

    /* open each distinct shard once, in order of first mention */
    for (i = 0; i < wm->u.object.len; i++) {
        const char *file = YAJL_GET_STRING(wm->u.object.values[i]);
        int seen = 0;
        if (file == NULL || file[0] == '\0' || strchr(file, '/') != NULL
            || strcmp(file, "..") == 0)
        {
            set_err(err, errlen, "%s: weight_map entry for '%s' is not a file "
                    "name in the index's directory", path,
                    wm->u.object.keys[i]);
            goto done;
        }
        for (j = 0; j < i && !seen; j++) {
            seen = strcmp(wm->u.object.values[j]->u.string, file) == 0;
        }
        if (seen) {
            continue;
        }
        if (snprintf(shard, sizeof(shard), "%s%s", dir, file)
            >= (int) sizeof(shard))
        {
            set_err(err, errlen, "%s: shard path too long", path);
            goto done;
        }
        if (st_open_file(s, shard, err, errlen) != 0) {
            goto done;
        }
    }
    if (st_index(s, err, errlen) != 0) {
        goto done;
    }

    /* the index must agree with what the shards hold */
    for (i = 0; i < wm->u.object.len; i++) {
        const char *name = wm->u.object.keys[i];
        const char *file = YAJL_GET_STRING(wm->u.object.values[i]);
        const st_tensor_t *t = st_find(s, name);
        const char *base;
        if (t == NULL) {
            set_err(err, errlen, "%s: weight_map puts tensor '%s' in %s, "
                    "which does not hold it", path, name, file);
            goto done;
        }
        base = strrchr(t->file, '/');
        base = base ? base + 1 : t->file;
        if (strcmp(base, file) != 0) {
            set_err(err, errlen, "%s: weight_map puts tensor '%s' in %s, but "
                    "it is in %s", path, name, file, t->file);
            goto done;
        }
    }
    rc = 0;

done:
    if (root != NULL) {
        yajl_tree_free(root);
    }
    free(json);
    return rc;
}

st_set_t *
st_open(const char *path, char *err, size_t errlen)
{
    st_set_t *s;
    int rc;

    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        set_err(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    if (ends_with(path, ".json")) {
        rc = st_open_index(s, path, err, errlen);
    } else {
        rc = st_open_file(s, path, err, errlen);
        if (rc == 0) {
            rc = st_index(s, err, errlen);
        }
    }
    if (rc != 0) {
        st_close(s);
        return NULL;
    }
    return s;
}

void
st_close(st_set_t *s)
{
    int i;

    if (s == NULL) {
        return;
    }
    for (i = 0; i < s->n_files; i++) {
        if (s->files[i].map != NULL) {
            munmap(s->files[i].map, s->files[i].size);
        }
        free(s->files[i].path);
    }
    free(s->files);
    free(s->tensors);
    free(s->by_name);
    free(s);
}

const st_tensor_t *
st_find(const st_set_t *s, const char *name)
{
    int lo = 0, hi = s->n_tensors - 1;

    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const st_tensor_t *t = &s->tensors[s->by_name[mid]];
        int c = strcmp(name, t->name);
        if (c == 0) {
            return t;
        }
        if (c < 0) {
            hi = mid - 1;
        } else {
            lo = mid + 1;
        }
    }
    return NULL;
}

int
st_count(const st_set_t *s)
{
    return s->n_tensors;
}

const st_tensor_t *
st_at(const st_set_t *s, int i)
{
    return i >= 0 && i < s->n_tensors ? &s->tensors[i] : NULL;
}
