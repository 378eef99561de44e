/*
 * test_chat.c - chat template loading (recognising a family from
 * tokenizer_config.json, --chat-template, ChatML's default system
 * message), bad message records, and stop strings (stop.c).  The
 * renderings themselves are checked against Jinja by test_chat_check.c.
 */

#include <sys/stat.h>

#include "channel.h"
#include "chat_template.h"
#include "stop.h"
#include "unit.h"


/* a model directory whose tokenizer_config.json holds this template */
static const char *
config_dir(const char *tag, const char *tmpl)
{
    static char  dir[256];
    char         path[300];
    FILE        *f;

    snprintf(dir, sizeof(dir), "/tmp/ngx_gpu_chat_%d_%s", (int) getpid(),
             tag);
    mkdir(dir, 0700);
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    f = fopen(path, "w");
    fprintf(f, "{\"bos_token\": {\"content\": \"<B>\"}, \"eos_token\": "
            "\"<E>\", \"chat_template\": \"%s\"}", tmpl);
    fclose(f);
    return dir;
}


static void
cleanup(const char *dir)
{
    char  path[300];

    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    unlink(path);
    rmdir(dir);
}


static void
expect_family(const char *tag, const char *tmpl, const char *name)
{
    const char      *dir = config_dir(tag, tmpl);
    chat_template_t  ct;
    char             err[256];

    CHECK(chat_template_load(dir, NULL, &ct, err, sizeof(err)) == 0,
          "%s: %s", tag, err);
    CHECK(strcmp(ct.name, name) == 0, "%s: family \"%s\", want \"%s\"", tag,
          ct.name, name);
    chat_template_free(&ct);
    cleanup(dir);
}


static size_t
rec(char *buf, int role, const char *s)
{
    uint32_t  n = (uint32_t) strlen(s);

    buf[0] = (char) role;
    memcpy(buf + 1, &n, 4);
    memcpy(buf + 5, s, n);
    return 5 + n;
}


static void
test_templates(void)
{
    chat_template_t  ct;
    chat_buf_t       out = { NULL, 0, 0 };
    char             err[256], msg[256], buf[256];
    const char      *dir;
    size_t           n;

    expect_family("chatml", "{{'<|im_start|>' + m + '<|im_end|>'}}",
                  "chatml");
    expect_family("qwen3", "<|im_start|> reasoning_content </think>",
                  "qwen3");
    expect_family("llama3", "<|start_header_id|>x<|eot_id|>", "llama3");
    expect_family("llama31", "<|start_header_id|><|eot_id|>Cutting "
                  "Knowledge Date", "llama3.1");
    expect_family("glm4", "[gMASK]<sop>{% if %}<|assistant|>", "glm4");
    expect_family("llama2", "[INST] <<SYS>>", "llama2");
    expect_family("mistral", "[INST] {{ message }} [/INST]", "");

    /* a constant default system message, Jinja escapes undone */
    dir = config_dir("default", "{{ '<|im_start|>system\\\\nYou are "
                     "\\\\'helpful\\\\'.<|im_end|>\\\\n' }}");
    CHECK(chat_template_load(dir, NULL, &ct, err, sizeof(err)) == 0, "%s",
          err);
    CHECK(ct.default_system != NULL
          && strcmp(ct.default_system, "You are 'helpful'.") == 0,
          "default system \"%s\"", ct.default_system);
    CHECK(ct.bos && strcmp(ct.bos, "<B>") == 0 && ct.eos
          && strcmp(ct.eos, "<E>") == 0, "bos/eos from the config");
    n = rec(buf, GPU_ROLE_USER, "hi");
    CHECK(chat_render(&ct, buf, n, &out, msg, sizeof(msg)) == 0
          && strcmp(out.p, "<|im_start|>system\nYou are 'helpful'."
                    "<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                    "<|im_start|>assistant\n") == 0, "\"%s\"", out.p);

    /* malformed records are refused */
    msg[0] = '\0';
    CHECK(chat_render(&ct, buf, n - 1, &out, msg, sizeof(msg)) == -1
          && strstr(msg, "malformed") != NULL, "a short record");
    buf[0] = 7;
    CHECK(chat_render(&ct, buf, n, &out, msg, sizeof(msg)) == -1,
          "an unknown role");
    CHECK(chat_render(&ct, buf, 0, &out, msg, sizeof(msg)) == -1,
          "no messages");
    chat_template_free(&ct);

    /* --chat-template overrides, and an unknown name is an error */
    CHECK(chat_template_load(dir, "llama3", &ct, err, sizeof(err)) == 0
          && ct.family == CHAT_LLAMA3 && ct.default_system == NULL,
          "forced llama3");
    chat_template_free(&ct);
    CHECK(chat_template_load(dir, "vicuna", &ct, err, sizeof(err)) == -1
          && strstr(err, "vicuna") != NULL, "unknown name: %s", err);
    cleanup(dir);

    /* no tokenizer_config.json: no family, unless forced */
    CHECK(chat_template_load("/nonexistent", NULL, &ct, err, sizeof(err))
          == 0 && ct.family == CHAT_NONE, "no config");
    n = rec(buf, GPU_ROLE_USER, "hi");
    CHECK(chat_render(&ct, buf, n, &out, msg, sizeof(msg)) == -1,
          "no family: refused");
    chat_template_free(&ct);
    CHECK(chat_template_load("/nonexistent", "chatml", &ct, err, sizeof(err))
          == 0 && ct.family == CHAT_CHATML && ct.n_stops == 2,
          "forced chatml: stops at <|im_end|>, <|endoftext|>");
    chat_template_free(&ct);
    free(out.p);
    printf("chat templates: families, forcing, default system, records\n");
}


static void
test_stop(void)
{
    gpu_slot_t  *slot = calloc(1, sizeof(gpu_slot_t));
    stop_set_t   ss;
    const char  *t;

    slot->n_stop = 3;
    slot->stop_len[0] = 8;
    memcpy(slot->stop[0], "little g", 8);
    slot->stop_len[1] = 0;                  /* ignored */
    slot->stop_len[2] = 3;
    memcpy(slot->stop[2], "\xf0\x9f\xa6", 3);
    stop_init(&ss, slot);
    CHECK(ss.n == 2 && ss.max_len == 8, "two stop strings");

    t = "there was a little";
    CHECK(stop_find(&ss, t, strlen(t), 0) == -1, "no stop yet");
    CHECK(stop_hold(&ss, t, strlen(t)) == 6, "\"little\" could become one");
    t = "there was a little girl";
    CHECK(stop_find(&ss, t, strlen(t), 18) == 12, "found across the end");
    CHECK(stop_find(&ss, t, strlen(t), 21) == -1,
          "a match that ended before `from` was seen already");
    t = "a little x";
    CHECK(stop_hold(&ss, t, strlen(t)) == 0, "\"x\" is no prefix");
    t = "a little l";
    CHECK(stop_hold(&ss, t, strlen(t)) == 1, "\"l\" is one");
    t = "ab\xf0\x9f";
    CHECK(stop_hold(&ss, t, strlen(t)) == 2, "a partial character");
    t = "a little go \xf0\x9f\xa6";
    CHECK(stop_find(&ss, t, strlen(t), 0) == 2, "the earliest wins");
    free(slot);
    printf("stop strings: find, hold back\n");
}


int
main(void)
{
    test_templates();
    test_stop();
    return unit_report("test_chat");
}
