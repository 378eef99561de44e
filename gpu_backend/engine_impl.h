/*
 * engine_impl.h - what an engine implements behind engine.h.
 *
 * engine.c checks options and step arguments, owns the KV-cache block
 * bookkeeping (kv_pool.h) and dispatches the rest through an ops table.
 * An engine allocates its weights, activations and KV memory in create()
 * and reports how many KV blocks it made room for.
 */

#ifndef GPU_ENGINE_IMPL_H
#define GPU_ENGINE_IMPL_H

#include "engine.h"
#include "kv_pool.h"

typedef struct {
    const char  *kind;                /* "cpu", "cuda" */

    /* devices of this kind present (the CPU: 1) */
    int        (*n_devices)(void);

    /* o has every default filled in; *kv_blocks: the pool's size */
    void      *(*create)(const model_t *m, const engine_opts_t *o,
                   int device, int *kv_blocks, char *err, size_t errlen);
    void       (*destroy)(void *impl);
    const char *(*name)(const void *impl);

    /* items are checked: seqs in range, tokens in the vocabulary, every
     * position within the blocks kv holds for its sequence */
    int        (*step)(void *impl, const kv_pool_t *kv,
                   const engine_item_t *items, int n, int32_t *out_tokens,
                   float *logits);

    uint64_t   (*allocs_after_start)(const void *impl);

    /* optional (NULL: not needed) */
    /* why n_devices() found none ("CUDA driver too old", ...) */
    const char *(*probe_error)(void);
    /* why the last step() returned -1 */
    const char *(*step_error)(const void *impl);
    /* page-lock host memory for the device; 0 or -1 with err set */
    int        (*register_host)(void *impl, void *p, size_t len, char *err,
                   size_t errlen);
    /* queue a step / wait for the oldest queued one (engine.h's
     * engine_step_begin/end; tokens may be ENGINE_TOKEN_OF(i), checked
     * against the step begun last); without them engine.c runs step()
     * at begin, after putting the tokens in */
    int        (*step_begin)(void *impl, const kv_pool_t *kv,
                   const engine_item_t *items, int n);
    int        (*step_end)(void *impl, int32_t *out_tokens);
    /* steps that replayed a graph: decode only, mixed (engine.h) */
    void       (*graph_steps)(const void *impl, uint64_t *decode,
                   uint64_t *mixed);
} engine_ops_t;

extern const engine_ops_t  engine_cpu_ops;
#ifdef NGX_GPU_HAVE_CUDA
extern const engine_ops_t  engine_cuda_ops;
#endif

#endif /* GPU_ENGINE_IMPL_H */
