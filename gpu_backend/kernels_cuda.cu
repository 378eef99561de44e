/*
 * kernels_cuda.cu - the element-wise and row kernels of the CUDA engine:
 * embedding lookup, residual add + RMSNorm, q/k/v biases + RoPE +
 * KV-cache store, SwiGLU; and the host-side dtype conversions.  CPU
 * references: kernels_cpu.c (k_rmsnorm, k_rope, k_kv_store, k_swiglu,
 * k_add).
 */

#include <stdlib.h>
#include <string.h>

#include "kernels_cuda.cuh"

#define ROW_THREADS  256

size_t
kc_dtype_size(kc_dtype_t dt)
{
    return dt == KC_F32 ? 4 : 2;
}

const char *
kc_dtype_name(kc_dtype_t dt)
{
    return dt == KC_F32 ? "float32" : dt == KC_BF16 ? "bfloat16" : "float16";
}

/* --- host conversions ------------------------------------------------ */

static uint16_t
f32_to_bf16(float f)
{
    uint32_t u;

    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t) ((u >> 16) | 0x40);       /* NaN stays NaN */
    }
    u += 0x7fffu + ((u >> 16) & 1);                 /* round to even */
    return (uint16_t) (u >> 16);
}

void
kc_from_f32(kc_dtype_t dt, void *dst, const float *src, size_t n)
{
    size_t i;

    switch (dt) {
    case KC_F32:
        memcpy(dst, src, n * 4);
        break;
    case KC_BF16:
        for (i = 0; i < n; i++) {
            ((uint16_t *) dst)[i] = f32_to_bf16(src[i]);
        }
        break;
    case KC_F16:
        for (i = 0; i < n; i++) {
            ((__half *) dst)[i] = __float2half_rn(src[i]);
        }
        break;
    }
}

void
kc_to_f32(kc_dtype_t dt, float *dst, const void *src, size_t n)
{
    size_t i;

    switch (dt) {
    case KC_F32:
        memcpy(dst, src, n * 4);
        break;
    case KC_BF16:
        for (i = 0; i < n; i++) {
            uint32_t u = (uint32_t) ((const uint16_t *) src)[i] << 16;
            memcpy(&dst[i], &u, 4);
        }
        break;
    case KC_F16:
        for (i = 0; i < n; i++) {
            dst[i] = __half2float(((const __half *) src)[i]);
        }
        break;
    }
}

/* --- embedding ------------------------------------------------------- */

template <typename T>
__global__ void
embed_kernel(float *x, const T *emb, kc_step_t st, int dim)
{
    int32_t tok;
    const T *row;

    kc_pdl_wait();
    kc_pdl_trigger();
    tok = st.tokens[blockIdx.x].tok;
    if (tok < 0) {
        tok = st.prev_out[-2 - tok];    /* sampled by the step before */
    }
    row = emb + (size_t) tok * dim;
    float *out = x + (size_t) blockIdx.x * dim;

    for (int d = threadIdx.x; d < dim; d += blockDim.x) {
        out[d] = kc_f(row[d]);
    }
}

void
kc_embed(cudaStream_t s, kc_dtype_t dt, float *x, const void *emb,
    kc_step_t st, int n_tok, int dim)
{
    /* launched the ordinary way: what comes before it is the upload of
     * the step's inputs (a copy, or kc_copy), which it waits for whole */
    KC_DISPATCH(dt, embed_kernel<T><<<n_tok, ROW_THREADS, 0, s>>>(
        x, (const T *) emb, st, dim));
}

__global__ void
copy_kernel(uint32_t *dst, const uint32_t *src, size_t words)
{
    size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x;

    for (; i < words; i += (size_t) gridDim.x * blockDim.x) {
        dst[i] = src[i];
    }
}

void
kc_copy(cudaStream_t s, void *dst, const void *src, size_t n)
{
    size_t words = n / 4;
    unsigned blocks = (unsigned) ((words + 255) / 256);

    if (words == 0) {
        return;
    }
    /* launched the ordinary way: it waits for all before it */
    copy_kernel<<<blocks < 64 ? blocks : 64, 256, 0, s>>>(
        (uint32_t *) dst, (const uint32_t *) src, words);
}

/* --- residual add + RMSNorm ----------------------------------------- */

/*
 * One block per row; each thread keeps its (at most NORM_MAXV) elements
 * of the row in registers between the sum of squares and the scaling,
 * and issues all of its loads before using any: at the batch sizes of
 * decode a row is a few KB, so latency, not bandwidth, is the cost.
 */
#define NORM_MAXV  16

template <typename T>
__global__ void __launch_bounds__(1024)
rmsnorm_kernel(T *out, float *x, const float *y, const float *w,
    const int32_t *rows, int dim, float eps, int write_x)
{
    __shared__ float red[32];
    kc_pdl_wait();
    kc_pdl_trigger();
    int r = blockIdx.x, i = rows ? rows[r] : r, nt = blockDim.x;
    float *xr = x + (size_t) i * dim;
    const float *yr = y ? y + (size_t) i * dim : NULL;
    T *o = out + (size_t) r * dim;
    float v[NORM_MAXV], ss = 0.0f, scale;

#pragma unroll
    for (int u = 0; u < NORM_MAXV; u++) {
        int d = threadIdx.x + u * nt;
        v[u] = d < dim ? xr[d] : 0.0f;
    }
    if (yr != NULL) {
#pragma unroll
        for (int u = 0; u < NORM_MAXV; u++) {
            int d = threadIdx.x + u * nt;
            v[u] += d < dim ? yr[d] : 0.0f;
        }
    }
#pragma unroll
    for (int u = 0; u < NORM_MAXV; u++) {
        int d = threadIdx.x + u * nt;
        if (d < dim && write_x) {
            xr[d] = v[u];
        }
        ss += v[u] * v[u];
    }
    ss = kc_block_sum(ss, red);
    scale = 1.0f / sqrtf(ss / (float) dim + eps);
#pragma unroll
    for (int u = 0; u < NORM_MAXV; u++) {
        int d = threadIdx.x + u * nt;
        if (d < dim) {
            o[d] = kc_store<T>(w[d] * (v[u] * scale));
        }
    }
}

void
kc_rmsnorm(cudaStream_t s, kc_dtype_t dt, void *out, float *x,
    const float *y, const float *w, const int32_t *rows, int n, int dim,
    float eps, int write_x)
{
    /* about 4 elements a thread, at most NORM_MAXV */
    int nt = (dim / 4 + 31) / 32 * 32;

    nt = nt < 32 ? 32 : nt > 1024 ? 1024 : nt;
    while (nt * NORM_MAXV < dim) {
        nt += 32;       /* dim <= KC_NORM_MAX_DIM: stays <= 1024 */
    }
    KC_DISPATCH(dt, kc_launch(rmsnorm_kernel<T>, n, nt, 0, s,
        (T *) out, x, y, w, rows, dim, eps, write_x));
}

/* --- RoPE and the KV-cache store ------------------------------------- */

/* one block per token, one thread per pair of dims (kc_qkv_pair) */
template <typename T>
__global__ void
rope_kv_kernel(float *qkv, T *kv, size_t block_stride, kc_step_t st,
    const float *bias, const float *inv_freq, int n_heads, int n_kv, int hd,
    int rot, int interleaved, int bs)
{
    kc_pdl_wait();
    kc_pdl_trigger();
    kc_token_t tk = st.tokens[blockIdx.x];
    int q_dim = n_heads * hd, kv_dim = n_kv * hd;
    float *q = qkv + (size_t) blockIdx.x * (q_dim + 2 * kv_dim);
    T *k_row = kc_kv_row(kv, block_stride, st, tk, kv_dim, bs);

    for (int u = threadIdx.x; u < (q_dim + 2 * kv_dim) / 2;
         u += blockDim.x)
    {
        int d0, d1, ang;
        float a, b;

        kc_qkv_pair(u, n_heads, n_kv, hd, rot, interleaved, &d0, &d1, &ang);
        a = q[d0];
        b = q[d1];
        kc_qkv_rope(&a, &b, d0, d1, ang, tk.pos, bias, inv_freq);
        kc_qkv_put(q, k_row, d0, d1, a, b, q_dim, kv_dim, bs);
    }
}

void
kc_rope_kv(cudaStream_t s, kc_dtype_t dt, float *qkv, void *kv_layer,
    size_t block_stride, kc_step_t st, const float *bias,
    const float *inv_freq, int n_tok, int n_heads, int n_kv_heads,
    int head_dim, int rope_dim, int interleaved, int block_size)
{
    /* one thread per pair, at most 1024 */
    int nt = ((n_heads + 2 * n_kv_heads) * (head_dim / 2) + 31) / 32 * 32;

    nt = nt > 1024 ? 1024 : nt;
    KC_DISPATCH(dt, kc_launch(rope_kv_kernel<T>, n_tok, nt, 0, s,
        qkv, (T *) kv_layer, block_stride, st, bias, inv_freq, n_heads,
        n_kv_heads, head_dim, rope_dim, interleaved, block_size));
}

/* --- SwiGLU ----------------------------------------------------------- */

template <typename T>
__global__ void
swiglu_kernel(T *out, const float *gu, int n_tok, int hidden)
{
    size_t n = (size_t) n_tok * hidden;

    kc_pdl_wait();
    kc_pdl_trigger();
    for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t) gridDim.x * blockDim.x)
    {
        float2 p = reinterpret_cast<const float2 *>(gu)[i];    /* g, u */
        out[i] = kc_store<T>(kc_silu_mul(p.x, p.y));
    }
}

void
kc_swiglu(cudaStream_t s, kc_dtype_t dt, void *out, const float *gu,
    int n_tok, int hidden)
{
    size_t n = (size_t) n_tok * hidden;
    int blocks = (int) ((n + ROW_THREADS - 1) / ROW_THREADS);

    blocks = blocks < 4096 ? blocks : 4096;
    KC_DISPATCH(dt, kc_launch(swiglu_kernel<T>, blocks, ROW_THREADS, 0, s,
        (T *) out, gu, n_tok, hidden));
}

static int pdl_step = 1;

void
kc_pdl_step(int on)
{
    pdl_step = on;
}

int
kc_pdl_enabled(void)
{
    static int v = -1;

    if (v < 0) {
        const char *e = getenv("NGX_GPU_PDL");
        v = e == NULL || strcmp(e, "0") != 0;
    }
    return v && pdl_step;
}

/* --- probe ------------------------------------------------------------ */

__global__ void
probe_kernel(void)
{
}

cudaError_t
kc_probe(void)
{
    probe_kernel<<<1, 32>>>();
    cudaError_t err = cudaGetLastError();
    if (err == cudaSuccess) {
        err = cudaDeviceSynchronize();
    }
    return err;
}
