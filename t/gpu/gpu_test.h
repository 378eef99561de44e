/*
 * gpu_test.h - what the GPU tests share: device buffers poisoned with NaN
 * (so an element a kernel should have written and did not fails its
 * check), uploads, and a synchronisation that checks for errors.  Needs
 * unit.h (CHECK) and cuda_runtime_api.h first.
 */

#ifndef NGX_GPU_GPU_TEST_H
#define NGX_GPU_GPU_TEST_H

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

/* a copy of h[0, n) on the device */
static inline void *
dput(const void *h, size_t n)
{
    void *d = dalloc(n);

    cudaMemcpy(d, h, n, cudaMemcpyHostToDevice);
    return d;
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

#endif /* NGX_GPU_GPU_TEST_H */
