/*
 * engine_cpu.c - the reference engine: the forward pass of model.h's
 * architectures in f32 on the CPU, over a batch of sequences at once.
 *
 * A step packs the tokens of all its items (prefill chunks and single
 * decode tokens alike) into one [T, dim] matrix, so every projection is
 * one matmul over T rows and each weight is read once per step.  Only
 * attention is per token, over that token's own sequence's KV pages.
 * Everything is allocated in create: weights converted to f32, the
 * activations for max_batch_tokens rows, and the KV pool.
 */

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carve.h"
#include "engine_impl.h"
#include "cpu_threads.h"
#include "kernels_cpu.h"
#include "sampler.h"

/* matmuls smaller than this many multiply-adds run on one thread */
#define MT_MIN_WORK  (1 << 16)
#define ALIGN        64
#define DEF_KV_BYTES ((size_t) 64 << 20)

/* q|k|v and gate|up are each one matrix (rows stacked), so that they are
 * one matmul: fewer, wider matmuls keep the register tiles full */
typedef struct {
    float  *attn_norm, *w_qkv, *wo;
    float  *b_qkv;                      /* [qkv_dim] or NULL */
    float  *ffn_norm, *w_gate_up, *w_down;
    float  *post_attn_norm, *post_ffn_norm; /* Glm4, else NULL */
} cpu_layer_t;

typedef struct {
    model_config_t   cfg;
    int              q_dim, kv_dim, qkv_dim;   /* qkv: q_dim + 2 kv_dim */
    int              max_seqs, max_tokens;

    /* weights in f32, all in wbuf; matrices packed for k_matmul (so a
     * tied lm_head is a packed copy of tok_emb) */
    void            *wbuf;
    float           *tok_emb, *final_norm, *lm_head;
    float           *inv_freq;          /* [rope_dim / 2] */
    cpu_layer_t     *layers;
    float           *unpacked;          /* at create: a matrix in f32 */
    size_t           max_numel;

    /* KV pool: block b, layer l: K then V in the layout of kernels_cpu.h,
     * each block_size * kv_dim floats */
    float           *kv;
    int              block_size;
    size_t           kv_block_stride;   /* floats per block */
    size_t           kv_layer_stride;   /* floats per layer in a block */

    /* activations, all in abuf; [T, ...] rows for T <= max_tokens */
    void            *abuf;
    float           *x;                 /* [T, dim] the residual stream */
    float           *xb;                /* [T, dim] normed / projected */
    float           *qkv;               /* [T, qkv_dim]: q, k, v of a row */
    float           *att;               /* [T, q_dim] attention output */
    float           *gate_up;           /* [T, 2 hidden]: gate, up */
    float           *hb;                /* [T, hidden] silu(gate) * up */
    float           *rope_cos, *rope_sin; /* [T, rope_dim / 2] */
    int32_t         *tok_seq, *tok_pos; /* [T] */
    float           *att_scratch;       /* [threads, att_stride] */
    size_t           att_stride;
    float           *xl;                /* [max_seqs, dim] rows for logits */
    float           *logits;            /* [max_seqs, vocab] */
    int32_t         *row_item;          /* [max_seqs] logit row -> item */
    int32_t         *item_last;         /* [max_seqs] item -> last row */
    sampler_cand_t  *cand;              /* [vocab] */
    float           *pen_row;           /* [vocab] penalised logits */
    uint16_t        *pen_counts;        /* [vocab] zeros between uses */

    cpu_threads_t   *threads;           /* NULL: single-threaded */
    uint64_t         rng;               /* for items without their own */
} cpu_engine_t;

/* --- threads: matmul columns and attention tokens split across them -- */

typedef struct {
    float        *out;
    const float  *in, *w;
    int           B, K, N;
} mm_task_t;

static void
mm_task(void *arg, int part, int n_parts)
{
    const mm_task_t *t = arg;
    int panels = (t->N + K_PANEL - 1) / K_PANEL;
    int n0 = (int) ((int64_t) panels * part / n_parts) * K_PANEL;
    int n1 = (int) ((int64_t) panels * (part + 1) / n_parts) * K_PANEL;

    n1 = n1 < t->N ? n1 : t->N;
    if (n0 < n1) {
        k_matmul_cols(t->out, t->in, t->w, t->B, t->K, t->N, n0, n1);
    }
}

/* out[B,N] = in[B,K] @ w[N,K]^T, on all threads if it is worth it */
static void
cpu_matmul(cpu_engine_t *e, float *out, const float *in, const float *w,
    int B, int K, int N)
{
    mm_task_t t = { out, in, w, B, K, N };

    if (e->threads == NULL || (int64_t) B * K * N < MT_MIN_WORK) {
        k_matmul(out, in, w, B, K, N);
        return;
    }
    cpu_threads_run(e->threads, mm_task, &t);
}

typedef struct {
    cpu_engine_t     *e;
    const kv_pool_t  *kv;
    int               layer, T;
} att_task_t;

/* attention of rows [t0, t1) of the step, each over its own pages */
static void
att_rows(cpu_engine_t *e, const kv_pool_t *kv, int l, int t0, int t1,
    float *scratch)
{
    const model_config_t *c = &e->cfg;
    const float *k_cache = e->kv + (size_t) l * e->kv_layer_stride;
    const float *v_cache = k_cache + (size_t) e->block_size * e->kv_dim;
    int t;

    for (t = t0; t < t1; t++) {
        /* causal: position p sees 0 .. p, already in the cache */
        k_attention(e->att + (size_t) t * e->q_dim,
                    e->qkv + (size_t) t * e->qkv_dim,
                    k_cache, v_cache, e->kv_block_stride,
                    kv_pool_table(kv, e->tok_seq[t]), e->block_size,
                    e->tok_pos[t] + 1, c->n_heads, c->n_kv_heads, c->head_dim,
                    scratch);
    }
}

static void
att_task(void *arg, int part, int n_parts)
{
    const att_task_t *a = arg;
    int t0 = (int) ((int64_t) a->T * part / n_parts);
    int t1 = (int) ((int64_t) a->T * (part + 1) / n_parts);

    att_rows(a->e, a->kv, a->layer, t0, t1,
             a->e->att_scratch + (size_t) part * a->e->att_stride);
}

static void
cpu_attention(cpu_engine_t *e, const kv_pool_t *kv, int l, int T)
{
    att_task_t a = { e, kv, l, T };

    if (e->threads == NULL || T == 1) {
        att_rows(e, kv, l, 0, T, e->att_scratch);
        return;
    }
    cpu_threads_run(e->threads, att_task, &a);
}

/* --- the forward pass ------------------------------------------------ */

/* copy row t's K and V into its sequence's page for layer l */
static void
kv_store(cpu_engine_t *e, const kv_pool_t *kv, int l, int t, const float *k,
    const float *v)
{
    int pos = e->tok_pos[t];
    int32_t block = kv_pool_table(kv, e->tok_seq[t])[pos / e->block_size];
    float *k_block = e->kv + (size_t) block * e->kv_block_stride
                     + (size_t) l * e->kv_layer_stride;
    float *v_block = k_block + (size_t) e->block_size * e->kv_dim;

    k_kv_store(k_block, v_block, pos % e->block_size,
               k, v, e->cfg.n_kv_heads, e->cfg.head_dim, e->block_size);
}

/* one transformer block over the T rows of x, in place */
static void
cpu_layer_forward(cpu_engine_t *e, const kv_pool_t *kv, int l, int T)
{
    const model_config_t *c = &e->cfg;
    const cpu_layer_t *L = &e->layers[l];
    int dim = c->dim, hidden = c->hidden_dim, half = c->rope_dim / 2, t;

    /* attention: x += o_proj(attend(rope(q), rope(k), v)) of norm(x) */
    for (t = 0; t < T; t++) {
        k_rmsnorm(e->xb + (size_t) t * dim, e->x + (size_t) t * dim,
                  L->attn_norm, dim, c->rms_eps);
    }
    cpu_matmul(e, e->qkv, e->xb, L->w_qkv, T, dim, e->qkv_dim);
    for (t = 0; t < T; t++) {
        float *q = e->qkv + (size_t) t * e->qkv_dim;
        float *k = q + e->q_dim, *v = k + e->kv_dim;
        const float *cs = e->rope_cos + (size_t) t * half;
        const float *sn = e->rope_sin + (size_t) t * half;
        if (L->b_qkv != NULL) {
            k_add(q, L->b_qkv, e->qkv_dim);
        }
        /* q's heads and then k's are side by side: one call */
        k_rope(q, c->n_heads + c->n_kv_heads, c->head_dim, c->rope_dim,
               c->rope_interleaved, cs, sn);
        kv_store(e, kv, l, t, k, v);
    }
    /* every row's K/V is stored before any row attends: a prefill chunk
     * sees its own earlier tokens */
    cpu_attention(e, kv, l, T);
    cpu_matmul(e, e->xb, e->att, L->wo, T, e->q_dim, dim);
    if (L->post_attn_norm != NULL) {
        for (t = 0; t < T; t++) {
            k_rmsnorm(e->xb + (size_t) t * dim, e->xb + (size_t) t * dim,
                      L->post_attn_norm, dim, c->rms_eps);
        }
    }
    k_add(e->x, e->xb, T * dim);

    /* feed-forward: x += down(silu(gate(norm(x))) * up(norm(x))) */
    for (t = 0; t < T; t++) {
        k_rmsnorm(e->xb + (size_t) t * dim, e->x + (size_t) t * dim,
                  L->ffn_norm, dim, c->rms_eps);
    }
    cpu_matmul(e, e->gate_up, e->xb, L->w_gate_up, T, dim, 2 * hidden);
    for (t = 0; t < T; t++) {
        const float *g = e->gate_up + (size_t) t * 2 * hidden;
        k_swiglu(e->hb + (size_t) t * hidden, g, g + hidden, hidden);
    }
    cpu_matmul(e, e->xb, e->hb, L->w_down, T, hidden, dim);
    if (L->post_ffn_norm != NULL) {
        for (t = 0; t < T; t++) {
            k_rmsnorm(e->xb + (size_t) t * dim, e->xb + (size_t) t * dim,
                      L->post_ffn_norm, dim, c->rms_eps);
        }
    }
    k_add(e->x, e->xb, T * dim);
}

/* the next token of an item from its logits row (sampler.h's rules),
 * and its logprobs when asked for */
static int32_t
cpu_sample(cpu_engine_t *e, const engine_item_t *it, const float *row)
{
    int vocab = e->cfg.vocab_size;
    const float *l = row;
    int32_t t;

    if (it->n_gen > 0 && (it->presence_penalty != 0.0f
                          || it->frequency_penalty != 0.0f))
    {
        memcpy(e->pen_row, row, vocab * sizeof(float));
        sampler_penalize(e->pen_row, vocab, it->gen, it->n_gen,
                         it->presence_penalty, it->frequency_penalty,
                         e->pen_counts);
        l = e->pen_row;
    }
    /* greedy (sampler_pick's rule for it) is a plain argmax, vectorised
     * here */
    t = !(it->temperature > 0.0f)
        ? k_argmax(l, vocab)
        : sampler_pick(l, vocab, it->temperature, it->top_k, it->top_p,
                       it->rng ? it->rng : &e->rng, e->cand);
    if (it->lp != NULL) {
        /* the model's distribution: the row before the penalties */
        sampler_logprobs(row, vocab, t, it->n_logprobs, &it->lp->logprob,
                         it->lp->top_id, it->lp->top_logprob);
        it->lp->n_top = it->n_logprobs < vocab ? it->n_logprobs : vocab;
    }
    return t;
}

static int
cpu_step(void *impl, const kv_pool_t *kv, const engine_item_t *items, int n,
    int32_t *out_tokens, float *logits)
{
    cpu_engine_t *e = impl;
    const model_config_t *c = &e->cfg;
    int dim = c->dim, vocab = c->vocab_size, half = c->rope_dim / 2;
    int T = 0, R = 0, i, j, l;

    /* 1. every token of every item becomes a row of x */
    for (i = 0; i < n; i++) {
        const engine_item_t *it = &items[i];
        for (j = 0; j < it->n_tokens; j++, T++) {
            memcpy(e->x + (size_t) T * dim,
                   e->tok_emb + (size_t) it->tokens[j] * dim,
                   dim * sizeof(float));
            e->tok_seq[T] = it->seq;
            e->tok_pos[T] = it->pos + j;
            k_rope_angles(e->rope_cos + (size_t) T * half,
                          e->rope_sin + (size_t) T * half, half,
                          it->pos + j, e->inv_freq);
        }
        e->item_last[i] = T - 1;
    }

    /* 2. the blocks */
    for (l = 0; l < c->n_layers; l++) {
        cpu_layer_forward(e, kv, l, T);
    }

    /* 3. final norm and lm_head, only for the rows whose logits are used */
    for (i = 0; i < n; i++) {
        if (items[i].sample || logits != NULL) {
            k_rmsnorm(e->xl + (size_t) R * dim,
                      e->x + (size_t) e->item_last[i] * dim, e->final_norm,
                      dim, c->rms_eps);
            e->row_item[R++] = i;
        }
    }
    if (R > 0) {
        cpu_matmul(e, e->logits, e->xl, e->lm_head, R, dim, vocab);
    }

    /* 4. hand out logits, sample */
    for (j = 0; j < R; j++) {
        const engine_item_t *it = &items[e->row_item[j]];
        const float *row = e->logits + (size_t) j * vocab;

        if (logits != NULL) {
            memcpy(logits + (size_t) e->row_item[j] * vocab, row,
                   vocab * sizeof(float));
        }
        if (it->sample && out_tokens != NULL) {
            out_tokens[e->row_item[j]] = cpu_sample(e, it, row);
        }
    }
    return 0;
}

/* --- create / destroy ------------------------------------------------ */

/* a matrix for k_matmul: the [N_i, K] tensors in t[] stacked into one
 * [sum N_i, K] (all converted to f32 first), then packed */
static float *
carve_packed(cpu_engine_t *e, carve_t *cv, const st_tensor_t *const *t,
    int n)
{
    int K = (int) t[0]->shape[1], N = 0, i;
    size_t off = 0;
    float *dst;

    for (i = 0; i < n; i++) {
        N += (int) t[i]->shape[0];
    }
    dst = carve(cv, k_matmul_packed_size(N, K) * sizeof(float));
    if (cv->base == NULL) {
        e->max_numel = (size_t) N * K > e->max_numel ? (size_t) N * K
                                                     : e->max_numel;
        return NULL;
    }
    for (i = 0; i < n; i++) {
        model_tensor_to_f32(t[i], e->unpacked + off);
        off += (size_t) t[i]->numel;
    }
    k_matmul_pack(dst, e->unpacked, N, K);
    return dst;
}

/* vectors and the embedding: f32 as stored; n tensors one after
 * another (the q, k and v biases), NULL if t[0] is */
static float *
carve_plain_n(carve_t *cv, const st_tensor_t *const *t, int n)
{
    size_t numel = 0;
    float *dst;
    int i;

    if (t[0] == NULL) {
        return NULL;
    }
    for (i = 0; i < n; i++) {
        numel += (size_t) t[i]->numel;
    }
    dst = carve(cv, numel * sizeof(float));
    for (i = 0, numel = 0; cv->base != NULL && i < n; i++) {
        model_tensor_to_f32(t[i], dst + numel);
        numel += (size_t) t[i]->numel;
    }
    return dst;
}

static float *
carve_plain(carve_t *cv, const st_tensor_t *t)
{
    return carve_plain_n(cv, &t, 1);
}

/* lay out (or, with cv->base NULL, just size) the weights */
static void
carve_weights(cpu_engine_t *e, const model_t *m, carve_t *cv)
{
    int l;

    /* the embedding is looked up by row; lm_head (the same tensor when
     * tied) is multiplied, so it is packed: a tied model keeps both */
    e->tok_emb = carve_plain(cv, m->tok_emb);
    e->final_norm = carve_plain(cv, m->final_norm);
    e->lm_head = carve_packed(e, cv, &m->lm_head, 1);
    e->inv_freq = carve(cv, (size_t) m->cfg.rope_dim / 2 * sizeof(float));
    if (cv->base != NULL) {
        model_rope_inv_freq(&m->cfg, e->inv_freq);
    }
    for (l = 0; l < m->cfg.n_layers; l++) {
        const model_layer_t *s = &m->layers[l];
        const st_tensor_t *qkv[3] = { s->wq, s->wk, s->wv };
        const st_tensor_t *b_qkv[3] = { s->bq, s->bk, s->bv };
        const st_tensor_t *gate_up[2] = { s->w_gate, s->w_up };
        cpu_layer_t *d = &e->layers[l];

        d->attn_norm = carve_plain(cv, s->attn_norm);
        d->w_qkv = carve_packed(e, cv, qkv, 3);
        d->b_qkv = carve_plain_n(cv, b_qkv, 3);
        d->wo = carve_packed(e, cv, &s->wo, 1);
        d->post_attn_norm = carve_plain(cv, s->post_attn_norm);
        d->ffn_norm = carve_plain(cv, s->ffn_norm);
        /* GLM's gate_up_proj is gate's rows then up's already */
        d->w_gate_up = s->w_gate_up != NULL
                       ? carve_packed(e, cv, &s->w_gate_up, 1)
                       : carve_packed(e, cv, gate_up, 2);
        d->w_down = carve_packed(e, cv, &s->w_down, 1);
        d->post_ffn_norm = carve_plain(cv, s->post_ffn_norm);
    }
}

static void
carve_acts(cpu_engine_t *e, int n_threads, carve_t *cv)
{
    const model_config_t *c = &e->cfg;
    size_t T = (size_t) e->max_tokens, S = (size_t) e->max_seqs, f = 4;

    e->x = carve(cv, T * c->dim * f);
    e->xb = carve(cv, T * c->dim * f);
    e->qkv = carve(cv, T * e->qkv_dim * f);
    e->att = carve(cv, T * e->q_dim * f);
    e->gate_up = carve(cv, T * 2 * c->hidden_dim * f);
    e->hb = carve(cv, T * c->hidden_dim * f);
    e->rope_cos = carve(cv, T * (c->rope_dim / 2) * f);
    e->rope_sin = carve(cv, T * (c->rope_dim / 2) * f);
    e->tok_seq = carve(cv, T * sizeof(int32_t));
    e->tok_pos = carve(cv, T * sizeof(int32_t));
    e->att_stride = (K_ATTENTION_SCRATCH(c->max_seq_len, c->n_heads,
                                       c->head_dim) + 15)
                    & ~(size_t) 15;
    e->att_scratch = carve(cv, (size_t) n_threads * e->att_stride * f);
    e->xl = carve(cv, S * c->dim * f);
    e->logits = carve(cv, S * c->vocab_size * f);
    e->row_item = carve(cv, S * sizeof(int32_t));
    e->item_last = carve(cv, S * sizeof(int32_t));
    e->cand = carve(cv, (size_t) c->vocab_size * sizeof(sampler_cand_t));
    e->pen_row = carve(cv, (size_t) c->vocab_size * f);
    e->pen_counts = carve(cv, (size_t) c->vocab_size * sizeof(uint16_t));
}

static void cpu_destroy(void *impl);

static void *
cpu_create(const model_t *m, const engine_opts_t *o, int device,
    int *kv_blocks, char *err, size_t errlen)
{
    const model_config_t *c = &m->cfg;
    cpu_engine_t *e;
    carve_t cv;
    size_t block_bytes;
    int64_t nb, cap;
    cpu_set_t cpus;
    int n_threads;

    if (o->kv_block_size % 8 != 0) {
        snprintf(err, errlen, "cpu engine: kv_block_size %d is not a multiple "
                 "of 8", o->kv_block_size);
        return NULL;
    }
    e = calloc(1, sizeof(*e));
    if (e == NULL) {
        snprintf(err, errlen, "cpu engine: out of memory");
        return NULL;
    }
    e->cfg = *c;
    e->q_dim = c->n_heads * c->head_dim;
    e->kv_dim = c->n_kv_heads * c->head_dim;
    e->qkv_dim = e->q_dim + 2 * e->kv_dim;
    e->max_seqs = o->max_seqs;
    e->max_tokens = o->max_batch_tokens;
    e->block_size = o->kv_block_size;
    e->rng = 0x6e67782d677075ull;

    e->layers = calloc((size_t) c->n_layers, sizeof(*e->layers));
    if (e->layers == NULL) {
        snprintf(err, errlen, "cpu engine: out of memory");
        goto fail;
    }

    /* weights: size, allocate, convert */
    cv = (carve_t) { NULL, 0, ALIGN };
    carve_weights(e, m, &cv);
    cv.base = e->wbuf = aligned_alloc(ALIGN, cv.used);
    if (e->wbuf == NULL) {
        snprintf(err, errlen, "cpu engine: cannot allocate %zu MiB for the "
                 "weights", cv.used >> 20);
        goto fail;
    }
    cv.used = 0;
    e->unpacked = malloc(e->max_numel * sizeof(float));
    if (e->unpacked == NULL) {
        snprintf(err, errlen, "cpu engine: out of memory");
        goto fail;
    }
    carve_weights(e, m, &cv);
    free(e->unpacked);
    e->unpacked = NULL;

    /* no more threads than CPUs this process may run on: a spinning
     * worker without a core of its own only slows the others down */
    n_threads = o->threads;
    if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0
        && n_threads > CPU_COUNT(&cpus))
    {
        n_threads = CPU_COUNT(&cpus);
    }
    if (n_threads > 1) {
        e->threads = cpu_threads_create(n_threads);
        if (e->threads == NULL) {
            snprintf(err, errlen, "cpu engine: cannot start %d threads",
                     n_threads);
            goto fail;
        }
    }

    cv = (carve_t) { NULL, 0, ALIGN };
    carve_acts(e, cpu_threads_count(e->threads), &cv);
    cv.base = e->abuf = aligned_alloc(ALIGN, cv.used);
    if (e->abuf == NULL) {
        snprintf(err, errlen, "cpu engine: cannot allocate %zu MiB for the "
                 "activations", cv.used >> 20);
        goto fail;
    }
    cv.used = 0;
    carve_acts(e, cpu_threads_count(e->threads), &cv);

    /* KV pool: kv_blocks, else kv_bytes, else 64 MiB; never more than
     * max_seqs sequences of max_seq_len tokens can use */
    e->kv_layer_stride = (size_t) 2 * e->block_size * e->kv_dim;
    e->kv_block_stride = e->kv_layer_stride * c->n_layers;
    block_bytes = e->kv_block_stride * sizeof(float);
    nb = o->kv_blocks;
    if (nb == 0) {
        size_t bytes = o->kv_bytes ? o->kv_bytes : DEF_KV_BYTES;
        nb = (int64_t) (bytes / block_bytes);
        if (nb == 0) {
            snprintf(err, errlen, "cpu engine: kv_bytes %zu is less than one "
                     "KV block (%zu bytes)", bytes, block_bytes);
            goto fail;
        }
    }
    cap = kv_pool_blocks_needed(e->max_seqs, c->max_seq_len, e->block_size);
    nb = nb < cap ? nb : cap;
    e->kv = aligned_alloc(ALIGN, ((size_t) nb * block_bytes + ALIGN - 1)
                                 & ~(size_t) (ALIGN - 1));
    if (e->kv == NULL) {
        snprintf(err, errlen, "cpu engine: cannot allocate %zu MiB for %lld "
                 "KV blocks", ((size_t) nb * block_bytes) >> 20,
                 (long long) nb);
        goto fail;
    }
    /* touch every page now, so that no step takes a page fault (and a
     * position never written reads as zeros, not garbage) */
    memset(e->kv, 0, (size_t) nb * block_bytes);
    memset(e->abuf, 0, cv.used);
    *kv_blocks = (int) nb;
    return e;

fail:
    cpu_destroy(e);
    return NULL;
}

static void
cpu_destroy(void *impl)
{
    cpu_engine_t *e = impl;

    if (e == NULL) {
        return;
    }
    cpu_threads_destroy(e->threads);
    free(e->kv);
    free(e->abuf);
    free(e->wbuf);
    free(e->unpacked);
    free(e->layers);
    free(e);
}

static int
cpu_n_devices(void)
{
    return 1;
}

static const char *
cpu_name(const void *impl)
{
    return "cpu";
}

static uint64_t
cpu_allocs_after_start(const void *impl)
{
    return 0;                   /* nothing in this file allocates later */
}

const engine_ops_t engine_cpu_ops = {
    .kind = "cpu",
    .n_devices = cpu_n_devices,
    .create = cpu_create,
    .destroy = cpu_destroy,
    .name = cpu_name,
    .step = cpu_step,
    .allocs_after_start = cpu_allocs_after_start,
};
