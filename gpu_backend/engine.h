/*
 * engine.h - the seam between the scheduler and a compute engine.
 *
 * The scheduler decides what runs in a step; an engine runs it.  The CPU
 * engine (engine_cpu.c) is the reference; the CUDA engine (engine_cuda.cu,
 * built only when nvcc is found) implements the same calls.  An engine
 * takes all of its memory at engine_create(): weights, activations for the
 * largest step the options allow, and a paged KV-cache pool.  Nothing is
 * allocated per request or per step.
 */

#ifndef GPU_ENGINE_H
#define GPU_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef struct engine_s  engine_t;

typedef struct {
    const char  *device;          /* "cpu", "cuda", "cuda:N", "auto" */
    int          threads;         /* CPU engine worker threads */
    int          max_seqs;        /* sequences in the batch at most */
    int          max_batch_tokens;/* tokens in one step at most */
    int          kv_block_size;   /* tokens per KV-cache block */
    int          kv_blocks;       /* pool size; 0: derive from below */
    double       kv_fraction;     /* GPU: share of free device memory */
    size_t       kv_bytes;        /* CPU: pool size in bytes if !kv_blocks */
    const char  *dtype;           /* GPU: "bfloat16", "float16", "float32"
                                     (or bf16, fp16, fp32); NULL or "":
                                     config.json's torch_dtype */
} engine_opts_t;

/* alternatives a step reports per sampled token at most */
#define ENGINE_MAX_LOGPROBS  20

/*
 * Log-probabilities of a sampled token: the model's own distribution,
 * log_softmax(logits), before penalties, temperature, top_k and top_p
 * (vLLM's default).  top: the n_top most likely tokens, most likely
 * first, ties to the lower id.
 */
typedef struct {
    float           logprob;      /* of the sampled token */
    int32_t         n_top;
    int32_t         top_id[ENGINE_MAX_LOGPROBS];
    float           top_logprob[ENGINE_MAX_LOGPROBS];
} engine_logprobs_t;

/* one sequence's share of a step; fields left 0 are off (sampler.h) */
typedef struct {
    int32_t         seq;          /* KV-cache owner, 0 .. max_seqs-1 */
    int32_t         pos;          /* position of tokens[0] */
    int32_t         n_tokens;     /* 1 for decode, a chunk for prefill */
    const int32_t  *tokens;
    int32_t         sample;       /* 1: sample a token after the last */
    float           temperature;  /* 0: greedy */
    float           top_p;        /* 1: no nucleus cut */
    uint64_t       *rng;          /* per-sequence state, advanced */
    int32_t         top_k;        /* <= 0: off */
    float           presence_penalty;   /* OpenAI's; 0: off */
    float           frequency_penalty;
    /* the tokens this sequence sampled so far, which the penalties
     * count; the CUDA engine keeps the counts of a sequence on the
     * device and reloads them only when n_gen is not what it counted */
    const int32_t  *gen;
    int32_t         n_gen;
    int32_t         n_logprobs;   /* alternatives wanted, 0 .. 20 */
    engine_logprobs_t  *lp;       /* not NULL: filled when sampling */
} engine_item_t;

engine_t *engine_create(const model_t *m, const engine_opts_t *o,
    char *err, size_t errlen);
void engine_destroy(engine_t *e);

/* "cpu", "cuda:0" */
const char *engine_name(const engine_t *e);

/* make positions [0, n_tokens) of seq writable; 0, or -1 if no blocks */
int engine_kv_reserve(engine_t *e, int seq, int n_tokens);
/* give back all blocks of seq */
void engine_kv_release(engine_t *e, int seq);
int engine_kv_blocks_total(const engine_t *e);
int engine_kv_blocks_used(const engine_t *e);
int engine_kv_block_size(const engine_t *e);

/*
 * Run one forward step over n items (sum of n_tokens <= max_batch_tokens,
 * n <= max_seqs).  For every item with sample != 0, out_tokens[i] is the
 * sampled next token; other entries are left as they are.  When logits is
 * not NULL it receives the last position's logits of every item, one row
 * of vocab_size floats per item (tests compare them with references).
 * Returns 0, or -1 on a device error.
 */
int engine_step(engine_t *e, const engine_item_t *items, int n,
    int32_t *out_tokens, float *logits);

/*
 * The same step in two halves, so that the host's work between steps
 * (the scheduler's bookkeeping, waking nginx workers) overlaps the
 * device's: engine_step_begin() queues a step and returns; steps end in
 * the order they began, engine_step_end() waiting for the oldest and
 * giving its sampled tokens as engine_step() would (and filling the lp
 * records of its items, which must stay valid until then).  At most
 * ENGINE_MAX_PENDING steps may be begun and not ended.
 *
 * A decode item of the next step may use a token that the host has not
 * seen yet: ENGINE_TOKEN_OF(i) as its one token stands for the token
 * sampled for item i of the step begun last (which must sample).  The
 * device reads it where it left it.  Not with penalties: they count the
 * sampled tokens the host gives in gen.
 */
#define ENGINE_MAX_PENDING    2
#define ENGINE_TOKEN_OF(i)    (-2 - (i))

int engine_step_begin(engine_t *e, const engine_item_t *items, int n);
int engine_step_end(engine_t *e, int32_t *out_tokens);
/* steps begun and not yet ended */
int engine_steps_pending(const engine_t *e);
/* 1 if engine_step_begin() returns before the step has run (the CUDA
 * engine); 0 if it runs the step there and then (the CPU one) */
int engine_runs_async(const engine_t *e);

/* why the last engine_step() returned -1 ("" after a good step) */
const char *engine_last_error(const engine_t *e);

/* device allocations made after engine_create() returned (must be 0) */
uint64_t engine_allocs_after_start(const engine_t *e);

/* steps run so far that replayed a CUDA graph: decode tokens only, and
 * mixed (requests joining: prompt chunks beside decode tokens); the
 * others ran their kernels one by one.  0 and 0 for the CPU engine. */
void engine_graph_steps(const engine_t *e, uint64_t *decode,
    uint64_t *mixed);

/*
 * Page-lock [p, p + len) for the engine's device (the shared region
 * nginx workers write into), so copies from it are plain DMA.  A no-op
 * on the CPU.  0, or -1 with err set; the region stays registered until
 * engine_destroy().
 */
int engine_register_host(engine_t *e, void *p, size_t len, char *err,
    size_t errlen);

#endif /* GPU_ENGINE_H */
