
/*
 * Copyright (C) ngx-gpu authors
 */


/*
 * ngx_http_gpu_upstream_module: the gpu_adaptive balancer for upstream
 * groups of GPU nodes (nginx with gpu_pass), and its status location.
 *
 * Each node reports its load on every response in the X-GPU-Load header
 * (see ngx_http_gpu_load.c); the balancer measures every peer itself
 * (EWMA of the response time and of the time to the response header,
 * requests in flight).  One worker per interval turns those signals into
 * effective weights in a shared zone (ngx_http_gpu_upstream_weights.c);
 * every worker picks with two random choices, drawn by the effective
 * weights and the requests in flight, and takes the one with fewer
 * requests in flight per weight.
 *
 *
 * Syntax:  gpu_adaptive [zone=name[:size]] [interval=time] [stale=time]
 *              [queue_weight=number] [kv_weight=number]
 *              [latency_weight=number] [inflight_weight=number]
 *              [backoff=number] [overload_kv=number]
 *              [overload_queue=number];
 * Default: -
 * Context: upstream
 *
 *     The upstream group uses the gpu_adaptive balancer.  The server
 *     parameters weight, max_fails, fail_timeout, max_conns, down and
 *     backup keep their meaning.  Defaults: a zone named
 *     "gpu_adaptive_<upstream>" sized for its servers, interval=500ms,
 *     stale=10 intervals, queue_weight=0.5, kv_weight=1,
 *     latency_weight=2, inflight_weight=1, backoff=0.1, overload_kv=0.95,
 *     overload_queue=0 (off).
 *
 * Syntax:  gpu_upstream_status;
 * Default: -
 * Context: location
 *
 *     GET, HEAD: every gpu_adaptive upstream's peers with their static
 *     and effective weights and signals, as JSON, or with
 *     ?format=prometheus as Prometheus text.
 */


#include <math.h>

#include "ngx_http_gpu_upstream.h"


typedef struct {
    /* the round robin data must be first */
    ngx_http_upstream_rr_peer_data_t    rrp;

    ngx_http_gpu_upstream_srv_conf_t   *conf;
    ngx_http_request_t                 *request;
    ngx_http_gpu_upstream_peer_t       *peer;      /* this try's, or NULL */
    uint64_t                            start;     /* microseconds */

    /* while picking: the fewest requests in flight of a usable peer */
    ngx_uint_t                          least;

    unsigned                            reported:1;
} ngx_http_gpu_upstream_peer_data_t;


typedef struct {
    ngx_str_t                           name;
    size_t                              offset;
    ngx_uint_t                          min;
    ngx_uint_t                          max;
} ngx_http_gpu_upstream_param_t;


static ngx_int_t ngx_http_upstream_init_gpu_adaptive(ngx_conf_t *cf,
    ngx_http_upstream_srv_conf_t *us);
static ngx_int_t ngx_http_gpu_upstream_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_http_upstream_init_gpu_adaptive_peer(
    ngx_http_request_t *r, ngx_http_upstream_srv_conf_t *us);
static ngx_int_t ngx_http_upstream_get_gpu_adaptive_peer(
    ngx_peer_connection_t *pc, void *data);
static ngx_http_upstream_rr_peer_t *ngx_http_gpu_upstream_peek(
    ngx_http_gpu_upstream_peer_data_t *pd, ngx_http_upstream_rr_peers_t *peers,
    ngx_uint_t base, time_t now, double x, ngx_http_upstream_rr_peer_t *skip,
    ngx_uint_t *index);
static double ngx_http_gpu_upstream_score(
    ngx_http_gpu_upstream_peer_data_t *pd, ngx_uint_t i);
static double ngx_http_gpu_upstream_share(
    ngx_http_gpu_upstream_peer_data_t *pd, ngx_uint_t i);
static double ngx_http_gpu_upstream_random(void);
static ngx_uint_t ngx_http_gpu_upstream_usable(
    ngx_http_upstream_rr_peer_data_t *rrp, ngx_http_upstream_rr_peer_t *peer,
    ngx_uint_t i, time_t now);
static ngx_uint_t ngx_http_gpu_upstream_weight(
    ngx_http_gpu_upstream_shctx_t *sh, ngx_uint_t i);
static void ngx_http_gpu_upstream_start(ngx_http_gpu_upstream_peer_data_t *pd,
    ngx_uint_t i);
static void ngx_http_upstream_free_gpu_adaptive_peer(
    ngx_peer_connection_t *pc, void *data, ngx_uint_t state);
static ngx_int_t ngx_http_gpu_upstream_header_filter(ngx_http_request_t *r);
static void ngx_http_gpu_upstream_timer_handler(ngx_event_t *ev);

static ngx_int_t ngx_http_gpu_upstream_init(ngx_conf_t *cf);
static void *ngx_http_gpu_upstream_create_conf(ngx_conf_t *cf);
static char *ngx_http_gpu_adaptive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_gpu_upstream_time(ngx_conf_t *cf, ngx_str_t *value,
    size_t prefix, ngx_msec_t min, ngx_msec_t max, char *range,
    ngx_msec_t *ms);
static char *ngx_http_gpu_upstream_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_gpu_upstream_init_process(ngx_cycle_t *cycle);


static ngx_http_gpu_upstream_param_t  ngx_http_gpu_upstream_params[] = {

    { ngx_string("queue_weight="),
      offsetof(ngx_http_gpu_upstream_srv_conf_t, queue_weight),
      0, 1000000 },

    { ngx_string("kv_weight="),
      offsetof(ngx_http_gpu_upstream_srv_conf_t, kv_weight),
      0, 1000000 },

    { ngx_string("latency_weight="),
      offsetof(ngx_http_gpu_upstream_srv_conf_t, latency_weight),
      0, 10000 },

    { ngx_string("inflight_weight="),
      offsetof(ngx_http_gpu_upstream_srv_conf_t, inflight_weight),
      0, 1000000 },

    { ngx_string("backoff="),
      offsetof(ngx_http_gpu_upstream_srv_conf_t, backoff),
      1, 1000 },

    { ngx_string("overload_kv="),
      offsetof(ngx_http_gpu_upstream_srv_conf_t, overload_kv),
      0, 1000 },

    { ngx_null_string, 0, 0, 0 }
};


static ngx_command_t  ngx_http_gpu_upstream_commands[] = {

    { ngx_string("gpu_adaptive"),
      NGX_HTTP_UPS_CONF|NGX_CONF_ANY,
      ngx_http_gpu_adaptive,
      NGX_HTTP_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("gpu_upstream_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_gpu_upstream_status,
      0,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_gpu_upstream_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_gpu_upstream_init,            /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    ngx_http_gpu_upstream_create_conf,     /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_gpu_upstream_module = {
    NGX_MODULE_V1,
    &ngx_http_gpu_upstream_module_ctx,     /* module context */
    ngx_http_gpu_upstream_commands,        /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_gpu_upstream_init_process,    /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;


static ngx_int_t
ngx_http_upstream_init_gpu_adaptive(ngx_conf_t *cf,
    ngx_http_upstream_srv_conf_t *us)
{
    size_t                             size, min;
    ngx_uint_t                         n;
    ngx_shm_zone_t                    *shm_zone;
    ngx_http_upstream_rr_peers_t      *peers;
    ngx_http_gpu_upstream_srv_conf_t  *gucf;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, cf->log, 0, "init gpu adaptive");

    if (ngx_http_upstream_init_round_robin(cf, us) != NGX_OK) {
        return NGX_ERROR;
    }

    us->peer.init = ngx_http_upstream_init_gpu_adaptive_peer;

    gucf = ngx_http_conf_upstream_srv_conf(us, ngx_http_gpu_upstream_module);

    peers = us->peer.data;
    n = peers->number + (peers->next ? peers->next->number : 0);

    /* room for this configuration and the two before a reload */

    size = sizeof(ngx_http_gpu_upstream_shctx_t)
           + (n - 1) * sizeof(ngx_http_gpu_upstream_peer_t);
    min = 8 * ngx_pagesize + 3 * ngx_align(size, ngx_pagesize);

    if (gucf->zone_name.len == 0) {
        gucf->zone_name.len = sizeof("gpu_adaptive_") - 1 + us->host.len;
        gucf->zone_name.data = ngx_pnalloc(cf->pool, gucf->zone_name.len);
        if (gucf->zone_name.data == NULL) {
            return NGX_ERROR;
        }

        ngx_sprintf(gucf->zone_name.data, "gpu_adaptive_%V", &us->host);
    }

    if (gucf->zone_size == 0) {
        gucf->zone_size = min;

    } else if (gucf->zone_size < min) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "gpu_adaptive zone \"%V\" is too small for %ui servers "
                      "of upstream \"%V\" in %s:%ui, it needs at least %uzk",
                      &gucf->zone_name, n, &us->host, us->file_name, us->line,
                      min / 1024);
        return NGX_ERROR;
    }

    shm_zone = ngx_shared_memory_add(cf, &gucf->zone_name, gucf->zone_size,
                                     &ngx_http_gpu_upstream_module);
    if (shm_zone == NULL) {
        return NGX_ERROR;
    }

    if (shm_zone->data) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "gpu_adaptive zone \"%V\" of upstream \"%V\" in %s:%ui "
                      "is already used by another upstream",
                      &gucf->zone_name, &us->host, us->file_name, us->line);
        return NGX_ERROR;
    }

    shm_zone->init = ngx_http_gpu_upstream_init_zone;
    shm_zone->data = gucf;

    gucf->shm_zone = shm_zone;

    return NGX_OK;
}


static ngx_int_t
ngx_http_gpu_upstream_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_gpu_upstream_srv_conf_t  *ogucf = data;

    size_t                              len, size;
    uint32_t                            hash;
    ngx_uint_t                          i, j, n, backup, same;
    ngx_slab_pool_t                    *shpool;
    ngx_http_upstream_rr_peer_t        *peer;
    ngx_http_upstream_rr_peers_t       *peers, *tier;
    ngx_http_gpu_upstream_shctx_t      *sh, *osh;
    ngx_http_gpu_upstream_srv_conf_t   *gucf;

    gucf = shm_zone->data;
    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    gucf->shpool = shpool;

    peers = gucf->upstream->peer.data;
    n = peers->number + (peers->next ? peers->next->number : 0);

    osh = NULL;

    if (ogucf) {
        osh = ogucf->sh;

    } else if (shm_zone->shm.exists) {
        osh = shpool->data;
    }

    /* the same servers as before a reload: the figures go on */

    if (osh && osh->number == n) {
        same = 1;
        i = 0;

        for (tier = peers, backup = 0; tier; tier = tier->next, backup++) {
            for (peer = tier->peer; peer; peer = peer->next, i++) {
                hash = ngx_crc32_short(peer->name.data, peer->name.len)
                       ^ (uint32_t) backup;

                if (osh->peer[i].hash != hash) {
                    same = 0;
                }
            }
        }

        if (same) {
            gucf->sh = osh;
            return NGX_OK;
        }
    }

    size = sizeof(ngx_http_gpu_upstream_shctx_t)
           + (n - 1) * sizeof(ngx_http_gpu_upstream_peer_t);

    sh = ngx_slab_calloc(shpool, size);
    if (sh == NULL) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "gpu_adaptive zone \"%V\" is too small",
                      &shm_zone->shm.name);
        return NGX_ERROR;
    }

    sh->number = n;
    sh->updated = ngx_current_msec;

    i = 0;

    for (tier = peers, backup = 0; tier; tier = tier->next, backup++) {
        for (peer = tier->peer; peer; peer = peer->next, i++) {
            sh->peer[i].hash = ngx_crc32_short(peer->name.data,
                                               peer->name.len)
                               ^ (uint32_t) backup;
            sh->peer[i].weight = peer->weight * NGX_HTTP_GPU_UPSTREAM_ONE;
            sh->peer[i].backoff = NGX_HTTP_GPU_UPSTREAM_ONE;
            sh->peer[i].factor = NGX_HTTP_GPU_UPSTREAM_ONE;
            sh->peer[i].ratio = NGX_HTTP_GPU_UPSTREAM_ONE;

            if (osh == NULL) {
                continue;
            }

            /* a server that stays keeps its figures */

            for (j = 0; j < osh->number; j++) {
                if (osh->peer[j].hash == sh->peer[i].hash) {
                    sh->peer[i] = osh->peer[j];
                    sh->peer[i].inflight = 0;
                    break;
                }
            }
        }
    }

    /*
     * the configuration before the previous one is gone by now; the
     * previous one is still used by the workers that are shutting down
     */

    if (osh) {
        if (osh->previous) {
            ngx_slab_free(shpool, osh->previous);
            osh->previous = NULL;
        }

        sh->previous = osh;
    }

    shpool->data = sh;
    gucf->sh = sh;

    len = sizeof(" in gpu_adaptive zone \"\"") + shm_zone->shm.name.len;

    shpool->log_ctx = ngx_slab_alloc(shpool, len);
    if (shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(shpool->log_ctx, " in gpu_adaptive zone \"%V\"%Z",
                &shm_zone->shm.name);

    return NGX_OK;
}


static ngx_int_t
ngx_http_upstream_init_gpu_adaptive_peer(ngx_http_request_t *r,
    ngx_http_upstream_srv_conf_t *us)
{
    ngx_http_gpu_upstream_peer_data_t  *pd;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "init gpu adaptive peer");

    pd = ngx_palloc(r->pool, sizeof(ngx_http_gpu_upstream_peer_data_t));
    if (pd == NULL) {
        return NGX_ERROR;
    }

    r->upstream->peer.data = &pd->rrp;

    if (ngx_http_upstream_init_round_robin_peer(r, us) != NGX_OK) {
        return NGX_ERROR;
    }

    r->upstream->peer.get = ngx_http_upstream_get_gpu_adaptive_peer;
    r->upstream->peer.free = ngx_http_upstream_free_gpu_adaptive_peer;

    pd->conf = ngx_http_conf_upstream_srv_conf(us,
                                               ngx_http_gpu_upstream_module);
    pd->request = r;
    pd->peer = NULL;
    pd->start = 0;
    pd->reported = 0;

    /* the header filter finds the try here, whatever wraps peer.data */

    ngx_http_set_ctx(r, pd, ngx_http_gpu_upstream_module);

    return NGX_OK;
}


static ngx_int_t
ngx_http_upstream_get_gpu_adaptive_peer(ngx_peer_connection_t *pc,
    void *data)
{
    ngx_http_gpu_upstream_peer_data_t  *pd = data;

    double                             a, b, total, rest;
    time_t                             now;
    uintptr_t                          m;
    ngx_int_t                          rc;
    ngx_uint_t                         i, n, p, q, base;
    ngx_http_upstream_rr_peer_t       *peer, *best, *other;
    ngx_http_upstream_rr_peers_t      *peers, *primary;
    ngx_http_gpu_upstream_shctx_t     *sh;
    ngx_http_upstream_rr_peer_data_t  *rrp;
    ngx_http_gpu_upstream_srv_conf_t  *gucf;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, pc->log, 0,
                   "get gpu adaptive peer, try: %ui", pc->tries);

    rrp = &pd->rrp;
    gucf = pd->conf;
    sh = gucf->sh;

    if (rrp->peers->single) {
        rc = ngx_http_upstream_get_round_robin_peer(pc, rrp);

        if (rc == NGX_OK) {
            ngx_http_gpu_upstream_start(pd, 0);
        }

        return rc;
    }

    pc->cached = 0;
    pc->connection = NULL;

    now = ngx_time();

    peers = rrp->peers;
    primary = gucf->upstream->peer.data;
    base = (peers == primary) ? 0 : primary->number;

    ngx_http_upstream_rr_peers_wlock(peers);

    pd->least = (ngx_uint_t) -1;

    for (peer = peers->peer, i = 0; peer; peer = peer->next, i++) {
        if (ngx_http_gpu_upstream_usable(rrp, peer, i, now)
            && base + i < sh->number
            && sh->peer[base + i].inflight < pd->least)
        {
            pd->least = sh->peer[base + i].inflight;
        }
    }

    total = 0;

    for (peer = peers->peer, i = 0; peer; peer = peer->next, i++) {
        if (ngx_http_gpu_upstream_usable(rrp, peer, i, now)) {
            total += ngx_http_gpu_upstream_share(pd, base + i);
        }
    }

    if (total <= 0) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, pc->log, 0,
                       "get gpu adaptive peer, no peer found");

        goto failed;
    }

    /*
     * two random choices; of the two, the one with fewer requests in
     * flight per effective weight.  Each is drawn by its effective weight
     * halved for every request it has in flight more than the least busy
     * peer, so with equal weights the least busy peer is nearly always
     * one of the two.  The counts are live and shared by all workers:
     * random draws over them herd no one
     */

    best = ngx_http_gpu_upstream_peek(pd, peers, base, now,
                                      total * ngx_http_gpu_upstream_random(),
                                      NULL, &p);

    if (best == NULL) {
        goto failed;
    }

    rest = total - ngx_http_gpu_upstream_share(pd, base + p);

    other = NULL;

    if (rest > 0) {
        other = ngx_http_gpu_upstream_peek(pd, peers, base, now,
                                           rest
                                           * ngx_http_gpu_upstream_random(),
                                           best, &q);
    }

    if (other) {
        a = ngx_http_gpu_upstream_score(pd, base + q);
        b = ngx_http_gpu_upstream_score(pd, base + p);

        ngx_log_debug4(NGX_LOG_DEBUG_HTTP, pc->log, 0,
                       "get gpu adaptive peer, choices: %ui %ui, "
                       "scores: %.3f %.3f", p, q, b, a);

        /* within 10% the first choice stays: a random pick by weight */

        if (a * 10 < b * 9) {
            best = other;
            p = q;
        }
    }

    rrp->current = best;

    if (now - best->checked > best->fail_timeout) {
        best->checked = now;
    }

    pc->sockaddr = best->sockaddr;
    pc->socklen = best->socklen;
    pc->name = &best->name;

    best->conns++;

    n = p / (8 * sizeof(uintptr_t));
    m = (uintptr_t) 1 << p % (8 * sizeof(uintptr_t));

    rrp->tried[n] |= m;

    ngx_http_upstream_rr_peers_unlock(peers);

    ngx_http_gpu_upstream_start(pd, base + p);

    return NGX_OK;

failed:

    if (peers->next) {

        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, pc->log, 0,
                       "get gpu adaptive peer, backup servers");

        rrp->peers = peers->next;

        n = (rrp->peers->number + (8 * sizeof(uintptr_t) - 1))
                / (8 * sizeof(uintptr_t));

        for (i = 0; i < n; i++) {
            rrp->tried[i] = 0;
        }

        ngx_http_upstream_rr_peers_unlock(peers);

        rc = ngx_http_upstream_get_gpu_adaptive_peer(pc, pd);

        if (rc != NGX_BUSY) {
            return rc;
        }

        ngx_http_upstream_rr_peers_wlock(peers);
    }

    /* all peers failed, mark them as live for quick recovery */

    for (peer = peers->peer; peer; peer = peer->next) {
        peer->fails = 0;
    }

    ngx_http_upstream_rr_peers_unlock(peers);

    pc->name = peers->name;

    return NGX_BUSY;
}


/* the usable peer where the cumulative share passes x */

static ngx_http_upstream_rr_peer_t *
ngx_http_gpu_upstream_peek(ngx_http_gpu_upstream_peer_data_t *pd,
    ngx_http_upstream_rr_peers_t *peers, ngx_uint_t base, time_t now,
    double x, ngx_http_upstream_rr_peer_t *skip, ngx_uint_t *index)
{
    double                        sum;
    ngx_uint_t                    i;
    ngx_http_upstream_rr_peer_t  *peer, *last;

    sum = 0;
    last = NULL;

    for (peer = peers->peer, i = 0; peer; peer = peer->next, i++) {

        if (peer == skip
            || !ngx_http_gpu_upstream_usable(&pd->rrp, peer, i, now))
        {
            continue;
        }

        sum += ngx_http_gpu_upstream_share(pd, base + i);

        last = peer;
        *index = i;

        if (x < sum) {
            return peer;
        }
    }

    /* weights or counts changed meanwhile in another worker */

    return last;
}


/* (1 + inflight_weight * requests in flight) per effective weight */

static double
ngx_http_gpu_upstream_score(ngx_http_gpu_upstream_peer_data_t *pd,
    ngx_uint_t i)
{
    ngx_uint_t                      x;
    ngx_http_gpu_upstream_shctx_t  *sh;

    sh = pd->conf->sh;
    x = (i < sh->number) ? sh->peer[i].inflight : 0;

    return (1.0 + (double) pd->conf->inflight_weight * x
                  / NGX_HTTP_GPU_UPSTREAM_ONE)
           / ngx_http_gpu_upstream_weight(sh, i);
}


/*
 * a peer's chance to be drawn: its effective weight, halved for every
 * request in flight more than the least busy usable peer has (times
 * inflight_weight); with inflight_weight=0, or no requests in flight,
 * its effective weight
 */

static double
ngx_http_gpu_upstream_share(ngx_http_gpu_upstream_peer_data_t *pd,
    ngx_uint_t i)
{
    double                          w, d;
    ngx_uint_t                      x;
    ngx_http_gpu_upstream_shctx_t  *sh;

    sh = pd->conf->sh;
    w = (double) ngx_http_gpu_upstream_weight(sh, i);
    x = (i < sh->number) ? sh->peer[i].inflight : 0;

    if (x <= pd->least) {
        return w;
    }

    d = (double) (x - pd->least) * pd->conf->inflight_weight
        / NGX_HTTP_GPU_UPSTREAM_ONE;

    /* far busier than the others: rare, not never */

    return w * exp2(-ngx_min(d, 30));
}


/* uniform in [0, 1) */

static double
ngx_http_gpu_upstream_random(void)
{
    return (double) (ngx_random() & 0x7fffffff) / 2147483648.0;
}


static ngx_uint_t
ngx_http_gpu_upstream_usable(ngx_http_upstream_rr_peer_data_t *rrp,
    ngx_http_upstream_rr_peer_t *peer, ngx_uint_t i, time_t now)
{
    uintptr_t   m;
    ngx_uint_t  n;

    n = i / (8 * sizeof(uintptr_t));
    m = (uintptr_t) 1 << i % (8 * sizeof(uintptr_t));

    if (rrp->tried[n] & m) {
        return 0;
    }

    if (peer->down) {
        return 0;
    }

    if (peer->max_fails
        && peer->fails >= peer->max_fails
        && now - peer->checked <= peer->fail_timeout)
    {
        return 0;
    }

    if (peer->max_conns && peer->conns >= peer->max_conns) {
        return 0;
    }

    return 1;
}


static ngx_uint_t
ngx_http_gpu_upstream_weight(ngx_http_gpu_upstream_shctx_t *sh, ngx_uint_t i)
{
    ngx_uint_t  w;

    if (i >= sh->number) {
        return 1;
    }

    w = sh->peer[i].weight;

    return w ? w : 1;
}


static void
ngx_http_gpu_upstream_start(ngx_http_gpu_upstream_peer_data_t *pd,
    ngx_uint_t i)
{
    ngx_http_gpu_upstream_peer_t  *peer;

    pd->peer = NULL;
    pd->reported = 0;
    pd->start = ngx_http_gpu_upstream_usec();

    if (i >= pd->conf->sh->number) {
        return;
    }

    peer = &pd->conf->sh->peer[i];

    (void) ngx_atomic_fetch_add(&peer->inflight, 1);
    (void) ngx_atomic_fetch_add(&peer->requests, 1);

    pd->peer = peer;
}


static void
ngx_http_upstream_free_gpu_adaptive_peer(ngx_peer_connection_t *pc,
    void *data, ngx_uint_t state)
{
    ngx_http_gpu_upstream_peer_data_t  *pd = data;

    ngx_uint_t            status;
    ngx_table_elt_t      *h;
    ngx_http_upstream_t  *u;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, pc->log, 0,
                   "free gpu adaptive peer %ui %ui", pc->tries, state);

    if (pd->peer) {
        u = pd->request->upstream;
        status = u ? u->headers_in.status_n : 0;

        /* a response that did not reach the header filter: 502, 503... */

        if (!pd->reported && status) {
            h = ngx_http_gpu_upstream_load_header(&u->headers_in.headers);

            ngx_http_gpu_upstream_report(pd->conf, pd->peer, h,
                                         (uint64_t) -1, pc->log);
            pd->reported = 1;
        }

        ngx_http_gpu_upstream_finish(pd->conf, pd->peer,
                                     state & NGX_PEER_FAILED, status,
                                     ngx_http_gpu_upstream_usec() - pd->start,
                                     pc->log);
        pd->peer = NULL;
    }

    ngx_http_upstream_free_round_robin_peer(pc, &pd->rrp, state);
}


/*
 * the node's load header and the time to the first byte, as soon as the
 * upstream's response header is passed on
 */

static ngx_int_t
ngx_http_gpu_upstream_header_filter(ngx_http_request_t *r)
{
    ngx_table_elt_t                    *h;
    ngx_http_upstream_t                *u;
    ngx_http_gpu_upstream_peer_data_t  *pd;

    pd = ngx_http_get_module_ctx(r, ngx_http_gpu_upstream_module);

    if (pd == NULL || pd->peer == NULL || pd->reported) {
        return ngx_http_next_header_filter(r);
    }

    u = r->upstream;

    if (u == NULL || u->headers_in.status_n == 0) {
        return ngx_http_next_header_filter(r);
    }

    h = ngx_http_gpu_upstream_load_header(&u->headers_in.headers);

    ngx_http_gpu_upstream_report(pd->conf, pd->peer, h,
                                 ngx_http_gpu_upstream_usec() - pd->start,
                                 r->connection->log);
    pd->reported = 1;

    return ngx_http_next_header_filter(r);
}


static void
ngx_http_gpu_upstream_timer_handler(ngx_event_t *ev)
{
    ngx_http_gpu_upstream_srv_conf_t  *gucf = ev->data;

    ngx_http_gpu_upstream_update(gucf);

    if (!ngx_exiting) {
        ngx_add_timer(ev, gucf->interval);
    }
}


static ngx_int_t
ngx_http_gpu_upstream_init(ngx_conf_t *cf)
{
    ngx_uint_t                          i;
    ngx_http_upstream_srv_conf_t      **uscfp;
    ngx_http_upstream_main_conf_t      *umcf;
    ngx_http_gpu_upstream_srv_conf_t   *gucf;

    umcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_upstream_module);

    uscfp = umcf->upstreams.elts;

    for (i = 0; i < umcf->upstreams.nelts; i++) {

        /* not by peer.init_upstream: keepalive wraps it */

        if (uscfp[i]->srv_conf == NULL) {
            continue;
        }

        gucf = ngx_http_conf_upstream_srv_conf(uscfp[i],
                                               ngx_http_gpu_upstream_module);

        if (gucf->enabled) {
            ngx_http_next_header_filter = ngx_http_top_header_filter;
            ngx_http_top_header_filter = ngx_http_gpu_upstream_header_filter;

            break;
        }
    }

    return NGX_OK;
}


static void *
ngx_http_gpu_upstream_create_conf(ngx_conf_t *cf)
{
    ngx_http_gpu_upstream_srv_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_gpu_upstream_srv_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->upstream = NULL;
     *     conf->shm_zone = NULL;
     *     conf->sh = NULL;
     *     conf->zone_name = { 0, NULL };
     *     conf->zone_size = 0;
     *     conf->overload_queue = 0;
     *     conf->enabled = 0;
     */

    conf->interval = 500;
    conf->stale = NGX_CONF_UNSET_MSEC;
    conf->queue_weight = 500;
    conf->kv_weight = 1000;
    conf->latency_weight = 2000;
    conf->inflight_weight = 1000;
    conf->backoff = 100;
    conf->overload_kv = 950;

    return conf;
}


static char *
ngx_http_gpu_adaptive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_gpu_upstream_srv_conf_t  *gucf = conf;

    u_char                         *p;
    ssize_t                         size;
    ngx_int_t                       n;
    ngx_str_t                      *value, s;
    ngx_uint_t                      i;
    ngx_http_upstream_srv_conf_t   *uscf;
    ngx_http_gpu_upstream_param_t  *param;

    if (gucf->enabled) {
        return "is duplicate";
    }

    uscf = ngx_http_conf_get_module_srv_conf(cf, ngx_http_upstream_module);

    if (uscf->peer.init_upstream) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "load balancing method redefined");
    }

    uscf->peer.init_upstream = ngx_http_upstream_init_gpu_adaptive;

    uscf->flags = NGX_HTTP_UPSTREAM_CREATE
                  |NGX_HTTP_UPSTREAM_WEIGHT
                  |NGX_HTTP_UPSTREAM_MAX_CONNS
                  |NGX_HTTP_UPSTREAM_MAX_FAILS
                  |NGX_HTTP_UPSTREAM_FAIL_TIMEOUT
                  |NGX_HTTP_UPSTREAM_DOWN
                  |NGX_HTTP_UPSTREAM_BACKUP;

    gucf->enabled = 1;
    gucf->upstream = uscf;

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) == 0) {

            s.data = value[i].data + 5;
            s.len = value[i].len - 5;

            p = ngx_strlchr(s.data, s.data + s.len, ':');

            if (p) {
                gucf->zone_name.data = s.data;
                gucf->zone_name.len = p - s.data;

                s.data = p + 1;
                s.len = value[i].data + value[i].len - s.data;

                size = ngx_parse_size(&s);

                if (size == NGX_ERROR) {
                    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                       "invalid zone size \"%V\"", &value[i]);
                    return NGX_CONF_ERROR;
                }

                if (size < (ssize_t) (8 * ngx_pagesize)) {
                    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                       "zone \"%V\" is too small", &value[i]);
                    return NGX_CONF_ERROR;
                }

                gucf->zone_size = size;

            } else {
                gucf->zone_name = s;
            }

            if (gucf->zone_name.len == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid zone name \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "interval=", 9) == 0) {

            if (ngx_http_gpu_upstream_time(cf, &value[i], 9, 10, 60000,
                                           "10ms to 60s", &gucf->interval)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "stale=", 6) == 0) {

            if (ngx_http_gpu_upstream_time(cf, &value[i], 6, 1, 3600000,
                                           "1ms to 1h", &gucf->stale)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "overload_queue=", 15) == 0) {

            n = ngx_atoi(value[i].data + 15, value[i].len - 15);

            if (n == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid overload_queue \"%V\"",
                                   &value[i]);
                return NGX_CONF_ERROR;
            }

            gucf->overload_queue = n;

            continue;
        }

        for (param = ngx_http_gpu_upstream_params; param->name.len; param++) {

            if (value[i].len <= param->name.len
                || ngx_strncmp(value[i].data, param->name.data,
                               param->name.len)
                   != 0)
            {
                continue;
            }

            /* numbers with up to three decimals, as 1000ths */

            n = ngx_atofp(value[i].data + param->name.len,
                          value[i].len - param->name.len, 3);

            if (n == NGX_ERROR
                || (ngx_uint_t) n < param->min
                || (ngx_uint_t) n > param->max)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid %*s \"%V\", it must be a number "
                                   "from %ui.%03ui to %ui.%03ui",
                                   param->name.len - 1, param->name.data,
                                   &value[i],
                                   param->min / 1000, param->min % 1000,
                                   param->max / 1000, param->max % 1000);
                return NGX_CONF_ERROR;
            }

            *(ngx_uint_t *) ((char *) gucf + param->offset) = n;

            break;
        }

        if (param->name.len) {
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    if (gucf->stale == NGX_CONF_UNSET_MSEC) {
        gucf->stale = 10 * gucf->interval;
    }

    return NGX_CONF_OK;
}


/* "name=time" whose name is prefix bytes long (with the "="), min to max */

static ngx_int_t
ngx_http_gpu_upstream_time(ngx_conf_t *cf, ngx_str_t *value, size_t prefix,
    ngx_msec_t min, ngx_msec_t max, char *range, ngx_msec_t *ms)
{
    ngx_str_t   s;
    ngx_msec_t  t;

    s.data = value->data + prefix;
    s.len = value->len - prefix;

    t = ngx_parse_time(&s, 0);

    if (t == (ngx_msec_t) NGX_ERROR || t < min || t > max) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid %*s \"%V\", it must be from %s",
                           prefix - 1, value->data, value, range);
        return NGX_ERROR;
    }

    *ms = t;

    return NGX_OK;
}


static char *
ngx_http_gpu_upstream_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler) {
        return "is duplicate";
    }

    clcf->handler = ngx_http_gpu_upstream_status_handler;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_gpu_upstream_init_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                          i;
    ngx_event_t                        *ev;
    ngx_http_upstream_srv_conf_t      **uscfp;
    ngx_http_upstream_main_conf_t      *umcf;
    ngx_http_gpu_upstream_srv_conf_t   *gucf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    umcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_upstream_module);
    if (umcf == NULL) {
        return NGX_OK;
    }

    uscfp = umcf->upstreams.elts;

    for (i = 0; i < umcf->upstreams.nelts; i++) {

        if (uscfp[i]->srv_conf == NULL) {
            continue;
        }

        gucf = ngx_http_conf_upstream_srv_conf(uscfp[i],
                                               ngx_http_gpu_upstream_module);

        if (!gucf->enabled || gucf->sh == NULL) {
            continue;
        }

        /* every worker tries; one recomputes per interval */

        ev = &gucf->timer;

        ev->handler = ngx_http_gpu_upstream_timer_handler;
        ev->data = gucf;
        ev->log = cycle->log;
        ev->cancelable = 1;

        ngx_add_timer(ev, 1 + ngx_random() % gucf->interval);
    }

    return NGX_OK;
}
