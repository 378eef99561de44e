
/*
 * Copyright (C) ngx-gpu authors
 */


/*
 * Metrics: request counters and latency histograms in a shared zone that
 * every worker counts into, and the Prometheus text exposition, which
 * adds every backend's statistics from its region header.
 */


#include "ngx_http_gpu_channel.h"


#define NGX_HTTP_GPU_ZONE_SIZE     (64 * 1024)
#define NGX_HTTP_GPU_STATUSES                                                 \
    (NGX_HTTP_GPU_STATUS_MAX - NGX_HTTP_GPU_STATUS_MIN + 1)


typedef struct {
    ngx_atomic_t                bucket[NGX_HTTP_GPU_LATENCY_BUCKETS + 1];
    ngx_atomic_t                sum;          /* microseconds */
    ngx_atomic_t                count;
} ngx_http_gpu_histogram_t;


typedef struct {
    ngx_atomic_t                requests[NGX_HTTP_GPU_STATUSES];
    ngx_http_gpu_histogram_t    duration;
    ngx_http_gpu_histogram_t    ttft;
} ngx_http_gpu_metrics_t;


/* how a backend family's value is read from its region header */
typedef enum {
    NGX_HTTP_GPU_VALUE_UP = 0,          /* 1 when ready, else 0 */
    NGX_HTTP_GPU_VALUE_U32,             /* a uint32_t of the stats */
    NGX_HTTP_GPU_VALUE_U64,             /* a uint64_t of the stats */
    NGX_HTTP_GPU_VALUE_BATCH,           /* the batch size histogram */
    NGX_HTTP_GPU_VALUE_KV,              /* KV blocks used / total */
    NGX_HTTP_GPU_VALUE_SLOTS            /* the channel's slots not free */
} ngx_http_gpu_value_e;


typedef struct {
    char                       *name;
    char                       *type;
    char                       *help;
    ngx_http_gpu_value_e        value;
    size_t                      offset;       /* in gpu_channel_stats_t */
} ngx_http_gpu_backend_family_t;


static ngx_int_t ngx_http_gpu_metrics_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_http_gpu_metrics_observe(ngx_http_gpu_histogram_t *h,
    ngx_http_request_t *r);
static u_char *ngx_http_gpu_metrics_histogram(u_char *p, u_char *last,
    char *name, ngx_http_gpu_histogram_t *h);
static u_char *ngx_http_gpu_metrics_family(u_char *p, u_char *last,
    char *name, char *type, char *help);
static u_char *ngx_http_gpu_metrics_double(u_char *p, u_char *last,
    double value);
static u_char *ngx_http_gpu_metrics_backend(u_char *p, u_char *last,
    ngx_http_gpu_backend_family_t *f, ngx_str_t *model,
    gpu_channel_header_t *h);
static u_char *ngx_http_gpu_metrics_sample(u_char *p, u_char *last,
    char *name, char *suffix, ngx_str_t *model);


static ngx_msec_t  ngx_http_gpu_latency_le[NGX_HTTP_GPU_LATENCY_BUCKETS] = {
    10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000
};

static char  *ngx_http_gpu_latency_label[NGX_HTTP_GPU_LATENCY_BUCKETS] = {
    "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
    "30", "60"
};


#define ngx_http_gpu_load(p)  __atomic_load_n(p, __ATOMIC_RELAXED)


#define ngx_http_gpu_stat(field)  offsetof(gpu_channel_stats_t, field)

static ngx_http_gpu_backend_family_t  ngx_http_gpu_backend_families[] = {

    { "ngx_gpu_backend_up", "gauge",
      "Whether the backend is connected and ready.",
      NGX_HTTP_GPU_VALUE_UP, 0 },

    { "ngx_gpu_batch_size", "histogram",
      "Sequences in a forward step.",
      NGX_HTTP_GPU_VALUE_BATCH, 0 },

    { "ngx_gpu_num_requests_running", "gauge",
      "Sequences in the running batch.",
      NGX_HTTP_GPU_VALUE_U32, ngx_http_gpu_stat(running) },

    { "ngx_gpu_num_requests_waiting", "gauge",
      "Requests submitted and not admitted yet.",
      NGX_HTTP_GPU_VALUE_U32, ngx_http_gpu_stat(waiting) },

    { "ngx_gpu_prompt_tokens_total", "counter",
      "Prompt tokens processed.",
      NGX_HTTP_GPU_VALUE_U64, ngx_http_gpu_stat(prompt_tokens) },

    { "ngx_gpu_generation_tokens_total", "counter",
      "Tokens generated.",
      NGX_HTTP_GPU_VALUE_U64, ngx_http_gpu_stat(generation_tokens) },

    { "ngx_gpu_kv_cache_usage_ratio", "gauge",
      "Share of the KV-cache blocks in use.",
      NGX_HTTP_GPU_VALUE_KV, 0 },

    { "ngx_gpu_preemptions_total", "counter",
      "Sequences preempted.",
      NGX_HTTP_GPU_VALUE_U64, ngx_http_gpu_stat(preemptions) },

    { "ngx_gpu_device_allocations_after_start_total", "counter",
      "Device memory allocations after the backend started (must stay 0).",
      NGX_HTTP_GPU_VALUE_U64, ngx_http_gpu_stat(device_allocs_after_start) },

    { "ngx_gpu_graph_steps_total", "counter",
      "Forward steps that replayed a captured CUDA graph; the others of "
      "ngx_gpu_batch_size_count ran their kernels one by one.",
      NGX_HTTP_GPU_VALUE_U64, ngx_http_gpu_stat(graph_steps) },

    { "ngx_gpu_channel_slots_in_use", "gauge",
      "Request slots of the shared channel not free (0 when idle).",
      NGX_HTTP_GPU_VALUE_SLOTS, 0 },

    { NULL, NULL, NULL, 0, 0 }
};


ngx_int_t
ngx_http_gpu_metrics_add_zone(ngx_conf_t *cf, ngx_http_gpu_main_conf_t *gmcf)
{
    ngx_str_t  name;

    ngx_str_set(&name, "ngx_gpu_metrics");

    gmcf->shm_zone = ngx_shared_memory_add(cf, &name, NGX_HTTP_GPU_ZONE_SIZE,
                                           &ngx_http_gpu_module);
    if (gmcf->shm_zone == NULL) {
        return NGX_ERROR;
    }

    gmcf->shm_zone->init = ngx_http_gpu_metrics_init_zone;

    return NGX_OK;
}


static ngx_int_t
ngx_http_gpu_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t         *shpool;
    ngx_http_gpu_metrics_t  *m;

    if (data) {
        /* a reload: the counters go on */
        shm_zone->data = data;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        shm_zone->data = shpool->data;
        return NGX_OK;
    }

    m = ngx_slab_calloc(shpool, sizeof(ngx_http_gpu_metrics_t));
    if (m == NULL) {
        return NGX_ERROR;
    }

    shpool->data = m;
    shm_zone->data = m;

    return NGX_OK;
}


ngx_int_t
ngx_http_gpu_metrics_log_handler(ngx_http_request_t *r)
{
    ngx_uint_t                 status;
    ngx_http_gpu_ctx_t        *ctx;
    ngx_http_gpu_metrics_t    *m;
    ngx_http_gpu_loc_conf_t   *glcf;
    ngx_http_gpu_main_conf_t  *gmcf;

    glcf = ngx_http_get_module_loc_conf(r, ngx_http_gpu_module);

    if (glcf->type != NGX_HTTP_GPU_PASS) {
        return NGX_OK;
    }

    gmcf = ngx_http_get_module_main_conf(r, ngx_http_gpu_module);

    if (gmcf->shm_zone == NULL || gmcf->shm_zone->data == NULL) {
        return NGX_OK;
    }

    m = gmcf->shm_zone->data;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gpu_module);

    /* a stream that ended badly after its 200 header is counted so */

    if (ctx && ctx->status) {
        status = ctx->status;

    } else if (r->err_status) {
        status = r->err_status;

    } else {
        status = r->headers_out.status;
    }

    if (status >= NGX_HTTP_GPU_STATUS_MIN
        && status <= NGX_HTTP_GPU_STATUS_MAX)
    {
        (void) ngx_atomic_fetch_add(
                           &m->requests[status - NGX_HTTP_GPU_STATUS_MIN], 1);
    }

    if (ctx && ctx->submitted) {
        ngx_http_gpu_metrics_observe(&m->duration, r);
    }

    return NGX_OK;
}


void
ngx_http_gpu_metrics_ttft(ngx_http_request_t *r)
{
    ngx_http_gpu_main_conf_t  *gmcf;

    gmcf = ngx_http_get_module_main_conf(r, ngx_http_gpu_module);

    if (gmcf->shm_zone == NULL || gmcf->shm_zone->data == NULL) {
        return;
    }

    ngx_http_gpu_metrics_observe(
                  &((ngx_http_gpu_metrics_t *) gmcf->shm_zone->data)->ttft, r);
}


static void
ngx_http_gpu_metrics_observe(ngx_http_gpu_histogram_t *h,
    ngx_http_request_t *r)
{
    ngx_uint_t       i;
    ngx_time_t      *tp;
    ngx_msec_int_t   ms;

    /* since the request started, in nginx's cached time ($request_time) */

    tp = ngx_timeofday();

    ms = (ngx_msec_int_t) ((tp->sec - r->start_sec) * 1000
                           + (tp->msec - r->start_msec));
    ms = ngx_max(ms, 0);

    for (i = 0; i < NGX_HTTP_GPU_LATENCY_BUCKETS; i++) {
        if ((ngx_msec_t) ms <= ngx_http_gpu_latency_le[i]) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&h->bucket[i], 1);
    (void) ngx_atomic_fetch_add(&h->sum, (ngx_atomic_int_t) ms * 1000);
    (void) ngx_atomic_fetch_add(&h->count, 1);
}


ngx_int_t
ngx_http_gpu_metrics_send(ngx_http_request_t *r)
{
    u_char                          *p, *last;
    size_t                           len;
    uint64_t                         v;
    ngx_int_t                        rc;
    ngx_str_t                        name, *model;
    ngx_buf_t                       *b;
    ngx_uint_t                       i, codes;
    ngx_chain_t                      out;
    gpu_channel_header_t            *h;
    ngx_http_gpu_backend_t         **backends, *bk;
    ngx_http_gpu_metrics_t          *m;
    ngx_http_gpu_loc_conf_t         *glcf;
    ngx_http_gpu_main_conf_t        *gmcf;
    ngx_http_gpu_backend_family_t   *f;

    glcf = ngx_http_get_module_loc_conf(r, ngx_http_gpu_module);
    gmcf = ngx_http_get_module_main_conf(r, ngx_http_gpu_module);

    m = gmcf->shm_zone ? gmcf->shm_zone->data : NULL;

    if (m == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    codes = 0;

    for (i = 0; i < NGX_HTTP_GPU_STATUSES; i++) {
        if (ngx_http_gpu_load(&m->requests[i])) {
            codes++;
        }
    }

    backends = gmcf->backends.elts;

    len = 8192 + codes * 64 + gmcf->backends.nelts * 8192;

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->last;
    last = b->end;

    /* the module's own counters, all workers */

    p = ngx_http_gpu_metrics_family(p, last, "ngx_gpu_requests_total",
                                    "counter",
                                    "Requests to gpu_pass locations "
                                    "by HTTP status.");

    for (i = 0; i < NGX_HTTP_GPU_STATUSES; i++) {
        v = ngx_http_gpu_load(&m->requests[i]);

        if (v) {
            p = ngx_slprintf(p, last,
                             "ngx_gpu_requests_total{code=\"%ui\"} %uL\n",
                             i + NGX_HTTP_GPU_STATUS_MIN, v);
        }
    }

    p = ngx_http_gpu_metrics_family(p, last,
                                    "ngx_gpu_request_duration_seconds",
                                    "histogram",
                                    "Completion requests from the start "
                                    "of the request to the end of the "
                                    "answer.");
    p = ngx_http_gpu_metrics_histogram(p, last,
                                       "ngx_gpu_request_duration_seconds",
                                       &m->duration);

    p = ngx_http_gpu_metrics_family(p, last,
                                    "ngx_gpu_time_to_first_token_seconds",
                                    "histogram",
                                    "Streamed completion requests from the "
                                    "start of the request to the first "
                                    "token sent.");
    p = ngx_http_gpu_metrics_histogram(p, last,
                                       "ngx_gpu_time_to_first_token_seconds",
                                       &m->ttft);

    /* every backend, from its region header */

    for (f = ngx_http_gpu_backend_families; f->name; f++) {

        p = ngx_http_gpu_metrics_family(p, last, f->name, f->type, f->help);

        for (i = 0; i < gmcf->backends.nelts; i++) {
            bk = backends[i];

            if (glcf->model_name.len) {
                model = &glcf->model_name;

            } else {
                /* the last name the backend reported */
                name.data = bk->model;
                name.len = bk->model_len;
                model = &name;
            }

            h = ngx_http_gpu_channel_ready(bk);

            if (h == NULL && f->value != NGX_HTTP_GPU_VALUE_UP) {
                continue;
            }

            p = ngx_http_gpu_metrics_backend(p, last, f, model, h);
        }
    }

    /* the same gauges under the names inference gateways read */

    p = ngx_http_gpu_load_metrics(p, last, r);

    b->last = p;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;

    ngx_str_set(&r->headers_out.content_type,
                "text/plain; version=0.0.4; charset=utf-8");
    r->headers_out.content_type_len = sizeof("text/plain") - 1;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* one backend's samples of one family; h is NULL only for backend_up */

static u_char *
ngx_http_gpu_metrics_backend(u_char *p, u_char *last,
    ngx_http_gpu_backend_family_t *f, ngx_str_t *model,
    gpu_channel_header_t *h)
{
    u_char               *v;
    uint32_t              n, j;
    uint64_t              cumulative, total;
    gpu_channel_stats_t  *st;

    st = h ? &h->stats : NULL;

    switch (f->value) {

    case NGX_HTTP_GPU_VALUE_UP:
        p = ngx_http_gpu_metrics_sample(p, last, f->name, "", model);
        return ngx_slprintf(p, last, "} %d\n", h ? 1 : 0);

    case NGX_HTTP_GPU_VALUE_U32:
        v = (u_char *) st + f->offset;
        p = ngx_http_gpu_metrics_sample(p, last, f->name, "", model);
        return ngx_slprintf(p, last, "} %uD\n",
                            ngx_http_gpu_load((uint32_t *) v));

    case NGX_HTTP_GPU_VALUE_U64:
        v = (u_char *) st + f->offset;
        p = ngx_http_gpu_metrics_sample(p, last, f->name, "", model);
        return ngx_slprintf(p, last, "} %uL\n",
                            (uint64_t) ngx_http_gpu_load((uint64_t *) v));

    case NGX_HTTP_GPU_VALUE_BATCH:
        cumulative = 0;

        for (j = 0; j <= GPU_BATCH_BUCKETS; j++) {
            cumulative += ngx_http_gpu_load(&st->batch_bucket[j]);

            p = ngx_http_gpu_metrics_sample(p, last, f->name, "_bucket",
                                            model);

            if (j < GPU_BATCH_BUCKETS) {
                p = ngx_slprintf(p, last, ",le=\"%uD\"} %uL\n",
                                 gpu_batch_bucket_le[j], cumulative);

            } else {
                p = ngx_slprintf(p, last, ",le=\"+Inf\"} %uL\n",
                                 cumulative);
            }
        }

        p = ngx_http_gpu_metrics_sample(p, last, f->name, "_sum", model);
        p = ngx_slprintf(p, last, "} %uL\n",
                         (uint64_t) ngx_http_gpu_load(&st->batch_sum));

        p = ngx_http_gpu_metrics_sample(p, last, f->name, "_count", model);
        return ngx_slprintf(p, last, "} %uL\n",
                            (uint64_t) ngx_http_gpu_load(&st->steps));

    case NGX_HTTP_GPU_VALUE_KV:
        total = ngx_http_gpu_load(&st->kv_blocks_total);

        p = ngx_http_gpu_metrics_sample(p, last, f->name, "", model);
        p = ngx_slprintf(p, last, "} ");
        p = ngx_http_gpu_metrics_double(p, last,
                               total ? (double) ngx_http_gpu_load(
                                                    &st->kv_blocks_used)
                                       / total
                                     : 0.0);
        return ngx_slprintf(p, last, "\n");

    default: /* NGX_HTTP_GPU_VALUE_SLOTS */

        /*
         * claimed, queued, running, done and not yet given back by a
         * worker, or cancelled and not yet freed: a slot that stays in use
         * when idle is a leak
         */

        n = 0;

        for (j = 0; j < h->n_slots; j++) {
            if (GPU_SLOT_STATE(ngx_http_gpu_load(
                                   &gpu_channel_slot(h, j)->state))
                != GPU_SLOT_FREE)
            {
                n++;
            }
        }

        p = ngx_http_gpu_metrics_sample(p, last, f->name, "", model);
        return ngx_slprintf(p, last, "} %uD\n", n);
    }
}


/* name + suffix + {model="..." : the caller closes the labels */

static u_char *
ngx_http_gpu_metrics_sample(u_char *p, u_char *last, char *name,
    char *suffix, ngx_str_t *model)
{
    p = ngx_slprintf(p, last, "%s%s{model=\"", name, suffix);
    p = ngx_http_gpu_metrics_label(p, last, model);

    return ngx_slprintf(p, last, "\"");
}


static u_char *
ngx_http_gpu_metrics_histogram(u_char *p, u_char *last, char *name,
    ngx_http_gpu_histogram_t *h)
{
    uint64_t    cumulative;
    ngx_uint_t  i;

    cumulative = 0;

    for (i = 0; i < NGX_HTTP_GPU_LATENCY_BUCKETS; i++) {
        cumulative += ngx_http_gpu_load(&h->bucket[i]);

        p = ngx_slprintf(p, last, "%s_bucket{le=\"%s\"} %uL\n",
                         name, ngx_http_gpu_latency_label[i], cumulative);
    }

    cumulative += ngx_http_gpu_load(&h->bucket[i]);

    p = ngx_slprintf(p, last, "%s_bucket{le=\"+Inf\"} %uL\n",
                     name, cumulative);

    p = ngx_slprintf(p, last, "%s_sum ", name);
    p = ngx_http_gpu_metrics_double(p, last,
                                    (double) ngx_http_gpu_load(&h->sum)
                                    / 1000000);
    p = ngx_slprintf(p, last, "\n");

    return ngx_slprintf(p, last, "%s_count %uL\n", name,
                        (uint64_t) ngx_http_gpu_load(&h->count));
}


static u_char *
ngx_http_gpu_metrics_family(u_char *p, u_char *last, char *name, char *type,
    char *help)
{
    return ngx_slprintf(p, last, "# HELP %s %s\n# TYPE %s %s\n",
                        name, help, name, type);
}


/* 0, 0.25, 12.5: six decimals at most, no trailing zeros */

static u_char *
ngx_http_gpu_metrics_double(u_char *p, u_char *last, double value)
{
    u_char  *start;

    start = p;

    p = ngx_slprintf(p, last, "%.6f", value);

    while (p > start && p[-1] == '0') {
        p--;
    }

    if (p > start && p[-1] == '.') {
        p--;
    }

    return p;
}


/* a label value: backslash, double quote and line feed are escaped */

u_char *
ngx_http_gpu_metrics_label(u_char *p, u_char *last, ngx_str_t *value)
{
    u_char  c, *s, *end;

    s = value->data;
    end = s + value->len;

    while (s < end && p + 2 <= last) {
        c = *s++;

        if (c == '\\' || c == '"') {
            *p++ = '\\';
            *p++ = c;

        } else if (c == LF) {
            *p++ = '\\';
            *p++ = 'n';

        } else {
            *p++ = c;
        }
    }

    return p;
}
