/*
 * test_engine.c - the CPU engine on the real stories260K model: known
 * greedy output, batching that changes nothing (a mixed batch of chunked
 * prefills and decodes gives each sequence what it gets alone, bit for
 * bit), seeded sampling, the KV pool running out and coming back, and
 * the errors engine_create and engine_step report.
 */

#include <stdint.h>

#include "unit.h"
#include "engine.h"
#include "model.h"
#include "overlap_check.h"

/*
 * Greedy decoding from BOS (id 1), 60 tokens.  Checked when written: they
 * decode, with python3 tokenizers' Tokenizer.from_file(
 * "build/models/stories260K/tokenizer.json").decode([1] + ids), to "Once
 * upon a time, there was a little girl named Lily. She loved to play
 * outside in the park. One day, she saw a big, red ball. She wanted to
 * play with it, but it was too high", and scripts/ref/plain_llama2c.c
 * (the llama2.c checkpoint, read directly) gives the same ids.
 */
static const int32_t known[60] = {
    403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317,
    426, 338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265, 282,
    295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352, 266, 268,
    388, 426, 338, 391, 266, 267, 337, 335, 312, 432, 398, 312, 286, 267,
    414, 270, 333, 415,
};

static model_t model;
static int vocab;

static engine_t *
make_engine(int threads, int max_seqs, int max_tokens, int kv_blocks)
{
    engine_opts_t o;
    engine_t *e;
    char err[512] = "";

    memset(&o, 0, sizeof(o));
    o.device = "cpu";
    o.threads = threads;
    o.max_seqs = max_seqs;
    o.max_batch_tokens = max_tokens;
    o.kv_block_size = 16;
    o.kv_blocks = kv_blocks;
    e = engine_create(&model, &o, err, sizeof(err));
    CHECK(e != NULL, "engine_create: %s", err);
    return e;
}

static void
test_greedy(int threads)
{
    engine_t *e = make_engine(threads, 2, 64, 0);
    float *logits = malloc(vocab * sizeof(float));
    int32_t tok = 1, out = -1, got[60];
    int i, ok = 1, argmax_ok = 1;

    if (e == NULL) {
        return;
    }
    CHECK(strcmp(engine_name(e), "cpu") == 0, "name %s", engine_name(e));
    CHECK(engine_kv_reserve(e, 1, 60) == 0, "reserve");
    for (i = 0; i < 60; i++) {
        engine_item_t it = { .seq = 1, .pos = i, .n_tokens = 1,
                             .tokens = &tok, .sample = 1, .top_p = 1 };
        int j, best = 0;
        if (engine_step(e, &it, 1, &out, logits) != 0) {
            CHECK(0, "step %d: %s", i, engine_last_error(e));
            break;
        }
        for (j = 1; j < vocab; j++) {
            best = logits[j] > logits[best] ? j : best;
        }
        argmax_ok &= best == out;
        got[i] = tok = out;
        ok &= got[i] == known[i];
    }
    CHECK(ok, "greedy from BOS (threads %d) differs from the known ids",
          threads);
    CHECK(argmax_ok, "sampled token is not the logits' argmax");
    if (!ok) {
        for (i = 0; i < 60; i++) {
            fprintf(stderr, "%d%s", got[i], i < 59 ? "," : "\n");
        }
    }
    CHECK(engine_allocs_after_start(e) == 0, "allocations after start");
    engine_destroy(e);
    free(logits);
    printf("greedy from BOS, threads %d: %s\n", threads, ok ? "ok" : "WRONG");
}

/* --- a mixed batch against each sequence alone ---------------------- */

#define N_GEN   20
#define CHUNK   3

typedef struct {
    int32_t   seq;
    int32_t   prompt[16];
    int       n_prompt;
    int       start;            /* step at which it joins the batch */
    int32_t   gen[N_GEN];
    float    *logits;           /* [N_GEN][vocab]: when each was drawn */
    /* progress */
    int       done_prompt, n_gen;
    int32_t   last;
} seq_t;

static seq_t seqs[3] = {
    { .seq = 2, .prompt = { 1, 403, 407, 261, 378 }, .n_prompt = 5,
      .start = 0 },
    { .seq = 0, .prompt = { 1 }, .n_prompt = 1, .start = 4 },
    { .seq = 3, .prompt = { 1, 403, 407, 261, 378, 432, 383, 286, 261, 376,
                            298 }, .n_prompt = 11, .start = 2 },
};

/* the whole prompt in one step, then one token per step */
static void
run_alone(engine_t *e, seq_t *s, int32_t *gen, float *logits)
{
    engine_item_t it = { .seq = s->seq, .pos = 0, .n_tokens = s->n_prompt,
                         .tokens = s->prompt, .sample = 1, .top_p = 1 };
    int32_t out = -1, tok;
    int i;

    CHECK(engine_kv_reserve(e, s->seq, s->n_prompt + N_GEN) == 0, "reserve");
    for (i = 0; i < N_GEN; i++) {
        if (engine_step(e, &it, 1, &out, logits + (size_t) i * vocab) != 0) {
            CHECK(0, "alone step: %s", engine_last_error(e));
            break;
        }
        gen[i] = tok = out;
        it.pos += it.n_tokens;
        it.n_tokens = 1;
        it.tokens = &tok;
    }
    engine_kv_release(e, s->seq);
}

/* chunked prefills and decodes interleaved, sequences joining late */
static void
run_mixed(engine_t *e, float *step_logits)
{
    engine_item_t items[3];
    int32_t out[3], which[3];
    int step, i, n, active = 3;

    for (i = 0; i < 3; i++) {
        seqs[i].done_prompt = seqs[i].n_gen = 0;
        CHECK(engine_kv_reserve(e, seqs[i].seq, seqs[i].n_prompt + N_GEN)
              == 0, "reserve");
    }
    for (step = 0; active > 0 && step < 200; step++) {
        for (i = 0, n = 0; i < 3; i++) {
            seq_t *s = &seqs[i];
            engine_item_t *it = &items[n];
            if (step < s->start || s->n_gen == N_GEN) {
                continue;
            }
            memset(it, 0, sizeof(*it));
            it->seq = s->seq;
            it->top_p = 1;
            if (s->done_prompt < s->n_prompt) {
                int k = s->n_prompt - s->done_prompt;
                k = k < CHUNK ? k : CHUNK;
                it->pos = s->done_prompt;
                it->n_tokens = k;
                it->tokens = s->prompt + s->done_prompt;
                s->done_prompt += k;
                it->sample = s->done_prompt == s->n_prompt;
            } else {
                it->pos = s->n_prompt + s->n_gen - 1;
                it->n_tokens = 1;
                it->tokens = &s->last;
                it->sample = 1;
            }
            which[n++] = i;
        }
        if (engine_step(e, items, n, out, step_logits) != 0) {
            CHECK(0, "mixed step %d: %s", step, engine_last_error(e));
            return;
        }
        for (i = 0; i < n; i++) {
            seq_t *s = &seqs[which[i]];
            if (!items[i].sample) {
                continue;
            }
            memcpy(s->logits + (size_t) s->n_gen * vocab,
                   step_logits + (size_t) i * vocab, vocab * sizeof(float));
            s->last = s->gen[s->n_gen++] = out[i];
            active -= s->n_gen == N_GEN;
        }
    }
    for (i = 0; i < 3; i++) {
        engine_kv_release(e, seqs[i].seq);
    }
}

static void
test_mixed_batch(int threads)
{
    engine_t *e = make_engine(threads, 4, 32, 0);
    float *alone_logits = malloc((size_t) N_GEN * vocab * sizeof(float));
    float *step_logits = malloc((size_t) 3 * vocab * sizeof(float));
    int32_t alone[3][N_GEN];
    int i, j;

    if (e == NULL) {
        return;
    }
    for (i = 0; i < 3; i++) {
        seqs[i].logits = malloc((size_t) N_GEN * vocab * sizeof(float));
    }
    run_mixed(e, step_logits);
    for (i = 0; i < 3; i++) {
        int same_tokens = 1, same_bits;
        run_alone(e, &seqs[i], alone[i], alone_logits);
        for (j = 0; j < N_GEN; j++) {
            same_tokens &= alone[i][j] == seqs[i].gen[j];
        }
        same_bits = memcmp(alone_logits, seqs[i].logits,
                           (size_t) N_GEN * vocab * sizeof(float)) == 0;
        CHECK(same_tokens, "threads %d: seq %d (prompt %d) differs in the "
              "mixed batch", threads, seqs[i].seq, seqs[i].n_prompt);
        CHECK(same_bits, "threads %d: seq %d logits not bit-identical in the "
              "mixed batch", threads, seqs[i].seq);
    }
    /* the prompt "Once upon a time" continues as the known text does */
    for (j = 0, i = 1; j < N_GEN; j++) {
        i &= seqs[0].gen[j] == known[j + 4];
    }
    CHECK(i, "\"Once upon a time\" does not continue as from BOS");
    CHECK(engine_kv_blocks_used(e) == 0, "blocks left in use");
    printf("mixed batch (chunked prefill + decode), threads %d: same tokens "
           "and logits as alone\n", threads);
    for (i = 0; i < 3; i++) {
        free(seqs[i].logits);
    }
    free(alone_logits);
    free(step_logits);
    engine_destroy(e);
}

/* --- seeded sampling ------------------------------------------------- */

static void
sample_run(engine_t *e, uint64_t seed, int32_t *gen, int n)
{
    uint64_t rng = seed;
    int32_t tok = 1, out = -1;
    int i;

    CHECK(engine_kv_reserve(e, 0, n) == 0, "reserve");
    for (i = 0; i < n; i++) {
        engine_item_t it = { .seq = 0, .pos = i, .n_tokens = 1,
                             .tokens = &tok, .sample = 1,
                             .temperature = 0.8f, .top_p = 0.9f,
                             .rng = &rng };
        if (engine_step(e, &it, 1, &out, NULL) != 0) {
            CHECK(0, "sample step: %s", engine_last_error(e));
            break;
        }
        gen[i] = tok = out;
    }
    engine_kv_release(e, 0);
}

static void
test_seeded(void)
{
    engine_t *e = make_engine(1, 1, 16, 0);
    int32_t a[40], b[40], c[40];

    if (e == NULL) {
        return;
    }
    sample_run(e, 42, a, 40);
    sample_run(e, 42, b, 40);
    sample_run(e, 43, c, 40);
    CHECK(memcmp(a, b, sizeof(a)) == 0, "seed 42 twice differs");
    CHECK(memcmp(a, c, sizeof(a)) != 0, "seeds 42 and 43 agree");
    CHECK(memcmp(a, known, sizeof(a)) != 0, "temperature 0.8 is greedy?");
    printf("seeded sampling: same seed same tokens, other seed other "
           "tokens\n");
    engine_destroy(e);
}

/* --- the KV pool ------------------------------------------------------ */

static void
test_kv(void)
{
    engine_t *e = make_engine(1, 3, 16, 4);
    int32_t tok = 1, out;
    engine_item_t it = { .seq = 1, .pos = 0, .n_tokens = 1, .tokens = &tok,
                         .sample = 1, .top_p = 1 };

    if (e == NULL) {
        return;
    }
    CHECK(engine_kv_blocks_total(e) == 4 && engine_kv_block_size(e) == 16,
          "pool of %d x %d", engine_kv_blocks_total(e),
          engine_kv_block_size(e));
    CHECK(engine_kv_reserve(e, 0, 40) == 0, "3 blocks");
    CHECK(engine_kv_blocks_used(e) == 3, "used %d", engine_kv_blocks_used(e));
    CHECK(engine_kv_reserve(e, 1, 32) == -1, "2 blocks of 1 free");
    CHECK(engine_kv_blocks_used(e) == 3, "a failed reserve took blocks");
    CHECK(engine_kv_reserve(e, 0, 48) == 0, "growing within the last block");
    CHECK(engine_kv_blocks_used(e) == 3, "used %d", engine_kv_blocks_used(e));
    CHECK(engine_kv_reserve(e, 1, 16) == 0, "the last block");
    CHECK(engine_kv_reserve(e, 2, 1) == -1, "pool exhausted");
    CHECK(engine_kv_reserve(e, 0, 10) == 0 && engine_kv_blocks_used(e) == 4,
          "shrinking is a no-op");

    /* a step past what is reserved is refused, nothing runs */
    it.pos = 16;
    CHECK(engine_step(e, &it, 1, &out, NULL) == -1
          && strstr(engine_last_error(e), "reserved") != NULL,
          "step past the reservation: %s", engine_last_error(e));
    printf("  refused step -> %s\n", engine_last_error(e));
    it.pos = 15;
    CHECK(engine_step(e, &it, 1, &out, NULL) == 0
          && engine_last_error(e)[0] == '\0', "step at the last position");

    engine_kv_release(e, 0);
    CHECK(engine_kv_blocks_used(e) == 1, "release gives blocks back");
    CHECK(engine_kv_reserve(e, 2, 48) == 0, "released blocks are reusable");
    CHECK(engine_kv_reserve(e, 1, 513) == -1, "past max_position_embeddings");
    engine_kv_release(e, 1);
    engine_kv_release(e, 2);
    engine_kv_release(e, 2);
    CHECK(engine_kv_blocks_used(e) == 0, "all free");
    CHECK(engine_kv_reserve(e, 3, 1) == -1 && engine_kv_reserve(e, -1, 1)
          == -1, "seq out of range");

    /* a reused block does not leak the old sequence's K/V: greedy from BOS
     * in blocks last used by someone else still gives the known ids */
    {
        int32_t t2 = 1, got[20];
        int i, ok = 1;
        CHECK(engine_kv_reserve(e, 2, 20) == 0, "reserve");
        for (i = 0; i < 20; i++) {
            engine_item_t g = { .seq = 2, .pos = i, .n_tokens = 1,
                                .tokens = &t2, .sample = 1, .top_p = 1 };
            ok &= engine_step(e, &g, 1, &out, NULL) == 0;
            got[i] = t2 = out;
            ok &= got[i] == known[i];
        }
        CHECK(ok, "greedy in reused blocks");
    }
    engine_destroy(e);

    /* sizing: 0 and 0 means 64 MiB, capped at what max_seqs can use */
    e = make_engine(1, 4, 16, 0);
    if (e != NULL) {
        CHECK(engine_kv_blocks_total(e) == 4 * 512 / 16, "default pool %d",
              engine_kv_blocks_total(e));
        engine_destroy(e);
    }
    printf("kv pool: reserve, exhaustion, release, reuse: ok\n");
}

/* --- what engine_create and engine_step refuse ----------------------- */

static void
expect_create_fail(engine_opts_t o, const char *what, const char *msg)
{
    char err[512] = "";
    engine_t *e = engine_create(&model, &o, err, sizeof(err));

    CHECK(e == NULL, "%s: created", what);
    if (e != NULL) {
        engine_destroy(e);
        return;
    }
    CHECK(strstr(err, msg) != NULL, "%s: \"%s\" lacks \"%s\"", what, err, msg);
    printf("  %-20s -> %s\n", what, err);
}

static void
test_errors(void)
{
    engine_opts_t o;
    engine_t *e;
    engine_item_t it[3];
    int32_t toks[40], out[3];
    char err[512];
    int i;

    printf("refused engines and steps:\n");
    memset(&o, 0, sizeof(o));
    o.device = "cpu";
#ifndef NGX_GPU_HAVE_CUDA
    o.device = "cuda";
    expect_create_fail(o, "cuda", "this build has no CUDA engine");
    o.device = "cuda:1";
    expect_create_fail(o, "cuda:1", "this build has no CUDA engine");
#endif
    o.device = "tpu";
    expect_create_fail(o, "unknown device", "unknown device \"tpu\"");
    o.device = "cpu";
    o.kv_block_size = 12;
    expect_create_fail(o, "block size 12", "not a multiple of 8");
    o.kv_block_size = 16;
    o.kv_bytes = 1000;
    expect_create_fail(o, "kv_bytes 1000", "less than one KV block");
    o.kv_bytes = 0;
    o.max_seqs = -1;
    expect_create_fail(o, "negative max_seqs", "negative");

    /* auto falls back to the CPU in a build without CUDA */
    memset(&o, 0, sizeof(o));
    o.device = "auto";
    o.kv_bytes = (size_t) 1 << 20;
    e = engine_create(&model, &o, err, sizeof(err));
    CHECK(e != NULL, "auto: %s", err);
    if (e == NULL) {
        return;
    }
#ifndef NGX_GPU_HAVE_CUDA
    CHECK(strcmp(engine_name(e), "cpu") == 0, "auto is %s", engine_name(e));
#endif
    CHECK(engine_kv_blocks_total(e) == (1 << 20) / (16 * 5 * 2 * 32 * 4),
          "1 MiB is %d blocks", engine_kv_blocks_total(e));

    /* defaults: max_seqs 8, max_batch_tokens 512 */
    for (i = 0; i < 40; i++) {
        toks[i] = 1;
    }
    for (i = 0; i < 3; i++) {
        CHECK(engine_kv_reserve(e, i, 40) == 0, "reserve");
        it[i] = (engine_item_t) { .seq = i, .pos = 0, .n_tokens = 40,
                                  .tokens = toks, .sample = 1, .top_p = 1 };
    }
    CHECK(engine_step(e, it, 3, out, NULL) == 0, "120 tokens: %s",
          engine_last_error(e));
    it[1].seq = 8;
    CHECK(engine_step(e, it, 3, out, NULL) == -1
          && strstr(engine_last_error(e), "seq 8") != NULL, "seq 8");
    printf("  %-20s -> %s\n", "seq out of range", engine_last_error(e));
    it[1].seq = 1;
    toks[7] = vocab;
    CHECK(engine_step(e, it, 3, out, NULL) == -1
          && strstr(engine_last_error(e), "vocabulary") != NULL, "token");
    printf("  %-20s -> %s\n", "token out of range", engine_last_error(e));
    toks[7] = 1;
    it[2].n_tokens = 0;
    CHECK(engine_step(e, it, 3, out, NULL) == -1, "empty item");
    printf("  %-20s -> %s\n", "empty item", engine_last_error(e));
    it[2].n_tokens = 40;
    CHECK(engine_step(e, it, 9, out, NULL) == -1
          && strstr(engine_last_error(e), "max_seqs") != NULL, "9 items");
    printf("  %-20s -> %s\n", "too many items", engine_last_error(e));
    CHECK(engine_step(e, it, 0, out, NULL) == 0, "no items");
    engine_destroy(e);

    o.max_batch_tokens = 64;
    e = engine_create(&model, &o, err, sizeof(err));
    if (e != NULL) {
        for (i = 0; i < 2; i++) {
            engine_kv_reserve(e, i, 40);
        }
        CHECK(engine_step(e, it, 2, out, NULL) == -1
              && strstr(engine_last_error(e), "max_batch_tokens") != NULL,
              "80 tokens in a step of 64");
        printf("  %-20s -> %s\n", "too many tokens", engine_last_error(e));
        engine_destroy(e);
    }
}

int
main(void)
{
    const char *dir = unit_stories_dir();
    char err[512] = "";

    if (dir == NULL) {
        SKIP("stories260K not found (build/models/stories260K or "
             "$NGX_GPU_STORIES); run scripts/convert-llama2c");
        return unit_report("test_engine");
    }
    if (model_load(dir, &model, err, sizeof(err)) != 0) {
        CHECK(0, "model_load: %s", err);
        return unit_report("test_engine");
    }
    vocab = model.cfg.vocab_size;
    test_greedy(1);
    test_greedy(2);
    test_mixed_batch(1);
    test_mixed_batch(2);
    test_seeded();
    {
        engine_t *e = make_engine(1, 2, 64, 0);
        if (e != NULL) {
            overlap_check(e, 403, "cpu engine");
            engine_destroy(e);
        }
    }
    test_kv();
    test_errors();
    model_free(&model);
    return unit_report("test_engine");
}
