/*
 * pretok.h - the pre-tokenizer regexes of byte-level BPE tokenizers,
 * matched by hand over Unicode classes instead of by a regex engine.
 *
 * Two families are known, each recognised by its exact pattern:
 *
 *   GPT-2 (also ByteLevel's built-in regex):
 *     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+
 *     |\s+(?!\S)|\s+
 *   GPT-4 style (Llama-3 and GLM-4 with \p{N}{1,3}, Qwen2/3 with \p{N}):
 *     (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
 *     | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *
 * The matcher returns, for a position, where the regex's leftmost-first
 * match starting there ends.  Every character starts some alternative,
 * so the pieces tile the text (as HF's "Isolated" split keeps them).
 * Bytes that are not valid UTF-8 count as one symbol character each,
 * as U+FFFD would.
 */

#ifndef GPU_PRETOK_H
#define GPU_PRETOK_H

#include <stddef.h>

#define PRETOK_GPT2  1
#define PRETOK_GPT4  2

typedef struct {
    int  kind;                      /* PRETOK_* */
    int  max_digits;                /* GPT-4 style: digits per piece */
} pretok_t;

/* recognise a Split pattern; 0, or -1 if it is not a known one */
int pretok_parse(const char *pattern, pretok_t *p);

/* the GPT-2 pattern that ByteLevel uses with use_regex */
void pretok_gpt2(pretok_t *p);

/* end of the piece that starts at s[i] (i < n); always > i */
size_t pretok_next(const pretok_t *p, const char *s, size_t n, size_t i);

#endif /* GPU_PRETOK_H */
