/*
 * gpu_test.h - what the GPU tests share: device buffers poisoned with NaN
 * (so an element a kernel should have written and did not fails its
 * check), uploads, and a synchronisation that checks for errors.  Needs
 * unit.h (CHECK, math.h) and cuda_runtime_api.h first.
 */

#ifndef NGX_GPU_GPU_TEST_H
#define NGX_GPU_GPU_TEST_H

#include "kernels_cuda.h"

/* n bytes on the device, every float type's NaN; exits if out of memory */
static inline void *
dalloc(size_t n)
{
    void *d = NULL;

    if (cudaMalloc(&d, n) != cudaSuccess) {
        fprintf(stderr, "cudaMalloc %zu failed\n", n);
        exit(1);
    }
    cudaMemset(d, 0xff, n);
    return d;
}

/* n bytes on the device, all 0 (split attention's counts start so) */
static inline void *
dzero(size_t n)
{
    void *d = dalloc(n);

    cudaMemset(d, 0, n);
    return d;
}

/* a copy of h[0, n) on the device */
static inline void *
dput(const void *h, size_t n)
{
    void *d = dalloc(n);

    cudaMemcpy(d, h, n, cudaMemcpyHostToDevice);
    return d;
}

/* n elements of dtype dt on the device, as f32 in h */
static inline void
dget_dt(kc_dtype_t dt, float *h, const void *d, size_t n)
{
    void *tmp = malloc(n * 4);

    cudaMemcpy(tmp, d, n * kc_dtype_size(dt), cudaMemcpyDeviceToHost);
    kc_to_f32(dt, h, tmp, n);
    free(tmp);
}

/* wait for the device; a failed check names what ran */
static inline int
sync_ok(const char *what)
{
    cudaError_t r = cudaDeviceSynchronize();

    if (r == cudaSuccess) {
        r = cudaGetLastError();
    }
    CHECK(r == cudaSuccess, "%s: %s", what, cudaGetErrorString(r));
    return r == cudaSuccess;
}

/*
 * o[hd] = softmax(q K^T / sqrt(hd)) V in doubles, over positions 0 .. ctx
 * - 1 of a paged f32 cache laid out as the engine's (block b of a layer
 * at b * bstride: bs rows of K, then bs rows of V, kv_dim wide; the head
 * at koff); tab is the item's block table, sc scratch for ctx scores.
 * Returns the softmax's sum.
 */
static inline double
ref_attention_row(double *o, const float *q, const float *cache,
    const int32_t *tab, size_t bstride, int bs, int kv_dim, size_t koff,
    int ctx, int hd, double *sc)
{
    double mx = -INFINITY, sum = 0;
    int p, d;

    for (p = 0; p < ctx; p++) {
        const float *k = cache + tab[p / bs] * bstride
                         + (size_t) (p % bs) * kv_dim + koff;
        double a = 0;
        for (d = 0; d < hd; d++) {
            a += (double) q[d] * k[d];
        }
        sc[p] = a / sqrt((double) hd);
        mx = sc[p] > mx ? sc[p] : mx;
    }
    for (p = 0; p < ctx; p++) {
        sc[p] = exp(sc[p] - mx);
        sum += sc[p];
    }
    for (d = 0; d < hd; d++) {
        o[d] = 0;
    }
    for (p = 0; p < ctx; p++) {
        const float *v = cache + tab[p / bs] * bstride + (size_t) bs * kv_dim
                         + (size_t) (p % bs) * kv_dim + koff;
        for (d = 0; d < hd; d++) {
            o[d] += sc[p] * v[d];
        }
    }
    for (d = 0; d < hd; d++) {
        o[d] /= sum;
    }
    return sum;
}

#endif /* NGX_GPU_GPU_TEST_H */
