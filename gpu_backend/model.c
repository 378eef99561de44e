/*
 * model.c - decoder models in Hugging Face layout: Llama, Qwen2, GLM and
 * GLM-4 (model.h says how they differ).
 *
 * config.json is read with the defaults of the architecture's
 * transformers config class where a field may be absent; anything this
 * code cannot run (another architecture, a RoPE scaling other than
 * Llama-3's, sliding-window attention, an activation other than SiLU) is
 * refused here with a message, not discovered later as wrong output.
 */

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <yajl/yajl_tree.h>

#include "errbuf.h"
#include "readfile.h"
#include "model.h"


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
            set_err(err, errlen, "%s: required field \"%s\" is missing", path,
                    key);
            return -1;
        }
        *out = def;
        return 0;
    }
    if (!YAJL_IS_INTEGER(v) || YAJL_GET_INTEGER(v) < lo
        || YAJL_GET_INTEGER(v) > hi)
    {
        set_err(err, errlen, "%s: \"%s\" must be an integer in [%d, %d]", path,
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
        set_err(err, errlen, "%s: \"%s\" must be a positive number", path,
                key);
        return -1;
    }
    *out = (float) YAJL_GET_DOUBLE(v);
    return 0;
}

/* a boolean field, def when absent or null; 0 or -1 */
static int
cfg_bool(yajl_val root, const char *path, const char *key, int def,
    int *out, char *err, size_t errlen)
{
    yajl_val v = cfg_get(root, key);

    if (v == NULL || YAJL_IS_NULL(v)) {
        *out = def;
        return 0;
    }
    if (!YAJL_IS_TRUE(v) && !YAJL_IS_FALSE(v)) {
        set_err(err, errlen, "%s: \"%s\" must be true or false", path, key);
        return -1;
    }
    *out = YAJL_IS_TRUE(v);
    return 0;
}

/* a boolean field that must be false (or absent) */
static int
cfg_must_be_false(yajl_val root, const char *path, const char *key,
    const char *what, char *err, size_t errlen)
{
    yajl_val v = cfg_get(root, key);

    if (v != NULL && !YAJL_IS_NULL(v) && !YAJL_IS_FALSE(v)) {
        set_err(err, errlen, "%s: \"%s\" is set: %s are not supported yet",
                path, key, what);
        return -1;
    }
    return 0;
}

/* the architectures, with their config class's defaults */
typedef struct {
    const char    *name;
    model_arch_e   arch;
    int            max_pos;         /* max_position_embeddings */
    double         eps;             /* rms_norm_eps */
    int            head_dim;        /* 0: hidden_size / heads */
    int            kv_heads;        /* 0: num_attention_heads */
    double         partial_rotary;  /* partial_rotary_factor */
} arch_info_t;

static const arch_info_t archs[] = {
    { "LlamaForCausalLM", MODEL_LLAMA, 2048, 1e-6, 0, 0, 1.0 },
    { "Qwen2ForCausalLM", MODEL_QWEN2, 32768, 1e-6, 0, 0, 1.0 },
    { "GlmForCausalLM", MODEL_GLM, 131072, 1.5625e-7, 128, 2, 0.5 },
    { "Glm4ForCausalLM", MODEL_GLM4, 131072, 1.5625e-7, 128, 2, 0.5 },
};

#define N_ARCHS  (sizeof(archs) / sizeof(archs[0]))

/* a number in an object (the RoPE dict); 1 if there, 0 if absent, -1 if
 * not a number */
static int
obj_number(yajl_val obj, const char *key, double *out)
{
    const char *p[] = { key, NULL };
    yajl_val v = obj ? yajl_tree_get(obj, p, yajl_t_any) : NULL;

    if (v == NULL || YAJL_IS_NULL(v)) {
        return 0;
    }
    if (!YAJL_IS_DOUBLE(v)) {
        return -1;
    }
    *out = YAJL_GET_DOUBLE(v);
    return 1;
}

/*
 * RoPE: rope_theta, partial_rotary_factor and the scaling, from the top
 * level (transformers 4 layout) or from "rope_parameters" (transformers
 * 5, which keeps them all there), else "rope_scaling".
 */
static int
cfg_rope(yajl_val root, const char *path, const arch_info_t *ai,
    model_config_t *c, char *err, size_t errlen)
{
    const char *k_type[] = { "rope_type", NULL }, *k_t2[] = { "type", NULL };
    const char *where = "rope_parameters", *type = "default";
    yajl_val rp, t;
    double partial, d;
    int r;

    rp = cfg_get(root, "rope_parameters");
    if (rp == NULL || YAJL_IS_NULL(rp)) {
        rp = cfg_get(root, "rope_scaling");
        where = "rope_scaling";
    }
    if (rp != NULL && YAJL_IS_NULL(rp)) {
        rp = NULL;
    }
    if (rp != NULL && !YAJL_IS_OBJECT(rp)) {
        set_err(err, errlen, "%s: \"%s\" must be an object", path, where);
        return -1;
    }
    if (rp != NULL) {
        t = yajl_tree_get(rp, k_type, yajl_t_any);
        if (t == NULL) {
            t = yajl_tree_get(rp, k_t2, yajl_t_any);
        }
        if (t != NULL && !YAJL_IS_STRING(t)) {
            set_err(err, errlen, "%s: %s: \"rope_type\" must be a string",
                    path, where);
            return -1;
        }
        type = t ? YAJL_GET_STRING(t) : "default";
    }

    /* rope_theta: top level, else in the dict, else 10000 */
    if (cfg_float(root, path, "rope_theta", 10000.0, &c->rope_theta, err,
                  errlen) != 0)
    {
        return -1;
    }
    if (cfg_get(root, "rope_theta") == NULL
        || YAJL_IS_NULL(cfg_get(root, "rope_theta")))
    {
        r = obj_number(rp, "rope_theta", &d);
        if (r < 0 || (r > 0 && !(d > 0))) {
            set_err(err, errlen, "%s: %s: \"rope_theta\" must be a positive "
                    "number", path, where);
            return -1;
        }
        if (r > 0) {
            c->rope_theta = (float) d;
        }
    }

    /* partial_rotary_factor (read as a double: transformers takes
     * int(head_dim * factor) in double precision) */
    partial = ai->partial_rotary;
    r = obj_number(root, "partial_rotary_factor", &partial);
    if (r == 0) {
        r = obj_number(rp, "partial_rotary_factor", &partial);
    }
    if (r < 0 || !(partial > 0 && partial <= 1)) {
        set_err(err, errlen, "%s: \"partial_rotary_factor\" must be a number "
                "in (0, 1]", path);
        return -1;
    }
    if (partial != 1.0 && ai->arch != MODEL_GLM && ai->arch != MODEL_GLM4) {
        set_err(err, errlen, "%s: \"partial_rotary_factor\" %g: partial RoPE "
                "is supported for the GLM architectures only, not %s", path,
                partial, ai->name);
        return -1;
    }
    c->rope_dim = (int) (c->head_dim * partial);
    if (c->rope_dim < 2 || c->rope_dim % 2 != 0) {
        set_err(err, errlen, "%s: head_dim %d * partial_rotary_factor %g "
                "gives %d rotary dims; RoPE needs an even number, at least 2",
                path,
                c->head_dim, partial, c->rope_dim);
        return -1;
    }
    c->rope_interleaved = ai->arch == MODEL_GLM || ai->arch == MODEL_GLM4;

    if (strcmp(type, "default") == 0) {
        return 0;
    }
    if (strcmp(type, "llama3") != 0) {
        set_err(err, errlen, "%s: %s (%s) is set; this RoPE scaling is not "
                "supported (only \"llama3\" is)", path, where, type);
        return -1;
    }
    if (ai->arch != MODEL_LLAMA) {
        set_err(err, errlen, "%s: %s (llama3) is set; Llama-3 RoPE scaling "
                "is supported for LlamaForCausalLM only, not %s", path, where,
                ai->name);
        return -1;
    }
    {
        static const char *keys[] = { "factor", "low_freq_factor",
            "high_freq_factor", "original_max_position_embeddings" };
        double v[4];
        int i;

        for (i = 0; i < 4; i++) {
            r = obj_number(rp, keys[i], &v[i]);
            if (r <= 0 || !(v[i] > 0)) {
                set_err(err, errlen, "%s: %s (llama3): \"%s\" %s", path, where,
                        keys[i], r == 0 ? "is missing"
                                      : "must be a positive number");
                return -1;
            }
        }
        if (v[0] < 1) {
            set_err(err, errlen, "%s: %s (llama3): \"factor\" %g must be at "
                    "least 1", path, where, v[0]);
            return -1;
        }
        if (!(v[2] > v[1])) {
            set_err(err, errlen, "%s: %s (llama3): \"high_freq_factor\" %g "
                    "must be larger than \"low_freq_factor\" %g", path, where,
                    v[2],
                    v[1]);
            return -1;
        }
        if (v[3] != (double) (int) v[3] || v[3] > (1 << 24)) {
            set_err(err, errlen, "%s: %s (llama3): "
                    "\"original_max_position_embeddings\" must be an integer",
                    path, where);
            return -1;
        }
        c->rope_llama3 = 1;
        c->rope_factor = (float) v[0];
        c->rope_low_freq = (float) v[1];
        c->rope_high_freq = (float) v[2];
        c->rope_orig_max_pos = (int) v[3];
    }
    return 0;
}

static int
cfg_check(yajl_val root, const char *path, model_config_t *c, char *err,
    size_t errlen)
{
    const arch_info_t *ai = NULL;
    yajl_val v;
    size_t i, j;
    int flag;

    v = cfg_get(root, "architectures");
    if (!YAJL_IS_ARRAY(v) || v->u.array.len == 0) {
        set_err(err, errlen, "%s: no \"architectures\" list (expected e.g. "
                "[\"LlamaForCausalLM\"])", path);
        return -1;
    }
    for (i = 0; i < v->u.array.len && ai == NULL; i++) {
        const char *a = YAJL_GET_STRING(v->u.array.values[i]);
        for (j = 0; a != NULL && j < N_ARCHS; j++) {
            if (strcmp(a, archs[j].name) == 0) {
                ai = &archs[j];
                break;
            }
        }
    }
    if (ai == NULL) {
        const char *a = YAJL_GET_STRING(v->u.array.values[0]);
        set_err(err, errlen, "%s: architecture \"%s\" is not supported (these "
                "are: LlamaForCausalLM, Qwen2ForCausalLM, GlmForCausalLM, "
                "Glm4ForCausalLM)", path, a ? a : "(not a string)");
        return -1;
    }
    snprintf(c->architecture, sizeof(c->architecture), "%s", ai->name);
    c->arch = ai->arch;

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
        || cfg_int(root, path, "num_key_value_heads",
                   ai->kv_heads ? ai->kv_heads : c->n_heads, 1, 1024,
                   &c->n_kv_heads, err, errlen) != 0
        || cfg_int(root, path, "head_dim",
                   ai->head_dim ? ai->head_dim : c->dim / c->n_heads, 1,
                   1024, &c->head_dim, err, errlen) != 0
        || cfg_int(root, path, "max_position_embeddings", ai->max_pos, 1,
                   1 << 24, &c->max_seq_len, err, errlen) != 0
        || cfg_float(root, path, "rms_norm_eps", ai->eps, &c->rms_eps,
                     err, errlen) != 0)
    {
        return -1;
    }
    if (c->n_heads % c->n_kv_heads != 0) {
        set_err(err, errlen, "%s: num_attention_heads %d is not a multiple of "
                "num_key_value_heads %d", path, c->n_heads, c->n_kv_heads);
        return -1;
    }
    if (c->head_dim % 2 != 0) {
        set_err(err, errlen, "%s: head_dim %d is odd; RoPE needs pairs", path,
                c->head_dim);
        return -1;
    }
    if (cfg_rope(root, path, ai, c, err, errlen) != 0) {
        return -1;
    }

    v = cfg_get(root, "hidden_act");
    if (v != NULL && !YAJL_IS_NULL(v)
        && (!YAJL_IS_STRING(v) || strcmp(v->u.string, "silu") != 0))
    {
        set_err(err, errlen, "%s: hidden_act \"%s\" is not supported (only "
                "\"silu\" is)", path,
                YAJL_IS_STRING(v) ? YAJL_GET_STRING(v) : "(not a string)");
        return -1;
    }

    /* biases: Llama's attention_bias would also put one on o_proj (not
     * implemented); Qwen2 always has q/k/v biases (its config has no
     * switch); GLM's attention_bias (default true) is q/k/v only */
    switch (c->arch) {
    case MODEL_LLAMA:
        if (cfg_must_be_false(root, path, "attention_bias",
                              "attention biases", err, errlen) != 0)
        {
            return -1;
        }
        break;
    case MODEL_QWEN2:
        c->qkv_bias = 1;
        break;
    case MODEL_GLM:
    case MODEL_GLM4:
        if (cfg_bool(root, path, "attention_bias", 1, &c->qkv_bias, err,
                     errlen) != 0)
        {
            return -1;
        }
        c->fused_gate_up = 1;
        c->post_norms = c->arch == MODEL_GLM4;
        break;
    }
    if (cfg_must_be_false(root, path, "mlp_bias", "MLP biases",
                          err, errlen) != 0)
    {
        return -1;
    }

    /* Qwen2's sliding window: transformers 4 says use_sliding_window,
     * transformers 5 lists each layer's kind in layer_types */
    if (cfg_bool(root, path, "use_sliding_window", 0, &flag, err,
                 errlen) != 0)
    {
        return -1;
    }
    if (flag) {
        set_err(err, errlen, "%s: \"use_sliding_window\" is true: "
                "sliding-window attention is not supported yet", path);
        return -1;
    }
    v = cfg_get(root, "layer_types");
    if (v != NULL && !YAJL_IS_NULL(v)) {
        if (!YAJL_IS_ARRAY(v)) {
            set_err(err, errlen, "%s: \"layer_types\" must be a list", path);
            return -1;
        }
        for (i = 0; i < v->u.array.len; i++) {
            const char *lt = YAJL_GET_STRING(v->u.array.values[i]);
            if (lt == NULL || strcmp(lt, "full_attention") != 0) {
                set_err(err, errlen, "%s: layer_types[%zu] is \"%s\": only "
                        "\"full_attention\" layers are supported (no sliding "
                        "window yet)", path, i, lt ? lt : "(not a string)");
                return -1;
            }
        }
    }

    if (cfg_bool(root, path, "tie_word_embeddings", 0, &c->tied_embeddings,
                 err, errlen) != 0)
    {
        return -1;
    }

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
            set_err(err, errlen, "%s: eos_token_id lists %zu ids, at most %zu "
                    "are supported", path, v->u.array.len,
                    sizeof(c->eos_ids) / sizeof(c->eos_ids[0]));
            return -1;
        }
        for (i = 0; i < v->u.array.len; i++) {
            yajl_val e = v->u.array.values[i];
            if (!YAJL_IS_INTEGER(e) || YAJL_GET_INTEGER(e) < 0
                || YAJL_GET_INTEGER(e) >= c->vocab_size)
            {
                set_err(err, errlen, "%s: eos_token_id has an entry that is "
                        "not a token id", path);
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
    int rc;

    memset(c, 0, sizeof(*c));
    json = read_file(path, (size_t) 1 << 20, NULL, err, errlen);
    if (json == NULL) {
        return -1;
    }

    ebuf[0] = '\0';
    root = yajl_tree_parse(json, ebuf, sizeof(ebuf));
    free(json);
    if (root == NULL) {
        ebuf[strcspn(ebuf, "\n")] = '\0';
        set_err(err, errlen, "%s: not valid JSON: %s", path,
                ebuf[0] ? ebuf : "parse error");
        return -1;
    }
    if (!YAJL_IS_OBJECT(root)) {
        set_err(err, errlen, "%s: not a JSON object", path);
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
        set_err(err, errlen, "%s: tensor '%s' is missing", wfile, name);
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
            set_err(err, errlen, "%s: tensor '%s' has shape %s, expected "
                    "[%lld, %lld]", t->file, name, found, (long long) d0,
                    (long long) d1);
        } else {
            set_err(err, errlen, "%s: tensor '%s' has shape %s, expected "
                    "[%lld]", t->file, name, found, (long long) d0);
        }
        return NULL;
    }
    if (t->dtype == ST_OTHER) {
        set_err(err, errlen, "%s: tensor '%s' has dtype %s, which cannot be "
                "computed (F32, F16 or BF16 expected)", t->file, name,
                t->dtype_name);
        return NULL;
    }
    return t;
}

/* when a tensor is missing because of what config.json says, say so */
static void
missing_hint(const model_t *m, const char *name, char *err, size_t errlen)
{
    const model_config_t *c = &m->cfg;
    const char *hint = NULL;
    size_t k;

    if (err == NULL || errlen == 0 || st_find(m->weights, name) != NULL) {
        return;
    }
    if (strstr(name, "_proj.bias") != NULL) {
        hint = c->arch == MODEL_QWEN2
               ? "Qwen2ForCausalLM has q/k/v biases"
               : "attention_bias is true, GLM's default: q/k/v have biases";
    } else if (strstr(name, "gate_up_proj") != NULL) {
        hint = "GLM models keep gate and up in one tensor";
    } else if (strstr(name, "post_self_attn") != NULL
               || strstr(name, "post_mlp") != NULL)
    {
        hint = "Glm4ForCausalLM has these extra norms";
    }
    if (hint != NULL) {
        k = strlen(err);
        snprintf(err + k, errlen - k, " (%s)", hint);
    }
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
        set_err(err, errlen, "%s: path too long", dir);
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
            set_err(err, errlen, "%s: no model.safetensors or "
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
        set_err(err, errlen, "%s: out of memory", m->dir);
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
            missing_hint(m, name, err, errlen);                             \
            goto fail;                                                      \
        }
        NEED(attn_norm, "input_layernorm.weight", c->dim, 0);
        NEED(wq, "self_attn.q_proj.weight", q_dim, c->dim);
        NEED(wk, "self_attn.k_proj.weight", kv_dim, c->dim);
        NEED(wv, "self_attn.v_proj.weight", kv_dim, c->dim);
        if (c->qkv_bias) {
            NEED(bq, "self_attn.q_proj.bias", q_dim, 0);
            NEED(bk, "self_attn.k_proj.bias", kv_dim, 0);
            NEED(bv, "self_attn.v_proj.bias", kv_dim, 0);
        }
        NEED(wo, "self_attn.o_proj.weight", c->dim, q_dim);
        NEED(ffn_norm, "post_attention_layernorm.weight", c->dim, 0);
        if (c->fused_gate_up) {
            NEED(w_gate_up, "mlp.gate_up_proj.weight", 2 * (int64_t)
                 c->hidden_dim, c->dim);
        } else {
            NEED(w_gate, "mlp.gate_proj.weight", c->hidden_dim, c->dim);
            NEED(w_up, "mlp.up_proj.weight", c->hidden_dim, c->dim);
        }
        NEED(w_down, "mlp.down_proj.weight", c->dim, c->hidden_dim);
        if (c->post_norms) {
            NEED(post_attn_norm, "post_self_attn_layernorm.weight", c->dim,
                 0);
            NEED(post_ffn_norm, "post_mlp_layernorm.weight", c->dim, 0);
        }
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

void
model_rope_inv_freq(const model_config_t *c, float *inv_freq)
{
    double lo_wavelen, hi_wavelen;
    int i;

    lo_wavelen = (double) c->rope_orig_max_pos / c->rope_low_freq;
    hi_wavelen = (double) c->rope_orig_max_pos / c->rope_high_freq;
    for (i = 0; i < c->rope_dim / 2; i++) {
        /* transformers: inv_freq in f32 */
        float inv = (float) (1.0 / pow(c->rope_theta,
                                       (double) (2 * i) / c->rope_dim));
        double wavelen, smooth;

        if (c->rope_llama3) {
            /*
             * Llama 3: wavelengths shorter than original_max_pos /
             * high_freq_factor stay, those longer than original_max_pos
             * / low_freq_factor are slowed down by factor, and those in
             * between are blended
             */
            wavelen = 2 * M_PI / inv;
            if (wavelen > lo_wavelen) {
                inv = (float) (inv / c->rope_factor);
            } else if (!(wavelen < hi_wavelen)) {
                smooth = (c->rope_orig_max_pos / wavelen - c->rope_low_freq)
                         / (c->rope_high_freq - c->rope_low_freq);
                inv = (float) ((1 - smooth) * inv / c->rope_factor
                               + smooth * inv);
            }
        }
        inv_freq[i] = inv;
    }
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
