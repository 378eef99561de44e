/*
 * test_sampler.c - greedy ties, seeded replay, the distribution drawn
 * from, and the nucleus cut against a naive full sort.
 */

#include <stdint.h>

#include "unit.h"
#include "sampler.h"

/* the obvious nucleus sampler: sort everything, cut, draw with u */
static int
naive_top_p(const float *logits, int n, float temp, float top_p, float u)
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
    for (i = 0; i < n; i++) {
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
    return unit_report("test_sampler");
}
