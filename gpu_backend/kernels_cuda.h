/*
 * kernels_cuda.h - the CUDA engine's own kernels, callable from C.
 *
 * Weights, the inputs of every matrix product and the KV cache are kept
 * in one storage dtype (kc_dtype_t: f32, bf16 or f16); everything that
 * accumulates stays f32: the residual stream, matrix-product outputs,
 * norms, softmax, logits.  Matrix products themselves go through cuBLAS
 * (engine_cuda.cu); these are the kernels around them.  Each has a CPU
 * reference in kernels_cpu.c, and t/gpu/test_cuda_kernels.c compares the
 * two on random data.
 *
 * All launchers queue work on `stream` and return at once; the caller
 * checks cudaGetLastError().  No launcher allocates.
 */

#ifndef GPU_KERNELS_CUDA_H
#define GPU_KERNELS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    KC_F32 = 0,
    KC_BF16,
    KC_F16
} kc_dtype_t;

size_t kc_dtype_size(kc_dtype_t dt);
const char *kc_dtype_name(kc_dtype_t dt);

/* host-side conversions, round to nearest even */
void kc_from_f32(kc_dtype_t dt, void *dst, const float *src, size_t n);
void kc_to_f32(kc_dtype_t dt, float *dst, const void *src, size_t n);

/* one token of a step: what it is, where it is, which item it belongs to */
typedef struct {
    int32_t  tok;
    int32_t  pos;
    int32_t  item;
} kc_token_t;

/*
 * A step's inputs as the kernels see them: device pointers into the
 * region the host fills and uploads in one copy.  The block table of
 * item i starts at tables + item_table[i]; position p of that item lives
 * in KV block table[p / block_size], row p % block_size.
 */
typedef struct {
    const kc_token_t  *tokens;       /* [T] */
    const int32_t     *item_table;   /* [items] */
    const int32_t     *tables;       /* packed block tables */
    const int32_t     *row_tok;      /* [R] token whose logits are row r */
    const float       *temperature;  /* [R] <= 0: greedy */
    const float       *top_p;        /* [R] >= 1: no nucleus cut */
    const float       *uniform;      /* [R] the draw in [0, 1) */
    /* the ids the step before sampled, row by row: a token tok < 0 is
     * prev_out[-2 - tok] (engine.h's ENGINE_TOKEN_OF, by row) */
    const int32_t     *prev_out;
} kc_step_t;

/*
 * The paged KV cache: block b of layer l holds K then V, each
 * [block_size][n_kv_heads * head_dim] in the storage dtype.  kv_layer is
 * the start of layer l in block 0; block b's are block_stride elements
 * further.  (Row-major rows, unlike the CPU's transposed blocks: on the
 * GPU a thread reads one position's whole head with 16-byte loads.)
 */

/*
 * n bytes (a multiple of 4, both ends 4-byte aligned) from src to dst by
 * a kernel, for a step's few hundred bytes between the device and
 * mapped pinned host memory: a kernel starts sooner after the kernel
 * before it than a copy engine's transfer does.  A launch error shows
 * in the caller's cudaGetLastError().
 */
void kc_copy(cudaStream_t s, void *dst, const void *src, size_t n);

/* x[t] = f32(emb[tokens[t].tok]), t < T (tok < 0: see prev_out) */
void kc_embed(cudaStream_t s, kc_dtype_t dt, float *x, const void *emb,
    kc_step_t st, int T, int dim);

/*
 * For r < n (dim <= KC_NORM_MAX_DIM): i = rows ? rows[r] : r; v = x[i] (+ y[i] when y); x[i] = v
 * when write_x; out[r] = v / rms(v) * w in the storage dtype.  The
 * residual add and the norm in one pass.
 */
#define KC_NORM_MAX_DIM  16384

void kc_rmsnorm(cudaStream_t s, kc_dtype_t dt, void *out, float *x,
    const float *y, const float *w, const int32_t *rows, int n, int dim,
    float eps, int write_x);

/*
 * qkv is [T][q | k | v] in f32.  Add bias ([q | k | v] in f32, or NULL)
 * to each row, rotate q in place and k (RoPE as k_rope: the first
 * rope_dim dims of each head, pair i at angle pos * inv_freq[i], pairs
 * (2i, 2i + 1) when interleaved, else (i, i + rope_dim / 2)), and store
 * k and v of each token into its KV-cache row.
 */
void kc_rope_kv(cudaStream_t s, kc_dtype_t dt, float *qkv, void *kv_layer,
    size_t block_stride, kc_step_t st, const float *bias,
    const float *inv_freq, int T, int n_heads, int n_kv_heads, int head_dim,
    int rope_dim, int interleaved, int block_size);

/*
 * out[t] = softmax(q k^T / sqrt(head_dim)) v for each query head of
 * token t over positions 0 .. pos of its own sequence (causal), the K/V
 * rows read through the block table.  head_dim: a multiple of 8, at
 * most KC_ATT_MAX_HEAD_DIM.  out is [T][n_heads * head_dim], storage
 * dtype.  n_split > 1 splits each context over that many blocks (for
 * small batches, so that the GPU fills); part is then scratch of
 * kc_attention_part_floats() floats.
 *
 * tiled != 0: the step may hold prefill rows (an item with more than one
 * token, its tokens next to each other in tokens[]); in bf16/f16 with
 * head_dim 16, 32, 64 or 128 those rows then go to the tensor-core
 * kernel (attention_tc_cuda.cu), which reads each K/V tile once for 64
 * (token, head) rows; decode rows stay with the per-token kernel and its
 * splits.  tiled == 0 (decode graphs): the per-token kernel alone.  Both
 * give the same result to within rounding; neither needs more scratch.
 * tiled == 2: the prefill rows are served elsewhere (cuDNN, below): the
 * per-token kernel takes the decode rows only.
 */
#define KC_ATT_MAX_HEAD_DIM  256
#define KC_ATT_MAXG          8       /* query heads one block serves */
#define KC_ATT_MAX_SPLIT     16

static inline size_t
kc_attention_part_floats(int n_tok, int n_heads, int head_dim, int n_split)
{
    return (size_t) n_tok * n_heads * n_split * (head_dim + 2);
}

void kc_attention(cudaStream_t s, kc_dtype_t dt, void *out, float *part,
    int n_split, int tiled, const float *qkv, const void *kv_layer,
    size_t block_stride, kc_step_t st, int T, int n_heads, int n_kv_heads,
    int head_dim, int block_size);

/* whether tiled == 1 sends prefill rows to the tensor-core kernel (the
 * dtype and head_dim allow it, and NGX_GPU_ATTENTION_TC is not 0) */
int kc_att_tiles(kc_dtype_t dt, int head_dim);

/*
 * Split decode rows merge within a thread-block cluster of their split
 * blocks, of up to n blocks (2 .. KC_ATT_MAX_SPLIT; NGX_GPU_ATT_CLUSTER,
 * default KC_ATT_CLUSTER), or with n = 0 through part and a merge
 * kernel (one kernel more a step).  Both give the same result to within
 * rounding.  kc_att_max_split(): the most splits a caller should ask
 * for (the cluster bound where clusters merge).
 */
#define KC_ATT_CLUSTER       8
void kc_att_cluster(int n);
int kc_att_max_split(void);

/*
 * Within a cluster of splits, a decode row whose context has at most n
 * positions (KC_ATT_SHORT, or NGX_GPU_ATT_SHORT; 0: never; fewer where
 * they would not fit in KC_ATT_SHORT_BYTES of shared memory) is not
 * split: each block takes whole query heads over the whole context,
 * read before the launch wait (attention_short.cuh).
 */
#define KC_ATT_SHORT         256
#define KC_ATT_SHORT_BYTES   (72 * 1024)
void kc_att_short(int n);

/*
 * Steps of at least n rows (KC_ATT_DEC_ROWS, or NGX_GPU_ATT_DEC; 0:
 * never) send the per-token kernel's rows to the decode kernel on tensor
 * cores (attention_dec_cuda.cu) where the dtype and head_dim allow (as
 * for the prefill kernel): one warp a (row, KV head), splits merged by
 * the merge kernel.  kc_att_dec_used(): whether a step of n_tok rows
 * goes there; kc_att_dec_splits(): the splits it wants for such a step
 * on n_sm multiprocessors.
 */
#define KC_ATT_DEC_ROWS      4       /* below it, with 2 rows: -2%, -4% */
void kc_att_dec(int n);
int kc_att_dec_used(kc_dtype_t dt, int head_dim, int n_tok);
int kc_att_dec_splits(int n_tok, int n_heads, int n_kv_heads, int n_sm);

/*
 * cuDNN's fused attention for the prefill rows of a step
 * (attention_cudnn.cu), K/V read through the block tables; the decode
 * rows then go to kc_attention() with tiled == 2 (per-token kernel,
 * prefill rows skipped).  Plans are built in kc_dnn_create for buckets
 * of (prefill items, longest chunk); a step outside them, or whose
 * bucket has no plan, uses kc_attention() as before.
 */
typedef struct kc_dnn_s kc_dnn_t;

typedef struct {
    int     n_heads, n_kv_heads, head_dim, block_size;
    int     n_blocks;           /* KV blocks in the pool, scratch included */
    size_t  block_stride;       /* elements from one block to the next */
    int     max_items;          /* sequences a step may hold */
    int     max_tokens;         /* token rows a step may hold */
    int     max_pages;          /* block-table entries of a sequence */
} kc_dnn_shape_t;

typedef struct {
    int         plans, buckets, packed_tables, max_items, max_chunk;
    size_t      version;        /* cuDNN's, at run time */
    double      build_ms;
    const char *why;            /* the first reason a plan failed */
} kc_dnn_info_t;

/* device scratch kc_dnn_create takes (workspace, q, step inputs) */
size_t kc_dnn_scratch_bytes(kc_dtype_t dt, const kc_dnn_shape_t *sh);

/* tables_mode: 0 packed tables, else padded copies; 1 packed only; 2
 * padded only.  NULL with the reason in err when no plan builds. */
kc_dnn_t *kc_dnn_create(cudaStream_t s, kc_dtype_t dt,
    const kc_dnn_shape_t *sh, void *scratch, int tables_mode, char *err,
    size_t errlen);
void kc_dnn_destroy(kc_dnn_t *d);
void kc_dnn_info(const kc_dnn_t *d, kc_dnn_info_t *info);
const char *kc_dnn_error(const kc_dnn_t *d);

/*
 * The step's n prefill items, in token order: item i's rows are q_row[i]
 * .. q_row[i] + q_len[i] - 1 of the step, its context kv_len[i]
 * positions, its block table at tables + table_off[i] (device).  Uploads
 * them (from a ring of 4 pinned buffers: at most 3 steps may be queued
 * behind the one staged).
 * 1: kc_dnn_attention serves this step; 0: no plan, use kc_attention;
 * -1: a CUDA error.
 */
int kc_dnn_stage(kc_dnn_t *d, cudaStream_t s, int n, const int *q_row,
    const int *q_len, const int *kv_len, const int *table_off,
    const int32_t *tables);

/* the staged step's prefill rows of out ([T][n_heads * head_dim]); 0, or
 * -1 with kc_dnn_error() set */
int kc_dnn_attention(kc_dnn_t *d, cudaStream_t s, void *out,
    const float *qkv, const void *kv_layer, int T);

/* out[t][i] = silu(gu[t][2i]) * gu[t][2i + 1], storage dtype: gate and
 * up interleaved, as the engine stores their weights' rows */
void kc_swiglu(cudaStream_t s, kc_dtype_t dt, void *out, const float *gu,
    int T, int hidden);

/*
 * out[r] = the token sampled from logits row r (sampler.c's rules):
 * temperature <= 0 greedy (ties to the lowest id); else softmax at that
 * temperature, cut to the top_p nucleus, and the id where uniform[r]
 * times the kept mass falls, counting in id order.
 */
void kc_sample(cudaStream_t s, int32_t *out, const float *logits, int R,
    int vocab, kc_step_t st);

/* cudaSuccess if this build has code the current device can run */
cudaError_t kc_probe(void);

/* 1 unless NGX_GPU_PDL=0 or kc_pdl_step(0): launch the step's kernels
 * with programmatic dependent launch (kernels_cuda.cuh).  kc_pdl_step
 * sets it for the kernels queued (or captured) next: the engine turns it
 * off for large steps, where it costs more than it saves. */
int kc_pdl_enabled(void);
void kc_pdl_step(int on);

#ifdef __cplusplus
}
#endif

#endif /* GPU_KERNELS_CUDA_H */
