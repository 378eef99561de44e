/*
 * overlap_check.h - engine_step_begin/end with the next step begun before
 * the last one is read, its decode tokens ENGINE_TOKEN_OF() the last
 * step's items, must give what engine_step gives one step at a time.
 * Shared by the CPU engine's test (test_engine.c, through engine.c's
 * fallback) and the CUDA engine's (t/gpu/test_cuda_engine.c, its own).
 * Needs unit.h and the engine's model loaded; two sequences of greedy
 * decoding, one starting at BOS (1), one at `other`.
 */

#ifndef NGX_GPU_OVERLAP_CHECK_H
#define NGX_GPU_OVERLAP_CHECK_H

#include "engine.h"

#define OVERLAP_STEPS  40

/* one step at a time: the reference */
static void
overlap_ref(engine_t *e, int32_t other, int32_t gen[2][OVERLAP_STEPS])
{
    int32_t cur[2] = { 1, other }, out[2];
    int i, k;

    for (i = 0; i < OVERLAP_STEPS; i++) {
        engine_item_t it[2];
        memset(it, 0, sizeof(it));
        for (k = 0; k < 2; k++) {
            it[k].seq = k;
            it[k].pos = i;
            it[k].n_tokens = 1;
            it[k].tokens = &cur[k];
            it[k].sample = 1;
            it[k].top_p = 1;
        }
        if (engine_step(e, it, 2, out, NULL) != 0) {
            CHECK(0, "reference step %d: %s", i, engine_last_error(e));
            return;
        }
        for (k = 0; k < 2; k++) {
            gen[k][i] = cur[k] = out[k];
        }
    }
}

static void
overlap_check(engine_t *e, int32_t other, const char *what)
{
    int32_t ref[2][OVERLAP_STEPS], got[2][OVERLAP_STEPS];
    int32_t first[2] = { 1, other }, feed[2][2], out[2][2];
    engine_item_t it[2][2];
    int i, k, b, ok = 1, errs = 0;

    if (engine_kv_reserve(e, 0, OVERLAP_STEPS + 1) != 0
        || engine_kv_reserve(e, 1, OVERLAP_STEPS + 1) != 0)
    {
        CHECK(0, "%s: reserve", what);
        return;
    }
    overlap_ref(e, other, ref);

    /* step i uses buffer i & 1; its items feed from step i - 1's (the
     * second item in reversed order, so that item indices matter) */
    for (i = 0; i <= OVERLAP_STEPS && ok; i++) {
        b = i & 1;
        if (i < OVERLAP_STEPS) {
            memset(it[b], 0, sizeof(it[b]));
            for (k = 0; k < 2; k++) {
                int slot = i % 2 ? 1 - k : k;   /* item index of seq k */
                engine_item_t *x = &it[b][slot];
                x->seq = k;
                x->pos = i;
                x->n_tokens = 1;
                if (i == 0) {
                    x->tokens = &first[k];
                } else {
                    int prev = (i - 1) % 2 ? 1 - k : k;
                    feed[b][slot] = ENGINE_TOKEN_OF(prev);
                    x->tokens = &feed[b][slot];
                }
                x->sample = 1;
                x->top_p = 1;
            }
            if (engine_step_begin(e, it[b], 2) != 0) {
                CHECK(0, "%s: begin %d: %s", what, i, engine_last_error(e));
                ok = 0;
                break;
            }
        }
        if (i > 0) {
            int pb = (i - 1) & 1;
            if (engine_step_end(e, out[pb]) != 0) {
                CHECK(0, "%s: end %d: %s", what, i - 1,
                      engine_last_error(e));
                ok = 0;
                break;
            }
            for (k = 0; k < 2; k++) {
                got[k][i - 1] = out[pb][(i - 1) % 2 ? 1 - k : k];
            }
        }
    }
    for (k = 0; ok && k < 2; k++) {
        ok &= memcmp(got[k], ref[k], sizeof(ref[k])) == 0;
    }
    CHECK(ok, "%s: overlapped steps give what single steps give", what);
    CHECK(engine_steps_pending(e) == 0, "%s: nothing left pending", what);

    /* what begin refuses */
    {
        int32_t bad = ENGINE_TOKEN_OF(5), tok = 1, o;
        engine_item_t x;
        memset(&x, 0, sizeof(x));
        x.seq = 0;
        x.pos = 0;
        x.n_tokens = 1;
        x.tokens = &tok;
        x.top_p = 1;
        /* a step that samples nothing, then a token of it */
        errs += engine_step_begin(e, &x, 1) == 0;
        x.tokens = &bad;
        errs += engine_step_begin(e, &x, 1) != 0;
        bad = ENGINE_TOKEN_OF(0);
        errs += engine_step_begin(e, &x, 1) != 0;
        errs += engine_step_end(e, &o) == 0;
        errs += engine_step_end(e, &o) != 0;    /* nothing left */
        x.tokens = &tok;
        x.sample = 1;
        errs += engine_step_begin(e, &x, 1) == 0;
        errs += engine_step_begin(e, &x, 1) == 0;
        errs += engine_step_begin(e, &x, 1) != 0;   /* a third */
        errs += engine_step(e, &x, 1, &o, NULL) != 0;
        errs += engine_step_end(e, &o) == 0;
        errs += engine_step_end(e, &o) == 0;
        x.tokens = &bad;
        x.presence_penalty = 0.5f;
        errs += engine_step_begin(e, &x, 1) != 0;
        CHECK(errs == 12, "%s: bad begin/end calls refused (%d of 12 as "
              "expected)", what, errs);
    }
    engine_kv_release(e, 0);
    engine_kv_release(e, 1);
    printf("%s: overlapped steps %s\n", what, ok ? "ok" : "WRONG");
}

#endif /* NGX_GPU_OVERLAP_CHECK_H */
