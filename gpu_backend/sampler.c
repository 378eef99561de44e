/*
 * sampler.c - greedy, temperature and nucleus (top-p) sampling.
 */

#include <math.h>
#include <stdlib.h>

#include "sampler.h"

uint64_t
sampler_next(uint64_t *state)
{
    /* splitmix64: a Weyl sequence through a strong mixer; no bad seeds */
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float
sampler_uniform(uint64_t *state)
{
    return (float) (sampler_next(state) >> 40) * (1.0f / 16777216.0f);
}

int
sampler_argmax(const float *logits, int n)
{
    int best = 0, i;

    for (i = 1; i < n; i++) {
        if (logits[i] > logits[best]) {
            best = i;
        }
    }
    return best;
}

/*
 * Max-heap on (p, then lower id): a total order, so the result does not
 * depend on the order candidates were found in.  A heap, not qsort(),
 * because glibc's qsort may allocate and the engine allocates nothing
 * after start; popping also stops as soon as the nucleus is complete.
 */
static int
cand_before(const sampler_cand_t *a, const sampler_cand_t *b)
{
    return a->p > b->p || (a->p == b->p && a->id < b->id);
}

static void
heap_sift_down(sampler_cand_t *h, int m, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, top = i;
        sampler_cand_t tmp;

        if (l < m && cand_before(&h[l], &h[top])) {
            top = l;
        }
        if (r < m && cand_before(&h[r], &h[top])) {
            top = r;
        }
        if (top == i) {
            return;
        }
        tmp = h[i];
        h[i] = h[top];
        h[top] = tmp;
        i = top;
    }
}

int
sampler_sample(const float *logits, int n, float temperature, float top_p,
    uint64_t *rng, sampler_cand_t *scratch)
{
    float max, sum = 0.0f, cum, r, inv_t, cutoff, target;
    int i, m, kept, best;

    if (!(temperature > 0.0f) || n <= 1) {
        return sampler_argmax(logits, n);
    }

    /* unnormalised probabilities: exp((l - max) / T) */
    best = sampler_argmax(logits, n);
    max = logits[best];
    inv_t = 1.0f / temperature;
    for (i = 0; i < n; i++) {
        scratch[i].p = expf((logits[i] - max) * inv_t);
        scratch[i].id = i;
        sum += scratch[i].p;
    }
    r = sampler_uniform(rng);

    if (!(top_p < 1.0f)) {
        r *= sum;
        cum = 0.0f;
        for (i = 0; i < n; i++) {
            cum += scratch[i].p;
            if (r < cum) {
                return i;
            }
        }
        return best;                            /* rounding at the end */
    }

    /*
     * Tokens below (1 - top_p) / (n - 1) of the mass together hold less
     * than 1 - top_p, so the nucleus never reaches them: sort only the
     * tokens above that cutoff.  The argument needs at least one token
     * kept, so the most likely one always is.
     */
    if (top_p < 0.0f) {
        top_p = 0.0f;
    }
    cutoff = (1.0f - top_p) / (float) (n - 1) * sum;
    for (i = 0, m = 0; i < n; i++) {
        if (scratch[i].p >= cutoff || i == best) {
            scratch[m++] = scratch[i];
        }
    }
    /* pop the most likely first; popped ones collect at the end, so
     * scratch[m - 1], scratch[m - 2], ... is in descending order */
    for (i = m / 2 - 1; i >= 0; i--) {
        heap_sift_down(scratch, m, i);
    }
    target = top_p * sum;
    cum = 0.0f;
    kept = 0;
    while (kept < m) {
        sampler_cand_t top = scratch[0];
        int size = m - kept;

        scratch[0] = scratch[size - 1];
        scratch[size - 1] = top;
        heap_sift_down(scratch, size - 1, 0);
        kept++;
        cum += top.p;
        if (cum >= target) {
            break;
        }
    }

    r *= cum;
    cum = 0.0f;
    for (i = 0; i < kept; i++) {
        cum += scratch[m - 1 - i].p;
        if (r < cum) {
            return scratch[m - 1 - i].id;
        }
    }
    return scratch[m - 1].id;
}
