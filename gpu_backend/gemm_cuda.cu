/*
 * gemm_cuda.cu - matrix products through cuBLAS / cuBLASLt, with the
 * decode shapes tuned at start (see gemm_cuda.h).
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>

#include "gemm_cuda.h"
#include "gemv_cuda.h"
#include "kernels_cuda.h"
extern "C" {
#include "log.h"
#include "split_pick.h"
}

#define MAX_SHAPES  128
#define CANDIDATES  8
#define TUNE_RUNS   20
#define TUNE_REPLAYS  3
#define SPLIT_MARGIN  0.90f

/* how a shape runs: cuBLASLt's algo and the epilogue's kernel, or
 * gemv_cuda.cu's kernel with the epilogue in it, or without it and the
 * epilogue's kernel after it */
#define GEMV_WON_NONE   0
#define GEMV_WON_FUSED  1
#define GEMV_WON_THEN   2

typedef struct {
    int                      M, K, N;
    cublasLtMatmulDesc_t     op;
    cublasLtMatrixLayout_t   a, b, c;   /* w, in, out */
    cublasLtMatmulAlgo_t     algo;
    int                      gemv;      /* GEMV_WON_*: gemv_cuda.cu's won */
    int                      split;     /* ... with split warps a row */
    int                      epi;       /* GEMV_PLAIN, _SWIGLU, _NORM, _ROPE */
    int                      pro;       /* with the norm prologue */
    float                    ms;        /* the pick's time */
    int                      alt_gemv;  /* the runner-up: gemv, split */
    int                      alt_split;
    float                    alt_ms;    /* ... its time, 0: none */
    int                      lean_gemv; /* the pick's kernel at another */
    int                      lean_split; /* split: at first 1, the fewest */
    float                    lean_ms;   /* blocks; its time, 0: none */
} shape_t;

struct gemm_s {
    cudaStream_t        stream;
    cublasHandle_t      blas;
    cublasLtHandle_t    lt;
    void               *ws;
    size_t              ws_bytes;
    cudaDataType_t      in_type;
    cudaEvent_t         ev0, ev1;
    int                 n_shapes, improved, n_gemv;
    int                 use_gemv;       /* NGX_GPU_GEMV=0: cuBLAS only */
    int                 rope_fused;     /* NGX_GPU_ROPE_FUSED=0: not */
    int                 max_split;      /* NGX_GPU_GEMV_SPLIT: at most */
    float               split_margin;   /* NGX_GPU_SPLIT_MARGIN */
    int                 split_chain;    /* NGX_GPU_SPLIT_RULE=chain */
    int                 log;            /* NGX_GPU_GEMM_LOG=1: each pick */
    shape_t             shapes[MAX_SHAPES];
};

gemm_t *
gemm_create(cudaStream_t s, cublasHandle_t blas, void *ws, size_t ws_bytes,
    cudaDataType_t in_type)
{
    gemm_t *g = (gemm_t *) calloc(1, sizeof(*g));

    if (g == NULL) {
        return NULL;
    }
    g->stream = s;
    g->blas = blas;
    g->ws = ws;
    g->ws_bytes = ws_bytes;
    g->in_type = in_type;
    g->use_gemv = getenv("NGX_GPU_GEMV") == NULL
                  || strcmp(getenv("NGX_GPU_GEMV"), "0") != 0;
    g->rope_fused = getenv("NGX_GPU_ROPE_FUSED") == NULL
                    || strcmp(getenv("NGX_GPU_ROPE_FUSED"), "0") != 0;
    g->split_margin = getenv("NGX_GPU_SPLIT_MARGIN")
                      ? (float) atof(getenv("NGX_GPU_SPLIT_MARGIN"))
                      : SPLIT_MARGIN;
    g->split_chain = getenv("NGX_GPU_SPLIT_RULE") != NULL
                     && strcmp(getenv("NGX_GPU_SPLIT_RULE"), "chain") == 0;
    g->max_split = getenv("NGX_GPU_GEMV_SPLIT")
                   ? atoi(getenv("NGX_GPU_GEMV_SPLIT")) : GEMV_MAX_SPLIT;
    g->log = getenv("NGX_GPU_GEMM_LOG") != NULL;
    if (cublasLtCreate(&g->lt) != CUBLAS_STATUS_SUCCESS
        || cudaEventCreate(&g->ev0) != cudaSuccess
        || cudaEventCreate(&g->ev1) != cudaSuccess)
    {
        gemm_destroy(g);
        return NULL;
    }
    return g;
}

static void
shape_free(shape_t *sh)
{
    if (sh->op) cublasLtMatmulDescDestroy(sh->op);
    if (sh->a) cublasLtMatrixLayoutDestroy(sh->a);
    if (sh->b) cublasLtMatrixLayoutDestroy(sh->b);
    if (sh->c) cublasLtMatrixLayoutDestroy(sh->c);
    memset(sh, 0, sizeof(*sh));
}

void
gemm_destroy(gemm_t *g)
{
    int i;

    if (g == NULL) {
        return;
    }
    for (i = 0; i < g->n_shapes; i++) {
        shape_free(&g->shapes[i]);
    }
    if (g->ev0) cudaEventDestroy(g->ev0);
    if (g->ev1) cudaEventDestroy(g->ev1);
    if (g->lt) cublasLtDestroy(g->lt);
    free(g);
}

static const gemm_epi_t gemm_no_epi = { GEMV_PLAIN, 0,
                                        { NULL, NULL, NULL, 0.0f, NULL },
                                        {}, {} };

#define MAX_TRIED  (2 * 4 + 1)          /* two kernels, four splits, cuBLAS */

/* epi < 0: any */
static shape_t *
find(const gemm_t *g, int M, int K, int N, int epi, int pro)
{
    int i;

    for (i = 0; i < g->n_shapes; i++) {
        const shape_t *sh = &g->shapes[i];
        if (sh->M == M && sh->K == K && sh->N == N && sh->pro == pro
            && (epi < 0 || sh->epi == epi))
        {
            return (shape_t *) sh;
        }
    }
    return NULL;
}

/* the epilogue as its own kernel, after a product into y */
static cudaError_t
epi_kernel(gemm_t *g, const gemm_epi_t *ep, float *y, int M, int N)
{
    switch (ep->kind) {
    case GEMV_SWIGLU:
        kc_swiglu(g->stream, (kc_dtype_t) ep->dt, ep->a.out, y, M, N / 2);
        break;
    case GEMV_NORM:
        kc_rmsnorm(g->stream, (kc_dtype_t) ep->dt, ep->a.out, ep->a.x, y,
                   ep->a.w, NULL, M, N, ep->a.eps, 1);
        break;
    case GEMV_ROPE:
        kc_rope_kv(g->stream, (kc_dtype_t) ep->dt, y, ep->r.kv_layer,
                   ep->r.block_stride, ep->r.st, ep->r.bias,
                   ep->r.inv_freq, M, ep->r.n_heads, ep->r.n_kv_heads,
                   ep->r.head_dim, ep->r.rope_dim, ep->r.interleaved,
                   ep->r.block_size);
        break;
    }
    return cudaGetLastError();
}

/* the product into y and its epilogue, as kern (GEMV_WON_*) says; algo:
 * cuBLASLt's, for GEMV_WON_NONE */
static cublasStatus_t
lt_run(gemm_t *g, const shape_t *sh, int kern,
    const cublasLtMatmulAlgo_t *algo, float *y, const void *in,
    const void *w, const gemm_epi_t *ep)
{
    const float one = 1.0f, zero = 0.0f;
    const gemv_pro_t *pro = ep->p.x != NULL ? &ep->p : NULL;
    cudaError_t r = cudaSuccess;

    if (pro != NULL && (kern != GEMV_WON_FUSED
                        || (ep->kind != GEMV_SWIGLU && ep->kind != GEMV_ROPE)))
    {
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (kern == GEMV_WON_FUSED) {
        switch (ep->kind) {
        case GEMV_SWIGLU:
            r = gemv_swiglu_run(g->stream, g->in_type, ep->a.out, in, w,
                                sh->M, sh->K, sh->N, sh->split, pro);
            break;
        case GEMV_NORM:
            r = gemv_norm_run(g->stream, g->in_type, y, in, w, sh->M, sh->K,
                              sh->N, sh->split, &ep->a);
            break;
        case GEMV_ROPE:
            r = gemv_rope_run(g->stream, g->in_type, y, in, w, sh->M, sh->K,
                              sh->N, sh->split, &ep->r, pro);
            break;
        default:
            r = gemv_run(g->stream, g->in_type, y, in, w, sh->M, sh->K,
                         sh->N, sh->split);
        }
        return r == cudaSuccess ? CUBLAS_STATUS_SUCCESS
                                : CUBLAS_STATUS_EXECUTION_FAILED;
    }
    if (kern == GEMV_WON_THEN) {
        if (gemv_run(g->stream, g->in_type, y, in, w, sh->M, sh->K, sh->N,
                     sh->split)
            != cudaSuccess)
        {
            return CUBLAS_STATUS_EXECUTION_FAILED;
        }
    } else if (cublasLtMatmul(g->lt, sh->op, &one, w, sh->a, in, sh->b,
                              &zero, y, sh->c, y, sh->c, algo, g->ws,
                              g->ws_bytes, g->stream)
               != CUBLAS_STATUS_SUCCESS)
    {
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    return epi_kernel(g, ep, y, sh->M, sh->N) == cudaSuccess
           ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

/*
 * mean device time of one run in ms, -1 if it fails (kern and algo as
 * lt_run's).  TUNE_RUNS runs are captured into a graph and
 * the graph's replay is timed, as the decode graphs will run them: timed
 * one call at a time, a small product measures the host's cost of the
 * call (cuBLASLt's is several µs) rather than the device's.
 */
static float
timed(gemm_t *g, const shape_t *sh, int kern,
    const cublasLtMatmulAlgo_t *algo, float *out, const void *in,
    const void *w, const gemm_epi_t *ep)
{
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
    float ms = -1.0f, t;
    int i, ok;

    if (lt_run(g, sh, kern, algo, out, in, w, ep) != CUBLAS_STATUS_SUCCESS
        || cudaStreamBeginCapture(g->stream, cudaStreamCaptureModeThreadLocal)
           != cudaSuccess)
    {
        cudaGetLastError();
        return -1.0f;
    }
    for (i = 0; i < TUNE_RUNS && st == CUBLAS_STATUS_SUCCESS; i++) {
        st = lt_run(g, sh, kern, algo, out, in, w, ep);
    }
    ok = cudaStreamEndCapture(g->stream, &graph) == cudaSuccess
         && st == CUBLAS_STATUS_SUCCESS
         && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess
         && cudaGraphLaunch(exec, g->stream) == cudaSuccess;    /* warm-up */

    /* the best of TUNE_REPLAYS: one replay alone varied by half (clocks
     * settling), enough to make a slower candidate win */
    for (i = 0; i < TUNE_REPLAYS && ok; i++) {
        ok = cudaEventRecord(g->ev0, g->stream) == cudaSuccess
             && cudaGraphLaunch(exec, g->stream) == cudaSuccess
             && cudaEventRecord(g->ev1, g->stream) == cudaSuccess
             && cudaEventSynchronize(g->ev1) == cudaSuccess
             && cudaEventElapsedTime(&t, g->ev0, g->ev1) == cudaSuccess;
        if (ok && (i == 0 || t < ms)) {
            ms = t;
        }
    }
    if (!ok) {
        ms = -1.0f;
    }
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    return ms > 0.0f ? ms / TUNE_RUNS : -1.0f;
}

int
gemm_tune(gemm_t *g, float *out, const void *in, const void *w, int M,
    int K, int N, const gemm_epi_t *ep)
{
    cublasLtMatmulHeuristicResult_t res[CANDIDATES];
    cublasLtMatmulPreference_t pref = NULL;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    shape_t sh;
    split_cand_t tried[MAX_TRIED];
    int n = 0, i, best = -1, pro, n_tried = 0;
    float best_ms = 0.0f;

    if (ep == NULL) {
        ep = &gemm_no_epi;
    }
    pro = ep->p.x != NULL;
    if (find(g, M, K, N, ep->kind, pro) != NULL) {
        return 0;
    }
    if (g->n_shapes == MAX_SHAPES) {
        return -1;
    }
    memset(&sh, 0, sizeof(sh));
    sh.M = M;
    sh.K = K;
    sh.N = N;
    sh.epi = ep->kind;
    sh.pro = pro;

    /* the column-major view of out^T [N,M] = w [K,N]^T . in^T [K,M] */
    if (cublasLtMatmulDescCreate(&sh.op, CUBLAS_COMPUTE_32F, CUDA_R_32F)
            != CUBLAS_STATUS_SUCCESS
        || cublasLtMatmulDescSetAttribute(sh.op, CUBLASLT_MATMUL_DESC_TRANSA,
               &ta, sizeof(ta)) != CUBLAS_STATUS_SUCCESS
        || cublasLtMatmulDescSetAttribute(sh.op, CUBLASLT_MATMUL_DESC_TRANSB,
               &tb, sizeof(tb)) != CUBLAS_STATUS_SUCCESS
        || cublasLtMatrixLayoutCreate(&sh.a, g->in_type, K, N, K)
            != CUBLAS_STATUS_SUCCESS
        || cublasLtMatrixLayoutCreate(&sh.b, g->in_type, K, M, K)
            != CUBLAS_STATUS_SUCCESS
        || cublasLtMatrixLayoutCreate(&sh.c, CUDA_R_32F, N, M, N)
            != CUBLAS_STATUS_SUCCESS
        || cublasLtMatmulPreferenceCreate(&pref) != CUBLAS_STATUS_SUCCESS
        || cublasLtMatmulPreferenceSetAttribute(pref,
               CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &g->ws_bytes,
               sizeof(g->ws_bytes)) != CUBLAS_STATUS_SUCCESS
        || (!pro                /* with the prologue cuBLAS cannot run */
            && (cublasLtMatmulAlgoGetHeuristic(g->lt, sh.op, sh.a, sh.b,
                    sh.c, sh.c, pref, CANDIDATES, res, &n)
                != CUBLAS_STATUS_SUCCESS
                || n == 0)))
    {
        goto fail;
    }

    /* candidate 0 is cuBLAS's own pick: keep another only if faster;
     * with the norm prologue only our kernel (fused) runs */
    for (i = 0; i < n && !pro; i++) {
        float ms;
        if (res[i].state != CUBLAS_STATUS_SUCCESS) {
            continue;
        }
        ms = timed(g, &sh, GEMV_WON_NONE, &res[i].algo, out, in, w, ep);
        if (ms > 0.0f && (best < 0 || ms < best_ms)) {
            best = i;
            best_ms = ms;
        }
    }
    if (!pro) {
        if (best < 0) {
            goto fail;
        }
        g->improved += best != 0;
        sh.algo = res[best].algo;
        tried[n_tried++] = (split_cand_t) { GEMV_WON_NONE, 1, best_ms };
    }

    /* our own kernel for few rows, with the epilogue in it, then
     * without it and the epilogue's own kernel after it, each with 1, 2,
     * 4 or 8 warps a row (while each lane still has two chunks of 8 of
     * a row: with less, lanes idle); a launch the kernel refuses times
     * as -1 and is left out; split_pick() chooses */
    if (g->use_gemv && gemv_supported(g->in_type, M, K)) {
        int split;
        float ms;

        for (split = 1;
             split <= g->max_split && (split == 1 || K >= split * 512);
             split *= 2)
        {
            sh.split = split;
            if (ep->kind != GEMV_ROPE || g->rope_fused) {
                ms = timed(g, &sh, GEMV_WON_FUSED, NULL, out, in, w, ep);
                if (ms > 0.0f && n_tried < MAX_TRIED) {
                    tried[n_tried++] = (split_cand_t) { GEMV_WON_FUSED,
                                                        split, ms };
                }
            }
            if (ep->kind != GEMV_PLAIN) {
                ms = timed(g, &sh, GEMV_WON_THEN, NULL, out, in, w, ep);
                if (ms > 0.0f && n_tried < MAX_TRIED) {
                    tried[n_tried++] = (split_cand_t) { GEMV_WON_THEN,
                                                        split, ms };
                }
            }
        }
    }
    i = split_pick(tried, n_tried, g->split_margin, g->split_chain);
    if (i < 0) {
        goto fail;
    }
    sh.gemv = tried[i].kern;
    sh.split = tried[i].split;
    best_ms = tried[i].ms;
    g->n_gemv += sh.gemv != GEMV_WON_NONE;
    if (pro && sh.gemv != GEMV_WON_FUSED) {
        goto fail;
    }
    sh.ms = best_ms;
    /* the runner-up, for gemm_swap: the fastest other candidate, margins
     * aside (cuBLAS's counts as split 1) */
    for (i = 0; i < n_tried; i++) {
        const split_cand_t *t = &tried[i];
        if ((t->kern != sh.gemv || (t->kern != GEMV_WON_NONE
                                    && t->split != sh.split))
            && (sh.alt_ms == 0.0f || t->ms < sh.alt_ms))
        {
            sh.alt_gemv = t->kern;
            sh.alt_split = t->split;
            sh.alt_ms = t->ms;
        }
    }
    /* the pick's kernel at one warp a row, for gemm_lean */
    for (i = 0; sh.gemv != GEMV_WON_NONE && sh.split > 1 && i < n_tried;
         i++)
    {
        if (tried[i].kern == sh.gemv && tried[i].split == 1) {
            sh.lean_gemv = sh.gemv;
            sh.lean_split = 1;
            sh.lean_ms = tried[i].ms;
        }
    }
    if (g->log) {
        log_info("gemm M=%d K=%d N=%d epilogue %d%s: %s, split %d, "
                 "%.2f us", M, K, N, ep->kind, pro ? " (norm prologue)" : "",
                 sh.gemv == GEMV_WON_FUSED ? "gemv + epilogue"
                 : sh.gemv == GEMV_WON_THEN ? "gemv, epilogue after"
                 : "cuBLAS", sh.split, best_ms * 1000.0f);
    }
    g->shapes[g->n_shapes++] = sh;
    cublasLtMatmulPreferenceDestroy(pref);
    return 0;

fail:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    shape_free(&sh);
    cudaGetLastError();
    return -1;
}

cublasStatus_t
gemm_run(gemm_t *g, float *out, const void *in, const void *w, int M,
    int K, int N, const gemm_epi_t *ep)
{
    const float one = 1.0f, zero = 0.0f;
    const shape_t *sh;

    if (ep == NULL) {
        ep = &gemm_no_epi;
    }
    sh = find(g, M, K, N, ep->kind, ep->p.x != NULL);
    if (sh == NULL && ep->kind == GEMV_PLAIN) {
        sh = find(g, M, K, N, -1, 0);   /* its product, cuBLAS's pick */
    }
    if (sh != NULL) {
        return lt_run(g, sh, sh->epi == ep->kind ? sh->gemv : GEMV_WON_NONE,
                      &sh->algo, out, in, w, ep);
    }
    if (ep->p.x != NULL) {
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one,
                     w, g->in_type, K, in, g->in_type, K, &zero,
                     out, CUDA_R_32F, N, CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS)
    {
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    return epi_kernel(g, ep, out, M, N) == cudaSuccess
           ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

int
gemm_fused(const gemm_t *g, int M, int K, int N, int kind)
{
    const shape_t *sh = find(g, M, K, N, kind, 0);

    return sh != NULL && sh->gemv == GEMV_WON_FUSED;
}

float
gemm_time_us(const gemm_t *g, int M, int K, int N, int kind, int pro)
{
    const shape_t *sh = find(g, M, K, N, kind, pro);

    return sh != NULL ? sh->ms * 1000.0f : -1.0f;
}

/* whether sh's runner-up timed within ratio of its pick, alone */
static int
alt_close(const shape_t *sh, float ratio)
{
    return sh->alt_ms > 0.0f && sh->alt_ms <= sh->ms * ratio;
}

int
gemm_close(const gemm_t *g, int M, float ratio, int *idx, int max)
{
    int i, n = 0;

    for (i = 0; i < g->n_shapes && n < max; i++) {
        const shape_t *sh = &g->shapes[i];
        if (sh->M == M && alt_close(sh, ratio)) {
            idx[n++] = i;
        }
    }
    return n;
}

void
gemm_swap(gemm_t *g, int idx)
{
    shape_t *sh = &g->shapes[idx];
    int gv = sh->gemv, sp = sh->split;
    float ms = sh->ms;

    sh->gemv = sh->alt_gemv;
    sh->split = sh->alt_split;
    sh->ms = sh->alt_ms;
    sh->alt_gemv = gv;
    sh->alt_split = sp;
    sh->alt_ms = ms;
}

int
gemm_lean(const gemm_t *g, int M, float ratio, int *idx, int max)
{
    int i, n = 0;

    for (i = 0; i < g->n_shapes && n < max; i++) {
        const shape_t *sh = &g->shapes[i];

        /* the same kernel (a swap with the runner-up kept may have
         * changed it) */
        if (sh->M == M && sh->lean_ms > 0.0f && sh->gemv == sh->lean_gemv
            && sh->lean_split != sh->split
            && !(alt_close(sh, ratio) && sh->alt_gemv == sh->gemv
                 && sh->alt_split == sh->lean_split))
        {
            idx[n++] = i;
        }
    }
    return n;
}

void
gemm_lean_swap(gemm_t *g, int idx)
{
    shape_t *sh = &g->shapes[idx];
    int sp = sh->split;
    float ms = sh->ms;

    sh->split = sh->lean_split;
    sh->ms = sh->lean_ms;
    sh->lean_split = sp;
    sh->lean_ms = ms;
}

void
gemm_describe(const gemm_t *g, int idx, int lean, char *buf, size_t len)
{
    const shape_t *sh = &g->shapes[idx];
    const char *k[] = { "cuBLAS", "gemv + epilogue", "gemv, epilogue after" };

    snprintf(buf, len, "M=%d K=%d N=%d epilogue %d%s: %s split %d "
             "(%.2f us alone) over %s split %d (%.2f us)", sh->M, sh->K,
             sh->N, sh->epi, sh->pro ? " (norm prologue)" : "",
             k[sh->gemv], sh->split, sh->ms * 1000.0f,
             k[lean ? sh->gemv : sh->alt_gemv],
             lean ? sh->lean_split : sh->alt_split,
             (lean ? sh->lean_ms : sh->alt_ms) * 1000.0f);
}

int
gemm_tuned(const gemm_t *g, int *improved, int *gemv)
{
    *improved = g->improved;
    *gemv = g->n_gemv;
    return g->n_shapes;
}
