/*
 * gemv_cuda.cu - matrix products of few rows (see gemv_cuda.h).
 *
 * One warp per R output rows: lane l takes the 8-element chunks l, l + 32,
 * l + 64, ... of each of w's rows, issues several of those 16-byte loads
 * before using any (so that enough bytes are in flight to cover the
 * memory's latency), and multiplies each chunk with the same 8 elements
 * of every input row, which it loads once for the R rows.  The R x M
 * partial sums are reduced across the warp at the end.
 * Weights are read with the evict-first hint: each is used once a step,
 * and the L2 is better kept for the activations and the KV cache.
 */

#include <stdlib.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gemv_cuda.h"
#include "kernels_cuda.cuh"

#define WARPS  8                        /* warps a block */

/* 8 consecutive weights as raw bits: one 16-byte load for the 2-byte
 * types, two for f32 */
template <typename T> struct w8_t {
    uint4 v[sizeof(T) / 2];
};

template <typename T>
__device__ __forceinline__ w8_t<T>
w8_load(const T *p)
{
    w8_t<T> c;

#pragma unroll
    for (int i = 0; i < (int) (sizeof(T) / 2); i++) {
        c.v[i] = __ldcs(reinterpret_cast<const uint4 *>(p) + i);
    }
    return c;
}

__device__ __forceinline__ void
w8_f32(const w8_t<float> &c, float *f)
{
    const float *s = reinterpret_cast<const float *>(c.v);

#pragma unroll
    for (int i = 0; i < 8; i++) {
        f[i] = s[i];
    }
}

__device__ __forceinline__ void
w8_f32(const w8_t<__nv_bfloat16> &c, float *f)
{
    kc_unpack8(c.v[0], (const __nv_bfloat16 *) NULL, f);
}

__device__ __forceinline__ void
w8_f32(const w8_t<__half> &c, float *f)
{
    kc_unpack8(c.v[0], (const __half *) NULL, f);
}

/* UNROLL chunks of R rows from column k0 on, 32 * 8 elements apart */
template <typename T, int UNROLL, int R>
__device__ __forceinline__ void
w8_issue(w8_t<T> (&c)[UNROLL][R], const T *const (&wr)[R], int k0, int K)
{
#pragma unroll
    for (int u = 0; u < UNROLL; u++) {
        int k = k0 + u * 32 * 8;
        if (k < K) {
#pragma unroll
            for (int r = 0; r < R; r++) {
                c[u][r] = w8_load(wr[r] + k);
            }
        }
    }
}

template <typename T, int M, int R>
__global__ void __launch_bounds__(WARPS * 32)
gemv_kernel(float *out, const T *in, const T *w, int K, int N)
{
    /* 8 loads of 16 bytes in flight a thread (4 of 32 for f32), spread
     * over the warp's R rows */
    constexpr int UNROLL = (sizeof(T) == 4 ? 4 : 8) / R > 0
                           ? (sizeof(T) == 4 ? 4 : 8) / R : 1;
    const int lane = threadIdx.x & 31;
    const int n0 = (blockIdx.x * WARPS + (threadIdx.x >> 5)) * R;
    float acc[R][M];

    if (n0 >= N) {
        return;
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
#pragma unroll
        for (int m = 0; m < M; m++) {
            acc[r][m] = 0.0f;
        }
    }

    /* rows past N (the last warp's) read row n0 again and are not
     * written */
    const T *wr_[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        wr_[r] = w + (size_t) (n0 + r < N ? n0 + r : n0) * K;
    }
    const T *const (&wr)[R] = wr_;

    /* the first loads need nothing from the kernel before this one: with
     * programmatic dependent launch they are issued while it still runs,
     * and only the inputs wait for it */
    w8_t<T> c[UNROLL][R];
    int k0 = lane * 8;

    w8_issue<T, UNROLL, R>(c, wr, k0, K);
    asm volatile("griddepcontrol.wait;" ::: "memory");

    for (;;) {
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            int k = k0 + u * 32 * 8;

            if (k >= K) {
                break;
            }
#pragma unroll
            for (int m = 0; m < M; m++) {
                float xf[8];

                /* one load of the input for R rows of weights */
                kc_load8(in + (size_t) m * K + k, xf);
#pragma unroll
                for (int r = 0; r < R; r++) {
                    float wf[8];

                    w8_f32(c[u][r], wf);
#pragma unroll
                    for (int i = 0; i < 8; i++) {
                        acc[r][m] = fmaf(wf[i], xf[i], acc[r][m]);
                    }
                }
            }
        }
        k0 += 32 * 8 * UNROLL;
        if (k0 >= K) {
            break;
        }
        w8_issue<T, UNROLL, R>(c, wr, k0, K);
    }

#pragma unroll
    for (int r = 0; r < R; r++) {
#pragma unroll
        for (int m = 0; m < M; m++) {
            float v = kc_warp_sum(acc[r][m]);
            if (lane == 0 && n0 + r < N) {
                out[(size_t) m * N + n0 + r] = v;
            }
        }
    }
}

/* programmatic dependent launch, unless NGX_GPU_PDL=0 (for comparison) */
static int
use_pdl(void)
{
    static int v = -1;

    if (v < 0) {
        const char *e = getenv("NGX_GPU_PDL");
        v = e == NULL || strcmp(e, "0") != 0;
    }
    return v;
}

/* rows a warp: one input row needs no sharing of its loads; more rows
 * share each load of the inputs among more weight rows */
template <typename T, int M>
static cudaError_t
launch(cudaStream_t s, float *out, const void *in, const void *w, int K,
    int N)
{
    constexpr int R = M == 1 ? 1 : M <= 3 ? 2 : 4;
    dim3 grid((N + WARPS * R - 1) / (WARPS * R));

    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[1];

    cfg.gridDim = grid;
    cfg.blockDim = dim3(WARPS * 32);
    cfg.stream = s;
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = use_pdl();
    return cudaLaunchKernelEx(&cfg, gemv_kernel<T, M, R>, out, (const T *) in,
                              (const T *) w, K, N);
}

template <typename T>
static cudaError_t
launch_m(cudaStream_t s, float *out, const void *in, const void *w, int M,
    int K, int N)
{
    switch (M) {
    case 1: return launch<T, 1>(s, out, in, w, K, N);
    case 2: return launch<T, 2>(s, out, in, w, K, N);
    case 3: return launch<T, 3>(s, out, in, w, K, N);
    case 4: return launch<T, 4>(s, out, in, w, K, N);
    case 5: return launch<T, 5>(s, out, in, w, K, N);
    case 6: return launch<T, 6>(s, out, in, w, K, N);
    case 7: return launch<T, 7>(s, out, in, w, K, N);
    case 8: return launch<T, 8>(s, out, in, w, K, N);
    }
    return cudaErrorInvalidValue;
}

int
gemv_supported(cudaDataType_t dt, int M, int K)
{
    return M >= 1 && M <= GEMV_MAX_M && K > 0 && K % 8 == 0
           && (dt == CUDA_R_32F || dt == CUDA_R_16BF || dt == CUDA_R_16F);
}

cudaError_t
gemv_run(cudaStream_t s, cudaDataType_t dt, float *out, const void *in,
    const void *w, int M, int K, int N)
{
    if (!gemv_supported(dt, M, K)) {
        return cudaErrorInvalidValue;
    }
    switch (dt) {
    case CUDA_R_32F: return launch_m<float>(s, out, in, w, M, K, N);
    case CUDA_R_16BF: return launch_m<__nv_bfloat16>(s, out, in, w, M, K, N);
    case CUDA_R_16F: return launch_m<__half>(s, out, in, w, M, K, N);
    default: return cudaErrorInvalidValue;
    }
}
