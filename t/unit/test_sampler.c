/*
 * test_sampler.c - greedy ties, seeded replay, the distribution drawn
 * from, the top_k and nucleus cuts against a naive full sort, presence
 * and frequency penalties, log-probabilities.
 */

#include <stdint.h>

#include "unit.h"
#include "sampler.h"

/* the obvious sampler: sort everything, cut to top_k (0: off), cut to
 * the nucleus of what is left, draw with u counting from the top */
static int
naive_pick(const float *logits, int n, float temp, int top_k, float top_p,
    float u)
{
    sampler_cand_t *c = malloc(n * sizeof(*c)), tmp;
    float max = logits[0], sum = 0, cum = 0;
    int i, j, kept = n;

    for (i = 1; i < n; i++) {
        max = logits[i] > max ? logits[i] : max;
    }
    for (i = 0; i < n; i++) {
        c[i].p = expf((logits[i] - max) * (1.0f / temp));
        c[i].id = i;
        sum += c[i].p;
    }
    for (i = 1; i < n; i++) {                    /* insertion sort */
        for (j = i; j > 0 && (c[j].p > c[j - 1].p
                              || (c[j].p == c[j - 1].p
                                  && c[j].id < c[j - 1].id)); j--)
        {
            tmp = c[j];
            c[j] = c[j - 1];
            c[j - 1] = tmp;
        }
    }
    if (top_k > 0 && top_k < n) {
        /* the nucleus of the top_k's own mass */
        kept = top_k;
        for (i = 0, sum = 0; i < top_k; i++) {
            sum += c[i].p;
        }
    }
    for (i = 0; i < kept; i++) {
        cum += c[i].p;
        if (cum >= top_p * sum) {
            kept = i + 1;
            break;
        }
    }
    cum = 0;
    for (i = 0; i < kept; i++) {
        cum += c[i].p;
    }
    u *= cum;
    cum = 0;
    for (i = 0; i < kept; i++) {
        cum += c[i].p;
        if (u < cum) {
            j = c[i].id;
            free(c);
            return j;
        }
    }
    j = c[0].id;
    free(c);
    return j;
}

static int
naive_top_p(const float *logits, int n, float temp, float top_p, float u)
{
    return naive_pick(logits, n, temp, 0, top_p, u);
}

/* no cut at all: the draw counts in id order */
static int
naive_any(const float *logits, int n, float temp, int top_k, float top_p,
    float u)
{
    float max = logits[0], sum = 0, cum = 0;
    int i;

    if ((top_k > 0 && top_k < n) || top_p < 1.0f) {
        return naive_pick(logits, n, temp, top_k, top_p, u);
    }
    for (i = 1; i < n; i++) {
        max = logits[i] > max ? logits[i] : max;
    }
    for (i = 0; i < n; i++) {
        sum += expf((logits[i] - max) * (1.0f / temp));
    }
    u *= sum;
    for (i = 0; i < n; i++) {
        cum += expf((logits[i] - max) * (1.0f / temp));
        if (u < cum) {
            return i;
        }
    }
    return sampler_argmax(logits, n);
}

static void
test_top_k(void)
{
    static sampler_cand_t scratch[1000];
    float logits[1000], l[4] = { 0.0f, logf(3.0f), logf(4.0f), -200.0f };
    int i, n, same, ok, counts[4] = { 0 };
    uint64_t s1 = 99;

    /* top_k 1 is greedy at any temperature, but takes a draw */
    for (i = 0, ok = 0; i < 1000; i++) {
        ok += sampler_pick(l, 4, 1.5f, 1, 1.0f, &s1, scratch) == 2;
    }
    CHECK(ok == 1000, "top_k 1: %d of 1000 greedy", ok);

    /* top_k 2 of p = 1/8, 3/8, 4/8: ids 2 and 1 at 4:3 */
    for (i = 0; i < 42000; i++) {
        counts[sampler_pick(l, 4, 1.0f, 2, 1.0f, &s1, scratch)]++;
    }
    CHECK(counts[0] == 0 && counts[3] == 0
          && fabs(counts[2] / 42000.0 - 4.0 / 7) < 0.01,
          "top_k 2: %d %d %d %d", counts[0], counts[1], counts[2],
          counts[3]);

    /* top_k 2 and top_p 0.5: the nucleus of 4/7 + 3/7 at 0.5 is id 2 */
    for (i = 0, ok = 0; i < 1000; i++) {
        ok += sampler_pick(l, 4, 1.0f, 2, 0.5f, &s1, scratch) == 2;
    }
    CHECK(ok == 1000, "top_k 2, top_p 0.5: %d of 1000 the top", ok);

    /* top_k 0, -1 and >= n are off: the id-order draw of sampler_sample */
    for (n = 0, same = 0; n < 300; n++) {
        uint64_t a = n, b = n, c = n, d = n;
        int x = sampler_sample(l, 4, 1.0f, 1.0f, &a, scratch);
        same += x == sampler_pick(l, 4, 1.0f, 0, 1.0f, &b, scratch)
                && x == sampler_pick(l, 4, 1.0f, -1, 1.0f, &c, scratch)
                && x == sampler_pick(l, 4, 1.0f, 4, 1.0f, &d, scratch);
    }
    CHECK(same == 300, "top_k off differs %d times", 300 - same);

    /* ties at the top_k edge: the lower ids are kept */
    {
        float e[5] = { 1, 2, 2, 2, 0 };
        for (i = 0, ok = 0; i < 1000; i++) {
            int t = sampler_pick(e, 5, 1.0f, 2, 1.0f, &s1, scratch);
            ok += t == 1 || t == 2;
        }
        CHECK(ok == 1000, "top_k ties: %d of 1000 from ids 1, 2", ok);
    }

    /* top_k and top_p against the naive full sort, same draw */
    same = 0;
    for (n = 0; n < 400; n++) {
        uint64_t a = 5000 + n, b = a;
        int v = 2 + n % 900, k = 1 + (n * 7) % 60, x, y;
        float tp = n % 3 ? 0.05f + 0.95f * (float) (n % 23) / 22.0f : 1.0f;
        float temp = 0.3f + (n % 7) * 0.3f;
        for (i = 0; i < v; i++) {
            logits[i] = (float) sin(i * 1.3 + n) * 4.0f
                        + (i % 11 == 0 ? 2.5f : 0.0f);
        }
        x = sampler_pick(logits, v, temp, k, tp, &a, scratch);
        y = naive_any(logits, v, temp, k, tp, sampler_uniform(&b));
        same += x == y;
        if (x != y) {
            fprintf(stderr, "top_k case %d: %d vs naive %d\n", n, x, y);
        }
    }
    CHECK(same == 400, "top_k differs from the naive one %d times",
          400 - same);
    printf("sampler: top_k: ok\n");
}

static void
test_penalties(void)
{
    static uint16_t counts[70000];
    float l[6] = { 1, 2, 3, 4, 5, 6 }, want[6];
    int32_t gen[8] = { 5, 5, 2, 5, 0, 2, 5, 5 };
    static int32_t many[70000];
    int i, zero = 1;

    memcpy(want, l, sizeof(l));
    /* 5 five times, 2 twice, 0 once; presence 0.5, frequency 0.25 */
    want[5] -= fmaf(0.25f, 5.0f, 0.5f);
    want[2] -= fmaf(0.25f, 2.0f, 0.5f);
    want[0] -= fmaf(0.25f, 1.0f, 0.5f);
    sampler_penalize(l, 6, gen, 8, 0.5f, 0.25f, counts);
    CHECK(memcmp(l, want, sizeof(l)) == 0, "penalties: %g %g %g %g %g %g",
          l[0], l[1], l[2], l[3], l[4], l[5]);
    for (i = 0; i < 6; i++) {
        zero &= counts[i] == 0;
    }
    CHECK(zero, "penalty counts left zeroed");

    /* negative penalties favour repeats; nothing generated: no change */
    {
        float m[3] = { 0, 0, 0 };
        int32_t g = 1;
        uint64_t s = 3;
        sampler_penalize(m, 3, &g, 1, -2.0f, -2.0f, counts);
        CHECK(m[1] == 4.0f && m[0] == 0 && m[2] == 0, "negative: %g", m[1]);
        CHECK(sampler_pick(m, 3, 0.0f, 0, 1.0f, &s, NULL) == 1,
              "a negative penalty makes the repeat the greedy token");
        sampler_penalize(m, 3, &g, 0, 2.0f, 2.0f, counts);
        CHECK(m[1] == 4.0f, "no tokens generated, no penalty");
    }

    /* counts saturate */
    for (i = 0; i < 70000; i++) {
        many[i] = 1;
    }
    {
        float m[2] = { 0, 0 };
        sampler_penalize(m, 2, many, 70000, 0.0f, 1.0f, counts);
        CHECK(m[1] == -(float) SAMPLER_COUNT_MAX && counts[1] == 0,
              "saturated: %g", m[1]);
    }
    printf("sampler: penalties: ok\n");
}

static void
test_logprobs(void)
{
    float l[7] = { 0.5f, 3.0f, -1.0f, 3.0f, 2.0f, -40.0f, 1.0f }, lp, top[7];
    int32_t id[7];
    double sum = 0, want;
    int i, ordered = 1;

    sampler_logprobs(l, 7, 4, 7, &lp, id, top);
    for (i = 0; i < 7; i++) {
        sum += exp((double) l[i]);
    }
    want = 2.0 - log(sum);
    CHECK_CLOSE(lp, want, 1e-6, "logprob of id 4");
    CHECK(id[0] == 1 && id[1] == 3 && id[2] == 4 && id[3] == 6
          && id[4] == 0 && id[5] == 2 && id[6] == 5,
          "order: %d %d %d %d %d %d %d", id[0], id[1], id[2], id[3], id[4],
          id[5], id[6]);
    for (i = 0, sum = 0; i < 7; i++) {
        sum += exp((double) top[i]);
        ordered &= i == 0 || top[i] <= top[i - 1];
        CHECK_CLOSE(top[i], l[id[i]] - (2.0 - want), 1e-6, "top logprob");
    }
    CHECK(ordered, "top logprobs in order");
    CHECK_CLOSE(sum, 1.0, 1e-6, "all the alternatives sum to 1");

    /* k 0: only the chosen one; k 2 of a tie: the lower id first */
    sampler_logprobs(l, 7, 5, 0, &lp, id, top);
    CHECK(lp < -40, "a rare token's logprob: %g", lp);
    sampler_logprobs(l, 7, 1, 2, &lp, id, top);
    CHECK(id[0] == 1 && id[1] == 3 && top[0] == top[1] && top[0] == lp,
          "tie: %d %d", id[0], id[1]);
    printf("sampler: logprobs: ok\n");
}

int
main(void)
{
    static sampler_cand_t scratch[1000];
    float logits[1000];
    uint64_t s1, s2;
    int i, n, same, diff, counts[4] = { 0 };

    /* greedy: largest, ties to the lowest id */
    {
        float l[6] = { 1, 3, 2, 3, -1, 3 };
        CHECK(sampler_argmax(l, 6) == 1, "argmax tie");
        s1 = 1;
        CHECK(sampler_sample(l, 6, 0.0f, 1.0f, &s1, scratch) == 1
              && s1 == 1, "temperature 0 is greedy and leaves the rng");
        CHECK(sampler_sample(l, 6, -1.0f, 0.5f, &s1, scratch) == 1,
              "negative temperature is greedy");
    }

    /* the generator: any seed works, same seed same stream */
    s1 = 0;
    s2 = 0;
    same = 1;
    diff = 0;
    for (i = 0; i < 1000; i++) {
        float u = sampler_uniform(&s1);
        same &= sampler_next(&s2) >> 40 == (uint64_t) (u * 16777216.0f);
        diff += !(u >= 0.0f && u < 1.0f);
    }
    CHECK(same, "uniform is next's top 24 bits");
    CHECK(diff == 0, "%d uniforms outside [0, 1)", diff);

    /* same seed, same tokens; another seed, other tokens */
    for (i = 0; i < 1000; i++) {
        logits[i] = (float) sin(i * 0.37) * 3.0f;
    }
    same = diff = 0;
    for (n = 0; n < 200; n++) {
        uint64_t a = 42 + n, b = 42 + n, c = 4242 + n;
        int x = sampler_sample(logits, 1000, 0.8f, 0.95f, &a, scratch);
        int y = sampler_sample(logits, 1000, 0.8f, 0.95f, &b, scratch);
        int z = sampler_sample(logits, 1000, 0.8f, 0.95f, &c, scratch);
        same += x == y && a == b;
        diff += x != z;
    }
    CHECK(same == 200, "same seed differed %d times", 200 - same);
    CHECK(diff > 150, "other seeds agreed %d of 200 times", 200 - diff);

    /* temperature 1 draws by softmax: p = 1/8, 3/8, 4/8, 0 */
    {
        float l[4] = { 0.0f, logf(3.0f), logf(4.0f), -200.0f };
        s1 = 7;
        for (i = 0; i < 80000; i++) {
            counts[sampler_sample(l, 4, 1.0f, 1.0f, &s1, scratch)]++;
        }
        CHECK(fabs(counts[0] / 80000.0 - 0.125) < 0.006
              && fabs(counts[1] / 80000.0 - 0.375) < 0.006
              && fabs(counts[2] / 80000.0 - 0.5) < 0.006 && counts[3] == 0,
              "frequencies %d %d %d %d", counts[0], counts[1], counts[2],
              counts[3]);

        /* top_p 0.6: 0.5 is not enough, 0.5 + 0.375 is: ids 2 and 1 */
        memset(counts, 0, sizeof(counts));
        for (i = 0; i < 40000; i++) {
            counts[sampler_sample(l, 4, 1.0f, 0.6f, &s1, scratch)]++;
        }
        CHECK(counts[0] == 0 && counts[3] == 0
              && fabs(counts[2] / 40000.0 - 4.0 / 7) < 0.01,
              "top_p 0.6: %d %d %d %d", counts[0], counts[1], counts[2],
              counts[3]);
        memset(counts, 0, sizeof(counts));
        for (i = 0; i < 1000; i++) {
            counts[sampler_sample(l, 4, 1.0f, 0.3f, &s1, scratch)]++;
        }
        CHECK(counts[2] == 1000, "top_p 0.3 keeps the top token only");
        for (i = 0, n = 0; i < 100; i++) {
            n += sampler_sample(l, 4, 1.0f, 0.0f, &s1, scratch) == 2;
        }
        CHECK(n == 100, "top_p 0 keeps the top token only");
        /* all equal and top_p 0: one token is kept, the lowest id */
        {
            float e[3] = { 1, 1, 1 };
            CHECK(sampler_sample(e, 3, 1.0f, 0.0f, &s1, scratch) == 0,
                  "flat, top_p 0");
        }
    }

    /* the nucleus against a naive full sort, same uniform draw */
    same = 0;
    for (n = 0; n < 300; n++) {
        uint64_t a = 1000 + n, b = a;
        int v = 2 + n % 700, x, y;
        float tp = 0.05f + 0.9f * (float) (n % 19) / 18.0f;
        float temp = 0.3f + (n % 7) * 0.3f;
        for (i = 0; i < v; i++) {
            logits[i] = (float) sin(i * 1.7 + n) * 4.0f
                        + (i % 13 == 0 ? 3.0f : 0.0f);
        }
        x = sampler_sample(logits, v, temp, tp, &a, scratch);
        y = naive_top_p(logits, v, temp, tp, sampler_uniform(&b));
        same += x == y;
        if (x != y) {
            fprintf(stderr, "case %d: %d vs naive %d\n", n, x, y);
        }
    }
    CHECK(same == 300, "nucleus differs from the naive one %d times",
          300 - same);
    printf("sampler: greedy, seeds, distribution, nucleus: ok\n");
    test_top_k();
    test_penalties();
    test_logprobs();
    return unit_report("test_sampler");
}
