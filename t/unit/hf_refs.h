/*
 * hf_refs.h - reference logits from Hugging Face transformers, and
 * running an engine against them.  Included by t/unit/test_hf_logits.c
 * (the CPU engine, on CI) and t/gpu/test_cuda_engine.c (the CUDA engine).
 *
 * A fixture is a folder made by scripts/make-logit-refs: a tiny random
 * model of one of model.h's architectures (config.json,
 * model.safetensors) and refs.bin:
 *
 *   "NGXREFS1", int32 n_seqs, int32 vocab, int32 n_decode, then per
 *   sequence: int32 n_prompt, int32 tokens[n_prompt + n_decode],
 *   float32 logits[n_decode + 1][vocab]
 *
 * all little-endian.  Row 0 is the logits after the prompt (position
 * n_prompt - 1); row k + 1 those after feeding tokens[n_prompt + k]
 * (teacher forcing: the tokens are given, not sampled).  The references
 * were computed in float64 from the stored weights.
 */

#ifndef NGX_GPU_HF_REFS_H
#define NGX_GPU_HF_REFS_H

#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

#define HF_MAX_SEQS  8

typedef struct {
    int       n_prompt;
    int32_t  *tokens;             /* [n_prompt + n_decode] */
    float    *logits;             /* [n_decode + 1][vocab] */
} hf_seq_t;

typedef struct {
    int       n_seqs, vocab, n_decode;
    hf_seq_t  seq[HF_MAX_SEQS];
} hf_refs_t;

/* the fixtures folder: $NGX_GPU_FIXTURES or t/fixtures/hf-logits */
static inline const char *
hf_fixtures_dir(void)
{
    const char *d = getenv("NGX_GPU_FIXTURES");

    return d ? d : "t/fixtures/hf-logits";
}

/* names of the fixture folders, sorted; returns how many (at most max) */
static inline int
hf_list(char names[][128], int max)
{
    DIR *d = opendir(hf_fixtures_dir());
    struct dirent *de;
    int n = 0, i, j;

    if (d == NULL) {
        return 0;
    }
    while ((de = readdir(d)) != NULL && n < max) {
        if (de->d_name[0] != '.' && strlen(de->d_name) < 128) {
            strcpy(names[n++], de->d_name);
        }
    }
    closedir(d);
    for (i = 1; i < n; i++) {
        for (j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            char t[128];
            strcpy(t, names[j]);
            strcpy(names[j], names[j - 1]);
            strcpy(names[j - 1], t);
        }
    }
    return n;
}

static inline void
hf_refs_free(hf_refs_t *r)
{
    int i;

    for (i = 0; i < r->n_seqs; i++) {
        free(r->seq[i].tokens);
        free(r->seq[i].logits);
    }
    memset(r, 0, sizeof(*r));
}

static inline int
hf_refs_load(const char *path, hf_refs_t *r)
{
    FILE *f = fopen(path, "rb");
    char magic[8];
    int32_t h[3];
    int i;

    memset(r, 0, sizeof(*r));
    if (f == NULL) {
        return -1;
    }
    if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "NGXREFS1", 8) != 0
        || fread(h, 4, 3, f) != 3 || h[0] < 1 || h[0] > HF_MAX_SEQS
        || h[1] < 1 || h[2] < 0)
    {
        fclose(f);
        return -1;
    }
    r->n_seqs = h[0];
    r->vocab = h[1];
    r->n_decode = h[2];
    for (i = 0; i < r->n_seqs; i++) {
        hf_seq_t *s = &r->seq[i];
        int32_t np;
        size_t nt, nl;

        if (fread(&np, 4, 1, f) != 1 || np < 1) {
            break;
        }
        s->n_prompt = np;
        nt = (size_t) np + r->n_decode;
        nl = (size_t) (r->n_decode + 1) * r->vocab;
        s->tokens = malloc(nt * 4);
        s->logits = malloc(nl * 4);
        if (s->tokens == NULL || s->logits == NULL
            || fread(s->tokens, 4, nt, f) != nt
            || fread(s->logits, 4, nl, f) != nl)
        {
            break;
        }
    }
    fclose(f);
    if (i < r->n_seqs) {
        r->n_seqs = i + 1;
        hf_refs_free(r);
        return -1;
    }
    return 0;
}


/*
 * Fixture `name`: its model into m and its references into r; 0, or -1
 * with err set (then nothing is left to free).
 */
static inline int
hf_fixture_load(const char *name, model_t *m, hf_refs_t *r, char *err,
    size_t errlen)
{
    char path[4096];

    if (snprintf(path, sizeof(path), "%s/%s", hf_fixtures_dir(), name)
        >= (int) sizeof(path))
    {
        snprintf(err, errlen, "%.200s: path too long", name);
        return -1;
    }
    if (model_load(path, m, err, errlen) != 0) {
        return -1;
    }
    if (snprintf(path, sizeof(path), "%s/%s/refs.bin", hf_fixtures_dir(),
                 name) >= (int) sizeof(path)
        || hf_refs_load(path, r) != 0)
    {
        snprintf(err, errlen, "%.400s: cannot read", path);
        model_free(m);
        return -1;
    }
    return 0;
}
/* ||a - b|| / ||b|| over one row; NaN anywhere gives infinity */
static inline double
hf_rel_err(const float *a, const float *b, int n)
{
    double num = 0.0, den = 0.0;
    int i;

    for (i = 0; i < n; i++) {
        double d = (double) a[i] - b[i];
        if (isnan(a[i])) {
            return INFINITY;
        }
        num += d * d;
        den += (double) b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/*
 * Run every sequence of r through e, teacher-forced, and return the
 * largest relative error of any logits row (-1 if a step failed).
 * together: all sequences share each step, as the scheduler builds them
 * (decode tokens first, then prefill chunks of at most `chunk` tokens
 * within `budget` tokens a step), so short ones decode while long ones
 * still prefill; else each sequence runs alone.  Sequence i is KV owner
 * i; e needs max_seqs >= n_seqs and room for every sequence.
 */
static inline double
hf_run(engine_t *e, const hf_refs_t *r, int together, int chunk,
    int budget, char *err, size_t errlen)
{
    int n = r->n_seqs, done[HF_MAX_SEQS], owner[HF_MAX_SEQS];
    int32_t out[HF_MAX_SEQS];
    engine_item_t items[HF_MAX_SEQS];
    float *lg = malloc((size_t) HF_MAX_SEQS * r->vocab * sizeof(float));
    double worst = 0.0;
    int i, k, alone, pass;

    if (lg == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (alone = together ? -1 : 0; alone < (together ? 0 : n); alone++) {
        for (i = 0; i < n; i++) {
            int total = r->seq[i].n_prompt + r->n_decode;
            done[i] = (alone >= 0 && i != alone) ? total : 0;
            if (done[i] == 0 && engine_kv_reserve(e, i, total) != 0) {
                snprintf(err, errlen, "seq %d: no KV blocks for %d tokens", i,
                         total);
                free(lg);
                return -1;
            }
        }
        for (;;) {
            int m = 0, left = budget;

            /* decode tokens first, then prefill chunks */
            for (pass = 0; pass < 2; pass++) {
                for (i = 0; i < n && left > 0; i++) {
                    const hf_seq_t *s = &r->seq[i];
                    int total = s->n_prompt + r->n_decode;
                    int prefill = done[i] < s->n_prompt, take;

                    if (done[i] >= total || (pass == 0) == prefill) {
                        continue;
                    }
                    take = prefill ? s->n_prompt - done[i] : 1;
                    take = take < chunk ? take : chunk;
                    take = take < left ? take : left;
                    items[m] = (engine_item_t) {
                        .seq = i, .pos = done[i], .n_tokens = take,
                        .tokens = s->tokens + done[i], .sample = 1,
                        .temperature = 0, .top_p = 1 };
                    owner[m++] = i;
                    left -= take;
                }
            }
            if (m == 0) {
                break;
            }
            if (engine_step(e, items, m, out, lg) != 0) {
                snprintf(err, errlen, "step: %s", engine_last_error(e));
                free(lg);
                return -1;
            }
            for (k = 0; k < m; k++) {
                const hf_seq_t *s = &r->seq[owner[k]];
                int last = items[k].pos + items[k].n_tokens - 1;
                int row = last - (s->n_prompt - 1);
                double re;

                done[owner[k]] += items[k].n_tokens;
                if (row < 0) {
                    continue;               /* mid-prompt: not compared */
                }
                re = hf_rel_err(lg + (size_t) k * r->vocab,
                                s->logits + (size_t) row * r->vocab,
                                r->vocab);
                worst = re > worst ? re : worst;
            }
        }
        for (i = 0; i < n; i++) {
            engine_kv_release(e, i);
        }
    }
    free(lg);
    return worst;
}

/* an engine for fixture m: room for all its sequences at once */
static inline engine_t *
hf_engine(const model_t *m, const hf_refs_t *r, const char *device,
    const char *dtype, int budget, char *err, size_t errlen)
{
    engine_opts_t o;
    int i, blocks = 0;

    for (i = 0; i < r->n_seqs; i++) {
        blocks += (r->seq[i].n_prompt + r->n_decode + 15) / 16;
    }
    memset(&o, 0, sizeof(o));
    o.device = device;
    o.dtype = dtype;
    o.threads = 2;
    o.max_seqs = r->n_seqs;
    o.max_batch_tokens = budget;
    o.kv_block_size = 16;
    o.kv_blocks = blocks;
    return engine_create(m, &o, err, errlen);
}

#endif /* NGX_GPU_HF_REFS_H */
