/*
 * kv_pool.c - block allocation for the paged KV cache.
 */

#include <stdlib.h>
#include <string.h>

#include "kv_pool.h"

int
kv_pool_blocks_needed(int max_seqs, int max_seq_len, int block_size)
{
    int64_t n = (int64_t) max_seqs
                * ((max_seq_len + block_size - 1) / block_size);

    return n > INT32_MAX ? INT32_MAX : (int) n;
}

int
kv_pool_init(kv_pool_t *kv, int n_blocks, int block_size, int max_seqs,
    int max_seq_len)
{
    int i;

    memset(kv, 0, sizeof(*kv));
    if (n_blocks < 1 || block_size < 1 || max_seqs < 1 || max_seq_len < 1) {
        return -1;
    }
    kv->n_blocks = n_blocks;
    kv->block_size = block_size;
    kv->max_seqs = max_seqs;
    kv->max_blocks_per_seq = (max_seq_len + block_size - 1) / block_size;
    kv->tables = calloc((size_t) max_seqs * kv->max_blocks_per_seq,
                        sizeof(int32_t));
    kv->n_seq_blocks = calloc((size_t) max_seqs, sizeof(int32_t));
    kv->free_ids = malloc((size_t) n_blocks * sizeof(int32_t));
    if (kv->tables == NULL || kv->n_seq_blocks == NULL
        || kv->free_ids == NULL)
    {
        kv_pool_free(kv);
        return -1;
    }
    /* a stack popped from the top: block 0 goes out first */
    for (i = 0; i < n_blocks; i++) {
        kv->free_ids[i] = n_blocks - 1 - i;
    }
    kv->n_free = n_blocks;
    return 0;
}

void
kv_pool_free(kv_pool_t *kv)
{
    free(kv->tables);
    free(kv->n_seq_blocks);
    free(kv->free_ids);
    memset(kv, 0, sizeof(*kv));
}

int
kv_pool_reserve(kv_pool_t *kv, int seq, int n_tokens)
{
    int32_t *table;
    int want, have;

    if (seq < 0 || seq >= kv->max_seqs || n_tokens < 0) {
        return -1;
    }
    want = (n_tokens + kv->block_size - 1) / kv->block_size;
    have = kv->n_seq_blocks[seq];
    if (want > kv->max_blocks_per_seq) {
        return -1;                      /* past max_position_embeddings */
    }
    if (want - have > kv->n_free) {
        return -1;                      /* all or nothing */
    }
    table = kv->tables + (int64_t) seq * kv->max_blocks_per_seq;
    for (; have < want; have++) {
        table[have] = kv->free_ids[--kv->n_free];
    }
    kv->n_seq_blocks[seq] = have;
    return 0;
}

void
kv_pool_release(kv_pool_t *kv, int seq)
{
    int32_t *table;
    int i;

    if (seq < 0 || seq >= kv->max_seqs) {
        return;
    }
    /* push in reverse, so the next reserve gets the same blocks back */
    table = kv->tables + (int64_t) seq * kv->max_blocks_per_seq;
    for (i = kv->n_seq_blocks[seq] - 1; i >= 0; i--) {
        kv->free_ids[kv->n_free++] = table[i];
    }
    kv->n_seq_blocks[seq] = 0;
}
