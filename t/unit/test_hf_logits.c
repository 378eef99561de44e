/*
 * test_hf_logits.c - the CPU engine against Hugging Face transformers:
 * the fixtures of scripts/make-logit-refs (tiny random Llamas: GQA, MQA,
 * multi-head, tied and untied heads, f32 and bf16 weights, head_dim 16
 * to 128, one with Llama-3 RoPE scaling; Qwen2 with its q/k/v biases;
 * GLM and GLM-4 with partial interleaved RoPE, fused gate_up, with and
 * without biases, GLM-4's extra norms), prompts of 1 to 1000 tokens and
 * 64 teacher-forced decode
 * steps, all sequences of a fixture in one mixed batch (prefill chunks
 * beside decode tokens) and each alone.  The references are float64 of
 * the stored weights, so the f32 engine must be within 1e-4 (relative,
 * per logits row) for bf16 weights too.  The same fixtures check the
 * CUDA engine in t/gpu/test_cuda_engine.c.
 */

#include "unit.h"
#include "hf_refs.h"
#include "model.h"

#define TOL_F32  1e-4

int
main(void)
{
    char names[32][128], err[512];
    int n = hf_list(names, 32), i;

    if (n == 0) {
        SKIP("no fixtures in %s (scripts/make-logit-refs makes them)",
             hf_fixtures_dir());
        return unit_report("test_hf_logits");
    }
    for (i = 0; i < n; i++) {
        model_t m;
        hf_refs_t r;
        engine_t *e;
        double together, alone;

        if (hf_fixture_load(names[i], &m, &r, err, sizeof(err)) != 0) {
            CHECK(0, "%s: %s", names[i], err);
            continue;
        }
        e = hf_engine(&m, &r, "cpu", NULL, 1024, err, sizeof(err));
        CHECK(e != NULL, "%s: engine_create: %s", names[i], err);
        if (e != NULL) {
            together = hf_run(e, &r, 1, 96, 256, err, sizeof(err));
            CHECK(together >= 0 && together < TOL_F32,
                  "%s: mixed batch: max rel err %.3g %s", names[i], together,
                  together < 0 ? err : "");
            alone = hf_run(e, &r, 0, 1024, 1024, err, sizeof(err));
            CHECK(alone >= 0 && alone < TOL_F32,
                  "%s: alone: max rel err %.3g %s", names[i], alone,
                  alone < 0 ? err : "");
            printf("%s (%s): cpu max rel err %.2e batched, %.2e alone\n",
                   names[i], m.cfg.torch_dtype, together, alone);
            engine_destroy(e);
        }
        hf_refs_free(&r);
        model_free(&m);
    }
    return unit_report("test_hf_logits");
}
