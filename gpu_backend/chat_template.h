/*
 * chat_template.h - chat messages to prompt text, for the chat template
 * families ngx-gpu knows.  Hugging Face models ship a Jinja template in
 * tokenizer_config.json; rather than run Jinja, each family's template is
 * written out here by hand, and a model's template is recognised by the
 * strings that set its family apart:
 *
 *   chatml   <|im_start|>role\ncontent<|im_end|>\n ... (Qwen2, Qwen2.5,
 *            and others; a constant default system message is kept)
 *   qwen3    ChatML with Qwen3's handling of <think> in assistant turns
 *   llama2   <s>[INST] <<SYS>>\n..\n<</SYS>>\n\n.. [/INST] answer </s>
 *   llama3   <|begin_of_text|><|start_header_id|>role<|end_header_id|>
 *            \n\ncontent<|eot_id|> (Llama-3.1+: with the dated system
 *            header)
 *   glm4     [gMASK]<sop><|role|>\ncontent ... <|assistant|>
 *
 * The rendered text is what transformers' apply_chat_template(...,
 * add_generation_prompt=True) gives; it is tokenized without the
 * post-processor's BOS (the templates write their own).
 */

#ifndef GPU_CHAT_TEMPLATE_H
#define GPU_CHAT_TEMPLATE_H

#include <stddef.h>

#define CHAT_NONE     0
#define CHAT_CHATML   1
#define CHAT_QWEN3    2
#define CHAT_LLAMA2   3
#define CHAT_LLAMA3   4
#define CHAT_GLM4     5

#define CHAT_MAX_STOPS  4

typedef struct {
    int     family;                 /* CHAT_* */
    char    name[32];               /* "chatml", ..., "" for none */
    char   *bos;                    /* tokenizer_config's bos_token */
    char   *eos;
    char   *default_system;         /* chatml: used without a system turn */
    char    date[32];               /* llama3.1: "Today Date: ..." */
    int     dated;                  /* llama3.1+ system header */
    /* tokens that end an answer, beside the model's end-of-sequence */
    const char  *stops[CHAT_MAX_STOPS];
    int          n_stops;
} chat_template_t;

typedef struct {
    char    *p;
    size_t   len;
    size_t   cap;
} chat_buf_t;

/*
 * Load the template of the model in dir (tokenizer_config.json, or
 * chat_template.jinja beside it).  force: a family name that replaces
 * what the model says (--chat-template), or NULL.  A model without a
 * template, or with one of no known family, loads with family CHAT_NONE
 * (chat requests are refused).  0, or -1 with err set (an unknown
 * forced name, an unreadable file).
 */
int chat_template_load(const char *dir, const char *force,
    chat_template_t *ct, char *err, size_t errlen);
void chat_template_free(chat_template_t *ct);

/* fill in bos/eos the config does not give (from the tokenizer) */
void chat_template_default_tokens(chat_template_t *ct, const char *bos,
    const char *eos);

/* the family names --chat-template takes, for messages */
const char *chat_template_names(void);

/*
 * Render a GPU_PROMPT_CHAT record list (see channel.h) into out (which
 * grows; its old contents are replaced), with the generation prompt for
 * the assistant.  0, or -1 with a client-facing message in msg (bad
 * records, roles the template does not allow), or -2 out of memory.
 */
int chat_render(const chat_template_t *ct, const char *rec, size_t len,
    chat_buf_t *out, char *msg, size_t msglen);

#endif /* GPU_CHAT_TEMPLATE_H */
