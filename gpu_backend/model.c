/*
 * model.c - a Llama-architecture model in Hugging Face layout.
 *
 * config.json is read with the defaults of transformers' LlamaConfig
 * where a field may be absent; anything this code cannot run (another
 * architecture, RoPE scaling, biases, an activation other than SiLU) is
 * refused here with a message, not discovered later as wrong output.
 */

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <yajl/yajl_tree.h>

#include "model.h"

static void
m_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static yajl_val
cfg_get(yajl_val root, const char *key)
{
    const char *path[] = { key, NULL };

    return yajl_tree_get(root, path, yajl_t_any);
}

/* an integer field in [lo, hi]; def < lo means required.  0 or -1 */
static int
cfg_int(yajl_val root, const char *path, const char *key, int def, int lo,
    int hi, int *out, char *err, size_t errlen)
{
    yajl_val v = cfg_get(root, key);

    if (v == NULL || YAJL_IS_NULL(v)) {
        if (def < lo) {
            m_err(err, errlen, "%s: required field \"%s\" is missing", path,
                  key);
            return -1;
        }
        *out = def;
        return 0;
    }
    if (!YAJL_IS_INTEGER(v) || YAJL_GET_INTEGER(v) < lo
        || YAJL_GET_INTEGER(v) > hi)
    {
        m_err(err, errlen, "%s: \"%s\" must be an integer in [%d, %d]", path,
              key, lo, hi);
        return -1;
    }
    *out = (int) YAJL_GET_INTEGER(v);
    return 0;
}

/* a positive number field with a default; 0 or -1 */
static int
cfg_float(yajl_val root, const char *path, const char *key, double def,
    float *out, char *err, size_t errlen)
{
    yajl_val v = cfg_get(root, key);

    if (v == NULL || YAJL_IS_NULL(v)) {
        *out = (float) def;
        return 0;
    }
    if (!YAJL_IS_DOUBLE(v) || !(YAJL_GET_DOUBLE(v) > 0)) {
        m_err(err, errlen, "%s: \"%s\" must be a positive number", path, key);
        return -1;
    }
    *out = (float) YAJL_GET_DOUBLE(v);
    return 0;
}

/* a boolean field that must be false (or absent) */
static int
cfg_must_be_false(yajl_val root, const char *path, const char *key,
    const char *what, char *err, size_t errlen)
{
    yajl_val v = cfg_get(root, key);

    if (v != NULL && !YAJL_IS_NULL(v) && !YAJL_IS_FALSE(v)) {
        m_err(err, errlen, "%s: \"%s\" is set: %s are not supported yet",
              path, key, what);
        return -1;
    }
    return 0;
}

static int
cfg_check(yajl_val root, const char *path, model_config_t *c, char *err,
    size_t errlen)
{
    yajl_val v;
    size_t i;

    v = cfg_get(root, "architectures");
    if (!YAJL_IS_ARRAY(v) || v->u.array.len == 0) {
        m_err(err, errlen, "%s: no \"architectures\" list (expected "
              "[\"LlamaForCausalLM\"])", path);
        return -1;
    }
    for (i = 0; i < v->u.array.len; i++) {
        const char *a = YAJL_GET_STRING(v->u.array.values[i]);
        if (a != NULL && strcmp(a, "LlamaForCausalLM") == 0) {
            snprintf(c->architecture, sizeof(c->architecture), "%s", a);
        }
    }
    if (c->architecture[0] == '\0') {
        const char *a = YAJL_GET_STRING(v->u.array.values[0]);
        m_err(err, errlen, "%s: architecture \"%s\" is not supported (only "
              "LlamaForCausalLM is)", path, a ? a : "(not a string)");
        return -1;
    }

    /* the dtype the checkpoint was saved in; newer configs say "dtype" */
    v = cfg_get(root, "torch_dtype");
    if (!YAJL_IS_STRING(v)) {
        v = cfg_get(root, "dtype");
    }
    snprintf(c->torch_dtype, sizeof(c->torch_dtype), "%s",
             YAJL_IS_STRING(v) ? YAJL_GET_STRING(v) : "");

    if (cfg_int(root, path, "hidden_size", -1, 1, 1 << 16, &c->dim,
                err, errlen) != 0
        || cfg_int(root, path, "intermediate_size", -1, 1, 1 << 20,
                   &c->hidden_dim, err, errlen) != 0
        || cfg_int(root, path, "num_hidden_layers", -1, 1, 1024,
                   &c->n_layers, err, errlen) != 0
        || cfg_int(root, path, "num_attention_heads", -1, 1, 1024,
                   &c->n_heads, err, errlen) != 0
        || cfg_int(root, path, "vocab_size", -1, 1, 1 << 24,
                   &c->vocab_size, err, errlen) != 0
        || cfg_int(root, path, "num_key_value_heads", c->n_heads, 1, 1024,
                   &c->n_kv_heads, err, errlen) != 0
        || cfg_int(root, path, "head_dim", c->dim / c->n_heads, 1, 1024,
                   &c->head_dim, err, errlen) != 0
        || cfg_int(root, path, "max_position_embeddings", 2048, 1, 1 << 24,
                   &c->max_seq_len, err, errlen) != 0
        || cfg_float(root, path, "rms_norm_eps", 1e-6, &c->rms_eps,
                     err, errlen) != 0
        || cfg_float(root, path, "rope_theta", 10000.0, &c->rope_theta,
                     err, errlen) != 0)
    {
        return -1;
    }
    if (c->n_heads % c->n_kv_heads != 0) {
        m_err(err, errlen, "%s: num_attention_heads %d is not a multiple of "
              "num_key_value_heads %d", path, c->n_heads, c->n_kv_heads);
        return -1;
    }
    if (c->head_dim % 2 != 0) {
        m_err(err, errlen, "%s: head_dim %d is odd; RoPE needs pairs", path,
              c->head_dim);
        return -1;
    }

    v = cfg_get(root, "hidden_act");
    if (v != NULL && !YAJL_IS_NULL(v)
        && (!YAJL_IS_STRING(v) || strcmp(v->u.string, "silu") != 0))
    {
        m_err(err, errlen, "%s: hidden_act \"%s\" is not supported (only "
              "\"silu\" is)", path,
              YAJL_IS_STRING(v) ? YAJL_GET_STRING(v) : "(not a string)");
        return -1;
    }
    v = cfg_get(root, "rope_scaling");
    if (v != NULL && !YAJL_IS_NULL(v)) {
        const char *k_type[] = { "rope_type", NULL }, *k_t2[] = { "type", NULL };
        yajl_val t = yajl_tree_get(v, k_type, yajl_t_string);
        if (t == NULL) {
            t = yajl_tree_get(v, k_t2, yajl_t_string);
        }
        m_err(err, errlen, "%s: rope_scaling (%s) is set; RoPE scaling is not "
              "supported yet", path, t ? YAJL_GET_STRING(t) : "unknown type");
        return -1;
    }
    if (cfg_must_be_false(root, path, "attention_bias", "attention biases",
                          err, errlen) != 0
        || cfg_must_be_false(root, path, "mlp_bias", "MLP biases",
                             err, errlen) != 0)
    {
        return -1;
    }

    v = cfg_get(root, "tie_word_embeddings");
    if (v != NULL && !YAJL_IS_NULL(v) && !YAJL_IS_TRUE(v)
        && !YAJL_IS_FALSE(v))
    {
        m_err(err, errlen, "%s: \"tie_word_embeddings\" must be true or false",
              path);
        return -1;
    }
    c->tied_embeddings = YAJL_IS_TRUE(v);       /* LlamaConfig: false */

    c->bos_id = -1;
    if (cfg_int(root, path, "bos_token_id", -1, -1, c->vocab_size - 1,
                &c->bos_id, err, errlen) != 0)
    {
        return -1;
    }
    c->n_eos = 0;
    v = cfg_get(root, "eos_token_id");
    if (YAJL_IS_ARRAY(v)) {
        if (v->u.array.len > sizeof(c->eos_ids) / sizeof(c->eos_ids[0])) {
            m_err(err, errlen, "%s: eos_token_id lists %zu ids, at most %zu "
                  "are supported", path, v->u.array.len,
                  sizeof(c->eos_ids) / sizeof(c->eos_ids[0]));
            return -1;
        }
        for (i = 0; i < v->u.array.len; i++) {
            yajl_val e = v->u.array.values[i];
            if (!YAJL_IS_INTEGER(e) || YAJL_GET_INTEGER(e) < 0
                || YAJL_GET_INTEGER(e) >= c->vocab_size)
            {
                m_err(err, errlen, "%s: eos_token_id has an entry that is not "
                      "a token id", path);
                return -1;
            }
            c->eos_ids[c->n_eos++] = (int) YAJL_GET_INTEGER(e);
        }
    } else if (v != NULL && !YAJL_IS_NULL(v)) {
        if (cfg_int(root, path, "eos_token_id", -1, 0, c->vocab_size - 1,
                    &c->eos_ids[0], err, errlen) != 0)
        {
            return -1;
        }
        c->n_eos = 1;
    }
    return 0;
}

int
model_config_load(const char *path, model_config_t *c, char *err,
    size_t errlen)
{
    char *json, ebuf[256];
    yajl_val root;
    FILE *fp;
    long len;
    int rc;

    memset(c, 0, sizeof(*c));
    fp = fopen(path, "rb");
    if (fp == NULL) {
        m_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (fseek(fp, 0, SEEK_END) != 0 || (len = ftell(fp)) < 0
        || fseek(fp, 0, SEEK_SET) != 0 || len > (1 << 20))
    {
        m_err(err, errlen, "%s: cannot read (or larger than 1 MiB)", path);
        fclose(fp);
        return -1;
    }
    json = malloc((size_t) len + 1);
    if (json == NULL || fread(json, 1, (size_t) len, fp) != (size_t) len) {
        m_err(err, errlen, "%s: cannot read", path);
        free(json);
        fclose(fp);
        return -1;
    }
    fclose(fp);
    json[len] = '\0';

    ebuf[0] = '\0';
    root = yajl_tree_parse(json, ebuf, sizeof(ebuf));
    free(json);
    if (root == NULL) {
        ebuf[strcspn(ebuf, "\n")] = '\0';
        m_err(err, errlen, "%s: not valid JSON: %s", path,
              ebuf[0] ? ebuf : "parse error");
        return -1;
    }
    if (!YAJL_IS_OBJECT(root)) {
        m_err(err, errlen, "%s: not a JSON object", path);
        yajl_tree_free(root);
        return -1;
    }
    rc = cfg_check(root, path, c, err, errlen);
    yajl_tree_free(root);
    return rc;
}

/* find a tensor, check its shape and dtype; NULL with err set */
static const st_tensor_t *
need(const model_t *m, const char *wfile, const char *name, int64_t d0,
    int64_t d1, char *err, size_t errlen)
{
    const st_tensor_t *t = st_find(m->weights, name);
    int ndim = d1 ? 2 : 1;

    if (t == NULL) {
        m_err(err, errlen, "%s: tensor '%s' is missing", wfile, name);
        return NULL;
    }
    if (t->ndim != ndim || t->shape[0] != d0 || (d1 && t->shape[1] != d1)) {
        char found[64] = "[";
        int i;
        for (i = 0; i < t->ndim; i++) {
            size_t n = strlen(found);
            snprintf(found + n, sizeof(found) - n, "%s%lld", i ? ", " : "",
                     (long long) t->shape[i]);
        }
        strncat(found, "]", sizeof(found) - strlen(found) - 1);
        if (d1) {
            m_err(err, errlen, "%s: tensor '%s' has shape %s, expected "
                  "[%lld, %lld]", t->file, name, found, (long long) d0,
                  (long long) d1);
        } else {
            m_err(err, errlen, "%s: tensor '%s' has shape %s, expected [%lld]",
                  t->file, name, found, (long long) d0);
        }
        return NULL;
    }
    if (t->dtype == ST_OTHER) {
        m_err(err, errlen, "%s: tensor '%s' has dtype %s, which cannot be "
              "computed (F32, F16 or BF16 expected)", t->file, name,
              t->dtype_name);
        return NULL;
    }
    return t;
}

int
model_load(const char *dir, model_t *m, char *err, size_t errlen)
{
    const model_config_t *c = &m->cfg;
    char path[PATH_MAX], name[160];
    const char *base;
    int64_t q_dim, kv_dim;
    size_t n;
    int l;

    memset(m, 0, sizeof(*m));
    n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') {
        n--;                        /* "dir/" names the same model */
    }
    if (n >= sizeof(m->dir)) {
        m_err(err, errlen, "%s: path too long", dir);
        return -1;
    }
    memcpy(m->dir, dir, n);
    m->dir[n] = '\0';
    base = strrchr(m->dir, '/');
    base = base ? base + 1 : m->dir;
    n = strlen(base) < sizeof(m->name) ? strlen(base) : sizeof(m->name) - 1;
    memcpy(m->name, base, n);
    m->name[n] = '\0';

    snprintf(path, sizeof(path), "%s/config.json", m->dir);
    if (model_config_load(path, &m->cfg, err, errlen) != 0) {
        return -1;
    }

    snprintf(path, sizeof(path), "%s/model.safetensors", m->dir);
    if (access(path, F_OK) != 0) {
        snprintf(path, sizeof(path), "%s/model.safetensors.index.json",
                 m->dir);
        if (access(path, F_OK) != 0) {
            m_err(err, errlen, "%s: no model.safetensors or "
                  "model.safetensors.index.json", m->dir);
            return -1;
        }
    }
    m->weights = st_open(path, err, errlen);
    if (m->weights == NULL) {
        return -1;
    }

    q_dim = (int64_t) c->n_heads * c->head_dim;
    kv_dim = (int64_t) c->n_kv_heads * c->head_dim;
    m->layers = calloc((size_t) c->n_layers, sizeof(*m->layers));
    if (m->layers == NULL) {
        m_err(err, errlen, "%s: out of memory", m->dir);
        goto fail;
    }

    m->tok_emb = need(m, path, "model.embed_tokens.weight", c->vocab_size,
                      c->dim, err, errlen);
    if (m->tok_emb == NULL) {
        goto fail;
    }
    for (l = 0; l < c->n_layers; l++) {
        model_layer_t *L = &m->layers[l];
#define NEED(field, suffix, d0, d1)                                         \
        snprintf(name, sizeof(name), "model.layers.%d.%s", l, suffix);      \
        if ((L->field = need(m, path, name, d0, d1, err, errlen)) == NULL) { \
            goto fail;                                                      \
        }
        NEED(attn_norm, "input_layernorm.weight", c->dim, 0);
        NEED(wq, "self_attn.q_proj.weight", q_dim, c->dim);
        NEED(wk, "self_attn.k_proj.weight", kv_dim, c->dim);
        NEED(wv, "self_attn.v_proj.weight", kv_dim, c->dim);
        NEED(wo, "self_attn.o_proj.weight", c->dim, q_dim);
        NEED(ffn_norm, "post_attention_layernorm.weight", c->dim, 0);
        NEED(w_gate, "mlp.gate_proj.weight", c->hidden_dim, c->dim);
        NEED(w_up, "mlp.up_proj.weight", c->hidden_dim, c->dim);
        NEED(w_down, "mlp.down_proj.weight", c->dim, c->hidden_dim);
#undef NEED
    }
    m->final_norm = need(m, path, "model.norm.weight", c->dim, 0, err,
                         errlen);
    if (m->final_norm == NULL) {
        goto fail;
    }
    if (c->tied_embeddings) {
        m->lm_head = m->tok_emb;
    } else {
        m->lm_head = need(m, path, "lm_head.weight", c->vocab_size, c->dim,
                          err, errlen);
        if (m->lm_head == NULL) {
            if (err != NULL && errlen > 0
                && st_find(m->weights, "lm_head.weight") == NULL)
            {
                size_t k = strlen(err);
                snprintf(err + k, errlen - k, " (config.json says "
                         "tie_word_embeddings is false)");
            }
            goto fail;
        }
    }
    return 0;

fail:
    model_free(m);
    return -1;
}

void
model_free(model_t *m)
{
    if (m == NULL) {
        return;
    }
    st_close(m->weights);
    free(m->layers);
    m->weights = NULL;
    m->layers = NULL;
    m->tok_emb = m->final_norm = m->lm_head = NULL;
}

/*
 * IEEE half -> single, exactly: every half is representable as a float.
 * Subnormal halves (exponent 0) are m * 2^-24; normalise them by shifting
 * the mantissa up until its leading one reaches the implicit bit.
 */
static float
f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t) (h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    float f;

    if (exp == 0x1f) {                      /* inf; nan keeps its payload,
                                             * quieted as F16C does */
        bits = sign | 0x7f800000u | (man << 13) | (man ? 0x400000u : 0);
    } else if (exp != 0) {                  /* normal: rebias 15 -> 127 */
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {                  /* signed zero */
        bits = sign;
    } else {                                /* subnormal */
        int e = 113;                        /* 127 - 15 + 1 */
        while ((man & 0x400) == 0) {
            man <<= 1;
            e--;
        }
        bits = sign | ((uint32_t) e << 23) | ((man & 0x3ff) << 13);
    }
    memcpy(&f, &bits, 4);
    return f;
}

void
model_tensor_to_f32(const st_tensor_t *t, float *out)
{
    const unsigned char *p = t->data;
    int64_t i;

    switch (t->dtype) {
    case ST_F32:
        memcpy(out, p, (size_t) t->numel * 4);
        break;
    case ST_F16:
        for (i = 0; i < t->numel; i++) {
            uint16_t h = (uint16_t) (p[2 * i] | (p[2 * i + 1] << 8));
            out[i] = f16_to_f32(h);
        }
        break;
    case ST_BF16:
        /* bf16 is the top half of a float */
        for (i = 0; i < t->numel; i++) {
            uint32_t bits = (uint32_t) (p[2 * i] | (p[2 * i + 1] << 8)) << 16;
            memcpy(&out[i], &bits, 4);
        }
        break;
    default:
        /* model_load refuses these; zeros rather than garbage */
        memset(out, 0, (size_t) t->numel * 4);
        break;
    }
}
