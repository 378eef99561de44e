/*
 * split_pick.c - see split_pick.h.
 *
 * Why the fewest warps within the margin: alone, more split warps win by
 * a few % where the step loses.  At 8 rows, splits that won by 3-4%
 * alone cost Qwen-0.5B's shapes 3% in the step; Llama-3.2-1B's down
 * product at 1 row ran 5% faster alone at split 8 than at split 2, and
 * the step 2% slower (H100: 908-918 against 926-938 tokens/s).  The
 * chain rule kept each split only if 10% faster than the pick so far,
 * so a split 2 that missed that against split 1 by a hair let split 8
 * in, and the rate moved with the start.
 */

#include "split_pick.h"

int
split_pick(const split_cand_t *t, int n, float margin, int chain)
{
    int i, best = -1, level, lb;

    for (i = 0; i < n; i++) {
        float m = t[i].split == 1 || !chain ? 1.0f : margin;
        if (best < 0 || t[i].ms < t[best].ms * m) {
            best = i;
        }
    }
    if (best < 0 || chain) {
        return best;
    }
    for (level = 1; level < t[best].split; level *= 2) {
        lb = -1;
        for (i = 0; i < n; i++) {
            if (t[i].split == level && (lb < 0 || t[i].ms < t[lb].ms)) {
                lb = i;
            }
        }
        if (lb >= 0 && t[lb].ms * margin <= t[best].ms) {
            return lb;
        }
    }
    return best;
}
