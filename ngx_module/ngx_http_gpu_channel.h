
/*
 * Copyright (C) ngx-gpu authors
 */


#ifndef _NGX_HTTP_GPU_CHANNEL_H_INCLUDED_
#define _NGX_HTTP_GPU_CHANNEL_H_INCLUDED_


#include "ngx_http_gpu.h"


/* what ngx_http_gpu_channel_detach() does with the slot */
#define NGX_HTTP_GPU_CANCEL   0              /* the client went away */
#define NGX_HTTP_GPU_RELEASE  1              /* DONE and answered */
#define NGX_HTTP_GPU_FORGET   2              /* not ours any more */


ngx_int_t ngx_http_gpu_channel_init_process(ngx_cycle_t *cycle,
    ngx_http_gpu_main_conf_t *gmcf);
void ngx_http_gpu_channel_exit_process(ngx_http_gpu_main_conf_t *gmcf);
gpu_channel_header_t *ngx_http_gpu_channel_ready(ngx_http_gpu_backend_t *b);
ngx_str_t *ngx_http_gpu_served_model(ngx_http_gpu_loc_conf_t *glcf,
    ngx_http_gpu_backend_t *b, ngx_str_t *name);
ngx_int_t ngx_http_gpu_channel_submit(ngx_http_request_t *r,
    ngx_http_gpu_ctx_t *ctx, gpu_channel_header_t *h);
void ngx_http_gpu_channel_detach(ngx_http_gpu_ctx_t *ctx, ngx_uint_t how);
void ngx_http_gpu_channel_cleanup(void *data);


#endif /* _NGX_HTTP_GPU_CHANNEL_H_INCLUDED_ */
