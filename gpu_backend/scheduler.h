/*
 * scheduler.h - continuous batching over the shared-memory slots.
 *
 * Requests come from the submission ring; each forward step runs every
 * running sequence together (one decode token each) plus prefill chunks
 * of newly admitted ones, within the step's token budget; finished and
 * cancelled sequences leave between steps.  Every table is sized at
 * start; the steady state allocates nothing.
 */

#ifndef GPU_SCHEDULER_H
#define GPU_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>

#include "channel.h"
#include "chat_template.h"
#include "engine.h"
#include "model.h"
#include "tokenizer.h"

typedef struct scheduler_s  scheduler_t;

typedef struct {
    int       max_seqs;           /* sequences in a step at most */
    int       max_batch_tokens;   /* tokens in a step at most */
    int       batch_wait_us;      /* wait to fill an empty batch */
    int       step_delay_us;      /* throttle: sleep after each step */
    int       overlap_steps;      /* build and begin the next step before
                                     reading the last one (engine.h's
                                     engine_step_begin/end) */
} scheduler_opts_t;

/* called for each worker whose slots changed, once per step at most */
typedef void (*scheduler_notify_pt)(void *data, uint32_t owner);

scheduler_t *scheduler_create(const scheduler_opts_t *o,
    gpu_channel_header_t *region, const model_t *m, tokenizer_t *tok,
    engine_t *e, scheduler_notify_pt notify, void *notify_data);
void scheduler_destroy(scheduler_t *s);

/* bytes of the region's token text table (channel.h) for this tokenizer */
size_t scheduler_vocab_bytes(tokenizer_t *tok, int vocab);

/*
 * Chat requests (GPU_PROMPT_CHAT) are rendered with ct, which must live
 * as long as the scheduler; its stop tokens end chat answers beside the
 * model's end-of-sequence ids.  Without it chat requests get 400.
 */
void scheduler_set_chat(scheduler_t *s, const chat_template_t *ct);

/* take new submissions off the ring (validating and tokenizing them) */
void scheduler_poll_ring(scheduler_t *s);

/* 1 if a step would do work now */
int scheduler_has_work(const scheduler_t *s);

/* microseconds to wait before stepping (batch fill), 0 to step now */
int scheduler_wait_us(const scheduler_t *s);

/* run one forward step; 0, or -1 on an engine error */
int scheduler_step(scheduler_t *s);

/* answer every request with 503 (shutdown); leaves nothing running */
void scheduler_abort_all(scheduler_t *s, const char *why);

#endif /* GPU_SCHEDULER_H */
