/*
 * test_tokenizer.c - the SentencePiece-style BPE tokenizer: encodings
 * against Hugging Face `tokenizers`, decoding, round trips, special
 * tokens, invalid UTF-8, long inputs, and load errors.
 *
 * Expected ids were produced with the python `tokenizers` package (0.23):
 *   Tokenizer.from_file(PATH).encode(text, add_special_tokens=SP).ids
 * on build/models/stories260K/tokenizer.json and on the small
 * tokenizer.json files this test writes (the same JSON was fed to
 * Tokenizer.from_str).  scripts/tokenizer-oracle prints such ids for a
 * whole corpus; test_tokenizer_check compares them all.
 */

#include <stdint.h>
#include <time.h>

#include "tokenizer.h"
#include "unit.h"

#define MAXIDS  32

typedef struct {
    const char  *text;
    int          add_special;
    int          n;
    int32_t      ids[MAXIDS];
} enc_case_t;


/* ---- helpers -------------------------------------------------------- */

static int
ids_equal(const int32_t *a, int na, const int32_t *b, int nb)
{
    return na == nb && memcmp(a, b, (size_t) na * sizeof(int32_t)) == 0;
}


static void
show_ids(const char *what, const int32_t *ids, int n)
{
    int i;

    fprintf(stderr, "  %s:", what);
    for (i = 0; i < n && i < 64; i++) {
        fprintf(stderr, " %d", ids[i]);
    }
    fprintf(stderr, "\n");
}


static void
check_cases(const tokenizer_t *t, const char *name, const enc_case_t *c,
    int n)
{
    int32_t out[MAXIDS * 4];
    int     i, k;

    for (i = 0; i < n; i++) {
        k = tokenizer_encode(t, c[i].text, strlen(c[i].text),
                             c[i].add_special, out, MAXIDS * 4);
        CHECK(ids_equal(out, k, c[i].ids, c[i].n), "%s: encode \"%s\" (%d)",
              name, c[i].text, c[i].add_special);
        if (!ids_equal(out, k, c[i].ids, c[i].n)) {
            show_ids("ours", out, k);
            show_ids("HF  ", c[i].ids, c[i].n);
        }
    }
}


/* decode a whole id sequence; returns malloc'd bytes, *len set */
static char *
decode_all(const tokenizer_t *t, const int32_t *ids, int n, size_t *len)
{
    int     m = tokenizer_max_token_bytes(t), k;
    char   *buf = malloc((size_t) n * m + 1);
    size_t  o = 0;
    int32_t prev = -1;

    for (k = 0; k < n; k++) {
        o += tokenizer_decode_token(t, prev, ids[k], buf + o, m);
        prev = ids[k];
    }
    buf[o] = '\0';
    *len = o;
    return buf;
}


/* encode with add_special, decode, compare with the input bytes */
static void
check_round_trip(const tokenizer_t *t, const char *s, size_t n)
{
    int32_t *ids = malloc((n + 2) * 2 * sizeof(int32_t));
    char    *back;
    size_t   blen;
    int      k;

    k = tokenizer_encode(t, s, n, 1, ids, (int) (n + 2) * 2);
    CHECK(k > 0 && k <= (int) (n + 2) * 2, "encode %.40s: %d ids", s, k);
    back = decode_all(t, ids, k, &blen);
    CHECK(blen == n && memcmp(back, s, n) == 0,
          "round trip \"%.60s\" gave \"%.60s\"", s, back);
    free(back);
    free(ids);
}


static const char *
write_tmp(const char *tag, const char *content)
{
    static char path[8][256];
    static int  next;
    char       *p = path[next++ % 8];
    FILE       *f;

    snprintf(p, 256, "/tmp/ngx_gpu_tok_%d_%s.json", (int) getpid(), tag);
    f = fopen(p, "w");
    if (f == NULL) {
        perror(p);
        exit(1);
    }
    fputs(content, f);
    fclose(f);
    return p;
}


/* ---- stories260K ---------------------------------------------------- */

/* from HF tokenizers, see the top of the file */
static const enc_case_t stories_cases[] = {
    { "Once upon a time", 1, 5, { 1, 403, 407, 261, 378 } },
    { "Once upon a time", 0, 4, { 403, 407, 261, 378 } },
    { "", 1, 1, { 1 } },
    { "", 0, 0, { 0 } },
    { " ", 1, 3, { 1, 410, 410 } },
    { "  hi", 1, 5, { 1, 410, 410, 270, 417 } },
    { "Lily and Timmy were happy.", 1, 8,
      { 1, 317, 269, 405, 382, 276, 393, 426 } },
    { "a\n\nb", 1, 5, { 1, 261, 13, 13, 430 } },
    { "\n", 0, 2, { 410, 13 } },
    { "日本", 1, 8, { 1, 410, 233, 154, 168, 233, 159, 175 } },
    { "😀", 0, 5, { 410, 243, 162, 155, 131 } },
    { "é", 1, 3, { 1, 410, 485 } },
    /* specials are split out first; each text segment gets its own ▁ */
    { "a<s>b", 1, 4, { 1, 261, 1, 268 } },
    { "<s>hello", 1, 5, { 1, 1, 281, 306, 414 } },
    { "hello</s>", 0, 4, { 281, 306, 414, 2 } },
    { "x </s> y", 1, 7, { 1, 410, 444, 410, 2, 410, 348 } },
    { "<unk>", 1, 2, { 1, 0 } },
    { "</s", 1, 5, { 1, 410, 504, 492, 419 } },
    { "a  b   c", 1, 7, { 1, 261, 410, 268, 410, 410, 280 } },
    { "\ttab", 1, 6, { 1, 410, 12, 413, 412, 430 } },
    { "The big dog's \"ball\"!", 1, 12,
      { 1, 291, 370, 400, 428, 439, 419, 313, 430, 388, 436, 443 } },
    { "Timmy saw a bird and said hello.", 1, 13,
      { 1, 405, 394, 261, 268, 315, 418, 269, 336, 281, 306, 414, 426 } },
};

/*
 * Not valid UTF-8, which HF cannot be given (it takes a Python str).
 * Ours: every byte outside a valid character is its own <0xNN> token.
 */
static const enc_case_t invalid_cases[] = {
    { "\xff", 1, 3, { 1, 410, 258 } },
    { "a\xc3", 1, 3, { 1, 261, 198 } },
    { "\xe6\x97", 0, 3, { 410, 233, 154 } },            /* truncated */
    { "\xc0\xaf", 0, 3, { 410, 195, 178 } },            /* overlong */
    { "\xed\xa0\x80", 0, 4, { 410, 240, 163, 131 } },   /* surrogate */
    { "\xf4\x90\x80\x80", 0, 5, { 410, 247, 147, 131, 131 } },
    { "\x80x", 0, 3, { 410, 131, 444 } },
};


static void
test_stories_encode(const tokenizer_t *t)
{
    check_cases(t, "stories", stories_cases,
                sizeof(stories_cases) / sizeof(stories_cases[0]));
    check_cases(t, "stories invalid utf-8", invalid_cases,
                sizeof(invalid_cases) / sizeof(invalid_cases[0]));
    printf("stories260K encodings match HF tokenizers\n");
}


static void
test_stories_decode(const tokenizer_t *t)
{
    static const char *texts[] = {
        "Once upon a time, there was a little girl named Lily.",
        "  two leading spaces and   runs    of spaces  ",
        "line one\nline two\n\n\tindented\r\n",
        "日本語のテキスト、中文也可以。",
        "emoji 😀🎉 👍🏽 and a flag 🇫🇷",
        "naïve café — “quotes” …",
        " ",
        "\n",
        "x",
        "\xff\xfe broken \xc3 utf-8 \xe6\x97",
    };
    char    buf[64];
    size_t  i;
    int     n;

    for (i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        check_round_trip(t, texts[i], strlen(texts[i]));
    }

    n = tokenizer_decode_token(t, -1, 403, buf, sizeof(buf));
    CHECK(n == 4 && memcmp(buf, "Once", 4) == 0, "start strips the space");
    n = tokenizer_decode_token(t, 1, 403, buf, sizeof(buf));
    CHECK(n == 4 && memcmp(buf, "Once", 4) == 0, "after BOS too");
    n = tokenizer_decode_token(t, 403, 407, buf, sizeof(buf));
    CHECK(n == 5 && memcmp(buf, " upon", 5) == 0, "mid-text keeps it: %d", n);
    n = tokenizer_decode_token(t, 403, 13, buf, sizeof(buf));
    CHECK(n == 1 && buf[0] == '\n', "byte token <0x0A>");
    n = tokenizer_decode_token(t, 403, 233, buf, sizeof(buf));
    CHECK(n == 1 && (unsigned char) buf[0] == 0xe6, "byte token <0xE6>");
    n = tokenizer_decode_token(t, -1, 35, buf, sizeof(buf));
    CHECK(n == 0, "<0x20> at the start is stripped as HF's Strip does");
    CHECK(tokenizer_decode_token(t, 403, 1, buf, sizeof(buf)) == 0,
          "BOS decodes to nothing");
    CHECK(tokenizer_decode_token(t, 403, 2, buf, sizeof(buf)) == 0,
          "EOS decodes to nothing");
    CHECK(tokenizer_decode_token(t, 403, 0, buf, sizeof(buf)) == 0,
          "<unk> (special) decodes to nothing");
    CHECK(tokenizer_decode_token(t, 403, 512, buf, sizeof(buf)) == 0
          && tokenizer_decode_token(t, 403, -5, buf, sizeof(buf)) == 0,
          "out of range ids decode to nothing");
    n = tokenizer_decode_token(t, 403, 374, buf, 3);
    CHECK(n == 3 && memcmp(buf, " fr", 3) == 0, "cap truncates: %d", n);
    printf("stories260K decoding and round trips\n");
}


static void
test_stories_specials(tokenizer_t *t)
{
    int32_t out[8];
    int     n;

    CHECK(tokenizer_vocab_size(t) == 512, "vocab %d",
          tokenizer_vocab_size(t));
    CHECK(tokenizer_bos_id(t) == 1, "bos %d", tokenizer_bos_id(t));
    CHECK(tokenizer_eos_id(t) == 2, "eos %d", tokenizer_eos_id(t));
    /* "▁friend" and "▁little": 7 bytes once ▁ is a space */
    CHECK(tokenizer_max_token_bytes(t) == 7, "max token bytes %d",
          tokenizer_max_token_bytes(t));
    CHECK(tokenizer_token_id(t, "<s>") == 1 && tokenizer_token_id(t, "</s>")
          == 2 && tokenizer_token_id(t, "\xe2\x96\x81the") == 265
          && tokenizer_token_id(t, "<0x0A>") == 13
          && tokenizer_token_id(t, "nope") == -1, "token ids");
    CHECK(strcmp(tokenizer_piece(t, 403), "\xe2\x96\x81Once") == 0
          && tokenizer_piece(t, 512) == NULL, "pieces");
    CHECK(tokenizer_is_special(t, 0) && tokenizer_is_special(t, 1)
          && tokenizer_is_special(t, 2) && !tokenizer_is_special(t, 3)
          && !tokenizer_is_special(t, 403), "special flags");

    /* the ids count even past cap; only cap are written */
    out[2] = -7;
    n = tokenizer_encode(t, "Once upon a time", 16, 1, out, 2);
    CHECK(n == 5 && out[0] == 1 && out[1] == 403 && out[2] == -7,
          "cap 2: returns %d, writes 2", n);
    n = tokenizer_encode(t, "Once upon a time", 16, 1, NULL, 0);
    CHECK(n == 5, "NULL out counts: %d", n);

    tokenizer_set_eos(t, 5);
    CHECK(tokenizer_eos_id(t) == 5, "set_eos");
    tokenizer_set_eos(t, -1);
    CHECK(tokenizer_eos_id(t) == -1, "set_eos -1");
    tokenizer_set_eos(t, 2);
    tokenizer_set_bos(t, -1);
    n = tokenizer_encode(t, "Once", 4, 1, out, 8);
    CHECK(n == 1 && out[0] == 403 && tokenizer_bos_id(t) == -1,
          "set_bos -1: no BOS");
    tokenizer_set_bos(t, 1);
    n = tokenizer_encode(t, "Once", 4, 1, out, 8);
    CHECK(n == 2 && out[0] == 1 && tokenizer_bos_id(t) == 1, "set_bos 1");
    printf("stories260K specials, cap, overrides\n");
}


static void
test_stories_long(const tokenizer_t *t)
{
    static const char unit[] = "Once upon a time, Lily saw a big dog.";
    const int         reps = 20000;
    size_t            ul = strlen(unit), len = 0, blen;
    char             *text = malloc((ul + 1) * reps + 1), *back;
    int32_t           first[64], rest[64], *ids;
    int               nf, nr, n, i, ok = 1;
    struct timespec   a, b;
    double            secs;

    /* no stories piece holds ▁ past its start, so no merge crosses from
       one sentence into the next: the long text is the pieces repeated */
    nf = tokenizer_encode(t, unit, ul, 1, first, 64);
    text[0] = ' ';
    memcpy(text + 1, unit, ul);
    nr = tokenizer_encode(t, text, ul + 1, 0, rest, 64);
    CHECK(nr > 1 && rest[0] == 410, "\" Once\" starts with a lone ▁");

    memcpy(text, unit, ul);
    len = ul;
    for (i = 1; i < reps; i++) {
        text[len++] = ' ';
        memcpy(text + len, unit, ul);
        len += ul;
    }
    ids = malloc((len + 2) * sizeof(int32_t));
    clock_gettime(CLOCK_MONOTONIC, &a);
    n = tokenizer_encode(t, text, len, 1, ids, (int) len + 2);
    clock_gettime(CLOCK_MONOTONIC, &b);
    secs = (double) (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;

    CHECK(n == nf + (reps - 1) * (nr - 1), "long: %d ids", n);
    if (n == nf + (reps - 1) * (nr - 1)) {
        ok = ids_equal(ids, nf, first, nf);
        for (i = 1; ok && i < reps; i++) {
            ok = ids_equal(ids + nf + (i - 1) * (nr - 1), nr - 1, rest + 1,
                           nr - 1);
        }
    }
    CHECK(ok, "long text is the sentence's ids repeated");
    CHECK(secs < 2.0, "%zu bytes took %.3f s", len, secs);
    back = decode_all(t, ids, n, &blen);
    CHECK(blen == len && memcmp(back, text, len) == 0, "long round trip");
    printf("stories260K: %zu bytes -> %d ids in %.3f s\n", len, n, secs);

    /* one word of 200k characters, none of which merge */
    memset(text, 'x', 200000);
    clock_gettime(CLOCK_MONOTONIC, &a);
    n = tokenizer_encode(t, text, 200000, 0, ids, (int) len + 2);
    clock_gettime(CLOCK_MONOTONIC, &b);
    secs = (double) (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
    CHECK(n == 200001 && ids[0] == 410 && ids[1] == 444
          && ids[200000] == 444, "200k x: %d ids", n);
    CHECK(secs < 2.0, "200k x took %.3f s", secs);

    free(back);
    free(ids);
    free(text);
}


static void
test_stories(void)
{
    const char  *dir = unit_stories_dir();
    char         path[4096], err[512];
    tokenizer_t *t;

    if (dir == NULL) {
        SKIP("stories260K not built (make models): its tokenizer tests");
        return;
    }
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    t = tokenizer_load(path, err, sizeof(err));
    CHECK(t != NULL, "load %s: %s", path, err);
    if (t == NULL) {
        return;
    }
    test_stories_encode(t);
    test_stories_decode(t);
    test_stories_specials(t);
    test_stories_long(t);
    tokenizer_free(t);
}


/* ---- a small tokenizer, in three pre-processing styles -------------- */

/*
 * Vocab and merges chosen so that rank order, leftmost ties, "▁▁" runs,
 * lstrip / rstrip added tokens, unk fusing (no byte fallback) and merges
 * written as "a b" strings all show.  @ marks the normalizer, the
 * pre_tokenizer and the decoder.
 */
static const char small_json[] =
    "{\"version\": \"1.0\", \"added_tokens\": ["
    "{\"id\": 0, \"content\": \"<unk>\", \"single_word\": false, "
    "\"lstrip\": false, \"rstrip\": false, \"normalized\": false, "
    "\"special\": true}, "
    "{\"id\": 1, \"content\": \"<s>\", \"single_word\": false, "
    "\"lstrip\": false, \"rstrip\": false, \"normalized\": false, "
    "\"special\": true}, "
    "{\"id\": 2, \"content\": \"</s>\", \"single_word\": false, "
    "\"lstrip\": false, \"rstrip\": false, \"normalized\": false, "
    "\"special\": true}, "
    "{\"id\": 16, \"content\": \"<x>\", \"single_word\": false, "
    "\"lstrip\": true, \"rstrip\": false, \"normalized\": false, "
    "\"special\": false}, "
    "{\"id\": 17, \"content\": \"[y]\", \"single_word\": false, "
    "\"lstrip\": false, \"rstrip\": true, \"normalized\": false, "
    "\"special\": false}, "
    "{\"id\": 18, \"content\": \"<|s|>\", \"single_word\": false, "
    "\"lstrip\": false, \"rstrip\": false, \"normalized\": false, "
    "\"special\": true}], "
    "\"normalizer\": @, \"pre_tokenizer\": @, \"decoder\": @, "
    "\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": "
    "[{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}}, "
    "{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"pair\": [], "
    "\"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [1], "
    "\"tokens\": [\"<s>\"]}}}, "
    "\"model\": {\"type\": \"BPE\", \"dropout\": null, "
    "\"unk_token\": \"<unk>\", \"continuing_subword_prefix\": null, "
    "\"end_of_word_suffix\": null, \"fuse_unk\": true, "
    "\"byte_fallback\": false, \"vocab\": "
    "{\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2, \"▁\": 3, \"a\": 4, "
    "\"b\": 5, \"c\": 6, \"▁a\": 7, \"▁b\": 8, \"ab\": 9, \"▁ab\": 10, "
    "\"▁▁\": 11, \"▁▁▁▁\": 12, \"bc\": 13, \"abc\": 14, \"▁abc\": 15}, "
    "\"merges\": [\"▁ a\", \"b c\", \"a b\", \"▁a b\", \"ab c\", \"a bc\", "
    "\"▁ab c\", \"▁a bc\", \"▁ ▁\", \"▁▁ ▁▁\", \"▁ b\"]}}";

static const char small_norm[] =
    "{\"type\": \"Sequence\", \"normalizers\": ["
    "{\"type\": \"Prepend\", \"prepend\": \"▁\"}, "
    "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, "
    "\"content\": \"▁\"}]}";

static const char small_seq_decoder[] =
    "{\"type\": \"Sequence\", \"decoders\": ["
    "{\"type\": \"Replace\", \"pattern\": {\"String\": \"▁\"}, "
    "\"content\": \" \"}, {\"type\": \"ByteFallback\"}, "
    "{\"type\": \"Fuse\"}, "
    "{\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]}";

static const char small_meta_first[] =
    "{\"type\": \"Metaspace\", \"replacement\": \"▁\", "
    "\"prepend_scheme\": \"first\", \"split\": false}";

/* the older form: add_prefix_space, and split implied */
static const char small_meta_old[] =
    "{\"type\": \"Metaspace\", \"replacement\": \"▁\", "
    "\"add_prefix_space\": true}";

typedef struct {
    const char  *text;
    int          n;
    int32_t      ids[MAXIDS];
    const char  *decoded;       /* HF's decode (specials skipped) */
} small_case_t;

/* all with add_special; ids and decodes from HF tokenizers */
static const small_case_t small_norm_cases[] = {
    { "abc", 2, { 1, 15 }, "abc" },
    { " abc", 3, { 1, 3, 15 }, " abc" },
    { "  abc", 3, { 1, 11, 15 }, "  abc" },
    { "ab abc  c", 5, { 1, 10, 15, 11, 6 }, "ab abc  c" },
    { "a <x> b", 5, { 1, 7, 16, 11, 5 }, "a<x>  b" },
    { "a  <x>b", 4, { 1, 7, 16, 8 }, "a<x> b" },
    { "a[y]  b", 4, { 1, 7, 17, 8 }, "a[y] b" },
    { "abc<|s|> abc", 5, { 1, 15, 18, 3, 15 }, "abc  abc" },
    { "    a", 3, { 1, 12, 7 }, "    a" },
    { "", 1, { 1 }, "" },
    { "d", 3, { 1, 3, 0 }, "" },
    { "dd a d", 6, { 1, 3, 0, 7, 3, 0 }, " a " },
    { "a\nb", 4, { 1, 7, 0, 5 }, "ab" },
    { "éa", 4, { 1, 3, 0, 4 }, "a" },
    { "cab", 4, { 1, 3, 6, 9 }, "cab" },
    { "bcab c", 6, { 1, 3, 13, 9, 3, 6 }, "bcab c" },
    /* HF decodes "abc" here; we keep the space, as the token after the
       special <|s|> is not at the start (prev is neither -1 nor BOS) */
    { "<|s|>abc", 3, { 1, 18, 15 }, " abc" },
};

static const small_case_t small_meta_first_cases[] = {
    { "abc", 2, { 1, 15 }, "abc" },
    { " abc", 2, { 1, 15 }, "abc" },
    { "  abc", 3, { 1, 3, 15 }, " abc" },
    { "ab abc  c", 5, { 1, 10, 15, 11, 6 }, "ab abc  c" },
    { "a <x> b", 4, { 1, 7, 16, 8 }, "a<x> b" },
    { "a  <x>b", 4, { 1, 7, 16, 5 }, "a<x>b" },
    { "a[y]  b", 4, { 1, 7, 17, 5 }, "a[y]b" },
    { "<|s|>abc", 3, { 1, 18, 14 }, "abc" },
    { "abc<|s|> abc", 4, { 1, 15, 18, 15 }, "abc abc" },
    { "    a", 4, { 1, 11, 3, 7 }, "   a" },
    { "", 1, { 1 }, "" },
    { "dd a d", 6, { 1, 3, 0, 7, 3, 0 }, " a " },
    { "cab", 4, { 1, 3, 6, 9 }, "cab" },
};

static const small_case_t small_meta_old_cases[] = {
    { "abc", 2, { 1, 15 }, "abc" },
    { " abc", 2, { 1, 15 }, "abc" },
    { "  abc", 3, { 1, 3, 15 }, " abc" },
    { "ab abc  c", 6, { 1, 10, 15, 3, 3, 6 }, "ab abc  c" },
    { "a <x> b", 4, { 1, 7, 16, 8 }, "a<x> b" },
    { "a  <x>b", 4, { 1, 7, 16, 8 }, "a<x> b" },
    { "a[y]  b", 4, { 1, 7, 17, 8 }, "a[y] b" },
    { "<|s|>abc", 3, { 1, 18, 15 }, " abc" },    /* HF: "abc", see above */
    { "abc<|s|> abc", 4, { 1, 15, 18, 15 }, "abc abc" },
    { "    a", 5, { 1, 3, 3, 3, 7 }, "   a" },
    { "", 1, { 1 }, "" },
    { "dd a d", 6, { 1, 3, 0, 7, 3, 0 }, " a " },
    { "cab", 4, { 1, 3, 6, 9 }, "cab" },
};


/* small_json with its three @ filled in */
static char *
small_tokenizer(const char *norm, const char *pre, const char *dec)
{
    const char *fill[3] = { norm, pre, dec };
    size_t      n = sizeof(small_json) + strlen(norm) + strlen(pre)
                    + strlen(dec);
    char       *out = malloc(n), *o = out;
    const char *s;
    int         k = 0;

    for (s = small_json; *s; s++) {
        if (*s == '@' && k < 3) {
            o = stpcpy(o, fill[k++]);
        } else {
            *o++ = *s;
        }
    }
    *o = '\0';
    return out;
}


static void
check_small(const char *name, const char *norm, const char *pre,
    const char *dec, const small_case_t *c, int n)
{
    char        *json = small_tokenizer(norm, pre, dec), err[512], *back;
    const char  *path = write_tmp(name, json);
    tokenizer_t *t = tokenizer_load(path, err, sizeof(err));
    int32_t      out[MAXIDS * 4];
    size_t       blen;
    int          i, k;

    free(json);
    CHECK(t != NULL, "load %s: %s", name, err);
    if (t == NULL) {
        unlink(path);
        return;
    }
    CHECK(tokenizer_vocab_size(t) == 19 && tokenizer_bos_id(t) == 1
          && tokenizer_eos_id(t) == 2, "%s: sizes", name);
    for (i = 0; i < n; i++) {
        k = tokenizer_encode(t, c[i].text, strlen(c[i].text), 1, out,
                             MAXIDS * 4);
        CHECK(ids_equal(out, k, c[i].ids, c[i].n), "%s: encode \"%s\"",
              name, c[i].text);
        if (!ids_equal(out, k, c[i].ids, c[i].n)) {
            show_ids("ours", out, k);
            show_ids("HF  ", c[i].ids, c[i].n);
            continue;
        }
        back = decode_all(t, out, k, &blen);
        CHECK(strcmp(back, c[i].decoded) == 0,
              "%s: decode \"%s\" gave \"%s\", want \"%s\"", name, c[i].text,
              back, c[i].decoded);
        free(back);
    }
    tokenizer_free(t);
    unlink(path);
}


static void
test_small(void)
{
    check_small("norm", small_norm, "null", small_seq_decoder,
                small_norm_cases,
                sizeof(small_norm_cases) / sizeof(small_norm_cases[0]));
    check_small("meta_first", "null", small_meta_first, small_seq_decoder,
                small_meta_first_cases,
                sizeof(small_meta_first_cases)
                / sizeof(small_meta_first_cases[0]));
    check_small("meta_old", "null", small_meta_old, small_meta_old,
                small_meta_old_cases,
                sizeof(small_meta_old_cases)
                / sizeof(small_meta_old_cases[0]));
    printf("small tokenizer: Prepend/Replace normalizer, Metaspace "
           "first/no split, Metaspace old/split\n");
}


/* ---- load errors ---------------------------------------------------- */

static void
expect_error(const char *tag, const char *json, const char *want)
{
    const char  *path = json ? write_tmp(tag, json)
                             : "/tmp/ngx_gpu_tok_no_such_file.json";
    char         err[512] = "";
    tokenizer_t *t = tokenizer_load(path, err, sizeof(err));

    CHECK(t == NULL, "%s: loaded", tag);
    tokenizer_free(t);
    CHECK(strstr(err, path) != NULL && strstr(err, want) != NULL,
          "%s: error \"%s\" should name the file and say \"%s\"", tag, err,
          want);
    if (json) {
        unlink(path);
    }
}


static void
test_errors(void)
{
    char *json;

    expect_error("missing", NULL, "No such file");
    expect_error("badjson", "{\"model\": {\"type\": \"BPE\", \"vocab\": {",
                 "bad JSON");
    expect_error("notobj", "[1, 2]", "not a tokenizer.json");
    expect_error("nomodel", "{\"version\": \"1.0\"}", "no \"model\"");
    expect_error("unigram", "{\"model\": {\"type\": \"Unigram\", \"vocab\": "
                 "[[\"a\", -1.0]]}}", "Unigram not supported yet");
    expect_error("wordpiece", "{\"model\": {\"type\": \"WordPiece\", "
                 "\"vocab\": {\"a\": 0}}}", "\"WordPiece\" is not supported");
    expect_error("splitre", "{\"pre_tokenizer\": {\"type\": \"Sequence\", "
                 "\"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
                 "{\"Regex\": \"\\\\w+\"}, \"behavior\": \"Isolated\"}, "
                 "{\"type\": \"ByteLevel\"}]}, \"model\": {\"type\": "
                 "\"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
                 "is not one of the known");
    expect_error("splitstr", "{\"pre_tokenizer\": {\"type\": \"Split\", "
                 "\"pattern\": {\"String\": \" \"}, \"behavior\": "
                 "\"Isolated\"}, \"model\": {\"type\": \"BPE\", "
                 "\"vocab\": {\"a\": 0}, \"merges\": []}}",
                 "only a {\"Regex\"");
    expect_error("bytelevel_nodec", "{\"pre_tokenizer\": {\"type\": "
                 "\"ByteLevel\"}, \"model\": {\"type\": \"BPE\", "
                 "\"vocab\": {\"a\": 0}, \"merges\": []}}",
                 "needs a ByteLevel decoder");
    expect_error("novocab", "{\"model\": {\"type\": \"BPE\", \"merges\": []}}",
                 "no \"vocab\"");
    expect_error("badmerge", "{\"model\": {\"type\": \"BPE\", \"vocab\": "
                 "{\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}",
                 "not in the vocab");
    expect_error("nfkc", "{\"normalizer\": {\"type\": \"NFKC\"}, \"model\": "
                 "{\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
                 "normalizer \"NFKC\" is not supported");
    json = small_tokenizer("null", "{\"type\": \"Whitespace\"}", "null");
    expect_error("whitespace", json, "pre_tokenizer \"Whitespace\"");
    free(json);
    printf("load errors name the file and the problem\n");
}


int
main(void)
{
    test_stories();
    test_small();
    test_errors();
    return unit_report("test_tokenizer");
}
