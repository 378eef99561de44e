/*
 * test_channel.c - the shared-memory channel: layout, the submission ring
 * under concurrent producers in separate processes (as nginx workers
 * are), and the slot state machine including the cancel races.
 */

#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "channel.h"
#include "unit.h"

#define PRODUCERS  4
#define PER_PROD   200000


static gpu_channel_header_t *
make_region(uint32_t n_slots)
{
    void                  *p;
    uint64_t               size;
    gpu_channel_header_t   tmp;

    memset(&tmp, 0, sizeof(tmp));
    size = gpu_channel_layout(&tmp, n_slots, 1000, 300, 50, 800, 20, 40, 100, 777);
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
             -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    memcpy(p, &tmp, sizeof(tmp));
    gpu_channel_init(p);
    return p;
}


static void
test_layout(void)
{
    uint32_t               i;
    gpu_slot_t            *s;
    gpu_channel_header_t  *h = make_region(5);

    CHECK(gpu_channel_check(h, h->region_size) == 0, "fresh region valid");
    CHECK(gpu_channel_check(h, h->region_size - 1) != 0,
          "short mapping rejected");
    CHECK(h->ring_mask + 1 == 8, "ring rounds up to a power of two: %u",
          h->ring_mask + 1);
    CHECK(h->slot_stride % 4096 == 0, "slots page aligned");
    CHECK(h->tok_end_off >= h->prompt_off + 1200,
          "prompt area holds 300 int32 ids");
    CHECK(h->out_off >= h->tok_end_off + 200, "tok_end holds 50 entries");
    CHECK(h->lp_off >= h->out_off + 800, "output area holds 800 bytes");
    CHECK(h->lp_stride >= 16 + 20 * 8 && h->lp_stride % 8 == 0,
          "a logprobs record holds 20 alternatives: %u", h->lp_stride);
    CHECK(h->lp_off + 40 * h->lp_stride <= h->slot_stride,
          "logprobs records for 40 tokens inside the slot");
    CHECK(h->vocab_off >= h->slots_off + 5 * h->slot_stride
          && h->vocab_bytes_off >= h->vocab_off + 400
          && h->vocab_bytes_off + 777 <= h->region_size,
          "token text table after the slots");
    h->max_logprobs = 21;
    CHECK(gpu_channel_check(h, h->region_size) != 0,
          "more than GPU_LOGPROBS_MAX alternatives rejected");
    h->max_logprobs = 20;
    h->lp_stride = 8;
    CHECK(gpu_channel_check(h, h->region_size) != 0,
          "a logprobs record too short rejected");
    h->lp_stride = (uint32_t) ((16 + 20 * 8 + 7) & ~7);
    CHECK(gpu_channel_check(h, h->region_size) == 0, "restored");

    for (i = 0; i < h->n_slots; i++) {
        s = gpu_channel_slot(h, i);
        CHECK((char *) gpu_slot_out(h, s) + h->out_bytes_cap
              <= (char *) h + h->region_size, "slot %u inside region", i);
    }

    h->magic = 0;
    CHECK(gpu_channel_check(h, h->region_size) != 0, "bad magic rejected");
    munmap(h, h->region_size);
}


static void
test_ring_single(void)
{
    int                    i;
    uint64_t               v;
    gpu_channel_header_t  *h = make_region(4);

    CHECK(gpu_ring_pop(h, &v) == -1, "empty ring pops nothing");

    for (i = 0; i < 4; i++) {
        CHECK(gpu_ring_push(h, 10 + i) == 0, "push %d", i);
    }
    CHECK(gpu_ring_push(h, 99) == -1, "full ring refuses a push");

    for (i = 0; i < 4; i++) {
        CHECK(gpu_ring_pop(h, &v) == 0 && v == (uint64_t) (10 + i),
              "FIFO order at %d: got %llu", i, (unsigned long long) v);
    }

    /* wrap around many laps */
    for (i = 0; i < 1000; i++) {
        gpu_ring_push(h, i);
        gpu_ring_pop(h, &v);
        if (v != (uint64_t) i) {
            break;
        }
    }
    CHECK(i == 1000, "1000 laps keep order (stopped at %d)", i);
    munmap(h, h->region_size);
}


/* PRODUCERS processes push PER_PROD values each; one consumer pops */
static void
test_ring_concurrent(void)
{
    int                    p, status, all_ok;
    pid_t                  pids[PRODUCERS];
    uint64_t               v, got, prod, n;
    uint64_t              *next;
    gpu_channel_header_t  *h = make_region(64);

    next = calloc(PRODUCERS, sizeof(uint64_t));

    for (p = 0; p < PRODUCERS; p++) {
        pids[p] = fork();
        if (pids[p] == 0) {
            for (n = 0; n < PER_PROD; n++) {
                v = ((uint64_t) p << 32) | n;
                while (gpu_ring_push(h, v) != 0) {
                    /* full: the consumer is behind */
                }
            }
            _exit(0);
        }
    }

    got = 0;
    all_ok = 1;

    while (got < (uint64_t) PRODUCERS * PER_PROD) {
        if (gpu_ring_pop(h, &v) != 0) {
            continue;
        }
        prod = v >> 32;
        n = v & 0xffffffffu;
        /* each producer's values arrive exactly once and in order */
        if (prod >= PRODUCERS || n != next[prod]) {
            all_ok = 0;
            break;
        }
        next[prod]++;
        got++;
    }

    for (p = 0; p < PRODUCERS; p++) {
        if (!all_ok) {
            kill(pids[p], SIGKILL);
        }
        waitpid(pids[p], &status, 0);
    }

    CHECK(all_ok, "every value once, per-producer order kept");
    CHECK(got == (uint64_t) PRODUCERS * PER_PROD, "all %d values popped",
          PRODUCERS * PER_PROD);
    CHECK(gpu_ring_pop(h, &v) == -1, "ring empty afterwards");

    free(next);
    munmap(h, h->region_size);
}


/* PRODUCERS processes claim and submit slots until all are taken */
static void
test_claim_concurrent(void)
{
    int                    p, status, i;
    int64_t                idx;
    pid_t                  pids[PRODUCERS];
    uint32_t               seen[64];
    gpu_channel_header_t  *h = make_region(64);

    for (p = 0; p < PRODUCERS; p++) {
        pids[p] = fork();
        if (pids[p] == 0) {
            while ((idx = gpu_channel_claim(h, p + 1, p * 7)) >= 0) {
                gpu_channel_submit(h, (uint32_t) idx);
            }
            _exit(0);
        }
    }
    for (p = 0; p < PRODUCERS; p++) {
        waitpid(pids[p], &status, 0);
    }

    memset(seen, 0, sizeof(seen));
    i = 0;
    while ((idx = gpu_channel_pop(h)) >= 0) {
        seen[idx]++;
        i++;
        CHECK(gpu_channel_slot(h, (uint32_t) idx)->state
              == GPU_SLOT_SUBMITTED, "slot %ld submitted", (long) idx);
    }

    CHECK(i == 64, "64 slots submitted, %d popped", i);
    for (i = 0; i < 64; i++) {
        CHECK(seen[i] == 1, "slot %d claimed once (%u)", i, seen[i]);
    }
    CHECK(gpu_channel_claim(h, 9, 0) == -1, "no free slot left");

    munmap(h, h->region_size);
}


static void
test_slot_states(void)
{
    int64_t                a;
    gpu_slot_t            *s;
    gpu_channel_header_t  *h = make_region(2);

    a = gpu_channel_claim(h, 3, 0);
    s = gpu_channel_slot(h, (uint32_t) a);
    CHECK(a >= 0 && GPU_SLOT_STATE(s->state) == GPU_SLOT_CLAIMED
          && GPU_SLOT_OWNER(s->state) == 3 && s->owner == 3,
          "claim sets state and owner, the owner in the state word too");

    /* cancel of a claimed slot frees it at once */
    CHECK(gpu_channel_cancel(h, (uint32_t) a) == 0
          && s->state == GPU_SLOT_FREE, "cancel CLAIMED -> FREE");

    a = gpu_channel_claim(h, 3, 0);
    gpu_channel_submit(h, (uint32_t) a);
    CHECK(gpu_channel_cancel(h, (uint32_t) a) == 1
          && s->state == GPU_SLOT_CANCELLED,
          "cancel SUBMITTED -> CANCELLED, the backend frees it");

    /* the backend finishing loses the race against the cancel */
    s->state = GPU_SLOT_RUNNING;
    gpu_channel_cancel(h, (uint32_t) a);
    CHECK(!gpu_slot_cas(s, GPU_SLOT_RUNNING, GPU_SLOT_DONE),
          "RUNNING->DONE fails after a cancel");

    /* the worker cancelling after DONE frees the slot itself */
    s->state = GPU_SLOT_DONE;
    CHECK(gpu_channel_cancel(h, (uint32_t) a) == 0
          && s->state == GPU_SLOT_FREE, "cancel DONE -> FREE");

    a = gpu_channel_claim(h, 4, 1);
    s = gpu_channel_slot(h, (uint32_t) a);
    s->state = GPU_SLOT_DONE;
    gpu_channel_release(h, (uint32_t) a);
    CHECK(s->state == GPU_SLOT_FREE, "release DONE -> FREE");

    munmap(h, h->region_size);
}


/*
 * A worker that goes away: its slots in every state come back (claimed
 * and done ones FREE, submitted and running ones CANCELLED for the
 * backend to free), other workers' stay as they are.  A claim names its
 * owner in the state word, so a slot claimed by a worker that died
 * before its next store is freed too.
 */
static void
test_drop_owner(void)
{
    gpu_channel_header_t  *h = make_region(8);
    int64_t                c5, d5, s5, r5, c6, s6;
    uint32_t               held;

    c5 = gpu_channel_claim(h, 5, 0);
    gpu_channel_slot(h, (uint32_t) c5)->owner = 99;   /* store not made */
    d5 = gpu_channel_claim(h, 5, 0);
    gpu_channel_slot(h, (uint32_t) d5)->state = GPU_SLOT_DONE;
    s5 = gpu_channel_claim(h, 5, 0);
    gpu_channel_submit(h, (uint32_t) s5);
    r5 = gpu_channel_claim(h, 5, 0);
    gpu_channel_submit(h, (uint32_t) r5);
    gpu_channel_slot(h, (uint32_t) r5)->state = GPU_SLOT_RUNNING;
    c6 = gpu_channel_claim(h, 6, 0);
    s6 = gpu_channel_claim(h, 6, 0);
    gpu_channel_submit(h, (uint32_t) s6);

    held = gpu_channel_drop_owner(h, 5);
    CHECK(held == 4, "worker 5 held 4 slots (%u)", held);
    CHECK(gpu_channel_slot(h, (uint32_t) c5)->state == GPU_SLOT_FREE,
          "its claimed slot is free, though its owner store never came");
    CHECK(gpu_channel_slot(h, (uint32_t) d5)->state == GPU_SLOT_FREE,
          "its done slot is free");
    CHECK(gpu_channel_slot(h, (uint32_t) s5)->state == GPU_SLOT_CANCELLED
          && gpu_channel_slot(h, (uint32_t) r5)->state == GPU_SLOT_CANCELLED,
          "its submitted and running slots are cancelled");
    CHECK(GPU_SLOT_STATE(gpu_channel_slot(h, (uint32_t) c6)->state)
          == GPU_SLOT_CLAIMED
          && gpu_channel_slot(h, (uint32_t) s6)->state == GPU_SLOT_SUBMITTED,
          "worker 6's slots are untouched");
    CHECK(gpu_channel_drop_owner(h, 5) == 0, "nothing left for worker 5");
    munmap(h, h->region_size);
}


int
main(void)
{
    test_layout();
    test_ring_single();
    test_ring_concurrent();
    test_claim_concurrent();
    test_slot_states();
    test_drop_owner();
    return unit_report("test_channel");
}
