/*
 * bench_attention.cu - our attention kernels (kc_attention: the tensor-core
 * prefill and decode kernels and the per-token kernel) against cuDNN's fused attention,
 * built here through cuDNN's backend graph API in plain C calls (no
 * cudnn_frontend): Q K^T -> scale -> causal mask -> softmax -> P V, the
 * pattern cuDNN's runtime fusion engines serve as one flash-attention
 * kernel.
 *
 *   bench_attention [iterations]
 *
 * Prefill: one prompt of 512 and 2048 tokens, causal.  Decode: batch 1,
 * 32, 128, 256 at contexts 100 and 1000, one query token each, through
 * the per-token kernel and the decode kernel on tensor cores (each with
 * its own split rule; dec/pt: the relative difference of their outputs).
 * Shapes of Llama-3.2-1B (32 heads on 8 KV heads) and Qwen2.5-0.5B (14
 * on 2), head_dim 64, bf16.  Ours reads K/V through block tables from a paged
 * cache (block 16); cuDNN reads them from contiguous [seq][kv head][dim]
 * arrays with the same values (its paged form, a PAGED_CACHE_LOAD op,
 * was not built here).  Each cuDNN graph is tried with every engine
 * configuration heuristics mode A offers; the fastest counts.  The
 * outputs are compared, so a graph that computes something else shows.
 */

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "cudnn_graph.h"
#include "kernels_cuda.h"

#define CK(x) do {                                                        \
    cudaError_t r_ = (x);                                                 \
    if (r_ != cudaSuccess) {                                              \
        fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__,                \
                cudaGetErrorString(r_));                                  \
        exit(1);                                                          \
    }                                                                     \
} while (0)

static int iters = 20;
static int n_sm;

/* --- cuDNN backend graph ------------------------------------------------- */

static char dnn_err[1024];

enum { U_Q = 1, U_K, U_V, U_O, U_SCALE, U_NEGINF, U_VIRT = 100 };

/* one finalized plan per engine configuration that accepts the graph */
struct sdpa_plans {
    cg_descs D;
    std::vector<bd_t> plans;
    std::vector<int64_t> ws;
    int causal;
};

/*
 * O[b, h, s, :] = softmax(Q K^T * scale (+ causal mask)) V, Q and O
 * [B][Sq][Hq][D], K and V [B][Skv][Hk][D], bf16; softmax in f32.
 * stats: also form log-sum-exp (max + log(sum)), as the frontend of
 * cuDNN 9 before 9.21 does for flash attention even in inference.
 */
static int
build_sdpa(cudnnHandle_t h, sdpa_plans &P, int B, int Hq, int Hk, int Sq,
    int Skv, int Dh, int causal, int stats)
{
    cg_descs &D = P.D;
    cudnnDataType_t bf = CUDNN_DATA_BFLOAT16, f = CUDNN_DATA_FLOAT;
    cudnnDataType_t bo = CUDNN_DATA_BOOLEAN;
    int64_t q_dim[4] = { B, Hq, Sq, Dh };
    int64_t q_str[4] = { (int64_t) Sq * Hq * Dh, Dh, (int64_t) Hq * Dh, 1 };
    int64_t kt_dim[4] = { B, Hk, Dh, Skv };
    int64_t kt_str[4] = { (int64_t) Skv * Hk * Dh, Dh, 1, (int64_t) Hk * Dh };
    int64_t v_dim[4] = { B, Hk, Skv, Dh };
    int64_t v_str[4] = { (int64_t) Skv * Hk * Dh, Dh, (int64_t) Hk * Dh, 1 };
    int64_t s_dim[4] = { B, Hq, Sq, Skv };
    int64_t s_str[4] = { (int64_t) Hq * Sq * Skv, (int64_t) Sq * Skv, Skv, 1 };
    int64_t r_dim[4] = { B, Hq, Sq, 1 };
    int64_t r_str[4] = { (int64_t) Hq * Sq, Sq, 1, 1 };
    int64_t one[4] = { 1, 1, 1, 1 };
    int64_t uid = U_VIRT;
    std::vector<bd_t> ops;
    bd_t q, kt, v, o, scale, s, ss, last, mx, sub, ex, sum, p;

    P.causal = causal;
    D.why = dnn_err;
    D.why_len = sizeof(dnn_err);
    q = cg_tensor(D, U_Q, bf, q_dim, q_str, false, false, NULL);
    kt = cg_tensor(D, U_K, bf, kt_dim, kt_str, false, false, NULL);
    v = cg_tensor(D, U_V, bf, v_dim, v_str, false, false, NULL);
    o = cg_tensor(D, U_O, bf, q_dim, q_str, false, false, NULL);
    scale = cg_tensor(D, U_SCALE, f, one, one, false, true, NULL);
    s = cg_tensor(D, uid++, f, s_dim, s_str, true, false, NULL);
    ss = cg_tensor(D, uid++, f, s_dim, s_str, true, false, NULL);
    ops.push_back(cg_matmul(D, q, kt, s, NULL, NULL, NULL));
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_MUL, f, s, scale, NULL, ss,
                               -1));
    last = ss;
    if (causal) {
        bd_t row = cg_tensor(D, uid++, f, s_dim, s_str, true, false, NULL);
        bd_t col = cg_tensor(D, uid++, f, s_dim, s_str, true, false, NULL);
        bd_t ge = cg_tensor(D, uid++, bo, s_dim, s_str, true, false, NULL);
        bd_t ninf = cg_tensor(D, U_NEGINF, f, one, one, false, true, NULL);
        bd_t masked = cg_tensor(D, uid++, f, s_dim, s_str, true, false, NULL);

        ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_GEN_INDEX, f, last, NULL,
                                   NULL, row, 2));
        ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_GEN_INDEX, f, last, NULL,
                                   NULL, col, 3));
        ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_CMP_GE, bo, row, col,
                                   NULL, ge, -1));
        ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_BINARY_SELECT, f, last,
                                   ninf, ge, masked, -1));
        last = masked;
    }
    mx = cg_tensor(D, uid++, f, r_dim, r_str, true, false, NULL);
    sub = cg_tensor(D, uid++, f, s_dim, s_str, true, false, NULL);
    ex = cg_tensor(D, uid++, f, s_dim, s_str, true, false, NULL);
    sum = cg_tensor(D, uid++, f, r_dim, r_str, true, false, NULL);
    p = cg_tensor(D, uid++, bf, s_dim, s_str, true, false, NULL);
    ops.push_back(cg_reduction(D, CUDNN_REDUCE_TENSOR_MAX, last, mx));
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_SUB, f, last, mx, NULL, sub,
                               -1));
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_EXP, f, sub, NULL, NULL, ex,
                               -1));
    ops.push_back(cg_reduction(D, CUDNN_REDUCE_TENSOR_ADD, ex, sum));
    if (stats) {
        bd_t lg = cg_tensor(D, uid++, f, r_dim, r_str, true, false, NULL);
        bd_t st = cg_tensor(D, uid++, f, r_dim, r_str, true, false, NULL);
        ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_LOG, f, sum, NULL, NULL,
                                   lg, -1));
        ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_ADD, f, mx, lg, NULL, st,
                                   -1));
    }
    ops.push_back(cg_pointwise(D, CUDNN_POINTWISE_DIV, f, ex, sum, NULL, p,
                               -1));
    ops.push_back(cg_matmul(D, p, v, o, NULL, NULL, NULL));

    /* every configuration the heuristics offer, to be timed */
    return cg_plans(D, h, ops, INT64_MAX, P.plans, P.ws) > 0 ? 0 : -1;
}

static cudnnStatus_t
run_plan(cudnnHandle_t h, sdpa_plans &P, size_t k, void *q, void *k_,
    void *v, void *o, float *scale, float *ninf, void *ws)
{
    int64_t uids[6] = { U_Q, U_K, U_V, U_O, U_SCALE, U_NEGINF };
    void *ptrs[6] = { q, k_, v, o, scale, ninf };
    bd_t vp = NULL;
    cudnnStatus_t r;

    r = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR,
                                     &vp);
    if (r == CUDNN_STATUS_SUCCESS) {
        int n = P.causal ? 6 : 5;
        r = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS,
                                     CUDNN_TYPE_INT64, n, uids);
        if (r == CUDNN_STATUS_SUCCESS) {
            r = cudnnBackendSetAttribute(vp,
                    CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
                    n, ptrs);
        }
        if (r == CUDNN_STATUS_SUCCESS) {
            r = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
                                         CUDNN_TYPE_VOID_PTR, 1, &ws);
        }
        if (r == CUDNN_STATUS_SUCCESS) {
            r = cudnnBackendFinalize(vp);
        }
        if (r == CUDNN_STATUS_SUCCESS) {
            r = cudnnBackendExecute(h, P.plans[k], vp);
        }
        cudnnBackendDestroyDescriptor(vp);
    }
    return r;
}

/* --- data ----------------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float
frand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float) (rng >> 40) / 8388608.0f - 1.0f;
}

static float
bf_round(float x)
{
    return __bfloat162float(__float2bfloat16(x));
}

/*
 * n_seq sequences of ctx positions each, the last n_q of each being the
 * step's query tokens.  Ours: qkv f32 rows and a paged bf16 cache with
 * shuffled blocks; cuDNN: bf16 Q and contiguous K/V of the same values.
 */
struct problem {
    int n_seq, ctx, n_q, Hq, Hk, Dh, bs, T, n_blocks;
    size_t block_stride;
    kc_step_t st;
    void *d_tok, *d_items, *d_tables;
    float *d_qkv;
    __nv_bfloat16 *d_cache, *d_q, *d_k, *d_v, *d_o, *d_out_tc, *d_out_pt;
    float *d_part;
};

static void
make_problem(problem &P, int n_seq, int ctx, int n_q, int Hq, int Hk, int Dh)
{
    int bs = 16, nb_seq = (ctx + bs - 1) / bs, q_dim = Hq * Dh;
    int kv_dim = Hk * Dh, qkv_dim = q_dim + 2 * kv_dim, i, s, p;
    std::vector<kc_token_t> tok;
    std::vector<int32_t> items(n_seq), tables((size_t) n_seq * nb_seq),
        perm((size_t) n_seq * nb_seq);
    std::vector<float> qkv;
    std::vector<__nv_bfloat16> cache, q, k, v;

    P.n_seq = n_seq; P.ctx = ctx; P.n_q = n_q; P.Hq = Hq; P.Hk = Hk;
    P.Dh = Dh; P.bs = bs; P.T = n_seq * n_q;
    P.n_blocks = n_seq * nb_seq;
    P.block_stride = (size_t) 2 * bs * kv_dim;
    for (i = 0; i < P.n_blocks; i++) {
        perm[i] = i;
    }
    for (i = P.n_blocks - 1; i > 0; i--) {
        int j = (int) ((rng = rng * 6364136223846793005ull + 1) >> 33)
                % (i + 1);
        int x = perm[i]; perm[i] = perm[j]; perm[j] = x;
    }
    for (s = 0; s < n_seq; s++) {
        items[s] = s * nb_seq;
        for (i = 0; i < nb_seq; i++) {
            tables[(size_t) s * nb_seq + i] = perm[(size_t) s * nb_seq + i];
        }
        for (i = 0; i < n_q; i++) {
            tok.push_back(kc_token_t { 0, ctx - n_q + i, s });
        }
    }
    cache.assign((size_t) P.n_blocks * P.block_stride, __float2bfloat16(0.f));
    k.resize((size_t) n_seq * ctx * kv_dim);
    v.resize(k.size());
    for (s = 0; s < n_seq; s++) {
        for (p = 0; p < ctx; p++) {
            size_t row = (size_t) tables[(size_t) s * nb_seq + p / bs]
                         * P.block_stride + (size_t) (p % bs) * kv_dim;
            for (i = 0; i < kv_dim; i++) {
                __nv_bfloat16 a = __float2bfloat16(frand() * 1.7f);
                __nv_bfloat16 b = __float2bfloat16(frand() * 1.7f);
                cache[row + i] = a;
                cache[row + (size_t) bs * kv_dim + i] = b;
                k[((size_t) s * ctx + p) * kv_dim + i] = a;
                v[((size_t) s * ctx + p) * kv_dim + i] = b;
            }
        }
    }
    qkv.resize((size_t) P.T * qkv_dim);
    q.resize((size_t) P.T * q_dim);
    for (int t = 0; t < P.T; t++) {
        for (i = 0; i < q_dim; i++) {
            /* q already bf16-exact, so both sides see the same query */
            float x = bf_round(frand() * 1.7f);
            qkv[(size_t) t * qkv_dim + i] = x;
            q[(size_t) t * q_dim + i] = __float2bfloat16(x);
        }
    }
#define UP(dst, vec) do {                                                 \
    CK(cudaMalloc((void **) &dst, vec.size() * sizeof(vec[0])));          \
    CK(cudaMemcpy(dst, vec.data(), vec.size() * sizeof(vec[0]),           \
                  cudaMemcpyHostToDevice));                               \
} while (0)
    UP(P.d_tok, tok);
    UP(P.d_items, items);
    UP(P.d_tables, tables);
    UP(P.d_qkv, qkv);
    UP(P.d_cache, cache);
    UP(P.d_q, q);
    UP(P.d_k, k);
    UP(P.d_v, v);
#undef UP
    CK(cudaMalloc((void **) &P.d_o, q.size() * 2));
    CK(cudaMalloc((void **) &P.d_out_tc, q.size() * 2));
    CK(cudaMalloc((void **) &P.d_out_pt, q.size() * 2));
    CK(cudaMalloc((void **) &P.d_part,
                  kc_attention_part_floats(P.T, Hq, Dh, KC_ATT_MAX_SPLIT) * 4));
    memset(&P.st, 0, sizeof(P.st));
    P.st.tokens = (const kc_token_t *) P.d_tok;
    P.st.item_table = (const int32_t *) P.d_items;
    P.st.tables = (const int32_t *) P.d_tables;
}

static void
free_problem(problem &P)
{
    cudaFree(P.d_tok); cudaFree(P.d_items); cudaFree(P.d_tables);
    cudaFree(P.d_qkv); cudaFree(P.d_cache); cudaFree(P.d_q); cudaFree(P.d_k);
    cudaFree(P.d_v); cudaFree(P.d_o); cudaFree(P.d_out_tc);
    cudaFree(P.d_out_pt); cudaFree(P.d_part);
}

/* the engine's rule (engine_cuda.cu att_splits): two blocks an SM */
static int
splits(int T, int Hq, int Hk)
{
    int group = Hq / Hk;
    long blocks = (long) T * Hk * ((group + KC_ATT_MAXG - 1) / KC_ATT_MAXG);
    long n = (2L * n_sm + blocks - 1) / blocks;
    return (int) (n < 1 ? 1 : n > KC_ATT_MAX_SPLIT ? KC_ATT_MAX_SPLIT : n);
}

static void
ours(problem &P, int tiled, int n_split, void *out)
{
    kc_attention(0, KC_BF16, out, P.d_part, n_split, tiled, P.d_qkv,
                 P.d_cache, P.block_stride, P.st, P.T, P.Hq, P.Hk, P.Dh,
                 P.bs);
}

/* microseconds a call, mean over iters after two warm-up calls */
template <typename F>
static double
time_us(F f)
{
    cudaEvent_t a, b;
    float ms = 0;

    f(); f();
    CK(cudaDeviceSynchronize());
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    cudaEventRecord(a);
    for (int i = 0; i < iters; i++) {
        f();
    }
    cudaEventRecord(b);
    CK(cudaEventSynchronize(b));
    CK(cudaGetLastError());
    cudaEventElapsedTime(&ms, a, b);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return ms * 1000.0 / iters;
}

static double
rel_diff(const __nv_bfloat16 *da, const __nv_bfloat16 *db, size_t n)
{
    std::vector<__nv_bfloat16> a(n), b(n);
    double num = 0, den = 0;

    CK(cudaMemcpy(a.data(), da, n * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(b.data(), db, n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) {
        double x = __bfloat162float(a[i]), y = __bfloat162float(b[i]);
        if (isnan(x) || isnan(y)) {
            return INFINITY;
        }
        num += (x - y) * (x - y);
        den += y * y;
    }
    return sqrt(num / (den > 0 ? den : 1));
}

/* cuDNN on P: the fastest plan's microseconds, -1 if no plan; *diff: its
 * output against ref */
static double
cudnn_time(cudnnHandle_t h, problem &P, int causal, const void *ref,
    double *diff, int *n_plans, int *stats_used)
{
    float scale = 1.0f / sqrtf((float) P.Dh), ninf = -3.4028234663852886e38f;
    double best = -1;

    *n_plans = 0;
    *diff = NAN;
    for (int stats = 0; stats < 2 && best < 0; stats++) {
        sdpa_plans S;

        if (build_sdpa(h, S, P.n_seq, P.Hq, P.Hk, P.n_q, P.ctx, P.Dh, causal,
                       stats) != 0)
        {
            fprintf(stderr, "cuDNN graph (stats %d, %d/%d heads, %d x %d): "
                    "%s\n", stats, P.Hq, P.Hk, P.n_q, P.ctx, dnn_err);
            dnn_err[0] = '\0';
            continue;
        }
        dnn_err[0] = '\0';
        for (size_t k = 0; k < S.plans.size(); k++) {
            void *ws = NULL;
            cudnnStatus_t r;
            double us;

            if (S.ws[k] > 0) {
                CK(cudaMalloc(&ws, (size_t) S.ws[k]));
            }
            CK(cudaMemset(P.d_o, 0xff, (size_t) P.T * P.Hq * P.Dh * 2));
            r = run_plan(h, S, k, P.d_q, P.d_k, P.d_v, P.d_o, &scale, &ninf,
                         ws);
            if (r != CUDNN_STATUS_SUCCESS || cudaDeviceSynchronize()) {
                char why[512] = "";
                cudnnGetLastErrorString(why, sizeof(why));
                fprintf(stderr, "cuDNN plan %zu: %s %s\n", k,
                        cudnnGetErrorString(r), why);
                cudaFree(ws);
                continue;
            }
            (*n_plans)++;
            us = time_us([&] {
                run_plan(h, S, k, P.d_q, P.d_k, P.d_v, P.d_o, &scale, &ninf,
                         ws);
            });
            if (best < 0 || us < best) {
                best = us;
                *diff = rel_diff(P.d_o, (const __nv_bfloat16 *) ref,
                                 (size_t) P.T * P.Hq * P.Dh);
                *stats_used = stats;
            }
            cudaFree(ws);
        }
    }
    return best;
}

int
main(int argc, char **argv)
{
    static const struct { const char *name; int Hq, Hk; } shapes[] = {
        { "llama-1b", 32, 8 }, { "qwen-0.5b", 14, 2 },
    };
    cudnnHandle_t h;
    cudaDeviceProp prop;

    if (argc > 1) {
        iters = atoi(argv[1]) > 0 ? atoi(argv[1]) : iters;
    }
    CK(cudaGetDeviceProperties(&prop, 0));
    n_sm = prop.multiProcessorCount;
    kc_att_dec(0);              /* the per-token kernel where not said */
    if (cudnnCreate(&h) != CUDNN_STATUS_SUCCESS) {
        fprintf(stderr, "cudnnCreate failed\n");
        return 1;
    }
    printf("%s, cuDNN %zu (built with %d), %d iterations a figure, bf16, "
           "head_dim 64\n\n", prop.name, cudnnGetVersion(), CUDNN_VERSION,
           iters);

    printf("prefill (one prompt, causal): microseconds a layer, TFLOP/s "
           "(causal FLOPs: 4 S (S+1)/2 d H)\n");
    printf("%-10s %5s | %9s %7s | %9s %7s | %9s %7s %6s | %8s %8s\n",
           "shape", "S", "ours tc", "TFLOP/s", "per-tok", "TFLOP/s",
           "cuDNN", "TFLOP/s", "plans", "tc/pt", "dnn/tc");
    for (int si = 0; si < 2; si++) {
        for (int S : { 512, 2048 }) {
            problem P;
            double flop, t_tc, t_pt, t_dn, d_pt, d_dn;
            int n_plans, stats = 0;

            make_problem(P, 1, S, S, shapes[si].Hq, shapes[si].Hk, 64);
            flop = 4.0 * S * (S + 1) / 2.0 * 64 * shapes[si].Hq;
            t_tc = time_us([&] { ours(P, 1, 1, P.d_out_tc); });
            t_pt = time_us([&] { ours(P, 0, 1, P.d_out_pt); });
            d_pt = rel_diff(P.d_out_pt, P.d_out_tc, (size_t) P.T * P.Hq * 64);
            t_dn = cudnn_time(h, P, 1, P.d_out_tc, &d_dn, &n_plans, &stats);
            printf("%-10s %5d | %9.1f %7.1f | %9.1f %7.1f | ", shapes[si].name,
                   S, t_tc, flop / t_tc * 1e-6, t_pt, flop / t_pt * 1e-6);
            if (t_dn > 0) {
                printf("%9.1f %7.1f %6d |", t_dn, flop / t_dn * 1e-6,
                       n_plans);
            } else {
                printf("%9s %7s %6d |", "failed", "-", n_plans);
            }
            printf(" %8.2e %8.2e\n", d_pt, d_dn);
            free_problem(P);
        }
    }
    printf("(tc/pt, dnn/tc: relative difference of the outputs)\n\n");

    printf("decode (one token a sequence, uniform context): microseconds a "
           "layer, GB/s of K/V read\n");
    printf("%-10s %5s %5s | %9s %7s %5s | %9s %7s %5s %8s | %9s %7s %6s "
           "| %8s\n", "shape", "batch", "ctx", "per-tok", "GB/s", "split",
           "dec tc", "GB/s", "split", "dec/pt", "cuDNN", "GB/s", "plans",
           "dnn/pt");
    for (int si = 0; si < 2; si++) {
        for (int B : { 1, 32, 128, 256 }) {
            for (int ctx : { 100, 1000 }) {
                problem P;
                double bytes, t_pt, t_dc, t_dn, d_dc, d_dn;
                int n_plans, stats = 0, ns, nd;

                make_problem(P, B, ctx, 1, shapes[si].Hq, shapes[si].Hk, 64);
                ns = splits(P.T, P.Hq, P.Hk);
                nd = kc_att_dec_splits(P.T, P.Hq, P.Hk, n_sm);
                bytes = 2.0 * B * ctx * shapes[si].Hk * 64 * 2;
                kc_att_dec(0);
                t_pt = time_us([&] { ours(P, 0, ns, P.d_out_pt); });
                kc_att_dec(1);
                t_dc = time_us([&] { ours(P, 0, nd, P.d_out_tc); });
                kc_att_dec(0);
                d_dc = rel_diff(P.d_out_tc, P.d_out_pt,
                                (size_t) P.T * P.Hq * 64);
                t_dn = cudnn_time(h, P, 0, P.d_out_pt, &d_dn, &n_plans,
                                  &stats);
                printf("%-10s %5d %5d | %9.1f %7.0f %5d | %9.1f %7.0f %5d "
                       "%8.2e | ", shapes[si].name, B, ctx, t_pt,
                       bytes / t_pt * 1e-3, ns, t_dc, bytes / t_dc * 1e-3, nd,
                       d_dc);
                if (t_dn > 0) {
                    printf("%9.1f %7.0f %6d |", t_dn, bytes / t_dn * 1e-3,
                           n_plans);
                } else {
                    printf("%9s %7s %6d |", "failed", "-", n_plans);
                }
                printf(" %8.2e\n", d_dn);
                free_problem(P);
            }
        }
    }
    cudnnDestroy(h);
    return 0;
}
