
/*
 * Copyright (C) ngx-gpu authors
 */


#ifndef _NGX_HTTP_GPU_H_INCLUDED_
#define _NGX_HTTP_GPU_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <channel.h>


#define NGX_HTTP_GPU_PASS               1
#define NGX_HTTP_GPU_METRICS            2
#define NGX_HTTP_GPU_HEALTH             3

/* "cmpl-" or "chatcmpl-", and 24 hex digits */
#define NGX_HTTP_GPU_ID_LEN             33

/* the two OpenAI endpoints gpu_pass serves */
#define NGX_HTTP_GPU_COMPLETIONS        0
#define NGX_HTTP_GPU_CHAT               1

#define NGX_HTTP_GPU_STATUS_MIN         100
#define NGX_HTTP_GPU_STATUS_MAX         599

/* finite buckets of the latency histograms; one more for +Inf */
#define NGX_HTTP_GPU_LATENCY_BUCKETS    12


typedef struct ngx_http_gpu_backend_s  ngx_http_gpu_backend_t;


struct ngx_http_gpu_backend_s {
    ngx_str_t                   name;          /* "unix:/path" */
    ngx_addr_t                  addr;

    /* per worker state, set up in init_process */
    ngx_log_t                  *log;
    ngx_connection_t           *connection;
    gpu_channel_header_t       *region;        /* NULL: no usable channel */
    size_t                      region_size;
    uint32_t                    worker_id;
    uint32_t                    hint;          /* where claims start */
    uint32_t                    claims;        /* request ids */

    ngx_queue_t                 inflight;      /* ngx_http_gpu_ctx_t */

    ngx_event_t                 reconnect;
    ngx_event_t                 poll;          /* safety net while busy */

    gpu_channel_hello_t         hello;
    size_t                      hello_len;
    ngx_fd_t                    memfd;

    /* known after the first hello, kept over outages for metrics */
    u_char                      model[GPU_MODEL_NAME_LEN];
    size_t                      model_len;

    unsigned                    outage_logged:1;
};


typedef struct {
    ngx_array_t                 backends;      /* ngx_http_gpu_backend_t * */
    ngx_shm_zone_t             *shm_zone;
    ngx_shm_zone_t             *load_zone;     /* ngx_http_gpu_load.c */
    void                       *load;
    ngx_uint_t                  enabled;
} ngx_http_gpu_main_conf_t;


typedef struct {
    ngx_uint_t                  type;
    ngx_http_gpu_backend_t     *backend;
    size_t                      max_body_size;
    ngx_int_t                   max_tokens_default;
    time_t                      retry_after;
    ngx_str_t                   model_name;
} ngx_http_gpu_loc_conf_t;


/* an error answer; a param or code with NULL data is JSON null */
typedef struct {
    ngx_uint_t                  status;
    ngx_str_t                   type;
    ngx_str_t                   param;
    ngx_str_t                   code;
    ngx_str_t                   message;
    ngx_str_t                   allow;         /* for 405 */
} ngx_http_gpu_error_t;


/* one chat message of a /v1/chat/completions body */
typedef struct {
    ngx_uint_t                  role;          /* gpu_chat_role_e */
    ngx_str_t                   content;       /* text parts joined */
    ngx_uint_t                  parts;         /* content parts seen */

    unsigned                    has_role:1;
    unsigned                    has_content:1;
} ngx_http_gpu_message_t;


/* a parsed POST /v1/completions or /v1/chat/completions body */
typedef struct {
    ngx_uint_t                  endpoint;      /* NGX_HTTP_GPU_COMPLETIONS */
    ngx_str_t                   model;
    ngx_str_t                   prompt;        /* GPU_PROMPT_TEXT */
    ngx_array_t                *ids;           /* GPU_PROMPT_TOKENS, int32_t */
    ngx_array_t                *messages;      /* GPU_PROMPT_CHAT */
    size_t                      messages_size; /* serialized, see channel.h */
    ngx_uint_t                  prompt_kind;
    ngx_str_t                   stop[GPU_STOP_MAX];
    ngx_uint_t                  n_stop;
    ngx_int_t                   max_tokens;    /* NGX_CONF_UNSET: default */
    double                      temperature;
    double                      top_p;
    int64_t                     seed;
    ngx_int_t                   top_k;         /* 0 or -1: off */
    double                      presence_penalty;
    double                      frequency_penalty;
    ngx_int_t                   logprobs;      /* -1: none, else the
                                                  alternatives per token */
    ngx_int_t                   top_logprobs;  /* chat; -1: not given */

    unsigned                    has_model:1;
    unsigned                    has_prompt:1;
    unsigned                    has_messages:1;
    unsigned                    has_seed:1;
    unsigned                    stream:1;
    unsigned                    stream_options:1;
    unsigned                    include_usage:1;
    unsigned                    chat_logprobs:1;  /* chat: logprobs true */
} ngx_http_gpu_params_t;


/* what a scan found in a slot, checked against the region's limits */
typedef struct {
    ngx_uint_t                  done;          /* the slot is DONE */
    ngx_uint_t                  n_tokens;
    uint32_t                   *tok_end;
    u_char                     *out;
    size_t                      out_len;       /* when done */
    size_t                      out_cap;
    ngx_uint_t                  finish;        /* gpu_finish_e, when done */
    ngx_uint_t                  n_prompt_tokens;
    ngx_http_gpu_error_t        error;         /* GPU_FINISH_ERROR */
    gpu_channel_header_t       *region;        /* for logprobs records */
    gpu_slot_t                 *slot;
} ngx_http_gpu_progress_t;


typedef struct {
    ngx_http_request_t         *request;
    ngx_http_gpu_backend_t     *backend;
    ngx_queue_t                 queue;         /* in backend->inflight */
    uint32_t                    slot;

    ngx_http_gpu_params_t       params;

    ngx_str_t                   model;         /* the served name */
    u_char                      id[NGX_HTTP_GPU_ID_LEN];
    size_t                      id_len;
    time_t                      created;
    ngx_str_t                   head;          /* {"id":..,"model":"..", */

    ngx_uint_t                  status;        /* outcome after 200 */
    ngx_uint_t                  n_sent;        /* tokens sent */
    uint64_t                    start_usec;    /* monotonic, arrival */
    uint64_t                    first_usec;    /* the first token seen */

    /* for the variables: what the backend reported */
    uint64_t                    first_token_ns;  /* CLOCK_REALTIME */
    ngx_uint_t                  prompt_tokens;
    ngx_uint_t                  finish;        /* gpu_finish_e */
    size_t                      out_sent;      /* text bytes streamed */
    ngx_uint_t                  chars_sent;    /* and its characters */
    ngx_uint_t                  lp_sent;       /* tokens whose logprobs
                                                  were streamed */

    ngx_chain_t                *free;
    ngx_chain_t                *busy;

    ngx_str_t                   error_page;    /* nginx's error answer as
                                                  JSON, until it is sent */

    unsigned                    submitted:1;
    unsigned                    inflight:1;
    unsigned                    header_sent:1;
    unsigned                    role_sent:1;   /* chat: the first delta */
    unsigned                    seen_prompt:1; /* prompt_tokens is set */
} ngx_http_gpu_ctx_t;


/* ngx_http_gpu_request.c */
ngx_int_t ngx_http_gpu_parse_request(ngx_http_request_t *r,
    ngx_uint_t endpoint, ngx_http_gpu_params_t *params,
    ngx_http_gpu_error_t *err);
ngx_int_t ngx_http_gpu_check_request(ngx_http_request_t *r,
    ngx_http_gpu_params_t *params, ngx_http_gpu_error_t *err);
ngx_int_t ngx_http_gpu_check_model(ngx_http_request_t *r,
    ngx_http_gpu_params_t *params, ngx_str_t *model,
    ngx_http_gpu_error_t *err);
ngx_int_t ngx_http_gpu_check_limits(ngx_http_request_t *r,
    ngx_http_gpu_params_t *params, gpu_channel_header_t *h,
    ngx_http_gpu_error_t *err);

/* ngx_http_gpu_response.c */
void ngx_http_gpu_set_error(ngx_http_gpu_error_t *err, ngx_uint_t status,
    char *type, char *param, char *code, ngx_str_t *message);
ngx_int_t ngx_http_gpu_send_error(ngx_http_request_t *r,
    ngx_http_gpu_error_t *err);
ngx_int_t ngx_http_gpu_send_json(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *json);
size_t ngx_http_gpu_escape_json_len(u_char *src, size_t size);
u_char *ngx_http_gpu_escape_json(u_char *dst, u_char *src, size_t size);
ngx_int_t ngx_http_gpu_init_ctx(ngx_http_request_t *r,
    ngx_http_gpu_ctx_t *ctx);
ngx_int_t ngx_http_gpu_process(ngx_http_request_t *r,
    ngx_http_gpu_ctx_t *ctx, ngx_http_gpu_progress_t *p);
ngx_int_t ngx_http_gpu_backend_gone(ngx_http_request_t *r,
    ngx_http_gpu_ctx_t *ctx);
void ngx_http_gpu_check_broken_connection(ngx_http_request_t *r);
void ngx_http_gpu_write_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_gpu_error_filter_init(ngx_conf_t *cf);

/* ngx_http_gpu_metrics.c */
ngx_int_t ngx_http_gpu_metrics_add_zone(ngx_conf_t *cf,
    ngx_http_gpu_main_conf_t *gmcf);
ngx_int_t ngx_http_gpu_metrics_log_handler(ngx_http_request_t *r);
void ngx_http_gpu_metrics_ttft(ngx_http_request_t *r);
ngx_int_t ngx_http_gpu_metrics_send(ngx_http_request_t *r);
u_char *ngx_http_gpu_metrics_label(u_char *p, u_char *last,
    ngx_str_t *value);

/* ngx_http_gpu_variables.c */
ngx_int_t ngx_http_gpu_add_variables(ngx_conf_t *cf);

/* ngx_http_gpu_load.c */
ngx_int_t ngx_http_gpu_load_init(ngx_conf_t *cf,
    ngx_http_gpu_main_conf_t *gmcf);
u_char *ngx_http_gpu_load_metrics(u_char *p, u_char *last,
    ngx_http_request_t *r);
uint64_t ngx_http_gpu_load_usec(void);


extern ngx_module_t  ngx_http_gpu_module;


#endif /* _NGX_HTTP_GPU_H_INCLUDED_ */
