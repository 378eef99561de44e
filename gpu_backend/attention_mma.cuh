/*
 * attention_mma.cuh - what the two tensor-core attention kernels share
 * (attention_tc_cuda.cu for prefill rows, attention_dec_cuda.cu for
 * decode rows): cp.async copies, ldmatrix loads, the m16n8k16 product
 * in bf16 and f16, and the packing of f32 pairs into either.
 */

#ifndef GPU_ATTENTION_MMA_CUH
#define GPU_ATTENTION_MMA_CUH

#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

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

#endif /* GPU_ATTENTION_MMA_CUH */
