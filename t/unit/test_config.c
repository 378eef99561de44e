/*
 * test_config.c - model_config_load: a full config, HF LlamaConfig
 * defaults for absent fields, and the configs it must refuse (missing
 * fields, other architectures, RoPE scaling, malformed JSON, ...) with a
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
        "rope_scaling (llama3) is set", "not supported");
    expect_fail("rope_linear.json",
        "{" BASE ",\"rope_scaling\":{\"type\":\"linear\",\"factor\":2.0}}",
        "rope_scaling (linear)", NULL);
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
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not remove %s\n", tmpdir);
    }
    return unit_report("test_config");
}
