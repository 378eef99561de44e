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
 * Two kernels.  ks_part_kernel, grid (chunks, rows): each block reads
 * KS_CHUNK ids of a row with every load in flight at once (one block a
 * row left a step's sampling waiting on one block's round trips: 27-36
 * us for greedy over 128-152K ids) and writes the chunk's partials to
 * the scratch: its first largest penalised logit, the sum of
 * exp((l - that) / T), and for logprobs the raw logits' max, the sum of
 * exp(l - max) and the n largest in order.  ks_sample_kernel, one block
 * a row, combines a row's partials and applies the rules:
 *   penalties    applied to each logit as it is read, from the row's
 *                uint16 counts of the tokens its sequence sampled (the
 *                kernel counts the token it picks);
 *   greedy       the first of the chunks' maxima, ties to the lowest id
 *                (sampler_argmax): nothing more to read;
 *   no cut       p_i = exp((l_i - max) / T); the token where u * sum(p)
 *                falls, counting p in id order: first the chunk, from
 *                the chunks' sums, then the token in it;
 *   a cut        the candidates: every p at or above a power of two
 *                that one pass's counts per binade (and for top_p a
 *                second pass's mass) show to hold top_k tokens, or the
 *                nucleus, when at most KS_CAND_MAX tokens are at or
 *                above it; else for top_k the k most likely (the largest
 *                threshold with k tokens at or above it, by bisecting
 *                its bits: p >= 0, so bits order like values; ties at
 *                it in id order), else every token above the nucleus'
 *                threshold, found the same way.  They are gathered and
 *                sorted in shared memory (most likely first, ties to
 *                the lower id) and one thread walks them as sampler.c
 *                does: the first top_k, the nucleus, then the draw.  So
 *                a u picks sampler.c's token (floats aside: the sums are
 *                block sums here).  More than KS_CAND_MAX candidates:
 *                the kept set is drawn from in id order instead, as
 *                without a cut.  These passes are still the row's block
 *                alone.
 *   logprobs     log_softmax of the raw row (before penalties): the
 *                picked token's, and the n largest merged from the
 *                chunks' lists.
 */

#include <limits.h>

#include "kernels_cuda.cuh"
#include "sample_cuda.h"

#define SAMPLE_THREADS  512
#define BATCH           8       /* loads in flight per thread */
#define PART_THREADS    128
#define KS_CHUNK        (PART_THREADS * BATCH)  /* ids a partial covers */
#define KS_FULL         0xffffffffu
#define KS_BINADES      24      /* a cut's bound: p >= 2^-23 at least */

typedef struct {
    float  v;
    int    i;
} ks_arg_t;

/* a chunk's partials */
typedef struct {
    float  v;           /* the first largest penalised logit */
    int    i;           /* its id */
    float  s;           /* sum of exp((l - v) / T), T > 0 */
    float  rv;          /* the largest raw logit (logprobs) */
    float  rs;          /* sum of exp(l - rv) over the raw logits */
} ks_part_t;

/* the scratch: per row and chunk, the partials, the n largest raw
 * logits and the draw's mass */
typedef struct {
    ks_arg_t   *top;            /* [R][chunks][ENGINE_MAX_LOGPROBS] */
    ks_part_t  *part;           /* [R][chunks] */
    float      *mass;           /* [R][chunks] */
} ks_scratch_t;

__host__ __device__ static inline int
ks_chunks(int vocab)
{
    return (vocab + KS_CHUNK - 1) / KS_CHUNK;
}

static ks_scratch_t
ks_scratch(void *base, int R, int vocab)
{
    size_t n = (size_t) R * ks_chunks(vocab);
    ks_scratch_t sc;

    sc.top = (ks_arg_t *) base;
    sc.part = (ks_part_t *) (sc.top + n * ENGINE_MAX_LOGPROBS);
    sc.mass = (float *) (sc.part + n);
    return sc;
}

size_t
ks_sample_scratch_bytes(int R, int vocab)
{
    return (size_t) R * ks_chunks(vocab)
           * (ENGINE_MAX_LOGPROBS * sizeof(ks_arg_t) + sizeof(ks_part_t)
              + sizeof(float));
}

/* (v, i) before (w, j): larger first, ties to the lower id */
__device__ __forceinline__ bool
ks_before(float v, int i, float w, int j)
{
    return j == INT_MAX || (i != INT_MAX && (v > w || (v == w && i < j)));
}

/* a logit as the sampler sees it: penalised as sampler_penalize() */
__device__ __forceinline__ float
ks_logit(float l, const uint16_t *cnt, int i, float pres, float freq)
{
    return cnt != NULL && cnt[i] != 0 ? l - fmaf(freq, (float) cnt[i], pres)
                                      : l;
}

/* the block's first (v, i) by ks_before, in every thread */
__device__ ks_arg_t
ks_block_arg(float v, int i, float *sv, int *si)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    ks_arg_t a;

    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(KS_FULL, v, o);
        int oi = __shfl_xor_sync(KS_FULL, i, o);
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
    for (int w = 1; w < (int) (blockDim.x >> 5); w++) {
        if (ks_before(sv[w], si[w], a.v, a.i)) {
            a.v = sv[w];
            a.i = si[w];
        }
    }
    __syncthreads();
    return a;
}

/*
 * In one warp: the first k of 0 .. n where x = u * total + y falls,
 * counting the masses m(k) >= 0 in order; -1 where none (x >= total, or
 * NaN).  Each lane sums a run of k in order, and every lane adds the
 * runs before its own in the same order, so that a run's end is bit for
 * bit the next run's start: the runs tile [0, total) and at most one
 * lane owns x.  *rest: x less the mass before k, inf where rounding
 * left x past the owner's own walk (k is then its last k with mass);
 * *last: the last k with mass.
 */
template <typename M>
__device__ int
ks_warp_locate(M m, int n, float u, float y, float *rest, int *last)
{
    int lane = threadIdx.x & 31, per = (n + 31) >> 5;
    int k0 = min(n, lane * per), k1 = min(n, k0 + per), at = -1, lst = -1;
    float own = 0.0f, before = 0.0f, x, rs = INFINITY;
    unsigned owners;

    for (int k = k0; k < k1; k++) {
        float v = m(k);
        own += v;
        lst = v > 0.0f ? k : lst;
    }
    for (int j = 0; j < 31; j++) {
        float o = __shfl_sync(KS_FULL, own, j);
        if (j < lane) {
            before += o;
        }
    }
    x = fmaf(u, __shfl_sync(KS_FULL, before + own, 31), y);
    if (own > 0.0f && before <= x && x < before + own) {
        float z = x - before, c = 0.0f;
        for (int k = k0; k < k1; k++) {
            float v = m(k);
            if (v > 0.0f) {
                at = k;
                if (z < c + v) {
                    rs = z - c;
                    break;
                }
            }
            c += v;
        }
    }
    owners = __ballot_sync(KS_FULL, at >= 0);
    *last = (int) __reduce_max_sync(KS_FULL, (unsigned) (lst + 1)) - 1;
    if (owners == 0) {
        *rest = INFINITY;
        return -1;
    }
    *rest = __shfl_sync(KS_FULL, rs, __ffs(owners) - 1);
    return __shfl_sync(KS_FULL, at, __ffs(owners) - 1);
}

/*
 * A chunk of a row: the first largest penalised logit, the sum of
 * exp((l - it) / T) when the row draws, and for logprobs the raw max,
 * the sum of exp(l - max) and the n largest raw logits in order (ending
 * early with an id of INT_MAX).  Each thread holds its BATCH logits in
 * registers: every pass after the loads is arithmetic.
 */
__global__ void __launch_bounds__(PART_THREADS)
ks_part_kernel(ks_part_t *parts, ks_arg_t *tops, const float *logits,
    int vocab, kc_step_t st, ks_rows_t rows, const uint16_t *counts)
{
    __shared__ float red[32], sv[32];
    __shared__ int si[32];
    kc_pdl_wait();
    kc_pdl_trigger();
    int p = blockIdx.x, nc = gridDim.x, r = blockIdx.y, tid = threadIdx.x;
    const float *l = logits + (size_t) r * vocab;
    float temp = st.temperature[r];
    int crow = rows.count_row ? rows.count_row[r] : -1;
    int nlp = rows.n_logprobs ? rows.n_logprobs[r] : -1;
    float pres = crow >= 0 ? rows.presence[r] : 0.0f;
    float freq = crow >= 0 ? rows.frequency[r] : 0.0f;
    const uint16_t *cnt = crow >= 0 ? counts + (size_t) crow * vocab : NULL;
    float raw[BATCH], v[BATCH], bv = -INFINITY, rmax = -INFINITY;
    int id[BATCH], bi = INT_MAX;
    ks_part_t out;
    ks_arg_t a;

#pragma unroll
    for (int u = 0; u < BATCH; u++) {
        id[u] = p * KS_CHUNK + u * PART_THREADS + tid;
        raw[u] = id[u] < vocab ? l[id[u]] : -INFINITY;
    }
#pragma unroll
    for (int u = 0; u < BATCH; u++) {
        v[u] = id[u] < vocab ? ks_logit(raw[u], cnt, id[u], pres, freq)
                             : -INFINITY;
        if (id[u] < vocab && (bi == INT_MAX || v[u] > bv)) {
            bv = v[u];
            bi = id[u];
        }
        rmax = fmaxf(rmax, raw[u]);
    }
    a = ks_block_arg(bv, bi, sv, si);
    out.v = a.v;
    out.i = a.i;
    out.s = 0.0f;
    out.rv = -INFINITY;
    out.rs = 0.0f;

    if (temp > 0.0f && vocab > 1 && a.v > -INFINITY) {
        float inv_t = 1.0f / temp, s = 0.0f;
#pragma unroll
        for (int u = 0; u < BATCH; u++) {
            s += expf((v[u] - a.v) * inv_t);
        }
        out.s = kc_block_sum(s, red);
    }

    if (nlp >= 0) {
        ks_arg_t *top = tops + ((size_t) r * nc + p) * ENGINE_MAX_LOGPROBS;
        float pv = INFINITY, s = 0.0f;
        int pi = -1;

        out.rv = ks_block_arg(rmax, 0, sv, si).v;
        if (out.rv > -INFINITY) {
#pragma unroll
            for (int u = 0; u < BATCH; u++) {
                s += expf(raw[u] - out.rv);
            }
            out.rs = kc_block_sum(s, red);
        }
        /* the n largest: each pass the first after the last one found */
        for (int k = 0; k < min(nlp, ENGINE_MAX_LOGPROBS); k++) {
            float b = -INFINITY;
            int bj = INT_MAX;
#pragma unroll
            for (int u = 0; u < BATCH; u++) {
                if (id[u] < vocab
                    && (raw[u] < pv || (raw[u] == pv && id[u] > pi))
                    && ks_before(raw[u], id[u], b, bj))
                {
                    b = raw[u];
                    bj = id[u];
                }
            }
            a = ks_block_arg(b, bj, sv, si);
            if (tid == 0) {
                top[k] = a;
            }
            if (a.i == INT_MAX) {
                break;
            }
            pv = a.v;
            pi = a.i;
        }
    }
    if (tid == 0) {
        parts[(size_t) r * nc + p] = out;
    }
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
ks_sample_kernel(int32_t *out, engine_logprobs_t *lps, const float *logits,
    int vocab, kc_step_t st, ks_rows_t rows, uint16_t *counts,
    ks_scratch_t sc)
{
    __shared__ float red[32], sv[32], pbuf[KS_CHUNK], rest_s;
    __shared__ int si[32], off_gt[SAMPLE_THREADS + 1],
                   off_eq[SAMPLE_THREADS + 1], won[ENGINE_MAX_LOGPROBS],
                   bins[KS_BINADES];
    __shared__ float cand_p[KS_CAND_MAX];
    __shared__ int cand_i[KS_CAND_MAX];
    __shared__ int pick_s;
    kc_pdl_wait();
    kc_pdl_trigger();
    int r = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int nc = ks_chunks(vocab);
    const float *l = logits + (size_t) r * vocab;
    const ks_part_t *pt = sc.part + (size_t) r * nc;
    float *mass = sc.mass + (size_t) r * nc;
    float temp = st.temperature[r], top_p = st.top_p[r];
    int top_k = rows.top_k ? rows.top_k[r] : 0;
    int crow = rows.count_row ? rows.count_row[r] : -1;
    int nlp = rows.n_logprobs ? rows.n_logprobs[r] : -1;
    float pres = crow >= 0 ? rows.presence[r] : 0.0f;
    float freq = crow >= 0 ? rows.frequency[r] : 0.0f;
    uint16_t *cnt = crow >= 0 ? counts + (size_t) crow * vocab : NULL;
    float bv = -INFINITY, mx, inv_t, sum, thr = 0.0f, rest;
    int bi = INT_MAX, chunk, i0, i1, pick, c, last;
    ks_arg_t a;

#define LOGIT(i)  ks_logit(l[i], cnt, i, pres, freq)

    /*
     * The passes over the row left to this block (the cuts) read BATCH
     * strided elements per thread before using any: the reads' latency,
     * not their bytes, is what a pass costs.
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

    /* argmax: the first of the chunks' largest */
    for (c = tid; c < nc; c += SAMPLE_THREADS) {
        if (ks_before(pt[c].v, pt[c].i, bv, bi)) {
            bv = pt[c].v;
            bi = pt[c].i;
        }
    }
    a = ks_block_arg(bv, bi, sv, si);
    pick = a.i;

    if (!(temp > 0.0f) || vocab <= 1) {
        goto picked;
    }

    /* unnormalised probabilities, recomputed where needed (the same
     * values every time: the same expression on the same inputs); a
     * chunk's mass is its sum rescaled from its own max to the row's */
    mx = a.v;
    inv_t = 1.0f / temp;
#define P(v)  expf(((v) - mx) * inv_t)

    sum = 0.0f;
    for (c = tid; c < nc; c += SAMPLE_THREADS) {
        float m = pt[c].s > 0.0f ? pt[c].s * P(pt[c].v) : 0.0f;
        mass[c] = m;
        sum += m;
    }
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
        int allowed, n_cand, bound, n_use;

        /*
         * A lower bound of the threshold below, from one pass's counts
         * per binade: for top_k the first power of two 2^-e with top_k
         * tokens at or above it, for the nucleus the last with at most
         * KS_CAND_MAX, if a second pass finds the nucleus' mass at or
         * above it (the bisection's own test).  The tokens at or above
         * it, at most KS_CAND_MAX, are then the candidates (sorted, the
         * walk takes sampler.c's first top_k of them, its nucleus) and
         * the bisection's passes are not run.
         */
        for (int e = tid; e < KS_BINADES; e += SAMPLE_THREADS) {
            bins[e] = 0;
        }
        __syncthreads();
        for (int base = 0; base < vocab; base += BATCH * SAMPLE_THREADS) {
            float p_[BATCH];
            _Pragma("unroll")
            for (int u = 0; u < BATCH; u++) {
                int i_ = base + u * SAMPLE_THREADS + tid;
                p_[u] = i_ < vocab ? P(LOGIT(i_)) : 0.0f;
            }
            _Pragma("unroll")
            for (int u = 0; u < BATCH; u++) {
                /* p in [2^-e, 2^(1-e)); 0 and NaN land past the bins */
                unsigned e = min(127u - (__float_as_uint(p_[u]) >> 23),
                                 (unsigned) KS_BINADES);
                unsigned same = __match_any_sync(KS_FULL, e);
                if (e < KS_BINADES && lane == __ffs(same) - 1) {
                    atomicAdd(&bins[e], __popc(same));
                }
            }
        }
        __syncthreads();
        if (tid == 0) {
            int n = 0;

            pick_s = -1;
            for (int e = 0; e < KS_BINADES && n + bins[e] <= KS_CAND_MAX;
                 e++)
            {
                n += bins[e];
                pick_s = e;
                if (cut_k && n >= top_k) {
                    break;
                }
            }
            if (cut_k && n < top_k) {
                pick_s = -1;
            }
        }
        __syncthreads();
        bound = pick_s;
        __syncthreads();
        if (bound >= 0 && !cut_k) {
            float th = __uint_as_float((127u - bound) << 23), m = 0.0f;
            STRIDED(LOGIT, float p = P(v); m += p >= th ? p : 0.0f);
            if (!(kc_block_sum(m, red) >= target)) {
                bound = -1;
            }
        }
        if (bound >= 0) {
            lo = (127u - bound) << 23;          /* 2^-bound */
        }

        /* else the largest threshold with top_k tokens, or the nucleus'
         * mass, at or above it */
        while (bound < 0 && lo < hi) {
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
         * top_k's exact threshold only as many as make k) */
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
        allowed = cut_k && bound < 0 ? top_k - off_gt[SAMPLE_THREADS]
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
                float cum = 0.0f, kmass = 0.0f, u;
                int kept = 0;

                n_use = cut_k ? min(n_cand, top_k) : n_cand;
                if (cut_k) {
                    for (int k = 0; k < n_use; k++) {
                        kmass += cand_p[k];
                    }
                    target = top_p * kmass;
                }
                while (kept < n_use) {
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

        /* the chunks' masses of p >= thr, for the draw below: a warp a
         * chunk */
        for (c = warp; c < nc; c += SAMPLE_THREADS / 32) {
            int end = min(vocab, (c + 1) * KS_CHUNK);
            float m = 0.0f;

            for (int base = c * KS_CHUNK + lane; base < end;
                 base += BATCH * 32)
            {
                float p_[BATCH];
                _Pragma("unroll")
                for (int u = 0; u < BATCH; u++) {
                    int i_ = base + u * 32;
                    p_[u] = i_ < end ? P(LOGIT(i_)) : 0.0f;
                }
                _Pragma("unroll")
                for (int u = 0; u < BATCH; u++) {
                    m += p_[u] >= thr ? p_[u] : 0.0f;
                }
            }
            m = kc_warp_sum(m);
            if (lane == 0) {
                mass[c] = m;
            }
        }
    }

    /*
     * The token where u * mass falls, counting p >= thr in id order:
     * the chunk (its mass: from the partials, or the pass above), then
     * the token in it.  Rounding between the two: the chunk's last token
     * with mass; past the end: the argmax (sampler.c's "best").
     */
    __syncthreads();
    if (warp == 0) {
        c = ks_warp_locate([&](int k) { return mass[k]; }, nc,
                           st.uniform[r], 0.0f, &rest, &last);
        if (lane == 0) {
            pick_s = c;
            rest_s = rest;
        }
    }
    __syncthreads();
    c = pick_s;
    rest = rest_s;
    __syncthreads();
    if (c >= 0) {
        int c0 = c * KS_CHUNK, n = min(KS_CHUNK, vocab - c0), k;

        for (k = tid; k < n; k += SAMPLE_THREADS) {
            float p = P(LOGIT(c0 + k));
            pbuf[k] = p >= thr ? p : 0.0f;
        }
        __syncthreads();
        if (warp == 0) {
            k = ks_warp_locate([&](int j) { return pbuf[j]; }, n, 0.0f,
                               rest, &rest, &last);
            if (lane == 0) {
                pick_s = k >= 0 ? c0 + k : last >= 0 ? c0 + last : pick;
            }
        }
        __syncthreads();
        pick = pick_s;
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
        const ks_arg_t *top = sc.top + (size_t) r * nc * ENGINE_MAX_LOGPROBS;
        float rmax = -INFINITY, s = 0.0f, lse;
        int k;

        for (c = tid; c < nc; c += SAMPLE_THREADS) {
            rmax = fmaxf(rmax, pt[c].rv);
        }
        rmax = ks_block_arg(rmax, 0, sv, si).v;
        for (c = tid; c < nc; c += SAMPLE_THREADS) {
            s += pt[c].rs > 0.0f ? pt[c].rs * expf(pt[c].rv - rmax) : 0.0f;
        }
        lse = rmax + logf(kc_block_sum(s, red));
        if (tid == 0) {
            lp->logprob = l[pick] - lse;
        }
        /* the n largest: each round the best of the chunks' lists' heads
         * (a list's head: the rounds it has won) */
        for (k = 0; k < nlp && k < ENGINE_MAX_LOGPROBS; k++) {
            float b = -INFINITY;
            int bj = INT_MAX;
            for (c = tid; c < nc; c += SAMPLE_THREADS) {
                int h = 0;
                for (int j = 0; j < k; j++) {
                    h += won[j] == c;
                }
                ks_arg_t e = top[(size_t) c * ENGINE_MAX_LOGPROBS + h];
                if (ks_before(e.v, e.i, b, bj)) {
                    b = e.v;
                    bj = e.i;
                }
            }
            a = ks_block_arg(b, bj, sv, si);
            if (a.i == INT_MAX) {
                break;
            }
            if (tid == 0) {
                lp->top_id[k] = a.i;
                lp->top_logprob[k] = a.v - lse;
                won[k] = a.i / KS_CHUNK;
            }
            __syncthreads();
        }
        if (tid == 0) {
            lp->n_top = k;
        }
    }
#undef P
#undef LOGIT
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
    uint16_t *counts, void *scratch)
{
    ks_scratch_t sc = ks_scratch(scratch, R, vocab);

    if (R <= 0) {
        return;
    }
    kc_launch(ks_part_kernel, dim3(ks_chunks(vocab), R), PART_THREADS, 0, s,
              sc.part, sc.top, logits, vocab, st, rows,
              (const uint16_t *) counts);
    kc_launch(ks_sample_kernel, R, SAMPLE_THREADS, 0, s, out, lp, logits,
              vocab, st, rows, counts, sc);
}

void
ks_counts_load(cudaStream_t s, uint16_t *counts_row, int vocab,
    const int32_t *tokens, int n)
{
    ks_counts_kernel<<<1, 1024, 0, s>>>(counts_row, vocab, tokens, n);
}

/* for the kernel tests: the engine hands ks_sample() its arena's scratch;
 * here it is the stream's, freed once the stream is past it */
void
kc_sample(cudaStream_t s, int32_t *out, const float *logits, int R,
    int vocab, kc_step_t st)
{
    ks_rows_t none = { NULL, NULL, NULL, NULL, NULL };
    void *scratch = NULL;

    if (cudaMallocAsync(&scratch, ks_sample_scratch_bytes(R, vocab), s)
        != cudaSuccess)
    {
        return;
    }
    ks_sample(s, out, NULL, logits, R, vocab, st, none, NULL, scratch);
    cudaFreeAsync(scratch, s);
}
