/*
 * tokenizer.h - text <-> token ids from a Hugging Face tokenizer.json.
 *
 * BPE in two flavours behind the same calls: SentencePiece conventions
 * (the Llama-2 family: "▁" for spaces, a dummy-prefix space, byte
 * fallback to <0xNN> tokens) and byte-level (GPT-2, Llama-3, Qwen2/3,
 * GLM-4: a Split / ByteLevel regex pre-tokenizer, pieces spelled in
 * GPT-2's byte characters, NFC).  Both: merges by rank, added/special
 * tokens matched before BPE, and the post-processor's BOS.
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
 * on an internal error.  Added/special tokens written in the text ("<s>")
 * become their ids, as in HF.  Bytes that are not valid UTF-8 each become
 * their <0xNN> byte-fallback token.  Encoding and decoding only read the
 * tokenizer: threads may share one.
 */
int tokenizer_encode(const tokenizer_t *t, const char *text, size_t len,
    int add_special, int32_t *out, int cap);

/*
 * Bytes that token `tok` appends to a text whose previous token is `prev`
 * (-1 at the start of the output).  A byte-fallback token yields its raw
 * byte, a byte-level token its raw bytes: either may end or start inside
 * a multi-byte character.  Special tokens
 * (BOS, EOS) yield nothing.  Returns the byte count (<= cap).  After -1
 * or BOS the leading space of "▁word" is dropped, as HF's decoder does
 * at the start of a text.
 */
int tokenizer_decode_token(const tokenizer_t *t, int32_t prev, int32_t tok,
    char *buf, int cap);

/*
 * Overrides from the model's config.json, which is authoritative:
 * set_eos replaces the "</s>" guess; set_bos replaces what the
 * post-processor template puts before the text with just this id (its
 * suffix, if any, stays).  -1 (or an id outside the vocab) means none.
 */
void tokenizer_set_eos(tokenizer_t *t, int id);
void tokenizer_set_bos(tokenizer_t *t, int id);

/* id of a piece as spelled in tokenizer.json ("</s>", "▁the"), or -1 */
int tokenizer_token_id(const tokenizer_t *t, const char *piece);
/* the piece of an id as spelled in tokenizer.json, or NULL */
const char *tokenizer_piece(const tokenizer_t *t, int id);
/* 1 for added tokens marked special (they decode to nothing) */
int tokenizer_is_special(const tokenizer_t *t, int id);

#endif /* GPU_TOKENIZER_H */
