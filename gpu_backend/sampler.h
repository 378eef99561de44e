/*
 * sampler.h - pick the next token from a row of logits.
 *
 * Randomness comes from a per-sequence uint64 state (splitmix64), so a
 * request with a seed replays exactly: same seed, same logits, same
 * tokens.  Any state value is valid, 0 included.
 */

#ifndef GPU_SAMPLER_H
#define GPU_SAMPLER_H

#include <stdint.h>

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
 * temperature <= 0: greedy.  Otherwise softmax(logits / temperature),
 * cut to the nucleus (the smallest set of most likely tokens whose
 * probabilities reach top_p; top_p >= 1: no cut), and draw from it with
 * one step of *rng.  logits are not modified.
 */
int sampler_sample(const float *logits, int n, float temperature,
    float top_p, uint64_t *rng, sampler_cand_t *scratch);

#endif /* GPU_SAMPLER_H */
