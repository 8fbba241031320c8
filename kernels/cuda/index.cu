/* index.cu — gather, scatter_add, index_select, index_add, one_hot and the
 * index range check on the GPU (see index.h). Same task split as the CPU
 * loops of kernels/cpu/index.c, one thread per task: every output element
 * has a single writer that adds its contributions in index order. */
#include <stdlib.h>
#include <string.h>

#include "../../core/tensor.h"
#include "cuda_internal.h"
#include "device_math.cuh"
#include "index.h"

/* Shapes and strides by value: kernels take them as one argument. */
struct geom {
    int nd, dim;
    int64_t shape[MOE_MAX_DIMS];
    int64_t full[MOE_MAX_DIMS]; /* strides using every coordinate */
    int64_t skip[MOE_MAX_DIMS]; /* strides without DIM (the index supplies it) */
};

static geom make_geom(int nd, int dim, const int64_t *shape, const int64_t *full, const int64_t *skip)
{
    geom g;
    memset(&g, 0, sizeof g);
    g.nd = nd;
    g.dim = dim;
    for (int k = 0; k < nd; k++) {
        g.shape[k] = shape[k];
        g.full[k] = full ? full[k] : 0;
        g.skip[k] = skip[k];
    }
    return g;
}

/* Offsets of row R (flat over dims 0..ND-2 of the shape), as row_offsets in
 * kernels/cpu/index.c. */
static __device__ inline void row_offsets(const geom &g, int64_t r, int64_t *full, int64_t *skip)
{
    int64_t f = 0, s = 0;
    for (int k = g.nd - 2; k >= 0; k--) {
        int64_t c = r % g.shape[k];
        r /= g.shape[k];
        f += c * g.full[k];
        if (k != g.dim) s += c * g.skip[k];
    }
    *full = f;
    *skip = s;
}

static int64_t prod(const int64_t *shape, int from, int to)
{
    int64_t p = 1;
    for (int k = from; k < to; k++) p *= shape[k];
    return p;
}

/* A device scratch block from the caching allocator; released after the
 * kernels that use it are queued (reuse is stream-ordered, see alloc.cu). */
static moe_status scratch(moe_storage **s, size_t nbytes)
{
    return moe_storage_new(s, MOE_CUDA, nbytes);
}

/* ---- range check ------------------------------------------------------------------------ */

__global__ void find_bad_kernel(unsigned long long *first, const int64_t *idx, int64_t n, int64_t size)
{
    MOE_GRID_STRIDE(i, n)
    if (idx[i] < 0 || idx[i] >= size) atomicMin(first, (unsigned long long)i);
}

extern "C" moe_status moe_cuda_index_find_bad(const int64_t *idx, int64_t n, int64_t size, int64_t *pos,
                                              int64_t *value)
{
    *pos = -1;
    *value = 0;
    if (n == 0) return MOE_OK;
    moe_storage *s;
    MOE_TRY(scratch(&s, sizeof(unsigned long long)));
    unsigned long long *first = (unsigned long long *)s->data, host = (unsigned long long)n;
    cudaStream_t st = moe_cuda_stream();
    moe_status rc = MOE_OK;
    cudaError_t e = cudaMemcpyAsync(first, &host, sizeof host, cudaMemcpyHostToDevice, st);
    if (e == cudaSuccess) {
        find_bad_kernel<<<moe_cuda_grid(n, 256), 256, 0, st>>>(first, idx, n, size);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess) e = cudaMemcpyAsync(&host, first, sizeof host, cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    if (e == cudaSuccess && host < (unsigned long long)n) {
        *pos = (int64_t)host;
        e = cudaMemcpy(value, idx + host, sizeof *value, cudaMemcpyDeviceToHost);
    }
    if (e != cudaSuccess)
        rc = moe_fail(MOE_ERR_BACKEND, "index", "checking %lld indices on the GPU failed: %s",
                      (long long)n, cudaGetErrorString(e));
    moe_storage_release(s);
    return rc;
}

/* ---- gather ------------------------------------------------------------------------------- */

/* g.full unused; g.skip = a's strides. */
template <typename T>
__global__ void gather_kernel(T *out, const T *a, const int64_t *idx, geom g, int64_t numel, int64_t L)
{
    int64_t sl = g.dim == g.nd - 1 ? 0 : g.skip[g.nd - 1], sd = g.skip[g.dim];
    MOE_GRID_STRIDE(e, numel)
    {
        int64_t r = e / L, j = e % L, unused, aoff;
        row_offsets(g, r, &unused, &aoff);
        out[e] = a[aoff + j * sl + idx[e] * sd];
    }
}

extern "C" moe_status moe_cuda_gather(void *out, const void *a, const int64_t *a_strides, size_t esz,
                                      const int64_t *idx, int nd, const int64_t *shape, int dim)
{
    int64_t numel = prod(shape, 0, nd);
    if (numel == 0) return MOE_OK;
    geom g = make_geom(nd, dim, shape, NULL, a_strides);
    int64_t L = shape[nd - 1];
    unsigned grid = moe_cuda_grid(numel, 256);
    cudaStream_t s = moe_cuda_stream();
    switch (esz) {
    case 1: gather_kernel<uint8_t><<<grid, 256, 0, s>>>((uint8_t *)out, (const uint8_t *)a, idx, g, numel, L); break;
    case 2: gather_kernel<uint16_t><<<grid, 256, 0, s>>>((uint16_t *)out, (const uint16_t *)a, idx, g, numel, L); break;
    case 4: gather_kernel<uint32_t><<<grid, 256, 0, s>>>((uint32_t *)out, (const uint32_t *)a, idx, g, numel, L); break;
    default: gather_kernel<uint64_t><<<grid, 256, 0, s>>>((uint64_t *)out, (const uint64_t *)a, idx, g, numel, L); break;
    }
    CHECK_LAUNCH("gather");
    return MOE_OK;
}

/* ---- scatter-add ---------------------------------------------------------------------------
 * Tasks as on the CPU: DIM last: one task per p (the dims before DIM) runs
 * its whole row in order; otherwise one task per (p, column j) runs the Mr
 * rows of p in order. No two tasks write the same element. */

/* g.full = src strides, g.skip = out strides. */
template <typename T>
__global__ void scatter_add_kernel(T *out, const T *src, const int64_t *idx, geom g, int64_t P, int64_t Mr,
                                   int64_t L, bool last)
{
    int64_t sl_o = last ? 0 : g.skip[g.nd - 1], sd_o = g.skip[g.dim], sl_s = g.full[g.nd - 1];
    int64_t ntasks = last ? P : P * L;
    MOE_GRID_STRIDE(task, ntasks)
    {
        int64_t p = last ? task : task / L;
        int64_t j0 = last ? 0 : task % L, j1 = last ? L : j0 + 1;
        for (int64_t m = 0; m < Mr; m++) {
            int64_t r = p * Mr + m, soff, ooff;
            row_offsets(g, r, &soff, &ooff);
            const int64_t *ir = idx + r * L;
            for (int64_t j = j0; j < j1; j++) out[ooff + j * sl_o + ir[j] * sd_o] += src[soff + j * sl_s];
        }
    }
}

extern "C" moe_status moe_cuda_scatter_add(moe_dtype dt, void *out, const int64_t *out_strides, const void *src,
                                           const int64_t *src_strides, const int64_t *idx, int nd,
                                           const int64_t *shape, int dim)
{
    int64_t numel = prod(shape, 0, nd);
    if (numel == 0) return MOE_OK;
    bool last = dim == nd - 1;
    int64_t L = shape[nd - 1], P = prod(shape, 0, dim), Mr = last ? 1 : prod(shape, dim, nd - 1);
    geom g = make_geom(nd, dim, shape, src_strides, out_strides);
    int64_t ntasks = last ? P : P * L;
    unsigned grid = moe_cuda_grid(ntasks, 128);
    cudaStream_t s = moe_cuda_stream();
    if (dt == MOE_F32)
        scatter_add_kernel<float><<<grid, 128, 0, s>>>((float *)out, (const float *)src, idx, g, P, Mr, L, last);
    else if (dt == MOE_F64)
        scatter_add_kernel<double><<<grid, 128, 0, s>>>((double *)out, (const double *)src, idx, g, P, Mr, L, last);
    else
        return moe_fail(MOE_ERR_DTYPE, "scatter-add", "no GPU kernel for %s", moe_dtype_name(dt));
    CHECK_LAUNCH("scatter-add");
    return MOE_OK;
}

/* ---- index_select / index_add ------------------------------------------------------------ */

template <typename T>
__global__ void index_select_kernel(T *out, const T *a, const int64_t *idx, int64_t N, int64_t M, int64_t Q,
                                    int64_t total)
{
    MOE_GRID_STRIDE(e, total)
    { /* e = (p M + m) Q + q */
        int64_t q = e % Q, pm = e / Q, m = pm % M, p = pm / M;
        out[e] = a[(p * N + idx[m]) * Q + q];
    }
}

extern "C" moe_status moe_cuda_index_select(void *out, const void *a, size_t esz, const int64_t *idx, int64_t P,
                                            int64_t N, int64_t M, int64_t Q)
{
    int64_t total = P * M * Q;
    if (total == 0) return MOE_OK;
    unsigned grid = moe_cuda_grid(total, 256);
    cudaStream_t s = moe_cuda_stream();
    switch (esz) {
    case 1: index_select_kernel<uint8_t><<<grid, 256, 0, s>>>((uint8_t *)out, (const uint8_t *)a, idx, N, M, Q, total); break;
    case 2: index_select_kernel<uint16_t><<<grid, 256, 0, s>>>((uint16_t *)out, (const uint16_t *)a, idx, N, M, Q, total); break;
    case 4: index_select_kernel<uint32_t><<<grid, 256, 0, s>>>((uint32_t *)out, (const uint32_t *)a, idx, N, M, Q, total); break;
    default: index_select_kernel<uint64_t><<<grid, 256, 0, s>>>((uint64_t *)out, (const uint64_t *)a, idx, N, M, Q, total); break;
    }
    CHECK_LAUNCH("index-select");
    return MOE_OK;
}

/* One thread per output element (p, n, q): the sources of row n, grouped
 * by FIRST [N+1] / ORDER [M] (a stable counting sort of idx), in index order. */
template <typename T>
__global__ void index_add_kernel(T *out, const T *src, const int64_t *first, const int64_t *order, int64_t N,
                                 int64_t M, int64_t Q, int64_t total)
{
    MOE_GRID_STRIDE(e, total)
    { /* e = (p N + n) Q + q */
        int64_t q = e % Q, pn = e / Q, n = pn % N, p = pn / N;
        int64_t j0 = first[n], j1 = first[n + 1];
        if (j0 == j1) continue;
        T acc = out[e];
        for (int64_t j = j0; j < j1; j++) acc += src[(p * M + order[j]) * Q + q];
        out[e] = acc;
    }
}

extern "C" moe_status moe_cuda_index_add(moe_dtype dt, void *out, const void *src, const int64_t *idx, int64_t P,
                                         int64_t N, int64_t M, int64_t Q)
{
    if (P * M * Q == 0) return MOE_OK;
    if (dt != MOE_F32 && dt != MOE_F64)
        return moe_fail(MOE_ERR_DTYPE, "index-add", "no GPU kernel for %s", moe_dtype_name(dt));
    /* group the entries by target row on the host: first [N+1], order [M] */
    size_t nbytes = sizeof(int64_t) * (size_t)(N + 1 + M);
    int64_t *host = (int64_t *)malloc(nbytes), *hidx = (int64_t *)malloc(sizeof(int64_t) * (size_t)M);
    moe_storage *s = NULL;
    moe_status rc = MOE_OK;
    if (!host || !hidx) {
        rc = moe_fail(MOE_ERR_NOMEM, "index-add", "out of host memory for %lld index entries", (long long)M);
        goto done;
    }
    {
        cudaStream_t st = moe_cuda_stream();
        cudaError_t e = cudaMemcpyAsync(hidx, idx, sizeof(int64_t) * (size_t)M, cudaMemcpyDeviceToHost, st);
        if (e == cudaSuccess) e = cudaStreamSynchronize(st);
        if (e != cudaSuccess) {
            rc = moe_fail(MOE_ERR_BACKEND, "index-add", "copying %lld indices to the host failed: %s",
                          (long long)M, cudaGetErrorString(e));
            goto done;
        }
        int64_t *first = host, *order = host + N + 1;
        memset(first, 0, sizeof(int64_t) * (size_t)(N + 1));
        for (int64_t m = 0; m < M; m++) first[hidx[m] + 1]++;
        for (int64_t n = 0; n < N; n++) first[n + 1] += first[n];
        for (int64_t m = 0; m < M; m++) order[first[hidx[m]]++] = m;
        for (int64_t n = N; n > 0; n--) first[n] = first[n - 1]; /* undo the advance */
        first[0] = 0;
        if ((rc = scratch(&s, nbytes)) != MOE_OK) goto done;
        int64_t *dfirst = (int64_t *)s->data;
        e = cudaMemcpyAsync(dfirst, host, nbytes, cudaMemcpyHostToDevice, st);
        if (e == cudaSuccess) e = cudaStreamSynchronize(st); /* HOST is freed below */
        if (e != cudaSuccess) {
            rc = moe_fail(MOE_ERR_BACKEND, "index-add", "copying the grouping to the GPU failed: %s",
                          cudaGetErrorString(e));
            goto done;
        }
        int64_t total = P * N * Q;
        unsigned grid = moe_cuda_grid(total, 256);
        if (dt == MOE_F32)
            index_add_kernel<float><<<grid, 256, 0, st>>>((float *)out, (const float *)src, dfirst, dfirst + N + 1,
                                                          N, M, Q, total);
        else
            index_add_kernel<double><<<grid, 256, 0, st>>>((double *)out, (const double *)src, dfirst,
                                                           dfirst + N + 1, N, M, Q, total);
        e = cudaGetLastError();
        if (e != cudaSuccess)
            rc = moe_fail(MOE_ERR_BACKEND, "index-add", "kernel launch failed: %s", cudaGetErrorString(e));
    }
done:
    moe_storage_release(s);
    free(host);
    free(hidx);
    return rc;
}

/* ---- one_hot ---------------------------------------------------------------------------------- */

__global__ void one_hot_kernel(int64_t *out, const int64_t *idx, int64_t n, int64_t C)
{
    MOE_GRID_STRIDE(e, n * C)
    out[e] = idx[e / C] == e % C;
}

extern "C" moe_status moe_cuda_one_hot(int64_t *out, const int64_t *idx, int64_t n, int64_t C)
{
    if (n * C == 0) return MOE_OK;
    one_hot_kernel<<<moe_cuda_grid(n * C, 256), 256, 0, moe_cuda_stream()>>>(out, idx, n, C);
    CHECK_LAUNCH("one-hot");
    return MOE_OK;
}
