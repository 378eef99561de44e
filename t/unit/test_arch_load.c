/*
 * test_arch_load.c - model_load's tensor checks for the architectures
 * beyond Llama: Qwen2 (q/k/v biases), GLM (fused gate_up_proj, biases
 * when attention_bias), GLM-4 (its two extra norms).  Tiny models are
 * written here; a missing tensor, a wrong shape or dtype is refused with
 * a message that names the file, the tensor and why it was expected.
 */

#include <stdint.h>
#include <sys/stat.h>

#include "unit.h"
#include "model.h"
#include "st_files.h"

static char tmpdir[256];

/* dim 8, hidden 12, 1 layer, 2 heads of 8 (q_dim 16), 1 kv head,
 * vocab 16 */
#define TD   8
#define TH   12
#define TV   16
#define TQ   16
#define TKV  8

typedef struct {
    char     name[96];
    int      d0, d1;
} ten_t;

typedef struct {
    const char  *arch;
    int          bias;        /* q/k/v biases in the file */
    int          fused;       /* gate_up_proj instead of gate and up */
    int          post;        /* Glm4's norms */
    int          tied;
} tiny_t;

static int
tensors(const tiny_t *t, ten_t *out)
{
    int n = 0;

#define T(nm, a, b) do {                                                \
        snprintf(out[n].name, sizeof(out[n].name), "%s", nm);           \
        out[n].d0 = (a);                                                \
        out[n].d1 = (b);                                                \
        n++;                                                            \
    } while (0)

    T("model.embed_tokens.weight", TV, TD);
    T("model.norm.weight", TD, 0);
    T("model.layers.0.input_layernorm.weight", TD, 0);
    T("model.layers.0.self_attn.q_proj.weight", TQ, TD);
    T("model.layers.0.self_attn.k_proj.weight", TKV, TD);
    T("model.layers.0.self_attn.v_proj.weight", TKV, TD);
    if (t->bias) {
        T("model.layers.0.self_attn.q_proj.bias", TQ, 0);
        T("model.layers.0.self_attn.k_proj.bias", TKV, 0);
        T("model.layers.0.self_attn.v_proj.bias", TKV, 0);
    }
    T("model.layers.0.self_attn.o_proj.weight", TD, TQ);
    T("model.layers.0.post_attention_layernorm.weight", TD, 0);
    if (t->fused) {
        T("model.layers.0.mlp.gate_up_proj.weight", 2 * TH, TD);
    } else {
        T("model.layers.0.mlp.gate_proj.weight", TH, TD);
        T("model.layers.0.mlp.up_proj.weight", TH, TD);
    }
    T("model.layers.0.mlp.down_proj.weight", TD, TH);
    if (t->post) {
        T("model.layers.0.post_self_attn_layernorm.weight", TD, 0);
        T("model.layers.0.post_mlp_layernorm.weight", TD, 0);
    }
    if (!t->tied) {
        T("lm_head.weight", TV, TD);
    }
#undef T
    return n;
}

/* config.json (extra: more fields) and model.safetensors of zeros in
 * bf16; `skip` leaves a tensor out, `bad` gets one more row, `odd` gets
 * dtype I32 */
static void
write_tiny(const char *dir, const tiny_t *t, const char *extra,
    const char *skip, const char *bad, const char *odd)
{
    ten_t ts[32];
    char path[512], json[8192], *p = json;
    size_t off = 0;
    int n = tensors(t, ts), i;
    FILE *f;

    mkdir(dir, 0755);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    f = fopen(path, "w");
    fprintf(f, "{\"architectures\":[\"%s\"],\"hidden_size\":%d,"
            "\"intermediate_size\":%d,\"num_hidden_layers\":1,"
            "\"num_attention_heads\":2,\"num_key_value_heads\":1,"
            "\"head_dim\":8,\"vocab_size\":%d,\"max_position_embeddings\":64,"
            "\"tie_word_embeddings\":%s%s%s}", t->arch, TD, TH, TV,
            t->tied ? "true" : "false", extra ? "," : "", extra ? extra : "");
    fclose(f);

    p += sprintf(p, "{");
    for (i = 0; i < n; i++) {
        int d0 = ts[i].d0 + (bad && strcmp(bad, ts[i].name) == 0);
        int isodd = odd && strcmp(odd, ts[i].name) == 0;
        size_t bytes = (size_t) d0 * (ts[i].d1 ? ts[i].d1 : 1)
                       * (isodd ? 4 : 2);
        if (skip && strcmp(skip, ts[i].name) == 0) {
            continue;
        }
        p += sprintf(p, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%d",
                     p > json + 1 ? "," : "", ts[i].name,
                     isodd ? "I32" : "BF16", d0);
        if (ts[i].d1) {
            p += sprintf(p, ",%d", ts[i].d1);
        }
        p += sprintf(p, "],\"data_offsets\":[%zu,%zu]}", off, off + bytes);
        off += bytes;
    }
    p += sprintf(p, "}");
    st_write_zeros(dir, json, off);
}

/* the loader refuses dir, naming model.safetensors and saying s1 (and
 * s2) */
#define expect_load_fail(dir, what, s1, s2)                               \
    st_expect_load_fail((dir), (what), "model.safetensors", (s1), (s2))

static const tiny_t qwen2 = { "Qwen2ForCausalLM", 1, 0, 0, 1 };
static const tiny_t glm = { "GlmForCausalLM", 1, 1, 0, 0 };
static const tiny_t glm4 = { "Glm4ForCausalLM", 0, 1, 1, 0 };

static void
test_good(void)
{
    char dir[512], err[512] = "";
    model_t m;

    snprintf(dir, sizeof(dir), "%s/qwen2", tmpdir);
    write_tiny(dir, &qwen2, NULL, NULL, NULL, NULL);
    CHECK(model_load(dir, &m, err, sizeof(err)) == 0, "qwen2: %s", err);
    if (err[0] == '\0') {
        const model_layer_t *L = &m.layers[0];
        CHECK(L->bq && L->bk && L->bv && L->w_gate && L->w_up
              && !L->w_gate_up && !L->post_attn_norm
              && m.lm_head == m.tok_emb && L->bq->shape[0] == TQ,
              "qwen2 tensors");
        model_free(&m);
    }

    snprintf(dir, sizeof(dir), "%s/glm", tmpdir);
    write_tiny(dir, &glm, "\"partial_rotary_factor\":0.5", NULL, NULL, NULL);
    CHECK(model_load(dir, &m, err, sizeof(err)) == 0, "glm: %s", err);
    if (err[0] == '\0') {
        const model_layer_t *L = &m.layers[0];
        CHECK(L->bq && L->w_gate_up && !L->w_gate && !L->w_up
              && L->w_gate_up->shape[0] == 2 * TH && !L->post_ffn_norm
              && m.cfg.rope_dim == 4 && m.lm_head != m.tok_emb,
              "glm tensors");
        model_free(&m);
    }

    snprintf(dir, sizeof(dir), "%s/glm4", tmpdir);
    write_tiny(dir, &glm4, "\"attention_bias\":false", NULL, NULL, NULL);
    CHECK(model_load(dir, &m, err, sizeof(err)) == 0, "glm4: %s", err);
    if (err[0] == '\0') {
        const model_layer_t *L = &m.layers[0];
        CHECK(!L->bq && !L->bk && !L->bv && L->w_gate_up
              && L->post_attn_norm && L->post_ffn_norm, "glm4 tensors");
        model_free(&m);
    }
    printf("qwen2, glm, glm4 tiny models: loaded\n");
}

static void
test_bad(void)
{
    char dir[512];

    printf("models the loader refuses:\n");
    snprintf(dir, sizeof(dir), "%s/q_nobias", tmpdir);
    write_tiny(dir, &qwen2, NULL, "model.layers.0.self_attn.k_proj.bias",
               NULL, NULL);
    expect_load_fail(dir, "qwen2 without k bias",
                     "tensor 'model.layers.0.self_attn.k_proj.bias' is "
                     "missing", "Qwen2ForCausalLM has q/k/v biases");
    snprintf(dir, sizeof(dir), "%s/q_bias_shape", tmpdir);
    write_tiny(dir, &qwen2, NULL, NULL, "model.layers.0.self_attn.q_proj.bias",
               NULL);
    expect_load_fail(dir, "qwen2 q bias shape",
                     "'model.layers.0.self_attn.q_proj.bias' has shape [17], "
                     "expected [16]", NULL);
    snprintf(dir, sizeof(dir), "%s/g_nobias", tmpdir);
    write_tiny(dir, &glm, NULL, "model.layers.0.self_attn.v_proj.bias", NULL,
               NULL);
    expect_load_fail(dir, "glm without v bias", "v_proj.bias' is missing",
                     "attention_bias is true");
    snprintf(dir, sizeof(dir), "%s/g_split", tmpdir);
    write_tiny(dir, &glm, NULL, "model.layers.0.mlp.gate_up_proj.weight",
               NULL, NULL);
    expect_load_fail(dir, "glm without gate_up_proj",
                     "'model.layers.0.mlp.gate_up_proj.weight' is missing",
                     "gate and up in one tensor");
    snprintf(dir, sizeof(dir), "%s/g_gu_shape", tmpdir);
    write_tiny(dir, &glm, NULL, NULL, "model.layers.0.mlp.gate_up_proj.weight",
               NULL);
    expect_load_fail(dir, "glm gate_up_proj shape",
                     "has shape [25, 8], expected [24, 8]", NULL);
    snprintf(dir, sizeof(dir), "%s/g4_nonorm", tmpdir);
    write_tiny(dir, &glm4, "\"attention_bias\":false",
               "model.layers.0.post_mlp_layernorm.weight", NULL, NULL);
    expect_load_fail(dir, "glm4 without post_mlp norm",
                     "'model.layers.0.post_mlp_layernorm.weight' is missing",
                     "Glm4ForCausalLM has these extra norms");
    snprintf(dir, sizeof(dir), "%s/g4_dtype", tmpdir);
    write_tiny(dir, &glm4, "\"attention_bias\":false", NULL, NULL,
               "model.layers.0.post_self_attn_layernorm.weight");
    expect_load_fail(dir, "glm4 norm dtype", "has dtype I32, which cannot "
                     "be computed", NULL);
    /* GLM-4 says attention_bias (its default: true) but has none */
    snprintf(dir, sizeof(dir), "%s/g4_bias_default", tmpdir);
    write_tiny(dir, &glm4, NULL, NULL, NULL, NULL);
    expect_load_fail(dir, "glm4, attention_bias default",
                     "'model.layers.0.self_attn.q_proj.bias' is missing",
                     "attention_bias is true");
}

int
main(void)
{
    char cmd[300];

    snprintf(tmpdir, sizeof(tmpdir), "/tmp/ngx-gpu-arch-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    test_good();
    test_bad();
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not remove %s\n", tmpdir);
    }
    return unit_report("test_arch_load");
}
