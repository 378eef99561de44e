/*
 * test_cuda_kernels.c - each kernel of kernels_cuda.h against a plain
 * CPU reference written here (double where it sums), on fresh random
 * data, in every storage dtype: embedding, residual add + RMSNorm, RoPE
 * + KV store, paged attention (prefill chunk, long decode, first token;
 * GQA, MQA with more heads than one block takes, head_dim 8 to 256; the
 * tensor-core prefill kernel on prompts up to 2048 and later chunks in
 * mixed steps),
 * SwiGLU, and device sampling against sampler.c.  Errors are
 * ||gpu - ref|| / ||ref||; outputs are poisoned (NaN) first, so an
 * unwritten element fails.
 */

#include <stdint.h>
#include <cuda_runtime_api.h>

#include "unit.h"
#include "gpu_test.h"
#include "kernels_cuda.h"
#include "sampler.h"

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static float
frand(void)                     /* uniform in [-1, 1) */
{
    return (float) (sampler_next(&rng_state) >> 40) / 8388608.0f - 1.0f;
}

static float
nrand(void)                     /* roughly normal, unit variance */
{
    return (frand() + frand() + frand()) * 1.0f;
}

static double
tol_of(kc_dtype_t dt)
{
    return dt == KC_F32 ? 2e-5 : dt == KC_BF16 ? 1e-2 : 2e-3;
}

/* host f32 -> device dtype; h is rounded in place to what the device
 * holds, so references use exactly the device's inputs */
static void *
dput_dt(kc_dtype_t dt, float *h, size_t n)
{
    void *tmp = malloc(n * 4), *d;

    kc_from_f32(dt, tmp, h, n);
    kc_to_f32(dt, h, tmp, n);
    d = dput(tmp, n * kc_dtype_size(dt));
    free(tmp);
    return d;
}

static double
rel_err(const float *a, const double *b, size_t n)
{
    double num = 0, den = 0;
    size_t i;

    for (i = 0; i < n; i++) {
        if (isnan(a[i])) {
            return INFINITY;
        }
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* a step's inputs on the device */
typedef struct {
    kc_step_t  st;
    void      *bufs[7];
} dstep_t;

static dstep_t
make_step(const kc_token_t *tok, int T, const int32_t *item_table,
    int n_items, const int32_t *tables, int n_tab, const int32_t *row_tok,
    const float *temp, const float *top_p, const float *unif, int R)
{
    dstep_t s;

    memset(&s, 0, sizeof(s));
    s.st.tokens = s.bufs[0] = dput(tok, (size_t) T * sizeof(*tok));
    s.st.item_table = s.bufs[1] = dput(item_table, (size_t) n_items * 4);
    s.st.tables = s.bufs[2] = dput(tables, (size_t) n_tab * 4);
    if (R > 0) {
        s.st.row_tok = s.bufs[3] = dput(row_tok, (size_t) R * 4);
        s.st.temperature = s.bufs[4] = dput(temp, (size_t) R * 4);
        s.st.top_p = s.bufs[5] = dput(top_p, (size_t) R * 4);
        s.st.uniform = s.bufs[6] = dput(unif, (size_t) R * 4);
    }
    return s;
}

static void
free_step(dstep_t *s)
{
    int i;

    for (i = 0; i < 7; i++) {
        cudaFree(s->bufs[i]);
    }
}

/* --- embedding ----------------------------------------------------------- */

static void
test_embed(kc_dtype_t dt)
{
    int V = 50, D = 70, T = 4, t, d;
    float *emb = malloc((size_t) V * D * 4), *x = malloc((size_t) T * D * 4);
    double *ref = malloc((size_t) T * D * 8);
    kc_token_t tok[4] = { { 7, 0, 0 }, { 0, 1, 0 }, { 49, 2, 0 },
                          { 7, 3, 0 } };
    int32_t zero = 0;
    dstep_t s = make_step(tok, T, &zero, 1, &zero, 1, NULL, NULL, NULL,
                          NULL, 0);
    void *demb;
    float *dx = dalloc((size_t) T * D * 4);

    for (t = 0; t < V * D; t++) {
        emb[t] = nrand();
    }
    demb = dput_dt(dt, emb, (size_t) V * D);
    kc_embed(0, dt, dx, demb, s.st, T, D);
    if (sync_ok("embed")) {
        cudaMemcpy(x, dx, (size_t) T * D * 4, cudaMemcpyDeviceToHost);
        for (t = 0; t < T; t++) {
            for (d = 0; d < D; d++) {
                ref[t * D + d] = emb[tok[t].tok * D + d];
            }
        }
        CHECK(rel_err(x, ref, (size_t) T * D) == 0, "embed %s",
              kc_dtype_name(dt));
    }
    cudaFree(demb);
    cudaFree(dx);
    free_step(&s);
    free(emb); free(x); free(ref);
}

/* --- residual add + RMSNorm ------------------------------------------- */

static void
test_rmsnorm(kc_dtype_t dt, int D)
{
    int N = 6, i, d, r;
    int32_t rows[4] = { 5, 0, 3, 3 };
    float *x = malloc((size_t) N * D * 4), *y = malloc((size_t) N * D * 4);
    float *w = malloc((size_t) D * 4), *out = malloc((size_t) N * D * 4);
    float *x2 = malloc((size_t) N * D * 4);
    double *ref = malloc((size_t) N * D * 8), *xref = malloc((size_t) N * D * 8);
    float *dx, *dy, *dw;
    int32_t *drows;
    void *dout;
    double e1, e2, e3;

    for (i = 0; i < N * D; i++) {
        x[i] = nrand() * 3;
        y[i] = nrand();
    }
    for (d = 0; d < D; d++) {
        w[d] = 1 + 0.2f * frand();
    }
    dx = dput(x, (size_t) N * D * 4);
    dy = dput(y, (size_t) N * D * 4);
    dw = dput(w, (size_t) D * 4);
    drows = dput(rows, sizeof(rows));
    dout = dalloc((size_t) N * D * kc_dtype_size(dt));

    /* gathered rows, x untouched: the final norm */
    for (r = 0; r < 4; r++) {
        double ss = 0, sc;
        for (d = 0; d < D; d++) {
            double v = (double) x[rows[r] * D + d] + y[rows[r] * D + d];
            ss += v * v;
        }
        sc = 1.0 / sqrt(ss / D + 1e-5);
        for (d = 0; d < D; d++) {
            ref[r * D + d] = w[d] * (((double) x[rows[r] * D + d]
                                      + y[rows[r] * D + d]) * sc);
        }
    }
    kc_rmsnorm(0, dt, dout, dx, dy, dw, drows, 4, D, 1e-5f, 0);
    e1 = INFINITY;
    if (sync_ok("rmsnorm rows")) {
        dget_dt(dt, out, dout, (size_t) 4 * D);
        e1 = rel_err(out, ref, (size_t) 4 * D);
    }

    /* every row, x += y written back */
    for (i = 0; i < N; i++) {
        double ss = 0, sc;
        for (d = 0; d < D; d++) {
            xref[i * D + d] = (double) ((float) (x[i * D + d] + y[i * D + d]));
            ss += xref[i * D + d] * xref[i * D + d];
        }
        sc = 1.0 / sqrt(ss / D + 1e-5);
        for (d = 0; d < D; d++) {
            ref[i * D + d] = w[d] * (xref[i * D + d] * sc);
        }
    }
    kc_rmsnorm(0, dt, dout, dx, dy, dw, NULL, N, D, 1e-5f, 1);
    e2 = e3 = INFINITY;
    if (sync_ok("rmsnorm")) {
        dget_dt(dt, out, dout, (size_t) N * D);
        cudaMemcpy(x2, dx, (size_t) N * D * 4, cudaMemcpyDeviceToHost);
        e2 = rel_err(out, ref, (size_t) N * D);
        e3 = rel_err(x2, xref, (size_t) N * D);
    }
    CHECK(e1 < tol_of(dt) && e2 < tol_of(dt) && e3 == 0,
          "rmsnorm %s dim %d: rel err %.3g (rows) %.3g, x %.3g",
          kc_dtype_name(dt), D, e1, e2, e3);
    printf("rmsnorm %-8s dim %4d: rel err %.2e / %.2e\n", kc_dtype_name(dt),
           D, e1, e2);
    cudaFree(dx); cudaFree(dy); cudaFree(dw); cudaFree(drows);
    cudaFree(dout);
    free(x); free(y); free(w); free(out); free(x2); free(ref); free(xref);
}

/* --- RoPE + KV store ------------------------------------------------------ */

/* the first rot dims of each head rotate: pair i is (2i, 2i + 1) when
 * interleaved (GLM), else (i, i + rot/2) (Hugging Face rotate_half) */
static void
rope_ref(double *x, int n_heads, int hd, int rot, int il, int pos,
    const float *inv)
{
    int h, i, half = rot / 2;

    for (h = 0; h < n_heads; h++) {
        double *x0 = x + h * hd;
        for (i = 0; i < half; i++) {
            float a = (float) pos * inv[i];
            double c = cos((double) a), s = sin((double) a);
            int i0 = il ? 2 * i : i, i1 = il ? 2 * i + 1 : i + half;
            double u = x0[i0], v = x0[i1];
            x0[i0] = u * c - v * s;
            x0[i1] = v * c + u * s;
        }
    }
}

/* hd: head_dim; rot: rotary dims; il: interleaved pairs; bias: add
 * q/k/v biases first */
static void
test_rope_kv(kc_dtype_t dt, int hd, int rot, int il, int use_bias)
{
    int H = 4, KV = 2, bs = 16, L = 2, nb = 6, T = 5;
    int q_dim = H * hd, kv_dim = KV * hd, qkv_dim = q_dim + 2 * kv_dim;
    size_t layer = (size_t) 2 * bs * kv_dim, bstride = layer * L;
    size_t cache_n = bstride * nb;
    kc_token_t tok[5] = { { 1, 0, 0 }, { 2, 1, 0 }, { 3, 2, 0 },
                          { 4, 40, 1 }, { 5, 41, 1 } };
    int32_t item_table[2] = { 0, 1 }, tables[4] = { 3, 1, 4, 0 };
    float *qkv = malloc((size_t) T * qkv_dim * 4);
    float *q_out = malloc((size_t) T * qkv_dim * 4);
    float *cache = malloc(cache_n * 4);
    double *qref = malloc((size_t) T * q_dim * 8);
    double *kref = malloc((size_t) T * kv_dim * 8);
    float *bias = malloc((size_t) qkv_dim * 4), inv[64];
    dstep_t s = make_step(tok, T, item_table, 2, tables, 4, NULL, NULL,
                          NULL, NULL, 0);
    float *dqkv, *dinv, *dbias = NULL;
    void *dcache;
    double eq = INFINITY, ek = 0, ev = 0, nk = 0, nv = 0;
    int t, i;

    for (i = 0; i < T * qkv_dim; i++) {
        qkv[i] = nrand();
    }
    for (i = 0; i < qkv_dim; i++) {
        bias[i] = use_bias ? nrand() : 0.0f;
    }
    for (i = 0; i < rot / 2; i++) {
        inv[i] = (float) (1.0 / pow(10000.0, (double) (2 * i) / rot));
    }
    dqkv = dput(qkv, (size_t) T * qkv_dim * 4);
    dinv = dput(inv, sizeof(inv));
    if (use_bias) {
        dbias = dput(bias, (size_t) qkv_dim * 4);
    }
    dcache = dalloc(cache_n * kc_dtype_size(dt));
    /* layer 1 of the blocks: kv_layer is one layer in */
    kc_rope_kv(0, dt, dqkv, (char *) dcache + layer * kc_dtype_size(dt),
               bstride, s.st, dbias, dinv, T, H, KV, hd, rot, il, bs);
    if (sync_ok("rope_kv")) {
        cudaMemcpy(q_out, dqkv, (size_t) T * qkv_dim * 4,
                   cudaMemcpyDeviceToHost);
        dget_dt(dt, cache, dcache, cache_n);
        for (t = 0; t < T; t++) {
            double *q = qref + t * q_dim, *k = kref + t * kv_dim;
            const int32_t *tab = tables + item_table[tok[t].item];
            size_t row = tab[tok[t].pos / bs] * bstride + layer
                         + (size_t) (tok[t].pos % bs) * kv_dim;
            for (i = 0; i < q_dim; i++) {
                q[i] = (double) qkv[t * qkv_dim + i] + bias[i];
            }
            for (i = 0; i < kv_dim; i++) {
                k[i] = (double) qkv[t * qkv_dim + q_dim + i]
                       + bias[q_dim + i];
            }
            rope_ref(q, H, hd, rot, il, tok[t].pos, inv);
            rope_ref(k, KV, hd, rot, il, tok[t].pos, inv);
            for (i = 0; i < kv_dim; i++) {
                double v = (double) qkv[t * qkv_dim + q_dim + kv_dim + i]
                           + bias[q_dim + kv_dim + i];
                ek += (cache[row + i] - k[i]) * (cache[row + i] - k[i]);
                nk += k[i] * k[i];
                ev += (cache[row + bs * kv_dim + i] - v)
                      * (cache[row + bs * kv_dim + i] - v);
                nv += v * v;
            }
        }
        eq = 0;
        for (t = 0; t < T; t++) {
            double e = rel_err(q_out + t * qkv_dim, qref + t * q_dim, q_dim);
            eq = e > eq ? e : eq;
        }
        ek = sqrt(ek / nk);
        ev = sqrt(ev / nv);
    }
    CHECK(eq < 2e-6 && ek < tol_of(dt) && ev < tol_of(dt),
          "rope_kv %s hd %d rot %d%s%s: q %.3g k %.3g v %.3g",
          kc_dtype_name(dt), hd, rot, il ? " interleaved" : "",
          use_bias ? " bias" : "", eq, ek, ev);
    printf("rope_kv %-8s hd %3d rot %3d%-12s%-5s: rel err q %.2e k %.2e "
           "v %.2e\n", kc_dtype_name(dt), hd, rot, il ? " interleaved" : "",
           use_bias ? " bias" : "", eq, ek, ev);
    cudaFree(dqkv); cudaFree(dinv); cudaFree(dcache); cudaFree(dbias);
    free_step(&s);
    free(qkv); free(q_out); free(cache); free(qref); free(kref); free(bias);
}

/* --- attention ------------------------------------------------------------ */

/* how split rows are merged (kc_att_cluster), for the messages */
static const char *att_merge = "cluster";

static void
test_attention(kc_dtype_t dt, int H, int KV, int hd, int bs, int n_split,
    int tiled)
{
    /* item 0: a prefill chunk at positions 5..24; item 1: one decode
     * token at 300 (three tiles); item 2: the first token */
    enum { T = 22 };
    int nb = 40, L = 1, group = H / KV;
    int q_dim = H * hd, kv_dim = KV * hd, qkv_dim = q_dim + 2 * kv_dim;
    size_t bstride = (size_t) 2 * bs * kv_dim * L, cache_n = bstride * nb;
    kc_token_t tok[T];
    int32_t item_table[3], tables[64], perm[40];
    int n_tab = 0, t, i, h;
    float *cache = malloc(cache_n * 4), *qkv = malloc((size_t) T * qkv_dim * 4);
    float *out = malloc((size_t) T * q_dim * 4);
    double *ref = malloc((size_t) T * q_dim * 8), *sc = malloc(512 * 8);
    dstep_t s;
    void *dcache, *dout;
    float *dqkv, *part;
    double err = INFINITY;

    /* blocks in a shuffled order, so tables are not contiguous */
    for (i = 0; i < nb; i++) {
        perm[i] = i;
    }
    for (i = nb - 1; i > 0; i--) {
        int j = (int) (sampler_next(&rng_state) % (uint64_t) (i + 1));
        int x = perm[i]; perm[i] = perm[j]; perm[j] = x;
    }
    item_table[0] = n_tab;
    for (i = 0; i < (25 + bs - 1) / bs; i++) {
        tables[n_tab++] = perm[i];
    }
    item_table[1] = n_tab;
    for (i = 0; i < (301 + bs - 1) / bs; i++) {
        tables[n_tab++] = perm[39 - i];
    }
    item_table[2] = n_tab;
    tables[n_tab++] = perm[20];
    for (t = 0; t < 20; t++) {
        tok[t] = (kc_token_t) { 0, 5 + t, 0 };
    }
    tok[20] = (kc_token_t) { 0, 300, 1 };
    tok[21] = (kc_token_t) { 0, 0, 2 };

    for (i = 0; i < (int) cache_n; i++) {
        cache[i] = nrand();
    }
    for (i = 0; i < T * qkv_dim; i++) {
        qkv[i] = nrand() * 0.7f;
    }
    s = make_step(tok, T, item_table, 3, tables, n_tab, NULL, NULL, NULL,
                  NULL, 0);
    dcache = dput_dt(dt, cache, cache_n);
    dqkv = dput(qkv, (size_t) T * qkv_dim * 4);
    dout = dalloc((size_t) T * q_dim * kc_dtype_size(dt));
    part = n_split > 1
           ? dalloc(kc_attention_part_floats(T, H, hd, n_split) * 4) : NULL;
    kc_attention(0, dt, dout, part, n_split, tiled, dqkv, dcache, bstride,
                 s.st, T, H, KV, hd, bs);

    for (t = 0; t < T; t++) {
        const int32_t *tab = tables + item_table[tok[t].item];
        int ctx = tok[t].pos + 1;
        for (h = 0; h < H; h++) {
            const float *q = qkv + t * qkv_dim + h * hd;
            size_t koff = (size_t) (h / group) * hd;

            ref_attention_row(ref + t * q_dim + h * hd, q, cache, tab,
                              bstride, bs, kv_dim, koff, ctx, hd, sc);
        }
    }
    if (sync_ok("attention")) {
        dget_dt(dt, out, dout, (size_t) T * q_dim);
        err = rel_err(out, ref, (size_t) T * q_dim);
    }
    CHECK(err < tol_of(dt), "attention %s heads %d/%d hd %d bs %d split %d "
          "(merge: %s) tiled %d: rel err %.3g", kc_dtype_name(dt), H, KV, hd,
          bs, n_split, att_merge, tiled, err);
    printf("attention %-8s heads %2d/%d hd %3d bs %2d split %2d (%s) "
           "tiled %d: rel err %.2e\n", kc_dtype_name(dt), H, KV, hd, bs,
           n_split, att_merge, tiled, err);
    cudaFree(dcache); cudaFree(dqkv); cudaFree(dout); cudaFree(part);
    free_step(&s);
    free(cache); free(qkv); free(out); free(ref); free(sc);
}

/* K and V rows past each item's last position NaN (0xff bytes) in the
 * device cache: a kernel that reads past a context fails the check */
static void
poison_past(char *dcache, size_t es, const int32_t *tables,
    const int32_t *item_table, const int *last, int n_items, int bs,
    size_t bstride, int kv_dim)
{
    int i, r;

    for (i = 0; i < n_items; i++) {
        int blk = tables[item_table[i] + last[i] / bs];
        for (r = last[i] % bs + 1; r < bs; r++) {
            size_t k = (size_t) blk * bstride + (size_t) r * kv_dim;
            cudaMemset(dcache + k * es, 0xff, (size_t) kv_dim * es);
            cudaMemset(dcache + (k + (size_t) bs * kv_dim) * es, 0xff,
                       (size_t) kv_dim * es);
        }
    }
}

/*
 * Decode rows only, each its own item, at positions on both sides of
 * every bound the short path (attention_short.cuh) can have (64, 128,
 * 256 positions, by head_dim and dtype): with n_split clustered, rows
 * whose context fits go there and the others split.  Cache rows past
 * each row's position are NaN, so a read past the context would fail.
 * `path`: what kc_att_short() was set to, for the messages.
 */
static void
test_attention_rows(kc_dtype_t dt, int H, int KV, int hd, int bs,
    int n_split, const char *path)
{
    static const int pos[] = { 0, 1, 9, 37, 63, 64, 127, 128, 200, 255,
                               256, 300 };
    enum { T = sizeof(pos) / sizeof(pos[0]) };
    int group = H / KV, q_dim = H * hd, kv_dim = KV * hd;
    int qkv_dim = q_dim + 2 * kv_dim, nb = 0, n_tab = 0, t, i, h;
    size_t bstride = (size_t) 2 * bs * kv_dim, cache_n, es = kc_dtype_size(dt);
    kc_token_t tok[T];
    int32_t item_table[T], *tables;
    float *cache, *qkv = malloc((size_t) T * qkv_dim * 4);
    float *out = malloc((size_t) T * q_dim * 4);
    double *ref = malloc((size_t) T * q_dim * 8), *sc = malloc(512 * 8);
    dstep_t s;
    char *dcache;
    void *dout;
    float *dqkv, *part;
    double err = INFINITY;

    for (t = 0; t < T; t++) {
        nb += pos[t] / bs + 1;
    }
    cache_n = bstride * nb;
    cache = malloc(cache_n * 4);
    tables = malloc((size_t) nb * 4);
    for (t = 0; t < T; t++) {           /* blocks from the end, in turn */
        item_table[t] = n_tab;
        for (i = 0; i <= pos[t] / bs; i++, n_tab++) {
            tables[n_tab] = nb - 1 - n_tab;
        }
        tok[t] = (kc_token_t) { 0, pos[t], t };
    }
    for (i = 0; i < (int) cache_n; i++) {
        cache[i] = nrand();
    }
    for (i = 0; i < T * qkv_dim; i++) {
        qkv[i] = nrand() * 0.7f;
    }
    s = make_step(tok, T, item_table, T, tables, n_tab, NULL, NULL, NULL,
                  NULL, 0);
    dcache = dput_dt(dt, cache, cache_n);
    poison_past(dcache, es, tables, item_table, pos, T, bs, bstride, kv_dim);
    dqkv = dput(qkv, (size_t) T * qkv_dim * 4);
    dout = dalloc((size_t) T * q_dim * es);
    part = dalloc(kc_attention_part_floats(T, H, hd, n_split) * 4);
    kc_attention(0, dt, dout, part, n_split, 1, dqkv, dcache, bstride, s.st,
                 T, H, KV, hd, bs);

    for (t = 0; t < T; t++) {
        for (h = 0; h < H; h++) {
            ref_attention_row(ref + t * q_dim + h * hd,
                              qkv + t * qkv_dim + h * hd, cache,
                              tables + item_table[t], bstride, bs, kv_dim,
                              (size_t) (h / group) * hd, pos[t] + 1, hd, sc);
        }
    }
    if (sync_ok("attention rows")) {
        dget_dt(dt, out, dout, (size_t) T * q_dim);
        err = rel_err(out, ref, (size_t) T * q_dim);
    }
    CHECK(err < tol_of(dt), "attention rows %s heads %d/%d hd %d bs %d "
          "split %d (%s): rel err %.3g", kc_dtype_name(dt), H, KV, hd, bs,
          n_split, path, err);
    printf("attention rows %-8s heads %2d/%d hd %3d bs %2d split %2d (%s): "
           "rel err %.2e\n", kc_dtype_name(dt), H, KV, hd, bs, n_split,
           path, err);
    cudaFree(dcache); cudaFree(dqkv); cudaFree(dout); cudaFree(part);
    free_step(&s);
    free(cache); free(tables); free(qkv); free(out); free(ref); free(sc);
}

/*
 * Prefill through the tensor-core kernel (tiled = 1) in a mixed step:
 * a decode row, a chunk of n_q tokens at positions start .. start +
 * n_q - 1 (the context before it already in the cache), another decode
 * row, a fresh 3-token prompt and a first token.  Cache rows past each
 * item's last position are NaN: a kernel that let them into a product
 * would fail.  For long chunks the reference (double) is computed for
 * every `every`-th chunk row and the chunk's last 8; every output must
 * be written (outputs start as NaN).
 *
 * Tolerance: tol_of(dt), as for the per-token kernel.  The tensor-core
 * kernel rounds q (once) and the softmax weights (each tile) to the
 * storage dtype before the products, a relative error of 2^-9 (bf16) or
 * 2^-12 (f16) an element that averages out over the context; measured
 * on the H100 1.3e-3 to 2.5e-3 (bf16) and 1.6e-4 to 3.1e-4 (f16), the
 * output's own rounding included: 4x under tol_of() in the worst case.
 */
static void
test_attention_prefill(kc_dtype_t dt, int H, int KV, int hd, int bs,
    int n_q, int start, int every, float q_gain, int n_split)
{
    enum { NI = 5 };
    int T = n_q + 6, group = H / KV, i, t, h, n_tab = 0, nb = 0, n_rows = 0;
    int q_dim = H * hd, kv_dim = KV * hd, qkv_dim = q_dim + 2 * kv_dim;
    int last[NI], first[NI], n_of[NI] = { 1, n_q, 1, 3, 1 };
    int ctx_max = start + n_q + 80;
    const char *dec = kc_att_dec_used(dt, hd, T) ? "tensor cores"
                                                 : "per-token";
    size_t bstride = (size_t) 2 * bs * kv_dim, cache_n, es = kc_dtype_size(dt);
    kc_token_t *tok = malloc((size_t) T * sizeof(*tok));
    int32_t item_table[NI], *tables, *perm;
    float *cache, *qkv = malloc((size_t) T * qkv_dim * 4);
    float *out = malloc((size_t) T * q_dim * 4);
    double *ref = malloc((size_t) T * q_dim * 8), *sc = malloc(ctx_max * 8);
    float *got = malloc((size_t) T * q_dim * 4);
    dstep_t s;
    char *dcache;
    void *dout;
    float *dqkv, *part = NULL;
    double err = INFINITY;
    int written = 1;

    first[0] = 77; first[1] = start; first[2] = 5; first[3] = 0;
    first[4] = 0;
    for (i = 0; i < NI; i++) {
        last[i] = first[i] + n_of[i] - 1;
        nb += (last[i] + bs) / bs;
    }
    cache_n = bstride * nb;
    cache = malloc(cache_n * 4);
    tables = malloc((size_t) nb * 4);
    perm = malloc((size_t) nb * 4);
    for (i = 0; i < nb; i++) {
        perm[i] = i;
    }
    for (i = nb - 1; i > 0; i--) {
        int j = (int) (sampler_next(&rng_state) % (uint64_t) (i + 1));
        int x = perm[i]; perm[i] = perm[j]; perm[j] = x;
    }
    for (i = 0, t = 0; i < NI; i++) {
        int j;
        item_table[i] = n_tab;
        for (j = 0; j < (last[i] + bs) / bs; j++) {
            tables[n_tab] = perm[n_tab];
            n_tab++;
        }
        for (j = 0; j < n_of[i]; j++, t++) {
            tok[t] = (kc_token_t) { 0, first[i] + j, i };
        }
    }
    for (i = 0; i < (int) cache_n; i++) {
        cache[i] = nrand();
    }
    for (i = 0; i < T * qkv_dim; i++) {
        qkv[i] = nrand() * q_gain;
    }
    s = make_step(tok, T, item_table, NI, tables, n_tab, NULL, NULL, NULL,
                  NULL, 0);
    dcache = dput_dt(dt, cache, cache_n);
    poison_past(dcache, es, tables, item_table, last, NI, bs, bstride,
                kv_dim);
    dqkv = dput(qkv, (size_t) T * qkv_dim * 4);
    dout = dalloc((size_t) T * q_dim * es);
    if (n_split > 1) {
        part = dalloc(kc_attention_part_floats(T, H, hd, n_split) * 4);
    }
    kc_attention(0, dt, dout, part, n_split, 1, dqkv, dcache, bstride, s.st,
                 T, H, KV, hd, bs);

    /* the rows checked, as one compact array */
    for (t = 0; t < T; t++) {
        int in_chunk = tok[t].item == 1, k = t - 1;
        if (in_chunk && k % every != 0 && k < n_q - 8) {
            continue;
        }
        for (h = 0; h < H; h++) {
            ref_attention_row(ref + (size_t) n_rows * hd,
                              qkv + (size_t) t * qkv_dim + (size_t) h * hd,
                              cache, tables + item_table[tok[t].item],
                              bstride, bs, kv_dim, (size_t) (h / group) * hd,
                              tok[t].pos + 1, hd, sc);
            n_rows++;
        }
    }
    if (sync_ok("attention prefill")) {
        dget_dt(dt, out, dout, (size_t) T * q_dim);
        for (i = 0; i < T * q_dim; i++) {
            written &= !isnan(out[i]);
        }
        n_rows = 0;
        for (t = 0; t < T; t++) {
            int in_chunk = tok[t].item == 1, k = t - 1;
            if (in_chunk && k % every != 0 && k < n_q - 8) {
                continue;
            }
            memcpy(got + (size_t) n_rows * hd, out + (size_t) t * q_dim,
                   (size_t) q_dim * 4);
            n_rows += H;                /* n_rows counts (token, head) */
        }
        err = rel_err(got, ref, (size_t) n_rows * hd);
    }
    CHECK(written && err < tol_of(dt), "attention prefill %s heads %d/%d "
          "hd %d bs %d chunk %d at %d split %d (decode rows: %s): %s, "
          "rel err %.3g", kc_dtype_name(dt), H, KV, hd, bs, n_q, start,
          n_split, dec, written ? "all written" : "NaN in the output", err);
    printf("attention prefill %-8s heads %2d/%d hd %3d bs %2d chunk %4d at "
           "%4d split %d (decode rows: %s): rel err %.2e\n",
           kc_dtype_name(dt), H, KV, hd, bs, n_q, start, n_split, dec, err);
    cudaFree(dcache); cudaFree(dqkv); cudaFree(dout); cudaFree(part);
    free_step(&s);
    free(tok); free(tables); free(perm); free(cache); free(qkv); free(out);
    free(ref); free(sc); free(got);
}

/* --- SwiGLU --------------------------------------------------------------- */

static void
test_swiglu(kc_dtype_t dt)
{
    int T = 3, Hd = 300, t, i;
    float *gu = malloc((size_t) T * 2 * Hd * 4), *out = malloc((size_t) T * Hd * 4);
    double *ref = malloc((size_t) T * Hd * 8);
    float *dgu;
    void *dout;
    double err = INFINITY;

    for (i = 0; i < T * 2 * Hd; i++) {
        gu[i] = nrand() * 2;
    }
    for (t = 0; t < T; t++) {
        for (i = 0; i < Hd; i++) {
            /* gate and up interleaved, as the engine keeps them */
            double g = gu[t * 2 * Hd + 2 * i], u = gu[t * 2 * Hd + 2 * i + 1];
            ref[t * Hd + i] = g / (1 + exp(-g)) * u;
        }
    }
    dgu = dput(gu, (size_t) T * 2 * Hd * 4);
    dout = dalloc((size_t) T * Hd * kc_dtype_size(dt));
    kc_swiglu(0, dt, dout, dgu, T, Hd);
    if (sync_ok("swiglu")) {
        dget_dt(dt, out, dout, (size_t) T * Hd);
        err = rel_err(out, ref, (size_t) T * Hd);
    }
    CHECK(err < tol_of(dt), "swiglu %s: %.3g", kc_dtype_name(dt), err);
    cudaFree(dgu); cudaFree(dout);
    free(gu); free(out); free(ref);
}

/* --- sampling --------------------------------------------------------------- */

typedef struct { double p; int id; } pc_t;

static int
pc_cmp(const void *a, const void *b)
{
    const pc_t *x = a, *y = b;

    return x->p > y->p ? -1 : x->p < y->p ? 1 : x->id - y->id;
}

/* is id in the top_p nucleus of row (at temperature temp)? */
static int
in_nucleus(const float *l, int V, float temp, float top_p, int id)
{
    pc_t *c = malloc((size_t) V * sizeof(*c));
    double mx = -INFINITY, sum = 0, cum = 0;
    int i, ok = 0;

    for (i = 0; i < V; i++) {
        mx = l[i] > mx ? l[i] : mx;
    }
    for (i = 0; i < V; i++) {
        c[i].p = exp((l[i] - mx) / temp);
        c[i].id = i;
        sum += c[i].p;
    }
    qsort(c, (size_t) V, sizeof(*c), pc_cmp);
    for (i = 0; i < V; i++) {
        if (c[i].id == id) {
            ok = 1;
            break;
        }
        cum += c[i].p;
        /* past the nucleus (with a little slack for f32 sums) */
        if (cum >= top_p * sum * (1 + 1e-5) + 1e-12) {
            break;
        }
    }
    free(c);
    return ok;
}

/* sampler.c's temperature draw (id order) with the sums in double */
static int
draw_ref(const float *l, int V, float temp, float u)
{
    float mx = l[sampler_argmax(l, V)], inv_t = 1.0f / temp;
    double sum = 0, cum = 0, x;
    int i;

    for (i = 0; i < V; i++) {
        sum += expf((l[i] - mx) * inv_t);
    }
    x = u * sum;
    for (i = 0; i < V; i++) {
        cum += expf((l[i] - mx) * inv_t);
        if (x < cum) {
            return i;
        }
    }
    return sampler_argmax(l, V);
}

static void
test_sample(int V)
{
    enum { R = 8 };
    float temps[R] = { 0, 0, 0.7f, 1.0f, 1.5f, 1.0f, 0.8f, 1.0f };
    float tops[R] = { 1, 1, 1, 1, 1, 0.9f, 0.5f, 0.0f };
    float *l = malloc((size_t) R * V * 4), unif[R];
    int32_t row_tok[R], out[R], zero = 0;
    uint64_t st0[R];
    kc_token_t tok[R];
    int iter, r, i, same = 0, same_c = 0, total_cmp = 0, in_nuc = 0;
    int total_nuc = 0;
    int greedy_ok = 1;

    for (iter = 0; iter < 20; iter++) {
        dstep_t s;
        float *dl;
        int32_t *dout;

        for (i = 0; i < R * V; i++) {
            l[i] = nrand() * 2.5f;
        }
        /* row 1: a tie for the largest, the lower id must win */
        l[1 * V + 700 % V] = 50.0f;
        l[1 * V + 5] = 50.0f;
        for (r = 0; r < R; r++) {
            uint64_t stt;
            row_tok[r] = r;
            tok[r] = (kc_token_t) { 0, 0, 0 };
            st0[r] = sampler_next(&rng_state);
            stt = st0[r];
            unif[r] = temps[r] > 0 ? sampler_uniform(&stt) : 0;
        }
        s = make_step(tok, R, &zero, 1, &zero, 1, row_tok, temps, tops, unif,
                      R);
        dl = dput(l, (size_t) R * V * 4);
        dout = dalloc(R * 4);
        kc_sample(0, dout, dl, R, V, s.st);
        if (!sync_ok("sample")) {
            break;
        }
        cudaMemcpy(out, dout, sizeof(out), cudaMemcpyDeviceToHost);
        for (r = 0; r < R; r++) {
            const float *row = l + (size_t) r * V;
            if (temps[r] == 0) {
                greedy_ok &= out[r] == sampler_argmax(row, V);
            } else if (tops[r] >= 1) {
                /* sampler.c's rule, summed in double here: must agree
                 * but for rounding at an interval's edge.  sampler.c
                 * itself sums in f32, one token after another, which
                 * drifts over a large vocabulary: counted, not checked */
                sampler_cand_t *scr = malloc((size_t) V * sizeof(*scr));
                uint64_t stt = st0[r];
                same += out[r] == draw_ref(row, V, temps[r], unif[r]);
                same_c += out[r] == sampler_sample(row, V, temps[r], 1.0f,
                                                   &stt, scr);
                total_cmp++;
                free(scr);
            } else {
                in_nuc += in_nucleus(row, V, temps[r], tops[r], out[r]);
                total_nuc++;
                if (tops[r] == 0) {
                    greedy_ok &= out[r] == sampler_argmax(row, V);
                }
            }
        }
        cudaFree(dl);
        cudaFree(dout);
        free_step(&s);
    }
    CHECK(greedy_ok, "sample vocab %d: greedy differs from sampler_argmax",
          V);
    CHECK(same >= total_cmp - 1, "sample vocab %d: %d of %d draws as the "
          "reference's", V, same, total_cmp);
    CHECK(in_nuc == total_nuc, "sample vocab %d: %d of %d in the nucleus", V,
          in_nuc, total_nuc);
    printf("sample vocab %6d: greedy %s, %d/%d draws as the f64 reference, "
           "%d/%d as sampler.c, %d/%d in the nucleus\n", V,
           greedy_ok ? "ok" : "WRONG", same, total_cmp, same_c, total_cmp,
           in_nuc, total_nuc);
    free(l);
}

int
main(void)
{
    int n = 0, d;
    static const int att[][5] = {
        { 12, 2, 16, 16, 1 }, { 10, 1, 64, 16, 1 }, { 4, 4, 128, 32, 1 },
        { 2, 1, 256, 16, 1 }, { 8, 4, 8, 16, 1 }, { 32, 8, 128, 16, 1 },
        { 12, 2, 16, 16, 3 }, { 10, 1, 64, 16, 16 }, { 4, 4, 128, 32, 7 },
        { 2, 1, 256, 16, 16 }, { 8, 4, 8, 16, 2 }, { 14, 2, 64, 16, 5 },
        { 2, 1, 40, 16, 4 }, { 40, 2, 64, 16, 1 }, { 40, 2, 64, 16, 3 },
    };
    /* heads, KV heads, head_dim, block size, splits (clustered): the
     * Llama-3.2-1B and Qwen2.5-0.5B shapes at batch 1, fewer splits than
     * a group's heads, MHA at 128, a group of 10 in two blocks, head_dim
     * 80 (zeros to 128), 8 (never the short path) */
    static const int rows[][5] = {
        { 32, 8, 64, 16, 8 }, { 14, 2, 64, 16, 8 }, { 32, 8, 64, 32, 3 },
        { 4, 4, 128, 16, 8 }, { 10, 1, 32, 16, 4 }, { 8, 2, 80, 16, 2 },
        { 8, 4, 8, 16, 5 },
    };
    /* heads, KV heads, head_dim, block size, chunk, chunk start, check
     * every n-th row, q gain x 10, splits: the Llama-3.2-1B and
     * Qwen2.5-0.5B shapes at 2048 and as later chunks, MHA at 128, group
     * 10 at 32, 16, more heads than a block takes (72 on 1 KV head), and
     * head_dim 80 (no tensor-core variant: the per-token kernel) */
    static const int pre[][9] = {
        { 32, 8, 64, 16, 2048, 0, 16, 10, 1 },
        { 14, 2, 64, 16, 2048, 0, 16, 7, 1 },
        { 32, 8, 64, 16, 512, 1000, 8, 15, 1 },
        { 14, 2, 64, 32, 300, 333, 4, 20, 3 },
        { 4, 4, 128, 16, 200, 50, 2, 10, 1 },
        { 10, 1, 32, 16, 130, 7, 1, 10, 4 },
        { 12, 2, 16, 16, 100, 0, 1, 10, 1 },
        { 72, 1, 32, 16, 40, 20, 1, 10, 1 },
        { 8, 2, 80, 16, 70, 10, 1, 10, 2 },
    };

    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        SKIP("no CUDA device");
        return unit_report("test_cuda_kernels");
    }
    if (kc_probe() != cudaSuccess) {
        CHECK(0, "this build's kernels do not run on device 0");
        return unit_report("test_cuda_kernels");
    }
    kc_att_cluster(KC_ATT_MAX_SPLIT);   /* every split case clustered */
    kc_att_dec(0);                      /* the per-token kernel, unless */
    for (d = KC_F32; d <= KC_F16; d++) {
        kc_dtype_t dt = (kc_dtype_t) d;
        size_t i;
        test_embed(dt);
        test_rmsnorm(dt, 200);
        test_rmsnorm(dt, 4096);
        test_rope_kv(dt, 16, 16, 0, 0);         /* Llama */
        test_rope_kv(dt, 32, 32, 0, 1);         /* Qwen2: biases */
        test_rope_kv(dt, 64, 32, 1, 1);         /* GLM: half, interleaved */
        test_rope_kv(dt, 48, 12, 1, 0);         /* a quarter, no bias */
        for (i = 0; i < sizeof(att) / sizeof(att[0]); i++) {
            test_attention(dt, att[i][0], att[i][1], att[i][2], att[i][3],
                           att[i][4], 0);
            test_attention(dt, att[i][0], att[i][1], att[i][2], att[i][3],
                           att[i][4], 1);
            if (att[i][4] > 1) {        /* splits merged by a kernel */
                kc_att_cluster(0);
                att_merge = "kernel";
                test_attention(dt, att[i][0], att[i][1], att[i][2],
                               att[i][3], att[i][4], 0);
                kc_att_cluster(KC_ATT_MAX_SPLIT);
                att_merge = "cluster";
            }
            kc_att_dec(1);
            if (kc_att_dec_used(dt, att[i][2], 1)) {
                /* those rows on tensor cores (the prefill chunk too,
                 * with tiled 0) */
                att_merge = "decode kernel";
                test_attention(dt, att[i][0], att[i][1], att[i][2],
                               att[i][3], att[i][4], 0);
                test_attention(dt, att[i][0], att[i][1], att[i][2],
                               att[i][3], att[i][4], 1);
                att_merge = "cluster";
            }
            kc_att_dec(0);
        }
        for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
            test_attention_rows(dt, rows[i][0], rows[i][1], rows[i][2],
                                rows[i][3], rows[i][4], "short path");
            kc_att_short(0);
            test_attention_rows(dt, rows[i][0], rows[i][1], rows[i][2],
                                rows[i][3], rows[i][4], "split");
            kc_att_short(KC_ATT_SHORT);
        }
        for (i = 0; i < sizeof(pre) / sizeof(pre[0]); i++) {
            test_attention_prefill(dt, pre[i][0], pre[i][1], pre[i][2],
                                   pre[i][3], pre[i][4], pre[i][5],
                                   pre[i][6], pre[i][7] / 10.0f, pre[i][8]);
            if (i >= 2) {       /* the decode rows on tensor cores */
                kc_att_dec(1);
                test_attention_prefill(dt, pre[i][0], pre[i][1],
                                       pre[i][2], pre[i][3], pre[i][4],
                                       pre[i][5], pre[i][6],
                                       pre[i][7] / 10.0f, pre[i][8]);
                kc_att_dec(0);
            }
        }
        test_swiglu(dt);
    }
    test_sample(1000);
    test_sample(32003);
    test_sample(128256);
    return unit_report("test_cuda_kernels");
}
