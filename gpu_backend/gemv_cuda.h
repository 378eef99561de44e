/*
 * gemv_cuda.h - matrix products of few rows: out[M,N] (f32) = in[M,K] @
 * w[N,K]^T for M <= GEMV_MAX_M, in and w in the storage dtype.
 *
 * A decode step of a few sequences reads every weight once and does two
 * FLOPs per weight and row: the time is the weight bytes over the memory
 * bandwidth.  cuBLAS's kernels for M = 1..8 leave a third of the
 * bandwidth unused at these shapes (too few tiles, or a split-K reduce),
 * so this is a kernel whose only job is to stream the weights: one warp
 * (or a split of 2-8 warps) per output row, 16-byte loads, several in
 * flight per thread, the few input rows read through the L1 cache.
 * gemm_cuda.c times it against cuBLASLt's candidates at start and keeps
 * whichever is faster.
 */

#ifndef GPU_GEMV_CUDA_H
#define GPU_GEMV_CUDA_H

#include <cuda_runtime.h>
#include <library_types.h>

#include "kernels_cuda.h"

#define GEMV_MAX_M  8
#define GEMV_MAX_SPLIT  8       /* split: 1, 2, 4 or 8 warps a row's K */

/* what follows the product in the same kernel */
#define GEMV_PLAIN   0
#define GEMV_SWIGLU  1
#define GEMV_NORM    2
#define GEMV_ROPE    3

#ifdef __cplusplus
extern "C" {
#endif

/* whether the kernel takes this shape and dtype */
int gemv_supported(cudaDataType_t dt, int M, int K);

/* queue the product on the stream (capturable); split warps share each
 * row's K (1, 2, 4 or 8: more for a long K and few rows, so that more
 * warps stream it; gemm_tune times each) */
cudaError_t gemv_run(cudaStream_t s, cudaDataType_t dt, float *out,
    const void *in, const void *w, int M, int K, int N, int split);

/*
 * The norm prologue of the SwiGLU and RoPE products: with x non-NULL the
 * kernel ignores its input and makes it, each block for itself, from
 * the residual stream: v = x + y (f32, [M][K]); in = v / rms(v) * w in
 * the storage dtype (bf16 and f32: v * w, the product scaled by
 * 1 / rms(v) after); block 0 writes v to x_out (not x: the other blocks
 * read x).  M * K * the dtype's size at most GEMV_PRO_MAX_BYTES: a block
 * has 48 KB of shared memory without opting in, and the kernel's own
 * arrays take up to 1.6 KB of it.
 */
#define GEMV_PRO_MAX_BYTES  (46 * 1024)

typedef struct {
    const float  *x;
    const float  *y;
    const float  *w;
    float         eps;
    float        *x_out;
} gemv_pro_t;

/*
 * The product and SwiGLU in one: w's N rows are gate and up interleaved
 * (row 2j gate j, 2j + 1 up j), and out[M, N / 2] in the storage dtype
 * is silu(gate) * up.  N even.
 */
cudaError_t gemv_swiglu_run(cudaStream_t s, cudaDataType_t dt, void *out,
    const void *in, const void *w, int M, int K, int N, int split,
    const gemv_pro_t *pro);

/*
 * An epilogue's operands: out for both (SwiGLU's [M][N / 2], the norm's
 * [M][N], storage dtype); the rest the norm's.
 */
typedef struct {
    void         *out;
    float        *x;            /* [M][N] the residual stream */
    const float  *w;            /* [N] the norm's weights */
    float         eps;
    int          *count;        /* one int, 0 before a launch and after */
} gemv_epi_t;

/*
 * The product y[M, N] (f32), then the residual add and RMSNorm of
 * kc_rmsnorm in its last block: x[m] += y[m]; out[m] = x[m] / rms(x[m])
 * * w.  N <= KC_NORM_MAX_DIM.
 */
cudaError_t gemv_norm_run(cudaStream_t s, cudaDataType_t dt, float *y,
    const void *in, const void *w, int M, int K, int N, int split,
    const gemv_epi_t *nrm);

/*
 * The RoPE epilogue's operands, kc_rope_kv()'s: the step's tokens, the
 * layer's cache and q|k|v bias, the rotation.
 */
typedef struct {
    kc_step_t     st;
    void         *kv_layer;
    size_t        block_stride;
    const float  *bias;         /* [q|k|v] or NULL */
    const float  *inv_freq;
    int           n_heads, n_kv_heads, head_dim, rope_dim, interleaved;
    int           block_size;
} gemv_rope_t;

/*
 * The q|k|v product and kc_rope_kv() in one: a warp a RoPE pair of w's
 * rows (kc_qkv_pair); the M rows are the step's first M tokens; q goes
 * rotated into y ([M][N] f32, N = q|k|v), k and v into the cache (y's k
 * and v parts are not written).
 */
cudaError_t gemv_rope_run(cudaStream_t s, cudaDataType_t dt, float *y,
    const void *in, const void *w, int M, int K, int N, int split,
    const gemv_rope_t *rp, const gemv_pro_t *pro);

/*
 * Whether the products launched from now on let the kernel after them
 * (programmatic dependent launch) start as soon as all their blocks
 * have started, before their own launch wait, instead of after it: so
 * that kernel's blocks, where they fit beside the running ones, issue
 * their first weight loads while the kernel before this product still
 * runs.  0 at start.
 */
void gemv_trigger_first(int on);

#ifdef __cplusplus
}
#endif

#endif /* GPU_GEMV_CUDA_H */
