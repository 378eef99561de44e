/*
 * channel.c - layout, submission ring and slot transitions of the
 * shared-memory channel (see channel.h).  Compiled into the backend and,
 * with nginx's flags, into the nginx module.
 *
 * The ring is a bounded multi-producer multi-consumer queue: each cell
 * carries a sequence number that says whose turn it is, so producers in
 * different nginx workers and the backend never take a lock.  A slot
 * index is in the ring at most once, and the ring holds at least n_slots
 * cells, so a push can only fail on a corrupt region.
 */

#include <string.h>

#include "channel.h"


#define GPU_ALIGN(x, a)  (((x) + ((uint64_t) (a) - 1)) & ~((uint64_t) (a) - 1))


static gpu_ring_cell_t *
gpu_ring_cells(gpu_channel_header_t *h)
{
    return (gpu_ring_cell_t *) ((char *) h + h->ring_off);
}


uint64_t
gpu_channel_layout(gpu_channel_header_t *h, uint32_t n_slots,
    uint32_t prompt_bytes_cap, uint32_t prompt_tokens_cap,
    uint32_t max_new_tokens, uint32_t out_bytes_cap, uint32_t max_logprobs,
    uint32_t lp_tokens, uint32_t vocab_size, uint64_t vocab_bytes)
{
    uint32_t  cap;
    uint64_t  prompt_area, off;

    cap = 1;
    while (cap < n_slots) {
        cap <<= 1;
    }

    h->n_slots = n_slots;
    h->prompt_bytes_cap = prompt_bytes_cap;
    h->prompt_tokens_cap = prompt_tokens_cap;
    h->max_new_tokens = max_new_tokens;
    h->out_bytes_cap = out_bytes_cap;
    h->max_logprobs = max_logprobs;
    h->lp_tokens = lp_tokens;
    h->vocab_size = vocab_size;
    h->lp_stride = (uint32_t) GPU_ALIGN(GPU_TOKEN_LP_SIZE(max_logprobs), 8);

    h->ring_off = GPU_ALIGN(sizeof(gpu_channel_header_t), 64);
    h->ring_mask = cap - 1;

    h->slots_off = GPU_ALIGN(h->ring_off + (uint64_t) cap
                             * sizeof(gpu_ring_cell_t), 4096);

    prompt_area = prompt_bytes_cap;
    if ((uint64_t) prompt_tokens_cap * 4 > prompt_area) {
        prompt_area = (uint64_t) prompt_tokens_cap * 4;
    }

    off = GPU_ALIGN(sizeof(gpu_slot_t), 64);
    h->prompt_off = off;
    off = GPU_ALIGN(off + prompt_area, 64);
    h->tok_end_off = off;
    off = GPU_ALIGN(off + (uint64_t) max_new_tokens * 4, 64);
    h->out_off = off;
    off = GPU_ALIGN(off + out_bytes_cap, 64);
    h->lp_off = off;
    off = GPU_ALIGN(off + (uint64_t) lp_tokens * h->lp_stride, 4096);
    h->slot_stride = off;

    off = h->slots_off + (uint64_t) n_slots * h->slot_stride;
    h->vocab_off = off;
    h->vocab_bytes_off = GPU_ALIGN(off + (uint64_t) vocab_size * 4, 64);
    h->vocab_bytes = vocab_bytes;

    h->region_size = GPU_ALIGN(h->vocab_bytes_off + vocab_bytes, 4096);

    return h->region_size;
}


void
gpu_channel_init(gpu_channel_header_t *h)
{
    uint64_t          i;
    gpu_ring_cell_t  *cells;

    cells = gpu_ring_cells(h);

    for (i = 0; i <= h->ring_mask; i++) {
        cells[i].seq = i;
        cells[i].value = 0;
    }

    h->enqueue_pos = 0;
    h->dequeue_pos = 0;

    for (i = 0; i < h->n_slots; i++) {
        gpu_channel_slot(h, (uint32_t) i)->state = GPU_SLOT_FREE;
    }

    h->magic = GPU_CHANNEL_MAGIC;
    __atomic_store_n(&h->version, GPU_CHANNEL_VERSION, __ATOMIC_RELEASE);
}


int
gpu_channel_check(gpu_channel_header_t *h, uint64_t mapped_size)
{
    uint64_t  cap;

    if (mapped_size < sizeof(gpu_channel_header_t)
        || h->magic != GPU_CHANNEL_MAGIC
        || __atomic_load_n(&h->version, __ATOMIC_ACQUIRE)
           != GPU_CHANNEL_VERSION
        || h->region_size > mapped_size
        || h->n_slots == 0)
    {
        return -1;
    }

    cap = (uint64_t) h->ring_mask + 1;

    if ((cap & h->ring_mask) != 0 || cap < h->n_slots
        || h->ring_off + cap * sizeof(gpu_ring_cell_t) > h->slots_off
        || h->out_off + h->out_bytes_cap > h->lp_off
        || h->max_logprobs > GPU_LOGPROBS_MAX
        || h->lp_stride < GPU_TOKEN_LP_SIZE(h->max_logprobs)
        || h->lp_tokens > h->max_new_tokens
        || h->lp_off + (uint64_t) h->lp_tokens * h->lp_stride
           > h->slot_stride
        || h->slots_off + (uint64_t) h->n_slots * h->slot_stride
           > h->vocab_off
        || h->vocab_off + (uint64_t) h->vocab_size * 4 > h->vocab_bytes_off
        || h->vocab_bytes_off + h->vocab_bytes > h->region_size)
    {
        return -1;
    }

    return 0;
}


int
gpu_ring_push(gpu_channel_header_t *h, uint64_t value)
{
    int64_t           dif;
    uint64_t          pos, seq;
    gpu_ring_cell_t  *cell, *cells;

    cells = gpu_ring_cells(h);
    pos = __atomic_load_n(&h->enqueue_pos, __ATOMIC_RELAXED);

    for ( ;; ) {
        cell = &cells[pos & h->ring_mask];
        seq = __atomic_load_n(&cell->seq, __ATOMIC_ACQUIRE);
        dif = (int64_t) seq - (int64_t) pos;

        if (dif == 0) {
            /* the cell is free for position pos: try to own it */
            if (__atomic_compare_exchange_n(&h->enqueue_pos, &pos, pos + 1,
                                            1, __ATOMIC_RELAXED,
                                            __ATOMIC_RELAXED))
            {
                break;
            }

        } else if (dif < 0) {
            return -1;                      /* full */

        } else {
            pos = __atomic_load_n(&h->enqueue_pos, __ATOMIC_RELAXED);
        }
    }

    cell->value = value;
    __atomic_store_n(&cell->seq, pos + 1, __ATOMIC_RELEASE);

    return 0;
}


int
gpu_ring_pop(gpu_channel_header_t *h, uint64_t *value)
{
    int64_t           dif;
    uint64_t          pos, seq;
    gpu_ring_cell_t  *cell, *cells;

    cells = gpu_ring_cells(h);
    pos = __atomic_load_n(&h->dequeue_pos, __ATOMIC_RELAXED);

    for ( ;; ) {
        cell = &cells[pos & h->ring_mask];
        seq = __atomic_load_n(&cell->seq, __ATOMIC_ACQUIRE);
        dif = (int64_t) seq - (int64_t) (pos + 1);

        if (dif == 0) {
            if (__atomic_compare_exchange_n(&h->dequeue_pos, &pos, pos + 1,
                                            1, __ATOMIC_RELAXED,
                                            __ATOMIC_RELAXED))
            {
                break;
            }

        } else if (dif < 0) {
            return -1;                      /* empty */

        } else {
            pos = __atomic_load_n(&h->dequeue_pos, __ATOMIC_RELAXED);
        }
    }

    *value = cell->value;
    /* hand the cell to the producer one lap ahead */
    __atomic_store_n(&cell->seq, pos + h->ring_mask + 1, __ATOMIC_RELEASE);

    return 0;
}


int64_t
gpu_channel_claim(gpu_channel_header_t *h, uint32_t owner, uint32_t hint)
{
    uint32_t     i, n, idx;
    gpu_slot_t  *s;

    n = h->n_slots;

    for (i = 0; i < n; i++) {
        idx = (hint + i) % n;
        s = gpu_channel_slot(h, idx);

        if (__atomic_load_n(&s->state, __ATOMIC_RELAXED) == GPU_SLOT_FREE
            && gpu_slot_cas(s, GPU_SLOT_FREE, GPU_SLOT_CLAIMED_BY(owner)))
        {
            s->owner = owner;
            s->n_prompt_tokens = 0;
            s->n_tokens = 0;
            s->out_len = 0;
            s->finish_reason = GPU_FINISH_NONE;
            s->error_status = 0;
            s->first_token_ns = 0;
            s->error_type[0] = '\0';
            s->error_code[0] = '\0';
            s->error_param[0] = '\0';
            s->error_message[0] = '\0';
            return idx;
        }
    }

    return -1;
}


int
gpu_channel_submit(gpu_channel_header_t *h, uint32_t slot)
{
    gpu_slot_t  *s;

    s = gpu_channel_slot(h, slot);

    /* publishes every request field written before it */
    gpu_store_release(&s->state, GPU_SLOT_SUBMITTED);

    if (gpu_ring_push(h, slot) != 0) {
        gpu_store_release(&s->state, GPU_SLOT_FREE);
        return -1;
    }

    return 0;
}


int64_t
gpu_channel_pop(gpu_channel_header_t *h)
{
    uint64_t  v;

    if (gpu_ring_pop(h, &v) != 0) {
        return -1;
    }

    return v < h->n_slots ? (int64_t) v : -1;
}


int
gpu_channel_cancel(gpu_channel_header_t *h, uint32_t slot)
{
    uint32_t     st;
    gpu_slot_t  *s;

    s = gpu_channel_slot(h, slot);

    for ( ;; ) {
        st = gpu_load_acquire(&s->state);

        switch (GPU_SLOT_STATE(st)) {

        case GPU_SLOT_SUBMITTED:
        case GPU_SLOT_RUNNING:
            if (gpu_slot_cas(s, st, GPU_SLOT_CANCELLED)) {
                return 1;
            }
            break;                          /* the state moved: look again */

        case GPU_SLOT_CLAIMED:
        case GPU_SLOT_DONE:
            gpu_store_release(&s->state, GPU_SLOT_FREE);
            return 0;

        default:                            /* FREE or CANCELLED already */
            return 0;
        }
    }
}


void
gpu_channel_release(gpu_channel_header_t *h, uint32_t slot)
{
    gpu_store_release(&gpu_channel_slot(h, slot)->state, GPU_SLOT_FREE);
}


uint32_t
gpu_channel_drop_owner(gpu_channel_header_t *h, uint32_t owner)
{
    uint32_t     k, st, held = 0;
    gpu_slot_t  *s;

    for (k = 0; k < h->n_slots; k++) {
        s = gpu_channel_slot(h, k);
        st = gpu_load_acquire(&s->state);

        switch (GPU_SLOT_STATE(st)) {

        case GPU_SLOT_CLAIMED:
            /* the owner is in the state word: no window between the
             * claim and the owner's store */
            if (GPU_SLOT_OWNER(st) == (owner & 0xffffffu)
                && gpu_slot_cas(s, st, GPU_SLOT_FREE))
            {
                held++;
            }
            break;

        case GPU_SLOT_SUBMITTED:
        case GPU_SLOT_RUNNING:
        case GPU_SLOT_DONE:
            /* s->owner was written before SUBMITTED was published */
            if (s->owner == owner) {
                gpu_channel_cancel(h, k);
                held++;
            }
            break;

        default:                            /* FREE, CANCELLED */
            break;
        }
    }
    return held;
}
