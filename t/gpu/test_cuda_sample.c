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
 *   - rows: 1 to 33 rows over vocabularies that are and are not a
 *     multiple of the device's chunks (the first kernel's blocks), with
 *     ties for the largest planted within and across chunks, penalties
 *     that move the argmax to another chunk and logprobs whose largest
 *     tie across chunks: greedy and the top ids exactly sampler.c's,
 *     draws without a cut as the id-order draw summed in double, top_p
 *     draws in the kept set;
 *   - timing: µs per ks_sample() call at vocab 151936, 1 and 8 rows,
 *     each rule, replayed from a CUDA graph (which must give the eager
 *     calls' tokens);
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
            void *scr_d = dput(NULL, ks_sample_scratch_bytes(R, V));
            ks_sample(0, dout, dlp, b[9], R, V, st, rw, b[10], scr_d);
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
            cudaFree(scr_d);
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

/* sampler.c's no-cut draw with the sums in double: the id where u times
 * the mass falls, counting in id order */
static int
draw_ref(const float *l, int V, float temp, float u)
{
    float mx = l[sampler_argmax(l, V)], inv_t = 1.0f / temp;
    double sum = 0, cum = 0, x;
    int i;

    for (i = 0; i < V; i++) {
        sum += expf((l[i] - mx) * inv_t);
    }
    x = u * sum;
    for (i = 0; i < V; i++) {
        cum += expf((l[i] - mx) * inv_t);
        if (x < cum) {
            return i;
        }
    }
    return sampler_argmax(l, V);
}

/* device inputs of n rows (freed with rows_free) */
typedef struct {
    kc_step_t   st;
    ks_rows_t   rw;
    void       *b[9];
} drows_t;

static drows_t
rows_put(int n, const float *temp, const float *tp, const float *unif,
    const int32_t *tk, const float *pr, const float *fr, const int32_t *crow,
    const int32_t *nlp)
{
    drows_t d;
    int32_t *row_tok = malloc((size_t) n * 4);
    int r;

    for (r = 0; r < n; r++) {
        row_tok[r] = r;
    }
    memset(&d, 0, sizeof(d));
    d.st.row_tok = d.b[0] = dput(row_tok, (size_t) n * 4);
    d.st.temperature = d.b[1] = dput(temp, (size_t) n * 4);
    d.st.top_p = d.b[2] = dput(tp, (size_t) n * 4);
    d.st.uniform = d.b[3] = dput(unif, (size_t) n * 4);
    d.rw.top_k = d.b[4] = dput(tk, (size_t) n * 4);
    d.rw.presence = d.b[5] = dput(pr, (size_t) n * 4);
    d.rw.frequency = d.b[6] = dput(fr, (size_t) n * 4);
    d.rw.count_row = d.b[7] = dput(crow, (size_t) n * 4);
    d.rw.n_logprobs = d.b[8] = dput(nlp, (size_t) n * 4);
    free(row_tok);
    return d;
}

static void
rows_free(drows_t *d)
{
    int i;

    for (i = 0; i < 9; i++) {
        cudaFree(d->b[i]);
    }
}

/*
 * n rows of V: greedy with planted ties (within a chunk of the device's
 * first kernel, across two, at the row's ends), greedy with penalties
 * that push the largest below a token elsewhere, draws without a cut,
 * top_p with penalties; logprobs with ties among the largest.
 */
static void
test_rows(int V, int n, int iters)
{
    float *l = malloc((size_t) n * V * 4), *pl = malloc((size_t) V * 4);
    float *temp = malloc(n * 4), *tp = malloc(n * 4), *unif = malloc(n * 4);
    float *pr = malloc(n * 4), *fr = malloc(n * 4);
    int32_t *tk = malloc(n * 4), *crow = malloc(n * 4), *nlp = malloc(n * 4);
    int32_t *out = malloc(n * 4), *gens = malloc((size_t) n * 24 * 4);
    uint16_t *hcnt = calloc(V, 2);
    uint64_t *st0 = malloc(n * 8);
    engine_logprobs_t *lp = malloc(n * sizeof(*lp));
    sampler_cand_t *scr = malloc((size_t) V * sizeof(*scr));
    int iter, r, i, greedy_ok = 1, lp_ok = 1, draw_same = 0, draw_total = 0,
        cut_same = 0, cut_total = 0, big_in = 0, big_total = 0, n_gen, rank,
        kept;
    double lp_err = 0;

    for (iter = 0; iter < iters; iter++) {
        void *dl, *dcnt, *dgen, *dout, *dlp, *dscr;
        drows_t d;

        n_gen = 1 + iter % 24;
        for (r = 0; r < n; r++) {
            float *row = l + (size_t) r * V;
            int kind = (r + iter) % 4, a, b, k;
            int32_t *g = gens + (size_t) r * 24;
            uint64_t st;

            /* draws: flat rows (kind 2) and peaked ones (3) */
            for (i = 0; i < V; i++) {
                row[i] = nrand() * (kind == 2 ? 0.5f : 2.5f);
            }
            for (i = 0; i < n_gen; i++) {
                g[i] = (int32_t) (sampler_next(&rng_state) % (uint64_t) V);
            }
            /* greedy: ties for the largest in one of several places, and
             * for the next largest, for logprobs */
            switch ((r + iter) % 5) {
            case 0: a = 1023; b = 1024; break;      /* chunk boundary */
            case 1: a = 0; b = V - 1; break;        /* the ends */
            case 2: a = V / 2; b = V / 2 + 3; break;
            case 3: a = V - 2; b = V - 1; break;
            default:
                a = (int) (sampler_next(&rng_state) % (uint64_t) V);
                b = (int) (sampler_next(&rng_state) % (uint64_t) V);
            }
            a = a < V ? a : V - 1;
            b = b < V ? b : V - 1;
            if (kind < 2) {
                for (k = 0; k < 4; k++) {
                    row[sampler_next(&rng_state) % (uint64_t) V] = 30.0f;
                }
                row[a] = row[b] = 40.0f;
                g[0] = a < b ? a : b;       /* penalised: b, or elsewhere */
            }
            temp[r] = kind >= 2 ? (kind == 2 ? 1.0f : 0.7f) : 0.0f;
            tp[r] = kind == 3 ? 0.9f : 1.0f;
            tk[r] = 0;
            pr[r] = kind == 1 || kind == 3 ? 30.0f : 0.0f;
            fr[r] = kind == 1 || kind == 3 ? 1.0f : 0.0f;
            crow[r] = pr[r] != 0 ? r : -1;
            nlp[r] = kind == 0 ? 8 : kind == 1 ? 3 : kind == 2 ? 0 : -1;
            st0[r] = st = sampler_next(&rng_state);
            unif[r] = temp[r] > 0 ? sampler_uniform(&st) : 0;
        }
        d = rows_put(n, temp, tp, unif, tk, pr, fr, crow, nlp);
        dl = dput(l, (size_t) n * V * 4);
        dcnt = dput(NULL, (size_t) n * V * 2);
        dgen = dput(gens, (size_t) n * 24 * 4);
        dout = dput(NULL, (size_t) n * 4);
        dlp = dput(NULL, (size_t) n * sizeof(*lp));
        dscr = dput(NULL, ks_sample_scratch_bytes(n, V));
        for (r = 0; r < n; r++) {
            if (crow[r] >= 0) {
                ks_counts_load(0, (uint16_t *) dcnt + (size_t) r * V, V,
                               (int32_t *) dgen + (size_t) r * 24, n_gen);
            }
        }
        ks_sample(0, dout, dlp, dl, n, V, d.st, d.rw, dcnt, dscr);
        if (cudaDeviceSynchronize() != cudaSuccess
            || cudaGetLastError() != cudaSuccess)
        {
            CHECK(0, "ks_sample vocab %d rows %d failed", V, n);
            return;
        }
        cudaMemcpy(out, dout, (size_t) n * 4, cudaMemcpyDeviceToHost);
        cudaMemcpy(lp, dlp, (size_t) n * sizeof(*lp), cudaMemcpyDeviceToHost);
        for (r = 0; r < n; r++) {
            const float *row = l + (size_t) r * V;
            uint64_t st = st0[r];
            int want;

            memcpy(pl, row, (size_t) V * 4);
            if (crow[r] >= 0) {
                sampler_penalize(pl, V, gens + (size_t) r * 24, n_gen, pr[r],
                                 fr[r], hcnt);
            }
            if (temp[r] <= 0) {
                want = sampler_pick(pl, V, temp[r], tk[r], tp[r], &st, scr);
                if (out[r] != want) {
                    fprintf(stderr, "vocab %d rows %d row %d: greedy %d, "
                            "sampler.c %d\n", V, n, r, out[r], want);
                }
                greedy_ok &= out[r] == want;
            } else if (tp[r] >= 1) {
                draw_same += out[r] == draw_ref(pl, V, temp[r], unif[r]);
                draw_total++;
            } else {
                /* every draw in the kept set (sums in double; a margin for
                 * f32's); below KS_CAND_MAX sampler.c's own token but for
                 * its f32 running sums, whose drift over a large
                 * vocabulary moves the nucleus' edge and u * its mass */
                kept = kept_set(pl, V, temp[r], tk[r], tp[r], out[r], &rank);
                big_in += rank < kept + kept / 1000 + 2;
                big_total++;
                if (kept <= KS_CAND_MAX * 9 / 10) {
                    want = sampler_pick(pl, V, temp[r], tk[r], tp[r], &st,
                                        scr);
                    cut_same += out[r] == want;
                    cut_total++;
                }
            }
            if (nlp[r] >= 0) {
                float want_lp, top_lp[20];
                int32_t top_id[20];
                int k = nlp[r] < V ? nlp[r] : V;

                sampler_logprobs(row, V, out[r], nlp[r], &want_lp, top_id,
                                 top_lp);
                lp_ok &= lp[r].n_top == k;
                lp_err = fmax(lp_err, fabs(lp[r].logprob - want_lp));
                for (i = 0; i < k && i < lp[r].n_top; i++) {
                    lp_ok &= lp[r].top_id[i] == top_id[i];
                    lp_err = fmax(lp_err, fabs(lp[r].top_logprob[i]
                                               - top_lp[i]));
                }
            }
        }
        rows_free(&d);
        cudaFree(dl);
        cudaFree(dcnt);
        cudaFree(dgen);
        cudaFree(dout);
        cudaFree(dlp);
        cudaFree(dscr);
    }
    CHECK(greedy_ok, "vocab %d rows %d: greedy differs from sampler.c", V, n);
    CHECK(lp_ok && lp_err < 1e-4, "vocab %d rows %d: logprobs differ (max "
          "%g)", V, n, lp_err);
    /* rounding at an interval's edge aside: a draw that went wrong
     * would agree about never */
    CHECK(draw_same * 10 >= draw_total * 9, "vocab %d rows %d: %d of %d "
          "draws as the f64 id-order draw", V, n, draw_same, draw_total);
    CHECK(cut_same * 5 >= cut_total * 4, "vocab %d rows %d: %d of %d top_p "
          "draws as sampler.c", V, n, cut_same, cut_total);
    CHECK(big_in == big_total, "vocab %d rows %d: %d of %d top_p draws in "
          "the kept set", V, n, big_in, big_total);
    printf("device sampler vocab %6d rows %2d: greedy %s, logprobs max err "
           "%.2g, draws %d/%d as the f64 reference, top_p %d/%d in the "
           "kept set, %d/%d of those under %d as sampler.c\n", V, n,
           greedy_ok ? "ok" : "WRONG", lp_err, draw_same, draw_total,
           big_in, big_total, cut_same, cut_total, KS_CAND_MAX * 9 / 10);
    free(l); free(pl); free(temp); free(tp); free(unif); free(pr); free(fr);
    free(tk); free(crow); free(nlp); free(out); free(hcnt); free(st0);
    free(lp); free(scr); free(gens);
}

/*
 * µs per ks_sample() call for n rows of V, one rule for every row,
 * replayed from a graph of 20 calls (as a decode step runs it); the
 * replay must give the eager call's tokens.
 */
static void
time_rule(int V, int n, const char *name, float scale, float t, float p,
    int k, int nl, int pen)
{
    enum { CALLS = 20, REPLAYS = 10 };
    float *l = malloc((size_t) n * V * 4), *temp = malloc(n * 4),
          *tp = malloc(n * 4), *unif = malloc(n * 4), *pr = malloc(n * 4),
          *fr = malloc(n * 4), ms = 0;
    int32_t *tk = malloc(n * 4), *crow = malloc(n * 4), *nlp = malloc(n * 4),
            *o1 = malloc(n * 4), *o2 = malloc(n * 4);
    void *dl, *dcnt, *dout, *dlp, *dscr;
    cudaStream_t s;
    cudaGraph_t g;
    cudaGraphExec_t ge;
    cudaEvent_t e0, e1;
    drows_t d;
    int i, r, ok;

    for (i = 0; i < n * V; i++) {
        l[i] = nrand() * scale;
    }
    for (r = 0; r < n; r++) {
        temp[r] = t;
        tp[r] = p;
        tk[r] = k;
        nlp[r] = nl;
        pr[r] = fr[r] = pen ? 0.5f : 0.0f;
        crow[r] = pen ? r : -1;
        unif[r] = sampler_uniform(&rng_state);
    }
    d = rows_put(n, temp, tp, unif, tk, pr, fr, crow, nlp);
    dl = dput(l, (size_t) n * V * 4);
    dcnt = dput(NULL, (size_t) n * V * 2);
    dout = dput(NULL, (size_t) n * 4);
    dlp = dput(NULL, (size_t) n * sizeof(engine_logprobs_t));
    dscr = dput(NULL, ks_sample_scratch_bytes(n, V));
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    ks_sample(s, dout, dlp, dl, n, V, d.st, d.rw, dcnt, dscr);
    cudaStreamSynchronize(s);
    cudaMemcpy(o1, dout, (size_t) n * 4, cudaMemcpyDeviceToHost);
    cudaMemset(dout, 0xff, (size_t) n * 4);
    ok = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal)
         == cudaSuccess;
    for (i = 0; ok && i < CALLS; i++) {
        ks_sample(s, dout, dlp, dl, n, V, d.st, d.rw, dcnt, dscr);
    }
    ok = cudaStreamEndCapture(s, &g) == cudaSuccess && ok
         && cudaGraphInstantiate(&ge, g, 0) == cudaSuccess;
    CHECK(ok, "ks_sample (%s) does not capture into a graph", name);
    if (ok) {
        cudaGraphLaunch(ge, s);                 /* warm up */
        cudaEventRecord(e0, s);
        for (i = 0; i < REPLAYS; i++) {
            cudaGraphLaunch(ge, s);
        }
        cudaEventRecord(e1, s);
        ok = cudaStreamSynchronize(s) == cudaSuccess;
        cudaEventElapsedTime(&ms, e0, e1);
        cudaMemcpy(o2, dout, (size_t) n * 4, cudaMemcpyDeviceToHost);
        for (r = 0; r < n && ok; r++) {
            ok = pen || o1[r] == o2[r];         /* penalties move on */
        }
        CHECK(ok, "ks_sample (%s, %d rows): the graph's tokens are not the "
              "eager call's", name, n);
        printf("timing vocab %d rows %d %-24s %7.2f us a call (graph)\n", V,
               n, name, ms * 1000.0f / (CALLS * REPLAYS));
        cudaGraphExecDestroy(ge);
        cudaGraphDestroy(g);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaStreamDestroy(s);
    rows_free(&d);
    cudaFree(dl); cudaFree(dcnt); cudaFree(dout); cudaFree(dlp);
    cudaFree(dscr);
    free(l); free(temp); free(tp); free(unif); free(pr); free(fr); free(tk);
    free(crow); free(nlp); free(o1); free(o2);
}

static void
time_sample(int V)
{
    int n;

    /* logits of sd 2.5 ("flat": top_p 0.9's nucleus is ~25,000 tokens,
     * more than the device sorts) and 7.5 ("peaked": ~500) */
    for (n = 1; n <= 8; n += 7) {
        time_rule(V, n, "greedy", 2.5f, 0, 1, 0, -1, 0);
        time_rule(V, n, "greedy, penalties", 2.5f, 0, 1, 0, -1, 1);
        time_rule(V, n, "greedy, 5 logprobs", 2.5f, 0, 1, 0, 5, 0);
        time_rule(V, n, "T 1", 2.5f, 1, 1, 0, -1, 0);
        time_rule(V, n, "T 1, top_p 0.9, flat", 2.5f, 1, 0.9f, 0, -1, 0);
        time_rule(V, n, "T 1, top_k 50, flat", 2.5f, 1, 1, 50, -1, 0);
        time_rule(V, n, "T 1, top_p 0.9, peaked", 7.5f, 1, 0.9f, 0, -1, 0);
        time_rule(V, n, "T 1, top_k 50, peaked", 7.5f, 1, 1, 50, -1, 0);
    }
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
    {
        static const int vs[] = { 3, 1000, 1025, 32000, 151936 };
        static const int ns[] = { 1, 2, 3, 5, 8, 33 };
        size_t a, b;

        for (a = 0; a < sizeof(vs) / sizeof(vs[0]); a++) {
            for (b = 0; b < sizeof(ns) / sizeof(ns[0]); b++) {
                test_rows(vs[a], ns[b], vs[a] > 100000 ? 3 : 6);
            }
        }
    }
    time_sample(151936);
    if (dir == NULL) {
        SKIP("stories260K not built (make models)");
    } else if (model_load(dir, &m, err, sizeof(err)) != 0) {
        CHECK(0, "model_load: %s", err);
    } else {
        test_engine(&m);
    }
    return unit_report("test_cuda_sample");
}
