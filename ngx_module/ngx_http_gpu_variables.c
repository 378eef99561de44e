
/*
 * Copyright (C) ngx-gpu authors
 */


/*
 * Variables of a gpu_pass request, for log_format (and add_header where
 * they are known by then):
 *
 *     $gpu_model              the served model's name
 *     $gpu_request_id         the completion's id ("cmpl-...", "chatcmpl-...")
 *     $gpu_prompt_tokens      tokens of the prompt as the model saw it
 *     $gpu_completion_tokens  tokens generated (sent, for a stream cut short)
 *     $gpu_finish_reason      stop, length, error or abort
 *     $gpu_ttft               seconds from the request's arrival to the
 *                             backend's first token, millisecond resolution
 *
 * A variable with nothing to say (no gpu_pass, the request was refused
 * before it reached the backend, no token yet) is not found: "-" in logs.
 */


#include "ngx_http_gpu.h"


static ngx_int_t ngx_http_gpu_variable_model(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_gpu_variable_request_id(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_gpu_variable_tokens(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_gpu_variable_finish_reason(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_gpu_variable_ttft(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_http_gpu_ctx_t *ngx_http_gpu_variable_ctx(ngx_http_request_t *r,
    ngx_http_variable_value_t *v);
static ngx_int_t ngx_http_gpu_variable_set(ngx_http_variable_value_t *v,
    u_char *data, size_t len);


static ngx_http_variable_t  ngx_http_gpu_vars[] = {

    { ngx_string("gpu_model"), NULL, ngx_http_gpu_variable_model, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("gpu_request_id"), NULL, ngx_http_gpu_variable_request_id,
      0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("gpu_prompt_tokens"), NULL, ngx_http_gpu_variable_tokens,
      0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("gpu_completion_tokens"), NULL,
      ngx_http_gpu_variable_tokens, 1, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("gpu_finish_reason"), NULL,
      ngx_http_gpu_variable_finish_reason, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("gpu_ttft"), NULL, ngx_http_gpu_variable_ttft, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_str_t  ngx_http_gpu_finish_names[] = {
    ngx_null_string,                       /* GPU_FINISH_NONE */
    ngx_string("length"),
    ngx_string("stop"),
    ngx_string("error"),
    ngx_string("abort")
};


ngx_int_t
ngx_http_gpu_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_gpu_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


/* the request's context once it was handed to the backend, else NULL */

static ngx_http_gpu_ctx_t *
ngx_http_gpu_variable_ctx(ngx_http_request_t *r, ngx_http_variable_value_t *v)
{
    ngx_http_gpu_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_gpu_module);

    if (ctx == NULL || !ctx->submitted) {
        v->not_found = 1;
        return NULL;
    }

    return ctx;
}


/* the value, or not found where there is none (len 0) */

static ngx_int_t
ngx_http_gpu_variable_set(ngx_http_variable_value_t *v, u_char *data,
    size_t len)
{
    if (len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_gpu_variable_model(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_gpu_ctx_t  *ctx;

    ctx = ngx_http_gpu_variable_ctx(r, v);

    if (ctx == NULL) {
        return NGX_OK;
    }

    return ngx_http_gpu_variable_set(v, ctx->model.data, ctx->model.len);
}


static ngx_int_t
ngx_http_gpu_variable_request_id(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_gpu_ctx_t  *ctx;

    ctx = ngx_http_gpu_variable_ctx(r, v);

    if (ctx == NULL) {
        return NGX_OK;
    }

    return ngx_http_gpu_variable_set(v, ctx->id, ctx->id_len);
}


/* data: 0 prompt tokens, 1 completion tokens */

static ngx_int_t
ngx_http_gpu_variable_tokens(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char              *p;
    ngx_uint_t           n;
    ngx_http_gpu_ctx_t  *ctx;

    ctx = ngx_http_gpu_variable_ctx(r, v);

    if (ctx == NULL) {
        return NGX_OK;
    }

    if (data == 0) {
        if (!ctx->seen_prompt) {
            v->not_found = 1;
            return NGX_OK;
        }

        n = ctx->prompt_tokens;

    } else {
        n = ctx->n_sent;
    }

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    return ngx_http_gpu_variable_set(v, p, ngx_sprintf(p, "%ui", n) - p);
}


static ngx_int_t
ngx_http_gpu_variable_finish_reason(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t           *name;
    ngx_http_gpu_ctx_t  *ctx;

    ctx = ngx_http_gpu_variable_ctx(r, v);

    if (ctx == NULL) {
        return NGX_OK;
    }

    if (ctx->finish >= sizeof(ngx_http_gpu_finish_names)
                       / sizeof(ngx_str_t))
    {
        v->not_found = 1;
        return NGX_OK;
    }

    name = &ngx_http_gpu_finish_names[ctx->finish];

    return ngx_http_gpu_variable_set(v, name->data, name->len);
}


static ngx_int_t
ngx_http_gpu_variable_ttft(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char              *p;
    uint64_t             start, first;
    ngx_http_gpu_ctx_t  *ctx;

    ctx = ngx_http_gpu_variable_ctx(r, v);

    if (ctx == NULL) {
        return NGX_OK;
    }

    /*
     * the backend stamps its first token (CLOCK_REALTIME); nginx the
     * request's arrival, as for $request_time: both on this host's clock
     */

    start = (uint64_t) r->main->start_sec * 1000 + r->main->start_msec;
    first = ctx->first_token_ns / 1000000;

    if (ctx->first_token_ns == 0 || first < start) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_TIME_T_LEN + 4);
    if (p == NULL) {
        return NGX_ERROR;
    }

    return ngx_http_gpu_variable_set(v, p,
                                     ngx_sprintf(p, "%uL.%03uL",
                                                 (first - start) / 1000,
                                                 (first - start) % 1000)
                                     - p);
}
