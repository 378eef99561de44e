/*
 * test_chat_check.c - our chat templates against Jinja's rendering of
 * the templates they stand for, record by record, on the output of
 * scripts/chat-oracle --cases (see t/unit/check-chat-oracle):
 *
 *   NGX_GPU_CHAT_EXPECT=/tmp/expect.jsonl build/unit/test_chat_check
 *
 * Each record names the model directory whose tokenizer_config.json the
 * template is recognised from, the messages, and the text (or the error
 * the template raises, which we must refuse too).  Skips visibly when
 * NGX_GPU_CHAT_EXPECT is unset.
 */

#include <stdint.h>

#include <yajl/yajl_tree.h>

#include "channel.h"
#include "chat_template.h"
#include "unit.h"


static yajl_val
jget(yajl_val obj, const char *key)
{
    const char *path[] = { key, NULL };

    return yajl_tree_get(obj, path, yajl_t_any);
}


/* messages -> GPU_PROMPT_CHAT records; returns their length */
static size_t
records(yajl_val msgs, char *buf)
{
    const char *role, *content;
    uint32_t    len;
    size_t      i, n = 0;

    for (i = 0; YAJL_IS_ARRAY(msgs) && i < msgs->u.array.len; i++) {
        role = YAJL_GET_STRING(jget(msgs->u.array.values[i], "role"));
        content = YAJL_GET_STRING(jget(msgs->u.array.values[i], "content"));
        buf[n++] = strcmp(role, "system") == 0 ? GPU_ROLE_SYSTEM
                   : strcmp(role, "user") == 0 ? GPU_ROLE_USER
                   : GPU_ROLE_ASSISTANT;
        len = (uint32_t) strlen(content);
        memcpy(buf + n, &len, 4);
        memcpy(buf + n + 4, content, len);
        n += 4 + len;
    }
    return n;
}


static void
check_record(yajl_val rec, int lineno)
{
    static char      buf[65536];
    chat_template_t  ct;
    chat_buf_t       out = { NULL, 0, 0 };
    const char      *dir = YAJL_GET_STRING(jget(rec, "dir"));
    const char      *text = YAJL_GET_STRING(jget(rec, "text"));
    char             err[256], msg[256] = "";
    size_t           n;
    int              rc;

    if (dir == NULL || chat_template_load(dir, NULL, &ct, err,
                                          sizeof(err)) != 0)
    {
        CHECK(0, "line %d: cannot load the template of %s", lineno,
              dir ? dir : "?");
        return;
    }
    CHECK(ct.family != CHAT_NONE, "line %d: %s: no family recognised",
          lineno, dir);
    n = records(jget(rec, "messages"), buf);
    rc = chat_render(&ct, buf, n, &out, msg, sizeof(msg));
    if (text == NULL) {
        CHECK(rc == -1, "line %d: %s: rendered what Jinja refuses (%s)",
              lineno, dir, YAJL_GET_STRING(jget(rec, "error")));
    } else {
        CHECK(rc == 0 && out.len == strlen(text)
              && memcmp(out.p, text, out.len) == 0,
              "line %d: %s (%s):\n  ours:  \"%s\"\n  jinja: \"%s\"", lineno,
              dir, ct.name, rc == 0 ? out.p : msg, text);
    }
    free(out.p);
    chat_template_free(&ct);
}


int
main(void)
{
    const char *expect = getenv("NGX_GPU_CHAT_EXPECT");
    char        jerr[256], *line = NULL;
    size_t      cap = 0;
    int         lineno = 0;
    yajl_val    rec;
    FILE       *f;

    if (expect == NULL || *expect == '\0') {
        SKIP("NGX_GPU_CHAT_EXPECT unset (t/unit/check-chat-oracle makes "
             "it with scripts/chat-oracle)");
        return unit_report("test_chat_check");
    }
    f = fopen(expect, "r");
    CHECK(f != NULL, "open %s", expect);
    if (f == NULL) {
        return unit_report("test_chat_check");
    }
    while (getline(&line, &cap, f) > 0) {
        lineno++;
        rec = yajl_tree_parse(line, jerr, sizeof(jerr));
        CHECK(rec != NULL, "%s:%d: not a record", expect, lineno);
        if (rec != NULL) {
            check_record(rec, lineno);
        }
        yajl_tree_free(rec);
    }
    CHECK(lineno > 0, "%s has no records", expect);
    printf("checked %d chat renderings of %s against Jinja\n", lineno,
           expect);
    free(line);
    fclose(f);
    return unit_report("test_chat_check");
}
