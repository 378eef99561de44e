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

typedef struct gemm_s  gemm_t;

#ifdef __cplusplus
extern "C" {
#endif

gemm_t *gemm_create(cudaStream_t s, cublasHandle_t blas, void *ws,
    size_t ws_bytes, cudaDataType_t in_type);
void gemm_destroy(gemm_t *g);

/* time the candidates for this shape on these buffers and keep the
 * fastest; 0, or -1 (the shape then stays with cublasGemmEx) */
int gemm_tune(gemm_t *g, float *out, const void *in, const void *w, int M,
    int K, int N);

/* queue the product on the stream (capturable) */
cublasStatus_t gemm_run(gemm_t *g, float *out, const void *in,
    const void *w, int M, int K, int N);

/* tuned shapes so far, how many of them beat cuBLAS's first pick, and
 * how many run gemv_cuda.cu's kernel */
int gemm_tuned(const gemm_t *g, int *improved, int *gemv);

#ifdef __cplusplus
}
#endif

#endif /* GPU_GEMM_CUDA_H */
