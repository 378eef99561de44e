/*
 * attention_tc_cuda.cu - causal attention for the prefill rows of a step
 * on tensor cores (bf16 / f16 in, f32 accumulate), flash-attention style.
 * CPU reference: k_attention() in kernels_cpu.c; t/gpu/test_cuda_kernels.c
 * compares the two.
 *
 * The per-token kernel in attention_cuda.cu reads every K/V row of the
 * context once per query token: right for decode, ~10% of the FLOP floor
 * for a long prompt.  Here one block takes a tile of FA_BM query rows,
 * a row being one (token, query head) pair of one KV head's group in
 * token-major order (FA_BM / group tokens of the same item, all heads of
 * the group, so the group shares every K/V row the block reads), and
 * walks the item's context in tiles of FA_BN positions:
 *
 *   1. K and V rows of the next tile go from the paged cache to shared
 *      memory with cp.async (16 bytes a copy, through the block table;
 *      positions past the tile's last query are zero-filled), while the
 *      warps work on the current tile (double buffer);
 *   2. each warp computes the scores of its 16 rows (mma.sync m16n8k16),
 *      masks positions after each row's own position (causal; only the
 *      tiles past the smallest position need it), keeps the softmax
 *      online in registers (running max and sum per row, base 2), and
 *   3. adds P V, P rounded to the storage dtype as the matrix unit takes
 *      it, into f32 accumulators held in registers.
 *
 * q comes from the f32 qkv buffer and is rounded to the storage dtype
 * when it is staged (in bf16 as two parts, hi + lo: see fa_split_q).  Which rows are prefill rows is decided on the
 * device (kc_att_multi: the token's item has a neighbouring token in the
 * step), the same way in both kernels, so a mixed step needs no host-side
 * list: decode rows go to the per-token kernel with its context splits.
 */

#include <stdint.h>

#include "kernels_cuda.cuh"
#include "attention_cuda.cuh"
#include "attention_mma.cuh"

#define FA_BM       64      /* query rows a block: 4 warps of 16 */
#define FA_BN       64      /* context positions a tile */
#define FA_THREADS  128
#define FA_PAD      8       /* row padding: ldmatrix without bank conflicts */

/* --- the kernel -------------------------------------------------------------- */

template <typename T, int HD>
struct fa_smem_t {
    T q[FA_BM][HD + FA_PAD];
    T k[2][FA_BN][HD + FA_PAD];
    T v[2][FA_BN][HD + FA_PAD];
    int pos[FA_BM];                 /* each row's position, -1: no row */
};

/*
 * Grid: x = query tiles (last tile first: the longest contexts start
 * first), y = KV head x chunk of its group.  The block's tokens are
 * t0 .. t0 + tq - 1; it serves each run of one item's tokens in there
 * that kc_att_multi() gives to this kernel.
 */
template <typename T, int HD>
__global__ void __launch_bounds__(FA_THREADS)
attention_tc_kernel(T *out, const float *qkv, const T *kv,
    size_t block_stride, kc_step_t st, int n_tok, int n_heads, int n_kv,
    int bs, float scale_log2)
{
    constexpr int KS = HD / 16;         /* k-steps of Q K^T */
    constexpr int NT = FA_BN / 8;       /* score tiles of 8 a warp row */
    constexpr int DT = HD / 8;          /* output tiles of 8 */
    constexpr int CPR = HD / 8;         /* 16-byte chunks a row */
    extern __shared__ __align__(16) char fa_raw[];
    fa_smem_t<T, HD> &sm = *reinterpret_cast<fa_smem_t<T, HD> *>(fa_raw);

    kc_pdl_wait();
    kc_pdl_trigger();

    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int group = n_heads / n_kv;
    int gc = min(group, FA_BM);                 /* heads a block */
    int chunks = (group + gc - 1) / gc;
    int tq = FA_BM / gc;                        /* tokens a block */
    int kvh = blockIdx.y / chunks;
    int h0 = kvh * group + (blockIdx.y % chunks) * gc;
    int gh = min(gc, (kvh + 1) * group - h0);
    int kv_dim = n_kv * HD, q_dim = n_heads * HD;
    int qkv_stride = q_dim + 2 * kv_dim;
    int t0 = (gridDim.x - 1 - blockIdx.x) * tq;
    int t1 = min(n_tok, t0 + tq);
    const kc_token_t *tk = st.tokens;
    int a = t0;

    while (a < t1) {
        int item = tk[a].item, b = a + 1, max_pos = -1, min_pos = INT_MAX;
        int n_tiles, n_full, rl, rh, pl, ph;
        const int32_t *table;
        uint32_t qa[KS][4], qr[fa_split_q<T>::v ? KS : 1][4];
        float o[DT][4], m_l = -INFINITY, m_h = -INFINITY, l_l = 0.0f,
              l_h = 0.0f;

        while (b < t1 && tk[b].item == item) {
            b++;
        }
        if (b - a < 2 && !kc_att_multi(tk, a, n_tok)) {
            a = b;              /* a decode row: the per-token kernel's */
            continue;
        }
        for (int t = a; t < b; t++) {
            max_pos = max(max_pos, tk[t].pos);
            min_pos = min(min_pos, tk[t].pos);
        }
        table = st.tables + st.item_table[item];

        /* the tile's rows: q rounded to T (part 0), or what that rounding
         * left out (part 1, see fa_split_q), and each row's position */
        auto stage_q = [&](int part) {
            for (int c = tid; c < FA_BM * CPR; c += FA_THREADS) {
                int r = c / CPR, d0 = (c - r * CPR) * 8;
                int t = t0 + r / gc, hr = r % gc;
                int live = r / gc < tq && t >= a && t < b && hr < gh;
                uint32_t w[4] = { 0, 0, 0, 0 };

                if (live) {
                    const float4 *q = reinterpret_cast<const float4 *>(
                        qkv + (size_t) t * qkv_stride
                        + (size_t) (h0 + hr) * HD + d0);
                    float4 x = q[0], y = q[1];
                    w[0] = fa_pack(x.x, x.y, T());
                    w[1] = fa_pack(x.z, x.w, T());
                    w[2] = fa_pack(y.x, y.y, T());
                    w[3] = fa_pack(y.z, y.w, T());
                    if (part == 1) {
                        w[0] = fa_pack_rest(x.x, x.y, w[0]);
                        w[1] = fa_pack_rest(x.z, x.w, w[1]);
                        w[2] = fa_pack_rest(y.x, y.y, w[2]);
                        w[3] = fa_pack_rest(y.z, y.w, w[3]);
                    }
                }
                *reinterpret_cast<uint4 *>(&sm.q[r][d0]) =
                    make_uint4(w[0], w[1], w[2], w[3]);
                if (d0 == 0) {
                    sm.pos[r] = live ? tk[t].pos : -1;
                }
            }
        };
        stage_q(0);

        /* K/V tile j into buffer j & 1 (fa_load_kv: zeros past
         * max_pos) */
        auto load_tile = [&](int j) {
            fa_load_kv<T, HD, FA_BN, HD + FA_PAD>(sm.k[j & 1], sm.v[j & 1],
                kv, table, block_stride, kv_dim, kvh, bs, j * FA_BN,
                max_pos + 1, tid, FA_THREADS);
        };

        n_tiles = (max_pos + FA_BN) / FA_BN;
        n_full = (min_pos + 1) / FA_BN;     /* tiles no row masks */
        load_tile(0);
        __syncthreads();                    /* sm.q, sm.pos */

#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            fa_ldsm4(qa[ks], &sm.q[warp * 16 + (lane & 15)]
                                  [ks * 16 + (lane >> 4) * 8]);
        }
        if (fa_split_q<T>::v) {
            __syncthreads();                /* every warp has its qa */
            stage_q(1);
            __syncthreads();
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
                fa_ldsm4(qr[ks], &sm.q[warp * 16 + (lane & 15)]
                                      [ks * 16 + (lane >> 4) * 8]);
            }
        }
        rl = warp * 16 + (lane >> 2);
        rh = rl + 8;
        pl = sm.pos[rl];
        ph = sm.pos[rh];
#pragma unroll
        for (int i = 0; i < DT; i++) {
            o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
        }

        for (int j = 0; j < n_tiles; j++) {
            int buf = j & 1;
            float s[NT][4];

            if (j + 1 < n_tiles) {
                load_tile(j + 1);
                fa_wait<1>();
            } else {
                fa_wait<0>();
            }
            __syncthreads();

            /* 2. S = Q K^T for the warp's 16 rows and the tile's 64 */
            fa_qk<T, KS, NT, HD + FA_PAD, fa_split_q<T>::v>(s, qa, qr,
                                                            sm.k[buf], lane);

            /* causal mask; 3. the softmax, O += P V */
            if (j >= n_full) {
#pragma unroll
                for (int i = 0; i < NT; i++) {
                    int p = j * FA_BN + i * 8 + (lane & 3) * 2;
                    if (p > pl) s[i][0] = -INFINITY;
                    if (p + 1 > pl) s[i][1] = -INFINITY;
                    if (p > ph) s[i][2] = -INFINITY;
                    if (p + 1 > ph) s[i][3] = -INFINITY;
                }
            }
            fa_softmax_tile<NT, DT>(s, o, scale_log2, m_l, m_h, l_l, l_h);
            fa_pv<T, NT, DT, HD + FA_PAD, false>(o, s, sm.v[buf], lane);
            __syncthreads();    /* buffer buf is loaded again next */
        }

        /* the row sums, then out = O / l */
        fa_quad_sums(l_l, l_h);
#pragma unroll
        for (int half = 0; half < 2; half++) {
            int r = half ? rh : rl;
            float inv = half ? (l_h > 0.0f ? 1.0f / l_h : 0.0f)
                             : (l_l > 0.0f ? 1.0f / l_l : 0.0f);
            if ((half ? ph : pl) >= 0) {
                T *dst = out + (size_t) (t0 + r / gc) * q_dim
                         + (size_t) (h0 + r % gc) * HD + (lane & 3) * 2;
#pragma unroll
                for (int i = 0; i < DT; i++) {
                    *reinterpret_cast<uint32_t *>(dst + i * 8) =
                        fa_pack(o[i][2 * half] * inv,
                                o[i][2 * half + 1] * inv, T());
                }
            }
        }
        __syncthreads();        /* sm.q and sm.pos are refilled next run */
        a = b;
    }
}

template <typename T, int HD>
static cudaError_t
launch_tc(cudaStream_t s, T *out, const float *qkv, const T *kv,
    size_t block_stride, kc_step_t st, int n_tok, int n_heads, int n_kv,
    int bs)
{
    static int ready;               /* the shared-memory size is allowed */
    size_t smem = sizeof(fa_smem_t<T, HD>);
    int group = n_heads / n_kv, gc = group < FA_BM ? group : FA_BM;
    int tq = FA_BM / gc;
    dim3 grid((n_tok + tq - 1) / tq, n_kv * ((group + gc - 1) / gc));
    float scale_log2 = 1.4426950408889634f / sqrtf((float) HD);

    cudaError_t r = fa_allow_smem(attention_tc_kernel<T, HD>, smem, &ready);

    if (r != cudaSuccess) {
        return r;
    }
    return kc_launch(attention_tc_kernel<T, HD>, grid, FA_THREADS, smem, s,
                     out, qkv, kv, block_stride, st, n_tok, n_heads, n_kv, bs,
                     scale_log2);
}

int
att_tc_supported(kc_dtype_t dt, int head_dim)
{
    return dt != KC_F32 && (head_dim == 16 || head_dim == 32
                            || head_dim == 64 || head_dim == 128);
}

cudaError_t
att_tc_launch(cudaStream_t s, kc_dtype_t dt, void *out, const float *qkv,
    const void *kv_layer, size_t block_stride, kc_step_t st, int n_tok,
    int n_heads, int n_kv_heads, int head_dim, int block_size)
{
    cudaError_t r = cudaErrorInvalidValue;

#define TC_LAUNCH(T, HD)                                                  \
    r = launch_tc<T, HD>(s, (T *) out, qkv, (const T *) kv_layer,         \
                         block_stride, st, n_tok, n_heads, n_kv_heads,    \
                         block_size)
    FA_DISPATCH(dt, head_dim, TC_LAUNCH);
#undef TC_LAUNCH
    return r;
}
