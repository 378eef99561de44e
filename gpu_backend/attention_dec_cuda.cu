/*
 * attention_dec_cuda.cu - attention for the rows of a step with many
 * rows, on tensor cores: what the per-token kernel (attention_cuda.cu)
 * computes, for the same rows.  CPU reference: k_attention() in
 * kernels_cpu.c; t/gpu/test_cuda_kernels.c compares the two.
 *
 * The per-token kernel scores and sums with f32 multiply-adds that take
 * both operands from shared memory: at 128 rows of the Llama-3.2-1B
 * shape those loads, not the cache's bytes, bound it (~1 TB/s of K/V).
 * Here one warp takes one row (a token) and one KV head's group of up to
 * 16 query heads, the 16 rows of an m16n8k16 product (rows past the
 * group are zeros), over its split of the context in tiles of NP
 * positions:
 *
 *   1. the next tile's K and V rows go from the paged cache to the
 *      warp's own shared memory by cp.async while it works on this one;
 *   2. S = Q K^T with q in registers, the softmax kept online in
 *      registers (base 2, as in attention_tc_cuda.cu);
 *   3. O += P V.
 *
 * q and P enter the products as hi + lo in the storage dtype, so both
 * are exact to ~2^-16 and the result is the per-token kernel's to within
 * the order of its f32 sums: a sequence served here in a large batch
 * gets the tokens it gets alone, served there.  Warps share nothing (a
 * block is four rows of one KV head), so there is no barrier.  With
 * n_split > 1 each warp leaves its partial in `part` for the per-token
 * kernel's combine_kernel, which kc_attention() launches after.
 */

#include <math.h>
#include <stdint.h>

#include "kernels_cuda.cuh"
#include "attention_cuda.cuh"
#include "attention_mma.cuh"

#define DEC_WARPS   4       /* rows a block */
#define DEC_PAD     8       /* row padding: ldmatrix without bank conflicts */

/* positions a tile: two 16-wide k-steps of P V, one at head_dim 128 so
 * that four warps' double buffers stay at 70 KB */
template <int HD> struct dec_np { static const int v = HD <= 64 ? 32 : 16; };

template <typename T, int HD, int NP>
struct dec_smem_t {
    T k[2][NP][HD + DEC_PAD];
    T v[2][NP][HD + DEC_PAD];
};

template <typename T, int HD, int NP>
__global__ void __launch_bounds__(DEC_WARPS * 32)
attention_dec_kernel(T *out, float *part, const float *qkv, const T *kv,
    size_t block_stride, kc_step_t st, int n_tok, int n_heads, int n_kv,
    int bs, float scale_log2, int n_split, int skip_multi)
{
    constexpr int KS = HD / 16;         /* k-steps of Q K^T */
    constexpr int NT = NP / 8;          /* score tiles of 8 positions */
    constexpr int DT = HD / 8;          /* output tiles of 8 dimensions */
    extern __shared__ __align__(16) char dec_raw[];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    dec_smem_t<T, HD, NP> &sm =
        reinterpret_cast<dec_smem_t<T, HD, NP> *>(dec_raw)[warp];
    int t = blockIdx.x * DEC_WARPS + warp;

    kc_pdl_wait();
    kc_pdl_trigger();

    if (t >= n_tok || (skip_multi && kc_att_multi(st.tokens, t, n_tok))) {
        return;             /* no row, or a prefill row served elsewhere */
    }

    int group = n_heads / n_kv;
    int chunks = (group + ATT_DEC_HEADS - 1) / ATT_DEC_HEADS;
    int kvh = blockIdx.y / chunks;
    int h0 = kvh * group + (blockIdx.y % chunks) * ATT_DEC_HEADS;
    int gh = min(ATT_DEC_HEADS, (kvh + 1) * group - h0);     /* heads here */
    int kv_dim = n_kv * HD, q_dim = n_heads * HD;
    kc_token_t tk = st.tokens[t];
    int ctx = tk.pos + 1;                               /* causal */
    /* the split's positions, whole tiles but the context's last */
    int span = ((ctx + n_split - 1) / n_split + NP - 1) / NP * NP;
    int p_begin = blockIdx.z * span, p_end = min(ctx, p_begin + span);
    int n_tiles = p_end > p_begin ? (p_end - p_begin + NP - 1) / NP : 0;
    const int32_t *table = st.tables + st.item_table[tk.item];
    const float *q = qkv + (size_t) t * (q_dim + 2 * kv_dim)
                     + (size_t) h0 * HD;
    int g = lane >> 2, c2 = (lane & 3) * 2;
    uint32_t qa[KS][4], qr[KS][4];
    float o[DT][4], m_l = -INFINITY, m_h = -INFINITY, l_l = 0.0f,
          l_h = 0.0f;

    /* K/V tile j into buffer j & 1 (fa_load_kv: zeros past p_end) */
    auto load_tile = [&](int j) {
        fa_load_kv<T, HD, NP, HD + DEC_PAD>(sm.k[j & 1], sm.v[j & 1], kv,
            table, block_stride, kv_dim, kvh, bs, p_begin + j * NP, p_end,
            lane, 32);
    };

    if (n_tiles > 0) {
        load_tile(0);
    }

    /* q as the A operand (rows: heads h0 + g, h0 + g + 8; columns: its
     * dimensions), hi and lo, straight from the f32 qkv rows */
#pragma unroll
    for (int ks = 0; ks < KS; ks++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int r = g + (i & 1) * 8, col = ks * 16 + c2 + (i >> 1) * 8;
            float2 x = make_float2(0.0f, 0.0f);

            if (r < gh) {
                x = *reinterpret_cast<const float2 *>(q + r * HD + col);
            }
            qa[ks][i] = fa_pack(x.x, x.y, T());
            qr[ks][i] = fa_rest(x.x, x.y, qa[ks][i], T());
        }
    }
#pragma unroll
    for (int i = 0; i < DT; i++) {
        o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    }

    for (int j = 0; j < n_tiles; j++) {
        int buf = j & 1, p0 = p_begin + j * NP;
        float s[NT][4];

        if (j + 1 < n_tiles) {
            load_tile(j + 1);
            fa_wait<1>();
        } else {
            fa_wait<0>();
        }
        __syncwarp();

        fa_qk<T, KS, NT, HD + DEC_PAD, true>(s, qa, qr, sm.k[buf], lane);

        /* the split's end (every row of the warp shares it) */
        if (p0 + NP > p_end) {
#pragma unroll
            for (int i = 0; i < NT; i++) {
                int p = p0 + i * 8 + c2;

                if (p >= p_end) {
                    s[i][0] = s[i][2] = -INFINITY;
                }
                if (p + 1 >= p_end) {
                    s[i][1] = s[i][3] = -INFINITY;
                }
            }
        }
        fa_softmax_tile<NT, DT>(s, o, scale_log2, m_l, m_h, l_l, l_h);
        fa_pv<T, NT, DT, HD + DEC_PAD, true>(o, s, sm.v[buf], lane);
        __syncwarp();           /* buffer buf is loaded again next */
    }

    /* the row sums; then out = O / l, or the partial */
    fa_quad_sums(l_l, l_h);
#pragma unroll
    for (int half = 0; half < 2; half++) {
        int r = g + half * 8, h = h0 + r;
        float l = half ? l_h : l_l, m = half ? m_h : m_l;

        if (r >= gh) {
            continue;
        }
        if (n_split == 1) {
            T *dst = out + (size_t) t * q_dim + (size_t) h * HD + c2;
            float inv = l > 0.0f ? 1.0f / l : 0.0f;

#pragma unroll
            for (int i = 0; i < DT; i++) {
                *reinterpret_cast<uint32_t *>(dst + i * 8) =
                    fa_pack(o[i][2 * half] * inv, o[i][2 * half + 1] * inv,
                            T());
            }
        } else {
            /* [token][head][split][hd | max | sum], the max in natural
             * units as the per-token kernel leaves it */
            float *pp = part + (((size_t) t * n_heads + h) * n_split
                                + blockIdx.z) * (HD + 2);

#pragma unroll
            for (int i = 0; i < DT; i++) {
                *reinterpret_cast<float2 *>(pp + i * 8 + c2) =
                    make_float2(o[i][2 * half], o[i][2 * half + 1]);
            }
            if (c2 == 0) {
                pp[HD] = m * 0.6931471805599453f;
                pp[HD + 1] = l;
            }
        }
    }
}

template <typename T, int HD>
static cudaError_t
launch_dec(cudaStream_t s, T *out, float *part, const float *qkv,
    const T *kv, size_t block_stride, kc_step_t st, int n_tok, int n_heads,
    int n_kv, int bs, int n_split, int skip_multi)
{
    constexpr int NP = dec_np<HD>::v;
    static int ready;               /* the shared-memory size is allowed */
    size_t smem = DEC_WARPS * sizeof(dec_smem_t<T, HD, NP>);
    int group = n_heads / n_kv;
    dim3 grid((n_tok + DEC_WARPS - 1) / DEC_WARPS,
              n_kv * ((group + ATT_DEC_HEADS - 1) / ATT_DEC_HEADS), n_split);
    float scale_log2 = 1.4426950408889634f / sqrtf((float) HD);

    cudaError_t r = fa_allow_smem(attention_dec_kernel<T, HD, NP>, smem,
                                  &ready);

    if (r != cudaSuccess) {
        return r;
    }
    return kc_launch(attention_dec_kernel<T, HD, NP>, grid, DEC_WARPS * 32,
                     smem, s, out, part, qkv, kv, block_stride, st, n_tok,
                     n_heads, n_kv, bs, scale_log2, n_split, skip_multi);
}

cudaError_t
att_dec_launch(cudaStream_t s, kc_dtype_t dt, void *out, float *part,
    const float *qkv, const void *kv_layer, size_t block_stride,
    kc_step_t st, int n_tok, int n_heads, int n_kv_heads, int head_dim,
    int block_size, int n_split, int skip_multi)
{
    cudaError_t r = cudaErrorInvalidValue;

#define DEC_LAUNCH(T, HD)                                                 \
    r = launch_dec<T, HD>(s, (T *) out, part, qkv, (const T *) kv_layer,  \
                          block_stride, st, n_tok, n_heads, n_kv_heads,   \
                          block_size, n_split, skip_multi)
    FA_DISPATCH(dt, head_dim, DEC_LAUNCH);
#undef DEC_LAUNCH
    return r;
}
