
/*
 * Copyright (C) ngx-gpu authors
 */


/*
 * The worker side of the channel (gpu_backend/channel.h): one Unix
 * socket connection per backend on the event loop, the hello with the
 * region's memfd, the mapping, wake-ups in both directions, the scan of
 * the worker's in-flight requests, and the reconnect while the backend
 * is down.
 */


#include "ngx_http_gpu_channel.h"


#define NGX_HTTP_GPU_RECONNECT_MIN   100
#define NGX_HTTP_GPU_RECONNECT_RAND  101
#define NGX_HTTP_GPU_POLL            1000

/*
 * a backend sends its hello as it accepts; one that accepted (the kernel
 * queues a connection even to a stopped process) and said nothing for this
 * long is given up on and connected to anew, and the log says so
 */
#define NGX_HTTP_GPU_HELLO_TIMEOUT   10000


static void ngx_http_gpu_backend_connect(ngx_http_gpu_backend_t *b);
static void ngx_http_gpu_backend_reconnect_handler(ngx_event_t *ev);
static void ngx_http_gpu_backend_read_handler(ngx_event_t *rev);
static void ngx_http_gpu_backend_dummy_handler(ngx_event_t *wev);
static ngx_int_t ngx_http_gpu_backend_hello(ngx_http_gpu_backend_t *b);
static ngx_int_t ngx_http_gpu_backend_map(ngx_http_gpu_backend_t *b);
static void ngx_http_gpu_backend_poll_handler(ngx_event_t *ev);
static void ngx_http_gpu_backend_scan(ngx_http_gpu_backend_t *b);
static void ngx_http_gpu_backend_progress(ngx_http_gpu_backend_t *b,
    ngx_http_gpu_ctx_t *ctx);
static void ngx_http_gpu_backend_lost(ngx_http_gpu_backend_t *b);
static void ngx_http_gpu_backend_close(ngx_http_gpu_backend_t *b);
static void ngx_http_gpu_backend_wake(ngx_http_gpu_backend_t *b);
static ngx_uint_t ngx_http_gpu_backend_level(ngx_http_gpu_backend_t *b,
    ngx_uint_t level);
static void ngx_http_gpu_slot_error(ngx_http_gpu_progress_t *p,
    gpu_slot_t *s);
static void ngx_http_gpu_slot_string(ngx_str_t *str, char *data, size_t max);
static void ngx_http_gpu_protocol_error(ngx_http_gpu_progress_t *p);
static uint32_t ngx_http_gpu_channel_messages(ngx_http_gpu_params_t *params,
    char *dst);


ngx_int_t
ngx_http_gpu_channel_init_process(ngx_cycle_t *cycle,
    ngx_http_gpu_main_conf_t *gmcf)
{
    ngx_uint_t               i;
    ngx_http_gpu_backend_t  *b, **backends;

    backends = gmcf->backends.elts;

    for (i = 0; i < gmcf->backends.nelts; i++) {
        b = backends[i];

        b->log = cycle->log;
        b->connection = NULL;
        b->region = NULL;
        b->memfd = NGX_INVALID_FILE;

        ngx_queue_init(&b->inflight);

        b->reconnect.handler = ngx_http_gpu_backend_reconnect_handler;
        b->reconnect.data = b;
        b->reconnect.log = cycle->log;
        b->reconnect.cancelable = 1;

        /* not cancelable: graceful shutdown waits for requests in flight */
        b->poll.handler = ngx_http_gpu_backend_poll_handler;
        b->poll.data = b;
        b->poll.log = cycle->log;

        ngx_http_gpu_backend_connect(b);
    }

    return NGX_OK;
}


void
ngx_http_gpu_channel_exit_process(ngx_http_gpu_main_conf_t *gmcf)
{
    ngx_uint_t               i;
    ngx_http_gpu_backend_t  *b, **backends;

    backends = gmcf->backends.elts;

    for (i = 0; i < gmcf->backends.nelts; i++) {
        b = backends[i];

        /* the backend cancels the slots of a worker that went away */

        if (b->region) {
            if (munmap(b->region, b->region_size) == -1) {
                ngx_log_error(NGX_LOG_ALERT, b->log, ngx_errno,
                              "munmap(%uz) failed", b->region_size);
            }

            b->region = NULL;
        }

        ngx_http_gpu_backend_close(b);
    }
}


gpu_channel_header_t *
ngx_http_gpu_channel_ready(ngx_http_gpu_backend_t *b)
{
    if (b == NULL || b->region == NULL) {
        return NULL;
    }

    if (__atomic_load_n(&b->region->ready, __ATOMIC_ACQUIRE) == 0) {
        return NULL;
    }

    return b->region;
}


ngx_str_t *
ngx_http_gpu_served_model(ngx_http_gpu_loc_conf_t *glcf,
    ngx_http_gpu_backend_t *b, ngx_str_t *name)
{
    if (glcf->model_name.len) {
        return &glcf->model_name;
    }

    if (b == NULL || b->region == NULL) {
        return NULL;
    }

    name->data = b->model;
    name->len = b->model_len;

    return name;
}


/* GPU_PROMPT_CHAT records (see channel.h); returns their size */

static uint32_t
ngx_http_gpu_channel_messages(ngx_http_gpu_params_t *params, char *dst)
{
    u_char                  *p;
    uint32_t                 len;
    ngx_uint_t               i;
    ngx_http_gpu_message_t  *m;

    p = (u_char *) dst;
    m = params->messages->elts;

    for (i = 0; i < params->messages->nelts; i++) {
        *p++ = (u_char) m[i].role;
        len = (uint32_t) m[i].content.len;
        p = ngx_cpymem(p, &len, sizeof(uint32_t));

        /* "content": [] has no data at all */

        if (len) {
            p = ngx_cpymem(p, m[i].content.data, len);
        }
    }

    return (uint32_t) (p - (u_char *) dst);
}


ngx_int_t
ngx_http_gpu_channel_submit(ngx_http_request_t *r, ngx_http_gpu_ctx_t *ctx,
    gpu_channel_header_t *h)
{
    int64_t                  idx;
    uint32_t                 slot;
    gpu_slot_t              *s;
    ngx_uint_t               i;
    struct timespec          ts;
    ngx_http_gpu_params_t   *params;
    ngx_http_gpu_backend_t  *b;

    b = ctx->backend;
    params = &ctx->params;

    idx = gpu_channel_claim(h, b->worker_id, b->hint);

    if (idx < 0) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "gpu backend \"%V\": all %uD slots are busy",
                      &b->name, h->n_slots);
        return NGX_BUSY;
    }

    slot = (uint32_t) idx;
    b->hint = slot + 1;

    s = gpu_channel_slot(h, slot);

    s->request_id = ((uint64_t) b->worker_id << 32) | ++b->claims;

    if (params->prompt_kind == GPU_PROMPT_CHAT) {
        s->prompt_len = ngx_http_gpu_channel_messages(params,
                                                      gpu_slot_prompt(h, s));

    } else if (params->prompt_kind == GPU_PROMPT_TEXT) {
        ngx_memcpy(gpu_slot_prompt(h, s), params->prompt.data,
                   params->prompt.len);
        s->prompt_len = (uint32_t) params->prompt.len;

    } else {
        ngx_memcpy(gpu_slot_prompt(h, s), params->ids->elts,
                   params->ids->nelts * sizeof(int32_t));
        s->prompt_len = (uint32_t) params->ids->nelts;
    }

    s->prompt_kind = (uint32_t) params->prompt_kind;
    s->max_tokens = (uint32_t) params->max_tokens;
    s->stream = params->stream;
    s->temperature = (float) params->temperature;
    s->top_p = (float) params->top_p;
    s->seed = (uint64_t) params->seed;
    s->has_seed = params->has_seed;
    s->top_k = (int32_t) params->top_k;
    s->presence_penalty = (float) params->presence_penalty;
    s->frequency_penalty = (float) params->frequency_penalty;
    s->logprobs = (int32_t) params->logprobs;

    s->n_stop = (uint32_t) params->n_stop;

    for (i = 0; i < params->n_stop; i++) {
        s->stop_len[i] = (uint32_t) params->stop[i].len;
        ngx_memcpy(s->stop[i], params->stop[i].data, params->stop[i].len);
    }

    (void) clock_gettime(CLOCK_REALTIME, &ts);
    s->submit_ns = (uint64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;

    if (gpu_channel_submit(h, slot) != 0) {
        /* cannot happen: the ring holds every slot; the slot is FREE */
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "gpu backend \"%V\": submission ring is full",
                      &b->name);
        return NGX_ERROR;
    }

    ngx_log_debug6(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "gpu submit: slot:%uD kind:%uD len:%uD max_tokens:%uD "
                   "stream:%uD id:%uL", slot, s->prompt_kind, s->prompt_len,
                   s->max_tokens, s->stream, s->request_id);

    ctx->slot = slot;
    ctx->submitted = 1;
    ctx->inflight = 1;

    ngx_queue_insert_tail(&b->inflight, &ctx->queue);

    ngx_http_gpu_backend_wake(b);

    if (!b->poll.timer_set) {
        ngx_add_timer(&b->poll, NGX_HTTP_GPU_POLL);
    }

    return NGX_OK;
}


void
ngx_http_gpu_channel_detach(ngx_http_gpu_ctx_t *ctx, ngx_uint_t how)
{
    ngx_http_gpu_backend_t  *b;

    if (!ctx->inflight) {
        return;
    }

    b = ctx->backend;

    ngx_queue_remove(&ctx->queue);
    ngx_queue_init(&ctx->queue);
    ctx->inflight = 0;

    if (ngx_queue_empty(&b->inflight) && b->poll.timer_set) {
        ngx_del_timer(&b->poll);
    }

    if (b->region == NULL) {
        return;
    }

    switch (how) {

    case NGX_HTTP_GPU_RELEASE:
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, b->log, 0,
                       "gpu release: slot:%uD", ctx->slot);

        gpu_channel_release(b->region, ctx->slot);
        break;

    case NGX_HTTP_GPU_CANCEL:
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, b->log, 0,
                       "gpu cancel: slot:%uD", ctx->slot);

        if (gpu_channel_cancel(b->region, ctx->slot)) {
            ngx_http_gpu_backend_wake(b);
        }

        break;

    default: /* NGX_HTTP_GPU_FORGET */
        break;
    }
}


void
ngx_http_gpu_channel_cleanup(void *data)
{
    ngx_http_gpu_ctx_t  *ctx = data;

    if (ctx->inflight) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ctx->backend->log, 0,
                       "gpu cleanup: slot:%uD still in flight", ctx->slot);

        ngx_http_gpu_channel_detach(ctx, NGX_HTTP_GPU_CANCEL);
    }
}


static void
ngx_http_gpu_backend_connect(ngx_http_gpu_backend_t *b)
{
    int                rc;
    ngx_err_t          err;
    ngx_uint_t         level;
    ngx_event_t       *rev, *wev;
    ngx_socket_t       s;
    ngx_connection_t  *c;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, b->log, 0,
                   "gpu backend connect: \"%V\"", &b->name);

    s = ngx_socket(AF_UNIX, SOCK_STREAM, 0);

    if (s == (ngx_socket_t) -1) {
        ngx_log_error(NGX_LOG_ALERT, b->log, ngx_socket_errno,
                      ngx_socket_n " failed");
        goto retry;
    }

    c = ngx_get_connection(s, b->log);

    if (c == NULL) {
        if (ngx_close_socket(s) == -1) {
            ngx_log_error(NGX_LOG_ALERT, b->log, ngx_socket_errno,
                          ngx_close_socket_n " failed");
        }

        goto retry;
    }

    if (ngx_nonblocking(s) == -1) {
        ngx_log_error(NGX_LOG_ALERT, b->log, ngx_socket_errno,
                      ngx_nonblocking_n " failed");
        goto failed;
    }

    c->recv = ngx_recv;
    c->send = ngx_send;
    c->recv_chain = ngx_recv_chain;
    c->send_chain = ngx_send_chain;

    c->log_error = NGX_ERROR_INFO;
    c->data = b;
    c->number = ngx_atomic_fetch_add(ngx_connection_counter, 1);

    rev = c->read;
    wev = c->write;

    rev->log = b->log;
    wev->log = b->log;

    rev->handler = ngx_http_gpu_backend_read_handler;
    wev->handler = ngx_http_gpu_backend_dummy_handler;

    /* the hello timer must not hold up a graceful shutdown */
    rev->cancelable = 1;

    if (ngx_add_conn) {
        if (ngx_add_conn(c) == NGX_ERROR) {
            goto failed;
        }
    }

    rc = connect(s, b->addr.sockaddr, b->addr.socklen);

    if (rc == -1) {
        err = ngx_socket_errno;

        /*
         * a unix socket connects at once or fails (EAGAIN: the listen
         * queue is full); if it is in progress, the hello or an error
         * arrives as a read event
         */

        if (err != NGX_EINPROGRESS) {
            level = ngx_http_gpu_backend_level(b, NGX_LOG_NOTICE);

            ngx_log_error(level, b->log, err,
                          "gpu backend \"%V\" is not available, "
                          "reconnecting", &b->name);
            goto failed;
        }
    }

    if (ngx_add_conn == NULL) {
        if (ngx_add_event(rev, NGX_READ_EVENT,
                          (ngx_event_flags & NGX_USE_CLEAR_EVENT)
                          ? NGX_CLEAR_EVENT : NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            goto failed;
        }
    }

    b->connection = c;
    b->hello_len = 0;

    ngx_add_timer(rev, NGX_HTTP_GPU_HELLO_TIMEOUT);

    return;

failed:

    ngx_close_connection(c);

retry:

    ngx_add_timer(&b->reconnect, NGX_HTTP_GPU_RECONNECT_MIN
                                 + ngx_random() % NGX_HTTP_GPU_RECONNECT_RAND);
}


static void
ngx_http_gpu_backend_reconnect_handler(ngx_event_t *ev)
{
    ngx_http_gpu_backend_t  *b = ev->data;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    ngx_http_gpu_backend_connect(b);
}


static void
ngx_http_gpu_backend_read_handler(ngx_event_t *rev)
{
    u_char                   buf[64];
    ssize_t                  n;
    ngx_uint_t               gone;
    ngx_connection_t        *c;
    ngx_http_gpu_backend_t  *b;

    c = rev->data;
    b = c->data;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, rev->log, 0,
                   "gpu backend read handler: \"%V\"", &b->name);

    if (b->region == NULL) {

        if (rev->timedout) {
            ngx_log_error(NGX_LOG_ERR, b->log, NGX_ETIMEDOUT,
                          "gpu backend \"%V\" accepted the connection but "
                          "sent no hello in %M ms, reconnecting",
                          &b->name, (ngx_msec_t) NGX_HTTP_GPU_HELLO_TIMEOUT);
            ngx_http_gpu_backend_lost(b);
            return;
        }

        if (ngx_http_gpu_backend_hello(b) != NGX_OK) {
            return;
        }

        if (rev->timer_set) {
            ngx_del_timer(rev);
        }
    }

    /* the bytes after the hello are wake-ups: drain them */

    gone = 0;

    for ( ;; ) {
        n = c->recv(c, buf, sizeof(buf));

        if (n > 0) {
            continue;
        }

        if (n == NGX_AGAIN) {
            break;
        }

        /* 0 or NGX_ERROR: the backend went away */

        gone = 1;
        break;
    }

    ngx_http_gpu_backend_scan(b);

    if (gone) {
        ngx_http_gpu_backend_lost(b);
        return;
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_http_gpu_backend_lost(b);
    }
}


static void
ngx_http_gpu_backend_dummy_handler(ngx_event_t *wev)
{
    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, wev->log, 0,
                   "gpu backend dummy handler");
}


static ngx_int_t
ngx_http_gpu_backend_hello(ngx_http_gpu_backend_t *b)
{
    int                fd;
    ssize_t            n;
    ngx_err_t          err;
    ngx_uint_t         level;
    struct iovec       iov;
    struct msghdr      msg;
    struct cmsghdr    *cmsg;
    ngx_connection_t  *c;

    union {
        struct cmsghdr  cm;
        char            space[CMSG_SPACE(sizeof(int))];
    } cbuf;

    c = b->connection;

    while (b->hello_len < sizeof(gpu_channel_hello_t)) {

        /* exactly the rest of the hello: wake-ups may follow it */

        iov.iov_base = (u_char *) &b->hello + b->hello_len;
        iov.iov_len = sizeof(gpu_channel_hello_t) - b->hello_len;

        ngx_memzero(&msg, sizeof(struct msghdr));

        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = (caddr_t) &cbuf;
        msg.msg_controllen = sizeof(cbuf);

        n = recvmsg(c->fd, &msg, 0);

        if (n == -1) {
            err = ngx_socket_errno;

            if (err == NGX_EAGAIN) {
                c->read->ready = 0;

                if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
                    goto failed;
                }

                return NGX_AGAIN;
            }

            if (err == NGX_EINTR) {
                continue;
            }

            level = ngx_http_gpu_backend_level(b, NGX_LOG_NOTICE);

            ngx_log_error(level, b->log, err,
                          "gpu backend \"%V\" is not available, "
                          "reconnecting", &b->name);
            goto failed;
        }

        for (cmsg = CMSG_FIRSTHDR(&msg);
             cmsg != NULL;
             cmsg = CMSG_NXTHDR(&msg, cmsg))
        {
            if (cmsg->cmsg_level != SOL_SOCKET
                || cmsg->cmsg_type != SCM_RIGHTS
                || cmsg->cmsg_len != CMSG_LEN(sizeof(int)))
            {
                continue;
            }

            ngx_memcpy(&fd, CMSG_DATA(cmsg), sizeof(int));

            if (b->memfd == NGX_INVALID_FILE) {
                b->memfd = fd;

            } else if (close(fd) == -1) {
                ngx_log_error(NGX_LOG_ALERT, b->log, ngx_errno,
                              "close() of a descriptor from "
                              "gpu backend \"%V\" failed", &b->name);
            }
        }

        if (n == 0) {
            level = ngx_http_gpu_backend_level(b, NGX_LOG_NOTICE);

            ngx_log_error(level, b->log, 0,
                          "gpu backend \"%V\" closed the connection before "
                          "its hello, reconnecting", &b->name);
            goto failed;
        }

        if (msg.msg_flags & MSG_CTRUNC) {
            level = ngx_http_gpu_backend_level(b, NGX_LOG_ERR);

            ngx_log_error(level, b->log, 0,
                          "gpu backend \"%V\" sent truncated ancillary data",
                          &b->name);
            goto failed;
        }

        b->hello_len += n;
    }

    if (ngx_http_gpu_backend_map(b) != NGX_OK) {
        goto failed;
    }

    return NGX_OK;

failed:

    ngx_http_gpu_backend_lost(b);

    return NGX_ERROR;
}


static ngx_int_t
ngx_http_gpu_backend_map(ngx_http_gpu_backend_t *b)
{
    void                  *addr;
    size_t                 size;
    ngx_uint_t             level;
    ngx_file_info_t        fi;
    gpu_channel_header_t  *h;

    if (b->hello.magic != GPU_CHANNEL_MAGIC
        || b->hello.version != GPU_CHANNEL_VERSION)
    {
        level = ngx_http_gpu_backend_level(b, NGX_LOG_ERR);

        ngx_log_error(level, b->log, 0,
                      "gpu backend \"%V\" sent an unknown hello "
                      "(magic %08xD, version %uD, expected %08xD, %uD)",
                      &b->name, b->hello.magic, b->hello.version,
                      GPU_CHANNEL_MAGIC, GPU_CHANNEL_VERSION);
        return NGX_ERROR;
    }

    if (b->memfd == NGX_INVALID_FILE) {
        level = ngx_http_gpu_backend_level(b, NGX_LOG_ERR);

        ngx_log_error(level, b->log, 0,
                      "gpu backend \"%V\" sent no memory region",
                      &b->name);
        return NGX_ERROR;
    }

    if (b->hello.region_size < sizeof(gpu_channel_header_t)
        || b->hello.region_size > NGX_MAX_SIZE_T_VALUE / 2)
    {
        level = ngx_http_gpu_backend_level(b, NGX_LOG_ERR);

        ngx_log_error(level, b->log, 0,
                      "gpu backend \"%V\" sent an invalid region size %uL",
                      &b->name, b->hello.region_size);
        return NGX_ERROR;
    }

    size = (size_t) b->hello.region_size;

    if (ngx_fd_info(b->memfd, &fi) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ALERT, b->log, ngx_errno,
                      ngx_fd_info_n " of the region of gpu backend \"%V\" "
                      "failed", &b->name);
        return NGX_ERROR;
    }

    if (ngx_file_size(&fi) < (off_t) size) {
        level = ngx_http_gpu_backend_level(b, NGX_LOG_ERR);

        ngx_log_error(level, b->log, 0,
                      "gpu backend \"%V\" sent a region of %O bytes, "
                      "announced %uz", &b->name, ngx_file_size(&fi), size);
        return NGX_ERROR;
    }

    addr = mmap(NULL, size, PROT_READ|PROT_WRITE, MAP_SHARED, b->memfd, 0);

    if (close(b->memfd) == -1) {
        ngx_log_error(NGX_LOG_ALERT, b->log, ngx_errno,
                      "close() of the region of gpu backend \"%V\" failed",
                      &b->name);
    }

    b->memfd = NGX_INVALID_FILE;

    if (addr == MAP_FAILED) {
        ngx_log_error(NGX_LOG_ALERT, b->log, ngx_errno,
                      "mmap(%uz) of the region of gpu backend \"%V\" failed",
                      size, &b->name);
        return NGX_ERROR;
    }

    h = addr;

    if (gpu_channel_check(h, size) != 0) {
        level = ngx_http_gpu_backend_level(b, NGX_LOG_ERR);

        ngx_log_error(level, b->log, 0,
                      "gpu backend \"%V\" sent an invalid region",
                      &b->name);

        if (munmap(addr, size) == -1) {
            ngx_log_error(NGX_LOG_ALERT, b->log, ngx_errno,
                          "munmap(%uz) failed", size);
        }

        return NGX_ERROR;
    }

    b->region = h;
    b->region_size = size;
    b->worker_id = b->hello.worker_id;
    b->claims = 0;

    b->model_len = ngx_strnlen((u_char *) h->model_name,
                               GPU_MODEL_NAME_LEN);
    ngx_memcpy(b->model, h->model_name, b->model_len);

    ngx_log_error(NGX_LOG_NOTICE, b->log, 0,
                  "gpu backend \"%V\" connected: model \"%*s\", engine "
                  "\"%*s\", pid %uL, %uD slots, worker id %uD",
                  &b->name, b->model_len, b->model,
                  ngx_strnlen((u_char *) h->engine_name, GPU_ENGINE_NAME_LEN),
                  h->engine_name, h->backend_pid, h->n_slots,
                  b->worker_id);

    b->outage_logged = 0;

    return NGX_OK;
}


static void
ngx_http_gpu_backend_poll_handler(ngx_event_t *ev)
{
    ngx_http_gpu_backend_t  *b = ev->data;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ev->log, 0,
                   "gpu backend poll: \"%V\"", &b->name);

    ngx_http_gpu_backend_scan(b);
}


static void
ngx_http_gpu_backend_scan(ngx_http_gpu_backend_t *b)
{
    ngx_queue_t          pending, *q;
    ngx_http_gpu_ctx_t  *ctx;

    if (b->region == NULL || ngx_queue_empty(&b->inflight)) {
        return;
    }

    /*
     * Answering a request may finalize others (an HTTP/2 connection
     * closes its streams), so every request is moved back to the
     * in-flight queue before it is looked at: whatever is freed meanwhile
     * unlinks itself from whichever queue it is in.
     */

    ngx_queue_init(&pending);
    ngx_queue_add(&pending, &b->inflight);
    ngx_queue_init(&b->inflight);

    while (!ngx_queue_empty(&pending)) {
        q = ngx_queue_head(&pending);

        ngx_queue_remove(q);
        ngx_queue_insert_tail(&b->inflight, q);

        ctx = ngx_queue_data(q, ngx_http_gpu_ctx_t, queue);

        ngx_http_gpu_backend_progress(b, ctx);
    }

    if (!ngx_queue_empty(&b->inflight) && !b->poll.timer_set) {
        ngx_add_timer(&b->poll, NGX_HTTP_GPU_POLL);
    }
}


static void
ngx_http_gpu_backend_progress(ngx_http_gpu_backend_t *b,
    ngx_http_gpu_ctx_t *ctx)
{
    uint32_t                 state, n;
    ngx_int_t                rc;
    ngx_uint_t               how;
    gpu_slot_t              *s;
    ngx_connection_t        *c;
    ngx_http_request_t      *r;
    gpu_channel_header_t    *h;
    ngx_http_gpu_progress_t  p;

    h = b->region;
    s = gpu_channel_slot(h, ctx->slot);

    state = gpu_load_acquire(&s->state);

    /* for the node's time per output token (ngx_http_gpu_load.c) */

    if (ctx->first_usec == 0
        && state == GPU_SLOT_RUNNING
        && gpu_load_acquire(&s->n_tokens))
    {
        ctx->first_usec = ngx_http_gpu_load_usec();
    }

    if (state == GPU_SLOT_SUBMITTED
        || (state == GPU_SLOT_RUNNING && !ctx->params.stream))
    {
        return;
    }

    ngx_memzero(&p, sizeof(ngx_http_gpu_progress_t));

    how = NGX_HTTP_GPU_CANCEL;

    if (state != GPU_SLOT_RUNNING && state != GPU_SLOT_DONE) {
        ngx_log_error(NGX_LOG_ALERT, b->log, 0,
                      "gpu backend \"%V\": slot %uD of a request in flight "
                      "is in state %uD", &b->name, ctx->slot, state);

        /* the slot is not this request's any more: leave it alone */

        how = NGX_HTTP_GPU_FORGET;
        ngx_http_gpu_protocol_error(&p);
        goto answer;
    }

    if (state == GPU_SLOT_DONE) {
        p.done = 1;
        how = NGX_HTTP_GPU_RELEASE;
    }

    n = gpu_load_acquire(&s->n_tokens);

    if (n > (uint32_t) ctx->params.max_tokens || n > h->max_new_tokens) {
        ngx_log_error(NGX_LOG_ALERT, b->log, 0,
                      "gpu backend \"%V\": slot %uD reports %uD tokens, "
                      "max_tokens is %i", &b->name, ctx->slot, n,
                      ctx->params.max_tokens);

        ngx_http_gpu_protocol_error(&p);
        goto answer;
    }

    if (n > 0 && ctx->first_token_ns == 0) {
        ctx->first_token_ns = s->first_token_ns;
        ctx->prompt_tokens = s->n_prompt_tokens;
        ctx->seen_prompt = 1;
    }

    p.n_tokens = n;
    p.region = h;
    p.slot = s;
    p.tok_end = gpu_slot_tok_end(h, s);
    p.out = (u_char *) gpu_slot_out(h, s);
    p.out_cap = h->out_bytes_cap;

    if (!p.done) {
        goto answer;
    }

    p.out_len = gpu_load_acquire(&s->out_len);
    p.finish = s->finish_reason;
    p.n_prompt_tokens = s->n_prompt_tokens;

    /* an answer without tokens (an end-of-sequence first) has these too */

    if (ctx->first_token_ns == 0) {
        ctx->first_token_ns = s->first_token_ns;
    }

    if (p.finish != GPU_FINISH_ERROR && p.finish != GPU_FINISH_ABORT) {
        ctx->prompt_tokens = p.n_prompt_tokens;
        ctx->seen_prompt = 1;
    }

    if (p.out_len > p.out_cap) {
        ngx_log_error(NGX_LOG_ALERT, b->log, 0,
                      "gpu backend \"%V\": slot %uD reports %uz output "
                      "bytes", &b->name, ctx->slot, p.out_len);

        ngx_http_gpu_protocol_error(&p);
        goto answer;
    }

    switch (p.finish) {

    case GPU_FINISH_LENGTH:
    case GPU_FINISH_STOP:
        break;

    case GPU_FINISH_ERROR:
        ngx_http_gpu_slot_error(&p, s);
        break;

    case GPU_FINISH_ABORT:
        ngx_http_gpu_set_error(&p.error, NGX_HTTP_SERVICE_UNAVAILABLE,
                               "server_error", NULL, "backend_unavailable",
                               NULL);
        ngx_str_set(&p.error.message, "the backend is shutting down");
        break;

    default:
        ngx_log_error(NGX_LOG_ALERT, b->log, 0,
                      "gpu backend \"%V\": slot %uD finished with reason %ui",
                      &b->name, ctx->slot, p.finish);

        ngx_http_gpu_protocol_error(&p);
        break;
    }

answer:

    if (p.done) {
        ctx->finish = p.finish;
    }

    r = ctx->request;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    ngx_log_debug5(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "gpu progress: slot:%uD state:%uD tokens:%ui sent:%ui "
                   "finish:%ui", ctx->slot, state, p.n_tokens, ctx->n_sent,
                   p.finish);

    rc = ngx_http_gpu_process(r, ctx, &p);

    if (rc == NGX_DECLINED) {
        /* more to come */
        return;
    }

    ngx_http_gpu_channel_detach(ctx, how);

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_gpu_slot_error(ngx_http_gpu_progress_t *p, gpu_slot_t *s)
{
    ngx_http_gpu_error_t  *err;

    err = &p->error;

    err->status = s->error_status;

    if (err->status < NGX_HTTP_BAD_REQUEST || err->status > 599) {
        err->status = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_gpu_slot_string(&err->type, s->error_type, GPU_ERROR_CODE_LEN);
    ngx_http_gpu_slot_string(&err->code, s->error_code, GPU_ERROR_CODE_LEN);
    ngx_http_gpu_slot_string(&err->param, s->error_param,
                             GPU_ERROR_PARAM_LEN);
    ngx_http_gpu_slot_string(&err->message, s->error_message,
                             GPU_ERROR_MSG_LEN);

    if (err->type.data == NULL) {
        ngx_str_set(&err->type, "server_error");
    }

    if (err->message.data == NULL) {
        ngx_str_set(&err->message, "the backend failed");
    }

    ngx_str_null(&err->allow);
}


static void
ngx_http_gpu_slot_string(ngx_str_t *str, char *data, size_t max)
{
    str->len = ngx_strnlen((u_char *) data, max);
    str->data = str->len ? (u_char *) data : NULL;
}


static void
ngx_http_gpu_protocol_error(ngx_http_gpu_progress_t *p)
{
    p->done = 1;
    p->finish = GPU_FINISH_ERROR;

    ngx_http_gpu_set_error(&p->error, NGX_HTTP_INTERNAL_SERVER_ERROR,
                           "server_error", NULL, "backend_error", NULL);
    ngx_str_set(&p->error.message, "the backend sent an invalid answer");
}


static void
ngx_http_gpu_backend_lost(ngx_http_gpu_backend_t *b)
{
    size_t                 size;
    ngx_int_t              rc;
    ngx_uint_t             level;
    ngx_queue_t            pending, *q;
    ngx_connection_t      *c;
    ngx_http_request_t    *r;
    gpu_channel_header_t  *h;
    ngx_http_gpu_ctx_t    *ctx;

    h = b->region;
    size = b->region_size;

    if (h) {
        level = ngx_http_gpu_backend_level(b, NGX_LOG_NOTICE);

        ngx_log_error(level, b->log, 0,
                      "gpu backend \"%V\" disconnected, %s", &b->name,
                      ngx_queue_empty(&b->inflight)
                      ? "reconnecting"
                      : "failing its requests in flight, reconnecting");
    }

    /* no request may use the channel from here on */

    b->region = NULL;

    ngx_http_gpu_backend_close(b);

    if (b->poll.timer_set) {
        ngx_del_timer(&b->poll);
    }

    ngx_queue_init(&pending);
    ngx_queue_add(&pending, &b->inflight);
    ngx_queue_init(&b->inflight);

    while (!ngx_queue_empty(&pending)) {
        q = ngx_queue_head(&pending);

        ngx_queue_remove(q);
        ngx_queue_init(q);

        ctx = ngx_queue_data(q, ngx_http_gpu_ctx_t, queue);
        ctx->inflight = 0;

        r = ctx->request;
        c = r->connection;

        ngx_http_set_log_request(c->log, r);

        rc = ngx_http_gpu_backend_gone(r, ctx);

        ngx_http_finalize_request(r, rc);
        ngx_http_run_posted_requests(c);
    }

    if (h && munmap(h, size) == -1) {
        ngx_log_error(NGX_LOG_ALERT, b->log, ngx_errno,
                      "munmap(%uz) failed", size);
    }

    if (!b->reconnect.timer_set) {
        ngx_add_timer(&b->reconnect,
                      NGX_HTTP_GPU_RECONNECT_MIN
                      + ngx_random() % NGX_HTTP_GPU_RECONNECT_RAND);
    }
}


static void
ngx_http_gpu_backend_close(ngx_http_gpu_backend_t *b)
{
    if (b->connection) {
        ngx_close_connection(b->connection);
        b->connection = NULL;
    }

    if (b->memfd != NGX_INVALID_FILE) {
        if (close(b->memfd) == -1) {
            ngx_log_error(NGX_LOG_ALERT, b->log, ngx_errno,
                          "close() of the region of gpu backend \"%V\" "
                          "failed", &b->name);
        }

        b->memfd = NGX_INVALID_FILE;
    }

    b->hello_len = 0;
}


static void
ngx_http_gpu_backend_wake(ngx_http_gpu_backend_t *b)
{
    ssize_t  n;

    if (b->connection == NULL) {
        return;
    }

    /*
     * EAGAIN is fine: the backend has unread wake-ups already; an error
     * shows up as EOF on the read side
     */

    n = send(b->connection->fd, "w", 1, 0);

    if (n == -1) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, b->log, ngx_socket_errno,
                       "gpu backend \"%V\" wake-up not sent", &b->name);
    }
}


static ngx_uint_t
ngx_http_gpu_backend_level(ngx_http_gpu_backend_t *b, ngx_uint_t level)
{
    /* once per outage, not per retry */

    if (b->outage_logged) {
        return NGX_LOG_DEBUG;
    }

    b->outage_logged = 1;

    return level;
}
