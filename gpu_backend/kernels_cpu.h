/*
 * kernels_cpu.h - the CPU engine's kernels, f32 throughout.
 *
 * Each kernel is one loop nest over 8-float vectors (AVX2 with
 * -march=x86-64-v3); t/unit/test_kernels.c holds the naive reference of
 * each.  Every kernel computes a row the same way whatever
 * else is in the batch, so a sequence's output does not depend on what
 * it was batched with (bit for bit).
 */

#ifndef GPU_KERNELS_CPU_H
#define GPU_KERNELS_CPU_H

#include <stddef.h>
#include <stdint.h>

/* the index of the largest x[i], the first one on ties; NaNs are skipped
 * (all NaN: 0) */
int k_argmax(const float *x, int n);

/* sum of a[i] * b[i] */
float k_dot(const float *a, const float *b, int n);

/*
 * out[B,N] = in[B,K] @ w[N,K]^T, w in the layout of a Hugging Face
 * Linear, given packed: k_matmul_pack() rearranges w once (at engine
 * create) into panels of K_PANEL output columns, k_matmul_packed_size()
 * floats.  Each weight is read once per call for all B input rows, which
 * is what makes a batched decode step cheaper than B single ones; each
 * output is the running sum over k in order, so a row's result does not
 * depend on B.  k_matmul_cols computes only the columns [n0, n1), n0 a
 * multiple of K_PANEL (a thread's share).
 */
#define K_PANEL  16

size_t k_matmul_packed_size(int N, int K);
void k_matmul_pack(float *wp, const float *w, int N, int K);
void k_matmul(float *out, const float *in, const float *wp, int B, int K,
    int N);
void k_matmul_cols(float *out, const float *in, const float *wp, int B,
    int K, int N, int n0, int n1);

/* out = x / rms(x) * w over one row of n; out may be x */
void k_rmsnorm(float *out, const float *x, const float *w, int n,
    float eps);

/* cos and sin of position pos at each of the n frequencies inv_freq[i]
 * (model_rope_inv_freq), the angle pos * inv_freq[i] in f32 as
 * transformers computes it */
void k_rope_angles(float *cos_out, float *sin_out, int n, int pos,
    const float *inv_freq);

/*
 * Rotate one token's n_heads heads in place.  The first rope_dim dims of
 * each head rotate (the rest pass: partial rotary), pair i at angle i:
 * interleaved (GLM), the pair is (2i, 2i + 1); else (Hugging Face
 * rotate_half) it is (i, i + rope_dim / 2).
 */
void k_rope(float *x, int n_heads, int head_dim, int rope_dim,
    int interleaved, const float *cos_t, const float *sin_t);

/* out[i] = silu(gate[i]) * up[i]; out may be gate */
void k_swiglu(float *out, const float *gate, const float *up, int n);

/* x[i] += y[i] */
void k_add(float *x, const float *y, int n);

/*
 * Softmax of `rows` rows of n, n a multiple of 8, numerically stable, left
 * unnormalised: in place x = e^(x - the row's max), and inv[r] = 1 / the
 * row's sum.  Entries of -inf (padding) come out 0.
 */
void k_softmax_rows(float *x, int rows, int n, float *inv);

/* e^x, vectorisable, within 2 ulp of expf; exactly 0 from about -87.7
 * down (-inf included), finite (about 1.65e38) from 88 up, NaN for NaN */
float k_exp(float x);

/*
 * The paged KV cache.  A block holds block_size positions of one layer:
 * K transposed, [n_kv_heads * head_dim][block_size], so that one
 * dimension of a head is a contiguous run of positions and the scores
 * are a vector loop over positions; V as it comes, [block_size][n_kv_heads
 * * head_dim], so that the weighted sum of V rows is a vector loop over
 * a head's dimensions.  block_size must be a multiple of 8 (the vector
 * width).  Blocks are block_stride floats apart (other layers' blocks may
 * sit in between).
 */

/* write one position's K and V rows into row `row` of a block */
void k_kv_store(float *k_block, float *v_block, int row, const float *k,
    const float *v, int n_kv_heads, int head_dim, int block_size);

/* floats of scratch k_attention needs for n_pos positions: per head,
 * the scores (padded to whole vectors), the scaled query, 1 / sum */
#define K_ATTENTION_SCRATCH(n_pos, n_heads, head_dim)                   \
    ((size_t) (n_heads) * ((((n_pos) + 7) & ~7) + (head_dim) + 1))

/*
 * Attention of one query token over positions [0, n_pos) of the cache.
 * Position t lives in physical block blocks[t / block_size], row
 * t % block_size; the blocks of this layer start at k_cache + block *
 * block_stride (K) and v_cache + block * block_stride (V).  Query head h
 * reads kv head h / (n_heads / n_kv_heads) (grouped-query).  q and out are
 * [n_heads * head_dim]; scratch is K_ATTENTION_SCRATCH floats.
 */
void k_attention(float *out, const float *q, const float *k_cache,
    const float *v_cache, size_t block_stride, const int32_t *blocks,
    int block_size, int n_pos, int n_heads, int n_kv_heads, int head_dim,
    float *scratch);

#endif /* GPU_KERNELS_CPU_H */
