/*
 * test_tokenizer_check.c - our tokenizer against Hugging Face's, record by
 * record, on the output of scripts/tokenizer-oracle:
 *
 *   scripts/tokenizer-oracle TOKENIZER_JSON t/unit/tokenizer_corpus.txt \
 *       > /tmp/expect.jsonl
 *   NGX_GPU_TOKENIZER_EXPECT=/tmp/expect.jsonl \
 *   NGX_GPU_TOKENIZER=TOKENIZER_JSON build/unit/test_tokenizer_check
 *
 * NGX_GPU_TOKENIZER defaults to the stories260K tokenizer.json.  Skips
 * visibly when NGX_GPU_TOKENIZER_EXPECT is unset.  Checks the ids, and
 * the decoded text against HF's decode (special tokens skipped) where
 * the ids hold no special token but a leading BOS: we strip the leading
 * space after -1 or BOS (llama2.c's rule, for streaming), HF at the
 * start of what is left once the specials are gone.  A record with "hex"
 * instead of "text" is a line that is not valid UTF-8 (see the oracle);
 * with "roundtrip" our decoding of the ids must give its bytes back.
 */

#include <stdint.h>

#include <yajl/yajl_tree.h>

#include "tokenizer.h"
#include "unit.h"


static void
print_ids(const char *what, const int32_t *ids, int n)
{
    int i;

    fprintf(stderr, "  %s:", what);
    for (i = 0; i < n && i < 64; i++) {
        fprintf(stderr, " %d", ids[i]);
    }
    fprintf(stderr, "%s\n", n > 64 ? " ..." : "");
}


static yajl_val
jget(yajl_val obj, const char *key)
{
    const char *path[] = { key, NULL };

    return yajl_tree_get(obj, path, yajl_t_any);
}


/* the bytes of a "hex" record into a NUL-terminated string, or NULL */
static char *
unhex(const char *h, size_t *len)
{
    static char  *buf;
    static size_t cap;
    size_t        n = strlen(h) / 2, i;
    unsigned      b;

    if (n + 1 > cap) {
        cap = n + 1;
        if ((buf = realloc(buf, cap)) == NULL) {
            return NULL;
        }
    }
    for (i = 0; i < n; i++) {
        if (sscanf(h + 2 * i, "%2x", &b) != 1) {
            return NULL;
        }
        buf[i] = (char) b;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}


/* compare one oracle record; returns 0 if it could not be read */
static int
check_record(const tokenizer_t *t, yajl_val rec, int lineno)
{
    static int32_t *ours, *theirs;
    static char    *dec;
    static size_t   cap;
    size_t          need;
    yajl_val        text = jget(rec, "text"), ids = jget(rec, "ids");
    yajl_val        sp = jget(rec, "add_special"), hdec = jget(rec, "decoded");
    yajl_val        hex = jget(rec, "hex");
    const char     *s, *h = YAJL_GET_STRING(hdec);
    size_t          i, len;
    int             n, m, k, same, special_inside, roundtrip;
    int32_t         prev;

    roundtrip = YAJL_IS_TRUE(jget(rec, "roundtrip"));
    if (YAJL_IS_STRING(hex) && YAJL_IS_ARRAY(ids)) {
        s = unhex(YAJL_GET_STRING(hex), &len);
        if (s == NULL) {
            return 0;
        }
    } else if (YAJL_IS_STRING(text) && YAJL_IS_ARRAY(ids)) {
        s = YAJL_GET_STRING(text);
        len = strlen(s);
    } else {
        return 0;
    }
    m = (int) ids->u.array.len;

    /* ours can be longer than theirs only by mistake: room for both */
    need = ids->u.array.len + len + 16;
    if (need > cap) {
        cap = need;
        ours = realloc(ours, cap * sizeof(int32_t));
        theirs = realloc(theirs, cap * sizeof(int32_t));
        dec = realloc(dec, cap * (size_t) tokenizer_max_token_bytes(t) + 1);
        if (ours == NULL || theirs == NULL || dec == NULL) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
    }
    for (i = 0; i < ids->u.array.len; i++) {
        theirs[i] = (int32_t) YAJL_GET_INTEGER(ids->u.array.values[i]);
    }

    n = tokenizer_encode(t, s, len, !YAJL_IS_FALSE(sp), ours, (int) cap);
    same = n == m && memcmp(ours, theirs, (size_t) n * sizeof(int32_t)) == 0;
    CHECK(same, "line %d: ids differ for \"%.80s%s\"", lineno,
          hex ? YAJL_GET_STRING(hex) : s, len > 80 ? "..." : "");
    if (!same) {
        print_ids("ours  ", ours, n);
        print_ids("theirs", theirs, m);
        return 1;
    }

    if (roundtrip) {
        size_t  dl = 0;

        prev = -1;
        for (k = 0; k < n; k++) {
            dl += tokenizer_decode_token(t, prev, ours[k], dec + dl,
                                         tokenizer_max_token_bytes(t));
            prev = ours[k];
        }
        CHECK(dl == len && memcmp(dec, s, len) == 0, "line %d: the decoded "
              "bytes of %s differ", lineno, YAJL_GET_STRING(hex));
        return 1;
    }
    if (h == NULL) {
        return 1;
    }
    special_inside = 0;
    for (k = 0; k < n; k++) {
        special_inside |= tokenizer_is_special(t, ours[k])
                          && !(k == 0 && ours[k] == tokenizer_bos_id(t));
    }
    if (special_inside) {
        return 1;
    }
    len = 0;
    prev = -1;
    for (k = 0; k < n; k++) {
        len += tokenizer_decode_token(t, prev, ours[k], dec + len,
                                      tokenizer_max_token_bytes(t));
        prev = ours[k];
    }
    dec[len] = '\0';
    CHECK(strcmp(dec, h) == 0, "line %d: decoded \"%.80s\", HF \"%.80s\"",
          lineno, dec, h);
    return 1;
}


int
main(void)
{
    const char   *expect = getenv("NGX_GPU_TOKENIZER_EXPECT");
    const char   *path = getenv("NGX_GPU_TOKENIZER"), *dir;
    char          tpath[4096], err[512], jerr[256];
    char         *line = NULL;
    size_t        cap = 0;
    int           lineno = 0, records = 0;
    tokenizer_t  *t;
    yajl_val      rec;
    FILE         *f;

    if (expect == NULL || *expect == '\0') {
        SKIP("NGX_GPU_TOKENIZER_EXPECT unset (make it with "
             "scripts/tokenizer-oracle)");
        return unit_report("test_tokenizer_check");
    }
    if (path == NULL) {
        if ((dir = unit_stories_dir()) == NULL) {
            SKIP("no NGX_GPU_TOKENIZER and no stories260K (make models)");
            return unit_report("test_tokenizer_check");
        }
        snprintf(tpath, sizeof(tpath), "%s/tokenizer.json", dir);
        path = tpath;
    }
    t = tokenizer_load(path, err, sizeof(err));
    CHECK(t != NULL, "load %s: %s", path, err);
    f = fopen(expect, "r");
    CHECK(f != NULL, "open %s", expect);
    if (t == NULL || f == NULL) {
        return unit_report("test_tokenizer_check");
    }

    while (getline(&line, &cap, f) > 0) {
        lineno++;
        rec = yajl_tree_parse(line, jerr, sizeof(jerr));
        CHECK(rec != NULL && check_record(t, rec, lineno),
              "%s:%d: not an oracle record", expect, lineno);
        records += rec != NULL;
        yajl_tree_free(rec);
    }
    CHECK(records > 0, "%s has no records", expect);
    printf("checked %d records of %s against %s\n", records, expect, path);

    free(line);
    fclose(f);
    tokenizer_free(t);
    return unit_report("test_tokenizer_check");
}
