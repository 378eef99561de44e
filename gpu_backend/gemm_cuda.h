/*
 * gemm_cuda.h - the CUDA engine's matrix products, out[M,N] (f32) =
 * in[M,K] @ w[N,K]^T with in and w in the storage dtype, f32 accumulate.
 *
 * cuBLAS's default choice is made for large products; a decode step's
 * are M = 1 .. 256 rows against a whole weight matrix, where the choice
 * of kernel (tile, split-K) decides how much of the memory bandwidth is
 * used.  So the shapes of the decode graphs are tuned once, at start:
 * cuBLASLt's heuristic candidates for each are timed on the engine's own
 * buffers, with gemv_cuda.cu's kernel for M <= GEMV_MAX_M beside them,
 * and the fastest is kept.  Every other shape (prefill, mixed
 * steps) goes through cublasGemmEx.  Nothing here allocates device
 * memory: the workspace is the caller's.
 */

#ifndef GPU_GEMM_CUDA_H
#define GPU_GEMM_CUDA_H

#include <stddef.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "gemv_cuda.h"

typedef struct gemm_s  gemm_t;

#ifdef __cplusplus
extern "C" {
#endif

gemm_t *gemm_create(cudaStream_t s, cublasHandle_t blas, void *ws,
    size_t ws_bytes, cudaDataType_t in_type);
void gemm_destroy(gemm_t *g);

/*
 * What follows a product (kind GEMV_PLAIN: nothing): GEMV_SWIGLU, the
 * product's N rows are gate and up interleaved and out[M, N / 2] =
 * silu(gate) * up (kc_swiglu); GEMV_NORM, x += the product and out =
 * RMSNorm(x) * w (kc_rmsnorm with write_x); GEMV_ROPE, the product is
 * q|k|v and kc_rope_kv() follows (r: its operands).  out in dtype dt.
 * With gemv_cuda.cu's kernel the epilogue runs inside it; with cuBLAS
 * its kernel runs after the product, which is then in y.
 */
typedef struct {
    int           kind;
    int           dt;           /* kc_dtype_t of a.out and of the cache */
    gemv_epi_t    a;            /* out; for GEMV_NORM x, w, eps, count */
    gemv_rope_t   r;            /* GEMV_ROPE's */
    gemv_pro_t    p;            /* the norm prologue (p.x NULL: none):
                                 * tuned and run as a shape of its own */
} gemm_epi_t;

/* time the candidates for this shape and epilogue (NULL: none) on these
 * buffers, product and epilogue together, and keep the fastest; 0, or
 * -1 (the shape then stays with cublasGemmEx) */
int gemm_tune(gemm_t *g, float *y, const void *in, const void *w, int M,
    int K, int N, const gemm_epi_t *ep);

/* queue the product into y and its epilogue on the stream (capturable) */
cublasStatus_t gemm_run(gemm_t *g, float *y, const void *in,
    const void *w, int M, int K, int N, const gemm_epi_t *ep);

/* whether this shape with this epilogue runs as one kernel */
int gemm_fused(const gemm_t *g, int M, int K, int N, int kind);

/* the tuned pick's device µs for the shape, epilogue kind and (pro) the
 * norm prologue, or -1 where not tuned (or, with the prologue, where our
 * kernel cannot run it) */
float gemm_time_us(const gemm_t *g, int M, int K, int N, int kind, int pro);

/*
 * Settling picks in the step (the engine times whole decode graphs): the
 * tuned shapes of M rows whose runner-up (the fastest other candidate,
 * margins aside) timed within ratio of the pick, alone: up to max of
 * their indices into idx, and how many; gemm_swap makes the runner-up
 * the pick and the pick the runner-up (twice: as before);
 * gemm_describe says both.
 */
int gemm_close(const gemm_t *g, int M, float ratio, int *idx, int max);
void gemm_swap(gemm_t *g, int idx);

/*
 * And the tuned shapes of M rows whose pick is our kernel at 2 or more
 * warps a row, at one warp a row (the fewest blocks), except where that
 * is the close runner-up gemm_close gives already: alone it times
 * slower, but in the step its fewer blocks leave room on every
 * multiprocessor for the next kernel's, which then issue their first
 * weight loads early (gemv_trigger_first).  gemm_lean_swap switches
 * between the two splits.
 */
int gemm_lean(const gemm_t *g, int M, float ratio, int *idx, int max);
void gemm_lean_swap(gemm_t *g, int idx);

/* the pick and the other way settling tries (lean: gemm_lean's, else
 * gemm_close's), in words */
void gemm_describe(const gemm_t *g, int idx, int lean, char *buf,
    size_t len);

/* tuned shapes so far, how many of them beat cuBLAS's first pick, and
 * how many run gemv_cuda.cu's kernel */
int gemm_tuned(const gemm_t *g, int *improved, int *gemv);

#ifdef __cplusplus
}
#endif

#endif /* GPU_GEMM_CUDA_H */
