/*
 * unicode.h - the Unicode properties the tokenizer needs: letter and
 * number classes (\p{L}, \p{N}), White_Space (\s), and NFC
 * normalisation.  The tables are generated (scripts/gen-unicode-tables,
 * unicode_tables.c) from Python's unicodedata.
 */

#ifndef GPU_UNICODE_H
#define GPU_UNICODE_H

#include <stddef.h>
#include <stdint.h>

#define UC_OTHER   0
#define UC_LETTER  1
#define UC_NUMBER  2

typedef struct {
    uint32_t  lo;
    uint32_t  hi;
    uint32_t  v;
} uc_range_t;

typedef struct {
    uint32_t  first;
    uint32_t  second;
    uint32_t  composite;
} uc_pair_t;

/* generated tables */
extern const uc_range_t  uc_letter_number[];
extern const int         uc_letter_number_n;
extern const uc_range_t  uc_ccc_ranges[];
extern const int         uc_ccc_ranges_n;
extern const uint32_t    uc_decomp_key[];
extern const uint16_t    uc_decomp_off[];
extern const uint32_t    uc_decomp_data[];
extern const int         uc_decomp_n;
extern const uc_pair_t   uc_compose[];
extern const int         uc_compose_n;
extern const uint32_t    uc_compose_second[];
extern const int         uc_compose_second_n;

/* UC_LETTER, UC_NUMBER or UC_OTHER */
int uc_class(uint32_t c);

/* Unicode White_Space, which is what \s matches in the tokenizer regexes */
int uc_is_space(uint32_t c);

/* canonical combining class */
int uc_ccc(uint32_t c);

/*
 * Decode the character at s[0..n): its length (1..4) and *cp, or 0 if
 * the bytes there are not valid UTF-8 (RFC 3629).
 */
int uc_utf8_len(const unsigned char *s, size_t n, uint32_t *cp);

/* encode c as UTF-8 into out (4 bytes room); returns the length */
int uc_utf8_put(uint32_t c, unsigned char *out);

/*
 * Is in[0..n) certainly in NFC already (the quick check: no combining
 * marks, nothing decomposable, nothing that composes with what is
 * before it)?  Most text is, and then needs no copy.
 */
int uc_nfc_quick(const char *in, size_t n);

/*
 * NFC of in[0..n) into out, which must hold 3 * n bytes (NFC never
 * grows UTF-8 by more); cps is scratch for 4 * n code points.  Bytes
 * that are not valid UTF-8 are copied unchanged and block composition
 * across them.  Returns the bytes written.
 */
size_t uc_nfc(const char *in, size_t n, char *out, uint32_t *cps);

#endif /* GPU_UNICODE_H */
