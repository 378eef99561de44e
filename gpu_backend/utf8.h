/*
 * utf8.h - keep generated text valid UTF-8 while it streams.
 *
 * Tokens can end in the middle of a character (byte-fallback tokens carry
 * single bytes).  The scheduler holds such a tail back until the character
 * is complete, and turns bytes that can never form a character into
 * U+FFFD, so that every byte an nginx worker reads is valid UTF-8.
 */

#ifndef GPU_UTF8_H
#define GPU_UTF8_H

#include <stddef.h>

/*
 * Copy the valid prefix of in[0..n) to out, replacing invalid bytes with
 * U+FFFD.  An incomplete but so-far valid sequence at the end (3 bytes at
 * most) is left unconsumed unless final is set (then it becomes U+FFFD
 * too).  out must hold 3 * n bytes.  Returns bytes written; *consumed
 * gets bytes read.
 */
size_t utf8_sanitize(const unsigned char *in, size_t n, int final,
    unsigned char *out, size_t *consumed);

/* the characters in valid UTF-8 p[0..n): the bytes that lead one */
size_t utf8_chars(const unsigned char *p, size_t n);

#endif
