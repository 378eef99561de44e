
/*
 * Copyright (C) ngx-gpu authors
 */


/*
 * POST /v1/completions and /v1/chat/completions bodies: yajl's streaming
 * parser is fed the body buffer by buffer (memory or temporary file),
 * the callbacks check every field as it comes and keep the first error;
 * malformed JSON wins over it.  Checks that need the backend's limits
 * are done once the backend is known to be ready.
 *
 * The nesting of a chat body, by the parser's depth when a value starts:
 * 1 a field ("messages": [...]), 2 a message {...}, 3 a message's field
 * ("content": [...]), 4 a content part {...}, 5 a part's field.
 */


#include "ngx_http_gpu.h"

#include <yajl/yajl_parse.h>


#define NGX_HTTP_GPU_FILE_CHUNK        16384
#define NGX_HTTP_GPU_MESSAGE_LEN       512
#define NGX_HTTP_GPU_NAME_LEN          256
#define NGX_HTTP_GPU_INT64_MAX         0x7fffffffffffffffULL

#define NGX_HTTP_GPU_JSON_NULL         0
#define NGX_HTTP_GPU_JSON_BOOL         1
#define NGX_HTTP_GPU_JSON_NUMBER       2
#define NGX_HTTP_GPU_JSON_STRING       3
#define NGX_HTTP_GPU_JSON_OBJECT       4
#define NGX_HTTP_GPU_JSON_ARRAY        5

#define NGX_HTTP_GPU_F_MODEL           1
#define NGX_HTTP_GPU_F_PROMPT          2
#define NGX_HTTP_GPU_F_MAX_TOKENS      3
#define NGX_HTTP_GPU_F_TEMPERATURE     4
#define NGX_HTTP_GPU_F_TOP_P           5
#define NGX_HTTP_GPU_F_SEED            6
#define NGX_HTTP_GPU_F_STREAM          7
#define NGX_HTTP_GPU_F_N               8
#define NGX_HTTP_GPU_F_ECHO            9
#define NGX_HTTP_GPU_F_USER            10
#define NGX_HTTP_GPU_F_STREAM_OPTIONS  11
#define NGX_HTTP_GPU_F_UNSUPPORTED     12
#define NGX_HTTP_GPU_F_MESSAGES        13
#define NGX_HTTP_GPU_F_STOP            14
#define NGX_HTTP_GPU_F_TOP_K           15
#define NGX_HTTP_GPU_F_PENALTY         16
#define NGX_HTTP_GPU_F_LOGPROBS        17
#define NGX_HTTP_GPU_F_TOP_LOGPROBS    18

/* completions' logprobs and chat's top_logprobs at most (OpenAI's) */
#define NGX_HTTP_GPU_LOGPROBS_MAX      5
#define NGX_HTTP_GPU_TOP_LOGPROBS_MAX  20

/* which endpoints a field belongs to */
#define NGX_HTTP_GPU_E_COMPLETIONS     1
#define NGX_HTTP_GPU_E_CHAT            2
#define NGX_HTTP_GPU_E_BOTH            3

/* keys of a chat message and of a content part */
#define NGX_HTTP_GPU_K_OTHER           0
#define NGX_HTTP_GPU_K_ROLE            1
#define NGX_HTTP_GPU_K_CONTENT         2
#define NGX_HTTP_GPU_K_TYPE            3
#define NGX_HTTP_GPU_K_TEXT            4

/* what the elements of a prompt array are */
#define NGX_HTTP_GPU_PROMPT_ANY        0
#define NGX_HTTP_GPU_PROMPT_IDS        1
#define NGX_HTTP_GPU_PROMPT_STRINGS    2
#define NGX_HTTP_GPU_PROMPT_NESTED     3

#define NGX_HTTP_GPU_OPTION_NONE       0
#define NGX_HTTP_GPU_OPTION_USAGE      1

/* where the escape scan is in the raw body */
#define NGX_HTTP_GPU_SCAN_OUT          0
#define NGX_HTTP_GPU_SCAN_STRING       1
#define NGX_HTTP_GPU_SCAN_ESCAPE       2
#define NGX_HTTP_GPU_SCAN_HEX          3

/* text no JSON parser may accept */
#define NGX_HTTP_GPU_TEXT_UTF8         1
#define NGX_HTTP_GPU_TEXT_SURROGATE    2


typedef struct {
    ngx_str_t                   name;
    ngx_uint_t                  field;

    /*
     * fields not implemented yet are accepted with null or their default
     * value: a JSON type, and for numbers one of two values
     */
    ngx_uint_t                  type;
    double                      value;
    double                      value2;

    ngx_uint_t                  endpoints;   /* NGX_HTTP_GPU_E_* */
} ngx_http_gpu_field_t;


typedef struct {
    ngx_http_request_t         *request;
    ngx_http_gpu_params_t      *params;
    ngx_http_gpu_error_t       *err;
    ngx_http_gpu_field_t       *field;       /* the top level key */
    ngx_uint_t                  depth;
    ngx_uint_t                  kind;        /* of prompt array elements */
    ngx_uint_t                  count;       /* prompt array elements */
    ngx_uint_t                  option;      /* key in stream_options */
    ngx_uint_t                  endpoint;    /* NGX_HTTP_GPU_CHAT, .. */

    ngx_http_gpu_message_t     *msg;         /* the message being read */
    ngx_uint_t                  key;         /* NGX_HTTP_GPU_K_* */
    ngx_str_t                   part_text;   /* of the part being read */
    unsigned                    part_text_set:1;
    unsigned                    part_type_set:1;

    ngx_uint_t                  scan;        /* NGX_HTTP_GPU_SCAN_* */
    ngx_uint_t                  hex;         /* \u digits still to come */
    uint32_t                    code;        /* of the \u escape */
    ngx_uint_t                  bad_text;    /* NGX_HTTP_GPU_TEXT_* */

    unsigned                    high:1;      /* a high surrogate escape
                                                waits for its low half */
    unsigned                    object:1;
    unsigned                    failed:1;
    unsigned                    nomem:1;
} ngx_http_gpu_parser_t;


static int ngx_http_gpu_json_null(void *ctx);
static int ngx_http_gpu_json_boolean(void *ctx, int value);
static int ngx_http_gpu_json_number(void *ctx, const char *value,
    size_t len);
static int ngx_http_gpu_json_string(void *ctx, const unsigned char *value,
    size_t len);
static int ngx_http_gpu_json_start_map(void *ctx);
static int ngx_http_gpu_json_map_key(void *ctx, const unsigned char *key,
    size_t len);
static int ngx_http_gpu_json_end_map(void *ctx);
static int ngx_http_gpu_json_start_array(void *ctx);
static int ngx_http_gpu_json_end_array(void *ctx);
static int ngx_http_gpu_json_end(ngx_http_gpu_parser_t *p);
static yajl_status ngx_http_gpu_json_parse(yajl_handle yh,
    ngx_http_gpu_parser_t *p, u_char *data, size_t len);
static ngx_uint_t ngx_http_gpu_utf8_valid(u_char *p, size_t len);
static int ngx_http_gpu_json_value(ngx_http_gpu_parser_t *p,
    ngx_uint_t type, u_char *data, size_t len, ngx_uint_t flag);
static int ngx_http_gpu_field_value(ngx_http_gpu_parser_t *p,
    ngx_uint_t type, u_char *data, size_t len, ngx_uint_t flag);
static int ngx_http_gpu_nested_value(ngx_http_gpu_parser_t *p,
    ngx_uint_t level, ngx_uint_t type, u_char *data, size_t len,
    ngx_uint_t flag);
static int ngx_http_gpu_prompt_text(ngx_http_gpu_parser_t *p, u_char *data,
    size_t len);
static int ngx_http_gpu_prompt_id(ngx_http_gpu_parser_t *p, u_char *data,
    size_t len);
static int ngx_http_gpu_unsupported(ngx_http_gpu_parser_t *p,
    ngx_uint_t type, u_char *data, size_t len, ngx_uint_t flag);
static int ngx_http_gpu_stop_value(ngx_http_gpu_parser_t *p,
    ngx_uint_t type, u_char *data, size_t len);
static int ngx_http_gpu_message_value(ngx_http_gpu_parser_t *p,
    ngx_uint_t level, ngx_uint_t type, u_char *data, size_t len);
static int ngx_http_gpu_message_key(ngx_http_gpu_parser_t *p, u_char *key,
    size_t len);
static int ngx_http_gpu_message_end(ngx_http_gpu_parser_t *p);
static int ngx_http_gpu_part_end(ngx_http_gpu_parser_t *p);
static int ngx_http_gpu_append(ngx_http_gpu_parser_t *p, ngx_str_t *dst,
    char *sep, u_char *data, size_t len);
static int ngx_http_gpu_not_supported(ngx_http_gpu_parser_t *p);
static int ngx_http_gpu_type_error(ngx_http_gpu_parser_t *p, char *param,
    char *expected);
static int ngx_http_gpu_fail(ngx_http_gpu_parser_t *p, ngx_str_t *param,
    char *code, const char *fmt, ...);
static ngx_int_t ngx_http_gpu_parse_int(u_char *data, size_t len,
    int64_t *value);
static ngx_int_t ngx_http_gpu_parse_double(ngx_http_request_t *r,
    u_char *data, size_t len, double *value);
static ngx_str_t *ngx_http_gpu_copy_name(ngx_http_request_t *r,
    u_char *data, size_t len);
static void ngx_http_gpu_request_error(ngx_http_request_t *r,
    ngx_http_gpu_error_t *err, ngx_uint_t status, ngx_str_t *param,
    char *code, const char *fmt, ...);
static void *ngx_http_gpu_json_malloc(void *ctx, size_t size);
static void *ngx_http_gpu_json_realloc(void *ctx, void *ptr, size_t size);
static void ngx_http_gpu_json_free(void *ctx, void *ptr);


#define B  NGX_HTTP_GPU_E_BOTH
#define C  NGX_HTTP_GPU_E_COMPLETIONS
#define H  NGX_HTTP_GPU_E_CHAT

static ngx_http_gpu_field_t  ngx_http_gpu_fields[] = {

    { ngx_string("model"), NGX_HTTP_GPU_F_MODEL, 0, 0, 0, B },
    { ngx_string("prompt"), NGX_HTTP_GPU_F_PROMPT, 0, 0, 0, C },
    { ngx_string("messages"), NGX_HTTP_GPU_F_MESSAGES, 0, 0, 0, H },
    { ngx_string("max_tokens"), NGX_HTTP_GPU_F_MAX_TOKENS, 0, 0, 0, B },
    { ngx_string("max_completion_tokens"), NGX_HTTP_GPU_F_MAX_TOKENS,
      0, 0, 0, H },
    { ngx_string("temperature"), NGX_HTTP_GPU_F_TEMPERATURE, 0, 0, 0, B },
    { ngx_string("top_p"), NGX_HTTP_GPU_F_TOP_P, 0, 0, 0, B },
    { ngx_string("seed"), NGX_HTTP_GPU_F_SEED, 0, 0, 0, B },
    { ngx_string("stream"), NGX_HTTP_GPU_F_STREAM, 0, 0, 0, B },
    { ngx_string("n"), NGX_HTTP_GPU_F_N, 0, 0, 0, B },
    { ngx_string("echo"), NGX_HTTP_GPU_F_ECHO, 0, 0, 0, C },
    { ngx_string("user"), NGX_HTTP_GPU_F_USER, 0, 0, 0, B },
    { ngx_string("stream_options"), NGX_HTTP_GPU_F_STREAM_OPTIONS,
      0, 0, 0, B },
    { ngx_string("stop"), NGX_HTTP_GPU_F_STOP, 0, 0, 0, B },

    { ngx_string("top_k"), NGX_HTTP_GPU_F_TOP_K, 0, 0, 0, B },
    { ngx_string("presence_penalty"), NGX_HTTP_GPU_F_PENALTY, 0, 0, 0, B },
    { ngx_string("frequency_penalty"), NGX_HTTP_GPU_F_PENALTY, 0, 0, 0, B },
    { ngx_string("logprobs"), NGX_HTTP_GPU_F_LOGPROBS, 0, 0, 0, B },
    { ngx_string("top_logprobs"), NGX_HTTP_GPU_F_TOP_LOGPROBS, 0, 0, 0, H },
    { ngx_string("best_of"), NGX_HTTP_GPU_F_UNSUPPORTED,
      NGX_HTTP_GPU_JSON_NUMBER, 1, 1, C },
    { ngx_string("logit_bias"), NGX_HTTP_GPU_F_UNSUPPORTED,
      NGX_HTTP_GPU_JSON_OBJECT, 0, 0, B },
    { ngx_string("suffix"), NGX_HTTP_GPU_F_UNSUPPORTED,
      NGX_HTTP_GPU_JSON_STRING, 0, 0, C },
    { ngx_string("min_p"), NGX_HTTP_GPU_F_UNSUPPORTED,
      NGX_HTTP_GPU_JSON_NUMBER, 0, 0, B },
    { ngx_string("repetition_penalty"), NGX_HTTP_GPU_F_UNSUPPORTED,
      NGX_HTTP_GPU_JSON_NUMBER, 1, 1, B },
    { ngx_string("min_tokens"), NGX_HTTP_GPU_F_UNSUPPORTED,
      NGX_HTTP_GPU_JSON_NUMBER, 0, 0, B },
    { ngx_string("tools"), NGX_HTTP_GPU_F_UNSUPPORTED,
      NGX_HTTP_GPU_JSON_ARRAY, 0, 0, H },
    { ngx_string("tool_choice"), NGX_HTTP_GPU_F_UNSUPPORTED,
      NGX_HTTP_GPU_JSON_NULL, 0, 0, H },
    { ngx_string("parallel_tool_calls"), NGX_HTTP_GPU_F_UNSUPPORTED,
      NGX_HTTP_GPU_JSON_BOOL, 1, 1, H },
    { ngx_string("functions"), NGX_HTTP_GPU_F_UNSUPPORTED,
      NGX_HTTP_GPU_JSON_ARRAY, 0, 0, H },
    { ngx_string("function_call"), NGX_HTTP_GPU_F_UNSUPPORTED,
      NGX_HTTP_GPU_JSON_NULL, 0, 0, H },
    { ngx_string("response_format"), NGX_HTTP_GPU_F_UNSUPPORTED,
      NGX_HTTP_GPU_JSON_NULL, 0, 0, H },
    { ngx_string("store"), NGX_HTTP_GPU_F_UNSUPPORTED,
      NGX_HTTP_GPU_JSON_BOOL, 0, 0, H },

    { ngx_null_string, 0, 0, 0, 0, 0 }
};

#undef B
#undef C
#undef H


static ngx_str_t  ngx_http_gpu_param_model = ngx_string("model");
static ngx_str_t  ngx_http_gpu_param_prompt = ngx_string("prompt");
static ngx_str_t  ngx_http_gpu_param_max_tokens = ngx_string("max_tokens");
static ngx_str_t  ngx_http_gpu_param_stream_options =
    ngx_string("stream_options");
static ngx_str_t  ngx_http_gpu_param_messages = ngx_string("messages");
static ngx_str_t  ngx_http_gpu_param_stop = ngx_string("stop");
static ngx_str_t  ngx_http_gpu_param_logprobs = ngx_string("logprobs");
static ngx_str_t  ngx_http_gpu_param_top_logprobs =
    ngx_string("top_logprobs");


static yajl_callbacks  ngx_http_gpu_json_callbacks = {
    ngx_http_gpu_json_null,
    ngx_http_gpu_json_boolean,
    NULL,                                  /* integer: number is used */
    NULL,                                  /* double: number is used */
    ngx_http_gpu_json_number,
    ngx_http_gpu_json_string,
    ngx_http_gpu_json_start_map,
    ngx_http_gpu_json_map_key,
    ngx_http_gpu_json_end_map,
    ngx_http_gpu_json_start_array,
    ngx_http_gpu_json_end_array
};


ngx_int_t
ngx_http_gpu_parse_request(ngx_http_request_t *r, ngx_uint_t endpoint,
    ngx_http_gpu_params_t *params, ngx_http_gpu_error_t *err)
{
    off_t                   offset;
    size_t                  size;
    u_char                 *buf, *msg, *last;
    ssize_t                 n;
    ngx_buf_t              *b;
    yajl_handle             yh;
    ngx_chain_t            *cl;
    yajl_status             status;
    yajl_alloc_funcs        afs;
    ngx_http_gpu_parser_t   p;

    ngx_memzero(params, sizeof(ngx_http_gpu_params_t));

    params->endpoint = endpoint;
    params->prompt_kind = (endpoint == NGX_HTTP_GPU_CHAT) ? GPU_PROMPT_CHAT
                                                          : GPU_PROMPT_TEXT;
    params->max_tokens = NGX_CONF_UNSET;
    params->temperature = 1.0;
    params->top_p = 1.0;
    params->logprobs = -1;
    params->top_logprobs = -1;

    ngx_memzero(&p, sizeof(ngx_http_gpu_parser_t));

    p.request = r;
    p.params = params;
    p.err = err;
    p.endpoint = (endpoint == NGX_HTTP_GPU_CHAT) ? NGX_HTTP_GPU_E_CHAT
                                                 : NGX_HTTP_GPU_E_COMPLETIONS;

    afs.malloc = ngx_http_gpu_json_malloc;
    afs.realloc = ngx_http_gpu_json_realloc;
    afs.free = ngx_http_gpu_json_free;
    afs.ctx = r->pool;

    yh = yajl_alloc(&ngx_http_gpu_json_callbacks, &afs, &p);
    if (yh == NULL) {
        return NGX_ERROR;
    }

    buf = NULL;
    status = yajl_status_ok;

    for (cl = r->request_body->bufs;
         cl && status == yajl_status_ok;
         cl = cl->next)
    {
        b = cl->buf;

        if (ngx_buf_in_memory(b)) {
            status = ngx_http_gpu_json_parse(yh, &p, b->pos,
                                             b->last - b->pos);
            continue;
        }

        if (!b->in_file) {
            continue;
        }

        if (buf == NULL) {
            buf = ngx_palloc(r->pool, NGX_HTTP_GPU_FILE_CHUNK);
            if (buf == NULL) {
                goto failed;
            }
        }

        for (offset = b->file_pos;
             offset < b->file_last && status == yajl_status_ok;
             offset += n)
        {
            size = (size_t) ngx_min(b->file_last - offset,
                                    NGX_HTTP_GPU_FILE_CHUNK);

            n = ngx_read_file(b->file, buf, size, offset);

            if (n == NGX_ERROR) {
                goto failed;
            }

            if (n == 0) {
                ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                              "gpu: unexpected end of the request body "
                              "file \"%V\"", &b->file->name);
                goto failed;
            }

            status = ngx_http_gpu_json_parse(yh, &p, buf, n);
        }
    }

    if (status == yajl_status_ok) {
        status = yajl_complete_parse(yh);
    }

    if (p.nomem) {
        goto failed;
    }

    if (p.bad_text) {
        yajl_free(yh);

        ngx_http_gpu_request_error(r, err, NGX_HTTP_BAD_REQUEST, NULL,
                                   "invalid_json",
                                   "We could not parse the JSON body of your "
                                   "request (%s)",
                                   p.bad_text == NGX_HTTP_GPU_TEXT_UTF8
                                   ? "a string is not valid UTF-8"
                                   : "a \\u escape is half of a UTF-16 "
                                     "surrogate pair");
        return NGX_DECLINED;
    }

    if (status == yajl_status_error) {
        msg = yajl_get_error(yh, 0, NULL, 0);

        if (msg == NULL) {
            goto failed;
        }

        for (last = msg + ngx_strlen(msg);
             last > msg && (last[-1] == LF || last[-1] == CR);
             last--)
        {
            /* void */
        }

        ngx_http_gpu_request_error(r, err, NGX_HTTP_BAD_REQUEST, NULL,
                                   "invalid_json",
                                   "We could not parse the JSON body of your "
                                   "request (%*s)", (size_t) (last - msg),
                                   msg);

        yajl_free_error(yh, msg);
        yajl_free(yh);

        return NGX_DECLINED;
    }

    yajl_free(yh);

    if (p.failed) {
        return NGX_DECLINED;
    }

    if (!p.object) {
        ngx_http_gpu_request_error(r, err, NGX_HTTP_BAD_REQUEST, NULL,
                                   "invalid_json",
                                   "The request body must be a JSON object");
        return NGX_DECLINED;
    }

    return NGX_OK;

failed:

    yajl_free(yh);

    return NGX_ERROR;
}


ngx_int_t
ngx_http_gpu_check_request(ngx_http_request_t *r,
    ngx_http_gpu_params_t *params, ngx_http_gpu_error_t *err)
{
    ngx_uint_t               i;
    ngx_http_gpu_message_t  *m;

    if (params->endpoint == NGX_HTTP_GPU_CHAT) {

        if (!params->has_messages) {
            ngx_http_gpu_request_error(r, err, NGX_HTTP_BAD_REQUEST,
                                       &ngx_http_gpu_param_messages,
                                       "missing_required_parameter",
                                       "Missing required parameter: "
                                       "`messages`");
            return NGX_DECLINED;
        }

        if (params->messages == NULL || params->messages->nelts == 0) {
            ngx_http_gpu_request_error(r, err, NGX_HTTP_BAD_REQUEST,
                                       &ngx_http_gpu_param_messages,
                                       "empty_array",
                                       "`messages` must hold at least one "
                                       "message");
            return NGX_DECLINED;
        }

        /* the records the backend gets, see GPU_PROMPT_CHAT */

        m = params->messages->elts;
        params->messages_size = 0;

        for (i = 0; i < params->messages->nelts; i++) {
            params->messages_size += GPU_CHAT_RECORD_HEAD
                                     + m[i].content.len;
        }

        if (params->top_logprobs >= 0 && !params->chat_logprobs) {
            ngx_http_gpu_request_error(r, err, NGX_HTTP_BAD_REQUEST,
                                       &ngx_http_gpu_param_top_logprobs,
                                       "invalid_value",
                                       "`top_logprobs` requires `logprobs` "
                                       "to be true");
            return NGX_DECLINED;
        }

        if (params->chat_logprobs) {
            params->logprobs = params->top_logprobs >= 0
                               ? params->top_logprobs : 0;
        }

        goto stream;
    }

    if (!params->has_prompt) {
        ngx_http_gpu_request_error(r, err, NGX_HTTP_BAD_REQUEST,
                                   &ngx_http_gpu_param_prompt,
                                   "missing_required_parameter",
                                   "Missing required parameter: `prompt`");
        return NGX_DECLINED;
    }

    if ((params->prompt_kind == GPU_PROMPT_TEXT && params->prompt.len == 0)
        || (params->prompt_kind == GPU_PROMPT_TOKENS
            && params->ids->nelts == 0))
    {
        ngx_http_gpu_request_error(r, err, NGX_HTTP_BAD_REQUEST,
                                   &ngx_http_gpu_param_prompt,
                                   "empty_prompt", "The prompt is empty");
        return NGX_DECLINED;
    }

stream:

    if (params->stream_options && !params->stream) {
        ngx_http_gpu_request_error(r, err, NGX_HTTP_BAD_REQUEST,
                                   &ngx_http_gpu_param_stream_options,
                                   "invalid_value",
                                   "`stream_options` is only allowed when "
                                   "`stream` is true");
        return NGX_DECLINED;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_gpu_check_model(ngx_http_request_t *r,
    ngx_http_gpu_params_t *params, ngx_str_t *model,
    ngx_http_gpu_error_t *err)
{
    if (!params->has_model
        || (params->model.len == model->len
            && ngx_strncmp(params->model.data, model->data, model->len)
               == 0))
    {
        return NGX_OK;
    }

    ngx_http_gpu_request_error(r, err, NGX_HTTP_NOT_FOUND,
                               &ngx_http_gpu_param_model,
                               "model_not_found",
                               "The model `%V` does not exist",
                               &params->model);

    return NGX_DECLINED;
}


ngx_int_t
ngx_http_gpu_check_limits(ngx_http_request_t *r,
    ngx_http_gpu_params_t *params, gpu_channel_header_t *h,
    ngx_http_gpu_error_t *err)
{
    int32_t     *id;
    ngx_uint_t   i, n;

    if (params->max_tokens > (ngx_int_t) h->max_new_tokens) {
        ngx_http_gpu_request_error(r, err, NGX_HTTP_BAD_REQUEST,
                                   &ngx_http_gpu_param_max_tokens,
                                   "invalid_value",
                                   "`max_tokens` is too large: %i. This "
                                   "model supports at most %uD completion "
                                   "tokens", params->max_tokens,
                                   h->max_new_tokens);
        return NGX_DECLINED;
    }

    if (params->logprobs > (ngx_int_t) h->max_logprobs) {
        ngx_http_gpu_request_error(r, err, NGX_HTTP_BAD_REQUEST,
                                   params->endpoint == NGX_HTTP_GPU_CHAT
                                   ? &ngx_http_gpu_param_top_logprobs
                                   : &ngx_http_gpu_param_logprobs,
                                   "invalid_value",
                                   "This server returns at most %uD "
                                   "alternatives per token, %i were asked "
                                   "for", h->max_logprobs, params->logprobs);
        return NGX_DECLINED;
    }

    if (params->logprobs >= 0
        && params->max_tokens > (ngx_int_t) h->lp_tokens)
    {
        ngx_http_gpu_request_error(r, err, NGX_HTTP_BAD_REQUEST,
                                   &ngx_http_gpu_param_max_tokens,
                                   "invalid_value",
                                   "With logprobs, `max_tokens` may be at "
                                   "most %uD on this server, got %i",
                                   h->lp_tokens, params->max_tokens);
        return NGX_DECLINED;
    }

    if (params->prompt_kind == GPU_PROMPT_CHAT) {

        if (h->chat_template[0] == '\0') {
            ngx_http_gpu_request_error(r, err, NGX_HTTP_BAD_REQUEST,
                                       &ngx_http_gpu_param_messages,
                                       "chat_template_unknown",
                                       "This model has no chat template "
                                       "ngx-gpu knows, so it cannot serve "
                                       "chat completions; start its "
                                       "backend with --chat-template NAME");
            return NGX_DECLINED;
        }

        if (params->messages_size > h->prompt_bytes_cap) {
            ngx_http_gpu_request_error(r, err, NGX_HTTP_BAD_REQUEST,
                                       &ngx_http_gpu_param_messages,
                                       "context_length_exceeded",
                                       "The messages are too long: %uz "
                                       "bytes, the maximum is %uD",
                                       params->messages_size,
                                       h->prompt_bytes_cap);
            return NGX_DECLINED;
        }

        /* the backend renders, tokenizes and checks the context length */

        return NGX_OK;
    }

    if (params->prompt_kind == GPU_PROMPT_TEXT) {

        if (params->prompt.len > h->prompt_bytes_cap) {
            ngx_http_gpu_request_error(r, err, NGX_HTTP_BAD_REQUEST,
                                       &ngx_http_gpu_param_prompt,
                                       "context_length_exceeded",
                                       "The prompt is too long: %uz bytes, "
                                       "the maximum is %uD",
                                       params->prompt.len,
                                       h->prompt_bytes_cap);
            return NGX_DECLINED;
        }

        /* the backend tokenizes the text and checks the context length */

        return NGX_OK;
    }

    n = params->ids->nelts;

    if (n > h->prompt_tokens_cap) {
        ngx_http_gpu_request_error(r, err, NGX_HTTP_BAD_REQUEST,
                                   &ngx_http_gpu_param_prompt,
                                   "context_length_exceeded",
                                   "The prompt is too long: %ui tokens, "
                                   "the maximum is %uD", n,
                                   h->prompt_tokens_cap);
        return NGX_DECLINED;
    }

    id = params->ids->elts;

    for (i = 0; i < n; i++) {
        if ((uint32_t) id[i] >= h->vocab_size) {
            ngx_http_gpu_request_error(r, err, NGX_HTTP_BAD_REQUEST,
                                       &ngx_http_gpu_param_prompt,
                                       "invalid_token",
                                       "token id %D in the prompt is outside "
                                       "the vocabulary (0..%uD)", id[i],
                                       h->vocab_size - 1);
            return NGX_DECLINED;
        }
    }

    if (n + params->max_tokens > h->ctx_len) {
        ngx_http_gpu_request_error(r, err, NGX_HTTP_BAD_REQUEST,
                                   &ngx_http_gpu_param_prompt,
                                   "context_length_exceeded",
                                   "This model's maximum context length is "
                                   "%uD tokens. However, you requested %ui "
                                   "tokens (%ui in your prompt; %i for the "
                                   "completion). Please reduce your prompt; "
                                   "or completion length.", h->ctx_len,
                                   n + params->max_tokens, n,
                                   params->max_tokens);
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static int
ngx_http_gpu_json_null(void *ctx)
{
    return ngx_http_gpu_json_value(ctx, NGX_HTTP_GPU_JSON_NULL, NULL, 0, 0);
}


static int
ngx_http_gpu_json_boolean(void *ctx, int value)
{
    return ngx_http_gpu_json_value(ctx, NGX_HTTP_GPU_JSON_BOOL, NULL, 0,
                                   value ? 1 : 0);
}


static int
ngx_http_gpu_json_number(void *ctx, const char *value, size_t len)
{
    return ngx_http_gpu_json_value(ctx, NGX_HTTP_GPU_JSON_NUMBER,
                                   (u_char *) value, len, 0);
}


static int
ngx_http_gpu_json_string(void *ctx, const unsigned char *value, size_t len)
{
    ngx_http_gpu_parser_t *p = ctx;

    if (!ngx_http_gpu_utf8_valid((u_char *) value, len)) {
        p->bad_text = NGX_HTTP_GPU_TEXT_UTF8;
        return 0;
    }

    return ngx_http_gpu_json_value(ctx, NGX_HTTP_GPU_JSON_STRING,
                                   (u_char *) value, len, 0);
}


static int
ngx_http_gpu_json_start_map(void *ctx)
{
    return ngx_http_gpu_json_value(ctx, NGX_HTTP_GPU_JSON_OBJECT, NULL, 0, 0);
}


static int
ngx_http_gpu_json_start_array(void *ctx)
{
    return ngx_http_gpu_json_value(ctx, NGX_HTTP_GPU_JSON_ARRAY, NULL, 0, 0);
}


static int
ngx_http_gpu_json_end_map(void *ctx)
{
    return ngx_http_gpu_json_end(ctx);
}


static int
ngx_http_gpu_json_end_array(void *ctx)
{
    return ngx_http_gpu_json_end(ctx);
}


static int
ngx_http_gpu_json_map_key(void *ctx, const unsigned char *key, size_t len)
{
    ngx_http_gpu_parser_t *p = ctx;

    ngx_str_t             *name;
    ngx_http_gpu_field_t  *f;

    if (!ngx_http_gpu_utf8_valid((u_char *) key, len)) {
        p->bad_text = NGX_HTTP_GPU_TEXT_UTF8;
        return 0;
    }

    if (p->failed) {
        return 1;
    }

    if (p->depth == 1) {

        for (f = ngx_http_gpu_fields; f->name.len; f++) {
            if (f->name.len == len
                && ngx_strncmp(f->name.data, key, len) == 0
                && (f->endpoints & p->endpoint))
            {
                p->field = f;
                return 1;
            }
        }

        p->field = NULL;

        name = ngx_http_gpu_copy_name(p->request, (u_char *) key, len);
        if (name == NULL) {
            p->nomem = 1;
            return 0;
        }

        return ngx_http_gpu_fail(p, name, "unknown_parameter",
                                 "Unrecognized request argument supplied: %V",
                                 name);
    }

    if (p->field == NULL) {
        return 1;
    }

    switch (p->field->field) {

    case NGX_HTTP_GPU_F_STREAM_OPTIONS:

        if (p->depth != 2) {
            return 1;
        }

        if (len == sizeof("include_usage") - 1
            && ngx_strncmp(key, "include_usage", len) == 0)
        {
            p->option = NGX_HTTP_GPU_OPTION_USAGE;
            return 1;
        }

        p->option = NGX_HTTP_GPU_OPTION_NONE;

        return ngx_http_gpu_fail(p, &ngx_http_gpu_param_stream_options,
                                 "unknown_parameter",
                                 "Unrecognized request argument supplied: "
                                 "stream_options.%*s",
                                 ngx_min(len, NGX_HTTP_GPU_NAME_LEN), key);

    case NGX_HTTP_GPU_F_MESSAGES:
        return ngx_http_gpu_message_key(p, (u_char *) key, len);

    case NGX_HTTP_GPU_F_UNSUPPORTED:
        /* a key in logit_bias and the like: not the default */
        return ngx_http_gpu_not_supported(p);

    default:
        return 1;
    }
}


/*
 * yajl checks that strings are UTF-8 only by the shape of each sequence
 * (an overlong form, a surrogate or a code point above U+10FFFF passes),
 * and decodes a lone UTF-16 surrogate escape as "?" or, before another
 * \u escape, as a wrong character: either is refused, never changed
 * silently.  The raw body is scanned for such escapes buffer by buffer
 * before yajl parses it; decoded strings are checked in the callbacks.
 */

static yajl_status
ngx_http_gpu_json_parse(yajl_handle yh, ngx_http_gpu_parser_t *p,
    u_char *data, size_t len)
{
    u_char  c, *pos, *last;

    last = data + len;

    for (pos = data; pos < last; pos++) {
        c = *pos;

        switch (p->scan) {

        case NGX_HTTP_GPU_SCAN_OUT:

            if (c == '"') {
                p->scan = NGX_HTTP_GPU_SCAN_STRING;
            }

            continue;

        case NGX_HTTP_GPU_SCAN_STRING:

            if (c == '\\') {
                p->scan = NGX_HTTP_GPU_SCAN_ESCAPE;
                continue;
            }

            if (p->high) {
                goto surrogate;
            }

            if (c == '"') {
                p->scan = NGX_HTTP_GPU_SCAN_OUT;
            }

            continue;

        case NGX_HTTP_GPU_SCAN_ESCAPE:

            if (c == 'u') {
                p->scan = NGX_HTTP_GPU_SCAN_HEX;
                p->hex = 4;
                p->code = 0;
                continue;
            }

            if (p->high) {
                goto surrogate;
            }

            p->scan = NGX_HTTP_GPU_SCAN_STRING;
            continue;

        default: /* NGX_HTTP_GPU_SCAN_HEX */

            /* not a hex digit: yajl refuses the escape */
            c = (u_char) (c | 0x20);
            p->code = (p->code << 4)
                      | ((c >= 'a') ? (uint32_t) (c - 'a' + 10)
                                    : (uint32_t) (c - '0'));

            if (--p->hex) {
                continue;
            }

            p->scan = NGX_HTTP_GPU_SCAN_STRING;

            if (p->code >= 0xd800 && p->code <= 0xdbff) {

                if (p->high) {
                    goto surrogate;
                }

                p->high = 1;

            } else if (p->code >= 0xdc00 && p->code <= 0xdfff) {

                if (!p->high) {
                    goto surrogate;
                }

                p->high = 0;

            } else if (p->high) {
                goto surrogate;
            }
        }
    }

    return yajl_parse(yh, data, len);

surrogate:

    p->bad_text = NGX_HTTP_GPU_TEXT_SURROGATE;

    return yajl_status_client_canceled;
}


static ngx_uint_t
ngx_http_gpu_utf8_valid(u_char *p, size_t len)
{
    u_char      *last;
    uint32_t     u, min;
    ngx_uint_t   n;

    last = p + len;

    while (p < last) {
        u = *p++;

        if (u < 0x80) {
            continue;
        }

        if (u >= 0xc2 && u <= 0xdf) {
            u &= 0x1f;
            n = 1;
            min = 0x80;

        } else if (u >= 0xe0 && u <= 0xef) {
            u &= 0x0f;
            n = 2;
            min = 0x800;

        } else if (u >= 0xf0 && u <= 0xf4) {
            u &= 0x07;
            n = 3;
            min = 0x10000;

        } else {
            return 0;
        }

        if ((size_t) (last - p) < n) {
            return 0;
        }

        while (n--) {
            if ((*p & 0xc0) != 0x80) {
                return 0;
            }

            u = (u << 6) | (*p++ & 0x3f);
        }

        if (u < min || u > 0x10ffff || (u >= 0xd800 && u <= 0xdfff)) {
            return 0;
        }
    }

    return 1;
}


static int
ngx_http_gpu_json_end(ngx_http_gpu_parser_t *p)
{
    p->depth--;

    if (p->failed || p->field == NULL) {
        return 1;
    }

    if (p->field->field == NGX_HTTP_GPU_F_MESSAGES) {

        if (p->depth == 2) {
            return ngx_http_gpu_message_end(p);
        }

        if (p->depth == 4) {
            return ngx_http_gpu_part_end(p);
        }
    }

    if (p->depth != 1) {
        return 1;
    }

    /* the end of a top level field's array or object */

    if (p->field->field == NGX_HTTP_GPU_F_PROMPT && p->count == 0) {
        return ngx_http_gpu_fail(p, &ngx_http_gpu_param_prompt,
                                 "empty_prompt", "The prompt is empty");
    }

    return 1;
}


static int
ngx_http_gpu_json_value(ngx_http_gpu_parser_t *p, ngx_uint_t type,
    u_char *data, size_t len, ngx_uint_t flag)
{
    ngx_uint_t  level;

    level = p->depth;

    if (type == NGX_HTTP_GPU_JSON_OBJECT || type == NGX_HTTP_GPU_JSON_ARRAY) {
        p->depth++;
    }

    if (level == 0) {

        if (type != NGX_HTTP_GPU_JSON_OBJECT) {
            /* no point in parsing further */
            (void) ngx_http_gpu_fail(p, NULL, "invalid_json",
                                     "The request body must be a JSON "
                                     "object");
            return 0;
        }

        p->object = 1;
        return 1;
    }

    if (p->failed || p->field == NULL) {
        return 1;
    }

    if (level == 1) {
        return ngx_http_gpu_field_value(p, type, data, len, flag);
    }

    return ngx_http_gpu_nested_value(p, level, type, data, len, flag);
}


static int
ngx_http_gpu_field_value(ngx_http_gpu_parser_t *p, ngx_uint_t type,
    u_char *data, size_t len, ngx_uint_t flag)
{
    double                  d;
    int64_t                 v;
    ngx_int_t               rc;
    ngx_http_gpu_params_t  *params;

    params = p->params;

    switch (p->field->field) {

    case NGX_HTTP_GPU_F_MODEL:

        if (type == NGX_HTTP_GPU_JSON_NULL) {
            params->has_model = 0;
            return 1;
        }

        if (type != NGX_HTTP_GPU_JSON_STRING) {
            return ngx_http_gpu_type_error(p, "model", "a string");
        }

        params->model.data = ngx_pnalloc(p->request->pool, len);
        if (params->model.data == NULL && len) {
            p->nomem = 1;
            return 0;
        }

        ngx_memcpy(params->model.data, data, len);
        params->model.len = len;
        params->has_model = 1;

        return 1;

    case NGX_HTTP_GPU_F_PROMPT:

        /* a repeated key replaces the prompt */

        params->has_prompt = 0;
        params->prompt_kind = GPU_PROMPT_TEXT;
        ngx_str_null(&params->prompt);

        if (params->ids) {
            params->ids->nelts = 0;
        }

        switch (type) {

        case NGX_HTTP_GPU_JSON_NULL:
            return 1;

        case NGX_HTTP_GPU_JSON_STRING:
            params->has_prompt = 1;
            return ngx_http_gpu_prompt_text(p, data, len);

        case NGX_HTTP_GPU_JSON_ARRAY:
            params->has_prompt = 1;
            p->kind = NGX_HTTP_GPU_PROMPT_ANY;
            p->count = 0;
            return 1;

        default:
            return ngx_http_gpu_type_error(p, "prompt",
                                           "a string, an array of strings "
                                           "or an array of token ids");
        }

    case NGX_HTTP_GPU_F_MAX_TOKENS:

        if (type == NGX_HTTP_GPU_JSON_NULL) {
            params->max_tokens = NGX_CONF_UNSET;
            return 1;
        }

        if (type != NGX_HTTP_GPU_JSON_NUMBER) {
            return ngx_http_gpu_type_error(p, "max_tokens", "an integer");
        }

        rc = ngx_http_gpu_parse_int(data, len, &v);

        if (rc == NGX_DECLINED) {
            return ngx_http_gpu_type_error(p, "max_tokens", "an integer");
        }

        if (rc == NGX_ABORT) {
            v = (*data == '-') ? 0 : NGX_MAX_INT32_VALUE;
        }

        if (v < 1) {
            return ngx_http_gpu_fail(p, &ngx_http_gpu_param_max_tokens,
                                     "invalid_value",
                                     "`max_tokens` must be at least 1, "
                                     "got %*s", len, data);
        }

        params->max_tokens = (ngx_int_t) ngx_min(v, NGX_MAX_INT32_VALUE);

        return 1;

    case NGX_HTTP_GPU_F_TEMPERATURE:
    case NGX_HTTP_GPU_F_TOP_P:

        if (type == NGX_HTTP_GPU_JSON_NULL) {
            if (p->field->field == NGX_HTTP_GPU_F_TEMPERATURE) {
                params->temperature = 1.0;

            } else {
                params->top_p = 1.0;
            }

            return 1;
        }

        if (type != NGX_HTTP_GPU_JSON_NUMBER) {
            return ngx_http_gpu_type_error(p, (char *) p->field->name.data,
                                           "a number");
        }

        if (ngx_http_gpu_parse_double(p->request, data, len, &d) != NGX_OK) {
            p->nomem = 1;
            return 0;
        }

        if (p->field->field == NGX_HTTP_GPU_F_TEMPERATURE) {

            if (!(d >= 0.0 && d <= 2.0)) {
                return ngx_http_gpu_fail(p, &p->field->name, "invalid_value",
                                         "`temperature` must be between 0 "
                                         "and 2, got %*s", len, data);
            }

            params->temperature = d;
            return 1;
        }

        if (!(d > 0.0 && d <= 1.0)) {
            return ngx_http_gpu_fail(p, &p->field->name, "invalid_value",
                                     "`top_p` must be greater than 0 and at "
                                     "most 1, got %*s", len, data);
        }

        params->top_p = d;
        return 1;

    case NGX_HTTP_GPU_F_SEED:

        if (type == NGX_HTTP_GPU_JSON_NULL) {
            params->has_seed = 0;
            return 1;
        }

        if (type != NGX_HTTP_GPU_JSON_NUMBER) {
            return ngx_http_gpu_type_error(p, "seed", "an integer");
        }

        rc = ngx_http_gpu_parse_int(data, len, &v);

        if (rc == NGX_DECLINED) {
            return ngx_http_gpu_type_error(p, "seed", "an integer");
        }

        if (rc == NGX_ABORT) {
            return ngx_http_gpu_fail(p, &p->field->name, "invalid_value",
                                     "`seed` is out of range, got %*s",
                                     len, data);
        }

        params->seed = v;
        params->has_seed = 1;

        return 1;

    case NGX_HTTP_GPU_F_STREAM:

        if (type == NGX_HTTP_GPU_JSON_NULL) {
            params->stream = 0;
            return 1;
        }

        if (type != NGX_HTTP_GPU_JSON_BOOL) {
            return ngx_http_gpu_type_error(p, "stream", "a boolean");
        }

        params->stream = flag;
        return 1;

    case NGX_HTTP_GPU_F_N:

        if (type == NGX_HTTP_GPU_JSON_NULL) {
            return 1;
        }

        if (type != NGX_HTTP_GPU_JSON_NUMBER
            || ngx_http_gpu_parse_int(data, len, &v) == NGX_DECLINED)
        {
            return ngx_http_gpu_type_error(p, "n", "an integer");
        }

        if (len == 1 && *data == '1') {
            return 1;
        }

        return ngx_http_gpu_fail(p, &p->field->name, "unsupported_value",
                                 "Only `n` = 1 is supported, got %*s",
                                 len, data);

    case NGX_HTTP_GPU_F_ECHO:

        if (type == NGX_HTTP_GPU_JSON_NULL
            || (type == NGX_HTTP_GPU_JSON_BOOL && !flag))
        {
            return 1;
        }

        if (type != NGX_HTTP_GPU_JSON_BOOL) {
            return ngx_http_gpu_type_error(p, "echo", "a boolean");
        }

        return ngx_http_gpu_fail(p, &p->field->name, "unsupported_parameter",
                                 "`echo` is not supported yet");

    case NGX_HTTP_GPU_F_USER:

        if (type == NGX_HTTP_GPU_JSON_NULL
            || type == NGX_HTTP_GPU_JSON_STRING)
        {
            return 1;
        }

        return ngx_http_gpu_type_error(p, "user", "a string");

    case NGX_HTTP_GPU_F_STREAM_OPTIONS:

        if (type == NGX_HTTP_GPU_JSON_NULL) {
            params->stream_options = 0;
            params->include_usage = 0;
            return 1;
        }

        if (type != NGX_HTTP_GPU_JSON_OBJECT) {
            return ngx_http_gpu_type_error(p, "stream_options", "an object");
        }

        params->stream_options = 1;
        params->include_usage = 0;
        p->option = NGX_HTTP_GPU_OPTION_NONE;

        return 1;

    case NGX_HTTP_GPU_F_MESSAGES:

        /* a repeated key replaces the messages */

        params->has_messages = 0;

        if (params->messages) {
            params->messages->nelts = 0;
        }

        if (type != NGX_HTTP_GPU_JSON_ARRAY) {
            return ngx_http_gpu_type_error(p, "messages", "an array");
        }

        params->has_messages = 1;

        if (params->messages == NULL) {
            params->messages = ngx_array_create(p->request->pool, 8,
                                               sizeof(ngx_http_gpu_message_t));
            if (params->messages == NULL) {
                p->nomem = 1;
                return 0;
            }
        }

        return 1;

    case NGX_HTTP_GPU_F_TOP_K:

        if (type == NGX_HTTP_GPU_JSON_NULL) {
            params->top_k = 0;
            return 1;
        }

        if (type != NGX_HTTP_GPU_JSON_NUMBER) {
            return ngx_http_gpu_type_error(p, "top_k", "an integer");
        }

        rc = ngx_http_gpu_parse_int(data, len, &v);

        if (rc == NGX_DECLINED) {
            return ngx_http_gpu_type_error(p, "top_k", "an integer");
        }

        if (rc == NGX_ABORT || v < -1) {
            if (rc == NGX_OK || *data == '-') {
                return ngx_http_gpu_fail(p, &p->field->name, "invalid_value",
                                         "`top_k` must be -1 or 0 (off) or "
                                         "a positive integer, got %*s",
                                         len, data);
            }

            v = NGX_MAX_INT32_VALUE;
        }

        /* larger than the vocabulary is the same as off */
        params->top_k = (ngx_int_t) ngx_min(v, NGX_MAX_INT32_VALUE);
        return 1;

    case NGX_HTTP_GPU_F_PENALTY:

        if (type == NGX_HTTP_GPU_JSON_NULL) {
            d = 0.0;

        } else if (type != NGX_HTTP_GPU_JSON_NUMBER) {
            return ngx_http_gpu_type_error(p, (char *) p->field->name.data,
                                           "a number");

        } else if (ngx_http_gpu_parse_double(p->request, data, len, &d)
                   != NGX_OK)
        {
            p->nomem = 1;
            return 0;

        } else if (!(d >= -2.0 && d <= 2.0)) {
            return ngx_http_gpu_fail(p, &p->field->name, "invalid_value",
                                     "`%V` must be between -2 and 2, got "
                                     "%*s", &p->field->name, len, data);
        }

        if (p->field->name.data[0] == 'p') {
            params->presence_penalty = d;

        } else {
            params->frequency_penalty = d;
        }

        return 1;

    case NGX_HTTP_GPU_F_LOGPROBS:

        if (p->endpoint == NGX_HTTP_GPU_E_CHAT) {

            if (type == NGX_HTTP_GPU_JSON_NULL) {
                params->chat_logprobs = 0;
                return 1;
            }

            if (type != NGX_HTTP_GPU_JSON_BOOL) {
                return ngx_http_gpu_type_error(p, "logprobs", "a boolean");
            }

            params->chat_logprobs = flag;
            return 1;
        }

        if (type == NGX_HTTP_GPU_JSON_NULL) {
            params->logprobs = -1;
            return 1;
        }

        if (type != NGX_HTTP_GPU_JSON_NUMBER) {
            return ngx_http_gpu_type_error(p, "logprobs", "an integer");
        }

        rc = ngx_http_gpu_parse_int(data, len, &v);

        if (rc == NGX_DECLINED) {
            return ngx_http_gpu_type_error(p, "logprobs", "an integer");
        }

        if (rc == NGX_ABORT || v < 0 || v > NGX_HTTP_GPU_LOGPROBS_MAX) {
            return ngx_http_gpu_fail(p, &p->field->name, "invalid_value",
                                     "`logprobs` must be an integer from 0 "
                                     "to %d, got %*s",
                                     NGX_HTTP_GPU_LOGPROBS_MAX, len, data);
        }

        params->logprobs = (ngx_int_t) v;
        return 1;

    case NGX_HTTP_GPU_F_TOP_LOGPROBS:

        if (type == NGX_HTTP_GPU_JSON_NULL) {
            params->top_logprobs = -1;
            return 1;
        }

        if (type != NGX_HTTP_GPU_JSON_NUMBER) {
            return ngx_http_gpu_type_error(p, "top_logprobs", "an integer");
        }

        rc = ngx_http_gpu_parse_int(data, len, &v);

        if (rc == NGX_DECLINED) {
            return ngx_http_gpu_type_error(p, "top_logprobs", "an integer");
        }

        if (rc == NGX_ABORT || v < 0 || v > NGX_HTTP_GPU_TOP_LOGPROBS_MAX) {
            return ngx_http_gpu_fail(p, &p->field->name, "invalid_value",
                                     "`top_logprobs` must be an integer "
                                     "from 0 to %d, got %*s",
                                     NGX_HTTP_GPU_TOP_LOGPROBS_MAX, len,
                                     data);
        }

        params->top_logprobs = (ngx_int_t) v;
        return 1;

    case NGX_HTTP_GPU_F_STOP:

        params->n_stop = 0;

        if (type == NGX_HTTP_GPU_JSON_NULL
            || type == NGX_HTTP_GPU_JSON_ARRAY)
        {
            return 1;
        }

        return ngx_http_gpu_stop_value(p, type, data, len);

    default: /* NGX_HTTP_GPU_F_UNSUPPORTED */
        return ngx_http_gpu_unsupported(p, type, data, len, flag);
    }
}


static int
ngx_http_gpu_nested_value(ngx_http_gpu_parser_t *p, ngx_uint_t level,
    ngx_uint_t type, u_char *data, size_t len, ngx_uint_t flag)
{
    switch (p->field->field) {

    case NGX_HTTP_GPU_F_PROMPT:

        if (level == 3
            && p->kind == NGX_HTTP_GPU_PROMPT_NESTED
            && type == NGX_HTTP_GPU_JSON_NUMBER)
        {
            return ngx_http_gpu_prompt_id(p, data, len);
        }

        if (level != 2) {
            break;
        }

        switch (type) {

        case NGX_HTTP_GPU_JSON_NUMBER:

            if (p->kind != NGX_HTTP_GPU_PROMPT_ANY
                && p->kind != NGX_HTTP_GPU_PROMPT_IDS)
            {
                break;
            }

            p->kind = NGX_HTTP_GPU_PROMPT_IDS;
            p->count++;

            return ngx_http_gpu_prompt_id(p, data, len);

        case NGX_HTTP_GPU_JSON_STRING:
        case NGX_HTTP_GPU_JSON_ARRAY:

            if (p->kind == NGX_HTTP_GPU_PROMPT_IDS) {
                break;
            }

            p->kind = (type == NGX_HTTP_GPU_JSON_STRING)
                      ? NGX_HTTP_GPU_PROMPT_STRINGS
                      : NGX_HTTP_GPU_PROMPT_NESTED;

            if (++p->count > 1) {
                return ngx_http_gpu_fail(p, &ngx_http_gpu_param_prompt,
                                         "unsupported_value",
                                         "batched prompts are not "
                                         "supported");
            }

            if (type == NGX_HTTP_GPU_JSON_STRING) {
                return ngx_http_gpu_prompt_text(p, data, len);
            }

            return 1;

        default:
            break;
        }

        break;

    case NGX_HTTP_GPU_F_STREAM_OPTIONS:

        if (level != 2 || p->option != NGX_HTTP_GPU_OPTION_USAGE) {
            return 1;
        }

        if (type == NGX_HTTP_GPU_JSON_NULL) {
            p->params->include_usage = 0;
            return 1;
        }

        if (type == NGX_HTTP_GPU_JSON_BOOL) {
            p->params->include_usage = flag;
            return 1;
        }

        return ngx_http_gpu_type_error(p, "stream_options.include_usage",
                                       "a boolean");

    case NGX_HTTP_GPU_F_MESSAGES:
        return ngx_http_gpu_message_value(p, level, type, data, len);

    case NGX_HTTP_GPU_F_STOP:

        if (level == 2) {
            return ngx_http_gpu_stop_value(p, type, data, len);
        }

        /* inside a wrong element, reported already */
        return 1;

    case NGX_HTTP_GPU_F_UNSUPPORTED:
        /* an element of tools and the like: not the default */
        return ngx_http_gpu_not_supported(p);

    default:
        /* a container of the wrong type, reported already */
        return 1;
    }

    return ngx_http_gpu_type_error(p, "prompt",
                                   "a string, an array of strings, "
                                   "an array of token ids or an array of "
                                   "one array of token ids");
}


static int
ngx_http_gpu_prompt_text(ngx_http_gpu_parser_t *p, u_char *data, size_t len)
{
    ngx_http_gpu_params_t  *params;

    params = p->params;

    params->prompt.data = ngx_pnalloc(p->request->pool, len);
    if (params->prompt.data == NULL && len) {
        p->nomem = 1;
        return 0;
    }

    ngx_memcpy(params->prompt.data, data, len);
    params->prompt.len = len;
    params->prompt_kind = GPU_PROMPT_TEXT;

    return 1;
}


static int
ngx_http_gpu_prompt_id(ngx_http_gpu_parser_t *p, u_char *data, size_t len)
{
    int64_t                 v;
    int32_t                *id;
    ngx_int_t               rc;
    ngx_http_gpu_params_t  *params;

    params = p->params;

    rc = ngx_http_gpu_parse_int(data, len, &v);

    if (rc == NGX_DECLINED) {
        return ngx_http_gpu_type_error(p, "prompt",
                                       "token ids to be integers");
    }

    if (rc == NGX_ABORT || v < 0 || v > NGX_MAX_INT32_VALUE) {
        return ngx_http_gpu_fail(p, &ngx_http_gpu_param_prompt,
                                 "invalid_token",
                                 "token id %*s in the prompt is outside "
                                 "the vocabulary", len, data);
    }

    if (params->ids == NULL) {
        params->ids = ngx_array_create(p->request->pool, 64, sizeof(int32_t));
        if (params->ids == NULL) {
            p->nomem = 1;
            return 0;
        }
    }

    id = ngx_array_push(params->ids);
    if (id == NULL) {
        p->nomem = 1;
        return 0;
    }

    *id = (int32_t) v;
    params->prompt_kind = GPU_PROMPT_TOKENS;

    return 1;
}


/* "stop": a string, or one element of an array of at most 4 */

static int
ngx_http_gpu_stop_value(ngx_http_gpu_parser_t *p, ngx_uint_t type,
    u_char *data, size_t len)
{
    ngx_str_t              *stop;
    ngx_http_gpu_params_t  *params;

    params = p->params;

    if (type != NGX_HTTP_GPU_JSON_STRING) {
        return ngx_http_gpu_type_error(p, "stop",
                                       "a string or an array of strings");
    }

    if (params->n_stop == GPU_STOP_MAX) {
        return ngx_http_gpu_fail(p, &ngx_http_gpu_param_stop,
                                 "invalid_value",
                                 "`stop` may hold at most %d sequences",
                                 GPU_STOP_MAX);
    }

    if (len == 0 || len > GPU_STOP_LEN) {
        return ngx_http_gpu_fail(p, &ngx_http_gpu_param_stop,
                                 "invalid_value",
                                 "each `stop` sequence must be 1 to %d "
                                 "bytes long", GPU_STOP_LEN);
    }

    stop = &params->stop[params->n_stop++];

    stop->data = ngx_pnalloc(p->request->pool, len);
    if (stop->data == NULL) {
        p->nomem = 1;
        return 0;
    }

    ngx_memcpy(stop->data, data, len);
    stop->len = len;

    return 1;
}


/* keys of a message (depth 3) and of a content part (depth 5) */

static int
ngx_http_gpu_message_key(ngx_http_gpu_parser_t *p, u_char *key, size_t len)
{
    ngx_uint_t  n;

    n = p->params->messages->nelts;

    p->key = NGX_HTTP_GPU_K_OTHER;

    if (p->depth == 3) {

        if (len == 4 && ngx_strncmp(key, "role", 4) == 0) {
            p->key = NGX_HTTP_GPU_K_ROLE;
            return 1;
        }

        if (len == 7 && ngx_strncmp(key, "content", 7) == 0) {
            p->key = NGX_HTTP_GPU_K_CONTENT;
            return 1;
        }

        if ((len == 4 && ngx_strncmp(key, "name", 4) == 0)
            || (len == 10 && ngx_strncmp(key, "tool_calls", 10) == 0)
            || (len == 12 && ngx_strncmp(key, "tool_call_id", 12) == 0)
            || (len == 13 && ngx_strncmp(key, "function_call", 13) == 0))
        {
            return ngx_http_gpu_fail(p, &ngx_http_gpu_param_messages,
                                     "unsupported_parameter",
                                     "`messages[%ui].%*s` is not supported "
                                     "yet", n - 1, len, key);
        }

        return ngx_http_gpu_fail(p, &ngx_http_gpu_param_messages,
                                 "unknown_parameter",
                                 "Unrecognized request argument supplied: "
                                 "messages[%ui].%*s", n - 1,
                                 ngx_min(len, NGX_HTTP_GPU_NAME_LEN), key);
    }

    if (p->depth == 5) {

        if (len == 4 && ngx_strncmp(key, "type", 4) == 0) {
            p->key = NGX_HTTP_GPU_K_TYPE;
            return 1;
        }

        if (len == 4 && ngx_strncmp(key, "text", 4) == 0) {
            p->key = NGX_HTTP_GPU_K_TEXT;
            return 1;
        }

        return ngx_http_gpu_fail(p, &ngx_http_gpu_param_messages,
                                 "unsupported_parameter",
                                 "content parts of type text only are "
                                 "supported: `messages[%ui].content[].%*s` "
                                 "is not", n - 1,
                                 ngx_min(len, NGX_HTTP_GPU_NAME_LEN), key);
    }

    return 1;
}


static int
ngx_http_gpu_message_value(ngx_http_gpu_parser_t *p, ngx_uint_t level,
    ngx_uint_t type, u_char *data, size_t len)
{
    ngx_uint_t               n;
    ngx_http_gpu_message_t  *m;

    n = p->params->messages->nelts;

    switch (level) {

    case 2:

        if (type != NGX_HTTP_GPU_JSON_OBJECT) {
            return ngx_http_gpu_fail(p, &ngx_http_gpu_param_messages,
                                     "invalid_type",
                                     "Invalid type for `messages[%ui]`: "
                                     "expected an object", n);
        }

        m = ngx_array_push(p->params->messages);
        if (m == NULL) {
            p->nomem = 1;
            return 0;
        }

        ngx_memzero(m, sizeof(ngx_http_gpu_message_t));
        p->msg = m;

        return 1;

    case 3:

        m = p->msg;

        if (p->key == NGX_HTTP_GPU_K_ROLE) {

            if (type != NGX_HTTP_GPU_JSON_STRING) {
                return ngx_http_gpu_fail(p, &ngx_http_gpu_param_messages,
                                         "invalid_type",
                                         "Invalid type for "
                                         "`messages[%ui].role`: expected a "
                                         "string", n - 1);
            }

            m->has_role = 1;

            if ((len == 6 && ngx_strncmp(data, "system", 6) == 0)
                || (len == 9 && ngx_strncmp(data, "developer", 9) == 0))
            {
                m->role = GPU_ROLE_SYSTEM;
                return 1;
            }

            if (len == 4 && ngx_strncmp(data, "user", 4) == 0) {
                m->role = GPU_ROLE_USER;
                return 1;
            }

            if (len == 9 && ngx_strncmp(data, "assistant", 9) == 0) {
                m->role = GPU_ROLE_ASSISTANT;
                return 1;
            }

            if ((len == 4 && ngx_strncmp(data, "tool", 4) == 0)
                || (len == 8 && ngx_strncmp(data, "function", 8) == 0))
            {
                return ngx_http_gpu_fail(p, &ngx_http_gpu_param_messages,
                                         "unsupported_value",
                                         "messages of role `%*s` are not "
                                         "supported yet", len, data);
            }

            return ngx_http_gpu_fail(p, &ngx_http_gpu_param_messages,
                                     "invalid_value",
                                     "Invalid value for "
                                     "`messages[%ui].role`: `%*s` is not "
                                     "one of system, developer, user, "
                                     "assistant", n - 1,
                                     ngx_min(len, NGX_HTTP_GPU_NAME_LEN),
                                     data);
        }

        if (p->key != NGX_HTTP_GPU_K_CONTENT) {
            return 1;
        }

        /* a repeated key replaces the content */

        ngx_str_null(&m->content);
        m->parts = 0;
        m->has_content = 0;

        if (type == NGX_HTTP_GPU_JSON_STRING) {
            m->has_content = 1;
            return ngx_http_gpu_append(p, &m->content, NULL, data, len);
        }

        if (type == NGX_HTTP_GPU_JSON_ARRAY) {
            m->has_content = 1;
            return 1;
        }

        if (type == NGX_HTTP_GPU_JSON_NULL) {
            return 1;
        }

        return ngx_http_gpu_fail(p, &ngx_http_gpu_param_messages,
                                 "invalid_type",
                                 "Invalid type for `messages[%ui].content`: "
                                 "expected a string or an array of content "
                                 "parts", n - 1);

    case 4:

        if (type != NGX_HTTP_GPU_JSON_OBJECT) {
            return ngx_http_gpu_fail(p, &ngx_http_gpu_param_messages,
                                     "invalid_type",
                                     "Invalid type for "
                                     "`messages[%ui].content[]`: expected "
                                     "an object", n - 1);
        }

        ngx_str_null(&p->part_text);
        p->part_text_set = 0;
        p->part_type_set = 0;

        return 1;

    case 5:

        if (type != NGX_HTTP_GPU_JSON_STRING) {
            return ngx_http_gpu_fail(p, &ngx_http_gpu_param_messages,
                                     "invalid_type",
                                     "Invalid type in "
                                     "`messages[%ui].content[]`: expected "
                                     "a string", n - 1);
        }

        if (p->key == NGX_HTTP_GPU_K_TYPE) {

            if (len != 4 || ngx_strncmp(data, "text", 4) != 0) {
                return ngx_http_gpu_fail(p, &ngx_http_gpu_param_messages,
                                         "unsupported_value",
                                         "content parts of type `%*s` are "
                                         "not supported: text only",
                                         ngx_min(len, NGX_HTTP_GPU_NAME_LEN),
                                         data);
            }

            p->part_type_set = 1;
            return 1;
        }

        p->part_text_set = 1;
        ngx_str_null(&p->part_text);

        return ngx_http_gpu_append(p, &p->part_text, NULL, data, len);

    default:
        /* inside a part's value: a wrong type, reported already */
        return 1;
    }
}


static int
ngx_http_gpu_message_end(ngx_http_gpu_parser_t *p)
{
    ngx_uint_t               n;
    ngx_http_gpu_message_t  *m;

    m = p->msg;
    n = p->params->messages->nelts;

    if (m == NULL) {
        return 1;
    }

    p->msg = NULL;

    if (!m->has_role) {
        return ngx_http_gpu_fail(p, &ngx_http_gpu_param_messages,
                                 "missing_required_parameter",
                                 "Missing required parameter: "
                                 "`messages[%ui].role`", n - 1);
    }

    if (!m->has_content) {
        return ngx_http_gpu_fail(p, &ngx_http_gpu_param_messages,
                                 "missing_required_parameter",
                                 "Missing required parameter: "
                                 "`messages[%ui].content`", n - 1);
    }

    return 1;
}


/* a text part ends: its text joins the content, after a newline */

static int
ngx_http_gpu_part_end(ngx_http_gpu_parser_t *p)
{
    ngx_http_gpu_message_t  *m;

    m = p->msg;

    if (!p->part_type_set || !p->part_text_set) {
        return ngx_http_gpu_fail(p, &ngx_http_gpu_param_messages,
                                 "missing_required_parameter",
                                 "a content part needs `type` \"text\" "
                                 "and `text`");
    }

    return ngx_http_gpu_append(p, &m->content, m->parts++ ? "\n" : NULL,
                               p->part_text.data, p->part_text.len);
}


static int
ngx_http_gpu_append(ngx_http_gpu_parser_t *p, ngx_str_t *dst, char *sep,
    u_char *data, size_t len)
{
    u_char  *q;
    size_t   n, slen;

    slen = sep ? ngx_strlen(sep) : 0;
    n = dst->len + slen + len;

    q = ngx_pnalloc(p->request->pool, n ? n : 1);
    if (q == NULL) {
        p->nomem = 1;
        return 0;
    }

    if (dst->len) {
        ngx_memcpy(q, dst->data, dst->len);
    }

    if (slen) {
        ngx_memcpy(q + dst->len, sep, slen);
    }

    ngx_memcpy(q + dst->len + slen, data, len);

    dst->data = q;
    dst->len = n;

    return 1;
}


static int
ngx_http_gpu_unsupported(ngx_http_gpu_parser_t *p, ngx_uint_t type,
    u_char *data, size_t len, ngx_uint_t flag)
{
    double                 d;
    ngx_http_gpu_field_t  *f;

    f = p->field;

    if (type == NGX_HTTP_GPU_JSON_NULL) {
        return 1;
    }

    if (type != f->type) {
        return ngx_http_gpu_not_supported(p);
    }

    switch (type) {

    case NGX_HTTP_GPU_JSON_ARRAY:
    case NGX_HTTP_GPU_JSON_OBJECT:
        /* empty so far: any content is reported as it comes */
        return 1;

    case NGX_HTTP_GPU_JSON_STRING:

        if (len == 0) {
            return 1;
        }

        break;

    case NGX_HTTP_GPU_JSON_BOOL:

        if (flag == (ngx_uint_t) f->value) {
            return 1;
        }

        break;

    case NGX_HTTP_GPU_JSON_NUMBER:

        if (ngx_http_gpu_parse_double(p->request, data, len, &d) != NGX_OK) {
            p->nomem = 1;
            return 0;
        }

        if (d == f->value || d == f->value2) {
            return 1;
        }

        break;
    }

    return ngx_http_gpu_not_supported(p);
}


static int
ngx_http_gpu_not_supported(ngx_http_gpu_parser_t *p)
{
    return ngx_http_gpu_fail(p, &p->field->name, "unsupported_parameter",
                             "`%V` is not supported yet", &p->field->name);
}


static int
ngx_http_gpu_type_error(ngx_http_gpu_parser_t *p, char *param,
    char *expected)
{
    ngx_str_t  *name;

    name = ngx_http_gpu_copy_name(p->request, (u_char *) param,
                                  ngx_strlen(param));
    if (name == NULL) {
        p->nomem = 1;
        return 0;
    }

    return ngx_http_gpu_fail(p, name, "invalid_type",
                             "Invalid type for `%V`: expected %s",
                             name, expected);
}


static int
ngx_http_gpu_fail(ngx_http_gpu_parser_t *p, ngx_str_t *param, char *code,
    const char *fmt, ...)
{
    u_char   *msg, *last;
    va_list   args;

    if (p->failed) {
        return 1;
    }

    p->failed = 1;

    msg = ngx_pnalloc(p->request->pool, NGX_HTTP_GPU_MESSAGE_LEN);
    if (msg == NULL) {
        p->nomem = 1;
        return 0;
    }

    va_start(args, fmt);
    last = ngx_vslprintf(msg, msg + NGX_HTTP_GPU_MESSAGE_LEN, fmt, args);
    va_end(args);

    p->err->status = NGX_HTTP_BAD_REQUEST;
    ngx_str_set(&p->err->type, "invalid_request_error");

    if (param) {
        p->err->param = *param;

    } else {
        ngx_str_null(&p->err->param);
    }

    p->err->code.data = (u_char *) code;
    p->err->code.len = ngx_strlen(code);

    p->err->message.data = msg;
    p->err->message.len = last - msg;

    ngx_str_null(&p->err->allow);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, p->request->connection->log, 0,
                   "gpu request: %V: %V", &p->err->code, &p->err->message);

    /* go on: malformed JSON later in the body takes precedence */

    return 1;
}


static ngx_int_t
ngx_http_gpu_parse_int(u_char *data, size_t len, int64_t *value)
{
    size_t      i;
    uint64_t    v, max;
    ngx_uint_t  d, negative;

    /* yajl has checked the number's syntax */

    for (i = 0; i < len; i++) {
        if (data[i] == '.' || data[i] == 'e' || data[i] == 'E') {
            return NGX_DECLINED;
        }
    }

    negative = (len && data[0] == '-');

    max = negative ? NGX_HTTP_GPU_INT64_MAX + 1 : NGX_HTTP_GPU_INT64_MAX;

    v = 0;

    for (i = negative; i < len; i++) {
        d = data[i] - '0';

        if (v > (max - d) / 10) {
            return NGX_ABORT;
        }

        v = v * 10 + d;
    }

    *value = negative ? (int64_t) (0 - v) : (int64_t) v;

    return NGX_OK;
}


static ngx_int_t
ngx_http_gpu_parse_double(ngx_http_request_t *r, u_char *data, size_t len,
    double *value)
{
    u_char  *p, buf[64];

    if (len < sizeof(buf)) {
        p = buf;

    } else {
        p = ngx_pnalloc(r->pool, len + 1);
        if (p == NULL) {
            return NGX_ERROR;
        }
    }

    ngx_memcpy(p, data, len);
    p[len] = '\0';

    *value = strtod((char *) p, NULL);

    return NGX_OK;
}


static ngx_str_t *
ngx_http_gpu_copy_name(ngx_http_request_t *r, u_char *data, size_t len)
{
    ngx_str_t  *name;

    name = ngx_palloc(r->pool, sizeof(ngx_str_t));
    if (name == NULL) {
        return NULL;
    }

    name->len = ngx_min(len, NGX_HTTP_GPU_NAME_LEN);

    name->data = ngx_pnalloc(r->pool, name->len);
    if (name->data == NULL && name->len) {
        return NULL;
    }

    ngx_memcpy(name->data, data, name->len);

    return name;
}


static void
ngx_http_gpu_request_error(ngx_http_request_t *r, ngx_http_gpu_error_t *err,
    ngx_uint_t status, ngx_str_t *param, char *code, const char *fmt, ...)
{
    u_char   *msg, *last;
    va_list   args;

    err->status = status;
    ngx_str_set(&err->type, "invalid_request_error");

    if (param) {
        err->param = *param;

    } else {
        ngx_str_null(&err->param);
    }

    err->code.data = (u_char *) code;
    err->code.len = ngx_strlen(code);

    ngx_str_null(&err->allow);

    msg = ngx_pnalloc(r->pool, NGX_HTTP_GPU_MESSAGE_LEN);
    if (msg == NULL) {
        ngx_str_set(&err->message, "Invalid request");
        return;
    }

    va_start(args, fmt);
    last = ngx_vslprintf(msg, msg + NGX_HTTP_GPU_MESSAGE_LEN, fmt, args);
    va_end(args);

    err->message.data = msg;
    err->message.len = last - msg;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "gpu request: %V: %V", &err->code, &err->message);
}


/*
 * yajl allocates from the request pool: the size is kept in front of
 * every block for realloc(); ngx_pfree() gives back large blocks early
 */

static void *
ngx_http_gpu_json_malloc(void *ctx, size_t size)
{
    size_t  *p;

    p = ngx_palloc(ctx, sizeof(size_t) + size);
    if (p == NULL) {
        return NULL;
    }

    *p = size;

    return p + 1;
}


static void *
ngx_http_gpu_json_realloc(void *ctx, void *ptr, size_t size)
{
    void    *p;
    size_t  *old;

    if (ptr == NULL) {
        return ngx_http_gpu_json_malloc(ctx, size);
    }

    old = (size_t *) ptr - 1;

    if (*old >= size) {
        return ptr;
    }

    p = ngx_http_gpu_json_malloc(ctx, size);
    if (p == NULL) {
        return NULL;
    }

    ngx_memcpy(p, ptr, *old);

    (void) ngx_pfree(ctx, old);

    return p;
}


static void
ngx_http_gpu_json_free(void *ctx, void *ptr)
{
    if (ptr) {
        (void) ngx_pfree(ctx, (size_t *) ptr - 1);
    }
}
