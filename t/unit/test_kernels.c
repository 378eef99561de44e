/*
 * test_kernels.c - every CPU kernel against the obvious loop (in double
 * where a sum is involved) on random data, odd sizes included; paged
 * attention against contiguous attention through a shuffled block table;
 * and the batching properties the engine relies on (a row's matmul result
 * does not depend on the batch or on the column split between threads).
 */

#include <stdint.h>

#include "unit.h"
#include "kernels_cpu.h"

static uint64_t rng_state = 12345;

static float
frand(void)                     /* uniform in [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float) ((rng_state >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static float *
rand_vec(size_t n)
{
    float *v = malloc(n * sizeof(float) + 1);
    size_t i;

    for (i = 0; i < n; i++) {
        v[i] = frand();
    }
    return v;
}

/* |a - b| relative to the size of the terms that made b */
static double
max_err(const float *a, const double *b, const double *scale, size_t n)
{
    double m = 0;
    size_t i;

    for (i = 0; i < n; i++) {
        double e = fabs(a[i] - b[i]) / (1.0 + (scale ? scale[i] : fabs(b[i])));
        m = e > m ? e : m;
    }
    return m;
}

/* --- matmul ---------------------------------------------------------- */

static void
test_matmul(void)
{
    static const int shapes[][3] = {            /* B, K, N */
        { 1, 1, 1 }, { 1, 7, 5 }, { 3, 17, 33 }, { 4, 64, 64 },
        { 5, 172, 64 }, { 7, 300, 45 }, { 16, 64, 512 }, { 9, 513, 19 },
        { 2, 8, 16 }, { 6, 1000, 70 }, { 1, 64, 172 }, { 13, 33, 200 },
        /* rows in tiles of 6, 4, 2 and 1, in every mix */
        { 11, 40, 70 }, { 14, 64, 128 }, { 15, 7, 33 }, { 12, 172, 64 },
        { 17, 64, 344 },
    };
    size_t si;

    for (si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
        int B = shapes[si][0], K = shapes[si][1], N = shapes[si][2];
        float *in = rand_vec((size_t) B * K), *w = rand_vec((size_t) N * K);
        float *wp = malloc(k_matmul_packed_size(N, K) * sizeof(float));
        float *out = malloc((size_t) B * N * sizeof(float));
        float *part = malloc((size_t) B * N * sizeof(float));
        float *row = malloc((size_t) N * sizeof(float));
        double *ref = malloc((size_t) B * N * sizeof(double));
        double *mag = malloc((size_t) B * N * sizeof(double));
        int b, n, k, splits, same_rows = 1;

        /* naive: the obvious triple loop, in double */
        for (b = 0; b < B; b++) {
            for (n = 0; n < N; n++) {
                double s = 0, a = 0;
                for (k = 0; k < K; k++) {
                    s += (double) in[b * K + k] * w[(size_t) n * K + k];
                    a += fabs((double) in[b * K + k] * w[(size_t) n * K + k]);
                }
                ref[b * N + n] = s;
                mag[b * N + n] = a;
            }
        }
        k_matmul_pack(wp, w, N, K);
        k_matmul(out, in, wp, B, K, N);
        CHECK(max_err(out, ref, mag, (size_t) B * N) < 1e-6,
              "matmul B=%d K=%d N=%d: error %g", B, K, N,
              max_err(out, ref, mag, (size_t) B * N));

        /* a row alone gives the same bits as in the batch */
        for (b = 0; b < B; b++) {
            k_matmul(row, in + (size_t) b * K, wp, 1, K, N);
            same_rows &= memcmp(row, out + (size_t) b * N,
                                N * sizeof(float)) == 0;
        }
        CHECK(same_rows, "matmul B=%d K=%d N=%d: a row alone differs", B, K,
              N);

        /* columns split as threads split them give the same bits */
        for (splits = 2; splits <= 5; splits++) {
            int panels = (N + K_PANEL - 1) / K_PANEL, p;
            memset(part, 0xff, (size_t) B * N * sizeof(float));
            for (p = 0; p < splits; p++) {
                int n0 = panels * p / splits * K_PANEL;
                int n1 = panels * (p + 1) / splits * K_PANEL;
                n1 = n1 < N ? n1 : N;
                if (n0 < n1) {
                    k_matmul_cols(part, in, wp, B, K, N, n0, n1);
                }
            }
            CHECK(memcmp(part, out, (size_t) B * N * sizeof(float)) == 0,
                  "matmul B=%d K=%d N=%d in %d column ranges differs", B, K,
                  N, splits);
        }
        free(in); free(w); free(wp); free(out); free(part); free(row);
        free(ref); free(mag);
    }
    printf("matmul: %zu shapes\n", sizeof(shapes) / sizeof(shapes[0]));
}

/* --- the small kernels ------------------------------------------------ */

static void
test_elementwise(void)
{
    static const int sizes[] = { 1, 5, 8, 13, 64, 172, 513 };
    size_t si;
    int i;

    for (si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
        int n = sizes[si];
        float *x = rand_vec(n), *y = rand_vec(n), *w = rand_vec(n);
        float *out = malloc(n * sizeof(float)), *x2 = malloc(n * 4);
        double *ref = malloc(n * sizeof(double)), ss = 0, dot = 0, mx, sum;

        /* dot */
        for (i = 0; i < n; i++) {
            dot += (double) x[i] * y[i];
        }
        CHECK_CLOSE(k_dot(x, y, n), dot, 1e-5, "dot");

        /* rmsnorm: x / sqrt(mean(x^2) + eps) * w */
        for (i = 0; i < n; i++) {
            ss += (double) x[i] * x[i];
        }
        for (i = 0; i < n; i++) {
            ref[i] = x[i] / sqrt(ss / n + 1e-5) * w[i];
        }
        k_rmsnorm(out, x, w, n, 1e-5f);
        CHECK(max_err(out, ref, NULL, n) < 1e-5, "rmsnorm n=%d: %g", n,
              max_err(out, ref, NULL, n));
        memcpy(x2, x, n * 4);
        k_rmsnorm(x2, x2, w, n, 1e-5f);
        CHECK(memcmp(x2, out, n * 4) == 0, "rmsnorm in place n=%d", n);

        /* swiglu: silu(g) * u, silu(g) = g / (1 + e^-g); gates up to +-20 */
        for (i = 0; i < n; i++) {
            double g = 20.0 * x[i];
            ref[i] = g / (1.0 + exp(-g)) * y[i];
            x2[i] = (float) g;
        }
        k_swiglu(out, x2, y, n);
        CHECK(max_err(out, ref, NULL, n) < 1e-6, "swiglu n=%d: %g", n,
              max_err(out, ref, NULL, n));

        /* add */
        memcpy(x2, x, n * 4);
        k_add(x2, y, n);
        for (i = 0; i < n; i++) {
            ref[i] = (double) x[i] + y[i];
        }
        CHECK(max_err(x2, ref, NULL, n) < 1e-7, "add n=%d", n);

        /* softmax of 3 rows (each a different rotation of x), on logits
         * spread over +-30, padded with -inf to whole vectors: the padding
         * comes out exactly 0, and e * inv is the softmax of the row */
        {
            int n8 = (n + 7) & ~7, r, pad_zero = 1;
            float *sm = malloc((size_t) 3 * n8 * 4), inv[3];
            double err = 0;
            for (r = 0; r < 3; r++) {
                for (i = 0; i < n8; i++) {
                    sm[r * n8 + i] = i < n ? 30.0f * x[(i + 5 * r) % n]
                                           : -INFINITY;
                }
            }
            k_softmax_rows(sm, 3, n8, inv);
            for (r = 0; r < 3; r++) {
                mx = -INFINITY;
                sum = 0;
                for (i = 0; i < n; i++) {
                    double v = 30.0f * x[(i + 5 * r) % n];
                    mx = v > mx ? v : mx;
                }
                for (i = 0; i < n; i++) {
                    ref[i] = exp(30.0f * x[(i + 5 * r) % n] - mx);
                    sum += ref[i];
                }
                for (i = 0; i < n; i++) {
                    double e = fabs(sm[r * n8 + i] * inv[r] - ref[i] / sum);
                    err = e > err ? e : err;
                }
                for (i = n; i < n8; i++) {
                    pad_zero &= sm[r * n8 + i] == 0.0f;
                }
            }
            CHECK(err < 1e-6, "softmax n=%d: %g", n, err);
            CHECK(pad_zero, "softmax n=%d: the -inf padding is not 0", n);
            free(sm);
        }

        free(x); free(y); free(w); free(out); free(x2); free(ref);
    }

    /* exp against libm over the whole useful range */
    {
        double worst = 0;
        float x;
        for (x = -87.0f; x < 88.0f; x += 0.0013f) {
            double e = fabs(k_exp(x) - exp((double) x)) / exp((double) x);
            worst = e > worst ? e : worst;
        }
        CHECK(worst < 3e-7, "exp relative error %g", worst);
        CHECK(k_exp(0.0f) == 1.0f, "exp(0)");
        CHECK(k_exp(-100.0f) == 0.0f && k_exp(-1e30f) == 0.0f
              && k_exp(-INFINITY) == 0.0f, "exp(-big), exp(-inf)");
        CHECK(isfinite(k_exp(100.0f)) && k_exp(100.0f) > 1e38f
              && isfinite(k_exp(INFINITY)), "exp(big), exp(inf)");
        CHECK(isnan(k_exp(NAN)), "exp(nan)");
        /* where e^x is subnormal, 0 from about -87.7 down */
        for (x = -87.8f, i = 1; x > -120.0f; x -= 0.01f) {
            i &= k_exp(x) == 0.0f;
        }
        CHECK(i, "exp below -87.8 is not 0");
        printf("exp: worst relative error %.3g\n", worst);
    }
    printf("rmsnorm, swiglu, add, softmax, dot: ok\n");
}

/* greedy sampling's argmax against the plain loop: ties go to the first
 * index, at any place in the vector lanes or the tail */
static void
test_argmax(void)
{
    static const int sizes[] = { 1, 3, 8, 9, 16, 31, 512, 513 };
    size_t si;
    int i, n, ok = 1;

    for (si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
        float *x;
        int trial;
        n = sizes[si];
        x = rand_vec(n);
        for (trial = 0; trial < 200; trial++) {
            int best = 0, a = trial % n, b = (trial * 7 + 3) % n;
            for (i = 0; i < n; i++) {          /* few values: many ties */
                x[i] = (float) (int) (4.0f * frand());
            }
            x[a] = x[b] = 5.0f;                /* a tie for the max */
            if (trial % 3 == 0) {
                x[(trial * 5) % n] = -INFINITY;
            }
            for (i = 1; i < n; i++) {
                best = x[i] > x[best] ? i : best;
            }
            ok &= k_argmax(x, n) == best;
        }
        for (i = 0; i < n; i++) {               /* all equal: 0 */
            x[i] = -INFINITY;
        }
        ok &= k_argmax(x, n) == 0;
        if (n > 1) {                            /* a NaN is skipped */
            x[n - 1] = 1.0f;
            x[n / 2] = NAN;
            ok &= k_argmax(x, n) == n - 1;
        }
        free(x);
    }
    CHECK(ok, "argmax differs from the plain loop");
    printf("argmax: ok\n");
}

static void
test_rope(void)
{
    /* head_dim, heads, position, rotary dims, interleaved (GLM) */
    static const int dims[][5] = { { 8, 4, 0, 8, 0 }, { 2, 1, 7, 2, 0 },
                                   { 64, 3, 511, 64, 0 },
                                   { 128, 2, 4095, 128, 0 },
                                   { 6, 5, 100000, 6, 0 },
                                   { 64, 3, 511, 32, 1 },
                                   { 48, 2, 1000, 24, 1 },
                                   { 16, 4, 77, 16, 1 },
                                   { 32, 2, 300, 8, 1 },
                                   { 24, 2, 9, 12, 0 } };
    size_t di;
    int i, h;

    for (di = 0; di < sizeof(dims) / sizeof(dims[0]); di++) {
        int hd = dims[di][0], nh = dims[di][1], pos = dims[di][2];
        int rot = dims[di][3], il = dims[di][4], half = rot / 2;
        float theta = 10000.0f;
        float *x = rand_vec((size_t) nh * hd), *y = malloc(nh * hd * 4);
        float *cs = malloc(half * 4), *sn = malloc(half * 4);
        float *inv = malloc(half * 4);
        double *ref = malloc(nh * hd * sizeof(double));

        /* pair i at angle pos * theta^(-2i/rot) (inv_freq and the angle in
         * f32, as transformers computes them); Hugging Face rotate_half
         * pairs element i with i + rot/2, GLM's pairs 2i with 2i + 1; the
         * dims past rot pass unchanged */
        for (i = 0; i < half; i++) {
            inv[i] = (float) (1.0 / pow(theta, 2.0 * i / rot));
        }
        for (h = 0; h < nh; h++) {
            for (i = 0; i < hd; i++) {
                ref[h * hd + i] = x[h * hd + i];
            }
            for (i = 0; i < half; i++) {
                double a = (float) pos * inv[i];
                int i0 = il ? 2 * i : i, i1 = il ? 2 * i + 1 : i + half;
                double x0 = x[h * hd + i0], x1 = x[h * hd + i1];
                ref[h * hd + i0] = x0 * cos(a) - x1 * sin(a);
                ref[h * hd + i1] = x1 * cos(a) + x0 * sin(a);
            }
        }
        memcpy(y, x, nh * hd * 4);
        k_rope_angles(cs, sn, half, pos, inv);
        k_rope(y, nh, hd, rot, il, cs, sn);
        CHECK(max_err(y, ref, NULL, nh * hd) < 2e-6, "rope hd=%d rot=%d%s "
              "pos=%d: %g", hd, rot, il ? " interleaved" : "", pos,
              max_err(y, ref, NULL, nh * hd));
        free(x); free(y); free(cs); free(sn); free(inv); free(ref);
    }
    printf("rope: ok\n");
}

/* --- attention -------------------------------------------------------- */

/* the obvious attention over contiguous K[t][kv_dim], V[t][kv_dim] */
static void
naive_attention(double *out, const float *q, const float *K, const float *V,
    int n_pos, int n_heads, int n_kv, int hd)
{
    int kv_dim = n_kv * hd, h, t, d;
    double *s = malloc(n_pos * sizeof(double));

    for (h = 0; h < n_heads; h++) {
        int kvh = h / (n_heads / n_kv);
        double mx = -1e300, sum = 0;
        for (t = 0; t < n_pos; t++) {
            double dot = 0;
            for (d = 0; d < hd; d++) {
                dot += (double) q[h * hd + d] * K[t * kv_dim + kvh * hd + d];
            }
            s[t] = dot / sqrt(hd);
            mx = s[t] > mx ? s[t] : mx;
        }
        for (t = 0; t < n_pos; t++) {
            s[t] = exp(s[t] - mx);
            sum += s[t];
        }
        for (d = 0; d < hd; d++) {
            double o = 0;
            for (t = 0; t < n_pos; t++) {
                o += s[t] / sum * V[t * kv_dim + kvh * hd + d];
            }
            out[h * hd + d] = o;
        }
    }
    free(s);
}

static void
test_attention(void)
{
    /* n_pos, n_heads, n_kv_heads, head_dim, block_size */
    static const int cases[][5] = {
        { 1, 8, 4, 8, 16 }, { 7, 8, 4, 8, 16 }, { 16, 8, 4, 8, 16 },
        { 17, 8, 8, 8, 8 }, { 100, 4, 1, 6, 8 }, { 257, 8, 2, 64, 32 },
        { 33, 2, 2, 2, 16 }, { 500, 8, 4, 8, 16 }, { 64, 6, 3, 10, 24 },
        /* the head sizes attention has a constant for, and groups of 4 */
        { 40, 8, 2, 16, 16 }, { 70, 4, 4, 32, 8 }, { 33, 16, 4, 128, 16 },
        { 9, 4, 1, 64, 8 }, { 129, 12, 3, 8, 32 },
    };
    const int n_layers = 3, layer = 1;
    size_t ci;

    for (ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
        int n_pos = cases[ci][0], nh = cases[ci][1], nkv = cases[ci][2];
        int hd = cases[ci][3], bs = cases[ci][4], kv_dim = nkv * hd;
        int n_blocks = (n_pos + bs - 1) / bs, pool = n_blocks + 3, t, i;
        /* block = n_layers x (K, V) x bs x kv_dim, like the engine's */
        size_t layer_stride = (size_t) 2 * bs * kv_dim;
        size_t block_stride = layer_stride * n_layers;
        float *cache = rand_vec(block_stride * pool);    /* garbage around */
        float *q = rand_vec((size_t) nh * hd);
        float *K = rand_vec((size_t) n_pos * kv_dim);
        float *V = rand_vec((size_t) n_pos * kv_dim);
        float *out = malloc((size_t) nh * hd * 4);
        float *scratch = malloc(K_ATTENTION_SCRATCH(n_pos, nh, hd) * 4);
        double *ref = malloc((size_t) nh * hd * sizeof(double));
        int32_t *table = malloc(pool * sizeof(int32_t));

        /* a shuffled table: logical block i lives anywhere in the pool */
        for (i = 0; i < pool; i++) {
            table[i] = i;
        }
        for (i = pool - 1; i > 0; i--) {
            int j = (int) ((frand() + 1.0f) * 0.5f * (i + 1)), tmp;
            j = j > i ? i : j;
            tmp = table[i];
            table[i] = table[j];
            table[j] = tmp;
        }
        /* scores of +-8 or so, so that softmax is not flat */
        for (i = 0; i < nh * hd; i++) {
            q[i] *= 3.0f;
        }
        for (t = 0; t < n_pos; t++) {
            float *kb = cache + (size_t) table[t / bs] * block_stride
                        + layer * layer_stride;
            k_kv_store(kb, kb + (size_t) bs * kv_dim, t % bs,
                       K + (size_t) t * kv_dim, V + (size_t) t * kv_dim, nkv,
                       hd, bs);
        }
        naive_attention(ref, q, K, V, n_pos, nh, nkv, hd);
        k_attention(out, q, cache + layer * layer_stride,
                    cache + layer * layer_stride + (size_t) bs * kv_dim,
                    block_stride, table, bs, n_pos, nh, nkv, hd, scratch);
        CHECK(max_err(out, ref, NULL, (size_t) nh * hd) < 2e-6,
              "attention n_pos=%d heads=%d/%d hd=%d bs=%d: %g", n_pos, nh,
              nkv, hd, bs, max_err(out, ref, NULL, (size_t) nh * hd));
        free(cache); free(q); free(K); free(V); free(out); free(scratch);
        free(ref); free(table);
    }
    printf("paged attention vs contiguous: %zu cases\n",
           sizeof(cases) / sizeof(cases[0]));
}

int
main(void)
{
    test_matmul();
    test_elementwise();
    test_argmax();
    test_rope();
    test_attention();
    return unit_report("test_kernels");
}
