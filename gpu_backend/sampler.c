/*
 * sampler.c - greedy, temperature, top-k and nucleus (top-p) sampling,
 * presence and frequency penalties, log-probabilities.
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

/* pop the heap's top into the sorted tail: h[size - 1] */
static void
heap_pop(sampler_cand_t *h, int size)
{
    sampler_cand_t top = h[0];

    h[0] = h[size - 1];
    h[size - 1] = top;
    heap_sift_down(h, size - 1, 0);
}

void
sampler_penalize(float *logits, int n, const int32_t *gen, int n_gen,
    float presence, float frequency, uint16_t *counts)
{
    int i;

    (void) n;
    for (i = 0; i < n_gen; i++) {
        if (counts[gen[i]] < SAMPLER_COUNT_MAX) {
            counts[gen[i]]++;
        }
    }
    for (i = 0; i < n_gen; i++) {
        int32_t t = gen[i];

        if (counts[t] != 0) {
            /* one fused step: the device computes the same value */
            logits[t] -= fmaf(frequency, (float) counts[t], presence);
            counts[t] = 0;
        }
    }
}

int
sampler_pick(const float *logits, int n, float temperature, int top_k,
    float top_p, uint64_t *rng, sampler_cand_t *scratch)
{
    float max, sum = 0.0f, cum, r, inv_t, cutoff, target;
    int i, m, kept, best, cut_k;

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
    cut_k = top_k > 0 && top_k < n;

    if (!cut_k && !(top_p < 1.0f)) {
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

    if (top_p < 0.0f) {
        top_p = 0.0f;
    }

    /*
     * Without top_k: tokens below (1 - top_p) / (n - 1) of the mass
     * together hold less than 1 - top_p, so the nucleus never reaches
     * them: sort only the tokens above that cutoff.  The argument needs
     * at least one token kept, so the most likely one always is.
     */
    m = n;
    if (!cut_k) {
        cutoff = (1.0f - top_p) / (float) (n - 1) * sum;
        for (i = 0, m = 0; i < n; i++) {
            if (scratch[i].p >= cutoff || i == best) {
                scratch[m++] = scratch[i];
            }
        }
    }

    /* pop the most likely first; popped ones collect at the end, so
     * scratch[m - 1], scratch[m - 2], ... is in descending order */
    for (i = m / 2 - 1; i >= 0; i--) {
        heap_sift_down(scratch, m, i);
    }

    if (cut_k) {
        /* the top_k, and the nucleus of their mass */
        sum = 0.0f;
        for (i = 0; i < top_k; i++) {
            heap_pop(scratch, m - i);
            sum += scratch[m - 1 - i].p;
        }
        target = top_p * sum;
        cum = 0.0f;
        for (kept = 0; kept < top_k; ) {
            cum += scratch[m - 1 - kept].p;
            kept++;
            if (cum >= target) {
                break;
            }
        }

    } else {
        target = top_p * sum;
        cum = 0.0f;
        kept = 0;
        while (kept < m) {
            heap_pop(scratch, m - kept);
            cum += scratch[m - 1 - kept].p;
            kept++;
            if (cum >= target) {
                break;
            }
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

int
sampler_sample(const float *logits, int n, float temperature, float top_p,
    uint64_t *rng, sampler_cand_t *scratch)
{
    return sampler_pick(logits, n, temperature, 0, top_p, rng, scratch);
}

void
sampler_logprobs(const float *logits, int n, int chosen, int k,
    float *chosen_lp, int32_t *top_id, float *top_lp)
{
    float max = logits[sampler_argmax(logits, n)], lse;
    double sum = 0.0;
    int i, j, have = 0;

    for (i = 0; i < n; i++) {
        sum += exp((double) logits[i] - max);
    }
    lse = max + (float) log(sum);
    *chosen_lp = logits[chosen] - lse;

    /* the k largest by insertion: k is small (<= 20) */
    k = k < n ? k : n;
    for (i = 0; i < n && k > 0; i++) {
        float v = logits[i];

        if (have == k && !(v > top_lp[k - 1])) {
            continue;                   /* ties keep the lower id */
        }
        j = have < k ? have++ : k - 1;
        for ( ; j > 0 && v > top_lp[j - 1]; j--) {
            top_lp[j] = top_lp[j - 1];
            top_id[j] = top_id[j - 1];
        }
        top_lp[j] = v;
        top_id[j] = i;
    }
    for (j = 0; j < have; j++) {
        top_lp[j] -= lse;
    }
}
