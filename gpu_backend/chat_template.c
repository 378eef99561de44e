/*
 * chat_template.c - see chat_template.h.  Each render_* function is the
 * family's Jinja template written out in C; the comments quote what of
 * the template they follow.  Jinja's trim and Python's strip() remove
 * what str.isspace() calls whitespace, and so does py_strip here.
 */

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <yajl/yajl_tree.h>

#include "errbuf.h"
#include "readfile.h"
#include "channel.h"
#include "chat_template.h"
#include "unicode.h"

typedef struct {
    int          role;              /* gpu_chat_role_e */
    const char  *s;
    size_t       len;
} chat_msg_t;

typedef struct {
    const char  *s;
    size_t       len;
} span_t;

static const char  *role_name[] = { "system", "user", "assistant" };

static const struct {
    const char  *name;
    int          family;
} families[] = {
    { "chatml", CHAT_CHATML },
    { "qwen3", CHAT_QWEN3 },
    { "llama2", CHAT_LLAMA2 },
    { "llama3", CHAT_LLAMA3 },
    { "llama3.1", CHAT_LLAMA3 },
    { "glm4", CHAT_GLM4 },
};




const char *
chat_template_names(void)
{
    return "chatml, qwen3, llama2, llama3, llama3.1, glm4";
}


/* ---- loading -------------------------------------------------------- */

/* a special token as tokenizer_config writes it: "x" or {"content": "x"} */
static char *
token_string(yajl_val v)
{
    const char  *path[] = { "content", NULL };

    if (YAJL_IS_OBJECT(v)) {
        v = yajl_tree_get(v, path, yajl_t_string);
    }
    return YAJL_IS_STRING(v) ? strdup(v->u.string) : NULL;
}


/* chat_template: a string, or [{"name": "default", "template": ...}] */
static char *
template_string(yajl_val v)
{
    const char  *name[] = { "name", NULL }, *tmpl[] = { "template", NULL };
    yajl_val     n, t;
    size_t       i;

    if (YAJL_IS_STRING(v)) {
        return strdup(v->u.string);
    }
    for (i = 0; YAJL_IS_ARRAY(v) && i < v->u.array.len; i++) {
        n = yajl_tree_get(v->u.array.values[i], name, yajl_t_string);
        t = yajl_tree_get(v->u.array.values[i], tmpl, yajl_t_string);
        if (YAJL_IS_STRING(n) && YAJL_IS_STRING(t)
            && strcmp(n->u.string, "default") == 0)
        {
            return strdup(t->u.string);
        }
    }
    return NULL;
}


/* q..end is inside one Jinja string literal: no unescaped quote, no {{ */
static int
jinja_constant(const char *q, const char *end)
{
    for ( ; q < end; q++) {
        if (*q == '\\') {
            q++;
        } else if (*q == '\'' || *q == '"' || *q == '{') {
            return 0;
        }
    }
    return 1;
}


/*
 * ChatML's constant default system message: the Jinja string literal
 * '<|im_start|>system\n<text><|im_end|>' with nothing but text between
 * (Qwen2: "You are a helpful assistant.").  Unescapes \n, \', \", \\.
 */
static char *
default_system(const char *tmpl)
{
    static const char  head[] = "<|im_start|>system\\n";
    const char        *p, *q, *end;
    char              *out, *o;

    for (p = strstr(tmpl, head); p != NULL; p = strstr(p + 1, head)) {
        q = p + sizeof(head) - 1;
        end = strstr(q, "<|im_end|>");
        if (end == NULL || end <= q || !jinja_constant(q, end)) {
            continue;
        }
        if ((out = o = malloc((size_t) (end - q) + 1)) == NULL) {
            return NULL;
        }
        for ( ; q < end; q++) {
            if (*q == '\\' && q + 1 < end) {
                q++;
                *o++ = *q == 'n' ? '\n' : *q == 't' ? '\t' : *q;
            } else {
                *o++ = *q;
            }
        }
        *o = '\0';
        return out;
    }
    return NULL;
}


/* Llama-3.1's default date_string, or 3.2's strftime_now: today */
static void
llama3_date(const char *tmpl, char *date, size_t len)
{
    static const char  key[] = "set date_string = \"";
    const char        *p = strstr(tmpl, key), *e;
    time_t             now;
    struct tm          tm;

    if (strstr(tmpl, "strftime_now") != NULL) {
        now = time(NULL);
        gmtime_r(&now, &tm);
        strftime(date, len, "%d %b %Y", &tm);
        return;
    }
    if (p != NULL && (e = strchr(p + sizeof(key) - 1, '"')) != NULL
        && (size_t) (e - p) < len + sizeof(key) - 1)
    {
        p += sizeof(key) - 1;
        snprintf(date, len, "%.*s", (int) (e - p), p);
        return;
    }
    snprintf(date, len, "26 Jul 2024");
}


static void
set_family(chat_template_t *ct, int family, const char *name)
{
    ct->family = family;
    snprintf(ct->name, sizeof(ct->name), "%s", name);
    ct->n_stops = 0;
    switch (family) {
    case CHAT_CHATML:
    case CHAT_QWEN3:
        ct->stops[ct->n_stops++] = "<|im_end|>";
        ct->stops[ct->n_stops++] = "<|endoftext|>";
        break;
    case CHAT_LLAMA3:
        ct->stops[ct->n_stops++] = "<|eot_id|>";
        ct->stops[ct->n_stops++] = "<|eom_id|>";
        ct->stops[ct->n_stops++] = "<|end_of_text|>";
        break;
    case CHAT_GLM4:
        ct->stops[ct->n_stops++] = "<|user|>";
        ct->stops[ct->n_stops++] = "<|observation|>";
        ct->stops[ct->n_stops++] = "<|endoftext|>";
        break;
    default:
        break;                      /* llama2: </s> is the model's EOS */
    }
}


/* the family of a Jinja template, from the strings that set it apart */
static void
recognise(chat_template_t *ct, const char *t)
{
    if (strstr(t, "<|im_start|>") != NULL) {
        if (strstr(t, "</think>") != NULL
            && strstr(t, "reasoning_content") != NULL)
        {
            set_family(ct, CHAT_QWEN3, "qwen3");
        } else {
            set_family(ct, CHAT_CHATML, "chatml");
            ct->default_system = default_system(t);
        }
    } else if (strstr(t, "<|start_header_id|>") != NULL
               && strstr(t, "<|eot_id|>") != NULL)
    {
        ct->dated = strstr(t, "Cutting Knowledge Date") != NULL;
        set_family(ct, CHAT_LLAMA3, ct->dated ? "llama3.1" : "llama3");
        if (ct->dated) {
            llama3_date(t, ct->date, sizeof(ct->date));
        }
    } else if (strstr(t, "[gMASK]") != NULL && strstr(t, "<sop>") != NULL
               && strstr(t, "<|assistant|>") != NULL)
    {
        set_family(ct, CHAT_GLM4, "glm4");
    } else if (strstr(t, "[INST]") != NULL && strstr(t, "<<SYS>>") != NULL) {
        set_family(ct, CHAT_LLAMA2, "llama2");
    }
}


int
chat_template_load(const char *dir, const char *force, chat_template_t *ct,
    char *err, size_t errlen)
{
    const char  *bos[] = { "bos_token", NULL }, *eos[] = { "eos_token", NULL };
    const char  *ctp[] = { "chat_template", NULL };
    char         path[4096], jerr[256], *text, *tmpl = NULL;
    yajl_val     root = NULL;
    size_t       i;

    memset(ct, 0, sizeof(*ct));

    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    /* absent or unreadable: no template from it */
    text = read_file(path, (size_t) 16 << 20, NULL, NULL, 0);
    if (text != NULL) {
        jerr[0] = '\0';
        root = yajl_tree_parse(text, jerr, sizeof(jerr));
        free(text);
        if (root == NULL) {
            jerr[strcspn(jerr, "\n")] = '\0';
            set_err(err, errlen, "%s: bad JSON: %s", path, jerr);
            return -1;
        }
        ct->bos = token_string(yajl_tree_get(root, bos, yajl_t_any));
        ct->eos = token_string(yajl_tree_get(root, eos, yajl_t_any));
        tmpl = template_string(yajl_tree_get(root, ctp, yajl_t_any));
        yajl_tree_free(root);
    }
    if (tmpl == NULL) {
        /* newer transformers save the template in a file of its own */
        snprintf(path, sizeof(path), "%s/chat_template.jinja", dir);
        tmpl = read_file(path, (size_t) 16 << 20, NULL, NULL, 0);
    }
    if (tmpl != NULL) {
        recognise(ct, tmpl);
    }

    if (force != NULL) {
        for (i = 0; i < sizeof(families) / sizeof(families[0]); i++) {
            if (strcmp(force, families[i].name) == 0) {
                break;
            }
        }
        if (i == sizeof(families) / sizeof(families[0])) {
            set_err(err, errlen, "--chat-template \"%s\" is unknown (known: "
                    "%s)", force, chat_template_names());
            free(tmpl);
            return -1;
        }
        if (ct->family != families[i].family) {
            free(ct->default_system);
            ct->default_system = NULL;
        }
        ct->dated = strcmp(force, "llama3.1") == 0;
        if (ct->dated && ct->date[0] == '\0') {
            llama3_date(tmpl ? tmpl : "", ct->date, sizeof(ct->date));
        }
        set_family(ct, families[i].family, families[i].name);
    }
    free(tmpl);
    return 0;
}


void
chat_template_default_tokens(chat_template_t *ct, const char *bos,
    const char *eos)
{
    if (ct->bos == NULL && bos != NULL) {
        ct->bos = strdup(bos);
    }
    if (ct->eos == NULL && eos != NULL) {
        ct->eos = strdup(eos);
    }
}


void
chat_template_free(chat_template_t *ct)
{
    free(ct->bos);
    free(ct->eos);
    free(ct->default_system);
    memset(ct, 0, sizeof(*ct));
}


/* ---- text helpers --------------------------------------------------- */

static int
put(chat_buf_t *b, const char *s, size_t n)
{
    size_t  cap;
    char   *p;

    if (b->len + n + 1 > b->cap) {
        for (cap = b->cap ? b->cap : 256; cap < b->len + n + 1; cap *= 2) {
            /* grow */
        }
        if ((p = realloc(b->p, cap)) == NULL) {
            return -1;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}


static int
puts_(chat_buf_t *b, const char *s)
{
    return s ? put(b, s, strlen(s)) : 0;
}


static int
put_span(chat_buf_t *b, span_t v)
{
    return put(b, v.s, v.len);
}


/* Python's str.isspace() */
static int
py_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85
           || c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a)
           || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f
           || c == 0x3000;
}


/* s.strip(): Jinja's trim */
static span_t
py_strip(span_t v)
{
    const unsigned char *s = (const unsigned char *) v.s;
    size_t               a = 0, b = v.len, k;
    uint32_t             c;
    int                  len;

    while (a < b && (len = uc_utf8_len(s + a, b - a, &c)) && py_space(c)) {
        a += len;
    }
    while (b > a) {
        for (k = b - 1; k > a && (s[k] & 0xc0) == 0x80; k--) {
            /* back to the start of the last character */
        }
        if (!((len = uc_utf8_len(s + k, b - k, &c)) && k + len == b
              && py_space(c)))
        {
            break;
        }
        b = k;
    }
    return (span_t) { v.s + a, b - a };
}


static span_t
strip_nl(span_t v, int left, int right)
{
    while (left && v.len && v.s[0] == '\n') {
        v.s++;
        v.len--;
    }
    while (right && v.len && v.s[v.len - 1] == '\n') {
        v.len--;
    }
    return v;
}


static const char *
find(span_t v, const char *what)
{
    return memmem(v.s, v.len, what, strlen(what));
}


static const char *
find_last(span_t v, const char *what)
{
    const char  *p, *last = NULL;
    size_t       n = strlen(what);

    for (p = v.s; (p = memmem(p, v.len - (p - v.s), what, n)) != NULL;
         p += 1)
    {
        last = p;
    }
    return last;
}


/* the record list as messages; -1 if malformed */
static int
parse_records(const char *rec, size_t len, chat_msg_t **out, int *n)
{
    chat_msg_t  *m;
    uint32_t     l;
    size_t       p;
    int          k = 0, cap = 0;

    *out = NULL;
    for (p = 0; p < len; p += GPU_CHAT_RECORD_HEAD + l) {
        if (len - p < GPU_CHAT_RECORD_HEAD) {
            goto bad;
        }
        memcpy(&l, rec + p + 1, 4);
        if ((unsigned char) rec[p] > GPU_ROLE_ASSISTANT
            || l > len - p - GPU_CHAT_RECORD_HEAD)
        {
            goto bad;
        }
        if (k == cap) {
            cap = cap ? 2 * cap : 8;
            if ((m = realloc(*out, cap * sizeof(chat_msg_t))) == NULL) {
                goto bad;
            }
            *out = m;
        }
        (*out)[k].role = (unsigned char) rec[p];
        (*out)[k].s = rec + p + GPU_CHAT_RECORD_HEAD;
        (*out)[k].len = l;
        k++;
    }
    *n = k;
    return k > 0 ? 0 : -1;

bad:
    free(*out);
    *out = NULL;
    return -1;
}


static span_t
content(const chat_msg_t *m)
{
    return (span_t) { m->s, m->len };
}


/* ---- the families --------------------------------------------------- */

/*
 * {% for message in messages %}{% if loop.first and messages[0]['role']
 * != 'system' %}<default system>{% endif %}{{'<|im_start|>' +
 * message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}
 * {% endfor %}{{ '<|im_start|>assistant\n' }}
 */
static int
render_chatml(const chat_template_t *ct, const chat_msg_t *m, int n,
    chat_buf_t *b)
{
    int  i, rc = 0;

    if (ct->default_system && m[0].role != GPU_ROLE_SYSTEM) {
        rc |= puts_(b, "<|im_start|>system\n");
        rc |= puts_(b, ct->default_system);
        rc |= puts_(b, "<|im_end|>\n");
    }
    for (i = 0; i < n; i++) {
        rc |= puts_(b, "<|im_start|>");
        rc |= puts_(b, role_name[m[i].role]);
        rc |= puts_(b, "\n");
        rc |= put_span(b, content(&m[i]));
        rc |= puts_(b, "<|im_end|>\n");
    }
    rc |= puts_(b, "<|im_start|>assistant\n");
    return rc ? -2 : 0;
}


/*
 * Qwen3: the system turn first; ns.last_query_index is the last user
 * turn; an assistant turn drops the reasoning before "</think>" unless
 * it comes after the last query (then it is kept in a <think> block if
 * it is the last turn or has reasoning).
 */
static int
render_qwen3(const chat_msg_t *m, int n, chat_buf_t *b)
{
    span_t       c, reason, r;
    const char  *p;
    int          i, last_query = n - 1, rc = 0;

    if (m[0].role == GPU_ROLE_SYSTEM) {
        rc |= puts_(b, "<|im_start|>system\n");
        rc |= put_span(b, content(&m[0]));
        rc |= puts_(b, "<|im_end|>\n");
    }
    for (i = n - 1; i >= 0; i--) {
        c = content(&m[i]);
        if (m[i].role == GPU_ROLE_USER
            && !(c.len >= 15 && memcmp(c.s, "<tool_response>", 15) == 0
                 && c.len >= 16
                 && memcmp(c.s + c.len - 16, "</tool_response>", 16) == 0))
        {
            last_query = i;
            break;
        }
    }
    for (i = 0; i < n; i++) {
        c = content(&m[i]);
        if (m[i].role == GPU_ROLE_USER
            || (m[i].role == GPU_ROLE_SYSTEM && i > 0))
        {
            rc |= puts_(b, "<|im_start|>");
            rc |= puts_(b, role_name[m[i].role]);
            rc |= puts_(b, "\n");
            rc |= put_span(b, c);
            rc |= puts_(b, "<|im_end|>\n");
            continue;
        }
        if (m[i].role != GPU_ROLE_ASSISTANT) {
            continue;
        }
        reason = (span_t) { "", 0 };
        if ((p = find_last(c, "</think>")) != NULL) {
            /* content.split('</think>')[0].rstrip('\n')
             *        .split('<think>')[-1].lstrip('\n') */
            r = (span_t) { c.s, (size_t) (find(c, "</think>") - c.s) };
            r = strip_nl(r, 0, 1);
            if ((p = find_last(r, "<think>")) != NULL) {
                r = (span_t) { p + 7, r.len - (size_t) (p + 7 - r.s) };
            }
            reason = strip_nl(r, 1, 0);
            /* content.split('</think>')[-1].lstrip('\n') */
            p = find_last(c, "</think>") + 8;
            c = strip_nl((span_t) { p, c.len - (size_t) (p - c.s) }, 1, 0);
        }
        rc |= puts_(b, "<|im_start|>assistant\n");
        if (i > last_query && (i == n - 1 || reason.len > 0)) {
            rc |= puts_(b, "<think>\n");
            rc |= put_span(b, strip_nl(reason, 1, 1));
            rc |= puts_(b, "\n</think>\n\n");
            c = strip_nl(c, 1, 0);
        }
        rc |= put_span(b, c);
        rc |= puts_(b, "<|im_end|>\n");
    }
    rc |= puts_(b, "<|im_start|>assistant\n");
    return rc ? -2 : 0;
}


/*
 * {% if messages[0]['role'] == 'system' %} loop over messages[1:] {% endif
 * %} roles must alternate user/assistant; the first user turn carries
 * '<<SYS>>\n' + system + '\n<</SYS>>\n\n'; user: bos + '[INST] ' +
 * content.strip() + ' [/INST]'; assistant: ' ' + content.strip() + ' ' +
 * eos
 */
static int
render_llama2(const chat_template_t *ct, const chat_msg_t *m, int n,
    chat_buf_t *b, char *msg, size_t msglen)
{
    chat_buf_t  tmp = { NULL, 0, 0 };
    span_t      c;
    int         i, first = 0, rc = 0;

    if (m[0].role == GPU_ROLE_SYSTEM) {
        first = 1;
    }
    for (i = first; i < n; i++) {
        if ((m[i].role == GPU_ROLE_USER) != ((i - first) % 2 == 0)) {
            set_err(msg, msglen, "Conversation roles must alternate "
                    "user/assistant/user/assistant/...");
            free(tmp.p);
            return -1;
        }
        c = content(&m[i]);
        if (i == first && first) {
            tmp.len = 0;
            rc |= puts_(&tmp, "<<SYS>>\n");
            rc |= put_span(&tmp, content(&m[0]));
            rc |= puts_(&tmp, "\n<</SYS>>\n\n");
            rc |= put_span(&tmp, c);
            if (rc != 0) {
                free(tmp.p);
                return -2;
            }
            c = (span_t) { tmp.p, tmp.len };
        }
        if (m[i].role == GPU_ROLE_USER) {
            rc |= puts_(b, ct->bos);
            rc |= puts_(b, "[INST] ");
            rc |= put_span(b, py_strip(c));
            rc |= puts_(b, " [/INST]");
        } else if (m[i].role == GPU_ROLE_ASSISTANT) {
            rc |= puts_(b, " ");
            rc |= put_span(b, py_strip(c));
            rc |= puts_(b, " ");
            rc |= puts_(b, ct->eos);
        }
    }
    free(tmp.p);
    return rc ? -2 : 0;
}


/*
 * Llama-3: bos + per turn '<|start_header_id|>' + role +
 * '<|end_header_id|>\n\n' + content | trim + '<|eot_id|>', then the
 * assistant header.  Llama-3.1+: the system turn always comes first,
 * with "Cutting Knowledge Date: December 2023\nToday Date: ..\n\n".
 */
static int
render_llama3(const chat_template_t *ct, const chat_msg_t *m, int n,
    chat_buf_t *b)
{
    int  i = 0, rc = 0;

    rc |= puts_(b, ct->bos);
    if (ct->dated) {
        rc |= puts_(b, "<|start_header_id|>system<|end_header_id|>\n\n"
                    "Cutting Knowledge Date: December 2023\nToday Date: ");
        rc |= puts_(b, ct->date);
        rc |= puts_(b, "\n\n");
        if (m[0].role == GPU_ROLE_SYSTEM) {
            rc |= put_span(b, py_strip(content(&m[0])));
            i = 1;
        }
        rc |= puts_(b, "<|eot_id|>");
    }
    for ( ; i < n; i++) {
        rc |= puts_(b, "<|start_header_id|>");
        rc |= puts_(b, role_name[m[i].role]);
        rc |= puts_(b, "<|end_header_id|>\n\n");
        rc |= put_span(b, py_strip(content(&m[i])));
        rc |= puts_(b, "<|eot_id|>");
    }
    rc |= puts_(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    return rc ? -2 : 0;
}


/* [gMASK]<sop>{% for item in messages %}<|role|>\n{{ content }}...
 * {% endfor %}<|assistant|> */
static int
render_glm4(const chat_msg_t *m, int n, chat_buf_t *b)
{
    int  i, rc = 0;

    rc |= puts_(b, "[gMASK]<sop>");
    for (i = 0; i < n; i++) {
        rc |= puts_(b, "<|");
        rc |= puts_(b, role_name[m[i].role]);
        rc |= puts_(b, "|>\n");
        rc |= put_span(b, content(&m[i]));
    }
    rc |= puts_(b, "<|assistant|>");
    return rc ? -2 : 0;
}


int
chat_render(const chat_template_t *ct, const char *rec, size_t len,
    chat_buf_t *out, char *msg, size_t msglen)
{
    chat_msg_t  *m;
    int          n, rc;

    if (ct->family == CHAT_NONE) {
        set_err(msg, msglen, "this model has no chat template ngx-gpu knows");
        return -1;
    }
    if (parse_records(rec, len, &m, &n) != 0) {
        set_err(msg, msglen, "malformed chat messages");
        return -1;
    }
    out->len = 0;
    if (put(out, "", 0) != 0) {
        free(m);
        return -2;
    }
    switch (ct->family) {
    case CHAT_CHATML:
        rc = render_chatml(ct, m, n, out);
        break;
    case CHAT_QWEN3:
        rc = render_qwen3(m, n, out);
        break;
    case CHAT_LLAMA2:
        rc = render_llama2(ct, m, n, out, msg, msglen);
        break;
    case CHAT_LLAMA3:
        rc = render_llama3(ct, m, n, out);
        break;
    default:
        rc = render_glm4(m, n, out);
        break;
    }
    free(m);
    return rc;
}
