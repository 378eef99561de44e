/*
 * test_cuda_engine.c - the CUDA engine through engine.h, against the CPU
 * engine and against Hugging Face transformers:
 *
 *   - stories260K greedy from BOS: the same 60 tokens as the CPU engine,
 *     with decode graphs and without (NGX_GPU_CUDA_GRAPHS=0);
 *   - a batch of mixed requests (chunked prefills beside decodes) gives
 *     each sequence exactly the tokens it gets alone;
 *   - seeded sampling replays, and follows sampler.c's rule;
 *   - the fixtures of scripts/make-logit-refs (Llama, Llama-3 RoPE
 *     scaling, Qwen2, GLM, GLM-4): logits within 1e-4 (relative, per
 *     row) in float32, 2e-2 in bfloat16 and float16 (3e-2 for a float32
 *     checkpoint run in bfloat16, see TOL_CAST), in a mixed batch and
 *     alone;
 *   - errors: a device that is not there, a dtype that is not one;
 *   - no device allocation after start.
 */

#include <stdint.h>
#include <cuda_runtime_api.h>

#include "unit.h"
#include "hf_refs.h"
#include "engine.h"
#include "model.h"
#include "sampler.h"
#include "overlap_check.h"

#define TOL_F32   1e-4
#define TOL_HALF  2e-2
/*
 * A float32 checkpoint run in bfloat16 computes with other weights than
 * the reference: rounding them alone (everything else f32, the CPU
 * engine) moved glm4-mqa4-hd48-rot24-untied-f32's logits by 1.84e-2,
 * the engine's whole bf16 error there being 2.21e-2.
 */
#define TOL_CAST  3e-2

static model_t stories;
static int vocab;

static engine_t *
make(const model_t *m, const char *device, const char *dtype, int max_seqs,
    int max_tokens, int kv_blocks)
{
    engine_opts_t o;
    engine_t *e;
    char err[512] = "";

    memset(&o, 0, sizeof(o));
    o.device = device;
    o.dtype = dtype;
    o.threads = 1;
    o.max_seqs = max_seqs;
    o.max_batch_tokens = max_tokens;
    o.kv_block_size = 16;
    o.kv_blocks = kv_blocks;
    e = engine_create(m, &o, err, sizeof(err));
    CHECK(e != NULL, "engine_create(%s, %s): %s", device,
          dtype ? dtype : "default", err);
    return e;
}

/* greedy from BOS, n tokens, one sequence; 0 or -1 */
static int
greedy(engine_t *e, int32_t *got, int n)
{
    int32_t tok = 1, out = -1;
    int i;

    engine_kv_release(e, 0);
    if (engine_kv_reserve(e, 0, n) != 0) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        engine_item_t it = { .seq = 0, .pos = i, .n_tokens = 1,
                             .tokens = &tok, .sample = 1, .top_p = 1 };
        if (engine_step(e, &it, 1, &out, NULL) != 0) {
            CHECK(0, "step %d: %s", i, engine_last_error(e));
            return -1;
        }
        got[i] = tok = out;
    }
    engine_kv_release(e, 0);
    return 0;
}

static void
test_greedy(void)
{
    int32_t cpu[60], gpu[60], eager[60];
    engine_t *c = make(&stories, "cpu", NULL, 2, 64, 0);
    engine_t *g = make(&stories, "cuda", NULL, 2, 64, 0);
    int same = 0, same_eager = 0, i;

    if (c == NULL || g == NULL) {
        engine_destroy(c);
        engine_destroy(g);
        return;
    }
    CHECK(strncmp(engine_name(g), "cuda:", 5) == 0, "name %s",
          engine_name(g));
    setenv("NGX_GPU_CUDA_GRAPHS", "0", 1);
    engine_t *ge = make(&stories, "cuda", NULL, 2, 64, 0);
    unsetenv("NGX_GPU_CUDA_GRAPHS");
    if (greedy(c, cpu, 60) == 0 && greedy(g, gpu, 60) == 0 && ge != NULL
        && greedy(ge, eager, 60) == 0)
    {
        for (i = 0; i < 60; i++) {
            same += cpu[i] == gpu[i];
            same_eager += gpu[i] == eager[i];
        }
        CHECK(same == 60, "stories260K greedy: %d of 60 tokens as the CPU "
              "engine's", same);
        CHECK(same_eager == 60, "graphs vs eager: %d of 60 the same",
              same_eager);
        printf("stories260K greedy (float32): %d/60 as cpu, graphs vs eager "
               "%d/60\n", same, same_eager);
    }
    CHECK(engine_allocs_after_start(g) == 0, "allocs after start %llu",
          (unsigned long long) engine_allocs_after_start(g));
    engine_destroy(ge);
    engine_destroy(c);
    engine_destroy(g);
}

/*
 * NS sequences with prompts of different lengths, 24 greedy tokens each:
 * alone, then all at once with prefills chunked to 16 tokens in a budget
 * of 48, so steps mix prefill chunks and decode tokens (the first step
 * holds four chunks).
 */
#define NS    5
#define NGEN  24

static int batch_steps;         /* steps run_batch() ran */

static int
run_batch(engine_t *e, int32_t (*prompts)[128], const int *plen,
    int32_t (*gen)[NGEN], int only, int chunk, int budget)
{
    int done[NS], ngen[NS], owner[NS], i, k, m;
    int32_t seqtok[NS][128 + NGEN], out[NS];
    engine_item_t items[NS];

    for (i = 0; i < NS; i++) {
        int active = only < 0 || only == i;
        memcpy(seqtok[i], prompts[i], (size_t) plen[i] * 4);
        done[i] = 0;
        ngen[i] = active ? 0 : NGEN;
        if (active && engine_kv_reserve(e, i, plen[i] + NGEN) != 0) {
            return -1;
        }
    }
    for (;;) {
        int left = budget, pass;

        m = 0;
        for (pass = 0; pass < 2; pass++) {
            for (i = 0; i < NS && left > 0; i++) {
                int pending = plen[i] + ngen[i] - done[i], take;
                int dec = done[i] >= plen[i];
                if (ngen[i] >= NGEN || pending <= 0 || (pass == 0) != dec) {
                    continue;
                }
                take = pending < chunk ? pending : chunk;
                take = take < left ? take : left;
                items[m] = (engine_item_t) {
                    .seq = i, .pos = done[i], .n_tokens = take,
                    .tokens = seqtok[i] + done[i],
                    .sample = done[i] + take == plen[i] + ngen[i],
                    .temperature = 0, .top_p = 1 };
                owner[m++] = i;
                left -= take;
            }
        }
        if (m == 0) {
            break;
        }
        if (engine_step(e, items, m, out, NULL) != 0) {
            CHECK(0, "batch step: %s", engine_last_error(e));
            return -1;
        }
        batch_steps++;
        for (k = 0; k < m; k++) {
            i = owner[k];
            done[i] += items[k].n_tokens;
            if (items[k].sample) {
                gen[i][ngen[i]] = out[k];
                seqtok[i][plen[i] + ngen[i]] = out[k];
                ngen[i]++;
            }
        }
    }
    for (i = 0; i < NS; i++) {
        engine_kv_release(e, i);
    }
    return 0;
}

/* how many of the NS sequences generated as they did alone */
static int
same_as_alone(int32_t (*alone)[NGEN], int32_t (*together)[NGEN])
{
    int i, same = 0;

    for (i = 0; i < NS; i++) {
        same += memcmp(alone[i], together[i], sizeof(alone[i])) == 0;
    }
    return same;
}

static void
test_batch(const char *dtype, int must)
{
    static const int plen[NS] = { 1, 3, 17, 40, 100 };
    int32_t prompts[NS][128], alone[NS][NGEN], together[NS][NGEN];
    engine_t *e = make(&stories, "cuda", dtype, NS, 48, 0);
    uint64_t s = 7;
    int i, j, same;

    if (e == NULL) {
        return;
    }
    for (i = 0; i < NS; i++) {
        prompts[i][0] = 1;
        for (j = 1; j < plen[i]; j++) {
            prompts[i][j] = 3 + (int32_t) (sampler_next(&s) % (vocab - 3));
        }
    }
    for (i = 0; i < NS; i++) {
        if (run_batch(e, prompts, plen, alone, i, 48, 48) != 0) {
            CHECK(0, "alone %d failed", i);
            engine_destroy(e);
            return;
        }
    }
    if (run_batch(e, prompts, plen, together, -1, 16, 48) != 0) {
        CHECK(0, "batch failed");
        engine_destroy(e);
        return;
    }
    same = same_as_alone(alone, together);
    if (must) {
        CHECK(same == NS, "mixed batch (%s): %d of %d sequences as alone",
              dtype ? dtype : "model dtype", same, NS);
    }
    printf("mixed batch vs alone (%s): %d/%d sequences identical\n",
           dtype ? dtype : "float32", same, NS);
    CHECK(engine_allocs_after_start(e) == 0, "allocs after start");
    engine_destroy(e);

    /* With room for 160 tokens a step, the mixed graphs take 5 items
     * and up to 5 + 64 token rows: every step of the batch (48 tokens
     * at most, several chunks in some) replays a graph. */
    e = make(&stories, "cuda", dtype, NS, 160, 0);
    if (e == NULL) {
        return;
    }
    {
        uint64_t d0, m0, d1, m1;

        engine_graph_steps(e, &d0, &m0);
        batch_steps = 0;
        if (run_batch(e, prompts, plen, together, -1, 16, 48) != 0) {
            CHECK(0, "batch (mixed graphs) failed");
            engine_destroy(e);
            return;
        }
        engine_graph_steps(e, &d1, &m1);
        CHECK(d1 - d0 + m1 - m0 == (uint64_t) batch_steps && m1 > m0,
              "mixed batch (%s): %d steps, %llu decode and %llu mixed "
              "graph replays", dtype ? dtype : "model dtype", batch_steps,
              (unsigned long long) (d1 - d0),
              (unsigned long long) (m1 - m0));
        same = same_as_alone(alone, together);
        if (must) {
            CHECK(same == NS, "mixed batch in graphs (%s): %d of %d "
                  "sequences as alone", dtype ? dtype : "model dtype", same,
                  NS);
        }
        printf("mixed batch in graphs vs alone (%s): %d/%d sequences "
               "identical, %d steps: %llu decode, %llu mixed graphs\n",
               dtype ? dtype : "float32", same, NS, batch_steps,
               (unsigned long long) (d1 - d0),
               (unsigned long long) (m1 - m0));
    }
    CHECK(engine_allocs_after_start(e) == 0, "allocs after start");
    engine_destroy(e);
}

/* seeded sampling: replays; with top_p 1 it is sampler.c's draw */
static void
test_sampling(void)
{
    engine_t *e = make(&stories, "cuda", NULL, 1, 16, 0);
    float *lg = malloc((size_t) vocab * 4);
    sampler_cand_t *scr = malloc((size_t) vocab * sizeof(*scr));
    int32_t run[2][40], tok, out;
    int r, i, agree = 0, replay;
    static const float temps[2] = { 0.9f, 1.2f };

    if (e == NULL) {
        free(lg); free(scr);
        return;
    }
    for (r = 0; r < 2; r++) {
        uint64_t rng = 1234;
        engine_kv_reserve(e, 0, 40);
        tok = 1;
        for (i = 0; i < 40; i++) {
            uint64_t before = rng;
            engine_item_t it = { .seq = 0, .pos = i, .n_tokens = 1,
                                 .tokens = &tok, .sample = 1,
                                 .temperature = temps[i % 2], .top_p = 1,
                                 .rng = &rng };
            if (engine_step(e, &it, 1, &out, lg) != 0) {
                CHECK(0, "sampling step: %s", engine_last_error(e));
                break;
            }
            agree += out == sampler_sample(lg, vocab, temps[i % 2], 1.0f,
                                           &before, scr);
            run[r][i] = tok = out;
        }
        engine_kv_release(e, 0);
    }
    replay = memcmp(run[0], run[1], sizeof(run[0])) == 0;
    CHECK(replay, "seeded sampling does not replay");
    CHECK(agree >= 79, "device draw vs sampler.c: %d of 80 agree", agree);
    printf("seeded sampling: replays %s, %d/80 draws as sampler.c\n",
           replay ? "yes" : "NO", agree);
    engine_destroy(e);
    free(lg);
    free(scr);
}

static void
test_errors(void)
{
    engine_opts_t o;
    char err[512] = "";
    engine_t *e;

    memset(&o, 0, sizeof(o));
    o.device = "cuda:77";
    e = engine_create(&stories, &o, err, sizeof(err));
    CHECK(e == NULL && strstr(err, "CUDA device") != NULL, "cuda:77: %s",
          err);
    engine_destroy(e);
    o.device = "cuda";
    o.dtype = "int3";
    e = engine_create(&stories, &o, err, sizeof(err));
    CHECK(e == NULL && strstr(err, "int3") != NULL, "dtype int3: %s", err);
    engine_destroy(e);
    /* a model that cannot fit: refused with the numbers, before any
     * weight is read (the shapes alone decide) */
    {
        model_t big = stories;
        big.cfg.dim = 16384;
        big.cfg.hidden_dim = 65536;
        big.cfg.n_layers = 64;
        o.device = "cuda";
        o.dtype = NULL;
        e = engine_create(&big, &o, err, sizeof(err));
        CHECK(e == NULL && strstr(err, "needs") != NULL, "too large: %s",
              err);
        printf("a model too large for the device: %s\n", err);
        engine_destroy(e);
    }
    o.device = "auto";
    o.dtype = NULL;
    e = engine_create(&stories, &o, err, sizeof(err));
    CHECK(e != NULL && strncmp(engine_name(e), "cuda", 4) == 0,
          "auto picks %s", e ? engine_name(e) : err);
    engine_destroy(e);
}

/* every fixture: its own dtype, plus the others the engine offers */
static void
test_hf(void)
{
    char names[32][128], err[512];
    int n = hf_list(names, 32), i, d;
    static const char *dts[3] = { "float32", "bfloat16", "float16" };

    if (n == 0) {
        SKIP("no fixtures in %s", hf_fixtures_dir());
        return;
    }
    for (i = 0; i < n; i++) {
        model_t m;
        hf_refs_t r;

        if (hf_fixture_load(names[i], &m, &r, err, sizeof(err)) != 0) {
            CHECK(0, "%s: %s", names[i], err);
            continue;
        }
        for (d = 0; d < 3; d++) {
            engine_t *e = hf_engine(&m, &r, "cuda", dts[d], 1024, err,
                                    sizeof(err));
            double tol = d == 0 ? TOL_F32 : TOL_HALF, tog, alone;

            if (d == 1 && strcmp(m.cfg.torch_dtype, "float32") == 0) {
                tol = TOL_CAST;
            }

            CHECK(e != NULL, "%s %s: %s", names[i], dts[d], err);
            if (e == NULL) {
                continue;
            }
            tog = hf_run(e, &r, 1, 96, 256, err, sizeof(err));
            CHECK(tog >= 0 && tog < tol, "%s as %s, mixed batch: max rel "
                  "err %.3g %s", names[i], dts[d], tog, tog < 0 ? err : "");
            alone = hf_run(e, &r, 0, 1024, 1024, err, sizeof(err));
            CHECK(alone >= 0 && alone < tol, "%s as %s, alone: max rel err "
                  "%.3g %s", names[i], dts[d], alone, alone < 0 ? err : "");
            CHECK(engine_allocs_after_start(e) == 0, "allocs after start");
            printf("hf %-24s (stored %-8s) as %-8s: max rel err %.2e batched, "
                   "%.2e alone\n", names[i], m.cfg.torch_dtype, dts[d], tog,
                   alone);
            engine_destroy(e);
        }
        hf_refs_free(&r);
        model_free(&m);
    }
}

int
main(void)
{
    const char *dir = unit_stories_dir();
    char err[512];
    int n_dev = 0;

    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        SKIP("no CUDA device");
        return unit_report("test_cuda_engine");
    }
    if (dir == NULL) {
        SKIP("stories260K not built (make models)");
    } else if (model_load(dir, &stories, err, sizeof(err)) != 0) {
        CHECK(0, "model_load: %s", err);
        dir = NULL;
    }
    if (dir != NULL) {
        vocab = stories.cfg.vocab_size;
        test_greedy();
        test_batch(NULL, 1);
        test_batch("bfloat16", 0);
        test_sampling();
        {
            /* two decode items a step: the bucket-2 graph */
            engine_t *e = make(&stories, "cuda", NULL, 4, 64, 0);
            if (e != NULL) {
                CHECK(engine_runs_async(e), "the cuda engine runs steps "
                      "asynchronously");
                overlap_check(e, 403, "cuda engine");
                engine_destroy(e);
            }
        }
        test_errors();
    }
    test_hf();
    return unit_report("test_cuda_engine");
}
