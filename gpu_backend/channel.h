/*
 * channel.h - the shared-memory channel between nginx workers and the
 * backend.  This header is the whole protocol; it is compiled into both
 * the nginx module (with nginx's -Werror flags) and the backend.
 *
 * One region per backend, created by the backend as a memfd and handed
 * to every nginx worker over the backend's Unix socket (SCM_RIGHTS).
 *
 *   +--------------------+  gpu_channel_header_t: limits, model, stats
 *   | header             |
 *   +--------------------+  submission ring: bounded MPMC queue of slot
 *   | ring               |  indices (workers produce, backend consumes)
 *   +--------------------+
 *   | slot 0             |  gpu_slot_t + prompt area + output area
 *   | slot 1 ...         |
 *   +--------------------+
 *
 * Slot life cycle (every transition is one atomic store or CAS):
 *
 *   FREE -(worker claims)-> CLAIMED -(worker fills, pushes)-> SUBMITTED
 *   SUBMITTED -(backend admits)-> RUNNING -(backend ends)-> DONE
 *   DONE -(worker has answered the client)-> FREE
 *   SUBMITTED|RUNNING -(client went away)-> CANCELLED -(backend)-> FREE
 *
 * Whoever loses a CAS race against CANCELLED frees the slot: the backend
 * when it tries RUNNING->DONE, the worker when it finds DONE on abort.
 *
 * Wake-ups travel over the Unix socket itself: a worker writes one byte
 * after pushing a slot, the backend writes one byte to a worker after a
 * step that changed any of its slots.  EOF on the socket means the peer
 * died: the worker fails its requests, the backend cancels the worker's
 * slots.
 */

#ifndef GPU_CHANNEL_H
#define GPU_CHANNEL_H

#include <stdint.h>
#include <stddef.h>

#define GPU_CHANNEL_MAGIC    0x4e475055u   /* "NGPU" */
#define GPU_CHANNEL_VERSION  6u

#define GPU_MODEL_NAME_LEN   128
#define GPU_ENGINE_NAME_LEN  32
#define GPU_ERROR_MSG_LEN    256
#define GPU_ERROR_PARAM_LEN  32
#define GPU_ERROR_CODE_LEN   48
#define GPU_TEMPLATE_NAME_LEN 32

/* stop strings: how many a request may give, and bytes each at most */
#define GPU_STOP_MAX         4
#define GPU_STOP_LEN         256

/* alternatives per token a request may ask for at most (OpenAI: 20) */
#define GPU_LOGPROBS_MAX     20

/* sequences per forward step: histogram bucket upper bounds */
#define GPU_BATCH_BUCKETS    10
static const uint32_t gpu_batch_bucket_le[GPU_BATCH_BUCKETS] = {
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512
};

typedef enum {
    GPU_SLOT_FREE = 0,
    GPU_SLOT_CLAIMED,
    GPU_SLOT_SUBMITTED,
    GPU_SLOT_RUNNING,
    GPU_SLOT_DONE,
    GPU_SLOT_CANCELLED
} gpu_slot_state_e;

/*
 * A slot's state word holds the state in its low 8 bits; CLAIMED also
 * carries the claiming worker's id (its low 24 bits) above them, so that
 * one compare-and-swap both claims a slot and names its owner, and a
 * worker that dies holding a claim leaves a slot the backend can free.
 */
#define GPU_SLOT_STATE(st)      ((st) & 0xffu)
#define GPU_SLOT_OWNER(st)      ((st) >> 8)
#define GPU_SLOT_CLAIMED_BY(w)  (GPU_SLOT_CLAIMED | (((w) & 0xffffffu) << 8))

typedef enum {
    GPU_PROMPT_TEXT = 0,            /* prompt area holds UTF-8 bytes */
    GPU_PROMPT_TOKENS,              /* prompt area holds int32 ids */
    GPU_PROMPT_CHAT                 /* prompt area holds chat messages */
} gpu_prompt_kind_e;

/*
 * A GPU_PROMPT_CHAT prompt is prompt_len bytes of message records, in
 * order: one byte gpu_chat_role_e, a uint32 content length (host byte
 * order, unaligned), then the content (UTF-8).  The backend renders them
 * with the model's chat template and tokenizes the result.
 */
#define GPU_CHAT_RECORD_HEAD  5

typedef enum {
    GPU_ROLE_SYSTEM = 0,
    GPU_ROLE_USER,
    GPU_ROLE_ASSISTANT
} gpu_chat_role_e;

typedef enum {
    GPU_FINISH_NONE = 0,
    GPU_FINISH_LENGTH,              /* max_tokens reached */
    GPU_FINISH_STOP,                /* end-of-sequence, stop token or
                                       stop string */
    GPU_FINISH_ERROR,               /* see error_status / error_message */
    GPU_FINISH_ABORT                /* backend shutting down */
} gpu_finish_e;

/* backend-wide counters, written by the backend only */
typedef struct {
    uint64_t  steps;                        /* forward steps run */
    uint64_t  batch_bucket[GPU_BATCH_BUCKETS + 1]; /* last is +Inf */
    uint64_t  batch_sum;                    /* sequences over all steps */
    uint64_t  prompt_tokens;
    uint64_t  generation_tokens;
    uint64_t  preemptions;
    uint32_t  running;                      /* sequences in the batch */
    uint32_t  waiting;                      /* submitted, not admitted */
    uint32_t  kv_blocks_total;
    uint32_t  kv_blocks_used;
    uint64_t  device_allocs_after_start;    /* must stay 0 */
    uint64_t  graph_steps;                  /* steps that replayed a CUDA
                                               graph (the others ran their
                                               kernels one by one) */
} gpu_channel_stats_t;

typedef struct {
    uint32_t  magic;
    uint32_t  version;
    uint64_t  region_size;
    uint64_t  backend_pid;
    uint64_t  start_ns;                     /* CLOCK_REALTIME at start */

    /* limits the worker validates against before submitting */
    uint32_t  n_slots;
    uint32_t  prompt_bytes_cap;             /* text prompt capacity */
    uint32_t  prompt_tokens_cap;            /* token prompt capacity */
    uint32_t  max_new_tokens;               /* upper bound of max_tokens */
    uint32_t  out_bytes_cap;                /* output text capacity */
    uint32_t  vocab_size;
    uint32_t  ctx_len;                      /* prompt + output limit */
    uint32_t  ready;                        /* model loaded, serving */

    char      model_name[GPU_MODEL_NAME_LEN];
    char      engine_name[GPU_ENGINE_NAME_LEN];   /* "cpu", "cuda:0" */

    /* layout */
    uint64_t  ring_off;
    uint32_t  ring_mask;                    /* ring capacity - 1 */
    uint32_t  pad0;
    uint64_t  slots_off;
    uint64_t  slot_stride;
    uint64_t  prompt_off;                   /* within a slot */
    uint64_t  tok_end_off;                  /* within a slot */
    uint64_t  out_off;                      /* within a slot */

    /* ring positions, each on its own cache line */
    uint64_t  enqueue_pos __attribute__((aligned(64)));
    uint64_t  dequeue_pos __attribute__((aligned(64)));

    gpu_channel_stats_t  stats __attribute__((aligned(64)));

    /* the chat template the backend renders with; "": chat refused */
    char      chat_template[GPU_TEMPLATE_NAME_LEN];

    /*
     * logprobs: each slot has lp_tokens gpu_token_lp_t records of
     * lp_stride bytes at lp_off, one per generated token, with room for
     * max_logprobs alternatives (the backend's --max-logprobs and
     * --logprobs-tokens); a request with logprobs may ask for at most
     * lp_tokens tokens
     */
    uint32_t  max_logprobs;
    uint32_t  lp_stride;
    uint32_t  lp_tokens;
    uint32_t  pad1;
    uint64_t  lp_off;                       /* within a slot */

    /*
     * every token's text, for logprobs: at vocab_off, uint32
     * vocab_end[vocab_size] (the end of token i's bytes, from
     * vocab_bytes_off), then the bytes; written by the backend before
     * ready.  A special token's text is its piece ("</s>").
     */
    uint64_t  vocab_off;
    uint64_t  vocab_bytes_off;
    uint64_t  vocab_bytes;
} gpu_channel_header_t;

typedef struct {
    uint64_t  seq;                          /* Vyukov cell sequence */
    uint64_t  value;                        /* slot index */
} gpu_ring_cell_t;

typedef struct {
    uint32_t  state;                        /* gpu_slot_state_e, atomic */
    uint32_t  owner;                        /* worker id from the hello */
    uint64_t  request_id;                   /* unique per claim */

    /* request: written by the worker before SUBMITTED */
    uint32_t  prompt_kind;
    uint32_t  prompt_len;                   /* bytes or tokens */
    uint32_t  max_tokens;
    uint32_t  stream;
    float     temperature;                  /* 0: greedy */
    float     top_p;                        /* 1: off */
    uint64_t  seed;
    uint32_t  has_seed;
    int32_t   top_k;                        /* <= 0: off */
    float     presence_penalty;             /* -2 .. 2 */
    float     frequency_penalty;            /* -2 .. 2 */
    int32_t   logprobs;                     /* -1: none; else the number
                                               of alternatives, at most
                                               header->max_logprobs */
    uint32_t  pad0;
    uint64_t  submit_ns;                    /* CLOCK_REALTIME */

    /* response: written by the backend */
    uint32_t  n_prompt_tokens;              /* set before the first token */
    uint32_t  n_tokens;                     /* generated so far, release */
    uint32_t  out_len;                      /* text bytes so far, release */
    uint32_t  finish_reason;                /* gpu_finish_e, before DONE */
    uint32_t  error_status;                 /* HTTP status on error */
    uint32_t  pad1;
    uint64_t  first_token_ns;
    char      error_type[GPU_ERROR_CODE_LEN];
    char      error_code[GPU_ERROR_CODE_LEN];
    char      error_param[GPU_ERROR_PARAM_LEN];
    char      error_message[GPU_ERROR_MSG_LEN];

    /*
     * stop strings, written by the worker before SUBMITTED: generation
     * ends before the first one the output text would contain, and none
     * of it is ever published
     */
    uint32_t  n_stop;
    uint32_t  stop_len[GPU_STOP_MAX];
    char      stop[GPU_STOP_MAX][GPU_STOP_LEN];

    /*
     * followed at header->prompt_off by the prompt area, at
     * header->tok_end_off by uint32 tok_end[max_new_tokens] (the output
     * text offset after each generated token, for per-token streaming),
     * at header->out_off by the output text, and at header->lp_off by
     * lp_tokens logprobs records (when the request asked for them,
     * record i is written before n_tokens becomes i + 1).
     */
} gpu_slot_t;

typedef struct {
    int32_t   token;
    float     logprob;
} gpu_logprob_t;

/*
 * one generated token's logprobs: lp_stride bytes.  text_offset counts
 * the characters (code points) of the output text complete before the
 * token: a token that starts inside a character split across tokens
 * gets that character's offset.  GPU_LP_CUT: the token starts in a stop
 * string, outside the text; the backend marks such records before DONE,
 * and they are never sent.
 */
#define GPU_LP_CUT  0xffffffffu

typedef struct {
    int32_t        token;
    float          logprob;
    uint32_t       text_offset;             /* see above */
    uint32_t       n_top;
    gpu_logprob_t  top[];                   /* n_top of them, most likely
                                               first */
} gpu_token_lp_t;

#define GPU_TOKEN_LP_SIZE(n)                                              \
    (offsetof(gpu_token_lp_t, top) + (size_t) (n) * sizeof(gpu_logprob_t))

/* the hello message the backend sends with the memfd */
typedef struct {
    uint32_t  magic;
    uint32_t  version;
    uint32_t  worker_id;
    uint32_t  pad;
    uint64_t  region_size;
} gpu_channel_hello_t;


static inline gpu_slot_t *
gpu_channel_slot(gpu_channel_header_t *h, uint32_t i)
{
    return (gpu_slot_t *) ((char *) h + h->slots_off + (uint64_t) i
                           * h->slot_stride);
}

static inline char *
gpu_slot_prompt(gpu_channel_header_t *h, gpu_slot_t *s)
{
    return (char *) s + h->prompt_off;
}

static inline uint32_t *
gpu_slot_tok_end(gpu_channel_header_t *h, gpu_slot_t *s)
{
    return (uint32_t *) ((char *) s + h->tok_end_off);
}

static inline char *
gpu_slot_out(gpu_channel_header_t *h, gpu_slot_t *s)
{
    return (char *) s + h->out_off;
}

static inline gpu_token_lp_t *
gpu_slot_lp(gpu_channel_header_t *h, gpu_slot_t *s, uint32_t i)
{
    return (gpu_token_lp_t *) ((char *) s + h->lp_off
                               + (uint64_t) i * h->lp_stride);
}

static inline uint32_t *
gpu_vocab_end(gpu_channel_header_t *h)
{
    return (uint32_t *) ((char *) h + h->vocab_off);
}

static inline char *
gpu_vocab_bytes(gpu_channel_header_t *h)
{
    return (char *) h + h->vocab_bytes_off;
}

static inline uint32_t
gpu_load_acquire(uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline void
gpu_store_release(uint32_t *p, uint32_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static inline int
gpu_slot_cas(gpu_slot_t *s, uint32_t expect, uint32_t desired)
{
    return __atomic_compare_exchange_n(&s->state, &expect, desired, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}


/*
 * region layout for given limits; fills the layout fields of h.
 * vocab_size and vocab_bytes size the token text table.
 */
uint64_t gpu_channel_layout(gpu_channel_header_t *h, uint32_t n_slots,
    uint32_t prompt_bytes_cap, uint32_t prompt_tokens_cap,
    uint32_t max_new_tokens, uint32_t out_bytes_cap, uint32_t max_logprobs,
    uint32_t lp_tokens, uint32_t vocab_size, uint64_t vocab_bytes);

/* initialise ring cells and slots in a zeroed region */
void gpu_channel_init(gpu_channel_header_t *h);

/* check a mapped region: 0 if usable, -1 otherwise */
int gpu_channel_check(gpu_channel_header_t *h, uint64_t mapped_size);

/* claim a FREE slot for worker `owner`; returns index or -1 (all busy) */
int64_t gpu_channel_claim(gpu_channel_header_t *h, uint32_t owner,
    uint32_t hint);

/* CLAIMED -> SUBMITTED and push onto the ring; 0 or -1 (ring full) */
int gpu_channel_submit(gpu_channel_header_t *h, uint32_t slot);

/* pop one submitted slot index; -1 when the ring is empty */
int64_t gpu_channel_pop(gpu_channel_header_t *h);

/* ring primitives, exposed for the unit test */
int gpu_ring_push(gpu_channel_header_t *h, uint64_t value);
int gpu_ring_pop(gpu_channel_header_t *h, uint64_t *value);

/*
 * worker side: the client went away.  Returns 1 if the slot is now the
 * backend's to free (it was SUBMITTED or RUNNING), 0 if the worker freed
 * it itself (it was CLAIMED or DONE).
 */
int gpu_channel_cancel(gpu_channel_header_t *h, uint32_t slot);

/* worker side: answer sent, DONE -> FREE */
void gpu_channel_release(gpu_channel_header_t *h, uint32_t slot);

/*
 * backend side: worker `owner` went away.  Its claimed and done slots
 * become FREE, its submitted and running ones CANCELLED (the scheduler
 * frees them); returns how many slots it held.
 */
uint32_t gpu_channel_drop_owner(gpu_channel_header_t *h, uint32_t owner);

#endif /* GPU_CHANNEL_H */
