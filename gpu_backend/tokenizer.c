/*
 * tokenizer.c - see tokenizer.h.  BPE as Hugging Face `tokenizers` runs
 * it, SentencePiece-style and byte-level, checked against that library
 * (scripts/tokenizer-oracle, t/unit/test_tokenizer*.c).
 *
 * Encoding, in HF's order:
 *   1. added tokens with normalized=false are split out of the raw text,
 *      leftmost-longest, honouring lstrip / rstrip / single_word;
 *   2. every non-empty text segment between them is normalised on its own
 *      (so Prepend "▁" applies once per segment, also after a special);
 *   3. added tokens with normalized=true are split out of the normalised
 *      text (their pattern is their content run through the normaliser,
 *      which is what HF matches too);
 *   4. a Metaspace pre-tokenizer, if any, replaces ' ' by "▁", prepends
 *      "▁" per its scheme and optionally splits before each "▁"; a
 *      byte-level one (ByteLevel, Split) cuts the text into pieces with
 *      its regex (pretok.c), each piece a word;
 *   5. each word is split into UTF-8 characters (vocab piece, else its
 *      bytes as <0xNN>, else unk) - byte-level: into bytes, each the
 *      vocab piece of its stand-in character (bytelevel.h) - then merged
 *      by lowest merge rank, leftmost first, using a heap over a linked
 *      list: O(n log n);
 *   6. the post-processor's template adds BOS (and anything else it puts
 *      around the sequence).
 *
 * Input that is not valid UTF-8 (HF cannot see it: it takes a Python
 * str): every byte that does not belong to a valid character becomes its
 * own <0xNN> byte-fallback token (unk without byte fallback).  Byte-level
 * BPE encodes such a byte as itself; the regex and NFC treat it as one
 * character of its own, as they would U+FFFD.
 *
 * Decoding: a byte-level vocab piece maps back to its raw bytes; an added
 * token outside the vocab decodes to its content as written, as in HF.
 */

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <yajl/yajl_tree.h>

#include "errbuf.h"
#include "readfile.h"
#include "bytelevel.h"
#include "pretok.h"
#include "tokenizer.h"
#include "unicode.h"

#define META_FIRST   0
#define META_ALWAYS  1
#define META_NEVER   2

#define NORM_PREPEND 0
#define NORM_REPLACE 1
#define NORM_NFC     2

typedef struct {
    int      kind;
    char    *a;          /* Prepend: text; Replace: pattern */
    size_t   alen;
    char    *b;          /* Replace: replacement */
    size_t   blen;
} norm_step_t;

typedef struct {
    char    *content;
    char    *pat;         /* what is matched: content, normalised if
                             normalized=true */
    size_t   plen;
    int      id;
    unsigned lstrip:1;
    unsigned rstrip:1;
    unsigned single_word:1;
    unsigned normalized:1;
    unsigned special:1;
} added_tok_t;

typedef struct {
    uint64_t key;         /* a << 32 | b, or ~0 if free */
    int32_t  rank;
    int32_t  new_id;
} merge_ent_t;

struct tokenizer_s {
    int           n_vocab;      /* highest id + 1 */
    char        **piece;        /* id -> piece as in the file, or NULL */
    uint32_t     *piece_len;
    char        **dec;          /* id -> decoded bytes */
    uint32_t     *dec_len;
    char        **meta_first;   /* strip_start 2: the first token's bytes,
                                   NUL-terminated; NULL: as dec */
    uint8_t      *special;
    int           max_bytes;

    int32_t      *vh;           /* model vocab: piece -> id, open addr. */
    size_t        vh_mask;
    int           vh_count;     /* pieces in the model vocab */

    merge_ent_t  *mh;           /* (a, b) -> rank, merged id */
    size_t        mh_mask;

    int           byte_id[256];
    int           unk_id;
    int           byte_fallback;
    int           fuse_unk;
    int           ignore_merges;

    norm_step_t  *norm;
    int           n_norm;

    int           meta;         /* Metaspace pre-tokenizer present */
    char          meta_rep[8];
    size_t        meta_rep_len;
    int           meta_scheme;
    int           meta_split;

    int           byte_level;   /* ByteLevel: GPT-2 byte <-> char pieces */
    int           bl_prefix;    /* ByteLevel add_prefix_space */
    pretok_t      split;        /* the Split regex, or ByteLevel's own */
    int           has_split;

    added_tok_t  *added;
    int           n_added;
    int          *ord[2];       /* [normalized] added indices by first
                                   byte, longest first */
    int           bucket[2][257];

    int          *prefix;       /* template ids around the sequence */
    int           n_prefix;
    int           cap_prefix;
    int          *suffix;
    int           n_suffix;
    int           cap_suffix;
    int           bos;
    int           eos;
    int           strip_start;  /* at the start of a text the decoder
                                   drops: 1 one leading space (Strip),
                                   2 every "▁" of the token (Metaspace) */
};




/* ---- UTF-8: characters are read with uc_utf8_len() (unicode.h) ---- */

/* Rust's char::is_whitespace (Unicode White_Space), as HF's strip uses */
static int
u8_is_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0
           || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028
           || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}


/*
 * HF's single_word test: alphanumeric or '_'.  Exact for ASCII; beyond it
 * an approximation without Unicode tables: letters and digits are assumed
 * except for the punctuation, symbol and emoji blocks.
 */
static int
u8_is_word(uint32_t c)
{
    if (c < 0x80) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')
               || (c >= 'A' && c <= 'Z') || c == '_';
    }
    if (u8_is_space(c) || (c >= 0x80 && c <= 0xbf) || c == 0xd7
        || c == 0xf7 || (c >= 0x2000 && c <= 0x2bff)
        || (c >= 0x3000 && c <= 0x303f) || (c >= 0xfe30 && c <= 0xfe4f)
        || (c >= 0xff00 && c <= 0xff0f) || (c >= 0xff1a && c <= 0xff20)
        || (c >= 0x1f000 && c <= 0x1ffff))
    {
        return 0;
    }
    return 1;
}


/* code point of the character ending at s[end], not before s[from] */
static int
u8_before(const unsigned char *s, size_t from, size_t end, uint32_t *cp)
{
    size_t p = end;
    int    k;

    while (p > from && end - p < 4) {
        p--;
        if ((s[p] & 0xc0) != 0x80) {
            k = uc_utf8_len(s + p, end - p, cp);
            return (k > 0 && p + (size_t) k == end) ? k : 0;
        }
    }
    return 0;
}


/* ---- growable byte buffer ------------------------------------------ */

typedef struct {
    char    *p;
    size_t   len;
    size_t   cap;
} tk_buf_t;

static int
buf_add(tk_buf_t *b, const void *s, size_t n)
{
    size_t  cap;
    char   *p;

    if (b->len + n > b->cap) {
        cap = b->cap ? b->cap : 64;
        while (cap < b->len + n) {
            cap *= 2;
        }
        p = realloc(b->p, cap);
        if (p == NULL) {
            return -1;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}


/* ---- hashing -------------------------------------------------------- */

static uint64_t
hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    size_t   i;

    for (i = 0; i < n; i++) {
        h = (h ^ (unsigned char) s[i]) * 1099511628211ULL;
    }
    return h ^ (h >> 29);
}


static uint64_t
hash_pair(uint64_t k)
{
    k *= 0x9e3779b97f4a7c15ULL;
    return k ^ (k >> 31);
}


static size_t
table_size(size_t n)
{
    size_t size = 16;

    while (size < 2 * n) {
        size *= 2;
    }
    return size;
}


/* model vocab id of the piece, or -1 */
static int
vocab_find(const tokenizer_t *t, const char *s, size_t n)
{
    size_t  i;
    int32_t id;

    for (i = hash_bytes(s, n) & t->vh_mask; ; i = (i + 1) & t->vh_mask) {
        id = t->vh[i];
        if (id < 0) {
            return -1;
        }
        if (t->piece_len[id] == n && memcmp(t->piece[id], s, n) == 0) {
            return id;
        }
    }
}


static const merge_ent_t *
merge_find(const tokenizer_t *t, int32_t a, int32_t b)
{
    uint64_t key = (uint64_t) (uint32_t) a << 32 | (uint32_t) b;
    size_t   i;

    for (i = hash_pair(key) & t->mh_mask; ; i = (i + 1) & t->mh_mask) {
        if (t->mh[i].key == key) {
            return &t->mh[i];
        }
        if (t->mh[i].key == ~0ULL) {
            return NULL;
        }
    }
}


/* ---- normaliser ----------------------------------------------------- */

/* NFC of out into tmp */
static int
nfc_step(tk_buf_t *out, tk_buf_t *tmp)
{
    uint32_t *cps;
    size_t    need = 3 * out->len + 4;

    cps = malloc((4 * out->len + 4) * sizeof(uint32_t));
    if (cps == NULL) {
        return -1;
    }
    if (tmp->cap < need) {
        free(tmp->p);
        tmp->p = malloc(need);
        tmp->cap = tmp->p ? need : 0;
        if (tmp->p == NULL) {
            free(cps);
            return -1;
        }
    }
    tmp->len = uc_nfc(out->p, out->len, tmp->p, cps);
    free(cps);
    return 0;
}


/* run the normaliser over in[0..n) into out (replacing its contents) */
static int
normalize(const tokenizer_t *t, const char *in, size_t n, tk_buf_t *out,
    tk_buf_t *tmp)
{
    const norm_step_t *st;
    tk_buf_t           swap;
    size_t             p, q;
    int                i;

    out->len = 0;
    if (buf_add(out, in, n) != 0) {
        return -1;
    }
    for (i = 0; i < t->n_norm; i++) {
        st = &t->norm[i];
        tmp->len = 0;
        if (st->kind == NORM_NFC) {
            if (uc_nfc_quick(out->p, out->len)) {
                continue;           /* most text is in NFC already */
            }
            if (nfc_step(out, tmp) != 0) {
                return -1;
            }
        } else if (st->kind == NORM_PREPEND) {
            if (out->len == 0) {
                continue;           /* HF prepends to non-empty text only */
            }
            if (buf_add(tmp, st->a, st->alen) != 0
                || buf_add(tmp, out->p, out->len) != 0)
            {
                return -1;
            }
        } else {
            for (p = q = 0; p < out->len; ) {
                if (st->alen > 0 && out->len - p >= st->alen
                    && memcmp(out->p + p, st->a, st->alen) == 0)
                {
                    if (buf_add(tmp, out->p + q, p - q) != 0
                        || buf_add(tmp, st->b, st->blen) != 0)
                    {
                        return -1;
                    }
                    p += st->alen;
                    q = p;
                } else {
                    p++;
                }
            }
            if (buf_add(tmp, out->p + q, out->len - q) != 0) {
                return -1;
            }
        }
        swap = *out;
        *out = *tmp;
        *tmp = swap;
    }
    return 0;
}


/* ---- added tokens --------------------------------------------------- */

/*
 * Leftmost-longest added token of one kind (normalized or not) in
 * s[from..n).  *ms..*me is the stretch it takes, lstrip/rstrip spaces
 * included.  As in HF, a match rejected by single_word is skipped whole,
 * without looking for shorter ones inside it.
 */
static int
find_added(const tokenizer_t *t, int normd, const char *str, size_t n,
    size_t from, size_t *ms, size_t *me, int *id)
{
    const unsigned char *s = (const unsigned char *) str;
    const added_tok_t   *a;
    size_t               p, start, stop;
    uint32_t             c;
    int                  k, lo, hi, len;

    for (p = from; p < n; ) {
        lo = t->bucket[normd][s[p]];
        hi = t->bucket[normd][s[p] + 1];
        a = NULL;
        for (k = lo; k < hi; k++) {
            a = &t->added[t->ord[normd][k]];
            if (a->plen <= n - p && memcmp(s + p, a->pat, a->plen) == 0) {
                break;
            }
            a = NULL;
        }
        if (a == NULL) {
            p++;
            continue;
        }
        start = p;
        stop = p + a->plen;
        if (a->single_word
            && ((start > 0 && u8_before(s, 0, start, &c) && u8_is_word(c))
                || (stop < n && uc_utf8_len(s + stop, n - stop, &c)
                    && u8_is_word(c))))
        {
            p = stop;
            continue;
        }
        if (a->lstrip) {
            while ((len = u8_before(s, from, start, &c)) && u8_is_space(c)) {
                start -= len;
            }
        }
        if (a->rstrip) {
            while (stop < n && (len = uc_utf8_len(s + stop, n - stop, &c))
                   && u8_is_space(c))
            {
                stop += len;
            }
        }
        *ms = start;
        *me = stop;
        *id = a->id;
        return 1;
    }
    return 0;
}


/* ---- encoding ------------------------------------------------------- */

typedef struct {
    int32_t  rank;
    int32_t  pos;
    int32_t  new_id;
} heap_ent_t;

typedef struct {
    const tokenizer_t *t;
    int32_t           *out;
    int                cap;
    int                n;
    tk_buf_t           norm, tmp, pre, lead;
    int32_t           *sym, *prev, *next;
    size_t             sym_cap;
    heap_ent_t        *heap;
    size_t             heap_len;
    size_t             heap_cap;
} enc_t;


static void
emit(enc_t *e, int32_t id)
{
    if (e->n < e->cap) {
        e->out[e->n] = id;
    }
    e->n++;
}


static int
heap_less(const heap_ent_t *x, const heap_ent_t *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}


static void
heap_push(enc_t *e, heap_ent_t v)
{
    size_t     i = e->heap_len++, up;
    heap_ent_t *h = e->heap;

    while (i > 0) {
        up = (i - 1) / 2;
        if (!heap_less(&v, &h[up])) {
            break;
        }
        h[i] = h[up];
        i = up;
    }
    h[i] = v;
}


static heap_ent_t
heap_pop(enc_t *e)
{
    heap_ent_t *h = e->heap, top = h[0], last = h[--e->heap_len];
    size_t      i = 0, c, n = e->heap_len;

    for (;;) {
        c = 2 * i + 1;
        if (c >= n) {
            break;
        }
        if (c + 1 < n && heap_less(&h[c + 1], &h[c])) {
            c++;
        }
        if (!heap_less(&h[c], &last)) {
            break;
        }
        h[i] = h[c];
        i = c;
    }
    if (n > 0) {
        h[i] = last;
    }
    return top;
}


static void
push_pair(enc_t *e, int32_t i, int32_t j)
{
    const merge_ent_t *m = merge_find(e->t, e->sym[i], e->sym[j]);
    heap_ent_t         v;

    if (m != NULL) {
        v.rank = m->rank;
        v.pos = i;
        v.new_id = m->new_id;
        heap_push(e, v);
    }
}


/* scratch for a word of n bytes: at most n symbols, 3n heap entries */
static int
reserve(enc_t *e, size_t n)
{
    void *p;

    if (n > e->sym_cap) {
        if ((p = realloc(e->sym, n * sizeof(int32_t))) == NULL) {
            return -1;
        }
        e->sym = p;
        if ((p = realloc(e->prev, n * sizeof(int32_t))) == NULL) {
            return -1;
        }
        e->prev = p;
        if ((p = realloc(e->next, n * sizeof(int32_t))) == NULL) {
            return -1;
        }
        e->next = p;
        e->sym_cap = n;
    }
    if (3 * n > e->heap_cap) {
        if ((p = realloc(e->heap, 3 * n * sizeof(heap_ent_t))) == NULL) {
            return -1;
        }
        e->heap = p;
        e->heap_cap = 3 * n;
    }
    return 0;
}


/* the vocab id of a whole word (byte-level: respelled), or -1 */
static int
word_find(enc_t *e, const char *w, size_t n)
{
    unsigned char  u[4];
    size_t         p;

    if (!e->t->byte_level) {
        return vocab_find(e->t, w, n);
    }
    e->pre.len = 0;
    for (p = 0; p < n; p++) {
        if (buf_add(&e->pre, u, uc_utf8_put(bytelevel_char((unsigned char) w[p]), u)) != 0) {
            return -1;
        }
    }
    return vocab_find(e->t, e->pre.p, e->pre.len);
}


/* BPE over one word */
static int
bpe(enc_t *e, const char *w, size_t n)
{
    const tokenizer_t   *t = e->t;
    const unsigned char *s = (const unsigned char *) w;
    const merge_ent_t   *m;
    heap_ent_t           top;
    size_t               p;
    uint32_t             c;
    int32_t              ns, i, j, id;
    int                  len, k, unk_open;

    if (n == 0) {
        return 0;
    }
    if (t->ignore_merges && (id = word_find(e, w, n)) >= 0) {
        emit(e, id);
        return 0;
    }
    if (reserve(e, n) != 0) {
        return -1;
    }

    /* characters (byte-level: bytes) -> symbols */
    ns = 0;
    unk_open = 0;
    for (p = 0; t->byte_level && p < n; p++) {
        if ((id = t->byte_id[s[p]]) >= 0) {
            e->sym[ns++] = id;
        } else if (t->unk_id >= 0) {
            e->sym[ns++] = t->unk_id;
        }
    }
    for (p = 0; !t->byte_level && p < n; p += len) {
        len = uc_utf8_len(s + p, n - p, &c);
        id = -1;
        if (len > 0) {
            id = vocab_find(t, w + p, len);
        } else {
            len = 1;                /* invalid byte: on its own */
        }
        if (id >= 0) {
            e->sym[ns++] = id;
            unk_open = 0;
            continue;
        }
        if (t->byte_fallback) {
            for (k = 0; k < len && t->byte_id[s[p + k]] >= 0; k++) {
                /* all bytes must have a token */
            }
            if (k == len) {
                for (k = 0; k < len; k++) {
                    e->sym[ns++] = t->byte_id[s[p + k]];
                }
                unk_open = 0;
                continue;
            }
        }
        if (t->unk_id >= 0 && !(unk_open && t->fuse_unk)) {
            e->sym[ns++] = t->unk_id;
            unk_open = 1;
        }
        /* no unk token: HF drops the character */
    }

    for (i = 0; i < ns; i++) {
        e->prev[i] = i - 1;
        e->next[i] = i + 1 < ns ? i + 1 : -1;
    }
    e->heap_len = 0;
    for (i = 0; i + 1 < ns; i++) {
        push_pair(e, i, i + 1);
    }

    /* lowest rank first, leftmost on ties; stale entries are skipped */
    while (e->heap_len > 0) {
        top = heap_pop(e);
        i = top.pos;
        if (e->sym[i] < 0 || (j = e->next[i]) < 0) {
            continue;
        }
        m = merge_find(t, e->sym[i], e->sym[j]);
        if (m == NULL || m->new_id != top.new_id) {
            continue;
        }
        e->sym[i] = m->new_id;
        e->sym[j] = -1;
        e->next[i] = e->next[j];
        if (e->next[j] >= 0) {
            e->prev[e->next[j]] = i;
        }
        if (e->prev[i] >= 0) {
            push_pair(e, e->prev[i], i);
        }
        if (e->next[i] >= 0) {
            push_pair(e, i, e->next[i]);
        }
    }

    for (i = 0; i >= 0 && i < ns; i = e->next[i]) {
        emit(e, e->sym[i]);
    }
    return 0;
}


/* ByteLevel's prefix space, the split regex, then BPE per piece */
static int
pretok_bytelevel(enc_t *e, const char *s, size_t n)
{
    const tokenizer_t *t = e->t;
    size_t             p, q;

    if (t->bl_prefix && s[0] != ' ') {
        e->lead.len = 0;
        if (buf_add(&e->lead, " ", 1) != 0
            || buf_add(&e->lead, s, n) != 0)
        {
            return -1;
        }
        s = e->lead.p;
        n = e->lead.len;
    }
    if (!t->has_split) {
        return bpe(e, s, n);
    }
    for (p = 0; p < n; p = q) {
        q = pretok_next(&t->split, s, n, p);
        if (bpe(e, s + p, q - p) != 0) {
            return -1;
        }
    }
    return 0;
}


/* Metaspace (if any) over one normalised piece, then BPE per word */
static int
pretok_bpe(enc_t *e, const char *s, size_t n, int at_start)
{
    const tokenizer_t *t = e->t;
    const char        *r = t->meta_rep;
    size_t             rl = t->meta_rep_len, p, q;

    if (n == 0) {
        return 0;
    }
    if (t->byte_level) {
        return pretok_bytelevel(e, s, n);
    }
    if (!t->meta) {
        return bpe(e, s, n);
    }

    e->pre.len = 0;
    if (t->meta_scheme == META_ALWAYS
        || (t->meta_scheme == META_FIRST && at_start))
    {
        /* only if it does not start with a space already */
        if (s[0] != ' ' && !(n >= rl && memcmp(s, r, rl) == 0)) {
            if (buf_add(&e->pre, r, rl) != 0) {
                return -1;
            }
        }
    }
    for (p = 0; p < n; p++) {
        if (buf_add(&e->pre, s[p] == ' ' ? r : s + p, s[p] == ' ' ? rl : 1)
            != 0)
        {
            return -1;
        }
    }
    if (!t->meta_split) {
        return bpe(e, e->pre.p, e->pre.len);
    }

    /* split before each replacement char, which starts the next word */
    for (p = q = 0; p < e->pre.len; ) {
        if (p > q && e->pre.len - p >= rl
            && memcmp(e->pre.p + p, r, rl) == 0)
        {
            if (bpe(e, e->pre.p + q, p - q) != 0) {
                return -1;
            }
            q = p;
        }
        p += (p + rl <= e->pre.len && memcmp(e->pre.p + p, r, rl) == 0)
             ? rl : 1;
    }
    return bpe(e, e->pre.p + q, e->pre.len - q);
}


/* one raw text segment (no raw added token in it) at offset off */
static int
encode_segment(enc_t *e, const char *s, size_t n, size_t off)
{
    const tokenizer_t *t = e->t;
    const char        *ns = s;
    size_t             nn = n, p, ms, me;
    int                id;

    if (n == 0) {
        return 0;
    }
    if (t->n_norm > 0) {
        if (normalize(t, s, n, &e->norm, &e->tmp) != 0) {
            return -1;
        }
        ns = e->norm.p;
        nn = e->norm.len;
    }
    for (p = 0; find_added(t, 1, ns, nn, p, &ms, &me, &id); p = me) {
        if (pretok_bpe(e, ns + p, ms - p, off == 0 && p == 0) != 0) {
            return -1;
        }
        emit(e, id);
    }
    return pretok_bpe(e, ns + p, nn - p, off == 0 && p == 0);
}


int
tokenizer_encode(const tokenizer_t *t, const char *text, size_t len,
    int add_special, int32_t *out, int cap)
{
    enc_t   e;
    size_t  p, ms, me;
    int     i, id, rc = 0;

    memset(&e, 0, sizeof(e));
    e.t = t;
    e.out = out;
    e.cap = out != NULL && cap > 0 ? cap : 0;

    if (add_special) {
        for (i = 0; i < t->n_prefix; i++) {
            emit(&e, t->prefix[i]);
        }
    }
    for (p = 0; rc == 0 && find_added(t, 0, text, len, p, &ms, &me, &id);
         p = me)
    {
        rc = encode_segment(&e, text + p, ms - p, p);
        emit(&e, id);
    }
    if (rc == 0) {
        rc = encode_segment(&e, text + p, len - p, p);
    }
    if (add_special) {
        for (i = 0; i < t->n_suffix; i++) {
            emit(&e, t->suffix[i]);
        }
    }

    free(e.norm.p);
    free(e.tmp.p);
    free(e.pre.p);
    free(e.lead.p);
    free(e.sym);
    free(e.prev);
    free(e.next);
    free(e.heap);
    return rc == 0 ? e.n : -1;
}


/* ---- decoding and queries ------------------------------------------ */

int
tokenizer_decode_token(const tokenizer_t *t, int32_t prev, int32_t tok,
    char *buf, int cap)
{
    const char *d;
    int         n, at_start;

    if (tok < 0 || tok >= t->n_vocab || cap <= 0) {
        return 0;
    }
    d = t->dec[tok];
    n = (int) t->dec_len[tok];
    at_start = prev < 0 || (prev == t->bos && t->bos >= 0);

    if (at_start && t->strip_start == 2 && t->meta_first[tok] != NULL) {
        d = t->meta_first[tok];
        n = (int) strlen(d);
    } else if (at_start && t->strip_start && n > 0 && d[0] == ' ') {
        /* HF's Strip decoder, llama2.c: no leading space at the start */
        d++;
        n--;
    }
    if (n > cap) {
        n = cap;
    }
    memcpy(buf, d, (size_t) n);
    return n;
}


int
tokenizer_vocab_size(const tokenizer_t *t)
{
    return t->n_vocab;
}


int
tokenizer_bos_id(const tokenizer_t *t)
{
    return t->bos;
}


int
tokenizer_eos_id(const tokenizer_t *t)
{
    return t->eos;
}


int
tokenizer_max_token_bytes(const tokenizer_t *t)
{
    return t->max_bytes;
}


void
tokenizer_set_eos(tokenizer_t *t, int id)
{
    t->eos = id >= 0 && id < t->n_vocab ? id : -1;
}


void
tokenizer_set_bos(tokenizer_t *t, int id)
{
    if (id < 0 || id >= t->n_vocab) {
        t->bos = -1;
        t->n_prefix = 0;
        return;
    }
    t->bos = id;
    t->prefix[0] = id;          /* load leaves room for one */
    t->n_prefix = 1;
}


int
tokenizer_token_id(const tokenizer_t *t, const char *piece)
{
    size_t n = strlen(piece);
    int    i;

    for (i = 0; i < t->n_added; i++) {
        if (strcmp(t->added[i].content, piece) == 0) {
            return t->added[i].id;
        }
    }
    return vocab_find(t, piece, n);
}


const char *
tokenizer_piece(const tokenizer_t *t, int id)
{
    if (id < 0 || id >= t->n_vocab) {
        return NULL;
    }
    return t->piece[id];
}


int
tokenizer_is_special(const tokenizer_t *t, int id)
{
    return id >= 0 && id < t->n_vocab && t->special[id];
}


void
tokenizer_free(tokenizer_t *t)
{
    int i;

    if (t == NULL) {
        return;
    }
    for (i = 0; i < t->n_vocab; i++) {
        free(t->piece[i]);
        if (t->dec != NULL) {
            free(t->dec[i]);
        }
        if (t->meta_first != NULL) {
            free(t->meta_first[i]);
        }
    }
    for (i = 0; i < t->n_norm; i++) {
        free(t->norm[i].a);
        free(t->norm[i].b);
    }
    for (i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].pat);
    }
    free(t->piece);
    free(t->piece_len);
    free(t->dec);
    free(t->dec_len);
    free(t->meta_first);
    free(t->special);
    free(t->vh);
    free(t->mh);
    free(t->norm);
    free(t->added);
    free(t->ord[0]);
    free(t->ord[1]);
    free(t->prefix);
    free(t->suffix);
    free(t);
}


/* ---- loading -------------------------------------------------------- */

typedef struct {
    const char *path;
    char       *err;
    size_t      errlen;
} load_ctx_t;


static yajl_val
jget(yajl_val obj, const char *key)
{
    size_t i;

    if (!YAJL_IS_OBJECT(obj)) {
        return NULL;
    }
    for (i = 0; i < obj->u.object.len; i++) {
        if (strcmp(obj->u.object.keys[i], key) == 0) {
            return obj->u.object.values[i];
        }
    }
    return NULL;
}


static const char *
jstr(yajl_val obj, const char *key)
{
    return YAJL_GET_STRING(jget(obj, key));
}


/* 1 / 0 for a JSON boolean, dflt when absent or null */
static int
jbool(yajl_val obj, const char *key, int dflt)
{
    yajl_val v = jget(obj, key);

    return YAJL_IS_TRUE(v) ? 1 : YAJL_IS_FALSE(v) ? 0 : dflt;
}


/* is there a {"type": type} in this component or its Sequence */
static int
has_type(yajl_val v, const char *type)
{
    const char *ty = jstr(v, "type");
    yajl_val    list;
    size_t      i;

    if (ty != NULL && strcmp(ty, type) == 0) {
        return 1;
    }
    if (YAJL_IS_OBJECT(v)) {
        for (i = 0; i < v->u.object.len; i++) {
            list = v->u.object.values[i];
            if (YAJL_IS_ARRAY(list)) {
                size_t k;

                for (k = 0; k < list->u.array.len; k++) {
                    if (has_type(list->u.array.values[k], type)) {
                        return 1;
                    }
                }
            }
        }
    }
    return 0;
}


/* grow the id space so that id is valid */
static int
ensure_id(tokenizer_t *t, int id)
{
    int   n = id + 1, i;
    void *p;

    if (id < t->n_vocab) {
        return 0;
    }
    if ((p = realloc(t->piece, n * sizeof(char *))) == NULL) {
        return -1;
    }
    t->piece = p;
    if ((p = realloc(t->piece_len, n * sizeof(uint32_t))) == NULL) {
        return -1;
    }
    t->piece_len = p;
    if ((p = realloc(t->special, n)) == NULL) {
        return -1;
    }
    t->special = p;
    for (i = t->n_vocab; i < n; i++) {
        t->piece[i] = NULL;
        t->piece_len[i] = 0;
        t->special[i] = 0;
    }
    t->n_vocab = n;
    return 0;
}


static int
load_vocab(tokenizer_t *t, yajl_val vocab, load_ctx_t *c)
{
    size_t   i, n = vocab->u.object.len, h, len;
    long long id;
    int      maxid = -1;

    for (i = 0; i < n; i++) {
        if (!YAJL_IS_INTEGER(vocab->u.object.values[i])) {
            set_err(c->err, c->errlen, "%s: model.vocab[\"%s\"] is not an "
                    "integer id", c->path, vocab->u.object.keys[i]);
            return -1;
        }
        id = YAJL_GET_INTEGER(vocab->u.object.values[i]);
        if (id < 0 || id > 0x7fffffff - 1) {
            set_err(c->err, c->errlen, "%s: model.vocab[\"%s\"] = %lld is out "
                    "of range", c->path, vocab->u.object.keys[i], id);
            return -1;
        }
        if (id > maxid) {
            maxid = (int) id;
        }
    }
    if (maxid >= 0 && ensure_id(t, maxid) != 0) {
        return -1;
    }

    t->vh_mask = table_size(n) - 1;
    t->vh = malloc((t->vh_mask + 1) * sizeof(int32_t));
    if (t->vh == NULL) {
        return -1;
    }
    memset(t->vh, 0xff, (t->vh_mask + 1) * sizeof(int32_t));

    for (i = 0; i < n; i++) {
        const char *k = vocab->u.object.keys[i];

        id = YAJL_GET_INTEGER(vocab->u.object.values[i]);
        len = strlen(k);
        if (vocab_find(t, k, len) >= 0) {
            continue;               /* duplicate key: first one wins */
        }
        if (t->piece[id] != NULL) {
            set_err(c->err, c->errlen, "%s: model.vocab: id %lld is used by "
                    "both \"%s\" and \"%s\"", c->path, id, t->piece[id], k);
            return -1;
        }
        if ((t->piece[id] = strdup(k)) == NULL) {
            return -1;
        }
        t->piece_len[id] = (uint32_t) len;
        t->vh_count++;
        for (h = hash_bytes(k, len) & t->vh_mask; t->vh[h] >= 0;
             h = (h + 1) & t->vh_mask)
        {
            /* probe */
        }
        t->vh[h] = (int32_t) id;
    }
    return 0;
}


/* merges as ["a", "b"] pairs or "a b" strings; a later duplicate wins */
static int
load_merges(tokenizer_t *t, yajl_val merges, load_ctx_t *c)
{
    size_t       i, n = merges ? merges->u.array.len : 0, h, la, lb;
    const char  *a, *b, *sp;
    char        *ab;
    int          ia, ib, id;
    uint64_t     key;

    t->mh_mask = table_size(n) - 1;
    t->mh = malloc((t->mh_mask + 1) * sizeof(merge_ent_t));
    if (t->mh == NULL) {
        return -1;
    }
    memset(t->mh, 0xff, (t->mh_mask + 1) * sizeof(merge_ent_t));

    for (i = 0; i < n; i++) {
        yajl_val m = merges->u.array.values[i];

        if (YAJL_IS_STRING(m)) {
            a = m->u.string;
            sp = strchr(a, ' ');
            if (sp == NULL) {
                goto bad;
            }
            la = (size_t) (sp - a);
            b = sp + 1;
        } else if (YAJL_IS_ARRAY(m) && m->u.array.len == 2
                   && YAJL_IS_STRING(m->u.array.values[0])
                   && YAJL_IS_STRING(m->u.array.values[1]))
        {
            a = m->u.array.values[0]->u.string;
            b = m->u.array.values[1]->u.string;
            la = strlen(a);
        } else {
            goto bad;
        }
        lb = strlen(b);
        ia = vocab_find(t, a, la);
        ib = vocab_find(t, b, lb);
        if ((ab = malloc(la + lb + 1)) == NULL) {
            return -1;
        }
        memcpy(ab, a, la);
        memcpy(ab + la, b, lb + 1);
        id = vocab_find(t, ab, la + lb);
        if (ia < 0 || ib < 0 || id < 0) {
            set_err(c->err, c->errlen, "%s: merge %zu (\"%.*s\" + \"%s\"): "
                    "%s is not in the vocab", c->path, i, (int) la, a, b,
                    id < 0 && ia >= 0 && ib >= 0 ? "the result" : "a part");
            free(ab);
            return -1;
        }
        free(ab);

        key = (uint64_t) (uint32_t) ia << 32 | (uint32_t) ib;
        for (h = hash_pair(key) & t->mh_mask;
             t->mh[h].key != ~0ULL && t->mh[h].key != key;
             h = (h + 1) & t->mh_mask)
        {
            /* probe */
        }
        t->mh[h].key = key;
        t->mh[h].rank = (int32_t) i;
        t->mh[h].new_id = id;
    }
    return 0;

bad:
    set_err(c->err, c->errlen, "%s: model.merges[%zu] is neither \"a b\" "
            "nor [\"a\", \"b\"]", c->path, i);
    return -1;
}


static int
add_norm_step(tokenizer_t *t, int kind, const char *a, const char *b)
{
    norm_step_t *p = realloc(t->norm, (t->n_norm + 1) * sizeof(*p));

    if (p == NULL) {
        return -1;
    }
    t->norm = p;
    p = &t->norm[t->n_norm++];
    memset(p, 0, sizeof(*p));
    p->kind = kind;
    p->a = strdup(a);
    p->alen = strlen(a);
    p->b = b ? strdup(b) : NULL;
    p->blen = b ? strlen(b) : 0;
    return p->a == NULL || (b && p->b == NULL) ? -1 : 0;
}


static int
load_normalizer(tokenizer_t *t, yajl_val n, load_ctx_t *c)
{
    const char *type, *s, *r;
    yajl_val    list, pat;
    size_t      i;

    if (n == NULL || YAJL_IS_NULL(n)) {
        return 0;
    }
    type = jstr(n, "type");
    if (type == NULL) {
        set_err(c->err, c->errlen, "%s: normalizer without a type", c->path);
        return -1;
    }
    if (strcmp(type, "Sequence") == 0) {
        list = jget(n, "normalizers");
        if (!YAJL_IS_ARRAY(list)) {
            set_err(c->err, c->errlen, "%s: normalizer Sequence without "
                    "\"normalizers\"", c->path);
            return -1;
        }
        for (i = 0; i < list->u.array.len; i++) {
            if (load_normalizer(t, list->u.array.values[i], c) != 0) {
                return -1;
            }
        }
        return 0;
    }
    if (strcmp(type, "Prepend") == 0) {
        if ((s = jstr(n, "prepend")) == NULL) {
            set_err(c->err, c->errlen, "%s: Prepend normalizer without "
                    "\"prepend\"", c->path);
            return -1;
        }
        return add_norm_step(t, NORM_PREPEND, s, NULL);
    }
    if (strcmp(type, "Replace") == 0) {
        pat = jget(n, "pattern");
        s = jstr(pat, "String");
        r = jstr(n, "content");
        if (s == NULL || r == NULL) {
            set_err(c->err, c->errlen, "%s: Replace normalizer: only a "
                    "{\"String\": ..} pattern is supported", c->path);
            return -1;
        }
        return add_norm_step(t, NORM_REPLACE, s, r);
    }
    if (strcmp(type, "NFC") == 0) {
        return add_norm_step(t, NORM_NFC, "", NULL);
    }
    set_err(c->err, c->errlen, "%s: normalizer \"%s\" is not supported (only "
            "NFC, Prepend, Replace and Sequence)", c->path, type);
    return -1;
}


static int
load_metaspace(tokenizer_t *t, yajl_val p, load_ctx_t *c)
{
    const char *rep = jstr(p, "replacement"), *sch;

    if (rep == NULL) {
        rep = "\xe2\x96\x81";
    }
    if (strlen(rep) == 0 || strlen(rep) >= sizeof(t->meta_rep)) {
        set_err(c->err, c->errlen, "%s: Metaspace replacement \"%s\" is not "
                "one character", c->path, rep);
        return -1;
    }
    t->meta = 1;
    strcpy(t->meta_rep, rep);
    t->meta_rep_len = strlen(rep);
    /* old files: add_prefix_space; newer: prepend_scheme */
    sch = jstr(p, "prepend_scheme");
    if (sch == NULL) {
        t->meta_scheme = jbool(p, "add_prefix_space", 1) ? META_ALWAYS
                                                         : META_NEVER;
    } else if (strcmp(sch, "first") == 0) {
        t->meta_scheme = META_FIRST;
    } else if (strcmp(sch, "always") == 0) {
        t->meta_scheme = META_ALWAYS;
    } else if (strcmp(sch, "never") == 0) {
        t->meta_scheme = META_NEVER;
    } else {
        set_err(c->err, c->errlen, "%s: Metaspace prepend_scheme \"%s\" is "
                "unknown", c->path, sch);
        return -1;
    }
    t->meta_split = jbool(p, "split", 1);
    return 0;
}


/* a Split by one of the regexes pretok.c knows, pieces kept on their own */
static int
load_split(tokenizer_t *t, yajl_val p, load_ctx_t *c)
{
    const char *re = jstr(jget(p, "pattern"), "Regex");
    const char *beh = jstr(p, "behavior");

    if (re == NULL) {
        set_err(c->err, c->errlen, "%s: Split pre_tokenizer: only a "
                "{\"Regex\": ..} pattern is supported", c->path);
        return -1;
    }
    if (beh == NULL || strcmp(beh, "Isolated") != 0
        || jbool(p, "invert", 0))
    {
        set_err(c->err, c->errlen, "%s: Split pre_tokenizer: only behavior "
                "\"Isolated\" without invert is supported", c->path);
        return -1;
    }
    if (pretok_parse(re, &t->split) != 0) {
        set_err(c->err, c->errlen, "%s: Split pre_tokenizer: the regex "
                "\"%.120s\" is not one of the known GPT-2 / GPT-4 / Llama-3 "
                "/ Qwen2 patterns", c->path, re);
        return -1;
    }
    t->has_split = 1;
    return 0;
}


static int
load_pre_tokenizer(tokenizer_t *t, yajl_val p, load_ctx_t *c)
{
    const char *type;
    yajl_val    list;
    size_t      i;

    if (p == NULL || YAJL_IS_NULL(p)) {
        return 0;
    }
    type = jstr(p, "type");
    if (type != NULL && strcmp(type, "Sequence") == 0) {
        list = jget(p, "pretokenizers");
        if (!YAJL_IS_ARRAY(list)) {
            set_err(c->err, c->errlen, "%s: pre_tokenizer Sequence without "
                    "\"pretokenizers\"", c->path);
            return -1;
        }
        for (i = 0; i < list->u.array.len; i++) {
            if (load_pre_tokenizer(t, list->u.array.values[i], c) != 0) {
                return -1;
            }
        }
        return 0;
    }
    if (type != NULL && strcmp(type, "Metaspace") == 0 && !t->meta) {
        return load_metaspace(t, p, c);
    }
    if (type != NULL && strcmp(type, "ByteLevel") == 0 && !t->byte_level) {
        t->byte_level = 1;
        t->bl_prefix = jbool(p, "add_prefix_space", 1);
        if (jbool(p, "use_regex", 1)) {
            if (t->has_split) {
                set_err(c->err, c->errlen, "%s: a Split pre_tokenizer and a "
                        "ByteLevel one with use_regex are not supported "
                        "together", c->path);
                return -1;
            }
            pretok_gpt2(&t->split);
            t->has_split = 1;
        }
        return 0;
    }
    if (type != NULL && strcmp(type, "Split") == 0 && !t->has_split) {
        return load_split(t, p, c);
    }
    set_err(c->err, c->errlen, "%s: pre_tokenizer \"%s\" is not supported "
            "(only Metaspace, ByteLevel and one Split)", c->path,
            type ? type : "?");
    return -1;
}


/* does the decoder drop one leading space of the text */
static void
load_decoder(tokenizer_t *t, yajl_val d)
{
    const char *type = jstr(d, "type"), *s;
    yajl_val    list, v;
    size_t      i;

    if (type == NULL) {
        return;
    }
    if (strcmp(type, "Sequence") == 0) {
        list = jget(d, "decoders");
        for (i = 0; YAJL_IS_ARRAY(list) && i < list->u.array.len; i++) {
            load_decoder(t, list->u.array.values[i]);
        }
    } else if (strcmp(type, "Strip") == 0) {
        s = jstr(d, "content");
        v = jget(d, "start");
        if (s != NULL && strcmp(s, " ") == 0 && YAJL_IS_INTEGER(v)
            && YAJL_GET_INTEGER(v) > 0)
        {
            t->strip_start = 1;
        }
    } else if (strcmp(type, "Metaspace") == 0) {
        s = jstr(d, "prepend_scheme");
        if (s != NULL ? strcmp(s, "never") != 0
                      : jbool(d, "add_prefix_space", 1))
        {
            t->strip_start = 2;
        }
    }
}


static int
int_push(int **arr, int *n, int *cap, int v)
{
    int *p;

    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 4;
        if ((p = realloc(*arr, *cap * sizeof(int))) == NULL) {
            return -1;
        }
        *arr = p;
    }
    (*arr)[(*n)++] = v;
    return 0;
}


/* ids of a template's special token name, from "special_tokens" */
static yajl_val
template_ids(yajl_val tp, yajl_val item)
{
    yajl_val st = jget(item, "SpecialToken");
    const char *name = jstr(st, "id");

    if (name == NULL) {
        return NULL;
    }
    return jget(jget(jget(tp, "special_tokens"), name), "ids");
}


static int
load_post_processor(tokenizer_t *t, yajl_val pp, load_ctx_t *c)
{
    const char *type = jstr(pp, "type");
    yajl_val    single, list, ids;
    size_t      i, k;
    int         after = 0, id;

    if (type == NULL) {
        return 0;
    }
    if (strcmp(type, "Sequence") == 0) {
        list = jget(pp, "processors");
        for (i = 0; YAJL_IS_ARRAY(list) && i < list->u.array.len; i++) {
            if (load_post_processor(t, list->u.array.values[i], c) != 0) {
                return -1;
            }
        }
        return 0;
    }
    if (strcmp(type, "TemplateProcessing") != 0) {
        return 0;                   /* others add nothing we model */
    }
    single = jget(pp, "single");
    for (i = 0; YAJL_IS_ARRAY(single) && i < single->u.array.len; i++) {
        yajl_val item = single->u.array.values[i];

        if (jget(item, "Sequence") != NULL) {
            after = 1;
            continue;
        }
        ids = template_ids(pp, item);
        if (!YAJL_IS_ARRAY(ids)) {
            set_err(c->err, c->errlen, "%s: post_processor template names a "
                    "special token that \"special_tokens\" does not define",
                    c->path);
            return -1;
        }
        for (k = 0; k < ids->u.array.len; k++) {
            if (!YAJL_IS_INTEGER(ids->u.array.values[k])) {
                continue;
            }
            id = (int) YAJL_GET_INTEGER(ids->u.array.values[k]);
            if (id < 0 || id >= t->n_vocab) {
                set_err(c->err, c->errlen, "%s: post_processor adds id %d, "
                        "outside the vocab", c->path, id);
                return -1;
            }
            if ((after ? int_push(&t->suffix, &t->n_suffix, &t->cap_suffix,
                                  id)
                       : int_push(&t->prefix, &t->n_prefix, &t->cap_prefix,
                                  id)) != 0)
            {
                set_err(c->err, c->errlen, "%s: out of memory", c->path);
                return -1;
            }
        }
    }
    return 0;
}


static int
cmp_added(const void *x, const void *y, void *arg)
{
    const tokenizer_t *t = arg;
    const added_tok_t *a = &t->added[*(const int *) x];
    const added_tok_t *b = &t->added[*(const int *) y];
    unsigned char      fa = (unsigned char) a->pat[0];
    unsigned char      fb = (unsigned char) b->pat[0];

    if (fa != fb) {
        return fa < fb ? -1 : 1;
    }
    if (a->plen != b->plen) {
        return a->plen > b->plen ? -1 : 1;      /* longest first */
    }
    return *(const int *) x - *(const int *) y;
}


static int
load_added(tokenizer_t *t, yajl_val list, load_ctx_t *c)
{
    tk_buf_t     out = { 0 }, tmp = { 0 };
    added_tok_t *a;
    yajl_val     v, idv;
    const char  *s;
    size_t       i;
    int          k, id, nd, n[2] = { 0, 0 }, max_added = -1;

    t->added = calloc(list ? list->u.array.len + 1 : 1, sizeof(added_tok_t));
    if (t->added == NULL) {
        return -1;
    }
    for (i = 0; list && i < list->u.array.len; i++) {
        v = list->u.array.values[i];
        s = jstr(v, "content");
        idv = jget(v, "id");
        if (s == NULL || !YAJL_IS_INTEGER(idv) || YAJL_GET_INTEGER(idv) < 0
            || YAJL_GET_INTEGER(idv) > 0x7ffffffe)
        {
            set_err(c->err, c->errlen, "%s: added_tokens[%zu] lacks a "
                    "\"content\" string or a valid \"id\"", c->path, i);
            goto fail;
        }
        if (*s == '\0') {
            continue;
        }
        /*
         * HF ignores the file's id: a content already added or in the
         * vocab keeps that id; a new one gets the vocab size, or the
         * highest added id + 1 once that is past the vocab.
         */
        for (k = 0; k < t->n_added && strcmp(t->added[k].content, s); k++) {
            /* earlier duplicate? */
        }
        if (k < t->n_added) {
            continue;
        }
        id = vocab_find(t, s, strlen(s));
        if (id < 0) {
            id = max_added >= t->vh_count ? max_added + 1 : t->vh_count;
        }
        if (id > max_added) {
            max_added = id;
        }
        if (ensure_id(t, id) != 0) {
            goto oom;
        }
        a = &t->added[t->n_added++];
        a->id = id;
        a->lstrip = jbool(v, "lstrip", 0);
        a->rstrip = jbool(v, "rstrip", 0);
        a->single_word = jbool(v, "single_word", 0);
        a->normalized = jbool(v, "normalized", !jbool(v, "special", 0));
        a->special = jbool(v, "special", 0);
        if ((a->content = strdup(s)) == NULL) {
            goto oom;
        }
        if (a->normalized && t->n_norm > 0) {
            if (normalize(t, s, strlen(s), &out, &tmp) != 0
                || buf_add(&out, "", 1) != 0)
            {
                goto oom;
            }
            a->pat = strdup(out.p);
        } else {
            a->pat = strdup(s);
        }
        if (a->pat == NULL) {
            goto oom;
        }
        a->plen = strlen(a->pat);
        if (a->plen == 0) {
            t->n_added--;
            free(a->content);
            free(a->pat);
            continue;
        }
        if (t->piece[id] == NULL) {
            if ((t->piece[id] = strdup(s)) == NULL) {
                goto oom;
            }
            t->piece_len[id] = (uint32_t) strlen(s);
        }
        t->special[id] = a->special;
        n[a->normalized]++;
    }

    /* by first byte, longest first, for leftmost-longest matching */
    for (nd = 0; nd < 2; nd++) {
        t->ord[nd] = malloc((n[nd] + 1) * sizeof(int));
        if (t->ord[nd] == NULL) {
            goto oom;
        }
        n[nd] = 0;
        for (k = 0; k < t->n_added; k++) {
            if (t->added[k].normalized == (unsigned) nd) {
                t->ord[nd][n[nd]++] = k;
            }
        }
        qsort_r(t->ord[nd], n[nd], sizeof(int), cmp_added, t);
        memset(t->bucket[nd], 0, sizeof(t->bucket[nd]));
        for (k = 0; k < n[nd]; k++) {
            t->bucket[nd][(unsigned char) t->added[t->ord[nd][k]].pat[0] + 1]
                = k + 1;
        }
        for (k = 1; k <= 256; k++) {
            if (t->bucket[nd][k] < t->bucket[nd][k - 1]) {
                t->bucket[nd][k] = t->bucket[nd][k - 1];
            }
        }
    }
    free(out.p);
    free(tmp.p);
    return 0;

oom:
    set_err(c->err, c->errlen, "%s: out of memory", c->path);
fail:
    free(out.p);
    free(tmp.p);
    return -1;
}


/* an upper-case hex digit, as in HF's "<0x0A>" byte pieces */
static int
hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                                                  : -1;
}


/*
 * What a piece decodes to: "▁" -> ' ' (drop_space: -> nothing), "<0xNN>"
 * -> the byte, whatever the decoder says (HF's Metaspace decoder would
 * print "<0x0A>"; a raw byte is what a client wants).  d holds n + 1.
 */
static int
decode_piece(const char *p, size_t n, int drop_space, char *d)
{
    static const char sp[] = "\xe2\x96\x81";      /* ▁ */
    size_t      k;
    int         len = 0, hi, lo;

    if (n == 6 && memcmp(p, "<0x", 3) == 0 && p[5] == '>'
        && (hi = hexval(p[3])) >= 0 && (lo = hexval(p[4])) >= 0)
    {
        d[len++] = (char) (hi << 4 | lo);
        return len;
    }
    for (k = 0; k < n; ) {
        if (n - k >= 3 && memcmp(p + k, sp, 3) == 0) {
            if (!drop_space) {
                d[len++] = ' ';
            }
            k += 3;
        } else {
            d[len++] = p[k++];
        }
    }
    return len;
}


/*
 * A byte-level piece back to raw bytes ("Ġthe" -> " the"); a character
 * that stands for no byte is kept as it is.  d holds n.
 */
static int
decode_bytelevel(const char *p, size_t n, char *d)
{
    const unsigned char *s = (const unsigned char *) p;
    size_t               k;
    uint32_t             c;
    int                  len = 0, l, b;

    for (k = 0; k < n; k += l) {
        l = uc_utf8_len(s + k, n - k, &c);
        if (l == 0) {
            d[len++] = p[k];
            l = 1;
        } else if ((b = bytelevel_byte(c)) >= 0) {
            d[len++] = (char) b;
        } else {
            memcpy(d + len, p + k, l);
            len += l;
        }
    }
    return len;
}


/*
 * Decoded bytes per id, and the longest.  An added token decodes from
 * what it matches (HF: a normalized=true token gives its normalised
 * content, even where the vocab spells the id otherwise).
 */
static int
build_decoded(tokenizer_t *t)
{
    const char **src;
    size_t      *srclen, n;
    char        *d, *verbatim;
    int          i, len, id;

    src = calloc(t->n_vocab, sizeof(char *));
    srclen = calloc(t->n_vocab, sizeof(size_t));
    verbatim = calloc(t->n_vocab, 1);
    t->dec = calloc(t->n_vocab, sizeof(char *));
    t->dec_len = calloc(t->n_vocab, sizeof(uint32_t));
    t->meta_first = calloc(t->n_vocab, sizeof(char *));
    if (src == NULL || srclen == NULL || verbatim == NULL || t->dec == NULL
        || t->dec_len == NULL || t->meta_first == NULL)
    {
        goto oom;
    }
    for (i = 0; i < t->n_vocab; i++) {
        src[i] = t->piece[i];
        srclen[i] = t->piece[i] ? t->piece_len[i] : 0;
    }
    for (i = 0; i < t->n_added; i++) {
        id = t->added[i].id;
        if (t->byte_level && src[id] != NULL
            && vocab_find(t, src[id], srclen[id]) == id)
        {
            continue;               /* a vocab piece: decoded as such */
        }
        src[id] = t->byte_level ? t->added[i].content : t->added[i].pat;
        srclen[id] = strlen(src[id]);
        verbatim[id] = 1;
    }

    t->max_bytes = 0;
    for (i = 0; i < t->n_vocab; i++) {
        n = t->special[i] ? 0 : srclen[i];     /* specials: nothing */
        if ((t->dec[i] = d = malloc(n + 1)) == NULL) {
            goto oom;
        }
        len = !t->byte_level ? decode_piece(src[i], n, 0, d)
              : verbatim[i] ? (int) n
              : decode_bytelevel(src[i], n, d);
        if (t->byte_level && verbatim[i]) {
            memcpy(d, src[i], n);
        }
        t->dec_len[i] = (uint32_t) len;
        if (len > t->max_bytes) {
            t->max_bytes = len;
        }
        if (t->strip_start == 2 && len > 0) {
            if ((d = malloc(n + 1)) == NULL) {
                goto oom;
            }
            n = (size_t) decode_piece(src[i], n, 1, d);
            d[n] = '\0';
            if (n == (size_t) len) {
                free(d);            /* no "▁" in it: as dec */
                d = NULL;
            }
            t->meta_first[i] = d;
        }
    }
    free(src);
    free(srclen);
    free(verbatim);
    return 0;

oom:
    free(src);
    free(srclen);
    free(verbatim);
    return -1;
}


tokenizer_t *
tokenizer_load(const char *path, char *err, size_t errlen)
{
    load_ctx_t   c = { path, err, errlen };
    tokenizer_t *t = NULL;
    yajl_val     root = NULL, model, v;
    const char  *type, *unk;
    char        *text, jerr[256], name[8];
    int          b, i;

    if (err != NULL && errlen > 0) {
        err[0] = '\0';
    }
    text = read_file(path, (size_t) 256 << 20, NULL, err, errlen);
    if (text == NULL) {
        return NULL;
    }
    jerr[0] = '\0';
    root = yajl_tree_parse(text, jerr, sizeof(jerr));
    free(text);
    if (root == NULL) {
        /* yajl's message spans lines; the first says what went wrong */
        jerr[strcspn(jerr, "\n")] = '\0';
        set_err(err, errlen, "%s: bad JSON: %s", path,
                jerr[0] ? jerr : "parse error");
        return NULL;
    }
    if (!YAJL_IS_OBJECT(root)) {
        set_err(err, errlen, "%s: not a tokenizer.json (top level is not an "
                "object)", path);
        goto fail;
    }
    model = jget(root, "model");
    if (!YAJL_IS_OBJECT(model)) {
        set_err(err, errlen, "%s: no \"model\" object", path);
        goto fail;
    }

    /* old files may omit the type: BPE is the one with merges */
    type = jstr(model, "type");
    if (type == NULL) {
        type = jget(model, "merges") != NULL ? "BPE"
               : YAJL_IS_ARRAY(jget(model, "vocab")) ? "Unigram" : "?";
    }
    if (strcmp(type, "BPE") != 0) {
        set_err(err, errlen, "%s: model type \"%s\" is not supported: "
                "BPE only, SentencePiece-style or byte-level (Unigram not "
                "supported yet)", path, type);
        goto fail;
    }
    v = jget(model, "vocab");
    if (!YAJL_IS_OBJECT(v)) {
        set_err(err, errlen, "%s: model has no \"vocab\" object", path);
        goto fail;
    }
    if ((jstr(model, "continuing_subword_prefix")
         && *jstr(model, "continuing_subword_prefix"))
        || (jstr(model, "end_of_word_suffix")
            && *jstr(model, "end_of_word_suffix")))
    {
        set_err(err, errlen, "%s: BPE with continuing_subword_prefix or "
                "end_of_word_suffix is not supported", path);
        goto fail;
    }

    t = calloc(1, sizeof(*t));
    if (t == NULL) {
        goto oom;
    }
    t->bos = t->eos = t->unk_id = -1;
    if (load_vocab(t, v, &c) != 0) {
        goto fail;
    }
    if (t->n_vocab == 0) {
        set_err(err, errlen, "%s: model.vocab is empty", path);
        goto fail;
    }
    v = jget(model, "merges");
    if (v != NULL && !YAJL_IS_ARRAY(v) && !YAJL_IS_NULL(v)) {
        set_err(err, errlen, "%s: model.merges is not an array", path);
        goto fail;
    }
    if (load_merges(t, YAJL_IS_ARRAY(v) ? v : NULL, &c) != 0) {
        goto fail;
    }

    unk = jstr(model, "unk_token");
    if (unk != NULL) {
        t->unk_id = vocab_find(t, unk, strlen(unk));
    }
    t->byte_fallback = jbool(model, "byte_fallback", 0);
    t->fuse_unk = jbool(model, "fuse_unk", 0);
    t->ignore_merges = jbool(model, "ignore_merges", 0);
    if (load_normalizer(t, jget(root, "normalizer"), &c) != 0
        || load_pre_tokenizer(t, jget(root, "pre_tokenizer"), &c) != 0)
    {
        goto fail;
    }
    if (t->byte_level != has_type(jget(root, "decoder"), "ByteLevel")) {
        set_err(err, errlen, "%s: a ByteLevel pre_tokenizer needs a ByteLevel "
                "decoder and the other way round", path);
        goto fail;
    }
    for (b = 0; b < 256; b++) {
        if (t->byte_level) {
            /* the vocab piece of the byte's stand-in character */
            i = uc_utf8_put(bytelevel_char((unsigned char) b),
                            (unsigned char *) name);
        } else {
            i = snprintf(name, sizeof(name), "<0x%02X>", b);
        }
        t->byte_id[b] = vocab_find(t, name, (size_t) i);
        if (t->byte_level && t->byte_id[b] < 0) {
            set_err(err, errlen, "%s: byte-level vocab lacks the piece for "
                    "byte 0x%02x", path, b);
            goto fail;
        }
    }
    v = jget(root, "added_tokens");
    if (load_added(t, YAJL_IS_ARRAY(v) ? v : NULL, &c) != 0) {
        goto fail;
    }
    load_decoder(t, jget(root, "decoder"));

    if (load_post_processor(t, jget(root, "post_processor"), &c) != 0) {
        goto fail;
    }
    /* room for tokenizer_set_bos */
    if (t->n_prefix == 0
        && (t->prefix = malloc(sizeof(int))) == NULL)
    {
        goto oom;
    }
    if (t->n_prefix > 0) {
        t->bos = t->prefix[0];
    }
    /* a guess the caller may correct from config.json */
    for (i = 0; i < t->n_added; i++) {
        if (strcmp(t->added[i].content, "</s>") == 0) {
            t->eos = t->added[i].id;
        }
    }

    if (build_decoded(t) != 0) {
        goto oom;
    }
    yajl_tree_free(root);
    return t;

oom:
    set_err(err, errlen, "%s: out of memory", path);
fail:
    if (err != NULL && errlen > 0 && err[0] == '\0') {
        set_err(err, errlen, "%s: out of memory", path);    /* unnamed */
    }
    tokenizer_free(t);
    yajl_tree_free(root);
    return NULL;
}
