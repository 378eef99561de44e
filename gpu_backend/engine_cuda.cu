/*
 * engine_cuda.cu - the CUDA engine: the forward pass of engine_cpu.c on
 * one GPU, behind the same ops table.
 *
 * Memory is taken once, in create: one allocation for the weights (in
 * the storage dtype: config.json's torch_dtype unless engine_opts_t.dtype
 * says otherwise; norms in f32), one arena for the activations of
 * max_batch_tokens rows and max_seqs logits rows (cuBLAS's workspace and
 * the step-input region included), and one KV pool of kv_blocks blocks
 * (or kv_fraction of the memory then free).  Nothing is allocated later;
 * dev_alloc() counts any call after start-up, so the metric would show it.
 *
 * A step: the host packs token ids, positions, block tables and sampling
 * parameters into a pinned staging buffer and uploads them in one async
 * copy; the forward pass runs (matrix products through cuBLAS, bf16 or
 * f16 or f32 in, f32 accumulate and out; kernels_cuda.h around them);
 * sampling runs on the device, and the sampled ids come back in one
 * async copy.  Steps of decode tokens only replay a CUDA graph captured
 * at start for the next bucket size (1, 2, 4, ... max_seqs), the batch
 * padded with dummy rows that write to a scratch KV block.  Steps where
 * requests join running ones (their prompt chunks beside decode tokens)
 * replay a mixed graph when they fit one (a bucket's items, up to 128
 * more token rows); longer prefill steps launch the kernels eagerly.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include <cuda_runtime.h>
#include <cublas_v2.h>

extern "C" {
#include "carve.h"
#include "engine_impl.h"
#include "log.h"
#include "sampler.h"
}
#include "gemm_cuda.h"
#include "kernels_cuda.h"
#include "sample_cuda.h"
#include "mono_clock.h"
#include "step_clock.h"

#define ALIGN          256
#define BLAS_WS_BYTES  ((size_t) 32 << 20)
#define MAX_BUCKETS    16
#define MIX_BUCKETS    3
static const int mixp[MIX_BUCKETS] = { 16, 64, 128 };
/*
 * A mixed step whose prompt chunks all end within this many positions
 * replays the graph whose attention is the per-token kernel's for every
 * row; past it, the one where the tensor-core kernel takes the prompt
 * rows.  For short chunks at short contexts that kernel costs more than
 * it saves: Qwen-size at batch 32 with 16-token prompts, a 96-row mixed
 * step took 1755 us with it, 1488 us without (H100, NGX_GPU_STEP_LOG).
 */
#define MIX_SHORT_CTX  256
#define PDL_MAX_ROWS   32                  /* see forward() */
#define SM_COPY_MAX    ((size_t) 64 << 10) /* see stage_copy() */
#define CONV_CHUNK     ((size_t) 1 << 22)  /* elements converted at a time */
#define HEADROOM       ((size_t) 256 << 20) /* left free for the runtime */

/*
 * The products whose kernels let the kernel after them start before
 * their own launch wait (gemv_trigger_first; NGX_GPU_TRIGGER, a sum of
 * these bits, to compare).  o's, so that gate|up's blocks, where they
 * fit, issue their first weight loads while attention runs, which reads
 * next to nothing from memory; gate|up's and down's, for the same along
 * the chain.  H100, decode tokens/s against none (scripts/gpu/ab-decode
 * --env-a NGX_GPU_TRIGGER=0, best of 2 starts): Qwen2.5-0.5B shapes
 * batch 1 +8.0%, batch 2 +4.2%; Llama-3.2-1B batch 2 +2.2%; the 1B at
 * batch 1, and both at 4 and 8, within 1%.  With q|k|v's and the LM
 * head's too, Qwen's batch 1 gained 3% less.  Where the product before
 * fills every multiprocessor (the 1B's o at batch 1) nothing starts
 * early, and nothing changes.
 */
#define TRIG_QKV       1
#define TRIG_O         2
#define TRIG_GU        4
#define TRIG_DOWN      8
#define TRIG_HEAD      16
#define TRIG_DEFAULT   (TRIG_O | TRIG_GU | TRIG_DOWN)

typedef struct {
    float  *attn_norm, *ffn_norm;
    float  *b_qkv;                      /* [q|k|v] f32, or NULL */
    float  *post_attn_norm, *post_ffn_norm; /* Glm4, else NULL */
    void   *w_qkv;                      /* [q|k|v rows, dim] */
    void   *wo;                         /* [dim, q_dim] */
    void   *w_gate_up;                  /* [gate, up rows interleaved, dim] */
    void   *w_down;                     /* [dim, hidden] */
} cu_layer_t;

/* one step queued on the stream (see pend in cu_engine_t) */
typedef struct {
    char               *h_stage;        /* pinned */
    int32_t            *h_out;          /* pinned, [max_seqs] */
    engine_logprobs_t  *h_lp;           /* pinned, [max_seqs] */
    char               *m_stage;        /* the same three, as the device */
    int32_t            *m_out;          /* addresses them (mapped) */
    engine_logprobs_t  *m_lp;
    int32_t            *row_item;       /* [max_seqs] row -> item, -1 */
    int32_t            *item_row;       /* [max_seqs] item -> its row */
    engine_logprobs_t **row_lp;         /* [max_seqs] where a row's goes */
    uint8_t            *row_sample;     /* [max_seqs] */
    int                 R;
    cudaEvent_t         done;
} cu_pending_t;

typedef struct {
    model_config_t    cfg;
    int               device;
    char              name[32];
    char              err[256];         /* why the last step failed */
    kc_dtype_t        dt;
    size_t            esz;
    cudaDataType_t    cuda_dt;
    int               q_dim, kv_dim, qkv_dim;
    int               max_seqs, max_tokens, block_size, max_blocks;
    int               use_graphs;

    cudaStream_t      stream;
    cublasHandle_t    blas;
    gemm_t           *gemm;
    int               tune;
    int               tune_log;         /* NGX_GPU_GEMM_LOG: the picks */
    int               trig;             /* TRIG_ bits */
    int               pdl_rows;         /* PDL in steps of up to this */
    int               settle_lean;      /* NGX_GPU_SETTLE_LEAN: settle()
                                         * tries gemm_lean's */
    int               started;
    uint64_t          allocs_after_start;
    uint64_t          graph_steps[2];   /* decode, mixed */

    /* the three device allocations */
    char             *wbuf, *abuf, *kvbuf;
    size_t            wbytes, abytes, kvbytes;

    /* weights */
    void             *tok_emb, *lm_head;
    float            *final_norm, *inv_freq;
    cu_layer_t       *layers;

    /* KV: n_kv_blocks usable blocks, then one scratch block that the
     * padding rows of a decode graph write to */
    int               n_kv_blocks;
    size_t            kv_block_stride, kv_layer_stride;   /* elements */

    /* activations: f32 where sums are, storage dtype where cuBLAS reads */
    float            *x, *y, *qkv, *gu, *logits;
    float            *x2;               /* the residual stream's other
                                         * buffer (norm prologues) */
    int               norm_pro;         /* NGX_GPU_NORM_PROLOGUE=0: not */
    /* per step rows, set by pro_decide(): whether q|k|v and gate|up
     * start with the norm */
    uint8_t           pro_qkv[GEMV_MAX_M + 1], pro_gu[GEMV_MAX_M + 1];
    uint8_t           settled[GEMV_MAX_M + 1];  /* pro_* set by settle() */
    void             *xb, *att, *hb, *xl;
    float            *att_part;         /* split attention's partials */
    int              *gemv_count;       /* gemv_epi_t's count */
    size_t            att_part_floats;
    /* cuDNN's fused attention for prefill rows (attention_cudnn.cu):
     * wanted at start, its scratch in the arena, what this step does */
    int               dnn_want, dnn_step, dnn_decode, dnn_fail;
    kc_dnn_t         *dnn;
    void             *dnn_scratch;
    int              *dnn_items;        /* [4][max_seqs] host */
    int               n_sm;
    void             *blas_ws;
    int32_t          *d_out;            /* [max_seqs] sampled ids */
    engine_logprobs_t *d_lp;            /* [max_seqs] */
    void             *sample_scratch;   /* ks_sample()'s partials */
    /* penalties: each sequence's counts of its sampled tokens, and how
     * many tokens they count (-1: not kept, reload before use) */
    uint16_t         *d_counts;         /* [max_seqs][vocab] */
    int32_t          *d_gen;            /* [max_seq_len] for a reload */
    int              *counted;          /* [max_seqs] */

    /*
     * Step inputs: the same layout in pinned host memory and on the
     * device.  Fixed per-row arrays first, then a variable part: the
     * tokens (3 ints each), then the packed block tables; table offsets
     * count ints from the start of the variable part.
     */
    char             *h_stage, *d_stage;
    size_t            stage_bytes, var_off;
    int32_t          *h_item_table, *h_row_tok, *h_var;
    float            *h_temp, *h_top_p, *h_unif;
    int32_t          *h_top_k, *h_count_row, *h_n_lp;
    float            *h_presence, *h_frequency;
    ks_rows_t         drows;            /* device pointers */
    engine_logprobs_t *h_lp;            /* pinned, [max_seqs] */
    kc_step_t         dst;              /* device pointers */
    int32_t          *h_out;            /* pinned, [max_seqs] */
    char             *m_stage;          /* h_stage, h_out, h_lp as the */
    int32_t          *m_out;            /* device addresses them */
    engine_logprobs_t *m_lp;
    int               sm_copy;          /* NGX_GPU_SM_COPY: kc_copy */
    int32_t          *row_item;         /* [max_seqs] row -> item, -1 pad */

    /*
     * Steps begun and not ended (engine_step_begin/end), oldest first.
     * Each has its own pinned staging, ids and logprobs, bound to the
     * h_* pointers above while it is packed; the device staging is one,
     * the stream orders its reuse.
     */
    cu_pending_t      pend[ENGINE_MAX_PENDING];
    int               p_head, p_n, p_last;  /* p_last: begun last, -1 */
    step_clock_t      clock;            /* NGX_GPU_STEP_LOG */

    int               n_buckets;
    int               buckets[MAX_BUCKETS];
    cudaGraphExec_t   graphs[MAX_BUCKETS];
    /* steps of decode tokens and short prompt chunks (requests joining
     * running ones): bucket b of items, and room for mixp[p] more token
     * rows after the bucket's; [0]: attention by the per-token kernel,
     * [1]: prompt rows by the tensor-core one (when it serves the model:
     * kc_att_tiles) */
    cudaGraphExec_t   mgraphs[MAX_BUCKETS][MIX_BUCKETS][2];

    void             *host_registered;
    uint64_t          rng;              /* for items without their own */
} cu_engine_t;

static char probe_err[256];

/* --- small helpers ----------------------------------------------------- */

static int
cu_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

#define CU_TRY(call, what)                                                \
    do {                                                                  \
        cudaError_t _r = (call);                                          \
        if (_r != cudaSuccess) {                                          \
            cu_fail(err, errlen, "cuda engine: %s: %s", (what),           \
                    cudaGetErrorString(_r));                              \
            goto fail;                                                    \
        }                                                                 \
    } while (0)

/* every device allocation goes through here: after start-up it counts */
static cudaError_t
dev_alloc(cu_engine_t *e, void *pp, size_t bytes)
{
    if (e->started) {
        e->allocs_after_start++;
    }
    return cudaMalloc((void **) pp, bytes);
}

static kc_dtype_t
st_kc(st_dtype_e d)
{
    return d == ST_BF16 ? KC_BF16 : d == ST_F16 ? KC_F16 : KC_F32;
}

/* "bfloat16", "bf16", ... -> dtype; -1 if unknown */
static int
parse_dtype(const char *s)
{
    if (strcmp(s, "bfloat16") == 0 || strcmp(s, "bf16") == 0) {
        return KC_BF16;
    }
    if (strcmp(s, "float16") == 0 || strcmp(s, "fp16") == 0
        || strcmp(s, "half") == 0)
    {
        return KC_F16;
    }
    if (strcmp(s, "float32") == 0 || strcmp(s, "fp32") == 0
        || strcmp(s, "float") == 0)
    {
        return KC_F32;
    }
    return -1;
}

/* --- weights ------------------------------------------------------------ */

/* lay out (cv->base NULL: just size) the weights */
static void
carve_weights(cu_engine_t *e, carve_t *cv)
{
    const model_config_t *c = &e->cfg;
    size_t es = e->esz, dim = c->dim, h = c->hidden_dim;
    int l;

    e->tok_emb = carve(cv, (size_t) c->vocab_size * dim * es);
    e->lm_head = c->tied_embeddings ? e->tok_emb
                 : carve(cv, (size_t) c->vocab_size * dim * es);
    e->final_norm = (float *) carve(cv, dim * 4);
    e->inv_freq = (float *) carve(cv, (size_t) c->rope_dim / 2 * 4);
    for (l = 0; l < c->n_layers; l++) {
        cu_layer_t *L = &e->layers[l];
        L->attn_norm = (float *) carve(cv, dim * 4);
        L->ffn_norm = (float *) carve(cv, dim * 4);
        L->b_qkv = c->qkv_bias ? (float *) carve(cv, e->qkv_dim * 4) : NULL;
        L->post_attn_norm = c->post_norms ? (float *) carve(cv, dim * 4)
                                          : NULL;
        L->post_ffn_norm = c->post_norms ? (float *) carve(cv, dim * 4)
                                         : NULL;
        L->w_qkv = carve(cv, (size_t) e->qkv_dim * dim * es);
        L->wo = carve(cv, dim * e->q_dim * es);
        L->w_gate_up = carve(cv, 2 * h * dim * es);
        L->w_down = carve(cv, dim * h * es);
    }
}

/* rows r0 .. r0 + n - 1 of t (len elements each, len <= CONV_CHUNK) to
 * dst, one every pitch elements, as dtype to (f32 for the norms),
 * converting on the host in chunks of rows when the stored dtype
 * differs; a pitch of 2 * len interleaves gate's and up's rows */
static cudaError_t
upload_rows(char *dst, const st_tensor_t *t, size_t r0, size_t n,
    size_t len, size_t pitch, kc_dtype_t to, float *f32, void *conv)
{
    kc_dtype_t from = st_kc(t->dtype);
    size_t es_from = kc_dtype_size(from), es_to = kc_dtype_size(to);
    size_t per = CONV_CHUNK / len, i, k;
    const char *src = (const char *) t->data + r0 * len * es_from;
    cudaError_t r = cudaSuccess;

    if (len == 0 || per == 0) {
        return len == 0 ? cudaSuccess : cudaErrorInvalidValue;
    }
    for (i = 0; i < n && r == cudaSuccess; i += k) {
        const void *h = src + i * len * es_from;

        k = n - i < per ? n - i : per;
        if (from != to) {
            kc_to_f32(from, f32, h, k * len);
            kc_from_f32(to, conv, f32, k * len);
            h = conv;
        }
        r = cudaMemcpy2D(dst + i * pitch * es_to, pitch * es_to, h,
                         len * es_to, len * es_to, k,
                         cudaMemcpyHostToDevice);
    }
    return r;
}

/* the whole of tensor t to dst, as rows of its last dimension */
static cudaError_t
upload(char *dst, const st_tensor_t *t, kc_dtype_t to, float *f32, void *conv)
{
    size_t len = t->ndim > 0 ? (size_t) t->shape[t->ndim - 1]
                             : (size_t) t->numel;

    return upload_rows(dst, t, 0, len ? (size_t) t->numel / len : 0, len,
                       len, to, f32, conv);
}

static int
upload_weights(cu_engine_t *e, const model_t *m, char *err, size_t errlen)
{
    const model_config_t *c = &e->cfg;
    float *f32 = (float *) malloc(CONV_CHUNK * 4);
    void *conv = malloc(CONV_CHUNK * 4);
    float *inv = (float *) malloc((size_t) c->rope_dim / 2 * 4);
    cudaError_t r = cudaSuccess;
    int l;

#define UP(dst, t, to)                                                    \
    if (r == cudaSuccess) { r = upload((char *) (dst), (t), (to), f32, conv); }

    if (f32 == NULL || conv == NULL || inv == NULL) {
        free(f32); free(conv); free(inv);
        return cu_fail(err, errlen, "cuda engine: out of host memory");
    }
    UP(e->tok_emb, m->tok_emb, e->dt);
    if (!c->tied_embeddings) {
        UP(e->lm_head, m->lm_head, e->dt);
    }
    UP(e->final_norm, m->final_norm, KC_F32);
    for (l = 0; l < c->n_layers; l++) {
        const model_layer_t *s = &m->layers[l];
        cu_layer_t *L = &e->layers[l];
        size_t es = e->esz;

        UP(L->attn_norm, s->attn_norm, KC_F32);
        UP(L->ffn_norm, s->ffn_norm, KC_F32);
        if (c->qkv_bias) {
            UP(L->b_qkv, s->bq, KC_F32);
            UP(L->b_qkv + s->bq->numel, s->bk, KC_F32);
            UP(L->b_qkv + s->bq->numel + s->bk->numel, s->bv, KC_F32);
        }
        if (c->post_norms) {
            UP(L->post_attn_norm, s->post_attn_norm, KC_F32);
            UP(L->post_ffn_norm, s->post_ffn_norm, KC_F32);
        }
        /* q, k, v stacked: one matrix product for all three */
        UP(L->w_qkv, s->wq, e->dt);
        UP((char *) L->w_qkv + (size_t) s->wq->numel * es, s->wk, e->dt);
        UP((char *) L->w_qkv + (size_t) (s->wq->numel + s->wk->numel) * es,
           s->wv, e->dt);
        UP(L->wo, s->wo, e->dt);
        /* gate's and up's rows interleaved (2j gate j, 2j + 1 up j): a
         * warp of gemv_cuda.cu's kernel then holds both halves of an
         * output of SwiGLU; GLM's one tensor is gate's rows then up's */
        if (r == cudaSuccess) {
            size_t h = (size_t) c->hidden_dim, d = (size_t) c->dim;
            char *gu = (char *) L->w_gate_up;
            const st_tensor_t *tg = s->w_gate_up ? s->w_gate_up : s->w_gate;
            const st_tensor_t *tu = s->w_gate_up ? s->w_gate_up : s->w_up;
            size_t u0 = s->w_gate_up ? h : 0;

            r = upload_rows(gu, tg, 0, h, d, 2 * d, e->dt, f32, conv);
            if (r == cudaSuccess) {
                r = upload_rows(gu + d * es, tu, u0, h, d, 2 * d, e->dt, f32,
                                conv);
            }
        }
        UP(L->w_down, s->w_down, e->dt);
    }
#undef UP
    /* inv_freq as transformers (and the CPU engine) computes it */
    model_rope_inv_freq(c, inv);
    if (r == cudaSuccess) {
        r = cudaMemcpy(e->inv_freq, inv, (size_t) c->rope_dim / 2 * 4,
                       cudaMemcpyHostToDevice);
    }
    free(f32);
    free(conv);
    free(inv);
    if (r != cudaSuccess) {
        return cu_fail(err, errlen, "cuda engine: uploading the weights: %s",
                       cudaGetErrorString(r));
    }
    return 0;
}

/* --- activations and step inputs ---------------------------------------- */

/* what cuDNN's attention plans are built for (n_blocks: 0 before the
 * KV pool exists; the scratch does not depend on it) */
static kc_dnn_shape_t
dnn_shape(const cu_engine_t *e)
{
    kc_dnn_shape_t sh;

    sh.n_heads = e->cfg.n_heads;
    sh.n_kv_heads = e->cfg.n_kv_heads;
    sh.head_dim = e->cfg.head_dim;
    sh.block_size = e->block_size;
    sh.n_blocks = e->kvbuf != NULL ? e->n_kv_blocks + 1 : 0;
    sh.block_stride = e->kv_block_stride;
    sh.max_items = e->max_seqs;
    sh.max_tokens = e->max_tokens;
    sh.max_pages = e->max_blocks;
    return sh;
}

static void
carve_acts(cu_engine_t *e, carve_t *cv)
{
    const model_config_t *c = &e->cfg;
    size_t T = (size_t) e->max_tokens, S = (size_t) e->max_seqs;
    size_t es = e->esz, dim = c->dim, h = c->hidden_dim;

    e->x = (float *) carve(cv, T * dim * 4);
    e->x2 = (float *) carve(cv, T * dim * 4);
    e->y = (float *) carve(cv, T * dim * 4);
    e->qkv = (float *) carve(cv, T * e->qkv_dim * 4);
    e->gu = (float *) carve(cv, T * 2 * h * 4);
    e->logits = (float *) carve(cv, S * c->vocab_size * 4);
    e->xb = carve(cv, T * dim * es);
    e->att = carve(cv, T * e->q_dim * es);
    e->hb = carve(cv, T * h * es);
    e->xl = carve(cv, S * dim * es);
    e->d_out = (int32_t *) carve(cv, S * 4);
    e->d_lp = (engine_logprobs_t *) carve(cv, S * sizeof(engine_logprobs_t));
    e->sample_scratch = carve(cv, ks_sample_scratch_bytes(e->max_seqs,
                                                          c->vocab_size));
    e->d_counts = (uint16_t *) carve(cv, S * c->vocab_size * 2);
    e->d_gen = (int32_t *) carve(cv, (size_t) c->max_seq_len * 4);
    /* splits only for steps of up to max_seqs tokens (decode) */
    e->att_part_floats = kc_attention_part_floats(e->max_seqs, c->n_heads,
                                                  c->head_dim,
                                                  KC_ATT_MAX_SPLIT);
    e->att_part = (float *) carve(cv, e->att_part_floats * 4);
    e->gemv_count = (int *) carve(cv, 4);
    e->blas_ws = carve(cv, BLAS_WS_BYTES);
    e->d_stage = (char *) carve(cv, e->stage_bytes);
    if (e->dnn_want) {
        kc_dnn_shape_t sh = dnn_shape(e);
        e->dnn_scratch = carve(cv, kc_dnn_scratch_bytes(e->dt, &sh));
    }
}

/* items (and rows) the per-row arrays hold: max_seqs and a mixed graph's
 * padding item */
static size_t
stage_items(const cu_engine_t *e)
{
    return (size_t) e->max_seqs + 1;
}

/* the staging layout: per-row arrays of stage_items(), then tokens and
 * tables */
static void
stage_layout(cu_engine_t *e)
{
    size_t S = stage_items(e);
    size_t var = 3 * (size_t) e->max_tokens
                 + S * (size_t) e->max_blocks + S + 1;

    e->var_off = 10 * S * 4;
    e->stage_bytes = e->var_off + var * 4;
}

/* pointers into a staging buffer at base (host or device) */
static kc_step_t
stage_ptrs(cu_engine_t *e, char *base)
{
    size_t S = stage_items(e);
    kc_step_t st;

    st.item_table = (const int32_t *) base;
    st.row_tok = (const int32_t *) (base + S * 4);
    st.temperature = (const float *) (base + 2 * S * 4);
    st.top_p = (const float *) (base + 3 * S * 4);
    st.uniform = (const float *) (base + 4 * S * 4);
    st.tokens = (const kc_token_t *) (base + e->var_off);
    st.tables = (const int32_t *) (base + e->var_off);
    return st;
}

/* the sampler's own per-row arrays, after kc_step_t's */
static ks_rows_t
stage_rows(cu_engine_t *e, char *base)
{
    size_t S = stage_items(e);
    ks_rows_t rw;

    rw.top_k = (const int32_t *) (base + 5 * S * 4);
    rw.presence = (const float *) (base + 6 * S * 4);
    rw.frequency = (const float *) (base + 7 * S * 4);
    rw.count_row = (const int32_t *) (base + 8 * S * 4);
    rw.n_logprobs = (const int32_t *) (base + 9 * S * 4);
    return rw;
}

/* row R of the sampler's inputs: all rules off */
static void
stage_row_off(cu_engine_t *e, int R)
{
    e->h_temp[R] = 0.0f;
    e->h_top_p[R] = 1.0f;
    e->h_unif[R] = 0.0f;
    e->h_top_k[R] = 0;
    e->h_presence[R] = 0.0f;
    e->h_frequency[R] = 0.0f;
    e->h_count_row[R] = -1;
    e->h_n_lp[R] = -1;
}

/*
 * Row R samples for item it: its rules, and for penalties its
 * sequence's counts on the device, reloaded from it->gen when they do
 * not count exactly its n_gen tokens.  0, or -1 on a device error.
 */
static int
stage_row_sample(cu_engine_t *e, int R, const engine_item_t *it)
{
    int vocab = e->cfg.vocab_size;
    uint16_t *row = e->d_counts + (size_t) it->seq * vocab;
    cudaError_t r = cudaSuccess;

    e->h_temp[R] = it->temperature;
    e->h_top_p[R] = it->top_p;
    /* the draw: one step of the sequence's own state, only when
     * sampler_pick() would take one */
    e->h_unif[R] = it->temperature > 0.0f && vocab > 1
                   ? sampler_uniform(it->rng ? it->rng : &e->rng) : 0.0f;
    e->h_top_k[R] = it->top_k;
    e->h_presence[R] = it->presence_penalty;
    e->h_frequency[R] = it->frequency_penalty;
    e->h_n_lp[R] = it->lp != NULL ? it->n_logprobs : -1;
    e->h_count_row[R] = -1;

    if (it->presence_penalty == 0.0f && it->frequency_penalty == 0.0f) {
        e->counted[it->seq] = -1;
        return 0;
    }
    if (e->counted[it->seq] != it->n_gen) {
        if (it->n_gen == 0) {
            r = cudaMemsetAsync(row, 0, (size_t) vocab * 2, e->stream);
        } else {
            /* from pageable memory: ordered on the stream, rare */
            r = cudaMemcpyAsync(e->d_gen, it->gen, (size_t) it->n_gen * 4,
                                cudaMemcpyHostToDevice, e->stream);
            if (r == cudaSuccess) {
                ks_counts_load(e->stream, row, vocab, e->d_gen, it->n_gen);
                r = cudaGetLastError();
            }
        }
        if (r != cudaSuccess) {
            snprintf(e->err, sizeof(e->err), "cuda engine: penalty counts: "
                     "%s", cudaGetErrorString(r));
            return -1;
        }
    }
    e->h_count_row[R] = it->seq;
    /* the kernel counts the token it picks */
    e->counted[it->seq] = it->n_gen + 1;
    return 0;
}

/*
 * Rows [from, B) of a decode step become padding: token 0 at position 0
 * of its own dummy item, whose one-block table is the scratch block;
 * greedy.  *n_var: ints of the variable part used so far.
 */
static void
stage_pad(cu_engine_t *e, int from, int B, int *n_var)
{
    int i;

    for (i = from; i < B; i++) {
        kc_token_t *tk = (kc_token_t *) e->h_var + i;
        tk->tok = 0;
        tk->pos = 0;
        tk->item = i;
        e->h_item_table[i] = *n_var;
        e->h_row_tok[i] = i;
        stage_row_off(e, i);
        e->row_item[i] = -1;
    }
    if (from < B) {
        e->h_var[(*n_var)++] = e->n_kv_blocks;          /* scratch */
    }
}

/*
 * The padding of a mixed-graph step: token rows [t0, T) are one dummy
 * item (index n) whose tokens all sit at position 0 of the scratch
 * block; logits rows [r0, R) are off and read the last token row.
 */
static void
stage_pad_mixed(cu_engine_t *e, int n, int t0, int T, int r0, int R,
    int *n_var)
{
    int t, r;

    e->h_item_table[n] = *n_var;
    e->h_var[(*n_var)++] = e->n_kv_blocks;              /* scratch */
    for (t = t0; t < T; t++) {
        kc_token_t *tk = (kc_token_t *) e->h_var + t;
        tk->tok = 0;
        tk->pos = 0;
        tk->item = n;
    }
    for (r = r0; r < R; r++) {
        e->h_row_tok[r] = T - 1;
        stage_row_off(e, r);
        e->row_item[r] = -1;
    }
}

static int bucket_of(const cu_engine_t *e, int n);

/*
 * The mixed graph for a step of n items, T token rows in all, some item
 * a prefill chunk (requests joining: one or several, anywhere among the
 * items; every kernel finds an item's rows from the staged tokens):
 * bucket b >= n items, with room for T rows (*p), and its attention by
 * the chunks' contexts (*v); -1 if none fits.
 */
static int
mixed_of(const cu_engine_t *e, const engine_item_t *items, int n, int T,
    int *p, int *v)
{
    int b = bucket_of(e, n), i, ctx = 0;

    if (b < 0) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        if (items[i].n_tokens > 1 && items[i].pos + items[i].n_tokens > ctx) {
            ctx = items[i].pos + items[i].n_tokens;
        }
    }
    for (*p = 0; *p < MIX_BUCKETS; (*p)++) {
        if (T <= e->buckets[b] + mixp[*p]) {
            *v = ctx > MIX_SHORT_CTX && e->mgraphs[b][*p][1] != NULL;
            return e->mgraphs[b][*p][*v] != NULL ? b : -1;
        }
    }
    return -1;
}

/* --- the forward pass --------------------------------------------------- */

/* out[M,N] (f32) = in[M,K] @ w[N,K]^T, in and w in the storage dtype,
 * then the epilogue ep (NULL: none; see gemm_cuda.h) */
static void
gemm(cu_engine_t *e, float *out, const void *in, const void *w, int M,
    int K, int N, const gemm_epi_t *ep, cublasStatus_t *st)
{
    cublasStatus_t r = gemm_run(e->gemm, out, in, w, M, K, N, ep);

    if (r != CUBLAS_STATUS_SUCCESS && *st == CUBLAS_STATUS_SUCCESS) {
        *st = r;
    }
}

/* SwiGLU after the gate|up product, into hb */
static gemm_epi_t
epi_swiglu(const cu_engine_t *e)
{
    gemm_epi_t ep = { GEMV_SWIGLU, e->dt, { e->hb, NULL, NULL, 0.0f, NULL } };

    return ep;
}

/* x += the product; xb = RMSNorm(x) * w, for the product after it */
static gemm_epi_t
epi_norm(const cu_engine_t *e, float *x, const float *w)
{
    gemm_epi_t ep = { GEMV_NORM, e->dt, { e->xb, x, w, e->cfg.rms_eps,
                                          e->gemv_count } };

    return ep;
}

/*
 * Whether a T-row step's product of K = dim and N rows with epilogue
 * kind makes its own input (the norm prologue, gemv_pro_t) from the
 * residual stream and the product before it (K_p x dim), which then
 * runs plain instead of ending in the add and norm: where the two
 * timed that way at start (tune_layer_gemms) take less than the other
 * way.  The prologue is each block's (every block reads the whole
 * input row), so which wins depends on the shapes and the step size.
 */
static int
pro_faster(const cu_engine_t *e, int T, int N, int kind, int K_p)
{
    int dim = e->cfg.dim;
    float c_pro, c_plain, p_norm, p_plain;

    c_pro = gemm_time_us(e->gemm, T, dim, N, kind, 1);
    c_plain = gemm_time_us(e->gemm, T, dim, N, kind, 0);
    p_norm = gemm_time_us(e->gemm, T, K_p, dim, GEMV_NORM, 0);
    p_plain = gemm_time_us(e->gemm, T, K_p, dim, GEMV_PLAIN, 0);
    return c_pro > 0.0f && c_plain > 0.0f && p_norm > 0.0f
           && p_plain > 0.0f && c_pro + p_plain < c_plain + p_norm;
}

/* ... for q|k|v (after down) and gate|up (after o), once the shapes of
 * a T-row step are tuned */
static void
pro_decide(cu_engine_t *e, int T)
{
    e->pro_qkv[T] = pro_faster(e, T, e->qkv_dim, GEMV_ROPE,
                               e->cfg.hidden_dim);
    e->pro_gu[T] = pro_faster(e, T, 2 * e->cfg.hidden_dim, GEMV_SWIGLU,
                              e->q_dim);
}

/* what forward() runs: kind GEMV_ROPE for q|k|v, GEMV_SWIGLU gate|up */
static int
norm_pro(const cu_engine_t *e, int T, int kind)
{
    if (!e->norm_pro || e->cfg.post_norms || T > GEMV_MAX_M) {
        return 0;
    }
    return kind == GEMV_ROPE ? e->pro_qkv[T] : e->pro_gu[T];
}

/* ... and its operands: x + y into x_out, normed with w */
static gemv_pro_t
pro_of(const cu_engine_t *e, float *x, const float *w, float *x_out)
{
    gemv_pro_t p = { x, e->y, w, e->cfg.rms_eps, x_out };

    return p;
}

/* layer l's part of the KV cache: its start in block 0 */
static char *
kv_layer(const cu_engine_t *e, int l)
{
    return e->kvbuf + (size_t) l * e->kv_layer_stride * e->esz;
}

/* RoPE and the K/V store after the q|k|v product, into layer l's cache */
static gemm_epi_t
epi_rope(const cu_engine_t *e, int l)
{
    const model_config_t *c = &e->cfg;
    gemm_epi_t ep = { GEMV_ROPE, e->dt, { NULL, NULL, NULL, 0.0f, NULL } };

    ep.r.st = e->dst;
    ep.r.kv_layer = kv_layer(e, l);
    ep.r.block_stride = e->kv_block_stride;
    ep.r.bias = e->layers[l].b_qkv;
    ep.r.inv_freq = e->inv_freq;
    ep.r.n_heads = c->n_heads;
    ep.r.n_kv_heads = c->n_kv_heads;
    ep.r.head_dim = c->head_dim;
    ep.r.rope_dim = c->rope_dim;
    ep.r.interleaved = c->rope_interleaved;
    ep.r.block_size = e->block_size;
    return ep;
}

/* Whether the o and down products carry the residual add and the next
 * norm (epi_norm): not for Glm4, whose outputs are normed themselves
 * before the add. */
static int
norm_chained(const cu_engine_t *e)
{
    return !e->cfg.post_norms;
}

/* pick the fastest kernel for each layer product of a T-row step, with
 * the epilogues forward() gives them */
static void
tune_layer_gemms(cu_engine_t *e, int T)
{
    const model_config_t *c = &e->cfg;
    const cu_layer_t *L = &e->layers[0];
    int dim = c->dim, h = c->hidden_dim;
    gemm_epi_t sw = epi_swiglu(e), nf = epi_norm(e, e->x, L->ffn_norm);
    gemm_epi_t na = epi_norm(e, e->x, L->attn_norm), rp = epi_rope(e, 0);

    gemm_tune(e->gemm, e->qkv, e->xb, L->w_qkv, T, dim, e->qkv_dim, &rp);
    if (norm_chained(e) && e->norm_pro && T <= GEMV_MAX_M) {
        /* the two consumers again, making their input (norm_pro) */
        gemm_epi_t rpp = rp, swp = sw;

        rpp.p = pro_of(e, e->x, L->attn_norm, e->x2);
        swp.p = pro_of(e, e->x, L->ffn_norm, e->x2);
        gemm_tune(e->gemm, e->qkv, e->xb, L->w_qkv, T, dim, e->qkv_dim,
                  &rpp);
        gemm_tune(e->gemm, e->gu, e->xb, L->w_gate_up, T, dim, 2 * h, &swp);
    }
    gemm_tune(e->gemm, e->y, e->att, L->wo, T, e->q_dim, dim,
              norm_chained(e) ? &nf : NULL);
    gemm_tune(e->gemm, e->y, e->att, L->wo, T, e->q_dim, dim, NULL);
    gemm_tune(e->gemm, e->gu, e->xb, L->w_gate_up, T, dim, 2 * h, &sw);
    if (norm_chained(e) && c->n_layers > 1) {
        gemm_tune(e->gemm, e->y, e->hb, L->w_down, T, h, dim, &na);
    }
    gemm_tune(e->gemm, e->y, e->hb, L->w_down, T, h, dim, NULL);
    if (T <= GEMV_MAX_M && !e->settled[T]) {
        pro_decide(e, T);
    }
}

/* ... and the LM head's too, for a B-row decode step */
static void
tune_gemms(cu_engine_t *e, int B)
{
    const model_config_t *c = &e->cfg;

    kc_pdl_step(B <= e->pdl_rows);      /* as forward() will run them */
    tune_layer_gemms(e, B);
    gemm_tune(e->gemm, e->logits, e->xl, e->lm_head, B, c->dim,
              c->vocab_size, NULL);
    if (e->tune_log) {
        log_info("cuda engine: %d-row steps: norm prologue in q|k|v %s, "
                 "in gate|up %s", B,
                 norm_pro(e, B, GEMV_ROPE) ? "yes" : "no",
                 norm_pro(e, B, GEMV_SWIGLU) ? "yes" : "no");
    }
}

/* blocks per context for attention over T tokens: enough blocks for two
 * per multiprocessor (the decode kernel on tensor cores: its own rule),
 * within the scratch */
static int
att_splits(const cu_engine_t *e, int T)
{
    const model_config_t *c = &e->cfg;
    int group = c->n_heads / c->n_kv_heads;
    long blocks, n;

    if (kc_att_dec_used(e->dt, c->head_dim, T)) {
        /* at most KC_ATT_MAX_SPLIT */
        n = kc_att_dec_splits(T, c->n_heads, c->n_kv_heads, e->n_sm);
    } else {
        blocks = (long) T * c->n_kv_heads
                 * ((group + KC_ATT_MAXG - 1) / KC_ATT_MAXG);
        n = (2L * e->n_sm + blocks - 1) / blocks;
        n = n < KC_ATT_MAX_SPLIT ? n : KC_ATT_MAX_SPLIT;
    }
    /* splits that fit one cluster merge without a kernel after them
     * (kc_att_cluster); with 1 or 2 tokens a step fewer splits, to fit,
     * still paid (1B and Qwen-size, H100: +4-8%), with 8 not (Qwen-size
     * 8 splits clustered: -6.5% against 16 and the merge kernel) */
    if (T <= 2 && n > kc_att_max_split()) {
        n = kc_att_max_split();
    }
    while (n > 1 && kc_attention_part_floats(T, c->n_heads, c->head_dim,
                                             (int) n) > e->att_part_floats)
    {
        n--;
    }
    return n > 1 ? (int) n : 1;
}

/*
 * T rows of tokens (padding included), R rows of logits: everything
 * between the upload of the step's inputs and the download of the
 * sampled ids.  Also what a graph records.  tiled: the step may hold a
 * prefill chunk (an item of several tokens), whose rows the tensor-core
 * kernel takes; 0 in a decode graph.
 */
static cublasStatus_t
forward(cu_engine_t *e, int T, int R, int tiled)
{
    const model_config_t *c = &e->cfg;
    cudaStream_t s = e->stream;
    kc_step_t st = e->dst;
    cublasStatus_t bs = CUBLAS_STATUS_SUCCESS;
    int dim = c->dim, h = c->hidden_dim, n_split = att_splits(e, T), l;
    /* the residual stream and its other buffer: a norm prologue writes
     * x + y to the other one, which is the stream from then on */
    float *xr = e->x, *xo = e->x2, *xt;
    int pro_qkv = norm_pro(e, T, GEMV_ROPE);
    int pro_gu = norm_pro(e, T, GEMV_SWIGLU);

    /* programmatic dependent launch pays where kernels are short (the
     * products of few rows): at 16 rows +2.6% (1B) and +4.0% (Qwen-0.5B
     * shapes), at 32 0% and +1.6%; at 128 it cost 2.5% and 5.6%
     * (ab-decode with NGX_GPU_PDL_ROWS, which sets this bound) */
    kc_pdl_step(T <= e->pdl_rows);
    kc_embed(s, e->dt, e->x, e->tok_emb, st, T, dim);
    for (l = 0; l < c->n_layers; l++) {
        const cu_layer_t *L = &e->layers[l];
        char *kv_l = kv_layer(e, l);
        int last = l + 1 == c->n_layers;
        gemm_epi_t sw = epi_swiglu(e), rp = epi_rope(e, l), nf, na;

        /* x += the last layer's feed-forward output; xb = norm(x): done
         * by the down product's epilogue when chained, or by this
         * product's prologue */
        if (l == 0 || !norm_chained(e)) {
            kc_rmsnorm(s, e->dt, e->xb, xr, l > 0 ? e->y : NULL,
                       L->attn_norm, NULL, T, dim, c->rms_eps, l > 0);
        } else if (pro_qkv) {
            rp.p = pro_of(e, xr, L->attn_norm, xo);
            xt = xr, xr = xo, xo = xt;
        }
        /* q|k|v, then RoPE and the K/V store (in the product's kernel at
         * few rows); every row's K/V is stored before any row attends: a
         * prefill chunk sees its own earlier tokens */
        gemv_trigger_first(e->trig & TRIG_QKV);
        gemm(e, e->qkv, e->xb, L->w_qkv, T, dim, e->qkv_dim, &rp, &bs);
        /* With cuDNN (staged by cu_begin, never in a graph) the prefill
         * rows are its, the decode rows the per-token kernel's. */
        if (e->dnn_step) {
            if (kc_dnn_attention(e->dnn, s, e->att, e->qkv, kv_l, T) != 0) {
                e->dnn_fail = 1;
            }
        }
        if (!e->dnn_step || e->dnn_decode) {
            kc_attention(s, e->dt, e->att, e->att_part, n_split,
                         e->dnn_step ? 2 : tiled, e->qkv, kv_l,
                         e->kv_block_stride, st, T, c->n_heads,
                         c->n_kv_heads, c->head_dim, e->block_size);
        }
        if (norm_chained(e)) {
            /* x += o's output; xb = ffn_norm(x): in o's epilogue, or in
             * gate|up's prologue */
            nf = epi_norm(e, xr, L->ffn_norm);
            gemv_trigger_first(e->trig & TRIG_O);
            gemm(e, e->y, e->att, L->wo, T, e->q_dim, dim,
                 pro_gu ? NULL : &nf, &bs);
        } else {
            /* Glm4: the attention output is normed before the residual
             * add; in place, in f32 */
            gemm(e, e->y, e->att, L->wo, T, e->q_dim, dim, NULL, &bs);
            kc_rmsnorm(s, KC_F32, e->y, e->y, NULL, L->post_attn_norm, NULL,
                       T, dim, c->rms_eps, 0);
            kc_rmsnorm(s, e->dt, e->xb, xr, e->y, L->ffn_norm, NULL, T,
                       dim, c->rms_eps, 1);
        }
        if (pro_gu) {
            sw.p = pro_of(e, xr, L->ffn_norm, xo);
            xt = xr, xr = xo, xo = xt;
        }
        gemv_trigger_first(e->trig & TRIG_GU);
        gemm(e, e->gu, e->xb, L->w_gate_up, T, dim, 2 * h, &sw, &bs);
        /* the next layer's x += y and norm, or (last) the final norm's */
        na = epi_norm(e, xr, last ? NULL : e->layers[l + 1].attn_norm);
        gemv_trigger_first(e->trig & TRIG_DOWN);
        gemm(e, e->y, e->hb, L->w_down, T, h, dim,
             norm_chained(e) && !last && !pro_qkv ? &na : NULL, &bs);
        if (c->post_norms) {
            kc_rmsnorm(s, KC_F32, e->y, e->y, NULL, L->post_ffn_norm, NULL,
                       T, dim, c->rms_eps, 0);
        }
    }
    /* the last residual add, the final norm and lm_head only for the
     * rows whose logits are used */
    kc_rmsnorm(s, e->dt, e->xl, xr, e->y, e->final_norm, st.row_tok, R,
               dim, c->rms_eps, 0);
    gemv_trigger_first(e->trig & TRIG_HEAD);
    gemm(e, e->logits, e->xl, e->lm_head, R, dim, c->vocab_size, NULL, &bs);
    gemv_trigger_first(0);
    ks_sample(s, e->d_out, e->d_lp, e->logits, R, c->vocab_size, st,
              e->drows, e->d_counts, e->sample_scratch);
    return bs;
}

static int
bucket_of(const cu_engine_t *e, int n)
{
    int b;

    for (b = 0; b < e->n_buckets; b++) {
        if (n <= e->buckets[b]) {
            return b;
        }
    }
    return -1;
}

static int
step_fail(cu_engine_t *e, const char *what, const char *why)
{
    snprintf(e->err, sizeof(e->err), "cuda engine: %s: %s", what, why);
    return -1;
}

/*
 * An eager step's prefill items (2+ tokens; the engine packs an item's
 * tokens together) for cuDNN, after the step's inputs went up: sets
 * dnn_step when its plans cover the step, dnn_decode when decode rows
 * are left for the per-token kernel.  0, or -1 on a CUDA error.
 */
static int
dnn_stage(cu_engine_t *e, const engine_item_t *items, int n)
{
    int *q_row = e->dnn_items, *q_len = q_row + e->max_seqs;
    int *kv_len = q_len + e->max_seqs, *tab = kv_len + e->max_seqs;
    int i, row = 0, np = 0, r;

    e->dnn_step = 0;
    e->dnn_decode = 0;
    if (e->dnn == NULL) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (items[i].n_tokens > 1) {
            q_row[np] = row;
            q_len[np] = items[i].n_tokens;
            kv_len[np] = items[i].pos + items[i].n_tokens;
            tab[np++] = e->h_item_table[i];
        } else {
            e->dnn_decode = 1;
        }
        row += items[i].n_tokens;
    }
    if (np == 0) {
        return 0;
    }
    r = kc_dnn_stage(e->dnn, e->stream, np, q_row, q_len, kv_len, tab,
                     e->dst.tables);
    e->dnn_step = r == 1;
    return r < 0 ? -1 : 0;
}

/*
 * A step's upload or download: dst and src as cudaMemcpyAsync takes
 * them, dst_d and src_d the same memory as the device addresses it (the
 * pinned buffers are mapped).  Small ones of whole 4-byte words (what
 * kc_copy moves) by kc_copy: a copy engine's transfer costs each step
 * several microseconds more than a kernel (NGX_GPU_SM_COPY=0: the copy
 * engine, to compare).
 */
static cudaError_t
stage_copy(cu_engine_t *e, void *dst, void *dst_d, const void *src,
    const void *src_d, size_t n, cudaMemcpyKind kind)
{
    if (e->sm_copy && n <= SM_COPY_MAX && n % 4 == 0) {
        kc_copy(e->stream, dst_d, src_d, n);
        return cudaGetLastError();
    }
    return cudaMemcpyAsync(dst, src, n, kind, e->stream);
}

/* pend[k]'s host buffers become the ones a step is packed into */
static void
stage_bind(cu_engine_t *e, int k)
{
    cu_pending_t *p = &e->pend[k];
    kc_step_t h = stage_ptrs(e, p->h_stage);
    ks_rows_t hr = stage_rows(e, p->h_stage);

    e->h_stage = p->h_stage;
    e->h_out = p->h_out;
    e->h_lp = p->h_lp;
    e->m_stage = p->m_stage;
    e->m_out = p->m_out;
    e->m_lp = p->m_lp;
    e->row_item = p->row_item;
    e->h_item_table = (int32_t *) h.item_table;
    e->h_row_tok = (int32_t *) h.row_tok;
    e->h_temp = (float *) h.temperature;
    e->h_top_p = (float *) h.top_p;
    e->h_unif = (float *) h.uniform;
    e->h_top_k = (int32_t *) hr.top_k;
    e->h_presence = (float *) hr.presence;
    e->h_frequency = (float *) hr.frequency;
    e->h_count_row = (int32_t *) hr.count_row;
    e->h_n_lp = (int32_t *) hr.n_logprobs;
    e->h_var = (int32_t *) h.tables;
}

/*
 * Queue a step: pack, upload, run, and the sampled ids (logprobs, and
 * the logits when asked) down into pend[k], whose event says when they
 * are there.  A token ENGINE_TOKEN_OF(i) becomes the row of item i of the
 * step begun last, which the embedding reads from d_out: that step's
 * samples, still there since only this step's sampling overwrites them.
 */
static int
cu_begin(cu_engine_t *e, const kv_pool_t *kv, const engine_item_t *items,
    int n, float *logits)
{
    int vocab = e->cfg.vocab_size, bs = e->block_size;
    int T = 0, R = 0, n_var, i, j, b = -1, decode = 1, rows, run_rows;
    int any_lp = 0, k;
    cublasStatus_t blas = CUBLAS_STATUS_SUCCESS;
    cudaError_t r;
    size_t bytes;
    cu_pending_t *p, *last;
    int mp = -1, mb = -1, mv = 0;

    e->err[0] = '\0';
    if (e->p_n == ENGINE_MAX_PENDING) {
        return step_fail(e, "begin", "too many steps pending");
    }
    k = (e->p_head + e->p_n) % ENGINE_MAX_PENDING;
    p = &e->pend[k];
    last = e->p_last >= 0 ? &e->pend[e->p_last] : NULL;
    stage_bind(e, k);
    for (i = 0; i < n; i++) {
        T += items[i].n_tokens;
        decode &= items[i].n_tokens == 1;
    }
    if (decode && e->use_graphs) {
        b = bucket_of(e, n);
    } else if (e->use_graphs && logits == NULL) {
        mb = mixed_of(e, items, n, T, &mp, &mv);
    }
    /* token rows computed */
    rows = b >= 0 ? e->buckets[b]
           : mb >= 0 ? e->buckets[mb] + mixp[mp] : T;

    /* 1. pack the inputs: tokens, then each item's block table */
    n_var = 3 * rows;
    for (i = 0, T = 0; i < n; i++) {
        const engine_item_t *it = &items[i];
        int nb = (it->pos + it->n_tokens + bs - 1) / bs;

        for (j = 0; j < it->n_tokens; j++, T++) {
            kc_token_t *tk = (kc_token_t *) e->h_var + T;
            tk->tok = it->tokens[j];
            if (tk->tok < 0) {
                /* engine.c checked: item "from" of the last step sampled */
                int from = ENGINE_TOKEN_OF(0) - tk->tok;
                if (last == NULL || last->item_row[from] < 0) {
                    return step_fail(e, "begin", "a token of a step that "
                                     "did not sample it");
                }
                tk->tok = ENGINE_TOKEN_OF(last->item_row[from]);
            }
            tk->pos = it->pos + j;
            tk->item = i;
        }
        e->h_item_table[i] = n_var;
        memcpy(e->h_var + n_var, kv_pool_table(kv, it->seq),
               (size_t) nb * 4);
        n_var += nb;

        /* a logits row for every item in a graph; else only those used */
        if (b >= 0 || mb >= 0 || it->sample || logits != NULL) {
            e->h_row_tok[R] = T - 1;
            if (it->sample) {
                if (stage_row_sample(e, R, it) != 0) {
                    return -1;
                }
                any_lp |= it->lp != NULL;
            } else {
                stage_row_off(e, R);
            }
            p->row_lp[R] = it->sample ? it->lp : NULL;
            p->row_sample[R] = it->sample != 0;
            e->row_item[R++] = i;
        }
    }
    if (b >= 0) {
        stage_pad(e, n, rows, &n_var);
        R = rows;
    } else if (mb >= 0) {
        stage_pad_mixed(e, n, T, rows, R, e->buckets[mb], &n_var);
        R = e->buckets[mb];
    }
    run_rows = R;
    if (R == 0) {
        /* nothing to sample: the layers still run (they fill the KV
         * cache); one row of logits is computed and ignored */
        e->h_row_tok[0] = T - 1;
        stage_row_off(e, 0);
        run_rows = 1;
    }

    /* 2. up in one copy, run, sampled ids down in one copy */
    sc_step_start(&e->clock, e->stream,
                  b >= 0 ? SC_DECODE : mb >= 0 ? SC_MIXED : SC_EAGER, T);
    bytes = e->var_off + (size_t) n_var * 4;
    r = stage_copy(e, e->d_stage, e->d_stage, e->h_stage, e->m_stage, bytes,
                   cudaMemcpyHostToDevice);
    if (r != cudaSuccess) {
        return step_fail(e, "upload", cudaGetErrorString(r));
    }
    if (b >= 0 || mb >= 0) {
        r = cudaGraphLaunch(b >= 0 ? e->graphs[b]
                            : e->mgraphs[mb][mp][mv], e->stream);
        if (r != cudaSuccess) {
            return step_fail(e, "graph launch", cudaGetErrorString(r));
        }
        e->graph_steps[b >= 0 ? 0 : 1]++;
    } else {
        if (dnn_stage(e, items, n) != 0) {
            return step_fail(e, "cuDNN attention inputs", "upload failed");
        }
        /* T > R: more token rows than logits rows, so some item has
         * several tokens */
        blas = forward(e, T, run_rows, T > run_rows);
        e->dnn_step = 0;
        if (blas != CUBLAS_STATUS_SUCCESS) {
            return step_fail(e, "cuBLAS", cublasGetStatusString(blas));
        }
        if (e->dnn_fail) {
            e->dnn_fail = 0;
            return step_fail(e, "cuDNN attention", kc_dnn_error(e->dnn));
        }
    }
    if (R > 0) {
        r = stage_copy(e, e->h_out, e->m_out, e->d_out, e->d_out,
                       (size_t) R * 4, cudaMemcpyDeviceToHost);
        if (r == cudaSuccess && any_lp) {
            r = stage_copy(e, e->h_lp, e->m_lp, e->d_lp, e->d_lp,
                           (size_t) R * sizeof(engine_logprobs_t),
                           cudaMemcpyDeviceToHost);
        }
        if (r != cudaSuccess) {
            return step_fail(e, "download", cudaGetErrorString(r));
        }
    }
    if (logits != NULL) {
        for (j = 0; j < R; j++) {
            if (e->row_item[j] < 0) {
                continue;
            }
            r = cudaMemcpyAsync(logits + (size_t) e->row_item[j] * vocab,
                                e->logits + (size_t) j * vocab,
                                (size_t) vocab * 4, cudaMemcpyDeviceToHost,
                                e->stream);
            if (r != cudaSuccess) {
                return step_fail(e, "logits download", cudaGetErrorString(r));
            }
        }
    }
    sc_step_stop(&e->clock, e->stream);
    r = cudaEventRecord(p->done, e->stream);
    if (r != cudaSuccess) {
        return step_fail(e, "step", cudaGetErrorString(r));
    }

    /* item -> row, for the next step's ENGINE_TOKEN_OF() */
    for (i = 0; i < n; i++) {
        p->item_row[i] = -1;
    }
    for (j = 0; j < R; j++) {
        if (e->row_item[j] >= 0 && p->row_sample[j]) {
            p->item_row[e->row_item[j]] = j;
        }
    }
    p->R = R;
    e->p_last = k;
    e->p_n++;
    return 0;
}

/* wait for the oldest step queued; its ids and logprobs out */
static int
cu_end(cu_engine_t *e, int32_t *out_tokens)
{
    cu_pending_t *p = &e->pend[e->p_head];
    cudaError_t r;
    int i, j;
    int64_t t0;

    if (e->p_n == 0) {
        return step_fail(e, "end", "no step begun");
    }
    e->p_head = (e->p_head + 1) % ENGINE_MAX_PENDING;
    e->p_n--;

    t0 = e->clock.every ? mono_ns() : 0;
    r = cudaEventSynchronize(p->done);
    if (r == cudaSuccess) {
        r = cudaGetLastError();
    }
    if (r == cudaSuccess && e->clock.every) {
        sc_step_ended(&e->clock, mono_ns() - t0);
    }
    if (r != cudaSuccess) {
        return step_fail(e, "step", cudaGetErrorString(r));
    }
    for (j = 0; j < p->R; j++) {
        i = p->row_item[j];
        if (i >= 0 && p->row_sample[j]) {
            if (out_tokens != NULL) {
                out_tokens[i] = p->h_out[j];
            }
            if (p->row_lp[j] != NULL) {
                *p->row_lp[j] = p->h_lp[j];
            }
        }
    }
    return 0;
}

static int
cu_step(void *impl, const kv_pool_t *kv, const engine_item_t *items, int n,
    int32_t *out_tokens, float *logits)
{
    cu_engine_t *e = (cu_engine_t *) impl;

    if (cu_begin(e, kv, items, n, logits) != 0) {
        return -1;
    }
    return cu_end(e, out_tokens);
}

static int
cu_step_begin(void *impl, const kv_pool_t *kv, const engine_item_t *items,
    int n)
{
    return cu_begin((cu_engine_t *) impl, kv, items, n, NULL);
}

static int
cu_step_end(void *impl, int32_t *out_tokens)
{
    return cu_end((cu_engine_t *) impl, out_tokens);
}

/* --- graphs ---------------------------------------------------------------- */

/*
 * One graph of a T-token-row, R-logits-row step, from the staging already
 * packed (n_var ints of it) with padding only: an eager run first (loads
 * every kernel the graph will hold, cuBLAS's included, outside the
 * capture), the products' tuning (the LM head's too if lm_head), then
 * the capture.
 */
static int
make_graph(cu_engine_t *e, int T, int R, int tiled, int n_var, int lm_head,
    cudaGraphExec_t *exec, char *err, size_t errlen)
{
    cudaGraph_t g = NULL;
    cublasStatus_t bs;

    CU_TRY(cudaMemcpyAsync(e->d_stage, e->h_stage,
                           e->var_off + (size_t) n_var * 4,
                           cudaMemcpyHostToDevice, e->stream),
           "warm-up upload");
    bs = forward(e, T, R, tiled);
    CU_TRY(cudaStreamSynchronize(e->stream), "warm-up step");
    CU_TRY(cudaGetLastError(), "warm-up step");
    if (bs != CUBLAS_STATUS_SUCCESS) {
        return cu_fail(err, errlen, "cuda engine: cuBLAS: %s",
                       cublasGetStatusString(bs));
    }
    if (e->tune) {
        if (lm_head) {
            tune_gemms(e, T);
        } else {
            tune_layer_gemms(e, T);
        }
        CU_TRY(cudaStreamSynchronize(e->stream), "tuning");
    }

    CU_TRY(cudaStreamBeginCapture(e->stream, cudaStreamCaptureModeThreadLocal),
           "graph capture");
    bs = forward(e, T, R, tiled);
    CU_TRY(cudaStreamEndCapture(e->stream, &g), "graph capture");
    if (bs != CUBLAS_STATUS_SUCCESS) {
        cudaGraphDestroy(g);
        return cu_fail(err, errlen, "cuda engine: cuBLAS in a graph: %s",
                       cublasGetStatusString(bs));
    }
    CU_TRY(cudaGraphInstantiate(exec, g, 0), "graph instantiate");
    cudaGraphDestroy(g);
    return 0;

fail:
    if (g != NULL) {
        cudaGraphDestroy(g);
    }
    return -1;
}

/*
 * Two decode graphs timed in turn, SETTLE_ROUNDS rounds of SETTLE_REPLAYS
 * replays each, the best round of each in ms a replay into ta and tb;
 * 0, or -1 on an error.  In turn: timed one after the other, the second
 * graph came out 20-30 us a step slower than the first whatever it held
 * (H100, Llama-3.2-1B at batch 1: every swap and its reverse lost).
 */
#define SETTLE_REPLAYS  10
#define SETTLE_ROUNDS   4

static float
replays_ms(cu_engine_t *e, cudaGraphExec_t exec, cudaEvent_t a,
    cudaEvent_t b)
{
    float t;
    int i, ok;

    ok = cudaEventRecord(a, e->stream) == cudaSuccess;
    for (i = 0; i < SETTLE_REPLAYS && ok; i++) {
        ok = cudaGraphLaunch(exec, e->stream) == cudaSuccess;
    }
    ok = ok && cudaEventRecord(b, e->stream) == cudaSuccess
         && cudaEventSynchronize(b) == cudaSuccess
         && cudaEventElapsedTime(&t, a, b) == cudaSuccess;
    return ok ? t / SETTLE_REPLAYS : -1.0f;
}

static int
graphs_ms(cu_engine_t *e, cudaGraphExec_t ga, cudaGraphExec_t gb,
    float *ta, float *tb)
{
    cudaEvent_t a = NULL, b = NULL;
    float t;
    int k, ok;

    *ta = *tb = 1e30f;
    ok = cudaEventCreate(&a) == cudaSuccess
         && cudaEventCreate(&b) == cudaSuccess
         && cudaGraphLaunch(ga, e->stream) == cudaSuccess     /* warm-up */
         && cudaGraphLaunch(gb, e->stream) == cudaSuccess;
    for (k = 0; k < SETTLE_ROUNDS && ok; k++) {
        t = replays_ms(e, ga, a, b);
        ok = t > 0.0f;
        *ta = ok && t < *ta ? t : *ta;
        t = ok ? replays_ms(e, gb, a, b) : -1.0f;
        ok = t > 0.0f;
        *tb = ok && t < *tb ? t : *tb;
    }
    if (a) cudaEventDestroy(a);
    if (b) cudaEventDestroy(b);
    return ok ? 0 : -1;
}

/*
 * The picks of a B-row decode step settled in the step itself: each
 * product whose runner-up timed alone within SETTLE_RATIO of its pick,
 * and each norm prologue decision, is tried the other way in a decode
 * graph, and kept that way where the graph replays faster by
 * SETTLE_GAIN.  Timed alone, a product misses what the step gives it
 * (the next kernel's loads issued in its tail, the weights not in the
 * L2), and the prologue decision adds up such times: at 2 and 4 rows it
 * was often the slower way (H100: Llama-3.2-1B at batch 4 and Qwen
 * size at batch 2 decode 2.5-4% faster settled; Qwen size at 8 rows:
 * q|k|v's prologue off, 1193 -> 1135 us a replay).  About 1 s more at
 * start.  NGX_GPU_SETTLE=0: not done.
 * Also tried: each product whose pick is our kernel at 2 or more warps
 * a row, at one (gemm_lean): its fewer blocks leave room for the next
 * kernel's, which start early (TRIG_DEFAULT); the 1B's o at batch 1 was
 * +0.9% so (H100, forced; alone it times over 15% slower than its
 * pick, so it is no close runner-up).  NGX_GPU_SETTLE_LEAN=0: not
 * tried.
 */
#define SETTLE_RATIO  1.15f
#define SETTLE_GAIN   0.995f
#define SETTLE_MAX    16

/* what settle() tries the other way */
#define TRY_CLOSE     0             /* a product's close runner-up */
#define TRY_LEAN      1             /* a product at one warp a row */
#define TRY_PRO_QKV   2             /* the norm prologue in q|k|v */
#define TRY_PRO_GU    3             /* ... in gate|up */

/* the change, or (again) its undoing */
static void
settle_flip(cu_engine_t *e, int B, int kind, int idx)
{
    switch (kind) {
    case TRY_CLOSE:
        gemm_swap(e->gemm, idx);
        break;
    case TRY_LEAN:
        gemm_lean_swap(e->gemm, idx);
        break;
    case TRY_PRO_QKV:
        e->pro_qkv[B] ^= 1;
        break;
    default:
        e->pro_gu[B] ^= 1;
    }
}

/* one try: the graph with the change against the bucket's, kept where
 * faster (*t0: the kept graph's µs, *gain counts what was kept) */
static int
settle_try(cu_engine_t *e, int b, int n_var, int kind, int idx, float *t0,
    int *gain, char *err, size_t errlen)
{
    int B = e->buckets[b];
    cudaGraphExec_t g2;
    float t1;
    char what[200];

    settle_flip(e, B, kind, idx);
    if (make_graph(e, B, B, 0, n_var, 1, &g2, err, errlen) != 0) {
        return -1;
    }
    if (graphs_ms(e, e->graphs[b], g2, t0, &t1) != 0) {
        cudaGraphExecDestroy(g2);
        return cu_fail(err, errlen, "cuda engine: timing decode graphs");
    }
    /* what the try changed to, for both log lines */
    if (kind == TRY_CLOSE || kind == TRY_LEAN) {
        gemm_describe(e->gemm, idx, kind == TRY_LEAN, what, sizeof(what));
    } else {
        snprintf(what, sizeof(what), "norm prologue in %s %s",
                 kind == TRY_PRO_QKV ? "q|k|v" : "gate|up",
                 (kind == TRY_PRO_QKV ? e->pro_qkv[B] : e->pro_gu[B])
                 ? "on" : "off");
    }
    if (e->tune_log) {
        log_info("cuda engine: %d-row settle try: %s: %.1f -> %.1f us",
                 B, what, *t0 * 1000.0f, t1 * 1000.0f);
    }
    if (t1 < *t0 * SETTLE_GAIN) {
        cudaGraphExecDestroy(e->graphs[b]);
        e->graphs[b] = g2;
        log_info("cuda engine: %d-row steps settled: %s: %.1f -> %.1f us "
                 "a step", B, what, *t0 * 1000.0f, t1 * 1000.0f);
        *t0 = t1;
        (*gain)++;
        return 0;
    }
    cudaGraphExecDestroy(g2);
    settle_flip(e, B, kind, idx);               /* back */
    return 0;
}

static int
settle(cu_engine_t *e, int b, int n_var, char *err, size_t errlen)
{
    int B = e->buckets[b], idx[SETTLE_MAX], n, nl = 0, i, gain = 0;
    int dim = e->cfg.dim;
    cudaGraphExec_t g2;
    float t0, t1;

    t0 = t1 = 0.0f;
    if (e->tune_log) {
        /* the same picks in a new graph: the noise a swap must beat */
        if (make_graph(e, B, B, 0, n_var, 1, &g2, err, errlen) != 0) {
            return -1;
        }
        if (graphs_ms(e, e->graphs[b], g2, &t0, &t1) == 0) {
            log_info("cuda engine: %d-row settle control (the same picks "
                     "in a new graph): %.1f -> %.1f us", B, t0 * 1000.0f,
                     t1 * 1000.0f);
        }
        cudaGraphExecDestroy(g2);
    }
    e->settled[B] = 1;
    n = gemm_close(e->gemm, B, SETTLE_RATIO, idx, SETTLE_MAX);
    for (i = 0; i < n; i++) {
        if (settle_try(e, b, n_var, TRY_CLOSE, idx[i], &t0, &gain, err,
                       errlen) != 0)
        {
            return -1;
        }
    }
    /* after the runner-ups, which may have changed a product's kernel */
    if (e->settle_lean) {
        nl = gemm_lean(e->gemm, B, SETTLE_RATIO, idx, SETTLE_MAX);
    }
    for (i = 0; i < nl; i++) {
        if (settle_try(e, b, n_var, TRY_LEAN, idx[i], &t0, &gain, err,
                       errlen) != 0)
        {
            return -1;
        }
    }
    if (e->norm_pro && !e->cfg.post_norms) {
        /* only where the other way was tuned */
        if (gemm_time_us(e->gemm, B, dim, e->qkv_dim, GEMV_ROPE, 1) > 0
            && settle_try(e, b, n_var, TRY_PRO_QKV, 0, &t0, &gain, err,
                          errlen) != 0)
        {
            return -1;
        }
        if (gemm_time_us(e->gemm, B, dim, 2 * e->cfg.hidden_dim,
                         GEMV_SWIGLU, 1) > 0
            && settle_try(e, b, n_var, TRY_PRO_GU, 0, &t0, &gain, err,
                          errlen) != 0)
        {
            return -1;
        }
    }
    /* each flip that did not pay was undone: the picks are those of the
     * graph kept */
    if (e->tune_log) {
        log_info("cuda engine: %d-row steps: %d close picks, %d at one "
                 "warp a row and 2 prologue decisions tried in the step, "
                 "%d changed, %.1f us a step", B, n, nl, gain,
                 t0 * 1000.0f);
    }
    return 0;
}

/* every graph made so far destroyed */
static void
free_graphs(cu_engine_t *e)
{
    int b, p, v;

    for (b = 0; b < e->n_buckets; b++) {
        if (e->graphs[b] != NULL) {
            cudaGraphExecDestroy(e->graphs[b]);
            e->graphs[b] = NULL;
        }
        for (p = 0; p < MIX_BUCKETS; p++) {
            for (v = 0; v < 2; v++) {
                if (e->mgraphs[b][p][v] != NULL) {
                    cudaGraphExecDestroy(e->mgraphs[b][p][v]);
                    e->mgraphs[b][p][v] = NULL;
                }
            }
        }
    }
}

/*
 * Decode graphs for bucket sizes 1, 2, 4, ... min(max_seqs,
 * max_batch_tokens), and mixed ones: bucket b's rows, then room for
 * mixp[p] more token rows, in the two kinds of attention (mgraphs)
 * (NGX_GPU_MIXED_GRAPHS=0: none, such steps run eagerly).
 */
static int
make_graphs(cu_engine_t *e, char *err, size_t errlen)
{
    int cap = e->max_seqs < e->max_tokens ? e->max_seqs : e->max_tokens;
    int b, p, v, B, T, n_var;
    const char *env = getenv("NGX_GPU_MIXED_GRAPHS");
    const char *settle_env = getenv("NGX_GPU_SETTLE");
    int tiles = kc_att_tiles(e->dt, e->cfg.head_dim);

    for (B = 1; B < cap && e->n_buckets < MAX_BUCKETS - 1; B *= 2) {
        e->buckets[e->n_buckets++] = B;
    }
    e->buckets[e->n_buckets++] = cap;

    for (b = 0; b < e->n_buckets; b++) {
        B = e->buckets[b];
        n_var = 3 * B;
        stage_pad(e, 0, B, &n_var);
        if (make_graph(e, B, B, 0, n_var, 1, &e->graphs[b], err, errlen)
            != 0)
        {
            return -1;
        }
        if (e->tune && B <= GEMV_MAX_M
            && (settle_env == NULL || strcmp(settle_env, "0") != 0)
            && settle(e, b, n_var, err, errlen) != 0)
        {
            return -1;
        }
    }
    if (env != NULL && strcmp(env, "0") == 0) {
        return 0;
    }
    for (b = 0; b < e->n_buckets; b++) {
        B = e->buckets[b];
        for (p = 0; p < MIX_BUCKETS; p++) {
            T = B + mixp[p];
            if (T > e->max_tokens) {
                continue;
            }
            for (v = 0; v < 1 + tiles; v++) {
                n_var = 3 * T;
                stage_pad_mixed(e, 0, 0, T, 0, B, &n_var);
                if (make_graph(e, T, B, v, n_var, 0, &e->mgraphs[b][p][v],
                               err, errlen) != 0)
                {
                    return -1;
                }
            }
        }
    }
    return 0;
}

/* --- create / destroy ---------------------------------------------------- */

static void cu_destroy(void *impl);

static void *
cu_create(const model_t *m, const engine_opts_t *o, int device,
    int *kv_blocks, char *err, size_t errlen)
{
    const model_config_t *c = &m->cfg;
    cu_engine_t *e;
    cudaDeviceProp prop;
    carve_t cv;
    size_t free_b, total_b, block_bytes, need;
    int64_t nb, cap;
    const char *dts, *env;
    int d;

    e = (cu_engine_t *) calloc(1, sizeof(*e));
    if (e == NULL) {
        cu_fail(err, errlen, "cuda engine: out of memory");
        return NULL;
    }
    e->cfg = *c;
    e->device = device;
    snprintf(e->name, sizeof(e->name), "cuda:%d", device);
    e->q_dim = c->n_heads * c->head_dim;
    e->kv_dim = c->n_kv_heads * c->head_dim;
    e->qkv_dim = e->q_dim + 2 * e->kv_dim;
    e->max_seqs = o->max_seqs;
    e->max_tokens = o->max_batch_tokens;
    e->block_size = o->kv_block_size;
    e->max_blocks = (c->max_seq_len + e->block_size - 1) / e->block_size;
    e->rng = 0x6e67782d677075ull;
    env = getenv("NGX_GPU_CUDA_GRAPHS");
    e->use_graphs = env == NULL || strcmp(env, "0") != 0;
    env = getenv("NGX_GPU_GEMM_TUNE");
    e->tune = env == NULL || strcmp(env, "0") != 0;
    e->tune_log = getenv("NGX_GPU_GEMM_LOG") != NULL;
    env = getenv("NGX_GPU_TRIGGER");
    e->trig = env != NULL ? atoi(env) : TRIG_DEFAULT;
    env = getenv("NGX_GPU_PDL_ROWS");
    e->pdl_rows = env != NULL ? atoi(env) : PDL_MAX_ROWS;
    env = getenv("NGX_GPU_SM_COPY");
    e->sm_copy = env == NULL || strcmp(env, "0") != 0;
    env = getenv("NGX_GPU_SETTLE_LEAN");
    e->settle_lean = env == NULL || strcmp(env, "0") != 0;
    env = getenv("NGX_GPU_CUDNN_ATTENTION");
    e->dnn_want = env == NULL || strcmp(env, "0") != 0;
    env = getenv("NGX_GPU_NORM_PROLOGUE");
    e->norm_pro = env == NULL || strcmp(env, "0") != 0;

    /* the storage dtype: the option, else the checkpoint's */
    dts = o->dtype && o->dtype[0] ? o->dtype
          : c->torch_dtype[0] ? c->torch_dtype : "bfloat16";
    d = parse_dtype(dts);
    if (d < 0) {
        cu_fail(err, errlen, "cuda engine: dtype \"%s\": expected bfloat16, "
                "float16 or float32", dts);
        goto fail_early;
    }
    e->dt = (kc_dtype_t) d;
    e->esz = kc_dtype_size(e->dt);
    /* cuDNN takes q rounded to bf16/f16.  GLM-4 in bf16 stays with our
     * tensor-core kernel (q as hi + lo): its norm on the attention output
     * passes the output's relative error to the residual undamped, and
     * one bf16 rounding of q puts its logits over 2e-2 of HF's. */
    if (e->dt == KC_F32 || (e->dt == KC_BF16 && c->post_norms)) {
        e->dnn_want = 0;
    }
    e->cuda_dt = e->dt == KC_F32 ? CUDA_R_32F
                 : e->dt == KC_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    if (c->dim > KC_NORM_MAX_DIM) {
        cu_fail(err, errlen, "cuda engine: hidden_size %d: the norm kernel "
                "takes at most %d", c->dim, KC_NORM_MAX_DIM);
        goto fail_early;
    }
    if (c->head_dim % 8 != 0 || c->head_dim > KC_ATT_MAX_HEAD_DIM) {
        cu_fail(err, errlen, "cuda engine: head_dim %d: the attention kernel "
                "takes multiples of 8 up to %d", c->head_dim,
                KC_ATT_MAX_HEAD_DIM);
        goto fail_early;
    }

    e->layers = (cu_layer_t *) calloc((size_t) c->n_layers,
                                      sizeof(*e->layers));
    /* the counts start zeroed with the activations: each counts 0 */
    e->counted = (int *) calloc((size_t) e->max_seqs, sizeof(int));
    if (e->layers == NULL || e->counted == NULL) {
        cu_fail(err, errlen, "cuda engine: out of memory");
        goto fail_early;
    }

    CU_TRY(cudaSetDevice(device), "cudaSetDevice");
    CU_TRY(cudaGetDeviceProperties(&prop, device), "device properties");
    e->n_sm = prop.multiProcessorCount;
    {
        cudaError_t pr = kc_probe();
        if (pr != cudaSuccess) {
            cu_fail(err, errlen, "cuda engine: %s (sm_%d%d) cannot run this "
                    "build's kernels (built for sm_90): %s", prop.name,
                    prop.major, prop.minor, cudaGetErrorString(pr));
            goto fail;
        }
    }
    CU_TRY(cudaStreamCreateWithFlags(&e->stream, cudaStreamNonBlocking),
           "stream");
    if (cublasCreate(&e->blas) != CUBLAS_STATUS_SUCCESS) {
        cu_fail(err, errlen, "cuda engine: cuBLAS cannot start");
        goto fail;
    }

    /* sizes first: refuse a model that cannot fit, with the numbers */
    cv = carve_t { NULL, 0, ALIGN };
    carve_weights(e, &cv);
    e->wbytes = cv.used;
    stage_layout(e);
    cv = carve_t { NULL, 0, ALIGN };
    carve_acts(e, &cv);
    e->abytes = cv.used;
    CU_TRY(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    need = e->wbytes + e->abytes + HEADROOM;
    if (need > free_b) {
        cu_fail(err, errlen, "cuda engine: %s needs %zu MiB (weights in %s "
                "%zu MiB, activations for %d tokens %zu MiB) but %s has %zu "
                "of %zu MiB free", m->name, need >> 20, kc_dtype_name(e->dt),
                e->wbytes >> 20, e->max_tokens, e->abytes >> 20, prop.name,
                free_b >> 20, total_b >> 20);
        goto fail;
    }

    CU_TRY(dev_alloc(e, &e->wbuf, e->wbytes), "weights");
    cv = carve_t { e->wbuf, 0, ALIGN };
    carve_weights(e, &cv);
    if (upload_weights(e, m, err, errlen) != 0) {
        goto fail;
    }
    CU_TRY(dev_alloc(e, &e->abuf, e->abytes), "activations");
    cv = carve_t { e->abuf, 0, ALIGN };
    carve_acts(e, &cv);
    CU_TRY(cudaMemset(e->abuf, 0, e->abytes), "activations");
    e->dst = stage_ptrs(e, e->d_stage);
    e->drows = stage_rows(e, e->d_stage);
    if (cublasSetStream(e->blas, e->stream) != CUBLAS_STATUS_SUCCESS
        || cublasSetWorkspace(e->blas, e->blas_ws, BLAS_WS_BYTES)
           != CUBLAS_STATUS_SUCCESS
        || (e->gemm = gemm_create(e->stream, e->blas, e->blas_ws,
                                  BLAS_WS_BYTES, e->cuda_dt)) == NULL)
    {
        cu_fail(err, errlen, "cuda engine: cuBLAS setup failed");
        goto fail;
    }

    /* KV pool: kv_blocks, else kv_fraction of what is free now; never
     * more than max_seqs sequences of max_seq_len can use; plus one
     * scratch block */
    e->kv_layer_stride = (size_t) 2 * e->block_size * e->kv_dim;
    e->kv_block_stride = e->kv_layer_stride * c->n_layers;
    block_bytes = e->kv_block_stride * e->esz;
    CU_TRY(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    nb = o->kv_blocks;
    if (nb == 0) {
        double f = o->kv_fraction > 0 ? o->kv_fraction : 0.9;
        size_t avail = free_b > HEADROOM ? free_b - HEADROOM : 0;
        nb = (int64_t) ((double) avail * f / (double) block_bytes) - 1;
    }
    cap = kv_pool_blocks_needed(e->max_seqs, c->max_seq_len, e->block_size);
    nb = nb < cap ? nb : cap;
    if (nb < 1 || (size_t) (nb + 1) * block_bytes > free_b) {
        cu_fail(err, errlen, "cuda engine: no room for the KV cache: a block "
                "of %d tokens takes %zu KiB, %zu MiB free after weights and "
                "activations", e->block_size, block_bytes >> 10,
                free_b >> 20);
        goto fail;
    }
    e->n_kv_blocks = (int) nb;
    e->kvbytes = (size_t) (nb + 1) * block_bytes;
    CU_TRY(dev_alloc(e, &e->kvbuf, e->kvbytes), "KV cache");
    CU_TRY(cudaMemset(e->kvbuf, 0, e->kvbytes), "KV cache");
    if (e->dnn_want) {
        kc_dnn_shape_t sh = dnn_shape(e);
        kc_dnn_info_t in;
        char why[600];
        int mode = 0;

        env = getenv("NGX_GPU_CUDNN_TABLES");
        if (env != NULL) {
            mode = strcmp(env, "packed") == 0 ? 1
                   : strcmp(env, "padded") == 0 ? 2 : 0;
        }
        e->dnn_items = (int *) calloc((size_t) 4 * e->max_seqs, sizeof(int));
        e->dnn = e->dnn_items == NULL ? NULL
                 : kc_dnn_create(e->stream, e->dt, &sh, e->dnn_scratch, mode,
                                 why, sizeof(why));
        if (e->dnn == NULL) {
            log_warn("cuda engine: prefill attention on our kernel: %s",
                     e->dnn_items == NULL ? "out of memory" : why);
        } else {
            kc_dnn_info(e->dnn, &in);
            log_info("cuda engine: prefill attention through cuDNN %zu: %d "
                     "of %d plans (items up to %d, chunks up to %d, %s "
                     "block tables) built in %.0f ms%s%s", in.version,
                     in.plans, in.buckets, in.max_items, in.max_chunk,
                     in.packed_tables ? "packed" : "padded", in.build_ms,
                     in.why[0] ? "; first failure: " : "", in.why);
        }
        cudaGetLastError();
    }
    /* the uploads and memsets ran on the legacy stream, which the
     * non-blocking step stream does not wait for */
    CU_TRY(cudaDeviceSynchronize(), "uploading the weights");

    /* pinned staging, one set a pending step: the step's inputs up,
     * the sampled ids and logprobs down */
    for (int i = 0; i < ENGINE_MAX_PENDING; i++) {
        cu_pending_t *p = &e->pend[i];

        CU_TRY(cudaHostAlloc((void **) &p->h_stage, e->stage_bytes,
                             cudaHostAllocMapped), "pinned staging");
        CU_TRY(cudaHostAlloc((void **) &p->h_out, (size_t) e->max_seqs * 4,
                             cudaHostAllocMapped), "pinned staging");
        CU_TRY(cudaHostAlloc((void **) &p->h_lp, (size_t) e->max_seqs
                             * sizeof(engine_logprobs_t),
                             cudaHostAllocMapped), "pinned staging");
        CU_TRY(cudaHostGetDevicePointer((void **) &p->m_stage, p->h_stage, 0),
               "mapped staging");
        CU_TRY(cudaHostGetDevicePointer((void **) &p->m_out, p->h_out, 0),
               "mapped staging");
        CU_TRY(cudaHostGetDevicePointer((void **) &p->m_lp, p->h_lp, 0),
               "mapped staging");
        CU_TRY(cudaEventCreateWithFlags(&p->done, cudaEventDisableTiming),
               "step events");
        memset(p->h_stage, 0, e->stage_bytes);
        p->row_item = (int32_t *) calloc((size_t) e->max_seqs, 4);
        p->item_row = (int32_t *) calloc((size_t) e->max_seqs, 4);
        p->row_sample = (uint8_t *) calloc((size_t) e->max_seqs, 1);
        p->row_lp = (engine_logprobs_t **) calloc((size_t) e->max_seqs,
                                                  sizeof(void *));
        if (p->row_item == NULL || p->item_row == NULL
            || p->row_sample == NULL || p->row_lp == NULL)
        {
            cu_fail(err, errlen, "cuda engine: out of host memory");
            goto fail;
        }
    }
    e->p_last = -1;
    if (sc_init(&e->clock) != 0) {
        cu_fail(err, errlen, "cuda engine: step clock events");
        goto fail;
    }
    e->dst.prev_out = e->d_out;
    stage_bind(e, 0);

    /* without graphs every step runs eagerly: slower, still right */
    if (e->use_graphs && make_graphs(e, err, errlen) != 0) {
        log_warn("%s; decode steps run without CUDA graphs", err);
        free_graphs(e);
        e->n_buckets = 0;
        e->use_graphs = 0;
        err[0] = '\0';
        cudaGetLastError();
        CU_TRY(cudaStreamSynchronize(e->stream), "after a failed capture");
    }

    e->started = 1;
    *kv_blocks = e->n_kv_blocks;
    {
        int improved, gemv, tuned = gemm_tuned(e->gemm, &improved, &gemv);
        if (tuned > 0) {
            log_info("cuda engine: %d decode matrix-product shapes tuned, "
                     "%d with another kernel than cuBLAS's first pick, %d "
                     "with gemv_cuda's", tuned, improved, gemv);
        }
    }
    {
        int n_mixed = 0, bb, pp;
        for (bb = 0; bb < e->n_buckets; bb++) {
            for (pp = 0; pp < MIX_BUCKETS; pp++) {
                n_mixed += (e->mgraphs[bb][pp][0] != NULL)
                           + (e->mgraphs[bb][pp][1] != NULL);
            }
        }
        log_info("cuda engine on %s: %s (sm_%d%d, %zu MiB); weights %s %zu "
                 "MiB, activations %zu MiB, KV cache %d blocks of %d tokens "
                 "(%zu MiB); %d decode graphs up to batch %d, %d more with "
                 "prompt chunks of up to %d tokens%s", e->name, prop.name,
                 prop.major, prop.minor, total_b >> 20, kc_dtype_name(e->dt),
                 e->wbytes >> 20, e->abytes >> 20, e->n_kv_blocks,
                 e->block_size, e->kvbytes >> 20, e->n_buckets,
                 e->n_buckets ? e->buckets[e->n_buckets - 1] : 0, n_mixed,
                 mixp[MIX_BUCKETS - 1],
                 e->use_graphs ? "" : " (graphs off: NGX_GPU_CUDA_GRAPHS=0)");
    }
    return e;

fail:
    cudaGetLastError();                 /* clear a non-sticky error */
fail_early:
    cu_destroy(e);
    return NULL;
}

static void
cu_destroy(void *impl)
{
    cu_engine_t *e = (cu_engine_t *) impl;
    int b;

    if (e == NULL) {
        return;
    }
    if (e->stream != NULL) {
        cudaStreamSynchronize(e->stream);
    }
    free_graphs(e);
    if (e->host_registered != NULL) {
        cudaHostUnregister(e->host_registered);
    }
    kc_dnn_destroy(e->dnn);
    free(e->dnn_items);
    gemm_destroy(e->gemm);
    if (e->blas != NULL) {
        cublasDestroy(e->blas);
    }
    if (e->stream != NULL) {
        cudaStreamDestroy(e->stream);
    }
    cudaFree(e->kvbuf);
    cudaFree(e->abuf);
    cudaFree(e->wbuf);
    sc_free(&e->clock);
    for (b = 0; b < ENGINE_MAX_PENDING; b++) {
        cu_pending_t *p = &e->pend[b];
        cudaFreeHost(p->h_stage);
        cudaFreeHost(p->h_out);
        cudaFreeHost(p->h_lp);
        if (p->done != NULL) {
            cudaEventDestroy(p->done);
        }
        free(p->row_item);
        free(p->item_row);
        free(p->row_sample);
        free(p->row_lp);
    }
    free(e->counted);
    free(e->layers);
    free(e);
}

/* --- the rest of the ops -------------------------------------------------- */

static int
cu_n_devices(void)
{
    int n = 0, drv = 0, rt = 0;
    cudaError_t r = cudaGetDeviceCount(&n);

    if (r != cudaSuccess) {
        cudaDriverGetVersion(&drv);
        cudaRuntimeGetVersion(&rt);
        if (drv == 0) {
            snprintf(probe_err, sizeof(probe_err), "%s (no NVIDIA driver "
                     "found; this build's runtime is CUDA %d.%d)",
                     cudaGetErrorString(r), rt / 1000, rt % 1000 / 10);
        } else {
            snprintf(probe_err, sizeof(probe_err), "%s (the driver supports "
                     "CUDA %d.%d, this build's runtime is %d.%d)",
                     cudaGetErrorString(r), drv / 1000, drv % 1000 / 10,
                     rt / 1000, rt % 1000 / 10);
        }
        return 0;
    }
    return n;
}

static const char *
cu_probe_error(void)
{
    return probe_err;
}

static const char *
cu_name(const void *impl)
{
    return ((const cu_engine_t *) impl)->name;
}

static const char *
cu_step_error(const void *impl)
{
    return ((const cu_engine_t *) impl)->err;
}

static uint64_t
cu_allocs_after_start(const void *impl)
{
    return ((const cu_engine_t *) impl)->allocs_after_start;
}

static void
cu_graph_steps(const void *impl, uint64_t *decode, uint64_t *mixed)
{
    const cu_engine_t *e = (const cu_engine_t *) impl;

    *decode = e->graph_steps[0];
    *mixed = e->graph_steps[1];
}

static int
cu_register_host(void *impl, void *p, size_t len, char *err, size_t errlen)
{
    cu_engine_t *e = (cu_engine_t *) impl;
    cudaError_t r;

    if (e->host_registered != NULL) {
        return cu_fail(err, errlen, "cuda engine: a region is registered "
                       "already");
    }
    r = cudaHostRegister(p, len, cudaHostRegisterDefault);
    if (r != cudaSuccess) {
        cudaGetLastError();
        return cu_fail(err, errlen, "cuda engine: cudaHostRegister of %zu "
                       "bytes: %s", len, cudaGetErrorString(r));
    }
    e->host_registered = p;
    return 0;
}

extern "C" const engine_ops_t engine_cuda_ops = {
    "cuda",
    cu_n_devices,
    cu_create,
    cu_destroy,
    cu_name,
    cu_step,
    cu_allocs_after_start,
    cu_probe_error,
    cu_step_error,
    cu_register_host,
    cu_step_begin,
    cu_step_end,
    cu_graph_steps,
};
