/*
 * kv_pool.h - the bookkeeping of a paged KV cache: which physical blocks
 * belong to which sequence.  The memory itself is the engine's (host or
 * device); this is the host-side map every engine shares.  All arrays
 * are allocated at init; reserve and release only move block ids.
 */

#ifndef GPU_KV_POOL_H
#define GPU_KV_POOL_H

#include <stdint.h>

typedef struct {
    int       n_blocks;
    int       block_size;         /* tokens per block */
    int       max_seqs;
    int       max_blocks_per_seq; /* ceil(max_seq_len / block_size) */
    int32_t  *tables;             /* [max_seqs][max_blocks_per_seq] */
    int32_t  *n_seq_blocks;       /* [max_seqs] blocks each holds */
    int32_t  *free_ids;           /* stack of free block ids */
    int       n_free;
} kv_pool_t;

/* blocks that max_seqs sequences of max_seq_len tokens can use at most */
int kv_pool_blocks_needed(int max_seqs, int max_seq_len, int block_size);

int kv_pool_init(kv_pool_t *kv, int n_blocks, int block_size, int max_seqs,
    int max_seq_len);
void kv_pool_free(kv_pool_t *kv);

/* grow seq to cover positions [0, n_tokens); 0, or -1 and no change */
int kv_pool_reserve(kv_pool_t *kv, int seq, int n_tokens);
void kv_pool_release(kv_pool_t *kv, int seq);

/* tokens seq can hold now */
static inline int
kv_pool_capacity(const kv_pool_t *kv, int seq)
{
    return kv->n_seq_blocks[seq] * kv->block_size;
}

/* logical block -> physical block of seq */
static inline const int32_t *
kv_pool_table(const kv_pool_t *kv, int seq)
{
    return kv->tables + (int64_t) seq * kv->max_blocks_per_seq;
}

#endif /* GPU_KV_POOL_H */
