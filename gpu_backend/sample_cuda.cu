/*
 * sample_cuda.cu - the next token of each logits row, on the device, so
 * that only token ids (and logprobs when asked for) cross to the host.
 * CPU reference: sampler.c, rule for rule.
 *
 * The random draw itself is made on the host (sampler_uniform() on the
 * sequence's own state, one step per sampled token, exactly as the CPU
 * engine does) and comes up with the step's inputs; so a seed means the
 * same random stream on either engine.
 *
 * One block per row:
 *   penalties    applied to each logit as it is read, from the row's
 *                uint16 counts of the tokens its sequence sampled (the
 *                kernel counts the token it picks);
 *   greedy       the argmax, ties to the lowest id (sampler_argmax);
 *   no cut       p_i = exp((l_i - max) / T); the token where u * sum(p)
 *                falls, counting p in id order;
 *   a cut        the candidates: for top_k the k most likely (the
 *                largest threshold with k tokens at or above it, by
 *                bisecting its bits: p >= 0, so bits order like values;
 *                ties at it in id order), else every token above the
 *                nucleus' threshold, found the same way; they are
 *                gathered and sorted in shared memory (most likely
 *                first, ties to the lower id) and one thread walks them
 *                as sampler.c does: the nucleus, then the draw.  So a u
 *                picks sampler.c's token (floats aside: the sums are
 *                block sums here).  More than KS_CAND_MAX candidates:
 *                the kept set is drawn from in id order instead.
 *   logprobs     log_softmax of the raw row (before penalties): the
 *                picked token's and the n largest, one pass each.
 */

#include <limits.h>

#include "kernels_cuda.cuh"
#include "sample_cuda.h"

#define SAMPLE_THREADS  512
#define BATCH           8       /* loads in flight per thread */

typedef struct {
    float  v;
    int    i;
} ks_arg_t;

/* (v, i) before (w, j): larger first, ties to the lower id */
__device__ __forceinline__ bool
ks_before(float v, int i, float w, int j)
{
    return j == INT_MAX || (i != INT_MAX && (v > w || (v == w && i < j)));
}

/* the block's first (v, i) by ks_before, in every thread */
__device__ ks_arg_t
ks_block_arg(float v, int i, float *sv, int *si)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    ks_arg_t a;

    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, v, o);
        int oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (ks_before(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
    if (lane == 0) {
        sv[warp] = v;
        si[warp] = i;
    }
    __syncthreads();
    a.v = sv[0];
    a.i = si[0];
    for (int w = 1; w < SAMPLE_THREADS / 32; w++) {
        if (ks_before(sv[w], si[w], a.v, a.i)) {
            a.v = sv[w];
            a.i = si[w];
        }
    }
    __syncthreads();
    return a;
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
ks_sample_kernel(int32_t *out, engine_logprobs_t *lps, const float *logits,
    int vocab, kc_step_t st, ks_rows_t rows, uint16_t *counts)
{
    __shared__ float red[32], part[SAMPLE_THREADS + 1], sv[32];
    __shared__ int si[32], found, off_gt[SAMPLE_THREADS + 1],
                   off_eq[SAMPLE_THREADS + 1];
    __shared__ float cand_p[KS_CAND_MAX];
    __shared__ int cand_i[KS_CAND_MAX];
    __shared__ int pick_s;
    kc_pdl_wait();
    kc_pdl_trigger();
    int r = blockIdx.x, tid = threadIdx.x;
    const float *l = logits + (size_t) r * vocab;
    float temp = st.temperature[r], top_p = st.top_p[r];
    int top_k = rows.top_k ? rows.top_k[r] : 0;
    int crow = rows.count_row ? rows.count_row[r] : -1;
    int nlp = rows.n_logprobs ? rows.n_logprobs[r] : -1;
    float pres = crow >= 0 ? rows.presence[r] : 0.0f;
    float freq = crow >= 0 ? rows.frequency[r] : 0.0f;
    uint16_t *cnt = crow >= 0 ? counts + (size_t) crow * vocab : NULL;
    float bv = -INFINITY, mx, inv_t, sum, thr = 0.0f, x, own = 0.0f;
    int bi = INT_MAX, chunk, i0, i1, pick;
    ks_arg_t a;

    /* a logit as the sampler sees it: penalised as sampler_penalize() */
#define LOGIT(i)                                                          \
    (cnt != NULL && cnt[i] != 0                                           \
     ? l[i] - fmaf(freq, (float) cnt[i], pres) : l[i])

    /*
     * Every pass over the row reads BATCH strided elements per thread
     * before using any: one block per row, so the reads' latency, not
     * their bytes, is what a pass costs.
     */
#define STRIDED(load, body)                                               \
    for (int base = tid; base < vocab; base += BATCH * SAMPLE_THREADS) {  \
        float v_[BATCH];                                                  \
        _Pragma("unroll")                                                 \
        for (int u = 0; u < BATCH; u++) {                                 \
            int i_ = base + u * SAMPLE_THREADS;                           \
            v_[u] = i_ < vocab ? load(i_) : -INFINITY;                    \
        }                                                                 \
        _Pragma("unroll")                                                 \
        for (int u = 0; u < BATCH; u++) {                                 \
            int i = base + u * SAMPLE_THREADS;                            \
            float v = v_[u];                                              \
            if (i < vocab) { (void) i; body; }                            \
        }                                                                 \
    }
#define RAW(i)  l[i]

    /* argmax: the first of the largest */
    STRIDED(LOGIT, if (bi == INT_MAX || v > bv) { bv = v; bi = i; });
    a = ks_block_arg(bv, bi, sv, si);
    pick = a.i;

    if (!(temp > 0.0f) || vocab <= 1) {
        goto picked;
    }

    /* unnormalised probabilities, recomputed where needed (the same
     * values every time: the same expression on the same inputs) */
    mx = a.v;
    inv_t = 1.0f / temp;
#define P(v)  expf(((v) - mx) * inv_t)

    sum = 0.0f;
    STRIDED(LOGIT, sum += P(v));
    sum = kc_block_sum(sum, red);

    /* each thread owns a contiguous run of ids, for passes in id order */
    chunk = (vocab + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    i0 = min(vocab, tid * chunk);
    i1 = min(vocab, i0 + chunk);
#define CONTIGUOUS(body)                                                  \
    for (int base = i0; base < i1; base += BATCH) {                       \
        float v_[BATCH];                                                  \
        _Pragma("unroll")                                                 \
        for (int u = 0; u < BATCH; u++) {                                 \
            v_[u] = base + u < i1 ? LOGIT(base + u) : -INFINITY;          \
        }                                                                 \
        for (int u = 0; u < BATCH && base + u < i1; u++) {                \
            [[maybe_unused]] int i = base + u;                            \
            float v = v_[u];                                              \
            body;                                                         \
        }                                                                 \
    }

    if ((top_k > 0 && top_k < vocab) || top_p < 1.0f) {
        bool cut_k = top_k > 0 && top_k < vocab;
        float target = (top_p > 0.0f ? top_p : 0.0f) * sum, n_gt, n_eq;
        unsigned lo = 0, hi = 0x3f800000u;      /* p of the argmax is 1 */
        int allowed, n_cand;

        /* the largest threshold with top_k tokens, or the nucleus'
         * mass, at or above it */
        while (lo < hi) {
            unsigned mid = lo + (hi - lo + 1) / 2;
            float th = __uint_as_float(mid), m = 0.0f;
            if (cut_k) {
                STRIDED(LOGIT, m += P(v) >= th ? 1.0f : 0.0f);
            } else {
                STRIDED(LOGIT, float p = P(v); m += p >= th ? p : 0.0f);
            }
            m = kc_block_sum(m, red);
            if (cut_k ? m >= (float) top_k : m >= target) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        thr = __uint_as_float(lo);

        /* candidates: every p above thr, and ties at it in id order (for
         * top_k only as many as make k) */
        n_gt = 0.0f;
        n_eq = 0.0f;
        CONTIGUOUS(float p = P(v); n_gt += p > thr ? 1.0f : 0.0f;
                   n_eq += p == thr ? 1.0f : 0.0f);
        off_gt[tid] = (int) n_gt;
        off_eq[tid] = (int) n_eq;
        __syncthreads();
        if (tid == 0) {
            int cg = 0, ce = 0;
            for (int k = 0; k < SAMPLE_THREADS; k++) {
                int g = off_gt[k], q = off_eq[k];
                off_gt[k] = cg;
                off_eq[k] = ce;
                cg += g;
                ce += q;
            }
            off_gt[SAMPLE_THREADS] = cg;
            off_eq[SAMPLE_THREADS] = ce;
        }
        __syncthreads();
        allowed = cut_k ? top_k - off_gt[SAMPLE_THREADS]
                        : off_eq[SAMPLE_THREADS];
        allowed = min(allowed, off_eq[SAMPLE_THREADS]);
        n_cand = off_gt[SAMPLE_THREADS] + allowed;

        if (n_cand <= KS_CAND_MAX) {
            int g = off_gt[tid], q = off_eq[tid], n2 = 1;

            CONTIGUOUS(
                float p = P(v);
                if (p > thr) {
                    cand_p[g] = p;
                    cand_i[g++] = i;
                } else if (p == thr) {
                    if (q < allowed) {
                        cand_p[off_gt[SAMPLE_THREADS] + q] = p;
                        cand_i[off_gt[SAMPLE_THREADS] + q] = i;
                    }
                    q++;
                });
            while (n2 < n_cand) {
                n2 <<= 1;
            }
            for (int k = n_cand + tid; k < n2; k += SAMPLE_THREADS) {
                cand_p[k] = -1.0f;
                cand_i[k] = INT_MAX;
            }
            __syncthreads();

            /* bitonic sort: most likely first, ties to the lower id */
            for (int k = 2; k <= n2; k <<= 1) {
                for (int j = k >> 1; j > 0; j >>= 1) {
                    for (int e = tid; e < n2; e += SAMPLE_THREADS) {
                        int f = e ^ j;
                        if (f > e) {
                            bool first = (e & k) == 0;
                            float pe = cand_p[e], pf = cand_p[f];
                            int ie = cand_i[e], jf = cand_i[f];
                            bool fe = pf > pe || (pf == pe && jf < ie);
                            if (first ? fe : !fe) {
                                cand_p[e] = pf;
                                cand_i[e] = jf;
                                cand_p[f] = pe;
                                cand_i[f] = ie;
                            }
                        }
                    }
                    __syncthreads();
                }
            }

            /* sampler_pick()'s walk, in its order and its sums */
            if (tid == 0) {
                float cum = 0.0f, mass = 0.0f, u;
                int kept = 0;

                if (cut_k) {
                    for (int k = 0; k < n_cand; k++) {
                        mass += cand_p[k];
                    }
                    target = top_p * mass;
                }
                while (kept < n_cand) {
                    cum += cand_p[kept++];
                    if (cum >= target) {
                        break;
                    }
                }
                u = st.uniform[r] * cum;
                cum = 0.0f;
                pick_s = cand_i[0];
                for (int k = 0; k < kept; k++) {
                    cum += cand_p[k];
                    if (u < cum) {
                        pick_s = cand_i[k];
                        break;
                    }
                }
            }
            __syncthreads();
            pick = pick_s;
            goto picked;
        }

        /* too many candidates: top_k's nucleus by a second threshold,
         * then the draw in id order over p >= thr */
        if (cut_k && top_p < 1.0f) {
            float mk = 0.0f;
            STRIDED(LOGIT, float p = P(v); mk += p >= thr ? p : 0.0f);
            target = top_p * kc_block_sum(mk, red);
            hi = 0x3f800000u;
            while (lo < hi) {
                unsigned mid = lo + (hi - lo + 1) / 2;
                float th = __uint_as_float(mid), m = 0.0f;
                STRIDED(LOGIT, float p = P(v); m += p >= th ? p : 0.0f);
                m = kc_block_sum(m, red);
                if (m >= target) {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            thr = __uint_as_float(lo);
        }
    }

    /* the token where u * mass falls, counting in id order: one thread
     * adds the runs' masses up in order, so the runs' intervals tile
     * [0, mass) exactly */
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
        int at = -1, done = 0;
        CONTIGUOUS(
            float p = P(v);
            if (!done && p >= thr) {
                at = i;                 /* rounding: the last one kept */
                c += p;
                done = x < c;
            });
        if (at >= 0) {
            atomicMin(&found, at);
        }
    }
    __syncthreads();
    if (found != INT_MAX) {
        pick = found;
    }

picked:
    /* every read of the counts is done: count the pick */
    __syncthreads();
    if (tid == 0) {
        out[r] = pick;
        if (cnt != NULL && cnt[pick] < 65535) {
            cnt[pick]++;
        }
    }

    if (nlp >= 0) {
        engine_logprobs_t *lp = lps + r;
        float rmax = -INFINITY, s = 0.0f, lse, pv = INFINITY;
        int pi = -1, k;

        STRIDED(RAW, rmax = fmaxf(rmax, v));
        a = ks_block_arg(rmax, 0, sv, si);
        rmax = a.v;
        STRIDED(RAW, s += expf(v - rmax));
        lse = rmax + logf(kc_block_sum(s, red));
        if (tid == 0) {
            lp->logprob = l[pick] - lse;
        }
        /* the n largest: each pass the first after the last one found */
        for (k = 0; k < nlp && k < vocab; k++) {
            float b = -INFINITY;
            int bj = INT_MAX;
            STRIDED(RAW,
                if ((v < pv || (v == pv && i > pi))
                    && ks_before(v, i, b, bj)) { b = v; bj = i; });
            a = ks_block_arg(b, bj, sv, si);
            if (a.i == INT_MAX) {
                break;
            }
            if (tid == 0) {
                lp->top_id[k] = a.i;
                lp->top_logprob[k] = a.v - lse;
            }
            pv = a.v;
            pi = a.i;
        }
        if (tid == 0) {
            lp->n_top = k;
        }
    }
#undef P
#undef LOGIT
#undef RAW
#undef STRIDED
#undef CONTIGUOUS
}

__global__ void
ks_counts_kernel(uint16_t *row, int vocab, const int32_t *tokens, int n)
{
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        row[i] = 0;
    }
    __syncthreads();
    /* one thread: repeats of a token saturate as on the host */
    if (threadIdx.x == 0) {
        for (int i = 0; i < n; i++) {
            int t = tokens[i];
            if (t >= 0 && t < vocab && row[t] < 65535) {
                row[t]++;
            }
        }
    }
}

void
ks_sample(cudaStream_t s, int32_t *out, engine_logprobs_t *lp,
    const float *logits, int R, int vocab, kc_step_t st, ks_rows_t rows,
    uint16_t *counts)
{
    kc_launch(ks_sample_kernel, R, SAMPLE_THREADS, 0, s, out, lp, logits,
              vocab, st, rows, counts);
}

void
ks_counts_load(cudaStream_t s, uint16_t *counts_row, int vocab,
    const int32_t *tokens, int n)
{
    ks_counts_kernel<<<1, 1024, 0, s>>>(counts_row, vocab, tokens, n);
}

void
kc_sample(cudaStream_t s, int32_t *out, const float *logits, int R,
    int vocab, kc_step_t st)
{
    ks_rows_t none = { NULL, NULL, NULL, NULL, NULL };

    ks_sample(s, out, NULL, logits, R, vocab, st, none, NULL);
}
