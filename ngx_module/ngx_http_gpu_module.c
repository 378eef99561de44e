
/*
 * Copyright (C) ngx-gpu authors
 */


/*
 * ngx_http_gpu_module serves an LLM through the OpenAI completions API.
 * Requests are handed to a separate backend process (gpu_backend) over a
 * shared-memory channel, see gpu_backend/channel.h; the module never
 * blocks on the backend.
 *
 *
 * Syntax:  gpu_pass unix:/path/to/backend.sock;
 * Default: -
 * Context: location
 *
 *     The location serves the OpenAI API from the backend listening on
 *     that Unix socket.  Requests are routed by the end of the URI:
 *     ".../v1/completions" and ".../v1/chat/completions" (POST), and
 *     ".../v1/models" (GET, HEAD); other
 *     URIs get a 404 JSON error, a wrong method a 405 JSON error with an
 *     Allow header.  Every worker process keeps one connection to every
 *     backend and reconnects every 100-200 ms while it is down.
 *
 * Syntax:  gpu_metrics;
 * Default: -
 * Context: location
 *
 *     Prometheus text exposition of the module's counters (all workers)
 *     and of every backend's statistics (GET, HEAD).
 *
 * Syntax:  gpu_health;
 * Default: -
 * Context: location
 *
 *     GET, HEAD: 200 {"status":"ok","backend":"connected","model":...,
 *     "engine":...} if every backend is connected and ready, else 503
 *     {"status":"unavailable","backend":"unavailable"} with Retry-After.
 *
 * Syntax:  gpu_max_body_size size;
 * Default: gpu_max_body_size 1m;
 * Context: http, server, location
 *
 *     Larger request bodies get a 413 JSON error.  Content-Length is
 *     checked before the body is read, chunked bodies once they are read.
 *     nginx's own client_max_body_size is checked first; its 413, like
 *     nginx's other error answers in a gpu location, is sent as the same
 *     JSON error (ngx_http_gpu_error_header_filter()).
 *
 * Syntax:  gpu_max_tokens_default number;
 * Default: gpu_max_tokens_default 16;
 * Context: http, server, location
 *
 *     max_tokens of requests that leave it out (or set it to null); it is
 *     capped at the backend's max_new_tokens.
 *
 * Syntax:  gpu_retry_after time;
 * Default: gpu_retry_after 1s;
 * Context: http, server, location
 *
 *     The Retry-After header sent with 503 and 429 answers, in seconds.
 *
 * Syntax:  gpu_model_name name;
 * Default: -
 * Context: http, server, location
 *
 *     The model name served to clients; by default the name the backend
 *     reports in its region header.
 */


#include "ngx_http_gpu_channel.h"


static ngx_int_t ngx_http_gpu_pass_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_gpu_completions(ngx_http_request_t *r,
    ngx_http_gpu_loc_conf_t *glcf);
static void ngx_http_gpu_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_gpu_start(ngx_http_request_t *r,
    ngx_http_gpu_ctx_t *ctx);
static ngx_int_t ngx_http_gpu_models(ngx_http_request_t *r,
    ngx_http_gpu_loc_conf_t *glcf);
static ngx_int_t ngx_http_gpu_metrics_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_gpu_health_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_gpu_not_found(ngx_http_request_t *r);
static ngx_int_t ngx_http_gpu_not_allowed(ngx_http_request_t *r,
    char *allow);
static ngx_int_t ngx_http_gpu_too_large(ngx_http_request_t *r,
    ngx_http_gpu_loc_conf_t *glcf, ngx_uint_t discard);
static ngx_int_t ngx_http_gpu_unavailable(ngx_http_request_t *r);
static ngx_int_t ngx_http_gpu_internal_error(ngx_http_request_t *r);
static ngx_uint_t ngx_http_gpu_uri_is(ngx_http_request_t *r, ngx_str_t *end);

static ngx_int_t ngx_http_gpu_init(ngx_conf_t *cf);
static void *ngx_http_gpu_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_gpu_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_gpu_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_gpu_pass(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_gpu_metrics(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_gpu_health(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_gpu_set_handler(ngx_conf_t *cf,
    ngx_http_gpu_loc_conf_t *glcf, ngx_uint_t type,
    ngx_http_handler_pt handler);
static ngx_int_t ngx_http_gpu_init_process(ngx_cycle_t *cycle);
static void ngx_http_gpu_exit_process(ngx_cycle_t *cycle);


static ngx_conf_num_bounds_t  ngx_http_gpu_max_tokens_bounds = {
    ngx_conf_check_num_bounds, 1, 1048576
};


static ngx_command_t  ngx_http_gpu_commands[] = {

    { ngx_string("gpu_pass"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_gpu_pass,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("gpu_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_gpu_metrics,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("gpu_health"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_gpu_health,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("gpu_max_body_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_gpu_loc_conf_t, max_body_size),
      NULL },

    { ngx_string("gpu_max_tokens_default"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_gpu_loc_conf_t, max_tokens_default),
      &ngx_http_gpu_max_tokens_bounds },

    { ngx_string("gpu_retry_after"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_gpu_loc_conf_t, retry_after),
      NULL },

    { ngx_string("gpu_model_name"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_gpu_loc_conf_t, model_name),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_gpu_module_ctx = {
    ngx_http_gpu_add_variables,            /* preconfiguration */
    ngx_http_gpu_init,                     /* postconfiguration */

    ngx_http_gpu_create_main_conf,         /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_gpu_create_loc_conf,          /* create location configuration */
    ngx_http_gpu_merge_loc_conf            /* merge location configuration */
};


ngx_module_t  ngx_http_gpu_module = {
    NGX_MODULE_V1,
    &ngx_http_gpu_module_ctx,              /* module context */
    ngx_http_gpu_commands,                 /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_gpu_init_process,             /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_gpu_exit_process,             /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_str_t  ngx_http_gpu_completions_uri = ngx_string("/v1/completions");
static ngx_str_t  ngx_http_gpu_chat_uri = ngx_string("/v1/chat/completions");
static ngx_str_t  ngx_http_gpu_models_uri = ngx_string("/v1/models");


static ngx_int_t
ngx_http_gpu_pass_handler(ngx_http_request_t *r)
{
    ngx_http_gpu_loc_conf_t  *glcf;

    glcf = ngx_http_get_module_loc_conf(r, ngx_http_gpu_module);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "gpu pass handler: \"%V\" \"%V\"", &r->method_name,
                   &r->uri);

    if (ngx_http_gpu_uri_is(r, &ngx_http_gpu_completions_uri)
        || ngx_http_gpu_uri_is(r, &ngx_http_gpu_chat_uri))
    {
        if (r->method != NGX_HTTP_POST) {
            return ngx_http_gpu_not_allowed(r, "POST");
        }

        return ngx_http_gpu_completions(r, glcf);
    }

    if (ngx_http_gpu_uri_is(r, &ngx_http_gpu_models_uri)) {

        if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
            return ngx_http_gpu_not_allowed(r, "GET, HEAD");
        }

        return ngx_http_gpu_models(r, glcf);
    }

    return ngx_http_gpu_not_found(r);
}


static ngx_uint_t
ngx_http_gpu_uri_is(ngx_http_request_t *r, ngx_str_t *end)
{
    return r->uri.len >= end->len
           && ngx_strncmp(r->uri.data + r->uri.len - end->len, end->data,
                          end->len)
              == 0;
}


static ngx_int_t
ngx_http_gpu_completions(ngx_http_request_t *r,
    ngx_http_gpu_loc_conf_t *glcf)
{
    ngx_int_t            rc;
    ngx_http_gpu_ctx_t  *ctx;

    if (r->headers_in.content_length_n > (off_t) glcf->max_body_size) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "gpu: client intended to send too large body: "
                      "%O bytes", r->headers_in.content_length_n);

        return ngx_http_gpu_too_large(r, glcf, 1);
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_gpu_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->request = r;
    ctx->backend = glcf->backend;
    ctx->params.endpoint = ngx_http_gpu_uri_is(r, &ngx_http_gpu_chat_uri)
                           ? NGX_HTTP_GPU_CHAT : NGX_HTTP_GPU_COMPLETIONS;
    ctx->start_usec = ngx_http_gpu_load_usec();
    ngx_queue_init(&ctx->queue);

    ngx_http_set_ctx(r, ctx, ngx_http_gpu_module);

    rc = ngx_http_read_client_request_body(r, ngx_http_gpu_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_gpu_body_handler(ngx_http_request_t *r)
{
    ngx_int_t            rc;
    ngx_http_gpu_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gpu_module);

    rc = ngx_http_gpu_start(r, ctx);

    if (ctx->submitted) {
        /* in flight: the channel answers the request */
        return;
    }

    ngx_http_finalize_request(r, rc);
}


static ngx_int_t
ngx_http_gpu_start(ngx_http_request_t *r, ngx_http_gpu_ctx_t *ctx)
{
    off_t                     size;
    ngx_int_t                 rc;
    ngx_str_t                 name, msg, *model;
    ngx_chain_t              *cl;
    ngx_pool_cleanup_t       *cln;
    gpu_channel_header_t     *h;
    ngx_http_gpu_error_t      err;
    ngx_http_gpu_loc_conf_t  *glcf;

    glcf = ngx_http_get_module_loc_conf(r, ngx_http_gpu_module);

    if (r->request_body == NULL) {
        return ngx_http_gpu_internal_error(r);
    }

    size = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        size += ngx_buf_size(cl->buf);
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "gpu request body: %O bytes", size);

    if (size > (off_t) glcf->max_body_size) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "gpu: client sent too large body: %O bytes", size);

        return ngx_http_gpu_too_large(r, glcf, 0);
    }

    rc = ngx_http_gpu_parse_request(r, ctx->params.endpoint, &ctx->params,
                                    &err);

    if (rc == NGX_ERROR) {
        return ngx_http_gpu_internal_error(r);
    }

    if (rc == NGX_DECLINED) {
        return ngx_http_gpu_send_error(r, &err);
    }

    if (ngx_http_gpu_check_request(r, &ctx->params, &err) != NGX_OK) {
        return ngx_http_gpu_send_error(r, &err);
    }

    /* with gpu_model_name the model can be checked without the backend */

    model = ngx_http_gpu_served_model(glcf, ctx->backend, &name);

    if (model
        && ngx_http_gpu_check_model(r, &ctx->params, model, &err) != NGX_OK)
    {
        return ngx_http_gpu_send_error(r, &err);
    }

    h = ngx_http_gpu_channel_ready(ctx->backend);

    if (h == NULL) {
        return ngx_http_gpu_unavailable(r);
    }

    if (model == NULL) {
        model = ngx_http_gpu_served_model(glcf, ctx->backend, &name);

        if (model == NULL
            || ngx_http_gpu_check_model(r, &ctx->params, model, &err)
               != NGX_OK)
        {
            return model ? ngx_http_gpu_send_error(r, &err)
                         : ngx_http_gpu_unavailable(r);
        }
    }

    if (ctx->params.max_tokens == NGX_CONF_UNSET) {
        ctx->params.max_tokens = ngx_min(glcf->max_tokens_default,
                                         (ngx_int_t) h->max_new_tokens);
    }

    if (ngx_http_gpu_check_limits(r, &ctx->params, h, &err) != NGX_OK) {
        return ngx_http_gpu_send_error(r, &err);
    }

    ctx->model = *model;

    if (ngx_http_gpu_init_ctx(r, ctx) != NGX_OK) {
        return ngx_http_gpu_internal_error(r);
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return ngx_http_gpu_internal_error(r);
    }

    cln->handler = ngx_http_gpu_channel_cleanup;
    cln->data = ctx;

    rc = ngx_http_gpu_channel_submit(r, ctx, h);

    if (rc == NGX_BUSY) {
        ngx_str_set(&msg, "too many requests in the queue");
        ngx_http_gpu_set_error(&err, NGX_HTTP_TOO_MANY_REQUESTS,
                               "server_error", NULL, "queue_full", &msg);
        return ngx_http_gpu_send_error(r, &err);
    }

    if (rc != NGX_OK) {
        return ngx_http_gpu_internal_error(r);
    }

    r->read_event_handler = ngx_http_gpu_check_broken_connection;
    r->write_event_handler = ngx_http_gpu_write_handler;

    /*
     * a client that hung up right after its request: the end of the
     * connection came with the body, and an edge-triggered event will not
     * report it again, so look now (else the whole answer is generated)
     */
    if (r->connection->read->ready) {
        ngx_post_event(r->connection->read, &ngx_posted_events);
    }

    return NGX_DONE;
}


static ngx_int_t
ngx_http_gpu_models(ngx_http_request_t *r, ngx_http_gpu_loc_conf_t *glcf)
{
    u_char                *p;
    ngx_int_t              rc;
    ngx_str_t              json, name, *model;
    gpu_channel_header_t  *h;

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    h = ngx_http_gpu_channel_ready(glcf->backend);

    model = ngx_http_gpu_served_model(glcf, glcf->backend, &name);

    if (h == NULL || model == NULL) {
        return ngx_http_gpu_unavailable(r);
    }

    json.len = sizeof("{\"object\":\"list\",\"data\":[{\"id\":\"\","
                      "\"object\":\"model\",\"created\":,"
                      "\"owned_by\":\"ngx-gpu\"}]}\n") - 1
               + ngx_http_gpu_escape_json_len(model->data, model->len)
               + NGX_INT64_LEN;

    json.data = ngx_pnalloc(r->pool, json.len);
    if (json.data == NULL) {
        return ngx_http_gpu_internal_error(r);
    }

    p = ngx_cpymem(json.data, "{\"object\":\"list\",\"data\":[{\"id\":\"",
                   sizeof("{\"object\":\"list\",\"data\":[{\"id\":\"") - 1);
    p = ngx_http_gpu_escape_json(p, model->data, model->len);
    p = ngx_sprintf(p, "\",\"object\":\"model\",\"created\":%uL,"
                    "\"owned_by\":\"ngx-gpu\"}]}\n",
                    (uint64_t) (h->start_ns / 1000000000));

    json.len = p - json.data;

    return ngx_http_gpu_send_json(r, NGX_HTTP_OK, &json);
}


static ngx_int_t
ngx_http_gpu_metrics_handler(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_gpu_not_allowed(r, "GET, HEAD");
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_gpu_metrics_send(r);
}


static ngx_int_t
ngx_http_gpu_health_handler(ngx_http_request_t *r)
{
    u_char                     *p;
    ngx_int_t                   rc;
    ngx_str_t                   json, name, engine, *model;
    ngx_uint_t                  i;
    gpu_channel_header_t       *h, *first;
    ngx_http_gpu_backend_t    **backends;
    ngx_http_gpu_loc_conf_t    *glcf;
    ngx_http_gpu_main_conf_t   *gmcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_gpu_not_allowed(r, "GET, HEAD");
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    glcf = ngx_http_get_module_loc_conf(r, ngx_http_gpu_module);
    gmcf = ngx_http_get_module_main_conf(r, ngx_http_gpu_module);

    backends = gmcf->backends.elts;
    first = NULL;

    for (i = 0; i < gmcf->backends.nelts; i++) {
        h = ngx_http_gpu_channel_ready(backends[i]);

        if (h == NULL) {
            first = NULL;
            break;
        }

        if (first == NULL) {
            first = h;
        }
    }

    if (first == NULL) {
        ngx_str_set(&json, "{\"status\":\"unavailable\","
                           "\"backend\":\"unavailable\"}\n");

        return ngx_http_gpu_send_json(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                      &json);
    }

    model = ngx_http_gpu_served_model(glcf, backends[0], &name);

    if (model == NULL) {
        ngx_str_null(&name);
        model = &name;
    }

    engine.data = (u_char *) first->engine_name;
    engine.len = ngx_strnlen(engine.data, GPU_ENGINE_NAME_LEN);

    json.len = sizeof("{\"status\":\"ok\",\"backend\":\"connected\","
                      "\"model\":\"\",\"engine\":\"\"}\n") - 1
               + ngx_http_gpu_escape_json_len(model->data, model->len)
               + ngx_http_gpu_escape_json_len(engine.data, engine.len);

    json.data = ngx_pnalloc(r->pool, json.len);
    if (json.data == NULL) {
        return ngx_http_gpu_internal_error(r);
    }

    p = ngx_cpymem(json.data, "{\"status\":\"ok\",\"backend\":\"connected\","
                              "\"model\":\"",
                   sizeof("{\"status\":\"ok\",\"backend\":\"connected\","
                          "\"model\":\"") - 1);
    p = ngx_http_gpu_escape_json(p, model->data, model->len);
    p = ngx_cpymem(p, "\",\"engine\":\"", sizeof("\",\"engine\":\"") - 1);
    p = ngx_http_gpu_escape_json(p, engine.data, engine.len);
    p = ngx_cpymem(p, "\"}\n", sizeof("\"}\n") - 1);

    json.len = p - json.data;

    return ngx_http_gpu_send_json(r, NGX_HTTP_OK, &json);
}


static ngx_int_t
ngx_http_gpu_not_found(ngx_http_request_t *r)
{
    ngx_int_t             rc;
    ngx_str_t             msg;
    ngx_http_gpu_error_t  err;

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    msg.len = sizeof("Invalid URL ( )") - 1 + r->method_name.len
              + r->uri.len;
    msg.data = ngx_pnalloc(r->pool, msg.len);
    if (msg.data == NULL) {
        return ngx_http_gpu_internal_error(r);
    }

    ngx_sprintf(msg.data, "Invalid URL (%V %V)", &r->method_name, &r->uri);

    ngx_http_gpu_set_error(&err, NGX_HTTP_NOT_FOUND, "invalid_request_error",
                           NULL, "unknown_url", &msg);

    return ngx_http_gpu_send_error(r, &err);
}


static ngx_int_t
ngx_http_gpu_not_allowed(ngx_http_request_t *r, char *allow)
{
    ngx_int_t             rc;
    ngx_str_t             msg;
    ngx_http_gpu_error_t  err;

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    msg.len = sizeof("Method not allowed ( )") - 1 + r->method_name.len
              + r->uri.len;
    msg.data = ngx_pnalloc(r->pool, msg.len);
    if (msg.data == NULL) {
        return ngx_http_gpu_internal_error(r);
    }

    ngx_sprintf(msg.data, "Method not allowed (%V %V)", &r->method_name,
                &r->uri);

    ngx_http_gpu_set_error(&err, NGX_HTTP_NOT_ALLOWED,
                           "invalid_request_error", NULL,
                           "method_not_allowed", &msg);

    err.allow.data = (u_char *) allow;
    err.allow.len = ngx_strlen(allow);

    return ngx_http_gpu_send_error(r, &err);
}


static ngx_int_t
ngx_http_gpu_too_large(ngx_http_request_t *r, ngx_http_gpu_loc_conf_t *glcf,
    ngx_uint_t discard)
{
    ngx_str_t             msg;
    ngx_http_gpu_error_t  err;

    if (discard) {
        /* as nginx does for client_max_body_size: no 100-continue */
        r->expect_tested = 1;
        (void) ngx_http_discard_request_body(r);
        r->keepalive = 0;
    }

    msg.len = sizeof("Request body too large: the limit is  bytes") - 1
              + NGX_SIZE_T_LEN;
    msg.data = ngx_pnalloc(r->pool, msg.len);
    if (msg.data == NULL) {
        return ngx_http_gpu_internal_error(r);
    }

    msg.len = ngx_sprintf(msg.data, "Request body too large: the limit is "
                          "%uz bytes", glcf->max_body_size)
              - msg.data;

    ngx_http_gpu_set_error(&err, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                           "invalid_request_error", NULL,
                           "request_too_large", &msg);

    return ngx_http_gpu_send_error(r, &err);
}


static ngx_int_t
ngx_http_gpu_unavailable(ngx_http_request_t *r)
{
    ngx_str_t             msg;
    ngx_http_gpu_error_t  err;

    ngx_str_set(&msg, "The model backend is not available, "
                      "retry the request later");

    ngx_http_gpu_set_error(&err, NGX_HTTP_SERVICE_UNAVAILABLE,
                           "server_error", NULL, "backend_unavailable",
                           &msg);

    return ngx_http_gpu_send_error(r, &err);
}


static ngx_int_t
ngx_http_gpu_internal_error(ngx_http_request_t *r)
{
    ngx_str_t             msg;
    ngx_http_gpu_error_t  err;

    ngx_str_set(&msg, "Internal server error");

    ngx_http_gpu_set_error(&err, NGX_HTTP_INTERNAL_SERVER_ERROR,
                           "server_error", NULL, "internal_error", &msg);

    return ngx_http_gpu_send_error(r, &err);
}


static ngx_int_t
ngx_http_gpu_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_gpu_main_conf_t   *gmcf;
    ngx_http_core_main_conf_t  *cmcf;

    gmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_gpu_module);

    if (!gmcf->enabled) {
        return NGX_OK;
    }

    if (ngx_http_gpu_metrics_add_zone(cf, gmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_gpu_load_init(cf, gmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_gpu_error_filter_init(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_gpu_metrics_log_handler;

    return NGX_OK;
}


static void *
ngx_http_gpu_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_gpu_main_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_gpu_main_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->shm_zone = NULL;
     *     conf->enabled = 0;
     */

    if (ngx_array_init(&conf->backends, cf->pool, 2,
                       sizeof(ngx_http_gpu_backend_t *))
        != NGX_OK)
    {
        return NULL;
    }

    return conf;
}


static void *
ngx_http_gpu_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_gpu_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_gpu_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->type = 0;
     *     conf->backend = NULL;
     *     conf->model_name = { 0, NULL };
     */

    conf->max_body_size = NGX_CONF_UNSET_SIZE;
    conf->max_tokens_default = NGX_CONF_UNSET;
    conf->retry_after = NGX_CONF_UNSET;

    return conf;
}


static char *
ngx_http_gpu_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_gpu_loc_conf_t *prev = parent;
    ngx_http_gpu_loc_conf_t *conf = child;

    ngx_conf_merge_size_value(conf->max_body_size, prev->max_body_size,
                              1024 * 1024);
    ngx_conf_merge_value(conf->max_tokens_default, prev->max_tokens_default,
                         16);
    ngx_conf_merge_sec_value(conf->retry_after, prev->retry_after, 1);
    ngx_conf_merge_str_value(conf->model_name, prev->model_name, "");

    return NGX_CONF_OK;
}


static char *
ngx_http_gpu_pass(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_gpu_loc_conf_t *glcf = conf;

    ngx_str_t                  *value;
    ngx_url_t                   u;
    ngx_uint_t                  i;
    ngx_http_gpu_backend_t     *b, **bp;
    ngx_http_gpu_main_conf_t   *gmcf;

    if (glcf->type) {
        return "is duplicate";
    }

    value = cf->args->elts;

    /* the region's memfd travels with SCM_RIGHTS: unix sockets only */

    if (ngx_strncasecmp(value[1].data, (u_char *) "unix:", 5) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"gpu_pass\" needs a unix domain socket "
                           "(\"unix:/path\"), not \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = value[1];
    u.no_resolve = 1;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        if (u.err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s in \"%V\" of the \"gpu_pass\" directive",
                               u.err, &u.url);
        }

        return NGX_CONF_ERROR;
    }

    if (u.family != AF_UNIX || u.naddrs != 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"gpu_pass\" needs a unix domain socket "
                           "(\"unix:/path\"), not \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    gmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_gpu_module);

    bp = gmcf->backends.elts;

    for (i = 0; i < gmcf->backends.nelts; i++) {
        if (bp[i]->name.len == value[1].len
            && ngx_strncmp(bp[i]->name.data, value[1].data, value[1].len)
               == 0)
        {
            glcf->backend = bp[i];
            goto found;
        }
    }

    b = ngx_pcalloc(cf->pool, sizeof(ngx_http_gpu_backend_t));
    if (b == NULL) {
        return NGX_CONF_ERROR;
    }

    b->name = value[1];
    b->addr = u.addrs[0];
    b->memfd = NGX_INVALID_FILE;

    bp = ngx_array_push(&gmcf->backends);
    if (bp == NULL) {
        return NGX_CONF_ERROR;
    }

    *bp = b;
    glcf->backend = b;

found:

    return ngx_http_gpu_set_handler(cf, glcf, NGX_HTTP_GPU_PASS,
                                    ngx_http_gpu_pass_handler);
}


static char *
ngx_http_gpu_metrics(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_gpu_loc_conf_t *glcf = conf;

    if (glcf->type) {
        return "is duplicate";
    }

    return ngx_http_gpu_set_handler(cf, glcf, NGX_HTTP_GPU_METRICS,
                                    ngx_http_gpu_metrics_handler);
}


static char *
ngx_http_gpu_health(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_gpu_loc_conf_t *glcf = conf;

    if (glcf->type) {
        return "is duplicate";
    }

    return ngx_http_gpu_set_handler(cf, glcf, NGX_HTTP_GPU_HEALTH,
                                    ngx_http_gpu_health_handler);
}


static char *
ngx_http_gpu_set_handler(ngx_conf_t *cf, ngx_http_gpu_loc_conf_t *glcf,
    ngx_uint_t type, ngx_http_handler_pt handler)
{
    ngx_http_gpu_main_conf_t  *gmcf;
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = handler;

    glcf->type = type;

    gmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_gpu_module);
    gmcf->enabled = 1;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_gpu_init_process(ngx_cycle_t *cycle)
{
    ngx_http_gpu_main_conf_t  *gmcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    gmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_gpu_module);

    if (gmcf == NULL || gmcf->backends.nelts == 0) {
        return NGX_OK;
    }

    return ngx_http_gpu_channel_init_process(cycle, gmcf);
}


static void
ngx_http_gpu_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_gpu_main_conf_t  *gmcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return;
    }

    gmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_gpu_module);

    if (gmcf == NULL || gmcf->backends.nelts == 0) {
        return;
    }

    ngx_http_gpu_channel_exit_process(gmcf);
}
