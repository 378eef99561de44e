/*
 * gemv_cuda.cu - matrix products of few rows (see gemv_cuda.h).
 *
 * One warp per R output rows: lane l takes the 8-element chunks l, l + 32,
 * l + 64, ... of each of w's rows, issues several of those 16-byte loads
 * before using any (so that enough bytes are in flight to cover the
 * memory's latency), and multiplies each chunk with the same 8 elements
 * of every input row, which it loads once for the R rows.  The R x M
 * partial sums are reduced across the warp at the end.  With a split
 * of KS, KS warps of a block share the R rows, each taking every KS-th
 * run of 32 chunks, and their sums meet in shared memory: a product
 * with a long K and few rows (the down product: 896 rows of 4864 in
 * Qwen-0.5B) otherwise has too few warps, each waiting on a long chain
 * of loads.
 * Weights are read with the evict-first hint: each is used once a step,
 * and the L2 is better kept for the activations and the KV cache.
 *
 * With the SwiGLU epilogue (gemv_swiglu_run) w's rows are gate and up
 * interleaved (2j gate j, 2j + 1 up j): a warp holds a pair, and writes
 * silu(g) * u in the storage dtype instead of the two f32 outputs, so
 * the feed-forward needs no SwiGLU kernel between its two products.
 * With the norm epilogue (gemv_norm_run) the last block to finish adds
 * the product to the residual stream and norms the sum for the next
 * product.  With the RoPE epilogue (gemv_rope_run) a warp holds the two
 * q|k|v rows of a RoPE pair and does kc_rope_kv()'s work for them: bias,
 * rotation, q into the output, k and v into the cache.  So at decode a
 * layer is five kernels: q|k|v + RoPE + KV store, attention (and its
 * combine), o + norm, gate|up + SwiGLU, down + the next layer's norm.
 * With the norm prologue (gemv_pro_t, for the SwiGLU and RoPE products)
 * the norm moves from the product before into this one's start: each
 * block norms x + y into shared memory itself, and the product before
 * runs plain, without the norm tail's count and serial last block;
 * the engine takes it where the pair timed faster at start.
 */


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

/* UNROLL chunks of R rows from column k0 on, STEP elements apart */
template <typename T, int UNROLL, int R, int STEP>
__device__ __forceinline__ void
w8_issue(w8_t<T> (&c)[UNROLL][R], const T *const (&wr)[R], int k0, int K)
{
#pragma unroll
    for (int u = 0; u < UNROLL; u++) {
        int k = k0 + u * STEP;
        if (k < K) {
#pragma unroll
            for (int r = 0; r < R; r++) {
                c[u][r] = w8_load(wr[r] + k);
            }
        }
    }
}

/*
 * The last block to finish (counted in nrm.count) adds the product y to
 * the residual stream and norms it: x += y; out = x / rms(x) * w, as
 * kc_rmsnorm, so that no norm kernel follows the product.  The fences
 * make every block's y visible before its count, and the others' y to
 * the last block, which reads y past L1 (it may hold an older y).
 */
template <typename T, int M>
__device__ __forceinline__ void
gemv_norm_tail(const float *y, int N, const gemv_epi_t &nrm)
{
    __shared__ int last_s;
    __shared__ float red[32];

    kc_pdl_wait();                      /* x and count: the kernels before */
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        last_s = atomicAdd(nrm.count, 1) == (int) gridDim.x - 1;
        if (last_s) {
            *nrm.count = 0;             /* ready for the next launch */
        }
    }
    __syncthreads();
    if (!last_s) {
        return;
    }
    __threadfence();

    for (int m = 0; m < M; m++) {
        float *x = nrm.x + (size_t) m * N, ss = 0.0f, scale;
        const float *ym = y + (size_t) m * N;
        T *o = (T *) nrm.out + (size_t) m * N;

        for (int d = threadIdx.x; d < N; d += blockDim.x) {
            float v = x[d] + __ldcg(ym + d);
            x[d] = v;
            ss += v * v;
        }
        ss = kc_block_sum(ss, red);
        scale = 1.0f / sqrtf(ss / (float) N + nrm.eps);
        for (int d = threadIdx.x; d < N; d += blockDim.x) {
            o[d] = kc_store<T>(nrm.w[d] * (x[d] * scale));
        }
    }
}

/*
 * The norm prologue (pro.x != NULL): the block makes its own input, in
 * the storage dtype in shared memory, from the residual stream and the
 * product before: v = x + y; xs = v / rms(v) * w, as kc_rmsnorm and
 * gemv_norm_tail do; block 0 also writes v to pro.x_out (another buffer:
 * the other blocks still read x).  So the product before needs no tail
 * (an atomic count, then one block's reads and norm, in series).
 *
 * In bf16 and f32 it is one pass: xs = v * w, unscaled, and each warp's
 * part of the row's sum of squares into ss_s; the product is scaled by
 * 1 / rms(v) at the end (pro_scale), so the block sums the squares while
 * its products run instead of in a pass of its own before them.  f16
 * could not hold v * w unscaled (past 65504): it norms first, in two
 * passes, and its scales are 1.
 */
template <typename T> struct pro_late_t { static const bool on = true; };
template <> struct pro_late_t<__half> { static const bool on = false; };

template <typename T, int M>
__device__ __forceinline__ void
gemv_prologue(T *xs, float (*ss_s)[WARPS], int K, const gemv_pro_t &pro)
{
    constexpr bool LATE = pro_late_t<T>::on;
    __shared__ float red[32];
    __shared__ float scale_s[M];
    const int nt = blockDim.x, k4 = K / 4;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    if constexpr (!LATE) {
        for (int m = 0; m < M; m++) {
            const float4 *x = reinterpret_cast<const float4 *>(pro.x + m * K);
            const float4 *y = reinterpret_cast<const float4 *>(pro.y + m * K);
            float ss = 0.0f;

            for (int i = threadIdx.x; i < k4; i += nt) {
                float4 a = x[i], b = __ldcg(y + i);
                a.x += b.x; a.y += b.y; a.z += b.z; a.w += b.w;
                ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
            }
            ss = kc_block_sum(ss, red);
            if (threadIdx.x == 0) {
                scale_s[m] = 1.0f / sqrtf(ss / (float) K + pro.eps);
            }
        }
        __syncthreads();
    }
    for (int m = 0; m < M; m++) {
        const float4 *x = reinterpret_cast<const float4 *>(pro.x + m * K);
        const float4 *y = reinterpret_cast<const float4 *>(pro.y + m * K);
        const float4 *nw = reinterpret_cast<const float4 *>(pro.w);
        float4 *xo = reinterpret_cast<float4 *>(pro.x_out + m * K);
        T *o = xs + m * K;
        float sc = LATE ? 1.0f : scale_s[m], ss = 0.0f;

        for (int i = threadIdx.x; i < k4; i += nt) {
            float4 a = x[i], b = __ldcg(y + i), g = nw[i];
            a.x += b.x; a.y += b.y; a.z += b.z; a.w += b.w;
            if (blockIdx.x == 0) {
                xo[i] = a;
            }
            ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
            o[4 * i] = kc_store<T>(g.x * (a.x * sc));
            o[4 * i + 1] = kc_store<T>(g.y * (a.y * sc));
            o[4 * i + 2] = kc_store<T>(g.z * (a.z * sc));
            o[4 * i + 3] = kc_store<T>(g.w * (a.w * sc));
        }
        if constexpr (LATE) {
            ss = kc_warp_sum(ss);
            if (lane == 0) {
                ss_s[m][warp] = ss;
            }
        }
    }
    __syncthreads();
}

/* row m's 1 / rms(v) from the warps' parts (after the prologue's sync) */
template <typename T>
__device__ __forceinline__ float
pro_scale(const float (*ss_s)[WARPS], int m, int K, float eps)
{
    if constexpr (!pro_late_t<T>::on) {
        return 1.0f;
    } else {
        float ss = 0.0f;

#pragma unroll
        for (int w = 0; w < WARPS; w++) {
            ss += ss_s[m][w];
        }
        return 1.0f / sqrtf(ss / (float) K + eps);
    }
}

/*
 * KS warps share a unit's rows (KS > 1: a long K and few rows, where one
 * warp a unit leaves too few warps, each with too long a chain of loads):
 * warp j of the KS takes the chunks j, j + KS, j + 2 KS, ... of 32 x 8
 * elements, and the first of them adds the others' sums (through shared
 * memory) before the epilogue.
 */
template <typename T, int M, int R, int EPI, int KS>
__global__ void __launch_bounds__(WARPS * 32)
gemv_kernel(void *out, const T *in, const T *w, int K, int N,
    gemv_epi_t nrm, gemv_rope_t rp, gemv_pro_t pro, int trig)
{
    extern __shared__ __align__(16) unsigned char gemv_smem[];
    __shared__ float ss_s[M][WARPS];    /* the prologue's sums of squares */
    /* 8 loads of 16 bytes in flight a thread (4 of 32 for f32), spread
     * over the warp's R rows */
    constexpr int UNROLL = (sizeof(T) == 4 ? 4 : 8) / R > 0
                           ? (sizeof(T) == 4 ? 4 : 8) / R : 1;
    constexpr int STEP = 32 * 8 * KS;   /* elements between a lane's chunks */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int unit = blockIdx.x * (WARPS / KS) + warp / KS;
    const int part = warp % KS;
    const int n0 = unit * R;
    float acc[R][M], v[R][M];
    /* RoPE: the warp's pair; lane m < M holds token m and, for a k or
     * v pair, its K row (the step's inputs were uploaded before the
     * kernel ahead of this one ran: they need no wait) */
    int d0 = 0, d1 = 0, ang = -1;
    kc_token_t tk = { 0, 0, 0 };
    T *k_row = NULL;

    if constexpr (EPI == GEMV_ROPE) {
        static_assert(R == 2, "a RoPE pair a warp");
        if (unit < N / 2) {
            kc_qkv_pair(unit, rp.n_heads, rp.n_kv_heads, rp.head_dim,
                        rp.rope_dim, rp.interleaved, &d0, &d1, &ang);
            if (lane < M) {
                tk = rp.st.tokens[lane];
                if (d0 >= rp.n_heads * rp.head_dim) {
                    k_row = kc_kv_row((T *) rp.kv_layer, rp.block_stride,
                                      rp.st, tk,
                                      rp.n_kv_heads * rp.head_dim,
                                      rp.block_size);
                }
            }
        }
    }

    /* rows past N (the last warp's) read row n0 again and are not
     * written; a warp past N (in the last block) has no rows, but its
     * block still counts itself in the norm's tail and makes its part of
     * the prologue's input */
    const T *wr_[R];
    if constexpr (EPI == GEMV_ROPE) {
        wr_[0] = w + (size_t) d0 * K;           /* the warp's pair */
        wr_[1] = w + (size_t) d1 * K;
    } else {
#pragma unroll
        for (int r = 0; r < R; r++) {
            wr_[r] = w + (size_t) (n0 + r < N ? n0 + r : n0) * K;
        }
    }
    const T *const (&wr)[R] = wr_;
    w8_t<T> c[UNROLL][R];
    int k0 = (part * 32 + lane) * 8;

    /* the first loads need nothing from the kernel before this one: with
     * programmatic dependent launch they are issued while it still runs,
     * and only the inputs (and the prologue) wait for it */
    if (n0 < N) {
        w8_issue<T, UNROLL, R, STEP>(c, wr, k0, K);
    }
    if (trig) {
        kc_pdl_trigger();       /* gemv_trigger_first() */
    }
    kc_pdl_wait();
    kc_pdl_trigger();
    if (pro.x != NULL) {
        gemv_prologue<T, M>((T *) gemv_smem, ss_s, K, pro);
        in = (const T *) gemv_smem;
    }

    if (n0 < N) {
#pragma unroll
        for (int r = 0; r < R; r++) {
#pragma unroll
            for (int m = 0; m < M; m++) {
                acc[r][m] = 0.0f;
            }
        }

        for (;;) {
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
                int k = k0 + u * STEP;

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
            k0 += STEP * UNROLL;
            if (k0 >= K) {
                break;
            }
            w8_issue<T, UNROLL, R, STEP>(c, wr, k0, K);
        }

#pragma unroll
        for (int r = 0; r < R; r++) {
#pragma unroll
            for (int m = 0; m < M; m++) {
                v[r][m] = kc_warp_sum(acc[r][m]);
            }
        }
    }

    if constexpr (KS > 1) {
        __shared__ float sums[WARPS][R][M];

        if (lane == 0 && n0 < N) {
#pragma unroll
            for (int r = 0; r < R; r++) {
#pragma unroll
                for (int m = 0; m < M; m++) {
                    sums[warp][r][m] = v[r][m];
                }
            }
        }
        __syncthreads();
        if (part == 0 && n0 < N) {
#pragma unroll
            for (int r = 0; r < R; r++) {
#pragma unroll
                for (int m = 0; m < M; m++) {
                    float t = v[r][m];
                    for (int j = 1; j < KS; j++) {
                        t += sums[warp + j][r][m];
                    }
                    v[r][m] = t;
                }
            }
        }
    }

    /* the epilogue, by the first warp of the unit's KS */
    if (n0 < N && part == 0) {

        if (pro.x != NULL && pro_late_t<T>::on) {
#pragma unroll
            for (int m = 0; m < M; m++) {
                float sc = pro_scale<T>(ss_s, m, K, pro.eps);
#pragma unroll
                for (int r = 0; r < R; r++) {
                    v[r][m] *= sc;
                }
            }
        }

        if constexpr (EPI == GEMV_ROPE) {
            const int hd = rp.head_dim, q_dim = rp.n_heads * hd;
            const int kv_dim = rp.n_kv_heads * hd;
#pragma unroll
            for (int m = 0; m < M; m++) {
                float a = v[0][m], b = v[R - 1][m];
                if (lane == m) {
                    kc_qkv_rope(&a, &b, d0, d1, ang, tk.pos, rp.bias,
                                rp.inv_freq);
                    kc_qkv_put((float *) out + (size_t) m * N, k_row, d0,
                               d1, a, b, q_dim, kv_dim, rp.block_size);
                }
            }
        } else if constexpr (EPI == GEMV_SWIGLU) {
            /* rows n0 + r, n0 + r + 1: gate and up of output (n0 + r) / 2 */
#pragma unroll
            for (int r = 0; r + 1 < R; r += 2) {
#pragma unroll
                for (int m = 0; m < M; m++) {
                    float g = v[r][m], u = v[r + 1][m];
                    if (lane == 0 && n0 + r + 1 < N) {
                        ((T *) out)[(size_t) m * (N / 2) + (n0 + r) / 2] =
                            kc_store<T>(kc_silu_mul(g, u));
                    }
                }
            }
        } else {
#pragma unroll
            for (int r = 0; r < R; r++) {
#pragma unroll
                for (int m = 0; m < M; m++) {
                    if (lane == 0 && n0 + r < N) {
                        ((float *) out)[(size_t) m * N + n0 + r] = v[r][m];
                    }
                }
            }
        }
    }
    if constexpr (EPI == GEMV_NORM) {
        gemv_norm_tail<T, M>((const float *) out, N, nrm);
    }
}

/* whether the kernels launched next let the kernel after them start
 * before their own launch wait (gemv_trigger_first) */
static int gemv_trig;

void
gemv_trigger_first(int on)
{
    gemv_trig = on;
}

/* rows a warp: one input row needs no sharing of its loads; more rows
 * share each load of the inputs among more weight rows; a SwiGLU pair
 * needs two */
template <typename T, int M, int EPI, int KS>
static cudaError_t
launch(cudaStream_t s, void *out, const void *in, const void *w, int K,
    int N, const gemv_epi_t &nrm, const gemv_rope_t &rp,
    const gemv_pro_t &pro)
{
    constexpr int R0 = M == 1 ? 1 : M <= 3 ? 2 : 4;
    constexpr int R = EPI == GEMV_ROPE ? 2
                      : EPI == GEMV_SWIGLU && R0 < 2 ? 2 : R0;
    constexpr int ROWS = WARPS / KS * R;        /* a block's */

    size_t smem = pro.x != NULL ? (size_t) M * K * sizeof(T) : 0;

    if (smem > GEMV_PRO_MAX_BYTES) {
        return cudaErrorInvalidValue;
    }
    return kc_launch(gemv_kernel<T, M, R, EPI, KS>,
                     dim3((N + ROWS - 1) / ROWS), dim3(WARPS * 32), smem, s,
                     out, (const T *) in, (const T *) w, K, N, nrm, rp, pro,
                     gemv_trig);
}

template <typename T, int M, int EPI>
static cudaError_t
launch_ks(cudaStream_t s, void *out, const void *in, const void *w, int K,
    int N, int split, const gemv_epi_t &nrm, const gemv_rope_t &rp,
    const gemv_pro_t &pro)
{
    switch (split) {
    case 1: return launch<T, M, EPI, 1>(s, out, in, w, K, N, nrm, rp, pro);
    case 2: return launch<T, M, EPI, 2>(s, out, in, w, K, N, nrm, rp, pro);
    case 4: return launch<T, M, EPI, 4>(s, out, in, w, K, N, nrm, rp, pro);
    case 8: return launch<T, M, EPI, 8>(s, out, in, w, K, N, nrm, rp, pro);
    }
    return cudaErrorInvalidValue;
}

template <typename T, int EPI>
static cudaError_t
launch_m(cudaStream_t s, void *out, const void *in, const void *w, int M,
    int K, int N, int split, const gemv_epi_t &nrm, const gemv_rope_t &rp,
    const gemv_pro_t &pro)
{
#define LAUNCH_M(m) \
    launch_ks<T, m, EPI>(s, out, in, w, K, N, split, nrm, rp, pro)

    switch (M) {
    case 1: return LAUNCH_M(1);
    case 2: return LAUNCH_M(2);
    case 3: return LAUNCH_M(3);
    case 4: return LAUNCH_M(4);
    case 5: return LAUNCH_M(5);
    case 6: return LAUNCH_M(6);
    case 7: return LAUNCH_M(7);
    case 8: return LAUNCH_M(8);
    }
    return cudaErrorInvalidValue;
#undef LAUNCH_M
}

/* the operands of the epilogues a launch does not have */
static const gemv_epi_t no_epi = { NULL, NULL, NULL, 0.0f, NULL };
static const gemv_rope_t no_rope = {};
static const gemv_pro_t no_pro = {};

int
gemv_supported(cudaDataType_t dt, int M, int K)
{
    return M >= 1 && M <= GEMV_MAX_M && K > 0 && K % 8 == 0
           && (dt == CUDA_R_32F || dt == CUDA_R_16BF || dt == CUDA_R_16F);
}

template <int EPI>
static cudaError_t
run_dt(cudaStream_t s, cudaDataType_t dt, void *out, const void *in,
    const void *w, int M, int K, int N, int split, const gemv_epi_t &nrm,
    const gemv_rope_t &rp, const gemv_pro_t &pro)
{
    if (!gemv_supported(dt, M, K)
        || ((EPI == GEMV_SWIGLU || EPI == GEMV_ROPE) && N % 2 != 0))
    {
        return cudaErrorInvalidValue;
    }
    switch (dt) {
    case CUDA_R_32F:
        return launch_m<float, EPI>(s, out, in, w, M, K, N, split, nrm, rp,
                                    pro);
    case CUDA_R_16BF:
        return launch_m<__nv_bfloat16, EPI>(s, out, in, w, M, K, N, split,
                                            nrm, rp, pro);
    case CUDA_R_16F:
        return launch_m<__half, EPI>(s, out, in, w, M, K, N, split, nrm, rp,
                                     pro);
    default:
        return cudaErrorInvalidValue;
    }
}

cudaError_t
gemv_run(cudaStream_t s, cudaDataType_t dt, float *out, const void *in,
    const void *w, int M, int K, int N, int split)
{
    return run_dt<GEMV_PLAIN>(s, dt, out, in, w, M, K, N, split, no_epi,
                              no_rope, no_pro);
}

cudaError_t
gemv_swiglu_run(cudaStream_t s, cudaDataType_t dt, void *out,
    const void *in, const void *w, int M, int K, int N, int split,
    const gemv_pro_t *pro)
{
    return run_dt<GEMV_SWIGLU>(s, dt, out, in, w, M, K, N, split, no_epi,
                               no_rope, pro ? *pro : no_pro);
}

cudaError_t
gemv_norm_run(cudaStream_t s, cudaDataType_t dt, float *y, const void *in,
    const void *w, int M, int K, int N, int split, const gemv_epi_t *nrm)
{
    if (N > KC_NORM_MAX_DIM) {
        return cudaErrorInvalidValue;
    }
    return run_dt<GEMV_NORM>(s, dt, y, in, w, M, K, N, split, *nrm, no_rope,
                             no_pro);
}

cudaError_t
gemv_rope_run(cudaStream_t s, cudaDataType_t dt, float *y, const void *in,
    const void *w, int M, int K, int N, int split, const gemv_rope_t *rp,
    const gemv_pro_t *pro)
{
    return run_dt<GEMV_ROPE>(s, dt, y, in, w, M, K, N, split, no_epi, *rp,
                             pro ? *pro : no_pro);
}
