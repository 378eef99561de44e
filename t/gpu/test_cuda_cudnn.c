/*
 * test_cuda_cudnn.c - cuDNN's fused attention for prefill rows
 * (attention_cudnn.cu) against a double CPU reference and against our
 * kernels (kc_attention), in the engine's step layout: a paged cache
 * with shuffled blocks, mixed steps (decode rows beside prefill chunks
 * at offsets, fresh prompts), packed block tables.  The decode rows go
 * to the per-token kernel (tiled == 2), as in the engine, so the whole
 * output is checked.  Both table modes (packed with ragged offsets,
 * padded copies) are tried; a mode whose plans do not build is reported
 * and skipped.  Last, device times of cuDNN's path against the
 * tensor-core kernel on the Llama-3.2-1B and Qwen2.5-0.5B shapes.
 */

#include <stdint.h>
#include <time.h>
#include <cuda_runtime_api.h>

#include "unit.h"
#include "gpu_test.h"
#include "kernels_cuda.h"
#include "sampler.h"

static uint64_t rng_state = 0x3243f6a8885a308dull;

static float
nrand(void)
{
    float a = 0;
    int i;

    for (i = 0; i < 3; i++) {
        a += (float) (sampler_next(&rng_state) >> 40) / 8388608.0f - 1.0f;
    }
    return a;
}

/* a step: n items, item i n_of[i] tokens from position first[i] */
typedef struct {
    kc_dtype_t  dt;
    int         H, KV, hd, bs, n, T, nb, n_tab, max_ctx;
    int         first[8], n_of[8], item_table[8];
    size_t      bstride;
    float      *cache, *qkv;                /* host, device-exact */
    int32_t    *tables;
    kc_token_t *tok;
    kc_step_t   st;
    void       *d_tok, *d_items, *d_tables, *d_cache;
    float      *d_qkv;
} prob_t;

static void
make_prob(prob_t *P, kc_dtype_t dt, int H, int KV, int hd, int bs, int n,
    const int *first, const int *n_of, float poison)
{
    int i, j, t, kv_dim = KV * hd, qkv_dim = (H + 2 * KV) * hd;
    int32_t *perm;
    size_t cache_n, es = kc_dtype_size(dt);
    void *tmp;

    memset(P, 0, sizeof(*P));
    P->dt = dt; P->H = H; P->KV = KV; P->hd = hd; P->bs = bs; P->n = n;
    P->bstride = (size_t) 2 * bs * kv_dim;
    for (i = 0; i < n; i++) {
        int last = first[i] + n_of[i] - 1;
        P->first[i] = first[i];
        P->n_of[i] = n_of[i];
        P->T += n_of[i];
        P->nb += last / bs + 1;
        P->max_ctx = last + 1 > P->max_ctx ? last + 1 : P->max_ctx;
    }
    cache_n = P->bstride * P->nb;
    P->cache = malloc(cache_n * 4);
    P->tables = malloc((size_t) P->nb * 4);
    P->tok = malloc((size_t) P->T * sizeof(kc_token_t));
    P->qkv = malloc((size_t) P->T * qkv_dim * 4);
    perm = malloc((size_t) P->nb * 4);
    for (i = 0; i < P->nb; i++) {
        perm[i] = i;
    }
    for (i = P->nb - 1; i > 0; i--) {
        int k = (int) (sampler_next(&rng_state) % (uint64_t) (i + 1));
        int x = perm[i]; perm[i] = perm[k]; perm[k] = x;
    }
    for (i = 0, t = 0; i < n; i++) {
        P->item_table[i] = P->n_tab;
        for (j = 0; j <= (first[i] + n_of[i] - 1) / bs; j++) {
            P->tables[P->n_tab] = perm[P->n_tab];
            P->n_tab++;
        }
        for (j = 0; j < n_of[i]; j++, t++) {
            P->tok[t] = (kc_token_t) { 0, first[i] + j, i };
        }
    }
    for (i = 0; i < (int) cache_n; i++) {
        P->cache[i] = nrand();
    }
    /* rows past each item's end: poison (stale rows in the engine) */
    for (i = 0; i < n; i++) {
        int last = first[i] + n_of[i] - 1, r, d;
        int blk = P->tables[P->item_table[i] + last / bs];
        for (r = last % bs + 1; r < bs; r++) {
            for (d = 0; d < kv_dim; d++) {
                size_t k = (size_t) blk * P->bstride + (size_t) r * kv_dim;
                P->cache[k + d] = poison;
                P->cache[k + (size_t) bs * kv_dim + d] = poison;
            }
        }
    }
    for (i = 0; i < P->T * qkv_dim; i++) {
        P->qkv[i] = nrand() * 0.8f;
    }
    tmp = malloc(cache_n * es);
    kc_from_f32(dt, tmp, P->cache, cache_n);
    kc_to_f32(dt, P->cache, tmp, cache_n);
    P->d_cache = dput(tmp, cache_n * es);
    free(tmp);
    P->d_tok = dput(P->tok, (size_t) P->T * sizeof(kc_token_t));
    P->d_items = dput(P->item_table, (size_t) n * 4);
    P->d_tables = dput(P->tables, (size_t) P->n_tab * 4);
    P->d_qkv = dput(P->qkv, (size_t) P->T * qkv_dim * 4);
    P->st.tokens = P->d_tok;
    P->st.item_table = P->d_items;
    P->st.tables = P->d_tables;
    free(perm);
}

static void
free_prob(prob_t *P)
{
    cudaFree(P->d_tok); cudaFree(P->d_items); cudaFree(P->d_tables);
    cudaFree(P->d_cache); cudaFree(P->d_qkv);
    free(P->cache); free(P->tables); free(P->tok); free(P->qkv);
}

/* softmax(q K^T / sqrt(hd)) V over positions 0 .. ctx - 1, doubles */
static void
ref_row(double *o, const float *q, const prob_t *P, const int32_t *tab,
    size_t koff, int ctx, double *sc)
{
    ref_attention_row(o, q, P->cache, tab, P->bstride, P->bs,
                      P->KV * P->hd, koff, ctx, P->hd, sc);
}

static kc_dnn_shape_t
shape_of(const prob_t *P, int max_tokens, int max_items)
{
    kc_dnn_shape_t sh;

    sh.n_heads = P->H;
    sh.n_kv_heads = P->KV;
    sh.head_dim = P->hd;
    sh.block_size = P->bs;
    sh.n_blocks = P->nb;
    sh.block_stride = P->bstride;
    sh.max_items = max_items;
    sh.max_tokens = max_tokens;
    sh.max_pages = (P->max_ctx + P->bs - 1) / P->bs + 3;
    return sh;
}

/* stage P's prefill items; 1 if cuDNN serves them, 0 if no plan */
static int
stage(kc_dnn_t *d, const prob_t *P, int *decode)
{
    int q_row[8], q_len[8], kv_len[8], tab[8], i, row = 0, np = 0;

    *decode = 0;
    for (i = 0; i < P->n; i++) {
        if (P->n_of[i] > 1) {
            q_row[np] = row;
            q_len[np] = P->n_of[i];
            kv_len[np] = P->first[i] + P->n_of[i];
            tab[np++] = P->item_table[i];
        } else {
            *decode = 1;
        }
        row += P->n_of[i];
    }
    return kc_dnn_stage(d, 0, np, q_row, q_len, kv_len, tab, P->d_tables);
}

/* cuDNN for the prefill rows, the per-token kernel for the others */
static int
run_dnn(kc_dnn_t *d, const prob_t *P, void *out, float *part)
{
    int decode, r = stage(d, P, &decode);

    if (r != 1) {
        return r;
    }
    if (kc_dnn_attention(d, 0, out, P->d_qkv, P->d_cache, P->T) != 0) {
        return -1;
    }
    if (decode) {
        kc_attention(0, P->dt, out, part, 1, 2, P->d_qkv, P->d_cache,
                     P->bstride, P->st, P->T, P->H, P->KV, P->hd, P->bs);
    }
    return 1;
}

static double
rel(const float *a, const double *b, size_t n)
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

static void
get_out(const prob_t *P, float *h, const void *d)
{
    size_t n = (size_t) P->T * P->H * P->hd;
    void *tmp = malloc(n * kc_dtype_size(P->dt));

    cudaMemcpy(tmp, d, n * kc_dtype_size(P->dt), cudaMemcpyDeviceToHost);
    kc_to_f32(P->dt, h, tmp, n);
    free(tmp);
}

/*
 * One mixed step checked: cuDNN + per-token kernel against the double
 * reference (every row) and against kc_attention's tensor-core path.
 * tables_mode as kc_dnn_create's.  Returns 0, or -1 when no plan built.
 */
static int
check_step(kc_dtype_t dt, int H, int KV, int hd, int bs, int n,
    const int *first, const int *n_of, int tables_mode, float poison,
    const char *what)
{
    prob_t P;
    kc_dnn_shape_t sh;
    kc_dnn_t *d;
    kc_dnn_info_t in;
    char err[600];
    void *scratch, *out, *out_ours;
    float *part, *got, *ours;
    double *ref, *sc, e_ref = INFINITY, e_ours = INFINITY;
    int q_dim = H * hd, qkv_dim = (H + 2 * KV) * hd, t, h, r = 0, ok;
    size_t nout;
    double tol = dt == KC_BF16 ? 1e-2 : 2e-3;

    make_prob(&P, dt, H, KV, hd, bs, n, first, n_of, poison);
    nout = (size_t) P.T * q_dim;
    sh = shape_of(&P, P.T, 8);
    scratch = dalloc(kc_dnn_scratch_bytes(dt, &sh));
    d = kc_dnn_create(0, dt, &sh, scratch, tables_mode, err, sizeof(err));
    if (d == NULL) {
        printf("cudnn %-5s %s: heads %d/%d hd %d tables %s: no plan: %s\n",
               kc_dtype_name(dt), what, H, KV, hd,
               tables_mode == 2 ? "padded" : "packed", err);
        cudaFree(scratch);
        free_prob(&P);
        return -1;
    }
    kc_dnn_info(d, &in);
    out = dalloc(nout * kc_dtype_size(dt));
    out_ours = dalloc(nout * kc_dtype_size(dt));
    part = dalloc(kc_attention_part_floats(P.T, H, hd, 1) * 4);
    ok = run_dnn(d, &P, out, part);
    kc_attention(0, dt, out_ours, part, 1, 1, P.d_qkv, P.d_cache, P.bstride,
                 P.st, P.T, H, KV, hd, bs);
    got = malloc(nout * 4);
    ours = malloc(nout * 4);
    ref = malloc(nout * 8);
    sc = malloc((size_t) P.max_ctx * 8);
    for (t = 0; t < P.T; t++) {
        for (h = 0; h < H; h++) {
            ref_row(ref + (size_t) t * q_dim + (size_t) h * hd,
                    P.qkv + (size_t) t * qkv_dim + (size_t) h * hd, &P,
                    P.tables + P.item_table[P.tok[t].item],
                    (size_t) (h / (H / KV)) * hd, P.tok[t].pos + 1, sc);
        }
    }
    if (sync_ok("cudnn attention") && ok == 1) {
        get_out(&P, got, out);
        get_out(&P, ours, out_ours);
        e_ref = rel(got, ref, nout);
        {
            double num = 0, den = 0;
            size_t i;
            for (i = 0; i < nout; i++) {
                num += ((double) got[i] - ours[i]) * (got[i] - ours[i]);
                den += (double) ours[i] * ours[i];
            }
            e_ours = isnan(num) ? INFINITY : sqrt(num / den);
        }
    }
    if (isnan(poison)) {
        /* stale rows in the engine are finite; NaN ones only tell
         * whether cuDNN multiplies masked V rows by zero */
        printf("cudnn %-5s %s: heads %d/%d hd %d, NaN past the ends: rel "
               "err %.2e (informative)\n", kc_dtype_name(dt), what, H, KV,
               hd, e_ref);
    } else {
        CHECK(ok == 1 && e_ref < tol && e_ours < tol, "cudnn %s %s heads "
              "%d/%d hd %d tables %s: staged %d (%s), rel err %.3g vs ref, "
              "%.3g vs ours", kc_dtype_name(dt), what, H, KV, hd,
              in.packed_tables ? "packed" : "padded", ok, kc_dnn_error(d),
              e_ref, e_ours);
        printf("cudnn %-5s %s: heads %2d/%d hd %3d bs %d tables %s (%d "
               "plans, %.0f ms): rel err %.2e vs double, %.2e vs ours\n",
               kc_dtype_name(dt), what, H, KV, hd, bs,
               in.packed_tables ? "packed" : "padded", in.plans, in.build_ms,
               e_ref, e_ours);
    }
    kc_dnn_destroy(d);
    cudaFree(scratch); cudaFree(out); cudaFree(out_ours); cudaFree(part);
    free(got); free(ours); free(ref); free(sc);
    free_prob(&P);
    return r;
}

/* mean device microseconds of 20 calls after 3 */
static double
time_dnn(kc_dnn_t *d, const prob_t *P, void *out, float *part, int ours)
{
    cudaEvent_t a, b;
    float ms = 0;
    int i;

    for (i = 0; i < 23; i++) {
        if (i == 3) {
            cudaDeviceSynchronize();
            cudaEventCreate(&a);
            cudaEventCreate(&b);
            cudaEventRecord(a, 0);
        }
        if (ours) {
            kc_attention(0, P->dt, out, part, 1, 1, P->d_qkv, P->d_cache,
                         P->bstride, P->st, P->T, P->H, P->KV, P->hd, P->bs);
        } else {
            /* staged once, as the engine does per step; one layer here */
            kc_dnn_attention(d, 0, out, P->d_qkv, P->d_cache, P->T);
        }
    }
    cudaEventRecord(b, 0);
    cudaEventSynchronize(b);
    cudaEventElapsedTime(&ms, a, b);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return ms * 1000.0 / 20;
}

static void
bench(const char *name, int H, int KV, int n, const int *first,
    const int *n_of)
{
    prob_t P;
    kc_dnn_shape_t sh;
    kc_dnn_t *d;
    char err[600];
    void *scratch, *out;
    float *part;
    int decode;
    double us_dnn = -1, us_ours;

    make_prob(&P, KC_BF16, H, KV, 64, 16, n, first, n_of, 0.0f);
    sh = shape_of(&P, 2048 > P.T ? 2048 : P.T, 64);
    scratch = dalloc(kc_dnn_scratch_bytes(KC_BF16, &sh));
    out = dalloc((size_t) P.T * H * 64 * 2);
    part = dalloc(kc_attention_part_floats(P.T, H, 64, 1) * 4);
    d = kc_dnn_create(0, KC_BF16, &sh, scratch, 0, err, sizeof(err));
    if (d != NULL && stage(d, &P, &decode) == 1) {
        us_dnn = time_dnn(d, &P, out, part, 0);
    }
    us_ours = time_dnn(d, &P, out, part, 1);
    sync_ok("cudnn bench");
    printf("cudnn time %-28s: cuDNN %7.1f us, ours (tensor cores) %7.1f us "
           "a layer\n", name, us_dnn, us_ours);
    kc_dnn_destroy(d);
    cudaFree(scratch); cudaFree(out); cudaFree(part);
    free_prob(&P);
}

int
main(void)
{
    int dev = 0, i;
    /* decode rows at 77 and 5, a chunk, a fresh 3-token prompt, a 1-token
     * prompt, another chunk */
    static const int shapes[][4] = {
        { 32, 8, 64, 16 }, { 14, 2, 64, 16 }, { 8, 8, 128, 16 },
        { 6, 2, 32, 16 }, { 4, 1, 16, 32 }, { 12, 4, 48, 16 },
    };
    int first_a[] = { 77, 500, 5, 0, 0, 40 };
    int n_of_a[] = { 1, 300, 1, 3, 1, 17 };
    int first_b[] = { 0 };
    int n_of_b[] = { 700 };
    kc_dtype_t dts[2] = { KC_BF16, KC_F16 };

    if (cudaGetDeviceCount(&dev) != cudaSuccess || dev == 0) {
        SKIP("no CUDA device");
        return unit_report("test_cuda_cudnn");
    }
    /* table modes first, on the 1B shape: which builds, which is right */
    for (i = 1; i <= 2; i++) {
        check_step(KC_BF16, 32, 8, 64, 16, 6, first_a, n_of_a, i, 0.5f,
                   i == 1 ? "mixed, packed " : "mixed, padded ");
    }
    check_step(KC_BF16, 32, 8, 64, 16, 6, first_a, n_of_a, 0, NAN,
               "mixed, NaN rows");
    for (i = 0; i < (int) (sizeof(shapes) / sizeof(shapes[0])); i++) {
        int k;
        for (k = 0; k < 2; k++) {
            check_step(dts[k], shapes[i][0], shapes[i][1], shapes[i][2],
                       shapes[i][3], 6, first_a, n_of_a, 0, 0.5f,
                       "mixed        ");
        }
        check_step(KC_BF16, shapes[i][0], shapes[i][1], shapes[i][2],
                   shapes[i][3], 1, first_b, n_of_b, 0, 0.5f,
                   "prompt 700   ");
    }
    {
        int f1[] = { 0 }, n1[] = { 512 }, n2[] = { 2048 };
        int f4[] = { 1000, 1000, 1000, 1000 }, n4[] = { 512, 512, 512, 512 };
        bench("1B, prompt 512", 32, 8, 1, f1, n1);
        bench("1B, prompt 2048", 32, 8, 1, f1, n2);
        bench("1B, 4 chunks of 512 at 1000", 32, 8, 4, f4, n4);
        bench("Qwen-0.5B, prompt 512", 14, 2, 1, f1, n1);
        bench("Qwen-0.5B, prompt 2048", 14, 2, 1, f1, n2);
    }
    return unit_report("test_cuda_cudnn");
}
