/*
 * test_cuda_gemm.c - the matrix products of the CUDA engine against a
 * plain CPU reference (double sums over the same rounded inputs):
 * gemv_cuda's kernel for every M it takes, every storage dtype and odd
 * shapes; gemm_cuda's tuned path (which picks gemv or cuBLASLt per
 * shape) and its cuBLAS fallback.  The inputs are rounded to the storage
 * dtype before the reference sees them, so the only difference left is
 * the order of f32 sums.  Also prints, for the decode shapes of a 1B
 * Llama, the time and bandwidth of gemv against cuBLAS (information for
 * docs/GPU-NOTES.md; nothing is checked on time).
 */

#include <stdint.h>
#include <cuda_runtime_api.h>
#include <cublas_v2.h>

#include "unit.h"
#include "gpu_test.h"
#include "kernels_cuda.h"
#include "gemm_cuda.h"
#include "gemv_cuda.h"
#include "sampler.h"

static uint64_t rng_state = 0x6a09e667f3bcc908ull;

static float
frand(void)                     /* uniform in [-1, 1) */
{
    return (float) (sampler_next(&rng_state) >> 40) / 8388608.0f - 1.0f;
}

/* n random values, rounded in place to dt, copied to the device in dt */
static void *
drand_dt(kc_dtype_t dt, float *h, size_t n)
{
    void *tmp = malloc(n * 4), *d;
    size_t i;

    for (i = 0; i < n; i++) {
        h[i] = frand();
    }
    kc_from_f32(dt, tmp, h, n);
    kc_to_f32(dt, h, tmp, n);
    d = dalloc(n * kc_dtype_size(dt));
    cudaMemcpy(d, tmp, n * kc_dtype_size(dt), cudaMemcpyHostToDevice);
    free(tmp);
    return d;
}

static cudaDataType_t
cuda_dt(kc_dtype_t dt)
{
    return dt == KC_F32 ? CUDA_R_32F : dt == KC_BF16 ? CUDA_R_16BF
                                                     : CUDA_R_16F;
}

/* ||got - ref|| / ||ref|| over out[M,N] = in[M,K] w[N,K]^T */
static double
product_err(const float *got, const float *in, const float *w, int M,
    int K, int N)
{
    double num = 0, den = 0;
    int m, n, k;

    for (m = 0; m < M; m++) {
        for (n = 0; n < N; n++) {
            double ref = 0, d;
            for (k = 0; k < K; k++) {
                ref += (double) in[(size_t) m * K + k] * w[(size_t) n * K + k];
            }
            if (isnan(got[(size_t) m * N + n])) {
                return INFINITY;
            }
            d = got[(size_t) m * N + n] - ref;
            num += d * d;
            den += ref * ref;
        }
    }
    return sqrt(num / den);
}

typedef struct {
    cudaStream_t     s;
    cublasHandle_t   blas;
    void            *ws;
    gemm_t          *g;
} ctx_t;

#define WS_BYTES  ((size_t) 32 << 20)

static int
ctx_open(ctx_t *c, kc_dtype_t dt)
{
    memset(c, 0, sizeof(*c));
    if (cudaStreamCreate(&c->s) != cudaSuccess
        || cublasCreate(&c->blas) != CUBLAS_STATUS_SUCCESS
        || cublasSetStream(c->blas, c->s) != CUBLAS_STATUS_SUCCESS)
    {
        return -1;
    }
    c->ws = dalloc(WS_BYTES);
    cublasSetWorkspace(c->blas, c->ws, WS_BYTES);
    c->g = gemm_create(c->s, c->blas, c->ws, WS_BYTES, cuda_dt(dt));
    return c->g != NULL ? 0 : -1;
}

static void
ctx_close(ctx_t *c)
{
    gemm_destroy(c->g);
    cublasDestroy(c->blas);
    cudaStreamDestroy(c->s);
    cudaFree(c->ws);
}

/* gemv directly, and gemm_cuda's tuned path, for one shape */
static void
test_shape(ctx_t *c, kc_dtype_t dt, int M, int K, int N)
{
    double tol = 1e-5;
    float *in = malloc((size_t) M * K * 4), *w = malloc((size_t) N * K * 4);
    float *got = malloc((size_t) M * N * 4);
    void *d_in = drand_dt(dt, in, (size_t) M * K);
    void *d_w = drand_dt(dt, w, (size_t) N * K);
    float *d_out = dalloc((size_t) M * N * 4);
    double e;
    cudaError_t r;
    int split;

    for (split = 1; split <= GEMV_MAX_SPLIT; split *= 2) {
        if (!gemv_supported(cuda_dt(dt), M, K)) {
            CHECK(gemv_run(c->s, cuda_dt(dt), d_out, d_in, d_w, M, K, N,
                           split)
                  == cudaErrorInvalidValue, "gemv refuses M=%d K=%d", M, K);
            break;
        }
        r = gemv_run(c->s, cuda_dt(dt), d_out, d_in, d_w, M, K, N, split);
        cudaStreamSynchronize(c->s);
        cudaMemcpy(got, d_out, (size_t) M * N * 4, cudaMemcpyDeviceToHost);
        e = product_err(got, in, w, M, K, N);
        CHECK(r == cudaSuccess && e < tol, "gemv %s M=%d K=%d N=%d split "
              "%d: %s, rel err %.2e", kc_dtype_name(dt), M, K, N, split,
              cudaGetErrorString(r), e);
        cudaMemset(d_out, 0xff, (size_t) M * N * 4);
    }
    CHECK(gemv_run(c->s, cuda_dt(dt), d_out, d_in, d_w, M, K, N, 3)
          == cudaErrorInvalidValue, "gemv refuses split 3");

    gemm_tune(c->g, d_out, d_in, d_w, M, K, N, NULL);
    cudaMemset(d_out, 0xff, (size_t) M * N * 4);
    CHECK(gemm_run(c->g, d_out, d_in, d_w, M, K, N, NULL)
          == CUBLAS_STATUS_SUCCESS,
          "gemm_run %s M=%d K=%d N=%d", kc_dtype_name(dt), M, K, N);
    cudaStreamSynchronize(c->s);
    cudaMemcpy(got, d_out, (size_t) M * N * 4, cudaMemcpyDeviceToHost);
    e = product_err(got, in, w, M, K, N);
    CHECK(e < tol, "tuned gemm %s M=%d K=%d N=%d: rel err %.2e",
          kc_dtype_name(dt), M, K, N, e);

    cudaFree(d_in);
    cudaFree(d_w);
    cudaFree(d_out);
    free(in);
    free(w);
    free(got);
}

/* an epilogue's output in dt against its reference: rounding to dt */
static double
epi_tol(kc_dtype_t dt)
{
    return dt == KC_F32 ? 1e-5 : dt == KC_BF16 ? 1e-2 : 2e-3;
}

/* ||got - ref|| / ||ref||, INFINITY when got holds a NaN */
static double
vec_err(const float *got, const double *ref, size_t n)
{
    double num = 0, den = 0;
    size_t i;

    for (i = 0; i < n; i++) {
        double d = got[i] - ref[i];
        num += isnan(got[i]) ? INFINITY : d * d;
        den += ref[i] * ref[i];
    }
    return sqrt(num / den);
}

/*
 * The product with the SwiGLU epilogue: w's rows are gate and up
 * interleaved; hb[m][j] = silu(in . w[2j]) * (in . w[2j + 1]) in dt.
 * Through gemv_swiglu_run directly, then as the engine runs it: tuned,
 * and the fused kernel or the tuned product and kc_swiglu.
 */
static void
test_swiglu_shape(ctx_t *c, kc_dtype_t dt, int M, int K, int N, int split)
{
    double tol = epi_tol(dt), e;
    size_t es = kc_dtype_size(dt), nh = (size_t) M * (N / 2);
    float *in = malloc((size_t) M * K * 4), *w = malloc((size_t) N * K * 4);
    float *got = malloc(nh * 4);
    double *ref = malloc(nh * 8);
    void *d_in = drand_dt(dt, in, (size_t) M * K);
    void *d_w = drand_dt(dt, w, (size_t) N * K);
    void *d_hb = dalloc(nh * es);
    float *d_out = dalloc((size_t) M * N * 4);
    int m, j, k, pass, fused = 0;

    for (m = 0; m < M; m++) {
        for (j = 0; j < N / 2; j++) {
            double g = 0, u = 0;
            for (k = 0; k < K; k++) {
                g += (double) in[(size_t) m * K + k]
                     * w[(size_t) 2 * j * K + k];
                u += (double) in[(size_t) m * K + k]
                     * w[(size_t) (2 * j + 1) * K + k];
            }
            ref[(size_t) m * (N / 2) + j] = g / (1 + exp(-g)) * u;
        }
    }
    for (pass = 0; pass < 2; pass++) {
        cudaError_t r = cudaSuccess;

        cudaMemset(d_hb, 0xff, nh * es);
        if (pass == 0) {
            r = gemv_swiglu_run(c->s, cuda_dt(dt), d_hb, d_in, d_w, M, K, N,
                                split, NULL);
            if (!gemv_supported(cuda_dt(dt), M, K)) {
                CHECK(r == cudaErrorInvalidValue, "gemv swiglu refuses "
                      "M=%d K=%d", M, K);
                continue;
            }
        } else {
            gemm_epi_t ep = { .kind = GEMV_SWIGLU, .dt = dt,
                              .a = { d_hb, NULL, NULL, 0.0f, NULL } };

            gemm_tune(c->g, d_out, d_in, d_w, M, K, N, &ep);
            cudaMemset(d_hb, 0xff, nh * es);
            fused = gemm_fused(c->g, M, K, N, GEMV_SWIGLU);
            r = gemm_run(c->g, d_out, d_in, d_w, M, K, N, &ep)
                == CUBLAS_STATUS_SUCCESS ? cudaSuccess : cudaErrorUnknown;
        }
        cudaStreamSynchronize(c->s);
        dget_dt(dt, got, d_hb, nh);
        e = vec_err(got, ref, nh);
        CHECK(r == cudaSuccess && e < tol, "%s %s M=%d K=%d N=%d split %d: "
              "rel err %.2e", pass == 0 ? "gemv swiglu" : fused
                                  ? "tuned swiglu (fused)"
                                  : "tuned swiglu (cuBLAS)",
              kc_dtype_name(dt), M, K, N, split, e);
    }
    cudaFree(d_in);
    cudaFree(d_w);
    cudaFree(d_hb);
    cudaFree(d_out);
    free(in);
    free(w);
    free(got);
    free(ref);
}

/*
 * The norm prologue (gemv_pro_t), through the SwiGLU product: the kernel
 * makes its input from x + y itself.  Against kc_rmsnorm (x += y, xb =
 * norm) and the same product of xb: to dt's rounding (the two sum the
 * squares in another order, and in bf16 the kernel rounds (x + y) * w
 * before it scales); x + y into x_out exactly, and x untouched.
 */
static void
test_pro_shape(ctx_t *c, kc_dtype_t dt, int M, int K, int N, int split)
{
    size_t es = kc_dtype_size(dt), n = (size_t) M * K, nh = (size_t) M * N / 2;
    float *x = malloc(n * 4), *y = malloc(n * 4), *nw = malloc(K * 4);
    float *w = malloc((size_t) N * K * 4), *got = malloc(nh * 4);
    float *ref = malloc(nh * 4), *xs = malloc(n * 4), *xo = malloc(n * 4);
    double *refd = malloc(nh * sizeof(double)), e;
    float *d_x, *d_y, *d_nw, *d_xo, *d_xr;
    void *d_w = drand_dt(dt, w, (size_t) N * K), *d_xb = dalloc(n * es);
    void *d_hb = dalloc(nh * es);
    gemv_pro_t pro;
    cudaError_t r;
    size_t i;
    int ok_x = 1;

    for (i = 0; i < n; i++) {
        x[i] = frand();
        y[i] = frand();
    }
    for (i = 0; i < (size_t) K; i++) {
        nw[i] = 0.5f + 0.5f * frand();
    }
    d_x = dput(x, n * 4);
    d_y = dput(y, n * 4);
    d_nw = dput(nw, K * 4);
    d_xr = dput(x, n * 4);
    d_xo = dalloc(n * 4);
    cudaMemset(d_xo, 0xff, n * 4);

    /* the reference: kc_rmsnorm, then the product of xb */
    kc_rmsnorm(c->s, dt, d_xb, d_xr, d_y, d_nw, NULL, M, K, 1e-5f, 1);
    gemv_swiglu_run(c->s, cuda_dt(dt), d_hb, d_xb, d_w, M, K, N, split,
                    NULL);
    cudaStreamSynchronize(c->s);
    dget_dt(dt, ref, d_hb, nh);

    pro = (gemv_pro_t) { d_x, d_y, d_nw, 1e-5f, d_xo };
    cudaMemset(d_hb, 0xff, nh * es);
    r = gemv_swiglu_run(c->s, cuda_dt(dt), d_hb, NULL, d_w, M, K, N, split,
                        &pro);
    if (n * es > GEMV_PRO_MAX_BYTES) {
        CHECK(r == cudaErrorInvalidValue, "norm prologue of %zu bytes "
              "(over %d) refused", n * es, GEMV_PRO_MAX_BYTES);
        goto done;
    }
    cudaStreamSynchronize(c->s);
    dget_dt(dt, got, d_hb, nh);
    cudaMemcpy(xo, d_xo, n * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(xs, d_x, n * 4, cudaMemcpyDeviceToHost);
    for (i = 0; i < n; i++) {
        ok_x &= xo[i] == x[i] + y[i] && xs[i] == x[i];
    }
    for (i = 0; i < nh; i++) {
        refd[i] = ref[i];
    }
    e = vec_err(got, refd, nh);
    CHECK(r == cudaSuccess && e < epi_tol(dt) && ok_x, "gemv swiglu with "
          "the norm prologue %s M=%d K=%d N=%d split %d: rel err %.2e, "
          "x_out %s", kc_dtype_name(dt), M, K, N, split, e,
          ok_x ? "= x + y" : "wrong");

done:
    cudaFree(d_x); cudaFree(d_y); cudaFree(d_nw); cudaFree(d_xo);
    cudaFree(d_xr); cudaFree(d_w); cudaFree(d_xb); cudaFree(d_hb);
    free(x); free(y); free(nw); free(w); free(got); free(ref); free(xs);
    free(xo); free(refd);
}

/*
 * The product with the residual add and RMSNorm after it: x += in . w^T;
 * out = x / rms(x) * nw in dt.  Through gemv_norm_run directly (twice,
 * from the same x: its count must be back to 0 for the second launch to
 * norm), then tuned as the engine runs it.
 */
static void
test_norm_shape(ctx_t *c, kc_dtype_t dt, int M, int K, int N, int split)
{
    double tol = epi_tol(dt);
    size_t es = kc_dtype_size(dt), n = (size_t) M * N, i;
    float *in = malloc((size_t) M * K * 4), *w = malloc((size_t) N * K * 4);
    float *x = malloc(n * 4), *nw = malloc((size_t) N * 4);
    float *got = malloc(n * 4), *got_x = malloc(n * 4);
    double *ref = malloc(n * 8), *ref_x = malloc(n * 8);
    void *d_in = drand_dt(dt, in, (size_t) M * K);
    void *d_w = drand_dt(dt, w, (size_t) N * K);
    float *d_x = dalloc(n * 4), *d_nw, *d_y = dalloc(n * 4);
    void *d_out = dalloc(n * es);
    int *d_count = dzero(4);
    int m, j, k, pass, fused = 0;
    gemm_epi_t ep;

    for (i = 0; i < n; i++) {
        x[i] = frand() * 3;
    }
    for (j = 0; j < N; j++) {
        nw[j] = 0.5f + frand() * 0.25f;
    }
    d_nw = dput(nw, (size_t) N * 4);
    for (m = 0; m < M; m++) {
        double ss = 0;
        for (j = 0; j < N; j++) {
            double a = x[(size_t) m * N + j];
            for (k = 0; k < K; k++) {
                a += (double) in[(size_t) m * K + k] * w[(size_t) j * K + k];
            }
            ref_x[(size_t) m * N + j] = a;
            ss += a * a;
        }
        for (j = 0; j < N; j++) {
            ref[(size_t) m * N + j] = ref_x[(size_t) m * N + j]
                                      / sqrt(ss / N + 1e-5) * nw[j];
        }
    }
    ep = (gemm_epi_t) { .kind = GEMV_NORM, .dt = dt,
                        .a = { d_out, d_x, d_nw, 1e-5f, d_count } };
    for (pass = 0; pass < 3; pass++) {
        cudaError_t r = cudaSuccess;
        double e, e_x;

        if (pass == 2) {
            gemm_tune(c->g, d_y, d_in, d_w, M, K, N, &ep);
            fused = gemm_fused(c->g, M, K, N, GEMV_NORM);
        }
        cudaMemcpy(d_x, x, n * 4, cudaMemcpyHostToDevice);
        cudaMemset(d_out, 0xff, n * es);
        if (pass < 2) {
            r = gemv_norm_run(c->s, cuda_dt(dt), d_y, d_in, d_w, M, K, N,
                              split, &ep.a);
            if (!gemv_supported(cuda_dt(dt), M, K)) {
                CHECK(r == cudaErrorInvalidValue, "gemv norm refuses "
                      "M=%d K=%d", M, K);
                continue;
            }
        } else {
            r = gemm_run(c->g, d_y, d_in, d_w, M, K, N, &ep)
                == CUBLAS_STATUS_SUCCESS ? cudaSuccess : cudaErrorUnknown;
        }
        cudaStreamSynchronize(c->s);
        dget_dt(dt, got, d_out, n);
        cudaMemcpy(got_x, d_x, n * 4, cudaMemcpyDeviceToHost);
        e = vec_err(got, ref, n);
        e_x = vec_err(got_x, ref_x, n);
        CHECK(r == cudaSuccess && e < tol && e_x < 1e-5,
              "%s %s M=%d K=%d N=%d split %d: rel err %.2e, x %.2e",
              pass < 2 ? "gemv norm" : fused ? "tuned norm (fused)"
                                             : "tuned norm (cuBLAS)",
              kc_dtype_name(dt), M, K, N, split, e, e_x);
    }
    cudaFree(d_in); cudaFree(d_w); cudaFree(d_x); cudaFree(d_nw);
    cudaFree(d_y); cudaFree(d_out); cudaFree(d_count);
    free(in); free(w); free(x); free(nw); free(got); free(got_x);
    free(ref); free(ref_x);
}

/* mean device µs of one run: 50 runs captured in a graph, the replay
 * timed (so the host's cost of each call is not counted); gemv when
 * use_gemv, else cuBLAS */
static double
time_us(ctx_t *c, int use_gemv, void *out, void *in, void *w, int M, int K,
    int N)
{
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    cudaEvent_t a, b;
    float ms = 0;
    int i;
    const float one = 1.0f, zero = 0.0f;

    cudaEventCreate(&a);
    cudaEventCreate(&b);
    cudaStreamBeginCapture(c->s, cudaStreamCaptureModeThreadLocal);
    for (i = 0; i < 50; i++) {
        if (use_gemv) {
            gemv_run(c->s, CUDA_R_16BF, out, in, w, M, K, N, 1);
        } else {
            cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one,
                         w, CUDA_R_16BF, K, in, CUDA_R_16BF, K, &zero, out,
                         CUDA_R_32F, N, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT);
        }
    }
    cudaStreamEndCapture(c->s, &graph);
    cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphLaunch(exec, c->s);
    cudaEventRecord(a, c->s);
    cudaGraphLaunch(exec, c->s);
    cudaEventRecord(b, c->s);
    cudaEventSynchronize(b);
    cudaEventElapsedTime(&ms, a, b);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return ms * 1000.0 / 50;
}

static void
report_bandwidth(void)
{
    static const int shapes[][2] = {    /* K, N: Llama-3.2-1B's products */
        { 2048, 3072 }, { 2048, 2048 }, { 2048, 16384 }, { 8192, 2048 },
        { 2048, 128256 },
    };
    ctx_t c;
    size_t i;
    int M;

    if (ctx_open(&c, KC_BF16) != 0) {
        return;
    }
    for (i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        int K = shapes[i][0], N = shapes[i][1];
        void *w = dalloc((size_t) N * K * 2), *in = dalloc((size_t) 8 * K * 2);
        void *out = dalloc((size_t) 8 * N * 4);

        cudaMemset(w, 0, (size_t) N * K * 2);
        cudaMemset(in, 0, (size_t) 8 * K * 2);
        for (M = 1; M <= 8; M *= 2) {
            double tg = time_us(&c, 1, out, in, w, M, K, N);
            double tb = time_us(&c, 0, out, in, w, M, K, N);
            double gb = (double) N * K * 2 / 1e3;      /* bytes / µs / 1e3 */
            printf("bf16 M=%d K=%5d N=%6d: gemv %7.1f us %6.0f GB/s, "
                   "cublas %7.1f us %6.0f GB/s\n", M, K, N, tg, gb / tg,
                   tb, gb / tb);
        }
        cudaFree(w);
        cudaFree(in);
        cudaFree(out);
    }
    ctx_close(&c);
}

/*
 * The q|k|v product with the RoPE epilogue, against the plain product
 * and kc_rope_kv() after it (each tested against a double reference on
 * its own, in this file and in test_cuda_kernels): the q rows and the
 * whole cache.  M decode tokens, each its own sequence, at positions
 * spread over three blocks of a shuffled table.  Directly the two paths
 * run the same sums and the same rotation, so they must agree to f32
 * rounding; through gemm_tune/gemm_run (the fused kernel or cuBLAS's
 * product and kc_rope_kv) to dt's.
 */
static void
test_rope_shape(ctx_t *c, kc_dtype_t dt, int M, int K, int H, int KV,
    int hd, int rot, int il, int use_bias, int split)
{
    int q_dim = H * hd, kv_dim = KV * hd, N = q_dim + 2 * kv_dim;
    int bs = 16, nb = 3 * M + 1, m, i, pass;
    size_t es = kc_dtype_size(dt), layer = (size_t) 2 * bs * kv_dim;
    size_t cache_n = layer * nb, ny = (size_t) M * N;
    float *in = malloc((size_t) M * K * 4), *w = malloc((size_t) N * K * 4);
    float *bias = malloc((size_t) N * 4), inv[128];
    float *y_ref = malloc(ny * 4), *y = malloc(ny * 4);
    float *c_ref = malloc(cache_n * 4), *c_got = malloc(cache_n * 4);
    double *ref = malloc((cache_n > ny ? cache_n : ny) * 8);
    kc_token_t tok[GEMV_MAX_M];
    int32_t item_table[GEMV_MAX_M], tables[3 * GEMV_MAX_M];
    void *d_in = drand_dt(dt, in, (size_t) M * K);
    void *d_w = drand_dt(dt, w, (size_t) N * K);
    void *d_cref = dzero(cache_n * es), *d_cache = dzero(cache_n * es);
    float *d_yref = dalloc(ny * 4), *d_y = dalloc(ny * 4), *d_bias = NULL;
    float *d_inv;
    gemm_epi_t ep;
    char what[128];

    snprintf(what, sizeof(what), "rope %s M=%d K=%d H=%d KV=%d hd %d rot %d"
             "%s%s split %d", kc_dtype_name(dt), M, K, H, KV, hd, rot,
             il ? " interleaved" : "", use_bias ? " bias" : "", split);
    for (i = 0; i < N; i++) {
        bias[i] = use_bias ? frand() : 0.0f;
    }
    for (i = 0; i < rot / 2; i++) {
        inv[i] = (float) (1.0 / pow(10000.0, (double) (2 * i) / rot));
    }
    for (m = 0; m < M; m++) {
        tok[m].tok = m;
        tok[m].pos = 5 + 5 * m;         /* <= 40: in the item's 3 blocks */
        tok[m].item = m;
        item_table[m] = 3 * m;
    }
    for (i = 0; i < 3 * M; i++) {       /* blocks 1..3M, shuffled */
        tables[i] = 1 + (i * 7 + 3) % (3 * M);
    }
    d_inv = dput(inv, sizeof(inv));
    if (use_bias) {
        d_bias = dput(bias, (size_t) N * 4);
    }
    memset(&ep, 0, sizeof(ep));
    ep.kind = GEMV_ROPE;
    ep.dt = dt;
    ep.r.st.tokens = dput(tok, sizeof(tok));
    ep.r.st.item_table = dput(item_table, sizeof(item_table));
    ep.r.st.tables = dput(tables, sizeof(tables));
    ep.r.kv_layer = d_cache;
    ep.r.block_stride = layer;
    ep.r.bias = d_bias;
    ep.r.inv_freq = d_inv;
    ep.r.n_heads = H;
    ep.r.n_kv_heads = KV;
    ep.r.head_dim = hd;
    ep.r.rope_dim = rot;
    ep.r.interleaved = il;
    ep.r.block_size = bs;

    /* the reference: the plain product, then kc_rope_kv */
    gemv_run(c->s, cuda_dt(dt), d_yref, d_in, d_w, M, K, N, split);
    kc_rope_kv(c->s, dt, d_yref, d_cref, layer, ep.r.st, d_bias, d_inv, M,
               H, KV, hd, rot, il, bs);
    cudaStreamSynchronize(c->s);
    cudaMemcpy(y_ref, d_yref, ny * 4, cudaMemcpyDeviceToHost);
    dget_dt(dt, c_ref, d_cref, cache_n);

    for (pass = 0; pass < 2; pass++) {
        cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
        double tol = pass == 0 ? 1e-6 : epi_tol(dt), eq = 0, ec;
        int fused = 1;

        cudaMemset(d_cache, 0, cache_n * es);
        if (pass == 0) {
            if (gemv_rope_run(c->s, cuda_dt(dt), d_y, d_in, d_w, M, K, N,
                              split, &ep.r, NULL) != cudaSuccess)
            {
                st = CUBLAS_STATUS_EXECUTION_FAILED;
            }
        } else {
            gemm_tune(c->g, d_y, d_in, d_w, M, K, N, &ep);
            cudaMemset(d_cache, 0, cache_n * es);
            fused = gemm_fused(c->g, M, K, N, GEMV_ROPE);
            st = gemm_run(c->g, d_y, d_in, d_w, M, K, N, &ep);
        }
        cudaStreamSynchronize(c->s);
        cudaMemcpy(y, d_y, ny * 4, cudaMemcpyDeviceToHost);
        dget_dt(dt, c_got, d_cache, cache_n);
        for (m = 0; m < M; m++) {
            double e;

            for (i = 0; i < q_dim; i++) {
                ref[i] = y_ref[(size_t) m * N + i];
            }
            e = vec_err(y + (size_t) m * N, ref, q_dim);
            eq = e > eq ? e : eq;
        }
        for (i = 0; i < (int) cache_n; i++) {
            ref[i] = c_ref[i];
        }
        ec = vec_err(c_got, ref, cache_n);
        CHECK(st == CUBLAS_STATUS_SUCCESS && sync_ok(what) && eq < tol
              && ec < tol, "%s (%s): q %.3g, cache %.3g", what,
              pass == 0 ? "gemv" : fused ? "tuned, fused" : "tuned, cuBLAS",
              eq, ec);
    }
    printf("%s: fused = plain + kc_rope_kv\n", what);
    cudaFree(d_in); cudaFree(d_w); cudaFree(d_cref); cudaFree(d_cache);
    cudaFree(d_yref); cudaFree(d_y); cudaFree(d_bias); cudaFree(d_inv);
    cudaFree((void *) ep.r.st.tokens); cudaFree((void *) ep.r.st.item_table);
    cudaFree((void *) ep.r.st.tables);
    free(in); free(w); free(bias); free(y_ref); free(y); free(c_ref);
    free(c_got); free(ref);
}

int
main(void)
{
    int n = 0, d, M, ks;
    static const int shapes[][2] = {    /* K, N */
        { 8, 5 }, { 64, 1 }, { 896, 1152 }, { 2048, 333 }, { 8200, 37 },
        { 2056, 4099 },
    };

    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        SKIP("no CUDA device");
        return unit_report("test_cuda_gemm");
    }
    for (d = KC_F32; d <= KC_F16; d++) {
        kc_dtype_t dt = (kc_dtype_t) d;
        ctx_t c;
        size_t i;
        int tuned, improved, gemv;

        if (ctx_open(&c, dt) != 0) {
            CHECK(0, "cuBLAS / stream set-up failed");
            continue;
        }
        for (i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
            for (M = 1; M <= GEMV_MAX_M; M++) {
                test_shape(&c, dt, M, shapes[i][0], shapes[i][1]);
            }
        }
        /* the feed-forward's product with SwiGLU: Qwen-0.5B's and odd */
        for (M = 1; M <= GEMV_MAX_M; M += 3) {
            for (ks = 1; ks <= GEMV_MAX_SPLIT; ks *= 2) {
                test_swiglu_shape(&c, dt, M, 896, 2 * 486, ks);
                test_swiglu_shape(&c, dt, M, 64, 2 * 37, ks);
            }
        }
        test_swiglu_shape(&c, dt, 12, 128, 2 * 100, 1);
        /* ... with the norm prologue: Qwen-0.5B's, the 1B's, odd */
        for (M = 1; M <= GEMV_MAX_M; M += 3) {
            for (ks = 1; ks <= GEMV_MAX_SPLIT; ks *= 2) {
                test_pro_shape(&c, dt, M, 896, 2 * 486, ks);
                test_pro_shape(&c, dt, M, 2048, 2 * 300, ks);
                test_pro_shape(&c, dt, M, 72, 2 * 37, ks);
            }
        }
        /* o and down products with the norm after them */
        for (M = 1; M <= GEMV_MAX_M; M += 3) {
            for (ks = 1; ks <= GEMV_MAX_SPLIT; ks *= 2) {
                test_norm_shape(&c, dt, M, 896, 896, ks);
                test_norm_shape(&c, dt, M, 4864, 896, ks);
                test_norm_shape(&c, dt, M, 64, 2100, ks);
            }
        }
        test_norm_shape(&c, dt, 12, 128, 200, 1);
        /* q|k|v with RoPE and the K/V store: Llama-like, Qwen2 (bias),
         * GLM (half rotated, interleaved), a quarter rotated */
        for (M = 1; M <= GEMV_MAX_M; M++) {
            ks = 1 << (M % 4);          /* each split, twice */
            test_rope_shape(&c, dt, M, 896, 14, 2, 64, 64, 0, 1, ks);
            test_rope_shape(&c, dt, M, 64, 4, 2, 16, 16, 0, 0, ks);
            test_rope_shape(&c, dt, M, 80, 4, 2, 64, 32, 1, 1, ks);
            test_rope_shape(&c, dt, M, 96, 3, 1, 48, 12, 0, 0, ks);
        }
        /* beyond what gemv takes: cuBLAS only */
        test_shape(&c, dt, 9, 896, 100);
        test_shape(&c, dt, 2, 12, 7);
        tuned = gemm_tuned(c.g, &improved, &gemv);
        printf("%s: %d shapes tuned, %d beat cuBLAS's first pick, %d run "
               "gemv\n", kc_dtype_name(dt), tuned, improved, gemv);
        ctx_close(&c);
    }
    report_bandwidth();
    return unit_report("test_cuda_gemm");
}
