/*
 * test_unicode.c - the Unicode tables and NFC (unicode.c), GPT-2's byte
 * mapping (bytelevel.c) and the pre-tokenizer regex matchers (pretok.c).
 * The expected pieces are Hugging Face tokenizers' pre_tokenize_str of
 * the same strings; t/unit/check-tokenizer-oracle checks the whole
 * tokenizer on a corpus besides.
 */

#include "bytelevel.h"
#include "pretok.h"
#include "unicode.h"
#include "unit.h"


static void
test_classes(void)
{
    CHECK(uc_class('a') == UC_LETTER && uc_class('Z') == UC_LETTER, "ascii");
    CHECK(uc_class('7') == UC_NUMBER && uc_class('_') == UC_OTHER, "ascii");
    CHECK(uc_class(0xe9) == UC_LETTER, "é");
    CHECK(uc_class(0x4e2d) == UC_LETTER, "中 is Lo");
    CHECK(uc_class(0x3042) == UC_LETTER, "あ");
    CHECK(uc_class(0x2160) == UC_NUMBER, "Ⅰ is Nl");
    CHECK(uc_class(0xbd) == UC_NUMBER, "½ is No");
    CHECK(uc_class(0x0661) == UC_NUMBER, "Arabic-Indic one");
    CHECK(uc_class(0x1f999) == UC_OTHER, "🦙 is So");
    CHECK(uc_class(0x0301) == UC_OTHER, "a combining mark is M, not L");
    CHECK(uc_class(0x10ffff) == UC_OTHER, "unassigned");
    CHECK(uc_is_space(0x3000) && uc_is_space(0x85) && !uc_is_space(0x200b),
          "White_Space");
    CHECK(uc_ccc(0x301) == 230 && uc_ccc(0x323) == 220 && uc_ccc('a') == 0,
          "combining classes");
    printf("letter / number / space classes\n");
}


static void
nfc_is(const char *in, const char *want)
{
    static uint32_t  cps[4096];
    char             out[1024];
    size_t           n;

    n = uc_nfc(in, strlen(in), out, cps);
    CHECK(n == strlen(want) && memcmp(out, want, n) == 0,
          "NFC(\"%s\") = \"%.*s\", want \"%s\"", in, (int) n, out, want);
}


static void
test_nfc(void)
{
    nfc_is("cafe\xcc\x81", "caf\xc3\xa9");                 /* e + acute */
    nfc_is("A\xcc\x8a", "\xc3\x85");                        /* Å */
    nfc_is("\xe2\x84\xab", "\xc3\x85");                     /* Å sign */
    nfc_is("\xe2\x84\xa6", "\xce\xa9");                     /* Ω sign */
    nfc_is("a\xcc\x82\xcc\xa3", "\xe1\xba\xad");            /* ậ, reordered */
    nfc_is("a\xcc\xa3\xcc\x82", "\xe1\xba\xad");
    nfc_is("\xe0\xa5\x98", "\xe0\xa4\x95\xe0\xa4\xbc");     /* exclusion */
    nfc_is("\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8", "\xea\xb0\x81"); /* 각 */
    nfc_is("\xea\xb0\x80\xe1\x86\xa8", "\xea\xb0\x81");     /* 가 + ᆨ */
    nfc_is("\xef\xac\x81", "\xef\xac\x81");                 /* ﬁ: compat */
    nfc_is("e\xff\xcc\x81", "e\xff\xcc\x81");               /* invalid byte */
    nfc_is("\xcc\x81x", "\xcc\x81x");                       /* no starter */
    CHECK(uc_nfc_quick("plain ascii", 11), "ascii is NFC");
    CHECK(uc_nfc_quick("caf\xc3\xa9 \xe4\xb8\xad", 9), "composed text");
    CHECK(!uc_nfc_quick("cafe\xcc\x81", 6), "a combining mark");
    printf("NFC: composition, reordering, exclusions, Hangul\n");
}


static void
test_bytelevel(void)
{
    int  b, ok = 1;

    for (b = 0; b < 256; b++) {
        ok &= bytelevel_byte(bytelevel_char((unsigned char) b)) == b;
    }
    CHECK(ok, "every byte maps back");
    CHECK(bytelevel_char(' ') == 0x120 && bytelevel_char('\n') == 0x10a,
          "Ġ and Ċ");
    CHECK(bytelevel_char('a') == 'a' && bytelevel_char(0xad) == 0x143,
          "printable kept, soft hyphen last");
    CHECK(bytelevel_byte(0x144) == -1 && bytelevel_byte(0x20) == -1,
          "no byte");
    printf("GPT-2 byte <-> character map\n");
}


/* the pieces as "|"-joined text */
static void
pieces_are(const pretok_t *p, const char *in, const char *want)
{
    char    out[1024];
    size_t  i = 0, e, n = strlen(in), o = 0;

    while (i < n) {
        e = pretok_next(p, in, n, i);
        if (o) {
            out[o++] = '|';
        }
        memcpy(out + o, in + i, e - i);
        o += e - i;
        i = e;
    }
    out[o] = '\0';
    CHECK(strcmp(out, want) == 0, "split \"%s\": \"%s\", want \"%s\"", in,
          out, want);
}


static void
test_pretok(void)
{
    pretok_t  gpt2, qwen, llama3;

    CHECK(pretok_parse("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?"
                       "\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*"
                       "[\\r\\n]+|\\s+(?!\\S)|\\s+", &qwen) == 0
          && qwen.max_digits == 1, "the Qwen2 regex");
    CHECK(pretok_parse("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?"
                       "\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                       "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", &llama3) == 0
          && llama3.max_digits == 3, "the Llama-3 regex");
    CHECK(pretok_parse("\\w+|\\d", &gpt2) == -1, "an unknown regex");
    pretok_gpt2(&gpt2);

    /* HF tokenizers' pre_tokenize_str of the same strings */
    pieces_are(&qwen, "I'M here, don't", "I|'M| here|,| don|'t");
    pieces_are(&qwen, "x'\xc5\xbfy", "x|'\xc5\xbf|y");
    pieces_are(&qwen, "1234567 x", "1|2|3|4|5|6|7| x");
    pieces_are(&llama3, "1234567 x", "123|456|7| x");
    pieces_are(&qwen, "x  \n  y  ", "x|  \n| | y|  ");
    pieces_are(&qwen, "\t\tfoo", "\t|\tfoo");
    pieces_are(&qwen, "a\r\n\r\nb", "a|\r\n\r\n|b");
    pieces_are(&qwen, " 's", " '|s");
    pieces_are(&qwen, "\xf0\x9f\x98\x80!!\n\nx", "\xf0\x9f\x98\x80!!\n\n|x");
    pieces_are(&qwen, "a\xff" "bc", "a|\xff" "bc");
    pieces_are(&gpt2, "I'M here, don't", "I|'|M| here|,| don|'t");
    pieces_are(&gpt2, "hello  world\n\n  x", "hello| | world|\n\n | x");
    pieces_are(&gpt2, "abc123 45", "abc|123| 45");
    printf("pre-tokenizer regexes: GPT-2, Qwen2, Llama-3\n");
}


int
main(void)
{
    test_classes();
    test_nfc();
    test_bytelevel();
    test_pretok();
    return unit_report("test_unicode");
}
