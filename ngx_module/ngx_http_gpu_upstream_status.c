
/*
 * Copyright (C) ngx-gpu authors
 */


/*
 * gpu_upstream_status: every gpu_adaptive upstream's peers, their static
 * and effective weights and the signals behind them, as JSON or (with
 * ?format=prometheus) as Prometheus text.
 */


#include "ngx_http_gpu_upstream.h"


/* one peer's figures, read under the zone's mutex */
typedef struct {
    ngx_str_t                       *name;
    ngx_uint_t                       backup;
    ngx_uint_t                       weight;
    ngx_uint_t                       state;
    ngx_http_gpu_upstream_peer_t     st;
    ngx_msec_t                       load_age;
} ngx_http_gpu_upstream_snapshot_t;


#define NGX_HTTP_GPU_PEER_UP           0
#define NGX_HTTP_GPU_PEER_BACKOFF      1
#define NGX_HTTP_GPU_PEER_UNAVAILABLE  2
#define NGX_HTTP_GPU_PEER_DOWN         3

#define NGX_HTTP_GPU_PEER_LEN          1024


static ngx_str_t  ngx_http_gpu_upstream_states[] = {
    ngx_string("up"),
    ngx_string("backoff"),
    ngx_string("unavailable"),
    ngx_string("down")
};


typedef struct {
    char                            *name;
    char                            *type;
    char                            *help;
} ngx_http_gpu_upstream_family_t;


static ngx_http_gpu_upstream_family_t  ngx_http_gpu_upstream_families[] = {

    { "ngx_gpu_upstream_peer_weight", "gauge",
      "Static weight of the server." },

    { "ngx_gpu_upstream_peer_effective_weight", "gauge",
      "Weight the gpu_adaptive balancer picks with." },

    { "ngx_gpu_upstream_peer_up", "gauge",
      "Whether the server may be picked (not down, not failed)." },

    { "ngx_gpu_upstream_peer_backoff", "gauge",
      "Backoff factor after failures or overload (1: none)." },

    { "ngx_gpu_upstream_peer_inflight", "gauge",
      "Requests in flight to the server, all workers." },

    { "ngx_gpu_upstream_peer_requests_total", "counter",
      "Tries sent to the server." },

    { "ngx_gpu_upstream_peer_fails_total", "counter",
      "Tries that failed or timed out." },

    { "ngx_gpu_upstream_peer_overloads_total", "counter",
      "Answers 429 or 503, or overload reports." },

    { "ngx_gpu_upstream_peer_queue", "gauge",
      "Requests waiting on the node, as it last reported." },

    { "ngx_gpu_upstream_peer_running", "gauge",
      "Sequences running on the node, as it last reported." },

    { "ngx_gpu_upstream_peer_kv_cache_usage_ratio", "gauge",
      "KV-cache use of the node, as it last reported." },

    { "ngx_gpu_upstream_peer_reported_latency_seconds", "gauge",
      "The node's recent request latency, as it last reported." },

    { "ngx_gpu_upstream_peer_reported_tpot_seconds", "gauge",
      "The node's recent time per output token, as it last reported." },

    { "ngx_gpu_upstream_peer_response_seconds", "gauge",
      "EWMA of the response time measured by the balancer." },

    { "ngx_gpu_upstream_peer_first_byte_seconds", "gauge",
      "EWMA of the time to the response header measured by the "
      "balancer." },

    { NULL, NULL, NULL }
};


static ngx_uint_t ngx_http_gpu_upstream_snapshot(
    ngx_http_gpu_upstream_srv_conf_t *gucf,
    ngx_http_gpu_upstream_snapshot_t *snap);
static u_char *ngx_http_gpu_upstream_json(u_char *p, u_char *last,
    ngx_http_gpu_upstream_srv_conf_t *gucf,
    ngx_http_gpu_upstream_snapshot_t *snap, ngx_uint_t n);
static u_char *ngx_http_gpu_upstream_prometheus(u_char *p, u_char *last,
    ngx_uint_t family, ngx_http_gpu_upstream_srv_conf_t *gucf,
    ngx_http_gpu_upstream_snapshot_t *snap, ngx_uint_t n);
static u_char *ngx_http_gpu_upstream_fixed(u_char *p, u_char *last,
    ngx_uint_t value, ngx_uint_t scale);
static ngx_msec_t ngx_http_gpu_upstream_age(ngx_msec_t now,
    ngx_msec_t then);
static u_char *ngx_http_gpu_upstream_escape(u_char *p, u_char *last,
    ngx_str_t *s);


ngx_int_t
ngx_http_gpu_upstream_status_handler(ngx_http_request_t *r)
{
    u_char                             *p, *last;
    size_t                              len;
    ngx_int_t                           rc;
    ngx_str_t                           format;
    ngx_buf_t                          *b;
    ngx_uint_t                          i, k, n, peers, prometheus, first;
    ngx_chain_t                         out;
    ngx_http_upstream_srv_conf_t      **uscfp;
    ngx_http_upstream_main_conf_t      *umcf;
    ngx_http_gpu_upstream_srv_conf_t   *gucf, **list;
    ngx_http_gpu_upstream_snapshot_t  **snaps;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    prometheus = 0;

    if (ngx_http_arg(r, (u_char *) "format", 6, &format) == NGX_OK) {

        if (format.len == 10
            && ngx_strncmp(format.data, "prometheus", 10) == 0)
        {
            prometheus = 1;

        } else if (format.len != 4
                   || ngx_strncmp(format.data, "json", 4) != 0)
        {
            return NGX_HTTP_BAD_REQUEST;
        }
    }

    umcf = ngx_http_get_module_main_conf(r, ngx_http_upstream_module);

    uscfp = umcf->upstreams.elts;

    list = ngx_palloc(r->pool, (umcf->upstreams.nelts + 1)
                               * sizeof(ngx_http_gpu_upstream_srv_conf_t *));
    snaps = ngx_palloc(r->pool, (umcf->upstreams.nelts + 1)
                                * sizeof(ngx_http_gpu_upstream_snapshot_t *));
    if (list == NULL || snaps == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the figures first, the text then */

    n = 0;
    peers = 0;
    len = sizeof("{\"upstreams\":{}}\n");

    for (i = 0; i < umcf->upstreams.nelts; i++) {

        if (uscfp[i]->srv_conf == NULL) {
            continue;
        }

        gucf = ngx_http_conf_upstream_srv_conf(uscfp[i],
                                               ngx_http_gpu_upstream_module);

        if (!gucf->enabled || gucf->sh == NULL) {
            continue;
        }

        snaps[n] = ngx_palloc(r->pool, gucf->sh->number
                                  * sizeof(ngx_http_gpu_upstream_snapshot_t));
        if (snaps[n] == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        list[n] = gucf;

        k = ngx_http_gpu_upstream_snapshot(gucf, snaps[n]);

        peers += k;
        len += 512 + 2 * uscfp[i]->host.len + 2 * gucf->zone_name.len;
        n++;
    }

    len += peers * NGX_HTTP_GPU_PEER_LEN * (prometheus ? 4 : 1);

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->last;
    last = b->end;

    if (prometheus) {

        for (k = 0; ngx_http_gpu_upstream_families[k].name; k++) {
            p = ngx_slprintf(p, last, "# HELP %s %s\n# TYPE %s %s\n",
                             ngx_http_gpu_upstream_families[k].name,
                             ngx_http_gpu_upstream_families[k].help,
                             ngx_http_gpu_upstream_families[k].name,
                             ngx_http_gpu_upstream_families[k].type);

            for (i = 0; i < n; i++) {
                p = ngx_http_gpu_upstream_prometheus(p, last, k, list[i],
                                                     snaps[i],
                                                     list[i]->sh->number);
            }
        }

    } else {
        p = ngx_slprintf(p, last, "{\"upstreams\":{");

        first = 1;

        for (i = 0; i < n; i++) {
            if (!first) {
                p = ngx_slprintf(p, last, ",");
            }

            first = 0;

            p = ngx_http_gpu_upstream_json(p, last, list[i], snaps[i],
                                           list[i]->sh->number);
        }

        p = ngx_slprintf(p, last, "}}\n");
    }

    b->last = p;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;

    if (prometheus) {
        ngx_str_set(&r->headers_out.content_type,
                    "text/plain; version=0.0.4; charset=utf-8");
        r->headers_out.content_type_len = sizeof("text/plain") - 1;

    } else {
        ngx_str_set(&r->headers_out.content_type, "application/json");
        r->headers_out.content_type_len = r->headers_out.content_type.len;
    }

    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static ngx_uint_t
ngx_http_gpu_upstream_snapshot(ngx_http_gpu_upstream_srv_conf_t *gucf,
    ngx_http_gpu_upstream_snapshot_t *snap)
{
    time_t                          now;
    ngx_uint_t                      i, backup;
    ngx_msec_t                      msec;
    ngx_http_upstream_rr_peer_t    *peer;
    ngx_http_upstream_rr_peers_t   *peers, *tier;
    ngx_http_gpu_upstream_shctx_t  *sh;

    sh = gucf->sh;
    peers = gucf->upstream->peer.data;

    now = ngx_time();
    msec = ngx_current_msec;

    i = 0;

    ngx_http_upstream_rr_peers_rlock(peers);
    ngx_shmtx_lock(&gucf->shpool->mutex);

    for (tier = peers, backup = 0; tier; tier = tier->next, backup = 1) {

        for (peer = tier->peer; peer && i < sh->number; peer = peer->next) {

            snap[i].name = &peer->name;
            snap[i].backup = backup;
            snap[i].weight = peer->weight;
            snap[i].st = sh->peer[i];
            snap[i].load_age = ngx_http_gpu_upstream_age(msec,
                                                    sh->peer[i].load_time);

            if (peer->down) {
                snap[i].state = NGX_HTTP_GPU_PEER_DOWN;

            } else if (peer->max_fails
                       && peer->fails >= peer->max_fails
                       && now - peer->checked <= peer->fail_timeout)
            {
                snap[i].state = NGX_HTTP_GPU_PEER_UNAVAILABLE;

            } else if (sh->peer[i].backoff < NGX_HTTP_GPU_UPSTREAM_ONE) {
                snap[i].state = NGX_HTTP_GPU_PEER_BACKOFF;

            } else {
                snap[i].state = NGX_HTTP_GPU_PEER_UP;
            }

            i++;
        }
    }

    ngx_shmtx_unlock(&gucf->shpool->mutex);
    ngx_http_upstream_rr_peers_unlock(peers);

    for ( /* void */ ; i < sh->number; i++) {
        ngx_memzero(&snap[i], sizeof(ngx_http_gpu_upstream_snapshot_t));
        snap[i].state = NGX_HTTP_GPU_PEER_DOWN;
    }

    return sh->number;
}


static u_char *
ngx_http_gpu_upstream_json(u_char *p, u_char *last,
    ngx_http_gpu_upstream_srv_conf_t *gucf,
    ngx_http_gpu_upstream_snapshot_t *snap, ngx_uint_t n)
{
    ngx_uint_t                         i;
    ngx_http_gpu_upstream_peer_t      *st;
    ngx_http_gpu_upstream_snapshot_t  *s;

    p = ngx_slprintf(p, last, "\"");
    p = ngx_http_gpu_upstream_escape(p, last, &gucf->upstream->host);
    p = ngx_slprintf(p, last, "\":{\"zone\":\"");
    p = ngx_http_gpu_upstream_escape(p, last, &gucf->zone_name);
    p = ngx_slprintf(p, last, "\",\"interval_ms\":%M,\"stale_ms\":%M,"
                     "\"updates\":%uA,\"updated_ms_ago\":%M,\"peers\":[",
                     gucf->interval, gucf->stale, gucf->sh->updates,
                     ngx_http_gpu_upstream_age(ngx_current_msec,
                                               gucf->sh->updated));

    for (i = 0; i < n; i++) {
        s = &snap[i];
        st = &s->st;

        if (i) {
            p = ngx_slprintf(p, last, ",");
        }

        p = ngx_slprintf(p, last, "{\"server\":\"");

        if (s->name) {
            p = ngx_http_gpu_upstream_escape(p, last, s->name);
        }

        p = ngx_slprintf(p, last, "\",\"backup\":%s,\"state\":\"%V\","
                         "\"weight\":%ui,\"effective_weight\":",
                         s->backup ? "true" : "false",
                         &ngx_http_gpu_upstream_states[s->state], s->weight);
        p = ngx_http_gpu_upstream_fixed(p, last, st->weight, 1000);
        p = ngx_slprintf(p, last, ",\"factor\":");
        p = ngx_http_gpu_upstream_fixed(p, last, st->factor, 1000);
        p = ngx_slprintf(p, last, ",\"latency_ratio\":");
        p = ngx_http_gpu_upstream_fixed(p, last, st->ratio, 1000);
        p = ngx_slprintf(p, last, ",\"backoff\":");
        p = ngx_http_gpu_upstream_fixed(p, last, st->backoff, 1000);
        p = ngx_slprintf(p, last, ",\"inflight\":%A,\"requests\":%uA,"
                         "\"fails\":%uA,\"overloads\":%uA,\"reported\":",
                         (ngx_atomic_int_t) st->inflight, st->requests,
                         st->fails, st->overloads);

        if (st->load.fields == 0) {
            p = ngx_slprintf(p, last, "null");

        } else {
            p = ngx_slprintf(p, last, "{\"age_ms\":%M", s->load_age);

            if (st->load.fields & NGX_HTTP_GPU_LOAD_QUEUE) {
                p = ngx_slprintf(p, last, ",\"queue\":%ui", st->load.queue);
            }

            if (st->load.fields & NGX_HTTP_GPU_LOAD_RUNNING) {
                p = ngx_slprintf(p, last, ",\"running\":%ui",
                                 st->load.running);
            }

            if (st->load.fields & NGX_HTTP_GPU_LOAD_KV) {
                p = ngx_slprintf(p, last, ",\"kv\":");
                p = ngx_http_gpu_upstream_fixed(p, last, st->load.kv, 1000);
            }

            if (st->load.fields & NGX_HTTP_GPU_LOAD_LATENCY) {
                p = ngx_slprintf(p, last, ",\"latency_ms\":");
                p = ngx_http_gpu_upstream_fixed(p, last, st->load.latency,
                                                1000);
            }

            if (st->load.fields & NGX_HTTP_GPU_LOAD_TPOT) {
                p = ngx_slprintf(p, last, ",\"tpot_ms\":");
                p = ngx_http_gpu_upstream_fixed(p, last, st->load.tpot,
                                                1000);
            }

            if (st->load.fields & NGX_HTTP_GPU_LOAD_UP) {
                p = ngx_slprintf(p, last, ",\"up\":%s",
                                 st->load.up ? "true" : "false");
            }

            p = ngx_slprintf(p, last, "}");
        }

        p = ngx_slprintf(p, last, ",\"response_ms\":");

        if (st->measured & NGX_HTTP_GPU_MEASURED_RT) {
            p = ngx_http_gpu_upstream_fixed(p, last, st->rt, 1000);

        } else {
            p = ngx_slprintf(p, last, "null");
        }

        p = ngx_slprintf(p, last, ",\"first_byte_ms\":");

        if (st->measured & NGX_HTTP_GPU_MEASURED_TTFB) {
            p = ngx_http_gpu_upstream_fixed(p, last, st->ttfb, 1000);

        } else {
            p = ngx_slprintf(p, last, "null");
        }

        p = ngx_slprintf(p, last, "}");
    }

    return ngx_slprintf(p, last, "]}");
}


static u_char *
ngx_http_gpu_upstream_prometheus(u_char *p, u_char *last, ngx_uint_t family,
    ngx_http_gpu_upstream_srv_conf_t *gucf,
    ngx_http_gpu_upstream_snapshot_t *snap, ngx_uint_t n)
{
    ngx_uint_t                         i, value, scale, fields;
    ngx_http_gpu_upstream_peer_t      *st;
    ngx_http_gpu_upstream_snapshot_t  *s;

    for (i = 0; i < n; i++) {
        s = &snap[i];
        st = &s->st;

        if (s->name == NULL) {
            continue;
        }

        scale = 1;
        fields = st->load.fields;

        switch (family) {

        case 0:
            value = s->weight;
            break;

        case 1:
            value = st->weight;
            scale = 1000;
            break;

        case 2:
            value = (s->state <= NGX_HTTP_GPU_PEER_BACKOFF);
            break;

        case 3:
            value = st->backoff;
            scale = 1000;
            break;

        case 4:
            value = ((ngx_atomic_int_t) st->inflight > 0) ? st->inflight : 0;
            break;

        case 5:
            value = st->requests;
            break;

        case 6:
            value = st->fails;
            break;

        case 7:
            value = st->overloads;
            break;

        case 8:
            if (!(fields & NGX_HTTP_GPU_LOAD_QUEUE)) {
                continue;
            }

            value = st->load.queue;
            break;

        case 9:
            if (!(fields & NGX_HTTP_GPU_LOAD_RUNNING)) {
                continue;
            }

            value = st->load.running;
            break;

        case 10:
            if (!(fields & NGX_HTTP_GPU_LOAD_KV)) {
                continue;
            }

            value = st->load.kv;
            scale = 1000;
            break;

        case 11:
            if (!(fields & NGX_HTTP_GPU_LOAD_LATENCY)) {
                continue;
            }

            value = st->load.latency;
            scale = 1000000;
            break;

        case 12:
            if (!(fields & NGX_HTTP_GPU_LOAD_TPOT)) {
                continue;
            }

            value = st->load.tpot;
            scale = 1000000;
            break;

        case 13:
            if (!(st->measured & NGX_HTTP_GPU_MEASURED_RT)) {
                continue;
            }

            value = st->rt;
            scale = 1000000;
            break;

        default: /* 14 */
            if (!(st->measured & NGX_HTTP_GPU_MEASURED_TTFB)) {
                continue;
            }

            value = st->ttfb;
            scale = 1000000;
            break;
        }

        p = ngx_slprintf(p, last, "%s{upstream=\"",
                         ngx_http_gpu_upstream_families[family].name);
        p = ngx_http_gpu_upstream_escape(p, last, &gucf->upstream->host);
        p = ngx_slprintf(p, last, "\",peer=\"");
        p = ngx_http_gpu_upstream_escape(p, last, s->name);
        p = ngx_slprintf(p, last, "\"} ");
        p = ngx_http_gpu_upstream_fixed(p, last, value, scale);
        p = ngx_slprintf(p, last, "\n");
    }

    return p;
}


/* value / scale with up to six decimals, no trailing zeros: 0.42, 12 */

static u_char *
ngx_http_gpu_upstream_fixed(u_char *p, u_char *last, ngx_uint_t value,
    ngx_uint_t scale)
{
    ngx_uint_t  frac, s;

    p = ngx_slprintf(p, last, "%ui", value / scale);

    frac = value % scale;

    if (frac == 0 || p == last) {
        return p;
    }

    *p++ = '.';

    for (s = scale / 10; frac && s && p < last; s /= 10) {
        *p++ = (u_char) ('0' + frac / s);
        frac %= s;
    }

    return p;
}


/* for JSON strings and Prometheus label values alike */

/* another worker's cached clock may be a few milliseconds ahead of ours */

static ngx_msec_t
ngx_http_gpu_upstream_age(ngx_msec_t now, ngx_msec_t then)
{
    return (ngx_msec_int_t) (now - then) > 0 ? now - then : 0;
}


static u_char *
ngx_http_gpu_upstream_escape(u_char *p, u_char *last, ngx_str_t *s)
{
    u_char  c, *src, *end;

    src = s->data;
    end = src + s->len;

    while (src < end && p + 2 <= last) {
        c = *src++;

        if (c == '\\' || c == '"') {
            *p++ = '\\';
            *p++ = c;

        } else if (c < 0x20) {
            *p++ = '\\';
            *p++ = 'n';

        } else {
            *p++ = c;
        }
    }

    return p;
}
