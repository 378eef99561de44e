/*
 * attention_mma.cuh - what the two tensor-core attention kernels share
 * (attention_tc_cuda.cu for prefill rows, attention_dec_cuda.cu for
 * decode rows): cp.async copies, ldmatrix loads, the m16n8k16 product
 * in bf16 and f16, the packing of f32 pairs into either, a K/V tile
 * from the paged cache into shared memory, one warp's pass over it
 * (S = Q K^T, the online softmax, O += P V), and the launchers' shared
 * parts (the dtype and head_dim dispatch, the shared-memory allowance).
 */

#ifndef GPU_ATTENTION_MMA_CUH
#define GPU_ATTENTION_MMA_CUH

#include <math.h>
#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels_cuda.h"

__device__ __forceinline__ uint32_t
fa_smem(const void *p)
{
    return (uint32_t) __cvta_generic_to_shared(p);
}

/* 16 bytes global -> shared; src_bytes 0 fills zeros and reads nothing */
__device__ __forceinline__ void
fa_cp16(void *dst, const void *src, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(fa_smem(dst)), "l"(src), "r"(src_bytes));
}

__device__ __forceinline__ void
fa_commit(void)
{
    asm volatile("cp.async.commit_group;\n" ::);
}

template <int N>
__device__ __forceinline__ void
fa_wait(void)
{
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N));
}

__device__ __forceinline__ void
fa_ldsm4(uint32_t *r, const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 "
                 "{%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(fa_smem(p)));
}

__device__ __forceinline__ void
fa_ldsm4_t(uint32_t *r, const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 "
                 "{%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(fa_smem(p)));
}

/* c += a b: a 16x16 (row), b 16x8 (col), c 16x8 f32 */
__device__ __forceinline__ void
fa_mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1, __nv_bfloat16)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]),
                   "r"(b0), "r"(b1));
}

__device__ __forceinline__ void
fa_mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1, __half)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]),
                   "r"(b0), "r"(b1));
}

/* two floats as two 16-bit values, lo in the low half */
__device__ __forceinline__ uint32_t
fa_pack(float lo, float hi, __nv_bfloat16)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

__device__ __forceinline__ uint32_t
fa_pack(float lo, float hi, __half)
{
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

/*
 * q as hi + lo, both in T, for bf16 only.  q rounded once to bf16 (8
 * bits) puts ~2e-3 relative noise on every score; a model that norms the
 * attention output before the residual add (GLM-4) carries it undamped
 * into the residual stream, and its bf16 logits then missed the 2e-2
 * check against Hugging Face (2.70e-2, against 1.52e-2 with the f32 q of
 * the per-token kernel).  With the rest in a second product, q is exact
 * to ~2^-16 for twice the Q K^T products.  (Splitting P instead was
 * measured and did not help.)  f16 keeps 11 bits: no split.
 */
template <typename T> struct fa_split_q { static const bool v = false; };
template <> struct fa_split_q<__nv_bfloat16> { static const bool v = true; };

/* the bf16 rounding error of (lo, hi), given their rounded pair */
__device__ __forceinline__ uint32_t
fa_pack_rest(float lo, float hi, uint32_t packed)
{
    __nv_bfloat162 r = *reinterpret_cast<__nv_bfloat162 *>(&packed);
    float2 f = __bfloat1622float2(r);
    __nv_bfloat162 v = __floats2bfloat162_rn(lo - f.x, hi - f.y);

    return *reinterpret_cast<uint32_t *>(&v);
}

/* what rounding (lo, hi) to T left out (packed: their rounded pair), in
 * T: with it, hi + lo is the pair to ~2^-16 */
__device__ __forceinline__ uint32_t
fa_rest(float lo, float hi, uint32_t packed, __nv_bfloat16)
{
    return fa_pack_rest(lo, hi, packed);
}

__device__ __forceinline__ uint32_t
fa_rest(float lo, float hi, uint32_t packed, __half)
{
    __half2 r = *reinterpret_cast<__half2 *>(&packed);
    float2 f = __half22float2(r);
    __half2 v = __floats2half2_rn(lo - f.x, hi - f.y);

    return *reinterpret_cast<uint32_t *>(&v);
}

/*
 * K and V rows p0 .. p0 + NR - 1 of KV head kvh, from the paged cache
 * into k[] and v[] (rows of LD elements), 16 bytes a copy, by the
 * threads first, first + step, ... of those taking part, as one commit
 * group.  Rows at or past `end` are zeros and read nothing, so that no
 * stale cache row (NaN, say) reaches a product.
 */
template <typename T, int HD, int NR, int LD>
__device__ __forceinline__ void
fa_load_kv(T (*k)[LD], T (*v)[LD], const T *kv, const int32_t *table,
    size_t block_stride, int kv_dim, int kvh, int bs, int p0, int end,
    int first, int step)
{
    constexpr int CPR = HD / 8;                 /* copies a row */
    size_t v_off = (size_t) bs * kv_dim;        /* V follows K */

    for (int c = first; c < NR * CPR; c += step) {
        int r = c / CPR, d0 = (c - r * CPR) * 8, p = p0 + r;
        int ok = p < end;
        const T *src = kv;

        if (ok) {
            src = kv + (size_t) table[p / bs] * block_stride
                  + (size_t) (p % bs) * kv_dim + (size_t) kvh * HD + d0;
        }
        fa_cp16(&k[r][d0], src, ok ? 16 : 0);
        fa_cp16(&v[r][d0], ok ? src + v_off : src, ok ? 16 : 0);
    }
    fa_commit();
}

/*
 * One warp's pass over a tile of NT * 8 positions, as both kernels make
 * it.  The warp holds 16 rows: lane / 4 is row g (the "l" values) and
 * g + 8 (the "h" values); lane % 4 holds columns 2 (lane % 4) and the
 * next of each 8-wide tile.  K and V rows lie in shared memory with
 * stride LD elements.  With REST, q (fa_qk) or P (fa_pv) enters a
 * second product as what its rounding to T left out (hi + lo).
 */

/* S = Q K^T: K's rows are the B operand as they lie */
template <typename T, int KS, int NT, int LD, bool REST>
__device__ __forceinline__ void
fa_qk(float (*s)[4], const uint32_t (*qa)[4], const uint32_t (*qr)[4],
    const T (*k)[LD], int lane)
{
#pragma unroll
    for (int i = 0; i < NT; i++) {
        s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
    }
#pragma unroll
    for (int ks = 0; ks < KS; ks++) {
#pragma unroll
        for (int np = 0; np < NT / 2; np++) {
            uint32_t kb[4];

            fa_ldsm4(kb, &k[np * 16 + (lane & 7) + (lane >> 4) * 8]
                           [ks * 16 + ((lane >> 3) & 1) * 8]);
            fa_mma(s[2 * np], qa[ks], kb[0], kb[1], T());
            fa_mma(s[2 * np + 1], qa[ks], kb[2], kb[3], T());
            if constexpr (REST) {
                fa_mma(s[2 * np], qr[ks], kb[0], kb[1], T());
                fa_mma(s[2 * np + 1], qr[ks], kb[2], kb[3], T());
            }
        }
    }
}

/* the masked scores of a tile, scaled to base 2, into the running row
 * maxima m and sums l (this lane's part of each row); leaves P in s and
 * O rescaled to the new maxima */
template <int NT, int DT>
__device__ __forceinline__ void
fa_softmax_tile(float (*s)[4], float (*o)[4], float scale_log2,
    float &m_l, float &m_h, float &l_l, float &l_h)
{
    float mx_l = -INFINITY, mx_h = -INFINITY, al, ah, ml, mh,
          sum_l = 0.0f, sum_h = 0.0f;

#pragma unroll
    for (int i = 0; i < NT; i++) {
        s[i][0] *= scale_log2;
        s[i][1] *= scale_log2;
        s[i][2] *= scale_log2;
        s[i][3] *= scale_log2;
        mx_l = fmaxf(mx_l, fmaxf(s[i][0], s[i][1]));
        mx_h = fmaxf(mx_h, fmaxf(s[i][2], s[i][3]));
    }
    /* the four lanes of a quad hold one row */
    mx_l = fmaxf(mx_l, __shfl_xor_sync(0xffffffffu, mx_l, 1));
    mx_l = fmaxf(mx_l, __shfl_xor_sync(0xffffffffu, mx_l, 2));
    mx_h = fmaxf(mx_h, __shfl_xor_sync(0xffffffffu, mx_h, 1));
    mx_h = fmaxf(mx_h, __shfl_xor_sync(0xffffffffu, mx_h, 2));
    mx_l = fmaxf(m_l, mx_l);
    mx_h = fmaxf(m_h, mx_h);
    /* a row with nothing visible yet (no row, or a masked tile) keeps
     * max -inf: subtract 0 there, not -inf */
    ml = mx_l == -INFINITY ? 0.0f : mx_l;
    mh = mx_h == -INFINITY ? 0.0f : mx_h;
    al = exp2f(m_l - ml);
    ah = exp2f(m_h - mh);
    m_l = mx_l;
    m_h = mx_h;
#pragma unroll
    for (int i = 0; i < NT; i++) {
        s[i][0] = exp2f(s[i][0] - ml);
        s[i][1] = exp2f(s[i][1] - ml);
        s[i][2] = exp2f(s[i][2] - mh);
        s[i][3] = exp2f(s[i][3] - mh);
        sum_l += s[i][0] + s[i][1];
        sum_h += s[i][2] + s[i][3];
    }
    l_l = l_l * al + sum_l;
    l_h = l_h * ah + sum_h;
#pragma unroll
    for (int i = 0; i < DT; i++) {
        o[i][0] *= al;
        o[i][1] *= al;
        o[i][2] *= ah;
        o[i][3] *= ah;
    }
}

/* O += P V: the score tiles are already the A operand's layout, two of
 * them a 16-wide k-step; V's rows go in transposed */
template <typename T, int NT, int DT, int LD, bool REST>
__device__ __forceinline__ void
fa_pv(float (*o)[4], float (*s)[4], const T (*v)[LD], int lane)
{
#pragma unroll
    for (int kk = 0; kk < NT / 2; kk++) {
        uint32_t pa[4], pr[4];

        pa[0] = fa_pack(s[2 * kk][0], s[2 * kk][1], T());
        pa[1] = fa_pack(s[2 * kk][2], s[2 * kk][3], T());
        pa[2] = fa_pack(s[2 * kk + 1][0], s[2 * kk + 1][1], T());
        pa[3] = fa_pack(s[2 * kk + 1][2], s[2 * kk + 1][3], T());
        if constexpr (REST) {
            pr[0] = fa_rest(s[2 * kk][0], s[2 * kk][1], pa[0], T());
            pr[1] = fa_rest(s[2 * kk][2], s[2 * kk][3], pa[1], T());
            pr[2] = fa_rest(s[2 * kk + 1][0], s[2 * kk + 1][1], pa[2], T());
            pr[3] = fa_rest(s[2 * kk + 1][2], s[2 * kk + 1][3], pa[3], T());
        }
#pragma unroll
        for (int dp = 0; dp < DT / 2; dp++) {
            uint32_t vb[4];

            fa_ldsm4_t(vb, &v[kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8]
                             [dp * 16 + (lane >> 4) * 8]);
            fa_mma(o[2 * dp], pa, vb[0], vb[1], T());
            fa_mma(o[2 * dp + 1], pa, vb[2], vb[3], T());
            if constexpr (REST) {
                fa_mma(o[2 * dp], pr, vb[0], vb[1], T());
                fa_mma(o[2 * dp + 1], pr, vb[2], vb[3], T());
            }
        }
    }
}

/* a row's sum from its quad's four parts */
__device__ __forceinline__ void
fa_quad_sums(float &l_l, float &l_h)
{
    l_l += __shfl_xor_sync(0xffffffffu, l_l, 1);
    l_l += __shfl_xor_sync(0xffffffffu, l_l, 2);
    l_h += __shfl_xor_sync(0xffffffffu, l_h, 1);
    l_h += __shfl_xor_sync(0xffffffffu, l_h, 2);
}

/* lets `kernel` take smem bytes of dynamic shared memory, on the first
 * launch (*ready: done) */
template <typename K>
static cudaError_t
fa_allow_smem(K kernel, size_t smem, int *ready)
{
    cudaError_t r = cudaSuccess;

    if (!*ready) {
        r = cudaFuncSetAttribute(kernel,
                cudaFuncAttributeMaxDynamicSharedMemorySize, (int) smem);
        *ready = r == cudaSuccess;
    }
    return r;
}

/* LAUNCH(T, HD) for the dtypes and head dims the tensor-core kernels
 * take (att_tc_supported()); for others, nothing */
#define FA_DISPATCH(dt, head_dim, LAUNCH)                                 \
    do {                                                                  \
        if ((dt) == KC_BF16) {                                            \
            FA_DISPATCH_HD(__nv_bfloat16, head_dim, LAUNCH);              \
        } else if ((dt) == KC_F16) {                                      \
            FA_DISPATCH_HD(__half, head_dim, LAUNCH);                     \
        }                                                                 \
    } while (0)
#define FA_DISPATCH_HD(T, head_dim, LAUNCH)                               \
    switch (head_dim) {                                                   \
    case 16: LAUNCH(T, 16); break;                                        \
    case 32: LAUNCH(T, 32); break;                                        \
    case 64: LAUNCH(T, 64); break;                                        \
    case 128: LAUNCH(T, 128); break;                                      \
    }

#endif /* GPU_ATTENTION_MMA_CUH */
