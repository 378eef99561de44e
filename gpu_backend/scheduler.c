/*
 * scheduler.c - continuous batching (see scheduler.h).
 *
 * A request's path: the ring hands over a SUBMITTED slot; poll_ring
 * checks and tokenizes its prompt into a per-slot id buffer and queues it
 * (waiting).  Between steps, waiting requests are admitted in arrival
 * order while a sequence entry is free and the KV cache can hold the
 * prompt plus max_tokens (reserved up front, so a running sequence never
 * runs out of cache).  A step gives every decoding sequence its one token
 * first, then spends what is left of the token budget on prefill chunks,
 * so a long prompt never stalls running streams.  Sampled tokens become
 * text in the slot's output area at once, and the owning worker is told.
 *
 * Chat requests are rendered with the model's chat template first, and
 * end at the template's stop tokens too.  With stop strings, the text
 * that could still become one is written but not published (out_len
 * stays before it) until it is clearly not one; a stop string found
 * ends the sequence with the text before it.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "mono_clock.h"
#include "scheduler.h"
#include "stop.h"
#include "utf8.h"


typedef struct {
    int         active;
    uint32_t    slot;
    uint32_t    owner;
    int32_t    *tokens;             /* prompt, then generated tokens */
    int         n_prompt;
    int         n_gen;
    int         n_done;             /* positions already in the KV cache */
    int         max_tokens;
    float       temperature;
    float       top_p;
    int         top_k;
    float       presence;
    float       frequency;
    int         logprobs;           /* -1: none */
    uint64_t    rng;
    int32_t     prev;               /* last token, for detokenisation */
    unsigned char  pend[16];        /* incomplete UTF-8 held back */
    int         n_pend;
    int         chat;               /* ends at the template's stops too */
    stop_set_t  stops;              /* points into the slot */
    uint32_t    out_w;              /* text written; out_len <= out_w */
    uint32_t    out_chars;          /* characters in out[0, out_w) */
    int         stopped;            /* a stop string was found */
    uint32_t    epoch;              /* new with each admission */
    int         n_inflight;         /* sampled tokens the host has not
                                       seen yet (0 or 1 when building) */
    int         last_item;          /* its item in the step begun last */
} seq_t;


/*
 * One step's items and results.  Two of them: with overlapped steps the
 * next one is built and begun while the last one is still on the
 * device, and its results are read after.
 */
typedef struct {
    engine_item_t      *items;
    int                *item_seq;
    uint32_t           *item_epoch;     /* the seq's epoch when built */
    int32_t            *sampled;
    engine_logprobs_t  *lp_out;
    int                 n;
} step_buf_t;


struct scheduler_s {
    scheduler_opts_t        opts;
    gpu_channel_header_t   *h;
    const model_t          *model;
    tokenizer_t            *tok;
    engine_t               *engine;
    scheduler_notify_pt     notify;
    void                   *notify_data;

    int                     ctx_len;
    int                     vocab;

    /* waiting requests: FIFO of slot indices, prompts tokenized */
    uint32_t               *wait_q;
    uint32_t                wait_head;
    uint32_t                wait_n;
    int32_t               **slot_ids;       /* [n_slots][ctx_len] */
    int                    *slot_n_ids;
    int64_t                 first_wait_ns;  /* oldest arrival, batch fill */

    seq_t                  *seqs;           /* [max_seqs] */
    int32_t                *seq_tokens;     /* [max_seqs * ctx_len] */
    int                     n_running;

    step_buf_t              buf[2];
    int                     next;           /* the buffer built next */
    int                     n_pending;      /* steps begun, not read */
    int                     overlap;        /* build the next step while
                                               the last one runs */
    unsigned char          *text_buf;       /* held back bytes + a token's */
    unsigned char          *clean_buf;      /* its sanitized form */
    int                     text_cap;
    uint64_t                rng_counter;

    const chat_template_t  *chat;
    int32_t                 chat_stop_ids[CHAT_MAX_STOPS];
    int                     n_chat_stops;
    chat_buf_t              chat_buf;       /* rendered prompt, reused */
};


static int64_t
now_ns(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}


static uint64_t
mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}


/*
 * The text of token id for logprobs: what it appends after an ordinary
 * token (no start-of-text space rule), or for a special token, which
 * appends nothing, its piece.  buf holds max_token_bytes + 16.
 */
static int
vocab_text(tokenizer_t *tok, int id, char *buf, int cap)
{
    int          n;
    size_t       len;
    const char  *piece;

    if (id >= tokenizer_vocab_size(tok)) {
        return 0;
    }

    if (tokenizer_is_special(tok, id)) {
        piece = tokenizer_piece(tok, id);
        len = piece ? strlen(piece) : 0;
        len = len < (size_t) cap ? len : (size_t) cap;
        memcpy(buf, piece, len);
        return (int) len;
    }

    n = tokenizer_decode_token(tok, id, id, buf, cap);
    return n > 0 ? n : 0;
}


size_t
scheduler_vocab_bytes(tokenizer_t *tok, int vocab)
{
    int     i, cap;
    char   *buf;
    size_t  total = 0;

    cap = tokenizer_max_token_bytes(tok) + 256;
    buf = malloc(cap);
    if (buf == NULL) {
        return 0;
    }
    for (i = 0; i < vocab; i++) {
        total += (size_t) vocab_text(tok, i, buf, cap);
    }
    free(buf);
    return total;
}


/* the region's token text table (channel.h), sized by the above */
static void
vocab_fill(scheduler_t *s)
{
    int        i, n, cap;
    char      *bytes = gpu_vocab_bytes(s->h), *buf;
    size_t     at = 0;
    uint32_t  *end = gpu_vocab_end(s->h);

    cap = tokenizer_max_token_bytes(s->tok) + 256;
    buf = malloc(cap);

    for (i = 0; i < (int) s->h->vocab_size; i++) {
        n = buf ? vocab_text(s->tok, i, buf, cap) : 0;
        if (at + n > s->h->vocab_bytes) {
            n = 0;                              /* cannot happen */
        }
        memcpy(bytes + at, buf, n);
        at += n;
        end[i] = (uint32_t) at;
    }
    free(buf);
}


scheduler_t *
scheduler_create(const scheduler_opts_t *o, gpu_channel_header_t *region,
    const model_t *m, tokenizer_t *tok, engine_t *e,
    scheduler_notify_pt notify, void *notify_data)
{
    int           i;
    uint32_t      n;
    scheduler_t  *s;

    s = calloc(1, sizeof(scheduler_t));
    if (s == NULL) {
        return NULL;
    }

    s->opts = *o;
    s->h = region;
    s->model = m;
    s->tok = tok;
    s->engine = e;
    s->notify = notify;
    s->notify_data = notify_data;
    s->ctx_len = (int) region->ctx_len;
    s->vocab = m->cfg.vocab_size;

    n = region->n_slots;
    s->wait_q = calloc(n, sizeof(uint32_t));
    s->slot_ids = calloc(n, sizeof(int32_t *));
    s->slot_n_ids = calloc(n, sizeof(int));
    s->seqs = calloc(o->max_seqs, sizeof(seq_t));
    s->seq_tokens = calloc((size_t) o->max_seqs * s->ctx_len,
                           sizeof(int32_t));
    for (i = 0; i < 2; i++) {
        step_buf_t *b = &s->buf[i];
        b->items = calloc(o->max_seqs, sizeof(engine_item_t));
        b->item_seq = calloc(o->max_seqs, sizeof(int));
        b->item_epoch = calloc(o->max_seqs, sizeof(uint32_t));
        b->sampled = calloc(o->max_seqs, sizeof(int32_t));
        b->lp_out = calloc(o->max_seqs, sizeof(engine_logprobs_t));
        if (b->items == NULL || b->item_seq == NULL || b->item_epoch == NULL
            || b->sampled == NULL || b->lp_out == NULL)
        {
            scheduler_destroy(s);
            return NULL;
        }
    }
    s->overlap = o->overlap_steps;
    s->text_cap = tokenizer_max_token_bytes(tok) + 16;
    s->text_buf = malloc(s->text_cap + 16);
    s->clean_buf = malloc(3 * (s->text_cap + 16));

    if (s->wait_q == NULL || s->slot_ids == NULL || s->slot_n_ids == NULL
        || s->seqs == NULL || s->seq_tokens == NULL || s->text_buf == NULL
        || s->clean_buf == NULL)
    {
        scheduler_destroy(s);
        return NULL;
    }

    for (i = 0; i < (int) n; i++) {
        s->slot_ids[i] = malloc((size_t) s->ctx_len * sizeof(int32_t));
        if (s->slot_ids[i] == NULL) {
            scheduler_destroy(s);
            return NULL;
        }
    }

    for (i = 0; i < o->max_seqs; i++) {
        s->seqs[i].tokens = s->seq_tokens + (size_t) i * s->ctx_len;
    }

    s->rng_counter = mix64((uint64_t) now_ns() ^ (uint64_t) getpid());

    vocab_fill(s);

    return s;
}


void
scheduler_destroy(scheduler_t *s)
{
    uint32_t  i;

    if (s == NULL) {
        return;
    }

    if (s->slot_ids) {
        for (i = 0; i < s->h->n_slots; i++) {
            free(s->slot_ids[i]);
        }
    }

    free(s->wait_q);
    free(s->slot_ids);
    free(s->slot_n_ids);
    free(s->seqs);
    free(s->seq_tokens);
    while (s->n_pending > 0 && s->engine != NULL
           && engine_step_end(s->engine, NULL) == 0)
    {
        s->n_pending--;
    }
    for (i = 0; i < 2; i++) {
        free(s->buf[i].items);
        free(s->buf[i].item_seq);
        free(s->buf[i].item_epoch);
        free(s->buf[i].sampled);
        free(s->buf[i].lp_out);
    }
    free(s->text_buf);
    free(s->clean_buf);
    free(s->chat_buf.p);
    free(s);
}


void
scheduler_set_chat(scheduler_t *s, const chat_template_t *ct)
{
    int  i, id;

    s->chat = ct;
    s->n_chat_stops = 0;
    for (i = 0; ct != NULL && i < ct->n_stops; i++) {
        id = tokenizer_token_id(s->tok, ct->stops[i]);
        if (id >= 0) {
            s->chat_stop_ids[s->n_chat_stops++] = id;
        }
    }
}


static void
stats_update(scheduler_t *s)
{
    uint64_t              decode, mixed;
    gpu_channel_stats_t  *st = &s->h->stats;

    __atomic_store_n(&st->running, (uint32_t) s->n_running,
                     __ATOMIC_RELAXED);
    __atomic_store_n(&st->waiting, s->wait_n, __ATOMIC_RELAXED);
    __atomic_store_n(&st->kv_blocks_used,
                     (uint32_t) engine_kv_blocks_used(s->engine),
                     __ATOMIC_RELAXED);
    __atomic_store_n(&st->device_allocs_after_start,
                     engine_allocs_after_start(s->engine), __ATOMIC_RELAXED);
    engine_graph_steps(s->engine, &decode, &mixed);
    __atomic_store_n(&st->graph_steps, decode + mixed, __ATOMIC_RELAXED);
}


/* DONE, or FREE if the worker cancelled meanwhile; tells the worker */
static void
slot_finish(scheduler_t *s, uint32_t idx, uint32_t from, uint32_t reason)
{
    gpu_slot_t  *slot = gpu_channel_slot(s->h, idx);

    slot->finish_reason = reason;

    if (!gpu_slot_cas(slot, from, GPU_SLOT_DONE)) {
        gpu_store_release(&slot->state, GPU_SLOT_FREE);
        return;
    }

    s->notify(s->notify_data, slot->owner);
}


static void
slot_error(scheduler_t *s, uint32_t idx, uint32_t from, uint32_t status,
    const char *type, const char *code, const char *param, const char *msg)
{
    gpu_slot_t  *slot = gpu_channel_slot(s->h, idx);

    slot->error_status = status;
    snprintf(slot->error_type, sizeof(slot->error_type), "%s", type);
    snprintf(slot->error_code, sizeof(slot->error_code), "%s",
             code ? code : "");
    snprintf(slot->error_param, sizeof(slot->error_param), "%s",
             param ? param : "");
    snprintf(slot->error_message, sizeof(slot->error_message), "%s", msg);

    slot_finish(s, idx, from, GPU_FINISH_ERROR);
}


/* check and tokenize one submission; 0 if it joins the waiting queue */
static int
admit_check(scheduler_t *s, uint32_t idx)
{
    int          n, i, total, rc;
    char         msg[GPU_ERROR_MSG_LEN];
    int32_t     *ids;
    gpu_slot_t  *slot;

    slot = gpu_channel_slot(s->h, idx);
    ids = s->slot_ids[idx];

    if (slot->prompt_kind == GPU_PROMPT_TOKENS) {
        n = (int) slot->prompt_len;
        if (n > s->ctx_len) {
            n = s->ctx_len + 1;
        } else {
            memcpy(ids, gpu_slot_prompt(s->h, slot), (size_t) n * 4);
        }
        for (i = 0; i < n && n <= s->ctx_len; i++) {
            if (ids[i] < 0 || ids[i] >= s->vocab) {
                snprintf(msg, sizeof(msg), "token id %d in the prompt is "
                         "outside the vocabulary (0..%d)", ids[i],
                         s->vocab - 1);
                slot_error(s, idx, GPU_SLOT_SUBMITTED, 400,
                           "invalid_request_error", "invalid_token",
                           "prompt", msg);
                return -1;
            }
        }

    } else if (slot->prompt_kind == GPU_PROMPT_CHAT) {
        if (s->chat == NULL || s->chat->family == CHAT_NONE) {
            slot_error(s, idx, GPU_SLOT_SUBMITTED, 400,
                       "invalid_request_error", "chat_template_unknown",
                       "messages", "this model has no chat template "
                       "ngx-gpu knows; start the backend with "
                       "--chat-template NAME");
            return -1;
        }
        msg[0] = '\0';
        rc = chat_render(s->chat, gpu_slot_prompt(s->h, slot),
                         slot->prompt_len, &s->chat_buf, msg, sizeof(msg));
        if (rc != 0) {
            slot_error(s, idx, GPU_SLOT_SUBMITTED, rc == -1 ? 400 : 500,
                       rc == -1 ? "invalid_request_error" : "server_error",
                       rc == -1 ? "invalid_messages" : NULL, "messages",
                       rc == -1 ? msg : "out of memory");
            return -1;
        }
        /* the template writes its own BOS, as HF's apply_chat_template */
        n = tokenizer_encode(s->tok, s->chat_buf.p, s->chat_buf.len, 0, ids,
                             s->ctx_len);
        if (n < 0) {
            slot_error(s, idx, GPU_SLOT_SUBMITTED, 500, "server_error",
                       NULL, NULL, "the prompt could not be tokenized");
            return -1;
        }

    } else {
        n = tokenizer_encode(s->tok, gpu_slot_prompt(s->h, slot),
                             slot->prompt_len, 1, ids, s->ctx_len);
        if (n < 0) {
            slot_error(s, idx, GPU_SLOT_SUBMITTED, 500, "server_error",
                       NULL, NULL, "the prompt could not be tokenized");
            return -1;
        }
    }

    if (n == 0) {
        slot_error(s, idx, GPU_SLOT_SUBMITTED, 400, "invalid_request_error",
                   "empty_prompt", "prompt", "the prompt is empty");
        return -1;
    }

    total = n + (int) slot->max_tokens;

    if (total > s->ctx_len || slot->max_tokens < 1
        || slot->max_tokens > s->h->max_new_tokens)
    {
        snprintf(msg, sizeof(msg), "This model's maximum context length is "
                 "%d tokens. However, you requested %d tokens (%d in your "
                 "prompt; %u for the completion). Please reduce your prompt;"
                 " or completion length.", s->ctx_len, total, n,
                 slot->max_tokens);
        slot_error(s, idx, GPU_SLOT_SUBMITTED, 400, "invalid_request_error",
                   "context_length_exceeded", "prompt", msg);
        return -1;
    }

    if (slot->logprobs >= 0
        && ((uint32_t) slot->logprobs > s->h->max_logprobs
            || slot->max_tokens > s->h->lp_tokens))
    {
        snprintf(msg, sizeof(msg), "logprobs: at most %u alternatives for "
                 "at most %u tokens", s->h->max_logprobs, s->h->lp_tokens);
        slot_error(s, idx, GPU_SLOT_SUBMITTED, 400, "invalid_request_error",
                   "invalid_value", "logprobs", msg);
        return -1;
    }

    if (slot->top_k < -1
        || !(slot->presence_penalty >= -2.0f
             && slot->presence_penalty <= 2.0f)
        || !(slot->frequency_penalty >= -2.0f
             && slot->frequency_penalty <= 2.0f))
    {
        slot_error(s, idx, GPU_SLOT_SUBMITTED, 400, "invalid_request_error",
                   "invalid_value", NULL, "top_k or a penalty is out of "
                   "range");
        return -1;
    }

    s->slot_n_ids[idx] = n;
    return 0;
}


void
scheduler_poll_ring(scheduler_t *s)
{
    int64_t      idx;
    uint32_t     st;
    gpu_slot_t  *slot;

    while ((idx = gpu_channel_pop(s->h)) >= 0) {
        slot = gpu_channel_slot(s->h, (uint32_t) idx);
        st = gpu_load_acquire(&slot->state);

        if (st == GPU_SLOT_CANCELLED) {
            gpu_store_release(&slot->state, GPU_SLOT_FREE);
            continue;
        }

        if (st != GPU_SLOT_SUBMITTED) {
            log_warn("slot %ld popped in state %u, ignored", (long) idx, st);
            continue;
        }

        if (admit_check(s, (uint32_t) idx) != 0) {
            continue;
        }

        if (s->wait_n == 0) {
            s->first_wait_ns = mono_ns();
        }

        s->wait_q[(s->wait_head + s->wait_n) % s->h->n_slots] =
                                                           (uint32_t) idx;
        s->wait_n++;
    }

    stats_update(s);
}


/* move waiting requests into the batch while there is room */
static void
admit(scheduler_t *s)
{
    int          i, free_seq;
    uint32_t     idx;
    seq_t       *q;
    gpu_slot_t  *slot;

    while (s->wait_n > 0 && s->n_running < s->opts.max_seqs) {
        idx = s->wait_q[s->wait_head];
        slot = gpu_channel_slot(s->h, idx);

        if (gpu_load_acquire(&slot->state) == GPU_SLOT_CANCELLED) {
            gpu_store_release(&slot->state, GPU_SLOT_FREE);
            goto next;
        }

        free_seq = -1;
        for (i = 0; i < s->opts.max_seqs; i++) {
            if (!s->seqs[i].active) {
                free_seq = i;
                break;
            }
        }

        if (engine_kv_reserve(s->engine, free_seq,
                              s->slot_n_ids[idx] + (int) slot->max_tokens)
            != 0)
        {
            break;                      /* wait for cache to free up */
        }

        if (!gpu_slot_cas(slot, GPU_SLOT_SUBMITTED, GPU_SLOT_RUNNING)) {
            engine_kv_release(s->engine, free_seq);
            gpu_store_release(&slot->state, GPU_SLOT_FREE);
            goto next;
        }

        q = &s->seqs[free_seq];
        q->active = 1;
        q->slot = idx;
        q->owner = slot->owner;
        q->n_prompt = s->slot_n_ids[idx];
        memcpy(q->tokens, s->slot_ids[idx], (size_t) q->n_prompt * 4);
        q->n_gen = 0;
        q->n_done = 0;
        q->max_tokens = (int) slot->max_tokens;
        q->temperature = slot->temperature;
        q->top_p = slot->top_p;
        q->top_k = slot->top_k;
        q->presence = slot->presence_penalty;
        q->frequency = slot->frequency_penalty;
        q->logprobs = slot->logprobs;
        q->rng = slot->has_seed ? mix64(slot->seed)
                                : mix64(++s->rng_counter);
        /* the text continues the prompt: only right after BOS does the
         * first token lose its leading space */
        q->prev = q->tokens[q->n_prompt - 1];
        q->n_pend = 0;
        q->chat = slot->prompt_kind == GPU_PROMPT_CHAT;
        stop_init(&q->stops, slot);
        q->out_w = 0;
        q->out_chars = 0;
        q->stopped = 0;
        q->epoch++;
        q->n_inflight = 0;
        q->last_item = -1;
        slot->n_prompt_tokens = (uint32_t) q->n_prompt;
        s->n_running++;

        __atomic_add_fetch(&s->h->stats.prompt_tokens, (uint64_t) q->n_prompt,
                           __ATOMIC_RELAXED);

    next:
        s->wait_head = (s->wait_head + 1) % s->h->n_slots;
        s->wait_n--;
        if (s->wait_n > 0) {
            s->first_wait_ns = mono_ns();
        }
    }
}


static void
seq_drop(scheduler_t *s, int i)
{
    engine_kv_release(s->engine, i);
    s->seqs[i].active = 0;
    s->n_running--;
}


/*
 * Append in[0, n_in) (the bytes held back, then a token's), sanitized,
 * to the slot's output, hold back an incomplete character's bytes (at
 * most 3) in pend, and publish what may be sent: all of it, or with stop
 * strings what cannot be the start of one.
 */
static void
seq_emit(scheduler_t *s, seq_t *q, const unsigned char *in, size_t n_in,
    int final)
{
    long         at;
    size_t       n, used, from, pub;
    gpu_slot_t  *slot = gpu_channel_slot(s->h, q->slot);
    char        *out = gpu_slot_out(s->h, slot);

    n = utf8_sanitize(in, n_in, final, s->clean_buf, &used);

    if (q->out_w + n > s->h->out_bytes_cap) {
        n = s->h->out_bytes_cap - q->out_w;         /* cannot happen */
    }

    memcpy(out + q->out_w, s->clean_buf, n);
    memmove(q->pend, in + used, n_in - used);
    q->n_pend = (int) (n_in - used);
    from = q->out_w;
    q->out_w += (uint32_t) n;
    q->out_chars += (uint32_t) utf8_chars(s->clean_buf, n);
    pub = q->out_w;

    if (q->stops.n > 0) {
        at = stop_find(&q->stops, out, q->out_w, from);
        if (at >= 0) {
            q->stopped = 1;
            q->out_chars -= (uint32_t) utf8_chars((unsigned char *) out + at,
                                                  q->out_w - (size_t) at);
            q->out_w = (uint32_t) at;
            q->n_pend = 0;
            pub = (size_t) at;
        } else if (!final) {
            pub -= stop_hold(&q->stops, out, q->out_w);
        }
    }

    if (pub > slot->out_len) {
        gpu_store_release(&slot->out_len, (uint32_t) pub);
    }
}


static int
is_eos(scheduler_t *s, seq_t *q, int32_t t)
{
    int  i;

    for (i = 0; i < s->model->cfg.n_eos; i++) {
        if (s->model->cfg.eos_ids[i] == t) {
            return 1;
        }
    }
    for (i = 0; q->chat && i < s->n_chat_stops; i++) {
        if (s->chat_stop_ids[i] == t) {
            return 1;
        }
    }
    return 0;
}


/*
 * A stop string cut the text: the tokens that start at or after the cut
 * made only the stop string (and what followed it), so their records
 * are marked GPU_LP_CUT and the logprobs describe the text returned.
 * usage still counts them: they were generated.  nginx never sent them
 * while streaming: it sends a token's record once the token's start is
 * in published text, and nothing at or past the cut ever is.
 */
static void
seq_logprobs_cut(scheduler_t *s, seq_t *q)
{
    int              i;
    gpu_token_lp_t  *rec;
    gpu_slot_t      *slot = gpu_channel_slot(s->h, q->slot);

    i = q->n_gen < (int) s->h->lp_tokens ? q->n_gen : (int) s->h->lp_tokens;

    while (--i >= 0) {
        rec = gpu_slot_lp(s->h, slot, (uint32_t) i);
        if (rec->text_offset < q->out_chars) {
            break;
        }
        __atomic_store_n(&rec->text_offset, GPU_LP_CUT, __ATOMIC_RELAXED);
    }
}


static void
seq_end(scheduler_t *s, int i, uint32_t reason)
{
    seq_t       *q = &s->seqs[i];
    gpu_slot_t  *slot = gpu_channel_slot(s->h, q->slot);

    if (!q->stopped && (q->n_pend > 0 || q->out_w > slot->out_len)) {
        /* held back bytes: never a whole character or stop string */
        seq_emit(s, q, q->pend, (size_t) q->n_pend, 1);
        if (q->n_gen > 0) {
            gpu_slot_tok_end(s->h, slot)[q->n_gen - 1] = slot->out_len;
        }
    }

    if (q->stopped && q->logprobs >= 0) {
        seq_logprobs_cut(s, q);
    }

    slot_finish(s, q->slot, GPU_SLOT_RUNNING, reason);
    seq_drop(s, i);
}


/* one sampled token's logprobs record, before n_tokens counts it */
static void
seq_logprobs(scheduler_t *s, seq_t *q, int32_t t, engine_logprobs_t *lp)
{
    int              k;
    gpu_token_lp_t  *rec;

    rec = gpu_slot_lp(s->h, gpu_channel_slot(s->h, q->slot),
                      (uint32_t) q->n_gen);
    rec->token = t;
    rec->logprob = lp->logprob;
    /* characters complete before it: bytes held back (a split
     * character) do not count yet, so a token that continues one gets
     * that character's offset */
    rec->text_offset = q->out_chars;
    rec->n_top = (uint32_t) (lp->n_top < q->logprobs ? lp->n_top
                                                     : q->logprobs);
    for (k = 0; k < (int) rec->n_top; k++) {
        rec->top[k].token = lp->top_id[k];
        rec->top[k].logprob = lp->top_logprob[k];
    }
}


/* one sampled token: text into the slot, then maybe the end */
static void
seq_token(scheduler_t *s, int i, int32_t t, engine_logprobs_t *lp)
{
    int          n;
    seq_t       *q = &s->seqs[i];
    gpu_slot_t  *slot = gpu_channel_slot(s->h, q->slot);

    if (q->n_gen == 0) {
        slot->first_token_ns = (uint64_t) now_ns();
    }

    if (is_eos(s, q, t)) {
        seq_end(s, i, GPU_FINISH_STOP);
        return;
    }

    if (q->logprobs >= 0 && (uint32_t) q->n_gen < s->h->lp_tokens) {
        seq_logprobs(s, q, t, lp);
    }

    q->tokens[q->n_prompt + q->n_gen] = t;

    /* the bytes held back, then the token's (up to 128 in Qwen's
     * vocabulary: never through pend) */
    memcpy(s->text_buf, q->pend, q->n_pend);
    n = tokenizer_decode_token(s->tok, q->prev, t,
                               (char *) s->text_buf + q->n_pend, s->text_cap);
    if (n > 0) {
        seq_emit(s, q, s->text_buf, (size_t) (q->n_pend + n), 0);
    }

    gpu_slot_tok_end(s->h, slot)[q->n_gen] = slot->out_len;
    q->n_gen++;
    q->prev = t;
    gpu_store_release(&slot->n_tokens, (uint32_t) q->n_gen);
    s->notify(s->notify_data, q->owner);

    if (q->stopped) {
        seq_end(s, i, GPU_FINISH_STOP);
    } else if (q->n_gen >= q->max_tokens
               || q->n_prompt + q->n_gen >= s->ctx_len)
    {
        seq_end(s, i, GPU_FINISH_LENGTH);
    }
}


int
scheduler_has_work(const scheduler_t *s)
{
    return s->n_running > 0 || s->wait_n > 0 || s->n_pending > 0;
}


int
scheduler_wait_us(const scheduler_t *s)
{
    int64_t  waited;

    /* fill an empty batch for a moment; never delay running streams */
    if (s->n_running > 0 || s->wait_n == 0 || s->opts.batch_wait_us <= 0
        || (int) s->wait_n >= s->opts.max_seqs)
    {
        return 0;
    }

    waited = (mono_ns() - s->first_wait_ns) / 1000;

    return waited >= s->opts.batch_wait_us
           ? 0 : (int) (s->opts.batch_wait_us - waited);
}


static void
batch_histogram(scheduler_t *s, int n)
{
    int                   b;
    gpu_channel_stats_t  *st = &s->h->stats;

    for (b = 0; b < GPU_BATCH_BUCKETS; b++) {
        if ((uint32_t) n <= gpu_batch_bucket_le[b]) {
            break;
        }
    }

    __atomic_add_fetch(&st->batch_bucket[b], 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&st->batch_sum, (uint64_t) n, __ATOMIC_RELAXED);
    __atomic_add_fetch(&st->steps, 1, __ATOMIC_RELAXED);
}


/*
 * The items of the next step into b: decode tokens first, then prefill
 * chunks within what is left of the token budget.  A sequence whose last
 * token is still on the device (sampled by the step begun last) decodes
 * it as ENGINE_TOKEN_OF(its item there), unless that token ends it by
 * length anyway.  *sync: a sequence had to be left out because the host
 * must see its token first (penalties count the host's tokens); the
 * caller reads the last step and builds again.
 */
static int
build(scheduler_t *s, step_buf_t *b, int *sync)
{
    int             i, n, budget, pending, pass, total, k, feed;
    seq_t          *q;
    engine_item_t  *it;

    n = 0;
    budget = s->opts.max_batch_tokens;
    *sync = 0;

    for (pass = 0; pass < 2; pass++) {
        for (i = 0; i < s->opts.max_seqs && budget > 0; i++) {
            q = &s->seqs[i];
            if (!q->active) {
                continue;
            }

            feed = q->n_inflight > 0;
            total = q->n_prompt + q->n_gen + q->n_inflight;
            pending = total - q->n_done;

            if ((pass == 0) != (feed || (pending == 1 && q->n_gen > 0))) {
                continue;
            }
            if (feed) {
                if (q->n_gen + q->n_inflight >= q->max_tokens
                    || total >= s->ctx_len)
                {
                    continue;           /* it ends with that token */
                }
                if (q->presence != 0.0f || q->frequency != 0.0f
                    || q->last_item < 0)
                {
                    *sync = 1;
                    continue;
                }
            }

            k = pending < budget ? pending : budget;
            it = &b->items[n];
            it->seq = i;
            it->pos = q->n_done;
            it->n_tokens = k;
            if (feed) {
                /* the token's slot in q->tokens, for after the step */
                q->tokens[q->n_done] = ENGINE_TOKEN_OF(q->last_item);
            }
            it->tokens = q->tokens + q->n_done;
            it->sample = (q->n_done + k == total);
            it->temperature = q->temperature;
            it->top_p = q->top_p;
            it->rng = &q->rng;
            it->top_k = q->top_k;
            it->presence_penalty = q->presence;
            it->frequency_penalty = q->frequency;
            it->gen = q->tokens + q->n_prompt;
            it->n_gen = q->n_gen;
            it->n_logprobs = q->logprobs > 0 ? q->logprobs : 0;
            it->lp = q->logprobs >= 0 ? &b->lp_out[n] : NULL;
            b->item_seq[n] = i;
            b->item_epoch[n] = q->epoch;
            budget -= k;
            n++;
        }
    }
    b->n = n;
    return n;
}


/* the sequences of b's step move on: positions stored, tokens sampled */
static void
launched(scheduler_t *s, step_buf_t *b)
{
    int     k;
    seq_t  *q;

    for (k = 0; k < s->opts.max_seqs; k++) {
        s->seqs[k].last_item = -1;
    }
    for (k = 0; k < b->n; k++) {
        q = &s->seqs[b->item_seq[k]];
        q->n_done += b->items[k].n_tokens;
        if (b->items[k].sample) {
            q->n_inflight++;
            q->last_item = k;
        }
    }
}


/* read the oldest step begun: its tokens go to their sequences */
static int
finish(scheduler_t *s, step_buf_t *b)
{
    int     k, i;
    seq_t  *q;

    if (engine_step_end(s->engine, b->sampled) != 0) {
        s->n_pending--;
        return -1;
    }
    s->n_pending--;
    batch_histogram(s, b->n);

    for (k = 0; k < b->n; k++) {
        i = b->item_seq[k];
        q = &s->seqs[i];
        if (!q->active || q->epoch != b->item_epoch[k]
            || !b->items[k].sample)
        {
            continue;       /* ended (or cancelled) after it was built */
        }
        q->n_inflight--;
        __atomic_add_fetch(&s->h->stats.generation_tokens, 1,
                           __ATOMIC_RELAXED);
        seq_token(s, i, b->sampled[k], &b->lp_out[k]);
    }
    return 0;
}


int
scheduler_step(scheduler_t *s)
{
    int          i, n, sync;
    seq_t       *q;
    step_buf_t  *b, *last;

    /* cancelled sequences leave before the step */
    for (i = 0; i < s->opts.max_seqs; i++) {
        q = &s->seqs[i];
        if (q->active && gpu_load_acquire(&gpu_channel_slot(s->h, q->slot)
                                          ->state) == GPU_SLOT_CANCELLED)
        {
            gpu_store_release(&gpu_channel_slot(s->h, q->slot)->state,
                              GPU_SLOT_FREE);
            seq_drop(s, i);
        }
    }

    admit(s);

    b = &s->buf[s->next];
    last = &s->buf[s->next ^ 1];

    n = build(s, b, &sync);
    if (s->n_pending > 0 && (sync || n == 0 || !s->overlap)) {
        /* the host must see the last step's tokens first */
        if (finish(s, last) != 0) {
            return -1;
        }
        n = build(s, b, &sync);
    }

    if (n > 0) {
        if (engine_step_begin(s->engine, b->items, n) != 0) {
            return -1;
        }
        s->n_pending++;
        launched(s, b);
        s->next ^= 1;

        /* while this step runs, the one before it is read; without
         * overlap, this one */
        if (s->n_pending > 1 ? finish(s, last) : !s->overlap
                                                 ? finish(s, b) : 0)
        {
            return -1;
        }
    }

    stats_update(s);

    if (n > 0 && s->opts.step_delay_us > 0) {
        usleep(s->opts.step_delay_us);
    }

    return 0;
}


void
scheduler_abort_all(scheduler_t *s, const char *why)
{
    int       i;
    uint32_t  idx;

    for (i = 0; i < s->opts.max_seqs; i++) {
        if (s->seqs[i].active) {
            idx = s->seqs[i].slot;
            seq_drop(s, i);
            slot_error(s, idx, GPU_SLOT_RUNNING, 503, "server_error",
                       "backend_unavailable", NULL, why);
        }
    }

    while (s->wait_n > 0) {
        idx = s->wait_q[s->wait_head];
        s->wait_head = (s->wait_head + 1) % s->h->n_slots;
        s->wait_n--;
        slot_error(s, idx, GPU_SLOT_SUBMITTED, 503, "server_error",
                   "backend_unavailable", NULL, why);
    }

    stats_update(s);
}
