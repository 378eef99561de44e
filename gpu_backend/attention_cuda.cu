/*
 * attention_cuda.cu - causal attention over the paged KV cache, for
 * prefill chunks and decode tokens alike.  CPU reference: k_attention()
 * in kernels_cpu.c; t/gpu/test_cuda_kernels.c compares the two.
 *
 * One block per (query token, KV head, chunk of up to KC_ATT_MAXG query
 * heads of that KV head's group, split of the context): the group's
 * heads share every K and V row the block reads, so grouped-query
 * attention reads the cache once per KV head, not once per query head.
 *
 * The block walks its positions in sub-tiles of SUB rows: all threads
 * copy the sub-tile's K and V rows into shared memory (16-byte loads,
 * every load of the sub-tile in flight at once: a step of decode is
 * bound by the latency of these reads, not by their bytes), then score
 * them against the heads, keep the softmax online (running max and sum
 * per head, rescaled per sub-tile), and add the weighted V rows into
 * per-thread (head, dimension) accumulators.  Everything is f32 but the
 * cache itself.
 *
 * With few blocks (decode at small batch) the context is split across
 * n_split blocks (flash-decoding), each with its unnormalised partial
 * result and its max and sum.  The split blocks of a (token, heads) run
 * as one thread-block cluster and merge the partials from each other's
 * shared memory; without clusters they write them to `part` and
 * combine_kernel merges them, one more kernel in the step.
 * A decode row reads its first sub-tile of earlier positions before its
 * programmatic-launch wait (NGX_GPU_ATT_EARLY=0: after, to compare).
 *
 * Prefill rows (kc_att_multi) go to the tensor-core kernel in
 * attention_tc_cuda.cu when kc_attention() is asked to tile and the
 * dtype and head_dim allow; this kernel then skips them.
 */

#include <stdlib.h>
#include <string.h>

#include <cooperative_groups.h>

#include "kernels_cuda.cuh"
#include "attention_cuda.cuh"
#include "attention_short.cuh"

#define ATT_THREADS  128

/*
 * Rows p0 .. p0 + SUB - 1 of a KV head's cache into ks and vs, as f32
 * (16-byte loads, all of a thread's in flight at once): those in
 * [lo, hi) are read, those at or past `end` (and the dimensions past hd)
 * are zeros, so that scoring and summing need no bounds; the others are
 * left for another call.  Each element has one thread in every call.
 */
template <typename T, int HDM, int SUB>
__device__ __forceinline__ void
att_load_rows(float (*ks)[HDM + 1], float (*vs)[HDM], const T *kv,
    const int32_t *table, size_t block_stride, int kv_dim, int kvh, int hd,
    int bs, int p0, int lo, int hi, int end)
{
    constexpr int CPR = HDM / 8;                    /* 8-wide chunks a row */
    size_t v_off = (size_t) bs * kv_dim;            /* V follows K */

    for (int c = threadIdx.x; c < SUB * CPR; c += ATT_THREADS) {
        int r = c / CPR, d0 = (c - r * CPR) * 8, p = p0 + r;
        float kf[8], vf[8];

        if (p >= end || d0 >= hd) {
#pragma unroll
            for (int u = 0; u < 8; u++) {
                kf[u] = vf[u] = 0.0f;
            }
        } else if (p >= lo && p < hi) {
            const T *kr = kv + (size_t) table[p / bs] * block_stride
                          + (size_t) (p % bs) * kv_dim
                          + (size_t) kvh * hd + d0;
            kc_load8(kr, kf);
            kc_load8(kr + v_off, vf);
        } else {
            continue;
        }
#pragma unroll
        for (int u = 0; u < 8; u++) {
            ks[r][d0 + u] = kf[u];
            vs[r][d0 + u] = vf[u];
        }
    }
}

template <typename T, int HDM, int SUB, bool CL>
__global__ void __launch_bounds__(ATT_THREADS)
attention_kernel(T *out, float *part, const float *qkv, const T *kv,
    size_t block_stride, kc_step_t st, int n_heads, int n_kv, int hd,
    int bs, float scale, int n_split, int skip_multi, int early,
    int short_cap)
{
    constexpr int NSLOT = ATT_THREADS / SUB;        /* heads scored at once */
    constexpr int MAXO = KC_ATT_MAXG * HDM / ATT_THREADS;
    __shared__ float qs[KC_ATT_MAXG][HDM];
    __shared__ float ks[SUB][HDM + 1];              /* +1: no bank conflicts */
    __shared__ float vs[SUB][HDM];
    __shared__ float ps[KC_ATT_MAXG][SUB];
    __shared__ float m_s[KC_ATT_MAXG], l_s[KC_ATT_MAXG], c_s[KC_ATT_MAXG];

    int tid = threadIdx.x;
    int group = n_heads / n_kv;
    int chunks = (group + KC_ATT_MAXG - 1) / KC_ATT_MAXG;
    int kvh = blockIdx.y / chunks;
    int h0 = kvh * group + (blockIdx.y % chunks) * KC_ATT_MAXG;
    int gc = min(KC_ATT_MAXG, (kvh + 1) * group - h0);  /* heads here */
    int kv_dim = n_kv * hd, q_dim = n_heads * hd;
    kc_token_t tk = st.tokens[blockIdx.x];
    int ctx = tk.pos + 1;                           /* causal: 0 .. pos */
    int span = (ctx + n_split - 1) / n_split;
    int p_begin = blockIdx.z * span, p_end = min(ctx, p_begin + span);
    const int32_t *table = st.tables + st.item_table[tk.item];
    const float *q = qkv + (size_t) blockIdx.x * (q_dim + 2 * kv_dim)
                     + (size_t) h0 * hd;
    int j = tid % SUB, slot = tid / SUB;            /* scoring: position, heads */
    int multi = kc_att_multi(st.tokens, blockIdx.x, gridDim.x);
    int p_pre = p_begin;
    float acc[MAXO];

    if constexpr (CL && HDM >= 32 && HDM <= 128) {
        /* a decode row whose context fits whole: attention_short.cuh */
        extern __shared__ __align__(16) unsigned char att_dyn[];

        if (!multi && ctx <= short_cap) {
            if ((int) blockIdx.z < gc) {
                att_short<T, HDM, ATT_THREADS>(
                    out + (size_t) blockIdx.x * q_dim,
                    qkv + (size_t) blockIdx.x * (q_dim + 2 * kv_dim), kv,
                    block_stride, table, kv_dim, kvh, hd, bs, tk.pos,
                    h0 + blockIdx.z, n_split, h0 + gc, scale, att_dyn,
                    short_cap);
            }
            return;             /* a block without a head reads nothing */
        }
    }

    /* The step's inputs (tokens, block tables) were uploaded before the
     * step, and a decode row's positions before its own were written by
     * earlier steps: its first sub-tile of those is read before the wait,
     * while the kernel before (which writes q and the row at pos) still
     * runs, so the chain of dependent reads (token, table, cache) is off
     * the step's path.  A prefill row's earlier positions may be this
     * step's: it reads after the wait. */
    if (early && !multi) {
        p_pre = min(tk.pos, min(p_end, p_begin + SUB));
        if (p_pre > p_begin) {
            att_load_rows<T, HDM, SUB>(ks, vs, kv, table, block_stride,
                                       kv_dim, kvh, hd, bs, p_begin, p_begin,
                                       p_pre, p_end);
        }
    }
    kc_pdl_wait();
    kc_pdl_trigger();

    if (skip_multi && multi) {
        return;                 /* a prefill row: the tensor-core kernel's */
    }
    /* q, and zeros past hd: the scores run over HDM dimensions */
    for (int i = tid; i < gc * HDM; i += ATT_THREADS) {
        int h = i / HDM, d = i - h * HDM;
        qs[h][d] = d < hd ? q[h * hd + d] * scale : 0.0f;
    }
    if (tid < KC_ATT_MAXG) {
        m_s[tid] = -INFINITY;
        l_s[tid] = 0.0f;
        c_s[tid] = 1.0f;
    }
#pragma unroll
    for (int k = 0; k < MAXO; k++) {
        acc[k] = 0.0f;
    }
    __syncthreads();

    for (int p0 = p_begin; p0 < p_end; p0 += SUB) {
        int n_here = min(SUB, p_end - p0);

        /* 1. the sub-tile's K and V rows into shared memory (the first
         * sub-tile's rows before p_pre are there already) */
        att_load_rows<T, HDM, SUB>(ks, vs, kv, table, block_stride, kv_dim,
                                   kvh, hd, bs, p0,
                                   p0 == p_begin ? p_pre : p0, p_end, p_end);
        __syncthreads();

        /* 2. scores of position j for heads slot, slot + NSLOT, ...; the
         * SUB threads of one head are an aligned group of lanes, so the
         * max and the sum are shuffles */
#pragma unroll
        for (int hh = 0; hh < KC_ATT_MAXG / NSLOT; hh++) {
            int h = slot + hh * NSLOT;
            int live = h < gc && j < n_here;
            float s = -INFINITY, mx, m_old, m_new, e, sum;

            if (live) {
                /* over HDM (ks and qs are zeros past hd), four sums: a
                 * quarter of the chain of dependent adds */
                float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;

#pragma unroll
                for (int d = 0; d < HDM; d += 4) {
                    s0 = fmaf(qs[h][d], ks[j][d], s0);
                    s1 = fmaf(qs[h][d + 1], ks[j][d + 1], s1);
                    s2 = fmaf(qs[h][d + 2], ks[j][d + 2], s2);
                    s3 = fmaf(qs[h][d + 3], ks[j][d + 3], s3);
                }
                s = (s0 + s1) + (s2 + s3);
            }
            mx = s;
#pragma unroll
            for (int o = SUB / 2; o > 0; o >>= 1) {
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            }
            m_old = m_s[h];
            m_new = fmaxf(m_old, mx);
            e = live ? expf(s - m_new) : 0.0f;
            ps[h][j] = e;
            sum = e;
#pragma unroll
            for (int o = SUB / 2; o > 0; o >>= 1) {
                sum += __shfl_xor_sync(0xffffffffu, sum, o);
            }
            if (j == 0 && h < gc) {
                float c = expf(m_old - m_new);      /* 0 on the first */
                c_s[h] = c;
                m_s[h] = m_new;
                l_s[h] = l_s[h] * c + sum;
            }
        }
        __syncthreads();

        /* 3. outputs (h, d) = rescaled + weights . V over the sub-tile */
#pragma unroll
        for (int k = 0; k < MAXO; k++) {
            int o = tid + k * ATT_THREADS;
            if (o < gc * hd) {
                int h = o / hd, d = o - h * hd;
                float a = acc[k] * c_s[h], b = 0.0f;

                /* over the whole sub-tile: past n_here the weights and
                 * the rows are zeros; two sums */
#pragma unroll
                for (int r = 0; r < SUB; r += 2) {
                    a = fmaf(ps[h][r], vs[r][d], a);
                    b = fmaf(ps[h][r + 1], vs[r + 1][d], b);
                }
                acc[k] = a + b;
            }
        }
        __syncthreads();        /* ks, vs, ps, c_s are reused next */
    }

    if constexpr (CL) {
        /* the n_split blocks of this (token, heads) are one cluster:
         * each leaves its partial in its own shared memory (ks is free
         * now), and after the cluster's barrier block r merges outputs
         * r * ATT_THREADS + tid, ... from every block's, as
         * combine_kernel does from `part` (so no kernel follows); the
         * second barrier keeps each block's memory until all have read */
        cooperative_groups::cluster_group cl =
            cooperative_groups::this_cluster();
        float *po = &ks[0][0];
        int rank = (int) cl.block_rank();

#pragma unroll
        for (int k = 0; k < MAXO; k++) {
            int o = tid + k * ATT_THREADS;
            if (o < gc * hd) {
                po[o] = acc[k];
            }
        }
        cl.sync();
        for (int o = rank * ATT_THREADS + tid; o < gc * hd;
             o += n_split * ATT_THREADS)
        {
            int h = o / hd;
            float m[KC_ATT_MAX_SPLIT], l[KC_ATT_MAX_SPLIT];
            float p[KC_ATT_MAX_SPLIT];
            float mx = -INFINITY, sum = 0.0f, a = 0.0f;

#pragma unroll
            for (int r = 0; r < KC_ATT_MAX_SPLIT; r++) {
                if (r < n_split) {
                    m[r] = *cl.map_shared_rank(&m_s[h], r);
                    l[r] = *cl.map_shared_rank(&l_s[h], r);
                    p[r] = *cl.map_shared_rank(&po[o], r);
                }
            }
#pragma unroll
            for (int r = 0; r < KC_ATT_MAX_SPLIT; r++) {
                if (r < n_split && l[r] > 0.0f) {
                    mx = fmaxf(mx, m[r]);
                }
            }
#pragma unroll
            for (int r = 0; r < KC_ATT_MAX_SPLIT; r++) {
                if (r < n_split && l[r] > 0.0f) {
                    float wt = expf(m[r] - mx);
                    sum += wt * l[r];
                    a += wt * p[r];
                }
            }
            out[(size_t) blockIdx.x * q_dim + (size_t) h0 * hd + o] =
                kc_store<T>(a / sum);
        }
        cl.sync();
    } else {
#pragma unroll
        for (int k = 0; k < MAXO; k++) {
            int o = tid + k * ATT_THREADS;
            if (o < gc * hd) {
                int h = o / hd, d = o - h * hd;
                size_t th = (size_t) blockIdx.x * n_heads + h0 + h;

                if (n_split == 1) {
                    out[th * hd + d] = kc_store<T>(acc[k] / l_s[h]);
                } else {
                    /* [token][head][split][hd | max | sum] */
                    float *pp = part + (th * n_split + blockIdx.z) * (hd + 2);
                    pp[d] = acc[k];
                    if (d == 0) {
                        pp[hd] = m_s[h];
                        pp[hd + 1] = l_s[h];
                    }
                }
            }
        }
    }
}

/* merge the splits of one (token, head): weights exp(m_s - max); the
 * splits' maxima and sums are read by one warp at once, then each
 * thread reads its dimension of every split with the loads in flight */
template <typename T>
__global__ void
combine_kernel(T *out, const float *part, int n_heads, int hd, int n_split,
    kc_step_t st, int skip_multi)
{
    __shared__ float w_s[KC_ATT_MAX_SPLIT];
    __shared__ float inv_s;
    kc_pdl_wait();
    kc_pdl_trigger();

    const float *pp = part + ((size_t) blockIdx.x * n_heads + blockIdx.y)
                             * n_split * (hd + 2);
    int tid = threadIdx.x;

    if (skip_multi && kc_att_multi(st.tokens, blockIdx.x, gridDim.x)) {
        return;
    }
    if (tid < 32) {
        int live = tid < n_split && pp[tid * (hd + 2) + hd + 1] > 0.0f;
        float m = live ? pp[tid * (hd + 2) + hd] : -INFINITY;
        float l = live ? pp[tid * (hd + 2) + hd + 1] : 0.0f;
        float mx = kc_warp_max(m), wt, sum;

        wt = live ? expf(m - mx) : 0.0f;
        sum = kc_warp_sum(wt * l);
        if (tid < n_split) {
            w_s[tid] = wt;
        }
        if (tid == 0) {
            inv_s = 1.0f / sum;
        }
    }
    __syncthreads();
    for (int d = tid; d < hd; d += blockDim.x) {
        float a = 0.0f;
#pragma unroll
        for (int s = 0; s < KC_ATT_MAX_SPLIT; s++) {
            if (s < n_split) {
                a += w_s[s] * pp[s * (hd + 2) + d];
            }
        }
        out[((size_t) blockIdx.x * n_heads + blockIdx.y) * hd + d] =
            kc_store<T>(a * inv_s);
    }
}

/* the most blocks a cluster of splits (kc_att_cluster, or
 * NGX_GPU_ATT_CLUSTER: 0 merges through `part` and combine_kernel);
 * -1: not read yet */
static int att_cluster = -1;

void
kc_att_cluster(int n)
{
    att_cluster = n < 2 ? 0 : n < KC_ATT_MAX_SPLIT ? n : KC_ATT_MAX_SPLIT;
}

/* the bound, from the environment on first use */
static int
att_cluster_max(void)
{
    if (att_cluster < 0) {
        const char *v = getenv("NGX_GPU_ATT_CLUSTER");

        kc_att_cluster(v != NULL ? atoi(v) : KC_ATT_CLUSTER);
    }
    return att_cluster;
}

int
kc_att_max_split(void)
{
    return att_cluster_max() > 1 ? att_cluster : KC_ATT_MAX_SPLIT;
}

/* the most positions of the short path (kc_att_short); -1: not read */
static int att_short_pos = -1;

void
kc_att_short(int n)
{
    att_short_pos = n < 0 ? 0 : n;
}

/* the most positions instance <T, HDM>'s short path can hold in
 * KC_ATT_SHORT_BYTES, a multiple of 32; 0: the instance has none */
template <typename T, int HDM>
static int
att_short_fit(void)
{
    if (HDM < 32 || HDM > 128) {
        return 0;
    }
    return (int) (KC_ATT_SHORT_BYTES / att_short_bytes<T, HDM>(1)) / 32 * 32;
}

/* the positions instance <T, HDM> holds on the short path at head_dim
 * hd (within the bound and what fits), 0: not taken */
template <typename T, int HDM>
static int
att_short_cap(int hd)
{
    int fit = att_short_fit<T, HDM>();

    if (att_short_pos < 0) {
        const char *v = getenv("NGX_GPU_ATT_SHORT");

        kc_att_short(v != NULL ? atoi(v) : KC_ATT_SHORT);
    }
    if (hd % 8 != 0) {
        return 0;
    }
    return att_short_pos < fit ? att_short_pos : fit;
}

/* the fewest rows a step sends to the decode kernel on tensor cores
 * (kc_att_dec); -1: not read yet */
static int att_dec_rows = -1;

void
kc_att_dec(int n)
{
    att_dec_rows = n < 0 ? 0 : n;
}

int
kc_att_dec_used(kc_dtype_t dt, int head_dim, int n_tok)
{
    if (att_dec_rows < 0) {
        const char *v = getenv("NGX_GPU_ATT_DEC");

        kc_att_dec(v != NULL ? atoi(v) : KC_ATT_DEC_ROWS);
    }
    return att_dec_rows > 0 && n_tok >= att_dec_rows
           && att_tc_supported(dt, head_dim);
}

/* warps a multiprocessor the decode kernel's splits aim at: one warp's
 * double buffer keeps 16 KB of the cache in flight */
#define ATT_DEC_WARPS_SM  4

int
kc_att_dec_splits(int n_tok, int n_heads, int n_kv_heads, int n_sm)
{
    int group = n_heads / n_kv_heads;
    long units = (long) n_tok * n_kv_heads
                 * ((group + ATT_DEC_HEADS - 1) / ATT_DEC_HEADS);
    long n = ((long) ATT_DEC_WARPS_SM * n_sm + units - 1) / units;

    return n < 1 ? 1 : n > KC_ATT_MAX_SPLIT ? KC_ATT_MAX_SPLIT : (int) n;
}

/* merge n_split partials of each (token, head) from part */
template <typename T>
static void
launch_combine(cudaStream_t s, T *out, const float *part, kc_step_t st,
    int n_tok, int n_heads, int hd, int n_split, int skip_multi)
{
    kc_launch(combine_kernel<T>, dim3(n_tok, n_heads),
              dim3((hd + 31) / 32 * 32), 0, s, out, part, n_heads, hd,
              n_split, st, skip_multi);
}

/*
 * The per-token kernel; with splits, as one cluster of n_split blocks
 * that merge among themselves where n_split is within the cluster
 * bound (more than 8 blocks is H100's non-portable size) and the device
 * can place such a cluster, else followed by combine_kernel.
 */
template <typename T, int HDM, int SUB>
static void
launch(cudaStream_t s, dim3 grid, T *out, float *part, const float *qkv,
    const T *kv, size_t block_stride, kc_step_t st, int n_heads, int n_kv,
    int hd, int bs, float scale, int n_split, int skip_multi, int early)
{
    static int cl_ok = -1;          /* this instance's clusters place */
    /* the short path's shared memory (at most cl_smem) is taken by every
     * clustered launch, so that a graph holds it whatever the context */
    size_t cl_smem = att_short_bytes<T, HDM>(att_short_fit<T, HDM>());
    int cap = att_short_cap<T, HDM>(hd);

    if (cl_ok < 0) {
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute at[1];
        int n = 0;

        cl_ok = cudaFuncSetAttribute(attention_kernel<T, HDM, SUB, true>,
                    cudaFuncAttributeNonPortableClusterSizeAllowed, 1)
                == cudaSuccess
                && cudaFuncSetAttribute(attention_kernel<T, HDM, SUB, true>,
                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                       (int) cl_smem)
                   == cudaSuccess;
        cfg.gridDim = dim3(1, 1, KC_ATT_MAX_SPLIT);
        cfg.blockDim = dim3(ATT_THREADS);
        cfg.dynamicSmemBytes = cl_smem;
        at[0].id = cudaLaunchAttributeClusterDimension;
        at[0].val.clusterDim.x = 1;
        at[0].val.clusterDim.y = 1;
        at[0].val.clusterDim.z = KC_ATT_MAX_SPLIT;  /* the largest */
        cfg.attrs = at;
        cfg.numAttrs = 1;
        cl_ok = cl_ok
                && cudaOccupancyMaxActiveClusters(&n,
                       attention_kernel<T, HDM, SUB, true>, &cfg)
                   == cudaSuccess
                && n > 0;
        (void) cudaGetLastError();  /* a refusal is an answer, not an error */
    }
    if (n_split > 1 && n_split <= att_cluster_max() && cl_ok) {
        kc_launch_cluster(attention_kernel<T, HDM, SUB, true>, grid,
                          dim3(1, 1, n_split), ATT_THREADS,
                          cap > 0 ? att_short_bytes<T, HDM>(cap) : 0, s,
                          out, part, qkv, kv, block_stride, st, n_heads,
                          n_kv, hd, bs, scale, n_split, skip_multi, early,
                          cap);
        return;
    }
    kc_launch(attention_kernel<T, HDM, SUB, false>, grid, ATT_THREADS, 0, s,
              out, part, qkv, kv, block_stride, st, n_heads, n_kv, hd, bs,
              scale, n_split, skip_multi, early, 0);
    if (n_split > 1) {
        launch_combine<T>(s, out, part, st, grid.x, n_heads, hd, n_split,
                          skip_multi);
    }
}

/* NGX_GPU_ATTENTION_TC=0 turns the tensor-core kernel off (to compare) */
static int
att_tc_off(void)
{
    static int off = -1;

    if (off < 0) {
        const char *v = getenv("NGX_GPU_ATTENTION_TC");
        off = v != NULL && strcmp(v, "0") == 0;
    }
    return off;
}

int
kc_att_tiles(kc_dtype_t dt, int head_dim)
{
    return !att_tc_off() && att_tc_supported(dt, head_dim);
}

void
kc_attention(cudaStream_t s, kc_dtype_t dt, void *out, float *part,
    int n_split, int tiled, const float *qkv, const void *kv_layer,
    size_t block_stride, kc_step_t st, int n_tok, int n_heads,
    int n_kv_heads, int head_dim, int block_size)
{
    int group = n_heads / n_kv_heads;
    dim3 grid(n_tok, n_kv_heads * ((group + KC_ATT_MAXG - 1) / KC_ATT_MAXG),
              n_split);
    float scale = 1.0f / sqrtf((float) head_dim);
    static int early = -1;          /* NGX_GPU_ATT_EARLY=0: compare */
    int tc, skip;

    if (early < 0) {
        const char *v = getenv("NGX_GPU_ATT_EARLY");
        early = v == NULL || strcmp(v, "0") != 0;
    }
    tc = tiled == 1 && kc_att_tiles(dt, head_dim);
    skip = tc || tiled == 2;        /* prefill rows served elsewhere */

    /* prefill rows first, on tensor cores; the per-token kernel below
     * then leaves them alone.  A launch error shows in the caller's
     * cudaGetLastError(), as for every launcher here. */
    if (tc) {
        att_tc_launch(s, dt, out, qkv, kv_layer, block_stride, st, n_tok,
                      n_heads, n_kv_heads, head_dim, block_size);
    }

    /* the other rows: on tensor cores in steps of many rows */
    if (kc_att_dec_used(dt, head_dim, n_tok)) {
        att_dec_launch(s, dt, out, part, qkv, kv_layer, block_stride, st,
                       n_tok, n_heads, n_kv_heads, head_dim, block_size,
                       n_split, skip);
        if (n_split > 1) {
            KC_DISPATCH(dt, launch_combine<T>(s, (T *) out, part, st, n_tok,
                                              n_heads, head_dim, n_split,
                                              skip));
        }
        return;
    }

    /* shared memory sized for the smallest power of two >= head_dim */
#define ATT_LAUNCH(HDM, SUB)                                              \
    launch<T, HDM, SUB>(s, grid, (T *) out, part, qkv, (const T *) kv_layer, \
        block_stride, st, n_heads, n_kv_heads, head_dim, block_size, scale, \
        n_split, skip, early)
    KC_DISPATCH(dt,
        if (head_dim <= 16) ATT_LAUNCH(16, 32);
        else if (head_dim <= 32) ATT_LAUNCH(32, 32);
        else if (head_dim <= 64) ATT_LAUNCH(64, 32);
        else if (head_dim <= 128) ATT_LAUNCH(128, 32);
        else ATT_LAUNCH(256, 16));
#undef ATT_LAUNCH
}
