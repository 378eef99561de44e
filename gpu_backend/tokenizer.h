/*
 * tokenizer.h - text <-> token ids from a Hugging Face tokenizer.json.
 *
 * Supported now: BPE with SentencePiece conventions (the Llama-2 family):
 * "▁" for spaces, a dummy-prefix space, merges by rank, byte fallback to
 * <0xNN> tokens, added/special tokens matched before BPE, and the
 * post-processor's BOS.  Byte-level BPE (GPT-2 style) comes later behind
 * the same calls.
 */

#ifndef GPU_TOKENIZER_H
#define GPU_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct tokenizer_s  tokenizer_t;

tokenizer_t *tokenizer_load(const char *path, char *err, size_t errlen);
void tokenizer_free(tokenizer_t *t);

int tokenizer_vocab_size(const tokenizer_t *t);
int tokenizer_bos_id(const tokenizer_t *t);     /* -1 if none */
int tokenizer_eos_id(const tokenizer_t *t);     /* -1 if none */
/* longest byte string a single token decodes to */
int tokenizer_max_token_bytes(const tokenizer_t *t);

/*
 * Encode len bytes of text.  add_special: apply the post-processor's
 * template (BOS for Llama-2).  Writes at most cap ids; returns the number
 * of ids the full encoding has (may exceed cap: the caller checks), or -1
 * on an internal error.
 */
int tokenizer_encode(const tokenizer_t *t, const char *text, size_t len,
    int add_special, int32_t *out, int cap);

/*
 * Bytes that token `tok` appends to a text whose previous token is `prev`
 * (-1 at the start of the output).  A byte-fallback token yields its raw
 * byte, which may be part of a multi-byte character.  Special tokens
 * (BOS, EOS) yield nothing.  Returns the byte count (<= cap).
 */
int tokenizer_decode_token(const tokenizer_t *t, int32_t prev, int32_t tok,
    char *buf, int cap);

#endif /* GPU_TOKENIZER_H */
