/*
 * attention_cudnn.cu - the prefill rows of a step through cuDNN's fused
 * attention (flash attention built from a graph of the backend API, plain
 * C calls, no cudnn_frontend), reading K/V straight from the engine's
 * paged cache.  Our kernels (attention_cuda.cu, attention_tc_cuda.cu)
 * stay the reference and the fallback: decode rows, f32, shapes with no
 * plan, and NGX_GPU_CUDNN_ATTENTION=0.
 *
 * The graph, per (items, longest chunk) bucket, built once at start:
 *
 *   K, V = PAGED_CACHE_LOAD(cache blocks, block table, seq_len_kv)
 *   S = Q K^T * scale       (M, N overridden by seq_len_q, seq_len_kv)
 *   S = -max where row >= seq_len_q or col >= seq_len_kv   (padding)
 *   S = -max where row + seq_len_kv - seq_len_q < col      (causal,
 *                                     aligned to the chunk's offset)
 *   P = softmax(S) (max, sub, exp, sum; log-sum-exp formed too: without
 *       it cuDNN 9.14's heuristics offer no engine), O = P V
 *
 * Q and O are ragged: item b's rows start at row q_off[b] of a [T][H*D]
 * array, so O lands in the engine's attention output in place and Q is
 * the qkv buffer's q rounded to the storage dtype by q_convert_kernel.
 * The cache's blocks are [block_size][n_kv * D] rows (K, then V), which
 * is the container [blocks, n_kv, block_size, D] with strides (block
 * stride, D, n_kv * D, 1).  Block tables: the engine's packed tables
 * with a ragged offset per item (cuDNN >= 9.10.2), or, if that graph
 * does not build, copied into a padded [items][max_pages] table.
 */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "cudnn_graph.h"
#include "kernels_cuda.h"

#define DNN_WS_BYTES   ((size_t) 16 << 20)  /* cuDNN's workspace, at most */
#define DNN_ALIGN      256
#define DNN_SLOTS      4

struct dnn_plan {
    int        B, Sq;           /* items, longest chunk (bucket) */
    bd_t       plan;            /* NULL: not built, our kernel serves */
    int64_t    ws;
    cg_descs  D;
};

struct kc_dnn_s {
    cudnnHandle_t      h;
    kc_dtype_t         dt;
    kc_dnn_shape_t     sh;
    int                packed;          /* tables: engine's, ragged */
    int                max_items, n_b, n_s;
    int                b_of[16], s_of[16];
    dnn_plan          *plans;           /* [n_b * n_s] */
    int                n_built;
    double             build_ms;
    char               why[512];        /* first reason a plan failed */

    /* scratch (carved by the caller) */
    char              *ws;
    void              *qb;              /* [max_tokens][H * D] */
    int32_t           *d_meta, *h_meta; /* seq_q, seq_kv, q_off, pt_off */
    int                slot;            /* h_meta: a ring of DNN_SLOTS, so
                                         * a step queued behind another
                                         * does not overwrite its inputs */
    int32_t           *ptab;            /* padded tables [items][pages] */

    /* the staged step */
    int                cur;             /* plan index, -1: none */
    const int32_t     *tables;
};

static size_t
al(size_t n)
{
    return (n + DNN_ALIGN - 1) & ~(size_t) (DNN_ALIGN - 1);
}

static int
dnn_max_items(const kc_dnn_shape_t *sh)
{
    int m = sh->max_tokens / 2;         /* a prefill item has 2+ rows */

    m = m < sh->max_items ? m : sh->max_items;
    return m < 1 ? 1 : m;
}

/* items bucket cap: the largest power of 4 bucket covering max_items */
static int
dnn_b_cap(const kc_dnn_shape_t *sh)
{
    int m = dnn_max_items(sh), b = 1;

    while (b < m) {
        b *= 4;
    }
    return b < m ? m : (b > m ? m : b);
}

static size_t
meta_ints(int B)
{
    return 4 * (size_t) B + 2;
}

size_t
kc_dnn_scratch_bytes(kc_dtype_t dt, const kc_dnn_shape_t *sh)
{
    int B = dnn_b_cap(sh);

    return al(DNN_WS_BYTES)
           + al((size_t) sh->max_tokens * sh->n_heads * sh->head_dim
                * kc_dtype_size(dt))
           + al(meta_ints(B) * 4)
           + al((size_t) B * sh->max_pages * 4);
}

/* --- graph ---------------------------------------------------------------- */

enum {
    U_Q = 1, U_K, U_V, U_O, U_SCALE, U_NEGMAX, U_SQ, U_SKV, U_PTK, U_PTV,
    U_QOFF, U_OOFF, U_PTKOFF, U_PTVOFF, U_VIRT = 100
};

/* y = the pages of container that table lists, seq_kv long each */
static bd_t
paged_load(cg_descs &D, bd_t container, bd_t table, bd_t seq_kv, bd_t y)
{
    bd_t op = D.make(CUDNN_BACKEND_OPERATION_PAGED_CACHE_LOAD_DESCRIPTOR);

    if (op == NULL || container == NULL || table == NULL || y == NULL) {
        return NULL;
    }
    CG_SET(D, op, CUDNN_ATTR_OPERATION_PAGED_CACHE_LOAD_CONTAINER_DESC,
           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &container);
    CG_SET(D, op, CUDNN_ATTR_OPERATION_PAGED_CACHE_LOAD_PAGE_TABLE_DESC,
           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &table);
    CG_SET(D, op, CUDNN_ATTR_OPERATION_PAGED_CACHE_LOAD_SEQUENCE_DESC,
           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &seq_kv);
    CG_SET(D, op, CUDNN_ATTR_OPERATION_PAGED_CACHE_LOAD_YDESC,
           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    CG_TRY(D, cudnnBackendFinalize(op));
    return op;
}

/* build P's graph and its plan: the heuristics' first configuration that
 * finalizes with a workspace that fits */
static int
build_plan(kc_dnn_s *d, dnn_plan *P)
{
    cg_descs &D = P->D;

    D.why = d->why;
    D.why_len = sizeof(d->why);
    const kc_dnn_shape_t *sh = &d->sh;
    cudnnDataType_t st = d->dt == KC_BF16 ? CUDNN_DATA_BFLOAT16
                                          : CUDNN_DATA_HALF;
    cudnnDataType_t f = CUDNN_DATA_FLOAT, i32 = CUDNN_DATA_INT32;
    cudnnDataType_t bo = CUDNN_DATA_BOOLEAN;
    int64_t B = P->B, Sq = P->Sq, H = sh->n_heads, Hk = sh->n_kv_heads;
    int64_t Dh = sh->head_dim, bs = sh->block_size;
    int64_t Pg = sh->max_pages, Skv = Pg * bs, NB = sh->n_blocks;
    int64_t q_dim[4] = { B, H, Sq, Dh };
    int64_t q_str[4] = { Sq * H * Dh, Dh, H * Dh, 1 };
    int64_t c_dim[4] = { NB, Hk, bs, Dh };
    int64_t c_str[4] = { (int64_t) sh->block_stride, Dh, Hk * Dh, 1 };
    int64_t kt_dim[4] = { B, Hk, Dh, Skv };
    int64_t kt_str[4] = { Dh * Skv * Hk, Dh * Skv, 1, Dh };
    int64_t v_dim[4] = { B, Hk, Skv, Dh };
    int64_t v_str[4] = { Dh * Skv * Hk, Dh * Skv, Dh, 1 };
    int64_t s_dim[4] = { B, H, Sq, Skv };
    int64_t s_str[4] = { H * Sq * Skv, Sq * Skv, Skv, 1 };
    int64_t r_dim[4] = { B, H, Sq, 1 };
    int64_t r_str[4] = { H * Sq, Sq, 1, 1 };
    int64_t b_dim[4] = { B, 1, 1, 1 }, b_str[4] = { 1, 1, 1, 1 };
    int64_t o_dim[4] = { B + 1, 1, 1, 1 };
    int64_t pt_dim[4] = { B, 1, Pg, 1 }, pt_str[4] = { Pg, Pg, 1, 1 };
    int64_t one[4] = { 1, 1, 1, 1 };
    int64_t uid = U_VIRT;
    std::vector<bd_t> ops;
    bd_t q, kc, vc, o, scale, negmax, sq, skv, ptk, ptv, kt, v;
    bd_t qoff, ooff, ptkoff = NULL, ptvoff = NULL;
    bd_t s, ss, row, col, rm, cm, pm, s2, r2, r3, r4, c2, cmask, s3;
    bd_t mx, sub, ex, sum, lg, sta, p;

    qoff = cg_tensor(D, U_QOFF, i32, o_dim, b_str, false, false, NULL);
    ooff = cg_tensor(D, U_OOFF, i32, o_dim, b_str, false, false, NULL);
    if (d->packed) {
        ptkoff = cg_tensor(D, U_PTKOFF, i32, o_dim, b_str, false, false,
                           NULL);
        ptvoff = cg_tensor(D, U_PTVOFF, i32, o_dim, b_str, false, false,
                           NULL);
        if (ptkoff == NULL || ptvoff == NULL) {
            return -1;
        }
    }
    if (qoff == NULL || ooff == NULL) {
        return -1;
    }
    q = cg_tensor(D, U_Q, st, q_dim, q_str, false, false, qoff);
    o = cg_tensor(D, U_O, st, q_dim, q_str, false, false, ooff);
    kc = cg_tensor(D, U_K, st, c_dim, c_str, false, false, NULL);
    vc = cg_tensor(D, U_V, st, c_dim, c_str, false, false, NULL);
    scale = cg_tensor(D, U_SCALE, f, one, one, false, true, NULL);
    negmax = cg_tensor(D, U_NEGMAX, f, one, one, false, true, NULL);
    sq = cg_tensor(D, U_SQ, i32, b_dim, b_str, false, false, NULL);
    skv = cg_tensor(D, U_SKV, i32, b_dim, b_str, false, false, NULL);
    ptk = cg_tensor(D, U_PTK, i32, pt_dim, pt_str, false, false, ptkoff);
    ptv = cg_tensor(D, U_PTV, i32, pt_dim, pt_str, false, false, ptvoff);
    kt = cg_tensor(D, uid++, st, kt_dim, kt_str, true, false, NULL);
    v = cg_tensor(D, uid++, st, v_dim, v_str, true, false, NULL);
    s = cg_tensor(D, uid++, f, s_dim, s_str, true, false, NULL);
    ss = cg_tensor(D, uid++, f, s_dim, s_str, true, false, NULL);

    ops.push_back(paged_load(D, kc, ptk, skv, kt));
    ops.push_back(paged_load(D, vc, ptv, skv, v));
    ops.push_back(cg_matmul(D, q, kt, s, sq, skv, NULL));
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_MUL, f, s, scale, NULL, ss,
                               -1));

    /* padding: rows past the item's chunk, columns past its context */
    row = cg_tensor(D, uid++, i32, s_dim, s_str, true, false, NULL);
    col = cg_tensor(D, uid++, i32, s_dim, s_str, true, false, NULL);
    rm = cg_tensor(D, uid++, bo, s_dim, s_str, true, false, NULL);
    cm = cg_tensor(D, uid++, bo, s_dim, s_str, true, false, NULL);
    pm = cg_tensor(D, uid++, bo, s_dim, s_str, true, false, NULL);
    s2 = cg_tensor(D, uid++, f, s_dim, s_str, true, false, NULL);
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_GEN_INDEX, i32, ss, NULL,
                               NULL, row, 2));
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_GEN_INDEX, i32, ss, NULL,
                               NULL, col, 3));
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_CMP_LT, bo, row, sq, NULL,
                               rm, -1));
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_CMP_LT, bo, col, skv, NULL,
                               cm, -1));
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_LOGICAL_AND, bo, rm, cm,
                               NULL, pm, -1));
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_BINARY_SELECT, f, ss,
                               negmax, pm, s2, -1));

    /* causal, bottom-right: row r of a chunk is position r + kv - q */
    r2 = cg_tensor(D, uid++, i32, s_dim, s_str, true, false, NULL);
    r3 = cg_tensor(D, uid++, i32, s_dim, s_str, true, false, NULL);
    r4 = cg_tensor(D, uid++, i32, s_dim, s_str, true, false, NULL);
    c2 = cg_tensor(D, uid++, i32, s_dim, s_str, true, false, NULL);
    cmask = cg_tensor(D, uid++, bo, s_dim, s_str, true, false, NULL);
    s3 = cg_tensor(D, uid++, f, s_dim, s_str, true, false, NULL);
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_GEN_INDEX, i32, s2, NULL,
                               NULL, r2, 2));
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_ADD, i32, r2, skv, NULL,
                               r3, -1));
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_SUB, i32, r3, sq, NULL, r4,
                               -1));
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_GEN_INDEX, i32, s2, NULL,
                               NULL, c2, 3));
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_CMP_GE, bo, r4, c2, NULL,
                               cmask, -1));
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_BINARY_SELECT, f, s2,
                               negmax, cmask, s3, -1));

    mx = cg_tensor(D, uid++, f, r_dim, r_str, true, false, NULL);
    sub = cg_tensor(D, uid++, f, s_dim, s_str, true, false, NULL);
    ex = cg_tensor(D, uid++, f, s_dim, s_str, true, false, NULL);
    sum = cg_tensor(D, uid++, f, r_dim, r_str, true, false, NULL);
    lg = cg_tensor(D, uid++, f, r_dim, r_str, true, false, NULL);
    sta = cg_tensor(D, uid++, f, r_dim, r_str, true, false, NULL);
    p = cg_tensor(D, uid++, st, s_dim, s_str, true, false, NULL);
    ops.push_back(cg_reduction(D, CUDNN_REDUCE_TENSOR_MAX, s3, mx));
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_SUB, f, s3, mx, NULL, sub,
                               -1));
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_EXP, f, sub, NULL, NULL, ex,
                               -1));
    ops.push_back(cg_reduction(D, CUDNN_REDUCE_TENSOR_ADD, ex, sum));
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_LOG, f, sum, NULL, NULL, lg,
                               -1));
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_ADD, f, mx, lg, NULL, sta,
                               -1));
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_DIV, f, ex, sum, NULL, p,
                               -1));
    ops.push_back(cg_matmul(D, p, v, o, sq, NULL, skv));
    {
        std::vector<bd_t> plans;
        std::vector<int64_t> ws;

        /* the heuristics' first configuration that fits the workspace */
        if (cg_plans(D, d->h, ops, (int64_t) DNN_WS_BYTES, plans, ws) == 0) {
            return -1;
        }
        P->plan = plans[0];
        P->ws = ws[0];
    }
    return 0;
}

/* --- create --------------------------------------------------------------- */

kc_dnn_t *
kc_dnn_create(cudaStream_t s, kc_dtype_t dt, const kc_dnn_shape_t *sh,
    void *scratch, int tables_mode, char *err, size_t errlen)
{
    kc_dnn_s *d;
    char *p = (char *) scratch;
    int B, S, b, i;
    struct timespec t0, t1;

    err[0] = '\0';
    if (dt == KC_F32) {
        snprintf(err, errlen, "cuDNN attention takes bf16/f16, not f32");
        return NULL;
    }
    if (sh->head_dim % 8 != 0 || sh->head_dim > 128) {
        snprintf(err, errlen, "head_dim %d: cuDNN's paged attention takes "
                 "multiples of 8 up to 128", sh->head_dim);
        return NULL;
    }
    if (cudnnGetVersion() < 91002) {
        snprintf(err, errlen, "cuDNN %zu: paged attention here needs 9.10.2 "
                 "or later", cudnnGetVersion());
        return NULL;
    }
    d = new kc_dnn_s();
    d->dt = dt;
    d->sh = *sh;
    d->cur = -1;
    d->max_items = dnn_b_cap(sh);
    if (cudnnCreate(&d->h) != CUDNN_STATUS_SUCCESS) {
        snprintf(err, errlen, "cudnnCreate failed");
        delete d;
        return NULL;
    }
    cudnnSetStream(d->h, s);
    B = d->max_items;
    d->ws = p;
    p += al(DNN_WS_BYTES);
    d->qb = p;
    p += al((size_t) sh->max_tokens * sh->n_heads * sh->head_dim
            * kc_dtype_size(dt));
    d->d_meta = (int32_t *) p;
    p += al(meta_ints(B) * 4);
    d->ptab = (int32_t *) p;
    if (cudaHostAlloc((void **) &d->h_meta, DNN_SLOTS * meta_ints(B) * 4,
                      cudaHostAllocDefault) != cudaSuccess)
    {
        snprintf(err, errlen, "pinned memory for cuDNN's step inputs");
        kc_dnn_destroy(d);
        return NULL;
    }

    /* buckets: items 1, 4, 16, ... up to the cap; longest chunk 64, 128,
     * ... up to max_tokens */
    for (b = 1; d->n_b < 15; b *= 4) {
        d->b_of[d->n_b++] = b < B ? b : B;
        if (b >= B) {
            break;
        }
    }
    for (S = 64; d->n_s < 15; S *= 2) {
        d->s_of[d->n_s++] = S < sh->max_tokens ? S : sh->max_tokens;
        if (S >= sh->max_tokens) {
            break;
        }
    }
    d->plans = new dnn_plan[d->n_b * d->n_s]();

    clock_gettime(CLOCK_MONOTONIC, &t0);
    /* tables_mode: 1 packed only, 2 padded only, 0 packed else padded */
    for (int mode = tables_mode == 2 ? 0 : 1; mode >= 0; mode--) {
        if (tables_mode == 1 && mode == 0) {
            break;
        }
        d->packed = mode;
        d->n_built = 0;
        for (b = 0; b < d->n_b; b++) {
            for (i = 0; i < d->n_s; i++) {
                dnn_plan *P = &d->plans[b * d->n_s + i];

                P->B = d->b_of[b];
                P->Sq = d->s_of[i];
                /* unreachable: more items than the bucket below, of 2+
                 * rows each, one of more rows than the chunk bucket
                 * below, do not fit in a step */
                if (b > 0 && i > 0
                    && d->b_of[b - 1] * 2 + d->s_of[i - 1] + 1
                       > sh->max_tokens)
                {
                    continue;
                }
                if (build_plan(d, P) == 0) {
                    d->n_built++;
                } else {
                    P->D.clear();
                    P->plan = NULL;
                }
            }
        }
        if (d->n_built > 0) {
            break;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    d->build_ms = (t1.tv_sec - t0.tv_sec) * 1e3
                  + (t1.tv_nsec - t0.tv_nsec) * 1e-6;
    if (d->n_built == 0) {
        snprintf(err, errlen, "cuDNN %zu built no attention plan: %s",
                 cudnnGetVersion(), d->why);
        kc_dnn_destroy(d);
        return NULL;
    }
    return d;
}

void
kc_dnn_destroy(kc_dnn_t *d)
{
    if (d == NULL) {
        return;
    }
    if (d->plans != NULL) {
        for (int i = 0; i < d->n_b * d->n_s; i++) {
            d->plans[i].D.clear();
        }
        delete[] d->plans;
    }
    if (d->h_meta != NULL) {
        cudaFreeHost(d->h_meta);
    }
    if (d->h != NULL) {
        cudnnDestroy(d->h);
    }
    delete d;
}

void
kc_dnn_info(const kc_dnn_t *d, kc_dnn_info_t *in)
{
    in->plans = d->n_built;
    in->version = cudnnGetVersion();
    in->buckets = d->n_b * d->n_s;
    in->build_ms = d->build_ms;
    in->packed_tables = d->packed;
    in->max_items = d->max_items;
    in->max_chunk = d->s_of[d->n_s - 1];
    in->why = d->why;
}

/* --- a step --------------------------------------------------------------- */

/* table b of the step, padded to max_pages entries */
__global__ void
table_copy_kernel(int32_t *pt, const int32_t *tables, const int32_t *meta,
    int B, int pages, int bs)
{
    const int32_t *seq_kv = meta + B, *pt_off = meta + 3 * B + 1;
    int b = blockIdx.x, n = (seq_kv[b] + bs - 1) / bs;

    for (int i = threadIdx.x; i < pages; i += blockDim.x) {
        pt[(size_t) b * pages + i] = i < n ? tables[pt_off[b] + i] : 0;
    }
}

int
kc_dnn_stage(kc_dnn_t *d, cudaStream_t s, int n, const int *q_row,
    const int *q_len, const int *kv_len, const int *table_off,
    const int32_t *tables)
{
    int b, i, B, max_q = 0, pi;
    int32_t *m;

    d->cur = -1;
    if (n < 1 || n > d->max_items) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        max_q = q_len[i] > max_q ? q_len[i] : max_q;
    }
    for (b = 0; b < d->n_b && d->b_of[b] < n; b++) {
    }
    for (i = 0; i < d->n_s && d->s_of[i] < max_q; i++) {
    }
    if (b == d->n_b || i == d->n_s) {
        return 0;
    }
    pi = b * d->n_s + i;
    if (d->plans[pi].plan == NULL) {
        return 0;
    }
    B = d->plans[pi].B;
    d->slot = (d->slot + 1) % DNN_SLOTS;
    m = d->h_meta + (size_t) d->slot * meta_ints(d->max_items);
    /* seq_q [B], seq_kv [B], q_off [B + 1], pt_off [B + 1]; padding
     * items: no rows, one position (so no row of theirs is empty) */
    for (i = 0; i < B; i++) {
        int in = i < n;
        m[i] = in ? q_len[i] : 0;
        m[B + i] = in ? kv_len[i] : 1;
        m[2 * B + i] = (in ? q_row[i] : q_row[n - 1] + q_len[n - 1])
                       * d->sh.n_heads * d->sh.head_dim;
        m[3 * B + 1 + i] = in ? table_off[i] : table_off[0];
    }
    m[3 * B] = (q_row[n - 1] + q_len[n - 1]) * d->sh.n_heads
               * d->sh.head_dim;
    m[4 * B + 1] = m[3 * B + B];
    if (cudaMemcpyAsync(d->d_meta, m, meta_ints(B) * 4,
                        cudaMemcpyHostToDevice, s) != cudaSuccess)
    {
        return -1;
    }
    if (!d->packed) {
        table_copy_kernel<<<B, 256, 0, s>>>(d->ptab, tables, d->d_meta, B,
                                            d->sh.max_pages,
                                            d->sh.block_size);
    }
    d->tables = tables;
    d->cur = pi;
    return 1;
}

/* q (f32, in the qkv rows) to the storage dtype, [T][H * D] */
template <typename T>
__global__ void
q_convert_kernel(T *qb, const float *qkv, int T_, int q_dim, int qkv_dim)
{
    int n4 = q_dim / 4;
    size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x;

    if (i < (size_t) T_ * n4) {
        size_t t = i / n4, c = i % n4;
        float4 v = *(const float4 *) (qkv + t * qkv_dim + c * 4);
        T *o = qb + t * q_dim + c * 4;
        o[0] = (T) v.x; o[1] = (T) v.y; o[2] = (T) v.z; o[3] = (T) v.w;
    }
}

int
kc_dnn_attention(kc_dnn_t *d, cudaStream_t s, void *out, const float *qkv,
    const void *kv_layer, int T)
{
    const kc_dnn_shape_t *sh = &d->sh;
    dnn_plan *P;
    int q_dim = sh->n_heads * sh->head_dim;
    int qkv_dim = q_dim + 2 * sh->n_kv_heads * sh->head_dim;
    size_t n = (size_t) T * (q_dim / 4), es = kc_dtype_size(d->dt);
    float scale = 1.0f / sqrtf((float) sh->head_dim);
    float negmax = -3.4028234663852886e38f;
    int B, n_ptr;
    int32_t *meta = d->d_meta;
    void *v_layer = (char *) kv_layer
                    + (size_t) sh->block_size * sh->n_kv_heads
                      * sh->head_dim * es;
    void *pt = d->packed ? (void *) d->tables : (void *) d->ptab;
    bd_t vp = NULL;
    cudnnStatus_t r;

    if (d->cur < 0) {
        return -1;
    }
    P = &d->plans[d->cur];
    B = P->B;
    if (d->dt == KC_BF16) {
        q_convert_kernel<__nv_bfloat16><<<(unsigned) ((n + 255) / 256), 256,
            0, s>>>((__nv_bfloat16 *) d->qb, qkv, T, q_dim, qkv_dim);
    } else {
        q_convert_kernel<__half><<<(unsigned) ((n + 255) / 256), 256, 0,
            s>>>((__half *) d->qb, qkv, T, q_dim, qkv_dim);
    }
    {
        int64_t uids[14] = { U_Q, U_K, U_V, U_O, U_SCALE, U_NEGMAX, U_SQ,
                             U_SKV, U_PTK, U_PTV, U_QOFF, U_OOFF, U_PTKOFF,
                             U_PTVOFF };
        void *ptrs[14] = { d->qb, (void *) kv_layer, v_layer, out, &scale,
                           &negmax, meta, meta + B, pt, pt, meta + 2 * B,
                           meta + 2 * B, meta + 3 * B + 1,
                           meta + 3 * B + 1 };
        void *ws = d->ws;

        n_ptr = d->packed ? 14 : 12;
        r = cudnnBackendCreateDescriptor(
                CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp);
        if (r == CUDNN_STATUS_SUCCESS) {
            r = cudnnBackendSetAttribute(vp,
                    CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64,
                    n_ptr, uids);
        }
        if (r == CUDNN_STATUS_SUCCESS) {
            r = cudnnBackendSetAttribute(vp,
                    CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
                    CUDNN_TYPE_VOID_PTR, n_ptr, ptrs);
        }
        if (r == CUDNN_STATUS_SUCCESS) {
            r = cudnnBackendSetAttribute(vp,
                    CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR,
                    1, &ws);
        }
        if (r == CUDNN_STATUS_SUCCESS) {
            r = cudnnBackendFinalize(vp);
        }
        if (r == CUDNN_STATUS_SUCCESS) {
            r = cudnnBackendExecute(d->h, P->plan, vp);
        }
        if (vp != NULL) {
            cudnnBackendDestroyDescriptor(vp);
        }
    }
    if (r != CUDNN_STATUS_SUCCESS) {
        cudnnGetLastErrorString(d->why, sizeof(d->why));
        return -1;
    }
    return 0;
}

const char *
kc_dnn_error(const kc_dnn_t *d)
{
    return d->why;
}
