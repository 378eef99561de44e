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

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels_cpu.h"

/* 8 floats (and ints); aligned(4) so that any float address will do */
typedef float v8f __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t v8i __attribute__((vector_size(32), aligned(4), may_alias));

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

/*
 * e^x, 8 at a time.  libm's expf is a call the compiler does not
 * vectorise (and the build does not let it treat float compares as
 * side-effect free), so it is written out: x = n ln2 + r, |r| <= ln2/2,
 * ln2 split in two so that n ln2 is exact; e^r by its Taylor series to
 * degree 7 (truncation error below 1e-8); 2^n built in the exponent bits.
 * Within 2 ulp of expf; 0 below -87.3, where e^x would be subnormal.
 */
static inline v8f
exp8(v8f x)
{
    v8f xc = select8(x > 88.0f, splat8(88.0f), x);
    v8f n, r, p;
    v8i e;

    xc = select8(xc < -87.3f, splat8(-87.3f), xc);
    /* round to nearest integer: adding 1.5 * 2^23 drops the fraction */
    n = (xc * 1.44269504089f + 12582912.0f) - 12582912.0f;
    r = (xc - n * 0.693145751953125f) - n * 1.42860677e-6f;
    p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24
        + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    e = (__builtin_convertvector(n, v8i) + 127) << 23;
    return select8(x < -87.3f, splat8(0.0f), p * (v8f) e);
}

float
k_exp(float x)
{
    return exp8(splat8(x))[0];
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
#define MM_RMAX  4
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
 * from memory once per call however large B is.  Rows go four at a
 * time; a leftover row takes up to four panels at a time, so that a
 * single-row (decode) matmul still has 8 independent sums.
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
            for (b = 0; b + MM_RMAX <= B; b += MM_RMAX) {
                for (q = p; q < p + np; q++) {
                    mm_tile(AT(b, q), COLS(q), MM_RMAX, 1);
                }
            }
            for (; b < B; b++) {
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
k_rope_angles(float *cos_out, float *sin_out, int head_dim, int pos,
    float theta)
{
    int i;

    /* transformers: inv_freq in f32, angle = pos * inv_freq in f32 */
    for (i = 0; i < head_dim / 2; i++) {
        float inv = (float) (1.0 / pow(theta, (double) (2 * i) / head_dim));
        float a = (float) pos * inv;
        cos_out[i] = cosf(a);
        sin_out[i] = sinf(a);
    }
}

void
k_rope(float *x, int n_heads, int head_dim, const float *cos_t,
    const float *sin_t)
{
    int half = head_dim / 2, h, i;

    for (h = 0; h < n_heads; h++) {
        float *x0 = x + (size_t) h * head_dim, *x1 = x0 + half;
        for (i = 0; i < half; i++) {
            float a = x0[i], b = x1[i];
            x0[i] = a * cos_t[i] - b * sin_t[i];
            x1[i] = b * cos_t[i] + a * sin_t[i];
        }
    }
}

void
k_swiglu(float *out, const float *gate, const float *up, int n)
{
    int i = 0;

    for (; i + 8 <= n; i += 8) {
        v8f g = load8(gate + i);
        store8(out + i, g / (1.0f + exp8(-g)) * load8(up + i));
    }
    for (; i < n; i++) {
        out[i] = gate[i] / (1.0f + k_exp(-gate[i])) * up[i];
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

void
k_softmax(float *x, int n)
{
    v8f m8 = splat8(x[0]), s8 = splat8(0.0f);
    float max, sum, inv;
    int i, n8 = n & ~7;

    for (i = 0; i < n8; i += 8) {
        v8f v = load8(x + i);
        m8 = select8(v > m8, v, m8);
    }
    max = x[0];
    for (i = 0; i < 8; i++) {
        max = m8[i] > max ? m8[i] : max;
    }
    for (i = n8; i < n; i++) {
        max = x[i] > max ? x[i] : max;
    }

    for (i = 0; i < n8; i += 8) {
        v8f e = exp8(load8(x + i) - max);
        store8(x + i, e);
        s8 += e;
    }
    sum = hsum8(s8);
    for (i = n8; i < n; i++) {
        x[i] = k_exp(x[i] - max);
        sum += x[i];
    }

    inv = 1.0f / sum;
    for (i = 0; i < n; i++) {
        x[i] *= inv;
    }
}

void
k_kv_store(float *k_block, float *v_block, int row, const float *k,
    const float *v, int n_kv_heads, int head_dim, int block_size)
{
    int kv_dim = n_kv_heads * head_dim, i;

    /* transposed: element i of the row goes to column `row` of line i */
    for (i = 0; i < kv_dim; i++) {
        k_block[(size_t) i * block_size + row] = k[i];
        v_block[(size_t) i * block_size + row] = v[i];
    }
}

void
k_attention(float *out, const float *q, const float *k_cache,
    const float *v_cache, size_t block_stride, const int32_t *blocks,
    int block_size, int n_pos, int n_heads, int n_kv_heads, int head_dim,
    float *scratch)
{
    int group = n_heads / n_kv_heads, n_blocks, h, b, i, d;
    float scale = 1.0f / sqrtf((float) head_dim);
    float *att = scratch;                               /* [n_pos] */
    float *qs = scratch + n_pos;                        /* [head_dim] */

    n_blocks = (n_pos + block_size - 1) / block_size;

    for (h = 0; h < n_heads; h++) {
        size_t kv_off = (size_t) (h / group) * head_dim * block_size;
        float *oh = out + (size_t) h * head_dim;

        for (d = 0; d < head_dim; d++) {
            qs[d] = q[(size_t) h * head_dim + d] * scale;
        }

        /* scores, block by block and 8 positions at a time: with K
         * transposed, each dimension of the head adds one vector.  Two
         * sums (even and odd dimensions) so the adds do not queue up.
         * block_size is a multiple of 8: only the last block has a tail. */
        for (b = 0; b < n_blocks; b++) {
            const float *kt = k_cache + (size_t) blocks[b] * block_stride
                              + kv_off;
            int t0 = b * block_size;
            int n = n_pos - t0 < block_size ? n_pos - t0 : block_size;

            for (i = 0; i + 8 <= n; i += 8) {
                v8f s0 = splat8(0.0f), s1 = splat8(0.0f);
                for (d = 0; d < head_dim; d += 2) {
                    s0 += qs[d] * load8(kt + (size_t) d * block_size + i);
                    s1 += qs[d + 1]
                          * load8(kt + (size_t) (d + 1) * block_size + i);
                }
                store8(att + t0 + i, s0 + s1);
            }
            for (; i < n; i++) {
                float s0 = 0.0f, s1 = 0.0f;
                for (d = 0; d < head_dim; d += 2) {
                    s0 += qs[d] * kt[(size_t) d * block_size + i];
                    s1 += qs[d + 1] * kt[(size_t) (d + 1) * block_size + i];
                }
                att[t0 + i] = s0 + s1;
            }
        }
        k_softmax(att, n_pos);

        /* out[d] = sum over t of p[t] v[t][d]: V is transposed too, so
         * this is a dot product over positions, in 8-lane partial sums;
         * four dimensions per pass keep the sums in registers */
        for (d = 0; d < head_dim; d += 4) {
            int nd = head_dim - d < 4 ? head_dim - d : 4;  /* 4 or 2 */
            v8f a0 = splat8(0.0f), a1 = a0, a2 = a0, a3 = a0;
            float tail[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
            int j;

            for (b = 0; b < n_blocks; b++) {
                const float *vt = v_cache + (size_t) blocks[b] * block_stride
                                  + kv_off + (size_t) d * block_size;
                const float *p = att + (size_t) b * block_size;
                int n = n_pos - b * block_size;
                n = n < block_size ? n : block_size;

                for (i = 0; i + 8 <= n; i += 8) {
                    v8f pv = load8(p + i);
                    a0 += pv * load8(vt + i);
                    a1 += pv * load8(vt + block_size + i);
                    if (nd == 4) {
                        a2 += pv * load8(vt + 2 * block_size + i);
                        a3 += pv * load8(vt + 3 * block_size + i);
                    }
                }
                for (; i < n; i++) {            /* the last block's tail */
                    for (j = 0; j < nd; j++) {
                        tail[j] += p[i] * vt[(size_t) j * block_size + i];
                    }
                }
            }
            oh[d] = hsum8(a0) + tail[0];
            oh[d + 1] = hsum8(a1) + tail[1];
            if (nd == 4) {
                oh[d + 2] = hsum8(a2) + tail[2];
                oh[d + 3] = hsum8(a3) + tail[3];
            }
        }
    }
}
