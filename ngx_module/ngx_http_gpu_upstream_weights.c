
/*
 * Copyright (C) ngx-gpu authors
 */


/*
 * The gpu_adaptive balancer's signals and weights: the nodes' load
 * reports, the balancer's own measurements, backing off, and the
 * periodic computation of the effective weights.
 *
 * Every interval one worker computes, for every peer of a tier (the
 * primary servers, then the backup ones):
 *
 *     ratio   = max(1, ((latency + noise) / (best + noise)) ^ conf / 1.1)
 *     factor  = ratio ^ -latency_weight
 *               / (1 + conf * (queue_weight * queue + kv_weight * kv))
 *     weight  = static weight * factor * backoff, at least 1% of the
 *               static weight
 *
 * The latency is the node's time per output token, or its request latency
 * where no node of the tier reports that; for nodes that report neither,
 * the geometric mean of the balancer's EWMAs of the time to the response
 * header and of the response time.  best is the tier's lowest.  noise is
 * 20us for the time per token and 5ms for the others, and within 10% of
 * the best is as good as the best: jitter is no signal.  The balancer's
 * measurements grow with the load it sends a peer, which the requests in
 * flight account for already when picking; where the nodes report their
 * speed, the measurements stay out of the ratio, or the weights would
 * chase their own load and herd.  queue and kv are EWMAs (alpha 1/4) of
 * the reported ones.
 *
 * conf, from 0 to 1, is the confidence in a peer's figures: a quarter
 * more with each of its first four answers, a quarter less every interval
 * once the stale time (default ten intervals) passed without an answer.
 * So a peer starts from the average, a peer that was not picked for a
 * while (too slow, or failed) is probed back in from the average, and one
 * outlying answer moves little.
 *
 * A peer that failed, timed out, answered 429 or 503, or reported itself
 * overloaded has its backoff (and its weight, at once) multiplied by the
 * backoff parameter; the backoff doubles back to 1 every interval.
 */


#include <math.h>

#include "ngx_http_gpu_upstream.h"


#define NGX_HTTP_GPU_SOURCES      3        /* node, first byte, response */
#define NGX_HTTP_GPU_BACKOFF_MIN  10       /* 1% */
#define NGX_HTTP_GPU_CONFIDENT    4        /* answers */
#define NGX_HTTP_GPU_NOISE        5000     /* microseconds */
#define NGX_HTTP_GPU_NOISE_TPOT   20
#define NGX_HTTP_GPU_TOLERANCE    1.1


static void ngx_http_gpu_upstream_backoff(
    ngx_http_gpu_upstream_srv_conf_t *gucf,
    ngx_http_gpu_upstream_peer_t *peer, ngx_msec_t now);
static void ngx_http_gpu_upstream_ewma(ngx_uint_t *v, ngx_uint_t *measured,
    ngx_uint_t flag, ngx_uint_t sample);
static void ngx_http_gpu_upstream_tier(ngx_http_gpu_upstream_srv_conf_t *gucf,
    ngx_http_upstream_rr_peers_t *peers, ngx_uint_t base, ngx_msec_t now);
static ngx_uint_t *ngx_http_gpu_upstream_signal(
    ngx_http_gpu_upstream_peer_t *peer, ngx_uint_t source,
    ngx_uint_t node_tpot);
static ngx_int_t ngx_http_gpu_upstream_decimal(u_char *p, u_char *last,
    ngx_uint_t scale, ngx_uint_t *value);


static ngx_str_t  ngx_http_gpu_upstream_load_name = ngx_string("X-GPU-Load");


ngx_table_elt_t *
ngx_http_gpu_upstream_load_header(ngx_list_t *headers)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &headers->part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash == 0) {
            continue;
        }

        if (h[i].key.len == ngx_http_gpu_upstream_load_name.len
            && ngx_strncasecmp(h[i].key.data,
                               ngx_http_gpu_upstream_load_name.data,
                               ngx_http_gpu_upstream_load_name.len)
               == 0)
        {
            return &h[i];
        }
    }

    return NULL;
}


/*
 * "queue=3, running=12, kv=0.42, latency_ms=180, tpot_ms=2.5, up=1":
 * unknown keys and values that do not parse are skipped
 */

ngx_int_t
ngx_http_gpu_upstream_parse_load(u_char *p, u_char *last,
    ngx_http_gpu_upstream_load_t *load)
{
    u_char      *key, *key_end, *val, *val_end;
    size_t       len;
    ngx_uint_t   v;

    ngx_memzero(load, sizeof(ngx_http_gpu_upstream_load_t));

    while (p < last) {

        while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }

        key = p;

        while (p < last && *p != '=' && *p != ',') {
            p++;
        }

        key_end = p;

        while (key_end > key && (key_end[-1] == ' ' || key_end[-1] == '\t')) {
            key_end--;
        }

        if (p == last || *p == ',') {
            continue;
        }

        p++;                                       /* '=' */

        while (p < last && (*p == ' ' || *p == '\t')) {
            p++;
        }

        val = p;

        while (p < last && *p != ',') {
            p++;
        }

        val_end = p;

        while (val_end > val && (val_end[-1] == ' ' || val_end[-1] == '\t')) {
            val_end--;
        }

        len = key_end - key;

        if (len == 5 && ngx_strncasecmp(key, (u_char *) "queue", 5) == 0) {
            if (ngx_http_gpu_upstream_decimal(val, val_end, 1, &v) == NGX_OK) {
                load->queue = v;
                load->fields |= NGX_HTTP_GPU_LOAD_QUEUE;
            }

        } else if (len == 7
                   && ngx_strncasecmp(key, (u_char *) "running", 7) == 0)
        {
            if (ngx_http_gpu_upstream_decimal(val, val_end, 1, &v) == NGX_OK) {
                load->running = v;
                load->fields |= NGX_HTTP_GPU_LOAD_RUNNING;
            }

        } else if (len == 2 && ngx_strncasecmp(key, (u_char *) "kv", 2) == 0) {
            if (ngx_http_gpu_upstream_decimal(val, val_end, 1000, &v)
                == NGX_OK)
            {
                load->kv = ngx_min(v, 1000);
                load->fields |= NGX_HTTP_GPU_LOAD_KV;
            }

        } else if (len == 10
                   && ngx_strncasecmp(key, (u_char *) "latency_ms", 10) == 0)
        {
            if (ngx_http_gpu_upstream_decimal(val, val_end, 1000, &v)
                == NGX_OK)
            {
                load->latency = v;
                load->fields |= NGX_HTTP_GPU_LOAD_LATENCY;
            }

        } else if (len == 7
                   && ngx_strncasecmp(key, (u_char *) "tpot_ms", 7) == 0)
        {
            if (ngx_http_gpu_upstream_decimal(val, val_end, 1000, &v)
                == NGX_OK)
            {
                load->tpot = v;
                load->fields |= NGX_HTTP_GPU_LOAD_TPOT;
            }

        } else if (len == 2 && ngx_strncasecmp(key, (u_char *) "up", 2) == 0) {
            if (ngx_http_gpu_upstream_decimal(val, val_end, 1, &v) == NGX_OK) {
                load->up = v ? 1 : 0;
                load->fields |= NGX_HTTP_GPU_LOAD_UP;
            }
        }
    }

    return load->fields ? NGX_OK : NGX_DECLINED;
}


/* "12", "0.42", "2.125": the value times scale, further decimals dropped */

static ngx_int_t
ngx_http_gpu_upstream_decimal(u_char *p, u_char *last, ngx_uint_t scale,
    ngx_uint_t *value)
{
    ngx_uint_t  v, frac, digits;

    if (p == last) {
        return NGX_ERROR;
    }

    v = 0;
    digits = 0;

    for ( /* void */ ; p < last && *p >= '0' && *p <= '9'; p++) {
        if (v > 1000000000) {
            return NGX_ERROR;
        }

        v = v * 10 + (*p - '0');
        digits++;
    }

    v *= scale;

    if (p < last && *p == '.') {
        p++;

        for (frac = scale / 10; p < last && *p >= '0' && *p <= '9'; p++) {
            v += (*p - '0') * frac;
            frac /= 10;
            digits++;
        }
    }

    if (p != last || digits == 0) {
        return NGX_ERROR;
    }

    *value = v;

    return NGX_OK;
}


/*
 * a response header came from the peer: its load report, and the time to
 * it in microseconds ((uint64_t) -1 where unknown)
 */

void
ngx_http_gpu_upstream_report(ngx_http_gpu_upstream_srv_conf_t *gucf,
    ngx_http_gpu_upstream_peer_t *peer, ngx_table_elt_t *h,
    uint64_t ttfb, ngx_log_t *log)
{
    ngx_msec_t                    now;
    ngx_uint_t                    overload;
    ngx_http_gpu_upstream_load_t  load;

    now = ngx_current_msec;
    overload = 0;

    if (h
        && ngx_http_gpu_upstream_parse_load(h->value.data,
                                            h->value.data + h->value.len,
                                            &load)
           != NGX_OK)
    {
        ngx_log_error(NGX_LOG_INFO, log, 0,
                      "gpu_adaptive: invalid \"%V: %V\" from upstream",
                      &h->key, &h->value);
        h = NULL;
    }

    if (h) {
        ngx_log_debug6(NGX_LOG_DEBUG_HTTP, log, 0,
                       "gpu adaptive report: queue:%ui running:%ui kv:%ui "
                       "latency:%ui tpot:%ui ttfb:%uL",
                       load.queue, load.running, load.kv, load.latency,
                       load.tpot, ttfb);

        if (((load.fields & NGX_HTTP_GPU_LOAD_UP) && !load.up)
            || (gucf->overload_kv
                && (load.fields & NGX_HTTP_GPU_LOAD_KV)
                && load.kv >= gucf->overload_kv)
            || (gucf->overload_queue
                && (load.fields & NGX_HTTP_GPU_LOAD_QUEUE)
                && load.queue >= gucf->overload_queue))
        {
            overload = 1;
        }
    }

    ngx_shmtx_lock(&gucf->shpool->mutex);

    if (h) {

        /* snapshots of a moving queue: averaged for the weights */

        if (load.fields & NGX_HTTP_GPU_LOAD_QUEUE) {
            ngx_http_gpu_upstream_ewma(&peer->queue, &peer->measured,
                                       NGX_HTTP_GPU_MEASURED_QUEUE,
                                       load.queue * 1000);
        }

        if (load.fields & NGX_HTTP_GPU_LOAD_KV) {
            ngx_http_gpu_upstream_ewma(&peer->kv, &peer->measured,
                                       NGX_HTTP_GPU_MEASURED_KV, load.kv);
        }

        peer->load = load;
        peer->load_time = now;
        peer->reports++;
    }

    if (ttfb != (uint64_t) -1) {
        ngx_http_gpu_upstream_ewma(&peer->ttfb, &peer->measured,
                                   NGX_HTTP_GPU_MEASURED_TTFB,
                                   (ngx_uint_t) ttfb);
    }

    peer->sample_time = now;

    if (peer->samples < NGX_HTTP_GPU_CONFIDENT) {
        peer->samples++;
    }

    if (overload) {
        ngx_http_gpu_upstream_backoff(gucf, peer, now);
    }

    ngx_shmtx_unlock(&gucf->shpool->mutex);

    if (overload) {
        (void) ngx_atomic_fetch_add(&peer->overloads, 1);

        ngx_log_error(NGX_LOG_INFO, log, 0,
                      "gpu_adaptive: upstream reports overload \"%V\", "
                      "backing off", &h->value);
    }
}


/* a monotonic clock in microseconds: answers on a LAN take a few */

uint64_t
ngx_http_gpu_upstream_usec(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


/* the try is over: in flight no more, its response time, failures */

void
ngx_http_gpu_upstream_finish(ngx_http_gpu_upstream_srv_conf_t *gucf,
    ngx_http_gpu_upstream_peer_t *peer, ngx_uint_t failed, ngx_uint_t status,
    uint64_t rt, ngx_log_t *log)
{
    ngx_msec_t  now;
    ngx_uint_t  overload;

    (void) ngx_atomic_fetch_add(&peer->inflight, (ngx_atomic_int_t) -1);

    now = ngx_current_msec;

    overload = (status == NGX_HTTP_TOO_MANY_REQUESTS
                || status == NGX_HTTP_SERVICE_UNAVAILABLE);

    if (failed) {
        (void) ngx_atomic_fetch_add(&peer->fails, 1);

    } else if (overload) {
        (void) ngx_atomic_fetch_add(&peer->overloads, 1);
    }

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, log, 0,
                   "gpu adaptive finish: failed:%ui status:%ui rt:%uL "
                   "overload:%ui", failed, status, rt, overload);

    ngx_shmtx_lock(&gucf->shpool->mutex);

    if (failed || overload) {
        ngx_http_gpu_upstream_backoff(gucf, peer, now);

    } else if (status >= NGX_HTTP_OK && status < NGX_HTTP_SPECIAL_RESPONSE) {
        ngx_http_gpu_upstream_ewma(&peer->rt, &peer->measured,
                                   NGX_HTTP_GPU_MEASURED_RT,
                                   (ngx_uint_t) rt);
        peer->sample_time = now;
    }

    ngx_shmtx_unlock(&gucf->shpool->mutex);
}


/* under the mutex */

static void
ngx_http_gpu_upstream_backoff(ngx_http_gpu_upstream_srv_conf_t *gucf,
    ngx_http_gpu_upstream_peer_t *peer, ngx_msec_t now)
{
    ngx_uint_t  w;

    peer->backoff = peer->backoff * gucf->backoff / NGX_HTTP_GPU_UPSTREAM_ONE;

    if (peer->backoff < NGX_HTTP_GPU_BACKOFF_MIN) {
        peer->backoff = NGX_HTTP_GPU_BACKOFF_MIN;
    }

    peer->backoff_time = now;

    /* at once, not at the next computation */

    w = peer->weight * gucf->backoff / NGX_HTTP_GPU_UPSTREAM_ONE;

    peer->weight = w ? w : 1;
}


static void
ngx_http_gpu_upstream_ewma(ngx_uint_t *v, ngx_uint_t *measured,
    ngx_uint_t flag, ngx_uint_t sample)
{
    if (!(*measured & flag)) {
        *v = sample;
        *measured |= flag;
        return;
    }

    /* alpha 1/4 */

    if (sample >= *v) {
        *v += (sample - *v) / 4;

    } else {
        *v -= (*v - sample) / 4;
    }
}


/* one worker per interval: the effective weights */

void
ngx_http_gpu_upstream_update(ngx_http_gpu_upstream_srv_conf_t *gucf)
{
    ngx_msec_t                      now, last;
    ngx_http_upstream_rr_peers_t   *peers;
    ngx_http_gpu_upstream_shctx_t  *sh;

    sh = gucf->sh;

    if (sh == NULL) {
        return;
    }

    now = ngx_current_msec;
    last = sh->updated;

    if ((ngx_msec_int_t) (now - last)
        < (ngx_msec_int_t) (gucf->interval - gucf->interval / 4))
    {
        return;
    }

    if (!ngx_atomic_cmp_set(&sh->updated, last, now)) {
        return;
    }

    peers = gucf->upstream->peer.data;

    ngx_http_upstream_rr_peers_rlock(peers);
    ngx_shmtx_lock(&gucf->shpool->mutex);

    ngx_http_gpu_upstream_tier(gucf, peers, 0, now);

    if (peers->next) {
        ngx_http_gpu_upstream_tier(gucf, peers->next, peers->number, now);
    }

    sh->updates++;

    ngx_shmtx_unlock(&gucf->shpool->mutex);
    ngx_http_upstream_rr_peers_unlock(peers);
}


static void
ngx_http_gpu_upstream_tier(ngx_http_gpu_upstream_srv_conf_t *gucf,
    ngx_http_upstream_rr_peers_t *peers, ngx_uint_t base, ngx_msec_t now)
{
    double                          best[NGX_HTTP_GPU_SOURCES],
                                    noise[NGX_HTTP_GPU_SOURCES],
                                    lr, conf, ratio, factor, w, floor;
    ngx_uint_t                      i, s, k, node, node_tpot, *v;
    ngx_msec_t                      stale;
    ngx_http_upstream_rr_peer_t    *peer;
    ngx_http_gpu_upstream_peer_t   *st;
    ngx_http_gpu_upstream_shctx_t  *sh;

    sh = gucf->sh;
    stale = gucf->stale;

    if (base + peers->number > sh->number) {
        return;
    }

    /*
     * the node's own latency: its time per output token where it has one;
     * without it the balancer's measurements
     */

    node_tpot = 0;
    node = 0;

    for (i = 0; i < peers->number; i++) {
        if (sh->peer[base + i].load.fields & NGX_HTTP_GPU_LOAD_TPOT) {
            node_tpot = 1;
        }

        if (sh->peer[base + i].load.fields
            & (NGX_HTTP_GPU_LOAD_TPOT|NGX_HTTP_GPU_LOAD_LATENCY))
        {
            node = 1;
        }
    }

    for (s = 0; s < NGX_HTTP_GPU_SOURCES; s++) {
        best[s] = 0;
        noise[s] = NGX_HTTP_GPU_NOISE;
    }

    if (node_tpot) {
        noise[0] = NGX_HTTP_GPU_NOISE_TPOT;
    }

    for (peer = peers->peer, i = 0; peer; peer = peer->next, i++) {
        st = &sh->peer[base + i];

        /* probed back in: the backoff doubles every interval */

        if (st->backoff < NGX_HTTP_GPU_UPSTREAM_ONE
            && (ngx_msec_int_t) (now - st->backoff_time)
               >= (ngx_msec_int_t) gucf->interval)
        {
            st->backoff = ngx_min(st->backoff * 2,
                                  NGX_HTTP_GPU_UPSTREAM_ONE);
            st->backoff_time = now;
        }

        /*
         * no answer for a while: the figures count less every interval;
         * the times are signed differences, as another worker's cached
         * clock may be a few milliseconds ahead of this one's
         */

        if (st->samples
            && (ngx_msec_int_t) (now - st->sample_time)
               > (ngx_msec_int_t) stale)
        {
            st->samples = ngx_min(st->samples, NGX_HTTP_GPU_CONFIDENT) - 1;
        }

        if (peer->down || st->samples == 0) {
            continue;
        }

        /* the best value of every signal */

        for (s = node ? 0 : 1; s < (node ? 1 : NGX_HTTP_GPU_SOURCES); s++) {
            v = ngx_http_gpu_upstream_signal(st, s, node_tpot);

            if (v && *v && (best[s] == 0 || *v < best[s])) {
                best[s] = *v;
            }
        }
    }

    for (peer = peers->peer, i = 0; peer; peer = peer->next, i++) {
        st = &sh->peer[base + i];

        /* a peer earns its distance from the average with its answers */

        conf = (double) ngx_min(st->samples, NGX_HTTP_GPU_CONFIDENT)
               / NGX_HTTP_GPU_CONFIDENT;

        lr = 0;
        k = 0;

        for (s = node ? 0 : 1; s < (node ? 1 : NGX_HTTP_GPU_SOURCES); s++) {
            v = ngx_http_gpu_upstream_signal(st, s, node_tpot);

            if (v && *v && best[s] > 0) {
                lr += log((*v + noise[s]) / (best[s] + noise[s]));
                k++;
            }
        }

        /* within 10% of the best is as good as the best */

        ratio = k ? exp(conf * lr / k) / NGX_HTTP_GPU_TOLERANCE : 1.0;

        if (ratio < 1.0) {
            ratio = 1.0;
        }

        factor = pow(ratio, -(double) gucf->latency_weight
                            / NGX_HTTP_GPU_UPSTREAM_ONE);

        factor /= 1.0
                  + conf * ((double) gucf->queue_weight * st->queue
                            + (double) gucf->kv_weight * st->kv)
                    / NGX_HTTP_GPU_UPSTREAM_ONE / NGX_HTTP_GPU_UPSTREAM_ONE;

        w = (double) peer->weight * factor * st->backoff;
        floor = (double) peer->weight * NGX_HTTP_GPU_UPSTREAM_ONE / 100;

        if (w < floor) {
            w = floor;
        }

        if (w < 1) {
            w = 1;
        }

        st->ratio = (ngx_uint_t) (ratio * NGX_HTTP_GPU_UPSTREAM_ONE);
        st->factor = (ngx_uint_t) (factor * NGX_HTTP_GPU_UPSTREAM_ONE);
        st->weight = (ngx_atomic_uint_t) w;
    }
}


/* a peer's latency signal, NULL where it has none */

static ngx_uint_t *
ngx_http_gpu_upstream_signal(ngx_http_gpu_upstream_peer_t *peer,
    ngx_uint_t source, ngx_uint_t node_tpot)
{
    switch (source) {

    case 0:
        if (node_tpot) {
            return (peer->load.fields & NGX_HTTP_GPU_LOAD_TPOT)
                   ? &peer->load.tpot : NULL;
        }

        return (peer->load.fields & NGX_HTTP_GPU_LOAD_LATENCY)
               ? &peer->load.latency : NULL;

    case 1:
        return (peer->measured & NGX_HTTP_GPU_MEASURED_TTFB)
               ? &peer->ttfb : NULL;

    default: /* 2 */
        return (peer->measured & NGX_HTTP_GPU_MEASURED_RT)
               ? &peer->rt : NULL;
    }
}
