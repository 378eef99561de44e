/*
 * test_config.c - model_config_load: a full config, HF LlamaConfig
 * defaults for absent fields, Qwen2 / GLM / GLM-4 configs with their
 * classes' defaults, Llama-3 RoPE scaling (and its inverse frequencies),
 * and the configs it must refuse (missing fields, other architectures,
 * other RoPE scalings, sliding windows, malformed JSON, ...) with a
 * message naming the file and the problem.
 */

#include "unit.h"
#include "model.h"

static char tmpdir[256];

static const char *
write_cfg(const char *name, const char *json)
{
    static char path[512];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    f = fopen(path, "w");
    fputs(json, f);
    fclose(f);
    return path;
}

static void
expect_fail(const char *name, const char *json, const char *s1,
    const char *s2)
{
    const char *path = write_cfg(name, json);
    char err[512] = "";
    model_config_t c;
    int rc = model_config_load(path, &c, err, sizeof(err));

    CHECK(rc != 0, "%s: accepted", name);
    if (rc == 0) {
        return;
    }
    CHECK(strstr(err, name) != NULL, "%s: \"%s\" does not name the file",
          name, err);
    CHECK(strstr(err, s1) != NULL, "%s: \"%s\" lacks \"%s\"", name, err, s1);
    if (s2 != NULL) {
        CHECK(strstr(err, s2) != NULL, "%s: \"%s\" lacks \"%s\"", name, err,
              s2);
    }
    printf("  %-22s -> %s\n", name, err);
}

#define BASE "\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64," \
             "\"intermediate_size\":172,\"num_hidden_layers\":5,"          \
             "\"num_attention_heads\":8,\"vocab_size\":512"

static void
test_good(void)
{
    const char *path;
    char err[512] = "";
    model_config_t c;
    int rc;

    /* what scripts/convert-llama2c writes, plus a list of eos ids */
    path = write_cfg("full.json",
        "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\","
        "\"hidden_size\":64,\"intermediate_size\":172,"
        "\"num_hidden_layers\":5,\"num_attention_heads\":8,"
        "\"num_key_value_heads\":4,\"head_dim\":8,\"vocab_size\":512,"
        "\"max_position_embeddings\":512,\"rms_norm_eps\":1e-05,"
        "\"rope_theta\":500000.0,\"hidden_act\":\"silu\","
        "\"tie_word_embeddings\":true,\"bos_token_id\":1,"
        "\"eos_token_id\":[2,7],\"torch_dtype\":\"bfloat16\","
        "\"rope_scaling\":null,\"attention_bias\":false}");
    rc = model_config_load(path, &c, err, sizeof(err));
    CHECK(rc == 0, "full config: %s", err);
    CHECK(strcmp(c.architecture, "LlamaForCausalLM") == 0, "architecture");
    CHECK(strcmp(c.torch_dtype, "bfloat16") == 0, "torch_dtype");
    CHECK(c.dim == 64 && c.hidden_dim == 172 && c.n_layers == 5
          && c.n_heads == 8 && c.n_kv_heads == 4 && c.head_dim == 8
          && c.vocab_size == 512 && c.max_seq_len == 512, "sizes");
    CHECK(fabsf(c.rms_eps - 1e-5f) < 1e-12f, "rms_eps %g", c.rms_eps);
    CHECK(c.rope_theta == 500000.0f, "rope_theta %g", c.rope_theta);
    CHECK(c.tied_embeddings == 1, "tied");
    CHECK(c.bos_id == 1, "bos %d", c.bos_id);
    CHECK(c.n_eos == 2 && c.eos_ids[0] == 2 && c.eos_ids[1] == 7, "eos list");

    /* only the required fields: transformers' LlamaConfig defaults */
    path = write_cfg("minimal.json", "{" BASE "}");
    rc = model_config_load(path, &c, err, sizeof(err));
    CHECK(rc == 0, "minimal config: %s", err);
    CHECK(c.n_kv_heads == 8, "kv heads default %d", c.n_kv_heads);
    CHECK(c.head_dim == 8, "head_dim default %d", c.head_dim);
    CHECK(c.max_seq_len == 2048, "max_position_embeddings default %d",
          c.max_seq_len);
    CHECK(c.rope_theta == 10000.0f, "rope_theta default %g", c.rope_theta);
    CHECK(c.rms_eps == 1e-6f, "rms_norm_eps default %g", c.rms_eps);
    CHECK(c.tied_embeddings == 0, "tie_word_embeddings default false");
    CHECK(c.bos_id == -1 && c.n_eos == 0, "no bos/eos");
    CHECK(c.torch_dtype[0] == '\0', "no torch_dtype");

    /* an int eos, the newer "dtype", a second architecture listed */
    path = write_cfg("variant.json",
        "{\"architectures\":[\"Foo\",\"LlamaForCausalLM\"],"
        "\"hidden_size\":4096,\"intermediate_size\":14336,"
        "\"num_hidden_layers\":32,\"num_attention_heads\":32,"
        "\"num_key_value_heads\":8,\"vocab_size\":128256,"
        "\"eos_token_id\":128001,\"dtype\":\"float16\","
        "\"rope_theta\":10000,\"mlp_bias\":false}");
    rc = model_config_load(path, &c, err, sizeof(err));
    CHECK(rc == 0, "variant config: %s", err);
    CHECK(c.n_eos == 1 && c.eos_ids[0] == 128001, "int eos");
    CHECK(strcmp(c.torch_dtype, "float16") == 0, "dtype key");
    CHECK(c.head_dim == 128 && c.n_kv_heads == 8, "llama-3-like sizes");
    CHECK(c.rope_theta == 10000.0f, "integer rope_theta");
    printf("good configs: ok\n");
}

static void
test_bad(void)
{
    printf("refused configs:\n");
    expect_fail("no_hidden.json",
        "{\"architectures\":[\"LlamaForCausalLM\"],\"intermediate_size\":172,"
        "\"num_hidden_layers\":5,\"num_attention_heads\":8,"
        "\"vocab_size\":512}", "required field \"hidden_size\" is missing",
        NULL);
    expect_fail("no_vocab.json",
        "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,"
        "\"intermediate_size\":172,\"num_hidden_layers\":5,"
        "\"num_attention_heads\":8}", "\"vocab_size\" is missing", NULL);
    expect_fail("no_arch.json", "{\"hidden_size\":64}", "architectures",
                NULL);
    expect_fail("mistral.json",
        "{\"architectures\":[\"MistralForCausalLM\"],\"hidden_size\":64}",
        "architecture \"MistralForCausalLM\" is not supported",
        "LlamaForCausalLM");
    expect_fail("gpt2.json", "{\"architectures\":[\"GPT2LMHeadModel\"]}",
                "GPT2LMHeadModel", NULL);
    expect_fail("rope_scaling.json",
        "{" BASE ",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0}}",
        "rope_scaling (llama3): \"low_freq_factor\" is missing", NULL);
    expect_fail("rope_linear.json",
        "{" BASE ",\"rope_scaling\":{\"type\":\"linear\",\"factor\":2.0}}",
        "rope_scaling (linear)", "only \"llama3\" is");
    expect_fail("gelu.json", "{" BASE ",\"hidden_act\":\"gelu\"}",
                "hidden_act \"gelu\" is not supported", NULL);
    expect_fail("bias.json", "{" BASE ",\"attention_bias\":true}",
                "attention_bias", "not supported");
    expect_fail("mlp_bias.json", "{" BASE ",\"mlp_bias\":true}", "mlp_bias",
                NULL);
    expect_fail("kv_heads.json", "{" BASE ",\"num_key_value_heads\":3}",
                "not a multiple", NULL);
    expect_fail("odd_head.json", "{" BASE ",\"head_dim\":7}", "head_dim 7",
                NULL);
    expect_fail("string_int.json",
        "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":\"64\"}",
        "\"hidden_size\" must be an integer", NULL);
    expect_fail("float_int.json",
        "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64.5}",
        "\"hidden_size\" must be an integer", NULL);
    expect_fail("zero_layers.json",
        "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,"
        "\"intermediate_size\":172,\"num_hidden_layers\":0}",
        "num_hidden_layers", NULL);
    expect_fail("neg_eps.json", "{" BASE ",\"rms_norm_eps\":-1}",
                "rms_norm_eps", NULL);
    expect_fail("eos_range.json", "{" BASE ",\"eos_token_id\":[2,600]}",
                "eos_token_id", NULL);
    expect_fail("eos_many.json",
                "{" BASE ",\"eos_token_id\":[1,2,3,4,5,6,7,8,9]}",
                "lists 9 ids", NULL);
    expect_fail("tie.json", "{" BASE ",\"tie_word_embeddings\":1}",
                "tie_word_embeddings", NULL);
    expect_fail("malformed.json", "{" BASE ",", "not valid JSON", NULL);
    expect_fail("trailing.json", "{" BASE "} x", "not valid JSON", NULL);
    expect_fail("array.json", "[1,2]", "not a JSON object", NULL);
    expect_fail("empty.json", "", "not valid JSON", NULL);

    {
        char err[512] = "", path[512];
        model_config_t c;
        snprintf(path, sizeof(path), "%s/absent.json", tmpdir);
        CHECK(model_config_load(path, &c, err, sizeof(err)) != 0
              && strstr(err, "absent.json") != NULL
              && strstr(err, "No such file") != NULL, "absent: %s", err);
        printf("  %-22s -> %s\n", "absent.json", err);
    }
}

#define LLAMA3 "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0," \
               "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"         \
               "\"original_max_position_embeddings\":8192}"
#define QWEN2 "\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":64," \
              "\"intermediate_size\":172,\"num_hidden_layers\":2,"          \
              "\"num_attention_heads\":8,\"num_key_value_heads\":2,"        \
              "\"vocab_size\":512"
#define GLM(a) "\"architectures\":[\"" a "\"],\"hidden_size\":64,"        \
               "\"intermediate_size\":172,\"num_hidden_layers\":2,"         \
               "\"num_attention_heads\":4,\"vocab_size\":512"

static int
load_ok(const char *name, const char *json, model_config_t *c)
{
    char err[512] = "";
    int rc = model_config_load(write_cfg(name, json), c, err, sizeof(err));

    CHECK(rc == 0, "%s: %s", name, err);
    return rc == 0;
}

static void
test_archs(void)
{
    model_config_t c;
    float inv[64], inv_p[64];
    int i, n_kept = 0, n_slowed = 0, n_blend = 0;

    /* Qwen2: biases always, Qwen2Config's defaults, a window that is off */
    if (load_ok("qwen2.json", "{" QWEN2 ",\"use_sliding_window\":false,"
                "\"sliding_window\":32768,\"max_window_layers\":2,"
                "\"tie_word_embeddings\":true}", &c))
    {
        CHECK(c.arch == MODEL_QWEN2 && c.qkv_bias && !c.fused_gate_up
              && !c.post_norms && !c.rope_interleaved && c.rope_dim == 8
              && c.tied_embeddings && c.max_seq_len == 32768
              && c.rms_eps == 1e-6f && c.n_kv_heads == 2, "qwen2 fields");
    }

    /* GLM: GlmConfig's defaults: head_dim 128, half of it rotary,
     * interleaved, biases, 2 KV heads */
    if (load_ok("glm.json", "{" GLM("GlmForCausalLM") "}", &c)) {
        CHECK(c.arch == MODEL_GLM && c.head_dim == 128 && c.rope_dim == 64
              && c.rope_interleaved && c.qkv_bias && c.fused_gate_up
              && !c.post_norms && c.n_kv_heads == 2
              && c.max_seq_len == 131072 && c.rms_eps == 1.5625e-7f,
              "glm defaults: head_dim %d rope_dim %d kv %d", c.head_dim,
              c.rope_dim, c.n_kv_heads);
    }
    /* GLM-4 as GLM-4-9B-0414 writes it, then transformers 5's layout */
    if (load_ok("glm4.json", "{" GLM("Glm4ForCausalLM") ",\"head_dim\":32,"
                "\"partial_rotary_factor\":0.25,\"attention_bias\":false,"
                "\"rope_theta\":500000,\"eos_token_id\":[2,3,4]}", &c))
    {
        CHECK(c.arch == MODEL_GLM4 && c.post_norms && c.fused_gate_up
              && !c.qkv_bias && c.rope_dim == 8 && c.rope_interleaved
              && c.rope_theta == 500000.0f && c.n_eos == 3, "glm4 fields");
    }
    if (load_ok("glm4_v5.json", "{" GLM("Glm4ForCausalLM") ",\"head_dim\":32,"
                "\"rope_parameters\":{\"rope_type\":\"default\","
                "\"rope_theta\":20000.0,\"partial_rotary_factor\":0.75}}", &c))
    {
        CHECK(c.rope_dim == 24 && c.rope_theta == 20000.0f && !c.rope_llama3,
              "rope_parameters: rope_dim %d theta %g", c.rope_dim,
              c.rope_theta);
    }
    if (load_ok("llama_default_rope.json", "{" BASE ",\"rope_scaling\":"
                "{\"rope_type\":\"default\"}}", &c))
    {
        CHECK(!c.rope_llama3 && c.rope_dim == 8, "rope_type default");
    }

    /* Llama 3.1's scaling: high frequencies kept, low ones divided by
     * factor, the band between blended; all within [inv / 8, inv] */
    if (load_ok("llama3.json", "{" BASE ",\"head_dim\":128,\"rope_theta\":"
                "500000.0," LLAMA3 "}", &c))
    {
        model_config_t plain = c;

        CHECK(c.rope_llama3 && c.rope_factor == 8.0f
              && c.rope_orig_max_pos == 8192 && c.rope_dim == 128,
              "llama3 fields");
        plain.rope_llama3 = 0;
        model_rope_inv_freq(&plain, inv_p);
        model_rope_inv_freq(&c, inv);
        for (i = 0; i < 64; i++) {
            float p = inv_p[i], s = inv[i];
            if (2 * M_PI / p < 8192 / 4.0) {
                n_kept += s == p;
            } else if (2 * M_PI / p > 8192 / 1.0) {
                n_slowed += s == (float) (p / 8.0f);
            } else {
                n_blend += s < p && s > p / 8;
            }
        }
        CHECK(n_kept > 0 && n_slowed > 0 && n_blend > 0
              && n_kept + n_slowed + n_blend == 64,
              "llama3 bands: %d kept, %d slowed, %d blended", n_kept,
              n_slowed, n_blend);
    }
    printf("architectures and RoPE: ok (llama3 bands %d/%d/%d)\n", n_kept,
           n_slowed, n_blend);

    printf("refused architecture configs:\n");
    expect_fail("qwen2_window.json", "{" QWEN2 ",\"use_sliding_window\":true}",
                "use_sliding_window", "sliding-window attention is not "
                "supported");
    expect_fail("qwen2_layer_types.json", "{" QWEN2 ",\"layer_types\":"
                "[\"full_attention\",\"sliding_attention\"]}",
                "layer_types[1] is \"sliding_attention\"", NULL);
    expect_fail("qwen2_llama3.json", "{" QWEN2 "," LLAMA3 "}",
                "LlamaForCausalLM only", "Qwen2ForCausalLM");
    expect_fail("rope_yarn.json", "{" QWEN2 ",\"rope_scaling\":{\"type\":"
                "\"yarn\",\"factor\":4.0}}", "rope_scaling (yarn)",
                "not supported");
    expect_fail("rope_v5_yarn.json", "{" BASE ",\"rope_parameters\":"
                "{\"rope_type\":\"yarn\",\"rope_theta\":1e4}}",
                "rope_parameters (yarn)", NULL);
    expect_fail("rope_not_obj.json", "{" BASE ",\"rope_scaling\":\"llama3\"}",
                "\"rope_scaling\" must be an object", NULL);
    expect_fail("llama3_order.json", "{" BASE ",\"rope_scaling\":"
                "{\"rope_type\":\"llama3\",\"factor\":8,"
                "\"low_freq_factor\":4,\"high_freq_factor\":1,"
                "\"original_max_position_embeddings\":8192}}",
                "\"high_freq_factor\" 1 must be larger", NULL);
    expect_fail("llama3_factor.json", "{" BASE ",\"rope_scaling\":"
                "{\"rope_type\":\"llama3\",\"factor\":\"8\","
                "\"low_freq_factor\":1,\"high_freq_factor\":4,"
                "\"original_max_position_embeddings\":8192}}",
                "\"factor\" must be a positive number", NULL);
    expect_fail("llama_partial.json", "{" BASE ",\"partial_rotary_factor\":"
                "0.5}", "partial RoPE is supported for the GLM "
                "architectures only", "LlamaForCausalLM");
    expect_fail("glm_partial.json", "{" GLM("GlmForCausalLM")
                ",\"partial_rotary_factor\":1.5}", "\"partial_rotary_factor\" "
                "must be a number in (0, 1]", NULL);
    expect_fail("glm_rot_odd.json", "{" GLM("GlmForCausalLM")
                ",\"head_dim\":6}", "gives 3 rotary dims", NULL);
    expect_fail("glm_bias.json", "{" GLM("Glm4ForCausalLM")
                ",\"attention_bias\":\"yes\"}",
                "\"attention_bias\" must be true or false", NULL);
    expect_fail("glm_kv.json", "{" GLM("GlmForCausalLM")
                ",\"num_key_value_heads\":3}", "not a multiple", NULL);
}

int
main(void)
{
    char cmd[300];

    snprintf(tmpdir, sizeof(tmpdir), "/tmp/ngx-gpu-cfg-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    test_good();
    test_bad();
    test_archs();
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not remove %s\n", tmpdir);
    }
    return unit_report("test_config");
}
