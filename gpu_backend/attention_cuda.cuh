/*
 * attention_cuda.cuh - what the attention kernels share: which rows of a
 * step are prefill rows, and the tensor-core kernels' entry points
 * (attention_tc_cuda.cu, attention_dec_cuda.cu) for kc_attention() in
 * attention_cuda.cu.
 */

#ifndef GPU_ATTENTION_CUDA_CUH
#define GPU_ATTENTION_CUDA_CUH

#include <limits.h>

#include "kernels_cuda.h"

/*
 * Token t is a prefill row when its item has another token in the step
 * next to it (the engine packs an item's tokens together).  Both kernels
 * decide with this, so each row is served by exactly one of them.
 */
__device__ __forceinline__ int
kc_att_multi(const kc_token_t *tk, int t, int n_tok)
{
    int item = tk[t].item;

    return (t > 0 && tk[t - 1].item == item)
           || (t + 1 < n_tok && tk[t + 1].item == item);
}

/* head dims and dtypes the tensor-core kernel takes */
int att_tc_supported(kc_dtype_t dt, int head_dim);

/* the prefill rows of the step (kc_att_multi) through that kernel */
cudaError_t att_tc_launch(cudaStream_t s, kc_dtype_t dt, void *out,
    const float *qkv, const void *kv_layer, size_t block_stride,
    kc_step_t st, int n_tok, int n_heads, int n_kv_heads, int head_dim,
    int block_size);

/* query heads a warp of the decode kernel serves: an m16n8k16's rows */
#define ATT_DEC_HEADS  16

/* the decode kernel on tensor cores (attention_dec_cuda.cu): the rows
 * the per-token kernel would serve (skip_multi as there), with splits
 * left in part for combine_kernel */
cudaError_t att_dec_launch(cudaStream_t s, kc_dtype_t dt, void *out,
    float *part, const float *qkv, const void *kv_layer,
    size_t block_stride, kc_step_t st, int n_tok, int n_heads,
    int n_kv_heads, int head_dim, int block_size, int n_split,
    int skip_multi);

#endif /* GPU_ATTENTION_CUDA_CUH */
