
/*
 * Copyright (C) ngx-gpu authors
 */


#ifndef _NGX_HTTP_GPU_UPSTREAM_H_INCLUDED_
#define _NGX_HTTP_GPU_UPSTREAM_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


/* coefficients, factors and effective weights are fixed point: 1000 is 1 */
#define NGX_HTTP_GPU_UPSTREAM_ONE        1000

/* what a load report carried */
#define NGX_HTTP_GPU_LOAD_QUEUE          0x01
#define NGX_HTTP_GPU_LOAD_RUNNING        0x02
#define NGX_HTTP_GPU_LOAD_KV             0x04
#define NGX_HTTP_GPU_LOAD_LATENCY        0x08
#define NGX_HTTP_GPU_LOAD_TPOT           0x10
#define NGX_HTTP_GPU_LOAD_UP             0x20

/* what the balancer measured itself */
#define NGX_HTTP_GPU_MEASURED_RT         0x01
#define NGX_HTTP_GPU_MEASURED_TTFB       0x02
#define NGX_HTTP_GPU_MEASURED_QUEUE      0x04
#define NGX_HTTP_GPU_MEASURED_KV         0x08


/* a node's load report, "X-GPU-Load: queue=3,running=12,kv=0.42,..." */
typedef struct {
    ngx_uint_t                      fields;
    ngx_uint_t                      queue;
    ngx_uint_t                      running;
    ngx_uint_t                      kv;           /* 1/1000 */
    ngx_uint_t                      latency;      /* microseconds */
    ngx_uint_t                      tpot;         /* microseconds */
    ngx_uint_t                      up;
} ngx_http_gpu_upstream_load_t;


/* one peer in the shared zone; primary peers first, then backup ones */
typedef struct {
    uint32_t                        hash;         /* name and tier */

    /* lock-free */
    ngx_atomic_t                    weight;       /* effective, 1/1000 */
    ngx_atomic_t                    inflight;
    ngx_atomic_t                    requests;
    ngx_atomic_t                    fails;
    ngx_atomic_t                    overloads;

    /* under the zone's mutex */
    ngx_http_gpu_upstream_load_t    load;         /* the last report */
    ngx_msec_t                      load_time;
    ngx_uint_t                      reports;
    ngx_uint_t                      queue;        /* EWMA, 1/1000 */
    ngx_uint_t                      kv;           /* EWMA, 1/1000 */

    ngx_uint_t                      measured;
    ngx_uint_t                      rt;           /* EWMA, microseconds */
    ngx_uint_t                      ttfb;         /* EWMA, microseconds */

    ngx_msec_t                      sample_time;  /* last report or sample */
    ngx_uint_t                      samples;      /* answers, up to 4 */

    ngx_uint_t                      backoff;      /* 1/1000, 1000: none */
    ngx_msec_t                      backoff_time;

    ngx_uint_t                      factor;       /* load factor, 1/1000 */
    ngx_uint_t                      ratio;        /* latency ratio, 1/1000 */
} ngx_http_gpu_upstream_peer_t;


typedef struct ngx_http_gpu_upstream_shctx_s  ngx_http_gpu_upstream_shctx_t;

struct ngx_http_gpu_upstream_shctx_s {
    ngx_atomic_t                    updated;      /* last recompute */
    ngx_atomic_t                    updates;
    ngx_http_gpu_upstream_shctx_t  *previous;     /* before a reload */
    ngx_uint_t                      number;
    ngx_http_gpu_upstream_peer_t    peer[1];
};


typedef struct {
    ngx_http_upstream_srv_conf_t   *upstream;
    ngx_shm_zone_t                 *shm_zone;
    ngx_http_gpu_upstream_shctx_t  *sh;
    ngx_slab_pool_t                *shpool;

    ngx_str_t                       zone_name;
    size_t                          zone_size;

    ngx_msec_t                      interval;
    ngx_msec_t                      stale;
    ngx_uint_t                      queue_weight;
    ngx_uint_t                      kv_weight;
    ngx_uint_t                      latency_weight;
    ngx_uint_t                      inflight_weight;
    ngx_uint_t                      backoff;
    ngx_uint_t                      overload_kv;
    ngx_uint_t                      overload_queue;

    ngx_event_t                     timer;        /* per worker */

    unsigned                        enabled:1;
} ngx_http_gpu_upstream_srv_conf_t;


/* ngx_http_gpu_upstream_weights.c */
uint64_t ngx_http_gpu_upstream_usec(void);
ngx_int_t ngx_http_gpu_upstream_parse_load(u_char *p, u_char *last,
    ngx_http_gpu_upstream_load_t *load);
ngx_table_elt_t *ngx_http_gpu_upstream_load_header(ngx_list_t *headers);
void ngx_http_gpu_upstream_report(ngx_http_gpu_upstream_srv_conf_t *gucf,
    ngx_http_gpu_upstream_peer_t *peer, ngx_table_elt_t *h,
    uint64_t ttfb, ngx_log_t *log);
void ngx_http_gpu_upstream_finish(ngx_http_gpu_upstream_srv_conf_t *gucf,
    ngx_http_gpu_upstream_peer_t *peer, ngx_uint_t failed,
    ngx_uint_t status, uint64_t rt, ngx_log_t *log);
void ngx_http_gpu_upstream_update(ngx_http_gpu_upstream_srv_conf_t *gucf);

/* ngx_http_gpu_upstream_status.c */
ngx_int_t ngx_http_gpu_upstream_status_handler(ngx_http_request_t *r);


extern ngx_module_t  ngx_http_gpu_upstream_module;


#endif /* _NGX_HTTP_GPU_UPSTREAM_H_INCLUDED_ */
