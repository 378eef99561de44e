
/*
 * Copyright (C) ngx-gpu authors
 */


/*
 * The node's load report, for balancers in front of it:
 *
 *     X-GPU-Load: queue=3,running=12,kv=0.420,latency_ms=180.512,tpot_ms=2.250
 *
 * on every answer of a gpu_pass location (errors and streams included):
 * the backend's waiting requests, running sequences and KV-cache use from
 * its region header, and the node's own EWMAs of the completion latency
 * (request to last byte) and of the time per output token after the first
 * (the decode step time its sequences see: its speed, without the time
 * spent waiting), shared by the workers in a small zone.  While the
 * backend is down the header says "up=0" and the latencies.
 *
 * The same figures go into gpu_metrics under the names the Gateway API
 * Inference Extension's endpoint picker reads by default (vLLM's).
 */


#include "ngx_http_gpu_channel.h"


#define NGX_HTTP_GPU_LOAD_HEADER_LEN                                          \
    (sizeof("queue=,running=,kv=0.000,latency_ms=.000,tpot_ms=.000,up=0")    \
     - 1 + 4 * NGX_INT_T_LEN)


/* per backend, in the order of gmcf->backends; microseconds, 0: none yet */
typedef struct {
    ngx_atomic_t                latency;
    ngx_atomic_t                tpot;
} ngx_http_gpu_load_ewma_t;


static ngx_int_t ngx_http_gpu_load_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_http_gpu_load_ewma_t *ngx_http_gpu_load_ewma(ngx_http_request_t *r,
    ngx_http_gpu_backend_t *backend);
static ngx_int_t ngx_http_gpu_load_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_gpu_load_log_handler(ngx_http_request_t *r);
static void ngx_http_gpu_load_update(ngx_atomic_t *v,
    ngx_atomic_uint_t sample);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;


ngx_int_t
ngx_http_gpu_load_init(ngx_conf_t *cf, ngx_http_gpu_main_conf_t *gmcf)
{
    size_t                      size;
    ngx_str_t                   name;
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    ngx_str_set(&name, "ngx_gpu_load");

    size = 8 * ngx_pagesize
           + ngx_align(gmcf->backends.nelts * sizeof(ngx_http_gpu_load_ewma_t),
                       ngx_pagesize);

    gmcf->load_zone = ngx_shared_memory_add(cf, &name, size,
                                            &ngx_http_gpu_module);
    if (gmcf->load_zone == NULL) {
        return NGX_ERROR;
    }

    gmcf->load_zone->init = ngx_http_gpu_load_init_zone;
    gmcf->load_zone->data = gmcf;

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_gpu_load_header_filter;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_gpu_load_log_handler;

    return NGX_OK;
}


static ngx_int_t
ngx_http_gpu_load_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_gpu_main_conf_t  *ogmcf = data;

    ngx_uint_t                 n;
    ngx_slab_pool_t           *shpool;
    ngx_http_gpu_load_ewma_t  *ewma;
    ngx_http_gpu_main_conf_t  *gmcf;

    gmcf = shm_zone->data;
    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    n = ngx_max(gmcf->backends.nelts, 1);

    /* a reload with as many backends: the averages go on */

    if (ogmcf && ogmcf->load
        && ogmcf->backends.nelts == gmcf->backends.nelts)
    {
        gmcf->load = ogmcf->load;
        return NGX_OK;
    }

    if (ogmcf == NULL && shm_zone->shm.exists) {
        gmcf->load = shpool->data;
        return NGX_OK;
    }

    ewma = ngx_slab_calloc(shpool, n * sizeof(ngx_http_gpu_load_ewma_t));
    if (ewma == NULL) {
        return NGX_ERROR;
    }

    shpool->data = ewma;
    gmcf->load = ewma;

    return NGX_OK;
}


static ngx_http_gpu_load_ewma_t *
ngx_http_gpu_load_ewma(ngx_http_request_t *r, ngx_http_gpu_backend_t *backend)
{
    ngx_uint_t                  i;
    ngx_http_gpu_backend_t    **backends;
    ngx_http_gpu_main_conf_t   *gmcf;

    gmcf = ngx_http_get_module_main_conf(r, ngx_http_gpu_module);

    if (gmcf->load == NULL) {
        return NULL;
    }

    backends = gmcf->backends.elts;

    for (i = 0; i < gmcf->backends.nelts; i++) {
        if (backends[i] == backend) {
            return &((ngx_http_gpu_load_ewma_t *) gmcf->load)[i];
        }
    }

    return NULL;
}


static ngx_int_t
ngx_http_gpu_load_header_filter(ngx_http_request_t *r)
{
    u_char                    *p;
    ngx_uint_t                 v, total;
    ngx_table_elt_t           *h;
    gpu_channel_header_t      *region;
    ngx_http_gpu_load_ewma_t  *ewma;
    ngx_http_gpu_loc_conf_t   *glcf;

    glcf = ngx_http_get_module_loc_conf(r, ngx_http_gpu_module);

    if (glcf->type != NGX_HTTP_GPU_PASS || r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    p = ngx_pnalloc(r->pool, NGX_HTTP_GPU_LOAD_HEADER_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "X-GPU-Load");
    h->value.data = p;

    region = ngx_http_gpu_channel_ready(glcf->backend);

    if (region) {
        total = __atomic_load_n(&region->stats.kv_blocks_total,
                                __ATOMIC_RELAXED);
        v = __atomic_load_n(&region->stats.kv_blocks_used, __ATOMIC_RELAXED);

        v = total ? ngx_min(v, total) * 1000 / total : 0;

        p = ngx_sprintf(p, "queue=%uD,running=%uD,kv=%ui.%03ui",
                        __atomic_load_n(&region->stats.waiting,
                                        __ATOMIC_RELAXED),
                        __atomic_load_n(&region->stats.running,
                                        __ATOMIC_RELAXED),
                        v / 1000, v % 1000);

    } else {
        p = ngx_sprintf(p, "up=0");
    }

    ewma = ngx_http_gpu_load_ewma(r, glcf->backend);

    if (ewma) {
        v = ewma->latency;

        if (v) {
            p = ngx_sprintf(p, ",latency_ms=%ui.%03ui", v / 1000, v % 1000);
        }

        v = ewma->tpot;

        if (v) {
            p = ngx_sprintf(p, ",tpot_ms=%ui.%03ui", v / 1000, v % 1000);
        }
    }

    h->value.len = p - h->value.data;

    return ngx_http_next_header_filter(r);
}


/* a completion answered in full: the node's latency averages */

static ngx_int_t
ngx_http_gpu_load_log_handler(ngx_http_request_t *r)
{
    uint64_t                   now, first;
    ngx_atomic_uint_t          us;
    ngx_http_gpu_ctx_t        *ctx;
    ngx_http_gpu_load_ewma_t  *ewma;
    ngx_http_gpu_loc_conf_t   *glcf;

    glcf = ngx_http_get_module_loc_conf(r, ngx_http_gpu_module);

    if (glcf->type != NGX_HTTP_GPU_PASS) {
        return NGX_OK;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_gpu_module);

    if (ctx == NULL
        || !ctx->submitted
        || ctx->start_usec == 0
        || ctx->status
        || ctx->n_sent == 0
        || r->headers_out.status != NGX_HTTP_OK
        || r->connection->error)
    {
        return NGX_OK;
    }

    ewma = ngx_http_gpu_load_ewma(r, ctx->backend);

    if (ewma == NULL) {
        return NGX_OK;
    }

    now = ngx_http_gpu_load_usec();

    /* from the content handler on, the request head read */

    us = (ngx_atomic_uint_t) (now - ctx->start_usec);

    ngx_http_gpu_load_update(&ewma->latency, ngx_max(us, 1));

    /*
     * the tokens after the first, from the first on; where all came in
     * one scan, from the start: an upper bound
     */

    if (ctx->n_sent > 1) {
        first = ctx->first_usec ? ctx->first_usec : ctx->start_usec;
        us = (ngx_atomic_uint_t) (now - first) / (ctx->n_sent - 1);
        ngx_http_gpu_load_update(&ewma->tpot, ngx_max(us, 1));
    }

    return NGX_OK;
}


uint64_t
ngx_http_gpu_load_usec(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


/* EWMA with alpha 1/8 shared by the workers: compare-and-swap */

static void
ngx_http_gpu_load_update(ngx_atomic_t *v, ngx_atomic_uint_t sample)
{
    ngx_uint_t         i;
    ngx_atomic_uint_t  old, new;

    for (i = 0; i < 8; i++) {
        old = *v;

        if (old == 0) {
            new = sample;

        } else if (sample >= old) {
            new = old + (sample - old) / 8;

        } else {
            new = old - (old - sample) / 8;
        }

        if (new == 0) {
            new = 1;
        }

        if (ngx_atomic_cmp_set(v, old, new)) {
            return;
        }
    }
}


/*
 * the gauges of the Gateway API Inference Extension's model server
 * protocol under vLLM's names, which its endpoint picker reads by default
 */

u_char *
ngx_http_gpu_load_metrics(u_char *p, u_char *last, ngx_http_request_t *r)
{
    ngx_str_t                   name, *model;
    ngx_uint_t                  i, k, v, total;
    gpu_channel_header_t       *h;
    ngx_http_gpu_backend_t    **backends, *bk;
    ngx_http_gpu_loc_conf_t    *glcf;
    ngx_http_gpu_main_conf_t   *gmcf;

    static char  *names[] = {
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:gpu_cache_usage_perc",
        "vllm:kv_cache_usage_perc"
    };

    static char  *help[] = {
        "Requests waiting to be processed (ngx_gpu_num_requests_waiting).",
        "Requests running (ngx_gpu_num_requests_running).",
        "KV-cache usage, 1 is 100% (ngx_gpu_kv_cache_usage_ratio).",
        "KV-cache usage, 1 is 100% (ngx_gpu_kv_cache_usage_ratio)."
    };

    glcf = ngx_http_get_module_loc_conf(r, ngx_http_gpu_module);
    gmcf = ngx_http_get_module_main_conf(r, ngx_http_gpu_module);

    backends = gmcf->backends.elts;

    for (k = 0; k < 4; k++) {

        p = ngx_slprintf(p, last, "# HELP %s %s\n# TYPE %s gauge\n",
                         names[k], help[k], names[k]);

        for (i = 0; i < gmcf->backends.nelts; i++) {
            bk = backends[i];

            h = ngx_http_gpu_channel_ready(bk);

            if (h == NULL) {
                continue;
            }

            if (glcf->model_name.len) {
                model = &glcf->model_name;

            } else {
                name.data = bk->model;
                name.len = bk->model_len;
                model = &name;
            }

            switch (k) {

            case 0:
                v = __atomic_load_n(&h->stats.waiting, __ATOMIC_RELAXED);
                break;

            case 1:
                v = __atomic_load_n(&h->stats.running, __ATOMIC_RELAXED);
                break;

            default: /* 2, 3 */
                total = __atomic_load_n(&h->stats.kv_blocks_total,
                                        __ATOMIC_RELAXED);
                v = __atomic_load_n(&h->stats.kv_blocks_used,
                                    __ATOMIC_RELAXED);
                v = total ? ngx_min(v, total) * 1000000 / total : 0;
                break;
            }

            p = ngx_slprintf(p, last, "%s{model_name=\"", names[k]);
            p = ngx_http_gpu_metrics_label(p, last, model);

            if (k < 2) {
                p = ngx_slprintf(p, last, "\"} %ui\n", v);

            } else {
                p = ngx_slprintf(p, last, "\"} %ui.%06ui\n",
                                 v / 1000000, v % 1000000);
            }
        }
    }

    return p;
}

