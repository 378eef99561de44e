
/*
 * Copyright (C) ngx-gpu authors
 */


/*
 * Answers: JSON bodies, error objects, the server-sent events of streamed
 * completions, and the event handlers of a request in flight (client
 * went away, output blocked).  Completions and chat completions differ
 * only in the strings around the text (ngx_http_gpu_shapes[]); a chat
 * stream also starts with a delta that carries the role, and leaves out
 * empty deltas.
 */


#include "ngx_http_gpu_channel.h"


#define NGX_HTTP_GPU_BUF_SIZE  4096


static ngx_int_t ngx_http_gpu_send_completion(ngx_http_request_t *r,
    ngx_http_gpu_ctx_t *ctx, ngx_http_gpu_progress_t *p);
static ngx_int_t ngx_http_gpu_stream_header(ngx_http_request_t *r,
    ngx_http_gpu_ctx_t *ctx);
static ngx_int_t ngx_http_gpu_stream_body(ngx_http_request_t *r,
    ngx_http_gpu_ctx_t *ctx, ngx_http_gpu_progress_t *p);
static ngx_int_t ngx_http_gpu_stream_error(ngx_http_request_t *r,
    ngx_http_gpu_ctx_t *ctx, ngx_http_gpu_error_t *err);
static ngx_buf_t *ngx_http_gpu_get_buf(ngx_http_request_t *r,
    ngx_http_gpu_ctx_t *ctx, size_t size, ngx_chain_t **out);
static ngx_int_t ngx_http_gpu_output(ngx_http_request_t *r,
    ngx_http_gpu_ctx_t *ctx, ngx_chain_t *in);
static ngx_int_t ngx_http_gpu_add_header(ngx_http_request_t *r, char *key,
    ngx_str_t *value);
static size_t ngx_http_gpu_error_len(ngx_http_gpu_error_t *err);
static u_char *ngx_http_gpu_error_json(u_char *p, ngx_http_gpu_error_t *err);
static u_char *ngx_http_gpu_usage_json(u_char *p, ngx_uint_t prompt,
    ngx_uint_t completion);
static void ngx_http_gpu_abort(ngx_http_request_t *r, ngx_int_t rc);
static ngx_int_t ngx_http_gpu_error_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_gpu_error_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static size_t ngx_http_gpu_json_escape(u_char *dst, u_char *src, size_t size);


static uint32_t  ngx_http_gpu_seq;


/*
 * pieces of the answer objects; head is {"id":...,"model":"...", and
 * "choice" + the escaped text + one of the tails completes a choice
 */

typedef struct {
    ngx_str_t                   id_prefix;
    ngx_str_t                   object;
    ngx_str_t                   choice;
    ngx_str_t                   tail;          /* finish null, event end */
    ngx_str_t                   tail_length;
    ngx_str_t                   tail_stop;
    ngx_str_t                   last_length;   /* a last choice, no text */
    ngx_str_t                   last_stop;
    ngx_str_t                   role;          /* a first event, or "" */
    ngx_uint_t                  skip_empty;    /* no events without text */
} ngx_http_gpu_shape_t;


#define NGX_HTTP_GPU_SHAPE_TEXT        0
#define NGX_HTTP_GPU_SHAPE_CHAT        1
#define NGX_HTTP_GPU_SHAPE_CHAT_CHUNK  2

#define ngx_http_gpu_tail_text(finish)                                       \
    "\",\"index\":0,\"logprobs\":null,\"finish_reason\":" finish "}]"
#define ngx_http_gpu_tail_chat(finish)                                       \
    "\"},\"logprobs\":null,\"finish_reason\":" finish "}]"

static ngx_http_gpu_shape_t  ngx_http_gpu_shapes[] = {

    { ngx_string("cmpl-"),
      ngx_string("text_completion"),
      ngx_string("\"choices\":[{\"text\":\""),
      ngx_string(ngx_http_gpu_tail_text("null") "}\n\n"),
      ngx_string(ngx_http_gpu_tail_text("\"length\"")),
      ngx_string(ngx_http_gpu_tail_text("\"stop\"")),
      ngx_string("\"choices\":[{\"text\":\""
                 ngx_http_gpu_tail_text("\"length\"")),
      ngx_string("\"choices\":[{\"text\":\""
                 ngx_http_gpu_tail_text("\"stop\"")),
      ngx_null_string,
      0 },

    { ngx_string("chatcmpl-"),
      ngx_string("chat.completion"),
      ngx_string("\"choices\":[{\"index\":0,\"message\":{\"role\":"
                 "\"assistant\",\"content\":\""),
      ngx_null_string,
      ngx_string(ngx_http_gpu_tail_chat("\"length\"")),
      ngx_string(ngx_http_gpu_tail_chat("\"stop\"")),
      ngx_null_string,
      ngx_null_string,
      ngx_null_string,
      0 },

    { ngx_string("chatcmpl-"),
      ngx_string("chat.completion.chunk"),
      ngx_string("\"choices\":[{\"index\":0,\"delta\":{\"content\":\""),
      ngx_string(ngx_http_gpu_tail_chat("null") "}\n\n"),
      ngx_string(ngx_http_gpu_tail_chat("\"length\"")),
      ngx_string(ngx_http_gpu_tail_chat("\"stop\"")),
      ngx_string("\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,"
                 "\"finish_reason\":\"length\"}]"),
      ngx_string("\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,"
                 "\"finish_reason\":\"stop\"}]"),
      ngx_string("\"choices\":[{\"index\":0,\"delta\":{\"role\":"
                 "\"assistant\",\"content\":\"\"},\"logprobs\":null,"
                 "\"finish_reason\":null}]}\n\n"),
      1 }
};


static ngx_http_gpu_shape_t *ngx_http_gpu_shape(ngx_http_gpu_ctx_t *ctx);
static u_char *ngx_http_gpu_event(u_char *p, ngx_http_gpu_ctx_t *ctx,
    ngx_http_gpu_shape_t *shape, u_char *text, size_t len, ngx_str_t *tail,
    ngx_http_gpu_progress_t *pr, ngx_uint_t from, ngx_uint_t to);
static u_char *ngx_http_gpu_tail(u_char *p, ngx_http_gpu_ctx_t *ctx,
    ngx_str_t *tail, ngx_http_gpu_progress_t *pr, ngx_uint_t from,
    ngx_uint_t to);
static ngx_uint_t ngx_http_gpu_utf8_chars(u_char *p, size_t n);
static ngx_uint_t ngx_http_gpu_lp_ready(ngx_http_gpu_ctx_t *ctx,
    ngx_http_gpu_progress_t *pr, ngx_uint_t to);
static ngx_uint_t ngx_http_gpu_lp_end(ngx_http_gpu_progress_t *pr,
    ngx_uint_t from, ngx_uint_t to);
static size_t ngx_http_gpu_lp_size(ngx_http_gpu_ctx_t *ctx,
    ngx_http_gpu_progress_t *pr, ngx_uint_t from, ngx_uint_t to);
static u_char *ngx_http_gpu_lp_json(u_char *p, ngx_http_gpu_ctx_t *ctx,
    ngx_http_gpu_progress_t *pr, ngx_uint_t from, ngx_uint_t to);
static u_char *ngx_http_gpu_lp_key(u_char *p, ngx_str_t *keys,
    ngx_uint_t *n_keys, gpu_channel_header_t *h, int32_t token, float lp);
static u_char *ngx_http_gpu_lp_token(u_char *p, gpu_channel_header_t *h,
    int32_t token, ngx_uint_t quote);
static u_char *ngx_http_gpu_lp_number(u_char *p, float lp);
static u_char *ngx_http_gpu_lp_entry(u_char *p, gpu_channel_header_t *h,
    int32_t token, float lp);


typedef struct {
    ngx_uint_t                  status;
    char                       *code;
    char                       *message;
} ngx_http_gpu_error_page_t;


#define NGX_HTTP_GPU_ERROR_PAGE_LEN    128

/* nginx's own error answers, as JSON errors */

static ngx_http_gpu_error_page_t  ngx_http_gpu_error_pages[] = {
    { NGX_HTTP_BAD_REQUEST, "bad_request",
      "The HTTP request is malformed" },
    { NGX_HTTP_FORBIDDEN, "forbidden", "Forbidden" },
    { NGX_HTTP_NOT_FOUND, "not_found", "Not found" },
    { NGX_HTTP_REQUEST_TIME_OUT, "request_timeout",
      "The request was not received in time" },
    { NGX_HTTP_LENGTH_REQUIRED, "length_required",
      "The request needs a Content-Length" },
    { NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, "request_too_large", NULL },
    { NGX_HTTP_TOO_MANY_REQUESTS, "too_many_requests",
      "Too many requests" },
    { NGX_HTTP_INTERNAL_SERVER_ERROR, "internal_error",
      "Internal server error" },
    { NGX_HTTP_SERVICE_UNAVAILABLE, "service_unavailable",
      "The service is not available, retry the request later" },
    { 0, "http_error", NULL }
};


static ngx_http_output_header_filter_pt  ngx_http_next_error_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_error_body_filter;


static ngx_str_t  ngx_http_gpu_data = ngx_string("data: ");
static ngx_str_t  ngx_http_gpu_no_choices = ngx_string("\"choices\":[],");
static ngx_str_t  ngx_http_gpu_done = ngx_string("data: [DONE]\n\n");

#define NGX_HTTP_GPU_USAGE_LEN                                                \
    (sizeof("\"usage\":{\"prompt_tokens\":,\"completion_tokens\":,"          \
            "\"total_tokens\":}") - 1 + 3 * NGX_INT_T_LEN)


void
ngx_http_gpu_set_error(ngx_http_gpu_error_t *err, ngx_uint_t status,
    char *type, char *param, char *code, ngx_str_t *message)
{
    err->status = status;

    if (type) {
        err->type.data = (u_char *) type;
        err->type.len = ngx_strlen(type);

    } else {
        ngx_str_set(&err->type, "server_error");
    }

    if (param) {
        err->param.data = (u_char *) param;
        err->param.len = ngx_strlen(param);

    } else {
        ngx_str_null(&err->param);
    }

    if (code) {
        err->code.data = (u_char *) code;
        err->code.len = ngx_strlen(code);

    } else {
        ngx_str_null(&err->code);
    }

    if (message) {
        err->message = *message;

    } else {
        ngx_str_null(&err->message);
    }

    ngx_str_null(&err->allow);
}


/* every error answer goes through here */

ngx_int_t
ngx_http_gpu_send_error(ngx_http_request_t *r, ngx_http_gpu_error_t *err)
{
    u_char     *p;
    ngx_str_t   json;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "gpu error: %ui \"%V\" \"%V\"", err->status, &err->code,
                   &err->message);

    json.len = ngx_http_gpu_error_len(err) + 1;

    json.data = ngx_pnalloc(r->pool, json.len);
    if (json.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_http_gpu_error_json(json.data, err);
    *p++ = LF;

    json.len = p - json.data;

    if (err->allow.len) {
        if (ngx_http_gpu_add_header(r, "Allow", &err->allow) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return ngx_http_gpu_send_json(r, err->status, &json);
}


ngx_int_t
ngx_http_gpu_send_json(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *json)
{
    ngx_int_t                 rc;
    ngx_str_t                 value;
    ngx_buf_t                *b;
    ngx_chain_t               out;
    ngx_http_gpu_loc_conf_t  *glcf;

    r->headers_out.status = status;
    r->headers_out.content_length_n = json->len;

    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    if (status == NGX_HTTP_SERVICE_UNAVAILABLE
        || status == NGX_HTTP_TOO_MANY_REQUESTS)
    {
        glcf = ngx_http_get_module_loc_conf(r, ngx_http_gpu_module);

        value.data = ngx_pnalloc(r->pool, NGX_TIME_T_LEN);
        if (value.data == NULL) {
            return NGX_ERROR;
        }

        value.len = ngx_sprintf(value.data, "%T", glcf->retry_after)
                    - value.data;

        if (ngx_http_gpu_add_header(r, "Retry-After", &value) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = json->data;
    b->last = json->data + json->len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/*
 * nginx's own error answers in a gpu location (a body over
 * client_max_body_size, a malformed chunked body, a body that cannot be
 * buffered) are the HTML pages of ngx_http_special_response_handler(),
 * which marks them with r->err_status: the filters below send the API's
 * JSON error instead, so that clients always get one shape
 */

static ngx_int_t
ngx_http_gpu_error_header_filter(ngx_http_request_t *r)
{
    u_char                     *p;
    ngx_str_t                   msg;
    ngx_http_gpu_ctx_t         *ctx;
    ngx_http_gpu_error_t        err;
    ngx_http_gpu_loc_conf_t    *glcf;
    ngx_http_core_loc_conf_t   *clcf;
    ngx_http_gpu_error_page_t  *page;

    glcf = ngx_http_get_module_loc_conf(r, ngx_http_gpu_module);

    if (glcf->type == 0
        || r != r->main
        || r->err_status < NGX_HTTP_BAD_REQUEST
        || r->headers_out.content_type.len != sizeof("text/html") - 1
        || ngx_strncmp(r->headers_out.content_type.data, "text/html",
                       sizeof("text/html") - 1)
           != 0)
    {
        return ngx_http_next_error_header_filter(r);
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_gpu_module);

    if (ctx == NULL) {
        ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_gpu_ctx_t));
        if (ctx == NULL) {
            return NGX_ERROR;
        }

        ctx->request = r;
        ngx_queue_init(&ctx->queue);

        ngx_http_set_ctx(r, ctx, ngx_http_gpu_module);
    }

    for (page = ngx_http_gpu_error_pages; page->status; page++) {
        if (page->status == r->err_status) {
            break;
        }
    }

    msg.data = ngx_pnalloc(r->pool, NGX_HTTP_GPU_ERROR_PAGE_LEN);
    if (msg.data == NULL) {
        return NGX_ERROR;
    }

    if (r->err_status == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE) {
        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

        p = ngx_sprintf(msg.data, "Request body too large: the limit is "
                        "%O bytes", clcf->client_max_body_size);

    } else if (page->status) {
        p = ngx_sprintf(msg.data, "%s", page->message);

    } else {
        p = ngx_sprintf(msg.data, "The request failed with HTTP status %ui",
                        r->err_status);
    }

    msg.len = p - msg.data;

    ngx_http_gpu_set_error(&err, r->err_status,
                           r->err_status >= NGX_HTTP_INTERNAL_SERVER_ERROR
                           ? "server_error" : "invalid_request_error",
                           NULL, page->code, &msg);

    ctx->error_page.data = ngx_pnalloc(r->pool,
                                       ngx_http_gpu_error_len(&err) + 1);
    if (ctx->error_page.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_http_gpu_error_json(ctx->error_page.data, &err);
    *p++ = LF;

    ctx->error_page.len = p - ctx->error_page.data;

    r->headers_out.content_length_n = ctx->error_page.len;

    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    return ngx_http_next_error_header_filter(r);
}


static ngx_int_t
ngx_http_gpu_error_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_buf_t           *b;
    ngx_chain_t          out;
    ngx_http_gpu_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gpu_module);

    if (in == NULL || ctx == NULL || ctx->error_page.len == 0) {
        return ngx_http_next_error_body_filter(r, in);
    }

    /* the page comes in one chain: the JSON goes instead */

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = ctx->error_page.data;
    b->last = ctx->error_page.data + ctx->error_page.len;
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;

    ctx->error_page.len = 0;

    out.buf = b;
    out.next = NULL;

    return ngx_http_next_error_body_filter(r, &out);
}


ngx_int_t
ngx_http_gpu_error_filter_init(ngx_conf_t *cf)
{
    ngx_http_next_error_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_gpu_error_header_filter;

    ngx_http_next_error_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_gpu_error_body_filter;

    return NGX_OK;
}


ngx_int_t
ngx_http_gpu_init_ctx(ngx_http_request_t *r, ngx_http_gpu_ctx_t *ctx)
{
    u_char                *p;
    ngx_http_gpu_shape_t  *shape;

    if (ngx_http_gpu_seq == 0) {
        ngx_http_gpu_seq = (uint32_t) ngx_random();
    }

    /* unique across workers and restarts: pid, time, counter */

    shape = ngx_http_gpu_shape(ctx);

    ctx->id_len = ngx_sprintf(ctx->id, "%V%08xD%08xD%08xD", &shape->id_prefix,
                              (uint32_t) ngx_pid, (uint32_t) ngx_time(),
                              ngx_http_gpu_seq++)
                  - ctx->id;

    ctx->created = ngx_time();

    ctx->head.len = sizeof("{\"id\":\"\",\"object\":\"\","
                           "\"created\":,\"model\":\"\",") - 1
                    + ctx->id_len + shape->object.len + NGX_TIME_T_LEN
                    + ngx_http_gpu_escape_json_len(ctx->model.data,
                                                   ctx->model.len);

    ctx->head.data = ngx_pnalloc(r->pool, ctx->head.len);
    if (ctx->head.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(ctx->head.data, "{\"id\":\"%*s\",\"object\":\"%V\","
                    "\"created\":%T,\"model\":\"", ctx->id_len, ctx->id,
                    &shape->object, ctx->created);
    p = ngx_http_gpu_escape_json(p, ctx->model.data, ctx->model.len);
    *p++ = '"';
    *p++ = ',';

    ctx->head.len = p - ctx->head.data;

    return NGX_OK;
}


/*
 * called on every scan that found progress; NGX_DECLINED: still running,
 * anything else: the request is over, finalize it with that
 */

ngx_int_t
ngx_http_gpu_process(ngx_http_request_t *r, ngx_http_gpu_ctx_t *ctx,
    ngx_http_gpu_progress_t *p)
{
    ngx_int_t  rc;

    if (!ctx->params.stream) {

        if (!p->done) {
            return NGX_DECLINED;
        }

        if (p->finish == GPU_FINISH_LENGTH || p->finish == GPU_FINISH_STOP) {
            return ngx_http_gpu_send_completion(r, ctx, p);
        }

        return ngx_http_gpu_send_error(r, &p->error);
    }

    if (!ctx->header_sent) {

        if (p->done
            && p->finish != GPU_FINISH_LENGTH
            && p->finish != GPU_FINISH_STOP)
        {
            /* nothing was sent yet: an ordinary error answer */
            return ngx_http_gpu_send_error(r, &p->error);
        }

        if (!p->done && p->n_tokens == 0) {
            return NGX_DECLINED;
        }

        rc = ngx_http_gpu_stream_header(r, ctx);

        if (rc == NGX_ERROR || rc > NGX_OK) {
            return rc;
        }
    }

    return ngx_http_gpu_stream_body(r, ctx, p);
}


ngx_int_t
ngx_http_gpu_backend_gone(ngx_http_request_t *r, ngx_http_gpu_ctx_t *ctx)
{
    ngx_str_t             msg;
    ngx_http_gpu_error_t  err;

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "gpu backend \"%V\" terminated while processing "
                  "the request", &ctx->backend->name);

    ngx_str_set(&msg, "backend terminated");

    ngx_http_gpu_set_error(&err, NGX_HTTP_SERVICE_UNAVAILABLE, "server_error",
                           NULL, "backend_terminated", &msg);

    if (!ctx->header_sent) {
        return ngx_http_gpu_send_error(r, &err);
    }

    return ngx_http_gpu_stream_error(r, ctx, &err);
}


static ngx_int_t
ngx_http_gpu_send_completion(ngx_http_request_t *r, ngx_http_gpu_ctx_t *ctx,
    ngx_http_gpu_progress_t *p)
{
    u_char                *last;
    ngx_str_t              json, *tail;
    ngx_http_gpu_shape_t  *shape;

    shape = ngx_http_gpu_shape(ctx);

    tail = (p->finish == GPU_FINISH_STOP) ? &shape->tail_stop
                                           : &shape->tail_length;

    json.len = ctx->head.len + shape->choice.len
               + ngx_http_gpu_escape_json_len(p->out, p->out_len)
               + tail->len + sizeof(",}\n") - 1 + NGX_HTTP_GPU_USAGE_LEN
               + ngx_http_gpu_lp_size(ctx, p, 0, p->n_tokens);

    json.data = ngx_pnalloc(r->pool, json.len);
    if (json.data == NULL) {
        return NGX_ERROR;
    }

    last = ngx_cpymem(json.data, ctx->head.data, ctx->head.len);
    last = ngx_cpymem(last, shape->choice.data, shape->choice.len);
    last = ngx_http_gpu_escape_json(last, p->out, p->out_len);
    last = ngx_http_gpu_tail(last, ctx, tail, p, 0, p->n_tokens);
    *last++ = ',';
    last = ngx_http_gpu_usage_json(last, p->n_prompt_tokens, p->n_tokens);
    *last++ = '}';
    *last++ = LF;

    json.len = last - json.data;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "gpu completion: prompt:%ui tokens:%ui bytes:%uz",
                   p->n_prompt_tokens, p->n_tokens, p->out_len);

    ctx->n_sent = p->n_tokens;

    return ngx_http_gpu_send_json(r, NGX_HTTP_OK, &json);
}


static ngx_int_t
ngx_http_gpu_stream_header(ngx_http_request_t *r, ngx_http_gpu_ctx_t *ctx)
{
    ngx_str_t                  value;
    ngx_http_core_loc_conf_t  *clcf;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = -1;

    ngx_str_set(&r->headers_out.content_type, "text/event-stream");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    ngx_str_set(&value, "no-cache");

    if (ngx_http_gpu_add_header(r, "Cache-Control", &value) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_str_set(&value, "no");

    if (ngx_http_gpu_add_header(r, "X-Accel-Buffering", &value) != NGX_OK) {
        return NGX_ERROR;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    /* small events must not wait for Nagle */

    if (r->stream == NULL && clcf->tcp_nodelay) {
        if (ngx_tcp_nodelay(r->connection) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    ctx->header_sent = 1;

    return ngx_http_send_header(r);
}


static ngx_int_t
ngx_http_gpu_stream_body(ngx_http_request_t *r, ngx_http_gpu_ctx_t *ctx,
    ngx_http_gpu_progress_t *p)
{
    size_t                 size, limit, prev, end;
    ngx_int_t              rc;
    ngx_str_t             *tail;
    ngx_buf_t             *b;
    ngx_uint_t             i, first, events, lp_to, lp_end;
    ngx_chain_t           *out;
    ngx_http_gpu_shape_t  *shape;

    shape = ngx_http_gpu_shape(ctx);

    if (p->n_tokens < ctx->n_sent) {
        /* a snapshot without tokens: the backend failed */
        p->n_tokens = ctx->n_sent;
    }

    if (!p->done && p->n_tokens == ctx->n_sent) {
        return NGX_DECLINED;
    }

    first = (ctx->n_sent == 0 && p->n_tokens > 0);

    /*
     * tok_end[] offsets only grow, and the last one may still grow while
     * the backend flushes held back bytes: everything is clamped to what
     * was published when the scan started
     */

    if (p->done) {
        limit = p->out_len;

    } else {
        limit = p->tok_end[p->n_tokens - 1];

        if (limit > p->out_cap) {
            limit = p->out_cap;
        }
    }

    if (limit < ctx->out_sent) {
        limit = ctx->out_sent;
    }

    events = p->n_tokens - ctx->n_sent;

    size = events * (ngx_http_gpu_data.len + ctx->head.len
                     + shape->choice.len + shape->tail.len)
           + 6 * (limit - ctx->out_sent)
           + ngx_http_gpu_data.len + ctx->head.len + shape->role.len
           + ngx_http_gpu_lp_size(ctx, p, ctx->lp_sent, p->n_tokens)
           + (events + 3) * ngx_http_gpu_lp_size(ctx, p, 0, 0);

    if (p->done) {
        size += 2 * (ngx_http_gpu_data.len + ctx->head.len
                     + shape->choice.len + shape->tail_length.len
                     + sizeof("}\n\n") - 1)
                + shape->last_length.len
                + ngx_http_gpu_data.len + ctx->head.len
                + ngx_http_gpu_no_choices.len + NGX_HTTP_GPU_USAGE_LEN
                + sizeof("}\n\n") - 1
                + ngx_http_gpu_done.len
                + ngx_http_gpu_data.len + ngx_http_gpu_error_len(&p->error)
                + sizeof("\n\n") - 1;
    }

    b = ngx_http_gpu_get_buf(r, ctx, size, &out);
    if (b == NULL) {
        return NGX_ERROR;
    }

    prev = ctx->out_sent;

    if (shape->role.len && !ctx->role_sent) {
        b->last = ngx_cpymem(b->last, ngx_http_gpu_data.data,
                             ngx_http_gpu_data.len);
        b->last = ngx_cpymem(b->last, ctx->head.data, ctx->head.len);
        b->last = ngx_cpymem(b->last, shape->role.data, shape->role.len);
        ctx->role_sent = 1;
    }

    for (i = ctx->n_sent; i < p->n_tokens; i++) {
        end = p->tok_end[i];

        if (end < prev) {
            end = prev;

        } else if (end > limit) {
            end = limit;
        }

        if (end == prev && shape->skip_empty) {
            /* its logprobs go with the next event */
            continue;
        }

        ctx->chars_sent += ngx_http_gpu_utf8_chars(p->out + prev, end - prev);
        lp_to = ngx_http_gpu_lp_ready(ctx, p, i + 1);

        b->last = ngx_http_gpu_event(b->last, ctx, shape, p->out + prev,
                                     end - prev, &shape->tail, p,
                                     ctx->lp_sent, lp_to);
        ctx->lp_sent = lp_to;
        prev = end;
    }

    ctx->n_sent = p->n_tokens;
    ctx->out_sent = prev;

    if (p->done) {

        if (p->finish == GPU_FINISH_LENGTH || p->finish == GPU_FINISH_STOP) {

            /*
             * the rest of the text, if any, the logprobs not sent yet
             * (but those of tokens a stop string cut away), and the
             * finish reason
             */

            lp_end = ctx->lp_sent;

            if (ctx->params.logprobs >= 0) {
                lp_end = ngx_http_gpu_lp_end(p, ctx->lp_sent, p->n_tokens);
            }

            if (shape->skip_empty
                && (limit > prev || ctx->lp_sent < lp_end))
            {
                /*
                 * chat: the rest in a delta of its own (with the
                 * logprobs of tokens whose text was held back), then
                 * delta {}
                 */
                b->last = ngx_http_gpu_event(b->last, ctx, shape,
                                             p->out + prev, limit - prev,
                                             &shape->tail, p, ctx->lp_sent,
                                             lp_end);
                ctx->lp_sent = lp_end;
                prev = limit;
            }

            if (limit > prev || ctx->lp_sent < lp_end) {
                tail = (p->finish == GPU_FINISH_STOP) ? &shape->tail_stop
                                                       : &shape->tail_length;

                b->last = ngx_http_gpu_event(b->last, ctx, shape,
                                             p->out + prev, limit - prev,
                                             tail, p, ctx->lp_sent, lp_end);
                ctx->lp_sent = lp_end;
                b->last = ngx_cpymem(b->last, "}\n\n", sizeof("}\n\n") - 1);

            } else {
                tail = (p->finish == GPU_FINISH_STOP) ? &shape->last_stop
                                                       : &shape->last_length;

                b->last = ngx_cpymem(b->last, ngx_http_gpu_data.data,
                                     ngx_http_gpu_data.len);
                b->last = ngx_cpymem(b->last, ctx->head.data, ctx->head.len);
                b->last = ngx_cpymem(b->last, tail->data, tail->len);
                b->last = ngx_cpymem(b->last, "}\n\n", sizeof("}\n\n") - 1);
            }

            if (ctx->params.include_usage) {
                b->last = ngx_cpymem(b->last, ngx_http_gpu_data.data,
                                     ngx_http_gpu_data.len);
                b->last = ngx_cpymem(b->last, ctx->head.data, ctx->head.len);
                b->last = ngx_cpymem(b->last, ngx_http_gpu_no_choices.data,
                                     ngx_http_gpu_no_choices.len);
                b->last = ngx_http_gpu_usage_json(b->last,
                                                  p->n_prompt_tokens,
                                                  p->n_tokens);
                b->last = ngx_cpymem(b->last, "}\n\n", sizeof("}\n\n") - 1);
            }

            b->last = ngx_cpymem(b->last, ngx_http_gpu_done.data,
                                 ngx_http_gpu_done.len);

        } else {

            /* an error after events were sent: no [DONE] */

            ctx->status = p->error.status;

            b->last = ngx_cpymem(b->last, ngx_http_gpu_data.data,
                                 ngx_http_gpu_data.len);
            b->last = ngx_http_gpu_error_json(b->last, &p->error);
            *b->last++ = LF;
            *b->last++ = LF;
        }

        ctx->out_sent = limit;

        b->last_buf = (r == r->main) ? 1 : 0;
    }

    if (first) {
        ngx_http_gpu_metrics_ttft(r);
    }

    if (b->last == b->pos && !b->last_buf) {
        /* chat: tokens whose text is all held back make no event */
        out->next = ctx->free;
        ctx->free = out;
        return NGX_DECLINED;
    }

    rc = ngx_http_gpu_output(r, ctx, out);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (!p->done) {
        return NGX_DECLINED;
    }

    return rc;
}


/* data: head choice text tail, the tail with logprobs of [from, to) */

static u_char *
ngx_http_gpu_event(u_char *p, ngx_http_gpu_ctx_t *ctx,
    ngx_http_gpu_shape_t *shape, u_char *text, size_t len, ngx_str_t *tail,
    ngx_http_gpu_progress_t *pr, ngx_uint_t from, ngx_uint_t to)
{
    p = ngx_cpymem(p, ngx_http_gpu_data.data, ngx_http_gpu_data.len);
    p = ngx_cpymem(p, ctx->head.data, ctx->head.len);
    p = ngx_cpymem(p, shape->choice.data, shape->choice.len);
    p = ngx_http_gpu_escape_json(p, text, len);

    return ngx_http_gpu_tail(p, ctx, tail, pr, from, to);
}


/*
 * a choice's tail: as in the shape, or with logprobs asked for, its
 * "logprobs":null replaced by the logprobs of tokens [from, to); a
 * stream's event without any keeps the null, as its last one does
 */

static u_char *
ngx_http_gpu_tail(u_char *p, ngx_http_gpu_ctx_t *ctx, ngx_str_t *tail,
    ngx_http_gpu_progress_t *pr, ngx_uint_t from, ngx_uint_t to)
{
    u_char  *null;

    null = NULL;

    if (ctx->params.logprobs >= 0 && (from < to || !ctx->params.stream)) {
        null = ngx_strnstr(tail->data, "\"logprobs\":null", tail->len);
    }

    if (null == NULL) {
        return ngx_cpymem(p, tail->data, tail->len);
    }

    null += sizeof("\"logprobs\":") - 1;

    p = ngx_cpymem(p, tail->data, null - tail->data);
    p = ngx_http_gpu_lp_json(p, ctx, pr, from, to);

    null += sizeof("null") - 1;

    return ngx_cpymem(p, null, tail->data + tail->len - null);
}


/*
 * Logprobs records (channel.h) as OpenAI's objects.  The backend's
 * records are checked as they are read: a token outside the
 * vocabulary has no text, alternatives beyond the limit are left out.
 */

static gpu_token_lp_t *
ngx_http_gpu_lp_record(ngx_http_gpu_progress_t *pr, ngx_uint_t i,
    ngx_uint_t *n_top)
{
    gpu_token_lp_t  *rec;

    if (pr->region == NULL || i >= pr->region->lp_tokens) {
        return NULL;
    }

    rec = gpu_slot_lp(pr->region, pr->slot, (uint32_t) i);

    *n_top = ngx_min(rec->n_top, pr->region->max_logprobs);

    return rec;
}


static ngx_str_t
ngx_http_gpu_lp_text(gpu_channel_header_t *h, int32_t token)
{
    uint32_t   *end, from;
    ngx_str_t   text;

    ngx_str_null(&text);

    if (token < 0 || (uint32_t) token >= h->vocab_size) {
        return text;
    }

    end = gpu_vocab_end(h);
    from = token ? end[token - 1] : 0;

    if (from > end[token] || end[token] > h->vocab_bytes) {
        return text;
    }

    text.data = (u_char *) gpu_vocab_bytes(h) + from;
    text.len = end[token] - from;

    return text;
}


/*
 * Which records may go out.  A record's text_offset counts the
 * characters of the text before its token (GPU_LP_CUT: the token is in
 * a stop string), so a stream sends a token's record once the token
 * starts in the text sent: never the record of a token that a stop
 * string may still cut away, nor half of a split character's.
 */

static ngx_uint_t
ngx_http_gpu_lp_ready(ngx_http_gpu_ctx_t *ctx, ngx_http_gpu_progress_t *pr,
    ngx_uint_t to)
{
    ngx_uint_t       i, n_top;
    gpu_token_lp_t  *rec;

    if (ctx->params.logprobs < 0) {
        return to;
    }

    for (i = ctx->lp_sent; i < to; i++) {
        rec = ngx_http_gpu_lp_record(pr, i, &n_top);

        if (rec == NULL || rec->text_offset >= ctx->chars_sent) {
            break;
        }
    }

    return i;
}


/* the records of [from, to) up to the first cut one (the answer is done) */

static ngx_uint_t
ngx_http_gpu_lp_end(ngx_http_gpu_progress_t *pr, ngx_uint_t from,
    ngx_uint_t to)
{
    ngx_uint_t       i, n_top;
    gpu_token_lp_t  *rec;

    for (i = from; i < to; i++) {
        rec = ngx_http_gpu_lp_record(pr, i, &n_top);

        if (rec == NULL || rec->text_offset == GPU_LP_CUT) {
            break;
        }
    }

    return i;
}


/* characters of valid UTF-8, counted as the backend counts them */

static ngx_uint_t
ngx_http_gpu_utf8_chars(u_char *p, size_t n)
{
    ngx_uint_t  c;

    for (c = 0; n; n--) {
        c += (*p++ & 0xc0) != 0x80;
    }

    return c;
}


/* an upper bound of what ngx_http_gpu_lp_json() writes */

static size_t
ngx_http_gpu_lp_size(ngx_http_gpu_ctx_t *ctx, ngx_http_gpu_progress_t *pr,
    ngx_uint_t from, ngx_uint_t to)
{
    size_t           size;
    ngx_uint_t       i, k, n_top;
    gpu_token_lp_t  *rec;

    if (ctx->params.logprobs < 0) {
        return 0;
    }

    /* the containers; each entry: its text escaped (6 bytes a byte at
     * most) and as bytes (4), a number, keys and punctuation */

    size = 128;

    for (i = from; i < to; i++) {
        rec = ngx_http_gpu_lp_record(pr, i, &n_top);

        if (rec == NULL) {
            continue;
        }

        size += 128 + 10 * ngx_http_gpu_lp_text(pr->region, rec->token).len;

        for (k = 0; k < n_top; k++) {
            size += 128 + 10 * ngx_http_gpu_lp_text(pr->region,
                                                    rec->top[k].token).len;
        }

        /* completions repeat the chosen token among the alternatives */

        size += 128 + 10 * ngx_http_gpu_lp_text(pr->region, rec->token).len;
    }

    return size;
}


static u_char *
ngx_http_gpu_lp_json(u_char *p, ngx_http_gpu_ctx_t *ctx,
    ngx_http_gpu_progress_t *pr, ngx_uint_t from, ngx_uint_t to)
{
    ngx_str_t        keys[GPU_LOGPROBS_MAX + 1];
    ngx_uint_t       i, k, n_top, n_keys, found;
    gpu_token_lp_t  *rec;

    to = ngx_http_gpu_lp_end(pr, from, to);

    if (ctx->params.endpoint == NGX_HTTP_GPU_CHAT) {

        /* {"content":[{"token":..,"logprob":..,"bytes":[..],
         * "top_logprobs":[{"token":..,"logprob":..,"bytes":[..]}]}]} */

        p = ngx_cpymem(p, "{\"content\":[", sizeof("{\"content\":[") - 1);

        for (i = from; i < to; i++) {
            rec = ngx_http_gpu_lp_record(pr, i, &n_top);

            if (rec == NULL) {
                break;
            }

            if (i > from) {
                *p++ = ',';
            }

            p = ngx_http_gpu_lp_entry(p, pr->region, rec->token,
                                      rec->logprob);
            p--;
            p = ngx_cpymem(p, ",\"top_logprobs\":[",
                           sizeof(",\"top_logprobs\":[") - 1);

            for (k = 0; k < n_top; k++) {
                if (k) {
                    *p++ = ',';
                }

                p = ngx_http_gpu_lp_entry(p, pr->region, rec->top[k].token,
                                          rec->top[k].logprob);
            }

            *p++ = ']';
            *p++ = '}';
        }

        return ngx_cpymem(p, "],\"refusal\":null}",
                          sizeof("],\"refusal\":null}") - 1);
    }

    /* {"tokens":[..],"token_logprobs":[..],"top_logprobs":[{..}],
     * "text_offset":[..]} */

    p = ngx_cpymem(p, "{\"tokens\":[", sizeof("{\"tokens\":[") - 1);

    for (i = from; i < to; i++) {
        rec = ngx_http_gpu_lp_record(pr, i, &n_top);

        if (rec == NULL) {
            break;
        }

        if (i > from) {
            *p++ = ',';
        }

        p = ngx_http_gpu_lp_token(p, pr->region, rec->token, 1);
    }

    p = ngx_cpymem(p, "],\"token_logprobs\":[",
                   sizeof("],\"token_logprobs\":[") - 1);

    for (i = from; i < to; i++) {
        rec = ngx_http_gpu_lp_record(pr, i, &n_top);

        if (rec == NULL) {
            break;
        }

        if (i > from) {
            *p++ = ',';
        }

        p = ngx_http_gpu_lp_number(p, rec->logprob);
    }

    p = ngx_cpymem(p, "],\"top_logprobs\":[",
                   sizeof("],\"top_logprobs\":[") - 1);

    for (i = from; i < to; i++) {
        rec = ngx_http_gpu_lp_record(pr, i, &n_top);

        if (rec == NULL) {
            break;
        }

        if (i > from) {
            *p++ = ',';
        }

        /* the most likely, and the chosen token if it is not one */

        *p++ = '{';
        n_keys = 0;
        found = 0;

        for (k = 0; k < n_top; k++) {
            found |= (rec->top[k].token == rec->token);

            p = ngx_http_gpu_lp_key(p, keys, &n_keys, pr->region,
                                    rec->top[k].token, rec->top[k].logprob);
        }

        if (!found) {
            p = ngx_http_gpu_lp_key(p, keys, &n_keys, pr->region,
                                    rec->token, rec->logprob);
        }

        *p++ = '}';
    }

    p = ngx_cpymem(p, "],\"text_offset\":[",
                   sizeof("],\"text_offset\":[") - 1);

    for (i = from; i < to; i++) {
        rec = ngx_http_gpu_lp_record(pr, i, &n_top);

        if (rec == NULL) {
            break;
        }

        if (i > from) {
            *p++ = ',';
        }

        p = ngx_sprintf(p, "%uD", rec->text_offset);
    }

    *p++ = ']';
    *p++ = '}';

    return p;
}


/* {"token":"..","logprob":..,"bytes":[..]} */

static u_char *
ngx_http_gpu_lp_entry(u_char *p, gpu_channel_header_t *h, int32_t token,
    float lp)
{
    size_t     i;
    ngx_str_t  text;

    p = ngx_cpymem(p, "{\"token\":", sizeof("{\"token\":") - 1);
    p = ngx_http_gpu_lp_token(p, h, token, 1);
    p = ngx_cpymem(p, ",\"logprob\":", sizeof(",\"logprob\":") - 1);
    p = ngx_http_gpu_lp_number(p, lp);
    p = ngx_cpymem(p, ",\"bytes\":[", sizeof(",\"bytes\":[") - 1);

    text = ngx_http_gpu_lp_text(h, token);

    for (i = 0; i < text.len; i++) {
        if (i) {
            *p++ = ',';
        }

        p = ngx_sprintf(p, "%ui", (ngx_uint_t) text.data[i]);
    }

    *p++ = ']';
    *p++ = '}';

    return p;
}


/*
 * One "text":logprob member of a completions top_logprobs object, after
 * the n_keys members so far (keys[]: their quoted texts), unless one of
 * them has the same text: tokens that end inside a character all show
 * U+FFFD, and a JSON object holds one value a key (a parser would keep
 * the last, the less likely).  The members come most likely first, so
 * the likelier stays.
 */

static u_char *
ngx_http_gpu_lp_key(u_char *p, ngx_str_t *keys, ngx_uint_t *n_keys,
    gpu_channel_header_t *h, int32_t token, float lp)
{
    u_char      *key, *end;
    size_t       len;
    ngx_uint_t   j;

    /* the quoted text where it goes: after a comma but for the first */

    key = *n_keys ? p + 1 : p;
    end = ngx_http_gpu_lp_token(key, h, token, 1);
    len = end - key;

    for (j = 0; j < *n_keys; j++) {
        if (keys[j].len == len && ngx_memcmp(keys[j].data, key, len) == 0) {
            return p;
        }
    }

    if (*n_keys) {
        *p = ',';
    }

    if (*n_keys < GPU_LOGPROBS_MAX + 1) {
        keys[*n_keys].data = key;
        keys[*n_keys].len = len;
        (*n_keys)++;
    }

    *end++ = ':';

    return ngx_http_gpu_lp_number(end, lp);
}


/* a token's text as a JSON string (invalid UTF-8 becomes U+FFFD) */

static u_char *
ngx_http_gpu_lp_token(u_char *p, gpu_channel_header_t *h, int32_t token,
    ngx_uint_t quote)
{
    ngx_str_t  text;

    text = ngx_http_gpu_lp_text(h, token);

    if (quote) {
        *p++ = '"';
    }

    p = ngx_http_gpu_escape_json(p, text.data, text.len);

    if (quote) {
        *p++ = '"';
    }

    return p;
}


static u_char *
ngx_http_gpu_lp_number(u_char *p, float lp)
{
    double  d;

    /* -9999 stands for a probability that is 0 in floats */

    d = lp;

    if (!(d >= -9999.0)) {
        d = -9999.0;

    } else if (d > 0.0) {
        d = 0.0;
    }

    if (d < 0.0) {
        *p++ = '-';
        d = -d;
    }

    return ngx_sprintf(p, "%.6f", d);
}


static ngx_http_gpu_shape_t *
ngx_http_gpu_shape(ngx_http_gpu_ctx_t *ctx)
{
    if (ctx->params.endpoint != NGX_HTTP_GPU_CHAT) {
        return &ngx_http_gpu_shapes[NGX_HTTP_GPU_SHAPE_TEXT];
    }

    return &ngx_http_gpu_shapes[ctx->params.stream
                                ? NGX_HTTP_GPU_SHAPE_CHAT_CHUNK
                                : NGX_HTTP_GPU_SHAPE_CHAT];
}


static ngx_int_t
ngx_http_gpu_stream_error(ngx_http_request_t *r, ngx_http_gpu_ctx_t *ctx,
    ngx_http_gpu_error_t *err)
{
    ngx_buf_t    *b;
    ngx_chain_t  *out;

    b = ngx_http_gpu_get_buf(r, ctx, ngx_http_gpu_data.len
                                     + ngx_http_gpu_error_len(err)
                                     + sizeof("\n\n") - 1,
                             &out);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last = ngx_cpymem(b->last, ngx_http_gpu_data.data,
                         ngx_http_gpu_data.len);
    b->last = ngx_http_gpu_error_json(b->last, err);
    *b->last++ = LF;
    *b->last++ = LF;

    b->last_buf = (r == r->main) ? 1 : 0;

    ctx->status = err->status;

    return ngx_http_gpu_output(r, ctx, out);
}


static ngx_buf_t *
ngx_http_gpu_get_buf(ngx_http_request_t *r, ngx_http_gpu_ctx_t *ctx,
    size_t size, ngx_chain_t **out)
{
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    cl = ngx_chain_get_free_buf(r->pool, &ctx->free);
    if (cl == NULL) {
        return NULL;
    }

    b = cl->buf;

    if (b->start == NULL || (size_t) (b->end - b->start) < size) {

        if (b->start) {
            /* sent already; large blocks go back at once */
            (void) ngx_pfree(r->pool, b->start);
        }

        size = ngx_max(size, NGX_HTTP_GPU_BUF_SIZE);

        b->start = ngx_palloc(r->pool, size);
        if (b->start == NULL) {
            return NULL;
        }

        b->end = b->start + size;
    }

    b->pos = b->start;
    b->last = b->start;
    b->temporary = 1;
    b->flush = 1;
    b->last_buf = 0;
    b->last_in_chain = 1;
    b->tag = (ngx_buf_tag_t) &ngx_http_gpu_module;

    *out = cl;

    return b;
}


static ngx_int_t
ngx_http_gpu_output(ngx_http_request_t *r, ngx_http_gpu_ctx_t *ctx,
    ngx_chain_t *in)
{
    ngx_int_t                  rc;
    ngx_uint_t                 flush;
    ngx_event_t               *wev;
    ngx_http_core_loc_conf_t  *clcf;

    flush = (in == NULL);

    rc = ngx_http_output_filter(r, in);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    ngx_chain_update_chains(r->pool, &ctx->free, &ctx->busy, &in,
                            (ngx_buf_tag_t) &ngx_http_gpu_module);

    /*
     * what the client does not take now waits in the write filter;
     * send_timeout runs from the moment the client stopped taking data:
     * new tokens do not push it back, a write event (flush) does
     */

    wev = r->connection->write;
    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (!wev->delayed) {
        if (wev->active && !wev->ready) {
            if (flush || !wev->timer_set) {
                ngx_add_timer(wev, clcf->send_timeout);
            }

        } else if (wev->timer_set) {
            ngx_del_timer(wev);
        }
    }

    if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "gpu output: %i, buffered:%d", rc,
                   (int) (r->connection->buffered | r->buffered));

    return rc;
}


void
ngx_http_gpu_write_handler(ngx_http_request_t *r)
{
    ngx_event_t         *wev;
    ngx_connection_t    *c;
    ngx_http_gpu_ctx_t  *ctx;

    c = r->connection;
    wev = c->write;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0, "gpu write handler");

    ctx = ngx_http_get_module_ctx(r, ngx_http_gpu_module);

    if (wev->timedout) {
        ngx_connection_error(c, NGX_ETIMEDOUT, "client timed out");
        c->timedout = 1;
        ngx_http_gpu_abort(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }

    if (ctx == NULL || !ctx->header_sent) {
        return;
    }

    if (ngx_http_gpu_output(r, ctx, NULL) == NGX_ERROR) {
        ngx_http_gpu_abort(r, NGX_ERROR);
    }
}


/* the client went away while the generation runs: cancel it at once */

void
ngx_http_gpu_check_broken_connection(ngx_http_request_t *r)
{
    ssize_t            n;
    ngx_err_t          err;
    ngx_event_t       *ev;
    ngx_connection_t  *c;
    u_char             buf[1];

    c = r->connection;
    ev = c->read;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ev->log, 0,
                   "gpu check client: \"%V\"", &r->uri);

    if (c->error) {
        ngx_http_gpu_abort(r, NGX_HTTP_CLIENT_CLOSED_REQUEST);
        return;
    }

    if (r->stream) {
        /* HTTP/2 sets c->error when the client resets the stream */
        return;
    }

#if (NGX_HAVE_KQUEUE)

    if (ngx_event_flags & NGX_USE_KQUEUE_EVENT) {

        if (!ev->pending_eof) {
            return;
        }

        ev->eof = 1;
        c->error = 1;

        if (ev->kq_errno) {
            ev->error = 1;
        }

        ngx_log_error(NGX_LOG_INFO, ev->log, ev->kq_errno,
                      "kevent() reported that client prematurely closed "
                      "connection, generation cancelled");

        ngx_http_gpu_abort(r, NGX_HTTP_CLIENT_CLOSED_REQUEST);
        return;
    }

#endif

#if (NGX_HAVE_EPOLLRDHUP)

    if ((ngx_event_flags & NGX_USE_EPOLL_EVENT) && ngx_use_epoll_rdhup) {
        socklen_t  len;

        if (!ev->pending_eof) {
            return;
        }

        ev->eof = 1;
        c->error = 1;

        err = 0;
        len = sizeof(ngx_err_t);

        /*
         * BSDs and Linux return 0 and set a pending error in err
         * Solaris returns -1 and sets errno
         */

        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len)
            == -1)
        {
            err = ngx_socket_errno;
        }

        if (err) {
            ev->error = 1;
        }

        ngx_log_error(NGX_LOG_INFO, ev->log, err,
                      "epoll_wait() reported that client prematurely closed "
                      "connection, generation cancelled");

        ngx_http_gpu_abort(r, NGX_HTTP_CLIENT_CLOSED_REQUEST);
        return;
    }

#endif

    n = recv(c->fd, buf, 1, MSG_PEEK);

    err = ngx_socket_errno;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ev->log, err,
                   "gpu check client recv(): %z", n);

    if ((ngx_event_flags & NGX_USE_LEVEL_EVENT) && ev->active) {
        if (ngx_del_event(ev, NGX_READ_EVENT, 0) != NGX_OK) {
            ngx_http_gpu_abort(r, NGX_ERROR);
            return;
        }
    }

    if (n > 0) {
        /* a pipelined request on a keepalive connection */
        return;
    }

    if (n == -1) {
        if (err == NGX_EAGAIN) {
            return;
        }

        ev->error = 1;

    } else { /* n == 0 */
        err = 0;
    }

    ev->eof = 1;
    c->error = 1;

    ngx_log_error(NGX_LOG_INFO, ev->log, err,
                  "client prematurely closed connection, "
                  "generation cancelled");

    ngx_http_gpu_abort(r, NGX_HTTP_CLIENT_CLOSED_REQUEST);
}


static void
ngx_http_gpu_abort(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_http_gpu_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_gpu_module);

    if (ctx) {
        ngx_http_gpu_channel_detach(ctx, NGX_HTTP_GPU_CANCEL);

        /* counted as 499 or 408 even when the 200 header went out */

        if (rc >= NGX_HTTP_BAD_REQUEST) {
            ctx->status = rc;
        }
    }

    ngx_http_finalize_request(r, rc);
}


static ngx_int_t
ngx_http_gpu_add_header(ngx_http_request_t *r, char *key, ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif
    h->key.data = (u_char *) key;
    h->key.len = ngx_strlen(key);
    h->value = *value;

    return NGX_OK;
}


/* {"error":{"message":"...","type":"...","param":..,"code":..}} */

static size_t
ngx_http_gpu_error_len(ngx_http_gpu_error_t *err)
{
    size_t  len;

    len = sizeof("{\"error\":{\"message\":\"\",\"type\":\"\",\"param\":"
                 ",\"code\":}}") - 1
          + ngx_http_gpu_escape_json_len(err->message.data, err->message.len)
          + ngx_http_gpu_escape_json_len(err->type.data, err->type.len);

    len += err->param.data
           ? ngx_http_gpu_escape_json_len(err->param.data, err->param.len) + 2
           : sizeof("null") - 1;

    len += err->code.data
           ? ngx_http_gpu_escape_json_len(err->code.data, err->code.len) + 2
           : sizeof("null") - 1;

    return len;
}


static u_char *
ngx_http_gpu_error_json(u_char *p, ngx_http_gpu_error_t *err)
{
    p = ngx_cpymem(p, "{\"error\":{\"message\":\"",
                   sizeof("{\"error\":{\"message\":\"") - 1);
    p = ngx_http_gpu_escape_json(p, err->message.data, err->message.len);
    p = ngx_cpymem(p, "\",\"type\":\"", sizeof("\",\"type\":\"") - 1);
    p = ngx_http_gpu_escape_json(p, err->type.data, err->type.len);
    p = ngx_cpymem(p, "\",\"param\":", sizeof("\",\"param\":") - 1);

    if (err->param.data) {
        *p++ = '"';
        p = ngx_http_gpu_escape_json(p, err->param.data, err->param.len);
        *p++ = '"';

    } else {
        p = ngx_cpymem(p, "null", sizeof("null") - 1);
    }

    p = ngx_cpymem(p, ",\"code\":", sizeof(",\"code\":") - 1);

    if (err->code.data) {
        *p++ = '"';
        p = ngx_http_gpu_escape_json(p, err->code.data, err->code.len);
        *p++ = '"';

    } else {
        p = ngx_cpymem(p, "null", sizeof("null") - 1);
    }

    *p++ = '}';
    *p++ = '}';

    return p;
}


static u_char *
ngx_http_gpu_usage_json(u_char *p, ngx_uint_t prompt, ngx_uint_t completion)
{
    return ngx_sprintf(p, "\"usage\":{\"prompt_tokens\":%ui,"
                       "\"completion_tokens\":%ui,\"total_tokens\":%ui}",
                       prompt, completion, prompt + completion);
}


size_t
ngx_http_gpu_escape_json_len(u_char *src, size_t size)
{
    return ngx_http_gpu_json_escape(NULL, src, size);
}


u_char *
ngx_http_gpu_escape_json(u_char *dst, u_char *src, size_t size)
{
    return dst + ngx_http_gpu_json_escape(dst, src, size);
}


/*
 * JSON string contents: quotes, backslashes and control characters are
 * escaped, invalid UTF-8 becomes U+FFFD; returns the bytes written, or
 * with dst == NULL the bytes needed
 */

static size_t
ngx_http_gpu_json_escape(u_char *dst, u_char *src, size_t size)
{
    u_char         c, *d;
    size_t         n, i, len;
    ngx_uint_t     lo, hi;
    static u_char  hex[] = "0123456789abcdef";

    d = dst;
    len = 0;

    while (size) {
        c = *src;

        if (c >= 0x80) {

            /* the length of a valid sequence, or 0 */

            if (c >= 0xc2 && c <= 0xdf) {
                n = 2;

            } else if (c >= 0xe0 && c <= 0xef) {
                n = 3;

            } else if (c >= 0xf0 && c <= 0xf4) {
                n = 4;

            } else {
                n = 0;
            }

            if (n > size) {
                n = 0;
            }

            if (n) {
                lo = 0x80;
                hi = 0xbf;

                if (c == 0xe0) {
                    lo = 0xa0;

                } else if (c == 0xed) {
                    hi = 0x9f;

                } else if (c == 0xf0) {
                    lo = 0x90;

                } else if (c == 0xf4) {
                    hi = 0x8f;
                }

                if (src[1] < lo || src[1] > hi) {
                    n = 0;
                }

                for (i = 2; n && i < n; i++) {
                    if (src[i] < 0x80 || src[i] > 0xbf) {
                        n = 0;
                    }
                }
            }

            if (n == 0) {
                len += sizeof("\\ufffd") - 1;

                if (dst) {
                    d = ngx_cpymem(d, "\\ufffd", sizeof("\\ufffd") - 1);
                }

                src++;
                size--;
                continue;
            }

            len += n;

            if (dst) {
                d = ngx_cpymem(d, src, n);
            }

            src += n;
            size -= n;
            continue;
        }

        src++;
        size--;

        if (c >= 0x20 && c != '"' && c != '\\') {
            len++;

            if (dst) {
                *d++ = c;
            }

            continue;
        }

        switch (c) {

        case '"':
        case '\\':
            break;

        case '\n':
            c = 'n';
            break;

        case '\r':
            c = 'r';
            break;

        case '\t':
            c = 't';
            break;

        case '\b':
            c = 'b';
            break;

        case '\f':
            c = 'f';
            break;

        default:
            len += sizeof("\\u00XX") - 1;

            if (dst) {
                *d++ = '\\';
                *d++ = 'u';
                *d++ = '0';
                *d++ = '0';
                *d++ = hex[c >> 4];
                *d++ = hex[c & 0xf];
            }

            continue;
        }

        len += 2;

        if (dst) {
            *d++ = '\\';
            *d++ = c;
        }
    }

    return len;
}
