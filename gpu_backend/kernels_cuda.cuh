/*
 * kernels_cuda.cuh - device helpers shared by the .cu files: loads and
 * stores of the storage dtypes, block-wide reductions, and the switch
 * from a run-time kc_dtype_t to a template argument.
 */

#ifndef GPU_KERNELS_CUDA_CUH
#define GPU_KERNELS_CUDA_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include "kernels_cuda.h"

/* run the statement with T the C++ type of dt */
#define KC_DISPATCH(dt, ...)                                              \
    do {                                                                  \
        switch (dt) {                                                     \
        case KC_F32: { typedef float T; __VA_ARGS__; } break;             \
        case KC_BF16: { typedef __nv_bfloat16 T; __VA_ARGS__; } break;    \
        case KC_F16: { typedef __half T; __VA_ARGS__; } break;            \
        }                                                                 \
    } while (0)

__device__ __forceinline__ float kc_f(float v) { return v; }
__device__ __forceinline__ float kc_f(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}
__device__ __forceinline__ float kc_f(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T kc_store(float v);
template <> __device__ __forceinline__ float kc_store<float>(float v)
{
    return v;
}
template <> __device__ __forceinline__ __nv_bfloat16
kc_store<__nv_bfloat16>(float v)
{
    return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ __half kc_store<__half>(float v)
{
    return __float2half_rn(v);
}

/* 8 consecutive elements (16-byte aligned) as f32: 16 bytes a load for
 * the 2-byte types, two for f32 */
__device__ __forceinline__ void
kc_load8(const float *p, float *f)
{
    float4 a = reinterpret_cast<const float4 *>(p)[0];
    float4 b = reinterpret_cast<const float4 *>(p)[1];

    f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w;
    f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}

/* 8 values of a 2-byte type, loaded as one uint4, as f32; the pointer
 * argument only names the type */
__device__ __forceinline__ void
kc_unpack8(uint4 u, const __nv_bfloat16 *, float *f)
{
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);

#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 v = __bfloat1622float2(h[i]);
        f[2 * i] = v.x;
        f[2 * i + 1] = v.y;
    }
}

__device__ __forceinline__ void
kc_unpack8(uint4 u, const __half *, float *f)
{
    const __half2 *h = reinterpret_cast<const __half2 *>(&u);

#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 v = __half22float2(h[i]);
        f[2 * i] = v.x;
        f[2 * i + 1] = v.y;
    }
}

__device__ __forceinline__ void
kc_load8(const __nv_bfloat16 *p, float *f)
{
    kc_unpack8(*reinterpret_cast<const uint4 *>(p), p, f);
}

__device__ __forceinline__ void
kc_load8(const __half *p, float *f)
{
    kc_unpack8(*reinterpret_cast<const uint4 *>(p), p, f);
}

/* SwiGLU of one (gate, up) pair: silu(g) * u, as k_swiglu in kernels_cpu.c */
__device__ __forceinline__ float
kc_silu_mul(float g, float u)
{
    return g / (1.0f + expf(-g)) * u;
}

/*
 * RoPE over a q|k|v row, a pair of dims at a time (kc_rope_kv's kernel
 * and the RoPE epilogue of gemv_cuda.cu).  Pair u < (q_dim + 2 kv_dim)
 * / 2 is, for q's and k's heads, pair j of head h: (j, j + rot / 2)
 * for j < rot / 2 unless interleaved, else (2j, 2j + 1); rotated by
 * pos * inv_freq[j] for j < rot / 2 (*ang = j, else -1), as k_rope in
 * kernels_cpu.c.  Then v's dims two by two, which only take the bias.
 */
__device__ __forceinline__ void
kc_qkv_pair(int u, int n_heads, int n_kv, int hd, int rot, int interleaved,
    int *d0, int *d1, int *ang)
{
    int half = hd / 2, rotated = (n_heads + n_kv) * half;

    if (u < rotated) {
        int h = u / half, j = u - h * half;

        if (j < rot / 2 && !interleaved) {
            *d0 = j;
            *d1 = j + rot / 2;
        } else {
            *d0 = 2 * j;
            *d1 = 2 * j + 1;
        }
        *d0 += h * hd;
        *d1 += h * hd;
        *ang = j < rot / 2 ? j : -1;
    } else {
        *d0 = 2 * u;            /* 2 * rotated = q_dim + kv_dim: v's */
        *d1 = *d0 + 1;
        *ang = -1;
    }
}

/* pair (d0, d1)'s values a and b with the bias added and, when ang >=
 * 0, rotated to position pos */
__device__ __forceinline__ void
kc_qkv_rope(float *a, float *b, int d0, int d1, int ang, int pos,
    const float *bias, const float *inv_freq)
{
    if (bias != NULL) {
        *a += bias[d0];
        *b += bias[d1];
    }
    if (ang >= 0) {
        float sn, cs, x0 = *a;

        sincosf((float) pos * inv_freq[ang], &sn, &cs);
        *a = x0 * cs - *b * sn;
        *b = *b * cs + x0 * sn;
    }
}

/* token tk's K row in the paged cache (kv: the layer's start in block
 * 0); its V row is bs rows further */
template <typename T>
__device__ __forceinline__ T *
kc_kv_row(T *kv, size_t block_stride, const kc_step_t &st, kc_token_t tk,
    int kv_dim, int bs)
{
    return kv + (size_t) st.tables[st.item_table[tk.item] + tk.pos / bs]
                * block_stride
           + (size_t) (tk.pos % bs) * kv_dim;
}

/* pair (d0, d1), its final values a and b: q's into the token's q|k|v
 * row q_row (f32), k's and v's into its K row k_row (kc_kv_row) and the
 * V row after it */
template <typename T>
__device__ __forceinline__ void
kc_qkv_put(float *q_row, T *k_row, int d0, int d1, float a, float b,
    int q_dim, int kv_dim, int bs)
{
    int o = d0 - q_dim;

    if (o < 0) {
        q_row[d0] = a;
        q_row[d1] = b;
        return;
    }
    if (o >= kv_dim) {
        k_row += (size_t) bs * kv_dim;
        o -= kv_dim;
    }
    k_row[o] = kc_store<T>(a);
    k_row[o + d1 - d0] = kc_store<T>(b);
}

__device__ __forceinline__ float
kc_warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    return v;
}

__device__ __forceinline__ float
kc_warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    }
    return v;
}

/* sum over the block (blockDim.x a multiple of 32); every thread gets it.
 * red: 32 floats of shared memory, free again when this returns */
__device__ __forceinline__ float
kc_block_sum(float v, float *red)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int n_warps = blockDim.x >> 5;

    v = kc_warp_sum(v);
    if (lane == 0) {
        red[warp] = v;
    }
    __syncthreads();
    v = lane < n_warps ? red[lane] : 0.0f;
    v = kc_warp_sum(v);
    __syncthreads();            /* red is reused by the next call */
    return v;
}

/*
 * Programmatic dependent launch (sm_90).  A kernel started by
 * kc_launch() may be scheduled while the kernel before it in the stream
 * still runs: it calls kc_pdl_wait() before it reads or writes anything
 * that kernel touches (the wait returns once that kernel has finished
 * and its writes are visible), then kc_pdl_trigger(), which lets the
 * kernel after it be scheduled in turn.  So the launch latency of a
 * chain of small dependent kernels (a decode step) overlaps the kernel
 * before, and a product's first weight loads (they depend on nothing)
 * can be issued before its wait.  Both are no-ops for a kernel launched
 * the ordinary way.  NGX_GPU_PDL=0 launches the ordinary way (for
 * comparison).  Some products trigger before their own wait
 * (gemv_trigger_first), so a kernel may start while the one two before
 * it still runs: what any kernel reads before its wait must be written
 * by no kernel of the step (weights, the step's uploaded inputs, the
 * cache rows of earlier steps).
 */
__device__ __forceinline__ void
kc_pdl_wait(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void
kc_pdl_trigger(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* launch with the n attributes in at[] (room for one more) and the
 * programmatic-launch one where it is on */
template <typename... P, typename... A>
static cudaError_t
kc_launch_with(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
    cudaStream_t s, cudaLaunchAttribute *at, int n, A... args)
{
    cudaLaunchConfig_t cfg = {};

    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    at[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[n].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = n + kc_pdl_enabled();
    return cudaLaunchKernelEx(&cfg, kernel, args...);
}

template <typename... P, typename... A>
static cudaError_t
kc_launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
    cudaStream_t s, A... args)
{
    cudaLaunchAttribute at[1];

    return kc_launch_with(kernel, grid, block, smem, s, at, 0, args...);
}

/* kc_launch() with the grid in clusters of `cluster` blocks (sm_90) */
template <typename... P, typename... A>
static cudaError_t
kc_launch_cluster(void (*kernel)(P...), dim3 grid, dim3 cluster, dim3 block,
    size_t smem, cudaStream_t s, A... args)
{
    cudaLaunchAttribute at[2];

    at[0].id = cudaLaunchAttributeClusterDimension;
    at[0].val.clusterDim.x = cluster.x;
    at[0].val.clusterDim.y = cluster.y;
    at[0].val.clusterDim.z = cluster.z;
    return kc_launch_with(kernel, grid, block, smem, s, at, 1, args...);
}

#endif /* GPU_KERNELS_CUDA_CUH */
