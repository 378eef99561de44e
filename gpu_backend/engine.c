/*
 * engine.c - engine.h on top of the engines: picks one for the device
 * string, fills in option defaults, keeps the KV block tables and checks
 * every step before an engine sees it.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errbuf.h"
#include "engine_impl.h"

/* defaults for options left 0 */
#define DEF_MAX_SEQS          8
#define DEF_MAX_BATCH_TOKENS  512
#define DEF_KV_BLOCK_SIZE     16

struct engine_s {
    const engine_ops_t  *ops;
    void                *impl;
    engine_opts_t        opts;        /* with defaults filled in */
    int                  vocab_size;
    kv_pool_t            kv;
    char                 err[256];    /* why the last step failed */

    /* engine_step_begin/end: steps begun and not ended, oldest first.
     * For an engine without its own (the CPU), each ran at its begin and
     * its sampled tokens wait here, by item */
    int                  n_pending, head;
    int                  pend_n[ENGINE_MAX_PENDING];
    int32_t             *pend_out[ENGINE_MAX_PENDING];    /* [max_seqs] */
    uint8_t             *pend_sampled[ENGINE_MAX_PENDING];/* [max_seqs] */
    /* the step begun last: how many items, which sampled, and (without
     * the engine's own) what, for ENGINE_TOKEN_OF() */
    int                  last_n;
    uint8_t             *last_sampled;                    /* [max_seqs] */
    int32_t             *last_out;                        /* [max_seqs] */
    engine_item_t       *fb_items;                        /* [max_seqs] */
    int32_t             *fb_tokens;                       /* [max_seqs] */
};


/* device string -> ops and device index; 0 or -1 */
static int
pick_engine(const char *dev, const engine_ops_t **ops, int *index,
    char *err, size_t errlen)
{
    *index = 0;
    if (dev == NULL || dev[0] == '\0' || strcmp(dev, "cpu") == 0) {
        *ops = &engine_cpu_ops;
        return 0;
    }
    if (strcmp(dev, "auto") == 0) {
        *ops = &engine_cpu_ops;
#ifdef NGX_GPU_HAVE_CUDA
        if (engine_cuda_ops.n_devices() > 0) {
            *ops = &engine_cuda_ops;
        }
#endif
        return 0;
    }
    if (strcmp(dev, "cuda") == 0 || strncmp(dev, "cuda:", 5) == 0) {
#ifdef NGX_GPU_HAVE_CUDA
        char *end;
        long i = 0;

        if (dev[4] == ':') {
            i = strtol(dev + 5, &end, 10);
            if (end == dev + 5 || *end != '\0' || i < 0) {
                set_err(err, errlen, "device \"%s\": expected cuda:N", dev);
                return -1;
            }
        }
        if (i >= engine_cuda_ops.n_devices()) {
            const char *why = engine_cuda_ops.probe_error
                              ? engine_cuda_ops.probe_error() : "";
            set_err(err, errlen, "device \"%s\": %d CUDA device(s) found%s%s",
                    dev, engine_cuda_ops.n_devices(), why[0] ? ": " : "", why);
            return -1;
        }
        *ops = &engine_cuda_ops;
        *index = (int) i;
        return 0;
#else
        set_err(err, errlen, "device \"%s\": this build has no CUDA engine",
                dev);
        return -1;
#endif
    }
    set_err(err, errlen, "unknown device \"%s\" (expected cpu, cuda, cuda:N "
            "or auto)", dev);
    return -1;
}

/* the host side of engine_step_begin/end, taken once */
static int
pending_init(engine_t *e)
{
    size_t S = (size_t) e->opts.max_seqs;
    int k;

    for (k = 0; k < ENGINE_MAX_PENDING; k++) {
        e->pend_out[k] = calloc(S, sizeof(int32_t));
        e->pend_sampled[k] = calloc(S, 1);
        if (e->pend_out[k] == NULL || e->pend_sampled[k] == NULL) {
            return -1;
        }
    }
    e->last_sampled = calloc(S, 1);
    e->last_out = calloc(S, sizeof(int32_t));
    e->fb_items = calloc(S, sizeof(engine_item_t));
    e->fb_tokens = calloc(S, sizeof(int32_t));
    return e->last_sampled && e->last_out && e->fb_items && e->fb_tokens
           ? 0 : -1;
}

engine_t *
engine_create(const model_t *m, const engine_opts_t *o, char *err,
    size_t errlen)
{
    const engine_ops_t *ops;
    engine_opts_t r = *o;
    engine_t *e;
    int dev, kv_blocks = 0;

    if (pick_engine(o->device, &ops, &dev, err, errlen) != 0) {
        return NULL;
    }
    if (r.threads < 0 || r.max_seqs < 0 || r.max_batch_tokens < 0
        || r.kv_block_size < 0 || r.kv_blocks < 0 || r.kv_fraction < 0
        || r.kv_fraction > 1)
    {
        set_err(err, errlen, "engine options: negative value (or kv_fraction "
                "above 1)");
        return NULL;
    }
    r.threads = r.threads ? r.threads : 1;
    r.max_seqs = r.max_seqs ? r.max_seqs : DEF_MAX_SEQS;
    r.max_batch_tokens = r.max_batch_tokens ? r.max_batch_tokens
                                            : DEF_MAX_BATCH_TOKENS;
    r.kv_block_size = r.kv_block_size ? r.kv_block_size : DEF_KV_BLOCK_SIZE;

    e = calloc(1, sizeof(*e));
    if (e == NULL) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    e->ops = ops;
    e->opts = r;
    e->vocab_size = m->cfg.vocab_size;
    e->impl = ops->create(m, &r, dev, &kv_blocks, err, errlen);
    if (e->impl == NULL) {
        free(e);
        return NULL;
    }
    if (kv_pool_init(&e->kv, kv_blocks, r.kv_block_size, r.max_seqs,
                     m->cfg.max_seq_len) != 0
        || pending_init(e) != 0)
    {
        set_err(err, errlen, "out of memory for the KV block tables");
        engine_destroy(e);
        return NULL;
    }
    return e;
}

void
engine_destroy(engine_t *e)
{
    int k;

    if (e == NULL) {
        return;
    }
    e->ops->destroy(e->impl);
    kv_pool_free(&e->kv);
    for (k = 0; k < ENGINE_MAX_PENDING; k++) {
        free(e->pend_out[k]);
        free(e->pend_sampled[k]);
    }
    free(e->last_sampled);
    free(e->last_out);
    free(e->fb_items);
    free(e->fb_tokens);
    free(e);
}

const char *
engine_name(const engine_t *e)
{
    return e->ops->name(e->impl);
}

int
engine_kv_reserve(engine_t *e, int seq, int n_tokens)
{
    return kv_pool_reserve(&e->kv, seq, n_tokens);
}

void
engine_kv_release(engine_t *e, int seq)
{
    kv_pool_release(&e->kv, seq);
}

int
engine_kv_blocks_total(const engine_t *e)
{
    return e->kv.n_blocks;
}

int
engine_kv_blocks_used(const engine_t *e)
{
    return e->kv.n_blocks - e->kv.n_free;
}

int
engine_kv_block_size(const engine_t *e)
{
    return e->kv.block_size;
}

const char *
engine_last_error(const engine_t *e)
{
    return e->err;
}

/* the engines rely on these: no engine checks them again */
static int
check_items(engine_t *e, const engine_item_t *items, int n,
    int placeholders)
{
    int i, j, total = 0;

    if (n < 0 || n > e->opts.max_seqs) {
        set_err(e->err, sizeof(e->err), "%d items, at most %d (max_seqs)", n,
                e->opts.max_seqs);
        return -1;
    }
    for (i = 0; i < n; i++) {
        const engine_item_t *it = &items[i];

        if (it->seq < 0 || it->seq >= e->opts.max_seqs) {
            set_err(e->err, sizeof(e->err), "item %d: seq %d out of range", i,
                    it->seq);
            return -1;
        }
        if (it->n_tokens < 1 || it->pos < 0 || it->tokens == NULL) {
            set_err(e->err, sizeof(e->err), "item %d: no tokens or a negative "
                    "position", i);
            return -1;
        }
        if ((int64_t) it->pos + it->n_tokens
            > kv_pool_capacity(&e->kv, it->seq))
        {
            set_err(e->err, sizeof(e->err), "item %d: seq %d position %d is "
                    "past its %d reserved positions", i, it->seq,
                    it->pos + it->n_tokens - 1,
                    kv_pool_capacity(&e->kv, it->seq));
            return -1;
        }
        if (it->n_tokens == 1 && it->tokens[0] <= ENGINE_TOKEN_OF(0)) {
            int from = ENGINE_TOKEN_OF(0) - it->tokens[0];

            if (!placeholders || from >= e->last_n || !e->last_sampled[from]
                || it->presence_penalty != 0.0f
                || it->frequency_penalty != 0.0f)
            {
                set_err(e->err, sizeof(e->err), "item %d: token of item %d "
                        "of the last step, which %s", i, from,
                        !placeholders ? "this call cannot take"
                        : from >= e->last_n || !e->last_sampled[from]
                        ? "did not sample" : "penalties cannot count");
                return -1;
            }
        } else {
            for (j = 0; j < it->n_tokens; j++) {
                if (it->tokens[j] < 0 || it->tokens[j] >= e->vocab_size) {
                    set_err(e->err, sizeof(e->err), "item %d: token %d is "
                            "not in the vocabulary", i, it->tokens[j]);
                    return -1;
                }
            }
        }
        if (it->n_logprobs < 0 || it->n_logprobs > ENGINE_MAX_LOGPROBS
            || it->n_gen < 0 || (it->n_gen > 0 && it->gen == NULL))
        {
            set_err(e->err, sizeof(e->err), "item %d: n_logprobs %d or n_gen "
                    "%d out of range", i, it->n_logprobs, it->n_gen);
            return -1;
        }
        for (j = 0; it->sample && j < it->n_gen; j++) {
            if (it->gen[j] < 0 || it->gen[j] >= e->vocab_size) {
                set_err(e->err, sizeof(e->err), "item %d: generated token %d "
                        "is not in the vocabulary", i, it->gen[j]);
                return -1;
            }
        }
        total += it->n_tokens;
        if (total > e->opts.max_batch_tokens) {
            set_err(e->err, sizeof(e->err), "more than %d tokens in a step "
                    "(max_batch_tokens)", e->opts.max_batch_tokens);
            return -1;
        }
    }
    return 0;
}

static int
step_failed(engine_t *e)
{
    if (e->ops->step_error != NULL) {
        snprintf(e->err, sizeof(e->err), "%s", e->ops->step_error(e->impl));
    }
    if (e->err[0] == '\0') {
        snprintf(e->err, sizeof(e->err), "%s engine: step failed",
                 e->ops->kind);
    }
    return -1;
}

int
engine_step(engine_t *e, const engine_item_t *items, int n,
    int32_t *out_tokens, float *logits)
{
    e->err[0] = '\0';
    if (e->n_pending > 0) {
        set_err(e->err, sizeof(e->err), "engine_step with %d steps begun "
                "and not ended", e->n_pending);
        return -1;
    }
    if (check_items(e, items, n, 0) != 0) {
        return -1;
    }
    if (n == 0) {
        return 0;
    }
    e->last_n = 0;              /* its tokens are the caller's */
    if (e->ops->step(e->impl, &e->kv, items, n, out_tokens, logits) != 0) {
        return step_failed(e);
    }
    return 0;
}

int
engine_step_begin(engine_t *e, const engine_item_t *items, int n)
{
    int i, k;

    e->err[0] = '\0';
    if (e->n_pending == ENGINE_MAX_PENDING) {
        set_err(e->err, sizeof(e->err), "%d steps begun and not ended",
                e->n_pending);
        return -1;
    }
    if (check_items(e, items, n, 1) != 0) {
        return -1;
    }
    k = (e->head + e->n_pending) % ENGINE_MAX_PENDING;

    if (e->ops->step_begin != NULL) {
        if (n > 0 && e->ops->step_begin(e->impl, &e->kv, items, n) != 0) {
            return step_failed(e);
        }
    } else if (n > 0) {
        /* no engine of its own: put the tokens in and run the step now */
        for (i = 0; i < n; i++) {
            e->fb_items[i] = items[i];
            if (items[i].tokens[0] <= ENGINE_TOKEN_OF(0)) {
                e->fb_tokens[i] = e->last_out[ENGINE_TOKEN_OF(0)
                                              - items[i].tokens[0]];
                e->fb_items[i].tokens = &e->fb_tokens[i];
            }
        }
        if (e->ops->step(e->impl, &e->kv, e->fb_items, n, e->pend_out[k],
                         NULL) != 0)
        {
            return step_failed(e);
        }
        memcpy(e->last_out, e->pend_out[k], (size_t) n * sizeof(int32_t));
    }

    for (i = 0; i < n; i++) {
        e->pend_sampled[k][i] = items[i].sample != 0;
    }
    memcpy(e->last_sampled, e->pend_sampled[k], (size_t) n);
    e->pend_n[k] = n;
    e->last_n = n;
    e->n_pending++;
    return 0;
}

int
engine_step_end(engine_t *e, int32_t *out_tokens)
{
    int i, k = e->head, n;

    e->err[0] = '\0';
    if (e->n_pending == 0) {
        set_err(e->err, sizeof(e->err), "no step begun");
        return -1;
    }
    n = e->pend_n[k];
    e->head = (e->head + 1) % ENGINE_MAX_PENDING;
    e->n_pending--;

    if (e->ops->step_end != NULL) {
        if (n > 0 && e->ops->step_end(e->impl, out_tokens) != 0) {
            return step_failed(e);
        }
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (e->pend_sampled[k][i] && out_tokens != NULL) {
            out_tokens[i] = e->pend_out[k][i];
        }
    }
    return 0;
}

int
engine_steps_pending(const engine_t *e)
{
    return e->n_pending;
}

int
engine_runs_async(const engine_t *e)
{
    return e->ops->step_begin != NULL;
}

uint64_t
engine_allocs_after_start(const engine_t *e)
{
    return e->ops->allocs_after_start(e->impl);
}

void
engine_graph_steps(const engine_t *e, uint64_t *decode, uint64_t *mixed)
{
    *decode = 0;
    *mixed = 0;
    if (e->ops->graph_steps != NULL) {
        e->ops->graph_steps(e->impl, decode, mixed);
    }
}

int
engine_register_host(engine_t *e, void *p, size_t len, char *err,
    size_t errlen)
{
    if (e->ops->register_host == NULL) {
        return 0;
    }
    return e->ops->register_host(e->impl, p, len, err, errlen);
}
