/*
 * kernels_cpu.c - the CPU engine's kernels.
 *
 * The build does not let the compiler reorder float sums (no -ffast-math),
 * so a plain reduction loop stays scalar, and libm's expf is a call that
 * stops vectorisation.  The hot loops are therefore written with GCC/Clang
 * vector types, 8 floats (one AVX2 register) at a time, each sum in one
 * fixed order.  A row's arithmetic never depends on the other rows of a
 * batch, so results do not depend on batching, bit for bit.
 */

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels_cpu.h"

/* 8 floats (and ints); aligned(4) so that any float address will do */
typedef float v8f __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t v8i __attribute__((vector_size(32), aligned(4), may_alias));
typedef uint32_t v8u __attribute__((vector_size(32), aligned(4), may_alias));
/* and 4 (RoPE: head_dim / 2 is often a multiple of 4 but not of 8) */
typedef float v4f __attribute__((vector_size(16), aligned(4), may_alias));

static inline v8f
load8(const float *p)
{
    return *(const v8f *) p;
}

static inline void
store8(float *p, v8f v)
{
    *(v8f *) p = v;
}

static inline v8f
splat8(float a)
{
    return (v8f) { a, a, a, a, a, a, a, a };
}

static inline float
hsum8(v8f v)
{
    return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
}

/* m ? a : b lane by lane (m from a vector comparison: all ones or 0) */
static inline v8f
select8(v8i m, v8f a, v8f b)
{
    return (v8f) (((v8i) a & m) | ((v8i) b & ~m));
}

/* lane-wise min and max, one instruction each; where either lane is
 * NaN, the result's lane is b's */
static inline v8f
min8(v8f a, v8f b)
{
    return (v8f) _mm256_min_ps((__m256) a, (__m256) b);
}

static inline v8f
max8(v8f a, v8f b)
{
    return (v8f) _mm256_max_ps((__m256) a, (__m256) b);
}

/* the largest lane, as a tree of lane swaps */
static inline float
hmax8(v8f v)
{
    v = max8(v, __builtin_shuffle(v, (v8i) { 4, 5, 6, 7, 0, 1, 2, 3 }));
    v = max8(v, __builtin_shuffle(v, (v8i) { 2, 3, 0, 1, 6, 7, 4, 5 }));
    v = max8(v, __builtin_shuffle(v, (v8i) { 1, 0, 3, 2, 5, 4, 7, 6 }));
    return v[0];
}

/*
 * e^x, 8 at a time.  libm's expf is a call the compiler does not
 * vectorise, so it is written out: x = n ln2 + r, |r| <= ln2/2, ln2 split
 * in two so that n ln2 is exact; e^r by a degree-6 polynomial (fitted for
 * least relative error on that interval: 2e-9, so rounding dominates);
 * 2^n built in the exponent bits.  Adding 1.5 * 2^23 rounds x log2(e) to
 * the integer n and leaves n in the low bits of t, so that a shift by 23
 * puts n + 127 in the exponent field.  Within 2 ulp of expf.  x is first
 * clamped to [-88, 88]: from about -87.7 down (so for -inf too) n is
 * -127, an exponent field of 0, and the result is exactly 0; from 88 up
 * it is about 1.65e38, finite.  NaN stays NaN.
 */
static inline v8f
exp8(v8f x)
{
    v8f t, n, r, p;

    x = max8(splat8(-88.0f), min8(splat8(88.0f), x));
    t = x * 1.44269504089f + 12582912.0f;
    n = t - 12582912.0f;
    r = (x - n * 0.693145751953125f) - n * 1.42860677e-6f;
    p = 1.0f + r * (1.000000032f + r * (0.4999999421f + r * (0.1666643126f
        + r * (0.04166800203f + r * (0.008374155598f
        + r * 0.001384365469f)))));
    return p * (v8f) (((v8u) t << 23) + (127u << 23));
}

float
k_exp(float x)
{
    return exp8(splat8(x))[0];
}

/*
 * Greedy sampling's argmax, 8 lanes at a time: each lane keeps its
 * largest value and, on ties, its first index (strict >), then the lanes
 * are merged by value, then index.  Hence the first index of the maximum,
 * as the plain loop finds it.  NaNs never win (the plain loop's only
 * difference: it returns 0 when x[0] is NaN).
 */
int
k_argmax(const float *x, int n)
{
    v8f best = splat8(-INFINITY);
    v8i at = { 0 }, idx = { 0, 1, 2, 3, 4, 5, 6, 7 };
    float bv;
    int i, j, bi;

    for (i = 0; i + 8 <= n; i += 8, idx += 8) {
        v8f v = load8(x + i);
        v8i gt = v > best;
        best = select8(gt, v, best);
        at = (at & ~gt) | (idx & gt);
    }
    bv = best[0];
    bi = at[0];
    for (j = 1; j < 8; j++) {
        if (best[j] > bv || (best[j] == bv && at[j] < bi)) {
            bv = best[j];
            bi = at[j];
        }
    }
    for (; i < n; i++) {
        if (x[i] > bv) {
            bv = x[i];
            bi = i;
        }
    }
    return bi;
}

float
k_dot(const float *a, const float *b, int n)
{
    v8f acc = { 0 };
    int n8 = n & ~7, i;
    float s;

    for (i = 0; i < n8; i += 8) {
        acc += load8(a + i) * load8(b + i);
    }
    s = hsum8(acc);
    for (; i < n; i++) {
        s += a[i] * b[i];
    }
    return s;
}

/*
 * The matmul works on weights packed in panels of K_PANEL output columns:
 * a panel holds, for each k, the K_PANEL weights w[p*K_PANEL + j][k] side
 * by side (zeros past N).  One k step of a panel is then two vector loads,
 * and an output is a plain running sum over k, in order, kept in a
 * register: no horizontal sums, and every output is computed the same
 * way in whatever tile it falls.
 *
 * k is cut into blocks of MM_KC and the packed matrix is stored block by
 * block: [k block][panel][k in block][K_PANEL].  A pass over one k block
 * of all panels, the order the matmul goes in, then reads the weights
 * front to back, which the hardware prefetcher streams best.
 */
#define MM_KC  256

size_t
k_matmul_packed_size(int N, int K)
{
    return (size_t) ((N + K_PANEL - 1) / K_PANEL) * K_PANEL * K;
}

void
k_matmul_pack(float *wp, const float *w, int N, int K)
{
    int n_pad = (N + K_PANEL - 1) / K_PANEL * K_PANEL, k0, len, n, k;

    for (k0 = 0; k0 < K; k0 += MM_KC) {
        len = K - k0 < MM_KC ? K - k0 : MM_KC;
        for (n = 0; n < n_pad; n++) {
            /* panel n / K_PANEL of this block, column n % K_PANEL */
            float *dst = wp + (size_t) k0 * n_pad
                         + (size_t) (n / K_PANEL) * len * K_PANEL
                         + n % K_PANEL;
            for (k = 0; k < len; k++) {
                dst[(size_t) k * K_PANEL] = n < N ? w[(size_t) n * K + k0 + k]
                                                  : 0.0f;
            }
        }
    }
}

/*
 * One register tile: R input rows times P panels (R*P*2 accumulators),
 * over the len values of k from k0 on; wp is the first panel's part of
 * that k block, the next panels follow at len * K_PANEL floats.  Each
 * weight vector loaded serves R rows; each input value serves P panels.
 * Accumulators start at 0 for k0 == 0, else from what the previous k
 * block left in out; cols: valid columns of the last panel.  Always
 * inlined with constant R and P, so that the accumulators live in
 * registers.
 */
#define MM_RMAX  6
#define MM_PMAX  4

static inline __attribute__((always_inline)) void
mm_tile(float *out, const float *in, const float *wp, int K, int N, int k0,
    int len, int cols, int R, int P)
{
    v8f acc[MM_RMAX][MM_PMAX][2];
    float tmp[K_PANEL];
    int r, p, k, j;

    for (r = 0; r < R; r++) {
        for (p = 0; p < P; p++) {
            const float *o = out + (size_t) r * N + p * K_PANEL;
            int n = p == P - 1 ? cols : K_PANEL;
            if (k0 == 0) {
                acc[r][p][0] = acc[r][p][1] = splat8(0.0f);
                continue;
            }
            if (n < K_PANEL) {                  /* the ragged last panel */
                for (j = 0; j < K_PANEL; j++) {
                    tmp[j] = j < n ? o[j] : 0.0f;
                }
                o = tmp;
            }
            acc[r][p][0] = load8(o);
            acc[r][p][1] = load8(o + 8);
        }
    }
    for (k = 0; k < len; k++) {
        v8f w0[MM_PMAX], w1[MM_PMAX];
        for (p = 0; p < P; p++) {
            const float *wk = wp + ((size_t) p * len + k) * K_PANEL;
            w0[p] = load8(wk);
            w1[p] = load8(wk + 8);
        }
        for (r = 0; r < R; r++) {
            v8f x = splat8(in[(size_t) r * K + k0 + k]);
            for (p = 0; p < P; p++) {
                acc[r][p][0] += x * w0[p];
                acc[r][p][1] += x * w1[p];
            }
        }
    }
    for (r = 0; r < R; r++) {
        for (p = 0; p < P; p++) {
            float *o = out + (size_t) r * N + p * K_PANEL;
            int n = p == P - 1 ? cols : K_PANEL;
            if (n == K_PANEL) {
                store8(o, acc[r][p][0]);
                store8(o + 8, acc[r][p][1]);
                continue;
            }
            store8(tmp, acc[r][p][0]);
            store8(tmp + 8, acc[r][p][1]);
            for (j = 0; j < n; j++) {
                o[j] = tmp[j];
            }
        }
    }
}

/*
 * A k block at a time (its part of a panel is 16 KiB, in L1), every
 * panel passes over the input rows' block (in L2): the weights stream
 * from memory once per call however large B is.  Rows go six at a time
 * (12 sums, 2 weight loads and 6 broadcasts per 12 multiply-adds), and
 * what is left in fours, twos (two panels at a time) and a last single
 * row (up to four panels at a time): every tile keeps at least 8
 * independent sums going.  Any tile computes an output the same way (the
 * running sum over k, in order), so which tile a row falls in does not
 * change its bits.
 */
void
k_matmul_cols(float *out, const float *in, const float *wp, int B, int K,
    int N, int n0, int n1)
{
    int n_pad = (N + K_PANEL - 1) / K_PANEL * K_PANEL;
    int p0 = n0 / K_PANEL, p1 = (n1 + K_PANEL - 1) / K_PANEL;
    int k0, len, p, b;

    for (k0 = 0; k0 < K; k0 += len) {
        const float *wb = wp + (size_t) k0 * n_pad;     /* this k block */
        len = K - k0 < MM_KC ? K - k0 : MM_KC;
        for (p = p0; p < p1; p += MM_PMAX) {
            int np = p1 - p < MM_PMAX ? p1 - p : MM_PMAX, q;
            /* valid columns of panel i: all but maybe the very last */
#define COLS(i)  ((i) == p1 - 1 ? n1 - (i) * K_PANEL : K_PANEL)
#define AT(b, i) out + (size_t) (b) * N + (size_t) (i) * K_PANEL,         \
                 in + (size_t) (b) * K, wb + (size_t) (i) * len * K_PANEL, \
                 K, N, k0, len
            for (b = 0; b + 6 <= B; b += 6) {
                for (q = p; q < p + np; q++) {
                    mm_tile(AT(b, q), COLS(q), 6, 1);
                }
            }
            if (b + 4 <= B) {
                for (q = p; q < p + np; q++) {
                    mm_tile(AT(b, q), COLS(q), 4, 1);
                }
                b += 4;
            }
            if (b + 2 <= B) {
                for (q = p; q + 2 <= p + np; q += 2) {
                    mm_tile(AT(b, q), COLS(q + 1), 2, 2);
                }
                if (q < p + np) {
                    mm_tile(AT(b, q), COLS(q), 2, 1);
                }
                b += 2;
            }
            if (b < B) {
                int cols = COLS(p + np - 1);
                switch (np) {
                case 4: mm_tile(AT(b, p), cols, 1, 4); break;
                case 3: mm_tile(AT(b, p), cols, 1, 3); break;
                case 2: mm_tile(AT(b, p), cols, 1, 2); break;
                default: mm_tile(AT(b, p), cols, 1, 1); break;
                }
            }
#undef COLS
#undef AT
        }
    }
}

void
k_matmul(float *out, const float *in, const float *wp, int B, int K, int N)
{
    k_matmul_cols(out, in, wp, B, K, N, 0, N);
}

void
k_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    float scale = 1.0f / sqrtf(k_dot(x, x, n) / (float) n + eps);
    int i;

    for (i = 0; i < n; i++) {
        out[i] = w[i] * (x[i] * scale);
    }
}

void
k_rope_angles(float *cos_out, float *sin_out, int n, int pos,
    const float *inv_freq)
{
    int i;

    for (i = 0; i < n; i++) {
        float a = (float) pos * inv_freq[i];
        cos_out[i] = cosf(a);
        sin_out[i] = sinf(a);
    }
}

void
k_rope(float *x, int n_heads, int head_dim, int rope_dim, int interleaved,
    const float *cos_t, const float *sin_t)
{
    int half = rope_dim / 2, h, i;

    for (h = 0; h < n_heads; h++) {
        float *x0 = x + (size_t) h * head_dim, *x1 = x0 + half;
        if (interleaved) {
            /* GLM: the pairs are side by side */
            for (i = 0; i < half; i++) {
                float a = x0[2 * i], b = x0[2 * i + 1];
                x0[2 * i] = a * cos_t[i] - b * sin_t[i];
                x0[2 * i + 1] = b * cos_t[i] + a * sin_t[i];
            }
            continue;
        }
        for (i = 0; i + 4 <= half; i += 4) {
            v4f a = *(v4f *) (x0 + i), b = *(v4f *) (x1 + i);
            v4f c = *(const v4f *) (cos_t + i);
            v4f sn = *(const v4f *) (sin_t + i);
            *(v4f *) (x0 + i) = a * c - b * sn;
            *(v4f *) (x1 + i) = b * c + a * sn;
        }
        for (; i < half; i++) {
            float a = x0[i], b = x1[i];
            x0[i] = a * cos_t[i] - b * sin_t[i];
            x1[i] = b * cos_t[i] + a * sin_t[i];
        }
    }
}

/* silu(g) * u = g / (1 + e^-g) * u, 8 at a time */
static inline v8f
swiglu8(v8f g, v8f u)
{
    return g / (1.0f + exp8(-g)) * u;
}

void
k_swiglu(float *out, const float *gate, const float *up, int n)
{
    float g[8] = { 0 }, u[8] = { 0 }, o[8];
    int i;

    for (i = 0; i + 8 <= n; i += 8) {
        store8(out + i, swiglu8(load8(gate + i), load8(up + i)));
    }
    if (i < n) {                        /* the last n % 8, padded */
        memcpy(g, gate + i, (n - i) * sizeof(float));
        memcpy(u, up + i, (n - i) * sizeof(float));
        store8(o, swiglu8(load8(g), load8(u)));
        memcpy(out + i, o, (n - i) * sizeof(float));
    }
}

void
k_add(float *x, const float *y, int n)
{
    int i;

    for (i = 0; i < n; i++) {
        x[i] += y[i];
    }
}

/*
 * The softmax of attention scores, over whole vectors: n is a multiple
 * of 8, and the padding past the real scores holds -inf, which comes out
 * as exactly 0 (exp8 of -inf is 0) and leaves max and sum alone.
 * All rows go through one pass after the other (maxima, then exps and
 * sums), so that the rows' dependency chains overlap; the division by
 * the sum is left to the caller, who has fewer values to scale.
 */
void
k_softmax_rows(float *x, int rows, int n, float *inv)
{
    int r0, r, i;

    for (r = 0; r < rows; r++) {
        const float *xr = x + (size_t) r * n;
        v8f m8 = load8(xr);
        for (i = 8; i < n; i += 8) {
            m8 = max8(load8(xr + i), m8);
        }
        inv[r] = hmax8(m8);                     /* the max, for now */
    }
    /* eight rows at a time, their sums left as vectors until all eight
     * rows' exps are issued: the horizontal sum and the division of one
     * row do not hold up the next row's exps */
    for (r0 = 0; r0 < rows; r0 += 8) {
        int nr = rows - r0 < 8 ? rows - r0 : 8;
        v8f s8[8];
        for (r = 0; r < nr; r++) {
            float *xr = x + (size_t) (r0 + r) * n;
            v8f max = splat8(inv[r0 + r]);
            s8[r] = splat8(0.0f);
            for (i = 0; i < n; i += 8) {
                v8f e = exp8(load8(xr + i) - max);
                store8(xr + i, e);
                s8[r] += e;
            }
        }
        for (r = 0; r < nr; r++) {
            inv[r0 + r] = 1.0f / hsum8(s8[r]);
        }
    }
}

void
k_kv_store(float *k_block, float *v_block, int row, const float *k,
    const float *v, int n_kv_heads, int head_dim, int block_size)
{
    int kv_dim = n_kv_heads * head_dim, i;

    /* K transposed: element i of the row goes to column `row` of line i;
     * V as it is, one row per position */
    for (i = 0; i < kv_dim; i++) {
        k_block[(size_t) i * block_size + row] = k[i];
    }
    memcpy(v_block + (size_t) row * kv_dim, v, kv_dim * sizeof(float));
}

/*
 * In passes over all heads: scores, softmax, weighted sum of V.  Each
 * pass is many independent chains (heads, positions), so that the long
 * dependency chain of one head's softmax overlaps with the others'
 * instead of stalling between its scores and its sum.  Blocks are the
 * outer loop, heads the inner one: the work of finding a block is shared
 * by all heads, and the heads that share a kv head use its K and V one
 * after the other, so that they come from memory once (the other heads
 * find them in L1).
 */
static inline __attribute__((always_inline)) void
attend(float *out, const float *q, const float *k_cache,
    const float *v_cache, size_t block_stride, const int32_t *blocks,
    int block_size, int n_pos, int n_heads, int n_kv_heads, int head_dim,
    float *scratch)
{
    int group = n_heads / n_kv_heads, kv_dim = n_kv_heads * head_dim;
    int n_pad = (n_pos + 7) & ~7, n_blocks, g, h, b, i, j, d;
    float scale = 1.0f / sqrtf((float) head_dim);
    float *att = scratch;                       /* [n_heads][n_pad] */
    float *qs = att + (size_t) n_heads * n_pad; /* [n_heads][head_dim] */
    float *inv = qs + (size_t) n_heads * head_dim;  /* [n_heads] */
    v8i iota = { 0, 1, 2, 3, 4, 5, 6, 7 };

    n_blocks = (n_pos + block_size - 1) / block_size;
    for (i = 0; i < n_heads * head_dim; i++) {
        qs[i] = q[i] * scale;
    }

    /* scores, 8 positions at a time: with K transposed, each dimension
     * of the head adds one vector.  Two sums (even and odd dimensions) so
     * the adds do not queue up.  The last vector may run past n_pos into
     * rows not written yet (block_size is a multiple of 8, so it stays in
     * the block): those lanes score -inf. */
    for (b = 0; b < n_blocks; b++) {
        const float *kb = k_cache + (size_t) blocks[b] * block_stride;
        int t0 = b * block_size;
        int n = n_pos - t0 < block_size ? n_pos - t0 : block_size;

        for (i = 0; i < n; i += 8) {
            v8i live = (t0 + i + iota) < n_pos;
            for (g = 0; g < n_kv_heads; g++) {
                const float *kt = kb + (size_t) g * head_dim * block_size + i;
                for (h = g * group; h < (g + 1) * group; h++) {
                    const float *qh = qs + (size_t) h * head_dim;
                    v8f s0 = splat8(0.0f), s1 = splat8(0.0f);
                    for (d = 0; d < head_dim; d += 2) {
                        s0 += qh[d] * load8(kt + (size_t) d * block_size);
                        s1 += qh[d + 1]
                              * load8(kt + (size_t) (d + 1) * block_size);
                    }
                    store8(att + (size_t) h * n_pad + t0 + i,
                           select8(live, s0 + s1, splat8(-INFINITY)));
                }
            }
        }
    }

    k_softmax_rows(att, n_heads, n_pad, inv);

    /* out = sum over t of e[t] v[t] / sum: V rows hold a head's
     * dimensions side by side, 8 at a time, over exactly the n_pos
     * positions.  Per block, a sum for even and one for odd positions,
     * added to what the blocks before left in out. */
    for (b = 0; b < n_blocks; b++) {
        const float *vb = v_cache + (size_t) blocks[b] * block_stride;
        int t0 = b * block_size;
        int n = n_pos - t0 < block_size ? n_pos - t0 : block_size;

        for (g = 0; g < n_kv_heads; g++) {
            const float *v = vb + (size_t) g * head_dim;
            for (h = g * group; h < (g + 1) * group; h++) {
                const float *e = att + (size_t) h * n_pad + t0;
                float *oh = out + (size_t) h * head_dim;

                for (d = 0; d + 8 <= head_dim; d += 8) {
                    v8f a0 = b > 0 ? load8(oh + d) : splat8(0.0f);
                    v8f a1 = splat8(0.0f);
                    for (j = 0; j + 2 <= n; j += 2) {
                        a0 += e[j] * load8(v + (size_t) j * kv_dim + d);
                        a1 += e[j + 1]
                              * load8(v + (size_t) (j + 1) * kv_dim + d);
                    }
                    if (j < n) {
                        a0 += e[j] * load8(v + (size_t) j * kv_dim + d);
                    }
                    store8(oh + d, a0 + a1);
                }
                for (; d < head_dim; d++) {     /* head_dim % 8 */
                    float a0 = b > 0 ? oh[d] : 0.0f, a1 = 0.0f;
                    for (j = 0; j + 2 <= n; j += 2) {
                        a0 += e[j] * v[(size_t) j * kv_dim + d];
                        a1 += e[j + 1] * v[(size_t) (j + 1) * kv_dim + d];
                    }
                    if (j < n) {
                        a0 += e[j] * v[(size_t) j * kv_dim + d];
                    }
                    oh[d] = a0 + a1;
                }
            }
        }
    }
    for (h = 0; h < n_heads; h++) {
        for (d = 0; d < head_dim; d++) {
            out[(size_t) h * head_dim + d] *= inv[h];
        }
    }
}

/* attend() with head_dim a constant for the usual sizes, so that the
 * loops over a head's dimensions unroll: with small heads (8, 16) they
 * are a good part of the work */
void
k_attention(float *out, const float *q, const float *k_cache,
    const float *v_cache, size_t block_stride, const int32_t *blocks,
    int block_size, int n_pos, int n_heads, int n_kv_heads, int head_dim,
    float *scratch)
{
#define ATTEND(hd)  attend(out, q, k_cache, v_cache, block_stride, blocks, \
                           block_size, n_pos, n_heads, n_kv_heads, hd,      \
                           scratch)
    switch (head_dim) {
    case 8: ATTEND(8); break;
    case 16: ATTEND(16); break;
    case 32: ATTEND(32); break;
    case 64: ATTEND(64); break;
    case 128: ATTEND(128); break;
    default: ATTEND(head_dim); break;
    }
#undef ATTEND
}
