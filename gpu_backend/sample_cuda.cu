/*
 * sample_cuda.cu - the next token of each logits row, on the device, so
 * that only token ids cross to the host.  CPU reference: sampler.c.
 *
 * The random draw itself is made on the host (sampler_uniform() on the
 * sequence's own state, one step per sampled token, exactly as the CPU
 * engine does) and comes up with the step's inputs; so a seed means the
 * same random stream on either engine.
 *
 * One block per row:
 *   greedy       the argmax, ties to the lowest id (sampler_argmax);
 *   temperature  p_i = exp((l_i - max) / T); the token where u * sum(p)
 *                falls, counting p in id order (as sampler.c does);
 *   top_p < 1    the nucleus is every token with p_i >= the largest
 *                threshold whose tokens still hold top_p of the mass,
 *                found by bisecting the threshold's bits (p >= 0, so
 *                its bit pattern orders like its value); the draw then
 *                counts the nucleus in id order.  sampler.c counts it
 *                from the most likely token down: same distribution,
 *                but a given u can pick a different token; and tokens
 *                tied at the threshold are all kept here.
 */

#include <limits.h>

#include "kernels_cuda.cuh"

#define SAMPLE_THREADS  512
#define BATCH           8       /* loads in flight per thread */

__global__ void __launch_bounds__(SAMPLE_THREADS)
sample_kernel(int32_t *out, const float *logits, int vocab, kc_step_t st)
{
    __shared__ float red[32], part[SAMPLE_THREADS + 1];
    __shared__ float best_v[32];
    __shared__ int best_i[32], found;
    int r = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const float *l = logits + (size_t) r * vocab;
    float bv = -INFINITY, mx, inv_t, sum, thr = 0.0f, x, own = 0.0f;
    float temp = st.temperature[r], top_p = st.top_p[r];
    int bi = INT_MAX, chunk, i0, i1;

    /*
     * Every pass over the row reads BATCH strided elements per thread
     * before using any: one block per row, so the reads' latency, not
     * their bytes, is what a pass costs.
     */
#define STRIDED(body)                                                     \
    for (int base = tid; base < vocab; base += BATCH * SAMPLE_THREADS) {  \
        float v_[BATCH];                                                  \
        _Pragma("unroll")                                                 \
        for (int u = 0; u < BATCH; u++) {                                 \
            int i_ = base + u * SAMPLE_THREADS;                           \
            v_[u] = i_ < vocab ? l[i_] : -INFINITY;                       \
        }                                                                 \
        _Pragma("unroll")                                                 \
        for (int u = 0; u < BATCH; u++) {                                 \
            int i = base + u * SAMPLE_THREADS;                            \
            float v = v_[u];                                              \
            if (i < vocab) { (void) i; body; }                            \
        }                                                                 \
    }

    /* argmax: the first of the largest */
    STRIDED(if (bi == INT_MAX || v > bv) { bv = v; bi = i; });
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (oi != INT_MAX && (bi == INT_MAX || ov > bv
                              || (ov == bv && oi < bi)))
        {
            bv = ov;
            bi = oi;
        }
    }
    if (lane == 0) {
        best_v[warp] = bv;
        best_i[warp] = bi;
    }
    __syncthreads();
    bv = best_v[0];
    bi = best_i[0];
    for (int w = 1; w < SAMPLE_THREADS / 32; w++) {
        if (best_i[w] != INT_MAX && (bi == INT_MAX || best_v[w] > bv
                                     || (best_v[w] == bv && best_i[w] < bi)))
        {
            bv = best_v[w];
            bi = best_i[w];
        }
    }

    if (!(temp > 0.0f) || vocab <= 1) {
        if (tid == 0) {
            out[r] = bi;
        }
        return;
    }

    /* unnormalised probabilities, recomputed where needed (the same
     * values every time: the same expression on the same inputs) */
    mx = bv;
    inv_t = 1.0f / temp;
#define P(v)  expf(((v) - mx) * inv_t)

    sum = 0.0f;
    STRIDED(sum += P(v));
    sum = kc_block_sum(sum, red);

    if (top_p < 1.0f) {
        float target = (top_p > 0.0f ? top_p : 0.0f) * sum;
        unsigned lo = 0, hi = 0x3f800000u;  /* p of the argmax is 1 */

        /* the largest threshold whose tokens hold at least target */
        while (lo < hi) {
            unsigned mid = lo + (hi - lo + 1) / 2;
            float th = __uint_as_float(mid), m = 0.0f;
            STRIDED(float p = P(v); m += p >= th ? p : 0.0f);
            m = kc_block_sum(m, red);
            if (m >= target) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        thr = __uint_as_float(lo);
    }

    /* the token where u * mass falls, counting in id order: each thread
     * owns a contiguous run of ids; one thread adds the runs' masses up
     * in order, so the runs' intervals tile [0, mass) exactly */
    chunk = (vocab + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    i0 = min(vocab, tid * chunk);
    i1 = min(vocab, i0 + chunk);
#define CONTIGUOUS(body)                                                  \
    for (int base = i0; base < i1; base += BATCH) {                       \
        float v_[BATCH];                                                  \
        _Pragma("unroll")                                                 \
        for (int u = 0; u < BATCH; u++) {                                 \
            v_[u] = base + u < i1 ? l[base + u] : -INFINITY;              \
        }                                                                 \
        for (int u = 0; u < BATCH && base + u < i1; u++) {                \
            [[maybe_unused]] int i = base + u;                            \
            float v = v_[u];                                              \
            body;                                                         \
        }                                                                 \
    }
    CONTIGUOUS(float p = P(v); own += p >= thr ? p : 0.0f);
    part[tid] = own;
    if (tid == 0) {
        found = INT_MAX;
    }
    __syncthreads();
    if (tid == 0) {
        float c = 0.0f;
        for (int k = 0; k < SAMPLE_THREADS; k++) {
            float o = part[k];
            part[k] = c;
            c += o;
        }
        part[SAMPLE_THREADS] = c;
    }
    __syncthreads();
    x = st.uniform[r] * part[SAMPLE_THREADS];
    if (i0 < i1 && x >= part[tid] && x < part[tid + 1]) {
        float c = part[tid];
        int pick = -1, done = 0;
        CONTIGUOUS(
            float p = P(v);
            if (!done && p >= thr) {
                pick = i;               /* rounding: the last one kept */
                c += p;
                done = x < c;
            });
        if (pick >= 0) {
            atomicMin(&found, pick);
        }
    }
    __syncthreads();
    if (tid == 0) {
        out[r] = found == INT_MAX ? bi : found;
    }
#undef P
#undef STRIDED
#undef CONTIGUOUS
}

void
kc_sample(cudaStream_t s, int32_t *out, const float *logits, int R,
    int vocab, kc_step_t st)
{
    sample_kernel<<<R, SAMPLE_THREADS, 0, s>>>(out, logits, vocab, st);
}
