/*
 * sample_cuda.h - the CUDA engine's sampler (sample_cuda.cu): the next
 * token of each logits row by sampler.h's rules, the device's counts of
 * each sequence's sampled tokens for the penalties, and logprobs.
 * kc_sample() (kernels_cuda.h) is ks_sample() with every rule off but
 * temperature and top_p, on scratch of its own.
 */

#ifndef GPU_SAMPLE_CUDA_H
#define GPU_SAMPLE_CUDA_H

#include <stdint.h>

#include <cuda_runtime_api.h>

#include "engine.h"
#include "kernels_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* candidates sorted in shared memory: a cut with more samples the
 * kept set in id order instead (same distribution, another draw) */
#define KS_CAND_MAX  4096

/* per logits row, beside kc_step_t's temperature, top_p and uniform;
 * a NULL array: that rule is off for every row */
typedef struct {
    const int32_t  *top_k;        /* [R] <= 0: off */
    const float    *presence;     /* [R] */
    const float    *frequency;    /* [R] */
    const int32_t  *count_row;    /* [R] -1: no penalties; else the row of
                                     counts: the sequence, whose sampled
                                     token the kernel then counts */
    const int32_t  *n_logprobs;   /* [R] -1: none; else alternatives */
} ks_rows_t;

/*
 * out[r]: the token of logits row r; lp[r] its logprobs when asked for.
 * counts: [rows of counts][vocab] uint16, saturating.  scratch: device
 * memory of ks_sample_scratch_bytes(R, vocab) (or more, for any R up to
 * the one it was sized for), which the call's kernels own until they end.
 */
void ks_sample(cudaStream_t s, int32_t *out, engine_logprobs_t *lp,
    const float *logits, int R, int vocab, kc_step_t st, ks_rows_t rows,
    uint16_t *counts, void *scratch);

/* the scratch ks_sample() needs for R rows of vocab logits */
size_t ks_sample_scratch_bytes(int R, int vocab);

/* counts_row = the counts of tokens[0 .. n) (device memory), n >= 0 */
void ks_counts_load(cudaStream_t s, uint16_t *counts_row, int vocab,
    const int32_t *tokens, int n);

#ifdef __cplusplus
}
#endif

#endif /* GPU_SAMPLE_CUDA_H */
