/*
 * test_cuda_sample.c - the device sampler (sample_cuda.cu) against
 * sampler.c, the CPU reference:
 *
 *   - kernel: random rows of several vocabulary sizes, every rule
 *     (temperature, top_k, top_p, presence and frequency penalties) on
 *     the same uniform draw: the cut rows must pick sampler_pick()'s
 *     token (the top_p nucleus too, counted from the most likely token
 *     down), the counts gain the picked token, logprobs match
 *     sampler_logprobs();
 *   - engine: stories260K seeded with penalties, top_k, top_p and
 *     logprobs through engine_step(): each token is sampler.c's pick on
 *     the step's own logits with the same rng state, and a seed replays.
 */

#include <stdint.h>
#include <cuda_runtime_api.h>

#include "unit.h"
#include "engine.h"
#include "model.h"
#include "sampler.h"
#include "sample_cuda.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float
nrand(void)
{
    float s = 0;
    int i;

    for (i = 0; i < 4; i++) {
        s += (float) (sampler_next(&rng_state) >> 40) / 16777216.0f - 0.5f;
    }
    return s * 1.7f;
}

static void *
dput(const void *h, size_t n)
{
    void *d = NULL;

    if (cudaMalloc(&d, n ? n : 4) != cudaSuccess) {
        fprintf(stderr, "cudaMalloc %zu failed\n", n);
        exit(1);
    }
    if (h != NULL) {
        cudaMemcpy(d, h, n, cudaMemcpyHostToDevice);
    } else {
        cudaMemset(d, 0, n ? n : 4);
    }
    return d;
}

enum { R = 12 };

typedef struct { double p; int id; } pc_t;

static int
pc_cmp(const void *a, const void *b)
{
    const pc_t *x = a, *y = b;

    return x->p > y->p ? -1 : x->p < y->p ? 1 : x->id - y->id;
}

/* the size of sampler_pick()'s kept set, and the rank of id in it
 * (sums in double) */
static int
kept_set(const float *l, int V, float temp, int top_k, float top_p, int id,
    int *rank)
{
    pc_t *c = malloc((size_t) V * sizeof(*c));
    double mx = -INFINITY, sum = 0, cum = 0;
    int i, n = V, kept = V;

    for (i = 0; i < V; i++) {
        mx = l[i] > mx ? l[i] : mx;
    }
    for (i = 0; i < V; i++) {
        c[i].p = exp((l[i] - mx) / temp);
        c[i].id = i;
        sum += c[i].p;
    }
    qsort(c, (size_t) V, sizeof(*c), pc_cmp);
    if (top_k > 0 && top_k < V) {
        n = top_k;
        for (i = 0, sum = 0; i < n; i++) {
            sum += c[i].p;
        }
    }
    kept = n;
    for (i = 0; i < n; i++) {
        cum += c[i].p;
        if (cum >= top_p * sum) {
            kept = i + 1;
            break;
        }
    }
    for (i = 0, *rank = V; i < V; i++) {
        if (c[i].id == id) {
            *rank = i;
        }
    }
    free(c);
    return kept;
}

static void
test_kernel(int V)
{
    /* per row: temperature, top_k, top_p, presence, frequency, logprobs */
    static const float temps[R] = { 0, 0, 0.8f, 1.0f, 1.3f, 1.0f, 0.7f,
                                    1.0f, 1.0f, 0.9f, 1.0f, 1.0f };
    static const int tks[R] = { 0, 1, 40, 0, 0, 7, 200, 0, 1, 3, 0, 5000 };
    static const float tps[R] = { 1, 1, 1, 0.9f, 0.5f, 0.8f, 0.95f, 0.0f,
                                  1, 1, 1, 0.9f };
    static const float pres[R] = { 0, 1.5f, 0, 0.5f, 0, 2, 0, 0, 0, -1,
                                   0.3f, 0 };
    static const float freq[R] = { 0, 0.5f, 0, 0.25f, 0, 2, 0, 0, 0, -1,
                                   0.1f, 0 };
    static const int nlps[R] = { 5, -1, 20, 0, -1, 3, -1, 1, 20, -1, 2, 5 };
    float *l = malloc((size_t) R * V * 4), *pl = malloc((size_t) V * 4);
    float temp[R], tp[R], unif[R], pr[R], fr[R];
    int32_t row_tok[R], out[R], tk[R], crow[R], nlp[R], gen[64];
    uint16_t *cnt = malloc((size_t) R * V * 2), *hcnt = calloc(V, 2);
    engine_logprobs_t lp[R];
    sampler_cand_t *scr = malloc((size_t) V * sizeof(*scr));
    int iter, r, i, cut_same = 0, cut_total = 0, free_same = 0,
        free_total = 0, greedy_ok = 1, count_ok = 1, lp_ok = 1, n_gen,
        big_in = 0, big_total = 0;
    double lp_err = 0;

    for (iter = 0; iter < 25; iter++) {
        kc_step_t st;
        ks_rows_t rw;
        void *b[12];
        uint64_t st0[R];

        /* odd rows peaked, even rows flat: small and large kept sets */
        for (i = 0; i < R * V; i++) {
            l[i] = nrand() * ((i / V) % 2 ? 7.5f : 2.5f);
        }
        /* a tie for the largest: the lower id must win */
        l[0 * V + 700 % V] = 50.0f;
        l[0 * V + 5] = 50.0f;
        n_gen = 1 + iter % 40;
        for (i = 0; i < n_gen; i++) {
            gen[i] = (int32_t) (sampler_next(&rng_state) % (uint64_t) V);
            if (i % 3 == 1) {
                gen[i] = gen[i - 1];            /* repeats */
            }
        }
        for (r = 0; r < R; r++) {
            uint64_t s;
            row_tok[r] = r;
            temp[r] = temps[r];
            tp[r] = tps[r];
            tk[r] = tks[r];
            pr[r] = pres[r];
            fr[r] = freq[r];
            nlp[r] = nlps[r];
            crow[r] = pres[r] != 0 || freq[r] != 0 ? r : -1;
            st0[r] = s = sampler_next(&rng_state);
            unif[r] = temps[r] > 0 ? sampler_uniform(&s) : 0;
        }
        memset(&st, 0, sizeof(st));
        memset(cnt, 0, (size_t) R * V * 2);
        st.row_tok = b[0] = dput(row_tok, sizeof(row_tok));
        st.temperature = b[1] = dput(temp, sizeof(temp));
        st.top_p = b[2] = dput(tp, sizeof(tp));
        st.uniform = b[3] = dput(unif, sizeof(unif));
        rw.top_k = b[4] = dput(tk, sizeof(tk));
        rw.presence = b[5] = dput(pr, sizeof(pr));
        rw.frequency = b[6] = dput(fr, sizeof(fr));
        rw.count_row = b[7] = dput(crow, sizeof(crow));
        rw.n_logprobs = b[8] = dput(nlp, sizeof(nlp));
        b[9] = dput(l, (size_t) R * V * 4);
        b[10] = dput(NULL, (size_t) R * V * 2);
        b[11] = dput(gen, sizeof(gen));
        {
            void *dout = dput(NULL, sizeof(out));
            void *dlp = dput(NULL, sizeof(lp));
            for (r = 0; r < R; r++) {
                if (crow[r] >= 0) {
                    ks_counts_load(0, (uint16_t *) b[10] + (size_t) r * V, V,
                                   b[11], n_gen);
                }
            }
            ks_sample(0, dout, dlp, b[9], R, V, st, rw, b[10]);
            if (cudaDeviceSynchronize() != cudaSuccess
                || cudaGetLastError() != cudaSuccess)
            {
                CHECK(0, "ks_sample vocab %d failed", V);
                return;
            }
            cudaMemcpy(out, dout, sizeof(out), cudaMemcpyDeviceToHost);
            cudaMemcpy(lp, dlp, sizeof(lp), cudaMemcpyDeviceToHost);
            cudaMemcpy(cnt, b[10], (size_t) R * V * 2,
                       cudaMemcpyDeviceToHost);
            cudaFree(dout);
            cudaFree(dlp);
        }
        for (r = 0; r < R; r++) {
            const float *row = l + (size_t) r * V;
            uint64_t s = st0[r];
            int want, cut, kept, rank;

            memcpy(pl, row, (size_t) V * 4);
            if (crow[r] >= 0) {
                sampler_penalize(pl, V, gen, n_gen, pr[r], fr[r], hcnt);
            }
            want = sampler_pick(pl, V, temp[r], tk[r], tp[r], &s, scr);
            cut = (tk[r] > 0 && tk[r] < V) || tp[r] < 1;
            if (temp[r] <= 0 || tk[r] == 1) {
                greedy_ok &= out[r] == want;
            } else if (cut && ((kept = kept_set(pl, V, temp[r], tk[r],
                                                tp[r], out[r], &rank))
                                 > KS_CAND_MAX * 9 / 10
                               || tk[r] > KS_CAND_MAX))
            {
                /* more candidates than the device sorts (a top_k above
                 * KS_CAND_MAX counts as such): drawn in id order from
                 * the same kept set */
                big_in += rank < kept + kept / 1000 + 2;
                big_total++;
            } else if (cut) {
                cut_same += out[r] == want;
                cut_total++;
                if (out[r] != want) {
                    fprintf(stderr, "vocab %d row %d: %d, sampler.c %d\n",
                            V, r, out[r], want);
                }
            } else {
                /* id order over the whole vocabulary: sampler.c's f32
                 * running sum drifts from the block sums: counted */
                free_same += out[r] == want;
                free_total++;
            }
            /* the counts: gen's, and the picked token once more */
            if (crow[r] >= 0) {
                int bad = 0;
                for (i = 0; i < n_gen; i++) {
                    hcnt[gen[i]]++;
                }
                hcnt[out[r]]++;
                for (i = 0; i < V; i++) {
                    bad |= cnt[(size_t) r * V + i] != hcnt[i];
                }
                memset(hcnt, 0, (size_t) V * 2);
                count_ok &= !bad;
            }
            if (nlp[r] >= 0) {
                float want_lp, top_lp[20];
                int32_t top_id[20];
                sampler_logprobs(row, V, out[r], nlp[r], &want_lp, top_id,
                                 top_lp);
                lp_ok &= lp[r].n_top == nlp[r];
                lp_err = fmax(lp_err, fabs(lp[r].logprob - want_lp));
                for (i = 0; i < nlp[r] && i < lp[r].n_top; i++) {
                    lp_ok &= lp[r].top_id[i] == top_id[i];
                    lp_err = fmax(lp_err, fabs(lp[r].top_logprob[i]
                                               - top_lp[i]));
                }
            }
        }
        for (i = 0; i < 12; i++) {
            cudaFree(b[i]);
        }
    }
    CHECK(greedy_ok, "vocab %d: greedy or top_k 1 differs from sampler.c", V);
    CHECK(cut_same >= cut_total - 1, "vocab %d: %d of %d top_k/top_p draws "
          "as sampler.c", V, cut_same, cut_total);
    CHECK(big_in == big_total, "vocab %d: %d of %d draws from a large kept "
          "set in it", V, big_in, big_total);
    CHECK(count_ok, "vocab %d: penalty counts do not count the pick", V);
    CHECK(lp_ok && lp_err < 1e-4, "vocab %d: logprobs differ (max %g)", V,
          lp_err);
    printf("device sampler vocab %6d: greedy %s, top_k/top_p %d/%d as "
           "sampler.c, %d/%d in a kept set over %d, no cut %d/%d, counts "
           "%s, logprobs max err %.2g\n", V, greedy_ok ? "ok" : "WRONG",
           cut_same, cut_total, big_in, big_total, KS_CAND_MAX * 9 / 10,
           free_same, free_total, count_ok ? "ok" : "WRONG", lp_err);
    free(l); free(pl); free(cnt); free(hcnt); free(scr);
}

/* engine_step on stories260K: every rule, seeded, against sampler.c on
 * the step's own logits */
static void
test_engine(const model_t *m)
{
    int V = m->cfg.vocab_size, run, i, agree = 0, total = 0, lp_ok = 1;
    float *lg = malloc((size_t) V * 4), *pl = malloc((size_t) V * 4);
    sampler_cand_t *scr = malloc((size_t) V * sizeof(*scr));
    uint16_t *hc = calloc(V, 2);
    int32_t toks[2][64];
    engine_opts_t o;
    engine_t *e;
    char err[512] = "";
    static const int tks[4] = { 0, 20, 5, 0 };
    static const float tps[4] = { 0.9f, 1.0f, 0.8f, 1.0f };

    memset(&o, 0, sizeof(o));
    o.device = "cuda";
    o.max_seqs = 2;
    o.max_batch_tokens = 16;
    o.kv_block_size = 16;
    e = engine_create(m, &o, err, sizeof(err));
    CHECK(e != NULL, "engine_create: %s", err);
    if (e == NULL) {
        return;
    }
    for (run = 0; run < 2; run++) {
        uint64_t rng = 777;
        int32_t tok = 1, out;
        engine_kv_reserve(e, 1, 64);
        for (i = 0; i < 64; i++) {
            uint64_t before = rng;
            engine_logprobs_t lp;
            engine_item_t it = {
                .seq = 1, .pos = i, .n_tokens = 1, .tokens = &tok,
                .sample = 1, .temperature = 1.0f, .top_p = tps[i % 4],
                .rng = &rng, .top_k = tks[i % 4], .presence_penalty = 0.7f,
                .frequency_penalty = 0.3f, .gen = toks[run], .n_gen = i,
                .n_logprobs = 4, .lp = &lp };
            if (engine_step(e, &it, 1, &out, lg) != 0) {
                CHECK(0, "step: %s", engine_last_error(e));
                break;
            }
            memcpy(pl, lg, (size_t) V * 4);
            sampler_penalize(pl, V, toks[run], i, 0.7f, 0.3f, hc);
            if (tks[i % 4] > 0 || tps[i % 4] < 1) {
                agree += out == sampler_pick(pl, V, 1.0f, tks[i % 4],
                                             tps[i % 4], &before, scr);
                total++;
            }
            {
                float want;
                int32_t id[4];
                float tl[4];
                sampler_logprobs(lg, V, out, 4, &want, id, tl);
                lp_ok &= fabs(lp.logprob - want) < 1e-4 && lp.n_top == 4
                         && lp.top_id[0] == id[0];
            }
            toks[run][i] = tok = out;
        }
        engine_kv_release(e, 1);
    }
    CHECK(memcmp(toks[0], toks[1], sizeof(toks[0])) == 0,
          "seeded sampling with every rule does not replay");
    CHECK(agree >= total - 1, "engine: %d of %d cut draws as sampler.c",
          agree, total);
    CHECK(lp_ok, "engine: logprobs differ from sampler_logprobs");
    CHECK(engine_allocs_after_start(e) == 0, "allocations after start");
    printf("engine sampling (stories260K, penalties, top_k, top_p, "
           "logprobs): replays, %d/%d cut draws as sampler.c\n", agree,
           total);
    engine_destroy(e);
    free(lg); free(pl); free(scr); free(hc);
}

int
main(void)
{
    const char *dir = unit_stories_dir();
    char err[512];
    int n_dev = 0;
    model_t m;

    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        SKIP("no CUDA device");
        return unit_report("test_cuda_sample");
    }
    test_kernel(512);
    test_kernel(32000);
    test_kernel(151936);
    if (dir == NULL) {
        SKIP("stories260K not built (make models)");
    } else if (model_load(dir, &m, err, sizeof(err)) != 0) {
        CHECK(0, "model_load: %s", err);
    } else {
        test_engine(&m);
    }
    return unit_report("test_cuda_sample");
}
