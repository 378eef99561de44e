/*
 * plain_llama2c.c - the baseline for ngx-gpu-generate: a plain,
 * single-stream Llama forward pass written with the obvious loops, reading
 * a llama2.c checkpoint directly.  Greedy decoding from BOS; prints the
 * token ids and the decode rate.
 *
 *   make -C gpu_backend O=$PWD/build tools NVCC=     (or by hand:)
 *   cc -O3 -march=x86-64-v3 -o build/plain_llama2c \
 *       scripts/ref/plain_llama2c.c -lm
 *   build/plain_llama2c ../shared/models/stories260K/stories260K.bin [-n N]
 *
 * Checkpoint: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
 * vocab_size, seq_len; vocab_size < 0: separate classifier), then f32
 * tensors: embedding, then per kind for all layers attention norm, wq,
 * wk, wv, wo, ffn norm, w1 (gate), w2 (down), w3 (up), then the final
 * norm, two RoPE tables (unused here) and the classifier if not shared.
 * RoPE rotates adjacent pairs (2i, 2i+1) of each head.
 */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    int dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len;
} config_t;

typedef struct {
    float *emb, *att_norm, *wq, *wk, *wv, *wo, *ffn_norm, *w1, *w2, *w3;
    float *final_norm, *cls;
} weights_t;

typedef struct {
    float *x, *xb, *xb2, *q, *hb, *hb2, *att, *logits;
    float *k_cache, *v_cache;     /* [layer][pos][kv_dim] */
} state_t;

static void
rmsnorm(float *out, const float *x, const float *w, int n)
{
    float ss = 0.0f;
    int i;

    for (i = 0; i < n; i++) {
        ss += x[i] * x[i];
    }
    ss = 1.0f / sqrtf(ss / n + 1e-5f);
    for (i = 0; i < n; i++) {
        out[i] = w[i] * (ss * x[i]);
    }
}

/* out[d] = w[d, n] @ x[n] */
static void
matvec(float *out, const float *x, const float *w, int n, int d)
{
    int i, j;

    for (i = 0; i < d; i++) {
        float s = 0.0f;
        for (j = 0; j < n; j++) {
            s += w[(size_t) i * n + j] * x[j];
        }
        out[i] = s;
    }
}

static void
softmax(float *x, int n)
{
    float max = x[0], sum = 0.0f;
    int i;

    for (i = 1; i < n; i++) {
        if (x[i] > max) {
            max = x[i];
        }
    }
    for (i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    for (i = 0; i < n; i++) {
        x[i] /= sum;
    }
}

static float *
forward(const config_t *c, const weights_t *w, state_t *s, int token,
    int pos)
{
    int dim = c->dim, hs = dim / c->n_heads, kv_dim = c->n_kv_heads * hs;
    int group = c->n_heads / c->n_kv_heads, l, h, i, t;

    memcpy(s->x, w->emb + (size_t) token * dim, dim * sizeof(float));

    for (l = 0; l < c->n_layers; l++) {
        float *kc = s->k_cache + ((size_t) l * c->seq_len + pos) * kv_dim;
        float *vc = s->v_cache + ((size_t) l * c->seq_len + pos) * kv_dim;

        rmsnorm(s->xb, s->x, w->att_norm + l * dim, dim);
        matvec(s->q, s->xb, w->wq + (size_t) l * dim * dim, dim, dim);
        matvec(kc, s->xb, w->wk + (size_t) l * kv_dim * dim, dim, kv_dim);
        matvec(vc, s->xb, w->wv + (size_t) l * kv_dim * dim, dim, kv_dim);

        /* RoPE on adjacent pairs */
        for (i = 0; i < dim; i += 2) {
            float freq = 1.0f / powf(10000.0f, (float) (i % hs) / hs);
            float a = pos * freq, cr = cosf(a), ci = sinf(a);
            float *vecs[2] = { s->q, kc };
            int v, nv = i < kv_dim ? 2 : 1;
            for (v = 0; v < nv; v++) {
                float x0 = vecs[v][i], x1 = vecs[v][i + 1];
                vecs[v][i] = x0 * cr - x1 * ci;
                vecs[v][i + 1] = x0 * ci + x1 * cr;
            }
        }

        /* attention, head by head */
        for (h = 0; h < c->n_heads; h++) {
            const float *q = s->q + h * hs;
            float *att = s->att + (size_t) h * c->seq_len;
            float *o = s->xb + h * hs;
            int kvh = h / group;

            for (t = 0; t <= pos; t++) {
                const float *k = s->k_cache
                    + ((size_t) l * c->seq_len + t) * kv_dim + kvh * hs;
                float score = 0.0f;
                for (i = 0; i < hs; i++) {
                    score += q[i] * k[i];
                }
                att[t] = score / sqrtf((float) hs);
            }
            softmax(att, pos + 1);
            memset(o, 0, hs * sizeof(float));
            for (t = 0; t <= pos; t++) {
                const float *v = s->v_cache
                    + ((size_t) l * c->seq_len + t) * kv_dim + kvh * hs;
                for (i = 0; i < hs; i++) {
                    o[i] += att[t] * v[i];
                }
            }
        }
        matvec(s->xb2, s->xb, w->wo + (size_t) l * dim * dim, dim, dim);
        for (i = 0; i < dim; i++) {
            s->x[i] += s->xb2[i];
        }

        /* SwiGLU feed-forward */
        rmsnorm(s->xb, s->x, w->ffn_norm + l * dim, dim);
        matvec(s->hb, s->xb, w->w1 + (size_t) l * c->hidden * dim, dim,
               c->hidden);
        matvec(s->hb2, s->xb, w->w3 + (size_t) l * c->hidden * dim, dim,
               c->hidden);
        for (i = 0; i < c->hidden; i++) {
            float g = s->hb[i];
            s->hb[i] = g / (1.0f + expf(-g)) * s->hb2[i];
        }
        matvec(s->xb, s->hb, w->w2 + (size_t) l * dim * c->hidden,
               c->hidden, dim);
        for (i = 0; i < dim; i++) {
            s->x[i] += s->xb[i];
        }
    }
    rmsnorm(s->x, s->x, w->final_norm, dim);
    matvec(s->logits, s->x, w->cls, dim, c->vocab);
    return s->logits;
}

static float *
take(float **p, size_t n)
{
    float *r = *p;

    *p += n;
    return r;
}

int
main(int argc, char **argv)
{
    config_t c;
    weights_t w;
    state_t s;
    float *data, *p, *logits;
    int steps = 256, shared, hs, kv_dim, token, pos, i, *out;
    long size;
    struct timespec t0, t1;
    double secs;
    FILE *f;

    if (argc < 2) {
        fprintf(stderr, "usage: plain_llama2c CHECKPOINT.bin [-n N]\n");
        return 2;
    }
    if (argc >= 4 && strcmp(argv[2], "-n") == 0) {
        steps = atoi(argv[3]);
    }
    f = fopen(argv[1], "rb");
    if (f == NULL || fread(&c, sizeof(int), 7, f) != 7) {
        fprintf(stderr, "plain_llama2c: cannot read %s\n", argv[1]);
        return 1;
    }
    shared = c.vocab > 0;
    c.vocab = abs(c.vocab);
    fseek(f, 0, SEEK_END);
    size = ftell(f) - 7 * sizeof(int);
    fseek(f, 7 * sizeof(int), SEEK_SET);
    data = malloc(size);
    if (data == NULL || fread(data, 1, size, f) != (size_t) size) {
        fprintf(stderr, "plain_llama2c: cannot read %s\n", argv[1]);
        return 1;
    }
    fclose(f);

    hs = c.dim / c.n_heads;
    kv_dim = c.n_kv_heads * hs;
    p = data;
    w.emb = take(&p, (size_t) c.vocab * c.dim);
    w.att_norm = take(&p, (size_t) c.n_layers * c.dim);
    w.wq = take(&p, (size_t) c.n_layers * c.dim * c.dim);
    w.wk = take(&p, (size_t) c.n_layers * kv_dim * c.dim);
    w.wv = take(&p, (size_t) c.n_layers * kv_dim * c.dim);
    w.wo = take(&p, (size_t) c.n_layers * c.dim * c.dim);
    w.ffn_norm = take(&p, (size_t) c.n_layers * c.dim);
    w.w1 = take(&p, (size_t) c.n_layers * c.hidden * c.dim);
    w.w2 = take(&p, (size_t) c.n_layers * c.dim * c.hidden);
    w.w3 = take(&p, (size_t) c.n_layers * c.hidden * c.dim);
    w.final_norm = take(&p, c.dim);
    take(&p, (size_t) c.seq_len * hs);      /* the two RoPE tables */
    w.cls = shared ? w.emb : p;

    s.x = calloc(c.dim, sizeof(float));
    s.xb = calloc(c.dim, sizeof(float));
    s.xb2 = calloc(c.dim, sizeof(float));
    s.q = calloc(c.dim, sizeof(float));
    s.hb = calloc(c.hidden, sizeof(float));
    s.hb2 = calloc(c.hidden, sizeof(float));
    s.att = calloc((size_t) c.n_heads * c.seq_len, sizeof(float));
    s.logits = calloc(c.vocab, sizeof(float));
    s.k_cache = calloc((size_t) c.n_layers * c.seq_len * kv_dim,
                       sizeof(float));
    s.v_cache = calloc((size_t) c.n_layers * c.seq_len * kv_dim,
                       sizeof(float));
    if (steps > c.seq_len) {
        steps = c.seq_len;
    }
    if (steps < 2) {
        steps = 2;
    }
    out = calloc(steps, sizeof(int));

    /* position 0 (BOS) first, then time the steps - 1 that follow, as
     * ngx-gpu-generate times its decode steps after the prefill */
    token = 1;
    for (pos = 0; pos < steps; pos++) {
        if (pos == 1) {
            clock_gettime(CLOCK_MONOTONIC, &t0);
        }
        logits = forward(&c, &w, &s, token, pos);
        token = 0;
        for (i = 1; i < c.vocab; i++) {
            if (logits[i] > logits[token]) {
                token = i;
            }
        }
        out[pos] = token;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;

    printf("tokens: 1 |");
    for (pos = 0; pos < steps; pos++) {
        printf(" %d", out[pos]);
    }
    printf("\nplain: %d decode steps in %.3f ms: %.1f tokens/s\n", steps - 1,
           secs * 1e3, (steps - 1) / secs);
    return 0;
}
