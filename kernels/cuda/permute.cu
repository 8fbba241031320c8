/* permute.cu — dispatch plan (counting sort) and row movement on the GPU
 * (see permute.h).
 *
 * Dimension letters: T tokens, K slots per token, S = T*K slots, E experts,
 * C capacity, N rows, D row length, B chunks of CHUNK slots. */
#include <cuda_bf16.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/tensor.h"
#include "cuda_internal.h"
#include "device_math.cuh"
#include "permute.h"

#define OP "cuda-dispatch"
#define CHUNK 1024

namespace {

__device__ __forceinline__ float ld(const float *p, int64_t i) { return p[i]; }
__device__ __forceinline__ float ld(const __nv_bfloat16 *p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st(float *p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(__nv_bfloat16 *p, int64_t i, float v) { p[i] = __float2bfloat16(v); }

/* 1. tab[e*B + b] = kept slots of expert e in chunk b; routed[e] += all its
 * slots; bad counts ids out of range. */
__global__ void hist_kernel(int32_t *tab, int32_t *routed, int32_t *bad, const int64_t *ids, const uint8_t *keep,
                            int64_t S, int64_t E, int B)
{
    extern __shared__ int32_t cnt[]; /* [2E]: kept, routed */
    for (int64_t e = threadIdx.x; e < 2 * E; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    int64_t lo = (int64_t)blockIdx.x * CHUNK, hi = lo + CHUNK < S ? lo + CHUNK : S;
    for (int64_t s = lo + threadIdx.x; s < hi; s += blockDim.x) {
        int64_t e = ids[s];
        if (e < 0 || e >= E) {
            atomicAdd(bad, 1);
            continue;
        }
        atomicAdd(&cnt[E + e], 1);
        if (!keep || keep[s]) atomicAdd(&cnt[e], 1);
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
        tab[e * B + blockIdx.x] = cnt[e];
        if (cnt[E + e]) atomicAdd(&routed[e], cnt[E + e]);
    }
}

/* 2. One block: tab becomes each (expert, chunk)'s first rank inside the
 * expert; meta = [counts E | offsets E+1 | n_kept]. */
__global__ void scan_kernel(int32_t *tab, int64_t *meta, int64_t E, int B, int64_t cap, bool pad)
{
    int64_t *counts = meta, *offsets = meta + E;
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
        int64_t run = 0;
        for (int b = 0; b < B; b++) {
            int32_t c = tab[e * B + b];
            tab[e * B + b] = (int32_t)run;
            run += c;
        }
        counts[e] = cap > 0 && run > cap ? cap : run;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int64_t o = 0, kept = 0;
        for (int64_t e = 0; e < E; e++) {
            offsets[e] = o;
            o += pad ? cap : counts[e];
            kept += counts[e];
        }
        offsets[E] = o;
        meta[2 * E + 1] = kept;
    }
}

/* 3. One warp per chunk, in slot order: the stable rank of each kept slot
 * inside its expert; slots ranked past the capacity are dropped. */
__global__ void scatter_kernel(int64_t *slot_row, int64_t *row_token, int64_t *row_slot, const int32_t *tab,
                               const int64_t *offsets, const int64_t *ids, const uint8_t *keep, int64_t S,
                               int64_t K, int64_t E, int B, int64_t cap)
{
    extern __shared__ int32_t run[]; /* [E] next rank of each expert in this chunk */
    const int lane = threadIdx.x;
    for (int64_t e = lane; e < E; e += 32) run[e] = tab[e * B + blockIdx.x];
    __syncwarp();
    const unsigned lt = (1u << lane) - 1u;
    int64_t lo = (int64_t)blockIdx.x * CHUNK, hi = lo + CHUNK < S ? lo + CHUNK : S;
    for (int64_t s0 = lo; s0 < hi; s0 += 32) {
        int64_t s = s0 + lane;
        bool active = s < hi;
        int64_t e = active ? ids[s] : -1;
        bool kp = active && (!keep || keep[s]);
        int key = kp ? (int)e : (int)E + lane; /* unique keys for the slots that get no rank */
        unsigned same = __match_any_sync(0xffffffffu, key);
        int rank = 0;
        if (kp) rank = run[e] + __popc(same & lt);
        __syncwarp();
        if (kp && (same & lt) == 0) run[e] += __popc(same); /* the group's first lane advances it */
        __syncwarp();
        if (!active) continue;
        if (kp && (cap == 0 || rank < cap)) {
            int64_t r = offsets[e] + rank;
            slot_row[s] = r;
            row_token[r] = s / K;
            row_slot[r] = s;
        } else {
            slot_row[s] = -1;
        }
    }
}

__global__ void fill_i64(int64_t *p, int64_t n, int64_t v)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        p[i] = v;
}

template <typename TV>
__global__ void gather_kernel(TV *out, const TV *x, const int64_t *row_token, const int64_t *row_slot,
                              const float *w, int64_t N, int64_t D)
{
    for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
        int64_t t = row_token[r];
        float sc = t >= 0 && w ? w[row_slot[r]] : 1.0f;
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
            st(out, r * D + j, t >= 0 ? ld(x, t * D + j) * sc : 0.0f);
    }
}

template <typename TV>
__global__ void combine_kernel(TV *out, const TV *y, const int64_t *slot_row, const float *w, int64_t T,
                               int64_t K, int64_t D)
{
    for (int64_t t = blockIdx.x; t < T; t += gridDim.x)
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
            float acc = 0.0f;
            for (int64_t k = 0; k < K; k++) {
                int64_t r = slot_row[t * K + k];
                if (r < 0) continue;
                acc += (w ? w[t * K + k] : 1.0f) * ld(y, r * D + j);
            }
            st(out, t * D + j, acc);
        }
}

template <typename TV>
__global__ void dot_kernel(float *out, const TV *g, const TV *y, const int64_t *slot_row, int64_t T, int64_t K,
                           int64_t D)
{
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (int64_t s = (int64_t)blockIdx.x * warps + (threadIdx.x >> 5); s < T * K; s += (int64_t)gridDim.x * warps) {
        int64_t r = slot_row[s], t = s / K;
        float acc = 0.0f;
        if (r >= 0)
            for (int64_t j = lane; j < D; j += 32) acc += ld(g, t * D + j) * ld(y, r * D + j);
        acc = warp_reduce(acc, d_sum{});
        if (lane == 0) out[s] = acc;
    }
}

unsigned grid_for(int64_t n, int64_t cap = 65535)
{
    return (unsigned)(n < 1 ? 1 : (n > cap ? cap : n));
}

} // namespace

extern "C" void moe_cuda_dispatch_free(moe_cuda_dispatch *d)
{
    if (!d) return;
    const moe_allocator *al = moe_allocator_get(MOE_CUDA);
    if (d->dev_mem && al) al->free(d->dev_mem, d->dev_bytes, al->ctx);
    free(d->routed);
    free(d->counts);
    free(d->offsets);
    memset(d, 0, sizeof *d);
}

extern "C" moe_status moe_cuda_dispatch_plan(moe_cuda_dispatch *d, const int64_t *ids, const uint8_t *keep,
                                             int64_t T, int64_t K, int64_t E, int64_t capacity, bool pad)
{
    memset(d, 0, sizeof *d);
    if (T < 0 || K < 1 || E < 1)
        return moe_fail(MOE_ERR_ARG, OP, "need T >= 0, K >= 1, E >= 1, got T=%lld K=%lld E=%lld", (long long)T,
                        (long long)K, (long long)E);
    if (capacity < 0)
        return moe_fail(MOE_ERR_ARG, OP, "capacity must be >= 0 (0: dropless), got %lld", (long long)capacity);
    if (pad && capacity == 0)
        return moe_fail(MOE_ERR_ARG, OP, "padding to capacity needs a capacity > 0 (dropless mode has none)");
    if (E > 6 * 1024)
        return moe_fail(MOE_ERR_UNSUPPORTED, OP, "%lld experts: the device plan keeps 2E counters in shared memory "
                                                 "(at most 6144 experts)", (long long)E);
    const int64_t S = T * K;
    if (capacity > S) capacity = S > 0 ? S : 1;
    const moe_allocator *al = moe_allocator_get(MOE_CUDA);
    if (!al) return moe_fail(MOE_ERR_DEVICE, OP, "the CUDA allocator is not installed (call moe_cuda_init)");
    d->T = T;
    d->K = K;
    d->E = E;
    d->capacity = capacity;
    d->padded = pad;
    d->routed = (int64_t *)calloc((size_t)E, sizeof(int64_t));
    d->counts = (int64_t *)calloc((size_t)E, sizeof(int64_t));
    d->offsets = (int64_t *)calloc((size_t)E + 1, sizeof(int64_t));
    if (!d->routed || !d->counts || !d->offsets) {
        moe_cuda_dispatch_free(d);
        return moe_fail(MOE_ERR_NOMEM, OP, "out of memory");
    }
    cudaStream_t stream = moe_cuda_stream();
    const int B = (int)((S + CHUNK - 1) / CHUNK) > 0 ? (int)((S + CHUNK - 1) / CHUNK) : 1;
    /* scratch: tab [E B] i32, routed [E] i32, bad [1] i32 | meta [2E+2] i64 */
    size_t tab_bytes = sizeof(int32_t) * (size_t)(E * B + E + 1);
    tab_bytes = (tab_bytes + 15) & ~(size_t)15;
    size_t meta_n = (size_t)(2 * E + 2), scratch_bytes = tab_bytes + sizeof(int64_t) * meta_n;
    void *scratch = NULL;
    moe_status stt = al->alloc(&scratch, scratch_bytes, al->ctx);
    if (stt != MOE_OK) {
        moe_cuda_dispatch_free(d);
        return stt;
    }
    int32_t *tab = (int32_t *)scratch, *routed = tab + E * B, *bad = routed + E;
    int64_t *meta = (int64_t *)((char *)scratch + tab_bytes);
    int64_t *host = (int64_t *)malloc(sizeof(int64_t) * meta_n);
    int32_t *host32 = (int32_t *)malloc(sizeof(int32_t) * (size_t)(E + 1));
    cudaError_t ce = cudaSuccess;
    moe_status res = MOE_OK;
    if (!host || !host32) res = moe_fail(MOE_ERR_NOMEM, OP, "out of memory");
    if (res == MOE_OK) ce = cudaMemsetAsync(routed, 0, sizeof(int32_t) * (size_t)(E + 1), stream);
    if (res == MOE_OK && ce == cudaSuccess && S > 0) {
        hist_kernel<<<B, 256, sizeof(int32_t) * 2 * (size_t)E, stream>>>(tab, routed, bad, ids, keep, S, E, B);
        ce = cudaGetLastError();
    }
    if (res == MOE_OK && ce == cudaSuccess) {
        if (S == 0) ce = cudaMemsetAsync(tab, 0, sizeof(int32_t) * (size_t)(E * B), stream);
        if (ce == cudaSuccess) {
            scan_kernel<<<1, 256, 0, stream>>>(tab, meta, E, B, capacity, pad);
            ce = cudaGetLastError();
        }
    }
    if (res == MOE_OK && ce == cudaSuccess)
        ce = cudaMemcpyAsync(host, meta, sizeof(int64_t) * meta_n, cudaMemcpyDeviceToHost, stream);
    if (res == MOE_OK && ce == cudaSuccess)
        ce = cudaMemcpyAsync(host32, routed, sizeof(int32_t) * (size_t)(E + 1), cudaMemcpyDeviceToHost, stream);
    if (res == MOE_OK && ce == cudaSuccess) ce = cudaStreamSynchronize(stream);
    if (res == MOE_OK && ce != cudaSuccess)
        res = moe_fail(MOE_ERR_BACKEND, OP, "plan of %lld slots over %lld experts: %s", (long long)S, (long long)E,
                       cudaGetErrorString(ce));
    if (res == MOE_OK && host32[E] > 0)
        res = moe_fail(MOE_ERR_INDEX, OP, "%d expert ids are out of range [0, %lld)", host32[E], (long long)E);
    if (res == MOE_OK) {
        for (int64_t e = 0; e < E; e++) {
            d->counts[e] = host[e];
            d->routed[e] = host32[e];
        }
        memcpy(d->offsets, host + E, sizeof(int64_t) * (size_t)(E + 1));
        d->rows = d->offsets[E];
        d->n_kept = host[2 * E + 1];
        d->n_dropped = S - d->n_kept;
        d->dev_bytes = sizeof(int64_t) * (size_t)(S + 2 * d->rows + 1);
        res = al->alloc(&d->dev_mem, d->dev_bytes, al->ctx);
    }
    if (res == MOE_OK) {
        d->slot_row = (int64_t *)d->dev_mem;
        d->row_token = d->slot_row + S;
        d->row_slot = d->row_token + d->rows;
        int64_t N2 = 2 * d->rows;
        if (N2 > 0) fill_i64<<<grid_for((N2 + 255) / 256, 4096), 256, 0, stream>>>(d->row_token, N2, -1);
        if (S > 0)
            scatter_kernel<<<B, 32, sizeof(int32_t) * (size_t)E, stream>>>(d->slot_row, d->row_token, d->row_slot, tab,
                                                                           meta + E, ids, keep, S, K, E, B, capacity);
        ce = cudaGetLastError();
        /* the scratch is released below: wait for the scatter that reads it */
        if (ce == cudaSuccess) ce = cudaStreamSynchronize(stream);
        if (ce != cudaSuccess) res = moe_fail(MOE_ERR_BACKEND, OP, "scatter: %s", cudaGetErrorString(ce));
    }
    al->free(scratch, scratch_bytes, al->ctx);
    free(host);
    free(host32);
    if (res != MOE_OK) moe_cuda_dispatch_free(d);
    return res;
}

extern "C" moe_status moe_cuda_rows_gather(bool bf16, void *out, const void *x, const int64_t *row_token,
                                           const int64_t *row_slot, const float *w, int64_t N, int64_t D)
{
    if (N <= 0 || D <= 0) return MOE_OK;
    cudaStream_t s = moe_cuda_stream();
    if (bf16)
        gather_kernel<<<grid_for(N), 256, 0, s>>>((__nv_bfloat16 *)out, (const __nv_bfloat16 *)x, row_token, row_slot,
                                                  w, N, D);
    else
        gather_kernel<<<grid_for(N), 256, 0, s>>>((float *)out, (const float *)x, row_token, row_slot, w, N, D);
    CHECK_LAUNCH("cuda-rows-gather");
    return MOE_OK;
}

extern "C" moe_status moe_cuda_rows_combine(bool bf16, void *out, const void *y, const int64_t *slot_row,
                                            const float *w, int64_t T, int64_t K, int64_t D)
{
    if (T <= 0 || D <= 0) return MOE_OK;
    cudaStream_t s = moe_cuda_stream();
    if (bf16)
        combine_kernel<<<grid_for(T), 256, 0, s>>>((__nv_bfloat16 *)out, (const __nv_bfloat16 *)y, slot_row, w, T, K, D);
    else
        combine_kernel<<<grid_for(T), 256, 0, s>>>((float *)out, (const float *)y, slot_row, w, T, K, D);
    CHECK_LAUNCH("cuda-rows-combine");
    return MOE_OK;
}

extern "C" moe_status moe_cuda_rows_dot(bool bf16, float *out, const void *g, const void *y, const int64_t *slot_row,
                                        int64_t T, int64_t K, int64_t D)
{
    if (T * K <= 0) return MOE_OK;
    cudaStream_t s = moe_cuda_stream();
    unsigned grid = grid_for((T * K + 7) / 8);
    if (bf16)
        dot_kernel<<<grid, 256, 0, s>>>(out, (const __nv_bfloat16 *)g, (const __nv_bfloat16 *)y, slot_row, T, K, D);
    else
        dot_kernel<<<grid, 256, 0, s>>>(out, (const float *)g, (const float *)y, slot_row, T, K, D);
    CHECK_LAUNCH("cuda-rows-dot");
    return MOE_OK;
}
