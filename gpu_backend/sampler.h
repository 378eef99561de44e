/*
 * sampler.h - pick the next token from a row of logits.
 *
 * Randomness comes from a per-sequence uint64 state (splitmix64), so a
 * request with a seed replays exactly: same seed, same logits, same
 * tokens.  Any state value is valid, 0 included.
 *
 * The order of a request's rules (OpenAI's fields, vLLM's order):
 * penalties on the logits, then temperature, top_k, top_p, the draw.
 * Log-probabilities are not affected by any of them: they are the
 * model's own log_softmax(logits) (sampler_logprobs()).
 *
 * This file is the reference: the CUDA engine's sample_cuda.cu follows
 * it rule for rule, so that a seed gives the same tokens on both
 * engines (but for float rounding at an interval's edge).
 */

#ifndef GPU_SAMPLER_H
#define GPU_SAMPLER_H

#include <stdint.h>

/* penalty counts saturate here (a uint16 per token on the device) */
#define SAMPLER_COUNT_MAX  65535

/* scratch for one call: vocab_size entries */
typedef struct {
    float    p;
    int32_t  id;
} sampler_cand_t;

/* next 64 random bits; advances *state */
uint64_t sampler_next(uint64_t *state);
/* uniform in [0, 1) with 24 bits */
float sampler_uniform(uint64_t *state);

/* index of the largest logit; ties go to the lowest id */
int sampler_argmax(const float *logits, int n);

/*
 * OpenAI's presence and frequency penalties, in place: every token that
 * occurs c > 0 times in gen[0 .. n_gen) (c saturating at
 * SAMPLER_COUNT_MAX) gets logits[t] -= fmaf(frequency, c, presence).
 * counts: n entries, all 0, left all 0.
 */
void sampler_penalize(float *logits, int n, const int32_t *gen, int n_gen,
    float presence, float frequency, uint16_t *counts);

/*
 * temperature <= 0: greedy.  Otherwise p_i = exp((l_i - max) / T) and:
 *
 *   no cut (top_k <= 0 or >= n, and top_p >= 1): the token where
 *   u * sum(p) falls, counting p in id order;
 *
 *   a cut: tokens ordered by p, most likely first (ties: lower id
 *   first); the first top_k of them (all with top_k off); of those the
 *   shortest prefix whose mass reaches top_p times theirs (the
 *   nucleus); the token where u times the nucleus' mass falls, counting
 *   in that order.
 *
 * u is one sampler_uniform() step of *rng.  logits are not modified.
 */
int sampler_pick(const float *logits, int n, float temperature, int top_k,
    float top_p, uint64_t *rng, sampler_cand_t *scratch);

/* sampler_pick() without top_k */
int sampler_sample(const float *logits, int n, float temperature,
    float top_p, uint64_t *rng, sampler_cand_t *scratch);

/*
 * log_softmax(logits): the value of token `chosen` into *chosen_lp and
 * the k (<= n) largest, most likely first (ties: lower id first), into
 * top_id[] and top_lp[].
 */
void sampler_logprobs(const float *logits, int n, int chosen, int k,
    float *chosen_lp, int32_t *top_id, float *top_lp);

#endif /* GPU_SAMPLER_H */
