/*
 * generate.c - ngx-gpu-generate: run the engine alone, for a quick check
 * of a model and for decode throughput.
 *
 *   ngx-gpu-generate MODEL_DIR [--tokens 1,403,...] [--prefill N] [-n N]
 *       [--batch B] [--threads T] [--device cpu] [--dtype T] [--repeat R]
 *       [--sync]
 *
 * B identical sequences are prefilled with the prompt (BOS by default)
 * in one engine step and decoded greedily for N steps, all B in every
 * step.  Prints the token ids of sequence 0, the prefill rate and the
 * decode rate in tokens/s over all B; with --repeat the whole run is done
 * R times and the best time of each phase counts.
 *
 * Decode steps overlap as the server runs them (the CUDA engine): step
 * s + 1 is queued with the tokens step s samples (ENGINE_TOKEN_OF, read
 * on the device) before the host waits for step s, so the device does
 * not idle through the host's round trip.  --sync: each step waits for
 * the one before (engine_step), as before 2026-11-25 (seventh session).
 *
 * --prefill N makes the prompt N synthetic token ids (a fixed
 * pseudo-random sequence below the vocabulary size, after BOS), for
 * timing prefill: `--prefill 2048 -n 1` is one 2048-token prefill.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "model.h"
#include "mono_clock.h"

#define MAX_PROMPT  65536

/* seconds on the monotonic clock */
static double
now(void)
{
    return mono_ns() * 1e-9;
}

/* every sequence's one decode token at pos: cur[i] */
static void
decode_items(engine_item_t *items, int batch, int32_t *cur, int pos)
{
    int i;

    for (i = 0; i < batch; i++) {
        items[i].pos = pos;
        items[i].n_tokens = 1;
        items[i].tokens = &cur[i];
    }
}

/* decode steps 1 .. steps - 1, each waited for before the next is
 * queued; gen[s] gets sequence 0's token of step s, out the last step's
 * tokens */
static int
decode_sync(engine_t *e, engine_item_t *items, int batch, int32_t *cur,
    int32_t *out, int32_t *gen, int n_prompt, int steps)
{
    int i, s;

    for (s = 1; s < steps; s++) {
        for (i = 0; i < batch; i++) {
            cur[i] = out[i];
        }
        decode_items(items, batch, cur, n_prompt + s - 1);
        if (engine_step(e, items, batch, out, NULL) != 0) {
            return -1;
        }
        gen[s] = out[0];
    }
    return 0;
}

/* the same with two steps in flight: step s is queued with step s - 1's
 * sampled tokens still on the device, then step s - 1 is waited for */
static int
decode_overlapped(engine_t *e, engine_item_t *items, int batch, int32_t *cur,
    int32_t *out, int32_t *gen, int n_prompt, int steps)
{
    int i, s;

    if (steps < 2) {
        return 0;
    }
    for (s = 1; s < steps; s++) {
        for (i = 0; i < batch; i++) {
            cur[i] = s == 1 ? out[i] : ENGINE_TOKEN_OF(i);
        }
        decode_items(items, batch, cur, n_prompt + s - 1);
        if (engine_step_begin(e, items, batch) != 0) {
            return -1;
        }
        if (s > 1) {
            if (engine_step_end(e, out) != 0) {
                return -1;
            }
            gen[s - 1] = out[0];
        }
    }
    if (engine_step_end(e, out) != 0) {
        return -1;
    }
    gen[steps - 1] = out[0];
    return 0;
}

static void
usage(void)
{
    fprintf(stderr, "usage: ngx-gpu-generate MODEL_DIR [--tokens 1,403,...] "
            "[--prefill N] [-n N] [--batch B] [--threads T] "
            "[--device cpu] [--dtype T] [--repeat R] [--sync]\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    const char *dir = NULL, *device = "cpu", *dtype = NULL;
    static int32_t prompt[MAX_PROMPT];
    int n_prompt = 0, steps = 256, batch = 1, threads = 1, bs = 16, i, s;
    int repeat = 1, rep, n_synth = 0, sync = 0;
    int32_t *out, *cur, *gen;
    engine_item_t *items;
    engine_opts_t o;
    engine_t *e;
    model_t m;
    char err[512];
    double t0, t_prefill, t_decode;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 < argc && strcmp(a, "--tokens") == 0) {
            char *p = argv[++i], *end;
            while (*p && n_prompt < MAX_PROMPT) {
                prompt[n_prompt++] = (int32_t) strtol(p, &end, 10);
                if (end == p) {
                    usage();
                }
                p = *end == ',' ? end + 1 : end;
            }
        } else if (i + 1 < argc && strcmp(a, "--prefill") == 0) {
            n_synth = atoi(argv[++i]);
            if (n_synth < 1 || n_synth > MAX_PROMPT) {
                usage();
            }
        } else if (i + 1 < argc && strcmp(a, "-n") == 0) {
            steps = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(a, "--batch") == 0) {
            batch = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(a, "--threads") == 0) {
            threads = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(a, "--repeat") == 0) {
            repeat = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(a, "--device") == 0) {
            device = argv[++i];
        } else if (i + 1 < argc && strcmp(a, "--dtype") == 0) {
            dtype = argv[++i];
        } else if (strcmp(a, "--sync") == 0) {
            sync = 1;
        } else if (a[0] != '-' && dir == NULL) {
            dir = a;
        } else {
            usage();
        }
    }
    if (dir == NULL || steps < 1 || batch < 1 || threads < 1 || repeat < 1) {
        usage();
    }

    if (model_load(dir, &m, err, sizeof(err)) != 0) {
        fprintf(stderr, "ngx-gpu-generate: %s\n", err);
        return 1;
    }
    if (n_synth > 0 && n_prompt > 0) {
        fprintf(stderr, "ngx-gpu-generate: --tokens and --prefill exclude "
                "each other\n");
        return 2;
    }
    if (n_prompt == 0) {
        prompt[n_prompt++] = m.cfg.bos_id >= 0 ? m.cfg.bos_id : 1;
    }
    if (n_synth > 0) {
        /* a fixed LCG walk over [3, min(vocab, 32000)): real-looking ids
         * (no run of one token), the same on every run */
        uint32_t x = 12345, span = (uint32_t) m.cfg.vocab_size;

        span = (span > 32000 ? 32000 : span) - 3;
        while (n_prompt < n_synth) {
            x = x * 1664525u + 1013904223u;
            prompt[n_prompt++] = (int32_t) (3 + (x >> 8) % span);
        }
    }
    if (n_prompt + steps > m.cfg.max_seq_len) {
        steps = m.cfg.max_seq_len - n_prompt;
        fprintf(stderr, "ngx-gpu-generate: -n cut to %d (max_seq_len %d)\n",
                steps, m.cfg.max_seq_len);
        if (steps < 1) {
            return 1;
        }
    }

    memset(&o, 0, sizeof(o));
    o.device = device;
    o.dtype = dtype;            /* GPU: NULL is config.json's torch_dtype */
    o.threads = threads;
    o.max_seqs = batch;
    o.max_batch_tokens = n_prompt * batch > batch ? n_prompt * batch : batch;
    o.kv_block_size = bs;
    o.kv_blocks = batch * ((n_prompt + steps + bs - 1) / bs);
    e = engine_create(&m, &o, err, sizeof(err));
    if (e == NULL) {
        fprintf(stderr, "ngx-gpu-generate: %s\n", err);
        return 1;
    }

    items = calloc((size_t) batch, sizeof(*items));
    out = calloc((size_t) batch, sizeof(*out));
    cur = calloc((size_t) batch, sizeof(*cur));
    gen = calloc((size_t) steps, sizeof(*gen));
    if (items == NULL || out == NULL || cur == NULL || gen == NULL) {
        fprintf(stderr, "ngx-gpu-generate: out of memory\n");
        return 1;
    }
    t_prefill = t_decode = 1e30;
    for (rep = 0; rep < repeat; rep++) {
        double tp, td;

        for (i = 0; i < batch; i++) {
            engine_kv_release(e, i);
            if (engine_kv_reserve(e, i, n_prompt + steps) != 0) {
                fprintf(stderr, "ngx-gpu-generate: KV pool too small\n");
                return 1;
            }
            items[i] = (engine_item_t) { .seq = i, .pos = 0,
                                         .n_tokens = n_prompt,
                                         .tokens = prompt, .sample = 1,
                                         .temperature = 0, .top_p = 1 };
        }

        /* prefill: the whole prompt of every sequence in one step */
        t0 = now();
        if (engine_step(e, items, batch, out, NULL) != 0) {
            fprintf(stderr, "ngx-gpu-generate: %s\n", engine_last_error(e));
            return 1;
        }
        tp = now() - t0;
        gen[0] = out[0];

        /* decode: every sequence feeds back its last token */
        t0 = now();
        if ((!sync && engine_runs_async(e)
             ? decode_overlapped(e, items, batch, cur, out, gen, n_prompt,
                                 steps)
             : decode_sync(e, items, batch, cur, out, gen, n_prompt, steps))
            != 0)
        {
            fprintf(stderr, "ngx-gpu-generate: %s\n", engine_last_error(e));
            return 1;
        }
        td = now() - t0;
        t_prefill = tp < t_prefill ? tp : t_prefill;
        t_decode = td < t_decode ? td : t_decode;
    }

    printf("tokens:");
    for (i = 0; i < n_prompt && i < 32; i++) {
        printf(" %d", prompt[i]);
    }
    if (n_prompt > 32) {
        printf(" ... (%d prompt tokens)", n_prompt);
    }
    printf(" |");
    for (s = 0; s < steps; s++) {
        printf(" %d", gen[s]);
    }
    printf("\n");
    printf("model %s, device %s, threads %d, batch %d: prefill %d tokens "
           "in %.3f ms: %.1f prefill tokens/s; decode %d steps in %.3f ms: "
           "%.1f tokens/s (%.1f per sequence)\n", m.name, engine_name(e),
           threads, batch, n_prompt * batch, t_prefill * 1e3,
           (double) n_prompt * batch / t_prefill, steps - 1, t_decode * 1e3,
           steps > 1 ? (double) batch * (steps - 1) / t_decode : 0.0,
           steps > 1 ? (double) (steps - 1) / t_decode : 0.0);

    engine_destroy(e);
    model_free(&m);
    free(items);
    free(out);
    free(cur);
    free(gen);
    return 0;
}
