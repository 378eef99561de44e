/*
 * server.h - the backend's side of the channel: the shared-memory region
 * (a memfd), the Unix socket that nginx workers connect to, and the event
 * loop that turns wake-ups into scheduler steps.
 */

#ifndef GPU_SERVER_H
#define GPU_SERVER_H

#include <signal.h>
#include <stdint.h>

#include "channel.h"
#include "scheduler.h"

typedef struct server_s  server_t;

/* a zeroed, laid-out and initialised region in a memfd; NULL on error */
gpu_channel_header_t *region_create(uint32_t n_slots,
    uint32_t prompt_bytes_cap, uint32_t prompt_tokens_cap,
    uint32_t max_new_tokens, uint32_t out_bytes_cap, uint32_t max_logprobs,
    uint32_t lp_tokens, uint32_t vocab_size, uint64_t vocab_bytes,
    int *memfd, char *err, size_t errlen);

/* bind and listen on a Unix socket path (a stale socket is replaced) */
int server_listen(const char *path, int mode, char *err, size_t errlen);

server_t *server_create(int listen_fd, int memfd, gpu_channel_header_t *h);
/* close the workers' connections and free srv (not the listening socket,
 * the memfd or the region: they are the caller's) */
void server_destroy(server_t *srv);
void server_set_scheduler(server_t *srv, scheduler_t *sched);

/* scheduler_notify_pt: mark a worker to be woken after this round */
void server_notify(void *data, uint32_t owner);

/* serve until *stop is set; then every request still open gets 503 */
int server_run(server_t *srv, volatile sig_atomic_t *stop);

/* unmap a region of region_create() and close its memfd */
void region_destroy(gpu_channel_header_t *h, int memfd);

#endif
