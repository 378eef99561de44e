/*
 * test_safetensors.c - st_open on small files written here: good ones,
 * a sharded index, and every kind of damage the loader must refuse with
 * a message naming the file and the problem.  Also model_load's checks of
 * the tensors a Llama needs (missing, wrong shape, uncomputable dtype).
 */

#include <stdint.h>
#include <sys/stat.h>

#include "unit.h"
#include "model.h"
#include "safetensors.h"
#include "st_files.h"

static char tmpdir[256];

/* write an 8-byte header length (hlen, or the JSON's length if < 0), the
 * JSON and then data_len bytes of data */
static void
write_st(const char *name, const char *json, int64_t hlen,
    const void *data, size_t data_len, char *path, size_t pathlen)
{
    uint64_t n = hlen < 0 ? strlen(json) : (uint64_t) hlen;
    unsigned char le[8];
    FILE *f;
    int i;

    snprintf(path, pathlen, "%s/%s", tmpdir, name);
    f = fopen(path, "wb");
    for (i = 0; i < 8; i++) {
        le[i] = (unsigned char) (n >> (8 * i));
    }
    fwrite(le, 1, 8, f);
    fwrite(json, 1, strlen(json), f);
    if (data_len) {
        fwrite(data, 1, data_len, f);
    }
    fclose(f);
}

/* element i of an F32 tensor; tensor data need not be aligned */
static float
f32_at(const st_tensor_t *t, int i)
{
    float f;

    memcpy(&f, (const char *) t->data + 4 * i, 4);
    return f;
}

static void
write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    fputs(text, f);
    fclose(f);
}

/* st_open must fail and its message contain every one of the strings */
static void
expect_fail(const char *path, const char *what, const char *s1,
    const char *s2)
{
    char err[512] = "";
    st_set_t *s = st_open(path, err, sizeof(err));

    CHECK(s == NULL, "%s: opened", what);
    if (s != NULL) {
        st_close(s);
        return;
    }
    CHECK(strstr(err, s1) != NULL, "%s: \"%s\" lacks \"%s\"", what, err, s1);
    if (s2 != NULL) {
        CHECK(strstr(err, s2) != NULL, "%s: \"%s\" lacks \"%s\"", what, err,
              s2);
    }
    printf("  %-28s -> %s\n", what, err);
}

static void
test_good_file(void)
{
    /* a: F32 [2,3] (24 bytes), b: F16 [4] (8), c: BF16 [2] (4),
     * d: I8 [3] (3), e: unknown dtype (in bounds) */
    float a[6] = { 1, 2, 3, 4, 5, 6 };
    unsigned char data[48] = { 0 };
    const char *json =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
        "\"b\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[24,32]},"
        "\"c\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[32,36]},"
        "\"d\":{\"dtype\":\"I8\",\"shape\":[3],\"data_offsets\":[36,39]},"
        "\"e\":{\"dtype\":\"Q4_K\",\"shape\":[7],\"data_offsets\":[39,44]},"
        "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[44,48]}}";
    const st_tensor_t *t;
    char path[512], err[512] = "";
    st_set_t *s;
    float f;

    memcpy(data, a, sizeof(a));
    f = 7.5f;
    memcpy(data + 44, &f, 4);
    write_st("good.safetensors", json, -1, data, sizeof(data), path,
             sizeof(path));
    s = st_open(path, err, sizeof(err));
    CHECK(s != NULL, "good file: %s", err);
    if (s == NULL) {
        return;
    }
    CHECK(st_count(s) == 6, "count %d", st_count(s));
    t = st_find(s, "a");
    CHECK(t != NULL && t->dtype == ST_F32 && t->ndim == 2
          && t->shape[0] == 2 && t->shape[1] == 3 && t->numel == 6
          && t->nbytes == 24, "tensor a");
    CHECK(t != NULL && memcmp(t->data, a, 24) == 0, "a's data");
    CHECK(t != NULL && strcmp(t->file, path) == 0, "a's file");
    t = st_find(s, "b");
    CHECK(t != NULL && t->dtype == ST_F16 && t->numel == 4, "tensor b");
    t = st_find(s, "c");
    CHECK(t != NULL && t->dtype == ST_BF16 && t->nbytes == 4, "tensor c");
    t = st_find(s, "d");
    CHECK(t != NULL && t->dtype == ST_OTHER
          && strcmp(t->dtype_name, "I8") == 0, "tensor d");
    t = st_find(s, "e");
    CHECK(t != NULL && t->dtype == ST_OTHER
          && strcmp(t->dtype_name, "Q4_K") == 0 && t->nbytes == 5,
          "tensor e (unknown dtype, kept)");
    t = st_find(s, "s");
    CHECK(t != NULL && t->ndim == 0 && t->numel == 1
          && f32_at(t, 0) == 7.5f, "scalar s");
    CHECK(st_find(s, "__metadata__") == NULL, "metadata is no tensor");
    CHECK(st_find(s, "zz") == NULL && st_find(s, "") == NULL, "missing");
    CHECK(st_at(s, 0) != NULL && st_at(s, 6) == NULL && st_at(s, -1) == NULL,
          "st_at bounds");
    CHECK(st_dtype_size(ST_F32) == 4 && st_dtype_size(ST_BF16) == 2
          && st_dtype_size(ST_F16) == 2 && st_dtype_size(ST_OTHER) == 0,
          "dtype sizes");
    st_close(s);
    printf("good file: ok\n");
}

static void
test_bad_files(void)
{
    const char *ok_hdr =
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[4,4],\"data_offsets\":[0,64]}}";
    unsigned char data[64] = { 0 };
    char path[512], big[4096];

    printf("damaged files:\n");

    /* data section shorter than the offsets say */
    write_st("trunc.safetensors", ok_hdr, -1, data, 40, path, sizeof(path));
    expect_fail(path, "truncated data", "trunc.safetensors",
                "tensor 'w' data_offsets [0,64] exceed the file's data "
                "size 40 (truncated file?)");

    /* header length past the end of the file */
    write_st("hlen.safetensors", ok_hdr, 100000, data, 64, path,
             sizeof(path));
    expect_fail(path, "header length > file", "hlen.safetensors",
                "header length 100000 exceeds the file size");

    /* fewer than 8 bytes */
    snprintf(path, sizeof(path), "%s/short.safetensors", tmpdir);
    write_text(path, "abc");
    expect_fail(path, "too short", "short.safetensors", "too short");

    /* malformed JSON */
    write_st("json.safetensors", "{\"w\":{\"dtype\":\"F32\",", -1, data, 64,
             path, sizeof(path));
    expect_fail(path, "bad JSON", "json.safetensors", "not valid JSON");

    write_st("arr.safetensors", "[1,2,3]", -1, data, 64, path, sizeof(path));
    expect_fail(path, "JSON not an object", "arr.safetensors",
                "not a JSON object");

    /* offsets out of range, reversed, malformed */
    write_st("oob.safetensors",
             "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],"
             "\"data_offsets\":[60,76]}}", -1, data, 64, path, sizeof(path));
    expect_fail(path, "offsets out of range", "oob.safetensors",
                "exceed the file's data size 64");
    write_st("rev.safetensors",
             "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],"
             "\"data_offsets\":[16,8]}}", -1, data, 64, path, sizeof(path));
    expect_fail(path, "reversed offsets", "rev.safetensors",
                "end before they begin");
    write_st("neg.safetensors",
             "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],"
             "\"data_offsets\":[-16,0]}}", -1, data, 64, path, sizeof(path));
    expect_fail(path, "negative offset", "neg.safetensors",
                "data_offsets is not two non-negative integers");

    /* shape * dtype size != span */
    write_st("size.safetensors",
             "{\"w\":{\"dtype\":\"F32\",\"shape\":[4,3],"
             "\"data_offsets\":[0,64]}}", -1, data, 64, path, sizeof(path));
    expect_fail(path, "shape/size mismatch", "size.safetensors",
                "tensor 'w' has 12 F32 elements (48 bytes) but data_offsets "
                "[0,64] span 64 bytes");
    write_st("bf.safetensors",
             "{\"w\":{\"dtype\":\"BF16\",\"shape\":[16],"
             "\"data_offsets\":[0,64]}}", -1, data, 64, path, sizeof(path));
    expect_fail(path, "bf16 size mismatch", "bf.safetensors", "span 64");

    /* missing fields, bad shapes */
    write_st("nodt.safetensors",
             "{\"w\":{\"shape\":[16],\"data_offsets\":[0,64]}}", -1, data,
             64, path, sizeof(path));
    expect_fail(path, "no dtype", "nodt.safetensors", "lacks");
    write_st("dims.safetensors",
             "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,16],"
             "\"data_offsets\":[0,64]}}", -1, data, 64, path, sizeof(path));
    expect_fail(path, "5 dimensions", "dims.safetensors", "5 dimensions");
    write_st("fshape.safetensors",
             "{\"w\":{\"dtype\":\"F32\",\"shape\":[4.5],"
             "\"data_offsets\":[0,64]}}", -1, data, 64, path, sizeof(path));
    expect_fail(path, "fractional shape", "fshape.safetensors",
                "not a non-negative integer");
    write_st("huge.safetensors",
             "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
             "\"data_offsets\":[0,64]}}", -1, data, 64, path, sizeof(path));
    expect_fail(path, "overflowing shape", "huge.safetensors",
                "impossibly large");

    /* the same name twice */
    write_st("dup.safetensors",
             "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
             "\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,32]}}",
             -1, data, 64, path, sizeof(path));
    expect_fail(path, "duplicate name", "dup.safetensors", "appears twice");

    /* a name longer than st_tensor_t holds */
    memset(big, 'n', 300);
    snprintf(big + 300, sizeof(big) - 300, "\":{\"dtype\":\"F32\",\"shape\":[4],"
             "\"data_offsets\":[0,16]}}");
    {
        char json[4200];
        snprintf(json, sizeof(json), "{\"%s", big);
        write_st("long.safetensors", json, -1, data, 64, path, sizeof(path));
    }
    expect_fail(path, "long name", "long.safetensors", "longer than");

    snprintf(path, sizeof(path), "%s/absent.safetensors", tmpdir);
    expect_fail(path, "missing file", "absent.safetensors",
                "No such file");
}

static void
test_sharded(void)
{
    float d1[8] = { 1, 2, 3, 4, 5, 6, 7, 8 }, d2[4] = { 9, 10, 11, 12 };
    char p1[512], p2[512], idx[512], err[512] = "";
    const st_tensor_t *t;
    st_set_t *s;

    write_st("model-00001-of-00002.safetensors",
             "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
             "\"y\":{\"dtype\":\"F32\",\"shape\":[2,2],"
             "\"data_offsets\":[16,32]}}", -1, d1, sizeof(d1), p1,
             sizeof(p1));
    write_st("model-00002-of-00002.safetensors",
             "{\"z\":{\"dtype\":\"F32\",\"shape\":[4],"
             "\"data_offsets\":[0,16]}}", -1, d2, sizeof(d2), p2, sizeof(p2));
    snprintf(idx, sizeof(idx), "%s/model.safetensors.index.json", tmpdir);
    write_text(idx, "{\"metadata\":{\"total_size\":48},\"weight_map\":{"
               "\"x\":\"model-00001-of-00002.safetensors\","
               "\"z\":\"model-00002-of-00002.safetensors\","
               "\"y\":\"model-00001-of-00002.safetensors\"}}");
    s = st_open(idx, err, sizeof(err));
    CHECK(s != NULL, "sharded: %s", err);
    if (s != NULL) {
        CHECK(st_count(s) == 3, "sharded count %d", st_count(s));
        t = st_find(s, "z");
        CHECK(t != NULL && strcmp(t->file, p2) == 0
              && f32_at(t, 3) == 12.0f, "z from shard 2");
        t = st_find(s, "y");
        CHECK(t != NULL && strcmp(t->file, p1) == 0
              && f32_at(t, 0) == 5.0f, "y from shard 1");
        st_close(s);
    }

    printf("damaged indexes:\n");
    snprintf(idx, sizeof(idx), "%s/bad1.index.json", tmpdir);
    write_text(idx, "{\"weight_map\":{"
               "\"x\":\"model-00001-of-00002.safetensors\","
               "\"q\":\"model-00002-of-00002.safetensors\"}}");
    expect_fail(idx, "index names absent tensor", "bad1.index.json",
                "tensor 'q'");
    snprintf(idx, sizeof(idx), "%s/bad2.index.json", tmpdir);
    write_text(idx, "{\"weight_map\":{"
               "\"x\":\"model-00002-of-00002.safetensors\","
               "\"z\":\"model-00001-of-00002.safetensors\"}}");
    expect_fail(idx, "index puts tensor wrongly", "bad2.index.json",
                "but it is in");
    snprintf(idx, sizeof(idx), "%s/bad3.index.json", tmpdir);
    write_text(idx, "{\"weight_map\":{\"x\":\"../etc/passwd\"}}");
    expect_fail(idx, "shard outside the directory", "bad3.index.json",
                "not a file name");
    snprintf(idx, sizeof(idx), "%s/bad4.index.json", tmpdir);
    write_text(idx, "{\"weight_map\":{\"x\":\"model-00003-of-00002."
               "safetensors\"}}");
    expect_fail(idx, "missing shard", "model-00003-of-00002.safetensors",
                "No such file");
    snprintf(idx, sizeof(idx), "%s/bad5.index.json", tmpdir);
    write_text(idx, "{\"metadata\":{}}");
    expect_fail(idx, "no weight_map", "bad5.index.json", "weight_map");
    snprintf(idx, sizeof(idx), "%s/bad6.index.json", tmpdir);
    write_text(idx, "{\"weight_map\":{\"x\":");
    expect_fail(idx, "index bad JSON", "bad6.index.json", "not valid JSON");

    /* the same tensor in two shards */
    write_st("dupshard.safetensors",
             "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],"
             "\"data_offsets\":[0,16]}}", -1, d2, sizeof(d2), p2, sizeof(p2));
    snprintf(idx, sizeof(idx), "%s/bad7.index.json", tmpdir);
    write_text(idx, "{\"weight_map\":{"
               "\"x\":\"model-00001-of-00002.safetensors\","
               "\"w\":\"dupshard.safetensors\"}}");
    expect_fail(idx, "tensor in two shards", "appears twice", NULL);
}

/* --- model_load on a tiny Llama written here ------------------------ */

/* dim 8, hidden 12, 1 layer, 2 heads of 4, 1 kv head, vocab 16 */
#define TD 8
#define TH 12
#define TV 16
#define TKV 4

typedef struct {
    const char  *name;
    int          d0, d1;
} tiny_tensor_t;

static const tiny_tensor_t tiny[] = {
    { "model.embed_tokens.weight", TV, TD },
    { "model.layers.0.input_layernorm.weight", TD, 0 },
    { "model.layers.0.self_attn.q_proj.weight", TD, TD },
    { "model.layers.0.self_attn.k_proj.weight", TKV, TD },
    { "model.layers.0.self_attn.v_proj.weight", TKV, TD },
    { "model.layers.0.self_attn.o_proj.weight", TD, TD },
    { "model.layers.0.post_attention_layernorm.weight", TD, 0 },
    { "model.layers.0.mlp.gate_proj.weight", TH, TD },
    { "model.layers.0.mlp.up_proj.weight", TH, TD },
    { "model.layers.0.mlp.down_proj.weight", TD, TH },
    { "model.norm.weight", TD, 0 },
    { "lm_head.weight", TV, TD },
};

/* write config.json and model.safetensors; `skip` leaves a tensor out,
 * `bad` gets shape [d0, d1 + 1], `odd` gets dtype I32 */
static void
write_tiny(const char *dir, int tied, const char *skip, const char *bad,
    const char *odd, int bf16)
{
    char path[512], json[8192], *p = json;
    size_t off = 0, esize = bf16 ? 2 : 4, i;
    const char *dt = bf16 ? "BF16" : "F32";

    mkdir(dir, 0755);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    {
        FILE *f = fopen(path, "w");
        fprintf(f, "{\"architectures\":[\"LlamaForCausalLM\"],"
                "\"hidden_size\":%d,\"intermediate_size\":%d,"
                "\"num_hidden_layers\":1,\"num_attention_heads\":2,"
                "\"num_key_value_heads\":1,\"vocab_size\":%d,"
                "\"max_position_embeddings\":64,\"rms_norm_eps\":1e-5,"
                "\"tie_word_embeddings\":%s}", TD, TH, TV,
                tied ? "true" : "false");
        fclose(f);
    }
    p += sprintf(p, "{");
    for (i = 0; i < sizeof(tiny) / sizeof(tiny[0]); i++) {
        const tiny_tensor_t *t = &tiny[i];
        int d1 = t->d1 + (bad && strcmp(bad, t->name) == 0);
        size_t n = (size_t) t->d0 * (d1 ? d1 : 1);
        int isodd = odd && strcmp(odd, t->name) == 0;
        if ((skip && strcmp(skip, t->name) == 0)
            || (tied && strcmp(t->name, "lm_head.weight") == 0))
        {
            continue;
        }
        if (d1) {
            p += sprintf(p, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%d,%d],"
                         "\"data_offsets\":[%zu,%zu]}", p > json + 1 ? "," : "",
                         t->name, isodd ? "I32" : dt, t->d0, d1, off,
                         off + n * (isodd ? 4 : esize));
        } else {
            p += sprintf(p, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%d],"
                         "\"data_offsets\":[%zu,%zu]}", p > json + 1 ? "," : "",
                         t->name, isodd ? "I32" : dt, t->d0, off,
                         off + n * (isodd ? 4 : esize));
        }
        off += n * (isodd ? 4 : esize);
    }
    p += sprintf(p, "}");
    st_write_zeros(dir, json, off);
}

/* the loader refuses dir, saying s1 (and s2) */
#define expect_load_fail(dir, what, s1, s2)                               \
    st_expect_load_fail((dir), (what), (s1), (s2), NULL)

static void
test_model_load(void)
{
    char dir[512], err[512] = "";
    model_t m;
    int rc;

    snprintf(dir, sizeof(dir), "%s/tiny", tmpdir);
    write_tiny(dir, 0, NULL, NULL, NULL, 0);
    rc = model_load(dir, &m, err, sizeof(err));
    CHECK(rc == 0, "tiny model: %s", err);
    if (rc == 0) {
        CHECK(strcmp(m.name, "tiny") == 0, "name %s", m.name);
        CHECK(m.cfg.dim == TD && m.cfg.head_dim == 4 && m.cfg.n_kv_heads == 1,
              "config");
        CHECK(m.lm_head != NULL && m.lm_head != m.tok_emb, "untied lm_head");
        CHECK(m.layers[0].w_down->shape[1] == TH, "w_down");
        model_free(&m);
    }
    snprintf(dir, sizeof(dir), "%s/tiny_tied/", tmpdir);
    write_tiny(dir, 1, NULL, NULL, NULL, 1);
    rc = model_load(dir, &m, err, sizeof(err));
    CHECK(rc == 0, "tied bf16 model: %s", err);
    if (rc == 0) {
        CHECK(m.lm_head == m.tok_emb, "tied lm_head");
        CHECK(m.tok_emb->dtype == ST_BF16, "bf16");
        CHECK(strcmp(m.name, "tiny_tied") == 0, "name '%s' (trailing /)",
              m.name);
        model_free(&m);
    }

    printf("models the loader refuses:\n");
    snprintf(dir, sizeof(dir), "%s/t_missing", tmpdir);
    write_tiny(dir, 0, "model.layers.0.mlp.up_proj.weight", NULL, NULL, 0);
    expect_load_fail(dir, "missing tensor", "model.safetensors",
                     "tensor 'model.layers.0.mlp.up_proj.weight' is missing");
    snprintf(dir, sizeof(dir), "%s/t_nohead", tmpdir);
    write_tiny(dir, 0, "lm_head.weight", NULL, NULL, 0);
    expect_load_fail(dir, "missing lm_head", "'lm_head.weight' is missing",
                     "tie_word_embeddings");
    snprintf(dir, sizeof(dir), "%s/t_shape", tmpdir);
    write_tiny(dir, 0, NULL, "model.layers.0.self_attn.k_proj.weight", NULL,
               0);
    expect_load_fail(dir, "wrong shape", "model.safetensors",
                     "tensor 'model.layers.0.self_attn.k_proj.weight' has "
                     "shape [4, 9], expected [4, 8]");
    snprintf(dir, sizeof(dir), "%s/t_dtype", tmpdir);
    write_tiny(dir, 0, NULL, NULL, "model.layers.0.self_attn.o_proj.weight",
               0);
    expect_load_fail(dir, "uncomputable dtype", "model.safetensors",
                     "'model.layers.0.self_attn.o_proj.weight' has dtype "
                     "I32, which cannot be computed");
    snprintf(dir, sizeof(dir), "%s/t_none", tmpdir);
    mkdir(dir, 0755);
    {
        char cfg[600];
        snprintf(cfg, sizeof(cfg), "%s/tiny/config.json", tmpdir);
        FILE *in = fopen(cfg, "r"), *out;
        char buf[4096];
        size_t n = fread(buf, 1, sizeof(buf), in);
        fclose(in);
        snprintf(cfg, sizeof(cfg), "%s/config.json", dir);
        out = fopen(cfg, "w");
        fwrite(buf, 1, n, out);
        fclose(out);
    }
    expect_load_fail(dir, "no weights", "t_none",
                     "no model.safetensors or model.safetensors.index.json");
    snprintf(dir, sizeof(dir), "%s/t_nodir", tmpdir);
    expect_load_fail(dir, "no directory", "t_nodir/config.json", NULL);
}

/* --- f16 / bf16 -> f32 ----------------------------------------------- */

/* the value of an IEEE half, computed the long way */
static double
f16_value(uint16_t h)
{
    int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;

    if (e == 0) {
        v = ldexp(m, -24);
    } else if (e == 31) {
        v = m ? NAN : INFINITY;
    } else {
        v = ldexp(1024 + m, e - 25);
    }
    return sign ? -v : v;
}

static void
test_convert(void)
{
    static uint16_t h[65536];
    static float out[65536];
    st_tensor_t t;
    int i, bad = 0, bad_bf = 0;

    for (i = 0; i < 65536; i++) {
        h[i] = (uint16_t) i;
    }
    memset(&t, 0, sizeof(t));
    t.dtype = ST_F16;
    t.numel = 65536;
    t.data = h;
    t.nbytes = sizeof(h);
    model_tensor_to_f32(&t, out);
    for (i = 0; i < 65536; i++) {
        double want = f16_value((uint16_t) i);
        uint32_t bits;
        memcpy(&bits, &out[i], 4);
        if (isnan(want)) {
            /* NaN stays NaN, sign and payload kept, quieted like F16C */
            if (!isnan(out[i]) || (bits >> 31) != (unsigned) (i >> 15)
                || ((bits >> 13) & 0x1ff) != (unsigned) (i & 0x1ff))
            {
                bad++;
            }
        } else if ((double) out[i] != want
                   || !!signbit(out[i]) != (i >> 15 ? 1 : 0)) {
            if (bad++ < 5) {
                fprintf(stderr, "f16 %04x: %.9g vs %.9g\n", i, out[i], want);
            }
        }
    }
    CHECK(bad == 0, "%d f16 values converted wrongly", bad);
    CHECK(out[0x0001] == ldexpf(1, -24) && out[0x03ff] == ldexpf(1023, -24)
          && out[0x0400] == ldexpf(1, -14), "f16 subnormal edges");
    CHECK(isinf(out[0x7c00]) && out[0x7c00] > 0 && isinf(out[0xfc00])
          && out[0xfc00] < 0, "f16 infinities");
    CHECK(out[0x3c00] == 1.0f && out[0xc000] == -2.0f
          && out[0x7bff] == 65504.0f, "f16 normals");

    t.dtype = ST_BF16;
    model_tensor_to_f32(&t, out);
    for (i = 0; i < 65536; i++) {
        uint32_t bits;
        memcpy(&bits, &out[i], 4);
        bad_bf += bits != (uint32_t) i << 16;
    }
    CHECK(bad_bf == 0, "%d bf16 values converted wrongly", bad_bf);
    printf("f16/bf16 conversion: all 65536 values of each checked\n");
}

int
main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/ngx-gpu-st-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    test_good_file();
    test_bad_files();
    test_sharded();
    test_model_load();
    test_convert();
    {
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0) {
            fprintf(stderr, "could not remove %s\n", tmpdir);
        }
    }
    return unit_report("test_safetensors");
}
