/*
 * attention_short.cuh - the per-token kernel's path for a decode row of
 * a step of few rows whose context is short (at most `cap` positions,
 * att_short_cap() in attention_cuda.cu): the context whole in each
 * block, so no split to merge.  CPU reference: k_attention() in
 * kernels_cpu.c; t/gpu/test_cuda_kernels.c compares the two.
 *
 * At batch 1 and 2 the per-token kernel splits a context over a cluster
 * of n_split blocks, and after the launch wait each block scores its few
 * positions and the cluster merges them between two barriers: ~9 µs a
 * layer of dependent steps for next to no bytes (docs/GPU-NOTES.md,
 * "Inside attention at batch 1").  Here block r of the cluster takes the
 * group's query heads r, r + n_split, ... over the whole context, and
 * the blocks share nothing.  Every K and V row before the token's own
 * position was written by earlier steps, so all of them go to shared
 * memory (cp.async, in the storage dtype) before the launch wait, while
 * the q|k|v product still runs; after it only q and the own row are
 * read.  Then, a thread a position, the scores; the block's max and
 * sum; and, a warp a quarter of the positions and a lane HDM / 32
 * dimensions, the weighted sum of V.  f32 throughout but the cache.
 */

#ifndef GPU_ATTENTION_SHORT_CUH
#define GPU_ATTENTION_SHORT_CUH

#include <math.h>
#include <stdint.h>

#include "kernels_cuda.cuh"
#include "attention_mma.cuh"

/* a K row's padding: 16 bytes, so that the lanes' rows fall in
 * different banks */
template <typename T> struct short_ld { static const int pad = 16 / sizeof(T); };

/* shared memory the path takes for cap positions */
template <typename T, int HDM>
__host__ __device__ constexpr size_t
att_short_bytes(int cap)
{
    return (size_t) cap * ((2 * HDM + short_ld<T>::pad) * sizeof(T)
                           + sizeof(float));
}

/* the block's max or sum over its NW warps; red: NW floats */
template <int NW, bool MAX>
__device__ __forceinline__ float
short_block_reduce(float v, float *red)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    v = MAX ? kc_warp_max(v) : kc_warp_sum(v);
    if (lane == 0) {
        red[warp] = v;
    }
    __syncthreads();
    v = red[0];
#pragma unroll
    for (int w = 1; w < NW; w++) {
        v = MAX ? fmaxf(v, red[w]) : v + red[w];
    }
    __syncthreads();            /* red is reused by the next call */
    return v;
}

/*
 * Token row `t` (position pos, block table `table`), KV head kvh, query
 * heads h_first, h_first + h_step, ... below h_end; q: the row's q|k|v
 * row in f32; out: the row's output.  Called by all NT threads of the
 * block before the launch wait: it waits itself.  hd a multiple of 8.
 */
template <typename T, int HDM, int NT>
__device__ void
att_short(T *out, const float *q, const T *kv, size_t block_stride,
    const int32_t *table, int kv_dim, int kvh, int hd, int bs, int pos,
    int h_first, int h_step, int h_end, float scale, unsigned char *smem,
    int cap)
{
    constexpr int E = 16 / sizeof(T);           /* elements a copy */
    constexpr int LDK = HDM + short_ld<T>::pad;
    constexpr int CPR = HDM / E;                /* copies a row */
    constexpr int NW = NT / 32;
    constexpr int DPL = HDM / 32;               /* P V: dimensions a lane */
    __shared__ __align__(16) float qs[HDM];
    __shared__ float red[NW], pv[NW][HDM];
    T (*ks)[LDK] = reinterpret_cast<T (*)[LDK]>(smem);
    T (*vs)[HDM] = reinterpret_cast<T (*)[HDM]>(
        smem + (size_t) cap * LDK * sizeof(T));
    float *ps = reinterpret_cast<float *>(
        smem + (size_t) cap * (LDK + HDM) * sizeof(T));
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int ctx = pos + 1;
    size_t v_off = (size_t) bs * kv_dim;

    /* rows [lo, hi) of K and V; dimensions past hd are zeros */
    auto stage = [&](int lo, int hi) {
        for (int c = tid; c < (hi - lo) * CPR; c += NT) {
            int r = lo + c / CPR, d0 = (c % CPR) * E;
            int ok = d0 < hd;
            const T *src = kv;

            if (ok) {
                src = kv + (size_t) table[r / bs] * block_stride
                      + (size_t) (r % bs) * kv_dim + (size_t) kvh * hd + d0;
            }
            fa_cp16(&ks[r][d0], src, ok ? 16 : 0);
            fa_cp16(&vs[r][d0], ok ? src + v_off : src, ok ? 16 : 0);
        }
        fa_commit();
    };

    stage(0, pos);              /* earlier steps' rows: before the wait */
    kc_pdl_wait();
    kc_pdl_trigger();
    stage(pos, ctx);            /* the own row: the kernel before's */

    for (int h = h_first; h < h_end; h += h_step) {
        float mx = -INFINITY, sum = 0.0f, a[DPL], b[DPL];

        for (int d = tid; d < HDM; d += NT) {
            qs[d] = d < hd ? q[(size_t) h * hd + d] * scale : 0.0f;
        }
        fa_wait<0>();
        __syncthreads();

        /* scores, a thread a position; four sums over the dimensions */
        for (int p = tid; p < ctx; p += NT) {
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f, s;

#pragma unroll
            for (int d = 0; d < HDM; d += 8) {
                float kf[8];

                kc_load8(&ks[p][d], kf);
                s0 = fmaf(qs[d], kf[0], fmaf(qs[d + 4], kf[4], s0));
                s1 = fmaf(qs[d + 1], kf[1], fmaf(qs[d + 5], kf[5], s1));
                s2 = fmaf(qs[d + 2], kf[2], fmaf(qs[d + 6], kf[6], s2));
                s3 = fmaf(qs[d + 3], kf[3], fmaf(qs[d + 7], kf[7], s3));
            }
            s = (s0 + s1) + (s2 + s3);
            ps[p] = s;
            mx = fmaxf(mx, s);
        }
        mx = short_block_reduce<NW, true>(mx, red);
        for (int p = tid; p < ctx; p += NT) {
            float e = expf(ps[p] - mx);

            ps[p] = e;
            sum += e;
        }
        sum = short_block_reduce<NW, false>(sum, red);  /* ps visible */

        /* P V: warp w takes positions w, w + NW, ... (two sums), lane
         * dimensions lane * DPL .. + DPL - 1 */
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            a[i] = b[i] = 0.0f;
        }
        {
            int p = warp;

            for (; p + NW < ctx; p += 2 * NW) {
                float w0 = ps[p], w1 = ps[p + NW];
#pragma unroll
                for (int i = 0; i < DPL; i++) {
                    a[i] = fmaf(w0, kc_f(vs[p][lane * DPL + i]), a[i]);
                    b[i] = fmaf(w1, kc_f(vs[p + NW][lane * DPL + i]), b[i]);
                }
            }
            if (p < ctx) {
                float w0 = ps[p];
#pragma unroll
                for (int i = 0; i < DPL; i++) {
                    a[i] = fmaf(w0, kc_f(vs[p][lane * DPL + i]), a[i]);
                }
            }
        }
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            pv[warp][lane * DPL + i] = a[i] + b[i];
        }
        __syncthreads();
        for (int d = tid; d < hd; d += NT) {
            float o = 0.0f;
#pragma unroll
            for (int w = 0; w < NW; w++) {
                o += pv[w][d];
            }
            out[(size_t) h * hd + d] = kc_store<T>(o / sum);
        }
        __syncthreads();        /* qs, ps, pv are reused by the next head */
    }
}

#endif /* GPU_ATTENTION_SHORT_CUH */
