/*
 * server.c - see server.h.
 *
 * Every nginx worker keeps one connection.  On accept the worker gets a
 * hello and the region's memfd (SCM_RIGHTS); from then on a byte from the
 * worker means "look at the ring", and a byte to the worker means "look
 * at your slots".  A closed connection means the worker is gone: its
 * slots are cancelled so that nothing it left behind keeps running.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "server.h"

#define SERVER_MAX_CONNS  1024


typedef struct {
    int       fd;                   /* -1: unused entry */
    uint32_t  worker_id;
    int       dirty;                /* owes the worker a wake-up */
} conn_t;


struct server_s {
    int                     listen_fd;
    int                     epfd;
    int                     memfd;
    gpu_channel_header_t   *h;
    scheduler_t            *sched;
    uint32_t                next_worker_id;
    int                     any_dirty;
    int                     conns_hi;       /* entries in use are below */
    conn_t                  conns[SERVER_MAX_CONNS];
};


gpu_channel_header_t *
region_create(uint32_t n_slots, uint32_t prompt_bytes_cap,
    uint32_t prompt_tokens_cap, uint32_t max_new_tokens,
    uint32_t out_bytes_cap, uint32_t max_logprobs, uint32_t lp_tokens,
    uint32_t vocab_size, uint64_t vocab_bytes, int *memfd, char *err,
    size_t errlen)
{
    int                    fd;
    void                  *p;
    uint64_t               size;
    gpu_channel_header_t   tmp;

    memset(&tmp, 0, sizeof(tmp));
    size = gpu_channel_layout(&tmp, n_slots, prompt_bytes_cap,
                              prompt_tokens_cap, max_new_tokens,
                              out_bytes_cap, max_logprobs, lp_tokens,
                              vocab_size, vocab_bytes);

    fd = memfd_create("ngx-gpu-channel", MFD_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "memfd_create: %s", strerror(errno));
        return NULL;
    }

    if (ftruncate(fd, (off_t) size) != 0) {
        snprintf(err, errlen, "ftruncate(%llu): %s",
                 (unsigned long long) size, strerror(errno));
        close(fd);
        return NULL;
    }

    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
             fd, 0);
    if (p == MAP_FAILED) {
        snprintf(err, errlen, "mmap(%llu): %s", (unsigned long long) size,
                 strerror(errno));
        close(fd);
        return NULL;
    }

    memcpy(p, &tmp, sizeof(tmp));
    *memfd = fd;

    return p;
}


void
region_destroy(gpu_channel_header_t *h, int memfd)
{
    if (h != NULL) {
        munmap(h, (size_t) h->region_size);
    }
    if (memfd >= 0) {
        close(memfd);
    }
}


int
server_listen(const char *path, int mode, char *err, size_t errlen)
{
    int                 fd;
    struct stat         st;
    struct sockaddr_un  sa;

    if (strlen(path) >= sizeof(sa.sun_path)) {
        snprintf(err, errlen, "socket path too long: %s", path);
        return -1;
    }

    /* a socket left by a dead backend is ours to replace; a file is not */
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen, "%s exists and is not a socket", path);
            return -1;
        }
        unlink(path);
    }

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, path);

    if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) != 0
        || chmod(path, mode) != 0
        || listen(fd, 512) != 0)
    {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }

    return fd;
}


server_t *
server_create(int listen_fd, int memfd, gpu_channel_header_t *h)
{
    int                  i;
    server_t            *srv;
    struct epoll_event   ev;

    srv = calloc(1, sizeof(server_t));
    if (srv == NULL) {
        return NULL;
    }

    srv->listen_fd = listen_fd;
    srv->memfd = memfd;
    srv->h = h;
    srv->next_worker_id = 1;

    for (i = 0; i < SERVER_MAX_CONNS; i++) {
        srv->conns[i].fd = -1;
    }

    srv->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (srv->epfd < 0) {
        free(srv);
        return NULL;
    }

    fcntl(listen_fd, F_SETFL, fcntl(listen_fd, F_GETFL) | O_NONBLOCK);

    ev.events = EPOLLIN;
    ev.data.u32 = UINT32_MAX;
    if (epoll_ctl(srv->epfd, EPOLL_CTL_ADD, listen_fd, &ev) != 0) {
        close(srv->epfd);
        free(srv);
        return NULL;
    }

    return srv;
}


void
server_destroy(server_t *srv)
{
    int  i;

    if (srv == NULL) {
        return;
    }

    for (i = 0; i < srv->conns_hi; i++) {
        if (srv->conns[i].fd >= 0) {
            close(srv->conns[i].fd);
        }
    }

    close(srv->epfd);
    free(srv);
}


void
server_set_scheduler(server_t *srv, scheduler_t *sched)
{
    srv->sched = sched;
}


void
server_notify(void *data, uint32_t owner)
{
    int        i;
    server_t  *srv = data;

    /* called for every generated token: scan only the entries in use */
    for (i = 0; i < srv->conns_hi; i++) {
        if (srv->conns[i].fd >= 0 && srv->conns[i].worker_id == owner) {
            srv->conns[i].dirty = 1;
            srv->any_dirty = 1;
            return;
        }
    }
}


static void
server_flush_wakeups(server_t *srv)
{
    int  i;

    if (!srv->any_dirty) {
        return;
    }

    for (i = 0; i < srv->conns_hi; i++) {
        if (srv->conns[i].fd >= 0 && srv->conns[i].dirty) {
            /* EAGAIN: the worker has unread wake-ups already */
            (void) !write(srv->conns[i].fd, "w", 1);
            srv->conns[i].dirty = 0;
        }
    }

    srv->any_dirty = 0;
}


static int
send_hello(server_t *srv, int fd, uint32_t worker_id)
{
    char                  cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec          iov;
    struct msghdr         msg;
    struct cmsghdr       *cm;
    gpu_channel_hello_t   hello;

    memset(&hello, 0, sizeof(hello));
    hello.magic = GPU_CHANNEL_MAGIC;
    hello.version = GPU_CHANNEL_VERSION;
    hello.worker_id = worker_id;
    hello.region_size = srv->h->region_size;

    iov.iov_base = &hello;
    iov.iov_len = sizeof(hello);

    memset(&msg, 0, sizeof(msg));
    memset(cbuf, 0, sizeof(cbuf));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof(cbuf);

    cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &srv->memfd, sizeof(int));

    return sendmsg(fd, &msg, MSG_NOSIGNAL) == (ssize_t) sizeof(hello)
           ? 0 : -1;
}


static void
server_accept(server_t *srv)
{
    int                 fd, i;
    struct epoll_event  ev;

    for ( ;; ) {
        fd = accept4(srv->listen_fd, NULL, NULL,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                log_warn("accept: %s", strerror(errno));
            }
            return;
        }

        for (i = 0; i < SERVER_MAX_CONNS; i++) {
            if (srv->conns[i].fd < 0) {
                break;
            }
        }

        if (i == SERVER_MAX_CONNS || send_hello(srv, fd,
                                                srv->next_worker_id) != 0)
        {
            log_warn("worker connection refused (%s)",
                     i == SERVER_MAX_CONNS ? "too many" : strerror(errno));
            close(fd);
            continue;
        }

        ev.events = EPOLLIN;
        ev.data.u32 = (uint32_t) i;
        if (epoll_ctl(srv->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
            close(fd);
            continue;
        }

        srv->conns[i].fd = fd;
        srv->conns[i].worker_id = srv->next_worker_id++;
        if (i >= srv->conns_hi) {
            srv->conns_hi = i + 1;
        }
        srv->conns[i].dirty = 0;

        log_info("nginx worker connected (id %u)", srv->conns[i].worker_id);
    }
}


/* the worker is gone: nothing it submitted may keep running */
static void
server_drop(server_t *srv, int i)
{
    uint32_t     held;
    conn_t      *c = &srv->conns[i];

    epoll_ctl(srv->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;

    held = gpu_channel_drop_owner(srv->h, c->worker_id);
    if (held > 0) {
        log_info("nginx worker %u left %u request slot(s): freed or "
                 "cancelled", c->worker_id, held);
    }

    log_info("nginx worker disconnected (id %u)", c->worker_id);
}


static void
server_read(server_t *srv, int i)
{
    char     buf[256];
    ssize_t  n;

    for ( ;; ) {
        n = read(srv->conns[i].fd, buf, sizeof(buf));

        if (n > 0) {
            continue;                       /* wake-ups carry no data */
        }

        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return;
        }

        server_drop(srv, i);
        return;
    }
}


int
server_run(server_t *srv, volatile sig_atomic_t *stop)
{
    int                 n, k, timeout, wait_us;
    struct epoll_event  evs[64];

    while (!*stop) {
        timeout = -1;

        if (scheduler_has_work(srv->sched)) {
            wait_us = scheduler_wait_us(srv->sched);
            timeout = wait_us > 0 ? (wait_us + 999) / 1000 : 0;
        }

        n = epoll_wait(srv->epfd, evs, 64, timeout);

        if (n < 0 && errno != EINTR) {
            log_error("epoll_wait: %s", strerror(errno));
            return -1;
        }

        for (k = 0; k < n; k++) {
            if (evs[k].data.u32 == UINT32_MAX) {
                server_accept(srv);
            } else {
                server_read(srv, (int) evs[k].data.u32);
            }
        }

        scheduler_poll_ring(srv->sched);

        if (scheduler_has_work(srv->sched)
            && scheduler_wait_us(srv->sched) == 0
            && scheduler_step(srv->sched) != 0)
        {
            log_error("engine step failed");
            scheduler_abort_all(srv->sched, "the engine failed");
            server_flush_wakeups(srv);
            return -1;
        }

        server_flush_wakeups(srv);
    }

    scheduler_poll_ring(srv->sched);
    scheduler_abort_all(srv->sched, "the backend is shutting down");
    server_flush_wakeups(srv);

    return 0;
}
