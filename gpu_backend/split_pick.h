/*
 * split_pick.h - the tuner's rule for choosing among the timed candidates
 * of one product shape (gemm_cuda.cu times them on the device; the rule
 * itself is plain C, so that the unit tests check it without a GPU).
 */

#ifndef GPU_SPLIT_PICK_H
#define GPU_SPLIT_PICK_H

#ifdef __cplusplus
extern "C" {
#endif

/* a timed candidate: its kernel (gemm_cuda's GEMV_WON_*), how many warps
 * share a row (split; cuBLAS counts as 1) and its time */
typedef struct {
    int    kern, split;
    float  ms;
} split_cand_t;

/*
 * The index of the pick among t[0 .. n - 1], -1 if n is 0: the fewest
 * split warps whose fastest candidate times within margin of the
 * fastest of all (margin × its time <= the fastest), that candidate.
 * chain: the rule before it, in t's order (a split above 1 kept only if
 * under margin of the pick so far, split 1 if faster at all).
 */
int split_pick(const split_cand_t *t, int n, float margin, int chain);

#ifdef __cplusplus
}
#endif

#endif
