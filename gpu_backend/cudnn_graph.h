/*
 * cudnn_graph.h - building graphs on cuDNN's backend API (plain C calls,
 * no cudnn_frontend): the descriptors of one graph, made and destroyed
 * together, and the node kinds fused attention needs.  Shared by the
 * engine's attention (attention_cudnn.cu) and the measurement tool
 * (tools/bench_attention.cu).  C++, for .cu files.
 *
 * Every builder returns the finalized descriptor, or NULL with the first
 * failure (line, cuDNN's status and its own reason) in D.why.
 */

#ifndef GPU_CUDNN_GRAPH_H
#define GPU_CUDNN_GRAPH_H

#include <stdio.h>
#include <vector>

#include <cudnn.h>

typedef cudnnBackendDescriptor_t bd_t;

struct cg_descs {
    std::vector<bd_t>  all;
    char              *why = NULL;      /* the owner's buffer, or NULL */
    size_t             why_len = 0;

    bd_t make(cudnnBackendDescriptorType_t t) {
        bd_t d = NULL;
        if (cudnnBackendCreateDescriptor(t, &d) == CUDNN_STATUS_SUCCESS) {
            all.push_back(d);
        }
        return d;
    }
    void clear() {
        for (size_t i = all.size(); i-- > 0;) {
            cudnnBackendDestroyDescriptor(all[i]);
        }
        all.clear();
    }
    ~cg_descs() { clear(); }
};

#define CG_TRY(D, x) do {                                                 \
    cudnnStatus_t s_ = (x);                                               \
    if (s_ != CUDNN_STATUS_SUCCESS) {                                     \
        char w_[400] = "";                                                \
        cudnnGetLastErrorString(w_, sizeof(w_));                          \
        if ((D).why != NULL && (D).why[0] == '\0') {                      \
            snprintf((D).why, (D).why_len, "line %d: %s: %s", __LINE__,   \
                     cudnnGetErrorString(s_), w_);                        \
        }                                                                 \
        return NULL;                                                      \
    }                                                                     \
} while (0)

#define CG_SET(D, d, attr, type, n, p)                                    \
    CG_TRY(D, cudnnBackendSetAttribute((d), (attr), (type), (n), (p)))

/* a 4-d tensor; ragged: the descriptor of its per-item offsets, or NULL */
static inline bd_t
cg_tensor(cg_descs &D, int64_t uid, cudnnDataType_t dt, const int64_t *dims,
    const int64_t *strides, bool virt, bool by_value, bd_t ragged)
{
    bd_t t = D.make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    int64_t align = 16;

    if (t == NULL) {
        return NULL;
    }
    CG_SET(D, t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt);
    CG_SET(D, t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims);
    CG_SET(D, t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides);
    CG_SET(D, t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    CG_SET(D, t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1,
           &align);
    CG_SET(D, t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt);
    if (by_value) {
        CG_SET(D, t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1,
               &by_value);
    }
    if (ragged != NULL) {
        CG_SET(D, t, CUDNN_ATTR_TENSOR_RAGGED_OFFSET_DESC,
               CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &ragged);
    }
    CG_TRY(D, cudnnBackendFinalize(t));
    return t;
}

/* y = mode(x [, b] [, t]); axis >= 0 for GEN_INDEX */
static inline bd_t
cg_pointwise(cg_descs &D, cudnnPointwiseMode_t mode, cudnnDataType_t prec,
    bd_t x, bd_t b, bd_t t, bd_t y, int64_t axis)
{
    bd_t pw = D.make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    bd_t op = D.make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);

    if (pw == NULL || op == NULL || x == NULL || y == NULL) {
        return NULL;
    }
    CG_SET(D, pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1,
           &mode);
    CG_SET(D, pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1,
           &prec);
    if (axis >= 0) {
        CG_SET(D, pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
    }
    CG_TRY(D, cudnnBackendFinalize(pw));
    CG_SET(D, op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR,
           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw);
    CG_SET(D, op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC,
           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    if (b != NULL) {
        CG_SET(D, op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC,
               CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
    }
    if (t != NULL) {
        CG_SET(D, op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC,
               CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t);
    }
    CG_SET(D, op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC,
           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    CG_TRY(D, cudnnBackendFinalize(op));
    return op;
}

/* y = rop over the axes where y's extent is 1, in f32 */
static inline bd_t
cg_reduction(cg_descs &D, cudnnReduceTensorOp_t rop, bd_t x, bd_t y)
{
    bd_t rd = D.make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    bd_t op = D.make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    cudnnDataType_t f = CUDNN_DATA_FLOAT;

    if (rd == NULL || op == NULL || x == NULL || y == NULL) {
        return NULL;
    }
    CG_SET(D, rd, CUDNN_ATTR_REDUCTION_OPERATOR,
           CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &rop);
    CG_SET(D, rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1,
           &f);
    CG_TRY(D, cudnnBackendFinalize(rd));
    CG_SET(D, op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC,
           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    CG_SET(D, op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC,
           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    CG_SET(D, op, CUDNN_ATTR_OPERATION_REDUCTION_DESC,
           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &rd);
    CG_TRY(D, cudnnBackendFinalize(op));
    return op;
}

/* c = a b in f32; m, n, k: per-item overrides of the extents, or NULL */
static inline bd_t
cg_matmul(cg_descs &D, bd_t a, bd_t b, bd_t c, bd_t m, bd_t n, bd_t k)
{
    bd_t mm = D.make(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    bd_t op = D.make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    cudnnDataType_t f = CUDNN_DATA_FLOAT;

    if (mm == NULL || op == NULL || a == NULL || b == NULL || c == NULL) {
        return NULL;
    }
    CG_SET(D, mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f);
    CG_TRY(D, cudnnBackendFinalize(mm));
    CG_SET(D, op, CUDNN_ATTR_OPERATION_MATMUL_ADESC,
           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a);
    CG_SET(D, op, CUDNN_ATTR_OPERATION_MATMUL_BDESC,
           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
    CG_SET(D, op, CUDNN_ATTR_OPERATION_MATMUL_CDESC,
           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c);
    CG_SET(D, op, CUDNN_ATTR_OPERATION_MATMUL_DESC,
           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mm);
    if (m != NULL) {
        CG_SET(D, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC,
               CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &m);
    }
    if (n != NULL) {
        CG_SET(D, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC,
               CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n);
    }
    if (k != NULL) {
        CG_SET(D, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC,
               CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &k);
    }
    CG_TRY(D, cudnnBackendFinalize(op));
    return op;
}

/*
 * The graph of ops, cuDNN's heuristics (mode A) for it, and the execution
 * plan of every engine configuration they offer (at most 8) that
 * finalizes with a workspace of at most max_ws bytes, in the heuristics'
 * order: plans[i] needs ws[i] bytes.  The number of plans; 0 with D.why
 * set if none.
 */
static inline int
cg_plans(cg_descs &D, cudnnHandle_t h, std::vector<bd_t> &ops,
    int64_t max_ws, std::vector<bd_t> &plans, std::vector<int64_t> &ws)
{
    cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    bd_t g, heur, cfgs[8];
    int64_t n_cfg = 0;
    int i;

    for (i = 0; i < (int) ops.size(); i++) {
        if (ops[i] == NULL) {
            return 0;               /* D.why says which node failed */
        }
    }
    g = D.make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    heur = D.make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    if (g == NULL || heur == NULL) {
        return 0;
    }
    if (cudnnBackendSetAttribute(g, CUDNN_ATTR_OPERATIONGRAPH_HANDLE,
                                 CUDNN_TYPE_HANDLE, 1, &h)
        || cudnnBackendSetAttribute(g, CUDNN_ATTR_OPERATIONGRAPH_OPS,
                                    CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                    (int64_t) ops.size(), ops.data())
        || cudnnBackendFinalize(g)
        || cudnnBackendSetAttribute(heur,
                                    CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH,
                                    CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g)
        || cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_MODE,
                                    CUDNN_TYPE_HEUR_MODE, 1, &mode)
        || cudnnBackendFinalize(heur))
    {
        if (D.why != NULL && D.why[0] == '\0') {
            char w[400] = "";
            cudnnGetLastErrorString(w, sizeof(w));
            snprintf(D.why, D.why_len, "graph or heuristics: %s", w);
        }
        return 0;
    }
    for (i = 0; i < 8; i++) {
        cfgs[i] = D.make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    }
    if (cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                 CUDNN_TYPE_BACKEND_DESCRIPTOR, 8, &n_cfg,
                                 cfgs))
    {
        n_cfg = 0;
    }
    for (i = 0; i < (int) n_cfg; i++) {
        bd_t plan = D.make(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
        int64_t w = 0, n = 0;

        if (plan == NULL
            || cudnnBackendSetAttribute(plan,
                   CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &h)
            || cudnnBackendSetAttribute(plan,
                   CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                   CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[i])
            || cudnnBackendFinalize(plan))
        {
            if (D.why != NULL && D.why[0] == '\0') {
                char e[400] = "";
                cudnnGetLastErrorString(e, sizeof(e));
                snprintf(D.why, D.why_len, "plan %d of %d: %s", i,
                         (int) n_cfg, e);
            }
            continue;
        }
        cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                 CUDNN_TYPE_INT64, 1, &n, &w);
        if (w > max_ws) {
            continue;
        }
        plans.push_back(plan);
        ws.push_back(w);
    }
    if (plans.empty() && D.why != NULL && D.why[0] == '\0') {
        if (n_cfg == 0) {
            snprintf(D.why, D.why_len, "heuristics gave no engine "
                     "configuration");
        } else {
            snprintf(D.why, D.why_len, "heuristics gave %d engine "
                     "configurations, each needs more than %lld MiB of "
                     "workspace", (int) n_cfg, (long long) (max_ws >> 20));
        }
    }
    return (int) plans.size();
}

#endif /* GPU_CUDNN_GRAPH_H */
