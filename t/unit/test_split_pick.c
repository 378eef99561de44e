/*
 * test_split_pick.c - the tuner's rule among timed candidates
 * (split_pick): the fewest split warps within the margin of the fastest,
 * its stability where the rule before it (chain) flipped, and the edges
 * (nothing timed, one level only, the fastest at split 1, two kernels
 * at one split).
 */

#include "unit.h"
#include "split_pick.h"

/* gemm_cuda's kernels: cuBLAS, gemv + epilogue, gemv then epilogue */
enum { CUBLAS, FUSED, THEN };

#define N_OF(a)  ((int) (sizeof(a) / sizeof((a)[0])))

/* the pick's split and kernel as "split/kernel", or "none" */
static const char *
picked(const split_cand_t *t, int n, int chain)
{
    static char buf[32];
    int i = split_pick(t, n, 0.90f, chain);

    if (i < 0) {
        return "none";
    }
    snprintf(buf, sizeof(buf), "%d/%d", t[i].split, t[i].kern);
    return buf;
}

int
main(void)
{
    /* Llama-3.2-1B's down product at 1 row (H100, timed alone, µs):
     * split 8 the fastest, split 2 within 10% of it */
    split_cand_t down[] = {
        { CUBLAS, 1, 10.00f }, { FUSED, 1, 9.50f }, { FUSED, 2, 8.50f },
        { FUSED, 4, 8.40f }, { FUSED, 8, 8.10f },
    };
    /* the same with split 2 a hair either side of 10% under split 1 */
    split_cand_t near_a[] = {
        { CUBLAS, 1, 10.00f }, { FUSED, 1, 9.50f }, { FUSED, 2, 8.54f },
        { FUSED, 8, 8.10f },
    };
    split_cand_t near_b[] = {
        { CUBLAS, 1, 10.00f }, { FUSED, 1, 9.50f }, { FUSED, 2, 8.56f },
        { FUSED, 8, 8.10f },
    };
    /* the fastest at split 1 (cuBLAS), our kernel's splits slower */
    split_cand_t blas[] = {
        { CUBLAS, 1, 6.06f }, { FUSED, 1, 7.00f }, { FUSED, 2, 6.50f },
        { FUSED, 8, 6.23f },
    };
    /* two kernels at each split: the faster one of the chosen split */
    split_cand_t two[] = {
        { FUSED, 1, 12.0f }, { THEN, 1, 11.9f }, { FUSED, 2, 10.2f },
        { THEN, 2, 10.0f }, { FUSED, 4, 9.3f }, { THEN, 4, 9.6f },
    };
    /* a split far ahead: taken even though it is many warps */
    split_cand_t far[] = {
        { CUBLAS, 1, 20.0f }, { FUSED, 1, 19.0f }, { FUSED, 2, 15.0f },
        { FUSED, 8, 10.0f },
    };
    /* only some levels timed (the kernel refused the others) */
    split_cand_t gaps[] = {
        { FUSED, 1, 5.0f }, { FUSED, 4, 4.0f },
    };
    split_cand_t one[] = { { FUSED, 2, 3.0f } };

#define CASE(t, chain, want, what)  { t, N_OF(t), chain, want, what }
    const struct {
        const split_cand_t  *t;
        int                  n, chain;
        const char          *want, *what;
    } cases[] = {
        CASE(down, 0, "2/1", "1B down, 1 row: split 2, within 10% of 8"),
        CASE(down, 1, "2/1", "chain: split 2, 10% under split 1's 9.5"),
        CASE(near_a, 0, "2/1", "split 2 at 8.54 us"),
        CASE(near_b, 0, "2/1", "split 2 at 8.56 us: the same pick"),
        CASE(near_a, 1, "2/1", "chain, split 2 at 8.54 us"),
        CASE(near_b, 1, "8/1", "chain, split 2 at 8.56 us: split 8"),
        CASE(blas, 0, "1/0", "the fastest at split 1 (cuBLAS)"),
        CASE(two, 0, "2/2", "split 2 within 10% of 9.3: its faster kernel"),
        CASE(far, 0, "8/1", "split 8 a third faster than split 2"),
        CASE(gaps, 0, "4/1", "split 1 20% slower, 2 not timed: split 4"),
        CASE(one, 0, "2/1", "one candidate"),
        CASE(one, 1, "2/1", "one candidate, chain"),
    };
    const char *got;
    int i;

    for (i = 0; i < N_OF(cases); i++) {
        got = picked(cases[i].t, cases[i].n, cases[i].chain);
        CHECK(strcmp(got, cases[i].want) == 0, "%s: %s, want %s",
              cases[i].what, got, cases[i].want);
    }
    CHECK(split_pick(down, 0, 0.90f, 0) == -1
          && split_pick(down, 0, 0.90f, 1) == -1,
          "nothing timed: -1");
    CHECK(split_pick(down, N_OF(down), 1.0f, 0) == 4,
          "margin 1: the fastest of all");

    return unit_report("test_split_pick");
}
